// The comparison's peer harness (the Cloudflare Agents SDK chat agent, its fake upstream and its load client): copied from the read-only shared folder into a gitignored scratch directory and installed there once.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from '../../tests/support/harness.mjs';
import { note } from './util.mjs';

/** Where the peer's harness is shipped (read-only in CI): `../shared/peer` beside the checkout, or the folder PEER_DIR names. */
export const PEER_SRC = path.resolve(process.env.PEER_DIR ?? path.join(ROOT, '..', 'shared', 'peer'));
/** The scratch copy the comparison runs from (bench/.gitignore keeps it out of git). */
export const PEER_COPY = path.join(ROOT, 'bench', '.peer');

// What is generated or installed, never copied: the peer's own .gitignore names the same.
const GENERATED = new Set(['node_modules', 'dist', '.wrangler']);

/** Hash of the peer's shipped files (paths and contents), to tell a stale copy from a fresh one. */
function treeHash(dir) {
  const hash = createHash('sha256');
  const walk = (rel) => {
    for (const name of readdirSync(path.join(dir, rel)).sort()) {
      if (GENERATED.has(name)) continue;
      const p = path.join(rel, name);
      if (statSync(path.join(dir, p)).isDirectory()) walk(p);
      else hash.update(`${p}\0`).update(readFileSync(path.join(dir, p))).update('\0');
    }
  };
  walk('.');
  return hash.digest('hex');
}

function makeWritable(p) {
  const st = statSync(p);
  chmodSync(p, st.mode | 0o200);
  if (st.isDirectory()) for (const name of readdirSync(p)) makeWritable(path.join(p, name));
}

function npmCi(cwd) {
  return new Promise((resolve, reject) => {
    const child = spawn('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`npm ci in ${cwd} exited ${code}:\n${output.slice(-4000)}`))));
  });
}

/**
 * Makes PEER_COPY a current copy of PEER_SRC with its packages installed. The copy is refreshed when the shipped
 * files changed; `npm ci` runs only when the lock file changed or node_modules is missing, so a warm run costs
 * a hash of a few files.
 */
export async function preparePeer() {
  if (!existsSync(path.join(PEER_SRC, 'package-lock.json'))) throw new Error(`no peer harness at ${PEER_SRC} (set PEER_DIR to its folder)`);
  const sourceHash = treeHash(PEER_SRC);
  const lockHash = createHash('sha256').update(readFileSync(path.join(PEER_SRC, 'package-lock.json'))).digest('hex');
  const stampFile = path.join(PEER_COPY, '.bench-stamp.json');
  let stamp = {};
  try {
    stamp = JSON.parse(readFileSync(stampFile, 'utf8'));
  } catch {
    // no copy yet
  }
  if (stamp.sourceHash !== sourceHash) {
    mkdirSync(PEER_COPY, { recursive: true });
    for (const name of readdirSync(PEER_COPY)) if (name !== 'node_modules') rmSync(path.join(PEER_COPY, name), { recursive: true, force: true });
    for (const name of readdirSync(PEER_SRC)) {
      if (GENERATED.has(name)) continue;
      cpSync(path.join(PEER_SRC, name), path.join(PEER_COPY, name), { recursive: true });
    }
    // The shipped files are read-only; wrangler and npm write beside them.
    makeWritable(PEER_COPY);
    note(`peer harness copied from ${PEER_SRC} to ${path.relative(ROOT, PEER_COPY)}`);
  }
  const installed = existsSync(path.join(PEER_COPY, 'node_modules', 'wrangler', 'package.json'));
  if (stamp.lockHash !== lockHash || !installed) {
    const t0 = Date.now();
    note('peer harness: npm ci (first run only; the npm registry must be reachable)');
    await npmCi(PEER_COPY);
    note(`peer harness installed in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  }
  writeFileSync(stampFile, `${JSON.stringify({ sourceHash, lockHash }, null, 2)}\n`);
  return {
    dir: PEER_COPY,
    wrangler: path.join(PEER_COPY, 'node_modules', 'wrangler', 'bin', 'wrangler.js'),
    mock: path.join(PEER_COPY, 'upstream', 'mock-openai.mjs'),
    loadClient: path.join(PEER_COPY, 'load', 'bench.mjs'),
    procModule: path.join(PEER_COPY, 'load', 'proc.mjs'),
    versions: versionsIn(PEER_COPY, ['agents', '@cloudflare/ai-chat', 'ai', '@ai-sdk/openai-compatible', 'wrangler', 'workerd']),
  };
}

function versionsIn(dir, names) {
  const out = {};
  for (const name of names) {
    try {
      out[name] = JSON.parse(readFileSync(path.join(dir, 'node_modules', name, 'package.json'), 'utf8')).version;
    } catch {
      out[name] = null;
    }
  }
  return out;
}

/** Starts the peer's fake upstream (`upstream/mock-openai.mjs`) on a free loopback port; `stop()` ends it. */
export async function startMock(peer) {
  const child = spawn(process.execPath, [peer.mock, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MOCK_QUIET: '1' } });
  const stopChild = () => {
    try {
      child.kill('SIGKILL');
    } catch {
      // gone already
    }
  };
  process.on('exit', stopChild);
  let errors = '';
  child.stderr.on('data', (d) => (errors = (errors + d).slice(-4000)));
  const port = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`the fake upstream did not start: ${errors}`)), 15_000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = /^MOCK_LISTENING (\d+)$/m.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.on('close', (code) => reject(new Error(`the fake upstream exited ${code}: ${errors}`)));
  });
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    pid: child.pid,
    clockUrl: `${url}/clock`,
    statsUrl: `${url}/stats`,
    stats: async () => (await fetch(`${url}/stats`)).json(),
    async stop() {
      process.off('exit', stopChild);
      child.kill('SIGTERM');
      await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once('close', resolve)));
    },
  };
}
