//! What the watching examples share: arguments, upload + start, and the progress bar.

// Each example uses only some of these.
#![allow(dead_code)]

use std::path::PathBuf;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

#[derive(Parser)]
pub struct Args {
    /// The server, e.g. http://127.0.0.1:8000
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// An API token (`rastercast token create --user NAME`).
    #[arg(long, env = "RASTERCAST_TOKEN")]
    pub token: String,
    /// Conversion options as JSON, e.g. '{"compression": "zstd"}'.
    #[arg(long, default_value = "{}")]
    pub options: String,
    /// The raster to upload and convert.
    pub file: PathBuf,
}

/// Uploads `args.file`, starts its conversion and returns the 200 body of the start call.
pub async fn upload_and_convert(client: &reqwest::Client, args: &Args) -> anyhow::Result<Value> {
    let name = args
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("upload")
        .to_string();
    let bytes = tokio::fs::read(&args.file).await?;
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name),
    );
    let item: Value = checked(
        client
            .post(format!("{}/api/v1/tree-items", args.url))
            .bearer_auth(&args.token)
            .multipart(form)
            .send()
            .await?,
    )
    .await?;
    let options: Value = serde_json::from_str(&args.options)?;
    checked(
        client
            .post(format!(
                "{}/api/v1/tree-items/{}/convert-to-geo-raster",
                args.url,
                item["id"].as_str().unwrap_or_default()
            ))
            .bearer_auth(&args.token)
            .json(&options)
            .send()
            .await?,
    )
    .await
}

/// The JSON body of a successful response, or the server's `detail` as the error.
pub async fn checked(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        anyhow::bail!(
            "{status}: {}",
            body["detail"].as_str().unwrap_or("no detail")
        );
    }
    Ok(body)
}

pub fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:<24} [{bar:40.cyan/blue}] {percent:>3}%  {elapsed_precise}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Draws one status (or event); returns true once the task is final.
pub fn draw(bar: &ProgressBar, status: &Value) -> bool {
    let progress = status["progress"].as_f64().unwrap_or(0.0);
    bar.set_position((progress * 10.0) as u64);
    let state = status["state"].as_str().unwrap_or("?");
    let sentence = status["status"].as_str().unwrap_or("");
    match status["queue_position"].as_u64() {
        Some(n) if state == "PENDING" => bar.set_message(format!("Queued (#{n})")),
        _ => bar.set_message(sentence.to_string()),
    }
    matches!(state, "SUCCESS" | "FAILURE" | "REVOKED")
}

/// Prints how the task ended; the exit code says it too.
pub fn finish(bar: &ProgressBar, status: &Value) -> std::process::ExitCode {
    bar.finish();
    match status["state"].as_str() {
        Some("SUCCESS") => {
            let r = &status["result"];
            println!(
                "SUCCESS: item {} — {}×{}, {} band(s), {}, {} bytes",
                r["tree_item_id"].as_str().unwrap_or("?"),
                r["width"],
                r["height"],
                r["band_count"],
                r["crs"].as_str().unwrap_or("no CRS"),
                r["size_bytes"]
            );
            std::process::ExitCode::SUCCESS
        }
        Some("FAILURE") => {
            eprintln!(
                "FAILURE: {}",
                status["error"].as_str().unwrap_or("no reason given")
            );
            std::process::ExitCode::FAILURE
        }
        other => {
            eprintln!("{}", other.unwrap_or("unknown state"));
            std::process::ExitCode::FAILURE
        }
    }
}
