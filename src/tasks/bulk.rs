//! Bulk actions over many of one user's tasks: cancel the ones a filter takes, forget the
//! finished ones. Each is one store call, through the same steps as the single actions.

use uuid::Uuid;

use super::lifecycle::{announce, cancel_held};
use crate::domain::{EventKind, TaskState};
use crate::store::tasks::{self as rows, Filter};
use crate::store::Db;

/// Cancels every task of `user`'s that `filter` takes among the queued and running ones.
/// Returns the ids cancelled, each with whether it was running (its worker must be told).
pub fn cancel_matching(
    db: &mut Db,
    user: Uuid,
    filter: &Filter,
) -> anyhow::Result<Vec<(Uuid, bool)>> {
    let cancelled = db.atomically(|db| {
        let active = [TaskState::Pending, TaskState::Progress];
        let mut cancelled = Vec::new();
        for id in rows::matching(db, user, &active, filter)? {
            let Some(held) = rows::hold(db, id)? else {
                continue;
            };
            if let Ok(revoked) = cancel_held(db, id, &held)? {
                cancelled.push((id, !revoked));
            }
        }
        Ok(cancelled)
    })?;
    for (id, _) in &cancelled {
        announce(db, *id, EventKind::State, true)?;
    }
    Ok(cancelled)
}

/// Forgets every finished task of `user`'s that `filter` takes; returns their ids.
pub fn forget_matching(db: &mut Db, user: Uuid, filter: &Filter) -> anyhow::Result<Vec<Uuid>> {
    db.atomically(|db| {
        let finished = [TaskState::Success, TaskState::Failure, TaskState::Revoked];
        let mut deleted = Vec::new();
        for id in rows::matching(db, user, &finished, filter)? {
            if rows::delete(db, id)? {
                deleted.push(id);
            }
        }
        Ok(deleted)
    })
}
