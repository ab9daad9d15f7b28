// `instantchat dev` as a user runs it: read the printed token and secrets, connect the official
// socket.io-client, send a webhook with `instantchat send`, receive it; bad CLI input fails cleanly.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import {
  freePort, connect, next, request, within, waitUntil, repoRoot, fixturesDir, stopProcess, waitHttp, APP_SECRET,
} from '../lib/harness.mjs';

const bin = join(process.env.INSTANTCHAT_BIN_DIR ?? join(repoRoot, 'target', 'debug'), 'instantchat');
let dev;
let printed = '';
let port;
const cleanEnv = { PATH: process.env.PATH, RUST_LOG: 'warn' };
/** A JWT secret as `openssl rand -hex 32` makes one. */
const STRONG_JWT_SECRET = '9b2e61f0c8d74a3e5f1b0c6d2e8a7f43b5d9c1e0a6f2b8d4c7e3a9f1b5d0c2e8';

before(async () => {
  port = await freePort();
  dev = spawn(bin, ['dev', '--port', String(port)], { env: cleanEnv, stdio: ['ignore', 'pipe', 'inherit'] });
  await within(20000, 'the dev banner', new Promise((resolve) => {
    dev.stdout.on('data', (chunk) => {
      printed += chunk;
      if (/^\s*export INSTANTCHAT_TOKEN=\S+/m.test(printed) && /Next, in another terminal/.test(printed)) resolve();
    });
  }));
});
after(() => dev?.kill('SIGTERM'));

const value = (name) => printed.match(new RegExp(`^\\s*(?:export )?${name}=(\\S+)`, 'm'))[1];

test('dev prints a token that works, and instantchat send reaches the client', async () => {
  const socket = connect({ url: `http://127.0.0.1:${port}` });
  await next(socket, 'connect');
  const auth = await request(socket, 'authenticate', { token: value('INSTANTCHAT_TOKEN'), userId: 'dev_user', timestamp: Date.now() });
  assert.equal(auth.message, 'Authentication successful', JSON.stringify(auth));
  await request(socket, 'subscribe', { eventTypes: ['comments'], userId: 'dev_user', timestamp: Date.now() });
  const sent = spawnSync(bin, ['send', '--url', `http://127.0.0.1:${port}`, '--type', 'comments', '--account', '42', '--text', 'from the CLI'],
    { env: { ...cleanEnv, INSTAGRAM_APP_SECRET: value('INSTAGRAM_APP_SECRET') }, encoding: 'utf8', timeout: 20000, killSignal: 'SIGKILL' });
  assert.equal(sent.status, 0, sent.stderr);
  const event = await next(socket, 'webhook_event');
  assert.equal(event.content, 'from the CLI');
  assert.equal(event.accountId, '42');
  socket.close();
});

