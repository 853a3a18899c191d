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

use super::auth::MaybeUser;
use super::extract::Path;
use super::tree_items::owned_item;
use super::AppState;
use crate::domain::tiles::{self, Format, TileJob};
use crate::error::{AppError, AppResult, ErrorBody};
use crate::store::Item;
use crate::tasks::NotDrawn;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(tile))
        .routes(routes!(tilejson))
}

/// How long a TileJSON's tile URLs work when `expires_in` is left out: a day.
const DEFAULT_EXPIRES_IN: u64 = 86400;

/// Whose item a tile request may read: the signed `link` in its query (map libraries and QGIS
/// send no headers), or the caller's own credentials.
pub(super) async fn reader(
    state: &AppState,
    user: Option<crate::store::User>,
    link: Option<&str>,
    item: Uuid,
) -> AppResult<Uuid> {
    match (link, user) {
        (Some(token), _) => super::links::token_opens(state, token, item).await,
        (None, Some(user)) => Ok(user.id),
        (None, None) => Err(AppError::Unauthorized(
            "A tile needs a token, a session, or the `link` of a TileJSON's tile URL.",
        )),
    }
}

/// The `link` of a query, if any: the credential of map clients that send no headers.
pub(super) fn link_of(pairs: &[(String, String)]) -> Option<&str> {
    pairs
        .iter()
        .find(|(k, _)| k == "link")
        .map(|(_, v)| v.as_str())
}

/// An answer to a signed link may be read by any page (MapLibre or OpenLayers on another
/// site fetch tiles and TileJSON with CORS): the link is the credential, as for `/links`.
/// Never with credentials, so a session cookie opens nothing cross-origin.
pub(super) fn open_to_any_page(response: &mut Response) {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

/// The query of a tile, as the OpenAPI document describes it (the handler reads the raw
/// query, where `rescale` and `bidx` may repeat).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct TileQuery {
    /// Bands to draw (1-based): one (gray, or with a colormap), or three (RGB).
    #[param(inline, value_type = Option<Vec<u32>>, minimum = 1, maximum = 65535)]
    bidx: Option<Vec<u32>>,
    /// `min,max` per band, or one for all (min below max).
    #[param(inline, value_type = Option<Vec<RescaleRange>>)]
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

/// `min,max`: two numbers.
#[derive(utoipa::ToSchema)]
#[schema(
    value_type = String,
    pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,15})?,-?[0-9]{1,15}(\.[0-9]{1,15})?$",
    example = "0,255"
)]
#[allow(dead_code)]
struct RescaleRange(String);

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

/// Why a worker did not answer, as the API says it.
pub(super) fn not_drawn(e: NotDrawn) -> AppError {
    match e {
        NotDrawn::Refused(why) => AppError::Unprocessable(why),
        NotDrawn::Unavailable(why) => {
            tracing::warn!(%why, "a tile worker did not answer");
            AppError::StorageUnavailable
        }
        NotDrawn::Gone => AppError::NotFound("tree item"),
    }
}

