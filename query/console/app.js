// weir console: plain JavaScript, no build step, nothing loaded from elsewhere.
// Everything shown from data is put into the page as text (textContent, createTextNode,
// SVG text nodes), never as HTML: keys and raw dead letters are user data.
'use strict';

const ARROW = 'application/vnd.apache.arrow.stream';
const HISTORY = 120; // samples of the charts (one a second)
const STUCK_MS = 30000;

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

// ---- the endpoint -------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

// A 401 reloads the page once (to the sign-in form when the session ended); a second 401
// within a minute of that reload shows a message instead, so that a session the endpoint
// does not take (a proxy that hides the address the browser used) cannot reload forever.
const RELOADED = 'weir-console-reloaded-at';
let signedOut = false;
function onUnauthorized() {
  if (signedOut) return;
  signedOut = true;
  stopStreams();
  let last = null;
  try { last = Number(sessionStorage.getItem(RELOADED)); } catch (_) { last = Date.now(); }
  if (!last || Date.now() - last > 60000) {
    try {
      sessionStorage.setItem(RELOADED, String(Date.now()));
      $('status-line').textContent = 'Signed out: reloading…';
      window.location.reload();
      return;
    } catch (_) { /* no session storage: no reload */ }
  }
  const line = $('status-line');
  clear(line);
  line.append('Signed out: the endpoint does not take this page\'s session (it expired or was signed out, or a proxy hides the address used). ',
    el('a', { href: './' }, 'Sign in again'), '.');
}

async function failure(r) {
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 401) onUnauthorized();
  const e = body && body.error;
  return new ApiError(r.status, (e && e.code) || 'http_' + r.status, (e && e.message) || r.statusText);
}

/** `fetch(path)` read by `read`, given up (aborted) after `ms`: an endpoint that does not
 * answer leaves no request behind to pile up. */
async function call(path, options, ms, read) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), ms);
  try {
    const r = await fetch(path, { ...options, signal: ctl.signal, credentials: 'same-origin', cache: 'no-store' });
    return await read(r);
  } catch (e) {
    if (e && e.name === 'AbortError') throw new ApiError(0, 'timeout', 'no answer in ' + Math.round(ms / 1000) + ' s');
    throw e;
  } finally { clearTimeout(timer); }
}

/** Rows of a query (JSON), or an Arrow IPC stream as a Blob; given up a little after the
 * endpoint's own query timeout. */
async function sql(query, arrow) {
  const headers = { 'Content-Type': 'application/json' };
  if (arrow) headers.Accept = ARROW;
  const ms = (state ? state.limits.timeout_ms : 30000) + 10000;
  return call('sql', { method: 'POST', headers, body: JSON.stringify({ query }) }, ms, async (r) => {
    if (!r.ok) throw await failure(r);
    return arrow ? r.blob() : r.json();
  });
}

async function getJson(path) {
  return call(path, {}, 10000, async (r) => {
    if (!r.ok && !(path === 'ready' && r.status === 503)) throw await failure(r);
    return r.json();
  });
}

/** `name` as a SQL identifier; `value` as a SQL string literal. */
const ident = (name) => '"' + String(name).replace(/"/g, '""') + '"';
const literal = (value) => "'" + String(value).replace(/'/g, "''") + "'";

// ---- formatting ---------------------------------------------------------------------------

const nf = new Intl.NumberFormat('en-US');
const num = (n) => (n === null || n === undefined ? '–' : nf.format(n));
function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0; let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return (i === 0 ? v : v.toFixed(1)) + ' ' + units[i];
}
function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
  const neg = ms < 0; ms = Math.abs(ms);
  let s;
  if (ms < 1000) s = Math.round(ms) + ' ms';
  else if (ms < 60000) s = (ms / 1000).toFixed(1) + ' s';
  else if (ms < 3600000) s = Math.floor(ms / 60000) + ' min ' + Math.round((ms % 60000) / 1000) + ' s';
  else s = Math.floor(ms / 3600000) + ' h ' + Math.round((ms % 3600000) / 60000) + ' min';
  return (neg ? '-' : '') + s;
}
const time = (v) => (v ? String(v).replace('T', ' ').replace(/Z$|\+00:00$/, ' UTC') : '–');

