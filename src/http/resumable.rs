//! Resumable uploads over tus 1.0.0 (<https://tus.io/protocols/resumable-upload>), with the
//! creation, creation-with-upload, creation-defer-length, termination, checksum and expiration
//! extensions. Each accepted chunk becomes a stored blob and moves the offset in one
//! conditional update, after the blob is durable (fsynced, or verified on object storage): the
//! offset a client resumes from never runs ahead of what a restarted server still has, and any
//! node can take the next chunk. The last chunk joins them into one file, which becomes a tree
//! item exactly as `POST /tree-items` makes one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::auth::AuthUser;
use super::extract::Path;
use super::names::clean_name;
use super::uploads::{check_reserve, closing, new_file, stored_type, too_large};
use super::AppState;
use crate::domain::options::{Deferred, RequestedOptions};
use crate::domain::tus::{self, Algorithm};
use crate::domain::webhook::{Callback, EventType};
use crate::domain::NewTask;
use crate::error::{AppError, AppResult, ErrorBody};
use crate::storage::BlobWriter;
use crate::store::items;
use crate::store::resumable::{self, Chunk, NewResumable, Resumable};
use crate::tasks::lifecycle::{self, Submitted};

pub fn router() -> OpenApiRouter<AppState> {
    let (schemas, paths, collection) = routes!(tus_options, create_upload, list_uploads);
    let (schemas_one, paths_one, one) =
        routes!(upload_offset, upload_chunk, delete_upload, upload_status);
    OpenApiRouter::new()
        .routes((
            schemas,
            paths,
            collection.layer(DefaultBodyLimit::disable()),
        ))
        .routes((
            schemas_one,
            paths_one,
            one.layer(DefaultBodyLimit::disable()),
        ))
        .layer(axum::middleware::map_response(protocol_headers))
}

const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");
const UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
const UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
const UPLOAD_ITEM_ID: HeaderName = HeaderName::from_static("upload-item-id");
const UPLOAD_TASK_ID: HeaderName = HeaderName::from_static("upload-task-id");

/// The extensions `OPTIONS` advertises.
const EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration";

/// The body type of a chunk, as the protocol requires.
const CHUNK_TYPE: &str = "application/offset+octet-stream";

/// How long a request waits for another one still writing to the same upload (a client that
/// resumes at once after its connection broke may arrive before the server saw the break).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// tus's `X-HTTP-Method-Override`, for clients behind proxies that pass only GET and POST: a
/// `POST` to an upload's URL that names `PATCH`, `DELETE` or `HEAD` is routed as that method.
/// It runs before routing (from `serve`), and only for upload URLs.
pub fn method_override<B>(request: &mut axum::http::Request<B>) {
    use axum::http::Method;
    if request.method() != Method::POST || !request.uri().path().starts_with("/api/v1/uploads/") {
        return;
    }
    let wanted = request
        .headers()
        .get("x-http-method-override")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_uppercase());
    let method = match wanted.as_deref() {
        Some("PATCH") => Method::PATCH,
        Some("DELETE") => Method::DELETE,
        Some("HEAD") => Method::HEAD,
        _ => return,
    };
    *request.method_mut() = method;
}

/// Every answer says which protocol version it speaks; a refusal for the wrong one also says
/// which versions there are.
async fn protocol_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(TUS_RESUMABLE, HeaderValue::from_static(tus::VERSION));
    if response.status() == StatusCode::PRECONDITION_FAILED {
        response.headers_mut().insert(
            HeaderName::from_static("tus-version"),
            HeaderValue::from_static(tus::VERSION),
        );
    }
    response
}

fn text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> AppResult<Option<&'a str>> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| AppError::BadRequest(format!("{name} is not ASCII text.")))
        })
        .transpose()
}

fn bad_header(e: tus::HeaderError) -> AppError {
    AppError::BadRequest(e.0)
}

/// Every request but `OPTIONS` and the JSON `GET`s names the protocol version.
fn speaks_tus(headers: &HeaderMap) -> AppResult<()> {
    match text(headers, &TUS_RESUMABLE)? {
        Some(version) if version.trim() == tus::VERSION => Ok(()),
        Some(version) => Err(AppError::PreconditionFailed(format!(
            "This server speaks tus {}, not {version:?}.",
            tus::VERSION
        ))),
        None => Err(AppError::PreconditionFailed(format!(
            "This is a tus endpoint: send Tus-Resumable: {}.",
            tus::VERSION
        ))),
    }
}

