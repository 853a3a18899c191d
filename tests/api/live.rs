//! Live events over real sockets: SSE parsed from the raw stream, and WebSocket.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{data, json_of, TestServer};
use crate::lifecycle::big_raster;
use crate::live_clients::{is_final, ws_connect, ws_next, ws_send, Sse};

fn seq(event: &Value) -> u64 {
    event["seq"].as_u64().expect("every event has a seq")
}

/// Checks what every feed promises, and returns the events.
fn assert_well_ordered(events: &[(String, Value)]) {
    let mut last_seq = 0;
    let mut progress = std::collections::HashMap::<String, f64>::new();
    for (id, event) in events {
        assert_eq!(
            id.parse::<u64>().unwrap(),
            seq(event),
            "the SSE id is the seq"
        );
        assert!(
            seq(event) > last_seq,
            "seq goes up, and no event comes twice: {last_seq} then {}",
            seq(event)
        );
        last_seq = seq(event);
        assert_progress_keeps(&mut progress, event);
        assert!(["state", "progress", "snapshot"].contains(&event["event"].as_str().unwrap()));
    }
}

/// Records `event`'s progress in `progress` (by task), which never goes down.
fn assert_progress_keeps(progress: &mut std::collections::HashMap<String, f64>, event: &Value) {
    let task = event["task_id"].as_str().unwrap().to_string();
    let p = event["progress"].as_f64().unwrap();
    let before = progress.insert(task, p).unwrap_or(0.0);
    assert!(p >= before, "progress went down: {before} -> {p}");
}

