//! Tree items: folders, listing, deletion, and starting a conversion of a file. (Uploads,
//! which create files, are in `uploads`.)

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::auth::AuthUser;
use super::extract::{IdempotencyHeader, IdempotencyKey, Json, OptionalJson, Path, Query};
use super::names::clean_name;
use super::AppState;
use crate::domain::options::{Conversion, RequestedOptions};
use crate::domain::NewTask;
use crate::error::{AppError, AppResult, ErrorBody};
use crate::store::items::{self, Item, ItemKind, NewItem};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(create_folder))
        .routes(routes!(get_item, delete_item))
        .routes(routes!(convert))
}

/// The answer to starting a conversion; existing clients test for exactly 200.
#[derive(Serialize, ToSchema)]
pub struct Started {
    pub task_id: Uuid,
    pub state: crate::tasks::TaskState,
    pub tree_item_id: Uuid,
    pub status_url: String,
    pub events_url: String,
    pub ws_url: String,
    /// On `POST /tasks/{id}/retry`: the task this one retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<Uuid>,
}

impl Started {
    /// The answer for a task just queued (or queued by the first of several identical
    /// requests).
    pub fn new(task_id: Uuid, tree_item_id: Uuid, retry_of: Option<Uuid>) -> Started {
        Started {
            task_id,
            state: crate::tasks::TaskState::Pending,
            tree_item_id,
            status_url: format!("/api/v1/tasks/{task_id}/status"),
            events_url: format!("/api/v1/tasks/{task_id}/events"),
            ws_url: "/api/v1/ws".into(),
            retry_of,
        }
    }
}

/// Checks requested options, and asks a worker whether GDAL knows a target CRS.
pub async fn conversion_options(
    state: &AppState,
    requested: RequestedOptions,
) -> AppResult<Conversion> {
    let options = requested.validate().map_err(AppError::Unprocessable)?;
    if let Some(crs) = &options.target_crs {
        state
            .inspector
            .check_crs(crs)
            .await
            .map_err(AppError::Unprocessable)?;
    }
    Ok(options)
}

/// Queues the conversion of `item` (a file of its owner's) with checked `options`; 422 for a
/// folder, 429 when its owner has too many tasks.
pub async fn submit_conversion(
    state: &AppState,
    item: &Item,
    options: Conversion,
    callbacks: Vec<crate::domain::webhook::Callback>,
    keyed: Option<crate::store::idempotency::Keyed>,
) -> AppResult<Uuid> {
    let Some(blob) = item.blob.clone().filter(|_| item.kind == ItemKind::File) else {
        return Err(AppError::Unprocessable(format!(
            "{:?} is a folder; convert a file.",
            item.name
        )));
    };
    let new = NewTask {
        user_id: item.user_id,
        source_id: item.id,
        source_blob: blob,
        source_name: item.name.clone(),
        parent_id: item.parent_id,
        options,
        retry_of: None,
        callbacks,
    };
    let limit = state.config.max_active_tasks_per_user;
    state.tasks.submit(new, limit, keyed).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewFolder {
    #[schema(schema_with = super::names::name_schema)]
    name: String,
    #[serde(default)]
    parent_id: Option<Uuid>,
}

/// Create a folder.
#[utoipa::path(post, operation_id = "createFolder", path = "/tree-items/folders", tag = "tree items", request_body = NewFolder,
    responses(
        (status = 201, description = "Created", body = Item),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 404, description = "No such parent folder", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "A field has the wrong type", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn create_folder(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<NewFolder>,
) -> AppResult<impl IntoResponse> {
    let name = clean_name(&body.name)?;
    let item = state
        .store
        .call(move |c| {
            if let Some(parent) = body.parent_id {
                if !items::is_folder(c, user.id, parent)? {
                    return Ok(None);
                }
            }
            items::insert(
                c,
                NewItem {
                    user_id: user.id,
                    parent_id: body.parent_id,
                    name,
                    kind: ItemKind::Folder,
                    size: 0,
                    content_type: None,
                    blob: None,
                    geo_raster: None,
                    source_id: None,
                },
            )
            .map(Some)
        })
        .await?
        .ok_or(AppError::NotFound("folder"))?;
    Ok((StatusCode::CREATED, axum::Json(item)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// The folder to list (the root when omitted).
    parent_id: Option<Uuid>,
}

/// The children of a folder: folders first, then by name.
#[utoipa::path(get, operation_id = "listTreeItems", path = "/tree-items", tag = "tree items", params(ListQuery),
    responses((status = 200, description = "The folder's children", body = Vec<Item>), (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody)), security(("bearer" = []), ("cookie" = [])))]
async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(query): Query<ListQuery>,
) -> AppResult<axum::Json<Vec<Item>>> {
    let children = state
        .store
        .call(move |c| {
            if let Some(parent) = query.parent_id {
                if !items::is_folder(c, user.id, parent)? {
                    return Ok(None);
                }
            }
            items::children(c, user.id, query.parent_id).map(Some)
        })
        .await?
        .ok_or(AppError::NotFound("folder"))?;
    Ok(axum::Json(children))
}

pub async fn owned_item(state: &AppState, user: Uuid, id: Uuid) -> AppResult<Item> {
    state
        .store
        .read(move |c| items::get(c, user, id))
        .await?
        .ok_or(AppError::NotFound("tree item"))
}

/// One item.
#[utoipa::path(get, operation_id = "getTreeItem", path = "/tree-items/{id}", tag = "tree items", params(("id" = Uuid, Path, description = "Item id")),
    responses((status = 200, description = "The item", body = Item), (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody)), security(("bearer" = []), ("cookie" = [])))]
