// The dashboard in Debian's headless Chromium against the real server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { startServer, launch, data, bigRaster, palettedRaster, root, objectStorage } from './server.mjs';

// Screenshots for a person to look at after a run.
const shots = path.join(root, 'target/screenshots');
mkdirSync(shots, { recursive: true });
const shot = (page, name) => page.screenshot({ path: path.join(shots, name + '.png'), fullPage: true });

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser.close(); });

/// A signed-in page on a fresh server, with page errors collected.
async function signedIn(t, { viewport = { width: 1200, height: 900 }, init, args = [], env = {} } = {}) {
  const server = await startServer(args, env);
  t.after(() => server.stop());
  const context = await browser.newContext({ viewport });
  t.after(() => context.close());
  const page = await context.newPage();
  if (init) await init(page);
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${server.url}/#token=${server.token}`);
  await page.waitForSelector('#app:not([hidden])');
  return { server, page, errors };
}

async function upload(page, file, name) {
  await page.setInputFiles('#file-input', file);
  await page.waitForSelector(`#items li:has(.name:text-is("${name}"))`);
}

async function convert(page, name, options = {}) {
  await page.click(`#items li:has(.name:text-is("${name}")) >> text=Convert to Geo-Raster`);
  for (const [field, value] of Object.entries(options)) await page.fill(`#opt-${field}`, value);
  await page.click('#convert-start');
  await page.waitForSelector('#convert-dialog:not([open])', { state: 'attached' });
}

/// The map as a person sees it: a screenshot of its box (its buttons painted over in the
/// background colour), decoded in the page and measured against that plain background.
/// `drawn`: the share of pixels that are not background; `colours`: how many distinct colours
/// those have (to 5 bits a channel); `tinted`: the share of them that are not gray.
async function mapScreen(page) {
  const background = await page.$eval('#map', (m) => getComputedStyle(m).backgroundColor);
  const png = await page.locator('#map').screenshot({ mask: [page.locator('#map .leaflet-control')], maskColor: background });
  return page.evaluate(async (b64) => {
    const img = new Image();
    img.src = 'data:image/png;base64,' + b64;
    await img.decode();
    const canvas = document.createElement('canvas');
    canvas.width = img.width; canvas.height = img.height;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, img.width, img.height).data;
    const bg = getComputedStyle(document.getElementById('map')).backgroundColor.match(/\d+/g).map(Number);
    let drawn = 0, tinted = 0;
    const colours = new Set();
    for (let i = 0; i < px.length; i += 4) {
      const [r, g, b] = [px[i], px[i + 1], px[i + 2]];
      if (Math.abs(r - bg[0]) <= 6 && Math.abs(g - bg[1]) <= 6 && Math.abs(b - bg[2]) <= 6) continue;
      drawn++;
      if (Math.max(r, g, b) - Math.min(r, g, b) > 24) tinted++;
      colours.add(((r >> 3) << 10) | ((g >> 3) << 5) | (b >> 3));
    }
    return { drawn: drawn / (px.length / 4), colours: colours.size, tinted: drawn ? tinted / drawn : 0 };
  }, png.toString('base64'));
}

/// Measures the map once it has settled: not busy (moving or loading tiles), the same in two
/// measures in a row, and `want` holds; for at most `timeout` ms, the last measure either way.
async function mapSettles(page, want, timeout = 15000) {
  const end = Date.now() + timeout;
  let last = null, screen;
  for (;;) {
    await page.waitForSelector('#map[aria-busy="false"]', { timeout: Math.max(1, end - Date.now()) });
    screen = await mapScreen(page);
    const same = last && fmt(last) === fmt(screen) && last.drawn === screen.drawn;
    if ((same && want(screen)) || Date.now() > end) return screen;
    last = screen;
  }
}

/// Every tile response of the page from now on; `tiles.next(match, what)` resolves with the
/// first one, already here or still to come, that `match` accepts.
function tileResponses(page) {
  const tiles = [];
  const waiting = new Set();
  page.on('response', (r) => {
    if (!r.url().includes('/tiles/WebMercatorQuad/')) return;
    const url = new URL(r.url());
    const [z, x, y] = url.pathname.split('/').slice(-3).map((v) => parseInt(v, 10));
    const tile = { url: r.url(), status: r.status(), type: r.headers()['content-type'], z, x, y, query: url.searchParams };
    tiles.push(tile);
    for (const w of waiting) if (w.match(tile)) { waiting.delete(w); w.resolve(tile); }
  });
  tiles.next = (match, what, timeout = 15000) => {
    const found = tiles.find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const w = { match, resolve: (tile) => { clearTimeout(timer); resolve(tile); } };
      const timer = setTimeout(() => { waiting.delete(w); reject(new Error('no tile came: ' + what)); }, timeout);
      waiting.add(w);
    });
  };
  return tiles;
}

const fmt = (s) => `${(s.drawn * 100).toFixed(1)}% drawn, ${s.colours} colours, ${(s.tinted * 100).toFixed(1)}% tinted`;

const task = (page, name) => page.locator(`#tasks li:has(.title:text-is("${name}"))`).first();

