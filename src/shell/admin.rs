//! Admin HTTP routes: tokens, reload broadcast, stats, model override, routing rules, agents and catalog rows.

use super::gateway::conversation_stub;
use super::{db, internal, json_response, new_id, now_ms};
use crate::agents::AgentConfig;
use crate::auth;
use crate::catalog::ModelInfo;
use crate::config::Config;
use crate::error::ApiError;
use crate::routing::RoutingRule;
use crate::store::{sql, TokenRow};
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use worker::{Env, Method, Request, RequestInit, Response};

type ApiResult = std::result::Result<Response, ApiError>;

/// Conversations reloaded at once; bounds the Worker's open subrequests.
const FANOUT_CONCURRENCY: usize = 32;

/// Dispatches `/admin/...` after checking the admin token.
pub async fn route(mut req: Request, env: &Env, config: &Config) -> ApiResult {
    let Some(admin_token) = config.admin_token.as_deref() else {
        return Err(ApiError::Unavailable(
            "admin routes are disabled: ADMIN_TOKEN is not configured".into(),
        ));
    };
    let presented = req.headers().get("authorization").ok().flatten();
    let authorized = presented
        .as_deref()
        .and_then(auth::bearer)
        .is_some_and(|t| auth::admin_token_matches(t, admin_token));
    if !authorized {
        return Err(ApiError::Unauthorized(
            "admin routes need Authorization: Bearer <ADMIN_TOKEN>".into(),
        ));
    }
    let path = req.path();
    // Decoded once, so a token named "alice laptop" is revoked at /admin/tokens/alice%20laptop.
    let parts = crate::http::path_segments(&path, 1)
        .map_err(|_| ApiError::BadRequest("the path is not valid percent-encoded UTF-8".into()))?;
    let parts: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
    let method = req.method();
    let db = db::db(env).map_err(|e| internal("database binding", e))?;
    // Live conversations cache rules, agents and catalog rows; a change is pushed to them at once.
    let changes_operator_config =
        method != Method::Get && matches!(parts.first(), Some(&("rules" | "agents" | "models")));
    let result = match (method, parts.as_slice()) {
        (Method::Post, ["tokens"]) => mint_token(body(&mut req).await?, &db).await,
        (Method::Get, ["tokens"]) => list_tokens(&db).await,
        (Method::Delete, ["tokens", key]) => revoke_token(key, env, &db).await,
        (Method::Post, ["reload"]) => reload(body_or_empty(&mut req).await?, env, &db).await,
        (Method::Get, ["stats"]) => stats(&db).await,
        (Method::Put, ["conversations", id, "model"]) => {
            set_model(id, body(&mut req).await?, env, &db).await
        }
        (Method::Get, ["rules"]) => list_rules(&db).await,
        (Method::Post, ["rules"]) => save_rule(None, body(&mut req).await?, &db).await,
        (Method::Put, ["rules", id]) => save_rule(Some(id), body(&mut req).await?, &db).await,
        (Method::Delete, ["rules", id]) => delete_row(sql::DELETE_RULE, id, "rule", &db).await,
        (Method::Get, ["agents"]) => list_agents(&db).await,
        (Method::Post, ["agents"]) => save_agent(None, body(&mut req).await?, &db).await,
        (Method::Put, ["agents", id]) => save_agent(Some(id), body(&mut req).await?, &db).await,
        (Method::Delete, ["agents", id]) => delete_row(sql::DELETE_AGENT, id, "agent", &db).await,
        (Method::Get, ["models"]) => {
            let catalog = db::operator_config(&db)
                .await
                .map_err(|e| internal("catalog", e))?
                .catalog;
            ok(json!({ "models": catalog.all(), "skipped": catalog.skipped() }))
        }
        (Method::Put, ["models"]) => save_model(body(&mut req).await?, &db).await,
        (
            _,
            ["tokens"]
            | ["tokens", _]
            | ["reload"]
            | ["stats"]
            | ["conversations", _, "model"]
            | ["rules"]
            | ["rules", _]
            | ["agents"]
            | ["agents", _]
            | ["models"],
        ) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound(format!("no admin route for {path}"))),
    };
    if changes_operator_config && result.is_ok() {
        if let Err(e) = fan_out(env, &db, "invalidate", None).await {
            worker::console_warn!("pushing a configuration change to live conversations: {e}");
        }
    }
    result
}

fn ok(v: Value) -> ApiResult {
    json_response(200, &v).map_err(|e| internal("response", e))
}

