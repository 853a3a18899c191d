//! The HTTP API: one module per resource, each starting with its `router()`.

pub mod auth;
mod cog;
mod content;
mod dashboard;
mod events;
mod extract;
mod health;
mod links;
mod metrics;
mod names;
mod ogc;
mod openapi;
mod resumable;
mod serve;
mod session;
mod state;
mod tasks;
mod tiles;
mod tree_items;
mod uploads;
mod webhooks;
mod wmts;
mod ws;

use axum::{Extension, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use resumable::expire_until as expire_uploads_until;
pub use serve::serve;
pub use state::{AppState, Shared as SharedState};

use crate::error::AppError;

pub fn router(state: AppState) -> Router {
    if !state.config.role.serves_api() {
        // A worker node answers its load balancer's health checks and its metrics scrapes.
        return Router::new()
            .merge(
                OpenApiRouter::new()
                    .merge(health::router())
                    .merge(metrics::router())
                    .split_for_parts()
                    .0,
            )
            .fallback(not_found)
            .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(span_without_query))
            .with_state(state);
    }
    let api = OpenApiRouter::new()
        .merge(tree_items::router())
        .merge(uploads::router())
        .merge(resumable::router())
        .merge(content::router())
        .merge(tiles::router())
        .merge(cog::router())
        .merge(wmts::router())
        .merge(links::router())
        .merge(tasks::router())
        .merge(events::router())
        .merge(session::router())
        .merge(ws::router())
        .merge(webhooks::router())
        .merge(openapi::router());
    let (documented, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api/v1", api)
        .merge(health::router())
        .merge(metrics::router())
        .split_for_parts();
    let document = openapi::Document::new(&document);
    documented
        .merge(dashboard::router())
        .merge(ogc::router(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(document))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            std::time::Duration::from_secs(state.config.body_timeout_secs),
        ))
        .layer(axum::middleware::from_fn(limit_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(span_without_query))
        .with_state(state)
}

/// Header bytes (names and values together) a request may carry. Beyond hyper's own limits
/// (about 400 KiB, or 100 header lines) hyper answers a bare 431 itself.
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Oversized headers get a 431 with a sentence, like every other refusal.
async fn limit_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return axum::response::IntoResponse::into_response(AppError::HeadersTooLarge(format!(
            "The request's headers take {bytes} bytes; the limit is {MAX_HEADER_BYTES}."
        )));
    }
    next.run(request).await
}

/// A bug in a handler is a JSON 500 like any other error, and the server keeps serving.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown");
    axum::response::IntoResponse::into_response(AppError::Internal(anyhow::anyhow!(
        "handler panicked: {what}"
    )))
}

/// Request spans log the path only: query strings may carry tickets or tokens.
fn span_without_query(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::info_span!("request", method = %req.method(), path = %req.uri().path())
}

async fn not_found() -> AppError {
    AppError::NotFound("route")
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed("This method is not allowed on this path.".into())
}
