//! The WebSocket: subscribe to tasks (one by capability, or all of the caller's), unsubscribe,
//! and cancel, over JSON text frames; events are the bus's JSON, sent as made.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::bus::{Bus, Event, Subscription, Topic};
use crate::error::AppError;
use crate::http::auth::{same_origin, StreamCaller, StreamLease};
use crate::http::AppState;
use crate::live;
use crate::store::users::{self, Credential};
use crate::store::User;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upgrade))
}

/// The WebSocket. Send `{"type": "subscribe", "task_id": "…"}`, `{"type": "subscribe", "all": true}`,
/// `{"type": "unsubscribe", …}` or `{"type": "cancel", "task_id": "…"}`; receive `TaskEvent`s and
/// `{"type": "error", "detail": "…"}` for bad messages. A task id alone allows subscribing to it.
#[utoipa::path(get, operation_id = "openWebSocket", path = "/ws", tag = "live events",
    params(("ticket" = Option<String>, Query, description = "A stream ticket, for browsers")),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade", body = crate::error::ErrorBody), (status = 401, description = "No or bad credentials", body = crate::error::ErrorBody),
        (status = 403, description = "Cookie sign-in from another origin", body = crate::error::ErrorBody),
        (status = 429, description = "Too many event streams open for this user, or without credentials from this address or in all", body = crate::error::ErrorBody),
        (status = 503, description = "Shutting down", body = crate::error::ErrorBody)),
    security((), ("bearer" = []), ("cookie" = []), ("ticket" = [])))]
async fn upgrade(
    State(state): State<AppState>,
    caller: StreamCaller,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let ws =
        ws.map_err(|_| AppError::BadRequest("This endpoint takes a WebSocket upgrade.".into()))?;
    // A cookie is sent by the browser whichever page opens the socket; only our own may.
    if caller.via_cookie && !same_origin(&headers) {
        return Err(AppError::Forbidden(
            "A WebSocket signed in by cookie must come from this server's own pages.",
        ));
    }
    if state.shutdown.is_cancelled() {
        return Err(AppError::ShuttingDown);
    }
    let lease = caller.lease(&state)?;
    // Clients send small control messages and we send one event at a time: tungstenite's
    // 128 KiB read and write buffers would be most of an idle subscriber's memory.
    Ok(ws
        .max_message_size(64 * 1024)
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            let sockets = state.sockets.clone();
            sockets.track_future(async move {
                Connection::new(state, caller.user, caller.credential)
                    .run(socket, lease)
                    .await;
            })
        }))
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum ClientMessage {
    Subscribe {
        task_id: Option<Uuid>,
        #[serde(default)]
        all: bool,
    },
    Unsubscribe {
        task_id: Option<Uuid>,
        #[serde(default)]
        all: bool,
    },
    Cancel {
        task_id: Uuid,
    },
}

struct Connection {
    state: AppState,
    user: Option<User>,
    /// What the socket was opened with; checked again before a cancel.
    credential: Option<Credential>,
    /// What this socket follows.
    follows: HashMap<Topic, Follow>,
}

/// One thing a socket follows: the bus position its snapshot covers (events up to it are in
/// the snapshot), and whose tasks they are.
struct Follow {
    floor: u64,
    owner: Uuid,
}

/// Not yet covered by a snapshot: wants no event until one is read.
const UNREAD: u64 = u64::MAX;

/// Where a socket's events come from: the channels of the bus that carry what it follows and
/// nothing else, so that events it does not follow do not wake it. None while it follows
/// nothing; its user's channel for its own tasks, and a task's channel for each task of
/// another user that it follows by its id (a socket without a user has only those). Several
/// channels are read together in `seq` order (`Bus::drain_merged`). The channel of every
/// event only for a socket that follows tasks of more than [`MAX_CHANNELS`] other users'.
enum Channel {
    Idle,
    Topics(Vec<Subscription>),
    All(tokio::sync::broadcast::Receiver<std::sync::Arc<Event>>),
}

/// Channels one socket reads at most: each wake-up polls every one of them.
const MAX_CHANNELS: usize = 8;

/// The channels a socket needs (see [`Channel`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Need {
    Nothing,
    /// Each once.
    Topics(Vec<Topic>),
    All,
}

impl Need {
    fn of(user: Option<&User>, follows: &HashMap<Topic, Follow>) -> Need {
        let mut topics: Vec<Topic> = follows
            .iter()
            .map(|(topic, follow)| match user {
                Some(user) if follow.owner == user.id => Topic::User(user.id),
                _ => *topic,
            })
            .collect();
        topics.sort();
        topics.dedup();
        match topics.len() {
            0 => Need::Nothing,
            n if n <= MAX_CHANNELS => Need::Topics(topics),
            _ => Need::All,
        }
    }
}

