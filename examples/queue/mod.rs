//! What one claim costs as the queue grows: the store alone, in this process, on SQLite and
//! on PostgreSQL. A deep queue is many users' batches waiting; a claim that read every queued
//! task would slow every worker down as the queue filled, just when it should drain fastest.

use std::sync::Arc;
use std::time::Instant;

use rastercast::domain::{Announce, NewTask};
use rastercast::store::{tasks, users, Store};
use rastercast::tasks::lifecycle::{self, Submitted};
use uuid::Uuid;

use super::server::PgSchema;

/// Users whose tasks fill the queue: the claim takes turns between them.
const USERS: usize = 10;
/// Claims, and then status reads, timed at each depth.
const TIMED: usize = 300;

/// What one store operation costs with `depth` tasks queued (medians, milliseconds).
pub struct Costs {
    /// A claim; each claimed task is replaced by a new one, so the depth holds.
    pub claim: f64,
    /// A status read of a queued task, as a poller makes, over tasks spread through the queue.
    pub status: f64,
}

/// [`Costs`] on PostgreSQL (`postgres`) or SQLite, with `depth` tasks queued.
pub fn costs(postgres: bool, depth: usize) -> anyhow::Result<Costs> {
    let dir = tempfile::tempdir()?;
    let bus: Arc<dyn Announce> = Arc::new(rastercast::bus::Bus::new(1 << 10, 1 << 10));
    let (store, schema) = if postgres {
        let schema = PgSchema::create("rc_queue")?;
        (Store::connect(&schema.url(), bus)?, Some(schema))
    } else {
        (Store::open(&dir.path().join("db.sqlite"), bus)?, None)
    };
    let timed = store.blocking(|db| {
        let users = (0..USERS)
            .map(|n| Ok(users::ensure_user(db, &format!("queue-{n}"))?.id))
            .collect::<anyhow::Result<Vec<Uuid>>>()?;
        let submit = |db: &mut rastercast::store::Db, n: usize| -> anyhow::Result<Uuid> {
            let new = NewTask {
                user_id: users[n % USERS],
                source_id: Uuid::new_v4(),
                source_blob: "0".repeat(32),
                source_name: "queued.tif".into(),
                parent_id: None,
                options: Default::default(),
                retry_of: None,
                callbacks: vec![],
            };
            match lifecycle::submit(db, new, u64::MAX, None)? {
                Submitted::Queued(task) => Ok(task.id),
                _ => anyhow::bail!("the submit was refused"),
            }
        };
        let mut queued = (0..depth)
            .map(|n| submit(db, n))
            .collect::<anyhow::Result<Vec<Uuid>>>()?;
        let mut claim = Vec::with_capacity(TIMED);
        for n in 0..TIMED {
            let start = Instant::now();
            let claimed = lifecycle::claim(db, "bench/1", 60_000)?;
            claim.push(start.elapsed().as_secs_f64() * 1000.0);
            let claimed = claimed.ok_or_else(|| anyhow::anyhow!("the queue ran dry"))?;
            queued.retain(|id| *id != claimed.id);
            queued.push(submit(db, depth + n)?);
        }
        let mut status = Vec::with_capacity(TIMED);
        for n in 0..TIMED {
            let id = queued[n * queued.len() / TIMED];
            let start = Instant::now();
            let task = tasks::get(db, id)?;
            status.push(start.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(
                task.and_then(|t| t.queue_position).is_some(),
                "a queued task without its place in the queue"
            );
        }
        Ok(Costs {
            claim: super::median(claim),
            status: super::median(status),
        })
    });
    drop(store);
    if let Some(schema) = schema {
        schema.remove()?;
    }
    timed
}
