//! Task rows: the durable queue. Every state change is one conditional UPDATE whose WHERE
//! clause is the state machine's precondition, so two actors can never both win a race.

use rusqlite::{params, Connection, OptionalExtension, Row};
use uuid::Uuid;

use super::{opt_uuid, parse_uuid};
use crate::convert::Conversion;
use crate::tasks::TaskState;

#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub seq: i64,
    pub id: Uuid,
    pub user_id: Uuid,
    pub source_id: Uuid,
    pub source_blob: String,
    pub source_name: String,
    /// Where the output goes: the source's folder when the task was created.
    pub parent_id: Option<Uuid>,
    pub options: Conversion,
    pub state: TaskState,
    pub progress: f64,
    pub status: String,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub attempts: u32,
    pub cancel_requested: bool,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// 1-based place in the queue, for PENDING tasks.
    pub queue_position: Option<i64>,
}

pub struct NewTask {
    pub user_id: Uuid,
    pub source_id: Uuid,
    pub source_blob: String,
    pub source_name: String,
    pub parent_id: Option<Uuid>,
    pub options: Conversion,
}

const COLUMNS: &str = "seq, id, user_id, source_id, source_blob, source_name, parent_id, options, state, \
     progress, status, result, error, attempts, cancel_requested, created_at, started_at, finished_at, \
     CASE WHEN state = 'PENDING' THEN (SELECT COUNT(*) FROM tasks q WHERE q.state = 'PENDING' AND q.seq <= tasks.seq) END";

fn from_row(r: &Row) -> rusqlite::Result<TaskRecord> {
    let bad = |i, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    };
    let options: String = r.get(7)?;
    let state: String = r.get(8)?;
    let result: Option<String> = r.get(11)?;
    Ok(TaskRecord {
        seq: r.get(0)?,
        id: parse_uuid(r.get(1)?)?,
        user_id: parse_uuid(r.get(2)?)?,
        source_id: parse_uuid(r.get(3)?)?,
        source_blob: r.get(4)?,
        source_name: r.get(5)?,
        parent_id: opt_uuid(r.get(6)?)?,
        options: serde_json::from_str(&options).map_err(|e| bad(7, e.to_string()))?,
        state: TaskState::parse(&state).ok_or_else(|| bad(8, state.clone()))?,
        progress: r.get(9)?,
        status: r.get(10)?,
        result: result.and_then(|s| serde_json::from_str(&s).ok()),
        error: r.get(12)?,
        attempts: r.get(13)?,
        cancel_requested: r.get(14)?,
        created_at: r.get(15)?,
        started_at: r.get(16)?,
        finished_at: r.get(17)?,
        queue_position: r.get(18)?,
    })
}

pub fn insert(conn: &Connection, new: NewTask) -> anyhow::Result<TaskRecord> {
    let id = Uuid::new_v4();
    conn.prepare_cached(
        "INSERT INTO tasks (id, user_id, source_id, source_blob, source_name, parent_id,
         options, state, status, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,
         'PENDING', 'Queued', ?8)",
    )?
    .execute(params![
        id.to_string(),
        new.user_id.to_string(),
        new.source_id.to_string(),
        new.source_blob,
        new.source_name,
        new.parent_id.map(|p| p.to_string()),
        serde_json::to_string(&new.options)?,
        crate::time::now(),
    ])?;
    Ok(get(conn, id)?.expect("just inserted"))
}

pub fn get(conn: &Connection, id: Uuid) -> anyhow::Result<Option<TaskRecord>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"))?
        .query_row([id.to_string()], from_row)
        .optional()?)
}

