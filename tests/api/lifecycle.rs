//! Cancellation, timeouts, graceful restarts and crashes: no task is lost or left stuck.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{alive, children_of, data, generated_raster, TestServer};

/// An 8192×8192 3-band raster made from shade.tif, generated once.
pub fn big_raster() -> PathBuf {
    generated_raster(
        "big-8192x8192x3.tif",
        "shade.tif",
        &[
            "-outsize",
            "8192",
            "8192",
            "-b",
            "1",
            "-b",
            "1",
            "-b",
            "1",
            "-r",
            "cubic",
            "-co",
            "COMPRESS=DEFLATE",
            "-co",
            "TILED=YES",
        ],
    )
}

/// Options that make the big raster take several seconds: a reprojection and lanczos.
pub fn slow() -> Value {
    json!({"target_crs": "EPSG:4326", "overview_resampling": "lanczos"})
}

/// A cancel stopped the work, rather than letting it run to its end: the worker that ran it
/// (one of `workers`, the server's children while it ran) is gone by the time the task is
/// REVOKED. A worker that finishes a job goes back to the pool alive; a cancelled one is
/// stopped, then reaped, before the task's end is recorded.
pub fn assert_cancel_stopped_a_worker(workers: &[i32]) {
    assert!(!workers.is_empty(), "a worker ran the task");
    assert!(
        workers.iter().any(|pid| !alive(*pid)),
        "every worker outlived the cancel: {workers:?}"
    );
}

