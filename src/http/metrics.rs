//! `GET /metrics` in Prometheus text format, and the middleware that counts requests.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::AppResult;
use crate::http::AppState;
use crate::metrics::HttpLabels;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, operation_id = "getMetrics", path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "application/openmetrics-text", body = String)), security(()))]
async fn metrics(State(state): State<AppState>) -> AppResult<Response> {
    let by_state = state
        .store
        .call(crate::store::tasks::count_by_state)
        .await?;
    let warm = &state.inspector.child.warm;
    let workers = crate::metrics::WorkerCounts {
        started: warm.started(),
        idle: warm.idle_count(),
        network_isolated: warm.network_isolated(),
    };
    let body = state.metrics.render(&by_state, &state.bus, workers);
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

/// Counts every request by method, matched route pattern and status.
pub async fn count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
