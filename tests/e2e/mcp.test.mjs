// Agents whose tools come from remote MCP servers, end to end under wrangler dev: the tools reach both providers with their schemas, calls and their results (text, structured content, errors, timeouts, aborts), pagination, JSON and SSE answers, sessions the server forgets, unreachable servers, secret headers, the per-conversation cache of tool lists, and MCP tools that wait for approval across a restart.
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { startFakeUpstream } from '../support/fake-upstream.mjs';
import { PROTOCOL_VERSION, TOOLS, startFakeMcp } from '../support/fake-mcp.mjs';
import { freePort, startGateway, summarizeTurn, uniq } from '../support/harness.mjs';

// Long enough for an abort to arrive first, short enough for the slow tool's timeout to come well before it answers.
const TOOL_TIMEOUT_MS = 3000;
/** The credential the `docs` server needs; it must reach that server and nothing else. */
const MCP_SECRET = `mcp-secret-${randomBytes(8).toString('hex')}`;

let up;
let mcp;
let gw;
/** Agent names by provider, each with an HTTP tool, the `docs` server (JSON) and the `live` server (SSE). */
const agents = {};

/** The exposed names of the fake's tools for server `server`, in listing order. */
const exposedNames = (server) => TOOLS.map((t) => `${server}__${t.name.replace(/[^A-Za-z0-9_-]/g, '_')}`);

const HTTP_TOOL = { name: 'local', description: 'An HTTP tool next to the MCP ones.', url: 'http://127.0.0.1:9/tools/local', parameters: { type: 'object', properties: { q: { type: 'string' } } } };

function mcpServers(url) {
  return [
    { name: 'docs', url: `${url}/mcp`, headers: { Authorization: `Bearer ${MCP_SECRET}`, 'X-Team': 'e2e' } },
    { name: 'live', url: `${url}/mcp?answer=sse` },
  ];
}

before(async () => {
  up = await startFakeUpstream();
  mcp = await startFakeMcp();
  gw = await startGateway({ upstream: up, vars: { TOOL_TIMEOUT_MS: String(TOOL_TIMEOUT_MS) } });
  for (const [provider, model] of [
    ['openai', 'gpt-4o-mini'],
    ['anthropic', 'claude-sonnet-4-5'],
  ]) {
    const name = uniq(`mcp-${provider}`);
    const res = await admin('POST', '/admin/agents', { name, provider, model, public: true, tools: [HTTP_TOOL], mcpServers: mcpServers(mcp.url) });
    assert.equal(res.status, 201, res.text);
    agents[provider] = name;
  }
});

after(async () => {
  await gw?.stop();
  await mcp?.close();
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

/** A new user and conversation with one socket. */
async function fresh() {
  const token = await gw.mintToken(uniq('user'));
  const conversationId = randomUUID();
  const client = await gw.connect({ token, conversationId });
  opened.add(client);
  assert.equal((await client.next(null)).event, 'commands:manifest', client.log.dump());
  return { token, conversationId, client };
}

/** Whether an MCP request went to the `docs` server (the only one sent `X-Team`). */
const toDocs = (r) => r.headers['x-team'] === 'e2e';

/** Every upstream request whose last user text is `content`, in order. */
const requestsFor = (content) => up.requests.filter((r) => r.lastUserText === content);

/** A turn that must end normally, with the MCP requests it caused. */
async function okTurn(client, content, extra) {
  const before = mcp.requests.length;
  const t = await client.turn(content, extra);
  assert.deepEqual(t.errors, [], `no error frames:\n${client.log.dump()}`);
  assert.equal(t.end?.data.stopReason, 'stop', client.log.dump());
  return { ...t, mcpRequests: mcp.requests.slice(before) };
}

/** The tool names and schemas of an upstream request, whatever the provider. */
function toolsOf(request) {
  return (request.body.tools ?? []).map((t) => (t.function ? { name: t.function.name, schema: t.function.parameters, description: t.function.description } : { name: t.name, schema: t.input_schema, description: t.description }));
}

async function storedMessages(token, conversationId) {
  const res = await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token });
  assert.equal(res.status, 200, res.text);
  return Array.isArray(res.json) ? res.json : res.json.messages;
}

