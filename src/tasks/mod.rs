//! Conversion tasks: the state machine, the FIFO queue over a bounded worker pool, and the
//! child processes that do the work.

mod child;
mod queue;
mod state;

use serde::Serialize;
use uuid::Uuid;

pub use child::{ChildLimits, Outcome};
pub use queue::{Queue, Workers};
pub use state::TaskState;

use crate::bus::{Bus, EventKind, TaskEvent};
use crate::store::TaskRecord;

/// A task's status exactly as every API channel shows it.
#[derive(Debug, Serialize)]
pub struct TaskStatus<'a> {
    pub task_id: Uuid,
    pub state: TaskState,
    pub progress: f64,
    pub status: &'a str,
    pub result: Option<&'a serde_json::Value>,
    pub error: Option<&'a str>,
    pub tree_item_id: Uuid,
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

/// Publishes a task's current status on the bus.
pub fn announce(bus: &Bus, task: &TaskRecord, kind: EventKind) {
    bus.publish(TaskEvent {
        task_id: task.id,
        user_id: task.user_id,
        kind,
        status: status_json(task),
    });
}
