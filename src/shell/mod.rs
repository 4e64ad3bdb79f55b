//! Workers glue: the fetch entry point, HTTP helpers and D1 access; everything here does I/O and nothing else.

mod admin;
mod body;
mod connection;
mod db;
mod fanout;
mod gateway;
pub(crate) mod limiter;
mod login;
mod mcp;
mod room;
mod tools;
mod upstream;

use crate::config::Config;
use crate::error::ApiError;
use worker::{event, Context, Env, Headers, Request, Response, Result};

/// Reads the configuration from vars and secrets.
pub fn load_config(env: &Env) -> std::result::Result<Config, crate::config::ConfigError> {
    Config::from_lookup(|name| {
        env.secret(name)
            .map(|s| s.to_string())
            .or_else(|_| env.var(name).map(|v| v.to_string()))
            .ok()
    })
}

/// Runs once when the module is instantiated, before any request.
#[wasm_bindgen::prelude::wasm_bindgen(start, private)]
fn start() {
    futures_on_promise_jobs();
}

/// Makes the futures executor schedule its runs as promise reactions, not `queueMicrotask` calls.
///
/// Both run before the runtime's next I/O event, but workerd's `queueMicrotask` wraps each
/// callback in a new host function (allocated, then finalised by the garbage collector), and the
/// executor schedules a run for nearly every delta. The executor picks its scheduler once, when
/// its queue is created, by looking for `queueMicrotask` on the global object, so the name is
/// shadowed while the queue is created here and put back as it was right after.
fn futures_on_promise_jobs() {
    use js_sys::{Object, Reflect};
    use wasm_bindgen::{JsCast, JsValue};
    let global: Object = js_sys::global();
    let key = JsValue::from_str("queueMicrotask");
    let own = Object::get_own_property_descriptor(&global, &key);
    if !Reflect::set(&global, &key, &JsValue::UNDEFINED).unwrap_or(false) {
        return;
    }
    wasm_bindgen_futures::spawn_local(async {});
    if own.is_undefined() {
        let _ = Reflect::delete_property(&global, &key);
    } else {
        Object::define_property(&global, &key, own.unchecked_ref());
    }
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let config = match load_config(&env) {
        Ok(c) => c,
        Err(e) => return error_response(&ApiError::Internal(e.to_string())),
    };
    let cors = cors_origin(&req, &config);
    let polling = req.path().starts_with("/socket.io");
    let mut resp = match gateway::route(req, &env, &config).await {
        Ok(r) => r,
        Err(e) => error_response(&e)?,
    };
    if let Some(origin) = cors {
        // Upgrade responses carry a socket and immutable headers; CORS is for the HTTP API only.
        if resp.status_code() != 101 {
            let h = resp.headers_mut();
            let _ = h.set("access-control-allow-origin", &origin);
            let _ = h.set("vary", "origin");
            if polling {
                // socket.io-client polls with `withCredentials` from a page on another origin.
                let _ = h.set("access-control-allow-credentials", "true");
            }
        }
    }
    Ok(resp)
}

/// The origin to echo in CORS headers, when the request has an allowed one.
fn cors_origin(req: &Request, config: &Config) -> Option<String> {
    let path = req.path();
    if !(path.starts_with("/api/") || path.starts_with("/admin/") || path.starts_with("/socket.io"))
    {
        return None;
    }
    let origin = req.headers().get("origin").ok().flatten()?;
    config.origin_allowed(&origin).then_some(origin)
}

/// A JSON response with a status.
pub fn json_response(status: u16, body: &serde_json::Value) -> Result<Response> {
    json_text(status, body.to_string())
}

/// A response whose body is JSON text already.
pub fn json_text(status: u16, body: String) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json; charset=utf-8")?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::ok(body)?
        .with_status(status)
        .with_headers(headers))
}

/// The response for a refused request.
pub fn error_response(e: &ApiError) -> Result<Response> {
    json_text(e.status(), e.body())
}

/// Runs `call` with a signal that fires when `turn` does, or after `timeout_ms`; `None` when the
/// time ran out. The deadline aborts the call's fetches (closing their connections), not only
/// the wait for them.
pub async fn within<T, F>(
    turn: &worker::AbortSignal,
    timeout_ms: u64,
    call: impl FnOnce(worker::AbortSignal) -> F,
) -> Option<T>
where
    F: std::future::Future<Output = T>,
{
    use futures::future::{select, Either};
    let deadline = worker::AbortController::default();
    let signals = js_sys::Array::of2(turn, &deadline.signal());
    let signal = worker::AbortSignal::from(web_sys::AbortSignal::any(&signals));
    let timer = worker::Delay::from(std::time::Duration::from_millis(timeout_ms));
    match select(Box::pin(call(signal)), timer).await {
        Either::Left((done, _)) => Some(done),
        Either::Right(_) => {
            deadline.abort();
            None
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    // Date.now(): one call into JavaScript, no Date object (it runs per delta).
    js_sys::Date::now() as i64
}

/// The current time as ISO 8601.
pub fn now_iso() -> String {
    js_sys::Date::new_0().to_iso_string().into()
}

/// A fresh UUID v4.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Maps a worker error to an internal API error, logging the detail.
pub fn internal(context: &str, e: impl std::fmt::Display) -> ApiError {
    worker::console_error!("{context}: {e}");
    ApiError::Internal(format!("{context} failed"))
}