/** One tool turn with agent `agentId` (or the agent of a provider): the model calls `name` with `args`; the tool's end event, and what the model got back. */
async function toolTurn(client, agentId, name, args) {
  const content = `${name} ${uniq()} [[tool name=${name} args=${JSON.stringify(args)}]]`;
  const t = await okTurn(client, content, { agentId: agents[agentId] ?? agentId });
  const reqs = requestsFor(content);
  assert.equal(reqs.length, 2, `the model is called again with the result:\n${client.log.dump()}`);
  const [call] = reqs[0].sent.toolCalls;
  assert.equal(t.toolEnds.length, 1, client.log.dump());
  const end = t.toolEnds[0].data;
  assert.equal(end.toolCallId, call.id);
  assert.equal(end.toolName, name);
  const [result] = reqs[1].toolResults;
  assert.equal(result.id, call.id);
  return { t, end, result, call, reqs };
}

describe('listing', () => {
  for (const provider of ['openai', 'anthropic']) {
    test(`${provider}: every page of both servers' tools reaches the model as server__tool with its schema, next to the HTTP tool`, async () => {
      const { client } = await fresh();
      const content = `list ${uniq()}`;
      const t = await okTurn(client, content, { agentId: agents[provider] });
      const [request] = requestsFor(content);
      assert.equal(request.provider, provider);
      const tools = toolsOf(request);
      assert.deepEqual(
        tools.map((x) => x.name),
        ['local', ...exposedNames('docs'), ...exposedNames('live')],
      );
      for (const server of ['docs', 'live']) {
        TOOLS.forEach((tool, k) => {
          const seen = tools.find((x) => x.name === exposedNames(server)[k]);
          assert.deepEqual(seen.schema, tool.inputSchema ?? { type: 'object' }, `${seen.name}'s schema as the server gave it (or the default)`);
          assert.equal(seen.description, tool.description);
        });
      }
      // Each server: a session opened, then three pages of tools/list in it.
      for (const [server, answeredWith] of [
        ['docs', 'json'],
        ['live', 'sse'],
      ]) {
        const reqs = t.mcpRequests.filter((r) => toDocs(r) === (server === 'docs'));
        assert.deepEqual(
          reqs.map((r) => r.method),
          ['initialize', 'notifications/initialized', 'tools/list', 'tools/list', 'tools/list'],
          server,
        );
        const [init, ...rest] = reqs;
        assert.equal(init.params.protocolVersion, PROTOCOL_VERSION);
        assert.deepEqual(init.params.capabilities, {});
        assert.equal(init.params.clientInfo.name, 'edge-chat-gateway');
        assert.equal(init.sessionId, null, 'initialize carries no session id');
        assert.match(init.headers.accept, /application\/json/);
        assert.match(init.headers.accept, /text\/event-stream/);
        assert.match(init.headers['content-type'], /application\/json/);
        const session = init.issuedSession;
        assert.ok(mcp.sessions.has(session), `${server}: the server gave a session`);
        for (const r of rest) {
          assert.equal(r.sessionId, session, `${server} ${r.method}: in the session`);
          assert.equal(r.protocolVersion, PROTOCOL_VERSION, `${server} ${r.method}: MCP-Protocol-Version`);
        }
        assert.deepEqual(rest.slice(1).map((r) => r.params.cursor ?? null), [null, 'page-1', 'page-2']);
        assert.ok(rest.slice(1).every((r) => r.answeredWith === answeredWith), `${server} answers as ${answeredWith}`);
      }
    });
  }

  test('a server that cannot be reached adds no tools and the turn goes on; one that goes away keeps its tools, whose calls fail with a clear error', async () => {
    const flaky = await startFakeMcp();
    const downPort = await freePort();
    const name = uniq('mcp-unreachable');
    const res = await admin('POST', '/admin/agents', {
      name,
      provider: 'openai',
      model: 'gpt-4o-mini',
      mcpServers: [
        { name: 'down', url: `http://127.0.0.1:${downPort}/mcp` },
        { name: 'flaky', url: `${flaky.url}/mcp` },
      ],
    });
    assert.equal(res.status, 201, res.text);
    try {
      const { client } = await fresh();
      const content = `reach ${uniq()}`;
      await okTurn(client, content, { agentId: name });
      assert.deepEqual(toolsOf(requestsFor(content)[0]).map((x) => x.name), exposedNames('flaky'), 'only the reachable server has tools');

      await flaky.close();
      const call = `call ${uniq()} [[tool name=flaky__echo args={"text":"anyone there"}]]`;
      const t = await okTurn(client, call, { agentId: name });
      const reqs = requestsFor(call);
      assert.deepEqual(toolsOf(reqs[0]).map((x) => x.name), exposedNames('flaky'), 'the tools of the last listing stay');
      assert.equal(reqs.length, 2);
      const end = t.toolEnds[0].data;
      assert.equal(end.isError, true);
      assert.match(end.result, /^tool flaky__echo: MCP server "flaky" could not be reached: /);
      assert.equal(reqs[1].toolResults[0].content, end.result, 'the model reads the same error');
    } finally {
      await flaky.close().catch(() => {});
      await admin('DELETE', `/admin/agents/${name}`);
    }
  });
});

