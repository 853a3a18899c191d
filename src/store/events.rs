//! Announcing changes. On SQLite the in-process bus numbers and delivers each event at once,
//! under the store's lock. On PostgreSQL the event is written to the `task_events` log in the
//! transaction of the change it announces, and [`relay`] delivers the log, in `seq` order, to
//! the bus of every node: watchers on any node see every node's events, and a resume
//! (`Last-Event-ID`) is answered from the log, whichever node the client reconnects to.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use postgres::fallible_iterator::FallibleIterator;
use tokio_util::sync::CancellationToken;

use super::db::{vals, Conn, Db};
use crate::domain::{Announce, Event, EventKind, TaskRecord, TaskState};

/// What the event log keeps: at least `size` events (as the in-process replay window does),
/// and every event younger than `min_age`, so that a relay that lost its connection for less
/// than that misses nothing when it is back.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    pub size: i64,
    pub min_age: Duration,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            size: 10_000,
            min_age: Duration::from_secs(600),
        }
    }
}
/// Serialises event-writing transactions across nodes, so that `seq` order is commit order.
const EVENT_LOCK: i64 = 7_284_002;
/// The notification channel, one per schema: channels are the database's, not a schema's, and
/// two deployments that share a database in schemas of their own (`search_path`) must not
/// hear each other's events. (A name of at most 63 bytes, whatever the schema's.)
const CHANNEL: &str = "'rastercast_events_' || md5(current_schema())";

