// One benchmark phase (C conversations x S sockets, one stamped message each, all at once) and the rig floor (the same streams without the gateway), each reduced to latency, loss and cost figures.
import http from 'node:http';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { preciseNow } from '../../tests/support/fake-upstream.mjs';
import { cpuMs, machineBusyMs, snapshotAll, startRssSampler, sumCpuMs, sumRss, ticksToMs, topForeign, wranglerTree } from './proc.mjs';
import { summarize } from './stats.mjs';
import { pool, sleep, stampsOf, withTimeout } from './util.mjs';

/**
 * Runs one phase against `ctx.gateway` (harness gateway), `ctx.upstream` (upstream thread), `ctx.rootPid` (wrangler) and `ctx.tag` (unique per run and mode).
 * `hooks.beforeSend` / `hooks.afterEnd` run just around the measured window (the profiler uses them).
 */
export async function runPhase(ctx, { C, S, N, delay, label, timeoutMs }, hooks = {}) {
  const { gateway, upstream, rootPid, tag } = ctx;
  const prefix = `bench-${tag}-${label}`;
  const convs = Array.from({ length: C }, (_, i) => ({ i, id: `${prefix}-c${i}`, userId: `${prefix}-u${i}`, sockets: [] }));

  // One user per conversation, as separate clients would be (the rate limit is per user).
  await pool(convs, 10, async (c) => {
    c.token = await gateway.mintToken(c.userId);
  });

  const connectMs = [];
  const connectFailures = [];
  const sockets = [];
  await pool(
    convs.flatMap((c) => Array.from({ length: S }, (_, k) => ({ c, k }))),
    25,
    async ({ c, k }) => {
      const t = preciseNow();
      let client;
      try {
        client = await gateway.connect({ token: c.token, conversationId: c.id });
      } catch (err) {
        // A refused or timed-out upgrade is a result (reported and budgeted), not a reason to lose the run.
        connectFailures.push({ conversationId: c.id, socket: k, afterMs: preciseNow() - t, error: String(err?.message ?? err).slice(0, 200) });
        return;
      }
      connectMs.push(preciseNow() - t);
      const recvAt = [];
      // Prepended so the receive time is taken before the harness parses and files the frame; keyed by the index the frame will get.
      client.ws.prependListener('message', () => {
        recvAt[client.events.length] = preciseNow();
      });
      const s = { conv: c, k, client, recvAt, base: 0 };
      c.sockets[k] = s;
      sockets.push(s);
    },
  );
  // Every socket is attached (its manifest came) before any message, so a late attach cannot look like a loss.
  const manifests = await Promise.allSettled(sockets.map((s) => s.client.next('commands:manifest', { timeout: 15_000 })));
  const noManifest = manifests.filter((m) => m.status === 'rejected').length;
  await sleep(250); // let the connect-time D1 writes of the last upgrades finish

  // Re-read per phase: wrangler may have started or replaced processes since the last one.
  const tree = wranglerTree(rootPid);
  const nodePids = tree.all.filter((pid) => !tree.workerd.includes(pid));
  const ownPids = [process.pid, ...tree.all];
  const loop = monitorEventLoopDelay({ resolution: 1 });
  loop.enable();
  const before = {
    procs: snapshotAll(),
    workerdCpu: sumCpuMs(tree.workerd),
    nodeCpu: sumCpuMs(nodePids),
    selfCpu: cpuMs(process.pid),
    machine: machineBusyMs(),
    rss: sumRss(tree.workerd),
    at: preciseNow(),
  };
  const sampler = startRssSampler(tree.workerd, 20);
  await hooks.beforeSend?.();

  for (const c of convs) {
    c.content = `bench ${c.id} [[stamped deltas=${N} delay=${delay}]]`;
    for (const s of c.sockets) if (s) s.base = s.client.events.length;
  }
  for (const c of convs) {
    const sender = c.sockets.find(Boolean); // socket 0 unless its upgrade failed
    if (!sender) continue;
    c.sentAt = preciseNow();
    sender.client.send('message', { conversationId: c.id, content: c.content });
  }
  const finished = await Promise.all(
    sockets.map((s) =>
      s.client.next('agent:end', { timeout: timeoutMs }).then(
        () => true,
        () => false,
      ),
    ),
  );

  await hooks.afterEnd?.();
  const mem = sampler.stop();
  const after = {
    procs: snapshotAll(),
    workerdCpu: sumCpuMs(tree.workerd),
    nodeCpu: sumCpuMs(nodePids),
    selfCpu: cpuMs(process.pid),
    machine: machineBusyMs(),
    at: preciseNow(),
  };
  loop.disable();

  const records = await upstream.requestsFor(`${prefix}-c`);
  await Promise.all(sockets.map((s) => withTimeout(s.client.close(), 5000, 'close').catch(() => s.client.ws.terminate())));

  // --- analysis ---------------------------------------------------------------
  const stampedLatencies = []; // [stamp, latency]: the stamp splits the start-up burst from the steady stream
  const ttfd = [];
  const preUpstream = [];
  const firstDelivery = [];
  const ackMs = [];
  const upstreamFirstByte = [];
  const upstreamStreamMs = [];
  const problems = [];
  let received = 0;
  let lost = 0;
  let duplicated = 0;
  let duplicatedStamps = 0;
  let outOfOrder = 0;
  let seqGaps = 0;
  let unsequenced = 0;
  let coalescedFrames = 0;
  let textMismatches = 0;
  let incomplete = 0;
  let lastTextAt = -Infinity;
  let lastEndAt = -Infinity;
  let retries = 0;
  let freshConnections = 0; // model calls that arrived on a connection the gateway opened for them
  const errors = [];
  const stopReasons = {};
  const sent = convs.filter((c) => c.sentAt !== undefined);
  const firstSentAt = Math.min(...sent.map((c) => c.sentAt));

  for (const c of sent) {
    const recs = records.filter((r) => r.lastUserText === c.content && r.stream).sort((a, b) => a.receivedAt - b.receivedAt);
    if (recs.length > 1) retries += recs.length - 1;
    const rec = recs[0];
    c.upstream = rec;
    if (!rec) {
      problems.push(`${c.id}: the upstream never saw its request`);
      continue;
    }
    const sentStamps = stampsOf(rec.text);
    if (sentStamps.length !== N) problems.push(`${c.id}: the upstream sent ${sentStamps.length} deltas, not ${N}`);
    // The upstream's own first-byte delay: from the request's arrival to the stamp of its first delta.
    c.upstreamFirstByteMs = sentStamps.length ? sentStamps[0] - rec.receivedAt : null;
    if (c.upstreamFirstByteMs !== null) upstreamFirstByte.push(c.upstreamFirstByteMs);
    if (sentStamps.length > 1) upstreamStreamMs.push(sentStamps.at(-1) - sentStamps[0]);
    preUpstream.push(rec.receivedAt - c.sentAt);
    if (rec.connectionRequest === 1) freshConnections++;
  }
  // When the last conversation's stream began (its first upstream delta).
  const allStartedAt = Math.max(...sent.map((c) => (c.upstream ? stampsOf(c.upstream.text)[0] : undefined) ?? -Infinity));

  for (const [n, s] of sockets.entries()) {
    const { conv: c, client, recvAt } = s;
    if (!finished[n]) incomplete++;
    const seenSeq = new Set();
    const seenStamp = new Set();
    let prevSeq = null;
    let prevStamp = -Infinity;
    let firstTextAt = null;
    let text = '';
    for (let idx = s.base; idx < client.events.length; idx++) {
      const f = client.events[idx];
      const t = recvAt[idx];
      if (typeof f.seq === 'number') {
        if (prevSeq !== null && f.seq !== prevSeq + 1) seqGaps++;
        prevSeq = f.seq;
      } else if (['message:ack', 'session:info', 'agent:start', 'agent:text', 'agent:end'].includes(f.event)) {
        unsequenced++;
      }
      if (f.event === 'message:ack' && s.ackAt === undefined) {
        s.ackAt = t;
        ackMs.push(t - c.sentAt);
      } else if (f.event === 'error') {
        errors.push({ conversationId: c.id, socket: s.k, ...f.data });
      } else if (f.event === 'agent:end') {
        if (t > lastEndAt) lastEndAt = t;
        const reason = f.data?.stopReason ?? '(none)';
        stopReasons[reason] = (stopReasons[reason] ?? 0) + 1;
      } else if (f.event === 'agent:text') {
        if (seenSeq.has(f.seq)) duplicated++;
        seenSeq.add(f.seq);
        text += f.data?.text ?? '';
        const stamps = stampsOf(f.data?.text);
        if (stamps.length > 1) coalescedFrames++;
        if (firstTextAt === null) firstTextAt = t;
        if (t > lastTextAt) lastTextAt = t;
        for (const stamp of stamps) {
          if (seenStamp.has(stamp)) {
            duplicatedStamps++;
            continue;
          }
          seenStamp.add(stamp);
          if (stamp < prevStamp) outOfOrder++;
          prevStamp = stamp;
          stampedLatencies.push([stamp, t - stamp]);
        }
      }
    }
    received += seenStamp.size;
    lost += Math.max(0, N - seenStamp.size);
    if (c.upstream && text !== c.upstream.text) textMismatches++;
    if (firstTextAt !== null && c.upstream && c.upstreamFirstByteMs !== null) {
      const firstStamp = stampsOf(c.upstream.text)[0];
      ttfd.push(firstTextAt - c.sentAt - c.upstreamFirstByteMs);
      firstDelivery.push(firstTextAt - firstStamp);
    }
  }

  const streamWallMs = Number.isFinite(lastTextAt) ? lastTextAt - firstSentAt : null;
  const turnWallMs = Number.isFinite(lastEndAt) ? lastEndAt - firstSentAt : null;
  const wallMs = after.at - before.at;
  const workerdCpuMs = after.workerdCpu - before.workerdCpu;
  const nodeCpuMs = after.nodeCpu - before.nodeCpu;
  const selfCpuMs = after.selfCpu - before.selfCpu;
  const upstreamDeltas = sent.reduce((n, c) => n + (c.upstream ? stampsOf(c.upstream.text).length : 0), 0);
  const idealStreamMs = (N - 1) * delay;

  const addedLatencies = stampedLatencies.map(([, l]) => l);
  const result = {
    label,
    conversations: C,
    socketsPerConversation: S,
    sockets: C * S,
    deltasPerMessage: N,
    delayMs: delay,
    expectedDeltas: C * S * N,
    receivedDeltas: received,
    lostDeltas: lost,
    duplicatedDeltas: duplicated,
    duplicatedStamps,
    outOfOrderDeltas: outOfOrder,
    coalescedFrames,
    textMismatches,
    seqGaps,
    unsequencedStreamFrames: unsequenced,
    incompleteSockets: incomplete,
    connectFailures: connectFailures.length,
    connectFailureSamples: connectFailures.slice(0, 5),
    socketsWithoutManifest: noManifest,
    stopReasons,
    errors: errors.slice(0, 10),
    errorCount: errors.length,
    problems,
    upstream: {
      requests: records.length,
      retries,
      freshConnections,
      deltasSent: upstreamDeltas,
      firstByteMs: summarize(upstreamFirstByte),
      streamMs: summarize(upstreamStreamMs),
      idealStreamMs,
    },
    addedLatencyMs: summarize(addedLatencies),
    // Deltas the upstream sent once every conversation's stream had begun: the added latency
    // without the start-up burst (turn planning, first calls) of the phase.
    addedLatencySteadyMs: summarize(stampedLatencies.filter(([stamp]) => stamp > allStartedAt).map(([, l]) => l)),
    ttfdOverheadMs: summarize(ttfd),
    ttfdParts: { sendToUpstreamRequestMs: summarize(preUpstream), firstStampToReceiveMs: summarize(firstDelivery) },
    ackMs: summarize(ackMs),
    connectMs: summarize(connectMs),
    deltasPerSecond: streamWallMs ? (received / streamWallMs) * 1000 : null,
    pacedDeltasPerSecond: idealStreamMs > 0 ? (C * S * N * 1000) / idealStreamMs : null,
    streamWallMs,
    turnWallMs,
    runtime: {
      workerdPids: tree.workerd,
      // Per process: wrangler runs two workerd, its proxy in front and the one that runs the Worker.
      workerdCpuMsByPid: Object.fromEntries(tree.workerd.map((pid) => [pid, ticksToMs((after.procs.get(pid)?.cpuTicks ?? 0) - (before.procs.get(pid)?.cpuTicks ?? 0))])),
      rssBeforeBytes: before.rss,
      peakRssBytes: mem.peakBytes,
      rssSamples: mem.samples,
      workerdCpuMs,
      wranglerNodeCpuMs: nodeCpuMs,
      cpuUsPerUpstreamDelta: upstreamDeltas ? ((workerdCpuMs + nodeCpuMs) * 1000) / upstreamDeltas : null,
      workerdCpuUsPerUpstreamDelta: upstreamDeltas ? (workerdCpuMs * 1000) / upstreamDeltas : null,
    },
    client: {
      cpuMs: selfCpuMs,
      loopDelayP99Ms: loop.count ? loop.percentile(99) / 1e6 : null,
      loopDelayMaxMs: loop.count ? loop.max / 1e6 : null,
    },
    machine: {
      wallMs,
      // Busy CPU of processes outside this benchmark (other builds and tests on the machine), in cores.
      otherLoadCores: Math.max(0, (after.machine - before.machine - workerdCpuMs - nodeCpuMs - selfCpuMs) / wallMs),
      topForeignProcesses: topForeign(before.procs, after.procs, ownPids),
    },
  };
  // The raw samples, for budgets pooled over several phases of one size; kept out of the JSON.
  Object.defineProperty(result, 'samples', { value: { addedLatencyMs: addedLatencies, ttfdOverheadMs: ttfd, sendToUpstreamRequestMs: preUpstream }, enumerable: false });
  return result;
}

