//! Files on S3-compatible object storage (SeaweedFS, started by `scripts/test-s3.sh`): uploads
//! go up as verified multipart uploads and leave nothing behind when cut off or refused;
//! conversions stage their source and upload their result with progress; `/content` keeps its
//! ranges and ETags; nodes with data dirs of their own share only PostgreSQL and the bucket;
//! the store out of reach is a 503 and a retry, never a half-visible file; bad credentials or
//! a missing bucket stop the start; and what no item refers to is collected.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{CONTENT_RANGE, ETAG, IF_NONE_MATCH, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{
    data, download, eventually, files_in, gdalinfo, generated_raster, json_of, worker_children,
    Cable, TestBucket, TestDatabase, TestServer, BIN,
};
use crate::live_clients::{is_final, Sse};

/// An uncompressed 2500 × 2500 × 3 GeoTIFF (about 19 MB): three parts of a multipart upload.
fn multipart_raster() -> PathBuf {
    generated_raster(
        "rgb-2500.tif",
        "RGB.byte.tif",
        &["-outsize", "2500", "2500"],
    )
}

/// `GET /content` of `item` with `headers`.
async fn content(server: &TestServer, item: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = server.req(
        Method::GET,
        &format!("/tree-items/{item}/content"),
        &server.token,
    );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

type Chunk = Result<Vec<u8>, std::io::Error>;

/// A raw upload whose body is fed by the returned sender, in the background.
fn feed_upload(
    server: &TestServer,
    name: &str,
) -> (
    tokio::sync::mpsc::Sender<Chunk>,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(4);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let req = server
        .req(
            Method::POST,
            &format!("/tree-items?name={name}"),
            &server.token,
        )
        .header("content-type", "application/octet-stream")
        .body(body);
    (tx, tokio::spawn(req.send()))
}

const MIB: usize = 1 << 20;

/// Waits until a multipart upload is in flight, its marker written. (A node that dies between
/// starting a multipart upload and writing its marker, one request later, leaves an upload
/// only the store's own expiry rules remove: see the README.)
async fn in_flight(bucket: &TestBucket) {
    eventually(
        "a multipart upload in flight, with its marker",
        Duration::from_secs(20),
        || async {
            (bucket.multipart_uploads() > 0 && !bucket.objects("uploads").await.is_empty())
                .then_some(())
        },
    )
    .await;
}

/// Downloads `item` from `server` and checks that GDAL reads it as a COG.
async fn assert_is_cog(server: &TestServer, item: &str) {
    let cog = download(server, item).await;
    let info = gdalinfo(cog.path().to_str().unwrap()).await;
    assert!(String::from_utf8_lossy(&info.stdout).contains("LAYOUT=COG"));
}

/// Waits until no multipart upload and no marker is left under the bucket's prefix.
async fn no_upload_left(bucket: &TestBucket, what: &str, secs: u64) {
    eventually(what, Duration::from_secs(secs), || async {
        (bucket.multipart_uploads() == 0 && bucket.objects("uploads").await.is_empty())
            .then_some(())
    })
    .await;
}

/// Waits until the server's scratch dir is empty.
async fn scratch_removed(server: &TestServer) {
    eventually("scratch removed", Duration::from_secs(10), || async {
        server.tmp_files().is_empty().then_some(())
    })
    .await;
}

/// An upload whose store `breaks` once a part of it went up, fed on until the server
/// answers: that answer.
async fn upload_broken_mid_way<F: std::future::Future<Output = ()>>(
    server: &TestServer,
    bucket: &TestBucket,
    name: &str,
    breaks: impl FnOnce() -> F,
) -> reqwest::Response {
    let (tx, request) = feed_upload(server, name);
    for _ in 0..9 {
        tx.send(Ok(vec![3u8; MIB])).await.unwrap();
    }
    in_flight(bucket).await;
    breaks().await;
    let sender = tokio::spawn(async move {
        for _ in 0..12 {
            if tx.send(Ok(vec![3u8; MIB])).await.is_err() {
                break;
            }
        }
    });
    let res = tokio::time::timeout(Duration::from_secs(60), request)
        .await
        .expect("the upload is answered")
        .unwrap()
        .unwrap();
    sender.abort();
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_live_in_the_bucket_and_read_back_with_ranges_and_etags() {
    let bucket = TestBucket::new();
    let server = bucket.server(&["--workers", "1"]).await;
    let health = server.health().await;
    assert_eq!(health["storage"], "s3");

    // A small file goes up in one request, a larger one in parts; both are verified objects
    // of exactly their size, and nothing of them stays on the node's disk.
    let small = server.upload(&data("RGB.byte.tif")).await;
    let big = server.upload(&multipart_raster()).await;
    let big_len = std::fs::metadata(multipart_raster()).unwrap().len();
    assert_eq!(big["size"], big_len);
    let objects = bucket.objects("blobs").await;
    assert_eq!(objects.len(), 2, "{objects:?}");
    assert!(objects.iter().any(|(_, size)| *size == big_len));
    assert!(objects.iter().any(|(_, size)| *size == 1_745_956));
    assert!(
        bucket.objects("uploads").await.is_empty(),
        "markers removed"
    );
    assert_eq!(
        bucket.multipart_uploads(),
        0,
        "every multipart upload completed"
    );
    assert!(server.blob_files().is_empty(), "no blob on local disk");
    assert!(server.tmp_files().is_empty(), "no scratch left");

    // /content: whole, a range, past the end, and the ETag.
    let id = big["id"].as_str().unwrap();
    let file = download(&server, id).await;
    assert_eq!(
        std::fs::read(file.path()).unwrap(),
        std::fs::read(multipart_raster()).unwrap()
    );
    let res = content(&server, id, &[("range", "bytes=9000000-9000099")]).await;
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        res.headers()[CONTENT_RANGE],
        format!("bytes 9000000-9000099/{big_len}").as_str()
    );
    let etag = res.headers()[ETAG].to_str().unwrap().to_string();
    let expected = &std::fs::read(multipart_raster()).unwrap()[9_000_000..9_000_100];
    assert_eq!(res.bytes().await.unwrap().as_ref(), expected);
    let res = content(&server, id, &[("range", &format!("bytes={big_len}-"))]).await;
    assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let res = content(&server, id, &[(IF_NONE_MATCH.as_str(), &etag)]).await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    let res = server
        .req(
            Method::HEAD,
            &format!("/tree-items/{id}/content"),
            &server.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["content-length"],
        big_len.to_string().as_str()
    );

    // A conversion stages its source and uploads its result, each a phase of its progress.
    let mut feed = Sse::open(
        server
            .http
            .get(server.api("/events"))
            .bearer_auth(&server.token),
    )
    .await;
    let task = server.convert(&big, json!({})).await;
    let task_id = task["task_id"].as_str().unwrap().to_string();
    let seen = feed
        .events_until(|e| e["task_id"] == task_id.as_str() && is_final(e))
        .await;
    let sentences: Vec<&str> = seen
        .iter()
        .filter_map(|(_, e)| e["status"].as_str())
        .collect();
    let at = |s: &str| sentences.iter().position(|x| *x == s);
    let (down, up) = (at("Downloading source"), at("Uploading result"));
    assert!(down.is_some() && up.is_some(), "{sentences:?}");
    assert!(down < up, "{sentences:?}");
    let progress: Vec<f64> = seen
        .iter()
        .filter(|(_, e)| e["task_id"] == task_id.as_str())
        .filter_map(|(_, e)| e["progress"].as_f64())
        .collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    let status = server.wait_final(&task_id).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    let output = status["result"]["tree_item_id"].as_str().unwrap();
    assert_is_cog(&server, output).await;
    assert_eq!(bucket.objects("blobs").await.len(), 3);
    // The worker that parsed the file had no credentials to leak.
    let workers = worker_children(server.pid());
    assert!(!workers.is_empty(), "a warm worker stays");
    for pid in workers {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        assert!(!environ.contains("AWS_SECRET_ACCESS_KEY"), "{environ}");
        assert!(!environ.contains(crate::helpers::S3_SECRET));
    }
    scratch_removed(&server).await;

    // Deleting items deletes their objects.
    for item in [&small["id"], &big["id"]] {
        let res = server
            .req(
                Method::DELETE,
                &format!("/tree-items/{}", item.as_str().unwrap()),
                &server.token,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }
    let left = bucket.objects("blobs").await;
    assert_eq!(left.len(), 1, "only the output is left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_or_over_the_limit_leaves_no_object() {
    let bucket = TestBucket::new();
    let server = bucket.server(&["--max-upload-bytes", "20000000"]).await;

    // Cut off after two parts went up: the multipart upload is aborted.
    let (tx, request) = feed_upload(&server, "cut.bin");
    for _ in 0..17 {
        tx.send(Ok(vec![1u8; MIB])).await.unwrap();
    }
    in_flight(&bucket).await;
    request.abort();
    drop(tx);
    no_upload_left(&bucket, "the cut-off upload aborted", 20).await;

    // Over the limit: a 413, and again nothing stays.
    let res = server
        .req(Method::POST, "/tree-items?name=huge.bin", &server.token)
        .header("content-type", "application/octet-stream")
        .body(vec![2u8; 24 * MIB])
        .send()
        .await
        .unwrap();
    let (code, body) = json_of(res).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    no_upload_left(&bucket, "the refused upload aborted", 20).await;
    assert!(bucket.objects("blobs").await.is_empty());
    let (_, items) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(items, json!([]), "no item appeared");
    assert!(server.tmp_files().is_empty());
}

/// Runs `serve` with `storage` and the AWS variables `env`, and returns what it printed when
/// it refused to start.
async fn refused_start(storage: &str, env: &[(&str, String)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(BIN)
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--storage",
                storage,
                "--data-dir",
            ])
            .arg(dir.path())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output(),
    )
    .await
    .expect("the start ends in time")
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {text}");
    assert!(!text.contains("listening"), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_a_missing_bucket_or_no_store_stop_the_start_with_one_sentence() {
    let bucket = TestBucket::new();
    let mut env = TestBucket::env_for(&bucket.endpoint);
    env[1].1 = "not-the-secret".into();
    let text = refused_start(&bucket.storage(), &env).await;
    assert!(text.contains("refused the credentials"), "{text}");
    assert!(text.contains("AWS_SECRET_ACCESS_KEY"), "{text}");

    let env = TestBucket::env_for(&bucket.endpoint);
    let text = refused_start("s3://no-such-bucket-here/x", &env).await;
    assert!(
        text.contains("The bucket \"no-such-bucket-here\" does not exist"),
        "{text}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let env = TestBucket::env_for(&format!("http://127.0.0.1:{port}"));
    let text = refused_start(&bucket.storage(), &env).await;
    assert!(text.contains("does not answer"), "{text}");

    let text = refused_start("ftp://somewhere", &[]).await;
    assert!(
        text.contains("--storage is file:// (the data dir) or s3://"),
        "{text}"
    );
}

/// The store out of reach: `/healthz` says so, uploads get a 503 with `Retry-After` and leave
/// nothing visible, a conversion waits in the queue instead of failing, and all is well again
/// once the store is back, with what the cut left behind collected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_out_of_reach_is_a_503_and_a_retry_and_leaves_nothing_half_visible() {
    let bucket = TestBucket::new();
    let mut cable = Cable::to(bucket.port()).await;
    let server = bucket
        .server_via(
            &format!("http://127.0.0.1:{}", cable.port),
            &[
                "--workers",
                "1",
                "--retry-backoff-secs",
                "0.5",
                "--max-attempts",
                "20",
                "--orphan-min-age-secs",
                "1",
            ],
        )
        .await;
    assert_eq!(server.healthz().await, 200);
    let item = server.upload(&data("byte.tif")).await;

    // Cut mid-upload, after a part went up: a clear 503, and no item.
    let res = upload_broken_mid_way(&server, &bucket, "cut.bin", || async { cable.cut() }).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()[RETRY_AFTER], "5");
    let (_, body) = json_of(res).await;
    assert_eq!(body["code"], "storage_unavailable", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("file storage"),
        "{body}"
    );

    // While cut: /healthz is a 503, a new upload too, and a conversion is retried, not failed.
    let res = server
        .http
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    let (code, body) = json_of(res).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], "storage_unavailable");
    let res = server
        .req(Method::POST, "/tree-items?name=small.bin", &server.token)
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let task = server.convert(&item, json!({})).await;
    let id = task["task_id"].as_str().unwrap().to_string();
    let retried = server
        .wait_for(&id, Duration::from_secs(60), |s| {
            s["attempts"].as_u64().unwrap_or(0) >= 2
        })
        .await;
    assert_ne!(retried["state"], "FAILURE", "{retried}");
    let (_, items) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(
        items.as_array().unwrap().len(),
        1,
        "only the first upload: {items}"
    );

    // Back: healthy, the conversion succeeds, and the cut upload's remains are collected.
    cable.mend().await;
    assert_eq!(server.wait_final(&id).await["state"], "SUCCESS");
    assert_eq!(server.healthz().await, 200);
    no_upload_left(&bucket, "the cut upload collected", 30).await;
    assert_eq!(
        bucket.objects("blobs").await.len(),
        2,
        "the upload and the output"
    );
    scratch_removed(&server).await;
}

