// scratch (deleted later)
import { startServer, launch, data } from './server.mjs';
const server = await startServer();
const browser = await launch();
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
page.on('console', (m) => console.log('console', m.type(), m.text()));
page.on('pageerror', (e) => console.log('pageerror', e.message));
page.on('response', (r) => { if (r.url().includes('/tiles/') || r.url().includes('tilejson') || r.url().includes('statistics')) console.log(r.status(), r.headers()['content-type'], r.url().slice(0, 200)); });
await page.goto(`${server.url}/#token=${server.token}`);
await page.waitForSelector('#app:not([hidden])');
for (const f of process.argv.slice(2)) {
  await page.setInputFiles('#file-input', data(f));
  await page.waitForSelector(`#items li:has(.name:text-is("${f}"))`);
  await page.click(`#items li:has(.name:text-is("${f}")) >> text=Convert to Geo-Raster`);
  await page.click('#convert-start');
  const row = page.locator(`#tasks li:has(.title:text-is("${f}"))`).first();
  await row.locator('.state.SUCCESS').waitFor({ timeout: 60000 });
  await row.locator('text=Show on map').click();
  await page.waitForFunction(() => document.getElementById('map').dataset.tiles === 'loaded' || !document.getElementById('map-message').hidden, null, { timeout: 20000 });
  await page.locator('.map-card').scrollIntoViewIfNeeded();
  await page.locator('.map-card').screenshot({ path: `/tmp/scratch/${f}.png` });
  console.log(await page.textContent('.map-card'));
}
await browser.close();
await server.stop();
