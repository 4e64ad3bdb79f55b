// Latency benchmark of the gateway under `wrangler dev`: start-up time, bundle size, and per-delta latency, time to first delta, throughput, losses and runtime memory at 1/10/100 conversations, with and without wrangler's inspector proxy.
// Run: node bench/run.mjs [--conversations 1,10,10,10,10,10,100] [--sockets 2] [--deltas 50] [--delay 5] [--inspector on,off] [--timeout 60] [--max-seconds 285]
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { preciseNow } from '../tests/support/fake-upstream.mjs';
import { ROOT, buildOnce } from '../tests/support/harness.mjs';
import { MODES, startBenchGateway } from './lib/gateway.mjs';
import { rigFloor, runPhase } from './lib/phase.mjs';
import { sumCpuMs, sumRss } from './lib/proc.mjs';
import { fmtMB, fmtMs, roundDeep, summarize, table } from './lib/stats.mjs';
import { startUpstreamThread } from './lib/upstream.mjs';
import { note, sleep } from './lib/util.mjs';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const say = (line = '') => process.stdout.write(`${line}\n`);

// ---------------------------------------------------------------------------
// Options

const USAGE = `usage: node bench/run.mjs [--conversations 1,10,10,10,10,10,100] [--sockets 2] [--deltas 50] [--delay 5]
                         [--inspector on,off] [--timeout 60] [--max-seconds 285] [--out bench/results/latest.json]`;

function parseArgs(argv) {
  const opts = {
    // C=10 five times: the C=10 budgets are read from the five phases' samples together.
    conversations: [1, 10, 10, 10, 10, 10, 100],
    sockets: 2,
    deltas: 50,
    delay: 5,
    inspector: ['on', 'off'],
    timeout: 60,
    maxSeconds: 285,
    out: path.join(BENCH_DIR, 'results', 'latest.json'),
  };
  const ints = (s, name) => {
    const list = String(s).split(',').map((x) => Number(x.trim()));
    if (!list.length || list.some((n) => !Number.isInteger(n) || n < 0)) throw new Error(`--${name} takes whole numbers, got ${s}`);
    return list;
  };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--help' || argv[i] === '-h') {
      say(USAGE);
      process.exit(0);
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m) throw new Error(`unexpected argument ${argv[i]}\n${USAGE}`);
    const value = m[2] ?? argv[++i];
    if (value === undefined) throw new Error(`--${m[1]} needs a value\n${USAGE}`);
    switch (m[1]) {
      case 'conversations':
        opts.conversations = ints(value, m[1]).filter((n) => n > 0);
        break;
      case 'sockets':
      case 'deltas':
      case 'timeout':
        opts[m[1]] = Math.max(1, ints(value, m[1])[0]);
        break;
      case 'delay':
        opts.delay = ints(value, m[1])[0];
        break;
      case 'max-seconds':
        opts.maxSeconds = Math.max(30, ints(value, m[1])[0]);
        break;
      case 'inspector':
        opts.inspector = value.split(',').map((s) => s.trim());
        if (!opts.inspector.length || opts.inspector.some((s) => !MODES[s])) throw new Error(`--inspector takes on, off or on,off; got ${value}`);
        break;
      case 'out':
        opts.out = path.resolve(value);
        break;
      default:
        throw new Error(`unknown option --${m[1]}\n${USAGE}`);
    }
  }
  return opts;
}

function gitInfo() {
  const git = (...args) => execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  try {
    return { head: git('rev-parse', 'HEAD'), dirtyPaths: git('status', '--porcelain', '--', 'src', 'Cargo.toml', 'Cargo.lock').split('\n').filter(Boolean).length };
  } catch {
    return { head: null, dirtyPaths: null };
  }
}

const versionOf = (pkg) => {
  try {
    return JSON.parse(readFileSync(path.join(ROOT, 'node_modules', pkg, 'package.json'), 'utf8')).version;
  } catch {
    return null;
  }
};

// ---------------------------------------------------------------------------
// Bundle

/** The bundle budget: wasm + js, each gzip level 9, summed (below the Agents SDK peer's 442 KB). */
const BUNDLE_BUDGET_BYTES = 400_000;

function bundleSizes() {
  const file = (name) => {
    const p = path.join(ROOT, 'build', name);
    const raw = readFileSync(p);
    return { path: `build/${name}`, rawBytes: raw.length, gzipBytes: gzipSync(raw, { level: 9 }).length, mtime: statSync(p).mtime.toISOString() };
  };
  const wasm = file('index_bg.wasm');
  const js = file('index.js');
  return { wasm, js, totalRawBytes: wasm.rawBytes + js.rawBytes, totalGzipBytes: wasm.gzipBytes + js.gzipBytes };
}

