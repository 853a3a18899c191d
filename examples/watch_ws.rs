//! Upload a raster, convert it, and follow it over the WebSocket with tokio-tungstenite.
//! Ctrl-C cancels the conversion over the same socket. For interactive tools and anything
//! that follows many tasks at once (`{"type": "subscribe", "all": true}`).
//!
//! cargo run --example watch_ws -- --url http://127.0.0.1:8000 --token $TOKEN FILE

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = common::Args::parse();
    let client = reqwest::Client::new();
    let started = common::upload_and_convert(&client, &args).await?;
    let task_id = started["task_id"].as_str().unwrap_or_default().to_string();

    let ws_url = format!(
        "{}{}",
        args.url.replacen("http", "ws", 1),
        started["ws_url"].as_str().unwrap_or("/api/v1/ws")
    );
    let mut request = ws_url.into_client_request()?;
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {}", args.token).parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    socket
        .send(Message::text(
            json!({"type": "subscribe", "task_id": task_id}).to_string(),
        ))
        .await?;

    let bar = common::progress_bar();
    let mut cancelled = false;
    loop {
        tokio::select! {
            frame = socket.next() => {
                let Some(frame) = frame else { anyhow::bail!("the server closed the socket") };
                if let Message::Text(text) = frame? {
                    let event: Value = serde_json::from_str(&text)?;
                    if event["type"] == "error" {
                        bar.println(format!("server: {}", event["detail"]));
                    } else if common::draw(&bar, &event) {
                        let _ = socket.close(None).await;
                        return Ok(common::finish(&bar, &event));
                    }
                }
            }
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                cancelled = true;
                bar.set_message("Cancelling…");
                socket.send(Message::text(json!({"type": "cancel", "task_id": task_id}).to_string())).await?;
            }
        }
    }
}
