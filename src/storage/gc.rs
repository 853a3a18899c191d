//! The garbage collector of stored files, for as long as the server runs: blobs no item
//! refers to and uploads no node will finish, once older than `min_age`. One node alone on
//! local disk needs it only at start (see `app`); shared storage needs it all along, since
//! nodes that crash rarely restart at once.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Storage;
use crate::store::{items, Store};

pub async fn collect_until(
    storage: Storage,
    store: Store,
    min_age: Duration,
    shutdown: CancellationToken,
) {
    let every = min_age.clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        // Read before listing: a blob committed after this read is younger than `min_age`.
        let referenced = match store.call(items::referenced_blobs).await {
            Ok(referenced) => referenced,
            Err(e) => {
                tracing::warn!(error = ?e, "garbage collection: the database does not answer");
                continue;
            }
        };
        match storage.collect(&referenced, min_age).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed stored files no item refers to"),
            Err(e) => tracing::warn!(error = %e, "garbage collection of stored files failed"),
        }
    }
}
