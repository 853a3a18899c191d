//! The queue's order on both engines: users take turns, each user's tasks go by priority, and
//! the queue position a queued task shows is the order in which claims take it. PostgreSQL
//! picks in one statement and SQLite user by user; both must give the same order.

use uuid::Uuid;

use super::lifecycle::{self, Submitted};
use crate::domain::options::Priority;
use crate::domain::NewTask;
use crate::store::testing::stores;
use crate::store::{queue, tasks as rows, users, Db};

fn submit(db: &mut Db, user: Uuid, priority: Priority) -> anyhow::Result<Uuid> {
    let mut new = NewTask::of(user, Uuid::new_v4());
    new.options.priority = priority;
    match lifecycle::submit(db, new, 100, None)? {
        Submitted::Queued(task) => Ok(task.id),
        _ => unreachable!("a new user has room"),
    }
}

#[test]
fn claims_take_turns_between_users_by_priority_in_the_order_positions_said() {
    for test in stores() {
        let engine = test.engine;
        let (claimed, positions, expected) = test
            .store
            .blocking(|db| {
                let (a, b) = (
                    users::ensure_user(db, "a")?.id,
                    users::ensure_user(db, "b")?.id,
                );
                let a_low = submit(db, a, Priority::Low)?;
                let a_normal = submit(db, a, Priority::Normal)?;
                let b_normal = submit(db, b, Priority::Normal)?;
                let a_high = submit(db, a, Priority::High)?;
                // A waited longest, so A goes first, with their highest priority; then B;
                // then A's others by priority.
                let expected = vec![a_high, b_normal, a_normal, a_low];
                let mut positions = Vec::new();
                for id in &expected {
                    positions.push(rows::get(db, *id)?.expect("kept").queue_position);
                }
                let mut claimed = Vec::new();
                while let Some(task) = lifecycle::claim(db, "node/1", 60_000)? {
                    claimed.push(task.id);
                }
                Ok((claimed, positions, expected))
            })
            .unwrap();
        assert_eq!(claimed, expected, "{engine}: the claims' order");
        assert_eq!(
            positions,
            vec![Some(1), Some(2), Some(3), Some(4)],
            "{engine}: the positions shown before"
        );
    }
}

/// PostgreSQL picks in one statement, a lateral join under `LIMIT 1`: it must lock only the
/// task it picks, or a second node would find every other user's next task locked too.
#[test]
fn a_pick_on_postgresql_locks_only_the_task_it_picks() {
    for test in stores() {
        let Some(other) = test.another_node() else {
            continue;
        };
        test.store
            .blocking(|db| {
                let (a, b) = (
                    users::ensure_user(db, "a")?.id,
                    users::ensure_user(db, "b")?.id,
                );
                submit(db, a, Priority::Normal)?;
                let b_task = submit(db, b, Priority::Normal)?;
                Ok(b_task)
            })
            .and_then(|b_task| {
                test.store.blocking(|db| {
                    // This node's pick stays locked until its call ends; meanwhile another
                    // node picks.
                    let (_, first) = queue::next_pending(db)?.expect("a task is due");
                    let theirs = other.blocking(queue::next_pending)?;
                    assert_eq!(
                        theirs.map(|(task, _)| task),
                        Some(b_task),
                        "the other node gets the other user's task (this node picked user {first}'s)"
                    );
                    Ok(())
                })
            })
            .unwrap();
    }
}
