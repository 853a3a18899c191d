//! Webhook endpoints (`/webhooks`), their delivery logs, and the secret that signs one-off
//! callbacks. Deliveries are queued by the task service and sent by [`crate::webhooks`];
//! these handlers register where they go and show what came of them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::auth::AuthUser;
use super::extract::{Json as Body, OptionalJson, Path, Query};
use super::AppState;
use crate::domain::webhook::{self, Callback, EventType, Secret};
use crate::error::{AppError, AppResult, ErrorBody};
use crate::store::webhooks::{self as rows, Delivery, Endpoint, EndpointChange, NewEndpoint};
use crate::webhooks::{check_url, new_secret, ROTATION_OVERLAP};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_endpoint, list_endpoints))
        .routes(routes!(get_endpoint, update_endpoint, delete_endpoint))
        .routes(routes!(rotate_secret))
        .routes(routes!(send_test))
        .routes(routes!(endpoint_deliveries))
        .routes(routes!(redeliver))
        .routes(routes!(callback_secret))
        .routes(routes!(rotate_callback_secret))
        .routes(routes!(task_deliveries))
}

/// The longest description kept.
const MAX_DESCRIPTION: usize = 500;

/// A new endpoint.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewEndpointRequest {
    /// Where deliveries are POSTed: http(s), public addresses only.
    #[schema(example = "https://example.com/hooks/rastercast")]
    url: String,
    /// At least one of task.started, task.progress, task.succeeded, task.failed, task.revoked.
    #[schema(value_type = Vec<EventName>, min_items = 1, example = json!(["task.succeeded", "task.failed"]))]
    events: Vec<String>,
    /// A `whsec_` secret of your own (24 to 64 bytes); one is made when left out, and shown
    /// once, in this answer.
    secret: Option<String>,
    #[schema(max_length = 500)]
    description: Option<String>,
}

/// An event type an endpoint may subscribe to (the OpenAPI document's list; the handlers read
/// the names with [`EventType::parse`]).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
enum EventName {
    #[serde(rename = "task.started")]
    Started,
    #[serde(rename = "task.progress")]
    Progress,
    #[serde(rename = "task.succeeded")]
    Succeeded,
    #[serde(rename = "task.failed")]
    Failed,
    #[serde(rename = "task.revoked")]
    Revoked,
}

/// An endpoint as its owner sees it. The secret appears only in the answer that made it.
#[derive(Serialize, ToSchema)]
struct EndpointView {
    id: Uuid,
    url: String,
    events: Vec<String>,
    description: String,
    /// A disabled endpoint gets no deliveries; its pending ones wait until it is enabled.
    disabled: bool,
    /// Why it was disabled (a 410, five days of failures, or its owner).
    disabled_reason: Option<String>,
    /// Since when every delivery failed (RFC 3339), while that lasts.
    failing_since: Option<String>,
    /// While a rotated-out secret still signs beside the new one: until when (RFC 3339).
    previous_secret_until: Option<String>,
    created_at: String,
    updated_at: String,
    /// The signing secret: only in the answer that created or rotated it server-side.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

fn ms_to_time(ms: Option<i64>) -> Option<String> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(crate::time::format)
}

impl EndpointView {
    fn new(e: Endpoint, shown: Option<String>) -> EndpointView {
        let now = chrono::Utc::now().timestamp_millis();
        EndpointView {
            id: e.id,
            url: e.url,
            events: e.events,
            description: e.description,
            disabled: e.disabled,
            disabled_reason: e.disabled_reason,
            failing_since: ms_to_time(e.failing_since),
            previous_secret_until: ms_to_time(e.previous_until.filter(|until| *until > now)),
            created_at: e.created_at,
            updated_at: e.updated_at,
            secret: shown,
        }
    }
}