/// A crash between upload and commit leaves objects no item refers to, and multipart uploads
/// no one will finish: both are removed once older than the minimum age, and nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_and_uploads_no_item_refers_to_are_collected_when_old_enough() {
    let bucket = TestBucket::new();
    let stray = "0123456789abcdef0123456789abcdef";
    bucket.put(&format!("blobs/{stray}"), vec![1; 100]).await;
    let abandoned = "fedcba9876543210fedcba9876543210";
    let id = bucket
        .abandoned_multipart(&format!("blobs/{abandoned}"))
        .await;
    bucket
        .put(&format!("uploads/{abandoned}"), id.into_bytes())
        .await;
    assert_eq!(bucket.multipart_uploads(), 1);

    // Younger than an hour: kept, since another node may be about to commit them.
    let mut server = bucket.server(&[]).await;
    let kept = server.upload(&data("byte.tif")).await;
    assert_eq!(bucket.objects("blobs").await.len(), 2);
    assert_eq!(bucket.multipart_uploads(), 1);
    server.stop(libc::SIGTERM).await;

    server.restart_with(&["--orphan-min-age-secs", "1"]).await;
    no_upload_left(&bucket, "orphans collected", 30).await;
    let blobs = bucket.objects("blobs").await;
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    assert_ne!(blobs[0].0, stray);
    let file = download(&server, kept["id"].as_str().unwrap()).await;
    assert_eq!(
        std::fs::read(file.path()).unwrap(),
        std::fs::read(data("byte.tif")).unwrap()
    );
}

