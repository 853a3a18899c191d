-- Version 3: a session belongs to the token it was signed in with, so that revoking the token
-- ends its sessions too. Older sessions cannot be traced to a token: they end here.
DELETE FROM sessions;
ALTER TABLE sessions ADD COLUMN token_id TEXT REFERENCES tokens(id) ON DELETE CASCADE;
