// socksgate's dashboard: plain JavaScript, no build step, no library. It talks to the
// admin endpoint that served it (the Clash-style API and socksgate's own /devices and /dns),
// keeps the last hour of throughput in memory from the /traffic stream, and follows the live
// flows over the /connections stream: one message a second while the flows view is open, one
// every five seconds otherwise, none while the tab is hidden.
'use strict';

const KEY = 'socksgate.secret';
const TKEY = 'socksgate.traffic'; // the chart's points, kept across a reload of the tab
const HOUR = 3600;
const base = location.pathname.replace(/\/ui(\/.*)?$/, ''); // the endpoint's path prefix
const $ = (sel, el) => (el || document).querySelector(sel);
const views = ['overview', 'flows', 'devices', 'proxies', 'rules', 'dns'];

const st = {
  secret: localStorage.getItem(KEY) || '',
  view: 'overview',
  traffic: [],           // [{t (seconds), up, down}], the last hour
  conns: [],             // the last /connections snapshot's flows, with .speed added
  totals: null,          // {up, down} of the last snapshot
  prev: new Map(),       // id -> {download, t} for the speeds
  proxies: null,         // /proxies' map
  devices: null,
  rules: null,
  dns: undefined,
  sort: { key: 'start', asc: false },
  filter: { host: '', device: '', rule: '', upstream: '' },
  options: {},           // the filter selects' current option lists, to rebuild only on change
  authorized: false,
};
try {
  const saved = JSON.parse(sessionStorage.getItem(TKEY) || '[]');
  const t0 = Date.now() / 1000 - HOUR;
  if (Array.isArray(saved)) st.traffic = saved.filter(p => p && p.t > t0);
} catch (e) { /* nothing kept */ }
function saveTraffic() {
  try { sessionStorage.setItem(TKEY, JSON.stringify(st.traffic)); } catch (e) { /* full or off */ }
}

// ---- formatting

