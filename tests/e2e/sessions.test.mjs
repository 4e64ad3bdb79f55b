// Agent sessions end to end under wrangler dev: thinking levels, abort, slash commands, model override, routing rules, named agents, /status and cost.
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { splitInto, startFakeUpstream, textOf } from '../support/fake-upstream.mjs';
import { startGateway, summarizeTurn, uniq } from '../support/harness.mjs';

let up;
let gw;

before(async () => {
  up = await startFakeUpstream();
  gw = await startGateway({ upstream: up });
});

after(async () => {
  await gw?.stop();
  await up?.close();
});

// Every socket a test opens is closed after it, whatever happened.
const opened = new Set();
afterEach(async () => {
  await Promise.all([...opened].map((c) => c.close()));
  opened.clear();
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const admin = (method, path, body) => gw.http(method, path, { token: gw.adminToken, body });
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// The levels the reference gateway's agent offers a reasoning model, and those of a model that takes xhigh.
const ALL_LEVELS = ['off', 'minimal', 'low', 'medium', 'high'];
const XHIGH_LEVELS = [...ALL_LEVELS, 'xhigh'];
// The reference gateway's error texts.
const NO_SESSION = 'No active session for this conversation.';
const NO_SESSION_TO_ABORT = 'No active session to abort.';

/** Opens a socket, checks the manifest comes first and keeps it on the client. */
async function open(token, conversationId) {
  const client = await gw.connect({ token, conversationId });
  opened.add(client);
  const first = await client.next(null);
  assert.equal(first.event, 'commands:manifest', `the first frame is the manifest:\n${client.log.dump()}`);
  client.manifest = first.data.manifest;
  return client;
}

/** A new user with a new conversation and `sockets` sockets on it. */
async function fresh(sockets = 1) {
  const user = uniq('user');
  const token = await gw.mintToken(user);
  const conversationId = randomUUID();
  const clients = [];
  for (let k = 0; k < sockets; k++) clients.push(await open(token, conversationId));
  return { user, token, conversationId, clients, client: clients[0] };
}

/**
 * Like fresh(), on a conversation that has had a turn: its agent session exists, as the reference
 * gateway's does after a first message (set:thinking needs one). Every socket's frames so far are consumed.
 */
async function started(sockets = 1) {
  const f = await fresh(sockets);
  await okTurn(f.client, `start ${uniq()}`);
  for (const c of f.clients.slice(1)) await c.until('agent:end');
  for (const c of f.clients) c.log.skipAll();
  return f;
}

/** Runs a slash command and returns the command:result payload. */
async function command(client, name, args) {
  client.send('command:execute', { conversationId: client.conversationId, command: name, ...(args !== undefined ? { args } : {}) });
  return (await client.next('command:result')).data;
}

/** Sends set:thinking. */
function setThinking(client, level) {
  client.send('set:thinking', { conversationId: client.conversationId, level });
}

/** The single upstream request whose last user text is `content`. */
function onlyRequestFor(content) {
  const found = up.requests.filter((r) => r.lastUserText === content);
  assert.equal(found.length, 1, `exactly one upstream request for ${JSON.stringify(content)}, saw ${found.length}`);
  return found[0];
}

/** The stored messages of a conversation. */
async function storedMessages(token, conversationId) {
  const res = await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token });
  assert.equal(res.status, 200, res.text);
  return Array.isArray(res.json) ? res.json : res.json.messages;
}

/** A turn that must succeed. */
async function okTurn(client, content, extra) {
  const t = await client.turn(content, extra);
  assert.deepEqual(t.errors, [], `no error frames:\n${client.log.dump()}`);
  assert.equal(t.end?.data.stopReason, 'stop', client.log.dump());
  return t;
}

/** USD figures are floats: equal to 1e-12 relative. */
function assertUsd(actual, expected, label) {
  assert.equal(typeof actual, 'number', `${label} is a number (got ${JSON.stringify(actual)})`);
  assert.ok(Math.abs(actual - expected) <= Math.max(1e-15, Math.abs(expected) * 1e-9), `${label}: expected ${expected}, got ${actual}`);
}

function assertCost(cost, expected, label) {
  assert.ok(cost && typeof cost === 'object', `${label}: cost is an object, got ${JSON.stringify(cost)}`);
  for (const k of ['input', 'output', 'cacheRead', 'cacheWrite', 'total']) assertUsd(cost[k], expected[k], `${label} cost.${k}`);
}

/** What the gateway reports as context percent: prompt tokens over the window, two decimals. */
const percentOf = (promptTokens, window) => Math.round((promptTokens / window) * 10_000) / 100;

