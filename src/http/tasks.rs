//! Tasks over REST: status (by capability), cancel, list, forget.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use uuid::Uuid;

use super::extract::{Path, Query};
use crate::error::{AppError, AppResult, ErrorBody};
use crate::http::auth::{AuthUser, MaybeUser};
use crate::http::AppState;
use crate::store::tasks as task_rows;
use crate::tasks::{status_json, TaskState, TaskStatus};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(status))
        .routes(routes!(cancel))
        .routes(routes!(forget))
}

/// A page of tasks, newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
struct TaskPage<'a> {
    tasks: Vec<TaskStatus<'a>>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// The task id is a capability: holding it is enough to read the status, unless the
/// server is configured to require the owner's token.
/// A task's status. The task id is a capability: no token is needed, unless the server runs
/// with `--private-task-status`.
#[utoipa::path(get, path = "/tasks/{id}/status", tag = "tasks", params(("id" = Uuid, Path, description = "Task id")),
    responses((status = 200, description = "The status", body = TaskStatus), (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody)), security((), ("bearer" = []), ("cookie" = [])))]
async fn status(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    Path(id): Path<Uuid>,
) -> AppResult<Response> {
    let user = user.map(|u| u.id);
    state.status_caller(user, "This server requires a token for task status.")?;
    // The hot path for pollers: the latest published status, already serialised. A queued
    // task's queue position moves without events of its own, so it is read from the store.
    // With several nodes, this node's bus may trail the database by a moment, and a poller
    // that saw the database's newer status must never see an older one: read the store.
    let single_node = state.config.database_url.is_none();
    if let Some(event) = single_node
        .then(|| state.bus.latest(id))
        .flatten()
        .filter(|e| e.state != TaskState::Pending)
    {
        if !state.sees_task(user, event.user_id) {
            return Err(AppError::NotFound("task"));
        }
        let mut response = event.status().into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(response);
    }
    let task = state.visible_task(user, id).await?;
    Ok(Json(status_json(&task)).into_response())
}

/// Cancel a task: a queued one is REVOKED at once; a running one shows "Cancelling…" until
/// its work has stopped, then REVOKED.
#[utoipa::path(post, path = "/tasks/{id}/cancel", tag = "tasks", params(("id" = Uuid, Path, description = "Task id")),
    responses((status = 200, description = "The status after the request", body = TaskStatus), (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody)), security(("bearer" = []), ("cookie" = [])))]
async fn cancel(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> AppResult<Json<serde_json::Value>> {
    let task = state.tasks.cancel(user.id, id).await?;
    Ok(Json(status_json(&task)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only tasks in this state.
    #[param(inline, value_type = Option<TaskState>)]
    state: Option<String>,
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
}

/// The caller's tasks, newest first.
#[utoipa::path(get, path = "/tasks", tag = "tasks", params(ListQuery),
    responses((status = 200, description = "A page of tasks", body = TaskPage), (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody)), security(("bearer" = []), ("cookie" = [])))]
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

/// Forget a finished task's record (its output item stays).
#[utoipa::path(delete, path = "/tasks/{id}", tag = "tasks", params(("id" = Uuid, Path, description = "Task id")),
    responses((status = 204, description = "Forgotten"), (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 409, description = "Still queued or running", body = ErrorBody)), security(("bearer" = []), ("cookie" = [])))]
async fn forget(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> AppResult<StatusCode> {
    state.tasks.forget(user.id, id).await?;
    state.bus.forget(id);
    Ok(StatusCode::NO_CONTENT)
}
