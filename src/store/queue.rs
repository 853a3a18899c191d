//! The order of the queue, in SQL and as positions: users take turns (the one served least
//! recently first), and each user's own tasks go by priority, then first come, first served.
//! [`next_pending`] picks by this order and [`place_in_queue`] counts by it, so that
//! `queue_position` says when a task will start.

use uuid::Uuid;

use super::db::{vals, Db, Dialect};
use super::tasks::{now_ms, Ranked};
use crate::domain::{TaskRecord, TaskState};

/// The id of the next task to run: users take turns (the one served least recently first,
/// then the one waiting longest), and each user's own tasks go by priority, then FIFO. A task
/// waiting out a retry's backoff is passed over until its time. Concurrent claimers (other
/// nodes, on PostgreSQL) skip the rows each other have locked; call it inside
/// [`Db::atomically`]. [`place_in_queue`] states the same order as positions.
pub fn next_pending(db: &mut Db) -> anyhow::Result<Option<(Uuid, Uuid)>> {
    let lock = match db.dialect() {
        Dialect::Sqlite => "",
        Dialect::Postgres => " FOR UPDATE OF t SKIP LOCKED",
    };
    let pick = format!(
        "SELECT t.id, t.user_id FROM tasks t
         JOIN (SELECT user_id, MIN(seq) AS first FROM tasks WHERE state = 'PENDING'
               GROUP BY user_id) f ON f.user_id = t.user_id
         LEFT JOIN queue_turns q ON q.user_id = t.user_id
         WHERE t.state = 'PENDING' AND (t.not_before IS NULL OR t.not_before <= {now})
         ORDER BY COALESCE(q.served, 0), f.first, t.priority DESC, t.seq LIMIT 1{lock}",
        now = now_ms(db)
    );
    db.query_opt(&pick, &[])?
        .map(|r| Ok((r.uuid(0)?, r.uuid(1)?)))
        .transpose()
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
    // Each user with queued tasks: (turn order key, how many).
    let users: std::collections::HashMap<Uuid, ((i64, i64), i64)> = db
        .query(
            "SELECT t.user_id, COALESCE(q.served, 0), MIN(t.seq), COUNT(*) FROM tasks t
             LEFT JOIN queue_turns q ON q.user_id = t.user_id WHERE t.state = 'PENDING'
             GROUP BY t.user_id, q.served",
            &[],
        )?
        .iter()
        .map(|r| Ok((r.uuid(0)?, ((r.int(1)?, r.int(2)?), r.int(3)?))))
        .collect::<anyhow::Result<_>>()?;
    let mut turns: std::collections::HashMap<Uuid, Vec<(i64, i64)>> = Default::default();
    for user in pending.iter().map(|r| r.task.user_id) {
        if turns.contains_key(&user) {
            continue;
        }
        let mut own = db
            .query(
                "SELECT priority, seq FROM tasks WHERE user_id = ?1 AND state = 'PENDING'",
                vals![user],
            )?
            .iter()
            .map(|r| Ok((-r.int(0)?, r.int(1)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        own.sort_unstable();
        turns.insert(user, own);
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let mut task = row.task;
            if task.state == TaskState::Pending {
                let own = &turns[&task.user_id];
                let turn = own.partition_point(|k| *k < (-row.priority, task.seq)) as i64 + 1;
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
