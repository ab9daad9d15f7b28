// The gateway's Socket.IO protocol (docs/protocol.md) with the official socket.io-client,
// against real nats-server, instantchat-ingest and instantchat-gateway processes.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import jwt from 'jsonwebtoken';
import WebSocket from 'ws';
import {
  startSystem, connect, authed, next, request, token, postWebhook, fixture, seedBody, sleep, waitUntil, within,
  ORIGIN, JWT_SECRET,
} from '../lib/harness.mjs';

let sys;
let gw;
before(async () => {
  sys = await startSystem({ gateways: [{ MAX_CONNECTIONS_PER_USER: '3', SOCKET_RATE_LIMIT: '5', SOCKET_RATE_BURST: '20' }] });
  gw = sys.gateways[0];
});
after(async () => { await sys?.stop(); });

const closeAll = (...sockets) => sockets.forEach((s) => s.close());

/**
 * Authenticates `userId`, retrying while the gateway answers "Too many connections": a closed
 * socket's slot is given back when the server has processed the close, a moment later. A slot
 * that is never given back still fails, after `ms`.
 */
async function authedOnceFree(userId, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const socket = connect(gw);
    await next(socket, 'connect');
    const failed = new Promise((resolve) => socket.once('auth_failed', (f) => resolve({ failed: f })));
    const acked = socket.emitWithAck('authenticate', { token: token({ userId }), userId, timestamp: Date.now() })
      .then((reply) => ({ reply }));
    const outcome = await within(10000, `authenticate ${userId}`, Promise.race([failed, acked]));
    if (outcome.reply?.message) return socket;
    socket.close();
    if (Date.now() > deadline) {
      throw new Error(`${userId} still refused after ${ms} ms: ${JSON.stringify(outcome)}`);
    }
    await sleep(50);
  }
}

