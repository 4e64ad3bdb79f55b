// socket.io framing end to end under wrangler dev: CONNECT auth, refused handshakes, a full turn, acks, fan-out across framings, connection state recovery, heartbeats, malformed packets.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { io } from 'socket.io-client';
import WebSocket from 'ws';
import { startFakeUpstream } from '../support/fake-upstream.mjs';
import { startGateway, summarizeTurn, uniq } from '../support/harness.mjs';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let up;
let gw; // default heartbeat (25 s / 20 s)
let hb; // short heartbeat (1 s / 1 s)

before(async () => {
  up = await startFakeUpstream();
  [gw, hb] = await Promise.all([
    startGateway({ upstream: up }),
    startGateway({ upstream: up, vars: { SIO_PING_INTERVAL_MS: '1000', SIO_PING_TIMEOUT_MS: '1000' } }),
  ]);
});

after(async () => {
  await Promise.all([gw?.stop(), hb?.stop()]);
  await up?.close();
});

/** The stream seq of a socket.io frame: the offset the gateway appends as the last (string) argument. */
function sioSeq(frame) {
  const last = frame.args?.at(-1);
  return frame.args?.length >= 2 && typeof last === 'string' ? Number(last) : undefined;
}

/** `{event, seq, data}` for a frame of either framing. */
const norm = (f) => ({ event: f.event, seq: f.seq ?? sioSeq(f), data: f.data });

/** Opens a socket.io client and checks that the manifest arrives first. */
async function openSio(g, opts) {
  const client = await g.connectSio(opts);
  const first = await client.next(null);
  assert.equal(first.event, 'commands:manifest', `the first event is the manifest:\n${client.log.dump()}`);
  return client;
}

async function openJson(g, opts) {
  const client = await g.connect(opts);
  const first = await client.next(null);
  assert.equal(first.event, 'commands:manifest', `the first frame is the manifest:\n${client.log.dump()}`);
  return client;
}

const onlyRequestFor = (content) => {
  const found = up.requests.filter((r) => r.lastUserText === content);
  assert.equal(found.length, 1, `exactly one upstream request for ${JSON.stringify(content)}, saw ${found.length}`);
  return found[0];
};

async function storedMessages(g, token, conversationId) {
  const res = await g.http('GET', `/api/conversations/${conversationId}/messages`, { token });
  assert.equal(res.status, 200, res.text);
  return res.json.messages;
}

/** Checks that the frames of one turn are the stream events in protocol order, each with a seq one above the previous. */
function assertTurnShape(frames, label) {
  const n = frames.map(norm);
  const names = n.map((f) => f.event);
  const dump = JSON.stringify(n.map((f) => [f.event, f.seq]));
  // The reference gateway's order.
  assert.equal(names[0], 'session:info', `${label}: starts with session:info: ${dump}`);
  assert.equal(names[1], 'message:ack', `${label}: then message:ack: ${dump}`);
  assert.equal(names[2], 'agent:start', `${label}: then agent:start: ${dump}`);
  assert.equal(names.at(-1), 'agent:end', `${label}: ends with agent:end: ${dump}`);
  assert.ok(names.slice(3, -1).every((e) => e === 'agent:text'), `${label}: only text between start and end: ${dump}`);
  for (const f of n) assert.ok(Number.isInteger(f.seq), `${label}: ${f.event} carries an integer offset: ${dump}`);
  n.slice(1).forEach((f, k) => assert.equal(f.seq, n[k].seq + 1, `${label}: offset of ${f.event} follows ${n[k].event}: ${dump}`));
}

