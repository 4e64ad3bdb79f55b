// Where the Worker's CPU goes while it streams: a V8 CPU profile of one benchmark phase, taken from the Worker's own DevTools endpoint in workerd, summarized by self and inclusive time.
// Run: node bench/profile.mjs [--conversations 10] [--sockets 2] [--deltas 50] [--delay 5] [--inspector off|on] [--interval 100] [--top 25]
// Writes bench/results/profile.cpuprofile (open it in Chrome DevTools > Performance); it is not committed (bench/.gitignore).
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildOnce } from '../tests/support/harness.mjs';
import { cdp } from './lib/cdp.mjs';
import { MODES, findWorkerInspector, startBenchGateway } from './lib/gateway.mjs';
import { runPhase } from './lib/phase.mjs';
import { fmtMs, table } from './lib/stats.mjs';
import { startUpstreamThread } from './lib/upstream.mjs';
import { note } from './lib/util.mjs';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const say = (line = '') => process.stdout.write(`${line}\n`);

function parseArgs(argv) {
  const opts = { conversations: 10, sockets: 2, deltas: 50, delay: 5, inspector: 'off', interval: 100, top: 25 };
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m || !(m[1] in opts)) throw new Error(`unknown argument ${argv[i]}`);
    const value = m[2] ?? argv[++i];
    opts[m[1]] = m[1] === 'inspector' ? value : Number(value);
    if (m[1] === 'inspector' ? !MODES[value] : !Number.isInteger(opts[m[1]]) || opts[m[1]] < 0) throw new Error(`bad value for --${m[1]}: ${value}`);
  }
  return opts;
}

// Names of frames that are not code of the Worker: V8's own buckets.
const META = new Set(['(root)', '(program)', '(idle)', '(garbage collector)']);

const kindOf = (frame) => {
  if (META.has(frame.functionName)) return frame.functionName;
  if (frame.url.startsWith('wasm://') || /::|^\$?func\d+$|^wasm-function/.test(frame.functionName)) return 'wasm (Rust)';
  if (frame.url) return 'JS (glue, runtime)';
  return 'native / builtin';
};

/**
 * Self and inclusive sample counts per function (by name and script), and totals per kind.
 * Counts, not time: workerd's sampler leaves long gaps (tens of ms) between samples, so a sample's time delta
 * says when the next sample came, not how long the function ran.
 */
function analyze(profile, sources = new Map()) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const key = (n) => {
    const f = n.callFrame;
    const where = f.url ? path.basename(f.url) : '';
    if (f.functionName || !sources.has(f.scriptId)) return `${f.functionName || '(anonymous)'}  ${where}`.trim();
    // Minified glue has many anonymous functions: name each by the start of its source.
    return `(anonymous) ${where}:${f.lineNumber}:${f.columnNumber} ${snippet(sources.get(f.scriptId), f.lineNumber, f.columnNumber)}`;
  };
  const self = new Map();
  const incl = new Map();
  const kinds = new Map();
  let total = 0;
  profile.samples.forEach((id) => {
    const dt = 1;
    const leaf = byId.get(id);
    total += dt;
    self.set(key(leaf), (self.get(key(leaf)) ?? 0) + dt);
    const kind = kindOf(leaf.callFrame);
    kinds.set(kind, (kinds.get(kind) ?? 0) + dt);
    // Each function once per stack, so recursion is not counted twice.
    const seen = new Set();
    for (let n = leaf; n; n = byId.get(parent.get(n.id))) {
      const k2 = key(n);
      if (seen.has(k2) || META.has(n.callFrame.functionName)) continue;
      seen.add(k2);
      incl.set(k2, (incl.get(k2) ?? 0) + dt);
    }
  });
  const sorted = (m) => [...m.entries()].sort((a, b) => b[1] - a[1]);
  return { totalMs: total, self: sorted(self), inclusive: sorted(incl), kinds: sorted(kinds) };
}

/** The first characters of a function's source, on one line. */
function snippet(source, line, column) {
  const text = source.split('\n').slice(line, line + 6).join(' ');
  return text.slice(column, column + 100).replace(/\s+/g, ' ');
}

