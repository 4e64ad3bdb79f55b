// The runtime floor: the benchmark's C=10 phase against a minimal Durable Object (bench/floor/src/index.js) instead of the gateway, to show what wrangler dev itself costs for the same per-turn I/O.
// Run: node bench/floor/run.mjs [--phases 5] [--conversations 10] [--sockets 2] [--deltas 50] [--delay 5]
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { preciseNow } from '../../tests/support/fake-upstream.mjs';
import { summarize } from '../lib/stats.mjs';
import { startUpstreamThread } from '../lib/upstream.mjs';
import { sleep, stampsOf } from '../lib/util.mjs';
import { startWrangler } from '../lib/wrangler.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const WRANGLER = path.join(HERE, '..', '..', 'node_modules', 'wrangler', 'bin', 'wrangler.js');

const opts = { phases: 5, conversations: 10, sockets: 2, deltas: 50, delay: 5 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const key = argv[i].replace(/^--/, '');
  if (!(key in opts) || !Number.isInteger(Number(argv[i + 1]))) throw new Error(`bad argument ${argv[i]} ${argv[i + 1] ?? ''}`);
  opts[key] = Number(argv[i + 1]);
}
if (opts.phases < 1 || opts.conversations < 1 || opts.sockets < 1 || opts.deltas < 1) throw new Error('--phases, --conversations, --sockets and --deltas take 1 or more');

/** Opens a socket to conversation `id`; resolves once its manifest came. */
async function open(port, id) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/chat?conversationId=${id}`, { perMessageDeflate: false });
  const s = { ws, firstTextAt: null, latencies: [] };
  s.ended = new Promise((resolve) => {
    ws.on('message', (data) => {
      const t = preciseNow();
      const frame = JSON.parse(data.toString());
      if (frame.event === 'agent:text') {
        s.firstTextAt ??= t;
        for (const stamp of stampsOf(frame.data.text)) s.latencies.push(t - stamp);
      } else if (frame.event === 'agent:end') {
        resolve();
      }
    });
  });
  await new Promise((resolve, reject) => {
    ws.once('message', resolve); // the manifest
    ws.once('error', reject);
  });
  return s;
}

/** One phase: C conversations x S sockets, one stamped message each, all sent in one loop (as the benchmark does). */
async function phase(port, upstream, label, { C, S, N, delay }) {
  const convs = [];
  for (let i = 0; i < C; i++) {
    const id = `floor-${label}-${i}`;
    const sockets = [];
    for (let k = 0; k < S; k++) sockets.push(await open(port, id));
    convs.push({ id, sockets });
  }
  await sleep(250);
  for (const c of convs) {
    c.sentAt = preciseNow();
    c.sockets[0].ws.send(JSON.stringify({ event: 'message', data: { conversationId: c.id, content: `floor ${c.id} [[stamped deltas=${N} delay=${delay}]]` } }));
  }
  await Promise.all(convs.flatMap((c) => c.sockets.map((s) => s.ended)));
  const ttfd = [];
  const latencies = [];
  const preUpstream = [];
  for (const c of convs) {
    const [rec] = await upstream.requestsFor(`floor ${c.id} `);
    const firstStamp = stampsOf(rec.text)[0];
    preUpstream.push(rec.receivedAt - c.sentAt);
    for (const s of c.sockets) {
      ttfd.push(s.firstTextAt - c.sentAt - (firstStamp - rec.receivedAt));
      latencies.push(...s.latencies);
      s.ws.close();
    }
  }
  return { ttfd, latencies, preUpstream };
}

const upstream = await startUpstreamThread();
// Inspector proxy off, as the benchmark's budget mode.
const floor = await startWrangler({ name: 'floor', cwd: HERE, wranglerJs: WRANGLER, vars: { UPSTREAM: upstream.url } });
const port = new URL(floor.url).port;
try {
  await phase(port, upstream, 'warmup', { C: 1, S: 1, N: 5, delay: 1 });
  const C = opts.conversations;
  const rows = [];
  for (let p = 0; p < opts.phases; p++) rows.push(await phase(port, upstream, `p${p}`, { C, S: opts.sockets, N: opts.deltas, delay: opts.delay }));
  // Every phase's samples together, as the benchmark reads its C=10 budgets; the per-phase range shows the spread.
  const pooled = (key) => summarize(rows.flatMap((r) => r[key]));
  const range = (key, p) => {
    const values = rows.map((r) => summarize(r[key])[p]);
    return `${Math.min(...values).toFixed(2)}-${Math.max(...values).toFixed(2)}`;
  };
  const ttfd = pooled('ttfd');
  const pre = pooled('preUpstream');
  const lat = pooled('latencies');
  process.stdout.write(
    `runtime floor, ${opts.phases} phases of C=${C} x ${opts.sockets} sockets x ${opts.deltas} deltas (${opts.delay} ms apart), inspector proxy off; all phases pooled (each phase's own figure from-to):\n` +
      `  TTFD+ p50 ${ttfd.p50.toFixed(2)} ms (${range('ttfd', 'p50')})\n` +
      `  send->upstream p50 ${pre.p50.toFixed(2)} ms (${range('preUpstream', 'p50')})\n` +
      `  added latency p50 ${lat.p50.toFixed(2)} ms (${range('latencies', 'p50')}), p99 ${lat.p99.toFixed(2)} ms (${range('latencies', 'p99')})\n`,
  );
} finally {
  await floor.stop();
  await upstream.close();
}
