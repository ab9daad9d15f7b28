// Resume as a stock frontend meets it: a bounded replay, a history that changed under the
// client, and a token renewed after auth_expired.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { io } from 'socket.io-client';
import {
  startSystem, connect, next, request, token, postWebhook, seedBody, sleep, within, waitUntil, waitHttp,
} from '../lib/harness.mjs';

/** POSTs until answered 200 (503 while the broker is down, as Meta retries); returns the id. */
async function publish(sys, id, account) {
  const body = seedBody({ id, accountId: account });
  for (let attempt = 0; attempt < 400; attempt++) {
    const res = await postWebhook(sys, body).catch(() => ({ status: 0 }));
    if (res.status === 200) return `comments:${id}`;
    await sleep(50);
  }
  throw new Error(`webhook ${id} never accepted`);
}

/** Subscribes with `since` (and `epoch`) on a fresh socket; resolves with its replay_complete. */
async function resumeFrom(gateway, { userId, account, since, epoch }) {
  const socket = connect(gateway, { auth: { token: token({ userId, accounts: [account] }) } });
  await next(socket, 'connect');
  const payload = { eventTypes: ['comments'], since, ...(epoch === undefined ? {} : { epoch }) };
  await request(socket, 'subscribe', payload);
  const done = await next(socket, 'replay_complete');
  const replayed = socket.events.filter((e) => e.event === 'webhook_event').map((e) => e.data.seq);
  socket.close();
  return { done, replayed };
}

test('a since far in the past gets at most REPLAY_MAX_EVENTS, with complete: false and why', async () => {
  const sys = await startSystem({ gateways: [{ REPLAY_MAX_EVENTS: '10' }] });
  try {
    const g = sys.gateways[0];
    for (let i = 0; i < 15; i++) await publish(sys, `far_${i}`, 'acct_far');
    const far = await resumeFrom(g, { userId: 'far', account: 'acct_far', since: 0 });
    assert.deepEqual(far.replayed, [], 'none of a gap over the limit');
    assert.equal(far.done.complete, false);
    assert.equal(far.done.reason, 'too_many');
    assert.equal(far.done.count, 0);
    assert.equal(typeof far.done.epoch, 'string');
    const near = await resumeFrom(g, { userId: 'near', account: 'acct_far', since: 10, epoch: far.done.epoch });
    assert.deepEqual(near.replayed, [11, 12, 13, 14, 15]);
    assert.equal(near.done.complete, true);
    assert.equal(near.done.reason, undefined);
  } finally {
    await sys.stop();
  }
});

