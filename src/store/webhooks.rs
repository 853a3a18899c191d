//! Webhooks: the endpoints users register, the secret of their one-off callbacks, and every
//! delivery with its attempts. A delivery is written in the transaction of the task change it
//! announces ([`enqueue`]); a dispatcher on any node leases it ([`claim`]) as workers lease
//! tasks, so each attempt goes out from one node, and records the outcome under that lease.
//! What is retried when, and what disables an endpoint, the dispatcher decides.

use uuid::Uuid;

use super::db::{vals, Db, Dialect, Row};
use super::tasks::now_ms;
use crate::domain::webhook::{Callback, EventType};

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: Uuid,
    pub user_id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub secret: String,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    /// Since when (ms) every delivery failed, with no success since.
    pub failing_since: Option<i64>,
    /// Whether an older secret still signs too (a rotation's overlap), and until when (ms).
    pub previous_until: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
}

const ENDPOINT_COLUMNS: &str = "id, user_id, url, events, description, secret, disabled,
    disabled_reason, failing_since, previous_until, created_at, updated_at";

fn endpoint(r: &Row) -> anyhow::Result<Endpoint> {
    Ok(Endpoint {
        id: r.uuid(0)?,
        user_id: r.uuid(1)?,
        url: r.text(2)?,
        events: serde_json::from_str(&r.text(3)?)?,
        description: r.text(4)?,
        secret: r.text(5)?,
        disabled: r.int(6)? != 0,
        disabled_reason: r.opt_text(7)?,
        failing_since: r.opt_int(8)?,
        previous_until: r.opt_int(9)?,
        created_at: r.text(10)?,
        updated_at: r.text(11)?,
    })
}

pub struct NewEndpoint {
    pub user_id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub secret: String,
}

/// Registers an endpoint, unless `user` already has `max` (`None`).
pub fn create_endpoint(
    db: &mut Db,
    new: NewEndpoint,
    max: u64,
) -> anyhow::Result<Option<Endpoint>> {
    db.atomically(|db| {
        let count = db
            .query_one(
                "SELECT COUNT(*) FROM webhook_endpoints WHERE user_id = ?1",
                vals![new.user_id],
            )?
            .int(0)?;
        if count as u64 >= max {
            return Ok(None);
        }
        let id = Uuid::new_v4();
        let now = crate::time::now();
        db.execute(
            "INSERT INTO webhook_endpoints (id, user_id, url, events, description, secret,
             created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            vals![
                id,
                new.user_id,
                new.url,
                serde_json::to_string(&new.events)?,
                new.description,
                new.secret,
                now
            ],
        )?;
        get_endpoint(db, new.user_id, id)
    })
}

pub fn get_endpoint(db: &mut Db, user: Uuid, id: Uuid) -> anyhow::Result<Option<Endpoint>> {
    db.query_opt(
        &format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?1 AND user_id = ?2"),
        vals![id, user],
    )?
    .as_ref()
    .map(endpoint)
    .transpose()
}

pub fn list_endpoints(db: &mut Db, user: Uuid) -> anyhow::Result<Vec<Endpoint>> {
    db.query(
        &format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE user_id = ?1
             ORDER BY created_at, id"
        ),
        vals![user],
    )?
    .iter()
    .map(endpoint)
    .collect()
}

/// Fields of an endpoint to change; `None` keeps one.
#[derive(Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    /// `Some(false)` enables a disabled endpoint again (and forgets why it was disabled).
    pub disabled: Option<bool>,
}

pub fn update_endpoint(
    db: &mut Db,
    user: Uuid,
    id: Uuid,
    change: EndpointChange,
) -> anyhow::Result<Option<Endpoint>> {
    let events = change
        .events
        .map(|e| serde_json::to_string(&e))
        .transpose()?;
    let reason = change
        .disabled
        .map(|d| d.then_some("Disabled by its owner."));
    db.execute(
        "UPDATE webhook_endpoints SET url = COALESCE(?3, url), events = COALESCE(?4, events),
         description = COALESCE(?5, description),
         disabled = COALESCE(?6, disabled),
         disabled_reason = CASE WHEN ?6 IS NULL THEN disabled_reason ELSE ?7 END,
         failing_since = CASE WHEN ?6 = 0 THEN NULL ELSE failing_since END,
         updated_at = ?8 WHERE id = ?1 AND user_id = ?2",
        vals![
            id,
            user,
            change.url,
            events,
            change.description,
            change.disabled,
            reason.flatten(),
            crate::time::now()
        ],
    )?;
    get_endpoint(db, user, id)
}

