//! Execution and jobs. A job is a task: its status is the task's state in the standard's
//! words (accepted, running, successful, failed, dismissed), its results the output file (by
//! a signed link) and its id in the tree, and dismissing it cancels the task, whose worker
//! is stopped, before the answer says `dismissed`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::super::auth::AuthUser;
use super::super::extract::{Json as Body, Path, Query};
use super::super::{links, tree_items, AppState};
use super::process::{self, Source, COG_TYPE, PROCESS_ID};
use crate::domain::{TaskRecord, TaskState};
use crate::error::{AppError, AppResult};
use crate::store::tasks as task_rows;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/ogcapi/processes/{id}/execution",
            post(execute).options(super::preflight),
        )
        .route("/ogcapi/jobs", get(list).options(super::preflight))
        .route(
            "/ogcapi/jobs/{id}",
            get(status).delete(dismiss).options(super::preflight),
        )
        .route(
            "/ogcapi/jobs/{id}/results",
            get(results).options(super::preflight),
        )
}

/// Inputs up to this size run synchronously when the client does not ask for async.
const SYNC_MAX_BYTES: u64 = 64 << 20;

/// How long a synchronous execution waits for its job before answering as an asynchronous
/// one would (and saying so).
const SYNC_WAIT: Duration = Duration::from_secs(60);

/// How long a dismissal waits for a running job's worker to stop.
const DISMISS_WAIT: Duration = Duration::from_secs(30);

/// How long the link in a job's results opens the file.
const RESULT_LINK_SECS: u64 = 86_400;

fn ogc_status(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending => "accepted",
        TaskState::Progress => "running",
        TaskState::Success => "successful",
        TaskState::Failure => "failed",
        TaskState::Revoked => "dismissed",
    }
}

fn task_state(status: &str) -> Option<TaskState> {
    Some(match status {
        "accepted" => TaskState::Pending,
        "running" => TaskState::Progress,
        "successful" => TaskState::Success,
        "failed" => TaskState::Failure,
        "dismissed" => TaskState::Revoked,
        _ => return None,
    })
}

/// The job's statusInfo.
fn status_info(base: &str, task: &TaskRecord, message: Option<String>) -> Value {
    let id = task.id;
    let mut links = vec![
        json!({"href": format!("{base}/jobs/{id}"), "rel": "self", "type": "application/json", "title": "This job"}),
        json!({"href": format!("{}/api/v1/tasks/{id}/events", base.trim_end_matches("/ogcapi")), "rel": "alternate", "type": "text/event-stream", "title": "Live events of this job"}),
    ];
    if task.state == TaskState::Success {
        links.push(json!({"href": format!("{base}/jobs/{id}/results"), "rel": "http://www.opengis.net/def/rel/ogc/1.0/results", "type": "application/json", "title": "Results"}));
    }
    let message = message
        .or_else(|| task.error.clone())
        .unwrap_or_else(|| task.status.clone());
    let updated = task
        .finished_at
        .as_deref()
        .or(task.started_at.as_deref())
        .unwrap_or(&task.created_at);
    let mut info = json!({
        "processID": PROCESS_ID,
        "type": "process",
        "jobID": id.to_string(),
        "status": ogc_status(task.state),
        "message": message,
        "created": task.created_at,
        "updated": updated,
        "progress": task.progress.clamp(0.0, 100.0).round() as i64,
        "links": links,
    });
    if let Some(started) = &task.started_at {
        info["started"] = json!(started);
    }
    if let Some(finished) = &task.finished_at {
        info["finished"] = json!(finished);
    }
    info
}

async fn owned_task(state: &AppState, user: Uuid, id: &str) -> AppResult<TaskRecord> {
    let id = id.parse::<Uuid>().map_err(|_| AppError::NotFound("job"))?;
    let task = state
        .store
        .call(move |c| task_rows::get(c, id))
        .await?
        .filter(|t| t.user_id == user);
    task.ok_or(AppError::NotFound("job"))
}

/// Waits until task `id` is in a final state, or `wait` passes; the task as it then is.
async fn settle(state: &AppState, id: Uuid, wait: Duration) -> AppResult<Option<TaskRecord>> {
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before reading, so no change falls between the read and the wait.
    let mut events = state.bus.subscribe_to(crate::bus::Topic::Task(id));
    loop {
        let task = state.store.call(move |c| task_rows::get(c, id)).await?;
        match &task {
            Some(t) if !t.state.is_final() => {}
            _ => return Ok(task),
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(task);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.shutdown.cancelled() => return Ok(task),
            // The task's events wake a look; a lagging receiver only looks again.
            _ = events.recv() => {}
        }
    }
}

