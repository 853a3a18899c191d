//! Map tiles of an item holding a COG, with TiTiler's route and parameter names:
//! `GET /tree-items/{id}/tiles/WebMercatorQuad/{z}/{x}/{y}[@2x].{png|webp|jpg}`. Drawn by
//! GDAL in the tile workers, kept in an LRU, with a strong `ETag` (the file's blob and every
//! parameter) so browsers and map libraries revalidate for free. A tile of the grid outside
//! the data is drawn transparent (200), so map libraries show nothing rather than an error.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::auth::AuthUser;
use super::extract::Path;
use super::tree_items::owned_item;
use super::AppState;
use crate::domain::tiles::{self, Format, TileJob};
use crate::error::{AppError, AppResult, ErrorBody};
use crate::store::Item;
use crate::tasks::NotDrawn;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(tile))
}

/// The query of a tile, as the OpenAPI document describes it (the handler reads the raw
/// query, where `rescale` and `bidx` may repeat).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct TileQuery {
    /// Bands to draw (1-based): one (gray, or with a colormap), or three (RGB).
    #[param(inline, value_type = Option<Vec<u32>>, minimum = 1, maximum = 65535)]
    bidx: Option<Vec<u32>>,
    /// `min,max` per band, or one for all (min below max).
    #[param(value_type = Option<Vec<String>>, example = "0,255")]
    rescale: Option<Vec<String>>,
    #[param(inline, value_type = Option<ColormapName>)]
    colormap_name: Option<String>,
    /// A number or `nan`, in place of the file's nodata.
    #[param(pattern = r"^(nan|-?[0-9]{1,15}(\.[0-9]{1,15})?)$")]
    nodata: Option<String>,
    #[param(inline, value_type = Option<Resampling>)]
    resampling: Option<String>,
    /// Draw the mask as alpha (default true; JPEG has none).
    return_mask: Option<bool>,
    /// 256 (default) or 512.
    #[param(inline, value_type = Option<TileSize>)]
    tilesize: Option<u32>,
}

/// The colormaps (rio-tiler's tables).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum ColormapName {
    Viridis,
    Magma,
    Inferno,
    Plasma,
    Cividis,
    Turbo,
    Gray,
    Greys,
    Terrain,
    Rdylgn,
    Spectral,
    Rdbu,
    Blues,
    Greens,
    Reds,
    Ylorrd,
}

/// How values are resampled (default nearest).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum Resampling {
    Nearest,
    Bilinear,
    Cubic,
    CubicSpline,
    Lanczos,
    Average,
    Mode,
    Min,
    Max,
}

/// A tile's side in pixels.
#[derive(utoipa::ToSchema)]
#[schema(as = TileSize)]
#[allow(dead_code)]
#[repr(u32)]
enum TileSize {
    #[schema(rename = "256")]
    Small = 256,
    #[schema(rename = "512")]
    Large = 512,
}

/// `{y}`, `{y}@2x`, with `.png`, `.webp`, `.jpg` or `.jpeg`.
fn parse_y(text: &str) -> Result<(u64, u32, Format), String> {
    let bad = || {
        format!("{text:?} is not a tile's last part: y, optionally @2x, then .png, .webp or .jpg.")
    };
    let (stem, ext) = text.rsplit_once('.').ok_or_else(bad)?;
    let format = Format::parse(ext).ok_or_else(bad)?;
    let (y, scale) = match stem.strip_suffix("@2x") {
        Some(y) => (y, 2),
        None => (stem, 1),
    };
    let y = y.parse::<u64>().map_err(|_| bad())?;
    Ok((y, scale, format))
}

/// The item, if it holds a COG that tiles can be drawn from.
fn drawable(item: &Item) -> AppResult<&str> {
    let cog = item
        .geo_raster
        .as_ref()
        .is_some_and(|g| g["layout"] == "COG");
    match (&item.blob, cog) {
        (Some(blob), true) => Ok(blob),
        _ => Err(AppError::Unprocessable(format!(
            "{:?} is not a Cloud-Optimized GeoTIFF: convert it first, and draw the result.",
            item.name
        ))),
    }
}