/** A table cell's content: text, with null shown as such. */
function cell(v) {
  if (v === null || v === undefined) return el('span', { class: 'null' }, 'null');
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

/** A table of `rows` (objects) with `columns` (names), all text. */
function fillTable(table, columns, rows, caption) {
  clear(table);
  if (caption) table.append(el('caption', { class: 'sub' }, caption));
  table.append(el('thead', {}, el('tr', {}, columns.map((c) => el('th', { scope: 'col' }, c)))));
  const body = el('tbody');
  for (const r of rows) {
    body.append(el('tr', {}, columns.map((c) => el('td', { class: typeof r[c] === 'number' ? 'num' : null }, cell(r[c])))));
  }
  table.append(body);
}

// ---- tabs ---------------------------------------------------------------------------------

const tabs = Array.from(document.querySelectorAll('[role=tab]'));
let active = 'overview';
function select(tab) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute('aria-selected', String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute('aria-controls')).hidden = !on;
  }
  active = tab.getAttribute('aria-controls');
  if (location.hash !== '#' + active) history.replaceState(null, '', '#' + active);
  onTab(active);
}
for (const t of tabs) {
  t.addEventListener('click', () => select(t));
  t.addEventListener('keydown', (e) => {
    const i = tabs.indexOf(t);
    let next = null;
    if (e.key === 'ArrowRight') next = tabs[(i + 1) % tabs.length];
    if (e.key === 'ArrowLeft') next = tabs[(i - 1 + tabs.length) % tabs.length];
    if (e.key === 'Home') next = tabs[0];
    if (e.key === 'End') next = tabs[tabs.length - 1];
    if (next) { e.preventDefault(); next.focus(); select(next); }
  });
}

// ---- state (polled every second) ----------------------------------------------------------

let state = null;
const samples = []; // {t, records, dead}

let polling = false;
async function pollState() {
  if (polling) return; // the last one has not been answered yet
  polling = true;
  try {
    state = await getJson('console/state');
  } catch (e) {
    if (!signedOut) $('status-line').textContent = 'The endpoint does not answer: ' + e.message;
    return;
  } finally { polling = false; }
  samples.push({ t: state.now_ms, records: state.counters.records_in, dead: state.counters.dead_letters });
  while (samples.length > HISTORY + 1) samples.shift();
  const s = state.snapshot;
  $('status-line').textContent = (s.finished ? 'finished: ' : 'running: ') + 'snapshot ' + num(s.seq) +
    (s.seq > 0 ? ', ' + duration(state.now_ms - s.taken_ms) + ' old' : '') +
    (state.worker ? '; worker ' + state.worker : '');
  $('logout').hidden = !state.token;
  if (state.worker) for (const s of document.querySelectorAll('.this-worker')) s.textContent = ', this worker';
  if (!schemaShown) showSchema();
  if (!graphShown) showGraph();
  if (active === 'overview') showOverview();
}

function rates(key) {
  const out = [];
  for (let i = 1; i < samples.length; i += 1) {
    const dt = (samples[i].t - samples[i - 1].t) / 1000;
    out.push(dt > 0 ? Math.max(0, (samples[i][key] - samples[i - 1][key]) / dt) : 0);
  }
  return out;
}

function chart(container, values, label, cls) {
  const w = 480; const h = 120; const pad = 34;
  const max = Math.max(1, ...values);
  const now = values.length ? values[values.length - 1] : 0;
  const step = (w - pad - 4) / (HISTORY - 1);
  const x0 = w - 4 - (values.length - 1) * step;
  const points = values.map((v, i) => (x0 + i * step).toFixed(1) + ',' + (h - 16 - (v / max) * (h - 26)).toFixed(1)).join(' ');
  const g = svg('svg', { viewBox: `0 0 ${w} ${h}`, width: '100%', role: 'img', 'aria-label': `${label}: now ${nf.format(Math.round(now))} per second, highest ${nf.format(Math.round(max))}` },
    svg('line', { class: 'chart-axis', x1: pad, y1: h - 16, x2: w - 4, y2: h - 16 }),
    svg('line', { class: 'chart-axis', x1: pad, y1: 10, x2: w - 4, y2: 10 }),
    svg('text', { x: 2, y: 14 }, nf.format(Math.round(max))),
    svg('text', { x: 2, y: h - 12 }, '0'),
    svg('text', { x: w - 4, y: h - 2, 'text-anchor': 'end' }, 'now'),
    values.length > 1 ? svg('polyline', { class: 'chart-line ' + cls, points }) : null);
  clear(container);
  container.append(g);
}