describe('the frontend\'s flow', () => {
  for (const transport of ['websocket', 'polling']) {
    test(`connect, authenticate, subscribe, receive a signed webhook (${transport})`, async () => {
      const socket = connect(gw, { transports: [transport] });
      await next(socket, 'connect');
      socket.emit('authenticate', { token: token({ userId: 'test_user' }), userId: 'test_user', timestamp: Date.now() });
      const auth = await next(socket, 'auth_success');
      assert.equal(auth.message, 'Authentication successful');
      assert.equal(auth.userId, 'test_user');
      assert.equal(typeof auth.timestamp, 'number');
      socket.emit('subscribe', { eventTypes: ['comments', 'messages'], userId: 'test_user', timestamp: Date.now() });
      const confirmed = await next(socket, 'subscription_confirmed');
      assert.deepEqual([...confirmed.eventTypes].sort(), ['comments', 'messages']);

      if (transport === 'websocket') {
        // A real Meta body (the dashboard's comment test), byte for byte with its signature.
        const { body, signature } = fixture('f01');
        assert.equal((await postWebhook(sys, body, signature)).status, 200);
        const event = await next(socket, 'webhook_event', (e) => e.id === 'comments:17865799348089039');
        assert.equal(event.eventType, 'comments');
        assert.equal(event.accountId, '0');
        assert.deepEqual(event.sender, { id: '232323232', username: 'test' });
        assert.equal(event.content, 'This is an example.');
        assert.match(event.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
        assert.equal(typeof event.seq, 'number');
        assert.equal(event.details.media.id, '123123123');
      } else {
        // The simplified body (the same fixture again would be deduplicated).
        assert.equal((await postWebhook(sys, seedBody({ id: 'poll_1', accountId: 'acct_poll', text: 'over polling' }))).status, 200);
        const event = await next(socket, 'webhook_event', (e) => e.id === 'comments:poll_1');
        assert.equal(event.content, 'over polling');
        assert.deepEqual(event.sender, { id: 'sender_1', username: 'ana' });
        assert.equal(event.accountId, 'acct_poll');
      }
      closeAll(socket);
    });
  }
});

test('handshake auth: io(url, {auth: {token}}) is authenticated at connect', async () => {
  const socket = connect(gw, { auth: { token: token({ userId: 'hs_user', accounts: ['acct_hs'] }) } });
  await next(socket, 'connect');
  const confirmed = await request(socket, 'subscribe', { eventTypes: ['comments'], userId: 'hs_user', timestamp: Date.now() });
  assert.deepEqual(confirmed.eventTypes, ['comments']);
  const body = seedBody({ id: 'hs1', accountId: 'acct_hs', text: 'via handshake' });
  assert.equal((await postWebhook(sys, body)).status, 200);
  const event = await next(socket, 'webhook_event');
  assert.equal(event.id, 'comments:hs1');
  assert.equal(event.content, 'via handshake');
  closeAll(socket);
});

test('handshake with a bad token is refused with connect_error', async () => {
  const socket = connect(gw, { auth: { token: token({ secret: 'another-secret-0123456789' }) } });
  const err = await next(socket, 'connect_error');
  assert.equal(err.message, 'Invalid token');
  closeAll(socket);
});

test('handshake naming another user, as a string, a number or neither, is refused with User ID mismatch', async () => {
  for (const userId of ['someone_else', 4242, true, { id: '17' }]) {
    const socket = connect(gw, { auth: { token: token({ userId: '17' }), userId } });
    const err = await next(socket, 'connect_error');
    assert.equal(err.message, 'User ID mismatch', `userId ${JSON.stringify(userId)}`);
    closeAll(socket);
  }
  const numeric = connect(gw, { auth: { token: token({ userId: '17' }), userId: 17 } });
  await next(numeric, 'connect');
  const confirmed = await request(numeric, 'subscribe', { eventTypes: ['comments'], userId: 17, timestamp: 1 });
  assert.deepEqual(confirmed.eventTypes, ['comments']);
  closeAll(numeric);
});

test('every reply of the table, to the event and to the ack', async () => {
  const socket = await authed(gw, { userId: 'table_user' });
  const sub = await request(socket, 'subscribe', { eventTypes: ['comments', 'mentions'], userId: 'table_user', timestamp: 1 });
  assert.deepEqual([...sub.eventTypes].sort(), ['comments', 'mentions']);
  const unsub = await request(socket, 'unsubscribe', { eventTypes: ['comments'], userId: 'table_user', timestamp: 2 });
  assert.deepEqual(unsub.eventTypes, ['mentions']);
  const info = await request(socket, 'get_subscriptions', { userId: 'table_user', timestamp: 3 });
  assert.equal(info.status, 'connected');
  assert.deepEqual(info.subscriptions, ['mentions']);
  const test_ = await request(socket, 'test_connection', { userId: 'table_user', timestamp: 4 });
  assert.deepEqual(test_.subscriptions, ['mentions']);
  const beat = await request(socket, 'heartbeat', { timestamp: 5, clientId: 'instantchat-frontend' });
  assert.equal(typeof beat.timestamp, 'number');
  assert.ok(!Number.isNaN(Date.parse(beat.serverTime)));
  // The same replies also arrive as events.
  for (const name of ['subscription_confirmed', 'connection_info', 'heartbeat_response']) {
    assert.ok(socket.events.some((e) => e.event === name), `${name} emitted`);
  }
  closeAll(socket);
});

test('subscribe or unsubscribe before authentication: error Not authenticated', async () => {
  const socket = connect(gw);
  await next(socket, 'connect');
  const reply = await request(socket, 'subscribe', { eventTypes: ['comments'], userId: 'x', timestamp: 1 });
  assert.equal(reply.message, 'Not authenticated');
  assert.ok(socket.events.some((e) => e.event === 'error' && e.data.message === 'Not authenticated'));
  const unsubscribed = await request(socket, 'unsubscribe', { eventTypes: ['comments'], userId: 'x', timestamp: 2 });
  assert.equal(unsubscribed.message, 'Not authenticated');
  closeAll(socket);
});

describe('bad tokens get auth_failed, then disconnect', () => {
  const cases = {
    expired: () => jwt.sign({ userId: 'u', accounts: ['*'], exp: Math.floor(Date.now() / 1000) - 10 }, JWT_SECRET),
    'wrongly signed': () => token({ userId: 'u', secret: 'not-the-gateway-secret-012345' }),
    'alg none': () => jwt.sign({ userId: 'u', accounts: ['*'], exp: Math.floor(Date.now() / 1000) + 60 }, null, { algorithm: 'none' }),
    'another user': () => token({ userId: 'someone_else' }),
  };
  const reasons = { expired: 'Token expired', 'another user': 'User ID mismatch' };
  for (const [name, make] of Object.entries(cases)) {
    test(name, async () => {
      const socket = connect(gw);
      await next(socket, 'connect');
      const disconnected = next(socket, 'disconnect');
      socket.emit('authenticate', { token: make(), userId: 'u', timestamp: Date.now() });
      const failed = await next(socket, 'auth_failed');
      assert.equal(failed.reason, reasons[name] ?? 'Invalid token');
      assert.equal(typeof failed.timestamp, 'number');
      await disconnected;
      closeAll(socket);
    });
  }
});

test('malformed and oversized payloads get error and leave the subscriptions unchanged', async () => {
  const socket = await authed(gw, { userId: 'bad_payloads' });
  await request(socket, 'subscribe', { eventTypes: ['comments'], userId: 'bad_payloads', timestamp: 1 });
  const types = 'eventTypes must be a non-empty array of at most 32 names matching [a-z_]{1,64}';
  const bad = [
    [undefined, 'subscribe needs an object payload'], ['not an object', 'subscribe needs an object payload'],
    [{ eventTypes: [] }, types], [{ eventTypes: 'comments' }, types], [{ eventTypes: ['Comments!'] }, types],
    [{ eventTypes: Array.from({ length: 33 }, (_, i) => `t_${String.fromCharCode(97 + (i % 26))}`) }, types],
    [{ eventTypes: ['messages'], userId: 'somebody_else' }, 'userId does not match the authenticated user'],
    [{ eventTypes: ['messages'], since: -1 }, 'since must be a non-negative integer'],
    [{ eventTypes: ['messages'], accountIds: ['not an id!'] }, 'Not an account id: "not an id!"'],
    // Named, not echoed whole: the reply quotes 64 characters of it.
    [{ eventTypes: ['messages'], accountIds: ['a'.repeat(10_000)] }, `Not an account id: "${'a'.repeat(64)}"... (`],
  ];
  for (const [payload, says] of bad) {
    const errorEvent = next(socket, 'error');
    const reply = await request(socket, 'subscribe', payload);
    assert.ok(reply.message.startsWith(says), `${JSON.stringify(payload)?.slice(0, 200)}: ${reply.message}`);
    assert.ok(reply.message.length <= 200, `a short message: ${reply.message.length} characters`);
    assert.deepEqual(await errorEvent, reply, 'the same error as an event');
  }
  const info = await request(socket, 'get_subscriptions', { userId: 'bad_payloads', timestamp: 2 });
  assert.deepEqual(info.subscriptions, ['comments']);

  // Over MAX_CLIENT_PAYLOAD_BYTES: the transport closes this socket; the server stays up.
  const closed = next(socket, 'disconnect');
  socket.emit('subscribe', { eventTypes: ['comments'], padding: 'x'.repeat(100_000) });
  await closed;
  const other = await authed(gw, { userId: 'bystander' });
  const beat = await request(other, 'heartbeat', { timestamp: 1, clientId: 'c' });
  assert.ok(beat.serverTime);
  closeAll(socket, other);
});

test('accounts: a client never receives another account, and cannot ask for one', async () => {
  const a = await authed(gw, { userId: 'owner_a', accounts: ['acct_a'] });
  const b = await authed(gw, { userId: 'owner_b', accounts: ['acct_b'] });
  const refused = await request(a, 'subscribe', { eventTypes: ['comments'], userId: 'owner_a', accountIds: ['acct_b'], timestamp: 1 });
  assert.equal(refused.message, 'Account not allowed: acct_b');
  await request(a, 'subscribe', { eventTypes: ['comments'], userId: 'owner_a', timestamp: 1 });
  await request(b, 'subscribe', { eventTypes: ['comments'], userId: 'owner_b', timestamp: 1 });
  assert.equal((await postWebhook(sys, seedBody({ id: 'for_b', accountId: 'acct_b' }))).status, 200);
  assert.equal((await postWebhook(sys, seedBody({ id: 'for_a', accountId: 'acct_a' }))).status, 200);
  const ea = await next(a, 'webhook_event');
  const eb = await next(b, 'webhook_event');
  assert.equal(ea.id, 'comments:for_a');
  assert.equal(eb.id, 'comments:for_b');
  // Sentinels, one per account, published last: in seq order, so a stray event would be here.
  for (const [socket, account] of [[a, 'acct_a'], [b, 'acct_b']]) {
    assert.equal((await postWebhook(sys, seedBody({ id: `end_${account}`, accountId: account }))).status, 200);
    await next(socket, 'webhook_event', (e) => e.id === `comments:end_${account}`);
  }
  assert.deepEqual(a.events.filter((e) => e.event === 'webhook_event').map((e) => e.data.id), ['comments:for_a', 'comments:end_acct_a']);
  assert.deepEqual(b.events.filter((e) => e.event === 'webhook_event').map((e) => e.data.id), ['comments:for_b', 'comments:end_acct_b']);
  closeAll(a, b);
});

test('type filter and several connections of one user each get the event once', async () => {
  const one = await authed(gw, { userId: 'multi', accounts: ['acct_m'] });
  const two = await authed(gw, { userId: 'multi', accounts: ['acct_m'] });
  const three = await authed(gw, { userId: 'multi', accounts: ['acct_m'] });
  await request(one, 'subscribe', { eventTypes: ['comments'], userId: 'multi', timestamp: 1 });
  await request(two, 'subscribe', { eventTypes: ['comments', 'messages'], userId: 'multi', timestamp: 1 });
  await request(three, 'subscribe', { eventTypes: ['messages'], userId: 'multi', timestamp: 1 });
  await postWebhook(sys, seedBody({ id: 'c1', accountId: 'acct_m' }));
  await postWebhook(sys, seedBody({ id: 'm1', eventType: 'messages', accountId: 'acct_m' }));
  // Sentinels of both types, published last (delivery is in seq order).
  await postWebhook(sys, seedBody({ id: 'c_end', accountId: 'acct_m' }));
  await postWebhook(sys, seedBody({ id: 'm_end', eventType: 'messages', accountId: 'acct_m' }));
  await next(one, 'webhook_event', (e) => e.id === 'comments:c_end');
  await next(two, 'webhook_event', (e) => e.id === 'messages:m_end');
  await next(three, 'webhook_event', (e) => e.id === 'messages:m_end');
  const ids = (s) => s.events.filter((e) => e.event === 'webhook_event').map((e) => e.data.id);
  assert.deepEqual(ids(one), ['comments:c1', 'comments:c_end'], 'comments only');
  assert.deepEqual(ids(two), ['comments:c1', 'messages:m1', 'comments:c_end', 'messages:m_end'], 'both types, each once: the same comment as the first socket');
  assert.deepEqual(ids(three), ['messages:m1', 'messages:m_end'], 'messages only');
  closeAll(one, two, three);
});

test('too many connections for one user: the extra one is refused', async () => {
  const held = [];
  for (let i = 0; i < 3; i++) held.push(await authed(gw, { userId: 'greedy' }));
  const extra = connect(gw);
  await next(extra, 'connect');
  const failed = next(extra, 'auth_failed');
  extra.emit('authenticate', { token: token({ userId: 'greedy' }), userId: 'greedy', timestamp: Date.now() });
  assert.equal((await failed).reason, 'Too many connections for this user');
  held[0].close();
  const again = await authedOnceFree('greedy');
  closeAll(...held, extra, again);
});

test('a request flood from one socket is refused; other clients are unaffected', async () => {
  const flooder = await authed(gw, { userId: 'flooder' });
  const calm = await authed(gw, { userId: 'calm' });
  const replies = await Promise.all(Array.from({ length: 60 }, (_, i) =>
    request(flooder, 'heartbeat', { timestamp: i, clientId: 'flood' })));
  const refused = replies.filter((r) => r.message === 'Too many requests; slow down');
  assert.ok(refused.length >= 30, `most of the flood refused, got ${refused.length}`);
  assert.ok(flooder.connected, 'refused, not disconnected');
  const beat = await request(calm, 'heartbeat', { timestamp: 1, clientId: 'calm' });
  assert.ok(beat.serverTime);
  closeAll(flooder, calm);
});

/** The answer to a new engine.io session's first request from `origin`, over polling or as a WebSocket upgrade. */
async function originAnswer(gateway, origin, transport = 'polling') {
  if (transport === 'polling') {
    const res = await fetch(`${gateway.url}/socket.io/?EIO=4&transport=polling`, { headers: { Origin: origin }, signal: AbortSignal.timeout(5000) });
    return { status: res.status, allow: res.headers.get('access-control-allow-origin'), body: await res.text() };
  }
  return within(5000, 'WebSocket upgrade answer', new Promise((resolve) => {
    const ws = new WebSocket(`${gateway.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`, { headers: { Origin: origin } });
    ws.on('open', () => { ws.close(); resolve({ status: 101 }); });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    ws.on('error', () => {});
  }));
}

test('a disallowed CORS origin is refused; an allowed one connects', async () => {
  for (const transport of ['polling', 'websocket']) {
    const evil = connect(gw, { transports: [transport], extraHeaders: { Origin: 'http://evil.example' } });
    await next(evil, 'connect_error');
    assert.ok(!evil.connected);
    evil.close();
    // What the refusal is: 403, saying which setting lets the origin in, and no CORS header.
    const answer = await originAnswer(gw, 'http://evil.example', transport);
    assert.equal(answer.status, 403, `${transport}: ${JSON.stringify(answer)}`);
    assert.deepEqual(JSON.parse(answer.body), { error: 'origin not allowed; add it to CLIENT_URL' });
    assert.ok(!answer.allow, `${transport}: no access-control-allow-origin for a refused origin`);
  }
  const res = await fetch(`${gw.url}/socket.io/?EIO=4&transport=polling`, { headers: { Origin: ORIGIN } });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('access-control-allow-origin'), ORIGIN);
  const good = connect(gw, { transports: ['polling'], extraHeaders: { Origin: ORIGIN } });
  await next(good, 'connect');
  good.close();
});

