//! The command line: local conversion with a progress bar and clean Ctrl-C, and tokens.

use std::time::Duration;

use gdal::{Dataset, Metadata};
use tokio::process::Command;

use crate::helpers::{data, BIN};

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
