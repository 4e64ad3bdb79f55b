//! D1 execution of the statements in `store::sql`, with rows decoded into the core's types.

use crate::login::Grant;
use crate::routing::RoutingRule;
use crate::store::{self, sql, ConversationRow, MessageRow, TokenRow};
use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::{D1Database, Env, Result};

/// The database binding.
pub fn db(env: &Env) -> Result<D1Database> {
    env.d1("DB")
}

/// A text parameter.
pub fn text(s: &str) -> JsValue {
    JsValue::from_str(s)
}

/// A number parameter (D1 has no 64-bit integers; times fit in f64 exactly).
pub fn num(n: i64) -> JsValue {
    JsValue::from_f64(n as f64)
}

/// An optional number parameter.
pub fn opt_num(n: Option<i64>) -> JsValue {
    n.map(num).unwrap_or(JsValue::NULL)
}

/// Runs a statement that returns no rows.
pub async fn run(db: &D1Database, query: &str, params: &[JsValue]) -> Result<usize> {
    let meta = db.prepare(query).bind(params)?.run().await?.meta()?;
    Ok(meta.and_then(|m| m.changes).unwrap_or(0))
}

/// Runs a query and decodes every row.
pub async fn all<T: for<'de> Deserialize<'de>>(
    db: &D1Database,
    query: &str,
    params: &[JsValue],
) -> Result<Vec<T>> {
    db.prepare(query).bind(params)?.all().await?.results::<T>()
}

/// Runs a query and decodes the first row.
pub async fn first<T: for<'de> Deserialize<'de>>(
    db: &D1Database,
    query: &str,
    params: &[JsValue],
) -> Result<Option<T>> {
    db.prepare(query).bind(params)?.first::<T>(None).await
}

/// What a gateway token grants, when it is valid at `now`: its user, its SHA-256 (the handle a
/// revocation names it by) and its expiry.
pub async fn token_grant(db: &D1Database, token: &str, now: i64) -> Result<Option<Grant>> {
    let hash = crate::auth::token_hash(token);
    let row: Option<TokenRow> = first(db, sql::TOKEN_BY_HASH, &[text(&hash)]).await?;
    Ok(row
        .filter(|r| {
            crate::auth::token_usable(
                r.expires_at.map(|e| e as i64),
                r.revoked_at.map(|r| r as i64),
                now,
            )
        })
        .map(|r| Grant {
            user: r.user_id,
            token_hash: Some(r.token_hash),
            expires_at: r.expires_at.map(|e| e as i64),
        }))
}

#[derive(Deserialize)]
struct OwnerRow {
    owner_id: String,
}

/// The owner of a conversation, `None` when it does not exist yet.
pub async fn conversation_owner(db: &D1Database, id: &str) -> Result<Option<String>> {
    Ok(first::<OwnerRow>(db, sql::CONVERSATION_OWNER, &[text(id)])
        .await?
        .map(|r| r.owner_id))
}

/// The caller's conversations, newest first.
pub async fn list_conversations(db: &D1Database, owner: &str) -> Result<Vec<ConversationRow>> {
    #[derive(Deserialize)]
    struct Row {
        id: String,
        owner_id: String,
        title: Option<String>,
        session_id: Option<String>,
        created_at: f64,
        updated_at: f64,
    }
    let rows: Vec<Row> = all(db, sql::LIST_CONVERSATIONS, &[text(owner)]).await?;
    Ok(rows
        .into_iter()
        .map(|r| ConversationRow {
            id: r.id,
            owner_id: r.owner_id,
            title: r.title,
            session_id: r.session_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
        .collect())
}

/// A conversation's messages, oldest first.
pub async fn list_messages(db: &D1Database, conversation: &str) -> Result<Vec<MessageRow>> {
    #[derive(Deserialize)]
    struct Row {
        id: String,
        conversation_id: String,
        role: String,
        content: String,
        metadata: String,
        created_at: f64,
    }
    let rows: Vec<Row> = all(db, sql::LIST_MESSAGES, &[text(conversation)]).await?;
    Ok(rows
        .into_iter()
        .map(|r| MessageRow {
            id: r.id,
            conversation_id: r.conversation_id,
            role: r.role,
            content: r.content,
            metadata: r.metadata,
            created_at: r.created_at,
        })
        .collect())
}

/// Every routing rule row, parsed (rows that do not parse are reported, never fatal).
pub async fn routing_rules(db: &D1Database) -> Result<Vec<RoutingRule>> {
    #[derive(Deserialize)]
    struct Row {
        id: String,
        rule: String,
    }
    let rows: Vec<Row> = all(db, sql::LIST_RULES, &[]).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| match store::parse_rule(&r.id, &r.rule) {
            Ok(rule) => Some(rule),
            Err(e) => {
                worker::console_warn!("routing rule {} does not parse and is skipped: {e}", r.id);
                None
            }
        })
        .collect())
}

/// Rules, agents and catalog rows in one round trip; rows that do not parse are logged and left out.
pub async fn operator_config(db: &D1Database) -> Result<store::OperatorConfig> {
    let rows: Vec<store::OperatorRow> = all(db, sql::OPERATOR_CONFIG, &[]).await?;
    let config = store::operator_config(rows);
    for skipped in &config.skipped {
        worker::console_warn!("skipped a configuration row: {skipped}");
    }
    Ok(config)
}
