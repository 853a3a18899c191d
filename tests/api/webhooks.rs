//! Webhooks through the real server: endpoints, signed deliveries checked by the
//! specification's own library, retries on the schedule (sped up by the hidden
//! `--webhook-schedule-speedup`), `Retry-After`, 410, five failing days, SIGKILL with the
//! receiver down, several nodes, and the address policy.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::webhook_receiver::{Receiver, Reply};

const ALL_EVENTS: [&str; 5] = [
    "task.started",
    "task.progress",
    "task.succeeded",
    "task.failed",
    "task.revoked",
];

async fn create_endpoint(server: &TestServer, token: &str, body: Value) -> (StatusCode, Value) {
    let res = server
        .req(Method::POST, "/webhooks", token)
        .json(&body)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .unwrap();
    json_of(res).await
}

/// Registers `url` for `events`; returns the endpoint (with its server-made secret).
async fn endpoint(server: &TestServer, url: &str, events: &[&str]) -> Value {
    let (code, body) =
        create_endpoint(server, &server.token, json!({"url": url, "events": events})).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert!(body["secret"].as_str().unwrap().starts_with("whsec_"));
    body
}

async fn deliveries(server: &TestServer, path: &str) -> Vec<Value> {
    let (code, page) = server.get_json(path, &server.token).await;
    assert_eq!(code, StatusCode::OK, "{page}");
    page["deliveries"].as_array().unwrap().clone()
}

async fn endpoint_log(server: &TestServer, id: &str) -> Vec<Value> {
    deliveries(server, &format!("/webhooks/{id}/deliveries?limit=200")).await
}

async fn post(server: &TestServer, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = server
        .req(Method::POST, path, &server.token)
        .timeout(REQUEST_TIMEOUT);
    if let Some(body) = body {
        req = req.json(&body);
    }
    json_of(req.send().await.unwrap()).await
}

/// Waits until the receiver holds a request matching `pred`.
async fn received_where(
    receiver: &Receiver,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&crate::webhook_receiver::Received) -> bool,
) -> crate::webhook_receiver::Received {
    eventually(what, timeout, || {
        let found = receiver.received().into_iter().find(|r| pred(r));
        async move { found }
    })
    .await
}

