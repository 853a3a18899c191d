//! Tasks over REST: status (by capability), cancel, retry, list, forget, and the same in bulk.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::{Json as JsonBody, OptionalJson, Path, Query};
use super::tree_items::{conversion_options, Started};
use crate::domain::options::RequestedOptions;
use crate::error::{AppError, AppResult, ErrorBody};
use crate::http::auth::{AuthUser, MaybeUser};
use crate::http::AppState;
use crate::store::tasks::{self as task_rows, Filter};
use crate::tasks::{status_json, TaskState, TaskStatus};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, forget_matching))
        .routes(routes!(status))
        .routes(routes!(cancel))
        .routes(routes!(retry))
        .routes(routes!(cancel_matching))
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
#[utoipa::path(get, operation_id = "getTaskStatus", path = "/tasks/{id}/status", tag = "tasks", params(("id" = Uuid, Path, description = "Task id")),
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
#[utoipa::path(post, operation_id = "cancelTask", path = "/tasks/{id}/cancel", tag = "tasks", params(("id" = Uuid, Path, description = "Task id")),
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

/// Run a FAILURE or REVOKED task again, as a new task with the same source and the options in
/// the body (none, empty or `null`: the old task's). The old task stays as it ended.
#[utoipa::path(post, operation_id = "retryTask", path = "/tasks/{id}/retry", tag = "tasks", params(("id" = Uuid, Path, description = "Task id")),
    request_body(content = Option<RequestedOptions>, content_type = "application/json"),
    responses((status = 200, description = "The new task, queued", body = Started), (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 409, description = "Not FAILURE or REVOKED", body = ErrorBody),
        (status = 410, description = "The task's record expired", body = ErrorBody),
        (status = 415, description = "Options not sent as JSON", body = ErrorBody),
        (status = 422, description = "Impossible options, or the source is gone", body = ErrorBody),
        (status = 429, description = "Too many tasks queued or running for this user", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody)), security(("bearer" = []), ("cookie" = [])))]
async fn retry(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    OptionalJson(requested): OptionalJson<Option<RequestedOptions>>,
) -> AppResult<Json<Started>> {
    if state.shutdown.is_cancelled() {
        return Err(AppError::ShuttingDown);
    }
    // New options come with their own callback (or none); without, the old task's stay.
    let (options, callbacks) = match requested {
        Some(mut requested) => {
            let url = requested.callback_url.take();
            let callbacks = super::webhooks::callbacks(&state, user.id, url).await?;
            (
                Some(conversion_options(&state, requested).await?),
                Some(callbacks),
            )
        }
        None => (None, None),
    };
    let limit = state.config.max_active_tasks_per_user;
    let task = state
        .tasks
        .retry(user.id, id, options, callbacks, limit)
        .await?;
    Ok(Json(Started::new(task.id, task.source_id, Some(id))))
}

/// Which of the caller's tasks to cancel; at least one field, and every field given must
/// match.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
struct CancelFilter {
    /// These tasks.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    ids: Option<Vec<Uuid>>,
    /// PENDING or PROGRESS.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, value_type = Option<ActiveState>)]
    state: Option<TaskState>,
    /// Tasks converting this file.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    tree_item_id: Option<Uuid>,
    /// Tasks created before this time (RFC 3339).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, format = DateTime)]
    created_before: Option<String>,
}

/// A field that may be left out but, when sent, holds a value: `null` is refused (422), so
/// that a filter never silently matches more than was meant.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// The states a task can be cancelled in (for the OpenAPI document).
#[derive(ToSchema)]
#[allow(dead_code, clippy::upper_case_acronyms)]
enum ActiveState {
    PENDING,
    PROGRESS,
}

/// The states of finished tasks (for the OpenAPI document).
#[derive(ToSchema)]
#[allow(dead_code, clippy::upper_case_acronyms)]
enum FinishedState {
    SUCCESS,
    FAILURE,
    REVOKED,
}

/// What a bulk cancel did.
#[derive(Serialize, ToSchema)]
struct CancelledTasks {
    cancelled: usize,
    task_ids: Vec<Uuid>,
}

/// Cancel every queued or running task of the caller's that the filter takes: queued ones are
/// REVOKED at once, running ones show "Cancelling…" until their work has stopped.
#[utoipa::path(post, operation_id = "cancelTasks", path = "/tasks/cancel", tag = "tasks", request_body = CancelFilter,
    responses((status = 200, description = "What was cancelled", body = CancelledTasks), (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "No filter, or a field that cannot match", body = ErrorBody)), security(("bearer" = []), ("cookie" = [])))]
