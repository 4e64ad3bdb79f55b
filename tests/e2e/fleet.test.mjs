// Fleet-level admin behaviour under wrangler dev: reload to 50 live conversations × 2 sockets (both framings), a reload split over many shard objects (with an object that fails, and two reloads at once), stats, model override over HTTP, admin auth (401/503) and CORS.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { io } from 'socket.io-client';
import { startFakeUpstream } from '../support/fake-upstream.mjs';
import { SioClient, eventually, startGateway, summarizeTurn, uniq } from '../support/harness.mjs';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const ALLOWED = 'http://app.test';

let up;
let gw;
let noAdmin;

before(async () => {
  up = await startFakeUpstream();
  // One after the other: each that started is stopped by `after` even when the other fails.
  gw = await startGateway({ upstream: up, vars: { ALLOWED_ORIGINS: ALLOWED } });
  noAdmin = await startGateway({ upstream: up, vars: { ADMIN_TOKEN: '' } });
});

after(async () => {
  for (const s of fleet.flatMap((c) => c.sockets)) await s.close().catch(() => {});
  await Promise.all([gw?.stop(), noAdmin?.stop()]);
  await up?.close();
});

const admin = (method, path, body) => gw.http(method, path, { token: gw.adminToken, body });
const stats = async () => {
  const res = await admin('GET', '/admin/stats');
  assert.equal(res.status, 200, res.text);
  return res.json;
};
const sioSeq = (f) => (f.args?.length >= 2 && typeof f.args.at(-1) === 'string' ? Number(f.args.at(-1)) : undefined);

/** Opens a socket of the given framing and consumes the manifest. */
async function open(kind, opts) {
  const client = kind === 'sio' ? await gw.connectSio(opts) : await gw.connect(opts);
  const first = await client.next(null, { timeout: 15_000 });
  assert.equal(first.event, 'commands:manifest', `${kind}: the manifest comes first:\n${client.log.dump()}`);
  client.kind = kind;
  return client;
}

/** Runs `fn` over `items` with at most `limit` at a time. */
async function pool(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const k = next++;
        out[k] = await fn(items[k], k);
      }
    }),
  );
  return out;
}

// The fleet: 50 conversations, each with two sockets: JSON+JSON, socket.io+socket.io or JSON+socket.io.
const FLEET = 50;
const fleet = [];

