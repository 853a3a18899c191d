//! The broadcast bus of task events, and its replay window.
//!
//! Every change of a task is published once, as a ready-to-send event: the task's full
//! status plus `event` and `seq`, serialised to JSON (for WebSocket frames) and to an SSE
//! message, once, whatever the number of subscribers. `seq` is one server-wide counter, so it
//! increases per task and along every feed, and one number resumes any SSE stream.
//!
//! Publishing happens under the store's lock (the store announces through
//! [`Announce`], which the bus implements): the order of events is
//! the order of commits, and a snapshot read under that lock together with [`Bus::position`]
//! is exactly the state after every event up to that position.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use uuid::Uuid;

pub use crate::domain::event::{Body, Event, EventKind};
use crate::domain::{Announce, TaskRecord};

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
    /// Woken when a store call on this node queued webhook deliveries.
    deliveries: tokio::sync::Notify,
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
                deliveries: tokio::sync::Notify::new(),
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

    /// Returns once a store call on this node has queued webhook deliveries (at once if one
    /// did since the last wait).
    pub async fn deliveries_queued(&self) {
        self.inner.deliveries.notified().await
    }
}

impl Announce for Bus {
    fn publish(&self, task: &TaskRecord, kind: EventKind) -> u64 {
        Bus::publish(self, task, kind).seq
    }

    fn deliver(&self, event: Event) {
        self.deliver_stored(event)
    }

    fn start_at(&self, seq: u64) {
        Bus::start_at(self, seq)
    }

    fn position(&self) -> u64 {
        Bus::position(self)
    }

    fn replay(&self, after: u64, keep: &dyn Fn(&Event) -> bool) -> Option<Vec<Arc<Event>>> {
        Bus::replay(self, after, keep)
    }

    fn deliveries_queued(&self) {
        self.inner.deliveries.notify_one();
    }

    fn resynced(&self, feeds: u64) {
        self.inner
            .stats
            .lag_resyncs
            .fetch_add(feeds, Ordering::Relaxed);
    }
}
