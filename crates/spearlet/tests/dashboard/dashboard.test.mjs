// Headless-Chromium test of the spearlet dashboard (/ui).
//
//   SPEARLET_URL=http://127.0.0.1:PORT            a node without tokens, bundled examples, many executions
//   SPEARLET_AUTH_URL=http://127.0.0.1:PORT2      a node requiring tokens
//   SPEARLET_ADMIN_TOKEN=... SPEARLET_READ_TOKEN=...  an admin and a read-only token of that node
//   SPEARLET_CLUSTER_URL=http://127.0.0.1:PORT3   optional: a node in a cluster (its view is checked)
//   CHROMIUM=/usr/bin/chromium SCREENSHOT_DIR=/tmp/shots node dashboard.test.mjs
//
// Prints `ok - <step>` per check and exits 1 at the first failure.
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const GLOBAL_TIMEOUT_MS = 4 * 60 * 1000;
const BUNDLED = ['hello', 'ticker', 'sleep', 'echo'];
const TOKEN_KEY = 'spearlet.dashboard.token';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`not ok - environment: ${name} is not set`);
    process.exit(1);
  }
  return value;
}
const BASE = required('SPEARLET_URL').replace(/\/+$/, '');
const AUTH = required('SPEARLET_AUTH_URL').replace(/\/+$/, '');
const ADMIN_TOKEN = required('SPEARLET_ADMIN_TOKEN');
const READ_TOKEN = required('SPEARLET_READ_TOKEN');
const CHROMIUM = required('CHROMIUM');
const CLUSTER = (process.env.SPEARLET_CLUSTER_URL || '').replace(/\/+$/, '');
const SHOTS = required('SCREENSHOT_DIR');
fs.mkdirSync(SHOTS, { recursive: true });

let passed = 0;
let current = 'start';
let browser = null;
const contexts = [];

class Failure extends Error {}
function assert(condition, message) {
  if (!condition) throw new Failure(message);
}
function ok(step) {
  passed++;
  console.log(`ok - ${step}`);
}
async function closeAll() {
  for (const c of contexts.splice(0)) await c.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  browser = null;
}
const timer = setTimeout(() => {
  console.error(`not ok - ${current}: the test did not finish within ${GLOBAL_TIMEOUT_MS / 1000} s`);
  closeAll().finally(() => process.exit(1));
}, GLOBAL_TIMEOUT_MS);

// Node-side API calls (not through the page).
async function api(base, p, { token, method = 'GET', body, headers = {} } = {}) {
  const h = { ...headers };
  if (token) h.authorization = `Bearer ${token}`;
  const res = await fetch(base + p, { method, body, headers: h });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { json = null; }
  return { status: res.status, headers: res.headers, text, json };
}
async function taskNames(base, token) {
  const names = [];
  let after = '';
  for (;;) {
    const q = new URLSearchParams({ limit: '1000' });
    if (after) q.set('start_after', after);
    const r = await api(base, `/v1/tasks?${q}`, { token });
    assert(r.status === 200, `GET ${base}/v1/tasks answered ${r.status}: ${r.text.slice(0, 200)}`);
    names.push(...(r.json.tasks || []).map((t) => t.task_name));
    if (!r.json.has_more || !r.json.next_start_after) break;
    after = r.json.next_start_after;
  }
  return names;
}