test('a comma-separated CLIENT_URL lets in each of its origins (with or without a trailing slash), and only those', async () => {
  const several = await startSystem({ gateways: [{ CLIENT_URL: 'https://app.example.com, https://admin.example.com/' }] });
  try {
    const g = several.gateways[0];
    for (const origin of ['https://app.example.com', 'https://admin.example.com']) {
      for (const transport of ['polling', 'websocket']) {
        const answer = await originAnswer(g, origin, transport);
        assert.equal(answer.status, transport === 'polling' ? 200 : 101, `${origin} over ${transport}: ${JSON.stringify(answer)}`);
        if (transport === 'polling') assert.equal(answer.allow, origin);
      }
    }
    for (const origin of ['https://evil.example.com', 'https://app.example.com.evil.example', 'http://app.example.com']) {
      assert.equal((await originAnswer(g, origin)).status, 403, origin);
    }
  } finally {
    await several.stop();
  }
});

test('resume: a client offline for a while gets the gap with since, then replay_complete', async () => {
  const first = await authed(gw, { userId: 'resumer', accounts: ['acct_r'] });
  await request(first, 'subscribe', { eventTypes: ['comments'], userId: 'resumer', timestamp: 1 });
  await postWebhook(sys, seedBody({ id: 'r1', accountId: 'acct_r' }));
  const seen = await next(first, 'webhook_event');
  first.close();
  for (const id of ['r2', 'r3']) await postWebhook(sys, seedBody({ id, accountId: 'acct_r' }));
  await postWebhook(sys, seedBody({ id: 'other', accountId: 'acct_elsewhere' }));
  const again = await authed(gw, { userId: 'resumer', accounts: ['acct_r'] });
  const done = next(again, 'replay_complete');
  await request(again, 'subscribe', { eventTypes: ['comments'], userId: 'resumer', timestamp: 2, since: seen.seq });
  const complete = await done;
  assert.deepEqual({ since: complete.since, count: complete.count, complete: complete.complete },
    { since: seen.seq, count: 2, complete: true });
  const ids = again.events.filter((e) => e.event === 'webhook_event').map((e) => e.data.id);
  assert.deepEqual(ids, ['comments:r2', 'comments:r3']);
  await postWebhook(sys, seedBody({ id: 'r4', accountId: 'acct_r' }));
  await next(again, 'webhook_event', (e) => e.id === 'comments:r4');
  const all = again.events.filter((e) => e.event === 'webhook_event').map((e) => e.data);
  assert.deepEqual(all.map((e) => e.id), ['comments:r2', 'comments:r3', 'comments:r4'], 'live after the replay, none twice');
  assert.ok(all.every((e, i) => i === 0 || e.seq > all[i - 1].seq), 'in seq order');
  closeAll(again);
});

