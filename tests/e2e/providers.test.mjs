// Providers and the agent loop end to end under wrangler dev: Anthropic and OpenAI streaming, thinking, tool turns, the step bound, usage, upstream failures, retries, fallover and replay of tool history.
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomInt, randomUUID } from 'node:crypto';
import { startFakeUpstream, textOf } from '../support/fake-upstream.mjs';
import { startToolServer } from '../support/tool-server.mjs';
import { startGateway, uniq } from '../support/harness.mjs';

const MAX_TOOL_STEPS = 3;
const TOOL_TIMEOUT_MS = 1500;
const STALL_MS = 3000;
const MAX_OUTPUT_TOKENS = 2000;

let up;
let tools;
let gw;
/** Agent names by provider: each has the tool server's tools. */
const agents = {};
const SYSTEM_PROMPT = 'You are a calculator. Use the tools when asked.';

function toolDefs(url) {
  const object = (properties) => ({ type: 'object', properties });
  return [
    { name: 'add', description: 'Adds a and b.', parameters: { ...object({ a: { type: 'number' }, b: { type: 'number' } }), required: ['a', 'b'] }, url: `${url}/tools/add` },
    { name: 'echo', description: 'Echoes its arguments.', parameters: object({ text: { type: 'string' } }), url: `${url}/tools/echo` },
    { name: 'fail', description: 'Always fails.', parameters: object({}), url: `${url}/tools/fail` },
    { name: 'slow', description: 'Waits ms milliseconds.', parameters: object({ ms: { type: 'number' } }), url: `${url}/tools/slow` },
  ];
}

before(async () => {
  up = await startFakeUpstream();
  tools = await startToolServer();
  gw = await startGateway({
    upstream: up,
    vars: {
      MAX_TOOL_STEPS: String(MAX_TOOL_STEPS),
      TOOL_TIMEOUT_MS: String(TOOL_TIMEOUT_MS),
      UPSTREAM_STALL_TIMEOUT_MS: String(STALL_MS),
      MAX_OUTPUT_TOKENS: String(MAX_OUTPUT_TOKENS),
    },
  });
  for (const [provider, model] of [
    ['openai', 'gpt-4o-mini'],
    ['anthropic', 'claude-sonnet-4-5'],
  ]) {
    const name = uniq(`calc-${provider}`);
    const res = await admin('POST', '/admin/agents', { name, systemPrompt: SYSTEM_PROMPT, provider, model, tools: toolDefs(tools.url) });
    assert.equal(res.status, 201, res.text);
    agents[provider] = name;
  }
});

after(async () => {
  await gw?.stop();
  await tools?.close();
  await up?.close();
});

const opened = new Set();
afterEach(async () => {
  await Promise.all([...opened].map((c) => c.close()));
  opened.clear();
});

function admin(method, path, body) {
  return gw.http(method, path, { token: gw.adminToken, body });
}

async function open(gateway, token, conversationId) {
  const client = await gateway.connect({ token, conversationId });
  opened.add(client);
  const first = await client.next(null);
  assert.equal(first.event, 'commands:manifest', client.log.dump());
  return client;
}

/** A new user and conversation with one socket. */
async function fresh(gateway = gw) {
  const token = await gateway.mintToken(uniq('user'));
  const conversationId = randomUUID();
  return { token, conversationId, client: await open(gateway, token, conversationId) };
}

/** Every upstream request whose last user text is `content`, in order. */
const requestsFor = (content) => up.requests.filter((r) => r.lastUserText === content);

function onlyRequestFor(content) {
  const found = requestsFor(content);
  assert.equal(found.length, 1, `exactly one upstream request for ${JSON.stringify(content)}, saw ${found.length}`);
  return found[0];
}

async function storedMessages(token, conversationId) {
  const res = await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token });
  assert.equal(res.status, 200, res.text);
  return Array.isArray(res.json) ? res.json : res.json.messages;
}

async function okTurn(client, content, extra, opts) {
  const t = await client.turn(content, extra, opts);
  assert.deepEqual(t.errors, [], `no error frames:\n${client.log.dump()}`);
  assert.equal(t.end?.data.stopReason, 'stop', client.log.dump());
  return t;
}

/** Message fields that send a turn to `provider` with no agent. */
const onProvider = (provider) => (provider === 'anthropic' ? { provider: 'anthropic', modelId: 'claude-sonnet-4-5' } : {});

const sumTokens = (reqs) => {
  const t = { input: 0, output: 0, cacheRead: 0, cacheWrite: 0, total: 0 };
  for (const r of reqs) for (const k of Object.keys(t)) t[k] += r.sent.tokens[k];
  return t;
};

