//! OGC API – Processes 1.0 (Part 1: Core) under `/ogcapi`: a standard face on the same tasks.
//! One process, `convert-to-cog`; a job is a rastercast task (the same id, on every channel),
//! its dismissal a real cancel. Conformance: core, ogc-process-description, json, job-list,
//! dismiss, callback (the subscriber's URIs, sent by the webhook engine) and oas30.
//!
//! Errors keep the API's `{"detail", "code"}` and gain the fields of the standard's exception
//! (RFC 7807: `type`, `title`, `status`), added in one place ([`exceptions`]).

mod jobs;
mod process;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::AppState;

/// Where the standard's own exception types live.
const EXCEPTIONS: &str = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0";

/// The conformance classes this server implements.
const CONFORMANCE: [&str; 7] = [
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/ogc-process-description",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/json",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/job-list",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/dismiss",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/callback",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/oas30",
];

/// The OpenAPI 3.0 document of these routes (the standard's oas30 class asks for 3.0; the
/// rest of the API is described at `/api/v1/openapi.json`).
const OPENAPI: &str = include_str!("openapi.json");

pub fn router(state: &AppState) -> Router<AppState> {
    let routes = Router::new()
        .route("/ogcapi", get(landing).options(preflight))
        .route("/ogcapi/", get(landing).options(preflight))
        .route("/ogcapi/conformance", get(conformance).options(preflight))
        .route("/ogcapi/api", get(api).options(preflight))
        .merge(process::router())
        .merge(jobs::router())
        .layer(axum::middleware::from_fn(exceptions));
    match cors(state) {
        Some(cors) => routes.layer(cors),
        None => routes,
    }
}

/// Browser clients on the configured origins (`--cors-origin`) may call these routes with a
/// bearer token and read the headers the standard puts answers in. No cookies cross: a
/// session is the dashboard's alone.
fn cors(state: &AppState) -> Option<tower_http::cors::CorsLayer> {
    let origins: Vec<HeaderValue> = state
        .config
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                "prefer".parse().expect("a header name"),
            ])
            .expose_headers([
                header::LOCATION,
                header::LINK,
                "preference-applied".parse().expect("a header name"),
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

/// A route's `OPTIONS`: with an `Origin` the CORS layer answers it (the preflight) before this
/// runs; without, there is nothing to say.
async fn preflight() -> axum::http::StatusCode {
    axum::http::StatusCode::NO_CONTENT
}

/// `http://host/ogcapi`: where links point, from `--public-url` or the request.
pub(super) fn base(state: &AppState, headers: &HeaderMap) -> String {
    let origin = match &state.config.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => super::auth::request_origin(headers)
            .map(|(scheme, host)| {
                let scheme = if scheme == "https" { "https" } else { "http" };
                format!("{scheme}://{host}")
            })
            .unwrap_or_default(),
    };
    format!("{origin}/ogcapi")
}

fn link(href: String, rel: &str, kind: &str, title: &str) -> Value {
    json!({"href": href, "rel": rel, "type": kind, "title": title})
}

async fn landing(State(state): State<AppState>, headers: HeaderMap) -> Json<Value> {
    let base = base(&state, &headers);
    Json(json!({
        "title": "rastercast",
        "description": "Converts rasters to Cloud-Optimized GeoTIFFs, as OGC API - Processes jobs.",
        "links": [
            link(base.clone(), "self", "application/json", "This document"),
            link(format!("{base}/api"), "service-desc", "application/vnd.oai.openapi+json;version=3.0", "The API definition"),
            link(format!("{base}/conformance"), "http://www.opengis.net/def/rel/ogc/1.0/conformance", "application/json", "Conformance classes"),
            link(format!("{base}/processes"), "http://www.opengis.net/def/rel/ogc/1.0/processes", "application/json", "Processes"),
            link(format!("{base}/jobs"), "http://www.opengis.net/def/rel/ogc/1.0/job-list", "application/json", "Jobs"),
        ],
    }))
}

async fn conformance() -> Json<Value> {
    Json(json!({ "conformsTo": CONFORMANCE }))
}

async fn api() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/vnd.oai.openapi+json;version=3.0",
        )],
        OPENAPI,
    )
        .into_response()
}

/// An answer in the standard's exception shape, for outcomes that are the standard's own
/// (a result not ready, a failed job's results).
pub(super) fn exception(status: u16, kind: &str, title: &str, detail: String) -> Response {
    let status = axum::http::StatusCode::from_u16(status).expect("a valid status");
    let kind = if kind.starts_with("urn:") {
        kind.to_owned()
    } else {
        format!("{EXCEPTIONS}/{kind}")
    };
    (
        status,
        Json(json!({
            "type": kind,
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
            "code": kind.rsplit(['/', ':']).next().unwrap_or_default().replace('-', "_"),
        })),
    )
        .into_response()
}

/// Gives the API's error bodies (`{"detail", "code"}`) the exception's `type`, `title` and
/// `status`, so OGC clients read them as the standard says.
async fn exceptions(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || !json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return parts.status.into_response();
    };
    let Ok(mut error) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    if error.get("type").is_none() {
        let code = error["code"].as_str().unwrap_or("error").to_owned();
        let kind = match code.as_str() {
            "job_not_found" | "task_not_found" | "task_expired" => {
                format!("{EXCEPTIONS}/no-such-job")
            }
            "process_not_found" => format!("{EXCEPTIONS}/no-such-process"),
            other => format!("urn:rastercast:error:{}", other.replace('_', "-")),
        };
        error["type"] = json!(kind);
        error["title"] = json!(status.canonical_reason().unwrap_or("Error"));
        error["status"] = json!(status.as_u16());
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(error.to_string()))
}
