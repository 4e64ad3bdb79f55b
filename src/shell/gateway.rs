//! The stateless Worker: authenticates, checks origins and ownership, and hands each socket to its conversation's object.

use super::{db, error_response, json_response, new_id, now_ms};
use crate::auth;
use crate::config::Config;
use crate::error::ApiError;
use crate::protocol::{sio, valid_id};
use worker::{Env, Headers, Method, Request, RequestInit, Response, Result};

/// Internal headers the Worker sets for the conversation object; stripped from client requests first.
pub const H_USER: &str = "x-gateway-user";
pub const H_FRAMING: &str = "x-gateway-framing";
pub const H_CONVERSATION: &str = "x-gateway-conversation";
pub const H_LAST_SEQ: &str = "x-gateway-last-seq";

/// Dispatches one request.
pub async fn route(
    req: Request,
    env: &Env,
    config: &Config,
) -> std::result::Result<Response, ApiError> {
    let path = req.path();
    let method = req.method();
    if method == Method::Options && (path.starts_with("/api/") || path.starts_with("/admin/")) {
        return preflight(&req, config).map_err(|e| super::internal("preflight", e));
    }
    match path.as_str() {
        "/health" => json_response(200, &serde_json::json!({ "ok": true, "service": "edge-chat-gateway", "version": env!("CARGO_PKG_VERSION") }))
            .map_err(|e| super::internal("health", e)),
        "/chat" | "/chat/" => chat_upgrade(req, env, config).await,
        "/socket.io" | "/socket.io/" => socketio_upgrade(req, env, config).await,
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
    req.url()
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The token a request presents: `Authorization: Bearer`, the `token` cookie, or `?token=`.
fn presented_token(req: &Request, query: &[(String, String)]) -> Option<String> {
    let headers = req.headers();
    if let Some(t) = headers
        .get("authorization")
        .ok()
        .flatten()
        .as_deref()
        .and_then(auth::bearer)
    {
        return Some(t.to_string());
    }
    if let Some(t) = headers
        .get("cookie")
        .ok()
        .flatten()
        .as_deref()
        .and_then(|c| auth::cookie(c, "token").map(str::to_string))
    {
        return Some(t);
    }
    query_get(query, "token")
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// The authenticated user of a request, or 401.
async fn authenticate(
    req: &Request,
    env: &Env,
    query: &[(String, String)],
) -> std::result::Result<String, ApiError> {
    let token = presented_token(req, query).ok_or_else(|| {
        ApiError::Unauthorized(
            "missing token: send Authorization: Bearer <token> or ?token=".into(),
        )
    })?;
    let db = db::db(env).map_err(|e| super::internal("database binding", e))?;
    db::user_for_token(&db, &token, now_ms())
        .await
        .map_err(|e| super::internal("token lookup", e))?
        .ok_or_else(|| ApiError::Unauthorized("invalid, expired or revoked token".into()))
}

fn check_origin(req: &Request, config: &Config) -> std::result::Result<(), ApiError> {
    match req.headers().get("origin").ok().flatten() {
        Some(origin) if !config.origin_allowed(&origin) => Err(ApiError::Forbidden(format!(
            "origin {origin} is not in ALLOWED_ORIGINS"
        ))),
        _ => Ok(()),
    }
}

fn require_upgrade(req: &Request) -> std::result::Result<(), ApiError> {
    let upgrade = req
        .headers()
        .get("upgrade")
        .ok()
        .flatten()
        .unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(ApiError::UpgradeRequired);
    }
    Ok(())
}

fn conversation_param(query: &[(String, String)]) -> std::result::Result<String, ApiError> {
    match query_get(query, "conversationId") {
        None | Some("") => Ok(new_id()),
        Some(id) if valid_id(id) => Ok(id.to_string()),
        Some(_) => Err(ApiError::BadRequest(
            "conversationId must be 1 to 128 printable characters".into(),
        )),
    }
}

async fn chat_upgrade(
    req: Request,
    env: &Env,
    config: &Config,
) -> std::result::Result<Response, ApiError> {
    let query = query_pairs(&req);
    require_upgrade(&req)?;
    check_origin(&req, config)?;
    let user = authenticate(&req, env, &query).await?;
    let conversation = conversation_param(&query)?;
    let last_seq = match query_get(&query, "lastSeq") {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::BadRequest("lastSeq must be a whole number".into()))?,
        ),
    };
    check_owner(env, &conversation, &user).await?;
    forward(req, env, &conversation, "json", Some(&user), last_seq).await
}

async fn socketio_upgrade(
    req: Request,
    env: &Env,
    config: &Config,
) -> std::result::Result<Response, ApiError> {
    let query = query_pairs(&req);
    sio::check_handshake_query(&query).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    require_upgrade(&req)?;
    check_origin(&req, config)?;
    let conversation = conversation_param(&query)?;
    // socket.io clients usually send their token in the CONNECT packet, after the upgrade, where
    // the object checks it; a token on the upgrade itself (header, cookie, ?token=) is checked now.
    let user = match presented_token(&req, &query) {
        Some(_) => {
            let user = authenticate(&req, env, &query).await?;
            check_owner(env, &conversation, &user).await?;
            Some(user)
        }
        None => None,
    };
    forward(req, env, &conversation, "sio", user.as_deref(), None).await
}

/// Refuses a conversation that exists and belongs to someone else.
async fn check_owner(
    env: &Env,
    conversation: &str,
    user: &str,
) -> std::result::Result<(), ApiError> {
    let db = db::db(env).map_err(|e| super::internal("database binding", e))?;
    match db::conversation_owner(&db, conversation)
        .await
        .map_err(|e| super::internal("owner lookup", e))?
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
    user: Option<&str>,
    last_seq: Option<u64>,
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
    if let Some(u) = user {
        set(H_USER, u)?;
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
    check_origin(&req, config)?;
    if req.method() != Method::Get {
        return Err(ApiError::MethodNotAllowed);
    }
    let user = authenticate(&req, env, &query).await?;
    let path = req.path();
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    let db = db::db(env).map_err(|e| super::internal("database binding", e))?;
    match parts.as_slice() {
        ["conversations"] => {
            let rows = db::list_conversations(&db, &user).await.map_err(|e| super::internal("list conversations", e))?;
            json_response(200, &serde_json::json!({ "conversations": rows }))
        }
        ["conversations", id, "messages"] => {
            // Another user's conversation and a missing one look the same: 404.
            match db::conversation_owner(&db, id).await.map_err(|e| super::internal("owner lookup", e))? {
                Some(owner) if owner == user => {}
                _ => return Err(ApiError::NotFound("no such conversation".into())),
            }
            let rows = db::list_messages(&db, id).await.map_err(|e| super::internal("list messages", e))?;
            let messages: Vec<serde_json::Value> = rows
                .into_iter()
                .map(|m| {
                    let metadata: serde_json::Value = serde_json::from_str(&m.metadata).unwrap_or_default();
                    serde_json::json!({ "id": m.id, "conversationId": m.conversation_id, "role": m.role, "content": m.content, "metadata": metadata, "createdAt": m.created_at })
                })
                .collect();
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
