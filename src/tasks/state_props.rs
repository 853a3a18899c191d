//! Property test of the task service on SQLite and PostgreSQL: for any sequence of submit
//! (with and without an idempotency key), claim, progress, cancel, success, permanent and
//! transient failure, shutdown requeue, crash-restart, lost node, retry by hand and expiry, a
//! final state never changes, every change is one the state machine allows and is announced,
//! progress never goes down, a key sent again never makes a second task, only final tasks
//! expire (leaving a tombstone), and once the workers drain the queue (restarting as often as
//! needed) every task is final.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use uuid::Uuid;

use super::lifecycle::{self, Ending, Policy, Retried, Submitted};
use crate::domain::job::Failure;
use crate::domain::{NewTask, TaskState};
use crate::store::idempotency::Keyed;
use crate::store::items::{self, ItemKind, NewItem};
use crate::store::{tasks, users, Db, Store};

#[derive(Debug, Clone)]
enum Op {
    Submit,
    Claim,
    Progress(usize, f64),
    Cancel(usize),
    /// `true`: the worker also claims its next task in the same transaction.
    Succeed(usize, bool),
    Fail(usize),
    /// A clean shutdown puts a running task back in the queue.
    Requeue(usize),
    /// The server was killed and started again.
    CrashRestart,
    /// The node running tasks stopped renewing its leases, and they ran out.
    NodeLost,
    /// A node whose leases ran out tries to end a task anyway.
    StaleFail(usize),
    /// A failure that is not the input's fault: queued again while attempts are left.
    TransientFail(usize),
    /// `POST /tasks/{id}/retry`: a new task from a failed or revoked one.
    RetryByHand(usize),
    /// Retention prunes every finished task.
    Expire,
    /// A start sent with key `key` and body `body`.
    SubmitKeyed {
        key: u8,
        body: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Submit),
        3 => Just(Op::Claim),
        3 => (0..8usize, 0.0..100.0f64).prop_map(|(i, p)| Op::Progress(i, p)),
        1 => (0..8usize).prop_map(Op::Cancel),
        2 => (0..8usize, any::<bool>()).prop_map(|(i, then)| Op::Succeed(i, then)),
        1 => (0..8usize).prop_map(Op::Fail),
        1 => (0..8usize).prop_map(Op::Requeue),
        1 => Just(Op::CrashRestart),
        1 => Just(Op::NodeLost),
        1 => (0..8usize).prop_map(Op::StaleFail),
        2 => (0..8usize).prop_map(Op::TransientFail),
        1 => (0..8usize).prop_map(Op::RetryByHand),
        1 => Just(Op::Expire),
        2 => (0..3u8, 0..2u8).prop_map(|(key, body)| Op::SubmitKeyed { key, body }),
    ]
}

