//! Runs the credential checks `crate::login` plans: D1 for gateway tokens, the app's session endpoint, its key set and WebCrypto for JWTs; answers and keys are cached in the isolate.

use super::body::read_bounded;
use super::{db, now_ms};
use crate::config::LoginConfig;
use crate::error::ApiError;
use crate::http::CredentialSource;
use crate::login::jwks::{self, Freshness, Jwks, Lookup};
use crate::login::jwt::{self, Alg, Expect, JwtError};
use crate::login::session::{self, SessionAnswer, SessionCache};
use crate::login::{Check, Grant};
use futures::future::{select, Either, FutureExt, LocalBoxFuture, Shared};
use js_sys::{Array, Promise, Uint8Array};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use worker::{AbortController, Delay, Env, Fetch, Headers, Method, Request, RequestInit};

/// Time the session endpoint or the key server may take.
const FETCH_TIMEOUT_MS: u64 = 5_000;

/// Why a check did not grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The credential signs nobody in (401, or a socket.io `CONNECT_ERROR` "unauthorized: ...").
    Unauthorized(String),
    /// The gateway could not check it: its database, the session endpoint or the key server
    /// failed (503, or "internal: ..."). The detail went to the log.
    Unavailable,
}

/// How a request's sign-in ended.
#[derive(Debug)]
pub enum Outcome {
    Granted(Grant),
    /// It presented nothing to check.
    Missing,
    /// Refused (401, or 403 for a cookie from an origin that may not use one), or not checked
    /// (503). `by_session` when the last check was the app's session: a socket.io upgrade then
    /// waits for a token in CONNECT instead (the browser sends cookies with every socket).
    Refused {
        error: ApiError,
        by_session: bool,
    },
}

/// The refusal when the gateway could not check a credential.
pub const UNCHECKED: &str = "the gateway could not check the credentials; try again";

/// Runs the planned checks in order until one grants. `origin` is asked before each whether
/// the request's origin may use a credential of that source.
pub async fn sign_in(
    env: &Env,
    login: &LoginConfig,
    checks: &[(Check, CredentialSource)],
    origin: impl Fn(CredentialSource) -> Result<(), ApiError>,
) -> Outcome {
    let mut outcome = Outcome::Missing;
    for (c, source) in checks {
        let by_session = matches!(c, Check::Session { .. });
        if let Err(error) = origin(*source) {
            return Outcome::Refused { error, by_session };
        }
        match check(env, login, c).await {
            Ok(grant) => return Outcome::Granted(grant),
            Err(Refusal::Unavailable) => {
                return Outcome::Refused {
                    error: ApiError::InternalRetry(UNCHECKED.into()),
                    by_session: false,
                }
            }
            Err(Refusal::Unauthorized(message)) => {
                outcome = Outcome::Refused {
                    error: ApiError::Unauthorized(message),
                    by_session,
                }
            }
        }
    }
    outcome
}

/// Runs one check.
pub async fn check(env: &Env, login: &LoginConfig, check: &Check) -> Result<Grant, Refusal> {
    match check {
        Check::GatewayToken(token) => gateway_token(env, token).await,
        Check::Jwt(token) => verify_jwt(login, token).await,
        Check::Session {
            cookie,
            authorization,
        } => app_session(login, cookie.as_deref(), authorization.as_deref()).await,
    }
}

async fn gateway_token(env: &Env, token: &str) -> Result<Grant, Refusal> {
    let d = db::db(env).map_err(|e| unavailable("database binding", e))?;
    db::token_grant(&d, token, now_ms())
        .await
        .map_err(|e| unavailable("token lookup", e))?
        .ok_or_else(|| Refusal::Unauthorized("invalid, expired or revoked token".into()))
}

fn unavailable(context: &str, e: impl std::fmt::Display) -> Refusal {
    worker::console_error!("{context}: {e}");
    Refusal::Unavailable
}