async fn body(req: &mut Request) -> std::result::Result<Value, ApiError> {
    let text = req
        .text()
        .await
        .map_err(|_| ApiError::BadRequest("unreadable body".into()))?;
    if text.len() > 256 * 1024 {
        return Err(ApiError::PayloadTooLarge(
            "admin bodies are limited to 256 KiB".into(),
        ));
    }
    let v: Value = crate::protocol::parse_strict(&text)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::BadRequest("body must be a JSON object".into()));
    }
    Ok(v)
}

async fn body_or_empty(req: &mut Request) -> std::result::Result<Value, ApiError> {
    let text = req
        .clone()
        .map_err(|e| internal("body", e))?
        .text()
        .await
        .unwrap_or_default();
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    body(req).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MintRequest {
    user_id: String,
    name: Option<String>,
    expires_in_seconds: Option<u64>,
}

async fn mint_token(body: Value, db: &worker::D1Database) -> ApiResult {
    let m: MintRequest = serde_json::from_value(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{userId, name?, expiresInSeconds?}}: {e}"
        ))
    })?;
    if !auth::valid_user_id(&m.user_id) {
        return Err(ApiError::BadRequest(
            "userId must be 1 to 128 printable characters without spaces".into(),
        ));
    }
    let name = m
        .name
        .unwrap_or_else(|| format!("{}-{}", m.user_id, &new_id()[..8]));
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
        return Err(ApiError::BadRequest(
            "name must be 1 to 128 characters".into(),
        ));
    }
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| internal("random", e))?;
    let token = auth::token_from_bytes(&random);
    let now = now_ms();
    let expires = match m.expires_in_seconds {
        Some(0) => {
            return Err(ApiError::BadRequest(
                "expiresInSeconds must be positive".into(),
            ))
        }
        Some(s) if s > 10 * 365 * 86_400 => {
            return Err(ApiError::BadRequest(
                "expiresInSeconds is more than ten years".into(),
            ))
        }
        Some(s) => Some(now + (s as i64) * 1000),
        None => None,
    };
    let params = [
        db::text(&auth::token_hash(&token)),
        db::text(&m.user_id),
        db::text(&name),
        db::num(now),
        db::opt_num(expires),
    ];
    if let Err(e) = db::run(db, sql::INSERT_TOKEN, &params).await {
        let msg = e.to_string();
        if msg.contains("UNIQUE") {
            return Err(ApiError::Conflict(format!(
                "a token named \"{name}\" exists"
            )));
        }
        return Err(internal("insert token", msg));
    }
    json_response(
        201,
        &json!({ "token": token, "userId": m.user_id, "name": name, "expiresAt": expires }),
    )
    .map_err(|e| internal("response", e))
}

async fn list_tokens(db: &worker::D1Database) -> ApiResult {
    let rows: Vec<TokenRow> = db::all(db, sql::LIST_TOKENS, &[])
        .await
        .map_err(|e| internal("list tokens", e))?;
    let tokens: Vec<Value> = rows
        .into_iter()
        .map(|t| json!({ "name": t.name, "userId": t.user_id, "hash": t.token_hash, "createdAt": t.created_at, "expiresAt": t.expires_at, "revokedAt": t.revoked_at }))
        .collect();
    ok(json!({ "tokens": tokens }))
}

/// Revokes a token by name or hash, then closes every open socket it authenticated: a socket
/// holds its token's hash, and every live conversation is asked to shut the ones that match.
async fn revoke_token(key: &str, env: &Env, db: &worker::D1Database) -> ApiResult {
    #[derive(Deserialize)]
    struct Revoked {
        token_hash: String,
    }
    let revoked: Vec<Revoked> = db::all(db, sql::REVOKE_TOKEN, &[db::text(key), db::num(now_ms())])
        .await
        .map_err(|e| internal("revoke token", e))?;
    if revoked.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no active token named or hashed \"{key}\""
        )));
    }
    let hashes: Vec<&str> = revoked.iter().map(|r| r.token_hash.as_str()).collect();
    let body = json!({ "tokens": hashes }).to_string();
    let (_, sockets, failed) = fan_out(env, db, "revoke", Some(body)).await?;
    ok(json!({ "revoked": key, "socketsClosed": sockets, "failed": failed }))
}

async fn reload(body: Value, env: &Env, db: &worker::D1Database) -> ApiResult {
    let reason = match body.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 1000 => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "reason must be a string of at most 1000 bytes".into(),
            ))
        }
    };
    let payload = json!({ "reason": reason, "at": super::now_iso() }).to_string();
    let (conversations, sockets, failed) = fan_out(env, db, "reload", Some(payload)).await?;
    ok(json!({ "conversations": conversations, "sockets": sockets, "failed": failed }))
}

