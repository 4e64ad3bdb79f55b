// Attacks on the gateway under wrangler dev, one per access hole: unauthenticated socket.io upgrades, two users racing for a new conversation, revoked and expired tokens on open sockets, cookies from foreign origins, private agents, the per-user rate limit, endless tool and error bodies, internal failures and leaked provider text, percent-encoded names.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import WebSocket from 'ws';
import { startFakeUpstream } from '../support/fake-upstream.mjs';
import { startToolServer } from '../support/tool-server.mjs';
import { eventually, startGateway, uniq } from '../support/harness.mjs';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const APP = 'http://app.test';
const EVIL = 'https://evil.example';
const RATE_LIMIT = 2;

let up;
let tools;
let gw; // defaults: ALLOWED_ORIGINS "*", CONNECT_TIMEOUT_MS 10 s
let strict; // ALLOWED_ORIGINS names the app
let limited; // RATE_LIMIT_PER_MINUTE = 2
let broken; // D1 without its conversations table: every ownership check fails

before(async () => {
  up = await startFakeUpstream();
  tools = await startToolServer();
  // One after the other: each that started is stopped by `after` even when a later one fails.
  gw = await startGateway({ upstream: up, vars: { RATE_LIMIT_PER_MINUTE: '1000' } });
  strict = await startGateway({ upstream: up, vars: { ALLOWED_ORIGINS: APP } });
  limited = await startGateway({ upstream: up, vars: { RATE_LIMIT_PER_MINUTE: String(RATE_LIMIT) } });
  broken = await startGateway({ upstream: up, d1Sql: ['DROP TABLE conversations'] });
});

after(async () => {
  await Promise.all([gw?.stop(), strict?.stop(), limited?.stop(), broken?.stop()]);
  await tools?.close();
  await up?.close();
});

const admin = (g, method, path, body) => g.http(method, path, { token: g.adminToken, body });

async function stats(g) {
  const res = await admin(g, 'GET', '/admin/stats');
  assert.equal(res.status, 200, res.text);
  return res.json.live;
}

/** Opens a JSON socket and consumes the manifest. */
async function openJson(g, opts) {
  const client = await g.connect(opts);
  assert.equal((await client.next(null)).event, 'commands:manifest', client.log.dump());
  return client;
}

/**
 * Resolves with the time `ws` got the server's close frame: `ws` moves to CLOSING then, while its
 * 'close' event waits for the TCP teardown, which wrangler dev's proxy delays by seconds.
 */
function closeFrameAt(ws, timeout = 30_000) {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const timer = setInterval(() => {
      if (ws.readyState >= WebSocket.CLOSING) {
        clearInterval(timer);
        resolve(Date.now());
      } else if (Date.now() - started > timeout) {
        clearInterval(timer);
        reject(new Error(`no close frame within ${timeout} ms`));
      }
    }, 20);
  });
}

/** A raw WebSocket on the socket.io endpoint that never authenticates; records frames and when it closed. */
function rawSio(g, conversationId, { headers = {} } = {}) {
  const url = `${g.wsUrl}/socket.io/?EIO=4&transport=websocket&conversationId=${encodeURIComponent(conversationId)}`;
  const ws = new WebSocket(url, { headers, perMessageDeflate: false });
  const socket = { ws, frames: [], openedAt: null, closedAt: null, status: null };
  socket.opened = new Promise((resolve, reject) => {
    ws.once('open', () => {
      socket.openedAt = Date.now();
      resolve();
    });
    ws.once('unexpected-response', (_req, res) => {
      socket.status = res.statusCode;
      reject(Object.assign(new Error(`refused with ${res.statusCode}`), { status: res.statusCode }));
    });
    ws.once('error', reject);
  });
  socket.closing = socket.opened.then(() => closeFrameAt(ws)).then((at) => (socket.closingAt = at));
  socket.closing.catch(() => {}); // a refused upgrade is asserted through `opened`
  socket.closed = new Promise((resolve) =>
    ws.once('close', (code) => {
      socket.closedAt = Date.now();
      resolve(code);
    }),
  );
  ws.on('message', (d) => socket.frames.push(d.toString()));
  return socket;
}