/// GETs `url` with `headers`, no redirect followed (the credentials must not travel on), within
/// `FETCH_TIMEOUT_MS`; the status and at most `limit` bytes of the body.
async fn get(url: &str, headers: &[(&str, &str)], limit: usize) -> Result<(u16, String), String> {
    let h = Headers::new();
    for (k, v) in headers {
        h.set(k, v).map_err(|e| format!("header {k}: {e}"))?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Get)
        .with_headers(h)
        .with_redirect(worker::RequestRedirect::Manual);
    let req = Request::new_with_init(url, &init).map_err(|e| e.to_string())?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let call = async {
        let mut resp = Fetch::Request(req)
            .send_with_signal(&signal)
            .await
            .map_err(|e| e.to_string())?;
        let body = read_bounded(&mut resp, limit).await?;
        if body.truncated {
            return Err(format!("the answer is longer than {limit} bytes"));
        }
        Ok((resp.status_code(), body.text()))
    };
    let timeout = Delay::from(Duration::from_millis(FETCH_TIMEOUT_MS));
    let outcome = match select(Box::pin(call), timeout).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => {
            controller.abort();
            Err(format!("no answer within {FETCH_TIMEOUT_MS} ms"))
        }
    };
    outcome
}

// ---- the app's session ---------------------------------------------------------------------

thread_local! {
    static SESSIONS: RefCell<Option<SessionCache>> = const { RefCell::new(None) };
}

/// Asks the app who the headers sign in, through the isolate's cache.
async fn app_session(
    login: &LoginConfig,
    cookie: Option<&str>,
    authorization: Option<&str>,
) -> Result<Grant, Refusal> {
    let Some(url) = login.session_url.as_deref() else {
        return Err(Refusal::Unauthorized("not signed in".into()));
    };
    let key = session::cache_key(cookie, authorization);
    let cached = SESSIONS.with(|s| {
        s.borrow_mut()
            .get_or_insert_with(|| SessionCache::new(session::SESSION_CACHE_ENTRIES))
            .get(&key, now_ms())
    });
    let answer = match cached {
        Some(answer) => answer,
        None => {
            let answer = ask_session(url, cookie, authorization)
                .await
                .map_err(|e| unavailable("session endpoint", e))?;
            SESSIONS.with(|s| {
                if let Some(cache) = s.borrow_mut().as_mut() {
                    cache.put(key, answer.clone(), now_ms(), login.session_cache_ms);
                }
            });
            answer
        }
    };
    match answer {
        SessionAnswer::SignedIn { user, expires_at } => Ok(Grant {
            user,
            token_hash: None,
            expires_at,
        }),
        SessionAnswer::NotSignedIn(why) => {
            worker::console_log!("session: not signed in ({why})");
            Err(Refusal::Unauthorized("not signed in".into()))
        }
    }
}

/// One call to the session endpoint, read.
async fn ask_session(
    url: &str,
    cookie: Option<&str>,
    authorization: Option<&str>,
) -> Result<SessionAnswer, String> {
    let mut headers = vec![("accept", "application/json")];
    headers.extend(cookie.map(|c| ("cookie", c)));
    headers.extend(authorization.map(|a| ("authorization", a)));
    let (status, body) = get(url, &headers, session::MAX_SESSION_BYTES).await?;
    session::read_answer(status, &body, now_ms())
}

// ---- JWTs ----------------------------------------------------------------------------------

type KeySetCall = Shared<LocalBoxFuture<'static, Result<(), String>>>;

/// The isolate's copy of the key set.
#[derive(Default)]
struct KeySet {
    url: String,
    jwks: Rc<Jwks>,
    freshness: Freshness,
    call: Option<KeySetCall>,
    /// WebCrypto keys imported from the set, by algorithm and JWK; emptied when the set changes.
    imported: Vec<(Alg, String, JsValue)>,
}

thread_local! {
    static KEYS: RefCell<KeySet> = RefCell::default();
}

