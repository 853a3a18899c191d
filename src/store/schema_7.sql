-- Version 7: the key that signs shareable links to files (`POST /tree-items/{id}/links`).
-- Replacing it (`rastercast link-key rotate`) voids every link given out.
CREATE TABLE link_keys (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    secret      BLOB NOT NULL,
    created_at  TEXT NOT NULL
);
