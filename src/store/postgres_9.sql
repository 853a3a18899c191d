-- Each user's queued tasks in order of arrival, so that the queue's turns (store/queue.rs)
-- find the oldest due task of each waiting user at the front of an index, where they
-- grouped every queued task by user: a claim costs about the same however long the queue is.
CREATE INDEX tasks_pending_by_seq ON tasks(user_id, seq, not_before) WHERE state = 'PENDING';