const requestsFor = (marker) => up.requests.filter((r) => r.lastUserText.includes(marker));

describe('1. an unauthenticated socket.io upgrade', () => {
  test('20 sockets that never authenticate leave /admin/stats unchanged, get only OPEN, and are closed within 10 s', async () => {
    const before = await stats(gw);
    const ids = Array.from({ length: 20 }, () => randomUUID());
    const sockets = ids.map((id) => rawSio(gw, id));
    await Promise.all(sockets.map((s) => s.opened));
    await sleep(1000);
    assert.deepEqual(await stats(gw), before, 'no live registry row for a socket nobody owns');
    await Promise.all(sockets.map((s) => s.closing));
    const codes = await Promise.all(sockets.map((s) => s.closed));
    for (const s of sockets) {
      assert.ok(s.closingAt - s.openedAt <= 11_000, `closed ${s.closingAt - s.openedAt} ms after opening`);
      assert.equal(s.frames.length, 1, `only the Engine.IO OPEN packet: ${JSON.stringify(s.frames)}`);
      assert.match(s.frames[0], /^0\{/);
    }
    assert.ok(codes.every((c) => c === 1008), `closed by the server with 1008: ${codes}`);
    assert.deepEqual(await stats(gw), before);
    // Nothing was recorded about those conversations: the first real user takes one as new.
    const token = await gw.mintToken(uniq('after-squat'));
    const client = await openJson(gw, { token, conversationId: ids[0] });
    const t = await client.turn(`first words ${uniq()}`);
    assert.equal(t.end.data.stopReason, 'stop', client.log.dump());
    await client.close();
  });

  test('events sent before CONNECT are refused and not acted on', async () => {
    const marker = uniq('pre-connect');
    const s = rawSio(gw, randomUUID());
    await s.opened;
    s.ws.send(`42/chat,["message",{"content":"${marker}"}]`);
    await sleep(800);
    assert.equal(requestsFor(marker).length, 0, 'nothing reached the model');
    assert.ok(s.frames.slice(1).every((f) => f.startsWith('44/chat,')), `only a CONNECT_ERROR: ${JSON.stringify(s.frames)}`);
    s.ws.close();
  });
});

describe('2. two users racing for a new conversation', () => {
  test('in 50 trials exactly one of two simultaneous users is attached; the other gets 403', async () => {
    const [ann, bob] = await Promise.all([gw.mintToken(uniq('ann')), gw.mintToken(uniq('bob'))]);
    let bothAttached = 0;
    for (let k = 0; k < 50; k++) {
      const conversationId = randomUUID();
      const results = await Promise.allSettled([gw.connect({ token: ann, conversationId }), gw.connect({ token: bob, conversationId })]);
      const opened = results.filter((r) => r.status === 'fulfilled').map((r) => r.value);
      const refused = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
      if (opened.length === 2) bothAttached++;
      assert.equal(opened.length, 1, `trial ${k}: exactly one attached (${opened.length})`);
      assert.equal(refused[0].refusal?.status, 403, `trial ${k}: ${refused[0].message}`);
      await Promise.all(opened.map((c) => c.close()));
    }
    assert.equal(bothAttached, 0);
  });

  test('the socket.io CONNECT of a second user to a conversation being claimed is refused', async () => {
    const [ann, bob] = await Promise.all([gw.mintToken(uniq('ann')), gw.mintToken(uniq('bob'))]);
    for (let k = 0; k < 10; k++) {
      const conversationId = randomUUID();
      const results = await Promise.allSettled([gw.connectSio({ token: ann, conversationId }), gw.connectSio({ token: bob, conversationId })]);
      const opened = results.filter((r) => r.status === 'fulfilled').map((r) => r.value);
      assert.equal(opened.length, 1, `trial ${k}: exactly one connected`);
      const refusal = results.find((r) => r.status === 'rejected').reason;
      assert.match(refusal.message, /another user/);
      await Promise.all(opened.map((c) => c.close()));
    }
  });
});

describe('3. a revoked or expired token on an open socket', () => {
  test('revocation closes the JSON and socket.io sockets it opened within 5 s; what they send after is not acted on', async () => {
    const name = uniq('soon-revoked');
    const userId = uniq('rita');
    const token = await gw.mintToken(userId, name);
    const other = await gw.mintToken(userId); // the same user's other token stays valid
    const conversationId = randomUUID();
    const json = await openJson(gw, { token, conversationId });
    const sio = await gw.connectSio({ token, conversationId });
    assert.equal((await sio.next(null)).event, 'commands:manifest');
    const survivor = await openJson(gw, { token: other, conversationId });
    const revokedAt = Date.now();
    const res = await admin(gw, 'DELETE', `/admin/tokens/${encodeURIComponent(name)}`);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.socketsClosed, 2, res.text);
    const error = await json.next('error', { timeout: 5000 });
    assert.equal(error.data.code, 'unauthorized');
    const sioError = await sio.next('error', { timeout: 5000 });
    assert.equal(sioError.data.code, 'unauthorized');
    const closing = await closeFrameAt(json.ws, 5000);
    assert.ok(closing - revokedAt < 5000, 'closed within 5 s');
    const sioClosed = await sio.closed;
    assert.ok(Date.now() - revokedAt < 5000, 'the socket.io client was disconnected within 5 s');
    const closed = await json.closed;
    assert.equal(closed.code, 1008);
    assert.equal(sioClosed.reason, 'io server disconnect');
    // A frame sent on the dead socket goes nowhere; the other token's socket keeps working.
    const marker = uniq('after-revoke');
    try {
      json.send('message', { conversationId, content: marker });
    } catch {
      // the socket is closed: the send itself may throw
    }
    const t = await survivor.turn(`still mine ${uniq()}`);
    assert.equal(t.end.data.stopReason, 'stop');
    assert.equal(requestsFor(marker).length, 0);
    assert.equal((await gw.expectUpgradeFailure({ token, conversationId })).status, 401);
    await survivor.close();
  });

  test('a token that expires closes its open socket at expiry with error unauthorized', async () => {
    const res = await admin(gw, 'POST', '/admin/tokens', { userId: uniq('eve'), name: uniq('brief'), expiresInSeconds: 2 });
    assert.equal(res.status, 201, res.text);
    const client = await openJson(gw, { token: res.json.token, conversationId: randomUUID() });
    const opened = Date.now();
    const error = await client.next('error', { timeout: 6000 });
    assert.equal(error.data.code, 'unauthorized');
    assert.match(error.data.error, /expired/);
    const after = (await closeFrameAt(client.ws, 6000)) - opened;
    assert.equal((await client.closed).code, 1008);
    assert.ok(after >= 1500 && after < 5000, `closed ${after} ms after opening a 2 s token`);
  });
});