/// The caller's tasks, newest first; `before` is the `seq` cursor of the previous page.
pub fn list(
    conn: &Connection,
    user: Uuid,
    state: Option<TaskState>,
    limit: u32,
    before: Option<i64>,
) -> anyhow::Result<Vec<TaskRecord>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM tasks WHERE user_id = ?1 AND (?2 IS NULL OR state = ?2)
         AND (?3 IS NULL OR seq < ?3) ORDER BY seq DESC LIMIT ?4"
    ))?;
    let rows = stmt.query_map(
        params![
            user.to_string(),
            state.map(TaskState::as_str),
            before,
            limit
        ],
        from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Moves the oldest PENDING task to PROGRESS and returns it (FIFO).
pub fn claim_next(conn: &mut Connection) -> anyhow::Result<Option<TaskRecord>> {
    super::unsynced(conn, claim_next_unsynced)
}

fn claim_next_unsynced(conn: &mut Connection) -> anyhow::Result<Option<TaskRecord>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let id: Option<String> = tx
        .prepare_cached("SELECT id FROM tasks WHERE state = 'PENDING' ORDER BY seq LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()?;
    let Some(id) = id else { return Ok(None) };
    tx.prepare_cached(
        "UPDATE tasks SET state = 'PROGRESS', attempts = attempts + 1, status = 'Starting',
         started_at = ?2 WHERE id = ?1 AND state = 'PENDING'",
    )?
    .execute(params![id, crate::time::now()])?;
    let task = get(&tx, parse_uuid(id)?)?;
    tx.commit()?;
    Ok(task)
}

/// Records progress; it never goes down, and a task being cancelled keeps its "Cancelling…".
pub fn set_progress(
    conn: &mut Connection,
    id: Uuid,
    progress: f64,
    status: &str,
) -> anyhow::Result<bool> {
    super::unsynced(conn, |c| {
        Ok(c.prepare_cached(
            "UPDATE tasks SET progress = MAX(progress, ?2), status = ?3
             WHERE id = ?1 AND state = 'PROGRESS' AND cancel_requested = 0",
        )?
        .execute(params![id.to_string(), progress, status])?
            > 0)
    })
}

pub enum CancelOutcome {
    /// It was queued and is now REVOKED.
    Revoked,
    /// It is running; the worker will stop it and then mark it REVOKED.
    Requested,
    AlreadyFinished(TaskState),
    NotFound,
}

pub fn request_cancel(
    conn: &mut Connection,
    user: Uuid,
    id: Uuid,
) -> anyhow::Result<CancelOutcome> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let task = get(&tx, id)?.filter(|t| t.user_id == user);
    let Some(task) = task else {
        return Ok(CancelOutcome::NotFound);
    };
    let outcome = match task.state {
        TaskState::Pending => {
            tx.prepare_cached(
                "UPDATE tasks SET state = 'REVOKED', status = 'Cancelled', finished_at = ?2 WHERE
         id = ?1",
            )?
            .execute(params![id.to_string(), crate::time::now()])?;
            CancelOutcome::Revoked
        }
        TaskState::Progress => {
            tx.prepare_cached(
                "UPDATE tasks SET cancel_requested = 1, status = 'Cancelling…' WHERE id = ?1",
            )?
            .execute([id.to_string()])?;
            CancelOutcome::Requested
        }
        state => CancelOutcome::AlreadyFinished(state),
    };
    tx.commit()?;
    Ok(outcome)
}

/// Ends a running task. Returns false if it was not running (someone else ended it).
pub fn finish(
    conn: &Connection,
    id: Uuid,
    state: TaskState,
    status: &str,
    error: Option<&str>,
) -> anyhow::Result<bool> {
    debug_assert!(state.is_final());
    Ok(conn
        .prepare_cached(
            "UPDATE tasks SET state = ?2, status = ?3, error = ?4, finished_at = ?5
         WHERE id = ?1 AND state = 'PROGRESS'",
        )?
        .execute(params![
            id.to_string(),
            state.as_str(),
            status,
            error,
            crate::time::now()
        ])?
        > 0)
}

pub enum PublishOutcome {
    /// The id of the new output item.
    Published(Uuid),
    Cancelled,
    FolderGone,
}

/// Marks the task SUCCESS and makes its output item visible, in one transaction.
/// Writes nothing if the task was cancelled meanwhile or its folder is gone.
pub fn publish_success(
    conn: &mut Connection,
    task: &TaskRecord,
    output: super::NewItem,
    mut result: serde_json::Value,
) -> anyhow::Result<PublishOutcome> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if let Some(folder) = output.parent_id {
        if !super::items::is_folder(&tx, task.user_id, folder)? {
            return Ok(PublishOutcome::FolderGone);
        }
    }
    let cancelled: bool = tx
        .prepare_cached("SELECT cancel_requested OR state != 'PROGRESS' FROM tasks WHERE id = ?1")?
        .query_row([task.id.to_string()], |r| r.get(0))?;
    if cancelled {
        return Ok(PublishOutcome::Cancelled);
    }
    let item = super::items::insert(&tx, output)?;
    result["tree_item_id"] = serde_json::json!(item.id);
    tx.prepare_cached(
        "UPDATE tasks SET state = 'SUCCESS', progress = 100, status = 'Done', result =
         ?2, finished_at = ?3 WHERE id = ?1",
    )?
    .execute(params![
        task.id.to_string(),
        result.to_string(),
        crate::time::now()
    ])?;
    tx.commit()?;
    Ok(PublishOutcome::Published(item.id))
}