describe('calls', () => {
  test('OpenAI: tools/call in the session with the headers; text and structured content reach the model, agent:tool:end and the stored reply', async () => {
    const { client, token, conversationId } = await fresh();
    const { end, result, t } = await toolTurn(client, 'openai', 'docs__echo', { text: 'hello mcp' });
    const call = t.mcpRequests.find((r) => r.method === 'tools/call');
    assert.deepEqual(call.params, { name: 'echo', arguments: { text: 'hello mcp' } });
    assert.ok(mcp.sessions.has(call.sessionId), 'the call runs in the session the listing opened');
    assert.equal(call.protocolVersion, PROTOCOL_VERSION);
    assert.equal(call.headers.authorization, `Bearer ${MCP_SECRET}`);
    assert.equal(call.headers['x-team'], 'e2e');
    const structured = { echoed: 'hello mcp', length: 9 };
    const text = `echo: hello mcp\n${JSON.stringify(structured)}`;
    assert.deepEqual(result, { id: end.toolCallId, name: 'docs__echo', content: text, isError: false });
    assert.deepEqual(end, { conversationId, toolCallId: end.toolCallId, toolName: 'docs__echo', isError: false, result: text, structuredContent: structured });
    const assistant = (await storedMessages(token, conversationId)).at(-1);
    assert.deepEqual(assistant.metadata.toolCalls, [{ toolCallId: end.toolCallId, toolName: 'docs__echo', args: { text: 'hello mcp' }, isError: false, structuredContent: structured }]);
  });

  test('Anthropic: a result whose text carries the structured content reaches the model once', async () => {
    const { client } = await fresh();
    const { end, result } = await toolTurn(client, 'anthropic', 'docs__weather', { city: 'Oslo' });
    const structured = { city: 'Oslo', celsius: 21 };
    assert.equal(result.content, JSON.stringify(structured));
    assert.equal(result.isError, false);
    assert.deepEqual(end.structuredContent, structured);
  });

  test('SSE: the response is read from the event stream (past the server\'s own messages), and the gateway hangs up once it has it', async () => {
    const { client } = await fresh();
    const { end, result, t } = await toolTurn(client, 'openai', 'live__echo', { text: 'over sse' });
    assert.equal(end.isError, false);
    assert.equal(result.content, `echo: over sse\n${JSON.stringify({ echoed: 'over sse', length: 8 })}`);
    const call = t.mcpRequests.find((r) => r.method === 'tools/call');
    assert.equal(call.answeredWith, 'sse');
    // The server keeps the stream open for 30 s; the gateway closes it.
    await mcp.waitForRequest((r) => r === call && r.closedByClient, 5000);
  });

  test('other content is summarized one line each; the sanitized name finds the tool', async () => {
    const { client } = await fresh();
    const { end, result, t } = await toolTurn(client, 'anthropic', 'docs__media_v2', {});
    assert.deepEqual(t.mcpRequests.find((r) => r.method === 'tools/call').params, { name: 'media.v2', arguments: {} });
    assert.equal(end.isError, false);
    assert.deepEqual(result.content.split('\n'), [
      '[image: image/png, 5 bytes, not shown]',
      '[audio: audio/wav, 5 bytes, not shown]',
      '[resource link: notes.txt <file:///notes.txt> (text/plain)]',
      '[embedded resource: <file:///readme.md> (text/markdown), 8 bytes of text, not shown]',
    ]);
  });

  test('an isError result and a JSON-RPC error reach the model as errors, and the turn goes on', async () => {
    const { client } = await fresh();
    const failed = await toolTurn(client, 'anthropic', 'docs__fails', {});
    assert.equal(failed.end.isError, true);
    assert.equal(failed.end.result, 'the fails tool always fails');
    assert.deepEqual([failed.result.content, failed.result.isError], ['the fails tool always fails', true]);
    const thrown = await toolTurn(client, 'openai', 'docs__broken', {});
    const text = 'tool docs__broken: MCP server "docs" answered with JSON-RPC error -32603: broken always throws';
    assert.deepEqual([thrown.end.isError, thrown.end.result, thrown.result.content], [true, text, text]);
    assert.equal(thrown.end.structuredContent, undefined);
  });

  test(`a slow tool times out after TOOL_TIMEOUT_MS (${TOOL_TIMEOUT_MS} ms), and its request is cut`, async () => {
    const { client } = await fresh();
    const started = Date.now();
    const { end, result, t } = await toolTurn(client, 'openai', 'docs__slow', { ms: 12_000 });
    assert.ok(Date.now() - started < 10_000, 'the timeout ends the call before the tool answers');
    const text = `tool docs__slow: MCP server "docs" timed out after ${TOOL_TIMEOUT_MS} ms`;
    assert.deepEqual([end.isError, end.result, result.content], [true, text, text]);
    const call = t.mcpRequests.find((r) => r.method === 'tools/call');
    await mcp.waitForRequest((r) => r === call && r.closedByClient, 5000);
  });

  test('abort during a call hangs up on the server; the call ends as an error and the turn as aborted', async () => {
    const { client, conversationId } = await fresh();
    await okTurn(client, `warm up ${uniq()}`, { agentId: agents.openai });
    const marker = uniq('abort');
    client.log.skipAll();
    client.send('message', { conversationId, content: `${marker} [[tool name=docs__slow args={"ms":12000,"tag":"${marker}"}]]`, agentId: agents.openai });
    const start = await client.next('agent:tool:start', { timeout: 10_000 });
    const call = await mcp.waitForRequest((r) => r.method === 'tools/call' && r.params?.arguments?.tag === marker, 5000);
    client.send('abort', { conversationId });
    const end = await client.next('agent:tool:end', { timeout: 10_000 });
    assert.deepEqual([end.data.toolCallId, end.data.isError, end.data.result], [start.data.toolCallId, true, 'aborted while running']);
    assert.equal((await client.next('agent:end', { timeout: 10_000 })).data.stopReason, 'aborted');
    await mcp.waitForRequest((r) => r === call && r.closedByClient, 5000);
  });

  test('a session the server forgot is opened again and the call goes through', async () => {
    const { client } = await fresh();
    await okTurn(client, `open a session ${uniq()}`, { agentId: agents.openai });
    mcp.forgetSessions();
    const { end, t } = await toolTurn(client, 'openai', 'docs__echo', { text: 'again' });
    assert.equal(end.isError, false, end.result);
    const docs = t.mcpRequests.filter(toDocs);
    assert.deepEqual(
      docs.map((r) => [r.method, r.status]),
      [
        ['tools/call', 404],
        ['initialize', 200],
        ['notifications/initialized', 202],
        ['tools/call', 200],
      ],
    );
    assert.equal(docs[1].sessionId, null, 'initialize again, without the forgotten id');
    assert.notEqual(docs[1].issuedSession, docs[0].sessionId);
    assert.equal(docs[2].sessionId, docs[1].issuedSession);
    assert.equal(docs[3].sessionId, docs[1].issuedSession, 'the call again, in the new session');
  });
});

