#!/usr/bin/env bash
# Copies the pinned browser libraries from node_modules (npm ci) into static/vendor/, which
# the binary embeds. Run after changing a version in package.json; commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
npm install --no-audit --no-fund
mkdir -p static/vendor
# The source maps are not shipped, so their references go too.
sed "/^\/\/# sourceMappingURL=/d" node_modules/leaflet/dist/leaflet.js > static/vendor/leaflet.js
# Leaflet's images are left out: they draw the layer switcher and the default marker, and the
# dashboard shows neither.
cp node_modules/leaflet/dist/leaflet.css static/vendor/leaflet.css
cp node_modules/leaflet/LICENSE static/vendor/leaflet.LICENSE
sed "/^\/\/# sourceMappingURL=/d" node_modules/redoc/bundles/redoc.standalone.js > static/vendor/redoc.standalone.js
cp node_modules/redoc/bundles/redoc.standalone.js.LICENSE.txt static/vendor/redoc.LICENSE
sed "/^\/\/# sourceMappingURL=/d" node_modules/tus-js-client/dist/tus.min.js > static/vendor/tus.min.js
cp node_modules/tus-js-client/LICENSE static/vendor/tus.LICENSE
for lib in leaflet redoc tus-js-client; do
    echo "vendored $lib $(node -p "require('./node_modules/$lib/package.json').version")"
done