function esc(s) {
  return String(s == null ? '' : s).replace(/[&<>"']/g, c =>
    ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}
function bytes(n) {
  n = Number(n) || 0;
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return (i === 0 ? n.toFixed(0) : n < 10 ? n.toFixed(2) : n < 100 ? n.toFixed(1) : n.toFixed(0)) + ' ' + u[i];
}
const rate = n => bytes(n) + '/s';
function dur(sec) {
  sec = Math.max(0, Math.floor(sec));
  if (sec < 60) return sec + 's';
  if (sec < 3600) return Math.floor(sec / 60) + 'm' + (sec % 60 ? ' ' + (sec % 60) + 's' : '');
  if (sec < 86400) return Math.floor(sec / 3600) + 'h ' + Math.floor(sec % 3600 / 60) + 'm';
  return Math.floor(sec / 86400) + 'd ' + Math.floor(sec % 86400 / 3600) + 'h';
}
function ago(ts) {
  const t = Date.parse(ts);
  if (!t || t < 86400000) return '–';
  return dur((Date.now() - t) / 1000) + ' ago';
}
function toast(msg, error) {
  const el = $('#toast');
  el.textContent = msg;
  el.className = 'toast' + (error ? ' error' : '');
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, error ? 6000 : 2500);
}

// ---- the API

class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = {};
  if (st.secret) headers.Authorization = 'Bearer ' + st.secret;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(base + path, {
    method, headers, cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401) {
    unauthorized();
    throw new Unauthorized('unauthorized');
  }
  if (!r.ok) {
    let msg = (await r.text()).trim();
    try { msg = JSON.parse(msg).message || msg; } catch (e) { /* plain text */ }
    throw new Error(method + ' ' + path + ': ' + r.status + (msg ? ' ' + msg : ''));
  }
  if (r.status === 204) return null;
  const text = await r.text();
  return text ? JSON.parse(text) : undefined;
}

// stream keeps a WebSocket to path open, reconnecting with a growing delay; a socket that
// closes asks /version whether the secret is still good (a refused upgrade tells the page
// nothing more than that it closed).
function stream(path, onmsg) {
  let ws = null, stopped = false, delay = 1000, timer = 0;
  function open() {
    const u = new URL(base + path, location.href);
    u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    if (st.secret) u.searchParams.set('token', st.secret);
    ws = new WebSocket(u.href);
    ws.onopen = () => { delay = 1000; liveness(); };
    ws.onmessage = ev => {
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      onmsg(m);
    };
    ws.onclose = () => {
      ws = null;
      liveness();
      if (stopped) return;
      timer = setTimeout(() => {
        api('GET', '/version').then(() => { if (!stopped) open(); }, err => {
          if (!(err instanceof Unauthorized) && !stopped) { delay = Math.min(delay * 2, 30000); open(); }
        });
      }, delay);
    };
  }
  open();
  const s = {
    get live() { return ws !== null && ws.readyState === WebSocket.OPEN; },
    close() { stopped = true; clearTimeout(timer); if (ws) ws.close(); },
  };
  return s;
}

const streams = { traffic: null, conns: null, connsInterval: 0 };

function liveness() {
  const el = $('#status');
  const live = [streams.traffic, streams.conns].filter(Boolean);
  const ok = live.length > 0 && live.every(s => s.live);
  el.className = 'status ' + (ok ? 'live' : 'down');
  el.title = ok ? 'live' : 'reconnecting';
}

function startTraffic() {
  if (streams.traffic) return;
  streams.traffic = stream('/traffic', m => {
    const t = Date.now() / 1000;
    const p = { t, up: Number(m.up) || 0, down: Number(m.down) || 0 };
    st.traffic.push(p);
    // The totals move with each second between the (slower) /connections snapshots.
    if (st.totals) { st.totals.up += p.up; st.totals.down += p.down; }
    while (st.traffic.length && st.traffic[0].t < t - HOUR) st.traffic.shift();
    if (st.view === 'overview') renderOverview();
  });
}

// The /connections stream: every second on the flows view, every five seconds elsewhere
// (the overview counts flows, the devices view counts them per device), and closed while the
// tab is hidden.
function syncConnections() {
  const want = !st.authorized || document.hidden ? 0 : st.view === 'flows' ? 1000 : 5000;
  if (want === streams.connsInterval) return;
  if (streams.conns) { streams.conns.close(); streams.conns = null; }
  streams.connsInterval = want;
  if (want) streams.conns = stream('/connections?interval=' + want, onConnections);
  liveness();
}

function onConnections(m) {
  const now = Date.now() / 1000;
  const list = Array.isArray(m.connections) ? m.connections : [];
  const next = new Map();
  for (const c of list) {
    const p = st.prev.get(c.id);
    const down = Number(c.download) || 0;
    c.speed = p && now > p.t ? Math.max(0, (down - p.download) / (now - p.t)) : 0;
    next.set(c.id, { download: down, t: now });
  }
  st.prev = next;
  st.conns = list;
  st.totals = { up: Number(m.uploadTotal) || 0, down: Number(m.downloadTotal) || 0 };
  if (st.view === 'flows') renderFlows();
  else if (st.view === 'overview') renderOverview();
}

// ---- authentication

function unauthorized() {
  $('#login-title').textContent = st.secret ? 'Unauthorized: wrong secret' : 'Unauthorized';
  $('#secret').value = '';
  if (document.body.dataset.state === 'unauthorized') return;
  st.authorized = false;
  if (streams.traffic) { streams.traffic.close(); streams.traffic = null; }
  syncConnections();
  clearTimeout(pollTimer);
  document.body.dataset.state = 'unauthorized';
  $('#main').hidden = true;
  $('#logout').hidden = true;
  $('#login').hidden = false;
  $('#secret').focus();
}

async function connect() {
  try {
    const v = await api('GET', '/version');
    st.authorized = true;
    document.body.dataset.state = 'ready';
    $('#login').hidden = true;
    $('#main').hidden = false;
    $('#banner').hidden = true;
    $('#logout').hidden = !st.secret;
    document.title = 'socksgate ' + ((v && v.version) || '');
    startTraffic();
    route();
  } catch (err) {
    if (err instanceof Unauthorized) return;
    document.body.dataset.state = 'offline';
    const b = $('#banner');
    b.textContent = 'Cannot reach socksgate (' + err.message + '); retrying…';
    b.hidden = false;
    setTimeout(connect, 3000);
  }
}

// ---- views

function route() {
  const v = location.hash.replace(/^#/, '').split('?')[0];
  st.view = views.includes(v) ? v : 'overview';
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.getAttribute('href') === '#' + st.view);
  for (const id of views) $('#view-' + id).classList.toggle('active', id === st.view);
  if (!st.authorized) return;
  syncConnections();
  poll(true);
  render();
}

function render() {
  ({ overview: renderOverview, flows: renderFlows, devices: renderDevices, proxies: renderProxies,
    rules: renderRules, dns: renderDNS })[st.view]();
}

// poll refreshes what the view shows that has no stream, every five seconds while it is open.
const polled = {
  overview: ['/proxies'],
  devices: ['/devices'],
  proxies: ['/proxies'],
  rules: ['/rules'],
  dns: ['/dns'],
  flows: [],
};
let pollTimer = 0;
async function poll(now) {
  clearTimeout(pollTimer);
  if (!now) { pollTimer = setTimeout(() => poll(true), 5000); return; }
  const view = st.view;
  await Promise.all(polled[view].map(p => api('GET', p).then(v => {
    if (p === '/proxies') st.proxies = (v && v.proxies) || {};
    else if (p === '/devices') st.devices = (v && v.devices) || [];
    else if (p === '/rules') st.rules = (v && v.rules) || [];
    else if (p === '/dns') st.dns = v === undefined ? 'empty' : v;
  }, err => {
    if (!(err instanceof Unauthorized)) toast(err.message, true);
  })));
  if (!st.authorized) return;
  if (view === st.view) render();
  if (!document.hidden) poll(false);
}

// -- overview

function renderOverview() {
  const last = st.traffic[st.traffic.length - 1];
  $('#ov-up').textContent = last ? rate(last.up) : '–';
  $('#ov-down').textContent = last ? rate(last.down) : '–';
  $('#ov-flows').textContent = streams.connsInterval ? String(st.conns.length) : '–';
  $('#ov-total').textContent = st.totals ? bytes(st.totals.up) + ' / ' + bytes(st.totals.down) : '–';
  drawChart($('#chart'), st.traffic);

  const ups = upstreamList();
  $('#ov-health').innerHTML = ups.length ? '<ul class="list">' + ups.map(p => {
    const d = lastDelay(p);
    return '<li><span>' + healthDot(p) + esc(p.name) + '</span><span class="muted">' +
      (p.alive === false ? 'down' : d ? d + ' ms' : 'up') + '</span></li>';
  }).join('') + '</ul>' : '<p class="muted">' + (st.proxies ? 'No upstreams.' : 'Loading…') + '</p>';

  const by = new Map();
  for (const c of st.conns) {
    const k = (c.chains && c.chains[0]) || 'DIRECT';
    by.set(k, (by.get(k) || 0) + 1);
  }
  const rows = [...by].sort((a, b) => b[1] - a[1]);
  $('#ov-byup').innerHTML = rows.length ? '<ul class="list">' + rows.map(([k, n]) =>
    '<li><a href="#flows" data-upstream="' + esc(k) + '">' + esc(k) + '</a><span>' + n + '</span></li>').join('') +
    '</ul>' : '<p class="muted">No active flows.</p>';
}

// drawChart draws up and down over the last hour on a canvas sized to its box.
function drawChart(cv, pts) {
  const dpr = window.devicePixelRatio || 1;
  const w = cv.clientWidth, h = cv.clientHeight;
  if (!w || !h) return;
  if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
    cv.width = Math.round(w * dpr);
    cv.height = Math.round(h * dpr);
  }
  const g = cv.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const color = n => css.getPropertyValue(n).trim();
  const L = 64, R = 8, T = 8, B = 20;
  const pw = w - L - R, ph = h - T - B;
  const now = Date.now() / 1000, t0 = now - HOUR;
  let max = 1024;
  for (const p of pts) max = Math.max(max, p.up, p.down);
  // A round scale: 1, 2 or 5 times a power of ten, in four steps.
  const step0 = max / 4, mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].map(m => m * mag).find(s => s >= step0);
  max = step * 4;
  g.font = '11px system-ui, sans-serif';
  g.fillStyle = color('--muted');
  g.strokeStyle = color('--line');
  g.lineWidth = 1;
  g.textAlign = 'right';
  g.textBaseline = 'middle';
  for (let i = 0; i <= 4; i++) {
    const y = T + ph - ph * i / 4;
    g.beginPath(); g.moveTo(L, Math.round(y) + 0.5); g.lineTo(L + pw, Math.round(y) + 0.5); g.stroke();
    g.fillText(rate(step * i), L - 6, y);
  }
  g.textAlign = 'center';
  g.textBaseline = 'top';
  for (let m = 60; m >= 0; m -= 10) {
    const x = L + pw * (HOUR - m * 60) / HOUR;
    g.fillText(m ? '-' + m + 'm' : 'now', Math.min(x, L + pw - 12), T + ph + 5);
  }
  // One value per pixel column, the largest of the seconds it covers (a phone's chart is
  // a few hundred pixels for 3600 points); a gap of more than 10 s (the page was away) stays
  // a gap.
  const cols = Math.max(1, Math.floor(pw)), per = HOUR / cols;
  const gap = Math.ceil(10 / per) + 1;
  const line = (key, c) => {
    const v = new Float64Array(cols).fill(-1);
    for (const p of pts) {
      if (p.t < t0) continue;
      const i = Math.min(cols - 1, Math.floor((p.t - t0) / per));
      v[i] = Math.max(v[i], p[key]);
    }
    g.strokeStyle = c;
    g.lineWidth = 1.5;
    g.lineJoin = 'round';
    g.beginPath();
    let prev = -Infinity;
    for (let i = 0; i < cols; i++) {
      if (v[i] < 0) continue;
      const x = L + pw * (i + 0.5) / cols, y = T + ph - ph * Math.min(v[i], max) / max;
      if (i - prev <= gap) g.lineTo(x, y);
      else { g.moveTo(x, T + ph); g.lineTo(x, y); } // a segment rises from 0: a lone second shows
      prev = i;
    }
    g.stroke();
  };
  line('down', color('--down'));
  line('up', color('--up'));
}

