//! Uploaded files are hostile: VRTs that read other files or URLs, subdataset options naming
//! arbitrary paths, and rasters that declare absurd sizes are all refused, leaking nothing.

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
    let server = TestServer::start().await;
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
    let server = TestServer::start().await;
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

    for (sent, kept) in [
        ("../../etc/passwd.tif", "passwd.tif"),
        ("C:\\Users\\me\\scene.tif", "scene.tif"),
        ("carte du monde – été.tif", "carte du monde – été.tif"),
    ] {
        let res = upload(sent.to_string()).await.unwrap();
        assert_eq!(res.status(), reqwest::StatusCode::CREATED, "{sent:?}");
        let item: Value = res.json().await.unwrap();
        assert_eq!(item["name"], kept);
    }
    // Stored under server-made names only.
    let blobs = server.blob_files();
    assert_eq!(blobs.len(), 3);
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
    let health = server
        .http
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
}
