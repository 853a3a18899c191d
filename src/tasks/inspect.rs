//! Describing an upload (size, bands, CRS, bounds) in a short-lived child worker, so the file
//! tree can show geo metadata before any conversion, and a hostile file still cannot hurt the
//! server.

use std::path::Path;
use std::time::Duration;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::child::{self, ChildLimits, Outcome};
use crate::domain::geo::GeoRaster;
use crate::domain::job::Limits;
use crate::domain::job::{Job, JobKind};

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
    /// Target CRSs a worker already confirmed, so a repeated one costs no round trip.
    pub known_crs: Arc<Mutex<HashSet<String>>>,
}

/// Confirmed CRSs kept; past it the set starts over.
const KNOWN_CRS_KEPT: usize = 1024;

impl Inspector {
    /// The file's description, or `None` when it is not a raster this server accepts.
    pub async fn describe(&self, path: &Path) -> Option<GeoRaster> {
        let _slot = self.slots.try_acquire().ok()?;
        let job = Job {
            kind: JobKind::Inspect,
            input: path.to_path_buf(),
            output: path.to_path_buf(),
            conversion: Default::default(),
            limits: self.limits.clone(),
            cache_mb: self.cache_mb,
            tile: None,
            point: None,
        };
        let limits = ChildLimits {
            timeout: INSPECT_TIMEOUT,
            ..self.child.clone()
        };
        match child::run(&job, &limits, &CancellationToken::new(), |_, _| {}).await {
            Outcome::Done(described) => Some(*described),
            Outcome::Failed(reason) => {
                tracing::debug!(reason = %reason.message, "upload is not a raster we describe");
                None
            }
            Outcome::Stopped | Outcome::Rendered(_) | Outcome::Facts(_) | Outcome::Values(_) => {
                None
            }
        }
    }

    /// Whether GDAL knows `crs` (a normalised `AUTHORITY:CODE`), asked of a worker because the
    /// server itself does not link GDAL. `Err` is a sentence for the client.
    pub async fn check_crs(&self, crs: &str) -> Result<(), String> {
        let known = (self.known_crs.lock())
            .unwrap_or_else(|p| p.into_inner())
            .contains(crs);
        if known {
            return Ok(());
        }
        let job = Job {
            kind: JobKind::CheckCrs,
            input: Default::default(),
            output: Default::default(),
            conversion: crate::domain::options::Conversion {
                target_crs: Some(crs.to_string()),
                ..Default::default()
            },
            limits: self.limits.clone(),
            cache_mb: self.cache_mb,
            tile: None,
            point: None,
        };
        let limits = ChildLimits {
            timeout: INSPECT_TIMEOUT,
            ..self.child.clone()
        };
        match child::run(&job, &limits, &CancellationToken::new(), |_, _| {}).await {
            Outcome::Done(_) => {
                let mut set = self.known_crs.lock().unwrap_or_else(|p| p.into_inner());
                if set.len() >= KNOWN_CRS_KEPT {
                    set.clear();
                }
                set.insert(crs.to_string());
                Ok(())
            }
            Outcome::Failed(reason) => Err(reason.message),
            Outcome::Stopped | Outcome::Rendered(_) | Outcome::Facts(_) | Outcome::Values(_) => {
                Err("The CRS check was interrupted; try again.".into())
            }
        }
    }
}
