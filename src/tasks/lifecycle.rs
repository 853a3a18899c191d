//! Every change a task can go through, each one store call: read what the decision needs,
//! check the transition against the state machine, write it, and announce the task's new
//! status. This is the only code that writes a task's state; [`super::Tasks`] runs these
//! operations off the async runtime, and the property test runs them directly.
//!
//! On SQLite the announcement happens after the write's commit and under the store's one
//! lock; on PostgreSQL it is part of the same transaction. Either way event order is commit
//! order. The webhook deliveries a change owes ([`owe`]) are written in the change's own
//! transaction, on both engines: a change is never committed without them.

use std::time::Duration;

use rand::Rng;
use uuid::Uuid;

use crate::domain::job::Failure;
use crate::domain::webhook::{self, EventType};
use crate::domain::{EventKind, NewTask, TaskRecord, TaskState, Transition};
use crate::store::idempotency::{self, Keyed, Once};
use crate::store::items::{self, NewItem};
use crate::store::tasks::{self as rows, End, Held, Retry};
use crate::store::Db;
use crate::store::{queue, tombstones, webhooks};

/// How failed runs are retried.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Runs of one task, after which a transient failure is final.
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles with each attempt.
    pub backoff: Duration,
}

/// No retry waits longer than this.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

impl Policy {
    /// The wait before the attempt after `attempts`, with ±25 % jitter, so that tasks that
    /// failed together (a node lost with all its tasks) do not all come back at once.
    fn delay(&self, attempts: u32) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(1 << attempts.saturating_sub(1).min(20));
        let jitter = rand::thread_rng().gen_range(0.75..=1.25);
        doubled.min(MAX_BACKOFF).mul_f64(jitter)
    }
}

/// Announces the task's current status, if `changed`; returns the task as it now is.
pub(super) fn announce(
    db: &mut Db,
    id: Uuid,
    kind: EventKind,
    changed: bool,
) -> anyhow::Result<Option<TaskRecord>> {
    let task = rows::get(db, id)?;
    if let (true, Some(task)) = (changed, &task) {
        db.publish(task, kind)?;
    }
    Ok(task)
}

/// Queues the webhook deliveries that task `id`'s change (`event`) owes; call it inside the
/// change's transaction, after the change.
fn owe(db: &mut Db, id: Uuid, event: Option<EventType>) -> anyhow::Result<()> {
    let Some(event) = event else {
        return Ok(());
    };
    webhooks::enqueue(db, id, event, |db| {
        Ok(rows::get(db, id)?.map(|task| {
            let data = crate::domain::task::status_json(&task);
            (
                task.user_id,
                webhook::body(event, &crate::time::now(), data),
            )
        }))
    })?;
    Ok(())
}

/// [`owe`] for a change that [`rows::Changed`] says may owe deliveries.
fn owe_if(db: &mut Db, changed: &rows::Changed, event: Option<EventType>) -> anyhow::Result<()> {
    if changed.hooked {
        owe(db, changed.task.id, event)?;
    }
    Ok(())
}

fn step(from: TaskState, to: TaskState) -> anyhow::Result<Transition> {
    Ok(Transition::new(from, to)?)
}

pub enum Submitted {
    Queued(Box<TaskRecord>),
    /// The user already has `active` tasks queued or running, the most allowed.
    Busy {
        active: u64,
    },
    /// The same request was sent before with this key: the task it made.
    Replayed(Uuid),
    /// The key was used before for another request.
    KeyReused,
}

