//! Starting the real `rastercast` binary on port 0 and talking to it as clients do.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_rastercast");

/// The sample rasters shared with the rest of the project.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(name)
}

/// Longest a one-shot request (status, upload, metrics…) may take, answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The tests' HTTP client: a server that hangs fails the test instead of hanging it. Connects
/// time out after 10 s, and any response, streamed or not, after 60 s without a byte (event
/// streams send a keep-alive every 15 s at most). Streams have no total limit; one-shot
/// requests through the helpers below also have [`REQUEST_TIMEOUT`] in all.
pub fn http_client() -> Client {
    Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

pub struct TestServer {
    child: Option<Child>,
    pub url: String,
    /// The admin token printed on first start.
    pub token: String,
    /// Shared by the nodes of a cluster ([`TestServer::join`]).
    pub dir: std::sync::Arc<TempDir>,
    args: Vec<String>,
    /// A command the server runs under (e.g. one that mounts a small disk first).
    wrapper: Vec<String>,
    /// Environment variables set for the server.
    env: Vec<(String, String)>,
    pub http: Client,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(&[]).await
    }

    pub async fn start_with(args: &[&str]) -> TestServer {
        Self::start_wrapped(&[], args, Vec::new()).await
    }

    /// Starts the server with `env` set in its environment (its workers inherit it).
    pub async fn start_with_env(
        args: &[&str],
        env: &[(impl AsRef<str>, impl AsRef<str>)],
    ) -> TestServer {
        Self::start_wrapped(&[], args, owned(env)).await
    }

    /// Starts the server with its data dir on a disk of `mb` MiB (a tmpfs in a mount namespace
    /// of its own, made by `unshare`, so no privileges are needed). The disk lives as long as
    /// the process: look at it through [`TestServer::view`].
    pub async fn start_on_small_disk(mb: u32, args: &[&str]) -> TestServer {
        Self::start_on_small_disk_with_env(mb, args, &[] as &[(&str, &str)]).await
    }

    /// [`TestServer::start_on_small_disk`], with `env` set for the server.
    pub async fn start_on_small_disk_with_env(
        mb: u32,
        args: &[&str],
        env: &[(impl AsRef<str>, impl AsRef<str>)],
    ) -> TestServer {
        let mount = format!("mount -t tmpfs -o size={mb}m tmpfs \"$0\" && exec \"$@\"");
        let wrapper = ["unshare", "--mount", "--map-root-user", "sh", "-c", &mount];
        Self::start_wrapped(&wrapper, args, owned(env)).await
    }

    async fn start_wrapped(
        wrapper: &[&str],
        args: &[&str],
        env: Vec<(String, String)>,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let wrapper: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        let (child, url, token) = spawn(dir.path(), &args, &wrapper, &env).await;
        TestServer {
            child: Some(child),
            url,
            token: token.expect("first start prints the admin token"),
            dir: std::sync::Arc::new(dir),
            args,
            wrapper,
            env,
            http: http_client(),
        }
    }

    /// `n` servers started at the same moment on one data dir, each with `args` (a database
    /// among them), and how many of them printed an admin token.
    pub async fn start_together(n: usize, args: &[&str]) -> (Vec<TestServer>, usize) {
        let dir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let started =
            futures_util::future::join_all((0..n).map(|_| spawn(dir.path(), &args, &[], &[])))
                .await;
        let tokens: Vec<String> = started.iter().filter_map(|(_, _, t)| t.clone()).collect();
        let token = tokens
            .first()
            .expect("one node prints the admin token")
            .clone();
        let servers = started
            .into_iter()
            .map(|(child, url, _)| TestServer {
                child: Some(child),
                url,
                token: token.clone(),
                dir: dir.clone(),
                args: args.clone(),
                wrapper: Vec::new(),
                env: Vec::new(),
                http: http_client(),
            })
            .collect();
        (servers, tokens.len())
    }

    /// Another node beside this one: the same data dir, `args` (its database among them).
    pub async fn join(&self, args: &[&str]) -> TestServer {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, url, _) = spawn(self.dir.path(), &args, &[], &[]).await;
        TestServer {
            child: Some(child),
            url,
            token: self.token.clone(),
            dir: self.dir.clone(),
            args,
            wrapper: Vec::new(),
            env: Vec::new(),
            http: http_client(),
        }
    }

    /// Another node with a data dir of its own: nodes on object storage share no disk.
    pub async fn beside(
        &self,
        args: &[&str],
        env: &[(impl AsRef<str>, impl AsRef<str>)],
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env = owned(env);
        let (child, url, _) = spawn(dir.path(), &args, &[], &env).await;
        TestServer {
            child: Some(child),
            url,
            token: self.token.clone(),
            dir: std::sync::Arc::new(dir),
            args,
            wrapper: Vec::new(),
            env,
            http: http_client(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `path` inside the data dir as the server sees it (through its mount namespace, if any).
    pub fn view(&self, path: &str) -> PathBuf {
        let dir = self.dir.path().join(path);
        if self.wrapper.is_empty() {
            dir
        } else {
            PathBuf::from(format!("/proc/{}/root{}", self.pid(), dir.display()))
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().and_then(|c| c.id()).expect("running") as i32
    }

    /// Sends `signal` and waits for the process to exit.
    pub async fn stop(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id().expect("running") as i32, signal) };
        tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("server exits in time")
            .expect("wait")
    }

    /// Sends `signal` without waiting (SIGSTOP and SIGCONT pause and resume the server).
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Starts again on the same data dir (and a new port).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop first");
        let (child, url, token) =
            spawn(self.dir.path(), &self.args, &self.wrapper, &self.env).await;
        assert!(token.is_none(), "no new admin token on a second start");
        self.child = Some(child);
        self.url = url;
    }

    /// The arguments the next [`TestServer::restart`] starts with.
    pub fn args_mut(&mut self) -> &mut Vec<String> {
        &mut self.args
    }

    /// Starts again on the same data dir, with `extra` arguments after the first start's.
    pub async fn restart_with(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(|s| s.to_string()));
        self.restart().await;
    }

    /// A token for another user, made with the CLI as an operator would.
    pub async fn token_for(&self, user: &str) -> String {
        self.cli(&["token", "create", "--user", user])
            .await
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string()
    }

    /// Revokes `token` with the CLI, as an operator would.
    pub async fn revoke(&self, token: &str) {
        self.cli(&["token", "revoke", token]).await;
    }

    /// Runs the CLI on this server's data dir and database; its stdout, once it succeeded.
    async fn cli(&self, args: &[&str]) -> String {
        let database = self
            .args
            .iter()
            .position(|a| a == "--database-url")
            .map(|i| self.args[i..=i + 1].to_vec())
            .unwrap_or_default();
        let out = Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(database)
            .output()
            .await
            .expect("the CLI runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Rotates the key that signs shareable links, with the CLI, as an operator would.
    pub async fn rotate_link_key(&self) {
        self.cli(&["link-key", "rotate"]).await;
    }

    /// `POST /tree-items/{id}/links` as `token`, with `body` when given.
    pub async fn link(&self, token: &str, item: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .req(Method::POST, &format!("/tree-items/{item}/links"), token)
            .timeout(REQUEST_TIMEOUT);
        if let Some(body) = body {
            req = req.json(&body);
        }
        json_of(req.send().await.unwrap()).await
    }

    /// Signs a browser in with `token`: the session cookie, as `name=value`.
    pub async fn sign_in(&self, token: &str) -> String {
        let res = self
            .http
            .post(self.api("/session"))
            .json(&serde_json::json!({ "token": token }))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let cookie = res.headers()[reqwest::header::SET_COOKIE].to_str().unwrap();
        cookie.split(';').next().unwrap().to_string()
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.url, path)
    }

    pub fn req(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.http.request(method, self.api(path)).bearer_auth(token)
    }

    pub async fn upload_as(&self, token: &str, file: &Path, name: &str) -> Value {
        let bytes = std::fs::read(file).expect("fixture");
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_string());
        let form = reqwest::multipart::Form::new().part("file", part);
        let res = self
            .req(Method::POST, "/tree-items", token)
            .multipart(form)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        res.json().await.unwrap()
    }

    pub async fn upload(&self, file: &Path) -> Value {
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        self.upload_as(&self.token, file, &name).await
    }

    /// Starts a conversion and returns the 200 body.
    pub async fn convert_as(&self, token: &str, item: &Value, options: Value) -> Value {
        let res = self
            .req(
                Method::POST,
                &format!(
                    "/tree-items/{}/convert-to-geo-raster",
                    item["id"].as_str().unwrap()
                ),
                token,
            )
            .json(&options)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{:?}", res.text().await);
        res.json().await.unwrap()
    }

    pub async fn convert(&self, item: &Value, options: Value) -> Value {
        self.convert_as(&self.token, item, options).await
    }

    /// Status by capability, without a token, as the existing polling clients do.
    pub async fn status(&self, task_id: &str) -> Value {
        let (code, status) = self.try_status(task_id).await;
        assert_eq!(code, StatusCode::OK, "{status}");
        status
    }

    /// How many items at the root of the owner's tree were published from `source`.
    pub async fn outputs_of(&self, source: &str) -> usize {
        let (code, items) = self.get_json("/tree-items", &self.token).await;
        assert_eq!(code, StatusCode::OK, "{items}");
        outputs_in(&items, source)
    }

    /// Polls until `pred` holds, checking on the way that progress never goes down.
    pub async fn wait_for(
        &self,
        task_id: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last_progress = 0.0;
        loop {
            let status = self.status(task_id).await;
            let progress = status["progress"].as_f64().unwrap();
            assert!(
                progress >= last_progress,
                "progress went down: {last_progress} -> {progress}"
            );
            last_progress = progress;
            if pred(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "timed out; last status {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_final(&self, task_id: &str) -> Value {
        self.wait_for(task_id, Duration::from_secs(120), |s| {
            matches!(s["state"].as_str(), Some("SUCCESS" | "FAILURE" | "REVOKED"))
        })
        .await
    }

    /// Uploads, converts and waits: the whole flow a script runs.
    pub async fn convert_file(&self, file: &Path, options: Value) -> Value {
        let item = self.upload(file).await;
        let started = self.convert(&item, options).await;
        self.wait_final(started["task_id"].as_str().unwrap()).await
    }

    pub async fn get_json(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let res = self
            .req(Method::GET, path, token)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap();
        json_of(res).await
    }

    /// The status code of `GET /healthz`: the server still serves.
    pub async fn healthz(&self) -> StatusCode {
        self.http
            .get(format!("{}/healthz", self.url))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap()
            .status()
    }

    /// One figure from `/metrics`, e.g. `rastercast_worker_starts_total`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        figure(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// One figure from `/metrics`, 0 while it has not been counted yet (labelled series
    /// appear with their first count).
    pub async fn metric_or_zero(&self, name: &str) -> f64 {
        figure(&self.metrics_text().await, name).unwrap_or(0.0)
    }

    /// Waits until the figure `name` reaches `at_least`, and returns it. A worker counts its
    /// run (`rastercast_conversion_seconds`, the bytes converted) just after the run's end
    /// has committed, so a client may see the final state a moment before the count.
    pub async fn wait_metric(&self, name: &str, at_least: f64) -> f64 {
        let what = format!("{name} to reach {at_least}");
        eventually(&what, Duration::from_secs(60), || async {
            Some(self.metric_or_zero(name).await).filter(|figure| *figure >= at_least)
        })
        .await
    }

    async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The body of `GET /healthz`.
    pub async fn health(&self) -> Value {
        self.http
            .get(format!("{}/healthz", self.url))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Files in the data dir's `tmp/` (partial uploads and outputs).
    pub fn tmp_files(&self) -> Vec<PathBuf> {
        files_in(&self.view("tmp"))
    }

    /// A file item's whole content, as its owner reads it.
    pub async fn content(&self, item: &str) -> Vec<u8> {
        let res = self
            .req(
                Method::GET,
                &format!("/tree-items/{item}/content"),
                &self.token,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.bytes().await.unwrap().to_vec()
    }

    pub fn blob_files(&self) -> Vec<PathBuf> {
        files_in(&self.view("blobs"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

fn figure(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Status and JSON body; fails the test if an error body is not `{"detail": "..."}`.
pub async fn json_of(res: Response) -> (StatusCode, Value) {
    let status = res.status();
    let ctype = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let text = res.text().await.unwrap();
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: not JSON: {text:?}"));
    if !status.is_success() {
        assert!(ctype.unwrap_or_default().starts_with("application/json"));
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{status}: {body}"
        );
    }
    (status, body)
}

async fn spawn(
    dir: &Path,
    args: &[String],
    wrapper: &[String],
    env: &[(String, String)],
) -> (Child, String, Option<String>) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .unwrap();
    let mut command = match wrapper {
        [] => Command::new(BIN),
        [program, rest @ ..] => {
            let mut command = Command::new(program);
            command.args(rest).arg(dir).arg(BIN);
            command
        }
    };
    let mut child = command
        .arg("serve")
        .args(["--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "rastercast=debug")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("server starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut token = None;
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let line = line.trim();
            if line.starts_with("rc_") {
                token = Some(line.to_string());
            }
            if let Some(url) = line.strip_prefix("rastercast listening on ") {
                return url.to_string();
            }
        }
        panic!(
            "server exited before listening; see {}",
            dir.join("server.log").display()
        );
    };
    let url = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("server listens in time");
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url, token)
}

/// An item's bytes, in a temp file GDAL can open.
pub async fn download(server: &TestServer, item_id: &str) -> tempfile::NamedTempFile {
    let res = server
        .req(
            Method::GET,
            &format!("/tree-items/{item_id}/content"),
            &server.token,
        )
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let file = tempfile::Builder::new().suffix(".tif").tempfile().unwrap();
    std::fs::write(file.path(), res.bytes().await.unwrap()).unwrap();
    file
}

/// The processes whose parent is `pid` (the server's conversion workers).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Field 4, after the parenthesised command name, is the parent pid.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        if after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok())
            == Some(pid)
        {
            out.push(child);
        }
    }
    out
}

/// Whether `pid` runs (a zombie does not count).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Environment variables as the server is given them.
fn owned(env: &[(impl AsRef<str>, impl AsRef<str>)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
        .collect()
}

/// `name` in the tests' own temp dir, made once from the sample raster `source` by
/// gdal_translate with `args` (written aside and renamed, so a test never reads half of it).
pub fn generated_raster(name: &str, source: &str, args: &[&str]) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    if !path.exists() {
        let partial = path.with_extension(format!("{}.part.tif", uuid::Uuid::new_v4().simple()));
        let source = data(source);
        let mut all = args.to_vec();
        all.extend([source.to_str().unwrap(), partial.to_str().unwrap()]);
        gdal_translate(&all);
        std::fs::rename(&partial, &path).unwrap();
    }
    path
}

/// `gdalinfo TARGET` from a shell with no settings (only `PATH`), as a user would run it.
pub async fn gdalinfo(target: &str) -> std::process::Output {
    tokio::process::Command::new("gdalinfo")
        .arg(target)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .await
        .expect("gdalinfo runs")
}

/// Makes a raster with gdal_translate (from gdal-bin), as a test fixture.
pub fn gdal_translate(args: &[&str]) {
    let status = std::process::Command::new("gdal_translate")
        .args(["-q"])
        .args(args)
        .status()
        .expect("gdal_translate (gdal-bin) is installed");
    assert!(status.success(), "gdal_translate {args:?}");
}

/// A PostgreSQL database of the test's own: a fresh schema on the server that
/// `scripts/test-postgres.sh` finds or starts, dropped when this is dropped.
pub struct TestDatabase {
    pub url: String,
    admin: String,
    schema: String,
}

impl TestDatabase {
    pub fn new() -> TestDatabase {
        // The script answers RASTERCAST_TEST_DATABASE_URL when it is set.
        let out = std::process::Command::new(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-postgres.sh"),
        )
        .output()
        .expect("scripts/test-postgres.sh runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let admin = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let schema = format!("rc_nodes_{}", uuid::Uuid::new_v4().simple());
        run_sql(&admin, &format!("CREATE SCHEMA {schema}"))
            .expect("the test PostgreSQL takes a new schema");
        let join = if admin.contains('?') { '&' } else { '?' };
        TestDatabase {
            url: format!(
                "{admin}{join}options=-c%20search_path%3D{schema}&application_name={schema}"
            ),
            admin,
            schema,
        }
    }
}

impl TestDatabase {
    /// The PostgreSQL server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        let rest = self
            .url
            .split("127.0.0.1:")
            .nth(1)
            .expect("the test database is on 127.0.0.1");
        rest[..rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len())]
            .parse()
            .unwrap()
    }

    /// This database's URL, reached through `port` on 127.0.0.1 instead.
    pub fn url_through(&self, port: u16) -> String {
        self.url.replacen(
            &format!("127.0.0.1:{}", self.port()),
            &format!("127.0.0.1:{port}"),
            1,
        )
    }

    /// Ends every server connection that works in this database's schema, as a database
    /// restart or a network cut would; returns how many were ended.
    pub fn cut_connections(&self) -> i64 {
        query_i64(
            &self.admin,
            &format!(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = '{}'",
                self.schema
            ),
        )
        .expect("connections are cut")
        .unwrap_or(0)
    }

    /// The first column of the first row of `sql`, run in this database's schema.
    pub fn query_i64(&self, sql: &str) -> Option<i64> {
        query_i64(&self.url, sql).expect("the test database answers")
    }
}

/// One number (or NULL) from `sql`, on a thread of its own like [`run_sql`].
fn query_i64(url: &str, sql: &str) -> Result<Option<i64>, postgres::Error> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let row = postgres::Client::connect(&url, postgres::NoTls)?.query_one(&sql, &[])?;
        Ok(row.get::<_, Option<i64>>(0))
    })
    .join()
    .expect("the SQL thread finishes")
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = run_sql(&self.admin, &format!("DROP SCHEMA {} CASCADE", self.schema));
    }
}

