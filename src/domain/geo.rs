//! What clients learn about a raster: the description stored with an output item and a
//! task's result.

use serde::{Deserialize, Serialize};

/// What clients learn about a converted raster; stored with the output item and the task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GeoRaster {
    pub width: usize,
    pub height: usize,
    pub band_count: usize,
    pub bands: Vec<BandInfo>,
    /// `AUTHORITY:CODE` when GDAL can name one, else the CRS name; `None` when there is none.
    pub crs: Option<String>,
    pub crs_wkt: Option<String>,
    /// `[min_x, min_y, max_x, max_y]` in the raster's own CRS.
    pub bounds: [f64; 4],
    /// The same in WGS 84 longitude/latitude; `None` without a CRS.
    pub bounds_wgs84: Option<[f64; 4]>,
    /// The first band's nodata: a number, `"nan"`, `"inf"`, `"-inf"`, or `null`.
    #[schema(schema_with = nodata_schema)]
    pub nodata: Option<serde_json::Value>,
    pub block_size: [usize; 2],
    pub overviews: Vec<[usize; 2]>,
    pub compression: String,
    pub layout: String,
    pub size_bytes: u64,
    pub duration_s: f64,
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BandInfo {
    pub data_type: String,
    pub color_interpretation: String,
    /// A number, `"nan"`, `"inf"`, `"-inf"`, or `null`.
    #[schema(schema_with = nodata_schema)]
    pub nodata: Option<serde_json::Value>,
}

fn nodata_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["nan", "inf", "-inf"])),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            r#"A number, "nan", "inf", "-inf", or null when there is none"#,
        ))
        .build()
        .into()
}