/** Anthropic rejects a conversation whose roles do not alternate or does not start with the user. */
function assertAlternates(messages) {
  assert.equal(messages[0]?.role, 'user', JSON.stringify(messages));
  messages.slice(1).forEach((m, k) => assert.notEqual(m.role, messages[k].role, `roles alternate at ${k + 1}: ${JSON.stringify(messages)}`));
}

describe('streaming', () => {
  test('Anthropic native streaming: the Messages request and every text delta, usage from the stream', async () => {
    const { client } = await fresh();
    const content = `stream anthropic ${uniq()} [[slow delay=20 deltas=6]]`;
    const t = await okTurn(client, content, { provider: 'anthropic' });
    assert.equal(t.info.data.provider, 'anthropic');
    assert.equal(t.info.data.modelId, 'claude-sonnet-4-5');
    const req = onlyRequestFor(content);
    assert.equal(req.path, '/v1/messages');
    assert.equal(req.headers['x-api-key'], 'test-anthropic-key');
    assert.ok(req.headers['anthropic-version'], 'anthropic-version header');
    assert.equal(req.body.model, 'claude-sonnet-4-5');
    assert.equal(req.body.stream, true);
    assert.equal(req.body.max_tokens, MAX_OUTPUT_TOKENS);
    assert.deepEqual(req.body.messages, [{ role: 'user', content }]);
    assert.equal(req.body.system, undefined);
    assert.equal(t.texts.length, 6, client.log.dump());
    assert.equal(t.text, req.sent.text);
    const { usage } = t.end.data;
    assert.equal(usage.provider, 'anthropic');
    assert.equal(usage.modelId, 'claude-sonnet-4-5');
    assert.deepEqual(usage.turn.tokens, req.sent.tokens);
    assert.deepEqual(usage.tokens, req.sent.tokens, 'the first turn: the running total is the turn');
    t.frames.slice(1).forEach((f, k) => assert.equal(f.seq, t.frames[k].seq + 1, `seq of ${f.event}`));
  });

  test('OpenAI: max_tokens from MAX_OUTPUT_TOKENS and usage requested in the stream', async () => {
    const { client } = await fresh();
    const content = `stream openai ${uniq()}`;
    const t = await okTurn(client, content);
    const req = onlyRequestFor(content);
    assert.equal(req.path, '/v1/chat/completions');
    assert.equal(req.body.max_tokens, MAX_OUTPUT_TOKENS);
    assert.deepEqual(req.body.stream_options, { include_usage: true });
    assert.equal(t.text, req.sent.text);
  });

  test('a model that stops at its output limit ends with stopReason length, on both providers', async () => {
    const { client } = await fresh();
    for (const provider of ['openai', 'anthropic']) {
      const content = `long answer ${provider} ${uniq()} [[length]]`;
      const t = await client.turn(content, onProvider(provider));
      assert.deepEqual(t.errors, []);
      assert.equal(t.end.data.stopReason, 'length', `${provider}: ${JSON.stringify(t.end.data)}`);
      assert.equal(t.text, onlyRequestFor(content).sent.text);
    }
  });
});

describe('thinking', () => {
  for (const [label, directive, provider] of [
    ['OpenAI reasoning_content', '[[thinking]]', 'openai'],
    ['OpenRouter-style reasoning', '[[thinking style=openrouter]]', 'openai'],
    ['Anthropic thinking blocks', '[[thinking]]', 'anthropic'],
  ]) {
    test(`${label} become agent:thinking before the text`, async () => {
      const { client } = await fresh();
      const content = `think ${uniq()} ${directive}`;
      const t = await okTurn(client, content, onProvider(provider));
      const req = onlyRequestFor(content);
      assert.equal(req.provider, provider);
      assert.ok(req.sent.thinking.length > 0);
      const thinkingFrames = t.frames.filter((f) => f.event === 'agent:thinking');
      assert.equal(thinkingFrames.length, 3, client.log.dump());
      assert.equal(t.thinking, req.sent.thinking);
      assert.equal(t.text, req.sent.text);
      assert.ok(!t.text.includes('Let me think'), 'reasoning never leaks into the text');
      const firstText = t.frames.indexOf(t.texts[0]);
      assert.ok(thinkingFrames.every((f) => t.frames.indexOf(f) < firstText), 'thinking streams before the answer');
      for (const f of thinkingFrames) assert.equal(f.data.conversationId, client.conversationId);
    });
  }
});

