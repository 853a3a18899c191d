#!/usr/bin/env bash
# Prints the Python of the tests' venv (target/test-venv), creating it first when missing or
# when tests/requirements.txt changed: the reference clients the tests drive the server with.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$ROOT/target/test-venv
REQUIREMENTS=$ROOT/tests/requirements.txt
mkdir -p "$ROOT/target"
exec 9>"$ROOT/target/test-venv.lock"
flock 9
if ! cmp -s "$REQUIREMENTS" "$VENV/requirements.txt" 2>/dev/null; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQUIREMENTS" >&2
    cp "$REQUIREMENTS" "$VENV/requirements.txt"
fi
echo "$VENV/bin/python"
