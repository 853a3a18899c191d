//! What a STAC Item, `/info` and `/statistics` need of a COG, read in the worker: the
//! geotransform, the CRS (EPSG code, WKT2, PROJJSON), the footprint in WGS 84, each band's
//! type, nodata, scale, offset and description, and band statistics over a read of at most
//! 1024 pixels on the longest side (as TiTiler reads for its statistics).

use std::path::Path;

use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
use gdal::{Dataset, Metadata};

use super::ConvertError;
use crate::domain::facts::{BandFacts, RasterFacts};
use crate::domain::stats;

/// The longest side of the read that statistics are computed over.
const STATS_MAX_SIZE: u32 = 1024;

fn fail(message: impl Into<String>) -> ConvertError {
    ConvertError::Failed(message.into())
}

/// numpy's name for a GDAL data type, as STAC's raster extension and TiTiler use it.
fn dtype(name: &str) -> String {
    match name {
        "Byte" => "uint8".into(),
        "Int8" => "int8".into(),
        other => other.to_ascii_lowercase(),
    }
}

fn wkt2(srs: &SpatialRef) -> Option<String> {
    let mut options = gdal::cpl::CslStringList::new();
    options.add_string("FORMAT=WKT2_2019").ok()?;
    let mut out: *mut std::ffi::c_char = std::ptr::null_mut();
    // SAFETY: the SRS handle is valid; GDAL allocates `out`, freed with VSIFree below.
    unsafe {
        let err = gdal_sys::OSRExportToWktEx(
            srs.to_c_hsrs(),
            &mut out,
            options.as_ptr() as *const *const std::ffi::c_char,
        );
        if err != gdal_sys::OGRErr::OGRERR_NONE || out.is_null() {
            return None;
        }
        let text = std::ffi::CStr::from_ptr(out).to_string_lossy().into_owned();
        gdal_sys::VSIFree(out.cast());
        Some(text)
    }
}

/// The four corners (and the first again) in WGS 84 longitude/latitude.
fn footprint(
    srs: &SpatialRef,
    gt: &[f64; 6],
    width: usize,
    height: usize,
) -> Option<Vec<[f64; 2]>> {
    let mut source = srs.clone();
    source.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let mut wgs84 = SpatialRef::from_epsg(4326).ok()?;
    wgs84.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let transform = CoordTransform::new(&source, &wgs84).ok()?;
    let (w, h) = (width as f64, height as f64);
    let pixels = [(0.0, h), (w, h), (w, 0.0), (0.0, 0.0), (0.0, h)];
    let mut xs: Vec<f64> = pixels
        .iter()
        .map(|(px, py)| gt[0] + px * gt[1] + py * gt[2])
        .collect();
    let mut ys: Vec<f64> = pixels
        .iter()
        .map(|(px, py)| gt[3] + px * gt[4] + py * gt[5])
        .collect();
    transform.transform_coords(&mut xs, &mut ys, &mut []).ok()?;
    let ring: Vec<[f64; 2]> = xs.into_iter().zip(ys).map(|(x, y)| [x, y]).collect();
    ring.iter().flatten().all(|v| v.is_finite()).then_some(ring)
}

/// Each band's value at longitude `lon`, latitude `lat` (WGS 84); `None` where the band has no
/// data (its mask). A point outside the file is refused.
pub fn point(path: &Path, lon: f64, lat: f64) -> Result<Vec<Option<f64>>, ConvertError> {
    let dataset = super::tiles::open_tiff(path)?;
    let srs = dataset
        .spatial_ref()
        .map_err(|_| fail("The file has no CRS: a longitude and latitude name no pixel of it."))?;
    let mut target = srs.clone();
    target.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let mut wgs84 = SpatialRef::from_epsg(4326).map_err(|_| fail("WGS 84 is unknown to GDAL."))?;
    wgs84.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let transform = CoordTransform::new(&wgs84, &target)
        .map_err(|_| fail("GDAL cannot bring WGS 84 to this file's CRS."))?;
    let (mut xs, mut ys) = ([lon], [lat]);
    transform
        .transform_coords(&mut xs, &mut ys, &mut [])
        .map_err(|_| fail("This point cannot be brought to the file's CRS."))?;
    let gt = dataset
        .geo_transform()
        .map_err(|_| fail("The file has no geotransform."))?;
    // The inverse of the geotransform: pixel column and row of a projected point.
    let det = gt[1] * gt[5] - gt[2] * gt[4];
    let (dx, dy) = (xs[0] - gt[0], ys[0] - gt[3]);
    let col = ((gt[5] * dx - gt[2] * dy) / det).floor();
    let row = ((gt[1] * dy - gt[4] * dx) / det).floor();
    let (width, height) = dataset.raster_size();
    if !(0.0..width as f64).contains(&col) || !(0.0..height as f64).contains(&row) {
        return Err(fail(format!("The point {lon}, {lat} is outside the file.")));
    }
    let (col, row) = (col as isize, row as isize);
    let mut values = Vec::with_capacity(dataset.raster_count());
    for b in 1..=dataset.raster_count() {
        let band = dataset
            .rasterband(b)
            .map_err(|_| fail(format!("Band {b} cannot be read.")))?;
        let value = band
            .read_as::<f64>((col, row), (1, 1), (1, 1), None)
            .map_err(|_| fail(format!("Band {b} cannot be read.")))?
            .into_shape_and_vec()
            .1[0];
        let masked = band
            .open_mask_band()
            .and_then(|m| m.read_as::<u8>((col, row), (1, 1), (1, 1), None))
            .map(|m| m.into_shape_and_vec().1[0] == 0)
            .unwrap_or(false);
        values.push((!masked && !value.is_nan()).then_some(value));
    }
    Ok(values)
}

