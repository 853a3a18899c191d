//! The one error type of the HTTP layer and its mapping to status codes and `{"detail"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    /// The thing that was not found (or is not the caller's), e.g. "task".
    #[error("No such {0}.")]
    NotFound(&'static str),
    /// A task that expired under the retention setting: its pollers should stop.
    #[error("This task finished more than {0} s ago and its record has expired; its output, if any, is still a tree item.")]
    Gone(u64),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// A tus request without a protocol version this server speaks.
    #[error("{0}")]
    PreconditionFailed(String),
    /// Another request is still writing to this resource.
    #[error("{0}")]
    Locked(String),
    /// A tus chunk whose `Upload-Checksum` does not match its bytes (tus's own 460).
    #[error("{0}")]
    ChecksumMismatch(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    RangeNotSatisfiable(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{detail}")]
    TooManyRequests {
        detail: String,
        retry_after_secs: u64,
    },
    #[error("The server is out of disk space; try again later.")]
    InsufficientStorage,
    #[error("The server is shutting down; try again in a moment.")]
    ShuttingDown,
    #[error("The database does not answer; try again in a moment.")]
    DatabaseUnavailable,
    /// The file storage failed or did not answer; what it said is logged, not shown.
    #[error("The file storage does not answer; try again in a moment.")]
    StorageUnavailable,
    #[error("Internal error; it has been logged.")]
    Internal(anyhow::Error),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Gone(_) => StatusCode::GONE,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            AppError::Locked(_) => StatusCode::LOCKED,
            AppError::ChecksumMismatch(_) => {
                StatusCode::from_u16(460).expect("460 is a valid status code")
            }
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            AppError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            AppError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            AppError::ShuttingDown
            | AppError::DatabaseUnavailable
            | AppError::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine word for clients that branch on errors.
    pub fn code(&self) -> String {
        match self {
            AppError::BadRequest(_) => "bad_request".into(),
            AppError::Unauthorized(_) => "unauthorized".into(),
            AppError::Forbidden(_) => "forbidden".into(),
            AppError::NotFound(what) => format!("{}_not_found", what.replace(' ', "_")),
            AppError::Gone(_) => "task_expired".into(),
            AppError::MethodNotAllowed(_) => "method_not_allowed".into(),
            AppError::Conflict(_) => "conflict".into(),
            AppError::TooLarge(_) => "too_large".into(),
            AppError::PreconditionFailed(_) => "unsupported_tus_version".into(),
            AppError::Locked(_) => "locked".into(),
            AppError::ChecksumMismatch(_) => "checksum_mismatch".into(),
            AppError::UnsupportedMediaType(_) => "unsupported_media_type".into(),
            AppError::RangeNotSatisfiable(_) => "range_not_satisfiable".into(),
            AppError::RequestTimeout(_) => "request_timeout".into(),
            AppError::HeadersTooLarge(_) => "headers_too_large".into(),
            AppError::Unprocessable(_) => "unprocessable".into(),
            AppError::TooManyRequests { .. } => "too_many_requests".into(),
            AppError::InsufficientStorage => "insufficient_storage".into(),
            AppError::ShuttingDown => "shutting_down".into(),
            AppError::DatabaseUnavailable => "database_unavailable".into(),
            AppError::StorageUnavailable => "storage_unavailable".into(),
            AppError::Internal(_) => "internal".into(),
        }
    }

    /// A request body that failed while being read: one that stopped arriving for longer than
    /// the body timeout is a 408, anything else (a client gone, a malformed stream) a 400.
    pub fn from_body(e: &(dyn std::error::Error + 'static), what: &str) -> AppError {
        if let Some(slow) = find::<TooSlow>(e) {
            AppError::RequestTimeout(format!("{what}: {slow}; send it faster."))
        } else if find::<tower_http::timeout::TimeoutError>(e).is_some() {
            AppError::RequestTimeout(format!(
                "{what}: the request body stopped arriving; send it without long pauses."
            ))
        } else {
            AppError::BadRequest(format!("{what}: {e}"))
        }
    }

    /// Maps I/O failures while storing bytes: a full disk is the client's 507 and storage out
    /// of reach a 503, not bugs.
    pub fn from_io(e: std::io::Error) -> AppError {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            AppError::InsufficientStorage
        } else if find::<crate::storage::Unavailable>(&e).is_some() {
            tracing::warn!(error = %e, "the file storage failed");
            AppError::StorageUnavailable
        } else {
            AppError::Internal(e.into())
        }
    }
}

/// The first error of type `T` in `e`'s chain.
fn find<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        // io::Error's `source` skips the error it wraps.
        if let Some(found) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| find::<T>(inner))
        {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// Every error response: a readable sentence and a stable machine word.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, as a sentence for people.
    #[schema(example = "No such task.")]
    pub detail: String,
    /// A stable word for programs, e.g. `task_not_found`.
    #[schema(example = "task_not_found")]
    pub code: String,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let AppError::Internal(e) = &self {
            tracing::error!(error = ?e, "internal error");
        }
        let body = ErrorBody {
            detail: self.to_string(),
            code: self.code(),
        };
        let mut response = (status, Json(body)).into_response();
        let retry_after = match &self {
            AppError::TooManyRequests {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            AppError::StorageUnavailable | AppError::DatabaseUnavailable => Some(5),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<anyhow::Error> for AppError {
    /// A full disk under the database or the files is the client's 507, not a bug.
    fn from(e: anyhow::Error) -> Self {
        let full = e.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<rusqlite::Error>(),
                Some(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DiskFull
            ) || cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.raw_os_error())
                .is_some_and(|n| n == libc::ENOSPC || n == libc::EDQUOT)
        });
        if full {
            AppError::InsufficientStorage
        } else {
            AppError::Internal(e)
        }
    }
}

impl From<rusqlite::Error> for AppError {
    fn from(e: rusqlite::Error) -> Self {
        anyhow::Error::from(e).into()
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// An upload body that keeps sending, but too slowly to ever finish in reasonable time: a few
/// bytes every second evade the stall timeout and would hold a connection and a temp file
/// forever.
#[derive(Debug, thiserror::Error)]
#[error("the body arrived at {rate:.0} bytes per second on average; the minimum is {min} after the first {grace_secs} s")]
pub struct TooSlow {
    pub rate: f64,
    pub min: u64,
    pub grace_secs: u64,
}
