//! Who is calling: bearer tokens, browser session cookies and single-use stream tickets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use rand::RngCore;

use crate::app::AppState;
use crate::error::AppError;
use crate::store::{users, User};

pub const SESSION_COOKIE: &str = "rastercast_session";

/// A request with a valid bearer token or session cookie.
pub struct AuthUser(pub User);

/// A request that may carry credentials (capability endpoints). Credentials that are present
/// but wrong are still a 401, so a client never mistakes a typo for anonymous access.
pub struct MaybeUser(pub Option<User>);

/// Credentials for live streams, which browsers open without headers: a bearer token, a
/// `?ticket=`, or the session cookie. `via_cookie` lets the WebSocket check `Origin`.
pub struct StreamCaller {
    pub user: Option<User>,
    pub via_cookie: bool,
}

fn bearer(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AppError::Unauthorized("The Authorization header is not valid text."))?;
    let (scheme, token) = value.split_once(' ').ok_or(AppError::Unauthorized(
        "Use `Authorization: Bearer <token>`.",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AppError::Unauthorized(
            "Use `Authorization: Bearer <token>`.",
        ));
    }
    Ok(Some(token.trim().to_string()))
}

pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

// Every way of being someone counts against their request rate, whichever it is.

async fn token_user(state: &AppState, token: String) -> Result<User, AppError> {
    let user = state
        .store
        .call(move |c| users::authenticate(c, &token))
        .await?
        .ok_or(AppError::Unauthorized(
            "The token is invalid or has been revoked.",
        ))?;
    state.rate.check(user.id)?;
    Ok(user)
}

async fn cookie_user(state: &AppState, secret: String) -> Result<User, AppError> {
    let user = state
        .store
        .call(move |c| users::session_user(c, &secret))
        .await?
        .ok_or(AppError::Unauthorized(
            "The session has expired; sign in again.",
        ))?;
    state.rate.check(user.id)?;
    Ok(user)
}

/// True when the request's `Origin` (if any) is this server, judged by its `Host`.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    !host.is_empty() && authority.eq_ignore_ascii_case(host)
}

/// Header first, then cookie. A cookie on a state-changing request must come from our own
/// pages (SameSite=Strict already stops other sites; this is the second lock).
async fn credentials(parts: &Parts, state: &AppState) -> Result<Option<User>, AppError> {
    if let Some(token) = bearer(&parts.headers)? {
        return token_user(state, token).await.map(Some);
    }
    if let Some(secret) = session_cookie(&parts.headers) {
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe && !same_origin(&parts.headers) {
            return Err(AppError::Forbidden(
                "Cross-origin requests cannot use the session cookie.",
            ));
        }
        return cookie_user(state, secret).await.map(Some);
    }
    Ok(None)
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        credentials(parts, state)
            .await?
            .map(AuthUser)
            .ok_or(AppError::Unauthorized(
                "This endpoint needs a token: send `Authorization: Bearer <token>`.",
            ))
    }
}

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        Ok(MaybeUser(credentials(parts, state).await?))
    }
}

impl FromRequestParts<AppState> for StreamCaller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        if let Some(token) = bearer(&parts.headers)? {
            let user = token_user(state, token).await?;
            return Ok(StreamCaller {
                user: Some(user),
                via_cookie: false,
            });
        }
        let ticket = parts
            .uri
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("ticket="));
        if let Some(ticket) = ticket {
            let user = state.tickets.redeem(ticket).ok_or(AppError::Unauthorized(
                "The stream ticket is unknown, used or expired.",
            ))?;
            state.rate.check(user.id)?;
            return Ok(StreamCaller {
                user: Some(user),
                via_cookie: false,
            });
        }
        if let Some(secret) = session_cookie(&parts.headers) {
            let user = cookie_user(state, secret).await?;
            return Ok(StreamCaller {
                user: Some(user),
                via_cookie: true,
            });
        }
        Ok(StreamCaller {
            user: None,
            via_cookie: false,
        })
    }
}

/// Single-use stream tickets, kept in memory: they live for seconds.
#[derive(Clone)]
pub struct Tickets {
    issued: Arc<Mutex<HashMap<String, (User, Instant)>>>,
    ttl: Duration,
}

pub const TICKET_TTL: Duration = Duration::from_secs(30);

impl Default for Tickets {
    fn default() -> Self {
        Tickets::with_ttl(TICKET_TTL)
    }
}

impl Tickets {
    pub fn with_ttl(ttl: Duration) -> Tickets {
        Tickets {
            issued: Arc::default(),
            ttl,
        }
    }

    pub fn issue(&self, user: User) -> String {
        let mut bytes = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut bytes);
        let ticket = hex::encode(bytes);
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        issued.retain(|_, (_, expires)| *expires > now);
        issued.insert(ticket.clone(), (user, now + self.ttl));
        ticket
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The ticket's user, once: the ticket is gone afterwards, used or not yet expired.
    pub fn redeem(&self, ticket: &str) -> Option<User> {
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        let (user, expires) = issued.remove(ticket)?;
        (expires > Instant::now()).then_some(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> User {
        User {
            id: uuid::Uuid::new_v4(),
            name: "alice".into(),
        }
    }

    #[test]
    fn tickets_work_once_and_expire() {
        let tickets = Tickets::default();
        let ticket = tickets.issue(alice());
        assert_eq!(
            tickets.redeem(&ticket).map(|u| u.name),
            Some("alice".into())
        );
        assert!(tickets.redeem(&ticket).is_none(), "single use");

        let short = Tickets::with_ttl(Duration::from_millis(10));
        let ticket = short.issue(alice());
        std::thread::sleep(Duration::from_millis(30));
        assert!(short.redeem(&ticket).is_none(), "expired");
    }

    #[test]
    fn origin_must_match_host() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8000".parse().unwrap());
        assert!(same_origin(&headers), "no Origin: not a browser");
        headers.insert(header::ORIGIN, "http://127.0.0.1:8000".parse().unwrap());
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&headers));
    }
}