test("one socket's requests are handled in the order it sent them", async () => {
  const replies = ['auth_success', 'subscription_confirmed', 'connection_info', 'error'];
  for (let round = 0; round < 10; round++) {
    const user = `ordered_${round}`;
    const socket = connect(gw);
    await next(socket, 'connect');
    // Sent back to back, without waiting for replies: each must see what the one before left.
    const auth = request(socket, 'authenticate', { token: token({ userId: user }), userId: user, timestamp: 1 });
    const sub = request(socket, 'subscribe', { eventTypes: ['comments', 'messages'], userId: user, timestamp: 2 });
    const unsub = request(socket, 'unsubscribe', { eventTypes: ['comments'], userId: user, timestamp: 3 });
    const info = request(socket, 'get_subscriptions', { userId: user, timestamp: 4 });
    assert.equal((await auth).message, 'Authentication successful', `round ${round}`);
    assert.deepEqual([...(await sub).eventTypes].sort(), ['comments', 'messages'], `round ${round}`);
    assert.deepEqual((await unsub).eventTypes, ['messages'], `round ${round}`);
    assert.deepEqual((await info).subscriptions, ['messages'], `round ${round}`);
    assert.deepEqual(socket.events.map((e) => e.event).filter((e) => replies.includes(e)),
      ['auth_success', 'subscription_confirmed', 'subscription_confirmed', 'connection_info'], `round ${round}`);
    closeAll(socket);
  }
});

