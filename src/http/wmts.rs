//! `GET /tree-items/{id}/WMTSCapabilities.xml`: an OGC WMTS 1.0.0 capabilities document for a
//! COG's tiles, for GIS clients that speak WMTS (QGIS, ArcGIS, OpenLayers, GDAL): one layer in
//! the WebMercatorQuad grid (GoogleMapsCompatible), with the tile rows and columns that hold
//! data at each zoom, and a RESTful tile URL that carries a signed `link`.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::auth::MaybeUser;
use super::extract::Path;
use super::tiles::{xyz, TileJsonQuery, TileQuery};
use super::AppState;
use crate::domain::tiles::ORIGIN;
use crate::error::{AppResult, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(capabilities))
}

/// The GoogleMapsCompatible scale denominator at zoom 0 (256-pixel tiles, 0.28 mm pixels).
const SCALE_0: f64 = 559_082_264.028_717_8;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The tile column and row of a WGS 84 point at zoom `z`.
fn tile_of(lon: f64, lat: f64, z: u32) -> (u64, u64) {
    let n = f64::from(1u32 << z);
    let lat = lat.clamp(-85.051_128_78, 85.051_128_78).to_radians();
    let x = ((lon + 180.0) / 360.0 * n).floor().clamp(0.0, n - 1.0);
    let y = ((1.0 - (lat.tan() + 1.0 / lat.cos()).ln() / std::f64::consts::PI) / 2.0 * n)
        .floor()
        .clamp(0.0, n - 1.0);
    (x as u64, y as u64)
}

/// A WMTS 1.0.0 capabilities document for the COG's tiles: paste its URL into QGIS (WMS/WMTS
/// connection) or open it with GDAL (`WMTS:<url>`). Takes the TileJSON's parameters.
#[utoipa::path(get, operation_id = "getWmtsCapabilities", path = "/tree-items/{id}/WMTSCapabilities.xml", tag = "tiles",
    params(("id" = Uuid, Path, description = "An item holding a COG"), TileJsonQuery, TileQuery),
    responses(
        (status = 200, description = "WMTS 1.0.0 capabilities", content_type = "application/xml"),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 403, description = "A link that was changed, has expired, or opens another file", body = ErrorBody),
        (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 422, description = "Not a COG, a file with no CRS, or impossible parameters", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn capabilities(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    Path(id): Path<Uuid>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> AppResult<Response> {
    let xyz = xyz(&state, user, id, query, &headers).await?;
    let [w, s, e, n] = xyz.bounds;
    let size = 256 * xyz.scale;
    let template = escape(&xyz.template("{TileMatrix}", "{TileCol}", "{TileRow}"));
    let mut limits = String::new();
    for z in xyz.minzoom..=xyz.maxzoom {
        let (min_col, min_row) = tile_of(w, n, z);
        let (max_col, max_row) = tile_of(e, s, z);
        let _ = write!(
            limits,
            "<TileMatrixLimits><TileMatrix>{z}</TileMatrix><MinTileRow>{min_row}</MinTileRow>\
             <MaxTileRow>{max_row}</MaxTileRow><MinTileCol>{min_col}</MinTileCol>\
             <MaxTileCol>{max_col}</MaxTileCol></TileMatrixLimits>"
        );
    }
    let mut matrices = String::new();
    for z in 0..=xyz.maxzoom {
        let count = 1u64 << z;
        let scale = SCALE_0 / f64::from(1u32 << z) / f64::from(xyz.scale);
        let _ = write!(
            matrices,
            "<TileMatrix><ows:Identifier>{z}</ows:Identifier><ScaleDenominator>{scale}</ScaleDenominator>\
             <TopLeftCorner>{} {ORIGIN}</TopLeftCorner><TileWidth>{size}</TileWidth>\
             <TileHeight>{size}</TileHeight><MatrixWidth>{count}</MatrixWidth>\
             <MatrixHeight>{count}</MatrixHeight></TileMatrix>",
            -ORIGIN
        );
    }
    let format = xyz.content_type;
    let name = escape(&xyz.name);
    let body = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1" xmlns:xlink="http://www.w3.org/1999/xlink" version="1.0.0">
<ows:ServiceIdentification><ows:Title>rastercast</ows:Title><ows:ServiceType>OGC WMTS</ows:ServiceType><ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion></ows:ServiceIdentification>
<Contents>
<Layer><ows:Title>{name}</ows:Title><ows:WGS84BoundingBox crs="urn:ogc:def:crs:OGC:2:84"><ows:LowerCorner>{w} {s}</ows:LowerCorner><ows:UpperCorner>{e} {n}</ows:UpperCorner></ows:WGS84BoundingBox><ows:Identifier>{id}</ows:Identifier><Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style><Format>{format}</Format><TileMatrixSetLink><TileMatrixSet>WebMercatorQuad</TileMatrixSet><TileMatrixSetLimits>{limits}</TileMatrixSetLimits></TileMatrixSetLink><ResourceURL format="{format}" resourceType="tile" template="{template}"/></Layer>
<TileMatrixSet><ows:Identifier>WebMercatorQuad</ows:Identifier><ows:SupportedCRS>urn:ogc:def:crs:EPSG::3857</ows:SupportedCRS><WellKnownScaleSet>http://www.opengis.net/def/wkss/OGC/1.0/GoogleMapsCompatible</WellKnownScaleSet>{matrices}</TileMatrixSet>
</Contents>
</Capabilities>
"#
    );
    let mut response = ([(header::CONTENT_TYPE, "application/xml")], body).into_response();
    if xyz.linked {
        super::tiles::open_to_any_page(&mut response);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_point_falls_in_its_tile() {
        // The reference tile of the tests, z8/72/109, holds the Bahamas (RGB.byte.tif).
        assert_eq!(super::tile_of(-77.5, 24.5, 8), (72, 110));
        assert_eq!(super::tile_of(-180.0, 85.0, 0), (0, 0));
        assert_eq!(super::tile_of(180.0, -85.0, 2), (3, 3));
    }
}