// One scenario = one fresh context; console errors and request URLs are collected.
async function scenario(name, { viewport = { width: 1280, height: 800 } } = {}) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(15000);
  contexts.push(context);
  const page = await context.newPage();
  const errors = [];
  const requests = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`${msg.text()} (${(msg.location() || {}).url || ''})`);
  });
  page.on('pageerror', (err) => errors.push(`uncaught: ${err.message}`));
  page.on('request', (req) => requests.push(req.url()));
  return {
    context, page, errors, requests,
    async done({ allow401 = false } = {}) {
      const bad = errors.filter((e) => !(allow401 && /\b401\b/.test(e)));
      assert(bad.length === 0, `${name}: console errors:\n  ${bad.join('\n  ')}`);
      ok(`${name}: no console errors${allow401 && errors.length ? ` (ignored ${errors.length} expected 401s)` : ''}`);
      await context.close();
      contexts.splice(contexts.indexOf(context), 1);
    },
  };
}
const shot = (page, file) => page.screenshot({ path: path.join(SHOTS, file), fullPage: false });
const rowsSelector = (names) => names.map((n) => `[data-testid="task-row-${n}"]`);
async function waitTaskRows(page, names, timeout = 10000) {
  return page.waitForFunction((sels) => {
    if (!sels.every((s) => document.querySelector(s))) return false;
    return performance.now();
  }, rowsSelector(names), { timeout, polling: 'raf' }).then((h) => h.jsonValue());
}
const outputText = (page) => page.locator('[data-testid="invoke-output"]').textContent();

