// The app's own login under wrangler dev: a fake better-auth get-session endpoint (cookies, its cache, its failures, origins) and a fake JWKS server (RS256, ES256 and more; refused tokens; key rotation), on the JSON socket, socket.io and the HTTP API.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto, { randomUUID } from 'node:crypto';
import http from 'node:http';
import { COOKIE, startFakeAuth } from '../support/fake-auth.mjs';
import { startFakeUpstream } from '../support/fake-upstream.mjs';
import { freePort, startGateway, uniq } from '../support/harness.mjs';

const APP = 'http://app.test';
const EVIL = 'https://evil.example';
const ISSUER = 'http://app.test';
const AUDIENCE = 'chat-gateway';

// ---------------------------------------------------------------------------
// A fake JWKS server and a signer.

function keyPair(alg) {
  if (alg.startsWith('ES')) return crypto.generateKeyPairSync('ec', { namedCurve: alg === 'ES256' ? 'P-256' : 'P-384' });
  return crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
}

async function startFakeJwks() {
  const port = await freePort();
  const jwks = {
    url: `http://127.0.0.1:${port}/.well-known/jwks.json`,
    keys: new Map(), // kid -> { alg, privateKey, jwk }
    published: new Set(), // kids in the set
    calls: 0,
    /** Makes a key and (unless publish is false) puts it in the set. */
    add(kid, alg, { publish = true } = {}) {
      const { publicKey, privateKey } = keyPair(alg);
      jwks.keys.set(kid, { alg, privateKey, publicKey, jwk: { ...publicKey.export({ format: 'jwk' }), kid, alg, use: 'sig' } });
      if (publish) jwks.published.add(kid);
      return kid;
    },
  };
  const server = http.createServer((req, res) => {
    jwks.calls++;
    const keys = [...jwks.published].map((kid) => jwks.keys.get(kid).jwk);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys }));
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  jwks.close = () => new Promise((resolve) => server.close(resolve));
  return jwks;
}

const b64url = (s) => Buffer.from(s).toString('base64url');
const nowS = () => Math.floor(Date.now() / 1000);

/** Signs a JWT with the key `kid` of `jwks`; `claims` and `header` override the defaults (a valid 10-minute token for `sub`). */
function signJwt(jwks, kid, sub, { claims = {}, header = {}, alg: algOverride } = {}) {
  const { alg, privateKey } = jwks.keys.get(kid);
  const h = b64url(JSON.stringify({ alg: algOverride ?? alg, typ: 'JWT', kid, ...header }));
  const p = b64url(JSON.stringify({ sub, iss: ISSUER, aud: AUDIENCE, iat: nowS(), exp: nowS() + 600, ...claims }));
  const input = Buffer.from(`${h}.${p}`);
  const hash = { 256: 'sha256', 384: 'sha384', 512: 'sha512' }[alg.slice(2)];
  let signature;
  if (alg.startsWith('ES')) signature = crypto.sign(hash, input, { key: privateKey, dsaEncoding: 'ieee-p1363' });
  else if (alg.startsWith('PS')) signature = crypto.sign(hash, input, { key: privateKey, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: Number(alg.slice(2)) / 8 });
  else signature = crypto.sign(hash, input, privateKey);
  return `${h}.${p}.${signature.toString('base64url')}`;
}

// ---------------------------------------------------------------------------

let up;
let auth;
let jwks;
let gw; // every origin allowed ("*"), so the cookie rule is what refuses a foreign page
let listed; // GATEWAY_CORS_ORIGIN names the app (the reference gateway's variable)

before(async () => {
  up = await startFakeUpstream();
  auth = await startFakeAuth();
  jwks = await startFakeJwks();
  jwks.add('rsa-1', 'RS256');
  jwks.add('ec-1', 'ES256');
  jwks.add('ps-1', 'PS256');
  jwks.add('ec384-1', 'ES384');
  const login = {
    AUTH_SESSION_URL: `${auth.url}/api/auth/get-session`,
    AUTH_JWKS_URL: jwks.url,
    AUTH_JWT_ISSUER: ISSUER,
    AUTH_JWT_AUDIENCE: AUDIENCE,
  };
  gw = await startGateway({ upstream: up, vars: { ...login, RATE_LIMIT_PER_MINUTE: '1000' } });
  listed = await startGateway({ upstream: up, vars: { ...login, GATEWAY_CORS_ORIGIN: APP } });
});

after(async () => {
  await Promise.all([gw?.stop(), listed?.stop()]);
  await Promise.all([up?.close(), auth?.close(), jwks?.close()]);
});

