#!/usr/bin/env bash
# Prints the bin directory of the benchmark's TiTiler venv (target/titiler-venv), creating it
# first when missing or when the pins below changed: the reference the map-tile rows of
# `make bench` are measured against. Not needed by the tests.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$ROOT/target/titiler-venv
PINS="titiler.application==2.4.0 uvicorn==0.54.0"
mkdir -p "$ROOT/target"
exec 9>"$ROOT/target/titiler-venv.lock"
flock 9
if [ "$(cat "$VENV/pins" 2>/dev/null)" != "$PINS" ]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install -q --disable-pip-version-check $PINS >&2
    echo "$PINS" > "$VENV/pins"
fi
echo "$VENV/bin"
