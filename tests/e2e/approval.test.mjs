// Tools that wait for a person's approval: the question, the answers (approved, declined, timed out, aborted), a wait that outlives its sockets and a restart of wrangler dev, and answers from where they may not come.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { startFakeUpstream } from '../support/fake-upstream.mjs';
import { startToolServer } from '../support/tool-server.mjs';
import { eventually, startGateway, summarizeTurn, uniq } from '../support/harness.mjs';

let up;
let tools;

before(async () => {
  up = await startFakeUpstream();
  tools = await startToolServer();
});

after(async () => {
  await up?.close();
  await tools?.close();
});

/** An agent whose `echo` waits for approval and whose `add` does not. */
async function createAgent(gw, provider = 'openai') {
  const name = uniq('asking');
  const res = await gw.http('POST', '/admin/agents', {
    token: gw.adminToken,
    body: {
      name,
      provider,
      model: provider === 'openai' ? 'gpt-4o-mini' : 'claude-sonnet-4-5',
      tools: [
        { name: 'echo', description: 'Echoes its arguments.', parameters: { type: 'object', properties: { text: { type: 'string' } } }, url: `${tools.url}/tools/echo`, requiresApproval: true },
        { name: 'add', description: 'Adds a and b.', parameters: { type: 'object', properties: { a: { type: 'number' }, b: { type: 'number' } } }, url: `${tools.url}/tools/add` },
      ],
    },
  });
  assert.equal(res.status, 201, res.text);
  const listed = await gw.http('GET', '/admin/agents', { token: gw.adminToken });
  const shown = listed.json.agents.find((a) => a.agent.name === name).agent;
  assert.equal(shown.tools.find((t) => t.name === 'echo').requiresApproval, true, 'the flag is shown to the admin');
  return name;
}

async function user(gw) {
  const id = uniq('appr');
  return { id, token: await gw.mintToken(id) };
}

async function open(gw, token, conversationId, lastSeq) {
  const client = await gw.connect({ token, conversationId, lastSeq });
  assert.equal((await client.next(null)).event, 'commands:manifest');
  return client;
}

const echoCalls = (marker) => tools.calls.filter((c) => c.name === 'echo' && c.rawBody.includes(marker));

/** Sends a message whose model calls `echo` with `marker`, and waits for the question. */
async function ask(client, agentId, marker) {
  client.send('message', { conversationId: client.conversationId, agentId, content: `please ${marker} [[tool name=echo args={"text":"${marker}"}]]` });
  const before = await client.until('agent:tool:approval', { timeout: 20_000 });
  return { question: before.at(-1), before };
}

async function stored(gw, token, conversationId) {
  return eventually(
    async () => {
      const res = await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token });
      return res.status === 200 && res.json.messages.some((m) => m.role === 'assistant') ? res.json.messages : null;
    },
    { timeout: 20_000, interval: 250, what: 'the reply in the history' },
  );
}

