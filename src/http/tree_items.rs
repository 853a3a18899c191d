//! Tree items: uploads streamed to disk, folders, listing, deletion, and starting a
//! conversion of a file.

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::extract::{Json, Path, Query};
use crate::http::AppState;
use crate::http::auth::AuthUser;
use crate::convert::RequestedOptions;
use crate::error::{AppError, AppResult, ErrorBody};
use crate::store::items::{self, Item, ItemKind, NewItem};
use crate::domain::NewTask;

pub fn router() -> OpenApiRouter<AppState> {
    // Uploads stream to disk under their own limit; other bodies keep axum's small default.
    let (schemas, paths, uploads) = routes!(upload, list);
    OpenApiRouter::new()
        .routes((schemas, paths, uploads.layer(DefaultBodyLimit::disable())))
        .routes(routes!(create_folder))
        .routes(routes!(get_item, delete_item))
        .routes(routes!(convert))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    /// The display name, for a raw-body upload (required there). A path keeps its last part.
    #[param(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\ .\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\]*$"
    )]
    name: Option<String>,
    /// The folder to upload into (the root when omitted).
    parent_id: Option<Uuid>,
}

/// A multipart upload (documentation only: the body is streamed, never held).
#[derive(ToSchema)]
#[allow(dead_code)]
struct UploadForm {
    #[schema(format = Binary, value_type = String)]
    file: Vec<u8>,
    parent_id: Option<Uuid>,
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
}

/// Display names keep only the last path segment a browser may send. (They never reach the
/// disk: stored files have server-made names.) The `pattern` on `UploadQuery::name` and
/// `NewFolder::name` states this rule for the OpenAPI document; a property test holds the two
/// together. Control characters and bidirectional-text
/// controls are refused anywhere in what was sent: they make `invoice\u{202E}fdp.exe` read as
/// `invoiceexe.pdf` in a file list.
fn clean_name(raw: &str) -> AppResult<String> {
    let bidi = |c: char| matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    let name = raw.rsplit(['/', '\\']).next().unwrap_or(raw).trim();
    if raw.chars().count() > 255
        || raw.chars().any(|c| c.is_control() || bidi(c))
        || name.chars().all(|c| c.is_whitespace() || c == '.')
    {
        return Err(AppError::BadRequest(
            "A name is 1 to 255 characters, with no control or bidirectional-text characters, and \
             not only spaces and dots."
                .into(),
        ));
    }
    Ok(name.to_string())
}

