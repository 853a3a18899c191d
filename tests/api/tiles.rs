//! Map tiles through the real server: pixel for pixel what rio-tiler (the library behind
//! TiTiler) draws from the same COG and parameters (tests/tiles/compare.py), caching with a
//! strong ETag, and refusals with a sentence.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

/// Converts `file` and returns (the output item's id, its COG downloaded to a temp file).
async fn cog_of(server: &TestServer, file: &Path) -> (String, tempfile::NamedTempFile) {
    let done = server.convert_file(file, json!({})).await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    let item = done["result"]["tree_item_id"].as_str().unwrap().to_owned();
    let cog = download(server, &item).await;
    (item, cog)
}

/// A Float32 copy of RGB.byte.tif's first band whose nodata (0) became NaN.
fn float_with_nan() -> std::path::PathBuf {
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tiles-float-nan.tif");
    if !path.exists() {
        let band = generated_raster(
            "tiles-float-band.tif",
            "RGB.byte.tif",
            &["-b", "1", "-ot", "Float32"],
        );
        let partial = path.with_extension(format!("{}.part.tif", uuid::Uuid::new_v4().simple()));
        let status = std::process::Command::new("gdalwarp")
            .args(["-q", "-srcnodata", "0", "-dstnodata", "nan"])
            .arg(&band)
            .arg(&partial)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::rename(&partial, &path).unwrap();
    }
    path
}

/// RGB.byte.tif's first band (nodata 0) with a colour table of its own, some entries half
/// transparent: a paletted file, as classified land cover comes.
fn paletted() -> std::path::PathBuf {
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tiles-paletted.tif");
    if !path.exists() {
        let vrt = path.with_extension(format!("{}.vrt", uuid::Uuid::new_v4().simple()));
        gdal_translate(&[
            "-of",
            "VRT",
            "-b",
            "1",
            data("RGB.byte.tif").to_str().unwrap(),
            vrt.to_str().unwrap(),
        ]);
        let entries: String = (0..256)
            .map(|i| {
                let alpha = if i % 5 == 0 { 128 } else { 255 };
                format!(
                    "<Entry c1=\"{i}\" c2=\"{}\" c3=\"{}\" c4=\"{alpha}\"/>",
                    (i * 3) % 256,
                    255 - i
                )
            })
            .collect();
        let xml = std::fs::read_to_string(&vrt).unwrap().replace(
            "<ColorInterp>Red</ColorInterp>",
            &format!("<ColorInterp>Palette</ColorInterp><ColorTable>{entries}</ColorTable>"),
        );
        assert!(xml.contains("<ColorTable>"), "{xml}");
        std::fs::write(&vrt, xml).unwrap();
        let partial = path.with_extension(format!("{}.part.tif", uuid::Uuid::new_v4().simple()));
        gdal_translate(&[vrt.to_str().unwrap(), partial.to_str().unwrap()]);
        std::fs::rename(&partial, &path).unwrap();
        let _ = std::fs::remove_file(&vrt);
    }
    path
}