/// The blocking client runs a runtime of its own, which must not be inside the test's.
fn run_sql(url: &str, sql: &str) -> Result<(), postgres::Error> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        postgres::Client::connect(&url, postgres::NoTls)?.batch_execute(&sql)
    })
    .join()
    .expect("the SQL thread finishes")
}

// Retries, retention, fair share, idempotent starts and bulk actions.

/// The header that makes a start or an upload idempotent.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The `task_id` of a conversion's 200 body or of a status.
pub fn task_id(body: &Value) -> String {
    body["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no task_id in {body}"))
        .to_string()
}

/// A timestamp as the API writes it (RFC 3339), as an instant.
pub fn time_of(value: &Value) -> chrono::DateTime<chrono::Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&chrono::Utc)
}

/// An instant as the API writes it (RFC 3339, UTC, milliseconds).
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A moment strictly between everything that happened before the call and everything that
/// happens after it, as the API writes timestamps (RFC 3339, milliseconds): it returns once
/// the clock has moved past it.
pub async fn a_moment_between() -> String {
    let moment = chrono::Utc::now() + chrono::TimeDelta::milliseconds(1);
    while chrono::Utc::now() < moment + chrono::TimeDelta::milliseconds(2) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    rfc3339(moment)
}

/// Polls `probe` every 50 ms until it gives `Some`; fails the test after `timeout`, saying
/// what it waited for.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server's conversion workers: those of its children whose command line names the
/// worker program (idle warm ones included).
pub fn worker_children(pid: i32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|child| {
            std::fs::read(format!("/proc/{child}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("worker"))
                .unwrap_or(false)
        })
        .collect()
}

/// Sends `signal` to every conversion worker of the server at `pid` (the busy one and any
/// idle warm ones), as the OOM killer or an operator would; returns their pids.
pub fn signal_workers(pid: i32, signal: i32) -> Vec<i32> {
    let workers = worker_children(pid);
    for worker in &workers {
        // SAFETY: plain kill(2) on a child of our own server.
        unsafe { libc::kill(*worker, signal) };
    }
    workers
}

impl TestServer {
    /// Any request as `token`, with an optional JSON body: the status and the JSON answer
    /// (error bodies checked by [`json_of`]).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.req(method, path, token).timeout(REQUEST_TIMEOUT);
        if let Some(body) = body {
            req = req.json(body);
        }
        json_of(req.send().await.unwrap()).await
    }

    /// Starts a conversion of `item` as `token`, with `options` as the body when given and
    /// an `Idempotency-Key` when given; the status and answer, whatever they are.
    pub async fn try_convert(
        &self,
        token: &str,
        item: &Value,
        options: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> (StatusCode, Value) {
        let path = format!(
            "/tree-items/{}/convert-to-geo-raster",
            item["id"].as_str().expect("an item id")
        );
        let mut req = self
            .req(Method::POST, &path, token)
            .timeout(REQUEST_TIMEOUT);
        if let Some(options) = options {
            req = req.json(options);
        }
        if let Some(key) = idempotency_key {
            let value =
                reqwest::header::HeaderValue::from_bytes(key.as_bytes()).expect("a header value");
            req = req.header(IDEMPOTENCY_KEY, value);
        }
        json_of(req.send().await.unwrap()).await
    }

    /// A raw-body upload (`?name=`) as `token`, with an `Idempotency-Key` when given: the
    /// same bytes make the same request every time (a multipart form's boundary would not).
    pub async fn try_upload_raw(
        &self,
        token: &str,
        name: &str,
        bytes: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .req(Method::POST, &format!("/tree-items?name={name}"), token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes)
            .timeout(REQUEST_TIMEOUT);
        if let Some(key) = idempotency_key {
            let value =
                reqwest::header::HeaderValue::from_bytes(key.as_bytes()).expect("a header value");
            req = req.header(IDEMPOTENCY_KEY, value);
        }
        json_of(req.send().await.unwrap()).await
    }

    /// A task's status by capability, whatever the answer (410 once it expired, 404 when
    /// unknown).
    pub async fn try_status(&self, task_id: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .get(self.api(&format!("/tasks/{task_id}/status")))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap();
        json_of(res).await
    }

    /// Polls a task's status until `pred` holds, like [`TestServer::wait_for`] but without
    /// the check that progress never goes down: a task put back in the queue for another
    /// attempt starts its progress again.
    pub async fn wait_status(
        &self,
        task_id: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(task_id).await;
            if pred(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "timed out; last status {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every task of `token`'s user, newest first, following `next_cursor` 500 at a time.
    pub async fn all_tasks(&self, token: &str) -> Vec<Value> {
        let mut tasks = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                None => "/tasks?limit=500".to_string(),
                Some(c) => format!("/tasks?limit=500&cursor={c}"),
            };
            let (code, page) = self.get_json(&path, token).await;
            assert_eq!(code, StatusCode::OK, "{page}");
            tasks.extend(
                page["tasks"]
                    .as_array()
                    .expect("a tasks array")
                    .iter()
                    .cloned(),
            );
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return tasks,
            }
        }
    }

    /// The ids of every task of `token`'s user.
    pub async fn task_ids(&self, token: &str) -> std::collections::HashSet<String> {
        self.all_tasks(token).await.iter().map(task_id).collect()
    }

    /// `POST /tasks/{id}/retry` as `token`, with `options` as the body when given.
    pub async fn retry_task(
        &self,
        token: &str,
        task_id: &str,
        options: Option<&Value>,
    ) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/tasks/{task_id}/retry"),
            token,
            options,
        )
        .await
    }

    /// `POST /tasks/{id}/cancel` as `token`.
    pub async fn cancel_task(&self, token: &str, task_id: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/tasks/{task_id}/cancel"),
            token,
            None,
        )
        .await
    }

    /// `POST /tasks/cancel` (bulk) as `token` with `filter`.
    pub async fn cancel_matching(&self, token: &str, filter: &Value) -> (StatusCode, Value) {
        self.call(Method::POST, "/tasks/cancel", token, Some(filter))
            .await
    }

    /// `DELETE /tasks?{query}` (bulk) as `token`; `query` is already URL-encoded.
    pub async fn delete_tasks(&self, token: &str, query: &str) -> (StatusCode, Value) {
        let path = if query.is_empty() {
            "/tasks".to_string()
        } else {
            format!("/tasks?{query}")
        };
        self.call(Method::DELETE, &path, token, None).await
    }
}