/// Reads the facts of the COG at `path`.
pub fn read(path: &Path) -> Result<RasterFacts, ConvertError> {
    let dataset = super::tiles::open_tiff(path)?;
    let (width, height) = dataset.raster_size();
    let transform = dataset
        .geo_transform()
        .unwrap_or([0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    let srs = dataset.spatial_ref().ok();
    let epsg = srs.as_ref().and_then(|s| {
        (s.auth_name().as_deref() == Some("EPSG"))
            .then(|| s.auth_code().ok())
            .flatten()
            .map(|c| c as u32)
    });
    let (read_w, read_h) = crate::domain::tiles::preview_size(width, height, STATS_MAX_SIZE);
    let mut bands = Vec::with_capacity(dataset.raster_count());
    for b in 1..=dataset.raster_count() {
        bands.push(band_facts(&dataset, b, (width, height), (read_w, read_h))?);
    }
    let first = dataset
        .rasterband(1)
        .map_err(|_| fail("The file has no band."))?;
    let overviews = (0..first.overview_count().unwrap_or(0).max(0) as usize)
        .filter_map(|i| first.overview(i).ok())
        .map(|o| (width as f64 / o.size().0 as f64).round() as u32)
        .collect();
    Ok(RasterFacts {
        width,
        height,
        transform,
        epsg,
        wkt2: srs.as_ref().and_then(wkt2),
        projjson: srs
            .as_ref()
            .and_then(|s| s.to_projjson().ok())
            .and_then(|j| serde_json::from_str(&j).ok()),
        footprint_wgs84: srs
            .as_ref()
            .and_then(|s| footprint(s, &transform, width, height)),
        driver: dataset.driver().short_name(),
        dtype: bands
            .first()
            .map(|b| b.data_type.clone())
            .unwrap_or_default(),
        overviews,
        bands,
    })
}

fn band_facts(
    dataset: &Dataset,
    b: usize,
    size: (usize, usize),
    read: (usize, usize),
) -> Result<BandFacts, ConvertError> {
    let band = dataset
        .rasterband(b)
        .map_err(|_| fail(format!("Band {b} cannot be read.")))?;
    let nodata = band.no_data_value();
    let values = band
        .read_as::<f64>((0, 0), size, read, None)
        .map_err(|_| fail(format!("Band {b} cannot be read.")))?
        .into_shape_and_vec()
        .1;
    // GDAL's mask: nodata, an alpha band or an internal mask, whichever the file has.
    let mask = band
        .open_mask_band()
        .and_then(|m| m.read_as::<u8>((0, 0), size, read, None))
        .map(|m| m.into_shape_and_vec().1)
        .map_err(|_| fail(format!("Band {b}'s mask cannot be read.")))?;
    let valid: Vec<bool> = mask.iter().map(|m| *m != 0).collect();
    let data_type = dtype(&band.band_type().name());
    Ok(BandFacts {
        nodata: nodata.map(crate::domain::facts::nodata_json),
        scale: band.scale().unwrap_or(1.0),
        offset: band.offset().unwrap_or(0.0),
        description: band.description().unwrap_or_default(),
        color_interpretation: band.color_interpretation().name().to_ascii_lowercase(),
        statistics: stats::band_stats(&values, &valid),
        data_type,
    })
}