describe('connect', () => {
  test('a good token connects to /chat; the CONNECT reply carries a pid (recovery on) and the manifest comes first', async () => {
    const token = await gw.mintToken(uniq('sio-good'));
    const client = await openSio(gw, { token, conversationId: randomUUID() });
    assert.equal(client.socket.connected, true);
    assert.equal(typeof client.socket.id, 'string');
    assert.ok(client.socket.id.length > 0);
    assert.equal(typeof client.socket._pid, 'string', 'CONNECT reply has a pid');
    assert.ok(client.socket._pid.length > 0);
    const manifest = client.events[0].data.manifest;
    assert.ok(Array.isArray(manifest.commands) && manifest.commands.length > 0, JSON.stringify(manifest));
    assert.equal(sioSeq(client.events[0]), undefined, 'the manifest is outside the stream: no offset');
    await client.close();
  });

  test('a bad token gets CONNECT_ERROR "unauthorized…"; a missing one too; another user’s conversation is refused', async () => {
    const bad = await gw.expectSioConnectError({ token: `nope-${randomUUID()}`, conversationId: randomUUID() });
    assert.match(bad.message, /^unauthorized/, `message shown to the client: ${bad.message}`);
    const missing = await gw.expectSioConnectError({ conversationId: randomUUID() });
    assert.match(missing.message, /^unauthorized/, `message shown to the client: ${missing.message}`);

    const owner = await gw.mintToken(uniq('sio-owner'));
    const other = await gw.mintToken(uniq('sio-other'));
    const mine = await openSio(gw, { token: owner });
    const t = await mine.turn(`owned ${uniq()}`);
    assert.deepEqual(t.errors, [], mine.log.dump());
    const conversationId = t.ack.data.conversationId;
    await mine.close();
    const refused = await gw.expectSioConnectError({ token: other, conversationId });
    assert.match(refused.message, /forbidden|another user/i, refused.message);
  });

  test('a token on the upgrade URL authenticates without auth.token; a bad one is refused before the upgrade', async () => {
    const token = await gw.mintToken(uniq('sio-query'));
    const client = await openSio(gw, { query: { token } });
    const t = await client.turn(`query token ${uniq()}`);
    assert.deepEqual(t.errors, [], client.log.dump());
    assert.equal(t.end.data.stopReason, 'stop');
    await client.close();
    const refused = await gw.expectSioConnectError({ query: { token: `nope-${randomUUID()}` } });
    assert.ok(refused.message, 'the client reports the refused upgrade');
    // The refusal is an HTTP 401 before any upgrade.
    const status = await new Promise((resolve, reject) => {
      const ws = new WebSocket(`${gw.wsUrl}/socket.io/?EIO=4&transport=websocket&token=nope-${randomUUID()}`);
      ws.once('unexpected-response', (req, res) => resolve(res.statusCode));
      ws.once('open', () => reject(new Error('the upgrade with a bad token was accepted')));
      ws.once('error', reject);
    });
    assert.equal(status, 401);
  });

  test('EIO=3 is refused with HTTP 400 and a readable reason (plain GET and a websocket upgrade); EIO=4 polling is served', async () => {
    const eio3 = await gw.http('GET', '/socket.io/?EIO=3&transport=websocket');
    assert.equal(eio3.status, 400, eio3.text);
    assert.match(eio3.json?.error ?? '', /EIO=3/, eio3.text);
    assert.match(eio3.json.error, /socket\.io-client v4/, eio3.text);

    // Long-polling is served (by a connection object; seedclients.test.mjs drives it); EIO=3 polling is not.
    const polling = await gw.http('GET', '/socket.io/?EIO=4&transport=polling');
    assert.equal(polling.status, 200, polling.text);
    assert.match(polling.text, /^0\{"sid":"[^"]+","upgrades":\["websocket"\]/, polling.text);
    const polling3 = await gw.http('GET', '/socket.io/?EIO=3&transport=polling');
    assert.equal(polling3.status, 400, polling3.text);

    const noEio = await gw.http('GET', '/socket.io/?transport=websocket');
    assert.equal(noEio.status, 400, noEio.text);
    assert.match(noEio.json?.error ?? '', /EIO/, noEio.text);

    // The same refusal when a v2 client really tries to upgrade.
    const refusal = await new Promise((resolve, reject) => {
      const ws = new WebSocket(`${gw.wsUrl}/socket.io/?EIO=3&transport=websocket`);
      ws.once('unexpected-response', (req, res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => {
          req.destroy();
          resolve({ status: res.statusCode, body });
        });
      });
      ws.once('open', () => {
        ws.close();
        reject(new Error('EIO=3 upgrade was accepted'));
      });
      ws.once('error', reject);
    });
    assert.equal(refusal.status, 400, refusal.body);
    assert.match(refusal.body, /EIO=3/);
  });
});

