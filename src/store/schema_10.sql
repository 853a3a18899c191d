-- Version 10: the queue read from indexes of the queued tasks alone, in the orders its
-- statements (store/queue.rs) ask for, so that a claim costs about the same however long
-- the queue is. Before, a claim grouped every queued task by user to find whose turn it
-- was, then sorted that user's queue by priority to find the next task.
-- Each user's queued tasks in the order they are picked (as PostgreSQL's `tasks_pending`):
CREATE INDEX tasks_pending ON tasks(user_id, priority DESC, seq, not_before)
    WHERE state = 'PENDING';
-- ...and in order of arrival, for the user who waited longest:
CREATE INDEX tasks_pending_by_seq ON tasks(user_id, seq, not_before) WHERE state = 'PENDING';
