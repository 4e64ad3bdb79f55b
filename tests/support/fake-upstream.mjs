// The only fake in the end-to-end tests: a model provider on loopback speaking OpenAI Chat Completions and Anthropic Messages streaming, steered by [[directives]] in the last user message.
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { recordWaiters } from './waiters.mjs';

/** Wall-clock milliseconds with sub-millisecond precision, comparable across processes on one machine. */
export const preciseNow = () => performance.timeOrigin + performance.now();

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------
// Directives: `[[name key=value ...]]` anywhere in the last user message.
// A value is a bare word, a JSON string literal, or a JSON object/array (so `args={"a": 1}` may hold spaces).

/** Parses every `[[name key=value ...]]` in `text`; returns them in order and the text with them removed. */
export function parseDirectives(text) {
  const directives = [];
  let stripped = '';
  let copyFrom = 0;
  let i = 0;
  while ((i = text.indexOf('[[', i)) !== -1) {
    const parsed = parseOneDirective(text, i);
    if (!parsed) {
      i += 2;
      continue;
    }
    directives.push({ name: parsed.name, params: parsed.params });
    stripped += text.slice(copyFrom, i);
    copyFrom = i = parsed.end;
  }
  stripped += text.slice(copyFrom);
  return { directives, stripped: stripped.replace(/\s+/g, ' ').trim() };
}

function parseOneDirective(text, start) {
  let i = start + 2;
  const name = /^[a-z_]+/.exec(text.slice(i))?.[0];
  if (!name) return null;
  i += name.length;
  const params = {};
  for (;;) {
    while (text[i] === ' ') i++;
    if (text.startsWith(']]', i)) return { name, params, end: i + 2 };
    const key = /^[a-z_]+/.exec(text.slice(i))?.[0];
    if (!key || text[i + key.length] !== '=') return null;
    i += key.length + 1;
    const end = valueEnd(text, i);
    if (end < 0) return null;
    const raw = text.slice(i, end);
    params[key] = raw.startsWith('"') ? JSON.parse(raw) : raw;
    i = end;
  }
}

// Where a directive value that starts at `i` ends: balanced JSON for objects/arrays/strings, else the next space or `]]`.
function valueEnd(text, i) {
  const open = text[i];
  if (open === '{' || open === '[' || open === '"') {
    let depth = 0;
    let inString = false;
    for (let j = i; j < text.length; j++) {
      const c = text[j];
      if (inString) {
        if (c === '\\') j++;
        else if (c === '"') {
          inString = false;
          if (depth === 0) return j + 1;
        }
      } else if (c === '"') inString = true;
      else if (c === '{' || c === '[') depth++;
      else if (c === '}' || c === ']') {
        depth--;
        if (depth === 0) return j + 1;
      }
    }
    return -1;
  }
  let j = i;
  while (j < text.length && text[j] !== ' ' && !text.startsWith(']]', j)) j++;
  return j;
}

const int = (value, fallback) => {
  const n = Number(value);
  return value === undefined || !Number.isFinite(n) ? fallback : Math.trunc(n);
};

/** Splits `text` into `n` non-empty pieces of near-equal length (padding with dots when it is shorter than `n`). */
export function splitInto(text, n) {
  const count = Math.max(1, n);
  const padded = text.length >= count ? text : text + '.'.repeat(count - text.length);
  const pieces = [];
  for (let k = 0; k < count; k++) {
    pieces.push(padded.slice(Math.floor((k * padded.length) / count), Math.floor(((k + 1) * padded.length) / count)));
  }
  return pieces;
}

// ---------------------------------------------------------------------------
// Reading a provider request: the last user text and the tool results that follow it.

/** The text parts of an OpenAI or Anthropic `content` (string, text parts; tool results and images are not text). */
export function textOf(content) {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content
    .filter((part) => part && part.type === 'text' && typeof part.text === 'string')
    .map((part) => part.text)
    .join('');
}

