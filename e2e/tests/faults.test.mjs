// No event lost: gateway SIGKILL, NATS restart, retention, slow clients and a reconnect storm,
// with real processes and the official socket.io-client.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import {
  startSystem, connect, next, request, token, postWebhook, seedBody, sign, sleep, within, waitUntil, stopProcess,
} from '../lib/harness.mjs';

const lenient = { IP_CONNECT_RATE: '100000', IP_CONNECT_BURST: '100000', SOCKET_RATE_BURST: '1000' };

/**
 * A client that follows one account on `gateway`, and on `moveTo(other)` reconnects there with
 * `since` = the largest seq it saw, as the frontend does after losing its connection.
 */
async function follower(gateway, { userId, account, types = ['comments'] }) {
  const f = { ids: [], seqs: [], lastSeq: 0, replays: [] };
  const attach = async (g, since) => {
    const auth = { token: token({ userId, accounts: [account] }) };
    const socket = connect(g, { auth });
    socket.on('webhook_event', (e) => {
      f.ids.push(e.id);
      f.seqs.push(e.seq);
      f.lastSeq = Math.max(f.lastSeq, e.seq);
    });
    socket.on('replay_complete', (r) => f.replays.push(r));
    await next(socket, 'connect', () => true, 30000);
    const payload = { eventTypes: types, userId, timestamp: Date.now() };
    if (since !== undefined) payload.since = since;
    await request(socket, 'subscribe', payload, 30000);
    f.socket = socket;
  };
  await attach(gateway);
  f.moveTo = (g) => attach(g, f.lastSeq);
  return f;
}

/** POSTs until answered 200 (503 while the broker is down, as Meta retries); returns the id. */
async function publish(sys, id, account, { onStatus = () => {}, eventType = 'comments' } = {}) {
  const body = seedBody({ id, accountId: account, eventType });
  for (let attempt = 0; attempt < 400; attempt++) {
    const res = await postWebhook(sys, body, sign(body)).catch(() => ({ status: 0 }));
    onStatus(res.status);
    if (res.status === 200) return `${eventType}:${id}`;
    await sleep(50);
  }
  throw new Error(`webhook ${id} never accepted`);
}

let sentinels = 0;

/**
 * Every follower holds exactly `expected`, once each, in order. A sentinel event is published to
 * `account` last and awaited: delivery is in seq order, so once a follower has it, anything late
 * (a duplicate, an event twice after a resume) has arrived too. A fact, where a quiet window
 * would be a guess.
 */
async function allReceived(sys, account, followers, expected, { ms = 30000, eventType = 'comments' } = {}) {
  await waitUntil(ms, `every client to have ${expected.length} events`, () => followers.every((f) => f.ids.length >= expected.length), 50);
  sentinels += 1;
  const sentinel = await publish(sys, `sentinel_${sentinels}`, account, { eventType });
  await waitUntil(ms, 'every client to have the sentinel', () => followers.every((f) => f.ids.includes(sentinel)), 20);
  for (const f of followers) {
    assert.deepEqual(f.ids, [...expected, sentinel], 'every event exactly once, in order');
    assert.ok(f.seqs.every((s, i) => i === 0 || s > f.seqs[i - 1]), 'seq increases');
  }
}

