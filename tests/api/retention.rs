//! Finished tasks are forgotten after `--task-retention-secs`: their ids then answer 410 Gone
//! for a while (an unknown id stays 404), lists leave them out, and their outputs stay.
//! Unfinished tasks are never pruned.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{data, download, eventually, json_of, task_id, TestServer};
use crate::lifecycle::{big_raster, slow, wait_running};

const RETENTION: &[&str] = &["--task-retention-secs", "2"];

/// How `id` answers on each of the routes that name a task: status, its feed, cancel and
/// retry.
async fn answers_for(server: &TestServer, id: &str) -> Vec<(&'static str, StatusCode)> {
    let feed = server
        .http
        .get(server.api(&format!("/tasks/{id}/events")))
        .timeout(crate::helpers::REQUEST_TIMEOUT)
        .send()
        .await
        .unwrap();
    // An error is JSON with a detail, never a stream (json_of checks).
    let feed = if feed.status() == StatusCode::OK {
        feed.status()
    } else {
        json_of(feed).await.0
    };
    vec![
        ("status", server.try_status(id).await.0),
        ("events", feed),
        ("cancel", server.cancel_task(&server.token, id).await.0),
        ("retry", server.retry_task(&server.token, id, None).await.0),
    ]
}

/// Waits (at most 30 s) for `id` to be pruned: its status answers 410 with a detail.
async fn wait_gone(server: &TestServer, id: &str) {
    eventually(
        &format!("task {id} to expire"),
        Duration::from_secs(30),
        || async {
            let (code, body) = server.try_status(id).await;
            assert!(
                code == StatusCode::OK || code == StatusCode::GONE,
                "{code}: {body}"
            );
            (code == StatusCode::GONE).then_some(())
        },
    )
    .await;
}

fn listed(tasks: &[Value], id: &str) -> bool {
    tasks.iter().any(|t| t["task_id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_task_answers_410_and_its_output_stays() {
    let server = TestServer::start_with(RETENTION).await;
    let status = server.convert_file(&data("byte.tif"), json!({})).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    let id = task_id(&status);
    let output = status["result"]["tree_item_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(listed(&server.all_tasks(&server.token).await, &id));

    wait_gone(&server, &id).await;
    // Gone on every route, and still gone for the retention time after that.
    let gone_at = Instant::now();
    loop {
        let answers = answers_for(&server, &id).await;
        assert!(
            answers.iter().all(|(_, code)| *code == StatusCode::GONE),
            "{answers:?}"
        );
        if gone_at.elapsed() > Duration::from_millis(2500) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        server.all_tasks(&server.token).await.is_empty(),
        "lists never show an expired task"
    );

    // The output is an item of its own: it stays, and so do its bytes.
    let (code, item) = server
        .get_json(&format!("/tree-items/{output}"), &server.token)
        .await;
    assert_eq!(code, StatusCode::OK, "{item}");
    let file = download(&server, &output).await;
    assert!(std::fs::metadata(file.path()).unwrap().len() > 1000);

    // An id that never was a task is still a 404, not a 410.
    let unknown = uuid::Uuid::new_v4().to_string();
    let answers = answers_for(&server, &unknown).await;
    assert!(
        answers
            .iter()
            .all(|(_, code)| *code == StatusCode::NOT_FOUND),
        "{answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_tasks_are_never_pruned_and_failed_or_revoked_ones_are() {
    let mut args = vec!["--workers", "1"];
    args.extend_from_slice(RETENTION);
    let server = TestServer::start_with(&args).await;
    let small = server.upload(&data("byte.tif")).await;
    let big = server.upload(&big_raster()).await;
    let running = task_id(&server.convert(&big, slow()).await);
    let queued = task_id(&server.convert(&small, json!({})).await);
    let revoked = task_id(&server.convert(&small, json!({})).await);
    wait_running(&server, &running).await;
    let (code, body) = server.cancel_task(&server.token, &revoked).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "REVOKED");

    // The revoked task, created after the two others, is pruned; they are not, although they
    // are older than the retention time.
    wait_gone(&server, &revoked).await;
    let (code, status) = server.try_status(&queued).await;
    assert_eq!(code, StatusCode::OK, "{status}");
    assert_eq!(status["state"], "PENDING");
    let (code, status) = server.try_status(&running).await;
    assert_eq!(code, StatusCode::OK, "{status}");
    assert_eq!(status["state"], "PROGRESS");
    let tasks = server.all_tasks(&server.token).await;
    assert!(listed(&tasks, &queued) && listed(&tasks, &running));
    assert!(!listed(&tasks, &revoked));

    // A FAILURE expires too.
    let (code, body) = server.cancel_task(&server.token, &running).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let corrupt = server.upload(&data("corrupt.tif")).await;
    let failed = task_id(&server.convert(&corrupt, json!({})).await);
    assert_eq!(server.wait_final(&failed).await["state"], "FAILURE");
    wait_gone(&server, &failed).await;
    // By then the cancelled conversion and the one queued behind it have ended and expired.
    for id in [&running, &queued] {
        wait_gone(&server, id).await;
    }
    assert!(server.all_tasks(&server.token).await.is_empty());
    let (code, items) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        items
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["source_id"] == small["id"]),
        "the queued task's output stays: {items}"
    );
}
