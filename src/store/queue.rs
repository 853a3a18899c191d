//! The order of the queue, in SQL and as positions: users take turns (the one served least
//! recently first), and each user's own tasks go by priority, then first come, first served.
//! [`next_pending`] picks by this order and [`place_in_queue`] counts by it, so that
//! `queue_position` says when a task will start.

use uuid::Uuid;

use super::db::{vals, Db, Dialect};
use super::tasks::{self, now_ms, Changed, Ranked};
use crate::domain::{TaskRecord, TaskState};

/// Starts the next task to run ([`next_pending`]), leased to `owner` for `lease_ms`, and
/// sends its user to the back of the turns ([`served`]). On PostgreSQL this is one statement.
pub fn start_next(
    db: &mut Db,
    owner: &str,
    lease_ms: i64,
    status: &str,
) -> anyhow::Result<Option<Changed>> {
    let set = tasks::start_set(db);
    let mut params = vals![status, crate::time::now(), owner, lease_ms].to_vec();
    if db.dialect() == Dialect::Sqlite {
        let Some((id, user)) = next_pending(db)? else {
            return Ok(None);
        };
        params.push(id.into());
        let sql = format!("UPDATE tasks SET {set} WHERE id = ?5 AND state = 'PENDING'");
        let started = tasks::changed(db, &sql, &params)?;
        if started.is_some() {
            served(db, user)?;
        }
        return Ok(started);
    }
    // The pick locks its row (and checks its state again once locked), so the update in the
    // same statement finds it still PENDING. The update names the id alone: with a join or a
    // state to match, the planner walked the queue's partial index (every queued task)
    // instead of the id's.
    let sql = format!(
        "WITH picked AS ({pick}),
         started AS (UPDATE tasks SET {set} WHERE id = (SELECT id FROM picked) RETURNING *),
         turn AS (INSERT INTO queue_turns (user_id, served) SELECT user_id, {now} FROM started
             ON CONFLICT (user_id) DO UPDATE SET served = excluded.served)
         SELECT {columns}, {hooked} FROM started AS tasks",
        pick = postgres_pick(db),
        now = now_ms(db),
        columns = tasks::COLUMNS,
        hooked = tasks::HOOKED,
    );
    db.query_opt(&sql, &params)?
        .as_ref()
        .map(tasks::changed_from)
        .transpose()
}

/// The id of the next task to run: users take turns (the one served least recently first,
/// then the one waiting longest), and each user's own tasks go by priority, then FIFO. A task
/// waiting out a retry's backoff is passed over until its time. Concurrent claimers (other
/// nodes, on PostgreSQL) skip the rows each other have locked; call it inside
/// [`Db::atomically`]. [`place_in_queue`] states the same order as positions.
pub fn next_pending(db: &mut Db) -> anyhow::Result<Option<(Uuid, Uuid)>> {
    if db.dialect() == Dialect::Postgres {
        return db
            .query_opt(&postgres_pick(db), &[])?
            .map(|row| Ok((row.uuid(0)?, row.uuid(1)?)))
            .transpose();
    }
    let users = db
        .query(&turns(db), &[])?
        .iter()
        .map(|r| r.uuid(0))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pick = pick(db, "?1", "");
    for user in users {
        if let Some(row) = db.query_opt(&pick, vals![user])? {
            return Ok(Some((row.uuid(0)?, user)));
        }
    }
    Ok(None)
}

/// A task is due: queued, and not waiting out a retry's backoff.
fn due(db: &Db) -> String {
    format!(
        "state = 'PENDING' AND (not_before IS NULL OR not_before <= {})",
        now_ms(db)
    )
}

/// Whose turn it is: one row per user with work due, so the sort is over users, not tasks.
/// A few index lookups per waiting user ([`waiting_users`], [`oldest_due`]): a claim costs about
/// the same with ten tasks queued or ten thousand.
fn turns(db: &Db) -> String {
    format!(
        "SELECT p.user_id FROM (SELECT queued.user_id, ({oldest}) AS first
             FROM {waiting} queued) p
         LEFT JOIN queue_turns q ON q.user_id = p.user_id
         WHERE p.first IS NOT NULL
         ORDER BY COALESCE(q.served, 0), p.first",
        oldest = oldest_due(db),
        waiting = waiting_users(),
    )
}

/// The users with queued tasks, one row each: found by skipping along the queue's index from
/// one user to the next, where grouping the queued tasks by user read every one of them.
fn waiting_users() -> &'static str {
    "(WITH RECURSIVE queued(user_id) AS (
         SELECT MIN(user_id) FROM tasks WHERE state = 'PENDING'
         UNION ALL
         SELECT (SELECT MIN(user_id) FROM tasks WHERE state = 'PENDING'
             AND user_id > queued.user_id)
         FROM queued WHERE queued.user_id IS NOT NULL
     ) SELECT user_id FROM queued WHERE user_id IS NOT NULL)"
}