// -- flows

function flowHost(c) {
  const m = c.metadata || {};
  const h = m.host || m.sniffHost || m.destinationIP || '';
  const port = m.destinationPort;
  return h.includes(':') && !m.host && !m.sniffHost ? '[' + h + ']:' + port : h + (port ? ':' + port : '');
}
const flowDevice = c => { const m = c.metadata || {}; return m.sourceDevice || m.sourceMAC || m.sourceIP || ''; };
// A flow's rule: socksgate's rule name (ruleName, its extension) when the API has it, else the
// Clash rule type and payload; ruleType is the small text under a name.
const ruleType = c => (c.rule || '') + (c.rulePayload ? ' ' + c.rulePayload : '');
const flowRule = c => c.ruleName || ruleType(c);
const flowChain = c => (c.chains || []).slice().reverse().join(' › ');

function sortValue(c, key) {
  switch (key) {
    case 'host': return flowHost(c).toLowerCase();
    case 'device': return flowDevice(c).toLowerCase();
    case 'rule': return flowRule(c).toLowerCase();
    case 'chain': return flowChain(c).toLowerCase();
    case 'network': return (c.metadata && c.metadata.network) || '';
    case 'upload': return Number(c.upload) || 0;
    case 'download': return Number(c.download) || 0;
    case 'speed': return c.speed || 0;
    case 'start': return Date.parse(c.start) || 0;
  }
  return 0;
}

