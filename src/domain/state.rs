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

/// A change of state that the machine allows. The store's writes of a task's state take one,
/// and the only way to make one is [`Transition::new`], so an illegal transition is an error
/// before any SQL runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    from: TaskState,
    to: TaskState,
}

#[derive(Debug, thiserror::Error)]
#[error("a task in {} cannot become {}", .0.as_str(), .1.as_str())]
pub struct IllegalTransition(pub TaskState, pub TaskState);

impl Transition {
    pub fn new(from: TaskState, to: TaskState) -> Result<Transition, IllegalTransition> {
        if from.can_become(to) {
            Ok(Transition { from, to })
        } else {
            Err(IllegalTransition(from, to))
        }
    }

    pub fn from(self) -> TaskState {
        self.from
    }

    pub fn to(self) -> TaskState {
        self.to
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

    #[test]
    fn only_allowed_transitions_can_be_made() {
        for from in TaskState::ALL {
            for to in TaskState::ALL {
                let made = super::Transition::new(from, to);
                assert_eq!(made.is_ok(), from.can_become(to), "{from:?} -> {to:?}");
            }
        }
    }
}