test('sign-in from the printed URL, upload, convert, and the map draws the server\'s tiles in Leaflet', async (t) => {
  const { server, page, errors } = await signedIn(t);
  await page.context().grantPermissions(['clipboard-read', 'clipboard-write']);
  assert.equal(await page.evaluate(() => location.hash), '', 'the token leaves the address bar');
  await page.waitForSelector('#live[data-mode="live"]');
  assert.match(await page.textContent('#live'), /WebSocket/);

  await upload(page, data('RGB.byte.tif'), 'RGB.byte.tif');
  await convert(page, 'RGB.byte.tif');
  const row = task(page, 'RGB.byte.tif');
  await row.locator('.state.SUCCESS').waitFor({ timeout: 60000 });
  assert.equal(await row.locator('.bar').getAttribute('aria-valuenow'), '100');
  assert.match(await row.locator('.result').textContent(), /791×718, 3 band\(s\).*EPSG:32618/);
  await page.waitForSelector('#items li:has(.name:text-is("RGB.byte.cog.tif"))');

  const tiles = tileResponses(page);
  await row.locator('text=Show on map').click();
  await page.waitForFunction(() => document.getElementById('map-caption').textContent === 'RGB.byte.tif');
  const screen = await mapSettles(page, (s) => s.drawn > 0.2 && s.colours > 50);
  t.diagnostic('RGB fitted: ' + fmt(screen));
  assert.ok(screen.drawn > 0.2 && screen.colours > 50, `the tiles are drawn: ${fmt(screen)}`);
  assert.ok(tiles.length >= 2, `tiles were asked for: ${tiles.length}`);
  for (const tile of tiles) {
    assert.equal(tile.status, 200, tile.url);
    assert.equal(tile.type, 'image/png', tile.url);
    assert.ok(tile.query.get('link'), 'each tile URL carries its signed link');
  }
  assert.match(await page.textContent('#map-extent'), /WGS 84 extent: -78\.9/);
  assert.equal(await page.getAttribute('#map', 'aria-label'), 'Map preview of RGB.byte.tif');
  assert.equal(await page.locator('#map-style').isVisible(), false, 'an RGB result needs no stretch');

  // Add to QGIS: the XYZ URL, copied, and the same in a Leaflet snippet; it opens with no session.
  const url = await page.inputValue('#xyz-url');
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/api\/v1\/tree-items\/[0-9a-f-]+\/tiles\/WebMercatorQuad\/\{z\}\/\{x\}\/\{y\}\.png\?link=/);
  await page.click('#xyz-copy');
  await page.waitForSelector('#xyz-note:has-text("copied")');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), url);
  assert.match(await page.textContent('#xyz'), /QGIS: Browser → XYZ Tiles → New Connection, paste this URL\./);
  await page.click('#xyz summary');
  assert.ok((await page.textContent('#xyz-leaflet')).includes(`L.tileLayer('${url}'`));
  // MapLibre takes the TileJSON, opened by the same link.
  const tilejson = (await page.textContent('#xyz-maplibre')).match(/url: '([^']+)'/)[1];
  assert.equal(tilejson, url.replace('/tiles/WebMercatorQuad/{z}/{x}/{y}.png?', '/WebMercatorQuad/tilejson.json?'));
  const anonymous = await browser.newContext();
  t.after(() => anonymous.close());
  const { z, x, y } = tiles[0];
  const res = await anonymous.request.get(url.replace('{z}', z).replace('{x}', x).replace('{y}', y));
  assert.equal(res.status(), 200);
  assert.equal(res.headers()['content-type'], 'image/png');
  assert.ok(url.startsWith(server.url));
  const doc = await anonymous.request.get(tilejson);
  assert.equal(doc.status(), 200, 'the TileJSON opens with no session');
  assert.equal(doc.headers()['access-control-allow-origin'], '*', 'and any site may read it');
  assert.deepEqual((await doc.json()).tiles, [url]);

  // Keyboard: focused, + zooms in (the image fills the map), an arrow pans, and ⤢ fits the
  // extent again.
  await page.focus('#map');
  await page.keyboard.press('+');
  const zoomed = await mapSettles(page, (s) => s.drawn > 0.9);
  assert.ok(zoomed.drawn > 0.9, `+ zooms in: ${fmt(zoomed)}, fitted ${fmt(screen)}`);
  const before = await page.$eval('#map .leaflet-map-pane', (p) => p.style.transform);
  await page.keyboard.press('ArrowRight');
  await page.waitForFunction((b) => document.querySelector('#map .leaflet-map-pane').style.transform !== b, before);
  await page.click('#map .map-fit');
  const fitted = await mapSettles(page, (s) => Math.abs(s.drawn - screen.drawn) < 0.05);
  assert.ok(Math.abs(fitted.drawn - screen.drawn) < 0.05, `fitted again: ${fmt(fitted)}, first ${fmt(screen)}`);
  await shot(page, 'map-preview');
  assert.deepEqual(errors, []);

  await page.click('#sign-out');
  await page.waitForSelector('#sign-in:not([hidden])');
});