/// How many of `items` (a listing) were published from `source`.
pub fn outputs_in(items: &Value, source: &str) -> usize {
    items
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["source_id"] == source)
        .count()
}

/// A TCP path to a service (PostgreSQL, the object store) that a test can cut and mend, as a
/// network would.
pub struct Cable {
    pub port: u16,
    target: u16,
    carrying: Option<tokio::task::JoinHandle<()>>,
}

impl Cable {
    pub async fn to(target: u16) -> Cable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Cable {
            port,
            target,
            carrying: Some(tokio::spawn(carry(listener, target))),
        }
    }

    /// Closes every connection through the cable and refuses new ones.
    pub fn cut(&mut self) {
        if let Some(task) = self.carrying.take() {
            task.abort();
        }
    }

    pub async fn mend(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.carrying = Some(tokio::spawn(carry(listener, self.target)));
    }
}

/// Accepts connections and joins each to the target; dropped (aborted), it drops them all.
async fn carry(listener: tokio::net::TcpListener, target: u16) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((mut down, _)) = listener.accept().await {
        connections.spawn(async move {
            let mut up = tokio::net::TcpStream::connect(("127.0.0.1", target)).await?;
            tokio::io::copy_bidirectional(&mut down, &mut up).await
        });
    }
}

/// A prefix of the test's own in the bucket `rastercast-test` of the S3-compatible store that
/// `scripts/test-s3.sh` finds or starts (SeaweedFS), with the credentials it was set up with.
pub struct TestBucket {
    pub endpoint: String,
    pub prefix: String,
    store: object_store::aws::AmazonS3,
}

