//! JSON-RPC 2.0 as MCP uses it: the requests the client sends, and the answer to one read from a JSON or SSE body, chunk by chunk, bounded.

use super::{McpError, PROTOCOL_VERSION};
use crate::conversation::ToolOutcome;
use crate::llm::sse::{SseDecoder, SseEvent};
use serde_json::{json, Value};

/// The gateway's name and version in `initialize`.
const CLIENT_NAME: &str = "edge-chat-gateway";
const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `initialize`: the protocol version the gateway speaks, no client capabilities.
pub fn initialize_request(id: u64) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": { "name": CLIENT_NAME, "version": CLIENT_VERSION },
        },
    })
    .to_string()
}

/// `notifications/initialized`, sent once `initialize` succeeded.
pub fn initialized_notification() -> String {
    json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }).to_string()
}

/// `tools/list`, from the first page or from `cursor`.
pub fn list_tools_request(id: u64, cursor: Option<&str>) -> String {
    let params = match cursor {
        Some(cursor) => json!({ "cursor": cursor }),
        None => json!({}),
    };
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/list", "params": params }).to_string()
}

/// `tools/call` of the server's tool `name`.
pub fn call_tool_request(id: u64, name: &str, arguments: &Value) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": { "name": name, "arguments": arguments },
    })
    .to_string()
}

/// The model's arguments as the `arguments` object of `tools/call` (`{}` when it sent none), or
/// the error result the model gets instead of a call.
pub fn call_arguments(exposed: &str, arguments: &str) -> Result<Value, ToolOutcome> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(args) if args.is_object() => Ok(args),
        _ => Err(ToolOutcome::text(
            format!("tool {exposed}: the arguments are not a JSON object"),
            true,
        )),
    }
}

/// The `result` of a JSON-RPC response, or its `error`.
pub(super) fn response_result(message: Value) -> Result<Value, McpError> {
    let Value::Object(mut message) = message else {
        return Err(McpError::Protocol(
            "a response that is not an object".into(),
        ));
    };
    if let Some(error) = message.remove("error") {
        return Err(McpError::Rpc {
            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .map(|m| crate::text::prefix_bytes(m, 1024).to_string())
                .unwrap_or_default(),
        });
    }
    message
        .remove("result")
        .ok_or_else(|| McpError::Protocol("a response without result or error".into()))
}

// Reading an answer

/// A JSON-RPC message that answers request `id`: a response (with `result` or `error`) carrying
/// that id, alone or in a batch. Notifications and the server's own requests are not answers.
fn answer_to(message: Value, id: u64) -> Option<Value> {
    let answers = |m: &Value| {
        m.get("id").and_then(Value::as_u64) == Some(id)
            && (m.get("result").is_some() || m.get("error").is_some())
    };
    match message {
        Value::Array(batch) => batch.into_iter().find(answers),
        m if answers(&m) => Some(m),
        _ => None,
    }
}

enum AnswerBody {
    Json(Vec<u8>),
    Sse {
        decoder: SseDecoder,
        events: Vec<SseEvent>,
    },
}

/// Reads the body of a successful answer to request `id`, chunk by chunk: a JSON body whole
/// (one response, or a batch holding it), an event stream until the event that carries the
/// response (the rest is not needed; the caller drops the body then). Bounded in bytes.
pub struct AnswerReader {
    id: u64,
    limit: usize,
    read: usize,
    body: AnswerBody,
}

