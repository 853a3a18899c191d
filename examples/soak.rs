//! The soak behind `make soak`: thousands of conversions with random cancels while hundreds of
//! SSE and WebSocket subscribers connect and disconnect at random, against the release server,
//! in three rounds. After each, every task is final and every subscriber that stayed connected
//! saw each task's final event; over the last, the server's memory and open files stay within
//! 10% (the first two fill the server's bounded caches and let the allocator settle: RSS after
//! each of five rounds measured 48.7, 56.8, 57.2, 55.9, 56.2 MB). Prints one summary line;
//! exits 1 when a check fails.
//!
//! A conversion that fails, a task revoked without a cancel, a descriptor (pipes included) that
//! is not given back: each fails the soak.
//!
//! cargo run --release --example soak [-- --tasks 2000 --subscribers 500 --warm-rounds 2 --seed N]
//!
//! A quick look (a minute or so; its memory figures mean little):
//! `-- --tasks 300 --subscribers 60 --warm-rounds 1`. `--server-arg ARG` (repeatable) passes
//! ARG to the server, e.g. `--server-arg=--max-pixels=1` to see the soak fail.

#[path = "load/mod.rs"]
mod load;
#[path = "server/mod.rs"]
mod server;

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use server::{root, Server};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// xorshift64*: random moments and choices, repeatable from the printed seed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

#[derive(Clone)]
struct Args {
    tasks: usize,
    subscribers: usize,
    /// Rounds before the one whose memory is measured.
    warm_rounds: usize,
    seed: u64,
    /// Passed on to the server.
    server_args: Vec<String>,
}

fn args() -> Args {
    let mut args = Args {
        tasks: 2000,
        subscribers: 500,
        warm_rounds: 2,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        server_args: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg, it.next()),
        };
        let number = value.as_deref().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), number) {
            ("--tasks", Some(v)) => args.tasks = v as usize,
            ("--subscribers", Some(v)) => args.subscribers = v as usize,
            ("--warm-rounds", Some(v)) => args.warm_rounds = v as usize,
            ("--seed", Some(v)) => args.seed = v,
            ("--server-arg", _) if value.is_some() => args.server_args.extend(value),
            _ => {
                eprintln!("usage: soak [--tasks N] [--subscribers N] [--warm-rounds N] [--seed N] [--server-arg ARG]...");
                std::process::exit(2);
            }
        }
    }
    args
}

