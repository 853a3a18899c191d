//! What catalogues and map clients ask of a COG besides tiles, with TiTiler's shapes where it
//! has them: `/info`, `/statistics` (over a read of at most 1024 pixels on the longest side),
//! and `/stac`, a STAC 1.1 Item with the projection and raster extensions whose asset opens
//! the COG by a signed link.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use axum::extract::RawQuery;

use super::auth::{AuthUser, MaybeUser};
use super::extract::{Path, Query};
use super::tiles::{drawable, not_drawn};
use super::tree_items::owned_item;
use super::AppState;
use crate::domain::facts::{self, RasterFacts, StacContext};
use crate::domain::tiles;
use crate::error::{AppError, AppResult, ErrorBody};
use crate::store::Item;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(info))
        .routes(routes!(statistics))
        .routes(routes!(stac))
        .routes(routes!(preview))
        .routes(routes!(point))
}

/// Every band's value at a longitude and latitude (WGS 84), as TiTiler's `/point`: `null`
/// where a band has no data there.
#[utoipa::path(get, operation_id = "getPoint", path = "/tree-items/{id}/point/{lon_lat}", tag = "tiles",
    params(("id" = Uuid, Path, description = "An item holding a COG"),
        ("lon_lat" = String, Path, description = "`longitude,latitude` in WGS 84, as TiTiler's `point/{lon},{lat}`", example = "-77.5,24.5",
            pattern = r"^-?[0-9]{1,3}(\.[0-9]{1,15})?,-?[0-9]{1,2}(\.[0-9]{1,15})?$")),
    responses((status = 200, description = "`{\"coordinates\", \"values\", \"band_names\"}`", body = Object),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 422, description = "Not a COG, a file with no CRS, or a point outside it", body = ErrorBody), (status = 503, description = "The workers or the file storage did not answer", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn point(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, lon_lat)): Path<(Uuid, String)>,
) -> AppResult<Json<Value>> {
    let (lon, lat) = lon_lat
        .split_once(',')
        .and_then(|(lon, lat)| {
            Some((
                lon.trim().parse::<f64>().ok()?,
                lat.trim().parse::<f64>().ok()?,
            ))
        })
        .ok_or_else(|| {
            AppError::Unprocessable(format!("{lon_lat:?} is not `longitude,latitude`."))
        })?;
    if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) {
        return Err(AppError::Unprocessable(
            "A point is a longitude from -180 to 180 and a latitude from -90 to 90.".into(),
        ));
    }
    let item = owned_item(&state, user.id, id).await?;
    let blob = drawable(&item)?.to_owned();
    let values = state
        .renderer
        .point(&state.blobs, &blob, lon, lat)
        .await
        .map_err(not_drawn)?;
    let names: Vec<String> = (1..=values.len()).map(|b| format!("b{b}")).collect();
    Ok(Json(serde_json::json!({
        "coordinates": [lon, lat],
        "values": values,
        "band_names": names,
        "band_descriptions": names,
    })))
}

/// The largest preview drawn.
const MAX_PREVIEW: u32 = 2048;

/// The whole COG as one PNG in its own CRS, its longest side fitted to `max_size` (1024 by
/// default, never enlarged), drawn with the tile parameters (`bidx`, `rescale`,
/// `colormap_name`, `nodata`, `return_mask`), as TiTiler's `/preview`.
#[utoipa::path(get, operation_id = "getPreview", path = "/tree-items/{id}/preview.png", tag = "tiles",
    params(("id" = Uuid, Path, description = "An item holding a COG"),
        ("max_size" = Option<u32>, Query, description = "The longest side, 1 to 2048 (default 1024)", minimum = 1, maximum = 2048),
        super::tiles::TileQuery),
    responses((status = 200, description = "The preview", content_type = "image/png"),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 422, description = "Not a COG, or impossible parameters", body = ErrorBody), (status = 503, description = "The workers or the file storage did not answer", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn preview(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    Path(id): Path<Uuid>,
    RawQuery(query): RawQuery,
) -> AppResult<axum::response::Response> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let link = super::tiles::link_of(&pairs);
    let owner = super::tiles::reader(&state, user, link, id).await?;
    let mut max_size = 1024;
    let mut rest = Vec::new();
    for (key, value) in &pairs {
        if key == "max_size" {
            max_size = value
                .parse::<u32>()
                .ok()
                .filter(|m| (1..=MAX_PREVIEW).contains(m))
                .ok_or_else(|| {
                    AppError::Unprocessable(format!("max_size is 1 to {MAX_PREVIEW} pixels."))
                })?;
        } else {
            rest.push((key.as_str(), value.as_str()));
        }
    }
    let render =
        tiles::parse_query(rest, tiles::Format::Png, 1).map_err(AppError::Unprocessable)?;
    let item = owned_item(&state, owner, id).await?;
    let blob = drawable(&item)?.to_owned();
    let job = tiles::TileJob {
        area: tiles::Area::Preview { max_size },
        render,
    };
    let (_, image) = state
        .renderer
        .tile(&state.blobs, &blob, job)
        .await
        .map_err(not_drawn)?;
    let mut response = axum::response::IntoResponse::into_response((
        [(axum::http::header::CONTENT_TYPE, "image/png")],
        image,
    ));
    if link.is_some() {
        super::tiles::open_to_any_page(&mut response);
    }
    Ok(response)
}

