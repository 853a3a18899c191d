//! Running conversions in child processes and supervising them: memory and time limits,
//! cancellation that escalates to SIGKILL, and a crash that fails only its own task.
//!
//! Children are kept warm: a worker that finished a job cleanly goes back to an idle pool and
//! takes the next one, so a tiny conversion does not pay for a process start and GDAL's
//! initialisation (about 100 ms, far more than the conversion itself). A worker that failed,
//! was cancelled, timed out or crashed is never reused, and every worker retires after
//! `MAX_JOBS` jobs or `MAX_IDLE` without work, so a slow leak in a driver cannot accumulate.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::domain::geo::GeoRaster;
use crate::domain::job::Phase;
use crate::domain::job::{Failure, Job, Report};

/// Jobs one worker process takes before it is retired.
const MAX_JOBS: u32 = 500;
/// How long an idle worker is kept before it exits.
const MAX_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ChildLimits {
    pub exe: PathBuf,
    pub memory_bytes: u64,
    pub timeout: Duration,
    /// How long a cancelled child may take to stop by itself before it is killed.
    pub grace: Duration,
    /// Idle workers, shared by everyone who runs jobs with these limits.
    pub warm: WarmPool,
}

/// The worker program, `rastercast-worker`, installed next to this one. It is a program of its
/// own so that the server never links GDAL (nor loads its hundred libraries).
pub fn worker_exe() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?.with_file_name("rastercast-worker");
    anyhow::ensure!(
        exe.exists(),
        "{} is missing: build it with the server (`cargo build --release --bins`)",
        exe.display()
    );
    Ok(exe)
}

/// Worker processes waiting for their next job.
#[derive(Debug, Clone, Default)]
pub struct WarmPool {
    idle: Arc<Mutex<Vec<Worker>>>,
    /// At most this many idle workers are kept; 0 turns reuse off.
    capacity: usize,
    /// Processes started since the server started, for `/metrics`.
    started: Arc<AtomicU64>,
    /// Whether the last worker started runs in a network namespace of its own: 1 yes, 0 no,
    /// -1 before the first one.
    isolated: Arc<AtomicI64>,
}

impl WarmPool {
    pub fn new(capacity: usize) -> Self {
        WarmPool {
            idle: Arc::default(),
            capacity,
            started: Arc::default(),
            isolated: Arc::new(AtomicI64::new(-1)),
        }
    }

    fn take(&self) -> Option<Worker> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // The most recently used worker is the warmest; older ones may retire by idleness. One
        // that died while idle (killed by the OOM killer or an operator) must not take a job
        // and fail it.
        while let Some(mut worker) = idle.pop() {
            if matches!(worker.child.try_wait(), Ok(None)) {
                return Some(worker);
            }
        }
        None
    }

    fn give(&self, mut worker: Worker) {
        worker.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.capacity {
            idle.push(worker);
        }
    }

    /// Lets workers idle for longer than `MAX_IDLE` exit (dropping one kills it).
    pub fn retire_idle(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|w| w.idle_since.elapsed() < MAX_IDLE);
    }

    /// How many worker processes were started so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Whether the last worker started has a network namespace of its own (None before the
    /// first worker), for `/metrics`.
    pub fn network_isolated(&self) -> Option<bool> {
        match self.isolated.load(Ordering::Relaxed) {
            -1 => None,
            n => Some(n == 1),
        }
    }

    /// Records whether a new worker is isolated, and says so when that changes.
    fn record_isolation(&self, isolated: bool, netns: bool) {
        let before = self.isolated.swap(isolated as i64, Ordering::Relaxed);
        if before == isolated as i64 {
            return;
        }
        if isolated {
            tracing::info!("conversion workers run in a network namespace of their own");
        } else if netns {
            tracing::warn!(
                "conversion workers share the server's network: a network namespace could not \
                 be made (it needs CAP_SYS_ADMIN)"
            );
        } else {
            tracing::warn!(
                "conversion workers share the server's network: RASTERCAST_NO_WORKER_NETNS is set"
            );
        }
    }

    /// How many workers are idle now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One worker process and its pipes.
