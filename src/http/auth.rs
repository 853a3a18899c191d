//! Who is calling: bearer tokens, browser session cookies and single-use stream tickets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use rand::RngCore;

use crate::error::AppError;
use crate::http::AppState;
use crate::limits::StreamSlot;
use crate::revocation::Watched;
use crate::store::users::{self, Credential};
use crate::store::User;

pub const SESSION_COOKIE: &str = "rastercast_session";

/// A request with a valid bearer token or session cookie.
pub struct AuthUser(pub User);

/// A request that may carry credentials (capability endpoints). Credentials that are present
/// but wrong are still a 401, so a client never mistakes a typo for anonymous access.
pub struct MaybeUser(pub Option<User>);

/// A request with a valid bearer token or session cookie, and which of them it was.
pub struct AuthCaller {
    pub user: User,
    pub credential: Credential,
}

/// Credentials for live streams, which browsers open without headers: a bearer token, a
/// `?ticket=`, or the session cookie. `via_cookie` lets the WebSocket check `Origin`; the
/// `credential` (the ticket's, for a ticket) ends the stream when it is revoked; anonymous
/// streams are counted by `ip`.
pub struct StreamCaller {
    pub user: Option<User>,
    pub credential: Option<Credential>,
    pub via_cookie: bool,
    pub ip: std::net::IpAddr,
}

/// The address the connection came from (`http::serve` records it on every request).
pub fn peer_ip(parts: &Parts) -> std::net::IpAddr {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), peer_ip_of)
}

/// An IPv4 peer reached over an IPv6 socket counts as its IPv4 address.
pub fn peer_ip_of(info: &axum::extract::ConnectInfo<std::net::SocketAddr>) -> std::net::IpAddr {
    info.0.ip().to_canonical()
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
        .read(move |c| users::authenticate(c, &token))
        .await?
        .ok_or(AppError::Unauthorized(
            "The token is invalid or has been revoked.",
        ))?;
    state.rate.check(user.id)?;
    Ok(user)
}

async fn cookie_user(state: &AppState, session: Credential) -> Result<User, AppError> {
    let user = state
        .store
        .call(move |c| users::session_user(c, &session))
        .await?
        .ok_or(AppError::Unauthorized(
            "The session has expired; sign in again.",
        ))?;
    state.rate.check(user.id)?;
    Ok(user)
}

/// This server as the request reached it: the scheme (`http`, or what a proxy in front says
/// in `X-Forwarded-Proto`, lower case) and the `Host`; `None` without a `Host`.
pub fn request_origin(headers: &HeaderMap) -> Option<(String, &str)> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST).filter(|h| !h.is_empty())?;
    let scheme = text(header::HeaderName::from_static("x-forwarded-proto"))
        .and_then(|v| v.split(',').next())
        .map_or("http", str::trim)
        .to_ascii_lowercase();
    Some((scheme, host))
}

/// True when the request's `Origin` (if any) is this server: the same scheme, host and port
/// (see [`request_origin`]; a browser cannot set `X-Forwarded-Proto` on a cross-site request
/// without a preflight we never grant).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some((scheme, host)) = request_origin(headers) else {
        return false;
    };
    // Browsers write an Origin in lower case, with no path and no default port.
    let Some(authority) = origin.strip_prefix(&format!("{scheme}://")) else {
        return false;
    };
    let with_port = |authority: &str| -> Option<(String, u16)> {
        let default = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let (name, port) = match authority.rsplit_once(':') {
            // An IPv6 literal's colons are inside its brackets.
            Some((name, port)) if !port.contains(']') => (name, port.parse().ok()?),
            _ => (authority, default),
        };
        (!name.is_empty()).then(|| (name.to_ascii_lowercase(), port))
    };
    matches!((with_port(authority), with_port(host)), (Some(a), Some(b)) if a == b)
}

/// Header first, then cookie. A cookie on a state-changing request must come from our own
/// pages (SameSite=Strict already stops other sites; this is the second lock).
async fn credentials(
    parts: &Parts,
    state: &AppState,
) -> Result<Option<(User, Credential)>, AppError> {
    if let Some(token) = bearer(&parts.headers)? {
        let credential = Credential::of_token(&token);
        return token_user(state, token)
            .await
            .map(|u| Some((u, credential)));
    }
    if let Some(secret) = session_cookie(&parts.headers) {
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe && !same_origin(&parts.headers) {
            return Err(AppError::Forbidden(
                "Cross-origin requests cannot use the session cookie.",
            ));
        }
        let credential = Credential::of_session(&secret);
        return cookie_user(state, credential.clone())
            .await
            .map(|u| Some((u, credential)));
    }
    Ok(None)
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let caller = AuthCaller::from_request_parts(parts, state).await?;
        Ok(AuthUser(caller.user))
    }
}

