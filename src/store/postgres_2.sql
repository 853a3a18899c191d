-- Version 2: the event log that carries task events between nodes. Each event is written in the
-- transaction of the change it announces; `seq` comes from one sequence, taken under an
-- advisory lock so that seq order is commit order. It starts from the clock in microseconds,
-- as the in-process bus does, so a Last-Event-ID from an older deployment is never ahead.
CREATE SEQUENCE task_events_seq;
SELECT setval('task_events_seq', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
CREATE TABLE task_events (
    seq       BIGINT PRIMARY KEY,
    task_id   TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    kind      TEXT NOT NULL,
    state     TEXT NOT NULL,
    sse       BYTEA NOT NULL,
    -- When it was written (milliseconds, the database's clock): young events are never pruned.
    at_ms     BIGINT NOT NULL DEFAULT CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)
);

-- A running task is leased to the node that claimed it (see store/tasks.rs).
ALTER TABLE tasks ADD COLUMN lease_owner TEXT, ADD COLUMN lease_until BIGINT;
CREATE INDEX tasks_by_lease ON tasks(state, lease_until);