// setOptions refills a filter select when its set of values changed (refilling it every
// second would close it under the user's finger).
function setOptions(id, all, values) {
  const sig = values.join('\n');
  if (st.options[id] === sig) return;
  st.options[id] = sig;
  const sel = $('#' + id), cur = sel.value;
  sel.innerHTML = '<option value="">' + esc(all) + '</option>' + values.map(v =>
    '<option value="' + esc(v) + '">' + esc(v) + '</option>').join('');
  if (cur && !values.includes(cur)) { // a filter chosen stays, even with no flow left to match
    sel.insertAdjacentHTML('beforeend', '<option value="' + esc(cur) + '">' + esc(cur) + '</option>');
  }
  sel.value = cur;
}

const MAXROWS = 500;

function renderFlows() {
  const f = st.filter;
  const devs = new Set(), rules = new Set(), ups = new Set();
  for (const c of st.conns) {
    devs.add(flowDevice(c));
    if (c.ruleName || c.rule) rules.add(flowRule(c));
    for (const n of c.chains || []) ups.add(n);
  }
  const sorted = s => [...s].filter(Boolean).sort((a, b) => a.localeCompare(b));
  setOptions('f-device', 'all devices', sorted(devs));
  setOptions('f-rule', 'all rules', sorted(rules));
  setOptions('f-upstream', 'all upstreams', sorted(ups));

  const host = f.host.toLowerCase();
  let rows = st.conns.filter(c => {
    const m = c.metadata || {};
    if (host && !(flowHost(c) + ' ' + (m.destinationIP || '') + ' ' + (m.sniffHost || '')).toLowerCase().includes(host)) return false;
    if (f.device && f.device !== flowDevice(c)) return false;
    if (f.rule && f.rule !== flowRule(c)) return false;
    if (f.upstream && !(c.chains || []).includes(f.upstream)) return false;
    return true;
  });
  const { key, asc } = st.sort;
  rows.sort((a, b) => {
    const x = sortValue(a, key), y = sortValue(b, key);
    return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
  });
  const shown = rows.length > MAXROWS ? rows.slice(0, MAXROWS) : rows;
  $('#f-count').textContent = (shown.length < rows.length ? 'first ' + shown.length + ' of ' : '') +
    rows.length + (rows.length === st.conns.length ? '' : ' of ' + st.conns.length) +
    (st.conns.length === 1 ? ' flow' : ' flows');
  for (const th of document.querySelectorAll('#flows th[data-sort]')) {
    th.classList.toggle('sorted', th.dataset.sort === key);
    th.classList.toggle('asc', th.dataset.sort === key && asc);
  }
  const now = Date.now();
  const html = shown.map(c => {
    const m = c.metadata || {};
    const dev = m.sourceDevice || m.sourceMAC;
    const src = (m.sourceIP || '') + (m.sourcePort ? ':' + m.sourcePort : '');
    const st0 = Date.parse(c.start);
    return '<tr data-id="' + esc(c.id) + '" data-mac="' + esc(m.sourceMAC || '') + '">' +
      '<td class="host" data-label="Host">' + esc(flowHost(c)) +
      (m.host && m.destinationIP ? '<small>' + esc(m.destinationIP) + '</small>' : '') + '</td>' +
      '<td class="device wide" data-label="Device"><span>' + esc(dev || src) +
      (dev ? '<small>' + esc(m.sourceDevice && m.sourceMAC ? m.sourceMAC + ' · ' : '') + esc(m.sourceIP || '') + '</small>' : '') +
      '</span></td>' +
      '<td data-label="Rule">' + (c.ruleName ? esc(c.ruleName) + (c.rule ? '<small>' + esc(ruleType(c)) + '</small>' : '')
        : esc(c.rule || '') + (c.rulePayload ? '<small>' + esc(c.rulePayload) + '</small>' : '')) + '</td>' +
      '<td data-label="Upstream">' + esc(flowChain(c)) + '</td>' +
      '<td data-label="Net">' + esc(m.network || '') + '</td>' +
      '<td class="num" data-label="Up">' + bytes(c.upload) + '</td>' +
      '<td class="num" data-label="Down">' + bytes(c.download) + '</td>' +
      '<td class="num" data-label="Down/s">' + (c.speed ? rate(c.speed) : '–') + '</td>' +
      '<td class="num" data-label="Age">' + (st0 ? dur((now - st0) / 1000) : '–') + '</td>' +
      '<td class="act"><button class="close" type="button" data-id="' + esc(c.id) + '" title="close this flow">Close</button></td></tr>';
  }).join('');
  $('#flows tbody').innerHTML = html || '<tr><td class="empty" colspan="10">' +
    (streams.conns && !streams.conns.live && !st.conns.length ? 'Connecting…' : 'No flows' + (st.conns.length ? ' match.' : '.')) + '</td></tr>';
}

