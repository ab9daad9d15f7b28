// docs/protocol.md cannot drift from the code: every JSON example in it whose fence names an event
// (```json event=NAME from=client|server|ingest [ignored=a,b]) is checked against the real
// gateway and ingest, with the official socket.io-client.
// - from=client: the example is sent (with a real token in place of the example's) and must be
//   accepted; then each field in turn is replaced by a value of the wrong type, which must be
//   refused unless the fence lists the field as ignored (and then must still be accepted). So
//   an example's event name and every field it shows are ones the gateway reads.
// - from=server / from=ingest: the example must have the same fields, recursively, with the same
//   JSON types, as one payload of that event that the system actually sent in the scenario below.
// And the other way round: every event the gateway sent in the scenario has an example.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  repoRoot, startSystem, connect, next, request, token, postWebhook, fixture, within,
} from '../lib/harness.mjs';

const docPath = join(repoRoot, 'docs', 'protocol.md');

/** Every ```json block of the doc: its attributes (`event`, `from`, `ignored`) and its value. */
function examples(text) {
  const found = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const open = lines[i].match(/^```json(?:\s+(.*))?$/);
    if (!open) continue;
    const start = i + 1;
    let end = start;
    while (end < lines.length && !/^```\s*$/.test(lines[end])) end++;
    const attrs = Object.fromEntries((open[1] ?? '').trim().split(/\s+/).filter(Boolean).map((a) => a.split('=')));
    const where = `docs/protocol.md:${i + 1}`;
    let value;
    try {
      value = JSON.parse(lines.slice(start, end).join('\n'));
    } catch (e) {
      throw new Error(`${where}: the example is not JSON: ${e.message}`);
    }
    found.push({ where, event: attrs.event, from: attrs.from, ignored: (attrs.ignored ?? '').split(',').filter(Boolean), value });
    i = end;
  }
  return found;
}

/** The JSON type of every field, recursively; an array by its first element. */
function shape(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return v.length ? [shape(v[0])] : [];
  if (typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, shape(v[k])]));
  return typeof v;
}

/** Where two shapes differ, as `path: doc vs actual` lines (empty when they agree). */
function differences(doc, actual, path = '') {
  if (Array.isArray(doc) && Array.isArray(actual)) {
    return doc.length && actual.length ? differences(doc[0], actual[0], `${path}[0]`) : [];
  }
  if (doc && actual && typeof doc === 'object' && typeof actual === 'object' && !Array.isArray(doc) && !Array.isArray(actual)) {
    const keys = new Set([...Object.keys(doc), ...Object.keys(actual)]);
    return [...keys].flatMap((k) => {
      if (!(k in doc)) return [`${path}.${k}: missing from the doc (the system sends it)`];
      if (!(k in actual)) return [`${path}.${k}: in the doc, not sent by the system`];
      return differences(doc[k], actual[k], `${path}.${k}`);
    });
  }
  return JSON.stringify(doc) === JSON.stringify(actual) ? [] : [`${path || '.'}: ${JSON.stringify(doc)} in the doc, ${JSON.stringify(actual)} sent`];
}

const WRONG = { wrong: 'type' };
/** Replies a gateway gives to a refused request. */
const REFUSALS = new Set(['error', 'auth_failed']);
/** Events that are not the reply to a request (they can arrive at any time). */
const UNSOLICITED = new Set(['webhook_event', 'replay_complete', 'auth_expired']);

let sys;
let gateway;
let docExamples;
/** Every payload the system sent, by event name. */
const sent = new Map();
const record = (event, data) => {
  if (!sent.has(event)) sent.set(event, []);
  sent.get(event).push(data);
};
const sockets = [];

/** A client whose every received event is recorded; resolves once connected (or connect_error). */
async function client(opts = {}) {
  const socket = connect(gateway, opts);
  sockets.push(socket);
  socket.onAny((event, data) => record(event, data));
  const outcome = await within(10000, 'connect or connect_error', new Promise((resolve) => {
    socket.once('connect', () => resolve({ connected: true }));
    socket.once('connect_error', (err) => resolve({ connected: false, err }));
  }));
  if (!outcome.connected) record('connect_error', { message: outcome.err.message });
  return { socket, ...outcome };
}

/** A copy of the example, with a real token for its user (or user_1) in place of the example's. */
function realize(value, { ttl = 3600 } = {}) {
  const copy = structuredClone(value);
  if (copy && typeof copy === 'object' && 'token' in copy) {
    const userId = typeof copy.userId === 'string' ? copy.userId : 'user_1';
    copy.token = token({ userId, accounts: ['*'], ttl });
  }
  return copy;
}

/** Sends `event` with `data` (with an ack); resolves with the name of the reply event. */
async function ask(socket, event, data) {
  const before = socket.events.length;
  await request(socket, event, data);
  const reply = socket.events.slice(before).find((e) => !UNSOLICITED.has(e.event));
  assert.ok(reply, `${event}: the ack came without a reply event`);
  return reply.event;
}

