// Durability under wrangler dev: turns outlive their sockets, lastSeq resume without gaps or duplicates, idempotent and queued sends, provider faults, malformed frames, rate limits and oversized replies; ends with a loss/duplicate ledger.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { startFakeUpstream, textOf } from '../support/fake-upstream.mjs';
import { eventually, startGateway, summarizeTurn, uniq } from '../support/harness.mjs';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Small stall timeout so a stalled upstream is detected in a test's time; a short replay window so a gap can be provoked;
// a low rate limit so it is reached without a minute of turns. Everything else keeps its default.
const STALL_MS = 1500;
const REPLAY_WINDOW_MS = 8000;
const RATE_LIMIT = 20;
const MAX_QUEUED = 8; // default MAX_QUEUED_MESSAGES
const MAX_MESSAGE_BYTES = 65536; // default
const COPY_DELAY_MS = 300;

// A fault D1 can be made to raise: while a token whose name starts with FAULT_WINDOW is live (the admin API creates
// and revokes it), inserting an assistant message whose content has FAULT_MARKER aborts, and with it the whole copy batch.
const FAULT_WINDOW = 'd1-fault-window';
const FAULT_MARKER = 'd1-refuses';
const FAULT_TRIGGER = `CREATE TRIGGER IF NOT EXISTS d1_fault BEFORE INSERT ON messages WHEN NEW.role = 'assistant' AND NEW.content LIKE '%${FAULT_MARKER}%' AND EXISTS (SELECT 1 FROM api_tokens WHERE name LIKE '${FAULT_WINDOW}%' AND revoked_at IS NULL) BEGIN SELECT RAISE(ABORT, 'injected fault: D1 refuses this copy'); END`;

let up;
let gw;

before(async () => {
  up = await startFakeUpstream();
  gw = await startGateway({
    upstream: up,
    d1Sql: [FAULT_TRIGGER],
    vars: {
      UPSTREAM_STALL_TIMEOUT_MS: String(STALL_MS),
      REPLAY_WINDOW_MS: String(REPLAY_WINDOW_MS),
      RATE_LIMIT_PER_MINUTE: String(RATE_LIMIT),
      D1_COPY_DELAY_MS: String(COPY_DELAY_MS),
    },
  });
});

after(async () => {
  await gw?.stop();
  await up?.close();
});

// ---------------------------------------------------------------------------
// Bookkeeping for the closing summary: every accepted message must be stored exactly once, with a reply after it.

const ledger = new Map(); // conversationId -> { token, contents: [] }
const counters = { faults: 0, turns: 0 };

function expectStored(token, conversationId, content) {
  if (!ledger.has(conversationId)) ledger.set(conversationId, { token, contents: [] });
  ledger.get(conversationId).contents.push(content);
}

// ---------------------------------------------------------------------------
// Helpers

const sioSeq = (f) => (f.args?.length >= 2 && typeof f.args.at(-1) === 'string' ? Number(f.args.at(-1)) : undefined);
const seqOf = (f) => f.seq ?? sioSeq(f);

async function user(label) {
  const userId = uniq(label);
  return { userId, token: await gw.mintToken(userId) };
}

async function openJson(opts) {
  const client = await gw.connect(opts);
  const first = await client.next(null);
  assert.equal(first.event, 'commands:manifest', `the first frame is the manifest:\n${client.log.dump()}`);
  return client;
}

async function openSio(opts) {
  const client = await gw.connectSio(opts);
  const first = await client.next(null);
  assert.equal(first.event, 'commands:manifest', `the first event is the manifest:\n${client.log.dump()}`);
  return client;
}

/** A turn through the harness, counted and entered in the ledger when its message was acknowledged. */
async function turn(client, token, content, extra = {}, opts = {}) {
  const t = await client.turn(content, extra, opts);
  if (t.end) counters.turns++;
  if (t.ack && !t.ack.data.duplicate) expectStored(token, t.ack.data.conversationId, content);
  return t;
}

async function messagesOf(token, conversationId) {
  const res = await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token });
  assert.equal(res.status, 200, res.text);
  return res.json.messages;
}

const requestsExactly = (content) => up.requests.filter((r) => r.lastUserText === content);

/**
 * The conversation's messages in D1 once there are at least `count` (the history marks `held` what only the
 * conversation has yet).
 */
function eventuallyInD1(token, conversationId, count, { timeout, interval = 100, what }) {
  return eventually(async () => {
    const list = await gw.http('GET', '/api/conversations', { token });
    if (!(list.json?.conversations ?? []).some((c) => c.id === conversationId)) return null;
    const res = await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token });
    const copied = res.status === 200 ? res.json.messages.filter((m) => !m.held) : [];
    return copied.length >= count ? copied : null;
  }, { timeout, interval, what });
}

/** Opens a window in which D1 refuses copies of FAULT_MARKER replies; resolves with a function that closes it. */
async function refuseD1Copies() {
  const name = uniq(FAULT_WINDOW);
  const opened = await gw.http('POST', '/admin/tokens', { token: gw.adminToken, body: { userId: uniq('fault'), name } });
  assert.ok(opened.status < 300, `${opened.status}: ${opened.text}`);
  counters.faults++;
  return async () => {
    const closed = await gw.http('DELETE', `/admin/tokens/${name}`, { token: gw.adminToken });
    assert.ok(closed.status < 300, `${closed.status}: ${closed.text}`);
  };
}

/** Asserts that stream frames have strictly consecutive seqs (no gap, no duplicate). */
function assertContiguous(frames, label) {
  const seqs = frames.map(seqOf);
  const dump = JSON.stringify(frames.map((f) => [f.event, seqOf(f)]));
  for (const s of seqs) assert.ok(Number.isInteger(s), `${label}: every stream frame has a seq: ${dump}`);
  seqs.slice(1).forEach((s, k) => assert.equal(s, seqs[k] + 1, `${label}: seq after ${seqs[k]}: ${dump}`));
}