pub fn delete_endpoint(db: &mut Db, user: Uuid, id: Uuid) -> anyhow::Result<bool> {
    Ok(db.execute(
        "DELETE FROM webhook_endpoints WHERE id = ?1 AND user_id = ?2",
        vals![id, user],
    )? > 0)
}

/// Makes `secret` the endpoint's signing secret; the old one keeps signing too for
/// `overlap_ms`.
pub fn rotate_secret(
    db: &mut Db,
    user: Uuid,
    id: Uuid,
    secret: &str,
    overlap_ms: i64,
) -> anyhow::Result<Option<Endpoint>> {
    db.execute(
        &format!(
            "UPDATE webhook_endpoints SET previous_secret = secret, secret = ?3,
             previous_until = {} + ?4, updated_at = ?5 WHERE id = ?1 AND user_id = ?2",
            now_ms(db)
        ),
        vals![id, user, secret, overlap_ms, crate::time::now()],
    )?;
    get_endpoint(db, user, id)
}

/// The secret that signs `user`'s one-off callbacks, made with `make` on first use.
pub fn callback_secret(
    db: &mut Db,
    user: Uuid,
    make: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    let insert = "INSERT INTO webhook_callback_secrets (user_id, secret) VALUES (?1, ?2)
                  ON CONFLICT (user_id) DO NOTHING";
    db.execute(insert, vals![user, make()])?;
    db.query_one(
        "SELECT secret FROM webhook_callback_secrets WHERE user_id = ?1",
        vals![user],
    )?
    .text(0)
}

/// Replaces `user`'s callback secret; the old one keeps signing too for `overlap_ms`.
pub fn rotate_callback_secret(
    db: &mut Db,
    user: Uuid,
    secret: &str,
    overlap_ms: i64,
) -> anyhow::Result<()> {
    db.atomically(|db| {
        callback_secret(db, user, || secret.to_owned())?;
        db.execute(
            &format!(
                "UPDATE webhook_callback_secrets SET previous_secret = secret, secret = ?2,
                 previous_until = {} + ?3 WHERE user_id = ?1 AND secret <> ?2",
                now_ms(db)
            ),
            vals![user, secret, overlap_ms],
        )?;
        Ok(())
    })
}

/// Records where a new task's callbacks go (in its submit's transaction).
pub fn add_callbacks(db: &mut Db, task: Uuid, callbacks: &[Callback]) -> anyhow::Result<()> {
    for callback in callbacks {
        let events: Vec<&str> = callback.events.iter().map(|e| e.as_str()).collect();
        db.execute(
            "INSERT INTO task_callbacks (task_id, url, events) VALUES (?1, ?2, ?3)
             ON CONFLICT (task_id, url) DO NOTHING",
            vals![task, &callback.url, serde_json::to_string(&events)?],
        )?;
    }
    Ok(())
}

pub fn callbacks(db: &mut Db, task: Uuid) -> anyhow::Result<Vec<Callback>> {
    db.query(
        "SELECT url, events FROM task_callbacks WHERE task_id = ?1 ORDER BY url",
        vals![task],
    )?
    .iter()
    .map(|r| {
        let events: Vec<String> = serde_json::from_str(&r.text(1)?)?;
        Ok(Callback {
            url: r.text(0)?,
            events: events.iter().filter_map(|e| EventType::parse(e)).collect(),
        })
    })
    .collect()
}

/// Forgets the callbacks of tasks that no longer exist.
pub fn prune_callbacks(db: &mut Db) -> anyhow::Result<usize> {
    db.execute(
        "DELETE FROM task_callbacks WHERE NOT EXISTS
         (SELECT 1 FROM tasks WHERE tasks.id = task_callbacks.task_id)",
        &[],
    )
}