test('SIGKILL a gateway while events flow: its clients resume on the other, losing nothing', async () => {
  const sys = await startSystem({ gateways: [lenient, lenient] });
  try {
    const [g1, g2] = sys.gateways;
    const onG1 = await Promise.all(Array.from({ length: 10 }, (_, i) => follower(g1, { userId: `k1_${i}`, account: 'acct_k' })));
    const onG2 = await Promise.all(Array.from({ length: 10 }, (_, i) => follower(g2, { userId: `k2_${i}`, account: 'acct_k' })));
    const expected = [];
    for (let i = 0; i < 15; i++) expected.push(await publish(sys, `k${i}`, 'acct_k'));
    await waitUntil(10000, 'first events', () => onG1.every((f) => f.ids.length === 15), 20);
    const publishing = (async () => {
      for (let i = 15; i < 45; i++) { expected.push(await publish(sys, `k${i}`, 'acct_k')); await sleep(5); }
    })();
    // Killed while webhooks are still being published.
    await waitUntil(10000, 'publishing under way', () => expected.length >= 17, 2);
    g1.proc.kill('SIGKILL');
    await Promise.all(onG1.map((f) => next(f.socket, 'disconnect', () => true, 10000)));
    await Promise.all(onG1.map((f) => f.moveTo(g2)));
    await publishing;
    await allReceived(sys, 'acct_k', [...onG1, ...onG2], expected);
    for (const f of onG1) assert.ok(f.replays.length === 1 && f.replays[0].complete === true);
    [...onG1, ...onG2].forEach((f) => f.socket.close());
  } finally {
    await sys.stop();
  }
});

test('SIGTERM drains: socket.io-client reconnects by itself and resumes with since', async () => {
  const sys = await startSystem({ gateways: [lenient] });
  try {
    const [g] = sys.gateways;
    const seen = { ids: [], lastSeq: 0, replays: [], connects: 0 };
    const jwt = token({ userId: 'drained', accounts: ['acct_d'] });
    // What the frontend does: the handshake auth carries the last seq seen, so every automatic
    // reconnection resumes where the previous connection stopped.
    const socket = connect(g, {
      reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 500,
      auth: (cb) => cb(seen.lastSeq ? { token: jwt, since: seen.lastSeq } : { token: jwt }),
    });
    socket.on('connect', () => {
      seen.connects += 1;
      socket.emit('subscribe', { eventTypes: ['comments'], userId: 'drained', timestamp: Date.now() });
    });
    socket.on('webhook_event', (e) => { seen.ids.push(e.id); seen.lastSeq = Math.max(seen.lastSeq, e.seq); });
    socket.on('replay_complete', (r) => seen.replays.push(r));
    await next(socket, 'subscription_confirmed', () => true, 10000);
    const expected = [];
    for (let i = 0; i < 3; i++) expected.push(await publish(sys, `d${i}`, 'acct_d'));
    await waitUntil(10000, 'the first events', () => seen.ids.length >= 3, 20);

    const reason = new Promise((r) => socket.once('disconnect', r));
    await stopProcess(g.proc, 'SIGTERM');
    assert.equal(g.proc.exitCode, 0, 'the gateway drained and exited cleanly');
    assert.equal(await within(5000, 'disconnect', reason), 'transport close',
      'a drain closes the transport, which socket.io-client reconnects from on its own');

    // Events published while no gateway runs, then the gateway comes back on its address.
    for (let i = 3; i < 6; i++) expected.push(await publish(sys, `d${i}`, 'acct_d'));
    await sys.restartGateway(g);
    await waitUntil(20000, 'the automatic reconnection and resume', () => seen.ids.length >= 6 && seen.replays.length > 0, 50);
    expected.push(await publish(sys, 'd6', 'acct_d'));
    // d6 is published last and delivery is in seq order: once it is here, a duplicate would be too.
    await waitUntil(10000, 'a live event after the resume', () => seen.ids.includes('comments:d6'), 20);
    assert.deepEqual(seen.ids, expected, 'every event exactly once, in order, across the restart');
    assert.equal(seen.connects, 2, 'connected twice: once at start, once by itself after the drain');
    assert.deepEqual(seen.replays.map((r) => [r.count, r.complete]), [[3, true]]);
    socket.close();
  } finally {
    await sys.stop();
  }
});