async function closeFlow(id, btn) {
  btn.disabled = true;
  try {
    await api('DELETE', '/connections/' + encodeURIComponent(id));
    st.conns = st.conns.filter(c => c.id !== id);
    renderFlows();
    toast('Flow closed');
  } catch (err) {
    btn.disabled = false;
    if (!(err instanceof Unauthorized)) toast(err.message, true);
  }
}

// -- devices

function renderDevices() {
  const tb = $('#devices tbody');
  if (!st.devices) { tb.innerHTML = '<tr><td class="empty" colspan="7">Loading…</td></tr>'; return; }
  const live = new Map();
  for (const c of st.conns) {
    const mac = c.metadata && c.metadata.sourceMAC;
    if (mac) live.set(mac, (live.get(mac) || 0) + 1);
  }
  const ds = st.devices.slice().sort((a, b) => (b.flows || 0) - (a.flows || 0) ||
    ((b.today && b.today.down) || 0) - ((a.today && a.today.down) || 0));
  const pair = x => x ? bytes(x.up) + ' / ' + bytes(x.down) : '–';
  tb.innerHTML = ds.map(d => '<tr data-mac="' + esc(d.mac) + '">' +
    '<td class="host" data-label="Device">' + esc(d.name || d.mac) +
    (d.name_from ? '<small>from ' + esc(d.name_from) + '</small>' : '') + '</td>' +
    '<td data-label="MAC"><code>' + esc(d.mac) + '</code></td>' +
    '<td data-label="Addresses">' + (d.addresses || []).map(esc).join('<br>') + '</td>' +
    '<td class="num" data-label="Today ↑/↓">' + pair(d.today) + '</td>' +
    '<td class="num" data-label="Month ↑/↓">' + pair(d.month) + '</td>' +
    '<td class="num" data-label="Flows"><a href="#flows" data-device="' + esc(d.name || d.mac) + '">' +
    (d.flows != null ? d.flows : live.get(d.mac) || 0) + '</a></td>' +
    '<td class="num" data-label="Last seen">' + ago(d.last_seen) + '</td></tr>').join('') ||
    '<tr><td class="empty" colspan="7">No devices seen yet.</td></tr>';
}

