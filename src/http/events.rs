//! Server-Sent Events: one task's feed (by capability) and a user's feed of all their tasks.
//! Each message is the event's SSE bytes, made once at publish time.

use std::convert::Infallible;

use async_stream::stream;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::extract::{Path, Query};
use crate::bus::Body as TaskEvent;
use crate::bus::Topic;
use crate::error::{AppError, AppResult, ErrorBody};
use crate::http::auth::{StreamCaller, StreamLease};
use crate::http::AppState;
use crate::live;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(task_events))
        .routes(routes!(user_events))
}

/// How long a browser waits before reconnecting.
const RETRY_MS: u64 = 2000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ResumeQuery {
    /// Resume after this event (as the `Last-Event-ID` header does).
    last_event_id: Option<String>,
}

/// `Last-Event-ID` header, else `?last_event_id=`; a value we never sent means "from scratch".
fn resume_point(headers: &HeaderMap, query: &ResumeQuery) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.last_event_id.as_deref())
        .and_then(|v| v.trim().parse().ok())
}

/// Server-Sent Events for one task: a snapshot, then live events (each a `TaskEvent` in
/// `data:`, its `seq` in `id:`); the stream ends after the final state.
#[utoipa::path(get, operation_id = "streamTaskEvents", path = "/tasks/{id}/events", tag = "live events",
    params(("id" = Uuid, Path, description = "Task id"), ResumeQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses((status = 200, description = "An event stream of TaskEvent", content_type = "text/event-stream", body = TaskEvent),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 404, description = "Unknown, or not the caller's", body = ErrorBody), (status = 429, description = "Too many event streams open for this user, or without credentials from this address or in all", body = ErrorBody)), security((), ("bearer" = []), ("cookie" = [])))]
async fn task_events(
    State(state): State<AppState>,
    caller: StreamCaller,
    Path(id): Path<Uuid>,
    Query(query): Query<ResumeQuery>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let user = caller.user.as_ref().map(|u| u.id);
    state.status_caller(user, "This server requires a token for task events.")?;
    let task = state.visible_task(user, id).await?;
    let lease = caller.lease(&state)?;
    Ok(sse(
        state,
        Topic::Task(task.id),
        resume_point(&headers, &query),
        Some(lease),
    ))
}

/// Server-Sent Events for all of the caller's tasks (token, session cookie or `?ticket=`).
#[utoipa::path(get, operation_id = "streamEvents", path = "/events", tag = "live events",
    params(ResumeQuery,
        ("ticket" = Option<String>, Query, description = "A stream ticket, for clients that cannot send headers"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses((status = 200, description = "An event stream of TaskEvent", content_type = "text/event-stream", body = TaskEvent),
        (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 429, description = "Too many event streams open for this user", body = ErrorBody)), security(("bearer" = []), ("cookie" = []), ("ticket" = [])))]
async fn user_events(
    State(state): State<AppState>,
    caller: StreamCaller,
    Query(query): Query<ResumeQuery>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let user = caller.user.as_ref().ok_or(AppError::Unauthorized(
        "This feed needs a token, a session cookie or a stream ticket.",
    ))?;
    let follow = Topic::User(user.id);
    let lease = caller.lease(&state)?;
    Ok(sse(
        state,
        follow,
        resume_point(&headers, &query),
        Some(lease),
    ))
}

