//! Shareable links to a file. `POST /tree-items/{id}/links` signs a URL that opens with no
//! header at all (GDAL's `/vsicurl/`, QGIS, geotiff.js, curl, a browser) until it expires, with
//! ranges and ETags as `/content` has them. The signature is an HMAC-SHA256 under the link key
//! in the database, shared by every node; rotating that key (`rastercast link-key rotate`)
//! voids every link given out.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::Json;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::auth::AuthUser;
use super::content::serve_item;
use super::extract::{OptionalJson, Path};
use super::tree_items::owned_item;
use super::AppState;
use crate::error::{AppError, AppResult, ErrorBody};
use crate::store::{items, link_keys, Store};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_link))
        .routes(routes!(open_link))
}

/// What a name must escape to be one path segment: all but RFC 3986's unreserved characters.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The longest a link may live: a week, as S3's presigned URLs.
pub(super) const MAX_EXPIRES_IN: u64 = 7 * 86400;
const DEFAULT_EXPIRES_IN: u64 = 3600;

#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LinkRequest {
    /// Seconds the link works for: 1 to 604800 (a week); one hour when left out.
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 604800)]
    expires_in: Option<serde_json::Number>,
}

/// A link that opens the file with no credentials until `expires_at`.
#[derive(Serialize, ToSchema)]
pub struct Link {
    pub url: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// Make a shareable link to a file: anyone holding it can read the file (with ranges, as map
/// clients and GDAL's `/vsicurl/` do) until it expires.
#[utoipa::path(post, operation_id = "createLink", path = "/tree-items/{id}/links", tag = "tree items",
    params(("id" = Uuid, Path, description = "The file")),
    request_body(content = Option<LinkRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "The link", body = Link),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "A folder, or expires_in out of range", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn create_link(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    OptionalJson(request): OptionalJson<LinkRequest>,
) -> AppResult<Json<Link>> {
    // JSON has one number type: `60.0` is the integer 60, as JSON Schema says.
    let expires_in = match &request.expires_in {
        None => Some(DEFAULT_EXPIRES_IN),
        Some(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= MAX_EXPIRES_IN as f64)
                .map(|f| f as u64)
        }),
    };
    let expires_in = lifetime(expires_in)?;
    let item = owned_item(&state, user.id, id).await?;
    if item.blob.is_none() {
        return Err(AppError::Unprocessable(format!(
            "{:?} is a folder; a link opens a file.",
            item.name
        )));
    }
    Ok(Json(link_to(&state, &headers, &item, expires_in).await?))
}

/// `seconds` when a link may live that long (1 s to a week), for every route that makes one
/// (links, tile URLs, STAC assets); otherwise the sentence that says so.
pub(super) fn lifetime(seconds: Option<u64>) -> AppResult<u64> {
    seconds
        .filter(|s| (1..=MAX_EXPIRES_IN).contains(s))
        .ok_or_else(|| {
            AppError::Unprocessable(format!(
                "expires_in is a whole number of seconds from 1 to {MAX_EXPIRES_IN}."
            ))
        })
}

/// A link that opens `item` (a file) for `expires_in` seconds.
pub async fn link_to(
    state: &AppState,
    headers: &HeaderMap,
    item: &items::Item,
    expires_in: u64,
) -> AppResult<Link> {
    let expires = chrono::Utc::now().timestamp() as u64 + expires_in;
    let key = state.link_key.get(&state.store).await?;
    let token = sign(&key, item.user_id, item.id, expires);
    let base = public_base(state, headers)?;
    let expires_at = chrono::DateTime::from_timestamp(expires as i64, 0)
        .map(crate::time::format)
        .unwrap_or_default();
    // The file's name ends the URL, so that tools see its extension, and GDAL's probes for
    // side files (`….aux.xml`, `….ovr`) name another file: a quiet 404, not a 403.
    let name = percent_encoding::utf8_percent_encode(&item.name, PATH_SEGMENT);
    Ok(Link {
        url: format!("{base}/api/v1/links/{token}/{name}"),
        expires_at,
    })
}

/// A token that opens `item` (and, in tile URLs, its map tiles) until `expires_in` seconds
/// from now: a link's own signed part.
pub async fn token_for(state: &AppState, item: &items::Item, expires_in: u64) -> AppResult<String> {
    let expires = chrono::Utc::now().timestamp() as u64 + expires_in;
    let key = state.link_key.get(&state.store).await?;
    Ok(sign(&key, item.user_id, item.id, expires))
}

/// The owner of `item` if `token` (a link's signed part) opens it; 403 otherwise.
pub async fn token_opens(state: &AppState, token: &str, item: Uuid) -> AppResult<Uuid> {
    let key = state.link_key.get(&state.store).await?;
    let (owner, named) = verify(&key, token, chrono::Utc::now().timestamp() as u64)?;
    if named != item {
        return Err(AppError::Forbidden("This link opens another file."));
    }
    Ok(owner)
}

/// The owner and the file that a link of ours names (its URL as it was given out, or its
/// path), if it verifies and has not expired.
pub async fn item_of_link(state: &AppState, url: &str) -> AppResult<(Uuid, Uuid)> {
    let path = url::Url::parse(url).map_or_else(|_| url.to_owned(), |u| u.path().to_owned());
    let token = path
        .strip_prefix("/api/v1/links/")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| {
            AppError::Unprocessable(format!(
                "{url:?} is not a link from POST /api/v1/tree-items/{{id}}/links."
            ))
        })?;
    let key = state.link_key.get(&state.store).await?;
    verify(&key, token, chrono::Utc::now().timestamp() as u64)
}