describe('tool turns', () => {
  test('OpenAI: a two-step tool turn; the tool result reaches the second request; events in order', async () => {
    const { client, token, conversationId } = await fresh();
    const a = randomInt(1, 1000);
    const b = randomInt(1, 1000);
    const content = `add ${uniq()} [[tool name=add args={"a":${a},"b":${b}}]]`;
    const t = await okTurn(client, content, { agentId: agents.openai });
    const reqs = requestsFor(content);
    assert.equal(reqs.length, 2, 'a tool step, then the answer');
    const [first, second] = reqs;
    assert.equal(first.body.model, 'gpt-4o-mini');
    assert.deepEqual(first.body.messages[0], { role: 'system', content: SYSTEM_PROMPT });
    const addSpec = first.body.tools.find((x) => x.function?.name === 'add');
    assert.equal(addSpec?.type, 'function', JSON.stringify(first.body.tools));
    assert.deepEqual(addSpec.function.parameters, toolDefs(tools.url)[0].parameters);
    assert.ok(!JSON.stringify(first.body.tools).includes(tools.url), 'the tool URL is not shown to the model');

    const [call] = first.sent.toolCalls;
    const call_ = tools.calls.find((c) => c.name === 'add' && c.body?.a === a && c.body?.b === b);
    assert.ok(call_, `the tool server got the arguments; calls: ${JSON.stringify(tools.calls.map((c) => c.body))}`);
    assert.equal(call_.method, 'POST');
    assert.match(call_.headers['content-type'], /application\/json/);
    assert.deepEqual(second.toolResults, [{ id: call.id, name: 'add', content: JSON.stringify({ sum: a + b }), isError: false }]);
    const msgs = second.body.messages;
    const at = msgs.findIndex((m) => m.role === 'assistant' && m.tool_calls?.length);
    assert.ok(at > 0, JSON.stringify(msgs));
    assert.equal(msgs[at].tool_calls.length, 1);
    assert.equal(msgs[at].tool_calls[0].id, call.id);
    assert.equal(msgs[at].tool_calls[0].type, 'function');
    assert.equal(msgs[at].tool_calls[0].function.name, 'add');
    assert.deepEqual(JSON.parse(msgs[at].tool_calls[0].function.arguments), { a, b });
    assert.deepEqual(msgs[at + 1], { role: 'tool', tool_call_id: call.id, content: JSON.stringify({ sum: a + b }) });

    assert.equal(t.toolStarts.length, 1);
    assert.equal(t.toolEnds.length, 1);
    assert.deepEqual(t.toolStarts[0].data, { conversationId, toolCallId: call.id, toolName: 'add' });
    assert.deepEqual(t.toolEnds[0].data, { conversationId, toolCallId: call.id, toolName: 'add', isError: false, result: JSON.stringify({ sum: a + b }) });
    const idx = (f) => t.frames.indexOf(f);
    assert.ok(idx(t.start) < idx(t.toolStarts[0]) && idx(t.toolStarts[0]) < idx(t.toolEnds[0]) && idx(t.toolEnds[0]) < idx(t.texts[0]), 'start, tool start, tool end, text');
    assert.equal(t.frames.at(-1), t.end);
    assert.equal(t.text, second.sent.text);
    assert.equal(t.text, `Tool add returned ${JSON.stringify({ sum: a + b })}`);
    assert.deepEqual(t.end.data.usage.turn.tokens, sumTokens(reqs), 'usage adds up both calls');

    const assistant = (await storedMessages(token, conversationId)).at(-1);
    assert.equal(assistant.content, t.text);
    assert.deepEqual(assistant.metadata.toolCalls, [{ toolCallId: call.id, toolName: 'add', args: { a, b }, isError: false }]);
    assert.equal(assistant.metadata.steps, 2);
    assert.equal(assistant.metadata.stopReason, 'stop');
  });

  test('Anthropic: a two-step tool turn with two parallel calls; results go back in one user message', async () => {
    const { client, token, conversationId } = await fresh();
    const a = randomInt(1, 1000);
    const b = randomInt(1, 1000);
    const content = `add twice ${uniq()} [[tool name=add args={"a":${a},"b":${b}} count=2]]`;
    const t = await okTurn(client, content, { agentId: agents.anthropic });
    const reqs = requestsFor(content);
    assert.equal(reqs.length, 2);
    const [first, second] = reqs;
    assert.equal(first.provider, 'anthropic');
    assert.equal(first.body.model, 'claude-sonnet-4-5');
    assert.equal(first.body.system, SYSTEM_PROMPT);
    const addSpec = first.body.tools.find((x) => x.name === 'add');
    assert.deepEqual(addSpec?.input_schema, toolDefs(tools.url)[0].parameters, JSON.stringify(first.body.tools));

    const calls = first.sent.toolCalls;
    assert.equal(calls.length, 2);
    const sum = JSON.stringify({ sum: a + b });
    assert.deepEqual(
      second.toolResults.map((r) => [r.id, r.name, r.content, r.isError]),
      calls.map((c) => [c.id, 'add', sum, false]),
    );
    const msgs = second.body.messages;
    assertAlternates(msgs);
    const at = msgs.findIndex((m) => m.role === 'assistant' && Array.isArray(m.content) && m.content.some((x) => x.type === 'tool_use'));
    assert.ok(at > 0, JSON.stringify(msgs));
    const uses = msgs[at].content.filter((x) => x.type === 'tool_use');
    assert.deepEqual(
      uses.map((u) => [u.id, u.name, u.input]),
      calls.map((c) => [c.id, 'add', JSON.parse(c.arguments)]),
    );
    const results = msgs[at + 1];
    assert.equal(results.role, 'user');
    assert.deepEqual(
      results.content.map((r) => [r.type, r.tool_use_id, textOf(r.content) || r.content, r.is_error ?? false]),
      calls.map((c) => ['tool_result', c.id, sum, false]),
    );

    assert.deepEqual(t.toolStarts.map((f) => f.data.toolCallId), calls.map((c) => c.id));
    assert.deepEqual(t.toolEnds.map((f) => [f.data.toolCallId, f.data.isError]), calls.map((c) => [c.id, false]));
    for (const end of t.toolEnds) {
      const start = t.toolStarts.find((s) => s.data.toolCallId === end.data.toolCallId);
      assert.ok(t.frames.indexOf(start) < t.frames.indexOf(end), 'each tool starts before it ends');
    }
    assert.equal(t.text, second.sent.text);
    assert.deepEqual(t.end.data.usage.turn.tokens, sumTokens(reqs));

    const assistant = (await storedMessages(token, conversationId)).at(-1);
    assert.deepEqual(
      assistant.metadata.toolCalls,
      calls.map((c) => ({ toolCallId: c.id, toolName: 'add', args: JSON.parse(c.arguments), isError: false })),
    );
  });

  test('a failing, an unknown and a timed-out tool are errors the model sees; the turn goes on', async () => {
    const { client, token, conversationId } = await fresh();
    const cases = [
      ['openai', 'fail', '{}', /the fail tool always fails/],
      ['anthropic', 'fail', '{}', /the fail tool always fails/],
      ['openai', 'nosuchtool', '{}', /nosuchtool/],
      ['anthropic', 'slow', '{"ms":6000}', /timed out|timeout/i],
    ];
    for (const [provider, name, args, pattern] of cases) {
      const content = `${name} on ${provider} ${uniq()} [[tool name=${name} args=${args}]]`;
      const started = Date.now();
      const t = await okTurn(client, content, { agentId: agents[provider] });
      const label = `${name} on ${provider}`;
      if (name === 'slow') assert.ok(Date.now() - started < 5000, `${label}: the tool timeout ends the call before the tool answers`);
      const reqs = requestsFor(content);
      assert.equal(reqs.length, 2, `${label}: the model is called again with the error`);
      const [call] = reqs[0].sent.toolCalls;
      assert.deepEqual(t.toolEnds.map((f) => [f.data.toolCallId, f.data.toolName, f.data.isError]), [[call.id, name, true]], label);
      const [result] = reqs[1].toolResults;
      assert.equal(result.id, call.id, label);
      assert.match(result.content, pattern, `${label}: ${result.content}`);
      assert.equal(t.toolEnds[0].data.result, result.content, `${label}: agent:tool:end carries what the model read`);
      if (provider === 'anthropic') assert.equal(result.isError, true, `${label}: is_error on the tool_result`);
      assert.equal(t.text, reqs[1].sent.text, label);
      const stored = (await storedMessages(token, conversationId)).at(-1);
      assert.deepEqual(stored.metadata.toolCalls.map((c) => [c.toolCallId, c.isError]), [[call.id, true]], label);
    }
    assert.ok(!tools.calls.some((c) => c.name === 'nosuchtool'), 'an unknown tool is never fetched');
  });

  test(`the tool loop stops after MAX_TOOL_STEPS (${MAX_TOOL_STEPS}) calls with stopReason max_steps, on both providers`, async () => {
    const { client, token, conversationId } = await fresh();
    for (const provider of ['openai', 'anthropic']) {
      const marker = uniq('loop');
      const content = `loop ${provider} ${marker} [[tool_loop name=echo args={"text":"${marker}"}]]`;
      const t = await client.turn(content, { agentId: agents[provider] });
      assert.deepEqual(t.errors, [], client.log.dump());
      assert.equal(t.end.data.stopReason, 'max_steps', `${provider}: ${JSON.stringify(t.end.data)}`);
      assert.equal(requestsFor(content).length, MAX_TOOL_STEPS, `${provider}: model calls`);
      assert.equal(tools.calls.filter((c) => c.name === 'echo' && c.body?.text === marker).length, MAX_TOOL_STEPS - 1, `${provider}: tool runs`);
      assert.equal(t.toolStarts.length, MAX_TOOL_STEPS - 1);
      assert.equal(t.toolEnds.length, MAX_TOOL_STEPS - 1);
      const stored = (await storedMessages(token, conversationId)).at(-1);
      assert.equal(stored.metadata.stopReason, 'max_steps');
      assert.equal(stored.metadata.steps, MAX_TOOL_STEPS);
      assert.equal(stored.metadata.toolCalls.length, MAX_TOOL_STEPS - 1);
    }
    // The conversation goes on after the bound, on both providers.
    for (const provider of ['openai', 'anthropic']) {
      const next = `after the loop ${provider} ${uniq()}`;
      await okTurn(client, next, { agentId: agents[provider] });
      if (provider === 'anthropic') assertAlternates(onlyRequestFor(next).body.messages);
    }
  });
});

