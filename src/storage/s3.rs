//! Object storage (any S3-compatible service) through the `object_store` crate.
//!
//! Keys under the configured prefix: `blobs/{name}` holds an item's bytes, and
//! `uploads/{name}` is a marker holding the id of a multipart upload in flight, so that a
//! node that dies mid-upload leaves something the garbage collector can find and abort.
//! Every write lands on this node's scratch disk first (GDAL inspects and converts local
//! files, with no network); bytes go on to the store as they arrive, in parts of [`PART`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, FuturesOrdered};
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig,
};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::local::{LocalDisk, TempBlob};
use super::{zip_ranges, Progress, Unavailable};

/// The size of every part but the last. Parts are read back from the scratch file, so a
/// transfer holds at most [`IN_FLIGHT`] of them in memory.
pub const PART: u64 = 8 << 20;
const IN_FLIGHT: usize = 3;

/// Zip archives smaller than this are staged whole: reading their directory first would cost
/// more round trips than it saves.
const WHOLE_BELOW: u64 = 8 << 20;

/// How a marker whose upload was aborted once begins (see [`ObjectStorage::collect`]).
const ABORTED: &str = "aborted ";

#[derive(Clone, Debug)]
pub struct ObjectStorage {
    store: Arc<AmazonS3>,
    /// `""` or `"some/prefix/"`.
    root: String,
    /// `s3://bucket/prefix`, for messages.
    url: String,
    pub(super) scratch: LocalDisk,
}