/// Puts a running task back in the queue; on a clean shutdown the attempt is refunded. A task
/// whose cancel was asked for is not queued again: it ends REVOKED.
pub fn requeue(
    conn: &Connection,
    id: Uuid,
    refund_attempt: bool,
    status: &str,
) -> anyhow::Result<bool> {
    let requeued = conn
        .prepare_cached(
            "UPDATE tasks SET state = 'PENDING', status = ?3, attempts = attempts - ?2
         WHERE id = ?1 AND state = 'PROGRESS' AND cancel_requested = 0",
        )?
        .execute(params![id.to_string(), refund_attempt as i64, status])?
        > 0;
    Ok(requeued || finish(conn, id, TaskState::Revoked, "Cancelled", None)?)
}

/// On a shutdown that could not wait for its workers: every task still running goes back to
/// the queue (or ends REVOKED if its cancel was asked for), without using up an attempt.
pub fn requeue_all_running(conn: &Connection) -> anyhow::Result<usize> {
    let now = crate::time::now();
    conn.prepare_cached(
        "UPDATE tasks SET state = 'REVOKED', status = 'Cancelled', finished_at = ?1
         WHERE state = 'PROGRESS' AND cancel_requested = 1",
    )?
    .execute([&now])?;
    Ok(conn
        .prepare_cached(
            "UPDATE tasks SET state = 'PENDING', status = 'Queued; the server restarted',
         attempts = attempts - 1 WHERE state = 'PROGRESS'",
        )?
        .execute([])?)
}

/// At start-up no task can be running: each PROGRESS task was cut off by a crash. Cancelled
/// ones become REVOKED, those with attempts left are queued again, the rest fail.
/// Returns how many were queued again.
pub fn recover(conn: &mut Connection, max_attempts: u32) -> anyhow::Result<usize> {
    let tx = conn.transaction()?;
    let now = crate::time::now();
    tx.prepare_cached(
        "UPDATE tasks SET state = 'REVOKED', status = 'Cancelled', finished_at = ?1
         WHERE state IN ('PENDING', 'PROGRESS') AND cancel_requested = 1",
    )?
    .execute([&now])?;
    tx.prepare_cached(
        "UPDATE tasks SET state = 'FAILURE', status = 'Failed', finished_at = ?1, error =
         'The server stopped during this conversion ' || attempts || ' times; it was not
         retried again.' WHERE state = 'PROGRESS' AND attempts >= ?2",
    )?
    .execute(params![now, max_attempts])?;
    let requeued = tx
        .prepare_cached(
            "UPDATE tasks SET state = 'PENDING', status = 'Queued again after a server restart'
         WHERE state = 'PROGRESS'",
        )?
        .execute([])?;
    tx.commit()?;
    Ok(requeued)
}

pub enum DeleteOutcome {
    Deleted,
    Running,
    NotFound,
}

pub fn delete(conn: &Connection, user: Uuid, id: Uuid) -> anyhow::Result<DeleteOutcome> {
    let Some(task) = get(conn, id)?.filter(|t| t.user_id == user) else {
        return Ok(DeleteOutcome::NotFound);
    };
    if !task.state.is_final() {
        return Ok(DeleteOutcome::Running);
    }
    conn.prepare_cached(
        "DELETE FROM tasks WHERE id = ?1 AND state IN ('SUCCESS', 'FAILURE', 'REVOKED')",
    )?
    .execute([id.to_string()])?;
    Ok(DeleteOutcome::Deleted)
}

/// How many tasks are in each state.
/// How many of `user`'s tasks are queued or running.
pub fn count_active(conn: &Connection, user: Uuid) -> anyhow::Result<u64> {
    Ok(conn
        .prepare_cached(
            "SELECT COUNT(*) FROM tasks WHERE user_id = ?1 AND state IN ('PENDING', 'PROGRESS')",
        )?
        .query_row([user.to_string()], |r| r.get(0))?)
}

pub fn count_by_state(conn: &Connection) -> anyhow::Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM tasks GROUP BY state")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Counts of tasks per state (for `/healthz` and, later, metrics).
pub fn pending_count(conn: &Connection) -> anyhow::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM tasks WHERE state = 'PENDING'")?
        .query_row([], |r| r.get(0))?)
}
