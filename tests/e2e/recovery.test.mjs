// Turns that outlive their Durable Object: wrangler dev killed with SIGKILL mid-turn and started again on the same state; what was shown is stored, no tool runs twice, resuming clients get the end.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { startFakeUpstream, textOf } from '../support/fake-upstream.mjs';
import { startToolServer } from '../support/tool-server.mjs';
import { eventually, startGateway, summarizeTurn, uniq } from '../support/harness.mjs';

// Batches every 200 ms (small so a test's few seconds cross several); deltas every 50 ms.
const CHECKPOINT_MS = 200;
const DELTA_MS = 50;

let up;
let tools;
let gw;
let agent;
const restarts = { injected: 0, recovered: 0, deltasLost: [] };

before(async () => {
  up = await startFakeUpstream();
  tools = await startToolServer();
  gw = await startGateway({ upstream: up, vars: { CHECKPOINT_INTERVAL_MS: String(CHECKPOINT_MS), TOOL_TIMEOUT_MS: '30000' } });
  agent = uniq('recovering');
  const res = await gw.http('POST', '/admin/agents', {
    token: gw.adminToken,
    body: {
      name: agent,
      provider: 'openai',
      model: 'gpt-4o-mini',
      tools: [
        { name: 'slow', description: 'Waits ms milliseconds.', parameters: { type: 'object', properties: { ms: { type: 'number' } } }, url: `${tools.url}/tools/slow` },
        { name: 'echo', description: 'Echoes its arguments.', parameters: { type: 'object', properties: { text: { type: 'string' } } }, url: `${tools.url}/tools/echo` },
      ],
    },
  });
  assert.equal(res.status, 201, res.text);
});

after(async (t) => {
  const lost = restarts.deltasLost;
  // The closing figures: restarts injected, turns recovered, deltas shown and then lost.
  console.log(`# [recovery] restarts injected: ${restarts.injected}; turns recovered: ${restarts.recovered}; deltas shown then lost per restart: ${JSON.stringify(lost)} (max ${Math.max(0, ...lost)})`);
  await gw?.stop();
  await up?.close();
  await tools?.close();
});

async function user() {
  const id = uniq('rec');
  return { id, token: await gw.mintToken(id) };
}

async function open(token, conversationId, lastSeq) {
  const client = await gw.connect({ token, conversationId, lastSeq });
  assert.equal((await client.next(null)).event, 'commands:manifest');
  return client;
}

async function history(token, conversationId, until = (msgs) => msgs.some((m) => m.role === 'assistant')) {
  return eventually(
    async () => {
      const res = await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token });
      return res.status === 200 && until(res.json.messages) ? res.json.messages : null;
    },
    { timeout: 20_000, interval: 250, what: 'the interrupted turn in the history' },
  );
}

const deltas = (client) => client.events.filter((f) => f.event === 'agent:text');

async function killAndRestart() {
  restarts.injected += 1;
  await gw.restart({ hard: true });
}

/** The next turn after a recovery works, and the model sees the interrupted reply in the history. */
async function nextTurnWorks(client, interruptedText) {
  const content = `and after that ${uniq()}`;
  const t = await client.turn(content);
  assert.equal(t.end.data.stopReason, 'stop', JSON.stringify(t.end.data));
  const [req] = up.requestsFor(content);
  const assistants = req.body.messages.filter((m) => m.role === 'assistant').map((m) => textOf(m.content) ?? '');
  assert.ok(assistants.some((a) => a === interruptedText), `the partial reply is in the next request's history: ${JSON.stringify(assistants)}`);
}

