// Self-test of the fakes (no gateway needed): every scenario of the fake upstream, every tool and the fake MCP server, checked byte by byte over real HTTP. Run: node --test tests/support/selftest.mjs
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDirectives, preciseNow, splitInto, startFakeUpstream } from './fake-upstream.mjs';
import { startToolServer } from './tool-server.mjs';
import { PAGE_SIZE, PROTOCOL_VERSION, TOOLS, startFakeMcp } from './fake-mcp.mjs';

/** Splits an SSE body into events exactly as a client must: blocks end with a blank line; `event:` and `data:` fields. */
function parseSse(raw) {
  assert.ok(raw === '' || raw.endsWith('\n\n'), `an SSE body ends with a blank line: ${JSON.stringify(raw.slice(-40))}`);
  return raw
    .split('\n\n')
    .filter((block) => block !== '')
    .map((block) => {
      const event = { event: null, data: '' };
      for (const line of block.split('\n')) {
        const [field, ...rest] = line.split(': ');
        if (field === 'event') event.event = rest.join(': ');
        else if (field === 'data') event.data += rest.join(': ');
        else assert.fail(`unexpected SSE line ${JSON.stringify(line)}`);
      }
      return event;
    });
}

let up;
let openaiUrl;
let anthropicUrl;
before(async () => {
  up = await startFakeUpstream();
  openaiUrl = `${up.url}/v1/chat/completions`;
  anthropicUrl = `${up.url}/v1/messages`;
});
after(() => up.close());

const OPENAI_HEADERS = { 'content-type': 'application/json', authorization: 'Bearer test-openai-key' };
const ANTHROPIC_HEADERS = { 'content-type': 'application/json', 'x-api-key': 'test-anthropic-key', 'anthropic-version': '2023-06-01' };

function openai(content, { messages, stream = true, includeUsage = true, signal, headers = OPENAI_HEADERS } = {}) {
  const body = {
    model: 'gpt-4o-mini',
    stream,
    ...(stream && includeUsage ? { stream_options: { include_usage: true } } : {}),
    messages: messages ?? [{ role: 'system', content: 'be brief' }, { role: 'user', content }],
  };
  return fetch(openaiUrl, { method: 'POST', headers, body: JSON.stringify(body), signal });
}

function anthropic(content, { messages, stream = true, signal, headers = ANTHROPIC_HEADERS } = {}) {
  const body = { model: 'claude-sonnet-4-5', max_tokens: 1024, stream, system: 'be brief', messages: messages ?? [{ role: 'user', content }] };
  return fetch(anthropicUrl, { method: 'POST', headers, body: JSON.stringify(body), signal });
}

const chunksOf = (events) => events.filter((e) => e.data !== '[DONE]').map((e) => JSON.parse(e.data));
const contentOf = (chunks) => chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
const lastRecord = () => up.requests.at(-1);

describe('directive syntax', () => {
  test('parses name, bare words, quoted strings and JSON values with spaces', () => {
    const { directives, stripped } = parseDirectives('hello [[slow delay=200 deltas=20]] and [[tool name=add args={"a": 1, "b": [2, 3]} note="x y"]]!');
    assert.deepEqual(directives, [
      { name: 'slow', params: { delay: '200', deltas: '20' } },
      { name: 'tool', params: { name: 'add', args: '{"a": 1, "b": [2, 3]}', note: 'x y' } },
    ]);
    assert.equal(stripped, 'hello and !');
  });

  test('leaves unclosed or malformed brackets as text', () => {
    const { directives, stripped } = parseDirectives('a [[ b [[cut after]] c [[reset');
    assert.deepEqual(directives, []);
    assert.equal(stripped, 'a [[ b [[cut after]] c [[reset');
  });

  test('splitInto gives n non-empty pieces that join back', () => {
    assert.deepEqual(splitInto('abcdefghij', 3), ['abc', 'def', 'ghij']);
    assert.deepEqual(splitInto('ab', 4), ['a', 'b', '.', '.']);
  });
});

