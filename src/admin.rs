//! The admin API's decisions: which route a request names, what its body must hold, and the shapes of its answers; the glue only reads and writes D1 and calls conversations.

use crate::agents::AgentConfig;
use crate::catalog::ModelInfo;
use crate::error::ApiError;
use crate::routing::RoutingRule;
use crate::store::TokenRow;
use serde::Deserialize;
use serde_json::{json, Value};

/// Largest admin request body.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Longest token lifetime an admin may mint.
const MAX_TOKEN_SECONDS: u64 = 10 * 365 * 86_400;
/// Largest `system:reload` payload (`POST /admin/reload`'s body): it goes to every socket.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// An admin route, with the ids its path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRoute<'a> {
    MintToken,
    ListTokens,
    /// By name or hash.
    RevokeToken(&'a str),
    Reload,
    Stats,
    SetModel(&'a str),
    ListRules,
    SaveRule(Option<&'a str>),
    DeleteRule(&'a str),
    ListAgents,
    SaveAgent(Option<&'a str>),
    DeleteAgent(&'a str),
    ListModels,
    SaveModel,
}

/// What a route reads of the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyUse {
    None,
    /// A JSON object is required.
    Object,
    /// A JSON object passed on as given (at most [`MAX_PAYLOAD_BYTES`]), or nothing (read as
    /// `null`).
    Payload,
}

impl BodyUse {
    /// The most bytes such a body may have.
    pub fn limit(self) -> usize {
        match self {
            BodyUse::Payload => MAX_PAYLOAD_BYTES,
            BodyUse::None | BodyUse::Object => MAX_BODY_BYTES,
        }
    }
}

/// The refusal of a body over `limit` bytes.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "this admin body is limited to {} KiB",
        limit / 1024
    ))
}

/// Whether a request's `Content-Length` already says its body is over `limit`: refused before
/// it is read. A missing or unreadable length says nothing (the read itself is bounded).
pub fn declared_too_large(content_length: Option<&str>, limit: usize) -> bool {
    content_length
        .and_then(|l| l.trim().parse::<u64>().ok())
        .is_some_and(|l| l > limit as u64)
}

impl<'a> AdminRoute<'a> {
    /// The route `method` and the decoded path segments after `/admin` name: 404 for a path
    /// the API does not have, 405 for a method a path does not take.
    pub fn parse(method: &str, parts: &[&'a str]) -> Result<AdminRoute<'a>, ApiError> {
        use AdminRoute as R;
        let route = match (method, parts) {
            ("POST", ["tokens"]) => R::MintToken,
            ("GET", ["tokens"]) => R::ListTokens,
            ("DELETE", ["tokens", key]) => R::RevokeToken(key),
            ("POST", ["reload"]) => R::Reload,
            ("GET", ["stats"]) => R::Stats,
            ("PUT", ["conversations", id, "model"]) => R::SetModel(id),
            ("GET", ["rules"]) => R::ListRules,
            ("POST", ["rules"]) => R::SaveRule(None),
            ("PUT", ["rules", id]) => R::SaveRule(Some(id)),
            ("DELETE", ["rules", id]) => R::DeleteRule(id),
            ("GET", ["agents"]) => R::ListAgents,
            ("POST", ["agents"]) => R::SaveAgent(None),
            ("PUT", ["agents", id]) => R::SaveAgent(Some(id)),
            ("DELETE", ["agents", id]) => R::DeleteAgent(id),
            ("GET", ["models"]) => R::ListModels,
            ("PUT", ["models"]) => R::SaveModel,
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
            ) => return Err(ApiError::MethodNotAllowed),
            _ => {
                return Err(ApiError::NotFound(format!(
                    "no admin route for /admin/{}",
                    parts.join("/")
                )))
            }
        };
        Ok(route)
    }

    /// Whether it changes what live conversations cache (rules, agents, catalog rows), so they
    /// must be told at once.
    pub fn changes_operator_config(self) -> bool {
        use AdminRoute as R;
        matches!(
            self,
            R::SaveRule(_) | R::DeleteRule(_) | R::SaveAgent(_) | R::DeleteAgent(_) | R::SaveModel
        )
    }

    /// What it reads of the body.
    pub fn body_use(self) -> BodyUse {
        use AdminRoute as R;
        match self {
            R::MintToken | R::SetModel(_) | R::SaveRule(_) | R::SaveAgent(_) | R::SaveModel => {
                BodyUse::Object
            }
            R::Reload => BodyUse::Payload,
            _ => BodyUse::None,
        }
    }
}

/// Reads an admin body: strict JSON, a single object, at most [`BodyUse::limit`] bytes. An
/// empty [`BodyUse::Payload`] is `null`.
pub fn parse_body(text: &str, use_: BodyUse) -> Result<Value, ApiError> {
    if use_ == BodyUse::None {
        return Ok(json!({}));
    }
    if use_ == BodyUse::Payload && text.trim().is_empty() {
        return Ok(Value::Null);
    }
    if text.len() > use_.limit() {
        return Err(too_large(use_.limit()));
    }
    let v: Value = crate::protocol::parse_strict(text)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::BadRequest("body must be a JSON object".into()));
    }
    Ok(v)
}