describe('abort in the agent loop', () => {
  for (const provider of ['openai', 'anthropic']) {
    test(`${provider}: abort while a tool runs cancels the tool request, ends the turn aborted, and the next request is still valid`, async () => {
      const { client, token, conversationId } = await fresh();
      const marker = uniq('slowtool');
      const content = `wait ${marker} [[tool name=slow args={"ms":8000,"tag":"${marker}"}]]`;
      const from = client.events.length;
      client.send('message', { conversationId, content, agentId: agents[provider] });
      const start = await client.next('agent:tool:start', { timeout: 10_000 });
      // TOOL_TIMEOUT_MS is short here: abort as soon as the tool server has the call.
      await tools.waitForCall((c) => c.name === 'slow' && c.body?.tag === marker, 5000);
      client.send('abort', { conversationId });
      await client.until('agent:end', { timeout: 10_000 });
      const frames = client.events.slice(from);
      const end = frames.find((f) => f.event === 'agent:end');
      assert.equal(end.data.stopReason, 'aborted', client.log.dump());
      const cancelled = await tools.waitForClientClose((c) => c.name === 'slow' && c.body?.tag === marker, 5000);
      assert.equal(cancelled.status, null, 'the tool never answered');
      assert.equal(requestsFor(content).length, 1, 'the model is not called again after the abort');
      const stored = (await storedMessages(token, conversationId)).at(-1);
      assert.equal(stored.role, 'assistant');
      assert.equal(stored.metadata.aborted, true, JSON.stringify(stored.metadata));

      // Every tool that started is seen to end, and is recorded, as an error.
      const ends = frames.filter((f) => f.event === 'agent:tool:end');
      assert.deepEqual(
        ends.map((f) => [f.data.toolCallId, f.data.toolName, f.data.isError]),
        [[start.data.toolCallId, 'slow', true]],
        `agent:tool:end for the aborted call; frames:\n${client.log.dump()}`,
      );
      assert.deepEqual(
        stored.metadata.toolCalls.map((c) => [c.toolCallId, c.toolName, c.isError]),
        [[start.data.toolCallId, 'slow', true]],
        `the aborted call in the metadata: ${JSON.stringify(stored.metadata)}`,
      );

      // The conversation goes on, and its history pairs every tool call with a result.
      const next = `after the aborted tool ${uniq()}`;
      await okTurn(client, next);
      assertToolCallsAnswered(provider, onlyRequestFor(next).body.messages);
    });
  }
});

