// The dashboard's resumable uploads (tus 1.0.0 through the vendored tus-js-client), in Debian's
// headless Chromium against the real server: progress, pause and resume, resume after a reload,
// discarding an unfinished upload, and a refusal shown with the server's sentence.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, openSync, writeSync, closeSync, renameSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { startServer, launch, data, root } from './server.mjs';

const shots = path.join(root, 'target/screenshots');
mkdirSync(shots, { recursive: true });
const shot = (page, name) => page.screenshot({ path: path.join(shots, name + '.png'), fullPage: true });

const MiB = 1024 * 1024;
const CHUNK = 8 * MiB;

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser.close(); });

/// A file of `mib` MiB of random bytes, made once (random, so nothing on the way can shrink it).
function sizedFile(mib) {
  const file = path.join(root, `target/tmp/random-${mib}MiB.bin`);
  if (!existsSync(file)) {
    mkdirSync(path.dirname(file), { recursive: true });
    const partial = file + '.part';
    const fd = openSync(partial, 'w');
    for (let i = 0; i < mib; i++) writeSync(fd, randomBytes(MiB));
    closeSync(fd);
    renameSync(partial, file);
  }
  return file;
}

const sha256 = (file) => createHash('sha256').update(readFileSync(file)).digest('hex');

/// A signed-in page on a fresh server, with page errors and the tus requests it sends recorded.
async function signedIn(t, { args = [] } = {}) {
  const server = await startServer(args);
  t.after(() => server.stop());
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  t.after(() => context.close());
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  // Every tus request (not the JSON listing, which the tests poll too), in order: method, URL
  // and the headers that matter.
  const requests = [];
  page.on('request', (r) => {
    if (!new URL(r.url()).pathname.startsWith('/api/v1/uploads') || r.method() === 'GET') return;
    const h = r.headers();
    requests.push({ method: r.method(), url: r.url(), offset: h['upload-offset'], length: h['upload-length'],
      metadata: h['upload-metadata'], tus: h['tus-resumable'] });
  });
  await page.goto(`${server.url}/#token=${server.token}`);
  await page.waitForSelector('#app:not([hidden])');
  return { server, page, errors, requests };
}

/// Slows the page's uploads down to `bytesPerSecond` (Chrome DevTools network emulation), so
/// that there is time to pause or reload in the middle; downloads stay at full speed.
async function throttle(page, bytesPerSecond) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: bytesPerSecond ?? -1,
  });
  return cdp;
}

/// The server's unfinished uploads of the signed-in user, asked from the page (its cookie).
const unfinished = (page) => page.evaluate(async () => {
  const response = await fetch('/api/v1/uploads', { headers: { 'Tus-Resumable': '1.0.0' } });
  if (!response.ok) throw new Error(`GET /api/v1/uploads: ${response.status} ${await response.text()}`);
  return response.json();
});

/// Polls `probe` until it returns something truthy (a condition, never a fixed wait).
async function until(what, probe, { timeout = 30000, every = 100 } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what);
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}

/// The upload's offset on the server once two polls half a second apart agree: nothing moves.
async function settledOffset(page) {
  let last = null;
  return until('the server offset to stop moving', async () => {
    const [u] = await unfinished(page);
    const same = u && last !== null && u.offset === last;
    last = u ? u.offset : null;
    return same ? { offset: u.offset } : null;
  }, { every: 500 }).then((r) => r.offset);
}

/// The SHA-256 of an item's content as the server serves it, computed in the page.
const servedSha256 = (page, name) => page.evaluate(async (name) => {
  const items = await (await fetch('/api/v1/tree-items')).json();
  const item = items.find((i) => i.name === name);
  const body = await (await fetch(`/api/v1/tree-items/${item.id}/content`)).arrayBuffer();
  const digest = await crypto.subtle.digest('SHA-256', body);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}, name);

