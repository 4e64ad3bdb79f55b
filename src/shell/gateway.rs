//! The stateless Worker: authenticates, checks origins and ownership, and hands each socket to its conversation's object.

use super::login::Outcome;
use super::{db, error_response, json_response, new_id};
use crate::config::Config;
use crate::error::ApiError;
use crate::http::{self, CredentialSource};
use crate::login::{self, Grant, Presented};
use crate::protocol::sio;
use crate::store;
use worker::{Env, Headers, Method, Request, RequestInit, Response, Result};

/// Internal headers the Worker sets for the conversation object; stripped from client requests first.
pub const H_USER: &str = "x-gateway-user";
pub const H_FRAMING: &str = "x-gateway-framing";
pub const H_CONVERSATION: &str = "x-gateway-conversation";
pub const H_LAST_SEQ: &str = "x-gateway-last-seq";
/// The SHA-256 of the token that authenticated the socket, so a revocation can find it.
pub const H_TOKEN: &str = "x-gateway-token";
/// When the socket's credential expires (ms since the epoch): a gateway token's expiry, the
/// app session's `expiresAt`, a JWT's `exp`.
pub const H_TOKEN_EXPIRES: &str = "x-gateway-token-expires";
/// Why a socket.io upgrade's cookie signed nobody in; the socket waits for CONNECT, whose
/// refusal then says so.
pub const H_REFUSED: &str = "x-gateway-refused";

/// Dispatches one request.
pub async fn route(
    req: Request,
    env: &Env,
    config: &Config,
) -> std::result::Result<Response, ApiError> {
    let path = req.path();
    let method = req.method();
    let preflighted = ["/api/", "/admin/", "/socket.io"];
    if method == Method::Options && preflighted.iter().any(|p| path.starts_with(p)) {
        return preflight(&req, config).map_err(|e| super::internal("preflight", e));
    }
    match path.as_str() {
        "/health" => json_response(200, &serde_json::json!({ "ok": true, "service": "edge-chat-gateway", "version": env!("CARGO_PKG_VERSION") }))
            .map_err(|e| super::internal("health", e)),
        "/chat" | "/chat/" => chat_upgrade(req, env, config).await,
        "/socket.io" | "/socket.io/" => socketio(req, env, config).await,
        p if p.starts_with("/admin/") => super::admin::route(req, env, config).await,
        p if p.starts_with("/api/") => api(req, env, config).await,
        _ => Err(ApiError::NotFound(format!("no route for {path}"))),
    }
}

fn preflight(req: &Request, config: &Config) -> Result<Response> {
    let origin = req.headers().get("origin")?.unwrap_or_default();
    if !config.origin_allowed(&origin) {
        return error_response(&ApiError::Forbidden(format!(
            "origin {origin} is not allowed"
        )));
    }
    let headers = Headers::new();
    headers.set(
        "access-control-allow-methods",
        "GET, POST, PUT, DELETE, OPTIONS",
    )?;
    headers.set(
        "access-control-allow-headers",
        "authorization, content-type",
    )?;
    headers.set("access-control-max-age", "600")?;
    Ok(Response::empty()?.with_status(204).with_headers(headers))
}

/// Query parameters as pairs.
pub fn query_pairs(req: &Request) -> Vec<(String, String)> {
    http::query_pairs(&req.inner().url())
}

/// The credentials a request carries: the token it presents (and how), and the headers the
/// app's session endpoint reads.
struct Credentials {
    token: Option<(String, CredentialSource)>,
    cookie: Option<String>,
    authorization: Option<String>,
}

fn credentials(req: &Request, query: &[(String, String)]) -> Credentials {
    let headers = req.headers();
    let authorization = headers.get("authorization").ok().flatten();
    let cookie = headers.get("cookie").ok().flatten();
    Credentials {
        token: http::presented_token(authorization.as_deref(), query, cookie.as_deref()),
        cookie,
        authorization,
    }
}