let ready = null;
async function pollReady() {
  try { ready = await getJson('ready'); } catch (_) { ready = null; }
}

function dl(node, pairs) {
  clear(node);
  for (const [k, v] of pairs) node.append(el('dt', {}, k), el('dd', {}, v));
}

function showOverview() {
  if (!state) return;
  const ev = rates('records'); const dead = rates('dead');
  $('events-total').textContent = num(state.counters.records_in);
  $('events-rate').textContent = num(Math.round(ev.length ? ev[ev.length - 1] : 0)) + ' per second; bad ' + num(state.counters.bad) + ', late ' + num(state.counters.late);
  $('dead-total').textContent = num(state.counters.dead_letters);
  $('dead-rate').textContent = num(Math.round(dead.length ? dead[dead.length - 1] : 0)) + ' per second';
  chart($('chart-events'), ev, 'Events in per second', 'events');
  chart($('chart-dead'), dead, 'Dead letters per second', 'dead');
  const c = state.checkpoint;
  dl($('checkpoint'), c.enabled ? [
    ['age', c.completed ? duration(c.age_ms) : 'none yet'],
    ['size', bytes(c.bytes)],
    ['rows', num(c.rows)],
    ['took', duration(c.duration_ms)],
    ['completed', num(c.completed)],
    ['interval', duration(c.interval_ms)],
  ] : [['', 'off (no checkpoint section)']]);
  const s = state.snapshot;
  dl($('snapshot'), [
    ['number', num(s.seq)],
    ['age', s.seq ? duration(state.now_ms - s.taken_ms) : '–'],
    ['finished', s.finished ? 'yes' : 'no'],
    ['running for', duration(state.now_ms - state.started_ms)],
  ]);
  const rs = $('ready-state'); const reasons = $('ready-reasons');
  clear(reasons);
  if (!ready) { rs.textContent = 'unknown'; rs.className = ''; } else {
    rs.textContent = ready.ready ? 'ready' : 'not ready';
    rs.className = ready.ready ? 'ok big' : 'notok big';
    for (const r of ready.reasons || []) reasons.append(el('li', {}, r));
  }
  if (state.worker) showPool();
}

// ---- the pipeline graph -------------------------------------------------------------------

let graphShown = false;
function showGraph() {
  const g = state.graph; graphShown = true;
  const cols = [
    g.sources.map((n) => ({ ...n, cls: 'source', id: 's:' + n.name })),
    g.operators.map((n) => ({ ...n, cls: n.kind, id: 'o:' + n.name })),
    g.sinks.map((n) => ({ ...n, cls: 'sink', id: 'k:' + n.name })),
  ];
  const bw = 230; const bh = 46; const gapX = 90; const gapY = 16;
  const rows = Math.max(1, ...cols.map((c) => c.length));
  const w = cols.length * bw + (cols.length - 1) * gapX + 8;
  const h = rows * (bh + gapY) + 8;
  const pos = new Map();
  cols.forEach((col, ci) => col.forEach((n, ri) => {
    const off = ((rows - col.length) * (bh + gapY)) / 2;
    pos.set(n.id, { x: 4 + ci * (bw + gapX), y: 4 + off + ri * (bh + gapY) });
  }));
  const cut = (t, n) => (t.length > n ? t.slice(0, n - 1) + '…' : t);
  const parts = [svg('defs', {}, svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, svg('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#57606a' })))];
  const edge = (a, b) => {
    const p = pos.get(a); const q = pos.get(b);
    if (!p || !q) return;
    const x1 = p.x + bw; const y1 = p.y + bh / 2; const x2 = q.x - 2; const y2 = q.y + bh / 2;
    parts.push(svg('path', { class: 'edge', d: `M${x1},${y1} C${x1 + gapX / 2},${y1} ${x2 - gapX / 2},${y2} ${x2},${y2}` }));
  };
  for (const o of g.operators) {
    edge('s:' + o.from, 'o:' + o.name);
    for (const k of o.sinks) edge('o:' + o.name, 'k:' + k);
  }
  for (const col of cols) {
    for (const n of col) {
      const p = pos.get(n.id);
      parts.push(svg('g', { class: 'node ' + n.cls, transform: `translate(${p.x},${p.y})` },
        svg('title', {}, n.name + ' (' + n.kind + '): ' + n.detail),
        svg('rect', { width: bw, height: bh, rx: 6 }),
        svg('text', { x: 10, y: 19 }, cut(n.name, 30)),
        svg('text', { x: 10, y: 36, class: 'kind' }, cut(n.kind + ' · ' + n.detail, 36))));
    }
  }
  const text = g.operators.map((o) => `${o.kind} ${o.name} reads ${o.from}` + (o.sinks.length ? ` and writes ${o.sinks.join(', ')}` : '')).join('; ');
  const root = svg('svg', { viewBox: `0 0 ${w} ${h}`, width: Math.min(w, 1200), role: 'img', 'aria-label': 'Pipeline: ' + (text || 'no windows or views') }, parts);
  clear($('graph'));
  $('graph').append(root);
}

