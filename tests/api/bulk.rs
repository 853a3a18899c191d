//! Bulk actions on the caller's own tasks: `POST /tasks/cancel` with a filter, and
//! `DELETE /tasks` for finished tasks. Another user's tasks are never touched.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{a_moment_between, data, task_id, TestServer};
use crate::lifecycle::{big_raster, slow, wait_running};

/// The task ids a bulk cancel answered with, checked against its count.
fn cancelled(body: &Value) -> HashSet<String> {
    let ids: HashSet<String> = body["task_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no task_ids: {body}"))
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        body["cancelled"].as_u64(),
        Some(ids.len() as u64),
        "the count is the number of ids: {body}"
    );
    ids
}

fn set(ids: &[&String]) -> HashSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

/// Each of `ids` is in `state` now.
async fn assert_states(server: &TestServer, ids: &[&String], state: &str) {
    for id in ids {
        let status = server.status(id).await;
        assert_eq!(status["state"], state, "{status}");
    }
}

/// A slow conversion running on the only worker, as `token`.
async fn start_holder(server: &TestServer, token: &str) -> String {
    let big = server.upload_as(token, &big_raster(), "big.tif").await;
    let holder = task_id(&server.convert_as(token, &big, slow()).await);
    wait_running(server, &holder).await;
    holder
}

/// `n` conversions of `item` as `token`, queued.
async fn queue(server: &TestServer, token: &str, item: &Value, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(task_id(&server.convert_as(token, item, json!({})).await));
    }
    ids
}

