//! A load generator for capacity planning: N SSE and M WebSocket subscribers follow one
//! conversion, and it reports publish→receive latency percentiles and who saw the end.
//!
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8000 --token $TOKEN \
//!     --sse 10000 --ws 10000 FILE
//!
//! Each connection is a file descriptor on both sides: it raises its own limit to the hard
//! limit; raise `ulimit -Hn` (and the server's) above the connection count if needed.

#[path = "common/mod.rs"]
mod common;
#[path = "load/mod.rs"]
mod load;

use clap::Parser;

#[derive(Parser)]
struct LoadgenArgs {
    /// The server, token, options and file, as for the other examples.
    #[command(flatten)]
    common: common::Args,
    /// SSE subscribers (user feed).
    #[arg(long, default_value_t = 100)]
    sse: usize,
    /// WebSocket subscribers (`subscribe all`).
    #[arg(long, default_value_t = 100)]
    ws: usize,
    /// Subscribers that connect and never read (they must slow nothing down).
    #[arg(long)]
    stalled: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = LoadgenArgs::parse();
    load::raise_fd_limit();
    let load::Crowd {
        mut subscribers,
        task: task_tx,
        latencies,
        connected,
    } = load::gather(
        &args.common.url,
        &args.common.token,
        args.sse,
        args.ws,
        !args.stalled,
    )
    .await;
    eprintln!(
        "{connected} subscribers connected; converting {}",
        args.common.file.display()
    );

    let client = reqwest::Client::new();
    let started = common::upload_and_convert(&client, &args.common).await?;
    let task_id = started["task_id"].as_str().unwrap_or_default().to_string();
    task_tx.send_replace(Some(task_id.clone()));
    if args.stalled {
        loop {
            let status: serde_json::Value = client
                .get(format!("{}/api/v1/tasks/{task_id}/status", args.common.url))
                .send()
                .await?
                .json()
                .await?;
            if matches!(
                status["state"].as_str(),
                Some("SUCCESS" | "FAILURE" | "REVOKED")
            ) {
                println!(
                    "task ended {} in {}s with {} stalled subscribers",
                    status["state"], status["result"]["duration_s"], connected
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        task_tx.send_replace(Some("done".into()));
    }
    let mut finals = 0;
    while let Some(watch) = subscribers.join_next().await {
        finals += usize::from(watch.map(|w| w.saw_final).unwrap_or(false));
    }
    let h = latencies.lock().await;
    println!(
        "subscribers {connected}, saw the final event {finals}, events {}, latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    Ok(())
}