// ---- worker pool --------------------------------------------------------------------------

let poolAt = 0;
async function showPool() {
  if (Date.now() - poolAt < 5000) return;
  poolAt = Date.now();
  $('pool').hidden = false;
  let rows = [];
  try { rows = await sql('SELECT worker, source, "partition" FROM weir_status WHERE stage IS DISTINCT FROM \'repartition\' ORDER BY worker, source, "partition"'); } catch (_) { /* shown elsewhere */ }
  const by = new Map();
  by.set(state.worker, []);
  for (const p of state.peers) by.set(p.worker, []);
  for (const r of rows) { if (!by.has(r.worker)) by.set(r.worker, []); by.get(r.worker).push(r.source + ' ' + r.partition); }
  const list = el('ul');
  for (const [w, parts] of by) {
    const peer = state.peers.find((p) => p.worker === w);
    list.append(el('li', {}, el('strong', {}, w), w === state.worker ? ' (this one)' : peer ? ' at ' + peer.address : '',
      ': ' + (parts.length ? parts.join(', ') : 'no partitions')));
  }
  clear($('pool-members'));
  $('pool-members').append(list);
}

// ---- sources ------------------------------------------------------------------------------

let sourceRows = [];
const moved = new Map(); // partition -> {watermark, since}
let sortBy = { key: 'source', dir: 1 };
const SOURCE_COLUMNS = [
  ['source', 'Source'], ['partition', 'Partition'], ['worker', 'Worker'], ['watermark', 'Watermark'],
  ['max_event_time', 'Newest event'], ['delay', 'Delay'], ['lag', 'Lag'], ['events_in', 'Events in'],
  ['bad', 'Bad'], ['late', 'Late'], ['state', 'State'],
];

async function loadSources() {
  let rows;
  try { rows = await sql("SELECT * FROM weir_status WHERE stage IS DISTINCT FROM 'repartition'"); } catch (e) { showError($('sources-table'), e); return; }
  const now = Date.now();
  const idle = new Map((state ? state.partitions : []).map((p) => [p.source + '\u0000' + p.partition, p]));
  for (const r of rows) {
    const k = r.source + '\u0000' + r.partition;
    const m = moved.get(k);
    if (!m || m.watermark !== r.watermark) moved.set(k, { watermark: r.watermark, since: now });
    const wm = r.watermark ? Date.parse(r.watermark) : null;
    const at = r.snapshot_time ? Date.parse(r.snapshot_time) : null;
    r.delay = wm !== null && at !== null ? at - wm : null;
    const p = idle.get(k);
    // a watermark that has not moved: stuck while there is input behind it (or lag is not
    // known), quiet when the partition is read to its end (Kafka lag 0)
    const still = !r.finished && now - moved.get(k).since >= STUCK_MS;
    r.state = r.ended ? 'ended' : p && p.idle ? 'idle' : still ? (r.lag === 0 ? 'quiet' : 'stuck') : 'active';
  }
  sourceRows = rows;
  renderSources();
}