/// Queues a new task, unless the user has `limit` active ones. Counted and inserted under the
/// user's row lock that [`idempotency::once`] takes (PostgreSQL) or the one connection's lock
/// (SQLite): no race past the limit. With a key, a request sent again gets the task it made
/// the first time.
pub fn submit(
    db: &mut Db,
    new: NewTask,
    limit: u64,
    keyed: Option<&Keyed>,
) -> anyhow::Result<Submitted> {
    let user = new.user_id;
    let work = |db: &mut Db| {
        // Counted in a statement of its own after the lock: one that took the lock would
        // count with the snapshot it started with, before the lock's holder committed.
        let active = rows::count_active(db, user)?;
        if active >= limit {
            return Ok(Submitted::Busy { active });
        }
        let callbacks = new.callbacks.clone();
        let task = rows::insert(db, new)?;
        webhooks::add_callbacks(db, task.id, &callbacks)?;
        Ok(Submitted::Queued(Box::new(task)))
    };
    let answer = |done: &Submitted| match done {
        Submitted::Queued(task) => Some((200, serde_json::json!({"task_id": task.id}).to_string())),
        _ => None,
    };
    let done = db.atomically(|db| idempotency::once(db, user, keyed, work, answer))?;
    Ok(match done {
        Once::Fresh(Submitted::Queued(task)) => {
            db.publish(&task, EventKind::State)?;
            Submitted::Queued(task)
        }
        Once::Fresh(other) => other,
        Once::Replayed { response, .. } => {
            let kept: serde_json::Value = serde_json::from_str(&response)?;
            Submitted::Replayed(serde_json::from_value(kept["task_id"].clone())?)
        }
        Once::Mismatch => Submitted::KeyReused,
    })
}

/// Moves the next queued task to PROGRESS, leased to `owner` for `lease_ms`.
pub fn claim(db: &mut Db, owner: &str, lease_ms: i64) -> anyhow::Result<Option<TaskRecord>> {
    let started = db.unsynced(|db| db.atomically(|db| take_next(db, owner, lease_ms)))?;
    if let Some(task) = &started {
        db.publish(task, EventKind::State)?;
    }
    Ok(started)
}

/// The claim's change, for [`claim`] and for a [`succeed`] that hands its worker the next task.
fn take_next(db: &mut Db, owner: &str, lease_ms: i64) -> anyhow::Result<Option<TaskRecord>> {
    let Some(started) = queue::start_next(db, owner, lease_ms, "Starting")? else {
        return Ok(None);
    };
    owe_if(db, &started, Some(EventType::TaskStarted))?;
    Ok(Some(started.task))
}

pub enum Heartbeat {
    /// Still ours; `cancel` says a cancel was asked for (on any node).
    Held { cancel: bool },
    /// The lease ran out and the task was taken over or ended: stop, publish nothing.
    Lost,
}

/// Renews `owner`'s lease on a running task (no change of state, nothing announced).
pub fn heartbeat(db: &mut Db, id: Uuid, owner: &str, lease_ms: i64) -> anyhow::Result<Heartbeat> {
    db.unsynced(|db| {
        if !rows::renew_lease(db, id, owner, lease_ms)? {
            return Ok(Heartbeat::Lost);
        }
        let cancel = rows::cancel_requested(db, id)?;
        Ok(Heartbeat::Held { cancel })
    })
}

/// Records `owner`'s progress on a running task; the task as it now is, if it was recorded
/// (and announced).
pub fn progress(
    db: &mut Db,
    id: Uuid,
    owner: &str,
    percent: f64,
    sentence: &str,
) -> anyhow::Result<Option<TaskRecord>> {
    let recorded = db.unsynced(|db| {
        db.atomically(|db| {
            let Some(changed) = rows::set_progress(db, id, owner, percent, sentence)? else {
                return Ok(None);
            };
            owe_if(db, &changed, Some(EventType::TaskProgress))?;
            Ok(Some(changed.task))
        })
    })?;
    if let Some(task) = &recorded {
        db.publish(task, EventKind::Progress)?;
    }
    Ok(recorded)
}

/// How a run ended, other than with a published output.
#[derive(Debug, Clone)]
pub enum Ending {
    /// Stopped by a cancel.
    Revoked,
    /// A transient failure is queued again while attempts are left.
    Failed(Failure),
    /// Stopped by this node's shutdown: back to the queue, the attempt refunded.
    Interrupted,
}

/// Ends `owner`'s run. Nothing changes if the claim no longer holds the task (its lease ran
/// out and another node has it).
pub fn finish(
    db: &mut Db,
    id: Uuid,
    owner: &str,
    ending: Ending,
    policy: Policy,
) -> anyhow::Result<Option<TaskRecord>> {
    let changed = db.atomically(|db| match rows::hold(db, id)? {
        Some(held) if held.state == TaskState::Progress => {
            end_run(db, id, &held, Some(owner), ending, policy)
        }
        _ => Ok(false),
    })?;
    announce(db, id, EventKind::State, changed)
}