impl Db<'_> {
    /// Announces the task's new state; call it after the change, as the call's last write.
    /// Returns the event's `seq`.
    pub fn publish(&mut self, task: &TaskRecord, kind: EventKind) -> anyhow::Result<u64> {
        Ok(self.publish_all(&[(task, kind)])?[0])
    }

    /// Announces several changes of one call, in order, as [`Db::publish`] would one by one;
    /// on PostgreSQL in one statement (a publication that claims its worker's next task
    /// announces both). Returns their `seq`s.
    pub fn publish_all(&mut self, events: &[(&TaskRecord, EventKind)]) -> anyhow::Result<Vec<u64>> {
        if let Conn::Sqlite(_) = self.conn {
            return Ok(events
                .iter()
                .map(|(task, kind)| self.bus.publish(task, *kind))
                .collect());
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.needs_transaction("announce a change")?;
        // One round trip: the lock, the numbers, the rows and their notices. The statement
        // numbers the events, so each is written around its number (`Event::around_seq`).
        // The lock is taken before any number is drawn (it is joined in, and the numbers are
        // drawn after the sort), the numbers follow the events' order (`ORDER BY ord`), and
        // the notices are sent in `seq` order (a volatile output is computed after the sort).
        const FIELDS: usize = 8;
        let mut params = Vec::with_capacity(events.len() * FIELDS);
        let rows: Vec<String> = events
            .iter()
            .enumerate()
            .map(|(i, (task, kind))| {
                let (before, after) = Event::around_seq(task, *kind);
                let head = format!(
                    "{} {} {} {}",
                    task.id,
                    task.user_id,
                    kind.as_str(),
                    task.state.as_str()
                );
                params.extend_from_slice(vals![
                    i as i64,
                    task.id,
                    task.user_id,
                    kind.as_str(),
                    task.state.as_str(),
                    before,
                    after,
                    head
                ]);
                // The order first (a number), then the seven texts.
                let casts: Vec<String> = (1..=FIELDS)
                    .map(|k| {
                        let kind = if k == 1 { "BIGINT" } else { "TEXT" };
                        format!("CAST(?{} AS {kind})", i * FIELDS + k)
                    })
                    .collect();
                format!("({})", casts.join(", "))
            })
            .collect();
        let max = params.len() + 1;
        params.push(super::db::Value::from(NOTICE_MAX as i64));
        let sql = format!(
            "WITH locked AS MATERIALIZED (SELECT pg_advisory_xact_lock({EVENT_LOCK})),
             numbered AS MATERIALIZED (SELECT nextval('task_events_seq') AS seq, e.*
                 FROM (VALUES {rows}) AS e(ord, task_id, user_id, kind, state, before, after, head)
                 CROSS JOIN locked ORDER BY e.ord),
             stored AS (INSERT INTO task_events (seq, task_id, user_id, kind, state, sse)
                 SELECT seq, task_id, user_id, kind, state, convert_to('id: ' || seq
                     || E'\\ndata: ' || before || seq || after || E'\\n\\n', 'UTF8')
                 FROM numbered RETURNING seq, sse),
             announced AS (SELECT s.seq, s.seq || ' ' || n.head || E'\\n'
                 || convert_from(s.sse, 'UTF8') AS notice FROM stored s JOIN numbered n USING (seq))
             SELECT seq, CAST(pg_notify({CHANNEL}, CASE WHEN octet_length(notice) <= ?{max}
                 THEN notice ELSE '' END) AS TEXT) FROM announced ORDER BY seq",
            rows = rows.join(", ")
        );
        self.query(&sql, &params)?
            .iter()
            .map(|row| Ok(row.int(0)? as u64))
            .collect()
    }

    /// Makes every read of this call see one moment of the database (PostgreSQL: a
    /// repeatable-read transaction; SQLite already is one under the store's lock). Call it
    /// first.
    pub fn consistent_reads(&mut self) -> anyhow::Result<()> {
        if let Conn::Postgres(..) = self.conn {
            self.needs_transaction("read at one moment")?;
            self.execute_batch("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        }
        Ok(())
    }

    /// The `seq` of the last event announced: a snapshot read in the same call (after
    /// [`Db::consistent_reads`]) is the state after every event up to it.
    pub fn position(&mut self) -> anyhow::Result<u64> {
        if let Conn::Sqlite(_) = self.conn {
            return Ok(self.bus.position());
        }
        let last = self
            .query_one("SELECT COALESCE(MAX(seq), 0) FROM task_events", &[])?
            .int(0)?;
        Ok(last as u64)
    }

    /// The events after `after`, up to `position` (from [`Db::position`] in the same call),
    /// that `keep` selects, or `None` when the log (or the replay window) no longer holds all
    /// of them. On PostgreSQL, call [`Db::consistent_reads`] first, so that position and
    /// events are one moment's.
    pub fn replay(
        &mut self,
        after: u64,
        position: u64,
        keep: impl Fn(&Event) -> bool,
    ) -> anyhow::Result<Option<Vec<Arc<Event>>>> {
        if let Conn::Sqlite(_) = self.conn {
            return Ok(self.bus.replay(after, &keep));
        }
        let oldest = self
            .query_one("SELECT MIN(seq) FROM task_events", &[])?
            .opt_int(0)?
            .map_or(position + 1, |s| s as u64);
        if after > position || after + 1 < oldest {
            return Ok(None);
        }
        let events = self
            .query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM task_events WHERE seq > ?1 AND seq <= ?2
                     ORDER BY seq"
                ),
                vals![after as i64, position as i64],
            )?
            .iter()
            .map(stored_event)
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Some(
            events
                .into_iter()
                .filter(|e| keep(e))
                .map(Arc::new)
                .collect(),
        ))
    }
}

const EVENT_COLUMNS: &str = "seq, task_id, user_id, kind, state, sse";

fn stored_event(row: &super::db::Row) -> anyhow::Result<Event> {
    let (kind, state) = (row.text(3)?, row.text(4)?);
    Event::from_stored(
        row.int(0)? as u64,
        row.uuid(1)?,
        row.uuid(2)?,
        EventKind::parse(&kind).with_context(|| format!("unknown event kind {kind:?}"))?,
        TaskState::parse(&state).with_context(|| format!("unknown task state {state:?}"))?,
        row.blob(5)?.into(),
    )
}

