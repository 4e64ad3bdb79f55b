// One harness for every end-to-end test: builds the Worker once, runs `wrangler dev` on free loopback ports, and speaks both framings (JSON and socket.io) to it.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { io } from 'socket.io-client';
import WebSocket from 'ws';

/** The project root (this file is tests/support/harness.mjs); E2E_GATEWAY_ROOT points the suite at another checkout. */
export const ROOT = process.env.E2E_GATEWAY_ROOT ?? fileURLToPath(new URL('../..', import.meta.url));

// The local binary is what `npx wrangler` resolves to; calling it directly skips npx's own start-up.
const WRANGLER = path.join(ROOT, 'node_modules', '.bin', 'wrangler');
const BASE_ENV = { ...process.env, CI: '1', NO_COLOR: '1', WRANGLER_SEND_METRICS: 'false', FORCE_COLOR: '0' };
// E2E_WRANGLER_LOG=1 streams wrangler's output live; E2E_KEEP=1 keeps the persist dirs of finished gateways.
const LIVE_LOG = process.env.E2E_WRANGLER_LOG === '1';

const log = (line) => process.stderr.write(`[harness] ${line}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------
// Processes

const liveGroups = new Set();
// wrangler spawns workerd; killing the process group takes both, even when this process dies without cleaning up.
process.on('exit', () => {
  for (const pid of liveGroups) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => process.exit(signal === 'SIGINT' ? 130 : 143));
}

/** Runs a command to completion; resolves with its exit code and combined output (never rejects on a non-zero code). */
export function run(command, args, { cwd = ROOT, env = BASE_ENV, timeoutMs = 600_000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    liveGroups.add(child.pid);
    reapWithParent(child.pid);
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const timer = setTimeout(() => {
      output += `\n[harness] killed after ${timeoutMs} ms`;
      killGroup(child.pid, 'SIGKILL');
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      liveGroups.delete(child.pid);
      resolve({ code: code ?? (signal ? 128 : 1), output });
    });
  });
}

/**
 * Starts a detached watchdog that kills process group `pgid` once this process is gone, however it died
 * (a SIGKILL or a killed test runner skips 'exit' handlers); it ends by itself when the group does.
 */
function reapWithParent(pgid) {
  const script = `while kill -0 ${process.pid} 2>/dev/null && kill -0 -${pgid} 2>/dev/null; do sleep 1; done; kill -KILL -${pgid} 2>/dev/null`;
  spawn('sh', ['-c', script], { detached: true, stdio: 'ignore' }).unref();
}

function killGroup(pid, signal) {
  try {
    process.kill(-pid, signal);
  } catch {
    // the group is already gone
  }
}

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------------------
// Build (once per process and root)

const builds = new Map();

/** Runs `sh scripts/build.sh` once per process (the script itself skips work when the build is fresh). */
export function buildOnce(root = ROOT) {
  if (!builds.has(root)) {
    builds.set(
      root,
      (async () => {
        const script = path.join(root, 'scripts', 'build.sh');
        if (!existsSync(script)) throw new Error(`${script} does not exist: the Worker cannot be built yet`);
        const started = Date.now();
        const { code, output } = await run('sh', ['scripts/build.sh'], { cwd: root });
        log(`build: sh scripts/build.sh took ${((Date.now() - started) / 1000).toFixed(1)} s (exit ${code})`);
        if (code !== 0) throw new Error(`sh scripts/build.sh failed with exit ${code}:\n${output}`);
      })(),
    );
  }
  return builds.get(root);
}

// ---------------------------------------------------------------------------
// Gateway

/**
 * Builds (once), migrates a persist dir and starts `wrangler dev` on free loopback ports.
 * `upstream` is a fake upstream (its port fills OPENAI_BASE_URL and ANTHROPIC_BASE_URL); `vars` override any var,
 * `""` included (`{ OPENAI_BASE_URL: '' }` blanks it). `persistDir` reuses a state dir (to test restarts).
 * `d1Sql` statements run on the local D1 after the migrations, before the gateway starts (fault triggers).
 */
export async function startGateway({ vars = {}, upstream, persistDir, d1Sql = [], root = ROOT, readyTimeoutMs = 90_000 } = {}) {
  await buildOnce(root);
  const ownsDir = !persistDir;
  const dir = persistDir ?? (await mkdtemp(path.join(tmpdir(), 'gateway-e2e-')));
  const migrate = await run(WRANGLER, ['d1', 'migrations', 'apply', 'DB', '--local', '--persist-to', dir], { cwd: root, timeoutMs: 120_000 });
  if (migrate.code !== 0) throw new Error(`wrangler d1 migrations apply failed with exit ${migrate.code}:\n${migrate.output}`);
  for (const sql of d1Sql) {
    const exec = await run(WRANGLER, ['d1', 'execute', 'DB', '--local', '--persist-to', dir, '--command', sql], { cwd: root, timeoutMs: 120_000 });
    if (exec.code !== 0) throw new Error(`wrangler d1 execute failed with exit ${exec.code}:\n${exec.output}`);
  }

  const adminToken = vars.ADMIN_TOKEN ?? randomBytes(24).toString('hex');
  const allVars = {
    ADMIN_TOKEN: adminToken,
    ...(upstream
      ? {
          OPENAI_BASE_URL: `${upstream.url}/v1`,
          OPENAI_API_KEY: 'test-openai-key',
          ANTHROPIC_BASE_URL: upstream.url,
          ANTHROPIC_API_KEY: 'test-anthropic-key',
        }
      : {}),
    DEFAULT_MODEL: 'openai/gpt-4o-mini',
    ...vars,
  };
  const port = await freePort();
  const inspectorPort = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let proc = null;

  async function launch() {
    const args = [
      'dev',
      '--ip', '127.0.0.1',
      '--port', String(port),
      '--inspector-port', String(inspectorPort),
      '--persist-to', dir,
      '--show-interactive-dev-session=false',
      '--log-level', process.env.E2E_WRANGLER_LOG_LEVEL ?? 'warn',
      ...Object.entries(allVars).flatMap(([k, v]) => ['--var', `${k}:${v}`]),
    ];
    const started = Date.now();
    const child = spawn(WRANGLER, args, { cwd: root, env: BASE_ENV, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    liveGroups.add(child.pid);
    reapWithParent(child.pid);
    const current = { child, output: '', exited: null };
    const keep = (d) => {
      current.output = (current.output + d).slice(-64_000);
      if (LIVE_LOG) process.stderr.write(d);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    current.exit = new Promise((resolve) =>
      child.on('close', (code, signal) => {
        liveGroups.delete(child.pid);
        current.exited = { code, signal };
        resolve(current.exited);
      }),
    );
    proc = current;

    const deadline = started + readyTimeoutMs;
    for (;;) {
      if (current.exited) {
        throw new Error(`wrangler dev exited (${JSON.stringify(current.exited)}) before /health answered; its output:\n${current.output}`);
      }
      try {
        const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2000) });
        await res.arrayBuffer();
        if (res.status === 200) break;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        await stopProcess();
        throw new Error(`GET /health did not answer 200 within ${readyTimeoutMs} ms; wrangler's output:\n${current.output}`);
      }
      await sleep(250);
    }
    log(`wrangler dev ready on ${url} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }

  async function stopProcess() {
    const current = proc;
    proc = null;
    if (!current || current.exited) return;
    killGroup(current.child.pid, 'SIGTERM');
    const done = await Promise.race([current.exit, sleep(5000).then(() => null)]);
    if (!done) {
      killGroup(current.child.pid, 'SIGKILL');
      await current.exit;
    }
  }

  await launch();

  const gateway = {
    url,
    wsUrl: `ws://127.0.0.1:${port}`,
    port,
    adminToken,
    persistDir: dir,
    vars: allVars,
    /** wrangler's recent output (for failure messages). */
    output: () => proc?.output ?? '',
    /** `fetch` on the gateway; `token` becomes `Authorization: Bearer`, an object `body` is sent as JSON. */
    async http(method, pathname, { token, body, headers = {} } = {}) {
      const h = { ...headers };
      if (token !== undefined) h.authorization = `Bearer ${token}`;
      let payload = body;
      if (body !== undefined && typeof body !== 'string' && !(body instanceof Uint8Array)) {
        payload = JSON.stringify(body);
        h['content-type'] ??= 'application/json';
      }
      const res = await fetch(url + pathname, { method, headers: h, body: payload, redirect: 'manual' });
      const text = await res.text();
      let json;
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
      return { status: res.status, json, text, headers: res.headers };
    },
    /** Mints a user token through the admin API and returns the token string. */
    async mintToken(userId, name = `${userId}-${randomBytes(4).toString('hex')}`, extra = {}) {
      const res = await gateway.http('POST', '/admin/tokens', { token: adminToken, body: { userId, name, ...extra } });
      if (res.status !== 200 && res.status !== 201) throw new Error(`POST /admin/tokens answered ${res.status}: ${res.text}`);
      if (typeof res.json?.token !== 'string') throw new Error(`POST /admin/tokens gave no token: ${res.text}`);
      return res.json.token;
    },
    connect: (opts) => connectJson(gateway.wsUrl, opts),
    expectUpgradeFailure: (opts) => expectUpgradeFailure(gateway.wsUrl, opts),
    connectSio: (opts) => connectSio(url, opts),
    expectSioConnectError: (opts) => expectSioConnectError(url, opts),
    /** Stops wrangler dev and starts it again on the same port with the same persist dir and vars. */
    async restart() {
      await stopProcess();
      await launch();
    },
    /** Stops wrangler dev (the whole process group) and removes the persist dir this harness created. */
    async stop() {
      await stopProcess();
      if (ownsDir && process.env.E2E_KEEP !== '1') await rm(dir, { recursive: true, force: true });
    },
  };
  return gateway;
}

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