describe('4. cookies and origins', () => {
  test('with ALLOWED_ORIGINS "*", a cookie from a foreign page is refused; the same token in a header or query is not', async () => {
    const token = await gw.mintToken(uniq('cara'));
    const cookie = { headers: { cookie: `token=${token}` } };
    const refused = await gw.expectUpgradeFailure({ ...cookie, origin: EVIL });
    assert.equal(refused.status, 403, refused.body);
    assert.match(refused.json.error, /cookie/);
    const sio = rawSio(gw, randomUUID(), { headers: { ...cookie.headers, origin: EVIL } });
    await assert.rejects(sio.opened, (e) => e.status === 403);
    // Non-browser clients send no Origin: the cookie works.
    (await openJson(gw, cookie)).close();
    // An explicit credential may come from any page when every origin is allowed.
    (await openJson(gw, { token, origin: EVIL })).close();
    (await openJson(gw, { token, useHeaderAuth: true, origin: EVIL })).close();
    const api = await gw.http('GET', '/api/me', { headers: { ...cookie.headers, origin: EVIL } });
    assert.equal(api.status, 403, api.text);
  });

  test('a listed origin may use a cookie, an unlisted one may not, and the gateway\'s own page always may', async () => {
    const token = await strict.mintToken(uniq('olga'));
    (await openJson(strict, { headers: { cookie: `token=${token}` }, origin: APP })).close();
    assert.equal((await strict.expectUpgradeFailure({ token, origin: EVIL })).status, 403);
    assert.equal((await strict.expectUpgradeFailure({ headers: { cookie: `token=${token}` }, origin: EVIL })).status, 403);
    // The built-in chat page is served by the gateway itself: its origin is never refused.
    (await openJson(strict, { token, origin: strict.url })).close();
    (await openJson(strict, { headers: { cookie: `token=${token}` }, origin: strict.url })).close();
    const sio = await strict.connectSio({ token, extraHeaders: { origin: strict.url } });
    await sio.close();
  });
});

