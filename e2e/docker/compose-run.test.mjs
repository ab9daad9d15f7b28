// docker-compose.yml for real, run by scripts/compose-test (which builds the images and exports
// NATS_IMAGE, LB_IMAGE, RUST_IMAGE and RUNTIME_IMAGE): `docker compose up --scale gateway=3`,
// then, through the published load balancer only,
//  - all services healthy;
//  - a signed webhook POSTed to nginx reaches socket.io-client clients connected over polling
//    (sticky), over WebSocket first (as docs/deploy.md tells the frontend to connect: any gateway)
//    and as the frontend connects today (`io(url)`: polling, then the upgrade), spread over the
//    three gateways;
//  - one gateway container killed: its clients reconnect by themselves to the others and resume
//    with `since`, missing nothing;
//  - a gateway container started with a soft open-files limit of 1,024 holds 5,000 connections
//    (it raises its own limit; clients in four processes);
//  - `docker compose down` leaves no container, network or volume of the project behind.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { io } from 'socket.io-client';
import {
  repoRoot, freePort, within, waitUntil, token, sign, seedBody,
} from '../lib/harness.mjs';

const run = promisify(execFile);
const project = process.env.COMPOSE_PROJECT_NAME ?? 'instantchat-compose-test';
const work = process.env.COMPOSE_TEST_WORK ?? join(repoRoot, 'target', 'compose-test');
const envFile = join(work, 'test.env');
const hex = () => randomBytes(32).toString('hex');
const secrets = {
  INSTAGRAM_APP_SECRET: hex(),
  INSTAGRAM_WEBHOOK_VERIFY_TOKEN: hex(),
  JWT_SECRET: hex(),
  NATS_INGEST_PASSWORD: hex(),
  NATS_GATEWAY_PASSWORD: hex(),
};
const ACCOUNT = 'acct_compose_run';
const sys = { clients: [], children: [], timings: {} };