test('NATS stops mid-stream and comes back: 503s meanwhile, every accepted event delivered once', async () => {
  const sys = await startSystem({ gateways: [lenient] });
  try {
    const clients = await Promise.all(Array.from({ length: 5 }, (_, i) => follower(sys.gateways[0], { userId: `n${i}`, account: 'acct_n' })));
    const statuses = [];
    const expected = [];
    for (let i = 0; i < 10; i++) expected.push(await publish(sys, `n${i}`, 'acct_n'));
    await sys.stopNats();
    // While NATS is down nothing is acknowledged.
    const down = await postWebhook(sys, seedBody({ id: 'while_down', accountId: 'acct_n' }));
    assert.equal(down.status, 503);
    const publishing = (async () => {
      for (let i = 10; i < 25; i++) expected.push(await publish(sys, `n${i}`, 'acct_n', { onStatus: (s) => statuses.push(s) }));
    })();
    // The outage lasts until ingest has refused several retries.
    await waitUntil(20000, 'ingest to answer 503 to retries during the outage', () => statuses.filter((s) => s === 503).length >= 5);
    sys.startNats();
    await publishing;
    await allReceived(sys, 'acct_n', clients, expected, { ms: 40000 });
    clients.forEach((f) => f.socket.close());
  } finally {
    await sys.stop();
  }
});

test('since older than retention gets complete: false; a recent since gets the gap', async () => {
  const sys = await startSystem({ gateways: [lenient], ingestEnv: { EVENT_MAX_COUNT: '5' } });
  try {
    const expected = [];
    for (let i = 0; i < 10; i++) expected.push(await publish(sys, `t${i}`, 'acct_t'));
    const g = sys.gateways[0];
    const old = connect(g, { auth: { token: token({ userId: 'old', accounts: ['acct_t'] }) } });
    await next(old, 'connect');
    await request(old, 'subscribe', { eventTypes: ['comments'], userId: 'old', timestamp: 1, since: 1 });
    const stale = await next(old, 'replay_complete');
    assert.equal(stale.complete, false);
    assert.equal(stale.count, 5, 'what is still retained is replayed');
    const recent = connect(g, { auth: { token: token({ userId: 'recent', accounts: ['acct_t'] }), since: 7 } });
    await next(recent, 'connect');
    await request(recent, 'subscribe', { eventTypes: ['comments'], userId: 'recent', timestamp: 1 });
    const fresh = await next(recent, 'replay_complete');
    assert.deepEqual([fresh.since, fresh.count, fresh.complete], [7, 3, true]);
    assert.deepEqual(recent.events.filter((e) => e.event === 'webhook_event').map((e) => e.data.id), expected.slice(7));
    old.close();
    recent.close();
  } finally {
    await sys.stop();
  }
});

/**
 * A client written as a frontend should be: socket.io-client reconnects by itself, its `auth` is
 * a function that sends the last seq (and its epoch) it saw, and it subscribes again on every
 * connect. No application code calls connect().
 */
function resilient(gateway, { userId, account, types = ['comments'] }) {
  const f = { ids: [], seqs: [], lastSeq: 0, epoch: undefined, replays: [], disconnects: [] };
  const socket = io(gateway.url, {
    transports: ['websocket'], forceNew: true, reconnectionDelay: 100, reconnectionDelayMax: 500,
    auth: (cb) => cb({
      token: token({ userId, accounts: [account] }),
      ...(f.lastSeq > 0 ? { since: f.lastSeq, epoch: f.epoch } : {}),
    }),
  });
  socket.on('connect', () => socket.emit('subscribe', { eventTypes: types, userId, timestamp: Date.now() }));
  socket.on('subscription_confirmed', (c) => { f.epoch = c.epoch ?? f.epoch; });
  socket.on('webhook_event', (e) => {
    f.ids.push(e.id);
    f.seqs.push(e.seq);
    f.lastSeq = Math.max(f.lastSeq, e.seq);
  });
  socket.on('replay_complete', (r) => f.replays.push(r));
  socket.on('disconnect', (reason) => f.disconnects.push(reason));
  f.socket = socket;
  f.subscribed = () => within(10000, 'subscription_confirmed', new Promise((r) => socket.once('subscription_confirmed', r)));
  return f;
}

