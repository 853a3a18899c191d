//! Tasks over REST: status (by capability), cancel, list, forget.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use uuid::Uuid;

use super::extract::{Path, Query};
use crate::app::AppState;
use crate::auth::{AuthUser, MaybeUser};
use crate::error::{AppError, AppResult};
use crate::store::tasks::{self as task_rows, DeleteOutcome};
use crate::tasks::{status_json, TaskState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks", get(list))
        .route("/tasks/{id}/status", get(status))
        .route("/tasks/{id}/cancel", post(cancel))
        .route("/tasks/{id}", delete(forget))
}

/// The task id is a capability: holding it is enough to read the status, unless the
/// server is configured to require the owner's token.
async fn status(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    Path(id): Path<Uuid>,
) -> AppResult<Json<serde_json::Value>> {
    if state.config.private_task_status && user.is_none() {
        return Err(AppError::Unauthorized(
            "This server requires a token for task status.",
        ));
    }
    let task = state
        .store
        .call(move |c| task_rows::get(c, id))
        .await?
        .filter(|t| {
            !state.config.private_task_status || user.as_ref().is_some_and(|u| u.id == t.user_id)
        })
        .ok_or(AppError::NotFound("task"))?;
    Ok(Json(status_json(&task)))
}

async fn cancel(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> AppResult<Json<serde_json::Value>> {
    let task = crate::tasks::cancel(&state.store, &state.bus, &state.queue, user.id, id).await?;
    Ok(Json(status_json(&task)))
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(q): Query<ListQuery>,
) -> AppResult<Json<serde_json::Value>> {
    let filter = q
        .state
        .as_deref()
        .map(|s| {
            TaskState::parse(s).ok_or_else(|| {
                AppError::BadRequest(format!(
                    "state must be one of PENDING, PROGRESS, SUCCESS, FAILURE, REVOKED, not {s:?}"
                ))
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(AppError::BadRequest(
            "limit must be between 1 and 500.".into(),
        ));
    }
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| AppError::BadRequest("cursor is not one this server gave out.".into()))
        })
        .transpose()?;
    // One more than asked tells whether there is a next page.
    let mut tasks = state
        .store
        .call(move |c| task_rows::list(c, user.id, filter, limit + 1, before))
        .await?;
    let next_cursor = (tasks.len() > limit as usize).then(|| {
        tasks.truncate(limit as usize);
        tasks.last().map(|t| t.seq.to_string())
    });
    Ok(Json(serde_json::json!({
        "tasks": tasks.iter().map(status_json).collect::<Vec<_>>(),
        "next_cursor": next_cursor.flatten(),
    })))
}

async fn forget(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> AppResult<StatusCode> {
    match state
        .store
        .call(move |c| task_rows::delete(c, user.id, id))
        .await?
    {
        DeleteOutcome::Deleted => Ok(StatusCode::NO_CONTENT),
        DeleteOutcome::Running => Err(AppError::Conflict(
            "The task is still queued or running; cancel it first.".into(),
        )),
        DeleteOutcome::NotFound => Err(AppError::NotFound("task")),
    }
}
