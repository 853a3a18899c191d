//! Tree items: each user's folders and files. A file's bytes are a blob on disk whose name
//! the server chose; the item's `name` is display data only.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use uuid::Uuid;

use super::{opt_uuid, parse_uuid};

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
    #[schema(value_type = Option<crate::convert::GeoRaster>)]
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

fn from_row(r: &Row) -> rusqlite::Result<Item> {
    let geo: Option<String> = r.get(8)?;
    Ok(Item {
        id: parse_uuid(r.get(0)?)?,
        user_id: parse_uuid(r.get(1)?)?,
        name: r.get(2)?,
        kind: if r.get::<_, String>(3)? == "folder" {
            ItemKind::Folder
        } else {
            ItemKind::File
        },
        parent_id: opt_uuid(r.get(4)?)?,
        size: r.get::<_, i64>(5)? as u64,
        content_type: r.get(6)?,
        created_at: r.get(7)?,
        geo_raster: geo.and_then(|g| serde_json::from_str(&g).ok()),
        source_id: opt_uuid(r.get(9)?)?,
        blob: r.get(10)?,
    })
}

pub fn insert(conn: &Connection, new: NewItem) -> anyhow::Result<Item> {
    let id = Uuid::now_v7();
    conn.prepare_cached(
        "INSERT INTO items (id, user_id, name, kind, parent_id, size, content_type,
         created_at, geo_raster, source_id, blob) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,
         ?9, ?10, ?11)",
    )?
    .execute(params![
        id.to_string(),
        new.user_id.to_string(),
        new.name,
        if new.kind == ItemKind::Folder {
            "folder"
        } else {
            "file"
        },
        new.parent_id.map(|p| p.to_string()),
        new.size as i64,
        new.content_type,
        crate::time::now(),
        new.geo_raster.map(|g| g.to_string()),
        new.source_id.map(|s| s.to_string()),
        new.blob,
    ])?;
    Ok(get(conn, new.user_id, id)?.expect("just inserted"))
}

/// The item if it exists and belongs to `user`.
pub fn get(conn: &Connection, user: Uuid, id: Uuid) -> anyhow::Result<Option<Item>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM items WHERE id = ?1 AND user_id = ?2"
        ))?
        .query_row(params![id.to_string(), user.to_string()], from_row)
        .optional()?)
}

/// True when `folder` is one of `user`'s folders.
pub fn is_folder(conn: &Connection, user: Uuid, folder: Uuid) -> anyhow::Result<bool> {
    Ok(get(conn, user, folder)?.is_some_and(|i| i.kind == ItemKind::Folder))
}

pub fn children(conn: &Connection, user: Uuid, parent: Option<Uuid>) -> anyhow::Result<Vec<Item>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM items WHERE user_id = ?1 AND parent_id IS ?2
         ORDER BY kind DESC, name COLLATE NOCASE, id"
    ))?;
    let rows = stmt.query_map(
        params![user.to_string(), parent.map(|p| p.to_string())],
        from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deletes an item and everything under it; returns the blobs that are now unreferenced,
/// or `None` when the item is not the user's.
pub fn delete_tree(
    conn: &mut Connection,
    user: Uuid,
    id: Uuid,
) -> anyhow::Result<Option<Vec<String>>> {
    let tx = conn.transaction()?;
    if get(&tx, user, id)?.is_none() {
        return Ok(None);
    }
    let blobs = {
        let mut stmt = tx.prepare(
            "WITH RECURSIVE sub(id) AS (
                 SELECT ?1 UNION ALL SELECT i.id FROM items i JOIN sub ON i.parent_id = sub.id
             )
             SELECT blob FROM items WHERE id IN (SELECT id FROM sub) AND blob IS NOT NULL",
        )?;
        let rows = stmt.query_map([id.to_string()], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    // Children go with it through ON DELETE CASCADE.
    tx.prepare_cached("DELETE FROM items WHERE id = ?1")?
        .execute([id.to_string()])?;
    tx.commit()?;
    Ok(Some(blobs))
}

/// Every blob name the database refers to, including sources of queued tasks.
pub fn referenced_blobs(conn: &Connection) -> anyhow::Result<std::collections::HashSet<String>> {
    let mut stmt = conn.prepare(
        "SELECT blob FROM items WHERE blob IS NOT NULL
         UNION SELECT source_blob FROM tasks WHERE state IN ('PENDING', 'PROGRESS')",
    )?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
