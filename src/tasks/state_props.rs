//! Property test of the task state machine as the store implements it: for any sequence of
//! submit, claim, progress, cancel, success, failure, shutdown requeue and crash-restart, a
//! final state never changes, every change is one the state machine allows, progress never
//! goes down, event `seq` only goes up, and once the workers drain the queue (restarting as
//! often as needed) every task is final.

use proptest::prelude::*;
use uuid::Uuid;

use super::lifecycle::{self, Ending, Submitted};
use crate::domain::{NewTask, TaskState};
use crate::store::items::{self, ItemKind, NewItem};
use crate::store::{tasks, users, Db, Store};

#[derive(Debug, Clone)]
enum Op {
    Submit,
    Claim,
    Progress(usize, f64),
    Cancel(usize),
    Succeed(usize),
    Fail(usize),
    /// A clean shutdown puts a running task back in the queue.
    Requeue(usize),
    /// The server was killed and started again.
    CrashRestart,
    /// The node running tasks stopped renewing its leases, and they ran out.
    NodeLost,
    /// A node whose leases ran out tries to end a task anyway.
    StaleFail(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Submit),
        3 => Just(Op::Claim),
        3 => (0..8usize, 0.0..100.0f64).prop_map(|(i, p)| Op::Progress(i, p)),
        1 => (0..8usize).prop_map(Op::Cancel),
        2 => (0..8usize).prop_map(Op::Succeed),
        1 => (0..8usize).prop_map(Op::Fail),
        1 => (0..8usize).prop_map(Op::Requeue),
        1 => Just(Op::CrashRestart),
        1 => Just(Op::NodeLost),
        1 => (0..8usize).prop_map(Op::StaleFail),
    ]
}

const MAX_ATTEMPTS: u32 = 3;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn tasks_always_end_final_and_never_go_back(ops in proptest::collection::vec(op(), 1..60)) {
        for test in crate::store::testing::stores() {
            run(&test.store, &ops);
        }
    }
}

fn run(store: &Store, ops: &[Op]) {
    let mut last_seq = 0u64;
    // Claims go to the current node; each lost node is followed by a new one.
    let mut generation = 0u32;
    let node = |generation: u32| format!("node-{generation}");
    let mut seen: Vec<(TaskState, f64)> = Vec::new();
    store
        .blocking(|c| {
            let user = users::ensure_user(c, "prop")?;
            let source = items::insert(
                c,
                NewItem {
                    user_id: user.id,
                    parent_id: None,
                    name: "src.tif".into(),
                    kind: ItemKind::File,
                    size: 1,
                    content_type: None,
                    blob: Some("0".repeat(32)),
                    geo_raster: None,
                    source_id: None,
                },
            )?;
            let mut ids: Vec<Uuid> = Vec::new();
            let pick = |ids: &[Uuid], i: usize| (!ids.is_empty()).then(|| ids[i % ids.len()]);
            let fail = || Ending::Failed("broken".into());
            let drain = |c: &mut Db| -> anyhow::Result<()> {
                // Workers take every queued task to an end; a restart recovers running ones.
                for _ in 0..100 {
                    while let Some(task) = lifecycle::claim(c, "drainer", 60_000)? {
                        lifecycle::finish(c, task.id, "drainer", Ending::Failed("drained".into()))?;
                    }
                    if lifecycle::recover(c, MAX_ATTEMPTS)? == 0 {
                        return Ok(());
                    }
                }
                panic!("the queue never drained");
            };
            for op in ops.iter().cloned().chain([Op::CrashRestart]) {
                let node_now = node(generation);
                match op {
                    Op::Submit => {
                        let new = NewTask {
                            user_id: user.id,
                            source_id: source.id,
                            source_blob: "0".repeat(32),
                            source_name: "src.tif".into(),
                            parent_id: None,
                            options: Default::default(),
                        };
                        let Submitted::Queued(task) = lifecycle::submit(c, new, u64::MAX)? else {
                            panic!("no limit was set")
                        };
                        ids.push(task.id);
                        seen.push((task.state, -1.0));
                    }
                    Op::Claim => {
                        lifecycle::claim(c, &node_now, 60_000)?;
                    }
                    Op::Progress(i, p) => {
                        if let Some(id) = pick(&ids, i) {
                            lifecycle::progress(c, id, &node_now, p, "Converting")?;
                        }
                    }
                    Op::Cancel(i) => {
                        if let Some(id) = pick(&ids, i) {
                            lifecycle::cancel(c, user.id, id)?;
                        }
                    }
                    Op::Succeed(i) => {
                        if let Some(id) = pick(&ids, i) {
                            let record = tasks::get(c, id)?.expect("task exists");
                            if record.state == TaskState::Progress {
                                let output = NewItem {
                                    user_id: user.id,
                                    parent_id: None,
                                    name: "src.cog.tif".into(),
                                    kind: ItemKind::File,
                                    size: 1,
                                    content_type: None,
                                    blob: Some(format!("{:032x}", id.as_u128())),
                                    geo_raster: None,
                                    source_id: Some(source.id),
                                };
                                let json = serde_json::json!({});
                                lifecycle::succeed(c, &record, &node_now, output, json)?;
                            }
                        }
                    }
                    Op::Fail(i) => {
                        if let Some(id) = pick(&ids, i) {
                            lifecycle::finish(c, id, &node_now, fail())?;
                        }
                    }
                    Op::Requeue(i) => {
                        if let Some(id) = pick(&ids, i) {
                            lifecycle::finish(c, id, &node_now, Ending::Interrupted)?;
                        }
                    }
                    Op::CrashRestart => {
                        lifecycle::recover(c, MAX_ATTEMPTS)?;
                        generation += 1;
                    }
                    Op::NodeLost => {
                        lifecycle::reap(c, 3_600_000, MAX_ATTEMPTS)?;
                        generation += 1;
                    }
                    Op::StaleFail(i) => {
                        if let (Some(id), Some(old)) = (pick(&ids, i), generation.checked_sub(1)) {
                            let before = tasks::get(c, id)?.expect("task exists").state;
                            lifecycle::finish(c, id, &node(old), fail())?;
                            let after = tasks::get(c, id)?.expect("task exists").state;
                            assert_eq!(before, after, "a node whose lease ran out ended a task");
                        }
                    }
                }
                // Every change was announced: the event position moved past every change.
                let position = c.position()?;
                let mut changed = false;
                for (n, id) in ids.iter().enumerate() {
                    let now = tasks::get(c, *id)?.expect("task exists");
                    let (before, progress) = seen[n];
                    assert!(
                        now.state == before || before.can_become(now.state),
                        "{before:?} became {:?} after {op:?}",
                        now.state
                    );
                    assert!(
                        !before.is_final() || now.state == before,
                        "a final state changed"
                    );
                    assert!(now.progress >= progress, "progress went down after {op:?}");
                    changed |= (now.state, now.progress) != (before, progress);
                    assert!(
                        now.attempts <= MAX_ATTEMPTS + 1,
                        "attempts {}",
                        now.attempts
                    );
                    seen[n] = (now.state, now.progress);
                }
                assert!(position >= last_seq, "the event position went back");
                assert!(
                    !changed || position > last_seq,
                    "{op:?} changed a task without announcing it"
                );
                last_seq = position;
            }
            drain(c)?;
            for id in &ids {
                let task = tasks::get(c, *id)?.expect("task exists");
                assert!(task.state.is_final(), "{:?} left in {:?}", id, task.state);
            }
            Ok(())
        })
        .unwrap();
}
