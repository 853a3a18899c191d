-- Version 4: a running task is leased to the process that claimed it (see store/tasks.rs).
ALTER TABLE tasks ADD COLUMN lease_owner TEXT;
ALTER TABLE tasks ADD COLUMN lease_until INTEGER;