// Rig floor: the same stamped streams read straight from the fake upstream (SSE over HTTP, no gateway),
// so the latency the client and upstream themselves add on this machine can be read next to the gateway's.

export async function rigFloor(upstream, { C, S, N, delay, tag }) {
  const latencies = [];
  let received = 0;
  const one = (i) => {
    let buf = '';
    return streamCompletion(upstream, `bench-floor ${tag} ${i} [[stamped deltas=${N} delay=${delay}]]`, false, (t, chunk) => {
      buf += chunk;
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const event = buf.slice(0, end);
        buf = buf.slice(end + 2);
        if (!event.startsWith('data: {')) continue;
        const content = JSON.parse(event.slice(6)).choices?.[0]?.delta?.content;
        for (const stamp of stampsOf(content)) {
          latencies.push(t - stamp);
          received++;
        }
      }
    });
  };
  await Promise.all(Array.from({ length: C * S }, (_, i) => one(i)));
  await upstream.reset();
  const ttfdOverheadMs = await rigTtfd(upstream, { C, N, delay, tag });
  return { conversations: C, socketsPerConversation: S, streams: C * S, expectedDeltas: C * S * N, receivedDeltas: received, addedLatencyMs: summarize(latencies), ttfdOverheadMs };
}

/**
 * The rig's own time-to-first-delta overhead: C model calls sent straight to the fake upstream in one loop, as the
 * gateway's C conversations make them, on warm keep-alive connections as the runtime's are. Same formula as TTFD+
 * (client first delta - send, minus the upstream's own first-byte delay), one sample per call: what the client,
 * loopback and the upstream's queueing of C simultaneous requests add without any gateway.
 */