// -- upstreams and groups

const isGroup = p => Array.isArray(p.all);
const isSelect = p => /^select(or)?$/i.test(p.type || '');
const builtin = new Set(['DIRECT', 'REJECT', 'REJECT-DROP', 'PASS', 'COMPATIBLE', 'GLOBAL']);

function upstreamList() {
  const ps = st.proxies || {};
  return Object.values(ps).filter(p => !isGroup(p) && !builtin.has(p.name))
    .sort((a, b) => a.name.localeCompare(b.name));
}
function lastDelay(p) {
  const h = p.history || [];
  return h.length ? h[h.length - 1].delay : 0;
}
const healthDot = p => '<span class="dot ' + (p.alive === false ? 'bad' : p.alive ? 'ok' : '') + '"></span>';

// spark draws a latency history as a small SVG line (0 ms, a failed probe, at the top).
function spark(hist) {
  const h = (hist || []).slice(-30);
  if (h.length < 2) return '<span class="muted">–</span>';
  const W = 90, H = 22;
  let max = 1;
  for (const x of h) max = Math.max(max, x.delay || 0);
  const pts = h.map((x, i) => (i * W / (h.length - 1)).toFixed(1) + ',' +
    (x.delay ? H - 2 - (H - 4) * x.delay / max : 1).toFixed(1)).join(' ');
  const title = h.map(x => x.delay ? x.delay + ' ms' : 'failed').join(', ');
  return '<svg class="spark" width="' + W + '" height="' + H + '" viewBox="0 0 ' + W + ' ' + H +
    '"><title>' + esc(title) + '</title><polyline points="' + pts + '"/></svg>';
}

function renderProxies() {
  const ps = st.proxies;
  if (!ps) { $('#groups').innerHTML = '<p class="muted">Loading…</p>'; return; }
  // GLOBAL is the Clash API's list of everything; socksgate has no global mode to choose in it.
  const groups = Object.values(ps).filter(p => isGroup(p) && p.name !== 'GLOBAL')
    .sort((a, b) => a.name.localeCompare(b.name));
  $('#groups').innerHTML = groups.map(g => {
    const sel = isSelect(g);
    return '<div class="panel group" data-group="' + esc(g.name) + '"><h3>' + esc(g.name) + '</h3>' +
      '<span class="sub">' + esc(g.type || '') + (g.now ? ' · now <b class="now-name">' + esc(g.now) + '</b>' : '') +
      (sel ? ' · tap a member to choose it' : '') + '</span><div class="members">' +
      (g.all || []).map(n => {
        const m = ps[n] || { name: n };
        const d = lastDelay(m);
        return '<button type="button" class="member' + (n === g.now ? ' now' : '') + '" data-group="' + esc(g.name) +
          '" data-member="' + esc(n) + '"' + (sel ? '' : ' disabled') + '>' + healthDot(m) +
          '<span class="name">' + esc(n) + '</span><span class="muted">' +
          (m.alive === false ? 'down' : d ? d + ' ms' : '') + '</span></button>';
      }).join('') + '</div></div>';
  }).join('') || '<p class="muted">No groups.</p>';

  const ups = upstreamList();
  $('#upstreams tbody').innerHTML = ups.map(p => {
    const d = lastDelay(p);
    return '<tr data-name="' + esc(p.name) + '"><td class="host" data-label="Name">' + esc(p.name) + '</td>' +
      '<td data-label="Type">' + esc(p.type || '') + '</td>' +
      '<td data-label="Health">' + healthDot(p) + (p.alive === false ? 'down' : p.alive ? 'up' : 'unknown') + '</td>' +
      '<td class="num" data-label="Latency">' + (d ? d + ' ms' : '–') + '</td>' +
      '<td data-label="History">' + spark(p.history) + '</td>' +
      '<td class="act"><button type="button" class="probe" data-name="' + esc(p.name) + '">Test</button></td></tr>';
  }).join('') || '<tr><td class="empty" colspan="6">No upstreams.</td></tr>';
}

