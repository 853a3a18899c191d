//! The OpenAPI document as tools see it: a spec validator, generators keyed by operationId,
//! and clients generated from it (openapi-python-client; openapi-typescript with
//! openapi-fetch) running the examples in `examples/` against the real server.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn document(server: &TestServer) -> Value {
    let res = server
        .http
        .get(server.api("/openapi.json"))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    res.json().await.unwrap()
}

/// Every operation of the document: (method, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if METHODS.contains(&method.as_str()) {
                all.push((method.clone(), path.clone(), op.clone()));
            }
        }
    }
    all
}

/// lowerCamelCase of at least two words: a verb and what it acts on (`listTasks`).
fn descriptive(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_lowercase())
        && id.chars().all(|c| c.is_ascii_alphanumeric())
        && id.chars().any(|c| c.is_ascii_uppercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_has_a_unique_descriptive_id() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let mut seen = std::collections::BTreeMap::new();
    for (method, path, op) in operations(&doc) {
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(
            descriptive(id),
            "{method} {path}: operationId {id:?} is not lowerCamelCase of a verb and a noun"
        );
        if let Some(other) = seen.insert(id.to_string(), format!("{method} {path}")) {
            panic!("operationId {id:?} is used by {other} and by {method} {path}");
        }
    }
    // The names generated clients call: changing one breaks every client generated before.
    for (id, route) in [
        ("listTasks", "get /api/v1/tasks"),
        ("listTreeItems", "get /api/v1/tree-items"),
        ("uploadFile", "post /api/v1/tree-items"),
        (
            "startConversion",
            "post /api/v1/tree-items/{id}/convert-to-geo-raster",
        ),
        ("getTaskStatus", "get /api/v1/tasks/{id}/status"),
        ("cancelTask", "post /api/v1/tasks/{id}/cancel"),
        ("getTreeItemContent", "get /api/v1/tree-items/{id}/content"),
    ] {
        assert_eq!(seen.get(id).map(String::as_str), Some(route), "{id}");
    }
}

/// A body is optional only as `required: false` with a schema that is not `null`: generators
/// then send nothing when the caller gives nothing, instead of a `null` or their own "unset"
/// marker. Every body says which it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_body_is_one_a_generator_may_leave_out() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let mut optional = Vec::new();
    for (method, path, op) in operations(&doc) {
        let Some(body) = op.get("requestBody") else {
            continue;
        };
        let required = body["required"]
            .as_bool()
            .unwrap_or_else(|| panic!("{method} {path}: the body says neither required nor not"));
        for (media, content) in body["content"].as_object().unwrap() {
            let schema = content["schema"].to_string();
            assert!(
                !schema.contains(r#"{"type":"null"}"#) && !schema.contains(r#""null""#),
                "{method} {path} {media}: a body schema that admits null: {schema}"
            );
        }
        if !required {
            optional.push(format!("{method} {path}"));
        }
    }
    assert_eq!(
        optional,
        [
            "post /api/v1/tasks/{id}/retry",
            "post /api/v1/tree-items/{id}/convert-to-geo-raster",
            "post /api/v1/tree-items/{id}/links",
            "post /api/v1/uploads",
            "post /api/v1/webhooks/callback-secret/rotate",
            "post /api/v1/webhooks/{id}/rotate-secret",
        ]
    );

    // And the server means it: such a route takes no body, as the generated clients send, and
    // still takes `null` as "no options", as the README promises older clients.
    let item = server.upload(&data("byte.tif")).await;
    let id = item["id"].as_str().unwrap();
    for route in ["convert-to-geo-raster", "links"] {
        for body in [None, Some("null")] {
            let mut req = server
                .req(
                    reqwest::Method::POST,
                    &format!("/tree-items/{id}/{route}"),
                    &server.token,
                )
                .timeout(REQUEST_TIMEOUT);
            if let Some(body) = body {
                req = req.header("content-type", "application/json").body(body);
            }
            let res = req.send().await.unwrap();
            assert_eq!(
                res.status(),
                reqwest::StatusCode::OK,
                "{route} with {body:?}"
            );
        }
    }
}

/// The document as served, in a file for the tools below.
async fn document_file(server: &TestServer, dir: &Path) -> PathBuf {
    let file = dir.join("openapi.json");
    std::fs::write(&file, document(server).await.to_string()).unwrap();
    file
}

/// A folder of its own under `target/generated-clients`, removed when dropped.
fn throwaway() -> tempfile::TempDir {
    let parent = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/generated-clients");
    std::fs::create_dir_all(&parent).unwrap();
    tempfile::tempdir_in(parent).unwrap()
}

