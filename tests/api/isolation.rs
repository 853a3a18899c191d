//! Users see only their own things: another user's object is a 404 on every endpoint.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{data, json_of, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_gets_404_everywhere() {
    let server = TestServer::start().await;
    let bob = server.token_for("bob").await;
    let (_, folder) =
        crate::conversion::json_post(&server, "/tree-items/folders", json!({"name": "private"}))
            .await;
    let item = server.upload(&data("byte.tif")).await;
    let started = server.convert(&item, json!({})).await;
    let task_id = started["task_id"].as_str().unwrap();
    server.wait_final(task_id).await;
    let id = item["id"].as_str().unwrap();
    let folder_id = folder["id"].as_str().unwrap();

    let attempts = [
        (Method::GET, format!("/tree-items/{id}")),
        (Method::GET, format!("/tree-items/{id}/content")),
        (Method::HEAD, format!("/tree-items/{id}/content")),
        (Method::DELETE, format!("/tree-items/{id}")),
        (
            Method::POST,
            format!("/tree-items/{id}/convert-to-geo-raster"),
        ),
        (Method::GET, format!("/tree-items?parent_id={folder_id}")),
        (Method::POST, format!("/tasks/{task_id}/cancel")),
        (Method::DELETE, format!("/tasks/{task_id}")),
    ];
    for (method, path) in attempts {
        let res = server
            .req(method.clone(), &path, &bob)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{method} {path}");
        if method != Method::HEAD {
            json_of(res).await;
        }
    }
    let res = server
        .req(
            Method::POST,
            &format!("/tree-items?name=x.tif&parent_id={folder_id}"),
            &bob,
        )
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let (_, folder_create) = {
        let res = server
            .req(Method::POST, "/tree-items/folders", &bob)
            .json(&json!({"name": "x", "parent_id": folder_id}))
            .send()
            .await
            .unwrap();
        json_of(res).await
    };
    assert!(folder_create["detail"].is_string());

    let (_, bobs_items) = server.get_json("/tree-items", &bob).await;
    assert_eq!(bobs_items, json!([]));
    let (_, bobs_tasks) = server.get_json("/tasks", &bob).await;
    assert_eq!(bobs_tasks["tasks"], json!([]));
    assert!(
        server.blob_files().len() >= 2,
        "alice's bytes are untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_status_is_a_capability_unless_configured_private() {
    let open = TestServer::start().await;
    let started = open
        .convert(&open.upload(&data("byte.tif")).await, json!({}))
        .await;
    let res = open
        .http
        .get(open.api(&format!(
            "/tasks/{}/status",
            started["task_id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let private = TestServer::start_with(&["--private-task-status"]).await;
    let bob = private.token_for("bob").await;
    let started = private
        .convert(&private.upload(&data("byte.tif")).await, json!({}))
        .await;
    let path = format!("/tasks/{}/status", started["task_id"].as_str().unwrap());
    let anonymous = private.http.get(private.api(&path)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let (code, _) = private.get_json(&path, &bob).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = private.get_json(&path, &private.token).await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_stop_working() {
    let server = TestServer::start().await;
    let carol = server.token_for("carol").await;
    let (code, _) = server.get_json("/tree-items", &carol).await;
    assert_eq!(code, StatusCode::OK);
    let out = tokio::process::Command::new(crate::helpers::BIN)
        .args(["token", "revoke", &carol, "--data-dir"])
        .arg(server.data_dir())
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let (code, _) = server.get_json("/tree-items", &carol).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}
