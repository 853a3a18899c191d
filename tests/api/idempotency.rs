//! `Idempotency-Key` on starts and uploads: a request sent again (a client retrying after a
//! timeout, or many at once) gets the first answer and makes nothing new.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{data, eventually, task_id, TestDatabase, TestServer};

/// Items at the root of `token`'s tree.
async fn items(server: &TestServer, token: &str) -> Vec<Value> {
    let (code, items) = server.get_json("/tree-items", token).await;
    assert_eq!(code, StatusCode::OK, "{items}");
    items.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_sent_twice_with_its_key_makes_one_task() {
    let server = TestServer::start().await;
    let item = server.upload(&data("byte.tif")).await;
    let options = json!({"compression": "lzw"});
    let start = |options: Option<Value>, key: &'static str| {
        let (server, item) = (&server, &item);
        async move {
            server
                .try_convert(&server.token, item, options.as_ref(), Some(key))
                .await
        }
    };

    let (code, first) = start(Some(options.clone()), "key-1").await;
    assert_eq!(code, StatusCode::OK, "{first}");
    let (code, again) = start(Some(options.clone()), "key-1").await;
    assert_eq!(code, StatusCode::OK, "{again}");
    assert_eq!(again["task_id"], first["task_id"], "the first answer");
    assert_eq!(again["tree_item_id"], first["tree_item_id"]);
    assert_eq!(again["status_url"], first["status_url"]);
    let id = task_id(&first);
    assert_eq!(
        server.task_ids(&server.token).await,
        HashSet::from([id.clone()])
    );

    // Still the first answer once the task has finished.
    assert_eq!(server.wait_final(&id).await["state"], "SUCCESS");
    let (code, late) = start(Some(options.clone()), "key-1").await;
    assert_eq!(code, StatusCode::OK, "{late}");
    assert_eq!(late["task_id"], first["task_id"]);

    // The key with another body is a mistake, and makes nothing.
    let (code, body) = start(Some(json!({"compression": "zstd"})), "key-1").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (code, body) = start(None, "key-1").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(server.task_ids(&server.token).await.len(), 1);
    assert_eq!(server.outputs_of(item["id"].as_str().unwrap()).await, 1);

    // Another key is another task.
    let (code, other) = start(Some(options.clone()), "key-2").await;
    assert_eq!(code, StatusCode::OK, "{other}");
    assert_ne!(other["task_id"], first["task_id"]);
    assert_eq!(server.task_ids(&server.token).await.len(), 2);

    // Another user's key is theirs: the same key and body make their own task.
    let b = server.token_for("b").await;
    let b_item = server.upload_as(&b, &data("byte.tif"), "byte.tif").await;
    let (code, b_first) = server
        .try_convert(&b, &b_item, Some(&options), Some("key-1"))
        .await;
    assert_eq!(code, StatusCode::OK, "{b_first}");
    assert_ne!(b_first["task_id"], first["task_id"]);
    assert_eq!(
        server.task_ids(&b).await,
        HashSet::from([task_id(&b_first)])
    );
    assert_eq!(server.task_ids(&server.token).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_idempotency_keys_are_refused() {
    let server = TestServer::start().await;
    let item = server.upload(&data("byte.tif")).await;
    let too_long = "k".repeat(256);
    let bad = ["", "a b", "tab\there", "ключ", too_long.as_str()];
    for key in bad {
        let (code, body) = server
            .try_convert(&server.token, &item, None, Some(key))
            .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "start, key {key:?}: {body}");
        let bytes = std::fs::read(data("byte.tif")).unwrap();
        let (code, body) = server
            .try_upload_raw(&server.token, "byte.tif", bytes, Some(key))
            .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "upload, key {key:?}: {body}");
    }
    assert!(server.all_tasks(&server.token).await.is_empty());
    assert_eq!(items(&server, &server.token).await.len(), 1);

    // 1 to 255 visible ASCII characters are keys.
    let longest = "k".repeat(255);
    for key in ["!", "~", "a-1_B.2:3/4", longest.as_str()] {
        let (code, body) = server
            .try_convert(&server.token, &item, None, Some(key))
            .await;
        assert_eq!(code, StatusCode::OK, "key {key:?}: {body}");
    }
    assert_eq!(server.all_tasks(&server.token).await.len(), 4);
}

/// Sends `n` identical starts with one key, at once, spread over `nodes`: every answer is a
/// 200 with the same task, and there is one task.
async fn concurrent_starts_make_one_task(nodes: &[&TestServer], n: usize) {
    let server = nodes[0];
    let item = server.upload(&data("byte.tif")).await;
    let options = json!({"blocksize": 256});
    let answers = join_all((0..n).map(|k| {
        nodes[k % nodes.len()].try_convert(&server.token, &item, Some(&options), Some("once"))
    }))
    .await;
    let mut ids = HashSet::new();
    for (code, body) in &answers {
        assert_eq!(*code, StatusCode::OK, "{body}");
        ids.insert(task_id(body));
    }
    assert_eq!(ids.len(), 1, "every answer names the same task: {ids:?}");
    assert_eq!(server.task_ids(&server.token).await, ids);
    let id = ids.into_iter().next().unwrap();
    let done = server.wait_final(&id).await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(server.outputs_of(item["id"].as_str().unwrap()).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_starts_at_once_make_one_task() {
    let server = TestServer::start().await;
    concurrent_starts_make_one_task(&[&server], 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_starts_at_once_over_two_nodes_make_one_task() {
    let db = TestDatabase::new();
    let args = [
        "--database-url",
        &db.url,
        "--lease-secs",
        "1.5",
        "--workers",
        "1",
    ];
    let first = TestServer::start_with(&args).await;
    let second = first.join(&args).await;
    concurrent_starts_make_one_task(&[&first, &second], 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_sent_again_with_its_key_is_stored_once() {
    let server = TestServer::start().await;
    let rgb = std::fs::read(data("RGB.byte.tif")).unwrap();
    let small = std::fs::read(data("byte.tif")).unwrap();
    let token = &server.token;

    let (code, first) = server
        .try_upload_raw(token, "rgb.tif", rgb.clone(), Some("up-1"))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{first}");
    let (code, again) = server
        .try_upload_raw(token, "rgb.tif", rgb.clone(), Some("up-1"))
        .await;
    assert_eq!(code, StatusCode::CREATED, "the first answer: {again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(items(&server, token).await.len(), 1);

    // The key with other bytes is a mistake, and stores nothing.
    let (code, body) = server
        .try_upload_raw(token, "rgb.tif", small.clone(), Some("up-1"))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(items(&server, token).await.len(), 1);
    eventually(
        "the refused and repeated bytes to be gone",
        Duration::from_secs(10),
        || async {
            (server.blob_files().len() == 1 && server.tmp_files().is_empty()).then_some(())
        },
    )
    .await;

    // Ten at once with a new key: one item.
    let answers = join_all(
        (0..10).map(|_| server.try_upload_raw(token, "small.tif", small.clone(), Some("up-2"))),
    )
    .await;
    let ids: HashSet<String> = answers
        .iter()
        .map(|(code, body)| {
            assert_eq!(*code, StatusCode::CREATED, "{body}");
            body["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(items(&server, token).await.len(), 2);

    // Another user's key is theirs.
    let b = server.token_for("b").await;
    let (code, theirs) = server
        .try_upload_raw(&b, "rgb.tif", rgb, Some("up-1"))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{theirs}");
    assert_ne!(theirs["id"], first["id"]);
    assert_eq!(items(&server, &b).await.len(), 1);
    assert_eq!(items(&server, token).await.len(), 2);
}
