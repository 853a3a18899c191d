//! Uploads: a file streamed to disk (multipart with a `file` part, or a raw body with
//! `?name=`), described while still temporary, then made visible as a tree item.

use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::auth::AuthUser;
use super::extract::{IdempotencyHeader, IdempotencyKey, Query};
use super::names::clean_name;
use super::AppState;
use crate::error::{AppError, AppResult, ErrorBody};
use crate::store::idempotency::{self, Once};
use crate::store::items::{self, Item, ItemKind, NewItem};
use crate::store::Db;

pub fn router() -> OpenApiRouter<AppState> {
    // Uploads stream to disk under their own limit; other bodies keep axum's small default.
    let (schemas, paths, uploads) = routes!(upload);
    OpenApiRouter::new().routes((schemas, paths, uploads.layer(DefaultBodyLimit::disable())))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    /// The display name, for a raw-body upload (required there). A path keeps its last part.
    #[param(schema_with = super::names::name_schema)]
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

/// A file's bytes as they are, for a raw-body upload (documentation only). `format: binary`
/// makes generators take a file or a byte stream, not text.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct RawFile(Vec<u8>);

/// Upload a file, streamed to disk: multipart with a `file` part, or raw bytes with `?name=`.
#[utoipa::path(post, operation_id = "uploadFile", path = "/tree-items", tag = "tree items", params(UploadQuery, IdempotencyHeader),
    request_body(content(
        (UploadForm = "multipart/form-data"),
        (RawFile = "application/octet-stream"),
    )),
    responses(
        (status = 201, description = "Stored", body = Item),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 404, description = "No such folder", body = ErrorBody),
        (status = 413, description = "Over the upload limit; nothing is kept", body = ErrorBody),
        (status = 422, description = "An Idempotency-Key used for another upload", body = ErrorBody),
        (status = 507, description = "The server's disk is full", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn upload(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(query): Query<UploadQuery>,
    key: IdempotencyKey,
    headers: HeaderMap,
    request: Request,
) -> axum::response::Response {
    match store_upload(state, user, query, key, headers, request).await {
        Ok(created) => created,
        Err(error) => closing(error),
    }
}

/// The answer to a refused upload. The rest of its body is never read, so this connection
/// cannot carry another request: say so, or a client's pool would reuse it and fail.
pub(super) fn closing(error: AppError) -> axum::response::Response {
    let mut response = error.into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// A finished upload as the row of a new file: described while still scratch (so a request
/// dropped meanwhile leaves nothing behind; rasters show their geo metadata in the tree before
/// any conversion), then stored. Nothing refers to the blob until the row is inserted.
pub(super) async fn new_file(
    state: &AppState,
    user_id: Uuid,
    parent_id: Option<Uuid>,
    name: String,
    content_type: &str,
    writer: crate::storage::BlobWriter,
) -> AppResult<NewItem> {
    let geo_raster = state.inspector.describe(writer.path()).await;
    let size = writer.size();
    let blob = state
        .blobs
        .persist(writer, &|_| ())
        .await
        .map_err(AppError::from_io)?;
    Ok(NewItem {
        user_id,
        parent_id,
        name,
        kind: ItemKind::File,
        size,
        content_type: Some(content_type.to_string()),
        blob: Some(blob),
        geo_raster: geo_raster.map(|g| serde_json::to_value(g).expect("serialises")),
        source_id: None,
    })
}

async fn store_upload(
    state: AppState,
    user: crate::store::User,
    query: UploadQuery,
    key: IdempotencyKey,
    headers: HeaderMap,
    request: Request,
) -> AppResult<axum::response::Response> {
    let limit = state.config.max_upload_bytes;
    let grace = std::time::Duration::from_secs(state.config.body_timeout_secs);
    let min_rate = state.config.min_upload_bytes_per_sec;
    let request = request.map(|body| crate::limits::min_rate(body, min_rate, grace));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit + 64 * 1024) {
        // A client that waits for `100 Continue` sends nothing more; any other is writing the
        // body already.
        let expects = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !expects {
            drain(request.into_body().into_data_stream()).await;
        }
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
    let mut writer = state
        .blobs
        .writer(".upload")
        .await
        .map_err(AppError::from_io)?;
    let (name, parent_id, part_type) = if content_type.starts_with("multipart/form-data") {
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
                    write_stream(stream, &mut writer, limit, &state.blobs).await?;
                    file = Some((name, part_type));
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
        let (name, part_type) = file.ok_or_else(|| {
            AppError::BadRequest("A multipart upload needs a `file` part.".into())
        })?;
        (name, parent_id, part_type)
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
        write_stream(stream, &mut writer, limit, &state.blobs).await?;
        let raw_type = (!content_type.is_empty() && content_type != "application/octet-stream")
            .then_some(content_type);
        (name, query.parent_id, raw_type)
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
    let keyed = match key.0 {
        Some(_) => {
            let digest = file_digest(writer.path()).await?;
            let folder = parent_id.map(|f| f.to_string()).unwrap_or_default();
            key.keyed(&[
                b"upload",
                name.as_bytes(),
                folder.as_bytes(),
                content_type.as_bytes(),
                &digest,
            ])
        }
        None => None,
    };
    let new = new_file(&state, user_id, parent_id, name, content_type, writer).await?;
    let blob = new.blob.clone().expect("a file has a blob");
    // The folder is checked again in the insert's own call: it may have gone meanwhile.
    let inserted = state
        .store
        .call(move |c| {
            let work = |c: &mut Db| match new.parent_id {
                Some(folder) if !items::is_folder(c, new.user_id, folder)? => Ok(None),
                _ => items::insert(c, new).map(Some),
            };
            let answer = |item: &Option<Item>| {
                let json = serde_json::to_string(item.as_ref()?).expect("items serialise");
                Some((StatusCode::CREATED.as_u16(), json))
            };
            c.atomically(|c| idempotency::once(c, user_id, keyed.as_ref(), work, answer))
        })
        .await;
    match inserted {
        Ok(Once::Fresh(Some(item))) => {
            state.metrics.bytes_in.inc_by(item.size);
            Ok((StatusCode::CREATED, axum::Json(item)).into_response())
        }
        other => {
            // Sent again (the first upload's file is the one kept), or refused.
            state.blobs.remove(vec![blob]).await;
            match other {
                Ok(Once::Replayed { status, response }) => Ok((
                    StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED),
                    [(header::CONTENT_TYPE, "application/json")],
                    response,
                )
                    .into_response()),
                Ok(Once::Mismatch) => Err(crate::tasks::key_reused()),
                Ok(Once::Fresh(_)) => Err(AppError::NotFound("folder")),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// The SHA-256 of a file, for telling an upload sent again from another one.
async fn file_digest(path: &std::path::Path) -> AppResult<Vec<u8>> {
    use sha2::{Digest, Sha256};
    let path = path.to_path_buf();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let _span = span.enter();
        let mut digest = Sha256::new();
        std::io::copy(&mut std::fs::File::open(path)?, &mut digest)?;
        Ok(digest.finalize().to_vec())
    })
    .await
    .map_err(|e| AppError::Internal(e.into()))?
    .map_err(AppError::from_io)
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

pub(super) fn too_large(limit: u64) -> AppError {
    AppError::TooLarge(format!(
        "The upload is larger than the limit of {limit} bytes."
    ))
}

/// Streams a body into `writer`, never holding more than one chunk in memory (and, on object
/// storage, the parts in flight).
async fn write_stream(
    stream: impl Stream<Item = std::io::Result<Bytes>>,
    writer: &mut crate::storage::BlobWriter,
    limit: u64,
    blobs: &crate::storage::Storage,
) -> AppResult<u64> {
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| AppError::from_body(&e, "The upload was interrupted"))?;
        let size = writer.size();
        check_reserve(blobs, size, chunk.len())?;
        if size + chunk.len() as u64 > limit {
            drain(stream.as_mut()).await;
            return Err(too_large(limit));
        }
        writer.write(&chunk).await.map_err(AppError::from_io)?;
    }
    writer.close().await.map_err(AppError::from_io)
}

/// How much of a refused upload's body is still read and dropped before the 413: closing the
/// connection under a client that is still writing resets it, and the client then sees a
/// broken pipe instead of the answer (the lingering close nginx does). Past these bounds the
/// connection is closed anyway.
const DRAIN_BYTES: u64 = 64 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

async fn drain<E>(stream: impl Stream<Item = Result<Bytes, E>>) {
    let mut stream = std::pin::pin!(stream);
    let mut read = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Every MiB an upload writes, the disk's reserve is checked again: other uploads and
/// conversions fill the disk too (507).
pub(super) fn check_reserve(
    blobs: &crate::storage::Storage,
    written: u64,
    incoming: usize,
) -> AppResult<()> {
    if (written >> 20) != ((written + incoming as u64) >> 20) {
        blobs.check_room(0).map_err(AppError::from_io)?;
    }
    Ok(())
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
pub(super) fn stored_type(claimed: Option<&str>, name: &str) -> &'static str {
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
