// The dashboard's webhooks in Debian's headless Chromium, against the real server and a real
// receiver: an endpoint added (its secret shown once, and checked against a delivery's
// signature), test deliveries in the log, a failed attempt redelivered under the same
// webhook-id, a refused URL shown with the server's sentence, and a 410 that disables an
// endpoint until it is enabled again.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { copyFileSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { startServer, launch, root } from './server.mjs';

const shots = path.join(root, 'target/screenshots');
mkdirSync(shots, { recursive: true });

// A day of retries passes in under two minutes; loopback receivers are allowed.
const WEBHOOK_ARGS = ['--webhook-allow-private', '--webhook-schedule-speedup', '1000'];

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser.close(); });

/// A signed-in page on a fresh server, with page errors collected.
async function signedIn(t, { viewport = { width: 1280, height: 900 }, args = WEBHOOK_ARGS } = {}) {
  const server = await startServer(args);
  t.after(() => server.stop());
  const context = await browser.newContext({ viewport });
  t.after(() => context.close());
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${server.url}/#token=${server.token}`);
  await page.waitForSelector('#app:not([hidden])');
  return { server, page, errors };
}

/// A webhook receiver on 127.0.0.1 that answers `receiver.status` and records every request.
async function startReceiver(t) {
  const receiver = { status: 200, requests: [] };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const status = receiver.status;
      receiver.requests.push({
        at: Date.now(), status, path: req.url,
        id: req.headers['webhook-id'], timestamp: req.headers['webhook-timestamp'],
        signature: req.headers['webhook-signature'], body: Buffer.concat(chunks),
      });
      res.writeHead(status, { 'Content-Type': 'text/plain' });
      res.end(status < 300 ? 'ok' : `receiver says ${status}`);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }));
  receiver.url = `http://127.0.0.1:${server.address().port}/hooks/rastercast`;
  receiver.with = (id) => receiver.requests.filter((r) => r.id === id);
  return receiver;
}

/// The signatures in a `webhook-signature` header that `secret` made for the request.
function signedBy(secret, request) {
  assert.match(secret, /^whsec_[A-Za-z0-9+/]+=*$/);
  const key = Buffer.from(secret.slice('whsec_'.length), 'base64');
  const content = Buffer.concat([Buffer.from(`${request.id}.${request.timestamp}.`), request.body]);
  const expected = 'v1,' + createHmac('sha256', key).update(content).digest('base64');
  return request.signature.split(' ').filter((s) => s === expected).length;
}

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

/// One delivery as the server logs it, asked from the page (its cookie).
const logged = (page, endpointId, deliveryId) => page.evaluate(async ([endpoint, id]) => {
  const response = await fetch(`/api/v1/webhooks/${endpoint}/deliveries?limit=200`);
  if (!response.ok) throw new Error(`deliveries: ${response.status} ${await response.text()}`);
  return (await response.json()).deliveries.find((d) => d.id === id);
}, [endpointId, deliveryId]);

async function addEndpoint(page, url, { events = ['task.succeeded'], description = '' } = {}) {
  await page.getByLabel('Endpoint URL').fill(url);
  const fieldset = page.getByRole('group', { name: 'Events to send' });
  for (const box of await fieldset.getByRole('checkbox').all()) {
    await box.setChecked(events.includes(await box.getAttribute('value')));
  }
  if (description) await page.getByLabel('Description (optional)').fill(description);
  await page.getByRole('button', { name: 'Add endpoint' }).click();
}

/// The secret shown once after adding or rotating, then put away as the person would.
async function takeSecret(page, url) {
  const field = page.getByLabel(`Signing secret of ${url}`);
  await field.waitFor();
  const secret = await field.inputValue();
  assert.match(secret, /^whsec_/);
  assert.ok(await field.evaluate((f) => f.readOnly && f === document.activeElement), 'read-only, and focused to copy');
  assert.match(await page.textContent('#secret-note'), /will not be shown again/);
  await page.getByRole('button', { name: 'I have saved it' }).click();
  await page.waitForSelector('#webhook-secret', { state: 'hidden' });
  assert.equal(await field.inputValue(), '', 'the page keeps no copy');
  return secret;
}

const deliveryRow = (page, id) => page.locator(`#delivery-rows tr[data-id="${id}"]`);

