//! Following tasks live: where a feed starts (a snapshot, or a replay after `Last-Event-ID`),
//! which events it keeps, and how it recovers when it falls behind. Shared by SSE and
//! WebSocket.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::bus::{Bus, Event, Subscription, Topic};
use crate::store::{tasks as task_rows, Store, TaskRecord};

/// How many of a user's most recent tasks a user-wide snapshot shows.
pub const USER_SNAPSHOT_TASKS: u32 = 100;

/// What a snapshot of `follow` shows: the task, or the user's latest tasks; oldest first.
fn select(follow: Topic, c: &mut crate::store::Db) -> anyhow::Result<Vec<TaskRecord>> {
    match follow {
        Topic::Task(id) => Ok(task_rows::get(c, id)?.into_iter().collect()),
        Topic::User(user) => {
            let mut tasks = task_rows::list(c, user, None, USER_SNAPSHOT_TASKS, None)?;
            tasks.reverse(); // oldest first, as events would have come
            Ok(tasks)
        }
    }
}

/// The start of a feed: a subscription, the events to send first, and the bus position they
/// bring the client to. Events on `rx` at or below `position` are already covered.
pub struct Start {
    pub rx: Subscription,
    pub position: u64,
    pub first: Vec<Arc<Event>>,
}

/// Starts a feed. With `resume_after`, replays what was missed if the replay window still
/// holds it; otherwise (or without it) sends a snapshot, marked `resync` when it replaces a
/// replay that was asked for.
pub async fn start(
    store: &Store,
    bus: &Bus,
    follow: Topic,
    resume_after: Option<u64>,
) -> anyhow::Result<Start> {
    let bus = bus.clone();
    let (rx, position, rows) = store
        .call(move |c| {
            // Under the store's lock no event is published on this node, so subscription,
            // position and the rows read below all describe the same moment. (On PostgreSQL,
            // events up to `position` may still reach the bus after the subscription: they
            // are below `position`, so the feed skips them.)
            c.consistent_reads()?;
            let rx = bus.subscribe_to(follow);
            let position = c.position()?;
            if let Some(after) = resume_after {
                if let Some(missed) = c.replay(after, position, |e| follow.matches(e))? {
                    // A task that ended before the client left: nothing new to replay, so the
                    // final state is sent again and the feed can end instead of idling.
                    let ended_unseen = match follow {
                        Topic::Task(id) if !missed.iter().any(|e| e.is_final) => {
                            task_rows::get(c, id)?.filter(|t| t.state.is_final())
                        }
                        _ => None,
                    };
                    if let Some(task) = ended_unseen {
                        return Ok((rx, position, Rows::Snapshot(vec![task])));
                    }
                    return Ok((rx, position, Rows::Ready(missed)));
                }
            }
            Ok((rx, position, Rows::Snapshot(select(follow, c)?)))
        })
        .await?;
    // Serialising happens after the store's lock is released: a crowd of clients connecting
    // at once must not hold up the workers' writes.
    let first = match rows {
        Rows::Ready(first) => first,
        Rows::Snapshot(tasks) => tasks
            .iter()
            .map(|t| Arc::new(Event::snapshot(t, position, resume_after.is_some())))
            .collect(),
    };
    Ok(Start {
        rx,
        position,
        first,
    })
}

/// Hands `first`, then every event already waiting on `rx`, to `each` until it answers false,
/// so that a feed sends them in one write: under load this is what keeps a crowd of
/// subscribers from costing a syscall per event. True when `rx` lagged meanwhile (the feed
/// then resyncs with snapshots).
pub fn drain_waiting(
    rx: &mut broadcast::Receiver<Arc<Event>>,
    first: Arc<Event>,
    mut each: impl FnMut(&Event) -> bool,
) -> bool {
    let mut next = first;
    loop {
        if !each(&next) {
            return false;
        }
        match rx.try_recv() {
            Ok(more) => next = more,
            Err(broadcast::error::TryRecvError::Lagged(_)) => return true,
            Err(_) => return false,
        }
    }
}

/// What a feed starts with, as read under the store's lock.
enum Rows {
    Ready(Vec<Arc<Event>>),
    Snapshot(Vec<TaskRecord>),
}

/// Fresh snapshots of what `follows` select, and the bus position they are as of. `resync`
/// marks them as replacing events the client missed.
pub async fn snapshots(
    store: &Store,
    bus: &Bus,
    follows: Vec<Topic>,
    resync: bool,
) -> anyhow::Result<(u64, Vec<Arc<Event>>)> {
    if resync {
        bus.stats()
            .lag_resyncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let (position, tasks) = store
        .call(move |c| {
            c.consistent_reads()?;
            let position = c.position()?;
            let mut tasks = Vec::new();
            for follow in follows {
                tasks.extend(select(follow, c)?);
            }
            Ok((position, tasks))
        })
        .await?;
    let events = tasks
        .iter()
        .map(|task| Arc::new(Event::snapshot(task, position, resync)))
        .collect();
    Ok((position, events))
}