/// Where one delivery goes: a registered endpoint, or a task's callback URL.
enum Target<'a> {
    Endpoint(&'a str),
    Callback(&'a str),
}

/// Queues the deliveries that task `task`'s change (`event`) owes: one per enabled endpoint
/// of its owner subscribed to `event`, and one per callback of the task that wants it. Call it
/// in the change's own transaction. `body` makes the owner's id and the delivery's body, only
/// when some target wants the event. Progress is coalesced: a newer event replaces a progress
/// delivery of the same task that has not gone out yet.
pub fn enqueue(
    db: &mut Db,
    task: Uuid,
    event: EventType,
    body: impl FnOnce(&mut Db) -> anyhow::Result<Option<(Uuid, String)>>,
) -> anyhow::Result<usize> {
    // One round trip finds every target.
    let rows = db.query(
        "SELECT 'e', id, events FROM webhook_endpoints WHERE disabled = 0
         AND user_id = (SELECT user_id FROM tasks WHERE id = ?1)
         UNION ALL SELECT 'c', url, events FROM task_callbacks WHERE task_id = ?1",
        vals![task],
    )?;
    let mut targets = Vec::new();
    for row in &rows {
        let events: Vec<String> = serde_json::from_str(&row.text(2)?)?;
        if events.iter().any(|e| e == event.as_str()) {
            targets.push((row.text(0)? == "e", row.text(1)?));
        }
    }
    if targets.is_empty() {
        return Ok(0);
    }
    let Some((user, body)) = body(db)? else {
        return Ok(0);
    };
    for (endpoint, key) in &targets {
        let target = if *endpoint {
            Target::Endpoint(key)
        } else {
            Target::Callback(key)
        };
        queue(db, user, target, Some(task), event, &body)?;
    }
    db.bus.deliveries_queued();
    Ok(targets.len())
}

/// Queues a `webhook.test` delivery to one endpoint; returns its id.
pub fn enqueue_test(db: &mut Db, endpoint: &Endpoint, body: &str) -> anyhow::Result<String> {
    queue(
        db,
        endpoint.user_id,
        Target::Endpoint(&endpoint.id.to_string()),
        None,
        EventType::WebhookTest,
        body,
    )
}

impl Target<'_> {
    fn key(&self) -> &str {
        match self {
            Target::Endpoint(id) => id,
            Target::Callback(url) => url,
        }
    }
}

fn queue(
    db: &mut Db,
    user: Uuid,
    target: Target,
    task: Option<Uuid>,
    event: EventType,
    body: &str,
) -> anyhow::Result<String> {
    let key = target.key();
    if let Some(task) = task {
        // Progress that has not gone out is stale once anything newer is known: a newer
        // progress takes its place (the same delivery, so the log does not grow by one row per
        // percent); anything else supersedes it. One in flight is left to finish.
        if event == EventType::TaskProgress {
            let replaced = db.query_opt(
                "UPDATE webhook_deliveries SET body = ?3 WHERE seq = (SELECT MIN(seq)
                 FROM webhook_deliveries WHERE target = ?1 AND task_id = ?2
                 AND event_type = 'task.progress' AND status = 'pending' AND attempts = 0
                 AND lease_owner IS NULL) RETURNING id",
                vals![key, task, body],
            )?;
            if let Some(row) = replaced {
                return row.text(0);
            }
        }
        db.execute(
            "UPDATE webhook_deliveries SET status = 'superseded', finished_at = ?3
             WHERE target = ?1 AND task_id = ?2 AND event_type = 'task.progress'
             AND status = 'pending' AND lease_owner IS NULL",
            vals![key, task, crate::time::now()],
        )?;
    }
    let id = format!("msg_{}", Uuid::new_v4().simple());
    let (endpoint, callback) = match target {
        Target::Endpoint(id) => (Some(id.to_owned()), None),
        Target::Callback(url) => (None, Some(url.to_owned())),
    };
    db.execute(
        &format!(
            "INSERT INTO webhook_deliveries (id, user_id, endpoint_id, callback_url, target,
             task_id, event_type, body, status, next_attempt_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', {}, ?9)",
            now_ms(db)
        ),
        vals![
            &id,
            user,
            endpoint,
            callback,
            key,
            task,
            event.as_str(),
            body,
            crate::time::now()
        ],
    )?;
    Ok(id)
}

