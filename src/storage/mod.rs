//! Where the bytes of tree items live. The rest of the server asks this module for a scratch
//! file, writes an upload through a [`BlobWriter`], makes a finished file a stored blob,
//! stages a blob as a local file for a worker, reads ranges of it, and removes it; it never
//! learns where blobs are kept: this node's disk ([`local`]) or an S3-compatible object
//! store ([`s3`]). Scratch files are always local: GDAL reads and writes only local files.

pub mod gc;
pub mod local;
pub mod s3;
pub mod zip_ranges;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

pub use local::{LocalDisk, TempBlob};
pub use s3::ObjectStorage;

/// The blob store the server was configured with.
#[derive(Clone, Debug)]
pub enum Storage {
    Local(LocalDisk),
    S3(ObjectStorage),
}

/// Reports how far a transfer is, from 0 to 1.
pub type Progress<'a> = dyn Fn(f64) + Send + Sync + 'a;

/// The blob store failed or did not answer: nothing is wrong with the request, and the same
/// request may succeed later (a 503 for clients, a retry for conversions).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// A blob as a local file, for as long as this lives (a worker reads it by path).
pub struct Staged {
    path: PathBuf,
    /// The downloaded copy, removed with this.
    _scratch: Option<TempBlob>,
    /// Bytes downloaded to make it (0 on local disk).
    pub fetched: u64,
}

impl Staged {
    /// Whether this is a downloaded copy (removed with it), not the stored file itself.
    pub fn is_scratch(&self) -> bool {
        self._scratch.is_some()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An upload being written: to a scratch file that GDAL can inspect, and on object storage
/// also onward to the store, part by part, while the rest arrives. Dropped without
/// [`Storage::persist`], it leaves nothing behind.
pub struct BlobWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
    size: u64,
    upload: Option<s3::Upload>,
    temp: TempBlob,
}

impl BlobWriter {
    /// The scratch file, complete once [`BlobWriter::close`] returned.
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.file.write_all(chunk).await?;
        let before = self.size;
        self.size += chunk.len() as u64;
        if let Some(upload) = &mut self.upload {
            if before / s3::PART != self.size / s3::PART {
                // The part is read back from the file by another handle.
                self.file.flush().await?;
                upload.advance(self.size).await?;
            }
        }
        Ok(())
    }