/// Who the request is: the checks its credentials call for (`crate::login::plan`), each after
/// the origin rule for its credential's source.
async fn sign_in(req: &Request, env: &Env, config: &Config, creds: &Credentials) -> Outcome {
    let cookie_allowed = check_origin(req, config, Some(CredentialSource::Ambient)).is_ok();
    let presented = Presented {
        token: creds.token.as_ref().map(|(t, s)| (t.as_str(), *s)),
        cookie: creds.cookie.as_deref(),
        authorization: creds.authorization.as_deref(),
    };
    let checks = login::plan(presented, &config.login, cookie_allowed);
    super::login::sign_in(env, &config.login, &checks, |source| {
        check_origin(req, config, Some(source))
    })
    .await
}

/// Who the request is, or the refusal to answer with.
async fn authenticate(
    req: &Request,
    env: &Env,
    config: &Config,
    creds: &Credentials,
) -> std::result::Result<Grant, ApiError> {
    match sign_in(req, env, config, creds).await {
        Outcome::Granted(grant) => Ok(grant),
        Outcome::Missing => Err(missing_token(config)),
        Outcome::Refused { error, .. } => Err(error),
    }
}

/// The refusal for a request whose credential is missing.
fn missing_token(config: &Config) -> ApiError {
    let session = if config.login.session_url.is_some() {
        ", or sign in to the app"
    } else {
        ""
    };
    ApiError::Unauthorized(format!(
        "missing token: send Authorization: Bearer <token> or ?token={session}"
    ))
}

/// A storage failure before anything was decided: logged in full, answered with a generic 503.
fn unavailable(context: &str, e: impl std::fmt::Display) -> ApiError {
    worker::console_error!("{context}: {e}");
    ApiError::InternalRetry("the gateway could not complete the request; try again".into())
}

/// Refuses a browser origin that may not make this request with this kind of credential.
fn check_origin(
    req: &Request,
    config: &Config,
    source: Option<CredentialSource>,
) -> std::result::Result<(), ApiError> {
    let origin = req.headers().get("origin").ok().flatten();
    let own = http::origin_of(&req.inner().url());
    http::check_origin(origin.as_deref(), own.as_deref(), config, source)
        .map_err(|refusal| ApiError::Forbidden(refusal.message()))
}

fn require_upgrade(req: &Request) -> std::result::Result<(), ApiError> {
    http::require_websocket(req.headers().get("upgrade").ok().flatten().as_deref())
}

async fn chat_upgrade(
    req: Request,
    env: &Env,
    config: &Config,
) -> std::result::Result<Response, ApiError> {
    let query = query_pairs(&req);
    require_upgrade(&req)?;
    let creds = credentials(&req, &query);
    check_origin(&req, config, creds.token.as_ref().map(|(_, s)| *s))?;
    let grant = authenticate(&req, env, config, &creds).await?;
    let conversation = http::conversation_param(&query, new_id)?;
    let last_seq = http::last_seq_param(&query)?;
    check_owner(env, &conversation, &grant.user).await?;
    forward(
        req,
        env,
        &conversation,
        "json",
        Some(&grant),
        last_seq,
        None,
    )
    .await
}