/// A token to mint, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMint {
    pub user_id: String,
    pub name: String,
    /// When it expires (ms since the epoch), if ever.
    pub expires_at: Option<i64>,
}

/// Checks `{userId, name?, expiresInSeconds?}` at `now_ms`; an unnamed token is named after its
/// user and `suffix`.
pub fn token_mint(body: Value, now_ms: i64, suffix: &str) -> Result<TokenMint, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct MintRequest {
        user_id: String,
        name: Option<String>,
        expires_in_seconds: Option<u64>,
    }
    let m: MintRequest = serde_json::from_value(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{userId, name?, expiresInSeconds?}}: {e}"
        ))
    })?;
    if !crate::auth::valid_user_id(&m.user_id) {
        return Err(ApiError::BadRequest(
            "userId must be 1 to 128 printable characters without spaces".into(),
        ));
    }
    let name = m.name.unwrap_or_else(|| format!("{}-{suffix}", m.user_id));
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
        return Err(ApiError::BadRequest(
            "name must be 1 to 128 characters".into(),
        ));
    }
    let expires_at = match m.expires_in_seconds {
        Some(0) => {
            return Err(ApiError::BadRequest(
                "expiresInSeconds must be positive".into(),
            ))
        }
        Some(s) if s > MAX_TOKEN_SECONDS => {
            return Err(ApiError::BadRequest(
                "expiresInSeconds is more than ten years".into(),
            ))
        }
        Some(s) => Some(now_ms + (s as i64) * 1000),
        None => None,
    };
    Ok(TokenMint {
        user_id: m.user_id,
        name,
        expires_at,
    })
}

/// The `system:reload` payload: `POST /admin/reload`'s body as given (a JSON object, as the
/// reference gateway's admin passes it on), or `{at}` without a body.
pub fn reload_payload(body: &Value, now_iso: &str) -> String {
    match body {
        Value::Null => json!({ "at": now_iso }).to_string(),
        given => given.to_string(),
    }
}

/// The model of `{model}`: an id to override with, or `null` to clear the override.
pub fn model_override(body: &Value) -> Result<Option<String>, ApiError> {
    match body.get("model") {
        Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if crate::protocol::valid_id(s) && s.len() <= 200 => {
            Ok(Some(s.clone()))
        }
        _ => Err(ApiError::BadRequest(
            "expected {\"model\": \"<id>\"} or {\"model\": null}".into(),
        )),
    }
}

/// The token listing: everything but the secret, which the gateway never kept.
pub fn token_listing(rows: &[TokenRow]) -> Value {
    let tokens: Vec<Value> = rows
        .iter()
        .map(|t| json!({ "name": t.name, "userId": t.user_id, "hash": t.token_hash, "createdAt": t.created_at, "expiresAt": t.expires_at, "revokedAt": t.revoked_at }))
        .collect();
    json!({ "tokens": tokens })
}

/// What the agent listing shows in place of a secret.
pub const MASK: &str = "********";

/// The agent listing; tool secrets and MCP header values never leave the gateway (the header
/// names show which are set).
pub fn agent_listing(agents: Vec<(String, AgentConfig)>) -> Value {
    let list: Vec<Value> = agents
        .into_iter()
        .map(|(id, mut a)| {
            for t in &mut a.tools {
                t.secret = t.secret.as_ref().map(|_| MASK.to_string());
            }
            for s in &mut a.mcp_servers {
                for value in s.headers.values_mut() {
                    *value = MASK.to_string();
                }
            }
            json!({ "id": id, "agent": a })
        })
        .collect();
    json!({ "agents": list })
}

