// The rastercast dashboard: sign-in, the file tree with resumable uploads (tus), conversions with
// live progress (WebSocket, then SSE, then polling), a map preview of the server's own XYZ tiles
// in Leaflet, and webhook endpoints with their delivery logs.
'use strict';

const $ = (id) => document.getElementById(id);
const FINAL = new Set(['SUCCESS', 'FAILURE', 'REVOKED']);

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function api(path, options = {}) {
  const response = await fetch('/api/v1' + path, { credentials: 'same-origin', ...options });
  if (response.status === 204) return null;
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, (body && body.detail) || response.statusText);
  return body;
}

const json = (method, body) => ({
  method, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
});

// Errors are always shown on the page, never only logged.
function showError(error) {
  const box = document.createElement('div');
  const text = document.createElement('span');
  text.textContent = error instanceof Error ? error.message : String(error);
  const close = document.createElement('button');
  close.type = 'button'; close.className = 'secondary'; close.textContent = 'Dismiss';
  close.onclick = () => box.remove();
  box.append(text, close);
  $('alerts').append(box);
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function bytes(n) {
  if (n < 1024) return n + ' B';
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
  return n.toFixed(1) + ' ' + units[i];
}

function geoSummary(g) {
  if (!g) return '';
  const bands = g.bands ? g.bands.map((b) => b.data_type).join('/') : '';
  return `${g.width}×${g.height}, ${g.band_count} band(s) ${bands}, ${g.crs || 'no CRS'}, ` +
    `${g.compression}, blocks ${g.block_size.join('×')}, overviews ${g.overviews.length}`;
}

// ---------------------------------------------------------------- sign-in

async function signIn(token) {
  await api('/session', json('POST', { token }));
}

async function start() {
  $('sign-in-form').onsubmit = async (e) => {
    e.preventDefault();
    try { await signIn($('token').value.trim()); $('token').value = ''; await enter(); }
    catch (err) { showError(err); }
  };
  $('sign-out').onclick = async () => {
    try { await api('/session', { method: 'DELETE' }); } catch (err) { showError(err); }
    live.stop();
    location.reload();
  };
  // The URL printed on first start carries the token in the fragment, which never reaches
  // the server's logs; it is exchanged for the cookie and removed from the address bar.
  const token = new URLSearchParams(location.hash.slice(1)).get('token');
  if (token) {
    history.replaceState(null, '', location.pathname + location.search);
    try { await signInByLink(token); } catch (err) { showError(err); }
  }
  // A link followed while the page is open changes only the fragment: start over with it.
  window.addEventListener('hashchange', () => {
    if (new URLSearchParams(location.hash.slice(1)).get('token')) location.reload();
  });
  await enter();
}

// A link can carry anyone's token: one that would replace the session already here (and send
// everything uploaded next into someone else's account) needs the person's yes first.
async function signInByLink(token) {
  let current = null;
  try { current = await api('/session'); } catch (err) { if (err.status !== 401) throw err; }
  if (!current) return signIn(token);
  // The bearer header takes precedence over the cookie: this asks whose token it is, and
  // changes nothing.
  const incoming = await api('/session', { headers: { Authorization: 'Bearer ' + token } });
  if (incoming.user === current.user) return;
  if (await confirmSwitch(current.user, incoming.user)) await signIn(token);
}

function confirmSwitch(current, incoming) {
  const dialog = $('switch-user');
  $('switch-text').textContent =
    `You are signed in as ${current}. Sign in as ${incoming} instead?`;
  $('switch-stay').textContent = `Stay signed in as ${current}`;
  $('switch-go').textContent = `Sign in as ${incoming}`;
  return new Promise((resolve) => {
    const answer = (yes) => { dialog.close(); resolve(yes); };
    $('switch-stay').onclick = () => answer(false);
    $('switch-go').onclick = () => answer(true);
    dialog.oncancel = (e) => { e.preventDefault(); answer(false); };
    dialog.showModal();
    $('switch-stay').focus();
  });
}

async function enter() {
  let me;
  try { me = await api('/session'); }
  catch (err) {
    if (err.status !== 401) showError(err);
    $('sign-in').hidden = false; $('app').hidden = true; $('sign-out').hidden = true;
    $('token').focus();
    return;
  }
  $('sign-in').hidden = true; $('app').hidden = false; $('sign-out').hidden = false;
  $('who').textContent = me.user;
  tree.init();
  tasks.init();
  webhooks.init();
  map.init();
  await Promise.all([tree.open(null, 'Home'), tasks.load(), uploads.loadUnfinished(), webhooks.load()]);
  live.start();
}

// ---------------------------------------------------------------- file tree

const tree = {
  path: [],
  current: null,
  convertTarget: null,

  init() {
    $('file-input').onchange = (e) => { this.upload([...e.target.files]); e.target.value = ''; };
    const drop = $('drop');
    drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
    drop.ondragleave = () => drop.classList.remove('over');
    drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove('over'); this.upload([...e.dataTransfer.files]); };
    $('folder-form').onsubmit = async (e) => {
      e.preventDefault();
      try {
        await api('/tree-items/folders', json('POST', { name: $('folder-name').value, parent_id: this.current }));
        $('folder-name').value = '';
        await this.refresh();
      } catch (err) { showError(err); }
    };
    $('convert-cancel').onclick = () => $('convert-dialog').close();
    $('convert-form').onsubmit = (e) => { e.preventDefault(); this.convert(); };
  },

  async open(id, name) {
    const at = this.path.findIndex((p) => p.id === id);
    if (at >= 0) this.path = this.path.slice(0, at + 1); else this.path.push({ id, name });
    this.current = id;
    await this.refresh();
  },

  async refresh() {
    let items;
    try { items = await api('/tree-items' + (this.current ? '?parent_id=' + this.current : '')); }
    catch (err) { showError(err); return; }
    const crumbs = $('crumbs');
    crumbs.replaceChildren(...this.path.map((p, i) => el('button', {
      type: 'button', textContent: (i ? '/ ' : '') + p.name, onclick: () => this.open(p.id, p.name),
    })));
    $('items').replaceChildren(...items.map((item) => this.row(item)));
    if (!items.length) $('items').append(el('li', { className: 'muted', textContent: 'This folder is empty.' }));
  },

  row(item) {
    const actions = el('div', { className: 'row' });
    if (item.kind === 'folder') {
      actions.append(el('button', { type: 'button', textContent: 'Open', onclick: () => this.open(item.id, item.name) }));
    } else {
      actions.append(el('button', {
        type: 'button', textContent: 'Convert to Geo-Raster', onclick: () => this.askConvert(item),
      }));
      actions.append(el('a', { className: 'button secondary', href: `/api/v1/tree-items/${item.id}/content`,
        download: item.name, textContent: 'Download' }));
      // The server draws map tiles from a COG only.
      if (item.geo_raster && item.geo_raster.layout === 'COG') {
        actions.append(el('button', { type: 'button', className: 'secondary', textContent: 'Show on map',
          onclick: () => map.show(item.id, item.name, item.geo_raster) }));
      }
    }
    actions.append(el('button', { type: 'button', className: 'danger', textContent: 'Delete',
      onclick: () => this.remove(item) }));
    const meta = item.kind === 'folder' ? 'Folder'
      : `${bytes(item.size)} · ${item.content_type || ''}` + (item.geo_raster ? ' · ' + geoSummary(item.geo_raster) : '');
    const li = el('li', {},
      el('span', { className: 'name', textContent: (item.kind === 'folder' ? '📁 ' : '') + item.name }),
      el('span', { className: 'meta', textContent: meta }), actions);
    li.dataset.id = item.id;
    return li;
  },

  async remove(item) {
    if (!confirm(`Delete ${item.name}${item.kind === 'folder' ? ' and everything in it' : ''}?`)) return;
    try { await api('/tree-items/' + item.id, { method: 'DELETE' }); await this.refresh(); }
    catch (err) { showError(err); }
  },

  upload(files) {
    for (const file of files) uploads.add(file, this.current);
  },

  askConvert(item) {
    this.convertTarget = item;
    $('convert-source').textContent = item.name;
    $('convert-dialog').showModal();
  },

  async convert() {
    const form = $('convert-form');
    const options = {};
    for (const field of form.elements) {
      if (!field.name) continue;
      if (field.type === 'checkbox') { if (field.checked) options[field.name] = true; continue; }
      const value = field.value.trim();
      if (value === '') continue;
      options[field.name] = ['quality', 'blocksize'].includes(field.name) ? Number(value) : value;
    }
    const item = this.convertTarget;
    try {
      const started = await api(`/tree-items/${item.id}/convert-to-geo-raster`, json('POST', options));
      $('convert-dialog').close();
      tasks.update(await api(`/tasks/${started.task_id}/status`));
    } catch (err) { showError(err); }
  },
};

