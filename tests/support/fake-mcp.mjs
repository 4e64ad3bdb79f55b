// A fake MCP server on loopback speaking the Streamable HTTP transport (protocol 2025-06-18): answers as JSON or as an event stream, sessions it can forget, a tool list in pages, tools that answer, fail, throw and take their time; every request recorded.
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { preciseNow } from './fake-upstream.mjs';
import { recordWaiters } from './waiters.mjs';

export const PROTOCOL_VERSION = '2025-06-18';
/** Tools per page of `tools/list`: the six tools come in three pages. */
export const PAGE_SIZE = 2;

const object = (properties, required = []) => ({ type: 'object', properties, ...(required.length ? { required } : {}) });

/** The tools, in the order `tools/list` gives them. `media.v2` has no input schema (clients default it). */
export const TOOLS = [
  { name: 'echo', description: 'Echoes the text, with its length as structured content.', inputSchema: object({ text: { type: 'string' } }, ['text']) },
  { name: 'weather', description: 'The weather in a city; the text is the structured content as JSON.', inputSchema: object({ city: { type: 'string' } }, ['city']) },
  { name: 'fails', description: 'Always answers with isError.', inputSchema: object({}) },
  { name: 'broken', description: 'Always answers with a JSON-RPC error.', inputSchema: object({}) },
  { name: 'slow', description: 'Waits ms milliseconds.', inputSchema: object({ ms: { type: 'number' } }) },
  { name: 'media.v2', description: 'Answers an image, audio, a resource link and an embedded resource.' },
];

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    });
  });

/** A `tools/call` result (or `{rpcError}`) for tool `name` with `args`. */
async function callTool(name, args, gone) {
  switch (name) {
    case 'echo': {
      const text = String(args.text ?? '');
      return { content: [{ type: 'text', text: `echo: ${text}` }], structuredContent: { echoed: text, length: text.length } };
    }
    case 'weather': {
      const structured = { city: String(args.city ?? ''), celsius: 21 };
      return { content: [{ type: 'text', text: JSON.stringify(structured) }], structuredContent: structured };
    }
    case 'fails':
      return { content: [{ type: 'text', text: 'the fails tool always fails' }], isError: true };
    case 'broken':
      return { rpcError: { code: -32603, message: 'broken always throws' } };
    case 'slow': {
      const ms = Number.isFinite(args.ms) ? args.ms : 1000;
      await sleep(ms, gone);
      return { content: [{ type: 'text', text: `waited ${ms} ms` }] };
    }
    case 'media.v2':
      return {
        content: [
          { type: 'image', data: Buffer.from('a png').toString('base64'), mimeType: 'image/png' },
          { type: 'audio', data: Buffer.from('a wav').toString('base64'), mimeType: 'audio/wav' },
          { type: 'resource_link', uri: 'file:///notes.txt', name: 'notes.txt', mimeType: 'text/plain' },
          { type: 'resource', resource: { uri: 'file:///readme.md', mimeType: 'text/markdown', text: '# Readme' } },
        ],
      };
    default:
      return { rpcError: { code: -32602, message: `Unknown tool: ${name}` } };
  }
}

/**
 * Starts the server on 127.0.0.1 (a free port); it serves `POST /mcp`. Answers are JSON by
 * default, or an event stream (`answer: 'sse'`); `?answer=json|sse` on the URL decides per
 * request. An event stream opens with a log notification and a `ping` request of the server's
 * own (with the same id as the client's request), then the response, and stays open after it
 * until the client hangs up (`lingerMs`), as a server may keep it.
 */
