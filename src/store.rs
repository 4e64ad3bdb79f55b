//! D1 row types and the SQL the gateway runs; execution lives in the glue.

use serde::{Deserialize, Serialize};

/// JSON that the gateway stored itself (session, turn record, checkpoints, operator rows) read
/// back as a `T`.
///
/// Decoded through a `Value` rather than straight from the text, so that the stored types have one
/// decoder in the bundle instead of two (the admin routes and D1 metadata decode them from `Value`
/// too). Runs when an object loads, recovers a turn or reads its configuration, never per delta.
/// A syntax error still names its line and column; a field of the wrong type no longer does.
pub fn parse_stored<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str::<serde_json::Value>(text).and_then(serde_json::from_value)
}

/// [`parse_stored`], `None` when the text does not parse.
pub fn stored<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    parse_stored(text).ok()
}

/// A conversation row as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationRow {
    pub id: String,
    pub owner_id: String,
    pub title: Option<String>,
    pub session_id: Option<String>,
    pub created_at: f64,
    pub updated_at: f64,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageRow {
    pub id: String,
    pub conversation_id: String,
    pub role: String,
    pub content: String,
    /// JSON text in D1; parsed when served.
    pub metadata: String,
    pub created_at: f64,
}

/// An API token row, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRow {
    pub token_hash: String,
    pub user_id: String,
    pub name: String,
    pub created_at: f64,
    pub expires_at: Option<f64>,
    pub revoked_at: Option<f64>,
}

/// Largest `content` stored in one row; D1 rows hold 2 MB and the metadata shares the row.
pub const MAX_STORED_CONTENT_BYTES: usize = 1_500_000;

/// Cuts text that would not fit a D1 row, on a char boundary, with a marker saying so.
/// Returns the text to store and whether it was cut.
pub fn fit_content(text: &str) -> (std::borrow::Cow<'_, str>, bool) {
    if text.len() <= MAX_STORED_CONTENT_BYTES {
        return (std::borrow::Cow::Borrowed(text), false);
    }
    let kept = crate::text::prefix_bytes(text, MAX_STORED_CONTENT_BYTES - 128);
    let cut = format!(
        "{kept}\n\n[truncated by the gateway: {} of {} bytes stored]",
        kept.len(),
        text.len()
    );
    (std::borrow::Cow::Owned(cut), true)
}

/// Operator configuration: the catalog with D1 rows on top, compiled routing rules, named agents.
pub struct OperatorConfig {
    pub catalog: crate::catalog::Catalog,
    pub rules: crate::routing::CompiledRules,
    pub agents: Vec<(String, crate::agents::AgentConfig)>,
    /// Rows that do not parse, with why; they are left out, never fatal.
    pub skipped: Vec<String>,
}

/// One row of [`sql::OPERATOR_CONFIG`]: `kind` is `rule`, `agent` or `model`; `body` is JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct OperatorRow {
    pub kind: String,
    pub id: String,
    pub body: String,
}

/// A stored routing rule with its row id.
pub fn parse_rule(id: &str, body: &str) -> Result<crate::routing::RoutingRule, serde_json::Error> {
    parse_stored::<crate::routing::RoutingRule>(body).map(|mut rule| {
        rule.id = Some(id.to_string());
        rule
    })
}

/// Builds the operator configuration from the rows of one query.
pub fn operator_config(rows: Vec<OperatorRow>) -> OperatorConfig {
    let (mut rules, mut agents, mut models, mut skipped) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        let parsed = match row.kind.as_str() {
            "rule" => parse_rule(&row.id, &row.body).map(|r| rules.push(r)),
            "agent" => parse_stored(&row.body).map(|a| agents.push((row.id.clone(), a))),
            "model" => parse_stored(&row.body).map(|m| models.push(m)),
            _ => Ok(()),
        };
        if let Err(e) = parsed {
            skipped.push(format!("{} {}: {e}", row.kind, row.id));
        }
    }
    OperatorConfig {
        catalog: crate::catalog::Catalog::builtin().with_overrides(models),
        rules: crate::routing::CompiledRules::compile(rules),
        agents,
        skipped,
    }
}

/// A title for a conversation from its first message: the first line, at most 80 characters.
pub fn title_from(content: &str) -> String {
    let line = content
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let mut t = crate::text::prefix_chars(line, 80).to_string();
    if t.len() < line.len() {
        t.push('…');
    }
    t
}

/// A stored message as the history API serves it.
pub fn message_json(
    id: &str,
    conversation: &str,
    role: &str,
    content: &str,
    metadata: &str,
    created_at: f64,
) -> serde_json::Value {
    let metadata: serde_json::Value = serde_json::from_str(metadata).unwrap_or_default();
    serde_json::json!({ "id": id, "conversationId": conversation, "role": role, "content": content, "metadata": metadata, "createdAt": created_at })
}