function readConversation(provider, messages) {
  let lastUser = -1;
  for (let k = messages.length - 1; k >= 0; k--) {
    if (messages[k]?.role === 'user' && textOf(messages[k].content) !== '') {
      lastUser = k;
      break;
    }
  }
  const toolNames = new Map();
  const toolResults = [];
  messages.forEach((m, k) => {
    if (provider === 'openai') {
      for (const call of m?.tool_calls ?? []) toolNames.set(call.id, call.function?.name);
      if (k > lastUser && m?.role === 'tool') {
        toolResults.push({ id: m.tool_call_id, name: toolNames.get(m.tool_call_id), content: textOf(m.content), isError: false });
      }
    } else if (Array.isArray(m?.content)) {
      for (const block of m.content) {
        if (block?.type === 'tool_use') toolNames.set(block.id, block.name);
        if (k > lastUser && block?.type === 'tool_result') {
          toolResults.push({
            id: block.tool_use_id,
            name: toolNames.get(block.tool_use_id),
            content: textOf(block.content),
            isError: block.is_error === true,
          });
        }
      }
    }
  });
  return { lastUserText: lastUser >= 0 ? textOf(messages[lastUser].content) : '', toolResults };
}

// ---------------------------------------------------------------------------
// A plan: what one response does, independent of the provider's wire format.

const FILLER = 'The quick brown fox jumps over the lazy dog. ';

function buildPlan({ provider, body, lastUserText, toolResults, directives, stripped, flakyCount, nextId }) {
  const d = Object.fromEntries(directives.map((x) => [x.name, x.params]));
  if (d.reset) return { failure: { kind: 'reset' } };
  if (d.context) return { failure: { kind: 'status', code: 400, context: true } };
  if (d.status) {
    return { failure: { kind: 'status', code: int(d.status.code, 500), retryAfter: d.status.retry_after, message: d.status.message, endless: d.status.endless === '1' } };
  }
  if (d.flaky && flakyCount <= int(d.flaky.times, 1)) {
    return { failure: { kind: 'status', code: int(d.flaky.code, 503), retryAfter: d.flaky.retry_after } };
  }

  // `deltas` and `delay` may ride on any directive (`[[thinking delay=50]]`); `slow` and `stamped` only change their defaults.
  const common = Object.assign({}, ...directives.map((x) => x.params));
  const deltas = int(common.deltas, d.slow ? 10 : d.stamped ? 100 : 5);
  const delay = int(common.delay, d.slow ? 100 : d.stamped ? 5 : 0);

  const plan = { delay, thinking: [], text: [], toolCalls: [], finish: 'stop', deltasBefore: null };

  if (d.thinking) {
    plan.thinking = splitInto(`Let me think about "${stripped}".`, int(d.thinking.steps, 3));
    plan.signature = `sig_${Buffer.from(stripped).toString('base64url').slice(0, 24)}_${nextId()}`;
    plan.thinkingStyle = d.thinking.style === 'openrouter' ? 'openrouter' : 'deepseek';
  }

  const tool = d.tool_loop ?? d.tool;
  if (tool && (d.tool_loop || toolResults.length === 0)) {
    const name = tool.name ?? 'echo';
    const args = tool.args ?? '{"text":"hi"}';
    const count = int(tool.count, 1);
    for (let k = 0; k < count; k++) {
      // Parallel calls get their index merged in so their results differ and can be told apart.
      const callArgs = count > 1 ? JSON.stringify({ ...JSON.parse(args), call: k }) : args;
      const id = provider === 'openai' ? `call_fake${nextId()}` : `toolu_fake${nextId()}`;
      plan.toolCalls.push({ id, name, arguments: callArgs, pieces: splitInto(callArgs, Math.min(3, callArgs.length)) });
    }
    plan.finish = 'tool_calls';
  } else if (d.big) {
    const size = int(d.big.size, 200_000);
    const text = FILLER.repeat(Math.ceil(size / FILLER.length)).slice(0, size);
    plan.text = splitInto(text, int(d.big.deltas, Math.ceil(size / 8192)));
  } else if (d.stamped) {
    // A stamp is taken when the delta is written, so the piece is a function called at send time.
    plan.text = Array.from({ length: deltas }, () => () => `<t=${preciseNow().toFixed(3)}>`);
  } else {
    const reply = tool
      ? toolResults.map((r) => `Tool ${r.name ?? r.id} returned ${r.content}${r.isError ? ' (error)' : ''}`).join('; ')
      : `You said: ${stripped}`;
    plan.text = splitInto(reply, deltas);
  }
  if (d.length) plan.finish = 'length';

  const breakKinds = ['cut', 'stall', 'malformed', 'stream_error'];
  const brk = breakKinds.find((k) => d[k]);
  if (brk) {
    plan.break = {
      kind: brk,
      after: int(d[brk].after, brk === 'cut' ? 3 : 2),
      abrupt: d[brk].abrupt === '1' || d[brk].abrupt === 'true',
      rest: d[brk].rest === '1' || d[brk].rest === 'true',
      type: d[brk].type,
    };
  }

  const messages = Array.isArray(body.messages) ? body.messages : [];
  const deltaCount = plan.thinking.length + plan.text.length + plan.toolCalls.reduce((n, c) => n + c.pieces.length, 0);
  plan.usage = {
    base: 10 + messages.length,
    output: deltaCount,
    reasoning: plan.thinking.length,
    cacheRead: d.cache ? int(d.cache.read, 80) : 0,
    cacheWrite: d.cache ? int(d.cache.write, 20) : 0,
  };
  return plan;
}

