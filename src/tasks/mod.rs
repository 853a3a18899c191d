//! The task service, the only writer of task state: submit, claim, progress, finish, cancel,
//! reap and recover, each one store call (see [`lifecycle`]) whose change is committed and
//! announced through one path. Below it: the queue over a bounded worker pool, and the child
//! processes that do the work.

pub mod child;
mod inspect;
pub mod lifecycle;
mod queue;
#[cfg(test)]
mod state_props;

use std::sync::Arc;

use uuid::Uuid;

pub use crate::domain::{TaskState, TaskStatus};
pub use child::{worker_exe, ChildLimits, Outcome, WarmPool};
pub use inspect::Inspector;
pub use lifecycle::{Ending, Heartbeat, Published};
pub use queue::{Queue, Workers};

use crate::domain::{NewTask, TaskRecord};
use crate::error::{AppError, AppResult};
use crate::store::items::NewItem;
use crate::store::Store;
use lifecycle::{Cancelled, Forgotten, Submitted};

pub fn status_json(task: &TaskRecord) -> serde_json::Value {
    crate::domain::task::status_json(task)
}

/// The task service: cheap to clone, shared by handlers and workers.
#[derive(Clone)]
pub struct Tasks {
    store: Store,
    queue: Queue,
    /// Runs of one task, after which a task cut off by a crash or a lost node fails.
    max_attempts: u32,
}

impl Tasks {
    pub fn new(store: Store, queue: Queue, max_attempts: u32) -> Tasks {
        Tasks {
            store,
            queue,
            max_attempts,
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
    pub async fn submit(&self, new: NewTask, limit: u64) -> AppResult<TaskRecord> {
        match self
            .run(move |db| lifecycle::submit(db, new, limit))
            .await?
        {
            Submitted::Queued(task) => {
                self.queue.wake();
                Ok(*task)
            }
            Submitted::Busy { active } => Err(crate::limits::too_many_tasks(active, limit)),
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

    pub async fn finish(
        &self,
        id: Uuid,
        owner: Arc<str>,
        ending: Ending,
    ) -> anyhow::Result<Option<TaskRecord>> {
        self.run(move |db| lifecycle::finish(db, id, &owner, ending))
            .await
    }

    pub async fn succeed(
        &self,
        task: TaskRecord,
        owner: Arc<str>,
        output: NewItem,
        result: serde_json::Value,
    ) -> anyhow::Result<Published> {
        self.run(move |db| lifecycle::succeed(db, &task, &owner, output, result))
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
            Cancelled::NotFound => Err(AppError::NotFound("task")),
        }
    }

    /// Takes back tasks whose lease ran out; wakes workers for those queued again.
    pub async fn reap(&self) -> anyhow::Result<Vec<Uuid>> {
        let max_attempts = self.max_attempts;
        let reaped = self
            .run(move |db| lifecycle::reap(db, 0, max_attempts))
            .await?;
        if !reaped.is_empty() {
            self.queue.wake();
        }
        Ok(reaped)
    }

    /// At start-up alone on the database: every running task was cut off by a crash.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        let max_attempts = self.max_attempts;
        self.run(move |db| lifecycle::recover(db, max_attempts))
            .await
    }

    /// On a shutdown whose workers did not stop in time: their tasks go back to the queue.
    pub async fn requeue_node(&self, node: Arc<str>) -> anyhow::Result<usize> {
        self.run(move |db| lifecycle::requeue_node(db, &node)).await
    }

    /// Forgets one of `user`'s finished tasks.
    pub async fn forget(&self, user: Uuid, id: Uuid) -> AppResult<()> {
        match self.run(move |db| lifecycle::forget(db, user, id)).await? {
            Forgotten::Deleted => Ok(()),
            Forgotten::Running => Err(AppError::Conflict(
                "The task is still queued or running; cancel it first.".into(),
            )),
            Forgotten::NotFound => Err(AppError::NotFound("task")),
        }
    }
}
