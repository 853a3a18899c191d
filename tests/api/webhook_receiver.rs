//! A webhook receiver on loopback for the tests: it answers as a script says (status, delay,
//! `Retry-After`, body), records every request with its headers, and can go down and come
//! back on the same port. Signatures are checked with the `standardwebhooks` crate, the
//! specification's own Rust library: an implementation independent of the server's.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub fn ok() -> Reply {
        Reply::status(200)
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<String>) -> Reply {
        self.body = body.into();
        self
    }
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub at: Instant,
    pub headers: HeaderMap,
    pub raw: Bytes,
    /// The status it was answered with (set when the answer went out).
    pub answered: u16,
}

impl Received {
    pub fn id(&self) -> &str {
        self.headers["webhook-id"].to_str().unwrap()
    }

    pub fn body(&self) -> Value {
        serde_json::from_slice(&self.raw).unwrap()
    }

    pub fn event_type(&self) -> String {
        self.body()["type"].as_str().unwrap().to_owned()
    }

    /// Whether the `standardwebhooks` library accepts the delivery under `secret` (which also
    /// checks the timestamp against the clock, as receivers do).
    pub fn verifies(&self, secret: &str) -> bool {
        standardwebhooks::Webhook::new(secret)
            .expect("a whsec_ secret")
            .verify(&self.raw, &self.headers)
            .is_ok()
    }
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    default: Option<Reply>,
    received: Vec<Received>,
    /// Requests being answered right now, per task id, and the most seen at once.
    in_flight: std::collections::HashMap<String, usize>,
    most_in_flight: usize,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    server: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Receiver {
    /// A receiver answering 200 to everything until told otherwise.
    pub async fn start() -> Receiver {
        let receiver = Receiver {
            addr: "127.0.0.1:0".parse().unwrap(),
            script: Arc::default(),
            server: Arc::default(),
        };
        receiver.script.lock().unwrap().default = Some(Reply::ok());
        receiver.serve_on("127.0.0.1:0".parse().unwrap()).await
    }

    async fn serve_on(mut self, addr: SocketAddr) -> Receiver {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(128).unwrap();
        self.addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(self.script.clone());
        let handle = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        *self.server.lock().unwrap() = Some(handle);
        self
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests with `replies`, in order, then with the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().replies.extend(replies);
    }

    pub fn answer_by_default(&self, reply: Reply) {
        self.script.lock().unwrap().default = Some(reply);
    }

    /// Stops listening: connections are refused until [`Receiver::up`].
    pub fn down(&self) {
        if let Some(handle) = self.server.lock().unwrap().take() {
            handle.abort();
        }
    }

    pub async fn up(&self) {
        let again = self.clone().serve_on(self.addr).await;
        assert_eq!(again.addr, self.addr);
    }

    pub fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }

    /// The most requests about one task that were being answered at the same moment.
    pub fn most_in_flight_per_task(&self) -> usize {
        self.script.lock().unwrap().most_in_flight
    }
}

async fn answer(
    State(script): State<Arc<Mutex<Script>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let task = serde_json::from_slice::<Value>(&raw)
        .ok()
        .and_then(|b| b["data"]["task_id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let (reply, index) = {
        let mut s = script.lock().unwrap();
        let reply = s.replies.pop_front().or_else(|| s.default.clone()).unwrap();
        let now = s.in_flight.entry(task.clone()).or_default();
        *now += 1;
        let now = *now;
        s.most_in_flight = s.most_in_flight.max(now);
        s.received.push(Received {
            path: uri.path().to_owned(),
            at: Instant::now(),
            headers,
            raw,
            answered: 0,
        });
        (reply, s.received.len() - 1)
    };
    tokio::time::sleep(reply.delay).await;
    {
        let mut s = script.lock().unwrap();
        *s.in_flight.get_mut(&task).unwrap() -= 1;
        s.received[index].answered = reply.status;
    }
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap(),
        reply.body.clone(),
    )
        .into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
