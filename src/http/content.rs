//! `GET`/`HEAD /tree-items/{id}/content`: a file's bytes, with single `Range` requests (206),
//! `ETag`/`If-None-Match` (304) and `If-Range`. Map clients read COGs through this.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::extract::Path;
use super::tree_items::owned_item;
use crate::error::{AppError, AppResult, ErrorBody};
use crate::http::auth::AuthUser;
use crate::http::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(content))
}

/// A file's bytes, for downloads and for map clients reading a COG. `HEAD` works too.
#[utoipa::path(get, operation_id = "getTreeItemContent", path = "/tree-items/{id}/content", tag = "tree items",
    params(("id" = Uuid, Path, description = "Item id"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-16383`"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer"),
        ("If-Range" = Option<String>, Header, description = "Apply Range only if the ETag still matches")),
    responses(
        (status = 200, description = "The whole file, with the type it was stored with", content(("image/tiff"), ("image/jp2"), ("image/png"), ("image/jpeg"), ("application/x-netcdf"), ("application/zip"), ("application/octet-stream"))),
        (status = 206, description = "The requested range", content(("image/tiff"), ("image/jp2"), ("image/png"), ("image/jpeg"), ("application/x-netcdf"), ("application/zip"), ("application/octet-stream"))),
        (status = 304, description = "Not modified"),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 416, description = "The range is outside the file", body = ErrorBody),
        (status = 422, description = "A folder has no content", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn content(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let item = owned_item(&state, user.id, id).await?;
    serve_item(&state, &item, &headers).await
}

/// A stored file's bytes, whole or one range, with its ETag; for `/content` and for links.
pub async fn serve_item(
    state: &AppState,
    item: &crate::store::Item,
    headers: &HeaderMap,
) -> AppResult<Response> {
    let blob = item.blob.as_deref().ok_or_else(|| {
        AppError::Unprocessable(format!("{:?} is a folder; it has no content.", item.name))
    })?;
    // Blobs never change once written, so the blob name is a strong validator.
    let etag = format!("\"{blob}\"");
    // The size recorded with the item is the blob's (blobs never change): no round trip to
    // object storage before the one that reads.
    let len = item.size;

    let mut common = HeaderMap::new();
    common.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Uploaded bytes are the uploader's: never sniffed, and never run as a page of ours.
    common.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    common.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    common.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400"),
    );
    let content_type = item
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    common.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );

    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if inm.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        }) {
            return Ok((StatusCode::NOT_MODIFIED, common).into_response());
        }
    }

    let range_applies = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| range_applies);
    let (status, start, count) = match range.map(|r| parse_range(r, len)) {
        None | Some(RangeSpec::Ignore) => (StatusCode::OK, 0, len),
        Some(RangeSpec::Unsatisfiable) => {
            let mut response = AppError::RangeNotSatisfiable(format!(
                "The requested range is outside the file's {len} bytes."
            ))
            .into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
            );
            return Ok(response);
        }
        Some(RangeSpec::Bytes(start, end)) => {
            common.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).expect("ascii"),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
    };
    common.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    state.metrics.bytes_out.inc_by(count);
    let bytes = state
        .blobs
        .read(blob, start, count)
        .await
        .map_err(AppError::from_io)?;
    let body = Body::from_stream(bytes);
    Ok((status, common, body).into_response())
}

#[derive(Debug, PartialEq)]
enum RangeSpec {
    /// Inclusive byte positions.
    Bytes(u64, u64),
    Unsatisfiable,
    /// Not a single byte range we serve; the whole file is sent (RFC 9110 allows this).
    Ignore,
}

fn parse_range(header: &str, len: u64) -> RangeSpec {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        (true, false) => match last.parse::<u64>() {
            Ok(0) => return RangeSpec::Unsatisfiable,
            Ok(n) => Some((len.saturating_sub(n), len.saturating_sub(1))),
            Err(_) => None,
        },
        (false, true) => first
            .parse::<u64>()
            .ok()
            .map(|s| (s, len.saturating_sub(1))),
        (false, false) => match (first.parse::<u64>(), last.parse::<u64>()) {
            (Ok(s), Ok(e)) if s <= e => Some((s, e.min(len.saturating_sub(1)))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => RangeSpec::Ignore,
        Some((start, _)) if len == 0 || start >= len => RangeSpec::Unsatisfiable,
        Some((start, end)) => RangeSpec::Bytes(start, end),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_range, RangeSpec::*};

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Bytes(0, 99));
        assert_eq!(parse_range("bytes=900-", 1000), Bytes(900, 999));
        assert_eq!(parse_range("bytes=-100", 1000), Bytes(900, 999));
        assert_eq!(parse_range("bytes=990-2000", 1000), Bytes(990, 999));
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 1000), Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ignore);
        assert_eq!(parse_range("items=0-1", 1000), Ignore);
    }
}