/// The caller's COG item and what a worker read of it.
async fn read(
    state: &AppState,
    user: Uuid,
    id: Uuid,
) -> AppResult<(Item, std::sync::Arc<RasterFacts>)> {
    let item = owned_item(state, user, id).await?;
    let blob = drawable(&item)?.to_owned();
    let facts = state
        .renderer
        .facts(&state.blobs, &blob)
        .await
        .map_err(not_drawn)?;
    Ok((item, facts))
}

/// A COG's description as TiTiler's `/info` gives it: bounds (in its CRS), CRS, bands' types,
/// nodata, colour interpretation, scales, offsets, size and overviews.
#[utoipa::path(get, operation_id = "getCogInfo", path = "/tree-items/{id}/info", tag = "tiles",
    params(("id" = Uuid, Path, description = "An item holding a COG")),
    responses((status = 200, description = "The description", body = Object),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 422, description = "Not a COG", body = ErrorBody), (status = 503, description = "The workers or the file storage did not answer", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn info(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> AppResult<Json<Value>> {
    let (item, facts) = read(&state, user.id, id).await?;
    let geo = item.geo_raster.unwrap_or_default();
    let bounds: [f64; 4] = serde_json::from_value(geo["bounds"].clone()).unwrap_or_default();
    let crs = facts
        .epsg
        .map(|c| format!("http://www.opengis.net/def/crs/EPSG/0/{c}"));
    Ok(Json(facts::info(&facts, bounds, crs.as_deref())))
}

/// Per-band statistics as TiTiler's `/statistics` gives them: min, max, mean, count, sum,
/// std, median, majority, minority, unique, a 10-bin histogram, valid and masked pixels,
/// percentiles 2 and 98; over a read of at most 1024 pixels on the longest side.
#[utoipa::path(get, operation_id = "getStatistics", path = "/tree-items/{id}/statistics", tag = "tiles",
    params(("id" = Uuid, Path, description = "An item holding a COG")),
    responses((status = 200, description = "`{\"b1\": {…}, …}`", body = Object),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 422, description = "Not a COG", body = ErrorBody), (status = 503, description = "The workers or the file storage did not answer", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn statistics(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> AppResult<Json<Value>> {
    let (_, facts) = read(&state, user.id, id).await?;
    Ok(Json(facts::statistics(&facts)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StacQuery {
    /// Seconds the asset's link keeps working: 1 to 604800 (a week); a week when left out.
    #[param(minimum = 1, maximum = 604800)]
    expires_in: Option<u64>,
}

/// A STAC 1.1 Item for the COG: geometry (its footprint in WGS 84), bbox, the projection
/// extension (code, bbox, shape, transform; WKT2 and PROJJSON when there is no EPSG code),
/// and a `data` asset whose href opens the COG with no credentials (a signed link) and whose
/// `raster:bands` carry data type, nodata, scale, offset, statistics and a histogram.
#[utoipa::path(get, operation_id = "getStacItem", path = "/tree-items/{id}/stac", tag = "tiles",
    params(("id" = Uuid, Path, description = "An item holding a COG"), StacQuery),
    responses((status = 200, description = "A STAC Item (GeoJSON Feature)", body = Object),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 422, description = "Not a COG, or one with no CRS", body = ErrorBody), (status = 503, description = "The workers or the file storage did not answer", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn stac(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Query(q): Query<StacQuery>,
    headers: HeaderMap,
) -> AppResult<Json<Value>> {
    let expires_in =
        super::links::lifetime(Some(q.expires_in.unwrap_or(super::links::MAX_EXPIRES_IN)))?;
    let (item, facts) = read(&state, user.id, id).await?;
    let link = super::links::link_to(&state, &headers, &item, expires_in).await?;
    let id = item.id.to_string();
    let context = StacContext {
        id: &id,
        title: &item.name,
        datetime: &item.created_at,
        href: &link.url,
    };
    facts::stac_item(&facts, &context)
        .map(Json)
        .map_err(AppError::Unprocessable)
}