/// The `/admin/stats` answer from the live registry's and the history's totals (D1 numbers).
pub fn stats_payload(live: [f64; 3], totals: [f64; 3]) -> Value {
    let n = |x: f64| x.max(0.0) as u64;
    json!({
        "live": { "conversations": n(live[0]), "sockets": n(live[1]), "turns": n(live[2]) },
        "totals": { "conversations": n(totals[0]), "messages": n(totals[1]), "tokens": n(totals[2]) },
    })
}

/// A D1 failure on a save: a name another row has is the admin's conflict, anything else ours.
pub fn save_failure(message: &str, what: &str) -> Option<ApiError> {
    message
        .contains("UNIQUE")
        .then(|| ApiError::Conflict(format!("another {what} has that name")))
}

/// A routing rule to save under `id` (the path's, else the body's, else `mint()`), checked,
/// with its stored text.
pub fn rule_to_save(
    id: Option<&str>,
    body: Value,
    mint: impl FnOnce() -> String,
) -> Result<(RoutingRule, String), ApiError> {
    let mut rule: RoutingRule = serde_json::from_value(body)
        .map_err(|e| ApiError::BadRequest(format!("not a routing rule: {e}")))?;
    rule.validate()
        .map_err(|e| ApiError::BadRequest(format!("invalid rule: {e}")))?;
    let id = id
        .map(str::to_string)
        .or_else(|| rule.id.clone())
        .unwrap_or_else(mint);
    rule.id = Some(id);
    let text = serde_json::to_string(&rule).unwrap_or_default();
    Ok((rule, text))
}

/// An agent to save, checked, with its stored text. `stored`: the version it replaces, whose
/// secrets stand in for the listing's mask, so a config read from `GET /admin/agents` and
/// sent back keeps them (a mask with nothing behind it is refused, never saved as a secret).
pub fn agent_to_save(
    body: Value,
    stored: Option<&AgentConfig>,
) -> Result<(AgentConfig, String), ApiError> {
    let mut agent: AgentConfig = serde_json::from_value(body)
        .map_err(|e| ApiError::BadRequest(format!("not an agent config: {e}")))?;
    unmask_secrets(&mut agent, stored)?;
    agent
        .validate()
        .map_err(|e| ApiError::BadRequest(format!("invalid agent: {e}")))?;
    let text = serde_json::to_string(&agent).unwrap_or_default();
    Ok((agent, text))
}

/// Puts the stored secrets back where `agent` carries the listing's mask.
fn unmask_secrets(agent: &mut AgentConfig, stored: Option<&AgentConfig>) -> Result<(), ApiError> {
    let unknown = |what: String| {
        ApiError::BadRequest(format!(
            "{what} is the listing's mask \"{MASK}\" and no stored value stands behind it; send the secret itself"
        ))
    };
    for tool in &mut agent.tools {
        if tool.secret.as_deref() != Some(MASK) {
            continue;
        }
        let kept = stored
            .and_then(|s| s.tools.iter().find(|t| t.name == tool.name))
            .and_then(|t| t.secret.clone());
        tool.secret = Some(kept.ok_or_else(|| unknown(format!("tool \"{}\": secret", tool.name)))?);
    }
    for server in &mut agent.mcp_servers {
        let old = stored.and_then(|s| s.mcp_servers.iter().find(|m| m.name == server.name));
        for (name, value) in server.headers.iter_mut() {
            if value != MASK {
                continue;
            }
            let kept = old.and_then(|m| m.headers.get(name)).cloned();
            *value = kept
                .ok_or_else(|| unknown(format!("mcpServers \"{}\": header {name}", server.name)))?;
        }
    }
    Ok(())
}