test('the map at 1280 and at 390 px: drawn, and nothing wider than the screen', async (t) => {
  const { page, errors } = await signedIn(t, { viewport: { width: 1280, height: 900 } });
  await upload(page, data('RGB.byte.tif'), 'RGB.byte.tif');
  await convert(page, 'RGB.byte.tif');
  const row = task(page, 'RGB.byte.tif');
  await row.locator('.state.SUCCESS').waitFor({ timeout: 60000 });
  await row.locator('text=Show on map').click();
  const wide = await mapSettles(page, (s) => s.drawn > 0.2 && s.colours > 50);
  t.diagnostic('1280 px: ' + fmt(wide));
  assert.ok(wide.drawn > 0.2 && wide.colours > 50, `1280 px: ${fmt(wide)}`);
  await page.locator('.map-card').screenshot({ path: '/tmp/map-1280.png' });
  // The XYZ box stands beside the map on a wide screen.
  const [map, xyz] = [await page.locator('#map').boundingBox(), await page.locator('#xyz').boundingBox()];
  assert.ok(xyz.x > map.x + map.width, 'the XYZ box is beside the map');

  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForFunction(() => document.getElementById('map').getBoundingClientRect().width < 390);
  // Leaflet measures its new size on the next animation frame.
  await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
  await page.click('#map .map-fit');
  const narrow = await mapSettles(page, (s) => s.drawn > 0.2 && s.colours > 50);
  t.diagnostic('390 px: ' + fmt(narrow));
  assert.ok(narrow.drawn > 0.2 && narrow.colours > 50, `390 px: ${fmt(narrow)}`);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no sideways scrolling (${overflow}px too wide)`);
  const [small, below] = [await page.locator('#map').boundingBox(), await page.locator('#xyz').boundingBox()];
  assert.ok(small.height >= 250, `the map keeps a usable height: ${small.height}`);
  assert.ok(below.y >= small.y + small.height, 'the XYZ box goes under the map');
  await page.click('#xyz summary');
  await page.locator('.map-card').screenshot({ path: '/tmp/map-390.png' });
  const wider = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(wider <= 0, `the snippets wrap (${wider}px too wide)`);
  assert.deepEqual(errors, []);
});

test('a single-band result: stretched from its statistics, and a colormap redraws the tiles', async (t) => {
  const { page, errors } = await signedIn(t);
  await upload(page, data('byte.tif'), 'byte.tif');
  await convert(page, 'byte.tif');
  const row = task(page, 'byte.tif');
  await row.locator('.state.SUCCESS').waitFor({ timeout: 60000 });
  const tiles = tileResponses(page);
  await row.locator('text=Show on map').click();
  await page.waitForFunction(() => document.getElementById('map-caption').textContent === 'byte.tif');
  await page.locator('#map-style').waitFor();
  const gray = await mapSettles(page, (s) => s.drawn > 0.2 && s.colours >= 12);
  // Pre-filled from the statistics' 2nd and 98th percentiles, and drawn with them.
  const id = (await page.inputValue('#xyz-url')).match(/tree-items\/([0-9a-f-]+)\//)[1];
  const stats = await page.evaluate(async (id) => (await fetch(`/api/v1/tree-items/${id}/statistics`)).json(), id);
  assert.equal(Number(await page.inputValue('#map-min')), stats.b1.percentile_2);
  assert.equal(Number(await page.inputValue('#map-max')), stats.b1.percentile_98);
  t.diagnostic('byte.tif in gray: ' + fmt(gray));
  assert.ok(gray.drawn > 0.2 && gray.colours >= 12, `gray: ${fmt(gray)}`);
  assert.ok(gray.tinted < 0.05, `drawn in gray: ${fmt(gray)}`);
  assert.ok(tiles.length > 0);
  for (const tile of tiles) assert.equal(tile.query.get('rescale'), `${stats.b1.percentile_2},${stats.b1.percentile_98}`);
  assert.equal(tiles.filter((tile) => tile.query.has('colormap_name')).length, 0);

  // A colormap: new tile URLs that carry it, and coloured pixels.
  const asked = tiles.length;
  await page.selectOption('#map-colormap', 'viridis');
  const coloured = await mapSettles(page, (s) => s.tinted > 0.5 && s.colours >= 12);
  t.diagnostic('byte.tif in viridis: ' + fmt(coloured));
  assert.ok(coloured.tinted > 0.5 && coloured.colours >= 12, `viridis: ${fmt(coloured)}`);
  const redrawn = tiles.slice(asked);
  assert.ok(redrawn.length > 0, 'the tiles were asked for again');
  for (const tile of redrawn) {
    assert.equal(tile.query.get('colormap_name'), 'viridis', tile.url);
    assert.equal(tile.status, 200);
    assert.equal(tile.type, 'image/png');
  }
  assert.match(await page.inputValue('#xyz-url'), /colormap_name=viridis/, 'the XYZ URL draws the same');
  await page.locator('.map-card').screenshot({ path: path.join(shots, 'map-colormap.png') });

  // A narrower stretch, typed and applied with Enter; a backwards one is refused on the page.
  await page.fill('#map-min', '120');
  await page.fill('#map-max', '140');
  await page.press('#map-max', 'Enter');
  const stretched = await tiles.next((tile) => tile.query.get('rescale') === '120,140', 'tiles with the new stretch');
  assert.equal(stretched.query.get('colormap_name'), 'viridis', 'the colormap stays');
  await page.fill('#map-min', '200');
  await page.press('#map-min', 'Enter');
  await page.waitForSelector('#map-style-note:has-text("below")');
  assert.deepEqual(errors, []);
});

test('a paletted result is drawn in its own colours, with nothing to stretch', async (t) => {
  const { page, errors } = await signedIn(t);
  await upload(page, palettedRaster(), 'paletted.tif');
  await convert(page, 'paletted.tif');
  const row = task(page, 'paletted.tif');
  await row.locator('.state.SUCCESS').waitFor({ timeout: 60000 });
  const tiles = tileResponses(page);
  await row.locator('text=Show on map').click();
  await page.waitForFunction(() => document.getElementById('map-caption').textContent === 'paletted.tif');
  const screen = await mapSettles(page, (s) => s.drawn > 0.2 && s.tinted > 0.5);
  t.diagnostic('paletted.tif: ' + fmt(screen));
  assert.ok(screen.drawn > 0.2 && screen.tinted > 0.5, `its palette's colours: ${fmt(screen)}`);
  assert.equal(await page.locator('#map-style').isVisible(), false, 'no stretch form');
  assert.ok(tiles.length > 0);
  for (const tile of tiles) {
    assert.equal(tile.query.get('rescale'), null, tile.url);
    assert.equal(tile.query.get('colormap_name'), null, tile.url);
  }
  assert.deepEqual(errors, []);
});