describe('secrets and the cache', () => {
  test('MCP headers reach their server only: not GET /admin/agents, not the model; an agent holding them is private by default', async () => {
    const listing = await admin('GET', '/admin/agents');
    assert.equal(listing.status, 200);
    assert.ok(!listing.text.includes(MCP_SECRET), 'the admin listing hides header values');
    const agent = listing.json.agents.find((a) => a.agent.name === agents.openai).agent;
    assert.deepEqual(agent.mcpServers[0].headers, { Authorization: '********', 'X-Team': '********' });
    assert.equal(agent.mcpServers[1].headers, undefined);
    assert.ok(up.requests.length > 0);
    assert.ok(up.requests.every((r) => !JSON.stringify(r.body).includes(MCP_SECRET)), 'no model request carries the secret');
    const docs = mcp.requests.filter(toDocs);
    assert.ok(docs.length > 0 && docs.every((r) => r.headers.authorization === `Bearer ${MCP_SECRET}`));
    assert.ok(mcp.requests.filter((r) => !toDocs(r)).every((r) => r.headers.authorization === undefined), 'the live server gets no credential');

    const name = uniq('mcp-private');
    const res = await admin('POST', '/admin/agents', { name, mcpServers: mcpServers(mcp.url) });
    assert.equal(res.status, 201, res.text);
    const { client } = await fresh();
    client.send('message', { conversationId: client.conversationId, content: `may I ${uniq()}`, agentId: name });
    assert.equal((await client.next('error')).data.code, 'unknown_agent', client.log.dump());

    // The listing sent back as it is (an admin editing one field) keeps the secrets, not the mask.
    const listed = (await admin('GET', '/admin/agents')).json.agents.find((a) => a.agent.name === name);
    const put = await admin('PUT', `/admin/agents/${listed.id}`, { ...listed.agent, public: true });
    assert.equal(put.status, 201, put.text);
    const after = await gw.http('GET', '/admin/agents', { token: gw.adminToken });
    assert.ok(!after.text.includes(MCP_SECRET));
    const before = mcp.requests.length;
    await okTurn((await fresh()).client, `with the kept secret ${uniq()}`, { agentId: name });
    const sent = mcp.requests.slice(before).filter(toDocs);
    assert.ok(sent.length > 0 && sent.every((r) => r.headers.authorization === `Bearer ${MCP_SECRET}`), 'the stored secret, not the mask, reaches the server');
    const masked = await admin('POST', '/admin/agents', { ...listed.agent, name: uniq('copy') });
    assert.equal(masked.status, 400, 'a mask with no stored secret behind it is refused');
    assert.match(masked.json.error, /mask/);
    await admin('DELETE', `/admin/agents/${listed.id}`);
  });

  test('bad mcpServers are refused with the reason', async () => {
    const refused = async (mcpServers, pattern) => {
      const res = await admin('POST', '/admin/agents', { name: uniq('bad'), mcpServers });
      assert.equal(res.status, 400, res.text);
      assert.match(res.json.error, pattern);
    };
    await refused([{ name: 'a__b', url: `${mcp.url}/mcp` }], /without "__"/);
    await refused([{ name: 'docs', url: 'file:///etc/passwd' }], /url must be http\(s\)/);
    await refused([{ name: 'docs', url: `${mcp.url}/mcp`, headers: { 'Mcp-Session-Id': 'x' } }], /set by the gateway/);
    await refused(Array.from({ length: 9 }, (_, k) => ({ name: `s${k}`, url: `${mcp.url}/mcp` })), /at most 8 mcpServers/);
  });

  test('a conversation lists once: the next turn asks the server nothing; an agent change lists again (in the same session)', async () => {
    const name = uniq('mcp-cache');
    const body = { name, provider: 'openai', model: 'gpt-4o-mini', public: true, systemPrompt: 'First.', mcpServers: [mcpServers(mcp.url)[0]] };
    const created = await admin('POST', '/admin/agents', body);
    assert.equal(created.status, 201, created.text);
    try {
      const { client } = await fresh();
      const first = await okTurn(client, `one ${uniq()}`, { agentId: name });
      assert.deepEqual(first.mcpRequests.map((r) => r.method), ['initialize', 'notifications/initialized', 'tools/list', 'tools/list', 'tools/list']);
      const session = first.mcpRequests[2].sessionId;
      const second = await okTurn(client, `two ${uniq()}`, { agentId: name });
      assert.deepEqual(second.mcpRequests, [], 'cached: no request at all');
      const changed = await admin('PUT', `/admin/agents/${created.json.id}`, { ...body, systemPrompt: 'Second.' });
      assert.equal(changed.status, 201, changed.text);
      const third = await okTurn(client, `three ${uniq()}`, { agentId: name });
      assert.deepEqual(third.mcpRequests.map((r) => [r.method, r.sessionId]), [
        ['tools/list', session],
        ['tools/list', session],
        ['tools/list', session],
      ]);
    } finally {
      await admin('DELETE', `/admin/agents/${name}`);
    }
  });
});

