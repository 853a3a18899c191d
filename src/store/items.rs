//! Tree items: each user's folders and files. A file's bytes are a blob on disk whose name
//! the server chose; the item's `name` is display data only.

use serde::Serialize;
use uuid::Uuid;

use super::db::{vals, Db, Dialect, Row};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    File,
    Folder,
}

/// An item as the API shows it; `user_id` and `blob` never leave the server.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Item {
    pub id: Uuid,
    #[serde(skip)]
    pub user_id: Uuid,
    pub name: String,
    pub kind: ItemKind,
    pub parent_id: Option<Uuid>,
    pub size: u64,
    pub content_type: Option<String>,
    pub created_at: String,
    /// For a converted COG: its description, as in a task's `result`.
    #[schema(value_type = Option<crate::domain::geo::GeoRaster>)]
    pub geo_raster: Option<serde_json::Value>,
    /// For a converted COG: the item it was made from.
    pub source_id: Option<Uuid>,
    #[serde(skip)]
    pub blob: Option<String>,
}

pub struct NewItem {
    pub user_id: Uuid,
    pub parent_id: Option<Uuid>,
    pub name: String,
    pub kind: ItemKind,
    pub size: u64,
    pub content_type: Option<String>,
    pub blob: Option<String>,
    pub geo_raster: Option<serde_json::Value>,
    pub source_id: Option<Uuid>,
}

const COLUMNS: &str =
    "id, user_id, name, kind, parent_id, size, content_type, created_at, geo_raster, source_id, blob";

fn from_row(r: &Row) -> anyhow::Result<Item> {
    Ok(Item {
        id: r.uuid(0)?,
        user_id: r.uuid(1)?,
        name: r.text(2)?,
        kind: if r.text(3)? == "folder" {
            ItemKind::Folder
        } else {
            ItemKind::File
        },
        parent_id: r.opt_uuid(4)?,
        size: r.int(5)? as u64,
        content_type: r.opt_text(6)?,
        created_at: r.text(7)?,
        geo_raster: r.opt_text(8)?.and_then(|g| serde_json::from_str(&g).ok()),
        source_id: r.opt_uuid(9)?,
        blob: r.opt_text(10)?,
    })
}

/// Inserts an item; returns it as stored (`RETURNING`: one round trip, not a read after).
pub fn insert(db: &mut Db, new: NewItem) -> anyhow::Result<Item> {
    insert_as(db, Uuid::now_v7(), new)
}

/// [`insert`] with an id chosen before (`Uuid::now_v7`, as `insert` chooses them), for a
/// change that names the item before it exists.
pub fn insert_as(db: &mut Db, id: Uuid, new: NewItem) -> anyhow::Result<Item> {
    let row = db.query_one(
        &format!(
            "INSERT INTO items (id, user_id, name, kind, parent_id, size, content_type,
             created_at, geo_raster, source_id, blob) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,
             ?9, ?10, ?11) RETURNING {COLUMNS}"
        ),
        vals![
            id,
            new.user_id,
            new.name,
            if new.kind == ItemKind::Folder {
                "folder"
            } else {
                "file"
            },
            new.parent_id,
            new.size as i64,
            new.content_type,
            crate::time::now(),
            new.geo_raster.map(|g| g.to_string()),
            new.source_id,
            new.blob,
        ],
    )?;
    from_row(&row)
}

/// The item if it exists and belongs to `user`.
pub fn get(db: &mut Db, user: Uuid, id: Uuid) -> anyhow::Result<Option<Item>> {
    // By id alone, the owner checked here: with the owner in the WHERE clause, PostgreSQL
    // planning on a young table's empty statistics took the (user_id, parent_id) index and
    // then kept that plan for the prepared statement, reading every item the user has.
    Ok(db
        .query_opt(
            &format!("SELECT {COLUMNS} FROM items WHERE id = ?1"),
            vals![id],
        )?
        .as_ref()
        .map(from_row)
        .transpose()?
        .filter(|item| item.user_id == user))
}

/// True when `folder` is one of `user`'s folders.
pub fn is_folder(db: &mut Db, user: Uuid, folder: Uuid) -> anyhow::Result<bool> {
    Ok(get(db, user, folder)?.is_some_and(|i| i.kind == ItemKind::Folder))
}

pub fn children(db: &mut Db, user: Uuid, parent: Option<Uuid>) -> anyhow::Result<Vec<Item>> {
    let sql = match db.dialect() {
        Dialect::Sqlite => format!(
            "SELECT {COLUMNS} FROM items WHERE user_id = ?1 AND parent_id IS ?2
             ORDER BY kind DESC, name COLLATE NOCASE, id"
        ),
        Dialect::Postgres => format!(
            "SELECT {COLUMNS} FROM items WHERE user_id = ?1 AND parent_id IS NOT DISTINCT FROM ?2
             ORDER BY kind DESC, lower(name), id"
        ),
    };
    db.query(&sql, vals![user, parent])?
        .iter()
        .map(from_row)
        .collect()
}

/// Deletes an item and everything under it; returns the blobs that are now unreferenced,
/// or `None` when the item is not the user's.
pub fn delete_tree(db: &mut Db, user: Uuid, id: Uuid) -> anyhow::Result<Option<Vec<String>>> {
    db.atomically(|db| {
        if get(db, user, id)?.is_none() {
            return Ok(None);
        }
        let blobs = db
            .query(
                "WITH RECURSIVE sub(id) AS (
                     SELECT CAST(?1 AS TEXT) UNION ALL
                     SELECT i.id FROM items i JOIN sub ON i.parent_id = sub.id
                 )
                 SELECT blob FROM items WHERE id IN (SELECT id FROM sub) AND blob IS NOT NULL",
                vals![id],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Children go with it through ON DELETE CASCADE.
        db.execute("DELETE FROM items WHERE id = ?1", vals![id])?;
        Ok(Some(blobs))
    })
}

/// True when an item's bytes are `blob`.
pub fn refers_to_blob(db: &mut Db, blob: &str) -> anyhow::Result<bool> {
    Ok(db
        .query_opt("SELECT 1 FROM items WHERE blob = ?1", vals![blob])?
        .is_some())
}

/// Every blob name the database refers to, including sources of queued tasks and the chunks
/// of unfinished resumable uploads.
pub fn referenced_blobs(db: &mut Db) -> anyhow::Result<std::collections::HashSet<String>> {
    db.query(
        "SELECT blob FROM items WHERE blob IS NOT NULL
         UNION SELECT source_blob FROM tasks WHERE state IN ('PENDING', 'PROGRESS')
         UNION SELECT blob FROM resumable_upload_chunks",
        &[],
    )?
    .iter()
    .map(|r| r.text(0))
    .collect()
}
