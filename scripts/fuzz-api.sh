#!/usr/bin/env bash
# Fuzzes the HTTP API against its own OpenAPI document with schemathesis.
#   scripts/fuzz-api.sh [BIN_DIR]    (default target/release; needs rastercast and rastercast-worker)
# Exits non-zero on any schemathesis failure. About 1–2 minutes on 2 cores (plus the first
# venv install); the run itself is capped at 4 minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${1:-$ROOT/target/release}" && pwd)
DATA=${FUZZ_DATA:-$ROOT/../shared/data}
VENV=$ROOT/target/fuzz-venv
# Pinned: checks and CLI options change between 4.x releases.
ST_VERSION=4.32.5

if [ ! -x "$VENV/bin/st" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "schemathesis==$ST_VERSION"
fi

WORK=$(mktemp -d)
SERVER=
cleanup() {
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Rate limits off: 429s would depend on timing, and the run must be repeatable.
# Webhook URLs are all pointed at a closed port on loopback (the hooks below), so private
# addresses are allowed and nothing is ever sent off the machine.
"$BIN/rastercast" serve --addr 127.0.0.1:0 --data-dir "$WORK/data" --workers 1 \
    --max-requests-per-second-per-user 0 --max-sign-ins-per-minute 0 \
    --webhook-allow-private --max-webhooks-per-user 1000000 \
    >"$WORK/stdout" 2>"$WORK/server.log" &
SERVER=$!
for _ in $(seq 100); do
    grep -q 'listening on' "$WORK/stdout" 2>/dev/null && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.1
done
URL=$(grep -o 'listening on http://[^ ]*' "$WORK/stdout" | cut -d' ' -f3)
TOKEN=$(grep -o 'rc_[0-9a-f_]*' "$WORK/stdout" | head -1)
[ -n "$URL" ] && [ -n "$TOKEN" ] || { echo "server did not start" >&2; exit 1; }

api() { curl -sSf -H "Authorization: Bearer $TOKEN" "$@"; }
id_of() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
# Random UUIDs only ever reach the 404 branch: give the fuzzer real ids. float_nan.tif has a
# NaN nodata, which is where the response schemas of items and tasks are easiest to get wrong.
BYTE=$(api -F "file=@$DATA/byte.tif" "$URL/api/v1/tree-items" | id_of id)
NAN=$(api -F "file=@$DATA/float_nan.tif" "$URL/api/v1/tree-items" | id_of id)
# DELETE gets its own item, so the fixtures above survive until the stateful phase.
SCRATCH=$(api -F "file=@$DATA/byte.tif" "$URL/api/v1/tree-items" | id_of id)
TASK=$(api -X POST "$URL/api/v1/tree-items/$NAN/convert-to-geo-raster" | id_of task_id)
# A COG to draw tiles from: byte.tif converted (it has a CRS, so it can be placed on a map).
COG_TASK=$(api -X POST "$URL/api/v1/tree-items/$BYTE/convert-to-geo-raster" | id_of task_id)
COG=
for _ in $(seq 200); do
    COG=$(api "$URL/api/v1/tasks/$COG_TASK/status" |
        python3 -c "import json,sys; print((json.load(sys.stdin).get('result') or {}).get('tree_item_id') or '')")
    [ -n "$COG" ] && break
    sleep 0.1
done
[ -n "$COG" ] || { echo "the fixture conversion did not finish" >&2; exit 1; }
# A folder that uploads may name as their parent.
FOLDER=$(api -H 'Content-Type: application/json' -d '{"name": "fuzz"}' \
    "$URL/api/v1/tree-items/folders" | id_of id)

# A resumable upload of a megabyte, for the tus routes' fixture id.
UPLOAD=$(curl -sSf -D - -o /dev/null -X POST -H "Authorization: Bearer $TOKEN" \
    -H 'Tus-Resumable: 1.0.0' -H 'Upload-Length: 1048576' "$URL/api/v1/uploads" |
    tr -d '\r' | sed -n 's|^[Ll]ocation: /api/v1/uploads/||p')

# A webhook endpoint (and one to delete) and a delivery to it, for the webhook routes' ids.
SINK=http://127.0.0.1:9/fuzz
endpoint() {
    api -H 'Content-Type: application/json' \
        -d "{\"url\": \"$SINK\", \"events\": [\"task.succeeded\"]}" "$URL/api/v1/webhooks" | id_of id
}
WEBHOOK=$(endpoint)
WEBHOOK_SCRATCH=$(endpoint)
DELIVERY=$(api -X POST "$URL/api/v1/webhooks/$WEBHOOK/test" | id_of delivery_id)

# Convert and upload must accept every schema-valid request (2xx). The only refusals let
# through are the ones these hooks re-derive from the request itself, for rules a JSON Schema
# cannot state: an id that is none of the fixtures above (404), a raw upload without
# `?name=` or a multipart field name with a control character, which no part header may carry
# (400), and conversion options that break a documented rule (422). Any other 4xx for a valid
# request stays a failure.
cat >"$WORK/hooks.py" <<EOF
import math
import re

import schemathesis
from hypothesis import strategies as st

# tus chunks: raw bytes of any kind.
schemathesis.openapi.media_type("application/offset+octet-stream", st.binary(max_size=4096))

FILES = {"$BYTE", "$NAN"}
FOLDER = "$FOLDER"
COMPRESSIONS = {"deflate", "lzw", "zstd", "webp", "jpeg", "lerc", "none"}
RESAMPLINGS = {"nearest", "average", "bilinear", "cubic", "cubicspline", "lanczos", "mode", "rms"}
# CRSs GDAL is known to have; any other well-formed code may be one it does not know (422).
KNOWN_CRS = {"EPSG:4326", "EPSG:3857", "EPSG:32618", "EPSG:26711"}
CRS = re.compile(r"(EPSG|ESRI|OGC|IAU_2015):([A-Za-z0-9]{1,16})", re.IGNORECASE)
CONVERT = "/api/v1/tree-items/{id}/convert-to-geo-raster"
RETRY = "/api/v1/tasks/{id}/retry"
UPLOAD = "/api/v1/tree-items"
TUS = ("/api/v1/uploads", "/api/v1/uploads/{id}")
# Optional JSON bodies: the document says "leave it out" (a non-null schema, so generators
# send nothing), and the server also takes a JSON `null` as "no options", as it always has.
NULL_MEANS_NO_BODY = (
    CONVERT,
    RETRY,
    "/api/v1/tree-items/{id}/links",
    "/api/v1/webhooks/{id}/rotate-secret",
    "/api/v1/webhooks/callback-secret/rotate",
)
# What tus answers for rules of its headers that a schema cannot state (one of Upload-Length
# and Upload-Defer-Length, Base64 metadata, the offset the upload is at, a checksum that
# matches, bytes within the length and the limit), and for the fixture once a DELETE ended it.
TUS_REFUSALS = {400, 404, 409, 413, 423, 460}
TILE = "/api/v1/tree-items/{id}/tiles/WebMercatorQuad/{z}/{x}/{y}"
TILEJSON = "/api/v1/tree-items/{id}/WebMercatorQuad/tilejson.json"
COG_ROUTES = (TILE, TILEJSON, "/api/v1/tree-items/{id}/info", "/api/v1/tree-items/{id}/statistics",
              "/api/v1/tree-items/{id}/stac", "/api/v1/tree-items/{id}/preview.png",
              "/api/v1/tree-items/{id}/WMTSCapabilities.xml", "/api/v1/tree-items/{id}/point/{lon_lat}")
# What tiles refuse for rules no schema states: a column or row past 2^z, a rescale whose min
# is not below its max, a band the file does not have, an item that is no COG, a colormap
# with several bands.
TILE_RULES = ("no tile", "below", "band", "Cloud-Optimized", "not a tile parameter", "no CRS",
              "outside the file", "longitude")
WEBHOOKS = (
    "/api/v1/webhooks",
    "/api/v1/webhooks/{id}",
    "/api/v1/webhooks/{id}/rotate-secret",
    "/api/v1/webhooks/callback-secret/rotate",
)
# Every URL a request names is sent to a closed port on loopback: a generated host could be a
# real one, and nothing may be called off this machine.
SINK = "$SINK"


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if not isinstance(body, dict):
        return
    for field in ("url", "callback_url"):
        value = body.get(field)
        if isinstance(value, str) and len(value) <= 2048:
            body[field] = SINK


def option_problems(body):
    """The documented rules that the options in a schema-valid body break."""
    if not isinstance(body, dict):
        return []
    out = []
    given = body.get("compression")
    compression = given.lower() if isinstance(given, str) else "deflate"
    if compression not in COMPRESSIONS:
        out.append("compression")
    # A whole number written as a float (512.0) is an integer, as JSON Schema says.
    whole = lambda v: int(v) if isinstance(v, float) and v.is_integer() else v
    quality = whole(body.get("quality"))
    if quality is not None and (
        not isinstance(quality, int) or compression not in ("jpeg", "webp") or not 1 <= quality <= 100
    ):
        out.append("quality")
    blocksize = whole(body.get("blocksize"))
    if blocksize is not None and (
        not isinstance(blocksize, int)
        or not (64 <= blocksize <= 4096 and blocksize & (blocksize - 1) == 0)
    ):
        out.append("blocksize")
    resampling = body.get("overview_resampling")
    if resampling is not None and resampling.lower() not in RESAMPLINGS:
        out.append("overview_resampling")
    crs = body.get("target_crs")
    if crs is not None:
        match = CRS.fullmatch(crs.strip())
        normal = match and f"{match[1].upper()}:{match[2]}"
        if normal not in KNOWN_CRS:
            out.append("target_crs")
        if body.get("web_optimized") and normal != "EPSG:3857":
            out.append("web_optimized")
    nodata = body.get("nodata")
    if nodata is not None and nodata.strip().lower() != "nan":
        try:
            if not math.isfinite(float(nodata.strip())) or "_" in nodata:
                out.append("nodata")
        except ValueError:
            out.append("nodata")
    subdataset = body.get("subdataset")
    if subdataset is not None and (
        not subdataset or len(subdataset) > 256 or any(not c.isprintable() for c in subdataset)
    ):
        out.append("subdataset")
    return out


def reused_key(case, status, response):
    """An Idempotency-Key the run already sent with another request: 422 by design."""
    headers = {k.lower() for k in (case.headers or {})}
    return status == 422 and "idempotency-key" in headers and "Idempotency-Key" in response.text


def excused(case, status, response):
    path = case.operation.path
    if path in COG_ROUTES and status == 422:
        return any(rule in response.text for rule in TILE_RULES)
    if path in WEBHOOKS and status == 422 and isinstance(case.body, dict):
        # A secret must be Base64 of 24 to 64 bytes: a rule no pattern states.
        return "secret" in case.body and "secret" in response.text
    if path == "/api/v1/webhooks/{id}/deliveries/{delivery}/redeliver" and status in (404, 409):
        # Another id than the fixtures', or the fixture delivery being sent right now.
        return True
    if path in TUS and status in TUS_REFUSALS:
        return True
    if status == 400 and "with value \`None\`" in response.text:
        # A stateful link whose source field was null (an upload's task_id before any task):
        # schemathesis sends "None" as the id, which no id route takes.
        return True
    if path in (CONVERT, UPLOAD) and reused_key(case, status, response):
        return True
    if path == RETRY and status == 422:
        return bool(option_problems(case.body))
    if path == "/api/v1/tasks" and case.method.upper() == "DELETE" and status == 422:
        # "At least one of state and finished_before": a rule no query schema can state.
        query = case.query or {}
        return query.get("state") is None and query.get("finished_before") is None
    if path == CONVERT:
        if status == 404:
            return (case.path_parameters or {}).get("id") not in FILES
        if status == 422:
            return bool(option_problems(case.body))
    if path == UPLOAD and case.method.upper() == "POST":
        query = case.query or {}
        form = case.body if isinstance(case.body, dict) else {}
        parent = form.get("parent_id") or query.get("parent_id")
        if status == 404:
            return parent is not None and parent != FOLDER
        if status == 400 and case.media_type == "application/octet-stream":
            return "name" not in query
        if status == 400 and case.media_type == "multipart/form-data":
            return any(any(ord(c) < 32 or ord(c) == 127 for c in str(key)) for key in form)
    return False


def tus_rejection(case, status):
    """tus refuses a missing or unknown Tus-Resumable with 412 (the protocol's code), a length
    past the limit with 413, and takes headers it does not know, as HTTP does."""
    if case.operation.path not in TUS:
        return False
    unknown_header = "x-schemathesis-unknown-property" in {k.lower() for k in (case.headers or {})}
    return status in (412, 413) or unknown_header


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if failure.code in ("ST201", "ST203"):  # a schema-violating request accepted
        if case.body is None and case.operation.path in NULL_MEANS_NO_BODY:
            return False
        return not tus_rejection(case, response.status_code)
    if failure.code != "ST202":  # a schema-valid request refused
        return True
    return not excused(case, response.status_code, response)
EOF

cat >"$WORK/st.toml" <<EOF
[dictionaries.fixture]
values = ["$BYTE", "$NAN"]
[dictionaries.scratch]
values = ["$SCRATCH"]
[dictionaries.task]
values = ["$TASK"]
[dictionaries.folder]
values = ["$FOLDER"]
[dictionaries.upload]
values = ["$UPLOAD"]
[dictionaries.cog]
values = ["$COG"]
[dictionaries.webhook]
values = ["$WEBHOOK"]
[dictionaries.webhook_scratch]
values = ["$WEBHOOK_SCRATCH"]
[dictionaries.delivery]
values = ["$DELIVERY"]

# /events never ends by design: read a few events, then move on.
[[operations]]
include-path-regex = "/events\$"
request-timeout = 1
max-stream-events = 5

# A plain GET cannot be a WebSocket upgrade, so its 400 is the right answer.
[[operations]]
include-path = "/api/v1/ws"
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 401, 403, 404, 429]

# Valid requests succeed; the 404s and 422s the rules above explain are excused by the hooks.
[[operations]]
include-operation-id = "startConversion"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 429]
parameters = { "path.id" = { dictionary = "fixture", probability = 0.8 } }

