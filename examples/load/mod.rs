//! Load generation shared by `loadgen` (for people planning capacity) and `bench` (the
//! benchmark): many SSE and WebSocket subscribers with publish→receive latencies, and
//! closed-loop HTTP request rates.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Latencies in microseconds, merged from every subscriber.
pub type Latencies = Arc<Mutex<Histogram<u64>>>;

pub fn latencies() -> Latencies {
    Arc::new(Mutex::new(
        Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    ))
}

/// Microseconds from the event's `emitted_at` to now (same machine, same clock).
fn age_us(event: &Value) -> Option<u64> {
    let emitted = chrono::DateTime::parse_from_rfc3339(event["emitted_at"].as_str()?).ok()?;
    let age = chrono::Utc::now().signed_duration_since(emitted);
    age.num_microseconds().map(|us| us.max(1) as u64)
}

/// A crowd of subscribers, all connected.
pub struct Crowd {
    pub subscribers: tokio::task::JoinSet<Watch>,
    /// Set the watched task's id here; "done" releases subscribers that do not read.
    pub task: tokio::sync::watch::Sender<Option<String>>,
    pub latencies: Latencies,
    pub connected: usize,
}

impl Crowd {
    /// Lets subscribers that do not read go, and waits until every subscriber has.
    pub async fn release(mut self) {
        self.task.send_replace(Some("done".into()));
        while self.subscribers.join_next().await.is_some() {}
    }
}

/// The feed SSE subscribers follow.
#[derive(Clone)]
pub enum Feed {
    /// All of the user's tasks: `/api/v1/events`.
    User,
    /// One task, known before it starts: `/api/v1/tasks/{id}/events`.
    Task(String),
}

impl Feed {
    fn path(&self) -> String {
        match self {
            Feed::User => "/api/v1/events".into(),
            Feed::Task(id) => format!("/api/v1/tasks/{id}/events"),
        }
    }
}

/// Connects `sse` SSE subscribers of the user feed and `ws` WebSocket subscribers and waits
/// until each has subscribed.
pub async fn gather(url: &str, token: &str, sse: usize, ws: usize, read: bool) -> Crowd {
    gather_on(url, token, Feed::User, sse, ws, read).await
}

/// The same, with the subscribers on `feed`.
pub async fn gather_on(
    url: &str,
    token: &str,
    feed: Feed,
    sse: usize,
    ws: usize,
    read: bool,
) -> Crowd {
    let latencies = latencies();
    let watched = match &feed {
        Feed::Task(id) => Some(id.clone()),
        Feed::User => None,
    };
    let (task, task_rx) = tokio::sync::watch::channel(watched);
    let sse_url = format!("{url}{}", feed.path());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(1024);
    let mut subscribers = tokio::task::JoinSet::new();
    for i in 0..sse + ws {
        let (url, token, ready, rx, lat) = (
            url.to_string(),
            token.to_string(),
            ready_tx.clone(),
            task_rx.clone(),
            latencies.clone(),
        );
        if i < sse {
            subscribers.spawn(sse_subscriber(sse_url.clone(), token, ready, rx, lat, read));
        } else {
            let follow = feed.clone();
            subscribers.spawn(ws_subscriber(url, token, follow, ready, rx, lat, read));
        }
    }
    drop(ready_tx);
    let mut connected = 0;
    while ready_rx.recv().await.is_some() {
        connected += 1;
    }
    Crowd {
        subscribers,
        task,
        latencies,
        connected,
    }
}

/// Says "subscribed" once; dropping the sender lets the caller see when all have spoken.
async fn signal(ready: tokio::sync::mpsc::Sender<()>) {
    let _ = ready.send(()).await;
}

/// Records the latency of an event of the watched task; true once that task has ended.
fn record(
    event: &Value,
    task: &tokio::sync::watch::Receiver<Option<String>>,
    local: &mut Histogram<u64>,
) -> bool {
    if task.borrow().as_deref() != event["task_id"].as_str() {
        return false;
    }
    if event["event"] != "snapshot" {
        if let Some(us) = age_us(event) {
            let _ = local.record(us);
        }
    }
    matches!(
        event["state"].as_str(),
        Some("SUCCESS" | "FAILURE" | "REVOKED")
    )
}

pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// What one subscriber saw of the watched task.
pub struct Watch {
    pub saw_final: bool,
}

/// A subscriber of an SSE feed at `url`. It signals `ready` once subscribed, records the
/// latency of every event of `task` (once its id is known), and returns at the task's end.
pub async fn sse_subscriber(
    url: String,
    token: String,
    ready: tokio::sync::mpsc::Sender<()>,
    task: tokio::sync::watch::Receiver<Option<String>>,
    latencies: Latencies,
    read: bool,
) -> Watch {
    let client = reqwest::Client::new();
    let Ok(response) = client.get(url).bearer_auth(&token).send().await else {
        signal(ready).await;
        return Watch { saw_final: false };
    };
    signal(ready).await;
    if !read {
        // Hold the connection without reading until the task ends.
        let mut task = task;
        let _ = task.wait_for(|t| t.as_deref() == Some("done")).await;
        drop(response);
        return Watch { saw_final: false };
    }
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut saw_final = false;
    'outer: while let Some(Ok(chunk)) = body.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let Some(data) = message.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if record(&event, &task, &mut local) {
                saw_final = true;
                break 'outer;
            }
        }
    }
    latencies.lock().await.add(&local).expect("same bounds");
    Watch { saw_final }
}

/// The same over the WebSocket: `subscribe all` with the token for the user feed, or the
/// task by its id alone (no credentials) for one task's feed.
pub async fn ws_subscriber(
    base: String,
    token: String,
    feed: Feed,
    ready: tokio::sync::mpsc::Sender<()>,
    task: tokio::sync::watch::Receiver<Option<String>>,
    latencies: Latencies,
    read: bool,
) -> Watch {
    let mut request = format!("{}/api/v1/ws", base.replacen("http", "ws", 1))
        .into_client_request()
        .expect("url");
    let subscribe = match &feed {
        Feed::User => {
            request.headers_mut().insert(
                "Authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
            serde_json::json!({"type": "subscribe", "all": true})
        }
        Feed::Task(id) => serde_json::json!({"type": "subscribe", "task_id": id}),
    };
    let Ok((mut socket, _)) = tokio_tungstenite::connect_async(request).await else {
        signal(ready).await;
        return Watch { saw_final: false };
    };
    let _ = socket.send(Message::text(subscribe.to_string())).await;
    signal(ready).await;
    if !read {
        let mut task = task;
        let _ = task.wait_for(|t| t.as_deref() == Some("done")).await;
        return Watch { saw_final: false };
    }
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut saw_final = false;
    while let Some(Ok(frame)) = socket.next().await {
        let Message::Text(text) = frame else { continue };
        let Ok(event) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if record(&event, &task, &mut local) {
            saw_final = true;
            break;
        }
    }
    latencies.lock().await.add(&local).expect("same bounds");
    Watch { saw_final }
}

/// Closed-loop GETs of `url` from `connections` keep-alive connections for `duration`;
/// returns requests per second.
pub async fn request_rate(url: &str, connections: usize, duration: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (url, done) = (url.to_string(), done.clone());
        workers.spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client");
            while Instant::now() < deadline {
                if let Ok(r) = client.get(&url).send().await {
                    if r.bytes().await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    let started = Instant::now();
    while workers.join_next().await.is_some() {}
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