/// Events the relay reads from the log at once.
const LOG_PAGE: usize = 1000;

/// Notices are limited to 8000 bytes; a larger event goes with an empty notice and is read
/// from the log. A notice is `{seq} {task} {user} {kind} {state}\n{sse}`, written by
/// [`Db::publish`]'s statement and read by [`carried`].
const NOTICE_MAX: usize = 7900;

/// The event a notice carries, if any.
fn carried(notice: &str) -> Option<Event> {
    let (head, sse) = notice.split_once('\n')?;
    let mut fields = head.split(' ');
    let mut next = || fields.next();
    let seq = next()?.parse().ok()?;
    let task = next()?.parse().ok()?;
    let user = next()?.parse().ok()?;
    let kind = EventKind::parse(next()?)?;
    let state = TaskState::parse(next()?)?;
    let sse = bytes::Bytes::copy_from_slice(sse.as_bytes());
    Event::from_stored(seq, task, user, kind, state, sse).ok()
}

/// How long the relay waits for a notification before it looks at the log anyway (a
/// notification lost with a dropped connection costs at most this), and between reconnects.
const RELAY_POLL: Duration = Duration::from_millis(500);

/// Starts listening on `client`; returns the last `seq` handed out, where the relay starts.
///
/// That is the sequence's value, read under the writers' lock (so no event numbered up to it
/// is still to commit), not the log's last row: on an empty log that would be 0, and the
/// first event ever written would then look like a log pruned past the relay's start,
/// resyncing every feed instead of delivering it.
pub fn listen(client: &mut postgres::Client) -> anyhow::Result<u64> {
    let channel: String = client.query_one(&format!("SELECT {CHANNEL}"), &[])?.get(0);
    client.batch_execute(&format!("LISTEN \"{channel}\""))?;
    let mut tx = client.transaction()?;
    tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({EVENT_LOCK})"))?;
    let last: i64 = tx
        .query_one("SELECT last_value FROM task_events_seq", &[])?
        .get(0);
    tx.commit()?;
    Ok(last as u64)
}

/// PostgreSQL: delivers the event log after `start` to `bus`, in `seq` order, until
/// `shutdown`, on `client` (already listening) and on new connections after a loss; and prunes
/// the log to `limits`. A relay that finds the log pruned past what it delivered (it was cut
/// off or paused for longer than `limits.min_age`) resyncs the bus's feeds with snapshots of
/// every task changed meanwhile. Runs on a thread of its own.
pub fn relay(
    config: postgres::Config,
    client: postgres::Client,
    start: u64,
    bus: Arc<dyn Announce>,
    limits: LogLimits,
    shutdown: CancellationToken,
) {
    let mut last = start as i64;
    // When the relay last knew itself up to date: tasks changed since may need a resync.
    let mut synced_at = chrono::Utc::now();
    let mut pruned = std::time::Instant::now();
    let mut client = Some(client);
    while !shutdown.is_cancelled() {
        let mut run = || -> anyhow::Result<()> {
            let mut client = match client.take() {
                Some(c) => c,
                None => {
                    let mut c = super::connect_postgres(&config)?;
                    listen(&mut c)?;
                    c
                }
            };
            // Prepared once: it runs after nearly every event.
            let after = client.prepare(&format!(
                "SELECT {EVENT_COLUMNS} FROM task_events WHERE seq > $1 ORDER BY seq LIMIT {LOG_PAGE}"
            ))?;
            // Listening already: what was committed before is in the log (a reconnect's gap),
            // what comes after has its notice.
            let mut read_log = true;
            while !shutdown.is_cancelled() {
                if read_log {
                    last = deliver_log(&mut client, &after, last, synced_at, &*bus)?;
                }
                synced_at = chrono::Utc::now();
                // One notification or the poll interval, then whatever else is already queued.
                let first = client.notifications().timeout_iter(RELAY_POLL).next()?;
                let mut notices = Vec::from_iter(first);
                if !notices.is_empty() {
                    while let Some(notice) = client.notifications().iter().next()? {
                        notices.push(notice);
                    }
                }
                // Notices come in commit order, which is `seq` order: an event its notice
                // carries is delivered as it is. One too large for a notice, and a quiet
                // poll interval, send the relay to the log.
                read_log = notices.is_empty();
                for notice in &notices {
                    match carried(notice.payload()) {
                        Some(event) if event.seq as i64 > last => {
                            last = event.seq as i64;
                            bus.deliver(event);
                        }
                        Some(_) => {}
                        None => {
                            read_log = true;
                            break;
                        }
                    }
                }
                if pruned.elapsed() > Duration::from_secs(10) {
                    pruned = std::time::Instant::now();
                    client.execute(
                        "DELETE FROM task_events WHERE seq < (SELECT seq FROM task_events
                         ORDER BY seq DESC OFFSET $1 LIMIT 1)
                         AND at_ms < CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT) - $2",
                        &[&limits.size, &(limits.min_age.as_millis() as i64)],
                    )?;
                }
            }
            Ok(())
        };
        if let Err(e) = run() {
            tracing::error!(error = ?e, "the event relay lost its connection; reconnecting");
            std::thread::sleep(RELAY_POLL);
        }
    }
}

