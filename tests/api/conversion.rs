//! Each sample raster gets what `shared/data/README.md` says it should.

use gdal::{Dataset, Metadata};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{data, download, TestServer};

fn assert_success(status: &Value) -> &Value {
    assert_eq!(status["state"], "SUCCESS", "{status}");
    assert_eq!(status["progress"], 100.0);
    let result = &status["result"];
    assert_eq!(result["layout"], "COG");
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_input_becomes_a_cog_with_the_sources_crs_and_size() {
    let server = TestServer::start().await;
    let source = server.upload(&data("RGB.byte.tif")).await;
    // An upload is described as soon as it is stored.
    assert_eq!(source["geo_raster"]["width"], 791);
    assert_eq!(source["geo_raster"]["crs"], "EPSG:32618");
    assert_ne!(source["geo_raster"]["layout"], "COG");
    let started = server.convert(&source, json!({})).await;
    assert_eq!(started["state"], "PENDING");
    assert_eq!(started["tree_item_id"], source["id"]);
    let task_id = started["task_id"].as_str().unwrap();
    assert_eq!(
        started["status_url"],
        format!("/api/v1/tasks/{task_id}/status")
    );

    let status = server.wait_final(task_id).await;
    let result = assert_success(&status);
    assert_eq!(result["width"], 791);
    assert_eq!(result["height"], 718);
    assert_eq!(result["crs"], "EPSG:32618");
    assert_eq!(result["band_count"], 3);
    assert_eq!(result["compression"], "DEFLATE");
    assert_eq!(result["block_size"], json!([512, 512]));
    assert!(result["bounds_wgs84"][0].as_f64().unwrap() < -76.0);
    for field in ["nodata", "overviews", "size_bytes", "duration_s", "bounds"] {
        assert!(!result[field].is_null(), "{field} missing");
    }

    // The output is a new item beside the source, pointing back at it.
    let output_id = result["tree_item_id"].as_str().unwrap();
    let (code, output) = server
        .get_json(&format!("/tree-items/{output_id}"), &server.token)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(output["source_id"], source["id"]);
    assert_eq!(output["parent_id"], source["parent_id"]);
    assert_eq!(output["name"], "RGB.byte.cog.tif");
    assert_eq!(output["geo_raster"]["crs"], "EPSG:32618");

    // GDAL itself agrees.
    let file = download(&server, output_id).await;
    let ds = Dataset::open(file.path()).unwrap();
    assert_eq!(
        ds.metadata_item("LAYOUT", "IMAGE_STRUCTURE").as_deref(),
        Some("COG")
    );
    assert_eq!(ds.raster_size(), (791, 718));
    assert_eq!(ds.spatial_ref().unwrap().auth_code().unwrap(), 32618);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_gets_what_the_data_table_says() {
    let server = TestServer::start().await;

    let rgba = server.convert_file(&data("RGBA.byte.tif"), json!({})).await;
    let bands = &assert_success(&rgba)["bands"];
    assert_eq!(
        bands[3]["color_interpretation"], "Alpha",
        "alpha kept as alpha"
    );

    for name in ["shade.tif", "world.rgb.tif", "byte.tif"] {
        let status = server.convert_file(&data(name), json!({})).await;
        assert!(assert_success(&status)["crs"].is_string(), "{name}");
    }

    let nan = server.convert_file(&data("float_nan.tif"), json!({})).await;
    let result = assert_success(&nan);
    assert_eq!(result["nodata"], "nan", "NaN kept");
    assert!(result["crs"].is_null(), "a missing CRS is not guessed");
    assert!(result["warnings"][0]
        .as_str()
        .unwrap()
        .contains("no coordinate reference system"));

    let rotated = server.convert_file(&data("rotated.tif"), json!({})).await;
    assert_success(&rotated);
    let reprojected = server
        .convert_file(&data("rotated.tif"), json!({"target_crs": "EPSG:3857"}))
        .await;
    assert_eq!(reprojected["state"], "FAILURE");
    assert!(reprojected["error"]
        .as_str()
        .unwrap()
        .contains("cannot be reprojected"));

    let srtm = server
        .convert_file(&data("N10W110.hgt.zip"), json!({}))
        .await;
    let result = assert_success(&srtm);
    assert_eq!(result["crs"], "EPSG:4326");
    assert_eq!(result["bands"][0]["data_type"], "Int16");
    assert_eq!(
        (result["width"].as_u64(), result["height"].as_u64()),
        (Some(1201), Some(1201))
    );

    let nc = server.convert_file(&data("RGB.nc"), json!({})).await;
    assert_eq!(nc["state"], "FAILURE");
    let error = nc["error"].as_str().unwrap();
    assert!(
        error.contains("Band1") && error.contains("Band3"),
        "{error}"
    );
    let nc_band = server
        .convert_file(&data("RGB.nc"), json!({"subdataset": "Band2"}))
        .await;
    assert_eq!(assert_success(&nc_band)["width"], 791);

    let photo = server
        .convert_file(&data("389225main_sw_1965_1024.jpg"), json!({}))
        .await;
    assert_eq!(photo["state"], "FAILURE");
    assert!(photo["error"]
        .as_str()
        .unwrap()
        .contains("not a geo-raster"));

    // The task list pages newest first through all of them, each task once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/tasks?limit=4&cursor={c}"),
            None => "/tasks?limit=4".to_string(),
        };
        let (_, page) = server.get_json(&path, &server.token).await;
        seen.extend(
            page["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["task_id"].to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let unique: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!((seen.len(), unique.len()), (11, 11));
    assert_eq!(seen[0], photo["task_id"].to_string(), "newest first");
    let (_, failures) = server.get_json("/tasks?state=FAILURE", &server.token).await;
    assert_eq!(failures["tasks"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_file_fails_readably_and_leaves_nothing() {
    let server = TestServer::start().await;
    let blobs_before = server.blob_files().len();
    let status = server.convert_file(&data("corrupt.tif"), json!({})).await;
    assert_eq!(status["state"], "FAILURE");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("TIFFReadEncodedTile") || error.contains("read"),
        "{error}"
    );
    assert!(
        !error.contains(server.data_dir().to_str().unwrap()),
        "no server paths: {error}"
    );
    assert!(status["result"].is_null());
    let (_, items) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(
        items.as_array().unwrap().len(),
        1,
        "only the upload: {items}"
    );
    assert_eq!(server.blob_files().len(), blobs_before + 1);
    assert!(server.tmp_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_are_applied_and_reprojection_happens_in_the_same_pass() {
    let server = TestServer::start().await;
    let status = server
        .convert_file(
            &data("RGB.byte.tif"),
            json!({"compression": "zstd", "blocksize": 256, "target_crs": "EPSG:3857", "overview_resampling": "nearest"}),
        )
        .await;
    let result = assert_success(&status);
    assert_eq!(result["crs"], "EPSG:3857");
    assert_eq!(result["compression"], "ZSTD");
    assert_eq!(result["block_size"], json!([256, 256]));

    let web = server
        .convert_file(
            &data("world.rgb.tif"),
            json!({"web_optimized": true, "compression": "jpeg", "quality": 80}),
        )
        .await;
    let result = assert_success(&web);
    assert_eq!(result["crs"], "EPSG:3857");
    assert!(result["compression"].as_str().unwrap().contains("JPEG"));

    let wrong = server
        .convert_file(&data("float_nan.tif"), json!({"compression": "webp"}))
        .await;
    assert_eq!(wrong["state"], "FAILURE");
    assert!(wrong["error"].as_str().unwrap().contains("8-bit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_hold_uploads_and_outputs() {
    let server = TestServer::start().await;
    let (code, folder) = json_post(&server, "/tree-items/folders", json!({"name": "scenes"})).await;
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(folder["kind"], "folder");
    let folder_id = folder["id"].as_str().unwrap();

    let bytes = std::fs::read(data("byte.tif")).unwrap();
    let res = server
        .req(
            Method::POST,
            &format!("/tree-items?name=byte.tif&parent_id={folder_id}"),
            &server.token,
        )
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let item: Value = res.json().await.unwrap();
    assert_eq!(item["parent_id"], folder["id"]);
    assert_eq!(item["size"], bytes.len());

    let started = server.convert(&item, json!(null)).await;
    let status = server
        .wait_final(started["task_id"].as_str().unwrap())
        .await;
    assert_success(&status);

    let (_, children) = server
        .get_json(&format!("/tree-items?parent_id={folder_id}"), &server.token)
        .await;
    let names: Vec<&str> = children
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["byte.cog.tif", "byte.tif"]);
    let (_, root) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(root.as_array().unwrap().len(), 1);

    let res = server
        .req(
            Method::DELETE,
            &format!("/tree-items/{folder_id}"),
            &server.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let (code, _) = server
        .get_json(
            &format!("/tree-items/{}", item["id"].as_str().unwrap()),
            &server.token,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        server.blob_files().is_empty(),
        "bytes of deleted items are gone"
    );

    // The task list still knows the task; forgetting it is a 204.
    let (_, list) = server.get_json("/tasks?state=SUCCESS", &server.token).await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1);
    let res = server
        .req(
            Method::DELETE,
            &format!("/tasks/{}", started["task_id"].as_str().unwrap()),
            &server.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // A forgotten task is gone from the status path too (which answers from memory).
    let gone = server
        .http
        .get(server.api(&format!(
            "/tasks/{}/status",
            started["task_id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

pub async fn json_post(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    let res = server
        .req(Method::POST, path, &server.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    crate::helpers::json_of(res).await
}