async fn cancel_matching(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    JsonBody(body): JsonBody<CancelFilter>,
) -> AppResult<Json<CancelledTasks>> {
    if body.ids.is_none()
        && body.state.is_none()
        && body.tree_item_id.is_none()
        && body.created_before.is_none()
    {
        return Err(AppError::Unprocessable(
            "Give at least one of ids, state, tree_item_id and created_before.".into(),
        ));
    }
    if body.state.is_some_and(TaskState::is_final) {
        return Err(AppError::Unprocessable(
            "Only PENDING and PROGRESS tasks can be cancelled; state must be one of them.".into(),
        ));
    }
    let filter = Filter {
        ids: body.ids,
        state: body.state,
        tree_item_id: body.tree_item_id,
        created_before: body.created_before.as_deref().map(instant).transpose()?,
        finished_before: None,
    };
    let task_ids = state.tasks.cancel_matching(user.id, filter).await?;
    Ok(Json(CancelledTasks {
        cancelled: task_ids.len(),
        task_ids,
    }))
}

/// A time as clients send it (RFC 3339, any offset), as the API writes times, so that the two
/// compare as text.
fn instant(text: &str) -> AppResult<String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| crate::time::format(t.with_timezone(&chrono::Utc)))
        .map_err(|e| AppError::Unprocessable(format!("{text:?} is not an RFC 3339 time: {e}")))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ForgetQuery {
    /// SUCCESS, FAILURE or REVOKED.
    #[param(inline, value_type = Option<FinishedState>)]
    state: Option<String>,
    /// Tasks that finished before this time (RFC 3339).
    #[param(format = DateTime)]
    finished_before: Option<String>,
}

/// How many tasks a bulk forget removed.
#[derive(Serialize, ToSchema)]
struct Forgotten {
    deleted: usize,
}

/// Forget the caller's finished tasks in bulk (their outputs stay); at least one parameter.
#[utoipa::path(delete, operation_id = "forgetTasks", path = "/tasks", tag = "tasks", params(ForgetQuery),
    responses((status = 200, description = "How many were forgotten", body = Forgotten), (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 422, description = "No parameter, or a state that is not final", body = ErrorBody)), security(("bearer" = []), ("cookie" = [])))]
async fn forget_matching(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(q): Query<ForgetQuery>,
) -> AppResult<Json<Forgotten>> {
    if q.state.is_none() && q.finished_before.is_none() {
        return Err(AppError::Unprocessable(
            "Give state, finished_before or both.".into(),
        ));
    }
    let filter_state = q.state.as_deref().map(parse_state).transpose()?;
    if filter_state.is_some_and(|s| !s.is_final()) {
        return Err(AppError::Unprocessable(
            "Only finished tasks can be forgotten: state must be SUCCESS, FAILURE or REVOKED."
                .into(),
        ));
    }
    let filter = Filter {
        state: filter_state,
        finished_before: q.finished_before.as_deref().map(instant).transpose()?,
        ..Filter::default()
    };
    let deleted = state.tasks.forget_matching(user.id, filter).await?;
    Ok(Json(Forgotten {
        deleted: deleted.len(),
    }))
}

fn parse_state(s: &str) -> AppResult<TaskState> {
    TaskState::parse(s).ok_or_else(|| {
        AppError::BadRequest(format!(
            "state must be one of PENDING, PROGRESS, SUCCESS, FAILURE, REVOKED, not {s:?}"
        ))
    })
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
#[utoipa::path(get, operation_id = "listTasks", path = "/tasks", tag = "tasks", params(ListQuery),
    responses((status = 200, description = "A page of tasks", body = TaskPage), (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody)), security(("bearer" = []), ("cookie" = [])))]
async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(q): Query<ListQuery>,
) -> AppResult<Json<serde_json::Value>> {
    let filter = q.state.as_deref().map(parse_state).transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(AppError::BadRequest(
            "limit must be between 1 and 500.".into(),
        ));
    }
    let before = super::extract::cursor(q.cursor.as_deref())?;
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
#[utoipa::path(delete, operation_id = "forgetTask", path = "/tasks/{id}", tag = "tasks", params(("id" = Uuid, Path, description = "Task id")),
    responses((status = 204, description = "Forgotten"), (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 409, description = "Still queued or running", body = ErrorBody)), security(("bearer" = []), ("cookie" = [])))]
async fn forget(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> AppResult<StatusCode> {
    state.tasks.forget(user.id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
