//! The worker job protocol: what the server asks of a child worker (a [`Job`] line on its
//! stdin) and what the child answers ([`Report`] lines on its stdout), with the limits and
//! phases both sides share.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::geo::GeoRaster;
use super::options::Conversion;

/// Resource limits on one conversion; a source over any of them fails before work starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limits {
    /// width × height × bands of the source. (A reprojected output is bounded by the task's
    /// time and memory limits instead.)
    pub max_pixels: u64,
    pub max_bands: usize,
    /// Largest member accepted inside a zip, so a zip bomb cannot expand past an upload.
    pub max_unzipped_bytes: u64,
    /// GDAL threads for this one job (`NUM_THREADS`).
    pub threads: usize,
    /// Free bytes the conversion must leave on the output's disk; 0 for no check.
    #[serde(default)]
    pub min_free_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 4_000_000_000,
            max_bands: 1024,
            max_unzipped_bytes: 8 << 30,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            min_free_bytes: 0,
        }
    }
}

/// Where a conversion is, for a progress bar and a status sentence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Phase {
    /// Copying the source from object storage to this node's scratch disk.
    Downloading,
    Opening,
    Converting,
    BuildingOverviews,
    Verifying,
    /// Copying the result to object storage, and verifying the copy.
    Uploading,
    Publishing,
}

impl Phase {
    /// Copying bytes to or from object storage.
    pub fn is_transfer(self) -> bool {
        matches!(self, Phase::Downloading | Phase::Uploading)
    }

    pub fn sentence(self) -> &'static str {
        match self {
            Phase::Downloading => "Downloading source",
            Phase::Opening => "Opening the source",
            Phase::Converting => "Converting",
            Phase::BuildingOverviews => "Building overviews",
            Phase::Verifying => "Verifying the COG",
            Phase::Uploading => "Uploading result",
            Phase::Publishing => "Publishing",
        }
    }
}

/// Why a conversion did not produce a COG. `Failed` carries a sentence for the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum ConvertError {
    #[error("{0}")]
    Failed(String),
    /// The disk filled up: the file is not at fault, and a later attempt may succeed.
    #[error("{0}")]
    OutOfSpace(String),
    #[error("the conversion was cancelled")]
    Cancelled,
}

/// What a job asks of the worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    #[default]
    Convert,
    /// Only describe the input.
    Inspect,
    /// Only check that `conversion.target_crs` is a CRS GDAL knows; `Done` carries its name
    /// and WKT in an otherwise empty description.
    CheckCrs,
    /// Draw map tile `tile` of the COG at `input`; answered by `Rendered`.
    Tile,
    /// Read what a STAC Item, `/info` and `/statistics` need of the COG at `input`; answered
    /// by `Facts`.
    Facts,
    /// Read every band's value at `point` (WGS 84 longitude, latitude); answered by `Values`.
    Point,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    #[serde(default)]
    pub kind: JobKind,
    pub input: PathBuf,
    pub output: PathBuf,
    pub conversion: Conversion,
    pub limits: Limits,
    pub cache_mb: usize,
    /// For `Tile`: which tile, drawn how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile: Option<super::tiles::TileJob>,
    /// For `Point`: longitude and latitude.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<[f64; 2]>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    /// The worker read the job and starts on it: a worker that ends before saying so never
    /// began it, so the job may go to another worker.
    Taken,
    Progress {
        percent: f64,
        phase: Phase,
    },
    Done {
        result: Box<GeoRaster>,
    },
    /// A tile's encoded image (Base64).
    Rendered {
        image: String,
    },
    Facts {
        facts: Box<super::facts::RasterFacts>,
    },
    /// Each band's value at a point; `None` where it has no data.
    Values {
        values: Vec<Option<f64>>,
    },
    Failed {
        error: String,
        /// The input is not at fault (the disk filled up): another attempt may succeed.
        #[serde(default)]
        transient: bool,
    },
    Cancelled,
}

/// Why a run failed, and whether another attempt may succeed: a transient failure is not the
/// file's or the options' fault (a worker killed from outside, a full disk, storage or the
/// database out of reach), so the task is queued again with a backoff.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: String,
    pub transient: bool,
}

impl Failure {
    pub fn permanent(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            transient: false,
        }
    }

    pub fn transient(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            transient: true,
        }
    }
}