/** Both APIs refuse a history where a tool call has no result right after it. */
function assertToolCallsAnswered(provider, messages) {
  messages.forEach((m, k) => {
    if (provider === 'openai') {
      const ids = (m.tool_calls ?? []).map((c) => c.id);
      if (!ids.length) return;
      const answered = messages.slice(k + 1, k + 1 + ids.length).filter((r) => r.role === 'tool').map((r) => r.tool_call_id);
      assert.deepEqual(answered, ids, `tool calls at ${k} answered right after: ${JSON.stringify(messages)}`);
    } else {
      const ids = Array.isArray(m.content) ? m.content.filter((b) => b.type === 'tool_use').map((b) => b.id) : [];
      if (!ids.length) return;
      const nextContent = Array.isArray(messages[k + 1]?.content) ? messages[k + 1].content : [];
      const answered = nextContent.filter((b) => b.type === 'tool_result').map((b) => b.tool_use_id);
      assert.deepEqual(answered, ids, `tool_use at ${k} answered in the next message: ${JSON.stringify(messages)}`);
    }
  });
}

describe('usage', () => {
  for (const provider of ['openai', 'anthropic']) {
    test(`${provider}: tokens with cache reads${provider === 'anthropic' ? ' and writes' : ''} as the upstream reported them`, async () => {
      const { client, token, conversationId } = await fresh();
      const content = `usage ${uniq()} [[cache read=50 write=30]]`;
      const t = await okTurn(client, content, onProvider(provider));
      const req = onlyRequestFor(content);
      const { tokens } = t.end.data.usage.turn;
      assert.deepEqual(tokens, req.sent.tokens);
      assert.equal(tokens.cacheRead, 50);
      assert.equal(tokens.cacheWrite, provider === 'anthropic' ? 30 : 0, 'Chat Completions reports no cache writes');
      if (provider === 'openai') assert.equal(tokens.input, req.sent.usage.prompt_tokens - 50, 'input excludes the cached prompt tokens');
      else assert.equal(tokens.input, req.sent.usage.input_tokens);
      assert.equal(tokens.output, req.sent.tokens.output);
      assert.equal(tokens.total, tokens.input + tokens.output + tokens.cacheRead + tokens.cacheWrite);
      const stored = (await storedMessages(token, conversationId)).at(-1);
      assert.deepEqual(stored.metadata.tokenUsage, tokens);
    });
  }
});

