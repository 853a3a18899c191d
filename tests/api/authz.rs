//! Who may call what: every route of the OpenAPI document, called as the owner of the objects
//! it names, as another user, anonymously, with a revoked token and with an expired stream
//! ticket. The table must name every documented route, so a new route cannot skip it.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{data, TestServer};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Caller {
    Owner,
    Other,
    Anonymous,
    Revoked,
    ExpiredTicket,
}
use Caller::*;

/// The order of the codes in the table; the owner goes last, after everyone else failed to
/// delete its objects.
const CALLERS: [Caller; 5] = [Other, Anonymous, Revoked, ExpiredTicket, Owner];

/// How a route takes its credentials.
#[derive(Clone, Copy)]
enum Style {
    /// `Authorization: Bearer` (the expired ticket goes in `?ticket=`, where streams read it).
    Bearer,
    /// The session cookie made by signing in with the caller's token.
    Cookie,
    /// The token in the JSON body (signing in).
    TokenInBody,
}

/// What a call sends and expects: codes in the order Other, Anonymous, Revoked,
/// ExpiredTicket, Owner.
struct Row {
    method: &'static str,
    path: &'static str,
    style: Style,
    codes: [u16; 5],
}

const fn row(method: &'static str, path: &'static str, style: Style, codes: [u16; 5]) -> Row {
    Row {
        method,
        path,
        style,
        codes,
    }
}

const TOKEN: Style = Style::Bearer;

