// Reload at scale under `wrangler dev`: opens one JSON WebSocket on each of N live conversations, then times POST /admin/reload until every socket has `system:reload`, and checks the admin's answer (`failed: 0`, every conversation reached) and that no socket got it twice.
// Run: node bench/reload.mjs [--conversations 2000] [--runs 4] [--batch 50] [--inspector off] [--shard-size N]
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import WebSocket from 'ws';
import { preciseNow } from '../tests/support/fake-upstream.mjs';
import { MODES, startBenchGateway } from './lib/gateway.mjs';
import { sumCpuMs, sumRss } from './lib/proc.mjs';
import { note, pool, sleep, withTimeout } from './lib/util.mjs';

const say = (line = '') => process.stdout.write(`${line}\n`);
const USAGE = 'usage: node bench/reload.mjs [--conversations 2000] [--runs 4] [--batch 50] [--inspector off] [--shard-size N] [--timeout 120]';

function parseArgs(argv) {
  const opts = { conversations: 2000, runs: 4, batch: 50, inspector: 'off', shardSize: null, timeout: 120 };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--help' || argv[i] === '-h') {
      say(USAGE);
      process.exit(0);
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m) throw new Error(`unexpected argument ${argv[i]}\n${USAGE}`);
    const value = m[2] ?? argv[++i];
    if (value === undefined) throw new Error(`--${m[1]} needs a value\n${USAGE}`);
    const whole = () => {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1) throw new Error(`--${m[1]} takes a whole number >= 1, got ${value}`);
      return n;
    };
    switch (m[1]) {
      case 'conversations':
        opts.conversations = whole();
        break;
      case 'runs':
        opts.runs = whole();
        break;
      case 'batch':
        opts.batch = whole();
        break;
      case 'timeout':
        opts.timeout = whole();
        break;
      case 'shard-size':
        opts.shardSize = whole();
        if (opts.shardSize < 2 || opts.shardSize > 990) throw new Error(`--shard-size takes 2 to 990 (FANOUT_SHARD_SIZE), got ${value}`);
        break;
      case 'inspector':
        if (!MODES[value]) throw new Error(`--inspector takes on or off, got ${value}`);
        opts.inspector = value;
        break;
      default:
        throw new Error(`unknown option --${m[1]}\n${USAGE}`);
    }
  }
  return opts;
}

const pct = (sorted, p) => sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
const ms = (x) => (x === undefined ? '-' : `${x.toFixed(1)} ms`);