// ---------------------------------------------------------------------------
// One mode: a fresh gateway with or without the inspector proxy, a warm-up turn, then every phase.

async function runMode(mode, { opts, upstream, runId, deadline, live }) {
  const { gateway, rootPid, tree, startup } = await startBenchGateway(mode, upstream.url);
  live.add(gateway);
  try {
    const result = {
      mode: mode.key,
      label: mode.label,
      env: { VSCODE_INSPECTOR_OPTIONS: mode.key === 'off' ? '{}' : null },
      startup,
      processes: { wranglerPid: rootPid, workerdPids: tree.workerd, others: tree.other },
      phases: [],
      skipped: [],
      failed: [],
    };
    note(`${mode.label}: ready ${(startup.spawnToFirst200Ms / 1000).toFixed(2)} s after spawn; workerd pids ${tree.workerd.join(', ')}`);
    if (!tree.workerd.length) note('no workerd process found under wrangler: RSS and CPU figures will be 0');

    // Warm-up (not reported): the first turn pays for JIT tiers, D1 and the first Durable Object.
    const ctx = { gateway, upstream, rootPid, tag: `${runId}-${mode.key}` };
    await runPhase(ctx, { C: 1, S: 1, N: 5, delay: 1, label: 'warmup', timeoutMs: 30_000 });
    await upstream.reset();

    // What the runtime costs doing nothing (timers, GC, background compilation), to read the per-phase CPU against.
    const idleCpu0 = sumCpuMs(tree.workerd);
    const idleAt0 = preciseNow();
    await sleep(1000);
    result.idle = {
      workerdCpuMsPerSecond: ((sumCpuMs(tree.workerd) - idleCpu0) * 1000) / (preciseNow() - idleAt0),
      workerdRssBytes: sumRss(tree.workerd),
    };

    for (const [index, C] of opts.conversations.entries()) {
      const remaining = deadline - preciseNow();
      if (remaining < 30_000) {
        result.skipped.push({ conversations: C, reason: 'time budget (--max-seconds) nearly spent' });
        note(`skipping C=${C} (${mode.key}): ${Math.round(remaining / 1000)} s left of the time budget`);
        continue;
      }
      const timeoutMs = Math.min(opts.timeout * 1000, remaining - 20_000);
      note(`${mode.key}: C=${C} S=${opts.sockets} N=${opts.deltas} delay=${opts.delay} ms`);
      // The index keeps conversation ids unique when a size is listed twice (--conversations 1,1,10).
      try {
        result.phases.push(await runPhase(ctx, { C, S: opts.sockets, N: opts.deltas, delay: opts.delay, label: `p${index}C${C}`, timeoutMs }));
      } catch (err) {
        // One broken phase is reported as such; the others still run and the report still prints.
        result.failed.push({ conversations: C, error: String(err?.message ?? err).slice(0, 300) });
        note(`${mode.key}: C=${C} failed: ${err?.message ?? err}`);
      }
      await upstream.reset();
      await sleep(500); // let the previous phase's closes and D1 writes drain before the next one
    }
    return result;
  } finally {
    await gateway.stop();
    live.delete(gateway);
  }
}

// ---------------------------------------------------------------------------
// Report

const ms = (v) => fmtMs(v, 2);