/// A catalog row to save, checked, with its stored text.
pub fn model_to_save(body: Value) -> Result<(ModelInfo, String), ApiError> {
    let info: ModelInfo = serde_json::from_value(body)
        .map_err(|e| ApiError::BadRequest(format!("not a model: {e}")))?;
    info.validate()
        .map_err(|e| ApiError::BadRequest(format!("invalid model: {e}")))?;
    let text = serde_json::to_string(&info).unwrap_or_default();
    Ok((info, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_answer_404_for_unknown_paths_and_405_for_wrong_methods() {
        assert_eq!(
            AdminRoute::parse("DELETE", &["tokens", "alice laptop"]),
            Ok(AdminRoute::RevokeToken("alice laptop"))
        );
        assert_eq!(
            AdminRoute::parse("PUT", &["conversations", "c1", "model"]),
            Ok(AdminRoute::SetModel("c1"))
        );
        assert_eq!(
            AdminRoute::parse("GET", &["reload"]),
            Err(ApiError::MethodNotAllowed)
        );
        assert_eq!(
            AdminRoute::parse("GET", &["nope"]).unwrap_err().status(),
            404
        );
        assert!(AdminRoute::SaveModel.changes_operator_config());
        assert!(!AdminRoute::ListRules.changes_operator_config());
        assert_eq!(AdminRoute::Reload.body_use(), BodyUse::Payload);
    }

    #[test]
    fn bodies_are_strict_json_objects_of_bounded_size() {
        assert_eq!(parse_body(" \n", BodyUse::Payload), Ok(Value::Null));
        assert_eq!(parse_body("", BodyUse::Object).unwrap_err().status(), 400);
        assert_eq!(
            parse_body("[1]", BodyUse::Object).unwrap_err().status(),
            400
        );
        assert_eq!(
            parse_body(r#"{"a":1,"a":2}"#, BodyUse::Object)
                .unwrap_err()
                .status(),
            400
        );
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_BODY_BYTES));
        assert_eq!(parse_body(&big, BodyUse::Object).unwrap_err().status(), 413);
        let payload = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_PAYLOAD_BYTES));
        assert_eq!(
            parse_body(&payload, BodyUse::Payload).unwrap_err().status(),
            413
        );
        assert!(parse_body(&payload, BodyUse::Object).is_ok());
        assert!(declared_too_large(Some("16385"), MAX_PAYLOAD_BYTES));
        assert!(!declared_too_large(Some(" 16384"), MAX_PAYLOAD_BYTES));
        assert!(!declared_too_large(Some("chunked?"), MAX_PAYLOAD_BYTES));
        assert!(!declared_too_large(None, MAX_PAYLOAD_BYTES));
    }

    #[test]
    fn the_reload_payload_is_the_body_as_given_or_the_time_without_one() {
        let given = parse_body(
            r#"{"reason":"deploy","version":"2.1","commands":[{"name":"x"}]}"#,
            BodyUse::Payload,
        )
        .unwrap();
        let sent: Value = serde_json::from_str(&reload_payload(&given, "T")).unwrap();
        assert_eq!(
            sent,
            json!({ "reason": "deploy", "version": "2.1", "commands": [{ "name": "x" }] }),
            "passed through, nothing added or changed"
        );
        assert_eq!(reload_payload(&json!({}), "T"), "{}");
        assert_eq!(reload_payload(&Value::Null, "T"), r#"{"at":"T"}"#);
        // Not JSON, or JSON that is not an object: 400.
        for bad in ["reload now", "{\"reason\":", "[1]", "\"x\"", "42", "null"] {
            assert_eq!(
                parse_body(bad, BodyUse::Payload).unwrap_err().status(),
                400,
                "{bad}"
            );
        }
    }

    #[test]
    fn minting_checks_the_user_the_name_and_the_lifetime() {
        let t = token_mint(
            json!({ "userId": "alice", "expiresInSeconds": 60 }),
            1000,
            "ab12",
        )
        .unwrap();
        assert_eq!(t.name, "alice-ab12");
        assert_eq!(t.expires_at, Some(61_000));
        for bad in [
            json!({ "userId": "has space" }),
            json!({ "userId": "a", "expiresInSeconds": 0 }),
            json!({ "userId": "a", "expiresInSeconds": MAX_TOKEN_SECONDS + 1 }),
            json!({ "userId": "a", "name": "" }),
            json!({ "userId": "a", "admin": true }),
        ] {
            assert_eq!(
                token_mint(bad.clone(), 0, "x").unwrap_err().status(),
                400,
                "{bad}"
            );
        }
    }

    #[test]
    fn model_overrides_are_checked() {
        assert_eq!(model_override(&json!({ "model": null })), Ok(None));
        assert_eq!(
            model_override(&json!({ "model": "openai/gpt-4o" })),
            Ok(Some("openai/gpt-4o".into()))
        );
        assert!(model_override(&json!({})).is_err());
    }

    #[test]
    fn saved_rows_are_checked_and_rules_keep_the_id_they_are_saved_under() {
        let rule = json!({ "name": "r", "provider": "openai", "model": "gpt-4o" });
        let (saved, text) =
            rule_to_save(Some("path-id"), rule.clone(), || "minted".into()).unwrap();
        assert_eq!(saved.id.as_deref(), Some("path-id"));
        assert!(text.contains("\"path-id\""));
        let (minted, _) = rule_to_save(None, rule, || "minted".into()).unwrap();
        assert_eq!(minted.id.as_deref(), Some("minted"));
        assert_eq!(
            rule_to_save(None, json!({ "name": "" }), String::new)
                .unwrap_err()
                .status(),
            400
        );
        assert!(agent_to_save(json!({ "name": "bad name" }), None).is_err());
        assert!(agent_to_save(json!({ "name": "good" }), None).is_ok());
        assert!(model_to_save(json!({ "nope": 1 })).is_err());
    }

    #[test]
    fn listings_hide_secrets() {
        let agent: AgentConfig = serde_json::from_value(json!({
            "name": "a", "tools": [{ "name": "t", "description": "d", "url": "http://x/t", "parameters": { "type": "object" }, "secret": "s3cret" }],
            "mcpServers": [{ "name": "docs", "url": "https://x/mcp", "headers": { "Authorization": "Bearer mcp-k3y" } }]
        }))
        .unwrap();
        let listing = agent_listing(vec![("id1".into(), agent)]);
        let text = listing.to_string();
        assert!(text.contains("********") && !text.contains("s3cret") && !text.contains("mcp-k3y"));
        assert_eq!(
            listing["agents"][0]["agent"]["mcpServers"][0]["headers"],
            json!({ "Authorization": "********" })
        );
        assert_eq!(
            stats_payload([1.0, 2.0, 0.0], [3.0, 4.0, 5.0])["totals"]["tokens"],
            5
        );
        assert!(save_failure("UNIQUE constraint failed", "rule").is_some());
        assert!(save_failure("disk I/O", "rule").is_none());
    }

    #[test]
    fn an_agent_sent_back_from_the_listing_keeps_its_secrets() {
        let (stored, _) = agent_to_save(
            json!({ "name": "ops",
                "tools": [{ "name": "t", "url": "http://x/t", "secret": "s3cret" }],
                "mcpServers": [{ "name": "m", "url": "https://m/mcp", "headers": { "Authorization": "Bearer k3y" } }] }),
            None,
        )
        .unwrap();
        let listed = agent_listing(vec![("id1".into(), stored.clone())]);
        let mut sent_back = listed["agents"][0]["agent"].clone();
        sent_back["systemPrompt"] = json!("Be brief.");
        let (saved, text) = agent_to_save(sent_back.clone(), Some(&stored)).unwrap();
        assert_eq!(saved.tools[0].secret.as_deref(), Some("s3cret"));
        assert_eq!(saved.mcp_servers[0].headers["Authorization"], "Bearer k3y");
        assert!(!text.contains(MASK));
        // A new secret replaces the old one.
        let mut rotated = sent_back.clone();
        rotated["tools"][0]["secret"] = json!("n3w");
        let (saved, _) = agent_to_save(rotated, Some(&stored)).unwrap();
        assert_eq!(saved.tools[0].secret.as_deref(), Some("n3w"));
        // A mask with nothing behind it (a new agent, a renamed tool or server) is refused.
        let e = agent_to_save(sent_back.clone(), None).unwrap_err();
        assert!(
            matches!(&e, ApiError::BadRequest(m) if m.contains("tool \"t\": secret")),
            "{e:?}"
        );
        let mut renamed = sent_back;
        renamed["tools"][0]["secret"] = json!("plain");
        renamed["mcpServers"][0]["name"] = json!("other");
        let e = agent_to_save(renamed, Some(&stored)).unwrap_err();
        assert!(
            matches!(&e, ApiError::BadRequest(m) if m.contains("header Authorization")),
            "{e:?}"
        );
    }
}
