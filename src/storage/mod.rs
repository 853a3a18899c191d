//! Where the bytes of tree items live. The rest of the server asks this module for a scratch
//! file, makes a finished one a stored blob, stages a blob as a local file for a worker, reads
//! ranges of it, and removes it; it never learns where blobs are kept. Today that is the
//! local disk ([`local`]); object storage is the next implementation behind the same calls.

pub mod local;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::Stream;

pub use local::{LocalDisk, TempBlob};

/// The blob store the server was configured with.
#[derive(Clone, Debug)]
pub enum Storage {
    Local(LocalDisk),
}

/// A blob as a local file, for as long as this lives (a worker reads it by path).
pub struct Staged {
    path: PathBuf,
}

impl Staged {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Storage {
    /// A new scratch file on this node's disk.
    pub fn temp(&self, suffix: &str) -> TempBlob {
        match self {
            Storage::Local(disk) => disk.temp(suffix),
        }
    }

    /// `ENOSPC` when `extra` more bytes of scratch would dip into the disk reserve.
    pub fn check_room(&self, extra: u64) -> std::io::Result<()> {
        match self {
            Storage::Local(disk) => disk.check_room(extra),
        }
    }

    /// Makes a finished scratch file a stored blob, durably; returns its name.
    pub async fn persist(&self, temp: TempBlob) -> std::io::Result<String> {
        match self {
            Storage::Local(disk) => disk.persist(temp).await,
        }
    }

    /// `blob` as a local file for a worker; `None` when it is gone.
    pub async fn stage(&self, blob: &str) -> std::io::Result<Option<Staged>> {
        match self {
            Storage::Local(disk) => Ok(disk
                .path(blob)
                .filter(|p| p.exists())
                .map(|path| Staged { path })),
        }
    }

    /// The size of `blob`.
    pub async fn len(&self, blob: &str) -> std::io::Result<u64> {
        match self {
            Storage::Local(disk) => Ok(tokio::fs::metadata(local_path(disk, blob)?).await?.len()),
        }
    }

    /// `count` bytes of `blob` from `start`, as a stream that never holds the whole of it.
    pub async fn read(
        &self,
        blob: &str,
        start: u64,
        count: u64,
    ) -> std::io::Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        match self {
            Storage::Local(disk) => {
                let mut file = tokio::fs::File::open(local_path(disk, blob)?).await?;
                file.seek(std::io::SeekFrom::Start(start)).await?;
                Ok(tokio_util::io::ReaderStream::with_capacity(
                    file.take(count),
                    64 * 1024,
                ))
            }
        }
    }

    /// Removes blobs whose items were deleted (or never committed).
    pub async fn remove(&self, blobs: Vec<String>) {
        match self {
            Storage::Local(disk) => disk.remove(blobs).await,
        }
    }

    /// Start-up clean-up: scratch files, and blobs no item refers to, older than `min_age`.
    pub fn sweep(
        &self,
        referenced: &HashSet<String>,
        min_age: std::time::Duration,
    ) -> std::io::Result<usize> {
        match self {
            Storage::Local(disk) => disk.sweep(referenced, min_age),
        }
    }
}

fn local_path(disk: &LocalDisk, blob: &str) -> std::io::Result<PathBuf> {
    disk.path(blob)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "not a blob name"))
}