describe('5. private agents', () => {
  const agents = {};
  before(async () => {
    const tool = (name) => ({ name, url: `${tools.url}/tools/echo`, parameters: { type: 'object', properties: {} } });
    const define = async (body) => {
      const res = await admin(gw, 'POST', '/admin/agents', body);
      assert.equal(res.status, 201, res.text);
      return body.name;
    };
    agents.ops = await define({ name: uniq('ops'), systemPrompt: 'Operator only.', tools: [{ ...tool('deploy'), secret: 'operator-secret' }] });
    agents.team = await define({ name: uniq('team'), systemPrompt: 'Team only.', users: ['tess'], tools: [] });
    agents.shared = await define({ name: uniq('shared'), systemPrompt: 'Anyone.', tools: [tool('echo')] });
  });

  test('an agent with a secret tool, or a users list, is refused to others as unknown, and listings name only usable agents', async () => {
    const token = await gw.mintToken('mallory');
    const client = await openJson(gw, { token, conversationId: randomUUID() });
    for (const agentId of [agents.ops, agents.team]) {
      const marker = uniq('agent-attempt');
      client.send('message', { conversationId: client.conversationId, content: marker, agentId });
      const e = await client.next('error');
      assert.equal(e.data.code, 'unknown_agent', client.log.dump());
      assert.equal(e.data.error, 'Failed to start agent session. Please try again.');
      const listed = e.data.detail.split('Available:')[1] ?? '';
      assert.ok(!listed.includes(agents.ops) && !listed.includes(agents.team), `the listing hides private agents: ${e.data.detail}`);
      assert.ok(listed.includes(agents.shared), `the listing names the public agent: ${e.data.detail}`);
      await sleep(300);
      assert.equal(requestsFor(marker).length, 0, 'nothing reached the model');
    }
    client.send('command:execute', { conversationId: client.conversationId, command: `/agent ${agents.ops}` });
    const refused = await client.next('command:result');
    assert.equal(refused.data.success, false);
    client.send('command:execute', { conversationId: client.conversationId, command: '/agent nobody-here' });
    const listing = await client.next('command:result');
    assert.equal(listing.data.success, false);
    assert.ok(listing.data.message.includes(agents.shared));
    assert.ok(!listing.data.message.includes(agents.ops) && !listing.data.message.includes(agents.team), listing.data.message);
    const t = await client.turn(`shared is fine ${uniq()}`, { agentId: agents.shared });
    assert.equal(t.end.data.stopReason, 'stop', client.log.dump());
    await client.close();
  });

  test('a user named in users may run the agent', async () => {
    const token = await gw.mintToken('tess');
    const client = await openJson(gw, { token, conversationId: randomUUID() });
    const t = await client.turn(`team work ${uniq()}`, { agentId: agents.team });
    assert.deepEqual(t.errors, [], client.log.dump());
    assert.equal(t.info.data.agentName, agents.team);
    const admins = await admin(gw, 'GET', '/admin/agents');
    assert.ok(!admins.text.includes('operator-secret'), 'secrets stay hidden from the admin listing');
    await client.close();
  });
});

