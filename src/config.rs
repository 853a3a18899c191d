//! Server settings: each is a `serve` flag and an environment variable, with embedded defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    All,
    Api,
    Worker,
}

impl Role {
    pub fn serves_api(self) -> bool {
        self != Role::Worker
    }

    pub fn converts(self) -> bool {
        self != Role::Api
    }
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port and prints it).
    #[arg(long, env = "RASTERCAST_ADDR", default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,

    /// Directory holding the database, the stored files and temporary files.
    #[arg(long, env = "RASTERCAST_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// PostgreSQL to keep users, items, tasks and events in (`postgres://user@host/db`),
    /// shared by several nodes; without it, SQLite in the data dir.
    #[arg(long, env = "RASTERCAST_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Where files are kept: `file://` (the data dir) or `s3://BUCKET[/PREFIX]` on any
    /// S3-compatible store, with credentials, region and endpoint from the standard
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` and `AWS_ENDPOINT_URL`.
    #[arg(long, env = "RASTERCAST_STORAGE", default_value = "file://")]
    pub storage: String,

    /// Stored files no item refers to (left by a crash between upload and commit), and
    /// unfinished multipart uploads, are removed once this old; other nodes may be mid-upload.
    #[arg(
        long,
        env = "RASTERCAST_ORPHAN_MIN_AGE_SECS",
        default_value_t = 3600,
        hide = true
    )]
    pub orphan_min_age_secs: u64,

    /// What this node does: `all`, `api` (HTTP only, no conversions) or `worker`
    /// (conversions, with only /healthz and /metrics over HTTP).
    #[arg(long, env = "RASTERCAST_ROLE", value_enum, default_value_t = Role::All)]
    pub role: Role,

    /// Seconds a node's claim on a running task lasts without a heartbeat; after that another
    /// node takes the task over (PostgreSQL). Heartbeats go every third of it, at most 1 s apart.
    #[arg(long, env = "RASTERCAST_LEASE_SECS", default_value_t = 30.0)]
    pub lease_secs: f64,

    /// Conversions run at once (default: the number of CPU cores).
    #[arg(long, env = "RASTERCAST_WORKERS")]
    pub workers: Option<usize>,

    /// Largest accepted upload, in bytes.
    #[arg(long, env = "RASTERCAST_MAX_UPLOAD_BYTES", default_value_t = 8 << 30)]
    pub max_upload_bytes: u64,

    /// Resumable uploads (`/api/v1/uploads`) not finished this long after their last chunk
    /// expire, and the bytes they received are deleted.
    #[arg(long, env = "RASTERCAST_UPLOAD_EXPIRY_SECS", default_value_t = 86_400)]
    pub upload_expiry_secs: u64,

    /// Unfinished resumable uploads one user may hold at once; more get 429.
    #[arg(
        long,
        env = "RASTERCAST_MAX_OPEN_UPLOADS_PER_USER",
        default_value_t = 32
    )]
    pub max_open_uploads_per_user: u64,

    /// Chunks one resumable upload may arrive in: each is a stored file until the upload
    /// completes, so a client sending bytes one by one is stopped (400).
    #[arg(
        long,
        env = "RASTERCAST_MAX_UPLOAD_CHUNKS",
        default_value_t = 10_000,
        hide = true
    )]
    pub max_upload_chunks: u64,

    /// Origins whose web pages may call `/ogcapi` from a browser (CORS, with a bearer
    /// token): repeat the flag, or separate them with commas.
    #[arg(
        long = "cors-origin",
        env = "RASTERCAST_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Let webhooks and callbacks call loopback, private and link-local addresses (a private
    /// deployment, or tests). Off, such URLs are refused, whatever their name resolves to.
    #[arg(long, env = "RASTERCAST_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,

    /// Webhook endpoints one user may register.
    #[arg(long, env = "RASTERCAST_MAX_WEBHOOKS_PER_USER", default_value_t = 20)]
    pub max_webhooks_per_user: u64,

    /// Tests only: the webhook retry schedule (and the five failing days that disable an
    /// endpoint) run this many times faster.
    #[arg(
        long,
        env = "RASTERCAST_WEBHOOK_SCHEDULE_SPEEDUP",
        default_value_t = 1.0,
        hide = true
    )]
    pub webhook_schedule_speedup: f64,

    /// Memory (MiB) for drawn map tiles kept to answer the same tile again.
    #[arg(long, env = "RASTERCAST_TILE_CACHE_MB", default_value_t = 256)]
    pub tile_cache_mb: usize,

    /// Largest accepted raster: width × height × bands.
    #[arg(long, env = "RASTERCAST_MAX_PIXELS", default_value_t = 4_000_000_000)]
    pub max_pixels: u64,

    /// Disk space (MiB) kept free for the database: uploads are refused (507) and conversions
    /// fail before they would use it, so deleting files to make room always works.
    #[arg(long, env = "RASTERCAST_MIN_FREE_DISK_MB", default_value_t = 256)]
    pub min_free_disk_mb: u64,

    /// A conversion still running after this many seconds is stopped and fails.
    #[arg(long, env = "RASTERCAST_TASK_TIMEOUT_SECS", default_value_t = 3600)]
    pub task_timeout_secs: u64,

    /// Address-space limit of each conversion's child process, in MiB.
    #[arg(long, env = "RASTERCAST_WORKER_MEMORY_MB", default_value_t = 4096)]
    pub worker_memory_mb: u64,

    /// GDAL block cache per conversion, in MiB.
    #[arg(long, env = "RASTERCAST_GDAL_CACHE_MB", default_value_t = 256)]
    pub gdal_cache_mb: usize,

    /// Runs of one task: a transient failure (a worker killed from outside, a lost node, a full
    /// disk, storage or database out of reach) is retried until this many.
    #[arg(long, env = "RASTERCAST_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Seconds before the first retry of a transient failure; each further one waits twice as
    /// long (±25 %, at most 10 minutes).
    #[arg(long, env = "RASTERCAST_RETRY_BACKOFF_SECS", default_value_t = 2.0)]
    pub retry_backoff_secs: f64,

    /// The scheme and host clients reach this server at (`https://maps.example.org`), for
    /// shareable links; by default each request's own `Host` (and `X-Forwarded-Proto`).
    #[arg(long, env = "RASTERCAST_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Seconds a finished task (and its events) is kept; its id then answers 410 Gone for as
    /// long again. Outputs are tree items and are never pruned.
    #[arg(long, env = "RASTERCAST_TASK_RETENTION_SECS", default_value_t = 7 * 86400, value_parser = clap::value_parser!(u64).range(1..))]
    pub task_retention_secs: u64,

    /// Milliseconds a cancelled conversion gets to stop by itself before it is killed.
    #[arg(long, env = "RASTERCAST_CANCEL_GRACE_MS", default_value_t = 1000)]
    pub cancel_grace_ms: u64,

    /// Tasks one user may have queued or running at once; more get 429.
    #[arg(
        long,
        env = "RASTERCAST_MAX_ACTIVE_TASKS_PER_USER",
        default_value_t = 1000
    )]
    pub max_active_tasks_per_user: u64,

    /// Requests per second per user (bursts of four seconds' worth pass); 0 turns it off. The
    /// dashboard's map reads a COG with hundreds of Range requests: 100 made it stall.
    #[arg(
        long,
        env = "RASTERCAST_MAX_REQUESTS_PER_SECOND_PER_USER",
        default_value_t = 1000
    )]
    pub max_requests_per_second_per_user: u32,

    /// Event streams (SSE and WebSocket) one user may have open at once; more get 429.
    #[arg(long, env = "RASTERCAST_MAX_STREAMS_PER_USER", default_value_t = 256)]
    pub max_streams_per_user: usize,

    /// Event streams opened without credentials (by task id alone) from one IP address; more
    /// get 429.
    #[arg(
        long,
        env = "RASTERCAST_MAX_ANONYMOUS_STREAMS_PER_IP",
        default_value_t = 64
    )]
    pub max_anonymous_streams_per_ip: usize,

    /// Event streams opened without credentials, from every address together; more get 429.
    #[arg(long, env = "RASTERCAST_MAX_ANONYMOUS_STREAMS", default_value_t = 2048)]
    pub max_anonymous_streams: usize,

    /// Sign-ins (`POST /session`) per minute from one IP address, and with one token.
    #[arg(long, env = "RASTERCAST_MAX_SIGN_INS_PER_MINUTE", default_value_t = 20)]
    pub max_sign_ins_per_minute: u32,

    /// Uploads slower than this on average, once `--body-timeout-secs` have passed, get 408.
    #[arg(
        long,
        env = "RASTERCAST_MIN_UPLOAD_BYTES_PER_SEC",
        default_value_t = 1024
    )]
    pub min_upload_bytes_per_sec: u64,

    /// Seconds a client gets to send a request's headers; a slower one is disconnected.
    #[arg(long, env = "RASTERCAST_HEADER_TIMEOUT_SECS", default_value_t = 30)]
    pub header_timeout_secs: u64,

    /// A request body that sends nothing for this long is answered 408 and dropped.
    #[arg(long, env = "RASTERCAST_BODY_TIMEOUT_SECS", default_value_t = 60)]
    pub body_timeout_secs: u64,

    /// Require a token (and ownership) for task status, instead of the task id alone.
    #[arg(long, env = "RASTERCAST_PRIVATE_TASK_STATUS", default_value_t = false)]
    pub private_task_status: bool,

    /// Seconds between SSE keep-alive comments and WebSocket pings; a WebSocket peer that
    /// has not answered for two intervals is closed.
    #[arg(long, env = "RASTERCAST_KEEPALIVE_SECS", default_value_t = 15)]
    pub keepalive_secs: u64,

    /// Log format: `text` or `json`.
    #[arg(long, env = "RASTERCAST_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Events a live client may fall behind before it is resynced with snapshots (one task's
    /// feed, at most 32: see `bus::Topic`).
    #[arg(
        long,
        env = "RASTERCAST_BUS_CAPACITY",
        default_value_t = 1024,
        hide = true
    )]
    pub bus_capacity: usize,

    /// How long a stream ticket stays valid; shortened by tests that need one to expire.
    #[arg(
        long,
        env = "RASTERCAST_STREAM_TICKET_SECS",
        default_value_t = 30,
        hide = true
    )]
    pub stream_ticket_secs: u64,

    /// PostgreSQL's event log keeps at least this many events (and every event younger than
    /// `--event-log-min-age-secs`); small values let tests prune it.
    #[arg(
        long,
        env = "RASTERCAST_EVENT_LOG_SIZE",
        default_value_t = 10_000,
        hide = true
    )]
    pub event_log_size: i64,

    #[arg(
        long,
        env = "RASTERCAST_EVENT_LOG_MIN_AGE_SECS",
        default_value_t = 600,
        hide = true
    )]
    pub event_log_min_age_secs: u64,

    /// The executable run as a conversion worker (default: this program).
    #[arg(long, env = "RASTERCAST_WORKER_EXE", hide = true)]
    pub worker_exe: Option<PathBuf>,
}

impl Config {
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(cores).max(1)
    }

    /// GDAL threads per conversion, so that all workers together use every core once.
    pub fn gdal_threads(&self) -> usize {
        (cores() / self.workers()).max(1)
    }

    pub fn task_timeout(&self) -> Duration {
        Duration::from_secs(self.task_timeout_secs)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs.max(1))
    }

    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_secs.max(1))
    }

    pub fn cancel_grace(&self) -> Duration {
        Duration::from_millis(self.cancel_grace_ms)
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
