//! Upload a raster, convert it, and follow it by polling the REST status, backing off
//! exponentially while the server cannot be reached. The simplest client, for scripts and
//! for networks that break long-lived connections.
//!
//! cargo run --example poll -- --url http://127.0.0.1:8000 --token $TOKEN FILE

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = common::Args::parse();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let started = common::upload_and_convert(&client, &args).await?;
    let status_url = format!(
        "{}{}",
        args.url,
        started["status_url"].as_str().unwrap_or_default()
    );
    let bar = common::progress_bar();
    let mut backoff = Duration::from_millis(250);
    loop {
        match client.get(&status_url).send().await {
            Ok(response) => {
                let status = common::checked(response).await?;
                backoff = Duration::from_millis(250);
                if common::draw(&bar, &status) {
                    return Ok(common::finish(&bar, &status));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                bar.set_message(format!(
                    "offline, retrying in {:.1}s",
                    backoff.as_secs_f64()
                ));
                tracing_free_log(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn tracing_free_log(e: &reqwest::Error) {
    if std::env::var_os("RASTERCAST_DEBUG").is_some() {
        eprintln!("network error: {e}");
    }
}