/// Nodes with data dirs of their own, sharing only PostgreSQL and the bucket: a file uploaded
/// on A is converted on worker B and read through C, by `/content` and by a shareable link
/// that GDAL opens in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_no_disk_convert_and_serve_each_others_files() {
    let db = TestDatabase::new();
    let bucket = TestBucket::new();
    let env = TestBucket::env_for(&bucket.endpoint);
    let storage = bucket.storage();
    let args = |role: &'static str| {
        vec![
            "--database-url",
            db.url.as_str(),
            "--storage",
            storage.as_str(),
            "--role",
            role,
            "--workers",
            "1",
        ]
    };
    let a = TestServer::start_with_env(&args("api"), &env).await;
    let b = a.beside(&args("worker"), &env).await;
    let c = a.beside(&args("api"), &env).await;
    assert_ne!(a.data_dir(), b.data_dir());

    let item = a.upload(&multipart_raster()).await;
    let task = a.convert(&item, json!({})).await;
    let id = task["task_id"].as_str().unwrap().to_string();
    let status = c.wait_final(&id).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    assert_eq!(
        b.wait_metric(
            "rastercast_conversion_seconds_count{outcome=\"success\"}",
            1.0
        )
        .await,
        1.0,
        "the worker node ran it"
    );
    let output = status["result"]["tree_item_id"].as_str().unwrap();

    // Read through C: the bytes are the ones B wrote.
    assert_is_cog(&c, output).await;
    // A's upload, read through C.
    let source = download(&c, item["id"].as_str().unwrap()).await;
    assert_eq!(
        std::fs::read(source.path()).unwrap(),
        std::fs::read(multipart_raster()).unwrap()
    );

    // A link made on C opens in GDAL with no credentials.
    let (code, link) = c.link(&c.token, output, None).await;
    assert_eq!(code, StatusCode::OK, "{link}");
    let out = gdalinfo(&format!("/vsicurl/{}", link["url"].as_str().unwrap())).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Size is 2500, 2500"));

    // No node kept a file of its own.
    for node in [&a, &b, &c] {
        assert!(node.blob_files().is_empty());
        assert!(files_in(&node.data_dir().join("tmp")).is_empty());
    }
}