/// Uploads that a request is writing to on this node. A second request for the same upload
/// waits for the first to end (see [`LOCK_WAIT`]); across nodes, the conditional offset update
/// keeps two writers from both landing.
#[derive(Clone, Default)]
pub struct Writing {
    busy: Arc<Mutex<HashSet<Uuid>>>,
    released: Arc<Notify>,
}

pub struct WriteGuard {
    writing: Writing,
    id: Uuid,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.writing
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        self.writing.released.notify_waiters();
    }
}

impl Writing {
    async fn lock(&self, id: Uuid) -> AppResult<WriteGuard> {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self
                .busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id)
            {
                return Ok(WriteGuard {
                    writing: self.clone(),
                    id,
                });
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(AppError::Locked(
                    "Another request is still writing to this upload; try again in a moment."
                        .into(),
                ));
            }
        }
    }

    /// Waits (at most [`LOCK_WAIT`]) until no request writes to `id` on this node, so that an
    /// offset read next counts the bytes of a request whose client just went away; true when
    /// there was one to wait for.
    async fn settled(&self, id: Uuid) -> bool {
        if !self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
        {
            return false;
        }
        let _ = self.lock(id).await;
        true
    }
}

/// The protocol version a tus request names in `Tus-Resumable` (documentation only).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
enum TusResumable {
    #[serde(rename = "1.0.0")]
    V1,
}

/// An upload's state, for `GET /uploads/{id}` and the list of unfinished ones.
#[derive(Serialize, ToSchema)]
struct UploadStatus {
    id: Uuid,
    /// The name the file gets (from the `filename` metadata).
    name: String,
    parent_id: Option<Uuid>,
    /// Bytes received and stored: where the upload resumes.
    offset: u64,
    /// The file's size; `null` while the client defers it.
    length: Option<u64>,
    complete: bool,
    created_at: String,
    /// When an unfinished upload is deleted, unless more bytes arrive before.
    expires_at: String,
    /// The tree item the upload became, once complete.
    tree_item_id: Option<Uuid>,
    /// The conversion queued on completion (metadata `convert`).
    task_id: Option<Uuid>,
    /// Why the conversion asked for could not be queued.
    conversion_error: Option<String>,
}

impl From<Resumable> for UploadStatus {
    fn from(u: Resumable) -> UploadStatus {
        UploadStatus {
            id: u.id,
            complete: u.complete(),
            name: u.name,
            parent_id: u.parent_id,
            offset: u.received,
            length: u.length,
            created_at: u.created_at,
            expires_at: u.expires_at,
            tree_item_id: u.item_id,
            task_id: u.task_id,
            conversion_error: u.conversion_error,
        }
    }
}

/// Discover the tus protocol version, extensions, size limit and checksum algorithms.
#[utoipa::path(options, operation_id = "describeResumableUploads", path = "/uploads", tag = "resumable uploads",
    responses((status = 204, description = "What this endpoint supports, in Tus-Version, Tus-Extension, Tus-Max-Size and Tus-Checksum-Algorithm")))]
async fn tus_options(State(state): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        [
            ("tus-version", tus::VERSION.to_string()),
            ("tus-extension", EXTENSIONS.to_string()),
            ("tus-max-size", state.config.max_upload_bytes.to_string()),
            (
                "tus-checksum-algorithm",
                tus::CHECKSUM_ALGORITHMS.to_string(),
            ),
        ],
    )
}

