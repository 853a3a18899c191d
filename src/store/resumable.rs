//! Resumable uploads (tus): each upload's row, and the chunks received so far, each a stored
//! blob. The offset a client resumes from (`received`) moves only in a conditional update
//! that also records the chunk, so two requests racing for one offset cannot both land.

use uuid::Uuid;

use super::db::{vals, Db, Row};

#[derive(Debug, Clone)]
pub struct Resumable {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub parent_id: Option<Uuid>,
    pub content_type: Option<String>,
    /// `None` while the client defers it.
    pub length: Option<u64>,
    /// Bytes received and stored durably: where the client resumes.
    pub received: u64,
    /// The `Upload-Metadata` header as sent, echoed on `HEAD`.
    pub metadata: String,
    /// Conversion options (JSON) to queue once complete.
    pub convert: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub item_id: Option<Uuid>,
    pub task_id: Option<Uuid>,
    pub conversion_error: Option<String>,
}

impl Resumable {
    pub fn complete(&self) -> bool {
        self.item_id.is_some()
    }
}

pub struct NewResumable {
    pub user_id: Uuid,
    pub name: String,
    pub parent_id: Option<Uuid>,
    pub content_type: Option<String>,
    pub length: Option<u64>,
    pub metadata: String,
    pub convert: Option<String>,
    pub expires_at: String,
}

/// One accepted chunk: `size` bytes from `start`, stored as `blob`.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub start: u64,
    pub size: u64,
    pub blob: String,
}

const COLUMNS: &str = "id, user_id, name, parent_id, content_type, length, received, metadata,
    convert, created_at, expires_at, item_id, task_id, conversion_error";

fn from_row(r: &Row) -> anyhow::Result<Resumable> {
    Ok(Resumable {
        id: r.uuid(0)?,
        user_id: r.uuid(1)?,
        name: r.text(2)?,
        parent_id: r.opt_uuid(3)?,
        content_type: r.opt_text(4)?,
        length: r.opt_int(5)?.map(|n| n as u64),
        received: r.int(6)? as u64,
        metadata: r.text(7)?,
        convert: r.opt_text(8)?,
        created_at: r.text(9)?,
        expires_at: r.text(10)?,
        item_id: r.opt_uuid(11)?,
        task_id: r.opt_uuid(12)?,
        conversion_error: r.opt_text(13)?,
    })
}

/// Creates an upload, unless `user` already has `max_open` unfinished ones (`None`).
pub fn create(db: &mut Db, new: NewResumable, max_open: u64) -> anyhow::Result<Option<Resumable>> {
    db.atomically(|db| {
        let open = db
            .query_one(
                "SELECT COUNT(*) FROM resumable_uploads WHERE user_id = ?1 AND item_id IS NULL
                 AND expires_at > ?2",
                vals![new.user_id, crate::time::now()],
            )?
            .int(0)?;
        if open as u64 >= max_open {
            return Ok(None);
        }
        let id = Uuid::new_v4();
        db.execute(
            "INSERT INTO resumable_uploads (id, user_id, name, parent_id, content_type, length,
             received, metadata, convert, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10)",
            vals![
                id,
                new.user_id,
                new.name,
                new.parent_id,
                new.content_type,
                new.length.map(|n| n as i64),
                new.metadata,
                new.convert,
                crate::time::now(),
                new.expires_at,
            ],
        )?;
        get(db, new.user_id, id)
    })
}