fn sse(
    state: AppState,
    follow: Topic,
    resume_after: Option<u64>,
    lease: Option<StreamLease>,
) -> Response {
    let keepalive = state.config.keepalive();
    let body = stream! {
        let _open = crate::metrics::OpenGuard::new(&state.metrics.sse_open);
        let revoked = lease.as_ref().map(|l| l.revoked.clone()).unwrap_or_default();
        let _lease = lease;
        yield Ok::<Bytes, Infallible>(Bytes::from(format!("retry: {RETRY_MS}\n\n")));
        let start = match live::start(&state.store, &state.bus, follow, resume_after).await {
            Ok(start) => start,
            Err(e) => {
                tracing::error!(error = ?e, "could not start an event stream");
                return;
            }
        };
        let (mut rx, mut floor) = (start.rx, start.position);
        if start.first.is_empty() {
            // An id with no data moves the client's Last-Event-ID without an event.
            yield Ok(Bytes::from(format!("id: {floor}\n\n")));
        }
        for event in &start.first {
            yield Ok(event.sse.clone());
            if ends(follow, event) {
                return;
            }
        }
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        // Registered once: made anew in each turn of the loop, they took and released a lock
        // of the shared token for every event and every subscriber.
        let shutdown = state.shutdown.clone();
        let stopping = shutdown.cancelled();
        let revoking = revoked.cancelled();
        tokio::pin!(stopping, revoking);
        loop {
            let lagged = tokio::select! {
                received = rx.recv() => match received {
                    Ok(event) => {
                        let mut batch = Batch::default();
                        let mut ended = false;
                        let lagged = live::drain_waiting(&mut rx, event, |event| {
                            if event.seq > floor && follow.matches(event) {
                                batch.push(&event.sse);
                                ended = ends(follow, event);
                            }
                            !ended
                        });
                        if let Some(bytes) = batch.take() {
                            yield Ok(bytes);
                        }
                        if ended {
                            return;
                        }
                        lagged
                    }
                    Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return,
                },
                _ = ticks.tick() => {
                    yield Ok(Bytes::from_static(b": keep-alive\n\n"));
                    false
                }
                _ = &mut stopping => return,
                _ = &mut revoking => {
                    yield Ok(Bytes::from_static(b": the credentials of this stream were revoked\n\n"));
                    return;
                }
            };
            if lagged {
                let Ok((position, snapshots)) = live::snapshots(&state.store, &state.bus, vec![follow], true).await else { return };
                // Events still queued on `rx` up to `position` are in the snapshots.
                floor = position;
                for event in &snapshots {
                    yield Ok(event.sse.clone());
                    if ends(follow, event) {
                        return;
                    }
                }
            }
        }
    };
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Messages for one write: a lone message is passed on as is (no copy), several are joined.
#[derive(Default)]
struct Batch {
    single: Option<Bytes>,
    joined: BytesMut,
}

impl Batch {
    fn push(&mut self, message: &Bytes) {
        if self.single.is_none() && self.joined.is_empty() {
            self.single = Some(message.clone());
            return;
        }
        if let Some(first) = self.single.take() {
            self.joined.extend_from_slice(&first);
        }
        self.joined.extend_from_slice(message);
    }

    fn take(&mut self) -> Option<Bytes> {
        self.single
            .take()
            .or_else(|| (!self.joined.is_empty()).then(|| self.joined.split().freeze()))
    }
}

/// A task's own feed ends once the task is final.
fn ends(follow: Topic, event: &crate::bus::Event) -> bool {
    matches!(follow, Topic::Task(_)) && event.is_final
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use futures_util::StreamExt;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::domain::NewTask;
    use crate::store::users;
    use crate::tasks::lifecycle::{self, Submitted};

    #[test]
    fn a_batch_passes_one_message_on_and_joins_several_in_order() {
        let mut batch = Batch::default();
        assert_eq!(batch.take(), None);
        let one = Bytes::from_static(b"id: 1\n\n");
        batch.push(&one);
        let taken = batch.take().unwrap();
        assert_eq!(taken.as_ptr(), one.as_ptr(), "a lone message is not copied");
        batch.push(&one);
        batch.push(&Bytes::from_static(b"id: 2\n\n"));
        batch.push(&Bytes::from_static(b"id: 3\n\n"));
        assert_eq!(batch.take().unwrap(), "id: 1\n\nid: 2\n\nid: 3\n\n");
        assert_eq!(batch.take(), None);
    }

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        config: crate::config::Config,
    }

    /// A subscriber that falls behind the bus gets a fresh, marked snapshot with the true
    /// state, never a stale one. (Over real sockets, kernel and hyper buffers make a lag
    /// hard to provoke on purpose, so this drives the stream directly.)
    #[tokio::test]
    async fn a_lagging_stream_resyncs_with_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let args = Args::parse_from([
            "test",
            "--addr",
            "127.0.0.1:0",
            "--bus-capacity",
            "1",
            // No conversion runs here: the server is built, never run.
            "--worker-exe",
            "/bin/false",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]);
        let app = crate::app::App::build(args.config, CancellationToken::new())
            .await
            .unwrap();
        let state = app.state().clone();
        let (user, task) = state
            .store
            .call(|c| {
                let user = users::ensure_user(c, "lagger")?;
                let new = NewTask {
                    user_id: user.id,
                    source_id: uuid::Uuid::new_v4(),
                    source_blob: "0".repeat(32),
                    source_name: "x.tif".into(),
                    parent_id: None,
                    options: Default::default(),
                    retry_of: None,
                    callbacks: vec![],
                };
                let Submitted::Queued(task) = lifecycle::submit(c, new, 1, None)? else {
                    unreachable!("a new user has no tasks")
                };
                lifecycle::claim(c, "test", 60_000)?;
                Ok((user, task))
            })
            .await
            .unwrap();

        let mut body = sse(state.clone(), Topic::User(user.id), None, None)
            .into_body()
            .into_data_stream();
        async fn next(
            body: &mut (impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Unpin),
        ) -> String {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next()).await;
            String::from_utf8(chunk.unwrap().unwrap().unwrap().to_vec()).unwrap()
        }
        assert!(next(&mut body).await.starts_with("retry:"));
        assert!(next(&mut body).await.contains("\"event\":\"snapshot\""));

        // Five events while the stream is not polled: its receiver (capacity 1) lags.
        for step in 1..=5 {
            let id = task.id;
            state
                .tasks
                .progress(id, "test".into(), step as f64 * 10.0, "Converting")
                .await
                .unwrap();
        }
        let resynced = next(&mut body).await;
        assert!(resynced.contains("\"resync\":true"), "{resynced}");
        assert!(
            resynced.contains("\"progress\":50.0"),
            "the snapshot has the latest state: {resynced}"
        );
        assert_eq!(
            state
                .bus
                .stats()
                .lag_resyncs
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