describe('tool approval', () => {
  let gw;
  let agent;
  before(async () => {
    gw = await startGateway({ upstream: up, vars: { TOOL_APPROVAL_TIMEOUT_S: '300' } });
    agent = await createAgent(gw);
  });
  after(async () => {
    await gw?.stop();
  });

  test('approved: the question names the call and its arguments, nothing runs before the answer, then the tool runs once and the turn ends', async () => {
    const { token } = await user(gw);
    const conversationId = randomUUID();
    const client = await open(gw, token, conversationId);
    const marker = uniq('ok');
    const asked = Date.now();
    const { question, before } = await ask(client, agent, marker);
    assert.deepEqual(before.map((f) => f.event), ['session:info', 'message:ack', 'agent:start', 'agent:tool:start', 'agent:tool:approval']);
    const start = before[3];
    assert.deepEqual(question.data, {
      conversationId,
      toolCallId: start.data.toolCallId,
      toolName: 'echo',
      args: { text: marker },
      expiresAt: question.data.expiresAt,
    });
    assert.ok(question.data.expiresAt >= asked + 299_000 && question.data.expiresAt <= Date.now() + 301_000, `expiresAt ${question.data.expiresAt}`);
    assert.equal(typeof question.seq, 'number', 'the question is part of the stream');
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.equal(echoCalls(marker).length, 0, 'nothing runs before the answer');

    client.send('tool:approve', { conversationId, toolCallId: question.data.toolCallId, approved: true });
    const t = summarizeTurn(await client.until('agent:end', { timeout: 20_000 }));
    assert.equal(t.end.data.stopReason, 'stop', client.log.dump());
    assert.deepEqual(t.toolEnds.map((f) => [f.data.toolCallId, f.data.isError]), [[question.data.toolCallId, false]]);
    assert.match(t.text, new RegExp(`Tool echo returned .*${marker}`));
    assert.equal(echoCalls(marker).length, 1, 'the tool ran once');
    const msgs = await stored(gw, token, conversationId);
    assert.deepEqual(msgs.map((m) => m.role), ['user', 'assistant']);
    assert.deepEqual(msgs[1].metadata.toolCalls.map((c) => [c.toolName, c.isError]), [['echo', false]]);
    // The next turn runs as usual.
    const next = await client.turn(`and then ${uniq()}`);
    assert.equal(next.end.data.stopReason, 'stop');
    await client.close();
  });

  test('declined with a reason: the model is told the user declined and why, the tool never runs, the turn goes on', async () => {
    const { token } = await user(gw);
    const conversationId = randomUUID();
    const client = await open(gw, token, conversationId);
    const marker = uniq('no');
    const { question } = await ask(client, agent, marker);
    client.send('tool:approve', { conversationId, toolCallId: question.data.toolCallId, approved: false, reason: 'not on a Friday' });
    const t = summarizeTurn(await client.until('agent:end', { timeout: 20_000 }));
    assert.equal(t.end.data.stopReason, 'stop');
    assert.deepEqual(t.toolEnds.map((f) => f.data.isError), [true]);
    assert.equal(echoCalls(marker).length, 0);
    const [, second] = up.requestsFor(marker);
    const result = second.body.messages.find((m) => m.role === 'tool');
    assert.equal(result.content, 'declined: the user did not approve running the tool echo; their reason: not on a Friday');
    await client.close();
  });

  test('while a call waits: a new message is refused and kept nowhere, a wrong id is refused, abort ends the wait and the turn', async () => {
    const { token } = await user(gw);
    const conversationId = randomUUID();
    const client = await open(gw, token, conversationId);
    const marker = uniq('wait');
    const { question } = await ask(client, agent, marker);
    client.send('message', { conversationId, content: 'are you there?' });
    const refused = await client.next('error');
    assert.equal(refused.data.code, 'approval_pending', JSON.stringify(refused.data));
    assert.match(refused.data.detail ?? refused.data.message, /waits for your approval/);
    client.send('tool:approve', { conversationId, toolCallId: 'call_nope', approved: true });
    const wrong = await client.next('error');
    assert.equal(wrong.data.code, 'no_pending_approval');
    client.send('tool:approve', { conversationId, toolCallId: question.data.toolCallId, approved: 'yes' });
    assert.equal((await client.next('error')).data.code, 'invalid_payload');

    client.send('abort', { conversationId });
    const t = summarizeTurn(await client.until('agent:end', { timeout: 20_000 }));
    assert.equal(t.end.data.stopReason, 'aborted');
    assert.deepEqual(t.toolEnds.map((f) => [f.data.toolCallId, f.data.isError]), [[question.data.toolCallId, true]]);
    assert.equal(echoCalls(marker).length, 0);
    const msgs = await stored(gw, token, conversationId);
    assert.deepEqual(msgs.map((m) => m.role), ['user', 'assistant'], 'the refused message was not stored');
    // The answer after the end is refused; the conversation takes messages again.
    client.send('tool:approve', { conversationId, toolCallId: question.data.toolCallId, approved: true });
    assert.equal((await client.next('error')).data.code, 'no_pending_approval');
    const next = await client.turn(`after abort ${uniq()}`);
    assert.equal(next.end.data.stopReason, 'stop');
    await client.close();
  });

  test('answered after a reconnect: a new socket is asked again (once, also when it resumes), and its answer ends the turn', async () => {
    const { token } = await user(gw);
    const conversationId = randomUUID();
    const first = await open(gw, token, conversationId);
    const marker = uniq('later');
    const { question } = await ask(first, agent, marker);
    const lastSeq = question.seq - 1;
    await first.close();

    const fresh = await open(gw, token, conversationId);
    const again = await fresh.next('agent:tool:approval');
    assert.equal(again.data.toolCallId, question.data.toolCallId);
    assert.equal(again.seq, undefined, 'asked outside the stream');
    const resuming = await open(gw, token, conversationId, lastSeq);
    const replayed = await resuming.next('agent:tool:approval');
    assert.equal(replayed.seq, question.seq, 'the replay carries the question');
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(resuming.events.filter((f) => f.event === 'agent:tool:approval').length, 1, 'asked once');

    fresh.send('tool:approve', { conversationId, toolCallId: question.data.toolCallId, approved: true });
    const [a, b] = await Promise.all([fresh.until('agent:end', { timeout: 20_000 }), resuming.until('agent:end', { timeout: 20_000 })]);
    assert.equal(summarizeTurn(a).end.data.stopReason, 'stop');
    assert.equal(summarizeTurn(b).toolEnds[0].data.isError, false);
    assert.equal(echoCalls(marker).length, 1);
    await fresh.close();
    await resuming.close();
  });

  test('the agent deleted while its call waits: an approval runs nothing, the model is told the tool is gone', async () => {
    const doomed = await createAgent(gw);
    const { token } = await user(gw);
    const conversationId = randomUUID();
    const client = await open(gw, token, conversationId);
    const marker = uniq('gone');
    const { question } = await ask(client, doomed, marker);
    const listed = (await gw.http('GET', '/admin/agents', { token: gw.adminToken })).json.agents.find((a) => a.agent.name === doomed);
    assert.equal((await gw.http('DELETE', `/admin/agents/${listed.id}`, { token: gw.adminToken })).status, 200);
    client.send('tool:approve', { conversationId, toolCallId: question.data.toolCallId, approved: true });
    const t = summarizeTurn(await client.until('agent:end', { timeout: 20_000 }));
    assert.equal(t.end.data.stopReason, 'stop', client.log.dump());
    assert.equal(t.toolEnds[0].data.isError, true);
    assert.equal(echoCalls(marker).length, 0);
    const [, second] = up.requestsFor(marker);
    assert.equal(second.body.messages.find((m) => m.role === 'tool').content, 'not run: the tool echo is no longer configured for this agent');
    await client.close();
  });

  test('two sockets of the owner answer at once: one answer counts, the other is refused, the tool runs once', async () => {
    const { token } = await user(gw);
    const conversationId = randomUUID();
    const a = await open(gw, token, conversationId);
    const b = await open(gw, token, conversationId);
    const marker = uniq('race');
    const { question } = await ask(a, agent, marker);
    await b.next('agent:tool:approval');
    const answer = { conversationId, toolCallId: question.data.toolCallId };
    a.send('tool:approve', { ...answer, approved: true });
    b.send('tool:approve', { ...answer, approved: false });
    await Promise.all([a.until('agent:end', { timeout: 20_000 }), b.until('agent:end', { timeout: 20_000 })]);
    const refusals = [...a.events, ...b.events].filter((f) => f.event === 'error' && f.data.code === 'no_pending_approval');
    assert.equal(refusals.length, 1, 'exactly one answer refused');
    const ends = a.events.filter((f) => f.event === 'agent:tool:end');
    assert.equal(ends.length, 1);
    assert.equal(echoCalls(marker).length, ends[0].data.isError ? 0 : 1, 'the tool ran only if the counted answer approved it');
    await a.close();
    await b.close();
  });

  test("over socket.io (one connection, the seed clients' way): the question reaches the client, the answer is acknowledged; another user cannot answer", async () => {
    const alice = await user(gw);
    const bob = await user(gw);
    const conversationId = randomUUID();
    const client = await gw.connectSio({ token: alice.token });
    await client.next('commands:manifest');
    const marker = uniq('sio');
    client.send('message', { conversationId, agentId: agent, content: `please ${marker} [[tool name=echo args={"text":"${marker}"}]]` });
    const question = await client.next('agent:tool:approval', { timeout: 20_000 });
    assert.equal(question.data.conversationId, conversationId);

    const intruder = await gw.connectSio({ token: bob.token });
    await intruder.next('commands:manifest');
    const refused = await intruder.emitWithAck('tool:approve', { conversationId, toolCallId: question.data.toolCallId, approved: true });
    assert.match(refused.error, /another user/, JSON.stringify(refused));
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.equal(echoCalls(marker).length, 0, "another user's answer runs nothing");
    assert.ok(!client.events.some((f) => f.event === 'agent:tool:end'), 'the wait goes on');

    const ack = await client.emitWithAck('tool:approve', { conversationId, toolCallId: question.data.toolCallId, approved: true });
    assert.deepEqual(ack, { ok: true });
    const t = summarizeTurn(await client.until('agent:end', { timeout: 20_000 }));
    assert.equal(t.end.data.stopReason, 'stop');
    assert.equal(echoCalls(marker).length, 1);
    await intruder.close();
    await client.close();
  });

  test('a restart of wrangler dev while a call waits: the wait is kept, a socket that comes back is asked again, the answer runs the tool once', async () => {
    const { token } = await user(gw);
    const conversationId = randomUUID();
    const client = await open(gw, token, conversationId);
    const marker = uniq('restart');
    const { question } = await ask(client, agent, marker);
    await gw.restart({ hard: true });
    await client.closed;

    const back = await open(gw, token, conversationId, question.seq);
    const again = await back.next('agent:tool:approval', { timeout: 20_000 });
    assert.equal(again.data.toolCallId, question.data.toolCallId);
    assert.equal(again.data.expiresAt, question.data.expiresAt, 'the same deadline');
    back.send('tool:approve', { conversationId, toolCallId: question.data.toolCallId, approved: true });
    const t = summarizeTurn(await back.until('agent:end', { timeout: 20_000 }));
    assert.equal(t.end.data.stopReason, 'stop', back.log.dump());
    assert.equal(echoCalls(marker).length, 1, 'the tool ran once');
    const msgs = await stored(gw, token, conversationId);
    assert.deepEqual(msgs.map((m) => m.role), ['user', 'assistant']);
    assert.match(msgs[1].content, new RegExp(marker));
    await back.close();
  });
});

