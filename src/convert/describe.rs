//! Checking that an output really is a COG, and describing it for clients.

use std::path::Path;

use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
use gdal::{Dataset, DatasetOptions, GdalOpenFlags, Metadata};

use super::{BandInfo, ConvertError, GeoRaster};

fn fail(msg: impl Into<String>) -> ConvertError {
    ConvertError::Failed(msg.into())
}

/// JSON has no NaN or infinity (serde_json would write `null`, which reads as "no nodata"), so
/// those travel as strings.
fn nodata_json(v: Option<f64>) -> Option<serde_json::Value> {
    v.map(|v| match v {
        v if v.is_nan() => "nan".into(),
        f64::INFINITY => "inf".into(),
        f64::NEG_INFINITY => "-inf".into(),
        v => serde_json::json!(v),
    })
}

/// Opens `path` as GDAL would for a reader, checks `LAYOUT=COG` and describes it.
pub fn verify_cog(path: &Path) -> Result<GeoRaster, ConvertError> {
    let ds = Dataset::open_ex(
        path,
        DatasetOptions {
            open_flags: GdalOpenFlags::GDAL_OF_RASTER | GdalOpenFlags::GDAL_OF_READONLY,
            allowed_drivers: Some(&["GTiff"]),
            ..Default::default()
        },
    )
    .map_err(|e| fail(format!("The output cannot be opened again: {e}")))?;
    let layout = ds
        .metadata_item("LAYOUT", "IMAGE_STRUCTURE")
        .unwrap_or_default();
    if layout != "COG" {
        return Err(fail(format!(
            "The output is not a Cloud-Optimized GeoTIFF (GDAL reports layout {layout:?})."
        )));
    }
    describe(&ds, path, layout)
}

pub(super) fn describe(
    ds: &Dataset,
    path: &Path,
    layout: String,
) -> Result<GeoRaster, ConvertError> {
    let (width, height) = ds.raster_size();
    let mut bands = Vec::new();
    for band in ds.rasterbands() {
        let band = band.map_err(|e| fail(format!("A band of the output cannot be read: {e}")))?;
        bands.push(BandInfo {
            data_type: band.band_type().name(),
            color_interpretation: band.color_interpretation().name(),
            nodata: nodata_json(band.no_data_value()),
        });
    }
    let first = ds
        .rasterband(1)
        .map_err(|e| fail(format!("The output has no band: {e}")))?;
    let (bw, bh) = first.block_size();
    let overviews = (0..first.overview_count().unwrap_or(0))
        .filter_map(|i| first.overview(i as usize).ok())
        .map(|o| [o.x_size(), o.y_size()])
        .collect();
    let bounds = native_bounds(ds, width, height);
    let srs = ds.spatial_ref().ok();
    let crs = srs.as_ref().map(crs_label);
    let crs_wkt = srs.as_ref().and_then(|s| s.to_wkt().ok());
    let bounds_wgs84 = srs.as_ref().and_then(|s| to_wgs84(s, &bounds));
    Ok(GeoRaster {
        width,
        height,
        band_count: bands.len(),
        nodata: bands.first().and_then(|b| b.nodata.clone()),
        bands,
        crs,
        crs_wkt,
        bounds,
        bounds_wgs84,
        block_size: [bw, bh],
        overviews,
        compression: ds
            .metadata_item("COMPRESSION", "IMAGE_STRUCTURE")
            .unwrap_or_else(|| "NONE".into()),
        layout,
        size_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        duration_s: 0.0,
        warnings: Vec::new(),
    })
}

fn crs_label(srs: &SpatialRef) -> String {
    match (srs.auth_name(), srs.auth_code()) {
        (Some(name), Ok(code)) => format!("{name}:{code}"),
        _ => srs.name().unwrap_or_else(|| "unnamed CRS".into()),
    }
}

/// The envelope of the four corners, so a rotated geotransform is covered too.
fn native_bounds(ds: &Dataset, width: usize, height: usize) -> [f64; 4] {
    let gt = ds.geo_transform().unwrap_or([0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    let (w, h) = (width as f64, height as f64);
    let corners = [(0.0, 0.0), (w, 0.0), (0.0, h), (w, h)].map(|(px, py)| {
        (
            gt[0] + px * gt[1] + py * gt[2],
            gt[3] + px * gt[4] + py * gt[5],
        )
    });
    let xs = corners.map(|c| c.0);
    let ys = corners.map(|c| c.1);
    let min = |v: [f64; 4]| v.into_iter().fold(f64::INFINITY, f64::min);
    let max = |v: [f64; 4]| v.into_iter().fold(f64::NEG_INFINITY, f64::max);
    [min(xs), min(ys), max(xs), max(ys)]
}

fn to_wgs84(srs: &SpatialRef, bounds: &[f64; 4]) -> Option<[f64; 4]> {
    let mut source = srs.clone();
    source.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let mut wgs84 = SpatialRef::from_epsg(4326).ok()?;
    wgs84.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let transform = CoordTransform::new(&source, &wgs84).ok()?;
    let out = transform.transform_bounds(bounds, 21).ok()?;
    out.iter().all(|v| v.is_finite()).then_some(out)
}