/** For a failed or broken turn: an error frame with `code` before agent:end, agent:end naming it, the partial reply stored with it. */
async function assertFailedTurn(t, { token, conversationId, content, code, stopReasons, client }) {
  const dump = client.log.dump();
  assert.equal(t.errors.length, 1, `exactly one error frame:\n${dump}`);
  const [e] = t.errors;
  if (Array.isArray(code)) assert.ok(code.includes(e.data.code), `error code ${e.data.code} in ${code}:\n${dump}`);
  else assert.equal(e.data.code, code, dump);
  assert.equal(typeof e.data.error, 'string');
  assert.ok(Number.isInteger(e.seq), 'the turn’s error is part of the stream (has a seq)');
  assert.ok(t.frames.indexOf(e) < t.frames.indexOf(t.end), 'the error comes before agent:end');
  assert.ok(stopReasons.includes(t.end.data.stopReason), `stopReason ${t.end.data.stopReason} in ${stopReasons}:\n${dump}`);
  assert.notEqual(t.end.data.stopReason, 'stop', 'nothing silently truncated');
  assert.equal(t.end.data.error?.code, e.data.code, `agent:end carries the error: ${JSON.stringify(t.end.data)}`);
  const stored = await messagesOf(token, conversationId);
  const k = stored.findIndex((m) => m.role === 'user' && m.content === content);
  assert.ok(k >= 0, 'the user message is stored');
  const reply = stored[k + 1];
  assert.equal(reply?.role, 'assistant', `the partial reply is stored after it: ${JSON.stringify(stored)}`);
  assert.equal(reply.content, t.text, 'the stored partial reply is what the client saw');
  assert.equal(reply.metadata.stopReason, t.end.data.stopReason, JSON.stringify(reply.metadata));
  assert.equal(reply.metadata.error?.code, e.data.code, JSON.stringify(reply.metadata));
  return { error: e, reply };
}

// ---------------------------------------------------------------------------

describe('a turn belongs to the conversation', () => {
  test('every socket closes mid-stream: the turn still finishes, the whole reply is stored, a later resume gets the rest', async () => {
    const { token } = await user('orphan');
    const conversationId = randomUUID();
    const a = await openJson({ token, conversationId });
    const b = await openSio({ token, conversationId });
    const content = `orphaned ${uniq()} [[slow deltas=12 delay=150]]`;
    a.send('message', { conversationId, content });
    const ack = await a.next('message:ack');
    await a.next('agent:text', { timeout: 10_000 });
    await a.next('agent:text', { timeout: 10_000 });
    await b.next('agent:text', { timeout: 10_000 });
    await Promise.all([a.close(), b.close()]);
    const seenBefore = a.events.filter((f) => Number.isInteger(f.seq));
    const lastSeq = seenBefore.at(-1).seq;
    const textBefore = seenBefore.filter((f) => f.event === 'agent:text').map((f) => f.data.text).join('');
    expectStored(token, conversationId, content);

    const req = await up.waitForRequest((r) => r.lastUserText === content);
    await eventually(() => req.sent.complete || req.closedByClient, { timeout: 10_000, what: 'the upstream response to finish' });
    assert.equal(req.closedByClient, false, 'the gateway kept reading the upstream after the last socket left');
    assert.equal(req.sent.complete, true);
    const stored = await eventually(async () => {
      const m = await messagesOf(token, conversationId);
      return m.length === 2 ? m : null;
    }, { timeout: 10_000, what: 'the reply stored' });
    assert.equal(stored[0].content, content);
    assert.equal(stored[0].id, ack.data.messageId);
    assert.equal(stored[1].role, 'assistant');
    assert.equal(stored[1].content, req.sent.text, 'the whole reply is stored, not what was sent before the sockets left');
    assert.equal(stored[1].metadata.stopReason, 'stop');

    const back = await openJson({ token, conversationId, lastSeq });
    const rest = await back.until('agent:end', { timeout: 10_000 });
    counters.turns++;
    assertContiguous([...seenBefore, ...rest], 'before the close + replay');
    assert.equal(textBefore + rest.filter((f) => f.event === 'agent:text').map((f) => f.data.text).join(''), req.sent.text);
    assert.equal(rest.at(-1).data.stopReason, 'stop');
    await back.close();
  });
});

describe('the conversation keeps the message, D1 gets a copy', () => {
  test(`a turn still running after D1_COPY_DELAY_MS (${COPY_DELAY_MS}) has its message in D1 and counts in admin stats; the reply follows at the end`, async () => {
    const { token } = await user('copy');
    const conversationId = randomUUID();
    const a = await openJson({ token, conversationId });
    const content = `copied while running ${uniq()} [[slow deltas=10 delay=250]]`;
    a.send('message', { conversationId, content });
    const ack = await a.next('message:ack');
    // Until the copy the conversation is not in D1 yet.
    const stored = await eventuallyInD1(token, conversationId, 1, { timeout: 2000, interval: 50, what: 'the user message in D1 while the turn runs' });
    assert.equal(a.events.some((f) => f.event === 'agent:end'), false, 'checked while the turn was still running');
    assert.deepEqual(stored.map((m) => [m.id, m.role, m.content]), [[ack.data.messageId, 'user', content]]);
    const stats = await gw.http('GET', '/admin/stats', { token: gw.adminToken });
    assert.equal(stats.status, 200, stats.text);
    assert.ok(stats.json.live.turns >= 1, `the running turn is in the live registry: ${stats.text}`);

    const rest = await a.until('agent:end', { timeout: 10_000 });
    expectStored(token, conversationId, content);
    counters.turns++;
    assert.equal(rest.at(-1).data.stopReason, 'stop');
    const after = await messagesOf(token, conversationId);
    assert.deepEqual(after.map((m) => m.role), ['user', 'assistant'], 'the message was copied once, the reply after it');
    assert.equal(after[0].id, ack.data.messageId);
    await a.close();
  });

  test('a turn shorter than D1_COPY_DELAY_MS stores message and reply in one copy, both readable once agent:end arrives', async () => {
    const { token } = await user('copy-short');
    const conversationId = randomUUID();
    const a = await openJson({ token, conversationId });
    const content = `short turn ${uniq()}`;
    const t = await turn(a, token, content);
    assert.equal(t.end.data.stopReason, 'stop');
    const stored = await messagesOf(token, conversationId);
    assert.deepEqual(stored.map((m) => [m.role, m.content]), [['user', content], ['assistant', t.text]]);
    await a.close();
  });
});

describe('D1 refuses a turn\'s closing copy', () => {
  test('agent:end still comes, the reply is kept in the conversation, and a retry copies message and reply once D1 accepts them', async () => {
    const { token } = await user('d1-refuses');
    const conversationId = randomUUID();
    const a = await openJson({ token, conversationId });
    const accept = await refuseD1Copies();
    const content = `${FAULT_MARKER} ${uniq()}`;
    const t = await turn(a, token, content);
    assert.equal(t.end.data.stopReason, 'stop', 'the turn ends normally: the reply is durable in the conversation');
    // The closing batch was refused whole: the reply is not in D1 (nor the message, unless a slow turn's
    // mid-turn copy took it first), and neither is it after the first retry (1 s), refused too.
    const replyInD1 = async () => {
      const res = await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token });
      assert.ok(res.status === 200 || res.status === 404, `${res.status}: ${res.text}`);
      return res.status === 200 && res.json.messages.some((m) => m.role === 'assistant' && !m.held);
    };
    assert.equal(await replyInD1(), false, 'no reply in D1 while D1 refuses it');
    await sleep(1500);
    assert.equal(await replyInD1(), false, 'the first retry is refused too');
    await accept();
    const stored = await eventuallyInD1(token, conversationId, 2, { timeout: 8000, interval: 100, what: 'message and reply copied by a retry' });
    assert.deepEqual(stored.map((m) => [m.role, m.content]), [['user', content], ['assistant', t.text]], 'each once, in order');
    assert.equal(stored[0].id, t.ack.data.messageId);
    await a.close();
  });
});