pub const BUCKET: &str = "rastercast-test";
pub const S3_KEY: &str = "rastercast-test";
pub const S3_SECRET: &str = "rastercast-test-secret";

impl TestBucket {
    pub fn new() -> TestBucket {
        Self::on_store(None)
    }

    /// A bucket on a SeaweedFS of the test's own, on `port`, that the test may stop and start
    /// again ([`TestBucket::stop_store`], [`TestBucket::new_on_port`] once more).
    pub fn new_on_port(port: u16) -> TestBucket {
        Self::on_store(Some(port))
    }

    fn on_store(port: Option<u16>) -> TestBucket {
        let mut script = std::process::Command::new(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-s3.sh"),
        );
        if let Some(port) = port {
            script
                .env("RASTERCAST_TEST_S3_PORT", port.to_string())
                .env_remove("RASTERCAST_TEST_S3_ENDPOINT");
        }
        let out = script.output().expect("scripts/test-s3.sh runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let endpoint = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(BUCKET)
            .with_access_key_id(S3_KEY)
            .with_secret_access_key(S3_SECRET)
            .build()
            .unwrap();
        TestBucket {
            endpoint,
            prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
            store,
        }
    }

    /// Kills the SeaweedFS on `port` (one of [`TestBucket::new_on_port`]), as a crash would,
    /// and waits until it is gone; its data stays, for a start again.
    pub fn stop_store(port: u16) {
        let pattern = format!("-s3.port={port} ");
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-f", "--", &pattern])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::process::Command::new("pgrep")
            .args(["-f", "--", &pattern])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(Instant::now() < deadline, "SeaweedFS on {port} stops");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `--storage` for a server on this prefix.
    pub fn storage(&self) -> String {
        format!("s3://{BUCKET}/{}", self.prefix)
    }

    /// The store's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.endpoint.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The server's environment: the standard AWS variables, for `endpoint`.
    pub fn env_for(endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", S3_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ]
    }

    /// A server on this prefix, with `args`.
    pub async fn server(&self, args: &[&str]) -> TestServer {
        self.server_via(&self.endpoint.clone(), args).await
    }

    /// A server on this prefix that reaches the store at `endpoint` (e.g. through a [`Cable`]).
    pub async fn server_via(&self, endpoint: &str, args: &[&str]) -> TestServer {
        let storage = self.storage();
        let mut all = vec!["--storage", storage.as_str()];
        all.extend_from_slice(args);
        TestServer::start_with_env(&all, &Self::env_for(endpoint)).await
    }

    /// The objects under `folder` (`blobs`, `uploads`) of this prefix: (name, size).
    pub async fn objects(&self, folder: &str) -> Vec<(String, u64)> {
        use futures_util::TryStreamExt;
        use object_store::ObjectStore;
        let prefix = object_store::path::Path::from(format!("{}/{folder}", self.prefix));
        let mut found: Vec<(String, u64)> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| (m.location.filename().unwrap_or("").to_string(), m.size))
            .try_collect()
            .await
            .unwrap();
        found.sort();
        found
    }

    /// Puts `bytes` at `key` under this prefix, as another node (or a crashed one) would.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) {
        use object_store::ObjectStoreExt;
        let path = object_store::path::Path::from(format!("{}/{key}", self.prefix));
        self.store.put(&path, bytes.into()).await.unwrap();
    }

