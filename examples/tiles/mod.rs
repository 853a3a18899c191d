//! The map-tile rows of the benchmark: rastercast's tile route against TiTiler (PyPI
//! `titiler.application` under uvicorn, one worker per core, with the GDAL settings its
//! documentation recommends), on the same COG and the same list of tiles, at 64 connections.
//!
//! - **Cold**: a freshly started server answers every tile of the list once.
//! - **Warm**: the same server then answers the list over and over for a while. For rastercast
//!   that is its tile cache; a third row draws every tile again (`--tile-cache-mb 0`) so the
//!   drawing itself is compared too.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;

use super::server::{root, Server};
use super::{median, Row};

const CONNECTIONS: usize = 64;

/// How one pass over the tile list went.
struct Pass {
    tiles_per_s: f64,
    p99_ms: f64,
    failed: u64,
}

/// Tiles of `count` distinct tiles at the file's own zoom levels, in a fixed shuffled order.
fn tile_list(tilejson: &Value, count: usize) -> anyhow::Result<Vec<(u32, u32, u32)>> {
    let bounds: Vec<f64> = serde_json::from_value(tilejson["bounds"].clone())?;
    let (min, max) = (
        tilejson["minzoom"].as_u64().unwrap_or(0) as u32,
        tilejson["maxzoom"].as_u64().unwrap_or(0) as u32,
    );
    let tile = |lon: f64, lat: f64, z: u32| {
        let n = f64::from(1u32 << z);
        let x = ((lon + 180.0) / 360.0 * n).floor().clamp(0.0, n - 1.0) as u32;
        let lat = lat.to_radians();
        let y = ((1.0 - (lat.tan() + 1.0 / lat.cos()).ln() / std::f64::consts::PI) / 2.0 * n)
            .floor()
            .clamp(0.0, n - 1.0) as u32;
        (x, y)
    };
    // Tiles whose centre is on the data: TiTiler answers 404 for a sliver of an edge tile
    // that its own bounds (computed slightly differently) leave out.
    let mut tiles = Vec::new();
    for z in min..=max {
        let (x0, y0) = tile(bounds[0], bounds[3], z);
        let (x1, y1) = tile(bounds[2], bounds[1], z);
        for x in x0..=x1 {
            for y in y0..=y1 {
                let [w, s, e, n] = rastercast::domain::tiles::tile_bounds(z, x.into(), y.into());
                let centre = mercator_to_lonlat((w + e) / 2.0, (s + n) / 2.0);
                if (bounds[0]..=bounds[2]).contains(&centre.0)
                    && (bounds[1]..=bounds[3]).contains(&centre.1)
                {
                    tiles.push((z, x, y));
                }
            }
        }
    }
    tiles.shuffle(&mut rand::rngs::StdRng::seed_from_u64(17));
    tiles.truncate(count);
    Ok(tiles)
}

fn mercator_to_lonlat(x: f64, y: f64) -> (f64, f64) {
    const R: f64 = 6_378_137.0;
    let lon = (x / R).to_degrees();
    let lat = (2.0 * (y / R).exp().atan() - std::f64::consts::FRAC_PI_2).to_degrees();
    (lon, lat)
}

/// GETs `urls` from 64 keep-alive connections: each once (`for_at_least` = None), or round and
/// round until the time is up. Only a 200 with a PNG body counts as a tile.
async fn pass(urls: Arc<Vec<String>>, token: Option<&str>, for_at_least: Option<Duration>) -> Pass {
    let next = Arc::new(AtomicUsize::new(0));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let latencies = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
    ));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (urls, next, done, failed, latencies) = (
            urls.clone(),
            next.clone(),
            done.clone(),
            failed.clone(),
            latencies.clone(),
        );
        let token = token.map(str::to_string);
        workers.spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client");
            let mut local = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let url = match for_at_least {
                    None if i >= urls.len() => break,
                    Some(d) if started.elapsed() >= d => break,
                    _ => &urls[i % urls.len()],
                };
                let mut request = client.get(url);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                let sent = Instant::now();
                let ok = match request.send().await {
                    Ok(r) if r.status() == 200 => r
                        .bytes()
                        .await
                        .is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n")),
                    _ => false,
                };
                let _ = local.record(sent.elapsed().as_micros().max(1) as u64);
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
                .lock()
                .expect("not poisoned")
                .add(&local)
                .expect("same bounds");
        });
    }
    while workers.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    let h = latencies.lock().expect("not poisoned");
    Pass {
        tiles_per_s: done.load(Ordering::Relaxed) as f64 / seconds,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        failed: failed.load(Ordering::Relaxed),
    }
}

/// A COG made by gdal_translate with the server's own creation options: RGB.byte.tif (UTM,
/// nodata 0) at 8192², so tiles are reprojected and masked as with most imagery.
fn input() -> anyhow::Result<PathBuf> {
    let path = root().join("target/tmp/tiles-rgb-utm-8192.tif");
    if !path.exists() {
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        let status = std::process::Command::new("gdal_translate")
            .args(["-q", "-outsize", "8192", "8192", "-r", "cubic"])
            .args(rastercast::convert::Conversion::default().translate_args("average", 2))
            .arg(root().join("../shared/data/RGB.byte.tif"))
            .arg(&path)
            .status()?;
        anyhow::ensure!(status.success(), "gdal_translate failed");
    }
    Ok(path)
}

/// TiTiler on loopback in a process group of its own (uvicorn forks a worker per core), killed
/// with its group when dropped.
struct TiTiler {
    child: tokio::process::Child,
    url: String,
}