/// One map tile of a COG, as TiTiler draws it: `bidx` (bands, 1-based), `rescale` (`min,max`
/// per band, or one for all; values stretch linearly to 0–255), `colormap_name` (one band),
/// `nodata` (replaces the file's), `resampling` (default nearest), `return_mask` (alpha; PNG
/// and WebP only). `@2x` (or `tilesize=512`) draws 512 × 512. A tile outside the data is
/// transparent.
#[utoipa::path(get, path = "/tree-items/{id}/tiles/WebMercatorQuad/{z}/{x}/{y}", tag = "tiles",
    params(("id" = Uuid, Path, description = "An item holding a COG"),
        ("z" = u32, Path, description = "Zoom level, 0 to 24", maximum = 24),
        ("x" = u64, Path, description = "Column, below 2^z"),
        ("y" = String, Path, description = "Row (below 2^z), optionally `@2x`, then `.png`, `.webp` or `.jpg`", example = "109@2x.png",
            pattern = r"^[0-9]{1,8}(@2x)?\.(png|webp|jpg|jpeg)$"),
        TileQuery,
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "The tile", content(("image/png"), ("image/webp"), ("image/jpeg"))),
        (status = 304, description = "Not modified"),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 422, description = "Not a COG, no tile of the grid, impossible parameters, or a file that cannot be placed on a web map", body = ErrorBody),
        (status = 503, description = "The tile workers or the file storage did not answer", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn tile(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, z, x, y)): Path<(Uuid, u32, u64, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> AppResult<Response> {
    let (y, scale, format) = parse_y(&y).map_err(AppError::Unprocessable)?;
    tiles::check_tile(z, x, y).map_err(AppError::Unprocessable)?;
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let render = tiles::parse_query(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        format,
        scale,
    )
    .map_err(AppError::Unprocessable)?;
    let item = owned_item(&state, user.id, id).await?;
    let blob = drawable(&item)?.to_owned();
    let bands = item
        .geo_raster
        .as_ref()
        .and_then(|g| g["band_count"].as_u64())
        .unwrap_or(0) as usize;
    if let Some(b) = render.bidx.iter().find(|b| **b > bands) {
        return Err(AppError::Unprocessable(format!(
            "bidx {b}: {:?} has {bands} band{}.",
            item.name,
            if bands == 1 { "" } else { "s" }
        )));
    }
    let job = TileJob { z, x, y, render };
    let etag = crate::tasks::TileKey::of(&blob, &job).etag();
    let cache_headers = |response: &mut Response| {
        let h = response.headers_mut();
        h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
        // The tile of a file never changes, but it is the owner's alone.
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=86400"),
        );
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        cache_headers(&mut response);
        return Ok(response);
    }
    let content_type = job.render.format.content_type();
    let (_, image) = state
        .renderer
        .tile(&state.blobs, &blob, job)
        .await
        .map_err(|e| match e {
            NotDrawn::Refused(why) => AppError::Unprocessable(why),
            NotDrawn::Unavailable(why) => {
                tracing::warn!(%why, "a tile could not be drawn");
                AppError::StorageUnavailable
            }
            NotDrawn::Gone => AppError::NotFound("tree item"),
        })?;
    let mut response = ([(header::CONTENT_TYPE, content_type)], image).into_response();
    cache_headers(&mut response);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_part_names_the_row_the_scale_and_the_format() {
        assert_eq!(parse_y("109.png").unwrap(), (109, 1, Format::Png));
        assert_eq!(parse_y("109@2x.webp").unwrap(), (109, 2, Format::Webp));
        assert_eq!(parse_y("0.jpg").unwrap(), (0, 1, Format::Jpeg));
        for bad in ["109", "109.gif", "a.png", "109@3x.png", "@2x.png"] {
            assert!(parse_y(bad).is_err(), "{bad}");
        }
    }
}
