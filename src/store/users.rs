//! Users and their bearer tokens. A token is `rc_<id>_<secret>`: the id finds the row, the
//! secret is checked against a stored SHA-256 in constant time.

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::db::{vals, Db};

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

pub fn user_count(db: &mut Db) -> anyhow::Result<i64> {
    db.query_one("SELECT COUNT(*) FROM users", &[])?.int(0)
}

/// The user `name`, created if it does not exist yet.
pub fn ensure_user(db: &mut Db, name: &str) -> anyhow::Result<User> {
    if let Some(user) = create_user(db, name)? {
        return Ok(user);
    }
    let name = name.trim();
    let id = db
        .query_one("SELECT id FROM users WHERE name = ?1", vals![name])?
        .uuid(0)?;
    Ok(User {
        id,
        name: name.to_string(),
    })
}

/// Creates the user `name`, or returns `None` if it exists already (made by another node, say:
/// a concurrent insert of the same name waits for the first to commit, then inserts nothing).
pub fn create_user(db: &mut Db, name: &str) -> anyhow::Result<Option<User>> {
    let name = name.trim();
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || "._-@".contains(c)),
        "a user name is 1 to 64 letters, digits or . _ - @"
    );
    let id = Uuid::new_v4();
    let inserted = db.execute(
        "INSERT INTO users (id, name, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(name)
         DO NOTHING",
        vals![id, name, crate::time::now()],
    )?;
    Ok((inserted > 0).then(|| User {
        id,
        name: name.to_string(),
    }))
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Creates a token for `user` and returns it; this is the only time it exists in clear.
pub fn create_token(db: &mut Db, user: &User) -> anyhow::Result<String> {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut id);
    rand::thread_rng().fill_bytes(&mut secret);
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    db.execute(
        "INSERT INTO tokens (id, user_id, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        vals![&id, user.id, hash(&secret), crate::time::now()],
    )?;
    Ok(format!("rc_{id}_{secret}"))
}

/// What a caller signed in with, so that streams opened with it can be ended when it is
/// revoked: a token (by id) or a browser session (by its secret's hash).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    Token(String),
    Session(Vec<u8>),
}

impl Credential {
    /// The credential of a token as a client sends it (`rc_<id>_<secret>`).
    pub fn of_token(token: &str) -> Credential {
        Credential::Token(token_id(token).to_string())
    }

    /// The credential of a session cookie's secret.
    pub fn of_session(secret: &str) -> Credential {
        Credential::Session(hash(secret))
    }
}

/// Whether `credential` still signs anyone in: the token is not revoked, the session not
/// ended, expired, or cut off with its token.
pub fn is_valid(db: &mut Db, credential: &Credential) -> anyhow::Result<bool> {
    let row = match credential {
        Credential::Token(id) => db.query_opt("SELECT 1 FROM tokens WHERE id = ?1", vals![id])?,
        Credential::Session(key) => db.query_opt(
            "SELECT 1 FROM sessions WHERE secret_hash = ?1 AND expires_at > ?2",
            vals![key.clone(), crate::time::now()],
        )?,
    };
    Ok(row.is_some())
}

/// A token's id, as `token list` shows it ("" for a malformed token).
pub fn token_id(token: &str) -> &str {
    token_parts(token).map_or("", |(id, _)| id)
}

/// A token's `(id, secret)`: tokens read `rc_<id>_<secret>`.
fn token_parts(token: &str) -> Option<(&str, &str)> {
    token.strip_prefix("rc_")?.split_once('_')
}

/// The user a token belongs to, or `None` for a malformed, unknown or revoked token.
pub fn authenticate(db: &mut Db, token: &str) -> anyhow::Result<Option<User>> {
    let Some((id, secret)) = token_parts(token) else {
        return Ok(None);
    };
    let row = db.query_opt(
        "SELECT t.secret_hash, u.id, u.name FROM tokens t JOIN users u ON u.id =
         t.user_id WHERE t.id = ?1",
        vals![id],
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    if !bool::from(row.blob(0)?.ct_eq(&hash(secret))) {
        return Ok(None);
    }
    Ok(Some(User {
        id: row.uuid(1)?,
        name: row.text(2)?,
    }))
}

pub fn list_tokens(db: &mut Db) -> anyhow::Result<Vec<TokenInfo>> {
    db.query(
        "SELECT t.id, u.name, t.created_at FROM tokens t JOIN users u ON u.id = t.user_id ORDER BY t.created_at",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok(TokenInfo {
            id: r.text(0)?,
            user: r.text(1)?,
            created_at: r.text(2)?,
        })
    })
    .collect()
}

