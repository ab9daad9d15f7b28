// The docker-compose.yml topology without Docker: one nats-server, one ingest and three gateways
// (as `docker compose up --scale gateway=3`), each started with the `command` / `environment` that
// docker-compose.yml gives it, interpolated from a test .env the way Compose does. Only what Docker
// would provide differently is overridden: ports, the loopback address and NATS_URL's host (its
// user and password stay). So the compose file and the binaries' settings cannot drift apart
// unnoticed. nats-server runs with compose's entrypoint script and deploy/compose/nats.conf, users
// and permissions included: the services must work with their own NATS users, a permission they
// lack fails the test (the server logs every violation), and the gateway's user is shown unable to
// publish events or delete a stream.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parse } from 'yaml';
import {
  repoRoot, freePort, within, sleep, token, sign, seedBody, connect, next, request,
} from '../lib/harness.mjs';
import { NatsWire } from '../lib/nats-wire.mjs';

const binDir = process.env.INSTANTCHAT_BIN_DIR ?? join(repoRoot, 'target', 'debug');
const compose = parse(readFileSync(join(repoRoot, 'docker-compose.yml'), 'utf8'));

/** KEY=value lines of a .env file (comments and blank lines skipped). */
function parseDotenv(text) {
  const env = {};
  for (const line of text.split('\n')) {
    const m = line.match(/^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$/);
    if (m) env[m[1]] = m[2].trim().replace(/^(['"])(.*)\1$/, '$2');
  }
  return env;
}

/** Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e}, ${VAR:+a}, ${VAR+a}. */
function interpolate(value, env) {
  return String(value).replace(/\$(\$|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))/g, (whole, token, braced, bare) => {
    if (token === '$') return '$';
    const expr = braced ?? bare;
    const m = expr.match(/^([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?+])(.*))?$/s);
    if (!m) throw new Error(`invalid interpolation ${whole}`);
    const [, name, colon, op, arg] = m;
    const set = Object.hasOwn(env, name);
    const usable = colon ? set && env[name] !== '' : set;
    if (op === '-') return usable ? env[name] : interpolate(arg, env);
    if (op === '?') {
      if (!usable) throw new Error(`${name}: ${arg || 'required'}`);
      return env[name];
    }
    if (op === '+') return usable ? interpolate(arg, env) : '';
    return set ? env[name] : '';
  });
}

/** A service's `environment` from docker-compose.yml, interpolated. */
function serviceEnv(name, dotenv) {
  const svc = compose.services[name];
  assert.ok(svc, `docker-compose.yml has a ${name} service`);
  assert.equal(svc.env_file, undefined, `${name}: settings live in environment, not env_file`);
  let env = svc.environment ?? {};
  if (Array.isArray(env)) env = Object.fromEntries(env.map((e) => (e.includes('=') ? e.split(/=(.*)/s).slice(0, 2) : [e, dotenv[e] ?? ''])));
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v === null ? (dotenv[k] ?? '') : interpolate(v, dotenv)]));
}

