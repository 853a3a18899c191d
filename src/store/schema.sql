-- Version 1. Ids are UUID strings; times are RFC 3339 UTC strings.
CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);

-- Only a SHA-256 of each token's secret is kept.
CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    secret_hash  BLOB NOT NULL,
    created_at   TEXT NOT NULL,
    last_used_at TEXT
);

CREATE TABLE items (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    parent_id     TEXT REFERENCES items(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('file', 'folder')),
    size          INTEGER NOT NULL DEFAULT 0,
    content_type  TEXT,
    blob          TEXT UNIQUE,
    created_at    TEXT NOT NULL,
    geo_raster    TEXT,
    source_id     TEXT
);
CREATE INDEX items_by_parent ON items(user_id, parent_id);

-- `seq` orders the FIFO queue; `id` is the client-facing capability.
CREATE TABLE tasks (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,
    user_id           TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    source_id         TEXT NOT NULL,
    source_blob       TEXT NOT NULL,
    source_name       TEXT NOT NULL,
    parent_id         TEXT,
    options           TEXT NOT NULL,
    state             TEXT NOT NULL,
    progress          REAL NOT NULL DEFAULT 0,
    status            TEXT NOT NULL,
    result            TEXT,
    error             TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL,
    started_at        TEXT,
    finished_at       TEXT
);
CREATE INDEX tasks_by_state ON tasks(state, seq);
CREATE INDEX tasks_by_user ON tasks(user_id, seq);
