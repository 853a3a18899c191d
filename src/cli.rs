//! The command line: `serve`, `token`, `convert` and `upload`. (Conversions themselves run in
//! `rastercast-worker`, the program that links GDAL.)

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::convert::worker::{Job, JobKind};
use crate::convert::{self, ConvertError, Limits, RequestedOptions};
use crate::store::{users, Store};
use crate::tasks::child::{self, Outcome};
use crate::tasks::{ChildLimits, WarmPool};

#[derive(Parser)]
#[command(
    name = "rastercast",
    version,
    about = "Convert rasters to Cloud-Optimized GeoTIFFs, with live progress"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server and its conversion workers.
    Serve(Box<Config>),
    /// Create, list or revoke API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Convert one file locally, with a progress bar (Ctrl-C cancels).
    Convert(ConvertArgs),
    /// Upload a file to a server, resumably (tus): run the same command again to resume an
    /// interrupted upload. The last line of stdout is JSON with the new tree item's id.
    Upload(UploadArgs),
    /// Manage the key that signs shareable links.
    #[command(subcommand, name = "link-key")]
    LinkKey(LinkKeyCommand),
}

#[derive(Subcommand)]
enum LinkKeyCommand {
    /// Replace the key: every link given out so far stops working (on every node within
    /// seconds).
    Rotate {
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Args)]
struct DataDir {
    #[arg(long, env = "RASTERCAST_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// The server's PostgreSQL, when it runs on one (as `serve --database-url`).
    #[arg(long, env = "RASTERCAST_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for USER (created if missing); the token is the last line of stdout.
    Create {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        dir: DataDir,
    },
    /// List tokens by id, user and creation time (never the secrets).
    List {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Revoke a token by its id (from `token list`) or by the token itself.
    Revoke {
        id: String,
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Args)]
struct ConvertArgs {
    /// The raster to convert.
    input: PathBuf,
    /// Where to write the COG (default: INPUT's name with `.cog.tif`).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    overwrite: bool,
    /// deflate | lzw | zstd | webp | jpeg | lerc | none
    #[arg(long)]
    compression: Option<String>,
    /// 1-100, for jpeg and webp.
    #[arg(long)]
    quality: Option<i64>,
    /// Tile size, a power of two from 64 to 4096.
    #[arg(long)]
    blocksize: Option<i64>,
    /// nearest | average | bilinear | cubic | cubicspline | lanczos | mode | rms
    #[arg(long)]
    overview_resampling: Option<String>,
    /// Reproject, e.g. EPSG:3857.
    #[arg(long)]
    target_crs: Option<String>,
    /// Align to the GoogleMapsCompatible tiling scheme (EPSG:3857).
    #[arg(long)]
    web_optimized: bool,
    /// Nodata value to set on the output (a number or nan).
    #[arg(long)]
    nodata: Option<String>,
    /// Subdataset (NetCDF variable, or file inside a zip) to convert.
    #[arg(long)]
    subdataset: Option<String>,
}

#[derive(Args)]
struct UploadArgs {
    /// The file to upload.
    file: PathBuf,
    /// The server, e.g. https://maps.example.org.
    #[arg(long, env = "RASTERCAST_URL")]
    url: String,
    /// An API token (`rc_...`).
    #[arg(long, env = "RASTERCAST_TOKEN", hide_env_values = true)]
    token: String,
    /// The folder to put the file in.
    #[arg(long)]
    parent_id: Option<uuid::Uuid>,
    /// The tree item's name (default: FILE's name).
    #[arg(long)]
    name: Option<String>,
    /// Convert once uploaded, with these options as JSON, e.g. '{"compression":"zstd"}'.
    #[arg(long, value_name = "JSON")]
    convert: Option<String>,
    /// MiB sent per request; a broken connection loses at most one.
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    chunk_size: u64,
    /// Where unfinished uploads are remembered (default:
    /// $XDG_STATE_HOME/rastercast/uploads.json or ~/.local/state/rastercast/uploads.json).
    #[arg(long)]
    state_file: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Token(cmd) => {
            quiet_on_closed_pipe();
            report(token(cmd))
        }
        Command::LinkKey(LinkKeyCommand::Rotate { dir }) => {
            quiet_on_closed_pipe();
            report(
                open_store(&dir)
                    .and_then(|store| store.blocking(crate::store::link_keys::rotate))
                    .map(|()| println!("rotated: every link given out so far no longer opens")),
            )
        }
        Command::Convert(args) => convert_local(args),
        Command::Upload(args) => upload(args),
        Command::Serve(config) => report(serve(*config)),
    }
}