# Valid uploads are stored (201); a raw body without "?name=" (400) and a parent that is not
# the fixture folder (404) are excused by the hooks.
# (By operation id: include-path and include-method would select every POST and every
# operation on the path, which is how the old, wider list leaked to cancel and the folder
# routes.)
[[operations]]
include-operation-id = "uploadFile"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 429]
parameters = { "query.parent_id" = { dictionary = "folder", probability = 0.8 } }

[[operations]]
include-path-regex = "/(WebMercatorQuad/|info$|statistics$|stac$|preview\\\\.png$|WMTSCapabilities\\\\.xml$|point/)"
parameters = { "path.id" = { dictionary = "cog", probability = 0.8 } }

[[operations]]
include-path = "/api/v1/tree-items/{id}/content"
parameters = { "path.id" = { dictionary = "fixture", probability = 0.8 } }

[[operations]]
include-path = "/api/v1/tree-items/{id}"
include-method = "DELETE"
parameters = { "path.id" = { dictionary = "scratch", probability = 1.0 } }

[[operations]]
include-path = "/api/v1/uploads/{id}"
parameters = { "path.id" = { dictionary = "upload", probability = 0.8 } }

[[operations]]
include-path = "/api/v1/webhooks/{id}"
include-method = "DELETE"
parameters = { "path.id" = { dictionary = "webhook_scratch", probability = 1.0 } }