describe('upstream failures', () => {
  for (const [provider, code] of [
    ['openai', 'upstream_error'],
    ['anthropic', 'upstream_overloaded'],
  ]) {
    test(`${provider}: an error event inside a 200 stream gives error ${code}, agent:end and the partial reply stored`, async () => {
      const { client, token, conversationId } = await fresh();
      const content = `stream error ${uniq()} [[stream_error after=2]]`;
      const t = await client.turn(content, onProvider(provider));
      const req = onlyRequestFor(content);
      assert.ok(req.sent.streamError, 'the fake sent its error event');
      assert.equal(t.errors.length, 1, client.log.dump());
      assert.equal(t.errors[0].data.code, code);
      assert.ok(t.frames.indexOf(t.errors[0]) < t.frames.indexOf(t.end));
      assert.ok(['error', 'truncated'].includes(t.end.data.stopReason), JSON.stringify(t.end.data));
      assert.equal(t.text, req.sent.text);
      assert.ok(t.text.length > 0);
      const stored = (await storedMessages(token, conversationId)).at(-1);
      assert.equal(stored.role, 'assistant');
      assert.equal(stored.content, t.text);
      assert.equal(stored.metadata.stopReason, t.end.data.stopReason);
      assert.equal(stored.metadata.error?.code, code);
    });
  }

  // The deltas are spaced out so the ones before the cut reach the gateway; bytes written just before an abrupt reset may be lost on the way.
  for (const [provider, directive] of [
    ['openai', '[[slow delay=30 deltas=10]] [[cut after=3]]'],
    ['anthropic', '[[slow delay=30 deltas=10]] [[cut after=3 abrupt=1]]'],
  ]) {
    test(`${provider}: a stream cut after text (${directive}) ends truncated or error, not retried, the partial reply stored`, async () => {
      const { client, token, conversationId } = await fresh();
      const content = `cut ${uniq()} ${directive}`;
      const t = await client.turn(content, onProvider(provider));
      const req = onlyRequestFor(content);
      assert.equal(req.sent.complete, false);
      assert.ok(['truncated', 'error'].includes(t.end.data.stopReason), JSON.stringify(t.end.data));
      assert.equal(t.errors.length, 1, client.log.dump());
      assert.equal(t.errors[0].data.code, 'upstream_error');
      assert.ok(t.text.length > 0, client.log.dump());
      assert.ok(req.sent.text.startsWith(t.text), `the clients saw a prefix of what was sent: ${JSON.stringify(t.text)} of ${JSON.stringify(req.sent.text)}`);
      const stored = (await storedMessages(token, conversationId)).at(-1);
      assert.equal(stored.role, 'assistant');
      assert.equal(stored.content, t.text);
      assert.equal(stored.metadata.stopReason, t.end.data.stopReason);
      await okTurn(client, `after the cut ${uniq()}`, onProvider(provider));
    });
  }

  test(`a stream that stalls after text times out after UPSTREAM_STALL_TIMEOUT_MS: upstream_timeout, truncated`, async () => {
    const { client } = await fresh();
    const content = `stall ${uniq()} [[stall after=2]]`;
    const started = Date.now();
    const t = await client.turn(content, {}, { timeout: 30_000 });
    const took = Date.now() - started;
    assert.ok(took >= STALL_MS - 200 && took < STALL_MS + 5000, `ended after ${took} ms`);
    assert.equal(t.errors.length, 1, client.log.dump());
    assert.equal(t.errors[0].data.code, 'upstream_timeout');
    assert.equal(t.end.data.stopReason, 'truncated');
    assert.equal(t.text, onlyRequestFor(content).sent.text);
    await up.waitForClientClose((r) => r.lastUserText === content, 5000);
  });

  test('429 with retry-after is retried after the wait and the turn succeeds', async () => {
    const { client } = await fresh();
    const content = `flaky ${uniq()} [[flaky times=2 code=429 retry_after=1]]`;
    const t = await okTurn(client, content, {}, { timeout: 30_000 });
    const reqs = requestsFor(content);
    assert.deepEqual(reqs.map((r) => r.sent.status), [429, 429, 200]);
    for (let k = 1; k < reqs.length; k++) {
      const gap = reqs[k].receivedAt - reqs[k - 1].receivedAt;
      assert.ok(gap >= 900, `retry ${k} waited ${gap.toFixed(0)} ms for retry-after: 1`);
    }
    assert.equal(t.text, reqs[2].sent.text);
    assert.equal(t.frames.filter((f) => f.event === 'agent:start').length, 1, 'one turn for the clients');
  });

  for (const provider of ['openai', 'anthropic']) {
    test(`${provider}: 401 gives upstream_auth at once, not retried`, async () => {
      const { client, token, conversationId } = await fresh();
      const content = `unauthorized ${uniq()} [[status code=401]]`;
      const t = await client.turn(content, onProvider(provider));
      assert.equal(requestsFor(content).length, 1, 'a 401 is not retried');
      assert.equal(t.errors.length, 1, client.log.dump());
      assert.equal(t.errors[0].data.code, 'upstream_auth');
      assert.equal(t.errors[0].data.error, 'The agent failed to process your message. Please try again.');
      assert.match(t.errors[0].data.detail, /401/);
      assert.equal(t.end.data.stopReason, 'error');
      assert.equal(t.end.data.error?.code, 'upstream_auth');
      assert.equal(t.text, '');
      const stored = (await storedMessages(token, conversationId)).at(-1);
      assert.equal(stored.metadata.error?.code, 'upstream_auth');
      assert.equal(stored.metadata.stopReason, 'error');
    });
  }

  test('a rule target that stays overloaded is retried, then the turn falls over to the default', async () => {
    const kw = uniq('overload');
    const name = uniq('to-anthropic');
    const rule = await admin('POST', '/admin/rules', { name, priority: 1, conditions: { keywords: [kw] }, provider: 'anthropic', model: 'claude-haiku-4-5', reason: 'overload test' });
    assert.equal(rule.status, 201, rule.text);
    try {
      const { client } = await fresh();
      const content = `${kw} ${uniq()} [[flaky times=3 code=529]]`;
      const t = await okTurn(client, content, {}, { timeout: 30_000 });
      const reqs = requestsFor(content);
      assert.deepEqual(
        reqs.map((r) => [r.provider, r.body.model, r.sent.status]),
        [
          ['anthropic', 'claude-haiku-4-5', 529],
          ['anthropic', 'claude-haiku-4-5', 529],
          ['anthropic', 'claude-haiku-4-5', 529],
          ['openai', 'gpt-4o-mini', 200],
        ],
      );
      const infos = t.frames.filter((f) => f.event === 'session:info');
      assert.equal(infos[0].data.routingDecision.ruleName, name);
      const last = infos.at(-1).data;
      assert.equal(last.provider, 'openai');
      assert.equal(last.modelId, 'gpt-4o-mini');
      assert.match(last.routingDecision.reason, /fallover/);
      assert.equal(t.end.data.usage.provider, 'openai');
      assert.equal(t.text, reqs[3].sent.text);
    } finally {
      await admin('DELETE', `/admin/rules/${rule.json?.rule?.id}`);
    }
  });
});