/// Delivers the log after `last` to `bus`, page after page, and returns where it ends. A log
/// pruned past `last` (the relay was away longer than the log keeps events) resyncs the
/// bus's feeds instead, with snapshots of every task changed since `synced_at`.
fn deliver_log(
    client: &mut postgres::Client,
    after: &postgres::Statement,
    mut last: i64,
    synced_at: chrono::DateTime<chrono::Utc>,
    bus: &dyn Announce,
) -> anyhow::Result<i64> {
    loop {
        let rows = client.query(after, &[&last])?;
        let first: Option<i64> = rows.first().map(|r| r.get(0));
        if first.is_some_and(|f| f > last + 1) && pruned_past(client, last)? {
            let since = synced_at - chrono::Duration::minutes(1);
            tracing::warn!(%since, "the event log was pruned past this node's relay; resyncing its feeds");
            return resync(client, bus, &crate::time::format(since));
        }
        for row in &rows {
            let event = stored_event(&super::db::row_from_postgres(row)?)?;
            last = event.seq as i64;
            bus.deliver(event);
        }
        if rows.len() < LOG_PAGE {
            return Ok(last);
        }
    }
}

/// True when the log no longer holds the events right after `last`: its oldest is later.
/// (A gap in `seq` alone is no sign: a rolled-back transaction leaves one.)
fn pruned_past(client: &mut postgres::Client, last: i64) -> anyhow::Result<bool> {
    let oldest: Option<i64> = client
        .query_one("SELECT MIN(seq) FROM task_events", &[])?
        .get(0);
    Ok(oldest.is_some_and(|o| o > last + 1))
}

