//! The one process, `convert-to-cog`: its description (every conversion option an input) and
//! the reading of an execute request into what the conversion needs.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::super::extract::Path;
use super::super::AppState;
use crate::domain::options::{RequestedOptions, COMPRESSIONS, RESAMPLINGS};
use crate::domain::webhook::{Callback, EventType};
use crate::error::{AppError, AppResult};

pub const PROCESS_ID: &str = "convert-to-cog";
pub const COG_TYPE: &str = "image/tiff; application=geotiff; profile=cloud-optimized";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ogcapi/processes", get(list).options(super::preflight))
        .route(
            "/ogcapi/processes/{id}",
            get(describe).options(super::preflight),
        )
}

fn summary(base: &str) -> Value {
    json!({
        "id": PROCESS_ID,
        "title": "Convert to a Cloud-Optimized GeoTIFF",
        "description": "Converts a raster in your tree (GeoTIFF, JPEG 2000, NetCDF, SRTM, ...) \
            to a Cloud-Optimized GeoTIFF, placed beside it. The job is a rastercast task: the \
            same id, followed live on /api/v1/tasks/{id}/events and the WebSocket.",
        "version": env!("CARGO_PKG_VERSION"),
        "keywords": ["COG", "GeoTIFF", "GDAL"],
        "jobControlOptions": ["async-execute", "sync-execute"],
        "outputTransmission": ["reference", "value"],
        "links": [
            {"href": format!("{base}/processes/{PROCESS_ID}"), "rel": "self", "type": "application/json", "title": "Process description"},
            {"href": format!("{base}/processes/{PROCESS_ID}/execution"), "rel": "http://www.opengis.net/def/rel/ogc/1.0/execute", "type": "application/json", "title": "Execute"},
        ],
    })
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Json<Value> {
    let base = super::base(&state, &headers);
    Json(json!({
        "processes": [summary(&base)],
        "links": [{"href": format!("{base}/processes"), "rel": "self", "type": "application/json", "title": "Processes"}],
    }))
}

fn input(title: &str, description: &str, schema: Value) -> Value {
    json!({"title": title, "description": description, "minOccurs": 0, "maxOccurs": 1, "schema": schema})
}

async fn describe(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    if id != PROCESS_ID {
        return Err(AppError::NotFound("process"));
    }
    let base = super::base(&state, &headers);
    let mut process = summary(&base);
    process["inputs"] = json!({
        "item": input("File", "The id of a file in your tree. Give this or `source`.", json!({"type": "string", "format": "uuid"})),
        "source": input("Signed link", "A link to one of your files, from POST /api/v1/tree-items/{id}/links. Give this or `item`.", json!({"type": "string", "format": "uri"})),
        "compression": input("Compression", "default deflate", json!({"type": "string", "enum": COMPRESSIONS, "default": "deflate"})),
        "quality": input("Quality", "1 to 100, for jpeg and webp only", json!({"type": "integer", "minimum": 1, "maximum": 100})),
        "blocksize": input("Tile size", "a power of two from 64 to 4096", json!({"type": "integer", "enum": [64, 128, 256, 512, 1024, 2048, 4096], "default": 512})),
        "overview_resampling": input("Overview resampling", "nearest for paletted sources, average otherwise, when left out", json!({"type": "string", "enum": RESAMPLINGS})),
        "target_crs": input("Target CRS", "AUTHORITY:CODE; reprojects in the same pass", json!({"type": "string", "example": "EPSG:3857"})),
        "web_optimized": input("Web-optimized", "Align to the GoogleMapsCompatible tiling scheme (EPSG:3857)", json!({"type": "boolean", "default": false})),
        "nodata": input("NoData", "A number, or \"nan\"", json!({"oneOf": [{"type": "number"}, {"type": "string", "enum": ["nan"]}]})),
        "subdataset": input("Subdataset", "A NetCDF variable, or a file inside a zip", json!({"type": "string"})),
        "priority": input("Priority", "Orders your own queued jobs", json!({"type": "string", "enum": ["low", "normal", "high"], "default": "normal"})),
    });
    process["outputs"] = json!({
        "cog": {"title": "The Cloud-Optimized GeoTIFF", "description": "By reference: a signed link that opens it without credentials for a day (ranges work, for GDAL's /vsicurl/ and map clients).",
            "schema": {"type": "string", "contentMediaType": COG_TYPE, "contentEncoding": "binary"}},
        "tree_item_id": {"title": "Its id in your tree", "schema": {"type": "string", "format": "uuid"}},
    });
    Ok(Json(process))
}

/// What to convert.
pub enum Source {
    Item(Uuid),
    Link(String),
}

/// An execute request, read.
pub struct Execute {
    pub source: Source,
    pub options: RequestedOptions,
    pub callbacks: Vec<Callback>,
    /// `document` (the default here) or `raw`.
    pub raw: bool,
    /// The outputs asked for; all when empty.
    pub outputs: Vec<String>,
}

pub const OUTPUTS: [&str; 2] = ["cog", "tree_item_id"];

/// An input's value: as is, `{"value": …}` (qualified), or `{"href": …}` (a link).
fn value_of(input: &Value) -> &Value {
    match input {
        Value::Object(o) if o.contains_key("value") => &o["value"],
        Value::Object(o) if o.contains_key("href") => &o["href"],
        other => other,
    }
}

fn bad(detail: String) -> AppError {
    AppError::BadRequest(detail)
}

/// Reads an execute request. Unknown inputs and outputs are refused (400), as a typo must not
/// fall back to a default; impossible values are the conversion's own 422s later.
pub fn read(body: &Value) -> AppResult<Execute> {
    let Some(request) = body.as_object() else {
        return Err(bad("The execute request is a JSON object.".into()));
    };
    for key in request.keys() {
        if !["inputs", "outputs", "response", "subscriber"].contains(&key.as_str()) {
            return Err(bad(format!("{key:?} is not part of an execute request.")));
        }
    }
    let empty = Map::new();
    let inputs = match request.get("inputs") {
        None => &empty,
        Some(Value::Object(inputs)) => inputs,
        Some(_) => return Err(bad("inputs is an object of input ids to values.".into())),
    };
    let mut source = None;
    let mut options = Map::new();
    for (id, input) in inputs {
        let value = value_of(input);
        match id.as_str() {
            "item" => {
                let id = value
                    .as_str()
                    .and_then(|v| v.parse::<Uuid>().ok())
                    .ok_or_else(|| bad("The input item is a file's id (a UUID).".into()))?;
                source = Some(Source::Item(id));
            }
            "source" => {
                let link = value
                    .as_str()
                    .ok_or_else(|| bad("The input source is a link (a URL).".into()))?;
                source = Some(Source::Link(link.to_owned()));
            }
            "compression"
            | "quality"
            | "blocksize"
            | "overview_resampling"
            | "target_crs"
            | "web_optimized"
            | "nodata"
            | "subdataset"
            | "priority" => {
                options.insert(id.clone(), value.clone());
            }
            other => {
                return Err(AppError::BadRequest(format!(
                    "{other:?} is not an input of {PROCESS_ID}; see /ogcapi/processes/{PROCESS_ID}."
                )))
            }
        }
    }
    let source = source.ok_or_else(|| {
        bad(format!(
            "{PROCESS_ID} needs the input item (a file's id) or source (a signed link)."
        ))
    })?;
    let options: RequestedOptions = serde_json::from_value(Value::Object(options))
        .map_err(|e| AppError::Unprocessable(format!("An input does not fit: {e}")))?;
    let raw = match request.get("response").map(|r| r.as_str()) {
        None | Some(Some("document")) => false,
        Some(Some("raw")) => true,
        _ => return Err(bad("response is \"document\" or \"raw\".".into())),
    };
    let outputs = match request.get("outputs") {
        None => Vec::new(),
        Some(Value::Object(o)) => o.keys().cloned().collect(),
        Some(_) => return Err(bad("outputs is an object of output ids.".into())),
    };
    if let Some(unknown) = outputs.iter().find(|o| !OUTPUTS.contains(&o.as_str())) {
        return Err(bad(format!(
            "{unknown:?} is not an output of {PROCESS_ID}: it has {}.",
            OUTPUTS.join(" and ")
        )));
    }
    if raw && outputs.len() > 1 {
        return Err(bad(
            "A raw response holds one output: ask for cog or tree_item_id, or for a document."
                .into(),
        ));
    }
    Ok(Execute {
        source,
        options,
        callbacks: subscriber(request.get("subscriber"))?,
        raw,
        outputs,
    })
}

/// The subscriber's URIs as callbacks: `successUri` gets the job's success, `inProgressUri`
/// its start and progress, `failedUri` its failure or dismissal. Their addresses are checked
/// by the caller.
fn subscriber(value: Option<&Value>) -> AppResult<Vec<Callback>> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let Some(subscriber) = value.as_object() else {
        return Err(bad("subscriber is an object of URIs.".into()));
    };
    let mut callbacks = Vec::new();
    for (key, uri) in subscriber {
        let events = match key.as_str() {
            "successUri" => vec![EventType::TaskSucceeded],
            "inProgressUri" => vec![EventType::TaskStarted, EventType::TaskProgress],
            "failedUri" => vec![EventType::TaskFailed, EventType::TaskRevoked],
            other => {
                return Err(bad(format!(
                    "{other:?} is not a subscriber URI: successUri, inProgressUri or failedUri."
                )))
            }
        };
        let url = uri
            .as_str()
            .ok_or_else(|| bad(format!("subscriber.{key} is a URI.")))?;
        // One URI may serve several of them: its events are merged.
        match callbacks.iter_mut().find(|c: &&mut Callback| c.url == url) {
            Some(existing) => existing.events.extend(events),
            None => callbacks.push(Callback {
                url: url.to_owned(),
                events,
            }),
        }
    }
    Ok(callbacks)
}