#[tokio::test]
async fn tiles_are_what_rio_tiler_draws_pixel_for_pixel() {
    let server = TestServer::start().await;
    let (rgb, rgb_cog) = cog_of(&server, &data("RGB.byte.tif")).await;
    let (gray, gray_cog) = cog_of(&server, &data("byte.tif")).await;
    let (float, float_cog) = cog_of(&server, &float_with_nan()).await;
    let (classes, classes_cog) = cog_of(&server, &paletted()).await;
    let path = |f: &tempfile::NamedTempFile| f.path().to_str().unwrap().to_owned();
    let tilejson = |item: &str| {
        let path = format!("/tree-items/{item}/WebMercatorQuad/tilejson.json");
        let server = &server;
        async move {
            let (code, doc) = server.get_json(&path, &server.token).await;
            assert_eq!(code, StatusCode::OK, "{doc}");
            doc
        }
    };
    let (rgb_json, gray_json, float_json) = (
        tilejson(&rgb).await,
        tilejson(&gray).await,
        tilejson(&float).await,
    );
    let cases = json!([
        {"name": "rgb", "item": rgb, "path": path(&rgb_cog), "zooms": [7, 8, 9, 10], "tilesize": 256, "query": "", "tilejson": rgb_json},
        {"name": "rgb @2x", "item": rgb, "path": path(&rgb_cog), "zooms": [8], "tilesize": 512, "query": ""},
        {"name": "rgb without its mask", "item": rgb, "path": path(&rgb_cog), "zooms": [9],
         "tilesize": 256, "query": "return_mask=false"},
        {"name": "rgb, bands reordered", "item": rgb, "path": path(&rgb_cog), "zooms": [8, 9],
         "tilesize": 256, "query": "bidx=3,2,1"},
        {"name": "gray stretched through viridis", "item": gray, "path": path(&gray_cog), "zooms": [15],
         "tilesize": 256, "query": "rescale=20,200&colormap_name=viridis"},
        {"name": "rgb, stretched per band", "item": rgb, "path": path(&rgb_cog), "zooms": [9],
         "tilesize": 256, "query": "rescale=0,100&rescale=20,200&rescale=50,255"},
        {"name": "gray", "item": gray, "path": path(&gray_cog), "zooms": [14, 16], "tilesize": 256, "query": "", "tilejson": gray_json},
        {"name": "gray with a nodata of its own", "item": gray, "path": path(&gray_cog), "zooms": [16],
         "tilesize": 256, "query": "nodata=107"},
        {"name": "float with NaN, stretched", "item": float, "path": path(&float_cog), "zooms": [8, 10],
         "tilesize": 256, "query": "rescale=10,200", "tilejson": float_json},
        {"name": "float with NaN through terrain", "item": float, "path": path(&float_cog), "zooms": [9],
         "tilesize": 256, "query": "rescale=10,200&colormap_name=terrain"},
        {"name": "paletted, its own colours", "item": classes, "path": path(&classes_cog), "zooms": [8, 10],
         "tilesize": 256, "query": ""},
        {"name": "paletted through a named colormap", "item": classes, "path": path(&classes_cog), "zooms": [9],
         "tilesize": 256, "query": "colormap_name=viridis"},
        {"name": "preview of paletted", "item": classes, "path": path(&classes_cog), "max_size": 512, "query": ""},
        {"name": "preview of rgb", "item": rgb, "path": path(&rgb_cog), "max_size": 1024, "query": ""},
        {"name": "preview of rgb, fitted to 256", "item": rgb, "path": path(&rgb_cog), "max_size": 256, "query": ""},
        {"name": "preview of float with NaN through viridis", "item": float, "path": path(&float_cog), "max_size": 1024,
         "query": "rescale=10,200&colormap_name=viridis"},
    ]);
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(test_python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tiles/compare.py"))
            .args([&server.url, &server.token, &cases.to_string()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the comparison ends")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the comparison failed:\n{stderr}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Four previews, and two tiles per zoom: the centre, and one beside the data.
    assert_eq!(lines.len(), 4 + 2 * 19, "{lines:#?}");
    let mut drawn = 0;
    for line in &lines {
        // Nearest resampling, rio-tiler's overview choice and its truncating stretch are
        // reproduced exactly. The tolerance: at most 0.1 % of a tile's pixels may differ, for
        // pixels on the data's very edge, where GDAL 3.6 (ours) and 3.10 (in rasterio's wheel)
        // round the footprint differently.
        let differing = line["differing"].as_f64().unwrap();
        assert!(differing <= 0.001, "{line}");
        if line["shown"].as_f64().unwrap() > 0.0 {
            drawn += 1;
        }
    }
    assert!(
        drawn >= 23,
        "every preview and centre tile shows data: {lines:#?}"
    );
}

#[tokio::test]
async fn tiles_are_cached_revalidated_and_refused_with_a_sentence() {
    let server = TestServer::start().await;
    let item = server.upload(&data("RGB.byte.tif")).await;
    let done = server.convert(&item, json!({})).await;
    let done = server.wait_final(&task_id(&done)).await;
    let cog = done["result"]["tree_item_id"].as_str().unwrap().to_owned();
    let url = |tail: &str| format!("/tree-items/{cog}/tiles/WebMercatorQuad/{tail}");

    let res = server
        .req(Method::GET, &url("8/72/109.png"), &server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "image/png");
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    assert!(res.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("private"));
    let first = res.bytes().await.unwrap();
    assert_eq!(&first[1..4], b"PNG");
    // The same tile again is the same bytes; with its ETag, a 304.
    let again = server
        .req(Method::GET, &url("8/72/109.png"), &server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.bytes().await.unwrap(), first);
    let revalidated = server
        .req(Method::GET, &url("8/72/109.png"), &server.token)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
    // Other parameters are another tile, with another ETag; the formats are what they say.
    for (tail, kind, magic) in [
        ("8/72/109.webp", "image/webp", &b"RIFF"[..]),
        ("8/72/109.jpg", "image/jpeg", &[0xff, 0xd8][..]),
        (
            "8/72/109.png?bidx=1&colormap_name=magma&rescale=0,255",
            "image/png",
            &b"\x89PNG"[..],
        ),
    ] {
        let res = server
            .req(Method::GET, &url(tail), &server.token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{tail}");
        assert_eq!(res.headers()["content-type"], kind);
        assert_ne!(res.headers()["etag"].to_str().unwrap(), etag);
        assert!(res.bytes().await.unwrap().starts_with(magic), "{tail}");
    }

    // Refusals, each a 422 with a sentence; another user's COG is not there at all.
    for (tail, says) in [
        ("8/256/0.png", "no tile"),
        ("25/0/0.png", "Zoom levels"),
        ("8/72/109.gif", "png"),
        ("8/72/109.png?rescale=9,1", "below"),
        ("8/72/109.png?colormap_name=nope", "viridis"),
        ("8/72/109.png?bidx=4", "3 bands"),
        ("8/72/109.png?tilesize=300", "256 or 512"),
        ("8/72/109.png?colour=red", "not a tile parameter"),
    ] {
        let (code, body) = server.get_json(&url(tail), &server.token).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{tail}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(says),
            "{tail}: {body}"
        );
    }
    let source = item["id"].as_str().unwrap();
    let (code, body) = server
        .get_json(
            &format!("/tree-items/{source}/tiles/WebMercatorQuad/8/72/109.png"),
            &server.token,
        )
        .await;
    assert_eq!(
        code,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the upload is no COG: {body}"
    );
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("convert it first"));
    let other = server.token_for("other").await;
    let (code, _) = server.get_json(&url("8/72/109.png"), &other).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let res = server
        .http
        .get(server.api(&url("8/72/109.png")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // A TileJSON's tile URLs work with no header at all (map libraries, QGIS), carry the
    // drawing parameters, and open this file only.
    let (code, doc) = server
        .get_json(
            &format!("/tree-items/{cog}/WebMercatorQuad/tilejson.json?bidx=1&rescale=0,200&colormap_name=terrain&tile_scale=2&tile_format=webp"),
            &server.token,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{doc}");
    assert_eq!(doc["tilejson"], "3.0.0");
    assert_eq!(
        (doc["minzoom"].as_u64(), doc["maxzoom"].as_u64()),
        (Some(7), Some(9))
    );
    let template = doc["tiles"][0].as_str().unwrap();
    assert!(
        template.contains("{z}/{x}/{y}@2x.webp?") && template.contains("colormap_name=terrain"),
        "{template}"
    );
    let tile = template
        .replace("{z}", "8")
        .replace("{x}", "72")
        .replace("{y}", "109");
    let res = reqwest::get(&tile).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "image/webp");
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "*",
        "a page on any site may draw a linked tile (MapLibre fetches with CORS)"
    );
    let own = server
        .req(Method::GET, &url("8/72/109.png"), &server.token)
        .send()
        .await
        .unwrap();
    assert!(
        own.headers().get("access-control-allow-origin").is_none(),
        "not a tile read with the owner's credentials"
    );

    // The TileJSON (and the WMTS document) opened by the same link, with no header: what a
    // MapLibre page or QGIS is given. Its tiles carry that link, never a longer-lived one.
    let link = url::Url::parse(&tile)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "link")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let linked = server.api(&format!(
        "/tree-items/{cog}/WebMercatorQuad/tilejson.json?colormap_name=viridis&bidx=2&link={link}"
    ));
    let res = reqwest::get(&linked).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let doc: Value = res.json().await.unwrap();
    let tiles = doc["tiles"][0].as_str().unwrap();
    assert!(
        tiles.contains(&format!("link={link}")) && tiles.contains("colormap_name=viridis"),
        "{tiles}"
    );
    let drawn = reqwest::get(
        tiles
            .replace("{z}", "8")
            .replace("{x}", "72")
            .replace("{y}", "109"),
    )
    .await
    .unwrap();
    assert_eq!(drawn.status(), StatusCode::OK);
    let res = reqwest::get(linked.replace("WebMercatorQuad/tilejson.json", "WMTSCapabilities.xml"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains(&link));
    let res = reqwest::get(format!("{linked}&expires_in=604800"))
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "a link cannot lengthen itself"
    );
    let res = reqwest::get(linked.replacen("link=", "link=0", 1))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = reqwest::get(linked.replace(&cog, source)).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "its own file only");

    let tampered = tile.replacen("link=", "link=0", 1);
    assert_eq!(
        reqwest::get(&tampered).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let elsewhere = tile.replace(&cog, source);
    let res = reqwest::get(&elsewhere).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "a link opens its own file only"
    );
    let (code, body) = server
        .get_json(
            &format!("/tree-items/{cog}/WebMercatorQuad/tilejson.json?expires_in=0"),
            &server.token,
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test]
async fn stac_items_validate_and_agree_with_rio_stac_and_statistics_with_rio_tiler() {
    let server = TestServer::start().await;
    let mut cases = Vec::new();
    let mut files = Vec::new();
    for (name, file) in [
        ("rgb", data("RGB.byte.tif")),
        ("gray", data("byte.tif")),
        ("hillshade in web mercator", data("shade.tif")),
        ("float with NaN", float_with_nan()),
        // Larger than the 1024 px statistics read: decimated through an overview, as rio-tiler.
        (
            "rgb at 2500 px",
            generated_raster(
                "rgb-2500.tif",
                "RGB.byte.tif",
                &["-outsize", "2500", "2500"],
            ),
        ),
    ] {
        let (item, cog) = cog_of(&server, &file).await;
        cases.push(json!({"name": name, "item": item, "path": cog.path().to_str().unwrap()}));
        files.push(cog);
    }
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(test_python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stac/check.py"))
            .args([&server.url, &server.token, &json!(cases).to_string()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the check ends")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the check failed:\n{stderr}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    for line in &lines {
        assert_eq!(line["problems"], json!([]), "{line:#}");
    }

    // Refusals: an upload that is no COG, a COG with no CRS, another user's item.
    let upload = server.upload(&data("byte.tif")).await;
    let id = upload["id"].as_str().unwrap();
    let (code, body) = server
        .get_json(&format!("/tree-items/{id}/stac"), &server.token)
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (nowhere, _) = cog_of(&server, &data("float_nan.tif")).await;
    let (code, body) = server
        .get_json(&format!("/tree-items/{nowhere}/stac"), &server.token)
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("no CRS"),
        "{body}"
    );
    let (code, stats) = server
        .get_json(&format!("/tree-items/{nowhere}/statistics"), &server.token)
        .await;
    assert_eq!(code, StatusCode::OK, "statistics need no CRS: {stats}");
    let other = server.token_for("other").await;
    let rgb = cases[0]["item"].as_str().unwrap();
    for route in ["stac", "info", "statistics"] {
        let (code, _) = server
            .get_json(&format!("/tree-items/{rgb}/{route}"), &other)
            .await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{route}");
    }
}

#[tokio::test]
async fn gdal_reads_the_wmts_layer_and_previews_answer_as_tiles_do() {
    let server = TestServer::start().await;
    let (cog, _) = cog_of(&server, &data("RGB.byte.tif")).await;
    let res = server
        .req(
            Method::GET,
            &format!("/tree-items/{cog}/WMTSCapabilities.xml"),
            &server.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/xml");
    let xml = res.text().await.unwrap();
    assert!(
        xml.contains("<TileMatrixSet>WebMercatorQuad</TileMatrixSet>"),
        "{xml}"
    );
    assert!(xml.contains("GoogleMapsCompatible"));
    // GDAL's WMTS driver (what QGIS uses) opens the layer from the document alone, and reads
    // pixels through its tile URLs, which carry their own credentials.
    let dir = tempfile::tempdir().unwrap();
    let caps = dir.path().join("caps.xml");
    std::fs::write(&caps, &xml).unwrap();
    let png = dir.path().join("wmts.png");
    let out = tokio::process::Command::new("gdal_translate")
        .args([
            "-q", "-of", "PNG", "-outsize", "256", "0", "-projwin", "-78.9", "25.5", "-76.6",
            "23.6",
        ])
        .args(["-projwin_srs", "EPSG:4326"])
        .arg(format!("WMTS:{},zoom_level=8", caps.display()))
        .arg(&png)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        // GDAL keeps a tile cache (gdalwmscache) in the folder it runs in.
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = tokio::process::Command::new("gdalinfo")
        .arg(format!("WMTS:{}", caps.display()))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("Band 3"), "{text}");
    let image = gdal::Dataset::open(&png).unwrap();
    let band = image.rasterband(1).unwrap();
    let values = band
        .read_as::<u8>((0, 0), band.size(), band.size(), None)
        .unwrap();
    let drawn = values.data().iter().filter(|v| **v > 0).count();
    assert!(
        drawn * 4 > values.data().len(),
        "GDAL read mostly nothing: {drawn}"
    );

    // A point: the values TiTiler answers for the same file and place; outside, a sentence.
    let (code, point) = server
        .get_json(
            &format!("/tree-items/{cog}/point/-77.5,24.5"),
            &server.token,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{point}");
    assert_eq!(point["values"], json!([19.0, 23.0, 27.0]));
    assert_eq!(point["coordinates"], json!([-77.5, 24.5]));
    let (code, body) = server
        .get_json(&format!("/tree-items/{cog}/point/10,10"), &server.token)
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("outside"));
    let (code, _) = server
        .get_json(&format!("/tree-items/{cog}/point/200,0"), &server.token)
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);

    // Previews: PNG, sized as asked, refusing a size out of range.
    let res = server
        .req(
            Method::GET,
            &format!("/tree-items/{cog}/preview.png?max_size=256"),
            &server.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "image/png");
    let (code, body) = server
        .get_json(
            &format!("/tree-items/{cog}/preview.png?max_size=0"),
            &server.token,
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}
