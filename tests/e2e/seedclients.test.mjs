// Clients written for the reference socket.io gateway, unchanged: `io(url + "/chat")` with default options (long-polling, then the upgrade to a WebSocket), one connection for every conversation, a page on another origin with credentials, recovery across a dropped transport, and a client that never signs in.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { io } from 'socket.io-client';
import { COOKIE, startFakeAuth } from '../support/fake-auth.mjs';
import { startFakeUpstream } from '../support/fake-upstream.mjs';
import { SioClient, eventually, startGateway, summarizeTurn, uniq } from '../support/harness.mjs';

const APP = 'http://app.test';
const EVIL = 'https://evil.example';

let up;
let gw;

before(async () => {
  up = await startFakeUpstream();
  gw = await startGateway({ upstream: up, vars: { ALLOWED_ORIGINS: APP } });
});

after(async () => {
  await gw?.stop();
  await up?.close();
});

/** A socket.io client with the reference clients' options: nothing but what the test names. */
function seedSocket(opts = {}) {
  return io(`${gw.url}/chat`, { forceNew: true, reconnection: false, ...opts });
}

/** Connects and waits for the manifest, which a signed-in client gets first. */
async function connect(opts) {
  const socket = seedSocket(opts);
  const client = new SioClient(socket);
  let firstTransport;
  socket.io.once('open', () => (firstTransport = socket.io.engine.transport.name));
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });
  const first = await client.next(null);
  assert.equal(first.event, 'commands:manifest', client.log.dump());
  return { socket, client, firstTransport };
}

async function user(label = 'seed') {
  const id = uniq(label);
  return { id, token: await gw.mintToken(id) };
}

/** Every frame of one turn, after `message`. */
async function turn(client, payload, timeout = 30_000) {
  client.log.skipAll();
  client.send('message', payload);
  return summarizeTurn(await client.until('agent:end', { timeout }));
}

const offsetOf = (frame) => (typeof frame.args?.at(-1) === 'string' && frame.args.length >= 2 ? frame.args.at(-1) : undefined);

