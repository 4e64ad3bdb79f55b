// Load client for socket.io connections that carry several conversations each (the seed clients' way): one Engine.IO connection per client, messages naming different conversationIds one after the other. Measures exactly as the peer's JSON load client does and prints a summary of the same shape.
//
// Each of C connections (socket.io-client, namespace /chat, WebSocket transport, no conversationId: the gateway's
// connection object) is opened, gets its manifest and opens a relay to each of its M new conversations (an `abort`
// naming it, which the conversation answers without a turn), as the JSON client's sockets are all attached before
// any message. Then every connection, all at once, runs M turns one after the other, one per conversation (the
// connection follows the latest message's conversation, so turns on one connection cannot overlap). The fake
// upstream stamps every delta `⟦seq:send-time⟧`:
//   per_delta    client receive time (+ clock offset to the upstream) - the stamp
//   ttfd         message sent -> first agent:text of that conversation
//   total        message sent -> its agent:end
// Clock offset and server sampling are the peer client's own (min-RTT probe of the upstream's /clock; its
// load/proc.mjs sampler, given by --proc-module).
//
// Usage: node bench/lib/sio-load.mjs --url http://127.0.0.1:PORT --token T --connections 10 --conversations 3
//          --n 200 --interval-ms 1 --clock-url URL --proc-module PATH [--server-pid P] [--timeout-s 60] [--out FILE]
import { writeFileSync } from 'node:fs';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { io } from 'socket.io-client';
import { summarize } from './stats.mjs';

const MARKER = /⟦(\d+):(\d+(?:\.\d+)?)⟧/g;

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m) throw new Error(`unexpected argument ${argv[i]}`);
    out[m[1]] = m[2] ?? argv[++i];
  }
  return out;
}
const args = parseArgs(process.argv.slice(2));
const cfg = {
  url: String(args.url),
  token: String(args.token ?? ''),
  connections: Number(args.connections ?? 10),
  conversations: Number(args.conversations ?? 3),
  n: Number(args.n ?? 200),
  interval_ms: Number(args['interval-ms'] ?? 1),
  clock_url: args['clock-url'],
  timeout_s: Number(args['timeout-s'] ?? 60),
  label: args.label,
  prefix: args.prefix ?? `sio-${Date.now().toString(36)}-${process.pid}`,
  server_pids: args['server-pid'] ? String(args['server-pid']).split(',').map(Number) : [],
};
for (const u of [cfg.url, cfg.clock_url].filter(Boolean)) {
  if (!/^(127\.|localhost$)/.test(new URL(u).hostname)) throw new Error(`refusing non-loopback target ${u}`);
}
const { startSampler } = await import(pathToFileURL(String(args['proc-module'])).href);

const epochNow = () => performance.timeOrigin + performance.now();
const r3 = (x) => (x === null || x === undefined || !Number.isFinite(x) ? null : Math.round(x * 1000) / 1000);
const stats = (values) => {
  const s = summarize(values);
  return s.n ? { count: s.n, min: r3(s.min), mean: r3(s.mean), p50: r3(s.p50), p90: r3(s.p90), p99: r3(s.p99), max: r3(s.max) } : { count: 0 };
};

// The peer client's probe: upstream clock - client clock, from the sample with the smallest round trip.
async function clockOffset(url, samples = 15) {
  let best = null;
  for (let i = 0; i < samples; i++) {
    const t0 = epochNow();
    const { now: remote } = await (await fetch(url)).json();
    const t1 = epochNow();
    if (!best || t1 - t0 < best.rtt) best = { rtt: t1 - t0, offset: remote - (t0 + t1) / 2 };
  }
  return { offset_ms: r3(best.offset), rtt_ms: r3(best.rtt), measured: true };
}
const clock = cfg.clock_url ? await clockOffset(cfg.clock_url) : { offset_ms: 0, rtt_ms: null, measured: false };

