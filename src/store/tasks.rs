//! Task rows: the durable queue. Every state change is one conditional UPDATE whose WHERE
//! clause is the state machine's precondition, so two actors can never both win a race.
//!
//! A running task is leased: the claim (`lease_owner`, the claiming process's id and a token
//! of this claim alone) holds it until `lease_until` (milliseconds since the epoch, on the
//! database's clock) and renews it by [`heartbeat`]. Every change a worker makes to its task
//! names its claim, so a run whose lease ran out (and whose task was taken over, even by
//! another worker of the same process) changes nothing and publishes nothing.

use uuid::Uuid;

use super::db::{vals, Db, Dialect, Row};
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

fn from_row(r: &Row) -> anyhow::Result<TaskRecord> {
    let state = r.text(8)?;
    Ok(TaskRecord {
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
        queue_position: r.opt_int(18)?,
    })
}

pub fn insert(db: &mut Db, new: NewTask) -> anyhow::Result<TaskRecord> {
    let id = Uuid::new_v4();
    db.execute(
        "INSERT INTO tasks (id, user_id, source_id, source_blob, source_name, parent_id,
         options, state, status, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,
         'PENDING', 'Queued', ?8)",
        vals![
            id,
            new.user_id,
            new.source_id,
            new.source_blob,
            new.source_name,
            new.parent_id,
            serde_json::to_string(&new.options)?,
            crate::time::now(),
        ],
    )?;
    Ok(get(db, id)?.expect("just inserted"))
}

