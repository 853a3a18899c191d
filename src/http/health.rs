//! `/healthz`: 200 once the server can take work, 503 while it shuts down or its database
//! or file storage does not answer.

use axum::extract::State;
use axum::Json;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{AppError, AppResult};
use crate::http::AppState;
use crate::storage::Storage;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz))
}

/// 200 once the server takes work; 503 while it shuts down or its database or file storage
/// does not answer.
#[utoipa::path(get, operation_id = "getHealth", path = "/healthz", tag = "operations",
    responses((status = 200, description = "Healthy: queue length, worker count, event counters", body = Object),
        (status = 503, description = "Shutting down, or the database or the file storage does not answer", body = crate::error::ErrorBody)), security(()))]
async fn healthz(State(state): State<AppState>) -> AppResult<Json<serde_json::Value>> {
    if state.shutdown.is_cancelled() {
        return Err(AppError::ShuttingDown);
    }
    let queued = state
        .store
        .call(crate::store::tasks::pending_count)
        .await
        .map_err(|e| {
            tracing::warn!(error = ?e, "health check: the database does not answer");
            AppError::DatabaseUnavailable
        })?;
    state.blobs.check().await.map_err(|e| {
        tracing::warn!(error = %e, "health check: the file storage does not answer");
        AppError::StorageUnavailable
    })?;
    let bus = state.bus.stats();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Json(serde_json::json!({
        "status": "ok",
        "database": if state.config.database_url.is_some() { "postgres" } else { "sqlite" },
        "storage": match state.blobs { Storage::Local(_) => "file", Storage::S3(_) => "s3" },
        "role": format!("{:?}", state.config.role).to_lowercase(),
        "queued": queued,
        // An API node runs no conversions.
        "workers": if state.config.role.converts() { state.workers } else { 0 },
        "events": {
            "published": count(&bus.published),
            "coalesced": count(&bus.coalesced),
            "lag_resyncs": count(&bus.lag_resyncs),
        },
    })))
}