describe('6. the per-user rate limit', () => {
  test('2 a minute holds across five conversations, counts commands and set:thinking, and survives a restart', async () => {
    const token = await limited.mintToken(uniq('rick'));
    const sockets = [];
    for (let k = 0; k < 5; k++) sockets.push(await openJson(limited, { token, conversationId: randomUUID() }));
    let admitted = 0;
    let refused = 0;
    for (const s of sockets) {
      for (let m = 0; m < 2; m++) {
        s.log.skipAll();
        s.send('message', { conversationId: s.conversationId, content: `spread ${uniq()}` });
        const first = await s.next(['message:ack', 'error'], { timeout: 10_000 });
        if (first.event === 'message:ack') {
          admitted++;
          await s.next('agent:end', { timeout: 15_000 });
        } else {
          assert.equal(first.data.code, 'rate_limited', s.log.dump());
          refused++;
        }
      }
    }
    assert.equal(admitted, RATE_LIMIT, `admitted across conversations: ${admitted}`);
    assert.equal(refused, 10 - RATE_LIMIT);
    // A flood of commands and settings on a fresh conversation of the same user: all refused, no session:info.
    const flood = sockets[4];
    flood.log.skipAll();
    for (let k = 0; k < 100; k++) {
      flood.send('set:thinking', { conversationId: flood.conversationId, level: 'low' });
      flood.send('command:execute', { conversationId: flood.conversationId, command: '/model openai/gpt-4o' });
    }
    await eventually(() => flood.events.filter((f) => f.event === 'error' || f.event === 'command:result').length >= 200, { timeout: 20_000, what: '200 answers' });
    const errors = flood.events.filter((f) => f.event === 'error');
    assert.ok(errors.every((e) => e.data.code === 'rate_limited'), JSON.stringify(errors.slice(0, 3)));
    const results = flood.events.filter((f) => f.event === 'command:result');
    assert.ok(results.every((r) => r.data.success === false), 'no command ran');
    assert.equal(flood.events.filter((f) => f.event === 'session:info').length, 0, 'nothing was written');
    for (const s of sockets) await s.close();
    // The limiter keeps its state in storage: a restart of every object does not reset it.
    await limited.restart();
    const again = await openJson(limited, { token, conversationId: randomUUID() });
    again.send('message', { conversationId: again.conversationId, content: `after restart ${uniq()}` });
    const e = await again.next(['message:ack', 'error']);
    assert.equal(e.event, 'error', again.log.dump());
    assert.equal(e.data.code, 'rate_limited');
    // Another user is not affected.
    const otherToken = await limited.mintToken(uniq('rhea'));
    const other = await openJson(limited, { token: otherToken, conversationId: randomUUID() });
    const t = await other.turn(`my own limit ${uniq()}`);
    assert.equal(t.end.data.stopReason, 'stop', other.log.dump());
    await again.close();
    await other.close();
  });
});

