-- Version 9: webhooks. Endpoints a user registers, the one-off callbacks a conversion names,
-- and every delivery with its attempts. Times the dispatcher compares (`next_attempt_at`,
-- `lease_until`, `failing_since`) are milliseconds on the database's clock, as task leases.
CREATE TABLE webhook_endpoints (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    url             TEXT NOT NULL,
    events          TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    secret          TEXT NOT NULL,
    previous_secret TEXT,
    previous_until  INTEGER,
    disabled        INTEGER NOT NULL DEFAULT 0,
    disabled_reason TEXT,
    failing_since   INTEGER,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX webhook_endpoints_by_user ON webhook_endpoints(user_id, created_at);

-- The secret that signs a user's one-off callbacks (`callback_url`, OGC subscribers).
CREATE TABLE webhook_callback_secrets (
    user_id         TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    secret          TEXT NOT NULL,
    previous_secret TEXT,
    previous_until  INTEGER
);

-- Where a task's own callbacks go, and for which events (a JSON array).
CREATE TABLE task_callbacks (
    task_id TEXT NOT NULL,
    url     TEXT NOT NULL,
    events  TEXT NOT NULL,
    PRIMARY KEY (task_id, url)
);

CREATE TABLE webhook_deliveries (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    endpoint_id     TEXT REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    callback_url    TEXT,
    target          TEXT NOT NULL,
    task_id         TEXT,
    event_type      TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL,
    tries           INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    created_at      TEXT NOT NULL,
    finished_at     TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_target ON webhook_deliveries(target, task_id, status);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries(endpoint_id, seq);
CREATE INDEX webhook_deliveries_by_task ON webhook_deliveries(task_id, seq);

CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    n           INTEGER NOT NULL,
    at          TEXT NOT NULL,
    status_code INTEGER,
    latency_ms  INTEGER NOT NULL,
    response    TEXT NOT NULL,
    error       TEXT,
    PRIMARY KEY (delivery_id, n)
);