function printReport(results) {
  const { meta, bundle, floor, modes, budgets } = results;
  say();
  say(`Edge chat gateway latency benchmark  ${meta.date}`);
  say(`node ${meta.node}, wrangler ${meta.wrangler}, workerd ${meta.workerd}, ${meta.cpus} cores, load ${meta.loadavg.join(' ')} at start, git ${meta.git.head?.slice(0, 12) ?? '?'}${meta.git.dirtyPaths ? ` (+${meta.git.dirtyPaths} uncommitted paths in src/Cargo)` : ''}`);
  say(`workload: ${meta.options.sockets} sockets per conversation, ${meta.options.deltas} deltas per message, ${meta.options.delay} ms between upstream deltas; clock offset upstream thread - client ${fmtMs(meta.clockOffset.offsetMs, 4)} ms (rtt ${fmtMs(meta.clockOffset.rttMs, 3)} ms)`);
  say();
  say('Bundle');
  say(
    table(
      ['file', 'raw bytes', 'gzip -9 bytes'],
      [
        [bundle.wasm.path, bundle.wasm.rawBytes, bundle.wasm.gzipBytes],
        [bundle.js.path, bundle.js.rawBytes, bundle.js.gzipBytes],
        ['total', bundle.totalRawBytes, bundle.totalGzipBytes],
      ],
    ),
  );
  const within = bundle.totalGzipBytes <= BUNDLE_BUDGET_BYTES;
  say(`bundle budget: ${bundle.totalGzipBytes.toLocaleString('en-US')} B gzip of <= ${BUNDLE_BUDGET_BYTES.toLocaleString('en-US')} B: ${within ? 'met' : 'NOT met'}`);
  say();
  say('Start-up (spawn of wrangler dev -> first 200 of GET /health)');
  say(
    table(
      ['mode', 'spawn->200 ms', 'harness start s', 'inspector port listening'],
      modes.map((m) => [m.label, m.startup ? Math.round(m.startup.spawnToFirst200Ms) : '-', m.startup ? (m.startup.harnessStartMs / 1000).toFixed(1) : '-', m.startup?.inspectorPortListening ?? '-']),
    ),
  );
  say();
  say('Streaming (latencies in ms; added latency = client receive - upstream send stamp, per delta)');
  const rows = [];
  for (const f of floor) {
    rows.push(['no gateway (rig floor)', `${f.conversations}x${f.socketsPerConversation}`, `${f.receivedDeltas}/${f.expectedDeltas}`, f.expectedDeltas - f.receivedDeltas, '-', ms(f.addedLatencyMs.p50), ms(f.addedLatencyMs.p99), ms(f.addedLatencyMs.max), ms(f.ttfdOverheadMs?.p50), ms(f.ttfdOverheadMs?.p99), '-', '-', '-']);
  }
  for (const m of modes) {
    for (const p of m.phases ?? []) {
      rows.push([
        `inspector ${m.mode}`,
        `${p.conversations}x${p.socketsPerConversation}`,
        `${p.receivedDeltas}/${p.expectedDeltas}`,
        p.lostDeltas,
        p.duplicatedDeltas,
        ms(p.addedLatencyMs.p50),
        ms(p.addedLatencyMs.p99),
        ms(p.addedLatencyMs.max),
        ms(p.ttfdOverheadMs.p50),
        ms(p.ttfdOverheadMs.p99),
        p.deltasPerSecond === null ? '-' : Math.round(p.deltasPerSecond),
        p.pacedDeltasPerSecond === null ? '-' : Math.round(p.pacedDeltasPerSecond),
        fmtMB(p.runtime.peakRssBytes),
      ]);
    }
    for (const s of m.skipped ?? []) rows.push([`inspector ${m.mode}`, `${s.conversations}x${meta.options.sockets}`, 'skipped', '-', '-', '-', '-', '-', '-', '-', '-', '-', '-']);
    for (const f of m.failed ?? []) rows.push([`inspector ${m.mode}`, `${f.conversations}x${meta.options.sockets}`, 'FAILED', '-', '-', '-', '-', '-', '-', '-', '-', '-', '-']);
  }
  say(table(['mode', 'CxS', 'received', 'lost', 'dup', 'lat p50', 'lat p99', 'lat max', 'TTFD+ p50', 'TTFD+ p99', 'deltas/s', 'paced/s', 'peak RSS MB'], rows));
  say();
  say('Cost during each phase (runtime = workerd processes; wrangler = its node processes, where the inspector proxy runs)');
  const costRows = [];
  for (const m of modes) {
    for (const p of m.phases ?? []) {
      costRows.push([
        `inspector ${m.mode}`,
        `${p.conversations}x${p.socketsPerConversation}`,
        fmtMB(p.runtime.rssBeforeBytes),
        fmtMB(p.runtime.peakRssBytes),
        Math.round(p.runtime.workerdCpuMs),
        Math.round(p.runtime.wranglerNodeCpuMs),
        p.runtime.cpuUsPerUpstreamDelta === null ? '-' : Math.round(p.runtime.cpuUsPerUpstreamDelta),
        ms(p.ttfdParts.sendToUpstreamRequestMs.p50),
        ms(p.ackMs.p50),
        ms(p.addedLatencySteadyMs?.p99),
        p.turnWallMs === null ? '-' : Math.round(p.turnWallMs),
        ms(p.client.loopDelayP99Ms),
        p.machine.otherLoadCores.toFixed(2),
      ]);
    }
  }
  say(table(['mode', 'CxS', 'RSS before MB', 'RSS peak MB', 'workerd CPU ms', 'wrangler CPU ms', 'CPU us/delta', 'send->upstream p50', 'ack p50', 'steady lat p99', 'turn wall ms', 'client lag p99', 'other load'], costRows));
  say();
  say('Budgets (checked, not asserted)');
  say(table(['mode', 'budget', 'measured', 'limit', 'verdict'], budgets.map((b) => [b.mode, b.name, b.measured, b.limit, b.verdict])));
  const issues = [];
  for (const m of modes) {
    for (const p of m.phases ?? []) {
      const where = `inspector ${m.mode}, C=${p.conversations}`;
      if (p.incompleteSockets) issues.push(`${where}: ${p.incompleteSockets} sockets saw no agent:end in time`);
      if (p.connectFailures) issues.push(`${where}: ${p.connectFailures} of ${p.sockets} upgrades failed, e.g. ${JSON.stringify(p.connectFailureSamples[0])}`);
      if (p.socketsWithoutManifest) issues.push(`${where}: ${p.socketsWithoutManifest} sockets got no commands:manifest within 15 s`);
      if (p.errorCount) issues.push(`${where}: ${p.errorCount} error frames, e.g. ${JSON.stringify(p.errors[0])}`);
      if (p.seqGaps) issues.push(`${where}: ${p.seqGaps} seq gaps within a socket's stream`);
      if (p.unsequencedStreamFrames) issues.push(`${where}: ${p.unsequencedStreamFrames} stream frames without seq`);
      if (p.duplicatedStamps) issues.push(`${where}: ${p.duplicatedStamps} deltas delivered twice (same stamp)`);
      if (p.outOfOrderDeltas) issues.push(`${where}: ${p.outOfOrderDeltas} deltas out of order`);
      if (p.textMismatches) issues.push(`${where}: ${p.textMismatches} sockets whose text differs from what the upstream sent`);
      if (p.coalescedFrames) issues.push(`${where}: ${p.coalescedFrames} agent:text frames carried several upstream deltas`);
      if (p.upstream.retries) issues.push(`${where}: ${p.upstream.retries} extra upstream requests (retries)`);
      for (const pr of p.problems.slice(0, 3)) issues.push(`${where}: ${pr}`);
      if (p.machine.otherLoadCores > 0.3) {
        const top = p.machine.topForeignProcesses.map((t) => `${t.comm} ${Math.round(t.cpuMs)} ms`).join(', ');
        issues.push(`${where}: other processes on the machine used ${p.machine.otherLoadCores.toFixed(2)} cores meanwhile (${top}); its figures are noisier`);
      }
    }
  }
  for (const m of modes) for (const f of m.failed ?? []) issues.push(`inspector ${m.mode}, C=${f.conversations}: phase failed: ${f.error}`);
  if (issues.length) {
    say();
    say('Anomalies');
    for (const i of issues) say(`  - ${i}`);
  }
  say();
  say('Definitions: bench/README.md. "TTFD+" = time-to-first-delta overhead = (first agent:text receive - message send) - (upstream first stamp - upstream request arrival).');
  say('"paced/s" = the rate the upstream pacing allows (C*S*N / ((N-1)*delay)); deltas/s near it means the gateway kept up.');
}

