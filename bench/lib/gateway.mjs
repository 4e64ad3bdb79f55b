// Starts one gateway for the benchmark through the harness, with or without wrangler's inspector proxy, and finds what it runs: start-up time, workerd processes, the Worker's own DevTools endpoint.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { preciseNow } from '../../tests/support/fake-upstream.mjs';
import { startGateway } from '../../tests/support/harness.mjs';
import { wranglerTree } from './proc.mjs';
import { onWranglerDev, setWranglerEnv } from './spawn-probe.mjs';
import { portListening, sleep, withTimeout } from './util.mjs';

// wrangler 4.86 skips its DevTools inspector proxy when VSCODE_INSPECTOR_OPTIONS is set (TOOLCHAIN.md, last bullet).
export const MODES = {
  on: {
    key: 'on',
    label: 'inspector proxy ON (wrangler default)',
    env: (env) => {
      delete env.VSCODE_INSPECTOR_OPTIONS; // a VS Code debug terminal sets it; "on" must mean on
      return env;
    },
  },
  off: {
    key: 'off',
    label: 'inspector proxy OFF (VSCODE_INSPECTOR_OPTIONS={})',
    env: (env) => ({ ...env, VSCODE_INSPECTOR_OPTIONS: '{}' }),
  },
};

// Start-up: spawn of `wrangler dev` -> first 200 of /health, polled every 10 ms (the harness polls every 250 ms, too coarse to report).
function watchStartup(timeoutMs = 120_000) {
  return new Promise((resolve, reject) => {
    const off = onWranglerDev(({ child, port, spawnedAt }) => {
      off();
      (async () => {
        const deadline = spawnedAt + timeoutMs;
        for (;;) {
          if (child.exitCode !== null || child.signalCode !== null) return reject(new Error('wrangler dev exited before /health answered'));
          if (preciseNow() > deadline) return reject(new Error(`/health did not answer 200 within ${timeoutMs} ms`));
          try {
            const res = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(1000) });
            await res.arrayBuffer();
            if (res.status === 200) return resolve({ child, port, spawnedAt, readyAt: preciseNow() });
          } catch {
            // not listening yet
          }
          await sleep(10);
        }
      })();
    });
  });
}

/**
 * Starts `wrangler dev` in `mode` against the fake upstream at `upstreamUrl`, with the rate limit out of the way
 * and `vars` set. Resolves with the harness gateway, the start-up figures and the wrangler root pid.
 * One at a time: the start-up probe takes the next `wrangler dev` spawn.
 */
export async function startBenchGateway(mode, upstreamUrl, vars = {}) {
  setWranglerEnv(mode.env);
  const startup = watchStartup();
  startup.catch(() => {}); // a failed start surfaces through startGateway
  const t0 = preciseNow();
  // BENCH_VARS (a JSON object) sets more of the gateway's vars, to compare settings.
  const extra = process.env.BENCH_VARS ? JSON.parse(process.env.BENCH_VARS) : {};
  const gateway = await startGateway({ upstream: { url: upstreamUrl }, vars: { RATE_LIMIT_PER_MINUTE: '100000', ...vars, ...extra } });
  const harnessStartMs = preciseNow() - t0;
  try {
    const s = await withTimeout(startup, 30_000, 'start-up probe');
    const at = s.child.spawnargs.indexOf('--inspector-port');
    const inspectorPort = at >= 0 ? Number(s.child.spawnargs[at + 1]) : null;
    const tree = wranglerTree(s.child.pid);
    return {
      gateway,
      rootPid: s.child.pid,
      tree,
      startup: {
        spawnToFirst200Ms: s.readyAt - s.spawnedAt,
        harnessStartMs, // migrations + spawn + the harness's own readiness poll
        // Evidence of the mode: wrangler's inspector proxy listens on --inspector-port only when it runs.
        inspectorPort,
        inspectorPortListening: inspectorPort ? await portListening(inspectorPort) : null,
      },
    };
  } catch (err) {
    await gateway.stop();
    throw err;
  }
}

/** TCP ports `pid` listens on (its socket inodes matched against /proc/net/tcp{,6}). */
export function listeningPorts(pid) {
  const inodes = new Set();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const link = readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (link.startsWith('socket:[')) inodes.add(link.slice(8, -1));
    } catch {
      // closed meanwhile
    }
  }
  const ports = new Set();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      if (c[3] === '0A' && inodes.has(c[9])) ports.add(parseInt(c[1].split(':').at(-1), 16));
    }
  }
  return [...ports];
}

/**
 * The DevTools WebSocket URL of the Worker itself (`core:user:*`), straight from the workerd that runs it.
 * Miniflare starts that workerd with `--inspector-addr=localhost:0` in both modes; only wrangler's proxy in front of it is optional.
 */
export async function findWorkerInspector(workerdPids) {
  for (const pid of workerdPids) {
    for (const port of listeningPorts(pid)) {
      try {
        const res = await fetch(`http://127.0.0.1:${port}/json/list`, { signal: AbortSignal.timeout(1000) });
        if (res.status !== 200) continue;
        const targets = await res.json();
        const user = targets.find((t) => String(t.id).startsWith('core:user:'));
        if (user) return { pid, port, url: user.webSocketDebuggerUrl, id: user.id };
      } catch {
        // not an inspector
      }
    }
  }
  return null;
}