    /// Appends the whole of the local file `source`. On local disk the kernel copies it
    /// (`copy_file_range`), so the bytes never pass through this process; on object storage they
    /// go through [`BlobWriter::write`], which sends them on.
    pub async fn append_file(&mut self, source: &Path) -> std::io::Result<()> {
        self.file.flush().await?;
        if self.upload.is_some() {
            let mut file = tokio::fs::File::open(source).await?;
            let mut buffer = vec![0u8; 256 * 1024];
            loop {
                use tokio::io::AsyncReadExt;
                let n = file.read(&mut buffer).await?;
                if n == 0 {
                    return Ok(());
                }
                self.write(&buffer[..n]).await?;
            }
        }
        // A second handle on the same open file shares its offset: the copy lands at the end.
        let mut target = self.file.get_ref().try_clone().await?.into_std().await;
        let source = source.to_path_buf();
        let copied = tokio::task::spawn_blocking(move || {
            std::io::copy(&mut std::fs::File::open(source)?, &mut target)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.size += copied;
        Ok(())
    }

    /// Flushes the scratch file; returns its size.
    pub async fn close(&mut self) -> std::io::Result<u64> {
        self.file.flush().await?;
        Ok(self.size)
    }
}

impl Storage {
    /// `--storage`: `file://` keeps blobs in the data dir; `s3://BUCKET[/PREFIX]` in a bucket.
    pub async fn open(url: &str, data_dir: &Path, reserve: u64) -> anyhow::Result<Storage> {
        let disk = LocalDisk::open(data_dir)?.with_reserve(reserve);
        match url {
            "" | "file://" | "file:" => Ok(Storage::Local(disk)),
            url if url.starts_with("s3://") => {
                Ok(Storage::S3(ObjectStorage::connect(url, disk).await?))
            }
            other => anyhow::bail!(
                "--storage is file:// (the data dir) or s3://BUCKET[/PREFIX], not {other:?}"
            ),
        }
    }

    fn scratch(&self) -> &LocalDisk {
        match self {
            Storage::Local(disk) => disk,
            Storage::S3(store) => &store.scratch,
        }
    }

    /// A new scratch file on this node's disk.
    pub fn temp(&self, suffix: &str) -> TempBlob {
        self.scratch().temp(suffix)
    }

    /// `ENOSPC` when `extra` more bytes of scratch would dip into the disk reserve.
    pub fn check_room(&self, extra: u64) -> std::io::Result<()> {
        self.scratch().check_room(extra)
    }

    /// Starts writing a new blob (see [`BlobWriter`]).
    pub async fn writer(&self, suffix: &str) -> std::io::Result<BlobWriter> {
        let temp = self.temp(suffix);
        let file = tokio::fs::File::create(temp.path()).await?;
        Ok(BlobWriter {
            file: tokio::io::BufWriter::with_capacity(256 * 1024, file),
            size: 0,
            upload: match self {
                Storage::Local(_) => None,
                Storage::S3(store) => Some(store.upload(&temp)),
            },
            temp,
        })
    }

    /// Makes a written upload a stored blob, durably and verified; returns its name. Nothing
    /// refers to it yet: the caller's insert does, or [`Storage::remove`] must.
    pub async fn persist(
        &self,
        mut writer: BlobWriter,
        progress: &Progress<'_>,
    ) -> std::io::Result<String> {
        let size = writer.close().await?;
        match (self, writer.upload.take()) {
            (Storage::S3(_), Some(upload)) => upload.finish(size, progress).await,
            (Storage::Local(disk), _) => disk.persist(writer.temp).await,
            (Storage::S3(_), None) => unreachable!("writers on object storage upload"),
        }
    }

    /// Makes a finished scratch file (a conversion's output) a stored blob, as
    /// [`Storage::persist`] does.
    pub async fn persist_file(
        &self,
        temp: TempBlob,
        progress: &Progress<'_>,
    ) -> std::io::Result<String> {
        match self {
            Storage::Local(disk) => disk.persist(temp).await,
            Storage::S3(store) => {
                let size = tokio::fs::metadata(temp.path()).await?.len();
                store.upload(&temp).finish(size, progress).await
            }
        }
    }

    /// `blob` as a local file for a worker; `None` when it is gone. On object storage it is
    /// downloaded to scratch (counted against the disk reserve), reporting its progress; of a
    /// zip archive, only what a conversion of `member` (the options' subdataset) reads.
    pub async fn stage(
        &self,
        blob: &str,
        member: Option<&str>,
        progress: &Progress<'_>,
    ) -> std::io::Result<Option<Staged>> {
        match self {
            Storage::Local(disk) => Ok(disk.path(blob).filter(|p| p.exists()).map(|path| Staged {
                path,
                _scratch: None,
                fetched: 0,
            })),
            Storage::S3(store) => {
                Ok(store
                    .stage(blob, member, progress)
                    .await?
                    .map(|(temp, fetched)| Staged {
                        path: temp.path().to_path_buf(),
                        _scratch: Some(temp),
                        fetched,
                    }))
            }
        }
    }

    /// Where `blob` is on this node's disk, when blobs are kept there (local disk only).
    pub fn local_path(&self, blob: &str) -> Option<PathBuf> {
        match self {
            Storage::Local(disk) => disk.path(blob),
            Storage::S3(_) => None,
        }
    }

    /// `count` bytes of `blob` from `start`, as a stream that never holds the whole of it.
    pub async fn read(
        &self,
        blob: &str,
        start: u64,
        count: u64,
    ) -> std::io::Result<BoxStream<'static, std::io::Result<Bytes>>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        match self {
            Storage::Local(disk) => {
                let mut file = tokio::fs::File::open(local_path(disk, blob)?).await?;
                file.seek(std::io::SeekFrom::Start(start)).await?;
                Ok(
                    tokio_util::io::ReaderStream::with_capacity(file.take(count), 64 * 1024)
                        .boxed(),
                )
            }
            Storage::S3(store) => store.read(blob, start, count).await,
        }
    }

    /// Removes blobs whose items were deleted (or never committed).
    pub async fn remove(&self, blobs: Vec<String>) {
        match self {
            Storage::Local(disk) => disk.remove(blobs).await,
            Storage::S3(store) => store.remove(blobs).await,
        }
    }

    /// Whether the blob store answers, for `/healthz`.
    pub async fn check(&self) -> std::io::Result<()> {
        match self {
            Storage::Local(_) => Ok(()),
            Storage::S3(store) => store.check().await,
        }
    }

    /// Start-up clean-up of this node's scratch files older than `min_age`: partial uploads,
    /// staged sources and outputs of a process that stopped uncleanly.
    pub fn sweep_scratch(&self, min_age: Duration) -> std::io::Result<usize> {
        self.scratch().sweep_scratch(min_age)
    }

    /// Removes blobs no item refers to, and uploads never finished, older than `min_age`
    /// (another node may be between writing one and committing its row).
    pub async fn collect(
        &self,
        referenced: &HashSet<String>,
        min_age: Duration,
    ) -> std::io::Result<usize> {
        match self {
            Storage::Local(disk) => disk.collect(referenced, min_age),
            Storage::S3(store) => store.collect(referenced, min_age).await,
        }
    }
}

fn local_path(disk: &LocalDisk, blob: &str) -> std::io::Result<PathBuf> {
    disk.path(blob)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "not a blob name"))
}