function startProcess(name, bin, args, env, output = 'inherit') {
  const child = spawn(bin, args, { env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', output, output] });
  child.on('error', (e) => console.error(`${name}: ${e.message}`));
  child.output = '';
  if (output === 'pipe') {
    for (const stream of [child.stdout, child.stderr]) stream.on('data', (d) => { child.output += d; });
  }
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return child;
}

/** The repository file that compose mounts at `containerPath` in `service`. */
function mountedFile(service, containerPath) {
  const mount = (compose.services[service].volumes ?? []).find((v) => v.split(':')[1] === containerPath);
  assert.ok(mount, `compose mounts ${containerPath} into ${service}`);
  return join(repoRoot, mount.split(':')[0]);
}

/**
 * nats-server as compose runs it: its entrypoint (a shell script from the repository) with
 * `args`, `env` from compose's environment, nats-server found on PATH. Output is kept in
 * `.output` (every permission violation is logged there).
 */
function startNats(args, env) {
  const entrypoint = compose.services.nats.entrypoint;
  assert.ok(Array.isArray(entrypoint) && entrypoint[0] === '/bin/sh', 'the nats entrypoint is a /bin/sh script');
  const script = mountedFile('nats', entrypoint[1]);
  const natsBin = process.env.NATS_SERVER_BIN ?? 'nats-server';
  const path = natsBin.includes('/') ? `${dirname(natsBin)}:${process.env.PATH}` : process.env.PATH;
  return startProcess('nats', '/bin/sh', [script, ...args], { ...env, PATH: path }, 'pipe');
}

/** nats-server's log lines that report a permission or authorization violation. */
const violations = (nats) => nats.output.split('\n').filter((l) => /Violation/i.test(l));

async function stop(child, signal = 'SIGTERM') {
  if (!child || child.exitCode !== null || child.signalCode !== null) return child?.exited;
  child.kill(signal);
  return within(20000, 'process exit', child.exited).catch(() => child.kill('SIGKILL'));
}

async function waitOk(url, what, child, ms = 20000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    if (child && child.exitCode !== null) throw new Error(`${what} exited with code ${child.exitCode} before it was ready`);
    try {
      const res = await fetch(url);
      if (res.ok) return;
      last = `HTTP ${res.status}`;
    } catch (e) {
      last = e.message;
    }
    await sleep(50);
  }
  throw new Error(`${what} not ready at ${url} within ${ms} ms (${last})`);
}

// The test's .env: .env.example's variables, with test values for the secrets. Two app secrets,
// as during a rotation (docs/deploy.md): webhooks signed with either are accepted.
const OLD_APP_SECRET = 'compose-app-secret-old';
const NEW_APP_SECRET = 'compose-app-secret-new';
const dotenv = {
  ...parseDotenv(readFileSync(join(repoRoot, '.env.example'), 'utf8')),
  INSTAGRAM_APP_SECRET: `${OLD_APP_SECRET},${NEW_APP_SECRET}`,
  INSTAGRAM_WEBHOOK_VERIFY_TOKEN: 'compose-verify-token',
  JWT_SECRET: 'compose-jwt-secret-0123456789abcdef',
  NATS_INGEST_PASSWORD: '0123456789abcdef0123456789abcdef',
  NATS_GATEWAY_PASSWORD: 'fedcba9876543210fedcba9876543210',
  RUST_LOG: process.env.E2E_RUST_LOG ?? 'warn',
};

const sys = { gateways: [], sockets: [] };

before(async () => {
  sys.ingestEnv = serviceEnv('ingest', dotenv);
  sys.gatewayEnv = serviceEnv('gateway', dotenv);
  assert.ok((compose.services.gateway.deploy?.replicas ?? 1) >= 2, 'compose runs two or more gateways');

  // nats: compose's entrypoint and command, with the store and monitoring port moved to this
  // machine's free ones.
  sys.storeDir = mkdtempSync(join(tmpdir(), 'instantchat-compose-'));
  const natsPort = await freePort();
  const monitorPort = await freePort();
  const natsArgs = [...compose.services.nats.command];
  const setArg = (flag, value) => {
    const i = natsArgs.indexOf(flag);
    assert.ok(i >= 0, `the nats command has ${flag}`);
    natsArgs[i + 1] = value;
  };
  setArg('--store_dir', sys.storeDir);
  setArg('--http_port', String(monitorPort));
  // The config file, from the repository path compose mounts it from.
  setArg('--config', mountedFile('nats', natsArgs[natsArgs.indexOf('--config') + 1]));
  natsArgs.push('-a', '127.0.0.1', '-p', String(natsPort));
  sys.natsPort = natsPort;
  sys.natsEnv = serviceEnv('nats', dotenv);
  sys.nats = startNats(natsArgs, sys.natsEnv);
  // The compose healthcheck's URL, on the moved monitoring port.
  const health = compose.services.nats.healthcheck.test.find((t) => String(t).startsWith('http://'));
  await waitOk(health.replace(/^http:\/\/[^/]+/, `http://127.0.0.1:${monitorPort}`), 'nats (JetStream)', sys.nats);
  // NATS_URL as compose gives it, user and password included, with the server's address here.
  const natsUrl = (env) => {
    assert.match(env.NATS_URL, /^nats:\/\/[a-z]+:[^@]+@nats:4222$/, 'NATS_URL names a user and the nats service');
    return env.NATS_URL.replace(/@nats:4222$/, `@127.0.0.1:${natsPort}`);
  };

  sys.ingestPort = await freePort();
  sys.ingestUrl = `http://127.0.0.1:${sys.ingestPort}`;
  sys.ingest = startProcess('ingest', join(binDir, 'instantchat-ingest'), [],
    { ...sys.ingestEnv, PORT: String(sys.ingestPort), NATS_URL: natsUrl(sys.ingestEnv) });
  sys.ingestNatsUrl = natsUrl(sys.ingestEnv);
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    const proc = startProcess(`gateway ${i}`, join(binDir, 'instantchat-gateway'), [],
      { ...sys.gatewayEnv, PORT: String(port), BIND_ADDRESS: '127.0.0.1', NATS_URL: natsUrl(sys.gatewayEnv) });
    sys.gateways.push({ port, url: `http://127.0.0.1:${port}`, proc });
  }
  try {
    await waitOk(`${sys.ingestUrl}/readyz`, 'ingest', sys.ingest);
    for (const g of sys.gateways) await waitOk(`${g.url}/readyz`, 'gateway', g.proc);
  } catch (e) {
    e.message += `; nats-server logged: ${JSON.stringify(violations(sys.nats))}`;
    throw e;
  }
});