test('the stream recreated and grown past an old since: history_changed, never the other history\'s events', async () => {
  const sys = await startSystem({ gateways: [{}] });
  try {
    const g = sys.gateways[0];
    // A frontend that keeps its last seq and epoch across reconnects, and subscribes on connect.
    const seen = { seqs: [], epoch: undefined, replays: [], disconnects: [] };
    const socket = io(g.url, {
      transports: ['websocket'], forceNew: true, reconnectionDelay: 100, reconnectionDelayMax: 500,
      auth: (cb) => cb({
        token: token({ userId: 'keeper', accounts: ['acct_h'] }),
        ...(seen.seqs.length ? { since: Math.max(...seen.seqs), epoch: seen.epoch } : {}),
      }),
    });
    socket.on('connect', () => socket.emit('subscribe', { eventTypes: ['comments'] }));
    socket.on('subscription_confirmed', (c) => { if (!seen.epoch) seen.epoch = c.epoch; });
    socket.on('webhook_event', (e) => seen.seqs.push(e.seq));
    socket.on('replay_complete', (r) => seen.replays.push(r));
    socket.on('disconnect', (reason) => seen.disconnects.push(reason));
    await within(10000, 'subscribed', new Promise((r) => socket.once('subscription_confirmed', r)));
    const firstEpoch = seen.epoch;
    assert.equal(typeof firstEpoch, 'string');
    for (let i = 0; i < 5; i++) await publish(sys, `old_${i}`, 'acct_h');
    await waitUntil(10000, 'five events', () => seen.seqs.length === 5);
    assert.deepEqual(seen.seqs, [1, 2, 3, 4, 5]);

    // NATS loses its data (a volume removed): the stream is recreated and numbers from 1 again.
    await sys.stopNats();
    rmSync(sys.storeDir, { recursive: true, force: true });
    sys.startNats();
    await waitHttp(`${sys.ingestUrl}/readyz`, 'ingest', 30000);
    for (let i = 0; i < 8; i++) await publish(sys, `new_${i}`, 'acct_h');

    // The connected client is told by a closed transport; it resumes with its old since and
    // epoch and is told the history changed, with nothing replayed.
    await waitUntil(30000, 'the resume after the history changed', () => seen.replays.length >= 1);
    const [changed] = seen.replays;
    assert.equal(changed.complete, false, JSON.stringify(changed));
    assert.equal(changed.reason, 'history_changed');
    assert.equal(changed.count, 0);
    assert.notEqual(changed.epoch, firstEpoch);
    assert.ok(!seen.disconnects.includes('io server disconnect'), `${seen.disconnects}`);
    assert.deepEqual(seen.seqs.slice(0, 5), [1, 2, 3, 4, 5]);
    assert.ok(seen.seqs.slice(5).every((s) => s > 5), `no seq of the new history at or below the old since: ${seen.seqs}`);
    socket.close();

    // A client that was away gets the same answer.
    const away = await resumeFrom(g, { userId: 'away', account: 'acct_h', since: 5, epoch: firstEpoch });
    assert.deepEqual(away.replayed, []);
    assert.equal(away.done.reason, 'history_changed');
    assert.equal(away.done.complete, false);
  } finally {
    await sys.stop();
  }
});

test('auth_expired, then a fresh authenticate: the socket stays and keeps receiving', async () => {
  const sys = await startSystem({ gateways: [{ AUTH_EXPIRY_GRACE_SECS: '3', HEARTBEAT_TIMEOUT_SECS: '0' }] });
  try {
    const g = sys.gateways[0];
    const socket = connect(g, { auth: { token: token({ userId: 'renewer', accounts: ['acct_r'], ttl: 2 }) } });
    await next(socket, 'connect');
    // The sentinel: a token made after the renewer's, so it expires no sooner, never renewed.
    const sentinel = connect(g, { auth: { token: token({ userId: 'sentinel', accounts: ['acct_r'], ttl: 2 }) } });
    await next(sentinel, 'connect');
    await request(socket, 'subscribe', { eventTypes: ['comments'] });
    const expired = await next(socket, 'auth_expired', () => true, 10000);
    assert.deepEqual(Object.keys(expired), ['timestamp']);
    assert.ok(Math.abs(expired.timestamp - Date.now()) < 5000, 'a Unix ms timestamp');
    const renewed = await request(socket, 'authenticate', { token: token({ userId: 'renewer', accounts: ['acct_r'] }), userId: 'renewer' });
    assert.equal(renewed.message, 'Authentication successful');
    // The sentinel is dropped once its grace period is over, so the renewer's old token's is too:
    // the renewed socket is still here.
    const reason = await next(sentinel, 'disconnect', () => true, 15000);
    assert.equal(reason, 'io server disconnect');
    assert.ok(socket.connected, 'the renewed socket stays');
    const id = await publish(sys, 'after_renewal', 'acct_r');
    const got = await next(socket, 'webhook_event', (e) => e.id === id);
    assert.equal(got.accountId, 'acct_r');
    const info = await request(socket, 'get_subscriptions', {});
    assert.deepEqual(info.subscriptions, ['comments'], 'the subscriptions kept');
    socket.close();
  } finally {
    await sys.stop();
  }
});
