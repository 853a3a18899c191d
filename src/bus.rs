//! The broadcast bus of task events. Workers and request handlers publish each change of
//! a task's status; live channels subscribe.

use std::sync::Arc;

use tokio::sync::broadcast;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    State,
    Progress,
}

#[derive(Debug, Clone)]
pub struct TaskEvent {
    pub task_id: Uuid,
    pub user_id: Uuid,
    pub kind: EventKind,
    /// The task's full status as the API shows it.
    pub status: serde_json::Value,
}

#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<TaskEvent>>,
}

impl Bus {
    pub fn new(capacity: usize) -> Bus {
        Bus {
            tx: broadcast::channel(capacity).0,
        }
    }

    /// Never blocks: a subscriber that falls behind sees a lag, not a slower publisher.
    pub fn publish(&self, event: TaskEvent) {
        let _ = self.tx.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TaskEvent>> {
        self.tx.subscribe()
    }
}