describe('one connection, many conversations', () => {
  test('default options: polling first, then the upgrade, and a turn streams in order', async () => {
    const { token } = await user();
    const { socket, client, firstTransport } = await connect({ auth: { token } });
    assert.equal(firstTransport, 'polling', 'the reference client starts with long-polling');
    const t = await turn(client, { content: `over polling ${uniq()}` });
    assert.deepEqual(t.errors, [], client.log.dump());
    assert.equal(t.end.data.stopReason, 'stop');
    assert.match(t.text, /^You said: over polling/);
    await eventually(() => socket.io.engine.transport.name === 'websocket', { timeout: 10_000, what: 'the upgrade to a WebSocket' });
    const again = await turn(client, { conversationId: t.ack.data.conversationId, content: `over the socket ${uniq()}` });
    assert.equal(again.end.data.stopReason, 'stop', client.log.dump());
    socket.close();
  });

  test('long-polling alone (no upgrade) carries whole turns', async () => {
    const { token } = await user();
    const { socket, client } = await connect({ auth: { token }, transports: ['polling'] });
    for (let k = 0; k < 2; k++) {
      const t = await turn(client, { content: `polling only ${k} ${uniq()} [[slow deltas=20 delay=10]]` });
      assert.equal(t.end.data.stopReason, 'stop', client.log.dump());
      assert.equal(t.texts.length, 20, 'every delta, once');
    }
    assert.equal(socket.io.engine.transport.name, 'polling');
    socket.close();
  });

  test('a message without an id starts a new conversation each time; one with an id moves the socket there and back', async () => {
    const { token } = await user();
    const { socket, client } = await connect({ auth: { token } });
    const first = await turn(client, { content: `first ${uniq()}` });
    const second = await turn(client, { content: `second ${uniq()}` });
    const a = first.ack.data.conversationId;
    const b = second.ack.data.conversationId;
    assert.ok(a && b && a !== b, `two conversations: ${a} ${b}`);
    for (const id of [a, b, a]) {
      const t = await turn(client, { conversationId: id, content: `back to ${id} ${uniq()}` });
      assert.equal(t.end.data.conversationId, id);
      assert.ok(t.frames.every((f) => f.data?.conversationId === undefined || f.data.conversationId === id), `only ${id}'s events: ${client.log.dump()}`);
    }
    // The history of each holds its own turns only.
    const history = async (id) => (await gw.http('GET', `/api/conversations/${id}/messages`, { token })).json.messages.filter((m) => m.role === 'user').length;
    assert.equal(await history(a), 3);
    assert.equal(await history(b), 2);
    socket.close();
  });

  test('a socket that moves on stops getting the old conversation\'s turn, which goes on and is stored', async () => {
    const { token } = await user();
    const { socket, client } = await connect({ auth: { token }, transports: ['websocket'] });
    const a = randomUUID();
    const b = randomUUID();
    client.send('message', { conversationId: a, content: `long one ${uniq()} [[slow deltas=60 delay=50]]` });
    await client.next('agent:text', { timeout: 10_000 });
    const t = await turn(client, { conversationId: b, content: `meanwhile ${uniq()}` });
    assert.equal(t.end.data.conversationId, b);
    const seen = client.events.length;
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const late = client.events.slice(seen).filter((f) => f.data?.conversationId === a);
    assert.deepEqual(late, [], 'nothing of the old conversation after the move');
    const stored = await eventually(async () => {
      const msgs = (await gw.http('GET', `/api/conversations/${a}/messages`, { token })).json.messages;
      return msgs.find((m) => m.role === 'assistant' && m.metadata?.stopReason === 'stop');
    }, { timeout: 15_000, what: "the old conversation's reply" });
    assert.match(stored.content, /^You said: long one/);
    socket.close();
  });

  test('abort and set:thinking name their conversation; acks answer on the same connection', async () => {
    const { token } = await user();
    const { socket, client } = await connect({ auth: { token }, transports: ['websocket'] });
    const a = randomUUID();
    const ack = await socket.timeout(10_000).emitWithAck('message', { conversationId: a, content: `to abort ${uniq()} [[slow deltas=100 delay=50]]` });
    assert.equal(ack.conversationId, a, JSON.stringify(ack));
    await client.next('agent:text', { timeout: 10_000 });
    const aborted = await socket.timeout(10_000).emitWithAck('abort', { conversationId: a });
    assert.deepEqual(aborted, { ok: true });
    const end = await client.next('agent:end', { timeout: 10_000 });
    assert.equal(end.data.stopReason, 'aborted');
    const refused = await socket.timeout(10_000).emitWithAck('set:thinking', { conversationId: a, level: 'galaxy-brain' });
    assert.match(refused.error, /galaxy-brain/);
    socket.close();
  });

  test("another user's conversation is refused on the connection, which stays usable", async () => {
    const alice = await user('alice');
    const bob = await user('bob');
    const own = await connect({ auth: { token: alice.token }, transports: ['websocket'] });
    const t = await turn(own.client, { content: `alice's ${uniq()}` });
    const theirs = t.ack.data.conversationId;
    own.socket.close();

    const { socket, client } = await connect({ auth: { token: bob.token }, transports: ['websocket'] });
    const content = `bob snooping ${uniq()}`;
    const reply = await socket.timeout(10_000).emitWithAck('message', { conversationId: theirs, content });
    assert.match(reply.error, /another user/, JSON.stringify(reply));
    const e = await client.next('error', { timeout: 5000 });
    assert.equal(e.data.conversationId, theirs);
    assert.equal(up.requestsFor(content).length, 0, 'nothing reached the model');
    const mine = await turn(client, { content: `bob's own ${uniq()}` });
    assert.equal(mine.end.data.stopReason, 'stop', client.log.dump());
    socket.close();
  });

  test('malformed packets over polling get an error and the connection goes on', async () => {
    const { token } = await user();
    const { socket, client } = await connect({ auth: { token }, transports: ['polling'] });
    const sid = socket.io.engine.id;
    const post = await fetch(`${gw.url}/socket.io/?EIO=4&transport=polling&sid=${sid}`, { method: 'POST', body: '42/chat,["message",{"content":5}]\x1e42/chat,[' });
    assert.equal(post.status, 200, await post.text());
    const errors = [await client.next('error', { timeout: 5000 }), await client.next('error', { timeout: 5000 })];
    assert.equal(errors[0].data.code, 'invalid_payload', JSON.stringify(errors));
    assert.match(errors[1].data.error, /malformed socket\.io packet/);
    const t = await turn(client, { content: `still fine ${uniq()}` });
    assert.equal(t.end.data.stopReason, 'stop');
    socket.close();
  });

  test('POST /admin/reload reaches a connection before its first message, and a connection with several conversations once', async () => {
    const { token } = await user();
    const idle = await connect({ auth: { token } });
    const busy = await connect({ auth: { token }, transports: ['websocket'] });
    await turn(busy.client, { content: `one ${uniq()}` });
    await turn(busy.client, { content: `two ${uniq()}` });
    const reason = uniq('deploy');
    const res = await gw.http('POST', '/admin/reload', { token: gw.adminToken, body: { reason, version: '2.0' } });
    assert.equal(res.status, 200, res.text);
    const reloads = (c) => c.client.events.filter((f) => f.event === 'system:reload' && f.data?.reason === reason);
    await eventually(() => reloads(idle).length === 1 && reloads(busy).length === 1, { timeout: 10_000, what: 'system:reload on both connections' });
    await new Promise((resolve) => setTimeout(resolve, 1000));
    assert.equal(reloads(busy).length, 1, 'once, though two conversations relay it too');
    assert.deepEqual(reloads(idle)[0].data, { reason, version: '2.0' }, 'the admin\'s payload as given');
    idle.socket.close();
    busy.socket.close();
    await eventually(async () => {
      const stats = await gw.http('GET', '/admin/stats', { token: gw.adminToken });
      return stats.status === 200;
    });
  });

  test('an unknown sid is an Engine.IO error, not a new connection', async () => {
    const res = await fetch(`${gw.url}/socket.io/?EIO=4&transport=polling&sid=${randomUUID()}`);
    assert.equal(res.status, 400);
    assert.deepEqual(await res.json(), { code: 1, message: 'Session ID unknown' });
  });
});

