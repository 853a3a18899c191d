//! Task rows: the durable queue, as plain SQL. What a change means is decided by the task
//! service (`tasks::lifecycle`); here a change of state takes a [`Transition`] (which only the
//! state machine makes) and is one conditional UPDATE whose WHERE clause is its `from` state,
//! so two actors can never both win a race.
//!
//! A running task is leased: the claim (`lease_owner`, the claiming process's id and a token
//! of this claim alone) holds it until `lease_until` (milliseconds since the epoch, on the
//! database's clock) and renews it by [`renew_lease`]. Every change a worker makes to its task
//! names its claim, so a run whose lease ran out (and whose task was taken over, even by
//! another worker of the same process) changes nothing.

use anyhow::Context;
use uuid::Uuid;

use super::db::{vals, Db, Dialect, Row};
pub use crate::domain::task::{NewTask, TaskRecord};
use crate::domain::{TaskState, Transition};

pub(super) const COLUMNS: &str = "seq, id, user_id, source_id, source_blob, source_name, parent_id, options, state, \
     progress, status, result, error, attempts, cancel_requested, created_at, started_at, finished_at, \
     CASE WHEN state = 'PENDING' THEN not_before END, last_error, retry_of, priority";

/// How many columns [`COLUMNS`] names.
const COLUMN_COUNT: usize = 22;

/// A task and its priority, for [`super::queue::place_in_queue`].
pub(super) struct Ranked {
    pub task: TaskRecord,
    pub priority: i64,
}

fn from_row(r: &Row) -> anyhow::Result<Ranked> {
    let state = r.text(8)?;
    let next_attempt_at = r
        .opt_int(18)?
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(crate::time::format);
    Ok(Ranked {
        task: TaskRecord {
            seq: r.int(0)?,
            id: r.uuid(1)?,
            user_id: r.uuid(2)?,
            source_id: r.uuid(3)?,
            source_blob: r.text(4)?,
            source_name: r.text(5)?,
            parent_id: r.opt_uuid(6)?,
            options: serde_json::from_str(&r.text(7)?)?,
            state: TaskState::parse(&state)
                .ok_or_else(|| anyhow::anyhow!("unknown task state {state:?}"))?,
            progress: r.real(9)?,
            status: r.text(10)?,
            result: r.opt_text(11)?.and_then(|s| serde_json::from_str(&s).ok()),
            error: r.opt_text(12)?,
            attempts: u32::try_from(r.int(13)?)?,
            cancel_requested: r.int(14)? != 0,
            created_at: r.text(15)?,
            started_at: r.opt_text(16)?,
            finished_at: r.opt_text(17)?,
            queue_position: None,
            next_attempt_at,
            last_error: r.opt_text(19)?,
            retry_of: r.opt_uuid(20)?,
        },
        priority: r.int(21)?,
    })
}

/// Reads tasks with `sql` (which selects [`COLUMNS`]) and places the queued ones in the queue.
fn read(db: &mut Db, sql: &str, params: &[super::db::Value]) -> anyhow::Result<Vec<TaskRecord>> {
    let rows = db
        .query(sql, params)?
        .iter()
        .map(from_row)
        .collect::<anyhow::Result<Vec<_>>>()?;
    super::queue::place_in_queue(db, rows)
}

pub fn insert(db: &mut Db, new: NewTask) -> anyhow::Result<TaskRecord> {
    let id = Uuid::new_v4();
    let inserted = read(
        db,
        &format!(
            "INSERT INTO tasks (id, user_id, source_id, source_blob, source_name, parent_id,
             options, state, status, created_at, priority, retry_of) VALUES (?1, ?2, ?3, ?4,
             ?5, ?6, ?7, 'PENDING', 'Queued', ?8, ?9, ?10) RETURNING {COLUMNS}"
        ),
        vals![
            id,
            new.user_id,
            new.source_id,
            new.source_blob,
            new.source_name,
            new.parent_id,
            serde_json::to_string(&new.options)?,
            crate::time::now(),
            new.options.priority.rank(),
            new.retry_of,
        ],
    )?;
    inserted
        .into_iter()
        .next()
        .context("the insert returned no row")
}

