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
//!
//! Besides the channel of every event, the bus keeps a channel per [`Topic`] (one task, or one
//! user's tasks) that an event stream follows, made by its first subscriber and dropped with
//! its last: a stream is woken by the events it follows, not by every event of the server.

use std::collections::{HashMap, VecDeque};
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
    /// Channels of the topics someone follows.
    topics: Mutex<HashMap<Topic, broadcast::Sender<Arc<Event>>>>,
    /// `--bus-capacity`, which bounds the topics' too.
    capacity: usize,
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

/// What a feed follows, and the channel of the bus that carries it: the events of one task,
/// or of all of one user's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    Task(Uuid),
    User(Uuid),
}

impl Topic {
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Topic::Task(id) => event.task_id == *id,
            Topic::User(user) => event.user_id == *user,
        }
    }

    /// Events the topic's channel holds for a subscriber that falls behind, or for a burst (a
    /// relay catching up after its connection was lost): a user's, as many as the channel of
    /// every event (`--bus-capacity`); one task's, a few seconds' worth (it sends up to ten a
    /// second), up to that. A channel's slots are allocated when it is made, and one task's
    /// feed may be the only one on its channel.
    fn capacity(self, bus_capacity: usize) -> usize {
        match self {
            Topic::Task(_) => bus_capacity.min(32),
            Topic::User(_) => bus_capacity,
        }
    }
}

/// A subscription to one topic; its channel goes with the last one dropped.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Event>>,
    topic: Topic,
    bus: Bus,
}

impl Subscription {
    pub fn topic(&self) -> Topic {
        self.topic
    }
}

impl std::ops::Deref for Subscription {
    type Target = broadcast::Receiver<Arc<Event>>;

    fn deref(&self) -> &Self::Target {
        &self.rx
    }
}

impl std::ops::DerefMut for Subscription {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.rx
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Under the map's lock no one subscribes meanwhile: a count of one is this receiver.
        let mut topics = self.bus.topics();
        if topics
            .get(&self.topic)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            topics.remove(&self.topic);
        }
    }
}

/// How many receivers each kind of channel has (for metrics).
pub struct Listeners {
    pub task: usize,
    pub user: usize,
    pub all: usize,
}

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
                topics: Mutex::default(),
                capacity,
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
        {
            // Into every channel of the event under one hold of the lock: `drain_merged`
            // relies on it.
            let topics = self.topics();
            for topic in [Topic::Task(event.task_id), Topic::User(event.user_id)] {
                if let Some(tx) = topics.get(&topic) {
                    let _ = tx.send(event.clone());
                }
            }
        }
        let _ = self.inner.tx.send(event);
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, broadcast::Sender<Arc<Event>>>> {
        self.inner.topics.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Every event of the server.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.tx.subscribe()
    }

    /// The events of `topic` only, from now on.
    pub fn subscribe_to(&self, topic: Topic) -> Subscription {
        let rx = self
            .topics()
            .entry(topic)
            .or_insert_with(|| broadcast::channel(topic.capacity(self.inner.capacity)).0)
            .subscribe();
        Subscription {
            rx,
            topic,
            bus: self.clone(),
        }
    }

    /// Every event waiting in `subscriptions`, in `seq` order, each once; `None` when one of
    /// them fell behind. Taken under the topics' lock, under which an event is in all of its
    /// channels or in none, so the events taken are every event of these channels up to one
    /// `seq`, and none comes later with a smaller one.
    pub fn drain_merged(&self, subscriptions: &mut [Subscription]) -> Option<Vec<Arc<Event>>> {
        let _cut = self.topics();
        let mut events = Vec::new();
        for subscription in subscriptions {
            loop {
                match subscription.rx.try_recv() {
                    Ok(event) => events.push(event),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => return None,
                    Err(_) => break,
                }
            }
        }
        events.sort_by_key(|e| e.seq);
        events.dedup_by_key(|e| e.seq);
        Some(events)
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

    pub fn listeners(&self) -> Listeners {
        let mut listeners = Listeners {
            task: 0,
            user: 0,
            all: self.inner.tx.receiver_count(),
        };
        for (topic, tx) in self.topics().iter() {
            match topic {
                Topic::Task(_) => listeners.task += tx.receiver_count(),
                Topic::User(_) => listeners.user += tx.receiver_count(),
            }
        }
        listeners
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::sample_task;

    /// Two users' channels drained together while another thread publishes to both in turn:
    /// every event comes once, and `seq` never goes back across drains.
    #[test]
    fn channels_drained_together_give_their_events_in_seq_order() {
        const EVENTS: usize = 20_000;
        let bus = Bus::new(EVENTS * 2, 16);
        let (a, b) = (sample_task(), sample_task());
        let mut subscriptions = [
            bus.subscribe_to(Topic::User(a.user_id)),
            bus.subscribe_to(Topic::User(b.user_id)),
        ];
        let publisher = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for i in 0..EVENTS {
                    bus.publish(if i % 2 == 0 { &a } else { &b }, EventKind::Progress);
                }
            })
        };
        let (mut seen, mut last) = (0, 0);
        while seen < EVENTS {
            let events = bus
                .drain_merged(&mut subscriptions)
                .expect("the channels hold every event");
            for event in events {
                assert!(event.seq > last, "seq went back: {last} then {}", event.seq);
                last = event.seq;
                seen += 1;
            }
        }
        publisher.join().unwrap();
        assert_eq!(seen, EVENTS);
    }

    #[test]
    fn a_topic_carries_its_own_events_in_order_and_goes_with_its_last_subscriber() {
        let bus = Bus::new(1024, 16);
        let (mut a, b) = (sample_task(), sample_task());
        let mut a2 = sample_task();
        a2.user_id = a.user_id;
        let mut task_feed = bus.subscribe_to(Topic::Task(a.id));
        let mut user_feed = bus.subscribe_to(Topic::User(a.user_id));
        let other_user = bus.subscribe_to(Topic::User(b.user_id));
        bus.publish(&a, EventKind::Progress);
        bus.publish(&b, EventKind::Progress);
        bus.publish(&a2, EventKind::Progress);
        a.progress = 100.0;
        bus.publish(&a, EventKind::State);
        let drain = |rx: &mut Subscription| {
            std::iter::from_fn(|| rx.try_recv().ok())
                .map(|e| (e.task_id, e.seq))
                .collect::<Vec<_>>()
        };
        let start = bus.position() - 4;
        assert_eq!(
            drain(&mut task_feed),
            [(a.id, start + 1), (a.id, start + 4)]
        );
        assert_eq!(
            drain(&mut user_feed),
            [(a.id, start + 1), (a2.id, start + 3), (a.id, start + 4)]
        );

        let second = bus.subscribe_to(Topic::Task(a.id));
        drop(task_feed);
        assert!(
            bus.topics().contains_key(&Topic::Task(a.id)),
            "one subscriber is left"
        );
        drop((second, user_feed, other_user));
        assert!(bus.topics().is_empty(), "no subscriber, no channel");
        bus.publish(&a, EventKind::Progress); // to no topic at all
        assert!(bus.topics().is_empty());
    }
}