describe('a fleet of 50 conversations × 2 sockets', () => {
  test('POST /admin/reload reaches every socket once: {conversations: 50, sockets: 100, failed: 0, listed: 50, reached: 50, shards: 1}', async () => {
    const users = await pool(
      Array.from({ length: 10 }, (_, k) => uniq(`fleet-user${k}`)),
      5,
      async (userId) => ({ userId, token: await gw.mintToken(userId) }),
    );
    const plans = Array.from({ length: FLEET }, (_, k) => ({
      conversationId: randomUUID(),
      user: users[k % users.length],
      kinds: [['json', 'json'], ['sio', 'sio'], ['json', 'sio']][k % 3],
    }));
    const opened = await pool(plans, 8, async (p) => ({
      ...p,
      sockets: await Promise.all(p.kinds.map((kind) => open(kind, { token: p.user.token, conversationId: p.conversationId }))),
    }));
    fleet.push(...opened);
    const sockets = fleet.flatMap((c) => c.sockets);
    assert.equal(sockets.length, 100);
    assert.equal(sockets.filter((s) => s.kind === 'sio').length, 50, 'half of the sockets are socket.io');

    await eventually(async () => {
      const s = await stats();
      return s.live.conversations === FLEET && s.live.sockets === 2 * FLEET ? s : null;
    }, { timeout: 10_000, what: 'the live registry lists the fleet' });

    const reason = `fleet reload ${uniq()}`;
    const body = { reason, at: new Date().toISOString() };
    const res = await admin('POST', '/admin/reload', body);
    assert.equal(res.status, 200, res.text);
    // 50 registry rows: one shard of the default size (500) calls them all.
    assert.deepEqual(res.json, { conversations: FLEET, sockets: 2 * FLEET, failed: 0, listed: FLEET, reached: FLEET, shards: 1 }, res.text);

    const got = await Promise.all(sockets.map((s) => s.next('system:reload', { timeout: 15_000 })));
    for (const [k, frame] of got.entries()) {
      const s = sockets[k];
      // The admin's body is the payload, as given.
      assert.deepEqual(frame.data, body, `${s.kind} socket ${k}`);
      assert.equal(frame.seq ?? sioSeq(frame), undefined, 'system:reload is outside the stream (no seq, no offset)');
    }
    await sleep(500);
    const twice = sockets.filter((s) => s.events.filter((f) => f.event === 'system:reload').length !== 1);
    assert.equal(twice.length, 0, `every socket got exactly one system:reload; ${twice.length} did not`);
    const delivered = sockets.filter((s) => s.events.some((f) => f.event === 'system:reload')).length;
    assert.equal(delivered / sockets.length, 1, '100% delivered');
  });

  test('GET /admin/stats agrees with what the test created: live conversations/sockets/turns, totals after turns', async () => {
    assert.equal(fleet.length, FLEET, 'the fleet from the previous test is open');
    const base = await stats();
    assert.deepEqual(base.live, { conversations: FLEET, sockets: 2 * FLEET, turns: 0 }, JSON.stringify(base));

    // Turns on three fleet conversations (one of them twice): each creates its conversation row at the first message.
    let tokens = 0;
    const turned = [fleet[0], fleet[1], fleet[2]];
    for (const c of turned) {
      const t = await c.sockets[0].turn(`counted ${uniq()}`);
      assert.deepEqual(t.errors, [], c.sockets[0].log.dump());
      tokens += t.end.data.usage.turn.tokens.total;
    }
    // A slow turn shows up as a live turn while it runs.
    const slow = turned[1].sockets[0];
    slow.log.skipAll();
    slow.send('message', { conversationId: turned[1].conversationId, content: `counted slowly ${uniq()} [[slow deltas=20 delay=150]]` });
    await slow.next('agent:start', { timeout: 10_000 });
    const during = await eventually(async () => {
      const s = await stats();
      return s.live.turns === 1 ? s : null;
    }, { timeout: 5000, what: 'live.turns = 1 during the slow turn' });
    assert.equal(during.live.conversations, FLEET);
    assert.equal(during.live.sockets, 2 * FLEET);
    const slowTurn = summarizeTurn(await slow.until('agent:end', { timeout: 15_000 }));
    tokens += slowTurn.end.data.usage.turn.tokens.total;
    assert.ok(tokens > 0);

    const afterTurns = await eventually(async () => {
      const s = await stats();
      return s.live.turns === 0 ? s : null;
    }, { timeout: 5000, what: 'live.turns back to 0' });
    assert.deepEqual(afterTurns.live, { conversations: FLEET, sockets: 2 * FLEET, turns: 0 }, JSON.stringify(afterTurns));
    assert.deepEqual(
      afterTurns.totals,
      {
        conversations: base.totals.conversations + 3,
        messages: base.totals.messages + 8,
        tokens: base.totals.tokens + tokens,
      },
      `before ${JSON.stringify(base.totals)}, after ${JSON.stringify(afterTurns.totals)}`,
    );

    // Closing half the sockets of the fleet, then all of them: live figures follow.
    await Promise.all(fleet.map((c) => c.sockets[1].close()));
    await eventually(async () => {
      const s = await stats();
      return s.live.conversations === FLEET && s.live.sockets === FLEET ? s : null;
    }, { timeout: 10_000, what: 'live sockets = 50 after closing one socket per conversation' });
    await Promise.all(fleet.map((c) => c.sockets[0].close()));
    const empty = await eventually(async () => {
      const s = await stats();
      return s.live.conversations === 0 && s.live.sockets === 0 ? s : null;
    }, { timeout: 10_000, what: 'live figures back to 0 after closing the fleet' });
    assert.deepEqual(empty.live, { conversations: 0, sockets: 0, turns: 0 });
    assert.deepEqual(empty.totals, afterTurns.totals, 'closing sockets changes no totals');

    const reload = await admin('POST', '/admin/reload', {});
    assert.equal(reload.status, 200, reload.text);
    assert.deepEqual(reload.json, { conversations: 0, sockets: 0, failed: 0, listed: 0, reached: 0, shards: 0 }, 'nobody left to reload');
  });
});