function checkBudgets(bundle, modes) {
  const budgets = [];
  const add = (mode, name, measured, limit, ok) => budgets.push({ mode, name, measured, limit, verdict: measured === null || measured === undefined ? 'N/A' : ok ? 'PASS' : 'OVER' });
  for (const m of modes) {
    const mode = `inspector ${m.mode}`;
    // Every C=10 phase's samples together: one phase is ten turn starts and a thousand deltas, whose
    // percentiles move by milliseconds from one phase to the next on a shared 2-core machine.
    const c10 = (m.phases ?? []).filter((p) => p.conversations === 10);
    const c100 = (m.phases ?? []).find((p) => p.conversations === 100);
    // A C=10 phase that failed or lost sockets or deltas leaves its worst samples out of the pool:
    // no verdict is read from what is left.
    const broken = (m.failed ?? []).filter((f) => f.conversations === 10).length + c10.filter((p) => p.lostDeltas || p.incompleteSockets || p.connectFailures).length;
    const pooled = (key) => (c10.length ? summarize(c10.flatMap((p) => p.samples?.[key] ?? [])) : null);
    const spread = (pick) => {
      const values = c10.map(pick).filter((v) => v !== null && v !== undefined);
      const each = values.length > 1 ? `; each ${ms(Math.min(...values))}-${ms(Math.max(...values))}` : '';
      return c10.length > 1 || broken ? ` (${c10.length} phases pooled${each}${broken ? `; ${broken} incomplete` : ''})` : '';
    };
    const c10Budget = (name, value, pick, limit, max) =>
      budgets.push({ mode, name, measured: value == null ? null : `${ms(value)} ms${spread(pick)}`, limit, verdict: value == null ? 'N/A' : broken ? 'INCOMPLETE' : value <= max ? 'PASS' : 'OVER' });
    const lat = pooled('addedLatencyMs');
    c10Budget('C=10 added latency p50', lat?.p50, (p) => p.addedLatencyMs.p50, '<= 1 ms', 1);
    c10Budget('C=10 added latency p99', lat?.p99, (p) => p.addedLatencyMs.p99, '<= 5 ms', 5);
    const t = pooled('ttfdOverheadMs');
    c10Budget('C=10 TTFD overhead p50', t?.p50, (p) => p.ttfdOverheadMs.p50, '<= 10 ms', 10);
    // Not a budget: the TTFD's first part, pooled as the runtime floor prints it.
    const pre = pooled('sendToUpstreamRequestMs');
    if (pre?.p50 != null) budgets.push({ mode, name: 'C=10 send->upstream p50', measured: `${ms(pre.p50)} ms${spread((p) => p.ttfdParts.sendToUpstreamRequestMs.p50)}`, limit: '-', verdict: '-' });
    add(
      mode,
      'C=100 nothing lost',
      c100 ? `${c100.lostDeltas} lost, ${c100.incompleteSockets} incomplete, ${c100.connectFailures} not connected` : null,
      '0 lost',
      c100 && c100.lostDeltas === 0 && c100.incompleteSockets === 0 && c100.connectFailures === 0,
    );
  }
  // 400 KB read as 400,000 bytes, the stricter of the two readings.
  add('-', 'bundle gzip (wasm + js)', `${bundle.totalGzipBytes} B`, `<= ${BUNDLE_BUDGET_BYTES.toLocaleString('en-US')} B`, bundle.totalGzipBytes <= BUNDLE_BUDGET_BYTES);
  return budgets;
}