// ---------------------------------------------------------------- uploads

// Resumable uploads (tus 1.0.0, with the vendored tus-js-client) in 8 MiB chunks: a broken
// connection is retried, a paused upload goes on from the server's offset, and after a reload
// choosing the same file again resumes it (tus-js-client keeps each upload's URL in
// localStorage under the file's name, type, size and date).
const TUS = { 'Tus-Resumable': '1.0.0' };
const UPLOADS = '/api/v1/uploads';
const uploadId = (url) => new URL(url, location.href).pathname.split('/').pop();

const uploads = {
  // Uploads running (or paused) in this page, by file; the server's unfinished ones, by id.
  active: new Map(),
  unfinished: new Map(),

  key: (file) => [file.name, file.type, file.size, file.lastModified].join('/'),

  add(file, parentId) {
    if (typeof tus === 'undefined' || !tus.isSupported) {
      showError(`Upload of ${file.name} failed: the upload library (/vendor/tus.min.js) did not load; reload the page.`);
      return;
    }
    const key = this.key(file);
    const running = this.active.get(key);
    if (running) { running.button.focus(); return; }
    const view = this.view(file);
    const metadata = { filename: file.name };
    if (file.type) metadata.filetype = file.type;
    if (parentId) metadata.parent_id = parentId;
    const state = { paused: false, stopped: false, button: view.button, view };
    // No extra headers: the session cookie authenticates, as for api(), and the Origin the
    // server checks on cookie-authenticated writes goes with every XMLHttpRequest.
    const upload = new tus.Upload(file, {
      endpoint: UPLOADS,
      chunkSize: 8 * 1024 * 1024,
      // A server restarting or a flaky link: about four minutes of retries before giving up.
      retryDelays: [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000, 60000, 60000],
      metadata,
      removeFingerprintOnSuccess: true,
      // Resuming an upload listed as unfinished: that line gives way to this one.
      onUploadUrlAvailable: () => this.dropUnfinished(uploadId(upload.url)),
      onProgress: (sent, total) => { if (!state.paused) view.progress(sent, total); },
      onSuccess: () => {
        this.active.delete(key);
        view.remove();
        $('uploads-note').textContent = `Uploaded ${file.name}.`;
        tree.refresh();
      },
      onError: (err) => {
        const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
        let detail = null;
        try { detail = JSON.parse(err.originalResponse.getBody()).detail; } catch (_) { /* no JSON body */ }
        // A refusal (too large, no such folder, …) is final; anything else can be resumed.
        if (status >= 400 && status < 500 && ![408, 409, 423, 429].includes(status)) {
          showError(`Upload of ${file.name} failed: ${detail || `the server answered ${status}.`}`);
          this.active.delete(key);
          view.remove();
          return;
        }
        state.paused = true;
        if (!status && !navigator.onLine) {
          // Offline: it goes on by itself once the browser is back online (see resumeStopped).
          state.stopped = true;
          view.paused(true, 'Offline (resumes when the connection is back)');
          return;
        }
        showError(`Upload of ${file.name} stopped: ${detail || (status ? `the server answered ${status}.` : 'the connection broke.')} Resume it when the server is back.`);
        view.paused(true, 'Stopped');
      },
    });
    state.upload = upload;
    this.active.set(key, state);
    view.button.onclick = () => {
      state.stopped = false;
      state.paused = !state.paused;
      view.paused(state.paused, 'Paused');
      if (state.paused) upload.abort(); else upload.start();
    };
    upload.findPreviousUploads().then((previous) => {
      // The one the server still lists as unfinished, if any; a stale one is found out by
      // tus-js-client (its HEAD gets 404) and replaced by a new upload.
      const listed = previous.find((p) => p.uploadUrl && this.unfinished.has(uploadId(p.uploadUrl)));
      const resume = listed || previous[0];
      if (resume) upload.resumeFromPreviousUpload(resume);
      if (!state.paused) upload.start();
    }).catch((err) => { this.active.delete(key); view.remove(); showError(err); });
  },

  // Uploads stopped by a lost connection go on where the server stopped once it is back.
  resumeStopped() {
    for (const state of this.active.values()) {
      if (!state.stopped) continue;
      state.stopped = false;
      state.paused = false;
      state.view.paused(false);
      state.upload.start();
    }
  },

  // One line per upload: its name, a progress bar, how far it is, and Pause / Resume.
  view(file) {
    const bar = el('span', { style: 'width:0%' });
    const progress = el('div', { className: 'bar', role: 'progressbar', ariaLabel: 'Uploading ' + file.name,
      ariaValueMin: 0, ariaValueMax: 100, ariaValueNow: 0 }, bar);
    const status = el('span', { className: 'meta', textContent: 'Starting…' });
    const button = el('button', { type: 'button', className: 'secondary push', textContent: 'Pause',
      ariaLabel: 'Pause the upload of ' + file.name });
    const line = el('div', { className: 'upload' },
      el('div', { className: 'row' }, el('span', { className: 'name', textContent: file.name }), status, button),
      progress);
    $('uploads').append(line);
    let shown = { sent: 0, total: file.size };
    const describe = (prefix) => {
      const pct = shown.total ? Math.floor((shown.sent / shown.total) * 100) : 0;
      return `${prefix}${pct}\u00a0% · ${bytes(shown.sent)} of ${bytes(shown.total)}`;
    };
    return {
      button,
      progress(sent, total) {
        shown = { sent, total };
        const pct = total ? Math.floor((sent / total) * 100) : 0;
        bar.style.width = pct + '%';
        progress.setAttribute('aria-valuenow', pct);
        progress.setAttribute('aria-valuetext', describe(''));
        status.textContent = describe('');
      },
      paused(yes, why) {
        button.textContent = yes ? 'Resume' : 'Pause';
        button.ariaLabel = (yes ? 'Resume' : 'Pause') + ' the upload of ' + file.name;
        status.textContent = yes ? describe(why + ' at ') : 'Resuming…';
      },
      remove() { uploads.removeLine(line); },
    };
  },

  // A line leaves; the keyboard focus it held goes to the next line's button, or to the file chooser.
  removeLine(line) {
    const focused = line.contains(document.activeElement);
    const next = line.nextElementSibling || line.previousElementSibling;
    line.remove();
    if (focused) (next ? next.querySelector('button') : $('file-input')).focus();
  },

  // The server's unfinished uploads (from before a reload, or another tab), each with Discard.
  async loadUnfinished() {
    for (const line of this.unfinished.values()) line.remove();
    this.unfinished.clear();
    let list;
    try { list = await api('/uploads', { headers: TUS }); } catch (err) { showError(err); return; }
    for (const u of list) {
      if (u.complete) continue;
      const line = this.unfinishedLine(u);
      this.unfinished.set(u.id, line);
      $('uploads').append(line);
    }
  },

  unfinishedLine(u) {
    const done = u.length ? `${Math.floor((u.offset / u.length) * 100)}\u00a0% uploaded (${bytes(u.offset)} of ${bytes(u.length)})`
      : `${bytes(u.offset)} uploaded`;
    const until = u.expires_at && new Date(u.expires_at);
    const kept = until && !Number.isNaN(until.getTime()) ? ` It is kept until ${until.toLocaleString()}.` : '';
    const text = el('span', { className: 'meta' }, el('strong', { className: 'name', textContent: u.name }),
      ` — ${done}. Choose the file again to resume.${kept}`);
    const line = el('div', { className: 'upload unfinished' }, el('div', { className: 'row' }, text,
      el('button', { type: 'button', className: 'danger push', textContent: 'Discard',
        ariaLabel: 'Discard the unfinished upload of ' + u.name, onclick: () => this.discard(u) })));
    line.dataset.uploadId = u.id;
    return line;
  },

  async discard(u) {
    try {
      await api('/uploads/' + encodeURIComponent(u.id), { method: 'DELETE', headers: TUS });
    } catch (err) {
      if (err.status !== 404) { showError(`Discarding ${u.name} failed: ${err.message}`); return; }
    }
    this.forget(u.id);
    this.dropUnfinished(u.id);
    $('uploads-note').textContent = `Discarded the unfinished upload of ${u.name}.`;
  },

  dropUnfinished(id) {
    const line = this.unfinished.get(id);
    this.unfinished.delete(id);
    if (line) this.removeLine(line);
  },

  // Whatever tus-js-client remembers of this upload, so that the file starts afresh next time.
  forget(id) {
    for (let i = localStorage.length - 1; i >= 0; i--) {
      const key = localStorage.key(i);
      if (!key || !key.startsWith('tus::')) continue;
      try {
        const stored = JSON.parse(localStorage.getItem(key));
        if (stored && stored.uploadUrl && uploadId(stored.uploadUrl) === id) localStorage.removeItem(key);
      } catch (_) { /* not one of tus-js-client's */ }
    }
  },
};

