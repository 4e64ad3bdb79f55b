// End-to-end tests of the admin HTTP routes under wrangler dev: token minting, listing and revocation, admin authentication, and 503 when no ADMIN_TOKEN is configured.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startFakeUpstream } from '../support/fake-upstream.mjs';
import { startGateway, uniq } from '../support/harness.mjs';

// Every admin route of PROTOCOL.md, with a body where it takes one.
const ADMIN_ROUTES = [
  ['POST', '/admin/reload', { reason: 'test' }],
  ['GET', '/admin/stats'],
  ['POST', '/admin/tokens', { userId: 'mallory', name: 'mallory-token' }],
  ['GET', '/admin/tokens'],
  ['DELETE', '/admin/tokens/some-name'],
  ['PUT', '/admin/conversations/00000000-0000-4000-8000-000000000000/model', { model: null }],
];

// The token lists are not pinned by PROTOCOL.md to a bare array or a wrapping object; both are read.
const listOf = (json) => (Array.isArray(json) ? json : json?.tokens);

let up;
before(async () => {
  up = await startFakeUpstream();
});
after(() => up?.close());

describe('with ADMIN_TOKEN set', () => {
  let gw;
  before(async () => {
    gw = await startGateway({ upstream: up });
  });
  after(() => gw?.stop());

  const admin = (method, path, body) => gw.http(method, path, { token: gw.adminToken, body });

  test('POST /admin/tokens mints a token shown once; it opens a socket for that user', async () => {
    const name = uniq('dora');
    const res = await admin('POST', '/admin/tokens', { userId: 'dora', name });
    assert.ok(res.status === 200 || res.status === 201, `${res.status}: ${res.text}`);
    assert.equal(typeof res.json.token, 'string');
    assert.ok(res.json.token.length >= 16, 'a token long enough not to be guessed');
    assert.equal(res.json.userId, 'dora');
    assert.equal(res.json.name, name);
    const client = await gw.connect({ token: res.json.token });
    assert.equal((await client.next(null)).event, 'commands:manifest');
    await client.close();
  });

  test('GET /admin/tokens lists tokens by name and user, never their secrets', async () => {
    const name = uniq('listed');
    const minted = await admin('POST', '/admin/tokens', { userId: 'frank', name });
    const res = await admin('GET', '/admin/tokens');
    assert.equal(res.status, 200, res.text);
    const entry = listOf(res.json).find((t) => t.name === name);
    assert.ok(entry, `the new token is listed: ${res.text}`);
    assert.equal(entry.userId, 'frank');
    assert.ok(!res.text.includes(minted.json.token), 'the secret is not in the listing');
  });

  test('DELETE /admin/tokens/:name revokes: the next upgrade with it gets 401', async () => {
    const name = uniq('gone');
    const { json } = await admin('POST', '/admin/tokens', { userId: 'gina', name });
    const before = await gw.connect({ token: json.token });
    await before.close();
    const del = await admin('DELETE', `/admin/tokens/${name}`);
    assert.ok(del.status >= 200 && del.status < 300, `${del.status}: ${del.text}`);
    assert.equal((await gw.expectUpgradeFailure({ token: json.token })).status, 401);
  });

  test('a token minted with expiresInSeconds stops working after that', async () => {
    const { json } = await admin('POST', '/admin/tokens', { userId: 'hal', name: uniq('brief'), expiresInSeconds: 1 });
    const client = await gw.connect({ token: json.token });
    await client.close();
    await new Promise((resolve) => setTimeout(resolve, 2100));
    assert.equal((await gw.expectUpgradeFailure({ token: json.token })).status, 401);
  });

  test('missing, wrong, almost-right and user tokens get 401 on every admin route', async () => {
    const userToken = await gw.mintToken('ivan');
    const t = gw.adminToken;
    const flipped = t.slice(0, -1) + (t.at(-1) === 'a' ? 'b' : 'a');
    const attempts = [
      ['no header', {}],
      ['wrong token', { authorization: 'Bearer wrong' }],
      ['last character changed', { authorization: `Bearer ${flipped}` }],
      ['a prefix of it', { authorization: `Bearer ${t.slice(0, -1)}` }],
      ['one character more', { authorization: `Bearer ${t}x` }],
      ['without the Bearer scheme', { authorization: t }],
      ['a user token', { authorization: `Bearer ${userToken}` }],
    ];
    for (const [method, path, body] of ADMIN_ROUTES) {
      for (const [label, headers] of attempts) {
        const res = await gw.http(method, path, { headers, body });
        assert.equal(res.status, 401, `${method} ${path} with ${label}: ${res.status} ${res.text}`);
      }
    }
    const listed = listOf((await admin('GET', '/admin/tokens')).json);
    assert.ok(!listed.some((x) => x.name === 'mallory-token'), 'no rejected POST minted a token');
  });

  test('GET /admin/stats counts live and total activity', async () => {
    const res = await admin('GET', '/admin/stats');
    assert.equal(res.status, 200, res.text);
    for (const k of ['conversations', 'sockets', 'turns']) assert.equal(typeof res.json.live[k], 'number', `live.${k}`);
    for (const k of ['conversations', 'messages', 'tokens']) assert.equal(typeof res.json.totals[k], 'number', `totals.${k}`);
  });

  test('POST /admin/reload reaches every connected socket before it answers; its body is the payload as given, on both framings', async () => {
    const token = await gw.mintToken('judy');
    const a = await gw.connect({ token });
    const b = await gw.connect({ token });
    const c = await gw.connectSio({ token });
    for (const client of [a, b, c]) await client.next('commands:manifest');
    const reason = uniq('reload');
    const res = await admin('POST', '/admin/reload', { reason });
    assert.equal(res.status, 200, res.text);
    assert.ok(res.json.sockets >= 3, res.text);
    assert.equal(res.json.failed, 0);
    for (const client of [a, b, c]) {
      // Sent to every socket before the answer; a socket's frame and the HTTP answer travel on
      // different connections, so the client may see them in either order.
      const frame = await client.next('system:reload', { timeout: 5000 });
      assert.deepEqual(frame.data, { reason }, 'the body, as given: nothing added');
    }
    // Any JSON object passes through unchanged, as the reference gateway's broadcastReload(payload).
    const payload = { reason: uniq('deploy'), version: '2.1.0', at: 'whenever', commands: [{ name: 'x', aliases: [] }], nested: { n: 1.5, ok: null } };
    const again = await admin('POST', '/admin/reload', payload);
    assert.equal(again.status, 200, again.text);
    for (const client of [a, b, c]) {
      const frame = await client.next('system:reload', { where: (f) => f.data?.reason === payload.reason });
      assert.deepEqual(frame.data, payload, `${client.constructor.name}: passed through`);
    }
    // No body: {at}, the time of the reload.
    const bare = await gw.http('POST', '/admin/reload', { token: gw.adminToken });
    assert.equal(bare.status, 200, bare.text);
    for (const client of [a, b, c]) {
      const frame = await client.next('system:reload', { where: (f) => f.data?.reason === undefined });
      assert.deepEqual(Object.keys(frame.data), ['at'], JSON.stringify(frame.data));
      assert.ok(!Number.isNaN(Date.parse(frame.data.at)), `system:reload carries a time \`at\`: ${JSON.stringify(frame.data.at)}`);
    }
    for (const client of [a, b, c]) await client.close();
  });

  test('POST /admin/reload refuses a body that is not a JSON object (400) or is over 16 KiB (413), and sends nothing', async () => {
    const token = await gw.mintToken('judy');
    const a = await gw.connect({ token });
    await a.next('commands:manifest');
    const headers = { 'content-type': 'application/json' };
    for (const [label, body, status] of [
      ['not JSON', 'reload now', 400],
      ['cut JSON', '{"reason":', 400],
      ['a JSON array', '["x"]', 400],
      ['a JSON string', '"x"', 400],
      ['over 16 KiB', JSON.stringify({ reason: 'x'.repeat(16 * 1024) }), 413],
    ]) {
      const res = await gw.http('POST', '/admin/reload', { token: gw.adminToken, body, headers });
      assert.equal(res.status, status, `${label}: ${res.status} ${res.text}`);
      assert.equal(typeof res.json?.error, 'string', `${label}: a JSON reason: ${res.text}`);
    }
    // Over the bound without a Content-Length (a streamed body): read no further than the bound.
    const big = new ReadableStream({
      start(controller) {
        for (let k = 0; k < 64; k++) controller.enqueue(new TextEncoder().encode(k ? 'x'.repeat(1024) : `{"reason":"`));
        controller.close();
      },
    });
    // The gateway stops reading at the bound and answers 413; the runtime may reset the upload
    // it did not read before the client sees the answer, which is the same refusal.
    try {
      const streamed = await fetch(`${gw.url}/admin/reload`, { method: 'POST', headers: { authorization: `Bearer ${gw.adminToken}` }, body: big, duplex: 'half' });
      assert.equal(streamed.status, 413, await streamed.text());
    } catch (e) {
      assert.match(String(e.cause?.code ?? e.cause?.message ?? e), /UND_ERR_SOCKET|ECONNRESET|EPIPE|other side closed/, String(e.cause ?? e));
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.ok(!a.events.some((f) => f.event === 'system:reload'), a.log.dump());
    await a.close();
  });
});

describe('with ADMIN_TOKEN empty', () => {
  let gw;
  before(async () => {
    gw = await startGateway({ upstream: up, vars: { ADMIN_TOKEN: '' } });
  });
  after(() => gw?.stop());

  test('every admin route answers 503 with a reason, whatever token is offered', async () => {
    const offers = [
      ['no header', {}],
      ['empty bearer', { authorization: 'Bearer ' }],
      ['some bearer', { authorization: 'Bearer anything' }],
    ];
    for (const [method, path, body] of ADMIN_ROUTES) {
      for (const [label, headers] of offers) {
        const res = await gw.http(method, path, { headers, body });
        assert.equal(res.status, 503, `${method} ${path} with ${label}: ${res.status} ${res.text}`);
        assert.equal(typeof res.json?.error, 'string', `a JSON {error} reason: ${res.text}`);
        assert.ok(res.json.error.length > 0);
      }
    }
  });
});