// Last in the main gateway: the restart drops every socket.
describe('replay of tool history', () => {
  test('after a tool turn the next requests carry the tool call and its result in the provider format, also after a restart', async () => {
    const convs = {};
    for (const provider of ['openai', 'anthropic']) {
      const { client, token, conversationId } = await fresh();
      const a = randomInt(1, 1000);
      const b = randomInt(1, 1000);
      const first = `replay ${provider} ${uniq()} [[tool name=add args={"a":${a},"b":${b}}]]`;
      const t1 = await okTurn(client, first, { agentId: agents[provider] });
      const [call] = requestsFor(first)[0].sent.toolCalls;
      const second = `and then ${uniq()}`;
      await okTurn(client, second);
      convs[provider] = { token, conversationId, first, second, call, a, b, reply: t1.text };
      checkReplay(provider, onlyRequestFor(second), convs[provider], [second]);
    }

    await gw.restart();

    for (const provider of ['openai', 'anthropic']) {
      const c = convs[provider];
      const client = await open(gw, c.token, c.conversationId);
      const third = `after restart ${uniq()}`;
      await okTurn(client, third);
      checkReplay(provider, onlyRequestFor(third), c, [c.second, third]);
    }
  });
});

/** The request after a tool turn: user, tool call, tool result, reply, then `later` user messages (with their replies). */
function checkReplay(provider, req, c, later) {
  const msgs = req.body.messages;
  const sum = JSON.stringify({ sum: c.a + c.b });
  const conversation = provider === 'openai' ? msgs.filter((m) => m.role !== 'system') : msgs;
  if (provider === 'openai') {
    assert.deepEqual(msgs[0], { role: 'system', content: SYSTEM_PROMPT }, 'the agent is still active');
    const [user, call, result, reply] = conversation;
    assert.deepEqual(user, { role: 'user', content: c.first });
    assert.equal(call.role, 'assistant');
    assert.equal(call.tool_calls.length, 1, JSON.stringify(call));
    assert.equal(call.tool_calls[0].id, c.call.id);
    assert.equal(call.tool_calls[0].type, 'function');
    assert.equal(call.tool_calls[0].function.name, 'add');
    assert.deepEqual(JSON.parse(call.tool_calls[0].function.arguments), { a: c.a, b: c.b });
    assert.ok(call.content === null || call.content === '', `a tool-only assistant message: ${JSON.stringify(call.content)}`);
    assert.deepEqual(result, { role: 'tool', tool_call_id: c.call.id, content: sum });
    assert.equal(reply.role, 'assistant');
    assert.equal(textOf(reply.content), c.reply);
  } else {
    assert.equal(req.body.system, SYSTEM_PROMPT, 'the agent is still active');
    assertAlternates(msgs);
    const [user, call, result, reply] = conversation;
    assert.equal(textOf(user.content), c.first);
    assert.equal(call.role, 'assistant');
    assert.deepEqual(
      call.content.filter((x) => x.type === 'tool_use'),
      [{ type: 'tool_use', id: c.call.id, name: 'add', input: { a: c.a, b: c.b } }],
    );
    assert.equal(result.role, 'user');
    assert.equal(result.content.length, 1, JSON.stringify(result));
    assert.equal(result.content[0].type, 'tool_result');
    assert.equal(result.content[0].tool_use_id, c.call.id);
    assert.equal(textOf(result.content[0].content) || result.content[0].content, sum);
    assert.ok(!result.content[0].is_error);
    assert.equal(reply.role, 'assistant');
    assert.equal(textOf(reply.content), c.reply);
  }
  const users = conversation.slice(4).filter((m) => m.role === 'user').map((m) => textOf(m.content));
  assert.deepEqual(users, later, `the later user messages: ${JSON.stringify(msgs)}`);
  assert.equal(textOf(conversation.at(-1).content), later.at(-1));
}

