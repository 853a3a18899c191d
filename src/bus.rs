//! The broadcast bus of task events, and its replay window.
//!
//! Every change of a task is published once, as a ready-to-send event: the task's full
//! status plus `event` and `seq`, serialised to JSON (for WebSocket frames) and to an SSE
//! message, once, whatever the number of subscribers. `seq` is one server-wide counter, so it
//! increases per task and along every feed, and one number resumes any SSE stream.
//!
//! Publishing happens under the store's lock (see `tasks::change`): the order of events is
//! the order of commits, and a snapshot read under that lock together with [`Bus::position`]
//! is exactly the state after every event up to that position.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::store::TaskRecord;
use crate::tasks::TaskStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    State,
    Progress,
    Snapshot,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::Progress => "progress",
            EventKind::Snapshot => "snapshot",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        [EventKind::State, EventKind::Progress, EventKind::Snapshot]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One event, ready to send on any channel.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    pub task_id: Uuid,
    pub user_id: Uuid,
    pub kind: EventKind,
    /// The task reached SUCCESS, FAILURE or REVOKED.
    pub is_final: bool,
    /// The event as JSON: a WebSocket text frame. It shares its bytes with `sse`: the replay
    /// window holds ten thousand events, and a final one carries the whole result.
    pub json: Bytes,
    /// The event as an SSE message, `id:` and `data:` lines included.
    pub sse: Bytes,
    pub state: crate::tasks::TaskState,
    /// Where the status's own fields end in `json`, found once here rather than per request.
    status_len: usize,
}

/// The event every live channel sends: a task's full status, plus what it is and where.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = TaskEvent)]
pub struct Body<'a> {
    #[serde(flatten)]
    status: TaskStatus<'a>,
    event: EventKind,
    seq: u64,
    /// On a snapshot: events were missed (lag, or a resume beyond the replay window) and this
    /// snapshot replaces them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    resync: bool,
    /// When the server made this event (RFC 3339, microseconds): lets a client measure how
    /// long it took to arrive.
    emitted_at: String,
}

impl Event {
    pub fn new(task: &TaskRecord, kind: EventKind, seq: u64) -> Event {
        Self::build(task, kind, seq, false)
    }

    /// A snapshot of `task` as of bus position `seq`.
    pub fn snapshot(task: &TaskRecord, seq: u64, resync: bool) -> Event {
        Self::build(task, EventKind::Snapshot, seq, resync)
    }

    fn build(task: &TaskRecord, kind: EventKind, seq: u64, resync: bool) -> Event {
        let body = Body {
            status: TaskStatus::from(task),
            event: kind,
            seq,
            resync,
            emitted_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        };
        let head = format!("id: {seq}\ndata: ");
        let mut sse = head.clone().into_bytes();
        serde_json::to_writer(&mut sse, &body).expect("events serialise");
        let json_end = sse.len();
        sse.extend_from_slice(b"\n\n");
        let sse = Bytes::from(sse);
        Event {
            seq,
            task_id: task.id,
            user_id: task.user_id,
            kind,
            is_final: task.state.is_final(),
            state: task.state,
            json: sse.slice(head.len()..json_end),
            status_len: status_len(&sse[head.len()..json_end]),
            sse,
        }
    }

    /// An event as the store's event log keeps it (PostgreSQL), made again on any node.
    pub fn from_stored(
        seq: u64,
        task_id: Uuid,
        user_id: Uuid,
        kind: EventKind,
        state: crate::tasks::TaskState,
        sse: Bytes,
    ) -> anyhow::Result<Event> {
        let start = sse
            .windows(DATA_FIELD.len())
            .position(|w| w == DATA_FIELD)
            .map(|i| i + DATA_FIELD.len())
            .ok_or_else(|| anyhow::anyhow!("a stored event without data"))?;
        let end = sse.len().saturating_sub(2);
        anyhow::ensure!(start <= end, "a stored event too short");
        let json = sse.slice(start..end);
        Ok(Event {
            seq,
            task_id,
            user_id,
            kind,
            is_final: state.is_final(),
            state,
            status_len: status_len(&json),
            json,
            sse,
        })
    }