describe('a restart mid-stream', () => {
  test('with a client attached: what the checkpoints hold is stored as interrupted, the client that resumes gets agent:end, the next turn works', async () => {
    const { token } = await user();
    const conversationId = randomUUID();
    const client = await open(token, conversationId);
    const content = `cut mid-stream ${uniq()} [[slow deltas=120 delay=${DELTA_MS}]]`;
    client.send('message', { conversationId, content });
    const ack = await client.next('message:ack');
    await eventually(() => deltas(client).length >= 30, { timeout: 15_000, what: '30 deltas' });
    await killAndRestart();
    await client.closed;
    const seen = deltas(client);
    const seenText = seen.map((f) => f.data.text).join('');
    const lastSeq = Math.max(...client.events.filter((f) => typeof f.seq === 'number').map((f) => f.seq));

    const back = await open(token, conversationId, lastSeq);
    const replayed = await back.until('agent:end', { timeout: 20_000 });
    const end = replayed.at(-1);
    assert.equal(end.data.stopReason, 'interrupted', back.log.dump());
    assert.ok(replayed.every((f) => f.seq === undefined || f.seq > lastSeq), `only events after lastSeq: ${back.log.dump()}`);
    assert.ok(!replayed.some((f) => f.event === 'error' && f.data.code === 'resume_gap'), 'no gap');
    restarts.recovered += 1;

    const msgs = await history(token, conversationId);
    assert.deepEqual(msgs.map((m) => m.role), ['user', 'assistant']);
    assert.equal(msgs[0].id, ack.data.messageId);
    const reply = msgs[1];
    assert.equal(reply.metadata.stopReason, 'interrupted', JSON.stringify(reply.metadata));
    assert.ok(reply.content.length > 0, 'the checkpoints held some of the reply');
    assert.ok(seenText.startsWith(reply.content), `what is stored was shown: ${JSON.stringify(reply.content)} vs ${JSON.stringify(seenText)}`);
    // Shown and not stored: the deltas after the last batch; the batch interval bounds them.
    let kept = 0;
    let lost = 0;
    for (const d of seen) {
      if (kept + d.data.text.length <= reply.content.length) kept += d.data.text.length;
      else lost += 1;
    }
    restarts.deltasLost.push(lost);
    assert.ok(lost <= Math.ceil(CHECKPOINT_MS / DELTA_MS) + 3, `${lost} deltas shown and lost, for batches every ${CHECKPOINT_MS} ms and deltas every ${DELTA_MS} ms`);
    assert.equal(up.requestsFor(content).length, 1, 'the model is not called again');

    await nextTurnWorks(back, reply.content);
    await back.close();
  });

  test('with nobody connected: an alarm stores the interrupted turn without any client coming back', async () => {
    const { token } = await user();
    const conversationId = randomUUID();
    const client = await open(token, conversationId);
    const content = `nobody left ${uniq()} [[slow deltas=120 delay=${DELTA_MS}]]`;
    client.send('message', { conversationId, content });
    await eventually(() => deltas(client).length >= 10, { timeout: 15_000, what: '10 deltas' });
    await client.close();
    await new Promise((resolve) => setTimeout(resolve, CHECKPOINT_MS * 3));
    await killAndRestart();
    const msgs = await history(token, conversationId);
    restarts.recovered += 1;
    const reply = msgs.find((m) => m.role === 'assistant');
    assert.equal(reply.metadata.stopReason, 'interrupted');
    assert.ok(reply.content.length > 0);
    assert.ok(up.requestsFor(content)[0] !== undefined);
  });
});

describe('a restart between two model calls of a tool loop', () => {
  test('the tool that returned keeps its result, the second call\'s partial text is stored, and nothing runs again', async () => {
    const { token } = await user();
    const conversationId = randomUUID();
    const client = await open(token, conversationId);
    const marker = uniq('loop');
    const content = `loop ${marker} [[tool name=echo args={"text":"${marker}"}]] [[slow deltas=80 delay=${DELTA_MS}]]`;
    client.send('message', { conversationId, content, agentId: agent });
    await client.next('agent:tool:end', { timeout: 15_000 });
    await eventually(() => deltas(client).length >= 10, { timeout: 15_000, what: '10 deltas of the second call' });
    await killAndRestart();
    const seenText = deltas(client).map((f) => f.data.text).join('');
    const back = await open(token, conversationId, 0);
    const frames = await back.until('agent:end', { timeout: 20_000 });
    assert.equal(frames.at(-1).data.stopReason, 'interrupted', back.log.dump());
    restarts.recovered += 1;
    const reply = (await history(token, conversationId)).find((m) => m.role === 'assistant');
    assert.equal(reply.metadata.stopReason, 'interrupted');
    assert.deepEqual(reply.metadata.toolCalls.map((c) => [c.toolName, c.isError]), [['echo', false]]);
    assert.ok(reply.content.length > 0 && seenText.startsWith(reply.content), `${JSON.stringify(reply.content)} was shown: ${JSON.stringify(seenText)}`);
    assert.equal(tools.calls.filter((c) => c.name === 'echo' && c.body?.text === marker).length, 1, 'the tool ran once');
    assert.equal(up.requestsFor(content).length, 2, 'two model calls, none again');

    const next = `after the loop ${uniq()}`;
    const t = await back.turn(next, { agentId: agent });
    assert.equal(t.end.data.stopReason, 'stop', JSON.stringify(t.end.data));
    const [req] = up.requestsFor(next);
    const roles = req.body.messages.filter((m) => m.role !== 'system').map((m) => m.role);
    assert.deepEqual(roles, ['user', 'assistant', 'tool', 'assistant', 'user'], JSON.stringify(req.body.messages));
    await back.close();
  });
});

