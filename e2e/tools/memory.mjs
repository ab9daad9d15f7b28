// Gateway memory per socket with the official socket.io-client, as the frontend connects: by
// default it starts on polling and upgrades to WebSocket. `instantchat-bench idle` measures
// direct WebSocket clients at up to 100,000; this measures what the frontend's sockets cost.
//
//   INSTANTCHAT_BIN_DIR=target/release node e2e/tools/memory.mjs [clients] [upgrade|websocket]
//
// Starts nats-server, ingest and one gateway (the e2e harness), connects and subscribes the
// clients 100 at a time (so a multiple of 100), waits 5 s, and prints the gateway's RSS growth
// per socket. One process holds one file per client: stay under the 20,000-file cap.
import { readFileSync } from 'node:fs';
import { startSystem, connect, next, request, token, sleep } from '../lib/harness.mjs';

const clients = Number(process.argv[2] ?? 10000);
const mode = process.argv[3] ?? 'upgrade';
if (!Number.isInteger(clients) || clients % 100 !== 0 || clients < 100 || clients > 15000
  || !['upgrade', 'websocket'].includes(mode)) {
  console.error('usage: memory.mjs [clients: a multiple of 100, up to 15000] [upgrade|websocket]');
  process.exit(2);
}
const rss = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
const lenient = { IP_CONNECT_RATE: '100000', IP_CONNECT_BURST: '100000', MAX_CONNECTIONS_PER_USER: '100000' };
const transports = mode === 'upgrade' ? ['polling', 'websocket'] : ['websocket'];

const sys = await startSystem({ gateways: [lenient] });
try {
  const { pid } = sys.gateways[0].proc;
  await sleep(1000);
  const before = rss(pid);
  const sockets = [];
  for (let batch = 0; batch < clients / 100; batch++) {
    sockets.push(...await Promise.all(Array.from({ length: 100 }, async (_, i) => {
      const userId = `mem_${batch}_${i}`;
      const socket = connect(sys.gateways[0], { auth: { token: token({ userId, accounts: ['acct_mem'] }) }, transports });
      await next(socket, 'connect', () => true, 30000);
      await request(socket, 'subscribe', { eventTypes: ['comments'], userId, timestamp: Date.now() }, 30000);
      return socket;
    })));
    if (batch % 20 === 19) console.error(`# ${sockets.length} of ${clients} connected`);
  }
  await sleep(5000);
  const on = {};
  for (const s of sockets) on[s.io.engine.transport.name] = (on[s.io.engine.transport.name] ?? 0) + 1;
  const after = rss(pid);
  console.log(`${clients} sockets (${mode}; now on ${JSON.stringify(on)}): gateway RSS `
    + `${(before / 1048576).toFixed(1)} -> ${(after / 1048576).toFixed(1)} MiB, `
    + `${Math.round((after - before) / clients)} bytes per socket`);
  sockets.forEach((s) => s.close());
} finally {
  await sys.stop();
}
