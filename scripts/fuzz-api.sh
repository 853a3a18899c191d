#!/usr/bin/env bash
# Fuzzes the HTTP API against its own OpenAPI document with schemathesis.
#   scripts/fuzz-api.sh [BIN_DIR]    (default target/debug; needs rastercast and rastercast-worker)
# Exits non-zero on any schemathesis failure. About 1–2 minutes on 2 cores (plus the first
# venv install); the run itself is capped at 4 minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${1:-$ROOT/target/debug}" && pwd)
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

# Rate limiting off: 429s would depend on timing, and the run must be repeatable.
"$BIN/rastercast" serve --addr 127.0.0.1:0 --data-dir "$WORK/data" --workers 1 \
    --max-requests-per-second-per-user 0 >"$WORK/stdout" 2>"$WORK/server.log" &
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

cat >"$WORK/st.toml" <<EOF
[dictionaries.fixture]
values = ["$BYTE", "$NAN"]
[dictionaries.scratch]
values = ["$SCRATCH"]
[dictionaries.task]
values = ["$TASK"]

# /events never ends by design: read a few events, then move on.
[[operations]]
include-path-regex = "/events\$"
request-timeout = 1
max-stream-events = 5

# A plain GET cannot be a WebSocket upgrade, so its 400 is the right answer.
[[operations]]
include-path = "/api/v1/ws"
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 401, 403, 404, 429]

# Whether a CRS exists, or quality fits the compression, is not JSON Schema's to say: 422.
[[operations]]
include-path = "/api/v1/tree-items/{id}/convert-to-geo-raster"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 422, 429]
parameters = { "path.id" = { dictionary = "fixture", probability = 0.8 } }

# `?name=` is required for a raw body only, which a parameter's schema cannot say: a raw upload
# without it is a 400.
[[operations]]
include-path = "/api/v1/tree-items"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 401, 403, 404, 409, 429]

[[operations]]
include-path = "/api/v1/tree-items/{id}/content"
parameters = { "path.id" = { dictionary = "fixture", probability = 0.8 } }

[[operations]]
include-path = "/api/v1/tree-items/{id}"
include-method = "DELETE"
parameters = { "path.id" = { dictionary = "scratch", probability = 1.0 } }

[[operations]]
include-path-regex = "^/api/v1/tasks/\\\\{id\\\\}"
parameters = { "path.id" = { dictionary = "task", probability = 0.8 } }
EOF

# Fixed seed and no example database, so a run does not depend on the ones before it. One
# worker: with two, CPython 3.11's ast.parse (which hypothesis calls) races and aborts a phase
# with "AST constructor recursion depth mismatch" (cpython gh-106905).
status=0
timeout 240 "$VENV/bin/st" --config-file "$WORK/st.toml" run "$URL/api/v1/openapi.json" \
    -H "Authorization: Bearer $TOKEN" --checks all --seed 42 --max-examples 50 \
    --generation-database none --workers 1 --request-timeout 10 --continue-on-failure \
    --report junit --report-dir "$ROOT/target/fuzz-report" || status=$?

# A crash that schemathesis did not see (a worker, a background task) still fails the run.
if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "the server died during the run:" >&2
    tail -n 50 "$WORK/server.log" >&2
    status=1
fi
exit "$status"
