// Starts the real system for a test: nats-server (JetStream), instantchat-ingest and any number
// of instantchat-gateway instances, each on a free loopback port, and tears them down after.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import jwt from 'jsonwebtoken';
import { io } from 'socket.io-client';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = join(here, '..', '..');
export const fixturesDir = join(repoRoot, 'testdata', 'instagram');
const binDir = process.env.INSTANTCHAT_BIN_DIR ?? join(repoRoot, 'target', 'debug');

/** The app secret the services run with: as Meta makes them (32 hex digits); they refuse weak ones. */
export const APP_SECRET = '4f1c9a2be07d3856a1c4e9f02b7d6a35';
/** The secret of the fixture manifest's signatures (too weak for the services to accept). */
export const MANIFEST_SECRET = 'test_app_secret';
/** The verify token of Meta's subscription check the ingest under test expects. */
export const VERIFY_TOKEN = '5d0c2e8b9f1b5d0c7e3a9f1b';
export const JWT_SECRET = 'e2e-jwt-secret-0123456789abcdef';
export const ORIGIN = 'http://localhost:5173';

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves with `promise`, or rejects after `ms` naming `what`. */
export function within(ms, what, promise) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every `every` ms until it holds; throws naming `what` after `ms`. */
export async function waitUntil(ms, what, cond, every = 20) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() >= deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(every);
  }
}

export async function waitHttp(url, what, ms = 20000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      if (res.ok) return;
      last = `HTTP ${res.status}`;
    } catch (e) {
      last = e.message;
    }
    await sleep(50);
  }
  throw new Error(`${what} not ready at ${url} within ${ms} ms (${last})`);
}

