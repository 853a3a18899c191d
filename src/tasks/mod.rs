//! Conversion tasks: the state machine, the FIFO queue over a bounded worker pool, and the
//! child processes that do the work.

pub mod child;
mod inspect;
mod queue;
mod state;

use serde::Serialize;
use uuid::Uuid;

pub use child::{worker_exe, ChildLimits, Outcome, WarmPool};
pub use inspect::Inspector;
pub use queue::{Queue, Workers};
pub use state::TaskState;

use crate::bus::EventKind;
use crate::error::{AppError, AppResult};
use crate::store::tasks::{self as task_rows, CancelOutcome};
use crate::store::{Store, TaskRecord};

/// A task's status exactly as every API channel shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskStatus<'a> {
    pub task_id: Uuid,
    pub state: TaskState,
    pub progress: f64,
    pub status: &'a str,
    /// On SUCCESS: the output's `tree_item_id` and its geo-raster description.
    #[schema(value_type = Option<crate::convert::GeoRaster>)]
    pub result: Option<&'a serde_json::Value>,
    pub error: Option<&'a str>,
    pub tree_item_id: Uuid,
    /// The source's display name, so a list of tasks can be drawn without more requests.
    pub source_name: &'a str,
    pub created_at: &'a str,
    pub started_at: Option<&'a str>,
    pub finished_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i64>,
    pub attempts: u32,
    pub options: &'a crate::convert::Conversion,
}

impl<'a> From<&'a TaskRecord> for TaskStatus<'a> {
    fn from(t: &'a TaskRecord) -> Self {
        TaskStatus {
            task_id: t.id,
            state: t.state,
            progress: (t.progress * 10.0).round() / 10.0,
            status: &t.status,
            result: t.result.as_ref(),
            error: t.error.as_deref(),
            tree_item_id: t.source_id,
            source_name: &t.source_name,
            created_at: &t.created_at,
            started_at: t.started_at.as_deref(),
            finished_at: t.finished_at.as_deref(),
            queue_position: t.queue_position,
            attempts: t.attempts,
            options: &t.options,
        }
    }
}

pub fn status_json(task: &TaskRecord) -> serde_json::Value {
    serde_json::to_value(TaskStatus::from(task)).expect("status serialises")
}

/// Runs `apply` on one task and, if it changed the task, announces its new status, all in one
/// store call: event order is commit order. Returns the task as it now is.
pub async fn change<F>(
    store: &Store,
    id: Uuid,
    kind: EventKind,
    apply: F,
) -> anyhow::Result<Option<TaskRecord>>
where
    F: FnOnce(&mut crate::store::Db) -> anyhow::Result<bool> + Send + 'static,
{
    store
        .call(move |c| {
            let changed = apply(c)?;
            let task = task_rows::get(c, id)?;
            if let (true, Some(task)) = (changed, &task) {
                c.publish(task, kind)?;
            }
            Ok(task)
        })
        .await
}

/// Cancels one of `user`'s tasks: a queued one is REVOKED at once, a running one shows
/// "Cancelling…" until its worker (on whichever node) has stopped. Final tasks are a conflict.
pub async fn cancel(store: &Store, queue: &Queue, user: Uuid, id: Uuid) -> AppResult<TaskRecord> {
    let (outcome, task) = store
        .call(move |c| {
            let outcome = task_rows::request_cancel(c, user, id)?;
            let task = task_rows::get(c, id)?;
            if let (CancelOutcome::Revoked | CancelOutcome::Requested, Some(task)) =
                (&outcome, &task)
            {
                c.publish(task, EventKind::State)?;
            }
            Ok((outcome, task))
        })
        .await?;
    match (outcome, task) {
        (CancelOutcome::AlreadyFinished(s), _) => Err(AppError::Conflict(format!(
            "The task has already finished ({}).",
            s.as_str()
        ))),
        (CancelOutcome::Requested, Some(task)) => {
            queue.cancel_running(id);
            Ok(task)
        }
        (CancelOutcome::Revoked, Some(task)) => Ok(task),
        _ => Err(AppError::NotFound("task")),
    }
}
