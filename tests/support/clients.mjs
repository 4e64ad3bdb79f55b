// The protocol clients of the end-to-end tests: an ordered frame log, JSON-framing and socket.io clients, refused upgrades, and small waiting helpers.
import { randomBytes } from 'node:crypto';
import { io } from 'socket.io-client';
import WebSocket from 'ws';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------
// Frames: an ordered log that tests consume with next()/until().

const describeFrame = (f) => {
  const s = JSON.stringify(f.raw !== undefined ? { raw: f.raw } : { event: f.event, seq: f.seq, data: f.data });
  return s.length > 400 ? `${s.slice(0, 400)}…` : s;
};

/** The frames of one socket in arrival order; each frame can be consumed once, by next() or until(). */
class FrameLog {
  frames = [];
  #consumed = new Set();
  #waiters = new Set();
  #closed = null;

  push(frame) {
    this.frames.push(frame);
    this.#wake();
  }

  end(info) {
    this.#closed = info;
    this.#wake();
  }

  /** Marks every frame received so far as consumed. */
  skipAll() {
    this.frames.forEach((_, k) => this.#consumed.add(k));
  }

  /** Summary of every frame seen, for failure messages. */
  dump() {
    return this.frames.map((f, k) => `  ${this.#consumed.has(k) ? ' ' : '*'} ${describeFrame(f)}`).join('\n') || '  (no frames)';
  }

  #find(event, where) {
    const names = event === null || event === undefined ? null : [event].flat();
    return this.frames.findIndex((f, k) => !this.#consumed.has(k) && (!names || names.includes(f.event)) && (!where || where(f)));
  }

  #wait(event, { timeout = 10_000, where } = {}, take) {
    return new Promise((resolve, reject) => {
      const waiter = {
        check: () => {
          const k = this.#find(event, where);
          if (k >= 0) {
            finish();
            resolve(take(k));
            return;
          }
          if (this.#closed) {
            finish();
            reject(new Error(`socket closed (${JSON.stringify(this.#closed)}) before a ${JSON.stringify(event)} frame; frames seen (* = not consumed):\n${this.dump()}`));
          }
        },
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`no ${JSON.stringify(event)} frame within ${timeout} ms; frames seen (* = not consumed):\n${this.dump()}`));
      }, timeout);
      const finish = () => {
        clearTimeout(timer);
        this.#waiters.delete(waiter);
      };
      this.#waiters.add(waiter);
      waiter.check();
    });
  }

  /** The next not-yet-consumed frame named `event` (a name, a list of names, or null for any) that satisfies `where`. */
  next(event, opts) {
    return this.#wait(event, opts, (k) => {
      this.#consumed.add(k);
      return this.frames[k];
    });
  }

  /** Every not-yet-consumed frame up to and including the next match. */
  until(event, opts) {
    return this.#wait(event, opts, (k) => {
      const taken = [];
      for (let j = 0; j <= k; j++) {
        if (!this.#consumed.has(j)) {
          this.#consumed.add(j);
          taken.push(this.frames[j]);
        }
      }
      return taken;
    });
  }

  #wake() {
    for (const w of [...this.#waiters]) w.check();
  }
}

/** What one turn produced, taken from its frames. */
export function summarizeTurn(frames) {
  const of = (name) => frames.filter((f) => f.event === name);
  return {
    frames,
    ack: of('message:ack')[0],
    info: of('session:info')[0],
    start: of('agent:start')[0],
    end: of('agent:end')[0],
    texts: of('agent:text'),
    text: of('agent:text').map((f) => f.data.text).join(''),
    thinking: of('agent:thinking').map((f) => f.data.text).join(''),
    errors: of('error'),
    toolStarts: of('agent:tool:start'),
    toolEnds: of('agent:tool:end'),
  };
}

/** Shared by both framings: the frame log, waiting helpers and whole turns. */
class EventClient {
  log = new FrameLog();
  conversationId;

  constructor(conversationId) {
    this.conversationId = conversationId;
  }

  /** Every frame received, in order: `{event, seq, data}`. */
  get events() {
    return this.log.frames;
  }

