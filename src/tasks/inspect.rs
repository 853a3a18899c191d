//! Describing an upload (size, bands, CRS, bounds) in a short-lived child worker, so the file
//! tree can show geo metadata before any conversion, and a hostile file still cannot hurt the
//! server.

use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::child::{self, ChildLimits, Outcome};
use crate::convert::worker::Job;
use crate::convert::{GeoRaster, Limits};

/// Opening reads headers only; a file that takes longer is not worth waiting for.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Inspector {
    pub child: ChildLimits,
    pub limits: Limits,
    pub cache_mb: usize,
    /// At most this many inspections at once (the worker pool's size): uploads beyond it are
    /// stored without a description rather than spawning unbounded processes.
    pub slots: Arc<Semaphore>,
}

impl Inspector {
    /// The file's description, or `None` when it is not a raster this server accepts.
    pub async fn describe(&self, path: &Path) -> Option<GeoRaster> {
        let _slot = self.slots.try_acquire().ok()?;
        let job = Job {
            inspect_only: true,
            input: path.to_path_buf(),
            output: path.to_path_buf(),
            conversion: Default::default(),
            limits: self.limits.clone(),
            cache_mb: self.cache_mb,
        };
        let limits = ChildLimits {
            timeout: INSPECT_TIMEOUT,
            ..self.child.clone()
        };
        match child::run(&job, &limits, &CancellationToken::new(), |_, _| {}).await {
            Outcome::Done(described) => Some(*described),
            Outcome::Failed(reason) => {
                tracing::debug!(%reason, "upload is not a raster we describe");
                None
            }
            Outcome::Stopped => None,
        }
    }
}