/// A zip archive of `members` (name, file) then 24 MiB of incompressible junk,
/// made with Python's zipfile (deflated, as most zips are).
fn zip_with_junk(name: &str, members: &[(&str, PathBuf)]) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    // The members first: the junk keeps them far from the directory at the end.
    let mut script = String::from(
        "import os, sys, zipfile\n\
         with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n",
    );
    for (member, file) in members {
        script += &format!(
            "    z.write({:?}, {member:?})\n",
            file.display().to_string()
        );
    }
    script += "    z.writestr('junk.bin', os.urandom(24 << 20))\n";
    let status = std::process::Command::new("python3")
        .args(["-c", &script])
        .arg(&path)
        .status()
        .expect("python3 runs");
    assert!(status.success());
    path
}

/// A node stages of a big zip archive only what the conversion reads: the directory and the
/// raster (the one the options name, when there are several), not the junk beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_member_is_staged_only_as_far_as_needed() {
    let bucket = TestBucket::new();
    let server = bucket.server(&["--workers", "1"]).await;
    let staged = || server.metric_or_zero("rastercast_staged_bytes_total");

    let one = zip_with_junk("one-raster.zip", &[("inner/byte.tif", data("byte.tif"))]);
    let zip_len = std::fs::metadata(&one).unwrap().len();
    let status = server.convert_file(&one, json!({})).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    let fetched = staged().await;
    assert!(
        fetched > 0.0 && fetched < 1_000_000.0,
        "{fetched} of {zip_len} bytes downloaded"
    );

    let two = zip_with_junk(
        "two-rasters.zip",
        &[
            ("a.tif", data("byte.tif")),
            ("b.tif", data("float_nan.tif")),
        ],
    );
    let status = server
        .convert_file(&two, json!({"subdataset": "b.tif"}))
        .await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    assert_eq!(
        status["result"]["bands"][0]["data_type"], "Float32",
        "{status}"
    );
    let more = staged().await - fetched;
    assert!(more < 1_000_000.0, "{more} bytes downloaded");

    // Without a choice the worker refuses it, having been given the whole archive to list.
    let status = server.convert_file(&two, json!({})).await;
    assert_eq!(status["state"], "FAILURE", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap_or_default()
            .contains("2 rasters"),
        "{status}"
    );
    scratch_removed(&server).await;
}