/// Upload a file, streamed to disk: multipart with a `file` part, or raw bytes with `?name=`.
#[utoipa::path(post, path = "/tree-items", tag = "tree items", params(UploadQuery),
    request_body(content(
        (UploadForm = "multipart/form-data"),
        (String = "application/octet-stream"),
    )),
    responses(
        (status = 201, description = "Stored", body = Item),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 404, description = "No such folder", body = ErrorBody),
        (status = 413, description = "Over the upload limit; nothing is kept", body = ErrorBody),
        (status = 507, description = "The server's disk is full", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn upload(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    request: Request,
) -> axum::response::Response {
    match store_upload(state, user, query, headers, request).await {
        Ok(created) => created.into_response(),
        Err(error) => {
            // The rest of a refused body is never read, so this connection cannot carry another
            // request: say so, or a client's pool would reuse it and fail.
            let mut response = error.into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

async fn store_upload(
    state: AppState,
    user: crate::store::User,
    query: UploadQuery,
    headers: HeaderMap,
    request: Request,
) -> AppResult<(StatusCode, axum::Json<Item>)> {
    let limit = state.config.max_upload_bytes;
    let grace = std::time::Duration::from_secs(state.config.body_timeout_secs);
    let min_rate = state.config.min_upload_bytes_per_sec;
    let request = request.map(|body| crate::limits::min_rate(body, min_rate, grace));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit + 64 * 1024) {
        return Err(too_large(limit));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();

    state
        .blobs
        .check_room(declared.unwrap_or(0))
        .map_err(AppError::from_io)?;
    let temp = state.blobs.temp(".upload");
    let (name, parent_id, size, part_type) = if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| {
                AppError::BadRequest(format!(
                    "The multipart body is malformed: {}",
                    e.body_text()
                ))
            })?;
        let mut file = None;
        let mut parent_id = query.parent_id;
        let mut other_bytes = 0usize;
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| AppError::from_body(&e, "The multipart body is malformed"))?
        {
            match field.name() {
                Some("file") if file.is_none() => {
                    let name = clean_name(
                        field
                            .file_name()
                            .or(query.name.as_deref())
                            .unwrap_or("upload"),
                    )?;
                    let part_type = field.content_type().map(str::to_string);
                    let stream = field.map(|r| r.map_err(std::io::Error::other));
                    let size = write_stream(stream, temp.path(), limit, &state.blobs).await?;
                    file = Some((name, size, part_type));
                }
                Some("parent_id") => {
                    let raw = small_field(field, &mut other_bytes).await?;
                    let text = raw.trim();
                    parent_id = if text.is_empty() || text == "null" {
                        None
                    } else {
                        Some(text.parse().map_err(|_| {
                            AppError::BadRequest("parent_id must be a folder id (a UUID).".into())
                        })?)
                    };
                }
                _ => {
                    small_field(field, &mut other_bytes).await?;
                }
            }
        }
        let (name, size, part_type) = file.ok_or_else(|| {
            AppError::BadRequest("A multipart upload needs a `file` part.".into())
        })?;
        (name, parent_id, size, part_type)
    } else {
        let name = clean_name(query.name.as_deref().ok_or_else(|| {
            AppError::BadRequest(
                "A raw upload needs `?name=` (or send multipart/form-data with a `file` part)."
                    .into(),
            )
        })?)?;
        let stream = request
            .into_body()
            .into_data_stream()
            .map(|r| r.map_err(std::io::Error::other));
        let size = write_stream(stream, temp.path(), limit, &state.blobs).await?;
        let raw_type = (!content_type.is_empty() && content_type != "application/octet-stream")
            .then_some(content_type);
        (name, query.parent_id, size, raw_type)
    };

    let content_type = stored_type(part_type.as_deref(), &name);
    let user_id = user.id;
    if let Some(folder) = parent_id {
        if !state
            .store
            .call(move |c| items::is_folder(c, user_id, folder))
            .await?
        {
            return Err(AppError::NotFound("folder"));
        }
    }
    // Rasters show their geo metadata in the tree before any conversion. The file is described
    // while still temporary, so a request dropped meanwhile leaves nothing behind.
    let geo_raster = state.inspector.describe(temp.path()).await;
    let blob = state.blobs.persist(temp).await.map_err(AppError::from_io)?;
    let new = NewItem {
        user_id,
        parent_id,
        name,
        kind: ItemKind::File,
        size,
        content_type: Some(content_type.to_string()),
        blob: Some(blob.clone()),
        geo_raster: geo_raster.map(|g| serde_json::to_value(g).expect("serialises")),
        source_id: None,
    };
    // The folder is checked again in the insert's own call: it may have gone meanwhile.
    let inserted = state
        .store
        .call(move |c| match new.parent_id {
            Some(folder) if !items::is_folder(c, new.user_id, folder)? => Ok(None),
            _ => items::insert(c, new).map(Some),
        })
        .await;
    match inserted {
        Ok(Some(item)) => {
            state.metrics.bytes_in.inc_by(item.size);
            Ok((StatusCode::CREATED, axum::Json(item)))
        }
        other => {
            state.blobs.remove(vec![blob]).await;
            Err(match other {
                Ok(_) => AppError::NotFound("folder"),
                Err(e) => e.into(),
            })
        }
    }
}

/// Bytes all the parts other than `file` may hold together: they are small form fields.
const FORM_FIELDS_LIMIT: usize = 16 * 1024;

/// Reads a small form field, counting it against `FORM_FIELDS_LIMIT` as it arrives, so a
/// huge field is refused without being held in memory.
async fn small_field(
    mut field: axum::extract::multipart::Field<'_>,
    used: &mut usize,
) -> AppResult<String> {
    let mut text = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| AppError::from_body(&e, "The multipart body is malformed"))?
    {
        *used += chunk.len();
        if *used > FORM_FIELDS_LIMIT {
            return Err(AppError::TooLarge(format!(
                "Form fields other than `file` may hold {FORM_FIELDS_LIMIT} bytes in all."
            )));
        }
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text)
        .map_err(|_| AppError::BadRequest("A form field is not UTF-8 text.".into()))
}