impl Channel {
    /// Moves to the channels `need` names. A channel added to a set is subscribed before the
    /// caller reads its snapshot, so nothing falls between, and the channels kept lose
    /// nothing. True when the old channel was replaced (to or from nothing or the channel of
    /// every event): what it still held is dropped, so everything followed must be sent
    /// afresh.
    fn move_to(&mut self, bus: &Bus, need: Need) -> bool {
        match (&mut *self, need) {
            (Channel::Topics(subscriptions), Need::Topics(topics)) => {
                subscriptions.retain(|s| topics.contains(&s.topic()));
                for topic in topics {
                    if !subscriptions.iter().any(|s| s.topic() == topic) {
                        subscriptions.push(bus.subscribe_to(topic));
                    }
                }
                false
            }
            (Channel::Idle, Need::Nothing) | (Channel::All(_), Need::All) => false,
            (_, Need::Nothing) => {
                *self = Channel::Idle;
                true
            }
            (_, Need::Topics(topics)) => {
                *self = Channel::Topics(topics.into_iter().map(|t| bus.subscribe_to(t)).collect());
                true
            }
            (_, Need::All) => {
                *self = Channel::All(bus.subscribe());
                true
            }
        }
    }

    /// The next event of any of the channels.
    async fn recv(&mut self) -> Result<std::sync::Arc<Event>, RecvError> {
        match self {
            Channel::Idle => std::future::pending().await,
            Channel::All(rx) => rx.recv().await,
            Channel::Topics(subscriptions) if subscriptions.len() == 1 => {
                subscriptions[0].recv().await
            }
            Channel::Topics(subscriptions) => {
                let each = subscriptions.iter_mut().map(|s| Box::pin(s.recv()));
                futures_util::future::select_all(each).await.0
            }
        }
    }

    /// Hands `first` (just received) and every event waiting after it to `each`, in `seq`
    /// order; true when a channel fell behind meanwhile.
    fn drain(
        &mut self,
        bus: &Bus,
        first: std::sync::Arc<Event>,
        mut each: impl FnMut(&Event),
    ) -> bool {
        let rx = match self {
            Channel::Idle => {
                each(&first);
                return false;
            }
            Channel::All(rx) => rx,
            Channel::Topics(subscriptions) if subscriptions.len() == 1 => &mut subscriptions[0],
            Channel::Topics(subscriptions) => {
                // Events older than `first` of the other channels are in them already.
                let Some(mut events) = bus.drain_merged(subscriptions) else {
                    return true;
                };
                events.push(first);
                events.sort_by_key(|e| e.seq);
                events.iter().for_each(|e| each(e));
                return false;
            }
        };
        live::drain_waiting(rx, first, |event| {
            each(event);
            true
        })
    }
}

/// Queues `messages` and flushes them once. The timeout is armed only when the socket cannot
/// take them at once: a timer per message per subscriber was a cost of every event.
async fn send_all(
    sink: &mut SplitSink<WebSocket, Message>,
    messages: Vec<Message>,
    timeout: Duration,
) -> bool {
    let send = async {
        for message in messages {
            sink.feed(message).await?;
        }
        sink.flush().await
    };
    let mut send = std::pin::pin!(send);
    match futures_util::poll!(send.as_mut()) {
        std::task::Poll::Ready(done) => done.is_ok(),
        std::task::Poll::Pending => matches!(tokio::time::timeout(timeout, send).await, Ok(Ok(()))),
    }
}

fn error_frame(detail: impl std::fmt::Display) -> Message {
    Message::text(serde_json::json!({ "type": "error", "detail": detail.to_string() }).to_string())
}

fn event_frame(json: &bytes::Bytes) -> Message {
    Message::Text(Utf8Bytes::try_from(json.clone()).expect("events are UTF-8 JSON"))
}

impl Connection {
    fn new(state: AppState, user: Option<User>, credential: Option<Credential>) -> Connection {
        Connection {
            state,
            user,
            credential,
            follows: HashMap::new(),
        }
    }

