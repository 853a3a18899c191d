//! Opening an untrusted source: only allow-listed drivers, only paths we build ourselves,
//! and every limit checked before any pixel is read.

use std::ffi::CString;
use std::path::Path;

use gdal::{Dataset, DatasetOptions, GdalOpenFlags, Metadata};

use super::hardening::INPUT_DRIVERS;
use super::{last_gdal_error, Conversion, ConvertError, Limits};

/// An opened source, checked against the limits, with what the user should know about it.
pub struct Source {
    pub dataset: Dataset,
    pub warnings: Vec<String>,
}

fn fail(msg: impl Into<String>) -> ConvertError {
    ConvertError::Failed(msg.into())
}

pub fn open(path: &Path, conversion: &Conversion, limits: &Limits) -> Result<Source, ConvertError> {
    let path_str = path
        .to_str()
        .ok_or_else(|| fail("The stored file has a path GDAL cannot use."))?;
    // Paths come from the server, never from the user; this guards against a future caller.
    if path_str.starts_with("/vsi") {
        return Err(fail("Only plain local files can be converted."));
    }
    let mut warnings = Vec::new();
    let mut subdataset = conversion.subdataset.as_deref();
    let gdal_path = if is_zip(path)? {
        let (member_path, used_option) = zip_member(path_str, subdataset, limits)?;
        if used_option {
            subdataset = None;
        }
        member_path
    } else {
        path_str.to_string()
    };
    let mut dataset = open_allowed(&gdal_path)?;

    let subdatasets = subdataset_names(&dataset, &gdal_path);
    match (subdataset, dataset.raster_count(), subdatasets.is_empty()) {
        (Some(name), _, false) => {
            let full = subdatasets
                .iter()
                .find(|(short, _)| short == name)
                .map(|(_, full)| full.clone())
                .ok_or_else(|| {
                    fail(format!(
                        "This file has no subdataset named {name:?}; it holds {}.",
                        list(&subdatasets)
                    ))
                })?;
            // `full` was rebuilt by us from our own path and a listed variable name.
            dataset = open_allowed(&full)?;
        }
        (Some(name), _, true) => {
            return Err(fail(format!(
                "The subdataset option ({name:?}) was given, but this file has no subdatasets."
            )))
        }
        (None, 0, false) => {
            return Err(fail(format!(
                "This file holds {} subdatasets ({}); choose one with the subdataset option.",
                subdatasets.len(),
                list(&subdatasets)
            )))
        }
        _ => {}
    }

    check_limits(&dataset, limits)?;
    check_georeferencing(&dataset, conversion, &mut warnings)?;
    Ok(Source { dataset, warnings })
}

fn list(subdatasets: &[(String, String)]) -> String {
    subdatasets
        .iter()
        .map(|(short, _)| short.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn open_allowed(path: &str) -> Result<Dataset, ConvertError> {
    // SAFETY: resetting GDAL's thread-local error state has no preconditions.
    unsafe { gdal_sys::CPLErrorReset() };
    Dataset::open_ex(
        path,
        DatasetOptions {
            open_flags: GdalOpenFlags::GDAL_OF_RASTER
                | GdalOpenFlags::GDAL_OF_READONLY
                | GdalOpenFlags::GDAL_OF_VERBOSE_ERROR,
            allowed_drivers: Some(INPUT_DRIVERS),
            open_options: None,
            sibling_files: None,
        },
    )
    .map_err(|_| {
        let err = last_gdal_error("GDAL cannot read this file as a raster");
        match err {
            ConvertError::Failed(msg)
                if msg.contains("not recognized as") || msg.ends_with("raster.") =>
            {
                fail(format!(
                    "This file is not a raster format rastercast accepts ({}).",
                    INPUT_DRIVERS.join(", ")
                ))
            }
            other => other,
        }
    })
}

/// `(name, path to open)` for each subdataset of a NetCDF file. The SUBDATASETS list is
/// metadata, and any file can carry metadata (a GeoTIFF in its GDAL_METADATA tag), so only the
/// netCDF driver's list is used, and only entries that name our own file; the path to open is
/// rebuilt here from our path and the variable name, never taken from the file.
fn subdataset_names(dataset: &Dataset, own_path: &str) -> Vec<(String, String)> {
    if dataset.driver().short_name() != "netCDF" {
        return Vec::new();
    }
    let prefix = format!("NETCDF:\"{own_path}\":");
    let entries = dataset.metadata_domain("SUBDATASETS").unwrap_or_default();
    entries
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| k.ends_with("_NAME"))
        .filter_map(|(_, full)| full.strip_prefix(&prefix))
        .filter(|var| !var.is_empty() && !var.contains(['"', '/', '\\']) && !var.starts_with("vsi"))
        .map(|var| (var.to_string(), format!("{prefix}{var}")))
        .collect()
}

fn is_zip(path: &Path) -> Result<bool, ConvertError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f =
        std::fs::File::open(path).map_err(|e| fail(format!("Cannot open the stored file: {e}")))?;
    let n = f.read(&mut magic).unwrap_or(0);
    Ok(n == 4 && magic == *b"PK\x03\x04")
}