/** Whether the gateway accepts the client example `value` of `event`, on a socket of its own. */
async function accepted(event, value) {
  const { socket, connected } = await client(event === 'handshake' ? { auth: value } : {});
  try {
    if (event === 'handshake') return connected;
    if (event !== 'authenticate') {
      const auth = await ask(socket, 'authenticate', realize({ token: '', userId: 'user_1' }));
      assert.equal(auth, 'auth_success');
    }
    const reply = await ask(socket, event, value);
    return !REFUSALS.has(reply);
  } finally {
    // A user may hold only so many sockets at once.
    socket.close();
  }
}

before(async () => {
  docExamples = examples(readFileSync(docPath, 'utf8'));
  sys = await startSystem({ gateways: [{ SOCKET_RATE_LIMIT: '1000', SOCKET_RATE_BURST: '1000' }] });
  gateway = sys.gateways[0];
});

after(async () => {
  for (const s of sockets) s.close();
  await sys?.stop();
});

test('every JSON example in docs/protocol.md names its event and direction', () => {
  assert.ok(docExamples.length >= 20, `only ${docExamples.length} examples found`);
  for (const e of docExamples) {
    assert.ok(e.event && ['client', 'server', 'ingest'].includes(e.from),
      `${e.where}: the fence needs event=NAME from=client|server|ingest`);
  }
});

test('the gateway accepts every client example and reads every field it shows', async () => {
  for (const e of docExamples.filter((x) => x.from === 'client')) {
    assert.ok(await accepted(e.event, realize(e.value)), `${e.where}: the gateway refused the ${e.event} example`);
    for (const field of Object.keys(e.value)) {
      const mutated = realize(e.value);
      mutated[field] = WRONG;
      const ignored = e.ignored.includes(field);
      assert.equal(await accepted(e.event, mutated), ignored, ignored
        ? `${e.where}: ${e.event}.${field} is listed as ignored, but a wrong value is refused`
        : `${e.where}: ${e.event}.${field} is not read by the gateway (a wrong value is accepted): misspelled, or list it as ignored`);
    }
  }
});

test('every server and ingest example has the fields and types the system sends', async () => {
  // Before authentication; then the replies to every request.
  const { socket } = await client();
  await ask(socket, 'get_subscriptions', {});
  await ask(socket, 'subscribe', { eventTypes: ['comments'] });
  await ask(socket, 'authenticate', realize({ token: '', userId: 'user_1' }));
  await ask(socket, 'subscribe', { eventTypes: ['comments', 'messages'] });
  await ask(socket, 'unsubscribe', { eventTypes: ['messages'] });
  await ask(socket, 'test_connection', {});
  await ask(socket, 'heartbeat', {});
  await ask(socket, 'subscribe', { eventTypes: ['messages'] });
  // Webhooks: a comment and a message (sender with and without a username), and a forged one.
  for (const name of ['f01', 'f09']) {
    const { body, signature } = fixture(name);
    const res = await postWebhook(sys, body, signature);
    assert.equal(res.status, 200, res.body);
    record('webhook_receipt', JSON.parse(res.body));
    await next(socket, 'webhook_event', (ev) => ev.id === JSON.parse(res.body).events[0].id);
  }
  const forged = await postWebhook(sys, fixture('f05').body, `sha256=${'0'.repeat(64)}`);
  assert.equal(forged.status, 401);
  record('webhook_error', JSON.parse(forged.body));
  // A resume, a refused handshake, a token that expires.
  const resumed = await client({ auth: realize({ token: '', since: 0 }) });
  await ask(resumed.socket, 'subscribe', { eventTypes: ['comments'] });
  await next(resumed.socket, 'replay_complete');
  // A resume from another history of the stream: refused with a reason.
  const stale = await client({ auth: realize({ token: '', since: 0, epoch: 'another-history' }) });
  await ask(stale.socket, 'subscribe', { eventTypes: ['comments'] });
  await next(stale.socket, 'replay_complete', (r) => r.reason === 'history_changed');
  await client({ auth: { token: 'not-a-jwt' } });
  const expiring = await client({ auth: realize({ token: '' }, { ttl: 1 }) });
  await next(expiring.socket, 'auth_expired', () => true, 5000);
  const refused = await client();
  await ask(refused.socket, 'authenticate', { token: 'not-a-jwt' });
  // With NATS down, ingest cannot store a webhook.
  await sys.stopNats();
  const down = await postWebhook(sys, fixture('f04').body, fixture('f04').signature);
  assert.equal(down.status, 503, down.body);
  record('webhook_unavailable', JSON.parse(down.body));

  const problems = [];
  const documented = new Set();
  for (const e of docExamples.filter((x) => x.from !== 'client')) {
    documented.add(e.event);
    const payloads = sent.get(e.event) ?? [];
    if (!payloads.length) {
      problems.push(`${e.where}: ${e.event} was never sent in this test (a wrong event name, or the scenario misses it)`);
      continue;
    }
    const diffs = payloads.map((p) => differences(shape(e.value), shape(p)));
    if (!diffs.some((d) => d.length === 0)) {
      const closest = diffs.reduce((a, b) => (b.length < a.length ? b : a));
      problems.push(`${e.where}: ${e.event} differs from what was sent:\n    ${closest.join('\n    ')}`);
    }
  }
  for (const event of sent.keys()) {
    if (!documented.has(event)) problems.push(`${event} was sent but docs/protocol.md has no example of it`);
  }
  assert.deepEqual(problems, []);
});
