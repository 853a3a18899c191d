//! The child worker process: conversions run outside the server, so a hostile file that
//! crashes or hangs GDAL takes down only its worker. The parent talks to it over stdin/stdout
//! in JSON lines.
//!
//! Parent → child: a [`Job`] line, then optionally `cancel`; after the job's final report,
//! the next job line. Closing stdin cancels the running job and ends the process.
//! Child → parent: per job, `Taken` once the job is read, then [`Report`] lines ending with
//! `Done`, `Failed` or `Cancelled`.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{ConvertError, GeoRaster, Phase};

pub use crate::domain::job::{Job, JobKind, Report};

/// Entry point of `rastercast worker`. Returns the process exit code.
pub fn main() -> i32 {
    // A crash ends the worker at once with its signal, which the server reports as the task's
    // failure. Rust's own SIGSEGV handler (there to name stack overflows) lets a SIGSEGV that
    // is not a guard-page fault, such as one sent from outside, pass once.
    // SAFETY: setting a default disposition before any other thread exists.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let (jobs_tx, jobs) = std::sync::mpsc::channel::<String>();
    let watcher = cancel.clone();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.trim() == "cancel" => watcher.store(true, Ordering::Relaxed),
                Ok(_) => {
                    // Reset here, in the thread that reads, so a cancel sent right after this
                    // job cannot be lost to a reset on the converting thread.
                    watcher.store(false, Ordering::Relaxed);
                    if jobs_tx.send(line.clone()).is_err() {
                        break;
                    }
                }
            }
        }
        // The parent went away: stop whatever runs.
        watcher.store(true, Ordering::Relaxed);
    });

    let mut hardened = false;
    for line in jobs {
        let job: Job = match serde_json::from_str(&line) {
            Ok(job) => job,
            Err(e) => {
                emit(&Report::Failed {
                    error: format!("bad job: {e}"),
                    transient: false,
                });
                return 2;
            }
        };
        emit(&Report::Taken);
        if !hardened {
            super::hardening::apply(job.cache_mb);
            hardened = true;
        }
        emit(&run(&job, &cancel));
    }
    0
}

fn run(job: &Job, cancel: &AtomicBool) -> Report {
    if let (JobKind::Point, Some([lon, lat])) = (job.kind, job.point) {
        return match super::facts::point(&job.input, lon, lat) {
            Ok(values) => Report::Values { values },
            Err(e) => Report::Failed {
                error: e.to_string(),
                transient: false,
            },
        };
    }
    if job.kind == JobKind::Facts {
        return match super::facts::read(&job.input) {
            Ok(facts) => Report::Facts {
                facts: Box::new(facts),
            },
            Err(e) => Report::Failed {
                error: e.to_string(),
                transient: false,
            },
        };
    }
    if let (JobKind::Tile, Some(tile)) = (job.kind, &job.tile) {
        use base64::Engine;
        return match super::tiles::render(&job.input, tile) {
            Ok(image) => Report::Rendered {
                image: base64::engine::general_purpose::STANDARD.encode(image),
            },
            Err(e) => Report::Failed {
                error: e.to_string(),
                transient: false,
            },
        };
    }
    if job.kind == JobKind::CheckCrs {
        return match check_crs(job.conversion.target_crs.as_deref().unwrap_or("")) {
            Ok(described) => Report::Done {
                result: Box::new(described),
            },
            Err(error) => Report::Failed {
                error,
                transient: false,
            },
        };
    }
    if job.kind == JobKind::Inspect {
        return match super::inspect(&job.input, &job.limits) {
            Ok(described) => Report::Done {
                result: Box::new(described),
            },
            Err(e) => Report::Failed {
                transient: matches!(e, ConvertError::OutOfSpace(_)),
                error: e.to_string(),
            },
        };
    }
    let mut last = (-1.0f64, Phase::Opening);
    let result = super::convert(
        &job.input,
        &job.output,
        &job.conversion,
        &job.limits,
        cancel,
        &mut |percent, phase| {
            if percent - last.0 >= 0.1 || phase != last.1 {
                last = (percent, phase);
                emit(&Report::Progress { percent, phase });
            }
        },
    );
    match result {
        Ok(described) => match sync(&job.output) {
            Ok(()) => Report::Done {
                result: Box::new(described),
            },
            // The output could not be written: the disk's doing, not the file's.
            Err(e) => Report::Failed {
                error: format!("The output could not be written to disk: {e}"),
                transient: true,
            },
        },
        Err(ConvertError::Cancelled) => Report::Cancelled,
        Err(ConvertError::Failed(error)) => Report::Failed {
            error,
            transient: false,
        },
        Err(ConvertError::OutOfSpace(error)) => Report::Failed {
            error,
            transient: true,
        },
    }
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

/// Looks a normalised `AUTHORITY:CODE` up in GDAL (PROJ's database); runs in a worker. (Its
/// test is the worker program's: see there why not the library's.)
pub fn check_crs(normal: &str) -> Result<GeoRaster, String> {
    let unknown = || format!("target_crs {normal} is not a coordinate reference system GDAL knows");
    super::options::normalise_crs(normal).map_err(|_| unknown())?;
    let srs = gdal::spatial_ref::SpatialRef::from_definition(normal).map_err(|_| unknown())?;
    Ok(GeoRaster {
        crs: Some(normal.to_string()),
        crs_wkt: srs.to_wkt().ok(),
        ..Default::default()
    })
}
