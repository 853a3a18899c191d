//! Test clients for the live channels: an SSE client that parses the raw `text/event-stream`,
//! and a WebSocket client on tokio-tungstenite.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// One parsed SSE message.
#[derive(Debug, Clone)]
pub struct SseMessage {
    pub id: Option<String>,
    pub data: Option<Value>,
    pub comment: bool,
    pub retry: Option<u64>,
}

pub struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
}

impl Sse {
    pub async fn open(request: reqwest::RequestBuilder) -> Sse {
        let response = request.send().await.expect("SSE request");
        Sse {
            status: response.status(),
            headers: response.headers().clone(),
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next message (comments included), or `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseMessage> {
        let mut message = SseMessage {
            id: None,
            data: None,
            comment: false,
            retry: None,
        };
        let mut data = String::new();
        let mut any = false;
        loop {
            while let Some(end) = self.buffer.find('\n') {
                let line = self.buffer[..end].trim_end_matches('\r').to_string();
                self.buffer.drain(..=end);
                if line.is_empty() {
                    if any {
                        if !data.is_empty() {
                            message.data = Some(serde_json::from_str(&data).expect("data is JSON"));
                        }
                        return Some(message);
                    }
                    continue;
                }
                any = true;
                if line.starts_with(':') {
                    message.comment = true;
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                } else if let Some(v) = line.strip_prefix("id:") {
                    message.id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("retry:") {
                    message.retry = v.trim().parse().ok();
                }
            }
            match tokio::time::timeout(Duration::from_secs(60), self.body.next())
                .await
                .expect("SSE stalled")
            {
                Some(Ok(chunk)) => self
                    .buffer
                    .push_str(std::str::from_utf8(&chunk).expect("UTF-8")),
                _ => return None,
            }
        }
    }

    /// Data messages until the stream ends (or `stop` says so).
    pub async fn events_until(&mut self, stop: impl Fn(&Value) -> bool) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        while let Some(m) = self.next().await {
            if let (Some(id), Some(data)) = (m.id, m.data) {
                let done = stop(&data);
                out.push((id, data));
                if done {
                    break;
                }
            }
        }
        out
    }
}

pub fn is_final(event: &Value) -> bool {
    matches!(
        event["state"].as_str(),
        Some("SUCCESS" | "FAILURE" | "REVOKED")
    )
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/api/v1/ws` with optional extra headers.
pub async fn ws_connect(
    base: &str,
    headers: &[(&str, String)],
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("{}/api/v1/ws", base.replacen("http", "ws", 1))
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(s, _)| s)
}

pub async fn ws_send(socket: &mut Socket, value: Value) {
    socket.send(Message::text(value.to_string())).await.unwrap();
}

/// The next JSON text frame (pings are answered by the library while reading).
pub async fn ws_next(socket: &mut Socket) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .expect("WS stalled")?;
        match frame.ok()? {
            Message::Text(text) => return Some(serde_json::from_str(&text).unwrap()),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}