describe('signing in as the reference clients do', () => {
  test('a client that never signs in is connected, then disconnected by the server, with no event and nothing stored', async () => {
    for (const transports of [undefined, ['websocket']]) {
      const socket = seedSocket(transports ? { transports } : {});
      const client = new SioClient(socket);
      await new Promise((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('connect_error', reject);
      });
      const { reason } = await client.closed;
      assert.equal(reason, 'io server disconnect');
      assert.deepEqual(client.events, [], 'no event before the disconnect');
      socket.close();
    }
    const stats = await gw.http('GET', '/admin/stats', { token: gw.adminToken });
    assert.equal(stats.status, 200);
  });

  test('a bad token in the CONNECT is refused with connect_error; a bad explicit token on the handshake is a 401', async () => {
    const socket = seedSocket({ auth: { token: `nope-${randomUUID()}` } });
    const err = await new Promise((resolve, reject) => {
      socket.once('connect_error', resolve);
      socket.once('connect', () => reject(new Error('connected with a bad token')));
    });
    assert.match(err.message, /invalid, expired or revoked/);
    socket.close();
    const res = await fetch(`${gw.url}/socket.io/?EIO=4&transport=polling&token=nope-${randomUUID()}`);
    assert.equal(res.status, 401);
  });

  test('a revoked token ends its connection, also one that has not used a conversation yet', async () => {
    const name = uniq('revoked');
    const token = await gw.mintToken(uniq('rex'), name);
    const { socket, client } = await connect({ auth: { token } });
    const closed = new Promise((resolve) => socket.once('disconnect', resolve));
    const res = await gw.http('DELETE', `/admin/tokens/${encodeURIComponent(name)}`, { token: gw.adminToken });
    assert.equal(res.status, 200, res.text);
    assert.ok(res.json.socketsClosed >= 1, res.text);
    const e = await client.next('error', { timeout: 5000 });
    assert.equal(e.data.code, 'unauthorized');
    assert.equal(await closed, 'io server disconnect');
    socket.close();
  });

  test('a page on a listed origin polls with credentials (the cookie) and gets the CORS answer a browser needs', async () => {
    const { token } = await user();
    const preflight = await fetch(`${gw.url}/socket.io/?EIO=4&transport=polling`, { method: 'OPTIONS', headers: { origin: APP, 'access-control-request-method': 'POST' } });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get('access-control-allow-origin'), APP);
    assert.equal(preflight.headers.get('access-control-allow-credentials'), 'true');
    const open = await fetch(`${gw.url}/socket.io/?EIO=4&transport=polling`, { headers: { origin: APP, cookie: `token=${token}` } });
    assert.equal(open.status, 200);
    assert.equal(open.headers.get('access-control-allow-origin'), APP);
    assert.equal(open.headers.get('access-control-allow-credentials'), 'true');
    const body = await open.text();
    assert.match(body, /^0\{"sid":"[^"]+","upgrades":\["websocket"\]/);

    const { socket, client } = await connect({ withCredentials: true, extraHeaders: { origin: APP, cookie: `token=${token}` } });
    const t = await turn(client, { content: `from the app ${uniq()}` });
    assert.equal(t.end.data.stopReason, 'stop', client.log.dump());
    socket.close();
  });

  test('a page on another origin may not use the cookie', async () => {
    const { token } = await user();
    const res = await fetch(`${gw.url}/socket.io/?EIO=4&transport=polling`, { headers: { origin: EVIL, cookie: `token=${token}` } });
    assert.equal(res.status, 403, await res.text());
    assert.equal(res.headers.get('access-control-allow-credentials'), null);
    const socket = seedSocket({ withCredentials: true, extraHeaders: { origin: EVIL, cookie: `token=${token}` } });
    await new Promise((resolve, reject) => {
      socket.once('connect_error', resolve);
      socket.once('connect', () => reject(new Error('a foreign page connected with the cookie')));
    });
    socket.close();
  });
});