after(async () => {
  for (const s of sys.sockets) s.close();
  await Promise.all([...sys.gateways.map((g) => stop(g.proc)), stop(sys.ingest)]);
  await stop(sys.nats, 'SIGKILL');
  if (sys.storeDir) rmSync(sys.storeDir, { recursive: true, force: true });
});

/** A client of `gateway` following `comments`, authenticated with a token signed by compose's JWT_SECRET. */
async function client(gateway, userId, since) {
  const jwt = token({ userId, accounts: ['acct_compose'], secret: dotenv.JWT_SECRET });
  const socket = connect(gateway);
  sys.sockets.push(socket);
  await next(socket, 'connect');
  const auth = await request(socket, 'authenticate', { token: jwt, userId, timestamp: Date.now() });
  assert.equal(auth.message, 'Authentication successful', JSON.stringify(auth));
  const payload = { eventTypes: ['comments'], userId, timestamp: Date.now() };
  if (since !== undefined) payload.since = since;
  const confirmed = await request(socket, 'subscribe', payload);
  assert.deepEqual(confirmed.eventTypes, ['comments']);
  return socket;
}

async function postWebhook(id, secret) {
  const body = seedBody({ id, accountId: 'acct_compose', text: `compose ${id}` });
  const res = await fetch(`${sys.ingestUrl}/api/webhooks/instagram`, {
    method: 'POST', body, headers: { 'content-type': 'application/json', 'x-hub-signature-256': sign(body, secret) },
  });
  return res.status;
}

test('the services start with exactly the compose environment', () => {
  assert.equal(sys.ingestEnv.NATS_URL, `nats://ingest:${dotenv.NATS_INGEST_PASSWORD}@nats:4222`,
    'ingest talks to the nats service as its own user');
  assert.equal(sys.gatewayEnv.NATS_URL, `nats://gateway:${dotenv.NATS_GATEWAY_PASSWORD}@nats:4222`,
    'the gateways talk to the nats service as their own user');
  for (const [name, env] of [['ingest', sys.ingestEnv], ['gateway', sys.gatewayEnv]]) {
    assert.ok(env.PORT, `${name} sets PORT`);
  }
  assert.equal(sys.ingestEnv.INSTAGRAM_APP_SECRET, `${OLD_APP_SECRET},${NEW_APP_SECRET}`);
  assert.equal(sys.gatewayEnv.JWT_SECRET, dotenv.JWT_SECRET);
});

