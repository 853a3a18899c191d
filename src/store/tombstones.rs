//! Tombstones of expired tasks: the ids that answer 410 Gone after retention pruned them.

use uuid::Uuid;

use super::db::{vals, Db};

/// Finished tasks that finished before `cutoff` (RFC 3339), at most `limit`, with their users.
pub fn finished_before(db: &mut Db, cutoff: &str, limit: i64) -> anyhow::Result<Vec<(Uuid, Uuid)>> {
    db.query(
        "SELECT id, user_id FROM tasks WHERE state IN ('SUCCESS', 'FAILURE', 'REVOKED')
         AND finished_at < ?1 ORDER BY finished_at LIMIT ?2",
        vals![cutoff, limit],
    )?
    .iter()
    .map(|r| Ok((r.uuid(0)?, r.uuid(1)?)))
    .collect()
}

/// Leaves a tombstone for an expired task, so that its id answers 410 Gone.
pub fn bury(db: &mut Db, id: Uuid, user: Uuid) -> anyhow::Result<()> {
    db.execute(
        "INSERT INTO task_tombstones (id, user_id, expired_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO NOTHING",
        vals![id, user, crate::time::now()],
    )?;
    Ok(())
}

/// The owner of an expired task's id, if it has a tombstone.
pub fn tombstone(db: &mut Db, id: Uuid) -> anyhow::Result<Option<Uuid>> {
    db.query_opt(
        "SELECT user_id FROM task_tombstones WHERE id = ?1",
        vals![id],
    )?
    .map(|r| r.uuid(0))
    .transpose()
}

/// Removes tombstones laid before `cutoff` (RFC 3339).
pub fn clear_tombstones(db: &mut Db, cutoff: &str) -> anyhow::Result<usize> {
    db.execute(
        "DELETE FROM task_tombstones WHERE expired_at < ?1",
        vals![cutoff],
    )
}
