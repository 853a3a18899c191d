#!/usr/bin/env bash
# Installs what building, running and testing rastercast needs, and only what is missing:
# GDAL (library, headers and command-line tools), SQLite headers, a C toolchain, and Rust.
set -euo pipefail

packages=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
for pkg in libgdal-dev gdal-bin libsqlite3-dev pkg-config build-essential python3 curl ca-certificates; do
    have_pkg "$pkg" || packages+=("$pkg")
done
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
