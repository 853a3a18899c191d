//! The FIFO queue and the worker pool that drains it. The queue itself is the `tasks` table;
//! this module wakes workers, tracks running tasks for cancellation, and runs each task from
//! claim to a final state.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::child::{self, ChildLimits, Outcome};
use super::{Ending, Heartbeat, Published, Tasks};
use crate::bus::Bus;
use crate::domain::job::{Failure, Job, JobKind, Limits, Phase};
use crate::domain::TaskRecord;
use crate::storage::Storage;
use crate::store::items::{ItemKind, NewItem};
use crate::store::tasks::claim_owner;
use crate::store::Store;

/// A handle to wake workers and to stop a running task.
#[derive(Clone, Default)]
pub struct Queue {
    wake: Arc<Notify>,
    /// Running tasks' stop switches, so a cancel request reaches the worker at once.
    running: Arc<Mutex<Running>>,
}

/// The tasks this node's workers run, and the latest cancels of tasks it did not know to be
/// running: a cancel can come between a worker's claim and its switch being registered, and
/// the worker then finds it here instead of asking the store. (A cancel on another node
/// reaches the worker at its next heartbeat, and a success never overrides one.)
#[derive(Default)]
struct Running {
    switches: HashMap<Uuid, CancellationToken>,
    early: VecDeque<Uuid>,
}

/// How many early cancels are remembered: one is looked for within moments of its claim.
const EARLY_CANCELS: usize = 256;

impl Queue {
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn cancel_running(&self, id: Uuid) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match running.switches.get(&id) {
            Some(token) => token.cancel(),
            None => {
                if running.early.len() == EARLY_CANCELS {
                    running.early.pop_front();
                }
                running.early.push_back(id);
            }
        }
    }

    /// Registers a claimed task's stop switch, already thrown if its cancel came first.
    fn register(&self, id: Uuid, stop: &CancellationToken) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = running.early.iter().position(|early| *early == id) {
            running.early.remove(at);
            stop.cancel();
        }
        running.switches.insert(id, stop.clone());
    }

    fn unregister(&self, id: Uuid) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .switches
            .remove(&id);
    }
}

/// Everything a worker needs, shared by the pool.
pub struct Workers {
    /// Every change of a task goes through the service.
    pub tasks: Tasks,
    /// Reads only: whether an output file is referenced.
    pub store: Store,
    pub blobs: Storage,
    pub bus: Bus,
    pub child: ChildLimits,
    pub limits: Limits,
    pub cache_mb: usize,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// This process's id as the owner of the tasks it runs.
    pub node: Arc<str>,
    /// How long a claim lasts without a heartbeat.
    pub lease: Duration,
    /// Take back tasks whose lease ran out: with other nodes on the database. Alone, a
    /// process's tasks can only be cut off by its own stop, which start-up recovery covers.
    pub reap: bool,
}

/// How often an idle worker looks at the queue even without a wake-up, as a safety net.
const IDLE_POLL: Duration = Duration::from_secs(2);
/// Progress events: at most one per task per this interval (about what a UI can show), so a
/// ten-millisecond conversion costs no progress write at all and a long one ten a second.
/// State changes are never coalesced.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

impl Workers {
    pub fn spawn(self: Arc<Self>, count: usize, shutdown: CancellationToken) -> JoinSet<()> {
        let mut set = JoinSet::new();
        for n in 0..count {
            let workers = self.clone();
            let shutdown = shutdown.clone();
            set.spawn(async move { workers.work(n, shutdown).await });
        }
        if self.reap {
            let workers = self.clone();
            set.spawn(async move { workers.reap(shutdown).await });
        }
        set
    }

    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    /// Heartbeats go every third of the lease, and at least every second: that is also how
    /// soon a cancel sent to another node reaches the conversion.
    fn beat(&self) -> Duration {
        (self.lease / 3).min(Duration::from_secs(1))
    }

