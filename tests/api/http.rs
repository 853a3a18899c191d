//! The HTTP surface: Range downloads, limits, and `{"detail"}` on every error.

use reqwest::{header, Method, StatusCode};
use serde_json::json;

use crate::helpers::{data, json_of, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_supports_range_etag_and_head() {
    let server = TestServer::start().await;
    let original = std::fs::read(data("RGB.byte.tif")).unwrap();
    let item = server.upload(&data("RGB.byte.tif")).await;
    let path = format!("/tree-items/{}/content", item["id"].as_str().unwrap());

    let full = server
        .req(Method::GET, &path, &server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), StatusCode::OK);
    assert_eq!(full.headers()[header::ACCEPT_RANGES], "bytes");
    let etag = full.headers()[header::ETAG].to_str().unwrap().to_string();
    assert_eq!(full.bytes().await.unwrap(), original);

    let part = server
        .req(Method::GET, &path, &server.token)
        .header(header::RANGE, "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()[header::CONTENT_RANGE],
        format!("bytes 100-199/{}", original.len())
    );
    assert_eq!(part.bytes().await.unwrap(), &original[100..200]);

    let tail = server
        .req(Method::GET, &path, &server.token)
        .header(header::RANGE, "bytes=-16")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        tail.bytes().await.unwrap(),
        &original[original.len() - 16..]
    );

    let beyond = server
        .req(Method::GET, &path, &server.token)
        .header(header::RANGE, format!("bytes={}-", original.len() + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(
        beyond.headers()[header::CONTENT_RANGE],
        format!("bytes */{}", original.len())
    );
    let (code, _) = json_of(beyond).await;
    assert_eq!(code, StatusCode::RANGE_NOT_SATISFIABLE);

    let cached = server
        .req(Method::GET, &path, &server.token)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

    let stale_if_range = server
        .req(Method::GET, &path, &server.token)
        .header(header::RANGE, "bytes=0-9")
        .header(header::IF_RANGE, "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(
        stale_if_range.status(),
        StatusCode::OK,
        "If-Range mismatch sends the whole file"
    );

    // Uploaded bytes are never sniffed or run as a page of this origin.
    let res = server
        .req(Method::GET, &path, &server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert!(res.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("sandbox"));

    let head = server
        .req(Method::HEAD, &path, &server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        original.len().to_string()
    );
    assert!(head.bytes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_limit_get_413_and_leave_nothing() {
    let server = TestServer::start_with(&["--max-upload-bytes", "100000"]).await;
    let big = std::fs::read(data("RGB.byte.tif")).unwrap();

    // Declared too large: refused from the headers, before a byte of body is read. (A raw
    // socket, because an HTTP client still sending the body may see the connection close
    // before it reads the answer.)
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/tree-items?name=big.tif HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 10000000\r\n\r\n",
        server.token
    );
    tokio::io::AsyncWriteExt::write_all(&mut socket, head.as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::io::AsyncReadExt::read(&mut socket, &mut answer)
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"detail\""), "{answer}");

    // Bodies that cross the limit while streaming (no length declared): raw, and multipart.
    let raw = format!(
        "POST /api/v1/tree-items?name=big.tif HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        server.token
    );
    over_the_limit(&addr, raw, big.clone(), 100_000).await;
    let boundary = "rastercast-test-boundary";
    let mut multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.tif\"\r\nContent-Type: image/tiff\r\n\r\n"
    )
    .into_bytes();
    multipart.extend_from_slice(&big);
    multipart.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let head = format!(
        "POST /api/v1/tree-items HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n",
        server.token
    );
    over_the_limit(&addr, head, multipart, 100_000).await;

    let (_, items) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(items, json!([]));
    assert!(server.tmp_files().is_empty(), "{:?}", server.tmp_files());
    assert!(server.blob_files().is_empty());

    // A small file still goes through.
    server.upload(&data("byte.tif")).await;
}

/// Sends `head` then `body` in chunks (chunked encoding) while reading the answer, which must
/// be a 413 with its sentence. A server that refuses mid-body may reset the connection before
/// the answer is read; then the reset must have come after the limit was sent.
async fn over_the_limit(addr: &str, head: String, body: Vec<u8>, limit: usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = socket.into_split();
    let sent = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(16 * 1024) {
            write
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            write.write_all(chunk).await?;
            write.write_all(b"\r\n").await?;
            counted.fetch_add(chunk.len(), Ordering::Relaxed);
        }
        write.write_all(b"0\r\n\r\n").await
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.ends_with(b"}") {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), read_all)
        .await
        .expect("answered or closed");
    writer.abort();
    let answer = String::from_utf8_lossy(&answer).to_string();
    if answer.is_empty() {
        let sent = sent.load(Ordering::Relaxed);
        assert!(
            sent > limit,
            "reset after only {sent} bytes, under the limit"
        );
    } else {
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(
            answer.contains(&format!("larger than the limit of {limit} bytes")),
            "{answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_with_a_detail() {
    let server = TestServer::start().await;
    let t = server.token.clone();
    let item = server.upload(&data("byte.tif")).await;
    let item_path = format!("/tree-items/{}", item["id"].as_str().unwrap());
    let convert_path = format!("{item_path}/convert-to-geo-raster");

    let cases: Vec<(reqwest::RequestBuilder, StatusCode)> = vec![
        (
            server.http.get(server.api("/tree-items")),
            StatusCode::UNAUTHORIZED,
        ),
        (
            server.req(Method::GET, "/tree-items", "rc_nope_nope"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            server
                .http
                .get(server.api("/tree-items"))
                .header("Authorization", "Basic YTpi"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            server.req(Method::GET, "/tree-items/not-a-uuid", &t),
            StatusCode::BAD_REQUEST,
        ),
        (
            server.http.get(server.api("/tasks/not-a-uuid/status")),
            StatusCode::BAD_REQUEST,
        ),
        (
            server
                .http
                .get(server.api(&format!("/tasks/{}/status", uuid_v4()))),
            StatusCode::NOT_FOUND,
        ),
        (
            server.req(Method::GET, "/no/such/route", &t),
            StatusCode::NOT_FOUND,
        ),
        (
            server.http.get(format!("{}/nothing-here", server.url)),
            StatusCode::NOT_FOUND,
        ),
        (
            server.req(Method::PUT, "/tree-items", &t),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            server
                .req(Method::POST, "/tree-items/folders", &t)
                .header("content-type", "application/json")
                .body("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            server
                .req(Method::POST, "/tree-items/folders", &t)
                .body("name=x"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            server
                .req(Method::POST, "/tree-items/folders", &t)
                .json(&json!({"name": 5})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            server
                .req(Method::POST, "/tree-items/folders", &t)
                .json(&json!({"name": "a", "parent_id": uuid_v4()})),
            StatusCode::NOT_FOUND,
        ),
        (
            server
                .req(Method::POST, "/tree-items", &t)
                .body("raw bytes without a name"),
            StatusCode::BAD_REQUEST,
        ),
        (
            server
                .req(Method::POST, &convert_path, &t)
                .json(&json!({"compression": "gzip"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            server
                .req(Method::POST, &convert_path, &t)
                .json(&json!({"target_crs": "/etc/passwd"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            // Well-formed, but no such code: a worker asks GDAL, the answer is still a 422.
            server
                .req(Method::POST, &convert_path, &t)
                .json(&json!({"target_crs": "EPSG:99999999"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            server
                .req(Method::POST, &convert_path, &t)
                .json(&json!({"bogus": 1})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            server
                .req(Method::POST, &convert_path, &t)
                .header("content-type", "application/json")
                .body("{"),
            StatusCode::BAD_REQUEST,
        ),
        (
            server
                .req(Method::POST, &convert_path, &t)
                .header("content-type", "text/plain")
                .body("x"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            server.req(Method::GET, "/tasks?state=DONE", &t),
            StatusCode::BAD_REQUEST,
        ),
        (
            server.req(Method::GET, "/tasks?limit=0", &t),
            StatusCode::BAD_REQUEST,
        ),
        (
            server.req(Method::POST, &format!("/tasks/{}/cancel", uuid_v4()), &t),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (request, expected) in cases {
        let request = request.build().unwrap();
        let label = format!("{} {}", request.method(), request.url().path());
        let res = server.http.execute(request).await.unwrap();
        if expected == StatusCode::UNAUTHORIZED {
            assert_eq!(res.headers()[header::WWW_AUTHENTICATE], "Bearer", "{label}");
        }
        let (code, body) = json_of(res).await;
        assert_eq!(code, expected, "{label}: {body}");
    }

    // A finished task cannot be cancelled again: 409.
    let started = server.convert(&item, json!({})).await;
    let task_id = started["task_id"].as_str().unwrap();
    server.wait_final(task_id).await;
    let res = server
        .req(Method::POST, &format!("/tasks/{task_id}/cancel"), &t)
        .send()
        .await
        .unwrap();
    let (code, _) = json_of(res).await;
    assert_eq!(code, StatusCode::CONFLICT);
}

fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_to_disk_without_buffering() {
    let server = TestServer::start().await;
    let size: usize = 256 << 20;
    let chunk = vec![7u8; 1 << 20];
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..size >> 20).map(|_| Ok(chunk.clone())).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let res = server
        .req(Method::POST, "/tree-items?name=zeros.bin", &server.token)
        .body(body)
        .send()
        .await
        .unwrap();
    let (code, item) = json_of(res).await;
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(item["size"], size);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        peak_kib < 128 * 1024,
        "a 256 MiB upload peaked at {peak_kib} KiB of memory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_uploads_take_a_parent_id_part() {
    let server = TestServer::start().await;
    let (_, folder) =
        crate::conversion::json_post(&server, "/tree-items/folders", json!({"name": "in"})).await;
    let form = reqwest::multipart::Form::new()
        .text("parent_id", folder["id"].as_str().unwrap().to_string())
        .part(
            "file",
            reqwest::multipart::Part::bytes(std::fs::read(data("byte.tif")).unwrap())
                .file_name("C:\\fakepath\\byte.tif")
                .mime_str("image/tiff")
                .unwrap(),
        );
    let res = server
        .req(Method::POST, "/tree-items", &server.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (code, item) = json_of(res).await;
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(item["parent_id"], folder["id"]);
    assert_eq!(item["name"], "byte.tif");
    assert_eq!(item["content_type"], "image/tiff");

    let form = reqwest::multipart::Form::new()
        .text("parent_id", "not-a-uuid")
        .part(
            "file",
            reqwest::multipart::Part::bytes(vec![1, 2, 3]).file_name("x.tif"),
        );
    let res = server
        .req(Method::POST, "/tree-items", &server.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(res).await.0, StatusCode::BAD_REQUEST);
    let form = reqwest::multipart::Form::new().text("other", "x");
    let res = server
        .req(Method::POST, "/tree-items", &server.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(res).await.0, StatusCode::BAD_REQUEST);
    assert!(server.tmp_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_tasks_queue_durations_bytes_connections_events_and_requests() {
    let server = TestServer::start().await;
    let status = server.convert_file(&data("byte.tif"), json!({})).await;
    let item = status["result"]["tree_item_id"].as_str().unwrap();
    server
        .wait_metric(
            "rastercast_conversion_seconds_count{outcome=\"success\"}",
            1.0,
        )
        .await;
    server
        .req(
            Method::GET,
            &format!("/tree-items/{item}/content"),
            &server.token,
        )
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let feed = server
        .req(Method::GET, "/events", &server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), StatusCode::OK);

    let res = server
        .http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    for expected in [
        "rastercast_tasks{state=\"SUCCESS\"} 1",
        "rastercast_tasks{state=\"PENDING\"} 0",
        "rastercast_queue_depth 0",
        "rastercast_conversion_seconds_count{outcome=\"success\"} 1",
        "rastercast_conversion_seconds_bucket{le=",
        "rastercast_upload_bytes_total 736",
        "rastercast_download_bytes_total",
        "rastercast_output_bytes_total",
        "rastercast_sse_connections 1",
        "rastercast_websocket_connections 0",
        "rastercast_events_published_total",
        "rastercast_events_coalesced_total",
        "rastercast_events_lag_resyncs_total 0",
        "rastercast_http_requests_total{method=\"GET\",route=\"/api/v1/tasks/{id}/status\",status=\"200\"}",
        "rastercast_http_requests_total{method=\"POST\",route=\"/api/v1/tree-items\",status=\"201\"} 1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    drop(feed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_route() {
    let server = TestServer::start().await;
    let res = server
        .http
        .get(server.api("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let doc: serde_json::Value = res.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    // Every reference resolves (a `value_type` of a parameter is not registered by itself).
    let text = doc.to_string();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = &reference[..reference.find('"').unwrap()];
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "#/components/schemas/{name} is referred to but not in the document"
        );
    }

    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    // Every route the server answers, as the router declares them.
    let routes = [
        ("GET", "/api/v1/tree-items"),
        ("POST", "/api/v1/tree-items"),
        ("POST", "/api/v1/tree-items/folders"),
        ("GET", "/api/v1/tree-items/{id}"),
        ("DELETE", "/api/v1/tree-items/{id}"),
        ("GET", "/api/v1/tree-items/{id}/content"),
        (
            "GET",
            "/api/v1/tree-items/{id}/tiles/WebMercatorQuad/{z}/{x}/{y}",
        ),
        (
            "GET",
            "/api/v1/tree-items/{id}/WebMercatorQuad/tilejson.json",
        ),
        ("GET", "/api/v1/tree-items/{id}/info"),
        ("GET", "/api/v1/tree-items/{id}/statistics"),
        ("GET", "/api/v1/tree-items/{id}/stac"),
        ("GET", "/api/v1/tree-items/{id}/preview.png"),
        ("GET", "/api/v1/tree-items/{id}/point/{lon_lat}"),
        ("GET", "/api/v1/tree-items/{id}/WMTSCapabilities.xml"),
        ("POST", "/api/v1/tree-items/{id}/convert-to-geo-raster"),
        ("GET", "/api/v1/tasks"),
        ("GET", "/api/v1/tasks/{id}/status"),
        ("POST", "/api/v1/tasks/{id}/cancel"),
        ("POST", "/api/v1/tasks/{id}/retry"),
        ("POST", "/api/v1/tree-items/{id}/links"),
        ("GET", "/api/v1/links/{token}/{name}"),
        ("POST", "/api/v1/tasks/cancel"),
        ("DELETE", "/api/v1/tasks"),
        ("DELETE", "/api/v1/tasks/{id}"),
        ("GET", "/api/v1/tasks/{id}/events"),
        ("GET", "/api/v1/events"),
        ("GET", "/api/v1/ws"),
        ("POST", "/api/v1/stream-tickets"),
        ("POST", "/api/v1/session"),
        ("GET", "/api/v1/session"),
        ("DELETE", "/api/v1/session"),
        ("GET", "/api/v1/openapi.json"),
        ("OPTIONS", "/api/v1/uploads"),
        ("POST", "/api/v1/uploads"),
        ("GET", "/api/v1/uploads"),
        ("HEAD", "/api/v1/uploads/{id}"),
        ("PATCH", "/api/v1/uploads/{id}"),
        ("DELETE", "/api/v1/uploads/{id}"),
        ("GET", "/api/v1/uploads/{id}"),
        ("POST", "/api/v1/webhooks"),
        ("GET", "/api/v1/webhooks"),
        ("GET", "/api/v1/webhooks/{id}"),
        ("PATCH", "/api/v1/webhooks/{id}"),
        ("DELETE", "/api/v1/webhooks/{id}"),
        ("POST", "/api/v1/webhooks/{id}/rotate-secret"),
        ("POST", "/api/v1/webhooks/{id}/test"),
        ("GET", "/api/v1/webhooks/{id}/deliveries"),
        (
            "POST",
            "/api/v1/webhooks/{id}/deliveries/{delivery}/redeliver",
        ),
        ("GET", "/api/v1/webhooks/callback-secret"),
        ("POST", "/api/v1/webhooks/callback-secret/rotate"),
        ("GET", "/api/v1/tasks/{id}/deliveries"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
    ];
    let expected: std::collections::BTreeSet<(String, String)> = routes
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);

    // And each documented operation is a real route (never the router's 404 or 405).
    for (method, path) in &documented {
        let url = format!(
            "{}{}",
            server.url,
            path.replace("{id}", &uuid::Uuid::new_v4().to_string())
        );
        let res = server
            .http
            .request(method.parse().unwrap(), &url)
            .timeout(std::time::Duration::from_secs(2))
            .send()
            .await;
        let Ok(res) = res else { continue }; // a stream that stays open is a route too
        assert_ne!(
            res.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        if res.status() == StatusCode::NOT_FOUND {
            let body: serde_json::Value = res.json().await.unwrap();
            assert_ne!(
                body["code"], "route_not_found",
                "{method} {path} is documented but not routed"
            );
        }
    }
    // Every error body is the documented ErrorBody.
    assert!(doc["components"]["schemas"]["ErrorBody"]["properties"]["detail"].is_object());
}

/// A client that goes away half-way through an upload, raw or multipart, leaves no item and no
/// bytes on disk, and the server carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_half_way_leaves_nothing() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let half = vec![0x49u8; 256 * 1024];
    let boundary = "cut-off-boundary";
    let uploads = [
        (
            "/api/v1/tree-items?name=raw.tif".to_string(),
            "application/octet-stream".to_string(),
            Vec::new(),
        ),
        (
            "/api/v1/tree-items".to_string(),
            format!("multipart/form-data; boundary={boundary}"),
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"multi.tif\"\r\nContent-Type: image/tiff\r\n\r\n"
            )
            .into_bytes(),
        ),
    ];
    for (path, content_type, preamble) in uploads {
        let before = server.tmp_files();
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            server.token,
            preamble.len() + 2 * half.len(),
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&preamble).await.unwrap();
        stream.write_all(&half).await.unwrap();
        stream.flush().await.unwrap();
        // Let the server start writing the upload to tmp/ before the client vanishes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !server.tmp_files().iter().any(|f| !before.contains(f)) {
            assert!(
                std::time::Instant::now() < deadline,
                "the upload is under way in tmp/: {path}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(stream);
    }

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.tmp_files().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(server.tmp_files().is_empty(), "{:?}", server.tmp_files());
    assert!(server.blob_files().is_empty(), "{:?}", server.blob_files());
    let (status, items) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(items, json!([]), "no item from a cut-off upload");
    // The server still takes a whole upload.
    let item = server.upload(&data("byte.tif")).await;
    assert_eq!(item["name"], "byte.tif");
}

/// Per-user limits answer 429 with a `detail` and `Retry-After`, and free up as work ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limits_answer_429_and_free_up() {
    let server = TestServer::start_with(&[
        "--max-active-tasks-per-user",
        "2",
        "--max-streams-per-user",
        "2",
        "--workers",
        "1",
    ])
    .await;
    let item = server.upload(&data("byte.tif")).await;
    let convert_path = format!(
        "/tree-items/{}/convert-to-geo-raster",
        item["id"].as_str().unwrap()
    );

    // Streams: two open feeds, the third is refused, and closing one frees its place.
    let first = server
        .req(Method::GET, "/events", &server.token)
        .send()
        .await
        .unwrap();
    let second = server
        .req(Method::GET, "/events", &server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let third = server
        .req(Method::GET, "/events", &server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers().contains_key(header::RETRY_AFTER));
    let (_, body) = json_of(third).await;
    assert!(
        body["detail"].as_str().unwrap().contains("limit is 2"),
        "{body}"
    );
    // Another user has places of their own.
    let other = server.token_for("other").await;
    let theirs = server
        .req(Method::GET, "/events", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::OK);
    drop(first);
    let mut reopened = StatusCode::TOO_MANY_REQUESTS;
    for _ in 0..50 {
        let res = server
            .req(Method::GET, "/events", &server.token)
            .send()
            .await
            .unwrap();
        reopened = res.status();
        if reopened == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(reopened, StatusCode::OK, "a closed stream frees its place");

    // Tasks: a long one running and one queued fill the two places; a third is 429.
    let big = server.upload(&crate::lifecycle::big_raster()).await;
    let running = server
        .convert(&big, json!({"overview_resampling": "lanczos"}))
        .await;
    let queued = server.convert(&item, json!({})).await;
    let res = server
        .req(Method::POST, &convert_path, &server.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key(header::RETRY_AFTER));
    let (_, body) = json_of(res).await;
    assert_eq!(body["code"], "too_many_requests", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("queued or running"),
        "{body}"
    );
    let running = running["task_id"].as_str().unwrap();
    server
        .req(
            Method::POST,
            &format!("/tasks/{running}/cancel"),
            &server.token,
        )
        .send()
        .await
        .unwrap();
    server.wait_final(running).await;
    server.wait_final(queued["task_id"].as_str().unwrap()).await;
    let again = server
        .req(Method::POST, &convert_path, &server.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "finished tasks free their places"
    );
}

/// A client that sends its headers a byte at a time (slowloris) is disconnected once the
/// header deadline passes, and the server keeps answering everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_with_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(&["--header-timeout-secs", "1"]).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            // Keep trickling header bytes; the server must still hang up.
            if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
                return;
            }
            match tokio::time::timeout(std::time::Duration::from_millis(200), slow.read(&mut buf))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {} // a 408 before the close is fine
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow client was never disconnected");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(server.healthz().await, StatusCode::OK);
}

/// A user over the request rate gets 429s with a `Retry-After`, other users do not notice, and
/// after the wait the user is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_the_request_rate_gets_429_and_others_do_not() {
    let server = TestServer::start_with(&["--max-requests-per-second-per-user", "5"]).await;
    let other = server.token_for("other").await;
    let mut refused = None;
    // The bucket holds four seconds' worth (20); 60 at once empty it.
    for _ in 0..60 {
        let res = server
            .req(Method::GET, "/tree-items", &server.token)
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let (_, body) = json_of(res).await;
            assert_eq!(body["code"], "too_many_requests");
            refused = Some(retry);
            break;
        }
        assert_eq!(res.status(), StatusCode::OK);
    }
    let retry = refused.expect("the rate limit answered 429");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let (code, _) = server.get_json("/tree-items", &other).await;
    assert_eq!(code, StatusCode::OK, "another user is not limited");
    tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
    let (code, _) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(code, StatusCode::OK, "served again after Retry-After");
}

/// Oversized headers are a 431 with a sentence, and the server carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_with_a_detail() {
    let server = TestServer::start().await;
    let res = server
        .req(Method::GET, "/tree-items", &server.token)
        .header("x-padding", "a".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let (_, body) = json_of(res).await;
    assert_eq!(body["code"], "headers_too_large");
    let (code, _) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(code, StatusCode::OK);
}

/// A body that stops arriving half-way is answered 408 once the body timeout passes: an upload
/// (raw and multipart) and a JSON body. Nothing is stored and the server carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408_and_stores_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(&["--body-timeout-secs", "1"]).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let boundary = "stalled-boundary";
    let requests = [
        ("/api/v1/tree-items?name=raw.tif", "application/octet-stream".to_string(), vec![0x49u8; 64 * 1024]),
        (
            "/api/v1/tree-items",
            format!("multipart/form-data; boundary={boundary}"),
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.tif\"\r\n\r\nII*\0")
                .into_bytes(),
        ),
        ("/api/v1/tree-items/folders", "application/json".to_string(), b"{\"name\": \"hal".to_vec()),
    ];
    for (path, content_type, part) in requests {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            server.token,
            part.len() + 100_000,
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&part).await.unwrap();
        // ... and nothing more.
        let mut response = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut response),
        )
        .await;
        assert!(read.is_ok(), "{path}: no answer to a stalled body");
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        assert!(
            text.contains("\"code\":\"request_timeout\""),
            "{path}: {text}"
        );
    }
    assert!(server.tmp_files().is_empty());
    assert!(server.blob_files().is_empty());
    let (_, items) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(items, serde_json::json!([]));
}

/// The protocol is told from the first bytes, left unread: HTTP/2 with prior knowledge is
/// served as HTTP/2, and an HTTP/1 request whose first byte could begin the HTTP/2 preface
/// ("P" of "PUT") is still served as HTTP/1 when the rest comes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_and_http1_are_told_apart() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let answer = h2
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);

    let addr = server.url.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    socket.write_all(b"P").await.unwrap();
    // A client whose request arrives in two parts (the server sees "P" alone first).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let rest = format!("UT /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    socket.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
}
