//! Who is calling: the bearer token extractors.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::app::AppState;
use crate::error::AppError;
use crate::store::{users, User};

/// A request with a valid bearer token.
pub struct AuthUser(pub User);

/// A request that may carry a token (capability endpoints). A token that is present but
/// wrong is still a 401, so a client never mistakes a typo for anonymous access.
pub struct MaybeUser(pub Option<User>);

fn bearer(parts: &Parts) -> Result<Option<String>, AppError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
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

async fn lookup(state: &AppState, token: String) -> Result<User, AppError> {
    state
        .store
        .call(move |c| users::authenticate(c, &token))
        .await?
        .ok_or(AppError::Unauthorized(
            "The token is invalid or has been revoked.",
        ))
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        match bearer(parts)? {
            Some(token) => Ok(AuthUser(lookup(state, token).await?)),
            None => Err(AppError::Unauthorized(
                "This endpoint needs a token: send `Authorization: Bearer <token>`.",
            )),
        }
    }
}

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        match bearer(parts)? {
            Some(token) => Ok(MaybeUser(Some(lookup(state, token).await?))),
            None => Ok(MaybeUser(None)),
        }
    }
}
