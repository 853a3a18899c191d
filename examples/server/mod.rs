//! The release server started on loopback for the benchmark and the soak, and the few calls
//! they make of it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rastercast::domain::TaskState;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

pub struct Server {
    pub child: tokio::process::Child,
    pub url: String,
    pub token: String,
    /// Shared by the nodes of a cluster ([`Server::join`]).
    dir: std::sync::Arc<tempfile::TempDir>,
}

impl Server {
    pub async fn start(args: &[&str]) -> anyhow::Result<(Server, Duration)> {
        Server::start_in(std::sync::Arc::new(tempfile::tempdir()?), args, &[]).await
    }

    /// Starts with `env` set too (the AWS variables of object storage).
    pub async fn start_with_env(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<(Server, Duration)> {
        Server::start_in(std::sync::Arc::new(tempfile::tempdir()?), args, env).await
    }

    /// Another node beside this one, on the same data dir (`args` name the shared database).
    pub async fn join(&self, args: &[&str]) -> anyhow::Result<Server> {
        let (mut node, _) = Server::start_in(self.dir.clone(), args, &[]).await?;
        node.token = self.token.clone();
        Ok(node)
    }

    async fn start_in(
        dir: std::sync::Arc<tempfile::TempDir>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<(Server, Duration)> {
        let started = Instant::now();
        let mut child = tokio::process::Command::new(root().join("target/release/rastercast"))
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            // One user plays every client here: the per-user limits are not what is measured.
            .args(["--max-streams-per-user", "1000000"])
            .args(["--max-active-tasks-per-user", "1000000"])
            .args(["--max-requests-per-second-per-user", "0"])
            // Likewise one address plays every client without credentials.
            .args(["--max-anonymous-streams-per-ip", "1000000"])
            .args(["--max-anonymous-streams", "1000000"])
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let (mut url, mut token) = (String::new(), String::new());
        while let Some(line) = lines.next_line().await? {
            let line = line.trim().to_string();
            if line.starts_with("rc_") {
                token = line.clone();
            }
            if let Some(u) = line.strip_prefix("rastercast listening on ") {
                url = u.to_string();
                break;
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let client = reqwest::Client::new();
        while !client
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ready = started.elapsed();
        Ok((
            Server {
                child,
                url,
                token,
                dir,
            },
            ready,
        ))
    }

    /// A token of another user of this server (`rastercast token create`).
    pub fn token_for(&self, user: &str) -> anyhow::Result<String> {
        let out = std::process::Command::new(root().join("target/release/rastercast"))
            .args(["token", "create", "--user", user, "--data-dir"])
            .arg(self.dir.path())
            .output()?;
        anyhow::ensure!(out.status.success(), "rastercast token create failed");
        let text = String::from_utf8(out.stdout)?;
        Ok(text.lines().last().unwrap_or_default().trim().to_string())
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub async fn upload(&self, client: &reqwest::Client, file: &Path) -> anyhow::Result<String> {
        self.upload_as(client, file, &self.token).await
    }

    pub async fn upload_as(
        &self,
        client: &reqwest::Client,
        file: &Path,
        token: &str,
    ) -> anyhow::Result<String> {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("in.tif");
        let item: Value = client
            .post(format!("{}/api/v1/tree-items?name={name}", self.url))
            .bearer_auth(token)
            .body(tokio::fs::read(file).await?)
            .send()
            .await?
            .json()
            .await?;
        Ok(item["id"].as_str().unwrap_or_default().to_string())
    }

    /// Starts a conversion of `item` with default options; returns the task id.
    pub async fn start_conversion(
        &self,
        client: &reqwest::Client,
        item: &str,
    ) -> anyhow::Result<String> {
        self.start_conversion_as(client, item, &self.token).await
    }

    pub async fn start_conversion_as(
        &self,
        client: &reqwest::Client,
        item: &str,
        token: &str,
    ) -> anyhow::Result<String> {
        let task: Value = client
            .post(format!(
                "{}/api/v1/tree-items/{item}/convert-to-geo-raster",
                self.url
            ))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(task["task_id"].as_str().unwrap_or_default().to_string())
    }

    /// A task's status, read with this server's own token.
    pub async fn status(&self, client: &reqwest::Client, task: &str) -> anyhow::Result<Value> {
        self.status_as(client, task, &self.token).await
    }

    pub async fn status_as(
        &self,
        client: &reqwest::Client,
        task: &str,
        token: &str,
    ) -> anyhow::Result<Value> {
        Ok(client
            .get(format!("{}/api/v1/tasks/{task}/status", self.url))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?)
    }

    /// Polls a task's status until it is final.
    pub async fn wait_final_as(
        &self,
        client: &reqwest::Client,
        task: &str,
        token: &str,
    ) -> anyhow::Result<Value> {
        loop {
            let status = self.status_as(client, task, token).await?;
            let state = status["state"].as_str().and_then(TaskState::parse);
            if state.is_some_and(TaskState::is_final) {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Conversions this node finished with a success, from its own `/metrics` (0 before the
    /// first, whose count starts the series).
    pub async fn successes(&self, client: &reqwest::Client) -> anyhow::Result<usize> {
        let text = client
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find_map(|l| {
                l.strip_prefix("rastercast_conversion_seconds_count{outcome=\"success\"} ")?
                    .parse()
                    .ok()
            })
            .unwrap_or(0))
    }

    /// Start → SUCCESS as an SSE client sees it.
    pub async fn convert_seen_by_sse(
        &self,
        client: &reqwest::Client,
        item: &str,
    ) -> anyhow::Result<Duration> {
        use futures_util::StreamExt;
        let feed = client
            .get(format!("{}/api/v1/events", self.url))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let mut body = feed.bytes_stream();
        let started = Instant::now();
        let id = self.start_conversion(client, item).await?;
        let mut text = String::new();
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk?));
            while let Some(end) = text.find("\n\n") {
                let message: String = text.drain(..end + 2).collect();
                let Some(data) = message.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                let event: Value = serde_json::from_str(data)?;
                if event["task_id"] == id.as_str() {
                    match event["state"].as_str() {
                        Some("SUCCESS") => return Ok(started.elapsed()),
                        Some("FAILURE" | "REVOKED") => {
                            anyhow::bail!("the conversion failed: {event}")
                        }
                        _ => {}
                    }
                }
            }
        }
        anyhow::bail!("the feed ended before SUCCESS")
    }
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A PostgreSQL schema of its own for one measurement, on the server that
/// `scripts/test-postgres.sh` finds or starts (it answers `RASTERCAST_TEST_DATABASE_URL` when
/// that is set). [`PgSchema::remove`] drops it with its tables.
pub struct PgSchema {
    admin: String,
    name: String,
}

impl PgSchema {
    pub fn create(prefix: &str) -> anyhow::Result<PgSchema> {
        let out = std::process::Command::new(root().join("scripts/test-postgres.sh")).output()?;
        anyhow::ensure!(out.status.success(), "scripts/test-postgres.sh failed");
        let schema = PgSchema {
            admin: String::from_utf8(out.stdout)?.trim().to_string(),
            name: format!("{prefix}_{}", std::process::id()),
        };
        schema.sql(format!(
            "DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}",
            schema.name
        ))?;
        Ok(schema)
    }

    /// The database URL whose tables land in this schema.
    pub fn url(&self) -> String {
        let join = if self.admin.contains('?') { '&' } else { '?' };
        format!(
            "{}{join}options=-c%20search_path%3D{}",
            self.admin, self.name
        )
    }

    pub fn remove(self) -> anyhow::Result<()> {
        self.sql(format!("DROP SCHEMA {} CASCADE", self.name))
    }

    /// Runs `sql` as the administrator, on a thread of its own: the blocking client runs a
    /// runtime of its own, which may not start inside the bench's.
    fn sql(&self, sql: String) -> anyhow::Result<()> {
        let admin = self.admin.clone();
        std::thread::spawn(move || {
            postgres::Client::connect(&admin, postgres::NoTls)?.batch_execute(&sql)
        })
        .join()
        .expect("the SQL thread finishes")?;
        Ok(())
    }
}