/// The `seq` of user `queued.user_id`'s oldest due task, from the front of the queue's index
/// by arrival.
fn oldest_due(db: &Db) -> String {
    let due = due(db);
    // Each engine is held to that index. Left to choose, SQLite walked every user's queued
    // tasks in order of arrival (the state index), and PostgreSQL, told that one user owns
    // every task, the primary key from the oldest finished task on. A range one user long is
    // not an equality, so only an index that starts with the user gives PostgreSQL its order.
    match db.dialect() {
        Dialect::Sqlite => format!(
            "SELECT MIN(seq) FROM tasks INDEXED BY tasks_pending_by_seq
             WHERE {due} AND user_id = queued.user_id"
        ),
        Dialect::Postgres => format!(
            "SELECT seq FROM tasks WHERE {due}
             AND user_id >= queued.user_id AND user_id <= queued.user_id
             ORDER BY user_id, seq LIMIT 1"
        ),
    }
}

/// `user`'s next due task: the front of the index of queued tasks in this order.
fn pick(db: &Db, user: &str, lock: &str) -> String {
    // SQLite left to choose took the index by state and user, and sorted the user's queue.
    let index = match db.dialect() {
        Dialect::Sqlite => " INDEXED BY tasks_pending",
        Dialect::Postgres => "",
    };
    format!(
        "SELECT id FROM tasks{index} WHERE {due} AND user_id = {user}
         ORDER BY priority DESC, seq LIMIT 1{lock}",
        due = due(db)
    )
}

/// The next task's id and user in one statement, its row locked. The nested loop picks user
/// by user in turn order and stops at the first task it could lock, so it locks that one task
/// only; a user whose due tasks are all being claimed by other nodes (locked) passes the turn.
fn postgres_pick(db: &Db) -> String {
    format!(
        "SELECT t.id, u.user_id FROM ({turns}) u CROSS JOIN LATERAL ({pick}) t LIMIT 1",
        turns = turns(db),
        pick = pick(db, "u.user_id", " FOR UPDATE SKIP LOCKED")
    )
}

/// Records that `user` was just served, which sends them to the back of the turns.
pub fn served(db: &mut Db, user: Uuid) -> anyhow::Result<()> {
    db.execute(
        &format!(
            "INSERT INTO queue_turns (user_id, served) VALUES (?1, {now})
             ON CONFLICT (user_id) DO UPDATE SET served = excluded.served",
            now = now_ms(db)
        ),
        vals![user],
    )?;
    Ok(())
}

/// Fills in `queue_position` for the PENDING tasks among `rows`, in the order
/// [`next_pending`] takes them. A user at turn `r` of their own queue starts after their
/// first `r - 1` tasks, after up to `r - 1` of each other user's, and after the `r`-th of each
/// other user whose turn comes first.
pub(super) fn place_in_queue(db: &mut Db, rows: Vec<Ranked>) -> anyhow::Result<Vec<TaskRecord>> {
    let pending: Vec<&Ranked> = rows
        .iter()
        .filter(|r| r.task.state == TaskState::Pending)
        .collect();
    if pending.is_empty() {
        return Ok(rows.into_iter().map(|r| r.task).collect());
    }
    // Each task's turn among its user's own: how many of theirs go before it, plus one.
    const AHEAD: &str = "SELECT COUNT(*) FROM tasks WHERE user_id = ?1 AND state = 'PENDING'
        AND (priority > ?2 OR (priority = ?2 AND seq < ?3))";
    let ahead = |row: &Ranked| vals![row.task.user_id, row.priority, row.task.seq].to_vec();
    // With one task to place (a submit, a status read), the statement that reads the users
    // counts its turn too: one round trip fewer.
    let (alone, params) = match pending.as_slice() {
        [row] => (format!("({AHEAD})"), ahead(row)),
        _ => ("0".to_string(), Vec::new()),
    };
    // Each user with queued tasks: (turn order key, how many).
    let read = db.query(
        &format!(
            "SELECT p.user_id, COALESCE(q.served, 0), p.first, p.n, {alone} FROM (SELECT
                 user_id, MIN(seq) AS first, COUNT(*) AS n FROM tasks WHERE state = 'PENDING'
                 GROUP BY user_id) p LEFT JOIN queue_turns q ON q.user_id = p.user_id"
        ),
        &params,
    )?;
    let users: std::collections::HashMap<Uuid, ((i64, i64), i64)> = read
        .iter()
        .map(|r| Ok((r.uuid(0)?, ((r.int(1)?, r.int(2)?), r.int(3)?))))
        .collect::<anyhow::Result<_>>()?;
    let mut turns = std::collections::HashMap::with_capacity(pending.len());
    if let ([row], Some(first)) = (pending.as_slice(), read.first()) {
        turns.insert(row.task.id, first.int(4)? + 1);
    } else {
        for row in &pending {
            let ahead = db.query_one(AHEAD, &ahead(row))?.int(0)?;
            turns.insert(row.task.id, ahead + 1);
        }
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let mut task = row.task;
            if let Some(&turn) = turns.get(&task.id) {
                let mine = users.get(&task.user_id).map_or((0, task.seq), |u| u.0);
                let ahead: i64 = users
                    .iter()
                    .filter(|(user, _)| **user != task.user_id)
                    .map(|(_, (key, count))| {
                        (*count).min(turn - 1) + i64::from(*count >= turn && *key < mine)
                    })
                    .sum();
                task.queue_position = Some(turn + ahead);
            }
            task
        })
        .collect())
}