describe('turns', () => {
  test('a full turn over socket.io: events in order with consecutive offsets, deltas concatenate to the upstream text', async () => {
    const token = await gw.mintToken(uniq('sio-turn'));
    const client = await openSio(gw, { token, conversationId: randomUUID() });
    const content = `sio hello ${uniq()} [[slow deltas=6 delay=30]]`;
    const t = await client.turn(content);
    assert.deepEqual(t.errors, [], client.log.dump());
    assertTurnShape(t.frames, 'sio turn');
    const req = onlyRequestFor(content);
    assert.equal(t.texts.length, 6);
    assert.equal(t.text, req.sent.text);
    assert.equal(t.end.data.stopReason, 'stop');
    assert.equal(t.end.data.usage.tokens.total, req.sent.tokens.total);
    assert.equal(t.info.data.modelId, 'gpt-4o-mini');
    for (const f of t.frames) assert.equal(f.data.conversationId, client.conversationId, `${f.event} names the conversation`);
    const stored = await storedMessages(gw, token, client.conversationId);
    assert.deepEqual(
      stored.map((m) => [m.role, m.content]),
      [
        ['user', content],
        ['assistant', req.sent.text],
      ],
    );
    await client.close();
  });

  test('acks: message → {conversationId, messageId, clientMessageId}; command:execute → the command result; a refused message acks the error', async () => {
    const token = await gw.mintToken(uniq('sio-ack'));
    const conversationId = randomUUID();
    const client = await openSio(gw, { token, conversationId });
    const clientMessageId = uniq('cm');
    const content = `acked ${uniq()}`;
    const ack = await client.emitWithAck('message', { conversationId, content, clientMessageId });
    assert.equal(ack?.conversationId, conversationId, JSON.stringify(ack));
    assert.equal(typeof ack.messageId, 'string');
    assert.ok(ack.messageId.length > 0);
    assert.equal(ack.clientMessageId, clientMessageId);
    const frames = await client.until('agent:end');
    const t = summarizeTurn(frames);
    assert.equal(t.ack?.data.messageId, ack.messageId, 'the message:ack event and the socket.io ack name one message');
    assert.equal(t.text, onlyRequestFor(content).sent.text);
    // The ack came only after the user message was stored: it is there now.
    const stored = await storedMessages(gw, token, conversationId);
    assert.equal(stored[0].id, ack.messageId, JSON.stringify(stored[0]));
    assert.equal(stored[0].content, content);

    const status = await client.emitWithAck('command:execute', { conversationId, command: '/status' });
    assert.equal(status?.command, 'status', JSON.stringify(status));
    assert.equal(status.success, true, JSON.stringify(status));
    assert.equal(typeof status.message, 'string');
    assert.equal(status.data.turns, 1, JSON.stringify(status));
    assert.equal(status.data.messages, 1, JSON.stringify(status));
    const result = await client.next('command:result');
    assert.deepEqual(result.data, status, 'command:result event and the ack carry the same result');

    const help = await client.emitWithAck('command:execute', { command: 'help' });
    assert.equal(help.success, true, JSON.stringify(help));
    const unknown = await client.emitWithAck('command:execute', { command: '/no-such-command' });
    assert.equal(unknown.success, false, JSON.stringify(unknown));

    const refused = await client.emitWithAck('message', { conversationId, content: '' });
    assert.equal(refused?.code, 'invalid_payload', JSON.stringify(refused));
    assert.equal(typeof refused.error, 'string');
    const mismatch = await client.emitWithAck('message', { conversationId: randomUUID(), content: 'elsewhere' });
    assert.equal(mismatch?.code, 'conversation_mismatch', JSON.stringify(mismatch));
    assert.equal((await storedMessages(gw, token, conversationId)).length, 2, 'refused messages are not stored');
    await client.close();
  });

  test('two socket.io clients and one JSON client on one conversation all get the same stream', async () => {
    const token = await gw.mintToken(uniq('sio-fan'));
    const conversationId = randomUUID();
    const a = await openSio(gw, { token, conversationId });
    const b = await openSio(gw, { token, conversationId });
    const c = await openJson(gw, { token, conversationId });
    const content = `fan out ${uniq()} [[slow deltas=8 delay=25]]`;
    const t = await a.turn(content);
    assertTurnShape(t.frames, 'sender');
    const seenB = await b.until('agent:end');
    const seenC = await c.until('agent:end');
    const shape = (frames) => frames.map(norm);
    assert.deepEqual(shape(seenB), shape(t.frames), 'second socket.io client');
    assert.deepEqual(shape(seenC), shape(t.frames), 'JSON client');
    assert.equal(t.text, onlyRequestFor(content).sent.text);
    assert.equal(t.texts.length, 8);
    await Promise.all([a.close(), b.close(), c.close()]);
  });
});

