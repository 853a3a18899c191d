//! A task as it is stored, and as every API channel shows it.

use serde::Serialize;
use uuid::Uuid;

use super::options::Conversion;
use super::state::TaskState;

#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub seq: i64,
    pub id: Uuid,
    pub user_id: Uuid,
    pub source_id: Uuid,
    pub source_blob: String,
    pub source_name: String,
    /// Where the output goes: the source's folder when the task was created.
    pub parent_id: Option<Uuid>,
    pub options: Conversion,
    pub state: TaskState,
    pub progress: f64,
    pub status: String,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub attempts: u32,
    pub cancel_requested: bool,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// 1-based place in the queue, for PENDING tasks.
    pub queue_position: Option<i64>,
    /// When a task queued again after a transient failure may start (RFC 3339).
    pub next_attempt_at: Option<String>,
    /// Why the last attempt failed, kept when the task is queued again or fails.
    pub last_error: Option<String>,
    /// The task this one was made from by `POST /tasks/{id}/retry`.
    pub retry_of: Option<Uuid>,
}

pub struct NewTask {
    pub user_id: Uuid,
    pub source_id: Uuid,
    pub source_blob: String,
    pub source_name: String,
    pub parent_id: Option<Uuid>,
    pub options: Conversion,
    pub retry_of: Option<Uuid>,
    /// Where this task's own webhook deliveries go (`callback_url`, OGC subscribers).
    pub callbacks: Vec<super::webhook::Callback>,
}

#[cfg(test)]
impl NewTask {
    /// A task of `user` on `source` (a file no test reads), for the store's tests.
    pub fn of(user: Uuid, source: Uuid) -> Self {
        NewTask {
            user_id: user,
            source_id: source,
            source_blob: "0".repeat(32),
            source_name: "src.tif".into(),
            parent_id: None,
            options: Default::default(),
            retry_of: None,
            callbacks: vec![],
        }
    }
}

/// A task's status exactly as every API channel shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskStatus<'a> {
    pub task_id: Uuid,
    pub state: TaskState,
    pub progress: f64,
    pub status: &'a str,
    /// On SUCCESS: the output's `tree_item_id` and its geo-raster description.
    #[schema(value_type = Option<TaskResult>)]
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
    /// While PENDING after a transient failure: when the next attempt may start.
    pub next_attempt_at: Option<&'a str>,
    /// Why the last attempt failed (also while the task waits to be retried).
    pub last_error: Option<&'a str>,
    /// The task this one retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<Uuid>,
    pub options: &'a Conversion,
}

/// A SUCCESS task's `result`, as the document describes it; the stored JSON is written by the
/// conversion (`tasks::lifecycle`), so this type only names its shape for the document.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct TaskResult {
    /// The output COG's tree item.
    tree_item_id: Uuid,
    #[serde(flatten)]
    raster: super::geo::GeoRaster,
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
            next_attempt_at: t.next_attempt_at.as_deref(),
            last_error: t.last_error.as_deref(),
            retry_of: t.retry_of,
            options: &t.options,
        }
    }
}

pub fn status_json(task: &TaskRecord) -> serde_json::Value {
    serde_json::to_value(TaskStatus::from(task)).expect("status serialises")
}