// Last: it restarts wrangler dev.
describe('approval', () => {
  test("a server's named tool waits for approval, also across a restart, then runs in a new session; its other tools do not ask", async () => {
    const name = uniq('mcp-asking');
    const docs = { ...mcpServers(mcp.url)[0], requiresApproval: ['echo'] };
    const res = await admin('POST', '/admin/agents', { name, provider: 'openai', model: 'gpt-4o-mini', public: true, mcpServers: [docs] });
    assert.equal(res.status, 201, res.text);
    const { client, token, conversationId } = await fresh();
    const free = await toolTurn(client, name, 'docs__weather', { city: 'Rome' });
    assert.equal(free.end.isError, false);
    assert.ok(!free.t.frames.some((f) => f.event === 'agent:tool:approval'), 'a tool the rule does not name runs at once');

    const marker = uniq('approve');
    client.log.skipAll();
    client.send('message', { conversationId, agentId: name, content: `${marker} [[tool name=docs__echo args={"text":"${marker}"}]]` });
    const question = (await client.until('agent:tool:approval', { timeout: 20_000 })).at(-1);
    assert.deepEqual([question.data.toolName, question.data.args], ['docs__echo', { text: marker }]);
    const calls = () => mcp.requests.filter((r) => r.method === 'tools/call' && r.params?.arguments?.text === marker);
    assert.equal(calls().length, 0, 'nothing runs before the answer');

    await gw.restart({ hard: true });
    await client.closed;
    const back = await gw.connect({ token, conversationId, lastSeq: question.seq });
    opened.add(back);
    assert.equal((await back.next(null)).event, 'commands:manifest');
    const again = await back.next('agent:tool:approval', { timeout: 20_000 });
    assert.equal(again.data.toolCallId, question.data.toolCallId);
    const sent = mcp.requests.length;
    back.send('tool:approve', { conversationId, toolCallId: question.data.toolCallId, approved: true });
    const t = summarizeTurn(await back.until('agent:end', { timeout: 20_000 }));
    assert.equal(t.end.data.stopReason, 'stop', back.log.dump());
    const text = `echo: ${marker}\n${JSON.stringify({ echoed: marker, length: marker.length })}`;
    assert.deepEqual(t.toolEnds.map((f) => [f.data.toolCallId, f.data.isError, f.data.result]), [[question.data.toolCallId, false, text]]);
    // The restarted object knows no session: it opens one, then calls the tool by its own name.
    assert.deepEqual(
      mcp.requests.slice(sent).map((r) => [r.method, r.params?.name ?? null]),
      [
        ['initialize', null],
        ['notifications/initialized', null],
        ['tools/call', 'echo'],
      ],
    );
    assert.equal(calls().length, 1, 'the approved call ran once');
    await admin('DELETE', `/admin/agents/${name}`);
  });
});