async function sh(cmd, args, { timeout = 120000, allowFail = false } = {}) {
  try {
    const { stdout } = await run(cmd, args, { cwd: repoRoot, timeout, maxBuffer: 64 << 20 });
    return stdout;
  } catch (e) {
    if (allowFail) return `${e.stdout ?? ''}${e.stderr ?? ''}`;
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.stderr || e.message}`);
  }
}
/** Text logs without their colours. */
const stripAnsi = (text) => text.replace(/\x1b\[[0-9;]*m/g, '');
const compose = (args, opts) => sh('docker', ['compose', '--env-file', envFile, '-p', project, ...args], opts);

/** The containers of one compose service, from `docker compose ps`. */
async function containers(service) {
  const out = await compose(['ps', '--format', 'json', ...(service ? [service] : [])]);
  return out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

/** A gateway container's Prometheus metrics, asked from inside it (it has no host port). */
async function metric(container, name) {
  const text = await sh('docker', ['exec', container, 'bash', '-c',
    'exec 3<>/dev/tcp/127.0.0.1/3000 && printf "GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n" >&3 && cat <&3']);
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line === undefined ? 0 : Number(line.trim().split(/\s+/).at(-1));
}

async function postWebhook(id) {
  const body = seedBody({ id, accountId: ACCOUNT, text: `run ${id}` });
  const res = await fetch(`${sys.url}/api/webhooks/instagram`, {
    method: 'POST', body, signal: AbortSignal.timeout(15000),
    headers: { 'content-type': 'application/json', 'x-hub-signature-256': sign(body, secrets.INSTAGRAM_APP_SECRET) },
  });
  assert.equal(res.status, 200, await res.text());
}

/**
 * A client as the frontend runs one: on every (re)connect it authenticates and subscribes, with
 * `since` = the largest seq it has seen once it has seen one, so a reconnect resumes.
 */
function client(userId, opts) {
  const jwt = token({ userId, accounts: [ACCOUNT], secret: secrets.JWT_SECRET });
  const socket = io(sys.url, { forceNew: true, reconnectionDelay: 200, reconnectionDelayMax: 1000, ...opts });
  const c = { userId, socket, seen: new Map(), maxSeq: undefined, subscribed: 0, connects: 0, disconnects: 0, errors: [] };
  socket.on('webhook_event', (e) => {
    c.seen.set(e.id, e.seq);
    c.maxSeq = Math.max(c.maxSeq ?? 0, e.seq);
  });
  socket.on('disconnect', () => { c.disconnects += 1; });
  socket.on('connect_error', (e) => c.errors.push(e.message));
  socket.on('connect', async () => {
    c.connects += 1;
    const round = c.connects;
    try {
      const auth = await socket.timeout(10000).emitWithAck('authenticate', { token: jwt, userId, timestamp: Date.now() });
      assert.equal(auth.message, 'Authentication successful', JSON.stringify(auth));
      const payload = { eventTypes: ['comments'], userId, timestamp: Date.now() };
      if (c.maxSeq !== undefined) payload.since = c.maxSeq;
      await socket.timeout(10000).emitWithAck('subscribe', payload);
      c.subscribed = round;
    } catch (e) {
      c.errors.push(`round ${round}: ${e.message}`);
    }
  });
  sys.clients.push(c);
  return c;
}

const subscribed = (list, ms = 30000) => waitUntil(ms, 'clients subscribed',
  () => list.every((c) => c.subscribed === c.connects && c.connects > 0 && c.socket.connected), 50);

/** The authenticated sockets of each gateway container, by name. */
async function spread() {
  const out = {};
  for (const c of await containers('gateway')) out[c.Name] = await metric(c.Name, 'instantchat_gateway_authenticated_connections');
  return out;
}

before(async () => {
  mkdirSync(work, { recursive: true });
  const port = await freePort();
  sys.url = `http://127.0.0.1:${port}`;
  // This machine caps a process's open files (the Docker daemon's too): the containers' limit
  // cannot go above that.
  const hard = Number((await sh('sh', ['-c', 'ulimit -Hn'])).trim());
  sys.hardLimit = Math.min(65536, hard);
  writeFileSync(envFile, Object.entries({
    ...secrets, CLIENT_URL: 'http://localhost:5173', HTTP_PORT: port, NOFILE_LIMIT: sys.hardLimit, RUST_LOG: 'info',
    // A range of its own, so that a compose project already running here (default range) is no obstacle.
    COMPOSE_SUBNET: '172.28.199.0/24', LB_ADDRESS: '172.28.199.10',
  }).map(([k, v]) => `${k}=${v}`).join('\n') + '\n');
  const t0 = Date.now();
  await compose(['up', '-d', '--no-build', '--scale', 'gateway=3', '--wait', '--wait-timeout', '180'], { timeout: 240000 });
  sys.timings.up = Date.now() - t0;
});

after(async () => {
  for (const c of sys.clients) c.socket.close();
  for (const child of sys.children) child.kill('SIGKILL');
  if (sys.lowLimit) await sh('docker', ['rm', '-f', sys.lowLimit], { allowFail: true });
  if (process.env.KEEP !== '1') await compose(['down', '-v', '--remove-orphans', '--timeout', '30'], { allowFail: true, timeout: 120000 });
  console.log(`compose-run timings (ms): ${JSON.stringify(sys.timings)}`);
});

test('docker compose up --scale gateway=3: every service healthy', async () => {
  const all = await containers();
  const byService = {};
  for (const c of all) (byService[c.Service] ??= []).push(c);
  assert.deepEqual(Object.keys(byService).sort(), ['gateway', 'ingest', 'lb', 'nats']);
  assert.equal(byService.gateway.length, 3);
  for (const c of all) assert.equal(c.Health, 'healthy', `${c.Name}: ${c.Status}`);
  const res = await fetch(`${sys.url}/lb-healthz`);
  assert.equal(res.status, 200);
  // Each service raised its open-files limit and said so.
  for (const c of [...byService.ingest, ...byService.gateway]) {
    const logs = stripAnsi(await sh('docker', ['logs', c.Name], { allowFail: true }));
    assert.match(logs, new RegExp(`open-files limit.*soft=${sys.hardLimit}`), `${c.Name} logs its limit`);
  }
});

