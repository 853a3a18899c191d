//! The queue serves users in turn, so one user's flood of tasks does not starve another's
//! single task; within a user, `priority` orders the user's own tasks.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{data, eventually, task_id, time_of, TestDatabase, TestServer};
use crate::lifecycle::{big_raster, slow, wait_running};
use crate::live_clients::is_final;

/// Starts `n` conversions of `item` as `token`, `batch` at once, sent to `nodes` in turn.
async fn flood(nodes: &[&TestServer], token: &str, item: &Value, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let batch = 25;
    for start in (0..n).step_by(batch) {
        let sends = (start..(start + batch).min(n))
            .map(|k| nodes[k % nodes.len()].convert_as(token, item, json!({})));
        ids.extend(join_all(sends).await.iter().map(task_id));
    }
    ids
}

/// Cancels every one of `ids` that is still queued or running, then waits until all of
/// `token`'s tasks are final (a running one ends once its worker stopped).
async fn cancel_the_rest(server: &TestServer, token: &str, ids: &[String]) {
    let (code, body) = server.cancel_matching(token, &json!({ "ids": ids })).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    eventually(
        "every task to be final",
        Duration::from_secs(60),
        || async {
            server
                .all_tasks(token)
                .await
                .iter()
                .all(is_final)
                .then_some(())
        },
    )
    .await;
}

/// How many of `tasks` started strictly after `after` and strictly before `before`.
fn started_between(tasks: &[Value], after: &Value, before: &Value) -> usize {
    let (after, before) = (time_of(after), time_of(before));
    tasks
        .iter()
        .filter(|t| !t["started_at"].is_null())
        .filter(|t| {
            let started = time_of(&t["started_at"]);
            after < started && started < before
        })
        .count()
}

/// User A queues `a_tasks` conversions over `nodes`, then user B queues one: B's task is near
/// the head of the queue at once, and at most `allowed` of A's tasks start before it does.
async fn one_task_is_not_starved_by_a_flood(nodes: &[&TestServer], a_tasks: usize, allowed: usize) {
    let first = nodes[0];
    let a = first.token_for("a").await;
    let b = first.token_for("b").await;
    let a_item = first.upload_as(&a, &data("RGB.byte.tif"), "a.tif").await;
    let b_item = nodes[nodes.len() - 1]
        .upload_as(&b, &data("RGB.byte.tif"), "b.tif")
        .await;

    let a_ids = flood(nodes, &a, &a_item, a_tasks).await;
    let b_node = nodes[nodes.len() - 1];
    let b_id = task_id(&b_node.convert_as(&b, &b_item, json!({})).await);
    // B is near the head of the queue, or already started: a free worker may take it before
    // the status is read.
    let queued = b_node.status(&b_id).await;
    if queued["state"] == "PENDING" {
        let position = queued["queue_position"]
            .as_i64()
            .unwrap_or_else(|| panic!("a queued task has a queue_position: {queued}"));
        assert!(
            (1..=3).contains(&position),
            "B is served next or nearly: {queued}"
        );
    } else {
        assert!(!queued["started_at"].is_null(), "{queued}");
    }

    let b_done = b_node
        .wait_for(&b_id, Duration::from_secs(120), is_final)
        .await;
    assert_eq!(b_done["state"], "SUCCESS", "{b_done}");
    cancel_the_rest(first, &a, &a_ids).await;

    let a_list = first.all_tasks(&a).await;
    assert_eq!(a_list.len(), a_tasks, "every one of A's tasks is listed");
    let ahead = started_between(&a_list, &b_done["created_at"], &b_done["started_at"]);
    assert!(
        ahead <= allowed,
        "{ahead} of A's tasks started between B's submit ({}) and B's start ({})",
        b_done["created_at"],
        b_done["started_at"]
    );
    let started = a_list.iter().filter(|t| !t["started_at"].is_null()).count();
    assert!(
        started < a_tasks,
        "the flood was cut short after B's task: {started} of A's tasks started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_task_waits_for_at_most_two_of_another_users_flood() {
    let server =
        TestServer::start_with(&["--workers", "1", "--max-active-tasks-per-user", "10000"]).await;
    one_task_is_not_starved_by_a_flood(&[&server], 200, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_task_is_not_starved_by_a_flood_on_two_nodes() {
    let db = TestDatabase::new();
    let args = [
        "--database-url",
        &db.url,
        "--lease-secs",
        "1.5",
        "--workers",
        "1",
        "--max-active-tasks-per-user",
        "10000",
    ];
    let first = TestServer::start_with(&args).await;
    let second = first.join(&args).await;
    // One worker per node: at most two of A's tasks start on each before B's does.
    one_task_is_not_starved_by_a_flood(&[&first, &second], 60, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_high_priority_task_goes_before_their_normal_and_low_ones() {
    let server = TestServer::start_with(&["--workers", "1"]).await;
    let big = server.upload(&big_raster()).await;
    let small = server.upload(&data("byte.tif")).await;
    let holder = task_id(&server.convert(&big, slow()).await);
    wait_running(&server, &holder).await;

    // A priority is one of three words.
    for priority in [json!("urgent"), json!(""), json!(5)] {
        let (code, body) = server
            .try_convert(
                &server.token,
                &small,
                Some(&json!({ "priority": priority })),
                None,
            )
            .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{priority}: {body}");
    }
    assert_eq!(server.all_tasks(&server.token).await.len(), 1);

    let low = task_id(&server.convert(&small, json!({"priority": "low"})).await);
    let mut normal = Vec::new();
    for options in [json!({}), json!({"priority": "normal"}), json!({})] {
        normal.push(task_id(&server.convert(&small, options).await));
    }
    let high = task_id(&server.convert(&small, json!({"priority": "high"})).await);
    let status = server.status(&high).await;
    assert_eq!(status["state"], "PENDING", "{status}");
    assert_eq!(status["queue_position"], 1, "high goes first: {status}");
    // The whole queue, in the order it will run.
    let order: Vec<&String> = std::iter::once(&high)
        .chain(normal.iter())
        .chain(std::iter::once(&low))
        .collect();
    for (position, id) in order.iter().enumerate() {
        let status = server.status(id).await;
        assert_eq!(status["queue_position"], position as i64 + 1, "{status}");
    }

    let (code, body) = server.cancel_task(&server.token, &holder).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let mut started = Vec::new();
    for id in &order {
        let done = server.wait_final(id).await;
        assert_eq!(done["state"], "SUCCESS", "{done}");
        started.push(time_of(&done["started_at"]));
    }
    assert!(
        started.windows(2).all(|w| w[0] < w[1]),
        "high, then normal first in first out, then low: {started:?}"
    );
}