// ---------------------------------------------------------------------------
// Errors in each provider's documented body shape.

const OPENAI_ERRORS = {
  400: ['invalid_request_error', null, 'Invalid request: the fake upstream was asked for a 400.'],
  401: ['invalid_request_error', 'invalid_api_key', 'Incorrect API key provided: test-****. You can find your API key at https://platform.openai.com/account/api-keys.'],
  403: ['invalid_request_error', 'unsupported_country_region_territory', 'Country, region, or territory not supported'],
  404: ['invalid_request_error', 'model_not_found', 'The model does not exist or you do not have access to it.'],
  429: ['requests', 'rate_limit_exceeded', 'Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 1s.'],
  500: ['server_error', null, 'The server had an error while processing your request. Sorry about that!'],
  503: ['server_error', null, 'The engine is currently overloaded, please try again later.'],
  529: ['server_error', null, 'Overloaded'],
};

const ANTHROPIC_ERRORS = {
  400: ['invalid_request_error', 'Invalid request: the fake upstream was asked for a 400.'],
  401: ['authentication_error', 'invalid x-api-key'],
  403: ['permission_error', 'Your API key does not have permission to use the specified resource.'],
  404: ['not_found_error', 'The requested resource could not be found.'],
  413: ['request_too_large', 'Request exceeds the maximum allowed number of bytes.'],
  429: ['rate_limit_error', 'Number of request tokens has exceeded your per-minute rate limit.'],
  500: ['api_error', 'Internal server error'],
  503: ['api_error', 'Service unavailable'],
  504: ['timeout_error', 'Request timeout'],
  529: ['overloaded_error', 'Overloaded'],
};

function errorBody(provider, code, { context = false, message } = {}) {
  if (provider === 'openai') {
    if (context) {
      return {
        error: {
          message: "This model's maximum context length is 128000 tokens. However, your messages resulted in 130412 tokens. Please reduce the length of the messages.",
          type: 'invalid_request_error',
          param: 'messages',
          code: 'context_length_exceeded',
        },
      };
    }
    const [type, errCode, text] = OPENAI_ERRORS[code] ?? ['server_error', null, `Upstream status ${code}`];
    return { error: { message: message ?? text, type, param: null, code: errCode } };
  }
  if (context) {
    return { type: 'error', error: { type: 'invalid_request_error', message: 'prompt is too long: 208310 tokens > 200000 maximum' }, request_id: 'req_fakecontext' };
  }
  const [type, text] = ANTHROPIC_ERRORS[code] ?? ['api_error', `Upstream status ${code}`];
  return { type: 'error', error: { type, message: message ?? text }, request_id: `req_fake${code}` };
}