async function main() {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });

  // 1. Overview: every task rendered within a second, small assets.
  current = 'overview';
  const names = await taskNames(BASE);
  for (const n of BUNDLED) assert(names.includes(n), `bundled task ${n} is not registered on ${BASE}`);
  {
    const s = await scenario('overview');
    const sizes = new Map();
    const pending = [];
    s.page.on('response', (res) => {
      const u = new URL(res.url());
      if (u.pathname === '/ui' || u.pathname === '/ui/' || u.pathname.startsWith('/ui/assets/') || u.pathname === '/favicon.ico') {
        pending.push(res.body().then((b) => sizes.set(u.pathname, b.length)).catch(() => {}));
      }
    });
    const started = Date.now();
    await s.page.goto(`${BASE}/ui`, { waitUntil: 'commit' });
    const inPage = await waitTaskRows(s.page, names);
    const wall = Date.now() - started;
    assert(inPage < 1000, `overview task table with all ${names.length} tasks took ${Math.round(inPage)} ms after navigation start (limit 1000 ms)`);
    ok(`overview renders all ${names.length} tasks in ${Math.round(inPage)} ms (wall ${wall} ms)`);
    await s.page.waitForLoadState('load');
    await Promise.all(pending);
    for (const a of ['/ui', '/ui/assets/app.js', '/ui/assets/app.css', '/ui/assets/favicon.svg']) {
      assert(sizes.has(a), `the page did not load ${a} (loaded: ${[...sizes.keys()].join(', ')})`);
    }
    const total = [...sizes.values()].reduce((a, b) => a + b, 0);
    assert(total < 500 * 1024, `dashboard assets weigh ${total} bytes (limit 500 KB)`);
    ok(`dashboard assets weigh ${(total / 1024).toFixed(1)} KB (${[...sizes].map(([k, v]) => `${k} ${v}`).join(', ')})`);
    await s.page.waitForSelector('[data-testid="live-indicator"][data-state="live"]', { timeout: 10000 });
    ok('live indicator connects to /v1/events');
    await s.page.waitForFunction(() => !/checking/.test(document.querySelector('[data-testid="node-health"]').textContent));
    const health = await s.page.locator('[data-testid="node-health"]').textContent();
    assert(health === 'ready', `node health shows "${health}"`);
    await s.page.waitForTimeout(2500); // let a few live ticks reach the charts
    const paths = await s.page.locator('[data-testid="chart-calls"] svg path').count();
    assert(paths >= 1, 'the calls chart has no line');
    ok('overview shows health and charts');
    await shot(s.page, 'overview.png');

    // 2. Icons.
    current = 'icons';
    for (const p of ['/favicon.ico', '/ui/assets/favicon.svg']) {
      const r = await api(BASE, p);
      assert(r.status === 200, `GET ${p} answered ${r.status}`);
    }
    ok('/favicon.ico and /ui/assets/favicon.svg answer 200');

    // 3. Task page through the link; sync invoke.
    current = 'task page';
    await s.page.click('[data-testid="task-row-hello"] a');
    await s.page.waitForURL(`${BASE}/ui/tasks/hello`);
    await s.page.waitForSelector('[data-testid="task-info"] dl');
    await s.page.waitForSelector('[data-testid="invoke-form"]');
    await shot(s.page, 'task.png');
    ok('the overview links to the hello task page');
    current = 'sync invoke';
    await s.page.fill('#invoke-input', 'world');
    await s.page.check('[data-testid="mode-sync"]');
    await s.page.click('[data-testid="invoke-submit"]');
    await s.page.waitForFunction(() => /Hello, world/.test(document.querySelector('[data-testid="invoke-output"]').textContent));
    const syncId = await s.page.locator('[data-testid="invoke-execution-link"]').textContent();
    assert(/^exec-/.test(syncId), `sync invoke shows execution id "${syncId}"`);
    const spear = await s.page.locator('[data-testid="invoke-spear-status"]').textContent();
    assert(/COMPLETED/i.test(spear), `sync invoke shows x-spear-status "${spear}"`);
    ok(`sync invoke of hello shows "${(await outputText(s.page)).trim()}" (${syncId})`);

    // 4. Streaming: lines arrive one by one.
    current = 'stream invoke';
    const TICKS = 20;
    await s.page.goto(`${BASE}/ui/tasks/ticker`);
    await s.page.waitForSelector('[data-testid="invoke-form"]');
    await s.page.fill('#invoke-input', String(TICKS));
    await s.page.check('[data-testid="mode-stream"]');
    await s.page.evaluate(() => {
      window.__lineCounts = [];
      const out = document.querySelector('[data-testid="invoke-output"]');
      window.__sampler = setInterval(() => {
        window.__lineCounts.push(out.textContent.split('\n').filter((l) => l.trim()).length);
      }, 20);
    });
    await s.page.click('[data-testid="invoke-submit"]');
    await s.page.waitForFunction(() => document.querySelector('[data-testid="invoke-output"]').dataset.done === 'true', null, { timeout: 20000 });
    const counts = await s.page.evaluate(() => { clearInterval(window.__sampler); return window.__lineCounts; });
    const text = await outputText(s.page);
    const lines = text.split('\n').filter((l) => l.trim());
    assert(lines.length === TICKS && lines[0] === 'tick 1' && lines[TICKS - 1] === `tick ${TICKS}`, `stream output is ${JSON.stringify(text)}`);
    const intermediate = counts.filter((c) => c >= 1 && c < TICKS);
    assert(intermediate.length > 0, `never saw a partial output; sampled counts: ${counts.join(',')}`);
    const finalStatus = await s.page.locator('[data-testid="invoke-spear-status"]').textContent();
    assert(/COMPLETED/i.test(finalStatus), `stream final status "${finalStatus}"`);
    ok(`stream invoke of ticker: lines arrived one by one (${new Set(intermediate).size} partial states seen, ${TICKS} lines at the end)`);

    // 5. Async invoke of sleep, follow the link, cancel.
    current = 'async invoke and cancel';
    await s.page.goto(`${BASE}/ui/tasks/sleep`);
    await s.page.waitForSelector('[data-testid="invoke-form"]');
    await s.page.fill('#invoke-input', '30000');
    await s.page.check('[data-testid="mode-async"]');
    await s.page.click('[data-testid="invoke-submit"]');
    const execLink = s.page.locator('[data-testid="invoke-execution-link"]');
    await execLink.waitFor();
    const sleepId = (await execLink.textContent()).trim();
    await execLink.click();
    await s.page.waitForURL(`${BASE}/ui/executions/${sleepId}`);
    await s.page.waitForFunction(() => /^(RUNNING|PENDING)$/.test(document.querySelector('[data-testid="execution-status"]').textContent));
    ok(`async invoke of sleep leads to ${sleepId}, shown ${await s.page.locator('[data-testid="execution-status"]').textContent()}`);
    await s.page.click('[data-testid="cancel-button"]');
    await s.page.waitForFunction(() => document.querySelector('[data-testid="execution-status"]').textContent === 'CANCELLED', null, { timeout: 10000 });
    assert(await s.page.locator('[data-testid="cancel-button"]').isHidden(), 'the cancel button is still shown after CANCELLED');
    ok('cancel from the execution page ends it CANCELLED within 10 s');
    // The timeline lists the record's status changes, ending with the cancellation.
    await s.page.waitForFunction(() => {
      const rows = [...document.querySelectorAll('[data-testid="execution-timeline-table"] tbody tr')];
      const statuses = rows.map((row) => row.cells[1] && row.cells[1].textContent);
      return statuses.includes('RUNNING') && statuses[statuses.length - 1] === 'CANCELLED';
    }, null, { timeout: 5000 });
    await shot(s.page, 'execution.png');
    ok('the execution timeline shows RUNNING then CANCELLED');

    // 6. Executions list updates live; status filter.
    current = 'executions list';
    await s.page.goto(`${BASE}/ui/executions`);
    await s.page.waitForSelector('[data-testid="executions-table"][data-loaded="true"] [data-testid="execution-row"]');
    await shot(s.page, 'executions.png');
    const firstBefore = await s.page.locator('[data-testid="execution-row"]').first().getAttribute('data-id');
    const inv = await api(BASE, '/v1/tasks/hello/invoke?mode=sync', { method: 'POST', body: '{"name":"live"}' });
    assert(inv.status === 200, `invoking hello from Node answered ${inv.status}`);
    const newId = inv.headers.get('x-spear-execution-id');
    assert(newId && newId !== firstBefore, `new execution id ${newId}, first row was ${firstBefore}`);
    const seenAt = Date.now();
    await s.page.waitForFunction((id) => {
      const first = document.querySelector('[data-testid="execution-row"]');
      return first && first.dataset.id === id;
    }, newId, { timeout: 5000 });
    ok(`executions list shows ${newId} on top within ${Date.now() - seenAt} ms without a reload`);
    await s.page.selectOption('#filter-status', 'cancelled');
    await s.page.waitForURL(/status=cancelled/);
    await s.page.waitForFunction((id) => {
      const rows = [...document.querySelectorAll('[data-testid="execution-row"]')];
      return rows.length > 0 && rows.every((r) => r.dataset.status === 'CANCELLED') && rows.some((r) => r.dataset.id === id);
    }, sleepId);
    ok('status filter "cancelled" is in the URL and every row is CANCELLED');
    await s.page.selectOption('#filter-task', 'hello');
    await s.page.selectOption('#filter-status', 'completed');
    await s.page.waitForURL(/task=hello/);
    await s.page.waitForFunction(() => {
      const rows = [...document.querySelectorAll('[data-testid="execution-row"]')];
      return rows.length > 0 && rows.every((r) => r.dataset.status === 'COMPLETED' && /hello/.test(r.textContent));
    });
    await s.page.reload();
    await s.page.waitForFunction(() => {
      const rows = [...document.querySelectorAll('[data-testid="execution-row"]')];
      return document.querySelector('#filter-status').value === 'completed' && document.querySelector('#filter-task').value === 'hello'
        && rows.length > 0 && rows.every((r) => r.dataset.status === 'COMPLETED');
    });
    ok('task and status filters survive a reload of the shared URL');

    // 7. Deep links.
    current = 'deep links';
    await s.page.goto(`${BASE}/ui/executions/${sleepId}`);
    await s.page.waitForFunction(() => document.querySelector('[data-testid="execution-status"]').textContent === 'CANCELLED');
    await s.page.waitForSelector('[data-testid="execution-metrics-table"]');
    ok(`/ui/executions/${sleepId} renders when loaded directly`);
    await s.page.goto(`${BASE}/ui/tasks/hello`);
    await s.page.waitForSelector('[data-testid="task-info"] dl');
    assert((await s.page.locator('[data-testid="task-name"]').textContent()) === 'hello', 'task page heading');
    ok('/ui/tasks/hello renders when loaded directly');
    await s.done();
  }

  // 8. A node with tokens.
  current = 'auth';
  const authNames = await taskNames(AUTH, ADMIN_TOKEN);
  {
    const s = await scenario('auth (read token)');
    await s.page.goto(`${AUTH}/ui`);
    await s.page.waitForSelector('#token-dialog[open] [data-testid="token-form"]');
    ok('a node with tokens asks for one');
    await s.page.fill('[data-testid="token-input"]', 'not-the-right-token');
    await s.page.click('[data-testid="token-submit"]');
    await s.page.waitForFunction(() => /refused/i.test(document.querySelector('[data-testid="token-error"]').textContent));
    assert(await s.page.locator('#token-dialog[open]').count() === 1, 'the token dialog closed after a wrong token');
    ok('a wrong token is refused');
    await s.page.fill('[data-testid="token-input"]', READ_TOKEN);
    await s.page.click('[data-testid="token-submit"]');
    await waitTaskRows(s.page, authNames);
    ok('the read token shows the task table');
    await s.page.click('[data-testid="task-row-hello"] a');
    await s.page.waitForSelector('[data-testid="invoke-form"]');
    await s.page.waitForFunction(() => {
      const note = document.querySelector('[data-testid="readonly-note"]');
      return document.querySelector('[data-testid="invoke-submit"]').disabled && note && !note.hidden
        && /may read but not invoke or cancel/.test(note.textContent);
    });
    ok('with a read token the invoke button is disabled and says why');
    const storage = await s.page.evaluate((k) => ({ session: sessionStorage.getItem(k), local: JSON.stringify(localStorage) }), TOKEN_KEY);
    assert(storage.session === READ_TOKEN, 'the token is not in sessionStorage');
    assert(!storage.local.includes(READ_TOKEN) && storage.local === '{}', `localStorage holds ${storage.local}`);
    await s.page.reload();
    await s.page.waitForSelector('[data-testid="invoke-form"]');
    assert(await s.page.locator('#token-dialog[open]').count() === 0, 'the token was not kept across a reload');
    ok('the token is kept in sessionStorage only');
    const leaked = s.requests.filter((u) => u.includes(READ_TOKEN) || u.includes('not-the-right-token'));
    assert(leaked.length === 0, `a token appears in request URLs: ${leaked.join(', ')}`);
    ok(`no token in any of ${s.requests.length} request URLs`);
    await s.done({ allow401: true });
  }
  {
    const s = await scenario('auth (admin token)');
    await s.page.goto(`${AUTH}/ui/tasks/hello`);
    await s.page.waitForSelector('#token-dialog[open] [data-testid="token-form"]');
    await s.page.fill('[data-testid="token-input"]', ADMIN_TOKEN);
    await s.page.click('[data-testid="token-submit"]');
    await s.page.waitForSelector('[data-testid="task-info"] dl');
    await s.page.waitForFunction(() => !document.querySelector('[data-testid="invoke-submit"]').disabled);
    await s.page.fill('#invoke-input', 'world');
    await s.page.check('[data-testid="mode-sync"]');
    await s.page.click('[data-testid="invoke-submit"]');
    await s.page.waitForFunction(() => /Hello, world/.test(document.querySelector('[data-testid="invoke-output"]').textContent));
    ok('with the admin token hello can be invoked');
    const leaked = s.requests.filter((u) => u.includes(ADMIN_TOKEN));
    assert(leaked.length === 0, `the admin token appears in request URLs: ${leaked.join(', ')}`);
    ok('no admin token in request URLs');
    await s.page.click('[data-testid="signout-button"]');
    assert(await s.page.evaluate((k) => sessionStorage.getItem(k), TOKEN_KEY) === null, 'sign out left the token');
    await s.page.waitForSelector('#token-dialog[open]');
    ok('sign out clears the token');
    await s.done({ allow401: true });
  }

  // 8b. Dark theme and the keyboard.
  current = 'dark theme and keyboard';
  {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'dark' });
    contexts.push(context);
    const page = await context.newPage();
    const errors = [];
    page.on('console', (msg) => { if (msg.type() === 'error') errors.push(msg.text()); });
    page.on('pageerror', (err) => errors.push(`uncaught: ${err.message}`));
    await page.goto(`${BASE}/ui`);
    await waitTaskRows(page, names);
    const luminance = await page.evaluate(() => {
      const channels = getComputedStyle(document.body).backgroundColor.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number);
      return (0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]) / 255;
    });
    assert(luminance < 0.3, `the dark theme's background is light (luminance ${luminance.toFixed(2)})`);
    await shot(page, 'overview-dark.png');
    ok(`the dark theme applies (background luminance ${luminance.toFixed(2)})`);
    // From the top of the page: Tab reaches the skip link, then the navigation, by keyboard alone.
    await page.keyboard.press('Tab');
    const first = await page.evaluate(() => document.activeElement && document.activeElement.textContent.trim());
    assert(first === 'Skip to content', `the first Tab stop is ${JSON.stringify(first)}`);
    let reachedExecutions = false;
    for (let step = 0; step < 6 && !reachedExecutions; step++) {
      await page.keyboard.press('Tab');
      reachedExecutions = await page.evaluate(() => document.activeElement && document.activeElement.dataset.testid === 'nav-executions');
    }
    assert(reachedExecutions, 'Tab does not reach the Executions link');
    await page.keyboard.press('Enter');
    await page.waitForURL(`${BASE}/ui/executions`);
    await page.waitForSelector('[data-testid="execution-row"]');
    ok('the keyboard alone reaches the navigation and opens the executions page');
    assert(errors.length === 0, `dark theme: console errors:\n  ${errors.join('\n  ')}`);
    await context.close();
    contexts.splice(contexts.indexOf(context), 1);
  }

  // 9. Phone width.
  current = 'phone';
  {
    const s = await scenario('phone', { viewport: { width: 390, height: 844 } });
    await s.page.goto(`${BASE}/ui`);
    await waitTaskRows(s.page, names);
    await s.page.waitForTimeout(500);
    let width = await s.page.evaluate(() => document.documentElement.scrollWidth);
    assert(width <= 391, `the overview is ${width} px wide at a 390 px viewport`);
    await shot(s.page, 'overview-phone.png');
    ok(`at 390 px the overview does not scroll sideways (${width} px)`);
    for (const p of ['/ui/tasks/hello', '/ui/executions']) {
      await s.page.goto(`${BASE}${p}`);
      await s.page.waitForSelector(p.includes('tasks') ? '[data-testid="task-info"] dl' : '[data-testid="execution-row"]');
      width = await s.page.evaluate(() => document.documentElement.scrollWidth);
      assert(width <= 391, `${p} is ${width} px wide at a 390 px viewport`);
    }
    ok('at 390 px the task and executions pages do not scroll sideways');
    await s.done();
  }

  // 10. The cluster view, on a node in a cluster.
  current = 'cluster';
  if (CLUSTER) {
    const s = await scenario('cluster');
    await s.page.goto(`${CLUSTER}/ui`);
    await s.page.waitForSelector('[data-testid="cluster"]:not([hidden])');
    await s.page.waitForFunction(() => {
      const nodes = document.querySelectorAll('[data-testid="cluster-nodes"] tbody tr');
      const ready = [...document.querySelectorAll('[data-testid="cluster-tasks"] tbody tr')];
      return nodes.length >= 1 && /this node/.test(nodes[0].textContent)
        && ready.some((row) => [...row.cells].some((cell) => cell.textContent.trim() === 'hello'));
    }, null, { timeout: 15000 });
    await s.page.locator('[data-testid="cluster"]').scrollIntoViewIfNeeded();
    await shot(s.page, 'cluster.png');
    ok('a cluster node shows its nodes and their readiness per task');
    await s.done();
  } else {
    console.log('skip - cluster view: SPEARLET_CLUSTER_URL not set');
  }
}

main().then(async () => {
  clearTimeout(timer);
  await closeAll();
  console.log(`dashboard: ${passed} checks passed`);
  process.exit(0);
}, async (err) => {
  clearTimeout(timer);
  console.error(`not ok - ${current}: ${err instanceof Failure ? err.message : (err && err.stack) || err}`);
  await closeAll();
  console.error(`dashboard: ${passed} checks passed before the failure`);
  process.exit(1);
});