[[operations]]
include-path-regex = "^/api/v1/webhooks/\\\\{id\\\\}"
parameters = { "path.id" = { dictionary = "webhook", probability = 0.8 }, "path.delivery" = { dictionary = "delivery", probability = 0.8 } }

[[operations]]
include-path-regex = "^/api/v1/tasks/\\\\{id\\\\}"
parameters = { "path.id" = { dictionary = "task", probability = 0.8 } }
EOF

# Fixed seed and no example database, so a run does not depend on the ones before it. One
# worker: with two, CPython 3.11's ast.parse (which hypothesis calls) races and aborts a phase
# with "AST constructor recursion depth mismatch" (cpython gh-106905).
status=0
SCHEMATHESIS_HOOKS="$WORK/hooks.py" timeout 240 "$VENV/bin/st" --config-file "$WORK/st.toml" run "$URL/api/v1/openapi.json" \
    -H "Authorization: Bearer $TOKEN" --checks all --seed 42 --max-examples 50 \
    --generation-database none --workers 1 --request-timeout 10 --continue-on-failure \
    --report junit --report-dir "$ROOT/target/fuzz-report" || status=$?

# The OGC API - Processes face, against its own hand-written OpenAPI 3.0 document: no 5xx, and
# every answer's status, content type and body as the document says. (Which requests it takes
# is checked by OWSLib's run in the integration tests: the standard allows refusals a schema
# cannot state, such as an input id unknown to the process.)
SCHEMATHESIS_HOOKS="$WORK/hooks.py" timeout 120 "$VENV/bin/st" run "$URL/ogcapi/api" --url "$URL/ogcapi" \
    -H "Authorization: Bearer $TOKEN" --seed 42 --max-examples 30 \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --generation-database none --workers 1 --request-timeout 70 --continue-on-failure \
    --report junit --report-dir "$ROOT/target/fuzz-report-ogc" || status=$?

# A crash that schemathesis did not see (a worker, a background task) still fails the run.
if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "the server died during the run:" >&2
    tail -n 50 "$WORK/server.log" >&2
    status=1
fi
exit "$status"