/// Whether a member of a zip archive is one the conversion would pick as its raster.
pub fn is_raster_name(name: &str) -> bool {
    name.rsplit('.')
        .next()
        .is_some_and(|ext| RASTER_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

const RASTER_EXTENSIONS: &[&str] = &[
    "tif", "tiff", "hgt", "jp2", "nc", "png", "jpg", "jpeg", "gif", "bmp", "webp", "img", "asc",
    "grd",
];

/// Picks the raster inside a zip and returns its `/vsizip/` path, built by us from our own
/// stored path and a member name checked to stay inside the archive.
fn zip_member(
    path: &str,
    requested: Option<&str>,
    limits: &Limits,
) -> Result<(String, bool), ConvertError> {
    // The braces mark where the archive's path ends: our stored files have no `.zip`.
    let root = format!("/vsizip/{{{path}}}");
    let entries =
        gdal::vsi::read_dir(&root, true).map_err(|_| fail("This zip archive cannot be read."))?;
    let files: Vec<String> = entries
        .iter()
        .filter_map(|p| p.to_str().map(str::to_string))
        .filter(|name| !name.ends_with('/'))
        .collect();
    if files
        .iter()
        .any(|f| f.contains("..") || f.starts_with('/') || f.contains('\\'))
    {
        return Err(fail(
            "This zip archive has member paths that leave the archive.",
        ));
    }
    let is_raster = |name: &String| is_raster_name(name);
    let (member, used_option) = match requested {
        Some(name) if files.iter().any(|f| f == name) => (name.to_string(), true),
        _ => {
            let rasters: Vec<&String> = files.iter().filter(|f| is_raster(f)).collect();
            match rasters.as_slice() {
                [one] => ((*one).clone(), false),
                [] => return Err(fail("This zip archive holds no raster file.")),
                many => {
                    return Err(fail(format!(
                        "This zip archive holds {} rasters ({}); choose one with the subdataset option.",
                        many.len(),
                        many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    )))
                }
            }
        }
    };
    let member_path = format!("{root}/{member}");
    let size = vsi_size(&member_path)?;
    if size > limits.max_unzipped_bytes {
        return Err(fail(format!(
            "The zipped file {member} expands to {size} bytes, over the limit of {} bytes.",
            limits.max_unzipped_bytes
        )));
    }
    Ok((member_path, used_option))
}

fn vsi_size(path: &str) -> Result<u64, ConvertError> {
    let c_path = CString::new(path).map_err(|_| fail("Bad member name in the zip archive."))?;
    // SAFETY: on Linux VSIStatBufL is the C library's `struct stat64`, which the bindings
    // leave opaque; libc's definition has the same layout. It is read only on success.
    unsafe {
        let mut stat: libc::stat64 = std::mem::zeroed();
        let buf = &mut stat as *mut libc::stat64 as *mut gdal_sys::VSIStatBufL;
        if gdal_sys::VSIStatL(c_path.as_ptr(), buf) != 0 {
            return Err(fail("A member of this zip archive cannot be read."));
        }
        Ok(stat.st_size as u64)
    }
}

fn check_limits(dataset: &Dataset, limits: &Limits) -> Result<(), ConvertError> {
    let (w, h) = dataset.raster_size();
    let bands = dataset.raster_count();
    if bands == 0 {
        return Err(fail("This file has no raster bands."));
    }
    if bands > limits.max_bands {
        return Err(fail(format!(
            "This raster has {bands} bands, over the limit of {}.",
            limits.max_bands
        )));
    }
    let pixels = (w as u128) * (h as u128) * (bands as u128);
    if pixels > limits.max_pixels as u128 {
        return Err(fail(format!(
            "This raster declares {w}×{h} pixels in {bands} band(s), over the limit of {} pixels.",
            limits.max_pixels
        )));
    }
    Ok(())
}

fn check_georeferencing(
    dataset: &Dataset,
    conversion: &Conversion,
    warnings: &mut Vec<String>,
) -> Result<(), ConvertError> {
    let has_transform = dataset
        .geo_transform()
        .is_ok_and(|gt| gt != [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    // SAFETY: the handle is valid for the lifetime of `dataset`.
    let gcps = unsafe { gdal_sys::GDALGetGCPCount(dataset.c_dataset()) };
    let has_crs = dataset.spatial_ref().is_ok();
    if !has_transform && gcps == 0 {
        return Err(fail(
            "This image has no georeferencing (no geotransform and no ground control points), so it is not a geo-raster.",
        ));
    }
    let reprojecting = conversion.target_crs.is_some() || conversion.web_optimized;
    if !has_crs && reprojecting {
        return Err(fail(
            "This raster has no coordinate reference system, so it cannot be reprojected; convert it without target_crs or web_optimized.",
        ));
    }
    if !has_crs {
        warnings.push(
            "The source has no coordinate reference system; the output has none either (none was guessed).".into(),
        );
    }
    Ok(())
}