describe('thinking level', () => {
  test('set:thinking before the first message: no_active_session with the seed text; after it the level is taken', async () => {
    const { client, conversationId } = await fresh();
    for (const level of ['low', 'turbo']) {
      // The session is checked first, as in the reference gateway: an unknown level gets the same answer.
      setThinking(client, level);
      const e = await client.next('error');
      assert.deepEqual(e.data, { conversationId, code: 'no_active_session', error: NO_SESSION }, level);
    }
    assert.equal((await command(client, '/model', 'openai/o4-mini')).success, true, 'the /model command needs no session');
    setThinking(client, 'high');
    assert.equal((await client.next('error')).data.error, NO_SESSION);
    assert.equal((await command(client, '/status')).data.thinkingLevel, 'off');
    await okTurn(client, `first ${uniq()}`);
    setThinking(client, 'high');
    const info = await client.next('session:info', { where: (f) => f.data.thinkingLevel === 'high' });
    assert.deepEqual(info.data.availableThinkingLevels, ALL_LEVELS);
    assert.ok(!client.events.some((f) => f.event === 'error' && f.data.code !== 'no_active_session'), client.log.dump());
  });

  test('set:thinking with a valid level: session:info with it reaches both sockets', async () => {
    const { clients: [a, b] } = await started(2);
    const r = await command(a, '/model', ['openai/o4-mini']);
    assert.equal(r.success, true, JSON.stringify(r));
    const switched = await b.next('session:info');
    assert.equal(switched.data.modelId, 'o4-mini');
    assert.deepEqual(switched.data.availableThinkingLevels, ALL_LEVELS);

    setThinking(a, 'high');
    const onA = await a.next('session:info', { where: (f) => f.data.thinkingLevel === 'high' });
    const onB = await b.next('session:info', { where: (f) => f.data.thinkingLevel === 'high' });
    assert.deepEqual(onB.data, onA.data);
    assert.equal(onB.seq, onA.seq, 'one sequenced event seen by both sockets');
    assert.ok(Number.isInteger(onA.seq));
    assert.equal(onA.data.conversationId, a.conversationId);
    assert.equal(onA.data.provider, 'openai');
    assert.equal(onA.data.modelId, 'o4-mini');
    assert.deepEqual(onA.data.availableThinkingLevels, ALL_LEVELS);
    assert.ok(!a.events.some((f) => f.event === 'error'), a.log.dump());

    // A model that cannot reason takes the level back to off, for every socket.
    assert.equal((await command(b, '/model', 'openai/gpt-4o-mini')).success, true);
    for (const c of [a, b]) {
      const info = await c.next('session:info', { where: (f) => f.data.modelId === 'gpt-4o-mini' });
      assert.equal(info.data.thinkingLevel, 'off');
      assert.deepEqual(info.data.availableThinkingLevels, ['off']);
    }
    const content = `no reasoning ${uniq()}`;
    await okTurn(a, content);
    assert.ok(!('reasoning_effort' in onlyRequestFor(content).body));
  });

  test('set:thinking with a level the model lacks: invalid_thinking_level with the seed text, nothing changes', async () => {
    const { client } = await started();
    // gpt-4o-mini (the default) cannot reason: only "off".
    setThinking(client, 'high');
    let e = await client.next('error');
    assert.equal(e.data.code, 'invalid_thinking_level');
    assert.equal(e.data.error, 'Invalid thinking level "high". Available: off');
    assert.equal(e.data.conversationId, client.conversationId);

    setThinking(client, 'turbo');
    e = await client.next('error');
    assert.equal(e.data.code, 'invalid_thinking_level');
    assert.equal(e.data.error, 'Invalid thinking level "turbo". Available: off');

    // xhigh only where the model takes it, as the reference gateway's agent offers it.
    assert.equal((await command(client, '/model openai/o4-mini')).success, true);
    setThinking(client, 'xhigh');
    e = await client.next('error');
    assert.equal(e.data.code, 'invalid_thinking_level');
    assert.equal(e.data.error, 'Invalid thinking level "xhigh". Available: off, minimal, low, medium, high');

    const status = await command(client, '/status');
    assert.equal(status.data.thinkingLevel, 'off', JSON.stringify(status));
    assert.ok(!client.events.some((f) => f.event === 'session:info' && f.data.thinkingLevel !== 'off'), client.log.dump());
  });

  test('OpenAI: the level becomes reasoning_effort of the upstream request (minimal is low on o-series, xhigh where taken); off leaves it out', async () => {
    const { client } = await started();
    assert.equal((await command(client, '/model', 'openai/o4-mini')).success, true);
    for (const [model, level, effort] of [
      ['o4-mini', 'medium', 'medium'],
      ['o4-mini', 'high', 'high'],
      ['o4-mini', 'low', 'low'],
      ['o4-mini', 'minimal', 'low'],
      ['gpt-5', 'minimal', 'minimal'],
      ['gpt-5.2', 'xhigh', 'xhigh'],
    ]) {
      if (model !== 'o4-mini') {
        assert.equal((await command(client, '/model', `openai/${model}`)).success, true);
        const info = await client.next('session:info', { where: (f) => f.data.modelId === model });
        assert.deepEqual(info.data.availableThinkingLevels, model === 'gpt-5.2' ? XHIGH_LEVELS : ALL_LEVELS);
      }
      setThinking(client, level);
      await client.next('session:info', { where: (f) => f.data.thinkingLevel === level && f.data.modelId === model });
      const content = `reason ${level} ${uniq()}`;
      const t = await okTurn(client, content);
      const req = onlyRequestFor(content);
      assert.equal(req.provider, 'openai');
      assert.equal(req.body.model, model);
      assert.equal(req.body.reasoning_effort, effort, JSON.stringify(req.body));
      assert.equal(t.info.data.thinkingLevel, level);
      assert.equal(t.end.data.usage.thinkingLevel, level);
    }
    setThinking(client, 'off');
    await client.next('session:info', { where: (f) => f.data.thinkingLevel === 'off' });
    const content = `reason off ${uniq()}`;
    const t = await okTurn(client, content);
    assert.ok(!('reasoning_effort' in onlyRequestFor(content).body), JSON.stringify(onlyRequestFor(content).body));
    assert.equal(t.end.data.usage.thinkingLevel, 'off');
  });

  test('Anthropic: the level becomes thinking.budget_tokens below max_tokens (xhigh on Opus 4.6); off sends no thinking', async () => {
    const { client } = await started();
    assert.equal((await command(client, '/model', 'anthropic/claude-sonnet-4-5')).success, true);
    const info = await client.next('session:info', { where: (f) => f.data.modelId === 'claude-sonnet-4-5' });
    assert.deepEqual(info.data.availableThinkingLevels, ALL_LEVELS);
    for (const [model, level, budget] of [
      ['claude-sonnet-4-5', 'minimal', 1024],
      ['claude-sonnet-4-5', 'low', 2048],
      ['claude-sonnet-4-5', 'high', 16384],
      ['claude-opus-4-6', 'xhigh', 32768],
    ]) {
      if (model === 'claude-opus-4-6') {
        assert.equal((await command(client, '/model', `anthropic/${model}`)).success, true);
        const opus = await client.next('session:info', { where: (f) => f.data.modelId === model });
        assert.deepEqual(opus.data.availableThinkingLevels, XHIGH_LEVELS);
      }
      setThinking(client, level);
      await client.next('session:info', { where: (f) => f.data.thinkingLevel === level && f.data.modelId === model });
      const content = `budget ${level} ${uniq()}`;
      const t = await okTurn(client, content);
      const req = onlyRequestFor(content);
      assert.equal(req.provider, 'anthropic');
      assert.equal(req.body.model, model);
      assert.deepEqual(req.body.thinking, { type: 'enabled', budget_tokens: budget });
      assert.ok(req.body.max_tokens > budget, `max_tokens ${req.body.max_tokens} must exceed the budget ${budget}`);
      assert.equal(t.end.data.usage.thinkingLevel, level);
    }
    setThinking(client, 'off');
    await client.next('session:info', { where: (f) => f.data.thinkingLevel === 'off' });
    const content = `budget off ${uniq()}`;
    await okTurn(client, content);
    assert.ok(!('thinking' in onlyRequestFor(content).body), JSON.stringify(onlyRequestFor(content).body));
  });
});