impl ObjectStorage {
    /// Connects to `s3://BUCKET[/PREFIX]` with the standard AWS environment variables, and
    /// lists the prefix once: wrong credentials or a missing bucket stop the start here,
    /// with one sentence, rather than at the first upload.
    pub async fn connect(url: &str, scratch: LocalDisk) -> anyhow::Result<ObjectStorage> {
        let rest = url
            .strip_prefix("s3://")
            .context("a storage URL is file:// or s3://BUCKET[/PREFIX]")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(!bucket.is_empty(), "{url} names no bucket");
        let prefix = prefix.trim_matches('/');
        let root = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .unwrap_or_default();
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // A store that stops answering must surface as an error within seconds: uploads
            // then get a 503 and conversions are retried later, instead of hanging.
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_read_timeout(Duration::from_secs(30))
                    .with_timeout_disabled(),
            )
            // Parts are checked against their MD5s (the ETag), so hashing each with SHA-256
            // for the signature too would only spend CPU the upload needs.
            .with_unsigned_payload(true)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: Duration::from_secs(10),
            })
            .build()
            .with_context(|| format!("configuring the storage {url}"))?;
        let storage = ObjectStorage {
            store: Arc::new(store),
            root,
            url: url.trim_end_matches('/').to_string(),
            scratch,
        };
        let probe = storage
            .store
            .list_with_delimiter(Some(&storage.key("blobs")))
            .await;
        // Listing errors come back untyped: what the store said is in the message.
        let said = |e: &object_store::Error, words: &[&str]| {
            let text = root_cause(e);
            words.iter().any(|w| text.contains(w))
        };
        match probe {
            Ok(_) => Ok(storage),
            Err(e)
                if matches!(e, object_store::Error::NotFound { .. })
                    || said(&e, &["NoSuchBucket"]) =>
            {
                anyhow::bail!("The bucket {bucket:?} does not exist at the storage endpoint {}; create it, or fix --storage.", shown(&endpoint))
            }
            Err(e)
                if matches!(
                    e,
                    object_store::Error::PermissionDenied { .. }
                        | object_store::Error::Unauthenticated { .. }
                ) || said(&e, &["403 Forbidden", "401 Unauthorized"]) =>
            {
                anyhow::bail!(
                    "The storage refused the credentials for {url} (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY): {}",
                    store_said(&e)
                )
            }
            Err(e) => anyhow::bail!(
                "The storage for {url} at {} does not answer: {}",
                shown(&endpoint),
                innermost(&e)
            ),
        }
    }

    fn key(&self, rest: &str) -> Key {
        Key::from(format!("{}{rest}", self.root))
    }

    fn blob_key(&self, blob: &str) -> std::io::Result<Key> {
        if LocalDisk::is_blob_name(blob) {
            Ok(self.key(&format!("blobs/{blob}")))
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a blob name",
            ))
        }
    }

    fn error(&self, e: object_store::Error) -> std::io::Error {
        match e {
            object_store::Error::NotFound { .. } => {
                std::io::Error::new(std::io::ErrorKind::NotFound, e)
            }
            e => std::io::Error::other(Unavailable(format!(
                "the file storage ({}) failed: {}",
                self.url,
                root_cause(&e)
            ))),
        }
    }

    /// Answers when the store answers: a missing object is a healthy answer.
    pub async fn check(&self) -> std::io::Result<()> {
        let key = self.key("healthz");
        match tokio::time::timeout(Duration::from_secs(3), self.store.head(&key)).await {
            Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(std::io::Error::other(Unavailable(format!(
                "the file storage ({}) did not answer within 3 s",
                self.url
            )))),
        }
    }

    /// A new blob, fed as it arrives: once [`PART`] bytes are on the scratch disk, they go on
    /// to the store as a part of a multipart upload, while the next ones arrive.
    pub fn upload(&self, temp: &TempBlob) -> Upload {
        let name = uuid::Uuid::new_v4().simple().to_string();
        Upload {
            key: self.key(&format!("blobs/{name}")),
            marker: self.key(&format!("uploads/{name}")),
            name,
            storage: self.clone(),
            source: temp.path().to_path_buf(),
            multipart: None,
            sent: 0,
        }
    }

    /// The object as a scratch file, with its progress, and how many bytes were downloaded;
    /// `None` when it is gone. Of a big zip archive only the ranges a conversion of `member`
    /// reads are downloaded, into a sparse file of the archive's size.
    pub async fn stage(
        &self,
        blob: &str,
        member: Option<&str>,
        progress: &Progress<'_>,
    ) -> std::io::Result<Option<(TempBlob, u64)>> {
        let key = self.blob_key(blob)?;
        let size = match self.store.head(&key).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        let ranges = match size >= WHOLE_BELOW {
            true => self.zip_ranges(&key, size, member).await?,
            false => None,
        };
        let ranges = ranges.unwrap_or_else(|| std::iter::once(0..size).collect());
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        self.scratch.check_room(total)?;
        progress(0.0);
        let temp = self.scratch.temp(".source");
        let mut file = tokio::fs::File::create(temp.path()).await?;
        file.set_len(size).await?;
        let mut done = 0u64;
        for range in ranges {
            let mut stream = self.get_stream(&key, range.clone()).await?;
            file.seek(std::io::SeekFrom::Start(range.start)).await?;
            let mut out = tokio::io::BufWriter::with_capacity(1 << 20, &mut file);
            let mut at = range.start;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                out.write_all(&chunk).await?;
                at += chunk.len() as u64;
                let before = done;
                done += chunk.len() as u64;
                if (before >> 20) != (done >> 20) {
                    self.scratch.check_room(0)?;
                    progress(done as f64 / total.max(1) as f64);
                }
            }
            out.flush().await?;
            if at != range.end {
                return Err(std::io::Error::other(Unavailable(format!(
                    "the file storage sent bytes {}..{at} where {}..{} were asked for",
                    range.start, range.start, range.end
                ))));
            }
        }
        Ok(Some((temp, done)))
    }

    /// What a conversion reads of the object at `key`, when it is a zip archive this can
    /// read piecewise (see `zip_ranges`): sorted ranges that do not overlap.
    async fn zip_ranges(
        &self,
        key: &Key,
        size: u64,
        member: Option<&str>,
    ) -> std::io::Result<Option<Vec<std::ops::Range<u64>>>> {
        let get = |range: std::ops::Range<u64>| async move {
            self.store
                .get_range(key, range)
                .await
                .map_err(|e| self.error(e))
        };
        if get(0..4).await?.as_ref() != b"PK\x03\x04" {
            return Ok(None);
        }
        let tail_start = size.saturating_sub(zip_ranges::TAIL);
        let tail = get(tail_start..size).await?;
        let Some(directory) = zip_ranges::central_directory(&tail, size) else {
            return Ok(None);
        };
        let listing = if directory.start >= tail_start {
            let at = (directory.start - tail_start) as usize;
            tail.slice(at..at + (directory.end - directory.start) as usize)
        } else if directory.end - directory.start <= 64 << 20 {
            get(directory.clone()).await?
        } else {
            return Ok(None);
        };
        let Some(members) = zip_ranges::members(&listing, directory.start) else {
            return Ok(None);
        };
        let Some(mut ranges) = zip_ranges::needed(
            &members,
            member,
            crate::convert::is_raster_name,
            directory.start,
        ) else {
            return Ok(None);
        };
        // The worker tells a zip by its first bytes, and GDAL lists it from its directory.
        ranges.push(0..4);
        ranges.push(directory.start.min(tail_start)..size);
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<std::ops::Range<u64>> = Vec::with_capacity(ranges.len());
        for range in ranges {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        Ok(Some(merged))
    }

    /// The bytes of `range` of the object at `key`, as they arrive.
    async fn get_stream(
        &self,
        key: &Key,
        range: std::ops::Range<u64>,
    ) -> std::io::Result<BoxStream<'static, std::io::Result<Bytes>>> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..Default::default()
        };
        let got = self
            .store
            .get_opts(key, options)
            .await
            .map_err(|e| self.error(e))?;
        let this = self.clone();
        Ok(got.into_stream().map_err(move |e| this.error(e)).boxed())
    }

    /// `count` bytes of `blob` from `start`, streamed from the store.
    pub async fn read(
        &self,
        blob: &str,
        start: u64,
        count: u64,
    ) -> std::io::Result<BoxStream<'static, std::io::Result<Bytes>>> {
        let key = self.blob_key(blob)?;
        if count == 0 {
            // A zero-length range is an error to S3; an empty answer is what is asked.
            self.store.head(&key).await.map_err(|e| self.error(e))?;
            return Ok(futures_util::stream::empty().boxed());
        }
        self.get_stream(&key, start..start + count).await
    }

    pub async fn remove(&self, blobs: Vec<String>) {
        for blob in blobs {
            let Ok(key) = self.blob_key(&blob) else {
                continue;
            };
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(%blob, error = %root_cause(&e), "could not remove a deleted item's object; the garbage collector will")
                }
            }
        }
    }

    /// Objects no item refers to, and multipart uploads whose node never finished them, both
    /// older than `min_age` (other nodes may be between upload and commit); an upload's marker
    /// goes after its second abort, `min_age` after the first. Returns how many were removed.
    pub async fn collect(
        &self,
        referenced: &HashSet<String>,
        min_age: Duration,
    ) -> std::io::Result<usize> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::zero());
        let mut removed = 0;
        let mut markers = self.store.list(Some(&self.key("uploads")));
        while let Some(meta) = markers.next().await {
            let meta = meta.map_err(|e| self.error(e))?;
            if meta.last_modified > cutoff {
                continue;
            }
            let Some(name) = meta.location.filename().map(str::to_string) else {
                continue;
            };
            let marker = match self.store.get(&meta.location).await {
                Ok(got) => got.bytes().await.map_err(|e| self.error(e))?,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.error(e)),
            };
            let marker = String::from_utf8_lossy(&marker).into_owned();
            let (id, aborted_once) = match marker.strip_prefix(ABORTED) {
                Some(id) => (id.to_string(), true),
                None => (marker, false),
            };
            let key = self.key(&format!("blobs/{name}"));
            self.store
                .abort_multipart(&key, &id)
                .await
                .or_else(|e| match e {
                    object_store::Error::NotFound { .. } => Ok(()),
                    e => Err(self.error(e)),
                })?;
            // Some stores acknowledge an abort they did not do (SeaweedFS, just after a
            // crash) and every one acknowledges aborting an upload it no longer knows: the
            // marker goes only after a second abort, one collection later.
            if aborted_once {
                match self.store.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                    Err(e) => return Err(self.error(e)),
                }
            } else {
                let again = format!("{ABORTED}{id}");
                self.store
                    .put(&meta.location, again.into())
                    .await
                    .map_err(|e| self.error(e))?;
            }
        }
        let mut blobs = self.store.list(Some(&self.key("blobs")));
        while let Some(meta) = blobs.next().await {
            let meta = meta.map_err(|e| self.error(e))?;
            let name = meta.location.filename().unwrap_or_default();
            if meta.last_modified <= cutoff && !referenced.contains(name) {
                match self.store.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                    Err(e) => return Err(self.error(e)),
                }
            }
        }
        Ok(removed)
    }
}