/// A file through a link from `POST /tree-items/{id}/links`: no credentials, `Range` and
/// `ETag` as on `/content`. A link that was changed, has expired or whose key was rotated is
/// a 403.
#[utoipa::path(get, operation_id = "getLinkedContent", path = "/links/{token}/{name}", tag = "tree items",
    params(("token" = String, Path, description = "The signed part of the link"),
        ("name" = String, Path, description = "The file's name"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-16383`")),
    responses(
        (status = 200, description = "The whole file", content(("image/tiff"), ("image/jp2"), ("image/png"), ("image/jpeg"), ("application/x-netcdf"), ("application/zip"), ("application/octet-stream"))),
        (status = 206, description = "The requested range", content(("image/tiff"), ("image/jp2"), ("image/png"), ("image/jpeg"), ("application/x-netcdf"), ("application/zip"), ("application/octet-stream"))),
        (status = 304, description = "Not modified"),
        (status = 403, description = "Changed, expired, or signed with a key since rotated", body = ErrorBody),
        (status = 404, description = "The file was deleted, or another name (a side file) was asked for", body = ErrorBody),
        (status = 416, description = "The range is outside the file", body = ErrorBody),
    ), security(()))]
async fn open_link(
    State(state): State<AppState>,
    Path((token, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let key = state.link_key.get(&state.store).await?;
    let (user, id) = verify(&key, &token, chrono::Utc::now().timestamp() as u64)?;
    let item = state
        .store
        .call(move |c| items::get(c, user, id))
        .await?
        .filter(|item| item.name == name)
        .ok_or(AppError::NotFound("tree item"))?;
    let mut response = serve_item(&state, &item, &headers).await?;
    // The link is the credential, so any page may read it (geotiff.js on another site).
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Content-Range, Content-Length, ETag, Accept-Ranges"),
    );
    Ok(response)
}

/// `{user}.{item}.{expires}.{signature}`: ids as 32 hex digits, the expiry in Unix seconds,
/// the HMAC-SHA256 of everything before it in hex.
fn sign(key: &[u8], user: Uuid, item: Uuid, expires: u64) -> String {
    let signed = format!("{}.{}.{expires}", user.simple(), item.simple());
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(signed.as_bytes());
    format!("{signed}.{}", hex::encode(mac.finalize().into_bytes()))
}

/// The owner and the item a token names, if it is ours, untouched and not yet expired.
fn verify(key: &[u8], token: &str, now: u64) -> AppResult<(Uuid, Uuid)> {
    let invalid = || {
        AppError::Forbidden(
            "This link is not valid: it was changed, or the link key was rotated since.",
        )
    };
    let (signed, signature) = token.rsplit_once('.').ok_or_else(invalid)?;
    let signature = hex::decode(signature).map_err(|_| invalid())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(signed.as_bytes());
    // Constant time: a forger learns nothing from how long the check took.
    mac.verify_slice(&signature).map_err(|_| invalid())?;
    let mut parts = signed.split('.');
    let (Some(user), Some(item), Some(expires), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let (Ok(user), Ok(item), Ok(expires)) = (
        Uuid::parse_str(user),
        Uuid::parse_str(item),
        expires.parse::<u64>(),
    ) else {
        return Err(invalid());
    };
    if expires < now {
        return Err(AppError::Forbidden(
            "This link has expired; ask its owner for a new one.",
        ));
    }
    Ok((user, item))
}

/// Where clients reach this server: `--public-url`, or the request's own `Host` (with
/// `X-Forwarded-Proto` behind a TLS proxy).
pub(super) fn public_base(state: &AppState, headers: &HeaderMap) -> AppResult<String> {
    if let Some(url) = &state.config.public_url {
        return Ok(url.trim_end_matches('/').to_string());
    }
    let (scheme, host) = super::auth::request_origin(headers)
        .filter(|(_, host)| host.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            AppError::BadRequest("A link needs the request's Host header (or --public-url).".into())
        })?;
    // Links are web URLs: any other scheme a proxy claims is taken as plain HTTP.
    let scheme = if scheme == "https" { "https" } else { "http" };
    Ok(format!("{scheme}://{host}"))
}

/// The link key, read from the database and kept for a few seconds: a key rotated on any
/// node stops old links everywhere within that time.
#[derive(Clone, Default)]
pub struct LinkKey {
    cached: Arc<Mutex<Option<Cached>>>,
}

/// The key and when it was read.
type Cached = (Vec<u8>, Instant);

const KEY_KEPT: Duration = Duration::from_secs(5);

impl LinkKey {
    async fn get(&self, store: &Store) -> AppResult<Vec<u8>> {
        if let Some((key, at)) = &*self.cached.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < KEY_KEPT {
                return Ok(key.clone());
            }
        }
        let key = store.call(link_keys::get_or_create).await?;
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((key.clone(), Instant::now()));
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::{sign, verify};
    use uuid::Uuid;

    #[test]
    fn a_link_verifies_until_it_expires_and_not_once_changed() {
        let (key, user, item) = (b"k".repeat(32), Uuid::new_v4(), Uuid::new_v4());
        let token = sign(&key, user, item, 1_000);
        assert_eq!(verify(&key, &token, 999).unwrap(), (user, item));
        assert!(verify(&key, &token, 1_001).is_err(), "expired");
        assert!(verify(&b"x".repeat(32), &token, 0).is_err(), "another key");
        let later = token.replacen(".1000.", ".9000.", 1);
        assert!(verify(&key, &later, 0).is_err(), "a changed expiry");
        let other = token.replacen(
            &item.simple().to_string(),
            &Uuid::new_v4().simple().to_string(),
            1,
        );
        assert!(verify(&key, &other, 0).is_err(), "another item");
        assert!(verify(&key, "garbage", 0).is_err());
        assert!(verify(&key, &format!("{token}.aux.xml"), 0).is_err());
    }
}