async fn verify_jwt(login: &LoginConfig, token: &str) -> Result<Grant, Refusal> {
    let refused = |e: JwtError| Refusal::Unauthorized(e.message());
    let Some(url) = login.jwks_url.as_deref() else {
        return Err(refused(JwtError::UnknownKey));
    };
    let jwt = jwt::decode(token).map_err(refused)?;
    let expect = Expect {
        issuer: login.jwt_issuer.as_deref(),
        audience: login.jwt_audience.as_deref(),
        now_ms: now_ms(),
    };
    // The claims first: an expired or foreign token costs no key fetch.
    let claims = jwt::check_claims(&jwt.claims, &expect).map_err(refused)?;
    let (alg, jwk) = key_for(url, jwt.kid.as_deref(), jwt.alg).await?;
    match verify(alg, &jwk, &jwt.signature, jwt.signing_input.as_bytes()).await {
        Ok(true) => Ok(Grant {
            user: claims.user,
            token_hash: None,
            expires_at: Some(claims.expires_at),
        }),
        Ok(false) => Err(refused(JwtError::BadSignature)),
        Err(e) => {
            worker::console_warn!("verifying a {} token: {e}", alg.name());
            Err(refused(JwtError::BadSignature))
        }
    }
}

/// The JWK that verifies a token of `alg` naming `kid`: from the isolate's set, fetched first
/// when there is none or it is old, and fetched again (rate-limited) when it lacks the key.
async fn key_for(url: &str, kid: Option<&str>, alg: Alg) -> Result<(Alg, String), Refusal> {
    if KEYS.with(|k| k.borrow().url != url) {
        KEYS.with(|k| {
            *k.borrow_mut() = KeySet {
                url: url.to_string(),
                ..KeySet::default()
            }
        });
    }
    if KEYS.with(|k| k.borrow().freshness.must_fetch(now_ms())) {
        if let Err(e) = fetch_keys(url).await {
            // A stale set keeps serving while the key server fails.
            if KEYS.with(|k| k.borrow().freshness.fetched_at.is_none()) {
                return Err(unavailable("key set", e));
            }
            worker::console_warn!("key set (the old one is used): {e}");
        }
    }
    let find = || {
        KEYS.with(|k| {
            let k = k.borrow();
            k.jwks.find(kid, alg).map(|key| key.jwk.clone())
        })
    };
    let unknown = || Refusal::Unauthorized(JwtError::UnknownKey.message());
    match find() {
        Ok(jwk) => Ok((alg, jwk)),
        Err(Lookup::Unknown) if KEYS.with(|k| k.borrow().freshness.may_refresh(now_ms())) => {
            // A rotated key: the set is fetched again, once for everyone waiting.
            KEYS.with(|k| k.borrow_mut().freshness.refreshing(now_ms()));
            if let Err(e) = fetch_keys(url).await {
                worker::console_warn!("key set refresh: {e}");
            }
            find().map(|jwk| (alg, jwk)).map_err(|_| unknown())
        }
        Err(_) => Err(unknown()),
    }
}

/// Fetches the key set into the isolate; callers that come while a fetch runs wait for it.
async fn fetch_keys(url: &str) -> Result<(), String> {
    let running = KEYS.with(|k| k.borrow().call.clone());
    let call = match running {
        Some(call) => call,
        None => {
            let url = url.to_string();
            let call = async move {
                KEYS.with(|k| k.borrow_mut().freshness.attempted(now_ms()));
                let result = match get(
                    &url,
                    &[("accept", "application/json")],
                    jwks::MAX_JWKS_BYTES,
                )
                .await
                {
                    Ok((200..=299, body)) => jwks::parse(&body),
                    Ok((status, _)) => Err(format!("the key server answered {status}")),
                    Err(e) => Err(e),
                };
                KEYS.with(|k| {
                    let mut k = k.borrow_mut();
                    k.call = None;
                    if let Ok(set) = &result {
                        if k.url == url {
                            k.jwks = Rc::new(set.clone());
                            k.freshness.fetched(now_ms());
                            k.imported.clear();
                        }
                    }
                });
                result.map(|_| ())
            }
            .boxed_local()
            .shared();
            KEYS.with(|k| k.borrow_mut().call = Some(call.clone()));
            call
        }
    };
    call.await
}