test('resume with auth.since: the subscribes after the first do not cut the replay short', async () => {
  const user = 'resumer_twice';
  const first = await authed(gw, { userId: user, accounts: ['acct_rt'] });
  await request(first, 'subscribe', { eventTypes: ['comments'], userId: user, timestamp: 1 });
  await postWebhook(sys, seedBody({ id: 't0', accountId: 'acct_rt' }));
  const seen = await next(first, 'webhook_event');
  first.close();
  const missed = Array.from({ length: 100 }, (_, i) => `comments:t${i + 1}`);
  for (const id of missed) await postWebhook(sys, seedBody({ id: id.slice(9), accountId: 'acct_rt' }));
  const again = connect(gw, { auth: { token: token({ userId: user, accounts: ['acct_rt'] }), since: seen.seq } });
  await next(again, 'connect');
  const done = next(again, 'replay_complete');
  // The first subscribe starts the replay after auth.since; the next ones, as an app subscribing
  // type by type sends them, arrive while it runs and must not move the socket past it.
  await request(again, 'subscribe', { eventTypes: ['comments'], userId: user, timestamp: 2 });
  await request(again, 'subscribe', { eventTypes: ['messages'], userId: user, timestamp: 3 });
  await request(again, 'subscribe', { eventTypes: ['comments', 'messages'], userId: user, timestamp: 4 });
  const complete = await done;
  assert.deepEqual({ count: complete.count, complete: complete.complete }, { count: missed.length, complete: true });
  await postWebhook(sys, seedBody({ id: 'live', accountId: 'acct_rt' }));
  await next(again, 'webhook_event', (e) => e.id === 'comments:live');
  const ids = again.events.filter((e) => e.event === 'webhook_event').map((e) => e.data.id);
  assert.deepEqual(ids, [...missed, 'comments:live']);
  closeAll(again);
});

