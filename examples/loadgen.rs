//! A load generator for capacity planning: N SSE and M WebSocket subscribers follow one
//! conversion, and it reports publish→receive latency percentiles and who saw the end.
//!
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8000 --token $TOKEN \
//!     --sse 10000 --ws 10000 FILE
//!
//! Each connection is a file descriptor on both sides: it raises its own limit to the hard
//! limit; raise `ulimit -Hn` (and the server's) above the connection count if needed.

#[path = "load/mod.rs"]
mod load;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    #[arg(long, env = "RASTERCAST_TOKEN")]
    token: String,
    /// SSE subscribers (user feed).
    #[arg(long, default_value_t = 100)]
    sse: usize,
    /// WebSocket subscribers (`subscribe all`).
    #[arg(long, default_value_t = 100)]
    ws: usize,
    /// Subscribers that connect and never read (they must slow nothing down).
    #[arg(long)]
    stalled: bool,
    /// Conversion options as JSON.
    #[arg(long, default_value = "{}")]
    options: String,
    /// The raster to convert while everyone watches.
    file: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    load::raise_fd_limit();
    let load::Crowd {
        mut subscribers,
        task: task_tx,
        latencies,
        connected,
    } = load::gather(&args.url, &args.token, args.sse, args.ws, !args.stalled).await;
    eprintln!(
        "{connected} subscribers connected; converting {}",
        args.file.display()
    );

    let client = reqwest::Client::new();
    let name = args
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("upload")
        .to_string();
    let bytes = tokio::fs::read(&args.file).await?;
    let item: serde_json::Value = client
        .post(format!("{}/api/v1/tree-items?name={name}", args.url))
        .bearer_auth(&args.token)
        .body(bytes)
        .send()
        .await?
        .json()
        .await?;
    let options: serde_json::Value = serde_json::from_str(&args.options)?;
    let started: serde_json::Value = client
        .post(format!(
            "{}/api/v1/tree-items/{}/convert-to-geo-raster",
            args.url,
            item["id"].as_str().unwrap_or_default()
        ))
        .bearer_auth(&args.token)
        .json(&options)
        .send()
        .await?
        .json()
        .await?;
    let task_id = started["task_id"].as_str().unwrap_or_default().to_string();
    task_tx.send_replace(Some(task_id.clone()));
    if args.stalled {
        loop {
            let status: serde_json::Value = client
                .get(format!("{}/api/v1/tasks/{task_id}/status", args.url))
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
