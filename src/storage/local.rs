//! Local-disk storage: files are written to `tmp/`, fsynced, then renamed into `blobs/` under a
//! server-chosen name, so a half-written file is never visible.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct LocalDisk {
    blobs: PathBuf,
    tmp: PathBuf,
    /// Bytes kept free for the database (see `disk`).
    reserve: u64,
}

/// A file being written in `tmp/`. Dropped without [`LocalDisk::persist`], it is deleted.
#[derive(Debug)]
pub struct TempBlob {
    path: PathBuf,
}

impl TempBlob {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempBlob {
    /// Removes the file (a persisted one has already been renamed away) and GDAL's side
    /// files next to it, which a killed worker leaves behind.
    fn drop(&mut self) {
        crate::convert::remove_with_side_files(&self.path);
    }
}

impl LocalDisk {
    pub fn open(data_dir: &Path) -> std::io::Result<LocalDisk> {
        let blobs = data_dir.join("blobs");
        let tmp = data_dir.join("tmp");
        std::fs::create_dir_all(&blobs)?;
        std::fs::create_dir_all(&tmp)?;
        Ok(LocalDisk {
            blobs,
            tmp,
            reserve: 0,
        })
    }

    /// Keeps `bytes` of the disk free: [`LocalDisk::check_room`] refuses writes that would use them.
    pub fn with_reserve(mut self, bytes: u64) -> LocalDisk {
        self.reserve = bytes;
        self
    }

    /// `ENOSPC` (a 507 for clients) when `extra` more bytes would dip into the reserve.
    pub fn check_room(&self, extra: u64) -> std::io::Result<()> {
        if crate::disk::would_dip_into_reserve(&self.tmp, extra, self.reserve) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    /// Whether `blob` is a name this server gives (32 hex digits). Anything else is refused,
    /// so that a corrupted row can never point outside `blobs/` (or its prefix).
    pub fn is_blob_name(blob: &str) -> bool {
        blob.len() == 32 && blob.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// The path of a stored blob.
    pub fn path(&self, blob: &str) -> Option<PathBuf> {
        Self::is_blob_name(blob).then(|| self.blobs.join(blob))
    }

    pub fn temp(&self, suffix: &str) -> TempBlob {
        TempBlob {
            path: self
                .tmp
                .join(format!("{}{suffix}", Uuid::new_v4().simple())),
        }
    }

    /// Makes a finished temp file a blob: fsync the file, rename, fsync the directory.
    pub async fn persist(&self, temp: TempBlob) -> std::io::Result<String> {
        let name = Uuid::new_v4().simple().to_string();
        let target = self.blobs.join(&name);
        let source = temp.path.clone();
        let dir = self.blobs.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let _span = span.enter();
            std::fs::File::open(&source)?.sync_all()?;
            std::fs::rename(&source, &target)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(name)
    }

    pub async fn remove(&self, blobs: Vec<String>) {
        for blob in blobs {
            if let Some(path) = self.path(&blob) {
                if let Err(e) = tokio::fs::remove_file(&path).await {
                    tracing::warn!(%blob, error = %e, "could not remove a deleted item's bytes");
                }
            }
        }
    }

    /// Scratch files (partial uploads, staged sources, outputs) last modified at least
    /// `min_age` ago. Returns how many were removed.
    pub fn sweep_scratch(&self, min_age: std::time::Duration) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.tmp)? {
            let entry = entry?;
            if old_enough(&entry, min_age) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Blobs whose row was never committed (or was deleted while their removal failed), when
    /// last modified at least `min_age` ago: nodes that share the directory write there too,
    /// and a file another node is between writing and committing must survive.
    pub fn collect(
        &self,
        referenced: &HashSet<String>,
        min_age: std::time::Duration,
    ) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.blobs)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !referenced.contains(&name) && old_enough(&entry, min_age) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn old_enough(entry: &std::fs::DirEntry, min_age: std::time::Duration) -> bool {
    min_age.is_zero()
        || entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age)
}
