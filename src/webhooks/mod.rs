//! The webhook dispatcher: a consumer of task changes with its own durable deliveries. The
//! task service writes each delivery in the transaction of the change it announces; this
//! loop, on every node, leases the due ones, sends each attempt signed (Standard Webhooks),
//! records it, and schedules the next (immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h,
//! or later if the receiver's `Retry-After` says so). A 410 disables an endpoint; so does a
//! streak of failures lasting five days.
//!
//! It wakes when a store call on its node queued deliveries (the node that changes a task
//! sends what the change owes), when a handler queues a test or a redelivery, when the next
//! retry is due, and at least every second (for what other nodes left behind).

pub mod client;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::domain::webhook::{self, Verdict};
use crate::store::webhooks::{self as rows, Due, Next};
use crate::store::Store;
pub use client::{check_url, Policy};

/// Attempts in flight at once, per node.
const CONCURRENCY: usize = 32;

/// How long a node holds a delivery it is sending: well past the 15 s an answer may take.
const LEASE: Duration = Duration::from_secs(60);

/// The longest the loop sleeps without looking for due deliveries.
const POLL: Duration = Duration::from_secs(1);

/// Finished deliveries are kept in the log this long.
const LOG_RETENTION: Duration = Duration::from_secs(30 * 86400);

/// How often old deliveries and the callbacks of forgotten tasks are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// The schedule's clock: real time, or (tests only, `--webhook-schedule-speedup`) a faster
/// one, so that a day of retries and the five days that disable an endpoint pass in seconds.
/// It scales waits only; timestamps and signatures stay on the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub speedup: f64,
}

impl Schedule {
    fn scale(self, d: Duration) -> Duration {
        d.div_f64(self.speedup.max(1.0))
    }
}

/// The dispatcher's handle: cheap to clone; handlers use it to wake the loop and check URLs.
#[derive(Clone)]
pub struct Webhooks {
    store: Store,
    client: client::Client,
    policy: Policy,
    schedule: Schedule,
    /// Whose leases this node's attempts are.
    node: Arc<str>,
    wake: Arc<Notify>,
}

impl Webhooks {
    pub fn new(
        store: Store,
        policy: Policy,
        schedule: Schedule,
        node: Arc<str>,
    ) -> anyhow::Result<Webhooks> {
        Ok(Webhooks {
            store,
            client: client::Client::new(policy)?,
            policy,
            schedule,
            node,
            wake: Arc::new(Notify::new()),
        })
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Looks for due deliveries now (a test or a redelivery was queued).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sends due deliveries until `shutdown`; attempts still in flight then are abandoned
    /// (their leases run out, and the delivery goes out again).
    pub async fn run_until(self, bus: Bus, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let mut in_flight = tokio::task::JoinSet::new();
        let mut pruned = tokio::time::Instant::now();
        loop {
            let mut wait = POLL;
            let free = slots.available_permits();
            if free > 0 {
                let owner = self.node.to_string();
                let lease = LEASE.as_millis() as i64;
                match self
                    .store
                    .call(move |db| rows::claim(db, &owner, lease, free as i64))
                    .await
                {
                    Ok((due, next)) => {
                        let full = due.len() == free;
                        for due in due {
                            let permit = slots.clone().acquire_owned().await.expect("never closed");
                            let this = self.clone();
                            in_flight.spawn(async move {
                                this.attempt(due).await;
                                drop(permit);
                            });
                        }
                        if let Some(ms) = next {
                            wait = wait.min(Duration::from_millis(ms.max(0) as u64));
                        }
                        if full {
                            wait = Duration::ZERO;
                        }
                    }
                    Err(e) => tracing::warn!(error = ?e, "webhooks: the database does not answer"),
                }
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = tokio::time::Instant::now();
                self.prune().await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                () = bus.deliveries_queued() => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        in_flight.abort_all();
    }

    /// Sends one leased delivery and records what came of it.
    async fn attempt(&self, due: Due) {
        let (attempt, verdict) = self.client.send(&due).await;
        let next = match verdict {
            Verdict::Delivered => Next::Delivered,
            Verdict::Gone => Next::Failed,
            Verdict::Failed { not_before } => {
                let jitter = rand::thread_rng().gen_range(-1.0..=1.0);
                match webhook::next_delay(due.tries as usize + 1, not_before, jitter) {
                    Some(delay) => Next::Retry {
                        delay_ms: self.schedule.scale(delay).as_millis() as i64,
                    },
                    None => Next::Failed,
                }
            }
        };
        let owner = self.node.to_string();
        let disable_after = self.schedule.scale(webhook::DISABLE_AFTER).as_millis() as i64;
        let at = attempt.at.clone();
        let recorded = self
            .store
            .call(move |db| {
                db.atomically(|db| {
                    if !rows::record(db, &due, &owner, &attempt, next)? {
                        return Ok(false);
                    }
                    let Some(endpoint) = due.endpoint_id else {
                        return Ok(true);
                    };
                    match verdict {
                        Verdict::Delivered => rows::succeeded(db, endpoint)?,
                        Verdict::Gone => rows::disable(
                            db,
                            endpoint,
                            &format!(
                                "The endpoint answered 410 Gone at {at}: it asked not to be \
                                 called again. Enable it again to resume its deliveries."
                            ),
                        )?,
                        Verdict::Failed { .. } => {
                            let (since, now) = rows::failing(db, endpoint)?;
                            if now - since >= disable_after {
                                let since = chrono::DateTime::from_timestamp_millis(since)
                                    .map(crate::time::format)
                                    .unwrap_or_default();
                                rows::disable(
                                    db,
                                    endpoint,
                                    &format!(
                                        "Every delivery since {since} failed, for five days: \
                                         the endpoint was disabled. Enable it again to \
                                         resume its deliveries."
                                    ),
                                )?;
                            }
                        }
                    }
                    Ok(true)
                })
            })
            .await;
        match recorded {
            Ok(true) => {}
            Ok(false) => tracing::info!("webhooks: a delivery's lease ran out while it was sent"),
            Err(e) => tracing::warn!(error = ?e, "webhooks: an attempt could not be recorded"),
        }
    }

    async fn prune(&self) {
        let before = crate::time::format(
            chrono::Utc::now() - chrono::Duration::from_std(LOG_RETENTION).expect("small"),
        );
        let result = self
            .store
            .call(move |db| Ok(rows::prune(db, &before)? + rows::prune_callbacks(db)?))
            .await;
        if let Err(e) = result {
            tracing::warn!(error = ?e, "webhooks: pruning the delivery log failed");
        }
    }
}

/// A fresh signing secret (32 random bytes).
pub fn new_secret() -> String {
    let mut key = vec![0u8; 32];
    rand::thread_rng().fill(&mut key[..]);
    webhook::Secret::from_key(key)
        .expect("32 bytes is a valid length")
        .reveal()
}

/// Alone on SQLite, no attempt can be in flight at start-up: leases left by a crash are
/// released, so their deliveries go out at once instead of when the leases run out.
pub async fn release_leases(store: &Store) -> anyhow::Result<()> {
    store.call(rows::release_leases).await
}
