//! The queue's order on both engines: users take turns, each user's tasks go by priority, and
//! the queue position a queued task shows is the order in which claims take it. PostgreSQL
//! picks in one statement and SQLite user by user; both must give the same order.

use uuid::Uuid;

use super::lifecycle::{self, Submitted};
use crate::domain::options::Priority;
use crate::domain::NewTask;
use crate::store::testing::{self, stores};
use crate::store::{queue, tasks as rows, users, Db};

fn submit(db: &mut Db, user: Uuid, priority: Priority) -> anyhow::Result<Uuid> {
    let mut new = NewTask::of(user, Uuid::new_v4());
    new.options.priority = priority;
    match lifecycle::submit(db, new, 100, None)? {
        Submitted::Queued(task) => Ok(task.id),
        _ => unreachable!("a new user has room"),
    }
}

fn two_users(db: &mut Db) -> anyhow::Result<(Uuid, Uuid)> {
    Ok((
        users::ensure_user(db, "a")?.id,
        users::ensure_user(db, "b")?.id,
    ))
}

#[test]
fn claims_take_turns_between_users_by_priority_in_the_order_positions_said() {
    for test in stores() {
        let engine = test.engine;
        let (claimed, positions, expected) = test
            .store
            .blocking(|db| {
                let (a, b) = two_users(db)?;
                let a_low = submit(db, a, Priority::Low)?;
                let a_normal = submit(db, a, Priority::Normal)?;
                let b_normal = submit(db, b, Priority::Normal)?;
                let a_high = submit(db, a, Priority::High)?;
                let b_second = submit(db, b, Priority::Normal)?;
                let b_third = submit(db, b, Priority::Normal)?;
                // A waited longest, so A goes first, with their highest priority; then B;
                // then each in turn, A's others by priority.
                let expected = vec![a_high, b_normal, a_normal, b_second, a_low, b_third];
                let mut positions = Vec::new();
                for id in &expected {
                    positions.push(rows::get(db, *id)?.expect("kept").queue_position);
                }
                // Several tasks placed at once go another way (each turn counted first).
                let listed = rows::changed_since(db, "9999-01-01T00:00:00Z")?;
                let mut listed_positions = Vec::new();
                for id in &expected {
                    let task = listed.iter().find(|t| t.id == *id).expect("listed");
                    listed_positions.push(task.queue_position);
                }
                assert_eq!(
                    listed_positions, positions,
                    "{engine}: listed and read alone"
                );
                let mut claimed = Vec::new();
                while let Some(task) = lifecycle::claim(db, "node/1", 60_000)? {
                    claimed.push(task.id);
                    testing::after_the_last_turn(db)?;
                }
                Ok((claimed, positions, expected))
            })
            .unwrap();
        assert_eq!(claimed, expected, "{engine}: the claims' order");
        assert_eq!(
            positions,
            (1..=6).map(Some).collect::<Vec<_>>(),
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
                let (a, b) = two_users(db)?;
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

/// A worker that publishes an output claims its next task in the same transaction: the task
/// whose turn it is, leased to the owner it named. Without `then`, nothing more is claimed.
#[test]
fn a_publication_claims_the_workers_next_task_in_turn() {
    use crate::domain::TaskState;
    use crate::store::items::{ItemKind, NewItem};
    for test in stores() {
        let engine = test.engine;
        test.store
            .blocking(|db| {
                let (a, b) = two_users(db)?;
                let first = submit(db, a, Priority::Normal)?;
                let a_second = submit(db, a, Priority::Normal)?;
                let b_first = submit(db, b, Priority::Normal)?;
                let output = |user| NewItem {
                    user_id: user,
                    parent_id: None,
                    name: "out.tif".into(),
                    kind: ItemKind::File,
                    size: 1,
                    content_type: None,
                    blob: Some(Uuid::new_v4().simple().to_string()),
                    geo_raster: None,
                    source_id: None,
                };
                let running = lifecycle::claim(db, "node/1", 60_000)?.expect("queued");
                assert_eq!(running.id, first, "{engine}");
                let then = lifecycle::Then {
                    owner: "node/2",
                    lease_ms: 60_000,
                };
                let (published, next) = lifecycle::succeed(
                    db,
                    &running,
                    "node/1",
                    output(a),
                    serde_json::json!({}),
                    Some(then),
                )?;
                assert!(matches!(published, lifecycle::Published::Output(_)));
                let next = next.expect("a task was queued");
                // A was just served, so B's turn comes before A's second task.
                assert_eq!(next.id, b_first, "{engine}: the next task in turn");
                assert_eq!(next.state, TaskState::Progress, "{engine}");
                assert_eq!(next.attempts, 1, "{engine}");
                let held = rows::hold(db, b_first)?.expect("kept");
                assert_eq!(held.lease_owner.as_deref(), Some("node/2"), "{engine}");
                let done = rows::get(db, first)?.expect("kept");
                assert_eq!(done.state, TaskState::Success, "{engine}");

                let (_, none) = lifecycle::succeed(
                    db,
                    &next,
                    "node/2",
                    output(b),
                    serde_json::json!({}),
                    None,
                )?;
                assert!(none.is_none(), "{engine}: no claim without `then`");
                let waiting = rows::get(db, a_second)?.expect("kept");
                assert_eq!(waiting.state, TaskState::Pending, "{engine}");
                Ok(())
            })
            .unwrap();
    }
}

/// Two nodes submitting for one user at once cannot both pass the limit: each counts after
/// taking the user's row lock, so the second counts after the first has committed its task.
/// (The first here holds its transaction open between its count and its insert.) A count in
/// the statement that takes the lock went red here: it counts with the snapshot it started
/// with, before the wait.
#[test]
fn submits_on_two_nodes_at_once_count_one_after_the_other() {
    use std::sync::{Arc, Barrier};
    for test in stores() {
        let Some(second) = test.another_node() else {
            continue; // SQLite: one connection, one call at a time.
        };
        let user = test
            .store
            .blocking(|db| users::ensure_user(db, "limited"))
            .unwrap()
            .id;
        let counted = Arc::new(Barrier::new(2));
        let first = {
            let (store, counted) = (test.store.clone(), counted.clone());
            std::thread::spawn(move || {
                store.blocking(|db| {
                    db.atomically(|db| {
                        crate::store::idempotency::lock_user(db, user)?;
                        let active = rows::count_active(db, user)?;
                        counted.wait();
                        // The other node's submit arrives while this one is open.
                        std::thread::sleep(std::time::Duration::from_millis(300));
                        rows::insert(db, NewTask::of(user, Uuid::new_v4()))?;
                        Ok(active)
                    })
                })
            })
        };
        counted.wait();
        let answer = second
            .blocking(|db| lifecycle::submit(db, NewTask::of(user, Uuid::new_v4()), 1, None))
            .unwrap();
        assert_eq!(first.join().unwrap().unwrap(), 0);
        match answer {
            Submitted::Busy { active } => assert_eq!(active, 1),
            Submitted::Queued(_) => panic!("two submits passed a limit of one"),
            _ => unreachable!("no key was sent"),
        }
    }
}