describe('abort', () => {
  test('abort mid-stream: the upstream sees its connection closed, the partial reply is stored as aborted, the next message works', async () => {
    const { client, token, conversationId } = await fresh();
    const marker = uniq('abort');
    const content = `stop me ${marker} [[slow deltas=40 delay=100]]`;
    const fullReply = splitInto(`You said: stop me ${marker}`, 40).join('');
    const from = client.events.length;
    client.send('message', { conversationId, content });
    await client.next('agent:text', { timeout: 15_000 });
    await client.next('agent:text');
    const abortedAt = Date.now();
    client.send('abort', { conversationId });
    await client.until('agent:end', { timeout: 10_000 });
    const t = summarizeTurn(client.events.slice(from));
    assert.ok(Date.now() - abortedAt < 3000, 'the turn ends promptly after abort');
    assert.equal(t.end.data.stopReason, 'aborted', client.log.dump());
    assert.deepEqual(t.errors, [], 'an abort is not an error');
    assert.ok(t.text.length > 0 && t.text.length < fullReply.length, `a partial reply: ${JSON.stringify(t.text)}`);
    assert.ok(fullReply.startsWith(t.text), `the partial reply is a prefix of the full one: ${JSON.stringify(t.text)}`);

    const closed = await up.waitForClientClose((r) => r.lastUserText === content, 5000);
    assert.equal(closed.closedByClient, true);
    assert.equal(closed.sent.complete, false, 'the upstream never finished its stream');

    const messages = await storedMessages(token, conversationId);
    assert.deepEqual(messages.map((m) => m.role), ['user', 'assistant']);
    const [, assistant] = messages;
    assert.equal(assistant.content, t.text, 'the stored partial equals what the clients saw');
    assert.equal(assistant.metadata.aborted, true, JSON.stringify(assistant.metadata));
    assert.equal(assistant.metadata.stopReason, 'aborted');

    const next = `after the abort ${uniq()}`;
    const t2 = await okTurn(client, next);
    assert.ok(t2.text.length > 0);
    const req = onlyRequestFor(next);
    assert.equal(textOf(req.body.messages.at(-1).content), next);
    assert.ok(req.body.messages.some((m) => m.role === 'user' && textOf(m.content) === content), 'the aborted message stays in the history');
    assert.equal((await storedMessages(token, conversationId)).length, 4);
  });

  test('abort with no session: no_active_turn "No active session to abort."; on an idle session: nothing at all', async () => {
    const { client, conversationId } = await fresh();
    client.send('abort', { conversationId });
    const e = await client.next('error');
    assert.deepEqual(e.data, { conversationId, code: 'no_active_turn', error: NO_SESSION_TO_ABORT });

    // After a turn the session exists; idle, its abort sends no error and no event, as in the reference gateway.
    await okTurn(client, `a turn ${uniq()}`);
    const from = client.events.length;
    client.send('abort', { conversationId });
    client.send('abort', {});
    await sleep(500);
    assert.deepEqual(client.events.slice(from), [], client.log.dump());
    await okTurn(client, `still fine ${uniq()}`);
  });
});

