//! Browser sign-in: a token exchanged for an HttpOnly, SameSite=Strict session cookie, and
//! single-use stream tickets for clients that cannot set headers.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;

use super::extract::Json;
use crate::app::AppState;
use crate::auth::{session_cookie, AuthUser, SESSION_COOKIE, TICKET_TTL};
use crate::error::{AppError, AppResult};
use crate::store::users;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/session", post(sign_in).get(who).delete(sign_out))
        .route("/stream-tickets", post(ticket))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

fn cookie(value: &str, max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .expect("cookie is ASCII")
}

async fn sign_in(State(state): State<AppState>, Json(body): Json<SignIn>) -> AppResult<Response> {
    let session = state
        .store
        .call(move |c| {
            let Some(user) = users::authenticate(c, body.token.trim())? else {
                return Ok(None);
            };
            Ok(Some((users::create_session(c, &user)?, user)))
        })
        .await?;
    let (secret, user) = session.ok_or(AppError::Unauthorized(
        "The token is invalid or has been revoked.",
    ))?;
    let mut response = axum::Json(serde_json::json!({ "user": user.name })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&secret, users::SESSION_DAYS * 86400),
    );
    Ok(response)
}

async fn who(AuthUser(user): AuthUser) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "user": user.name }))
}

async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> AppResult<Response> {
    if let Some(secret) = session_cookie(&headers) {
        state
            .store
            .call(move |c| users::delete_session(c, &secret))
            .await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0));
    Ok(response)
}

async fn ticket(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> axum::Json<serde_json::Value> {
    let ticket = state.tickets.issue(user);
    axum::Json(serde_json::json!({ "ticket": ticket, "expires_in": TICKET_TTL.as_secs() }))
}