/// Calls `action` on every live conversation, at most `FANOUT_CONCURRENCY` at once; returns
/// (conversations with sockets, sockets reached, failures). A stale registry row costs one call.
async fn fan_out(
    env: &Env,
    db: &worker::D1Database,
    action: &str,
    body: Option<String>,
) -> std::result::Result<(u64, u64, u64), ApiError> {
    #[derive(Deserialize)]
    struct Live {
        conversation_id: String,
    }
    let live: Vec<Live> = db::all(db, sql::LIST_LIVE, &[])
        .await
        .map_err(|e| internal("live registry", e))?;
    let results: Vec<Option<(u64, u64)>> = stream::iter(live.into_iter().map(|l| {
        let body = body.clone();
        async move {
            call_object(env, &l.conversation_id, action, Method::Post, body)
                .await
                .ok()
                .map(|v| {
                    (
                        v["sockets"].as_u64().unwrap_or(0),
                        v["failed"].as_u64().unwrap_or(0),
                    )
                })
        }
    }))
    .buffer_unordered(FANOUT_CONCURRENCY)
    .collect()
    .await;
    let (mut conversations, mut sockets, mut failed) = (0, 0, 0);
    for r in results {
        match r {
            Some((s, f)) => {
                conversations += u64::from(s > 0);
                sockets += s;
                failed += f;
            }
            None => failed += 1,
        }
    }
    Ok((conversations, sockets, failed))
}

/// Calls a conversation object's internal route and returns its JSON answer.
pub async fn call_object(
    env: &Env,
    conversation: &str,
    action: &str,
    method: Method,
    body: Option<String>,
) -> std::result::Result<Value, ApiError> {
    let stub = conversation_stub(env, conversation)?;
    let headers = worker::Headers::new();
    let _ = headers.set(super::gateway::H_CONVERSATION, conversation);
    let _ = headers.set("content-type", "application/json");
    let mut init = RequestInit::new();
    init.with_method(method).with_headers(headers);
    if let Some(b) = body {
        init.with_body(Some(b.into()));
    }
    let req = Request::new_with_init(&format!("https://conversation/{action}"), &init)
        .map_err(|e| internal("request", e))?;
    let mut resp = stub
        .fetch_with_request(req)
        .await
        .map_err(|e| internal("conversation object", e))?;
    let status = resp.status_code();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if status >= 400 {
        let msg = v["error"]
            .as_str()
            .unwrap_or("conversation object refused")
            .to_string();
        return Err(match status {
            400 => ApiError::BadRequest(msg),
            404 => ApiError::NotFound(msg),
            _ => ApiError::Internal(msg),
        });
    }
    Ok(v)
}

async fn stats(db: &worker::D1Database) -> ApiResult {
    #[derive(Deserialize)]
    struct Live {
        conversations: f64,
        sockets: f64,
        turns: f64,
    }
    #[derive(Deserialize)]
    struct Totals {
        conversations: f64,
        messages: f64,
        tokens: f64,
    }
    let live: Option<Live> = db::first(db, sql::LIVE_TOTALS, &[])
        .await
        .map_err(|e| internal("live totals", e))?;
    let totals: Option<Totals> = db::first(db, sql::TOTALS, &[])
        .await
        .map_err(|e| internal("totals", e))?;
    let live = live.unwrap_or(Live {
        conversations: 0.0,
        sockets: 0.0,
        turns: 0.0,
    });
    let totals = totals.unwrap_or(Totals {
        conversations: 0.0,
        messages: 0.0,
        tokens: 0.0,
    });
    ok(json!({
        "live": { "conversations": live.conversations as u64, "sockets": live.sockets as u64, "turns": live.turns as u64 },
        "totals": { "conversations": totals.conversations as u64, "messages": totals.messages as u64, "tokens": totals.tokens as u64 },
    }))
}

async fn set_model(id: &str, body: Value, env: &Env, db: &worker::D1Database) -> ApiResult {
    let model = match body.get("model") {
        Some(Value::Null) => None,
        Some(Value::String(s)) if crate::protocol::valid_id(s) && s.len() <= 200 => Some(s.clone()),
        _ => {
            return Err(ApiError::BadRequest(
                "expected {\"model\": \"<id>\"} or {\"model\": null}".into(),
            ))
        }
    };
    if db::conversation_owner(db, id)
        .await
        .map_err(|e| internal("owner lookup", e))?
        .is_none()
    {
        return Err(ApiError::NotFound("no such conversation".into()));
    }
    let v = call_object(
        env,
        id,
        "model",
        Method::Put,
        Some(json!({ "model": model }).to_string()),
    )
    .await?;
    ok(v)
}