test('a socket that closes while it authenticates gives its connection slot back', async () => {
  // MAX_CONNECTIONS_PER_USER is 3 here: a slot kept by any of these would lock the user out.
  // The heartbeats ahead of the authenticate give the close time to overtake it.
  for (let i = 0; i < 30; i++) {
    const socket = connect(gw);
    await next(socket, 'connect');
    for (let b = 0; b < 10; b++) socket.emit('heartbeat', { timestamp: b, clientId: 'hasty' });
    socket.emit('authenticate', { token: token({ userId: 'hasty' }), userId: 'hasty', timestamp: i });
    socket.close();
  }
  const held = [];
  for (let i = 0; i < 3; i++) held.push(await authedOnceFree('hasty'));
  closeAll(...held);
});

test('a socket that closes during the handshake gives its connection slot back', async () => {
  // The Socket.IO CONNECT with a token, and the transport gone before the server's answer: the
  // middleware has counted the socket, and socketioxide runs no disconnect handler for it.
  const auth = JSON.stringify({ token: token({ userId: 'blink' }) });
  for (let i = 0; i < 30; i++) {
    const ws = new WebSocket(`${gw.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
    await within(5000, 'the engine.io open packet', new Promise((resolve, reject) => {
      ws.on('message', (m) => {
        if (String(m).startsWith('0')) {
          ws.send(`40${auth}`);
          ws.terminate();
          resolve();
        }
      });
      ws.on('error', reject);
    }));
  }
  const held = [];
  for (let i = 0; i < 3; i++) held.push(await authedOnceFree('blink'));
  closeAll(...held);
});

describe('engine.io heartbeat', () => {
  // The gateway pings every PING_INTERVAL_SECS; the client must answer within PING_TIMEOUT_SECS.
  let beat;
  before(async () => {
    beat = await startSystem({ gateways: [{ PING_INTERVAL_SECS: '1', PING_TIMEOUT_SECS: '1', AUTH_TIMEOUT_SECS: '60' }] });
  });
  after(async () => { await beat?.stop(); });

  for (const transports of [['websocket'], ['polling', 'websocket']]) {
    test(`socket.io-client answers the pings and stays connected (${transports.join(', then ')})`, async () => {
      const socket = connect(beat.gateways[0], { transports });
      let pings = 0;
      socket.io.on('ping', () => { pings += 1; });
      await next(socket, 'connect');
      // Four pings, 1 s apart, each with 1 s to be answered: an answer the gateway did not take
      // would have closed the connection before the next ping came.
      await waitUntil(15000, 'four pings', () => pings >= 4 || !socket.connected);
      assert.ok(socket.connected, `still connected after ${pings} pings`);
      assert.equal(socket.io.engine.transport.name, 'websocket');
      socket.close();
    });
  }

  test('a WebSocket client that stops answering pings is closed after the ping timeout', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${beat.gateways[0].port}/socket.io/?EIO=4&transport=websocket`);
    const frames = [];
    let answered = 0;
    ws.on('message', (data) => {
      const text = String(data);
      frames.push(text);
      // The handshake, then one ping answered; silence after that.
      if (text.startsWith('0{')) ws.send('40');
      if (text === '2' && answered === 0) {
        answered += 1;
        ws.send('3');
      }
    });
    const closed = new Promise((resolve) => ws.once('close', resolve));
    await within(5000, 'WebSocket open', new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    }));
    const opened = Date.now();
    await within(10000, 'the server closing the WebSocket', closed);
    const lasted = Date.now() - opened;
    // Ping at 1 s (answered), ping at 2 s (not), closed at about 3 s.
    assert.ok(lasted >= 2500, `closed after ${lasted} ms, before the unanswered ping timed out`);
    assert.ok(lasted < 6000, `closed after ${lasted} ms`);
    assert.equal(frames.filter((f) => f === '2').length, 2, `frames: ${frames.join(' | ')}`);
    assert.equal(frames.at(-1), '1', 'the engine.io close packet comes last');
  });
});