describe('the reference gateway\'s payloads', () => {
  const NO_SESSION = 'No active session for this conversation.';
  const NO_SESSION_TO_ABORT = 'No active session to abort.';
  const PROMPT_FAILED = 'The agent failed to process your message. Please try again.';

  test('before a session set:thinking and abort get the seed texts (event and ack); an idle abort sends nothing; usage holds running totals; an upstream failure has the seed text', async () => {
    const token = await gw.mintToken(uniq('sio-seed'));
    const conversationId = randomUUID();
    const client = await openSio(gw, { token, conversationId });
    const thinking = await client.emitWithAck('set:thinking', { conversationId, level: 'low' });
    assert.deepEqual(thinking, { conversationId, code: 'no_active_session', error: NO_SESSION });
    assert.deepEqual((await client.next('error')).data, thinking, 'the error event carries what the ack does');
    const abort = await client.emitWithAck('abort', { conversationId });
    assert.deepEqual(abort, { conversationId, code: 'no_active_turn', error: NO_SESSION_TO_ABORT });
    assert.deepEqual((await client.next('error')).data, abort);

    const t1 = await client.turn(`seed one ${uniq()}`);
    assertTurnShape(t1.frames, 'first turn');
    const t2 = await client.turn(`seed two ${uniq()} [[cache read=20]]`);
    assertTurnShape(t2.frames, 'second turn');
    const [u1, u2] = [t1.end.data.usage, t2.end.data.usage];
    for (const k of ['input', 'output', 'cacheRead', 'cacheWrite', 'total']) {
      assert.equal(u2.tokens[k], u1.turn.tokens[k] + u2.turn.tokens[k], `usage.tokens.${k} is the running total`);
    }
    assert.equal(typeof u2.cost, 'number', JSON.stringify(u2));
    assert.ok(Math.abs(u2.cost - (u1.turn.cost.total + u2.turn.cost.total)) < 1e-12, JSON.stringify(u2));
    assert.equal(u2.unpricedTurns, 0);
    assert.equal(typeof u2.context.percent, 'number');
    assert.equal(u2.context.window, 128_000);

    // An idle session: abort sends no error and no event; the ack, asked for, says ok.
    const from = client.events.length;
    assert.deepEqual(await client.emitWithAck('abort', { conversationId }), { ok: true });
    await sleep(300);
    assert.deepEqual(client.events.slice(from), [], client.log.dump());
    // With a session, set:thinking takes a level the model has.
    const set = await client.emitWithAck('set:thinking', { conversationId, level: 'off' });
    assert.deepEqual(set, { ok: true });
    assert.equal((await client.next('session:info')).data.thinkingLevel, 'off');

    const t3 = await client.turn(`seed boom ${uniq()} [[status code=401]]`);
    assert.equal(t3.errors.length, 1, client.log.dump());
    assert.equal(t3.errors[0].data.error, PROMPT_FAILED);
    assert.equal(t3.errors[0].data.code, 'upstream_auth');
    assert.match(t3.errors[0].data.detail, /401/);
    assert.equal(t3.end.data.stopReason, 'error');
    assert.deepEqual(t3.frames.slice(0, 3).map((f) => f.event), ['session:info', 'message:ack', 'agent:start']);
    await client.close();
  });
});