/** Opens a JSON socket and consumes the manifest. */
async function openJson(g, opts) {
  const client = await g.connect(opts);
  assert.equal((await client.next(null)).event, 'commands:manifest', client.log.dump());
  return client;
}

/** Opens a socket.io socket and consumes the manifest. */
async function openSio(g, opts) {
  const client = await g.connectSio(opts);
  assert.equal((await client.next(null)).event, 'commands:manifest', client.log.dump());
  return client;
}

/** One turn on an open socket; asserts it was answered. */
async function replies(client) {
  const marker = uniq('hello');
  const t = await client.turn(marker);
  assert.deepEqual(t.errors, [], client.log.dump());
  assert.equal(t.end.data.stopReason, 'stop', client.log.dump());
  assert.ok(t.text.length > 0, 'the model answered');
  return t;
}

/** The owner the gateway gives a conversation: whoever can open it after a refusal is the first. */
async function stillUnclaimed(g, conversationId) {
  const { cookie } = auth.signIn(uniq('claimer'));
  const client = await openJson(g, { headers: { cookie }, conversationId });
  await replies(client);
  await client.close();
}

/** A socket.io refusal at the upgrade (HTTP status) reaches socket.io-client as a transport error. */
const upgradeStatus = (err) => /Unexpected server response: (\d+)/.exec(String(err?.description?.message ?? err?.description ?? ''))?.[1];

describe('the app\'s session (better-auth cookie)', () => {
  test('a known cookie connects on /chat and on socket.io, and a message gets a reply', async () => {
    const user = uniq('sam');
    const { cookie } = auth.signIn(user);
    const json = await openJson(gw, { headers: { cookie }, conversationId: randomUUID() });
    const t = await replies(json);
    const me = await gw.http('GET', '/api/me', { headers: { cookie } });
    assert.equal(me.status, 200, me.text);
    assert.equal(me.json.userId, user);
    const list = await gw.http('GET', '/api/conversations', { headers: { cookie } });
    assert.equal(list.status, 200, list.text);
    await json.close();
    const sio = await openSio(gw, { extraHeaders: { cookie }, conversationId: t.ack.data.conversationId });
    await replies(sio);
    await sio.close();
  });

  test('unknown and expired cookies are refused (401 / CONNECT_ERROR) and nothing is stored', async () => {
    const expired = auth.signIn(uniq('old'), { ttlMs: -1000 });
    const stale = auth.signIn(uniq('stale'), { ttlMs: -1000, lying: true }); // the app answers with a past expiresAt
    const unknown = { cookie: `${COOKIE}=${randomUUID()}.sig` };
    for (const { cookie } of [unknown, expired, stale]) {
      const conversationId = randomUUID();
      const refused = await gw.expectUpgradeFailure({ headers: { cookie }, conversationId });
      assert.equal(refused.status, 401, refused.body);
      assert.equal(refused.json.code, 'unauthorized');
      assert.match(refused.json.error, /not signed in/);
      const err = await gw.expectSioConnectError({ extraHeaders: { cookie }, conversationId });
      assert.match(err.message, /^unauthorized: not signed in/);
      const api = await gw.http('GET', '/api/me', { headers: { cookie } });
      assert.equal(api.status, 401, api.text);
      await stillUnclaimed(gw, conversationId);
    }
  });

  test('a cookie from a foreign Origin is refused unless the origin is listed', async () => {
    const { cookie } = auth.signIn(uniq('olga'));
    // Every origin allowed ("*"): a foreign page still may not use the cookie.
    const refused = await gw.expectUpgradeFailure({ headers: { cookie }, origin: EVIL });
    assert.equal(refused.status, 403, refused.body);
    assert.match(refused.json.error, /cookie/);
    const err = await gw.expectSioConnectError({ extraHeaders: { cookie, origin: EVIL } });
    assert.match(err.message, /^unauthorized: .*cookie/);
    const api = await gw.http('GET', '/api/me', { headers: { cookie, origin: EVIL } });
    assert.equal(api.status, 403, api.text);
    // Named in GATEWAY_CORS_ORIGIN: the app's page may; another may not; no Origin (not a browser) may.
    const app = await openJson(listed, { headers: { cookie }, origin: APP });
    await replies(app);
    await app.close();
    const sio = await openSio(listed, { extraHeaders: { cookie, origin: APP } });
    await sio.close();
    assert.equal((await listed.expectUpgradeFailure({ headers: { cookie }, origin: EVIL })).status, 403);
    (await openJson(listed, { headers: { cookie } })).close();
  });

  test('the session endpoint is asked once for several connections within the cache time', async () => {
    const { token, cookie } = auth.signIn(uniq('cached'));
    const sockets = [];
    for (let k = 0; k < 3; k++) sockets.push(await openJson(gw, { headers: { cookie } }));
    sockets.push(await openSio(gw, { extraHeaders: { cookie } }));
    assert.equal((await gw.http('GET', '/api/me', { headers: { cookie } })).status, 200);
    assert.equal(auth.callsFor(token), 1, 'one call for five sign-ins');
    await Promise.all(sockets.map((s) => s.close()));
  });

  test('a socket closes when its session expires', async () => {
    const { cookie } = auth.signIn(uniq('brief'), { ttlMs: 3000 });
    const client = await openJson(gw, { headers: { cookie }, conversationId: randomUUID() });
    const opened = Date.now();
    const error = await client.next('error', { timeout: 8000 });
    const after = Date.now() - opened;
    assert.equal(error.data.code, 'unauthorized');
    assert.ok(after >= 1500 && after < 6000, `told ${after} ms after opening a 3 s session`);
    assert.equal((await client.closed).code, 1008);
  });

  test('the session endpoint down is a 503, not a 401, and tells nothing of it', async () => {
    try {
      for (const mode of ['error', 'hangup']) {
        auth.mode = mode;
        const { cookie } = auth.signIn(uniq(`down-${mode}`));
        const refused = await gw.expectUpgradeFailure({ headers: { cookie } });
        assert.equal(refused.status, 503, `${mode}: ${refused.body}`);
        assert.equal(refused.json.code, 'internal');
        assert.doesNotMatch(refused.body, /postgres|secret|503|socket|hang/i);
        const err = await gw.expectSioConnectError({ extraHeaders: { cookie } });
        assert.equal(upgradeStatus(err), '503', `${mode}: ${err.message} ${err.description?.message}`);
        assert.equal((await gw.http('GET', '/api/me', { headers: { cookie } })).status, 503);
      }
    } finally {
      auth.mode = 'ok';
    }
    // Failures are not cached: the endpoint back, the same kind of cookie works at once.
    const { cookie } = auth.signIn(uniq('back'));
    (await openJson(gw, { headers: { cookie } })).close();
  });
});

