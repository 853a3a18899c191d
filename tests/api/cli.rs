//! The command line: local conversion with a progress bar and clean Ctrl-C, and tokens.

use std::time::Duration;

use gdal::{Dataset, Metadata};
use tokio::process::Command;

use crate::helpers::{data, sha256_of, unfinished_uploads, Trip, Tripwire, BIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convert_writes_a_cog_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rgb.tif");
    let run = Command::new(BIN)
        .arg("convert")
        .arg(data("RGB.byte.tif"))
        .arg("-o")
        .arg(&out)
        .args(["--compression", "zstd"])
        .output()
        .await
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("791×718"));
    let ds = Dataset::open(&out).unwrap();
    assert_eq!(
        ds.metadata_item("LAYOUT", "IMAGE_STRUCTURE").as_deref(),
        Some("COG")
    );
    assert_eq!(
        ds.metadata_item("COMPRESSION", "IMAGE_STRUCTURE")
            .as_deref(),
        Some("ZSTD")
    );

    // It does not overwrite by accident, and says why options are wrong.
    let again = Command::new(BIN)
        .arg("convert")
        .arg(data("RGB.byte.tif"))
        .arg("-o")
        .arg(&out)
        .output()
        .await
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
    let bad = Command::new(BIN)
        .arg("convert")
        .arg(data("byte.tif"))
        .args(["--blocksize", "7"])
        .output()
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("power of two"));

    let failed = Command::new(BIN)
        .arg("convert")
        .arg(data("corrupt.tif"))
        .arg("-o")
        .arg(dir.path().join("c.tif"))
        .output()
        .await
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    assert!(!dir.path().join("c.tif").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big.cog.tif");
    let child = Command::new(BIN)
        .arg("convert")
        .arg(crate::lifecycle::big_raster())
        .arg("-o")
        .arg(&out)
        .args([
            "--target-crs",
            "EPSG:4326",
            "--overview-resampling",
            "lanczos",
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    let done = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        done.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stderr).contains("cancelled"));
    assert!(
        crate::helpers::files_in(dir.path()).is_empty(),
        "{:?}",
        crate::helpers::files_in(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_listed_without_secrets_and_printed_last() {
    let dir = tempfile::tempdir().unwrap();
    let create = Command::new(BIN)
        .args(["token", "create", "--user", "dana", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(create.status.success());
    let stdout = String::from_utf8(create.stdout).unwrap();
    let token = stdout.lines().last().unwrap();
    assert!(token.starts_with("rc_"));
    let list = Command::new(BIN)
        .args(["token", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    let listing = String::from_utf8(list.stdout).unwrap();
    assert!(listing.contains("dana"));
    assert!(
        !listing.contains(token.rsplit('_').next().unwrap()),
        "secrets never listed"
    );
}

/// A reader that stops early (`rastercast token list | head -1`) ends the command as it ends
/// `ls`: by the signal, without a panic's backtrace on the terminal.
#[test]
fn a_printing_command_ends_quietly_when_its_reader_is_gone() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let run = std::process::Command::new(BIN)
        .args(["token", "create", "--user", "erin", "--data-dir"])
        .arg(dir.path())
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(run.status.signal(), Some(libc::SIGPIPE), "{stderr}");
}

// `rastercast upload`: a resumable upload over tus, against a real server.

/// An uncompressed 3200 × 3200 × 3 GeoTIFF (about 30 MiB): thirty 1 MiB chunks.
fn upload_raster() -> std::path::PathBuf {
    crate::helpers::generated_raster(
        "rgb-3200-upload.tif",
        "RGB.byte.tif",
        &["-outsize", "3200", "3200"],
    )
}

const MIB: u64 = 1 << 20;

/// The arguments of one `upload` of `file` to `url`, in 1 MiB chunks, remembering unfinished
/// uploads in `state` (never the user's own state file).
fn upload_args(
    file: &std::path::Path,
    url: &str,
    token: &str,
    state: &std::path::Path,
    extra: &[&str],
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["upload".into(), file.into()];
    for arg in [
        "--url",
        url,
        "--token",
        token,
        "--chunk-size",
        "1",
        "--state-file",
    ] {
        args.push(arg.into());
    }
    args.push(state.into());
    args.extend(extra.iter().map(Into::into));
    args
}

/// Runs `upload` to its end (at most two minutes): its exit status, stdout and stderr.
async fn run_upload(args: &[std::ffi::OsString]) -> std::process::Output {
    let run = Command::new(BIN).args(args).kill_on_drop(true).output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the upload ends in time")
        .unwrap()
}

/// The JSON on the last line of a successful upload's stdout.
fn outcome(run: &std::process::Output) -> serde_json::Value {
    assert!(
        run.status.success(),
        "{:?}: {}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    let last = stdout.lines().last().expect("a line on stdout");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{last:?} is not JSON: {e}"))
}

/// The uploads remembered in a state file (none when it does not exist).
fn remembered(state: &std::path::Path) -> Vec<serde_json::Value> {
    match std::fs::read(state) {
        Ok(bytes) => {
            let contents: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            contents["uploads"].as_array().unwrap().clone()
        }
        Err(_) => Vec::new(),
    }
}

/// Checks that item `id` holds exactly the bytes of `original`.
async fn assert_same_bytes(
    server: &crate::helpers::TestServer,
    id: &str,
    original: &std::path::Path,
) {
    let downloaded = crate::helpers::download(server, id).await;
    assert_eq!(
        std::fs::metadata(downloaded.path()).unwrap().len(),
        std::fs::metadata(original).unwrap().len()
    );
    assert_eq!(
        sha256_of(downloaded.path()),
        sha256_of(original),
        "the item's bytes are not the file's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_sends_a_file_in_chunks_and_it_arrives_whole() {
    let server = crate::helpers::TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/uploads.json");
    let file = upload_raster();
    let (code, folder) = server
        .call(
            reqwest::Method::POST,
            "/tree-items/folders",
            &server.token,
            Some(&serde_json::json!({"name": "scenes"})),
        )
        .await;
    assert_eq!(code, reqwest::StatusCode::CREATED, "{folder}");
    let folder = folder["id"].as_str().unwrap();

    let run = run_upload(&upload_args(
        &file,
        &server.url,
        &server.token,
        &state,
        &[
            "--name",
            "scene 1.tif",
            "--parent-id",
            folder,
            "--convert",
            r#"{"compression": "zstd"}"#,
        ],
    ))
    .await;
    let done = outcome(&run);
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size > 25 * MIB, "{size} bytes: many chunks");
    assert_eq!(done["length"], size);
    assert_eq!(done["resumed_from"], 0);
    let item = done["tree_item_id"].as_str().expect("an item id");
    assert_same_bytes(&server, item, &file).await;
    let (code, listed) = server
        .get_json(&format!("/tree-items/{item}"), &server.token)
        .await;
    assert_eq!(code, reqwest::StatusCode::OK, "{listed}");
    assert_eq!(listed["name"], "scene 1.tif");
    assert_eq!(listed["parent_id"], folder);

    // The conversion asked for was queued when the last chunk landed, and runs.
    let task = done["task_id"].as_str().expect("a task id");
    let status = server.wait_final(task).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");

    // Nothing is left to resume, on either side.
    assert!(remembered(&state).is_empty(), "{:?}", remembered(&state));
    assert!(unfinished_uploads(&server).await.is_empty());
    let upload = done["upload_url"].as_str().unwrap();
    assert!(upload.starts_with(&format!("{}/api/v1/uploads/", server.url)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_refusals_are_one_sentence_with_the_detail() {
    let server = crate::helpers::TestServer::start_with(&["--max-upload-bytes", "1000000"]).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("uploads.json");
    let big = data("RGB.byte.tif");
    let small = data("byte.tif");
    let missing_folder = uuid::Uuid::new_v4().to_string();
    // (file, token, arguments, the status, a part of the server's detail)
    for (file, token, extra, status, detail) in [
        (
            &big,
            server.token.as_str(),
            vec![],
            "413 Payload Too Large",
            "larger than the limit of 1000000 bytes",
        ),
        (
            &small,
            server.token.as_str(),
            vec!["--parent-id", missing_folder.as_str()],
            "404 Not Found",
            "No such folder",
        ),
        (
            &small,
            "rc_nobody_0000",
            vec![],
            "401 Unauthorized",
            "token",
        ),
        (
            &small,
            server.token.as_str(),
            vec!["--convert", r#"{"compression": "gif"}"#],
            "422 Unprocessable Entity",
            "compression must be one of",
        ),
    ] {
        let run = run_upload(&upload_args(file, &server.url, token, &state, &extra)).await;
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{status}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one sentence: {stderr}");
        let prefix = format!("rastercast: the server refused to create the upload ({status}): ");
        assert!(lines[0].starts_with(&prefix), "{stderr}");
        assert!(lines[0].contains(detail), "{detail}: {stderr}");
        assert!(run.stdout.is_empty());
    }
    assert!(remembered(&state).is_empty());
    assert!(unfinished_uploads(&server).await.is_empty());
}

/// Starts `upload` of `file` through a wire that stalls after 2.5 MiB, and waits until the
/// server has at least one chunk of it and the wire holds the rest back; returns the running
/// command and the server's unfinished upload.
async fn stalled_upload(
    server: &crate::helpers::TestServer,
    tap: &Tripwire,
    args: &[std::ffi::OsString],
) -> (tokio::process::Child, serde_json::Value) {
    let child = Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let upload = crate::helpers::eventually(
        "a chunk on the server, and the rest held back",
        Duration::from_secs(60),
        || async {
            let uploads = unfinished_uploads(server).await;
            let upload = uploads.first()?;
            (upload["offset"].as_u64()? > 0 && tap.held()).then(|| upload.clone())
        },
    )
    .await;
    (child, upload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_resumes_where_a_killed_run_stopped() {
    let server = crate::helpers::TestServer::start().await;
    let tap = Tripwire::armed(&server.url, 5 * MIB / 2, Trip::Hold).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("uploads.json");
    let file = upload_raster();
    let size = std::fs::metadata(&file).unwrap().len();
    let args = upload_args(&file, &tap.url(), &server.token, &state, &[]);

    let (mut first, upload) = stalled_upload(&server, &tap, &args).await;
    first.start_kill().unwrap();
    assert!(!first.wait().await.unwrap().success());
    let stored = upload["offset"].as_u64().unwrap();
    assert!(stored > 0 && stored < size, "{upload}");
    // The killed run left the upload's URL behind for the next one.
    let entries = remembered(&state);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let url = entries[0]["upload_url"].as_str().unwrap();
    assert!(
        url.ends_with(&format!(
            "/api/v1/uploads/{}",
            upload["id"].as_str().unwrap()
        )),
        "{url}"
    );
    assert_eq!(entries[0]["size"], size);

    tap.open();
    let before = tap.sent();
    let done = outcome(&run_upload(&args).await);
    let second = tap.sent() - before;
    // It went on from the server's offset: fewer bytes went through the second time.
    let resumed_from = done["resumed_from"].as_u64().unwrap();
    assert!(resumed_from >= stored, "{done} vs {upload}");
    assert!(
        second < size - resumed_from + 256 * 1024,
        "{second} bytes sent to resume from {resumed_from} of {size}"
    );
    assert_eq!(done["upload_url"], url);
    assert_same_bytes(&server, done["tree_item_id"].as_str().unwrap(), &file).await;
    assert!(remembered(&state).is_empty());
    assert!(unfinished_uploads(&server).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_keeps_the_upload_and_a_deleted_one_starts_over() {
    let server = crate::helpers::TestServer::start().await;
    let tap = Tripwire::armed(&server.url, 5 * MIB / 2, Trip::Hold).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("uploads.json");
    let file = upload_raster();
    let args = upload_args(&file, &tap.url(), &server.token, &state, &[]);

    let (first, upload) = stalled_upload(&server, &tap, &args).await;
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(first.id().unwrap() as i32, libc::SIGINT) };
    let stopped = tokio::time::timeout(Duration::from_secs(10), first.wait_with_output())
        .await
        .expect("Ctrl-C stops the upload at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("run the same command again to resume"),
        "{stderr}"
    );
    assert_eq!(remembered(&state).len(), 1);

    // The upload is deleted meanwhile (or expired): the next run starts a new one. (The
    // chunk held back in the wire ends first: until then it holds the upload.)
    tap.open();
    let id = upload["id"].as_str().unwrap();
    let deleted = server
        .req(
            reqwest::Method::DELETE,
            &format!("/uploads/{id}"),
            &server.token,
        )
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), reqwest::StatusCode::NO_CONTENT);
    let run = run_upload(&args).await;
    let done = outcome(&run);
    assert!(String::from_utf8_lossy(&run.stderr).contains("starting a new upload"));
    assert_eq!(done["resumed_from"], 0);
    assert!(!done["upload_url"].as_str().unwrap().ends_with(id));
    assert_same_bytes(&server, done["tree_item_id"].as_str().unwrap(), &file).await;
    assert!(remembered(&state).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_rides_out_a_broken_connection() {
    let server = crate::helpers::TestServer::start().await;
    let tap = Tripwire::armed(&server.url, 5 * MIB / 2, Trip::Cut).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("uploads.json");
    let file = upload_raster();
    let size = std::fs::metadata(&file).unwrap().len();

    let run = run_upload(&upload_args(&file, &tap.url(), &server.token, &state, &[])).await;
    let done = outcome(&run);
    assert_eq!(tap.cuts(), 1);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("retrying in"), "{stderr}");
    // One run, one upload: after the cut it went on from the server's offset, resending at
    // most the chunk that was cut.
    assert_eq!(done["resumed_from"], 0);
    assert!(
        tap.sent() < size + 2 * MIB,
        "{} bytes sent for {size}",
        tap.sent()
    );
    assert_same_bytes(&server, done["tree_item_id"].as_str().unwrap(), &file).await;
    assert!(remembered(&state).is_empty());
    assert!(unfinished_uploads(&server).await.is_empty());
}
