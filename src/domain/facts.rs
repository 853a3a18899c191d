//! What a worker reports of a COG for catalogues and map clients (a STAC Item, `/info`,
//! `/statistics`), and how those documents are shaped from it. No I/O.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::stats::BandStats;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BandFacts {
    /// numpy's name: uint8, int16, float32, …
    pub data_type: String,
    /// A number, `"nan"`, `"inf"`, `"-inf"`, or `null`.
    pub nodata: Option<Value>,
    pub scale: f64,
    pub offset: f64,
    pub description: String,
    pub color_interpretation: String,
    /// Over a read of at most 1024 pixels on the longest side; `None` with no valid pixel.
    pub statistics: Option<BandStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RasterFacts {
    pub width: usize,
    pub height: usize,
    /// GDAL's geotransform.
    pub transform: [f64; 6],
    pub epsg: Option<u32>,
    pub wkt2: Option<String>,
    pub projjson: Option<Value>,
    /// The corners in WGS 84 (longitude, latitude), closed; `None` without a CRS.
    pub footprint_wgs84: Option<Vec<[f64; 2]>>,
    pub driver: String,
    pub dtype: String,
    /// Each overview's decimation factor.
    pub overviews: Vec<u32>,
    pub bands: Vec<BandFacts>,
}

/// A nodata value as JSON: a number, or the name of a non-finite one.
pub fn nodata_json(v: f64) -> Value {
    if v.is_nan() {
        json!("nan")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "inf" } else { "-inf" })
    } else {
        json!(v)
    }
}

/// Where the COG of a STAC Item is, and what the Item is about.
pub struct StacContext<'a> {
    pub id: &'a str,
    pub title: &'a str,
    /// RFC 3339: when the COG was made.
    pub datetime: &'a str,
    /// A URL that reads the COG.
    pub href: &'a str,
}

pub const STAC_VERSION: &str = "1.1.0";
pub const PROJECTION: &str = "https://stac-extensions.github.io/projection/v2.0.0/schema.json";
pub const RASTER: &str = "https://stac-extensions.github.io/raster/v1.1.0/schema.json";
pub const COG_MEDIA_TYPE: &str = "image/tiff; application=geotiff; profile=cloud-optimized";

/// A STAC 1.1 Item for a COG, with the projection (v2) and raster extensions. `Err` when the
/// file has no CRS: an Item needs a place on Earth.
pub fn stac_item(facts: &RasterFacts, at: &StacContext) -> Result<Value, String> {
    let ring = facts
        .footprint_wgs84
        .as_ref()
        .ok_or("The file has no CRS: a STAC Item needs a place on Earth.")?;
    let lons = ring.iter().map(|p| p[0]);
    let lats = ring.iter().map(|p| p[1]);
    let bbox = [
        lons.clone().fold(f64::INFINITY, f64::min),
        lats.clone().fold(f64::INFINITY, f64::min),
        lons.fold(f64::NEG_INFINITY, f64::max),
        lats.fold(f64::NEG_INFINITY, f64::max),
    ];
    let gt = facts.transform;
    let (w, h) = (facts.width as f64, facts.height as f64);
    let corners = [(0.0, 0.0), (w, 0.0), (0.0, h), (w, h)].map(|(px, py)| {
        (
            gt[0] + px * gt[1] + py * gt[2],
            gt[3] + px * gt[4] + py * gt[5],
        )
    });
    let xs = corners.map(|c| c.0);
    let ys = corners.map(|c| c.1);
    let fold = |v: [f64; 4], f: fn(f64, f64) -> f64, start: f64| v.into_iter().fold(start, f);
    let proj_bbox = [
        fold(xs, f64::min, f64::INFINITY),
        fold(ys, f64::min, f64::INFINITY),
        fold(xs, f64::max, f64::NEG_INFINITY),
        fold(ys, f64::max, f64::NEG_INFINITY),
    ];
    let bands: Vec<Value> = facts
        .bands
        .iter()
        .map(|b| {
            let mut band = json!({
                "data_type": b.data_type,
                "scale": b.scale,
                "offset": b.offset,
                "sampling": "area",
            });
            if let Some(nodata) = &b.nodata {
                band["nodata"] = nodata.clone();
            }
            if let Some(s) = &b.statistics {
                band["statistics"] = json!({
                    "minimum": s.min, "maximum": s.max, "mean": s.mean, "stddev": s.std,
                    "valid_percent": s.valid_percent,
                });
                band["histogram"] = json!({
                    "count": s.histogram.0.len(),
                    "min": s.min,
                    "max": s.max,
                    "buckets": s.histogram.0,
                });
            }
            band
        })
        .collect();
    let mut properties = json!({
        "title": at.title,
        "datetime": at.datetime,
        "proj:code": facts.epsg.map(|c| format!("EPSG:{c}")),
        "proj:bbox": proj_bbox,
        "proj:shape": [facts.height, facts.width],
        "proj:transform": [gt[1], gt[2], gt[0], gt[4], gt[5], gt[3], 0.0, 0.0, 1.0],
    });
    if facts.epsg.is_none() {
        if let Some(wkt2) = &facts.wkt2 {
            properties["proj:wkt2"] = json!(wkt2);
        }
        if let Some(projjson) = &facts.projjson {
            properties["proj:projjson"] = projjson.clone();
        }
    }
    Ok(json!({
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [PROJECTION, RASTER],
        "id": at.id,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": bbox,
        "properties": properties,
        "links": [],
        "assets": {
            "data": {
                "href": at.href,
                "type": COG_MEDIA_TYPE,
                "title": at.title,
                "roles": ["data"],
                "raster:bands": bands,
            }
        },
    }))
}

/// TiTiler's `/info` document.
pub fn info(facts: &RasterFacts, bounds: [f64; 4], crs: Option<&str>) -> Value {
    let names: Vec<String> = (1..=facts.bands.len()).map(|b| format!("b{b}")).collect();
    json!({
        "bounds": bounds,
        "crs": crs,
        "band_descriptions": names.iter().zip(&facts.bands)
            .map(|(n, b)| json!([n, if b.description.is_empty() { n.as_str() } else { b.description.as_str() }]))
            .collect::<Vec<_>>(),
        "dtype": facts.dtype,
        "nodata_type": if facts.bands.iter().any(|b| b.nodata.is_some()) { "Nodata" } else { "None" },
        "colorinterp": facts.bands.iter().map(|b| b.color_interpretation.clone()).collect::<Vec<_>>(),
        "scales": facts.bands.iter().map(|b| b.scale).collect::<Vec<_>>(),
        "offsets": facts.bands.iter().map(|b| b.offset).collect::<Vec<_>>(),
        "driver": facts.driver,
        "count": facts.bands.len(),
        "width": facts.width,
        "height": facts.height,
        "overviews": facts.overviews,
        "nodata_value": facts.bands.first().and_then(|b| b.nodata.clone()),
    })
}

/// TiTiler's `/statistics` document: `{"b1": {…}, …}`.
pub fn statistics(facts: &RasterFacts) -> Value {
    let mut out = serde_json::Map::new();
    for (i, band) in facts.bands.iter().enumerate() {
        let name = format!("b{}", i + 1);
        let mut stats = match &band.statistics {
            Some(s) => serde_json::to_value(s).expect("statistics serialise"),
            None => json!({"count": 0.0, "valid_percent": 0.0}),
        };
        stats["description"] = json!(if band.description.is_empty() {
            name.clone()
        } else {
            band.description.clone()
        });
        out.insert(name, stats);
    }
    Value::Object(out)
}