    /// The task's status alone, as `GET /tasks/{id}/status` answers it: the event without the
    /// fields that follow the status's own.
    pub fn status(&self) -> Bytes {
        let mut status = Vec::with_capacity(self.status_len + 1);
        status.extend_from_slice(&self.json[..self.status_len]);
        status.push(b'}');
        status.into()
    }
}

/// The length of the status's fields in an event's JSON: up to the last `,"event":`, the first
/// of the fields that follow them (string values cannot hold an unescaped quote, so the search
/// cannot stop inside one).
fn status_len(json: &[u8]) -> usize {
    json.windows(EVENT_FIELD.len())
        .rposition(|w| w == EVENT_FIELD)
        .expect("every event has an \"event\" field")
}

const EVENT_FIELD: &[u8] = b",\"event\":";
const DATA_FIELD: &[u8] = b"data: ";

#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    tx: broadcast::Sender<Arc<Event>>,
    /// The seq of the last published event.
    position: AtomicU64,
    /// The most recent events, oldest first, for `Last-Event-ID` resumes.
    window: Mutex<VecDeque<Arc<Event>>>,
    window_size: usize,
    /// Each task's latest event, so status reads need no database. Finished tasks are kept
    /// up to `LATEST_FINISHED`, oldest forgotten first.
    latest: Mutex<Latest>,
    stats: BusStats,
}

#[derive(Default)]
struct Latest {
    by_task: std::collections::HashMap<Uuid, Arc<Event>>,
    finished: VecDeque<Uuid>,
}

/// Pollers ask about running and just-finished tasks; older ones are read from the database.
const LATEST_FINISHED: usize = 1_000;

/// Counters for metrics and tests.
#[derive(Default)]
pub struct BusStats {
    pub published: AtomicU64,
    pub coalesced: AtomicU64,
    pub lag_resyncs: AtomicU64,
}