function renderSources() {
  const table = $('sources-table');
  const pooled = sourceRows.some((r) => r.worker);
  const cols = SOURCE_COLUMNS.filter(([k]) => pooled || k !== 'worker');
  const rows = sourceRows.slice().sort((a, b) => {
    const x = a[sortBy.key]; const y = b[sortBy.key];
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * sortBy.dir;
  });
  clear(table);
  table.append(el('caption', { class: 'sub' }, rows.length + ' partition(s); select a heading to sort'));
  table.append(el('thead', {}, el('tr', {}, cols.map(([k, label]) => el('th', {
    scope: 'col', 'aria-sort': sortBy.key === k ? (sortBy.dir > 0 ? 'ascending' : 'descending') : null,
  }, el('button', { class: 'sort', type: 'button', onclick: () => { sortBy = { key: k, dir: sortBy.key === k ? -sortBy.dir : 1 }; renderSources(); } },
    label + (sortBy.key === k ? (sortBy.dir > 0 ? ' ▲' : ' ▼') : '')))))));
  const body = el('tbody');
  for (const r of rows) {
    body.append(el('tr', { class: 'partition-row' }, cols.map(([k]) => {
      let v = r[k];
      if (k === 'watermark' || k === 'max_event_time') v = time(v);
      else if (k === 'delay') v = duration(v);
      else if (k === 'state') return el('td', {}, el('span', { class: 'tag ' + v }, v));
      else if (v === null || v === undefined) v = '–';
      else if (typeof v === 'number') return el('td', { class: 'num' }, num(v));
      return el('td', {}, cell(v));
    })));
  }
  table.append(body);
}

// ---- windows and views --------------------------------------------------------------------

// A browser opens at most 6 connections to one host (HTTP/1.1): one event stream per window
// would starve the page's own requests. At most MAX_STREAMS windows are followed live: the
// first ones, or those chosen last with their "Follow live" button.
const MAX_STREAMS = 3;
const streams = new Map(); // window name -> EventSource
let followed = null; // window names followed live, the one chosen longest ago first
let tablesBuilt = false;

function followButton(t, id) {
  const on = followed.includes(t.name);
  const b = $(id + '-follow');
  b.textContent = on ? 'Followed live' : 'Follow live';
  b.setAttribute('aria-pressed', String(on));
  b.disabled = on;
  if (!on) $(id + '-open-status').textContent = 'not followed live (at most ' + MAX_STREAMS + ' windows at once)';
}

function choose(t, id) {
  followed = followed.filter((n) => n !== t.name).concat([t.name]);
  while (followed.length > MAX_STREAMS) {
    const gone = followed.shift();
    const es = streams.get(gone);
    if (es) es.close();
    streams.delete(gone);
    const goneId = 't-' + gone.replace(/[^A-Za-z0-9_-]/g, '_');
    if ($(goneId + '-follow')) followButton({ name: gone }, goneId);
  }
  followButton(t, id);
  follow(t, id);
}

function tableBlock(t) {
  const op = state.graph.operators.find((o) => o.name === t.name);
  const id = 't-' + t.name.replace(/[^A-Za-z0-9_-]/g, '_');
  const block = el('section', { class: 'table-block', 'aria-labelledby': id + '-h' },
    el('h3', { id: id + '-h' }, t.name + ' ', el('span', { class: 'sub' }, '(' + t.kind + ')')),
    op ? el('p', { class: 'hint' }, op.detail) : null,
    el('p', { id: id + '-count', 'aria-live': 'polite' }, 'rows: …'));
  if (t.kind === 'window') {
    block.append(el('h4', {}, 'Newest closed windows'), el('div', { class: 'scroll' }, el('table', { class: 'data', id: id + '-closed' })),
      el('h4', {}, 'Open windows (live)'),
      el('p', { class: 'sub' }, el('span', { id: id + '-open-status' }, 'connecting…'), ' ',
        el('button', { type: 'button', id: id + '-follow', onclick: () => choose(t, id) }, 'Follow live')),
      el('div', { class: 'scroll' }, el('table', { class: 'data', id: id + '-open' })));
  } else {
    const form = el('form', { class: 'inline', id: id + '-lookup' });
    form.append(el('span', {}, 'Look up a key:'));
    for (const k of t.keys) {
      const col = t.columns.find((c) => c.name === k);
      form.append(el('label', { for: id + '-key-' + k }, k), el('input', { id: id + '-key-' + k, name: k, 'data-type': col ? col.type : 'Utf8', required: true, autocomplete: 'off' }));
    }
    form.append(el('button', { type: 'submit' }, 'Look up'));
    form.addEventListener('submit', (e) => { e.preventDefault(); lookup(t, form, id); });
    block.append(form, el('div', { id: id + '-lookup-error', role: 'alert' }), el('div', { class: 'scroll' }, el('table', { class: 'data', id: id + '-lookup-result' })));
  }
  return block;
}