async fn get_item(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> AppResult<axum::Json<Item>> {
    Ok(axum::Json(owned_item(&state, user.id, id).await?))
}

/// Delete an item; a folder goes with everything in it.
#[utoipa::path(delete, operation_id = "deleteTreeItem", path = "/tree-items/{id}", tag = "tree items", params(("id" = Uuid, Path, description = "Item id")),
    responses((status = 204, description = "Deleted"), (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody)), security(("bearer" = []), ("cookie" = [])))]
async fn delete_item(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> AppResult<StatusCode> {
    let blobs = state
        .store
        .call(move |c| items::delete_tree(c, user.id, id))
        .await?
        .ok_or(AppError::NotFound("tree item"))?;
    state.blobs.remove(blobs).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Convert a file to a Cloud-Optimized GeoTIFF in the background. The options body is
/// optional: no body, an empty one or `null` means every default. With an `Idempotency-Key`,
/// the same request sent again within a day answers the task the first one queued.
#[utoipa::path(post, operation_id = "startConversion", path = "/tree-items/{id}/convert-to-geo-raster", tag = "conversion",
    params(("id" = Uuid, Path, description = "The file to convert"), IdempotencyHeader),
    request_body(content = Option<RequestedOptions>, content_type = "application/json"),
    responses(
        (status = 200, description = "Queued", body = Started),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 415, description = "Options not sent as JSON", body = ErrorBody),
        (status = 422, description = "Impossible options, a folder, or an Idempotency-Key used for another request", body = ErrorBody),
        (status = 429, description = "Too many tasks queued or running for this user", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn convert(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    key: IdempotencyKey,
    OptionalJson(mut requested): OptionalJson<RequestedOptions>,
) -> AppResult<axum::Json<Started>> {
    if state.shutdown.is_cancelled() {
        return Err(AppError::ShuttingDown);
    }
    let callback_url = requested.callback_url.take();
    let callbacks = super::webhooks::callbacks(&state, user.id, callback_url.clone()).await?;
    let options = conversion_options(&state, requested).await?;
    let item = owned_item(&state, user.id, id).await?;
    let options_json = serde_json::to_vec(&options).expect("options serialise");
    let callback = callback_url.unwrap_or_default();
    let keyed = key.keyed(&[
        b"convert",
        item.id.as_bytes(),
        &options_json,
        callback.as_bytes(),
    ]);
    let task_id = submit_conversion(&state, &item, options, callbacks, keyed).await?;
    Ok(axum::Json(Started::new(task_id, item.id, None)))
}