/// What the open descriptors of `pid` point to (`socket:[…]`, `pipe:[…]`, paths).
fn descriptors(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .map(|target| target.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Open file descriptors of `pid`, pipes included, without the pipes to its workers (measured
/// when no task runs, so every worker is an idle warm one: their number follows the pool, not
/// a leak). Returns that count and how many worker pipes were left out.
fn open_files(pid: u32) -> (usize, usize) {
    let worker_pipes: HashSet<String> = children_of(pid)
        .into_iter()
        .flat_map(descriptors)
        .filter(|target| target.starts_with("pipe:"))
        .collect();
    let all = descriptors(pid);
    let to_workers = all.iter().filter(|t| worker_pipes.contains(*t)).count();
    (all.len() - to_workers, to_workers)
}

/// The events of one SSE or WebSocket feed of all the user's tasks, as JSON values. SSE is
/// read from a plain socket (HTTP/1.1, chunked) so that dropping a feed closes its connection
/// at once, as a browser tab does; a pooled HTTP client may keep it open for a while.
enum Feed {
    Sse {
        socket: tokio::io::BufReader<tokio::net::TcpStream>,
        /// Decoded body bytes not yet split into messages.
        text: String,
    },
    Ws(
        Box<
            tokio_tungstenite::WebSocketStream<
                tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
            >,
        >,
    ),
}

impl Feed {
    async fn open(url: &str, token: &str, websocket: bool) -> Option<Feed> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        if websocket {
            let mut request = format!("{}/api/v1/ws", url.replacen("http", "ws", 1))
                .into_client_request()
                .ok()?;
            request
                .headers_mut()
                .insert("Authorization", format!("Bearer {token}").parse().ok()?);
            let (mut socket, _) = tokio_tungstenite::connect_async(request).await.ok()?;
            socket
                .send(Message::text(r#"{"type":"subscribe","all":true}"#))
                .await
                .ok()?;
            return Some(Feed::Ws(Box::new(socket)));
        }
        let addr = url.trim_start_matches("http://");
        let mut socket = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        socket.write_all(request.as_bytes()).await.ok()?;
        let mut socket = tokio::io::BufReader::new(socket);
        let mut line = String::new();
        socket.read_line(&mut line).await.ok()?;
        if !line.starts_with("HTTP/1.1 200") {
            return None;
        }
        loop {
            line.clear();
            socket.read_line(&mut line).await.ok()?;
            if line == "\r\n" {
                break;
            }
        }
        Some(Feed::Sse {
            socket,
            text: String::new(),
        })
    }

    /// The next event, or `None` when the feed ended.
    async fn next(&mut self) -> Option<Value> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        match self {
            Feed::Ws(socket) => loop {
                if let Message::Text(text) = socket.next().await?.ok()? {
                    if let Ok(event) = serde_json::from_str(&text) {
                        return Some(event);
                    }
                }
            },
            Feed::Sse { socket, text } => loop {
                while let Some(end) = text.find("\n\n") {
                    let message: String = text.drain(..end + 2).collect();
                    let data = message.lines().find_map(|l| l.strip_prefix("data: "));
                    if let Some(event) = data.and_then(|d| serde_json::from_str(d).ok()) {
                        return Some(event);
                    }
                }
                // One chunk: its size in hex on a line, the bytes, a line end.
                let mut size = String::new();
                socket.read_line(&mut size).await.ok()?;
                let size = usize::from_str_radix(size.trim(), 16)
                    .ok()
                    .filter(|n| *n > 0)?;
                let mut chunk = vec![0; size + 2];
                socket.read_exact(&mut chunk).await.ok()?;
                text.push_str(&String::from_utf8_lossy(&chunk[..size]));
            },
        }
    }
}

fn is_final(event: &Value) -> bool {
    matches!(
        event["state"].as_str(),
        Some("SUCCESS" | "FAILURE" | "REVOKED")
    )
}

/// A subscriber that stays for the whole run: the ids of the tasks whose final event it saw.
async fn stayer(
    url: String,
    token: String,
    websocket: bool,
    ready: tokio::sync::mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
    finished: Option<Arc<AtomicU64>>,
) -> Option<HashSet<String>> {
    let mut feed = Feed::open(&url, &token, websocket).await?;
    let _ = ready.send(()).await;
    drop(ready);
    let mut finals = HashSet::new();
    loop {
        tokio::select! {
            event = feed.next() => {
                let event = event?;
                if is_final(&event) {
                    if let Some(id) = event["task_id"].as_str() {
                        if finals.insert(id.to_string()) {
                            if let Some(finished) = &finished {
                                finished.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
            _ = stop.wait_for(|s| *s) => return Some(finals),
        }
    }
}

/// A subscriber that comes and goes: connects, reads for a random while, disconnects, again.
async fn churner(
    url: String,
    token: String,
    mut rng: Rng,
    stop: watch::Receiver<bool>,
    connections: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
) {
    while !*stop.borrow() {
        let websocket = rng.below(2) == 0;
        match Feed::open(&url, &token, websocket).await {
            Some(mut feed) => {
                connections.fetch_add(1, Ordering::Relaxed);
                let stay = Duration::from_millis(1000 + rng.below(9000));
                let _ = tokio::time::timeout(stay, async { while feed.next().await.is_some() {} })
                    .await;
            }
            None => {
                failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn queue_is_empty(client: &reqwest::Client, server: &Server) -> bool {
    for state in ["PENDING", "PROGRESS"] {
        let page: Option<Value> = async {
            client
                .get(format!("{}/api/v1/tasks?state={state}&limit=1", server.url))
                .bearer_auth(&server.token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()
        }
        .await;
        if page.is_none_or(|p| !p["tasks"].as_array().is_some_and(|t| t.is_empty())) {
            return false;
        }
    }
    true
}

/// Waits until the server has no task left and no stream open, then a moment more.
async fn settle(client: &reqwest::Client, server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !queue_is_empty(client, server).await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = client
            .get(format!("{}/metrics", server.url))
            .send()
            .await
            .ok();
        let text = match metrics {
            Some(r) => r.text().await.unwrap_or_default(),
            None => String::new(),
        };
        let open: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("rastercast_sse_connections ")
                    || l.starts_with("rastercast_websocket_connections ")
            })
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .sum();
        if open == 0.0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The server gives freed memory back every 5 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
}

async fn convert(client: &reqwest::Client, server: &Server, item: &str) -> Option<String> {
    server.start_conversion(client, item).await.ok()
}

/// Events the server keeps for `Last-Event-ID` resumes.
const REPLAY_WINDOW: u64 = 10_000;

/// Events the server has published so far (from `/metrics`).
async fn published(client: &reqwest::Client, server: &Server) -> u64 {
    let text = match client.get(format!("{}/metrics", server.url)).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .find_map(|l| l.strip_prefix("rastercast_events_published_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// Tasks not yet final that the soak lets pile up: a steady backlog, as a busy server has.
const BACKLOG: u64 = 64;

/// What one round saw.
struct Round {
    tasks: usize,
    took: Duration,
    states: std::collections::BTreeMap<String, usize>,
    refused: usize,
    /// Cancel requests sent.
    cancels: usize,
    stayed: usize,
    stayers: usize,
    missed: usize,
    connections: u64,
    failures: u64,
}

impl Round {
    fn ok(&self, wanted: usize) -> Vec<&'static str> {
        let mut failed = Vec::new();
        if self.refused > 0 || self.tasks != wanted {
            failed.push("some conversions were refused");
        }
        let finals: usize = ["SUCCESS", "FAILURE", "REVOKED"]
            .iter()
            .filter_map(|s| self.states.get(*s))
            .sum();
        if finals != self.tasks {
            failed.push("some tasks are not final");
        }
        // Tiny valid rasters: every conversion that was not cancelled succeeds.
        if self.states.get("FAILURE").is_some_and(|n| *n > 0) {
            failed.push("some conversions failed");
        }
        if self
            .states
            .get("REVOKED")
            .is_some_and(|n| *n > self.cancels)
        {
            failed.push("more tasks were revoked than cancels were sent");
        }
        if self.stayed != self.stayers || self.missed > 0 {
            failed.push("a subscriber that stayed missed final events");
        }
        if self.failures > 0 {
            failed.push("some subscribers could not connect");
        }
        failed
    }

    fn summary(&self, subscribers: usize) -> String {
        format!(
            "{} tasks in {:.1} s ({:.0}/s; {}), {} refused, {} cancels sent; {subscribers} subscribers: {} of {} stayed and missed {} final events, {} churning made {} connections ({} failed)",
            self.tasks,
            self.took.as_secs_f64(),
            self.tasks as f64 / self.took.as_secs_f64(),
            self.states
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.refused,
            self.cancels,
            self.stayed,
            self.stayers,
            self.missed,
            subscribers - self.stayers,
            self.connections,
            self.failures,
        )
    }
}

/// One round: subscribers (a tenth stay, the rest churn) and `args.tasks` conversions, one in
/// ten cancelled at a random moment; returns once every task is final and everyone left.
async fn round(
    args: &Args,
    rng: &mut Rng,
    client: &reqwest::Client,
    server: &Server,
    items: (&str, &str),
) -> anyhow::Result<Round> {
    let (tiny, small) = items;
    let (stop_tx, stop) = watch::channel(false);
    let stayers_n = (args.subscribers / 10).max(2);
    let finished = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(stayers_n);
    let mut stayers = tokio::task::JoinSet::new();
    for i in 0..stayers_n {
        stayers.spawn(stayer(
            server.url.clone(),
            server.token.clone(),
            i % 2 == 1,
            ready_tx.clone(),
            stop.clone(),
            (i == 0).then(|| finished.clone()),
        ));
    }
    drop(ready_tx);
    while ready_rx.recv().await.is_some() {}
    // Subscriptions take effect as the server reads them: give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connections = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut churners = tokio::task::JoinSet::new();
    for _ in stayers_n..args.subscribers {
        churners.spawn(churner(
            server.url.clone(),
            server.token.clone(),
            Rng(rng.below(u64::MAX) | 1),
            stop.clone(),
            connections.clone(),
            failures.clone(),
        ));
    }

    let started = Instant::now();
    let mut submitted = Vec::with_capacity(args.tasks);
    let mut cancels = tokio::task::JoinSet::new();
    let mut refused = 0;
    let mut cancels_sent = 0;
    for n in 0..args.tasks {
        while n as u64 >= finished.load(Ordering::Relaxed) + BACKLOG {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let item = if rng.below(10) == 0 { small } else { tiny };
        match convert(client, server, item).await {
            Some(id) => {
                if rng.below(10) == 0 {
                    cancels_sent += 1;
                    let (client, url, token) =
                        (client.clone(), server.url.clone(), server.token.clone());
                    let (id, wait) = (id.clone(), rng.below(300));
                    cancels.spawn(async move {
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        let _ = client
                            .post(format!("{url}/api/v1/tasks/{id}/cancel"))
                            .bearer_auth(&token)
                            .send()
                            .await;
                    });
                }
                submitted.push(id);
            }
            None => refused += 1,
        }
    }
    while cancels.join_next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(600);
    while !queue_is_empty(client, server).await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    // Let the last final events reach everyone, then end the round.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_tx.send(true)?;
    let (mut missed, mut stayed) = (0, 0);
    while let Some(finals) = stayers.join_next().await {
        match finals.ok().flatten() {
            Some(finals) => {
                stayed += 1;
                missed += submitted.iter().filter(|id| !finals.contains(*id)).count();
            }
            None => missed += submitted.len(),
        }
    }
    while churners.join_next().await.is_some() {}

    let mut states = std::collections::BTreeMap::<String, usize>::new();
    for id in &submitted {
        let status: Value = client
            .get(format!("{}/api/v1/tasks/{id}/status", server.url))
            .send()
            .await?
            .json()
            .await?;
        *states
            .entry(status["state"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    Ok(Round {
        tasks: submitted.len(),
        took,
        states,
        refused,
        cancels: cancels_sent,
        stayed,
        stayers: stayers_n,
        missed,
        connections: connections.load(Ordering::Relaxed),
        failures: failures.load(Ordering::Relaxed),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = args();
    load::raise_fd_limit();
    let mut rng = Rng(args.seed | 1);
    // Idle keep-alive connections are the soak's, not the server's: closed after 2 s, so the
    // settled counts of the server's descriptors do not include however many this client
    // happened to keep from the round's busiest moment (6 s pass in `settle`).
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(2))
        .build()?;
    let server_args: Vec<&str> = args.server_args.iter().map(String::as_str).collect();
    let (server, _) = Server::start(&server_args).await?;
    let data = root().join("../shared/data");
    let tiny = server.upload(&client, &data.join("byte.tif")).await?;
    let small = server.upload(&client, &data.join("RGB.byte.tif")).await?;
    eprintln!("soak: server at {}, seed {}", server.url, args.seed);

    // The first round fills what the server keeps by design, and bounded: the replay window
    // of the last 10,000 events, the latest status of the last 1,000 finished tasks, the
    // database's page cache, idle workers. Growth over the second round would be a leak.
    // It is the second's twin: what a server holds after a crowd left depends on the crowd
    // and on how long it stayed, as the allocator's arenas and the runtime's threads grow.
    let mut failed = Vec::new();
    for n in 1..=args.warm_rounds {
        let warm = round(&args, &mut rng, &client, &server, (&tiny, &small)).await?;
        failed.extend(warm.ok(args.tasks));
        settle(&client, &server).await;
        eprintln!(
            "soak: warm-up round {n}: {}; RSS {:.1} MB",
            warm.summary(args.subscribers),
            load::rss_kib(server.pid()) as f64 / 1024.0
        );
    }
    // Until the replay window is full, the second round would see it grow.
    while published(&client, &server).await < REPLAY_WINDOW + 1000 {
        for _ in 0..100 {
            convert(&client, &server, &tiny).await;
        }
        while !queue_is_empty(&client, &server).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    settle(&client, &server).await;
    let (rss_before, (files_before, pipes_before)) =
        (load::rss_kib(server.pid()), open_files(server.pid()));
    let second = round(&args, &mut rng, &client, &server, (&tiny, &small)).await?;
    settle(&client, &server).await;
    let (rss_after, (files_after, pipes_after)) =
        (load::rss_kib(server.pid()), open_files(server.pid()));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or(String::new(), |v| {
                v.split_whitespace().collect::<Vec<_>>().join(" ")
            })
    };
    eprintln!(
        "soak: server memory now: anonymous {}, file-backed {}, threads {}",
        field("RssAnon:"),
        field("RssFile:"),
        field("Threads:")
    );

    let rss_growth = rss_after as f64 / rss_before.max(1) as f64 - 1.0;
    let files_growth = files_after as f64 / files_before.max(1) as f64 - 1.0;
    println!(
        "soak: {}; RSS {:.1} -> {:.1} MB ({:+.1}%), open files {files_before} -> {files_after} ({:+.1}%; besides {pipes_before} -> {pipes_after} pipes to idle workers) over it; seed {}",
        second.summary(args.subscribers),
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        rss_growth * 100.0,
        files_growth * 100.0,
        args.seed,
    );
    failed.extend(second.ok(args.tasks));
    if rss_growth > 0.10 {
        failed.push("the server's memory grew by more than 10%");
    }
    if files_growth > 0.10 {
        failed.push("the server's open files grew by more than 10%");
    }
    failed.dedup();
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("soak FAILED: {}", failed.join("; "));
        Ok(ExitCode::FAILURE)
    }
}