describe('slash commands', () => {
  test('the manifest and /help list every command; an alias runs its command', async () => {
    const { client } = await fresh();
    const names = ['model', 'thinking', 'agent', 'status', 'new', 'help'];
    assert.deepEqual(client.manifest.commands.map((c) => c.name).sort(), [...names].sort());
    const help = await command(client, '/help');
    assert.equal(help.success, true);
    assert.equal(help.command, 'help');
    assert.equal(help.conversationId, client.conversationId);
    for (const n of names) assert.ok(help.message.includes(`/${n}`), `/help mentions /${n}: ${help.message}`);
    const alias = await command(client, 'h');
    assert.equal(alias.success, true);
    assert.equal(alias.command, 'help');
    assert.equal(alias.message, help.message);
  });

  test('/model, /thinking, /agent, /status and /new on a fresh conversation', async () => {
    const { client, token } = await fresh();
    const model = await command(client, '/model');
    assert.equal(model.success, true, JSON.stringify(model));
    assert.equal(model.command, 'model');
    assert.ok(model.message.includes('openai/gpt-4o-mini'), model.message);
    assert.equal(model.data.provider, 'openai');
    assert.equal(model.data.modelId, 'gpt-4o-mini');
    assert.equal(model.data.override, null);

    const thinking = await command(client, '/thinking', 'off');
    assert.equal(thinking.success, true, JSON.stringify(thinking));
    assert.equal(thinking.command, 'thinking');
    assert.equal(thinking.data.thinkingLevel, 'off');
    const info = await client.next('session:info');
    assert.equal(info.data.thinkingLevel, 'off');

    const agent = await command(client, '/agent');
    assert.equal(agent.success, true);
    assert.equal(agent.command, 'agent');
    assert.equal(agent.data.agentName, null);

    const status = await command(client, '/status');
    assert.equal(status.success, true);
    assert.equal(status.command, 'status');
    assert.equal(status.data.turns, 0);
    assert.equal(status.data.messages, 0);

    const made = await command(client, '/new');
    assert.equal(made.success, true);
    assert.equal(made.command, 'new');
    assert.match(made.data.conversationId, UUID);
    assert.notEqual(made.data.conversationId, client.conversationId);
    assert.ok(made.message.includes(made.data.conversationId), made.message);
    const other = await open(token, made.data.conversationId);
    const there = await command(other, '/status');
    assert.equal(there.data.turns, 0);
    const t = await okTurn(other, `in the new one ${uniq()}`);
    assert.equal(t.ack.data.conversationId, made.data.conversationId);
  });

  test('an unknown command: success false naming it and listing the commands', async () => {
    const { client } = await fresh();
    const r = await command(client, '/frobnicate');
    assert.equal(r.success, false);
    assert.equal(typeof r.command, 'string');
    assert.ok(r.message.includes('Unknown command "/frobnicate"'), r.message);
    for (const n of ['/model', '/status', '/help']) assert.ok(r.message.includes(n), `lists ${n}: ${r.message}`);
    await okTurn(client, `the socket still works ${uniq()}`);
  });

  test('bad arguments: success false with a message that says what would work', async () => {
    const { client } = await fresh();
    const cases = [
      ['/thinking', undefined, /Missing argument <level> for \/thinking.*off, minimal, low, medium, high/],
      ['/thinking', 'ultra', /Invalid thinking level "ultra"/],
      ['/thinking', 'high', /^Invalid thinking level "high"\. Available: off$/],
      ['/status', 'now', /Too many arguments for \/status/],
      ['/new', ['x'], /Too many arguments for \/new/],
      ['/model', 'a b', /Too many arguments for \/model.*\/model \[<id>\|clear\]/],
      ['/model', 5, /must be a string, an array of strings or null/],
      ['/agent', 'nobody-here', /Unknown agent "nobody-here"/],
    ];
    for (const [name, args, pattern] of cases) {
      const r = await command(client, name, args);
      assert.equal(r.success, false, `${name} ${JSON.stringify(args)}: ${JSON.stringify(r)}`);
      assert.match(r.message, pattern, `${name} ${JSON.stringify(args)}`);
    }
    const status = await command(client, '/status');
    assert.equal(status.data.thinkingLevel, 'off');
    assert.equal(status.data.modelOverride, null);
    assert.equal(status.data.agentName, null);
    await okTurn(client, `the socket still works ${uniq()}`);
  });

  test('a command refused for its arguments still names its canonical command', async () => {
    const { client } = await fresh();
    for (const [name, args, canonical] of [
      ['/thinking', undefined, 'thinking'],
      ['/think', 'ultra', 'thinking'],
      ['/S', 'extra', 'status'],
      ['/model', 'a b', 'model'],
    ]) {
      const r = await command(client, name, args);
      assert.equal(r.success, false);
      assert.equal(r.command, canonical, `command:result.command for ${name} ${JSON.stringify(args)}: ${JSON.stringify(r)}`);
    }
  });

  test('/thinking with an unknown level lists the levels of the session, as set:thinking does', async () => {
    const { client } = await started();
    setThinking(client, 'ultra');
    const e = await client.next('error');
    const r = await command(client, '/thinking', 'ultra');
    assert.equal(r.success, false);
    assert.equal(r.message, e.data.error, 'the same operation gives the same answer');
    assert.equal(r.message, 'Invalid thinking level "ultra". Available: off');
  });

  test('/status after two turns: messages, turns, tokens and cost are the sums of the turns, as agent:end.usage says', async () => {
    const { client } = await fresh();
    const t1 = await okTurn(client, `first ${uniq()} [[cache read=30]]`);
    const t2 = await okTurn(client, `second ${uniq()}`);
    const s = await command(client, '/status');
    assert.equal(s.success, true, JSON.stringify(s));
    assert.equal(s.command, 'status');
    const d = s.data;
    assert.equal(d.turns, 2);
    assert.equal(d.messages, 2, 'user messages sent');
    const sum = (k) => t1.end.data.usage.turn.tokens[k] + t2.end.data.usage.turn.tokens[k];
    assert.deepEqual(d.tokens, { input: sum('input'), output: sum('output'), cacheRead: sum('cacheRead'), cacheWrite: sum('cacheWrite'), total: sum('total') });
    assert.equal(d.tokens.cacheRead, 30);
    assertUsd(d.costUsd, t1.end.data.usage.turn.cost.total + t2.end.data.usage.turn.cost.total, 'costUsd');
    // agent:end.usage carries the running totals, as the reference gateway's session statistics do.
    assert.deepEqual(t1.end.data.usage.tokens, t1.end.data.usage.turn.tokens, 'after the first turn the total is that turn');
    assert.deepEqual(t2.end.data.usage.tokens, d.tokens, 'after the second turn the total is both turns');
    assertUsd(t1.end.data.usage.cost, t1.end.data.usage.turn.cost.total, 'usage.cost after the first turn');
    assertUsd(t2.end.data.usage.cost, d.costUsd, 'usage.cost after the second turn');
    assert.equal(t2.end.data.usage.unpricedTurns, 0);
    assert.ok(d.costUsd > 0);
    assert.equal(d.unpricedTurns, 0);
    assert.equal(d.modelSwitches, 0);
    assert.equal(d.provider, 'openai');
    assert.equal(d.modelId, 'gpt-4o-mini');
    assert.equal(d.thinkingLevel, 'off');
    assert.equal(d.routingDecision?.ruleName, 'default', JSON.stringify(d));
    assert.ok(s.message.includes('2 turns'), s.message);
    const alias = await command(client, 's');
    assert.equal(alias.command, 'status');
    assert.deepEqual(alias.data, d);
  });
});