/// A part on its way: its id in the upload, and the MD5 of its bytes.
type SentPart = BoxFuture<'static, object_store::Result<(PartId, [u8; 16])>>;

/// A blob being written: see [`ObjectStorage::upload`].
pub struct Upload {
    name: String,
    key: Key,
    marker: Key,
    storage: ObjectStorage,
    source: std::path::PathBuf,
    multipart: Option<Multipart>,
    /// Bytes of the scratch file already handed to parts.
    sent: u64,
}

/// A multipart upload in flight. Dropped unfinished (a request cut off, a task cancelled),
/// it is aborted in the background; if this process dies first, its marker is left for the
/// garbage collector.
struct Multipart {
    store: Arc<AmazonS3>,
    key: Key,
    marker: Key,
    id: String,
    parts: Vec<PartId>,
    /// The MD5 of each part, in order: S3's ETag of the whole is the MD5 of these, `-N`.
    digests: Vec<u8>,
    inflight: FuturesOrdered<SentPart>,
    finished: bool,
    /// When the marker was last written: the collector takes a marker older than
    /// `--orphan-min-age-secs` for one a dead node left, so a long upload rewrites it.
    marked_at: std::time::Instant,
}

/// How often an upload in flight rewrites its marker (well under the collector's age).
const MARKER_REFRESH: std::time::Duration = std::time::Duration::from_secs(600);

