//! GDAL settings that make it safe to open files uploaded by strangers. Applied once per
//! process, before any dataset is opened.

/// Drivers that make sense for a single uploaded file. Everything that can reference other
/// files or the network (VRT, the `/vsicurl/` family, WMS, sidecar-based formats) is absent.
pub const INPUT_DRIVERS: &[&str] = &[
    "GTiff",
    "JP2OpenJPEG",
    "netCDF",
    "SRTMHGT",
    "PNG",
    "JPEG",
    "GIF",
    "BMP",
    "WEBP",
    "HFA",
    "AAIGrid",
    "GSBG",
    "GS7BG",
];

/// Process-wide GDAL configuration. `cache_mb` bounds GDAL's block cache.
pub fn apply(cache_mb: usize) {
    let settings = [
        // A VRT could embed Python; never run it.
        ("GDAL_VRT_ENABLE_PYTHON", "NO".to_string()),
        // Do not list the upload's directory: other users' files live there.
        ("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR".to_string()),
        // No .aux.xml sidecars read or written next to stored files.
        ("GDAL_PAM_ENABLED", "NO".to_string()),
        ("GDAL_CACHEMAX", cache_mb.to_string()),
        // Belt and braces: even if a path slipped through, no network access is attempted.
        ("GDAL_HTTP_TIMEOUT", "1".to_string()),
        (
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS",
            ".none-allowed".to_string(),
        ),
    ];
    for (key, value) in settings {
        let _ = gdal::config::set_config_option(key, &value);
    }
}