/// A command that only prints ends quietly when its reader stops reading (`token list |
/// head -1`), as other command-line tools do: Rust ignores SIGPIPE, and `println!` then panics
/// on the closed pipe. Not for `serve`, `convert` or `upload`: they write to sockets or run
/// GDAL, where the signal would kill the process instead of returning an error.
fn quiet_on_closed_pipe() {
    // SAFETY: called before the command starts any thread; it restores the signal's default.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rastercast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "rastercast=info,tower_http=info".into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    init_tracing(config.log_format.eq_ignore_ascii_case("json"));
    raise_open_files_limit();
    // Blocking work is database calls, serialised on one connection anyway: a few threads
    // serve them all, where tokio's default (512) would grow memory under a connection storm.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(16)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let app = crate::app::App::build(config, shutdown.clone()).await?;
        let url = format!("http://{}", app.local_addr());
        if let Some(token) = &app.admin_token {
            println!(
                "Created the user \"admin\". Its token is shown only this once:\n\n    {token}\n"
            );
            println!(
                "Open {url}/#token={token} to sign in, or send `Authorization: Bearer {token}`.\n"
            );
        }
        println!("rastercast listening on {url}");
        tokio::spawn(stop_on_signal(shutdown));
        app.run().await
    })
}

/// Each live client holds a socket: use all the file descriptors the system allows us.
fn raise_open_files_limit() {
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down: running tasks go back to the queue");
    shutdown.cancel();
}

fn open_store(dir: &DataDir) -> anyhow::Result<Store> {
    // The CLI changes users and tokens only: nothing it does is announced.
    let bus: std::sync::Arc<dyn crate::domain::Announce> =
        std::sync::Arc::new(crate::bus::Bus::new(1, 1));
    if let Some(url) = &dir.database_url {
        return Store::connect(url, bus);
    }
    std::fs::create_dir_all(&dir.data_dir)?;
    Store::open(&dir.data_dir.join("rastercast.db"), bus)
}

fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { user, dir } => {
            let store = open_store(&dir)?;
            let token = store.blocking(|c| {
                let user = users::ensure_user(c, &user)?;
                users::create_token(c, &user)
            })?;
            eprintln!("New token for {user:?} (shown only this once):");
            println!("{token}");
        }
        TokenCommand::List { dir } => {
            let store = open_store(&dir)?;
            let tokens = store.blocking(users::list_tokens)?;
            println!("{:<14} {:<24} CREATED", "ID", "USER");
            for t in tokens {
                println!("{:<14} {:<24} {}", t.id, t.user, t.created_at);
            }
        }
        TokenCommand::Revoke { id, dir } => {
            let store = open_store(&dir)?;
            anyhow::ensure!(
                store.blocking(|c| users::revoke_token(c, &id))?,
                "no token with id {id:?}"
            );
            println!("revoked");
        }
    }
    Ok(())
}