/// The upload if it exists, is `user`'s and has not expired.
pub fn get(db: &mut Db, user: Uuid, id: Uuid) -> anyhow::Result<Option<Resumable>> {
    db.query_opt(
        &format!(
            "SELECT {COLUMNS} FROM resumable_uploads WHERE id = ?1 AND user_id = ?2
             AND expires_at > ?3"
        ),
        vals![id, user, crate::time::now()],
    )?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// `user`'s unfinished uploads, oldest first.
pub fn unfinished(db: &mut Db, user: Uuid) -> anyhow::Result<Vec<Resumable>> {
    db.query(
        &format!(
            "SELECT {COLUMNS} FROM resumable_uploads WHERE user_id = ?1 AND item_id IS NULL
             AND expires_at > ?2 ORDER BY created_at, id"
        ),
        vals![user, crate::time::now()],
    )?
    .iter()
    .map(from_row)
    .collect()
}

/// `user`'s upload as a request starts writing to it, with how many chunks it holds; an
/// unfinished one's expiry moves to `expires_at`, so that it does not expire however long the
/// request takes.
pub fn start_writing(
    db: &mut Db,
    user: Uuid,
    id: Uuid,
    expires_at: &str,
) -> anyhow::Result<Option<(Resumable, u64)>> {
    db.execute(
        "UPDATE resumable_uploads SET expires_at = ?3
         WHERE id = ?1 AND user_id = ?2 AND item_id IS NULL AND expires_at > ?4",
        vals![id, user, expires_at, crate::time::now()],
    )?;
    let Some(upload) = get(db, user, id)? else {
        return Ok(None);
    };
    let chunks = db
        .query_one(
            "SELECT COUNT(*) FROM resumable_upload_chunks WHERE upload_id = ?1",
            vals![id],
        )?
        .int(0)? as u64;
    Ok(Some((upload, chunks)))
}

/// Sets a deferred length; false when it was set meanwhile.
pub fn set_length(db: &mut Db, id: Uuid, length: u64) -> anyhow::Result<bool> {
    Ok(db.execute(
        "UPDATE resumable_uploads SET length = ?2 WHERE id = ?1 AND length IS NULL",
        vals![id, length as i64],
    )? == 1)
}

/// Records `chunk` and moves the offset past it, if the offset still is `chunk.start` (false
/// otherwise: another request got there first, and `chunk.blob` is the caller's to remove).
pub fn append(db: &mut Db, id: Uuid, chunk: &Chunk, expires_at: &str) -> anyhow::Result<bool> {
    db.atomically(|db| {
        let moved = db.execute(
            "UPDATE resumable_uploads SET received = ?2, expires_at = ?3
             WHERE id = ?1 AND received = ?4 AND item_id IS NULL",
            vals![
                id,
                (chunk.start + chunk.size) as i64,
                expires_at,
                chunk.start as i64
            ],
        )?;
        if moved == 0 {
            return Ok(false);
        }
        db.execute(
            "INSERT INTO resumable_upload_chunks (upload_id, start, size, blob)
             VALUES (?1, ?2, ?3, ?4)",
            vals![
                id,
                chunk.start as i64,
                chunk.size as i64,
                chunk.blob.clone()
            ],
        )?;
        Ok(true)
    })
}

/// The chunks received, in order.
pub fn chunks(db: &mut Db, id: Uuid) -> anyhow::Result<Vec<Chunk>> {
    db.query(
        "SELECT start, size, blob FROM resumable_upload_chunks WHERE upload_id = ?1
         ORDER BY start",
        vals![id],
    )?
    .iter()
    .map(|r| {
        Ok(Chunk {
            start: r.int(0)? as u64,
            size: r.int(1)? as u64,
            blob: r.text(2)?,
        })
    })
    .collect()
}

/// Marks the upload complete as `item`, if it still is at offset `from`; forgets its chunks
/// and returns their blobs (the caller removes them). `None`: another request got there first.
/// Call it inside the transaction that inserts the item.
pub fn complete(
    db: &mut Db,
    id: Uuid,
    from: u64,
    length: u64,
    item: Uuid,
) -> anyhow::Result<Option<Vec<String>>> {
    let done = db.execute(
        "UPDATE resumable_uploads SET received = ?2, length = ?2, item_id = ?3
         WHERE id = ?1 AND received = ?4 AND item_id IS NULL AND (length IS NULL OR length = ?2)",
        vals![id, length as i64, item, from as i64],
    )?;
    if done == 0 {
        return Ok(None);
    }
    let blobs = chunks(db, id)?.into_iter().map(|c| c.blob).collect();
    db.execute(
        "DELETE FROM resumable_upload_chunks WHERE upload_id = ?1",
        vals![id],
    )?;
    Ok(Some(blobs))
}

/// Records the conversion queued on completion, or why none could be.
pub fn set_conversion(
    db: &mut Db,
    id: Uuid,
    task: Option<Uuid>,
    error: Option<String>,
) -> anyhow::Result<()> {
    db.execute(
        "UPDATE resumable_uploads SET task_id = ?2, conversion_error = ?3 WHERE id = ?1",
        vals![id, task, error],
    )?;
    Ok(())
}

/// Deletes `user`'s upload; returns the blobs of its chunks, or `None` when there is no such
/// upload of theirs.
pub fn delete(db: &mut Db, user: Uuid, id: Uuid) -> anyhow::Result<Option<Vec<String>>> {
    db.atomically(|db| {
        if get(db, user, id)?.is_none() {
            return Ok(None);
        }
        let blobs = chunks(db, id)?.into_iter().map(|c| c.blob).collect();
        db.execute("DELETE FROM resumable_uploads WHERE id = ?1", vals![id])?;
        Ok(Some(blobs))
    })
}

/// Deletes uploads that expired before `now` (RFC 3339), at most `limit`; returns how many,
/// and the blobs of their chunks (the caller removes them).
pub fn expire(db: &mut Db, now: &str, limit: i64) -> anyhow::Result<(usize, Vec<String>)> {
    db.atomically(|db| {
        let ids = db
            .query(
                "SELECT id FROM resumable_uploads WHERE expires_at <= ?1 ORDER BY expires_at
                 LIMIT ?2",
                vals![now, limit],
            )?
            .iter()
            .map(|r| r.uuid(0))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (mut count, mut blobs) = (0, Vec::new());
        for id in &ids {
            let held = chunks(db, *id)?;
            // Still expired: on PostgreSQL, a chunk appended meanwhile (which moved the
            // expiry) makes this delete nothing.
            if db.execute(
                "DELETE FROM resumable_uploads WHERE id = ?1 AND expires_at <= ?2",
                vals![*id, now],
            )? == 1
            {
                count += 1;
                blobs.extend(held.into_iter().map(|c| c.blob));
            }
        }
        Ok((count, blobs))
    })
}