// ---------------------------------------------------------------- tasks

const tasks = {
  byId: new Map(),
  rates: new Map(),

  init() {
    this.byId.clear();
    $('tasks').replaceChildren();
    $('task-filter').onchange = () => { for (const s of this.byId.values()) this.show(s); };
    $('cancel-queued').onclick = () => this.cancelQueued();
  },

  // The state filter hides the rows it does not take; they stay live underneath.
  show(s) {
    const row = $('task-' + s.task_id);
    const wanted = $('task-filter').value;
    if (row) row.hidden = wanted !== '' && s.state !== wanted;
  },

  async cancelQueued() {
    try {
      const done = await api('/tasks/cancel', json('POST', { state: 'PENDING' }));
      $('tasks-note').textContent = done.cancelled === 1 ? 'Cancelled 1 queued conversion.'
        : `Cancelled ${done.cancelled} queued conversions.`;
      for (const id of done.task_ids) this.update(await api(`/tasks/${id}/status`));
    } catch (err) { showError(err); }
  },

  // A link that opens the result with no sign-in (GDAL, QGIS, a colleague), for an hour.
  async share(row, itemId) {
    try {
      const link = await api(`/tree-items/${itemId}/links`, json('POST', { expires_in: 3600 }));
      const box = row.querySelector('.share') || el('div', { className: 'share meta' });
      const field = el('input', { readOnly: true, value: link.url, ariaLabel: 'Shareable link, valid for an hour' });
      box.replaceChildren(field, el('code', { textContent: `gdalinfo /vsicurl/${link.url}` }));
      row.append(box);
      let copied = false;
      try { await navigator.clipboard.writeText(link.url); copied = true; } catch { field.select(); }
      $('tasks-note').textContent = copied ? 'Link copied; it works for an hour.'
        : 'Link ready below; copy it from the field. It works for an hour.';
    } catch (err) { showError(err); }
  },

  async retry(id) {
    try {
      const started = await api(`/tasks/${id}/retry`, { method: 'POST' });
      this.update(await api(`/tasks/${started.task_id}/status`));
    } catch (err) { showError(err); }
  },

  async load() {
    try {
      const page = await api('/tasks?limit=50');
      for (const status of page.tasks.reverse()) this.update(status, { quiet: true });
    } catch (err) { showError(err); }
  },

  // Any single event is enough to draw a task; older ones than what is shown are ignored.
  // `quiet`: drawing history at load, not news; the file tree is already fresh.
  update(status, { quiet = false } = {}) {
    const known = this.byId.get(status.task_id);
    if (known && status.seq != null && known.seq != null && status.seq < known.seq) return;
    if (known && FINAL.has(known.state) && !FINAL.has(status.state)) return;
    this.byId.set(status.task_id, status);
    this.track(status);
    let row = $('task-' + status.task_id);
    if (!row) {
      row = this.row(status);
      $('tasks').prepend(row);
    }
    this.fill(row, status);
    this.show(status);
    $('no-tasks').hidden = this.byId.size > 0;
    // A new output item appears beside its source, however the success was first learnt.
    if (!quiet && status.state === 'SUCCESS' && (!known || known.state !== 'SUCCESS')) tree.refresh();
  },

  row(status) {
    const li = el('li', { id: 'task-' + status.task_id });
    li.innerHTML = `<div class="row"><strong class="title"></strong><span class="state"></span></div>
      <div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100"><span></span></div>
      <div class="meta status"></div><div class="error"></div><div class="meta result"></div>
      <div class="row actions"></div>`;
    li.querySelector('.bar').setAttribute('aria-label', 'Conversion of ' + status.source_name);
    return li;
  },

  fill(row, s) {
    row.querySelector('.title').textContent = s.source_name || s.task_id;
    const state = row.querySelector('.state');
    state.textContent = s.state; state.className = 'state ' + s.state;
    const bar = row.querySelector('.bar');
    bar.setAttribute('aria-valuenow', String(s.progress));
    bar.querySelector('span').style.width = s.progress + '%';
    let line = s.status || '';
    if (s.state === 'PENDING' && s.queue_position) line = `Queued, position ${s.queue_position}`;
    const eta = this.eta(s);
    if (eta) line += ` · about ${eta} left`;
    row.querySelector('.status').textContent = `${line} · ${Math.round(s.progress)}%`;
    row.querySelector('.error').textContent = s.state === 'FAILURE' ? s.error || 'Failed.' : '';
    const result = row.querySelector('.result');
    const actions = row.querySelector('.actions');
    actions.replaceChildren();
    result.textContent = s.state === 'SUCCESS' && s.result ? geoSummary(s.result) + ` · ${bytes(s.result.size_bytes)} in ${s.result.duration_s}s` : '';
    if (s.state === 'SUCCESS' && s.result) {
      actions.append(el('button', { type: 'button', className: 'secondary', textContent: 'Show on map',
        onclick: () => map.show(s.result.tree_item_id, s.source_name, s.result) }));
      actions.append(el('button', { type: 'button', className: 'secondary', textContent: 'Copy link',
        ariaLabel: 'Copy link to the result of ' + s.source_name,
        onclick: () => this.share(row, s.result.tree_item_id) }));
      for (const w of s.result.warnings || []) result.append(el('div', { textContent: '⚠ ' + w }));
    }
    if (!FINAL.has(s.state)) {
      actions.append(el('button', { type: 'button', className: 'danger', textContent: 'Cancel',
        disabled: s.status === 'Cancelling…', onclick: () => this.cancel(s.task_id) }));
    }
    if (s.state === 'FAILURE' || s.state === 'REVOKED') {
      actions.append(el('button', { type: 'button', className: 'secondary', textContent: 'Retry',
        ariaLabel: 'Retry the conversion of ' + s.source_name, onclick: () => this.retry(s.task_id) }));
    }
  },

  async cancel(id) {
    try { this.update(await api(`/tasks/${id}/cancel`, { method: 'POST' })); }
    catch (err) { showError(err); }
  },

  track(s) {
    if (s.state !== 'PROGRESS') { this.rates.delete(s.task_id); return; }
    if (!this.rates.has(s.task_id)) this.rates.set(s.task_id, { t: performance.now(), p: s.progress });
  },

  eta(s) {
    const first = this.rates.get(s.task_id);
    if (!first || s.state !== 'PROGRESS' || s.progress <= first.p + 1) return '';
    const seconds = ((performance.now() - first.t) / 1000) * ((100 - s.progress) / (s.progress - first.p));
    return seconds < 60 ? Math.ceil(seconds) + ' s' : Math.ceil(seconds / 60) + ' min';
  },
};