test('a result with no CRS says so in the map panel, instead of a map', async (t) => {
  const { page, errors } = await signedIn(t);
  await upload(page, data('float_nan.tif'), 'float_nan.tif');
  await convert(page, 'float_nan.tif');
  const row = task(page, 'float_nan.tif');
  await row.locator('.state.SUCCESS').waitFor({ timeout: 60000 });
  await row.locator('text=Show on map').click();
  await page.waitForSelector('#map-message:not([hidden])');
  assert.equal(await page.textContent('#map-message'), '"float_nan.cog.tif" has no CRS: it cannot be placed on a web map.');
  assert.equal(await page.locator('#map').isVisible(), false);
  assert.equal(await page.locator('#xyz').isVisible(), false);
  assert.equal(await page.locator('#map-style').isVisible(), false);
  assert.match(await page.textContent('#map-extent'), /Extent in its own coordinates/);
  assert.equal(await page.locator('#alerts div').count(), 0, 'an expected answer, not an alert');

  // A file with a CRS shown next brings the map back.
  await upload(page, data('byte.tif'), 'byte.tif');
  await convert(page, 'byte.tif');
  await task(page, 'byte.tif').locator('.state.SUCCESS').waitFor({ timeout: 60000 });
  await task(page, 'byte.tif').locator('text=Show on map').click();
  const screen = await mapSettles(page, (s) => s.drawn > 0.2);
  assert.ok(screen.drawn > 0.2, fmt(screen));
  assert.equal(await page.locator('#map-message').isVisible(), false);
  assert.deepEqual(errors, []);
});

test('on object storage: the transfers show as phases, and the map draws tiles from the bucket', async (t) => {
  const { page, errors } = await signedIn(t, objectStorage());
  await upload(page, bigRaster(), 'big-8192x8192x3.tif');
  // Every sentence the task's status line shows.
  await page.evaluate(() => {
    window.lines = new Set();
    new MutationObserver(() => {
      for (const line of document.querySelectorAll('#tasks li .status')) window.lines.add(line.textContent.split(' · ')[0]);
    }).observe(document.getElementById('tasks'), { subtree: true, characterData: true, childList: true });
  });
  await convert(page, 'big-8192x8192x3.tif');
  const row = task(page, 'big-8192x8192x3.tif');
  await row.locator('.state.SUCCESS').waitFor({ timeout: 120000 });
  const lines = await page.evaluate(() => [...window.lines]);
  assert.ok(lines.includes('Downloading source'), `phases shown: ${lines}`);
  assert.ok(lines.includes('Uploading result'), `phases shown: ${lines}`);

  const tiles = tileResponses(page);
  await row.locator('text=Show on map').click();
  await page.waitForFunction(() => document.getElementById('map-caption').textContent === 'big-8192x8192x3.tif');
  // This raster is black where it has data and nodata (transparent) elsewhere: the share of
  // the map drawn, once its tiles have arrived.
  const screen = await mapSettles(page, (s) => s.drawn > 0.05, 30000);
  t.diagnostic('from the bucket: ' + fmt(screen));
  assert.ok(screen.drawn > 0.05, `the map drew tiles from the bucket: ${fmt(screen)}`);
  assert.ok(tiles.length > 0 && tiles.every((tile) => tile.status === 200 && tile.type === 'image/png'),
    `tiles: ${tiles.map((tile) => tile.status)}`);
  await shot(page, 'object-storage');
  assert.deepEqual(errors, []);
});