test('instantchat tail prints the events a client sees', async () => {
  const tail = spawn(bin, ['tail', '--url', `http://127.0.0.1:${port}`, '--types', 'mentions', '--count', '1'],
    { env: { ...cleanEnv, INSTANTCHAT_TOKEN: value('INSTANTCHAT_TOKEN') }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  tail.stdout.on('data', (c) => { out += c; });
  tail.stderr.on('data', (c) => { err += c; });
  await waitUntil(10000, 'tail to subscribe', () => /subscribed/.test(err), 20);
  const sent = spawnSync(bin, ['send', '--url', `http://127.0.0.1:${port}`, '--type', 'mentions', '--account', '7', '--text', 'tailed'],
    { env: { ...cleanEnv, INSTAGRAM_APP_SECRET: value('INSTAGRAM_APP_SECRET') }, encoding: 'utf8', timeout: 20000, killSignal: 'SIGKILL' });
  assert.equal(sent.status, 0, sent.stderr);
  const code = await within(10000, 'tail to exit after one event', new Promise((r) => tail.on('exit', r)));
  assert.equal(code, 0, err);
  assert.match(out, /mentions account=7 from=instantchat_cli tailed/);
});

test('tail keeps its quiet socket past HEARTBEAT_TIMEOUT_SECS with heartbeats', async () => {
  const quietPort = await freePort();
  const url = `http://127.0.0.1:${quietPort}`;
  const quiet = spawn(bin, ['dev', '--port', String(quietPort)],
    { env: { ...cleanEnv, HEARTBEAT_TIMEOUT_SECS: '1' }, stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    let banner = '';
    await within(20000, 'the second dev banner', new Promise((resolve) => {
      quiet.stdout.on('data', (chunk) => {
        banner += chunk;
        if (/Next, in another terminal/.test(banner)) resolve();
      });
    }));
    const of = (name) => banner.match(new RegExp(`^\\s*(?:export )?${name}=(\\S+)`, 'm'))[1];
    const tail = spawn(bin, ['tail', '--url', url, '--types', 'mentions', '--count', '1', '--heartbeat-secs', '0.3'],
      { env: { ...cleanEnv, INSTANTCHAT_TOKEN: of('INSTANTCHAT_TOKEN') } });
    let out = '';
    let err = '';
    tail.stdout.on('data', (c) => { out += c; });
    tail.stderr.on('data', (c) => { err += c; });
    const exited = new Promise((r) => tail.on('exit', r));
    await waitUntil(10000, 'tail to subscribe', () => /subscribed/.test(err), 20);
    // The sentinel: a socket of the same user that subscribes and never beats. Once the 1 s
    // timeout drops it, a whole timeout and check have passed since tail subscribed, with no
    // event: only its heartbeats kept tail's socket.
    const sentinel = connect({ url }, { auth: { token: of('INSTANTCHAT_TOKEN') } });
    await next(sentinel, 'connect');
    await request(sentinel, 'subscribe', { eventTypes: ['mentions'] });
    await next(sentinel, 'disconnect', () => true, 10000);
    assert.equal(tail.exitCode, null, `tail is still running: ${err}`);
    const sent = spawnSync(bin, ['send', '--url', url, '--type', 'mentions', '--account', '7', '--text', 'still here'],
      { env: { ...cleanEnv, INSTAGRAM_APP_SECRET: of('INSTAGRAM_APP_SECRET') }, encoding: 'utf8', timeout: 20000, killSignal: 'SIGKILL' });
    assert.equal(sent.status, 0, sent.stderr);
    assert.equal(await within(10000, 'tail to exit after one event', exited), 0, err);
    assert.match(out, /mentions account=7 .* still here/);
    assert.doesNotMatch(err, /connection lost/);
  } finally {
    await stopProcess(quiet);
  }
});

test('bad CLI input: one-line error, non-zero exit, no panic', () => {
  const run = (args, env = {}) => spawnSync(bin, args, { env: { ...cleanEnv, ...env }, encoding: 'utf8', timeout: 20000, killSignal: 'SIGKILL' });
  const cases = [
    run(['dev', '--no-such-flag']),
    run(['send', '--url', `http://127.0.0.1:${port}`, '/no/such/fixture.json'], { INSTAGRAM_APP_SECRET: 'x' }),
    run(['send', '--url', 'http://127.0.0.1:1'], { INSTAGRAM_APP_SECRET: 'x' }),
    run(['send', '--url', `http://127.0.0.1:${port}`, join(fixturesDir, 'f01_comments_dashboard_test.json')], { INSTAGRAM_APP_SECRET: 'wrong' }),
    run(['token', '--ttl', 'soon'], { JWT_SECRET: 'x'.repeat(32) }),
    run(['tail', '--url', `http://127.0.0.1:${port}`], { INSTANTCHAT_TOKEN: 'not-a-token' }),
    run(['send', '--url', `http://127.0.0.1:${port}`, '--type', 'Not-A-Type'], { INSTAGRAM_APP_SECRET: value('INSTAGRAM_APP_SECRET') }),
    run(['admin', '--url', `https://127.0.0.1:${port}`, '--token', 'x'.repeat(16)]),
  ];
  for (const r of cases) {
    assert.notEqual(r.status, 0);
    assert.doesNotMatch(r.stderr, /panicked|RUST_BACKTRACE/);
    assert.ok(r.stderr.trim().length > 0);
  }
  assert.match(cases[1].stderr, /cannot read \/no\/such\/fixture.json/);
  assert.match(cases[2].stderr, /is the server running/);
  assert.match(cases[3].stderr, /401/);
  assert.match(cases[6].stderr, /kept the webhook aside/);
  assert.match(cases[7].stderr, /take an http:\/\/ URL/);
});

test('serve checks its webhook and log settings as the services do, every problem at once', () => {
  const r = spawnSync(bin, ['serve', '--port', '0'], {
    env: {
      ...cleanEnv, JWT_SECRET: STRONG_JWT_SECRET, INSTAGRAM_APP_SECRET: 'a,,b', WEBHOOK_MAX_BODY_BYTES: '0',
      LOG_FORMAT: 'xml', RUST_LOG: 'instantchat=loud',
    },
    encoding: 'utf8',
    timeout: 15000, // a server that accepted these settings would run until killed
    killSignal: 'SIGKILL',
  });
  assert.equal(r.signal, null, 'serve started instead of refusing its settings');
  assert.notEqual(r.status, 0);
  assert.doesNotMatch(r.stderr, /panicked/);
  assert.match(r.stderr, /INSTAGRAM_APP_SECRET has 1 empty item\(s\) \(position 2 of 3\)/);
  assert.match(r.stderr, /WEBHOOK_MAX_BODY_BYTES="0" is not valid/);
  assert.match(r.stderr, /LOG_FORMAT="xml" is not valid/);
  assert.match(r.stderr, /RUST_LOG="instantchat=loud" does not parse/);
  assert.doesNotMatch(r.stderr, /using `info`/, 'no logging starts with settings about to be refused');
});

test('serve refuses the published example secrets, saying what to do', () => {
  // What `cp .env.example .env` gave before its secrets were left empty.
  const r = spawnSync(bin, ['serve', '--port', '0'], {
    env: { ...cleanEnv, JWT_SECRET: STRONG_JWT_SECRET, INSTAGRAM_APP_SECRET: 'change-me', INSTAGRAM_WEBHOOK_VERIFY_TOKEN: 'change-me' },
    encoding: 'utf8',
    timeout: 15000, // a server that accepted these settings would run until killed
    killSignal: 'SIGKILL',
  });
  assert.equal(r.signal, null, 'serve started with the example secrets');
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /INSTAGRAM_APP_SECRET is an example value published with InstantChat .*: set it to the app secret from the Meta App Dashboard/);
  assert.match(r.stderr, /INSTAGRAM_WEBHOOK_VERIFY_TOKEN is an example value published with InstantChat .*`instantchat secret` prints one/);
});

test('instantchat secret prints a new secret that the services accept', () => {
  const run = (args) => spawnSync(bin, args, { env: cleanEnv, encoding: 'utf8', timeout: 10000 });
  const [a, b] = [run(['secret']), run(['secret'])];
  assert.equal(a.status, 0, a.stderr);
  assert.match(a.stdout, /^[0-9a-f]{64}\n$/, 'one line, 32 random bytes as hex');
  assert.notEqual(a.stdout, b.stdout);
  assert.match(run(['secret', '--bytes', '16']).stdout, /^[0-9a-f]{32}\n$/);
  assert.notEqual(run(['secret', '--bytes', '4']).status, 0, 'fewer than 8 bytes is refused');
  const help = run(['secret', '--help']);
  assert.match(help.stdout, /JWT_SECRET/);
  assert.match(help.stdout, /INSTAGRAM_APP_SECRET is\s+not yours to choose/);
});

test('serve with an empty verify token refuses the subscription check', async () => {
  const p = await freePort();
  const serve = spawn(bin, ['serve', '--port', String(p), '--bind', '127.0.0.1'], {
    env: { ...cleanEnv, JWT_SECRET: STRONG_JWT_SECRET, INSTAGRAM_APP_SECRET: APP_SECRET, INSTAGRAM_WEBHOOK_VERIFY_TOKEN: '' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  try {
    await waitHttp(`http://127.0.0.1:${p}/readyz`, 'instantchat serve');
    const check = (token) => fetch(`http://127.0.0.1:${p}/api/webhooks/instagram?hub.mode=subscribe` +
      `&hub.verify_token=${token}&hub.challenge=1158201444`, { signal: AbortSignal.timeout(5000) });
    const empty = await check('');
    assert.equal(empty.status, 403);
    assert.notEqual(await empty.text(), '1158201444');
    assert.equal((await check('anything')).status, 403);
  } finally {
    await stopProcess(serve);
  }
});

test('dev treats empty secrets as unset and generates them', async () => {
  const p = await freePort();
  const child = spawn(bin, ['dev', '--port', String(p)], {
    env: { ...cleanEnv, INSTAGRAM_APP_SECRET: '', INSTAGRAM_WEBHOOK_VERIFY_TOKEN: '', JWT_SECRET: '' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let banner = '';
  try {
    await within(20000, 'the dev banner', new Promise((resolve) => {
      child.stdout.on('data', (chunk) => {
        banner += chunk;
        if (/Next, in another terminal/.test(banner)) resolve();
      });
    }));
    const verify = banner.match(/^\s*(?:export )?INSTAGRAM_WEBHOOK_VERIFY_TOKEN=(\S+)/m)?.[1];
    assert.ok(verify, `a generated verify token in:\n${banner}`);
    assert.match(banner, /^\s*(?:export )?INSTAGRAM_APP_SECRET=\S+/m);
    const res = await fetch(`http://127.0.0.1:${p}/api/webhooks/instagram?hub.mode=subscribe` +
      `&hub.verify_token=${verify}&hub.challenge=4815162342`, { signal: AbortSignal.timeout(5000) });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), '4815162342');
  } finally {
    await stopProcess(child);
  }
});