// ---------------------------------------------------------------- webhooks

// Endpoints that receive the user's task events, and the log of what came of each delivery.
// The server signs, sends and retries; the page registers endpoints, shows their deliveries
// and asks for one again.
const DELIVERY_PAGE = 25;
const DELIVERY_MOST = 200;
const DELIVERY_REFRESH_MS = 3000;

// Today's times alone; older ones with their date.
function when(iso) {
  if (!iso) return '';
  const t = new Date(iso);
  return t.toDateString() === new Date().toDateString() ? t.toLocaleTimeString() : t.toLocaleString();
}

// Redrawn rows keep the keyboard focus on the same control (`data-key`), so that a refresh
// every few seconds does not throw a keyboard or screen reader user back to the page's top.
function keepFocus(container, draw) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.dataset.key : null;
  draw();
  if (key) {
    const again = container.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

const webhooks = {
  endpoints: new Map(),
  // The endpoint whose deliveries are shown, how many of them, and what was last drawn.
  open: null,
  limit: DELIVERY_PAGE,
  drawn: '',
  timer: null,
  // Answers to a refresh older than the latest one asked are dropped.
  seq: 0,
  // Deliveries the person just sent or redelivered: their outcome is announced once logged.
  watched: new Map(),
  // Where the focus goes back to once the shown secret is put away.
  secretFrom: null,

  init() {
    this.close({ quiet: true });
    this.endpoints.clear();
    $('webhook-list').replaceChildren();
    $('webhook-form').onsubmit = (e) => { e.preventDefault(); this.create(); };
    $('secret-value').onfocus = (e) => e.target.select();
    $('secret-copy').onclick = () => this.copySecret();
    $('secret-hide').onclick = () => this.hideSecret();
    $('deliveries-refresh').onclick = () => this.refresh({ asked: true });
    $('deliveries-close').onclick = () => this.close();
    $('delivery-filter').onchange = () => { this.limit = DELIVERY_PAGE; this.refresh({ asked: true }); };
    $('deliveries-more').onclick = () => {
      this.limit = Math.min(DELIVERY_MOST, this.limit + DELIVERY_PAGE);
      this.refresh({ asked: true });
    };
    // A hidden tab asks nothing, and catches up as soon as it is shown again.
    document.onvisibilitychange = () => {
      if (!document.hidden && this.open) this.refresh(); else this.schedule();
    };
  },

  async load() {
    try {
      const list = await api('/webhooks');
      this.endpoints.clear();
      for (const e of list) this.endpoints.set(e.id, e);
      this.drawList();
    } catch (err) { showError(err); }
  },

  drawList() {
    const list = $('webhook-list');
    keepFocus(list, () => list.replaceChildren(...[...this.endpoints.values()].map((e) => this.row(e))));
    $('no-webhooks').hidden = this.endpoints.size > 0;
  },

  row(e) {
    // Every row has the same buttons: each one's name says which endpoint it acts on.
    const button = (action, text, props) => {
      const b = el('button', { type: 'button', className: 'secondary', textContent: text, ...props });
      b.dataset.key = `${action}:${e.id}`;
      return b;
    };
    const deliveries = button('deliveries', 'Deliveries', {
      ariaLabel: `Deliveries to ${e.url}`, ariaExpanded: String(this.open === e.id),
      onclick: () => (this.open === e.id ? this.close() : this.show(e.id)),
    });
    deliveries.setAttribute('aria-controls', 'deliveries');
    const actions = el('div', { className: 'row' },
      button('test', 'Send test', { ariaLabel: `Send test to ${e.url}`, disabled: e.disabled, onclick: () => this.test(e.id) }),
      deliveries,
      button('rotate', 'Rotate secret', { ariaLabel: `Rotate secret of ${e.url}`, onclick: () => this.rotate(e.id) }),
      e.disabled ? button('enable', 'Enable', { className: '', ariaLabel: `Enable ${e.url}`, onclick: () => this.enable(e.id) }) : null,
      button('delete', 'Delete', { className: 'danger', ariaLabel: `Delete ${e.url}`, onclick: () => this.remove(e.id) }));
    const li = el('li', { id: 'webhook-' + e.id },
      el('div', { className: 'row' },
        el('span', { className: 'name', textContent: e.url }),
        el('span', { className: 'state ' + (e.disabled ? 'off' : 'on'), textContent: e.disabled ? 'disabled' : 'enabled' })),
      el('span', { className: 'meta', textContent: `Events: ${e.events.join(', ')}` + (e.description ? ` · ${e.description}` : '') }),
      e.disabled ? el('span', { className: 'error reason', textContent: e.disabled_reason || 'Disabled.' }) : null,
      !e.disabled && e.failing_since ? el('span', { className: 'error', textContent:
        `Every delivery since ${when(e.failing_since)} failed; after five days of that the endpoint is disabled.` }) : null,
      e.previous_secret_until ? el('span', { className: 'meta', textContent:
        `The previous secret also signs until ${when(e.previous_secret_until)}.` }) : null,
      actions);
    li.dataset.id = e.id;
    return li;
  },

  async create() {
    const form = $('webhook-form');
    const events = [...form.querySelectorAll('input[name=events]:checked')].map((c) => c.value);
    if (!events.length) {
      showError('Choose at least one event to send to the endpoint.');
      form.querySelector('input[name=events]').focus();
      return;
    }
    const body = { url: $('webhook-url').value.trim(), events };
    const description = $('webhook-description').value.trim();
    if (description) body.description = description;
    try {
      const { secret, ...endpoint } = await api('/webhooks', json('POST', body));
      this.endpoints.set(endpoint.id, endpoint);
      this.drawList();
      form.reset();
      this.showSecret(secret, endpoint.url, `Added ${endpoint.url}.`);
    } catch (err) { showError(err); }
  },

  // A secret the server made is in that one answer only: it stays on screen until the person
  // says it is saved, and the page keeps it nowhere else.
  showSecret(secret, url, done, previousUntil) {
    if (!secret) { $('webhooks-note').textContent = done; return; }
    $('secret-label').textContent = `Signing secret of ${url}`;
    $('secret-value').value = secret;
    $('secret-note').textContent = 'Copy it now into your receiver: it will not be shown again. ' + (previousUntil
      ? `Until ${when(previousUntil)} deliveries carry the previous secret’s signature too, so the receiver can switch over.`
      : 'The receiver checks each delivery’s webhook-signature with it.');
    $('webhook-secret').hidden = false;
    $('webhooks-note').textContent = `${done} Its signing secret is shown once, below the form.`;
    this.secretFrom = document.activeElement;
    $('secret-value').focus();
  },

  async copySecret() {
    try {
      await navigator.clipboard.writeText($('secret-value').value);
      $('webhooks-note').textContent = 'Secret copied.';
    } catch {
      $('secret-value').focus();
      $('webhooks-note').textContent = 'The secret is selected: copy it with Ctrl+C (⌘C).';
    }
  },

  hideSecret() {
    $('secret-value').value = '';
    $('webhook-secret').hidden = true;
    $('webhooks-note').textContent = '';
    const back = this.secretFrom && this.secretFrom.isConnected && this.secretFrom !== document.body ? this.secretFrom : $('webhook-url');
    back.focus();
  },

  async test(id) {
    const e = this.endpoints.get(id);
    try {
      const queued = await api(`/webhooks/${id}/test`, { method: 'POST' });
      this.watched.set(queued.delivery_id, { what: 'The test delivery', attempts: 0 });
      if (this.open !== id) await this.show(id, { focus: false });
      $('deliveries-note').textContent = `Test delivery to ${e.url} queued.`;
      await this.refresh();
    } catch (err) {
      showError(err);
      // Disabled or deleted meanwhile (a 410 answer disables it): show it as it now is.
      if (err.status === 404 || err.status === 409) this.load();
    }
  },

  async rotate(id) {
    const e = this.endpoints.get(id);
    try {
      const rotated = await api(`/webhooks/${id}/rotate-secret`, { method: 'POST' });
      this.endpoints.set(id, await api(`/webhooks/${id}`));
      this.drawList();
      this.showSecret(rotated.secret, e.url, `Rotated the secret of ${e.url}.`, rotated.previous_secret_until);
    } catch (err) { showError(err); }
  },

  async enable(id) {
    try {
      const e = await api(`/webhooks/${id}`, json('PATCH', { disabled: false }));
      this.endpoints.set(id, e);
      this.drawList();
      $('webhooks-note').textContent = `Enabled ${e.url}: its waiting deliveries go out now.`;
      // The Enable button is gone; the row's first action takes the focus.
      $('webhook-list').querySelector(`[data-key="test:${id}"]`).focus();
      if (this.open === id) this.refresh();
    } catch (err) { showError(err); }
  },

  async remove(id) {
    const e = this.endpoints.get(id);
    if (!confirm(`Delete the endpoint ${e.url} and its delivery log?`)) return;
    try {
      await api(`/webhooks/${id}`, { method: 'DELETE' });
      if (this.open === id) this.close({ quiet: true });
      this.endpoints.delete(id);
      this.drawList();
      $('webhooks-note').textContent = `Deleted ${e.url}.`;
      $('webhook-url').focus();
    } catch (err) { showError(err); }
  },

  show(id, { focus = true } = {}) {
    this.open = id;
    this.limit = DELIVERY_PAGE;
    this.drawn = '';
    $('delivery-filter').value = '';
    $('delivery-rows').replaceChildren();
    $('deliveries-note').textContent = '';
    $('deliveries-state').textContent = 'Loading…';
    const url = this.endpoints.get(id).url;
    $('deliveries-title').textContent = `Deliveries to ${url}`;
    $('deliveries-caption').textContent = `Deliveries to ${url}, newest first`;
    $('deliveries').hidden = false;
    this.drawList();
    if (focus) $('deliveries-title').focus();
    return this.refresh({ asked: true });
  },

  close({ quiet = false } = {}) {
    const was = this.open;
    const fromPanel = $('deliveries').contains(document.activeElement);
    this.open = null;
    this.seq++;
    this.schedule();
    this.watched.clear();
    $('deliveries').hidden = true;
    $('delivery-rows').replaceChildren();
    this.drawn = '';
    if (!was) return;
    this.drawList();
    if (!quiet && fromPanel) {
      const back = $('webhook-list').querySelector(`[data-key="deliveries:${was}"]`);
      if (back) back.focus();
    }
  },

  // Only while the panel is open and the tab is visible.
  schedule(ms = DELIVERY_REFRESH_MS) {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.open && !document.hidden) this.timer = setTimeout(() => this.refresh(), ms);
  },

  // `asked`: by the person, whose failure is an alert. The timer's failures only mark the
  // panel, or a server that is down would add an alert every few seconds.
  async refresh({ asked = false } = {}) {
    const id = this.open;
    if (!id) return;
    clearTimeout(this.timer);
    const seq = ++this.seq;
    const query = new URLSearchParams({ limit: String(this.limit) });
    const status = $('delivery-filter').value;
    if (status) query.set('status', status);
    try {
      const [page, endpoint] = await Promise.all([
        api(`/webhooks/${id}/deliveries?${query}`), api(`/webhooks/${id}`)]);
      if (seq !== this.seq) return;
      // A 410 or five failing days disable an endpoint while its log is watched.
      if (JSON.stringify(endpoint) !== JSON.stringify(this.endpoints.get(id))) {
        this.endpoints.set(id, endpoint);
        this.drawList();
      }
      this.drawDeliveries(page, endpoint, status);
      const most = page.next_cursor && this.limit >= DELIVERY_MOST ? ` Showing the newest ${DELIVERY_MOST}.` : '';
      $('deliveries-state').textContent = (endpoint.disabled ? 'This endpoint is disabled: enable it to redeliver. ' : '') +
        `Newest first. Updated at ${new Date().toLocaleTimeString()}; updates every ${DELIVERY_REFRESH_MS / 1000} s while shown.${most}`;
    } catch (err) {
      if (seq !== this.seq) return;
      if (err.status === 404) {
        this.endpoints.delete(id);
        this.close({ quiet: true });
        this.drawList();
        showError('That endpoint no longer exists.');
        return;
      }
      if (asked) showError(err);
      $('deliveries-state').textContent = `Could not update: ${err.message} Trying again in a moment.`;
    }
    if (seq === this.seq) this.schedule();
  },

  drawDeliveries(page, endpoint, status) {
    this.announce(page.deliveries);
    // Unchanged rows are not redrawn, so that nothing under the pointer or the focus moves.
    const drawn = JSON.stringify([page, endpoint.disabled]);
    if (drawn === this.drawn) return;
    this.drawn = drawn;
    const rows = $('delivery-rows');
    const opened = new Set([...rows.querySelectorAll('details[open]')].map((d) => d.dataset.key));
    keepFocus(rows, () => rows.replaceChildren(...page.deliveries.map((d) => this.deliveryRow(d, endpoint, opened))));
    const none = page.deliveries.length === 0;
    rows.closest('.table-wrap').hidden = none;
    $('no-deliveries').hidden = !none;
    $('no-deliveries').textContent = status ? `No ${status} deliveries.`
      : 'No deliveries yet: press “Send test”, or finish a conversion this endpoint subscribes to.';
    $('deliveries-more').hidden = !page.next_cursor || this.limit >= DELIVERY_MOST;
  },

  deliveryRow(d, endpoint, opened) {
    const last = d.attempts[d.attempts.length - 1];
    const status = el('td', {}, el('span', { className: 'state ' + d.status, textContent: d.status }));
    if (d.status === 'pending' && d.next_attempt_at) {
      status.append(el('div', { className: 'meta', textContent: (last ? 'retry at ' : 'due at ') + when(d.next_attempt_at) }));
    }
    const answer = el('td', { className: 'answer' });
    if (!last) answer.textContent = '—';
    else if (last.status_code != null) {
      answer.append(el('span', { className: 'code' + (last.status_code >= 300 ? ' bad' : ''), textContent: String(last.status_code) }));
    } else answer.append(el('span', { className: 'error', textContent: last.error || 'No answer' }));
    if (last && last.response) {
      const details = el('details', {}, el('summary', { textContent: 'Body' }), el('pre', { textContent: last.response }));
      details.dataset.key = 'body:' + d.id;
      details.open = opened.has(details.dataset.key);
      answer.append(details);
    }
    const redeliver = el('button', {
      type: 'button', className: 'secondary', textContent: 'Redeliver', disabled: endpoint.disabled,
      ariaLabel: `Redeliver ${d.type} of ${when(d.created_at)}, ${d.id}`, onclick: () => this.redeliver(endpoint.id, d),
    });
    redeliver.dataset.key = 'redeliver:' + d.id;
    const tr = el('tr', {},
      el('td', {}, el('time', { dateTime: d.created_at, textContent: when(d.created_at) })),
      el('td', { className: 'event' }, el('span', { textContent: d.type }), el('code', { className: 'id', textContent: d.id })),
      status,
      el('td', { className: 'num attempts', textContent: String(d.attempts.length) }),
      answer,
      el('td', { className: 'num', textContent: last ? `${last.latency_ms} ms` : '—' }),
      el('td', {}, redeliver));
    tr.dataset.id = d.id;
    return tr;
  },

  async redeliver(endpointId, d) {
    try {
      await api(`/webhooks/${endpointId}/deliveries/${encodeURIComponent(d.id)}/redeliver`, { method: 'POST' });
      this.watched.set(d.id, { what: `The redelivery of ${d.type} ${d.id}`, attempts: d.attempts.length });
      $('deliveries-note').textContent = `Redelivery of ${d.type} ${d.id} queued.`;
      await this.refresh();
    } catch (err) { showError(err); }
  },

  // The outcome of a delivery the person sent or redelivered, once its next attempt is logged.
  announce(deliveries) {
    for (const d of deliveries) {
      const watched = this.watched.get(d.id);
      if (!watched || d.attempts.length <= watched.attempts) continue;
      this.watched.delete(d.id);
      const last = d.attempts[d.attempts.length - 1];
      const answer = last.status_code != null ? `answered ${last.status_code}` : `did not answer (${last.error})`;
      $('deliveries-note').textContent = d.status === 'succeeded'
        ? `${watched.what} succeeded: the receiver answered ${last.status_code} in ${last.latency_ms} ms.`
        : `${watched.what} failed: the receiver ${answer}.` + (d.status === 'pending' ? ` It is tried again at ${when(d.next_attempt_at)}.` : '');
    }
  },
};