impl Bus {
    /// `capacity` bounds what one subscriber may fall behind before it lags (and is resynced
    /// with snapshots); `window_size` bounds the replay window.
    pub fn new(capacity: usize, window_size: usize) -> Bus {
        // Starting from the clock keeps `seq` increasing across restarts (it advances a
        // million per second; events do not), so a client's Last-Event-ID from before a
        // restart is never mistaken for a future event. It stays below 2^53 for JavaScript.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Bus {
            inner: Arc::new(Inner {
                tx: broadcast::channel(capacity).0,
                position: AtomicU64::new(start),
                window: Mutex::new(VecDeque::with_capacity(window_size)),
                window_size,
                latest: Mutex::default(),
                stats: BusStats::default(),
            }),
        }
    }

    /// The seq of the last event published.
    pub fn position(&self) -> u64 {
        self.inner.position.load(Ordering::SeqCst)
    }

    /// Publishes the task's current status. Call it under the store's lock, right after the
    /// change is committed. Never blocks: a slow subscriber lags, the publisher does not wait.
    pub fn publish(&self, task: &TaskRecord, kind: EventKind) -> Arc<Event> {
        let seq = self.inner.position.fetch_add(1, Ordering::SeqCst) + 1;
        let event = Arc::new(Event::new(task, kind, seq));
        self.deliver(event.clone());
        event
    }

    /// Delivers an event whose `seq` was given elsewhere (by PostgreSQL's event log, for events
    /// from every node), in `seq` order.
    pub fn deliver_stored(&self, event: Event) {
        self.inner.position.fetch_max(event.seq, Ordering::SeqCst);
        self.deliver(Arc::new(event));
    }

    /// Counts from `seq` instead of the clock: on PostgreSQL the event log numbers events, and
    /// its last one is where this node's bus starts.
    pub fn start_at(&self, seq: u64) {
        self.inner.position.store(seq, Ordering::SeqCst);
    }

    fn deliver(&self, event: Arc<Event>) {
        {
            let mut window = self.inner.window.lock().unwrap_or_else(|p| p.into_inner());
            if window.len() == self.inner.window_size {
                window.pop_front();
            }
            window.push_back(event.clone());
        }
        {
            let mut latest = self.inner.latest.lock().unwrap_or_else(|p| p.into_inner());
            latest.by_task.insert(event.task_id, event.clone());
            if event.is_final {
                latest.finished.push_back(event.task_id);
                if latest.finished.len() > LATEST_FINISHED {
                    if let Some(old) = latest.finished.pop_front() {
                        if latest.by_task.get(&old).is_some_and(|e| e.is_final) {
                            latest.by_task.remove(&old);
                        }
                    }
                }
            }
        }
        self.inner.stats.published.fetch_add(1, Ordering::Relaxed);
        let _ = self.inner.tx.send(event);
    }

    /// The latest event published for a task since this process started, if any.
    pub fn latest(&self, task: Uuid) -> Option<Arc<Event>> {
        let latest = self.inner.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.by_task.get(&task).cloned()
    }

    /// Drops a deleted task's latest event.
    pub fn forget(&self, task: Uuid) {
        let mut latest = self.inner.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.by_task.remove(&task);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.tx.subscribe()
    }

    /// The events after `after` that `keep` selects, or `None` when the window no longer
    /// holds all of them (the caller then sends a fresh snapshot instead).
    pub fn replay(&self, after: u64, keep: impl Fn(&Event) -> bool) -> Option<Vec<Arc<Event>>> {
        let window = self.inner.window.lock().unwrap_or_else(|p| p.into_inner());
        let position = self.position();
        if after > position {
            return None;
        }
        let oldest = window.front().map_or(position + 1, |e| e.seq);
        if after + 1 < oldest {
            return None;
        }
        Some(
            window
                .iter()
                .filter(|e| e.seq > after && keep(e))
                .cloned()
                .collect(),
        )
    }

    pub fn stats(&self) -> &BusStats {
        &self.inner.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status cut out of an event is exactly the status serialised alone, even when the
    /// task's own strings and results look like the event's fields.
    #[test]
    fn an_events_status_is_the_status_alone() {
        let task = TaskRecord {
            seq: 1,
            id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            source_id: Uuid::new_v4(),
            source_blob: "0".repeat(32),
            source_name: r#"a,"event":"x".tif"#.into(),
            parent_id: None,
            options: crate::convert::RequestedOptions::default()
                .validate()
                .unwrap(),
            state: crate::tasks::TaskState::Success,
            progress: 100.0,
            status: "Done".into(),
            result: Some(serde_json::json!({"event": "not ours", "seq": 3})),
            error: None,
            attempts: 1,
            cancel_requested: false,
            created_at: "2026-01-01T00:00:00Z".into(),
            started_at: None,
            finished_at: None,
            queue_position: None,
        };
        let event = Event::new(&task, EventKind::State, 42);
        let alone = serde_json::to_vec(&TaskStatus::from(&task)).unwrap();
        assert_eq!(event.status(), Bytes::from(alone));
        let parsed: serde_json::Value = serde_json::from_slice(&event.json).unwrap();
        assert_eq!(parsed["seq"], 42);
        assert!(event.sse.starts_with(b"id: 42\ndata: {"));
        assert!(event.sse.ends_with(b"}\n\n"));

        let stored = Event::from_stored(
            event.seq,
            event.task_id,
            event.user_id,
            event.kind,
            event.state,
            event.sse.clone(),
        )
        .unwrap();
        assert_eq!(stored.json, event.json);
        assert_eq!(stored.status(), event.status());
        assert!(stored.is_final);
    }
}
