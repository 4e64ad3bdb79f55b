// Foundation end-to-end tests under wrangler dev: upgrade auth, one streamed turn, persistence and its API, fan-out, history, frame validation, upstream errors, restart, the echo provider, deploy dry-run.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startFakeUpstream, textOf } from '../support/fake-upstream.mjs';
import { ROOT, buildOnce, eventually, run, startGateway, uniq } from '../support/harness.mjs';

let up;
let gw;
let alice;
let bob;

before(async () => {
  up = await startFakeUpstream();
  gw = await startGateway({ upstream: up, vars: { ALLOWED_ORIGINS: 'http://allowed.test', MAX_MESSAGE_BYTES: '1000' } });
  alice = await gw.mintToken('alice');
  bob = await gw.mintToken('bob');
});

after(async () => {
  await gw?.stop();
  await up?.close();
});

// The list routes are not pinned by PROTOCOL.md to a bare array or a wrapping object; both are read.
const listOf = (json, key) => (Array.isArray(json) ? json : json?.[key]);

/** Opens a socket for `token`, checks the manifest arrives first, and returns the client. */
async function open(token, opts = {}) {
  const client = await gw.connect({ token, ...opts });
  const first = await client.next(null);
  assert.equal(first.event, 'commands:manifest', `the first frame is the manifest:\n${client.log.dump()}`);
  return client;
}

/** The single upstream request made for `content` (the fake records the last user text). */
function onlyRequestFor(content) {
  const found = up.requests.filter((r) => r.lastUserText === content);
  assert.equal(found.length, 1, `exactly one upstream request for ${JSON.stringify(content)}, saw ${found.length}`);
  return found[0];
}

/** Creates a conversation for `token` with one turn; returns its id, the content and the reply. */
async function conversationWithOneTurn(token, label = 'first') {
  const client = await open(token);
  const content = `${label} ${uniq()}`;
  const t = await client.turn(content);
  assert.deepEqual(t.errors, [], 'no error frames');
  await client.close();
  return { conversationId: t.ack.data.conversationId, content, reply: t.text };
}

describe('upgrade', () => {
  test('without a token: 401 with a JSON {error} body', async () => {
    const refusal = await gw.expectUpgradeFailure({});
    assert.equal(refusal.status, 401);
    assert.equal(typeof refusal.json?.error, 'string', `body: ${refusal.body}`);
    assert.ok(refusal.json.error.length > 0);
  });

  test('with an unknown token: 401', async () => {
    const refusal = await gw.expectUpgradeFailure({ token: `nope-${randomUUID()}` });
    assert.equal(refusal.status, 401);
  });

  test('with a revoked token: 401, where the same token worked before', async () => {
    const name = uniq('revoked');
    const token = await gw.mintToken('carol', name);
    const client = await open(token);
    await client.close();
    const del = await gw.http('DELETE', `/admin/tokens/${name}`, { token: gw.adminToken });
    assert.ok(del.status >= 200 && del.status < 300, `DELETE answered ${del.status}: ${del.text}`);
    const refusal = await gw.expectUpgradeFailure({ token });
    assert.equal(refusal.status, 401);
  });

  test('the token may come as Authorization: Bearer', async () => {
    const client = await open(alice, { useHeaderAuth: true });
    await client.close();
  });

  test('a client close frame is answered promptly', async () => {
    const client = await open(alice);
    const info = await client.close(1000, 'done');
    assert.ok(!info.timedOut, 'the gateway sent its close frame within 3 s');
    assert.equal(info.code, 1000);
  });

  test('a plain GET without Upgrade: websocket gets 426', async () => {
    const res = await gw.http('GET', `/chat?token=${encodeURIComponent(alice)}`);
    assert.equal(res.status, 426);
  });

  test('an Origin outside ALLOWED_ORIGINS gets 403; the allowed one opens', async () => {
    const refusal = await gw.expectUpgradeFailure({ token: alice, origin: 'http://evil.test' });
    assert.equal(refusal.status, 403);
    const client = await open(alice, { origin: 'http://allowed.test' });
    await client.close();
  });

  test("another user's conversation is refused before the socket opens", async () => {
    const { conversationId } = await conversationWithOneTurn(alice, 'private');
    const refusal = await gw.expectUpgradeFailure({ token: bob, conversationId });
    assert.ok([403, 404].includes(refusal.status), `status ${refusal.status}: ${refusal.body}`);
  });

  test('a conversation is claimed by its first socket: another user cannot listen in before the first message', async () => {
    const conversationId = `claimed-${uniq()}`;
    const mine = await gw.connect({ token: alice, conversationId });
    const refusal = await gw.expectUpgradeFailure({ token: bob, conversationId });
    assert.equal(refusal.status, 403, `status ${refusal.status}: ${refusal.body}`);
    const sio = await gw.expectSioConnectError({ token: bob, conversationId });
    assert.match(sio.message, /forbidden|another user/i, sio.message);
    await mine.close();
  });
});

