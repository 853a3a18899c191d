-- The schema of SQLite's migrations 1 to 3, in PostgreSQL's words. Column types follow SQLite's
-- (ids and times as text, 64-bit integers, flags as 0/1) so that one statement serves both.
CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    secret_hash  BYTEA NOT NULL,
    created_at   TEXT NOT NULL,
    last_used_at TEXT
);

CREATE TABLE items (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    parent_id     TEXT REFERENCES items(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('file', 'folder')),
    size          BIGINT NOT NULL DEFAULT 0,
    content_type  TEXT,
    blob          TEXT UNIQUE,
    created_at    TEXT NOT NULL,
    geo_raster    TEXT,
    source_id     TEXT
);
CREATE INDEX items_by_parent ON items(user_id, parent_id);

CREATE TABLE tasks (
    seq               BIGSERIAL PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    user_id           TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    source_id         TEXT NOT NULL,
    source_blob       TEXT NOT NULL,
    source_name       TEXT NOT NULL,
    parent_id         TEXT,
    options           TEXT NOT NULL,
    state             TEXT NOT NULL,
    progress          DOUBLE PRECISION NOT NULL DEFAULT 0,
    status            TEXT NOT NULL,
    result            TEXT,
    error             TEXT,
    attempts          BIGINT NOT NULL DEFAULT 0,
    cancel_requested  BIGINT NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL,
    started_at        TEXT,
    finished_at       TEXT
);
CREATE INDEX tasks_by_state ON tasks(state, seq);
CREATE INDEX tasks_by_user ON tasks(user_id, seq);

CREATE TABLE sessions (
    secret_hash  BYTEA PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_id     TEXT REFERENCES tokens(id) ON DELETE CASCADE,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);
