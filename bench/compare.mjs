// The gateway against the runtime floor and the Cloudflare Agents SDK peer, in one run on one fake upstream: per C, time to first delta, per-delta latency, throughput, losses, runtime CPU per delta and memory, as ratios to the peer and differences from the floor, with the budgets; a socket.io case with several conversations per connection; and what idle sockets wake.
// Run: node bench/compare.mjs [--conversations 1,10,50] [--deltas 200] [--interval 1] [--repeat 1] [--sio 10x3] [--idle 30] [--idle-ping 3000] [--only idle]
import { execFileSync, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { preciseNow } from '../tests/support/fake-upstream.mjs';
import { ROOT, buildOnce, connectJson, connectSio } from '../tests/support/harness.mjs';
import { MODES, findWorkerInspector, startBenchGateway } from './lib/gateway.mjs';
import { preparePeer, startMock } from './lib/peer.mjs';
import { sumCpuMs, wranglerTree } from './lib/proc.mjs';
import { roundDeep, table } from './lib/stats.mjs';
import { note, sleep } from './lib/util.mjs';
import { byClass, startWakeCounter } from './lib/wakes.mjs';
import { startWrangler } from './lib/wrangler.mjs';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const say = (line = '') => process.stdout.write(`${line}\n`);
// The default Engine.IO ping interval (SIO_PING_INTERVAL_MS, README): idle figures are extrapolated to it.
const DEFAULT_PING_MS = 25_000;

const USAGE = `usage: node bench/compare.mjs [--conversations 1,10,50] [--deltas 200] [--interval 1] [--repeat 1]
                           [--sio 10x3 | --sio off] [--idle 30] [--idle-ping 3000] [--idle-sockets 5] [--only idle]
                           [--timeout 60] [--max-seconds 290] [--out bench/results/compare.json]`;

function parseArgs(argv) {
  const opts = {
    conversations: [1, 10, 50],
    deltas: 200,
    interval: 1,
    repeat: 1,
    sio: { connections: 10, conversations: 3 },
    idle: 30,
    idlePing: 3000,
    idleSockets: 5,
    only: null,
    timeout: 60,
    maxSeconds: 290,
    out: path.join(BENCH_DIR, 'results', 'compare.json'),
  };
  const int = (value, name, min = 0) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} takes a whole number >= ${min}, got ${value}\n${USAGE}`);
    return n;
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
        opts.conversations = value.split(',').map((v) => int(v, m[1], 1));
        break;
      case 'deltas':
      case 'repeat':
      case 'timeout':
        opts[m[1]] = int(value, m[1], 1);
        break;
      case 'interval':
      case 'idle':
        opts[m[1]] = int(value, m[1]);
        break;
      case 'idle-ping':
        opts.idlePing = int(value, m[1], 50);
        break;
      case 'idle-sockets':
        opts.idleSockets = int(value, m[1], 1);
        break;
      case 'max-seconds':
        opts.maxSeconds = int(value, m[1], 60);
        break;
      case 'sio': {
        const s = /^(\d+)x(\d+)$/.exec(value);
        if (value !== 'off' && !s) throw new Error(`--sio takes CONNECTIONSxCONVERSATIONS (10x3) or off, got ${value}`);
        opts.sio = s ? { connections: int(s[1], 'sio', 1), conversations: int(s[2], 'sio', 1) } : null;
        break;
      }
      case 'only':
        if (value !== 'idle') throw new Error(`--only takes idle, got ${value}`);
        opts.only = value;
        break;
      case 'out':
        opts.out = path.resolve(value);
        break;
      default:
        throw new Error(`unknown option --${m[1]}\n${USAGE}`);
    }
  }
  if (opts.only === 'idle' && opts.idle === 0) throw new Error('--only idle needs --idle above 0');
  return opts;
}

// ---------------------------------------------------------------------------
// Targets: each a `wrangler dev` with the inspector proxy off, against the same fake upstream.

/** The workerd that runs the Worker (the other one is wrangler's proxy in front): the one whose DevTools lists it. */
async function workerPid(rootPid) {
  const { workerd } = wranglerTree(rootPid);
  const found = await findWorkerInspector(workerd);
  if (!found) throw new Error(`no workerd under wrangler ${rootPid} lists a Worker on its DevTools endpoint`);
  return found.pid;
}

/** Starts what the options ask for, all at once: the floor, the gateway, the peer, and the idle case's own gateway. */
async function startTargets(peer, mock, opts) {
  const streaming = opts.only !== 'idle';
  const floorP = streaming ? startWrangler({ name: 'floor', cwd: path.join(BENCH_DIR, 'floor'), wranglerJs: path.join(ROOT, 'node_modules', 'wrangler', 'bin', 'wrangler.js'), vars: { UPSTREAM: mock.url } }) : null;
  const peerP = streaming ? startWrangler({ name: 'peer', cwd: path.join(peer.dir, 'agents-sdk'), wranglerJs: peer.wrangler, vars: { UPSTREAM_URL: `${mock.url}/v1` } }) : null;
  // The harness's start-up probe takes the next spawn: the two gateways start one after the other.
  const gatewaysP = (async () => {
    const t0 = preciseNow();
    const main = streaming ? await startBenchGateway(MODES.off, mock.url) : null;
    const startMs = preciseNow() - t0;
    // Its own gateway, so a shortened ping interval never touches the streaming figures.
    const idle = opts.idle > 0 ? await startBenchGateway(MODES.off, mock.url, { SIO_PING_INTERVAL_MS: String(opts.idlePing) }) : null;
    return { main, startMs, idle };
  })();
  const settled = await Promise.allSettled([floorP, peerP, gatewaysP]);
  const [floor, peerTarget, gateways] = settled.map((r) => (r.status === 'fulfilled' ? r.value : null));
  const failed = settled.find((r) => r.status === 'rejected');
  if (failed) {
    await Promise.all([floor?.stop(), peerTarget?.stop(), gateways?.main?.gateway.stop(), gateways?.idle?.gateway.stop()].map((p) => p?.catch(() => {})));
    throw failed.reason;
  }
  const targets = [];
  if (streaming) {
    const { main } = gateways;
    const token = await main.gateway.mintToken('bench');
    targets.push(
      { key: 'floor', label: 'runtime floor', adapter: 'gateway', wsUrl: floor.wsUrl, rootPid: floor.rootPid, startMs: floor.startMs, stop: floor.stop },
      { key: 'gateway', label: 'this gateway', adapter: 'gateway', wsUrl: main.gateway.wsUrl, httpUrl: main.gateway.url, rootPid: main.rootPid, startMs: gateways.startMs, token, stop: () => main.gateway.stop() },
      { key: 'peer', label: 'Agents SDK peer', adapter: 'agents-sdk', wsUrl: peerTarget.wsUrl, rootPid: peerTarget.rootPid, startMs: peerTarget.startMs, stop: peerTarget.stop },
    );
  }
  return { targets, idle: gateways.idle };
}

// ---------------------------------------------------------------------------
// One measurement: a load client process (the peer's, or the socket.io one), with the wrangler tree's CPU around it.

function runNode(script, args, timeoutMs) {
  return new Promise((resolve) => {
    const env = { ...process.env };
    delete env.GATEWAY_TOKEN; // the peer's gateway adapter would send it to the floor too
    const child = spawn(process.execPath, [script, ...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

async function measure(target, script, args, opts, scratch, name) {
  const out = path.join(scratch, `${name}.json`);
  const tree = wranglerTree(target.rootPid).all;
  const cpu0 = sumCpuMs(tree);
  const { code, stderr } = await runNode(script, [...args, '--out', out], (opts.timeout + 30) * 1000);
  const treeCpuMs = sumCpuMs(tree) - cpu0;
  let summary;
  try {
    summary = JSON.parse(readFileSync(out, 'utf8'));
  } catch {
    throw new Error(`${name}: the load client wrote no summary (exit ${code}): ${stderr.slice(-600)}`);
  }
  // Exit 2: some conversations did not complete; the summary says which.
  if (code !== 0 && code !== 2) throw new Error(`${name}: the load client exited ${code}: ${stderr.slice(-600)}`);
  summary.wrangler_tree_cpu_ms = treeCpuMs;
  summary.machine_loadavg_1m = os.loadavg()[0];
  return summary;
}

/** The peer's load client's arguments for one grid point against `target`. */
function loadArgs(target, { C, N, interval, mock, opts, label }) {
  return [
    '--adapter', target.adapter,
    '--url', target.wsUrl,
    '--concurrency', String(C),
    '--n', String(N),
    '--interval-ms', String(interval),
    '--clock-url', mock.clockUrl,
    '--stats-url', mock.statsUrl,
    '--timeout-s', String(opts.timeout),
    '--label', label,
    '--server-pid', String(target.workerPid),
    ...(target.token ? ['--token', target.token] : []),
  ];
}

/** AIChatAgent goes on streaming after its client left: the next point starts once the upstream is idle. */
async function upstreamIdle(mock, limitMs = 30_000) {
  const until = preciseNow() + limitMs;
  while (preciseNow() < until) {
    if ((await mock.stats()).active_streams === 0) return true;
    await sleep(200);
  }
  return false;
}

// ---------------------------------------------------------------------------
// Idle costs: what idle sockets of each framing wake, counted per Durable Object class.

const IDLE_SETTLE_MS = 3000;
const IDLE_FRAMINGS = 3;

/**
 * Opens `opts.idleSockets` sockets of one framing (each used for a short turn per conversation), lets them settle,
 * then counts the events every object class gets while they sit idle for `windowS`.
 */
async function idleWindow(counter, framing, open, windowS) {
  const sockets = await open();
  await sleep(IDLE_SETTLE_MS);
  await counter.take();
  const during = framing.keepalive?.(sockets);
  await sleep(windowS * 1000);
  const events = await counter.take();
  const kept = during?.stop();
  const connected = sockets.filter((s) => (s.ws ? s.ws.readyState === 1 : s.socket.connected)).length;
  await Promise.all(sockets.map((s) => s.close()));
  return { framing: framing.name, sockets: sockets.length, conversationsPerSocket: framing.conversations, keepalive: `${kept ?? ''}${kept ? '; ' : ''}${connected} of ${sockets.length} still connected`, events };
}

async function idleCase(idle, opts, deadline) {
  const { gateway, tree } = idle;
  const windowS = Math.min(opts.idle, Math.floor((deadline - preciseNow() - 30_000) / 1000 / IDLE_FRAMINGS) - 8);
  if (windowS < 5) return { skipped: 'time budget (--max-seconds) nearly spent' };
  const counter = await startWakeCounter(tree.workerd);
  const token = await gateway.mintToken('idle');
  const warm = 'idle warm-up [[mock n=5 interval_ms=1]]';
  const many = (make) => Promise.all(Array.from({ length: opts.idleSockets }, make));
  const result = { pingIntervalMs: opts.idlePing, defaultPingIntervalMs: DEFAULT_PING_MS, windowSeconds: windowS, settleMs: IDLE_SETTLE_MS, framings: [] };
  const enginePings = (sockets) => {
    let n = 0;
    for (const s of sockets) s.socket.io.engine.on('ping', () => n++);
    return { stop: () => `${n} Engine.IO pings from the gateway` };
  };
  try {
    result.framings.push(
      await idleWindow(
        counter,
        {
          name: 'JSON WebSocket',
          conversations: 1,
          // The protocol's keepalive, answered by the runtime (a WebSocket auto-response).
          keepalive(sockets) {
            let pongs = 0;
            for (const c of sockets) c.ws.on('message', (d) => (pongs += String(d).includes('"pong"') ? 1 : 0));
            const timer = setInterval(() => sockets.forEach((c) => c.ws.send(JSON.stringify({ event: 'ping' }))), 2000);
            return {
              stop: () => {
                clearInterval(timer);
                return `{"event":"ping"} every 2 s, ${pongs} pongs`;
              },
            };
          },
        },
        () =>
          many(async () => {
            const c = await connectJson(gateway.wsUrl, { token, conversationId: randomUUID() });
            await c.next('commands:manifest');
            await c.turn(warm);
            return c;
          }),
        windowS,
      ),
    );
    // The seed clients' connection: one connection object, a relay to each of the 3 conversations it used.
    result.framings.push(
      await idleWindow(
        counter,
        { name: 'socket.io connection', conversations: 3, keepalive: enginePings },
        () =>
          many(async () => {
            const s = await connectSio(gateway.url, { token });
            await s.next('commands:manifest');
            for (let m = 0; m < 3; m++) await s.turn(warm, { conversationId: randomUUID() });
            return s;
          }),
        windowS,
      ),
    );
    // A socket.io WebSocket bound to one conversation: the conversation's alarm is its heartbeat (README).
    result.framings.push(
      await idleWindow(
        counter,
        { name: 'socket.io bound to a conversation', conversations: 1, keepalive: enginePings },
        () =>
          many(async () => {
            const s = await connectSio(gateway.url, { token, conversationId: randomUUID() });
            await s.next('commands:manifest');
            await s.turn(warm);
            return s;
          }),
        windowS,
      ),
    );
  } finally {
    await counter.stop();
  }
  // Per idle socket-hour: events / socket / window, scaled to an hour. Every event in an idle window is a heartbeat,
  // once per ping interval, so at the default interval the rate is the measured one x measured / default interval.
  for (const f of result.framings) {
    const perHour = (n) => (n / f.sockets / windowS) * 3600;
    f.byClass = byClass(f.events);
    f.perSocketHourMeasured = Object.fromEntries(Object.entries(f.byClass).map(([k, n]) => [k, perHour(n)]));
    f.perSocketHourAtDefault = Object.fromEntries(Object.entries(f.byClass).map(([k, n]) => [k, (perHour(n) * opts.idlePing) / DEFAULT_PING_MS]));
  }
  return result;
}

// ---------------------------------------------------------------------------
// Report

const median = (values) => {
  const v = values.filter((x) => x !== null && x !== undefined && Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return null;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};

/** The figures of one target at one C: medians over the repeats, losses summed. */
function figures(summaries) {
  const pick = (f) => median(summaries.map(f));
  return {
    runs: summaries.length,
    ttfdP50: pick((s) => s.latency_ms.ttfd.p50),
    ttfdP99: pick((s) => s.latency_ms.ttfd.p99),
    deltaP50: pick((s) => s.latency_ms.per_delta.p50),
    deltaP99: pick((s) => s.latency_ms.per_delta.p99),
    deltasPerSecond: pick((s) => s.throughput.deltas_per_s),
    lost: summaries.reduce((n, s) => n + s.counts.deltas_lost, 0),
    duplicated: summaries.reduce((n, s) => n + s.counts.duplicates, 0),
    incomplete: summaries.reduce((n, s) => n + (s.counts.conversations - (s.counts.status.completed ?? 0)), 0),
    cpuUsPerDelta: pick((s) => s.server?.cpu_ms_per_1k_deltas),
    peakRssMb: pick((s) => s.server?.rss_peak_mb),
    clientLoopDelayP99Ms: pick((s) => s.client?.event_loop_delay_ms?.p99),
  };
}

const f1 = (v, d = 1) => (v === null || v === undefined ? '-' : v.toFixed(d));
const ratio = (a, b) => (a === null || b === null || !b ? '-' : `${(a / b).toFixed(2)}x`);
const diff = (a, b, d = 1) => (a === null || b === null ? '-' : `${a - b >= 0 ? '+' : ''}${(a - b).toFixed(d)}`);
const HEAD = ['TTFD p50 ms', 'TTFD p99 ms', 'per-delta p50 ms', 'per-delta p99 ms', 'deltas/s', 'lost/dup', 'CPU us/delta', 'peak RSS MB'];
const row = (label, f) => [label, f1(f?.ttfdP50), f1(f?.ttfdP99), f1(f?.deltaP50, 2), f1(f?.deltaP99, 2), f1(f?.deltasPerSecond, 0), f ? `${f.lost}/${f.duplicated}` : '-', f1(f?.cpuUsPerDelta, 0), f1(f?.peakRssMb)];

function printReport(results) {
  const { meta, grid, sio, idle, budgets } = results;
  say();
  say(`${grid.length ? 'Gateway vs runtime floor vs Agents SDK peer' : 'Gateway idle costs'}  ${meta.date}`);
  say(`node ${meta.node}, ${meta.cpus} cores, load average ${meta.loadavg.start.join(' ')} at start, ${meta.loadavg.end.join(' ')} at end; git ${meta.git?.slice(0, 12) ?? '?'}; peer: agents ${meta.peer.agents}, @cloudflare/ai-chat ${meta.peer['@cloudflare/ai-chat']}, wrangler ${meta.peer.wrangler}`);
  if (grid.length) {
    say(`workload: C conversations, one WebSocket each, one message each, ${meta.options.deltas} deltas ${meta.options.interval} ms apart from the fake upstream; inspector proxy off for all; ${meta.options.repeat > 1 ? `medians of ${meta.options.repeat} runs` : 'one run'}`);
    say("CPU and RSS: the workerd process that runs the Worker (not wrangler's proxy in front of it), sampled by the peer's load client");
    const loads = results.points.filter((p) => p.summary).map((p) => p.summary.machine_loadavg_1m);
    say(`machine load average (1 min) after each measurement: ${Math.min(...loads).toFixed(2)} to ${Math.max(...loads).toFixed(2)}`);
  }
  for (const C of meta.options.conversations) {
    const at = (key) => grid.find((g) => g.C === C && g.target === key)?.figures;
    const [fl, gw, pe] = [at('floor'), at('gateway'), at('peer')];
    if (!fl && !gw && !pe) continue;
    say();
    say(`C = ${C}`);
    const body = [row('runtime floor', fl), row('this gateway', gw), row('Agents SDK peer', pe)];
    if (gw && pe) body.push(['gateway / peer', ratio(gw.ttfdP50, pe.ttfdP50), ratio(gw.ttfdP99, pe.ttfdP99), ratio(gw.deltaP50, pe.deltaP50), ratio(gw.deltaP99, pe.deltaP99), ratio(gw.deltasPerSecond, pe.deltasPerSecond), '-', ratio(gw.cpuUsPerDelta, pe.cpuUsPerDelta), ratio(gw.peakRssMb, pe.peakRssMb)]);
    if (gw && fl) body.push(['gateway - floor', diff(gw.ttfdP50, fl.ttfdP50), diff(gw.ttfdP99, fl.ttfdP99), diff(gw.deltaP50, fl.deltaP50, 2), diff(gw.deltaP99, fl.deltaP99, 2), diff(gw.deltasPerSecond, fl.deltasPerSecond, 0), '-', diff(gw.cpuUsPerDelta, fl.cpuUsPerDelta, 0), diff(gw.peakRssMb, fl.peakRssMb)]);
    say(table(['target', ...HEAD], body));
  }
  if (sio) {
    say();
    say(`socket.io, several conversations per connection: ${sio.connections} connections x ${sio.conversationsPerConnection} conversations, one turn after the other on each connection (${sio.connections} streams at a time)`);
    const json = grid.find((g) => g.target === 'gateway' && g.C === sio.connections)?.figures;
    say(table(['this gateway', ...HEAD], [row(`JSON sockets, C = ${sio.connections}`, json), row(`socket.io ${sio.connections}x${sio.conversationsPerConnection}`, sio.figures)]));
  }
  if (idle) {
    say();
    if (idle.skipped) say(`Idle costs: skipped (${idle.skipped})`);
    else {
      say(`Idle costs: events each object class got while the sockets sat idle (${idle.windowSeconds} s per framing, Engine.IO ping every ${idle.pingIntervalMs} ms).`);
      say(`Per idle socket-hour at the default ${idle.defaultPingIntervalMs} ms interval = the measured rate x ${idle.pingIntervalMs}/${idle.defaultPingIntervalMs} (every idle event is a heartbeat, once per interval).`);
      const rows = [];
      for (const f of idle.framings) {
        for (const cls of new Set(['ConversationObject', 'ConnectionObject', ...Object.keys(f.byClass)])) {
          rows.push([f.framing, `${f.sockets} x ${f.conversationsPerSocket}`, cls, f.byClass[cls] ?? 0, f1(f.perSocketHourMeasured[cls] ?? 0), f1(f.perSocketHourAtDefault[cls] ?? 0)]);
        }
      }
      say(table(['framing', 'sockets x conversations', 'object class', 'events in window', 'per socket-hour, measured interval', 'per socket-hour, default interval'], rows));
      for (const f of idle.framings) say(`  ${f.framing}: ${f.keepalive}; by handler ${JSON.stringify(f.events)}`);
    }
  }
  if (budgets.length) {
    say();
    say('Budgets (checked, not asserted)');
    say(table(['budget', 'measured', 'limit', 'verdict'], budgets.map((b) => [b.name, b.measured, b.limit, b.verdict])));
  }
}

/**
 * The budgets, each read from the two targets of the same run (paired: the noise of a shared machine moves both),
 * as the median over the runs, with the runs' range when there are several.
 */
function checkBudgets(grid, sio, points) {
  if (!grid.length) return [];
  const out = [];
  const add = (name, measured, limit, ok) => out.push({ name, measured, limit, verdict: ok === null ? 'N/A' : ok ? 'met' : 'not met' });
  const paired = (C, a, b, pick, combine) => {
    const values = [];
    for (const rep of new Set(points.map((p) => p.rep))) {
      const [x, y] = [a, b].map((key) => points.find((p) => p.rep === rep && p.C === C && p.target === key)?.summary);
      const [vx, vy] = [x && pick(x), y && pick(y)];
      const v = vx != null && vy != null ? combine(vx, vy) : null;
      if (v !== null && Number.isFinite(v)) values.push(v);
    }
    return values.length ? { median: median(values), min: Math.min(...values), max: Math.max(...values), n: values.length } : null;
  };
  const runs = (v, fmt) => (v.n > 1 ? ` (${v.n} runs: ${fmt(v.min)} to ${fmt(v.max)})` : '');
  const ms = (x) => `${x >= 0 ? '+' : ''}${x.toFixed(2)} ms`;
  const ttfd = (s) => s.latency_ms.ttfd.p50;
  const p99 = (s) => s.latency_ms.per_delta.p99;
  const cpu = (s) => s.server?.cpu_ms_per_1k_deltas;
  for (const C of [1, 10]) {
    const v = paired(C, 'gateway', 'floor', ttfd, (g, f) => g - f);
    add(`TTFD p50 over the floor's, C = ${C}`, v ? `${ms(v.median)}${runs(v, ms)}` : '-', '<= +1 ms', v ? v.median <= 1 : null);
  }
  const v99 = paired(10, 'gateway', 'floor', p99, (g, f) => g - f);
  add("per-delta p99 over the floor's, C = 10", v99 ? `${ms(v99.median)}${runs(v99, ms)}` : '-', '<= +2 ms', v99 ? v99.median <= 2 : null);
  for (const [C, k] of [
    [10, 5],
    [50, 8],
  ]) {
    // The peer's CPU per delta over the gateway's: how many times less the gateway uses.
    const v = paired(C, 'peer', 'gateway', cpu, (p, g) => (g ? p / g : null));
    const times = (x) => `1/${x.toFixed(1)}`;
    add(`runtime CPU per delta against the peer's, C = ${C}`, v ? `${times(v.median)}${runs(v, times)}` : '-', `<= 1/${k}`, v ? v.median >= k : null);
  }
  const mine = [...grid.filter((g) => g.target === 'gateway').map((g) => ({ where: `C = ${g.C}`, f: g.figures })), ...(sio ? [{ where: 'socket.io case', f: sio.figures }] : [])];
  const bad = mine.filter(({ f }) => f.lost || f.duplicated || f.incomplete);
  add('nothing lost or duplicated (gateway, every case and run)', bad.length ? bad.map(({ where, f }) => `${where}: ${f.lost} lost, ${f.duplicated} dup, ${f.incomplete} incomplete`).join('; ') : `0 in ${mine.length} cases`, '0', mine.length ? !bad.length : null);
  return out;
}