const stopSampler = cfg.server_pids.length ? startSampler(cfg.server_pids) : null;
const loopDelay = monitorEventLoopDelay({ resolution: 1 });
loopDelay.enable();
const cpu0 = process.cpuUsage();
const tRunStart = performance.now();

const directive = `[[mock n=${cfg.n} interval_ms=${cfg.interval_ms}]]`;
const perDelta = [];
const turns = [];
let framesTotal = 0;

/** One connection: opened, then its M turns in a row once `go` resolves. */
function connection(index, go) {
  const socket = io(`${cfg.url}/chat`, { transports: ['websocket'], auth: { token: cfg.token }, reconnection: false, forceNew: true, timeout: cfg.timeout_s * 1000 });
  const conn = { index, socket, errors: [], turns: [] };
  let current = null;
  socket.onAny((event, data) => {
    const tRecv = performance.now();
    framesTotal++;
    if (event === 'commands:manifest') conn.ready?.();
    const t = current;
    if (!t || data?.conversationId !== t.id) return;
    if (event === 'agent:text') {
      t.tFirstText ??= tRecv;
      const recvUp = performance.timeOrigin + tRecv + clock.offset_ms;
      for (const m of String(data.text ?? '').matchAll(MARKER)) {
        const seq = Number(m[1]);
        if (seq >= cfg.n) continue;
        if (t.seen[seq]) {
          t.duplicates++;
          continue;
        }
        t.seen[seq] = 1;
        if (seq === 0) t.upstreamFirstSent = Number(m[2]);
        if (seq < t.lastSeq) t.outOfOrder++;
        t.lastSeq = Math.max(t.lastSeq, seq);
        t.received++;
        perDelta.push(recvUp - Number(m[2]));
      }
    } else if (event === 'agent:end') {
      t.tEnd = tRecv;
      if (data.stopReason !== 'stop') t.errors.push(`stopReason ${data.stopReason}`);
      t.done();
    } else if (event === 'error') {
      t.errors.push(String(data?.error ?? JSON.stringify(data)).slice(0, 300));
    }
  });
  socket.on('disconnect', (reason) => {
    if (conn.done) return;
    conn.errors.push(`disconnected: ${reason}`);
    conn.fail(new Error(`connection ${index}: disconnected (${reason}) before its manifest`));
    current?.done();
  });
  conn.opened = new Promise((resolve, reject) => {
    conn.ready = resolve;
    conn.fail = reject;
    socket.once('connect_error', (e) => reject(new Error(`connection ${index}: ${e.message}`)));
    setTimeout(() => reject(new Error(`connection ${index}: no manifest within ${cfg.timeout_s} s`)), cfg.timeout_s * 1000).unref();
  });
  const ids = Array.from({ length: cfg.conversations }, (_, k) => `${cfg.prefix}-c${index}-m${k}`);
  conn.relaysOpen = (async () => {
    await conn.opened;
    for (const id of ids) await socket.timeout(cfg.timeout_s * 1000).emitWithAck('abort', { conversationId: id });
  })();
  conn.finished = (async () => {
    await conn.relaysOpen;
    await go;
    for (const id of ids) {
      if (!socket.connected) break;
      const t = { id, seen: new Uint8Array(cfg.n), received: 0, duplicates: 0, outOfOrder: 0, lastSeq: -1, errors: [] };
      const ended = new Promise((resolve) => (t.done = resolve));
      current = t;
      turns.push(t);
      t.tSend = performance.now();
      socket.emit('message', { conversationId: t.id, content: `Benchmark ${t.id}. ${directive}`, clientMessageId: `${t.id}-m` });
      await ended;
    }
    current = null;
    conn.done = true;
  })();
  return conn;
}

