//! Drawing map tiles in worker processes of their own (warm, sandboxed as conversions are:
//! uploaded files stay untrusted), with an in-memory LRU of drawn tiles. A tile is keyed by
//! the file's stored blob (which changes whenever its bytes do) and every drawing parameter,
//! so a cached tile is never stale.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::child::{self, ChildLimits, Outcome};
use crate::domain::facts::RasterFacts;
use crate::domain::job::{Failure, Job, JobKind, Limits};
use crate::domain::tiles::TileJob;
use crate::storage::{Staged, Storage};

/// A tile that takes longer is not worth waiting for.
const TILE_TIMEOUT: Duration = Duration::from_secs(30);

/// Files kept staged on this node's disk for tiles (object storage only).
const STAGED_KEPT: usize = 8;

/// COGs whose facts are kept.
const FACTS_KEPT: usize = 256;

#[derive(Clone)]
pub struct Renderer {
    pub child: ChildLimits,
    pub limits: Limits,
    pub cache_mb: usize,
    /// Tiles drawn at once: one per core, the rest wait.
    pub slots: Arc<Semaphore>,
    cache: Arc<Mutex<Cache>>,
    /// COGs staged from object storage, by blob, so that each tile does not download its file.
    staged: Arc<Mutex<lru::LruCache<String, Arc<Staged>>>>,
    /// What was read of each COG (blobs never change), for STAC, info and statistics.
    facts: Arc<Mutex<lru::LruCache<String, Arc<RasterFacts>>>>,
}

/// Drawn tiles, least recently used dropped first once over `budget` bytes.
struct Cache {
    tiles: lru::LruCache<[u8; 16], Bytes>,
    bytes: usize,
    budget: usize,
}

/// What a tile is: its cache key and its ETag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileKey(pub [u8; 16]);

impl TileKey {
    pub fn of(blob: &str, job: &TileJob) -> TileKey {
        let mut hash = Sha256::new();
        hash.update(blob.as_bytes());
        hash.update(serde_json::to_vec(job).expect("a tile job serialises"));
        let digest = hash.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        TileKey(key)
    }

    /// The ETag: strong, since the same key always draws the same bytes.
    pub fn etag(&self) -> String {
        format!("\"t{}\"", hex::encode(self.0))
    }
}

/// Why a tile was not drawn.
pub enum NotDrawn {
    /// The file's doing, or the request's: a sentence for a 422.
    Refused(String),
    /// Not the request's fault (a worker could not start, storage out of reach): 503.
    Unavailable(String),
    /// The file is gone.
    Gone,
}