fn too_large(limit: u64) -> AppError {
    AppError::TooLarge(format!(
        "The upload is larger than the limit of {limit} bytes."
    ))
}

/// `application/json` or `application/…+json`, parameters aside: the media type itself, so
/// that `text/plain; x=json` (a type a page may send cross-site without asking) is refused.
fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json") && !sub.contains('/'))
}

/// Streams a body to `path`, never holding more than one chunk in memory.
async fn write_stream(
    stream: impl Stream<Item = std::io::Result<Bytes>>,
    path: &std::path::Path,
    limit: u64,
    blobs: &crate::tree::Blobs,
) -> AppResult<u64> {
    let file = tokio::fs::File::create(path)
        .await
        .map_err(AppError::from_io)?;
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut size = 0u64;
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| AppError::from_body(&e, "The upload was interrupted"))?;
        // Every MiB, the disk's reserve is checked again: other uploads and conversions
        // fill the disk too.
        if (size >> 20) != ((size + chunk.len() as u64) >> 20) {
            blobs.check_room(0).map_err(AppError::from_io)?;
        }
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large(limit));
        }
        out.write_all(&chunk).await.map_err(AppError::from_io)?;
    }
    out.flush().await.map_err(AppError::from_io)?;
    Ok(size)
}

/// Types a stored file may be served with: raster formats, never anything a browser would run
/// (an upload named `.tif` can be an HTML page too).
const SERVED_TYPES: &[&str] = &[
    "image/tiff",
    "image/jp2",
    "image/png",
    "image/jpeg",
    "application/x-netcdf",
    "application/zip",
    "application/octet-stream",
];

/// The type a file is served with: the client's, when it is one of ours, else one from the name.
fn stored_type(claimed: Option<&str>, name: &str) -> &'static str {
    let claimed = claimed.map(|t| {
        t.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match claimed.and_then(|t| SERVED_TYPES.iter().find(|s| **s == t)) {
        Some(&"application/octet-stream") | None => guess_type(name),
        Some(known) => known,
    }
}

fn guess_type(name: &str) -> &'static str {
    let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "tif" | "tiff" => "image/tiff",
        "jp2" => "image/jp2",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "nc" => "application/x-netcdf",
        "zip" => "application/zip",
        "hgt" => "application/octet-stream",
        _ => "application/octet-stream",
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewFolder {
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\ .\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\]*$"
    )]
    name: String,
    #[serde(default)]
    parent_id: Option<Uuid>,
}

/// Create a folder.
#[utoipa::path(post, path = "/tree-items/folders", tag = "tree items", request_body = NewFolder,
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
#[utoipa::path(get, path = "/tree-items", tag = "tree items", params(ListQuery),
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
        .call(move |c| items::get(c, user, id))
        .await?
        .ok_or(AppError::NotFound("tree item"))
}

/// One item.
#[utoipa::path(get, path = "/tree-items/{id}", tag = "tree items", params(("id" = Uuid, Path, description = "Item id")),
    responses((status = 200, description = "The item", body = Item), (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody)), security(("bearer" = []), ("cookie" = [])))]