    async fn run(mut self, socket: WebSocket, lease: StreamLease) {
        let _open = crate::metrics::OpenGuard::new(&self.state.metrics.ws_open);
        let (mut sink, incoming) = socket.split();
        let mut incoming = WokenOnly::new(incoming);
        let mut channel = Channel::Idle;
        let interval = self.state.config.keepalive();
        let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut last_heard = Instant::now();
        // A peer whose buffers are full for this long is as good as gone.
        let send_timeout = interval * 2;
        let shutdown = self.state.shutdown.clone();
        // Registered once, not in every turn of the loop (see `http/events.rs`).
        let stopping = shutdown.cancelled();
        let revoking = lease.revoked.cancelled();
        tokio::pin!(stopping, revoking);
        loop {
            let outgoing: Vec<Message> = tokio::select! {
                message = incoming.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        last_heard = Instant::now();
                        self.handle(&text, &mut channel).await
                    }
                    Some(Ok(Message::Binary(_))) => vec![error_frame("Send JSON text frames.")],
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        last_heard = Instant::now();
                        Vec::new()
                    }
                    Some(Err(e)) if too_long(&e) => {
                        let _ = close(&mut sink, 1009, "messages are limited to 64 KiB").await;
                        return;
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                },
                received = channel.recv() => match received {
                    Ok(event) => {
                        let mut frames = Vec::new();
                        let lagged = channel.drain(&self.state.bus, event, |event| {
                            if self.wants(event) {
                                frames.push(event_frame(&event.json));
                            }
                        });
                        if lagged {
                            frames.extend(self.resync().await);
                        }
                        frames
                    }
                    Err(RecvError::Lagged(_)) => self.resync().await,
                    Err(RecvError::Closed) => return,
                },
                _ = pings.tick() => {
                    if last_heard.elapsed() > interval * 2 {
                        let _ = close(&mut sink, 1008, "no answer to pings").await;
                        return;
                    }
                    vec![Message::Ping(Default::default())]
                }
                _ = &mut stopping => {
                    let _ = close(&mut sink, 1001, "server shutting down").await;
                    return;
                }
                _ = &mut revoking => {
                    let _ = close(&mut sink, 1008, "the credentials of this socket were revoked").await;
                    return;
                }
            };
            if !outgoing.is_empty() && !send_all(&mut sink, outgoing, send_timeout).await {
                return;
            }
        }
    }

    fn wants(&self, event: &crate::bus::Event) -> bool {
        self.follows
            .iter()
            .any(|(topic, follow)| event.seq > follow.floor && topic.matches(event))
    }

    /// Snapshots of everything followed, after this socket fell behind the bus.
    async fn resync(&mut self) -> Vec<Message> {
        let follows: Vec<Topic> = self.follows.keys().copied().collect();
        self.snapshot(follows, true).await
    }

    async fn snapshot(&mut self, follows: Vec<Topic>, resync: bool) -> Vec<Message> {
        match live::snapshots(&self.state.store, &self.state.bus, follows.clone(), resync).await {
            Ok((position, events)) => {
                for topic in follows {
                    if let Some(follow) = self.follows.get_mut(&topic) {
                        follow.floor = position;
                    }
                }
                events.iter().map(|e| event_frame(&e.json)).collect()
            }
            Err(e) => {
                // What was to start with this snapshot is not followed.
                self.follows.retain(|_, follow| follow.floor != UNREAD);
                tracing::error!(error = ?e, "could not read a snapshot");
                vec![error_frame("Internal error; it has been logged.")]
            }
        }
    }

    async fn handle(&mut self, text: &str, channel: &mut Channel) -> Vec<Message> {
        let message: ClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                return vec![error_frame(format!(
                    "Unreadable message ({e}). Send {{\"type\": \"subscribe\", \"task_id\": \"…\"}}, {{\"type\": \"subscribe\", \"all\": true}}, \"unsubscribe\" likewise, or {{\"type\": \"cancel\", \"task_id\": \"…\"}}."
                ))]
            }
        };
        match message {
            ClientMessage::Subscribe {
                task_id: Some(id), ..
            } => match self.visible(id).await {
                Ok(owner) => {
                    self.follow(Topic::Task(id), owner);
                    self.snapshot_on(channel, vec![Topic::Task(id)]).await
                }
                Err(e) => vec![error_frame(e)],
            },
            ClientMessage::Subscribe { all: true, .. } => match &self.user {
                Some(user) => {
                    let topic = Topic::User(user.id);
                    self.follow(topic, user.id);
                    self.snapshot_on(channel, vec![topic]).await
                }
                None => vec![error_frame(
                    "Following all tasks needs a token, a session cookie or a stream ticket.",
                )],
            },
            ClientMessage::Subscribe { .. } => {
                vec![error_frame("subscribe needs a task_id, or all: true.")]
            }
            ClientMessage::Unsubscribe { task_id, all } => {
                if let Some(id) = task_id {
                    self.follows.remove(&Topic::Task(id));
                }
                if let (true, Some(user)) = (all, &self.user) {
                    self.follows.remove(&Topic::User(user.id));
                }
                self.snapshot_on(channel, Vec::new()).await
            }
            ClientMessage::Cancel { task_id } => {
                let Some(user) = &self.user else {
                    return vec![error_frame(
                        "Cancelling needs a token, a session cookie or a stream ticket.",
                    )];
                };
                let s = &self.state;
                if let Some(credential) = self.credential.clone() {
                    // The watcher closes a revoked socket within a moment; a cancel sent in
                    // that moment is refused all the same.
                    match s.store.call(move |c| users::is_valid(c, &credential)).await {
                        Ok(true) => {}
                        Ok(false) => {
                            return vec![error_frame(
                                "The credentials of this socket were revoked.",
                            )]
                        }
                        Err(e) => return vec![error_frame(AppError::from(e))],
                    }
                }
                match s.tasks.cancel(user.id, task_id).await {
                    Ok(_) => Vec::new(),
                    Err(e) => vec![error_frame(e)],
                }
            }
        }
    }

    fn follow(&mut self, topic: Topic, owner: Uuid) {
        let follow = Follow {
            floor: UNREAD,
            owner,
        };
        self.follows.insert(topic, follow);
    }

    /// Moves the socket to the channels what it now follows needs (see [`Channel::move_to`]),
    /// and reads the snapshots of `new`, or of everything followed after a replaced channel.
    async fn snapshot_on(&mut self, channel: &mut Channel, mut new: Vec<Topic>) -> Vec<Message> {
        let need = Need::of(self.user.as_ref(), &self.follows);
        if channel.move_to(&self.state.bus, need) {
            new = self.follows.keys().copied().collect();
        }
        if new.is_empty() {
            return Vec::new();
        }
        self.snapshot(new, false).await
    }

    /// A task id is a capability, unless the server requires the owner. The task's owner.
    async fn visible(&self, id: Uuid) -> Result<Uuid, AppError> {
        let user = self.user.as_ref().map(|u| u.id);
        Ok(self.state.visible_task(user, id).await?.user_id)
    }
}

