//! The task service, the only writer of task state: submit, claim, progress, finish (with
//! retries of transient failures), cancel, retry, reap, recover and expire, each one store
//! call (see [`lifecycle`]) whose change is committed and announced through one path. Below it: the queue over a bounded worker pool, and the child
//! processes that do the work.

mod bulk;
pub mod child;
#[cfg(test)]
mod deliveries_owed;
mod inspect;
pub mod lifecycle;
mod queue;
#[cfg(test)]
mod queue_order;
mod render;
mod retention;
#[cfg(test)]
mod state_props;

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

pub use crate::domain::{TaskState, TaskStatus};
pub use child::{worker_exe, ChildLimits, Outcome, WarmPool};
pub use inspect::Inspector;
pub use lifecycle::{Ending, Heartbeat, Policy, Published};
pub use queue::{Queue, Workers};
pub use render::{NotDrawn, Renderer, TileKey};

use crate::bus::Bus;
use crate::domain::options::Conversion;
use crate::domain::{NewTask, TaskRecord};
use crate::error::{AppError, AppResult};
use crate::store::idempotency::Keyed;
use crate::store::items::NewItem;
use crate::store::tasks::Filter;
use crate::store::Store;
use lifecycle::{Cancelled, Forgotten, Retried, Submitted};

pub fn status_json(task: &TaskRecord) -> serde_json::Value {
    crate::domain::task::status_json(task)
}

/// The task service: cheap to clone, shared by handlers and workers.
#[derive(Clone)]
pub struct Tasks {
    store: Store,
    queue: Queue,
    /// Drops the latest status of tasks that are forgotten or expire.
    bus: Bus,
    /// How failed runs are retried.
    policy: Policy,
    /// How long a finished task is kept (`--task-retention-secs`).
    retention: Duration,
}

impl Tasks {
    pub fn new(store: Store, queue: Queue, bus: Bus, policy: Policy, retention: Duration) -> Tasks {
        Tasks {
            store,
            queue,
            bus,
            policy,
            retention,
        }
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Runs one lifecycle operation on the store.
    async fn run<R, F>(&self, op: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut crate::store::Db) -> anyhow::Result<R> + Send + 'static,
    {
        self.store.call(op).await
    }

    /// Queues a conversion and wakes a worker; 429 when the user has `limit` active tasks.
    /// With a key, a request sent again answers the id of the task it made the first time
    /// (422 when the key was used for another request).
    pub async fn submit(&self, new: NewTask, limit: u64, keyed: Option<Keyed>) -> AppResult<Uuid> {
        match self
            .run(move |db| lifecycle::submit(db, new, limit, keyed.as_ref()))
            .await?
        {
            Submitted::Queued(task) => {
                self.queue.wake();
                Ok(task.id)
            }
            Submitted::Replayed(id) => Ok(id),
            Submitted::Busy { active } => Err(crate::limits::too_many_tasks(active, limit)),
            Submitted::KeyReused => Err(key_reused()),
        }
    }

    pub async fn claim(
        &self,
        owner: Arc<str>,
        lease_ms: i64,
    ) -> anyhow::Result<Option<TaskRecord>> {
        self.run(move |db| lifecycle::claim(db, &owner, lease_ms))
            .await
    }

    pub async fn heartbeat(
        &self,
        id: Uuid,
        owner: Arc<str>,
        lease_ms: i64,
    ) -> anyhow::Result<Heartbeat> {
        self.run(move |db| lifecycle::heartbeat(db, id, &owner, lease_ms))
            .await
    }

    pub async fn progress(
        &self,
        id: Uuid,
        owner: Arc<str>,
        percent: f64,
        sentence: &'static str,
    ) -> anyhow::Result<Option<TaskRecord>> {
        self.run(move |db| lifecycle::progress(db, id, &owner, percent, sentence))
            .await
    }

    /// Ends a run; a transient failure with attempts left goes back to the queue after a
    /// backoff, and a worker is woken when it is due.
    pub async fn finish(
        &self,
        id: Uuid,
        owner: Arc<str>,
        ending: Ending,
    ) -> anyhow::Result<Option<TaskRecord>> {
        let policy = self.policy;
        let task = self
            .run(move |db| lifecycle::finish(db, id, &owner, ending, policy))
            .await?;
        self.wake_when_due(task.as_ref());
        Ok(task)
    }

    /// A task queued again after a backoff needs a worker then, not on the next wake-up.
    fn wake_when_due(&self, task: Option<&TaskRecord>) {
        let Some(at) = task.and_then(|t| t.next_attempt_at.as_deref()) else {
            return;
        };
        let Ok(at) = chrono::DateTime::parse_from_rfc3339(at) else {
            return;
        };
        let wait = (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        let queue = self.queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            queue.wake();
        });
    }

    /// [`lifecycle::succeed`]; with `then` (the next claim's owner and lease), also claims the
    /// worker's next task.
    pub async fn succeed(
        &self,
        task: TaskRecord,
        owner: Arc<str>,
        output: NewItem,
        result: serde_json::Value,
        then: Option<(Arc<str>, i64)>,
    ) -> anyhow::Result<(Published, Option<TaskRecord>)> {
        self.run(move |db| {
            let then = then.as_ref().map(|(owner, lease_ms)| lifecycle::Then {
                owner,
                lease_ms: *lease_ms,
            });
            lifecycle::succeed(db, &task, &owner, output, result, then)
        })
        .await
    }

