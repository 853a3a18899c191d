//! A task event, ready to send on any channel: the task's full status plus `event` and `seq`,
//! serialised once as JSON (a WebSocket frame) and as an SSE message.

use bytes::Bytes;
use serde::Serialize;
use uuid::Uuid;

use super::state::TaskState;
use super::task::{TaskRecord, TaskStatus};

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
    pub state: TaskState,
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

/// The number [`Event::around_seq`] cuts out: no event gets it, and it has the most digits.
const UNNUMBERED: u64 = u64::MAX;

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

    /// The event's JSON on either side of its number, for a store that numbers the event in
    /// the statement that writes it: `id: {seq}\ndata: {before}{seq}{after}\n\n` is the `sse`
    /// of [`Event::new`] for that `seq` (its `emitted_at` being now).
    pub fn around_seq(task: &TaskRecord, kind: EventKind) -> (String, String) {
        let event = Self::new(task, kind, UNNUMBERED);
        let json = std::str::from_utf8(&event.json).expect("serde_json writes UTF-8");
        // The last one: the status comes first, and quotes inside its strings are escaped.
        let mark = format!("\"seq\":{UNNUMBERED}");
        let at = json.rfind(&mark).expect("an event has its seq") + mark.len();
        let number = UNNUMBERED.to_string().len();
        (json[..at - number].to_owned(), json[at..].to_owned())
    }

    /// An event as the store's event log keeps it (PostgreSQL), made again on any node.
    pub fn from_stored(
        seq: u64,
        task_id: Uuid,
        user_id: Uuid,
        kind: EventKind,
        state: TaskState,
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

/// Where the store announces task changes: the bus, in the server. A trait, so that the store
/// knows nothing of fan-out and the bus nothing of the store.
pub trait Announce: Send + Sync + 'static {
    /// Numbers and delivers an event for a change just committed (SQLite: under the store's
    /// lock, so event order is commit order). Returns its `seq`.
    fn publish(&self, task: &TaskRecord, kind: EventKind) -> u64;
    /// Delivers an event that the database's event log numbered (PostgreSQL), in `seq` order.
    fn deliver(&self, event: Event);
    /// Counts on from `seq`: where the database's event log stands.
    fn start_at(&self, seq: u64);
    /// The `seq` of the last event delivered.
    fn position(&self) -> u64;
    /// The events after `after` that `keep` selects, or `None` when they are no longer all
    /// held.
    fn replay(
        &self,
        after: u64,
        keep: &dyn Fn(&Event) -> bool,
    ) -> Option<Vec<std::sync::Arc<Event>>>;
    /// Counts feeds resynced with snapshots because events were lost.
    fn resynced(&self, feeds: u64);
    /// Webhook deliveries were written in the store call under way: this node's dispatcher
    /// looks for them once that call is over (it waits for the same connection).
    fn deliveries_queued(&self) {}
}

/// A finished task whose strings and result look like an event's own fields.
#[cfg(test)]
pub(crate) fn sample_task() -> TaskRecord {
    TaskRecord {
        seq: 1,
        id: Uuid::new_v4(),
        user_id: Uuid::new_v4(),
        source_id: Uuid::new_v4(),
        source_blob: "0".repeat(32),
        source_name: r#"a,"event":"x".tif"#.into(),
        parent_id: None,
        options: crate::domain::options::RequestedOptions::default()
            .validate()
            .unwrap(),
        state: TaskState::Success,
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
        next_attempt_at: None,
        last_error: None,
        retry_of: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status cut out of an event is exactly the status serialised alone, even when the
    /// task's own strings and results look like the event's fields.
    #[test]
    fn an_events_status_is_the_status_alone() {
        let task = sample_task();
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

    /// Numbered by the store, the event is the one `Event::new` makes for that number (but for
    /// the moment in `emitted_at`), even when the task's strings hold the same characters.
    #[test]
    fn an_event_numbered_later_is_the_event_numbered_now() {
        let mut task = sample_task();
        task.source_name = format!("\"seq\":{UNNUMBERED},\"seq\":1.tif");
        let (before, after) = Event::around_seq(&task, EventKind::Progress);
        let later = format!("id: 7\ndata: {before}7{after}\n\n");
        let now = Event::new(&task, EventKind::Progress, 7);
        let parse = |sse: &[u8]| {
            let json = std::str::from_utf8(sse)
                .unwrap()
                .strip_prefix("id: 7\ndata: ")
                .unwrap();
            let mut value: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
            value.as_object_mut().unwrap().remove("emitted_at").unwrap();
            value
        };
        assert_eq!(parse(later.as_bytes()), parse(&now.sse));
        assert_eq!(parse(later.as_bytes())["seq"], 7);
        assert!(later.ends_with("}\n\n"));
    }
}