describe('model override', () => {
  test('/model X reaches a second socket as session:info and the next turn goes to X; /model clear returns to routing', async () => {
    const { clients: [a, b] } = await fresh(2);
    const r = await command(a, '/model claude-haiku-4-5');
    assert.equal(r.success, true, JSON.stringify(r));
    assert.equal(r.command, 'model');
    assert.ok(r.message.includes('anthropic/claude-haiku-4-5'), r.message);
    const onB = await b.next('session:info');
    assert.equal(onB.data.provider, 'anthropic');
    assert.equal(onB.data.modelId, 'claude-haiku-4-5');
    assert.equal(onB.data.modelOverride, 'anthropic/claude-haiku-4-5');

    const content = `to haiku ${uniq()}`;
    const t = await okTurn(b, content);
    const seenByA = await a.until('agent:end');
    assert.equal(seenByA.at(-1).seq, t.end.seq, 'the other socket sees the turn');
    const req = onlyRequestFor(content);
    assert.equal(req.provider, 'anthropic');
    assert.equal(req.body.model, 'claude-haiku-4-5');
    assert.equal(t.info.data.modelOverride, 'anthropic/claude-haiku-4-5');
    assert.equal(t.end.data.usage.provider, 'anthropic');
    assert.equal(t.end.data.usage.modelId, 'claude-haiku-4-5');

    const cleared = await command(a, '/model', 'clear');
    assert.equal(cleared.success, true, JSON.stringify(cleared));
    assert.equal(cleared.command, 'model');
    for (const c of [a, b]) {
      const info = await c.next('session:info');
      assert.ok(!('modelOverride' in info.data) || info.data.modelOverride === null, JSON.stringify(info.data));
    }
    const back = `back to routing ${uniq()}`;
    const t2 = await okTurn(a, back);
    assert.equal(onlyRequestFor(back).provider, 'openai');
    assert.equal(onlyRequestFor(back).body.model, 'gpt-4o-mini');
    assert.equal(t2.info.data.modelId, 'gpt-4o-mini');
    assert.equal(t2.info.data.routingDecision?.ruleName, 'default');
    const show = await command(a, '/model');
    assert.equal(show.data.override, null);
    assert.equal((await command(a, '/status')).data.modelSwitches, 1);
  });

  test('PUT /admin/conversations/:id/model: session:info to the socket, an unknown model\'s turn costs null (the total stays a number), null clears', async () => {
    const { client, token, conversationId } = await fresh();
    const first = await okTurn(client, `priced ${uniq()}`);
    assert.ok(first.end.data.usage.turn.cost, 'gpt-4o-mini has a cost');

    assert.equal((await admin('PUT', `/admin/conversations/${randomUUID()}/model`, { model: 'openai/gpt-4o' })).status, 404);
    const res = await admin('PUT', `/admin/conversations/${conversationId}/model`, { model: 'openai/some-unknown-model' });
    assert.equal(res.status, 200, res.text);
    const info = await client.next('session:info');
    assert.equal(info.data.modelOverride, 'openai/some-unknown-model');
    assert.equal(info.data.modelId, 'some-unknown-model');

    const content = `unpriced ${uniq()}`;
    const t = await okTurn(client, content);
    assert.equal(onlyRequestFor(content).body.model, 'some-unknown-model');
    const { usage } = t.end.data;
    assert.equal(usage.modelId, 'some-unknown-model');
    assert.equal(usage.turn.cost, null, `an unknown model's turn has cost null, not a number: ${JSON.stringify(usage)}`);
    assert.ok(usage.turn.tokens.input > 0 && usage.turn.tokens.output > 0, 'tokens are still reported');
    // The running total stays a number: it counts the priced turn, and says one turn is unpriced.
    assertUsd(usage.cost, first.end.data.usage.cost, 'usage.cost after an unpriced turn');
    assert.equal(usage.unpricedTurns, 1);
    assert.equal(usage.tokens.total, first.end.data.usage.tokens.total + usage.turn.tokens.total);
    const stored = (await storedMessages(token, conversationId)).at(-1);
    assert.equal(stored.metadata.cost, null);

    const status = await command(client, '/status');
    assert.equal(status.data.unpricedTurns, 1);
    assertUsd(status.data.costUsd, first.end.data.usage.turn.cost.total, 'costUsd counts only the priced turn');

    const clear = await admin('PUT', `/admin/conversations/${conversationId}/model`, { model: null });
    assert.equal(clear.status, 200, clear.text);
    const cleared = await client.next('session:info');
    assert.ok(!cleared.data.modelOverride, JSON.stringify(cleared.data));
    const again = `priced again ${uniq()}`;
    const t2 = await okTurn(client, again);
    assert.equal(onlyRequestFor(again).body.model, 'gpt-4o-mini');
    assert.ok(t2.end.data.usage.turn.cost);
    assert.ok(t2.end.data.usage.cost > first.end.data.usage.cost, 'the total grows with a priced turn');
  });
});

