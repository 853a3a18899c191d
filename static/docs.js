// The API reference, rendered by the vendored Redoc from the server's own OpenAPI document.
'use strict';
Redoc.init('/api/v1/openapi.json', { hideDownloadButton: false, expandResponses: '200,201' }, document.getElementById('redoc'));
