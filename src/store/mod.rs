//! Persistence: users and tokens, tree items, tasks. SQLite by default (a file in the data
//! dir), or PostgreSQL with `--database-url postgres://…`. The row modules are written once
//! against [`db::Db`]; this module opens either engine and migrates it.
//!
//! Calls run on blocking threads. SQLite has one connection behind a mutex: every change and
//! the event that announces it happen under that lock, so event order is commit order. It
//! runs WAL with full sync, so a committed row survives a crash (progress and claims skip the
//! fsync: see [`db::Db::unsynced`]). PostgreSQL has a few connections, each call one
//! transaction on one of them: calls of one node overlap as those of several nodes always
//! could, and the event log's lock keeps event order commit order (see [`events`]).

pub mod db;
pub mod events;
pub mod idempotency;
pub mod items;
pub mod link_keys;
pub mod queue;
pub mod resumable;
pub mod tasks;
#[cfg(test)]
pub mod testing;
pub mod tombstones;
pub mod users;
pub mod webhooks;

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rusqlite::Connection;

use crate::domain::Announce;
pub use crate::domain::{NewTask, TaskRecord};
pub use db::Db;
pub use items::{Item, ItemKind, NewItem};
pub use users::{TokenInfo, User};

/// Numbered migrations; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("schema_2.sql"),
    include_str!("schema_3.sql"),
    include_str!("schema_4.sql"),
    include_str!("schema_5.sql"),
    include_str!("schema_6.sql"),
    include_str!("schema_7.sql"),
    include_str!("schema_8.sql"),
    include_str!("schema_9.sql"),
    include_str!("schema_10.sql"),
];

/// The same schema in PostgreSQL's words (its first migration is SQLite's first three); the
/// table `schema_version` records how many have run.
const POSTGRES_MIGRATIONS: &[&str] = &[
    include_str!("postgres_1.sql"),
    include_str!("postgres_2.sql"),
    include_str!("postgres_3.sql"),
    include_str!("postgres_4.sql"),
    include_str!("postgres_5.sql"),
    include_str!("postgres_6.sql"),
    include_str!("postgres_7.sql"),
    include_str!("postgres_8.sql"),
    include_str!("postgres_9.sql"),
];

enum Engine {
    Sqlite(Mutex<Connection>),
    /// Connected as first needed, except the first (which migrated the schema).
    Postgres(Vec<Mutex<PgClient>>),
}

/// PostgreSQL connections per node. A call holds its connection for all its round trips, so
/// with one, every claim, progress write and status read of the node waited in one line
/// (measured: the cores sat a fifth idle while tiny conversions queued).
const POSTGRES_CONNECTIONS: usize = 4;

/// The blocking PostgreSQL client drives a runtime of its own, which it shuts down when
/// dropped: that must not happen on one of the server's runtime threads (the last `Store`
/// clone may go there), so a client is dropped on a thread of its own.
/// Its prepared statements go with it.
struct PgClient(Option<postgres::Client>, db::Statements);

impl Drop for PgClient {
    fn drop(&mut self) {
        let statements = std::mem::take(&mut self.1);
        if let Some(client) = self.0.take() {
            std::thread::spawn(move || drop((statements, client)));
        }
    }
}

/// Connects with the limits a server needs: a database that does not answer fails a call in
/// seconds instead of holding the store's lock for minutes.
fn connect_postgres(config: &postgres::Config) -> anyhow::Result<postgres::Client> {
    let mut config = config.clone();
    config
        .connect_timeout(std::time::Duration::from_secs(5))
        .keepalives_idle(std::time::Duration::from_secs(30));
    let mut client = config.connect(postgres::NoTls)?;
    client.batch_execute("SET statement_timeout = '30s'; SET lock_timeout = '10s'")?;
    Ok(client)
}

#[derive(Clone)]
pub struct Store {
    engine: Arc<Engine>,
    /// Where the next PostgreSQL call starts looking for a free connection.
    next: Arc<std::sync::atomic::AtomicUsize>,
    /// Where changes are announced (see [`events`]): the bus, in the server.
    bus: Arc<dyn Announce>,
    /// PostgreSQL's connection settings, for the event relay's own connection.
    postgres: Option<postgres::Config>,
    /// What PostgreSQL's event log keeps.
    log: events::LogLimits,
}