/// Ends a run as `ending` says, except that a run whose cancel was asked for is never queued
/// again: it ends REVOKED.
fn end_run(
    db: &mut Db,
    id: Uuid,
    held: &Held,
    claim: Option<&str>,
    ending: Ending,
    policy: Policy,
) -> anyhow::Result<bool> {
    let (to, status, error) = match &ending {
        Ending::Interrupted if !held.cancel_requested => {
            let change = step(held.state, TaskState::Pending)?;
            let status = "Queued; the server restarted";
            return rows::requeue(db, id, change, claim, true, status, None);
        }
        Ending::Failed(failure)
            if failure.transient
                && !held.cancel_requested
                && held.attempts < policy.max_attempts =>
        {
            let delay = policy.delay(held.attempts);
            let status = format!(
                "Will be retried in {:.0} s (attempt {} of {}): {}",
                delay.as_secs_f64().ceil(),
                held.attempts + 1,
                policy.max_attempts,
                failure.message
            );
            let retry = Retry {
                error: &failure.message,
                delay_ms: delay.as_millis() as i64,
            };
            let change = step(held.state, TaskState::Pending)?;
            return rows::requeue(db, id, change, claim, false, &status, Some(retry));
        }
        Ending::Revoked | Ending::Interrupted => (TaskState::Revoked, "Cancelled", None),
        Ending::Failed(failure) => (TaskState::Failure, "Failed", Some(failure.message.as_str())),
    };
    let change = step(held.state, to)?;
    let end = End {
        status,
        error,
        result: None,
    };
    let Some(ended) = rows::end(db, id, change, claim, end)? else {
        return Ok(false);
    };
    owe_if(db, &ended, EventType::of_change(to, false))?;
    Ok(true)
}

pub enum Published {
    /// The id of the new output item.
    Output(Uuid),
    Cancelled,
    FolderGone,
    /// The lease ran out: another node owns the task now.
    LeaseLost,
}

/// The claim a worker that publishes an output makes for its next task, in the same
/// transaction: its owner and lease.
pub struct Then<'a> {
    pub owner: &'a str,
    pub lease_ms: i64,
}

/// Marks `owner`'s task SUCCESS and makes its output item visible, in one transaction. Writes
/// nothing if the task was cancelled meanwhile or its folder is gone. With `then`, the same
/// transaction claims the next queued task for the worker, now free (returned beside): one
/// commit per task fewer than a separate claim, which on PostgreSQL is a synchronous commit
/// under the event log's lock.
pub fn succeed(
    db: &mut Db,
    task: &TaskRecord,
    owner: &str,
    output: NewItem,
    mut result: serde_json::Value,
    then: Option<Then>,
) -> anyhow::Result<(Published, Option<TaskRecord>)> {
    let (published, ended, next) = db.atomically(|db| {
        if let Some(folder) = output.parent_id {
            if !items::is_folder(db, task.user_id, folder)? {
                return Ok((Published::FolderGone, None, None));
            }
        }
        // The end is tried first, guarded (still running, under this claim, no cancel asked
        // for): on the way every task takes, one statement; the row is read only to say why
        // it did not end.
        let item_id = Uuid::now_v7();
        result["tree_item_id"] = serde_json::json!(item_id);
        let change = step(TaskState::Progress, TaskState::Success)?;
        let end = End {
            status: "Done",
            error: None,
            result: Some(&result),
        };
        let Some(ended) = rows::end(db, task.id, change, Some(owner), end)? else {
            return Ok((why_not_ended(db, task.id, owner)?, None, None));
        };
        items::insert_as(db, item_id, output)?;
        owe_if(db, &ended, Some(EventType::TaskSucceeded))?;
        let ended = Some(ended.task);
        let next = match then {
            Some(then) => take_next(db, then.owner, then.lease_ms)?,
            None => None,
        };
        Ok((Published::Output(item_id), ended, next))
    })?;
    let announced: Vec<_> = ended
        .iter()
        .chain(&next)
        .map(|task| (task, EventKind::State))
        .collect();
    db.publish_all(&announced)?;
    Ok((published, next))
}