    /// Cancels one of `user`'s tasks: a queued one is REVOKED at once, a running one shows
    /// "Cancelling…" until its worker (on whichever node) has stopped. Final tasks are a
    /// conflict.
    pub async fn cancel(&self, user: Uuid, id: Uuid) -> AppResult<TaskRecord> {
        match self.run(move |db| lifecycle::cancel(db, user, id)).await? {
            Cancelled::Revoked(task) => Ok(task),
            Cancelled::Requested(task) => {
                self.queue.cancel_running(id);
                Ok(task)
            }
            Cancelled::AlreadyFinished(state) => Err(AppError::Conflict(format!(
                "The task has already finished ({}).",
                state.as_str()
            ))),
            Cancelled::Expired => Err(self.gone()),
            Cancelled::NotFound => Err(AppError::NotFound("task")),
        }
    }

    /// Cancels every queued or running task of `user`'s that `filter` takes.
    pub async fn cancel_matching(&self, user: Uuid, filter: Filter) -> AppResult<Vec<Uuid>> {
        let cancelled = self
            .run(move |db| bulk::cancel_matching(db, user, &filter))
            .await?;
        for (id, running) in &cancelled {
            if *running {
                self.queue.cancel_running(*id);
            }
        }
        Ok(cancelled.into_iter().map(|(id, _)| id).collect())
    }

    /// Forgets every finished task of `user`'s that `filter` takes.
    pub async fn forget_matching(&self, user: Uuid, filter: Filter) -> AppResult<Vec<Uuid>> {
        let deleted = self
            .run(move |db| bulk::forget_matching(db, user, &filter))
            .await?;
        for id in &deleted {
            self.bus.forget(*id);
        }
        Ok(deleted)
    }

    /// Queues a new task from `user`'s failed or revoked task `id`, with `options` and
    /// `callbacks` or the old task's.
    pub async fn retry(
        &self,
        user: Uuid,
        id: Uuid,
        options: Option<Conversion>,
        callbacks: Option<Vec<crate::domain::webhook::Callback>>,
        limit: u64,
    ) -> AppResult<TaskRecord> {
        match self
            .run(move |db| lifecycle::retry(db, user, id, options, callbacks, limit))
            .await?
        {
            Retried::Queued(task) => {
                self.queue.wake();
                Ok(*task)
            }
            Retried::Busy { active } => Err(crate::limits::too_many_tasks(active, limit)),
            Retried::NotRetriable(state) => Err(AppError::Conflict(format!(
                "Only a FAILURE or REVOKED task can be retried; this one is {}.",
                state.as_str()
            ))),
            Retried::SourceGone => Err(AppError::Unprocessable(
                "The file this task converted has been deleted; upload it again.".into(),
            )),
            Retried::Expired => Err(self.gone()),
            Retried::NotFound => Err(AppError::NotFound("task")),
        }
    }

    /// Whether `id` is a task that expired; `Some(owner)` then.
    pub async fn expired_owner(&self, id: Uuid) -> AppResult<Option<Uuid>> {
        Ok(self
            .run(move |db| crate::store::tombstones::tombstone(db, id))
            .await?)
    }

    pub fn gone(&self) -> AppError {
        AppError::Gone(self.retention.as_secs())
    }

    /// Takes back tasks whose lease ran out; wakes workers for those queued again.
    pub async fn reap(&self) -> anyhow::Result<Vec<Uuid>> {
        let policy = self.policy;
        let reaped = self.run(move |db| lifecycle::reap(db, 0, policy)).await?;
        if !reaped.is_empty() {
            self.queue.wake();
        }
        Ok(reaped)
    }

    /// At start-up alone on the database: every running task was cut off by a crash.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        let policy = self.policy;
        self.run(move |db| lifecycle::recover(db, policy)).await
    }

    /// On a shutdown whose workers did not stop in time: their tasks go back to the queue.
    pub async fn requeue_node(&self, node: Arc<str>) -> anyhow::Result<usize> {
        let policy = self.policy;
        self.run(move |db| lifecycle::requeue_node(db, &node, policy))
            .await
    }

    /// Forgets one of `user`'s finished tasks.
    pub async fn forget(&self, user: Uuid, id: Uuid) -> AppResult<()> {
        match self.run(move |db| lifecycle::forget(db, user, id)).await? {
            Forgotten::Deleted => {
                self.bus.forget(id);
                Ok(())
            }
            Forgotten::Expired => Err(self.gone()),
            Forgotten::Running => Err(AppError::Conflict(
                "The task is still queued or running; cancel it first.".into(),
            )),
            Forgotten::NotFound => Err(AppError::NotFound("task")),
        }
    }
}

/// The answer to an `Idempotency-Key` sent again with another request.
pub fn key_reused() -> AppError {
    AppError::Unprocessable(
        "This Idempotency-Key was used for another request; use a new key for a new request."
            .into(),
    )
}