    /// Starts a multipart upload at `key` under this prefix and leaves it unfinished, with one
    /// part sent; returns its id.
    pub async fn abandoned_multipart(&self, key: &str) -> String {
        use object_store::multipart::MultipartStore;
        let path = object_store::path::Path::from(format!("{}/{key}", self.prefix));
        let id = self.store.create_multipart(&path).await.unwrap();
        self.store
            .put_part(&path, &id, 0, vec![7u8; 1024].into())
            .await
            .unwrap();
        id
    }

    /// Runs curl, signed with the test credentials, against `path_and_query` of the bucket;
    /// its output, if it succeeded. (curl signs a query only when it is sorted and every key
    /// has a value.)
    fn curl(&self, method: &str, path_and_query: &str) -> Option<String> {
        let out = std::process::Command::new("curl")
            .args(["-sf", "--max-time", "10", "-X", method])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3"])
            .args(["--user", &format!("{S3_KEY}:{S3_SECRET}")])
            .arg(format!("{}/{BUCKET}{path_and_query}", self.endpoint))
            .output()
            .expect("curl runs");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Multipart uploads in flight under this prefix, as the store lists them.
    pub fn multipart_uploads(&self) -> usize {
        self.curl("GET", &format!("?prefix={}%2F&uploads=", self.prefix))
            .expect("listing multipart uploads")
            .matches("<UploadId>")
            .count()
    }
}

impl Drop for TestBucket {
    /// Deletes what the test left under its prefix, so that the store the tests share stays
    /// small however often they run (SeaweedFS reclaims deleted space in the background).
    fn drop(&mut self) {
        let listing = self
            .curl("GET", &format!("?list-type=2&prefix={}%2F", self.prefix))
            .unwrap_or_default();
        for key in listing
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split('<').next())
        {
            self.curl("DELETE", &format!("/{key}"));
        }
    }
}