impl Renderer {
    pub fn new(
        child: ChildLimits,
        limits: Limits,
        cache_mb: usize,
        slots: usize,
        cache_bytes: usize,
    ) -> Renderer {
        Renderer {
            child,
            limits,
            cache_mb,
            slots: Arc::new(Semaphore::new(slots.max(1))),
            cache: Arc::new(Mutex::new(Cache {
                tiles: lru::LruCache::unbounded(),
                bytes: 0,
                budget: cache_bytes,
            })),
            staged: Arc::new(Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(STAGED_KEPT).expect("not zero"),
            ))),
            facts: Arc::new(Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(FACTS_KEPT).expect("not zero"),
            ))),
        }
    }

    /// Lets tile workers idle for a minute exit, until `shutdown`.
    pub async fn retire_until(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(30)) => self.child.warm.retire_idle(),
                _ = shutdown.cancelled() => return,
            }
        }
    }

    pub fn cached(&self, key: TileKey) -> Option<Bytes> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.tiles.get(&key.0).cloned()
    }

    fn keep(&self, key: TileKey, image: Bytes) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if image.len() > cache.budget {
            return;
        }
        cache.bytes += image.len();
        if let Some(old) = cache.tiles.put(key.0, image) {
            cache.bytes -= old.len();
        }
        while cache.bytes > cache.budget {
            match cache.tiles.pop_lru() {
                Some((_, dropped)) => cache.bytes -= dropped.len(),
                None => break,
            }
        }
    }

    /// The file as a local path for a worker: itself on local disk, a staged copy (kept for
    /// the next tiles) on object storage.
    async fn staged(&self, storage: &Storage, blob: &str) -> Result<Arc<Staged>, NotDrawn> {
        if let Some(staged) = self
            .staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(blob)
        {
            return Ok(staged.clone());
        }
        let staged = storage
            .stage(blob, None, &|_| {})
            .await
            .map_err(|e| NotDrawn::Unavailable(format!("The file storage did not answer: {e}")))?
            .ok_or(NotDrawn::Gone)?;
        let staged = Arc::new(staged);
        if staged.is_scratch() {
            self.staged
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put(blob.to_owned(), staged.clone());
        }
        Ok(staged)
    }

    /// Draws tile `job` of `blob`, or answers it from the cache.
    pub async fn tile(
        &self,
        storage: &Storage,
        blob: &str,
        job: TileJob,
    ) -> Result<(TileKey, Bytes), NotDrawn> {
        let key = TileKey::of(blob, &job);
        if let Some(image) = self.cached(key) {
            return Ok((key, image));
        }
        let staged = self.staged(storage, blob).await?;
        let _slot = self.slots.acquire().await.expect("never closed");
        // Drawn meanwhile by a request that held the slot.
        if let Some(image) = self.cached(key) {
            return Ok((key, image));
        }
        let image = match self
            .run(staged.path().to_path_buf(), JobKind::Tile, Some(job), None)
            .await?
        {
            Outcome::Rendered(image) => Bytes::from(image),
            _ => return Err(stopped()),
        };
        self.keep(key, image.clone());
        Ok((key, image))
    }

    /// What a worker reads of `blob` for STAC, info and statistics; kept per blob.
    pub async fn facts(&self, storage: &Storage, blob: &str) -> Result<Arc<RasterFacts>, NotDrawn> {
        if let Some(facts) = self
            .facts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(blob)
        {
            return Ok(facts.clone());
        }
        let facts = match self.ask(storage, blob, JobKind::Facts, None, None).await? {
            Outcome::Facts(facts) => Arc::new(*facts),
            _ => return Err(stopped()),
        };
        self.facts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(blob.to_owned(), facts.clone());
        Ok(facts)
    }

    /// Each band's value of `blob` at a WGS 84 longitude and latitude.
    pub async fn point(
        &self,
        storage: &Storage,
        blob: &str,
        lon: f64,
        lat: f64,
    ) -> Result<Vec<Option<f64>>, NotDrawn> {
        let point = Some([lon, lat]);
        match self.ask(storage, blob, JobKind::Point, None, point).await? {
            Outcome::Values(values) => Ok(values),
            _ => Err(stopped()),
        }
    }

    /// Runs one job of `kind` on `blob` (staged first) in a tile worker, once a slot is free.
    /// A failure comes back as what it means for the request; any other answer is the caller's
    /// to read.
    async fn ask(
        &self,
        storage: &Storage,
        blob: &str,
        kind: JobKind,
        tile: Option<TileJob>,
        point: Option<[f64; 2]>,
    ) -> Result<Outcome, NotDrawn> {
        let staged = self.staged(storage, blob).await?;
        let _slot = self.slots.acquire().await.expect("never closed");
        self.run(staged.path().to_path_buf(), kind, tile, point)
            .await
    }

    async fn run(
        &self,
        input: PathBuf,
        kind: JobKind,
        tile: Option<TileJob>,
        point: Option<[f64; 2]>,
    ) -> Result<Outcome, NotDrawn> {
        let job = Job {
            kind,
            output: input.clone(),
            input,
            conversion: Default::default(),
            limits: self.limits.clone(),
            cache_mb: self.cache_mb,
            tile,
            point,
        };
        let limits = ChildLimits {
            timeout: TILE_TIMEOUT,
            ..self.child.clone()
        };
        match child::run(&job, &limits, &CancellationToken::new(), |_, _| {}).await {
            Outcome::Failed(Failure {
                message,
                transient: true,
            }) => Err(NotDrawn::Unavailable(message)),
            Outcome::Failed(failure) => Err(NotDrawn::Refused(failure.message)),
            other => Ok(other),
        }
    }
}

fn stopped() -> NotDrawn {
    NotDrawn::Unavailable("The tile worker stopped.".into())
}