/// A delivery leased for one attempt: everything sending it needs.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: String,
    pub endpoint_id: Option<Uuid>,
    pub url: String,
    pub body: String,
    /// Failed attempts in the current schedule.
    pub tries: i64,
    pub attempts: i64,
    /// The secrets to sign with: the current one, and one being rotated out.
    pub secrets: Vec<String>,
}

/// Leases up to `limit` due deliveries to `owner` for `lease_ms`: at most one per target and
/// task, and none whose target already has one of that task in flight (progress arrives in
/// order, and never two at once). Returns them with when (ms from now) the next one is due.
pub fn claim(
    db: &mut Db,
    owner: &str,
    lease_ms: i64,
    limit: i64,
) -> anyhow::Result<(Vec<Due>, Option<i64>)> {
    db.atomically(|db| {
        if db.dialect() == Dialect::Postgres {
            // Nodes claim one at a time, or two could each take one of a task's deliveries.
            db.execute_batch("SELECT pg_advisory_xact_lock(7284003)")?;
        }
        let now = now_ms(db);
        let candidates = db.query(
            &format!(
                "SELECT d.seq, d.target, COALESCE(d.task_id, d.id) FROM webhook_deliveries d
                 LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id
                 WHERE d.status = 'pending' AND d.next_attempt_at <= {now}
                 AND (d.lease_until IS NULL OR d.lease_until < {now})
                 AND (d.endpoint_id IS NULL OR e.disabled = 0)
                 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries o WHERE o.target = d.target
                     AND o.task_id = d.task_id AND o.status = 'pending'
                     AND o.lease_until >= {now} AND o.seq <> d.seq)
                 ORDER BY d.next_attempt_at, d.seq LIMIT ?1"
            ),
            vals![limit * 4],
        )?;
        let mut seen = std::collections::HashSet::new();
        let mut due = Vec::new();
        for row in candidates {
            if due.len() as i64 >= limit {
                break;
            }
            if !seen.insert((row.text(1)?, row.text(2)?)) {
                continue;
            }
            let seq = row.int(0)?;
            db.execute(
                &format!(
                    "UPDATE webhook_deliveries SET lease_owner = ?2, lease_until = {now} + ?3
                     WHERE seq = ?1"
                ),
                vals![seq, owner, lease_ms],
            )?;
            due.push(leased(db, seq)?);
        }
        let next = db
            .query_one(
                &format!(
                    "SELECT MIN(d.next_attempt_at) - {now} FROM webhook_deliveries d
                     LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id
                     WHERE d.status = 'pending' AND d.lease_owner IS NULL
                     AND (d.endpoint_id IS NULL OR e.disabled = 0)"
                ),
                &[],
            )?
            .opt_int(0)?;
        Ok((due, next))
    })
}

fn leased(db: &mut Db, seq: i64) -> anyhow::Result<Due> {
    let now = now_ms(db);
    let row = db.query_one(
        &format!(
            "SELECT d.id, d.endpoint_id, COALESCE(e.url, d.callback_url), d.body, d.tries,
             d.attempts, COALESCE(e.secret, s.secret),
             CASE WHEN e.id IS NOT NULL AND e.previous_until > {now} THEN e.previous_secret
                  WHEN e.id IS NULL AND s.previous_until > {now} THEN s.previous_secret END
             FROM webhook_deliveries d
             LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id
             LEFT JOIN webhook_callback_secrets s ON s.user_id = d.user_id
             WHERE d.seq = ?1"
        ),
        vals![seq],
    )?;
    let mut secrets = vec![row.opt_text(6)?.unwrap_or_default()];
    secrets.extend(row.opt_text(7)?);
    Ok(Due {
        id: row.text(0)?,
        endpoint_id: row.opt_uuid(1)?,
        url: row.text(2)?,
        body: row.text(3)?,
        tries: row.int(4)?,
        attempts: row.int(5)?,
        secrets,
    })
}