describe('D1 refuses ten turns, then a turn ends with the backlog still waiting', () => {
  test('every message and reply reaches D1 once and in order: the new reply waits behind the backlog one copy cannot take', async () => {
    const { token } = await user('d1-backlog');
    const conversationId = randomUUID();
    const a = await openJson({ token, conversationId });
    const accept = await refuseD1Copies();
    // Ten refused turns leave twenty rows waiting: as many as one copy takes.
    const sent = [];
    for (let k = 0; k < 10; k++) {
      const content = `${FAULT_MARKER} backlog ${k} ${uniq()}`;
      const t = await turn(a, token, content);
      assert.equal(t.end.data.stopReason, 'stop');
      sent.push([content, t.text]);
    }
    await accept();
    const last = `after the backlog ${uniq()}`;
    const t = await turn(a, token, last);
    sent.push([last, t.text]);
    const want = sent.flatMap(([content, reply]) => [['user', content], ['assistant', reply]]);
    const stored = await eventuallyInD1(token, conversationId, want.length, { timeout: 10_000, interval: 100, what: 'the backlog and the last turn copied' });
    assert.deepEqual(stored.map((m) => [m.role, m.content]), want, 'each message once, in the order it was sent');
    await a.close();
  });
});

describe('resume with lastSeq (JSON framing)', () => {
  test('resume from before the first token: every event after lastSeq, in order, once', async () => {
    const { token } = await user('resume-early');
    const conversationId = randomUUID();
    const a = await openJson({ token, conversationId });
    // The first attempt fails with 503 and retry-after 1 s, so no token can come for a second after the ack.
    const content = `early ${uniq()} [[flaky times=1 code=503 retry_after=1]] [[slow deltas=10 delay=100]]`;
    counters.faults++;
    a.send('message', { conversationId, content });
    await a.next('message:ack');
    await a.close();
    const seen = a.events.filter((f) => Number.isInteger(f.seq));
    assert.ok(!seen.some((f) => f.event === 'agent:text'), `no token before the close:\n${a.log.dump()}`);
    const lastSeq = seen.at(-1).seq;
    expectStored(token, conversationId, content);

    await eventually(() => requestsExactly(content).some((r) => r.sent.deltas.length >= 3), { timeout: 10_000, what: 'tokens streaming while the client is away' });
    const back = await openJson({ token, conversationId, lastSeq });
    const rest = await back.until('agent:end', { timeout: 15_000 });
    counters.turns++;
    assertContiguous([...seen, ...rest], 'before + after the resume');
    assert.equal(rest[0].seq, lastSeq + 1, 'the replay starts right after lastSeq');
    const reqs = requestsExactly(content);
    assert.equal(reqs.length, 2, 'the 503 and its retry');
    const text = rest.filter((f) => f.event === 'agent:text').map((f) => f.data.text).join('');
    assert.equal(text, reqs[1].sent.text);
    assert.equal(rest.filter((f) => f.event === 'agent:text').length, 10);
    assert.equal(rest.at(-1).data.stopReason, 'stop');
    await back.close();
  });

  test('resume mid-stream: replay of the missed deltas, then live, no gap and no duplicate', async () => {
    const { token } = await user('resume-mid');
    const conversationId = randomUUID();
    const a = await openJson({ token, conversationId });
    const content = `midstream ${uniq()} [[slow deltas=20 delay=100]]`;
    a.send('message', { conversationId, content });
    for (let k = 0; k < 5; k++) await a.next('agent:text', { timeout: 10_000 });
    await a.close();
    const seen = a.events.filter((f) => Number.isInteger(f.seq));
    const lastSeq = seen.at(-1).seq;
    expectStored(token, conversationId, content);
    await sleep(500); // deltas go on while the client is away

    const back = await openJson({ token, conversationId, lastSeq });
    const rest = await back.until('agent:end', { timeout: 15_000 });
    counters.turns++;
    const all = [...seen, ...rest];
    assertContiguous(all, 'before + after the resume');
    const texts = all.filter((f) => f.event === 'agent:text');
    assert.equal(texts.length, 20, 'every delta exactly once');
    const req = requestsExactly(content)[0];
    assert.equal(texts.map((f) => f.data.text).join(''), req.sent.text);
    assert.ok(rest.filter((f) => f.event === 'agent:text').length >= 2, 'some deltas came after the resume');
    await back.close();
  });

  test('resume after the turn ended replays it exactly as it was sent live; lastSeq at the end replays nothing', async () => {
    const { token } = await user('resume-late');
    const conversationId = randomUUID();
    const a = await openJson({ token, conversationId });
    const t = await turn(a, token, `late ${uniq()}`);
    await a.close();
    // From before the turn's first frame (session:info, then message:ack).
    const replay = await openJson({ token, conversationId, lastSeq: t.frames[0].seq - 1 });
    const again = await replay.until('agent:end', { timeout: 5000 });
    const shape = (frames) => frames.map((f) => [f.event, f.seq, JSON.stringify(f.data)]);
    assert.deepEqual(shape(again), shape(t.frames));
    await replay.close();

    const none = await openJson({ token, conversationId, lastSeq: t.end.seq });
    await sleep(700);
    assert.deepEqual(none.events.slice(1), [], `nothing after the last seq:\n${none.log.dump()}`);
    const next = await turn(none, token, `live again ${uniq()}`);
    assert.equal(next.frames[0].seq, t.end.seq + 1, 'numbering continues');
    await none.close();
  });

  test('a lastSeq older than the replay window gets error resume_gap, and the socket still works', async () => {
    const { token } = await user('resume-gap');
    const conversationId = randomUUID();
    const a = await openJson({ token, conversationId });
    const t1 = await turn(a, token, `old ${uniq()}`);
    await sleep(REPLAY_WINDOW_MS + 1000);
    await turn(a, token, `new ${uniq()}`); // pushes newer events, which drops the expired ones
    await a.close();
    const late = await openJson({ token, conversationId, lastSeq: t1.ack.seq });
    const e = await late.next('error', { timeout: 5000 });
    assert.equal(e.data.code, 'resume_gap', late.log.dump());
    assert.equal(typeof e.data.error, 'string');
    assert.ok(Number.isInteger(e.data.oldestSeq) && e.data.oldestSeq > t1.ack.seq + 1, `oldestSeq says where the log starts: ${JSON.stringify(e.data)}`);
    assert.ok(!late.events.some((f) => f.event === 'agent:text'), 'no partial replay across a gap');
    const t3 = await turn(late, token, `after the gap ${uniq()}`);
    assert.deepEqual(t3.errors, []);
    assert.equal(t3.end.data.stopReason, 'stop');
    await late.close();
  });
});