test('progress advances live, and a long conversion can be cancelled', async (t) => {
  const { page } = await signedIn(t);
  await upload(page, bigRaster(), 'big-8192x8192x3.tif');
  // Record every value the progress bar takes.
  await page.evaluate(() => {
    window.seen = [];
    new MutationObserver(() => {
      const bar = document.querySelector('#tasks li .bar');
      if (bar) window.seen.push(Number(bar.getAttribute('aria-valuenow')));
    }).observe(document.getElementById('tasks'), { subtree: true, attributes: true, childList: true });
  });
  await convert(page, 'big-8192x8192x3.tif');
  const row = task(page, 'big-8192x8192x3.tif');
  await row.locator('.state.SUCCESS').waitFor({ timeout: 120000 });
  const seen = await page.evaluate(() => window.seen);
  assert.ok(seen.some((v) => v > 0 && v < 100), `intermediate values seen: ${seen.slice(0, 20)}`);
  assert.ok(seen.filter((v) => v > 0 && v < 100).length >= 3, 'the bar moved several times before the end');
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i] >= seen[i - 1], `never backwards: ${seen[i - 1]} -> ${seen[i]}`);

  await convert(page, 'big-8192x8192x3.tif', { crs: 'EPSG:4326' });
  const second = page.locator('#tasks li').first();
  await page.waitForFunction(() => Number(document.querySelector('#tasks li .bar').getAttribute('aria-valuenow')) > 5, null, { timeout: 60000 });
  // An ETA appears once the rate is known.
  await second.locator('.status:has-text("left")').waitFor({ timeout: 30000 });
  await shot(page, 'progress');
  await second.locator('button:text("Cancel")').click();
  await second.locator('.state.REVOKED').waitFor({ timeout: 15000 });
  assert.equal(await second.locator('button:text("Cancel")').count(), 0);
});

test('a corrupt file shows its error', async (t) => {
  const { page } = await signedIn(t);
  await upload(page, data('corrupt.tif'), 'corrupt.tif');
  await convert(page, 'corrupt.tif');
  const row = task(page, 'corrupt.tif');
  await row.locator('.state.FAILURE').waitFor({ timeout: 60000 });
  assert.match(await row.locator('.error').textContent(), /TIFFReadEncodedTile|could not/);
  await shot(page, 'failure');

  // An impossible option is refused with the server's sentence, shown on the page.
  await page.click('#items li:has(.name:text-is("corrupt.tif")) >> text=Convert to Geo-Raster');
  await page.fill('#opt-crs', '/etc/passwd');
  await page.click('#convert-start');
  await page.waitForSelector('#alerts div:has-text("target_crs")');
});

test('a reload in the middle of a task reattaches to it', async (t) => {
  const { page } = await signedIn(t);
  await upload(page, bigRaster(), 'big-8192x8192x3.tif');
  await convert(page, 'big-8192x8192x3.tif', { crs: 'EPSG:4326' });
  const progress = () => page.evaluate(() => Number(document.querySelector('#tasks li .bar')?.getAttribute('aria-valuenow') ?? -1));
  await page.waitForFunction(() => Number(document.querySelector('#tasks li .bar')?.getAttribute('aria-valuenow')) > 3, null, { timeout: 60000 });
  await page.reload();
  await page.waitForSelector('#app:not([hidden])');
  // The task list comes with the live feed's first snapshot, a moment after the page shows.
  await page.waitForSelector('#tasks li .bar', { timeout: 15000 });
  const after = await progress();
  assert.ok(after > 3, `the task is back after the reload at ${after}%`);
  await page.waitForFunction((p) => Number(document.querySelector('#tasks li .bar').getAttribute('aria-valuenow')) > p, after, { timeout: 60000 });
  await page.locator('#tasks li').first().locator('button:text("Cancel")').click();
  await page.locator('#tasks li').first().locator('.state.REVOKED').waitFor({ timeout: 15000 });
});

test('with WebSockets blocked the page falls back to SSE and still finishes', async (t) => {
  const { page } = await signedIn(t, {
    init: (page) => page.routeWebSocket(/\/api\/v1\/ws/, (ws) => ws.close({ code: 1011, reason: 'blocked' })),
  });
  await page.waitForSelector('#live[data-mode="live"]', { timeout: 20000 });
  assert.match(await page.textContent('#live'), /SSE/);
  await upload(page, data('byte.tif'), 'byte.tif');
  await convert(page, 'byte.tif');
  await task(page, 'byte.tif').locator('.state.SUCCESS').waitFor({ timeout: 60000 });
  await shot(page, 'sse-fallback');
});