/// A message over `max_message_size`, which tungstenite reports as a read error.
fn too_long(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(tungstenite::Error::Capacity(_)) = e.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

async fn close<S>(sink: &mut S, code: u16, reason: &'static str) -> Result<(), axum::Error>
where
    S: futures_util::Sink<Message, Error = axum::Error> + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(frame))),
    )
    .await
    .unwrap_or(Ok(()))
}

/// A stream polled only after its own waker fired. In the connection's `select!`, every bus
/// event used to poll the socket's read half too (the split's lock, tungstenite's frame
/// reader, a readiness check): about a tenth of the server's time at 10,000 sockets, for
/// nothing, since clients rarely send. A reader task per socket would avoid it too, at the
/// cost of a task and a channel per subscriber.
struct WokenOnly<S> {
    inner: S,
    gate: std::sync::Arc<Gate>,
}

struct Gate {
    woken: std::sync::atomic::AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for Gate {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.woken.store(true, std::sync::atomic::Ordering::Release);
        self.task.wake();
    }
}

impl<S> WokenOnly<S> {
    fn new(inner: S) -> Self {
        WokenOnly {
            inner,
            gate: std::sync::Arc::new(Gate {
                // Polled once at first, to register its waker.
                woken: true.into(),
                task: Default::default(),
            }),
        }
    }
}

impl<S: futures_util::Stream + Unpin> futures_util::Stream for WokenOnly<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        use std::sync::atomic::Ordering;
        self.gate.task.register(cx.waker());
        if !self.gate.woken.swap(false, Ordering::Acquire) {
            return std::task::Poll::Pending;
        }
        let waker = std::task::Waker::from(self.gate.clone());
        let polled = self
            .inner
            .poll_next_unpin(&mut std::task::Context::from_waker(&waker));
        if polled.is_ready() {
            // A stream that gave an item registered no waker: the next call must poll it.
            self.gate.woken.store(true, Ordering::Release);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a user: a channel per task followed, up to `MAX_CHANNELS`; past that, the
    /// channel of every event.
    #[test]
    fn a_socket_reads_a_channel_per_task_up_to_the_limit() {
        let mut follows = HashMap::new();
        assert_eq!(Need::of(None, &follows), Need::Nothing);
        for n in 1..=MAX_CHANNELS + 1 {
            let follow = Follow {
                floor: 0,
                owner: Uuid::new_v4(),
            };
            follows.insert(Topic::Task(Uuid::new_v4()), follow);
            match Need::of(None, &follows) {
                Need::Topics(topics) if n <= MAX_CHANNELS => assert_eq!(topics.len(), n),
                Need::All if n > MAX_CHANNELS => {}
                other => panic!("{n} tasks need {other:?}"),
            }
        }
    }
}
