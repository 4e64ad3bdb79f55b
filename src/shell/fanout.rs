//! The fan-out to live objects: the invocation that read the live registry hands its rows to shard objects (`FanOutShard`, a fresh one per slice), each calling at most `FANOUT_SHARD_SIZE` conversation and connection objects, so no invocation passes the platform's subrequest limit.

use crate::fanout::{self, Action, FanOut, ShardTask, Step, Target};
use futures::stream::{self, StreamExt};
use serde_json::Value;
use worker::*;

/// Calls (to objects or shards) one invocation has in flight at once.
const CONCURRENCY: usize = 32;

/// Runs `action` on every object that `rows` (the live registry, as read) names, through shards.
pub async fn from_registry(
    env: &Env,
    limit: usize,
    action: Action,
    body: Option<String>,
    rows: Vec<String>,
) -> FanOut {
    let task = ShardTask { action, body, rows };
    run(env, limit, task, true).await
}

/// One invocation's part: calls its rows' objects, or hands slices of them to shards of its own.
async fn run(env: &Env, limit: usize, task: ShardTask, root: bool) -> FanOut {
    let ShardTask { action, body, rows } = task;
    let mut tally = FanOut::default();
    match fanout::step(rows, limit, root) {
        Step::Call(rows) => {
            let answers: Vec<Option<Value>> = stream::iter(
                rows.iter()
                    .map(|row| call_object(env, Target::of_row(row), action, body.clone())),
            )
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
            for answer in &answers {
                tally.add_object(answer.as_ref());
            }
        }
        Step::Delegate(slices) => {
            let answers: Vec<(Option<FanOut>, usize)> =
                stream::iter(slices.into_iter().map(|rows| {
                    let count = rows.len();
                    let task = ShardTask {
                        action,
                        body: body.clone(),
                        rows,
                    };
                    async move { (call_shard(env, &task).await, count) }
                }))
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            for (answer, rows) in answers {
                tally.add_shard(answer, rows);
            }
        }
    }
    tally
}

/// Calls one live object's route for `action`; `None` when it did not answer.
async fn call_object(
    env: &Env,
    target: Target<'_>,
    action: Action,
    body: Option<String>,
) -> Option<Value> {
    match target {
        Target::Conversation(id) => {
            super::admin::call_object(env, id, action.route(), Method::Post, body)
                .await
                .map_err(|e| console_warn!("fan-out to conversation {id}: {e}"))
                .ok()
        }
        Target::Connection(sid) => call_connection(env, sid, action.route(), body).await,
    }
}

/// Calls a socket.io connection object's internal route; `None` when it did not answer.
async fn call_connection(env: &Env, sid: &str, route: &str, body: Option<String>) -> Option<Value> {
    let stub = super::gateway::connection_stub(env, sid).ok()?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post);
    if let Some(b) = body {
        init.with_body(Some(b.into()));
    }
    let req = Request::new_with_init(&format!("https://connection/{route}"), &init).ok()?;
    let mut resp = stub.fetch_with_request(req).await.ok()?;
    if resp.status_code() == 400 {
        // Gone (its object restarted): a stale row.
        return Some(serde_json::json!({ "sockets": 0, "failed": 0 }));
    }
    resp.json().await.ok()
}

/// Hands a slice to a fresh shard object: one request per object, so each slice has an
/// invocation, and its subrequest budget, to itself. `None` when it did not answer.
async fn call_shard(env: &Env, task: &ShardTask) -> Option<FanOut> {
    let answer = async {
        let stub = env.durable_object("FANOUT")?.unique_id()?.get_stub()?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_body(Some(serde_json::to_string(task)?.into()));
        let req = Request::new_with_init("https://fanout/run", &init)?;
        let mut resp = stub.fetch_with_request(req).await?;
        if resp.status_code() != 200 {
            return Err(Error::RustError(format!(
                "answered {}: {}",
                resp.status_code(),
                resp.text().await.unwrap_or_default()
            )));
        }
        resp.json::<FanOut>().await
    };
    answer
        .await
        .map_err(|e| console_warn!("fan-out shard of {} rows: {e}", task.rows.len()))
        .ok()
}

/// A shard of a fan-out: given one slice of the live registry (a [`ShardTask`]), it calls the
/// slice's objects, or splits it further when it holds more than a shard's worth, and answers
/// with what it reached (a [`FanOut`]). It keeps no state.
#[durable_object]
pub struct FanOutShard {
    env: Env,
}

impl DurableObject for FanOutShard {
    fn new(_state: State, env: Env) -> Self {
        FanOutShard { env }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let limit = match super::load_config(&self.env) {
            Ok(config) => config.fanout_shard_size,
            Err(e) => {
                return super::json_response(500, &serde_json::json!({ "error": e.to_string() }))
            }
        };
        let task: ShardTask = match serde_json::from_str(&req.text().await?) {
            Ok(task) => task,
            Err(e) => {
                let error = format!("not a fan-out task: {e}");
                return super::json_response(400, &serde_json::json!({ "error": error }));
            }
        };
        let tally = run(&self.env, limit, task, false).await;
        super::json_text(200, serde_json::to_string(&tally)?)
    }
}
