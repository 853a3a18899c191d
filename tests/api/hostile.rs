//! Uploaded files are hostile: VRTs that read other files or URLs, subdataset options naming
//! arbitrary paths, rasters that declare absurd sizes, zip bombs, polyglots and options that
//! try to reach GDAL's configuration are all refused, leaking nothing and fetching nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::helpers::{data, TestServer};

/// A loopback listener that counts connections: any count above zero is a request made
/// on behalf of a hostile file.
async fn tripwire() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/x.tif", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (url, hits)
}

/// A server whose workers share the test's network. In a network namespace of their own (the
/// default, where the server may make one) a worker could reach no tripwire whatever a file
/// made it try, and the tripwire would prove nothing about the other layers (the driver
/// allow-list, server-built paths): these tests are about those.
async fn server_sharing_the_network() -> TestServer {
    TestServer::start_with_env(&[], &[("RASTERCAST_NO_WORKER_NETNS", "1")]).await
}

/// The workers that ran shared the test's network, so the tripwire would have seen a fetch.
async fn assert_tripwire_could_see(server: &TestServer) {
    assert_eq!(
        server.metric("rastercast_worker_network_isolated").await,
        0.0,
        "the workers had a network of their own: the tripwire saw nothing either way"
    );
}

/// The tripwire itself: a worker process that connects to it (a stand-in worker that does so
/// before it runs the real one) is counted when workers share the network, and not when they
/// run in a namespace of their own, which `/metrics` then reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tripwire_counts_a_workers_connection_unless_the_worker_has_its_own_network() {
    let (url, hits) = tripwire().await;
    let port: u16 = url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fetching-worker");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\npython3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 2)' 2>/dev/null\nexec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_rastercast-worker")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let args = ["--worker-exe", script.to_str().unwrap(), "--workers", "1"];

    let shared = TestServer::start_with_env(&args, &[("RASTERCAST_NO_WORKER_NETNS", "1")]).await;
    let status = shared.convert_file(&data("byte.tif"), json!({})).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while hits.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tripwire never saw the worker's connection"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_tripwire_could_see(&shared).await;
    drop(shared);
    let seen = hits.load(Ordering::SeqCst);

    let own = TestServer::start_with(&args).await;
    let status = own.convert_file(&data("byte.tif"), json!({})).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    // Whether this process may make a network namespace is whether the server may.
    let can = std::process::Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let isolated = own.metric("rastercast_worker_network_isolated").await;
    assert_eq!(isolated, if can { 1.0 } else { 0.0 }, "can unshare: {can}");
    if can {
        assert_eq!(
            hits.load(Ordering::SeqCst),
            seen,
            "a worker in a namespace of its own reached the tripwire"
        );
    }
}

fn raw_vrt(source: &str) -> String {
    format!(
        r#"<VRTDataset rasterXSize="64" rasterYSize="4">
  <SRS>EPSG:4326</SRS>
  <GeoTransform>0, 1, 0, 0, 0, -1</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">
    <SourceFilename relativeToVRT="0">{source}</SourceFilename>
    <ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>64</LineOffset>
  </VRTRasterBand>
</VRTDataset>"#
    )
}

fn simple_vrt(source: &str) -> String {
    format!(
        r#"<VRTDataset rasterXSize="20" rasterYSize="20">
  <GeoTransform>0, 1, 0, 0, 0, -1</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1">
    <SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename><SourceBand>1</SourceBand></SimpleSource>
  </VRTRasterBand>
</VRTDataset>"#
    )
}

async fn upload_bytes(server: &TestServer, name: &str, bytes: Vec<u8>) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    server.upload(&path).await
}