describe('a turn', () => {
  test('connect: the first frame is commands:manifest with commands', async () => {
    const client = await gw.connect({ token: alice });
    const first = await client.next(null);
    assert.equal(first.event, 'commands:manifest');
    const { commands } = first.data.manifest;
    assert.ok(Array.isArray(commands) && commands.length > 0, JSON.stringify(first.data));
    for (const c of commands) assert.equal(typeof c.name, 'string');
    await client.close();
  });

  test('session:info, ack, agent:start, text deltas equal to what the upstream sent, agent:end with its usage; seq +1 each', async () => {
    const client = await open(alice);
    const content = `hello ${uniq()}`;
    const clientMessageId = uniq('cm');
    const t = await client.turn(content, { clientMessageId });
    assert.deepEqual(t.errors, []);

    assert.equal(typeof t.ack?.data.messageId, 'string', client.log.dump());
    assert.ok(t.ack.data.messageId.length > 0);
    assert.equal(t.ack.data.clientMessageId, clientMessageId);
    const { conversationId } = t.ack.data;
    assert.equal(typeof conversationId, 'string');
    assert.equal(t.info?.data.provider, 'openai');
    assert.equal(t.info.data.modelId, 'gpt-4o-mini');
    assert.ok(t.start, 'agent:start');
    for (const f of t.frames) assert.equal(f.data.conversationId, conversationId, `conversationId of ${f.event}`);

    const req = onlyRequestFor(content);
    assert.equal(req.provider, 'openai');
    assert.equal(req.body.model, 'gpt-4o-mini');
    assert.equal(req.body.stream, true);
    assert.equal(req.headers.authorization, 'Bearer test-openai-key');
    assert.equal(textOf(req.body.messages.at(-1).content), content);

    assert.ok(t.texts.length >= 2, `at least two agent:text deltas, got ${t.texts.length}`);
    assert.equal(t.text, req.sent.text);
    const { usage, stopReason } = t.end.data;
    assert.equal(stopReason, 'stop');
    assert.equal(usage.provider, 'openai');
    assert.equal(usage.modelId, 'gpt-4o-mini');
    assert.equal(usage.turn.tokens.input, req.sent.tokens.input);
    assert.equal(usage.turn.tokens.output, req.sent.tokens.output);
    assert.equal(usage.turn.tokens.total, req.sent.tokens.total);
    assert.equal(usage.turn.tokens.cacheRead, 0);
    assert.equal(usage.turn.tokens.cacheWrite, 0);
    // The reference gateway's shape: running totals (the first turn's here), cost a number in USD.
    assert.deepEqual(usage.tokens, usage.turn.tokens);
    assert.equal(typeof usage.cost, 'number');
    assert.ok(Math.abs(usage.cost - usage.turn.cost.total) < 1e-12, JSON.stringify(usage));
    assert.deepEqual(Object.keys(usage.context).sort(), ['percent', 'window']);

    const at = (f) => t.frames.indexOf(f);
    // The reference gateway's order: session:info, message:ack, agent:start, each the turn's first frames.
    assert.deepEqual(t.frames.slice(0, 3).map((f) => f.event), ['session:info', 'message:ack', 'agent:start'], client.log.dump());
    assert.ok(t.texts.every((f) => at(f) > at(t.start)), 'text after agent:start');
    assert.equal(t.frames.at(-1), t.end);
    for (const f of t.frames) assert.ok(Number.isInteger(f.seq), `${f.event} carries an integer seq`);
    t.frames.slice(1).forEach((f, k) => assert.equal(f.seq, t.frames[k].seq + 1, `seq of ${f.event} follows ${t.frames[k].event}`));
    await client.close();
  });

  test('two sockets on one conversation both get the whole stream', async () => {
    const { conversationId } = await conversationWithOneTurn(alice, 'shared');
    const a = await open(alice, { conversationId });
    const b = await open(alice, { conversationId });
    const t = await a.turn(`fan out ${uniq()} [[slow delay=20 deltas=8]]`);
    const seenByB = await b.until('agent:end', { timeout: 10_000 });
    const shape = (frames) => frames.map((f) => [f.event, f.seq, JSON.stringify(f.data)]);
    assert.deepEqual(shape(seenByB), shape(t.frames));
    assert.equal(t.texts.length, 8);
    await a.close();
    await b.close();
  });

  test('the second turn sends the first turn to the upstream as history', async () => {
    const client = await open(alice);
    const first = `remember ${uniq()}`;
    const t1 = await client.turn(first);
    const second = `and now ${uniq()}`;
    await client.turn(second);
    const { messages } = onlyRequestFor(second).body;
    const user1 = messages.findIndex((m) => m.role === 'user' && textOf(m.content) === first);
    const assistant1 = messages.findIndex((m) => m.role === 'assistant' && textOf(m.content) === t1.text);
    assert.ok(user1 >= 0 && assistant1 > user1, `history in order: ${JSON.stringify(messages)}`);
    assert.equal(assistant1, messages.length - 2);
    assert.equal(textOf(messages.at(-1).content), second);
    await client.close();
  });
});

