//! The doors an attacker's review found, each shown shut through the real server: revoked
//! credentials end their streams (on every node), idle and anonymous connections are bounded,
//! sign-in is rate-limited, bodies are checked by media type and origins by scheme, host and
//! port, and slow uploads end.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{data, json_of, TestDatabase, TestServer};
use crate::live_clients::{ws_connect, ws_next, ws_send, Socket, Sse};

/// Reads `sse` until it ends; panics if it goes on for a minute.
async fn ends(sse: &mut Sse) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while sse.next().await.is_some() {}
    })
    .await
    .expect("the stream ends");
}

/// Reads `socket` until the server closes it, returning the close code and reason.
async fn closed(socket: &mut Socket) -> (CloseCode, String) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Close(Some(frame))) => return (frame.code, frame.reason.to_string()),
                Ok(Message::Close(None)) => panic!("closed without a code"),
                Ok(_) => continue,
                Err(e) => panic!("the connection dropped without a close frame: {e}"),
            }
        }
        panic!("the connection ended without a close frame");
    })
    .await
    .expect("the socket is closed")
}

async fn ticket(server: &TestServer, token: &str) -> String {
    let res = server
        .req(Method::POST, "/stream-tickets", token)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["ticket"].as_str().unwrap().to_string()
}

/// The user feed of a browser signed in with `cookie`.
async fn events_by_cookie(server: &TestServer, cookie: &str) -> Sse {
    Sse::open(
        server
            .http
            .get(server.api("/events"))
            .header("cookie", cookie),
    )
    .await
}

