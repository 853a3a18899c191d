//! Users and their bearer tokens. A token is `rc_<id>_<secret>`: the id finds the row, the
//! secret is checked against a stored SHA-256 in constant time.

use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::parse_uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    pub created_at: String,
}

pub fn user_count(conn: &Connection) -> anyhow::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM users")?
        .query_row([], |r| r.get(0))?)
}

pub fn ensure_user(conn: &Connection, name: &str) -> anyhow::Result<User> {
    let name = name.trim();
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || "._-@".contains(c)),
        "a user name is 1 to 64 letters, digits or . _ - @"
    );
    conn.prepare_cached(
        "INSERT INTO users (id, name, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(name)
         DO NOTHING",
    )?
    .execute(params![
        Uuid::new_v4().to_string(),
        name,
        crate::time::now()
    ])?;
    let id = conn
        .prepare_cached("SELECT id FROM users WHERE name = ?1")?
        .query_row([name], |r| parse_uuid(r.get(0)?))?;
    Ok(User {
        id,
        name: name.to_string(),
    })
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Creates a token for `user` and returns it; this is the only time it exists in clear.
pub fn create_token(conn: &Connection, user: &User) -> anyhow::Result<String> {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut id);
    rand::thread_rng().fill_bytes(&mut secret);
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    conn.prepare_cached(
        "INSERT INTO tokens (id, user_id, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        id,
        user.id.to_string(),
        hash(&secret),
        crate::time::now()
    ])?;
    Ok(format!("rc_{id}_{secret}"))
}

/// A token's `(id, secret)`: tokens read `rc_<id>_<secret>`.
fn token_parts(token: &str) -> Option<(&str, &str)> {
    token.strip_prefix("rc_")?.split_once('_')
}

/// The user a token belongs to, or `None` for a malformed, unknown or revoked token.
pub fn authenticate(conn: &Connection, token: &str) -> anyhow::Result<Option<User>> {
    let Some((id, secret)) = token_parts(token) else {
        return Ok(None);
    };
    let row = conn
        .prepare_cached(
            "SELECT t.secret_hash, u.id, u.name FROM tokens t JOIN users u ON u.id =
         t.user_id WHERE t.id = ?1",
        )?
        .query_row([id], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .optional()?;
    let Some((stored, user_id, name)) = row else {
        return Ok(None);
    };
    if !bool::from(stored.ct_eq(&hash(secret))) {
        return Ok(None);
    }
    Ok(Some(User {
        id: parse_uuid(user_id)?,
        name,
    }))
}

pub fn list_tokens(conn: &Connection) -> anyhow::Result<Vec<TokenInfo>> {
    let mut stmt = conn.prepare(
        "SELECT t.id, u.name, t.created_at FROM tokens t JOIN users u ON u.id = t.user_id ORDER BY t.created_at",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(TokenInfo {
            id: r.get(0)?,
            user: r.get(1)?,
            created_at: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Revokes by token id (the part after `rc_`, as `token list` shows it). True if one existed.
pub fn revoke_token(conn: &Connection, id: &str) -> anyhow::Result<bool> {
    let id = id.strip_prefix("rc_").unwrap_or(id);
    let id = id.split('_').next().unwrap_or(id);
    Ok(conn
        .prepare_cached("DELETE FROM tokens WHERE id = ?1")?
        .execute([id])?
        > 0)
}

/// How long a browser session lasts.
pub const SESSION_DAYS: i64 = 30;

/// Signs in with `token`: a session for its user, ended with the token when that is revoked.
/// Returns the session's secret, which only the cookie holds, or `None` for a bad token.
pub fn sign_in(conn: &Connection, token: &str) -> anyhow::Result<Option<(String, User)>> {
    let Some(user) = authenticate(conn, token)? else {
        return Ok(None);
    };
    let token_id = token_parts(token).map(|(id, _)| id);
    Ok(Some((create_session(conn, &user, token_id)?, user)))
}

fn create_session(
    conn: &Connection,
    user: &User,
    token_id: Option<&str>,
) -> anyhow::Result<String> {
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    let now = chrono::Utc::now();
    let expires = now + chrono::Duration::days(SESSION_DAYS);
    conn.prepare_cached(
        "INSERT INTO sessions (secret_hash, user_id, token_id, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        hash(&secret),
        user.id.to_string(),
        token_id,
        crate::time::format(now),
        crate::time::format(expires)
    ])?;
    Ok(secret)
}

/// The user of a live session. The secret is looked up by its hash, so timing reveals nothing.
pub fn session_user(conn: &Connection, secret: &str) -> anyhow::Result<Option<User>> {
    let row = conn
        .prepare_cached(
            "SELECT u.id, u.name FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.secret_hash = ?1 AND s.expires_at > ?2",
        )?
        .query_row(params![hash(secret), crate::time::now()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .optional()?;
    row.map(|(id, name)| {
        Ok(User {
            id: parse_uuid(id)?,
            name,
        })
    })
    .transpose()
}

pub fn delete_session(conn: &Connection, secret: &str) -> anyhow::Result<()> {
    conn.prepare_cached("DELETE FROM sessions WHERE secret_hash = ?1")?
        .execute([hash(secret)])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("db.sqlite")).unwrap();
        store
            .blocking(|c| {
                let alice = ensure_user(c, "alice")?;
                let token = create_token(c, &alice)?;
                assert_eq!(authenticate(c, &token)?, Some(alice.clone()));
                let mut forged = token.clone();
                forged.pop();
                forged.push('x');
                assert_eq!(authenticate(c, &forged)?, None);
                assert_eq!(authenticate(c, "rc_nope")?, None);
                let id = &list_tokens(c)?[0].id;
                assert!(revoke_token(c, id)?);
                assert_eq!(authenticate(c, &token)?, None);
                Ok(())
            })
            .unwrap();
    }
}