/// Start a resumable upload (tus creation). `Upload-Metadata` may carry `filename` (the item's
/// name), `filetype`, `parent_id` (a folder) and `convert` (conversion options as JSON, queued
/// as soon as the upload completes). With a body typed `application/offset+octet-stream`, the
/// first bytes come with it (creation-with-upload).
#[utoipa::path(post, operation_id = "createResumableUpload", path = "/uploads", tag = "resumable uploads",
    params(
        ("Tus-Resumable" = inline(TusResumable), Header, description = "The protocol version: 1.0.0"),
        ("Upload-Length" = Option<u64>, Header, description = "The file's size in bytes"),
        ("Upload-Defer-Length" = Option<u8>, Header, description = "1, to give the length later"),
        ("Upload-Metadata" = Option<String>, Header, description = "Comma-separated keys with Base64 values: filename, filetype, parent_id, convert"),
    ),
    request_body(content = Option<String>, content_type = "application/offset+octet-stream", description = "Optional first bytes"),
    responses(
        (status = 201, description = "Created; Location is the upload's URL, Upload-Offset how much of the body was stored"),
        (status = 400, description = "Malformed headers or metadata", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 404, description = "No such folder", body = ErrorBody),
        (status = 412, description = "No or another Tus-Resumable", body = ErrorBody),
        (status = 413, description = "Over the upload limit", body = ErrorBody),
        (status = 422, description = "Impossible conversion options", body = ErrorBody),
        (status = 429, description = "Too many unfinished uploads", body = ErrorBody),
        (status = 460, description = "The first bytes do not match Upload-Checksum", body = ErrorBody),
        (status = 507, description = "The server's disk is full", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn create_upload(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    request: Request,
) -> Response {
    match start(state, user.id, &headers, request.into_body()).await {
        Ok(created) => created,
        Err(error) => closing(error),
    }
}

async fn start(
    state: AppState,
    user: Uuid,
    headers: &HeaderMap,
    body: Body,
) -> AppResult<Response> {
    if state.shutdown.is_cancelled() {
        return Err(AppError::ShuttingDown);
    }
    speaks_tus(headers)?;
    let length = tus::creation_length(
        text(headers, &UPLOAD_LENGTH)?,
        text(headers, &UPLOAD_DEFER_LENGTH)?,
    )
    .map_err(bad_header)?;
    let limit = state.config.max_upload_bytes;
    if length.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let metadata = text(headers, &UPLOAD_METADATA)?.unwrap_or("").to_string();
    let mut name = None;
    let mut parent_id = None;
    let mut content_type = None;
    let mut convert = None;
    for pair in tus::metadata(&metadata).map_err(bad_header)? {
        // Values are any bytes; the keys read here are text, the rest are the client's own.
        let known = [
            "filename",
            "name",
            "filetype",
            "type",
            "parent_id",
            "convert",
        ];
        if !known.contains(&pair.key.as_str()) {
            continue;
        }
        let value = match pair.value {
            Some(bytes) => String::from_utf8(bytes).map_err(|_| {
                AppError::BadRequest(format!("The metadata {:?} is not UTF-8 text.", pair.key))
            })?,
            None => String::new(),
        };
        match pair.key.as_str() {
            "filename" | "name" => name = Some(clean_name(&value)?),
            "filetype" | "type" if !value.is_empty() => content_type = Some(value),
            "parent_id" if !value.trim().is_empty() && value.trim() != "null" => {
                parent_id = Some(value.trim().parse::<Uuid>().map_err(|_| {
                    AppError::BadRequest("parent_id must be a folder id (a UUID).".into())
                })?)
            }
            "convert" => convert = Some(value),
            _ => {}
        }
    }
    let convert = match convert {
        None => None,
        Some(json) => {
            let mut requested: RequestedOptions = if json.trim().is_empty() {
                RequestedOptions::default()
            } else {
                serde_json::from_str(&json).map_err(|e| {
                    AppError::Unprocessable(format!(
                        "The metadata `convert` holds conversion options as JSON: {e}"
                    ))
                })?
            };
            let callback_url = requested.callback_url.take();
            super::webhooks::callbacks(&state, user, callback_url.clone()).await?;
            let options = super::tree_items::conversion_options(&state, requested).await?;
            let deferred = Deferred {
                options,
                callback_url,
            };
            Some(serde_json::to_string(&deferred).expect("options serialise"))
        }
    };
    if let Some(folder) = parent_id {
        if !state
            .store
            .call(move |c| items::is_folder(c, user, folder))
            .await?
        {
            return Err(AppError::NotFound("folder"));
        }
    }
    let with_bytes = text(headers, &header::CONTENT_TYPE)?
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(CHUNK_TYPE));
    let checksum = checksum_of(headers)?;
    state
        .blobs
        .check_room(length.unwrap_or(0))
        .map_err(AppError::from_io)?;
    let new = NewResumable {
        user_id: user,
        name: name.unwrap_or_else(|| "upload".into()),
        parent_id,
        content_type,
        length,
        metadata,
        convert,
        expires_at: expiry(&state),
    };
    let max_open = state.config.max_open_uploads_per_user;
    let upload = state
        .store
        .call(move |c| resumable::create(c, new, max_open))
        .await?
        .ok_or_else(|| AppError::TooManyRequests {
            detail: format!(
                "You have {max_open} unfinished uploads, the most allowed; finish or delete one first (GET /api/v1/uploads lists them)."
            ),
            retry_after_secs: 60,
        })?;
    let location = format!("/api/v1/uploads/{}", upload.id);
    let (id, user) = (upload.id, upload.user_id);
    let landed = if with_bytes || length == Some(0) {
        let guard = state.writing.lock(id).await?;
        receive(state.clone(), upload, body, checksum, guard).await
    } else {
        Ok(Landed::at(&upload))
    };
    let mut response = match landed {
        Ok(landed) => landed.into_response(StatusCode::CREATED),
        Err(error) => {
            // Refused with nothing kept, the upload is gone too: a client that sees an error
            // does not learn its URL, so it would only hold one of the user's places.
            let kept = owned(&state, user, id).await.map(|u| u.received > 0);
            if let Ok(false) = kept {
                state
                    .store
                    .call(move |c| resumable::delete(c, user, id))
                    .await?;
                return Err(error);
            }
            closing(error)
        }
    };
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("a path is a header value"),
    );
    Ok(response)
}