/// A task's state, attempts and progress as the stopped server left them in its database.
fn stored_task(server: &TestServer, task: &str) -> (String, i64, f64) {
    let db = rusqlite::Connection::open_with_flags(
        server.data_dir().join("rastercast.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row(
        "SELECT state, attempts, progress FROM tasks WHERE id = ?1",
        [task],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

async fn start_slow(server: &TestServer) -> String {
    let item = server.upload(&big_raster()).await;
    let started = server.convert(&item, slow()).await;
    started["task_id"].as_str().unwrap().to_string()
}

pub async fn wait_running(server: &TestServer, task: &str) -> Value {
    server
        .wait_for(task, Duration::from_secs(60), |s| {
            s["state"] == "PROGRESS" && s["progress"].as_f64().unwrap() > 2.0
        })
        .await
}

fn outputs(items: &Value) -> usize {
    items
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| !i["source_id"].is_null())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_and_a_queued_task() {
    let server = TestServer::start_with(&["--workers", "1"]).await;
    let running = start_slow(&server).await;
    let queued_item = server.upload(&data("byte.tif")).await;
    let queued = server.convert(&queued_item, json!({})).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();

    let status = wait_running(&server, &running).await;
    assert!(status["status"].is_string());
    let waiting = server.status(&queued).await;
    assert_eq!(waiting["state"], "PENDING");
    assert_eq!(waiting["queue_position"], 1);

    // Queued: REVOKED at once.
    let res = server
        .req(
            Method::POST,
            &format!("/tasks/{queued}/cancel"),
            &server.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["state"], "REVOKED");

    // Running: "Cancelling…" until the work stops, then REVOKED.
    let workers = children_of(server.pid());
    let res = server
        .req(
            Method::POST,
            &format!("/tasks/{running}/cancel"),
            &server.token,
        )
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert!(
        body["state"] == "REVOKED" || body["status"] == "Cancelling…",
        "{body}"
    );
    let status = server.wait_final(&running).await;
    assert_eq!(status["state"], "REVOKED");
    assert_cancel_stopped_a_worker(&workers);

    let (_, items) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(outputs(&items), 0, "no output from a cancelled task");
    assert!(server.tmp_files().is_empty(), "{:?}", server.tmp_files());

    // Final states never change.
    let res = server
        .req(
            Method::POST,
            &format!("/tasks/{running}/cancel"),
            &server.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_over_the_time_limit_is_killed() {
    let server = TestServer::start_with(&["--task-timeout-secs", "2"]).await;
    let task = start_slow(&server).await;
    let status = server.wait_final(&task).await;
    assert_eq!(status["state"], "FAILURE");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("longer than the limit"),
        "{status}"
    );
    assert!(server.tmp_files().is_empty());
    // The server keeps serving.
    assert_eq!(
        server.convert_file(&data("byte.tif"), json!({})).await["state"],
        "SUCCESS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_requeues_running_work_and_a_restart_finishes_everything() {
    let mut server = TestServer::start_with(&["--workers", "1"]).await;
    let running = start_slow(&server).await;
    let mut queued = Vec::new();
    for name in ["byte.tif", "world.rgb.tif"] {
        let item = server.upload(&data(name)).await;
        queued.push(
            server.convert(&item, json!({})).await["task_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    wait_running(&server, &running).await;

    let exit = server.stop(libc::SIGTERM).await;
    assert!(exit.success(), "{exit:?}");
    // It stopped the conversion part-way instead of waiting for its end (publishing starts at
    // 95 %): the task is back in the queue, its attempt given back.
    let (state, attempts, progress) = stored_task(&server, &running);
    assert_eq!(
        (state.as_str(), attempts),
        ("PENDING", 0),
        "the running task as the server left it"
    );
    assert!(
        progress < 95.0,
        "the shutdown waited for the conversion ({progress} %)"
    );

    server.restart().await;
    let status = server.wait_final(&running).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    assert_eq!(
        status["attempts"], 1,
        "a clean shutdown does not use up an attempt"
    );
    for task in &queued {
        assert_eq!(server.wait_final(task).await["state"], "SUCCESS");
    }
    let (_, items) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(outputs(&items), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_conversion_then_restart_finishes_it_once() {
    let mut server = TestServer::start().await;
    let task = start_slow(&server).await;
    wait_running(&server, &task).await;
    let workers = children_of(server.pid());
    assert!(
        !workers.is_empty(),
        "the conversion runs in a child process"
    );

    server.stop(libc::SIGKILL).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while workers.iter().any(|pid| alive(*pid)) {
        assert!(
            Instant::now() < deadline,
            "an orphaned worker outlived the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    server.restart().await;
    assert!(
        server.tmp_files().is_empty(),
        "start-up removes partial files"
    );
    let status = server.wait_final(&task).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    assert_eq!(status["attempts"], 2);
    let (_, items) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(outputs(&items), 1, "exactly one output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cut_off_too_often_fails_with_a_reason() {
    let mut server = TestServer::start_with(&["--max-attempts", "1"]).await;
    let task = start_slow(&server).await;
    wait_running(&server, &task).await;
    server.stop(libc::SIGKILL).await;
    server.restart().await;
    let status = server.status(&task).await;
    assert_eq!(status["state"], "FAILURE");
    assert!(
        status["error"].as_str().unwrap().contains("server stopped"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_moves_through_named_phases() {
    let server = TestServer::start().await;
    let item = server.upload(&big_raster()).await;
    let task = server.convert(&item, json!({})).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut seen = Vec::<String>::new();
    let mut progress_values = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = server.status(&task).await;
        let text = status["status"].as_str().unwrap().to_string();
        if seen.last() != Some(&text) {
            seen.push(text);
        }
        progress_values.push(status["progress"].as_f64().unwrap());
        if status["state"] == "SUCCESS" {
            break;
        }
        assert_ne!(status["state"], "FAILURE", "{status}");
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        progress_values.windows(2).all(|w| w[0] <= w[1]),
        "monotonic: {progress_values:?}"
    );
    assert!(
        progress_values.iter().any(|p| *p > 5.0 && *p < 90.0),
        "intermediate values: {progress_values:?}"
    );
    for phase in ["Building overviews", "Converting", "Done"] {
        assert!(seen.iter().any(|s| s == phase), "{phase} not in {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_over_the_memory_limit_fails_readably() {
    let server = TestServer::start_with(&["--worker-memory-mb", "300"]).await;
    let item = server.upload(&big_raster()).await;
    let task = server
        .convert(&item, json!({"target_crs": "EPSG:4326", "blocksize": 4096}))
        .await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let status = server.wait_final(&task).await;
    assert_eq!(status["state"], "FAILURE");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("memory limit of 300 MiB"),
        "{status}"
    );
    assert!(server.tmp_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_is_kept_when_the_server_stops_before_the_work_does() {
    let mut server = TestServer::start().await;
    let task = start_slow(&server).await;
    wait_running(&server, &task).await;
    // Freeze the worker so the cancel cannot complete before the shutdown.
    let workers = children_of(server.pid());
    for worker in &workers {
        // SAFETY: plain kill(2) on the server's child.
        unsafe { libc::kill(*worker, libc::SIGSTOP) };
    }
    let res = server
        .req(
            Method::POST,
            &format!("/tasks/{task}/cancel"),
            &server.token,
        )
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "Cancelling…");
    server.stop(libc::SIGTERM).await;
    for worker in &workers {
        // SAFETY: as above; a stopped process would otherwise linger until SIGKILL.
        unsafe { libc::kill(*worker, libc::SIGKILL) };
    }
    server.restart().await;
    let status = server.status(&task).await;
    assert_eq!(status["state"], "REVOKED", "{status}");
    // The queue is first in, first out: a conversion asked for now runs after anything the
    // restart queued again, so once it is done the cancelled task has had its chance to run.
    let later = server.convert_file(&data("byte.tif"), json!({})).await;
    assert_eq!(later["state"], "SUCCESS", "{later}");
    let status = server.status(&task).await;
    assert_eq!(status["state"], "REVOKED", "{status}");
    assert_eq!(
        status["attempts"], 1,
        "a cancelled task is not run again: {status}"
    );
    server
        .wait_metric(
            "rastercast_conversion_seconds_count{outcome=\"success\"}",
            1.0,
        )
        .await;
    assert_eq!(
        server
            .metric_or_zero("rastercast_conversion_seconds_count{outcome=\"success\"}")
            .await
            + server
                .metric_or_zero("rastercast_conversion_seconds_count{outcome=\"stopped\"}")
                .await,
        1.0,
        "only the later conversion ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_ignores_a_cancel_is_killed_after_the_grace_time() {
    let server = TestServer::start_with(&["--cancel-grace-ms", "1000"]).await;
    let task = start_slow(&server).await;
    wait_running(&server, &task).await;
    // A stopped worker reads no "cancel": it stands for GDAL silent inside one long call.
    let workers = children_of(server.pid());
    for worker in &workers {
        // SAFETY: plain kill(2) on the server's child.
        unsafe { libc::kill(*worker, libc::SIGSTOP) };
    }
    let res = server
        .req(
            Method::POST,
            &format!("/tasks/{task}/cancel"),
            &server.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let status = server.wait_final(&task).await;
    assert_eq!(status["state"], "REVOKED", "{status}");
    assert_cancel_stopped_a_worker(&workers);
    // It was the grace time that ended it, with a kill.
    let log = std::fs::read_to_string(server.data_dir().join("server.log")).unwrap();
    assert!(
        log.contains("a cancelled worker did not stop in time; killing it"),
        "the stopped worker was killed after the grace time"
    );
    assert!(
        workers.iter().all(|pid| !alive(*pid)),
        "the worker was killed"
    );
    assert!(server.tmp_files().is_empty(), "{:?}", server.tmp_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_workers_take_job_after_job_and_a_failed_one_is_replaced() {
    let server = TestServer::start().await;
    let starts = || server.metric("rastercast_worker_starts_total");
    // The upload's inspection starts the first worker; the conversions reuse it.
    let item = server.upload(&data("byte.tif")).await;
    for _ in 0..3 {
        let started = server.convert(&item, json!({})).await;
        let status = server
            .wait_final(started["task_id"].as_str().unwrap())
            .await;
        assert_eq!(status["state"], "SUCCESS", "{status}");
    }
    assert_eq!(starts().await, 1.0);
    assert_eq!(server.metric("rastercast_workers_idle").await, 1.0);

    // A worker that read a file it could not convert is not trusted with the next job.
    let corrupt = server.convert_file(&data("corrupt.tif"), json!({})).await;
    assert_eq!(corrupt["state"], "FAILURE", "{corrupt}");
    // Its header reads fine, so the same worker described the upload and then failed on it.
    assert_eq!(starts().await, 1.0);
    assert_eq!(server.metric("rastercast_workers_idle").await, 0.0);
    let started = server.convert(&item, json!({})).await;
    let status = server
        .wait_final(started["task_id"].as_str().unwrap())
        .await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    assert_eq!(starts().await, 2.0);
}