/// One attempt as the delivery log shows it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: String,
    pub status_code: Option<u16>,
    pub latency_ms: i64,
    /// The first KiB of the answer.
    pub response: String,
    /// Why no answer came (a refused address, a timeout, a connection error).
    pub error: Option<String>,
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    Delivered,
    /// Try again in `delay_ms`.
    Retry {
        delay_ms: i64,
    },
    /// The schedule is used up, or the receiver said 410.
    Failed,
}

/// Records `owner`'s attempt and what becomes of the delivery, if `owner` still holds its
/// lease (`false` otherwise: it ran out and another node took the delivery over).
pub fn record(
    db: &mut Db,
    due: &Due,
    owner: &str,
    attempt: &Attempt,
    next: Next,
) -> anyhow::Result<bool> {
    db.atomically(|db| {
        let now = now_ms(db);
        let (status, tries, delay) = match next {
            Next::Delivered => ("succeeded", due.tries, 0),
            Next::Retry { delay_ms } => ("pending", due.tries + 1, delay_ms),
            Next::Failed => ("failed", due.tries + 1, 0),
        };
        let finished = (status != "pending").then(crate::time::now);
        let changed = db.execute(
            &format!(
                "UPDATE webhook_deliveries SET status = ?3, tries = ?4, attempts = attempts + 1,
                 next_attempt_at = {now} + ?5, lease_owner = NULL, lease_until = NULL,
                 finished_at = ?6 WHERE id = ?1 AND lease_owner = ?2"
            ),
            vals![&due.id, owner, status, tries, delay, finished],
        )?;
        if changed == 0 {
            return Ok(false);
        }
        db.execute(
            "INSERT INTO webhook_attempts (delivery_id, n, at, status_code, latency_ms, response,
             error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            vals![
                &due.id,
                due.attempts + 1,
                &attempt.at,
                attempt.status_code.map(i64::from),
                attempt.latency_ms,
                &attempt.response,
                attempt.error.clone()
            ],
        )?;
        Ok(true)
    })
}

/// Notes a failed attempt against an endpoint; returns since when (ms) it has been failing
/// and the database's now (ms).
pub fn failing(db: &mut Db, endpoint: Uuid) -> anyhow::Result<(i64, i64)> {
    let now = now_ms(db);
    db.execute(
        &format!(
            "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, {now})
             WHERE id = ?1"
        ),
        vals![endpoint],
    )?;
    let row = db.query_opt(
        &format!("SELECT failing_since, {now} FROM webhook_endpoints WHERE id = ?1"),
        vals![endpoint],
    )?;
    match row {
        Some(row) => Ok((row.int(0)?, row.int(1)?)),
        // Deleted meanwhile: nothing is failing.
        None => Ok((i64::MAX, 0)),
    }
}

/// A success clears the endpoint's failing streak.
pub fn succeeded(db: &mut Db, endpoint: Uuid) -> anyhow::Result<()> {
    db.execute(
        "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = ?1 AND failing_since IS NOT NULL",
        vals![endpoint],
    )?;
    Ok(())
}

/// Disables an endpoint, saying why; its pending deliveries wait until it is enabled again.
pub fn disable(db: &mut Db, endpoint: Uuid, reason: &str) -> anyhow::Result<()> {
    db.execute(
        "UPDATE webhook_endpoints SET disabled = 1, disabled_reason = ?2, updated_at = ?3
         WHERE id = ?1",
        vals![endpoint, reason, crate::time::now()],
    )?;
    Ok(())
}

/// A delivery and its attempts, as the delivery log shows them.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub endpoint_id: Option<Uuid>,
    pub callback_url: Option<String>,
    pub task_id: Option<Uuid>,
    pub event_type: String,
    pub status: String,
    /// When the next attempt is due (ms since the epoch), while pending.
    pub next_attempt_at: Option<i64>,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub attempts: Vec<Attempt>,
}