fn checksum_of(headers: &HeaderMap) -> AppResult<Option<(Algorithm, Vec<u8>)>> {
    text(headers, &UPLOAD_CHECKSUM)?
        .map(tus::checksum)
        .transpose()
        .map_err(bad_header)
}

/// When an upload that receives bytes now expires.
fn expiry(state: &AppState) -> String {
    let after = chrono::Duration::seconds(
        state.config.upload_expiry_secs.min(i64::MAX as u64 / 1000) as i64,
    );
    crate::time::format(chrono::Utc::now() + after)
}

async fn owned(state: &AppState, user: Uuid, id: Uuid) -> AppResult<Resumable> {
    state
        .store
        .call(move |c| resumable::get(c, user, id))
        .await?
        .ok_or(AppError::NotFound("upload"))
}

/// Where an upload stands after a request, as the protocol's headers.
struct Landed {
    offset: u64,
    expires_at: Option<String>,
    item: Option<Uuid>,
    task: Option<Uuid>,
}

impl Landed {
    fn at(upload: &Resumable) -> Landed {
        Landed {
            offset: upload.received,
            expires_at: (!upload.complete()).then(|| upload.expires_at.clone()),
            item: upload.item_id,
            task: upload.task_id,
        }
    }

    fn into_response(self, status: StatusCode) -> Response {
        let mut response = status.into_response();
        let headers = response.headers_mut();
        headers.insert(UPLOAD_OFFSET, self.offset.into());
        if let Some(expires) = self.expires_at.as_deref().and_then(http_date) {
            headers.insert(UPLOAD_EXPIRES, expires);
        }
        if let Some(item) = self.item {
            headers.insert(UPLOAD_ITEM_ID, uuid_value(item));
        }
        if let Some(task) = self.task {
            headers.insert(UPLOAD_TASK_ID, uuid_value(task));
        }
        response
    }
}

fn uuid_value(id: Uuid) -> HeaderValue {
    HeaderValue::from_str(&id.to_string()).expect("a UUID is a header value")
}

/// An RFC 3339 time as HTTP writes dates (`Upload-Expires`).
fn http_date(rfc3339: &str) -> Option<HeaderValue> {
    let time = chrono::DateTime::parse_from_rfc3339(rfc3339).ok()?;
    let text = time
        .with_timezone(&chrono::Utc)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    HeaderValue::from_str(&text).ok()
}