/// `/socket.io/`: a WebSocket bound to one conversation (`conversationId` in the query), or a
/// connection object that serves many (long-polling first, or a WebSocket, as the reference
/// gateway's clients connect).
async fn socketio(
    req: Request,
    env: &Env,
    config: &Config,
) -> std::result::Result<Response, ApiError> {
    let query = query_pairs(&req);
    let transport =
        sio::handshake_transport(&query).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let bound = http::query_get(&query, "conversationId").is_some_and(|c| !c.is_empty());
    if transport == sio::Transport::WebSocket && bound {
        return socketio_upgrade(req, env, config).await;
    }
    let creds = credentials(&req, &query);
    check_origin(&req, config, creds.token.as_ref().map(|(_, s)| *s))?;
    if let Some(sid) = http::query_get(&query, "sid") {
        return connection_request(req, env, sid, transport).await;
    }
    // The reference gateway's clients sign in with what their handshake carries (the app's
    // session cookie). A credential sent on purpose (header, `?token=`) that fails is refused;
    // a cookie that signs nobody in leaves the connection signed out, which its CONNECT then
    // learns (connected, then disconnected), unless the CONNECT carries a token.
    let by_cookie = !matches!(creds.token, Some((_, CredentialSource::Explicit)));
    // A cookie this page may not use is refused with its reason at CONNECT (not taken for
    // "not signed in"), as on a socket bound to a conversation.
    let mut refused = None;
    let grant = match sign_in(&req, env, config, &creds).await {
        Outcome::Granted(grant) => Some(grant),
        Outcome::Missing => None,
        Outcome::Refused { error, by_session }
            if (by_session || by_cookie) && error.status() < 500 =>
        {
            if error.status() == 403 {
                refused = Some(error.message().to_string());
            }
            None
        }
        Outcome::Refused { error, .. } => return Err(error),
    };
    if transport == sio::Transport::WebSocket {
        require_upgrade(&req)?;
    }
    let sid = new_id();
    let headers = Headers::new();
    let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| super::internal("headers", e));
    set(super::connection::H_SID, &sid)?;
    set(
        super::connection::H_TRANSPORT,
        match transport {
            sio::Transport::WebSocket => "websocket",
            sio::Transport::Polling => "polling",
        },
    )?;
    if transport == sio::Transport::WebSocket {
        set("upgrade", "websocket")?;
    }
    if let Some(reason) = &refused {
        set(H_REFUSED, crate::text::prefix_bytes(reason, 200))?;
    }
    if let Some(g) = &grant {
        set(H_USER, &g.user)?;
        if let Some(hash) = &g.token_hash {
            set(H_TOKEN, hash)?;
        }
        if let Some(at) = g.expires_at {
            set(H_TOKEN_EXPIRES, &at.to_string())?;
        }
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let inner = Request::new_with_init("https://connection/open", &init)
        .map_err(|e| super::internal("request", e))?;
    let resp = connection_stub(env, &sid)?
        .fetch_with_request(inner)
        .await
        .map_err(|e| super::internal("connection object", e))?;
    with_own_headers(resp).await
}

/// A connection object's HTTP answer with headers the Worker may still set (CORS): a
/// subrequest's response has immutable ones. A WebSocket answer passes as it is.
async fn with_own_headers(mut resp: Response) -> std::result::Result<Response, ApiError> {
    let status = resp.status_code();
    if status == 101 {
        return Ok(resp);
    }
    let content_type = resp.headers().get("content-type").ok().flatten();
    let body = resp
        .text()
        .await
        .map_err(|e| super::internal("connection answer", e))?;
    let headers = Headers::new();
    let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| super::internal("headers", e));
    set("cache-control", "no-store")?;
    if let Some(t) = content_type {
        set("content-type", &t)?;
    }
    Ok(Response::ok(body)
        .map_err(|e| super::internal("response", e))?
        .with_status(status)
        .with_headers(headers))
}

/// A request of an open connection (a poll, a post, the upgrade) for its object.
async fn connection_request(
    mut req: Request,
    env: &Env,
    sid: &str,
    transport: sio::Transport,
) -> std::result::Result<Response, ApiError> {
    if !crate::protocol::valid_id(sid) {
        return super::connection::engine_error(400, 1, "Session ID unknown")
            .map_err(|e| super::internal("response", e));
    }
    let headers = Headers::new();
    let mut init = RequestInit::new();
    let path = match (transport, req.method()) {
        (sio::Transport::WebSocket, _) => {
            require_upgrade(&req)?;
            headers
                .set("upgrade", "websocket")
                .map_err(|e| super::internal("headers", e))?;
            init.with_method(Method::Get);
            "upgrade"
        }
        (sio::Transport::Polling, Method::Get) => {
            init.with_method(Method::Get);
            "poll"
        }
        (sio::Transport::Polling, Method::Post) => {
            let body = req
                .text()
                .await
                .map_err(|e| ApiError::BadRequest(format!("unreadable body: {e}")))?;
            init.with_method(Method::Post).with_body(Some(body.into()));
            "post"
        }
        _ => return Err(ApiError::MethodNotAllowed),
    };
    init.with_headers(headers);
    let inner = Request::new_with_init(&format!("https://connection/{path}"), &init)
        .map_err(|e| super::internal("request", e))?;
    let resp = connection_stub(env, sid)?
        .fetch_with_request(inner)
        .await
        .map_err(|e| super::internal("connection object", e))?;
    with_own_headers(resp).await
}