test('fits a phone-width screen and works from the keyboard', async (t) => {
  const { page } = await signedIn(t, { viewport: { width: 375, height: 740 } });
  await upload(page, data('byte.tif'), 'byte.tif');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no sideways scrolling (${overflow}px too wide)`);
  // Keyboard only: focus the file's convert button, open the dialog, start it.
  await page.focus('#items li:has(.name:text-is("byte.tif")) >> text=Convert to Geo-Raster');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#convert-dialog[open]');
  await page.focus('#convert-start');
  await page.keyboard.press('Enter');
  await task(page, 'byte.tif').locator('.state.SUCCESS').waitFor({ timeout: 60000 });
  await shot(page, 'phone');
});

test('the API reference at /docs renders the OpenAPI document', async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const page = await browser.newPage();
  t.after(() => page.close());
  await page.goto(`${server.url}/docs`);
  await page.waitForSelector('h1:has-text("rastercast")', { timeout: 20000 });
  assert.ok(await page.getByText('/api/v1/tree-items/{id}/convert-to-geo-raster').count() > 0);
  await page.screenshot({ path: path.join(shots, 'docs.png') });
});

test('folders are created, entered, filled by drag and drop, and deleted', async (t) => {
  const { page, errors } = await signedIn(t);
  page.on('dialog', (dialog) => dialog.accept());
  await page.fill('#folder-name', 'scenes');
  await page.click('#folder-form button');
  await page.click('#items li:has(.name:text-is("📁 scenes")) >> text=Open');
  await page.waitForSelector('#crumbs button:has-text("scenes")');
  await page.waitForSelector('#items li.muted:has-text("empty")');

  // Drop a real raster on the drop zone, as a person dragging it from their desktop would.
  const bytes = (await import('node:fs')).readFileSync(data('byte.tif')).toString('base64');
  await page.evaluate((b64) => {
    const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([raw], 'dropped.tif', { type: 'image/tiff' }));
    document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, bubbles: true, cancelable: true }));
  }, bytes);
  await page.waitForSelector('#items li:has(.name:text-is("dropped.tif"))');
  assert.match(await page.textContent('#items li:has(.name:text-is("dropped.tif")) .meta'), /20×20, 1 band\(s\) Byte, EPSG:26711/,
    'raster items show their geo metadata');

  await page.click('#crumbs button:has-text("Home")');
  await page.click('#items li:has(.name:text-is("📁 scenes")) >> text=Delete');
  await page.waitForSelector('#items li.muted:has-text("empty")');
  assert.deepEqual(errors, []);
});

test('a sign-in link for another account asks before replacing the session, and replaces nothing until confirmed', async (t) => {
  const { server, page } = await signedIn(t);
  const bob = server.tokenFor('bob');
  const who = () => page.evaluate(async () => (await (await fetch('/api/v1/session')).json()).user);
  assert.equal(await page.textContent('#who'), 'admin');

  // An attacker's link, opened in a new tab of the signed-in browser.
  const other = await page.context().newPage();
  await other.goto(`${server.url}/#token=${bob}`);
  const dialog = other.locator('#switch-user');
  await dialog.waitFor({ state: 'visible' });
  assert.equal(await other.textContent('#switch-text'), 'You are signed in as admin. Sign in as bob instead?');
  assert.equal(await other.evaluate(() => location.hash), '', 'the token leaves the address bar');
  assert.equal(await who(), 'admin', 'nothing is replaced while the question is open');
  await shot(other, 'switch-account');
  await other.click('#switch-stay');
  await other.waitForSelector('#app:not([hidden])');
  assert.equal(await other.textContent('#who'), 'admin');
  assert.equal(await who(), 'admin');

  // A link followed in the open page (only the fragment changes) asks too; yes switches.
  await other.evaluate((token) => { location.hash = 'token=' + token; }, bob);
  await dialog.waitFor({ state: 'visible' });
  assert.equal(await who(), 'admin');
  await other.click('#switch-go');
  await other.waitForFunction(() => document.getElementById('who').textContent === 'bob');
  assert.equal(await who(), 'bob');

  // The same account's link asks nothing.
  await other.goto('about:blank');
  await other.goto(`${server.url}/#token=${bob}`);
  await other.waitForSelector('#app:not([hidden])');
  assert.equal(await other.locator('#switch-user').isVisible(), false);
  assert.equal(await other.textContent('#who'), 'bob');
});