describe('timeouts', () => {
  let quick;
  before(async () => {
    quick = await startSystem({ gateways: [{
      AUTH_TIMEOUT_SECS: '1', HEARTBEAT_TIMEOUT_SECS: '2', AUTH_EXPIRY_GRACE_SECS: '1', PING_INTERVAL_SECS: '7', PING_TIMEOUT_SECS: '3',
    }] });
  });
  after(async () => { await quick?.stop(); });

  test('PING_INTERVAL_SECS and PING_TIMEOUT_SECS reach socket.io-client in the handshake', async () => {
    const socket = connect(quick.gateways[0]);
    await next(socket, 'connect');
    // engine.io-client keeps the handshake's values as _pingInterval and _pingTimeout.
    assert.equal(socket.io.engine._pingInterval, 7000);
    assert.equal(socket.io.engine._pingTimeout, 3000);
    socket.close();
  });

  test('a socket that never authenticates is disconnected after AUTH_TIMEOUT_SECS', async () => {
    const socket = connect(quick.gateways[0]);
    const disconnected = next(socket, 'disconnect', () => true, 5000);
    await next(socket, 'connect');
    const failed = await next(socket, 'auth_failed', () => true, 5000);
    assert.equal(failed.reason, 'Authentication timeout');
    await disconnected;
  });

  test('a silent authenticated socket is disconnected after HEARTBEAT_TIMEOUT_SECS; a beating one stays', async () => {
    const silent = await authed(quick.gateways[0], { userId: 'silent' });
    const beating = await authed(quick.gateways[0], { userId: 'beating' });
    let dropped = false;
    beating.on('disconnect', () => { dropped = true; });
    const timer = setInterval(() => beating.emit('heartbeat', { timestamp: Date.now(), clientId: 'b' }), 500);
    await next(silent, 'disconnect', () => true, 8000);
    // The silent one is gone. A second silent one, connected now, is the sentinel: when it is
    // dropped in turn, another whole timeout and check have passed, which a wrong disconnect of
    // the beating one would not have outlived.
    const sentinel = await authed(quick.gateways[0], { userId: 'silent_sentinel' });
    await next(sentinel, 'disconnect', () => true, 8000);
    const reply = await request(beating, 'heartbeat', { timestamp: Date.now(), clientId: 'b' });
    assert.ok(reply.serverTime, JSON.stringify(reply));
    clearInterval(timer);
    assert.ok(beating.connected);
    assert.ok(!dropped, 'the beating socket was never disconnected');
    closeAll(beating);
  });

  test('an expiring token gets auth_expired, and the socket goes unless it re-authenticates', async () => {
    const g = quick.gateways[0];
    const socket = connect(g);
    await next(socket, 'connect');
    const short = jwt.sign({ userId: 'exp', accounts: ['*'], exp: Math.floor(Date.now() / 1000) + 2 }, JWT_SECRET);
    await request(socket, 'authenticate', { token: short, userId: 'exp', timestamp: Date.now() });
    const timer = setInterval(() => socket.emit('heartbeat', { timestamp: Date.now(), clientId: 'e' }), 500);
    await next(socket, 'auth_expired', () => true, 6000);
    await next(socket, 'disconnect', () => true, 6000);
    clearInterval(timer);
  });
});