/// Which deliveries to list.
pub struct Filter {
    pub user: Uuid,
    pub endpoint: Option<Uuid>,
    pub task: Option<Uuid>,
    pub status: Option<String>,
    /// Only deliveries older than this one (its `seq`), for paging.
    pub before: Option<i64>,
    pub limit: i64,
}

/// The user's deliveries, newest first, with each one's attempts; and each one's `seq`.
pub fn deliveries(db: &mut Db, filter: &Filter) -> anyhow::Result<Vec<(i64, Delivery)>> {
    let rows = db.query(
        "SELECT seq, id, endpoint_id, callback_url, task_id, event_type, status,
         next_attempt_at, created_at, finished_at FROM webhook_deliveries
         WHERE user_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR endpoint_id = ?2)
         AND (CAST(?3 AS TEXT) IS NULL OR task_id = ?3)
         AND (CAST(?4 AS TEXT) IS NULL OR status = ?4)
         AND (CAST(?5 AS BIGINT) IS NULL OR seq < ?5) ORDER BY seq DESC LIMIT ?6",
        vals![
            filter.user,
            filter.endpoint,
            filter.task,
            filter.status.clone(),
            filter.before,
            filter.limit
        ],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id = r.text(1)?;
        let status = r.text(6)?;
        let attempts = db
            .query(
                "SELECT at, status_code, latency_ms, response, error FROM webhook_attempts
                 WHERE delivery_id = ?1 ORDER BY n",
                vals![&id],
            )?
            .iter()
            .map(|a| {
                Ok(Attempt {
                    at: a.text(0)?,
                    status_code: a.opt_int(1)?.map(|c| c as u16),
                    latency_ms: a.int(2)?,
                    response: a.text(3)?,
                    error: a.opt_text(4)?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        out.push((
            r.int(0)?,
            Delivery {
                next_attempt_at: (status == "pending").then(|| r.int(7)).transpose()?,
                id,
                endpoint_id: r.opt_uuid(2)?,
                callback_url: r.opt_text(3)?,
                task_id: r.opt_uuid(4)?,
                event_type: r.text(5)?,
                status,
                created_at: r.text(8)?,
                finished_at: r.opt_text(9)?,
                attempts,
            },
        ));
    }
    Ok(out)
}

/// Queues one of `endpoint`'s deliveries again, at once and with a fresh schedule, under the
/// same `webhook-id`. `None` if there is no such delivery; `Some(false)` if it is in flight.
pub fn redeliver(
    db: &mut Db,
    user: Uuid,
    endpoint: Uuid,
    id: &str,
) -> anyhow::Result<Option<bool>> {
    let now = now_ms(db);
    let changed = db.execute(
        &format!(
            "UPDATE webhook_deliveries SET status = 'pending', tries = 0, next_attempt_at = {now},
             finished_at = NULL WHERE id = ?1 AND user_id = ?2 AND endpoint_id = ?3
             AND (lease_until IS NULL OR lease_until < {now})"
        ),
        vals![id, user, endpoint],
    )?;
    if changed > 0 {
        return Ok(Some(true));
    }
    let exists = db.query_opt(
        "SELECT 1 FROM webhook_deliveries WHERE id = ?1 AND user_id = ?2 AND endpoint_id = ?3",
        vals![id, user, endpoint],
    )?;
    Ok(exists.map(|_| false))
}

/// Deletes finished deliveries (and their attempts) that finished before `before` (RFC 3339).
pub fn prune(db: &mut Db, before: &str) -> anyhow::Result<usize> {
    db.execute(
        "DELETE FROM webhook_deliveries WHERE status <> 'pending' AND finished_at < ?1",
        vals![before],
    )
}

/// Releases every lease (alone on the database, at start-up: no attempt is in flight).
pub fn release_leases(db: &mut Db) -> anyhow::Result<()> {
    db.execute(
        "UPDATE webhook_deliveries SET lease_owner = NULL, lease_until = NULL
         WHERE lease_owner IS NOT NULL",
        &[],
    )?;
    Ok(())
}