impl FromRequestParts<AppState> for AuthCaller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        credentials(parts, state)
            .await?
            .map(|(user, credential)| AuthCaller { user, credential })
            .ok_or(AppError::Unauthorized(
                "This endpoint needs a token: send `Authorization: Bearer <token>`.",
            ))
    }
}

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        Ok(MaybeUser(credentials(parts, state).await?.map(|(u, _)| u)))
    }
}

impl FromRequestParts<AppState> for StreamCaller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let ip = peer_ip(parts);
        let signed = |user, credential, via_cookie| StreamCaller {
            user: Some(user),
            credential: Some(credential),
            via_cookie,
            ip,
        };
        if let Some(token) = bearer(&parts.headers)? {
            let credential = Credential::of_token(&token);
            let user = token_user(state, token).await?;
            return Ok(signed(user, credential, false));
        }
        let ticket = parts
            .uri
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("ticket="));
        if let Some(ticket) = ticket {
            let refused =
                || AppError::Unauthorized("The stream ticket is unknown, used or expired.");
            let (user, credential) = state.tickets.redeem(ticket).ok_or_else(refused)?;
            // A ticket is worth no more than what it was issued with, which may be revoked.
            let check = credential.clone();
            if !state
                .store
                .call(move |c| users::is_valid(c, &check))
                .await?
            {
                return Err(refused());
            }
            state.rate.check(user.id)?;
            return Ok(signed(user, credential, false));
        }
        if let Some(secret) = session_cookie(&parts.headers) {
            let credential = Credential::of_session(&secret);
            let user = cookie_user(state, credential.clone()).await?;
            return Ok(signed(user, credential, true));
        }
        Ok(StreamCaller {
            user: None,
            credential: None,
            via_cookie: false,
            ip,
        })
    }
}

impl StreamCaller {
    /// What the caller's stream holds while open: its place under the stream limits (429 when
    /// there is none), and a watch on its credential.
    pub fn lease(&self, state: &AppState) -> Result<StreamLease, AppError> {
        let slot = state
            .streams
            .open(self.user.as_ref().map(|u| u.id), self.ip)?;
        let watched = self.credential.clone().map(|c| state.revocations.watch(c));
        Ok(StreamLease {
            _slot: slot,
            // Anonymous streams have no credential to lose: theirs is never cancelled.
            revoked: watched
                .as_ref()
                .map(|w| w.ended.clone())
                .unwrap_or_default(),
            _watched: watched,
        })
    }
}

/// Held by an open SSE stream or WebSocket; it ends the stream once `revoked` is cancelled.
pub struct StreamLease {
    _slot: StreamSlot,
    _watched: Option<Watched>,
    pub revoked: tokio_util::sync::CancellationToken,
}

/// A ticket's user, the credential it was issued with, and when it expires.
type Issued = (User, Credential, Instant);

/// Single-use stream tickets, kept in memory: they live for seconds.
#[derive(Clone)]
pub struct Tickets {
    issued: Arc<Mutex<HashMap<String, Issued>>>,
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

    pub fn issue(&self, user: User, credential: Credential) -> String {
        let mut bytes = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut bytes);
        let ticket = hex::encode(bytes);
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        issued.retain(|_, (_, _, expires)| *expires > now);
        issued.insert(ticket.clone(), (user, credential, now + self.ttl));
        ticket
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The ticket's user and the credential it was issued with, once: the ticket is gone
    /// afterwards, used or not yet expired.
    pub fn redeem(&self, ticket: &str) -> Option<(User, Credential)> {
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        let (user, credential, expires) = issued.remove(ticket)?;
        (expires > Instant::now()).then_some((user, credential))
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
        let credential = Credential::of_token("rc_0123_secret");
        let ticket = tickets.issue(alice(), credential.clone());
        assert_eq!(
            tickets.redeem(&ticket).map(|(u, c)| (u.name, c)),
            Some(("alice".into(), credential.clone()))
        );
        assert!(tickets.redeem(&ticket).is_none(), "single use");

        let short = Tickets::with_ttl(Duration::from_millis(10));
        let ticket = short.issue(alice(), credential);
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
        for other in [
            "https://127.0.0.1:8000",
            "HTTP://127.0.0.1:8000",
            "http://127.0.0.1:8001",
            "http://127.0.0.1",
            "null",
            "127.0.0.1:8000",
        ] {
            headers.insert(header::ORIGIN, other.parse().unwrap());
            assert!(!same_origin(&headers), "{other}");
        }

        // Default ports: `Host: example.org` is port 80 over http, 443 behind a TLS proxy.
        headers.insert(header::HOST, "Example.org".parse().unwrap());
        headers.insert(header::ORIGIN, "http://example.org".parse().unwrap());
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, "http://example.org:80".parse().unwrap());
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, "https://example.org".parse().unwrap());
        assert!(!same_origin(&headers), "another scheme is another origin");
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, "http://example.org".parse().unwrap());
        assert!(!same_origin(&headers));
        headers.insert(header::HOST, "[::1]:8000".parse().unwrap());
        headers.insert(header::ORIGIN, "https://[::1]:8000".parse().unwrap());
        assert!(same_origin(&headers));
    }
}
