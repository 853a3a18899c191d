//! The child worker process: one conversion per process, so a hostile file that crashes or
//! hangs GDAL takes down only itself. The parent talks to it over stdin/stdout in JSON lines.
//!
//! Parent → child: one [`Job`] line, then optionally `cancel`. Closing stdin also cancels.
//! Child → parent: [`Report`] lines, ending with `Done`, `Failed` or `Cancelled`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Conversion, ConvertError, GeoRaster, Limits, Phase};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Convert (the default), or only describe the input.
    #[serde(default)]
    pub inspect_only: bool,
    pub input: PathBuf,
    pub output: PathBuf,
    pub conversion: Conversion,
    pub limits: Limits,
    pub cache_mb: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    Progress { percent: f64, phase: Phase },
    Done { result: Box<GeoRaster> },
    Failed { error: String },
    Cancelled,
}

/// Entry point of `rastercast worker`. Returns the process exit code.
pub fn main() -> i32 {
    let stdin = std::io::stdin();
    let mut first = String::new();
    if stdin.lock().read_line(&mut first).is_err() {
        return 2;
    }
    let job: Job = match serde_json::from_str(&first) {
        Ok(job) => job,
        Err(e) => {
            emit(&Report::Failed {
                error: format!("bad job: {e}"),
            });
            return 2;
        }
    };
    super::hardening::apply(job.cache_mb);

    let cancel = Arc::new(AtomicBool::new(false));
    let watcher = cancel.clone();
    std::thread::spawn(move || {
        // Any line, or the parent going away (EOF), means stop.
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        watcher.store(true, Ordering::Relaxed);
    });

    if job.inspect_only {
        emit(&match super::inspect(&job.input, &job.limits) {
            Ok(described) => Report::Done {
                result: Box::new(described),
            },
            Err(e) => Report::Failed {
                error: e.to_string(),
            },
        });
        return 0;
    }
    let mut last = (-1.0f64, Phase::Opening);
    let result = super::convert(
        &job.input,
        &job.output,
        &job.conversion,
        &job.limits,
        &cancel,
        &mut |percent, phase| {
            if percent - last.0 >= 0.1 || phase != last.1 {
                last = (percent, phase);
                emit(&Report::Progress { percent, phase });
            }
        },
    );
    let report = match result {
        Ok(described) => match sync(&job.output) {
            Ok(()) => Report::Done {
                result: Box::new(described),
            },
            Err(e) => Report::Failed {
                error: format!("The output could not be written to disk: {e}"),
            },
        },
        Err(ConvertError::Cancelled) => Report::Cancelled,
        Err(ConvertError::Failed(error)) => Report::Failed { error },
    };
    emit(&report);
    0
}

/// The parent renames this file into place; it must be on disk before it becomes visible.
fn sync(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

fn emit(report: &Report) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, report);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}