impl TiTiler {
    async fn start() -> anyhow::Result<TiTiler> {
        let out = std::process::Command::new(root().join("scripts/titiler-venv.sh")).output()?;
        anyhow::ensure!(
            out.status.success(),
            "scripts/titiler-venv.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = PathBuf::from(String::from_utf8(out.stdout)?.trim());
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let child = tokio::process::Command::new(bin.join("uvicorn"))
            .arg("titiler.application.main:app")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", &workers.to_string()])
            .args(["--log-level", "warning", "--no-access-log"])
            // TiTiler's documented performance settings (docs: "Performance tuning").
            .env("GDAL_CACHEMAX", "200")
            .env("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
            .env("GDAL_BAND_BLOCK_CACHE", "HASHSET")
            .env("VSI_CACHE", "TRUE")
            .env("VSI_CACHE_SIZE", "5000000")
            .env("TITILER_API_TELEMETRY_ENABLED", "False")
            .env("PYTHONWARNINGS", "ignore")
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}");
        let titiler = TiTiler { child, url };
        let client = reqwest::Client::new();
        let started = Instant::now();
        while !client
            .get(format!("{}/healthz", titiler.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "TiTiler did not answer /healthz within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(titiler)
    }
}

impl Drop for TiTiler {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signals the process group this struct started.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
    }
}

/// The tile rows: cold and warm against TiTiler, and warm with rastercast's tile cache off.
pub async fn rows(client: &reqwest::Client, runs: usize, quick: bool) -> anyhow::Result<Vec<Row>> {
    let cog = input()?;
    let count = if quick { 300 } else { 1000 };
    let warm_for = Duration::from_secs(if quick { 5 } else { 10 });
    let mut tiles = None;
    let (mut ours_cold, mut ours_warm, mut ours_drawn) = (Vec::new(), Vec::new(), Vec::new());
    let (mut theirs_cold, mut theirs_warm) = (Vec::new(), Vec::new());
    for _ in 0..runs.min(3) {
        for cache_mb in ["256", "0"] {
            let (server, _) = Server::start(&["--tile-cache-mb", cache_mb]).await?;
            let (urls, list) = our_urls(client, &server, &cog, count).await?;
            tiles.get_or_insert(list);
            let cold = pass(urls.clone(), Some(&server.token), None).await;
            let warm = pass(urls, Some(&server.token), Some(warm_for)).await;
            if cache_mb == "0" {
                ours_drawn.push(warm);
            } else {
                ours_cold.push(cold);
                ours_warm.push(warm);
            }
        }
        let titiler = TiTiler::start().await?;
        let urls: Arc<Vec<String>> = Arc::new(
            tiles
                .iter()
                .flatten()
                .map(|(z, x, y)| {
                    format!(
                        "{}/cog/tiles/WebMercatorQuad/{z}/{x}/{y}.png?url={}",
                        titiler.url,
                        cog.display()
                    )
                })
                .collect(),
        );
        theirs_cold.push(pass(urls.clone(), None, None).await);
        theirs_warm.push(pass(urls, None, Some(warm_for)).await);
        drop(titiler);
    }
    let summary = |passes: &[Pass]| {
        let rate = median(passes.iter().map(|p| p.tiles_per_s).collect());
        let p99 = median(passes.iter().map(|p| p.p99_ms).collect());
        let failed: u64 = passes.iter().map(|p| p.failed).sum();
        (rate, p99, failed)
    };
    let label = |(rate, p99, failed): (f64, f64, u64)| {
        let failed = if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        };
        format!("{rate:.0} tiles/s, p99 {p99:.0} ms{failed}")
    };
    let n = tiles.as_ref().map_or(0, Vec::len);
    let theirs = (summary(&theirs_cold), summary(&theirs_warm));
    let mut rows = Vec::new();
    for (figure, ours, reference, target) in [
        (
            format!("map tiles, cold: {n} distinct 256 px PNG tiles of an 8192² UTM COG, each once, just after start, 64 connections"),
            summary(&ours_cold),
            theirs.0,
            1.0,
        ),
        (
            format!("map tiles, warm: the same {n} tiles round and round for {} s", warm_for.as_secs()),
            summary(&ours_warm),
            theirs.1,
            3.0,
        ),
        (
            "map tiles, warm, tile cache off (--tile-cache-mb 0: every tile drawn again)".to_string(),
            summary(&ours_drawn),
            theirs.1,
            1.0,
        ),
    ] {
        let ratio = ours.0 / reference.0;
        rows.push(Row {
            figure,
            measured: label(ours),
            reference: format!("TiTiler 2.4.0, uvicorn, {} workers: {}", num_workers(), label(reference)),
            ratio: format!("{ratio:.2}×"),
            target: format!("≥ {target}× tiles/s"),
            met: Some(ratio >= target && ours.2 == 0),
        });
    }
    Ok(rows)
}

fn num_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Uploads the COG and answers the tile URLs of the list made from its TileJSON.
async fn our_urls(
    client: &reqwest::Client,
    server: &Server,
    cog: &Path,
    count: usize,
) -> anyhow::Result<(Arc<Vec<String>>, Vec<(u32, u32, u32)>)> {
    let item = server.upload(client, cog).await?;
    let tilejson: Value = client
        .get(format!(
            "{}/api/v1/tree-items/{item}/WebMercatorQuad/tilejson.json",
            server.url
        ))
        .bearer_auth(&server.token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let list = tile_list(&tilejson, count)?;
    let urls = list
        .iter()
        .map(|(z, x, y)| {
            format!(
                "{}/api/v1/tree-items/{item}/tiles/WebMercatorQuad/{z}/{x}/{y}.png",
                server.url
            )
        })
        .collect();
    Ok((Arc::new(urls), list))
}