/// A conversion of `item` as `token`, run to its end; its final status.
async fn finished(server: &TestServer, token: &str, item: &Value) -> Value {
    let id = task_id(&server.convert_as(token, item, json!({})).await);
    server.wait_final(&id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_cancel_by_state_revokes_every_queued_task_and_nothing_else() {
    let server = TestServer::start_with(&["--workers", "1"]).await;
    let token = &server.token;
    let small = server.upload(&data("byte.tif")).await;
    let holder = start_holder(&server, token).await;
    let queued = queue(&server, token, &small, 4).await;

    // A filter is required, and `state` is a state a task can be cancelled in.
    for filter in [json!({}), json!({"state": "SUCCESS"})] {
        let (code, body) = server.cancel_matching(token, &filter).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{filter}: {body}");
    }
    assert_states(&server, &queued.iter().collect::<Vec<_>>(), "PENDING").await;

    let (code, body) = server
        .cancel_matching(token, &json!({"state": "PENDING"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        cancelled(&body),
        set(&queued.iter().collect::<Vec<_>>()),
        "{body}"
    );
    // Queued tasks are REVOKED at once; the running one was not asked.
    assert_states(&server, &queued.iter().collect::<Vec<_>>(), "REVOKED").await;
    assert_states(&server, &[&holder], "PROGRESS").await;

    let (code, body) = server
        .cancel_matching(token, &json!({"state": "PENDING"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(
        cancelled(&body).is_empty(),
        "nothing left to cancel: {body}"
    );

    let (code, body) = server
        .cancel_matching(token, &json!({"state": "PROGRESS"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(cancelled(&body), set(&[&holder]), "{body}");
    assert_eq!(server.wait_final(&holder).await["state"], "REVOKED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_cancel_by_ids_counts_only_what_it_cancelled() {
    let server = TestServer::start_with(&["--workers", "1"]).await;
    let token = &server.token;
    let small = server.upload(&data("byte.tif")).await;
    let done = task_id(&finished(&server, token, &small).await);
    let holder = start_holder(&server, token).await;
    let queued = queue(&server, token, &small, 3).await;

    let (code, body) = server
        .cancel_matching(
            token,
            &json!({"ids": [&done, &holder, &queued[0], &queued[1]]}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        cancelled(&body),
        set(&[&holder, &queued[0], &queued[1]]),
        "the finished task is not counted: {body}"
    );
    assert_states(&server, &[&queued[0], &queued[1]], "REVOKED").await;
    assert_states(&server, &[&queued[2]], "PENDING").await;
    assert_states(&server, &[&done], "SUCCESS").await;
    // The running one stops, then is REVOKED.
    assert_eq!(server.wait_final(&holder).await["state"], "REVOKED");

    // Asked again, the same ids cancel nothing more.
    let (code, body) = server
        .cancel_matching(token, &json!({"ids": [&holder, &queued[0]]}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(cancelled(&body).is_empty(), "{body}");
    assert_eq!(server.wait_final(&queued[2]).await["state"], "SUCCESS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_cancel_by_source_and_creation_time_combines_its_filters() {
    let server = TestServer::start_with(&["--workers", "1"]).await;
    let token = &server.token;
    let x = server.upload(&data("byte.tif")).await;
    let y = server.upload(&data("RGB.byte.tif")).await;
    let holder = start_holder(&server, token).await;
    let x_early = queue(&server, token, &x, 2).await;
    let y_early = queue(&server, token, &y, 1).await;
    let moment = a_moment_between().await;
    let y_late = queue(&server, token, &y, 1).await;
    let x_late = queue(&server, token, &x, 1).await;

    // By source: every one of X's tasks, early or late.
    let (code, body) = server
        .cancel_matching(token, &json!({"tree_item_id": x["id"]}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        cancelled(&body),
        set(&[&x_early[0], &x_early[1], &x_late[0]]),
        "{body}"
    );
    assert_states(&server, &[&y_early[0], &y_late[0]], "PENDING").await;

    // Fields combine with AND: Y has no running task.
    let (code, body) = server
        .cancel_matching(
            token,
            &json!({"tree_item_id": y["id"], "state": "PROGRESS"}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(cancelled(&body).is_empty(), "{body}");
    assert_states(&server, &[&holder], "PROGRESS").await;

    // Queued and created before the moment: Y's early task only.
    let (code, body) = server
        .cancel_matching(
            token,
            &json!({"created_before": moment, "state": "PENDING"}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(cancelled(&body), set(&[&y_early[0]]), "{body}");
    assert_states(&server, &[&y_late[0]], "PENDING").await;

    // Created before the moment, whatever the state: the running task.
    let (code, body) = server
        .cancel_matching(token, &json!({"created_before": moment}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(cancelled(&body), set(&[&holder]), "{body}");
    assert_eq!(server.wait_final(&holder).await["state"], "REVOKED");
    assert_eq!(server.wait_final(&y_late[0]).await["state"], "SUCCESS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_delete_forgets_finished_tasks_only_and_keeps_outputs() {
    let server = TestServer::start_with(&["--workers", "1"]).await;
    let token = &server.token;
    let small = server.upload(&data("byte.tif")).await;
    let corrupt = server.upload(&data("corrupt.tif")).await;
    let early_success = finished(&server, token, &small).await;
    let early_failure = finished(&server, token, &corrupt).await;
    assert_eq!(early_success["state"], "SUCCESS", "{early_success}");
    assert_eq!(early_failure["state"], "FAILURE", "{early_failure}");
    let moment = a_moment_between().await;
    let late_success = finished(&server, token, &small).await;
    assert_eq!(late_success["state"], "SUCCESS", "{late_success}");
    let holder = start_holder(&server, token).await;
    let queued = queue(&server, token, &small, 2).await;
    let (code, body) = server.cancel_task(token, &queued[0]).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let revoked = &queued[0];
    let pending = &queued[1];
    let ids = |tasks: &[&Value]| -> HashSet<String> { tasks.iter().map(|t| task_id(t)).collect() };
    let all = ids(&[&early_success, &early_failure, &late_success])
        .into_iter()
        .chain([holder.clone(), revoked.clone(), pending.clone()])
        .collect::<HashSet<_>>();
    assert_eq!(server.task_ids(token).await, all);

    // A parameter is required, and `state` must be a final one.
    for query in ["", "state=PENDING", "state=PROGRESS"] {
        let (code, body) = server.delete_tasks(token, query).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{query:?}: {body}");
    }
    let future = crate::helpers::rfc3339(chrono::Utc::now() + chrono::TimeDelta::days(1));
    let (code, body) = server
        .delete_tasks(token, &format!("state=REVOKED&finished_before={moment}"))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        body["deleted"], 0,
        "AND: nothing REVOKED finished that early"
    );
    assert_eq!(server.task_ids(token).await, all);

    let (code, body) = server
        .delete_tasks(token, &format!("finished_before={moment}"))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["deleted"], 2, "{body}");
    let left: HashSet<String> = [&late_success["task_id"]]
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .chain([holder.clone(), revoked.clone(), pending.clone()])
        .collect();
    assert_eq!(server.task_ids(token).await, left);

    let (code, body) = server.delete_tasks(token, "state=REVOKED").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["deleted"], 1, "{body}");
    // Unfinished tasks are never deleted, however late the bound.
    let (code, body) = server
        .delete_tasks(token, &format!("finished_before={future}"))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["deleted"], 1, "the late success only: {body}");
    assert_eq!(
        server.task_ids(token).await,
        set(&[&holder, pending]),
        "the running and the queued task stay"
    );
    assert_states(&server, &[&holder], "PROGRESS").await;
    assert_states(&server, &[pending], "PENDING").await;

    // The outputs are items of their own, and stay.
    for done in [&early_success, &late_success] {
        let output = done["result"]["tree_item_id"].as_str().unwrap();
        let (code, item) = server
            .get_json(&format!("/tree-items/{output}"), token)
            .await;
        assert_eq!(code, StatusCode::OK, "{item}");
    }
    let (code, body) = server
        .cancel_matching(token, &json!({"ids": [&holder, pending]}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(server.wait_final(&holder).await["state"], "REVOKED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_bulk_actions_touch_none_of_my_tasks() {
    let server = TestServer::start_with(&["--workers", "1"]).await;
    let a = &server.token;
    let b = server.token_for("b").await;
    let a_small = server.upload(&data("byte.tif")).await;
    let b_small = server.upload_as(&b, &data("byte.tif"), "byte.tif").await;
    let a_done = task_id(&finished(&server, a, &a_small).await);
    let b_done = task_id(&finished(&server, &b, &b_small).await);
    let a_running = start_holder(&server, a).await;
    let a_queued = queue(&server, a, &a_small, 1).await.remove(0);
    let mine = set(&[&a_done, &a_running, &a_queued]);

    // B names A's tasks, or A's item, or matches by state and time: nothing of A's.
    let future = crate::helpers::rfc3339(chrono::Utc::now() + chrono::TimeDelta::days(1));
    for filter in [
        json!({"ids": [&a_done, &a_running, &a_queued]}),
        json!({"state": "PENDING"}),
        json!({"state": "PROGRESS"}),
        json!({"tree_item_id": a_small["id"]}),
        json!({"created_before": future}),
    ] {
        let (code, body) = server.cancel_matching(&b, &filter).await;
        assert_eq!(code, StatusCode::OK, "{filter}: {body}");
        assert!(cancelled(&body).is_empty(), "{filter}: {body}");
    }
    assert_eq!(server.task_ids(&b).await, set(&[&b_done]));
    let (code, body) = server
        .delete_tasks(&b, &format!("finished_before={future}"))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["deleted"], 1, "B's own task only: {body}");
    assert!(server.task_ids(&b).await.is_empty());
    let (code, body) = server.delete_tasks(&b, "state=SUCCESS").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["deleted"], 0, "{body}");

    assert_eq!(server.task_ids(a).await, mine);
    assert_states(&server, &[&a_done], "SUCCESS").await;
    assert_states(&server, &[&a_running], "PROGRESS").await;
    assert_states(&server, &[&a_queued], "PENDING").await;

    let (code, body) = server
        .cancel_matching(a, &json!({"created_before": future}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(cancelled(&body), set(&[&a_running, &a_queued]), "{body}");
    assert_eq!(server.wait_final(&a_running).await["state"], "REVOKED");
}
