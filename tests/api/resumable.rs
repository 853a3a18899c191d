//! Resumable uploads (tus 1.0.0 at `/api/v1/uploads`): the reference client `tuspy` cut off
//! at random offsets and across a SIGKILL of the server, and every rule of the protocol the
//! server states (checksums, owners, expiry, limits, deferred length, termination).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use rand::Rng;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use sha2::Digest;

use crate::helpers::{
    data, download, eventually, files_in, sha256_of, unfinished_uploads, TestBucket, TestDatabase,
    TestServer, Trip, Tripwire,
};

const CHUNK_TYPE: &str = "application/offset+octet-stream";

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A file of `mib` MiB of random bytes.
fn random_file(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let path = dir.join(name);
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {} /dev/urandom > '{}'",
            mib << 20,
            path.display()
        ))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    path
}

/// A tus client by hand, for the protocol's edge cases.
struct Tus<'a> {
    server: &'a TestServer,
    token: String,
}

impl<'a> Tus<'a> {
    fn new(server: &'a TestServer) -> Tus<'a> {
        Tus {
            server,
            token: server.token.clone(),
        }
    }

    fn as_user(server: &'a TestServer, token: String) -> Tus<'a> {
        Tus { server, token }
    }

    fn req(&self, method: Method, location: &str) -> RequestBuilder {
        self.server
            .http
            .request(method, format!("{}{location}", self.server.url))
            .bearer_auth(&self.token)
            .header("Tus-Resumable", "1.0.0")
            .timeout(Duration::from_secs(60))
    }

    /// Creates an upload; the `Location`, or the refusal.
    async fn try_create(
        &self,
        length: Option<u64>,
        metadata: &[(&str, &str)],
    ) -> Result<String, (StatusCode, Value)> {
        let metadata = metadata
            .iter()
            .map(|(k, v)| format!("{k} {}", b64(v)))
            .collect::<Vec<_>>()
            .join(",");
        let mut req = self
            .req(Method::POST, "/api/v1/uploads")
            .header("Upload-Metadata", metadata);
        req = match length {
            Some(n) => req.header("Upload-Length", n),
            None => req.header("Upload-Defer-Length", "1"),
        };
        let res = req.send().await.unwrap();
        assert_eq!(res.headers()["tus-resumable"], "1.0.0");
        if res.status() != StatusCode::CREATED {
            let status = res.status();
            return Err((status, res.json().await.unwrap()));
        }
        Ok(res.headers()["location"].to_str().unwrap().to_string())
    }

    async fn create(&self, length: Option<u64>, metadata: &[(&str, &str)]) -> String {
        self.try_create(length, metadata).await.expect("created")
    }

    async fn patch(&self, location: &str, offset: u64, bytes: Vec<u8>) -> Response {
        self.patch_with(location, offset, bytes, &[]).await
    }

    async fn patch_with(
        &self,
        location: &str,
        offset: u64,
        bytes: Vec<u8>,
        headers: &[(&str, String)],
    ) -> Response {
        let mut req = self
            .req(Method::PATCH, location)
            .header("Content-Type", CHUNK_TYPE)
            .header("Upload-Offset", offset);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        req.body(bytes).send().await.unwrap()
    }

    async fn head(&self, location: &str) -> Response {
        self.req(Method::HEAD, location).send().await.unwrap()
    }

    async fn offset(&self, location: &str) -> u64 {
        let res = self.head(location).await;
        assert_eq!(res.status(), StatusCode::OK);
        header_u64(&res, "upload-offset")
    }

    async fn state(&self, location: &str) -> Value {
        let res = self
            .server
            .http
            .get(format!("{}{location}", self.server.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }
}

fn header_u64(res: &Response, name: &str) -> u64 {
    res.headers()[name].to_str().unwrap().parse().unwrap()
}

async fn detail(res: Response) -> (StatusCode, String) {
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    (status, body["detail"].as_str().unwrap().to_string())
}

/// Chunk blobs and the item blobs, as files in the data dir.
fn blobs(server: &TestServer) -> usize {
    server.blob_files().len()
}

// ---------------------------------------------------------------------------------------------
// The reference client, cut off and killed.

/// Runs the reference client (tuspy) once; its exit code and output.
async fn tuspy(
    url: &str,
    token: &str,
    file: &Path,
    state: &Path,
    chunk: u64,
    checksum: bool,
) -> (Option<i32>, String) {
    let python = crate::helpers::test_python();
    let mut command = tokio::process::Command::new(python);
    command
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tus/client.py"))
        .args([url, token])
        .arg(file)
        .arg(state)
        .arg(chunk.to_string())
        .kill_on_drop(true);
    if checksum {
        command.arg("checksum");
    }
    let out = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("the client ends")
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// Where the client said it started from.
fn started_at(output: &str) -> u64 {
    output
        .lines()
        .find_map(|l| l.strip_prefix("start "))
        .unwrap_or_else(|| panic!("no start line in {output}"))
        .trim()
        .parse()
        .unwrap()
}

/// The one unfinished upload's offset, read straight from the server.
async fn unfinished_offset(server: &TestServer) -> Option<u64> {
    unfinished_uploads(server)
        .await
        .first()
        .map(|u| u["offset"].as_u64().unwrap())
}

/// Size of the proof, in MiB: `RASTERCAST_TUS_PROOF_MIB`, 1 GiB unless set.
fn proof_mib() -> u64 {
    std::env::var("RASTERCAST_TUS_PROOF_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[tokio::test]
async fn the_reference_client_resumes_after_random_cuts_and_a_sigkill_bit_exact() {
    let mut server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mib = proof_mib();
    let file = random_file(dir.path(), "big.bin", mib);
    let size = mib << 20;
    let state = dir.path().join("tus-urls.json");
    let wire = Tripwire::to(&server.url).await;
    let chunk = 8 << 20;
    let mut rng = rand::thread_rng();
    let mut acknowledged = 0;

    // Three cuts at random bytes, each somewhere in the next fifth of the file: mid-chunk,
    // mid-request, wherever the byte falls.
    for round in 0..3 {
        wire.arm(rng.gen_range(1 << 20..size / 5), Trip::Cut);
        let (code, out) = tuspy(&wire.url(), &server.token, &file, &state, chunk, false).await;
        assert_eq!(code, Some(3), "round {round} is cut off: {out}");
        if round > 0 {
            assert_eq!(
                started_at(&out),
                acknowledged,
                "resumed where the server was"
            );
        }
        // The bytes that arrived before the cut are kept, and the next HEAD counts them.
        let offset = Tus::new(&server)
            .offset(&format!(
                "/api/v1/uploads/{}",
                unfinished_upload_id(&server).await
            ))
            .await;
        assert!(offset > acknowledged, "round {round} kept what arrived");
        // The cut fell inside a chunk (headers are a few hundred of its 8 MiB): its first
        // part was kept too, so the offset is off the chunks' edges.
        assert_ne!(
            offset % chunk,
            0,
            "round {round} kept the cut request's bytes"
        );
        assert!(offset <= wire.sent());
        acknowledged = offset;
    }

    // The link goes silent mid-request, and the server is killed while it waits for bytes.
    wire.arm(rng.gen_range(1 << 20..size / 5), Trip::Hold);
    let client = tokio::spawn({
        let (url, token, file, state) = (
            wire.url(),
            server.token.clone(),
            file.clone(),
            state.clone(),
        );
        async move { tuspy(&url, &token, &file, &state, chunk, false).await }
    });
    eventually(
        "the held request to reach the wire's end",
        Duration::from_secs(60),
        || async { wire.held().then_some(()) },
    )
    .await;
    // Chunks before the held one were acknowledged; the held one's bytes never were.
    acknowledged = unfinished_offset(&server).await.unwrap();
    assert!(acknowledged < wire.sent());
    server.stop(libc::SIGKILL).await;
    let (code, out) = client.await.unwrap();
    assert_eq!(code, Some(3), "the client loses the killed server: {out}");
    server.restart().await;
    wire.retarget(&server.url);
    assert_eq!(
        unfinished_offset(&server).await,
        Some(acknowledged),
        "a SIGKILL loses only bytes that were never acknowledged"
    );

    // The last run goes through.
    wire.open();
    let (code, out) = tuspy(&wire.url(), &server.token, &file, &state, chunk, false).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(started_at(&out), acknowledged);
    let location = out
        .lines()
        .find_map(|l| l.strip_prefix("done "))
        .unwrap()
        .trim()
        .replace(&wire.url(), "");
    let upload = Tus::new(&server).state(&location).await;
    assert_eq!(upload["complete"], true);
    assert_eq!(upload["offset"], size);
    let item = upload["tree_item_id"].as_str().unwrap();
    let copy = download(&server, item).await;
    assert_eq!(sha256_of(copy.path()), sha256_of(&file), "bit-exact");
    let (_, listed) = server
        .get_json(&format!("/tree-items/{item}"), &server.token)
        .await;
    assert_eq!(listed["name"], "big.bin");
    assert_eq!(listed["size"], size);
    // The chunks are gone: only the item's file is left, and no scratch.
    assert_eq!(blobs(&server), 1, "{:?}", server.blob_files());
    assert!(server.tmp_files().is_empty(), "{:?}", server.tmp_files());
}

async fn unfinished_upload_id(server: &TestServer) -> String {
    unfinished_uploads(server).await[0]["id"]
        .as_str()
        .expect("an unfinished upload")
        .to_string()
}

#[tokio::test]
async fn the_reference_client_with_checksums_and_a_restart_by_sigterm() {
    let mut server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "sums.bin", 6);
    let state = dir.path().join("urls.json");
    let wire = Tripwire::to(&server.url).await;
    // A chunk cut off with a checksum is discarded whole: the offset stays on a chunk's edge.
    wire.arm((2 << 20) + 12345, Trip::Cut);
    let (code, out) = tuspy(&wire.url(), &server.token, &file, &state, 1 << 20, true).await;
    assert_eq!(code, Some(3), "{out}");
    let offset = unfinished_offset(&server).await.unwrap();
    assert_eq!(
        offset % (1 << 20),
        0,
        "no part of a checksummed chunk is kept"
    );
    assert!(offset >= 1 << 20);
    server.stop(libc::SIGTERM).await;
    server.restart().await;
    wire.retarget(&server.url);
    wire.open();
    let (code, out) = tuspy(&wire.url(), &server.token, &file, &state, 1 << 20, true).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(started_at(&out), offset);
    let (_, items) = server.get_json("/tree-items", &server.token).await;
    let item = items[0]["id"].as_str().unwrap();
    let copy = download(&server, item).await;
    assert_eq!(sha256_of(copy.path()), sha256_of(&file));
}

// ---------------------------------------------------------------------------------------------
// The protocol, rule by rule.

#[tokio::test]
async fn options_advertise_the_version_extensions_limit_and_checksums() {
    let server = TestServer::start_with(&["--max-upload-bytes", "123456789"]).await;
    let res = server
        .http
        .request(Method::OPTIONS, server.api("/uploads"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let h = res.headers();
    assert_eq!(h["tus-resumable"], "1.0.0");
    assert_eq!(h["tus-version"], "1.0.0");
    assert_eq!(h["tus-max-size"], "123456789");
    assert_eq!(h["tus-checksum-algorithm"], "sha1,sha256");
    let extensions: Vec<&str> = h["tus-extension"].to_str().unwrap().split(',').collect();
    for wanted in [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "checksum",
        "expiration",
    ] {
        assert!(extensions.contains(&wanted), "{wanted} in {extensions:?}");
    }
}

#[tokio::test]
async fn an_upload_becomes_the_same_item_as_a_plain_upload_and_can_start_its_conversion() {
    let server = TestServer::start().await;
    let tus = Tus::new(&server);
    let bytes = std::fs::read(data("RGB.byte.tif")).unwrap();
    let location = tus
        .create(
            Some(bytes.len() as u64),
            &[
                ("filename", "RGB.byte.tif"),
                ("convert", r#"{"compression": "zstd"}"#),
            ],
        )
        .await;
    assert!(location.starts_with("/api/v1/uploads/"), "{location}");
    let head = tus.head(&location).await;
    assert_eq!(head.headers()["cache-control"], "no-store");
    assert_eq!(header_u64(&head, "upload-length"), bytes.len() as u64);
    assert!(head.headers().contains_key("upload-expires"));
    let split = 700_000;
    let res = tus.patch(&location, 0, bytes[..split].to_vec()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_u64(&res, "upload-offset"), split as u64);
    assert!(!res.headers().contains_key("upload-item-id"));
    let res = tus
        .patch(&location, split as u64, bytes[split..].to_vec())
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_u64(&res, "upload-offset"), bytes.len() as u64);
    let item_id = res.headers()["upload-item-id"]
        .to_str()
        .unwrap()
        .to_string();
    let task_id = res.headers()["upload-task-id"]
        .to_str()
        .unwrap()
        .to_string();
    // HEAD says the same once complete, and the JSON state links both.
    let head = tus.head(&location).await;
    assert_eq!(head.headers()["upload-item-id"], item_id.as_str());
    let state = tus.state(&location).await;
    assert_eq!(state["tree_item_id"], item_id.as_str());
    assert_eq!(state["task_id"], task_id.as_str());
    assert_eq!(state["complete"], true);
    // A PATCH sent again after completion (its answer was lost) is answered, not refused.
    let res = tus.patch(&location, bytes.len() as u64, vec![]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(res.headers()["upload-item-id"], item_id.as_str());
    let res = tus.patch(&location, bytes.len() as u64, vec![0]).await;
    assert_eq!(
        res.status(),
        StatusCode::BAD_REQUEST,
        "no byte fits past the end"
    );

    let plain = server.upload(&data("RGB.byte.tif")).await;
    let (_, resumed) = server
        .get_json(&format!("/tree-items/{item_id}"), &server.token)
        .await;
    for field in [
        "name",
        "kind",
        "size",
        "content_type",
        "geo_raster",
        "parent_id",
    ] {
        assert_eq!(resumed[field], plain[field], "{field}");
    }
    let done = server.wait_final(&task_id).await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    assert_eq!(done["options"]["compression"], "zstd");
    assert!(
        tus.state(&location).await["conversion_error"].is_null(),
        "the conversion was queued"
    );
}

#[tokio::test]
async fn creation_with_upload_and_an_empty_file() {
    let server = TestServer::start().await;
    let tus = Tus::new(&server);
    let bytes = std::fs::read(data("byte.tif")).unwrap();
    let res = tus
        .req(Method::POST, "/api/v1/uploads")
        .header("Upload-Length", bytes.len())
        .header("Upload-Metadata", format!("filename {}", b64("byte.tif")))
        .header("Content-Type", CHUNK_TYPE)
        .body(bytes[..100].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(header_u64(&res, "upload-offset"), 100);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    let res = tus.patch(&location, 100, bytes[100..].to_vec()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(res.headers().contains_key("upload-item-id"));

    // All of it in the creation request.
    let res = tus
        .req(Method::POST, "/api/v1/uploads")
        .header("Upload-Length", bytes.len())
        .header("Content-Type", CHUNK_TYPE)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(res.headers().contains_key("upload-item-id"));

    // Nothing at all.
    let location = tus.create(Some(0), &[("filename", "empty.txt")]).await;
    let state = tus.state(&location).await;
    assert_eq!(state["complete"], true, "{state}");
    let (_, item) = server
        .get_json(
            &format!("/tree-items/{}", state["tree_item_id"].as_str().unwrap()),
            &server.token,
        )
        .await;
    assert_eq!(item["size"], 0);
    assert_eq!(item["name"], "empty.txt");
}

#[tokio::test]
async fn checksum_mismatches_get_460_and_the_chunk_is_discarded() {
    let server = TestServer::start().await;
    let tus = Tus::new(&server);
    let location = tus.create(Some(11), &[("filename", "hello.txt")]).await;
    let sha1 = |b: &[u8]| {
        use sha1::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(b))
    };
    let sha256 =
        |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b));
    let res = tus
        .patch_with(
            &location,
            0,
            b"hello".to_vec(),
            &[("Upload-Checksum", format!("sha1 {}", sha1(b"jello")))],
        )
        .await;
    let (status, detail) = detail(res).await;
    assert_eq!(status.as_u16(), 460);
    assert!(detail.contains("does not match"), "{detail}");
    assert_eq!(tus.offset(&location).await, 0, "discarded");
    assert_eq!(blobs(&server), 0);
    // An algorithm it does not know is a 400.
    let res = tus
        .patch_with(
            &location,
            0,
            b"hello".to_vec(),
            &[("Upload-Checksum", "md5 XUFAKrxLKna5cZ2REBfFkg==".into())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    for (offset, part, header) in [
        (0, &b"hello"[..], format!("sha1 {}", sha1(b"hello"))),
        (5, &b" world"[..], format!("sha256 {}", sha256(b" world"))),
    ] {
        let res = tus
            .patch_with(
                &location,
                offset,
                part.to_vec(),
                &[("Upload-Checksum", header)],
            )
            .await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }
    let item = tus.state(&location).await["tree_item_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(server.content(&item).await, &b"hello world"[..]);
}

#[tokio::test]
async fn malformed_requests_get_the_protocols_answers() {
    let server = TestServer::start().await;
    let tus = Tus::new(&server);
    // No Tus-Resumable: 412, with the versions there are.
    let res = server
        .req(Method::POST, "/uploads", &server.token)
        .header("Upload-Length", 10)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(res.headers()["tus-version"], "1.0.0");
    let res = server
        .req(Method::POST, "/uploads", &server.token)
        .header("Tus-Resumable", "0.2.2")
        .header("Upload-Length", 10)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);

    for (length, metadata, status) in [
        (None::<&str>, "", StatusCode::BAD_REQUEST),
        (Some("ten"), "", StatusCode::BAD_REQUEST),
        (Some("10"), "filename not-base64!", StatusCode::BAD_REQUEST),
        (
            Some("10"),
            "filename Zm9v,filename YmFy",
            StatusCode::BAD_REQUEST,
        ),
        (
            Some("10"),
            &format!("parent_id {}", b64("nope")),
            StatusCode::BAD_REQUEST,
        ),
        (
            Some("10"),
            &format!("parent_id {}", b64(&uuid::Uuid::new_v4().to_string())),
            StatusCode::NOT_FOUND,
        ),
        (
            Some("10"),
            &format!("filename {}", b64("")),
            StatusCode::BAD_REQUEST,
        ),
        (
            Some("10"),
            &format!("convert {}", b64("{\"compression\": \"gif\"}")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Some("10"),
            &format!("convert {}", b64("not json")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let mut req = tus
            .req(Method::POST, "/api/v1/uploads")
            .header("Upload-Metadata", metadata);
        if let Some(length) = length {
            req = req.header("Upload-Length", length);
        }
        let (got, detail) = detail(req.send().await.unwrap()).await;
        assert_eq!(got, status, "{length:?} {metadata:?}: {detail}");
        assert!(!detail.is_empty());
    }
    assert!(server
        .get_json("/uploads", &server.token)
        .await
        .1
        .as_array()
        .unwrap()
        .is_empty());

    let location = tus.create(Some(10), &[("filename", "a.bin")]).await;
    // Wrong body type: 415. Wrong offset: 409. No offset: 400. Past the length: 400.
    let res = tus
        .req(Method::PATCH, &location)
        .header("Content-Type", "application/octet-stream")
        .header("Upload-Offset", 0)
        .body("12345")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res = tus.patch(&location, 3, b"12345".to_vec()).await;
    let (status, detail) = detail(res).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(detail.contains("at byte 0"), "{detail}");
    let res = tus
        .req(Method::PATCH, &location)
        .header("Content-Type", CHUNK_TYPE)
        .body("12345")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = tus.patch(&location, 0, b"0123456789X".to_vec()).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = tus
        .patch_with(
            &location,
            0,
            b"12".to_vec(),
            &[("Upload-Length", "20".into())],
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::BAD_REQUEST,
        "a known length cannot change"
    );
    assert_eq!(tus.offset(&location).await, 0, "nothing refused was kept");
    assert_eq!(blobs(&server), 0);
    // The server still serves.
    assert_eq!(
        tus.patch(&location, 0, b"0123456789".to_vec())
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn an_upload_url_is_its_creators_alone() {
    let server = TestServer::start().await;
    let tus = Tus::new(&server);
    let other = Tus::as_user(&server, server.token_for("mallory").await);
    let location = tus.create(Some(10), &[("filename", "secret.bin")]).await;
    assert_eq!(
        tus.patch(&location, 0, b"12345".to_vec()).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(other.head(&location).await.status(), StatusCode::NOT_FOUND);
    let (status, _) = detail(other.patch(&location, 5, b"evil!".to_vec()).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let res = other.req(Method::DELETE, &location).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = other.req(Method::GET, &location).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let (_, theirs) = server.get_json("/uploads", &other.token).await;
    assert_eq!(theirs, json!([]));
    // Nothing of the owner's moved.
    assert_eq!(tus.offset(&location).await, 5);
    let res = server
        .http
        .head(format!("{}{location}", server.url))
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn deferred_length_termination_and_limits() {
    let server = TestServer::start_with(&[
        "--max-upload-bytes",
        "1000",
        "--max-open-uploads-per-user",
        "3",
    ])
    .await;
    let tus = Tus::new(&server);
    // Over the limit at creation: 413, before any byte.
    let (status, _) = tus.try_create(Some(1001), &[]).await.unwrap_err();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Deferred: HEAD says so until the length comes with a later PATCH.
    let location = tus.create(None, &[("filename", "later.bin")]).await;
    assert_eq!(
        tus.patch(&location, 0, vec![7; 300]).await.status(),
        StatusCode::NO_CONTENT
    );
    let head = tus.head(&location).await;
    assert_eq!(head.headers()["upload-defer-length"], "1");
    assert!(!head.headers().contains_key("upload-length"));
    assert!(tus.state(&location).await["length"].is_null());
    let res = tus
        .patch_with(
            &location,
            300,
            vec![8; 200],
            &[("Upload-Length", "500".into())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(res.headers().contains_key("upload-item-id"));

    // Deferred and past the limit: 413, and the bytes before stay.
    let location = tus.create(None, &[]).await;
    assert_eq!(
        tus.patch(&location, 0, vec![1; 900]).await.status(),
        StatusCode::NO_CONTENT
    );
    let (status, detail) = detail(tus.patch(&location, 900, vec![1; 200]).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{detail}");
    assert_eq!(tus.offset(&location).await, 900);
    let res = tus
        .patch_with(&location, 900, vec![], &[("Upload-Length", "1001".into())])
        .await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Per user, at most three unfinished at once.
    let second = tus.create(Some(100), &[]).await;
    let third = tus.create(Some(100), &[]).await;
    let (status, detail) = tus.try_create(Some(100), &[]).await.unwrap_err();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{detail}");
    // Termination frees a place, and the bytes it held.
    assert_eq!(
        tus.patch(&second, 0, vec![2; 50]).await.status(),
        StatusCode::NO_CONTENT
    );
    let before = blobs(&server);
    for gone in [&second, &third] {
        let res = tus.req(Method::DELETE, gone).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(tus.head(gone).await.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(
        blobs(&server),
        before - 1,
        "the terminated upload's bytes are gone"
    );
    tus.create(Some(100), &[]).await;
}

#[tokio::test]
async fn unfinished_uploads_expire_and_leave_no_bytes() {
    let server = TestServer::start_with(&["--upload-expiry-secs", "2"]).await;
    let tus = Tus::new(&server);
    let location = tus.create(Some(100), &[("filename", "slow.bin")]).await;
    let res = tus.patch(&location, 0, vec![1; 40]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let expires = res.headers()["upload-expires"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        chrono::DateTime::parse_from_rfc2822(&expires).is_ok(),
        "an HTTP date: {expires}"
    );
    assert_eq!(blobs(&server), 1);
    // A finished one expires too, but its item stays.
    let done = tus.create(Some(3), &[("filename", "done.txt")]).await;
    assert_eq!(
        tus.patch(&done, 0, b"abc".to_vec()).await.status(),
        StatusCode::NO_CONTENT
    );
    eventually("the upload to expire", Duration::from_secs(30), || async {
        (tus.head(&location).await.status() == StatusCode::NOT_FOUND && blobs(&server) == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        tus.patch(&location, 40, vec![1; 60]).await.status(),
        StatusCode::NOT_FOUND
    );
    eventually(
        "the finished upload's record to expire",
        Duration::from_secs(30),
        || async { (tus.head(&done).await.status() == StatusCode::NOT_FOUND).then_some(()) },
    )
    .await;
    let (_, items) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(items.as_array().unwrap().len(), 1, "{items}");
    assert_eq!(
        server.get_json("/uploads", &server.token).await.1,
        json!([])
    );
}

#[tokio::test]
async fn a_full_disk_gets_507_at_creation_and_mid_upload() {
    let server = TestServer::start_on_small_disk(64, &["--min-free-disk-mb", "16"]).await;
    let tus = Tus::new(&server);
    let (status, _) = tus.try_create(Some(60 << 20), &[]).await.unwrap_err();
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    // A deferred length cannot be checked up front: the bytes are, as they arrive.
    let location = tus.create(None, &[]).await;
    let res = tus
        .req(Method::PATCH, &location)
        .header("Content-Type", CHUNK_TYPE)
        .header("Upload-Offset", 0)
        .body(vec![0; 60 << 20])
        .send()
        .await;
    // The refusal comes while the client still sends, so the client may see only the closed
    // connection; either way, nothing of the refused request is kept.
    if let Ok(res) = res {
        assert_eq!(res.status(), StatusCode::INSUFFICIENT_STORAGE);
    }
    assert_eq!(tus.offset(&location).await, 0);
    assert!(server.tmp_files().is_empty(), "{:?}", server.tmp_files());
    // Once the refused bytes' space is back, the same upload goes on.
    eventually(
        "the server to take bytes again",
        Duration::from_secs(10),
        || async {
            let res = tus
                .patch_with(
                    &location,
                    0,
                    vec![0; 1 << 20],
                    &[("Upload-Length", (1 << 20).to_string())],
                )
                .await;
            (res.status() == StatusCode::NO_CONTENT).then_some(())
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Storage and nodes.

/// A chunk is stored as a blob on the configured storage, and the join reads them back.
async fn upload_in_chunks(
    tus: &Tus<'_>,
    nodes: &[&TestServer],
    bytes: &[u8],
    chunk: usize,
) -> String {
    let location = tus
        .create(Some(bytes.len() as u64), &[("filename", "chunks.bin")])
        .await;
    for (i, part) in bytes.chunks(chunk).enumerate() {
        let node = Tus::as_user(nodes[i % nodes.len()], tus.token.clone());
        let res = node
            .patch(&location, (i * chunk) as u64, part.to_vec())
            .await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "chunk {i}");
    }
    let state = tus.state(&location).await;
    state["tree_item_id"]
        .as_str()
        .expect("complete")
        .to_string()
}

#[tokio::test]
async fn on_object_storage_chunks_are_objects_and_the_file_arrives_whole() {
    let bucket = TestBucket::new();
    let server = bucket.server(&[]).await;
    let tus = Tus::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "s3.bin", 20);
    let bytes = std::fs::read(&file).unwrap();
    // 9 MiB chunks: each one a multipart upload of its own, and a small tail.
    let item = upload_in_chunks(&tus, &[&server], &bytes, 9 << 20).await;
    let copy = download(&server, &item).await;
    assert_eq!(sha256_of(copy.path()), sha256_of(&file));
    assert_eq!(
        bucket.objects("blobs").await.len(),
        1,
        "only the item's object is left"
    );
    assert!(files_in(&server.view("tmp")).is_empty());
}

#[tokio::test]
async fn any_node_takes_the_next_chunk() {
    let db = TestDatabase::new();
    let bucket = TestBucket::new();
    let env = TestBucket::env_for(&bucket.endpoint);
    let storage = bucket.storage();
    let args = [
        "--database-url",
        db.url.as_str(),
        "--storage",
        storage.as_str(),
    ];
    let first = TestServer::start_with_env(&args, &env).await;
    // A data dir of its own: the nodes share nothing but the database and the bucket.
    let second = first.beside(&args, &env).await;
    let tus = Tus::new(&first);
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let item = upload_in_chunks(&tus, &[&first, &second], &bytes, 700_000).await;
    assert_eq!(second.content(&item).await, bytes);
}

// ---------------------------------------------------------------------------------------------
// Races, and what a completion does when the world changed meanwhile.

/// A PATCH whose body the test sends piece by piece; dropped, the body ends.
struct HeldPatch {
    sender: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    answer: tokio::task::JoinHandle<Response>,
}

impl HeldPatch {
    async fn start(tus: &Tus<'_>, location: &str, offset: u64, first: Vec<u8>) -> HeldPatch {
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        sender.send(Ok(first)).await.unwrap();
        let body = reqwest::Body::wrap_stream(tokio_stream_of(receiver));
        let request = tus
            .req(Method::PATCH, location)
            .header("Content-Type", CHUNK_TYPE)
            .header("Upload-Offset", offset)
            .body(body);
        HeldPatch {
            sender,
            answer: tokio::spawn(async move { request.send().await.unwrap() }),
        }
    }

    async fn finish(self, last: Vec<u8>) -> Response {
        self.sender.send(Ok(last)).await.unwrap();
        drop(self.sender);
        self.answer.await.unwrap()
    }
}

fn tokio_stream_of(
    mut receiver: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    async_stream::stream! {
        while let Some(item) = receiver.recv().await {
            yield item;
        }
    }
}

/// Waits until the server has taken `n` bytes of a held request (its offset does not show
/// them yet: the request's bytes count only once it ends).
async fn server_reading(server: &TestServer) {
    eventually(
        "the server to read the held request",
        Duration::from_secs(10),
        || async { (!server.tmp_files().is_empty()).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_second_request_for_an_upload_being_written_waits_then_gets_423() {
    let server = TestServer::start().await;
    let tus = Tus::new(&server);
    let location = tus.create(Some(20), &[("filename", "race.bin")]).await;
    let held = HeldPatch::start(&tus, &location, 0, b"0123456789".to_vec()).await;
    server_reading(&server).await;
    let (status, detail) = detail(tus.patch(&location, 0, b"abcdefghij".to_vec()).await).await;
    assert_eq!(status, StatusCode::LOCKED, "{detail}");
    let res = held.finish(b"0123456789".to_vec()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let item = res.headers()["upload-item-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(server.content(&item).await, &b"01234567890123456789"[..]);
    // Another user learns nothing from the lock: 404 at once.
    let other = Tus::as_user(&server, server.token_for("eve").await);
    let held = {
        let location = tus.create(Some(20), &[]).await;
        (
            HeldPatch::start(&tus, &location, 0, vec![1; 10]).await,
            location,
        )
    };
    let started = std::time::Instant::now();
    assert_eq!(other.head(&held.1).await.status(), StatusCode::NOT_FOUND);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no wait for the lock"
    );
    assert_eq!(
        held.0.finish(vec![2; 10]).await.status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn two_nodes_racing_for_one_offset_land_one_chunk_and_the_file_is_exact() {
    let db = TestDatabase::new();
    let first = TestServer::start_with(&["--database-url", &db.url]).await;
    let second = first.join(&["--database-url", &db.url]).await;
    let (one, two) = (Tus::new(&first), Tus::new(&second));
    let location = one.create(Some(30), &[("filename", "raced.bin")]).await;
    assert_eq!(
        one.patch(&location, 0, b"AAAAAAAAAA".to_vec())
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    // Node one reads a request from offset 10; meanwhile node two takes bytes from 10 too.
    let held = HeldPatch::start(&one, &location, 10, b"xxxxx".to_vec()).await;
    server_reading(&first).await;
    let res = two.patch(&location, 10, b"BBBBBBBBBB".to_vec()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // The late one ends the upload in its own eyes (10 + 20 = 30), but the offset moved.
    let (status, detail) = detail(held.finish(vec![b'x'; 15]).await).await;
    assert_eq!(status, StatusCode::CONFLICT, "{detail}");
    assert_eq!(one.offset(&location).await, 20);
    let res = one.patch(&location, 20, b"CCCCCCCCCC".to_vec()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let item = res.headers()["upload-item-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        second.content(&item).await,
        &b"AAAAAAAAAABBBBBBBBBBCCCCCCCCCC"[..]
    );
    // The losing request's bytes were removed: only the item's file is left.
    eventually(
        "the loser's chunk to go",
        Duration::from_secs(10),
        || async { (blobs(&first) == 1).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn completion_keeps_the_file_when_its_folder_went_or_its_conversion_cannot_queue() {
    // No place for a task: the conversion asked for cannot queue.
    let server = TestServer::start_with(&["--max-active-tasks-per-user", "0"]).await;
    let tus = Tus::new(&server);
    let res = server
        .req(Method::POST, "/tree-items/folders", &server.token)
        .json(&json!({"name": "gone"}))
        .send()
        .await
        .unwrap();
    let folder: Value = res.json().await.unwrap();
    let folder = folder["id"].as_str().unwrap().to_string();
    let bytes = std::fs::read(data("byte.tif")).unwrap();
    let location = tus
        .create(
            Some(bytes.len() as u64),
            &[
                ("filename", "late.tif"),
                ("parent_id", &folder),
                ("convert", "{}"),
            ],
        )
        .await;
    assert_eq!(
        tus.patch(&location, 0, bytes[..100].to_vec())
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let res = server
        .req(
            Method::DELETE,
            &format!("/tree-items/{folder}"),
            &server.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = tus.patch(&location, 100, bytes[100..].to_vec()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let upload = tus.state(&location).await;
    let item = upload["tree_item_id"].as_str().unwrap();
    let (_, item) = server
        .get_json(&format!("/tree-items/{item}"), &server.token)
        .await;
    assert!(
        item["parent_id"].is_null(),
        "the file lands at the root: {item}"
    );
    assert_eq!(item["name"], "late.tif");
    assert!(upload["task_id"].is_null(), "{upload}");
    assert!(
        upload["conversion_error"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{upload}"
    );
}

#[tokio::test]
async fn a_refused_creation_leaves_no_upload_and_chunks_are_capped() {
    let server = TestServer::start_with(&["--max-upload-chunks", "3"]).await;
    let tus = Tus::new(&server);
    for (headers, body) in [
        (
            vec![("Upload-Checksum", "md5 AAAA".to_string())],
            b"abc".to_vec(),
        ),
        (vec![], b"more than ten bytes".to_vec()),
        (
            vec![(
                "Upload-Checksum",
                format!(
                    "sha1 {}",
                    base64::engine::general_purpose::STANDARD.encode([0u8; 20])
                ),
            )],
            b"abc".to_vec(),
        ),
    ] {
        let mut req = tus
            .req(Method::POST, "/api/v1/uploads")
            .header("Upload-Length", 10)
            .header("Content-Type", CHUNK_TYPE);
        for (name, value) in &headers {
            req = req.header(*name, value);
        }
        let res = req.body(body).send().await.unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
        assert!(!res.headers().contains_key("location"));
    }
    assert_eq!(
        server.get_json("/uploads", &server.token).await.1,
        json!([])
    );

    // Binary values under keys the server does not read are the client's own business.
    let location = tus
        .req(Method::POST, "/api/v1/uploads")
        .header("Upload-Length", 10)
        .header(
            "Upload-Metadata",
            format!(
                "filename {},blob {}",
                b64("x.bin"),
                base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe, 0x00])
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(location.status(), StatusCode::CREATED);
    let location = location.headers()["location"].to_str().unwrap().to_string();
    for offset in 0..3 {
        assert_eq!(
            tus.patch(&location, offset, vec![1]).await.status(),
            StatusCode::NO_CONTENT
        );
    }
    let (status, detail) = detail(tus.patch(&location, 3, vec![1]).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(detail.contains("larger"), "{detail}");
}

#[tokio::test]
async fn x_http_method_override_routes_a_post_as_patch_head_or_delete() {
    let server = TestServer::start().await;
    let tus = Tus::new(&server);
    let location = tus.create(Some(10), &[("filename", "proxied.bin")]).await;
    let overridden = |method: &str| {
        tus.req(Method::POST, &location)
            .header("X-HTTP-Method-Override", method)
    };
    let res = overridden("PATCH")
        .header("Content-Type", CHUNK_TYPE)
        .header("Upload-Offset", 0)
        .body("01234")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = overridden("HEAD").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header_u64(&res, "upload-offset"), 5);
    let res = overridden("DELETE").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(tus.head(&location).await.status(), StatusCode::NOT_FOUND);
    // Elsewhere, a POST stays a POST.
    let res = server
        .req(Method::POST, "/tree-items/folders", &server.token)
        .header("X-HTTP-Method-Override", "DELETE")
        .json(&json!({"name": "kept"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

/// An old node would not know the tables of uploads' pieces, and its collector would delete
/// them: a binary older than the database's schema refuses to start, with a sentence.
#[tokio::test]
async fn a_binary_older_than_the_database_refuses_to_start() {
    let mut server = TestServer::start().await;
    server.stop(libc::SIGTERM).await;
    // As a newer version would leave it: one migration past this binary's.
    let db = rusqlite::Connection::open(server.data_dir().join("rastercast.db")).unwrap();
    let version: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    db.pragma_update(None, "user_version", version + 1).unwrap();
    drop(db);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(crate::helpers::BIN)
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(server.data_dir())
            .output(),
    )
    .await
    .expect("the start ends in time")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {text}");
    assert!(text.contains("newer than this rastercast knows"), "{text}");
}