/// A TCP path to a server that counts the bytes clients send through it and trips once they
/// reach a budget: [`Trip::Cut`] breaks the connection carrying the byte past it (once; later
/// bytes pass), [`Trip::Hold`] holds the rest back (a link gone silent) until
/// [`Tripwire::open`], or until the server behind it goes away. Its port stays the same when
/// that server restarts on another ([`Tripwire::retarget`]), so clients that remember URLs
/// keep them.
pub struct Tripwire {
    pub port: u16,
    target: std::sync::Arc<std::sync::atomic::AtomicU16>,
    state: std::sync::Arc<TripState>,
    connections: std::sync::Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    accepting: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Trip {
    Cut,
    Hold,
}

struct TripState {
    /// Bytes sent through, the budget they may reach, how it trips, and connections cut.
    counts: std::sync::Mutex<(u64, u64, Trip, u32)>,
    opened: tokio::sync::Notify,
}

impl TripState {
    /// How many of `want` bytes may go through now (waiting while held); 0 to cut.
    async fn allowance(&self, want: u64) -> u64 {
        loop {
            let opened = self.opened.notified();
            {
                let mut counts = self.counts.lock().unwrap();
                let (sent, budget, trip, cuts) = &mut *counts;
                if *sent < *budget {
                    let n = want.min(*budget - *sent);
                    *sent += n;
                    return n;
                }
                if *trip == Trip::Cut {
                    *budget = u64::MAX;
                    *cuts += 1;
                    return 0;
                }
            }
            opened.await;
        }
    }
}

/// The port of a server's URL (`http://127.0.0.1:PORT`).
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

impl Tripwire {
    /// A wire to the server at `url`, letting everything through until armed.
    pub async fn to(url: &str) -> Tripwire {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(port_of(url)));
        let state = std::sync::Arc::new(TripState {
            counts: std::sync::Mutex::new((0, u64::MAX, Trip::Cut, 0)),
            opened: tokio::sync::Notify::new(),
        });
        let connections = std::sync::Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let accepting = tokio::spawn({
            let (target, state, connections) = (target.clone(), state.clone(), connections.clone());
            async move {
                while let Ok((down, _)) = listener.accept().await {
                    let port = target.load(std::sync::atomic::Ordering::SeqCst);
                    let state = state.clone();
                    connections.lock().unwrap().spawn(async move {
                        let _ = carry_counted(down, port, &state).await;
                    });
                }
            }
        });
        Tripwire {
            port,
            target,
            state,
            connections,
            accepting,
        }
    }

