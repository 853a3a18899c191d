//! A full disk: uploads get 507, conversions fail with a reason, nothing half-written stays,
//! the database stays whole, and work resumes once space is freed.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{data, json_of, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_cleanly_and_work_resumes_once_space_is_freed() {
    // 24 MiB of disk, 4 of them kept free for the database.
    let server = TestServer::start_on_small_disk(24, &["--min-free-disk-mb", "4"]).await;
    let bytes = std::fs::read(data("RGB.byte.tif")).unwrap();

    // Fill the disk with uploads until one is refused.
    let mut items = Vec::new();
    let refusal = loop {
        let res = server
            .req(Method::POST, "/tree-items?name=fill.tif", &server.token)
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        if res.status() != StatusCode::CREATED {
            break json_of(res).await;
        }
        items.push(res.json::<Value>().await.unwrap());
        assert!(items.len() < 40, "the disk never filled");
    };
    assert_eq!(refusal.0, StatusCode::INSUFFICIENT_STORAGE, "{refusal:?}");
    assert!(refusal.1["detail"].as_str().unwrap().contains("disk space"));
    assert!(
        server.tmp_files().is_empty(),
        "the refused upload left nothing"
    );

    // Fill up to the reserve with small files; the database still has its reserve, so
    // folders (database rows only) are created, and nothing is ever a 500.
    for body in [vec![0u8; 64 * 1024], vec![0u8; 1024]] {
        loop {
            let res = server
                .req(Method::POST, "/tree-items?name=small.bin", &server.token)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            if res.status() == StatusCode::INSUFFICIENT_STORAGE {
                break;
            }
            assert_eq!(res.status(), StatusCode::CREATED);
        }
    }
    for i in 0..300 {
        let res = server
            .req(Method::POST, "/tree-items/folders", &server.token)
            .json(&json!({ "name": format!("{i}-{}", "f".repeat(200)) }))
            .send()
            .await
            .unwrap();
        let (code, body) = json_of(res).await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }

    // A conversion whose output does not fit fails with a reason and leaves nothing.
    let res = server
        .req(
            Method::POST,
            &format!(
                "/tree-items/{}/convert-to-geo-raster",
                items[0]["id"].as_str().unwrap()
            ),
            &server.token,
        )
        .json(&json!({"compression": "none"}))
        .send()
        .await
        .unwrap();
    let (code, body) = json_of(res).await;
    if code == StatusCode::OK {
        let status = server.wait_final(body["task_id"].as_str().unwrap()).await;
        assert_eq!(status["state"], "FAILURE", "{status}");
        assert!(
            status["error"].as_str().unwrap().contains("space"),
            "{status}"
        );
    } else {
        assert_eq!(code, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    }
    assert!(server.tmp_files().is_empty(), "{:?}", server.tmp_files());

    // Space freed: uploads and conversions work again.
    for item in &items[1..] {
        let res = server
            .req(
                Method::DELETE,
                &format!("/tree-items/{}", item["id"].as_str().unwrap()),
                &server.token,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::NO_CONTENT,
            "{:?}",
            res.text().await
        );
    }
    let item = server.upload(&data("RGB.byte.tif")).await;
    let started = server.convert(&item, json!({"compression": "none"})).await;
    let status = server
        .wait_final(started["task_id"].as_str().unwrap())
        .await;
    assert_eq!(status["state"], "SUCCESS", "{status}");

    let db = rusqlite::Connection::open(server.view("rastercast.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