async function choose(group, member, btn) {
  btn.disabled = true;
  try {
    await api('PUT', '/proxies/' + encodeURIComponent(group), { name: member });
    if (st.proxies && st.proxies[group]) st.proxies[group].now = member;
    toast(group + ' → ' + member);
  } catch (err) {
    if (!(err instanceof Unauthorized)) toast(err.message, true);
  }
  renderProxies();
  poll(true);
}

// probeURL is what a Test button asks an upstream to fetch: the URL typed above the table
// (kept in local storage), else the probe of a group, else the usual generate_204.
function probeURL() {
  const typed = $('#probe-url').value.trim();
  if (typed) return typed;
  const g = Object.values(st.proxies || {}).find(p => isGroup(p) && p.testUrl);
  return g ? g.testUrl : 'https://www.gstatic.com/generate_204';
}

async function probe(name, btn) {
  btn.disabled = true;
  btn.textContent = '…';
  const q = new URLSearchParams({ timeout: '5000', url: probeURL() });
  try {
    const r = await api('GET', '/proxies/' + encodeURIComponent(name) + '/delay?' + q);
    toast(name + ': ' + (r && r.delay ? r.delay + ' ms' : 'no answer'));
  } catch (err) {
    if (!(err instanceof Unauthorized)) toast(name + ': ' + err.message, true);
  }
  poll(true);
}

// -- rules

function renderRules() {
  const tb = $('#rules tbody');
  if (!st.rules) { tb.innerHTML = '<tr><td class="empty" colspan="6">Loading…</td></tr>'; return; }
  const q = $('#f-rules').value.toLowerCase();
  tb.innerHTML = st.rules.map((r, i) => ({ r, i })).filter(({ r }) => !q ||
    [r.type, r.payload, r.proxy].join(' ').toLowerCase().includes(q)).map(({ r, i }) => {
    const x = r.extra || {};
    return '<tr><td class="num" data-label="#">' + (r.index != null ? r.index : i) + '</td>' +
      '<td data-label="Type">' + esc(r.type) + '</td>' +
      '<td class="host" data-label="Match">' + esc(r.payload) + (r.size > 0 ? '<small>' + r.size + ' entries</small>' : '') + '</td>' +
      '<td data-label="Target">' + esc(r.proxy) + '</td>' +
      '<td class="num" data-label="Hits">' + (x.hitCount != null ? Number(x.hitCount).toLocaleString() : '–') + '</td>' +
      '<td class="num" data-label="Last hit">' + (x.hitAt ? ago(x.hitAt) : '–') + '</td></tr>';
  }).join('') || '<tr><td class="empty" colspan="6">No rules' + (q ? ' match.' : '.') + '</td></tr>';
}

// -- DNS: the counters socksgate has, shown as they come (numbers as cards, lists as tables).

function renderDNS() {
  const el = $('#dns');
  if (st.dns === undefined) { el.innerHTML = '<p class="muted">Loading…</p>'; return; }
  if (st.dns === 'empty') { el.innerHTML = '<div class="panel"><p>socksgate answered /dns with nothing.</p></div>'; return; }
  if (st.dns === null || typeof st.dns !== 'object') { el.innerHTML = '<div class="panel"><p>DNS is off in this configuration.</p></div>'; return; }
  const label = k => k.replace(/_/g, ' ').replace(/([a-z])([A-Z])/g, '$1 $2').replace(/^./, c => c.toUpperCase());
  const cell = v => v == null ? '' : typeof v === 'object' ? esc(JSON.stringify(v)) :
    typeof v === 'number' ? (Number.isInteger(v) ? v.toLocaleString() : String(+v.toPrecision(3))) : esc(v);
  let cards = '', tables = '';
  const d = st.dns;
  const hits = d.CacheHits != null ? d.CacheHits : d.cache_hits, misses = d.CacheMisses != null ? d.CacheMisses : d.cache_misses;
  if (hits + misses > 0) cards += '<div class="card"><span class="k">Cache hit ratio</span><span class="v">' + (100 * hits / (hits + misses)).toFixed(1) + ' %</span></div>';
  for (const [k, v] of Object.entries(d)) {
    if (typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean') {
      cards += '<div class="card"><span class="k">' + esc(label(k)) + '</span><span class="v">' +
        (/bytes/i.test(k) && typeof v === 'number' ? bytes(v) : cell(v)) + '</span></div>';
    } else if (Array.isArray(v) && v.length && typeof v[0] === 'object') {
      const cols = Object.keys(v[0]).filter(c => typeof v[0][c] !== 'object');
      const hist = 'Count' in v[0] && 'Sum' in v[0];
      tables += '<div class="panel"><h2>' + esc(label(k)) + '</h2><table class="table"><thead><tr>' +
        cols.map(c => '<th' + (typeof v[0][c] === 'number' ? ' class="num"' : '') + '>' + esc(label(c) + (hist && c === 'Sum' ? ' (s)' : '')) + '</th>').join('') + (hist ? '<th class="num">Mean</th>' : '') + '</tr></thead><tbody>' +
        v.map(r => '<tr>' + cols.map(c => '<td data-label="' + esc(label(c)) + '"' + (typeof r[c] === 'number' ? ' class="num"' : '') + '>' + cell(r[c]) + '</td>').join('') +
          (hist ? '<td class="num" data-label="Mean">' + (r.Count ? (1000 * r.Sum / r.Count).toFixed(1) + ' ms' : '–') + '</td>' : '') + '</tr>').join('') +
        '</tbody></table></div>';
    } else if (v && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length) {
      tables += '<div class="panel"><h2>' + esc(label(k)) + '</h2><ul class="list">' +
        Object.entries(v).map(([a, b]) => '<li><span>' + esc(a) + '</span><span>' + cell(b) + '</span></li>').join('') + '</ul></div>';
    }
  }
  el.innerHTML = '<div class="kv">' + cards + '</div>' + tables;
}