#[derive(Debug)]
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    jobs: u32,
    idle_since: Instant,
}

/// Whether workers are to get a network namespace of their own: yes, unless the environment
/// variable `RASTERCAST_NO_WORKER_NETNS` is set (not empty, not 0), which tests use to show
/// that their loopback tripwire sees what a worker fetches.
fn network_namespace() -> bool {
    std::env::var_os("RASTERCAST_NO_WORKER_NETNS").is_none_or(|v| v.is_empty() || v == "0")
}

/// Whether process `pid` runs in another network namespace than this one.
fn in_own_network(pid: u32) -> Option<bool> {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let ours = std::fs::read_link("/proc/self/ns/net").ok()?;
    Some(theirs != ours)
}

#[derive(Debug)]
pub enum Outcome {
    Done(Box<GeoRaster>),
    /// A tile's encoded image.
    Rendered(Vec<u8>),
    Facts(Box<crate::domain::facts::RasterFacts>),
    Values(Vec<Option<f64>>),
    Failed(Failure),
    /// Stopped because `stop` was cancelled (by itself or by a kill after the grace time).
    Stopped,
}

/// Workers run at this nice value (0 is the server's): under contention the kernel gives the
/// server's threads about ten times their share of the cores.
const WORKER_NICENESS: libc::c_int = 10;

/// Runs `job` in a warm worker, or a fresh one. `progress` gets every report; `stop` cancels.
pub async fn run(
    job: &Job,
    limits: &ChildLimits,
    stop: &CancellationToken,
    mut progress: impl FnMut(f64, Phase),
) -> Outcome {
    let mut line = serde_json::to_string(job).expect("job serialises");
    line.push('\n');
    let mut warm = limits.warm.take();
    loop {
        let from_pool = warm.is_some();
        let mut worker = match warm.take() {
            Some(worker) => worker,
            None => match Worker::spawn(limits) {
                Ok(worker) => {
                    limits.warm.started.fetch_add(1, Ordering::Relaxed);
                    worker
                }
                Err(e) => {
                    return Outcome::Failed(Failure::transient(format!(
                        "The conversion worker could not start: {e}"
                    )))
                }
            },
        };
        worker.jobs += 1;
        let attempt = worker.attempt(&line, limits, stop, &mut progress).await;
        if from_pool && attempt.never_began() {
            // A warm worker killed while idle can still pass `take`'s check: its threads are
            // still exiting, so the kernel does not report it dead yet. It never read the job,
            // so nothing began and a fresh worker runs it, once.
            tracing::info!("a warm worker was gone before it took its job; starting a fresh one");
            worker.end().await;
            continue;
        }
        return attempt.outcome(worker, limits).await;
    }
}

/// How one job went in one worker.
#[derive(Default)]
struct Attempt {
    /// The worker said it read the job.
    taken: bool,
    /// The job line could not be written (the worker is gone).
    unwritten: Option<std::io::Error>,
    last_report: Option<Report>,
    stopping: bool,
    timed_out: bool,
}

impl Attempt {
    /// Nothing of the job happened: the worker ended before it read it, unasked.
    fn never_began(&self) -> bool {
        !self.taken && self.last_report.is_none() && !self.stopping && !self.timed_out
    }

    /// What the job came to: the worker goes back to the pool if it ended the job cleanly, and
    /// is killed and reaped otherwise.
    async fn outcome(self, mut worker: Worker, limits: &ChildLimits) -> Outcome {
        let Attempt {
            unwritten,
            last_report,
            stopping,
            timed_out,
            ..
        } = self;
        if let Some(e) = unwritten {
            worker.end().await;
            return Outcome::Failed(Failure::transient(format!(
                "The conversion worker did not take the job: {e}"
            )));
        }
        let clean = matches!(
            last_report,
            Some(
                Report::Done { .. }
                    | Report::Rendered { .. }
                    | Report::Facts { .. }
                    | Report::Values { .. }
            )
        ) && !stopping
            && !timed_out;
        let status = if clean && worker.jobs < MAX_JOBS {
            limits.warm.give(worker);
            None
        } else {
            worker.end().await
        };
        reported(last_report, stopping, timed_out, status, limits)
    }
}

