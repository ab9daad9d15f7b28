// One client process of compose-run.test.mjs's open-files test: opens COUNT authenticated
// socket.io-client WebSocket connections to URL (users PREFIX0, PREFIX1, ...; tokens signed with
// JWT_SECRET), prints `connected N` (or `failed REASON`) and holds them until its stdin closes.
import { io } from 'socket.io-client';
import jwt from 'jsonwebtoken';

const { URL: url, COUNT, PREFIX, JWT_SECRET, ACCOUNT } = process.env;
const count = Number(COUNT);
const sockets = [];
const BATCH = 100;

function open(i) {
  const userId = `${PREFIX}${i}`;
  const token = jwt.sign({ userId, accounts: [ACCOUNT] }, JWT_SECRET, { algorithm: 'HS256', expiresIn: 600 });
  const socket = io(url, { transports: ['websocket'], reconnection: false, forceNew: true, timeout: 60000, auth: { token } });
  sockets.push(socket);
  return new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', (e) => reject(new Error(`${userId}: ${e.message}`)));
  });
}

const deadline = setTimeout(() => {
  console.log(`failed only ${sockets.filter((s) => s.connected).length} of ${count} connected within 150 s`);
  process.exit(1);
}, 150000);
try {
  for (let i = 0; i < count; i += BATCH) {
    await Promise.all(Array.from({ length: Math.min(BATCH, count - i) }, (_, j) => open(i + j)));
  }
  clearTimeout(deadline);
  console.log(`connected ${sockets.filter((s) => s.connected).length}`);
} catch (e) {
  console.log(`failed ${e.message}`);
  process.exit(1);
}
process.stdin.resume();
process.stdin.on('end', () => {
  for (const s of sockets) s.close();
  process.exit(0);
});