async fn start_big(server: &TestServer, options: Value) -> String {
    let item = server.upload(&big_raster()).await;
    server.convert(&item, options).await["task_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_feed_streams_in_order_and_ends_after_the_final_state() {
    let server = TestServer::start().await;
    let task = start_big(&server, json!({})).await;
    let mut sse = Sse::open(
        server
            .http
            .get(server.api(&format!("/tasks/{task}/events"))),
    )
    .await;
    assert_eq!(sse.status, StatusCode::OK);
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    let first = sse.next().await.unwrap();
    assert!(first.retry.is_some(), "a retry hint comes first");

    let events = sse.events_until(|_| false).await;
    assert_eq!(events[0].1["event"], "snapshot");
    assert_well_ordered(&events);
    let last = &events.last().unwrap().1;
    assert_eq!(last["state"], "SUCCESS");
    assert_eq!(last["event"], "state");
    assert!(
        events
            .iter()
            .filter(|(_, e)| e["event"] == "progress")
            .count()
            > 5,
        "progress is pushed live"
    );
    assert!(events.iter().all(|(_, e)| e["task_id"] == task.as_str()));
    assert!(
        sse.next().await.is_none(),
        "the stream ends after the final state"
    );

    // Progress events are coalesced: no event repeats the one before it.
    let steps: Vec<(f64, &str)> = events
        .iter()
        .filter(|(_, e)| e["event"] == "progress")
        .map(|(_, e)| {
            (
                e["progress"].as_f64().unwrap(),
                e["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(steps.windows(2).all(|w| w[0] != w[1]), "{steps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_last_event_id_loses_and_duplicates_nothing() {
    let server = TestServer::start().await;
    let task = start_big(&server, json!({})).await;
    let path = server.api(&format!("/tasks/{task}/events"));
    // A reference watcher that sees everything.
    let reference = tokio::spawn({
        let request = server.http.get(&path);
        async move { Sse::open(request).await.events_until(|_| false).await }
    });

    let mut first = Sse::open(server.http.get(&path)).await;
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let m = first.next().await.unwrap();
        if let (Some(id), Some(data)) = (m.id, m.data) {
            seen.push((id, data));
        }
    }
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await; // events go by while disconnected
    let last_id = seen.last().unwrap().0.clone();
    let mut second = Sse::open(server.http.get(&path).header("Last-Event-ID", &last_id)).await;
    let rest = second.events_until(|_| false).await;
    assert!(
        rest.iter().all(|(_, e)| e["event"] != "snapshot"),
        "a replay, not a snapshot"
    );
    seen.extend(rest);
    assert_well_ordered(&seen);

    let reference = reference.await.unwrap();
    let floor = seq(&seen[0].1).max(seq(&reference[0].1));
    let mine: Vec<u64> = seen
        .iter()
        .map(|(_, e)| seq(e))
        .filter(|s| *s > floor)
        .collect();
    let theirs: Vec<u64> = reference
        .iter()
        .map(|(_, e)| seq(e))
        .filter(|s| *s > floor)
        .collect();
    assert_eq!(
        mine, theirs,
        "the resumed stream has exactly the events the reference saw"
    );
    assert_eq!(seen.last().unwrap().1["state"], "SUCCESS");

    // The same with ?last_event_id=, and an id the window no longer holds: a fresh snapshot, marked.
    let mut old = Sse::open(server.http.get(format!("{path}?last_event_id=1"))).await;
    let events = old.events_until(|_| false).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1["event"], "snapshot");
    assert_eq!(events[0].1["resync"], true);
    assert_eq!(events[0].1["state"], "SUCCESS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_feeds_never_show_another_users_task() {
    let server = TestServer::start().await;
    let bob = server.token_for("bob").await;
    let (_, ticket) = {
        let res = server
            .req(Method::POST, "/stream-tickets", &bob)
            .send()
            .await
            .unwrap();
        json_of(res).await
    };
    assert_eq!(ticket["expires_in"], 30);
    let mut alice_feed = Sse::open(server.req(Method::GET, "/events", &server.token)).await;
    let mut bob_feed = Sse::open(server.http.get(server.api(&format!(
        "/events?ticket={}",
        ticket["ticket"].as_str().unwrap()
    ))))
    .await;
    assert_eq!(bob_feed.status, StatusCode::OK);

    let alice_item = server.upload(&data("byte.tif")).await;
    let bob_item = server
        .upload_as(&bob, &data("shade.tif"), "shade.tif")
        .await;
    let alice_task = server.convert(&alice_item, json!({})).await["task_id"].clone();
    let bob_task = server.convert_as(&bob, &bob_item, json!({})).await["task_id"].clone();

    let alice_events = alice_feed
        .events_until(|e| e["task_id"] == alice_task && is_final(e))
        .await;
    let bob_events = bob_feed
        .events_until(|e| e["task_id"] == bob_task && is_final(e))
        .await;
    assert!(
        alice_events.iter().all(|(_, e)| e["task_id"] == alice_task),
        "{alice_events:?}"
    );
    assert!(
        bob_events.iter().all(|(_, e)| e["task_id"] == bob_task),
        "{bob_events:?}"
    );
    assert_well_ordered(&alice_events);
    assert_well_ordered(&bob_events);

    // The ticket was single-use.
    let again = server
        .http
        .get(server.api(&format!(
            "/events?ticket={}",
            ticket["ticket"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    let (code, _) = json_of(again).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_errors_are_json_and_not_200() {
    let server = TestServer::start().await;
    for (request, expected) in [
        (
            server
                .http
                .get(server.api(&format!("/tasks/{}/events", uuid::Uuid::new_v4()))),
            StatusCode::NOT_FOUND,
        ),
        (
            server.http.get(server.api("/tasks/nope/events")),
            StatusCode::BAD_REQUEST,
        ),
        (
            server.http.get(server.api("/events")),
            StatusCode::UNAUTHORIZED,
        ),
        (
            server.http.get(server.api("/events?ticket=forged")),
            StatusCode::UNAUTHORIZED,
        ),
        (server.http.get(server.api("/ws")), StatusCode::BAD_REQUEST),
    ] {
        let (code, _) = json_of(request.send().await.unwrap()).await;
        assert_eq!(code, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subscribes_cancels_and_survives_bad_frames() {
    let server = TestServer::start().await;
    let task = start_big(
        &server,
        json!({"target_crs": "EPSG:4326", "overview_resampling": "lanczos"}),
    )
    .await;
    let mut socket = ws_connect(
        &server.url,
        &[("Authorization", format!("Bearer {}", server.token))],
    )
    .await
    .unwrap();

    for bad in [
        Message::text("not json"),
        Message::text(json!({"type": "subscribe"}).to_string()),
        Message::text(json!({"type": "dance"}).to_string()),
        Message::text(json!({"type": "subscribe", "task_id": "not-a-uuid"}).to_string()),
        Message::text(json!({"type": "subscribe", "task_id": uuid::Uuid::new_v4()}).to_string()),
        Message::binary(vec![1, 2, 3]),
    ] {
        futures_util::SinkExt::send(&mut socket, bad).await.unwrap();
        let reply = ws_next(&mut socket).await.expect("the socket stays open");
        assert_eq!(reply["type"], "error", "{reply}");
        assert!(reply["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }

    ws_send(&mut socket, json!({"type": "subscribe", "task_id": task})).await;
    let snapshot = ws_next(&mut socket).await.unwrap();
    assert_eq!(snapshot["event"], "snapshot");
    assert_eq!(snapshot["task_id"], task.as_str());
    let mut events = vec![snapshot];
    while events.last().unwrap()["progress"].as_f64().unwrap() < 5.0 {
        events.push(ws_next(&mut socket).await.unwrap());
    }
    ws_send(&mut socket, json!({"type": "cancel", "task_id": task})).await;
    loop {
        let event = ws_next(&mut socket).await.unwrap();
        let done = is_final(&event);
        events.push(event);
        if done {
            break;
        }
    }
    assert!(
        events.iter().any(|e| e["status"] == "Cancelling…"),
        "the cancel shows while the work stops"
    );
    assert_eq!(events.last().unwrap()["state"], "REVOKED");
    let numbered: Vec<(String, Value)> = events
        .iter()
        .map(|e| (seq(e).to_string(), e.clone()))
        .collect();
    assert_well_ordered(&numbered);

    // Without credentials a task id still allows watching, but not cancelling or `all`.
    let mut anonymous = ws_connect(&server.url, &[]).await.unwrap();
    ws_send(
        &mut anonymous,
        json!({"type": "subscribe", "task_id": task}),
    )
    .await;
    assert_eq!(ws_next(&mut anonymous).await.unwrap()["state"], "REVOKED");
    ws_send(&mut anonymous, json!({"type": "subscribe", "all": true})).await;
    assert_eq!(ws_next(&mut anonymous).await.unwrap()["type"], "error");
    ws_send(&mut anonymous, json!({"type": "cancel", "task_id": task})).await;
    assert_eq!(ws_next(&mut anonymous).await.unwrap()["type"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_sockets_must_come_from_our_own_origin() {
    let server = TestServer::start().await;
    let res = server
        .http
        .post(server.api("/session"))
        .json(&json!({"token": server.token}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let set_cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let host = server.url.trim_start_matches("http://").to_string();

    let foreign = ws_connect(
        &server.url,
        &[
            ("Cookie", cookie.clone()),
            ("Origin", "http://evil.example".into()),
        ],
    )
    .await;
    match foreign {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("a foreign origin was let in: {:?}", other.map(|_| ())),
    }
    let mut own = ws_connect(
        &server.url,
        &[
            ("Cookie", cookie.clone()),
            ("Origin", format!("http://{host}")),
        ],
    )
    .await
    .unwrap();
    ws_send(&mut own, json!({"type": "subscribe", "all": true})).await;
    let item = server.upload(&data("byte.tif")).await;
    let task = server.convert(&item, json!({})).await["task_id"].clone();
    loop {
        let event = ws_next(&mut own).await.unwrap();
        assert_eq!(event["task_id"], task);
        if is_final(&event) {
            break;
        }
    }

    // The cookie works for REST reads, refuses cross-origin writes, and signing out ends it.
    let res = server
        .http
        .get(server.api("/tree-items"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = server
        .http
        .post(server.api("/tree-items/folders"))
        .header("Cookie", &cookie)
        .header("Origin", "http://evil.example")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(res).await.0, StatusCode::FORBIDDEN);
    let res = server
        .http
        .delete(server.api("/session"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = server
        .http
        .get(server.api("/tree-items"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_pings_and_shutdown() {
    let mut server = TestServer::start_with(&["--keepalive-secs", "1"]).await;

    let mut feed = Sse::open(server.req(Method::GET, "/events", &server.token)).await;
    let mut comments = 0;
    while comments < 2 {
        if feed.next().await.unwrap().comment {
            comments += 1;
        }
    }

    // A peer that never answers pings is closed within two intervals.
    let mut silent = ws_connect(&server.url, &[]).await.unwrap();
    let mut answering = ws_connect(&server.url, &[]).await.unwrap();
    let reader = tokio::spawn(async move {
        // Reading answers pings; this socket stays open.
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(4) {
            if tokio::time::timeout(
                Duration::from_millis(200),
                futures_util::StreamExt::next(&mut answering),
            )
            .await
            .is_ok_and(|m| m.is_none())
            {
                panic!("an answering socket was closed");
            }
        }
        answering
    });
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut closed = false;
    while let Ok(Some(frame)) = tokio::time::timeout(
        Duration::from_secs(2),
        futures_util::StreamExt::next(&mut silent),
    )
    .await
    {
        match frame {
            Ok(Message::Close(_)) | Err(_) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "the silent peer was closed");
    let mut answering = reader.await.unwrap();

    // Shutdown closes sockets with 1001 (going away).
    server.stop(libc::SIGTERM).await;
    let mut code = None;
    while let Some(Ok(frame)) = futures_util::StreamExt::next(&mut answering).await {
        if let Message::Close(Some(frame)) = frame {
            code = Some(frame.code);
            break;
        }
    }
    assert_eq!(code, Some(CloseCode::Away));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_all_get_the_final_event() {
    raise_fd_limit();
    // A thousand anonymous watchers from one address: far past the default per-address cap.
    let server = TestServer::start_with(&[
        "--max-anonymous-streams-per-ip",
        "1000",
        "--max-anonymous-streams",
        "1000",
    ])
    .await;
    let task = start_big(
        &server,
        json!({"target_crs": "EPSG:4326", "overview_resampling": "lanczos"}),
    )
    .await;
    let mut watchers = tokio::task::JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(1000);
    for i in 0..1000 {
        let ready = ready_tx.clone();
        if i % 2 == 0 {
            let request = server
                .http
                .get(server.api(&format!("/tasks/{task}/events")));
            watchers.spawn(async move {
                let mut sse = Sse::open(request).await;
                let _ = ready.send(()).await;
                let events = sse.events_until(is_final).await;
                events.last().map(|(_, e)| e["state"].clone())
            });
        } else {
            let (url, task) = (server.url.clone(), task.clone());
            watchers.spawn(async move {
                let mut socket = ws_connect(&url, &[]).await.unwrap();
                ws_send(&mut socket, json!({"type": "subscribe", "task_id": task})).await;
                let mut first = true;
                loop {
                    let event = ws_next(&mut socket).await?;
                    if first {
                        let _ = ready.send(()).await;
                        first = false;
                    }
                    if is_final(&event) {
                        return Some(event["state"].clone());
                    }
                }
            });
        }
    }
    for _ in 0..1000 {
        ready_rx.recv().await.unwrap();
    }
    // Everyone is watching; end the task and count who saw it.
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
    let mut finals = 0;
    while let Some(seen) = watchers.join_next().await {
        assert_eq!(seen.unwrap(), Some(json!("REVOKED")));
        finals += 1;
    }
    assert_eq!(finals, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_slow_nothing_down() {
    raise_fd_limit();
    let server = TestServer::start().await;
    // 100 SSE and 100 WebSocket clients that connect and never read a byte.
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut stalled = Vec::new();
    for i in 0..200 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let request = if i % 2 == 0 {
            format!(
                "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
                server.token
            )
        } else {
            format!(
                "GET /api/v1/ws HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                server.token
            )
        };
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
            .await
            .unwrap();
        stalled.push(stream);
    }
    let rss_before = rss_kib(server.pid());
    // A normal watcher still sees every step, and the conversions still finish.
    let mut feed = Sse::open(server.req(Method::GET, "/events", &server.token)).await;
    let mut tasks = HashSet::new();
    for _ in 0..3 {
        tasks.insert(start_big(&server, json!({})).await);
    }
    let mut finished = HashSet::new();
    let mut events = Vec::new();
    while finished != tasks {
        let message = feed.next().await.expect("the feed stays open");
        if let (Some(id), Some(event)) = (message.id, message.data) {
            if is_final(&event) {
                assert_eq!(event["state"], "SUCCESS");
                finished.insert(event["task_id"].as_str().unwrap().to_string());
            }
            events.push((id, event));
        }
    }
    assert_well_ordered(&events);
    assert_eq!(finished, tasks);
    let rss_after = rss_kib(server.pid());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} to {rss_after} KiB"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_still_ends_with_every_final_state() {
    let server = TestServer::start_with(&["--bus-capacity", "4"]).await;
    // A client with a tiny receive buffer that stops reading: once the socket buffers are
    // full the server cannot write to it, and it falls behind the bus.
    let addr: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /api/v1/events HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        server.token
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();

    let mut tasks = HashSet::new();
    for _ in 0..3 {
        tasks.insert(start_big(&server, json!({})).await);
    }
    for task in &tasks {
        server.wait_final(task).await;
    }

    // Now read everything: whatever was skipped, the client ends with every true final state.
    let mut text = String::new();
    let mut last = std::collections::HashMap::<String, Value>::new();
    let mut buf = vec![0u8; 64 * 1024];
    while last.values().filter(|s| **s == "SUCCESS").count() < tasks.len() {
        let n = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
        )
        .await
        .expect("the feed keeps coming")
        .unwrap();
        assert!(n > 0, "the server closed the feed");
        text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        while let Some(end) = text.find("\n\n") {
            let message: String = text.drain(..end + 2).collect();
            if let Some(data) = message.lines().find_map(|l| l.strip_prefix("data: ")) {
                let event: Value = serde_json::from_str(data).unwrap();
                last.insert(
                    event["task_id"].as_str().unwrap().to_string(),
                    event["state"].clone(),
                );
            }
        }
    }
}

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on this test process.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_a_finished_tasks_feed_ends_it() {
    let server = TestServer::start().await;
    let item = server.upload(&data("byte.tif")).await;
    let task = server.convert(&item, json!({})).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = server.api(&format!("/tasks/{task}/events"));
    let events = Sse::open(server.http.get(&path))
        .await
        .events_until(|_| false)
        .await;
    let (last_id, last) = events.last().unwrap().clone();
    assert!(is_final(&last));
    // A browser reconnects after the stream ends, with the last id it saw.
    let mut again = Sse::open(server.http.get(&path).header("Last-Event-ID", &last_id)).await;
    let replay = tokio::time::timeout(Duration::from_secs(5), again.events_until(|_| false))
        .await
        .expect("the feed ends");
    assert_eq!(replay.len(), 1);
    assert_eq!(replay[0].1["state"], last["state"]);
}

/// A signed-in socket listens to its user's channel of the bus; once it follows another user's
/// task by its id, it hears that task's events as they happen, and still its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_follows_another_users_task_by_its_id_hears_it_and_its_own() {
    let server = TestServer::start().await;
    let bob = server.token_for("bob").await;
    let item = server.upload_as(&bob, &big_raster(), "big.tif").await;
    let options = json!({"target_crs": "EPSG:4326", "overview_resampling": "lanczos"});
    let theirs = server.convert_as(&bob, &item, options).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut socket = ws_connect(
        &server.url,
        &[("Authorization", format!("Bearer {}", server.token))],
    )
    .await
    .unwrap();
    ws_send(&mut socket, json!({"type": "subscribe", "all": true})).await;
    ws_send(&mut socket, json!({"type": "subscribe", "task_id": theirs})).await;
    let mut events = Vec::new();
    until_final(&mut socket, &theirs, &mut events).await;
    assert!(
        events
            .iter()
            .any(|e| e["task_id"] == theirs.as_str() && e["event"] != "snapshot"),
        "bob's task was heard live, not only in its snapshot: {events:?}"
    );
    // Through bob's task's channel and the user's own, not the channel of every event.
    for (channel, count) in [("task", 1), ("user", 1), ("all", 0)] {
        assert_eq!(listeners(&server, channel).await, count, "{channel}");
    }

    let mine = server.convert_file(&data("byte.tif"), json!({})).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    until_final(&mut socket, &mine, &mut events).await;
    let numbered: Vec<(String, Value)> = events
        .iter()
        .map(|e| (seq(e).to_string(), e.clone()))
        .collect();
    assert_well_ordered(&numbered);
}

/// Reads `socket` into `events` until `task` has ended there (at once when it already has).
async fn until_final(
    socket: &mut crate::live_clients::Socket,
    task: &str,
    events: &mut Vec<Value>,
) {
    read_until(socket, events, |events: &[Value]| {
        events.iter().any(|e| e["task_id"] == task && is_final(e))
    })
    .await;
}

/// A socket listens to the channels of what it follows and no other: without a user, one
/// channel per task it follows by its id, read together in `seq` order; letting a task go
/// drops its channel, and nothing is lost on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_without_a_user_listens_only_to_the_tasks_it_follows() {
    let server = TestServer::start().await;
    let options = json!({"target_crs": "EPSG:4326", "overview_resampling": "lanczos"});
    let first = start_big(&server, options).await;
    // Another user's, shorter: it only has to be heard live once.
    let bob = server.token_for("bob").await;
    let item = server.upload_as(&bob, &big_raster(), "big.tif").await;
    let second = server.convert_as(&bob, &item, json!({})).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut socket = ws_connect(&server.url, &[]).await.unwrap();
    // An answer shows the socket's loop is running: following nothing, it listens to nothing.
    ws_send(&mut socket, json!({"type": "subscribe"})).await;
    assert_eq!(ws_next(&mut socket).await.unwrap()["type"], "error");
    for channel in ["all", "task", "user"] {
        assert_eq!(listeners(&server, channel).await, 0, "{channel}");
    }

    let mut events = Vec::new();
    let snapshots_of = |tasks: &[&str], from: usize| {
        let tasks: HashSet<String> = tasks.iter().map(|t| t.to_string()).collect();
        move |events: &[Value]| snapshot_tasks(&events[from..]).is_superset(&tasks)
    };
    ws_send(&mut socket, json!({"type": "subscribe", "task_id": first})).await;
    read_until(&mut socket, &mut events, snapshots_of(&[&first], 0)).await;
    assert_eq!(listeners(&server, "task").await, 1);
    assert_eq!(listeners(&server, "all").await, 0);

    // A second channel beside the first: only the new task's snapshot.
    let added = events.len();
    ws_send(&mut socket, json!({"type": "subscribe", "task_id": second})).await;
    read_until(&mut socket, &mut events, snapshots_of(&[&second], added)).await;
    assert_eq!(listeners(&server, "task").await, 2);
    assert_eq!(listeners(&server, "all").await, 0);
    // Both heard live, through their two channels.
    let from = events.len();
    let live_from = |task: &str, from: usize, events: &[Value]| {
        events[from..]
            .iter()
            .any(|e| e["task_id"] == task && e["event"] != "snapshot")
    };
    read_until(&mut socket, &mut events, |events: &[Value]| {
        live_from(&first, from, events) && live_from(&second, from, events)
    })
    .await;

    // Letting it go drops its channel and sends nothing; the answer to a bad message shows
    // the unsubscribe was handled.
    ws_send(
        &mut socket,
        json!({"type": "unsubscribe", "task_id": second}),
    )
    .await;
    ws_send(&mut socket, json!({"type": "subscribe"})).await;
    read_until(&mut socket, &mut events, |events: &[Value]| {
        events.last().is_some_and(|e| e["type"] == "error")
    })
    .await;
    events.pop();
    assert!(
        !events[added..]
            .iter()
            .any(|e| e["task_id"] == first.as_str() && e["event"] == "snapshot"),
        "the first task's channel was kept: no new snapshot of it"
    );
    assert_eq!(listeners(&server, "task").await, 1);
    assert_eq!(listeners(&server, "all").await, 0);
    let back = events.len();

    until_final(&mut socket, &first, &mut events).await;
    assert!(
        live_from(&first, back, &events),
        "the task was heard live on its own channel again: {events:?}"
    );
    // One socket, one order: a snapshot is as of the latest event sent, and live events
    // follow in `seq` order, each once.
    let mut last = 0;
    let mut progress = std::collections::HashMap::<String, f64>::new();
    for event in &events {
        if event["event"] == "snapshot" {
            assert!(
                seq(event) >= last,
                "a snapshot went back: {last} then {}",
                seq(event)
            );
        } else {
            assert!(
                seq(event) > last,
                "seq went back: {last} then {}",
                seq(event)
            );
        }
        last = seq(event);
        assert_progress_keeps(&mut progress, event);
    }
    assert_eq!(events.last().unwrap()["state"], "SUCCESS");
}

/// Past eight other users' tasks a socket moves to the channel of every event, and back when
/// it lets one go; each move sends everything it follows afresh, and a running task is heard
/// live on either side of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_following_more_tasks_than_it_has_channels_for_hears_every_event_instead() {
    let server = TestServer::start().await;
    let bob = server.token_for("bob").await;
    let small = server.upload_as(&bob, &data("byte.tif"), "byte.tif").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let task = server.convert_as(&bob, &small, json!({})).await;
        tasks.push(task["task_id"].as_str().unwrap().to_string());
    }
    let big = server.upload_as(&bob, &big_raster(), "big.tif").await;
    let options = json!({"target_crs": "EPSG:4326", "overview_resampling": "lanczos"});
    let running = server.convert_as(&bob, &big, options).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut socket = ws_connect(&server.url, &[]).await.unwrap();
    let mut events = Vec::new();
    for task in &tasks {
        let from = events.len();
        ws_send(&mut socket, json!({"type": "subscribe", "task_id": task})).await;
        read_until(&mut socket, &mut events, |e: &[Value]| {
            snapshot_tasks(&e[from..]).contains(task)
        })
        .await;
    }
    assert_eq!(listeners(&server, "task").await, 8);
    assert_eq!(listeners(&server, "all").await, 0);

    // The ninth: one channel of every event instead of nine, and every task sent afresh.
    let moved = events.len();
    ws_send(
        &mut socket,
        json!({"type": "subscribe", "task_id": running}),
    )
    .await;
    read_until(&mut socket, &mut events, |e: &[Value]| {
        snapshot_tasks(&e[moved..]).len() == 9
    })
    .await;
    assert_eq!(listeners(&server, "task").await, 0);
    assert_eq!(listeners(&server, "all").await, 1);
    let from = events.len();
    read_until(&mut socket, &mut events, |e: &[Value]| {
        e[from..]
            .iter()
            .any(|e| e["task_id"] == running.as_str() && e["event"] != "snapshot")
    })
    .await;

    // Letting one go: a channel per task again, and the eight sent afresh.
    let back = events.len();
    ws_send(
        &mut socket,
        json!({"type": "unsubscribe", "task_id": tasks[0]}),
    )
    .await;
    read_until(&mut socket, &mut events, |e: &[Value]| {
        snapshot_tasks(&e[back..]).len() == 8
    })
    .await;
    assert!(!snapshot_tasks(&events[back..]).contains(&tasks[0]));
    assert_eq!(listeners(&server, "task").await, 8);
    assert_eq!(listeners(&server, "all").await, 0);

    until_final(&mut socket, &running, &mut events).await;
    let mut progress = std::collections::HashMap::<String, f64>::new();
    for event in &events {
        assert_progress_keeps(&mut progress, event);
    }
    let last = events.iter().rfind(|e| e["task_id"] == running.as_str());
    assert_eq!(last.unwrap()["state"], "SUCCESS");
}

/// The tasks that `events` hold a snapshot of.
fn snapshot_tasks(events: &[Value]) -> HashSet<String> {
    events
        .iter()
        .filter(|e| e["event"] == "snapshot")
        .map(|e| e["task_id"].as_str().unwrap().to_string())
        .collect()
}

/// How many streams listen to the bus's `channel` ("task", "user" or "all").
async fn listeners(server: &TestServer, channel: &str) -> u64 {
    let name = format!("rastercast_event_listeners{{channel=\"{channel}\"}}");
    server.metric(&name).await as u64
}

/// Adds what `socket` sends to `events` until `until` holds for them.
async fn read_until(
    socket: &mut crate::live_clients::Socket,
    events: &mut Vec<Value>,
    until: impl Fn(&[Value]) -> bool,
) {
    let wait = async {
        while !until(events) {
            events.push(ws_next(socket).await.expect("the socket stays open"));
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .is_err()
    {
        panic!("the socket never sent what was waited for: {events:?}");
    }
}