impl Store {
    pub fn open(path: &Path, bus: Arc<dyn Announce>) -> anyhow::Result<Store> {
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
            engine: Arc::new(Engine::Sqlite(Mutex::new(conn))),
            next: Default::default(),
            bus,
            postgres: None,
            log: events::LogLimits::default(),
        })
    }

    /// Connects to PostgreSQL at `url` and brings its schema up to date. Several nodes may
    /// start at once: the migrations run under an advisory lock.
    pub fn connect(url: &str, bus: Arc<dyn Announce>) -> anyhow::Result<Store> {
        let config: postgres::Config = url
            .parse()
            .with_context(|| format!("reading the database URL {}", redact(url)))?;
        Store::connect_with(&config, bus).with_context(|| format!("connecting to {}", redact(url)))
    }

    fn connect_with(config: &postgres::Config, bus: Arc<dyn Announce>) -> anyhow::Result<Store> {
        let mut client = connect_postgres(config)?;
        migrate_postgres(&mut client)?;
        let pool = std::iter::once(Some(client))
            .chain(std::iter::repeat_with(|| None))
            .take(POSTGRES_CONNECTIONS)
            .map(|client| Mutex::new(PgClient(client, db::Statements::default())))
            .collect();
        Ok(Store {
            engine: Arc::new(Engine::Postgres(pool)),
            next: Default::default(),
            bus,
            postgres: Some(config.clone()),
            log: events::LogLimits::default(),
        })
    }

    /// Keeps PostgreSQL's event log to `limits` instead of the defaults.
    pub fn with_event_log(mut self, limits: events::LogLimits) -> Store {
        self.log = limits;
        self
    }

    /// On PostgreSQL, starts delivering every node's events to this node's bus (see
    /// [`events::relay`]) and returns once the relay listens, so that no feed can start
    /// between the log's end and the relay's start; on SQLite there is nothing to relay.
    pub fn relay_events(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        let Some(config) = self.postgres.clone() else {
            return Ok(());
        };
        let mut client = connect_postgres(&config)?;
        let start = events::listen(&mut client)?;
        self.bus.start_at(start);
        let (bus, limits) = (self.bus.clone(), self.log);
        std::thread::Builder::new()
            .name("event-relay".into())
            .spawn(move || events::relay(config, client, start, bus, limits, shutdown))?;
        Ok(())
    }

    /// Runs `f` on the connection in a blocking thread, inside the caller's tracing span.
    pub async fn call<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> anyhow::Result<R> + Send + 'static,
    {
        self.off_runtime(move |store| store.blocking(f)).await
    }

    /// Runs `f` with this store on a blocking thread, inside the caller's tracing span.
    async fn off_runtime<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> anyhow::Result<R> + Send + 'static,
    ) -> anyhow::Result<R> {
        let store = self.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&store)))
            .await
            .context("database thread panicked")?
    }

    /// Runs `f`, a read of one statement, on a connection in a blocking thread. On PostgreSQL
    /// it runs outside a transaction, which saves two of its three round trips: for reads
    /// made on every request (a token, an item). `f` can neither change nor announce anything
    /// (it fails if it tries), and several statements in it would each see their own moment.
    /// A read that found its connection closed is made once more on a new one.
    pub async fn read<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: Fn(&mut Db) -> anyhow::Result<R> + Send + 'static,
    {
        self.off_runtime(move |store| store.blocking_read(f)).await
    }

    fn blocking_read<R>(&self, f: impl Fn(&mut Db) -> anyhow::Result<R>) -> anyhow::Result<R> {
        let Engine::Postgres(pool) = &*self.engine else {
            return self.blocking(f);
        };
        let config = self.postgres.as_ref().expect("PostgreSQL has its settings");
        let mut guard = self.free_connection(pool);
        let PgClient(slot, statements) = &mut *guard;
        for attempt in 0..2 {
            let client = open(slot, statements, config)?;
            let result = f(&mut Db {
                conn: db::Conn::Postgres(db::Pg::Autocommit(client), statements),
                bus: &*self.bus,
            });
            match result {
                Err(e) if attempt == 0 && slot.as_ref().is_some_and(|c| c.is_closed()) => {
                    tracing::warn!(error = %e, "the database connection was lost; reconnecting");
                }
                result => return result,
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Runs `f` on a connection in the current thread (for the CLI and tests).
    pub fn blocking<R>(&self, f: impl FnOnce(&mut Db) -> anyhow::Result<R>) -> anyhow::Result<R> {
        let bus = &*self.bus;
        match &*self.engine {
            Engine::Sqlite(conn) => {
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                let result = f(&mut Db {
                    conn: db::Conn::Sqlite(&mut conn),
                    bus,
                });
                result
            }
            Engine::Postgres(pool) => {
                let config = self.postgres.as_ref().expect("PostgreSQL has its settings");
                let mut guard = self.free_connection(pool);
                let PgClient(slot, statements) = &mut *guard;
                // A connection that the server restart or a network cut closed is found out
                // only when used: a BEGIN that fails on it is tried once more on a new one
                // (nothing has run yet).
                for attempt in 0..2 {
                    let client = open(slot, statements, config)?;
                    let failed = match client.transaction() {
                        Ok(tx) => return Db::in_transaction(tx, statements, bus, f),
                        Err(e) => e,
                    };
                    if attempt > 0 || !slot.as_ref().is_some_and(|c| c.is_closed()) {
                        return Err(failed.into());
                    }
                    tracing::warn!(error = %failed, "the database connection was lost; reconnecting");
                }
                unreachable!("the second attempt returns")
            }
        }
    }

    /// The first connection of `pool` no call holds, looking from where the last call
    /// started; when all are busy, waits for that one.
    fn free_connection<'p>(
        &self,
        pool: &'p [Mutex<PgClient>],
    ) -> std::sync::MutexGuard<'p, PgClient> {
        use std::sync::TryLockError;
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..pool.len() {
            match pool[(start + i) % pool.len()].try_lock() {
                Ok(guard) => return guard,
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        pool[start % pool.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// The connection in `slot`, connected again (with no statements prepared) if it was
/// never opened or has been closed.
fn open<'s>(
    slot: &'s mut Option<postgres::Client>,
    statements: &mut db::Statements,
    config: &postgres::Config,
) -> anyhow::Result<&'s mut postgres::Client> {
    if slot.as_ref().is_some_and(|c| !c.is_closed()) {
        return Ok(slot.as_mut().expect("checked above"));
    }
    *statements = db::Statements::default();
    Ok(slot.insert(connect_postgres(config)?))
}

/// A database URL as it may appear in a log: without its password.
fn redact(url: &str) -> String {
    match url.split_once("://").zip(url.rfind('@')) {
        Some(((scheme, rest), at)) => {
            let user = rest[..at - scheme.len() - 3]
                .split(':')
                .next()
                .unwrap_or("");
            format!("{scheme}://{user}@{}", &url[at + 1..])
        }
        None => url.to_string(),
    }
}

fn migrate_postgres(client: &mut postgres::Client) -> anyhow::Result<()> {
    let mut tx = client.transaction()?;
    // Held until the transaction ends: a node that starts meanwhile waits, then finds the
    // work done.
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(7284001);
         CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL);",
    )?;
    let done: i64 = match tx.query_opt("SELECT version FROM schema_version", &[])? {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO schema_version VALUES (0)", &[])?;
            0
        }
    };
    newer_than_known(done as usize, POSTGRES_MIGRATIONS.len())?;
    for (i, sql) in POSTGRES_MIGRATIONS.iter().enumerate().skip(done as usize) {
        tx.batch_execute(sql)
            .with_context(|| format!("running PostgreSQL migration {}", i + 1))?;
        tx.execute("UPDATE schema_version SET version = $1", &[&(i as i64 + 1)])?;
    }
    tx.commit()?;
    Ok(())
}

/// A database a newer version migrated is refused: this binary would not know its tables (an
/// old node's garbage collector would delete files that only new tables refer to).
fn newer_than_known(done: usize, known: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        done <= known,
        "The database's schema is at version {done}, newer than this rastercast knows ({known}): run the newer version on every node."
    );
    Ok(())
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let done: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    newer_than_known(done, MIGRATIONS.len())?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("running migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}