/// `{item}`, `{task}`, … are the owner's objects; `{item_to_delete}` and `{task_to_delete}`
/// are there to be deleted.
const TABLE: &[Row] = &[
    row(
        "GET",
        "/api/v1/tree-items",
        TOKEN,
        [200, 401, 401, 401, 200],
    ),
    row(
        "POST",
        "/api/v1/tree-items",
        TOKEN,
        [201, 401, 401, 401, 201],
    ),
    row(
        "POST",
        "/api/v1/tree-items/folders",
        TOKEN,
        [201, 401, 401, 401, 201],
    ),
    row(
        "GET",
        "/api/v1/tree-items/{item}",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "DELETE",
        "/api/v1/tree-items/{item_to_delete}",
        TOKEN,
        [404, 401, 401, 401, 204],
    ),
    row(
        "GET",
        "/api/v1/tree-items/{item}/content",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "GET",
        "/api/v1/tree-items/{cog}/tiles/WebMercatorQuad/{z}/{x}/{y}",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "GET",
        "/api/v1/tree-items/{cog}/WebMercatorQuad/tilejson.json",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "GET",
        "/api/v1/tree-items/{cog}/info",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "GET",
        "/api/v1/tree-items/{cog}/statistics",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "GET",
        "/api/v1/tree-items/{cog}/stac",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "GET",
        "/api/v1/tree-items/{cog}/preview.png",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "GET",
        "/api/v1/tree-items/{cog}/point/{lon_lat}",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "GET",
        "/api/v1/tree-items/{cog}/WMTSCapabilities.xml",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "POST",
        "/api/v1/tree-items/{item}/convert-to-geo-raster",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "POST",
        "/api/v1/tree-items/{item}/links",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    // A shareable link is its own credential: whoever holds it reads the file.
    row(
        "GET",
        "/api/v1/links/{link}",
        TOKEN,
        [200, 200, 200, 200, 200],
    ),
    row("GET", "/api/v1/tasks", TOKEN, [200, 401, 401, 401, 200]),
    // The status and a task's own feed are capabilities: the id is enough (README).
    row(
        "GET",
        "/api/v1/tasks/{task}/status",
        TOKEN,
        [200, 200, 401, 200, 200],
    ),
    row(
        "POST",
        "/api/v1/tasks/{task}/cancel",
        TOKEN,
        [404, 401, 401, 401, 409],
    ),
    // A finished task is retried by its owner only, and only after FAILURE or REVOKED.
    row(
        "POST",
        "/api/v1/tasks/{task}/retry",
        TOKEN,
        [404, 401, 401, 401, 409],
    ),
    // Bulk actions take the caller's own tasks: another user's call matches none of these.
    row(
        "POST",
        "/api/v1/tasks/cancel",
        TOKEN,
        [200, 401, 401, 401, 200],
    ),
    row("DELETE", "/api/v1/tasks", TOKEN, [200, 401, 401, 401, 200]),
    row(
        "DELETE",
        "/api/v1/tasks/{task_to_delete}",
        TOKEN,
        [404, 401, 401, 401, 204],
    ),
    row(
        "GET",
        "/api/v1/tasks/{task}/events",
        TOKEN,
        [200, 200, 401, 401, 200],
    ),
    row("GET", "/api/v1/events", TOKEN, [200, 401, 401, 401, 200]),
    // Anonymous WebSockets may watch tasks by id; they cannot list anyone's.
    row("GET", "/api/v1/ws", TOKEN, [101, 101, 401, 401, 101]),
    row(
        "POST",
        "/api/v1/stream-tickets",
        TOKEN,
        [200, 401, 401, 401, 200],
    ),
    row(
        "POST",
        "/api/v1/session",
        Style::TokenInBody,
        [200, 401, 401, 401, 200],
    ),
    row(
        "GET",
        "/api/v1/session",
        Style::Cookie,
        [200, 401, 401, 401, 200],
    ),
    row(
        "DELETE",
        "/api/v1/session",
        Style::Cookie,
        [204, 204, 204, 204, 204],
    ),
    row(
        "GET",
        "/api/v1/openapi.json",
        TOKEN,
        [200, 200, 200, 200, 200],
    ),
    // Resumable uploads: an upload URL is its creator's alone. OPTIONS is discovery, open to all.
    row(
        "OPTIONS",
        "/api/v1/uploads",
        TOKEN,
        [204, 204, 204, 204, 204],
    ),
    row("POST", "/api/v1/uploads", TOKEN, [201, 401, 401, 401, 201]),
    row("GET", "/api/v1/uploads", TOKEN, [200, 401, 401, 401, 200]),
    row(
        "HEAD",
        "/api/v1/uploads/{upload}",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "GET",
        "/api/v1/uploads/{upload}",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "PATCH",
        "/api/v1/uploads/{upload}",
        TOKEN,
        [404, 401, 401, 401, 204],
    ),
    row(
        "DELETE",
        "/api/v1/uploads/{upload_to_delete}",
        TOKEN,
        [404, 401, 401, 401, 204],
    ),
    // Webhooks: endpoints and their logs are their owner's alone.
    row("POST", "/api/v1/webhooks", TOKEN, [201, 401, 401, 401, 201]),
    row("GET", "/api/v1/webhooks", TOKEN, [200, 401, 401, 401, 200]),
    row(
        "GET",
        "/api/v1/webhooks/{webhook}",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "PATCH",
        "/api/v1/webhooks/{webhook}",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "DELETE",
        "/api/v1/webhooks/{webhook_to_delete}",
        TOKEN,
        [404, 401, 401, 401, 204],
    ),
    row(
        "POST",
        "/api/v1/webhooks/{webhook}/rotate-secret",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "POST",
        "/api/v1/webhooks/{webhook}/test",
        TOKEN,
        [404, 401, 401, 401, 202],
    ),
    row(
        "GET",
        "/api/v1/webhooks/{webhook}/deliveries",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row(
        "POST",
        "/api/v1/webhooks/{webhook}/deliveries/{delivery}/redeliver",
        TOKEN,
        [404, 401, 401, 401, 202],
    ),
    row(
        "GET",
        "/api/v1/webhooks/callback-secret",
        TOKEN,
        [200, 401, 401, 401, 200],
    ),
    row(
        "POST",
        "/api/v1/webhooks/callback-secret/rotate",
        TOKEN,
        [200, 401, 401, 401, 200],
    ),
    row(
        "GET",
        "/api/v1/tasks/{task}/deliveries",
        TOKEN,
        [404, 401, 401, 401, 200],
    ),
    row("GET", "/healthz", TOKEN, [200, 200, 200, 200, 200]),
    row("GET", "/metrics", TOKEN, [200, 200, 200, 200, 200]),
];

/// Each caller's credentials.
struct Callers {
    owner: String,
    other: String,
    revoked: String,
    cookies: [(Caller, String); 3],
    expired_tickets: std::sync::Mutex<Vec<String>>,
    /// Where the owner's webhook endpoints point.
    hook: String,
}

impl Callers {
    fn token(&self, caller: Caller) -> Option<&str> {
        match caller {
            Owner => Some(&self.owner),
            Other => Some(&self.other),
            Revoked => Some(&self.revoked),
            Anonymous | ExpiredTicket => None,
        }
    }

    fn cookie(&self, caller: Caller) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(c, _)| *c == caller)
            .map(|(_, v)| v.as_str())
    }

    fn expired_ticket(&self) -> String {
        self.expired_tickets.lock().unwrap().pop().unwrap()
    }
}

