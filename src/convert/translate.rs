//! The translation itself: `GDALTranslate` to the COG driver, with GDAL's progress callback
//! mapped to phases and used as the cancellation point.

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::source::Source;
use super::{last_gdal_error, Conversion, ConvertError, Limits, Phase};

struct CallbackState<'a> {
    cancel: &'a AtomicBool,
    /// Watches the output's disk so the conversion stops before it eats the reserve.
    disk: DiskWatch<'a>,
    /// Fraction of GDAL's progress spent building overviews, which the COG driver does first.
    overview_share: f64,
    report: &'a mut dyn FnMut(f64, Phase),
}

struct DiskWatch<'a> {
    dir: &'a Path,
    min_free: u64,
    last_check: std::time::Instant,
    full: bool,
}

impl DiskWatch<'_> {
    /// Asks the filesystem at most every 100 ms: GDAL reports progress far more often.
    fn too_full(&mut self) -> bool {
        if !self.full
            && self.min_free > 0
            && self.last_check.elapsed() >= std::time::Duration::from_millis(100)
        {
            self.last_check = std::time::Instant::now();
            self.full = crate::disk::would_dip_into_reserve(self.dir, 0, self.min_free);
        }
        self.full
    }
}

unsafe extern "C" fn on_progress(complete: f64, _msg: *const c_char, data: *mut c_void) -> c_int {
    // SAFETY: `data` is the `CallbackState` that `to_cog` keeps alive across GDALTranslate.
    let state = unsafe { &mut *(data as *mut CallbackState) };
    if state.cancel.load(Ordering::Relaxed) || state.disk.too_full() {
        return 0;
    }
    let phase = if complete < state.overview_share {
        Phase::BuildingOverviews
    } else {
        Phase::Converting
    };
    (state.report)(complete.clamp(0.0, 1.0) * 100.0, phase);
    1
}

pub fn to_cog(
    source: &Source,
    output: &Path,
    conversion: &Conversion,
    limits: &Limits,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(f64, Phase),
) -> Result<(), ConvertError> {
    check_compression_fits(source, conversion)?;
    let resampling = conversion
        .overview_resampling
        .clone()
        .unwrap_or_else(|| default_resampling(source).to_string());
    let args = conversion.translate_args(&resampling, limits.threads);
    let c_args: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()).expect("arguments have no NUL"))
        .collect();
    let mut argv: Vec<*mut c_char> = c_args.iter().map(|a| a.as_ptr() as *mut c_char).collect();
    argv.push(std::ptr::null_mut());
    let dest = CString::new(
        output
            .to_str()
            .ok_or_else(|| ConvertError::Failed("The output path is not valid UTF-8.".into()))?,
    )
    .map_err(|_| ConvertError::Failed("The output path has a NUL byte.".into()))?;

    let dir = output.parent().unwrap_or(Path::new("."));
    if crate::disk::would_dip_into_reserve(dir, 0, limits.min_free_bytes) {
        return Err(disk_full());
    }
    let mut state = CallbackState {
        cancel,
        disk: DiskWatch {
            dir,
            min_free: limits.min_free_bytes,
            last_check: std::time::Instant::now(),
            full: false,
        },
        overview_share: overview_share(source, conversion),
        report,
    };
    // SAFETY: `argv` is a NULL-terminated array of C strings that outlive the options
    // object; `state` outlives GDALTranslate, the only caller of the callback; every
    // handle GDAL returns is released below.
    unsafe {
        gdal_sys::CPLErrorReset();
        let options = gdal_sys::GDALTranslateOptionsNew(argv.as_mut_ptr(), std::ptr::null_mut());
        if options.is_null() {
            return Err(last_gdal_error("GDAL refused the conversion options"));
        }
        gdal_sys::GDALTranslateOptionsSetProgress(
            options,
            Some(on_progress),
            &mut state as *mut CallbackState as *mut c_void,
        );
        let mut usage_error: c_int = 0;
        let out = gdal_sys::GDALTranslate(
            dest.as_ptr(),
            source.dataset.c_dataset(),
            options,
            &mut usage_error,
        );
        let errno = std::io::Error::last_os_error().raw_os_error();
        gdal_sys::GDALTranslateOptionsFree(options);
        if out.is_null() {
            let full = state.disk.full || out_of_space(errno, output);
            super::remove_with_side_files(output);
            if cancel.load(Ordering::Relaxed) {
                return Err(ConvertError::Cancelled);
            }
            if full {
                return Err(disk_full());
            }
            return Err(last_gdal_error("GDAL could not convert this raster"));
        }
        // Closing flushes the file; a failure here means the output is incomplete.
        gdal_sys::GDALClose(out);
        if gdal_sys::CPLGetLastErrorType() == gdal_sys::CPLErr::CE_Failure {
            let full = out_of_space(std::io::Error::last_os_error().raw_os_error(), output);
            super::remove_with_side_files(output);
            if full {
                return Err(disk_full());
            }
            return Err(last_gdal_error("GDAL could not read all of this raster"));
        }
    }
    if cancel.load(Ordering::Relaxed) {
        super::remove_with_side_files(output);
        return Err(ConvertError::Cancelled);
    }
    Ok(())
}