test('a client that stops reading is cut off, reconnects by itself and resumes; a fast one gets everything', async () => {
  const sys = await startSystem({ gateways: [{ ...lenient, CLIENT_BUFFER_PACKETS: '128', REPLAY_MAX_EVENTS: '10000' }] });
  try {
    const g = sys.gateways[0];
    const fast = await follower(g, { userId: 'fast', account: 'acct_s', types: ['messages'] });
    const slow = resilient(g, { userId: 'slow', account: 'acct_s', types: ['messages'] });
    await slow.subscribed();
    // Stop reading: the TCP window closes and the server's buffer for this socket fills.
    slow.socket.io.engine.transport.ws._socket.pause();
    const text = 'x'.repeat(8000);
    const expected = [];
    for (let b = 0; b < 80; b++) {
      const messaging = Array.from({ length: 25 }, (_, i) => {
        const mid = `slow_${b}_${i}`;
        expected.push(`messages:${mid}`);
        return { sender: { id: '1' }, recipient: { id: 'acct_s' }, timestamp: Date.now(), message: { mid, text } };
      });
      const body = Buffer.from(JSON.stringify({ object: 'instagram', entry: [{ id: 'acct_s', time: Date.now(), messaging }] }));
      assert.equal((await postWebhook(sys, body)).status, 200);
    }
    const deadline = Date.now() + 30000;
    for (;;) {
      const metrics = await (await fetch(`${g.url}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
      const m = metrics.match(/instantchat_gateway_slow_client_disconnects_total (\d+)/);
      if (m && Number(m[1]) >= 1) break;
      if (Date.now() > deadline) throw new Error('timed out after 30000 ms waiting for the slow client to be cut off');
      await sleep(100);
    }
    slow.socket.io.engine.transport.ws._socket.resume();
    await allReceived(sys, 'acct_s', [fast, slow], expected, { ms: 60000, eventType: 'messages' });
    assert.ok(slow.disconnects.length >= 1, 'the slow client was cut off');
    assert.ok(!slow.disconnects.includes('io server disconnect'),
      `a transport close, after which socket.io-client reconnects by itself: ${slow.disconnects}`);
    assert.ok(slow.replays.length >= 1 && slow.replays.every((r) => r.complete), JSON.stringify(slow.replays));
    fast.socket.close();
    slow.socket.close();
  } finally {
    await sys.stop();
  }
});

describe('reconnect storm', () => {
  test('2,000 clients lose their gateway at once and all resume on another, none losing an event', async () => {
    const sys = await startSystem({ gateways: [lenient, lenient] });
    try {
      const [g1, g2] = sys.gateways;
      const clients = [];
      for (let batch = 0; batch < 20; batch++) {
        clients.push(...await Promise.all(Array.from({ length: 100 }, (_, i) =>
          follower(g1, { userId: `storm_${batch}_${i}`, account: `acct_storm_${i % 10}` }))));
      }
      const expected = Object.fromEntries(Array.from({ length: 10 }, (_, a) => [`acct_storm_${a}`, []]));
      for (let i = 0; i < 20; i++) {
        const account = `acct_storm_${i % 10}`;
        expected[account].push(await publish(sys, `s${i}`, account));
      }
      g1.proc.kill('SIGKILL');
      const started = Date.now();
      await Promise.all(clients.map((f) => next(f.socket, 'disconnect', () => true, 20000)));
      const publishing = (async () => {
        for (let i = 20; i < 40; i++) {
          const account = `acct_storm_${i % 10}`;
          expected[account].push(await publish(sys, `s${i}`, account));
        }
      })();
      await Promise.all(clients.map((f) => f.moveTo(g2)));
      await publishing;
      for (let a = 0; a < 10; a++) {
        const mine = clients.filter((_, i) => i % 100 % 10 === a);
        await allReceived(sys, `acct_storm_${a}`, mine, expected[`acct_storm_${a}`], { ms: 60000 });
      }
      const seconds = (Date.now() - started) / 1000;
      console.log(`# storm: 2000 clients back and caught up in ${seconds.toFixed(1)} s`);
      clients.forEach((f) => f.socket.close());
    } finally {
      await sys.stop();
    }
  });
});
