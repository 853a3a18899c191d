//! Retention: finished tasks are pruned once they are older than `--task-retention-secs`,
//! each leaving a tombstone so that its id answers 410 Gone; outputs are tree items and stay.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Tasks;
use crate::store::idempotency;
use crate::store::tasks as rows;
use crate::store::{tombstones, Db};

impl Tasks {
    /// Prunes expired tasks until shutdown: at least once a minute, or every half retention
    /// when that is shorter.
    pub async fn expire_until(self, shutdown: CancellationToken) {
        let every = (self.retention / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
        while !shutdown.is_cancelled() {
            let retention = self.retention;
            loop {
                match self.run(move |db| expire(db, retention)).await {
                    Ok(expired) => {
                        for id in &expired {
                            self.bus.forget(*id);
                        }
                        if !expired.is_empty() {
                            tracing::info!(count = expired.len(), "expired finished tasks");
                        }
                        if (expired.len() as i64) < EXPIRE_BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = ?e, "could not expire finished tasks");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }
}

/// Prunes tasks that finished more than `retention` ago, leaving a tombstone for each, kept
/// at least as long again, so that their ids answer 410 Gone. Outputs are tree items and
/// stay. (Their events are gone by then: the bus's replay window and PostgreSQL's event log
/// keep only recent ones, and the log must keep its newest, which numbers the next.) Returns the ids expired (at most a batch; call again while full).
pub fn expire(db: &mut Db, retention: Duration) -> anyhow::Result<Vec<Uuid>> {
    let now = chrono::Utc::now();
    let age = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let cutoff = now
        .checked_sub_signed(age)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    let cutoff = crate::time::format(cutoff);
    db.atomically(|db| {
        let mut expired = Vec::new();
        for (id, user) in tombstones::finished_before(db, &cutoff, EXPIRE_BATCH)? {
            tombstones::bury(db, id, user)?;
            if rows::delete(db, id)? {
                expired.push(id);
            }
        }
        // Tombstones answer 410 for at least the retention time: they are kept for twice
        // that, so that a poller that checks now and then never sees 404 too early.
        let buried_before = now
            .checked_sub_signed(age.checked_mul(2).unwrap_or(age))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        tombstones::clear_tombstones(db, &crate::time::format(buried_before))?;
        idempotency::prune(db)?;
        Ok(expired)
    })
}

/// Tasks expired per transaction, so that a first pruning of a large backlog does not hold
/// the database for long.
pub const EXPIRE_BATCH: i64 = 500;