/// SeaweedFS of this test's own: stopped and started again under a running server.
const RESTARTED_STORE_PORT: u16 = 18533;

/// The store killed and restarted mid-upload: the upload gets a clear 503 and leaves no item; once the
/// store is back, the server is healthy again, takes uploads, and collects what the broken
/// upload left in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_restarted_mid_upload_is_a_clear_error_and_nothing_half_visible() {
    let bucket = TestBucket::new_on_port(RESTARTED_STORE_PORT);
    let server = bucket.server(&["--orphan-min-age-secs", "1"]).await;

    let res = upload_broken_mid_way(&server, &bucket, "restarted.bin", || async {
        tokio::task::spawn_blocking(|| TestBucket::stop_store(RESTARTED_STORE_PORT))
            .await
            .unwrap()
    })
    .await;
    let (code, body) = json_of(res).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "storage_unavailable", "{body}");

    // Back: nothing of the broken upload is visible, new uploads work, and its remains go.
    tokio::task::spawn_blocking(|| TestBucket::new_on_port(RESTARTED_STORE_PORT))
        .await
        .unwrap();
    eventually("healthy again", Duration::from_secs(60), || async {
        (server.healthz().await == 200).then_some(())
    })
    .await;
    let (_, items) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(items, json!([]), "no item appeared");
    let item = server.upload(&data("byte.tif")).await;
    assert_eq!(item["size"], 736);
    no_upload_left(&bucket, "the broken upload collected", 60).await;
    assert_eq!(bucket.objects("blobs").await.len(), 1);
}

