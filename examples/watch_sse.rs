//! Upload a raster, convert it, and follow it over Server-Sent Events, parsing the
//! `text/event-stream` itself. On a dropped connection it reconnects with `Last-Event-ID`,
//! so nothing is missed. For HTTP-only environments where push is wanted.
//!
//! cargo run --example watch_sse -- --url http://127.0.0.1:8000 --token $TOKEN FILE

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use serde_json::Value;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = common::Args::parse();
    let client = reqwest::Client::new();
    let started = common::upload_and_convert(&client, &args).await?;
    let events_url = format!(
        "{}{}",
        args.url,
        started["events_url"].as_str().unwrap_or_default()
    );
    let bar = common::progress_bar();
    let mut last_event_id: Option<String> = None;
    let mut backoff = Duration::from_millis(250);
    loop {
        let mut request = client.get(&events_url).bearer_auth(&args.token);
        if let Some(id) = &last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if !response.status().is_success() {
            common::checked(response).await?;
            unreachable!("checked fails on errors");
        }
        backoff = Duration::from_millis(250);
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        let (mut data, mut id) = (String::new(), None::<String>);
        while let Some(Ok(chunk)) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find('\n') {
                let line = buffer[..end].trim_end_matches('\r').to_string();
                buffer.drain(..=end);
                if line.is_empty() {
                    // A blank line ends a message.
                    if id.is_some() {
                        last_event_id = id.take();
                    }
                    if !data.is_empty() {
                        let event: Value = serde_json::from_str(&data)?;
                        data.clear();
                        if common::draw(&bar, &event) {
                            return Ok(common::finish(&bar, &event));
                        }
                    }
                } else if let Some(rest) = line.strip_prefix("data:") {
                    data.push_str(rest.trim_start());
                } else if let Some(rest) = line.strip_prefix("id:") {
                    id = Some(rest.trim().to_string());
                }
                // `retry:` and `: comments` need nothing here.
            }
        }
        bar.set_message("reconnecting");
    }
}