/// The outcome a job's last report (or its absence) stands for; `status` is how the worker
/// ended, when it did.
fn reported(
    last_report: Option<Report>,
    stopping: bool,
    timed_out: bool,
    status: Option<std::process::ExitStatus>,
    limits: &ChildLimits,
) -> Outcome {
    match last_report {
        Some(Report::Done { result }) => Outcome::Done(result),
        Some(Report::Facts { facts }) => Outcome::Facts(facts),
        Some(Report::Values { values }) => Outcome::Values(values),
        Some(Report::Rendered { image }) => {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(image) {
                Ok(bytes) => Outcome::Rendered(bytes),
                Err(_) => Outcome::Failed(Failure::permanent("The worker's image was garbled.")),
            }
        }
        Some(Report::Failed { error, .. }) if error.contains("cannot allocate") || error.contains("Out of memory") => {
            Outcome::Failed(Failure::permanent(format!(
                "The conversion needed more than its memory limit of {} MiB. ({error})",
                limits.memory_bytes >> 20
            )))
        }
        Some(Report::Failed { error, transient }) => Outcome::Failed(Failure {
            message: error,
            transient,
        }),
        Some(Report::Cancelled) => Outcome::Stopped,
        _ if timed_out => Outcome::Failed(Failure::permanent(format!(
            "The conversion took longer than the limit of {} s and was stopped.",
            limits.timeout.as_secs()
        ))),
        _ if stopping => Outcome::Stopped,
        // A crash is the file's doing (GDAL reading it); a SIGKILL that this server did not send
        // came from outside (the kernel's OOM killer under memory pressure, an operator), so
        // another attempt may go through.
        _ => Outcome::Failed(match status.and_then(|s| s.signal()) {
            Some(libc::SIGKILL) => Failure::transient("The conversion worker was killed from outside (most likely the machine ran out of memory) while reading this file."),
            Some(sig) => Failure::permanent(format!(
                "The conversion worker crashed (signal {sig}) while reading this file; it may be malformed, or need more than the memory limit of {} MiB.",
                limits.memory_bytes >> 20
            )),
            None => Failure::permanent("The conversion worker stopped without a result."),
        }),
    }
}