    /// Takes back tasks whose node stopped renewing its lease (killed, or cut off from the
    /// database), on whichever node notices first.
    async fn reap(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.tasks.reap().await {
                Ok(ids) if !ids.is_empty() => {
                    tracing::warn!(tasks = ?ids, "took back tasks whose lease ran out");
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = ?e, "could not look for expired leases"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.beat()) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    async fn work(&self, n: usize, shutdown: CancellationToken) {
        // A task claimed by the previous task's publication: it is ours, so it runs even after
        // a shutdown began (and is put back in the queue at once).
        let mut next: Option<(TaskRecord, Arc<str>)> = None;
        while next.is_some() || !shutdown.is_cancelled() {
            let (claimed, owner) = match next.take() {
                Some((task, owner)) => (Ok(Some(task)), owner),
                None => {
                    let owner: Arc<str> = claim_owner(&self.node).into();
                    (
                        self.tasks.claim(owner.clone(), self.lease_ms()).await,
                        owner,
                    )
                }
            };
            match claimed {
                Ok(Some(task)) => {
                    let span = tracing::info_span!("task", id = %task.id, worker = n);
                    next = self.run(task, owner, &shutdown).instrument(span).await;
                }
                Ok(None) => {
                    self.child.warm.retire_idle();
                    tokio::select! {
                        _ = self.tasks.queue().wake.notified() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Err(e) => {
                    tracing::error!(error = ?e, "could not claim a task");
                    tokio::time::sleep(IDLE_POLL).await;
                }
            }
        }
    }

    /// Runs a task this worker claimed as `owner`. Returns the next task when its publication
    /// claimed one, with the owner it was claimed as.
    async fn run(
        &self,
        task: TaskRecord,
        owner: Arc<str>,
        shutdown: &CancellationToken,
    ) -> Option<(TaskRecord, Arc<str>)> {
        let id = task.id;
        tracing::info!(source = %task.source_name, attempt = task.attempts, "conversion started");
        let stop = shutdown.child_token();
        let queue = self.tasks.queue();
        queue.register(id, &stop);
        let started = std::time::Instant::now();
        let heartbeat = tokio::spawn(
            keep_lease(
                self.tasks.clone(),
                id,
                owner.clone(),
                self.lease,
                self.beat(),
                stop.clone(),
            )
            .in_current_span(),
        );
        let result = self.convert(&task, &owner, &stop).await;
        heartbeat.abort();
        let outcome = match &result {
            Ok(_) => "success",
            Err(Outcome::Failed(_)) => "failure",
            Err(_) => "stopped",
        };
        self.metrics
            .conversion_seconds
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: outcome.into(),
            })
            .observe(started.elapsed().as_secs_f64());
        queue.unregister(id);

        // Each end below names this claim: if the lease ran out meanwhile, the task is another
        // claim's now and none of them changes it.
        let ending = match result {
            Ok(next) => return next,
            Err(Outcome::Stopped) if shutdown.is_cancelled() => Ending::Interrupted,
            Err(Outcome::Stopped) => Ending::Revoked,
            Err(Outcome::Failed(failure)) => {
                tracing::info!(error = %failure.message, transient = failure.transient, "conversion failed");
                Ending::Failed(failure)
            }
            Err(
                Outcome::Done(_) | Outcome::Rendered(_) | Outcome::Facts(_) | Outcome::Values(_),
            ) => {
                unreachable!("convert returns Ok for a published result, and asks for no tile")
            }
        };
        if let Err(e) = self.tasks.finish(id, owner.clone(), ending).await {
            // Never leave the task in PROGRESS: one more try, after the database settles.
            tracing::error!(error = ?e, "could not record the end of a task; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let failed = Ending::Failed(Failure::transient("The result could not be recorded."));
            if let Err(e) = self.tasks.finish(id, owner, failed).await {
                tracing::error!(error = ?e, "the task stays in PROGRESS until the next start");
            }
        }
        None
    }

    /// Runs the child and publishes its output; `Ok` holds the worker's next task when the
    /// publication claimed one. `Err` says how the task ended otherwise.
    async fn convert(
        &self,
        task: &TaskRecord,
        owner: &Arc<str>,
        stop: &CancellationToken,
    ) -> Result<Option<(TaskRecord, Arc<str>)>, Outcome> {
        // One progress bar for the whole run, never going back: staging from object storage
        // takes 0–2 %, the worker 0–95 %, the upload of the result 95–99 %.
        let (progress_tx, progress_rx) = watch::channel((0.0, Phase::Opening));
        let report = |percent: f64, phase: Phase| {
            progress_tx.send_if_modified(|last| {
                let next = (percent.max(last.0), phase);
                let changed = next != *last;
                *last = next;
                changed
            });
        };
        let reporter = tokio::spawn(
            report_progress(
                self.tasks.clone(),
                self.bus.clone(),
                task.id,
                owner.clone(),
                progress_rx,
            )
            .in_current_span(),
        );
        let stages = async {
            let downloaded = |done: f64| report(2.0 * done, Phase::Downloading);
            let member = task.options.subdataset.as_deref();
            let staging = self.blobs.stage(&task.source_blob, member, &downloaded);
            let staged = tokio::select! {
                staged = staging => staged,
                _ = stop.cancelled() => return Err(Outcome::Stopped),
            }
            .map_err(|e| {
                Outcome::Failed(Failure::transient(
                    if e.raw_os_error() == Some(libc::ENOSPC) {
                        "The server ran out of disk space while copying the source from storage; nothing was kept. Try again once space is freed.".to_string()
                    } else {
                        format!("The source file could not be read from storage: {e}")
                    },
                ))
            })?
            .ok_or_else(|| {
                Outcome::Failed(Failure::permanent(
                    "The source file was deleted before the conversion started.",
                ))
            })?;
            self.metrics.bytes_staged.inc_by(staged.fetched);
            let output = self.blobs.temp(".tif");
            let job = Job {
                kind: JobKind::Convert,
                input: staged.path().to_path_buf(),
                output: output.path().to_path_buf(),
                conversion: task.options.clone(),
                limits: self.limits.clone(),
                cache_mb: self.cache_mb,
                tile: None,
                point: None,
            };
            let outcome = child::run(&job, &self.child, stop, &report).await;
            drop(staged);
            let Outcome::Done(described) = outcome else {
                return Err(outcome);
            };
            if stop.is_cancelled() {
                return Err(Outcome::Stopped);
            }
            let uploaded = |done: f64| report(95.0 + 4.0 * done, Phase::Uploading);
            let uploading = self.blobs.persist_file(output, &uploaded);
            tokio::pin!(uploading);
            let stored = tokio::select! {
                stored = &mut uploading => stored,
                _ = stop.cancelled() => {
                    // On local disk the fsync and rename run on a blocking thread that a drop
                    // does not stop: let it finish (it is quick) and remove what it stored. On
                    // object storage, dropping the upload aborts it.
                    if let Storage::Local(_) = self.blobs {
                        if let Ok(blob) = uploading.await {
                            self.blobs.remove(vec![blob]).await;
                        }
                    }
                    return Err(Outcome::Stopped);
                }
            };
            let blob = stored.map_err(|e| {
                Outcome::Failed(Failure::transient(format!(
                    "The output could not be stored: {e}"
                )))
            })?;
            report(0.0, Phase::Publishing);
            Ok((blob, described))
        }
        .await;
        drop(progress_tx);
        let _ = reporter.await;
        let (blob, described) = stages?;
        let size = described.size_bytes;
        let geo = serde_json::to_value(&*described).expect("serialises");
        let new_item = NewItem {
            user_id: task.user_id,
            parent_id: task.parent_id,
            name: output_name(&task.source_name),
            kind: ItemKind::File,
            size,
            content_type: Some(COG_CONTENT_TYPE.into()),
            blob: Some(blob.clone()),
            geo_raster: Some(geo.clone()),
            source_id: Some(task.source_id),
        };
        // No next task for a worker whose node is shutting down (or whose task was just
        // cancelled: it publishes nothing).
        let next_owner: Option<Arc<str>> =
            (!stop.is_cancelled()).then(|| claim_owner(&self.node).into());
        let then = next_owner.clone().map(|owner| (owner, self.lease_ms()));
        let published = self
            .tasks
            .succeed(task.clone(), owner.clone(), new_item, geo, then)
            .await;
        match published {
            Ok((Published::Output(item), next)) => {
                self.metrics.bytes_converted.inc_by(size);
                tracing::info!(output = %item, "conversion published");
                Ok(next.zip(next_owner))
            }
            other => {
                // An error may have come after the commit (a connection lost while it was
                // acknowledged): the file is removed only when no item refers to it. If that
                // cannot be told either, it stays, and a later start's sweep removes it.
                let other = other.map(|(published, _)| published);
                let unreferenced = match &other {
                    Ok(_) => true,
                    Err(_) => {
                        let name = blob.clone();
                        self.store
                            .call(move |c| crate::store::items::refers_to_blob(c, &name))
                            .await
                            .is_ok_and(|referenced| !referenced)
                    }
                };
                if unreferenced {
                    self.blobs.remove(vec![blob]).await;
                }
                match other {
                    Ok(Published::Cancelled) => Err(Outcome::Stopped),
                    Ok(Published::LeaseLost) => {
                        tracing::warn!("the lease ran out before the output was published; another node has the task");
                        Err(Outcome::Stopped)
                    }
                    Ok(Published::FolderGone) => Err(Outcome::Failed(Failure::permanent(
                        "The folder the output belonged in was deleted before the conversion finished.",
                    ))),
                    Err(e) => {
                        tracing::error!(error = ?e, "could not publish an output");
                        Err(Outcome::Failed(Failure::transient(
                            "The output could not be recorded.",
                        )))
                    }
                    Ok(Published::Output(_)) => unreachable!(),
                }
            }
        }
    }
}

/// Renews this node's lease on a running task until aborted. A cancel asked for on any node,
/// or a lease that ran out, stops the conversion.
async fn keep_lease(
    tasks: Tasks,
    id: Uuid,
    node: Arc<str>,
    lease: Duration,
    beat: Duration,
    stop: CancellationToken,
) {
    let lease = lease.as_millis() as i64;
    loop {
        tokio::time::sleep(beat).await;
        match tasks.heartbeat(id, node.clone(), lease).await {
            Ok(Heartbeat::Held { cancel: false }) => {}
            Ok(Heartbeat::Held { cancel: true }) => stop.cancel(),
            Ok(Heartbeat::Lost) => {
                tracing::warn!("the lease on this task ran out; stopping it");
                stop.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = ?e, "could not renew the lease"),
        }
    }
}

pub const COG_CONTENT_TYPE: &str = "image/tiff; application=geotiff; profile=cloud-optimized";

/// `scene.tif` → `scene.cog.tif`.
fn output_name(source: &str) -> String {
    let stem = source
        .rsplit_once('.')
        .filter(|(stem, ext)| !stem.is_empty() && ext.len() <= 5)
        .map_or(source, |(stem, _)| stem);
    format!("{stem}.cog.tif")
}

/// Writes progress to the store and the bus, at most every `PROGRESS_EVERY` (and at once
/// when a transfer to or from object storage starts); the claim's
/// state event already said the task started. The watch channel keeps only the newest value,
/// so a slow write never queues stale ones, and the last value is written: unless it is the
/// publishing step, which the final state follows at once (a write and an event per task,
/// for every task, that no watcher could have read before the next).
async fn report_progress(
    tasks: Tasks,
    bus: Bus,
    id: Uuid,
    node: Arc<str>,
    mut rx: watch::Receiver<(f64, Phase)>,
) {
    let write = |(percent, phase): (f64, Phase)| {
        tasks.progress(id, node.clone(), percent, phase.sentence())
    };
    let mut sent = (*rx.borrow_and_update(), tokio::time::Instant::now());
    let (mut received, mut written) = (0u64, 0u64);
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_ok() {
                    received += 1;
                    // Entering a transfer is written at once: it is where a task waits on the
                    // network, and a watcher must be able to tell that it does.
                    let latest = *rx.borrow_and_update();
                    if latest.1 != sent.0 .1 && latest.1.is_transfer() {
                        written += 1;
                        if let Err(e) = write(latest).await {
                            tracing::warn!(error = ?e, "could not record progress");
                        }
                        sent = (latest, tokio::time::Instant::now());
                    }
                    continue;
                }
                let last = *rx.borrow();
                if last != sent.0 && last.1 != Phase::Publishing {
                    written += 1;
                    let _ = write(last).await;
                }
                bus.stats().coalesced.fetch_add(
                    received.saturating_sub(written),
                    std::sync::atomic::Ordering::Relaxed,
                );
                return;
            }
            _ = tokio::time::sleep_until(sent.1 + PROGRESS_EVERY) => {
                let latest = *rx.borrow_and_update();
                if latest != sent.0 {
                    written += 1;
                    if let Err(e) = write(latest).await {
                        tracing::warn!(error = ?e, "could not record progress");
                    }
                }
                sent = (latest, tokio::time::Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn output_names() {
        assert_eq!(super::output_name("RGB.byte.tif"), "RGB.byte.cog.tif");
        assert_eq!(super::output_name("N10W110.hgt.zip"), "N10W110.hgt.cog.tif");
        assert_eq!(super::output_name("noext"), "noext.cog.tif");
    }

    #[test]
    fn a_cancel_that_comes_before_the_switch_is_registered_throws_it() {
        let queue = super::Queue::default();
        let (early, late, other) = (
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
        );
        queue.cancel_running(early);
        let stops: Vec<_> = (0..3)
            .map(|_| tokio_util::sync::CancellationToken::new())
            .collect();
        queue.register(early, &stops[0]);
        queue.register(late, &stops[1]);
        queue.register(other, &stops[2]);
        assert!(
            stops[0].is_cancelled(),
            "the early cancel was kept for its claim"
        );
        assert!(!stops[1].is_cancelled() && !stops[2].is_cancelled());
        queue.cancel_running(late);
        assert!(
            stops[1].is_cancelled(),
            "a registered switch is thrown at once"
        );
        assert!(!stops[2].is_cancelled());

        // A cancel is used once, and only the latest are kept.
        queue.unregister(early);
        let again = tokio_util::sync::CancellationToken::new();
        queue.register(early, &again);
        assert!(!again.is_cancelled());
        for _ in 0..super::EARLY_CANCELS {
            queue.cancel_running(uuid::Uuid::new_v4());
        }
        let first = uuid::Uuid::new_v4();
        queue.cancel_running(first);
        assert_eq!(
            queue.running.lock().unwrap().early.len(),
            super::EARLY_CANCELS
        );
        let stop = tokio_util::sync::CancellationToken::new();
        queue.register(first, &stop);
        assert!(stop.is_cancelled());
    }
}