#[tokio::test]
async fn a_conversion_is_announced_signed_to_endpoints_and_its_own_callback() {
    let receiver = Receiver::start().await;
    let server = TestServer::start_with(&["--webhook-allow-private"]).await;
    let all = endpoint(&server, &receiver.url("/all"), &ALL_EVENTS).await;
    let ends = endpoint(&server, &receiver.url("/ends"), &["task.succeeded"]).await;
    let (code, callback) = server
        .get_json("/webhooks/callback-secret", &server.token)
        .await;
    assert_eq!(code, StatusCode::OK, "{callback}");

    let item = server.upload(&data("byte.tif")).await;
    let started = server
        .convert(&item, json!({"callback_url": receiver.url("/callback")}))
        .await;
    let task = task_id(&started);
    let last = server.wait_final(&task).await;
    assert_eq!(last["state"], "SUCCESS");

    let succeeded = |path: &'static str| {
        let task = task.clone();
        move |r: &crate::webhook_receiver::Received| {
            r.path == path
                && r.event_type() == "task.succeeded"
                && r.body()["data"]["task_id"] == task
        }
    };
    let to_all = received_where(
        &receiver,
        "task.succeeded at /all",
        Duration::from_secs(30),
        succeeded("/all"),
    )
    .await;
    received_where(
        &receiver,
        "task.succeeded at /ends",
        Duration::from_secs(30),
        succeeded("/ends"),
    )
    .await;
    received_where(
        &receiver,
        "the callback",
        Duration::from_secs(30),
        succeeded("/callback"),
    )
    .await;

    // Each is signed with its own endpoint's secret, verified by the reference library.
    let secret_of = |path: &str| match path {
        "/all" => all["secret"].as_str().unwrap().to_owned(),
        "/ends" => ends["secret"].as_str().unwrap().to_owned(),
        _ => callback["secret"].as_str().unwrap().to_owned(),
    };
    let got = receiver.received();
    for r in &got {
        assert!(
            r.verifies(&secret_of(&r.path)),
            "{} to {} does not verify",
            r.id(),
            r.path
        );
        assert!(!r.verifies(&secret_of(if r.path == "/all" { "/ends" } else { "/all" })));
        assert_eq!(r.headers["content-type"], "application/json");
    }
    // The body: type, timestamp and the task's status exactly as the status endpoint shows it.
    let body = to_all.body();
    assert_eq!(body["data"], last, "the payload is the task's status");
    assert!(time_of(&body["timestamp"]) <= chrono::Utc::now());

    // /all saw the start before the end, and no event it did not ask for went to /ends.
    let types_at = |path: &str| -> Vec<String> {
        got.iter()
            .filter(|r| r.path == path)
            .map(|r| r.event_type())
            .collect()
    };
    let at_all = types_at("/all");
    assert_eq!(
        at_all.first().map(String::as_str),
        Some("task.started"),
        "{at_all:?}"
    );
    assert_eq!(
        at_all.last().map(String::as_str),
        Some("task.succeeded"),
        "{at_all:?}"
    );
    assert_eq!(types_at("/ends"), ["task.succeeded"]);
    assert_eq!(types_at("/callback"), ["task.succeeded"]);
    // The callback URL is no part of the status any channel shows.
    assert!(!last.to_string().contains("/callback"), "{last}");

    // The delivery log: every delivery to /all, each with its one successful attempt, but for
    // progress that a newer event replaced before it went out.
    let log = endpoint_log(&server, all["id"].as_str().unwrap()).await;
    let superseded = |d: &&Value| d["status"] == "superseded";
    assert!(
        log.iter()
            .filter(superseded)
            .all(|d| d["type"] == "task.progress" && d["attempts"] == json!([])),
        "{log:?}"
    );
    let log: Vec<Value> = log.iter().filter(|d| !superseded(d)).cloned().collect();
    assert_eq!(log.len(), at_all.len(), "{log:?}");
    for d in &log {
        assert_eq!(d["status"], "succeeded", "{d}");
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{d}");
        assert_eq!(attempts[0]["status_code"], 200);
        assert!(attempts[0]["latency_ms"].as_i64().unwrap() >= 0);
    }
    // The task's own view lists the deliveries to every target, the callback's among them.
    let about_task = deliveries(&server, &format!("/tasks/{task}/deliveries")).await;
    let sent = about_task
        .iter()
        .filter(|d| d["status"] != "superseded")
        .count();
    assert_eq!(sent, got.len(), "{about_task:?}");
    assert!(about_task
        .iter()
        .any(|d| d["callback_url"] == receiver.url("/callback")));

    // A redelivery goes out again under the same webhook-id.
    let first = &log[0];
    let (code, body) = post(
        &server,
        &format!(
            "/webhooks/{}/deliveries/{}/redeliver",
            all["id"].as_str().unwrap(),
            first["id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let id = first["id"].as_str().unwrap().to_owned();
    eventually("the redelivery", Duration::from_secs(30), || {
        let n = receiver.received().iter().filter(|r| r.id() == id).count();
        async move { (n == 2).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn endpoints_are_managed_tested_rotated_and_refuse_what_cannot_work() {
    let receiver = Receiver::start().await;
    let server =
        TestServer::start_with(&["--webhook-allow-private", "--max-webhooks-per-user", "2"]).await;
    let token = server.token.clone();
    let url = receiver.url("/hook");

    // Refusals, each with a sentence.
    for (body, status) in [
        (
            json!({"url": url, "events": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"url": url, "events": ["task.queued"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"url": url, "events": ["webhook.test"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"url": "ftp://example.com/x", "events": ["task.failed"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"url": "not a url", "events": ["task.failed"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"url": url, "events": ["task.failed"], "secret": "whsec_short"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"url": url, "events": ["task.failed"], "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"events": ["task.failed"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (code, answer) = create_endpoint(&server, &token, body.clone()).await;
        assert_eq!(code, status, "{body} → {answer}");
        assert!(
            answer["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{answer}"
        );
    }

    // A secret of the caller's own is kept and never shown back.
    let own = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (code, made) = create_endpoint(
        &server,
        &token,
        json!({"url": url, "events": ["task.failed", "task.failed"], "secret": own, "description": "mine"}),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{made}");
    assert!(made.get("secret").is_none(), "{made}");
    assert_eq!(made["events"], json!(["task.failed"]));
    let id = made["id"].as_str().unwrap().to_owned();

    // A test event, signed with that secret.
    let (code, queued) = post(&server, &format!("/webhooks/{id}/test"), None).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{queued}");
    let test = received_where(&receiver, "the test event", Duration::from_secs(30), |r| {
        r.event_type() == "webhook.test"
    })
    .await;
    assert_eq!(test.id(), queued["delivery_id"]);
    assert!(test.verifies(own));

    // Rotation: for a day both secrets sign, so a receiver holding either one verifies.
    let (code, rotated) = post(&server, &format!("/webhooks/{id}/rotate-secret"), None).await;
    assert_eq!(code, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, own);
    post(&server, &format!("/webhooks/{id}/test"), None).await;
    let after = eventually("the test after rotation", Duration::from_secs(30), || {
        let found = receiver.received().into_iter().nth(1);
        async move { found }
    })
    .await;
    let signatures = after.headers["webhook-signature"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    assert!(after.verifies(own) && after.verifies(&new));
    let (_, shown) = server.get_json(&format!("/webhooks/{id}"), &token).await;
    assert!(shown["previous_secret_until"].is_string(), "{shown}");
    assert!(shown.get("secret").is_none(), "{shown}");

    // PATCH and the limit.
    let res = server
        .req(Method::PATCH, &format!("/webhooks/{id}"), &token)
        .json(&json!({"events": ["task.succeeded", "task.revoked"], "description": "changed"}))
        .send()
        .await
        .unwrap();
    let (code, patched) = json_of(res).await;
    assert_eq!(code, StatusCode::OK, "{patched}");
    assert_eq!(patched["events"], json!(["task.succeeded", "task.revoked"]));
    assert_eq!(patched["description"], "changed");
    endpoint(&server, &url, &["task.failed"]).await;
    let (code, full) = create_endpoint(
        &server,
        &token,
        json!({"url": url, "events": ["task.failed"]}),
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT, "{full}");
    let (_, listed) = server.get_json("/webhooks", &token).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // Another user sees none of it.
    let other = server.token_for("other").await;
    let (code, _) = server.get_json(&format!("/webhooks/{id}"), &other).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = server
        .get_json(&format!("/webhooks/{id}/deliveries"), &other)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (_, theirs) = server.get_json("/webhooks", &other).await;
    assert_eq!(theirs, json!([]));
    let (code, bad) = server
        .get_json(&format!("/webhooks/{id}/deliveries?status=lost"), &token)
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}");

    // Deleting takes the log with it.
    let res = server
        .req(Method::DELETE, &format!("/webhooks/{id}"), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let (code, _) = server
        .get_json(&format!("/webhooks/{id}/deliveries"), &token)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn failures_are_retried_on_the_schedule_honouring_retry_after_and_a_410_disables() {
    let receiver = Receiver::start().await;
    // 1,000× faster: the schedule's 5 s, 5 min and 30 min take 5 ms, 0.3 s and 1.8 s (and
    // five failing days 7 min, so the 15 s timeout does not disable the endpoint).
    let server = TestServer::start_with(&[
        "--webhook-allow-private",
        "--webhook-schedule-speedup",
        "1000",
    ])
    .await;
    let flaky = endpoint(&server, &receiver.url("/flaky"), &["task.succeeded"]).await;
    // A 500, an answer too late (15 s), a 503 asking for 5,000 s (5 s at this speed), then 204.
    receiver.script([
        Reply::status(500).body("x".repeat(5000)),
        Reply::status(500).after(Duration::from_secs(16)),
        Reply::status(503).header("retry-after", "5000"),
        Reply::status(204),
    ]);
    let done = server.convert_file(&data("byte.tif"), json!({})).await;
    assert_eq!(done["state"], "SUCCESS");
    let id = flaky["id"].as_str().unwrap();
    let log = eventually(
        "the delivery to succeed",
        Duration::from_secs(60),
        || async {
            let log = endpoint_log(&server, id).await;
            (log.len() == 1 && log[0]["status"] == "succeeded").then_some(log)
        },
    )
    .await;
    let attempts = log[0]["attempts"].as_array().unwrap();
    let codes: Vec<Value> = attempts.iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(
        codes,
        [json!(500), Value::Null, json!(503), json!(204)],
        "{attempts:?}"
    );
    assert_eq!(
        attempts[0]["response"].as_str().unwrap().len(),
        1024,
        "only the first KiB is kept"
    );
    assert!(
        attempts[1]["error"].as_str().unwrap().contains("15 s"),
        "{}",
        attempts[1]
    );
    // One webhook-id for every attempt, so that receivers can deduplicate.
    let got = receiver.received();
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|r| r.id() == got[0].id()));
    // Retry-After (5 s here) held the fourth attempt back, past the schedule's 1.8 s.
    let waited = got[3].at - got[2].at;
    assert!(waited >= Duration::from_millis(4900), "{waited:?}");
    assert_eq!(
        got.iter()
            .filter(|r| (200..300).contains(&r.answered))
            .count(),
        1
    );

    // A 410 disables the endpoint, saying why; what it would have got is not even queued.
    receiver.answer_by_default(Reply::status(410));
    let (_, _) = post(&server, &format!("/webhooks/{id}/test"), None).await;
    let disabled = eventually(
        "the endpoint to be disabled",
        Duration::from_secs(30),
        || async {
            let (_, e) = server
                .get_json(&format!("/webhooks/{id}"), &server.token)
                .await;
            (e["disabled"] == true).then_some(e)
        },
    )
    .await;
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410"),
        "{disabled}"
    );
    server.convert_file(&data("byte.tif"), json!({})).await;
    let (code, refused) = post(&server, &format!("/webhooks/{id}/test"), None).await;
    assert_eq!(code, StatusCode::CONFLICT, "{refused}");
    assert_eq!(
        endpoint_log(&server, id).await.len(),
        2,
        "no delivery queued while disabled"
    );
}

#[tokio::test]
async fn an_endpoint_failing_for_five_days_is_disabled_and_resumes_when_enabled() {
    let receiver = Receiver::start().await;
    // Five days pass in 4.3 s; each delivery's whole schedule (27.5 h) in 1 s.
    let server = TestServer::start_with(&[
        "--webhook-allow-private",
        "--webhook-schedule-speedup",
        "100000",
    ])
    .await;
    let e = endpoint(&server, &receiver.url("/down"), &["task.succeeded"]).await;
    let id = e["id"].as_str().unwrap().to_owned();
    receiver.answer_by_default(Reply::status(502));
    let disabled = eventually(
        "the endpoint to be disabled",
        Duration::from_secs(60),
        || async {
            // A delivery a moment, each failing through its schedule.
            post(&server, &format!("/webhooks/{id}/test"), None).await;
            let (_, e) = server
                .get_json(&format!("/webhooks/{id}"), &server.token)
                .await;
            (e["disabled"] == true).then_some(e)
        },
    )
    .await;
    let reason = disabled["disabled_reason"].as_str().unwrap();
    assert!(reason.contains("five days"), "{reason}");
    assert!(disabled["failing_since"].is_string(), "{disabled}");
    let exhausted = endpoint_log(&server, &id).await;
    assert!(
        exhausted
            .iter()
            .any(|d| d["status"] == "failed" && d["attempts"].as_array().unwrap().len() == 8),
        "{exhausted:?}"
    );

    // Enabled again, the deliveries that were still waiting go out, and the streak ends.
    receiver.answer_by_default(Reply::ok());
    let res = server
        .req(Method::PATCH, &format!("/webhooks/{id}"), &server.token)
        .json(&json!({"disabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (code, queued) = post(&server, &format!("/webhooks/{id}/test"), None).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{queued}");
    let wanted = queued["delivery_id"].as_str().unwrap().to_owned();
    received_where(
        &receiver,
        "a delivery after enabling",
        Duration::from_secs(30),
        |r| r.id() == wanted && r.answered == 200,
    )
    .await;
    let e = eventually("the streak to end", Duration::from_secs(30), || async {
        let (_, e) = server
            .get_json(&format!("/webhooks/{id}"), &server.token)
            .await;
        e["failing_since"].is_null().then_some(e)
    })
    .await;
    assert_eq!(e["disabled"], false);
    assert!(e["disabled_reason"].is_null(), "{e}");
}

#[tokio::test]
async fn deliveries_survive_a_sigkill_with_the_receiver_down_and_none_succeeds_twice() {
    let receiver = Receiver::start().await;
    // 10,000× faster: the schedule's first six waits take 0.5 ms to 1.8 s.
    let mut server = TestServer::start_with(&[
        "--webhook-allow-private",
        "--webhook-schedule-speedup",
        "10000",
    ])
    .await;
    let e = endpoint(
        &server,
        &receiver.url("/hook"),
        &["task.started", "task.succeeded"],
    )
    .await;
    let id = e["id"].as_str().unwrap().to_owned();
    receiver.down();
    let done = server.convert_file(&data("byte.tif"), json!({})).await;
    assert_eq!(done["state"], "SUCCESS");
    eventually(
        "a failed attempt while the receiver is down",
        Duration::from_secs(30),
        || async {
            let log = endpoint_log(&server, &id).await;
            log.iter()
                .any(|d| !d["attempts"].as_array().unwrap().is_empty())
                .then_some(())
        },
    )
    .await;
    // Back, but too slow to answer: the server is killed with an attempt in flight, its lease
    // held. Alone on its database, the next start releases it rather than wait a minute.
    receiver.answer_by_default(Reply::status(500).after(Duration::from_secs(30)));
    receiver.up().await;
    eventually("an attempt in flight", Duration::from_secs(30), || {
        let n = receiver.received().len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    server.stop(libc::SIGKILL).await;
    receiver.answer_by_default(Reply::ok());
    server.restart().await;
    let log = eventually(
        "both deliveries to succeed after the restart",
        Duration::from_secs(20),
        || async {
            let log = endpoint_log(&server, &id).await;
            log.iter()
                .all(|d| d["status"] == "succeeded")
                .then_some(log)
        },
    )
    .await;
    assert_eq!(log.len(), 2);
    for d in &log {
        let attempts = d["attempts"].as_array().unwrap();
        assert!(
            attempts
                .iter()
                .rev()
                .skip(1)
                .all(|a| a["status_code"].is_null()),
            "{d}"
        );
    }
    assert!(
        log.iter()
            .any(|d| d["attempts"].as_array().unwrap().len() >= 2),
        "{log:?}"
    );
    // Nothing lost, nothing delivered twice as a success.
    let mut successes: HashMap<String, usize> = HashMap::new();
    for r in receiver.received() {
        assert!(r.verifies(e["secret"].as_str().unwrap()));
        *successes.entry(r.id().to_owned()).or_default() += usize::from(r.answered == 200);
    }
    assert_eq!(successes.len(), 2, "{successes:?}");
    assert!(successes.values().all(|n| *n == 1), "{successes:?}");
}

#[tokio::test]
async fn progress_is_coalesced_with_one_delivery_in_flight_per_task() {
    let receiver = Receiver::start().await;
    receiver.answer_by_default(Reply::ok().after(Duration::from_millis(400)));
    let server = TestServer::start_with(&["--webhook-allow-private"]).await;
    let e = endpoint(
        &server,
        &receiver.url("/slow"),
        &["task.progress", "task.succeeded"],
    )
    .await;
    let source = generated_raster("coalesce.tif", "byte.tif", &["-outsize", "4000", "4000"]);
    let done = server
        .convert_file(&source, json!({"compression": "deflate"}))
        .await;
    assert_eq!(done["state"], "SUCCESS");
    let id = e["id"].as_str().unwrap();
    let log = eventually(
        "every delivery to settle",
        Duration::from_secs(60),
        || async {
            let log = endpoint_log(&server, id).await;
            log.iter().all(|d| d["status"] != "pending").then_some(log)
        },
    )
    .await;
    let count = |status: &str| log.iter().filter(|d| d["status"] == status).count();
    assert_eq!(receiver.most_in_flight_per_task(), 1);
    // The end arrived, last, and what a slow receiver could not take in time was superseded
    // rather than queued behind it.
    let got = receiver.received();
    assert_eq!(got.last().unwrap().event_type(), "task.succeeded");
    assert_eq!(count("succeeded"), got.len());
    let percents: Vec<f64> = got
        .iter()
        .filter(|r| r.event_type() == "task.progress")
        .map(|r| r.body()["data"]["progress"].as_f64().unwrap())
        .collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    assert!(count("superseded") > 0 || percents.len() <= 3, "{log:?}");
}

#[tokio::test]
async fn private_addresses_are_refused_when_registered_and_again_when_delivering() {
    let receiver = Receiver::start().await;
    let mut server = TestServer::start_with(&["--webhook-allow-private"]).await;
    let e = endpoint(&server, &receiver.url("/hook"), &["task.succeeded"]).await;
    let named = endpoint(
        &server,
        &format!("http://localhost:{}/named", receiver.addr.port()),
        &["task.succeeded"],
    )
    .await;
    server.stop(libc::SIGTERM).await;
    // Without the switch, the same URLs are refused outright…
    server.args_mut().retain(|a| a != "--webhook-allow-private");
    server.restart().await;
    let port = receiver.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/x"),
        format!("http://localhost:{port}/x"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.1.2.3/x".to_owned(),
        "http://[::1]/x".to_owned(),
        "http://[::ffff:127.0.0.1]/x".to_owned(),
        "http://0.0.0.0/x".to_owned(),
    ] {
        let (code, body) = create_endpoint(
            &server,
            &server.token,
            json!({"url": url, "events": ["task.failed"]}),
        )
        .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("public addresses only"),
            "{body}"
        );
    }
    let item = server.upload(&data("byte.tif")).await;
    let res = server
        .req(
            Method::POST,
            &format!(
                "/tree-items/{}/convert-to-geo-raster",
                item["id"].as_str().unwrap()
            ),
            &server.token,
        )
        .json(&json!({"callback_url": format!("http://127.0.0.1:{port}/cb")}))
        .send()
        .await
        .unwrap();
    let (code, body) = json_of(res).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // …and endpoints registered before are checked again at every attempt, by address and by
    // what the name resolves to at that moment: nothing reaches the receiver.
    for endpoint in [&e, &named] {
        let id = endpoint["id"].as_str().unwrap();
        post(&server, &format!("/webhooks/{id}/test"), None).await;
        let log = eventually("a refused attempt", Duration::from_secs(30), || async {
            let log = endpoint_log(&server, id).await;
            log.first()
                .filter(|d| !d["attempts"].as_array().unwrap().is_empty())
                .cloned()
        })
        .await;
        let error = log["attempts"][0]["error"].as_str().unwrap();
        assert!(error.contains("public addresses only"), "{error}");
    }
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let receiver = Receiver::start().await;
    let elsewhere = Receiver::start().await;
    receiver.answer_by_default(Reply::status(307).header("location", elsewhere.url("/stolen")));
    let server = TestServer::start_with(&["--webhook-allow-private"]).await;
    let e = endpoint(&server, &receiver.url("/hook"), &["task.succeeded"]).await;
    let id = e["id"].as_str().unwrap();
    post(&server, &format!("/webhooks/{id}/test"), None).await;
    let log = eventually("the attempt", Duration::from_secs(30), || async {
        let log = endpoint_log(&server, id).await;
        log.first()
            .filter(|d| !d["attempts"].as_array().unwrap().is_empty())
            .cloned()
    })
    .await;
    assert_eq!(log["attempts"][0]["status_code"], 307);
    assert_eq!(
        log["status"], "pending",
        "a redirect is a failure, retried later"
    );
    assert!(elsewhere.received().is_empty());
}

#[tokio::test]
async fn several_nodes_send_each_delivery_once() {
    let db = TestDatabase::new();
    let receiver = Receiver::start().await;
    let args = ["--database-url", &db.url, "--webhook-allow-private"];
    let (nodes, _) = TestServer::start_together(3, &args).await;
    let e = endpoint(&nodes[0], &receiver.url("/hook"), &["task.succeeded"]).await;
    let id = e["id"].as_str().unwrap();
    // Tests queued on every node at once: each node's dispatcher races for them.
    let mut queued = Vec::new();
    for round in 0..10 {
        for node in &nodes {
            let (code, q) = post(node, &format!("/webhooks/{id}/test"), None).await;
            assert_eq!(code, StatusCode::ACCEPTED, "round {round}: {q}");
            queued.push(q["delivery_id"].as_str().unwrap().to_owned());
        }
    }
    let expected = queued.len();
    eventually("every delivery", Duration::from_secs(60), || {
        let n = receiver.received().len();
        async move { (n >= expected).then_some(()) }
    })
    .await;
    // A moment for a duplicate to show up, if one were coming: the log settles first.
    eventually("the log to settle", Duration::from_secs(30), || async {
        let log = endpoint_log(&nodes[1], id).await;
        (log.len() == 30 && log.iter().all(|d| d["status"] == "succeeded")).then_some(())
    })
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in receiver.received() {
        *seen.entry(r.id().to_owned()).or_default() += 1;
    }
    assert_eq!(seen.len(), 30);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
}

#[tokio::test]
async fn failures_and_cancels_are_announced() {
    let receiver = Receiver::start().await;
    // One worker, so that a second conversion waits in the queue to be cancelled there.
    let server = TestServer::start_with(&["--webhook-allow-private", "--workers", "1"]).await;
    let e = endpoint(&server, &receiver.url("/hook"), &ALL_EVENTS).await;
    let failed = server.convert_file(&data("corrupt.tif"), json!({})).await;
    assert_eq!(failed["state"], "FAILURE", "{failed}");
    let big = generated_raster(
        "webhook-busy.tif",
        "byte.tif",
        &["-outsize", "6000", "6000"],
    );
    let busy = server.upload(&big).await;
    let running = task_id(&server.convert(&busy, json!({})).await);
    let queued = task_id(&server.convert(&busy, json!({})).await);
    let (code, _) = server.cancel_task(&server.token, &queued).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = server.cancel_task(&server.token, &running).await;
    assert_eq!(code, StatusCode::OK);
    for task in [&running, &queued] {
        assert_eq!(server.wait_final(task).await["state"], "REVOKED");
    }
    let of = |task: String, kind: &'static str| {
        move |r: &crate::webhook_receiver::Received| {
            r.body()["data"]["task_id"] == task.as_str() && r.event_type() == kind
        }
    };
    let failure = received_where(
        &receiver,
        "task.failed",
        Duration::from_secs(30),
        of(task_id(&failed), "task.failed"),
    )
    .await;
    assert_eq!(failure.body()["data"]["state"], "FAILURE");
    assert!(failure.body()["data"]["error"].is_string());
    for task in [&running, &queued] {
        received_where(
            &receiver,
            "task.revoked",
            Duration::from_secs(30),
            of(task.clone(), "task.revoked"),
        )
        .await;
    }
    // The queued one never started: no task.started for it.
    let got = receiver.received();
    assert!(!got.iter().any(|r| of(queued.clone(), "task.started")(r)));
    assert!(got
        .iter()
        .all(|r| r.verifies(e["secret"].as_str().unwrap())));
}