/// Delivers a resync snapshot of every task changed since `since` (and every unfinished one)
/// as of the log's end, and returns that end.
fn resync(client: &mut postgres::Client, bus: &dyn Announce, since: &str) -> anyhow::Result<i64> {
    let mut statements = super::db::Statements::default();
    let (position, tasks) =
        Db::in_transaction(client.transaction()?, &mut statements, bus, |db| {
            db.consistent_reads()?;
            Ok((db.position()?, super::tasks::changed_since(db, since)?))
        })?;
    for task in &tasks {
        bus.deliver(Event::snapshot(task, position, true));
    }
    bus.resynced(1);
    Ok(position as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A published event rides in its notice exactly as the log keeps it (the statement that
    /// numbers it writes both); one too large for a notice goes with an empty one, and a
    /// notice that is not one of ours sends the relay to the log.
    #[test]
    fn a_published_event_rides_in_its_notice_as_the_log_keeps_it() {
        for test in crate::store::testing::stores() {
            let Some(config) = test.postgres_config() else {
                continue;
            };
            let mut listener = config.connect(postgres::NoTls).unwrap();
            listen(&mut listener).unwrap();
            let mut task = crate::domain::event::sample_task();
            let small = test
                .store
                .blocking(|db| db.publish(&task, EventKind::State))
                .unwrap();
            task.status = "x".repeat(NOTICE_MAX);
            let large = test
                .store
                .blocking(|db| db.publish(&task, EventKind::Progress))
                .unwrap();

            let notices: Vec<String> = listener
                .notifications()
                .timeout_iter(Duration::from_secs(10))
                .take(2)
                .map(|n| Ok(n.payload().to_owned()))
                .collect()
                .unwrap();
            let logged: Vec<Event> = test
                .store
                .blocking(|db| {
                    let sql = format!("SELECT {EVENT_COLUMNS} FROM task_events ORDER BY seq");
                    db.query(&sql, &[])?.iter().map(stored_event).collect()
                })
                .unwrap();
            assert_eq!(notices.len(), 2, "both events were announced");
            assert_eq!(logged.len(), 2);

            let back = carried(&notices[0]).expect("a small event rides in its notice");
            assert_eq!(back.seq, small);
            assert_eq!((back.task_id, back.user_id), (task.id, task.user_id));
            assert_eq!((back.kind, back.state), (EventKind::State, task.state));
            assert_eq!((&back.sse, &back.json), (&logged[0].sse, &logged[0].json));
            let json: serde_json::Value = serde_json::from_slice(&back.json).unwrap();
            assert_eq!(json["seq"], small, "the event is numbered inside");
            assert!(back
                .sse
                .starts_with(format!("id: {small}\ndata: {{").as_bytes()));

            assert_eq!(notices[1], "", "a large event is read from the log");
            assert_eq!(logged[1].seq, large);
            let json: serde_json::Value = serde_json::from_slice(&logged[1].json).unwrap();
            assert_eq!(
                (&json["seq"], &json["event"]),
                (&large.into(), &"progress".into())
            );
            assert_eq!(json["status"].as_str().unwrap().len(), NOTICE_MAX);
        }
        assert!(carried("").is_none());
        assert!(carried("42 not-a-task\nid: 42").is_none());
    }

    #[test]
    fn events_published_together_are_numbered_and_announced_in_their_order() {
        for test in crate::store::testing::stores() {
            let Some(config) = test.postgres_config() else {
                continue;
            };
            let mut listener = config.connect(postgres::NoTls).unwrap();
            listen(&mut listener).unwrap();
            let tasks: Vec<TaskRecord> = (0..5)
                .map(|_| {
                    let mut task = crate::domain::event::sample_task();
                    task.id = uuid::Uuid::new_v4();
                    task
                })
                .collect();
            let kinds = [EventKind::State, EventKind::Progress];
            let events: Vec<_> = tasks.iter().zip(kinds.iter().cycle().copied()).collect();
            let seqs = test.store.blocking(|db| db.publish_all(&events)).unwrap();

            assert_eq!(seqs.len(), 5);
            assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
            let notices: Vec<Event> = listener
                .notifications()
                .timeout_iter(Duration::from_secs(10))
                .take(5)
                .map(|n| Ok(carried(n.payload()).expect("each rides in its notice")))
                .collect()
                .unwrap();
            let heard: Vec<_> = notices.iter().map(|e| (e.seq, e.task_id, e.kind)).collect();
            let sent: Vec<_> = seqs
                .iter()
                .zip(&events)
                .map(|(seq, (task, kind))| (*seq, task.id, *kind))
                .collect();
            assert_eq!(heard, sent, "numbered and announced in the order given");
            for event in &notices {
                let json: serde_json::Value = serde_json::from_slice(&event.json).unwrap();
                assert_eq!(json["seq"], event.seq);
                assert_eq!(json["task_id"], event.task_id.to_string());
            }
        }
    }
}