/// Whether a failed write ran out of disk space. GDAL reports it as libtiff's "IO error
/// writing tag data"; the system's word for it is errno, or else the disk, nearly full, tells.
fn out_of_space(errno: Option<i32>, output: &Path) -> bool {
    matches!(errno, Some(libc::ENOSPC | libc::EDQUOT))
        || output
            .parent()
            .and_then(crate::disk::free_bytes)
            .is_some_and(|free| free < 1 << 20)
}

fn disk_full() -> ConvertError {
    ConvertError::OutOfSpace(
        "The server ran out of disk space while writing the COG; nothing was kept. Try again once space is freed.".into(),
    )
}

/// Nearest keeps a palette's classes intact; average is the smooth choice for imagery.
fn default_resampling(source: &Source) -> &'static str {
    let paletted = source
        .dataset
        .rasterband(1)
        .is_ok_and(|b| b.color_table().is_some());
    if paletted {
        "nearest"
    } else {
        "average"
    }
}

/// The COG driver weighs its work in pixels: overviews (a third of the full image, per
/// band) come first, then the final copy (four thirds). Reprojection adds a pass before both.
fn overview_share(source: &Source, conversion: &Conversion) -> f64 {
    if conversion.target_crs.is_some() || conversion.web_optimized {
        return 0.0;
    }
    let (w, h) = source.dataset.raster_size();
    let has_overviews = source
        .dataset
        .rasterband(1)
        .is_ok_and(|b| b.overview_count().unwrap_or(0) > 0);
    let block = conversion.blocksize as usize;
    if has_overviews || (w <= block && h <= block) {
        return 0.0;
    }
    let bands = source.dataset.raster_count() as f64;
    let ovr = bands / 3.0;
    let copy = bands * 4.0 / 3.0;
    ovr / (ovr + copy)
}

/// JPEG and WebP take only 8-bit imagery; say so plainly instead of GDAL's internal error.
fn check_compression_fits(source: &Source, conversion: &Conversion) -> Result<(), ConvertError> {
    let lossy = conversion.compression.as_str();
    if !matches!(lossy, "jpeg" | "webp") {
        return Ok(());
    }
    let bands = source.dataset.raster_count();
    let all_byte = (1..=bands).all(|i| {
        source
            .dataset
            .rasterband(i)
            .is_ok_and(|b| b.band_type() == gdal::raster::GdalDataType::UInt8)
    });
    let band_ok = match lossy {
        "jpeg" => matches!(bands, 1 | 3 | 4),
        _ => matches!(bands, 3 | 4),
    };
    if !all_byte || !band_ok {
        return Err(ConvertError::Failed(format!(
            "{} compression needs 8-bit imagery with {} bands; this raster has {bands} band(s){}. Use deflate, zstd or lerc instead.",
            lossy.to_uppercase(),
            if lossy == "jpeg" { "1, 3 or 4" } else { "3 or 4" },
            if all_byte { "" } else { " that are not 8-bit" },
        )));
    }
    Ok(())
}