async function lookup(t, form, id) {
  const conds = [];
  for (const input of form.querySelectorAll('input')) {
    const type = input.getAttribute('data-type');
    const v = input.value;
    const integer = /^(U?Int\d+)$/.test(type);
    if (integer && !/^-?\d+$/.test(v.trim())) {
      showError($(id + '-lookup-error'), new ApiError(0, 'bad_key', input.name + ' is an integer column'));
      return;
    }
    conds.push(ident(input.name) + ' = ' + (integer ? v.trim() : literal(v)));
  }
  // this shape is answered by the point-query path (the view's key index), not planned
  const q = 'SELECT * FROM ' + ident(t.name) + ' WHERE ' + conds.join(' AND ');
  clear($(id + '-lookup-error'));
  try {
    const rows = await sql(q);
    fillTable($(id + '-lookup-result'), t.columns.map((c) => c.name), rows, rows.length ? rows.length + ' row(s)' : 'no row has this key');
  } catch (e) { showError($(id + '-lookup-error'), e); }
}

async function loadTables() {
  if (!state) return;
  const list = state.tables.filter((t) => t.kind === 'window' || t.kind === 'view');
  if (!tablesBuilt) {
    tablesBuilt = true;
    clear($('tables-list'));
    if (!list.length) $('tables-list').append(el('p', {}, 'This pipeline has no windows or views.'));
    for (const t of list) $('tables-list').append(tableBlock(t));
    followed = list.filter((t) => t.kind === 'window').slice(0, MAX_STREAMS).map((t) => t.name);
    for (const t of list) if (t.kind === 'window') followButton(t, 't-' + t.name.replace(/[^A-Za-z0-9_-]/g, '_'));
  }
  for (const t of list) {
    const id = 't-' + t.name.replace(/[^A-Za-z0-9_-]/g, '_');
    try {
      if (t.kind === 'window') {
        const [c] = await sql(`SELECT count(*) AS n, sum(CASE WHEN is_final THEN 1 ELSE 0 END) AS closed FROM ${ident(t.name)}`);
        $(id + '-count').textContent = 'rows: ' + num(c.n) + ' (' + num(c.closed || 0) + ' closed, ' + num(c.n - (c.closed || 0)) + ' open)';
        const closed = await sql(`SELECT * FROM ${ident(t.name)} WHERE is_final ORDER BY window_end DESC LIMIT 10`);
        fillTable($(id + '-closed'), t.columns.map((x) => x.name), closed, closed.length ? null : 'none closed yet');
        if (followed.includes(t.name)) follow(t, id);
      } else {
        const [c] = await sql(`SELECT count(*) AS n FROM ${ident(t.name)}`);
        $(id + '-count').textContent = 'rows (keys): ' + num(c.n);
      }
    } catch (e) { $(id + '-count').textContent = 'error ' + e.code + ': ' + e.message; }
  }
}

/** Follows a window's open rows over `GET /subscribe` (Server-Sent Events). */
function follow(t, id) {
  if (streams.has(t.name) || streams.size >= MAX_STREAMS || signedOut) return;
  const open = new Map();
  const keyOf = (row) => t.keys.map((k) => JSON.stringify(row[k])).join('\u0000') + '\u0000' + row.window_start;
  const status = $(id + '-open-status');
  let pending = false;
  const render = () => {
    pending = false;
    const rows = Array.from(open.values()).sort((a, b) => (a.window_start < b.window_start ? 1 : -1)).slice(0, 20);
    fillTable($(id + '-open'), t.columns.map((x) => x.name), rows, open.size + ' open row(s)' + (open.size > 20 ? ', newest 20 shown' : ''));
  };
  const es = new EventSource('subscribe?table=' + encodeURIComponent(t.name) + '&open=true&snapshot=true');
  es.onmessage = (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch (_) { return; }
    if (m.op === 'snapshot') { open.clear(); for (const r of m.rows) if (!r.is_final) open.set(keyOf(r), r); }
    else if (m.op === 'update') open.set(keyOf(m.row), m.row);
    else if (m.op === 'insert') open.delete(keyOf(m.row));
    else if (m.op === 'finished') { status.textContent = 'the run finished: nothing changes any more'; es.close(); }
    else if (m.error) { status.textContent = 'stream ended: ' + m.error.code + ': ' + m.error.message; }
    if (m.op !== 'finished' && !m.error) status.textContent = 'live, position ' + m.position;
    if (!pending) { pending = true; setTimeout(render, 250); }
  };
  es.onerror = () => { status.textContent = 'reconnecting…'; };
  streams.set(t.name, es);
}