describe('model choice', () => {
  test('/model override > the message provider/modelId > the agent model > a routing rule > DEFAULT_MODEL', async () => {
    const kw = uniq('order');
    const ruleName = uniq('order-rule');
    const rule = await admin('POST', '/admin/rules', { name: ruleName, priority: 1, conditions: { keywords: [kw] }, provider: 'openai', model: 'gpt-4.1', reason: 'order test' });
    assert.equal(rule.status, 201, rule.text);
    const agentName = uniq('order-agent');
    const agent = await admin('POST', '/admin/agents', { name: agentName, systemPrompt: 'Be brief.', provider: 'openai', model: 'gpt-4.1-mini', tools: [] });
    assert.equal(agent.status, 201, agent.text);
    try {
      const { client } = await fresh();
      const steps = [
        ['default', `no keyword ${uniq()}`, {}, 'gpt-4o-mini'],
        ['rule over default', `${kw} ${uniq()}`, {}, 'gpt-4.1'],
        ['agent over rule', `${kw} ${uniq()}`, { agentId: agentName }, 'gpt-4.1-mini'],
        ['message over agent', `${kw} ${uniq()}`, { provider: 'openai', modelId: 'gpt-4o' }, 'gpt-4o'],
      ];
      for (const [label, content, extra, model] of steps) {
        const t = await okTurn(client, content, extra);
        assert.equal(onlyRequestFor(content).body.model, model, label);
        assert.equal(t.info.data.modelId, model, label);
        assert.equal(t.end.data.usage.modelId, model, label);
      }
      assert.equal((await command(client, '/model openai/o4-mini')).success, true);
      const content = `${kw} ${uniq()}`;
      const t = await okTurn(client, content, { provider: 'openai', modelId: 'gpt-4o' });
      assert.equal(onlyRequestFor(content).body.model, 'o4-mini', 'override over message');
      assert.equal(t.info.data.agentName, agentName, 'the agent stays active under the override');
    } finally {
      await admin('DELETE', `/admin/rules/${rule.json?.rule?.id}`);
      await admin('DELETE', `/admin/agents/${agentName}`);
    }
  });
});

describe('routing rules', () => {
  test('a keyword rule routes a message, the lower priority first; session:info names the rule; deleted, it no longer routes', async () => {
    const { client } = await fresh();
    const kw = uniq('kw');
    const later = await admin('POST', '/admin/rules', {
      name: uniq('later'),
      priority: 20,
      conditions: { keywords: [kw] },
      provider: 'openai',
      model: 'gpt-4.1',
      reason: 'the later rule',
    });
    assert.equal(later.status, 201, later.text);
    const name = uniq('haiku-rule');
    const res = await admin('POST', '/admin/rules', {
      name,
      priority: 10,
      enabled: true,
      conditions: { keywords: [kw] },
      provider: 'anthropic',
      model: 'claude-haiku-4-5',
      reason: 'keyword goes to haiku',
    });
    assert.equal(res.status, 201, res.text);
    assert.equal(res.json.rule.name, name);
    const id = res.json.rule.id;
    assert.equal(typeof id, 'string');
    const listed = await admin('GET', '/admin/rules');
    assert.equal(listed.status, 200);
    assert.ok(listed.json.rules.some((r) => r.id === id && r.name === name), listed.text);

    try {
      const content = `please ${kw.toUpperCase()} route me`;
      const t = await okTurn(client, content);
      assert.deepEqual(t.info.data.routingDecision, { provider: 'anthropic', model: 'claude-haiku-4-5', ruleName: name, reason: 'keyword goes to haiku' });
      assert.equal(t.info.data.provider, 'anthropic');
      assert.equal(t.info.data.modelId, 'claude-haiku-4-5');
      const req = onlyRequestFor(content);
      assert.equal(req.provider, 'anthropic');
      assert.equal(req.body.model, 'claude-haiku-4-5');

      const plain = `no keyword ${uniq()}`;
      const t2 = await okTurn(client, plain);
      assert.equal(t2.info.data.routingDecision.ruleName, 'default');
      assert.equal(onlyRequestFor(plain).body.model, 'gpt-4o-mini');

      const del = await admin('DELETE', `/admin/rules/${id}`);
      assert.equal(del.status, 200, del.text);
      const afterDelete = `${kw} once more`;
      const t3 = await okTurn(client, afterDelete);
      assert.equal(t3.info.data.routingDecision.ruleName, later.json.rule.name, 'the remaining rule matches now');
      assert.equal(onlyRequestFor(afterDelete).body.model, 'gpt-4.1');
    } finally {
      await admin('DELETE', `/admin/rules/${id}`);
      await admin('DELETE', `/admin/rules/${later.json.rule.id}`);
    }
  });

  test('an invalid rule is refused with 400 and not stored', async () => {
    const bad = [
      ['regex', { regex: '(unclosed' }, /regex/],
      ['length range', { minLength: 10, maxLength: 2 }, /minLength/],
      ['blank keyword', { keywords: ['  '] }, /keyword/],
    ];
    for (const [label, conditions, pattern] of bad) {
      const name = uniq('bad');
      const res = await admin('POST', '/admin/rules', { name, priority: 1, conditions, provider: 'openai', model: 'gpt-4o', reason: label });
      assert.equal(res.status, 400, `${label}: ${res.status} ${res.text}`);
      assert.match(res.json?.error ?? '', pattern, `${label}: ${res.text}`);
      const listed = await admin('GET', '/admin/rules');
      assert.ok(!listed.json.rules.some((r) => r.name === name), `${label} is not stored`);
    }
  });
});