describe('idempotent sends', () => {
  test('a resend with a stored clientMessageId gets the same ack (duplicate: true) and no second turn, from any socket, during and after the turn', async () => {
    const { token } = await user('idem');
    const conversationId = randomUUID();
    const a = await openJson({ token, conversationId });
    const b = await openSio({ token, conversationId });
    const clientMessageId = uniq('cmid');
    const content = `once only ${uniq()} [[slow deltas=10 delay=100]]`;
    a.send('message', { conversationId, content, clientMessageId });
    const first = await a.next('message:ack');
    assert.equal(first.data.clientMessageId, clientMessageId);
    await a.next('agent:text', { timeout: 10_000 });
    expectStored(token, conversationId, content);

    // During the turn, from the same socket.
    a.send('message', { conversationId, content, clientMessageId });
    const dupDuring = await a.next('message:ack', { timeout: 5000 });
    assert.equal(dupDuring.data.messageId, first.data.messageId, JSON.stringify(dupDuring.data));
    assert.equal(dupDuring.data.duplicate, true);
    assert.equal(dupDuring.data.clientMessageId, clientMessageId);
    const end = await a.next('agent:end', { timeout: 15_000 });
    counters.turns++;
    assert.equal(end.data.stopReason, 'stop');

    // After the turn, from the other framing, with a socket.io ack.
    const ack = await b.emitWithAck('message', { conversationId, content, clientMessageId });
    assert.equal(ack.messageId, first.data.messageId, JSON.stringify(ack));
    assert.equal(ack.duplicate, true);
    // After a reconnect, as a client retrying a send it never saw acknowledged would.
    const c = await openJson({ token, conversationId });
    c.send('message', { conversationId, content, clientMessageId });
    const dupAfter = await c.next('message:ack', { timeout: 5000 });
    assert.equal(dupAfter.data.messageId, first.data.messageId);
    assert.equal(dupAfter.data.duplicate, true);
    await sleep(1000);
    for (const s of [a, b, c]) {
      assert.equal(s.events.filter((f) => f.event === 'agent:start').length, s === c ? 0 : 1, `one turn only:\n${s.log.dump()}`);
    }
    assert.equal(requestsExactly(content).length, 1, 'the upstream got one request');
    const stored = await messagesOf(token, conversationId);
    assert.equal(stored.length, 2, JSON.stringify(stored.map((m) => [m.role, m.content.slice(0, 40)])));
    assert.equal(stored.filter((m) => m.role === 'user').length, 1);
    await Promise.all([a.close(), b.close(), c.close()]);
  });
});

describe('idempotent sends while the original is being stored', () => {
  test('the same clientMessageId sent from two sockets at once is stored once and answered once', async () => {
    const { token } = await user('idem-race');
    const conversationId = randomUUID();
    const a = await openJson({ token, conversationId });
    const b = await openJson({ token, conversationId });
    const clientMessageId = uniq('cmid');
    const content = `raced ${uniq()} [[slow deltas=5 delay=50]]`;
    // Both copies arrive before the first is stored: one is in flight while the other is checked.
    a.send('message', { conversationId, content, clientMessageId });
    b.send('message', { conversationId, content, clientMessageId });
    const ackA = await a.next('message:ack');
    const ackB = await b.next('message:ack');
    assert.equal(ackA.data.messageId, ackB.data.messageId, 'both sockets hear of one stored message');
    await a.next('agent:end', { timeout: 15_000 });
    counters.turns++;
    expectStored(token, conversationId, content);
    await sleep(1000);
    assert.equal(a.events.filter((f) => f.event === 'agent:start').length, 1, `one turn only:\n${a.log.dump()}`);
    assert.equal(requestsExactly(content).length, 1, 'the upstream got one request');
    const stored = await messagesOf(token, conversationId);
    assert.equal(stored.filter((m) => m.role === 'user').length, 1, JSON.stringify(stored.map((m) => [m.role, m.content.slice(0, 40)])));
    await Promise.all([a.close(), b.close()]);
  });
});

