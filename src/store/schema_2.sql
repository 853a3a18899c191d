-- Version 2: browser sessions, set as an HttpOnly cookie by signing in with a token.
CREATE TABLE sessions (
    secret_hash  BLOB PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);