/// The id of the one delivery received that is not in `seen`.
const newDelivery = (receiver, seen) => until('a new delivery at the receiver', () => {
  const fresh = receiver.requests.find((r) => !seen.includes(r.id));
  return fresh && fresh.id;
});

test('an endpoint gets signed test deliveries, and a failed one is redelivered from its log', async (t) => {
  const { page, errors } = await signedIn(t);
  const receiver = await startReceiver(t);
  assert.ok(await page.getByRole('heading', { name: 'Webhooks' }).isVisible());
  assert.ok(await page.isVisible('#no-webhooks'));

  await addEndpoint(page, receiver.url, { events: ['task.succeeded'], description: 'the test receiver' });
  await page.waitForSelector(`#webhooks-note:has-text("Added ${receiver.url}. Its signing secret is shown once")`);
  const secret = await takeSecret(page, receiver.url);
  const endpoint = page.locator('#webhook-list li', { hasText: receiver.url });
  assert.equal(await endpoint.locator('.name').textContent(), receiver.url);
  assert.equal(await endpoint.locator('.state').textContent(), 'enabled');
  assert.equal(await endpoint.locator('.meta').first().textContent(), 'Events: task.succeeded · the test receiver');
  const endpointId = await endpoint.getAttribute('data-id');
  // The secret was in the creation's answer only: the list has none, and the page keeps none.
  const listed = await page.evaluate(async () => (await fetch('/api/v1/webhooks')).json());
  assert.deepEqual(listed.map((e) => [e.url, e.events, 'secret' in e]), [[receiver.url, ['task.succeeded'], false]]);
  assert.ok(!(await page.content()).includes(secret.slice(6)), 'the secret is nowhere in the page');

  // The log, opened before anything was sent.
  const open = page.getByRole('button', { name: `Deliveries to ${receiver.url}` });
  await open.click();
  await page.waitForSelector('#deliveries:not([hidden])');
  assert.equal(await open.getAttribute('aria-expanded'), 'true');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'deliveries-title');
  assert.equal(await page.textContent('#deliveries-title'), `Deliveries to ${receiver.url}`);
  assert.equal(await page.textContent('#deliveries-caption'), `Deliveries to ${receiver.url}, newest first`);
  await page.waitForSelector('#no-deliveries:has-text("No deliveries yet")');

  // A test delivery: signed with the secret shown, logged as succeeded with the 200.
  await page.getByRole('button', { name: `Send test to ${receiver.url}` }).click();
  const first = await newDelivery(receiver, []);
  const [delivered] = receiver.with(first);
  assert.equal(delivered.path, '/hooks/rastercast');
  assert.equal(JSON.parse(delivered.body).type, 'webhook.test');
  assert.match(first, /^msg_/);
  assert.ok(Math.abs(Number(delivered.timestamp) - Date.now() / 1000) < 60, 'a current webhook-timestamp');
  assert.equal(signedBy(secret, delivered), 1, `signed with the secret shown: ${delivered.signature}`);
  const firstRow = deliveryRow(page, first);
  await firstRow.locator('.state.succeeded').waitFor();
  assert.ok(await page.getByRole('region', { name: `Deliveries to ${receiver.url}, newest first` }).isVisible(),
    'the scrolling table is a region named by its caption');
  assert.equal(await firstRow.locator('td').nth(1).locator('span').textContent(), 'webhook.test');
  assert.equal(await firstRow.locator('.attempts').textContent(), '1');
  assert.equal(await firstRow.locator('.answer .code').textContent(), '200');
  assert.match(await firstRow.locator('td').nth(5).textContent(), /^\d+ ms$/);
  await page.waitForSelector('#deliveries-note:has-text("The test delivery succeeded: the receiver answered 200")');

  // A receiver that fails: the attempt is logged with its 500, and the delivery stays pending.
  receiver.status = 500;
  await page.getByRole('button', { name: `Send test to ${receiver.url}` }).click();
  const second = await newDelivery(receiver, [first]);
  const secondRow = deliveryRow(page, second);
  await secondRow.locator('.answer .code.bad:text-is("500")').waitFor();
  assert.equal(await secondRow.locator('.state').textContent(), 'pending');
  await page.waitForSelector('#deliveries-note:has-text("The test delivery failed: the receiver answered 500")');
  assert.equal(await page.locator('#delivery-rows tr').first().getAttribute('data-id'), second, 'newest first');
  await secondRow.locator('.answer summary').click();
  assert.equal(await secondRow.locator('.answer pre').textContent(), 'receiver says 500');

  // Past the quick retries the next one is seconds away: a request before it is the redelivery.
  const pending = await until('four failed attempts', async () => {
    const d = await logged(page, endpointId, second);
    return d.attempts.length >= 4 && d.status === 'pending' && d;
  });
  const retryAt = Date.parse(pending.next_attempt_at);
  assert.ok(retryAt - Date.now() > 2000, `the next retry is at ${pending.next_attempt_at}`);
  await secondRow.locator(`.attempts:text-is("${pending.attempts.length}")`).waitFor();
  await page.screenshot({ path: path.join(shots, 'webhooks-failing.png'), fullPage: true });

  receiver.status = 200;
  const before = receiver.with(second).length;
  const redeliver = page.getByRole('button', { name: new RegExp(`^Redeliver webhook\\.test of .*, ${second}$`) });
  assert.equal(await redeliver.textContent(), 'Redeliver');
  await redeliver.click();
  const again = await until('the redelivery at the receiver', () => receiver.with(second)[before]);
  assert.ok(again.at < retryAt, 'it came at once, not with the scheduled retry');
  assert.equal(again.status, 200);
  assert.equal(again.body.toString(), receiver.with(second)[0].body.toString(), 'the same event, byte for byte');
  assert.equal(signedBy(secret, again), 1);
  await secondRow.locator('.state.succeeded').waitFor();
  assert.equal(await secondRow.locator('.answer .code').textContent(), '200');
  assert.equal(await secondRow.locator('.attempts').textContent(), String(before + 1));
  await page.waitForSelector(`#deliveries-note:has-text("The redelivery of webhook.test ${second} succeeded")`);
  assert.equal(await secondRow.locator('.answer details').getAttribute('open'), '', 'an opened answer stays open through refreshes');

  // The layout at a desktop width, and at a phone's, where only the table scrolls sideways.
  const card = page.locator('#webhooks-card');
  await card.screenshot({ path: '/tmp/webhooks-1280.png' });
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no sideways scrolling of the page (${overflow}px too wide)`);
  const wrap = await page.evaluate(() => {
    const w = document.querySelector('#deliveries .table-wrap');
    return { scrolls: w.scrollWidth > w.clientWidth, fits: w.getBoundingClientRect().right <= window.innerWidth };
  });
  assert.ok(wrap.fits, 'the table wrapper fits the screen');
  assert.ok(wrap.scrolls, 'the table scrolls inside its wrapper');
  await card.screenshot({ path: '/tmp/webhooks-390.png' });
  copyFileSync('/tmp/webhooks-1280.png', path.join(shots, 'webhooks-1280.png'));
  copyFileSync('/tmp/webhooks-390.png', path.join(shots, 'webhooks-390.png'));

  // Closed, the log asks nothing more.
  await page.getByRole('button', { name: 'Close' }).click();
  await page.waitForSelector('#deliveries', { state: 'hidden' });
  assert.equal(await open.getAttribute('aria-expanded'), 'false');
  assert.ok(await open.evaluate((b) => b === document.activeElement), 'the focus goes back to the Deliveries button');
  // (The page's own state, rather than a wait for requests that must not come.)
  assert.deepEqual(await page.evaluate(() => [webhooks.open, webhooks.timer]), [null, null], 'no refresh is scheduled');

  assert.equal(await page.locator('#alerts > div').count(), 0, await page.textContent('#alerts'));
  assert.deepEqual(errors, []);
});

test('a refused URL is shown with the server\'s sentence', async (t) => {
  // Without --webhook-allow-private, as in production.
  const { page, errors } = await signedIn(t, { args: [] });
  await addEndpoint(page, 'http://127.0.0.1:9/hook');
  const privateAddress = page.locator('#alerts div', { hasText: 'webhooks go to public addresses only' });
  await privateAddress.waitFor();
  assert.match(await privateAddress.locator('span').textContent(), /^127\.0\.0\.1 is a loopback, private/);
  await addEndpoint(page, 'ftp://example.com/hook');
  await page.locator('#alerts div', { hasText: 'A webhook URL starts with https:// (or http://), not ftp://.' }).waitFor();
  // Nothing was added, and what was typed stays to be corrected.
  assert.ok(await page.isVisible('#no-webhooks'));
  assert.equal(await page.locator('#webhook-list li').count(), 0);
  assert.equal(await page.getByLabel('Endpoint URL').inputValue(), 'ftp://example.com/hook');
  assert.ok(await page.isHidden('#webhook-secret'));
  assert.deepEqual(errors, []);
});

test('a 410 disables an endpoint; Enable, Rotate secret and Delete', async (t) => {
  const { page, errors } = await signedIn(t);
  const receiver = await startReceiver(t);
  await addEndpoint(page, receiver.url, { events: ['task.failed', 'task.revoked'] });
  const oldSecret = await takeSecret(page, receiver.url);
  const endpoint = page.locator('#webhook-list li', { hasText: receiver.url });
  assert.equal(await endpoint.locator('.meta').first().textContent(), 'Events: task.failed, task.revoked');

  // "Send test" opens the log by itself; the 410 disables the endpoint while it is watched.
  receiver.status = 410;
  await page.getByRole('button', { name: `Send test to ${receiver.url}` }).click();
  await page.waitForSelector('#deliveries:not([hidden])');
  const gone = await newDelivery(receiver, []);
  await deliveryRow(page, gone).locator('.state.failed').waitFor();
  await endpoint.locator('.state:text-is("disabled")').waitFor();
  assert.match(await endpoint.locator('.reason').textContent(), /answered 410 Gone/);
  assert.ok(await page.getByRole('button', { name: `Send test to ${receiver.url}` }).isDisabled());
  assert.ok(await deliveryRow(page, gone).getByRole('button').isDisabled(), 'no redelivery to a disabled endpoint');
  assert.match(await page.textContent('#deliveries-state'), /This endpoint is disabled/);
  await page.screenshot({ path: path.join(shots, 'webhooks-disabled.png'), fullPage: true });

  const enable = page.getByRole('button', { name: `Enable ${receiver.url}` });
  await enable.focus();
  await page.keyboard.press('Enter');
  await endpoint.locator('.state:text-is("enabled")').waitFor();
  assert.equal(await enable.count(), 0);
  assert.equal(await page.evaluate(() => document.activeElement.getAttribute('aria-label')), `Send test to ${receiver.url}`);
  assert.match(await page.textContent('#webhooks-note'), /^Enabled /);

  // After a rotation, deliveries carry both secrets' signatures for a day.
  receiver.status = 200;
  await page.getByRole('button', { name: `Rotate secret of ${receiver.url}` }).click();
  const newSecret = await takeSecret(page, receiver.url);
  assert.notEqual(newSecret, oldSecret);
  assert.match(await endpoint.textContent(), /The previous secret also signs until/);
  assert.equal(await page.evaluate(() => document.activeElement.getAttribute('aria-label')), `Rotate secret of ${receiver.url}`,
    'the focus goes back where it was once the secret is put away');
  await page.getByRole('button', { name: `Send test to ${receiver.url}` }).click();
  const rotated = receiver.with(await newDelivery(receiver, [gone]))[0];
  assert.equal(rotated.signature.split(' ').length, 2, rotated.signature);
  assert.equal(signedBy(newSecret, rotated), 1);
  assert.equal(signedBy(oldSecret, rotated), 1);
  await deliveryRow(page, rotated.id).locator('.state.succeeded').waitFor();

  const dialogs = [];
  page.on('dialog', (d) => { dialogs.push(d.message()); d.accept(); });
  await page.getByRole('button', { name: `Delete ${receiver.url}` }).click();
  await page.waitForSelector('#no-webhooks:not([hidden])');
  assert.deepEqual(dialogs, [`Delete the endpoint ${receiver.url} and its delivery log?`]);
  assert.ok(await page.isHidden('#deliveries'), 'the log of a deleted endpoint closes');
  assert.deepEqual(await page.evaluate(async () => (await fetch('/api/v1/webhooks')).json()), []);
  assert.equal(await page.locator('#alerts > div').count(), 0, await page.textContent('#alerts'));
  assert.deepEqual(errors, []);
});
