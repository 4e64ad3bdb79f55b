//! Runs an HTTP tool: POST the arguments as JSON, bounded by a timeout and the turn's abort signal (both abort the fetch).

use super::body::read_bounded;
use crate::agents::HttpTool;
use worker::{AbortSignal, Fetch, Headers, Method, Request, RequestInit};

/// Largest tool result read and handed to the model; reading stops there, with a marker.
const MAX_RESULT_BYTES: usize = 256 * 1024;

/// The tool's answer as text, and whether it is an error the model should see as one.
pub async fn run(
    tool: &HttpTool,
    arguments: &str,
    signal: &AbortSignal,
    timeout_ms: u64,
) -> (String, bool) {
    let body = match tool.request_body(arguments) {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let headers = Headers::new();
    for (name, value) in tool.request_headers() {
        let _ = headers.set(name, &value);
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(body.into()));
    let req = match Request::new_with_init(&tool.url, &init) {
        Ok(r) => r,
        Err(e) => return tool.failed(Some(&format!("bad request: {e}")), timeout_ms),
    };
    let call = |signal: AbortSignal| async move {
        let mut resp = Fetch::Request(req)
            .send_with_signal(&signal)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status_code();
        let body = read_bounded(&mut resp, MAX_RESULT_BYTES).await?;
        Ok::<_, String>((status, body))
    };
    match super::within(signal, timeout_ms, call).await {
        Some(Ok((status, body))) => tool.result(status, &body),
        Some(Err(e)) => tool.failed(Some(&e), timeout_ms),
        None => tool.failed(None, timeout_ms),
    }
}