let release;
const go = new Promise((resolve) => (release = resolve));
const conns = Array.from({ length: cfg.connections }, (_, i) => connection(i, go));
const opened = await Promise.allSettled(conns.map((c) => c.relaysOpen));
const connectFailed = opened.filter((o) => o.status === 'rejected').map((o) => String(o.reason?.message ?? o.reason));
release();
let timedOut = false;
const timer = setTimeout(() => {
  timedOut = true;
  for (const c of conns) c.socket.disconnect();
}, cfg.timeout_s * 1000);
await Promise.allSettled(conns.map((c) => c.finished));
clearTimeout(timer);
const tRunEnd = performance.now();
loopDelay.disable();
const cpu = process.cpuUsage(cpu0);
const server = stopSampler ? stopSampler() : null;
for (const c of conns) c.socket.disconnect();

const expected = cfg.connections * cfg.conversations * cfg.n;
const received = turns.reduce((a, t) => a + t.received, 0);
const sent = turns.filter((t) => t.tSend !== undefined);
const tFirstSend = Math.min(...sent.map((t) => t.tSend));
const ends = turns.filter((t) => t.tEnd !== undefined);
const streamWallMs = ends.length ? Math.max(...ends.map((t) => t.tEnd)) - tFirstSend : null;
const completed = ends.filter((t) => !t.errors.length).length;
const summary = {
  label: cfg.label,
  adapter: 'socket.io multi-conversation',
  config: { url: cfg.url, connections: cfg.connections, conversations_per_connection: cfg.conversations, concurrency: cfg.connections, n: cfg.n, interval_ms: cfg.interval_ms, timeout_s: cfg.timeout_s, prefix: cfg.prefix },
  clock,
  counts: {
    connections: cfg.connections,
    conversations: cfg.connections * cfg.conversations,
    status: { completed, incomplete: cfg.connections * cfg.conversations - completed },
    connect_failures: connectFailed.length,
    timed_out: timedOut,
    messages_sent: sent.length,
    frames_received: framesTotal,
    deltas_expected: expected,
    deltas_received: received,
    deltas_lost: expected - received,
    duplicates: turns.reduce((a, t) => a + t.duplicates, 0),
    out_of_order: turns.reduce((a, t) => a + t.outOfOrder, 0),
    errors: turns.reduce((a, t) => a + t.errors.length, 0) + conns.reduce((a, c) => a + c.errors.length, 0),
  },
  error_samples: [...new Set([...connectFailed, ...turns.flatMap((t) => t.errors), ...conns.flatMap((c) => c.errors)])].slice(0, 5),
  wall_ms: { run: r3(tRunEnd - tRunStart), stream: r3(streamWallMs) },
  throughput: { deltas_per_s: streamWallMs ? r3((received / streamWallMs) * 1000) : null },
  latency_ms: {
    ttfd: stats(sent.filter((t) => t.tFirstText !== undefined).map((t) => t.tFirstText - t.tSend)),
    request_path: stats(sent.filter((t) => t.upstreamFirstSent !== undefined).map((t) => t.upstreamFirstSent - (performance.timeOrigin + t.tSend + clock.offset_ms))),
    per_delta: stats(perDelta),
    total: stats(ends.map((t) => t.tEnd - t.tSend)),
  },
  server: server && {
    cpu_ms: r3(server.cpu_ms),
    cpu_ms_per_1k_deltas: received ? r3((server.cpu_ms / received) * 1000) : null,
    rss_peak_mb: server.rss_peak_mb,
    rss_end_mb: server.rss_end_mb,
    processes: server.processes,
    per_process: server.per_process,
  },
  client: {
    cpu_user_ms: r3(cpu.user / 1000),
    cpu_system_ms: r3(cpu.system / 1000),
    event_loop_delay_ms: { p50: r3(loopDelay.percentile(50) / 1e6), p99: r3(loopDelay.percentile(99) / 1e6), max: r3(loopDelay.max / 1e6) },
  },
};
const json = JSON.stringify(summary, null, 2);
if (args.out) writeFileSync(String(args.out), `${json}\n`);
process.stdout.write(`${json}\n`);
process.exitCode = completed === cfg.connections * cfg.conversations ? 0 : 2;
setTimeout(() => process.exit(), 200).unref();