impl AnswerReader {
    /// A reader for an answer of this `Content-Type`; any type but JSON or SSE is refused.
    pub fn new(content_type: &str, id: u64, limit: usize) -> Result<Self, McpError> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let body = match media.as_str() {
            "application/json" => AnswerBody::Json(Vec::new()),
            "text/event-stream" => AnswerBody::Sse {
                decoder: SseDecoder::new(),
                events: Vec::new(),
            },
            _ => {
                return Err(McpError::Protocol(format!(
                    "an answer of type \"{}\", not application/json or text/event-stream",
                    crate::text::prefix_bytes(content_type, 100)
                )))
            }
        };
        Ok(AnswerReader {
            id,
            limit,
            read: 0,
            body,
        })
    }

    /// Takes a chunk; `Some` once the answer is known (the response, or why there is none) and
    /// reading must stop.
    pub fn push(&mut self, chunk: &[u8]) -> Option<Result<Value, McpError>> {
        self.read += chunk.len();
        if self.read > self.limit {
            return Some(Err(McpError::TooLarge(self.limit)));
        }
        match &mut self.body {
            AnswerBody::Json(bytes) => {
                bytes.extend_from_slice(chunk);
                None
            }
            AnswerBody::Sse { decoder, events } => {
                if let Err(e) = decoder.push(chunk, events) {
                    return Some(Err(McpError::Protocol(e.to_string())));
                }
                self.response_event().map(Ok)
            }
        }
    }

    /// The body ended: the response, or why there is none.
    pub fn finish(mut self) -> Result<Value, McpError> {
        let id = self.id;
        match &mut self.body {
            AnswerBody::Json(bytes) => {
                let message: Value = serde_json::from_slice(bytes)
                    .map_err(|e| McpError::Protocol(format!("the answer is not JSON ({e})")))?;
                // A server that could not read the request answers with a null id.
                let unreadable =
                    message.get("id").is_some_and(Value::is_null) && message.get("error").is_some();
                if unreadable {
                    return Ok(message);
                }
                answer_to(message, id).ok_or_else(|| {
                    McpError::Protocol(format!("the answer holds no response to request {id}"))
                })
            }
            AnswerBody::Sse { decoder, events } => {
                decoder.finish(events);
                self.response_event().ok_or_else(|| {
                    McpError::Protocol(format!(
                        "the event stream ended without the response to request {id}"
                    ))
                })
            }
        }
    }

    /// The first decoded event that carries the response; the events before it (the server's
    /// notifications and requests) are dropped.
    fn response_event(&mut self) -> Option<Value> {
        let AnswerBody::Sse { events, .. } = &mut self.body else {
            return None;
        };
        let id = self.id;
        let found = events
            .iter()
            .filter(|e| e.event.as_deref().is_none_or(|name| name == "message"))
            .find_map(|e| {
                serde_json::from_str::<Value>(&e.data)
                    .ok()
                    .and_then(|m| answer_to(m, id))
            });
        events.clear();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::test_support::response;

    #[test]
    fn requests_are_json_rpc_2() {
        let init: Value = serde_json::from_str(&initialize_request(1)).unwrap();
        assert_eq!(
            init,
            json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": { "name": "edge-chat-gateway", "version": CLIENT_VERSION } } })
        );
        assert_eq!(
            initialized_notification(),
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#
        );
        assert_eq!(
            list_tools_request(2, None),
            r#"{"id":2,"jsonrpc":"2.0","method":"tools/list","params":{}}"#
        );
        assert_eq!(
            list_tools_request(3, Some("p2")),
            r#"{"id":3,"jsonrpc":"2.0","method":"tools/list","params":{"cursor":"p2"}}"#
        );
        assert_eq!(
            call_tool_request(4, "search", &json!({ "q": "x" })),
            r#"{"id":4,"jsonrpc":"2.0","method":"tools/call","params":{"arguments":{"q":"x"},"name":"search"}}"#
        );
        assert_eq!(call_arguments("t", " "), Ok(json!({})));
        assert_eq!(call_arguments("t", r#"{"a":1}"#), Ok(json!({ "a": 1 })));
        let refused = call_arguments("docs__t", "[1]").unwrap_err();
        assert_eq!(
            (refused.text.as_str(), refused.is_error),
            ("tool docs__t: the arguments are not a JSON object", true)
        );
    }

    #[test]
    fn a_json_answer_is_one_response_or_a_batch_holding_it() {
        let read = |body: &str| {
            let mut r = AnswerReader::new("application/json; charset=utf-8", 7, 1000).unwrap();
            assert!(r.push(body.as_bytes()).is_none());
            r.finish()
        };
        assert_eq!(
            read(r#"{"jsonrpc":"2.0","id":7,"result":{"ok":true}}"#),
            Ok(response(7, json!({ "ok": true })))
        );
        let batch = r#"[{"jsonrpc":"2.0","method":"notifications/message","params":{}},{"jsonrpc":"2.0","id":7,"result":{}}]"#;
        assert_eq!(read(batch), Ok(response(7, json!({}))));
        assert!(matches!(
            read(r#"{"jsonrpc":"2.0","id":8,"result":{}}"#),
            Err(McpError::Protocol(m)) if m.contains("no response to request 7")
        ));
        let unreadable =
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#;
        assert_eq!(
            read(unreadable).and_then(response_result),
            Err(McpError::Rpc {
                code: -32700,
                message: "Parse error".into()
            })
        );
        assert!(matches!(read("nope"), Err(McpError::Protocol(m)) if m.contains("not JSON")));
        assert!(matches!(
            AnswerReader::new("text/html", 1, 10),
            Err(McpError::Protocol(m)) if m.contains("text/html")
        ));
        let mut big = AnswerReader::new("application/json", 1, 4).unwrap();
        assert_eq!(big.push(b"{\"a\":1}"), Some(Err(McpError::TooLarge(4))));
    }

    #[test]
    fn an_event_stream_is_read_until_the_response_whatever_the_chunks() {
        let stream = concat!(
            ": keepalive\n\n",
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n",
            // A request of the server's own, with an id like the client's: not an answer.
            "data: {\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"ping\"}\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":3,\n",
            "data: \"result\":{\"content\":[]}}\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"after\"}\n\n",
        );
        let expected = response(3, json!({ "content": [] }));
        for size in [1, 2, 7, 64, stream.len()] {
            let mut r = AnswerReader::new("text/event-stream", 3, 10_000).unwrap();
            let mut found = None;
            for chunk in stream.as_bytes().chunks(size) {
                if let Some(answer) = r.push(chunk) {
                    found = Some(answer);
                    break;
                }
            }
            assert_eq!(found, Some(Ok(expected.clone())), "chunks of {size}");
        }
        // The last event without its blank line still counts at the end of the stream.
        let mut r = AnswerReader::new("text/event-stream", 1, 1000).unwrap();
        assert!(r
            .push(b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n")
            .is_none());
        assert_eq!(r.finish(), Ok(response(1, json!({}))));
        let mut r = AnswerReader::new("text/event-stream", 1, 1000).unwrap();
        r.push(b"data: {\"jsonrpc\":\"2.0\",\"method\":\"x\"}\n\n");
        assert!(matches!(r.finish(), Err(McpError::Protocol(m)) if m.contains("ended without")));
        let mut r = AnswerReader::new("text/event-stream", 1, 10).unwrap();
        assert_eq!(
            r.push(b": a comment longer than ten bytes\n"),
            Some(Err(McpError::TooLarge(10)))
        );
    }
}
