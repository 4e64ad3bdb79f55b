//! Admin HTTP routes: tokens, reload broadcast, stats, model override, routing rules, agents and catalog rows.

use super::gateway::conversation_stub;
use super::{db, internal, json_response, new_id, now_ms};
use crate::admin::{self, AdminRoute, BodyUse};
use crate::auth;
use crate::config::Config;
use crate::error::ApiError;
use crate::fanout::{Action, FanOut};
use crate::store::{sql, TokenRow};
use crate::text::Bounded;
use serde::Deserialize;
use serde_json::{json, Value};
use worker::{Env, Method, Request, RequestInit, Response};

type ApiResult = std::result::Result<Response, ApiError>;

/// Dispatches `/admin/...` after checking the admin token.
pub async fn route(req: Request, env: &Env, config: &Config) -> ApiResult {
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
    let route = AdminRoute::parse(req.method().as_ref(), &parts)?;
    let body = match route.body_use() {
        BodyUse::None => Value::Null,
        use_ => admin::parse_body(&read_body(&req, use_.limit()).await?, use_)?,
    };
    let db = db::db(env).map_err(|e| internal("database binding", e))?;
    let result = match route {
        AdminRoute::MintToken => mint_token(body, &db).await,
        AdminRoute::ListTokens => list_tokens(&db).await,
        AdminRoute::RevokeToken(key) => revoke_token(key, env, &db, config).await,
        AdminRoute::Reload => reload(&body, env, &db, config).await,
        AdminRoute::Stats => stats(&db).await,
        AdminRoute::SetModel(id) => set_model(id, &body, env, &db).await,
        AdminRoute::ListRules => list_rules(&db).await,
        AdminRoute::SaveRule(id) => save_rule(id, body, &db).await,
        AdminRoute::DeleteRule(id) => delete_row(sql::DELETE_RULE, id, "rule", &db).await,
        AdminRoute::ListAgents => {
            let agents = db::operator_config(&db)
                .await
                .map_err(|e| internal("agents", e))?
                .agents;
            ok(admin::agent_listing(agents))
        }
        AdminRoute::SaveAgent(id) => save_agent(id, body, &db).await,
        AdminRoute::DeleteAgent(id) => delete_row(sql::DELETE_AGENT, id, "agent", &db).await,
        AdminRoute::ListModels => {
            let catalog = db::operator_config(&db)
                .await
                .map_err(|e| internal("catalog", e))?
                .catalog;
            ok(json!({ "models": catalog.all(), "skipped": catalog.skipped() }))
        }
        AdminRoute::SaveModel => save_model(body, &db).await,
    };
    // Live conversations cache rules, agents and catalog rows; a change is pushed to them at once.
    if route.changes_operator_config() && result.is_ok() {
        if let Err(e) = fan_out(env, &db, config, Action::Invalidate, None).await {
            worker::console_warn!("pushing a configuration change to live conversations: {e}");
        }
    }
    result
}

/// The request's body as text, refused (413) past `limit` bytes without reading the rest.
async fn read_body(req: &Request, limit: usize) -> std::result::Result<String, ApiError> {
    let declared = req.headers().get("content-length").ok().flatten();
    if admin::declared_too_large(declared.as_deref(), limit) {
        return Err(admin::too_large(limit));
    }
    let Some(stream) = req.inner().body() else {
        return Ok(String::new());
    };
    let read = super::body::read_stream_bounded(stream.as_ref(), Bounded::new(limit)).await;
    let body = read.map_err(|_| ApiError::BadRequest("unreadable body".into()))?;
    if body.truncated {
        return Err(admin::too_large(limit));
    }
    String::from_utf8(body.bytes)
        .map_err(|_| ApiError::BadRequest("body is not valid JSON: not UTF-8".into()))
}

fn ok(v: Value) -> ApiResult {
    json_response(200, &v).map_err(|e| internal("response", e))
}