describe('overlapping sends', () => {
  test('messages sent during a running turn are queued and answered in order; each ack comes when its turn starts', async () => {
    const { token } = await user('queue');
    const conversationId = randomUUID();
    const a = await openJson({ token, conversationId });
    const contents = [`first ${uniq()} [[slow deltas=10 delay=100]]`, `second ${uniq()}`, `third ${uniq()}`];
    for (const content of contents) a.send('message', { conversationId, content });
    const frames = [];
    for (let k = 0; k < 3; k++) frames.push(...(await a.until('agent:end', { timeout: 20_000 })));
    counters.turns += 3;
    for (const c of contents) expectStored(token, conversationId, c);
    const stream = frames.filter((f) => Number.isInteger(f.seq));
    assertContiguous(stream, 'three queued turns');
    const events = stream.map((f) => f.event);
    const acks = events.flatMap((e, k) => (e === 'message:ack' ? [k] : []));
    const ends = events.flatMap((e, k) => (e === 'agent:end' ? [k] : []));
    assert.equal(acks.length, 3, JSON.stringify(events));
    assert.ok(acks[1] > ends[0] && acks[2] > ends[1], `each queued ack comes after the previous turn ends: ${JSON.stringify(events)}`);
    const turns = [0, 1, 2].map((k) => summarizeTurn(stream.slice(acks[k], ends[k] + 1)));
    const reqs = contents.map((c) => requestsExactly(c));
    reqs.forEach((r, k) => assert.equal(r.length, 1, `one request for message ${k}`));
    assert.ok(reqs[0][0].receivedAt < reqs[1][0].receivedAt && reqs[1][0].receivedAt < reqs[2][0].receivedAt, 'the upstream was asked in order');
    turns.forEach((t, k) => assert.equal(t.text, reqs[k][0].sent.text, `reply ${k} belongs to message ${k}`));
    // Each queued message saw the previous turn as history.
    const history = reqs[2][0].body.messages.filter((m) => m.role === 'user' || m.role === 'assistant').map((m) => [m.role, textOf(m.content)]);
    assert.deepEqual(history, [
      ['user', contents[0]],
      ['assistant', turns[0].text],
      ['user', contents[1]],
      ['assistant', turns[1].text],
      ['user', contents[2]],
    ]);
    const stored = await messagesOf(token, conversationId);
    assert.deepEqual(
      stored.map((m) => m.content),
      [contents[0], turns[0].text, contents[1], turns[1].text, contents[2], turns[2].text],
    );
    await a.close();
  });

  test(`more than MAX_QUEUED_MESSAGES (${MAX_QUEUED}) queued → error queue_full; the queued ones run in order, the refused one nowhere`, async () => {
    const { token } = await user('queue-full');
    const conversationId = randomUUID();
    const a = await openJson({ token, conversationId });
    const running = `running ${uniq()} [[slow deltas=10 delay=200]]`;
    a.send('message', { conversationId, content: running });
    await a.next('agent:start', { timeout: 10_000 });
    const queued = Array.from({ length: MAX_QUEUED }, (_, k) => `queued ${k} ${uniq()}`);
    for (const content of queued) a.send('message', { conversationId, content });
    const refused = `one too many ${uniq()}`;
    a.send('message', { conversationId, content: refused });
    const e = await a.next('error', { timeout: 5000 });
    assert.equal(e.data.code, 'queue_full', a.log.dump());
    assert.equal(e.data.error, 'The agent failed to process your message. Please try again.', 'the seed text for a message the agent cannot take now');
    assert.ok(!a.events.some((f) => f.event === 'agent:end'), 'queue_full came while the first turn was still running');
    const frames = [];
    for (let k = 0; k < MAX_QUEUED + 1; k++) frames.push(...(await a.until('agent:end', { timeout: 30_000 })));
    counters.turns += MAX_QUEUED + 1;
    for (const c of [running, ...queued]) expectStored(token, conversationId, c);
    assertContiguous(a.events.filter((f) => Number.isInteger(f.seq)), 'running + queued turns');
    assert.equal(a.events.filter((f) => f.event === 'error').length, 1, 'the only error is the queue_full');
    const order = up.requests.filter((r) => [running, ...queued, refused].includes(r.lastUserText)).map((r) => r.lastUserText);
    assert.deepEqual(order, [running, ...queued], 'the upstream saw the queued messages in order, never the refused one');
    await sleep(300);
    const stored = await messagesOf(token, conversationId);
    assert.equal(stored.length, 2 * (MAX_QUEUED + 1));
    assert.deepEqual(
      stored.filter((m) => m.role === 'user').map((m) => m.content),
      [running, ...queued],
    );
    assert.ok(!stored.some((m) => m.content === refused));
    await a.close();
  });
});