describe('persistence API', () => {
  test('GET /api/conversations lists the caller’s conversations newest first; another user sees none of them', async () => {
    const older = await conversationWithOneTurn(alice, 'older');
    const newer = await conversationWithOneTurn(alice, 'newer');
    const mine = await gw.http('GET', '/api/conversations', { token: alice });
    assert.equal(mine.status, 200, mine.text);
    const ids = listOf(mine.json, 'conversations').map((c) => c.id);
    assert.ok(ids.includes(older.conversationId) && ids.includes(newer.conversationId), mine.text);
    assert.ok(ids.indexOf(newer.conversationId) < ids.indexOf(older.conversationId), 'newest first');
    const theirs = await gw.http('GET', '/api/conversations', { token: bob });
    assert.equal(theirs.status, 200, theirs.text);
    const bobIds = listOf(theirs.json, 'conversations').map((c) => c.id);
    assert.ok(!bobIds.includes(older.conversationId) && !bobIds.includes(newer.conversationId));
    assert.equal((await gw.http('GET', '/api/conversations')).status, 401);
  });

  test('GET /api/conversations/:id/messages has both messages with their metadata; another user gets 404', async () => {
    const client = await open(alice);
    const content = `store me ${uniq()}`;
    const t = await client.turn(content);
    await client.close();
    const { conversationId } = t.ack.data;
    const res = await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token: alice });
    assert.equal(res.status, 200, res.text);
    const messages = listOf(res.json, 'messages');
    assert.equal(messages.length, 2, res.text);
    const [user, assistant] = messages;
    assert.equal(user.role, 'user');
    assert.equal(user.content, content);
    assert.equal(assistant.role, 'assistant');
    assert.equal(assistant.content, t.text);
    const m = assistant.metadata;
    assert.ok(!Number.isNaN(Date.parse(m.timestamp)), `timestamp ${m.timestamp}`);
    assert.equal(m.model, 'gpt-4o-mini');
    assert.equal(m.provider, 'openai');
    assert.deepEqual(m.toolCalls, []);
    const sent = onlyRequestFor(content).sent.tokens;
    assert.deepEqual(m.tokenUsage, { input: sent.input, output: sent.output, cacheRead: 0, cacheWrite: 0, total: sent.total });
    const other = await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token: bob });
    assert.equal(other.status, 404);
  });
});