const storedTusKeys = (page) => page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('tus::')));
/// The upload bar's value (-1 with no bar), and a wait for it to reach `min` (the page's CSP
/// allows no string evaluation: functions only).
const progressOf = (min = -Infinity) => {
  const value = Number(document.querySelector('#uploads .upload [role=progressbar]')?.getAttribute('aria-valuenow') ?? -1);
  return value >= min && value;
};
const progressNow = (page) => page.evaluate(progressOf);
const progressReaches = (page, min) => page.waitForFunction(progressOf, min, { timeout: 30000 });
const item = (page, name) => page.waitForSelector(`#items li:has(.name:text-is("${name}"))`, { timeout: 60000 });

test('an upload goes in 8 MiB tus chunks under a progress bar and ends as an item', async (t) => {
  const { page, errors, requests } = await signedIn(t);
  const file = sizedFile(24);
  await throttle(page, 12 * MiB);
  await page.setInputFiles('#file-input', file);
  const line = page.locator('#uploads .upload', { hasText: 'random-24MiB.bin' });
  const bar = line.getByRole('progressbar', { name: 'Uploading random-24MiB.bin' });
  await bar.waitFor();
  assert.equal(await bar.getAttribute('aria-valuemin'), '0');
  assert.equal(await bar.getAttribute('aria-valuemax'), '100');
  await progressReaches(page, 1);
  assert.match(await line.locator('.meta').textContent(), /^\d+\s% · [\d.]+ (B|KiB|MiB) of 24\.0 MiB$/);
  assert.equal(await line.getByRole('button', { name: 'Pause the upload of random-24MiB.bin' }).textContent(), 'Pause');
  await shot(page, 'upload-progress');

  await item(page, 'random-24MiB.bin');
  await page.waitForSelector('#uploads .upload', { state: 'detached' });
  assert.equal(await page.textContent('#uploads-note'), 'Uploaded random-24MiB.bin.');
  assert.match(await page.textContent('#items li:has(.name:text-is("random-24MiB.bin")) .meta'), /^24\.0 MiB/);
  assert.equal(await servedSha256(page, 'random-24MiB.bin'), sha256(file), 'the server holds the same bytes');

  // One creation with the file's length and name, then 8 MiB PATCHes from offset 0 up.
  const posts = requests.filter((r) => r.method === 'POST');
  assert.equal(posts.length, 1, JSON.stringify(requests));
  assert.equal(posts[0].length, String(24 * MiB));
  assert.equal(posts[0].tus, '1.0.0');
  const metadata = Object.fromEntries(posts[0].metadata.split(',').map((pair) => {
    const [key, value] = pair.split(' ');
    return [key, Buffer.from(value || '', 'base64').toString()];
  }));
  assert.deepEqual(metadata, { filename: 'random-24MiB.bin', filetype: 'application/octet-stream' }, 'no parent_id at the root');
  const offsets = requests.filter((r) => r.method === 'PATCH').map((r) => Number(r.offset));
  assert.deepEqual(offsets, [0, CHUNK, 2 * CHUNK], JSON.stringify(requests));
  assert.deepEqual(await unfinished(page), [], 'nothing is left unfinished');
  assert.deepEqual(await storedTusKeys(page), [], 'tus-js-client forgets a finished upload');
  assert.deepEqual(errors, []);
});