describe('without Anthropic configured', () => {
  let bare;
  before(async () => {
    bare = await startGateway({ upstream: up, vars: { ANTHROPIC_BASE_URL: '', ANTHROPIC_API_KEY: '' } });
  });
  after(() => bare?.stop());

  test('a message for provider anthropic gets provider_not_configured, reaches no upstream; /model refuses it; OpenAI still answers', async () => {
    const { client } = await fresh(bare);
    const content = `to anthropic ${uniq()}`;
    client.send('message', { conversationId: client.conversationId, content, provider: 'anthropic' });
    const e = await client.next('error', { timeout: 10_000 });
    assert.equal(e.data.code, 'provider_not_configured', JSON.stringify(e.data));
    assert.equal(e.data.conversationId, client.conversationId);
    assert.equal(e.data.error, 'Failed to start agent session. Please try again.', 'the seed text');
    assert.match(e.data.detail, /provider/);
    assert.equal(requestsFor(content).length, 0);

    client.send('command:execute', { conversationId: client.conversationId, command: '/model', args: 'anthropic/claude-sonnet-4-5' });
    const r = (await client.next('command:result')).data;
    assert.equal(r.success, false, JSON.stringify(r));
    assert.match(r.message, /anthropic/);
    assert.match(r.message, /not configured/);

    const fine = `to openai ${uniq()}`;
    const t = await okTurn(client, fine);
    assert.equal(t.info.data.provider, 'openai');
    assert.equal(onlyRequestFor(fine).provider, 'openai');
  });
});
