// An HTTP tool server on loopback for the gateway's tool loop: `POST /tools/<name>` with JSON arguments, every call recorded.
import http from 'node:http';
import { preciseNow } from './fake-upstream.mjs';
import { recordWaiters } from './waiters.mjs';

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    });
  });

/**
 * Starts the tool server on 127.0.0.1 (a free port). Tools:
 * - `echo`: answers `{echo: <args>}`;
 * - `add`: `{a, b}` → `{sum}` (400 when either is not a number);
 * - `slow`: waits `ms` (default 1000) then answers `{waited}`; the record says whether the client went away first;
 * - `fail`: always 500 `{error}`;
 * - `endless`: 200 with a body that never ends, until the client hangs up;
 * - `secret`: 401 unless `authorization: Bearer <secret>`, then `{ok: true}`.
 */
export async function startToolServer({ secret = 'test-tool-secret' } = {}) {
  const calls = [];
  const openResponses = new Set();

  const { notify, waitFor, clear: clearWaiters } = recordWaiters(calls, { label: 'tool server', describe: (c) => `${c.name} ${JSON.stringify(c.body)} status=${c.status} closedByClient=${c.closedByClient}` });

  async function handle(req, res) {
    const receivedAt = preciseNow();
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const raw = Buffer.concat(chunks).toString('utf8');
    const match = /^\/tools\/([A-Za-z0-9_-]+)$/.exec((req.url ?? '').split('?')[0]);
    const call = {
      name: match?.[1] ?? null,
      path: req.url,
      method: req.method,
      headers: req.headers,
      body: null,
      rawBody: raw,
      receivedAt,
      status: null,
      response: null,
      closedByClient: false,
      closedAt: null,
    };
    calls.push(call);
    const gone = new AbortController();
    res.on('close', () => {
      openResponses.delete(res);
      call.closedAt = preciseNow();
      if (!res.writableFinished) {
        call.closedByClient = true;
        gone.abort();
      }
      notify();
    });
    openResponses.add(res);

    const answer = (status, obj) => {
      call.status = status;
      call.response = obj;
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(obj));
      notify();
    };

    if (!match) return answer(404, { error: `no such route: ${req.method} ${req.url}` });
    if (req.method !== 'POST') return answer(405, { error: 'tools take POST' });
    try {
      call.body = raw ? JSON.parse(raw) : {};
    } catch {
      return answer(400, { error: 'the body is not JSON' });
    }
    notify();
    const args = call.body ?? {};
    switch (call.name) {
      case 'echo':
        return answer(200, { echo: args });
      case 'add':
        if (typeof args.a !== 'number' || typeof args.b !== 'number') return answer(400, { error: 'add needs numbers a and b' });
        return answer(200, { sum: args.a + args.b });
      case 'slow': {
        const ms = Number.isFinite(args.ms) ? args.ms : 1000;
        await sleep(ms, gone.signal);
        if (gone.signal.aborted) return;
        return answer(200, { waited: ms });
      }
      case 'fail':
        return answer(500, { error: 'the fail tool always fails' });
      case 'endless': {
        // An answer that never ends: 64 KiB chunks until the client hangs up (bytesSent counts them).
        call.status = 200;
        call.bytesSent = 0;
        res.writeHead(200, { 'content-type': 'text/plain' });
        const chunk = Buffer.alloc(64 * 1024, 'y');
        const pump = () => {
          // Every chunk handed to the socket counts, the one that filled its buffer too.
          while (!res.destroyed) {
            call.bytesSent += chunk.length;
            if (!res.write(chunk)) break;
          }
          if (!res.destroyed) res.once('drain', pump);
        };
        pump();
        return;
      }
      case 'secret':
        if (req.headers.authorization !== `Bearer ${secret}`) return answer(401, { error: 'missing or wrong bearer token' });
        return answer(200, { ok: true });
      default:
        return answer(404, { error: `unknown tool: ${call.name}` });
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
    secret,
    calls,
    /** Resolves with the first call (already recorded or future) for which `pred(call)` holds. */
    waitForCall: (pred = () => true, timeoutMs = 10_000) => waitFor(pred, timeoutMs, 'matching call'),
    /** Resolves with the first matching call that the client abandoned before the answer. */
    waitForClientClose: (pred = () => true, timeoutMs = 10_000) => waitFor((c) => c.closedByClient && pred(c), timeoutMs, 'client close'),
    reset() {
      calls.length = 0;
    },
    async close() {
      for (const res of openResponses) res.socket?.destroy();
      clearWaiters();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