/// The Durable Object of a socket.io connection.
pub fn connection_stub(env: &Env, sid: &str) -> std::result::Result<worker::Stub, ApiError> {
    env.durable_object("CONNECTION")
        .and_then(|ns| ns.id_from_name(sid)?.get_stub())
        .map_err(|e| super::internal("connection namespace", e))
}

async fn socketio_upgrade(
    req: Request,
    env: &Env,
    config: &Config,
) -> std::result::Result<Response, ApiError> {
    let query = query_pairs(&req);
    sio::check_handshake_query(&query).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    require_upgrade(&req)?;
    let creds = credentials(&req, &query);
    check_origin(&req, config, creds.token.as_ref().map(|(_, s)| *s))?;
    let conversation = http::conversation_param(&query, new_id)?;
    // socket.io clients usually send their token in the CONNECT packet, after the upgrade; such a
    // socket waits in the object unauthenticated, touching none of its storage, until CONNECT
    // proves who it is. A token on the upgrade itself (header, cookie, ?token=) is checked now,
    // and so is the app's session. A session cookie that signs nobody in (or that this origin
    // may not use) does not refuse the upgrade: the browser sends its cookies with every socket,
    // and the client may still authenticate in CONNECT.
    let (grant, refused) = match sign_in(&req, env, config, &creds).await {
        Outcome::Granted(grant) => {
            check_owner(env, &conversation, &grant.user).await?;
            (Some(grant), None)
        }
        Outcome::Missing => (None, None),
        Outcome::Refused {
            error,
            by_session: true,
        } => (None, Some(error.message().to_string())),
        Outcome::Refused { error, .. } => return Err(error),
    };
    forward(
        req,
        env,
        &conversation,
        "sio",
        grant.as_ref(),
        None,
        refused.as_deref(),
    )
    .await
}

/// Refuses a conversation that exists in D1 and belongs to someone else (the object decides
/// new conversations atomically; this spares it a wake-up for a known refusal).
async fn check_owner(
    env: &Env,
    conversation: &str,
    user: &str,
) -> std::result::Result<(), ApiError> {
    let db = db::db(env).map_err(|e| unavailable("database binding", e))?;
    match db::conversation_owner(&db, conversation)
        .await
        .map_err(|e| unavailable("owner lookup", e))?
    {
        Some(owner) if owner != user => Err(ApiError::Forbidden(
            "this conversation belongs to another user".into(),
        )),
        _ => Ok(()),
    }
}

async fn forward(
    req: Request,
    env: &Env,
    conversation: &str,
    framing: &str,
    grant: Option<&Grant>,
    last_seq: Option<u64>,
    refused: Option<&str>,
) -> std::result::Result<Response, ApiError> {
    let headers = Headers::new();
    for (k, v) in req.headers().entries() {
        if !k.starts_with("x-gateway-") {
            let _ = headers.append(&k, &v);
        }
    }
    let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| super::internal("headers", e));
    set(H_FRAMING, framing)?;
    set(H_CONVERSATION, conversation)?;
    if let Some(g) = grant {
        set(H_USER, &g.user)?;
        if let Some(hash) = &g.token_hash {
            set(H_TOKEN, hash)?;
        }
        if let Some(at) = g.expires_at {
            set(H_TOKEN_EXPIRES, &at.to_string())?;
        }
    }
    if let Some(why) = refused {
        set(H_REFUSED, why)?;
    }
    if let Some(s) = last_seq {
        set(H_LAST_SEQ, &s.to_string())?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let inner = Request::new_with_init("https://conversation/connect", &init)
        .map_err(|e| super::internal("request", e))?;
    let stub = conversation_stub(env, conversation)?;
    stub.fetch_with_request(inner)
        .await
        .map_err(|e| super::internal("conversation object", e))
}

