//! Ending live streams when the credential that opened them stops being valid: a revoked
//! token, a session signed out or expired. Requests check their credential every time; streams
//! live for hours, so each one registers its credential here and is told when it ends.
//!
//! Every revoke and sign-out bumps a counter in the database (`users::credential_changes`),
//! whichever node or CLI made it. Each node reads that counter a few times a second and, when it
//! moved (or a while has passed, for expiries), checks the credentials behind its open streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::users::{self, Credential};
use crate::store::Store;

/// How often the counter is read: a revoke reaches every open stream within about this long.
const POLL: Duration = Duration::from_millis(250);

/// Sessions also end by expiring, which bumps nothing: everything is checked this often.
const FULL_CHECK: Duration = Duration::from_secs(30);

#[derive(Clone, Default)]
pub struct Revocations {
    watched: Arc<Mutex<HashMap<Credential, Watch>>>,
    wake: Arc<Notify>,
}

struct Watch {
    ended: CancellationToken,
    streams: usize,
}

/// Held by an open stream; `ended` is cancelled when its credential is no longer valid.
pub struct Watched {
    revocations: Revocations,
    credential: Credential,
    pub ended: CancellationToken,
}

impl Revocations {
    pub fn watch(&self, credential: Credential) -> Watched {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        let watch = watched.entry(credential.clone()).or_insert_with(|| Watch {
            ended: CancellationToken::new(),
            streams: 0,
        });
        watch.streams += 1;
        Watched {
            revocations: self.clone(),
            credential,
            ended: watch.ended.clone(),
        }
    }

    /// Checks at once instead of at the next poll (after a sign-out on this node).
    pub fn check_now(&self) {
        self.wake.notify_one();
    }

    /// Watches the database until `shutdown`.
    pub async fn run(self, store: Store, shutdown: CancellationToken) {
        let mut seen = None;
        let mut last_full = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = self.wake.notified() => {}
                () = shutdown.cancelled() => return,
            }
            let credentials: Vec<Credential> = {
                let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
                watched.keys().cloned().collect()
            };
            // A node with no open streams reads nothing. The counter it last saw may be stale
            // by the next stream; then that stream's first check is a full one.
            if credentials.is_empty() {
                continue;
            }
            let full = last_full.elapsed() >= FULL_CHECK;
            let checked = store
                .call(move |c| {
                    let changes = users::credential_changes(c)?;
                    if !full && seen == Some(changes) {
                        return Ok((changes, Vec::new()));
                    }
                    let mut ended = Vec::new();
                    for credential in credentials {
                        if !users::is_valid(c, &credential)? {
                            ended.push(credential);
                        }
                    }
                    Ok((changes, ended))
                })
                .await;
            match checked {
                Ok((changes, ended)) => {
                    if full || seen != Some(changes) {
                        last_full = Instant::now();
                    }
                    seen = Some(changes);
                    self.end(ended);
                }
                // Streams stay open while the database is out of reach: nothing says their
                // credentials ended, and closing every stream would be its own outage.
                Err(e) => tracing::warn!(error = %e, "could not check credentials"),
            }
        }
    }

    fn end(&self, ended: Vec<Credential>) {
        if ended.is_empty() {
            return;
        }
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        for credential in ended {
            if let Some(watch) = watched.remove(&credential) {
                tracing::info!(
                    streams = watch.streams,
                    "a credential was revoked; closing its streams"
                );
                watch.ended.cancel();
            }
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let mut watched = self
            .revocations
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(watch) = watched.get_mut(&self.credential) {
            // The entry may be a newer one, for the same credential signed in again.
            if watch.ended == self.ended {
                watch.streams -= 1;
                if watch.streams == 0 {
                    watched.remove(&self.credential);
                }
            }
        }
    }
}