#[wasm_bindgen]
extern "C" {
    /// `crypto.subtle`, seen through the two methods a signature check needs.
    type Subtle;
    #[wasm_bindgen(method, catch, js_name = importKey)]
    fn import_key(
        this: &Subtle,
        format: &str,
        key: &JsValue,
        algorithm: &JsValue,
        extractable: bool,
        usages: &Array,
    ) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn verify(
        this: &Subtle,
        algorithm: &JsValue,
        key: &JsValue,
        signature: &Uint8Array,
        data: &Uint8Array,
    ) -> Result<Promise, JsValue>;
}

fn subtle() -> Result<Subtle, String> {
    let crypto = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("crypto"))
        .map_err(|_| "no crypto")?;
    let subtle = js_sys::Reflect::get(&crypto, &JsValue::from_str("subtle"))
        .map_err(|_| "no crypto.subtle")?;
    if subtle.is_undefined() {
        return Err("no crypto.subtle".into());
    }
    Ok(subtle.unchecked_into())
}

fn js_error(e: JsValue) -> String {
    match e.dyn_ref::<js_sys::Error>() {
        Some(e) => String::from(e.to_string()),
        None => format!("{e:?}"),
    }
}

/// Verifies a JWS signature with WebCrypto: the JWK imported once per set and algorithm.
async fn verify(alg: Alg, jwk: &str, signature: &[u8], data: &[u8]) -> Result<bool, String> {
    let subtle = subtle()?;
    let parse = |json: &str| js_sys::JSON::parse(json).map_err(js_error);
    let imported = KEYS.with(|k| {
        let k = k.borrow();
        let found = k.imported.iter().find(|(a, j, _)| *a == alg && j == jwk);
        found.map(|(_, _, key)| key.clone())
    });
    let key = match imported {
        Some(key) => key,
        None => {
            let usages = Array::of1(&JsValue::from_str("verify"));
            let promise = subtle
                .import_key(
                    "jwk",
                    &parse(jwk)?,
                    &parse(&alg.import_params())?,
                    false,
                    &usages,
                )
                .map_err(js_error)?;
            let key = JsFuture::from(promise).await.map_err(js_error)?;
            KEYS.with(|k| {
                let entry = (alg, jwk.to_string(), key.clone());
                k.borrow_mut().imported.push(entry)
            });
            key
        }
    };
    // Copies: the promise outlives this call, and the Wasm memory may move meanwhile.
    let promise = subtle
        .verify(
            &parse(&alg.verify_params())?,
            &key,
            &Uint8Array::from(signature),
            &Uint8Array::from(data),
        )
        .map_err(js_error)?;
    let valid = JsFuture::from(promise).await.map_err(js_error)?;
    Ok(valid.as_bool() == Some(true))
}

/// What a socket.io CONNECT `auth.token` grants (a JWT, a gateway token, or the app's session
/// token, asked of the app as a bearer), or the `CONNECT_ERROR` message refusing it.
pub async fn connect_token(
    env: &worker::Env,
    config: &crate::config::Config,
    token: &str,
) -> std::result::Result<Grant, String> {
    let bearer = format!("Bearer {token}");
    let presented = crate::login::Presented {
        token: Some((token, CredentialSource::Explicit)),
        cookie: None,
        // Only what can travel in a header.
        authorization: token
            .bytes()
            .all(|b| b.is_ascii_graphic())
            .then_some(bearer.as_str()),
    };
    let checks = crate::login::plan(presented, &config.login, false);
    match sign_in(env, &config.login, &checks, |_| Ok(())).await {
        Outcome::Granted(grant) => Ok(grant),
        Outcome::Missing => Err("unauthorized: pass auth: { token } to io()".into()),
        Outcome::Refused { error, .. } if error.status() == 401 => {
            Err(format!("unauthorized: {}", error.message()))
        }
        Outcome::Refused { .. } => Err(format!("internal: {UNCHECKED}")),
    }
}
