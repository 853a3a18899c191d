-- Resumable uploads (tus 1.0.0, `/api/v1/uploads`). The bytes received so far are
-- stored blobs, one per accepted chunk, joined into the item's file on completion.
CREATE TABLE resumable_uploads (
    id               TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    parent_id        TEXT,
    content_type     TEXT,
    length           BIGINT,
    received         BIGINT NOT NULL DEFAULT 0,
    metadata         TEXT NOT NULL,
    convert          TEXT,
    created_at       TEXT NOT NULL,
    expires_at       TEXT NOT NULL,
    item_id          TEXT,
    task_id          TEXT,
    conversion_error TEXT
);
CREATE INDEX resumable_uploads_by_user ON resumable_uploads(user_id, created_at);
CREATE INDEX resumable_uploads_by_expiry ON resumable_uploads(expires_at);

CREATE TABLE resumable_upload_chunks (
    upload_id  TEXT NOT NULL REFERENCES resumable_uploads(id) ON DELETE CASCADE,
    start      BIGINT NOT NULL,
    size       BIGINT NOT NULL,
    blob       TEXT NOT NULL,
    PRIMARY KEY (upload_id, start)
);
