-- Retries with backoff, priorities, fair share between users, retention, idempotent
-- requests.
ALTER TABLE tasks ADD COLUMN not_before BIGINT;        -- ms since the epoch (database clock)
ALTER TABLE tasks ADD COLUMN last_error TEXT;
ALTER TABLE tasks ADD COLUMN priority BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN retry_of TEXT;
-- The queue's order (store/queue.rs): per user, by priority then age; covering, so that
-- choosing whose turn it is reads the index alone.
CREATE INDEX tasks_queue ON tasks(state, user_id, priority, seq, not_before);
CREATE INDEX tasks_finished ON tasks(finished_at);

-- When each user's task last started: the queue serves the least recently served user first.
CREATE TABLE queue_turns (
    user_id  TEXT PRIMARY KEY,
    served   BIGINT NOT NULL
);

-- Expired tasks' ids, so that their pollers get 410 Gone instead of looping on 404.
CREATE TABLE task_tombstones (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    expired_at  TEXT NOT NULL
);

-- The first answer to a request sent with an Idempotency-Key, per user and key.
CREATE TABLE idempotency_keys (
    user_id       TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        BIGINT NOT NULL,
    response      TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
);
