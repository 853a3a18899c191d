//! What the `upload` command remembers between runs: for each file being uploaded (its
//! absolute path, size and modification time, and the server), the URL of its unfinished tus
//! upload. A run that finds an entry resumes that upload; the entry goes when the upload
//! completes. Reads and writes hold an exclusive lock on a file beside it, and a write
//! replaces the file whole (written aside, then renamed), so runs side by side and a run
//! killed midway never leave it half written.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Entries not touched for this long are dropped on the next write: no server keeps an
/// unfinished upload that long by default (a day).
const FORGET_AFTER_DAYS: i64 = 30;

/// Which upload of which file to which server an entry is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// The server's base URL, as the command normalises it.
    pub server: String,
    /// The file's absolute path (symbolic links resolved).
    pub path: PathBuf,
    pub size: u64,
    /// Modification time, in nanoseconds since 1970: a file changed since is another file.
    pub mtime_ns: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub key: Key,
    /// The upload's absolute URL (the creation's `Location`).
    pub upload_url: String,
    /// The `Upload-Metadata` it was created with: a run with another name, folder or
    /// conversion starts a new upload instead.
    pub metadata: String,
    /// When the entry was written (RFC 3339).
    pub saved_at: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Contents {
    uploads: Vec<Entry>,
}

/// The state file at a path (created with its folder on the first write).
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: PathBuf) -> StateFile {
        StateFile { path }
    }

    /// `$XDG_STATE_HOME/rastercast/uploads.json`, or `~/.local/state/rastercast/uploads.json`.
    pub fn default_path() -> Option<PathBuf> {
        let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        let base = non_empty("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| non_empty("HOME").map(|home| Path::new(&home).join(".local/state")))?;
        Some(base.join("rastercast").join("uploads.json"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entry for `key`, if there is one.
    pub fn find(&self, key: &Key) -> anyhow::Result<Option<Entry>> {
        let _lock = self.lock()?;
        Ok(self.read().uploads.into_iter().find(|e| e.key == *key))
    }

    /// Remembers `entry`, in place of any other for its key.
    pub fn remember(&self, entry: Entry) -> anyhow::Result<()> {
        let _lock = self.lock()?;
        let mut contents = self.read();
        contents.uploads.retain(|e| e.key != entry.key);
        contents.uploads.push(entry);
        self.write(contents)
    }

    /// Forgets the entry for `key` (nothing if there is none).
    pub fn forget(&self, key: &Key) -> anyhow::Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        let _lock = self.lock()?;
        let mut contents = self.read();
        let before = contents.uploads.len();
        contents.uploads.retain(|e| e.key != *key);
        if contents.uploads.len() == before {
            return Ok(());
        }
        self.write(contents)
    }

    /// An exclusive lock on `<path>.lock`, held until the file is dropped.
    fn lock(&self) -> anyhow::Result<File> {
        let folder = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(folder)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", folder.display()))?;
        let lock_path = self.sibling("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", lock_path.display()))?;
        // SAFETY: flock(2) on a descriptor we own, open for the call's duration.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = std::io::Error::last_os_error();
            anyhow::bail!("cannot lock {}: {e}", lock_path.display());
        }
        Ok(lock)
    }

    /// The contents; none when the file is missing, or unreadable (then a warning: the next
    /// write replaces it).
    fn read(&self) -> Contents {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                eprintln!(
                    "rastercast: warning: ignoring {}, which is not a state file: {e}",
                    self.path.display()
                );
                Contents::default()
            }),
            Err(_) => Contents::default(),
        }
    }

    fn write(&self, mut contents: Contents) -> anyhow::Result<()> {
        let horizon = chrono::Utc::now() - chrono::Duration::days(FORGET_AFTER_DAYS);
        contents.uploads.retain(|e| {
            chrono::DateTime::parse_from_rfc3339(&e.saved_at).is_ok_and(|t| t > horizon)
        });
        let aside = self.sibling(&format!("{}.tmp", std::process::id()));
        let written = (|| {
            let mut file = File::create(&aside)?;
            file.write_all(&serde_json::to_vec_pretty(&contents)?)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&aside, &self.path)?;
            anyhow::Ok(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&aside);
            anyhow::bail!("cannot write {}: {e:#}", self.path.display());
        }
        Ok(())
    }

    /// `<path>.<suffix>`, beside the state file.
    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".");
        name.push(suffix);
        self.path.with_file_name(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(size: u64) -> Key {
        Key {
            server: "http://127.0.0.1:1/".into(),
            path: "/data/a.tif".into(),
            size,
            mtime_ns: 7,
        }
    }

    fn entry(size: u64, url: &str) -> Entry {
        Entry {
            key: key(size),
            upload_url: url.into(),
            metadata: "filename YS50aWY=".into(),
            saved_at: crate::time::now(),
        }
    }

    #[test]
    fn remembers_one_upload_per_key_and_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path().join("deep/uploads.json"));
        assert!(state.find(&key(1)).unwrap().is_none());
        state.remember(entry(1, "u1")).unwrap();
        state.remember(entry(2, "u2")).unwrap();
        state.remember(entry(1, "u3")).unwrap();
        assert_eq!(state.find(&key(1)).unwrap().unwrap().upload_url, "u3");
        assert_eq!(state.find(&key(2)).unwrap().unwrap().upload_url, "u2");
        state.forget(&key(1)).unwrap();
        assert!(state.find(&key(1)).unwrap().is_none());
        assert!(state.find(&key(2)).unwrap().is_some());
    }

    #[test]
    fn a_damaged_file_counts_as_empty_and_old_entries_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uploads.json");
        std::fs::write(&path, "{not json").unwrap();
        let state = StateFile::new(path);
        assert!(state.find(&key(1)).unwrap().is_none());
        let mut old = entry(2, "old");
        old.saved_at = "2001-01-01T00:00:00.000Z".into();
        state.remember(old).unwrap();
        state.remember(entry(1, "new")).unwrap();
        assert!(state.find(&key(2)).unwrap().is_none());
        assert_eq!(state.find(&key(1)).unwrap().unwrap().upload_url, "new");
    }
}