    /// A wire armed from the start (see [`Tripwire::arm`]).
    pub async fn armed(url: &str, bytes: u64, trip: Trip) -> Tripwire {
        let wire = Tripwire::to(url).await;
        wire.arm(bytes, trip);
        wire
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// New connections go to the server now at `url`.
    pub fn retarget(&self, url: &str) {
        self.target
            .store(port_of(url), std::sync::atomic::Ordering::SeqCst);
    }

    /// Trips after `bytes` more bytes from clients.
    pub fn arm(&self, bytes: u64, trip: Trip) {
        let mut counts = self.state.counts.lock().unwrap();
        counts.1 = counts.0.saturating_add(bytes);
        counts.2 = trip;
    }

    /// Drops every connection through the wire (as a client's crash or a network cut would
    /// end them), and lets everything through from now on.
    pub fn open(&self) {
        self.connections.lock().unwrap().abort_all();
        self.state.counts.lock().unwrap().1 = u64::MAX;
        self.state.opened.notify_waiters();
    }

    pub fn sent(&self) -> u64 {
        self.state.counts.lock().unwrap().0
    }

    /// True once a wire armed to hold has let through all it was armed for.
    pub fn held(&self) -> bool {
        let (sent, budget, trip, _) = *self.state.counts.lock().unwrap();
        trip == Trip::Hold && sent >= budget
    }

    pub fn cuts(&self) -> u32 {
        self.state.counts.lock().unwrap().3
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.accepting.abort();
        self.connections.lock().unwrap().abort_all();
    }
}

/// Joins a client's connection to the server at `port`, counting what the client sends. The
/// connection ends when the server's side does (a held request of a killed server included),
/// or when the client's side fails or is cut.
async fn carry_counted(
    down: tokio::net::TcpStream,
    port: u16,
    state: &TripState,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut down_read, mut down_write) = down.into_split();
    let (mut up_read, mut up_write) = up.into_split();
    let forth = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = down_read.read(&mut buf).await?;
            if n == 0 {
                up_write.shutdown().await?;
                return std::future::pending().await;
            }
            let mut at = 0;
            while at < n {
                let allowed = state.allowance((n - at) as u64).await as usize;
                if allowed == 0 {
                    return Err(std::io::Error::other("cut"));
                }
                up_write.write_all(&buf[at..at + allowed]).await?;
                at += allowed;
            }
        }
    };
    let back = async {
        tokio::io::copy(&mut up_read, &mut down_write).await?;
        down_write.shutdown().await
    };
    tokio::select! {
        cut = forth => cut,
        done = back => done,
    }
}

/// The SHA-256 of a file, as hex (by `sha256sum`: the tests build without optimisation and
/// the files are large).
pub fn sha256_of(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The owner's unfinished resumable uploads, as the server lists them.
pub async fn unfinished_uploads(server: &TestServer) -> Vec<Value> {
    let (code, list) = server.get_json("/uploads", &server.token).await;
    assert_eq!(code, StatusCode::OK, "{list}");
    list.as_array().unwrap().clone()
}

/// The tests' venv with the reference clients, made once by `scripts/test-venv.sh`.
pub fn test_python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = std::process::Command::new(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-venv.sh"),
            )
            .output()
            .expect("scripts/test-venv.sh runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        })
        .clone()
}