describe('a reload split over shard objects (FANOUT_SHARD_SIZE=4)', () => {
  const SHARD = 4;
  const CONVERSATIONS = 30;
  let sg;
  const clients = [];

  before(async () => {
    // A registry row whose object fails every call: a conversation object never told its id
    // refuses to load. It stays listed (nothing removes it), so every reload counts it failed.
    sg = await startGateway({
      upstream: up,
      vars: { FANOUT_SHARD_SIZE: String(SHARD) },
      d1Sql: ["INSERT INTO live_conversations (conversation_id, since) VALUES ('', 0)"],
    });
  });

  after(async () => {
    for (const c of clients) await c.close().catch(() => {});
    await sg?.stop();
  });

  const reloadsOf = (client, reason) => client.events.filter((f) => f.event === 'system:reload' && f.data?.reason === reason);
  /** Waits until every client has the reload, then a little longer, and checks nobody got it twice. */
  async function everyClientOnce(reason) {
    await eventually(() => clients.every((c) => reloadsOf(c, reason).length >= 1), { timeout: 15_000, what: `every client has "${reason}"` });
    await sleep(500);
    const wrong = clients.filter((c) => reloadsOf(c, reason).length !== 1);
    assert.equal(wrong.length, 0, `every client got "${reason}" exactly once; ${wrong.length} did not`);
  }

  test('30 conversations and 3 socket.io connections over 14 shards each get the reload once; the object that fails is counted, the rest are reached', async () => {
    const token = await sg.mintToken(uniq('sharded'));
    const conversationIds = Array.from({ length: CONVERSATIONS }, () => randomUUID());
    const json = await pool(conversationIds, 8, async (conversationId) => {
      const client = await sg.connect({ token, conversationId });
      assert.equal((await client.next(null, { timeout: 15_000 })).event, 'commands:manifest', client.log.dump());
      return client;
    });
    clients.push(...json);
    // Connections as the reference clients open them (long-polling, then the upgrade), each
    // relaying one of the conversations: the reload reaches them straight and through the relay.
    for (const conversationId of conversationIds.slice(0, 3)) {
      const socket = io(`${sg.url}/chat`, { forceNew: true, reconnection: false, auth: { token } });
      const client = new SioClient(socket);
      clients.push(client);
      assert.equal((await client.next(null, { timeout: 15_000 })).event, 'commands:manifest', client.log.dump());
      client.send('message', { conversationId, content: `relay ${uniq()}` });
      await client.until('agent:end', { timeout: 15_000 });
    }
    for (const client of json) client.log.skipAll();
    await eventually(async () => {
      const res = await sg.http('GET', '/admin/stats', { token: sg.adminToken });
      return res.json?.live?.conversations === CONVERSATIONS + 1 ? res : null; // the failing row counts
    }, { what: 'the registry lists the conversations' });

    const reason = uniq('sharded reload');
    const res = await sg.http('POST', '/admin/reload', { token: sg.adminToken, body: { reason } });
    assert.equal(res.status, 200, res.text);
    // 34 rows at 4 per shard: 4 slices of 8 or 9 rows, each split again into 2 or 3: 14 shards.
    const { listed, reached, failed, shards, sockets, conversations } = res.json;
    assert.deepEqual({ listed, reached, failed, shards }, { listed: 34, reached: 33, failed: 1, shards: 14 }, res.text);
    // A connection that passed the reload on from its relay first answers the fan-out with no socket.
    assert.ok(sockets >= CONVERSATIONS + 3 && sockets <= CONVERSATIONS + 6, res.text);
    assert.ok(conversations >= CONVERSATIONS && conversations <= CONVERSATIONS + 3, res.text);
    await everyClientOnce(reason);
  });

  test('two reloads at once each reach every client exactly once', async () => {
    assert.equal(clients.length, CONVERSATIONS + 3, 'the clients of the previous test are open');
    const reasons = [uniq('first'), uniq('second')];
    const answers = await Promise.all(reasons.map((reason) => sg.http('POST', '/admin/reload', { token: sg.adminToken, body: { reason } })));
    for (const res of answers) {
      assert.equal(res.status, 200, res.text);
      assert.deepEqual([res.json.listed, res.json.reached, res.json.failed], [34, 33, 1], res.text);
    }
    for (const reason of reasons) await everyClientOnce(reason);
  });

  test('a caller without the admin token is refused (401) and nothing is sent', async () => {
    const userToken = await sg.mintToken(uniq('not-admin'));
    for (const token of [userToken, undefined]) {
      const res = await sg.http('POST', '/admin/reload', { token, body: { reason: 'must not happen' } });
      assert.equal(res.status, 401, res.text);
    }
    await sleep(500);
    const reached = clients.filter((c) => c.events.some((f) => f.event === 'system:reload' && f.data?.reason === 'must not happen'));
    assert.equal(reached.length, 0, 'no refused reload was sent');
  });
});