/// How far an upload is (tus `HEAD`): `Upload-Offset`, `Upload-Length` (or
/// `Upload-Defer-Length`), `Upload-Metadata`, `Upload-Expires`; once complete,
/// `Upload-Item-Id` and, when a conversion was queued, `Upload-Task-Id`.
#[utoipa::path(head, operation_id = "getResumableUploadOffset", path = "/uploads/{id}", tag = "resumable uploads",
    params(("id" = Uuid, Path, description = "The upload"), ("Tus-Resumable" = inline(TusResumable), Header, description = "The protocol version: 1.0.0")),
    responses(
        (status = 200, description = "Its offset and length in headers"),
        (status = 400, description = "Malformed request"), (status = 401, description = "No or bad credentials"),
        (status = 404, description = "Unknown, expired, or not the caller's"),
        (status = 412, description = "No or another Tus-Resumable"),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn upload_offset(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> AppResult<Response> {
    speaks_tus(&headers)?;
    let mut upload = owned(&state, user.id, id).await?;
    if state.writing.settled(id).await {
        upload = owned(&state, user.id, id).await?;
    }
    let metadata = upload.metadata.clone();
    let mut response = Landed::at(&upload).into_response(StatusCode::OK);
    let headers = response.headers_mut();
    match upload.length {
        Some(length) => headers.insert(UPLOAD_LENGTH, length.into()),
        None => headers.insert(UPLOAD_DEFER_LENGTH, HeaderValue::from_static("1")),
    };
    if let Ok(value) = HeaderValue::from_str(&metadata) {
        if !metadata.is_empty() {
            headers.insert(UPLOAD_METADATA, value);
        }
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Send bytes from `Upload-Offset` (tus `PATCH`). The bytes are stored durably before the
/// answer's `Upload-Offset` counts them; bytes of a request cut off midway are kept, unless an
/// `Upload-Checksum` (sha1 or sha256 of this request's bytes) was sent. The request that
/// completes the upload makes the tree item and answers its id in `Upload-Item-Id`.
#[utoipa::path(patch, operation_id = "appendToResumableUpload", path = "/uploads/{id}", tag = "resumable uploads",
    params(
        ("id" = Uuid, Path, description = "The upload"),
        ("Tus-Resumable" = inline(TusResumable), Header, description = "The protocol version: 1.0.0"),
        ("Upload-Offset" = u64, Header, description = "Where these bytes start: the offset HEAD answered"),
        ("Upload-Checksum" = Option<String>, Header, description = "`sha1 <Base64>` or `sha256 <Base64>` of this request's bytes"),
        ("Upload-Length" = Option<u64>, Header, description = "The length, when it was deferred"),
    ),
    request_body(content = String, content_type = "application/offset+octet-stream"),
    responses(
        (status = 204, description = "Stored; Upload-Offset is the new offset (and Upload-Item-Id the new item, once complete)"),
        (status = 400, description = "Malformed headers, or more bytes than the length", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown, expired, or not the caller's", body = ErrorBody),
        (status = 409, description = "Upload-Offset is not the upload's offset", body = ErrorBody),
        (status = 412, description = "No or another Tus-Resumable", body = ErrorBody),
        (status = 413, description = "Over the upload limit", body = ErrorBody),
        (status = 415, description = "Not application/offset+octet-stream", body = ErrorBody),
        (status = 423, description = "Another request is still writing to this upload", body = ErrorBody),
        (status = 460, description = "The bytes do not match Upload-Checksum; they were discarded", body = ErrorBody),
        (status = 503, description = "Shutting down, or the file storage does not answer", body = ErrorBody),
        (status = 507, description = "The server's disk is full", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn upload_chunk(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    match patch(state, user.id, id, &headers, request.into_body()).await {
        Ok(landed) => landed.into_response(StatusCode::NO_CONTENT),
        Err(error) => closing(error),
    }
}

async fn patch(
    state: AppState,
    user: Uuid,
    id: Uuid,
    headers: &HeaderMap,
    body: Body,
) -> AppResult<Landed> {
    if state.shutdown.is_cancelled() {
        return Err(AppError::ShuttingDown);
    }
    speaks_tus(headers)?;
    let content_type = text(headers, &header::CONTENT_TYPE)?.unwrap_or("");
    if !content_type.trim().eq_ignore_ascii_case(CHUNK_TYPE) {
        return Err(AppError::UnsupportedMediaType(format!(
            "A PATCH carries Content-Type: {CHUNK_TYPE}."
        )));
    }
    let offset = tus::offset(text(headers, &UPLOAD_OFFSET)?).map_err(bad_header)?;
    let checksum = checksum_of(headers)?;
    let late_length = text(headers, &UPLOAD_LENGTH)?
        .map(tus::late_length)
        .transpose()
        .map_err(bad_header)?;
    owned(&state, user, id).await?;
    let guard = state.writing.lock(id).await?;
    // Read under the lock: a request that held it may have moved the offset.
    let expires_at = expiry(&state);
    let (mut upload, chunks) = state
        .store
        .call(move |c| resumable::start_writing(c, user, id, &expires_at))
        .await?
        .ok_or(AppError::NotFound("upload"))?;
    if offset != upload.received {
        return Err(AppError::Conflict(format!(
            "The upload is at byte {}; this PATCH starts at {offset}. HEAD tells the offset to resume from.",
            upload.received
        )));
    }
    if upload.complete() {
        // The answer to the last chunk was lost and the client asks again: an empty PATCH at
        // the end is answered as before; bytes past the end are refused below.
        if headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|n| n.as_bytes() != b"0")
        {
            return Err(AppError::BadRequest(format!(
                "The upload is complete at {} bytes; no more bytes fit.",
                upload.received
            )));
        }
        return Ok(Landed::at(&upload));
    }
    match (upload.length, late_length) {
        (Some(known), Some(sent)) if known != sent => {
            return Err(AppError::BadRequest(format!(
                "The upload's length is {known} bytes; it cannot change to {sent}."
            )))
        }
        (None, Some(sent)) => {
            let limit = state.config.max_upload_bytes;
            if sent > limit {
                return Err(too_large(limit));
            }
            if sent < upload.received {
                return Err(AppError::BadRequest(format!(
                    "{} bytes were received already, more than Upload-Length: {sent}.",
                    upload.received
                )));
            }
            if !state
                .store
                .call(move |c| resumable::set_length(c, id, sent))
                .await?
            {
                return Err(moved_meanwhile());
            }
            upload.length = Some(sent);
        }
        _ => {}
    }
    let max_chunks = state.config.max_upload_chunks;
    if chunks >= max_chunks {
        return Err(AppError::BadRequest(format!(
            "This upload already arrived in {chunks} requests, the most one may take; send the rest in larger ones, or start again."
        )));
    }
    // The bytes are taken in a task of their own, so that a client gone mid-chunk (which may
    // drop this handler) still leaves what arrived stored and counted.
    tokio::spawn(receive(state, upload, body, checksum, guard))
        .await
        .map_err(|e| AppError::Internal(e.into()))?
}

/// A running digest of a chunk, for `Upload-Checksum`.
enum Digest {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Digest {
    fn new(algorithm: Algorithm) -> Digest {
        use sha2::Digest as _;
        match algorithm {
            Algorithm::Sha1 => Digest::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Digest::Sha256(sha2::Sha256::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        match self {
            Digest::Sha1(d) => d.update(bytes),
            Digest::Sha256(d) => d.update(bytes),
        }
    }

    fn finish(self) -> Vec<u8> {
        use sha2::Digest as _;
        match self {
            Digest::Sha1(d) => d.finalize().to_vec(),
            Digest::Sha256(d) => d.finalize().to_vec(),
        }
    }
}

/// Stores the bytes of one request from the upload's offset, and completes the upload when
/// they reach its length.
async fn receive(
    state: AppState,
    upload: Resumable,
    body: Body,
    checksum: Option<(Algorithm, Vec<u8>)>,
    _guard: WriteGuard,
) -> AppResult<Landed> {
    let limit = state.config.max_upload_bytes;
    let room = match upload.length {
        Some(length) => length.saturating_sub(upload.received),
        None => limit.saturating_sub(upload.received),
    };
    let grace = Duration::from_secs(state.config.body_timeout_secs);
    let body = crate::limits::min_rate(body, state.config.min_upload_bytes_per_sec, grace);
    let mut stream = body.into_data_stream();
    let mut writer = state
        .blobs
        .writer(".upload")
        .await
        .map_err(AppError::from_io)?;
    let mut digest = checksum
        .as_ref()
        .map(|(algorithm, _)| Digest::new(*algorithm));
    let mut cut = None;
    while let Some(bytes) = stream.next().await {
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(e) => {
                cut = Some(AppError::from_body(&e, "The chunk was cut off"));
                break;
            }
        };
        let size = writer.size();
        if size + bytes.len() as u64 > room {
            return Err(match upload.length {
                Some(length) => AppError::BadRequest(format!(
                    "These bytes go past the upload's length of {length} bytes."
                )),
                None => too_large(limit),
            });
        }
        check_reserve(&state.blobs, size, bytes.len())?;
        if let Some(digest) = &mut digest {
            digest.update(&bytes);
        }
        writer.write(&bytes).await.map_err(AppError::from_io)?;
    }
    let size = writer.close().await.map_err(AppError::from_io)?;
    if let (Some(digest), Some((algorithm, expected))) = (digest, &checksum) {
        // A chunk with a checksum is taken whole or not at all.
        if let Some(cut) = cut {
            return Err(cut);
        }
        if digest.finish() != *expected {
            return Err(AppError::ChecksumMismatch(format!(
                "The {} digest of these {size} bytes does not match Upload-Checksum; they were discarded.",
                match algorithm {
                    Algorithm::Sha1 => "sha1",
                    Algorithm::Sha256 => "sha256",
                }
            )));
        }
    }
    let end = upload.received + size;
    if upload.length == Some(end) {
        return complete(&state, &upload, writer).await;
    }
    if size > 0 {
        let blob = state
            .blobs
            .persist(writer, &|_| ())
            .await
            .map_err(AppError::from_io)?;
        let chunk = Chunk {
            start: upload.received,
            size,
            blob,
        };
        let expires_at = expiry(&state);
        let (stored, expiring) = (chunk.clone(), expires_at.clone());
        let id = upload.id;
        let moved = state
            .store
            .call(move |c| resumable::append(c, id, &stored, &expiring))
            .await;
        // Removed only when surely not counted: after an error the commit may have happened
        // (PostgreSQL), and the collector removes the blob if nothing refers to it.
        if !moved? {
            state.blobs.remove(vec![chunk.blob]).await;
            return Err(match owned(&state, upload.user_id, id).await {
                Ok(_) => moved_meanwhile(),
                Err(gone) => gone,
            });
        }
        state.metrics.bytes_in.inc_by(size);
        if cut.is_none() {
            return Ok(Landed {
                offset: end,
                expires_at: Some(expires_at),
                item: None,
                task: None,
            });
        }
    }
    match cut {
        Some(cut) => Err(cut),
        None => Ok(Landed::at(&upload)),
    }
}

fn moved_meanwhile() -> AppError {
    AppError::Conflict(
        "Another request moved this upload's offset meanwhile; HEAD tells the offset to resume from."
            .into(),
    )
}

/// Another request completed the upload, or moved its offset, while this one joined it.
#[derive(Debug, thiserror::Error)]
#[error("the offset moved")]
struct Moved;

/// Joins the chunks received before with `last` (this request's bytes) into one file, and
/// makes it a tree item in one transaction with marking the upload complete and queueing the
/// conversion asked for.
async fn complete(state: &AppState, upload: &Resumable, last: BlobWriter) -> AppResult<Landed> {
    let id = upload.id;
    let length = upload.received + last.size();
    let chunks = state.store.call(move |c| resumable::chunks(c, id)).await?;
    // Another node may have appended since this request read the offset.
    let mut end = 0;
    for chunk in &chunks {
        if chunk.start != end {
            return Err(moved_meanwhile());
        }
        end += chunk.size;
    }
    if end != upload.received {
        return Err(moved_meanwhile());
    }
    // Options stored by an older version may no longer read: the file is kept all the same.
    let convert = upload
        .convert
        .as_deref()
        .map(|json| serde_json::from_str::<Deferred>(json).map_err(|e| e.to_string()));
    let whole = if chunks.is_empty() {
        last
    } else {
        join(state, &chunks, last, length).await?
    };
    let content_type = stored_type(upload.content_type.as_deref(), &upload.name);
    let mut new = new_file(
        state,
        upload.user_id,
        upload.parent_id,
        upload.name.clone(),
        content_type,
        whole,
    )
    .await?;
    let blob = new.blob.clone().expect("a file has a blob");
    let (user, from, limit) = (
        upload.user_id,
        upload.received,
        state.config.max_active_tasks_per_user,
    );
    let done = state
        .store
        .call(move |c| {
            c.atomically(|c| {
                // A folder deleted during a day-long upload loses the folder, not the file.
                if let Some(folder) = new.parent_id {
                    if !items::is_folder(c, user, folder)? {
                        new.parent_id = None;
                    }
                }
                let item = items::insert(c, new)?;
                let joined = resumable::complete(c, id, from, length, item.id)?.ok_or(Moved)?;
                let (task, error) = match convert {
                    None => (None, None),
                    Some(Err(e)) => (
                        None,
                        Some(format!("The conversion options no longer read: {e}")),
                    ),
                    Some(Ok(Deferred {
                        options,
                        callback_url,
                    })) => {
                        // Checked when the upload was created; addresses are checked again
                        // on every delivery.
                        let callbacks = callback_url
                            .map(|url| Callback {
                                url,
                                events: EventType::FINAL.to_vec(),
                            })
                            .into_iter()
                            .collect();
                        let task = NewTask {
                            user_id: user,
                            source_id: item.id,
                            source_blob: item.blob.clone().expect("a file has a blob"),
                            source_name: item.name.clone(),
                            parent_id: item.parent_id,
                            options,
                            retry_of: None,
                            callbacks,
                        };
                        match lifecycle::submit(c, task, limit, None)? {
                            Submitted::Queued(task) => (Some(task.id), None),
                            Submitted::Busy { active } => (
                                None,
                                Some(crate::limits::too_many_tasks(active, limit).to_string()),
                            ),
                            _ => (None, None),
                        }
                    }
                };
                if task.is_some() || error.is_some() {
                    resumable::set_conversion(c, id, task, error)?;
                }
                Ok((item, joined, task))
            })
        })
        .await;
    let (item, joined, task) = match done {
        Ok(done) => done,
        Err(e) if e.downcast_ref::<Moved>().is_some() => {
            state.blobs.remove(vec![blob]).await;
            return Err(moved_meanwhile());
        }
        // The commit may have happened (PostgreSQL): the collector removes the file if not.
        Err(e) => return Err(e.into()),
    };
    state.metrics.bytes_in.inc_by(length - from);
    state.blobs.remove(joined).await;
    if task.is_some() {
        state.tasks.queue().wake();
    }
    Ok(Landed {
        offset: length,
        expires_at: None,
        item: Some(item.id),
        task,
    })
}

/// The chunks, then `last`, copied into one new file (checked against the disk reserve).
async fn join(
    state: &AppState,
    chunks: &[Chunk],
    last: BlobWriter,
    length: u64,
) -> AppResult<BlobWriter> {
    state.blobs.check_room(length).map_err(AppError::from_io)?;
    let mut whole = state
        .blobs
        .writer(".upload")
        .await
        .map_err(AppError::from_io)?;
    for chunk in chunks {
        match state.blobs.local_path(&chunk.blob) {
            Some(path) => whole.append_file(&path).await,
            None => {
                let mut bytes = state
                    .blobs
                    .read(&chunk.blob, 0, chunk.size)
                    .await
                    .map_err(AppError::from_io)?;
                let mut copied = Ok(());
                while let Some(bytes) = bytes.next().await {
                    copied = match bytes {
                        Ok(bytes) => whole.write(&bytes).await,
                        Err(e) => Err(e),
                    };
                    if copied.is_err() {
                        break;
                    }
                }
                copied
            }
        }
        .map_err(AppError::from_io)?;
    }
    whole
        .append_file(last.path())
        .await
        .map_err(AppError::from_io)?;
    let size = whole.close().await.map_err(AppError::from_io)?;
    if size != length {
        return Err(AppError::Internal(anyhow::anyhow!(
            "the joined upload has {size} bytes, not {length}"
        )));
    }
    Ok(whole)
}

/// Delete an upload and the bytes it received (tus termination). A complete upload's item
/// stays.
#[utoipa::path(delete, operation_id = "deleteResumableUpload", path = "/uploads/{id}", tag = "resumable uploads",
    params(("id" = Uuid, Path, description = "The upload"), ("Tus-Resumable" = inline(TusResumable), Header, description = "The protocol version: 1.0.0")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown, expired, or not the caller's", body = ErrorBody),
        (status = 412, description = "No or another Tus-Resumable", body = ErrorBody),
        (status = 423, description = "Another request is still writing to this upload", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn delete_upload(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> AppResult<StatusCode> {
    speaks_tus(&headers)?;
    owned(&state, user.id, id).await?;
    let _guard = state.writing.lock(id).await?;
    let blobs = state
        .store
        .call(move |c| resumable::delete(c, user.id, id))
        .await?
        .ok_or(AppError::NotFound("upload"))?;
    state.blobs.remove(blobs).await;
    Ok(StatusCode::NO_CONTENT)
}

/// An upload's state as JSON: its offset and, once complete, the tree item it became.
#[utoipa::path(get, operation_id = "getResumableUpload", path = "/uploads/{id}", tag = "resumable uploads",
    params(("id" = Uuid, Path, description = "The upload")),
    responses(
        (status = 200, description = "The upload", body = UploadStatus),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown, expired, or not the caller's", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn upload_status(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> AppResult<axum::Json<UploadStatus>> {
    Ok(axum::Json(owned(&state, user.id, id).await?.into()))
}

/// The caller's unfinished uploads, oldest first (for resuming after a reload).
#[utoipa::path(get, operation_id = "listResumableUploads", path = "/uploads", tag = "resumable uploads",
    responses(
        (status = 200, description = "Unfinished uploads", body = Vec<UploadStatus>),
        (status = 401, description = "No or bad credentials", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn list_uploads(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> AppResult<axum::Json<Vec<UploadStatus>>> {
    let uploads = state
        .store
        .call(move |c| resumable::unfinished(c, user.id))
        .await?;
    Ok(axum::Json(uploads.into_iter().map(Into::into).collect()))
}

/// Deletes expired uploads and the bytes they received, until shutdown: at least once a
/// minute, or every half expiry when that is shorter.
pub async fn expire_until(state: AppState, shutdown: CancellationToken) {
    let expiry = Duration::from_secs(state.config.upload_expiry_secs);
    let every = (expiry / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    while !shutdown.is_cancelled() {
        loop {
            let now = crate::time::now();
            match state
                .store
                .call(move |c| resumable::expire(c, &now, EXPIRE_BATCH))
                .await
            {
                Ok((count, blobs)) => {
                    state.blobs.remove(blobs).await;
                    if count > 0 {
                        tracing::info!(count, "expired unfinished uploads");
                    }
                    if (count as i64) < EXPIRE_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = ?e, "could not expire uploads");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Uploads expired per transaction.
const EXPIRE_BATCH: i64 = 100;