/// Why a publication under `owner` could not end its task.
fn why_not_ended(db: &mut Db, id: Uuid, owner: &str) -> anyhow::Result<Published> {
    Ok(match rows::hold(db, id)? {
        Some(held) if held.lease_owner.as_deref() != Some(owner) => Published::LeaseLost,
        _ => Published::Cancelled,
    })
}

pub enum Cancelled {
    /// It was queued and is now REVOKED.
    Revoked(TaskRecord),
    /// It is running; the worker will stop it and then mark it REVOKED.
    Requested(TaskRecord),
    AlreadyFinished(TaskState),
    /// Its record expired under the retention setting.
    Expired,
    NotFound,
}

/// Cancels one of `user`'s tasks.
pub fn cancel(db: &mut Db, user: Uuid, id: Uuid) -> anyhow::Result<Cancelled> {
    let changed = db.atomically(|db| {
        let Some(held) = rows::hold(db, id)?.filter(|h| h.user_id == user) else {
            return Ok(None);
        };
        cancel_held(db, id, &held).map(Some)
    })?;
    Ok(match changed {
        None if tombstones::tombstone(db, id)? == Some(user) => Cancelled::Expired,
        None => Cancelled::NotFound,
        Some(Err(state)) => Cancelled::AlreadyFinished(state),
        Some(Ok(revoked)) => match announce(db, id, EventKind::State, true)? {
            Some(task) if revoked => Cancelled::Revoked(task),
            Some(task) => Cancelled::Requested(task),
            None => Cancelled::NotFound,
        },
    })
}

/// A queued task is REVOKED at once (`Ok(true)`); a running one is asked to stop
/// (`Ok(false)`); a final one cannot be cancelled.
pub(super) fn cancel_held(
    db: &mut Db,
    id: Uuid,
    held: &Held,
) -> anyhow::Result<Result<bool, TaskState>> {
    Ok(match held.state {
        TaskState::Pending => {
            let change = step(held.state, TaskState::Revoked)?;
            let end = End {
                status: "Cancelled",
                error: None,
                result: None,
            };
            if let Some(ended) = rows::end(db, id, change, None, end)? {
                owe_if(db, &ended, Some(EventType::TaskRevoked))?;
            }
            Ok(true)
        }
        TaskState::Progress => {
            rows::request_cancel(db, id, "Cancelling…")?;
            Ok(false)
        }
        state => Err(state),
    })
}

/// What becomes of a run cut off without its node ending it (a crash, a lost node): a
/// transient failure, so it is queued again after a backoff while attempts are left; a
/// cancelled one is REVOKED.
fn cut_off(db: &mut Db, id: Uuid, held: &Held, policy: Policy, why: &str) -> anyhow::Result<bool> {
    let message = if held.attempts >= policy.max_attempts {
        format!("{why} {} times; it was not retried again.", held.attempts)
    } else {
        format!("{why}.")
    };
    let ending = if held.cancel_requested {
        Ending::Revoked
    } else {
        Ending::Failed(Failure::transient(message))
    };
    end_run(db, id, held, None, ending, policy)
}

/// Takes back running tasks whose lease ran out (`ahead_ms` from now; tests look ahead):
/// their node stopped or lost the database. Returns the ids changed.
pub fn reap(db: &mut Db, ahead_ms: i64, policy: Policy) -> anyhow::Result<Vec<Uuid>> {
    let changed = db.atomically(|db| {
        let mut changed = Vec::new();
        for (id, held) in rows::lease_expired(db, ahead_ms)? {
            let why = "The node running this conversion stopped";
            if cut_off(db, id, &held, policy, why)? {
                changed.push(id);
            }
        }
        Ok(changed)
    })?;
    for id in &changed {
        announce(db, *id, EventKind::State, true)?;
    }
    Ok(changed)
}

