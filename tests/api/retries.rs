//! Transient failures are retried with a growing delay, permanent ones fail at once, and a
//! finished task can be started again by hand as a new task.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{data, signal_workers, task_id, time_of, TestServer};
use crate::lifecycle::{big_raster, slow, wait_running};
use crate::live_clients::{is_final, Sse};

/// The (state, attempts) of a feed's state events, without repeats.
fn state_changes(events: &[(String, Value)]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for (_, e) in events.iter().filter(|(_, e)| e["event"] == "state") {
        let step = (
            e["state"].as_str().unwrap().to_string(),
            e["attempts"].as_u64().unwrap(),
        );
        if out.last() != Some(&step) {
            out.push(step);
        }
    }
    out
}

/// Every status and every event carries `next_attempt_at` and `last_error`, null or not.
fn assert_has_retry_fields(status: &Value) {
    for field in ["next_attempt_at", "last_error", "attempts", "error"] {
        assert!(status.get(field).is_some(), "no {field} in {status}");
    }
}

/// A status that waits for another attempt says so: PENDING, when and why, and no `error`.
fn assert_waits_for_a_retry(status: &Value, attempts: u64) {
    assert_eq!(status["state"], "PENDING", "{status}");
    assert_eq!(status["attempts"], attempts, "{status}");
    assert!(
        status["status"].as_str().unwrap().contains("retried"),
        "the status says it will be retried: {status}"
    );
    assert!(
        status["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "last_error says what went wrong: {status}"
    );
    assert!(
        status["error"].is_null(),
        "error stays null until FAILURE: {status}"
    );
    time_of(&status["next_attempt_at"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_from_outside_is_retried_and_the_task_succeeds() {
    let server = TestServer::start_with(&[
        "--workers",
        "1",
        "--max-attempts",
        "3",
        "--retry-backoff-secs",
        "0.2",
    ])
    .await;
    let item = server.upload(&big_raster()).await;
    let id = task_id(&server.convert(&item, slow()).await);
    let mut feed = Sse::open(server.http.get(server.api(&format!("/tasks/{id}/events")))).await;

    let running = wait_running(&server, &id).await;
    assert_has_retry_fields(&running);
    assert_eq!(running["attempts"], 1, "{running}");
    assert!(running["next_attempt_at"].is_null(), "{running}");
    assert!(running["last_error"].is_null(), "{running}");
    let killed_at = Utc::now();
    let killed = signal_workers(server.pid(), libc::SIGKILL);
    assert!(
        !killed.is_empty(),
        "the conversion runs in a worker process"
    );

    // The feed sees every state change, however short the wait before the retry.
    let events = feed.events_until(is_final).await;
    let requeued = events
        .iter()
        .map(|(_, e)| e)
        .find(|e| e["event"] == "state" && e["state"] == "PENDING" && e["attempts"] == 1)
        .unwrap_or_else(|| panic!("no event put the task back in the queue: {events:?}"));
    assert_waits_for_a_retry(requeued, 1);
    // The first retry waits 0.2 s ± 25 %, counted from when the worker died.
    let next = time_of(&requeued["next_attempt_at"]);
    assert!(
        next >= killed_at + TimeDelta::milliseconds(150 - 5),
        "retried too soon: {next} after a kill at {killed_at}"
    );
    assert!(
        next <= killed_at + TimeDelta::milliseconds(250 + 2000),
        "retried too late: {next} after a kill at {killed_at}"
    );
    for (_, event) in &events {
        assert_has_retry_fields(event);
    }
    let changes = state_changes(&events);
    assert!(
        changes.ends_with(&[
            ("PENDING".into(), 1),
            ("PROGRESS".into(), 2),
            ("SUCCESS".into(), 2)
        ]),
        "one retry, then success: {changes:?}"
    );

    let status = server.status(&id).await;
    assert_has_retry_fields(&status);
    assert_eq!(status["state"], "SUCCESS", "{status}");
    assert_eq!(status["attempts"], 2, "{status}");
    assert!(status["error"].is_null(), "{status}");
    assert!(status["next_attempt_at"].is_null(), "{status}");
    assert_eq!(server.outputs_of(item["id"].as_str().unwrap()).await, 1);
    assert!(server.tmp_files().is_empty(), "{:?}", server.tmp_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_back_off_exponentially_then_fail_after_max_attempts() {
    let server = TestServer::start_with(&[
        "--workers",
        "1",
        "--max-attempts",
        "3",
        "--retry-backoff-secs",
        "1",
    ])
    .await;
    let item = server.upload(&big_raster()).await;
    let id = task_id(&server.convert(&item, slow()).await);

    // Progress never goes down, so a retry shows the earlier attempts' best until it passes
    // it: only progress beyond that proves this attempt's worker is converting.
    let mut best = 2.0;
    for attempt in 1..=3u64 {
        server
            .wait_status(&id, Duration::from_secs(60), |s| {
                s["state"] == "PROGRESS"
                    && s["attempts"] == attempt
                    && s["progress"].as_f64().unwrap() > best
            })
            .await;
        let killed_at = Utc::now();
        assert!(!signal_workers(server.pid(), libc::SIGKILL).is_empty());
        if attempt == 3 {
            break;
        }

        let waiting = server
            .wait_status(&id, Duration::from_secs(30), |s| s["state"] != "PROGRESS")
            .await;
        assert_waits_for_a_retry(&waiting, attempt);
        best = waiting["progress"].as_f64().unwrap();
        // Retry k waits 1 s × 2^(k-1), ± 25 %.
        let base_ms = 1000 * (1 << (attempt - 1));
        let next = time_of(&waiting["next_attempt_at"]);
        assert!(
            next >= killed_at + TimeDelta::milliseconds(base_ms * 3 / 4 - 5),
            "attempt {attempt}: retried at {next}, too soon after a kill at {killed_at}"
        );
        assert!(
            next <= killed_at + TimeDelta::milliseconds(base_ms * 5 / 4 + 1000),
            "attempt {attempt}: retried at {next}, too late after a kill at {killed_at}"
        );
        // Nothing starts it before then: every answer given before that moment is PENDING.
        loop {
            let status = server.status(&id).await;
            let answered_by = Utc::now();
            if answered_by >= next - TimeDelta::milliseconds(20) {
                break;
            }
            assert_eq!(status["state"], "PENDING", "started early: {status}");
            assert_eq!(status["attempts"], attempt, "{status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let status = server.wait_final(&id).await;
    assert_eq!(status["state"], "FAILURE", "{status}");
    assert_eq!(status["attempts"], 3, "{status}");
    assert!(
        status["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{status}"
    );
    assert!(status["next_attempt_at"].is_null(), "{status}");
    assert!(
        !status["status"].as_str().unwrap().contains("retried"),
        "{status}"
    );
    assert_eq!(server.outputs_of(item["id"].as_str().unwrap()).await, 0);
    assert!(server.tmp_files().is_empty(), "{:?}", server.tmp_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_or_options_at_fault_fail_at_once_without_retries() {
    let server =
        TestServer::start_with(&["--max-attempts", "3", "--retry-backoff-secs", "0.2"]).await;
    // The file is at fault: it cannot be read.
    let corrupt = server.convert_file(&data("corrupt.tif"), json!({})).await;
    // The options are at fault: the file has no CRS to reproject from.
    let rotated = server
        .convert_file(&data("rotated.tif"), json!({"target_crs": "EPSG:3857"}))
        .await;
    for status in [corrupt, rotated] {
        assert_has_retry_fields(&status);
        assert_eq!(status["state"], "FAILURE", "{status}");
        assert_eq!(status["attempts"], 1, "not retried: {status}");
        assert!(
            status["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{status}"
        );
        assert!(status["next_attempt_at"].is_null(), "{status}");
    }
}

/// A conversion that holds the only worker, and `n` conversions of `small` queued behind it.
async fn holder_and_queued(
    server: &TestServer,
    small: &Value,
    options: Value,
    n: usize,
) -> (String, Vec<String>) {
    let big = server.upload(&big_raster()).await;
    let holder = task_id(&server.convert(&big, slow()).await);
    let mut queued = Vec::new();
    for _ in 0..n {
        queued.push(task_id(&server.convert(small, options.clone()).await));
    }
    wait_running(server, &holder).await;
    (holder, queued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_task_retried_by_hand_runs_again_as_a_new_task() {
    let server = TestServer::start_with(&["--workers", "1"]).await;
    let small = server.upload(&data("byte.tif")).await;
    let small_id = small["id"].as_str().unwrap();
    let (holder, queued) =
        holder_and_queued(&server, &small, json!({"compression": "lzw"}), 2).await;
    let (revoked, pending) = (&queued[0], &queued[1]);

    // Only a FAILURE or REVOKED task can be retried.
    let (code, _) = server.retry_task(&server.token, pending, None).await;
    assert_eq!(code, StatusCode::CONFLICT, "a PENDING task");
    let (code, _) = server.retry_task(&server.token, &holder, None).await;
    assert_eq!(code, StatusCode::CONFLICT, "a PROGRESS task");
    for id in [revoked, pending, &holder] {
        let (code, body) = server.cancel_task(&server.token, id).await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    for id in [revoked, pending, &holder] {
        assert_eq!(server.wait_final(id).await["state"], "REVOKED");
    }
    let before = server.status(revoked).await;

    // No body: the original options.
    let (code, started) = server.retry_task(&server.token, revoked, None).await;
    assert_eq!(code, StatusCode::OK, "{started}");
    let new = task_id(&started);
    assert_ne!(&new, revoked, "a new task");
    assert_eq!(started["retry_of"], revoked.as_str(), "{started}");
    assert_eq!(started["tree_item_id"], small_id, "{started}");
    assert!(
        matches!(started["state"].as_str(), Some("PENDING" | "PROGRESS")),
        "{started}"
    );
    assert_eq!(started["status_url"], format!("/api/v1/tasks/{new}/status"));
    assert_eq!(started["events_url"], format!("/api/v1/tasks/{new}/events"));
    assert_eq!(started["ws_url"], "/api/v1/ws");
    let done = server.wait_final(&new).await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    assert_eq!(done["options"], before["options"], "the original options");
    assert_eq!(done["result"]["compression"], "LZW", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(
        server.status(revoked).await,
        before,
        "the old task stays as it was"
    );

    // A JSON null is no options too.
    let (code, started) = server
        .retry_task(&server.token, pending, Some(&Value::Null))
        .await;
    assert_eq!(code, StatusCode::OK, "{started}");
    assert_eq!(started["retry_of"], pending.as_str());
    let done = server.wait_final(&task_id(&started)).await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    assert_eq!(done["options"], before["options"], "the original options");

    // New options replace the old ones.
    let (code, started) = server
        .retry_task(
            &server.token,
            revoked,
            Some(&json!({"compression": "zstd"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{started}");
    assert_eq!(started["retry_of"], revoked.as_str());
    let zstd = task_id(&started);
    let done = server.wait_final(&zstd).await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    assert!(
        done["options"]["compression"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case("zstd")),
        "{done}"
    );
    assert_eq!(done["result"]["compression"], "ZSTD", "{done}");
    assert_eq!(done["tree_item_id"], small_id);

    // A SUCCESS cannot be retried; impossible options are refused and make no task.
    let (code, _) = server.retry_task(&server.token, &zstd, None).await;
    assert_eq!(code, StatusCode::CONFLICT, "a SUCCESS task");
    let count = server.all_tasks(&server.token).await.len();
    let (code, _) = server
        .retry_task(
            &server.token,
            revoked,
            Some(&json!({"compression": "bogus"})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(server.all_tasks(&server.token).await.len(), count);
    assert_eq!(
        count, 6,
        "holder, two cancelled tasks and three retries: nothing else"
    );

    // Another user's task and an unknown id are the same 404.
    let other = server.token_for("other").await;
    let (code, _) = server.retry_task(&other, revoked, None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let unknown = uuid::Uuid::new_v4().to_string();
    let (code, _) = server.retry_task(&server.token, &unknown, None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(server.all_tasks(&other).await.is_empty());
    assert_eq!(server.all_tasks(&server.token).await.len(), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_retried_with_other_options_succeeds() {
    let server = TestServer::start().await;
    let item = server.upload(&data("rotated.tif")).await;
    let failed = task_id(
        &server
            .convert(&item, json!({"target_crs": "EPSG:3857"}))
            .await,
    );
    let before = server.wait_final(&failed).await;
    assert_eq!(before["state"], "FAILURE", "{before}");

    // The given options are the whole options: no reprojection this time.
    let (code, started) = server
        .retry_task(&server.token, &failed, Some(&json!({"compression": "lzw"})))
        .await;
    assert_eq!(code, StatusCode::OK, "{started}");
    assert_eq!(started["retry_of"], failed.as_str());
    let done = server.wait_final(&task_id(&started)).await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    assert!(done["options"]["target_crs"].is_null(), "{done}");
    assert_eq!(done["tree_item_id"], item["id"]);
    assert_eq!(server.status(&failed).await, before, "the failure stays");
}
