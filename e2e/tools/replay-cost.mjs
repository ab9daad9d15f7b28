// What a resume from far in the past costs, with the replay limit (REPLAY_MAX_EVENTS, 1,000 by
// default) and without it (a limit above the backlog: what every resume cost before the limit).
//
//   INSTANTCHAT_BIN_DIR=target/release node e2e/tools/replay-cost.mjs [events] [clients] [limit...]
//
// Starts nats-server, ingest and one gateway per limit (the e2e harness), stores `events`
// (default 50,000) comment webhooks of one account through ingest, then connects `clients`
// (default 16, the gateway's concurrent replays) socket.io-clients at once, each resuming with
// `since: 0`, and waits for every `replay_complete`. Prints, per limit: events and bytes sent,
// time to the last replay_complete, gateway and nats-server CPU seconds, gateway RSS growth.
import { readFileSync } from 'node:fs';
import { io } from 'socket.io-client';
import { startSystem, token, sign, seedBody, sleep, within } from '../lib/harness.mjs';

const events = Number(process.argv[2] ?? 50000);
const clients = Number(process.argv[3] ?? 16);
const limits = process.argv.slice(4).map(Number);
if (!limits.length) limits.push(1000, 10000000);
if (![events, clients, ...limits].every((n) => Number.isInteger(n) && n > 0) || events > 1000000 || clients > 1000) {
  console.error('usage: replay-cost.mjs [events <= 1000000] [clients <= 1000] [limit...]');
  process.exit(2);
}

const TICK = 100; // Linux's USER_HZ
const cpu = (pid) => {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICK;
};
const rss = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
const lenient = { IP_CONNECT_RATE: '100000', IP_CONNECT_BURST: '100000', MAX_CONNECTIONS_PER_USER: '100000' };

const sys = await startSystem({ gateways: limits.map((l) => ({ ...lenient, REPLAY_MAX_EVENTS: String(l) })) });
try {
  // The backlog: one account's comments, 32 POSTs at a time.
  let stored = 0;
  const started = Date.now();
  await Promise.all(Array.from({ length: 32 }, async (_, lane) => {
    for (let i = lane; i < events; i += 32) {
      const body = seedBody({ id: `r${i}`, accountId: 'acct_replay', text: `backlog ${i}` });
      const res = await fetch(`${sys.ingestUrl}/api/webhooks/instagram`, {
        method: 'POST', body, headers: { 'content-type': 'application/json', 'x-hub-signature-256': sign(body) },
      });
      if (res.status !== 200) throw new Error(`webhook ${i}: HTTP ${res.status} ${await res.text()}`);
      await res.arrayBuffer();
      stored += 1;
      if (stored % 10000 === 0) console.error(`# ${stored} of ${events} stored`);
    }
  }));
  console.error(`# ${events} events stored in ${((Date.now() - started) / 1000).toFixed(1)} s`);

  const rows = [];
  for (const [k, limit] of limits.entries()) {
    const gateway = sys.gateways[k];
    const { pid } = gateway.proc;
    await sleep(1000);
    const before = { gw: cpu(pid), nats: cpu(sys.nats.pid), rss: rss(pid), at: performance.now() };
    let peak = before.rss;
    const sampler = setInterval(() => { peak = Math.max(peak, rss(pid)); }, 50);
    const sockets = [];
    const results = await within(600000, 'every replay_complete', Promise.all(Array.from({ length: clients }, (_, i) => new Promise((resolve, reject) => {
      const userId = `resumer_${k}_${i}`;
      const socket = io(gateway.url, {
        transports: ['websocket'], forceNew: true, reconnection: false,
        auth: { token: token({ userId, accounts: ['acct_replay'] }), since: 0 },
      });
      sockets.push(socket);
      let received = 0;
      let bytes = 0;
      socket.on('webhook_event', (e) => { received += 1; bytes += JSON.stringify(e).length; });
      socket.on('connect', () => socket.emit('subscribe', { eventTypes: ['comments'] }));
      socket.on('replay_complete', (r) => resolve({ received, bytes, r, ms: performance.now() - before.at }));
      socket.on('connect_error', reject);
      socket.on('disconnect', (reason) => reject(new Error(`disconnected: ${reason}`)));
    }))));
    clearInterval(sampler);
    for (const s of sockets) s.close();
    const after = { gw: cpu(pid), nats: cpu(sys.nats.pid) };
    const row = {
      limit,
      clients,
      backlog: events,
      events_sent: results.reduce((a, r) => a + r.received, 0),
      mb_sent: +(results.reduce((a, r) => a + r.bytes, 0) / 1e6).toFixed(1),
      complete: results.filter((r) => r.r.complete).length,
      reasons: [...new Set(results.map((r) => r.r.reason ?? 'complete'))].join(','),
      last_replay_complete_s: +(Math.max(...results.map((r) => r.ms)) / 1000).toFixed(2),
      gateway_cpu_s: +(after.gw - before.gw).toFixed(2),
      nats_cpu_s: +(after.nats - before.nats).toFixed(2),
      gateway_rss_growth_mb: +((peak - before.rss) / 1e6).toFixed(1),
    };
    rows.push(row);
    console.log(JSON.stringify(row));
  }
} finally {
  await sys.stop();
}