test('queued conversions are cancelled at once, the list filters by state, and a cancelled one is retried', async (t) => {
  const { page, errors } = await signedIn(t);
  await upload(page, bigRaster(), 'big-8192x8192x3.tif');
  await upload(page, data('byte.tif'), 'byte.tif');
  // One slow conversion holds the worker pool's attention while two more wait behind it.
  await convert(page, 'big-8192x8192x3.tif', { crs: 'EPSG:4326' });
  const big = task(page, 'big-8192x8192x3.tif');
  await big.locator('.state.PROGRESS').waitFor({ timeout: 60000 });
  const workers = await page.evaluate(async () => (await (await fetch('/healthz')).json()).workers);
  for (let i = 0; i < workers + 1; i++) await convert(page, 'big-8192x8192x3.tif', { crs: 'EPSG:4326' });
  await page.locator('#tasks li .state.PENDING').first().waitFor();
  const queued = await page.locator('#tasks li .state.PENDING').count();
  assert.ok(queued >= 1, 'something is queued');

  await page.click('#cancel-queued');
  await page.waitForSelector('#tasks-note:has-text("Cancelled")');
  assert.match(await page.textContent('#tasks-note'), new RegExp(`Cancelled ${queued} queued`));
  await page.waitForFunction(() => document.querySelectorAll('#tasks li .state.PENDING').length === 0);
  assert.equal(await page.locator('#tasks li .state.REVOKED').count(), queued);

  // The filter shows one state at a time; the rows stay live underneath.
  await page.selectOption('#task-filter', 'REVOKED');
  assert.equal(await page.locator('#tasks li:visible').count(), queued);
  await shot(page, 'filter-cancelled');
  await page.selectOption('#task-filter', '');
  // Each click redraws its row (the button turns into "Cancelling…"), so take the first enabled
  // button again every time rather than a list made before the clicks.
  const running = page.locator('#tasks li button:text("Cancel"):not([disabled])');
  while (await running.count() > 0) await running.first().click({ timeout: 5000 }).catch(() => {});
  await page.waitForFunction(() => document.querySelectorAll('#tasks li .state.PROGRESS').length === 0, null, { timeout: 30000 });

  // Retry makes a new task from a cancelled one, which then runs to the end.
  const before = await page.locator('#tasks li').count();
  await convert(page, 'byte.tif');
  await task(page, 'byte.tif').locator('.state.SUCCESS').waitFor({ timeout: 60000 });
  await page.locator('#tasks li:has(.state.REVOKED) button:text("Retry")').first().click();
  await page.waitForFunction((n) => document.querySelectorAll('#tasks li').length === n + 2, before);
  const retried = page.locator('#tasks li').first();
  await retried.locator('.state:not(.REVOKED)').waitFor();
  assert.equal(await retried.locator('.title').textContent(), 'big-8192x8192x3.tif');
  await retried.locator('button:text("Cancel")').click();
  await retried.locator('.state.REVOKED').waitFor({ timeout: 30000 });
  assert.deepEqual(errors, []);
});

test('a result gets a shareable link that opens with no sign-in, and its gdalinfo line', async (t) => {
  const { page, errors } = await signedIn(t);
  await page.context().grantPermissions(['clipboard-read', 'clipboard-write']);
  await upload(page, data('byte.tif'), 'byte.tif');
  await convert(page, 'byte.tif');
  const row = task(page, 'byte.tif');
  await row.locator('.state.SUCCESS').waitFor({ timeout: 60000 });
  await row.locator('button:text("Copy link")').click();
  await page.waitForSelector('#tasks-note:has-text("Link")');
  const url = await row.locator('.share input').inputValue();
  assert.match(url, /\/api\/v1\/links\/[0-9a-f.]+\/byte\.cog\.tif$/);
  assert.equal(await row.locator('.share code').textContent(), `gdalinfo /vsicurl/${url}`);
  // The link works without the session: a fresh context has no cookie.
  const anonymous = await browser.newContext();
  t.after(() => anonymous.close());
  const res = await anonymous.request.get(url, { headers: { Range: 'bytes=0-3' } });
  assert.equal(res.status(), 206);
  assert.deepEqual([...await res.body()], [0x49, 0x49, 0x2a, 0x00]);
  await shot(page, 'share-link');
  assert.deepEqual(errors, []);
});

/// axe-core's WCAG 2 A and AA rules (2.0, 2.1 and 2.2) on the page as it is now; the vendored
/// npm copy is evaluated in the page, so no CDN and no script tag the page's CSP would refuse.
const axeSource = readFileSync(path.join(root, 'node_modules/axe-core/axe.min.js'), 'utf8');
async function axeViolations(page) {
  await page.evaluate(axeSource);
  const results = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa'] },
  }));
  return results.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map((n) => `${n.target.join(' ')}: ${n.failureSummary.replace(/\s+/g, ' ')}`),
  }));
}