describe('named agents', () => {
  test('/agent NAME: agentName in session:info, the system prompt leads the upstream messages, the agent model is used; /agent clear', async () => {
    const name = uniq('helper');
    const systemPrompt = `You are ${name}. Answer in one line.`;
    const created = await admin('POST', '/admin/agents', { name, systemPrompt, provider: 'openai', model: 'gpt-4.1-nano', tools: [] });
    assert.equal(created.status, 201, created.text);
    assert.equal(created.json.name, name);
    assert.equal(typeof created.json.id, 'string');

    const { clients: [a, b] } = await fresh(2);
    const r = await command(a, '/agent', name);
    assert.equal(r.success, true, JSON.stringify(r));
    assert.equal(r.command, 'agent');
    assert.equal(r.data.agentName, name);
    assert.equal((await b.next('session:info')).data.agentName, name);
    const shown = await command(a, '/agent');
    assert.equal(shown.data.agentName, name);
    assert.ok(shown.message.includes(name));

    const content = `agent turn ${uniq()}`;
    const t = await okTurn(a, content);
    assert.equal(t.info.data.agentName, name);
    assert.equal(t.info.data.modelId, 'gpt-4.1-nano');
    const req = onlyRequestFor(content);
    assert.equal(req.body.model, 'gpt-4.1-nano');
    assert.deepEqual(req.body.messages[0], { role: 'system', content: systemPrompt });
    assert.equal(textOf(req.body.messages.at(-1).content), content);

    const cleared = await command(a, '/agent clear');
    assert.equal(cleared.success, true, JSON.stringify(cleared));
    const info = await b.next('session:info', { where: (f) => !f.data.agentName });
    assert.equal(info.data.agentName, undefined);
    const plain = `no agent ${uniq()}`;
    const t2 = await okTurn(a, plain);
    assert.equal(t2.info.data.agentName, undefined);
    const req2 = onlyRequestFor(plain);
    assert.ok(!req2.body.messages.some((m) => m.role === 'system'), JSON.stringify(req2.body.messages));
    assert.equal(req2.body.model, 'gpt-4o-mini');

    // The message's agentId picks the agent too, in another conversation.
    const other = await fresh();
    const viaMessage = `agent by id ${uniq()}`;
    const t3 = await okTurn(other.client, viaMessage, { agentId: name });
    assert.equal(t3.info.data.agentName, name);
    assert.deepEqual(onlyRequestFor(viaMessage).body.messages[0], { role: 'system', content: systemPrompt });
  });
});

describe('a turn that cannot start', () => {
  test('a message naming an unknown agent: "Failed to start agent session. Please try again." with the reason as detail; nothing stored or sent', async () => {
    const { client, token, conversationId } = await fresh();
    const content = `no such agent ${uniq()}`;
    const agentId = uniq('ghost');
    client.send('message', { conversationId, content, agentId });
    const e = await client.next('error');
    assert.equal(e.data.error, 'Failed to start agent session. Please try again.');
    assert.equal(e.data.code, 'unknown_agent');
    assert.equal(e.data.conversationId, conversationId);
    assert.match(e.data.detail, new RegExp(`Unknown agent "${agentId}"\\. Available: `));
    await sleep(300);
    assert.deepEqual(client.events.filter((f) => !['error', 'commands:manifest'].includes(f.event)).map((f) => f.event), [], 'no session:info, ack or turn');
    assert.equal(up.requests.filter((r) => r.lastUserText === content).length, 0);
    const res = await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token });
    assert.ok(res.status === 404 || (res.json?.messages ?? []).length === 0, res.text);
    // No session was started: abort still has none.
    client.send('abort', { conversationId });
    assert.equal((await client.next('error')).data.error, NO_SESSION_TO_ABORT);
  });
});

