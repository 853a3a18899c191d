//! The conversion engine: open an untrusted raster safely, translate it to a
//! Cloud-Optimized GeoTIFF with GDAL's COG driver, and verify and describe the result.
//!
//! The same engine runs in the server's child workers (`worker`) and in `rastercast convert`.

mod describe;
mod facts;
pub mod hardening;
mod source;
pub use source::is_raster_name;
mod tiles;
mod translate;
pub mod worker;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

pub use crate::domain::geo::{BandInfo, GeoRaster};
pub use crate::domain::job::{ConvertError, Limits, Phase};
pub use crate::domain::options::{self, Conversion, RequestedOptions};

pub type Progress<'a> = &'a mut dyn FnMut(f64, Phase);

/// Converts `input` to a COG at `output`. Progress is reported from 0 to 95; the rest
/// belongs to whoever publishes the file. On any error `output` does not exist.
pub fn convert(
    input: &Path,
    output: &Path,
    conversion: &Conversion,
    limits: &Limits,
    cancel: &AtomicBool,
    progress: Progress,
) -> Result<GeoRaster, ConvertError> {
    let started = Instant::now();
    let result = (|| {
        progress(0.0, Phase::Opening);
        let source = source::open(input, conversion, limits)?;
        progress(2.0, Phase::Opening);
        translate::to_cog(
            &source,
            output,
            conversion,
            limits,
            cancel,
            &mut |p, phase| progress(2.0 + p * 0.9, phase),
        )?;
        progress(92.0, Phase::Verifying);
        let mut described = describe::verify_cog(output)?;
        described.duration_s = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        described.warnings = source.warnings;
        progress(95.0, Phase::Verifying);
        Ok(described)
    })();
    if result.is_err() {
        remove_with_side_files(output);
    }
    result.map_err(|e| hide_paths(e, &[input, output]))
}

/// Describes an uploaded source without converting it: opened exactly as a conversion would
/// open it, so a hostile file is refused here too.
pub fn inspect(input: &Path, limits: &Limits) -> Result<GeoRaster, ConvertError> {
    let source =
        source::open(input, &Conversion::default(), limits).map_err(|e| hide_paths(e, &[input]))?;
    let layout = gdal::Metadata::metadata_item(&source.dataset, "LAYOUT", "IMAGE_STRUCTURE")
        .unwrap_or_default();
    let mut described = describe::describe(&source.dataset, input, layout)?;
    described.warnings = source.warnings;
    Ok(described)
}

/// Removes `path` and the side files GDAL's COG driver makes next to it
/// (`<name>.ovr.tmp`, `<name>.warped.tif.tmp`), which a failed or killed run leaves behind.
pub fn remove_with_side_files(path: &Path) {
    let _ = std::fs::remove_file(path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!("{}.", name.to_string_lossy());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// GDAL names files in its messages; the user should never see the server's paths.
fn hide_paths(error: ConvertError, paths: &[&Path]) -> ConvertError {
    match error {
        ConvertError::Failed(mut msg) => {
            for path in paths {
                if let Some(p) = path.to_str().filter(|p| !p.is_empty()) {
                    msg = msg.replace(p, "the file");
                }
            }
            ConvertError::Failed(msg)
        }
        other => other,
    }
}

/// GDAL's last error message, made into a sentence.
fn last_gdal_error(context: &str) -> ConvertError {
    // SAFETY: CPLGetLastErrorMsg returns a pointer to a thread-local, NUL-terminated
    // buffer that stays valid until the next GDAL call on this thread; we copy it at once.
    let msg = unsafe {
        let ptr = gdal_sys::CPLGetLastErrorMsg();
        if ptr.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned()
        }
    };
    let msg = msg.trim();
    if msg.is_empty() {
        ConvertError::Failed(format!("{context}."))
    } else {
        ConvertError::Failed(format!("{context}: {msg}"))
    }
}