pub fn get(db: &mut Db, id: Uuid) -> anyhow::Result<Option<TaskRecord>> {
    Ok(read(
        db,
        &format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"),
        vals![id],
    )?
    .pop())
}

/// Every unfinished task, and every task that finished at or after `since` (RFC 3339).
pub fn changed_since(db: &mut Db, since: &str) -> anyhow::Result<Vec<TaskRecord>> {
    read(
        db,
        &format!(
            "SELECT {COLUMNS} FROM tasks WHERE state = 'PENDING' OR state = 'PROGRESS'
             OR finished_at >= ?1 ORDER BY seq"
        ),
        vals![since],
    )
}

/// The caller's tasks, newest first; `before` is the `seq` cursor of the previous page.
pub fn list(
    db: &mut Db,
    user: Uuid,
    state: Option<TaskState>,
    limit: u32,
    before: Option<i64>,
) -> anyhow::Result<Vec<TaskRecord>> {
    read(
        db,
        &format!(
            "SELECT {COLUMNS} FROM tasks WHERE user_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR state = ?2)
             AND (CAST(?3 AS BIGINT) IS NULL OR seq < ?3) ORDER BY seq DESC LIMIT ?4"
        ),
        vals![user, state.map(TaskState::as_str), before, limit],
    )
}

/// The database's clock in milliseconds since the epoch, the unit of `lease_until`: one
/// clock for every node, so a node whose clock is off cannot steal or keep leases.
pub(super) fn now_ms(db: &Db) -> &'static str {
    match db.dialect() {
        Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        Dialect::Postgres => "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)",
    }
}

/// A fresh claim's owner: `node` (the process) and a token of this claim alone.
pub fn claim_owner(node: &str) -> String {
    format!("{node}/{}", Uuid::new_v4().simple())
}

/// What a start sets: PROGRESS, one more attempt, a lease for a claim. Parameters: `?1` the
/// status, `?2` the time, `?3` the claim (`claim_owner`), `?4` the lease in milliseconds.
/// [`super::queue::start_next`] writes it, on a queued task it picked.
pub(super) fn start_set(db: &Db) -> String {
    format!(
        "state = 'PROGRESS', attempts = attempts + 1, status = ?1, started_at = ?2,
         lease_owner = ?3, lease_until = {} + ?4, not_before = NULL",
        now_ms(db)
    )
}

/// A task as a change left it.
pub struct Changed {
    pub task: TaskRecord,
    /// Whether a webhook may be owed: its owner has an endpoint, or the task a callback. Read
    /// by the change's own statement, so that a task with neither costs no query for them.
    pub hooked: bool,
}

/// What [`Changed::hooked`] is read with, after the task's columns.
pub(super) const HOOKED: &str = "EXISTS (SELECT 1 FROM webhook_endpoints
     WHERE disabled = 0 AND user_id = tasks.user_id)
     OR EXISTS (SELECT 1 FROM task_callbacks WHERE task_id = tasks.id)";

/// Runs `update` with `RETURNING` the task's columns: the changed task, or `None` when its
/// WHERE clause matched nothing. For changes out of the queue (the record has no queue
/// position to place), which saves reading the row back.
pub(super) fn changed(
    db: &mut Db,
    update: &str,
    params: &[super::db::Value],
) -> anyhow::Result<Option<Changed>> {
    let sql = format!("{update} RETURNING {COLUMNS}, {HOOKED}");
    db.query_opt(&sql, params)?
        .as_ref()
        .map(changed_from)
        .transpose()
}

