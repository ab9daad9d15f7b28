// One hostile client cannot hurt the others: each attack below runs against the real gateway
// beside a victim client, and the test shows the bound holding (the gateway's memory under a
// stated ceiling, the victim's heartbeat answered and its events delivered, the attacker closed
// or refused with a reason).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';
import {
  startSystem, connect, next, request, token, postWebhook, seedBody, sleep, within, waitUntil, freePort,
} from '../lib/harness.mjs';

/** The process's resident memory, in MB. */
function rssMb(proc) {
  const status = readFileSync(`/proc/${proc.pid}/status`, 'utf8');
  return Number(status.match(/VmRSS:\s+(\d+) kB/)[1]) / 1024;
}

/**
 * A victim: authenticated and subscribed to `account`; `beat()` measures one heartbeat round
 * trip; `ids` collects what it received.
 */
async function victim(gateway, account) {
  const socket = connect(gateway, { auth: { token: token({ userId: `victim_${account}`, accounts: [account] }) } });
  await next(socket, 'connect');
  await request(socket, 'subscribe', { eventTypes: ['comments'], timestamp: Date.now() });
  const v = { socket, ids: [], beats: [] };
  socket.on('webhook_event', (e) => v.ids.push(e.id));
  v.beat = async () => {
    const t0 = performance.now();
    await request(socket, 'heartbeat', { timestamp: Date.now() }, 10000);
    v.beats.push(performance.now() - t0);
  };
  return v;
}

/** Heartbeats every 100 ms while `work` runs; resolves with the slowest round trip (ms). */
async function beatingWhile(v, work) {
  let done = false;
  const beats = (async () => {
    while (!done) {
      await v.beat();
      await sleep(100);
    }
  })();
  try {
    await work;
  } finally {
    done = true;
    await beats;
  }
  return Math.max(...v.beats);
}

async function publishTo(sys, account, n, prefix) {
  const ids = [];
  for (let i = 0; i < n; i++) {
    const id = `${prefix}_${i}`;
    const body = seedBody({ id, accountId: account });
    assert.equal((await postWebhook(sys, body)).status, 200);
    ids.push(`comments:${id}`);
  }
  return ids;
}