/** One JSON socket on its own conversation; resolves once its `commands:manifest` came (it is attached and registered live). */
function openSocket(wsUrl, token) {
  const conversationId = randomUUID();
  const ws = new WebSocket(`${wsUrl}/chat?conversationId=${conversationId}&token=${encodeURIComponent(token)}`);
  const s = { ws, conversationId, reloads: [] };
  const attached = new Promise((resolve, reject) => {
    ws.on('message', (data) => {
      const at = preciseNow();
      let frame;
      try {
        frame = JSON.parse(String(data));
      } catch {
        return;
      }
      if (frame.event === 'commands:manifest') resolve(s);
      else if (frame.event === 'system:reload') s.reloads.push({ at, data: frame.data });
    });
    ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused with ${res.statusCode}`)));
    ws.once('error', reject);
    ws.once('close', () => reject(new Error('closed before its manifest')));
  });
  return withTimeout(attached, 30_000, `socket on ${conversationId}`);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const mode = MODES[opts.inspector];
  if (opts.shardSize) {
    // startBenchGateway passes BENCH_VARS on to the gateway.
    const vars = process.env.BENCH_VARS ? JSON.parse(process.env.BENCH_VARS) : {};
    process.env.BENCH_VARS = JSON.stringify({ ...vars, FANOUT_SHARD_SIZE: String(opts.shardSize) });
  }
  say(`reload benchmark: ${opts.conversations} conversations x 1 JSON socket, ${opts.runs} reloads, ${mode.label}`);
  say(`machine: ${os.cpus().length} cores, load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} at start`);

  // No model call is made; the fake upstream's address only fills the provider vars.
  const { gateway, tree } = await startBenchGateway(mode, 'http://127.0.0.1:9');
  const sockets = [];
  let failure = null;
  try {
    const token = await gateway.mintToken(`reload-bench-${randomUUID().slice(0, 8)}`);
    const t0 = preciseNow();
    await pool(
      Array.from({ length: opts.conversations }, (_, k) => k),
      opts.batch,
      async () => {
        sockets.push(await openSocket(gateway.wsUrl, token));
      },
    );
    const openMs = preciseNow() - t0;
    const stats = await gateway.http('GET', '/admin/stats', { token: gateway.adminToken });
    say(`opened ${sockets.length} sockets in ${(openMs / 1000).toFixed(1)} s (${opts.batch} upgrades in flight); live registry: ${JSON.stringify(stats.json?.live)}`);
    if (stats.json?.live?.conversations !== opts.conversations) throw new Error(`the live registry lists ${stats.json?.live?.conversations} conversations, not ${opts.conversations}`);
    await sleep(500);

    const results = [];
    for (let run = 1; run <= opts.runs; run++) {
      const reason = `bench reload ${run} ${randomUUID()}`;
      const got = (s) => s.reloads.find((r) => r.data?.reason === reason);
      const cpuBefore = sumCpuMs(tree.workerd);
      const sentAt = preciseNow();
      const res = await gateway.http('POST', '/admin/reload', { token: gateway.adminToken, body: { reason } });
      const answeredMs = preciseNow() - sentAt;
      if (res.status !== 200) throw new Error(`POST /admin/reload answered ${res.status}: ${res.text}`);
      const deadline = sentAt + opts.timeout * 1000;
      while (sockets.some((s) => !got(s)) && preciseNow() < deadline) await sleep(5);
      const times = sockets.map(got).filter(Boolean).map((r) => r.at - sentAt).sort((a, b) => a - b);
      await sleep(500); // a second copy would come right behind the first
      const twice = sockets.filter((s) => s.reloads.filter((r) => r.data?.reason === reason).length > 1).length;
      const r = {
        run,
        answer: res.json,
        answeredMs,
        received: times.length,
        twice,
        firstMs: times[0],
        p50Ms: pct(times, 50),
        p99Ms: pct(times, 99),
        allMs: times.length === sockets.length ? times.at(-1) : undefined,
        workerdCpuMs: sumCpuMs(tree.workerd) - cpuBefore,
        workerdRssMB: sumRss(tree.workerd) / 2 ** 20,
        loadavg: os.loadavg()[0],
      };
      results.push(r);
      say(
        `run ${run}: answer ${JSON.stringify(res.json)} after ${ms(answeredMs)}; ${r.received}/${sockets.length} sockets got it (twice: ${twice}); ` +
          `first ${ms(r.firstMs)}, p50 ${ms(r.p50Ms)}, p99 ${ms(r.p99Ms)}, all ${ms(r.allMs)}; workerd CPU ${r.workerdCpuMs.toFixed(0)} ms, RSS ${r.workerdRssMB.toFixed(0)} MB, load ${r.loadavg.toFixed(2)}`,
      );
      await sleep(500);
    }

    const ok = (r) => r.answer?.failed === 0 && r.answer?.conversations === opts.conversations && r.received === sockets.length && r.twice === 0;
    // The first reload wakes the objects, evicted while the sockets sat idle (their hibernated
    // sockets stay open); the later ones find them in memory.
    const later = results.slice(1);
    const med = (key) => {
      const v = later.map((r) => r[key]).filter((x) => x !== undefined).sort((a, b) => a - b);
      return v.length ? v[Math.floor((v.length - 1) / 2)] : undefined;
    };
    say();
    say(`first reload (wakes ${opts.conversations} idle objects): every socket has system:reload after ${ms(results[0].allMs)}, workerd CPU ${results[0].workerdCpuMs.toFixed(0)} ms`);
    if (later.length) {
      say(`median of the ${later.length} later reloads: every socket has system:reload after ${ms(med('allMs'))} (answer after ${ms(med('answeredMs'))}, p50 socket ${ms(med('p50Ms'))}), workerd CPU ${med('workerdCpuMs').toFixed(0)} ms`);
    }
    say(`every run failed: 0, reached all, none twice: ${results.every(ok) ? 'yes' : 'NO'}`);
    if (!results.every(ok)) process.exitCode = 1;
  } catch (err) {
    failure = err;
  } finally {
    await Promise.all(
      sockets.map(
        (s) =>
          new Promise((resolve) => {
            if (s.ws.readyState === WebSocket.CLOSED) return resolve();
            s.ws.once('close', resolve);
            s.ws.close();
            setTimeout(resolve, 2000).unref();
          }),
      ),
    );
    await gateway.stop();
  }
  if (failure) throw failure;
}

main().catch((err) => {
  note(`failed: ${err?.stack ?? err}`);
  process.exit(1);
});