impl Worker {
    fn spawn(limits: &ChildLimits) -> std::io::Result<Worker> {
        let mut cmd = Command::new(&limits.exe);
        // Code that parses hostile files gets no credentials: not the object store's, not
        // the database's.
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("AWS_") || name == "RASTERCAST_DATABASE_URL" {
                cmd.env_remove(&key);
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let memory = limits.memory_bytes;
        let netns = network_namespace();
        // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
        // functions (setrlimit, prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                let as_limit = libc::rlimit {
                    rlim_cur: memory,
                    rlim_max: memory,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &as_limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                // If the server dies, so does its worker: no orphan keeps converting.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // GDAL takes every core it is given; the server's own threads (events, HTTP)
                // come first, so a conversion never holds up what clients are sent.
                libc::setpriority(libc::PRIO_PROCESS, 0, WORKER_NICENESS);
                // No network at all for code that parses hostile files: a fresh network namespace
                // has only a loopback that is down. It needs CAP_SYS_ADMIN; without it the other
                // layers (driver allow-list, server-built paths) still stand. Whether it took
                // effect is read from /proc once the worker runs (nothing can be logged here).
                if netns {
                    libc::unshare(libc::CLONE_NEWNET);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        // The worker has exec'd by now, so its namespace is the one it runs in (unknown only
        // if it already exited).
        if let Some(isolated) = child.id().and_then(in_own_network) {
            limits.warm.record_isolation(isolated, netns);
        }
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        // A warm worker outlives the task it was started for, so its log lines carry its own
        // span (its pid), not the task's.
        let span = tracing::info_span!(parent: None, "worker", pid = child.id());
        tokio::spawn(
            async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "rastercast::worker", "{line}");
                }
            }
            .instrument(span),
        );
        Ok(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            jobs: 0,
            idle_since: Instant::now(),
        })
    }

    /// Kills this worker and reaps it, so that no zombie is left: how it ended, if known.
    async fn end(&mut self) -> Option<std::process::ExitStatus> {
        let _ = self.child.start_kill();
        self.child.wait().await.ok()
    }

    /// Hands the job (one line) to this worker and follows it to its final report, a cancel, the
    /// time limit or the worker's end.
    async fn attempt(
        &mut self,
        line: &str,
        limits: &ChildLimits,
        stop: &CancellationToken,
        progress: &mut impl FnMut(f64, Phase),
    ) -> Attempt {
        let mut attempt = Attempt::default();
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            attempt.unwritten = Some(e);
            return attempt;
        }
        let deadline = Instant::now() + limits.timeout;
        let far = Instant::now() + Duration::from_secs(365 * 86400);
        let mut kill_at = far;
        loop {
            tokio::select! {
                line = self.lines.next_line() => match line {
                    Ok(Some(line)) => match serde_json::from_str::<Report>(&line) {
                        Ok(Report::Taken) => attempt.taken = true,
                        Ok(Report::Progress { percent, phase }) => progress(percent, phase),
                        Ok(done) => {
                            attempt.last_report = Some(done);
                            break;
                        }
                        Err(_) => tracing::warn!(%line, "unreadable line from a worker"),
                    },
                    _ => break,
                },
                _ = stop.cancelled(), if !attempt.stopping => {
                    attempt.stopping = true;
                    let _ = self.stdin.write_all(b"cancel\n").await;
                    kill_at = Instant::now() + limits.grace;
                }
                _ = sleep_until(kill_at) => {
                    tracing::warn!("a cancelled worker did not stop in time; killing it");
                    let _ = self.child.start_kill();
                    kill_at = far;
                }
                _ = sleep_until(deadline), if !attempt.timed_out => {
                    attempt.timed_out = true;
                    let _ = self.child.start_kill();
                }
            }
        }
        attempt
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A stand-in worker: the first one started sleeps briefly and exits without reading its
    /// job, as a warm worker killed while idle does; every later one answers a point job.
    fn stand_in(dir: &std::path::Path) -> ChildLimits {
        let exe = dir.join("worker.sh");
        let script = format!(
            "#!/bin/sh\n\
             if mkdir '{first}' 2>/dev/null; then sleep 0.5; exit 0; fi\n\
             read job\n\
             echo '{{\"type\":\"taken\"}}'\n\
             echo '{{\"type\":\"values\",\"values\":[42.0]}}'\n\
             read next\n",
            first = dir.join("first").display()
        );
        std::fs::write(&exe, script).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        ChildLimits {
            exe,
            memory_bytes: 1 << 30,
            timeout: Duration::from_secs(30),
            grace: Duration::from_secs(1),
            warm: WarmPool::new(1),
        }
    }

    #[tokio::test]
    async fn a_warm_worker_gone_before_it_took_its_job_hands_the_job_to_a_fresh_one() {
        let dir = tempfile::tempdir().unwrap();
        let limits = stand_in(dir.path());
        let dying = Worker::spawn(&limits).unwrap();
        limits.warm.give(dying);
        let job = Job {
            kind: crate::domain::job::JobKind::Point,
            input: PathBuf::new(),
            output: PathBuf::new(),
            conversion: Default::default(),
            limits: Default::default(),
            cache_mb: 0,
            tile: None,
            point: Some([0.0, 0.0]),
        };
        let outcome = run(&job, &limits, &CancellationToken::new(), |_, _| {}).await;
        assert!(
            matches!(&outcome, Outcome::Values(v) if v == &[Some(42.0)]),
            "{outcome:?}"
        );
        assert_eq!(
            limits.warm.started(),
            1,
            "one fresh worker after the warm one"
        );
    }
}