// ---- wiring

document.addEventListener('DOMContentLoaded', () => {
  $('#login-form').addEventListener('submit', ev => {
    ev.preventDefault();
    st.secret = $('#secret').value;
    localStorage.setItem(KEY, st.secret);
    connect();
  });
  $('#logout').addEventListener('click', () => {
    localStorage.removeItem(KEY);
    st.secret = '';
    unauthorized();
    $('#login-title').textContent = 'Signed out';
  });
  window.addEventListener('hashchange', route);
  window.addEventListener('pagehide', saveTraffic);
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) saveTraffic();
    syncConnections();
    if (!document.hidden && st.authorized) poll(true);
  });
  window.addEventListener('resize', () => { if (st.view === 'overview') drawChart($('#chart'), st.traffic); });

  $('#flows thead').addEventListener('click', ev => {
    const th = ev.target.closest('th[data-sort]');
    if (!th) return;
    const k = th.dataset.sort;
    st.sort = { key: k, asc: st.sort.key === k ? !st.sort.asc : ['host', 'device', 'rule', 'chain', 'network'].includes(k) };
    renderFlows();
  });
  $('#flows tbody').addEventListener('click', ev => {
    const b = ev.target.closest('button.close');
    if (b) closeFlow(b.dataset.id, b);
  });
  $('#f-host').addEventListener('input', ev => { st.filter.host = ev.target.value; renderFlows(); });
  for (const [id, k] of [['f-device', 'device'], ['f-rule', 'rule'], ['f-upstream', 'upstream']]) {
    $('#' + id).addEventListener('change', ev => { st.filter[k] = ev.target.value; renderFlows(); });
  }
  // Links from the overview and the devices view open the flows view filtered.
  $('#main').addEventListener('click', ev => {
    const a = ev.target.closest('a[data-upstream], a[data-device]');
    if (!a) return;
    st.filter = { host: '', device: a.dataset.device || '', rule: '', upstream: a.dataset.upstream || '' };
    $('#f-host').value = '';
    for (const k of ['device', 'rule', 'upstream']) {
      const sel = $('#f-' + k);
      if (st.filter[k] && ![...sel.options].some(o => o.value === st.filter[k])) {
        sel.insertAdjacentHTML('beforeend', '<option value="' + esc(st.filter[k]) + '">' + esc(st.filter[k]) + '</option>');
      }
      sel.value = st.filter[k];
    }
  });
  $('#groups').addEventListener('click', ev => {
    const b = ev.target.closest('button.member');
    if (b && !b.disabled && !b.classList.contains('now')) choose(b.dataset.group, b.dataset.member, b);
  });
  $('#upstreams').addEventListener('click', ev => {
    const b = ev.target.closest('button.probe');
    if (b) probe(b.dataset.name, b);
  });
  $('#f-rules').addEventListener('input', renderRules);
  $('#probe-url').value = localStorage.getItem('socksgate.probe') || '';
  $('#probe-url').addEventListener('change', ev => localStorage.setItem('socksgate.probe', ev.target.value.trim()));

  route();
  connect();
});
