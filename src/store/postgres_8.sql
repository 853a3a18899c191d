-- Indexes that hold only the rows their queries read. A task's row is rewritten at each
-- step of its run (claim, progress, end), and every rewrite that is not HOT adds an entry
-- to every index on the table; a partial index gets one only while the row matches it.
-- The queue's order (store/queue.rs) is read from the pending tasks alone, priority first
-- and descending as the pick sorts, so the pick reads the top entry instead of sorting the
-- user's queue; the running tasks serve the lease sweep and a user's active count.
-- The state index goes: the partial ones answer every query by state, and a statement that
-- names a task by id and checks its state (each step's UPDATE) was planned on a young
-- table's empty statistics through it, reading every task in that state.
DROP INDEX tasks_queue;
DROP INDEX tasks_by_state;
DROP INDEX tasks_by_lease;
CREATE INDEX tasks_pending ON tasks(user_id, priority DESC, seq, not_before)
    WHERE state = 'PENDING';
CREATE INDEX tasks_running ON tasks(user_id, lease_until) WHERE state = 'PROGRESS';