test('a signed webhook through nginx reaches clients over polling and WebSocket, spread over the 3 gateways', async () => {
  // Polling only, and as the frontend connects today (polling, then the upgrade with its sid):
  // both sticky by client address, so from this one address all on one gateway.
  const polling = [1, 2, 3].map((i) => client(`poll_${i}`, { transports: ['polling'] }));
  const upgrading = [client('upgrade_1', {})];
  await subscribed([...polling, ...upgrading]);
  const afterPolling = await spread();
  const sticky = Object.entries(afterPolling).filter(([, n]) => n > 0);
  assert.equal(sticky.length, 1, `polling sessions share one gateway: ${JSON.stringify(afterPolling)}`);
  sys.stickyGateway = sticky[0][0];
  assert.equal(sticky[0][1], 4);
  await waitUntil(10000, 'the upgrade to WebSocket', () => upgrading[0].socket.io.engine.transport.name === 'websocket');

  // WebSocket first, polling as the fallback (docs/deploy.md): any gateway, the least busy.
  const ws = Array.from({ length: 9 }, (_, i) => client(`ws_${i}`, { transports: ['websocket', 'polling'] }));
  await subscribed(ws);
  for (const c of ws) assert.equal(c.socket.io.engine.transport.name, 'websocket');
  const counts = await spread();
  assert.equal(Object.values(counts).reduce((a, b) => a + b, 0), 13, JSON.stringify(counts));
  for (const [name, n] of Object.entries(counts)) assert.ok(n > 0, `${name} holds clients: ${JSON.stringify(counts)}`);

  await postWebhook('r1');
  await waitUntil(15000, 'r1 on every client', () => sys.clients.every((c) => c.seen.has('comments:r1')));
  assert.equal(new Set(sys.clients.map((c) => c.seen.get('comments:r1'))).size, 1, 'one event, one seq');
});

test("a gateway container killed: its clients resume on the others, missing nothing", async () => {
  const victim = sys.stickyGateway;
  const before = Object.fromEntries(sys.clients.map((c) => [c.userId, c.disconnects]));
  const t0 = Date.now();
  await sh('docker', ['kill', victim]);
  // While its clients are away: more webhooks.
  for (const id of ['r2', 'r3', 'r4', 'r5']) await postWebhook(id);
  const moved = sys.clients.filter((c) => c.disconnects > before[c.userId]);
  assert.ok(moved.length >= 4, `the killed gateway's clients noticed (${moved.map((c) => c.userId)})`);
  assert.ok(moved.some((c) => c.userId.startsWith('poll_')) && moved.some((c) => c.userId.startsWith('ws_') || c.userId.startsWith('upgrade_')));
  await subscribed(sys.clients, 60000);
  const want = ['r1', 'r2', 'r3', 'r4', 'r5'].map((id) => `comments:${id}`);
  await waitUntil(30000, 'every event on every client', () => sys.clients.every((c) => want.every((id) => c.seen.has(id))));
  sys.timings.resume = Date.now() - t0;
  for (const c of sys.clients) assert.deepEqual(c.errors.filter((e) => !/xhr|websocket|timeout/i.test(e)), [], c.userId);

  // The killed container stays down (a kill is a stop to Docker), so they resumed elsewhere.
  const state = JSON.parse(await sh('docker', ['inspect', victim]))[0].State;
  assert.equal(state.Running, false);
  const counts = await spread();
  assert.equal(Object.keys(counts).length, 2, JSON.stringify(counts));
  assert.equal(Object.values(counts).reduce((a, b) => a + b, 0), sys.clients.length, JSON.stringify(counts));
  for (const c of sys.clients) c.socket.close();
  sys.clients = [];
});