/// Revokes by token id (the part after `rc_`, as `token list` shows it). True if one existed.
pub fn revoke_token(db: &mut Db, id: &str) -> anyhow::Result<bool> {
    let id = id.strip_prefix("rc_").unwrap_or(id);
    let id = id.split('_').next().unwrap_or(id);
    let revoked = db.execute("DELETE FROM tokens WHERE id = ?1", vals![id])? > 0;
    if revoked {
        credentials_changed(db)?;
    }
    Ok(revoked)
}

/// How long a browser session lasts.
pub const SESSION_DAYS: i64 = 30;

/// Signs in with `token`: a session for its user, ended with the token when that is revoked.
/// Returns the session's secret, which only the cookie holds, or `None` for a bad token.
pub fn sign_in(db: &mut Db, token: &str) -> anyhow::Result<Option<(String, User)>> {
    let Some(user) = authenticate(db, token)? else {
        return Ok(None);
    };
    let token_id = token_parts(token).map(|(id, _)| id);
    // Expired sessions are removed here rather than on a timer: sign-ins are what add rows.
    db.execute(
        "DELETE FROM sessions WHERE expires_at <= ?1",
        vals![crate::time::now()],
    )?;
    Ok(Some((create_session(db, &user, token_id)?, user)))
}

fn create_session(db: &mut Db, user: &User, token_id: Option<&str>) -> anyhow::Result<String> {
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    let now = chrono::Utc::now();
    let expires = now + chrono::Duration::days(SESSION_DAYS);
    db.execute(
        "INSERT INTO sessions (secret_hash, user_id, token_id, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        vals![
            hash(&secret),
            user.id,
            token_id,
            crate::time::format(now),
            crate::time::format(expires)
        ],
    )?;
    Ok(secret)
}

/// The user of a live session (a [`Credential::of_session`]). The secret is looked up by its
/// hash, so timing reveals nothing.
pub fn session_user(db: &mut Db, session: &Credential) -> anyhow::Result<Option<User>> {
    let Credential::Session(key) = session else {
        return Ok(None);
    };
    db.query_opt(
        "SELECT u.id, u.name FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.secret_hash = ?1 AND s.expires_at > ?2",
        vals![key.clone(), crate::time::now()],
    )?
    .map(|r| {
        Ok(User {
            id: r.uuid(0)?,
            name: r.text(1)?,
        })
    })
    .transpose()
}

pub fn delete_session(db: &mut Db, secret: &str) -> anyhow::Result<()> {
    let ended = db.execute(
        "DELETE FROM sessions WHERE secret_hash = ?1",
        vals![hash(secret)],
    )?;
    if ended > 0 {
        credentials_changed(db)?;
    }
    Ok(())
}

fn credentials_changed(db: &mut Db) -> anyhow::Result<()> {
    db.execute("UPDATE credential_changes SET n = n + 1", &[])?;
    Ok(())
}

/// A number that changes whenever a token is revoked or a session ended, on any node.
pub fn credential_changes(db: &mut Db) -> anyhow::Result<i64> {
    db.query_one("SELECT n FROM credential_changes", &[])?
        .int(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_revoke() {
        for test in crate::store::testing::stores() {
            test.store
                .blocking(|c| {
                    let alice = ensure_user(c, "alice")?;
                    let token = create_token(c, &alice)?;
                    assert_eq!(authenticate(c, &token)?, Some(alice.clone()));
                    let mut forged = token.clone();
                    forged.pop();
                    forged.push('x');
                    assert_eq!(authenticate(c, &forged)?, None);
                    assert_eq!(authenticate(c, "rc_nope")?, None);
                    let (secret, _) = sign_in(c, &token)?.expect("a session");
                    let session = Credential::of_session(&secret);
                    assert!(is_valid(c, &Credential::of_token(&token))?);
                    assert!(is_valid(c, &session)?);
                    let id = &list_tokens(c)?[0].id;
                    assert!(revoke_token(c, id)?);
                    assert_eq!(authenticate(c, &token)?, None);
                    assert!(!is_valid(c, &Credential::of_token(&token))?);
                    assert!(!is_valid(c, &session)?, "a session ends with its token");

                    // An expired session is gone once someone signs in again.
                    let token = create_token(c, &alice)?;
                    let (old, _) = sign_in(c, &token)?.expect("a session");
                    c.execute(
                        "UPDATE sessions SET expires_at = ?1 WHERE secret_hash = ?2",
                        vals!["2000-01-01T00:00:00.000Z", hash(&old)],
                    )?;
                    sign_in(c, &token)?.expect("a session");
                    let left = c.query_one("SELECT COUNT(*) FROM sessions", &[])?.int(0)?;
                    assert_eq!(left, 1, "the expired session was pruned");
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{}: {e:?}", test.engine));
        }
    }
}