test('an upload pauses (nothing more is sent) and resumes from where the server stopped', async (t) => {
  const { page, errors, requests } = await signedIn(t);
  const file = sizedFile(40);
  await throttle(page, 8 * MiB);
  await page.setInputFiles('#file-input', file);
  // Past the first chunk, so that the server has something to resume from.
  await progressReaches(page, 25);
  const button = page.getByRole('button', { name: 'Pause the upload of random-40MiB.bin' });
  await button.click();
  const resume = page.getByRole('button', { name: 'Resume the upload of random-40MiB.bin' });
  await resume.waitFor();
  assert.equal(await resume.textContent(), 'Resume');
  assert.ok(await resume.evaluate((b) => b === document.activeElement), 'the focus stays on the button');
  const shown = await progressNow(page);
  const offset = await settledOffset(page);
  assert.ok(offset >= CHUNK && offset < 40 * MiB, `the server stopped at ${offset}`);
  // Once the server has stood still, it keeps standing still, and the page sends nothing.
  const pausedAt = requests.length;
  assert.equal(await settledOffset(page), offset);
  assert.deepEqual(requests.slice(pausedAt), [], 'nothing is sent while paused');
  assert.equal(await progressNow(page), shown, 'the bar stands still while paused');
  assert.match(await page.textContent('#uploads .upload .meta'), /^Paused at \d+\s% · [\d.]+ MiB of 40\.0 MiB$/);
  await shot(page, 'upload-paused');

  // Resumed from the keyboard: the same upload goes on from the server's offset.
  await page.keyboard.press('Enter');
  await page.getByRole('button', { name: 'Pause the upload of random-40MiB.bin' }).waitFor();
  await item(page, 'random-40MiB.bin');
  const afterResume = requests.slice(pausedAt);
  assert.equal(afterResume.filter((r) => r.method === 'POST').length, 0, 'no new upload was created');
  assert.equal(afterResume[0].method, 'HEAD', 'it first asks the server where it stands');
  const firstPatch = afterResume.find((r) => r.method === 'PATCH');
  assert.equal(Number(firstPatch.offset), offset, 'the first chunk after the pause starts at the server offset');
  assert.equal(await servedSha256(page, 'random-40MiB.bin'), sha256(file), 'the server holds the same bytes');
  assert.deepEqual(errors, []);
});

test('an upload cut off by a lost connection goes on by itself once the browser is back online', async (t) => {
  const { page, errors, requests } = await signedIn(t);
  const file = sizedFile(40);
  const cdp = await throttle(page, 8 * MiB);
  await page.setInputFiles('#file-input', file);
  await progressReaches(page, 25);
  // The network goes away in the middle of a chunk.
  await cdp.send('Network.emulateNetworkConditions', {
    offline: true, latency: 0, downloadThroughput: -1, uploadThroughput: -1,
  });
  await until('the line to say it waits for the connection', async () =>
    /^Offline \(resumes when the connection is back\) at \d+/.test(await page.textContent('#uploads .upload .meta')));
  await shot(page, 'upload-offline');
  const cutAt = requests.length;
  // Back online, with no click: the same upload goes on from where the server stopped.
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1,
  });
  await item(page, 'random-40MiB.bin');
  const after = requests.slice(cutAt);
  assert.equal(after.filter((r) => r.method === 'POST').length, 0, 'no new upload was created');
  const firstPatch = after.find((r) => r.method === 'PATCH');
  assert.ok(Number(firstPatch.offset) >= CHUNK, `it resumed at ${firstPatch.offset}, not at 0`);
  assert.equal(await servedSha256(page, 'random-40MiB.bin'), sha256(file), 'the server holds the same bytes');
  assert.equal(await page.locator('#alerts > div').count(), 0, 'no error was shown for a connection that came back');
  assert.deepEqual(errors, []);
});

test('after a reload the unfinished upload is listed, and choosing the file again resumes it', async (t) => {
  const { page, errors, requests } = await signedIn(t);
  const file = sizedFile(40);
  await throttle(page, 8 * MiB);
  await page.setInputFiles('#file-input', file);
  const before = await until('the server to hold part of the upload', async () => {
    const [u] = await unfinished(page);
    return u && u.offset > 0 && u;
  });
  assert.equal(before.name, 'random-40MiB.bin');
  assert.equal(before.length, 40 * MiB);

  await page.reload();
  await page.waitForSelector('#app:not([hidden])');
  const reloadedAt = requests.length;
  const line = page.locator('#uploads .upload.unfinished');
  await line.waitFor();
  assert.match(await line.textContent(),
    /^random-40MiB\.bin — \d+\s% uploaded \([\d.]+ MiB of 40\.0 MiB\)\. Choose the file again to resume\./);
  assert.ok(await line.getByRole('button', { name: 'Discard the unfinished upload of random-40MiB.bin' }).isVisible());
  assert.equal((await storedTusKeys(page)).length, 1, 'tus-js-client remembers the upload');
  await shot(page, 'upload-unfinished');

  await throttle(page, 8 * MiB);
  await page.setInputFiles('#file-input', file);
  await line.waitFor({ state: 'detached' });
  await item(page, 'random-40MiB.bin');
  const sent = requests.slice(reloadedAt);
  assert.equal(sent.filter((r) => r.method === 'POST').length, 0, 'no new upload was created');
  const patches = sent.filter((r) => r.method === 'PATCH');
  const first = Number(patches[0].offset);
  assert.ok(first >= before.offset && first > 0, `the first PATCH after the reload starts at ${first}`);
  // Chunks go forward from there (a retried one repeats its offset, never an earlier one), so
  // what went after the reload is the rest of the file at most.
  const offsets = patches.map((r) => Number(r.offset));
  assert.ok(offsets.every((o, i) => o >= (offsets[i - 1] ?? first) && o < 40 * MiB), JSON.stringify(sent));
  const bytesAfterReload = 40 * MiB - first;
  assert.ok(bytesAfterReload < 40 * MiB, `${bytesAfterReload} bytes sent after the reload`);
  assert.equal(await servedSha256(page, 'random-40MiB.bin'), sha256(file), 'the server holds the same bytes');
  assert.deepEqual(await unfinished(page), []);
  assert.deepEqual(await storedTusKeys(page), []);
  assert.deepEqual(errors, []);
});