test('without .env compose still reads (ps, logs, down work) and every service refuses to start, naming what to set', async () => {
  // No .env at all: every interpolation has a default, so compose itself does not stop.
  const bare = Object.fromEntries(['nats', 'ingest', 'gateway'].map((name) => [name, serviceEnv(name, {})]));
  const natsArgs = [...compose.services.nats.command];
  natsArgs[natsArgs.indexOf('--config') + 1] = mountedFile('nats', natsArgs[natsArgs.indexOf('--config') + 1]);
  const nats = startNats(natsArgs, bare.nats);
  assert.notEqual((await within(10000, 'nats to refuse', nats.exited)).code, 0);
  assert.match(nats.output, /NATS_INGEST_PASSWORD .*\.env/, nats.output);

  for (const [name, bin, secret] of [['ingest', 'instantchat-ingest', 'INSTAGRAM_APP_SECRET'], ['gateway', 'instantchat-gateway', 'JWT_SECRET']]) {
    const port = await freePort();
    const child = startProcess(name, join(binDir, bin), [], { ...bare[name], PORT: String(port), BIND_ADDRESS: '127.0.0.1' }, 'pipe');
    const exit = await within(10000, `${name} to refuse`, child.exited);
    assert.notEqual(exit.code, 0, `${name} refused to start`);
    assert.match(child.output, new RegExp(secret), `${name} names ${secret}: ${child.output}`);
  }
});

test("Meta's subscription check uses compose's verify token", async () => {
  const url = `${sys.ingestUrl}/api/webhooks/instagram?hub.mode=subscribe&hub.verify_token=compose-verify-token&hub.challenge=c42`;
  const res = await fetch(url);
  assert.equal(res.status, 200);
  assert.equal(await res.text(), 'c42');
});

test("a body as large as compose's WEBHOOK_MAX_BODY_BYTES fits through its NATS", async () => {
  const limit = Number(sys.ingestEnv.WEBHOOK_MAX_BODY_BYTES);
  const head = '{"id":"big","eventType":"comments","accountId":"acct_big","comment":{"text":"';
  const tail = '"}}';
  const body = Buffer.from(head + 'x'.repeat(limit - head.length - tail.length) + tail);
  assert.equal(body.length, limit);
  const res = await fetch(`${sys.ingestUrl}/api/webhooks/instagram`, {
    method: 'POST', body, headers: { 'content-type': 'application/json', 'x-hub-signature-256': sign(body, NEW_APP_SECRET) },
  });
  assert.equal(res.status, 200, await res.text());
});

test('a webhook reaches clients on all three gateways; a stopped gateway\'s client resumes on another', async () => {
  const users = ['on_gw0', 'on_gw1', 'on_gw2'];
  const sockets = await Promise.all(sys.gateways.map((g, i) => client(g, users[i])));

  // Signed with the old secret of the rotation pair.
  assert.equal(await postWebhook('c1', OLD_APP_SECRET), 200);
  const first = await Promise.all(sockets.map((s) => next(s, 'webhook_event', (e) => e.id === 'comments:c1')));
  for (const e of first) assert.equal(e.content, 'compose c1');
  assert.equal(new Set(first.map((e) => e.seq)).size, 1, 'one event, one seq, on every gateway');

  // Gateway 2 stops (docker compose stop / scale down): it drains and its client is told to go.
  const leaving = sockets[2];
  const seen = Math.max(...leaving.events.filter((e) => e.event === 'webhook_event').map((e) => e.data.seq));
  const disconnected = next(leaving, 'disconnect', () => true, 15000);
  const exit = await stop(sys.gateways[2].proc, 'SIGTERM');
  await disconnected;
  assert.deepEqual(exit, { code: 0, signal: null }, 'the gateway drained and exited cleanly');

  // While that client is away, a webhook signed with the new secret arrives.
  assert.equal(await postWebhook('c2', NEW_APP_SECRET), 200);
  for (const s of sockets.slice(0, 2)) await next(s, 'webhook_event', (e) => e.id === 'comments:c2');

  // It reconnects (the load balancer now sends it to gateway 0) with since = the largest seq it saw.
  const back = connect(sys.gateways[0]);
  sys.sockets.push(back);
  await next(back, 'connect');
  const jwt = token({ userId: users[2], accounts: ['acct_compose'], secret: dotenv.JWT_SECRET });
  await request(back, 'authenticate', { token: jwt, userId: users[2], timestamp: Date.now() });
  const done = next(back, 'replay_complete', () => true, 15000);
  await request(back, 'subscribe', { eventTypes: ['comments'], userId: users[2], timestamp: Date.now(), since: seen });
  const complete = await done;
  assert.deepEqual({ since: complete.since, count: complete.count, complete: complete.complete },
    { since: seen, count: 1, complete: true });
  const replayed = back.events.filter((e) => e.event === 'webhook_event').map((e) => e.data);
  assert.deepEqual(replayed.map((e) => e.id), ['comments:c2'], 'the missed event, and not c1 again');
  assert.ok(replayed[0].seq > seen);

  // And it is live again on its new gateway.
  assert.equal(await postWebhook('c3', NEW_APP_SECRET), 200);
  await next(back, 'webhook_event', (e) => e.id === 'comments:c3');
});