/// The history: D1's messages, then those the conversation still holds that D1 lacks (a copy
/// not yet made or failed), each once, in the order they were kept; these carry `held: true`.
pub fn merge_history(
    copied: Vec<serde_json::Value>,
    held: Vec<serde_json::Value>,
) -> Vec<serde_json::Value> {
    let ids: std::collections::HashSet<String> = copied
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    let mut out = copied;
    out.extend(
        held.into_iter()
            .filter(|m| m["id"].as_str().is_some_and(|id| !ids.contains(id)))
            .map(|mut m| {
                m["held"] = serde_json::Value::Bool(true);
                m
            }),
    );
    out
}

/// SQL statements, with `?N` parameters in the order their comment gives.
/// The live-registry key of a socket.io connection object (`sio:<sid>`), listed so the admin's
/// reload reaches it; conversation ids are UUIDs or client ids, which the fan-out tells apart by
/// this prefix.
pub const CONNECTION_ROW_PREFIX: &str = "sio:";

pub mod sql {
    /// ?1 token_hash
    pub const TOKEN_BY_HASH: &str = "SELECT token_hash, user_id, name, created_at, expires_at, revoked_at FROM api_tokens WHERE token_hash = ?1";
    /// ?1 token_hash, ?2 user_id, ?3 name, ?4 created_at, ?5 expires_at
    pub const INSERT_TOKEN: &str = "INSERT INTO api_tokens (token_hash, user_id, name, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)";
    /// ?1 name or hash, ?2 now
    pub const REVOKE_TOKEN: &str = "UPDATE api_tokens SET revoked_at = ?2 WHERE (name = ?1 OR token_hash = ?1) AND revoked_at IS NULL RETURNING token_hash";
    /// Every token, newest first.
    pub const LIST_TOKENS: &str = "SELECT token_hash, user_id, name, created_at, expires_at, revoked_at FROM api_tokens ORDER BY created_at DESC";

    /// ?1 id
    pub const CONVERSATION_OWNER: &str = "SELECT owner_id FROM conversations WHERE id = ?1";
    /// ?1 id, ?2 owner, ?3 title, ?4 now — creates the row if new; the owner never changes.
    pub const ENSURE_CONVERSATION: &str =
        "INSERT INTO conversations (id, owner_id, title, session_id, created_at, updated_at) VALUES (?1, ?2, ?3, ?1, ?4, ?4) ON CONFLICT(id) DO NOTHING";
    /// ?1 id, ?2 session_state JSON, ?3 now
    pub const SAVE_SESSION: &str =
        "UPDATE conversations SET session_state = ?2, updated_at = ?3 WHERE id = ?1";
    /// ?1 owner
    pub const LIST_CONVERSATIONS: &str =
        "SELECT id, owner_id, title, session_id, created_at, updated_at FROM conversations WHERE owner_id = ?1 ORDER BY updated_at DESC, created_at DESC LIMIT 200";

    /// ?1 id, ?2 conversation, ?3 role, ?4 content, ?5 metadata, ?6 created_at — seq continues the
    /// conversation's order; a second copy of the same id is ignored.
    pub const INSERT_MESSAGE: &str = "INSERT OR IGNORE INTO messages (id, conversation_id, role, content, metadata, created_at, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, (SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE conversation_id = ?2))";
    /// ?1 id, ?2 conversation, ?3 owner, ?4 content, ?5 metadata, ?6 created_at — stores nothing
    /// unless ?3 owns the conversation, so the owner check rides in the same round trip; a second
    /// copy of the same id is ignored.
    pub const INSERT_USER_MESSAGE: &str = "INSERT OR IGNORE INTO messages (id, conversation_id, role, content, metadata, created_at, seq) SELECT ?1, ?2, 'user', ?4, ?5, ?6, (SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE conversation_id = ?2) WHERE EXISTS (SELECT 1 FROM conversations WHERE id = ?2 AND owner_id = ?3)";
    /// ?1 conversation, ?2 now
    pub const TOUCH_CONVERSATION: &str = "UPDATE conversations SET updated_at = ?2 WHERE id = ?1";
    /// ?1 conversation
    pub const LIST_MESSAGES: &str =
        "SELECT id, conversation_id, role, content, metadata, created_at FROM messages WHERE conversation_id = ?1 ORDER BY seq ASC";

    /// ?1 conversation, ?2 now, ?3 sockets, ?4 turning (0/1)
    pub const REGISTER_LIVE: &str = "INSERT INTO live_conversations (conversation_id, since, sockets, turning) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(conversation_id) DO UPDATE SET sockets = ?3, turning = ?4";
    /// ?1 conversation
    pub const UNREGISTER_LIVE: &str = "DELETE FROM live_conversations WHERE conversation_id = ?1";
    /// Every live conversation.
    pub const LIST_LIVE: &str = "SELECT conversation_id FROM live_conversations";
    /// Live figures for admin stats.
    pub const LIVE_TOTALS: &str = "SELECT COALESCE(SUM(CASE WHEN conversation_id LIKE 'sio:%' THEN 0 ELSE 1 END), 0) AS conversations, COALESCE(SUM(sockets), 0) AS sockets, COALESCE(SUM(turning), 0) AS turns FROM live_conversations";