impl Drop for Multipart {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (store, key, marker, id) = (
            self.store.clone(),
            self.key.clone(),
            self.marker.clone(),
            self.id.clone(),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if store.abort_multipart(&key, &id).await.is_ok() {
                    let _ = store.delete(&marker).await;
                }
            });
        }
    }
}

impl Upload {
    /// The scratch file holds `available` bytes, written and flushed: sends every whole part.
    pub async fn advance(&mut self, available: u64) -> std::io::Result<()> {
        while available - self.sent >= PART {
            self.send_part(PART).await?;
        }
        Ok(())
    }

    async fn send_part(&mut self, len: u64) -> std::io::Result<()> {
        if self.multipart.is_none() {
            let store = &self.storage.store;
            let id = store
                .create_multipart(&self.key)
                .await
                .map_err(|e| self.storage.error(e))?;
            let multipart = Multipart {
                store: store.clone(),
                key: self.key.clone(),
                marker: self.marker.clone(),
                id: id.clone(),
                parts: Vec::new(),
                digests: Vec::new(),
                inflight: FuturesOrdered::new(),
                finished: false,
                marked_at: std::time::Instant::now(),
            };
            // Without its marker no one could find the upload again: dropped, it is aborted.
            store
                .put(&self.marker, id.into())
                .await
                .map_err(|e| self.storage.error(e))?;
            self.multipart = Some(multipart);
        }
        let multipart = self.multipart.as_mut().expect("started above");
        if multipart.marked_at.elapsed() > MARKER_REFRESH {
            multipart
                .store
                .put(&self.marker, multipart.id.clone().into())
                .await
                .map_err(|e| self.storage.error(e))?;
            multipart.marked_at = std::time::Instant::now();
        }
        let (store, key, id, path) = (
            multipart.store.clone(),
            multipart.key.clone(),
            multipart.id.clone(),
            self.source.clone(),
        );
        let (offset, index) = (self.sent, multipart.parts.len() + multipart.inflight.len());
        multipart.inflight.push_back(
            async move {
                let (data, digest) = read_part(path, offset, len).await.map_err(|e| {
                    object_store::Error::Generic {
                        store: "scratch",
                        source: Box::new(e),
                    }
                })?;
                let part = store.put_part(&key, &id, index, data.into()).await?;
                Ok((part, digest))
            }
            .boxed(),
        );
        self.sent += len;
        while multipart.inflight.len() >= IN_FLIGHT {
            multipart
                .collect_one()
                .await
                .map_err(|e| self.storage.error(e))?;
        }
        Ok(())
    }