pub fn get(db: &mut Db, id: Uuid) -> anyhow::Result<Option<TaskRecord>> {
    db.query_opt(
        &format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"),
        vals![id],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// Every unfinished task, and every task that finished at or after `since` (RFC 3339).
pub fn changed_since(db: &mut Db, since: &str) -> anyhow::Result<Vec<TaskRecord>> {
    db.query(
        &format!(
            "SELECT {COLUMNS} FROM tasks WHERE state IN ('PENDING', 'PROGRESS')
             OR finished_at >= ?1 ORDER BY seq"
        ),
        vals![since],
    )?
    .iter()
    .map(from_row)
    .collect()
}

/// The caller's tasks, newest first; `before` is the `seq` cursor of the previous page.
pub fn list(
    db: &mut Db,
    user: Uuid,
    state: Option<TaskState>,
    limit: u32,
    before: Option<i64>,
) -> anyhow::Result<Vec<TaskRecord>> {
    db.query(
        &format!(
            "SELECT {COLUMNS} FROM tasks WHERE user_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR state = ?2)
             AND (CAST(?3 AS BIGINT) IS NULL OR seq < ?3) ORDER BY seq DESC LIMIT ?4"
        ),
        vals![user, state.map(TaskState::as_str), before, limit],
    )?
    .iter()
    .map(from_row)
    .collect()
}

/// The database's clock in milliseconds since the epoch, the unit of `lease_until`: one
/// clock for every node, so a node whose clock is off cannot steal or keep leases.
fn now_ms(db: &Db) -> &'static str {
    match db.dialect() {
        Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        Dialect::Postgres => "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)",
    }
}

/// A fresh claim's owner: `node` (the process) and a token of this claim alone.
pub fn claim_owner(node: &str) -> String {
    format!("{node}/{}", Uuid::new_v4().simple())
}

/// Moves the oldest PENDING task to PROGRESS, leased to `owner` for `lease_ms`, and returns
/// it (FIFO). Concurrent claimers (other nodes, on PostgreSQL) skip the rows each other have
/// locked.
pub fn claim_next(db: &mut Db, owner: &str, lease_ms: i64) -> anyhow::Result<Option<TaskRecord>> {
    db.unsynced(|db| {
        db.atomically(|db| {
            let pick = match db.dialect() {
                Dialect::Sqlite => {
                    "SELECT id FROM tasks WHERE state = 'PENDING' ORDER BY seq LIMIT 1"
                }
                Dialect::Postgres => {
                    "SELECT id FROM tasks WHERE state = 'PENDING' ORDER BY seq LIMIT 1
                     FOR UPDATE SKIP LOCKED"
                }
            };
            let Some(row) = db.query_opt(pick, &[])? else {
                return Ok(None);
            };
            let id = row.uuid(0)?;
            db.execute(
                &format!(
                    "UPDATE tasks SET state = 'PROGRESS', attempts = attempts + 1,
                     status = 'Starting', started_at = ?2, lease_owner = ?3,
                     lease_until = {} + ?4 WHERE id = ?1 AND state = 'PENDING'",
                    now_ms(db)
                ),
                vals![id, crate::time::now(), owner, lease_ms],
            )?;
            get(db, id)
        })
    })
}

pub enum Heartbeat {
    /// Still ours; `cancel` says a cancel was asked for (on any node).
    Held { cancel: bool },
    /// The lease ran out and the task was taken over or ended: stop, publish nothing.
    Lost,
}

/// Renews `owner`'s lease on a running task.
pub fn heartbeat(db: &mut Db, id: Uuid, owner: &str, lease_ms: i64) -> anyhow::Result<Heartbeat> {
    db.unsynced(|db| {
        let renewed = db.execute(
            &format!(
                "UPDATE tasks SET lease_until = {} + ?3 WHERE id = ?1 AND lease_owner = ?2
                 AND state = 'PROGRESS'",
                now_ms(db)
            ),
            vals![id, owner, lease_ms],
        )? > 0;
        if !renewed {
            return Ok(Heartbeat::Lost);
        }
        let cancel = db
            .query_one(
                "SELECT cancel_requested FROM tasks WHERE id = ?1",
                vals![id],
            )?
            .int(0)?
            != 0;
        Ok(Heartbeat::Held { cancel })
    })
}

/// Running tasks whose lease ran out (`ahead_ms` from now; tests look ahead): their node
/// stopped or lost the database. Cancelled ones become REVOKED, those with attempts left are
/// queued again, the rest fail. Returns the ids changed, for their events.
pub fn expire_leases(db: &mut Db, ahead_ms: i64, max_attempts: u32) -> anyhow::Result<Vec<Uuid>> {
    db.atomically(|db| {
        let lock = match db.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        };
        let expired = db
            .query(
                &format!(
                    "SELECT id FROM tasks WHERE state = 'PROGRESS' AND lease_until < {} + ?1{lock}",
                    now_ms(db)
                ),
                vals![ahead_ms],
            )?
            .iter()
            .map(|r| r.uuid(0))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let now = crate::time::now();
        for id in &expired {
            db.execute(
                "UPDATE tasks SET lease_owner = NULL, lease_until = NULL, state = CASE
                     WHEN cancel_requested = 1 THEN 'REVOKED'
                     WHEN attempts >= ?2 THEN 'FAILURE' ELSE 'PENDING' END,
                 status = CASE
                     WHEN cancel_requested = 1 THEN 'Cancelled'
                     WHEN attempts >= ?2 THEN 'Failed'
                     ELSE 'Queued again: the node running it stopped' END,
                 error = CASE WHEN cancel_requested = 0 AND attempts >= ?2 THEN
                     'The node running this conversion stopped ' || attempts ||
                     ' times; it was not retried again.' END,
                 finished_at = CASE WHEN cancel_requested = 1 OR attempts >= ?2 THEN ?3 END
                 WHERE id = ?1 AND state = 'PROGRESS'",
                vals![*id, max_attempts, &now],
            )?;
        }
        Ok(expired)
    })
}

/// Records progress; it never goes down, and a task being cancelled keeps its "Cancelling…".
pub fn set_progress(
    db: &mut Db,
    id: Uuid,
    owner: &str,
    progress: f64,
    status: &str,
) -> anyhow::Result<bool> {
    let max = match db.dialect() {
        Dialect::Sqlite => "MAX",
        Dialect::Postgres => "GREATEST",
    };
    let sql = format!(
        "UPDATE tasks SET progress = {max}(progress, ?2), status = ?3
         WHERE id = ?1 AND state = 'PROGRESS' AND cancel_requested = 0 AND lease_owner = ?4"
    );
    db.unsynced(|db| Ok(db.execute(&sql, vals![id, progress, status, owner])? > 0))
}