describe('OpenAI Chat Completions', () => {
  test('default: role chunk, 5 content deltas, finish, usage chunk, [DONE], each as `data: ...\\n\\n`', async () => {
    const res = await openai('hello there');
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'text/event-stream; charset=utf-8');
    const raw = await res.text();
    assert.match(raw, /^data: \{"id":"chatcmpl-fake\d+","object":"chat.completion.chunk","created":\d+,"model":"gpt-4o-mini","system_fingerprint":"fp_fake","choices":\[\{"index":0,"delta":\{"role":"assistant","content":"","refusal":null\},"logprobs":null,"finish_reason":null\}\],"usage":null\}\n\n/);
    assert.ok(raw.endsWith('\n\ndata: [DONE]\n\n'));
    const events = parseSse(raw);
    assert.ok(events.every((e) => e.event === null));
    const chunks = chunksOf(events);
    const deltas = chunks.filter((c) => c.choices[0]?.delta?.content);
    assert.equal(deltas.length, 5);
    assert.equal(contentOf(chunks), 'You said: hello there');
    assert.equal(chunks.at(-2).choices[0].finish_reason, 'stop');
    assert.deepEqual(chunks.at(-1).choices, []);
    assert.deepEqual(chunks.at(-1).usage, {
      prompt_tokens: 12,
      completion_tokens: 5,
      total_tokens: 17,
      prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
      completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
    });
    const rec = lastRecord();
    assert.equal(rec.provider, 'openai');
    assert.equal(rec.sent.text, 'You said: hello there');
    assert.deepEqual(rec.sent.tokens, { input: 12, output: 5, cacheRead: 0, cacheWrite: 0, total: 17 });
    assert.equal(rec.sent.complete, true);
    assert.equal(rec.closedByClient, false);
    assert.equal(rec.headers.authorization, 'Bearer test-openai-key');
  });

  test('without stream_options.include_usage there is no usage anywhere', async () => {
    const raw = await (await openai('no usage please', { includeUsage: false })).text();
    const chunks = chunksOf(parseSse(raw));
    assert.ok(chunks.every((c) => !('usage' in c)));
    assert.ok(chunks.every((c) => c.choices.length === 1));
    assert.equal(lastRecord().sent.usage, null);
  });

  test('a wrong or missing key gets 401 with the documented error body', async () => {
    const wrong = await openai('x', { headers: { ...OPENAI_HEADERS, authorization: 'Bearer nope' } });
    assert.equal(wrong.status, 401);
    const body = await wrong.json();
    assert.deepEqual(Object.keys(body.error), ['message', 'type', 'param', 'code']);
    assert.equal(body.error.code, 'invalid_api_key');
    const missing = await openai('x', { headers: { 'content-type': 'application/json' } });
    assert.equal(missing.status, 401);
    assert.match((await missing.json()).error.message, /didn't provide an API key/);
  });

  test('non-streaming request gets one chat.completion object', async () => {
    const body = await (await openai('whole please', { stream: false })).json();
    assert.equal(body.object, 'chat.completion');
    assert.equal(body.choices[0].message.content, 'You said: whole please');
    assert.equal(body.usage.total_tokens, 17);
  });
});

describe('Anthropic Messages', () => {
  test('default: the documented event sequence, each `event: X\\ndata: {"type":"X",...}`', async () => {
    const res = await anthropic('hello claude');
    assert.equal(res.status, 200);
    const raw = await res.text();
    const events = parseSse(raw);
    assert.deepEqual(
      events.map((e) => e.event),
      ['message_start', 'content_block_start', 'ping', ...Array(5).fill('content_block_delta'), 'content_block_stop', 'message_delta', 'message_stop'],
    );
    const data = events.map((e) => JSON.parse(e.data));
    data.forEach((d, k) => assert.equal(d.type, events[k].event));
    assert.deepEqual(data[0].message.usage, { input_tokens: 11, cache_creation_input_tokens: 0, cache_read_input_tokens: 0, output_tokens: 1 });
    assert.deepEqual(data[1], { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } });
    assert.equal(data.slice(3, 8).map((d) => d.delta.text).join(''), 'You said: hello claude');
    assert.ok(data.slice(3, 8).every((d) => d.delta.type === 'text_delta' && d.index === 0));
    assert.deepEqual(data[9], { type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: 5 } });
    assert.deepEqual(lastRecord().sent.tokens, { input: 11, output: 5, cacheRead: 0, cacheWrite: 0, total: 16 });
  });

  test('a wrong key gets 401 authentication_error; a missing anthropic-version gets 400', async () => {
    const wrong = await anthropic('x', { headers: { ...ANTHROPIC_HEADERS, 'x-api-key': 'nope' } });
    assert.equal(wrong.status, 401);
    assert.deepEqual(await wrong.json(), { type: 'error', error: { type: 'authentication_error', message: 'invalid x-api-key' }, request_id: 'req_fake401' });
    const { 'anthropic-version': _omitted, ...noVersion } = ANTHROPIC_HEADERS;
    const missing = await anthropic('x', { headers: noVersion });
    assert.equal(missing.status, 400);
    assert.equal((await missing.json()).error.message, 'anthropic-version: header is required');
  });

  test('non-streaming request gets one message object', async () => {
    const body = await (await anthropic('whole please', { stream: false })).json();
    assert.equal(body.type, 'message');
    assert.deepEqual(body.content, [{ type: 'text', text: 'You said: whole please' }]);
    assert.equal(body.stop_reason, 'end_turn');
  });
});