test('a gateway container started with a soft open-files limit of 1,024 holds 5,000 connections', async () => {
  const CONNECTIONS = 5000;
  const PROCESSES = 4;
  const [template] = await containers('gateway');
  const inspect = JSON.parse(await sh('docker', ['inspect', template.Name]))[0];
  const [nats] = await containers('nats');
  const natsAddress = Object.values(JSON.parse(await sh('docker', ['inspect', nats.Name]))[0].NetworkSettings.Networks)[0].IPAddress;
  const port = await freePort();
  // The compose gateway's settings, on this machine's loopback (host network): a published port
  // would put Docker's userland proxy between the clients and the gateway, and that proxy, not
  // the gateway, is what gave out under thousands of connections here. NATS stays where compose
  // runs it. Every connection comes from one address: the per-IP rate is lifted for this test.
  const env = inspect.Config.Env
    .filter((e) => !/^(IP_CONNECT_RATE|IP_CONNECT_BURST|PORT|BIND_ADDRESS|NATS_URL)=/.test(e))
    .concat([`PORT=${port}`, 'BIND_ADDRESS=127.0.0.1', 'IP_CONNECT_RATE=100000', 'IP_CONNECT_BURST=100000',
      `NATS_URL=nats://gateway:${secrets.NATS_GATEWAY_PASSWORD}@${natsAddress}:4222`]);
  sys.lowLimit = `${project}-lowlimit`;
  await sh('docker', ['rm', '-f', sys.lowLimit], { allowFail: true });
  await sh('docker', ['run', '-d', '--name', sys.lowLimit, '--network', 'host',
    '--ulimit', `nofile=1024:${sys.hardLimit}`, ...env.flatMap((e) => ['-e', e]), inspect.Config.Image]);
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30000;
  for (;;) {
    const ok = await fetch(`${url}/readyz`).then((r) => r.ok).catch(() => false);
    if (ok) break;
    if (Date.now() > deadline) throw new Error('the low-limit gateway did not become ready');
    await new Promise((r) => setTimeout(r, 200));
  }

  // The client side in several processes (each process here may hold 20,000 files).
  const t0 = Date.now();
  const per = CONNECTIONS / PROCESSES;
  const ready = [];
  for (let p = 0; p < PROCESSES; p++) {
    const child = spawn(process.execPath, [join(repoRoot, 'e2e', 'docker', 'hold-connections.mjs')], {
      env: { ...process.env, URL: url, COUNT: String(per), PREFIX: `hold_${p}_`, JWT_SECRET: secrets.JWT_SECRET, ACCOUNT },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    sys.children.push(child);
    ready.push(within(180000, `client process ${p}`, new Promise((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d) => {
        out += d;
        const m = out.match(/^(connected|failed) (.*)$/m);
        if (m) (m[1] === 'connected' ? resolve : reject)(new Error(`process ${p}: ${m[2]}`));
      });
      child.once('exit', (code) => reject(new Error(`client process ${p} exited with ${code}: ${out}`)));
    })));
  }
  try {
    await Promise.all(ready);
    sys.timings.connect5000 = Date.now() - t0;
    const metrics = await (await fetch(`${url}/metrics`)).text();
    const held = Number(metrics.split('\n').find((l) => l.startsWith('instantchat_gateway_connections '))?.split(' ')[1]);
    assert.ok(held >= CONNECTIONS, `the gateway holds ${held} connections`);
    for (const child of sys.children) child.stdin.end();
    await Promise.all(sys.children.map((c) => within(30000, 'client process exit', new Promise((r) => c.once('exit', r)))));
    // It held them because it raised its own limit, and said so.
    const logs = stripAnsi(await sh('docker', ['logs', sys.lowLimit], { allowFail: true }));
    assert.match(logs, new RegExp(`open-files limit.*soft=${sys.hardLimit}.*started_with=1024`), logs);
  } finally {
    for (const child of sys.children) child.kill('SIGKILL');
    sys.children = [];
    // Its image carries the compose project's labels: it must be gone before `down` is checked.
    await sh('docker', ['rm', '-f', sys.lowLimit]);
    sys.lowLimit = undefined;
  }
});

test('docker compose down leaves nothing of the project behind', async () => {
  const t0 = Date.now();
  await compose(['down', '-v', '--timeout', '30'], { timeout: 120000 });
  sys.timings.down = Date.now() - t0;
  const label = `label=com.docker.compose.project=${project}`;
  assert.equal((await sh('docker', ['ps', '-a', '-q', '--filter', label])).trim(), '', 'no container');
  assert.equal((await sh('docker', ['network', 'ls', '-q', '--filter', label])).trim(), '', 'no network');
  assert.equal((await sh('docker', ['volume', 'ls', '-q', '--filter', label])).trim(), '', 'no volume');
});