describe('provider faults', () => {
  let token;
  let client;
  let conversationId;
  before(async () => {
    ({ token } = await user('faults'));
    conversationId = randomUUID();
    client = await openJson({ token, conversationId });
  });
  after(() => client?.close());

  /** Sends `content` with a fault, checks the requests and returns the turn. */
  async function faulty(content, { requests, extra = {}, timeout = 30_000 }) {
    counters.faults++;
    const t = await turn(client, token, content, extra, { timeout });
    const reqs = requestsExactly(content);
    if (requests !== undefined) assert.equal(reqs.length, requests, `upstream requests for ${content}: ${reqs.length}`);
    return { t, reqs };
  }

  test('429 with retry-after: retried after the delay, then the turn completes', async () => {
    const content = `limited once ${uniq()} [[flaky times=1 code=429 retry_after=1]]`;
    const { t, reqs } = await faulty(content, { requests: 2 });
    assert.deepEqual(t.errors, [], client.log.dump());
    assert.equal(t.end.data.stopReason, 'stop');
    assert.equal(reqs[0].sent.status, 429);
    const waited = reqs[1].receivedAt - reqs[0].receivedAt;
    assert.ok(waited >= 900, `the retry waited for retry-after (1 s): ${Math.round(waited)} ms`);
    assert.equal(t.text, reqs[1].sent.text);
  });

  test('429 that persists: retried UPSTREAM_RETRIES times, then error upstream_rate_limited and the failed turn stored', async () => {
    const content = `limited always ${uniq()} [[status code=429 retry_after=1]]`;
    const { t } = await faulty(content, { requests: 3 });
    await assertFailedTurn(t, { token, conversationId, content, code: 'upstream_rate_limited', stopReasons: ['error'], client });
  });

  test('500: retried, then error upstream_error', async () => {
    const content = `server error ${uniq()} [[status code=500]]`;
    const { t } = await faulty(content, { requests: 3 });
    await assertFailedTurn(t, { token, conversationId, content, code: 'upstream_error', stopReasons: ['error'], client });
  });

  test('503 twice then success: retried and the turn completes', async () => {
    const content = `flaky overload ${uniq()} [[flaky times=2 code=503]]`;
    const { t, reqs } = await faulty(content, { requests: 3 });
    assert.deepEqual(t.errors, [], client.log.dump());
    assert.equal(t.end.data.stopReason, 'stop');
    assert.equal(t.text, reqs[2].sent.text);
  });

  test('503 that persists: error upstream_overloaded', async () => {
    const content = `overloaded ${uniq()} [[status code=503]]`;
    const { t } = await faulty(content, { requests: 3 });
    await assertFailedTurn(t, { token, conversationId, content, code: ['upstream_overloaded', 'upstream_error'], stopReasons: ['error'], client });
  });

  test('connection reset before the first byte: retried, then error upstream_error', async () => {
    const content = `reset ${uniq()} [[reset]]`;
    const { t } = await faulty(content, { requests: 3 });
    await assertFailedTurn(t, { token, conversationId, content, code: 'upstream_error', stopReasons: ['error'], client });
  });

  test('a routing rule whose target keeps failing falls over to the default model, which answers', async () => {
    const keyword = uniq('fallkw');
    const rule = await gw.http('POST', '/admin/rules', {
      token: gw.adminToken,
      body: { name: uniq('fallover-rule'), priority: 1, conditions: { keywords: [keyword] }, provider: 'openai', model: 'gpt-4o', reason: 'test fallover' },
    });
    assert.ok(rule.status === 200 || rule.status === 201, `${rule.status}: ${rule.text}`);
    try {
      const content = `route me ${keyword} [[flaky times=3 code=503]]`;
      const { t, reqs } = await faulty(content, { requests: 4 });
      assert.deepEqual(
        reqs.map((r) => r.body.model),
        ['gpt-4o', 'gpt-4o', 'gpt-4o', 'gpt-4o-mini'],
        'the rule target with its retries, then the default',
      );
      assert.deepEqual(t.errors, [], client.log.dump());
      assert.equal(t.end.data.stopReason, 'stop');
      assert.equal(t.text, reqs[3].sent.text);
      const infos = t.frames.filter((f) => f.event === 'session:info');
      assert.equal(infos[0].data.modelId, 'gpt-4o', JSON.stringify(infos[0].data));
      assert.equal(infos.at(-1).data.modelId, 'gpt-4o-mini', 'clients are told about the fallover');
      assert.equal(t.end.data.usage.modelId, 'gpt-4o-mini');
      const stored = await messagesOf(token, conversationId);
      assert.equal(stored.at(-1).metadata.model, 'gpt-4o-mini');
    } finally {
      await gw.http('DELETE', `/admin/rules/${rule.json?.rule?.id}`, { token: gw.adminToken });
    }
  });

  test('stream cut mid-way (clean end, no [DONE]): stopReason truncated, error, partial reply stored', async () => {
    const content = `cut ${uniq()} [[cut after=3 deltas=8]]`;
    const { t, reqs } = await faulty(content, { requests: 1 });
    assert.equal(t.texts.length, 3);
    assert.equal(t.text, reqs[0].sent.text);
    await assertFailedTurn(t, { token, conversationId, content, code: 'upstream_error', stopReasons: ['truncated'], client });
  });

  test('stream cut abruptly (socket destroyed) after text was sent: stopReason truncated, error, partial reply stored', async () => {
    // A delay between deltas lets the first ones reach the gateway before the connection is destroyed.
    const content = `abrupt ${uniq()} [[cut after=3 deltas=8 delay=150 abrupt=1]]`;
    const { t, reqs } = await faulty(content, { requests: 1 });
    assert.ok(t.texts.length >= 1, `text arrived before the cut:\n${client.log.dump()}`);
    assert.ok(reqs[0].sent.text.startsWith(t.text), 'what the client got is a prefix of what the upstream sent');
    await assertFailedTurn(t, { token, conversationId, content, code: 'upstream_error', stopReasons: ['truncated'], client });
  });

  test(`stream stalls (UPSTREAM_STALL_TIMEOUT_MS=${STALL_MS}): detected in time, upstream_timeout, truncated, the stalled fetch closed`, async () => {
    const content = `stall ${uniq()} [[stall after=2 deltas=6]]`;
    const { t, reqs } = await faulty(content, { requests: 1 });
    assert.equal(t.text, reqs[0].sent.text);
    const lastDelta = reqs[0].sent.deltas.at(-1).at;
    const detected = Date.now();
    assert.ok(detected - lastDelta < STALL_MS + 5000, `stall detected ${Math.round(detected - lastDelta)} ms after the last delta`);
    await assertFailedTurn(t, { token, conversationId, content, code: 'upstream_timeout', stopReasons: ['truncated'], client });
    await up.waitForClientClose((r) => r.lastUserText === content, 5000);
  });

  test('a stall before any output: retried, then upstream_timeout with stopReason error', async () => {
    const content = `stall early ${uniq()} [[stall after=0]]`;
    const started = Date.now();
    const { t } = await faulty(content, { requests: 3 });
    assert.ok(Date.now() - started < 3 * STALL_MS + 8000, 'three stall timeouts and backoffs, not a minute');
    await assertFailedTurn(t, { token, conversationId, content, code: 'upstream_timeout', stopReasons: ['error'], client });
  });

  test('malformed SSE JSON mid-stream: truncated with an error, partial reply stored', async () => {
    const content = `malformed ${uniq()} [[malformed after=2 deltas=6]]`;
    const { t, reqs } = await faulty(content, { requests: 1 });
    assert.equal(t.text, reqs[0].sent.text);
    await assertFailedTurn(t, { token, conversationId, content, code: 'upstream_error', stopReasons: ['truncated'], client });
  });

  test('malformed SSE before any text: error, stopReason error', async () => {
    const content = `malformed early ${uniq()} [[malformed after=0]]`;
    const { t } = await faulty(content, {});
    assert.equal(t.text, '');
    await assertFailedTurn(t, { token, conversationId, content, code: 'upstream_error', stopReasons: ['error'], client });
  });

  test('an error event inside a 200 stream (OpenAI): the turn ends with an error, partial reply stored', async () => {
    const content = `stream error ${uniq()} [[stream_error after=2 deltas=6]]`;
    const { t, reqs } = await faulty(content, { requests: 1 });
    assert.equal(t.text, reqs[0].sent.text);
    await assertFailedTurn(t, { token, conversationId, content, code: ['upstream_error', 'upstream_overloaded'], stopReasons: ['error', 'truncated'], client });
  });

  test('an overloaded_error event inside a 200 stream (Anthropic): upstream_overloaded, partial reply stored', async () => {
    const content = `anthropic stream error ${uniq()} [[stream_error after=2 deltas=6]]`;
    const { t, reqs } = await faulty(content, { requests: 1, extra: { provider: 'anthropic', modelId: 'claude-sonnet-4-5' } });
    assert.equal(reqs[0].provider, 'anthropic');
    assert.equal(t.text, reqs[0].sent.text);
    await assertFailedTurn(t, { token, conversationId, content, code: 'upstream_overloaded', stopReasons: ['error', 'truncated'], client });
  });

  test('after every fault the conversation still completes a turn with the whole history', async () => {
    const content = `all good ${uniq()}`;
    const t = await turn(client, token, content);
    assert.deepEqual(t.errors, [], client.log.dump());
    assert.equal(t.end.data.stopReason, 'stop');
    assert.equal(requestsExactly(content).length, 1);
  });
});