describe('7. endless answers', () => {
  test('an endless tool answer is read up to 256 KiB, the connection is dropped, and the turn ends normally', async () => {
    const name = uniq('endless-agent');
    const res = await admin(gw, 'POST', '/admin/agents', {
      name,
      public: true,
      tools: [{ name: 'endless', url: `${tools.url}/tools/endless`, parameters: { type: 'object', properties: {} } }],
    });
    assert.equal(res.status, 201, res.text);
    const token = await gw.mintToken(uniq('tina'));
    const client = await openJson(gw, { token, conversationId: randomUUID() });
    const marker = uniq('endless-tool');
    const t = await client.turn(`${marker} [[tool name=endless args={}]]`, { agentId: name }, { timeout: 30_000 });
    assert.equal(t.end.data.stopReason, 'stop', client.log.dump());
    assert.equal(t.toolEnds.length, 1);
    const second = requestsFor(marker).at(-1);
    const result = second.toolResults[0].content;
    assert.ok(result.length <= 256 * 1024 + 200, `at most 256 KiB reach the model: ${result.length}`);
    assert.match(result, /truncated by the gateway/);
    const call = await tools.waitForClientClose((c) => c.name === 'endless');
    assert.ok(call.bytesSent < 64 * 1024 * 1024, `the gateway stopped reading: the server wrote ${call.bytesSent} bytes`);
    await client.close();
  });

  test('an endless provider error body is read up to 256 KiB and the turn ends with the error', async () => {
    const token = await gw.mintToken(uniq('uma'));
    const client = await openJson(gw, { token, conversationId: randomUUID() });
    const marker = uniq('endless-error');
    const t = await client.turn(`${marker} [[status code=400 endless=1]]`, {}, { timeout: 30_000 });
    assert.equal(t.end.data.stopReason, 'error', client.log.dump());
    assert.match(t.errors[0].data.detail, /400/);
    const rec = requestsFor(marker)[0];
    await eventually(() => rec.finishedAt, { what: 'the gateway hung up' });
    assert.ok(rec.endlessBytes < 64 * 1024 * 1024, `the server wrote ${rec.endlessBytes} bytes before the gateway hung up`);
    await client.close();
  });
});

describe('8. internal failures and provider text', () => {
  test('a D1 failure in the ownership check is a 503 or CONNECT_ERROR saying internal, without the database text', async () => {
    const token = await broken.mintToken(uniq('ida'));
    const refused = await broken.expectUpgradeFailure({ token, conversationId: randomUUID() });
    assert.equal(refused.status, 503, refused.body);
    assert.equal(refused.json.code, 'internal');
    assert.doesNotMatch(refused.body, /no such table|D1|SQLITE/i);
    const err = await broken.expectSioConnectError({ token, conversationId: randomUUID() });
    assert.match(err.message, /^internal/);
    assert.doesNotMatch(err.message, /no such table|D1|SQLITE|forbidden|another user/i);
  });

  test('provider errors reach the client without keys, account ids or the provider\'s words for auth failures', async () => {
    const token = await gw.mintToken(uniq('pia'));
    const client = await openJson(gw, { token, conversationId: randomUUID() });
    const leak = 'sk-live-9f8e7d6c5b4a3210ffee';
    const t401 = await client.turn(`${uniq()} [[status code=401 message="Incorrect API key provided: ${leak}"]]`);
    assert.equal(t401.end.data.error?.code, 'upstream_auth');
    const t400 = await client.turn(`${uniq()} [[status code=400 message="Quota of org-Q1w2E3r4T5y6 exceeded for ${leak}"]]`);
    assert.equal(t400.end.data.error?.code, 'upstream_bad_request');
    for (const t of [t401, t400]) {
      const text = JSON.stringify(t.frames);
      assert.ok(!text.includes(leak), `no key fragment: ${text}`);
      assert.ok(!text.includes('org-Q1w2E3r4T5y6'), 'no organisation id');
      assert.equal(t.errors[0].data.error, 'The agent failed to process your message. Please try again.');
      assert.match(t.errors[0].data.detail, /openai answered 40[01]/);
    }
    assert.match(t400.errors[0].data.detail, /Quota of \[redacted\]/, 'the provider\'s words stay where they are harmless');
    await client.close();
  });
});

describe('9. names that need percent-encoding', () => {
  test('a token named "alice laptop" is revoked at /admin/tokens/alice%20laptop', async () => {
    const name = `alice laptop ${uniq()}`;
    const token = await gw.mintToken('alice', name);
    (await openJson(gw, { token })).close();
    const res = await admin(gw, 'DELETE', `/admin/tokens/${encodeURIComponent(name)}`);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.revoked, name);
    assert.equal((await gw.expectUpgradeFailure({ token })).status, 401);
    const bad = await admin(gw, 'DELETE', '/admin/tokens/%FF');
    assert.equal(bad.status, 400, bad.text);
  });
});