describe('connection state recovery', () => {
  test('a forced transport close mid-turn: the client reconnects, socket.recovered is true, every delta arrives exactly once', async () => {
    const token = await gw.mintToken(uniq('sio-recover'));
    const conversationId = randomUUID();
    const socket = io(`${gw.url}/chat`, {
      path: '/socket.io/',
      transports: ['websocket'],
      auth: { token },
      query: { conversationId },
      reconnection: true,
      forceNew: true,
      timeout: 15_000,
    });
    const frames = [];
    const lifecycle = [];
    let waiters = [];
    const wake = () => {
      const still = [];
      for (const w of waiters) (w.check() ? w.resolve() : still.push(w));
      waiters = still;
    };
    const waitFor = (check, what, timeout = 20_000) =>
      new Promise((resolve, reject) => {
        if (check()) return resolve();
        const timer = setTimeout(() => reject(new Error(`${what} not seen within ${timeout} ms; lifecycle ${JSON.stringify(lifecycle)}; frames ${JSON.stringify(frames.map((f) => [f.event, f.offset, f.phase]))}`)), timeout);
        waiters.push({ check, resolve: () => (clearTimeout(timer), resolve()) });
      });
    let phase = 0;
    socket.onAny((event, ...args) => {
      const last = args.at(-1);
      frames.push({ event, data: args[0], offset: args.length >= 2 && typeof last === 'string' ? Number(last) : undefined, phase });
      wake();
    });
    socket.on('connect', () => {
      lifecycle.push({ type: 'connect', recovered: socket.recovered, at: performance.timeOrigin + performance.now() });
      wake();
    });
    socket.on('disconnect', (reason) => {
      phase++;
      lifecycle.push({ type: 'disconnect', reason, at: performance.timeOrigin + performance.now() });
      wake();
    });
    socket.on('connect_error', (err) => lifecycle.push({ type: 'connect_error', message: err.message }));
    try {
      await waitFor(() => lifecycle.some((l) => l.type === 'connect'), 'first connect');
      await waitFor(() => frames.some((f) => f.event === 'commands:manifest'), 'manifest');
      const content = `recover ${uniq()} [[slow deltas=16 delay=200]]`;
      socket.emit('message', { conversationId, content });
      await waitFor(() => frames.filter((f) => f.event === 'agent:text').length >= 3, 'three deltas before the cut');
      socket.io.engine.close();
      await waitFor(() => lifecycle.filter((l) => l.type === 'connect').length >= 2, 'reconnect');
      await waitFor(() => frames.some((f) => f.event === 'agent:end'), 'agent:end after the reconnect');

      const reconnect = lifecycle.filter((l) => l.type === 'connect')[1];
      assert.equal(reconnect.recovered, true, `socket.recovered after reconnect: ${JSON.stringify(lifecycle)}`);
      assert.equal(socket.recovered, true);
      assert.ok(lifecycle.some((l) => l.type === 'disconnect'), JSON.stringify(lifecycle));

      const stream = frames.filter((f) => f.offset !== undefined);
      const dump = JSON.stringify(stream.map((f) => [f.event, f.offset, f.phase]));
      const offsets = stream.map((f) => f.offset);
      assert.equal(new Set(offsets).size, offsets.length, `no offset twice: ${dump}`);
      offsets.slice(1).forEach((o, k) => assert.equal(o, offsets[k] + 1, `no gap after offset ${offsets[k]}: ${dump}`));
      assert.deepEqual(
        stream.map((f) => f.event),
        ['session:info', 'message:ack', 'agent:start', ...Array(16).fill('agent:text'), 'agent:end'],
        dump,
      );
      const texts = stream.filter((f) => f.event === 'agent:text');
      assert.ok(texts.some((f) => f.phase === 0) && texts.some((f) => f.phase === 1), `deltas both before the cut and after the reconnect: ${dump}`);
      const req = onlyRequestFor(content);
      // The cut must have cost the client something to recover: deltas the upstream sent while it was away.
      const away = lifecycle.find((l) => l.type === 'disconnect').at;
      const back = reconnect.at;
      const missed = req.sent.deltas.filter((d) => d.at > away && d.at < back).length;
      assert.ok(missed >= 1, `at least one delta was produced while the client was disconnected (${Math.round(back - away)} ms away), got ${missed}`);
      assert.equal(texts.map((f) => f.data.text).join(''), req.sent.text, 'the concatenated deltas are the upstream text, once');
      assert.equal(frames.find((f) => f.event === 'agent:end').data.stopReason, 'stop');
      assert.equal(frames.filter((f) => f.event === 'commands:manifest').length, 2, 'the manifest again on reconnect, outside the stream');

      // The recovered socket is fully usable.
      const ack = await socket.timeout(10_000).emitWithAck('message', { conversationId, content: `after recovery ${uniq()}` });
      assert.equal(ack.conversationId, conversationId, JSON.stringify(ack));
      await waitFor(() => frames.filter((f) => f.event === 'agent:end').length >= 2, 'second turn');
    } finally {
      socket.io.reconnection(false);
      socket.disconnect();
    }
  });
});