describe('connection state recovery', () => {
  test('a dropped transport mid-turn: the client reconnects, recovers, and gets every delta exactly once', async () => {
    const { token } = await user();
    const socket = seedSocket({ auth: { token }, reconnection: true, reconnectionDelay: 200, reconnectionDelayMax: 500 });
    // Recorded by hand: the harness's client ends its log at the first disconnect.
    const frames = [];
    socket.onAny((event, ...args) => frames.push({ event, data: args[0], args }));
    await new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('connect_error', reject);
    });
    await eventually(() => socket.io.engine.transport.name === 'websocket', { timeout: 10_000, what: 'the upgrade' });
    const conversationId = randomUUID();
    const content = `recover me ${uniq()} [[slow deltas=40 delay=50]]`;
    socket.emit('message', { conversationId, content });
    await eventually(() => frames.filter((f) => f.event === 'agent:text').length >= 10, { timeout: 10_000, what: '10 deltas' });
    const reconnected = new Promise((resolve) => socket.once('connect', resolve));
    const dropped = new Promise((resolve) => socket.once('disconnect', resolve));
    // What a network drop does: the transport closes under the client.
    socket.io.engine.transport.ws.close();
    assert.equal(await dropped, 'transport close');
    await reconnected;
    assert.equal(socket.recovered, true, 'the connection state was recovered');
    await eventually(() => frames.some((f) => f.event === 'agent:end'), { timeout: 20_000, what: 'agent:end' });
    const deltas = frames.filter((f) => f.event === 'agent:text');
    const offsets = deltas.map(offsetOf);
    assert.equal(new Set(offsets).size, offsets.length, 'no delta twice');
    assert.equal(deltas.map((f) => f.data.text).join(''), up.requestsFor(content)[0].sent.text, 'every delta, in order');
    assert.ok(offsets.every((o) => o.endsWith(`:${conversationId}`)), 'offsets name the conversation');
    socket.close();
  });
});

describe("signed in with the app's own session (a fake better-auth), default options", () => {
  let auth;
  let app;
  before(async () => {
    auth = await startFakeAuth();
    app = await startGateway({ upstream: up, vars: { AUTH_SESSION_URL: `${auth.url}/api/auth/get-session` } });
  });
  after(async () => {
    await app?.stop();
    await auth?.close();
  });

  /** The reference client in a page: its cookies go with every request (extraHeaders stand in for the browser's jar). */
  const seed = (cookie, opts = {}) => io(`${app.url}/chat`, { forceNew: true, reconnection: false, withCredentials: true, extraHeaders: { cookie }, ...opts });

  test('a cookie the app knows: polling then the upgrade, two conversations on one connection, back and forth', async () => {
    const { cookie } = auth.signIn(uniq('ada'));
    const socket = seed(cookie);
    const client = new SioClient(socket);
    await new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('connect_error', reject);
    });
    assert.equal((await client.next(null)).event, 'commands:manifest');
    const first = await turn(client, { content: `first ${uniq()}` });
    const second = await turn(client, { content: `second ${uniq()}` });
    const [a, b] = [first.ack.data.conversationId, second.ack.data.conversationId];
    assert.notEqual(a, b);
    const back = await turn(client, { conversationId: a, content: `back ${uniq()}` });
    assert.equal(back.end.data.stopReason, 'stop', client.log.dump());
    assert.ok(back.frames.every((f) => f.data?.conversationId === undefined || f.data.conversationId === a));
    assert.equal(socket.io.engine.transport.name, 'websocket');
    socket.close();
  });

  test('a cookie the app does not know, and an expired one: connected, then disconnected by the server, nothing else', async () => {
    const unknown = `${COOKIE}=${randomUUID()}.sig`;
    const { cookie: expired } = auth.signIn(uniq('old'), { ttlMs: -60_000 });
    for (const cookie of [unknown, expired]) {
      const socket = seed(cookie);
      const client = new SioClient(socket);
      await new Promise((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('connect_error', reject);
      });
      assert.equal((await client.closed).reason, 'io server disconnect');
      assert.deepEqual(client.events, []);
      socket.close();
    }
  });
});