    /// Sends the rest, completes the upload, and checks that the store holds exactly the
    /// scratch file's bytes (size, and the ETag S3 derives from the parts' MD5s). Returns
    /// the blob's name; the object is not referenced by anything yet.
    pub async fn finish(mut self, size: u64, progress: &Progress<'_>) -> std::io::Result<String> {
        let storage = self.storage.clone();
        progress(self.sent as f64 / size.max(1) as f64);
        let expected = if self.multipart.is_none() && size <= PART {
            let data = tokio::fs::read(&self.source).await?;
            let digest = hex::encode(Md5::digest(&data));
            storage
                .store
                .put(&self.key, data.into())
                .await
                .map_err(|e| storage.error(e))?;
            digest
        } else {
            while size > self.sent {
                self.send_part(PART.min(size - self.sent)).await?;
                progress(self.sent as f64 / size.max(1) as f64);
            }
            let mut multipart = self.multipart.take().expect("parts were sent");
            while !multipart.inflight.is_empty() {
                multipart
                    .collect_one()
                    .await
                    .map_err(|e| storage.error(e))?;
            }
            let parts = std::mem::take(&mut multipart.parts);
            let count = parts.len();
            storage
                .store
                .complete_multipart(&multipart.key, &multipart.id, parts)
                .await
                .map_err(|e| storage.error(e))?;
            multipart.finished = true;
            let _ = storage.store.delete(&multipart.marker).await;
            format!("{}-{count}", hex::encode(Md5::digest(&multipart.digests)))
        };
        progress(1.0);
        let stored = storage
            .store
            .head(&self.key)
            .await
            .map_err(|e| storage.error(e))?;
        let etag = stored.e_tag.as_deref().map(unquote);
        if stored.size != size || !etag.is_some_and(|etag| etag.eq_ignore_ascii_case(&expected)) {
            storage.remove(vec![self.name.clone()]).await;
            return Err(std::io::Error::other(Unavailable(format!(
                "the file storage holds {} bytes with ETag {etag:?} where {size} bytes with ETag {expected:?} were sent",
                stored.size
            ))));
        }
        Ok(self.name)
    }
}

impl Multipart {
    async fn collect_one(&mut self) -> object_store::Result<()> {
        if let Some(done) = self.inflight.next().await {
            let (part, digest) = done?;
            self.parts.push(part);
            self.digests.extend_from_slice(&digest);
        }
        Ok(())
    }
}

/// `len` bytes of the file at `offset`, and their MD5.
async fn read_part(
    path: std::path::PathBuf,
    offset: u64,
    len: u64,
) -> std::io::Result<(Bytes, [u8; 16])> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut data = vec![0u8; len as usize];
        std::fs::File::open(path)?.read_exact_at(&mut data, offset)?;
        let digest: [u8; 16] = Md5::digest(&data).into();
        Ok((Bytes::from(data), digest))
    })
    .await
    .map_err(std::io::Error::other)?
}

fn unquote(etag: &str) -> &str {
    etag.trim_start_matches("W/").trim_matches('"')
}

fn shown(endpoint: &str) -> &str {
    if endpoint.is_empty() {
        "AWS"
    } else {
        endpoint
    }
}

/// The `<Code>` and `<Message>` of an S3 error answer, else the innermost message.
fn store_said(e: &object_store::Error) -> String {
    let text = root_cause(e);
    let field = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find('<')? + start;
        Some(text[start..end].to_string())
    };
    match (field("Code"), field("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => root_cause(e),
    }
}

/// The innermost message, which says what happened (object_store's outer ones say which
/// request it was).
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// The innermost message, then the whole, for logs.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let inner = innermost(e);
    let whole = e.to_string();
    if inner == whole {
        inner
    } else {
        format!("{inner} ({whole})")
    }
}