/// The Durable Object stub of a conversation.
pub fn conversation_stub(
    env: &Env,
    conversation: &str,
) -> std::result::Result<worker::Stub, ApiError> {
    env.durable_object("CONVERSATION")
        .and_then(|ns| ns.id_from_name(conversation)?.get_stub())
        .map_err(|e| super::internal("conversation namespace", e))
}

async fn api(req: Request, env: &Env, config: &Config) -> std::result::Result<Response, ApiError> {
    let query = query_pairs(&req);
    let creds = credentials(&req, &query);
    check_origin(&req, config, creds.token.as_ref().map(|(_, s)| *s))?;
    if req.method() != Method::Get {
        return Err(ApiError::MethodNotAllowed);
    }
    let user = authenticate(&req, env, config, &creds).await?.user;
    let path = req.path();
    let segments = http::path_segments(&path, 1)
        .map_err(|_| ApiError::BadRequest("the path is not valid percent-encoded UTF-8".into()))?;
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    let db = db::db(env).map_err(|e| super::internal("database binding", e))?;
    match parts.as_slice() {
        ["conversations"] => {
            let rows = db::list_conversations(&db, &user).await.map_err(|e| super::internal("list conversations", e))?;
            json_response(200, &serde_json::json!({ "conversations": rows }))
        }
        ["conversations", id, "messages"] => {
            let id = *id;
            let owner = db::conversation_owner(&db, id).await.map_err(|e| super::internal("owner lookup", e))?;
            // Another user's conversation and a missing one look the same: 404.
            let missing = || ApiError::NotFound("no such conversation".into());
            if owner.as_ref().is_some_and(|o| *o != user) {
                return Err(missing());
            }
            let copied: Vec<serde_json::Value> = match &owner {
                Some(_) => db::list_messages(&db, id)
                    .await
                    .map_err(|e| super::internal("list messages", e))?
                    .into_iter()
                    .map(|m| store::message_json(&m.id, &m.conversation_id, &m.role, &m.content, &m.metadata, m.created_at))
                    .collect(),
                None => Vec::new(),
            };
            // What D1 lacks yet (a reply sent just now, a copy that failed) is read from the
            // conversation, so a client that reads at agent:end finds the reply.
            let held = match super::admin::call_object(env, id, "held", Method::Get, None).await {
                Ok(v) => v,
                Err(e) => {
                    worker::console_warn!("reading held messages: {}", e.message());
                    serde_json::Value::Null
                }
            };
            if owner.is_none() && held["owner"].as_str() != Some(user.as_str()) {
                return Err(missing());
            }
            let held: Vec<serde_json::Value> = serde_json::from_value(held["messages"].clone()).unwrap_or_default();
            let messages = store::merge_history(copied, held);
            json_response(200, &serde_json::json!({ "conversationId": id, "messages": messages }))
        }
        ["models"] => {
            let catalog = db::operator_config(&db)
                .await
                .map_err(|e| super::internal("catalog", e))?
                .catalog;
            let configured: Vec<&str> = config.providers.iter().map(|p| p.name).collect();
            json_response(
                200,
                &serde_json::json!({ "models": catalog.all(), "providers": configured, "default": format!("{}/{}", config.default_provider, config.default_model) }),
            )
        }
        ["me"] => json_response(200, &serde_json::json!({ "userId": user })),
        _ => return Err(ApiError::NotFound(format!("no route for {path}"))),
    }
    .map_err(|e| super::internal("response", e))
}