describe('the app\'s JWTs (JWKS)', () => {
  test('RS256, ES256, PS256 and ES384 tokens work on /chat, socket.io and the API', async () => {
    for (const kid of ['rsa-1', 'ec-1', 'ps-1', 'ec384-1']) {
      const user = uniq(`jwt-${kid}`);
      const token = signJwt(jwks, kid, user);
      const json = await openJson(gw, { token, conversationId: randomUUID() });
      await replies(json);
      await json.close();
      (await openJson(gw, { token, useHeaderAuth: true })).close();
      const sio = await openSio(gw, { token, conversationId: randomUUID() });
      await replies(sio);
      await sio.close();
      const me = await gw.http('GET', '/api/me', { token });
      assert.equal(me.status, 200, me.text);
      assert.equal(me.json.userId, user, kid);
    }
  });

  test('expired, wrong audience, wrong issuer, bad signature, alg none and HS256 are refused', async () => {
    const user = uniq('mallory');
    const good = signJwt(jwks, 'rsa-1', user);
    const [h, p] = good.split('.');
    const otherKey = jwks.add('rsa-unpublished', 'RS256', { publish: false });
    const rsaPublicPem = jwks.keys.get('rsa-1').publicKey.export({ format: 'pem', type: 'spki' });
    const hs256 = (() => {
      // The classic confusion: HMAC keyed with the RSA public key.
      const hh = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT', kid: 'rsa-1' }));
      const sig = crypto.createHmac('sha256', rsaPublicPem).update(`${hh}.${p}`).digest('base64url');
      return `${hh}.${p}.${sig}`;
    })();
    const cases = {
      expired: [signJwt(jwks, 'rsa-1', user, { claims: { exp: nowS() - 120 } }), /expired/],
      'not yet valid': [signJwt(jwks, 'rsa-1', user, { claims: { nbf: nowS() + 600 } }), /not valid yet/],
      'no exp': [signJwt(jwks, 'rsa-1', user, { claims: { exp: undefined } }), /exp/],
      'wrong audience': [signJwt(jwks, 'rsa-1', user, { claims: { aud: ['someone-else'] } }), /audience/],
      'wrong issuer': [signJwt(jwks, 'rsa-1', user, { claims: { iss: 'https://evil.example' } }), /issuer/],
      'bad signature': [`${h}.${p}.${signJwt(jwks, 'ec-1', user).split('.')[2]}`, /signature/],
      'tampered payload': [`${h}.${b64url(JSON.stringify({ sub: 'admin', iss: ISSUER, aud: AUDIENCE, exp: nowS() + 600 }))}.${good.split('.')[2]}`, /signature/],
      'signed by a key not in the set': [signJwt(jwks, otherKey, user, { header: { kid: 'rsa-1' } }), /signature/],
      'alg none': [`${b64url(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${p}.`, /none/],
      HS256: [hs256, /HS256/],
      'numeric sub': [signJwt(jwks, 'rsa-1', 42), /sub/],
    };
    for (const [name, [token, reason]] of Object.entries(cases)) {
      const conversationId = randomUUID();
      const refused = await gw.expectUpgradeFailure({ token, conversationId });
      assert.equal(refused.status, 401, `${name}: ${refused.body}`);
      assert.match(refused.json.error, reason, name);
      const err = await gw.expectSioConnectError({ token, conversationId });
      assert.match(err.message, /^unauthorized: /, name);
      assert.match(err.message, reason, name);
      assert.equal((await gw.http('GET', '/api/me', { token })).status, 401, name);
      if (name === 'expired') await stillUnclaimed(gw, conversationId);
    }
  });

  test('a key rotated into the set is picked up, and a flood of unknown kids does not hammer the key server', async () => {
    // The set is in the gateway already (the tests above); a new key appears in it.
    (await openJson(gw, { token: signJwt(jwks, 'rsa-1', uniq('before')) })).close();
    jwks.add('rsa-2', 'RS256');
    const callsBefore = jwks.calls;
    const user = uniq('rotated');
    const client = await openJson(gw, { token: signJwt(jwks, 'rsa-2', user), conversationId: randomUUID() });
    await replies(client);
    await client.close();
    assert.equal(jwks.calls, callsBefore + 1, 'one fetch for the new kid');
    // Made-up kids right after: refused, without fetching the set again.
    const bogus = await Promise.all(
      Array.from({ length: 20 }, (_, k) => gw.expectUpgradeFailure({ token: signJwt(jwks, 'rsa-2', user, { header: { kid: `bogus-${k}` } }) })),
    );
    assert.ok(bogus.every((r) => r.status === 401 && /key is unknown/.test(r.json.error)), JSON.stringify(bogus.map((r) => r.body)));
    assert.equal(jwks.calls, callsBefore + 1, 'no fetch for the flood');
    // The old key still works; so does the new one on socket.io.
    (await openJson(gw, { token: signJwt(jwks, 'rsa-1', uniq('old-key')) })).close();
    (await openSio(gw, { token: signJwt(jwks, 'rsa-2', uniq('new-key')) })).close();
  });

  test('a socket closes when its JWT expires', async () => {
    const token = signJwt(jwks, 'ec-1', uniq('short'), { claims: { exp: nowS() + 3 } });
    const client = await openJson(gw, { token, conversationId: randomUUID() });
    const error = await client.next('error', { timeout: 8000 });
    assert.equal(error.data.code, 'unauthorized');
    assert.match(error.data.error, /expired/);
    assert.equal((await client.closed).code, 1008);
  });

  test('a user signed in by a JWT cannot open another user\'s conversation (403)', async () => {
    const { cookie } = auth.signIn(uniq('owner'));
    const owner = await openJson(gw, { headers: { cookie }, conversationId: randomUUID() });
    await replies(owner);
    const conversationId = owner.conversationId;
    const intruder = signJwt(jwks, 'rsa-1', uniq('intruder'));
    const refused = await gw.expectUpgradeFailure({ token: intruder, conversationId });
    assert.equal(refused.status, 403, refused.body);
    const err = await gw.expectSioConnectError({ token: intruder, conversationId });
    assert.match(err.message, /another user/);
    const history = await gw.http('GET', `/api/conversations/${conversationId}/messages`, { token: intruder });
    assert.equal(history.status, 404, history.text);
    // And the other way round: a gateway token of another user is refused too.
    const minted = await gw.mintToken(uniq('minted'));
    assert.equal((await gw.expectUpgradeFailure({ token: minted, conversationId })).status, 403);
    await owner.close();
  });

  test('gateway tokens keep working next to the app\'s login', async () => {
    const token = await gw.mintToken(uniq('classic'));
    const client = await openJson(gw, { token, conversationId: randomUUID() });
    await replies(client);
    await client.close();
    (await openSio(gw, { token })).close();
    assert.equal((await gw.expectUpgradeFailure({ token: `ecg_${'0'.repeat(64)}` })).status, 401);
  });
});