const MAX_ATTEMPTS: u32 = 3;
/// No backoff, so that a task queued again can be claimed by the next op.
const POLICY: Policy = Policy {
    max_attempts: MAX_ATTEMPTS,
    backoff: Duration::ZERO,
};

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
            // Which task each idempotency key made, and with which body.
            let mut keyed: HashMap<u8, (u8, Uuid)> = HashMap::new();
            let mut vanished = std::collections::HashSet::new();
            let new_task = NewTask::of;
            let pick = |ids: &[Uuid], i: usize| (!ids.is_empty()).then(|| ids[i % ids.len()]);
            let fail = || Ending::Failed(Failure::permanent("broken"));
            let drain = |c: &mut Db| -> anyhow::Result<()> {
                // Workers take every queued task to an end; a restart recovers running ones.
                for _ in 0..100 {
                    while let Some(task) = lifecycle::claim(c, "drainer", 60_000)? {
                        let drained = Ending::Failed(Failure::permanent("drained"));
                        lifecycle::finish(c, task.id, "drainer", drained, POLICY)?;
                    }
                    if lifecycle::recover(c, POLICY)? == 0 {
                        return Ok(());
                    }
                }
                panic!("the queue never drained");
            };
            for op in ops.iter().cloned().chain([Op::CrashRestart]) {
                let node_now = node(generation);
                match op {
                    Op::Submit => {
                        let new = new_task(user.id, source.id);
                        let Submitted::Queued(task) = lifecycle::submit(c, new, u64::MAX, None)?
                        else {
                            panic!("no limit was set")
                        };
                        ids.push(task.id);
                        seen.push((task.state, -1.0));
                    }
                    Op::SubmitKeyed { key, body } => {
                        let request = Keyed {
                            key: format!("key-{key}"),
                            request_hash: format!("body-{body}"),
                        };
                        let new = new_task(user.id, source.id);
                        let submitted = lifecycle::submit(c, new, u64::MAX, Some(&request))?;
                        match (submitted, keyed.get(&key)) {
                            (Submitted::Queued(task), None) => {
                                keyed.insert(key, (body, task.id));
                                ids.push(task.id);
                                seen.push((task.state, -1.0));
                            }
                            (Submitted::Replayed(id), Some((first, made))) if *first == body => {
                                assert_eq!(id, *made, "a key sent again answered another task");
                            }
                            (Submitted::KeyReused, Some((first, _))) if *first != body => {}
                            (_, before) => panic!("key {key} body {body} after {before:?}"),
                        }
                    }
                    Op::TransientFail(i) => {
                        if let Some(id) = pick(&ids, i) {
                            let failure = Failure::transient("the disk filled up");
                            lifecycle::finish(c, id, &node_now, Ending::Failed(failure), POLICY)?;
                        }
                    }
                    Op::RetryByHand(i) => {
                        if let Some(id) = pick(&ids, i) {
                            let before = tasks::get(c, id)?;
                            match lifecycle::retry(c, user.id, id, None, None, u64::MAX)? {
                                Retried::Queued(task) => {
                                    let before = before.expect("a retried task exists").state;
                                    assert!(matches!(
                                        before,
                                        TaskState::Failure | TaskState::Revoked
                                    ));
                                    assert_eq!(task.retry_of, Some(id));
                                    ids.push(task.id);
                                    seen.push((task.state, -1.0));
                                }
                                Retried::NotRetriable(state) => {
                                    assert!(!matches!(
                                        state,
                                        TaskState::Failure | TaskState::Revoked
                                    ))
                                }
                                // Expired; with no retention, its tombstone may be gone too.
                                Retried::Expired | Retried::NotFound => assert!(before.is_none()),
                                other => {
                                    panic!("retry answered {:?}", std::mem::discriminant(&other))
                                }
                            }
                        }
                    }
                    Op::Expire => {
                        super::retention::expire(c, Duration::ZERO)?;
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
                    Op::Succeed(i, then) => {
                        if let Some(id) = pick(&ids, i) {
                            let record = tasks::get(c, id)?;
                            if let Some(record) = record.filter(|r| r.state == TaskState::Progress)
                            {
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
                                let then = then.then_some(lifecycle::Then {
                                    owner: &node_now,
                                    lease_ms: 60_000,
                                });
                                lifecycle::succeed(c, &record, &node_now, output, json, then)?;
                            }
                        }
                    }
                    Op::Fail(i) => {
                        if let Some(id) = pick(&ids, i) {
                            lifecycle::finish(c, id, &node_now, fail(), POLICY)?;
                        }
                    }
                    Op::Requeue(i) => {
                        if let Some(id) = pick(&ids, i) {
                            lifecycle::finish(c, id, &node_now, Ending::Interrupted, POLICY)?;
                        }
                    }
                    Op::CrashRestart => {
                        lifecycle::recover(c, POLICY)?;
                        generation += 1;
                    }
                    Op::NodeLost => {
                        lifecycle::reap(c, 3_600_000, POLICY)?;
                        generation += 1;
                    }
                    Op::StaleFail(i) => {
                        if let (Some(id), Some(old)) = (pick(&ids, i), generation.checked_sub(1)) {
                            let before = tasks::get(c, id)?.map(|t| t.state);
                            lifecycle::finish(c, id, &node(old), fail(), POLICY)?;
                            let after = tasks::get(c, id)?.map(|t| t.state);
                            assert_eq!(before, after, "a node whose lease ran out ended a task");
                        }
                    }
                }
                // Every change was announced: the event position moved past every change.
                let position = c.position()?;
                let mut changed = false;
                for (n, id) in ids.iter().enumerate() {
                    let (before, progress) = seen[n];
                    let Some(now) = tasks::get(c, *id)? else {
                        // Only a final task expires, and it leaves a tombstone (which a later
                        // expiry with no retention at all clears).
                        assert!(before.is_final(), "a {before:?} task vanished after {op:?}");
                        if vanished.insert(*id) {
                            assert_eq!(
                                crate::store::tombstones::tombstone(c, *id)?,
                                Some(user.id),
                                "no tombstone"
                            );
                        }
                        continue;
                    };
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
                if let Some(task) = tasks::get(c, *id)? {
                    assert!(task.state.is_final(), "{:?} left in {:?}", id, task.state);
                }
            }
            Ok(())
        })
        .unwrap();
}
