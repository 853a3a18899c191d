//! The server killed with SIGKILL at random moments, again and again, while conversions and
//! uploads stream in; and workers killed under it. Nothing is lost, run twice, left half-written
//! or left running.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gdal::{Dataset, Metadata};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{alive, children_of, data, download, files_in, TestServer};

const KILLS: usize = 20;
const MAX_ATTEMPTS: u32 = 3;

/// xorshift64*: enough randomness to pick moments, and a printed seed repeats a run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// What a script does against the server: start conversions and upload files, one request
/// every 100 ms, ignoring the errors of a server that is killed under it. The ids of tasks
/// whose 200 arrived are kept: those must never be lost.
async fn keep_submitting(
    url: String,
    token: String,
    sources: Vec<String>,
    accepted: Arc<Mutex<Vec<String>>>,
    seed: u64,
) {
    let http = crate::helpers::http_client();
    let mut rng = Rng(seed | 1);
    let options = [
        json!({}),
        json!({"target_crs": "EPSG:4326"}),
        json!({"target_crs": "EPSG:3857", "overview_resampling": "lanczos"}),
    ];
    loop {
        if rng.below(5) == 0 {
            let bytes = std::fs::read(data("RGB.byte.tif")).unwrap();
            let _ = http
                .post(format!("{url}/api/v1/tree-items?name=upload.tif"))
                .bearer_auth(&token)
                .body(bytes)
                .send()
                .await;
        } else {
            let source = &sources[rng.below(sources.len() as u64) as usize];
            let res = http
                .post(format!(
                    "{url}/api/v1/tree-items/{source}/convert-to-geo-raster"
                ))
                .bearer_auth(&token)
                .json(&options[rng.below(options.len() as u64) as usize])
                .send()
                .await;
            if let Ok(res) = res {
                if res.status() == StatusCode::OK {
                    if let Ok(body) = res.json::<Value>().await {
                        let id = body["task_id"].as_str().unwrap().to_string();
                        accepted.lock().unwrap().push(id);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn db(server: &TestServer) -> rusqlite::Connection {
    rusqlite::Connection::open(server.data_dir().join("rastercast.db")).unwrap()
}

fn ids_where(conn: &rusqlite::Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn.prepare(sql).unwrap();
    let rows = stmt.query_map([], |r| r.get(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_at_random_moments_lose_nothing_and_leak_nothing() {
    let seed = std::env::var("RASTERCAST_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("RASTERCAST_CRASH_SEED={seed} repeats this run");
    let mut rng = Rng(seed | 1);

    let max_attempts = MAX_ATTEMPTS.to_string();
    let mut server =
        TestServer::start_with(&["--workers", "2", "--max-attempts", &max_attempts]).await;
    let mut sources = Vec::new();
    for name in ["byte.tif", "RGB.byte.tif", "shade.tif"] {
        sources.push(
            server.upload(&data(name)).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let accepted = Arc::new(Mutex::new(Vec::new()));
    // How often each task was running when the server was killed.
    let mut cut: HashMap<String, u32> = HashMap::new();

    for _ in 0..KILLS {
        let submitter = tokio::spawn(keep_submitting(
            server.url.clone(),
            server.token.clone(),
            sources.clone(),
            accepted.clone(),
            rng.below(u64::MAX),
        ));
        let before = accepted.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(50 + rng.below(1200))).await;
        // On a loaded machine the random moment can come before any submit got its answer:
        // the kill then waits for one, so that every round has work of its own to cut.
        let deadline = Instant::now() + Duration::from_secs(60);
        while accepted.lock().unwrap().len() == before {
            assert!(
                Instant::now() < deadline,
                "no submit was answered in a minute"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let workers = children_of(server.pid());
        server.stop(libc::SIGKILL).await;
        submitter.abort();

        let deadline = Instant::now() + Duration::from_secs(5);
        while workers.iter().any(|pid| alive(*pid)) {
            assert!(Instant::now() < deadline, "a worker outlived its server");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for id in ids_where(
            &db(&server),
            "SELECT id FROM tasks WHERE state = 'PROGRESS'",
        ) {
            *cut.entry(id).or_default() += 1;
        }
        server.restart().await;
    }

    // The last start runs everything that is left.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (_, pending) = server
            .get_json("/tasks?state=PENDING&limit=1", &server.token)
            .await;
        let (_, running) = server
            .get_json("/tasks?state=PROGRESS&limit=1", &server.token)
            .await;
        if pending["tasks"].as_array().unwrap().is_empty()
            && running["tasks"].as_array().unwrap().is_empty()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the queue did not drain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let conn = db(&server);
    let mut tasks = HashMap::new();
    let mut stmt = conn
        .prepare("SELECT id, state, attempts, coalesce(error, ''), result FROM tasks")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ),
            ))
        })
        .unwrap();
    for row in rows {
        let (id, task) = row.unwrap();
        tasks.insert(id, task);
    }

    let accepted = accepted.lock().unwrap().clone();
    eprintln!(
        "{} tasks accepted over {KILLS} kills, {} stored, {} cut at least once, {} cut twice or more",
        accepted.len(),
        tasks.len(),
        cut.len(),
        cut.values().filter(|n| **n > 1).count()
    );
    assert!(accepted.len() >= KILLS, "the stream kept going");
    for id in &accepted {
        assert!(
            tasks.contains_key(id),
            "task {id} was accepted and then lost"
        );
    }

    let mut outputs = HashSet::new();
    for (id, (state, attempts, error, result)) in &tasks {
        let cuts = cut.get(id).copied().unwrap_or(0);
        match state.as_str() {
            "SUCCESS" => {
                assert_eq!(*attempts, cuts + 1, "task {id}: attempts after {cuts} cuts");
                let result: Value = serde_json::from_str(result.as_deref().unwrap()).unwrap();
                let output = result["tree_item_id"].as_str().unwrap().to_string();
                assert!(outputs.insert(output), "task {id} published twice");
            }
            "FAILURE" => {
                assert!(error.contains("server stopped"), "task {id}: {error}");
                assert_eq!(*attempts, MAX_ATTEMPTS, "task {id}");
                assert_eq!(cuts, MAX_ATTEMPTS, "task {id} failed after {cuts} cuts");
            }
            other => panic!("task {id} ended {other}"),
        }
    }

    // Exactly one output per successful task, each a valid COG.
    let stored_outputs: HashSet<String> =
        ids_where(&conn, "SELECT id FROM items WHERE source_id IS NOT NULL")
            .into_iter()
            .collect();
    assert_eq!(stored_outputs, outputs, "outputs without a task, or lost");
    for output in &outputs {
        let file = download(&server, output).await;
        let ds = Dataset::open(file.path()).unwrap();
        assert_eq!(
            ds.metadata_item("LAYOUT", "IMAGE_STRUCTURE").as_deref(),
            Some("COG"),
            "output {output}"
        );
    }

    // No half-written file anywhere, and no blob that nothing refers to.
    assert!(server.tmp_files().is_empty(), "{:?}", server.tmp_files());
    let referenced: HashSet<String> =
        ids_where(&conn, "SELECT blob FROM items WHERE blob IS NOT NULL")
            .into_iter()
            .collect();
    let on_disk: HashSet<String> = files_in(&server.data_dir().join("blobs"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        on_disk, referenced,
        "blobs on disk vs. blobs in the database"
    );

    let (code, _) = server.get_json("/tree-items", &server.token).await;
    assert_eq!(code, StatusCode::OK);
}

/// A worker killed from outside, as the OOM killer or a crash in a driver would, fails its own
/// task with a readable reason; the task queued behind it and the idle warm workers killed
/// with it do not take anyone else's task down; an idle worker killed while it waits is never
/// handed the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_by_a_signal_fails_only_its_own_task() {
    // One attempt: a SIGKILL from outside is a transient failure that would otherwise be
    // retried (see `retries`); here every kill must end its task at once.
    let server = TestServer::start_with(&["--workers", "1", "--max-attempts", "1"]).await;
    let big = server.upload(&crate::lifecycle::big_raster()).await;
    let small = server.upload(&data("RGB.byte.tif")).await;
    for (signal, reason) in [
        (libc::SIGSEGV, "crashed (signal 11)"),
        (libc::SIGKILL, "was killed"),
        (libc::SIGABRT, "crashed (signal 6)"),
    ] {
        let slow = server
            .convert(
                &big,
                json!({"target_crs": "EPSG:4326", "overview_resampling": "lanczos"}),
            )
            .await["task_id"]
            .as_str()
            .unwrap()
            .to_string();
        let queued = server.convert(&small, json!({})).await["task_id"]
            .as_str()
            .unwrap()
            .to_string();
        server
            .wait_for(&slow, Duration::from_secs(60), |s| {
                s["state"] == "PROGRESS" && s["progress"].as_f64().unwrap() > 2.0
            })
            .await;
        // Every worker: the busy one and any idle warm ones.
        for worker in children_of(server.pid()) {
            // SAFETY: plain kill(2) on a child of our own server.
            unsafe { libc::kill(worker, signal) };
        }

        let status = server.wait_final(&slow).await;
        assert_eq!(status["state"], "FAILURE", "{status}");
        assert!(
            status["error"].as_str().unwrap().contains(reason),
            "signal {signal}: {status}"
        );
        let status = server.wait_final(&queued).await;
        assert_eq!(status["state"], "SUCCESS", "signal {signal}: {status}");
        assert!(server.tmp_files().is_empty());
    }

    // The worker that ran the last small task went back to the pool: kill it while it idles,
    // and the next job (an upload's inspection, then a conversion) must go to a fresh worker,
    // not to the dead one.
    let kill_the_idle_worker = |signal: i32| {
        let server = &server;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while server.metric("rastercast_workers_idle").await < 1.0 {
                assert!(Instant::now() < deadline, "no worker went back to the pool");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let idle = children_of(server.pid());
            assert_eq!(idle.len(), 1, "one idle worker: {idle:?}");
            let starts = server.metric("rastercast_worker_starts_total").await;
            // SAFETY: plain kill(2) on a child of our own server.
            unsafe { libc::kill(idle[0], signal) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(idle[0]) {
                assert!(Instant::now() < deadline, "the idle worker did not die");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (idle[0], starts)
        }
    };
    let (dead, starts) = kill_the_idle_worker(libc::SIGKILL).await;
    let item = server.upload(&data("RGB.byte.tif")).await;
    assert_eq!(item["geo_raster"]["width"], 791, "described: {item}");
    assert_eq!(
        server.metric("rastercast_worker_starts_total").await,
        starts + 1.0,
        "the inspection ran on a fresh worker"
    );
    assert!(!children_of(server.pid()).contains(&dead));

    let (dead, starts) = kill_the_idle_worker(libc::SIGSEGV).await;
    let id = server.convert(&item, json!({})).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let status = server.wait_final(&id).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    assert_eq!(
        server.metric("rastercast_worker_starts_total").await,
        starts + 1.0,
        "the conversion ran on a fresh worker"
    );
    assert!(!children_of(server.pid()).contains(&dead));
    assert_eq!(server.healthz().await, StatusCode::OK);
}

/// Conversion workers run at nice 10, below the server's own threads, so that events and HTTP
/// keep their pace while GDAL takes every core.
#[tokio::test]
async fn conversion_workers_run_below_the_servers_priority() {
    let server = TestServer::start().await;
    let done = server.convert_file(&data("byte.tif"), json!({})).await;
    assert_eq!(done["state"], "SUCCESS");
    let stat_field = |pid: i32, field: usize| -> String {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name start at the third.
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        rest.split_whitespace()
            .nth(field - 3)
            .unwrap_or_default()
            .to_string()
    };
    // The worker that ran it stays warm for the next job.
    let workers: Vec<i32> = children_of(server.pid())
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("rastercast-work"))
        })
        .collect();
    assert!(!workers.is_empty(), "a warm worker is kept");
    for pid in workers {
        assert_eq!(stat_field(pid, 19), "10", "worker {pid}'s nice value");
    }
}