  record(frame) {
    if (!this.conversationId && typeof frame.data?.conversationId === 'string') this.conversationId = frame.data.conversationId;
    this.log.push(frame);
  }

  next(event, opts) {
    return this.log.next(event, opts);
  }

  until(event, opts) {
    return this.log.until(event, opts);
  }

  /**
   * Sends a `message` (with this socket's conversationId when known; `extra` adds or overrides payload fields)
   * and collects every frame from then through `agent:end`.
   */
  async turn(content, extra = {}, { timeout = 30_000 } = {}) {
    this.log.skipAll();
    const payload = { ...(this.conversationId ? { conversationId: this.conversationId } : {}), content, ...extra };
    this.send('message', payload);
    return summarizeTurn(await this.until('agent:end', { timeout }));
  }
}

// ---------------------------------------------------------------------------
// JSON framing

function chatUrl(wsUrl, { token, conversationId, lastSeq, useHeaderAuth, query = {} }) {
  const u = new URL('/chat', wsUrl);
  if (conversationId !== undefined) u.searchParams.set('conversationId', conversationId);
  if (lastSeq !== undefined) u.searchParams.set('lastSeq', String(lastSeq));
  if (token !== undefined && !useHeaderAuth) u.searchParams.set('token', token);
  for (const [k, v] of Object.entries(query)) u.searchParams.set(k, v);
  return u.toString();
}