describe('scenarios', () => {
  test('slow: the requested number of deltas, spaced by the delay', async () => {
    const started = Date.now();
    const chunks = chunksOf(parseSse(await (await openai('tick [[slow delay=60 deltas=6]]')).text()));
    assert.ok(Date.now() - started >= 5 * 60 - 5, 'five gaps of 60 ms');
    assert.equal(chunks.filter((c) => c.choices[0]?.delta?.content).length, 6);
    assert.equal(contentOf(chunks), 'You said: tick');
    const at = lastRecord().sent.deltas.map((d) => d.at);
    for (let k = 1; k < at.length; k++) assert.ok(at[k] - at[k - 1] >= 55, `gap ${k} is ${at[k] - at[k - 1]} ms`);
  });

  test('thinking (OpenAI): reasoning_content deltas first, counted as reasoning tokens', async () => {
    const chunks = chunksOf(parseSse(await (await openai('ponder [[thinking]]')).text()));
    const reasoning = chunks.map((c) => c.choices[0]?.delta?.reasoning_content ?? '').join('');
    assert.equal(reasoning, 'Let me think about "ponder".');
    const firstText = chunks.findIndex((c) => c.choices[0]?.delta?.content);
    const lastReasoning = chunks.findLastIndex((c) => c.choices[0]?.delta?.reasoning_content);
    assert.ok(lastReasoning < firstText);
    assert.equal(contentOf(chunks), 'You said: ponder');
    assert.equal(chunks.at(-1).usage.completion_tokens_details.reasoning_tokens, 3);
    assert.equal(chunks.at(-1).usage.completion_tokens, 8);
    assert.equal(lastRecord().sent.thinking, reasoning);
  });

  test('thinking style=openrouter: delta.reasoning', async () => {
    const chunks = chunksOf(parseSse(await (await openai('ponder [[thinking style=openrouter steps=2]]')).text()));
    assert.equal(chunks.filter((c) => c.choices[0]?.delta?.reasoning).length, 2);
    assert.equal(chunks.map((c) => c.choices[0]?.delta?.reasoning ?? '').join(''), 'Let me think about "ponder".');
    assert.ok(chunks.every((c) => !('reasoning_content' in (c.choices[0]?.delta ?? {}))));
  });

  test('thinking (Anthropic): a thinking block with thinking_delta and signature_delta, then the text block', async () => {
    const events = parseSse(await (await anthropic('ponder [[thinking]]')).text());
    const data = events.map((e) => JSON.parse(e.data));
    assert.deepEqual(data[1], { type: 'content_block_start', index: 0, content_block: { type: 'thinking', thinking: '' } });
    const thinking = data.filter((d) => d.delta?.type === 'thinking_delta');
    assert.equal(thinking.map((d) => d.delta.thinking).join(''), 'Let me think about "ponder".');
    const signature = data.find((d) => d.delta?.type === 'signature_delta');
    assert.equal(signature.index, 0);
    assert.equal(signature.delta.signature, lastRecord().sent.signature);
    assert.ok(data.indexOf(signature) > data.indexOf(thinking.at(-1)));
    const textStart = data.find((d) => d.type === 'content_block_start' && d.index === 1);
    assert.deepEqual(textStart.content_block, { type: 'text', text: '' });
    assert.equal(data.filter((d) => d.delta?.type === 'text_delta').map((d) => d.delta.text).join(''), 'You said: ponder');
  });

  test('tool (OpenAI): streamed tool call, then an answer carrying the tool result', async () => {
    const content = 'add them [[tool name=add args={"a": 2, "b": 3}]]';
    const chunks = chunksOf(parseSse(await (await openai(content)).text()));
    const first = chunks[0].choices[0].delta;
    assert.equal(first.role, 'assistant');
    assert.equal(first.content, null);
    assert.deepEqual(first.tool_calls[0].function, { name: 'add', arguments: '' });
    const pieces = chunks.slice(1).map((c) => c.choices[0]?.delta?.tool_calls?.[0]?.function?.arguments).filter(Boolean);
    assert.equal(pieces.length, 3);
    assert.equal(pieces.join(''), '{"a": 2, "b": 3}');
    assert.equal(chunks.at(-2).choices[0].finish_reason, 'tool_calls');
    const callId = first.tool_calls[0].id;
    assert.deepEqual(lastRecord().sent.toolCalls, [{ id: callId, name: 'add', arguments: '{"a": 2, "b": 3}' }]);

    const messages = [
      { role: 'user', content },
      { role: 'assistant', content: null, tool_calls: [{ id: callId, type: 'function', function: { name: 'add', arguments: '{"a": 2, "b": 3}' } }] },
      { role: 'tool', tool_call_id: callId, content: '{"sum":5}' },
    ];
    const answer = chunksOf(parseSse(await (await openai(null, { messages })).text()));
    assert.equal(contentOf(answer), 'Tool add returned {"sum":5}');
    assert.deepEqual(lastRecord().toolResults, [{ id: callId, name: 'add', content: '{"sum":5}', isError: false }]);
  });

  test('tool count=2 (OpenAI): two parallel calls with indices 0 and 1 and distinct arguments', async () => {
    const chunks = chunksOf(parseSse(await (await openai('both [[tool name=echo args={"x":1} count=2]]')).text()));
    const calls = new Map();
    for (const c of chunks) {
      for (const t of c.choices[0]?.delta?.tool_calls ?? []) {
        const entry = calls.get(t.index) ?? { id: t.id, args: '' };
        entry.args += t.function.arguments;
        calls.set(t.index, entry);
      }
    }
    assert.deepEqual([...calls.keys()], [0, 1]);
    assert.deepEqual(JSON.parse(calls.get(0).args), { x: 1, call: 0 });
    assert.deepEqual(JSON.parse(calls.get(1).args), { x: 1, call: 1 });
    assert.notEqual(calls.get(0).id, calls.get(1).id);
  });

  test('tool (Anthropic): a tool_use block with input_json_delta, then an answer from the tool_result', async () => {
    const content = 'echo it [[tool name=echo args={"text":"hi there"}]]';
    const data = parseSse(await (await anthropic(content)).text()).map((e) => JSON.parse(e.data));
    const start = data.find((d) => d.type === 'content_block_start');
    assert.equal(start.content_block.type, 'tool_use');
    assert.equal(start.content_block.name, 'echo');
    assert.deepEqual(start.content_block.input, {});
    const json = data.filter((d) => d.delta?.type === 'input_json_delta').map((d) => d.delta.partial_json);
    assert.equal(json[0], '');
    assert.equal(json.join(''), '{"text":"hi there"}');
    assert.equal(data.find((d) => d.type === 'message_delta').delta.stop_reason, 'tool_use');

    const messages = [
      { role: 'user', content },
      { role: 'assistant', content: [{ type: 'tool_use', id: start.content_block.id, name: 'echo', input: { text: 'hi there' } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: start.content_block.id, content: '{"echo":{"text":"hi there"}}' }] },
    ];
    const answer = parseSse(await (await anthropic(null, { messages })).text()).map((e) => JSON.parse(e.data));
    assert.equal(answer.filter((d) => d.delta?.type === 'text_delta').map((d) => d.delta.text).join(''), 'Tool echo returned {"echo":{"text":"hi there"}}');
  });

  test('tool_loop: asks for the tool again even after a result', async () => {
    const content = 'forever [[tool_loop name=echo]]';
    const messages = [
      { role: 'user', content },
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'echo', arguments: '{}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: '{}' },
    ];
    const chunks = chunksOf(parseSse(await (await openai(null, { messages })).text()));
    assert.equal(chunks.at(-2).choices[0].finish_reason, 'tool_calls');
    assert.equal(lastRecord().sent.toolCalls.length, 1);
    assert.notEqual(lastRecord().sent.toolCalls[0].id, 'call_1');
  });

  test('cache (OpenAI): cached tokens are part of prompt_tokens', async () => {
    const chunks = chunksOf(parseSse(await (await openai('again [[cache read=100]]')).text()));
    const usage = chunks.at(-1).usage;
    assert.equal(usage.prompt_tokens, 112);
    assert.equal(usage.prompt_tokens_details.cached_tokens, 100);
    assert.equal(usage.total_tokens, 117);
    assert.deepEqual(lastRecord().sent.tokens, { input: 12, output: 5, cacheRead: 100, cacheWrite: 0, total: 117 });
  });

  test('cache (Anthropic): cache read and write tokens in message_start', async () => {
    const data = parseSse(await (await anthropic('again [[cache read=100 write=30]]')).text()).map((e) => JSON.parse(e.data));
    assert.deepEqual(data[0].message.usage, { input_tokens: 11, cache_creation_input_tokens: 30, cache_read_input_tokens: 100, output_tokens: 1 });
    assert.deepEqual(lastRecord().sent.tokens, { input: 11, output: 5, cacheRead: 100, cacheWrite: 30, total: 146 });
  });

  test('length: finish_reason length / stop_reason max_tokens', async () => {
    const chunks = chunksOf(parseSse(await (await openai('long [[length]]')).text()));
    assert.equal(chunks.at(-2).choices[0].finish_reason, 'length');
    const data = parseSse(await (await anthropic('long [[length]]')).text()).map((e) => JSON.parse(e.data));
    assert.equal(data.find((d) => d.type === 'message_delta').delta.stop_reason, 'max_tokens');
  });

  for (const code of [400, 401, 429, 500, 503, 529]) {
    test(`status code=${code}: both body shapes, retry-after when asked`, async () => {
      const a = await openai(`fail [[status code=${code} retry_after=1]]`);
      assert.equal(a.status, code);
      assert.equal(a.headers.get('retry-after'), '1');
      const aBody = await a.json();
      assert.deepEqual(Object.keys(aBody.error), ['message', 'type', 'param', 'code']);
      const b = await anthropic(`fail [[status code=${code}]]`);
      assert.equal(b.status, code);
      assert.equal(b.headers.get('retry-after'), null);
      const bBody = await b.json();
      assert.equal(bBody.type, 'error');
      assert.equal(typeof bBody.error.type, 'string');
      assert.equal(typeof bBody.error.message, 'string');
      if (code === 529) assert.deepEqual(bBody.error, { type: 'overloaded_error', message: 'Overloaded' });
      if (code === 429) assert.equal(aBody.error.code, 'rate_limit_exceeded');
    });
  }

  test('status message=... endless=1: the given message in the error body; an error body that never ends', async () => {
    const a = await openai('fail [[status code=429 message="Quota of org-Abc123 exceeded"]]');
    assert.equal(a.status, 429);
    assert.equal((await a.json()).error.message, 'Quota of org-Abc123 exceeded');
    const abort = new AbortController();
    const b = await openai('fail [[status code=400 endless=1]]', { signal: abort.signal });
    assert.equal(b.status, 400);
    const reader = b.body.getReader();
    let bytes = 0;
    while (bytes < 1024 * 1024) bytes += (await reader.read()).value.length;
    abort.abort();
    assert.ok(bytes >= 1024 * 1024, 'more than a mebibyte and still going');
  });

  test('context: a 400 that says the prompt is too long, per provider', async () => {
    const a = await openai('huge [[context]]');
    assert.equal(a.status, 400);
    assert.equal((await a.json()).error.code, 'context_length_exceeded');
    const b = await anthropic('huge [[context]]');
    assert.equal(b.status, 400);
    assert.match((await b.json()).error.message, /^prompt is too long/);
  });

  test('reset: the socket is destroyed before any byte', async () => {
    await assert.rejects(openai('boom [[reset]]'), (err) => err.cause?.code === 'ECONNRESET' || /other side closed|socket/i.test(String(err.cause?.message)));
    assert.equal(lastRecord().sent.status, null);
    assert.equal(lastRecord().closedByClient, false);
  });

  test('cut after=3: three deltas, then a clean end with no finish chunk and no [DONE]', async () => {
    const raw = await (await openai('short [[cut after=3]]')).text();
    const events = parseSse(raw);
    assert.ok(!raw.includes('[DONE]'));
    const chunks = chunksOf(events);
    assert.equal(chunks.filter((c) => c.choices[0]?.delta?.content).length, 3);
    assert.ok(chunks.every((c) => c.choices[0].finish_reason === null));
    assert.equal(lastRecord().sent.complete, false);
    const data = parseSse(await (await anthropic('short [[cut after=3]]')).text()).map((e) => JSON.parse(e.data));
    assert.equal(data.filter((d) => d.delta?.type === 'text_delta').length, 3);
    assert.ok(!data.some((d) => d.type === 'message_stop' || d.type === 'message_delta'));
  });

  test('cut abrupt=1: the connection is destroyed mid-body', async () => {
    const res = await openai('short [[cut after=2 abrupt=1]]');
    assert.equal(res.status, 200);
    await assert.rejects(res.text());
  });

  test('stall after=2: two deltas, then silence with the connection open; an abort is recorded', async () => {
    const abort = new AbortController();
    const res = await openai('wait [[stall after=2]]', { signal: abort.signal });
    const reader = res.body.getReader();
    let text = '';
    const decoder = new TextDecoder();
    while ((text.match(/"content":"[^"]/g) ?? []).length < 2) text += decoder.decode((await reader.read()).value);
    const more = await Promise.race([reader.read().then(() => 'data'), new Promise((r) => setTimeout(() => r('silence'), 300))]);
    assert.equal(more, 'silence');
    const rec = lastRecord();
    assert.equal(rec.stalled, true);
    assert.equal(rec.closedByClient, false);
    abort.abort();
    const closed = await up.waitForClientClose((r) => r === rec, 2000);
    assert.equal(closed.closedByClient, true);
    assert.ok(closed.closedAt >= closed.receivedAt);
  });

  test('malformed: a data line that is not JSON, then the body ends (rest=1 goes on to the end marker)', async () => {
    const raw = await (await openai('bad [[malformed]]')).text();
    const events = parseSse(raw);
    assert.throws(() => JSON.parse(events.at(-1).data));
    assert.equal(events.length, 4, 'role chunk, two deltas, the broken line');
    const rest = await (await openai('bad [[malformed rest=1]]')).text();
    assert.ok(rest.endsWith('data: [DONE]\n\n'));
    const anthropicRaw = await (await anthropic('bad [[malformed after=1]]')).text();
    assert.throws(() => JSON.parse(parseSse(anthropicRaw).at(-1).data));
  });

  test('stream_error: an error inside a 200 stream after two deltas, per provider', async () => {
    const events = parseSse(await (await openai('oops [[stream_error]]')).text());
    const last = JSON.parse(events.at(-1).data);
    assert.deepEqual(Object.keys(last.error), ['message', 'type', 'param', 'code']);
    assert.equal(chunksOf(events.slice(0, -1)).filter((c) => c.choices[0]?.delta?.content).length, 2);
    const aEvents = parseSse(await (await anthropic('oops [[stream_error]]')).text());
    assert.equal(aEvents.at(-1).event, 'error');
    assert.deepEqual(JSON.parse(aEvents.at(-1).data), { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } });
  });

  test('anthropic prefill: the answer goes on from a final assistant message; trailing whitespace or thinking is a 400', async () => {
    const user = { role: 'user', content: 'go on [[slow deltas=6 delay=0]]' };
    const text = async (res) => parseSse(await res.text()).map((e) => JSON.parse(e.data)).filter((d) => d.delta?.type === 'text_delta').map((d) => d.delta.text).join('');
    const full = await text(await anthropic(null, { messages: [user] }));
    assert.equal(full, 'You said: go on');
    const rest = await text(await anthropic(null, { messages: [user, { role: 'assistant', content: [{ type: 'text', text: 'You said:' }] }] }));
    assert.equal(rest, ' go on');
    assert.equal(lastRecord().prefill, 'You said:');
    const spaced = await anthropic(null, { messages: [user, { role: 'assistant', content: 'You said: ' }] });
    assert.equal(spaced.status, 400);
    assert.match((await spaced.json()).error.message, /trailing whitespace/);
    const body = { model: 'claude-sonnet-4-5', max_tokens: 2048, stream: true, thinking: { type: 'enabled', budget_tokens: 1024 }, messages: [user, { role: 'assistant', content: 'You said:' }] };
    const thinking = await fetch(anthropicUrl, { method: 'POST', headers: ANTHROPIC_HEADERS, body: JSON.stringify(body) });
    assert.equal(thinking.status, 400);
  });

  test('flaky code=503 times=2: two failures for this content, then success; other content is unaffected', async () => {
    const content = `retry me ${Math.random()} [[flaky code=503 times=2 retry_after=0]]`;
    assert.equal((await openai(content)).status, 503);
    assert.equal((await openai('unrelated [[flaky times=1]]')).status, 503);
    const second = await openai(content);
    assert.equal(second.status, 503);
    assert.equal(second.headers.get('retry-after'), '0');
    const third = await openai(content);
    assert.equal(third.status, 200);
    assert.match(contentOf(chunksOf(parseSse(await third.text()))), /^You said: retry me/);
  });

  test('big size=300000: one huge reply of exactly that many characters', async () => {
    const chunks = chunksOf(parseSse(await (await openai('much [[big size=300000]]')).text()));
    const text = contentOf(chunks);
    assert.equal(text.length, 300000);
    assert.equal(lastRecord().sent.text, text);
  });

  test('stamped: each delta is its send time', async () => {
    const before = preciseNow();
    const chunks = chunksOf(parseSse(await (await openai('time [[stamped deltas=20 delay=2]]')).text()));
    const stamps = chunks.map((c) => c.choices[0]?.delta?.content).filter(Boolean);
    assert.equal(stamps.length, 20);
    const times = stamps.map((s) => Number(/^<t=(\d+\.\d{3})>$/.exec(s)[1]));
    assert.ok(times[0] >= before && times.at(-1) <= preciseNow());
    for (let k = 1; k < times.length; k++) assert.ok(times[k] > times[k - 1]);
    assert.deepEqual(lastRecord().sent.deltas.map((d) => d.text), stamps);
  });

  test('waitForRequest resolves for a request that arrives later, and rejects with what it saw', async () => {
    const waiting = up.waitForRequest((r) => r.lastUserText === 'later', 2000);
    await (await openai('later')).text();
    assert.equal((await waiting).lastUserText, 'later');
    await assert.rejects(up.waitForRequest((r) => r.lastUserText === 'never', 50), /no matching request within 50 ms/);
  });
});

