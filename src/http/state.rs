//! The state every handler shares: one `Clone` handle with `Arc`s inside, built by `app`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::auth::Tickets;
use crate::bus::Bus;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tasks::{Inspector, Tasks};
use crate::tree::Blobs;

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Limits and switches that handlers read.
    pub config: Arc<Config>,
    /// Users, tokens and tree items; task rows are read here and changed only through `tasks`.
    pub store: Store,
    /// The task service: every change of a task goes through it.
    pub tasks: Tasks,
    /// The bytes of files on disk.
    pub blobs: Blobs,
    /// Task events for live channels.
    pub bus: Bus,
    /// Single-use tickets for browsers' EventSource and WebSocket.
    pub tickets: Tickets,
    /// Prometheus metrics, shared with the workers.
    pub metrics: Arc<Metrics>,
    /// Describes uploads in a child worker.
    pub inspector: Inspector,
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
    /// Cancelled on SIGINT/SIGTERM, so handlers refuse new work while the server drains.
    pub shutdown: CancellationToken,
    /// Size of the worker pool, reported by `/healthz`.
    pub workers: usize,
}

