// A deploy behind the load balancer: two gateways behind a real nginx running docker-compose's own
// rules (deploy/compose/nginx.conf, with the compose service names replaced by this machine's
// ports), and stock socket.io-clients with reconnection on, `auth` as a function that carries the
// last `seq`. One gateway is SIGTERMed while its clients come back and new ones arrive. Every
// client must end connected, without application code calling `connect()`, with every event it
// was owed exactly once and in `seq` order; a `connect_error` on the way is fine only if the
// client recovered from it by itself.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { io } from 'socket.io-client';
import {
  repoRoot, startSystem, stopProcess, freePort, waitHttp, waitUntil, token, sign, seedBody,
} from '../lib/harness.mjs';

const nginxBin = ['nginx', '/usr/sbin/nginx'].find((b) => spawnSync(b, ['-v']).status === 0);

/** Replaces `from` in `text` exactly `times` times, so a changed compose file fails loudly. */
function replaceExactly(text, from, to, times) {
  const found = text.split(from).length - 1;
  assert.equal(found, times, `deploy/compose/nginx.conf has ${JSON.stringify(from)} ${times} time(s), found ${found}`);
  return text.split(from).join(to);
}

/** docker-compose's nginx.conf, pointed at `gateways` and `ingest` on loopback, listening on `port`. */
function nginxConfig({ dir, port, gateways, ingestPort }) {
  let conf = readFileSync(join(repoRoot, 'deploy', 'compose', 'nginx.conf'), 'utf8');
  const servers = gateways.map((g) => `server 127.0.0.1:${g.port} max_fails=1 fail_timeout=5s;`).join('\n    ');
  // Docker's DNS and `resolve` (nginx 1.27.3+) find compose's replicas; here they are listed.
  conf = conf.replace(/^\s*resolver(_timeout)? [^\n]*\n/gm, '');
  conf = replaceExactly(conf, 'server gateway:3000 resolve max_fails=1 fail_timeout=5s;', servers, 2);
  conf = replaceExactly(conf, 'server ingest:8080 resolve;', `server 127.0.0.1:${ingestPort};`, 1);
  conf = replaceExactly(conf, 'listen 80;', `listen 127.0.0.1:${port};`, 1);
  conf = replaceExactly(conf, 'pid /tmp/nginx.pid;', `pid ${join(dir, 'nginx.pid')};`, 1);
  conf = replaceExactly(conf, 'access_log /dev/stdout;', 'access_log off;', 1);
  conf = replaceExactly(conf, 'error_log /dev/stderr warn;', `error_log ${join(dir, 'error.log')} warn;`, 1);
  conf = replaceExactly(conf, 'worker_processes auto;', 'worker_processes 1;', 1);
  // Its temporary files in the test's directory, not the system's.
  conf = replaceExactly(conf, 'http {', `http {\n  client_body_temp_path ${join(dir, 'body')};\n  proxy_temp_path ${join(dir, 'proxy')};`, 1);
  return conf;
}

const ACCOUNT = 'acct_lb';
const sys = {};
const clients = [];

before(async () => {
  assert.ok(nginxBin, 'nginx is installed (scripts/test installs Debian\'s nginx-light)');
  // The compose gateways believe X-Forwarded-For from nginx only; here nginx is on loopback.
  sys.app = await startSystem({ gateways: [{ TRUSTED_PROXIES: '127.0.0.1' }, { TRUSTED_PROXIES: '127.0.0.1' }] });
  sys.dir = mkdtempSync(join(tmpdir(), 'instantchat-lb-'));
  sys.port = await freePort();
  const conf = join(sys.dir, 'nginx.conf');
  writeFileSync(conf, nginxConfig({ dir: sys.dir, port: sys.port, gateways: sys.app.gateways, ingestPort: sys.app.ingestPort }));
  const check = spawnSync(nginxBin, ['-t', '-p', sys.dir, '-c', conf, '-e', join(sys.dir, 'error.log')], { encoding: 'utf8' });
  assert.equal(check.status, 0, `nginx -t: ${check.stderr}`);
  sys.nginx = spawn(nginxBin, ['-p', sys.dir, '-c', conf, '-e', join(sys.dir, 'error.log'), '-g', 'daemon off;'], { stdio: 'ignore' });
  sys.url = `http://127.0.0.1:${sys.port}`;
  await waitHttp(`${sys.url}/lb-healthz`, 'nginx', 10000);
});

after(async () => {
  for (const c of clients) c.socket.close();
  await stopProcess(sys.nginx, 'SIGQUIT');
  await sys.app?.stop();
  if (sys.dir) rmSync(sys.dir, { recursive: true, force: true });
});

/**
 * A frontend as docs/protocol.md shows it: reconnection on (socket.io-client's default), `auth` a
 * function with a fresh token and the last `seq` and `epoch`, `subscribe` on every connect.
 */