fn assert_refused(status: &Value, secret: &str) {
    assert_eq!(status["state"], "FAILURE", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(!error.is_empty());
    assert!(!error.contains(secret), "leaked: {error}");
    assert!(status["result"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vrts_and_url_tricks_are_refused_without_reading_or_fetching() {
    let server = server_sharing_the_network().await;
    let (url, hits) = tripwire().await;

    // Another user's stored bytes, by their real path on the server.
    let bob = server.token_for("bob").await;
    server.upload_as(&bob, &data("byte.tif"), "bobs.tif").await;
    let bobs_blob = server.blob_files()[0].clone();

    let hostile: Vec<(&str, String)> = vec![
        ("passwd.tif", raw_vrt("/etc/passwd")),
        ("neighbour.tif", simple_vrt(bobs_blob.to_str().unwrap())),
        ("remote.tif", simple_vrt(&format!("/vsicurl/{url}"))),
        ("remote2.tif", raw_vrt(&format!("/vsicurl/{url}"))),
        (
            "chain.tif",
            simple_vrt(&format!("/vsizip//vsicurl/{url}/a.tif")),
        ),
    ];
    for (name, vrt) in hostile {
        let item = upload_bytes(&server, name, vrt.into_bytes()).await;
        assert!(
            item["geo_raster"].is_null(),
            "a VRT is not described either"
        );
        let started = server.convert(&item, json!({})).await;
        let status = server
            .wait_final(started["task_id"].as_str().unwrap())
            .await;
        assert_refused(&status, "root:");
        assert!(
            status["error"]
                .as_str()
                .unwrap()
                .contains("not a raster format"),
            "{name}: {status}"
        );
    }

    // The same VRT inside a zip, which GDAL would otherwise open through /vsizip/.
    let zip_path = tempfile::tempdir().unwrap();
    let vrt_file = zip_path.path().join("inner.tif");
    std::fs::write(&vrt_file, raw_vrt("/etc/passwd")).unwrap();
    let zip_file = zip_path.path().join("evil.zip");
    let ok = std::process::Command::new("python3")
        .args(["-c", "import sys,zipfile; z=zipfile.ZipFile(sys.argv[1],'w'); z.write(sys.argv[2],'inner.tif'); z.close()"])
        .arg(&zip_file)
        .arg(&vrt_file)
        .status()
        .unwrap();
    assert!(ok.success());
    let status = server.convert_file(&zip_file, json!({})).await;
    assert_refused(&status, "root:");

    // Subdataset options naming paths or URLs never reach GDAL as paths.
    let nc = server.upload(&data("RGB.nc")).await;
    for subdataset in [
        "NETCDF:\"/etc/passwd\":Band1".to_string(),
        "/etc/passwd".to_string(),
        format!("/vsicurl/{url}"),
        "../../../etc/passwd".to_string(),
    ] {
        let started = server
            .convert(&nc, json!({ "subdataset": subdataset }))
            .await;
        let status = server
            .wait_final(started["task_id"].as_str().unwrap())
            .await;
        assert_refused(&status, "root:");
        assert!(
            status["error"]
                .as_str()
                .unwrap()
                .contains("no subdataset named"),
            "{status}"
        );
    }

    assert_tripwire_could_see(&server).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a hostile file made the server fetch a URL"
    );
    let (_, items) = server.get_json("/tree-items", &server.token).await;
    assert!(
        items
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["source_id"].is_null()),
        "no output was published: {items}"
    );
    assert!(server.tmp_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_file_declaring_a_giant_raster_is_refused_before_work() {
    let dir = tempfile::tempdir().unwrap();
    let sparse = dir.path().join("sparse.tif");
    let status = std::process::Command::new("gdal_create")
        .args([
            "-q", "-of", "GTiff", "-outsize", "200000", "200000", "-bands", "1", "-ot", "Byte",
        ])
        .args(["-a_srs", "EPSG:4326", "-a_ullr", "0", "10", "10", "0"])
        .args([
            "-co",
            "SPARSE_OK=YES",
            "-co",
            "TILED=YES",
            "-co",
            "BLOCKXSIZE=8192",
            "-co",
            "BLOCKYSIZE=8192",
        ])
        .arg(&sparse)
        .status()
        .expect("gdal_create (gdal-bin)");
    assert!(status.success());
    assert!(
        std::fs::metadata(&sparse).unwrap().len() < 64 * 1024,
        "the file itself is tiny"
    );

    let server = TestServer::start().await;
    let started = std::time::Instant::now();
    let status = server.convert_file(&sparse, json!({})).await;
    assert_eq!(status["state"], "FAILURE");
    assert!(
        status["error"].as_str().unwrap().contains("over the limit"),
        "{status}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(server.tmp_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_empty_files_fail_cleanly_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    for (name, bytes) in [
        ("empty.tif", Vec::new()),
        (
            "noise.tif",
            (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        (
            "truncated.tif",
            std::fs::read(data("RGB.byte.tif")).unwrap()[..4096].to_vec(),
        ),
    ] {
        let item = upload_bytes(&server, name, bytes).await;
        let started = server.convert(&item, json!({})).await;
        let status = server
            .wait_final(started["task_id"].as_str().unwrap())
            .await;
        assert_eq!(status["state"], "FAILURE", "{name}: {status}");
    }
    let ok = server.convert_file(&data("byte.tif"), json!({})).await;
    assert_eq!(ok["state"], "SUCCESS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subdataset_lists_written_into_a_file_are_not_trusted() {
    use gdal::Metadata;
    let server = server_sharing_the_network().await;
    let (url, hits) = tripwire().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.tif");
    std::fs::copy(data("RGB.byte.tif"), &secret).unwrap();
    let remote = format!("/vsicurl/{url}.none-allowed");

    // A GeoTIFF whose own metadata claims subdatasets that point elsewhere.
    let liar = dir.path().join("liar.tif");
    {
        let driver = gdal::DriverManager::get_driver_by_name("GTiff").unwrap();
        let mut ds = driver
            .create_with_band_type::<u8, _>(&liar, 10, 10, 1)
            .unwrap();
        ds.set_geo_transform(&[0.0, 1.0, 0.0, 10.0, 0.0, -1.0])
            .unwrap();
        ds.set_metadata_item("SUBDATASET_1_NAME", secret.to_str().unwrap(), "SUBDATASETS")
            .unwrap();
        ds.set_metadata_item("SUBDATASET_2_NAME", &remote, "SUBDATASETS")
            .unwrap();
    }
    let item = server.upload(&liar).await;
    for subdataset in [
        secret.to_str().unwrap().to_string(),
        remote.clone(),
        "none-allowed".into(),
        "tif".into(),
    ] {
        let started = server
            .convert(&item, json!({ "subdataset": subdataset }))
            .await;
        let status = server
            .wait_final(started["task_id"].as_str().unwrap())
            .await;
        assert_eq!(status["state"], "FAILURE", "{subdataset}: {status}");
        assert!(
            status["error"].as_str().unwrap().contains("no subdatasets"),
            "{status}"
        );
    }
    assert_tripwire_could_see(&server).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no URL was fetched");
    let (_, items) = server.get_json("/tree-items", &server.token).await;
    assert!(
        items
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["source_id"].is_null()),
        "nothing was published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_form_field_is_refused_without_being_held() {
    let server = TestServer::start().await;
    let form = reqwest::multipart::Form::new()
        .text("parent_id", "x".repeat(4 << 20))
        .part(
            "file",
            reqwest::multipart::Part::bytes(vec![0u8; 10]).file_name("a.tif"),
        );
    let res = server
        .req(reqwest::Method::POST, "/tree-items", &server.token)
        .multipart(form)
        .send()
        .await;
    if let Ok(res) = res {
        assert_eq!(res.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    }
    assert!(server.tmp_files().is_empty());
    let (_, items) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(items, json!([]));
}

/// Names are display names only (stored files get server-made names): a path keeps its last
/// segment, and names that are empty, too long, or carry NUL, control or bidirectional-text
/// characters are refused with a 400 and a `detail`; nothing lands on disk for a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_file_names_are_refused_or_reduced_to_a_display_name() {
    let server = TestServer::start().await;
    let bytes = std::fs::read(data("byte.tif")).unwrap();
    let upload = |name: String| {
        server
            .req(reqwest::Method::POST, "/tree-items", &server.token)
            .query(&[("name", name)])
            .header("content-type", "application/octet-stream")
            .body(bytes.clone())
            .send()
    };
    for name in [
        "a\0b.tif".to_string(),
        "x".repeat(10_000),
        "invoice\u{202E}fdp.exe".to_string(),
        "tab\there.tif".to_string(),
        "..".to_string(),
        "../".to_string(),
    ] {
        let res = upload(name.clone()).await.unwrap();
        assert_eq!(res.status(), reqwest::StatusCode::BAD_REQUEST, "{name:?}");
        let body: Value = res.json().await.unwrap();
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains("name")),
            "{body}"
        );
    }
    assert!(
        server.blob_files().is_empty(),
        "a refused upload stored bytes"
    );
    assert!(server.tmp_files().is_empty());

    // 255 characters is the limit, not 255 bytes: 251 two-byte letters and ".tif" pass.
    let long = format!("{}.tif", "é".repeat(251));
    for (sent, kept) in [
        ("../../etc/passwd.tif", "passwd.tif"),
        ("C:\\Users\\me\\scene.tif", "scene.tif"),
        ("carte du monde – été.tif", "carte du monde – été.tif"),
        (long.as_str(), long.as_str()),
    ] {
        let res = upload(sent.to_string()).await.unwrap();
        assert_eq!(res.status(), reqwest::StatusCode::CREATED, "{sent:?}");
        let item: Value = res.json().await.unwrap();
        assert_eq!(item["name"], kept);
    }
    // Stored under server-made names only.
    let blobs = server.blob_files();
    assert_eq!(blobs.len(), 4);
    assert!(
        blobs
            .iter()
            .all(|b| !b.to_string_lossy().contains("passwd")
                && !b.to_string_lossy().contains("scene"))
    );
}

/// TIFF caps samples per pixel at 65,535, so that is the most bands a TIFF can declare (the
/// issue's "100,000" cannot be written): such a file is refused by the band limit, readably.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiff_with_65535_bands_is_refused_by_the_band_limit() {
    let dir = tempfile::tempdir().unwrap();
    let bands = dir.path().join("bands.tif");
    let status = std::process::Command::new("gdal_create")
        .args([
            "-q", "-of", "GTiff", "-outsize", "1", "1", "-bands", "65535",
        ])
        .args(["-ot", "Byte", "-co", "INTERLEAVE=BAND"])
        .args(["-a_srs", "EPSG:4326", "-a_ullr", "0", "1", "1", "0"])
        .arg(&bands)
        .status()
        .expect("gdal_create (gdal-bin)");
    assert!(status.success());
    let server = TestServer::start().await;
    let status = server.convert_file(&bands, json!({})).await;
    assert_eq!(status["state"], "FAILURE", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("band"), "{error}");
    assert!(
        !error.contains(server.data_dir().to_str().unwrap()),
        "no server path: {error}"
    );
    assert!(server.tmp_files().is_empty());
    assert_eq!(server.healthz().await, reqwest::StatusCode::OK);
}

/// Runs a short Python script (Python's zipfile is the zip tool every Debian has).
fn python(script: &str, args: &[&std::path::Path]) {
    let ok = std::process::Command::new("python3")
        .args(["-c", script])
        .args(args)
        .status()
        .unwrap();
    assert!(ok.success(), "{script}");
}

/// Zip bombs: a member that inflates a thousandfold past the limit, a header that lies about
/// the size, and a zip inside a zip. Each fails with a reason and nothing is written.
///
/// The unpacked size in a zip's header is only a cheap early refusal: a header can lie, and a
/// deflated GeoTIFF of zeros is as much a bomb as a zip. What bounds the work of any compressed
/// raster is the pixel limit, checked before a pixel is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_bombs_are_refused() {
    // Over 10 MB unpacked (the upload limit bounds unzipping too) or 10 Mpx is over the limit.
    let server =
        TestServer::start_with(&["--max-upload-bytes", "10000000", "--max-pixels", "10000000"])
            .await;
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("bomb.tif");
    let status = std::process::Command::new("gdal_create")
        .args([
            "-q", "-of", "GTiff", "-outsize", "8000", "8000", "-bands", "1",
        ])
        .args(["-a_srs", "EPSG:4326", "-a_ullr", "0", "10", "10", "0"])
        .arg(&big)
        .status()
        .expect("gdal_create (gdal-bin) is installed");
    assert!(status.success());
    let bomb = dir.path().join("bomb.zip");
    python(
        "import sys,zipfile; z=zipfile.ZipFile(sys.argv[1],'w',zipfile.ZIP_DEFLATED); z.write(sys.argv[2],'bomb.tif'); z.close()",
        &[&bomb, &big],
    );
    assert!(
        std::fs::metadata(&bomb).unwrap().len() < 1_000_000,
        "a bomb: 64 MB in a small zip"
    );

    // The same zip claiming its member is 4 KiB, in the local header and the central directory.
    let liar = dir.path().join("liar.zip");
    python(
        "import sys,struct
b=bytearray(open(sys.argv[1],'rb').read())
struct.pack_into('<I',b,22,4096)
cd=b.rfind(b'PK\\x01\\x02')
struct.pack_into('<I',b,cd+24,4096)
open(sys.argv[2],'wb').write(b)",
        &[&bomb, &liar],
    );

    // A zip inside a zip.
    let inner = dir.path().join("inner.zip");
    python(
        "import sys,zipfile; z=zipfile.ZipFile(sys.argv[1],'w'); z.write(sys.argv[2],'byte.tif'); z.close()",
        &[&inner, &data("byte.tif")],
    );
    let nested = dir.path().join("nested.zip");
    python(
        "import sys,zipfile; z=zipfile.ZipFile(sys.argv[1],'w'); z.write(sys.argv[2],'inner.zip'); z.close()",
        &[&nested, &inner],
    );

    for (file, reason) in [
        (&bomb, "over the limit of 10000000 bytes"),
        (&liar, "over the limit of 10000000 pixels"),
        (&nested, "holds no raster file"),
    ] {
        let status = server.convert_file(file, json!({})).await;
        assert_eq!(status["state"], "FAILURE", "{file:?}: {status}");
        let error = status["error"].as_str().unwrap();
        assert!(
            !error.is_empty() && error.contains(reason),
            "{file:?}: {error}"
        );
    }
    assert!(server.tmp_files().is_empty());
    let ok = server.convert_file(&data("byte.tif"), json!({})).await;
    assert_eq!(ok["state"], "SUCCESS");
}

/// A polyglot: a valid TIFF that is also a zip (holding a VRT that reads /etc/passwd) and an
/// HTML page with a script, uploaded as `text/html`. It is a TIFF to GDAL and nothing a
/// browser would run when served back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polyglot_is_only_ever_a_raster() {
    let server = server_sharing_the_network().await;
    let (url, hits) = tripwire().await;
    let dir = tempfile::tempdir().unwrap();
    let vrt = dir.path().join("inner.tif");
    std::fs::write(&vrt, raw_vrt("/etc/passwd")).unwrap();
    let zip = dir.path().join("tail.zip");
    python(
        "import sys,zipfile; z=zipfile.ZipFile(sys.argv[1],'w'); z.write(sys.argv[2],'inner.tif'); z.close()",
        &[&zip, &vrt],
    );
    let mut poly = std::fs::read(data("byte.tif")).unwrap();
    poly.extend_from_slice(format!("<html><script>fetch('{url}')</script></html>").as_bytes());
    // A zip is read from its end, so the TIFF in front does not stop zip readers.
    poly.extend(std::fs::read(&zip).unwrap());

    for (name, claimed, stored) in [
        ("poly.tif", "text/html", "image/tiff"),
        (
            "poly.html",
            "text/html; charset=utf-8",
            "application/octet-stream",
        ),
        ("poly.svg", "image/svg+xml", "application/octet-stream"),
    ] {
        let res = server
            .req(
                reqwest::Method::POST,
                &format!("/tree-items?name={name}"),
                &server.token,
            )
            .header("content-type", claimed)
            .body(poly.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), reqwest::StatusCode::CREATED);
        let item: Value = res.json().await.unwrap();
        assert_eq!(item["content_type"], stored, "{name}");
        let res = server
            .req(
                reqwest::Method::GET,
                &format!("/tree-items/{}/content", item["id"].as_str().unwrap()),
                &server.token,
            )
            .send()
            .await
            .unwrap();
        let headers = res.headers();
        assert_eq!(headers["content-type"], stored);
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox"));
    }

    // GDAL sees the TIFF, converts its 20×20 pixels, and never opens the zip at its end.
    let item = upload_bytes(&server, "poly.tif", poly).await;
    let started = server.convert(&item, json!({})).await;
    let status = server
        .wait_final(started["task_id"].as_str().unwrap())
        .await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    assert_eq!(status["result"]["width"], 20, "{status}");
    let output =
        crate::helpers::download(&server, status["result"]["tree_item_id"].as_str().unwrap()).await;
    let bytes = std::fs::read(output.path()).unwrap();
    for secret in [&b"root:"[..], b"<script", b"PK\x03\x04"] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "output carries {secret:?}"
        );
    }
    assert_tripwire_could_see(&server).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