describe('cost', () => {
  test('OpenAI gpt-4o-mini with cached tokens: input excludes them; each part priced by hand', async () => {
    const { client, token, conversationId } = await fresh();
    const content = `price it ${uniq()} [[cache read=80]]`;
    const t = await okTurn(client, content);
    const req = onlyRequestFor(content);
    // A first turn: one message, so the fake bills 10 + 1 = 11 uncached prompt tokens, 80 cached, 5 output (5 deltas).
    assert.equal(req.body.messages.length, 1);
    assert.equal(req.sent.usage.prompt_tokens, 91);
    assert.equal(req.sent.usage.prompt_tokens_details.cached_tokens, 80);
    const { usage } = t.end.data;
    assert.equal(usage.provider, 'openai');
    assert.equal(usage.modelId, 'gpt-4o-mini');
    assert.deepEqual(usage.turn.tokens, { input: 11, output: 5, cacheRead: 80, cacheWrite: 0, total: 96 });
    assert.deepEqual(usage.tokens, usage.turn.tokens, 'a first turn: the total is the turn');
    // $0.15 input, $0.075 cached input, $0.60 output per million tokens.
    assertCost(usage.turn.cost, { input: 0.00000165, output: 0.000003, cacheRead: 0.000006, cacheWrite: 0, total: 0.00001065 }, 'gpt-4o-mini');
    assertUsd(usage.cost, 0.00001065, 'usage.cost, a number');
    assert.deepEqual(usage.context, { percent: percentOf(91, 128_000), window: 128_000 });
    const stored = (await storedMessages(token, conversationId)).at(-1).metadata;
    assert.deepEqual(stored.tokenUsage, usage.turn.tokens);
    // Stored JSON is re-read server-side; compared to the float tolerance, not bit for bit.
    assertCost(stored.cost, usage.turn.cost, 'stored gpt-4o-mini');
  });

  test('Anthropic claude-sonnet-4-5 with cache reads and writes: each part priced by hand', async () => {
    const { client, token, conversationId } = await fresh();
    const content = `price it ${uniq()} [[cache read=80 write=20]]`;
    const t = await okTurn(client, content, { provider: 'anthropic', modelId: 'claude-sonnet-4-5' });
    const req = onlyRequestFor(content);
    assert.equal(req.provider, 'anthropic');
    assert.equal(req.body.messages.length, 1);
    const { usage } = t.end.data;
    assert.equal(usage.provider, 'anthropic');
    assert.equal(usage.modelId, 'claude-sonnet-4-5');
    assert.deepEqual(usage.turn.tokens, { input: 11, output: 5, cacheRead: 80, cacheWrite: 20, total: 116 });
    // $3.00 input, $15.00 output, $0.30 cache read, $3.75 cache write per million tokens.
    assertCost(usage.turn.cost, { input: 0.000033, output: 0.000075, cacheRead: 0.000024, cacheWrite: 0.000075, total: 0.000207 }, 'claude-sonnet-4-5');
    assertUsd(usage.cost, 0.000207, 'usage.cost, a number');
    assert.deepEqual(usage.context, { percent: percentOf(111, 200_000), window: 200_000 });
    const stored = (await storedMessages(token, conversationId)).at(-1).metadata;
    assert.deepEqual(stored.tokenUsage, usage.turn.tokens);
    assertCost(stored.cost, usage.turn.cost, 'stored claude-sonnet-4-5');
  });

  test('/model openai/<unknown>: the turn\'s cost null, usage.cost a number; /status counts it as unpriced', async () => {
    const { client } = await fresh();
    assert.equal((await command(client, '/model openai/some-other-unknown-model')).success, true);
    const t = await okTurn(client, `who prices this ${uniq()}`);
    assert.equal(t.end.data.usage.modelId, 'some-other-unknown-model');
    assert.equal(t.end.data.usage.turn.cost, null);
    assert.equal(t.end.data.usage.cost, 0, 'a number even when no price is known');
    assert.equal(t.end.data.usage.unpricedTurns, 1);
    const s = await command(client, '/status');
    assert.equal(s.data.unpricedTurns, 1);
    assert.equal(s.data.costUsd, 0);
  });

  test('a catalog row added with PUT /admin/models prices the turn and sets its thinking levels', async () => {
    const id = uniq('house-model');
    const res = await admin('PUT', '/admin/models', {
      provider: 'openai',
      id,
      contextWindow: 50_000,
      maxOutput: 2000,
      prices: { input: 2, output: 8, cacheRead: 0.5, cacheWrite: 2 },
      reasoning: true,
      thinkingLevels: ['off', 'low', 'high'],
    });
    assert.ok(res.status === 200 || res.status === 201, `${res.status}: ${res.text}`);

    const { client } = await started();
    assert.equal((await command(client, '/model', `openai/${id}`)).success, true);
    const info = await client.next('session:info');
    assert.equal(info.data.modelId, id);
    assert.deepEqual(info.data.availableThinkingLevels, ['off', 'low', 'high']);
    setThinking(client, 'medium');
    const e = await client.next('error');
    assert.equal(e.data.error, 'Invalid thinking level "medium". Available: off, low, high');
    setThinking(client, 'low');
    await client.next('session:info', { where: (f) => f.data.thinkingLevel === 'low' });

    const content = `house priced ${uniq()} [[cache read=40]]`;
    const t = await okTurn(client, content);
    const req = onlyRequestFor(content);
    assert.equal(req.body.model, id);
    assert.equal(req.body.reasoning_effort, 'low');
    const { usage } = t.end.data;
    // The second turn (a first one started the session): three messages, so 10 + 3 = 13 uncached prompt tokens.
    assert.equal(req.body.messages.length, 3);
    assert.deepEqual(usage.turn.tokens, { input: 13, output: 5, cacheRead: 40, cacheWrite: 0, total: 58 });
    // $2 input, $0.50 cache read, $8 output per million tokens.
    assertCost(usage.turn.cost, { input: 0.000026, output: 0.00004, cacheRead: 0.00002, cacheWrite: 0, total: 0.000086 }, id);
    assert.deepEqual(usage.context, { percent: percentOf(53, 50_000), window: 50_000 });
  });
});

// Last: a restart drops every socket of the gateway.
describe('restart', () => {
  test('the /model override, the thinking level and the /status figures survive a restart of wrangler dev', async () => {
    const { client, token, conversationId } = await started();
    const r = await command(client, '/model openai/o4-mini');
    assert.equal(r.success, true, JSON.stringify(r));
    setThinking(client, 'high');
    await client.next('session:info', { where: (f) => f.data.thinkingLevel === 'high' });
    const before = `before restart ${uniq()}`;
    await okTurn(client, before);
    assert.equal(onlyRequestFor(before).body.model, 'o4-mini');
    const statusBefore = (await command(client, '/status')).data;
    assert.equal(statusBefore.turns, 2);
    await client.close();

    await gw.restart();

    const again = await open(token, conversationId);
    const show = await command(again, '/model');
    assert.equal(show.success, true);
    assert.equal(show.data.override, 'openai/o4-mini', JSON.stringify(show));
    assert.deepEqual((await command(again, '/status')).data, statusBefore);
    // The session outlives the restart (unlike the reference gateway's): set:thinking is taken at once.
    setThinking(again, 'high');
    const kept = await again.next(['session:info', 'error']);
    assert.equal(kept.event, 'session:info', again.log.dump());
    assert.equal(kept.data.thinkingLevel, 'high');
    const content = `after restart ${uniq()}`;
    const t = await okTurn(again, content);
    const req = onlyRequestFor(content);
    assert.equal(req.body.model, 'o4-mini');
    assert.equal(req.body.reasoning_effort, 'high');
    assert.equal(t.info.data.modelOverride, 'openai/o4-mini');
    assert.equal(t.info.data.thinkingLevel, 'high');
    assert.equal((await command(again, '/status')).data.turns, 3);
  });
});