function openSocket(wsUrl, opts) {
  const headers = { ...opts.headers };
  if (opts.useHeaderAuth && opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`;
  return new WebSocket(chatUrl(wsUrl, opts), { headers, origin: opts.origin, perMessageDeflate: false, handshakeTimeout: 15_000, ...opts.wsOptions });
}

/** A JSON-framing client (`{event, seq, data}` frames). */
export class JsonClient extends EventClient {
  constructor(ws, conversationId) {
    super(conversationId);
    this.ws = ws;
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        const info = { code, reason: reason.toString() };
        this.log.end(info);
        resolve(info);
      });
    });
    ws.on('message', (data, isBinary) => {
      const text = data.toString('utf8');
      try {
        const frame = JSON.parse(text);
        this.record({ event: frame.event, seq: frame.seq, data: frame.data, binary: isBinary });
      } catch {
        // The gateway must only send JSON; keep what it sent so the failing assertion can show it.
        this.record({ event: '(unparseable)', raw: text, binary: isBinary });
      }
    });
  }

  send(event, data) {
    this.ws.send(JSON.stringify({ event, data }));
  }

  /** Sends a string as a text frame or a Buffer/Uint8Array as a binary frame, untouched. */
  sendRaw(payload) {
    this.ws.send(payload, { binary: typeof payload !== 'string' });
  }

  /**
   * Sends a close frame and resolves with the gateway's answer `{code, reason}`. A gateway that does not answer within
   * `timeout` ms gets the TCP connection dropped and `timedOut: true` in the result (ws alone would wait 30 s).
   */
  async close(code = 1000, reason = '', { timeout = 3000 } = {}) {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(code, reason);
    let timer;
    const late = new Promise((resolve) => {
      timer = setTimeout(() => resolve(null), timeout);
    });
    const answered = await Promise.race([this.closed, late]);
    clearTimeout(timer);
    if (answered) return answered;
    this.ws.terminate();
    return { ...(await this.closed), timedOut: true };
  }
}

// Reads the refused upgrade's answer; `ws` hands it to 'unexpected-response' instead of failing blind.
function readRefusal(req, res) {
  return new Promise((resolve) => {
    let body = '';
    res.on('data', (d) => (body += d));
    res.on('end', () => {
      let json;
      try {
        json = JSON.parse(body);
      } catch {
        json = undefined;
      }
      resolve({ status: res.statusCode, body, json, headers: res.headers });
      req.destroy();
    });
  });
}

/** Opens a JSON-framing socket; rejects (with the HTTP status and body) when the upgrade is refused. */
export function connectJson(wsUrl, opts = {}) {
  return new Promise((resolve, reject) => {
    const ws = openSocket(wsUrl, opts);
    const client = new JsonClient(ws, opts.conversationId);
    ws.once('open', () => resolve(client));
    ws.once('unexpected-response', async (req, res) => {
      const refusal = await readRefusal(req, res);
      reject(Object.assign(new Error(`upgrade refused with ${refusal.status}: ${refusal.body}`), { refusal }));
    });
    ws.once('error', (err) => reject(err));
  });
}

/**
 * Attempts an upgrade that must be refused; resolves with `{status, body, json, headers}`.
 * Rejects when the socket opens, listing whatever frames arrived in its first half second.
 */
export function expectUpgradeFailure(wsUrl, opts = {}) {
  return new Promise((resolve, reject) => {
    const ws = openSocket(wsUrl, opts);
    ws.once('unexpected-response', async (req, res) => resolve(await readRefusal(req, res)));
    ws.once('open', async () => {
      const client = new JsonClient(ws, opts.conversationId);
      await sleep(500);
      await client.close();
      reject(new Error(`the upgrade was accepted; frames seen:\n${client.log.dump()}`));
    });
    ws.once('error', (err) => reject(err));
  });
}

// ---------------------------------------------------------------------------
// socket.io framing (unmodified socket.io-client v4, websocket transport only)

/** A socket.io client on the `/chat` namespace. */
export class SioClient extends EventClient {
  constructor(socket, conversationId) {
    super(conversationId);
    this.socket = socket;
    // With connection state recovery the server appends the offset as a last string argument.
    socket.onAny((event, ...args) => this.record({ event, data: args[0], args }));
    this.closed = new Promise((resolve) => {
      socket.on('disconnect', (reason, details) => {
        const info = { reason, details };
        this.log.end(info);
        resolve(info);
      });
    });
  }

  send(event, data) {
    this.socket.emit(event, data);
  }

  /** Emits and resolves with the server's ack arguments. */
  emitWithAck(event, data, timeout = 10_000) {
    return this.socket.timeout(timeout).emitWithAck(event, data);
  }

  async close() {
    if (this.socket.connected) {
      this.socket.disconnect();
      return this.closed;
    }
    this.socket.close();
    return { reason: 'io client disconnect' };
  }
}

function sioSocket(url, { token, conversationId, auth, query = {}, reconnection = false, ...opts }) {
  return io(`${url}/chat`, {
    transports: ['websocket'],
    auth: auth ?? (token !== undefined ? { token } : {}),
    query: { ...(conversationId !== undefined ? { conversationId } : {}), ...query },
    reconnection,
    forceNew: true,
    timeout: 15_000,
    ...opts,
  });
}

/** Connects a socket.io client; rejects with the `connect_error` when the server refuses it. */
export function connectSio(url, opts = {}) {
  return new Promise((resolve, reject) => {
    const socket = sioSocket(url, opts);
    const client = new SioClient(socket, opts.conversationId);
    socket.once('connect', () => resolve(client));
    socket.once('connect_error', (err) => {
      socket.close();
      reject(err);
    });
  });
}

/** Connects a socket.io client that must be refused; resolves with the `connect_error` (`message`, `data`). */
export function expectSioConnectError(url, opts = {}) {
  return new Promise((resolve, reject) => {
    const socket = sioSocket(url, opts);
    const client = new SioClient(socket, opts.conversationId);
    socket.once('connect_error', (err) => {
      socket.close();
      resolve(err);
    });
    socket.once('connect', async () => {
      await sleep(500);
      socket.close();
      reject(new Error(`the socket.io connection was accepted; frames seen:\n${client.log.dump()}`));
    });
  });
}

// ---------------------------------------------------------------------------
// Small helpers for tests

/** Polls `probe` until it returns a truthy value; rejects with the last value after `timeout` ms. */
export async function eventually(probe, { timeout = 5000, interval = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeout} ms; last value: ${JSON.stringify(last)}`);
    await sleep(interval);
  }
}

/** A unique marker so a test's content (and so its fake-upstream requests) cannot collide with another's. */
export const uniq = (label = 't') => `${label}-${randomBytes(4).toString('hex')}`;