test('the services needed no NATS permission that deploy/compose/nats.conf does not give them', () => {
  assert.deepEqual(violations(sys.nats), [], 'nats-server logged no permission violation');
});

test('ingest updates its streams with its own NATS user (a restart with other retention settings)', async () => {
  await stop(sys.ingest);
  sys.ingest = startProcess('ingest', join(binDir, 'instantchat-ingest'), [],
    { ...sys.ingestEnv, EVENT_RETENTION: '12h', PORT: String(sys.ingestPort), NATS_URL: sys.ingestNatsUrl });
  await waitOk(`${sys.ingestUrl}/readyz`, 'ingest (restarted)', sys.ingest);
  const probe = await NatsWire.connect({ port: sys.natsPort, user: 'ingest', pass: dotenv.NATS_INGEST_PASSWORD });
  try {
    const info = await probe.request('$JS.API.STREAM.INFO.INSTANTCHAT_EVENTS');
    assert.equal(JSON.parse(info.reply).config.max_age, 12 * 3600 * 1e9, 'the stream took the new retention');
  } finally {
    probe.close();
  }
  assert.equal(await postWebhook('c4', NEW_APP_SECRET), 200);
  assert.deepEqual(violations(sys.nats), []);
});

test("the gateway's NATS user cannot publish events or webhooks, nor change or delete a stream; ingest's cannot delete one", async () => {
  const gateway = await NatsWire.connect({ port: sys.natsPort, user: 'gateway', pass: dotenv.NATS_GATEWAY_PASSWORD });
  const ingest = await NatsWire.connect({ port: sys.natsPort, user: 'ingest', pass: dotenv.NATS_INGEST_PASSWORD });
  try {
    for (const subject of ['instantchat.events.acct_compose.comments', 'instantchat.webhooks.instagram']) {
      const errors = await gateway.publish(subject, '{"forged":true}');
      assert.match(errors.join(), /Permissions Violation for Publish/, `gateway publishing to ${subject}`);
    }
    for (const subject of ['$JS.API.STREAM.DELETE.INSTANTCHAT_EVENTS', '$JS.API.STREAM.PURGE.INSTANTCHAT_EVENTS',
      '$JS.API.STREAM.UPDATE.INSTANTCHAT_EVENTS', '$JS.API.STREAM.DELETE.INSTANTCHAT_WEBHOOKS',
      '$JS.API.STREAM.MSG.DELETE.INSTANTCHAT_EVENTS']) {
      const { errors } = await gateway.request(subject, '{}');
      assert.match(String(errors), /Permissions Violation for Publish/, `gateway requesting ${subject}`);
    }
    for (const subject of ['$JS.API.STREAM.DELETE.INSTANTCHAT_EVENTS', '$JS.API.STREAM.PURGE.INSTANTCHAT_WEBHOOKS']) {
      const { errors } = await ingest.request(subject, '{}');
      assert.match(String(errors), /Permissions Violation for Publish/, `ingest requesting ${subject}`);
    }
    // Both streams are still there, with their events: the gateway's user may read them.
    const info = JSON.parse((await gateway.request('$JS.API.STREAM.INFO.INSTANTCHAT_EVENTS')).reply);
    assert.ok(info.state.messages >= 4, JSON.stringify(info.state));
  } finally {
    gateway.close();
    ingest.close();
  }
  // A wrong password is refused outright.
  await assert.rejects(NatsWire.connect({ port: sys.natsPort, user: 'gateway', pass: 'not-the-password' }), /Authorization Violation/);
});
