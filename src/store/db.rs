//! One connection to either engine, and the few calls the row modules make on it. The row
//! modules write each statement once, in the SQL that SQLite and PostgreSQL share (`?N`
//! placeholders, rewritten to `$N` for PostgreSQL), and pick a dialect only where the two
//! differ ([`Db::dialect`]). Values cross as [`Value`]s and rows come back as [`Row`]s, so no
//! row module names either driver.
//!
//! Both schemas use the same column types as far as the engines allow (ids and times as text,
//! integers as 64-bit, flags as 0/1), which is what lets one statement serve both.

use std::borrow::Cow;

use anyhow::Context;
use uuid::Uuid;

/// A connection, inside [`super::Store::call`], and where its changes are announced.
/// For PostgreSQL the whole call is one transaction, committed when the call returns `Ok`;
/// SQLite commits per statement (or per [`Db::atomically`] block), under the store's one lock.
pub struct Db<'a> {
    pub(super) conn: Conn<'a>,
    pub(super) bus: &'a dyn crate::domain::Announce,
}

pub(super) enum Conn<'a> {
    Sqlite(&'a mut rusqlite::Connection),
    Postgres(Pg<'a>, &'a mut Statements),
}

/// A PostgreSQL call: one transaction, or (for [`super::Store::read`]) statements that each
/// stand alone, which saves the `BEGIN` and `COMMIT` round trips of a one-statement read.
pub(super) enum Pg<'a> {
    Transaction(postgres::Transaction<'a>),
    Autocommit(&'a mut postgres::Client),
}

type PgParams<'p> = [&'p (dyn postgres::types::ToSql + Sync)];

impl Pg<'_> {
    fn prepare(&mut self, sql: &str) -> Result<postgres::Statement, postgres::Error> {
        match self {
            Pg::Transaction(tx) => tx.prepare(sql),
            Pg::Autocommit(client) => client.prepare(sql),
        }
    }

    fn execute(
        &mut self,
        statement: &postgres::Statement,
        params: &PgParams,
    ) -> Result<u64, postgres::Error> {
        match self {
            Pg::Transaction(tx) => tx.execute(statement, params),
            Pg::Autocommit(client) => client.execute(statement, params),
        }
    }

    fn query(
        &mut self,
        statement: &postgres::Statement,
        params: &PgParams,
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        match self {
            Pg::Transaction(tx) => tx.query(statement, params),
            Pg::Autocommit(client) => client.query(statement, params),
        }
    }

    fn batch_execute(&mut self, sql: &str) -> Result<(), postgres::Error> {
        match self {
            Pg::Transaction(tx) => tx.batch_execute(sql),
            Pg::Autocommit(client) => client.batch_execute(sql),
        }
    }
}

/// PostgreSQL's prepared statements, kept per connection as SQLite's `prepare_cached` keeps
/// them: a statement given as text costs a parse and an extra round trip on every call, which
/// was most of what a change cost on loopback. Protocol-level statements outlive the
/// transaction that prepared them (a rollback keeps them), but not the connection: a new
/// connection starts with an empty cache.
#[derive(Default)]
pub(super) struct Statements(std::collections::HashMap<String, postgres::Statement>);

impl Statements {
    /// Far above the thirty-odd statements the server runs; a bound in case some call ever
    /// builds its SQL from data.
    const CAPACITY: usize = 256;