async fn list_rules(db: &worker::D1Database) -> ApiResult {
    let rules = db::routing_rules(db)
        .await
        .map_err(|e| internal("rules", e))?;
    let compiled = crate::routing::CompiledRules::compile(rules.clone());
    let skipped: Vec<String> = compiled.skipped().iter().map(|s| s.to_string()).collect();
    ok(json!({ "rules": rules, "invalid": skipped }))
}

async fn save_rule(id: Option<&str>, body: Value, db: &worker::D1Database) -> ApiResult {
    let mut rule: RoutingRule = serde_json::from_value(body)
        .map_err(|e| ApiError::BadRequest(format!("not a routing rule: {e}")))?;
    rule.validate()
        .map_err(|e| ApiError::BadRequest(format!("invalid rule: {e}")))?;
    let id = id
        .map(str::to_string)
        .or_else(|| rule.id.clone())
        .unwrap_or_else(new_id);
    rule.id = Some(id.clone());
    let text = serde_json::to_string(&rule).map_err(|e| internal("encode rule", e))?;
    let params = [
        db::text(&id),
        db::text(&rule.name),
        db::num(rule.priority),
        db::num(rule.enabled as i64),
        db::text(&text),
        db::num(now_ms()),
    ];
    db::run(db, sql::UPSERT_RULE, &params)
        .await
        .map_err(|e| conflict_or_internal(e, "rule"))?;
    json_response(201, &json!({ "rule": rule })).map_err(|e| internal("response", e))
}

async fn list_agents(db: &worker::D1Database) -> ApiResult {
    let agents = db::operator_config(db)
        .await
        .map_err(|e| internal("agents", e))?
        .agents;
    let list: Vec<Value> = agents
        .into_iter()
        .map(|(id, mut a)| {
            // Tool secrets never leave the gateway.
            for t in &mut a.tools {
                t.secret = t.secret.as_ref().map(|_| "********".to_string());
            }
            json!({ "id": id, "agent": a })
        })
        .collect();
    ok(json!({ "agents": list }))
}

async fn save_agent(id: Option<&str>, body: Value, db: &worker::D1Database) -> ApiResult {
    let agent: AgentConfig = serde_json::from_value(body)
        .map_err(|e| ApiError::BadRequest(format!("not an agent config: {e}")))?;
    agent
        .validate()
        .map_err(|e| ApiError::BadRequest(format!("invalid agent: {e}")))?;
    let id = id.map(str::to_string).unwrap_or_else(new_id);
    let text = serde_json::to_string(&agent).map_err(|e| internal("encode agent", e))?;
    db::run(
        db,
        sql::UPSERT_AGENT,
        &[
            db::text(&id),
            db::text(&agent.name),
            db::text(&text),
            db::num(now_ms()),
        ],
    )
    .await
    .map_err(|e| conflict_or_internal(e, "agent"))?;
    json_response(201, &json!({ "id": id, "name": agent.name }))
        .map_err(|e| internal("response", e))
}

async fn save_model(body: Value, db: &worker::D1Database) -> ApiResult {
    let info: ModelInfo = serde_json::from_value(body)
        .map_err(|e| ApiError::BadRequest(format!("not a model: {e}")))?;
    info.validate()
        .map_err(|e| ApiError::BadRequest(format!("invalid model: {e}")))?;
    let text = serde_json::to_string(&info).map_err(|e| internal("encode model", e))?;
    db::run(
        db,
        sql::UPSERT_MODEL,
        &[
            db::text(&info.provider),
            db::text(&info.id),
            db::text(&text),
            db::num(now_ms()),
        ],
    )
    .await
    .map_err(|e| internal("save model", e))?;
    json_response(201, &json!({ "model": info })).map_err(|e| internal("response", e))
}

async fn delete_row(query: &str, id: &str, what: &str, db: &worker::D1Database) -> ApiResult {
    let n = db::run(db, query, &[db::text(id)])
        .await
        .map_err(|e| internal("delete", e))?;
    if n == 0 {
        return Err(ApiError::NotFound(format!("no {what} \"{id}\"")));
    }
    ok(json!({ "deleted": id }))
}

fn conflict_or_internal(e: worker::Error, what: &str) -> ApiError {
    let msg = e.to_string();
    if msg.contains("UNIQUE") {
        ApiError::Conflict(format!("another {what} has that name"))
    } else {
        internal(what, msg)
    }
}
