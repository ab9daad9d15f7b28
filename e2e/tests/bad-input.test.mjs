// Bad input costs no good event. Between two good webhooks, every kind of bad input is thrown at
// ingest and at the gateway, each answered as documented; a client subscribed all along gets
// exactly the two good events, and a client resuming from the start replays exactly the two.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startSystem, connect, next, request, token, postWebhook, seedBody, sign, sleep, waitUntil, authed,
} from '../lib/harness.mjs';

const ACCOUNT = 'acct_witness';

test('bad input between two good webhooks: each refused as documented, nothing good lost', async () => {
  const sys = await startSystem({
    ingestEnv: { WEBHOOK_MAX_BODY_BYTES: '4096' },
    gateways: [{ MAX_CLIENT_PAYLOAD_BYTES: '2048', SOCKET_RATE_LIMIT: '5', SOCKET_RATE_BURST: '10' }],
  });
  const sockets = [];
  try {
    const [g] = sys.gateways;
    const witness = connect(g, { auth: { token: token({ userId: 'witness', accounts: [ACCOUNT] }) } });
    sockets.push(witness);
    const got = [];
    witness.on('webhook_event', (e) => got.push({ id: e.id, seq: e.seq }));
    await next(witness, 'connect');
    await request(witness, 'subscribe', { eventTypes: ['comments'], userId: 'witness', timestamp: Date.now() });

    const good = async (id) => {
      const body = seedBody({ id, accountId: ACCOUNT });
      const res = await postWebhook(sys, body);
      assert.equal(res.status, 200, res.body);
      return `comments:${id}`;
    };
    const expected = [await good('good_a')];

    // Ingest: a wrong signature, none, a body over the limit, a signed body that is not JSON,
    // and a flood of forged POSTs.
    const body = seedBody({ id: 'forged', accountId: ACCOUNT });
    let res = await postWebhook(sys, body, sign(body, 'not-the-app-secret'));
    assert.equal(res.status, 401);
    assert.match(JSON.parse(res.body).error, /signature/i);
    res = await fetch(`${sys.ingestUrl}/api/webhooks/instagram`, {
      method: 'POST', body, headers: { 'content-type': 'application/json' }, signal: AbortSignal.timeout(10000),
    });
    assert.equal(res.status, 401);
    assert.match((await res.json()).error, /X-Hub-Signature-256/i);
    const big = seedBody({ id: 'too_big', accountId: ACCOUNT, text: 'x'.repeat(5000) });
    res = await postWebhook(sys, big);
    assert.equal(res.status, 413);
    assert.match(JSON.parse(res.body).error, /WEBHOOK_MAX_BODY_BYTES/);
    const garbage = Buffer.from('{"object":"instagram","entry":[{"id":');
    res = await postWebhook(sys, garbage);
    assert.equal(res.status, 200, 'a signed body is kept, so that Meta does not retry it');
    const kept = JSON.parse(res.body);
    assert.deepEqual(kept.events, [], 'it publishes no event');
    const flood = await Promise.all(Array.from({ length: 200 }, (_, i) => {
      const b = seedBody({ id: `flood_${i}`, accountId: ACCOUNT });
      return postWebhook(sys, b, sign(b, 'forged')).then((r) => r.status, (e) => `error ${e.message}`);
    }));
    assert.deepEqual([...new Set(flood)], [401], 'every forged POST refused, none dropped unanswered');

    // Gateway: a forged token, an alg none token, a request flood, an oversized payload.
    const forged = connect(g, { auth: { token: token({ userId: 'mallory', accounts: [ACCOUNT], secret: 'wrong-secret-0123456789abcdef' }) } });
    sockets.push(forged);
    assert.match((await next(forged, 'connect_error')).message, /Invalid token/);
    const header = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
    const claims = Buffer.from(JSON.stringify({ userId: 'mallory', accounts: [ACCOUNT], exp: Math.floor(Date.now() / 1000) + 600 })).toString('base64url');
    const unsigned = connect(g, { auth: { token: `${header}.${claims}.` } });
    sockets.push(unsigned);
    assert.match((await next(unsigned, 'connect_error')).message, /Invalid token/);
    const flooder = await authed(g, { userId: 'flooder', accounts: [ACCOUNT] });
    sockets.push(flooder);
    const replies = await Promise.all(Array.from({ length: 60 }, (_, i) =>
      request(flooder, 'heartbeat', { timestamp: i, clientId: 'flood' })));
    assert.ok(replies.filter((r) => r?.message === 'Too many requests; slow down').length >= 30, 'the flood is refused');
    const oversized = await authed(g, { userId: 'oversized', accounts: [ACCOUNT] });
    sockets.push(oversized);
    const cut = next(oversized, 'disconnect');
    oversized.emit('subscribe', { eventTypes: ['comments'], userId: 'oversized', timestamp: Date.now(), pad: 'x'.repeat(4096) });
    await cut;

    expected.push(await good('good_b'));
    // A sentinel, published last: delivery is in seq order, so once it is here a late or
    // duplicated event would be too.
    expected.push(await good('sentinel'));
    await waitUntil(10000, 'the witness to get the sentinel', () => got.some((e) => e.id === expected.at(-1)));
    assert.deepEqual(got.map((e) => e.id), expected, 'exactly the good events, once, in order');
    assert.ok(witness.connected, 'the witness was never disconnected');

    // What was acknowledged is kept: a resume from the start replays exactly the same.
    const resumer = connect(g, { auth: { token: token({ userId: 'resumer', accounts: [ACCOUNT] }) } });
    sockets.push(resumer);
    const replayed = [];
    resumer.on('webhook_event', (e) => replayed.push(e.id));
    await next(resumer, 'connect');
    await request(resumer, 'subscribe', { eventTypes: ['comments'], userId: 'resumer', timestamp: Date.now(), since: 0 });
    const done = await next(resumer, 'replay_complete');
    assert.deepEqual([done.count, done.complete], [3, true]);
    assert.deepEqual(replayed, expected);
  } finally {
    sockets.forEach((s) => s.close());
    await sys.stop();
  }
});
