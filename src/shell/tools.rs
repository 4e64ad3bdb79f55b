//! Runs an HTTP tool: POST the arguments as JSON, bounded by a timeout and the turn's abort signal.

use super::body::{lossy_text, read_bounded};
use crate::agents::HttpTool;
use futures::future::{select, Either};
use std::time::Duration;
use worker::{AbortSignal, Delay, Fetch, Headers, Method, Request, RequestInit};

/// Largest tool result read and handed to the model; reading stops there, with a marker.
const MAX_RESULT_BYTES: usize = 256 * 1024;

/// The tool's answer as text, and whether it is an error the model should see as one.
pub async fn run(
    tool: &HttpTool,
    arguments: &str,
    signal: &AbortSignal,
    timeout_ms: u64,
) -> (String, bool) {
    let args = if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    };
    if serde_json::from_str::<serde_json::Value>(args).is_err() {
        return (
            format!("tool {}: the arguments are not valid JSON", tool.name),
            true,
        );
    }
    let headers = Headers::new();
    let _ = headers.set("content-type", "application/json");
    if let Some(secret) = &tool.secret {
        let _ = headers.set("authorization", &format!("Bearer {secret}"));
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(args.into()));
    let req = match Request::new_with_init(&tool.url, &init) {
        Ok(r) => r,
        Err(e) => return (format!("tool {}: bad request: {e}", tool.name), true),
    };
    let call = async {
        let mut resp = Fetch::Request(req)
            .send_with_signal(signal)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status_code();
        let body = read_bounded(&mut resp, MAX_RESULT_BYTES).await?;
        Ok::<_, String>((status, body))
    };
    match select(
        Box::pin(call),
        Delay::from(Duration::from_millis(timeout_ms)),
    )
    .await
    {
        Either::Left((Ok((status, body)), _)) => {
            let mut text = lossy_text(&body.bytes);
            if body.truncated {
                text.push_str(&format!(
                    "\n[truncated by the gateway: the first {} bytes of a longer answer]",
                    body.bytes.len()
                ));
            }
            if (200..300).contains(&status) {
                (text, false)
            } else {
                (
                    format!("tool {} answered HTTP {status}: {text}", tool.name),
                    true,
                )
            }
        }
        Either::Left((Err(e), _)) => (format!("tool {} failed: {e}", tool.name), true),
        Either::Right(_) => (
            format!("tool {} timed out after {timeout_ms} ms", tool.name),
            true,
        ),
    }
}