    fn get(&mut self, pg: &mut Pg<'_>, sql: &str) -> anyhow::Result<postgres::Statement> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = pg.prepare(&postgres_sql(sql))?;
        if self.0.len() >= Self::CAPACITY {
            self.0.clear();
        }
        self.0.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Forgets `sql`'s statement after it failed: a node that migrated the schema meanwhile
    /// can make an old plan invalid ("cached plan must not change result type"), and the
    /// next call should prepare it afresh rather than fail the same way.
    fn checked<T>(&mut self, sql: &str, result: Result<T, postgres::Error>) -> anyhow::Result<T> {
        if result.is_err() {
            self.0.remove(sql);
        }
        Ok(result?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// One result row, read by position.
#[derive(Debug)]
pub struct Row(Vec<Value>);

impl<'a> Db<'a> {
    /// Runs `f` in PostgreSQL transaction `tx` and commits it when `f` succeeds.
    pub(super) fn in_transaction<R>(
        tx: postgres::Transaction<'a>,
        statements: &'a mut Statements,
        bus: &'a dyn crate::domain::Announce,
        f: impl FnOnce(&mut Db) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let mut db = Db {
            conn: Conn::Postgres(Pg::Transaction(tx), statements),
            bus,
        };
        let result = f(&mut db)?;
        let Conn::Postgres(Pg::Transaction(tx), _) = db.conn else {
            unreachable!("made above")
        };
        tx.commit()?;
        Ok(result)
    }
}

impl Db<'_> {
    /// Fails inside a [`super::Store::read`], whose statements stand alone: what `doing`
    /// needs is a transaction.
    pub(super) fn needs_transaction(&self, doing: &str) -> anyhow::Result<()> {
        if let Conn::Postgres(Pg::Autocommit(_), _) = self.conn {
            anyhow::bail!("a store read (`Store::read`) cannot {doing}");
        }
        Ok(())
    }

    pub fn dialect(&self) -> Dialect {
        match self.conn {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Postgres(..) => Dialect::Postgres,
        }
    }

    /// Runs a statement; returns how many rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<usize> {
        match &mut self.conn {
            Conn::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params))?),
            Conn::Postgres(pg, statements) => {
                let statement = statements.get(pg, sql)?;
                let changed = pg.execute(&statement, &pg_params(params));
                Ok(statements.checked(sql, changed)? as usize)
            }
        }
    }

    pub fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Row>> {
        match &mut self.conn {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let width = stmt.column_count();
                let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| {
                    (0..width)
                        .map(|i| Ok(Value::from(r.get_ref(i)?)))
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map(Row)
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            }
            Conn::Postgres(pg, statements) => {
                let statement = statements.get(pg, sql)?;
                let rows = pg.query(&statement, &pg_params(params));
                statements
                    .checked(sql, rows)?
                    .iter()
                    .map(row_from_postgres)
                    .collect()
            }
        }
    }

    pub fn query_opt(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    pub fn query_one(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Row> {
        self.query_opt(sql, params)?
            .context("the query returned no row")
    }

    /// Runs `f` as one unit that other writers never see half-done. SQLite takes its write
    /// lock up front (`BEGIN IMMEDIATE`); for PostgreSQL the whole call already is a
    /// transaction. Inside another `atomically`, `f` is part of the outer unit (an error
    /// that reaches the outer one undoes both).
    pub fn atomically<R>(
        &mut self,
        f: impl FnOnce(&mut Db) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        self.needs_transaction("make a change atomically")?;
        match &self.conn {
            Conn::Postgres(..) => return f(self),
            Conn::Sqlite(c) if !c.is_autocommit() => return f(self),
            Conn::Sqlite(_) => {}
        }
        self.execute_batch("BEGIN IMMEDIATE")?;
        match f(self) {
            Ok(r) => {
                self.execute_batch("COMMIT")?;
                Ok(r)
            }
            Err(e) => {
                let _ = self.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Runs `f` with commits that skip the fsync (SQLite), for writes whose loss in a power
    /// failure is harmless: progress, and a task's claim (a lost claim is simply made again).
    /// The writes stay atomic and survive a crash of the process; everything a client was
    /// promised (a new task, a cancel, a final state) stays on full sync.
    pub fn unsynced<R>(
        &mut self,
        f: impl FnOnce(&mut Db) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        match self.conn {
            Conn::Sqlite(_) => {
                self.execute_batch("PRAGMA synchronous = NORMAL")?;
                let result = f(self);
                self.execute_batch("PRAGMA synchronous = FULL")?;
                result
            }
            // PostgreSQL keeps its commits synchronous: these transactions also write events
            // and advance the event sequence, which a crash must not take back.
            Conn::Postgres(..) => f(self),
        }
    }

    pub fn execute_batch(&mut self, sql: &str) -> anyhow::Result<()> {
        match &mut self.conn {
            Conn::Sqlite(c) => c.execute_batch(sql)?,
            Conn::Postgres(pg, _) => pg.batch_execute(sql)?,
        }
        Ok(())
    }
}

/// `?N` → `$N`. The statements hold no `?` anywhere else (no string literal has one).
fn postgres_sql(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    Cow::Owned(sql.replace('?', "$"))
}

fn pg_params(params: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| p as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

pub(super) fn row_from_postgres(row: &postgres::Row) -> anyhow::Result<Row> {
    use postgres::types::Type;
    (0..row.len())
        .map(|i| {
            let ty = row.columns()[i].type_();
            Ok(match *ty {
                Type::INT8 => row.get::<_, Option<i64>>(i).map_or(Value::Null, Value::Int),
                Type::INT4 => row
                    .get::<_, Option<i32>>(i)
                    .map_or(Value::Null, |v| Value::Int(v.into())),
                Type::INT2 => row
                    .get::<_, Option<i16>>(i)
                    .map_or(Value::Null, |v| Value::Int(v.into())),
                Type::BOOL => row
                    .get::<_, Option<bool>>(i)
                    .map_or(Value::Null, |v| Value::Int(v.into())),
                Type::FLOAT8 => row
                    .get::<_, Option<f64>>(i)
                    .map_or(Value::Null, Value::Real),
                Type::FLOAT4 => row
                    .get::<_, Option<f32>>(i)
                    .map_or(Value::Null, |v| Value::Real(v.into())),
                Type::TEXT | Type::VARCHAR | Type::NAME => row
                    .get::<_, Option<String>>(i)
                    .map_or(Value::Null, Value::Text),
                Type::BYTEA => row
                    .get::<_, Option<Vec<u8>>>(i)
                    .map_or(Value::Null, Value::Blob),
                ref other => {
                    anyhow::bail!("column {i} has a type the store does not read: {other}")
                }
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Row)
}

impl From<rusqlite::types::ValueRef<'_>> for Value {
    fn from(v: rusqlite::types::ValueRef<'_>) -> Value {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Int(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// PostgreSQL infers each parameter's type from the statement; an integer goes out as
/// whichever width it asked for.
impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::{IsNull, Type};
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Int(i), _) => i.to_sql(ty, out),
            (Value::Real(r), _) => r.to_sql(ty, out),
            (Value::Text(t), _) => t.to_sql(ty, out),
            (Value::Blob(b), _) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

impl Row {
    fn at(&self, i: usize) -> anyhow::Result<&Value> {
        self.0
            .get(i)
            .with_context(|| format!("the row has no column {i}"))
    }

    pub fn int(&self, i: usize) -> anyhow::Result<i64> {
        self.opt_int(i)?
            .with_context(|| format!("column {i} is null"))
    }

    pub fn opt_int(&self, i: usize) -> anyhow::Result<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            other => anyhow::bail!("column {i} is not an integer: {other:?}"),
        }
    }

    pub fn real(&self, i: usize) -> anyhow::Result<f64> {
        match self.at(i)? {
            Value::Real(v) => Ok(*v),
            Value::Int(v) => Ok(*v as f64),
            other => anyhow::bail!("column {i} is not a number: {other:?}"),
        }
    }

    pub fn text(&self, i: usize) -> anyhow::Result<String> {
        self.opt_text(i)?
            .with_context(|| format!("column {i} is null"))
    }

    pub fn opt_text(&self, i: usize) -> anyhow::Result<Option<String>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            other => anyhow::bail!("column {i} is not text: {other:?}"),
        }
    }

    pub fn blob(&self, i: usize) -> anyhow::Result<Vec<u8>> {
        match self.at(i)? {
            Value::Blob(v) => Ok(v.clone()),
            other => anyhow::bail!("column {i} is not a blob: {other:?}"),
        }
    }

    pub fn uuid(&self, i: usize) -> anyhow::Result<Uuid> {
        Ok(Uuid::parse_str(&self.text(i)?)?)
    }

    pub fn opt_uuid(&self, i: usize) -> anyhow::Result<Option<Uuid>> {
        Ok(self.opt_text(i)?.map(|s| Uuid::parse_str(&s)).transpose()?)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}

impl From<Uuid> for Value {
    fn from(v: Uuid) -> Value {
        Value::Text(v.to_string())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Blob(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// `vals![a, b]`: statement parameters from anything that converts into a [`Value`].
macro_rules! vals {
    ($($v:expr),* $(,)?) => { &[$($crate::store::db::Value::from($v)),*] };
}
pub(crate) use vals;