describe('a restart while a tool runs', () => {
  test('the tool is not run again; it is answered as interrupted, so the history stays valid for the next turn', async () => {
    const { token } = await user();
    const conversationId = randomUUID();
    const client = await open(token, conversationId);
    const marker = uniq('tool');
    const content = `slow tool ${marker} [[tool name=slow args={"ms":6000,"tag":"${marker}"}]]`;
    client.send('message', { conversationId, content, agentId: agent });
    await client.next('agent:tool:start', { timeout: 10_000 });
    await tools.waitForCall((c) => c.name === 'slow' && c.body?.tag === marker, 10_000);
    await killAndRestart();
    const back = await open(token, conversationId, 0);
    const frames = await back.until('agent:end', { timeout: 20_000 });
    assert.equal(frames.at(-1).data.stopReason, 'interrupted', back.log.dump());
    restarts.recovered += 1;
    const msgs = await history(token, conversationId);
    const reply = msgs.find((m) => m.role === 'assistant');
    assert.equal(reply.metadata.stopReason, 'interrupted');
    assert.deepEqual(reply.metadata.toolCalls.map((c) => [c.toolName, c.isError]), [['slow', true]]);
    // Long past the tool's 6 s: it ran once.
    await new Promise((resolve) => setTimeout(resolve, 2000));
    assert.equal(tools.calls.filter((c) => c.name === 'slow' && c.body?.tag === marker).length, 1, 'the tool ran once');
    assert.equal(up.requestsFor(content).length, 1, 'the model is not called again for it');

    const next = `after the tool ${uniq()}`;
    const t = await back.turn(next, { agentId: agent });
    assert.equal(t.end.data.stopReason, 'stop', JSON.stringify(t.end.data));
    const [req] = up.requestsFor(next);
    const results = req.body.messages.filter((m) => m.role === 'tool');
    assert.equal(results.length, 1, JSON.stringify(req.body.messages));
    assert.match(textOf(results[0].content), /^interrupted: the gateway restarted/);
    await back.close();
  });
});

