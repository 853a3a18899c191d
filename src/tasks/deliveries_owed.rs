//! A task change and the webhook deliveries it owes are one transaction: when writing a
//! delivery fails (a trigger refuses the insert), the change is not committed either, on
//! SQLite and on PostgreSQL; once deliveries can be written again, the same change commits
//! with them.

use uuid::Uuid;

use super::lifecycle::{self, Ending, Policy, Submitted};
use crate::domain::job::Failure;
use crate::domain::{NewTask, TaskState};
use crate::store::db::Dialect;
use crate::store::testing::stores;
use crate::store::webhooks::{self, NewEndpoint};
use crate::store::{tasks as rows, users, Db};

const REFUSE_SQLITE: &str = "CREATE TRIGGER refuse BEFORE INSERT ON webhook_deliveries
    BEGIN SELECT RAISE(ABORT, 'deliveries refused'); END;";
const REFUSE_POSTGRES: &str = "CREATE FUNCTION refuse() RETURNS trigger AS
    $$ BEGIN RAISE EXCEPTION 'deliveries refused'; END $$ LANGUAGE plpgsql;
    CREATE TRIGGER refuse BEFORE INSERT ON webhook_deliveries FOR EACH ROW EXECUTE FUNCTION refuse();";
const ALLOW_SQLITE: &str = "DROP TRIGGER refuse;";
const ALLOW_POSTGRES: &str = "DROP TRIGGER refuse ON webhook_deliveries; DROP FUNCTION refuse();";

fn refuse(db: &mut Db, on: bool) -> anyhow::Result<()> {
    let sql = match (db.dialect(), on) {
        (Dialect::Sqlite, true) => REFUSE_SQLITE,
        (Dialect::Sqlite, false) => ALLOW_SQLITE,
        (Dialect::Postgres, true) => REFUSE_POSTGRES,
        (Dialect::Postgres, false) => ALLOW_POSTGRES,
    };
    db.execute_batch(sql)
}

fn owed(db: &mut Db, task: Uuid, kind: &str) -> anyhow::Result<i64> {
    db.query_one(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE task_id = ?1 AND event_type = ?2",
        crate::store::db::vals![task, kind],
    )?
    .int(0)
}

#[test]
fn a_change_whose_deliveries_cannot_be_written_is_not_committed() {
    let policy = Policy {
        max_attempts: 1,
        backoff: std::time::Duration::ZERO,
    };
    for test in stores() {
        let store = &test.store;
        let engine = test.engine;
        let task = store
            .blocking(|db| {
                let user = users::ensure_user(db, "hooked")?;
                let events = ["task.started", "task.progress", "task.failed"];
                let endpoint = NewEndpoint {
                    user_id: user.id,
                    url: "http://127.0.0.1:9/hook".into(),
                    events: events.iter().map(|e| e.to_string()).collect(),
                    description: String::new(),
                    secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                };
                webhooks::create_endpoint(db, endpoint, 10)?;
                let new = NewTask::of(user.id, Uuid::new_v4());
                match lifecycle::submit(db, new, 10, None)? {
                    Submitted::Queued(task) => Ok(task.id),
                    _ => unreachable!("a new user has room"),
                }
            })
            .unwrap();
        let state = |store: &crate::store::Store| {
            store
                .blocking(|db| Ok(rows::get(db, task)?.expect("kept").state))
                .unwrap()
        };

        // Each change, refused with its deliveries, then made with them.
        type Change = Box<dyn Fn(&mut Db) -> anyhow::Result<()>>;
        let changes: [(&str, TaskState, Change); 3] = [
            (
                "task.started",
                TaskState::Progress,
                Box::new(|db| lifecycle::claim(db, "node/1", 60_000).map(drop)),
            ),
            (
                "task.progress",
                TaskState::Progress,
                Box::new(move |db| {
                    lifecycle::progress(db, task, "node/1", 50.0, "Halfway").map(drop)
                }),
            ),
            (
                "task.failed",
                TaskState::Failure,
                Box::new(move |db| {
                    let failed = Ending::Failed(Failure::permanent("broken"));
                    lifecycle::finish(db, task, "node/1", failed, policy).map(drop)
                }),
            ),
        ];
        let mut before = TaskState::Pending;
        for (kind, after, change) in changes {
            store.blocking(|db| refuse(db, true)).unwrap();
            assert!(store.blocking(|db| change(db)).is_err(), "{engine}: {kind}");
            assert_eq!(state(store), before, "{engine}: {kind} committed alone");
            if kind == "task.progress" {
                let progress = store
                    .blocking(|db| Ok(rows::get(db, task)?.expect("kept").progress))
                    .unwrap();
                assert_eq!(progress, 0.0, "{engine}: progress committed alone");
            }
            store.blocking(|db| refuse(db, false)).unwrap();
            store.blocking(|db| change(db)).unwrap();
            assert_eq!(state(store), after, "{engine}: {kind}");
            assert_eq!(
                store.blocking(|db| owed(db, task, kind)).unwrap(),
                1,
                "{engine}: {kind}"
            );
            before = after;
        }
    }
}
