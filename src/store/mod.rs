//! Persistence in SQLite: users and tokens, tree items, tasks. One connection behind a
//! mutex, used from blocking threads; WAL with full sync, so a committed row survives a crash
//! (progress and claims skip the fsync: see [`unsynced`]).

pub mod items;
#[cfg(test)]
mod state_props;
pub mod tasks;
pub mod users;

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rusqlite::Connection;

pub use items::{Item, ItemKind, NewItem};
pub use tasks::{NewTask, TaskRecord};
pub use users::{TokenInfo, User};

/// Numbered migrations; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("schema_2.sql"),
    include_str!("schema_3.sql"),
];

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let mut conn = Connection::open(path)
            .with_context(|| format!("opening the database {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Every statement the server runs stays prepared (there are about thirty).
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&mut conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection in a blocking thread.
    pub async fn call<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<R> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .context("database thread panicked")?
    }

    /// Runs `f` on the connection in the current thread (for the CLI).
    pub fn blocking<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

/// Runs `f` with commits that skip the fsync, for writes whose loss in a power failure is
/// harmless: progress, and a task's claim (a lost claim is simply made again). WAL keeps them
/// atomic and they survive a crash of the process; the next full commit syncs them as well.
/// Everything a client was promised (a new task, a cancel, a final state) stays on full sync.
pub fn unsynced<R>(
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let result = f(conn);
    conn.pragma_update(None, "synchronous", "FULL")?;
    result
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let done: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("running migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn parse_uuid(s: String) -> rusqlite::Result<uuid::Uuid> {
    uuid::Uuid::parse_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn opt_uuid(s: Option<String>) -> rusqlite::Result<Option<uuid::Uuid>> {
    s.map(parse_uuid).transpose()
}
