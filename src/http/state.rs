//! The state every handler shares: one `Clone` handle with `Arc`s inside, built by `app`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use uuid::Uuid;

use super::auth::Tickets;
use crate::bus::Bus;
use crate::config::Config;
use crate::domain::TaskRecord;
use crate::error::{AppError, AppResult};
use crate::metrics::Metrics;
use crate::storage::Storage;
use crate::store::Store;
use crate::tasks::{Inspector, Tasks};

/// Shared by every handler. A clone is one reference count: axum clones the state for every
/// extractor and middleware of every request, and copying some twenty handles (each with
/// reference counts of its own) showed in the status path's profile. Every open event stream
/// and WebSocket also keeps a clone: copies of the handles, paths included, were 6.7 KiB of
/// each idle subscriber's memory.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    /// Limits and switches that handlers read.
    pub config: Arc<Config>,
    /// Users, tokens and tree items; task rows are read here and changed only through `tasks`.
    pub store: Store,
    /// The task service: every change of a task goes through it.
    pub tasks: Tasks,
    /// The bytes of files on disk.
    pub blobs: Storage,
    /// Task events for live channels.
    pub bus: Bus,
    /// The key that signs shareable links, cached from the database.
    pub link_key: super::links::LinkKey,
    /// Single-use tickets for browsers' EventSource and WebSocket.
    pub tickets: Tickets,
    /// Prometheus metrics, shared with the workers.
    pub metrics: Arc<Metrics>,
    /// Describes uploads in a child worker.
    pub inspector: Inspector,
    /// Draws map tiles in child workers of its own, and keeps the drawn ones.
    pub renderer: crate::tasks::Renderer,
    /// Open event streams per user, for `--max-streams-per-user`.
    pub streams: crate::limits::Streams,
    /// Requests per user, for `--max-requests-per-second-per-user`.
    pub rate: crate::limits::RequestRate,
    /// Sign-ins per address and per token, for `--max-sign-ins-per-minute`.
    pub sign_ins: crate::limits::SignInRate,
    /// Ends open streams whose token or session is revoked.
    pub revocations: crate::revocation::Revocations,
    /// Upgraded WebSockets, which shutdown waits for (the HTTP server no longer sees them).
    pub sockets: tokio_util::task::TaskTracker,
    /// The webhook dispatcher: woken when a test or a redelivery is queued; checks URLs.
    pub webhooks: crate::webhooks::Webhooks,
    /// Resumable uploads a request is writing to on this node.
    pub writing: super::resumable::Writing,
    /// Cancelled on SIGINT/SIGTERM, so handlers refuse new work while the server drains.
    pub shutdown: CancellationToken,
    /// Size of the worker pool, reported by `/healthz`.
    pub workers: usize,
}

impl AppState {
    /// Whether `caller` may see a task of `owner`'s: the task id is a capability, unless the
    /// server runs with `--private-task-status`, which shows a task to its owner alone.
    pub fn sees_task(&self, caller: Option<Uuid>, owner: Uuid) -> bool {
        !self.config.private_task_status || caller == Some(owner)
    }

    /// Refuses an anonymous caller where `--private-task-status` requires a token for `what`.
    pub fn status_caller(&self, caller: Option<Uuid>, what: &'static str) -> AppResult<()> {
        if self.config.private_task_status && caller.is_none() {
            return Err(AppError::Unauthorized(what));
        }
        Ok(())
    }

    /// The task `id`, if `caller` may see it; 404 otherwise, whether or not it exists, and
    /// 410 once its record has expired.
    pub async fn visible_task(&self, caller: Option<Uuid>, id: Uuid) -> AppResult<TaskRecord> {
        let task = self
            .store
            .call(move |c| crate::store::tasks::get(c, id))
            .await?;
        match task {
            Some(task) if self.sees_task(caller, task.user_id) => Ok(task),
            Some(_) => Err(AppError::NotFound("task")),
            None => match self.tasks.expired_owner(id).await? {
                Some(owner) if self.sees_task(caller, owner) => Err(self.tasks.gone()),
                _ => Err(AppError::NotFound("task")),
            },
        }
    }
}
