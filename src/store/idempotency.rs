//! The first answer to each request sent with an `Idempotency-Key`, per user and key, kept
//! for a day: a request sent again with the same key and the same content gets that answer,
//! and makes nothing new.

use uuid::Uuid;

use super::db::{vals, Db, Dialect};

/// How long a key holds its answer.
pub const KEPT: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// A request sent with a key: the key, and a digest of what it asked for.
#[derive(Debug, Clone)]
pub struct Keyed {
    pub key: String,
    pub request_hash: String,
}

/// What became of a keyed request.
pub enum Once<T> {
    /// The first time: the work was done, and its answer kept.
    Fresh(T),
    /// Sent before with the same content: the kept answer (its status and JSON body).
    Replayed { status: u16, response: String },
    /// The key was used before for another request.
    Mismatch,
}

/// Holds `user`'s row until the call ends (PostgreSQL; SQLite's calls already run one at a
/// time), so that requests of one user on several nodes take their turns: the second of two
/// at once finds the key the first kept, and limits counted meanwhile stay true. The lock is
/// the weaker `NO KEY UPDATE`: it still excludes itself, but not the key-share lock that
/// every insert naming the user (an item, a task) takes on the row, so an upload's or a
/// finished conversion's insert never waits for a submit's commit.
pub fn lock_user(db: &mut Db, user: Uuid) -> anyhow::Result<()> {
    if db.dialect() == Dialect::Postgres {
        db.query(
            "SELECT 1 FROM users WHERE id = ?1 FOR NO KEY UPDATE",
            vals![user],
        )?;
    }
    Ok(())
}

/// Runs `work` under the user's row lock ([`lock_user`]), once per key: a request seen
/// before within [`KEPT`] gets its kept answer instead; `answer` says what to keep of a fresh
/// result (its status and JSON body), or nothing for a refusal worth sending again (a limit
/// that may have freed up). Without a key, `work` simply runs under the lock.
pub fn once<T>(
    db: &mut Db,
    user: Uuid,
    keyed: Option<&Keyed>,
    work: impl FnOnce(&mut Db) -> anyhow::Result<T>,
    answer: impl FnOnce(&T) -> Option<(u16, String)>,
) -> anyhow::Result<Once<T>> {
    lock_user(db, user)?;
    let Some(keyed) = keyed else {
        return Ok(Once::Fresh(work(db)?));
    };
    let since = crate::time::format(chrono::Utc::now() - KEPT);
    let kept = db.query_opt(
        "SELECT request_hash, status, response FROM idempotency_keys
         WHERE user_id = ?1 AND key = ?2 AND created_at >= ?3",
        vals![user, keyed.key.as_str(), since],
    )?;
    if let Some(row) = kept {
        if row.text(0)? != keyed.request_hash {
            return Ok(Once::Mismatch);
        }
        return Ok(Once::Replayed {
            status: u16::try_from(row.int(1)?)?,
            response: row.text(2)?,
        });
    }
    let result = work(db)?;
    let Some((status, response)) = answer(&result) else {
        return Ok(Once::Fresh(result));
    };
    db.execute(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, status, response, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (user_id, key) DO UPDATE SET request_hash = excluded.request_hash,
         status = excluded.status, response = excluded.response,
         created_at = excluded.created_at",
        vals![
            user,
            keyed.key.as_str(),
            keyed.request_hash.as_str(),
            i64::from(status),
            response,
            crate::time::now()
        ],
    )?;
    Ok(Once::Fresh(result))
}

/// Forgets keys older than [`KEPT`].
pub fn prune(db: &mut Db) -> anyhow::Result<usize> {
    let since = crate::time::format(chrono::Utc::now() - KEPT);
    db.execute(
        "DELETE FROM idempotency_keys WHERE created_at < ?1",
        vals![since],
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use super::{once, Keyed, Once};
    use crate::store::{testing, users};

    /// Two nodes given the same key at the same moment: the second waits for the first to
    /// commit and gets its answer, and the work runs once. (Through HTTP the window is too
    /// narrow to hit on purpose; here the first holds its transaction open.)
    #[test]
    fn a_key_sent_to_two_nodes_at_once_does_the_work_once() {
        for test in testing::stores() {
            let Some(second) = test.another_node() else {
                continue; // SQLite: one connection, one call at a time.
            };
            let user = test
                .store
                .blocking(|c| users::ensure_user(c, "twice"))
                .unwrap()
                .id;
            let keyed = Keyed {
                key: "k".into(),
                request_hash: "h".into(),
            };
            let started = Arc::new(Barrier::new(2));
            let first = {
                let (store, keyed, started) = (test.store.clone(), keyed.clone(), started.clone());
                std::thread::spawn(move || {
                    store.blocking(|c| {
                        let work = |_: &mut crate::store::Db| {
                            started.wait();
                            // The other node's call arrives while this one is open.
                            std::thread::sleep(Duration::from_millis(300));
                            Ok(1)
                        };
                        once(c, user, Some(&keyed), work, |_| Some((200, "first".into())))
                    })
                })
            };
            started.wait();
            let answer = second
                .blocking(|c| {
                    let work = |_: &mut crate::store::Db| Ok(2);
                    once(c, user, Some(&keyed), work, |_| {
                        Some((200, "second".into()))
                    })
                })
                .unwrap();
            assert!(matches!(first.join().unwrap().unwrap(), Once::Fresh(1)));
            match answer {
                Once::Replayed { response, .. } => assert_eq!(response, "first"),
                Once::Fresh(_) => panic!("the work ran twice for one key"),
                Once::Mismatch => panic!("the same request was taken for another"),
            }
        }
    }
}
