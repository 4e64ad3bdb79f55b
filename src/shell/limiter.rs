//! The per-user rate limit across conversations: a fixed set of shard Durable Objects, each holding its users' GCRA states in memory and, written in coalesced batches, in its own storage, so the limit spans every conversation of a user and survives eviction.
//!
//! Shards rather than one object per user: a user's first event after a while would otherwise
//! create (and store) an object of its own on the turn's critical path, while a few shards stay
//! warm and commit many users' states in one write.

use crate::rate::{Admission, Gcra, ShardState};
use serde::Deserialize;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;
use worker::*;

/// Shards users are spread over (by a hash of the user id).
const SHARDS: u32 = 16;
/// How long admitted events wait to be written together.
const WRITE_COALESCE_MS: u64 = 200;
/// Users whose state is kept in memory per shard; beyond it, fully refilled ones are dropped.
const MEMORY_USERS: usize = 10_000;

/// Answers `/admit?user=U&limit=N` with `{"ok": true}` or `{"ok": false, "retryAfterMs": ms}`.
#[durable_object]
pub struct RateLimit {
    state: State,
    shared: Rc<Shard>,
}

/// A shard's state, shared with its pending write.
struct Shard {
    users: RefCell<ShardState>,
    /// This instance created (or found) the table.
    table_ready: Cell<bool>,
}

impl DurableObject for RateLimit {
    fn new(state: State, _env: Env) -> Self {
        RateLimit {
            state,
            shared: Rc::new(Shard {
                users: RefCell::new(ShardState::default()),
                table_ready: Cell::new(false),
            }),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let mut user = None;
        let mut limit = 60u32;
        for (k, v) in crate::http::query_pairs(&req.inner().url()) {
            match k.as_str() {
                "user" => user = Some(v),
                "limit" => limit = v.parse().unwrap_or(limit),
                _ => {}
            }
        }
        let Some(user) = user else {
            return super::json_response(400, &serde_json::json!({ "error": "user is required" }));
        };
        let known = self.shared.users.borrow().known(&user);
        let gcra = match known {
            Some(g) => g,
            None => self.read(&user),
        };
        if req.path() == "/warm" {
            // A socket of this user attached: have the state in memory before its first event.
            self.shared.users.borrow_mut().warm(user, gcra);
            return super::json_response(200, &serde_json::json!({ "ok": true }));
        }
        let now = super::now_ms();
        let (admission, schedule_write) =
            self.shared
                .users
                .borrow_mut()
                .admit(user, gcra, now, limit, MEMORY_USERS);
        if schedule_write {
            self.schedule_write();
        }
        let answer = match admission {
            Admission::Admitted => serde_json::json!({ "ok": true }),
            Admission::Refused { retry_after_ms } => {
                serde_json::json!({ "ok": false, "retryAfterMs": retry_after_ms })
            }
        };
        super::json_response(200, &answer)
    }
}

impl RateLimit {
    /// A user's stored state (a user never seen, or fully refilled, has none).
    ///
    /// Reads only: the table is created by the first write, off every answer's path, so a
    /// shard's first answer does not wait for a commit. A read that fails admits (logged).
    fn read(&self, user: &str) -> Gcra {
        #[derive(Deserialize)]
        struct Row {
            tat: f64,
        }
        let rows: Result<Vec<Row>> = self
            .state
            .storage()
            .sql()
            .exec("SELECT tat FROM gcra WHERE user = ?", vec![user.into()])
            .and_then(|c| c.to_array());
        match rows {
            Ok(rows) => Gcra {
                tat: rows.first().map_or(0, |r| r.tat as i64),
            },
            Err(e) => {
                if self.shared.table_ready.get() {
                    console_error!("reading the rate limit: {e}");
                }
                Gcra::default()
            }
        }
    }

    /// Schedules the write of the states admitted from now to `WRITE_COALESCE_MS` later, in
    /// one commit, off every answer's path. What that risks: a crash within those 200 ms
    /// forgets the events admitted in them; an eviction (after idleness) forgets nothing.
    fn schedule_write(&self) {
        let sql = self.state.storage().sql();
        let shard = self.shared.clone();
        wasm_bindgen_futures::spawn_local(async move {
            Delay::from(Duration::from_millis(WRITE_COALESCE_MS)).await;
            let dirty = shard.users.borrow_mut().take_dirty();
            if !shard.table_ready.get() {
                let created = sql.exec(
                    "CREATE TABLE IF NOT EXISTS gcra (user TEXT PRIMARY KEY, tat INTEGER NOT NULL)",
                    None,
                );
                if let Err(e) = created {
                    console_error!("storing the rate limit: {e}");
                    return;
                }
                shard.table_ready.set(true);
            }
            for (user, tat) in dirty {
                if let Err(e) = sql.exec(
                    "INSERT OR REPLACE INTO gcra (user, tat) VALUES (?, ?)",
                    vec![user.into(), (tat as f64).into()],
                ) {
                    console_error!("storing the rate limit: {e}");
                }
            }
            // Rows fully refilled are the same as no row: keep the table to active users.
            let _ = sql.exec(
                "DELETE FROM gcra WHERE tat <= ?",
                vec![(super::now_ms() as f64).into()],
            );
        });
    }
}

/// The shard object holding `user`'s limiter.
fn shard_stub(env: &Env, user: &str) -> Result<Stub> {
    env.durable_object("RATE_LIMIT")?
        .id_from_name(&format!("shard-{}", crate::rate::shard_of(user, SHARDS)))?
        .get_stub()
}

/// Asks the user's limiter to load the user's state, so that the first event does not wait
/// for it (called, not awaited, when a socket of the user attaches).
pub async fn warm(env: &Env, user: &str) {
    let call = async {
        let url = crate::http::with_query("https://rate-limit/warm", &[("user", user)]);
        shard_stub(env, user)?.fetch_with_str(&url).await
    };
    if let Err(e) = call.await {
        console_warn!("warming the rate limiter: {e}");
    }
}

/// Asks the user's limiter to admit one event: `Ok` or the ms until one is admitted.
///
/// A limiter that cannot be reached admits (logged): the limit protects the gateway's
/// resources, and an outage of it must not stop every conversation.
pub async fn admit(env: &Env, user: &str, per_minute: u32) -> std::result::Result<(), i64> {
    let call = async {
        let stub = shard_stub(env, user)?;
        let limit = per_minute.to_string();
        let url = crate::http::with_query(
            "https://rate-limit/admit",
            &[("user", user), ("limit", &limit)],
        );
        let mut resp = stub.fetch_with_str(&url).await?;
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
