//! Several nodes on one PostgreSQL and one data dir, as real processes: a task runs once, on
//! whichever node claims it; every node's watchers see its events; a cancel or a resume works
//! from any node; a node killed mid-task is replaced. Leases are 1.5 s here, so a dead node's
//! task is taken over within a few seconds.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{children_of, data, eventually, outputs_in, Cable, TestDatabase, TestServer};
use crate::lifecycle::{big_raster, slow, wait_running};
use crate::live_clients::{is_final, ws_connect, ws_next, ws_send, Sse};

const LEASE_SECS: &str = "1.5";

/// Nodes with the given roles, on `db` and one shared data dir, each with one worker.
async fn cluster(db: &TestDatabase, roles: &[&str]) -> Vec<TestServer> {
    cluster_with(db, roles, &[]).await
}

async fn cluster_with(db: &TestDatabase, roles: &[&str], extra: &[&str]) -> Vec<TestServer> {
    let mut nodes: Vec<TestServer> = Vec::new();
    for role in roles {
        let mut args = vec![
            "--database-url",
            &db.url,
            "--role",
            role,
            "--lease-secs",
            LEASE_SECS,
            "--workers",
            "1",
        ];
        args.extend_from_slice(extra);
        let node = match nodes.first() {
            None => TestServer::start_with(&args).await,
            Some(first) => first.join(&args).await,
        };
        nodes.push(node);
    }
    nodes
}

/// Runs this node ended in `outcome` (success, failure, stopped), from its own `/metrics`.
async fn ended(node: &TestServer, outcome: &str) -> u64 {
    let name = format!("rastercast_conversion_seconds_count{{outcome=\"{outcome}\"}}");
    node.metric_or_zero(&name).await as u64
}

/// Conversions this node finished with a success.
async fn successes(node: &TestServer) -> u64 {
    ended(node, "success").await
}

/// Waits until `nodes` together have counted `n` runs ending in `outcome`. A worker counts
/// its run after its end has committed, so a watcher may see the final state first.
async fn wait_outcome(nodes: &[&TestServer], outcome: &str, n: u64) {
    let what = format!("{n} runs ending in {outcome}");
    eventually(&what, Duration::from_secs(60), || async {
        let mut counted = 0;
        for node in nodes {
            counted += ended(node, outcome).await;
        }
        (counted >= n).then_some(())
    })
    .await
}

/// How many conversions this node ended, by outcome (success, failure, stopped).
async fn outcomes(node: &TestServer) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    for outcome in ["success", "failure", "stopped"] {
        let n = ended(node, outcome).await;
        if n > 0 {
            out.insert(outcome.to_string(), n);
        }
    }
    out
}

