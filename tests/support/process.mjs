// Process control for the end-to-end tests: builds the Worker once and runs `wrangler dev` (and other commands) on free loopback ports, killing whole process groups however the test run ends.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { connectJson, connectSio, expectSioConnectError, expectUpgradeFailure } from './clients.mjs';

/** The project root (this file is tests/support/process.mjs); E2E_GATEWAY_ROOT points the suite at another checkout. */
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

  async function stopProcess({ hard = false } = {}) {
    const current = proc;
    proc = null;
    if (!current || current.exited) return;
    if (hard) {
      // As a crash or a deploy does it: no shutdown, whatever was in flight is cut.
      killGroup(current.child.pid, 'SIGKILL');
      await current.exit;
      return;
    }
    killGroup(current.child.pid, 'SIGTERM');
    const done = await Promise.race([current.exit, sleep(5000).then(() => null)]);
    if (!done) {
      killGroup(current.child.pid, 'SIGKILL');
      await current.exit;
    }
  }

  // wrangler picks some of its own ports at random; two started at once can pick the same one.
  // Such a start is retried (the others keep theirs).
  async function launchRetrying(attempts = 3) {
    for (let k = 1; ; k++) {
      try {
        await launch();
        return;
      } catch (e) {
        if (k >= attempts || !/Address already in use/.test(String(e?.message))) throw e;
        log(`wrangler dev lost a port race (attempt ${k}); starting it again`);
      }
    }
  }

  await launchRetrying();

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
    /**
     * Stops wrangler dev and starts it again on the same port with the same persist dir and vars;
     * `hard` kills its process group with SIGKILL first (a crash), else it is asked to stop.
     */
    async restart({ hard = false } = {}) {
      await stopProcess({ hard });
      await launchRetrying();
    },
    /** Stops wrangler dev (the whole process group) and removes the persist dir this harness created. */
    async stop() {
      await stopProcess();
      if (ownsDir && process.env.E2E_KEEP !== '1') await rm(dir, { recursive: true, force: true });
    },
  };
  return gateway;
}