/// Staging a source from object storage counts against the disk reserve: with no room on
/// the node's scratch disk the conversion fails with the disk-space sentence and keeps
/// nothing, and once there is room again, a retry succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_counts_against_the_disk_reserve() {
    let bucket = TestBucket::new();
    let storage = bucket.storage();
    let env = TestBucket::env_for(&bucket.endpoint);
    // 24 MiB of scratch disk, 4 of them kept free.
    let server = TestServer::start_on_small_disk_with_env(
        24,
        &[
            "--storage",
            &storage,
            "--min-free-disk-mb",
            "4",
            "--max-attempts",
            "1",
        ],
        &env,
    )
    .await;
    // 6.4 MB fits; then most of the disk is taken by something else.
    let source = generated_raster(
        "rgb-1500.tif",
        "RGB.byte.tif",
        &["-outsize", "1500", "1500"],
    );
    let item = server.upload(&source).await;
    let filler = server.view("filler.bin");
    std::fs::write(&filler, vec![0u8; 12 << 20]).unwrap();

    let task = server.convert(&item, json!({})).await;
    let status = server.wait_final(task["task_id"].as_str().unwrap()).await;
    assert_eq!(status["state"], "FAILURE", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("ran out of disk space"),
        "{status}"
    );
    assert!(server.tmp_files().is_empty(), "nothing kept");

    std::fs::remove_file(&filler).unwrap();
    let (code, retried) = server
        .retry_task(&server.token, task["task_id"].as_str().unwrap(), None)
        .await;
    assert!(code.is_success(), "{retried}");
    let status = server
        .wait_final(retried["task_id"].as_str().unwrap())
        .await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
}

/// Scratch files go on every path, on object storage as on disk: a cancelled conversion leaves
/// none, and neither does one cut off by SIGKILL, whose staged source and partial output the
/// next start sweeps before the task runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_is_removed_after_a_cancel_and_after_a_crash() {
    use crate::lifecycle::{big_raster, slow, wait_running};
    let bucket = TestBucket::new();
    let mut server = bucket.server(&["--workers", "1"]).await;
    let item = server.upload(&big_raster()).await;

    let task = server.convert(&item, slow()).await;
    let id = task["task_id"].as_str().unwrap().to_string();
    wait_running(&server, &id).await;
    assert!(!server.tmp_files().is_empty(), "the source is staged");
    let (code, _) = server.cancel_task(&server.token, &id).await;
    assert!(code.is_success());
    assert_eq!(server.wait_final(&id).await["state"], "REVOKED");
    scratch_removed(&server).await;

    let task = server.convert(&item, slow()).await;
    let id = task["task_id"].as_str().unwrap().to_string();
    wait_running(&server, &id).await;
    let left = server.tmp_files();
    assert!(!left.is_empty(), "the source is staged");
    server.stop(libc::SIGKILL).await;
    server.restart().await;
    assert_eq!(server.wait_final(&id).await["state"], "SUCCESS");
    scratch_removed(&server).await;
}

/// Tiles, statistics and points of a file on S3 are drawn from one copy staged on the node and
/// kept for the next request; the tiles are the very images the same COG gives on local disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_tiles_of_a_file_on_s3_are_drawn_from_one_staged_copy() {
    let bucket = TestBucket::new();
    let server = bucket.server(&["--workers", "1"]).await;
    let local = TestServer::start().await;
    let done = server.convert_file(&data("RGB.byte.tif"), json!({})).await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    let on_s3 = done["result"]["tree_item_id"].as_str().unwrap().to_owned();
    let cog = download(&server, &on_s3).await;
    let on_disk = local.upload(cog.path()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(files_in(&server.data_dir().join("tmp")).is_empty());

    let get = |node: &TestServer, path: String| {
        let request = node.req(Method::GET, &path, &node.token);
        async move {
            let res = request.send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            res.bytes().await.unwrap()
        }
    };
    for tile in [
        "8/72/109.png",
        "8/73/109.png",
        "9/145/218.png?bidx=2&colormap_name=viridis",
    ] {
        let tile_of = |item: &str| format!("/tree-items/{item}/tiles/WebMercatorQuad/{tile}");
        let drawn = get(&server, tile_of(&on_s3)).await;
        assert_eq!(&drawn[1..4], b"PNG");
        assert_eq!(drawn, get(&local, tile_of(&on_disk)).await, "{tile}");
    }
    let statistics = get(&server, format!("/tree-items/{on_s3}/statistics")).await;
    let statistics: serde_json::Value = serde_json::from_slice(&statistics).unwrap();
    let there = get(&local, format!("/tree-items/{on_disk}/statistics")).await;
    assert_eq!(
        statistics,
        serde_json::from_slice::<serde_json::Value>(&there).unwrap()
    );
    get(&server, format!("/tree-items/{on_s3}/point/-77.8,24.6")).await;
    assert_eq!(
        files_in(&server.data_dir().join("tmp")).len(),
        1,
        "one staged copy served every request"
    );
}
