//! Extractors whose rejections are `AppError`s, so that the framework's own refusals
//! (bad JSON, a malformed id in a path, a bad query) get the same `{"detail"}` body.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts};
use serde::de::DeserializeOwned;

use crate::error::AppError;

pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

pub fn json_rejection(rejection: JsonRejection) -> AppError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => AppError::UnsupportedMediaType(
            "Send the body as JSON with `Content-Type: application/json`.".into(),
        ),
        JsonRejection::JsonDataError(e) => {
            AppError::Unprocessable(format!("The JSON body does not fit: {}", e.body_text()))
        }
        JsonRejection::JsonSyntaxError(e) => {
            AppError::BadRequest(format!("The body is not valid JSON: {}", e.body_text()))
        }
        JsonRejection::BytesRejection(e)
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            AppError::TooLarge("The JSON body is larger than this endpoint accepts.".into())
        }
        other => AppError::from_body(&other, "The body could not be read"),
    }
}

/// A JSON body that may be left out: no body, a blank one or `null` is `T::default()`. A body
/// sent without `Content-Type` is read as JSON, as the first clients send it; one of another
/// media type is refused (415). Bodies over 64 KiB are refused (413).
pub struct OptionalJson<T>(pub T);

const OPTIONAL_JSON_LIMIT: usize = 64 * 1024;

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, AppError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|t| is_json_type(t.to_str().unwrap_or("")));
        let bytes = axum::body::to_bytes(req.into_body(), OPTIONAL_JSON_LIMIT)
            .await
            .map_err(|e| {
                if e.to_string().contains("length limit") {
                    AppError::TooLarge(format!(
                        "The JSON body is larger than {} KiB.",
                        OPTIONAL_JSON_LIMIT >> 10
                    ))
                } else {
                    AppError::BadRequest(format!("The body could not be read: {e}"))
                }
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        if !is_json {
            return Err(AppError::UnsupportedMediaType(
                "Send the body as JSON with `Content-Type: application/json`.".into(),
            ));
        }
        // Parsed in two steps, because serde_json reports some values of the wrong type (a
        // number for an enum) as syntax errors: malformed JSON is a 400, JSON that does not
        // fit is a 422.
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| AppError::BadRequest(format!("The body is not valid JSON: {e}")))?;
        serde_json::from_value::<Option<T>>(value)
            .map(|v| OptionalJson(v.unwrap_or_default()))
            .map_err(|e| AppError::Unprocessable(format!("The JSON body does not fit: {e}")))
    }
}

/// The `Idempotency-Key` header, when sent: 1 to 255 visible ASCII characters (400
/// otherwise). [`IdempotencyKey::keyed`] pairs it with a digest of what the request asks for.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let key = value.as_bytes();
        if key.is_empty() || key.len() > 255 || !key.iter().all(|b| b.is_ascii_graphic()) {
            return Err(AppError::BadRequest(
                "An Idempotency-Key is 1 to 255 visible ASCII characters.".into(),
            ));
        }
        Ok(IdempotencyKey(Some(
            String::from_utf8_lossy(key).into_owned(),
        )))
    }
}

/// The header as the OpenAPI document states it (the extractor above applies the same rule).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyHeader {
    /// The same key, user and request within 24 hours answer the first request's result; the
    /// key with another request is a 422.
    #[param(
        rename = "Idempotency-Key",
        pattern = "^[!-~]{1,255}$",
        min_length = 1,
        max_length = 255
    )]
    idempotency_key: Option<String>,
}

impl IdempotencyKey {
    /// The key with a digest of `parts`, everything that makes one request differ from
    /// another; `None` without a key.
    pub fn keyed(self, parts: &[&[u8]]) -> Option<crate::store::idempotency::Keyed> {
        use sha2::{Digest, Sha256};
        let key = self.0?;
        let mut digest = Sha256::new();
        for part in parts {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part);
        }
        Some(crate::store::idempotency::Keyed {
            key,
            request_hash: hex::encode(digest.finalize()),
        })
    }
}

pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                Err(AppError::BadRequest(format!(
                    "A path parameter is malformed (ids are UUIDs): {}",
                    e.body_text()
                )))
            }
            Err(other) => Err(AppError::BadRequest(other.body_text())),
        }
    }
}

pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(AppError::BadRequest(
                format!("The query string is malformed: {}", e.body_text()),
            )),
            Err(other) => Err(AppError::BadRequest(other.body_text())),
        }
    }
}

/// `application/json` or `application/…+json`, parameters aside: the media type itself, so
/// that `text/plain; x=json` (a type a page may send cross-site without asking) is refused.
pub fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json") && !sub.contains('/'))
}

/// A list's `cursor` (the `seq` its previous page ended at), as every paged list reads it.
pub fn cursor(text: Option<&str>) -> Result<Option<i64>, AppError> {
    text.map(|c| {
        c.parse::<i64>()
            .map_err(|_| AppError::BadRequest("cursor is not one this server gave out.".into()))
    })
    .transpose()
}