describe('tool server', () => {
  let tools;
  before(async () => {
    tools = await startToolServer({ secret: 's3cret' });
  });
  after(() => tools.close());

  const call = (name, args, headers = {}, signal) =>
    fetch(`${tools.url}/tools/${name}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(args), signal });

  test('echo answers its arguments; add sums; unknown tools are 404', async () => {
    assert.deepEqual(await (await call('echo', { text: 'hi' })).json(), { echo: { text: 'hi' } });
    assert.deepEqual(await (await call('add', { a: 2, b: 40 })).json(), { sum: 42 });
    assert.equal((await call('add', { a: '2', b: 40 })).status, 400);
    assert.equal((await call('nope', {})).status, 404);
    assert.deepEqual(tools.calls.slice(0, 2).map((c) => [c.name, c.body, c.status]), [
      ['echo', { text: 'hi' }, 200],
      ['add', { a: 2, b: 40 }, 200],
    ]);
  });

  test('fail is 500; secret needs the bearer token', async () => {
    assert.equal((await call('fail', {})).status, 500);
    assert.equal((await call('secret', {})).status, 401);
    assert.equal((await call('secret', {}, { authorization: 'Bearer wrong' })).status, 401);
    assert.deepEqual(await (await call('secret', {}, { authorization: 'Bearer s3cret' })).json(), { ok: true });
  });

  test('endless streams until the client goes away', async () => {
    const abort = new AbortController();
    const res = await call('endless', {}, {}, abort.signal);
    assert.equal(res.status, 200);
    const reader = res.body.getReader();
    let bytes = 0;
    while (bytes < 1024 * 1024) bytes += (await reader.read()).value.length;
    abort.abort();
    const gone = await tools.waitForClientClose((c) => c.name === 'endless', 2000);
    assert.ok(gone.bytesSent >= 1024 * 1024, `${gone.bytesSent} bytes sent`);
  });

  test('slow waits, and records a client that went away', async () => {
    const started = Date.now();
    assert.deepEqual(await (await call('slow', { ms: 100 })).json(), { waited: 100 });
    assert.ok(Date.now() - started >= 95);
    const abort = new AbortController();
    const pending = call('slow', { ms: 5000 }, {}, abort.signal);
    await tools.waitForCall((c) => c.name === 'slow' && c.body?.ms === 5000, 2000);
    abort.abort();
    await assert.rejects(pending);
    const gone = await tools.waitForClientClose((c) => c.body?.ms === 5000, 2000);
    assert.equal(gone.status, null);
    assert.equal(gone.closedByClient, true);
  });
});

describe('fake MCP server', () => {
  let mcp;
  before(async () => {
    mcp = await startFakeMcp({ lingerMs: 5000 });
  });
  after(() => mcp.close());

  const ACCEPT = 'application/json, text/event-stream';
  let nextId = 1;
  /** POSTs one JSON-RPC message; `session` adds the session headers. */
  const post = (message, { session, query = '', accept = ACCEPT, signal } = {}) =>
    fetch(`${mcp.url}/mcp${query}`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept,
        ...(session ? { 'mcp-session-id': session, 'mcp-protocol-version': PROTOCOL_VERSION } : {}),
      },
      body: JSON.stringify(message),
      signal,
    });
  const request = (method, params, opts) => post({ jsonrpc: '2.0', id: nextId++, method, params }, opts);

  /** A new session: initialize, then notifications/initialized; its id. */
  async function initialize(query = '') {
    const res = await request('initialize', { protocolVersion: PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: 'selftest', version: '1' } }, { query });
    assert.equal(res.status, 200);
    const session = res.headers.get('mcp-session-id');
    assert.match(session ?? '', /^[0-9a-f-]{36}$/);
    await res.text();
    const note = await post({ jsonrpc: '2.0', method: 'notifications/initialized' }, { session, query });
    assert.equal(note.status, 202);
    assert.equal(await note.text(), '');
    return session;
  }

  test('initialize gives a session id and the protocol version; the notification is accepted with 202', async () => {
    const res = await request('initialize', { protocolVersion: PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: 'selftest', version: '1' } });
    assert.match(res.headers.get('content-type'), /application\/json/);
    const body = await res.json();
    assert.equal(body.jsonrpc, '2.0');
    assert.equal(body.result.protocolVersion, PROTOCOL_VERSION);
    assert.deepEqual(body.result.capabilities, { tools: { listChanged: false } });
    const session = res.headers.get('mcp-session-id');
    const note = await post({ jsonrpc: '2.0', method: 'notifications/initialized' }, { session });
    assert.equal(note.status, 202);
    assert.equal(mcp.sessions.get(session).initialized, true);
    const recorded = mcp.requests.filter((r) => r.sessionId === session || r.response?.id === body.id);
    assert.deepEqual(recorded.map((r) => [r.method, r.status]), [['initialize', 200], ['notifications/initialized', 202]]);
  });

  test('tools/list comes in three pages with cursors; media.v2 has no input schema', async () => {
    const session = await initialize();
    const pages = [];
    let cursor;
    do {
      const body = await (await request('tools/list', cursor === undefined ? {} : { cursor }, { session })).json();
      pages.push(body.result.tools.map((t) => t.name));
      cursor = body.result.nextCursor;
    } while (cursor !== undefined);
    assert.deepEqual(pages, [['echo', 'weather'], ['fails', 'broken'], ['slow', 'media.v2']]);
    assert.equal(PAGE_SIZE, 2);
    assert.equal(TOOLS.find((t) => t.name === 'media.v2').inputSchema, undefined);
    const bad = await (await request('tools/list', { cursor: 'page-9' }, { session })).json();
    assert.equal(bad.error.code, -32602);
  });

  test('tools/call: text with structured content, isError, a JSON-RPC error, an unknown tool, media', async () => {
    const session = await initialize();
    const call = async (name, args = {}) => (await request('tools/call', { name, arguments: args }, { session })).json();
    assert.deepEqual((await call('echo', { text: 'hi' })).result, { content: [{ type: 'text', text: 'echo: hi' }], structuredContent: { echoed: 'hi', length: 2 } });
    const weather = (await call('weather', { city: 'Oslo' })).result;
    assert.deepEqual(JSON.parse(weather.content[0].text), weather.structuredContent);
    assert.deepEqual((await call('fails')).result, { content: [{ type: 'text', text: 'the fails tool always fails' }], isError: true });
    assert.deepEqual((await call('broken')).error, { code: -32603, message: 'broken always throws' });
    assert.equal((await call('nope')).error.code, -32602);
    assert.deepEqual((await call('media.v2')).result.content.map((c) => c.type), ['image', 'audio', 'resource_link', 'resource']);
  });

  test('sessions: none is 400, an unknown or forgotten one 404; GET is 405; Accept must name both types', async () => {
    assert.equal((await request('tools/list', {})).status, 400);
    assert.equal((await request('tools/list', {}, { session: 'nope' })).status, 404);
    const session = await initialize();
    assert.equal((await request('tools/list', {}, { session })).status, 200);
    mcp.forgetSessions();
    const forgotten = await request('tools/list', {}, { session });
    assert.equal(forgotten.status, 404);
    assert.equal((await forgotten.json()).error.message, 'Session not found');
    assert.equal((await fetch(`${mcp.url}/mcp`)).status, 405);
    assert.equal((await request('initialize', {}, { accept: 'application/json' })).status, 406);
  });

  test('?answer=sse: a notification and a server request first, then the response; the stream stays open until the client goes', async () => {
    const session = await initialize('?answer=sse');
    const abort = new AbortController();
    const id = nextId;
    const res = await request('tools/call', { name: 'echo', arguments: { text: 'sse' } }, { session, query: '?answer=sse', signal: abort.signal });
    assert.equal(res.headers.get('content-type'), 'text/event-stream');
    const reader = res.body.getReader();
    let raw = '';
    while ((raw.match(/\n\n/g) ?? []).length < 3) raw += new TextDecoder().decode((await reader.read()).value);
    // The response's event carries an `id:` (an event id, for resumption), which parseSse does not take.
    assert.match(raw, new RegExp(`^id: ${session}-${id}$`, 'm'));
    const events = parseSse(raw.replace(/^id: .*\n/gm, '')).map((e) => JSON.parse(e.data));
    assert.deepEqual(events.map((e) => [e.method ?? 'response', e.id ?? null]), [['notifications/message', null], ['ping', id], ['response', id]]);
    assert.deepEqual(events[2].result.structuredContent, { echoed: 'sse', length: 3 });
    const record = mcp.requests.find((r) => r.id === id);
    assert.equal(record.answeredWith, 'sse');
    assert.equal(record.closedByClient, false, 'still open after the response');
    abort.abort();
    await mcp.waitForRequest((r) => r.id === id && r.closedByClient, 2000);
  });

  test('slow waits ms, and stops when the client goes away', async () => {
    const session = await initialize();
    const started = Date.now();
    const done = await (await request('tools/call', { name: 'slow', arguments: { ms: 100 } }, { session })).json();
    assert.equal(done.result.content[0].text, 'waited 100 ms');
    assert.ok(Date.now() - started >= 95);
    const abort = new AbortController();
    const id = nextId;
    const pending = request('tools/call', { name: 'slow', arguments: { ms: 5000 } }, { session, signal: abort.signal });
    await mcp.waitForRequest((r) => r.id === id, 2000);
    abort.abort();
    await assert.rejects(pending);
    const gone = await mcp.waitForRequest((r) => r.id === id && r.closedByClient, 2000);
    assert.equal(gone.status, null);
  });
});
