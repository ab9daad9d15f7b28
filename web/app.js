// InstantChat live event console: connects to this server's Socket.IO gateway with the official
// socket.io-client, authenticates with a token, subscribes and lists `webhook_event`s as they
// arrive. It keeps the largest `seq` seen and, after any reconnect, subscribes with `since` so the
// gateway replays what was missed (docs/protocol.md, "Resume").
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const MAX_ROWS = 500;
  const MAX_LOG = 200;
  const HEARTBEAT_MS = 20000; // the gateway drops sockets silent for HEARTBEAT_TIMEOUT_SECS (60)
  const ACK_MS = 10000;

  const ui = {
    form: $('settings'), token: $('token'), tokenHint: $('token-hint'), extraTypes: $('extra-types'),
    accounts: $('accounts'), since: $('since'), formError: $('form-error'),
    connect: $('connect'), disconnect: $('disconnect'), drop: $('drop'), clear: $('clear'),
    state: $('state'), user: $('user'), reconnects: $('reconnects'), lastSeq: $('last-seq'),
    resume: $('resume'), events: $('events'), empty: $('empty'), count: $('event-count'), log: $('log'),
  };

  let socket = null; // the current socket; handlers of older ones are ignored
  let settings = null; // what the current socket authenticates and subscribes with
  let lastSeq = null; // largest seq seen: where a reconnect resumes
  let reconnects = 0;
  let received = 0;
  let heartbeat = null;

  // ---- rendering ---------------------------------------------------------------------------

  function setState(state, detail) {
    ui.state.dataset.state = state;
    ui.state.textContent = detail ? `${state} (${detail})` : state;
    const open = socket !== null;
    ui.connect.textContent = open ? 'Apply changes' : 'Connect';
    ui.disconnect.disabled = !open;
    ui.drop.disabled = state !== 'authenticated';
  }

  function log(text, kind = 'info') {
    const li = document.createElement('li');
    li.className = kind;
    const time = document.createElement('time');
    time.textContent = clock(new Date());
    li.append(time, ' ', text);
    ui.log.prepend(li);
    while (ui.log.children.length > MAX_LOG) ui.log.lastElementChild.remove();
  }

  const pad = (n, w = 2) => String(n).padStart(w, '0');
  const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;

  function cell(text, className) {
    const td = document.createElement('td');
    if (className) td.className = className;
    td.textContent = text;
    return td;
  }

  function addEvent(ev) {
    if (typeof ev?.seq === 'number' && (lastSeq === null || ev.seq > lastSeq)) {
      lastSeq = ev.seq;
      ui.lastSeq.textContent = String(lastSeq);
    }
    const tr = document.createElement('tr');
    const when = new Date(ev.timestamp);
    const time = cell(Number.isNaN(when.getTime()) ? String(ev.timestamp ?? '') : clock(when), 'time');
    if (!Number.isNaN(when.getTime())) time.title = when.toISOString();
    const sender = ev.sender?.username ? `@${ev.sender.username}` : (ev.sender?.id ?? '–');
    const senderCell = cell(sender, 'sender');
    if (ev.sender?.id) senderCell.title = `id ${ev.sender.id}`;
    const content = cell(ev.deleted ? '(deleted)' : (ev.content ?? ''), 'content');
    if (ev.details && Object.keys(ev.details).length > 0) {
      const details = document.createElement('details');
      const summary = document.createElement('summary');
      summary.textContent = 'details';
      const pre = document.createElement('pre');
      pre.textContent = JSON.stringify(ev.details, null, 2);
      details.append(summary, pre);
      content.append(details);
    }
    const type = cell('', 'type');
    const tag = document.createElement('span');
    tag.className = 'tag';
    tag.textContent = ev.eventType ?? '?';
    type.append(tag);
    tr.append(time, type, cell(ev.accountId ?? '–', 'account'), senderCell, content, cell(String(ev.seq ?? '–'), 'num'));
    tr.dataset.seq = String(ev.seq ?? '');
    tr.classList.add('new');
    ui.events.prepend(tr);
    while (ui.events.children.length > MAX_ROWS) ui.events.lastElementChild.remove();
    received += 1;
    ui.count.textContent = String(received);
    ui.empty.hidden = true;
  }

  // ---- the form ----------------------------------------------------------------------------

  const list = (text) => text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);

  /** The user of a JWT (its `userId` claim, else `sub`), read without verifying it. */
  function userOf(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')));
      return claims.userId ?? claims.sub ?? null;
    } catch {
      return null;
    }
  }

  function readForm() {
    const token = ui.token.value.trim();
    if (!token) throw new Error('Paste a token first.');
    const userId = userOf(token);
    if (!userId) throw new Error('This is not a JWT with a userId or sub claim.');
    const checked = [...ui.form.querySelectorAll('input[name=type]:checked')].map((c) => c.value);
    const eventTypes = [...new Set([...checked, ...list(ui.extraTypes.value)])];
    if (eventTypes.length === 0) throw new Error('Pick at least one event type.');
    const bad = eventTypes.find((t) => !/^[a-z_]{1,64}$/.test(t));
    if (bad) throw new Error(`"${bad}" is not an event type (lowercase letters and _ only).`);
    const accountIds = list(ui.accounts.value);
    const since = ui.since.value.trim() === '' ? null : Number(ui.since.value);
    if (since !== null && !(Number.isInteger(since) && since >= 0)) throw new Error('Replay from seq must be a whole number ≥ 0.');
    return { token, userId, eventTypes, accountIds, since };
  }

  function showFormError(message) {
    ui.formError.textContent = message ?? '';
    ui.formError.hidden = !message;
  }

  // ---- the socket --------------------------------------------------------------------------

  function stopHeartbeat() {
    clearInterval(heartbeat);
    heartbeat = null;
  }

  function close() {
    stopHeartbeat();
    if (socket) {
      const old = socket;
      socket = null;
      old.removeAllListeners();
      old.io.removeAllListeners();
      old.disconnect();
    }
  }

  function open(next) {
    close();
    settings = next;
    ui.user.textContent = next.userId;
    const s = io({ reconnectionDelay: 500, reconnectionDelayMax: 5000, timeout: ACK_MS });
    socket = s;
    const mine = (fn) => (...args) => { if (socket === s) fn(...args); };
    setState('connecting');

    s.on('connect', mine(() => authenticateAndSubscribe(s)));
    s.on('disconnect', mine((reason) => {
      stopHeartbeat();
      if (reason === 'io server disconnect') {
        // The server closed it (failed or expired authentication, shutdown): no automatic retry.
        log('The server closed the connection.', 'warn');
        socket = null;
        setState('disconnected', 'by the server');
      } else {
        log(`Disconnected (${reason}); reconnecting…`, 'warn');
        setState('disconnected', 'reconnecting');
      }
    }));
    s.on('connect_error', mine((err) => {
      log(`Cannot connect: ${err.message}. If the server refuses this page's origin, add ${location.origin} to CLIENT_URL.`, 'error');
      if (!s.active) socket = null;
      setState(s.active ? 'connecting' : 'disconnected', s.active ? 'retrying' : 'refused');
    }));
    s.io.on('reconnect_attempt', mine((n) => setState('connecting', `attempt ${n}`)));
    s.io.on('reconnect', mine(() => {
      reconnects += 1;
      ui.reconnects.textContent = String(reconnects);
    }));
    s.on('webhook_event', mine(addEvent));
    s.on('replay_complete', mine((r) => {
      const text = `replayed ${r.count} event${r.count === 1 ? '' : 's'} after seq ${r.since}` +
        (r.complete ? '' : ' (incomplete: older events are no longer retained)');
      ui.resume.textContent = text;
      log(`Replay complete: ${text}.`, r.complete ? 'ok' : 'warn');
    }));
    s.on('error', mine((e) => log(`Error from the server: ${e?.message ?? JSON.stringify(e)}`, 'error')));
    s.on('auth_expired', mine(() => {
      log('The token expired: paste a fresh one and press Apply changes.', 'warn');
      setState('connected', 'token expired');
    }));
  }

  async function authenticateAndSubscribe(s) {
    setState('connected');
    const { token, userId, eventTypes, accountIds } = settings;
    try {
      const auth = await s.timeout(ACK_MS).emitWithAck('authenticate', { token, userId, timestamp: Date.now() });
      if (socket !== s) return;
      if (auth?.message !== 'Authentication successful') {
        log(`Authentication failed: ${auth?.reason ?? JSON.stringify(auth)}`, 'error');
        setState('disconnected', 'authentication failed');
        return;
      }
      setState('authenticated');
      log(`Authenticated as ${auth.userId}.`, 'ok');
      stopHeartbeat();
      heartbeat = setInterval(() => s.emit('heartbeat', { timestamp: Date.now(), clientId: s.id }), HEARTBEAT_MS);

      const since = lastSeq ?? settings.since;
      const request = { eventTypes, userId, timestamp: Date.now() };
      if (accountIds.length > 0) request.accountIds = accountIds;
      if (since !== null) request.since = since;
      ui.resume.textContent = since === null
        ? (reconnects > 0 ? 'live only (no seq seen yet to resume from)' : 'live')
        : `resuming after seq ${since}…`;
      const sub = await s.timeout(ACK_MS).emitWithAck('subscribe', request);
      if (socket !== s) return;
      if (Array.isArray(sub?.eventTypes)) {
        const where = accountIds.length > 0 ? `accounts ${accountIds.join(', ')}` : 'all allowed accounts';
        log(`Subscribed to ${sub.eventTypes.join(', ')} on ${where}` + (since === null ? '.' : `, since seq ${since}.`), 'ok');
      } else {
        log(`Subscription refused: ${sub?.message ?? JSON.stringify(sub)}`, 'error');
      }
    } catch (e) {
      if (socket === s) log(`No answer from the server: ${e.message}`, 'error');
    }
  }

  // ---- controls ----------------------------------------------------------------------------

  ui.form.addEventListener('submit', (e) => {
    e.preventDefault();
    let next;
    try {
      next = readForm();
    } catch (err) {
      showFormError(err.message);
      return;
    }
    showFormError(null);
    // A seq typed in "Replay from seq" is asked for: it wins over the last seq seen.
    if (next.since !== null) {
      lastSeq = null;
      ui.lastSeq.textContent = '–';
    }
    if (socket) log('Reconnecting with the new settings.');
    open(next);
  });

  ui.disconnect.addEventListener('click', () => {
    close();
    log('Disconnected.');
    setState('disconnected');
  });

  // Closes the transport as a network failure would: socket.io-client reconnects on its own and
  // the console resumes after the last seq.
  ui.drop.addEventListener('click', () => {
    log('Dropping the connection to test resume.', 'warn');
    socket?.io.engine?.close();
  });

  ui.clear.addEventListener('click', () => {
    ui.events.replaceChildren();
    received = 0;
    ui.count.textContent = '0';
    ui.empty.hidden = false;
  });

  ui.token.addEventListener('input', () => {
    ui.user.textContent = userOf(ui.token.value.trim()) ?? '–';
  });

  // `instantchat dev` offers its token to pages on this machine; `serve` does not.
  async function loadDevConfig() {
    try {
      // The key from the link `instantchat dev` printed (`/#k=KEY`): the token goes only there.
      const key = new URLSearchParams(location.hash.slice(1)).get('k') ?? '';
      const res = await fetch(`/console/config.json?k=${encodeURIComponent(key)}`, { cache: 'no-store' });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const config = await res.json();
      if (config.token && !ui.token.value) {
        ui.token.value = config.token;
        ui.user.textContent = userOf(config.token) ?? '–';
        ui.tokenHint.textContent = `Prefilled with the dev token (user ${config.userId}, every account).`;
        return;
      }
    } catch {
      // not in dev mode
    }
    ui.tokenHint.textContent = 'Mint one with: instantchat token --user USER --accounts ID,ID';
  }

  if (typeof io !== 'function') {
    showFormError('socket.io-client did not load (/console/socket.io.min.js).');
    ui.connect.disabled = true;
  }
  setState('disconnected');
  ui.empty.querySelector('code').textContent =
    `instantchat send --url ${location.origin} --type comments --text 'Hello'`;
  loadDevConfig();
})();
