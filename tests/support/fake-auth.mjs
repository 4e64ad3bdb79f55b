// A fake better-auth on loopback: GET /api/auth/get-session answers {session, user} for a known, unexpired session token (cookie or bearer), null otherwise, as better-auth does.
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { freePort } from './process.mjs';

/** better-auth's session cookie. */
export const COOKIE = 'better-auth.session_token';

// ---------------------------------------------------------------------------
// A fake better-auth: GET /api/auth/get-session answers {session, user} for a known, unexpired
// session token (cookie or bearer), null otherwise; counts its calls per token. `mode` breaks it.

export async function startFakeAuth() {
  const port = await freePort();
  const auth = {
    url: `http://127.0.0.1:${port}`,
    sessions: new Map(), // token -> { userId, expiresAt (ms), lying: answers even when expired }
    calls: new Map(), // token (or '-') -> count
    mode: 'ok', // 'ok' | 'error' (503) | 'hangup' (connection dropped)
    /** A new signed-in session; returns its cookie header. */
    signIn(userId, { ttlMs = 3_600_000, lying = false } = {}) {
      const token = `${randomUUID()}.sig`;
      auth.sessions.set(token, { userId, expiresAt: Date.now() + ttlMs, lying });
      return { token, cookie: `${COOKIE}=${token}; theme=dark` };
    },
    callsFor: (token) => auth.calls.get(token) ?? 0,
  };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, auth.url);
    if (url.pathname !== '/api/auth/get-session' || req.method !== 'GET') {
      res.writeHead(404).end();
      return;
    }
    const fromCookie = /(?:^|;\s*)better-auth\.session_token=([^;]+)/.exec(req.headers.cookie ?? '')?.[1];
    const fromBearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    const token = fromCookie ?? fromBearer ?? '-';
    auth.calls.set(token, auth.callsFor(token) + 1);
    if (auth.mode === 'error') {
      res.writeHead(503, { 'content-type': 'text/plain' }).end('database is down: postgres://secret@db');
      return;
    }
    if (auth.mode === 'hangup') {
      req.socket.destroy();
      return;
    }
    const s = auth.sessions.get(token);
    const live = s && (s.lying || s.expiresAt > Date.now());
    const body = live
      ? { session: { id: `s-${token.slice(0, 8)}`, userId: s.userId, token, expiresAt: new Date(s.expiresAt).toISOString() }, user: { id: s.userId, email: `${s.userId}@app.test`, name: s.userId } }
      : null;
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  auth.close = () => new Promise((resolve) => server.close(resolve));
  return auth;
}