function frontend(name, transports) {
  const c = { name, events: [], connects: 0, connectErrors: [], lastSeq: undefined, epoch: undefined };
  c.socket = io(sys.url, {
    transports,
    forceNew: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 1000,
    auth: (cb) => cb({ token: token({ userId: name, accounts: [ACCOUNT] }), since: c.lastSeq, epoch: c.epoch }),
  });
  c.socket.on('connect', () => {
    c.connects += 1;
    c.socket.emit('subscribe', { eventTypes: ['comments'] });
  });
  c.socket.on('connect_error', (err) => c.connectErrors.push(err.message));
  c.socket.on('subscription_confirmed', (s) => { if (c.lastSeq === undefined) c.epoch = s.epoch; });
  c.socket.on('replay_complete', (r) => { c.epoch = r.epoch; c.replay = r; });
  c.socket.on('webhook_event', (e) => {
    c.events.push(e);
    c.lastSeq = Math.max(c.lastSeq ?? 0, e.seq);
  });
  clients.push(c);
  return c;
}

async function publish(id) {
  const body = seedBody({ id, accountId: ACCOUNT, text: id });
  const res = await fetch(`${sys.url}/api/webhooks/instagram`, {
    method: 'POST', body, headers: { 'content-type': 'application/json', 'x-hub-signature-256': sign(body) },
    signal: AbortSignal.timeout(15000),
  });
  assert.equal(res.status, 200, `webhook ${id} through nginx: ${await res.text()}`);
}

async function connectionsOf(gateway) {
  const text = await (await fetch(`${gateway.url}/metrics`)).text();
  return Number(text.match(/^instantchat_gateway_connections (\d+)/m)?.[1] ?? NaN);
}

const ids = (c) => c.events.map((e) => e.id);

test('SIGTERM one of two gateways behind the compose load balancer: every client comes back by itself, complete', async () => {
  // Half start on WebSocket (balanced to the least busy gateway), half on long-polling then the
  // upgrade (sticky by address: every client here is 127.0.0.1, so all on one gateway).
  const first = [];
  for (let i = 0; i < 24; i++) first.push(frontend(`first_${i}`, i % 2 ? ['websocket'] : ['polling', 'websocket']));
  await waitUntil(20000, 'every client connected and subscribed', () => first.every((c) => c.connects === 1 && c.epoch !== undefined));
  // The gateway that holds more is drained: the one the long-polling clients' hash sticks to, so
  // their reconnects meet it first and must be sent on by nginx.
  const counts = await Promise.all(sys.app.gateways.map(connectionsOf));
  assert.ok(counts.every((n) => n > 0), `both gateways hold clients (${counts})`);
  const draining = sys.app.gateways[counts[0] >= counts[1] ? 0 : 1];
  const held = Math.max(...counts);

  // Events before, during and after the drain; new clients arrive while it drains.
  const sent = [];
  const late = [];
  let stopped;
  for (let i = 0; i < 60; i++) {
    const id = `lb${i}`;
    await publish(id);
    sent.push(`comments:${id}`);
    if (i === 15) stopped = stopProcess(draining.proc, 'SIGTERM');
    if (i >= 15 && i < 25) late.push(frontend(`late_${i}`, i % 2 ? ['websocket'] : ['polling', 'websocket']));
  }
  await stopped;
  assert.equal(draining.proc.exitCode, 0, 'the gateway drained and exited cleanly');
  // A sentinel, published last: delivery is in seq order, so a client that has it has the rest.
  await publish('sentinel');
  sent.push('comments:sentinel');
  const everyone = [...first, ...late];
  await waitUntil(30000, 'every client to receive the sentinel', () =>
    everyone.every((c) => ids(c).includes('comments:sentinel')));

  const moved = first.filter((c) => c.connects > 1);
  assert.ok(moved.length >= held, `the drained gateway's ${held} clients reconnected (${moved.length} did)`);
  for (const c of everyone) {
    assert.ok(c.socket.connected, `${c.name} is connected`);
    assert.ok(c.socket.active, `${c.name} still reconnects by itself (no connect_error it gave up on)`);
    const seqs = c.events.map((e) => e.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), `${c.name}: in seq order`);
    assert.equal(new Set(ids(c)).size, ids(c).length, `${c.name}: no event twice`);
  }
  for (const c of first) {
    assert.deepEqual(ids(c), sent, `${c.name} (${c.connects} connect(s)): every event exactly once`);
    if (c.connects > 1) assert.equal(c.replay?.complete, true, `${c.name}: its resume was complete`);
  }
  for (const c of late) {
    // A new client is owed what came after its first subscription: a tail of `sent`.
    assert.deepEqual(ids(c), sent.slice(sent.length - ids(c).length), `${c.name}: a gapless tail of the events`);
  }
  console.log(`drained gateway held ${held}; ${moved.length} reconnected; connect errors on the way: ${everyone.flatMap((c) => c.connectErrors).length}`);
  const gaveUp = everyone.filter((c) => !c.socket.active).map((c) => `${c.name}: ${c.connectErrors.join('; ')}`);
  assert.deepEqual(gaveUp, []);
});