describe('malformed frames', () => {
  test('at least 30 distinct malformed frames each get an error with a code, store nothing and leave the socket usable', async () => {
    const { token } = await user('malformed');
    const conversationId = randomUUID();
    const client = await openJson({ token, conversationId });
    await turn(client, token, `baseline ${uniq()}`);
    const from = client.events.length;
    const storedBefore = (await messagesOf(token, conversationId)).length;
    const requestsBefore = up.requests.length;

    const msg = (data) => JSON.stringify({ event: 'message', data });
    const J = ['invalid_json'];
    const P = ['invalid_payload'];
    const cases = [
      ['plain text', 'hello gateway', J],
      ['truncated JSON', '{"event":"message","data":{"content":"x"', J],
      ['empty text frame', '', [...J, ...P]],
      ['whitespace only', ' \n\t ', [...J, ...P]],
      ['JSON array', '[]', P],
      ['JSON string', '"message"', P],
      ['JSON number', '42', P],
      ['JSON null', 'null', P],
      ['JSON true', 'true', P],
      ['empty object', '{}', P],
      ['event is a number', JSON.stringify({ event: 5, data: { content: 'x' } }), P],
      ['event is null', JSON.stringify({ event: null, data: { content: 'x' } }), P],
      ['data is a string', JSON.stringify({ event: 'message', data: 'hi' }), P],
      ['data is an array', JSON.stringify({ event: 'message', data: ['hi'] }), P],
      ['data is null', JSON.stringify({ event: 'message', data: null }), P],
      ['no content', msg({}), P],
      ['content is a number', msg({ content: 5 }), P],
      ['content is null', msg({ content: null }), P],
      ['content is an object', msg({ content: { text: 'x' } }), P],
      ['content is an array', msg({ content: ['x'] }), P],
      ['content is a boolean', msg({ content: true }), P],
      ['content is empty', msg({ content: '' }), P],
      ['content is blank', msg({ content: ' \n ' }), P],
      ['content with NUL', msg({ content: 'a\u0000b' }), P],
      ['content with BEL', msg({ content: 'ring\u0007' }), P],
      ['content with ESC sequence', msg({ content: '\u001b[31mred' }), P],
      ['content with DEL', msg({ content: 'x\u007f' }), P],
      ['content with a C1 control', msg({ content: 'x\u0085y' }), P],
      ['content one byte over MAX_MESSAGE_BYTES', msg({ content: 'x'.repeat(MAX_MESSAGE_BYTES + 1) }), ['payload_too_large']],
      ['content over the limit in bytes, not in chars', msg({ content: 'é'.repeat(MAX_MESSAGE_BYTES / 2 + 1) }), ['payload_too_large']],
      ['frame of 300 KB', msg({ content: 'x', pad: 'y'.repeat(300_000) }), ['payload_too_large']],
      ['nesting 40 deep', msg({ content: 'x', extra: JSON.parse('['.repeat(40) + ']'.repeat(40)) }), [...J, ...P]],
      ['nesting 5000 deep', `{"event":"message","data":{"content":"x","extra":${'['.repeat(5000)}${']'.repeat(5000)}}}`, [...J, ...P]],
      ['unknown event', JSON.stringify({ event: 'no:such:event', data: {} }), ['unknown_event']],
      ['a server-only event from the client', JSON.stringify({ event: 'agent:text', data: { conversationId, text: 'spoof' } }), ['unknown_event']],
      ['empty event name', JSON.stringify({ event: '', data: {} }), ['unknown_event', 'invalid_payload']],
      ['event name with control characters', JSON.stringify({ event: 'mess\u0000age', data: { content: 'x' } }), ['unknown_event']],
      ['event name of 10 KB', JSON.stringify({ event: 'e'.repeat(10_000), data: {} }), ['unknown_event', 'payload_too_large']],
      ['binary frame', Buffer.from([0xff, 0xfe, 0x00, 0x7b]), P],
      ['empty binary frame', Buffer.alloc(0), P],
      ['valid JSON sent as a binary frame', Buffer.from(msg({ content: `binary ${uniq()}` })), P],
      ['duplicate top-level keys', `{"event":"message","event":"abort","data":{"content":"x"}}`, [...J, ...P]],
      ['duplicate keys in data', `{"event":"message","data":{"content":"a","content":"b"}}`, [...J, ...P]],
      ['number too large for a double', `{"event":"message","data":{"content":1e400}}`, [...J, ...P]],
      ['huge integer content', `{"event":"message","data":{"content":123456789012345678901234567890}}`, [...J, ...P]],
      ['NaN literal', `{"event":"message","data":{"content":NaN}}`, J],
      ['single-quoted JSON', `{'event':'message','data':{'content':'x'}}`, J],
      ['trailing comma', `{"event":"message","data":{"content":"x"},}`, J],
      ['trailing garbage', `${msg({ content: 'x' })} and more`, J],
      ['two frames in one', `${msg({ content: 'x' })}${msg({ content: 'y' })}`, J],
      ['a comment', `{"event":"message", /* hi */ "data":{"content":"x"}}`, J],
      ['byte order mark', `\ufeff${msg({ content: 'x' })}`, [...J, ...P]],
      ['lone surrogate escape', `{"event":"message","data":{"content":"\\ud800"}}`, [...J, ...P]],
      ['clientMessageId is a number', msg({ content: 'x', clientMessageId: 7 }), P],
      ['clientMessageId is empty', msg({ content: 'x', clientMessageId: '' }), P],
      ['clientMessageId of 129 characters', msg({ content: 'x', clientMessageId: 'c'.repeat(129) }), P],
      ['clientMessageId with a space', msg({ content: 'x', clientMessageId: 'a b' }), P],
      ['conversationId with whitespace', msg({ content: 'x', conversationId: 'a b' }), P],
      ['conversationId of another conversation', msg({ content: 'x', conversationId: randomUUID() }), ['conversation_mismatch']],
      ['provider is a number', msg({ content: 'x', provider: 42 }), P],
      ['modelId is an object', msg({ content: 'x', modelId: { id: 'gpt' } }), P],
      ['set:thinking without level', JSON.stringify({ event: 'set:thinking', data: { conversationId } }), P],
      ['set:thinking to an unknown level', JSON.stringify({ event: 'set:thinking', data: { conversationId, level: 'ludicrous' } }), ['invalid_thinking_level']],
      ['abort naming another conversation', JSON.stringify({ event: 'abort', data: { conversationId: randomUUID() } }), ['conversation_mismatch']],
      ['command:execute without command', JSON.stringify({ event: 'command:execute', data: { conversationId } }), P],
      ['command:execute with a 5000-byte command', JSON.stringify({ event: 'command:execute', data: { command: `/help ${'x'.repeat(5000)}` } }), ['payload_too_large']],
    ];
    assert.ok(new Set(cases.map((c) => c[0])).size >= 30, 'at least 30 distinct cases');
    const seen = [];
    for (const [k, [label, frame, codes]] of cases.entries()) {
      client.sendRaw(frame);
      const e = await client.next('error', { timeout: 5000 }).catch((err) => {
        throw new Error(`${label}: ${err.message}`);
      });
      seen.push([label, e.data.code]);
      assert.ok(codes.includes(e.data.code), `${label}: code ${JSON.stringify(e.data.code)}, expected one of ${codes}: ${JSON.stringify(e.data).slice(0, 300)}`);
      assert.equal(typeof e.data.error, 'string', label);
      assert.ok(e.data.error.length > 0 && e.data.error.length < 2000, `${label}: a short readable reason`);
      assert.equal(client.ws.readyState, 1, `${label}: the socket is still open`);
      if (k % 10 === 9) {
        // Still usable mid-way: a command answers.
        client.send('command:execute', { conversationId, command: '/status' });
        const r = await client.next('command:result', { timeout: 5000 });
        assert.equal(r.data.success, true, `usable after ${label}`);
      }
    }
    await sleep(500);
    const errors = client.events.filter((f) => f.event === 'error');
    assert.equal(errors.length, cases.length, `one error per frame, no more: ${JSON.stringify(seen)}`);
    const accepted = client.events.slice(from).filter((f) => ['message:ack', 'session:info', 'agent:start', 'agent:text', 'agent:end'].includes(f.event));
    assert.deepEqual(accepted, [], 'no malformed frame was accepted as a message');
    assert.equal(up.requests.length, requestsBefore, 'nothing reached the upstream');
    assert.equal((await messagesOf(token, conversationId)).length, storedBefore, 'nothing was stored');
    const t = await turn(client, token, `still usable ${uniq()}`);
    assert.deepEqual(t.errors, []);
    assert.equal(t.end.data.stopReason, 'stop');
    await client.close();
  });
});