test('axe-core finds no WCAG 2 A or AA violation, signed in with items, tasks and a map, at 1280 and 390 px', async (t) => {
  // One worker, so that a long conversion keeps another one queued while the page is checked.
  const { page, errors } = await signedIn(t, { viewport: { width: 1280, height: 900 }, args: ['--workers', '1'] });
  await page.context().grantPermissions(['clipboard-read', 'clipboard-write']);
  await page.fill('#folder-name', 'scenes');
  await page.click('#folder-form button');
  await page.waitForSelector('#items li:has(.name:text-is("📁 scenes"))');
  await upload(page, data('corrupt.tif'), 'corrupt.tif');
  await convert(page, 'corrupt.tif');
  await task(page, 'corrupt.tif').locator('.state.FAILURE').waitFor({ timeout: 60000 });
  await upload(page, data('RGB.byte.tif'), 'RGB.byte.tif');
  await convert(page, 'RGB.byte.tif');
  const row = task(page, 'RGB.byte.tif');
  await row.locator('.state.SUCCESS').waitFor({ timeout: 60000 });
  await row.locator('text=Copy link').click();
  await row.locator('input[readonly]').waitFor();
  await row.locator('text=Show on map').click();
  await mapSettles(page, (s) => s.drawn > 0.2 && s.colours > 50);
  // Every state on screen at once: one running, one queued behind it, one failed, one done.
  await upload(page, bigRaster(), 'big-8192x8192x3.tif');
  await upload(page, data('byte.tif'), 'byte.tif');
  await convert(page, 'big-8192x8192x3.tif', { crs: 'EPSG:4326' });
  await task(page, 'big-8192x8192x3.tif').locator('.state.PROGRESS').waitFor({ timeout: 60000 });
  await convert(page, 'byte.tif');
  await task(page, 'byte.tif').locator('.state.PENDING').waitFor();

  const check = async (width, height, what) => {
    await page.setViewportSize({ width, height });
    await page.waitForFunction((w) => window.innerWidth === w, width);
    await page.click('#map .map-fit');
    await mapSettles(page, (s) => s.drawn > 0.2);
    await shot(page, `axe-${width}-${what}`);
    const violations = await axeViolations(page);
    for (const v of violations) t.diagnostic(`${width} px, ${what}: ${v.impact} ${v.id}: ${v.help}\n  ${v.nodes.join('\n  ')}`);
    assert.deepEqual(violations.map((v) => `${v.impact} ${v.id}`), [], `${width} px, ${what}: no WCAG 2 A/AA violation`);
  };
  await check(1280, 900, 'running');
  await check(390, 844, 'running');
  await page.click('#cancel-queued');
  await task(page, 'byte.tif').locator('.state.REVOKED').waitFor();
  await task(page, 'big-8192x8192x3.tif').locator('text=Cancel').click();
  await task(page, 'big-8192x8192x3.tif').locator('.state.REVOKED').waitFor({ timeout: 30000 });
  await check(390, 844, 'cancelled');
  await check(1280, 900, 'cancelled');
  assert.deepEqual(errors, []);
});

test('from the keyboard alone: every stop in the tab order is visible and shows where focus is', async (t) => {
  const { page } = await signedIn(t, { viewport: { width: 1280, height: 900 } });
  await upload(page, data('RGB.byte.tif'), 'RGB.byte.tif');
  await convert(page, 'RGB.byte.tif');
  const row = task(page, 'RGB.byte.tif');
  await row.locator('.state.SUCCESS').waitFor({ timeout: 60000 });
  await row.locator('text=Show on map').click();
  await mapSettles(page, (s) => s.drawn > 0.2);

  // Tab from the top of the page until focus comes back round; each stop is on screen (after
  // the browser scrolled it there) and draws a focus ring: an outline or a box shadow.
  await page.evaluate(() => document.activeElement?.blur());
  const stops = [];
  for (let i = 0; i < 200; i++) {
    await page.keyboard.press('Tab');
    const stop = await page.evaluate(() => {
      const el = document.activeElement;
      if (!el || el === document.body) return null;
      const box = el.getBoundingClientRect();
      const style = getComputedStyle(el);
      const ring = (style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2) || style.boxShadow !== 'none';
      // The ring's contrast with what it is drawn on: the nearest opaque background around it.
      const rgb = (c) => c.match(/[\d.]+/g).map(Number);
      const luminance = ([r, g, b]) => [r, g, b].map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
        .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
      let under = el.parentElement;
      while (under && (getComputedStyle(under).backgroundColor === 'rgba(0, 0, 0, 0)' || rgb(getComputedStyle(under).backgroundColor)[3] === 0)) under = under.parentElement;
      const [a, b] = [luminance(rgb(style.outlineColor)), luminance(rgb(under ? getComputedStyle(under).backgroundColor : 'rgb(255, 255, 255)'))];
      const contrast = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      const name = el.id ? '#' + el.id : el.tagName.toLowerCase() + (el.className ? '.' + String(el.className).split(' ')[0] : '');
      return { key: name + ' ' + (el.getAttribute('aria-label') || el.textContent || '').trim().slice(0, 40), visible: box.width > 0 && box.height > 0, ring, contrast };
    });
    if (!stop) continue;
    if (stops.length && stop.key === stops[0].key) break;
    stops.push(stop);
  }
  t.diagnostic(`${stops.length} tab stops`);
  assert.ok(stops.length >= 10, `the page can be walked with Tab: ${stops.map((s) => s.key).join(', ')}`);
  for (const s of stops) {
    assert.ok(s.visible, `${s.key}: focused but not visible`);
    assert.ok(s.ring, `${s.key}: no visible focus ring`);
    assert.ok(s.contrast >= 3, `${s.key}: the focus ring's contrast with its background is ${s.contrast.toFixed(2)}:1, under 3:1`);
  }
  // The order is the page's own: no positive tabindex reorders it.
  const reordered = await page.$$eval('[tabindex]', (els) => els.filter((e) => e.tabIndex > 0).map((e) => e.outerHTML.slice(0, 80)));
  assert.deepEqual(reordered, [], 'tab order follows the document');
  // The map is a tab stop and says which keys move it.
  const map = stops.find((s) => s.key.startsWith('#map '));
  assert.ok(map, 'the map is in the tab order');
  const keys = await page.$eval('#map', (m) => document.getElementById(m.getAttribute('aria-describedby')).textContent);
  assert.match(keys, /arrow keys pan, \+ and - zoom/);
  assert.equal(await page.isVisible('#map-keys'), true, 'the keys are shown, not only announced');
});