async fn run(what: &str, command: &mut tokio::process::Command) -> Output {
    command.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not end in 5 minutes"))
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_passes_openapi_spec_validator() {
    let server = TestServer::start().await;
    let dir = throwaway();
    let file = document_file(&server, dir.path()).await;
    let out = run(
        "openapi-spec-validator",
        tokio::process::Command::new(test_python())
            .args(["-m", "openapi_spec_validator"])
            .arg(&file),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// What both examples print last, checked against the server: the task ended in SUCCESS with
/// an output item, the list holds the task, and the range read is the COG's first 16 bytes.
async fn check_example_output(server: &TestServer, out: &Output) {
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    assert!(n >= 3, "{text}");
    let done: Vec<&str> = lines[n - 3].split_whitespace().collect();
    assert_eq!(done[0], "SUCCESS", "{text}");
    let output = done[1];
    let (code, item) = server
        .get_json(&format!("/tree-items/{output}"), &server.token)
        .await;
    assert_eq!(code, reqwest::StatusCode::OK, "{item}");
    assert_eq!(item["name"], "RGB.byte.cog.tif");
    let (_, page) = server.get_json("/tasks", &server.token).await;
    let task = page["tasks"][0]["task_id"].as_str().unwrap();
    assert!(
        lines[n - 2].starts_with("tasks:") && lines[n - 2].contains(task),
        "{text}"
    );
    let size = item["size"].as_u64().unwrap();
    assert_eq!(
        lines[n - 1],
        format!("206 bytes 0-15/{size} 49492a00"),
        "a little-endian TIFF's first four bytes: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_runs_the_polling_example() {
    let server = TestServer::start().await;
    let dir = throwaway();
    let file = document_file(&server, dir.path()).await;
    let python = test_python();
    let venv_bin = python.parent().unwrap().to_path_buf();
    // The generator formats its output with ruff, which it finds on PATH.
    let path = format!(
        "{}:{}",
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let client = dir.path().join("client");
    let out = run(
        "openapi-python-client",
        tokio::process::Command::new(venv_bin.join("openapi-python-client"))
            .args(["generate", "--path"])
            .arg(&file)
            .arg("--output-path")
            .arg(&client)
            .env("PATH", &path),
    )
    .await;
    // What the generator could not take. It skips the two tus routes, whose
    // `application/offset+octet-stream` it does not know (a tus client is the way to them), and
    // leaves untyped the responses that are not JSON (tiles, XML, metrics), which its calls
    // still return as bytes. Anything else it says is the document's fault.
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut skipped = Vec::new();
    for line in said.lines() {
        let known = line.is_empty()
            || line.starts_with([' ', '{', '}'])
            || line.starts_with("Generating ")
            || line.starts_with("Warning(s) encountered while generating")
            || line.starts_with("If you believe this was a mistake")
            || line == "Unsupported content type application/offset+octet-stream";
        if let Some(op) = line.strip_prefix("WARNING parsing ") {
            if let Some(op) = op.strip_suffix(". Endpoint will not be generated.") {
                skipped.push(op.split(" within ").next().unwrap().to_string());
            }
        } else if line.starts_with("Cannot parse response") {
            assert!(
                line.contains("Unsupported content_type") && !line.contains("json"),
                "the generator cannot read a JSON response: {line}\n{said}"
            );
        } else {
            assert!(known, "the generator said: {line}\n{said}");
        }
    }
    assert_eq!(
        skipped,
        ["POST /api/v1/uploads", "PATCH /api/v1/uploads/{id}"],
        "{said}"
    );

    let out = run(
        "examples/python/poll.py",
        tokio::process::Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/poll.py"))
            .args([&server.url, &server.token])
            .arg(data("RGB.byte.tif"))
            .env("PYTHONPATH", &client),
    )
    .await;
    check_example_output(&server, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_typescript_client_runs_the_polling_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let modules = root.join("node_modules");
    assert!(
        modules.join("openapi-typescript").is_dir() && modules.join("typescript").is_dir(),
        "the npm packages are missing: run scripts/setup.sh --browser"
    );
    let server = TestServer::start().await;
    let dir = throwaway();
    let file = document_file(&server, dir.path()).await;
    // Under the repository, so that `openapi-fetch` resolves from its node_modules.
    std::fs::write(dir.path().join("package.json"), r#"{"type": "module"}"#).unwrap();
    std::fs::copy(
        root.join("examples/typescript/poll.ts"),
        dir.path().join("poll.ts"),
    )
    .unwrap();
    run(
        "openapi-typescript",
        tokio::process::Command::new("node")
            .arg(modules.join("openapi-typescript/bin/cli.js"))
            .arg(&file)
            .arg("-o")
            .arg(dir.path().join("rastercast.d.ts")),
    )
    .await;
    // Type-checked against the generated types: a document change that breaks the example's
    // calls fails here, before anything runs.
    run(
        "tsc",
        tokio::process::Command::new("node")
            .arg(modules.join("typescript/bin/tsc"))
            .args([
                "--strict", "--module", "nodenext", "--target", "es2022", "poll.ts",
            ])
            .current_dir(dir.path()),
    )
    .await;
    let out = run(
        "examples/typescript/poll.ts",
        tokio::process::Command::new("node")
            .arg("poll.js")
            .args([&server.url, &server.token])
            .arg(data("RGB.byte.tif"))
            .current_dir(dir.path()),
    )
    .await;
    check_example_output(&server, &out).await;
}
