// The live event console in a real browser: `instantchat dev` serves it at `/` with the dev token
// prefilled; headless Chromium (Debian's, driven by playwright-core) authenticates, subscribes,
// shows an event sent with `instantchat send`, and after a dropped connection resumes with `since`.
// Needs /usr/bin/chromium (`apt-get install -y chromium`); leaves test-artifacts/console.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { freePort, within, repoRoot } from '../lib/harness.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const bin = join(process.env.INSTANTCHAT_BIN_DIR ?? join(repoRoot, 'target', 'debug'), 'instantchat');
const artifacts = join(repoRoot, 'test-artifacts');
const cleanEnv = { PATH: process.env.PATH, RUST_LOG: 'warn' };
const WAIT = 15000;

let dev;
let printed = '';
let base;
let profile;
let context;
let page;
const problems = []; // uncaught page errors and CSP violations

const value = (name) => printed.match(new RegExp(`^\\s*(?:export )?${name}=(\\S+)`, 'm'))[1];

before(async () => {
  assert.ok(existsSync(CHROMIUM),
    `${CHROMIUM} is missing: the console test needs Debian's Chromium; run \`apt-get install -y chromium\``);
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  dev = spawn(bin, ['dev', '--port', String(port)], { env: cleanEnv, stdio: ['ignore', 'pipe', 'inherit'] });
  await within(20000, 'the dev banner', new Promise((resolve, reject) => {
    dev.on('error', reject);
    dev.stdout.on('data', (chunk) => {
      printed += chunk;
      if (/^\s*export INSTANTCHAT_TOKEN=\S+/m.test(printed) && /Next, in another terminal/.test(printed)) resolve();
    });
  }));
  profile = mkdtempSync(join(tmpdir(), 'instantchat-chromium-'));
  context = await within(30000, 'Chromium to start', chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 860 },
    timeout: 30000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  }));
  context.setDefaultTimeout(WAIT);
  page = context.pages()[0] ?? await context.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) problems.push(`CSP: ${m.text()}`);
  });
});

after(async () => {
  await within(15000, 'Chromium to close', context?.close() ?? Promise.resolve()).catch((e) => console.error(e.message));
  if (profile) rmSync(profile, { recursive: true, force: true });
  dev?.kill('SIGTERM');
});

/** `instantchat send` a comment-like event to the dev server. */
function send(type, account, text) {
  const r = spawnSync(bin, ['send', '--url', base, '--type', type, '--account', account, '--text', text],
    { env: { ...cleanEnv, INSTAGRAM_APP_SECRET: value('INSTAGRAM_APP_SECRET') }, encoding: 'utf8', timeout: 20000 });
  assert.equal(r.status, 0, `instantchat send: ${r.stderr || r.error}`);
}

const row = (text) => page.locator('#events tr', { hasText: text });
const cells = async (text) => (await row(text).locator('td').allInnerTexts()).map((t) => t.trim());
const stateIs = (state) => page.waitForFunction((s) => document.getElementById('state').dataset.state === s, state, { timeout: WAIT });

test('the console authenticates with the dev token, subscribes and shows events as they arrive', async () => {
  // The link the banner prints, with the key that makes the page prefilled.
  const link = printed.match(/^\s*console:\s+(\S+)/m)[1];
  assert.match(link, /^http:\/\/127\.0\.0\.1:\d+\/#k=[0-9a-f]{32}$/);
  const res = await page.goto(link);
  assert.equal(res.status(), 200);
  assert.equal(await page.title(), 'InstantChat live event console');
  await page.waitForFunction(() => document.getElementById('token').value.length > 0, null, { timeout: WAIT });
  assert.equal(await page.inputValue('#token'), value('INSTANTCHAT_TOKEN'), 'the dev token is prefilled');
  assert.equal(await page.textContent('#state'), 'disconnected');

  // Only account 42, and one extra type typed in by hand.
  await page.getByLabel('Accounts').fill('42');
  await page.getByLabel('Other types').fill('story_insights');
  await page.getByRole('button', { name: 'Connect', exact: true }).click();
  await stateIs('authenticated');
  await page.locator('#log li', { hasText: 'Subscribed to' }).waitFor();
  assert.match(await page.locator('#log li', { hasText: 'Subscribed to' }).innerText(), /story_insights.*accounts 42/);
  assert.equal(await page.textContent('#user'), 'dev_user');

  send('comments', '43', 'for another account');
  send('comments', '42', 'Hello from the CLI');
  await row('Hello from the CLI').waitFor();
  const [time, type, account, sender, content, seq] = await cells('Hello from the CLI');
  assert.match(time, /^\d\d:\d\d:\d\d\.\d{3}$/);
  assert.equal(type, 'comments');
  assert.equal(account, '42');
  assert.equal(sender, '@instantchat_cli');
  assert.equal(content, 'Hello from the CLI');
  assert.match(seq, /^\d+$/);
  assert.equal(await page.textContent('#last-seq'), seq, 'the largest seq seen is shown');
  assert.equal(await row('for another account').count(), 0, 'accountIds narrows delivery');

  send('messages', '42', 'Is the blue one still available?');
  await row('Is the blue one still available?').waitFor();
  const first = await page.locator('#events tr').first().innerText();
  assert.match(first, /Is the blue one still available\?/, 'newest first');
  assert.deepEqual(problems, []);
});

test('after a dropped connection the console reconnects and resumes with since', async () => {
  const before = await page.textContent('#last-seq');
  assert.match(before, /^\d+$/);
  // Keep the reconnect out until an event was sent, so that it can only arrive by replay.
  await page.route('**/socket.io/**', (route) => route.abort());
  await page.getByRole('button', { name: 'Drop & resume' }).click();
  await page.waitForFunction(() => document.getElementById('state').dataset.state !== 'authenticated', null, { timeout: WAIT });
  send('mentions', '42', 'Sent while the console was away');
  await page.unroute('**/socket.io/**');

  await stateIs('authenticated');
  await page.waitForFunction(() => /replayed/.test(document.getElementById('resume').textContent), null, { timeout: WAIT });
  assert.equal(await page.textContent('#resume'), `replayed 1 event after seq ${before}`);
  assert.equal(await page.textContent('#reconnects'), '1');
  await row('Sent while the console was away').waitFor();
  assert.equal(await row('Sent while the console was away').count(), 1, 'no duplicate');
  const [, type, , , , seq] = await cells('Sent while the console was away');
  assert.equal(type, 'mentions');
  assert.ok(Number(seq) > Number(before));

  send('comments', '42', 'Live again after the resume');
  await row('Live again after the resume').waitFor();
  assert.equal(await page.locator('#events tr').count(), 4);
  assert.deepEqual(problems, []);

  mkdirSync(artifacts, { recursive: true });
  await page.emulateMedia({ reducedMotion: 'reduce' }); // no arrival highlight in the picture
  await page.screenshot({ path: join(artifacts, 'console.png'), fullPage: true });
});