/// The event types a list names, each known and subscribable.
fn event_list(events: &[String]) -> AppResult<Vec<String>> {
    let known = || {
        EventType::TASK_EVENTS
            .iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if events.is_empty() {
        return Err(AppError::Unprocessable(format!(
            "events names at least one of {}.",
            known()
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for name in events {
        match EventType::parse(name) {
            Some(e) if e != EventType::WebhookTest => {
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
            _ => {
                return Err(AppError::Unprocessable(format!(
                    "{name:?} is not an event type; choose from {}.",
                    known()
                )))
            }
        }
    }
    Ok(out)
}

async fn checked_url(state: &AppState, url: &str) -> AppResult<String> {
    check_url(state.webhooks.policy(), url)
        .await
        .map(|u| u.to_string())
        .map_err(AppError::Unprocessable)
}

fn description(text: Option<String>) -> AppResult<Option<String>> {
    match text {
        Some(d) if d.chars().count() > MAX_DESCRIPTION => Err(AppError::Unprocessable(format!(
            "A description has at most {MAX_DESCRIPTION} characters."
        ))),
        other => Ok(other),
    }
}

/// The callback of `user`'s conversion's `callback_url`, checked as endpoint URLs are. The
/// user's callback secret is made now if it does not exist yet: no callback goes out unsigned.
pub async fn callbacks(
    state: &AppState,
    user: Uuid,
    url: Option<String>,
) -> AppResult<Vec<Callback>> {
    let callbacks = url
        .map(|url| Callback {
            url,
            events: EventType::FINAL.to_vec(),
        })
        .into_iter()
        .collect();
    check_callbacks(state, user, callbacks).await
}

/// Checks each callback's URL as endpoint URLs are, and makes `user`'s callback secret if it
/// does not exist yet.
pub async fn check_callbacks(
    state: &AppState,
    user: Uuid,
    callbacks: Vec<Callback>,
) -> AppResult<Vec<Callback>> {
    if callbacks.is_empty() {
        return Ok(callbacks);
    }
    let mut checked = Vec::with_capacity(callbacks.len());
    for callback in callbacks {
        checked.push(Callback {
            url: checked_url(state, &callback.url).await?,
            events: callback.events,
        });
    }
    state
        .store
        .call(move |c| rows::callback_secret(c, user, new_secret))
        .await?;
    Ok(checked)
}

/// Register an endpoint: deliveries of the chosen events of your tasks are POSTed to it,
/// signed as Standard Webhooks says (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
#[utoipa::path(post, operation_id = "createWebhook", path = "/webhooks", tag = "webhooks",
    request_body(content = NewEndpointRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered; the answer shows a server-made secret, once", body = EndpointView),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 409, description = "The caller has the most endpoints allowed", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "A URL that is refused (not http(s), not resolving, or a private address), an unknown event type, or a malformed secret", body = ErrorBody),
    ), security(("bearer" = []), ("cookie" = [])))]
async fn create_endpoint(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Body(request): Body<NewEndpointRequest>,
) -> AppResult<(StatusCode, Json<EndpointView>)> {
    let events = event_list(&request.events)?;
    let description = description(request.description)?.unwrap_or_default();
    let (secret, shown) = match request.secret {
        Some(given) => {
            let secret = Secret::parse(&given).map_err(|e| AppError::Unprocessable(e.0))?;
            (secret.reveal(), None)
        }
        None => {
            let made = new_secret();
            (made.clone(), Some(made))
        }
    };
    let url = checked_url(&state, &request.url).await?;
    let max = state.config.max_webhooks_per_user;
    let new = NewEndpoint {
        user_id: user.id,
        url,
        events,
        description,
        secret,
    };
    let endpoint = state
        .store
        .call(move |c| rows::create_endpoint(c, new, max))
        .await?
        .ok_or_else(|| {
            AppError::Conflict(format!(
                "You have {max} webhook endpoints, the most allowed; delete one first."
            ))
        })?;
    Ok((
        StatusCode::CREATED,
        Json(EndpointView::new(endpoint, shown)),
    ))
}

/// The caller's endpoints.
#[utoipa::path(get, operation_id = "listWebhooks", path = "/webhooks", tag = "webhooks",
    responses((status = 200, description = "The caller's endpoints, oldest first", body = Vec<EndpointView>),
        (status = 401, description = "No or bad credentials", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn list_endpoints(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> AppResult<Json<Vec<EndpointView>>> {
    let endpoints = state
        .store
        .call(move |c| rows::list_endpoints(c, user.id))
        .await?;
    Ok(Json(
        endpoints
            .into_iter()
            .map(|e| EndpointView::new(e, None))
            .collect(),
    ))
}

async fn owned(state: &AppState, user: Uuid, id: Uuid) -> AppResult<Endpoint> {
    state
        .store
        .call(move |c| rows::get_endpoint(c, user, id))
        .await?
        .ok_or(AppError::NotFound("webhook"))
}

/// One endpoint.
#[utoipa::path(get, operation_id = "getWebhook", path = "/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint")),
    responses((status = 200, description = "The endpoint", body = EndpointView),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn get_endpoint(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> AppResult<Json<EndpointView>> {
    Ok(Json(EndpointView::new(
        owned(&state, user.id, id).await?,
        None,
    )))
}

/// Fields to change; those left out stay.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct EndpointPatch {
    url: Option<String>,
    #[schema(value_type = Option<Vec<EventName>>, min_items = 1)]
    events: Option<Vec<String>>,
    #[schema(max_length = 500)]
    description: Option<String>,
    /// `false` enables a disabled endpoint again: its waiting deliveries go out.
    disabled: Option<bool>,
}

/// Change an endpoint, or enable a disabled one again (`{"disabled": false}`).
#[utoipa::path(patch, operation_id = "updateWebhook", path = "/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint")),
    request_body(content = EndpointPatch, content_type = "application/json"),
    responses((status = 200, description = "The endpoint as it now is", body = EndpointView),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "A refused URL or an unknown event type", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn update_endpoint(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Body(patch): Body<EndpointPatch>,
) -> AppResult<Json<EndpointView>> {
    let events = patch.events.as_deref().map(event_list).transpose()?;
    let description = description(patch.description)?;
    let url = match &patch.url {
        Some(url) => Some(checked_url(&state, url).await?),
        None => None,
    };
    let change = EndpointChange {
        url,
        events,
        description,
        disabled: patch.disabled,
    };
    let endpoint = state
        .store
        .call(move |c| rows::update_endpoint(c, user.id, id, change))
        .await?
        .ok_or(AppError::NotFound("webhook"))?;
    if patch.disabled == Some(false) {
        state.webhooks.wake();
    }
    Ok(Json(EndpointView::new(endpoint, None)))
}

/// Delete an endpoint and its delivery log.
#[utoipa::path(delete, operation_id = "deleteWebhook", path = "/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint")),
    responses((status = 204, description = "Deleted"),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn delete_endpoint(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> AppResult<StatusCode> {
    if !state
        .store
        .call(move |c| rows::delete_endpoint(c, user.id, id))
        .await?
    {
        return Err(AppError::NotFound("webhook"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A secret to rotate to; one is made when left out.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    secret: Option<String>,
}

/// The new secret (shown once), and until when the old one still signs.
#[derive(Serialize, ToSchema)]
struct Rotated {
    /// The new secret, when the server made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// Until then (RFC 3339) every delivery carries two signatures, the new secret's and the
    /// old one's, separated by a space.
    previous_secret_until: String,
}

fn rotation(request: RotateRequest) -> AppResult<(String, Option<String>)> {
    Ok(match request.secret {
        Some(given) => (
            Secret::parse(&given)
                .map_err(|e| AppError::Unprocessable(e.0))?
                .reveal(),
            None,
        ),
        None => {
            let made = new_secret();
            (made.clone(), Some(made))
        }
    })
}

fn overlap_end() -> String {
    crate::time::format(
        chrono::Utc::now() + chrono::Duration::from_std(ROTATION_OVERLAP).expect("a day"),
    )
}

/// Rotate an endpoint's signing secret. For a day, deliveries are signed with both secrets,
/// so that receivers can switch over without missing one.
#[utoipa::path(post, operation_id = "rotateWebhookSecret", path = "/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint")),
    request_body(content = Option<RotateRequest>, content_type = "application/json"),
    responses((status = 200, description = "Rotated", body = Rotated),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "A malformed secret", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn rotate_secret(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    OptionalJson(request): OptionalJson<RotateRequest>,
) -> AppResult<Json<Rotated>> {
    let (secret, shown) = rotation(request)?;
    let overlap = ROTATION_OVERLAP.as_millis() as i64;
    let endpoint = state
        .store
        .call(move |c| rows::rotate_secret(c, user.id, id, &secret, overlap))
        .await?
        .ok_or(AppError::NotFound("webhook"))?;
    Ok(Json(Rotated {
        secret: shown,
        previous_secret_until: ms_to_time(endpoint.previous_until).unwrap_or_else(overlap_end),
    }))
}

/// A delivery that was queued.
#[derive(Serialize, ToSchema)]
struct Queued {
    /// Its `webhook-id`; it appears in the endpoint's delivery log.
    delivery_id: String,
}

/// Send a `webhook.test` event to an endpoint now (it is queued and logged as any delivery).
#[utoipa::path(post, operation_id = "testWebhook", path = "/webhooks/{id}/test", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint")),
    responses((status = 202, description = "Queued", body = Queued),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 409, description = "The endpoint is disabled", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn send_test(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> AppResult<(StatusCode, Json<Queued>)> {
    let endpoint = owned(&state, user.id, id).await?;
    if endpoint.disabled {
        return Err(disabled());
    }
    let data = serde_json::json!({
        "endpoint_id": endpoint.id,
        "message": "A test delivery from rastercast: the signature verifies with this endpoint's secret.",
    });
    let body = webhook::body(EventType::WebhookTest, &crate::time::now(), data);
    let delivery_id = state
        .store
        .call(move |c| rows::enqueue_test(c, &endpoint, &body))
        .await?;
    state.webhooks.wake();
    Ok((StatusCode::ACCEPTED, Json(Queued { delivery_id })))
}

fn disabled() -> AppError {
    AppError::Conflict(
        "This endpoint is disabled; enable it with PATCH {\"disabled\": false} first.".into(),
    )
}

/// One attempt to deliver.
#[derive(Serialize, ToSchema)]
struct AttemptView {
    /// When it was sent (RFC 3339).
    at: String,
    /// The receiver's status code; absent when no answer came.
    status_code: Option<u16>,
    latency_ms: i64,
    /// The first KiB of the answer's body.
    response: String,
    /// Why no answer came.
    error: Option<String>,
}

/// A delivery: one event to one endpoint or callback, and every attempt to send it.
#[derive(Serialize, ToSchema)]
struct DeliveryView {
    /// The `webhook-id`: the same for every attempt, so receivers can deduplicate.
    id: String,
    endpoint_id: Option<Uuid>,
    callback_url: Option<String>,
    task_id: Option<Uuid>,
    /// The event type.
    #[serde(rename = "type")]
    event_type: String,
    /// pending, succeeded, failed (the schedule was used up, or the receiver said 410), or
    /// superseded (a progress report replaced by a newer event before it went out).
    status: String,
    /// When the next attempt is due (RFC 3339), while pending.
    next_attempt_at: Option<String>,
    created_at: String,
    finished_at: Option<String>,
    attempts: Vec<AttemptView>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> DeliveryView {
        DeliveryView {
            id: d.id,
            endpoint_id: d.endpoint_id,
            callback_url: d.callback_url,
            task_id: d.task_id,
            event_type: d.event_type,
            status: d.status,
            next_attempt_at: ms_to_time(d.next_attempt_at),
            created_at: d.created_at,
            finished_at: d.finished_at,
            attempts: d
                .attempts
                .into_iter()
                .map(|a| AttemptView {
                    at: a.at,
                    status_code: a.status_code,
                    latency_ms: a.latency_ms,
                    response: a.response,
                    error: a.error,
                })
                .collect(),
        }
    }
}

#[derive(Serialize, ToSchema)]
struct DeliveryPage {
    deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for the next (older) page; null on the last.
    next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeliveryQuery {
    /// Only deliveries in this status.
    #[param(inline, value_type = Option<DeliveryStatus>)]
    status: Option<String>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
}

const STATUSES: [&str; 4] = ["pending", "succeeded", "failed", "superseded"];

/// A delivery's status (the OpenAPI document's list; the handler reads [`STATUSES`]).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
    Superseded,
}

async fn page(
    state: &AppState,
    user: Uuid,
    endpoint: Option<Uuid>,
    task: Option<Uuid>,
    q: DeliveryQuery,
) -> AppResult<Json<DeliveryPage>> {
    if let Some(status) = &q.status {
        if !STATUSES.contains(&status.as_str()) {
            return Err(AppError::BadRequest(format!(
                "status is one of {}.",
                STATUSES.join(", ")
            )));
        }
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(AppError::BadRequest(
            "limit must be between 1 and 200.".into(),
        ));
    }
    let before = super::extract::cursor(q.cursor.as_deref())?;
    let filter = rows::Filter {
        user,
        endpoint,
        task,
        status: q.status,
        before,
        limit: i64::from(limit) + 1,
    };
    let mut found = state
        .store
        .call(move |c| rows::deliveries(c, &filter))
        .await?;
    let next_cursor = (found.len() > limit as usize).then(|| {
        found.truncate(limit as usize);
        found.last().map(|(seq, _)| seq.to_string())
    });
    Ok(Json(DeliveryPage {
        deliveries: found.into_iter().map(|(_, d)| d.into()).collect(),
        next_cursor: next_cursor.flatten(),
    }))
}

/// An endpoint's delivery log, newest first: every attempt, with its time, status code,
/// latency and the first KiB of the answer.
#[utoipa::path(get, operation_id = "listWebhookDeliveries", path = "/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint"), DeliveryQuery),
    responses((status = 200, description = "A page of deliveries", body = DeliveryPage),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn endpoint_deliveries(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Query(q): Query<DeliveryQuery>,
) -> AppResult<Json<DeliveryPage>> {
    owned(&state, user.id, id).await?;
    page(&state, user.id, Some(id), None, q).await
}

/// Every delivery about one of the caller's tasks (to endpoints and to its own callbacks).
#[utoipa::path(get, operation_id = "listTaskDeliveries", path = "/tasks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The task"), DeliveryQuery),
    responses((status = 200, description = "A page of deliveries", body = DeliveryPage),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Another user's task", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn task_deliveries(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Query(q): Query<DeliveryQuery>,
) -> AppResult<Json<DeliveryPage>> {
    // Another user's task is not there; one forgotten since still has its deliveries listed.
    let task = state
        .store
        .call(move |c| crate::store::tasks::get(c, id))
        .await?;
    if task.is_some_and(|t| t.user_id != user.id) {
        return Err(AppError::NotFound("task"));
    }
    page(&state, user.id, None, Some(id), q).await
}

/// Send one delivery again, at once and with a fresh retry schedule, under the same
/// `webhook-id`.
#[utoipa::path(post, operation_id = "redeliverWebhookDelivery", path = "/webhooks/{id}/deliveries/{delivery}/redeliver", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint"), ("delivery" = String, Path, description = "The delivery's id (its webhook-id)")),
    responses((status = 202, description = "Queued", body = Queued),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody),
        (status = 409, description = "Being sent right now, or the endpoint is disabled", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn redeliver(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, delivery)): Path<(Uuid, String)>,
) -> AppResult<(StatusCode, Json<Queued>)> {
    let endpoint = owned(&state, user.id, id).await?;
    if endpoint.disabled {
        return Err(disabled());
    }
    let which = delivery.clone();
    match state
        .store
        .call(move |c| rows::redeliver(c, user.id, id, &which))
        .await?
    {
        None => return Err(AppError::NotFound("delivery")),
        Some(false) => {
            return Err(AppError::Conflict(
                "This delivery is being sent right now; look at its log in a moment.".into(),
            ))
        }
        Some(true) => {}
    }
    state.webhooks.wake();
    Ok((
        StatusCode::ACCEPTED,
        Json(Queued {
            delivery_id: delivery,
        }),
    ))
}

/// The secret that signs a user's one-off callbacks.
#[derive(Serialize, ToSchema)]
struct CallbackSecret {
    /// Left out of a rotation's answer when the caller gave the secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// While a rotated-out secret still signs too: until when (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_secret_until: Option<String>,
}

/// The secret that signs your conversions' `callback_url` deliveries (and OGC job
/// subscribers), made on first use.
#[utoipa::path(get, operation_id = "getCallbackSecret", path = "/webhooks/callback-secret", tag = "webhooks",
    responses((status = 200, description = "The secret", body = CallbackSecret),
        (status = 401, description = "No or bad credentials", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn callback_secret(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> AppResult<Json<CallbackSecret>> {
    let secret = state
        .store
        .call(move |c| rows::callback_secret(c, user.id, new_secret))
        .await?;
    Ok(Json(CallbackSecret {
        secret: Some(secret),
        previous_secret_until: None,
    }))
}

/// Rotate the callback secret; for a day, callbacks carry both signatures.
#[utoipa::path(post, operation_id = "rotateCallbackSecret", path = "/webhooks/callback-secret/rotate", tag = "webhooks",
    request_body(content = Option<RotateRequest>, content_type = "application/json"),
    responses((status = 200, description = "Rotated", body = CallbackSecret),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "A malformed secret", body = ErrorBody)),
    security(("bearer" = []), ("cookie" = [])))]
async fn rotate_callback_secret(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    OptionalJson(request): OptionalJson<RotateRequest>,
) -> AppResult<Json<CallbackSecret>> {
    let (secret, shown) = rotation(request)?;
    let overlap = ROTATION_OVERLAP.as_millis() as i64;
    state
        .store
        .call(move |c| rows::rotate_callback_secret(c, user.id, &secret, overlap))
        .await?;
    Ok(Json(CallbackSecret {
        secret: shown,
        previous_secret_until: Some(overlap_end()),
    }))
}