async fn get_item(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> AppResult<axum::Json<Item>> {
    Ok(axum::Json(owned_item(&state, user.id, id).await?))
}

/// Delete an item; a folder goes with everything in it.
#[utoipa::path(delete, path = "/tree-items/{id}", tag = "tree items", params(("id" = Uuid, Path, description = "Item id")),
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
/// optional: no body, an empty one or `null` means every default.
#[utoipa::path(post, path = "/tree-items/{id}/convert-to-geo-raster", tag = "conversion",
    params(("id" = Uuid, Path, description = "The file to convert")),
    request_body(content = Option<RequestedOptions>, content_type = "application/json"),
    responses(
        (status = 200, description = "Queued", body = Started),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 415, description = "Options not sent as JSON", body = ErrorBody),
        (status = 422, description = "Impossible options, or a folder", body = ErrorBody),
        (status = 429, description = "Too many tasks queued or running for this user", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn convert(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<axum::Json<Started>> {
    if state.shutdown.is_cancelled() {
        return Err(AppError::ShuttingDown);
    }
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.map_err(|e| {
        if e.to_string().contains("length limit") {
            AppError::TooLarge("The options body is larger than 64 KiB.".into())
        } else {
            AppError::BadRequest(format!("The body could not be read: {e}"))
        }
    })?;
    let requested: RequestedOptions = if bytes.iter().all(u8::is_ascii_whitespace) {
        RequestedOptions::default()
    } else {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .is_none_or(|t| is_json_type(t.to_str().unwrap_or("")));
        if !is_json {
            return Err(AppError::UnsupportedMediaType(
                "Send the options as JSON with `Content-Type: application/json`.".into(),
            ));
        }
        serde_json::from_slice::<Option<RequestedOptions>>(&bytes)
            .map(Option::unwrap_or_default)
            .map_err(|e| {
                if e.is_syntax() || e.is_eof() {
                    AppError::BadRequest(format!("The body is not valid JSON: {e}"))
                } else {
                    AppError::Unprocessable(format!("Invalid conversion options: {e}"))
                }
            })?
    };
    let options = requested.validate().map_err(AppError::Unprocessable)?;
    if let Some(crs) = &options.target_crs {
        state
            .inspector
            .check_crs(crs)
            .await
            .map_err(AppError::Unprocessable)?;
    }
    let item = owned_item(&state, user.id, id).await?;
    let Some(blob) = item.blob.clone().filter(|_| item.kind == ItemKind::File) else {
        return Err(AppError::Unprocessable(format!(
            "{:?} is a folder; convert a file.",
            item.name
        )));
    };
    let new = NewTask {
        user_id: user.id,
        source_id: item.id,
        source_blob: blob,
        source_name: item.name,
        parent_id: item.parent_id,
        options,
    };
    let task = state
        .tasks
        .submit(new, state.config.max_active_tasks_per_user)
        .await?;
    Ok(axum::Json(Started {
        task_id: task.id,
        state: task.state,
        tree_item_id: task.source_id,
        status_url: format!("/api/v1/tasks/{}/status", task.id),
        events_url: format!("/api/v1/tasks/{}/events", task.id),
        ws_url: "/api/v1/ws".into(),
    }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use utoipa::{IntoParams, PartialSchema};

    use super::{clean_name, NewFolder, UploadQuery};

    /// The name pattern, as the OpenAPI document states it for folders and raw uploads.
    fn documented_pattern() -> regex::Regex {
        let folder = serde_json::to_value(NewFolder::schema()).unwrap();
        let folder = folder["properties"]["name"]["pattern"]
            .as_str()
            .unwrap()
            .to_owned();
        let params = serde_json::to_value(UploadQuery::into_params(|| None)).unwrap();
        let upload = params
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "name")
            .unwrap()["schema"]["pattern"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(folder, upload);
        regex::Regex::new(&folder).unwrap()
    }

    /// Characters where the rule has edges: separators, dots, spaces of every kind, controls,
    /// bidirectional-text controls, and plain letters.
    fn name_char() -> impl Strategy<Value = char> {
        prop_oneof![
            prop::sample::select(vec![
                '/', '\\', '.', ' ', '\t', '\n', '\0', '\u{7f}', '\u{85}', '\u{9f}', '\u{a0}',
                '\u{1680}', '\u{2000}', '\u{200a}', '\u{200b}', '\u{200e}', '\u{202e}', '\u{2028}',
                '\u{202f}', '\u{205f}', '\u{2066}', '\u{3000}', '\u{61c}', '\u{feff}',
            ]),
            prop::char::range('a', 'e'),
            any::<char>(),
        ]
    }

    proptest! {
        #[test]
        fn the_documented_pattern_is_the_rule_the_server_applies(
            chars in prop::collection::vec(name_char(), 0..12)
        ) {
            let name: String = chars.into_iter().collect();
            let documented = documented_pattern().is_match(&name) && name.chars().count() <= 255;
            prop_assert_eq!(clean_name(&name).is_ok(), documented, "{:?}", name);
        }
    }

    #[test]
    fn a_path_keeps_its_last_part() {
        assert_eq!(clean_name("../../etc/passwd.tif").unwrap(), "passwd.tif");
        assert_eq!(clean_name("C:\\Users\\me\\scene.tif").unwrap(), "scene.tif");
        for refused in ["", " ", "..", "...", "a/ . ", "x/", "a\u{202E}b", "a\0/b"] {
            assert!(clean_name(refused).is_err(), "{refused:?}");
        }
    }
}