pub enum CancelOutcome {
    /// It was queued and is now REVOKED.
    Revoked,
    /// It is running; the worker will stop it and then mark it REVOKED.
    Requested,
    AlreadyFinished(TaskState),
    NotFound,
}

pub fn request_cancel(db: &mut Db, user: Uuid, id: Uuid) -> anyhow::Result<CancelOutcome> {
    db.atomically(|db| {
        let lock = match db.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        };
        let task = db
            .query_opt(
                &format!("SELECT state, user_id FROM tasks WHERE id = ?1{lock}"),
                vals![id],
            )?
            .map(|r| anyhow::Ok((r.text(0)?, r.uuid(1)?)))
            .transpose()?
            .filter(|(_, owner)| *owner == user);
        let Some((state, _)) = task else {
            return Ok(CancelOutcome::NotFound);
        };
        Ok(match TaskState::parse(&state) {
            Some(TaskState::Pending) => {
                db.execute(
                    "UPDATE tasks SET state = 'REVOKED', status = 'Cancelled', finished_at = ?2
                     WHERE id = ?1",
                    vals![id, crate::time::now()],
                )?;
                CancelOutcome::Revoked
            }
            Some(TaskState::Progress) => {
                db.execute(
                    "UPDATE tasks SET cancel_requested = 1, status = 'Cancelling…' WHERE id = ?1",
                    vals![id],
                )?;
                CancelOutcome::Requested
            }
            Some(state) => CancelOutcome::AlreadyFinished(state),
            None => anyhow::bail!("unknown task state {state:?}"),
        })
    })
}

/// Ends `owner`'s running task. Returns false if it was not running under that owner
/// (someone else ended it, or its lease ran out and another node has it).
pub fn finish(
    db: &mut Db,
    id: Uuid,
    owner: &str,
    state: TaskState,
    status: &str,
    error: Option<&str>,
) -> anyhow::Result<bool> {
    debug_assert!(state.is_final());
    Ok(db.execute(
        "UPDATE tasks SET state = ?2, status = ?3, error = ?4, finished_at = ?5,
         lease_owner = NULL, lease_until = NULL
         WHERE id = ?1 AND state = 'PROGRESS' AND lease_owner = ?6",
        vals![id, state.as_str(), status, error, crate::time::now(), owner],
    )? > 0)
}

pub enum PublishOutcome {
    /// The id of the new output item.
    Published(Uuid),
    Cancelled,
    FolderGone,
    /// The lease ran out: another node owns the task now.
    LeaseLost,
}

/// Marks the task SUCCESS and makes its output item visible, in one transaction.
/// Writes nothing if the task was cancelled meanwhile or its folder is gone.
pub fn publish_success(
    db: &mut Db,
    task: &TaskRecord,
    owner: &str,
    output: super::NewItem,
    mut result: serde_json::Value,
) -> anyhow::Result<PublishOutcome> {
    db.atomically(|db| {
        let lock = match db.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        };
        if let Some(folder) = output.parent_id {
            if !super::items::is_folder(db, task.user_id, folder)? {
                return Ok(PublishOutcome::FolderGone);
            }
        }
        let row = db.query_one(
            &format!("SELECT cancel_requested, state, lease_owner FROM tasks WHERE id = ?1{lock}"),
            vals![task.id],
        )?;
        if row.opt_text(2)?.as_deref() != Some(owner) {
            return Ok(PublishOutcome::LeaseLost);
        }
        if row.int(0)? != 0 || row.text(1)? != "PROGRESS" {
            return Ok(PublishOutcome::Cancelled);
        }
        let item = super::items::insert(db, output)?;
        result["tree_item_id"] = serde_json::json!(item.id);
        db.execute(
            "UPDATE tasks SET state = 'SUCCESS', progress = 100, status = 'Done', result =
             ?2, finished_at = ?3, lease_owner = NULL, lease_until = NULL WHERE id = ?1",
            vals![task.id, result.to_string(), crate::time::now()],
        )?;
        Ok(PublishOutcome::Published(item.id))
    })
}