// ---------------------------------------------------------------------------
// Rendering a plan as each provider's SSE frames. A frame is `{text, delta?, kind?, terminal?}`:
// `delta` frames carry content (and are what `after=` counts), `terminal` frames close the stream.

const sse = (obj) => `data: ${JSON.stringify(obj)}\n\n`;
const named = (event, obj) => `event: ${event}\ndata: ${JSON.stringify(obj)}\n\n`;

function openaiUsage(plan) {
  const prompt = plan.usage.base + plan.usage.cacheRead;
  return {
    prompt_tokens: prompt,
    completion_tokens: plan.usage.output,
    total_tokens: prompt + plan.usage.output,
    prompt_tokens_details: { cached_tokens: plan.usage.cacheRead, audio_tokens: 0 },
    completion_tokens_details: { reasoning_tokens: plan.usage.reasoning, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
  };
}

function openaiFrames(plan, body, id) {
  const includeUsage = body.stream_options?.include_usage === true;
  const created = Math.floor(Date.now() / 1000);
  const chunk = (delta, finish = null) => ({
    id,
    object: 'chat.completion.chunk',
    created,
    model: body.model,
    system_fingerprint: 'fp_fake',
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    ...(includeUsage ? { usage: null } : {}),
  });
  const frames = [];
  if (plan.thinking.length || plan.text.length) frames.push({ text: sse(chunk({ role: 'assistant', content: '', refusal: null })) });
  for (const piece of plan.thinking) {
    const delta = plan.thinkingStyle === 'openrouter' ? { content: '', reasoning: piece } : { content: null, reasoning_content: piece };
    frames.push({ kind: 'thinking', piece, text: sse(chunk(delta)), delta: true });
  }
  for (const piece of plan.text) {
    frames.push({ kind: 'text', piece, text: (p) => sse(chunk({ content: p })), delta: true });
  }
  plan.toolCalls.forEach((call, index) => {
    const head = { index, id: call.id, type: 'function', function: { name: call.name, arguments: '' } };
    const first = index === 0 && frames.length === 0 ? { role: 'assistant', content: null, tool_calls: [head], refusal: null } : { tool_calls: [head] };
    frames.push({ text: sse(chunk(first)) });
    for (const piece of call.pieces) {
      frames.push({ kind: 'tool', piece, text: sse(chunk({ tool_calls: [{ index, function: { arguments: piece } }] })), delta: true });
    }
  });
  const finish = { stop: 'stop', length: 'length', tool_calls: 'tool_calls' }[plan.finish];
  frames.push({ text: sse(chunk({}, finish)), terminal: true });
  if (includeUsage) {
    frames.push({
      text: sse({ id, object: 'chat.completion.chunk', created, model: body.model, system_fingerprint: 'fp_fake', choices: [], usage: openaiUsage(plan) }),
      terminal: true,
      usage: true,
    });
  }
  frames.push({ text: 'data: [DONE]\n\n', terminal: true, end: true });
  return frames;
}

function anthropicFrames(plan, body, id) {
  const frames = [];
  frames.push({
    text: named('message_start', {
      type: 'message_start',
      message: {
        id,
        type: 'message',
        role: 'assistant',
        model: body.model,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: {
          input_tokens: plan.usage.base,
          cache_creation_input_tokens: plan.usage.cacheWrite,
          cache_read_input_tokens: plan.usage.cacheRead,
          output_tokens: 1,
        },
      },
    }),
  });
  let index = 0;
  const block = (contentBlock, deltas) => {
    frames.push({ text: named('content_block_start', { type: 'content_block_start', index, content_block: contentBlock }) });
    if (index === 0) frames.push({ text: named('ping', { type: 'ping' }) });
    frames.push(...deltas(index));
    frames.push({ text: named('content_block_stop', { type: 'content_block_stop', index }) });
    index++;
  };
  if (plan.thinking.length) {
    block({ type: 'thinking', thinking: '' }, (i) => [
      ...plan.thinking.map((piece) => ({
        kind: 'thinking',
        piece,
        text: named('content_block_delta', { type: 'content_block_delta', index: i, delta: { type: 'thinking_delta', thinking: piece } }),
        delta: true,
      })),
      { text: named('content_block_delta', { type: 'content_block_delta', index: i, delta: { type: 'signature_delta', signature: plan.signature } }) },
    ]);
  }
  if (plan.text.length) {
    block({ type: 'text', text: '' }, (i) =>
      plan.text.map((piece) => ({
        kind: 'text',
        piece,
        text: (p) => named('content_block_delta', { type: 'content_block_delta', index: i, delta: { type: 'text_delta', text: p } }),
        delta: true,
      })),
    );
  }
  for (const call of plan.toolCalls) {
    block({ type: 'tool_use', id: call.id, name: call.name, input: {} }, (i) => [
      { text: named('content_block_delta', { type: 'content_block_delta', index: i, delta: { type: 'input_json_delta', partial_json: '' } }) },
      ...call.pieces.map((piece) => ({
        kind: 'tool',
        piece,
        text: named('content_block_delta', { type: 'content_block_delta', index: i, delta: { type: 'input_json_delta', partial_json: piece } }),
        delta: true,
      })),
    ]);
  }
  const stopReason = { stop: 'end_turn', length: 'max_tokens', tool_calls: 'tool_use' }[plan.finish];
  frames.push({
    text: named('message_delta', { type: 'message_delta', delta: { stop_reason: stopReason, stop_sequence: null }, usage: { output_tokens: plan.usage.output } }),
    terminal: true,
    usage: true,
  });
  frames.push({ text: named('message_stop', { type: 'message_stop' }), terminal: true, end: true });
  return frames;
}

/** Provider-neutral token counts of a plan, as the gateway should report them: OpenAI's prompt_tokens include the cached ones. */
function neutralTokens(provider, plan) {
  const { base, output, cacheRead, cacheWrite } = plan.usage;
  const write = provider === 'anthropic' ? cacheWrite : 0;
  return { input: base, output, cacheRead, cacheWrite: write, total: base + output + cacheRead + write };
}

// ---------------------------------------------------------------------------
// Non-streaming answers (`stream` absent or false), for gateways that ask for one whole message.

function wholeMessage(provider, plan, body, id) {
  const text = plan.text.map((p) => (typeof p === 'function' ? p() : p)).join('');
  if (provider === 'openai') {
    const message = { role: 'assistant', content: plan.toolCalls.length ? null : text, refusal: null };
    if (plan.thinking.length) message.reasoning_content = plan.thinking.join('');
    if (plan.toolCalls.length) {
      message.tool_calls = plan.toolCalls.map((c) => ({ id: c.id, type: 'function', function: { name: c.name, arguments: c.arguments } }));
    }
    return {
      id,
      object: 'chat.completion',
      created: Math.floor(Date.now() / 1000),
      model: body.model,
      system_fingerprint: 'fp_fake',
      choices: [{ index: 0, message, logprobs: null, finish_reason: { stop: 'stop', length: 'length', tool_calls: 'tool_calls' }[plan.finish] }],
      usage: openaiUsage(plan),
    };
  }
  const content = [];
  if (plan.thinking.length) content.push({ type: 'thinking', thinking: plan.thinking.join(''), signature: plan.signature });
  if (text) content.push({ type: 'text', text });
  for (const c of plan.toolCalls) content.push({ type: 'tool_use', id: c.id, name: c.name, input: JSON.parse(c.arguments) });
  return {
    id,
    type: 'message',
    role: 'assistant',
    model: body.model,
    content,
    stop_reason: { stop: 'end_turn', length: 'max_tokens', tool_calls: 'tool_use' }[plan.finish],
    stop_sequence: null,
    usage: {
      input_tokens: plan.usage.base,
      cache_creation_input_tokens: plan.usage.cacheWrite,
      cache_read_input_tokens: plan.usage.cacheRead,
      output_tokens: plan.usage.output,
    },
  };
}

// ---------------------------------------------------------------------------
// The server.

/**
 * Starts the fake provider on 127.0.0.1 (a free port).
 * It checks credentials as the real APIs do: `authorization: Bearer <openaiKey>` on `/v1/chat/completions`,
 * `x-api-key: <anthropicKey>` plus `anthropic-version` on `/v1/messages` (turn off with `requireAuth: false`).
 */
export async function startFakeUpstream({ openaiKey = 'test-openai-key', anthropicKey = 'test-anthropic-key', requireAuth = true } = {}) {
  const requests = [];
  const flakyCounts = new Map();
  const openResponses = new Set();
  let idCounter = 0;
  const nextId = () => String(++idCounter).padStart(6, '0');

  const { notify, waitFor, clear: clearWaiters } = recordWaiters(requests, { label: 'fake upstream', describe: (r) => `${r.path} ${JSON.stringify(r.lastUserText)} closedByClient=${r.closedByClient}` });

  // A client that goes away mid-request must not crash the test process: the socket is dropped and that is all.
  const server = http.createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });

  // Requests served per connection: 1 means the client opened a connection for this request.
  const perConnection = new WeakMap();

  async function handle(req, res) {
    const receivedAt = preciseNow();
    const connectionRequest = (perConnection.get(req.socket) ?? 0) + 1;
    perConnection.set(req.socket, connectionRequest);
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const raw = Buffer.concat(chunks).toString('utf8');
    let body = null;
    try {
      body = raw ? JSON.parse(raw) : null;
    } catch {
      body = null;
    }
    const path = (req.url ?? '').split('?')[0];
    const provider = path === '/v1/chat/completions' ? 'openai' : path === '/v1/messages' ? 'anthropic' : null;
    const messages = Array.isArray(body?.messages) ? body.messages : [];
    const { lastUserText, toolResults } = provider ? readConversation(provider, messages) : { lastUserText: '', toolResults: [] };
    const { directives, stripped } = parseDirectives(lastUserText);

    const rec = {
      path,
      method: req.method,
      connectionRequest,
      provider,
      headers: req.headers,
      body,
      rawBody: raw,
      lastUserText,
      directives,
      toolResults,
      receivedAt,
      closedByClient: false,
      closedAt: null,
      finishedAt: null,
      sent: { status: 200, text: '', thinking: '', signature: null, toolCalls: [], usage: null, tokens: null, finishReason: null, complete: false, deltas: [] },
    };
    requests.push(rec);

    let serverClosed = false;
    res.on('close', () => {
      openResponses.delete(res);
      rec.closedAt = preciseNow();
      if (!res.writableFinished && !serverClosed) rec.closedByClient = true;
      notify();
    });
    openResponses.add(res);
    notify();

    const sendJson = (status, obj, headers = {}) => {
      rec.sent.status = status;
      rec.sent.body = obj;
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify(obj));
      rec.finishedAt = preciseNow();
    };

    if (!provider || req.method !== 'POST') {
      return sendJson(404, { error: { message: `Unknown request URL: ${req.method} ${path}`, type: 'invalid_request_error', param: null, code: 'unknown_url' } });
    }
    if (requireAuth) {
      if (provider === 'openai' && req.headers.authorization !== `Bearer ${openaiKey}`) {
        const message = req.headers.authorization ? undefined : "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).";
        return sendJson(401, errorBody('openai', 401, { message }));
      }
      if (provider === 'anthropic' && req.headers['x-api-key'] !== anthropicKey) return sendJson(401, errorBody('anthropic', 401));
      if (provider === 'anthropic' && !req.headers['anthropic-version']) {
        return sendJson(400, errorBody('anthropic', 400, { message: 'anthropic-version: header is required' }));
      }
    }
    if (!body || typeof body !== 'object') {
      return sendJson(400, errorBody(provider, 400, { message: 'We could not parse the JSON body of your request.' }));
    }
    if (!body.model) return sendJson(400, errorBody(provider, 400, { message: provider === 'openai' ? 'you must provide a model parameter' : 'model: Field required' }));
    if (provider === 'anthropic' && !body.max_tokens) return sendJson(400, errorBody('anthropic', 400, { message: 'max_tokens: Field required' }));

    // Flaky counts are keyed by the content, so retries of one message share a counter and other tests don't.
    const flakyCount = (flakyCounts.get(lastUserText) ?? 0) + 1;
    flakyCounts.set(lastUserText, flakyCount);
    const plan = buildPlan({ provider, body, lastUserText, toolResults, directives, stripped, flakyCount, nextId });
    if (provider === 'anthropic') {
      // A final assistant message is a prefill: the API refuses one that ends in whitespace or
      // comes with thinking on, and otherwise the answer goes on from where it stops.
      const last = messages.at(-1);
      if (last?.role === 'assistant') {
        const prefill = textOf(last.content) ?? '';
        if (/\s$/.test(prefill)) {
          return sendJson(400, errorBody('anthropic', 400, { message: 'messages: final assistant content cannot end with trailing whitespace' }));
        }
        if (body.thinking?.type === 'enabled') {
          return sendJson(400, errorBody('anthropic', 400, { message: 'messages: the final assistant message cannot be a prefill when thinking is enabled' }));
        }
        rec.prefill = prefill;
        const whole = plan.text.every((piece) => typeof piece === 'string') ? plan.text.join('') : null;
        if (whole !== null && prefill !== '' && whole.startsWith(prefill)) {
          const rest = whole.slice(prefill.length);
          plan.text = rest === '' ? [] : splitInto(rest, Math.min(plan.text.length, rest.length));
        }
      }
    }
    const id = provider === 'openai' ? `chatcmpl-fake${nextId()}` : `msg_fake${nextId()}`;

    if (plan.failure?.kind === 'reset') {
      serverClosed = true;
      rec.sent.status = null;
      req.socket.destroy();
      return;
    }
    if (plan.failure?.kind === 'status') {
      const headers = plan.failure.retryAfter !== undefined ? { 'retry-after': String(plan.failure.retryAfter) } : {};
      if (provider === 'anthropic') headers['request-id'] = `req_fake${plan.failure.code}`;
      if (plan.failure.endless) {
        // An error answer that never ends: a JSON prefix, then filler until the client hangs up.
        rec.sent.status = plan.failure.code;
        rec.endlessBytes = 0;
        res.writeHead(plan.failure.code, { 'content-type': 'application/json', ...headers });
        const chunk = Buffer.alloc(64 * 1024, 'x');
        res.write('{"error":{"message":"');
        const pump = () => {
          // Every chunk handed to the socket counts, the one that filled its buffer too.
          while (!res.destroyed) {
            rec.endlessBytes += chunk.length;
            if (!res.write(chunk)) break;
          }
          if (!res.destroyed) res.once('drain', pump);
        };
        res.on('close', () => {
          rec.finishedAt = preciseNow();
          notify();
        });
        pump();
        return;
      }
      return sendJson(plan.failure.code, errorBody(provider, plan.failure.code, { context: plan.failure.context, message: plan.failure.message }), headers);
    }

    rec.sent.finishReason = plan.finish;
    rec.sent.toolCalls = plan.toolCalls.map(({ id: callId, name, arguments: args }) => ({ id: callId, name, arguments: args }));
    rec.sent.signature = plan.signature ?? null;
    if (body.stream !== true) {
      const whole = wholeMessage(provider, plan, body, id);
      rec.sent.text = plan.text.join('');
      rec.sent.thinking = plan.thinking.join('');
      rec.sent.usage = whole.usage;
      rec.sent.tokens = neutralTokens(provider, plan);
      rec.sent.complete = true;
      return sendJson(200, whole);
    }

    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      ...(provider === 'anthropic' ? { 'request-id': `req_${id}` } : { 'x-request-id': `req_${id}` }),
    });
    res.flushHeaders();
    const frames = provider === 'openai' ? openaiFrames(plan, body, id) : anthropicFrames(plan, body, id);
    await play(res, frames, plan, provider, rec, () => {
      serverClosed = true;
    });
    notify();
  }

  // Writes frames in order with `plan.delay` between content deltas, honouring the break scenarios.
  async function play(res, frames, plan, provider, rec, markServerClosed) {
    const write = (s) => (res.write(s) ? Promise.resolve() : new Promise((r) => res.once('drain', r)));
    let sent = 0;
    for (const frame of frames) {
      if (res.destroyed) return;
      const brk = plan.break;
      if (brk && sent >= brk.after && (frame.delta || frame.terminal) && !brk.done) {
        brk.done = true;
        if (brk.kind === 'stall') {
          rec.stalled = true;
          return;
        }
        if (brk.kind === 'cut') {
          if (brk.abrupt) {
            markServerClosed();
            res.socket?.destroy();
          } else res.end();
          rec.finishedAt = preciseNow();
          return;
        }
        if (brk.kind === 'malformed') {
          await write(provider === 'openai' ? 'data: {"id":"chatcmpl-broken","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"oops\n\n' : 'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_del\n\n');
          if (!brk.rest) {
            res.end();
            rec.finishedAt = preciseNow();
            return;
          }
        }
        if (brk.kind === 'stream_error') {
          const type = brk.type ?? (provider === 'openai' ? 'server_error' : 'overloaded_error');
          const message = type === 'overloaded_error' ? 'Overloaded' : 'The server had an error while processing your request. Sorry about that!';
          rec.sent.streamError = { type, message };
          await write(provider === 'openai' ? sse({ error: { message, type, param: null, code: null } }) : named('error', { type: 'error', error: { type, message } }));
          res.end();
          rec.finishedAt = preciseNow();
          return;
        }
      }
      if (frame.delta) {
        if (sent > 0 && plan.delay > 0) await sleep(plan.delay);
        if (res.destroyed) return;
        const piece = typeof frame.piece === 'function' ? frame.piece() : frame.piece;
        const text = typeof frame.text === 'function' ? frame.text(piece) : frame.text;
        await write(text);
        sent++;
        rec.sent.deltas.push({ kind: frame.kind, text: piece, at: preciseNow() });
        if (frame.kind === 'text') rec.sent.text += piece;
        else if (frame.kind === 'thinking') rec.sent.thinking += piece;
        continue;
      }
      await write(frame.text);
      if (frame.usage) {
        rec.sent.usage = provider === 'openai' ? openaiUsage(plan) : {
          input_tokens: plan.usage.base,
          cache_creation_input_tokens: plan.usage.cacheWrite,
          cache_read_input_tokens: plan.usage.cacheRead,
          output_tokens: plan.usage.output,
        };
        rec.sent.tokens = neutralTokens(provider, plan);
      }
      if (frame.end) rec.sent.complete = true;
    }
    res.end();
    rec.finishedAt = preciseNow();
  }

  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();

  return {
    port,
    url: `http://127.0.0.1:${port}`,
    requests,
    /** Requests whose last user text contains `needle`. */
    requestsFor: (needle) => requests.filter((r) => r.lastUserText.includes(needle)),
    /** Resolves with the first request (already recorded or future) for which `pred(record)` holds. */
    waitForRequest: (pred = () => true, timeoutMs = 10_000) => waitFor(pred, timeoutMs, 'matching request'),
    /** Resolves with the first matching request that the client closed before the response finished. */
    waitForClientClose: (pred = () => true, timeoutMs = 10_000) => waitFor((r) => r.closedByClient && pred(r), timeoutMs, 'client close'),
    /** Forgets the recorded requests and the flaky counters. */
    reset() {
      requests.length = 0;
      flakyCounts.clear();
    },
    async close() {
      for (const res of openResponses) res.socket?.destroy();
      clearWaiters();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
