// spearlet dashboard: a small single-page app without dependencies.
// Pages: /ui (overview), /ui/tasks/{name}, /ui/executions, /ui/executions/{id}.
'use strict';
(() => {
  const TOKEN_KEY = 'spearlet.dashboard.token';
  const WINDOW_SECONDS = 300;
  const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT']);
  const STATUSES = ['pending', 'running', 'completed', 'failed', 'cancelled', 'timeout'];
  const RANGES = [['', 'all'], ['5m', 'last 5 min', 300], ['15m', 'last 15 min', 900], ['1h', 'last 1 h', 3600], ['24h', 'last 24 h', 86400]];
  const PAGE_SIZE = 50;

  // ---------- DOM helpers ----------
  const $ = (sel, root = document) => root.querySelector(sel);
  function add(el, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k == null || k === false) continue;
      el.append(k instanceof Node ? k : String(k));
    }
    return el;
  }
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v == null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'testid') el.dataset.testid = v;
        else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    return add(el, kids);
  }
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  const link = (href, text, attrs) => h('a', { href, ...attrs }, text);
  const taskHref = (name) => `/ui/tasks/${encodeURIComponent(name)}`;
  const execHref = (id) => `/ui/executions/${encodeURIComponent(id)}`;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const isAbort = (e) => e && (e.name === 'AbortError' || e.aborted);

  // ---------- value formatting (proto3 JSON omits defaults; int64 are strings) ----------
  const num = (v) => {
    const n = Number(v);
    return Number.isFinite(n) ? n : 0;
  };
  const nf = new Intl.NumberFormat('en-US', { maximumFractionDigits: 2 });
  const fmtNum = (v) => nf.format(num(v));
  function fmtMs(v) {
    const n = num(v);
    if (Number.isInteger(n)) return nf.format(n);
    if (n < 1) return n.toFixed(3);
    if (n < 100) return n.toFixed(1);
    return nf.format(Math.round(n));
  }
  function fmtBytes(v) {
    let n = num(v);
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }
  function fmtUptime(v) {
    let s = Math.floor(num(v));
    const d = Math.floor(s / 86400); s %= 86400;
    const hh = Math.floor(s / 3600); s %= 3600;
    const m = Math.floor(s / 60); s %= 60;
    if (d) return `${d}d ${hh}h`;
    if (hh) return `${hh}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }
  function parseTime(v) {
    if (v == null || v === '') return null;
    if (/^\d+$/.test(String(v))) {
      const n = Number(v);
      return new Date(n < 1e11 ? n * 1000 : n);
    }
    const t = Date.parse(v);
    return Number.isFinite(t) ? new Date(t) : null;
  }
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  function fmtTime(v, ms) {
    const d = parseTime(v);
    if (!d) return '—';
    const base = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(d)}`;
    return ms ? `${base}.${pad(d.getMilliseconds(), 3)}` : base;
  }
  const shortStatus = (s) => String(s || '').replace(/^EXECUTION_STATUS_/, '').toUpperCase() || 'UNKNOWN';
  const shortMode = (s) => String(s || '').replace(/^EXECUTION_MODE_/, '').toLowerCase() || '—';
  function statusClass(s) {
    const st = shortStatus(s);
    if (st === 'COMPLETED') return 'ok';
    if (st === 'FAILED' || st === 'TIMEOUT') return 'err';
    if (st === 'CANCELLED') return 'warn';
    if (st === 'RUNNING' || st === 'PENDING') return 'info';
    return '';
  }
  const badge = (s, attrs) => h('span', { class: `badge ${statusClass(s)}`, ...attrs }, shortStatus(s));
  const or = (v, d = '—') => (v == null || v === '' ? d : v);
  function decodeBase64(b64) {
    try {
      const bin = atob(b64);
      const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      return bytes;
    } catch (_) {
      return null;
    }
  }
  const utf8 = (bytes) => new TextDecoder().decode(bytes);

  // ---------- API ----------
  let token = '';
  try { token = sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { token = ''; }
  class HttpError extends Error {
    constructor(status, body, message) {
      super(message);
      this.status = status;
      this.body = body;
      this.code = (body && body.code) || '';
    }
  }
  function authHeaders(extra, tok = token) {
    const hd = new Headers(extra || {});
    if (tok) hd.set('authorization', `Bearer ${tok}`);
    return hd;
  }
  async function request(path, opts = {}) {
    const res = await fetch(path, { cache: 'no-store', ...opts, headers: authHeaders(opts.headers) });
    if (res.status === 401) askToken(token ? 'The node refused the stored token; enter another one.' : 'This node requires a token');
    return res;
  }
  async function readBody(res) {
    const text = await res.text();
    let body = null;
    try { body = text ? JSON.parse(text) : {}; } catch (_) { body = null; }
    return { text, body };
  }
  async function getJSON(path, signal) {
    const res = await request(path, { signal });
    const { text, body } = await readBody(res);
    if (!res.ok) throw new HttpError(res.status, body, (body && body.message) || text || `HTTP ${res.status}`);
    if (body == null) throw new HttpError(res.status, null, 'the answer is not JSON');
    return body;
  }
  function errorText(e) {
    if (e instanceof HttpError) {
      if (e.status === 401) return 'Authentication required: set a token.';
      return `${e.code || `HTTP ${e.status}`}: ${e.message}`;
    }
    return `Request failed: ${(e && e.message) || e}`;
  }
  const errorBox = (e) => h('p', { class: 'error', role: 'alert', testid: 'load-error' }, errorText(e));

  // All tasks (following pages), cached for a few seconds; the map task_id -> name is shared.
  const taskNames = new Map();
  let tasksCache = null;
  // Not tied to a page's signal: the cached promise is shared between pages.
  async function loadTasks(maxAgeMs = 5000) {
    if (tasksCache && Date.now() - tasksCache.at < maxAgeMs) return tasksCache.promise;
    const promise = (async () => {
      const all = [];
      let after = '';
      for (let i = 0; i < 100; i++) {
        const q = new URLSearchParams({ limit: '1000' });
        if (after) q.set('start_after', after);
        const page = await getJSON(`/v1/tasks?${q}`);
        all.push(...(page.tasks || []));
        if (!page.has_more || !page.next_start_after) break;
        after = page.next_start_after;
      }
      for (const t of all) taskNames.set(t.task_id, t.task_name);
      return all;
    })();
    tasksCache = { at: Date.now(), promise };
    promise.catch(() => { if (tasksCache && tasksCache.promise === promise) tasksCache = null; });
    return promise;
  }

  // Executions seen in lists or invoked here: the status endpoint does not name the task.

  // ---------- identity and permissions ----------
  let who = null;
  async function loadWhoami() {
    try {
      who = await getJSON('/v1/auth/whoami');
    } catch (e) {
      who = null;
    }
    const el = $('#whoami');
    el.textContent = who ? `${who.label || 'anonymous'} · ${who.scope || 'admin'}` : '';
    applyPermissions();
  }
  function permProblem(task) {
    if (!who) return '';
    if ((who.scope || 'admin') === 'read') return 'This token may read but not invoke or cancel';
    const allowed = who.tasks || [];
    if (task && allowed.length && !allowed.some((p) => (p.endsWith('*') ? task.startsWith(p.slice(0, -1)) : p === task))) {
      return `This token may not invoke or cancel ${task}`;
    }
    return '';
  }
  function applyPermissions() {
    for (const el of document.querySelectorAll('[data-needs="invoke"]')) {
      el.disabled = !!permProblem(el.dataset.task) || el.dataset.busy === '1';
    }
    for (const el of document.querySelectorAll('.perm-note')) {
      const p = permProblem(el.dataset.task);
      el.textContent = p;
      el.hidden = !p;
    }
  }
  const permNote = (task) => h('p', { class: 'note perm-note', 'data-task': task, testid: 'readonly-note', hidden: true });

  // ---------- token dialog ----------
  function askToken(reason) {
    const dlg = $('#token-dialog');
    $('#token-reason').textContent = reason || 'Enter a bearer token for this node.';
    if (!dlg.open) {
      $('#token-error').textContent = '';
      $('#token-input').value = '';
      dlg.showModal();
      $('#token-input').focus();
    }
  }
  async function tryToken(candidate) {
    let res = await fetch('/v1/auth/whoami', { cache: 'no-store', headers: authHeaders(null, candidate) });
    if (res.status === 404) res = await fetch('/v1/tasks?limit=1', { cache: 'no-store', headers: authHeaders(null, candidate) });
    await res.text();
    return res.status !== 401;
  }
  function setToken(t) {
    token = t;
    try {
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage unavailable: keep it in memory */ }
    $('#signout-button').hidden = !t;
    tasksCache = null;
    loadWhoami();
    restartLive();
    route();
  }
  function initTokenDialog() {
    const dlg = $('#token-dialog');
    const form = $('#token-form');
    const err = $('#token-error');
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const candidate = $('#token-input').value.trim();
      if (!candidate) return;
      err.textContent = '';
      const submit = form.querySelector('[type=submit]');
      submit.disabled = true;
      try {
        if (await tryToken(candidate)) {
          dlg.close();
          setToken(candidate);
        } else {
          err.textContent = 'The node refused this token.';
          $('#token-input').select();
        }
      } catch (ex) {
        err.textContent = `Could not reach the node: ${ex.message}`;
      } finally {
        submit.disabled = false;
      }
    });
    $('#token-cancel').addEventListener('click', () => dlg.close());
    $('#token-button').addEventListener('click', () => askToken());
    $('#signout-button').addEventListener('click', () => setToken(''));
    $('#signout-button').hidden = !token;
  }

  // ---------- live stream: GET /v1/events (SSE over fetch, so it can carry the token) ----------
  async function readSSE(body, onEvent) {
    const reader = body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    let name = '';
    let data = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        let line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          if (data.length) onEvent(name || 'message', data.join('\n'));
          name = '';
          data = [];
        } else if (line[0] !== ':') {
          const c = line.indexOf(':');
          const field = c < 0 ? line : line.slice(0, c);
          let v = c < 0 ? '' : line.slice(c + 1);
          if (v[0] === ' ') v = v.slice(1);
          if (field === 'event') name = v;
          else if (field === 'data') data.push(v);
        }
      }
    }
  }
  const live = { ac: null, wake: null, polling: null, started: false };
  function setLive(state, text) {
    const el = $('#live');
    el.dataset.state = state;
    $('.live-text', el).textContent = text || state;
    el.title = `Live updates: ${text || state}`;
  }
  function dispatchTick(tick) {
    const el = $('#live');
    el.classList.toggle('pulse');
    if (page && page.onTick) {
      try { page.onTick(tick); } catch (e) { /* a page bug must not stop the stream */ }
    }
  }
  function restartLive() {
    if (live.ac) live.ac.abort();
    if (live.wake) live.wake();
  }
  async function liveLoop() {
    let backoff = 1000;
    for (;;) {
      const ac = new AbortController();
      live.ac = ac;
      let gotEvent = false;
      try {
        const res = await fetch('/v1/events?seconds=300', { cache: 'no-store', headers: authHeaders(), signal: ac.signal });
        if (res.status === 401) {
          await res.text();
          setLive('offline', 'token needed');
          askToken('This node requires a token');
          await new Promise((r) => { live.wake = r; });
          continue;
        }
        if (res.status === 404) {
          await res.text();
          startPolling();
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        setLive('live');
        await readSSE(res.body, (ev, data) => {
          if (ev !== 'tick') return;
          gotEvent = true;
          let tick = null;
          try { tick = JSON.parse(data); } catch (_) { return; }
          dispatchTick(tick);
        });
      } catch (e) {
        if (ac.signal.aborted) { backoff = 1000; continue; }
      }
      if (gotEvent) {
        backoff = 1000;
        continue;
      }
      setLive('reconnecting');
      await Promise.race([sleep(backoff), new Promise((r) => { live.wake = r; })]);
      backoff = Math.min(backoff * 2, 15000);
    }
  }
  function startPolling() {
    setLive('polling', 'polling');
    if (!live.polling) live.polling = setInterval(() => dispatchTick({}), 2000);
  }
  // Pages compare executions_version; a tick without it (polling) always counts as a change.
  function versionChanged(state, tick) {
    const v = tick.executions_version;
    if (v == null) return true;
    const changed = state.version !== String(v);
    state.version = String(v);
    return changed;
  }

  // ---------- SVG line chart ----------
  const W = 400;
  const H = 150;
  const PL = 40;
  const PR = 8;
  const PT = 8;
  const PB = 20;
  function niceStep(raw) {
    if (!(raw > 0)) return 1;
    const mag = 10 ** Math.floor(Math.log10(raw));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
    return 10 * mag;
  }
  function axisLabel(v, step) {
    if (v === 0) return '0';
    if (v >= 1e9) return `${+(v / 1e9).toFixed(1)}G`;
    if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
    if (v >= 1e4) return `${+(v / 1e3).toFixed(1)}k`;
    const digits = step >= 1 ? 0 : Math.min(4, Math.ceil(-Math.log10(step)) + 1);
    return String(+v.toFixed(digits));
  }
  // series: [{name, get(point) -> number|null}]; points: [{at, ...}] ordered by time.
  function makeChart(title, series, { unit = '', testid } = {}) {
    const readout = h('span', { class: 'readout', 'aria-hidden': 'true' });
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svg.setAttribute('role', 'img');
    svg.setAttribute('preserveAspectRatio', 'xMidYMid meet');
    const legend = h('div', { class: 'legend' },
      series.map((s, i) => h('span', null, h('i', { class: `sw${i + 1}` }), s.name)));
    const el = h('figure', { class: 'chart panel', testid }, h('figcaption', null, h('span', null, title), readout), svg, legend);
    let state = { pts: [], vals: [], t0: 0, t1: 1, top: 1 };
    const fmtV = (v) => (v == null ? '—' : `${fmtMs(v)}${unit}`);
    const readoutAt = (i) => {
      const p = state.pts[i];
      if (!p) return '';
      return `${clock(new Date(p.t))} · ${series.map((s, k) => `${s.name} ${fmtV(state.vals[k][i])}`).join(' · ')}`;
    };
    function update(points) {
      const pts = [];
      for (const p of points || []) {
        const t = parseTime(p.at);
        if (t) pts.push({ t: t.getTime(), p });
      }
      const vals = series.map((s) => pts.map(({ p }) => {
        const v = s.get(p);
        return v == null || !Number.isFinite(v) ? null : v;
      }));
      let max = 0;
      for (const vs of vals) for (const v of vs) if (v != null && v > max) max = v;
      const step = niceStep(max / 3);
      const top = step * 3;
      const t1 = pts.length ? pts[pts.length - 1].t : Date.now();
      const t0 = pts.length > 1 ? pts[0].t : t1 - 60000;
      state = { pts, vals, t0, t1, top };
      const x = (t) => PL + ((t - t0) / Math.max(1, t1 - t0)) * (W - PL - PR);
      const y = (v) => PT + (1 - v / top) * (H - PT - PB);
      let s = `<title>${esc(title)}</title>`;
      for (let g = 0; g <= 3; g++) {
        const v = step * g;
        const yy = y(v).toFixed(1);
        s += `<line class="gl" x1="${PL}" x2="${W - PR}" y1="${yy}" y2="${yy}"/>`;
        s += `<text class="ax" x="${PL - 5}" y="${(+yy + 3).toFixed(1)}" text-anchor="end">${esc(axisLabel(v, step))}</text>`;
      }
      for (let g = 0; g < 4; g++) {
        const t = t0 + ((t1 - t0) * g) / 3;
        const anchor = g === 0 ? 'start' : g === 3 ? 'end' : 'middle';
        s += `<text class="ax" x="${x(t).toFixed(1)}" y="${H - 5}" text-anchor="${anchor}">${clock(new Date(t))}</text>`;
      }
      vals.forEach((vs, k) => {
        let d = '';
        let pen = false;
        vs.forEach((v, i) => {
          if (v == null) { pen = false; return; }
          d += `${pen ? 'L' : 'M'}${x(pts[i].t).toFixed(1)} ${y(v).toFixed(1)}`;
          pen = true;
        });
        if (vs.filter((v) => v != null).length === 1) d += 'h1';
        if (d) s += `<path class="ln s${k + 1}" d="${d}"/>`;
      });
      if (!pts.length) s += `<text class="ax" x="${W / 2}" y="${H / 2}" text-anchor="middle">no data yet</text>`;
      s += `<line class="cursor" x1="0" x2="0" y1="${PT}" y2="${H - PB}" visibility="hidden"/>`;
      s += `<rect class="hit" x="${PL}" y="${PT}" width="${W - PL - PR}" height="${H - PT - PB}"/>`;
      svg.innerHTML = s;
      const last = pts.length - 1;
      readout.textContent = last >= 0 ? readoutAt(last) : '';
      svg.setAttribute('aria-label', `${title}${unit ? ` (${unit.trim()})` : ''}, last ${Math.round((t1 - t0) / 60000) || 1} min; latest ${
        series.map((sr, k) => `${sr.name} ${fmtV(last >= 0 ? vals[k][last] : null)}`).join(', ')}`);
    }
    svg.addEventListener('mousemove', (e) => {
      const { pts } = state;
      if (!pts.length) return;
      const r = svg.getBoundingClientRect();
      const vx = ((e.clientX - r.left) / r.width) * W;
      const t = state.t0 + ((vx - PL) / (W - PL - PR)) * (state.t1 - state.t0);
      let best = 0;
      for (let i = 1; i < pts.length; i++) if (Math.abs(pts[i].t - t) < Math.abs(pts[best].t - t)) best = i;
      const cx = (PL + ((pts[best].t - state.t0) / Math.max(1, state.t1 - state.t0)) * (W - PL - PR)).toFixed(1);
      const cur = svg.querySelector('.cursor');
      if (cur) {
        cur.setAttribute('x1', cx);
        cur.setAttribute('x2', cx);
        cur.setAttribute('visibility', 'visible');
      }
      readout.textContent = readoutAt(best);
    });
    svg.addEventListener('mouseleave', () => {
      const cur = svg.querySelector('.cursor');
      if (cur) cur.setAttribute('visibility', 'hidden');
      readout.textContent = readoutAt(state.pts.length - 1);
    });
    update([]);
    return { el, update };
  }
  // Keeps the last WINDOW_SECONDS of points, appending live ones in time order.
  function pushPoint(points, p) {
    const t = parseTime(p && p.at);
    if (!t) return points;
    const last = points.length ? parseTime(points[points.length - 1].at) : null;
    if (last && t <= last) return points;
    points.push(p);
    const cutoff = t.getTime() - WINDOW_SECONDS * 1000;
    while (points.length && parseTime(points[0].at).getTime() < cutoff) points.shift();
    return points;
  }
  const rate = (p) => (num(p.calls) ? (100 * num(p.errors)) / num(p.calls) : 0);

  // ---------- tables ----------
  // cols: [{label, num?, cell(row) -> node|string, wrap?}]; rebuilt only when the content changes.
  function makeTable(cols, { testid, empty = 'Nothing here yet.', rowAttrs } = {}) {
    const tbody = h('tbody');
    const table = h('table', { testid },
      h('thead', null, h('tr', null, cols.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.label)))), tbody);
    let sig = null;
    function update(rows) {
      const next = JSON.stringify(rows);
      if (next === sig) return;
      sig = next;
      tbody.replaceChildren();
      if (!rows.length) {
        tbody.append(h('tr', null, h('td', { class: 'empty', colspan: cols.length }, empty)));
        return;
      }
      for (const r of rows) {
        tbody.append(h('tr', rowAttrs ? rowAttrs(r) : null,
          cols.map((c) => h('td', { class: c.num ? 'num' : c.wrap ? 'wrap' : null }, c.cell(r)))));
      }
    }
    return { el: h('div', { class: 'table-wrap' }, table), update, table };
  }
  function kv(pairs, testid) {
    return h('dl', { class: 'kv', testid }, pairs.filter(Boolean).map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
  }
  function kvTable(map, testid, empty) {
    const t = makeTable([
      { label: 'Key', cell: (r) => h('span', { class: 'mono' }, r[0]) },
      { label: 'Value', wrap: true, cell: (r) => r[1] },
    ], { testid, empty: empty || 'No keys.' });
    t.update(Object.entries(map || {}).sort((a, b) => a[0].localeCompare(b[0])));
    return t.el;
  }
  // Every status change the record keeps (GetExecutionStatus `timeline`), oldest first.
  function timelineTable(entries) {
    const t = makeTable([
      { label: 'At', cell: (e) => fmtTime(e.at, true) },
      { label: 'Status', cell: (e) => h('span', { class: `badge ${statusClass(shortStatus(e.status))}` }, shortStatus(e.status)) },
      { label: 'Attempt', cell: (e) => or(e.attempt) },
      { label: 'Note', wrap: true, cell: (e) => or(e.note) },
    ], { testid: 'execution-timeline-table', empty: 'No status changes recorded.' });
    t.update(entries);
    return t.el;
  }
  const section = (title, ...kids) => h('section', { class: 'panel' }, h('h2', null, title), kids);
  function card(label, testid) {
    const value = h('div', { class: 'value', testid }, '—');
    const sub = h('div', { class: 'sub' });
    return { el: h('div', { class: 'card' }, h('div', { class: 'label' }, label), value, sub), value, sub };
  }

  // ---------- router ----------
  let page = null;
  function navigate(href, replace) {
    if (replace) history.replaceState(null, '', href);
    else history.pushState(null, '', href);
    route();
    window.scrollTo(0, 0);
  }
  function route() {
    if (page) page.ac.abort();
    const main = $('#main');
    main.replaceChildren();
    const ac = new AbortController();
    page = { ac, signal: ac.signal, main, onTick: null };
    const path = location.pathname.replace(/\/+$/, '') || '/ui';
    let m;
    let nav = '';
    if (path === '/ui' || path === '/') { nav = 'overview'; overviewPage(page); }
    else if ((m = path.match(/^\/ui\/tasks\/(.+)$/))) taskPage(page, decodeURIComponent(m[1]));
    else if (path === '/ui/executions') { nav = 'executions'; executionsPage(page); }
    else if ((m = path.match(/^\/ui\/executions\/(.+)$/))) { nav = 'executions'; executionPage(page, decodeURIComponent(m[1])); }
    else {
      document.title = 'Not found · spearlet';
      main.append(h('h1', null, 'Page not found'), h('p', null, 'Go to the ', link('/ui/', 'overview'), '.'));
    }
    for (const a of document.querySelectorAll('.nav a')) {
      if (a.dataset.nav === nav) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    applyPermissions();
  }
  function onLinkClick(e) {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const a = e.target.closest && e.target.closest('a[href]');
    if (!a || a.target || a.hasAttribute('download')) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || !url.pathname.startsWith('/ui') || url.pathname.startsWith('/ui/assets/')) return;
    e.preventDefault();
    if (url.href === location.href) return;
    navigate(url.pathname + url.search);
    $('#main').focus({ preventScroll: true });
  }
  // Runs fn, showing failures in `where` (AbortErrors from leaving the page are ignored).
  function guard(promise, where) {
    return promise.catch((e) => {
      if (isAbort(e) || page.signal.aborted) return;
      if (where) where.replaceChildren(errorBox(e));
    });
  }

  // ---------- overview ----------
  function overviewPage(ctx) {
    document.title = 'Overview · spearlet';
    const health = h('span', { class: 'badge', testid: 'node-health' }, 'checking');
    const cards = {
      uptime: card('Uptime', 'stat-uptime'),
      execs: card('Executions', 'stat-executions'),
      instances: card('Instances', 'stat-instances'),
      queue: card('Queue', 'stat-queue'),
      wait: card('Queue wait p50 / p99', 'stat-queue-wait'),
      async: card('Async backlog', 'stat-async'),
      memory: card('Memory', 'stat-memory'),
      cpu: card('CPU', 'stat-cpu'),
    };
    const charts = [
      makeChart('Calls per second', [{ name: 'calls/s', get: (p) => num(p.calls) }], { testid: 'chart-calls' }),
      makeChart('Error rate', [{ name: 'errors', get: rate }], { unit: ' %', testid: 'chart-errors' }),
      makeChart('Latency', [{ name: 'p50', get: (p) => num(p.latency_p50_ms) }, { name: 'p99', get: (p) => num(p.latency_p99_ms) }], { unit: ' ms', testid: 'chart-latency' }),
      makeChart('Queue', [{ name: 'queue length', get: (p) => num(p.queue_length) }, { name: 'async backlog', get: (p) => num(p.async_waiting) }], { testid: 'chart-queue' }),
      makeChart('Instances', [{ name: 'total', get: (p) => num(p.instances) }, { name: 'busy', get: (p) => num(p.busy_instances) }], { testid: 'chart-instances' }),
      makeChart('Resident memory', [{ name: 'MiB', get: (p) => num(p.resident_memory_bytes) / 1048576 }], { unit: ' MiB', testid: 'chart-memory' }),
      makeChart('CPU', [{ name: 'cpu', get: (p) => num(p.cpu_usage_percent) }], { unit: ' %', testid: 'chart-cpu' }),
    ];
    const byState = h('div', { testid: 'instances-by-state' }, h('p', { class: 'muted' }, 'Loading…'));
    const queueBox = h('div', { testid: 'queue-panel' }, h('p', { class: 'muted' }, 'Loading…'));
    const tasksErr = h('div');
    const tasksTable = makeTable([
      { label: 'Task', cell: (r) => link(taskHref(r.name), r.name) },
      { label: 'Type', cell: (r) => r.type },
      { label: 'Version', cell: (r) => r.version },
      { label: 'Isolation', cell: (r) => r.isolation },
      { label: 'Calls', num: true, cell: (r) => fmtNum(r.calls) },
      { label: 'Errors', num: true, cell: (r) => fmtNum(r.errors) },
      { label: 'Last status', cell: (r) => (r.last ? badge(r.last) : '—') },
      { label: 'Warm instances', num: true, cell: (r) => fmtNum(r.warm) },
    ], { testid: 'tasks-table', empty: 'No tasks registered.', rowAttrs: (r) => ({ 'data-testid': `task-row-${r.name}` }) });
    const nodesTable = makeTable([
      { label: 'Node', cell: (r) => [r.node_id || '—', r.is_self ? ' (this node)' : ''] },
      { label: 'Address', cell: (r) => or(r.advertise_addr) },
      { label: 'Routable', cell: (r) => (r.routable ? 'yes' : 'no') },
      { label: 'Draining', cell: (r) => (r.draining ? 'yes' : 'no') },
      { label: 'Free slots', num: true, cell: (r) => fmtNum(r.free_slots) },
      { label: 'Running', num: true, cell: (r) => fmtNum(r.running) },
      { label: 'Queue', num: true, cell: (r) => fmtNum(r.queue_length) },
      { label: 'Heartbeat age ms', num: true, cell: (r) => fmtNum(r.heartbeat_age_ms) },
    ], { testid: 'cluster-nodes', empty: 'No nodes seen.' });
    const readyTable = makeTable([
      { label: 'Node', cell: (r) => r.node },
      { label: 'Task', cell: (r) => link(taskHref(r.task_name || ''), or(r.task_name, r.task_id)) },
      { label: 'Instances', num: true, cell: (r) => fmtNum(r.instances) },
      { label: 'Idle', num: true, cell: (r) => fmtNum(r.idle_instances) },
      { label: 'Can start', cell: (r) => (r.can_start_instance ? 'yes' : 'no') },
    ], { testid: 'cluster-tasks', empty: 'No task readiness reported.' });
    const clusterInfo = h('div');
    const cluster = h('section', { class: 'panel', testid: 'cluster', hidden: true },
      h('h2', null, 'Cluster'), clusterInfo, h('h3', null, 'Nodes'), nodesTable.el, h('h3', null, 'Task readiness per node'), readyTable.el);
    const statsErr = h('div');
    ctx.main.append(
      h('div', { class: 'page-head' }, h('h1', null, 'Overview'), health, h('span', { class: 'muted', testid: 'uptime' })),
      statsErr,
      h('div', { class: 'cards' }, Object.values(cards).map((c) => c.el)),
      h('div', { class: 'grid', testid: 'overview-charts' }, charts.map((c) => c.el)),
      h('div', { class: 'cols2' }, section('Instances by state', byState), section('Queue and async backlog', queueBox)),
      section('Tasks', tasksErr, tasksTable.el),
      cluster,
    );
    const st = { tasks: null, stats: null, points: [], version: null, ticks: 0, busy: {} };
    function renderTasks() {
      if (!st.tasks) return;
      const pools = new Map(((st.stats && st.stats.pools) || []).map((p) => [p.task_id, p]));
      const rows = st.tasks.map((t) => {
        const pool = pools.get(t.task_id) || {};
        const a = t.artifact_spec || {};
        return {
          name: t.task_name, type: or(a.artifact_type), version: or(a.version), isolation: or(pool.isolation || (t.metadata || {}).isolation),
          calls: num(t.execution_count), errors: num(t.error_count), last: t.last_status || '', warm: num(pool.current_instances),
        };
      }).sort((a, b) => a.name.localeCompare(b.name));
      tasksTable.update(rows);
      tasksTable.table.dataset.loaded = 'true';
    }
    function renderStats() {
      const s = (st.stats && st.stats.service_stats) || {};
      cards.uptime.value.textContent = fmtUptime(s.uptime_seconds);
      cards.execs.value.textContent = fmtNum(s.total_executions);
      cards.execs.sub.textContent = `${fmtNum(s.successful_executions)} ok · ${fmtNum(s.failed_executions)} failed · avg ${fmtMs(s.average_response_time_ms)} ms`;
      cards.instances.value.textContent = fmtNum(s.instance_count);
      cards.instances.sub.textContent = `${fmtNum(s.cold_starts)} cold · ${fmtNum(s.warm_starts)} warm starts`;
      cards.queue.value.textContent = fmtNum(s.queue_length);
      cards.queue.sub.textContent = `of ${fmtNum(s.max_queue_length)}`;
      const qw = s.queue_wait || {};
      cards.wait.value.textContent = `${fmtMs(qw.p50_ms)} / ${fmtMs(qw.p99_ms)} ms`;
      cards.async.value.textContent = fmtNum(s.async_waiting);
      cards.memory.value.textContent = fmtBytes(s.total_memory_used);
      cards.memory.sub.textContent = `${fmtMs(s.memory_usage_percent)} % of the host`;
      cards.cpu.value.textContent = `${fmtMs(s.cpu_usage_percent)} %`;
      $('[data-testid="uptime"]', ctx.main).textContent = `up ${fmtUptime(s.uptime_seconds)}`;
      const states = Object.entries(s.instances_by_state || {}).sort();
      byState.replaceChildren(kv([
        ...states.map(([k, v]) => [k, fmtNum(v)]),
        ['terminated', fmtNum(s.instances_terminated)],
        ['failed', fmtNum(s.instances_failed)],
      ]));
      queueBox.replaceChildren(kv([
        ['queue length', `${fmtNum(s.queue_length)} of ${fmtNum(s.max_queue_length)}`],
        ['wait p50', `${fmtMs(qw.p50_ms)} ms`],
        ['wait p90', `${fmtMs(qw.p90_ms)} ms`],
        ['wait p99', `${fmtMs(qw.p99_ms)} ms`],
        ['wait max', `${fmtMs(qw.max_ms)} ms`],
        ['async backlog', fmtNum(s.async_waiting)],
      ]));
      const c = st.stats && st.stats.cluster;
      cluster.hidden = !c;
      if (c) {
        clusterInfo.replaceChildren(kv([
          ['cluster', or(c.cluster_name)], ['this node', or(c.node_id)], ['NATS', c.nats_connected ? 'connected' : 'disconnected'],
          c.message ? ['message', c.message] : null,
        ]));
        const nodes = c.nodes || [];
        nodesTable.update(nodes.map((n) => ({ ...n, tasks: undefined })));
        readyTable.update(nodes.flatMap((n) => (n.tasks || []).map((t) => ({ node: n.node_id || '', ...t }))));
      }
    }
    const renderCharts = () => charts.forEach((c) => c.update(st.points));
    const once = (key, fn) => {
      if (st.busy[key]) return;
      st.busy[key] = true;
      guard(fn(), key === 'tasks' ? tasksErr : statsErr).finally(() => { st.busy[key] = false; });
    };
    const loadTasksNow = () => once('tasks', async () => {
      st.tasks = await loadTasks(1000);
      tasksErr.replaceChildren();
      renderTasks();
    });
    const loadStats = () => once('stats', async () => {
      st.stats = await getJSON('/v1/stats', ctx.signal);
      statsErr.replaceChildren();
      renderStats();
      renderTasks();
    });
    const loadHealth = () => once('health', async () => {
      const res = await fetch('/readyz', { cache: 'no-store', headers: authHeaders(), signal: ctx.signal });
      const text = (await res.text()).trim();
      health.textContent = res.ok ? 'ready' : `not ready${text ? `: ${text}` : ''}`;
      health.className = `badge ${res.ok ? 'ok' : 'err'}`;
    });
    const loadHistory = () => once('history', async () => {
      const hist = await getJSON(`/v1/stats/history?seconds=${WINDOW_SECONDS}`, ctx.signal);
      const merged = [];
      for (const p of hist.points || []) pushPoint(merged, p);
      for (const p of st.points) pushPoint(merged, p);
      st.points = merged;
      renderCharts();
    });
    loadTasksNow();
    loadStats();
    loadHealth();
    loadHistory();
    ctx.onTick = (tick) => {
      st.ticks++;
      if (tick.point) {
        pushPoint(st.points, tick.point);
        renderCharts();
      }
      if (st.ticks % 2 === 0) { loadStats(); loadHealth(); }
      if (versionChanged(st, tick)) loadTasksNow();
    };
  }

  // ---------- task page ----------
  function taskPage(ctx, name) {
    document.title = `${name} · spearlet`;
    const err = h('div');
    const info = h('div', { testid: 'task-info' }, h('p', { class: 'muted' }, 'Loading…'));
    const version = h('div', { testid: 'task-version' });
    const config = h('div', { testid: 'task-config' });
    const poolInfo = h('div', { testid: 'pool-info' }, h('p', { class: 'muted' }, 'Loading…'));
    const instTable = makeTable([
      { label: 'Instance', cell: (r) => h('span', { class: 'mono' }, r.instance_id || '—') },
      { label: 'State', cell: (r) => or(r.state) },
      { label: 'Active / capacity', num: true, cell: (r) => `${fmtNum(r.active)} / ${fmtNum(r.capacity)}` },
      { label: 'Served', num: true, cell: (r) => fmtNum(r.served) },
      { label: 'Failures', num: true, cell: (r) => fmtNum(r.failures) },
      { label: 'Healthy', cell: (r) => (r.healthy ? 'yes' : 'no') },
      { label: 'Mean response ms', num: true, cell: (r) => fmtMs(r.mean_response_ms) },
    ], { testid: 'pool-instances', empty: 'No instances.' });
    const execTable = execListTable('task-executions', false);
    const charts = [
      makeChart('Calls per second', [{ name: 'calls/s', get: (p) => num(p.calls) }], { testid: 'task-chart-calls' }),
      makeChart('Errors', [{ name: 'errors', get: (p) => num(p.errors) }], { testid: 'task-chart-errors' }),
      makeChart('Latency', [{ name: 'p50', get: (p) => num(p.latency_p50_ms) }, { name: 'p99', get: (p) => num(p.latency_p99_ms) }], { unit: ' ms', testid: 'task-chart-latency' }),
      makeChart('Instances', [{ name: 'current', get: (p) => num(p.instances) }, { name: 'busy', get: (p) => num(p.busy_instances) },
        { name: 'desired', get: (p) => num(p.desired_instances) }, { name: 'predicted', get: (p) => num(p.predicted_instances) }], { testid: 'task-chart-instances' }),
    ];
    const typeBadge = h('span', { class: 'badge' });
    ctx.main.append(
      h('div', { class: 'page-head' }, h('span', { class: 'crumbs' }, link('/ui/', 'Overview'), ' / task'),
        h('h1', { testid: 'task-name' }, name), typeBadge),
      err,
      h('div', { class: 'cols2' },
        section('Task', info),
        h('section', { class: 'panel' }, h('h2', null, 'Invoke'), invokeForm(ctx, name, () => refreshTask()))),
      h('div', { class: 'grid' }, charts.map((c) => c.el)),
      h('div', { class: 'cols2' }, section('Pool', poolInfo), h('div', null, section('Version', version), section('Configuration', config))),
      section('Instances', instTable.el),
      section('Recent executions', execTable.el),
    );
    const st = { version: null, ticks: 0, busy: {}, taskId: '' };
    const once = (key, fn) => {
      if (st.busy[key]) return;
      st.busy[key] = true;
      guard(fn(), err).finally(() => { st.busy[key] = false; });
    };
    const refreshTask = () => once('task', async () => {
      const data = await getJSON(`/v1/tasks/${encodeURIComponent(name)}?include_executions=true&execution_limit=20`, ctx.signal);
      if (!data.found || !data.task) {
        info.replaceChildren(h('p', { class: 'error' }, `No task named ${name}.`));
        return;
      }
      const t = data.task;
      const a = t.artifact_spec || {};
      st.taskId = t.task_id;
      taskNames.set(t.task_id, t.task_name);
      typeBadge.textContent = or(a.artifact_type, 'unknown type');
      info.replaceChildren(kv([
        ['id', h('span', { class: 'mono' }, or(t.task_id))],
        ['type', or(a.artifact_type)],
        ['version', or(a.version)],
        ['checksum', h('span', { class: 'mono' }, or(a.checksum))],
        ['location', h('span', { class: 'mono' }, or(a.location))],
        ['artifact', h('span', { class: 'mono' }, or(a.artifact_id))],
        ['created', fmtTime(t.created_at)],
        ['updated', fmtTime(t.updated_at)],
        ['calls', fmtNum(t.execution_count)],
        ['errors', fmtNum(t.error_count)],
        ['last status', t.last_status ? badge(t.last_status) : '—'],
        (t.metadata || {}).description ? ['description', t.metadata.description] : null,
      ]));
      version.replaceChildren(kv([['current version', h('span', { testid: 'task-current-version' }, or(a.version))], ['updated', fmtTime(t.updated_at)]]),
        h('p', { class: 'muted small' }, 'A task has one current version; updating the task replaces it.'));
      const rows = {};
      for (const [k, v] of Object.entries(t.metadata || {})) rows[`task.${k}`] = v;
      for (const [k, v] of Object.entries(a.metadata || {})) rows[`artifact.${k}`] = v;
      config.replaceChildren(kvTable(rows, 'task-config-table', 'No configuration keys.'));
      execTable.update(data.executions || []);
    });
    const refreshHistory = () => once('history', async () => {
      const hist = await getJSON(`/v1/stats/history?seconds=${WINDOW_SECONDS}&task=${encodeURIComponent(name)}`, ctx.signal);
      charts.forEach((c) => c.update(hist.points || []));
    });
    const refreshPool = () => once('pool', async () => {
      const stats = await getJSON('/v1/stats', ctx.signal);
      const p = (stats.pools || []).find((x) => (st.taskId && x.task_id === st.taskId) || x.task_name === name);
      if (!p) {
        poolInfo.replaceChildren(h('p', { class: 'muted' }, 'No pool for this task yet (it has not run).'));
        instTable.update([]);
        return;
      }
      poolInfo.replaceChildren(kv([
        ['isolation', or(p.isolation)],
        ['scheduler', or(p.scheduler_policy)],
        ['min / max', `${fmtNum(p.min_instances)} / ${fmtNum(p.max_instances)}`],
        ['current', h('span', { testid: 'pool-current' }, fmtNum(p.current_instances))],
        ['desired', fmtNum(p.desired_instances)],
        ['reactive', fmtNum(p.reactive_instances)],
        ['predicted', `${fmtNum(p.predicted_instances)}${p.panicking ? ' (panic mode)' : ''}`],
        ['forecast', `${fmtMs(p.forecast_arrivals_per_second)} calls/s`],
        ['waiting', fmtNum(p.waiting)],
        ['active', fmtNum(p.active_executions)],
        ['cold / warm starts', `${fmtNum(p.cold_starts)} / ${fmtNum(p.warm_starts)}`],
        ['mean cold start', `${fmtMs(p.mean_cold_start_ms)} ms`],
      ]));
      instTable.update(p.instances || []);
    });
    refreshTask();
    refreshHistory();
    refreshPool();
    ctx.onTick = (tick) => {
      st.ticks++;
      if (st.ticks % 2 === 0) { refreshHistory(); refreshPool(); }
      if (versionChanged(st, tick)) refreshTask();
    };
  }

  // ---------- invoke form ----------
  function invokeForm(ctx, name, onDone) {
    const field = (id, label, control) => h('div', null, h('label', { for: id }, label), control);
    const input = h('textarea', { id: 'invoke-input', name: 'input', rows: 4, spellcheck: 'false', testid: 'invoke-input', placeholder: 'input bytes (text)' });
    const file = h('input', { type: 'file', id: 'invoke-file', name: 'file', testid: 'invoke-file' });
    const fn = h('input', { type: 'text', id: 'invoke-function', name: 'function', testid: 'invoke-function', placeholder: 'default', autocomplete: 'off' });
    const prio = h('select', { id: 'invoke-priority', name: 'priority', testid: 'invoke-priority' },
      ['', 'low', 'normal', 'high', 'critical'].map((p) => h('option', { value: p }, p || '(default)')));
    const timeout = h('input', { type: 'number', id: 'invoke-timeout', name: 'timeout', min: 1, step: 1, testid: 'invoke-timeout', placeholder: 'default' });
    const modes = h('fieldset', null, h('legend', null, 'Mode'), ['sync', 'async', 'stream'].map((m) =>
      h('label', null, h('input', { type: 'radio', name: 'mode', value: m, checked: m === 'sync', testid: `mode-${m}` }), m)));
    const submit = h('button', { type: 'submit', class: 'btn primary', testid: 'invoke-submit', 'data-needs': 'invoke', 'data-task': name }, 'Invoke');
    const stop = h('button', { type: 'button', class: 'btn', testid: 'invoke-stop', hidden: true }, 'Stop');
    const clearFile = h('button', { type: 'button', class: 'btn small', testid: 'invoke-clear-file', hidden: true }, 'Clear file');
    const status = h('div', { testid: 'invoke-status', role: 'status', 'aria-live': 'polite' });
    const errorP = h('p', { class: 'error', role: 'alert', testid: 'invoke-error' });
    const output = h('pre', { class: 'out', id: 'invoke-output', testid: 'invoke-output', 'aria-live': 'polite', 'aria-label': 'Output', tabindex: 0 });
    const result = h('div', { class: 'result', testid: 'invoke-result', hidden: true }, status, errorP, output);
    const form = h('form', { testid: 'invoke-form', 'aria-label': `Invoke ${name}` },
      field('invoke-input', 'Input (text)', input),
      h('div', { class: 'row' }, h('span', null, h('label', { for: 'invoke-file' }, 'Or input from a file (used when chosen)'), file), clearFile),
      h('div', { class: 'form-grid' },
        field('invoke-function', 'Function name', fn),
        field('invoke-priority', 'Priority', prio),
        field('invoke-timeout', 'Timeout ms', timeout)),
      modes,
      permNote(name),
      h('div', { class: 'row' }, submit, stop),
      result);
    file.addEventListener('change', () => { clearFile.hidden = !file.files.length; });
    clearFile.addEventListener('click', () => { file.value = ''; clearFile.hidden = true; });
    let running = null;
    stop.addEventListener('click', () => { if (running) running.abort(); });
    const setBusy = (b) => {
      submit.dataset.busy = b ? '1' : '';
      stop.hidden = !b;
      applyPermissions();
    };
    const showStatus = (http, spear, id) => {
      status.replaceChildren(kv([
        http ? ['HTTP', h('span', { testid: 'invoke-http-status' }, String(http))] : null,
        spear ? ['status', h('span', { testid: 'invoke-spear-status' }, badge(spear))] : null,
        id ? ['execution', link(execHref(id), id, { 'data-testid': 'invoke-execution-link', class: 'mono' })] : null,
      ]));
    };
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      if (running) return;
      const mode = form.querySelector('input[name=mode]:checked').value;
      const q = new URLSearchParams({ mode });
      if (fn.value.trim()) q.set('function', fn.value.trim());
      if (timeout.value && Number(timeout.value) > 0) q.set('timeout_ms', String(Math.floor(Number(timeout.value))));
      const headers = {};
      let body;
      if (file.files.length) {
        body = file.files[0];
        headers['content-type'] = body.type || 'application/octet-stream';
      } else {
        body = input.value;
        headers['content-type'] = 'text/plain; charset=utf-8';
      }
      if (prio.value) headers['x-spear-priority'] = prio.value;
      result.hidden = false;
      status.replaceChildren('Invoking…');
      errorP.textContent = '';
      output.replaceChildren();
      output.dataset.done = '';
      const ac = new AbortController();
      const onLeave = () => ac.abort();
      ctx.signal.addEventListener('abort', onLeave);
      running = ac;
      setBusy(true);
      try {
        const res = await request(`/v1/tasks/${encodeURIComponent(name)}/invoke?${q}`, { method: 'POST', body, headers, signal: ac.signal });
        const id = res.headers.get('x-spear-execution-id') || '';
        const spear = res.headers.get('x-spear-status') || '';
        showStatus(res.status, spear, id);
        const ctype = res.headers.get('content-type') || '';
        if (res.ok && mode === 'stream' && ctype.includes('text/event-stream') && res.body) {
          await streamInto(res, id);
        } else {
          const buf = new Uint8Array(await res.arrayBuffer());
          const text = utf8(buf);
          let json = null;
          if (ctype.includes('json')) { try { json = JSON.parse(text); } catch (_) { json = null; } }
          if (!res.ok) {
            const eid = (json && json.execution_id) || id;
            showStatus(res.status, (json && json.status) || spear, eid);
            errorP.textContent = json ? `${json.code || `HTTP ${res.status}`}: ${json.message || ''}${json.error_code ? ` (${json.error_code})` : ''}` : `HTTP ${res.status}: ${text}`;
          } else if (mode === 'async') {
            const eid = (json && json.execution_id) || id;
            showStatus(res.status, (json && json.result && json.result.status) || spear, eid);
            output.textContent = json && json.message ? json.message : text;
          } else {
            output.textContent = text;
          }
        }
      } catch (ex) {
        errorP.textContent = isAbort(ex) ? 'Stopped.' : `Request failed: ${ex.message}`;
      } finally {
        output.dataset.done = 'true';
        ctx.signal.removeEventListener('abort', onLeave);
        running = null;
        setBusy(false);
        if (!ctx.signal.aborted) onDone();
      }
    });
    async function streamInto(res, id) {
      const dec = new TextDecoder();
      await readSSE(res.body, (ev, data) => {
        let d = {};
        try { d = JSON.parse(data); } catch (_) { d = { data }; }
        if (ev === 'output' || ev === 'chunk') {
          if (d.data_base64 != null) {
            const bytes = decodeBase64(d.data_base64);
            if (bytes) output.append(dec.decode(bytes, { stream: true }));
          } else if (d.data != null) {
            output.append(String(d.data));
          }
        } else if (ev === 'status') {
          showStatus(res.status, d.status, d.execution_id || id);
        } else if (ev === 'final') {
          showStatus(res.status, d.status, d.execution_id || id);
          if (d.error_message || d.error_code) errorP.textContent = `${d.error_code || 'error'}: ${d.error_message || ''}`;
        } else if (ev === 'error') {
          errorP.textContent = `${d.code || 'error'}: ${d.message || data}`;
        }
      });
    }
    return form;
  }

  // ---------- executions ----------
  function execListTable(testid, withTask = true) {
    return makeTable([
      { label: 'Execution', cell: (r) => link(execHref(r.execution_id), r.execution_id, { class: 'mono' }) },
      withTask ? {
        label: 'Task',
        cell: (r) => {
          const n = taskNames.get(r.task_id);
          return n ? link(taskHref(n), n) : or(r.task_id);
        },
      } : null,
      { label: 'Function', cell: (r) => or(r.function_name) },
      { label: 'Mode', cell: (r) => shortMode(r.execution_mode) },
      { label: 'Status', cell: (r) => badge(r.status) },
      { label: 'Submitted', cell: (r) => fmtTime(r.submitted_at || r.started_at) },
      { label: 'Duration ms', num: true, cell: (r) => fmtNum(r.execution_time_ms) },
      { label: 'Error', wrap: true, cell: (r) => (r.error_message ? h('span', { title: r.error_message }, r.error_message.slice(0, 200)) : '') },
    ].filter(Boolean), { testid, empty: 'No executions.', rowAttrs: (r) => ({ 'data-testid': 'execution-row', 'data-id': r.execution_id, 'data-status': shortStatus(r.status) }) });
  }
  function executionsPage(ctx) {
    document.title = 'Executions · spearlet';
    const params = () => new URLSearchParams(location.search);
    const taskSel = h('select', { id: 'filter-task', name: 'task', testid: 'filter-task' }, h('option', { value: '' }, 'all tasks'));
    const statusSel = h('select', { id: 'filter-status', name: 'status', testid: 'filter-status' },
      h('option', { value: '' }, 'any status'), STATUSES.map((s) => h('option', { value: s }, s)));
    const rangeSel = h('select', { id: 'filter-range', name: 'range', testid: 'filter-range' }, RANGES.map(([v, l]) => h('option', { value: v }, l)));
    const err = h('div');
    const table = execListTable('executions-table');
    const pageInfo = h('span', { class: 'muted', testid: 'executions-page-info', role: 'status', 'aria-live': 'polite' });
    const newest = h('button', { type: 'button', class: 'btn', testid: 'newest-button' }, '← Newest');
    const older = h('button', { type: 'button', class: 'btn', testid: 'older-button' }, 'Older →');
    const filters = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter executions', testid: 'executions-filters' },
      h('div', null, h('label', { for: 'filter-task' }, 'Task'), taskSel),
      h('div', null, h('label', { for: 'filter-status' }, 'Status'), statusSel),
      h('div', null, h('label', { for: 'filter-range' }, 'Submitted'), rangeSel));
    ctx.main.append(
      h('div', { class: 'page-head' }, h('h1', null, 'Executions'), h('span', { class: 'muted' }, 'newest first, updated live')),
      h('section', { class: 'panel' }, filters, err, table.el, h('div', { class: 'row' }, newest, older, pageInfo)),
    );
    const st = { version: null, next: '', busy: false, again: false };
    const syncControls = () => {
      const p = params();
      statusSel.value = STATUSES.includes(p.get('status')) ? p.get('status') : '';
      rangeSel.value = RANGES.some((r) => r[0] === p.get('range')) ? p.get('range') : '';
      const t = p.get('task') || '';
      if (t && ![...taskSel.options].some((o) => o.value === t)) taskSel.append(h('option', { value: t }, t));
      taskSel.value = t;
    };
    function setQuery(changes) {
      const p = params();
      for (const [k, v] of Object.entries(changes)) { if (v) p.set(k, v); else p.delete(k); }
      const qs = p.toString();
      history.pushState(null, '', `/ui/executions${qs ? `?${qs}` : ''}`);
      load();
    }
    for (const [sel, key] of [[taskSel, 'task'], [statusSel, 'status'], [rangeSel, 'range']]) {
      sel.addEventListener('change', () => setQuery({ [key]: sel.value, after: '' }));
    }
    filters.addEventListener('submit', (e) => e.preventDefault());
    newest.addEventListener('click', () => setQuery({ after: '' }));
    older.addEventListener('click', () => { if (st.next) setQuery({ after: st.next }); });
    async function fetchPage() {
      const p = params();
      const q = new URLSearchParams({ limit: String(PAGE_SIZE), newest_first: 'true' });
      if (p.get('task')) q.set('task', p.get('task'));
      if (STATUSES.includes(p.get('status'))) q.set('status', p.get('status'));
      const range = RANGES.find((r) => r[0] === p.get('range') && r[2]);
      if (range) q.set('submitted_after', new Date(Date.now() - range[2] * 1000).toISOString());
      if (p.get('after')) q.set('start_after', p.get('after'));
      const [data] = await Promise.all([getJSON(`/v1/executions?${q}`, ctx.signal), loadTasks(10000).catch(() => [])]);
      const list = data.executions || [];
      err.replaceChildren();
      table.update(list);
      table.table.dataset.loaded = 'true';
      st.next = data.has_more ? data.next_start_after || (list.length ? list[list.length - 1].execution_id : '') : '';
      older.disabled = !st.next;
      newest.disabled = !p.get('after');
      pageInfo.textContent = `${list.length} shown${p.get('after') ? ' (older page)' : ''}${data.has_more ? ', more available' : ''}`;
    }
    function load() {
      syncControls();
      if (st.busy) { st.again = true; return; }
      st.busy = true;
      guard(fetchPage(), err).finally(() => {
        st.busy = false;
        if (st.again && !ctx.signal.aborted) { st.again = false; load(); }
      });
    }
    guard(loadTasks(10000).then((tasks) => {
      const current = params().get('task') || '';
      const names = tasks.map((t) => t.task_name).sort();
      taskSel.replaceChildren();
      add(taskSel, [h('option', { value: '' }, 'all tasks'), names.map((n) => h('option', { value: n }, n))]);
      if (current && !names.includes(current)) taskSel.append(h('option', { value: current }, current));
      taskSel.value = current;
    }), err);
    load();
    ctx.onTick = (tick) => {
      if (versionChanged(st, tick) && !params().get('after')) load();
    };
  }

  function executionPage(ctx, id) {
    document.title = `${id} · spearlet`;
    const statusEl = h('span', { class: 'badge', testid: 'execution-status', role: 'status', 'aria-live': 'polite' }, 'loading');
    const cancel = h('button', { type: 'button', class: 'btn danger', testid: 'cancel-button', 'data-needs': 'invoke', hidden: true }, 'Cancel');
    const note = permNote('');
    const cancelMsg = h('p', { class: 'muted', testid: 'cancel-message', role: 'status', 'aria-live': 'polite' });
    const err = h('div');
    const summary = h('div', { testid: 'execution-summary' }, h('p', { class: 'muted' }, 'Loading…'));
    const timeline = h('div', { testid: 'execution-timeline' });
    const output = h('pre', { class: 'out', testid: 'execution-output', tabindex: 0, 'aria-label': 'Output' });
    const outInfo = h('p', { class: 'muted small' });
    const logs = h('pre', { class: 'out', testid: 'execution-logs', tabindex: 0, 'aria-label': 'Logs' });
    const metrics = h('div', { testid: 'execution-metrics' });
    const metadata = h('div', { testid: 'execution-metadata' });
    ctx.main.append(
      h('div', { class: 'page-head' }, h('span', { class: 'crumbs' }, link('/ui/executions', 'Executions'), ' / execution'),
        h('h1', { class: 'mono' }, id), statusEl),
      err,
      h('div', { class: 'row' }, cancel), note, cancelMsg,
      h('div', { class: 'cols2' }, section('Execution', summary), section('Timeline', timeline)),
      section('Output', outInfo, output),
      section('Logs', logs),
      h('div', { class: 'cols2' }, section('Metrics', metrics), section('Metadata', metadata)),
    );
    const st = { busy: false, terminal: false };
    cancel.addEventListener('click', async () => {
      cancel.dataset.busy = '1';
      applyPermissions();
      cancelMsg.textContent = 'Cancelling…';
      try {
        const res = await request(`/v1/executions/${encodeURIComponent(id)}/cancel`, {
          method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ reason: 'cancelled from the dashboard' }), signal: ctx.signal,
        });
        const { body, text } = await readBody(res);
        if (!res.ok) cancelMsg.textContent = `${(body && body.code) || `HTTP ${res.status}`}: ${(body && body.message) || text}`;
        else cancelMsg.textContent = (body && body.message) || 'Cancel requested.';
      } catch (e) {
        if (!isAbort(e)) cancelMsg.textContent = `Request failed: ${e.message}`;
      } finally {
        cancel.dataset.busy = '';
        applyPermissions();
        if (!ctx.signal.aborted) load();
      }
    });
    async function fetchOnce() {
      const data = await getJSON(`/v1/executions/${encodeURIComponent(id)}?include_logs=true`, ctx.signal);
      if (data.found === false) {
        statusEl.textContent = 'NOT FOUND';
        summary.replaceChildren(h('p', { class: 'error' }, data.message || 'No such execution.'));
        st.terminal = true;
        return;
      }
      const r = data.result || {};
      const infoRec = data.execution || {};
      await loadTasks(30000).catch(() => []);
      const m = { ...(infoRec.metadata || {}), ...(r.metrics || {}) };
      const status = shortStatus(r.status || infoRec.status);
      statusEl.textContent = status;
      statusEl.className = `badge ${statusClass(status)}`;
      statusEl.dataset.status = status;
      st.terminal = TERMINAL.has(status);
      cancel.hidden = st.terminal;
      note.dataset.task = '';
      const taskName = infoRec.task_name || taskNames.get(infoRec.task_id || r.task_id) || m.task_name || '';
      if (taskName) { cancel.dataset.task = taskName; note.dataset.task = taskName; }
      applyPermissions();
      summary.replaceChildren(kv([
        ['task', taskName ? link(taskHref(taskName), taskName, { 'data-testid': 'execution-task-link' }) : or(infoRec.task_id || r.task_id, 'unknown')],
        ['function', or(infoRec.function_name || m.function_name)],
        ['mode', shortMode(infoRec.execution_mode || m.execution_mode)],
        ['instance', h('span', { class: 'mono' }, or(m.instance_id || infoRec.instance_id))],
        ['node', or(m.node_id || m.node || infoRec.node_id)],
        ['attempt', or(m.attempt)],
        ['cold start', or(m.cold_start)],
        ['memory', num(r.memory_used_bytes || infoRec.memory_used_bytes) ? fmtBytes(r.memory_used_bytes || infoRec.memory_used_bytes) : '—'],
        ['error code', or(r.error_code || m.error_code)],
        ['error', h('span', { testid: 'execution-error' }, or(r.error_message || infoRec.error_message))],
      ]));
      timeline.replaceChildren(kv([
        ['submitted', fmtTime(infoRec.submitted_at || r.submitted_at || m.submitted_at, true)],
        ['queue wait', m.queue_wait_ms != null ? `${fmtMs(m.queue_wait_ms)} ms` : '—'],
        ['instance start', m.instance_start_ms != null ? `${fmtMs(m.instance_start_ms)} ms` : '—'],
        ['started', fmtTime(r.started_at || infoRec.started_at, true)],
        ['completed', fmtTime(r.completed_at || infoRec.completed_at, true)],
        ['duration', `${fmtNum(r.execution_time_ms || infoRec.execution_time_ms)} ms`],
        ['attempt', or(m.attempt)],
      ]), timelineTable(data.timeline || []));
      const out = r.output || {};
      if (out.data != null) {
        const bytes = decodeBase64(out.data);
        output.textContent = bytes ? utf8(bytes) : String(out.data);
        outInfo.textContent = `${or(out.content_type, 'unknown type')}, ${bytes ? bytes.length : String(out.data).length} bytes`;
      } else {
        output.textContent = '';
        outInfo.textContent = st.terminal ? 'No output.' : 'The output appears when the execution ends.';
      }
      logs.textContent = (data.logs || []).join('\n');
      metrics.replaceChildren(kvTable(r.metrics || {}, 'execution-metrics-table', 'No metrics.'));
      metadata.replaceChildren(kvTable(infoRec.metadata || data.metadata || {}, 'execution-metadata-table', 'No metadata recorded.'));
      err.replaceChildren();
    }
    function load() {
      if (st.busy) return;
      st.busy = true;
      guard(fetchOnce(), err).finally(() => { st.busy = false; });
    }
    load();
    ctx.onTick = () => { if (!st.terminal) load(); };
  }

  // ---------- start ----------
  function init() {
    initTokenDialog();
    document.addEventListener('click', onLinkClick);
    window.addEventListener('popstate', route);
    window.addEventListener('unhandledrejection', (e) => { if (isAbort(e.reason)) e.preventDefault(); });
    route();
    loadWhoami();
    liveLoop();
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
