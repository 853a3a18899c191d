//! Every change a task can go through, each one store call: read what the decision needs,
//! check the transition against the state machine, write it, and announce the task's new
//! status. This is the only code that writes a task's state; [`super::Tasks`] runs these
//! operations off the async runtime, and the property test runs them directly.
//!
//! On SQLite the announcement happens after the write's commit and under the store's one
//! lock; on PostgreSQL it is part of the same transaction. Either way event order is commit
//! order.

use uuid::Uuid;

use crate::domain::{EventKind, NewTask, TaskRecord, TaskState, Transition};
use crate::store::items::{self, NewItem};
use crate::store::tasks::{self as rows, End, Held};
use crate::store::Db;

/// Announces the task's current status, if `changed`; returns the task as it now is.
fn announce(
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

fn step(from: TaskState, to: TaskState) -> anyhow::Result<Transition> {
    Ok(Transition::new(from, to)?)
}

pub enum Submitted {
    Queued(Box<TaskRecord>),
    /// The user already has `active` tasks queued or running, the most allowed.
    Busy {
        active: u64,
    },
}

/// Queues a new task, unless the user has `limit` active ones. Counted and inserted in one
/// call that holds the user's row (PostgreSQL) or the one connection's lock (SQLite): no race
/// past the limit.
pub fn submit(db: &mut Db, new: NewTask, limit: u64) -> anyhow::Result<Submitted> {
    let active = rows::count_active(db, new.user_id)?;
    if active >= limit {
        return Ok(Submitted::Busy { active });
    }
    let task = rows::insert(db, new)?;
    db.publish(&task, EventKind::State)?;
    Ok(Submitted::Queued(Box::new(task)))
}

/// Moves the next queued task to PROGRESS, leased to `owner` for `lease_ms`.
pub fn claim(db: &mut Db, owner: &str, lease_ms: i64) -> anyhow::Result<Option<TaskRecord>> {
    let started = db.unsynced(|db| {
        db.atomically(|db| {
            let Some(id) = rows::next_pending(db)? else {
                return Ok(None);
            };
            let change = step(TaskState::Pending, TaskState::Progress)?;
            Ok(rows::start(db, id, change, owner, lease_ms, "Starting")?.then_some(id))
        })
    })?;
    match started {
        Some(id) => announce(db, id, EventKind::State, true),
        None => Ok(None),
    }
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

/// Records `owner`'s progress on a running task.
pub fn progress(
    db: &mut Db,
    id: Uuid,
    owner: &str,
    percent: f64,
    sentence: &str,
) -> anyhow::Result<Option<TaskRecord>> {
    let changed = db.unsynced(|db| rows::set_progress(db, id, owner, percent, sentence))?;
    announce(db, id, EventKind::Progress, changed)
}

/// How a run ended, other than with a published output.
#[derive(Debug, Clone)]
pub enum Ending {
    /// Stopped by a cancel.
    Revoked,
    Failed(String),
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
) -> anyhow::Result<Option<TaskRecord>> {
    let changed = match rows::hold(db, id)? {
        Some(held) if held.state == TaskState::Progress => {
            end_run(db, id, &held, Some(owner), ending)?
        }
        _ => false,
    };
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
) -> anyhow::Result<bool> {
    let (to, status, error) = match &ending {
        Ending::Interrupted if !held.cancel_requested => {
            let change = step(held.state, TaskState::Pending)?;
            return rows::requeue(db, id, change, claim, true, "Queued; the server restarted");
        }
        Ending::Revoked | Ending::Interrupted => (TaskState::Revoked, "Cancelled", None),
        Ending::Failed(error) => (TaskState::Failure, "Failed", Some(error.as_str())),
    };
    let change = step(held.state, to)?;
    let end = End {
        status,
        error,
        result: None,
    };
    rows::end(db, id, change, claim, end)
}

pub enum Published {
    /// The id of the new output item.
    Output(Uuid),
    Cancelled,
    FolderGone,
    /// The lease ran out: another node owns the task now.
    LeaseLost,
}

/// Marks `owner`'s task SUCCESS and makes its output item visible, in one transaction. Writes
/// nothing if the task was cancelled meanwhile or its folder is gone.
pub fn succeed(
    db: &mut Db,
    task: &TaskRecord,
    owner: &str,
    output: NewItem,
    mut result: serde_json::Value,
) -> anyhow::Result<Published> {
    let published = db.atomically(|db| {
        if let Some(folder) = output.parent_id {
            if !items::is_folder(db, task.user_id, folder)? {
                return Ok(Published::FolderGone);
            }
        }
        let Some(held) = rows::hold(db, task.id)? else {
            return Ok(Published::Cancelled);
        };
        if held.lease_owner.as_deref() != Some(owner) {
            return Ok(Published::LeaseLost);
        }
        if held.cancel_requested || held.state != TaskState::Progress {
            return Ok(Published::Cancelled);
        }
        let item = items::insert(db, output)?;
        result["tree_item_id"] = serde_json::json!(item.id);
        let change = step(held.state, TaskState::Success)?;
        let end = End {
            status: "Done",
            error: None,
            result: Some(&result),
        };
        rows::end(db, task.id, change, Some(owner), end)?;
        Ok(Published::Output(item.id))
    })?;
    if let Published::Output(_) = published {
        announce(db, task.id, EventKind::State, true)?;
    }
    Ok(published)
}

pub enum Cancelled {
    /// It was queued and is now REVOKED.
    Revoked(TaskRecord),
    /// It is running; the worker will stop it and then mark it REVOKED.
    Requested(TaskRecord),
    AlreadyFinished(TaskState),
    NotFound,
}

/// Cancels one of `user`'s tasks.
pub fn cancel(db: &mut Db, user: Uuid, id: Uuid) -> anyhow::Result<Cancelled> {
    let changed = db.atomically(|db| {
        let Some(held) = rows::hold(db, id)?.filter(|h| h.user_id == user) else {
            return Ok(None);
        };
        Ok(Some(match held.state {
            TaskState::Pending => {
                let change = step(held.state, TaskState::Revoked)?;
                let end = End {
                    status: "Cancelled",
                    error: None,
                    result: None,
                };
                rows::end(db, id, change, None, end)?;
                Ok(true)
            }
            TaskState::Progress => {
                rows::request_cancel(db, id, "Cancelling…")?;
                Ok(false)
            }
            state => Err(state),
        }))
    })?;
    Ok(match changed {
        None => Cancelled::NotFound,
        Some(Err(state)) => Cancelled::AlreadyFinished(state),
        Some(Ok(revoked)) => match announce(db, id, EventKind::State, true)? {
            Some(task) if revoked => Cancelled::Revoked(task),
            Some(task) => Cancelled::Requested(task),
            None => Cancelled::NotFound,
        },
    })
}

/// What becomes of a run cut off without its node ending it (a crash, a lost node): a
/// cancelled one is REVOKED, one with attempts left is queued again, the rest fail.
fn cut_off(
    db: &mut Db,
    id: Uuid,
    held: &Held,
    max_attempts: u32,
    requeued: &str,
    failed: impl FnOnce(u32) -> String,
) -> anyhow::Result<bool> {
    if held.cancel_requested {
        return end_run(db, id, held, None, Ending::Revoked);
    }
    if held.attempts >= max_attempts {
        return end_run(db, id, held, None, Ending::Failed(failed(held.attempts)));
    }
    let change = step(held.state, TaskState::Pending)?;
    rows::requeue(db, id, change, None, false, requeued)
}

/// Takes back running tasks whose lease ran out (`ahead_ms` from now; tests look ahead):
/// their node stopped or lost the database. Returns the ids changed.
pub fn reap(db: &mut Db, ahead_ms: i64, max_attempts: u32) -> anyhow::Result<Vec<Uuid>> {
    let changed = db.atomically(|db| {
        let mut changed = Vec::new();
        for (id, held) in rows::lease_expired(db, ahead_ms)? {
            let why = |attempts| {
                format!(
                    "The node running this conversion stopped {attempts} times; it was not \
                     retried again."
                )
            };
            if cut_off(
                db,
                id,
                &held,
                max_attempts,
                "Queued again: the node running it stopped",
                why,
            )? {
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
pub fn recover(db: &mut Db, max_attempts: u32) -> anyhow::Result<usize> {
    let (changed, requeued) = db.atomically(|db| {
        let (mut changed, mut requeued) = (Vec::new(), 0);
        for id in rows::pending_cancelled(db)? {
            let change = step(TaskState::Pending, TaskState::Revoked)?;
            let end = End {
                status: "Cancelled",
                error: None,
                result: None,
            };
            if rows::end(db, id, change, None, end)? {
                changed.push(id);
            }
        }
        for (id, held) in rows::running(db, None)? {
            let why = |attempts| {
                format!(
                    "The server stopped during this conversion {attempts} times; it was not \
                     retried again."
                )
            };
            let back = !held.cancel_requested && held.attempts < max_attempts;
            if cut_off(
                db,
                id,
                &held,
                max_attempts,
                "Queued again after a server restart",
                why,
            )? {
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
pub fn requeue_node(db: &mut Db, node: &str) -> anyhow::Result<usize> {
    let changed = db.atomically(|db| {
        let mut changed = Vec::new();
        for (id, held) in rows::running(db, Some(node))? {
            if end_run(db, id, &held, None, Ending::Interrupted)? {
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
    NotFound,
}

/// Forgets one of `user`'s finished tasks (its output item stays).
pub fn forget(db: &mut Db, user: Uuid, id: Uuid) -> anyhow::Result<Forgotten> {
    let Some(held) = rows::hold(db, id)?.filter(|h| h.user_id == user) else {
        return Ok(Forgotten::NotFound);
    };
    if !held.state.is_final() {
        return Ok(Forgotten::Running);
    }
    rows::delete(db, id)?;
    Ok(Forgotten::Deleted)
}
