//! The dashboard at `/`: static files embedded in the binary, so `serve` needs nothing beside
//! it. Vendored libraries come from npm, pinned in package.json (scripts/vendor.sh).

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::http::AppState;

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    csp: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

macro_rules! asset {
    ($path:literal, $type:expr, $file:literal, $csp:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../static/", $file)),
            csp: $csp,
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("/", HTML, "index.html", CSP),
    asset!("/app.js", JS, "app.js", CSP),
    asset!("/style.css", CSS, "style.css", CSP),
    asset!("/vendor/leaflet.js", JS, "vendor/leaflet.js", CSP),
    asset!("/vendor/leaflet.css", CSS, "vendor/leaflet.css", CSP),
    asset!("/vendor/tus.min.js", JS, "vendor/tus.min.js", CSP),
    asset!("/docs", HTML, "docs.html", DOCS_CSP),
    asset!("/docs.js", JS, "docs.js", DOCS_CSP),
    asset!(
        "/vendor/redoc.standalone.js",
        JS,
        "vendor/redoc.standalone.js",
        DOCS_CSP
    ),
];

/// Everything the page loads comes from here; nothing from elsewhere can run.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
                   connect-src 'self'; worker-src 'self' blob:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'";
/// Redoc styles itself inline and searches in a blob worker.
const DOCS_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; \
                        connect-src 'self'; worker-src 'self' blob:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    let mut router = Router::new();
    for asset in ASSETS {
        router = router.route(
            asset.path,
            get(move |headers: HeaderMap| async move { serve(asset, &headers) }),
        );
    }
    router
}

fn serve(asset: &'static Asset, headers: &HeaderMap) -> Response {
    // The binary's version and the file's length name its content well enough to revalidate.
    let etag = format!(
        "\"{}-{}-{:x}\"",
        env!("CARGO_PKG_VERSION"),
        asset.body.len(),
        fnv(asset.body)
    );
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(asset.csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// FNV-1a: a cheap content fingerprint for the ETag.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}