async fn mint_token(body: Value, db: &worker::D1Database) -> ApiResult {
    let now = now_ms();
    let m = admin::token_mint(body, now, &new_id()[..8])?;
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| internal("random", e))?;
    let token = auth::token_from_bytes(&random);
    let params = [
        db::text(&auth::token_hash(&token)),
        db::text(&m.user_id),
        db::text(&m.name),
        db::num(now),
        db::opt_num(m.expires_at),
    ];
    if let Err(e) = db::run(db, sql::INSERT_TOKEN, &params).await {
        let msg = e.to_string();
        if msg.contains("UNIQUE") {
            return Err(ApiError::Conflict(format!(
                "a token named \"{}\" exists",
                m.name
            )));
        }
        return Err(internal("insert token", msg));
    }
    json_response(
        201,
        &json!({ "token": token, "userId": m.user_id, "name": m.name, "expiresAt": m.expires_at }),
    )
    .map_err(|e| internal("response", e))
}

async fn list_tokens(db: &worker::D1Database) -> ApiResult {
    let rows: Vec<TokenRow> = db::all(db, sql::LIST_TOKENS, &[])
        .await
        .map_err(|e| internal("list tokens", e))?;
    ok(admin::token_listing(&rows))
}

/// Revokes a token by name or hash, then closes every open socket it authenticated: a socket
/// holds its token's hash, and every live conversation is asked to shut the ones that match.
async fn revoke_token(key: &str, env: &Env, db: &worker::D1Database, config: &Config) -> ApiResult {
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
    let reached = fan_out(env, db, config, Action::Revoke, Some(body)).await?;
    ok(json!({ "revoked": key, "socketsClosed": reached.sockets, "failed": reached.failed }))
}

async fn reload(body: &Value, env: &Env, db: &worker::D1Database, config: &Config) -> ApiResult {
    let payload = admin::reload_payload(body, &super::now_iso());
    let reached = fan_out(env, db, config, Action::Reload, Some(payload)).await?;
    ok(serde_json::to_value(reached).map_err(|e| internal("response", e))?)
}

/// Runs `action` on every object the live registry lists, through shard objects (see
/// `super::fanout`). A stale registry row costs one call.
async fn fan_out(
    env: &Env,
    db: &worker::D1Database,
    config: &Config,
    action: Action,
    body: Option<String>,
) -> std::result::Result<FanOut, ApiError> {
    #[derive(Deserialize)]
    struct Live {
        conversation_id: String,
    }
    let live: Vec<Live> = db::all(db, sql::LIST_LIVE, &[])
        .await
        .map_err(|e| internal("live registry", e))?;
    let rows = live.into_iter().map(|l| l.conversation_id).collect();
    Ok(super::fanout::from_registry(env, config.fanout_shard_size, action, body, rows).await)
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
    let live = live.map_or([0.0; 3], |l| [l.conversations, l.sockets, l.turns]);
    let totals = totals.map_or([0.0; 3], |t| [t.conversations, t.messages, t.tokens]);
    ok(admin::stats_payload(live, totals))
}

async fn set_model(id: &str, body: &Value, env: &Env, db: &worker::D1Database) -> ApiResult {
    let model = admin::model_override(body)?;
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
    let (rule, text) = admin::rule_to_save(id, body, new_id)?;
    let params = [
        db::text(rule.id.as_deref().unwrap_or_default()),
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

async fn save_agent(id: Option<&str>, body: Value, db: &worker::D1Database) -> ApiResult {
    // The version this one replaces: its secrets stand in for the listing's mask.
    let stored = match id {
        Some(id) => db::operator_config(db)
            .await
            .map_err(|e| internal("agents", e))?
            .agents
            .into_iter()
            .find(|(key, _)| key == id)
            .map(|(_, agent)| agent),
        None => None,
    };
    let (agent, text) = admin::agent_to_save(body, stored.as_ref())?;
    let id = id.map(str::to_string).unwrap_or_else(new_id);
    let params = [
        db::text(&id),
        db::text(&agent.name),
        db::text(&text),
        db::num(now_ms()),
    ];
    db::run(db, sql::UPSERT_AGENT, &params)
        .await
        .map_err(|e| conflict_or_internal(e, "agent"))?;
    json_response(201, &json!({ "id": id, "name": agent.name }))
        .map_err(|e| internal("response", e))
}

async fn save_model(body: Value, db: &worker::D1Database) -> ApiResult {
    let (info, text) = admin::model_to_save(body)?;
    let params = [
        db::text(&info.provider),
        db::text(&info.id),
        db::text(&text),
        db::num(now_ms()),
    ];
    db::run(db, sql::UPSERT_MODEL, &params)
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
    admin::save_failure(&msg, what).unwrap_or_else(|| internal(what, msg))
}