/// At start-up, alone on the database, no task can be running: each PROGRESS task was cut off
/// by a crash. Returns how many were queued again.
pub fn recover(db: &mut Db, policy: Policy) -> anyhow::Result<usize> {
    let (changed, requeued) = db.atomically(|db| {
        let (mut changed, mut requeued) = (Vec::new(), 0);
        for id in rows::pending_cancelled(db)? {
            let change = step(TaskState::Pending, TaskState::Revoked)?;
            let end = End {
                status: "Cancelled",
                error: None,
                result: None,
            };
            if let Some(ended) = rows::end(db, id, change, None, end)? {
                owe_if(db, &ended, Some(EventType::TaskRevoked))?;
                changed.push(id);
            }
        }
        for (id, held) in rows::running(db, None)? {
            let back = !held.cancel_requested && held.attempts < policy.max_attempts;
            let why = "The server stopped during this conversion";
            if cut_off(db, id, &held, policy, why)? {
                changed.push(id);
                requeued += back as usize;
            }
        }
        Ok((changed, requeued))
    })?;
    for id in changed {
        announce(db, id, EventKind::State, true)?;
    }
    Ok(requeued)
}

/// On a shutdown that could not wait for its workers: every task `node`'s claims still run
/// goes back to the queue (or ends REVOKED if its cancel was asked for), without using up an
/// attempt.
pub fn requeue_node(db: &mut Db, node: &str, policy: Policy) -> anyhow::Result<usize> {
    let changed = db.atomically(|db| {
        let mut changed = Vec::new();
        for (id, held) in rows::running(db, Some(node))? {
            if end_run(db, id, &held, None, Ending::Interrupted, policy)? {
                changed.push(id);
            }
        }
        Ok(changed)
    })?;
    for id in &changed {
        announce(db, *id, EventKind::State, true)?;
    }
    Ok(changed.len())
}

pub enum Forgotten {
    Deleted,
    Running,
    Expired,
    NotFound,
}

/// Forgets one of `user`'s finished tasks (its output item stays).
pub fn forget(db: &mut Db, user: Uuid, id: Uuid) -> anyhow::Result<Forgotten> {
    let Some(held) = rows::hold(db, id)?.filter(|h| h.user_id == user) else {
        if tombstones::tombstone(db, id)? == Some(user) {
            return Ok(Forgotten::Expired);
        }
        return Ok(Forgotten::NotFound);
    };
    if !held.state.is_final() {
        return Ok(Forgotten::Running);
    }
    rows::delete(db, id)?;
    Ok(Forgotten::Deleted)
}

pub enum Retried {
    Queued(Box<TaskRecord>),
    Busy {
        active: u64,
    },
    /// Only a FAILURE or REVOKED task can be retried.
    NotRetriable(TaskState),
    SourceGone,
    Expired,
    NotFound,
}

/// Queues a new task with the source of `user`'s failed or revoked task `id`, `options` and
/// `callbacks` (the old task's when `None`). The old task stays as it was: final states are
/// final.
pub fn retry(
    db: &mut Db,
    user: Uuid,
    id: Uuid,
    options: Option<crate::domain::options::Conversion>,
    callbacks: Option<Vec<webhook::Callback>>,
    limit: u64,
) -> anyhow::Result<Retried> {
    let Some(old) = rows::get(db, id)?.filter(|t| t.user_id == user) else {
        if tombstones::tombstone(db, id)? == Some(user) {
            return Ok(Retried::Expired);
        }
        return Ok(Retried::NotFound);
    };
    if !matches!(old.state, TaskState::Failure | TaskState::Revoked) {
        return Ok(Retried::NotRetriable(old.state));
    }
    if items::get(db, user, old.source_id)?.is_none() {
        return Ok(Retried::SourceGone);
    }
    let new = NewTask {
        user_id: user,
        source_id: old.source_id,
        source_blob: old.source_blob,
        source_name: old.source_name,
        parent_id: old.parent_id,
        callbacks: match callbacks {
            Some(callbacks) => callbacks,
            None => webhooks::callbacks(db, id)?,
        },
        options: options.unwrap_or(old.options),
        retry_of: Some(id),
    };
    Ok(match submit(db, new, limit, None)? {
        Submitted::Queued(task) => Retried::Queued(task),
        Submitted::Busy { active } => Retried::Busy { active },
        Submitted::Replayed(_) | Submitted::KeyReused => unreachable!("no key was given"),
    })
}