async fn final_task(server: &TestServer, item: &Value) -> String {
    let task = server.convert(item, json!({})).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(server.wait_final(&task).await["state"], "SUCCESS");
    task
}

/// Calls one route as `caller`; returns the status and the body (empty for streams).
async fn call(
    server: &TestServer,
    callers: &Callers,
    row: &Row,
    url: &str,
    caller: Caller,
) -> (u16, String) {
    let mut url = url.to_string();
    if (row.method, row.path) == ("POST", "/api/v1/tree-items") {
        url.push_str("?name=upload.tif");
    }
    if (row.method, row.path) == ("DELETE", "/api/v1/tasks") {
        url.push_str("?state=FAILURE");
    }
    let mut headers = Vec::new();
    if caller == ExpiredTicket && matches!(row.style, Style::Bearer | Style::Cookie) {
        let sep = if url.contains('?') { '&' } else { '?' };
        url = format!("{url}{sep}ticket={}", callers.expired_ticket());
    }
    match row.style {
        Style::Bearer => {
            if let Some(token) = callers.token(caller) {
                headers.push((AUTHORIZATION, format!("Bearer {token}")));
            }
        }
        Style::Cookie => {
            if let Some(cookie) = callers.cookie(caller) {
                headers.push((COOKIE, cookie.to_string()));
            }
        }
        Style::TokenInBody => {}
    }

    if row.path.ends_with("/ws") {
        let mut request = url
            .replace("http://", "ws://")
            .into_client_request()
            .unwrap();
        for (name, value) in &headers {
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        return match tokio_tungstenite::connect_async(request).await {
            Ok((_, response)) => (response.status().as_u16(), String::new()),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
                response.status().as_u16(),
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                    .into_owned(),
            ),
            Err(e) => panic!("{} {}: {e}", row.method, row.path),
        };
    }

    let mut request = server
        .http
        .request(row.method.parse::<Method>().unwrap(), &url)
        .timeout(Duration::from_secs(10));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    if row.path.starts_with("/api/v1/uploads") {
        request = request.header("Tus-Resumable", "1.0.0");
    }
    request = match (row.method, row.path) {
        ("POST", "/api/v1/tree-items") => request.body(std::fs::read(data("byte.tif")).unwrap()),
        ("POST", "/api/v1/tree-items/folders") => request.json(&json!({"name": "folder"})),
        ("POST", "/api/v1/session") => {
            let token = match caller {
                ExpiredTicket => callers.expired_ticket(),
                _ => callers.token(caller).unwrap_or_default().to_string(),
            };
            request.json(&json!({ "token": token }))
        }
        ("POST", p) if p.ends_with("/convert-to-geo-raster") => request.json(&json!({})),
        ("POST", "/api/v1/uploads") => request.header("Upload-Length", 10),
        ("POST", "/api/v1/webhooks") => {
            request.json(&json!({"url": callers.hook, "events": ["task.failed"]}))
        }
        ("PATCH", p) if p.starts_with("/api/v1/webhooks") => {
            request.json(&json!({"description": "x"}))
        }
        ("PATCH", _) => request
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Offset", 0)
            .body("01234"),
        ("POST", "/api/v1/tasks/cancel") => request.json(&json!({"state": "PENDING"})),
        _ => request,
    };
    let res = request.send().await.unwrap();
    let code = res.status().as_u16();
    let is_stream = res
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
    if is_stream {
        return (code, String::new()); // dropping the response closes the stream
    }
    let is_json = res
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("application/json"));
    let body = res.text().await.unwrap();
    if code >= 400 && row.method != "HEAD" {
        assert!(
            is_json,
            "{} {} as {caller:?}: {code} {body}",
            row.method, row.path
        );
        let detail: Value = serde_json::from_str(&body).unwrap();
        assert!(detail["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_kind_of_caller_as_the_table_says() {
    let server =
        TestServer::start_with(&["--stream-ticket-secs", "1", "--webhook-allow-private"]).await;
    let receiver = crate::webhook_receiver::Receiver::start().await;
    let doc: Value = server
        .http
        .get(server.api("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let in_table: BTreeSet<(String, String)> = TABLE
        .iter()
        .map(|r| {
            let generic = r
                .path
                .replace("{item_to_delete}", "{id}")
                .replace("{upload_to_delete}", "{id}")
                .replace("{webhook_to_delete}", "{id}")
                .replace("{cog}", "{id}")
                .replace("{webhook}", "{id}")
                .replace("{upload}", "{id}")
                .replace("{task_to_delete}", "{id}")
                .replace("{item}", "{id}")
                .replace("{task}", "{id}")
                .replace("{link}", "{token}/{name}");
            (r.method.to_string(), generic)
        })
        .collect();
    assert_eq!(
        in_table, documented,
        "the table and the OpenAPI document list different routes"
    );

    // The owner's objects, and a user whose token is revoked after signing in.
    let item = server.upload(&data("byte.tif")).await;
    let item_to_delete = server.upload(&data("byte.tif")).await;
    let task = final_task(&server, &item).await;
    let task_to_delete = final_task(&server, &item).await;
    let other = server.token_for("other").await;
    let revoked = server.token_for("revoked").await;
    let cookies = [
        (Owner, server.sign_in(&server.token).await),
        (Other, server.sign_in(&other).await),
        (Revoked, server.sign_in(&revoked).await),
    ];
    server.revoke(&revoked).await;
    let mut tickets = Vec::new();
    for _ in 0..TABLE.len() {
        let (_, ticket) = server
            .http
            .post(server.api("/stream-tickets"))
            .bearer_auth(&server.token)
            .send()
            .await
            .map(|r| (r.status(), r))
            .unwrap();
        let body: Value = ticket.json().await.unwrap();
        assert_eq!(body["expires_in"], 1);
        tickets.push(body["ticket"].as_str().unwrap().to_string());
    }
    // Wait until they have expired: tickets asked for after them expire after them, so once
    // one of those is refused, these are past their time too. Each try uses its ticket up, so
    // they are all asked for now, then tried one after another.
    let mut probes = Vec::new();
    for _ in 0..100 {
        let res = server
            .http
            .post(server.api("/stream-tickets"))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        probes.push(body["ticket"].as_str().unwrap().to_string());
    }
    let mut expired = false;
    for probe in probes {
        let res = server
            .http
            .get(format!("{}?ticket={probe}", server.api("/events")))
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::UNAUTHORIZED {
            expired = true;
            break;
        }
        assert_eq!(res.status(), StatusCode::OK);
        drop(res);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(expired, "stream tickets of 1 s never expired");
    let callers = Callers {
        owner: server.token.clone(),
        other,
        revoked,
        cookies,
        expired_tickets: std::sync::Mutex::new(tickets),
        hook: receiver.url("/hook"),
    };

    let (_, link) = server
        .link(&server.token, item["id"].as_str().unwrap(), None)
        .await;
    let link = link["url"].as_str().unwrap().to_string();
    let link = link.split("/links/").nth(1).unwrap().to_string();
    let new_upload = || async {
        let res = server
            .http
            .post(server.api("/uploads"))
            .bearer_auth(&server.token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", 10)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let location = res.headers()["location"].to_str().unwrap();
        location.rsplit('/').next().unwrap().to_string()
    };
    let upload = new_upload().await;
    let upload_to_delete = new_upload().await;
    let new_webhook = || async {
        let res = server
            .req(Method::POST, "/webhooks", &server.token)
            .json(&json!({"url": callers.hook, "events": ["task.succeeded"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.unwrap();
        body["id"].as_str().unwrap().to_string()
    };
    let webhook = new_webhook().await;
    let (_, done) = server
        .get_json(&format!("/tasks/{task}/status"), &server.token)
        .await;
    let cog = done["result"]["tree_item_id"].as_str().unwrap().to_string();
    let webhook_to_delete = new_webhook().await;
    // A delivery that has gone out, so that redelivering it is never refused as in flight.
    let res = server
        .req(
            Method::POST,
            &format!("/webhooks/{webhook}/test"),
            &server.token,
        )
        .send()
        .await
        .unwrap();
    let queued: Value = res.json().await.unwrap();
    let delivery = queued["delivery_id"].as_str().unwrap().to_string();
    crate::helpers::eventually("the test delivery", Duration::from_secs(30), || async {
        let (_, page) = server
            .get_json(&format!("/webhooks/{webhook}/deliveries"), &server.token)
            .await;
        (page["deliveries"][0]["status"] == "succeeded").then_some(())
    })
    .await;
    let ids = [
        ("{upload_to_delete}", upload_to_delete.as_str()),
        ("{webhook_to_delete}", webhook_to_delete.as_str()),
        ("{webhook}", webhook.as_str()),
        ("{cog}", cog.as_str()),
        ("{z}", "8"),
        ("{x}", "72"),
        ("{y}", "109.png"),
        ("{lon_lat}", "-117.64,33.9"),
        ("{delivery}", delivery.as_str()),
        ("{upload}", upload.as_str()),
        ("{link}", link.as_str()),
        ("{item_to_delete}", item_to_delete["id"].as_str().unwrap()),
        ("{task_to_delete}", task_to_delete.as_str()),
        ("{item}", item["id"].as_str().unwrap()),
        ("{task}", task.as_str()),
    ];
    let owner_item_ids = [
        item["id"].as_str().unwrap(),
        item_to_delete["id"].as_str().unwrap(),
    ];
    let mut wrong = Vec::new();
    for row in TABLE {
        let mut path = row.path.to_string();
        for (placeholder, id) in ids {
            path = path.replace(placeholder, id);
        }
        let url = format!("{}{path}", server.url);
        for (caller, expected) in CALLERS.iter().zip(row.codes) {
            let (code, body) = call(&server, &callers, row, &url, *caller).await;
            if code != expected {
                wrong.push(format!(
                    "{} {} as {caller:?}: {code}, table says {expected} ({body})",
                    row.method, row.path
                ));
            }
            // A status by capability shows the task, including the item it converts.
            if *caller != Owner && !row.path.ends_with("{task}/status") {
                for id in owner_item_ids {
                    assert!(
                        !body.contains(id),
                        "{} {} as {caller:?} shows the owner's item {id}",
                        row.method,
                        row.path
                    );
                }
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}
