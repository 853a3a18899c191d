//! Browser sign-in: a token exchanged for an HttpOnly, SameSite=Strict session cookie, and
//! single-use stream tickets for clients that cannot set headers.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::extract::Json;
use crate::error::{AppError, AppResult, ErrorBody};
use crate::http::auth::{
    peer_ip_of, same_origin, session_cookie, AuthCaller, AuthUser, SESSION_COOKIE,
};
use crate::http::AppState;
use crate::store::users;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sign_in, who, sign_out))
        .routes(routes!(ticket))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SignIn {
    /// An API token.
    token: String,
}

#[derive(serde::Serialize, ToSchema)]
struct Who {
    user: String,
}

#[derive(serde::Serialize, ToSchema)]
struct Ticket {
    /// Use once, as `?ticket=`, on `/events` or `/ws`.
    ticket: String,
    /// Seconds until it expires.
    expires_in: u64,
}

fn cookie(value: &str, max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .expect("cookie is ASCII")
}

/// Sign in a browser: exchanges a token for an HttpOnly, SameSite=Strict session cookie.
#[utoipa::path(post, operation_id = "signIn", path = "/session", tag = "auth", request_body = SignIn,
    responses((status = 200, description = "Signed in; the cookie is set", body = Who), (status = 400, description = "Malformed request", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "A field has the wrong type or is unknown", body = ErrorBody),
        (status = 429, description = "Too many sign-ins from this address or with this token", body = ErrorBody)), security(()))]
async fn sign_in(
    State(state): State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    Json(body): Json<SignIn>,
) -> AppResult<Response> {
    state
        .sign_ins
        .check(peer_ip_of(&peer), users::token_id(body.token.trim()))?;
    let session = state
        .store
        .call(move |c| users::sign_in(c, body.token.trim()))
        .await?;
    let (secret, user) = session.ok_or(AppError::Unauthorized(
        "The token is invalid or has been revoked.",
    ))?;
    let mut response = axum::Json(Who { user: user.name }).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&secret, users::SESSION_DAYS * 86400),
    );
    Ok(response)
}

/// Who is signed in.
#[utoipa::path(get, operation_id = "getSession", path = "/session", tag = "auth",
    responses((status = 200, description = "The caller", body = Who), (status = 401, description = "No or bad credentials", body = ErrorBody)), security(("bearer" = []), ("cookie" = [])))]
async fn who(AuthUser(user): AuthUser) -> axum::Json<Who> {
    axum::Json(Who { user: user.name })
}

/// Sign out: ends the session, closes the streams it opened and clears the cookie.
#[utoipa::path(delete, operation_id = "signOut", path = "/session", tag = "auth",
    responses((status = 204, description = "Signed out"),
        (status = 403, description = "Sign-out from another origin", body = ErrorBody)), security((), ("cookie" = [])))]
async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> AppResult<Response> {
    if let Some(secret) = session_cookie(&headers) {
        // Like every other write with the cookie: another site cannot sign the user out.
        if !same_origin(&headers) {
            return Err(AppError::Forbidden(
                "Cross-origin requests cannot use the session cookie.",
            ));
        }
        state
            .store
            .call(move |c| users::delete_session(c, &secret))
            .await?;
        state.revocations.check_now();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0));
    Ok(response)
}

/// A single-use stream ticket that expires after 30 s, for `EventSource` and `WebSocket`.
#[utoipa::path(post, operation_id = "createStreamTicket", path = "/stream-tickets", tag = "auth",
    responses((status = 200, description = "A ticket", body = Ticket), (status = 401, description = "No or bad credentials", body = ErrorBody)), security(("bearer" = []), ("cookie" = [])))]
async fn ticket(State(state): State<AppState>, caller: AuthCaller) -> axum::Json<Ticket> {
    let ticket = state.tickets.issue(caller.user, caller.credential);
    axum::Json(Ticket {
        ticket,
        expires_in: state.tickets.ttl().as_secs(),
    })
}