// ---------------------------------------------------------------------------

function gitHead() {
  try {
    return execFileSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const startedAt = preciseNow();
  const deadline = startedAt + opts.maxSeconds * 1000;
  const loadStart = os.loadavg().map((v) => Number(v.toFixed(2)));
  await buildOnce();
  const peer = await preparePeer();
  const mock = await startMock(peer);
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'bench-compare-'));
  let started = null;
  try {
    note(opts.only === 'idle' ? 'starting a gateway for the idle case' : 'starting the runtime floor, the gateway and the peer (wrangler dev, inspector proxy off)');
    started = await startTargets(peer, mock, opts);
    const { targets } = started;
    for (const t of targets) {
      t.workerPid = await workerPid(t.rootPid);
      note(`${t.label}: ready in ${(t.startMs / 1000).toFixed(1)} s; the Worker runs in workerd ${t.workerPid}`);
    }
    // Warm-up (not reported): JIT tiers, the first Durable Objects, the upstream connections.
    for (const t of targets) {
      await measure(t, peer.loadClient, loadArgs(t, { C: 2, N: 20, interval: 1, mock, opts, label: `${t.key}-warmup` }), opts, scratch, `warmup-${t.key}`);
      await upstreamIdle(mock);
    }

    const points = [];
    const sioRuns = [];
    const skipped = [];
    // What the idle case needs at the end: its windows, their sockets' set-up, and slack.
    const idleReserveMs = opts.idle > 0 ? (opts.idle + 8) * IDLE_FRAMINGS * 1000 + 30_000 : 0;
    const enough = () => deadline - preciseNow() - idleReserveMs > (opts.timeout + 15) * 1000;
    for (let rep = 0; rep < (targets.length ? opts.repeat : 0); rep++) {
      for (const C of opts.conversations) {
        for (const t of targets) {
          if (!enough()) {
            skipped.push({ rep, C, target: t.key });
            continue;
          }
          note(`run ${rep + 1}/${opts.repeat}: ${t.label}, C=${C}`);
          try {
            const summary = await measure(t, peer.loadClient, loadArgs(t, { C, N: opts.deltas, interval: opts.interval, mock, opts, label: `${t.key}-c${C}-r${rep}` }), opts, scratch, `${t.key}-c${C}-r${rep}`);
            points.push({ rep, C, target: t.key, summary });
          } catch (err) {
            note(String(err?.message ?? err));
            points.push({ rep, C, target: t.key, error: String(err?.message ?? err).slice(0, 400) });
          }
          if (!(await upstreamIdle(mock))) note('the upstream still streams 30 s later; going on');
          await sleep(300);
        }
      }
      if (opts.sio && enough()) {
        const gw = targets.find((t) => t.key === 'gateway');
        note(`run ${rep + 1}/${opts.repeat}: socket.io ${opts.sio.connections}x${opts.sio.conversations}`);
        const args = [
          '--url', gw.httpUrl,
          '--token', gw.token,
          '--connections', String(opts.sio.connections),
          '--conversations', String(opts.sio.conversations),
          '--n', String(opts.deltas),
          '--interval-ms', String(opts.interval),
          '--clock-url', mock.clockUrl,
          '--timeout-s', String(opts.timeout),
          '--server-pid', String(gw.workerPid),
          '--proc-module', peer.procModule,
          '--label', `sio-r${rep}`,
        ];
        try {
          sioRuns.push(await measure(gw, path.join(BENCH_DIR, 'lib', 'sio-load.mjs'), args, opts, scratch, `sio-r${rep}`));
        } catch (err) {
          note(String(err?.message ?? err));
        }
        await upstreamIdle(mock);
      }
    }

    let idle = null;
    if (opts.idle > 0) {
      note(`idle costs: ${opts.idleSockets} sockets of each framing, up to ${opts.idle} s each`);
      idle = await idleCase(started.idle, opts, deadline);
    }

    const grid = [];
    for (const C of opts.conversations) {
      for (const t of targets) {
        const ok = points.filter((p) => p.C === C && p.target === t.key && p.summary).map((p) => p.summary);
        if (ok.length) grid.push({ C, target: t.key, figures: figures(ok) });
      }
    }
    const sio = sioRuns.length ? { connections: opts.sio.connections, conversationsPerConnection: opts.sio.conversations, figures: figures(sioRuns) } : null;
    const meta = {
      date: new Date().toISOString(),
      node: process.version,
      cpus: os.cpus().length,
      loadavg: { start: loadStart, end: os.loadavg().map((v) => Number(v.toFixed(2))) },
      git: gitHead(),
      peer: peer.versions,
      options: { ...opts, out: path.relative(ROOT, opts.out) },
      targets: targets.map((t) => ({ key: t.key, label: t.label, startMs: t.startMs, workerPid: t.workerPid })),
      skipped,
      totalSeconds: (preciseNow() - startedAt) / 1000,
    };
    const results = roundDeep({ meta, grid, sio, idle, budgets: checkBudgets(grid, sio, points), points, sioRuns });
    printReport(results);
    mkdirSync(path.dirname(opts.out), { recursive: true });
    writeFileSync(opts.out, `${JSON.stringify(results, null, 2)}\n`);
    say();
    if (skipped.length) say(`skipped for time: ${skipped.map((s) => `${s.target} C=${s.C} (run ${s.rep + 1})`).join(', ')}`);
    say(`wrote ${path.relative(process.cwd(), opts.out) || opts.out}; total ${meta.totalSeconds.toFixed(0)} s`);
  } finally {
    for (const t of started?.targets ?? []) await t.stop().catch(() => {});
    await started?.idle?.gateway.stop().catch(() => {});
    await mock.stop().catch(() => {});
    rmSync(scratch, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`[bench] failed: ${err?.stack ?? err}\n`);
    process.exit(1);
  },
);