/// Execute `convert-to-cog`. `Prefer: respond-async` answers 201 with the job at once; without
/// it, an input up to 64 MiB runs synchronously (the results, as a document or raw), and a
/// larger one runs asynchronously, the answer saying why.
async fn execute(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(body): Body<Value>,
) -> AppResult<Response> {
    if id != PROCESS_ID {
        return Err(AppError::NotFound("process"));
    }
    if state.shutdown.is_cancelled() {
        return Err(AppError::ShuttingDown);
    }
    let request = process::read(&body)?;
    let item_id = match &request.source {
        Source::Item(id) => *id,
        Source::Link(url) => {
            let (owner, item) = links::item_of_link(&state, url).await?;
            if owner != user.id {
                return Err(AppError::Forbidden(
                    "The link is to another user's file: only its owner can convert it.",
                ));
            }
            item
        }
    };
    let item = tree_items::owned_item(&state, user.id, item_id).await?;
    let callbacks =
        super::super::webhooks::check_callbacks(&state, user.id, request.callbacks).await?;
    let options = tree_items::conversion_options(&state, request.options).await?;
    let task_id = tree_items::submit_conversion(&state, &item, options, callbacks, None).await?;

    let prefer = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    let wants_async = prefer.iter().any(|p| p == "respond-async");
    let wants_sync = prefer.iter().any(|p| p == "respond-sync");
    let base = super::base(&state, &headers);
    let location = format!("{base}/jobs/{task_id}");
    if wants_async {
        let task = owned_task(&state, user.id, &task_id.to_string()).await?;
        return Ok(accepted(&base, &task, None, Some("respond-async")));
    }
    if item.size > SYNC_MAX_BYTES {
        let task = owned_task(&state, user.id, &task_id.to_string()).await?;
        let why = format!(
            "Running asynchronously: the input has {} MiB, more than the {} MiB this server converts synchronously. Follow the Location to the job.",
            item.size >> 20,
            SYNC_MAX_BYTES >> 20
        );
        return Ok(accepted(&base, &task, Some(why), None));
    }
    let task = settle(&state, task_id, SYNC_WAIT)
        .await?
        .ok_or(AppError::NotFound("job"))?;
    if !task.state.is_final() {
        let why = format!(
            "Still running after {} s, so answered asynchronously. Follow the Location to the job.",
            SYNC_WAIT.as_secs()
        );
        return Ok(accepted(&base, &task, Some(why), None));
    }
    let mut response = job_results(&state, &headers, &task, &request.outputs, request.raw).await?;
    let h = response.headers_mut();
    h.insert(
        header::LINK,
        HeaderValue::from_str(&format!("<{location}>; rel=\"monitor\"")).expect("a URL"),
    );
    if wants_sync {
        h.insert(
            "preference-applied",
            HeaderValue::from_static("respond-sync"),
        );
    }
    Ok(response)
}

/// 201 with the job's statusInfo, and where to follow it.
fn accepted(
    base: &str,
    task: &TaskRecord,
    why: Option<String>,
    applied: Option<&'static str>,
) -> Response {
    let location = format!("{base}/jobs/{}", task.id);
    let mut response = (StatusCode::CREATED, Json(status_info(base, task, why))).into_response();
    let h = response.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("a URL"),
    );
    if let Some(applied) = applied {
        h.insert("preference-applied", HeaderValue::from_static(applied));
    }
    response
}