    /// Routing rules, enabled or not.
    pub const LIST_RULES: &str = "SELECT id, rule FROM routing_rules ORDER BY priority, name";
    /// ?1 id, ?2 name, ?3 priority, ?4 enabled, ?5 rule JSON, ?6 now
    pub const UPSERT_RULE: &str = "INSERT INTO routing_rules (id, name, priority, enabled, rule, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT(id) DO UPDATE SET name = ?2, priority = ?3, enabled = ?4, rule = ?5, updated_at = ?6";
    /// ?1 id
    pub const DELETE_RULE: &str = "DELETE FROM routing_rules WHERE id = ?1 OR name = ?1";

    /// ?1 id, ?2 name, ?3 config JSON, ?4 now
    pub const UPSERT_AGENT: &str = "INSERT INTO agent_configs (id, name, config, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT(id) DO UPDATE SET name = ?2, config = ?3, updated_at = ?4";
    /// ?1 id or name
    pub const DELETE_AGENT: &str = "DELETE FROM agent_configs WHERE id = ?1 OR name = ?1";

    /// ?1 provider, ?2 model id, ?3 info JSON, ?4 now
    pub const UPSERT_MODEL: &str = "INSERT INTO model_catalog (provider, model_id, info, updated_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(provider, model_id) DO UPDATE SET info = ?3, updated_at = ?4";

    /// Rules, agents and catalog rows in one round trip, as (kind, id, body).
    pub const OPERATOR_CONFIG: &str = "SELECT 'rule' AS kind, id, rule AS body FROM routing_rules UNION ALL SELECT 'agent' AS kind, id, config AS body FROM agent_configs UNION ALL SELECT 'model' AS kind, provider || '/' || model_id AS id, info AS body FROM model_catalog";

    /// Totals for admin stats.
    pub const TOTALS: &str = "SELECT (SELECT COUNT(*) FROM conversations) AS conversations, (SELECT COUNT(*) FROM messages) AS messages, (SELECT COALESCE(SUM(CAST(json_extract(metadata, '$.tokenUsage.total') AS INTEGER)), 0) FROM messages WHERE role = 'assistant') AS tokens";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_adds_what_the_conversation_holds_and_d1_lacks_once() {
        let m = |id: &str| message_json(id, "c", "user", "x", "{\"a\":1}", 1.0);
        let merged = merge_history(vec![m("1"), m("2")], vec![m("2"), m("3")]);
        let ids: Vec<&str> = merged.iter().map(|v| v["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["1", "2", "3"]);
        let held: Vec<bool> = merged.iter().map(|v| v["held"] == true).collect();
        assert_eq!(held, [false, false, true], "only what D1 lacks is marked");
        assert_eq!(merged[0]["metadata"]["a"], 1);
        assert_eq!(merged[0]["conversationId"], "c");
    }

    #[test]
    fn small_content_is_stored_as_is() {
        let (c, cut) = fit_content("hello");
        assert_eq!((c.as_ref(), cut), ("hello", false));
    }

    #[test]
    fn oversized_content_is_cut_with_a_marker_on_a_char_boundary() {
        let big = "é".repeat(MAX_STORED_CONTENT_BYTES);
        let (c, cut) = fit_content(&big);
        assert!(cut);
        assert!(c.len() <= MAX_STORED_CONTENT_BYTES);
        assert!(c.ends_with(&format!("of {} bytes stored]", big.len())));
    }

    #[test]
    fn operator_rows_build_rules_agents_and_models() {
        let row = |kind: &str, id: &str, body: serde_json::Value| OperatorRow {
            kind: kind.into(),
            id: id.into(),
            body: body.to_string(),
        };
        let rows = vec![
            row(
                "rule",
                "r1",
                serde_json::json!({"name": "code", "conditions": {"keywords": ["rust"]}, "provider": "openai", "model": "gpt-4o", "reason": "code"}),
            ),
            row(
                "agent",
                "a1",
                serde_json::json!({"name": "helper", "systemPrompt": "Be brief."}),
            ),
            row(
                "model",
                "openai/my-model",
                serde_json::json!({"provider": "openai", "id": "my-model", "contextWindow": 1000, "maxOutput": 100, "prices": null, "reasoning": false, "thinkingLevels": ["off"]}),
            ),
            OperatorRow {
                kind: "rule".into(),
                id: "bad".into(),
                body: "{not json".into(),
            },
        ];
        let c = operator_config(rows);
        assert_eq!(c.rules.len(), 1);
        assert_eq!(c.rules.rules().next().unwrap().id.as_deref(), Some("r1"));
        assert_eq!(c.agents[0].1.name, "helper");
        assert!(c.catalog.lookup(Some("openai"), "my-model").is_some());
        assert_eq!(c.skipped.len(), 1);
        assert!(c.skipped[0].starts_with("rule bad"));
    }

    #[test]
    fn titles_come_from_the_first_line() {
        assert_eq!(title_from("\n  Hello there \nmore"), "Hello there");
        assert_eq!(title_from(&"x".repeat(100)).chars().count(), 81);
    }
}