test('an unfinished upload can be discarded from the keyboard, and the file then starts afresh', async (t) => {
  const { page, errors, requests } = await signedIn(t);
  const file = sizedFile(24);
  const cdp = await throttle(page, 4 * MiB);
  await page.setInputFiles('#file-input', file);
  await until('the server to hold part of the upload', async () => (await unfinished(page))[0]?.offset > 0);
  await page.reload();
  await page.waitForSelector('#app:not([hidden])');
  const discard = page.getByRole('button', { name: 'Discard the unfinished upload of random-24MiB.bin' });
  await discard.focus();
  await page.keyboard.press('Enter');
  await discard.waitFor({ state: 'detached' });
  assert.equal(await page.textContent('#uploads-note'), 'Discarded the unfinished upload of random-24MiB.bin.');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'file-input', 'the focus goes to the file chooser');
  const deletes = requests.filter((r) => r.method === 'DELETE');
  assert.equal(deletes.length, 1);
  assert.equal(deletes[0].tus, '1.0.0');
  assert.deepEqual(await unfinished(page), []);
  assert.deepEqual(await storedTusKeys(page), [], 'tus-js-client no longer remembers it');

  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  const at = requests.length;
  await page.setInputFiles('#file-input', file);
  await item(page, 'random-24MiB.bin');
  assert.equal(requests.slice(at).filter((r) => r.method === 'POST').length, 1, 'a new upload');
  assert.equal(Number(requests.slice(at).find((r) => r.method === 'PATCH').offset), 0);
  assert.deepEqual(errors, []);
});

test('an upload into a folder lands there; one over the limit is refused with the server\'s sentence', async (t) => {
  const { page, errors, requests } = await signedIn(t, { args: ['--max-upload-bytes', '1000000'] });
  await page.fill('#folder-name', 'scenes');
  await page.click('#folder-form button');
  await page.click('#items li:has(.name:text-is("📁 scenes")) >> text=Open');
  await page.waitForSelector('#crumbs button:has-text("scenes")');
  await page.setInputFiles('#file-input', data('byte.tif'));
  await item(page, 'byte.tif');
  const folder = await page.evaluate(async () => (await (await fetch('/api/v1/tree-items')).json()).find((i) => i.name === 'scenes').id);
  const metadata = requests.find((r) => r.method === 'POST').metadata;
  assert.ok(metadata.split(',').includes(`parent_id ${Buffer.from(folder).toString('base64')}`), metadata);
  assert.ok(metadata.split(',').includes(`filetype ${Buffer.from('image/tiff').toString('base64')}`), metadata);

  await page.setInputFiles('#file-input', data('RGB.byte.tif'));
  const alert = page.locator('#alerts div', { hasText: 'Upload of RGB.byte.tif failed:' });
  await alert.waitFor();
  const text = await alert.locator('span').textContent();
  assert.doesNotMatch(text, /tus:|answered 413|connection broke/, `the server's own sentence: ${text}`);
  await page.waitForSelector('#uploads .upload', { state: 'detached' });
  await shot(page, 'upload-refused');
  assert.deepEqual(errors, []);
});