function stopStreams() {
  for (const es of streams.values()) es.close();
  streams.clear();
}

// ---- dead letters -------------------------------------------------------------------------

async function loadDead() {
  if (state) $('dead-hint').textContent = 'The newest ' + num(state.dead_letters_kept) + ' dead letters of this process (' +
    (state.worker ? 'and of the other workers; ' : '') + 'kept in memory, raw records cut to ' + bytes(state.dead_letter_raw_bytes) +
    '), from the SQL table weir_dead_letters; every one is also in the dead-letter output.';
  try {
    const kinds = await sql('SELECT reason, code, count(*) AS n FROM weir_dead_letters GROUP BY reason, code ORDER BY n DESC');
    fillSelect($('dead-reason'), [...new Set(kinds.map((k) => k.reason))]);
    fillSelect($('dead-code'), [...new Set(kinds.map((k) => k.code))]);
    const where = [];
    if ($('dead-reason').value) where.push('reason = ' + literal($('dead-reason').value));
    if ($('dead-code').value) where.push('code = ' + literal($('dead-code').value));
    const rows = await sql('SELECT * FROM weir_dead_letters' + (where.length ? ' WHERE ' + where.join(' AND ') : '') + ' ORDER BY written DESC LIMIT 100');
    $('dead-count').textContent = rows.length ? 'showing ' + rows.length + ' (newest first)' : 'no dead letters' + (where.length ? ' match the filter' : '');
    const list = $('dead-list');
    clear(list);
    for (const d of rows) {
      const where2 = [d.source, d.partition, d.offset !== null ? 'offset ' + d.offset : null].filter((x) => x !== null && x !== undefined).join(' · ');
      list.append(el('article', { class: 'dead-letter' },
        el('h3', {}, el('span', { class: 'tag ' + (d.reason === 'late' ? 'late' : 'bad') }, d.reason), ' ', el('code', { class: 'code' }, d.code), ' ', el('span', { class: 'sub' }, time(d.written))),
        el('p', { class: 'message' }, d.message),
        el('p', { class: 'sub' }, where2 + (d.trace_id ? ' · trace ' + d.trace_id : '')),
        d.details && d.details !== '{}' ? el('p', { class: 'sub mono' }, 'details: ' + d.details) : null,
        el('pre', { class: 'raw', 'aria-label': 'raw record' }, d.raw === null ? '(no raw bytes)' : d.raw + (d.raw_truncated ? ' …(cut)' : ''))));
    }
  } catch (e) { showError($('dead-list'), e); }
}

// Rebuilt only when its choices change: a refresh must not close a list the user has open
// or replace the option being picked.
function fillSelect(select, values) {
  const sorted = [...values].sort();
  const shown = [...select.options].slice(1).map((o) => o.value);
  if (shown.length === sorted.length && shown.every((v, i) => v === sorted[i])) return;
  const keep = select.value;
  clear(select);
  select.append(el('option', { value: '' }, 'any'));
  for (const v of sorted) select.append(el('option', { value: v }, v));
  if (sorted.includes(keep)) select.value = keep;
}
$('dead-reason').addEventListener('change', loadDead);
$('dead-code').addEventListener('change', loadDead);

// ---- SQL ----------------------------------------------------------------------------------

let schemaShown = false;
function showSchema() {
  schemaShown = true;
  const box = $('schema');
  clear(box);
  for (const t of state.tables) {
    box.append(el('h4', {}, el('code', {}, t.name), ' ', el('span', { class: 'sub' }, t.kind)),
      el('ul', {}, t.columns.map((c) => el('li', {}, el('code', {}, c.name), ' ' + c.type + (t.keys.includes(c.name) ? ' (key)' : '')))));
  }
  const l = state.limits;
  $('sql-limits').textContent = 'Limits of this endpoint: ' + num(l.max_result_rows) + ' rows and ' + bytes(l.max_result_bytes) +
    ' per result, ' + duration(l.timeout_ms) + ' per query, ' + bytes(l.max_sql_bytes) + ' of SQL text, ' + num(l.max_queries) +
    ' queries at once. The page shows the first 1,000 rows; the downloads hold the whole result.';
}