export async function startFakeMcp({ answer = 'json', lingerMs = 30_000 } = {}) {
  /** Session id → { protocolVersion, initialized }. */
  const sessions = new Map();
  const requests = [];
  const open = new Set();
  const { notify, waitFor, clear } = recordWaiters(requests, {
    label: 'fake MCP server',
    describe: (r) => `${r.method ?? r.httpMethod} session=${r.sessionId} status=${r.status} ${r.answeredWith ?? ''} closedByClient=${r.closedByClient}`,
  });

  async function handle(req, res) {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const raw = Buffer.concat(chunks).toString('utf8');
    const record = {
      httpMethod: req.method,
      path: url.pathname,
      headers: req.headers,
      sessionId: req.headers['mcp-session-id'] ?? null,
      protocolVersion: req.headers['mcp-protocol-version'] ?? null,
      method: null,
      id: null,
      params: null,
      status: null,
      answeredWith: null,
      closedByClient: false,
      /** The session id an `initialize` answer gave. */
      issuedSession: null,
      receivedAt: preciseNow(),
    };
    requests.push(record);
    const gone = new AbortController();
    res.on('close', () => {
      open.delete(res);
      if (!res.writableFinished) {
        record.closedByClient = true;
        gone.abort();
      }
      notify();
    });
    open.add(res);

    const plain = (status, body, headers = {}) => {
      record.status = status;
      res.writeHead(status, { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers });
      res.end(body === undefined ? undefined : JSON.stringify(body));
      notify();
    };
    const rpcError = (status, code, message, id = null) => plain(status, { jsonrpc: '2.0', id, error: { code, message } });

    if (url.pathname !== '/mcp') return plain(404, { error: `no such route: ${url.pathname}` });
    // No server-initiated stream (GET) and no session deletion (DELETE): 405, as the spec allows.
    if (req.method !== 'POST') return plain(405, undefined, { allow: 'POST' });
    const accept = req.headers.accept ?? '';
    if (!accept.includes('application/json') || !accept.includes('text/event-stream')) {
      return rpcError(406, -32000, 'Not Acceptable: the client must accept both application/json and text/event-stream');
    }
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      return rpcError(400, -32700, 'Parse error');
    }
    if (!message || typeof message !== 'object' || Array.isArray(message) || message.jsonrpc !== '2.0') {
      return rpcError(400, -32600, 'Invalid Request');
    }
    record.method = message.method ?? null;
    record.id = message.id ?? null;
    record.params = message.params ?? null;
    notify();

    let sessionId = record.sessionId;
    const extraHeaders = {};
    if (message.method === 'initialize') {
      sessionId = randomUUID();
      sessions.set(sessionId, { protocolVersion: PROTOCOL_VERSION, initialized: false });
      extraHeaders['mcp-session-id'] = sessionId;
      record.issuedSession = sessionId;
    } else if (!sessionId) {
      return rpcError(400, -32000, 'Bad Request: No valid session ID provided');
    } else if (!sessions.has(sessionId)) {
      return rpcError(404, -32001, 'Session not found');
    } else if (record.protocolVersion !== null && record.protocolVersion !== PROTOCOL_VERSION) {
      return rpcError(400, -32000, `Bad Request: Unsupported protocol version ${record.protocolVersion}`);
    }

    if (message.id === undefined) {
      // A notification: accepted, no body.
      if (message.method === 'notifications/initialized') sessions.get(sessionId).initialized = true;
      return plain(202, undefined);
    }

    let result;
    switch (message.method) {
      case 'initialize':
        result = {
          protocolVersion: PROTOCOL_VERSION,
          capabilities: { tools: { listChanged: false } },
          serverInfo: { name: 'fake-mcp', version: '1.0.0' },
        };
        break;
      case 'ping':
        result = {};
        break;
      case 'tools/list': {
        const cursor = message.params?.cursor;
        const page = cursor === undefined ? 0 : Number(/^page-(\d+)$/.exec(cursor)?.[1] ?? NaN);
        if (!Number.isInteger(page) || page * PAGE_SIZE >= TOOLS.length) return answerWith({ jsonrpc: '2.0', id: message.id, error: { code: -32602, message: `Invalid cursor: ${cursor}` } });
        const tools = TOOLS.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
        const next = (page + 1) * PAGE_SIZE < TOOLS.length ? { nextCursor: `page-${page + 1}` } : {};
        result = { tools, ...next };
        break;
      }
      case 'tools/call': {
        const outcome = await callTool(message.params?.name, message.params?.arguments ?? {}, gone.signal);
        if (gone.signal.aborted) return;
        if (outcome.rpcError) return answerWith({ jsonrpc: '2.0', id: message.id, error: outcome.rpcError });
        result = outcome;
        break;
      }
      default:
        return answerWith({ jsonrpc: '2.0', id: message.id, error: { code: -32601, message: `Method not found: ${message.method}` } });
    }
    return answerWith({ jsonrpc: '2.0', id: message.id, result });

    function answerWith(response) {
      const mode = url.searchParams.get('answer') ?? answer;
      record.status = 200;
      record.answeredWith = mode;
      record.response = response;
      if (mode !== 'sse') {
        res.writeHead(200, { 'content-type': 'application/json', ...extraHeaders });
        res.end(JSON.stringify(response));
        notify();
        return;
      }
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', ...extraHeaders });
      const event = (obj, eventId) => `${eventId ? `id: ${eventId}\n` : ''}event: message\ndata: ${JSON.stringify(obj)}\n\n`;
      res.write(event({ jsonrpc: '2.0', method: 'notifications/message', params: { level: 'info', data: `handling ${message.method}` } }));
      res.write(event({ jsonrpc: '2.0', id: message.id, method: 'ping' }));
      res.write(event(response, `${sessionId}-${message.id}`));
      notify();
      // Left open, as a server may; the client needs nothing more and should hang up.
      const timer = setTimeout(() => res.end(), lingerMs);
      res.on('close', () => clearTimeout(timer));
    }
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();

  return {
    port,
    url: `http://127.0.0.1:${port}`,
    requests,
    sessions,
    /** Forgets every session: later requests carrying one get 404, as after a server restart. */
    forgetSessions() {
      sessions.clear();
    },
    /** Resolves with the first request (recorded or future) for which `pred(request)` holds. */
    waitForRequest: (pred = () => true, timeoutMs = 10_000) => waitFor(pred, timeoutMs, 'matching request'),
    reset() {
      requests.length = 0;
    },
    async close() {
      for (const res of open) res.socket?.destroy();
      clear();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
