//! MCP's Streamable HTTP transport for the pure client (`crate::mcp`): each POST the exchange asks for goes out over `fetch`, its answer is read as it arrives (an event stream only until the response), and the whole exchange is bounded by a timeout and the turn's abort signal, both of which abort its fetch.

use super::body::{read_bounded, BodyReader};
use crate::agents::McpServer;
use crate::mcp::{
    Answer, AnswerReader, Exchange, McpError, Next, Operation, Outcome, Post, Session,
    MAX_ANSWER_BYTES,
};
use futures::StreamExt;
use worker::{AbortSignal, Fetch, Headers, Method, Request, RequestInit, ResponseBody};

/// Bytes of a failed status's body kept for the error text.
const STATUS_TEXT_BYTES: usize = 512;

/// Runs `operation` with `server`, starting from `session`. Gives the session as the exchange
/// left it (`None` when it did not finish: the caller keeps what it had) and the outcome.
pub async fn exchange(
    server: &McpServer,
    session: Session,
    operation: Operation,
    signal: &AbortSignal,
    timeout_ms: u64,
) -> (Option<Session>, Result<Outcome, McpError>) {
    let run = |signal: AbortSignal| async move {
        let mut exchange = Exchange::new(server, session, operation);
        let outcome = loop {
            match exchange.poll() {
                Some(Next::Post(post)) => {
                    let answer = send(&server.url, &post, &signal).await;
                    exchange.answered(answer);
                }
                Some(Next::Done(outcome)) => break outcome,
                // Every answer leads to a next step; this only guards the loop.
                None => break Err(McpError::Protocol("the exchange stopped".into())),
            }
        };
        (Some(exchange.into_session()), outcome)
    };
    super::within(signal, timeout_ms, run)
        .await
        .unwrap_or((None, Err(McpError::Timeout(timeout_ms))))
}

/// POSTs one message and reads what answers it.
async fn send(url: &str, post: &Post, signal: &AbortSignal) -> Answer {
    let headers = Headers::new();
    for (name, value) in &post.headers {
        if headers.set(name, value).is_err() {
            let why = format!("header {name} has a value fetch cannot send");
            return Answer::Failed(McpError::Protocol(why));
        }
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(post.body.as_str().into()));
    let req = match Request::new_with_init(url, &init) {
        Ok(req) => req,
        Err(e) => return Answer::Failed(McpError::Unreachable(format!("bad request: {e}"))),
    };
    let mut resp = match Fetch::Request(req).send_with_signal(signal).await {
        Ok(resp) => resp,
        Err(e) => return Answer::Failed(McpError::Unreachable(e.to_string())),
    };
    let status = resp.status_code();
    if !(200..300).contains(&status) {
        let text = read_bounded(&mut resp, STATUS_TEXT_BYTES)
            .await
            .map(|body| body.text().trim().to_string())
            .unwrap_or_default();
        return Answer::Status { status, text };
    }
    let Some(id) = post.id else {
        // A notification: nothing in the answer is needed (its body, normally none, is dropped).
        return Answer::Accepted;
    };
    let header = |name: &str| resp.headers().get(name).ok().flatten();
    let session_id = header("mcp-session-id");
    let content_type = header("content-type").unwrap_or_default();
    let mut reader = match AnswerReader::new(&content_type, id, MAX_ANSWER_BYTES) {
        Ok(reader) => reader,
        Err(e) => return Answer::Failed(e),
    };
    let found = match resp.body() {
        ResponseBody::Stream(stream) => {
            let mut body = BodyReader::new(stream.as_ref());
            let mut found = None;
            while let Some(chunk) = body.next().await {
                found = match chunk {
                    Ok(bytes) => reader.push(&bytes),
                    Err(e) => Some(Err(McpError::Unreachable(format!(
                        "the answer broke off: {e}"
                    )))),
                };
                if found.is_some() {
                    // Dropping the reader cancels the rest: an event stream the server keeps open.
                    break;
                }
            }
            found
        }
        ResponseBody::Body(bytes) => reader.push(bytes),
        ResponseBody::Empty => None,
    };
    match found.unwrap_or_else(|| reader.finish()) {
        Ok(message) => Answer::Response {
            session_id,
            message,
        },
        Err(e) => Answer::Failed(e),
    }
}