// ---------------------------------------------------------------- live updates

// WebSocket first; SSE when WebSockets fail; polling when both do. Each retries with backoff.
const live = {
  mode: null, ws: null, es: null, timer: null, failures: 0, delay: 1000, stopped: false,

  set(mode, on) {
    this.mode = mode;
    const badge = $('live');
    badge.textContent = mode; badge.classList.toggle('on', on);
    badge.dataset.mode = mode.split(' ')[0].toLowerCase();
  },

  start() { this.stopped = false; this.failures = 0; this.websocket(); },

  stop() {
    this.stopped = true;
    if (this.ws) this.ws.close();
    if (this.es) this.es.close();
    clearTimeout(this.timer);
  },

  retry(next) {
    clearTimeout(this.timer);
    this.timer = setTimeout(next, this.delay);
    this.delay = Math.min(this.delay * 2, 30000);
  },

  websocket() {
    if (this.stopped) return;
    if (typeof WebSocket !== 'function' || this.failures >= 2) { this.failures = 0; this.sse(); return; }
    let opened = false;
    let ws;
    try { ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/api/v1/ws`); }
    catch (_) { this.failures = 2; this.websocket(); return; }
    this.ws = ws;
    ws.onopen = () => {
      opened = true; this.failures = 0; this.delay = 1000;
      this.set('Live · WebSocket', true);
      ws.send(JSON.stringify({ type: 'subscribe', all: true }));
    };
    ws.onmessage = (e) => {
      const message = JSON.parse(e.data);
      if (message.type === 'error') showError(message.detail); else tasks.update(message);
    };
    ws.onclose = () => {
      if (this.stopped) return;
      if (!opened) this.failures++;
      this.set('Reconnecting…', false);
      this.retry(() => this.websocket());
    };
  },

  sse() {
    if (this.stopped) return;
    if (typeof EventSource !== 'function' || this.failures >= 2) { this.failures = 0; this.poll(); return; }
    const es = new EventSource('/api/v1/events');
    this.es = es;
    let opened = false;
    es.onopen = () => { opened = true; this.failures = 0; this.delay = 1000; this.set('Live · SSE', true); };
    es.onmessage = (e) => { if (e.data) tasks.update(JSON.parse(e.data)); };
    es.onerror = () => {
      // EventSource reconnects by itself (with Last-Event-ID) unless the server refused it.
      if (es.readyState !== EventSource.CLOSED) { this.set('Reconnecting…', false); return; }
      es.close();
      if (!opened) this.failures++;
      this.retry(() => this.sse());
    };
  },

  async poll() {
    if (this.stopped) return;
    try {
      const page = await api('/tasks?limit=50');
      for (const status of page.tasks.reverse()) tasks.update(status);
      this.set('Polling', true); this.delay = 2000;
      this.timer = setTimeout(() => this.poll(), 2000);
    } catch (err) {
      this.set('Offline, retrying…', false);
      this.retry(() => this.poll());
    }
  },
};

// ---------------------------------------------------------------- map preview

// The server's own XYZ tiles of a COG (from its TileJSON) in Leaflet, on a plain background:
// there is no basemap to fetch. A single-band result gets a stretch, pre-filled from the file's
// statistics, and a colormap; changing them asks for a new TileJSON, whose tile URLs carry
// them. Every result shown also gets its XYZ URL, for QGIS or another web map.
const OVERZOOM = 3; // levels past the COG's own resolution, its tiles enlarged
const LINK_SECONDS = 7 * 86400; // the longest a TileJSON's tile URLs work (the server's limit)
const FIT_PADDING = 8; // pixels around the extent when fitted

// A number as `rescale` takes it: a plain decimal (no exponent, at most 15 decimals), to
// `significant` digits.
function decimal(v, significant = 6) {
  if (!Number.isFinite(v)) return '';
  const digits = Math.min(15, Math.max(0, significant - Math.ceil(Math.log10(Math.abs(v) || 1))));
  return v.toFixed(digits).replace(/(\.\d*?)0+$/, '$1').replace(/\.$/, '');
}

// Bands drawn as colour: three for RGB, one for gray or a colormap (an alpha band is the mask).
function colourBands(geo) {
  if (geo && geo.bands && geo.bands.length) return geo.bands.filter((b) => b.color_interpretation !== 'Alpha').length;
  return geo ? geo.band_count : 0;
}

const map = {
  view: null, layer: null, bounds: null, crisp: null, expiry: '', moving: false,
  // What is shown (or loading): the item, and the TileJSON query of its layer.
  item: null, query: '', seq: 0,

  init() {
    const apply = () => this.restyle();
    $('map-style').onsubmit = (e) => { e.preventDefault(); apply(); };
    $('map-colormap').onchange = apply;
    $('map-min').onchange = apply;
    $('map-max').onchange = apply;
    $('xyz-copy').onclick = async () => {
      const field = $('xyz-url');
      try { await navigator.clipboard.writeText(field.value); $('xyz-note').textContent = 'URL copied. ' + this.expiry; }
      catch { field.select(); $('xyz-note').textContent = 'URL selected: copy it with Ctrl+C (⌘C). ' + this.expiry; }
    };
  },

  async show(itemId, name, geo) {
    const seq = ++this.seq;
    this.item = { id: itemId, name, geo };
    this.query = '';
    // The last item's layer goes at once, so that nothing stale shows under the new name.
    if (this.layer) { this.layer.remove(); this.layer = null; }
    this.busy(true);
    $('map-caption').textContent = 'Loading ' + name + '…';
    // A paletted band is drawn in its own colours: there is nothing to stretch.
    const paletted = Boolean(geo && geo.bands && geo.bands.some((b) => b.color_interpretation === 'Palette'));
    const single = colourBands(geo) === 1 && !paletted;
    $('map-style').hidden = !single;
    $('map-style-note').textContent = '';
    if (single) {
      await this.prefill(itemId, seq);
      if (seq !== this.seq) return;
    }
    await this.load(seq, true);
  },

  // The stretch starts at the 2nd and 98th percentiles of the file's first band.
  async prefill(itemId, seq) {
    $('map-min').value = ''; $('map-max').value = ''; $('map-colormap').value = '';
    try {
      const stats = await api(`/tree-items/${itemId}/statistics`);
      if (seq !== this.seq) return;
      const b = stats.b1 || Object.values(stats)[0] || {};
      let [lo, hi] = [b.percentile_2, b.percentile_98];
      if (!(hi > lo)) [lo, hi] = [b.min, b.max];
      if (!(hi > lo)) {
        if (Number.isFinite(lo)) $('map-style-note').textContent = `Every valid pixel is ${decimal(lo)}: there is nothing to stretch.`;
        return;
      }
      $('map-min').value = decimal(lo); $('map-max').value = decimal(hi);
    } catch (err) {
      if (seq === this.seq) $('map-style-note').textContent = `No statistics (${err.message}): drawn without a stretch.`;
    }
  },

  // The TileJSON's query: a week-long link, and the single-band stretch and colormap.
  params() {
    const q = new URLSearchParams({ expires_in: String(LINK_SECONDS) });
    if (!$('map-style').hidden) {
      const lo = $('map-min').value.trim(), hi = $('map-max').value.trim();
      if (lo !== '' && hi !== '') q.set('rescale', `${decimal(Number(lo), 12)},${decimal(Number(hi), 12)}`);
      if ($('map-colormap').value) q.set('colormap_name', $('map-colormap').value);
    }
    return q;
  },

  restyle() {
    if (!this.item) return;
    const lo = $('map-min').value.trim(), hi = $('map-max').value.trim();
    if ((lo === '') !== (hi === '') || (lo !== '' && !(Number(lo) < Number(hi)))) {
      $('map-style-note').textContent = 'Give both values, the first below the second.';
      return;
    }
    $('map-style-note').textContent = '';
    const q = this.params();
    q.delete('expires_in');
    if (String(q) === this.query) return;
    this.busy(true);
    this.load(++this.seq, false);
  },

  async load(seq, fit) {
    const { id, name, geo } = this.item;
    const params = this.params();
    // The style asked for: pressing Enter (a change, then a submit) asks once.
    const style = new URLSearchParams(params);
    style.delete('expires_in');
    this.query = String(style);
    let tilejson;
    try {
      tilejson = await api(`/tree-items/${id}/WebMercatorQuad/tilejson.json?${params}`);
    } catch (err) {
      if (seq === this.seq) this.fail(name, geo, err);
      return;
    }
    if (seq !== this.seq) return;
    this.draw(tilejson, name, fit);
  },

  draw(tilejson, name, fit) {
    const box = $('map');
    const wasHidden = box.hidden;
    box.hidden = false; $('map-keys').hidden = false; $('map-message').hidden = true;
    box.setAttribute('aria-label', 'Map preview of ' + name);
    if (!this.view) this.create();
    else if (wasHidden) this.view.invalidateSize();
    const [w, s, e, n] = tilejson.bounds;
    this.bounds = L.latLngBounds([s, w], [n, e]);
    const template = tilejson.tiles[0];
    // Enlarged past the COG's resolution a few levels, or as far as a small file needs to fill the view.
    // (Leaflet bounds the zoom it computes by the map's limits: those of the last file are lifted first.)
    this.view.setMinZoom(0).setMaxZoom(Infinity);
    const fitZoom = this.view.getBoundsZoom(this.bounds, false, [2 * FIT_PADDING, 2 * FIT_PADDING]);
    const maxZoom = Math.max(tilejson.maxzoom + OVERZOOM, Math.ceil(fitZoom));
    if (this.layer) this.layer.remove();
    const layer = L.tileLayer(template, {
      tileSize: 256, bounds: this.bounds, maxNativeZoom: tilejson.maxzoom, maxZoom,
    });
    this.layer = layer;
    this.busy(true);
    layer.on('loading', () => this.busy(true));
    layer.on('load', () => this.settle());
    layer.once('tileerror', (e) => this.tileError(layer, e.tile.src));
    this.view.setMaxZoom(maxZoom);
    this.view.setMinZoom(Math.max(0, Math.min(tilejson.minzoom - OVERZOOM, Math.floor(fitZoom))));
    layer.addTo(this.view);
    if (fit || !this.view.getBounds().intersects(this.bounds)) this.fit();
    // Past the COG's own resolution its pixels show as squares, not blurred by the browser.
    if (this.crisp) this.view.off('zoomend', this.crisp);
    this.crisp = () => box.classList.toggle('overzoom', this.view.getZoom() > tilejson.maxzoom);
    this.view.on('zoomend', this.crisp);
    this.crisp();
    $('map-caption').textContent = name;
    $('map-extent').textContent =
      `WGS 84 extent: ${tilejson.bounds.map((v) => v.toFixed(4)).join(', ')} (west, south, east, north)`;
    this.share(template, tilejson);
  },

  // The map is busy (aria-busy) while it moves or its tiles load.
  busy(on) { $('map').setAttribute('aria-busy', String(on)); },

  // Done once nothing moves or loads, and the tiles of the zoom left behind are gone too
  // (Leaflet prunes them an animation frame after its 'load').
  settle() {
    requestAnimationFrame(() => requestAnimationFrame(() => {
      if (!this.moving && this.layer && !this.layer.isLoading()) this.busy(false);
    }));
  },

  create() {
    this.view = L.map('map', {
      attributionControl: false, zoomSnap: 0.1, zoomDelta: 1, keyboard: true, worldCopyJump: false,
      // Tiles show as soon as they arrive, not fading in.
      fadeAnimation: false,
    });
    const Fit = L.Control.extend({
      options: { position: 'topleft' },
      onAdd: () => {
        const bar = L.DomUtil.create('div', 'leaflet-bar leaflet-control');
        const button = L.DomUtil.create('a', 'map-fit', bar);
        button.href = '#';
        button.setAttribute('role', 'button');
        button.title = 'Fit the whole extent';
        button.setAttribute('aria-label', 'Fit the whole extent');
        button.textContent = '⤢';
        L.DomEvent.disableClickPropagation(bar);
        L.DomEvent.on(button, 'click', (e) => { L.DomEvent.preventDefault(e); this.fit(); });
        return bar;
      },
    });
    new Fit().addTo(this.view);
    this.view.on('movestart zoomstart', () => { this.moving = true; this.busy(true); });
    this.view.on('moveend', () => { this.moving = false; this.settle(); });
  },

  fit() {
    if (this.view && this.bounds) this.view.fitBounds(this.bounds, { padding: [FIT_PADDING, FIT_PADDING] });
  },

  // A tile the server refused: its own sentence, read from the same URL.
  async tileError(layer, url) {
    let detail = '';
    try { detail = (await (await fetch(url)).json()).detail || ''; } catch { /* not JSON */ }
    if (layer !== this.layer) return;
    $('map-message').hidden = false;
    $('map-message').textContent = 'Some tiles could not be drawn' + (detail ? ': ' + detail : '.');
  },

  // Not placeable (no CRS), not a COG, or the server did not answer: its sentence, no map.
  fail(name, geo, err) {
    if (this.layer) { this.layer.remove(); this.layer = null; }
    this.query = '';
    $('map').hidden = true; $('map-keys').hidden = true; $('xyz').hidden = true; $('map-style').hidden = true;
    this.busy(false);
    $('map-caption').textContent = name;
    $('map-message').hidden = false;
    $('map-message').textContent = err.message;
    $('map-extent').textContent = geo && geo.bounds
      ? `Extent in its own coordinates: ${geo.bounds.map((v) => v.toFixed(2)).join(', ')}` : '';
    if (err.status !== 422) showError('Map preview: ' + err.message);
  },

  // The XYZ URL for QGIS, and the same layer in Leaflet and MapLibre code.
  share(template, tilejson) {
    const [w, s, e, n] = tilejson.bounds;
    this.expiry = `It works with no sign-in until ${new Date(Date.now() + LINK_SECONDS * 1000).toLocaleString()}.`;
    $('xyz').hidden = false;
    $('xyz-url').value = template;
    $('xyz-note').textContent = this.expiry;
    const quoted = `'${template.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
    $('xyz-leaflet').textContent = `// Leaflet\nL.tileLayer(${quoted}, {\n  maxNativeZoom: ${tilejson.maxzoom},\n` +
      `  bounds: [[${s}, ${w}], [${n}, ${e}]],\n}).addTo(map);`;
    // The TileJSON of the same layer, opened by the same link: MapLibre reads bounds and zooms from it.
    const doc = template.replace(/\/tiles\/WebMercatorQuad\/\{z\}\/\{x\}\/\{y\}\.png\?/, '/WebMercatorQuad/tilejson.json?');
    $('xyz-maplibre').textContent = `// MapLibre GL JS (its TileJSON)\nmap.addSource('rastercast', {\n  type: 'raster', tileSize: 256,\n` +
      `  url: '${doc.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}',\n});\n` +
      `map.addLayer({ id: 'rastercast', type: 'raster', source: 'rastercast' });`;
  },
};

window.addEventListener('online', () => uploads.resumeStopped());
window.addEventListener('error', (e) => showError(e.message));
window.addEventListener('unhandledrejection', (e) => showError(e.reason && e.reason.message ? e.reason.message : String(e.reason)));
start();
