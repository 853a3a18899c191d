#!/usr/bin/env bash
# Copies the pinned browser libraries from node_modules (npm ci) into static/vendor/, which
# the binary embeds. Run after changing a version in package.json; commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
npm install --no-audit --no-fund
mkdir -p static/vendor
# The source map is not shipped, so its reference goes too.
sed "/^\/\/# sourceMappingURL=/d" node_modules/geotiff/dist-browser/geotiff.js > static/vendor/geotiff.js
cp node_modules/geotiff/LICENSE static/vendor/geotiff.LICENSE
sed "/^\/\/# sourceMappingURL=/d" node_modules/redoc/bundles/redoc.standalone.js > static/vendor/redoc.standalone.js
cp node_modules/redoc/bundles/redoc.standalone.js.LICENSE.txt static/vendor/redoc.LICENSE
sed "/^\/\/# sourceMappingURL=/d" node_modules/tus-js-client/dist/tus.min.js > static/vendor/tus.min.js
cp node_modules/tus-js-client/LICENSE static/vendor/tus.LICENSE
for lib in geotiff redoc tus-js-client; do
    echo "vendored $lib $(node -p "require('./node_modules/$lib/package.json').version")"
done