fn convert_local(args: ConvertArgs) -> ExitCode {
    let requested = RequestedOptions {
        compression: args.compression,
        quality: args.quality,
        blocksize: args.blocksize,
        overview_resampling: args.overview_resampling,
        target_crs: args.target_crs,
        web_optimized: Some(args.web_optimized),
        nodata: args.nodata.map(serde_json::Value::String),
        subdataset: args.subdataset,
        priority: None,
        callback_url: None,
    };
    let conversion = match requested.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rastercast: {e}");
            return ExitCode::from(2);
        }
    };
    let output = args.output.unwrap_or_else(|| default_output(&args.input));
    if output.exists() && !args.overwrite {
        eprintln!(
            "rastercast: {} exists; pass --overwrite to replace it",
            output.display()
        );
        return ExitCode::from(2);
    }
    let partial = output.with_extension("tif.part");
    let exe = match crate::tasks::worker_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("rastercast: {e}");
            return ExitCode::FAILURE;
        }
    };

    let cancel = CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    let _ = ctrlc::set_handler(move || on_ctrl_c.cancel());

    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:<22} [{bar:40.cyan/blue}] {percent:>3}%  {elapsed_precise} (eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let job = Job {
        kind: JobKind::Convert,
        input: args.input.clone(),
        output: partial.clone(),
        conversion,
        limits: Limits::default(),
        cache_mb: 256,
        tile: None,
        point: None,
    };
    // Local files on the user's own machine: no memory or time limit, one worker, no reuse.
    let limits = ChildLimits {
        exe,
        memory_bytes: libc::RLIM_INFINITY,
        timeout: Duration::from_secs(365 * 86400),
        grace: Duration::from_secs(1),
        warm: WarmPool::new(0),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = runtime.block_on(child::run(&job, &limits, &cancel, |percent, phase| {
        bar.set_message(phase.sentence());
        bar.set_position((percent * 10.0) as u64);
    }));
    let result = match outcome {
        Outcome::Done(described) => Ok(*described),
        Outcome::Failed(e) => Err(ConvertError::Failed(e.message)),
        Outcome::Stopped => Err(ConvertError::Cancelled),
        Outcome::Rendered(_) | Outcome::Facts(_) | Outcome::Values(_) => Err(ConvertError::Failed(
            "The worker answered another job.".into(),
        )),
    };
    if result.is_err() {
        convert::remove_with_side_files(&partial);
    }
    let result = result.and_then(|described| {
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(&partial, &output))
            .map_err(|e| ConvertError::Failed(format!("cannot write {}: {e}", output.display())))?;
        Ok(described)
    });
    let _ = std::fs::remove_file(&partial);
    match result {
        Ok(described) => {
            bar.set_message("Done");
            bar.finish();
            println!(
                "{} → {}: {}×{}, {} band(s), {}, {} overview(s), {} bytes in {:.2} s",
                args.input.display(),
                output.display(),
                described.width,
                described.height,
                described.band_count,
                described.crs.as_deref().unwrap_or("no CRS"),
                described.overviews.len(),
                described.size_bytes,
                described.duration_s,
            );
            for warning in &described.warnings {
                eprintln!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(ConvertError::Cancelled) => {
            bar.abandon_with_message("Cancelled");
            eprintln!("rastercast: cancelled; nothing was written");
            ExitCode::from(130)
        }
        Err(ConvertError::Failed(e) | ConvertError::OutOfSpace(e)) => {
            bar.abandon_with_message("Failed");
            eprintln!("rastercast: {e}");
            ExitCode::FAILURE
        }
    }
}

fn upload(args: UploadArgs) -> ExitCode {
    use crate::upload_client::{self, UploadError};
    let options = upload_client::Options {
        file: args.file,
        url: args.url,
        token: args.token,
        parent_id: args.parent_id,
        name: args.name,
        convert: args.convert,
        chunk_bytes: args.chunk_size << 20,
        state_file: args.state_file,
    };
    let cancel = CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    let _ = ctrlc::set_handler(move || on_ctrl_c.cancel());

    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:<10} [{bar:40.cyan/blue}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} (eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // Ctrl-C drops the upload wherever it is: the server keeps what it stored, and the state
    // file still names the upload, so the same command resumes it.
    let result = runtime.block_on(async {
        tokio::select! {
            result = upload_client::upload(options, &bar) => Some(result),
            () = cancel.cancelled() => None,
        }
    });
    match result {
        Some(Ok(uploaded)) => {
            bar.finish();
            println!(
                "{}",
                serde_json::to_string(&uploaded).expect("the outcome serialises")
            );
            ExitCode::SUCCESS
        }
        None => {
            bar.abandon_with_message("Cancelled");
            eprintln!(
                "rastercast: interrupted after {} of {} bytes; run the same command again to resume",
                bar.position(),
                bar.length().unwrap_or(0)
            );
            ExitCode::from(130)
        }
        Some(Err(e)) => {
            bar.abandon_with_message("Failed");
            eprintln!("rastercast: {e}");
            ExitCode::from(match e {
                UploadError::Usage(_) => 2,
                UploadError::Failed(_) => 1,
            })
        }
    }
}

fn default_output(input: &Path) -> PathBuf {
    let name = input
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("output");
    let stem = name.split_once('.').map_or(name, |(s, _)| s);
    input.with_file_name(format!("{stem}.cog.tif"))
}