function startProcess(name, bin, env) {
  const child = spawn(bin, [], {
    env: { PATH: process.env.PATH, RUST_LOG: process.env.E2E_RUST_LOG ?? 'warn', ...env },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  child.on('error', (e) => console.error(`${name}: ${e.message}`));
  return child;
}

export async function stopProcess(child, signal = 'SIGTERM') {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  await within(15000, 'process exit', exited).catch(() => child.kill('SIGKILL'));
}

/** A running system. `gateways` extra env per gateway instance. */
export async function startSystem({ gateways = [{}], ingestEnv = {} } = {}) {
  const sys = { procs: [], gateways: [] };
  sys.storeDir = mkdtempSync(join(tmpdir(), 'instantchat-e2e-'));
  sys.natsPort = await freePort();
  sys.natsUrl = `nats://127.0.0.1:${sys.natsPort}`;
  sys.nats = spawn(process.env.NATS_SERVER_BIN ?? 'nats-server',
    ['-a', '127.0.0.1', '-p', String(sys.natsPort), '-js', '-sd', sys.storeDir], { stdio: 'ignore' });
  sys.ingestPort = await freePort();
  sys.ingestUrl = `http://127.0.0.1:${sys.ingestPort}`;
  sys.ingest = startProcess('ingest', join(binDir, 'instantchat-ingest'), {
    PORT: String(sys.ingestPort), NATS_URL: sys.natsUrl, INSTAGRAM_APP_SECRET: APP_SECRET,
    INSTAGRAM_WEBHOOK_VERIFY_TOKEN: VERIFY_TOKEN, ...ingestEnv,
  });
  for (const extra of gateways) {
    const port = await freePort();
    const env = { PORT: String(port), BIND_ADDRESS: '127.0.0.1', NATS_URL: sys.natsUrl, JWT_SECRET, CLIENT_URL: ORIGIN, ...extra };
    const proc = startProcess('gateway', join(binDir, 'instantchat-gateway'), env);
    sys.gateways.push({ port, url: `http://127.0.0.1:${port}`, proc, env });
  }
  sys.stop = async () => {
    await Promise.all([...sys.gateways.map((g) => stopProcess(g.proc)), stopProcess(sys.ingest)]);
    await stopProcess(sys.nats, 'SIGKILL');
    rmSync(sys.storeDir, { recursive: true, force: true });
  };
  try {
    await waitHttp(`${sys.ingestUrl}/readyz`, 'ingest');
    for (const g of sys.gateways) await waitHttp(`${g.url}/readyz`, 'gateway');
  } catch (e) {
    await sys.stop(); // no process outlives a failed start
    throw e;
  }
  sys.startNats = () => {
    sys.nats = spawn(process.env.NATS_SERVER_BIN ?? 'nats-server',
      ['-a', '127.0.0.1', '-p', String(sys.natsPort), '-js', '-sd', sys.storeDir], { stdio: 'ignore' });
  };
  sys.stopNats = () => stopProcess(sys.nats, 'SIGKILL');
  /** Starts a stopped gateway again on its port (a restart after a deploy). */
  sys.restartGateway = async (g) => {
    g.proc = startProcess('gateway', join(binDir, 'instantchat-gateway'), g.env);
    await waitHttp(`${g.url}/readyz`, 'gateway');
  };
  return sys;
}

export function token({ userId = 'user_1', accounts = ['*'], ttl = 3600, secret = JWT_SECRET, ...rest } = {}) {
  return jwt.sign({ userId, accounts, ...rest }, secret, { algorithm: 'HS256', expiresIn: ttl });
}

export function sign(body, secret = APP_SECRET) {
  return 'sha256=' + createHmac('sha256', secret).update(body).digest('hex');
}

/**
 * A Meta fixture, byte for byte, signed with APP_SECRET. Its manifest signature (made with
 * MANIFEST_SECRET, which the services refuse) is checked first, so the bytes are the ones Meta's
 * signature covered.
 */
export function fixture(name) {
  const manifest = JSON.parse(readFileSync(join(fixturesDir, 'manifest.json'), 'utf8'));
  const entry = manifest.fixtures.find((f) => f.file.startsWith(name));
  const body = readFileSync(join(fixturesDir, entry.file));
  if (sign(body, MANIFEST_SECRET) !== entry.x_hub_signature_256) {
    throw new Error(`${entry.file} is not the body its manifest signature covers`);
  }
  return { body, signature: sign(body) };
}

export async function postWebhook(sys, body, signature = sign(body)) {
  const res = await fetch(`${sys.ingestUrl}/api/webhooks/instagram`, {
    method: 'POST', body, headers: { 'content-type': 'application/json', 'x-hub-signature-256': signature },
    signal: AbortSignal.timeout(15000),
  });
  return { status: res.status, body: await res.text() };
}

/** A webhook in the simplified shape (`source: simple`), signed. */
export function seedBody({ id, eventType = 'comments', accountId = 'acct_1', text = 'hello' }) {
  return Buffer.from(JSON.stringify({
    id, eventType, accountId, sender: { id: 'sender_1', username: 'ana' },
    comment: { text }, timestamp: new Date().toISOString(),
  }));
}

/** Connects a client; collects every event it receives in `client.events`. */
export function connect(gateway, opts = {}) {
  const socket = io(gateway.url, { transports: ['websocket'], reconnection: false, forceNew: true, ...opts });
  socket.events = [];
  socket.onAny((event, data) => socket.events.push({ event, data }));
  return socket;
}

/**
 * The next `event` on `socket` matching `pred` that this function has not returned before,
 * including events that arrived before the call (socket.io-client does not queue them).
 */
export function next(socket, event, pred = () => true, ms = 10000) {
  socket.consumed ??= new Set();
  const found = (socket.events ?? []).findIndex((e, i) => e.event === event && !socket.consumed.has(i) && pred(e.data));
  if (found >= 0) {
    socket.consumed.add(found);
    return Promise.resolve(socket.events[found].data);
  }
  return within(ms, `${event}`, new Promise((resolve) => {
    const handler = (data) => {
      if (pred(data)) {
        socket.off(event, handler);
        const i = (socket.events ?? []).findIndex((e, j) => e.event === event && e.data === data && !socket.consumed.has(j));
        if (i >= 0) socket.consumed.add(i);
        resolve(data);
      }
    };
    socket.on(event, handler);
  }));
}

/** Emits with an ack and resolves with the ack's payload. */
export function request(socket, event, data, ms = 10000) {
  return within(ms, `ack of ${event}`, socket.emitWithAck(event, data));
}

/** Connects and authenticates with the `authenticate` event; resolves when auth_success arrived. */
export async function authed(gateway, { userId = 'user_1', accounts = ['*'], opts = {} } = {}) {
  const socket = connect(gateway, opts);
  await next(socket, 'connect');
  const reply = await request(socket, 'authenticate', { token: token({ userId, accounts }), userId, timestamp: Date.now() });
  if (!reply.message) throw new Error(`authentication failed: ${JSON.stringify(reply)}`);
  return socket;
}