describe('per-IP connection limit', () => {
  let limited;
  before(async () => {
    // Two connections per address, then (practically) none: the limit shows at once.
    const limit = { IP_CONNECT_RATE: '0.01', IP_CONNECT_BURST: '2' };
    limited = await startSystem({ gateways: [limit, { ...limit, TRUSTED_PROXIES: '127.0.0.1' }] });
  });
  after(async () => { await limited?.stop(); });

  /** Connects as if through a proxy that says the client is `client`; resolves with the outcome. */
  async function attempt(gateway, client) {
    const socket = connect(gateway, { extraHeaders: { 'X-Forwarded-For': client } });
    const outcome = await Promise.race([
      next(socket, 'connect').then(() => 'connected'),
      next(socket, 'connect_error').then((e) => e.message),
    ]);
    closeAll(socket);
    return outcome;
  }

  test('without TRUSTED_PROXIES, X-Forwarded-For is ignored: the peer address is limited', async () => {
    const g = limited.gateways[0];
    assert.equal(await attempt(g, '203.0.113.1'), 'connected');
    assert.equal(await attempt(g, '203.0.113.2'), 'connected');
    assert.equal(await attempt(g, '203.0.113.3'), 'Too many connections from this address; retry later',
      'a header anyone can send does not buy more connections');
  });

  test('behind a trusted proxy, each client address has its own limit', async () => {
    const g = limited.gateways[1];
    assert.equal(await attempt(g, '203.0.113.1'), 'connected');
    assert.equal(await attempt(g, '203.0.113.1'), 'connected');
    assert.equal(await attempt(g, '203.0.113.1'), 'Too many connections from this address; retry later');
    // Another client behind the same proxy is not held back by the first one.
    assert.equal(await attempt(g, '203.0.113.2'), 'connected');
    // A forged entry left of the proxy's own does not help the limited client.
    assert.equal(await attempt(g, '198.51.100.7, 203.0.113.1'), 'Too many connections from this address; retry later');
  });
});