/// A row of [`COLUMNS`] and [`HOOKED`].
pub(super) fn changed_from(r: &Row) -> anyhow::Result<Changed> {
    Ok(Changed {
        task: from_row(r)?.task,
        hooked: r.int(COLUMN_COUNT)? != 0,
    })
}

/// What the lifecycle needs to know of a task before changing it.
#[derive(Debug, Clone)]
pub struct Held {
    pub state: TaskState,
    pub user_id: Uuid,
    pub cancel_requested: bool,
    pub attempts: u32,
    pub lease_owner: Option<String>,
}

/// Reads a task's lifecycle fields, locking its row until the call ends (PostgreSQL).
pub fn hold(db: &mut Db, id: Uuid) -> anyhow::Result<Option<Held>> {
    let lock = match db.dialect() {
        Dialect::Sqlite => "",
        Dialect::Postgres => " FOR UPDATE",
    };
    db.query_opt(
        &format!(
            "SELECT state, user_id, cancel_requested, attempts, lease_owner FROM tasks
             WHERE id = ?1{lock}"
        ),
        vals![id],
    )?
    .as_ref()
    .map(held_from_row)
    .transpose()
}

fn held_from_row(r: &Row) -> anyhow::Result<Held> {
    let state = r.text(0)?;
    Ok(Held {
        state: TaskState::parse(&state)
            .ok_or_else(|| anyhow::anyhow!("unknown task state {state:?}"))?,
        user_id: r.uuid(1)?,
        cancel_requested: r.int(2)? != 0,
        attempts: u32::try_from(r.int(3)?)?,
        lease_owner: r.opt_text(4)?,
    })
}

/// Running tasks whose lease runs out before `ahead_ms` from now (tests look ahead), locked
/// (PostgreSQL: skipping rows another node is handling).
pub fn lease_expired(db: &mut Db, ahead_ms: i64) -> anyhow::Result<Vec<(Uuid, Held)>> {
    let lock = match db.dialect() {
        Dialect::Sqlite => "",
        Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
    };
    running_where(
        db,
        &format!("lease_until < {} + ?1{lock}", now_ms(db)),
        vals![ahead_ms],
    )
}

/// Running tasks, all of them (`owner_prefix` None) or those claimed by one node.
pub fn running(db: &mut Db, owner_prefix: Option<&str>) -> anyhow::Result<Vec<(Uuid, Held)>> {
    let claims = owner_prefix.map(|node| format!("{node}/%"));
    running_where(
        db,
        "(CAST(?1 AS TEXT) IS NULL OR lease_owner LIKE ?1)",
        vals![claims],
    )
}

fn running_where(
    db: &mut Db,
    condition: &str,
    params: &[super::db::Value],
) -> anyhow::Result<Vec<(Uuid, Held)>> {
    db.query(
        &format!(
            "SELECT state, user_id, cancel_requested, attempts, lease_owner, id FROM tasks
             WHERE state = 'PROGRESS' AND {condition}"
        ),
        params,
    )?
    .iter()
    .map(|r| Ok((r.uuid(5)?, held_from_row(r)?)))
    .collect()
}

/// PENDING tasks whose cancel was asked for (only a crash between the two writes leaves one).
pub fn pending_cancelled(db: &mut Db) -> anyhow::Result<Vec<Uuid>> {
    db.query(
        "SELECT id FROM tasks WHERE state = 'PENDING' AND cancel_requested = 1",
        &[],
    )?
    .iter()
    .map(|r| r.uuid(0))
    .collect()
}

/// Renews `owner`'s lease on a running task; false when it is no longer `owner`'s.
pub fn renew_lease(db: &mut Db, id: Uuid, owner: &str, lease_ms: i64) -> anyhow::Result<bool> {
    Ok(db.execute(
        &format!(
            "UPDATE tasks SET lease_until = {} + ?3 WHERE id = ?1 AND lease_owner = ?2
             AND state = 'PROGRESS'",
            now_ms(db)
        ),
        vals![id, owner, lease_ms],
    )? > 0)
}