/// Puts `owner`'s running task back in the queue; on a clean shutdown the attempt is
/// refunded. A task whose cancel was asked for is not queued again: it ends REVOKED.
pub fn requeue(
    db: &mut Db,
    id: Uuid,
    owner: &str,
    refund_attempt: bool,
    status: &str,
) -> anyhow::Result<bool> {
    let requeued = db.execute(
        "UPDATE tasks SET state = 'PENDING', status = ?3, attempts = attempts - ?2,
         lease_owner = NULL, lease_until = NULL
         WHERE id = ?1 AND state = 'PROGRESS' AND cancel_requested = 0 AND lease_owner = ?4",
        vals![id, refund_attempt as i64, status, owner],
    )? > 0;
    Ok(requeued || finish(db, id, owner, TaskState::Revoked, "Cancelled", None)?)
}

/// On a shutdown that could not wait for its workers: every task `node`'s claims still run
/// goes back to the queue (or ends REVOKED if its cancel was asked for), without using up an
/// attempt.
pub fn requeue_all_running(db: &mut Db, node: &str) -> anyhow::Result<usize> {
    let claims = format!("{node}/%");
    db.execute(
        "UPDATE tasks SET state = 'REVOKED', status = 'Cancelled', finished_at = ?1,
         lease_owner = NULL, lease_until = NULL
         WHERE state = 'PROGRESS' AND cancel_requested = 1 AND lease_owner LIKE ?2",
        vals![crate::time::now(), &claims],
    )?;
    db.execute(
        "UPDATE tasks SET state = 'PENDING', status = 'Queued; the server restarted',
         attempts = attempts - 1, lease_owner = NULL, lease_until = NULL
         WHERE state = 'PROGRESS' AND lease_owner LIKE ?1",
        vals![claims],
    )
}

/// At start-up no task can be running: each PROGRESS task was cut off by a crash. Cancelled
/// ones become REVOKED, those with attempts left are queued again, the rest fail.
/// Returns how many were queued again.
pub fn recover(db: &mut Db, max_attempts: u32) -> anyhow::Result<usize> {
    db.atomically(|db| {
        let now = crate::time::now();
        db.execute(
            "UPDATE tasks SET state = 'REVOKED', status = 'Cancelled', finished_at = ?1
             WHERE state IN ('PENDING', 'PROGRESS') AND cancel_requested = 1",
            vals![&now],
        )?;
        db.execute(
            "UPDATE tasks SET state = 'FAILURE', status = 'Failed', finished_at = ?1, error =
             'The server stopped during this conversion ' || attempts || ' times; it was not
             retried again.' WHERE state = 'PROGRESS' AND attempts >= ?2",
            vals![now, max_attempts],
        )?;
        db.execute(
            "UPDATE tasks SET state = 'PENDING', status = 'Queued again after a server restart'
             WHERE state = 'PROGRESS'",
            &[],
        )
    })
}

pub enum DeleteOutcome {
    Deleted,
    Running,
    NotFound,
}

pub fn delete(db: &mut Db, user: Uuid, id: Uuid) -> anyhow::Result<DeleteOutcome> {
    let Some(task) = get(db, id)?.filter(|t| t.user_id == user) else {
        return Ok(DeleteOutcome::NotFound);
    };
    if !task.state.is_final() {
        return Ok(DeleteOutcome::Running);
    }
    db.execute(
        "DELETE FROM tasks WHERE id = ?1 AND state IN ('SUCCESS', 'FAILURE', 'REVOKED')",
        vals![id],
    )?;
    Ok(DeleteOutcome::Deleted)
}

/// How many of `user`'s tasks are queued or running. On PostgreSQL the user's row stays
/// locked until the call ends, so that nodes counting at once cannot both pass a limit.
pub fn count_active(db: &mut Db, user: Uuid) -> anyhow::Result<u64> {
    if db.dialect() == Dialect::Postgres {
        db.query("SELECT 1 FROM users WHERE id = ?1 FOR UPDATE", vals![user])?;
    }
    Ok(db
        .query_one(
            "SELECT COUNT(*) FROM tasks WHERE user_id = ?1 AND state IN ('PENDING', 'PROGRESS')",
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
