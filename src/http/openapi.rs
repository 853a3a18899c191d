//! The OpenAPI 3.1 document, generated from the handlers' annotations: the router and the
//! document are built from the same `routes!` calls, so no route can be left out.

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::http::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rastercast",
        description = "Upload rasters, convert them to Cloud-Optimized GeoTIFFs in the background, and follow \
                       the conversions live over REST, Server-Sent Events and WebSocket. Every error is \
                       `{\"detail\": \"…\", \"code\": \"…\"}`.",
        license(name = "MIT")
    ),
    modifiers(&Security),
    tags(
        (name = "tree items", description = "Each user's folders and files"),
        (name = "conversion", description = "Starting a conversion to a COG"),
        (name = "tasks", description = "Conversion tasks: status, cancel, list"),
        (name = "live events", description = "Server-Sent Events and the WebSocket"),
        (name = "auth", description = "Browser sessions and stream tickets"),
        (name = "tiles", description = "Map tiles of a COG in the WebMercatorQuad grid, as TiTiler draws them"),
        (name = "webhooks", description = "Signed deliveries of task events to your endpoints (Standard Webhooks), with durable retries and a delivery log"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::http::auth::SESSION_COOKIE,
            ))),
        );
        components.add_security_scheme(
            "ticket",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("ticket"))),
        );
    }
}

/// The document as served, made once at start-up.
#[derive(Clone)]
pub struct Document(pub Arc<String>);

impl Document {
    pub fn new(openapi: &utoipa::openapi::OpenApi) -> Document {
        let mut value = serde_json::to_value(openapi).expect("the document serialises");
        describe_event_streams(&mut value);
        make_optional_bodies_omittable(&mut value);
        Document(Arc::new(
            serde_json::to_string_pretty(&value).expect("the document serialises"),
        ))
    }
}

/// Every operation object of the document (`paths` → path item → method).
fn operations_mut(document: &mut Value) -> impl Iterator<Item = &mut Value> {
    document
        .get_mut("paths")
        .and_then(|p| p.as_object_mut())
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
}

/// The handlers' annotations name the JSON each Server-Sent Event carries; but a
/// `text/event-stream` schema describes the event itself (`id`, `event`, `data`, `retry`), with
/// the JSON as a string in `data`. OpenAPI 3.1 says that with `contentMediaType` and
/// `contentSchema`, which the annotations cannot express, so the stream schemas are rewritten
/// here.
fn describe_event_streams(document: &mut Value) {
    let streams = operations_mut(document)
        .filter_map(|op| op.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("content")?.get_mut("text/event-stream"));
    for stream in streams {
        let Some(payload) = stream.get_mut("schema").map(Value::take) else {
            continue;
        };
        stream["schema"] = serde_json::json!({
            "type": "object",
            "description": "One Server-Sent Event: `id` is the resume point for `Last-Event-ID`, \
                            `data` one JSON document.",
            "required": ["data"],
            "properties": {
                "id": {"type": "string"},
                "event": {"type": "string"},
                "retry": {"type": "integer", "minimum": 0},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": payload,
                },
            },
        });
    }
}

/// The annotations say a body is optional with `Option<T>`, which utoipa writes as a body that
/// may be JSON `null` (`oneOf: [T, {"type": "null"}]`) and leaves `required` out. Generators read
/// that as "send `null`": openapi-python-client then serialises its "unset" marker and fails. An
/// optional body is one the caller may leave out, so it is written as `required: false` with
/// the plain schema, and every other body says `required: true`.
fn make_optional_bodies_omittable(document: &mut Value) {
    let bodies =
        operations_mut(document).filter_map(|op| op.get_mut("requestBody")?.as_object_mut());
    for body in bodies {
        let mut optional = body.get("required") != Some(&Value::Bool(true));
        let schemas = body
            .get_mut("content")
            .and_then(|c| c.as_object_mut())
            .into_iter()
            .flat_map(|content| content.values_mut())
            .filter_map(|media| media.get_mut("schema"));
        for schema in schemas {
            optional |= without_null(schema);
        }
        body.insert("required".into(), Value::Bool(!optional));
    }
}

/// Takes `null` out of `schema` (`oneOf: [T, null]` becomes `T`; `"type": [t, "null"]` becomes
/// `t`, as utoipa writes a plain `Option<String>`); whether there was one.
fn without_null(schema: &mut Value) -> bool {
    let null = serde_json::json!({"type": "null"});
    if let Some(one_of) = schema.get("oneOf").and_then(|o| o.as_array()) {
        if one_of.len() == 2 && one_of.contains(&null) {
            *schema = one_of
                .iter()
                .find(|s| **s != null)
                .cloned()
                .expect("two items");
            return true;
        }
        return false;
    }
    let Some(types) = schema.get_mut("type").and_then(|t| t.as_array_mut()) else {
        return false;
    };
    if !types.iter().any(|t| t == "null") {
        return false;
    }
    types.retain(|t| t != "null");
    if let [only] = types.as_slice() {
        schema["type"] = only.clone();
    }
    true
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// This document.
#[utoipa::path(get, operation_id = "getOpenApiDocument", path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)), security(()))]
async fn openapi_json(Extension(document): Extension<Document>) -> Response {
    let mut response = document.0.as_str().to_owned().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
