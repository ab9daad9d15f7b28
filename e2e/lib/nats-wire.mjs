// A few lines of NATS's text protocol, enough to check what a NATS user may and may not do
// against a real nats-server: connect with a user and password, publish, request (with an inbox
// reply) and learn whether the server refused it (`-ERR 'Permissions Violation ...'`).
import { connect as tcpConnect } from 'node:net';
import { within } from './harness.mjs';

export class NatsWire {
  static async connect({ port, user, pass, name = 'nats-wire' }) {
    const c = new NatsWire();
    c.socket = tcpConnect(port, '127.0.0.1');
    c.buffer = Buffer.alloc(0);
    c.errors = [];
    c.pongs = [];
    c.subs = new Map();
    c.nextSid = 1;
    c.closed = new Promise((resolve) => c.socket.once('close', resolve));
    c.socket.on('data', (chunk) => {
      c.buffer = Buffer.concat([c.buffer, chunk]);
      c.parse();
    });
    c.socket.on('error', (e) => c.errors.push(e.message));
    await within(5000, 'NATS INFO', new Promise((resolve, reject) => {
      c.socket.once('connect', resolve);
      c.socket.once('error', reject);
    }));
    c.send(`CONNECT ${JSON.stringify({ verbose: false, pedantic: false, user, pass, name, lang: 'node', version: '0', protocol: 1, headers: true, no_responders: true })}\r\n`);
    await c.flush();
    return c;
  }

  send(text) {
    this.socket.write(text);
  }

  parse() {
    for (;;) {
      const eol = this.buffer.indexOf('\r\n');
      if (eol < 0) return;
      const line = this.buffer.subarray(0, eol).toString();
      const [op, ...args] = line.split(' ');
      if (op === 'MSG' || op === 'HMSG') {
        const total = Number(args.at(-1));
        if (this.buffer.length < eol + 2 + total + 2) return;
        const body = this.buffer.subarray(eol + 2, eol + 2 + total);
        this.buffer = this.buffer.subarray(eol + 2 + total + 2);
        const headerBytes = op === 'HMSG' ? Number(args.at(-2)) : 0;
        const headers = body.subarray(0, headerBytes).toString();
        const payload = body.subarray(headerBytes).toString();
        this.subs.get(args[1])?.({ subject: args[0], headers, payload });
        continue;
      }
      this.buffer = this.buffer.subarray(eol + 2);
      if (op === 'PING') this.send('PONG\r\n');
      else if (op === 'PONG') this.pongs.shift()?.();
      else if (op === '-ERR') this.errors.push(line.slice(5));
    }
  }

  /** Resolves once the server has processed everything sent before (PING/PONG). */
  flush() {
    return within(5000, 'NATS PONG', new Promise((resolve, reject) => {
      this.pongs.push(resolve);
      this.closed.then(() => reject(new Error(`connection closed: ${this.errors.join('; ') || 'no error given'}`)));
      this.send('PING\r\n');
    }));
  }

  /** Publishes and returns the server's errors for it (a permission violation), if any. */
  async publish(subject, payload = '') {
    const before = this.errors.length;
    this.send(`PUB ${subject} ${Buffer.byteLength(payload)}\r\n${payload}\r\n`);
    await this.flush();
    return this.errors.slice(before);
  }

  /** A request: `{reply}` with the answer's payload, or `{errors}` when the server refused it. */
  async request(subject, payload = '', ms = 5000) {
    const sid = String(this.nextSid++);
    const inbox = `_INBOX.wire.${sid}`;
    const answer = new Promise((resolve) => this.subs.set(sid, resolve));
    this.send(`SUB ${inbox} ${sid}\r\n`);
    const before = this.errors.length;
    this.send(`PUB ${subject} ${inbox} ${Buffer.byteLength(payload)}\r\n${payload}\r\n`);
    await this.flush();
    const errors = this.errors.slice(before);
    if (errors.length > 0) return { errors };
    const msg = await within(ms, `reply to ${subject}`, answer);
    return { reply: msg.payload, headers: msg.headers };
  }

  close() {
    this.socket.destroy();
  }
}
