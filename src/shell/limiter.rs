//! The per-user rate limiter: one Durable Object per user, holding that user's GCRA state in its own storage so the limit spans every conversation and survives eviction.

use crate::rate::{Admission, Gcra};
use serde::Deserialize;
use std::cell::Cell;
use worker::*;

/// Answers `POST /admit?limit=N` with `{"ok": true}` or `{"ok": false, "retryAfterMs": ms}`.
#[durable_object]
pub struct RateLimit {
    state: State,
    /// The stored state, read once per instance.
    gcra: Cell<Option<Gcra>>,
}

impl DurableObject for RateLimit {
    fn new(state: State, _env: Env) -> Self {
        RateLimit {
            state,
            gcra: Cell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let limit: u32 = req
            .url()?
            .query_pairs()
            .find(|(k, _)| k == "limit")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(60);
        let mut gcra = match self.gcra.get() {
            Some(g) => g,
            None => self.read()?,
        };
        let answer = match gcra.admit(super::now_ms(), limit) {
            Admission::Admitted => {
                // One row write per admitted event; a refusal writes nothing, so a flood costs
                // at most the limit's worth of writes a minute.
                self.state.storage().sql().exec(
                    "INSERT OR REPLACE INTO gcra (k, tat) VALUES ('tat', ?)",
                    vec![(gcra.tat as f64).into()],
                )?;
                serde_json::json!({ "ok": true })
            }
            Admission::Refused { retry_after_ms } => {
                serde_json::json!({ "ok": false, "retryAfterMs": retry_after_ms })
            }
        };
        self.gcra.set(Some(gcra));
        super::json_response(200, &answer)
    }
}

impl RateLimit {
    fn read(&self) -> Result<Gcra> {
        #[derive(Deserialize)]
        struct Row {
            tat: f64,
        }
        let sql = self.state.storage().sql();
        sql.exec(
            "CREATE TABLE IF NOT EXISTS gcra (k TEXT PRIMARY KEY, tat INTEGER NOT NULL)",
            None,
        )?;
        let rows: Vec<Row> = sql.exec("SELECT tat FROM gcra", None)?.to_array()?;
        Ok(Gcra {
            tat: rows.first().map_or(0, |r| r.tat as i64),
        })
    }
}

/// Asks the user's limiter to admit one event: `Ok` or the ms until one is admitted.
///
/// A limiter that cannot be reached admits (logged): the limit protects the gateway's
/// resources, and an outage of it must not stop every conversation.
pub async fn admit(env: &Env, user: &str, per_minute: u32) -> std::result::Result<(), i64> {
    let call = async {
        let stub = env
            .durable_object("RATE_LIMIT")?
            .id_from_name(user)?
            .get_stub()?;
        let mut resp = stub
            .fetch_with_str(&format!("https://rate-limit/admit?limit={per_minute}"))
            .await?;
        resp.json::<serde_json::Value>().await
    };
    match call.await {
        Ok(v) if v["ok"] == serde_json::Value::Bool(false) => {
            Err(v["retryAfterMs"].as_i64().unwrap_or(1000).max(1))
        }
        Ok(_) => Ok(()),
        Err(e) => {
            console_error!("rate limiter unreachable, admitting: {e}");
            Ok(())
        }
    }
}