describe('frame validation', () => {
  test('each malformed frame gets an error with its code, and the socket still completes a turn', async () => {
    const client = await open(alice);
    const cases = [
      ['not json', 'not json', 'invalid_json'],
      ['{}', '{}', 'invalid_payload'],
      ['content 5', JSON.stringify({ event: 'message', data: { content: 5 } }), 'invalid_payload'],
      ['unknown event', JSON.stringify({ event: 'no:such:event', data: {} }), 'unknown_event'],
      ['empty content', JSON.stringify({ event: 'message', data: { content: '' } }), 'invalid_payload'],
      ['1001 bytes', JSON.stringify({ event: 'message', data: { content: 'x'.repeat(1001) } }), 'payload_too_large'],
      // 501 characters but 1002 bytes: the limit counts UTF-8 bytes.
      ['1002 bytes in 501 chars', JSON.stringify({ event: 'message', data: { content: 'é'.repeat(501) } }), 'payload_too_large'],
      // The JSON framing is text frames; a binary frame is not a payload of it.
      ['binary frame', Buffer.from([0xff, 0xfe, 0x00, 0x7b]), 'invalid_payload'],
    ];
    for (const [label, raw, code] of cases) {
      client.sendRaw(raw);
      const e = await client.next('error', { timeout: 5000 });
      assert.equal(e.data.code, code, `${label}: ${JSON.stringify(e.data)}`);
      assert.equal(typeof e.data.error, 'string');
    }
    assert.ok(!client.events.some((f) => f.event === 'message:ack' || f.event === 'agent:start'), client.log.dump());
    assert.equal(up.requests.filter((r) => r.lastUserText.includes('x'.repeat(1001)) || r.lastUserText.includes('é'.repeat(501))).length, 0);

    const marker = uniq('limit');
    const exactly1000 = marker + 'y'.repeat(1000 - Buffer.byteLength(marker));
    const atLimit = await client.turn(exactly1000);
    assert.deepEqual(atLimit.errors, [], 'content of exactly MAX_MESSAGE_BYTES is accepted');
    assert.equal(onlyRequestFor(exactly1000).lastUserText, exactly1000);
    await client.close();
  });

  test('a message naming another conversation gets conversation_mismatch and nothing is stored', async () => {
    const { conversationId } = await conversationWithOneTurn(alice, 'bound');
    const client = await open(alice, { conversationId });
    const other = randomUUID();
    const content = `elsewhere ${uniq()}`;
    client.send('message', { conversationId: other, content });
    const e = await client.next('error', { timeout: 5000 });
    assert.equal(e.data.code, 'conversation_mismatch', JSON.stringify(e.data));
    const after = await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token: alice });
    assert.equal(listOf(after.json, 'messages').length, 2, after.text);
    assert.equal((await gw.http('GET', `/api/conversations/${other}/messages`, { token: alice })).status, 404);
    assert.equal(up.requestsFor(content).length, 0);
    const t = await client.turn(`back home ${uniq()}`);
    assert.deepEqual(t.errors, []);
    await client.close();
  });
});

describe('upstream failure', () => {
  test('an upstream 500 gives error upstream_error with the seed text, its detail naming the provider and status, then agent:end stopReason error', async () => {
    const client = await open(alice);
    const t = await client.turn(`boom ${uniq()} [[status code=500]]`, {}, { timeout: 60_000 });
    assert.equal(t.errors.length, 1, client.log.dump());
    const [e] = t.errors;
    assert.equal(e.data.code, 'upstream_error');
    assert.equal(e.data.error, 'The agent failed to process your message. Please try again.');
    assert.match(e.data.detail, /openai/i);
    assert.match(e.data.detail, /500/);
    assert.equal(e.data.conversationId, t.end.data.conversationId);
    assert.ok(t.frames.indexOf(e) < t.frames.indexOf(t.end));
    assert.equal(t.end.data.stopReason, 'error');
    await client.close();
  });
});