/// A queued task of `token`'s user. API-only servers run none, so it stays PENDING.
async fn pending_task(server: &TestServer, token: &str) -> String {
    let item = server
        .upload_as(token, &data("RGB.byte.tif"), "RGB.byte.tif")
        .await;
    server.convert_as(token, &item, json!({})).await["task_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_closes_its_streams_voids_its_tickets_and_cancels_nothing() {
    let server = TestServer::start_with(&["--role", "api"]).await;
    let bob = server.token_for("bob").await;
    let task = pending_task(&server, &bob).await;

    let mut feed = Sse::open(server.req(Method::GET, "/events", &bob)).await;
    assert_eq!(feed.status, StatusCode::OK);
    let mut task_feed =
        Sse::open(server.req(Method::GET, &format!("/tasks/{task}/events"), &bob)).await;
    assert_eq!(task_feed.status, StatusCode::OK);
    let cookie = server.sign_in(&bob).await;
    let mut cookie_feed = events_by_cookie(&server, &cookie).await;
    assert_eq!(cookie_feed.status, StatusCode::OK);
    let unused = ticket(&server, &bob).await;
    let mut by_ticket = Sse::open(
        server
            .http
            .get(server.api(&format!("/events?ticket={}", ticket(&server, &bob).await))),
    )
    .await;
    assert_eq!(by_ticket.status, StatusCode::OK);
    let mut socket = ws_connect(&server.url, &[("Authorization", format!("Bearer {bob}"))])
        .await
        .unwrap();
    ws_send(&mut socket, json!({"type": "subscribe", "task_id": task})).await;
    assert_eq!(ws_next(&mut socket).await.unwrap()["state"], "PENDING");
    // Someone else's anonymous watch of the same task is not theirs to lose.
    let mut anonymous = Sse::open(
        server
            .http
            .get(server.api(&format!("/tasks/{task}/events"))),
    )
    .await;
    assert_eq!(anonymous.status, StatusCode::OK);
    assert!(anonymous.next().await.unwrap().retry.is_some());
    assert_eq!(
        anonymous.next().await.unwrap().data.unwrap()["state"],
        "PENDING"
    );

    let revoked = Instant::now();
    server.revoke(&bob).await;
    // A cancel sent at once, before the socket is closed, is refused too.
    let _ = socket
        .send(Message::text(
            json!({"type": "cancel", "task_id": task}).to_string(),
        ))
        .await;
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, CloseCode::Policy, "{reason}");
    assert!(reason.contains("revoked"), "{reason}");
    for stream in [&mut feed, &mut task_feed, &mut cookie_feed, &mut by_ticket] {
        ends(stream).await;
    }
    println!(
        "every stream of the revoked token closed {:?} after the revoke",
        revoked.elapsed()
    );

    let res = server
        .http
        .get(server.api(&format!("/events?ticket={unused}")))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a ticket issued before the revoke: {body}"
    );
    assert_eq!(
        server.status(&task).await["state"],
        "PENDING",
        "the cancel did nothing"
    );

    // The anonymous watcher is still there: the one SSE stream left open.
    assert_eq!(server.metric("rastercast_sse_connections").await, 1.0);
    drop(anonymous);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_ends_the_sessions_streams_and_only_our_own_pages_may() {
    let server = TestServer::start_with(&["--role", "api"]).await;
    let cookie = server.sign_in(&server.token).await;
    let mut feed = events_by_cookie(&server, &cookie).await;
    assert_eq!(feed.status, StatusCode::OK);
    let host = server.url.trim_start_matches("http://").to_string();

    // Another site's page cannot sign the user out (nor can another scheme or port).
    for origin in [
        "http://evil.example".to_string(),
        format!("https://{host}"),
        format!("HTTP://{host}"),
    ] {
        let res = server
            .http
            .delete(server.api("/session"))
            .header("cookie", &cookie)
            .header("origin", &origin)
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(res).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin}: {body}");
    }
    let res = server
        .http
        .get(server.api("/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "still signed in");

    let res = server
        .http
        .delete(server.api("/session"))
        .header("cookie", &cookie)
        .header("origin", format!("http://{host}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    ends(&mut feed).await;
    let res = server
        .http
        .get(server.api("/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_node_closes_its_streams_on_another() {
    let db = TestDatabase::new();
    let args = ["--database-url", db.url.as_str(), "--role", "api"];
    let first = TestServer::start_with(&args).await;
    let second = first.join(&args).await;
    let bob = first.token_for("bob").await;
    let mut feed = Sse::open(second.req(Method::GET, "/events", &bob)).await;
    assert_eq!(feed.status, StatusCode::OK);
    let mut socket = ws_connect(&second.url, &[("Authorization", format!("Bearer {bob}"))])
        .await
        .unwrap();
    ws_send(&mut socket, json!({"type": "subscribe", "all": true})).await;
    first.revoke(&bob).await;
    ends(&mut feed).await;
    assert_eq!(closed(&mut socket).await.0, CloseCode::Policy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_nothing_are_closed_from_the_accept() {
    let server = TestServer::start_with(&["--header-timeout-secs", "1"]).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    for mut socket in idle {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut byte))
            .await
            .expect("an idle connection is closed by the server");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    assert_eq!(server.healthz().await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_that_sends_nothing_more_is_closed() {
    let server = TestServer::start_with(&["--header-timeout-secs", "1"]).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        closed.is_ok(),
        "the idle kept-alive connection is closed by the server"
    );
}

/// A client whose connections come from `ip` (any 127.x address reaches the server).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_streams_are_capped_per_address_and_overall() {
    let server = TestServer::start_with(&[
        "--role",
        "api",
        "--max-anonymous-streams-per-ip",
        "2",
        "--max-anonymous-streams",
        "3",
    ])
    .await;
    let task = pending_task(&server, &server.token).await;
    let path = server.api(&format!("/tasks/{task}/events"));
    let open = |ip: [u8; 4]| {
        let path = path.clone();
        async move { Sse::open(client_from(ip).get(path)).await }
    };
    let first = open([127, 0, 0, 1]).await;
    let _second = open([127, 0, 0, 1]).await;
    assert_eq!(first.status, StatusCode::OK);
    let res = client_from([127, 0, 0, 1]).get(&path).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        body["detail"].as_str().unwrap().contains("per address"),
        "{body}"
    );
    // WebSockets without credentials count the same.
    let ws = ws_connect(&server.url, &[]).await;
    assert!(
        ws.is_err(),
        "a third anonymous stream from one address is refused"
    );

    let _third = open([127, 0, 0, 2]).await;
    assert_eq!(_third.status, StatusCode::OK);
    let res = client_from([127, 0, 0, 3]).get(&path).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        body["detail"].as_str().unwrap().contains("server has 3"),
        "{body}"
    );

    // A token has its own limit; a closed stream frees its place.
    let with_token = Sse::open(
        client_from([127, 0, 0, 3])
            .get(&path)
            .bearer_auth(&server.token),
    )
    .await;
    assert_eq!(with_token.status, StatusCode::OK);
    drop(first);
    let again = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let sse = open([127, 0, 0, 3]).await;
            if sse.status == StatusCode::OK {
                return sse;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the closed stream's place is freed");
    assert_eq!(again.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_is_rate_limited_per_address_and_per_token() {
    let server = TestServer::start_with(&["--max-sign-ins-per-minute", "3"]).await;
    let bob = server.token_for("bob").await;
    let carol = server.token_for("carol").await;
    let attempt = |ip: [u8; 4], token: String| {
        let url = server.api("/session");
        async move {
            let res = client_from(ip)
                .post(url)
                .json(&json!({ "token": token }))
                .send()
                .await
                .unwrap();
            let retry = res.headers().get("retry-after").is_some();
            let (status, body) = json_of(res).await;
            (status, body, retry)
        }
    };
    for _ in 0..3 {
        assert_eq!(attempt([127, 0, 0, 1], bob.clone()).await.0, StatusCode::OK);
    }
    let (status, body, retry) = attempt([127, 0, 0, 1], carol.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "per address: {body}");
    assert!(
        retry && body["detail"].as_str().unwrap().contains("sign-ins"),
        "{body}"
    );
    // A wrong token counts too: guessing is what the limit slows.
    assert_eq!(
        attempt([127, 0, 0, 2], "rc_0000_nope".into()).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body, _) = attempt([127, 0, 0, 2], bob.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "per token: {body}");
    assert_eq!(attempt([127, 0, 0, 2], carol).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_are_checked_by_their_media_type_and_cookies_by_scheme_host_and_port() {
    let server = TestServer::start_with(&["--role", "api"]).await;
    let item = server.upload(&data("RGB.byte.tif")).await;
    let convert = format!(
        "/tree-items/{}/convert-to-geo-raster",
        item["id"].as_str().unwrap()
    );
    for (content_type, expected) in [
        ("text/plain; x=json", StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("application/jsonp", StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("text/json+plain", StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("application/json; charset=utf-8", StatusCode::OK),
        ("Application/JSON", StatusCode::OK),
    ] {
        let res = server
            .req(Method::POST, &convert, &server.token)
            .header("content-type", content_type)
            .body("{}")
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(res).await;
        assert_eq!(status, expected, "{content_type}: {body}");
    }

    let cookie = server.sign_in(&server.token).await;
    let host = server.url.trim_start_matches("http://").to_string();
    let port: u16 = host.rsplit(':').next().unwrap().parse().unwrap();
    let folder = |origin: String| {
        server
            .http
            .post(server.api("/tree-items/folders"))
            .header("cookie", &cookie)
            .header("origin", origin)
            .json(&json!({"name": "f", "parent_id": null}))
            .send()
    };
    for origin in [
        format!("https://{host}"),
        format!("HTTP://{host}"),
        format!("http://127.0.0.1:{}", port + 1),
        "http://127.0.0.1".into(),
        "null".into(),
    ] {
        let (status, body) = json_of(folder(origin.clone()).await.unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin}: {body}");
    }
    assert_eq!(
        folder(format!("http://{host}")).await.unwrap().status(),
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_trickles_gets_408_and_stores_nothing() {
    let server = TestServer::start_with(&[
        "--body-timeout-secs",
        "1",
        "--min-upload-bytes-per-sec",
        "1000",
    ])
    .await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/tree-items?name=slow.tif HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 100000\r\n\r\n",
        server.token
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = socket.into_split();
    // Ten bytes every 200 ms: never idle long enough for the stall timeout, far too slow.
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            if write.write_all(&[b'x'; 10]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut response = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&response).contains("}") {
                break;
            }
        }
    })
    .await;
    trickle.abort();
    assert!(answered.is_ok(), "a trickling upload is answered");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("bytes per second"), "{text}");
    let (status, items) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(items, Value::Array(vec![]), "no item");
    tokio::time::timeout(Duration::from_secs(30), async {
        while !server.tmp_files().is_empty() || !server.blob_files().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("no bytes are left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_message_over_64_kib_is_closed_with_1009() {
    let server = TestServer::start().await;
    let mut socket = ws_connect(&server.url, &[]).await.unwrap();
    socket
        .send(Message::text("x".repeat(64 * 1024 + 1)))
        .await
        .unwrap();
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, CloseCode::Size, "{reason}");
    assert!(reason.contains("64 KiB"), "{reason}");
    // Just under the limit is an ordinary bad message.
    let mut socket = ws_connect(&server.url, &[]).await.unwrap();
    socket
        .send(Message::text("x".repeat(64 * 1024 - 1)))
        .await
        .unwrap();
    assert_eq!(ws_next(&mut socket).await.unwrap()["type"], "error");
}

/// The one kind of refusal without a JSON body: requests hyper rejects before they reach the
/// router (README, "HTTP API"). They get a status, the connection closes, the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_hyper_refuses_get_a_status_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let many_headers: String = (0..120).map(|i| format!("x-h{i}: 1\r\n")).collect();
    for (head, expected) in [
        (format!("POST /api/v1/tree-items HTTP/1.1\r\nHost: {addr}\r\nContent-Length: -1\r\n\r\n"), "400"),
        (format!("POST /api/v1/tree-items HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 99999999999999999999999\r\n\r\n"), "400"),
        (format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n{many_headers}\r\n"), "431"),
    ] {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut response))
            .await
            .expect("answered and closed")
            .ok();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with(&format!("HTTP/1.1 {expected}")), "{head:.60}: {text}");
    }
    assert_eq!(server.healthz().await, StatusCode::OK);
}