describe('tool approval that nobody answers', () => {
  let gw;
  let agent;
  before(async () => {
    gw = await startGateway({ upstream: up, vars: { TOOL_APPROVAL_TIMEOUT_S: '3' } });
    agent = await createAgent(gw, 'anthropic');
  });
  after(async () => {
    await gw?.stop();
  });

  test('times out as declined, with nobody connected: the alarm goes on with the turn and the reply is stored', async () => {
    const { token } = await user(gw);
    const conversationId = randomUUID();
    const client = await open(gw, token, conversationId);
    const marker = uniq('late');
    const { question } = await ask(client, agent, marker);
    await client.close();
    const msgs = await stored(gw, token, conversationId);
    assert.deepEqual(msgs.map((m) => m.role), ['user', 'assistant']);
    assert.deepEqual(msgs[1].metadata.toolCalls.map((c) => [c.toolCallId, c.isError]), [[question.data.toolCallId, true]]);
    assert.equal(echoCalls(marker).length, 0);
    const [, second] = up.requestsFor(marker);
    const blocks = second.body.messages.flatMap((m) => (Array.isArray(m.content) ? m.content : []));
    const result = blocks.find((b) => b.type === 'tool_result');
    const text = typeof result.content === 'string' ? result.content : result.content.map((c) => c.text).join('');
    assert.equal(text, 'declined: nobody approved running the tool echo within 3 s');
    assert.equal(result.is_error, true);

    const back = await open(gw, token, conversationId, question.seq);
    const rest = summarizeTurn(await back.until('agent:end', { timeout: 10_000 }));
    assert.equal(rest.end.data.stopReason, 'stop');
    assert.ok(!back.events.some((f) => f.event === 'agent:tool:approval'), 'not asked again once over');
    await back.close();
  });
});
