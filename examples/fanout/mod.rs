//! The reference the push rows of the benchmark are measured against: a minimal axum server
//! with one `tokio::sync::broadcast`, an `async-stream` SSE handler and an axum WebSocket
//! handler, nothing else. It runs in a process of its own (`bench --reference`), serves the
//! same paths the load generator subscribes to (a task's feed is the same broadcast), and
//! publishes on `POST /publish` a copy of a real rastercast event (same size, its `emitted_at`
//! set when sent), as often and as fast as the conversion it stands for.

use std::convert::Infallible;
use std::process::Stdio;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::broadcast;

/// What one event of the stand-in conversion is: the SSE message and the WebSocket text, each
/// made once and shared by every subscriber.
#[derive(Clone)]
struct Frame {
    sse: Bytes,
    text: Utf8Bytes,
}

/// `bench --reference`: serves until killed; prints its address first.
pub async fn serve() -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    // Small frames go out at once, as in rastercast (Nagle's algorithm would hold them back
    // for an acknowledgement).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let (tx, _) = broadcast::channel::<Frame>(1024);
    let app = Router::new()
        .route("/api/v1/events", get(sse))
        .route("/api/v1/tasks/{id}/events", get(sse))
        .route("/api/v1/ws", get(ws))
        .route("/publish", post(publish))
        .with_state(tx);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn sse(State(tx): State<broadcast::Sender<Frame>>) -> impl IntoResponse {
    let mut rx = tx.subscribe();
    let body = async_stream::stream! {
        yield Ok::<_, Infallible>(Bytes::from_static(b"retry: 2000\n\n"));
        loop {
            match rx.recv().await {
                Ok(frame) => yield Ok(frame.sse),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    };
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::from_stream(body),
    )
}

async fn ws(
    State(tx): State<broadcast::Sender<Frame>>,
    upgrade: WebSocketUpgrade,
) -> impl IntoResponse {
    let mut rx = tx.subscribe();
    upgrade.on_upgrade(move |mut socket: WebSocket| async move {
        loop {
            match rx.recv().await {
                Ok(frame) => {
                    if socket.send(Message::Text(frame.text)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    })
}

#[derive(Deserialize)]
struct Publish {
    /// A real event of the server under test: its shape and size.
    event: Value,
    task_id: String,
    /// Events to send, the last one final.
    count: u32,
    every_ms: u64,
}

/// Sends `count` copies of `event` for `task_id`, `every_ms` apart, each stamped when sent
/// and serialised once, the last one `SUCCESS`.
async fn publish(State(tx): State<broadcast::Sender<Frame>>, Json(p): Json<Publish>) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(p.every_ms.max(1)));
        for i in 1..=p.count {
            ticks.tick().await;
            let mut event = p.event.clone();
            event["task_id"] = Value::from(p.task_id.clone());
            event["event"] = Value::from(if i == p.count { "state" } else { "progress" });
            event["state"] = Value::from(if i == p.count { "SUCCESS" } else { "PROGRESS" });
            event["seq"] = Value::from(i);
            event["emitted_at"] = Value::from(
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            );
            let text = event.to_string();
            let sse = Bytes::from(format!("id: {i}\ndata: {text}\n\n"));
            let _ = tx.send(Frame {
                sse,
                text: text.into(),
            });
        }
    });
}

/// The reference in a process of its own, killed when dropped.
pub struct Reference {
    child: tokio::process::Child,
    pub url: String,
}

impl Reference {
    pub async fn start() -> anyhow::Result<Reference> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("--reference")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut first)
            .await?;
        Ok(Reference {
            child,
            url: first.trim().to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// Starts the stand-in conversion: `count` events over about `span`.
    pub async fn publish(
        &self,
        event: &Value,
        task_id: &str,
        count: u32,
        span: Duration,
    ) -> anyhow::Result<()> {
        let every_ms = (span.as_millis() as u64 / u64::from(count.max(1))).max(1);
        reqwest::Client::new()
            .post(format!("{}/publish", self.url))
            .json(&serde_json::json!({
                "event": event, "task_id": task_id, "count": count, "every_ms": every_ms,
            }))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}