describe('model override over HTTP', () => {
  test('PUT /admin/conversations/:id/model reaches both sockets (JSON and socket.io) and steers the next turn; null clears it', async () => {
    const token = await gw.mintToken(uniq('override'));
    const conversationId = randomUUID();
    const json = await open('json', { token, conversationId });
    const sio = await open('sio', { token, conversationId });
    const first = await json.turn(`first ${uniq()}`);
    assert.equal(first.info.data.modelId, 'gpt-4o-mini', json.log.dump());
    await sio.until('agent:end');

    const set = await admin('PUT', `/admin/conversations/${conversationId}/model`, { model: 'openai/gpt-4o' });
    assert.equal(set.status, 200, set.text);
    for (const s of [json, sio]) {
      const info = await s.next('session:info', { timeout: 5000 });
      assert.equal(info.data.conversationId, conversationId);
      assert.equal(info.data.provider, 'openai', `${s.kind}: ${JSON.stringify(info.data)}`);
      assert.equal(info.data.modelId, 'gpt-4o', `${s.kind}: ${JSON.stringify(info.data)}`);
    }
    const steered = `steered ${uniq()}`;
    const t = await sio.turn(steered);
    assert.deepEqual(t.errors, [], sio.log.dump());
    assert.equal(t.info.data.modelId, 'gpt-4o');
    assert.equal(up.requestsFor(steered)[0]?.body.model, 'gpt-4o', 'the upstream was asked for the override model');
    await json.until('agent:end');

    const clear = await admin('PUT', `/admin/conversations/${conversationId}/model`, { model: null });
    assert.equal(clear.status, 200, clear.text);
    for (const s of [json, sio]) {
      const info = await s.next('session:info', { timeout: 5000 });
      assert.equal(info.data.conversationId, conversationId, `${s.kind}: ${JSON.stringify(info.data)}`);
    }
    const routed = `routed again ${uniq()}`;
    const t2 = await json.turn(routed);
    assert.deepEqual(t2.errors, [], json.log.dump());
    assert.equal(up.requestsFor(routed)[0]?.body.model, 'gpt-4o-mini', 'the default model once the override is cleared');
    assert.equal(t2.info.data.modelId, 'gpt-4o-mini');

    const missing = await admin('PUT', `/admin/conversations/${randomUUID()}/model`, { model: 'openai/gpt-4o' });
    assert.equal(missing.status, 404, missing.text);
    const bad = await admin('PUT', `/admin/conversations/${conversationId}/model`, { model: 42 });
    assert.equal(bad.status, 400, bad.text);
    await json.close();
    await sio.close();
  });
});

describe('admin authentication', () => {
  test('missing, wrong and almost-right admin tokens get 401 and do nothing', async () => {
    const watcherToken = await gw.mintToken(uniq('watcher'));
    const watcher = await open('json', { token: watcherToken, conversationId: randomUUID() });
    const t = gw.adminToken;
    const flip = (c) => (c === 'a' ? 'b' : 'a');
    const attempts = [
      ['no Authorization', {}],
      ['empty bearer', { authorization: 'Bearer ' }],
      ['wrong token', { authorization: `Bearer ${randomUUID()}` }],
      ['last character changed', { authorization: `Bearer ${t.slice(0, -1)}${flip(t.at(-1))}` }],
      ['first character changed', { authorization: `Bearer ${flip(t[0])}${t.slice(1)}` }],
      ['one character short', { authorization: `Bearer ${t.slice(0, -1)}` }],
      ['one character extra', { authorization: `Bearer ${t}x` }],
      ['upper-cased', { authorization: `Bearer ${t.toUpperCase()}` }],
      ['token twice', { authorization: `Bearer ${t}${t}` }],
      ['not a bearer scheme', { authorization: `Basic ${Buffer.from(`admin:${t}`).toString('base64')}` }],
      ['bare token without scheme', { authorization: t }],
      ['a user token', { authorization: `Bearer ${watcherToken}` }],
    ];
    const routes = [
      ['GET', '/admin/stats'],
      ['POST', '/admin/reload', { reason: 'must not happen' }],
      ['GET', '/admin/tokens'],
      ['POST', '/admin/tokens', { userId: 'mallory', name: uniq('mallory') }],
      ['PUT', `/admin/conversations/${randomUUID()}/model`, { model: null }],
    ];
    for (const [label, headers] of attempts) {
      for (const [method, path, body] of routes) {
        const res = await gw.http(method, path, { headers, body });
        assert.equal(res.status, 401, `${label}: ${method} ${path} answered ${res.status}: ${res.text}`);
        assert.equal(typeof res.json?.error, 'string', `${label}: a JSON reason: ${res.text}`);
        assert.ok(!res.text.includes(t), 'the admin token is not echoed');
      }
    }
    // The token in the query string is not an admin credential either.
    const query = await gw.http('GET', `/admin/stats?token=${encodeURIComponent(t)}`);
    assert.equal(query.status, 401, query.text);
    await sleep(300);
    assert.ok(!watcher.events.some((f) => f.event === 'system:reload'), `no refused reload was broadcast:\n${watcher.log.dump()}`);
    const listed = await admin('GET', '/admin/tokens');
    assert.ok(!listed.text.includes('mallory'), 'no refused token was minted');
    assert.equal((await admin('GET', '/admin/stats')).status, 200, 'the right token still works');
    await watcher.close();
  });

  test('with ADMIN_TOKEN empty every admin route answers 503 with a reason; the rest of the gateway works', async () => {
    const routes = [
      ['POST', '/admin/reload', { reason: 'x' }],
      ['GET', '/admin/stats'],
      ['POST', '/admin/tokens', { userId: 'u', name: 'n' }],
      ['GET', '/admin/tokens'],
      ['DELETE', '/admin/tokens/some-name'],
      ['PUT', `/admin/conversations/${randomUUID()}/model`, { model: null }],
    ];
    for (const [method, path, body] of routes) {
      for (const token of [undefined, '', 'anything', 'undefined']) {
        const res = await noAdmin.http(method, path, { body, token });
        assert.equal(res.status, 503, `${method} ${path} with token ${JSON.stringify(token)}: ${res.status} ${res.text}`);
        assert.equal(typeof res.json?.error, 'string', res.text);
        assert.match(res.json.error, /ADMIN_TOKEN/, `the reason names what to configure: ${res.text}`);
      }
    }
    const health = await noAdmin.http('GET', '/health');
    assert.equal(health.status, 200, health.text);
  });
});