// ---------------------------------------------------------------------------

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const startedAt = preciseNow();
  const deadline = startedAt + opts.maxSeconds * 1000;
  const runId = randomBytes(3).toString('hex');
  const live = new Set();
  let upstream = null;
  const meta = {
    date: new Date().toISOString(),
    node: process.version,
    wrangler: versionOf('wrangler'),
    workerd: versionOf('workerd'),
    cpus: os.cpus().length,
    loadavg: os.loadavg().map((v) => Number(v.toFixed(2))),
    git: gitInfo(),
    options: { ...opts, out: path.relative(ROOT, opts.out) },
  };

  try {
    // Built (or found fresh) before timing anything, so the bundle measured is the one benchmarked.
    await buildOnce();
    const bundle = bundleSizes();
    upstream = await startUpstreamThread();
    meta.clockOffset = await upstream.clockOffset();
    if (Math.abs(meta.clockOffset.offsetMs) > 0.05) note(`the upstream thread's clock is ${meta.clockOffset.offsetMs.toFixed(3)} ms off this one; latencies carry that error`);

    const floor = [];
    for (const C of [...new Set(opts.conversations)]) floor.push(await rigFloor(upstream, { C, S: opts.sockets, N: opts.deltas, delay: opts.delay, tag: runId }));

    const modes = [];
    for (const key of opts.inspector) {
      if (deadline - preciseNow() < 60_000) {
        modes.push({ mode: key, label: MODES[key].label, phases: [], skipped: opts.conversations.map((c) => ({ conversations: c, reason: 'time budget' })) });
        continue;
      }
      try {
        modes.push(await runMode(MODES[key], { opts, upstream, runId, deadline, live }));
      } catch (err) {
        // A gateway that does not start is reported; the other mode still runs.
        note(`${MODES[key].label}: ${err?.message ?? err}`);
        modes.push({ mode: key, label: MODES[key].label, phases: [], skipped: [], failed: [{ conversations: 'all', error: String(err?.message ?? err).slice(0, 300) }] });
      }
    }
    meta.totalSeconds = (preciseNow() - startedAt) / 1000;
    const results = roundDeep({ meta, bundle, floor, modes, budgets: checkBudgets(bundle, modes) });
    printReport(results);
    mkdirSync(path.dirname(opts.out), { recursive: true });
    writeFileSync(opts.out, `${JSON.stringify(results, null, 2)}\n`);
    say();
    say(`wrote ${path.relative(process.cwd(), opts.out) || opts.out}; total ${meta.totalSeconds.toFixed(0)} s`);
  } finally {
    for (const g of live) await g.stop().catch(() => {});
    await upstream?.close().catch(() => {});
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`[bench] failed: ${err?.stack ?? err}\n`);
    // process.exit runs the harness's exit hook, which kills any wrangler process group still alive.
    process.exit(1);
  },
);
