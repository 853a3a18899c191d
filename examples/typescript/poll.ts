// The seed's polling flow through openapi-fetch, typed by openapi-typescript from rastercast's
// OpenAPI document:
//
//   npx openapi-typescript http://127.0.0.1:8000/api/v1/openapi.json -o rastercast.d.ts
//   npx tsc --strict --module nodenext --target es2022 poll.ts && node poll.js http://127.0.0.1:8000 "$TOKEN" RGB.byte.tif
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import createClient from 'openapi-fetch';
import type { paths } from './rastercast.js';

const [url, token, path] = process.argv.slice(2);
const client = createClient<paths>({ baseUrl: url, headers: { Authorization: `Bearer ${token}` } });
const bytes = await readFile(path);

// The document types a file part as a string; the serializer puts the bytes in its place.
const upload = await client.POST('/api/v1/tree-items', {
  body: { file: basename(path) },
  bodySerializer: () => {
    const form = new FormData();
    form.append('file', new Blob([bytes]), basename(path));
    return form;
  },
});
if (!upload.data) throw new Error(`upload: ${upload.error?.detail}`);
const id = upload.data.id;

const started = await client.POST('/api/v1/tree-items/{id}/convert-to-geo-raster', { params: { path: { id } } });
if (!started.data) throw new Error(`convert: ${started.error?.detail}`);
const taskId = started.data.task_id;

const final = new Set(['SUCCESS', 'FAILURE', 'REVOKED']);
let status;
for (;;) {
  const { data, error } = await client.GET('/api/v1/tasks/{id}/status', { params: { path: { id: taskId } } });
  if (!data) throw new Error(`status: ${error?.detail}`);
  status = data;
  if (final.has(status.state)) break;
  console.log(`${status.state} ${status.progress.toFixed(1)}% ${status.status}`);
  await new Promise((resolve) => setTimeout(resolve, 500));
}
console.log(status.state, status.result?.tree_item_id ?? status.error);

const list = await client.GET('/api/v1/tasks', { params: { query: { limit: 10 } } });
console.log('tasks:', list.data?.tasks.map((t) => t.task_id).join(' '));

if (status.result) {
  const head = await client.GET('/api/v1/tree-items/{id}/content', {
    params: { path: { id: status.result.tree_item_id }, header: { Range: 'bytes=0-15' } },
    parseAs: 'arrayBuffer',
  });
  const first = new Uint8Array(head.data ?? new ArrayBuffer(0));
  console.log(head.response.status, head.response.headers.get('content-range'), Buffer.from(first.slice(0, 4)).toString('hex'));
}
