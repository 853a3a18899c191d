//! Task states, with Celery's names that existing clients compare against, and the only
//! transitions allowed between them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskState {
    Pending,
    Progress,
    Success,
    Failure,
    Revoked,
}

impl TaskState {
    pub const ALL: [TaskState; 5] = [
        TaskState::Pending,
        TaskState::Progress,
        TaskState::Success,
        TaskState::Failure,
        TaskState::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Progress => "PROGRESS",
            TaskState::Success => "SUCCESS",
            TaskState::Failure => "FAILURE",
            TaskState::Revoked => "REVOKED",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Success | TaskState::Failure | TaskState::Revoked
        )
    }

    /// The state machine. `Progress -> Pending` is a requeue after a shutdown or crash.
    pub fn can_become(self, next: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, next),
            (Pending, Progress)
                | (Pending, Revoked)
                | (Pending, Failure)
                | (Progress, Success)
                | (Progress, Failure)
                | (Progress, Revoked)
                | (Progress, Pending)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::TaskState::{self, *};

    #[test]
    fn final_states_never_change() {
        for from in [Success, Failure, Revoked] {
            for to in TaskState::ALL {
                assert!(!from.can_become(to), "{from:?} -> {to:?}");
            }
        }
        assert!(Pending.can_become(Revoked));
        assert!(!Pending.can_become(Success));
        assert_eq!(TaskState::parse("progress"), Some(Progress));
    }
}
