//! `/healthz`: 200 once the server can take work, 503 while it shuts down or its database
//! does not answer.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use crate::app::AppState;
use crate::error::{AppError, AppResult};

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

async fn healthz(State(state): State<AppState>) -> AppResult<Json<serde_json::Value>> {
    if state.shutdown.is_cancelled() {
        return Err(AppError::ShuttingDown);
    }
    let queued = state
        .store
        .call(|c| crate::store::tasks::pending_count(c))
        .await?;
    let bus = state.bus.stats();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Json(serde_json::json!({
        "status": "ok",
        "queued": queued,
        "workers": state.workers,
        "events": {
            "published": count(&bus.published),
            "coalesced": count(&bus.coalesced),
            "lag_resyncs": count(&bus.lag_resyncs),
        },
    })))
}