async function rigTtfd(upstream, { C, N, delay, tag }) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: C });
  const call = async (content) => {
    let buf = '';
    let firstAt = null;
    const { sentAt } = await streamCompletion(upstream, content, agent, (t, chunk) => {
      buf += chunk;
      if (firstAt === null && stampsOf(buf).length) firstAt = t;
    });
    return { content, sentAt, firstAt };
  };
  const label = (round, i) => `bench-ttfd ${tag} C${C} r${round} ${i} `;
  try {
    // Round 0 opens the C connections; round 1 is measured.
    await Promise.all(Array.from({ length: C }, (_, i) => call(`${label(0, i)}[[stamped deltas=1 delay=${delay}]]`)));
    const calls = await Promise.all(Array.from({ length: C }, (_, i) => call(`${label(1, i)}[[stamped deltas=${N} delay=${delay}]]`)));
    const samples = [];
    for (const c of calls) {
      const [rec] = await upstream.requestsFor(c.content.slice(0, c.content.indexOf('[[')));
      const firstStamp = rec ? stampsOf(rec.text)[0] : undefined;
      if (c.firstAt !== null && firstStamp !== undefined) samples.push(c.firstAt - c.sentAt - (firstStamp - rec.receivedAt));
    }
    return summarize(samples);
  } finally {
    agent.destroy();
    await upstream.reset();
  }
}

/** Posts one streaming chat completion to the fake upstream; `onData(receiveTime, text)` sees each chunk. Resolves with the send time at the end of the stream. */
function streamCompletion(upstream, content, agent, onData) {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content }] });
    const sentAt = preciseNow();
    const req = http.request(
      `${upstream.url}/v1/chat/completions`,
      { method: 'POST', agent, headers: { 'content-type': 'application/json', authorization: 'Bearer test-openai-key' } },
      (res) => {
        res.setEncoding('utf8');
        res.on('data', (chunk) => onData(preciseNow(), chunk));
        res.on('end', () => resolve({ sentAt }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}