pub fn cancel_requested(db: &mut Db, id: Uuid) -> anyhow::Result<bool> {
    Ok(db
        .query_one(
            "SELECT cancel_requested FROM tasks WHERE id = ?1",
            vals![id],
        )?
        .int(0)?
        != 0)
}

/// Records progress on `owner`'s running task; it never goes down, and a task being
/// cancelled keeps its status. Returns the task as it now is, if it was recorded.
pub fn set_progress(
    db: &mut Db,
    id: Uuid,
    owner: &str,
    progress: f64,
    status: &str,
) -> anyhow::Result<Option<Changed>> {
    let max = match db.dialect() {
        Dialect::Sqlite => "MAX",
        Dialect::Postgres => "GREATEST",
    };
    let sql = format!(
        "UPDATE tasks SET progress = {max}(progress, ?2), status = ?3
         WHERE id = ?1 AND state = 'PROGRESS' AND cancel_requested = 0 AND lease_owner = ?4"
    );
    changed(db, &sql, vals![id, progress, status, owner])
}

/// Marks a running task's cancel as asked for.
pub fn request_cancel(db: &mut Db, id: Uuid, status: &str) -> anyhow::Result<bool> {
    Ok(db.execute(
        "UPDATE tasks SET cancel_requested = 1, status = ?2 WHERE id = ?1 AND state = 'PROGRESS'",
        vals![id, status],
    )? > 0)
}

/// How a task ends.
pub struct End<'a> {
    pub status: &'a str,
    pub error: Option<&'a str>,
    /// The result, on SUCCESS (progress then becomes 100).
    pub result: Option<&'a serde_json::Value>,
}

/// Ends a task (`change` to a final state), if it is still in `change.from()` and, when
/// `claim` is given, still held by that claim; with a result (a success), only if no cancel
/// was asked for. Returns the task as it now is, if it ended.
pub fn end(
    db: &mut Db,
    id: Uuid,
    change: Transition,
    claim: Option<&str>,
    end: End,
) -> anyhow::Result<Option<Changed>> {
    anyhow::ensure!(change.to().is_final(), "{change:?} does not end a task");
    changed(
        db,
        "UPDATE tasks SET state = ?2, status = ?3, error = ?4, finished_at = ?5,
         last_error = COALESCE(?4, last_error), not_before = NULL,
         result = COALESCE(?6, result),
         progress = CASE WHEN CAST(?6 AS TEXT) IS NULL THEN progress ELSE 100 END,
         lease_owner = NULL, lease_until = NULL
         WHERE id = ?1 AND state = ?7 AND (CAST(?8 AS TEXT) IS NULL OR lease_owner = ?8)
         AND (CAST(?6 AS TEXT) IS NULL OR cancel_requested = 0)",
        vals![
            id,
            change.to().as_str(),
            end.status,
            end.error,
            crate::time::now(),
            end.result.map(|r| r.to_string()),
            change.from().as_str(),
            claim
        ],
    )
}

/// A run that failed for a reason that may pass: why, and how long until the next attempt.
pub struct Retry<'a> {
    pub error: &'a str,
    pub delay_ms: i64,
}

/// Puts a running task back in the queue (`change` to PENDING), unless its cancel was asked
/// for; `refund` gives back the attempt; `retry` holds it back for a while and says why. With
/// `claim`, only if that claim still holds it.
pub fn requeue(
    db: &mut Db,
    id: Uuid,
    change: Transition,
    claim: Option<&str>,
    refund: bool,
    status: &str,
    retry: Option<Retry>,
) -> anyhow::Result<bool> {
    let sql = format!(
        "UPDATE tasks SET state = ?2, status = ?3, attempts = attempts - ?4,
         lease_owner = NULL, lease_until = NULL, last_error = COALESCE(?7, last_error),
         not_before = CASE WHEN CAST(?8 AS BIGINT) IS NULL THEN NULL ELSE {} + ?8 END
         WHERE id = ?1 AND state = ?5 AND cancel_requested = 0
         AND (CAST(?6 AS TEXT) IS NULL OR lease_owner = ?6)",
        now_ms(db)
    );
    Ok(db.execute(
        &sql,
        vals![
            id,
            change.to().as_str(),
            status,
            refund as i64,
            change.from().as_str(),
            claim,
            retry.as_ref().map(|r| r.error),
            retry.as_ref().map(|r| r.delay_ms)
        ],
    )? > 0)
}