describe('restart', () => {
  test('history survives a restart of wrangler dev and goes to the upstream with the next turn', async () => {
    const { conversationId, content, reply } = await conversationWithOneTurn(alice, 'durable');
    await gw.restart();
    const res = await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token: alice });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(
      listOf(res.json, 'messages').map((m) => [m.role, m.content]),
      [
        ['user', content],
        ['assistant', reply],
      ],
    );
    const client = await open(alice, { conversationId });
    const next = `after restart ${uniq()}`;
    const t = await client.turn(next);
    assert.deepEqual(t.errors, []);
    const { messages } = onlyRequestFor(next).body;
    const replayed = messages.filter((m) => m.role === 'user' || m.role === 'assistant').map((m) => [m.role, textOf(m.content)]);
    assert.deepEqual(replayed, [
      ['user', content],
      ['assistant', reply],
      ['user', next],
    ]);
    await client.close();
  });
});

describe('restart mid-turn', () => {
  test('a message whose turn a restart cut short (before its copy to D1) reaches D1 once the conversation wakes', async () => {
    const conversationId = randomUUID();
    const client = await open(alice, { conversationId });
    const content = `cut by a restart ${uniq()} [[slow deltas=40 delay=100]]`;
    client.send('message', { conversationId, content });
    const ack = await client.next('message:ack');
    // Well inside D1_COPY_DELAY_MS (1 s by default): the message is only in the conversation's storage.
    await gw.restart();
    // The conversation list reads D1 only: the message is not there before the conversation wakes.
    const inD1 = async () => listOf((await gw.http('GET', '/api/conversations', { token: alice })).json, 'conversations').some((c) => c.id === conversationId);
    assert.equal(await inD1(), false, 'not in D1 before the conversation wakes');
    const back = await open(alice, { conversationId });
    await eventually(inD1, { timeout: 10_000, interval: 200, what: 'the kept message copied to D1 after the restart' });
    const stored = listOf((await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token: alice })).json, 'messages');
    assert.equal(stored[0].id, ack.data.messageId);
    assert.deepEqual(stored.slice(0, 1).map((m) => [m.role, m.content]), [['user', content]]);
    await back.close();
  });
});

describe('without providers', () => {
  let bare;
  before(async () => {
    bare = await startGateway({
      upstream: up,
      vars: { OPENAI_BASE_URL: '', OPENAI_API_KEY: '', ANTHROPIC_BASE_URL: '', ANTHROPIC_API_KEY: '', DEFAULT_MODEL: '' },
    });
  });
  after(() => bare?.stop());

  test('the echo provider answers, with no network', async () => {
    const token = await bare.mintToken('erin');
    const client = await bare.connect({ token });
    assert.equal((await client.next(null)).event, 'commands:manifest');
    const content = `echo me ${uniq()}`;
    const t = await client.turn(content);
    assert.deepEqual(t.errors, []);
    assert.equal(t.info.data.provider, 'echo');
    assert.ok(t.texts.length >= 1);
    assert.ok(t.text.includes(content), `the echo reply contains the prompt: ${JSON.stringify(t.text)}`);
    assert.equal(t.end.data.stopReason, 'stop');
    assert.equal(up.requestsFor(content).length, 0);
    await client.close();
  });
});

describe('deploy', () => {
  test('wrangler deploy --dry-run bundles the Worker', async () => {
    await buildOnce();
    const outdir = await mkdtemp(path.join(tmpdir(), 'gateway-dry-run-'));
    try {
      const { code, output } = await run(path.join(ROOT, 'node_modules', '.bin', 'wrangler'), ['deploy', '--dry-run', '--outdir', outdir], { timeoutMs: 180_000 });
      assert.equal(code, 0, output);
      const files = await readdir(outdir);
      assert.ok(files.includes('index.js'), `the bundle is written: ${files.join(', ')}`);
      assert.ok(files.some((f) => f.endsWith('.wasm')), `the Wasm module ships with it: ${files.join(', ')}`);
    } finally {
      await rm(outdir, { recursive: true, force: true });
    }
  });
});
