//! Shareable links: a file opens with no credentials (curl, GDAL's `/vsicurl/`) until the link
//! expires, with ranges and ETags; a changed, expired or rotated link is a 403.

use std::time::Duration;

use reqwest::header::{ETAG, IF_NONE_MATCH, RANGE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{data, download, eventually, gdalinfo, json_of, TestServer};

/// A converted COG and its item id.
async fn converted(server: &TestServer) -> String {
    let status = server.convert_file(&data("RGB.byte.tif"), json!({})).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    status["result"]["tree_item_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn url_of(link: &Value) -> String {
    link["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no url: {link}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_opens_the_file_with_no_credentials_and_honours_ranges() {
    let server = TestServer::start().await;
    let output = converted(&server).await;
    let (code, link) = server.link(&server.token, &output, None).await;
    assert_eq!(code, StatusCode::OK, "{link}");
    let url = url_of(&link);
    assert!(
        url.starts_with(&server.url),
        "an absolute URL on this server: {url}"
    );
    assert!(
        url.ends_with("/RGB.byte.cog.tif"),
        "the file's name ends it: {url}"
    );
    let expires = crate::helpers::time_of(&link["expires_at"]);
    let hour = (expires - chrono::Utc::now()).num_seconds();
    assert!(
        (3590..=3600).contains(&hour),
        "an hour by default: {hour} s"
    );

    // No header at all: the bytes are the file's.
    let plain = reqwest::Client::new();
    let res = plain.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let etag = res.headers()[ETAG].clone();
    let whole = res.bytes().await.unwrap();
    let file = download(&server, &output).await;
    assert_eq!(
        whole.as_ref(),
        std::fs::read(file.path()).unwrap().as_slice()
    );

    let res = plain
        .get(&url)
        .header(RANGE, "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.bytes().await.unwrap().as_ref(), &whole[..100]);
    let past = format!("bytes={}-", whole.len());
    let res = plain.get(&url).header(RANGE, past).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let res = plain
        .get(&url)
        .header(IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    let res = plain.head(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["content-length"],
        whole.len().to_string().as_str()
    );

    // GDAL reads it in place, from a shell with no settings, and probes no side file loudly.
    let out = gdalinfo(&format!("/vsicurl/{url}")).await;
    let text = String::from_utf8_lossy(&out.stdout);
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{warnings}");
    assert!(text.contains("LAYOUT=COG"), "{text}");
    assert!(text.contains("Size is 791, 718"), "{text}");
    assert!(warnings.trim().is_empty(), "GDAL warned: {warnings}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_expired_or_rotated_link_is_refused() {
    let server = TestServer::start().await;
    let output = converted(&server).await;
    let plain = reqwest::Client::new();
    let (_, link) = server.link(&server.token, &output, None).await;
    let url = url_of(&link);

    // Changed: another expiry, another item, another signature.
    let (base, name) = url.rsplit_once('/').unwrap();
    let (head, signature) = base.rsplit_once('.').unwrap();
    let mut flipped = signature.to_string();
    let last = if flipped.ends_with('0') { "1" } else { "0" };
    flipped.replace_range(flipped.len() - 1.., last);
    for changed in [
        format!("{head}.{flipped}/{name}"),
        url.replacen(".17", ".27", 1),
    ] {
        let (code, body) = json_of(plain.get(&changed).send().await.unwrap()).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{changed}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("not valid"),
            "{body}"
        );
    }
    // The right signature with another name (a side file GDAL looks for) is a quiet 404.
    let (code, _) = json_of(plain.get(format!("{url}.aux.xml")).send().await.unwrap()).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // Expired.
    let (_, short) = server
        .link(&server.token, &output, Some(json!({"expires_in": 1})))
        .await;
    let short = url_of(&short);
    let body = eventually(
        "the short link to expire",
        Duration::from_secs(10),
        || async {
            let res = plain.get(&short).send().await.unwrap();
            if res.status() != StatusCode::FORBIDDEN {
                return None;
            }
            Some(json_of(res).await.1)
        },
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    // Rotating the key voids every link given out, and new links work.
    assert_eq!(
        plain.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    server.rotate_link_key().await;
    eventually(
        "the rotated key to reach the server",
        Duration::from_secs(15),
        || async {
            (plain.get(&url).send().await.unwrap().status() == StatusCode::FORBIDDEN).then_some(())
        },
    )
    .await;
    let (_, fresh) = server.link(&server.token, &output, None).await;
    let fresh = url_of(&fresh);
    assert_eq!(
        plain.get(&fresh).send().await.unwrap().status(),
        StatusCode::OK
    );

    // A deleted file's link opens nothing.
    let (code, _) = server
        .get_json(&format!("/tree-items/{output}"), &server.token)
        .await;
    assert_eq!(code, StatusCode::OK);
    let res = server
        .req(
            reqwest::Method::DELETE,
            &format!("/tree-items/{output}"),
            &server.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let (code, _) = json_of(plain.get(&fresh).send().await.unwrap()).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_links_a_file_and_only_for_up_to_a_week() {
    let server = TestServer::start().await;
    let item = server.upload(&data("byte.tif")).await;
    let id = item["id"].as_str().unwrap();
    let other = server.token_for("other").await;
    let (code, body) = server.link(&other, id, None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    for expires_in in [0, 604_801] {
        let (code, body) = server
            .link(&server.token, id, Some(json!({ "expires_in": expires_in })))
            .await;
        assert_eq!(
            code,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{expires_in}: {body}"
        );
    }
    let (code, week) = server
        .link(&server.token, id, Some(json!({"expires_in": 604_800})))
        .await;
    assert_eq!(code, StatusCode::OK, "{week}");
    let folder = server
        .req(reqwest::Method::POST, "/tree-items/folders", &server.token)
        .json(&json!({"name": "f"}))
        .send()
        .await
        .unwrap();
    let (_, folder) = json_of(folder).await;
    let (code, body) = server
        .link(&server.token, folder["id"].as_str().unwrap(), None)
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_names_the_server_as_its_clients_reach_it() {
    // Behind a TLS proxy, the scheme the proxy says.
    let server = TestServer::start().await;
    let item = server.upload(&data("byte.tif")).await;
    let id = item["id"].as_str().unwrap();
    let res = server
        .req(
            reqwest::Method::POST,
            &format!("/tree-items/{id}/links"),
            &server.token,
        )
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let (code, link) = json_of(res).await;
    assert_eq!(code, StatusCode::OK, "{link}");
    let host = server.url.trim_start_matches("http://");
    assert!(
        url_of(&link).starts_with(&format!("https://{host}/api/v1/links/")),
        "{link}"
    );

    // With --public-url, that address, whatever the request's Host.
    let public = TestServer::start_with(&["--public-url", "https://maps.example.org/"]).await;
    let item = public.upload(&data("byte.tif")).await;
    let (code, link) = public
        .link(&public.token, item["id"].as_str().unwrap(), None)
        .await;
    assert_eq!(code, StatusCode::OK, "{link}");
    assert!(
        url_of(&link).starts_with("https://maps.example.org/api/v1/links/"),
        "{link}"
    );
}