/// The item, if it holds a COG that tiles can be drawn from.
pub(super) fn drawable(item: &Item) -> AppResult<&str> {
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
#[utoipa::path(get, operation_id = "getTile", path = "/tree-items/{id}/tiles/WebMercatorQuad/{z}/{x}/{y}", tag = "tiles",
    params(("id" = Uuid, Path, description = "An item holding a COG"),
        ("z" = u32, Path, description = "Zoom level, 0 to 24", maximum = 24),
        ("x" = u64, Path, description = "Column, below 2^z"),
        ("y" = String, Path, description = "Row (below 2^z), optionally `@2x`, then `.png`, `.webp` or `.jpg`", example = "109@2x.png",
            pattern = r"^[0-9]{1,8}(@2x)?\.(png|webp|jpg|jpeg)$"),
        TileQuery,
        ("link" = Option<String>, Query, description = "The signed credential of a TileJSON's tile URLs, for clients that send no headers"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "The tile", content(("image/png"), ("image/webp"), ("image/jpeg"))),
        (status = 304, description = "Not modified"),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 403, description = "A link that was changed, has expired, or opens another file", body = ErrorBody),
        (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 422, description = "Not a COG, no tile of the grid, impossible parameters, or a file that cannot be placed on a web map", body = ErrorBody),
        (status = 503, description = "The tile workers or the file storage did not answer", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn tile(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    Path((id, z, x, y)): Path<(Uuid, u32, u64, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> AppResult<Response> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    // Who asks comes first: a caller with no right to the file learns nothing of it.
    let link = link_of(&pairs);
    let owner = reader(&state, user, link, id).await?;
    let (y, scale, format) = parse_y(&y).map_err(AppError::Unprocessable)?;
    tiles::check_tile(z, x, y).map_err(AppError::Unprocessable)?;
    let render = tiles::parse_query(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        format,
        scale,
    )
    .map_err(AppError::Unprocessable)?;
    let item = owned_item(&state, owner, id).await?;
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
    let job = TileJob {
        area: tiles::Area::Tile { z, x, y },
        render,
    };
    let etag = crate::tasks::TileKey::of(&blob, &job).etag();
    let linked = link.is_some();
    let cache_headers = |response: &mut Response| {
        if linked {
            open_to_any_page(response);
        }
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
        .map_err(not_drawn)?;
    let mut response = ([(header::CONTENT_TYPE, content_type)], image).into_response();
    cache_headers(&mut response);
    Ok(response)
}

/// The zoom levels a map client should ask for, as TiTiler computes them: the maximum is the
/// level whose resolution is closest to the file's own in EPSG:3857; the minimum, the level
/// closest to that resolution times 2 for each halving that keeps the image over 256 px.
/// `bounds` are the file's in WGS 84 (`bounds_wgs84`), `width` × `height` its size.
pub fn zoom_range(bounds: [f64; 4], width: usize, height: usize) -> (u32, u32) {
    const R: f64 = 6_378_137.0;
    let x = |lon: f64| lon.to_radians() * R;
    let y = |lat: f64| {
        (std::f64::consts::FRAC_PI_4 + lat.clamp(-85.05, 85.05).to_radians() / 2.0)
            .tan()
            .ln()
            * R
    };
    let (dx, dy) = (x(bounds[2]) - x(bounds[0]), y(bounds[3]) - y(bounds[1]));
    // GDAL's suggested warp output keeps the diagonal's pixel count.
    let res = (dx * dx + dy * dy).sqrt() / ((width * width + height * height) as f64).sqrt();
    let level_res = |z: u32| 2.0 * tiles::ORIGIN / 256.0 / f64::from(1u32 << z);
    let closest = |res: f64| {
        (0..=tiles::MAX_ZOOM)
            .min_by(|a, b| {
                let (da, db) = ((level_res(*a) - res).abs(), (level_res(*b) - res).abs());
                da.partial_cmp(&db).unwrap_or(std::cmp::Ordering::Equal)
            })
            .unwrap_or(0)
    };
    let max = closest(res);
    // GDAL sizes the warped image in whole pixels.
    let mut side = (dx / res).max(dy / res).round();
    let mut halvings = 0;
    while side > 256.0 {
        side /= 2.0;
        halvings += 1;
    }
    let min = closest(res * f64::from(1u32 << halvings.min(24))).min(max);
    (min, max)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct TileJsonQuery {
    /// The tiles' format (default png).
    #[param(inline, value_type = Option<TileFormat>)]
    tile_format: Option<String>,
    /// 1 (256 px, default) or 2 (512 px, `@2x`).
    #[param(minimum = 1, maximum = 2)]
    tile_scale: Option<u32>,
    /// Seconds the tile URLs keep working: 1 to 604800 (a week); a day when left out.
    #[param(minimum = 1, maximum = 604800)]
    expires_in: Option<u64>,
    /// A signed link (a tile URL's), for clients that send no headers: the document's tiles
    /// carry the same link, with its expiry (so no `expires_in` with it), and any page may
    /// read the answer (CORS).
    link: Option<String>,
}

/// Tile formats.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum TileFormat {
    Png,
    Webp,
    Jpg,
}

/// A TileJSON 3.0.0 document for the COG: paste its URL into MapLibre, Leaflet or OpenLayers
/// (or its `tiles` URL into QGIS as an XYZ layer). The tile URLs carry a signed `link` that
/// works with no header until it expires, and every drawing parameter given here (`bidx`,
/// `rescale`, `colormap_name`, …).
#[utoipa::path(get, operation_id = "getTileJson", path = "/tree-items/{id}/WebMercatorQuad/tilejson.json", tag = "tiles",
    params(("id" = Uuid, Path, description = "An item holding a COG"), TileJsonQuery, TileQuery),
    responses(
        (status = 200, description = "TileJSON 3.0.0", body = Object),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 403, description = "A link that was changed, has expired, or opens another file", body = ErrorBody),
        (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 422, description = "Not a COG, a file with no CRS, or impossible parameters", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn tilejson(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    Path(id): Path<Uuid>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> AppResult<Response> {
    let xyz = xyz(&state, user, id, query, &headers).await?;
    let template = xyz.template("{z}", "{x}", "{y}");
    let bounds = xyz.bounds;
    let linked = xyz.linked;
    let mut response = axum::Json(serde_json::json!({
        "tilejson": "3.0.0",
        "name": xyz.name,
        "version": "1.0.0",
        "scheme": "xyz",
        "tiles": [template],
        "minzoom": xyz.minzoom,
        "maxzoom": xyz.maxzoom,
        "bounds": bounds,
        "center": [(bounds[0] + bounds[2]) / 2.0, (bounds[1] + bounds[3]) / 2.0, xyz.minzoom],
    }))
    .into_response();
    if linked {
        open_to_any_page(&mut response);
    }
    Ok(response)
}

/// What a map client needs to ask for a COG's tiles: their URL (with a signed `link` and the
/// drawing parameters), the zoom range and the bounds in WGS 84.
pub(super) struct Xyz {
    pub name: String,
    pub minzoom: u32,
    pub maxzoom: u32,
    pub bounds: [f64; 4],
    /// 1, or 2 for 512-pixel tiles.
    pub scale: u32,
    /// The tiles' media type.
    pub content_type: &'static str,
    /// Asked for with a signed `link` (whose tiles then carry that same link).
    pub linked: bool,
    /// The tile URL up to the tile's column, row and the rest: `{prefix}{z}/{x}/{y}{suffix}`.
    prefix: String,
    suffix: String,
}

impl Xyz {
    /// The tile URL template, with the placeholders a client's convention names.
    pub fn template(&self, z: &str, x: &str, y: &str) -> String {
        format!("{}{z}/{x}/{y}{}", self.prefix, self.suffix)
    }
}

/// Reads a TileJSON-style query (`tile_format`, `tile_scale`, `expires_in`, and the drawing
/// parameters, checked now rather than on the first tile) for `user`'s COG `id`.
pub(super) async fn xyz(
    state: &AppState,
    user: Option<crate::store::User>,
    id: Uuid,
    query: Option<String>,
    headers: &HeaderMap,
) -> AppResult<Xyz> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let link = link_of(&pairs);
    let owner = reader(state, user, link, id).await?;
    let mut ext = "png".to_owned();
    let mut scale = 1;
    let mut expires_in = None;
    let mut forwarded = Vec::new();
    for (key, value) in &pairs {
        match key.as_str() {
            "link" => {}
            "tile_format" => ext = value.clone(),
            "tile_scale" => {
                scale = match value.as_str() {
                    "1" => 1,
                    "2" => 2,
                    _ => return Err(AppError::Unprocessable("tile_scale is 1 or 2.".into())),
                }
            }
            "expires_in" => {
                expires_in = Some(super::links::lifetime(value.parse::<u64>().ok())?);
            }
            _ => forwarded.push((key.as_str(), value.as_str())),
        }
    }
    let format = Format::parse(&ext).ok_or_else(|| {
        AppError::Unprocessable(format!("tile_format is png, webp or jpg; not {ext:?}."))
    })?;
    tiles::parse_query(forwarded.iter().copied(), format, scale)
        .map_err(AppError::Unprocessable)?;
    let item = owned_item(state, owner, id).await?;
    drawable(&item)?;
    let geo = item.geo_raster.clone().unwrap_or_default();
    let bounds: [f64; 4] = serde_json::from_value(geo["bounds_wgs84"].clone()).map_err(|_| {
        AppError::Unprocessable(format!(
            "{:?} has no CRS: it cannot be placed on a web map.",
            item.name
        ))
    })?;
    let width = geo["width"].as_u64().unwrap_or(1) as usize;
    let height = geo["height"].as_u64().unwrap_or(1) as usize;
    let (minzoom, maxzoom) = zoom_range(bounds, width, height);
    // A link's document hands on the link itself: a link never makes a longer-lived one.
    let token = match (link, expires_in) {
        (Some(_), Some(_)) => {
            return Err(AppError::Unprocessable(
                "A TileJSON asked for with a link keeps the link's expiry: leave out expires_in."
                    .into(),
            ))
        }
        (Some(link), None) => link.to_owned(),
        (None, expires_in) => {
            super::links::token_for(state, &item, expires_in.unwrap_or(DEFAULT_EXPIRES_IN)).await?
        }
    };
    let base = super::links::public_base(state, headers)?;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in &forwarded {
        query.append_pair(key, value);
    }
    query.append_pair("link", &token);
    let at2x = if scale == 2 { "@2x" } else { "" };
    Ok(Xyz {
        name: item.name,
        minzoom,
        maxzoom,
        bounds,
        scale,
        content_type: format.content_type(),
        linked: link.is_some(),
        prefix: format!("{base}/api/v1/tree-items/{id}/tiles/WebMercatorQuad/"),
        suffix: format!("{at2x}.{ext}?{}", query.finish()),
    })
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
