//! OGC API – Processes through the real server: OWSLib (the reference Python client) runs a
//! conversion synchronously and asynchronously, follows jobs, lists them and dismisses one,
//! with every answer validated against the standard's own schemas (tests/ogc/client.py); the
//! same jobs are rastercast tasks on the REST API, a subscriber gets a signed callback, and
//! CORS answers browsers from configured origins only.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::webhook_receiver::Receiver;

#[tokio::test]
async fn owslib_converts_follows_lists_and_dismisses_jobs_with_answers_the_schemas_accept() {
    let receiver = Receiver::start().await;
    let server = TestServer::start_with(&["--webhook-allow-private"]).await;
    let small = server.upload(&data("byte.tif")).await;
    let big = generated_raster("ogc-long.tif", "byte.tif", &["-outsize", "6000", "6000"]);
    let big = server.upload(&big).await;
    let (_, secret) = server
        .get_json("/webhooks/callback-secret", &server.token)
        .await;

    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(test_python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ogc/client.py"))
            .args([
                &server.url,
                &server.token,
                small["id"].as_str().unwrap(),
                big["id"].as_str().unwrap(),
                &receiver.url("/success"),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the client ends")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the OGC client failed:\n{stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Each job is a task under the same id, on the REST API.
    for job in ["sync_job", "async_job", "subscribed_job"] {
        let id = seen[job].as_str().unwrap();
        let done = server.wait_final(id).await;
        assert_eq!(done["state"], "SUCCESS", "{job}: {done}");
    }
    let sync = server.status(seen["sync_job"].as_str().unwrap()).await;
    assert_eq!(sync["result"]["tree_item_id"], seen["sync_tree_item_id"]);
    assert_eq!(sync["options"]["compression"], "zstd");
    // Dismissed means stopped: the task is REVOKED and made no output.
    let dismissed = server.status(seen["dismissed_job"].as_str().unwrap()).await;
    assert_eq!(dismissed["state"], "REVOKED", "{dismissed}");
    assert_eq!(server.outputs_of(big["id"].as_str().unwrap()).await, 0);

    // The subscriber's successUri got the success, signed with the callback secret.
    let subscribed = seen["subscribed_job"].as_str().unwrap().to_owned();
    let delivery = eventually("the success callback", Duration::from_secs(30), || {
        let found = receiver
            .received()
            .into_iter()
            .find(|r| r.body()["data"]["task_id"] == subscribed.as_str());
        async move { found }
    })
    .await;
    assert_eq!(delivery.path, "/success");
    assert_eq!(delivery.event_type(), "task.succeeded");
    assert!(delivery.verifies(secret["secret"].as_str().unwrap()));
}

#[tokio::test]
async fn execution_refuses_what_it_cannot_do_and_dismisses_finished_jobs_by_forgetting_them() {
    let server = TestServer::start().await;
    let small = server.upload(&data("byte.tif")).await;
    let id = small["id"].as_str().unwrap();
    let execute = |body: Value, token: String| {
        let server = &server;
        async move {
            let res = server
                .http
                .post(format!(
                    "{}/ogcapi/processes/convert-to-cog/execution",
                    server.url
                ))
                .bearer_auth(token)
                .header("prefer", "respond-async")
                .json(&body)
                .send()
                .await
                .unwrap();
            json_of(res).await
        }
    };
    let token = server.token.clone();
    for (body, status) in [
        (json!({"inputs": {}}), StatusCode::BAD_REQUEST),
        (json!({"inputs": {"item": "nope"}}), StatusCode::BAD_REQUEST),
        (
            json!({"inputs": {"item": id, "colour": "red"}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"inputs": {"item": id}, "outputs": {"thumbnail": {}}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"inputs": {"item": id, "compression": "gzip"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"inputs": {"item": id}, "subscriber": {"successUri": "http://127.0.0.1:9/x"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"inputs": {"item": uuid::Uuid::new_v4()}}),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (code, answer) = execute(body.clone(), token.clone()).await;
        assert_eq!(code, status, "{body} → {answer}");
        assert!(
            answer["type"].is_string() && answer["detail"].is_string(),
            "{answer}"
        );
        assert_eq!(answer["status"], status.as_u16());
    }
    // Another user's file, by id or by a link its owner made: neither is the caller's to convert.
    let other = server.token_for("other").await;
    let (code, _) = execute(json!({"inputs": {"item": id}}), other.clone()).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (_, link) = server.link(&server.token, id, None).await;
    let (code, answer) = execute(
        json!({"inputs": {"source": {"href": link["url"]}}}),
        other.clone(),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{answer}");
    // The owner may give the link instead of the id.
    let (code, job) = execute(json!({"inputs": {"source": link["url"]}}), token.clone()).await;
    assert_eq!(code, StatusCode::CREATED, "{job}");
    let job_id = job["jobID"].as_str().unwrap().to_owned();
    assert_eq!(server.wait_final(&job_id).await["state"], "SUCCESS");
    let res = server
        .http
        .get(format!("{}/ogcapi/jobs/{job_id}", server.url))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "another user's job is not theirs to see"
    );

    // A finished job, dismissed, is forgotten (its output stays in the tree).
    let res = server
        .http
        .delete(format!("{}/ogcapi/jobs/{job_id}", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (code, answer) = json_of(res).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "dismissed");
    let (code, _) = server.try_status(&job_id).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(server.outputs_of(id).await, 1);
}

#[tokio::test]
async fn browsers_on_configured_origins_may_call_the_ogc_api() {
    let server = TestServer::start_with(&["--cors-origin", "https://maps.example.org"]).await;
    let preflight = |origin: &'static str| {
        server
            .http
            .request(
                Method::OPTIONS,
                format!("{}/ogcapi/processes/convert-to-cog/execution", server.url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, prefer",
            )
            .send()
    };
    let allowed = preflight("https://maps.example.org").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], "https://maps.example.org");
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        headers.contains("prefer") && headers.contains("authorization"),
        "{headers}"
    );
    assert!(
        h.get("access-control-allow-credentials").is_none(),
        "no cookies cross"
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    // A real request from the allowed origin can read Location and Preference-Applied.
    let item = server.upload(&data("byte.tif")).await;
    let res = server
        .http
        .post(format!(
            "{}/ogcapi/processes/convert-to-cog/execution",
            server.url
        ))
        .bearer_auth(&server.token)
        .header("origin", "https://maps.example.org")
        .header("prefer", "respond-async")
        .json(&json!({"inputs": {"item": item["id"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("location") && exposed.contains("preference-applied"),
        "{exposed}"
    );
}

/// Who may call what under /ogcapi: capabilities and the process are public; jobs are their
/// owner's alone (another user's is a 404, as on the REST API).
#[tokio::test]
async fn every_ogc_route_answers_each_kind_of_caller() {
    let server = TestServer::start().await;
    let item = server.upload(&data("byte.tif")).await;
    let other = server.token_for("other").await;
    let revoked = server.token_for("revoked").await;
    server.revoke(&revoked).await;
    let res = server
        .http
        .post(format!(
            "{}/ogcapi/processes/convert-to-cog/execution",
            server.url
        ))
        .bearer_auth(&server.token)
        .header("prefer", "respond-async")
        .json(&json!({"inputs": {"item": item["id"]}}))
        .send()
        .await
        .unwrap();
    let job: Value = res.json().await.unwrap();
    let job = job["jobID"].as_str().unwrap().to_owned();
    server.wait_final(&job).await;
    let execute = json!({"inputs": {"item": item["id"]}});
    // Codes for: another user, no token, a revoked token, the owner.
    let table: [(&str, String, [u16; 4]); 10] = [
        ("GET", "/ogcapi".into(), [200, 200, 200, 200]),
        ("GET", "/ogcapi/conformance".into(), [200, 200, 200, 200]),
        ("GET", "/ogcapi/api".into(), [200, 200, 200, 200]),
        ("GET", "/ogcapi/processes".into(), [200, 200, 200, 200]),
        (
            "GET",
            "/ogcapi/processes/convert-to-cog".into(),
            [200, 200, 200, 200],
        ),
        (
            "POST",
            "/ogcapi/processes/convert-to-cog/execution".into(),
            [404, 401, 401, 201],
        ),
        ("GET", "/ogcapi/jobs".into(), [200, 401, 401, 200]),
        ("GET", format!("/ogcapi/jobs/{job}"), [404, 401, 401, 200]),
        (
            "GET",
            format!("/ogcapi/jobs/{job}/results"),
            [404, 401, 401, 200],
        ),
        (
            "DELETE",
            format!("/ogcapi/jobs/{job}"),
            [404, 401, 401, 200],
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, codes) in &table {
        for (token, expected) in [Some(&other), None, Some(&revoked), Some(&server.token)]
            .into_iter()
            .zip(codes)
        {
            let mut request = server
                .http
                .request(method.parse().unwrap(), format!("{}{path}", server.url))
                .header("prefer", "respond-async");
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if *method == "POST" {
                request = request.json(&execute);
            }
            let res = request.send().await.unwrap();
            let code = res.status().as_u16();
            if code != *expected {
                wrong.push(format!("{method} {path}: {code}, not {expected}"));
            } else if code >= 400 {
                let body: Value = res.json().await.unwrap();
                assert!(
                    body["type"].is_string() && body["detail"].is_string(),
                    "{body}"
                );
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