describe('CORS', () => {
  test('an allowed origin gets access-control-allow-origin on /api and /admin (also on refusals and preflights); another origin does not', async () => {
    const token = await gw.mintToken(uniq('cors'));
    const evil = 'http://evil.test';

    const me = await gw.http('GET', '/api/me', { token, headers: { origin: ALLOWED } });
    assert.equal(me.status, 200, me.text);
    assert.equal(me.headers.get('access-control-allow-origin'), ALLOWED);
    assert.match(me.headers.get('vary') ?? '', /origin/i);
    const meEvil = await gw.http('GET', '/api/me', { token, headers: { origin: evil } });
    assert.equal(meEvil.headers.get('access-control-allow-origin'), null, `no CORS header for ${evil}`);
    assert.equal(meEvil.status, 403, meEvil.text);

    const st = await gw.http('GET', '/admin/stats', { token: gw.adminToken, headers: { origin: ALLOWED } });
    assert.equal(st.status, 200, st.text);
    assert.equal(st.headers.get('access-control-allow-origin'), ALLOWED);
    const stEvil = await gw.http('GET', '/admin/stats', { token: gw.adminToken, headers: { origin: evil } });
    assert.equal(stEvil.headers.get('access-control-allow-origin'), null, `no CORS header for ${evil}`);
    const refused = await gw.http('GET', '/admin/stats', { token: 'wrong', headers: { origin: ALLOWED } });
    assert.equal(refused.status, 401);
    assert.equal(refused.headers.get('access-control-allow-origin'), ALLOWED, 'a browser can read the refusal');

    for (const path of ['/api/conversations', '/admin/reload']) {
      const pre = await gw.http('OPTIONS', path, {
        headers: { origin: ALLOWED, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' },
      });
      assert.ok(pre.status === 204 || pre.status === 200, `preflight ${path}: ${pre.status} ${pre.text}`);
      assert.equal(pre.headers.get('access-control-allow-origin'), ALLOWED, `preflight ${path}`);
      assert.match(pre.headers.get('access-control-allow-methods') ?? '', /GET/);
      assert.match(pre.headers.get('access-control-allow-headers') ?? '', /authorization/i);
      const preEvil = await gw.http('OPTIONS', path, { headers: { origin: evil, 'access-control-request-method': 'GET' } });
      assert.equal(preEvil.headers.get('access-control-allow-origin'), null, `preflight ${path} from ${evil}`);
      assert.equal(preEvil.headers.get('access-control-allow-methods'), null, `preflight ${path} from ${evil}`);
    }
    // Without an Origin (not a browser) nothing is added.
    const plain = await gw.http('GET', '/api/me', { token });
    assert.equal(plain.status, 200);
    assert.equal(plain.headers.get('access-control-allow-origin'), null);
  });
});