/** Sources of the JavaScript scripts a profile names, for labelling anonymous frames. */
async function scriptSources(devtools, profile) {
  const ids = new Set(profile.nodes.filter((n) => n.callFrame.url && !n.callFrame.url.startsWith('wasm://')).map((n) => n.callFrame.scriptId));
  const sources = new Map();
  for (const scriptId of ids) {
    try {
      sources.set(scriptId, (await devtools.send('Debugger.getScriptSource', { scriptId })).scriptSource);
    } catch {
      // An internal script without source: its frames keep their bare names.
    }
  }
  return sources;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const mode = MODES[opts.inspector];
  await buildOnce();
  const upstream = await startUpstreamThread();
  let gw = null;
  let devtools = null;
  try {
    const started = await startBenchGateway(mode, upstream.url);
    gw = started.gateway;
    const ctx = { gateway: gw, upstream, rootPid: started.rootPid, tag: `prof-${randomBytes(3).toString('hex')}` };
    await runPhase(ctx, { C: 1, S: 1, N: 5, delay: 1, label: 'warmup', timeoutMs: 30_000 });
    const target = await findWorkerInspector(started.tree.workerd);
    if (!target) throw new Error("no DevTools endpoint of the Worker found on wrangler's workerd processes");
    note(`profiling ${target.id} through ${target.url} (workerd pid ${target.pid}), ${mode.label}`);
    devtools = await cdp(target.url);
    await devtools.send('Debugger.enable');
    await devtools.send('Profiler.enable');
    await devtools.send('Profiler.setSamplingInterval', { interval: opts.interval });
    let profile = null;
    const phase = await runPhase(
      ctx,
      { C: opts.conversations, S: opts.sockets, N: opts.deltas, delay: opts.delay, label: 'profiled', timeoutMs: 60_000 },
      {
        beforeSend: () => devtools.send('Profiler.start'),
        afterEnd: async () => {
          profile = (await devtools.send('Profiler.stop')).profile;
        },
      },
    );
    const out = path.join(BENCH_DIR, 'results', 'profile.cpuprofile');
    mkdirSync(path.dirname(out), { recursive: true });
    writeFileSync(out, JSON.stringify(profile));

    const a = analyze(profile, await scriptSources(devtools, profile));
    const busy = a.totalMs - (a.kinds.find(([k]) => k === '(idle)')?.[1] ?? 0);
    const pct = (v) => `${((100 * v) / busy).toFixed(1)}%`;
    const upstreamDeltas = Math.max(1, phase.upstream.deltasSent);
    say(`\nProfile of one phase: ${opts.conversations}x${opts.sockets} sockets, ${opts.deltas} deltas, ${opts.delay} ms apart; ${mode.label}`);
    say(`added latency p50 ${fmtMs(phase.addedLatencyMs.p50)} ms, p99 ${fmtMs(phase.addedLatencyMs.p99)} ms; ${phase.upstream.deltasSent} upstream deltas`);
    say(`workerd CPU (from /proc, profiler attached): ${Math.round(phase.runtime.workerdCpuMs)} ms = ${Math.round((phase.runtime.workerdCpuMs * 1000) / upstreamDeltas)} us per upstream delta, turn overhead included`);
    say(`${profile.samples.length} samples over ${((profile.endTime - profile.startTime) / 1000).toFixed(0)} ms, ${busy} not idle; shares below are of those\n`);
    say(table(['kind', 'samples', 'share'], a.kinds.filter(([k]) => k !== '(idle)').map(([k, v]) => [k, v, pct(v)])));
    say(`\nTop ${opts.top} by self samples`);
    say(table(['function', 'self', 'share'], a.self.filter(([k]) => !k.startsWith('(idle)')).slice(0, opts.top).map(([k, v]) => [k.slice(0, 190), v, pct(v)])));
    say(`\nTop ${opts.top} by inclusive samples`);
    say(table(['function', 'incl', 'share'], a.inclusive.slice(0, opts.top).map(([k, v]) => [k.slice(0, 190), v, pct(v)])));
    say(`\nwrote ${path.relative(process.cwd(), out)}`);
  } finally {
    devtools?.close();
    await gw?.stop();
    await upstream.close();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`[profile] failed: ${err?.stack ?? err}\n`);
    process.exit(1);
  },
);