async function metric(url, name) {
  const text = await (await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  const line = text.split('\n').find((l) => l.startsWith(name + ' ') || l.startsWith(name + '{'));
  return line ? Number(line.split(' ').pop()) : 0;
}

describe('hostile clients, one gateway', () => {
  let sys;
  let g;
  before(async () => {
    const opsPort = await freePort();
    sys = await startSystem({ gateways: [{ OPS_PORT: String(opsPort), HEARTBEAT_TIMEOUT_SECS: '0' }] });
    g = sys.gateways[0];
    g.opsPort = opsPort;
  });
  after(async () => { await sys?.stop(); });

  test('a WebSocket ping flood from a client that never reads is closed; memory stays bounded', async () => {
    const v = await victim(g, 'acct_ping');
    const before = rssMb(g.proc);
    const ws = new WebSocket(`${g.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
    await within(5000, 'the attacker connected', new Promise((r) => ws.once('open', r)));
    ws._socket.pause(); // never reads
    let closed = false;
    ws._socket.once('close', () => { closed = true; });
    const payload = Buffer.alloc(125, 7);
    let sent = 0;
    const flood = (async () => {
      const until = Date.now() + 8000;
      while (Date.now() < until && !closed) {
        if (ws._socket.writableLength > 1 << 20) {
          await sleep(5);
          continue;
        }
        try { ws.ping(payload); sent++; } catch { break; }
        if (sent % 1000 === 0) await sleep(0);
      }
    })();
    const slowest = await beatingWhile(v, flood);
    const grown = rssMb(g.proc) - before;
    ws._socket.resume(); // read what is left: the server's close
    await waitUntil(10000, 'the attacker closed by the server', () => closed || ws.readyState === WebSocket.CLOSED);
    const ids = await publishTo(sys, 'acct_ping', 3, 'ping');
    await waitUntil(10000, 'the victim gets its events', () => ids.every((id) => v.ids.includes(id)));
    console.log(`# ping flood: ${sent} pings sent, gateway RSS +${grown.toFixed(1)} MB, victim heartbeat max ${slowest.toFixed(1)} ms`);
    assert.ok(grown < 64, `gateway memory grew ${grown.toFixed(1)} MB under a ping flood (ceiling 64 MB)`);
    assert.ok(slowest < 1000, `the victim's heartbeat took ${slowest.toFixed(1)} ms`);
    v.socket.close();
  });

  test('engine.io sessions opened in a loop are refused past the address allowance; memory stays bounded', async () => {
    const v = await victim(g, 'acct_sessions');
    const before = rssMb(g.proc);
    const counts = {};
    const open = async () => {
      const until = Date.now() + 8000;
      while (Date.now() < until) {
        const res = await fetch(`${g.url}/socket.io/?EIO=4&transport=polling`, { signal: AbortSignal.timeout(5000) });
        counts[res.status] = (counts[res.status] ?? 0) + 1;
        await res.arrayBuffer();
      }
    };
    const slowest = await beatingWhile(v, Promise.all([open(), open()]));
    const grown = rssMb(g.proc) - before;
    const pending = await metric(`http://127.0.0.1:${g.opsPort}`, 'instantchat_gateway_pending_sessions');
    console.log(`# session flood: ${JSON.stringify(counts)}, pending ${pending}, gateway RSS +${grown.toFixed(1)} MB, victim heartbeat max ${slowest.toFixed(1)} ms`);
    assert.ok((counts[429] ?? 0) > 0, `sessions past the allowance refused with 429: ${JSON.stringify(counts)}`);
    // IP_CONNECT_BURST 200 + 8 s at IP_CONNECT_RATE 50 + MAX_PENDING_PER_IP 20, and no more.
    assert.ok((counts[200] ?? 0) <= 200 + 50 * 10 + 20, `sessions opened: ${JSON.stringify(counts)}`);
    assert.ok(pending <= 200 + 50 * 10 + 20, `pending sessions ${pending}`);
    assert.ok(grown < 64, `gateway memory grew ${grown.toFixed(1)} MB (ceiling 64 MB)`);
    assert.ok(slowest < 1000, `the victim's heartbeat took ${slowest.toFixed(1)} ms`);
    const ids = await publishTo(sys, 'acct_sessions', 3, 'sessions');
    await waitUntil(10000, 'the victim gets its events', () => ids.every((id) => v.ids.includes(id)));
    v.socket.close();
  });

  test('subscriptions do not pile up: 32 event types per socket; large account lists stay cheap', async () => {
    const v = await victim(g, 'acct_subs');
    const attacker = connect(g, { auth: { token: token({ userId: 'piler', accounts: ['*'] }) } });
    await next(attacker, 'connect');
    const types = Array.from({ length: 40 }, (_, i) => `t_${String.fromCharCode(97 + (i % 26))}${String.fromCharCode(97 + Math.floor(i / 26))}`);
    const first = await request(attacker, 'subscribe', { eventTypes: types.slice(0, 30) });
    assert.equal(first.eventTypes.length, 30);
    const refused = await request(attacker, 'subscribe', { eventTypes: types.slice(30, 40) });
    assert.equal(refused.message, 'At most 32 event types per socket; unsubscribe from some first');
    const accountIds = Array.from({ length: 1000 }, (_, i) => `acct_${i}`);
    const work = (async () => {
      for (let i = 0; i < 20; i++) {
        await request(attacker, 'subscribe', { eventTypes: ['comments'], accountIds: accountIds.map((a) => `${a}_${i}`) });
      }
    })();
    const slowest = await beatingWhile(v, work);
    const info = await request(attacker, 'get_subscriptions', {});
    assert.equal(info.subscriptions.length, 31, 'the 30 types and comments, not more');
    console.log(`# subscribe pile-up: victim heartbeat max ${slowest.toFixed(1)} ms`);
    assert.ok(slowest < 1000, `the victim's heartbeat took ${slowest.toFixed(1)} ms`);
    const ids = await publishTo(sys, 'acct_subs', 3, 'subs');
    await waitUntil(10000, 'the victim gets its events', () => ids.every((id) => v.ids.includes(id)));
    attacker.close();
    v.socket.close();
  });

  test('metric labels are the server\'s own, and /metrics can live on a private port', async () => {
    const s = connect(g, { auth: { token: token({ userId: 'labeller', accounts: ['*'] }) } });
    await next(s, 'connect');
    await request(s, 'subscribe', { eventTypes: ['zz_client_chosen', 'comments'] });
    const ops = `http://127.0.0.1:${g.opsPort}`;
    const text = await (await fetch(`${ops}/metrics`)).text();
    assert.ok(!text.includes('zz_client_chosen'), 'a client-chosen type is no label');
    assert.match(text, /instantchat_gateway_subscriptions\{event_type="other"\} [1-9]/);
    assert.equal((await fetch(`${g.url}/metrics`)).status, 404, 'not on the public port');
    assert.equal((await fetch(`${g.url}/healthz`)).status, 200, 'health stays on the public port');
    assert.equal((await fetch(`${ops}/readyz`)).status, 200);
    s.close();
  });

  test('a token naming an account that is no account id is refused; delivery goes on for the others', async () => {
    const v = await victim(g, 'acct_tok');
    for (const accounts of [['bad account'], ['>'], ['acct_tok', { nested: 1 }]]) {
      const bad = connect(g, { auth: { token: token({ userId: 'mallory', accounts }) } });
      const err = await next(bad, 'connect_error');
      assert.match(err.message, /^Token has an invalid accounts claim/, JSON.stringify(accounts));
      bad.close();
    }
    const ids = await publishTo(sys, 'acct_tok', 3, 'tok');
    await waitUntil(10000, 'the victim gets 3 of 3 events', () => ids.every((id) => v.ids.includes(id)));
    v.socket.close();
  });

  test('a token valid only from tomorrow, and one too large, are refused with a reason', async () => {
    const tomorrow = Math.floor(Date.now() / 1000) + 24 * 3600;
    const early = connect(g, { auth: { token: token({ userId: 'early', nbf: tomorrow, ttl: 2 * 24 * 3600 }) } });
    assert.equal((await next(early, 'connect_error')).message, 'Token not valid yet (nbf)');
    early.close();
    const large = connect(g, { auth: { token: token({ userId: 'large', pad: 'x'.repeat(9000) }) } });
    assert.equal((await next(large, 'connect_error')).message, 'Token too large (at most 8192 bytes)');
    large.close();
  });
});

test('a client that stops reading is closed by a deadline, frees its slot, and the others get everything', async () => {
  const sys = await startSystem({
    gateways: [{ PING_INTERVAL_SECS: '5', HEARTBEAT_TIMEOUT_SECS: '10', MAX_CONNECTIONS_PER_USER: '1' }],
  });
  try {
    const g = sys.gateways[0];
    const v = await victim(g, 'acct_stall');
    const stalled = connect(g, { auth: { token: token({ userId: 'staller', accounts: ['acct_stall'], ttl: 90 }) } });
    await next(stalled, 'connect');
    await request(stalled, 'subscribe', { eventTypes: ['comments'] });
    stalled.io.engine.transport.ws._socket.pause();
    await request(v.socket, 'subscribe', { eventTypes: ['messages'] });
    const expected = [];
    const text = 'y'.repeat(4000);
    const work = (async () => {
      for (let i = 0; i < 40; i++) {
        const messaging = Array.from({ length: 100 }, (_, k) => {
          const mid = `stall_${i}_${k}`;
          expected.push(`messages:${mid}`);
          return { sender: { id: '1' }, recipient: { id: 'acct_stall' }, timestamp: Date.now(), message: { mid, text } };
        });
        const body = Buffer.from(JSON.stringify({ object: 'instagram', entry: [{ id: 'acct_stall', time: Date.now(), messaging }] }));
        assert.equal((await postWebhook(sys, body)).status, 200);
      }
    })();
    const slowest = await beatingWhile(v, work);
    // The staller's slot frees well before its token would expire (90 s): the same user can
    // connect again although it may hold one connection only.
    await within(30000, 'the stalled user connects again', (async () => {
      for (;;) {
        const again = connect(g, { auth: { token: token({ userId: 'staller', accounts: ['acct_stall'] }) } });
        const outcome = await Promise.race([
          next(again, 'connect').then(() => 'connected'),
          next(again, 'connect_error').then((e) => e.message),
        ]);
        again.close();
        if (outcome === 'connected') return;
        await sleep(250);
      }
    })());
    await waitUntil(30000, 'the victim gets all 4,000 events', () => expected.every((id) => v.ids.includes(id)));
    console.log(`# stalled reader: victim heartbeat max ${slowest.toFixed(1)} ms`);
    assert.ok(slowest < 2000, `the victim's heartbeat took ${slowest.toFixed(1)} ms`);
    stalled.close();
    v.socket.close();
  } finally {
    await sys.stop();
  }
});