describe('heartbeats (SIO_PING_INTERVAL_MS=1000, SIO_PING_TIMEOUT_MS=1000)', () => {
  test('the OPEN packet advertises the configured interval and timeout', async () => {
    const ws = new WebSocket(`${hb.wsUrl}/socket.io/?EIO=4&transport=websocket&conversationId=${randomUUID()}`);
    const first = await new Promise((resolve, reject) => {
      ws.once('message', (d) => resolve(d.toString()));
      ws.once('error', reject);
    });
    ws.close();
    assert.match(first, /^0\{/, first);
    const open = JSON.parse(first.slice(1));
    assert.equal(open.pingInterval, 1000, first);
    assert.equal(open.pingTimeout, 1000, first);
    assert.deepEqual(open.upgrades, [], first);
    assert.equal(typeof open.sid, 'string');
  });

  test('8 s idle: pings keep coming, no ping timeout (no disconnect); then a long turn streams without one and a turn works', async () => {
    const token = await hb.mintToken(uniq('sio-idle'));
    const conversationId = randomUUID();
    const client = await openSio(hb, { token, conversationId });
    const json = await openJson(hb, { token, conversationId });
    const pings = [];
    client.socket.io.engine.on('ping', () => pings.push(Date.now()));
    const disconnects = [];
    client.socket.on('disconnect', (reason) => disconnects.push(reason));
    const started = Date.now();
    await sleep(8000);
    assert.deepEqual(disconnects, [], 'no disconnect while idle');
    assert.equal(client.socket.connected, true);
    assert.ok(pings.length >= 5, `at least 5 pings in 8 s at a 1 s interval, got ${pings.length}: ${JSON.stringify(pings.map((p) => p - started))}`);
    const gaps = pings.slice(1).map((p, k) => p - pings[k]);
    assert.ok(gaps.every((g) => g < 2000), `every gap below pingInterval + pingTimeout (2000 ms): ${JSON.stringify(gaps)}`);
    assert.ok(!json.events.some((f) => f.event === '(unparseable)'), `the JSON socket gets no Engine.IO pings:\n${json.log.dump()}`);

    // A turn longer than pingInterval + pingTimeout: pings must continue mid-stream.
    const before = pings.length;
    const content = `long stream ${uniq()} [[slow deltas=30 delay=100]]`;
    const t = await client.turn(content, {}, { timeout: 30_000 });
    assert.deepEqual(t.errors, [], client.log.dump());
    assert.equal(t.text, onlyRequestFor(content).sent.text);
    assert.ok(pings.length - before >= 2, `pings continued during a 3 s stream: ${pings.length - before}`);
    const t2 = await client.turn(`and again ${uniq()}`);
    assert.equal(t2.end?.data.stopReason, 'stop', client.log.dump());
    assert.deepEqual(disconnects, []);
    await json.close();
    await client.close();
  });

  test('a connection with several conversations, idle: its own pings keep it up (its relays are not pinged), and each conversation still answers', async () => {
    const token = await hb.mintToken(uniq('sio-idle-many'));
    const client = await openSio(hb, { token });
    const ids = [randomUUID(), randomUUID()];
    for (const conversationId of ids) {
      const t = await client.turn(`open the relay ${uniq()}`, { conversationId });
      assert.equal(t.end?.data.stopReason, 'stop', client.log.dump());
    }
    const pings = [];
    client.socket.io.engine.on('ping', () => pings.push(Date.now()));
    const disconnects = [];
    client.socket.on('disconnect', (reason) => disconnects.push(reason));
    await sleep(5000);
    assert.deepEqual(disconnects, [], 'no disconnect while idle');
    assert.ok(pings.length >= 3, `at least 3 pings in 5 s at a 1 s interval, got ${pings.length}`);
    for (const conversationId of [...ids].reverse()) {
      const t = await client.turn(`after the idle time ${uniq()}`, { conversationId });
      assert.equal(t.end?.data.stopReason, 'stop', client.log.dump());
      assert.equal(t.end.data.conversationId, conversationId);
    }
    await client.close();
  });
});

describe('an event named ping', () => {
  test('is answered with a socket.io pong event (and its ack); the transport stays up and the socket usable', async () => {
    const token = await gw.mintToken(uniq('sio-ping'));
    const conversationId = randomUUID();
    const client = await openSio(gw, { token, conversationId });
    const raw = [];
    client.socket.io.engine.on('packet', (p) => raw.push(p));
    client.send('ping', { conversationId });
    const pong = await client.next('pong');
    assert.deepEqual(pong.data, {});
    assert.deepEqual(await client.emitWithAck('ping', { conversationId }), { ok: true });
    assert.ok(client.socket.connected, 'still connected');
    assert.ok(raw.every((p) => typeof p.type === 'string' && p.type !== 'error'), `only Engine.IO packets: ${JSON.stringify(raw)}`);
    const t = await client.turn(`after ping ${uniq()}`);
    assert.equal(t.end.data.stopReason, 'stop', client.log.dump());
    await client.close();
  });
});

describe('malformed packets', () => {
  test('42/chat,not-json and other broken packets each get an error event; the socket stays connected and usable', async () => {
    const token = await gw.mintToken(uniq('sio-bad'));
    const conversationId = randomUUID();
    const client = await openSio(gw, { token, conversationId });
    const raw = client.socket.io.engine.transport.ws;
    assert.ok(raw && typeof raw.send === 'function', 'the engine exposes its websocket');
    const CODES = ['invalid_json', 'invalid_payload', 'unknown_event', 'payload_too_large'];
    const cases = [
      ['not JSON', '42/chat,not-json', ['invalid_json', 'invalid_payload']],
      ['payload not an array', '42/chat,{"event":"message"}', ['invalid_payload']],
      ['empty event array', '42/chat,[]', ['invalid_payload']],
      ['event name not a string', '42/chat,[5,{}]', ['invalid_payload']],
      ['trailing garbage', '42/chat,["message",{"content":"x"}]junk', ['invalid_json', 'invalid_payload']],
      ['data not an object', `42/chat,["message","just text"]`, ['invalid_payload']],
      ['unknown event', '42/chat,["no:such:event",{}]', ['unknown_event']],
      ['content of the wrong type', `42/chat,["message",{"content":42}]`, ['invalid_payload']],
      ['reserved event name', '42/chat,["disconnect"]', ['invalid_payload', 'unknown_event']],
      ['ACK without id', '43/chat,[]', ['invalid_payload']],
      ['binary event', '451-/chat,["message",{"_placeholder":true,"num":0}]', ['invalid_payload']],
      ['CONNECT_ERROR from a client', '44/chat,{"message":"x"}', ['invalid_payload']],
      ['unknown socket.io type', '49/chat,[]', ['invalid_payload']],
    ];
    for (const [label, packet, codes] of cases) {
      raw.send(packet);
      const e = await client.next('error', { timeout: 5000 });
      assert.ok(codes.includes(e.data.code), `${label} (${packet}): code ${e.data.code}, expected one of ${codes}: ${JSON.stringify(e.data)}`);
      assert.ok(CODES.includes(e.data.code));
      assert.equal(typeof e.data.error, 'string');
      assert.ok(e.data.error.length > 0);
      assert.equal(client.socket.connected, true, `${label}: still connected`);
    }
    assert.ok(!client.events.some((f) => f.event === 'message:ack'), client.log.dump());
    const ack = await client.emitWithAck('message', { conversationId, content: `still fine ${uniq()}` });
    assert.equal(ack.conversationId, conversationId, JSON.stringify(ack));
    const end = await client.next('agent:end', { timeout: 15_000 });
    assert.equal(end.data.stopReason, 'stop');
    const stored = await storedMessages(gw, token, conversationId);
    assert.equal(stored.length, 2, 'only the good message and its reply are stored');
    await client.close();
  });
});