/// Options that try to reach GDAL's configuration, its command line or the network: each is a
/// 422 with a reason before any task exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_cannot_inject_gdal_configuration() {
    let server = server_sharing_the_network().await;
    let (url, hits) = tripwire().await;
    let item = server.upload(&data("byte.tif")).await;
    let path = format!(
        "/tree-items/{}/convert-to-geo-raster",
        item["id"].as_str().unwrap()
    );
    let attempts = [
        json!({"target_crs": "EPSG:4326 --config GDAL_HTTP_PROXY 127.0.0.1:1"}),
        json!({"target_crs": url}),
        json!({"target_crs": format!("+proj=longlat +nadgrids=@{url}")}),
        json!({"target_crs": "EPSG:4326\n-co COMPRESS=NONE"}),
        json!({"compression": "DEFLATE --config CPL_DEBUG ON"}),
        json!({"compression": "-co"}),
        json!({"overview_resampling": "lanczos -oo GDAL_DATA=/etc"}),
        json!({"nodata": "0 --config GDAL_DATA /etc"}),
        json!({"config": {"GDAL_HTTP_PROXY": "127.0.0.1:1"}}),
        json!({"creation_options": ["TILED=NO"]}),
        json!({"GDAL_DATA": "/etc"}),
        json!({"subdataset": "--config GDAL_DATA /etc"}),
    ];
    for options in attempts {
        let res = server
            .req(reqwest::Method::POST, &path, &server.token)
            .json(&options)
            .send()
            .await
            .unwrap();
        let (code, body) = crate::helpers::json_of(res).await;
        assert!(
            code == reqwest::StatusCode::UNPROCESSABLE_ENTITY
                || (options.get("subdataset").is_some() && code == reqwest::StatusCode::OK),
            "{options}: {code} {body}"
        );
        if code == reqwest::StatusCode::OK {
            // A subdataset is a name looked up in the file, never a path or an argument.
            let status = server.wait_final(body["task_id"].as_str().unwrap()).await;
            assert_eq!(status["state"], "FAILURE", "{status}");
        }
    }
    let (_, tasks) = server.get_json("/tasks", &server.token).await;
    assert!(tasks["tasks"].as_array().unwrap().len() <= 1);
    assert_tripwire_could_see(&server).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}