describe('rate limit', () => {
  test(`more than RATE_LIMIT_PER_MINUTE (${RATE_LIMIT}) messages from a user → error rate_limited, nothing stored or sent, commands limited too`, async () => {
    const { token } = await user('rate');
    const conversationId = randomUUID();
    const client = await openJson({ token, conversationId });
    for (let k = 0; k < RATE_LIMIT; k++) {
      const t = await turn(client, token, `within the limit ${k} ${uniq()}`);
      assert.deepEqual(t.errors, [], `message ${k}: ${client.log.dump()}`);
    }
    const over = `over the limit ${uniq()}`;
    const from = client.events.length;
    client.send('message', { conversationId, content: over });
    const e = await client.next('error', { timeout: 5000 });
    assert.equal(e.data.code, 'rate_limited', client.log.dump());
    assert.match(e.data.error, /\d/, 'the reason says when to retry');
    await sleep(500);
    assert.deepEqual(client.events.slice(from).filter((f) => f.event !== 'error').map((f) => f.event), [], 'no ack, no turn for the refused message');
    assert.equal(requestsExactly(over).length, 0);
    const stored = await messagesOf(token, conversationId);
    assert.equal(stored.length, 2 * RATE_LIMIT);
    assert.ok(!stored.some((m) => m.content === over));
    // Commands count against the same limit; the socket stays open, and abort is never limited:
    // on this idle session it is taken and, as in the reference gateway, answered with nothing.
    client.send('command:execute', { conversationId, command: '/status' });
    assert.equal((await client.next('error')).data.code, 'rate_limited');
    const beforeAbort = client.events.length;
    client.send('abort', { conversationId });
    await sleep(500);
    assert.deepEqual(client.events.slice(beforeAbort), [], 'no rate_limited for an abort, and nothing else');
    await client.close();
  });
});

describe('size limits', () => {
  test('a 2.5 MB reply streams whole, is stored cut with a marker (metadata truncatedForStorage), and the turn completes', async () => {
    const { token } = await user('big');
    const conversationId = randomUUID();
    const client = await openJson({ token, conversationId });
    const content = `big ${uniq()} [[big size=2500000]]`;
    const t = await turn(client, token, content, {}, { timeout: 120_000 });
    assert.deepEqual(t.errors, [], client.log.dump());
    assert.equal(t.end.data.stopReason, 'stop');
    const [req] = requestsExactly(content);
    assert.equal(req.sent.text.length, 2_500_000);
    assert.equal(t.text.length, req.sent.text.length, 'the client got every byte');
    assert.ok(t.text === req.sent.text, 'the client got the exact text');
    const stored = await messagesOf(token, conversationId);
    assert.equal(stored.length, 2);
    const reply = stored[1];
    assert.ok(Buffer.byteLength(reply.content) < 2_000_000, `stored ${Buffer.byteLength(reply.content)} bytes, below a D1 row`);
    assert.ok(reply.content.length > 1_000_000, 'most of the reply is kept');
    const marker = reply.content.lastIndexOf('[truncated');
    assert.ok(marker > 0, `the stored text ends with a marker: …${JSON.stringify(reply.content.slice(-120))}`);
    assert.ok(req.sent.text.startsWith(reply.content.slice(0, marker).trimEnd()), 'the stored part is a prefix of the reply');
    const cut = reply.metadata.truncatedForStorage;
    assert.ok(cut, `metadata.truncatedForStorage: ${JSON.stringify(reply.metadata).slice(0, 300)}`);
    assert.equal(cut.totalBytes, 2_500_000);
    assert.ok(cut.storedBytes > 0 && cut.storedBytes < cut.totalBytes);
    assert.equal(reply.metadata.stopReason, 'stop');
    const next = await turn(client, token, `after the big one ${uniq()}`, {}, { timeout: 60_000 });
    assert.equal(next.end?.data.stopReason, 'stop', client.log.dump().slice(0, 2000));
    await client.close();
  });
});

describe('ledger', () => {
  test('every acknowledged message of this file is stored exactly once, each followed by its reply', async () => {
    let lost = 0;
    let duplicated = 0;
    const problems = [];
    for (const [conversationId, { token, contents }] of ledger) {
      const stored = await messagesOf(token, conversationId);
      for (const content of new Set(contents)) {
        const want = contents.filter((c) => c === content).length;
        const rows = stored.flatMap((m, k) => (m.role === 'user' && m.content === content ? [k] : []));
        if (rows.length < want) {
          lost += want - rows.length;
          problems.push(`lost in ${conversationId}: ${content.slice(0, 60)}`);
        }
        if (rows.length > want) {
          duplicated += rows.length - want;
          problems.push(`duplicated in ${conversationId}: ${content.slice(0, 60)}`);
        }
        for (const k of rows) {
          if (stored[k + 1]?.role !== 'assistant') {
            lost++;
            problems.push(`reply lost in ${conversationId} after: ${content.slice(0, 60)}`);
          }
        }
      }
      const users = stored.filter((m) => m.role === 'user').length;
      const assistants = stored.filter((m) => m.role === 'assistant').length;
      if (assistants > users) {
        duplicated += assistants - users;
        problems.push(`${assistants - users} extra replies in ${conversationId}`);
      }
    }
    console.log(`durability summary: faults injected ${counters.faults}, turns completed ${counters.turns}, messages lost ${lost}, messages duplicated ${duplicated}`);
    assert.ok(ledger.size > 0);
    assert.deepEqual(problems, []);
    assert.equal(lost, 0);
    assert.equal(duplicated, 0);
  });
});
