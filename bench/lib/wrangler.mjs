// Starts a `wrangler dev` that is not the gateway (the runtime floor, the peer) on free loopback ports, with the inspector proxy off, and stops its whole process group.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { preciseNow } from '../../tests/support/fake-upstream.mjs';
import { freePort } from '../../tests/support/harness.mjs';
import { wranglerTree } from './proc.mjs';
import { sleep } from './util.mjs';

const live = new Set();
process.on('exit', () => {
  for (const pid of live) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
});

/**
 * `wrangler dev` of the Worker in `cwd` (its wrangler.toml), run by the wrangler at `wranglerJs`, with `vars`.
 * Resolves once GET /health answers 200; `stop()` ends its process group and removes its persist dir.
 */
export async function startWrangler({ name, cwd, wranglerJs, vars = {}, readyTimeoutMs = 90_000 }) {
  const port = await freePort();
  const state = mkdtempSync(path.join(tmpdir(), `bench-${name}-`));
  const args = [
    wranglerJs,
    'dev',
    '--ip', '127.0.0.1',
    '--port', String(port),
    '--inspector-port', String(await freePort()),
    '--persist-to', state,
    '--show-interactive-dev-session=false',
    '--log-level', 'warn',
    ...Object.entries(vars).flatMap(([k, v]) => ['--var', `${k}:${v}`]),
  ];
  const spawnedAt = preciseNow();
  // VSCODE_INSPECTOR_OPTIONS: wrangler 4.86 then runs without its DevTools inspector proxy (TOOLCHAIN.md).
  const env = { ...process.env, VSCODE_INSPECTOR_OPTIONS: '{}', WRANGLER_SEND_METRICS: 'false', NO_UPDATE_NOTIFIER: '1', CI: '1', NO_COLOR: '1' };
  const child = spawn(process.execPath, args, { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child.pid);
  let output = '';
  const keep = (d) => (output = (output + d).slice(-32_000));
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exited = null;
  const exit = new Promise((resolve) => child.on('close', (code, signal) => resolve((exited = { code, signal }))));

  const stop = async () => {
    if (!exited) {
      try {
        process.kill(-child.pid, 'SIGTERM');
      } catch {
        // gone already
      }
      if (!(await Promise.race([exit, sleep(5000).then(() => null)]))) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          // gone already
        }
        await exit;
      }
    }
    live.delete(child.pid);
    rmSync(state, { recursive: true, force: true });
  };

  const url = `http://127.0.0.1:${port}`;
  for (;;) {
    if (exited) throw new Error(`${name}: wrangler dev exited (${JSON.stringify(exited)}) before /health answered:\n${output}`);
    if (preciseNow() - spawnedAt > readyTimeoutMs) {
      await stop();
      throw new Error(`${name}: /health did not answer 200 within ${readyTimeoutMs} ms:\n${output}`);
    }
    try {
      const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  return { name, url, wsUrl: `ws://127.0.0.1:${port}`, rootPid: child.pid, tree: wranglerTree(child.pid), startMs: preciseNow() - spawnedAt, output: () => output, stop };
}
