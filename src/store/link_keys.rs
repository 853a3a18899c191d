//! The secret that signs shareable links, one for every node (it lives in the database).

use super::db::{vals, Db};

/// The link key, made on first use.
pub fn get_or_create(db: &mut Db) -> anyhow::Result<Vec<u8>> {
    db.execute(
        "INSERT INTO link_keys (id, secret, created_at) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO NOTHING",
        vals![fresh(), crate::time::now()],
    )?;
    db.query_one("SELECT secret FROM link_keys WHERE id = 1", &[])?
        .blob(0)
}

/// Replaces the link key: every link signed with the old one stops working.
pub fn rotate(db: &mut Db) -> anyhow::Result<()> {
    db.execute(
        "INSERT INTO link_keys (id, secret, created_at) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET secret = excluded.secret,
         created_at = excluded.created_at",
        vals![fresh(), crate::time::now()],
    )?;
    Ok(())
}

fn fresh() -> Vec<u8> {
    use rand::RngCore;
    let mut key = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}