/// Deletes a finished task's row.
pub fn delete(db: &mut Db, id: Uuid) -> anyhow::Result<bool> {
    Ok(db.execute(
        "DELETE FROM tasks WHERE id = ?1 AND state IN ('SUCCESS', 'FAILURE', 'REVOKED')",
        vals![id],
    )? > 0)
}

/// How many of `user`'s tasks are queued or running. Count under the user's row lock
/// ([`super::idempotency::lock_user`]), so that nodes counting at once cannot both pass a
/// limit.
pub fn count_active(db: &mut Db, user: Uuid) -> anyhow::Result<u64> {
    // Two counts, one per state, so that each reads its own partial index on PostgreSQL.
    Ok(db
        .query_one(
            "SELECT (SELECT COUNT(*) FROM tasks WHERE state = 'PENDING' AND user_id = ?1)
                 + (SELECT COUNT(*) FROM tasks WHERE state = 'PROGRESS' AND user_id = ?1)",
            vals![user],
        )?
        .int(0)? as u64)
}

/// How many tasks are in each state.
pub fn count_by_state(db: &mut Db) -> anyhow::Result<Vec<(String, i64)>> {
    db.query("SELECT state, COUNT(*) FROM tasks GROUP BY state", &[])?
        .iter()
        .map(|r| Ok((r.text(0)?, r.int(1)?)))
        .collect()
}

/// How many tasks are queued (for `/healthz`).
pub fn pending_count(db: &mut Db) -> anyhow::Result<i64> {
    db.query_one("SELECT COUNT(*) FROM tasks WHERE state = 'PENDING'", &[])?
        .int(0)
}

/// Which of a user's tasks a bulk action takes; every field given must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub ids: Option<Vec<Uuid>>,
    pub state: Option<TaskState>,
    pub tree_item_id: Option<Uuid>,
    /// RFC 3339, as the API writes times.
    pub created_before: Option<String>,
    pub finished_before: Option<String>,
}

/// The ids of `user`'s tasks in `states` that `filter` takes, oldest first.
pub fn matching(
    db: &mut Db,
    user: Uuid,
    states: &[TaskState],
    filter: &Filter,
) -> anyhow::Result<Vec<Uuid>> {
    let ids = db
        .query(
            "SELECT id, state FROM tasks WHERE user_id = ?1
             AND (CAST(?2 AS TEXT) IS NULL OR state = ?2)
             AND (CAST(?3 AS TEXT) IS NULL OR source_id = ?3)
             AND (CAST(?4 AS TEXT) IS NULL OR created_at < ?4)
             AND (CAST(?5 AS TEXT) IS NULL OR finished_at < ?5)
             ORDER BY seq",
            vals![
                user,
                filter.state.map(TaskState::as_str),
                filter.tree_item_id,
                filter.created_before.as_deref(),
                filter.finished_before.as_deref()
            ],
        )?
        .iter()
        .map(|r| Ok((r.uuid(0)?, r.text(1)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(ids
        .into_iter()
        .filter(|(id, state)| {
            states.iter().any(|s| s.as_str() == state)
                && filter.ids.as_ref().is_none_or(|ids| ids.contains(id))
        })
        .map(|(id, _)| id)
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_column_count_is_that_of_the_columns() {
        assert_eq!(super::COLUMNS.split(',').count(), super::COLUMN_COUNT);
    }
}