let lastResult = null; // {query, rows, columns}
const SHOWN = 1000;

function showError(node, e) {
  clear(node);
  node.append(el('div', { class: 'error' }, el('code', {}, e.code || 'error'), ': ', e.message || String(e)));
}

async function runSql(ev) {
  if (ev) ev.preventDefault();
  const q = $('sql-text').value;
  clear($('sql-error'));
  $('sql-info').textContent = '';
  const size = new TextEncoder().encode(q).length;
  if (state && size > state.limits.max_sql_bytes) {
    showError($('sql-error'), new ApiError(0, 'statement_too_complex', `the query is ${size} bytes; this endpoint takes ${state.limits.max_sql_bytes} at most (serve.max_sql_bytes)`));
    return;
  }
  $('sql-run').disabled = true;
  const started = performance.now();
  try {
    const rows = await sql(q);
    const columns = rows.length ? Object.keys(rows[0]) : [];
    lastResult = { query: q, rows, columns };
    fillTable($('sql-result'), columns, rows.slice(0, SHOWN));
    $('sql-info').textContent = num(rows.length) + ' row(s) in ' + duration(performance.now() - started) + (rows.length > SHOWN ? '; the first ' + num(SHOWN) + ' shown' : '');
    $('sql-csv').disabled = false; $('sql-arrow').disabled = false;
  } catch (e) {
    lastResult = null;
    clear($('sql-result'));
    showError($('sql-error'), e);
    $('sql-csv').disabled = true; $('sql-arrow').disabled = true;
  } finally { $('sql-run').disabled = false; }
}

/** A CSV field. Text starting with = + - @ tab or CR is prefixed with ' so that a spreadsheet
 * does not run it as a formula (OWASP, CSV injection); numbers are left as they are. */
function csvField(v) {
  if (v === null || v === undefined) return '';
  let s = typeof v === 'object' ? JSON.stringify(v) : String(v);
  if (typeof v !== 'number' && /^[=+\-@\t\r]/.test(s)) s = "'" + s;
  return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = el('a', { href: url, download: name });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

$('sql-form').addEventListener('submit', runSql);
$('sql-text').addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) runSql(e); });
/** A result as CSV (RFC 4180: a header line, CRLF, fields quoted when needed). */
function csvText(result) {
  const lines = [result.columns.map(csvField).join(',')];
  for (const r of result.rows) lines.push(result.columns.map((c) => csvField(r[c])).join(','));
  return lines.join('\r\n') + '\r\n';
}
$('sql-csv').addEventListener('click', () => {
  if (lastResult) download(new Blob([csvText(lastResult)], { type: 'text/csv' }), 'result.csv');
});
$('sql-arrow').addEventListener('click', async () => {
  if (!lastResult) return;
  try { download(await sql(lastResult.query, true), 'result.arrows'); } catch (e) { showError($('sql-error'), e); }
});

// ---- the loop -----------------------------------------------------------------------------

function onTab(name) {
  if (name !== 'tables') stopStreams();
  refresh(name);
}
document.addEventListener('visibilitychange', () => {
  if (document.hidden) stopStreams();
  else refresh(active);
});

const busy = {};
async function refresh(name) {
  if (busy[name] || signedOut) return;
  busy[name] = true;
  try {
    if (name === 'overview') { await pollReady(); showOverview(); }
    if (name === 'sources') await loadSources();
    if (name === 'tables') await loadTables();
    if (name === 'dead') await loadDead();
  } finally { busy[name] = false; }
}

let ticking = false;
async function tick(n) {
  // a page nobody looks at (a background tab) asks for nothing; a slow answer skips ticks
  if (signedOut || document.hidden || ticking) return;
  ticking = true;
  try { await pollState(); } finally { ticking = false; }
  if (active === 'overview' && n % 2 === 0) refresh('overview');
  if (active === 'sources' && n % 2 === 0) refresh('sources');
  if (active === 'tables' && n % 3 === 0) refresh('tables');
  if (active === 'dead' && n % 3 === 0) refresh('dead');
}

(async () => {
  await pollState();
  await pollReady();
  const start = tabs.find((t) => '#' + t.getAttribute('aria-controls') === location.hash) || tabs[0];
  select(start);
  let n = 1;
  setInterval(() => { tick(n); n += 1; }, 1000);
})();