describe('continuing an interrupted turn (RESUME_INTERRUPTED_TURNS: auto continues Anthropic turns)', () => {
  test('the partial reply is a prefill: the model goes on where the stream stopped, and the two stored parts make the whole answer', async () => {
    const { token } = await user();
    const conversationId = randomUUID();
    const client = await open(token, conversationId);
    // Longer than the 120 deltas, so the fake's pieces are all text.
    const words = `continue me ${uniq()} ${'and on '.repeat(20).trim()}`;
    const content = `${words} [[slow deltas=120 delay=${DELTA_MS}]]`;
    const whole = `You said: ${words}`;
    client.send('message', { conversationId, content, provider: 'anthropic', modelId: 'claude-sonnet-4-5' });
    await eventually(() => deltas(client).length >= 30, { timeout: 15_000, what: '30 deltas' });
    await killAndRestart();
    await client.closed;
    const lastSeq = Math.max(...client.events.filter((f) => typeof f.seq === 'number').map((f) => f.seq));

    const back = await open(token, conversationId, lastSeq);
    const interrupted = await back.until('agent:end', { timeout: 20_000 });
    assert.equal(interrupted.at(-1).data.stopReason, 'interrupted', back.log.dump());
    restarts.recovered += 1;
    const continued = summarizeTurn(await back.until('agent:end', { timeout: 30_000 }));
    assert.equal(continued.end.data.stopReason, 'stop', back.log.dump());
    assert.ok(continued.start, 'the continuation starts like a turn');
    assert.equal(continued.ack, undefined, 'it answers no new message');

    const msgs = await history(token, conversationId, (m) => m.filter((x) => x.role === 'assistant').length === 2);
    assert.deepEqual(msgs.map((m) => m.role), ['user', 'assistant', 'assistant']);
    const [, partial, rest] = msgs;
    assert.equal(partial.metadata.stopReason, 'interrupted');
    assert.equal(continued.start.data.continues, partial.id, 'agent:start names the reply it continues');
    assert.equal(rest.content, continued.text, 'the continuation is stored as it was streamed');
    assert.equal(partial.content.trimEnd() + rest.content, whole, 'the partial and its continuation are the whole answer');

    const calls = up.requestsFor(content);
    assert.equal(calls.length, 2, 'one call, then one continuation');
    assert.equal(calls[1].prefill, partial.content.trimEnd(), 'the partial goes back as the assistant prefill, trimmed');
    assert.notEqual(calls[1].body.thinking?.type, 'enabled', 'a prefill runs without thinking');

    const next = `and after that ${uniq()}`;
    const t = await back.turn(next, { provider: 'anthropic', modelId: 'claude-sonnet-4-5' });
    assert.equal(t.end.data.stopReason, 'stop', JSON.stringify(t.end.data));
    const [req] = up.requestsFor(next);
    const roles = req.body.messages.map((m) => m.role);
    assert.equal(roles.at(-1), 'user');
    assert.equal(req.body.messages.filter((m) => m.role === 'assistant').map((m) => textOf(m.content)).join(''), partial.content + rest.content);
    await back.close();
  });
});

describe('a restart during the closing copy', () => {
  test('a reply acknowledged by agent:end survives a kill right after it, and is stored once', async () => {
    const { token } = await user();
    const conversationId = randomUUID();
    const client = await open(token, conversationId);
    const content = `closing copy ${uniq()} [[slow deltas=5 delay=20]]`;
    // The copy to D1 follows agent:end: the kill lands before, during or after it.
    const t = await client.turn(content);
    assert.equal(t.end.data.stopReason, 'stop');
    await killAndRestart();
    const msgs = await history(token, conversationId, (m) => m.length >= 2 && m.every((x) => !x.held));
    assert.deepEqual(msgs.map((m) => m.role), ['user', 'assistant'], 'each message once, and in D1');
    assert.equal(msgs[1].content, t.text);
    assert.equal(msgs[1].metadata.stopReason, 'stop');
    assert.equal(up.requestsFor(content).length, 1);
    const back = await open(token, conversationId);
    const next = await back.turn(`after the copy ${uniq()}`);
    assert.equal(next.end.data.stopReason, 'stop');
    await back.close();
  });
});

describe('the history of a conversation D1 does not hold yet', () => {
  test('is its owner\'s only: another user gets the same 404 as for an unknown id', async () => {
    const alice = await user();
    const bob = await user();
    const conversationId = randomUUID();
    const client = await open(alice.token, conversationId);
    client.send('message', { conversationId, content: `not in D1 yet ${uniq()} [[slow deltas=40 delay=${DELTA_MS}]]` });
    await client.next('message:ack');
    const path = `/api/conversations/${conversationId}/messages`;
    const [theirs, unknown, own] = await Promise.all([
      gw.http('GET', path, { token: bob.token }),
      gw.http('GET', `/api/conversations/${randomUUID()}/messages`, { token: bob.token }),
      gw.http('GET', path, { token: alice.token }),
    ]);
    assert.equal(own.status, 200, own.text);
    assert.ok(own.json.messages.some((m) => m.role === 'user' && m.held === true), `read from the conversation, not D1: ${own.text}`);
    assert.equal(theirs.status, 404, theirs.text);
    assert.equal(unknown.status, 404);
    assert.deepEqual(theirs.json, unknown.json, 'nothing tells the two apart');
    assert.ok(!theirs.text.includes('not in D1 yet'));
    await client.until('agent:end', { timeout: 20_000 });
    await client.close();
  });
});
