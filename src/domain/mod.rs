//! The model every layer shares, with no I/O and no imports from the rest of the crate: task
//! states and their transitions, a task's record, status and events, conversion options,
//! raster descriptions, and the protocol spoken with child workers.

pub mod event;
pub mod facts;
pub mod geo;
pub mod job;
pub mod options;
pub mod state;
pub mod stats;
pub mod task;
pub mod tiles;
pub mod tus;
pub mod webhook;

pub use event::{Announce, Event, EventKind};
pub use state::{TaskState, Transition};
pub use task::{NewTask, TaskRecord, TaskStatus};