/// The results of a finished job: a document of the outputs asked for (all when none were),
/// or one output raw. A job that did not succeed answers the standard's exception.
async fn job_results(
    state: &AppState,
    headers: &HeaderMap,
    task: &TaskRecord,
    outputs: &[String],
    raw: bool,
) -> AppResult<Response> {
    match task.state {
        TaskState::Success => {}
        TaskState::Failure => {
            return Ok(super::exception(
                422,
                "urn:rastercast:error:job-failed",
                "The job failed",
                task.error
                    .clone()
                    .unwrap_or_else(|| "The conversion failed.".into()),
            ))
        }
        TaskState::Revoked => {
            return Ok(super::exception(
                410,
                "urn:rastercast:error:job-dismissed",
                "The job was dismissed",
                "The job was dismissed before it finished: it has no results.".into(),
            ))
        }
        _ => {
            return Ok(super::exception(
                404,
                "result-not-ready",
                "Result not ready",
                format!(
                    "The job is {}; its results are ready once it is successful.",
                    ogc_status(task.state)
                ),
            ))
        }
    }
    let output_id = task
        .result
        .as_ref()
        .and_then(|r| r["tree_item_id"].as_str())
        .and_then(|id| id.parse::<Uuid>().ok())
        .ok_or_else(|| {
            AppError::Internal(anyhow::anyhow!("a successful task without an output"))
        })?;
    let output = tree_items::owned_item(state, task.user_id, output_id)
        .await
        .map_err(|_| AppError::Conflict("The job's output file was deleted since.".into()))?;
    let wants = |id: &str| outputs.is_empty() || outputs.iter().any(|o| o == id);
    if raw {
        if wants("cog") {
            return super::super::content::serve_item(state, &output, headers).await;
        }
        return Ok((
            [(header::CONTENT_TYPE, "text/plain")],
            output.id.to_string(),
        )
            .into_response());
    }
    let mut document = serde_json::Map::new();
    if wants("cog") {
        let link = links::link_to(state, headers, &output, RESULT_LINK_SECS).await?;
        document.insert(
            "cog".into(),
            json!({"href": link.url, "type": COG_TYPE, "rel": "enclosure", "title": output.name}),
        );
    }
    if wants("tree_item_id") {
        document.insert("tree_item_id".into(), json!(output.id.to_string()));
    }
    Ok(Json(Value::Object(document)).into_response())
}

#[derive(Deserialize)]
struct JobQuery {
    /// One status, or several separated by commas.
    status: Option<String>,
    #[serde(rename = "processID")]
    process_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    limit: Option<u32>,
}

/// The caller's jobs, newest first: every conversion of theirs is one.
async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Query(q): Query<JobQuery>,
) -> AppResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::BadRequest(
            "limit must be between 1 and 1000.".into(),
        ));
    }
    let wanted: Vec<TaskState> = match &q.status {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|s| {
                task_state(s.trim()).ok_or_else(|| {
                    AppError::BadRequest(format!(
                        "{s:?} is not a job status: accepted, running, successful, failed or dismissed."
                    ))
                })
            })
            .collect::<AppResult<_>>()?,
    };
    let base = super::base(&state, &headers);
    let other_process = q
        .process_id
        .is_some_and(|p| p.split(',').all(|p| p.trim() != PROCESS_ID));
    let other_type = q.kind.is_some_and(|t| t != "process");
    let tasks = if other_process || other_type {
        Vec::new()
    } else {
        let one = (wanted.len() == 1).then(|| wanted[0]);
        let fetch = if wanted.len() > 1 { 1000 } else { limit };
        let mut tasks = state
            .store
            .call(move |c| task_rows::list(c, user.id, one, fetch, None))
            .await?;
        tasks.retain(|t| wanted.is_empty() || wanted.contains(&t.state));
        tasks.truncate(limit as usize);
        tasks
    };
    Ok(Json(json!({
        "jobs": tasks.iter().map(|t| status_info(&base, t, None)).collect::<Vec<_>>(),
        "links": [{"href": format!("{base}/jobs"), "rel": "self", "type": "application/json", "title": "Jobs"}],
    })))
}

async fn status(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    let task = owned_task(&state, user.id, &id).await?;
    Ok(Json(status_info(
        &super::base(&state, &headers),
        &task,
        None,
    )))
}

async fn results(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let task = owned_task(&state, user.id, &id).await?;
    job_results(&state, &headers, &task, &[], false).await
}

/// Dismiss a job: a queued one is cancelled at once, a running one's worker is stopped (the
/// answer waits for it), and a finished one is forgotten (its output file stays).
async fn dismiss(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    let task = owned_task(&state, user.id, &id).await?;
    let base = super::base(&state, &headers);
    let mut task = if task.state.is_final() {
        task
    } else {
        match state.tasks.cancel(user.id, task.id).await {
            Ok(_) | Err(AppError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        settle(&state, task.id, DISMISS_WAIT)
            .await?
            .ok_or(AppError::NotFound("job"))?
    };
    if !task.state.is_final() {
        return Err(AppError::Conflict(format!(
            "The job's worker did not stop within {} s; it will. Ask again in a moment.",
            DISMISS_WAIT.as_secs()
        )));
    }
    if task.state != TaskState::Revoked {
        // Finished before it could be stopped: dismissing it forgets it.
        state.tasks.forget(user.id, task.id).await?;
    }
    let message = "Dismissed.".to_owned();
    task.state = TaskState::Revoked;
    Ok(Json(status_info(&base, &task, Some(message))))
}
