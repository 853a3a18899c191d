#!/usr/bin/env bash
# Copies the pinned browser libraries from node_modules (npm ci) into static/vendor/, which
# the binary embeds. Run after changing a version in package.json; commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d node_modules/geotiff ] || npm ci --no-audit --no-fund
mkdir -p static/vendor
# The source map is not shipped, so its reference goes too.
grep -v "sourceMappingURL" node_modules/geotiff/dist-browser/geotiff.js > static/vendor/geotiff.js
cp node_modules/geotiff/LICENSE static/vendor/geotiff.LICENSE
echo "vendored geotiff $(node -p 'require("./node_modules/geotiff/package.json").version')"