/// Which of the worker nodes `nodes[1..]` runs the conversion (it has a worker child).
async fn busy_node(nodes: &[TestServer]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(n) = (1..nodes.len()).find(|&n| !children_of(nodes[n].pid()).is_empty()) {
            return n;
        }
        assert!(Instant::now() < deadline, "one worker node converts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The events of a feed that are not snapshots, as (seq, state, progress).
fn changes(events: &[(String, Value)]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter(|(_, e)| e["event"] != "snapshot")
        .map(|(id, e)| {
            (
                id.clone(),
                e["state"].to_string(),
                e["progress"].to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_sent_to_one_node_runs_on_another_and_watchers_everywhere_see_every_event() {
    let db = TestDatabase::new();
    let nodes = cluster(&db, &["api", "worker", "api"]).await;
    let (a, worker, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // A worker node serves only its health and metrics.
    let res = worker
        .http
        .get(worker.api("/tasks"))
        .bearer_auth(&worker.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let health = worker.health().await;
    assert_eq!(health["database"], "postgres");
    assert_eq!(health["role"], "worker");

    let item = a.upload(&big_raster()).await;
    let feed =
        |node: &TestServer| Sse::open(node.http.get(node.api("/events")).bearer_auth(&node.token));
    let (mut on_a, mut on_c) = (feed(a).await, feed(c).await);
    let started = a.convert(&item, json!({})).await;
    let id = started["task_id"].as_str().unwrap().to_string();
    let done = |e: &Value| e["task_id"] == id.as_str() && is_final(e);
    let (seen_a, seen_c) = (on_a.events_until(done).await, on_c.events_until(done).await);

    let (changes_a, changes_c) = (changes(&seen_a), changes(&seen_c));
    assert_eq!(
        changes_a, changes_c,
        "both nodes' watchers saw the same events"
    );
    assert!(
        changes_a.len() >= 3,
        "queued, started, …, done: {changes_a:?}"
    );
    assert!(changes_a.iter().any(|(_, s, _)| s == "\"PROGRESS\""));
    assert_eq!(changes_a.last().unwrap().1, "\"SUCCESS\"");
    let seqs: Vec<u64> = changes_a
        .iter()
        .map(|(s, _, _)| s.parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // The worker node ran it; the API nodes ran nothing.
    wait_outcome(&[worker], "success", 1).await;
    assert_eq!(successes(worker).await, 1);
    assert_eq!(successes(a).await + successes(c).await, 0);
    // Its output is readable from any node, and the status is the same everywhere.
    let status = c.wait_final(&id).await;
    assert_eq!(status["state"], "SUCCESS");
    assert_eq!(status["attempts"], 1);
    let output = status["result"]["tree_item_id"].as_str().unwrap();
    let res = c
        .req(
            reqwest::Method::GET,
            &format!("/tree-items/{output}/content"),
            &c.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.unwrap().len() > 1000);
    // Nothing was missed anywhere, so no node resynced its feeds (a log that was empty when a
    // node started is not one pruned past it).
    for node in &nodes {
        assert_eq!(
            node.metric("rastercast_events_lag_resyncs_total").await,
            0.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_cancel_on_one_node_stops_the_work_on_another() {
    let db = TestDatabase::new();
    let nodes = cluster(&db, &["api", "worker"]).await;
    let (api, worker) = (&nodes[0], &nodes[1]);
    let item = api.upload(&big_raster()).await;
    let id = api.convert(&item, slow()).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_running(api, &id).await;
    let workers = children_of(worker.pid());
    assert!(!workers.is_empty(), "the worker node converts");

    let mut socket = ws_connect(
        &api.url,
        &[("authorization", format!("Bearer {}", api.token))],
    )
    .await
    .unwrap();
    ws_send(&mut socket, json!({"type": "subscribe", "task_id": id})).await;
    assert_eq!(ws_next(&mut socket).await.unwrap()["event"], "snapshot");
    ws_send(&mut socket, json!({"type": "cancel", "task_id": id})).await;
    loop {
        let frame = ws_next(&mut socket).await.expect("the socket stays open");
        if frame["task_id"] == id.as_str() && frame["state"] == "REVOKED" {
            break;
        }
    }
    // A heartbeat carries the cancel to the worker node, which stops its worker (and says so:
    // its outcome is "stopped").
    let status = api.wait_final(&id).await;
    assert_eq!(status["state"], "REVOKED");
    crate::lifecycle::assert_cancel_stopped_a_worker(&workers);
    wait_outcome(&[worker], "stopped", 1).await;
    assert_eq!(
        outcomes(worker).await.get("stopped"),
        Some(&1),
        "the worker node stopped it"
    );
    assert_eq!(successes(worker).await, 0);
    let items = api.get_json("/tree-items", &api.token).await.1;
    assert_eq!(outputs_in(&items, item["id"].as_str().unwrap()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_another_node_misses_nothing() {
    let db = TestDatabase::new();
    let nodes = cluster(&db, &["worker", "api", "api"]).await;
    let (a, c) = (&nodes[1], &nodes[2]);
    let item = a.upload(&big_raster()).await;
    let id = a.convert(&item, json!({})).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/tasks/{id}/events");
    // A reference watcher that stays, and one that leaves after three events.
    let mut reference = Sse::open(c.http.get(c.api(&path))).await;
    let mut leaver = Sse::open(a.http.get(a.api(&path))).await;
    let mut first = Vec::new();
    while first.len() < 3 {
        let m = leaver.next().await.expect("events");
        if let (Some(id), Some(data)) = (m.id, m.data) {
            first.push((id, data));
        }
    }
    drop(leaver);
    let whole = reference.events_until(is_final).await;
    let last_id = first.last().unwrap().0.clone();
    let mut resumed = Sse::open(c.http.get(c.api(&path)).header("Last-Event-ID", &last_id)).await;
    let rest = resumed.events_until(is_final).await;

    assert!(
        rest.iter().all(|(_, e)| e["event"] != "snapshot"),
        "a replay, not a snapshot: {rest:?}"
    );
    let mut joined = changes(&first);
    joined.extend(changes(&rest));
    let expected: Vec<_> = changes(&whole)
        .into_iter()
        .filter(|(seq, _, _)| {
            seq.parse::<u64>().unwrap() > first[0].0.parse::<u64>().unwrap()
                || first.iter().any(|(s, _)| s == seq)
        })
        .collect();
    assert_eq!(joined, expected);
    assert_eq!(rest.last().unwrap().1["state"], "SUCCESS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_task_is_replaced_and_the_task_finishes_once() {
    let db = TestDatabase::new();
    let mut nodes = cluster(&db, &["api", "worker", "worker"]).await;
    let item = nodes[0].upload(&big_raster()).await;
    let id = nodes[0].convert(&item, slow()).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_running(&nodes[0], &id).await;
    let busy = busy_node(&nodes).await;
    let child = children_of(nodes[busy].pid());
    nodes[busy].stop(libc::SIGKILL).await;

    let status = nodes[0].wait_final(&id).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    assert_eq!(status["attempts"], 2, "{status}");
    let other = 3 - busy;
    wait_outcome(&[&nodes[other]], "success", 1).await;
    assert_eq!(successes(&nodes[other]).await, 1);
    let items = nodes[0].get_json("/tree-items", &nodes[0].token).await.1;
    assert_eq!(outputs_in(&items, item["id"].as_str().unwrap()), 1);
    // The killed node's conversion died with it, and left nothing visible.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(child.iter().all(|pid| !crate::helpers::alive(*pid)));
    let blobs = nodes[0].blob_files().len();
    let listed = items.as_array().unwrap().len();
    assert_eq!(
        blobs, listed,
        "every blob is an item's, every item has its blob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tasks_over_three_nodes_each_run_once() {
    let db = TestDatabase::new();
    let nodes = cluster(&db, &["all", "all", "all"]).await;
    let item = nodes[0].upload(&data("byte.tif")).await;
    let mut ids = Vec::new();
    for n in 0..200 {
        let node = &nodes[n % 3];
        ids.push(
            node.convert(&item, json!({})).await["task_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut outputs = HashSet::new();
    for (n, id) in ids.iter().enumerate() {
        let status = nodes[(n + 1) % 3].wait_final(id).await;
        assert_eq!(status["state"], "SUCCESS", "{status}");
        assert_eq!(status["attempts"], 1, "{status}");
        outputs.insert(
            status["result"]["tree_item_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(outputs.len(), 200, "each task published its own output");
    let items = nodes[1].get_json("/tree-items", &nodes[1].token).await.1;
    assert_eq!(outputs_in(&items, item["id"].as_str().unwrap()), 200);
    wait_outcome(&nodes.iter().collect::<Vec<_>>(), "success", 200).await;
    let mut per_node = Vec::new();
    for node in &nodes {
        per_node.push(successes(node).await);
    }
    assert_eq!(per_node.iter().sum::<u64>(), 200, "{per_node:?}");
    assert!(
        per_node.iter().filter(|&&n| n > 0).count() >= 2,
        "the work was shared: {per_node:?}"
    );
}

/// A node paused past its lease (as a long GC pause or a network partition would) finds on
/// waking that another node has its task: it stops, and publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_past_its_lease_publishes_nothing() {
    let db = TestDatabase::new();
    let nodes = cluster(&db, &["api", "worker", "worker"]).await;
    let item = nodes[0].upload(&big_raster()).await;
    let id = nodes[0].convert(&item, json!({})).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    nodes[0]
        .wait_for(&id, Duration::from_secs(60), |s| s["state"] == "PROGRESS")
        .await;
    let busy = busy_node(&nodes).await;
    // Its conversion child keeps running; the node itself stops renewing the lease.
    nodes[busy].signal(libc::SIGSTOP);
    nodes[0]
        .wait_for(&id, Duration::from_secs(60), |s| s["attempts"] == 2)
        .await;
    nodes[busy].signal(libc::SIGCONT);

    let status = nodes[0].wait_final(&id).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    assert_eq!(status["attempts"], 2);
    // The woken node ends its own run (its conversion_seconds counts every outcome): wait for
    // that, then see how it ended. It found the lease gone, so it stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ended = outcomes(&nodes[busy]).await;
        if ended.values().sum::<u64>() > 0 {
            assert_eq!(
                ended.get("success"),
                None,
                "the cut-off node published: {ended:?}"
            );
            assert_eq!(ended.get("stopped"), Some(&1), "{ended:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the woken node never ended its run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(successes(&nodes[busy]).await, 0);
    wait_outcome(&[&nodes[3 - busy]], "success", 1).await;
    assert_eq!(successes(&nodes[3 - busy]).await, 1);
    let items = nodes[0].get_json("/tree-items", &nodes[0].token).await.1;
    assert_eq!(outputs_in(&items, item["id"].as_str().unwrap()), 1);
    assert_eq!(nodes[0].blob_files().len(), items.as_array().unwrap().len());
}

/// Nodes that start at once on a new database migrate it once, in turn (an advisory lock):
/// every one of them starts, and the schema is at the last version, recorded once; a node
/// stopped with SIGTERM exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_at_once_migrate_the_database_once() {
    let db = TestDatabase::new();
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_name = 'schema_version'"
        ),
        Some(0),
        "a fresh database"
    );
    let args = [
        "--database-url",
        &db.url,
        "--lease-secs",
        LEASE_SECS,
        "--workers",
        "1",
    ];
    let (mut nodes, tokens) = TestServer::start_together(4, &args).await;
    assert_eq!(tokens, 1, "exactly one node made the first user's token");
    assert_eq!(db.query_i64("SELECT count(*) FROM tokens"), Some(1));
    for node in &nodes {
        assert_eq!(node.healthz().await, 200);
    }
    assert_eq!(db.query_i64("SELECT count(*) FROM schema_version"), Some(1));
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/store"))
        .unwrap()
        .filter(|f| {
            let name = f.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("postgres_") && name.ends_with(".sql")
        })
        .count();
    assert_eq!(
        db.query_i64("SELECT version FROM schema_version"),
        Some(migrations as i64),
        "every PostgreSQL migration ran"
    );
    // The nodes work on the schema they made together.
    let status = nodes[1].convert_file(&data("byte.tif"), json!({})).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    // And a node leaves cleanly on SIGTERM.
    let status = nodes[1].stop(libc::SIGTERM).await;
    assert!(status.success(), "{status:?}");
}

/// A node whose database connections are cut answers 503 on `/healthz` while it cannot reach
/// the database, reconnects by itself, and its watchers get events again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reconnects_after_its_database_connections_are_cut() {
    let db = TestDatabase::new();
    let nodes = cluster(&db, &["all"]).await;
    let node = &nodes[0];
    assert_eq!(node.healthz().await, 200);
    let item = node.upload(&data("byte.tif")).await;

    // Both of the node's connections (requests, and the relay's) are ended.
    let ended = db.cut_connections();
    assert!(ended >= 2, "only {ended} connections were ended");
    // A cut connection is found out when used: that request fails (503), or the store sees
    // the connection closed first and reconnects before it (200).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut codes = Vec::new();
    loop {
        let code = node.healthz().await;
        codes.push(code.as_u16());
        if code == 200 {
            break;
        }
        assert_eq!(code, 503, "{codes:?}");
        assert!(Instant::now() < deadline, "no reconnect: {codes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node.health().await["status"], "ok");

    // The relay reconnected too: a feed sees a new conversion through to SUCCESS.
    let mut feed = Sse::open(node.http.get(node.api("/events")).bearer_auth(&node.token)).await;
    let id = node.convert(&item, json!({})).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let seen = feed
        .events_until(|e| e["task_id"] == id.as_str() && is_final(e))
        .await;
    assert_eq!(seen.last().unwrap().1["state"], "SUCCESS");
    let log = std::fs::read_to_string(node.data_dir().join("server.log")).unwrap();
    assert!(
        log.contains("the event relay lost its connection"),
        "the relay's connection was cut too"
    );
}

/// A node paused for longer than the event log keeps events comes back to a pruned log: its
/// watchers get a resync snapshot of every task that changed meanwhile, final states included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_slept_past_the_event_log_resyncs_its_watchers() {
    let db = TestDatabase::new();
    let small_log = ["--event-log-size", "2", "--event-log-min-age-secs", "0"];
    let nodes = cluster_with(&db, &["api", "all"], &small_log).await;
    let (sleeper, busy) = (&nodes[0], &nodes[1]);
    let mut feed = Sse::open(
        sleeper
            .http
            .get(sleeper.api("/events"))
            .bearer_auth(&sleeper.token),
    )
    .await;
    // The feed has subscribed once it sends its position (an `id:` with no task yet); the
    // `retry:` before it goes out first, so a pause right after that could come before the
    // subscription, and the feed would then start on waking with plain snapshots.
    while feed.next().await.expect("the feed starts").id.is_none() {}
    let resyncs = "rastercast_events_lag_resyncs_total";
    let resyncs_before = sleeper.metric(resyncs).await;
    // No event is written before the pause: the sleeper has relayed everything up to here.
    let relayed = db
        .query_i64("SELECT last_value FROM task_events_seq")
        .unwrap();

    sleeper.signal(libc::SIGSTOP);
    let item = busy.upload(&data("byte.tif")).await;
    let mut ids = HashSet::new();
    for _ in 0..3 {
        let id = busy.convert(&item, json!({})).await["task_id"]
            .as_str()
            .unwrap()
            .to_string();
        busy.wait_final(&id).await;
        ids.insert(id);
    }
    // The busy node prunes its log every 10 s, down to 3 events here: wait until the log
    // starts past what the sleeper relayed, and no longer holds every final state, so that
    // only a resync can bring them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let oldest = db.query_i64("SELECT MIN(seq) FROM task_events").unwrap();
        let finals = db
            .query_i64("SELECT count(*) FROM task_events WHERE state = 'SUCCESS'")
            .unwrap();
        if oldest > relayed + 1 && finals < ids.len() as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log was never pruned past the sleeper: oldest seq {oldest}, relayed {relayed}, \
             {finals} final events left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sleeper.signal(libc::SIGCONT);

    let mut finished = HashSet::new();
    while finished.len() < ids.len() {
        let message = feed.next().await.expect("the feed stays open");
        let Some(event) = message.data else { continue };
        let id = event["task_id"].as_str().unwrap_or_default().to_string();
        if ids.contains(&id) && event["state"] == "SUCCESS" {
            assert_eq!(event["event"], "snapshot", "{event}");
            assert_eq!(
                event["resync"], true,
                "a final state came as a resync: {event}"
            );
            finished.insert(id);
        }
    }
    assert!(
        sleeper.metric(resyncs).await > resyncs_before,
        "the sleeper counted its resync"
    );
}

/// A node that cannot reach its database says so on `/healthz` (503), and is healthy again,
/// events included, once the network is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_a_database_out_of_reach_and_its_return() {
    let db = TestDatabase::new();
    let mut cable = Cable::to(db.port()).await;
    let url = db.url_through(cable.port);
    let node = TestServer::start_with(&["--database-url", &url, "--workers", "1"]).await;
    assert_eq!(node.healthz().await, 200);
    let item = node.upload(&data("byte.tif")).await;

    cable.cut();
    let health = |status: u16| {
        let node = &node;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let res = node
                    .http
                    .get(format!("{}/healthz", node.url))
                    .send()
                    .await
                    .unwrap();
                if res.status().as_u16() == status {
                    return res.json::<Value>().await.unwrap();
                }
                assert!(
                    Instant::now() < deadline,
                    "/healthz never answered {status}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let down = health(503).await;
    assert_eq!(down["code"], "database_unavailable");
    assert!(down["detail"].as_str().unwrap().contains("database"));

    cable.mend().await;
    assert_eq!(health(200).await["status"], "ok");
    let mut feed = Sse::open(node.http.get(node.api("/events")).bearer_auth(&node.token)).await;
    let id = node.convert(&item, json!({})).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let seen = feed
        .events_until(|e| e["task_id"] == id.as_str() && is_final(e))
        .await;
    assert_eq!(seen.last().unwrap().1["state"], "SUCCESS");
}

/// Two deployments that share one PostgreSQL database, each in a schema of its own, hear only
/// their own events: notification channels are the database's, so each schema has its own.
/// (A relay that took the other deployment's event numbers for its own would skip its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_in_schemas_of_one_database_hear_only_their_own_events() {
    let (db_a, db_b) = (TestDatabase::new(), TestDatabase::new());
    let a = TestServer::start_with(&["--database-url", &db_a.url]).await;
    let b = TestServer::start_with(&["--database-url", &db_b.url]).await;
    let (item_a, item_b) = (
        a.upload(&data("byte.tif")).await,
        b.upload(&data("byte.tif")).await,
    );

    // B's event numbers run well ahead of A's.
    for _ in 0..5 {
        let id = b.convert(&item_b, json!({})).await["task_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(b.wait_final(&id).await["state"], "SUCCESS");
    }
    let mut feed = Sse::open(a.http.get(a.api("/events")).bearer_auth(&a.token)).await;
    let id = a.convert(&item_a, json!({})).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let seen = tokio::time::timeout(
        Duration::from_secs(30),
        feed.events_until(|e| e["task_id"] == id.as_str() && is_final(e)),
    )
    .await
    .expect("A's own events reach A's watchers");
    assert_eq!(seen.last().unwrap().1["state"], "SUCCESS");
    assert!(seen.iter().all(|(_, e)| e["task_id"] == id.as_str()));
}

/// A node whose relay was cut off while another node kept publishing catches up from the log
/// once it reconnects, even though new events (each carried in its notice) arrive all the
/// while: its watchers miss none of the events made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cut_off_while_events_flow_catches_up_from_the_log() {
    const TASKS: usize = 300;
    let db = TestDatabase::new();
    let mut cable = Cable::to(db.port()).await;
    let through = db.url_through(cable.port);
    let worker = TestServer::start_with(&["--database-url", &db.url, "--workers", "1"]).await;
    let api = worker
        .join(&["--database-url", &through, "--role", "api"])
        .await;
    let item = worker.upload(&data("byte.tif")).await;
    let feed =
        |node: &TestServer| Sse::open(node.http.get(node.api("/events")).bearer_auth(&node.token));
    let (mut on_worker, mut on_api) = (feed(&worker).await, feed(&api).await);
    // Tiny conversions one after another on one worker: events every few milliseconds,
    // before, during and after the cut.
    for _ in 0..TASKS / 2 {
        worker.convert(&item, json!({})).await;
    }
    cable.cut();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cable.mend().await;
    for _ in 0..TASKS / 2 {
        worker.convert(&item, json!({})).await;
    }

    let all_done = || {
        let finals = std::cell::Cell::new(0);
        move |e: &Value| {
            finals.set(finals.get() + usize::from(is_final(e)));
            finals.get() == TASKS
        }
    };
    let wait = Duration::from_secs(120);
    let seen_worker = tokio::time::timeout(wait, on_worker.events_until(all_done()))
        .await
        .expect("the worker node's feed sees every task end");
    let seen_api = tokio::time::timeout(wait, on_api.events_until(all_done()))
        .await
        .expect("the API node's feed sees every task end");
    assert_eq!(
        changes(&seen_api),
        changes(&seen_worker),
        "the API node's watchers saw every event"
    );
}
