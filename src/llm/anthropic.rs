//! Anthropic Messages API, native: builds the streaming request, decodes its named SSE events into stream events.
//!
//! Written against Anthropic's documented streaming events: `message_start`,
//! `content_block_start/delta/stop` (text, thinking with `signature_delta`, tool_use with
//! `input_json_delta`), `message_delta`, `message_stop`, `ping` and `error`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::sse::SseEvent;
use super::{
    classify_http, classify_stream_error, error_fields, json_count, non_empty_str, truncate_chars,
    CallSpec, ChatMessage, FinishReason, StreamDecoder, StreamEvent, ToolCall, UpstreamError,
    UpstreamErrorKind, UpstreamRequest, Usage, MAX_ERROR_MESSAGE_CHARS,
};

/// The API version this module speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// `max_tokens` when the spec leaves it at 0: Anthropic requires the field.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Tokens kept for the answer on top of the thinking budget (thinking counts against `max_tokens`).
pub const ANSWER_TOKENS_OVER_BUDGET: u32 = 1024;

/// Builds the streaming `POST {base}/v1/messages` request for `spec`.
///
/// The base may or may not end in `/v1`. System messages are joined (blank line between)
/// into the top-level `system`. With thinking on, `max_tokens` is raised to at least
/// budget + [`ANSWER_TOKENS_OVER_BUDGET`], since the API requires it to exceed the budget.
/// Thinking is left off for a call whose last assistant turn calls tools without a signed
/// thinking block first (history from another provider, or thinking turned on mid-loop):
/// the API rejects such a request outright.
pub fn build_request(spec: &CallSpec) -> UpstreamRequest {
    let base = spec.base_url.trim_end_matches('/');
    let url = if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    };
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("accept".to_string(), "text/event-stream".to_string()),
        (
            "anthropic-version".to_string(),
            ANTHROPIC_VERSION.to_string(),
        ),
    ];
    if let Some(key) = spec.api_key.filter(|k| !k.is_empty()) {
        headers.push(("x-api-key".to_string(), key.to_string()));
    }

    let system: Vec<&str> = spec
        .messages
        .iter()
        .filter_map(|m| match m {
            ChatMessage::System { content } if !content.trim().is_empty() => Some(content.as_str()),
            _ => None,
        })
        .collect();
    let turns = turns(spec.messages);

    let mut max_tokens = if spec.max_tokens == 0 {
        DEFAULT_MAX_TOKENS
    } else {
        spec.max_tokens
    };
    let budget = spec
        .thinking
        .anthropic_budget()
        .filter(|_| !last_tool_turn_lacks_thinking(&turns));
    if let Some(budget) = budget {
        max_tokens = max_tokens.max(budget.saturating_add(ANSWER_TOKENS_OVER_BUDGET));
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(spec.model));
    body.insert("max_tokens".into(), json!(max_tokens));
    body.insert("stream".into(), json!(true));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert(
        "messages".into(),
        Value::Array(turns.into_iter().map(Turn::into_json).collect()),
    );
    if !spec.tools.is_empty() {
        let tools = spec
            .tools
            .iter()
            .map(|t| {
                // The API insists on an object schema; a tool without one takes no arguments.
                let schema = if t.parameters.is_object() {
                    t.parameters.clone()
                } else {
                    json!({ "type": "object", "properties": {} })
                };
                json!({ "name": t.name, "description": t.description, "input_schema": schema })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(budget) = budget {
        body.insert(
            "thinking".into(),
            json!({ "type": "enabled", "budget_tokens": budget }),
        );
    }

    UpstreamRequest {
        url,
        headers,
        body: Value::Object(body).to_string(),
    }
}

/// One message of the Anthropic conversation, as content blocks.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

impl Turn {
    /// The message JSON; a user turn that is a single text block is sent as plain text.
    fn into_json(self) -> Value {
        let single_text = self.role == "user"
            && self.blocks.len() == 1
            && self.blocks.first().and_then(|b| b.get("type")) == Some(&json!("text"));
        if single_text {
            if let Some(text) = self.blocks.first().and_then(|b| b.get("text")) {
                return json!({ "role": self.role, "content": text });
            }
        }
        json!({ "role": self.role, "content": self.blocks })
    }
}

/// Maps the history to alternating user/assistant turns.
///
/// Anthropic requires the roles to alternate, so consecutive messages of one role are
/// merged (in particular consecutive tool results, which go back in one user message).
/// Blank text is dropped (the API rejects empty text blocks), and a message left with no
/// block is skipped.
fn turns(messages: &[ChatMessage]) -> Vec<Turn> {
    let mut turns: Vec<Turn> = Vec::new();
    for message in messages {
        let (role, blocks) = match message {
            ChatMessage::System { .. } => continue,
            ChatMessage::User { content } => ("user", text_block(content).into_iter().collect()),
            ChatMessage::Assistant {
                content,
                thinking,
                tool_calls,
            } => {
                let mut blocks = Vec::new();
                if let Some(t) = thinking {
                    // Thinking is replayed only with its signature: the API rejects it otherwise.
                    if let Some(sig) = t.signature.as_deref().filter(|s| !s.is_empty()) {
                        blocks.push(
                            json!({ "type": "thinking", "thinking": t.text, "signature": sig }),
                        );
                    }
                }
                blocks.extend(text_block(content));
                for call in tool_calls {
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": tool_input(&call.arguments),
                    }));
                }
                ("assistant", blocks)
            }
            ChatMessage::Tool {
                tool_call_id,
                content,
                is_error,
                ..
            } => {
                let mut block = Map::new();
                block.insert("type".into(), json!("tool_result"));
                block.insert("tool_use_id".into(), json!(tool_call_id));
                // `content` is optional; an empty string is better left out than sent.
                if !content.is_empty() {
                    block.insert("content".into(), json!(content));
                }
                block.insert("is_error".into(), json!(is_error));
                ("user", vec![Value::Object(block)])
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == role => last.blocks.extend(blocks),
            _ => turns.push(Turn { role, blocks }),
        }
    }
    turns
}

/// A text block, unless the text is blank.
fn text_block(text: &str) -> Option<Value> {
    if text.trim().is_empty() {
        None
    } else {
        Some(json!({ "type": "text", "text": text }))
    }
}

/// Tool arguments as the `input` object the API wants; anything but a JSON object becomes `{}`.
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// Whether the last assistant turn calls tools without opening with a thinking block.
fn last_tool_turn_lacks_thinking(turns: &[Turn]) -> bool {
    let Some(last) = turns.iter().rev().find(|t| t.role == "assistant") else {
        return false;
    };
    let has_tool_use = last
        .blocks
        .iter()
        .any(|b| b.get("type") == Some(&json!("tool_use")));
    let starts_with_thinking =
        last.blocks.first().and_then(|b| b.get("type")) == Some(&json!("thinking"));
    has_tool_use && !starts_with_thinking
}

/// Classifies a non-2xx Messages response (see [`super::classify_http`]; 529 is `Overloaded`).
pub fn classify_error(status: u16, retry_after: Option<&str>, body: &str) -> UpstreamError {
    classify_http(status, retry_after, body)
}

/// A content block between its start and stop events.
#[derive(Debug)]
enum Block {
    Text,
    Thinking {
        signature: String,
    },
    ToolUse {
        id: String,
        name: String,
        /// Concatenated `partial_json` pieces.
        json: String,
        /// The `input` given at block start when it was not empty (used if no delta comes).
        initial: Option<String>,
    },
    /// Redacted thinking, server tools and anything newer: nothing to forward.
    Ignored,
}

/// Decoder of a Messages stream.
///
/// Order of what it yields: usage at `message_start`; text and thinking deltas as they
/// come; a thinking block's signature once, whole, at its `content_block_stop`; each tool
/// call at its block's stop; usage again at `message_delta` (the merged totals: later
/// non-zero values replace earlier ones); `Finish` last, at `message_stop`. After an
/// `Error` the decoder yields nothing more.
#[derive(Debug, Default)]
pub struct AnthropicDecoder {
    /// Open content blocks by `index`.
    blocks: BTreeMap<u64, Block>,
    /// Usage merged across `message_start` and `message_delta`.
    usage: Usage,
    /// `delta.stop_reason` from `message_delta`.
    stop_reason: Option<FinishReason>,
    /// Whether a tool call was emitted (to infer the reason when none was given).
    emitted_tools: bool,
    /// `Finish` or an `Error` was emitted: nothing more to yield.
    closed: bool,
}

impl AnthropicDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        AnthropicDecoder::default()
    }

    /// Emits `err` and closes the stream.
    fn fail(&mut self, err: UpstreamError, out: &mut Vec<StreamEvent>) {
        out.push(StreamEvent::Error(err));
        self.closed = true;
    }

    /// Merges a `usage` object (field by field, non-zero values win) and emits the totals.
    fn on_usage(&mut self, usage: Option<&Value>, out: &mut Vec<StreamEvent>) {
        let Some(usage) = usage.filter(|u| u.is_object()) else {
            return;
        };
        let fields: [(&str, &mut u64); 4] = [
            // Anthropic's input_tokens already excludes cache reads and writes.
            ("input_tokens", &mut self.usage.input),
            ("output_tokens", &mut self.usage.output),
            ("cache_read_input_tokens", &mut self.usage.cache_read),
            ("cache_creation_input_tokens", &mut self.usage.cache_write),
        ];
        for (name, slot) in fields {
            let value = json_count(usage.get(name));
            if value > 0 {
                *slot = value;
            }
        }
        out.push(StreamEvent::Usage(self.usage));
    }

    /// Finishes a block: a tool call or a thinking signature is emitted whole.
    fn close_block(&mut self, index: u64, block: Block, out: &mut Vec<StreamEvent>) {
        match block {
            Block::ToolUse {
                id,
                name,
                json,
                initial,
            } => {
                let arguments = if json.trim().is_empty() {
                    initial.unwrap_or_else(|| "{}".to_string())
                } else {
                    json
                };
                // An id is needed to answer the call; synthesize a stable one if none came.
                let id = if id.is_empty() {
                    format!("toolu_{index}")
                } else {
                    id
                };
                out.push(StreamEvent::ToolCall(ToolCall {
                    id,
                    name,
                    arguments,
                }));
                self.emitted_tools = true;
            }
            Block::Thinking { signature } if !signature.is_empty() => {
                out.push(StreamEvent::ThinkingSignature(signature));
            }
            _ => {}
        }
    }

    /// `content_block_start`.
    fn on_block_start(&mut self, index: u64, block: &Value, out: &mut Vec<StreamEvent>) {
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        let state = match kind {
            "text" => {
                if let Some(text) = non_empty_str(block.get("text")) {
                    out.push(StreamEvent::Text(text.to_string()));
                }
                Block::Text
            }
            "thinking" => {
                if let Some(text) = non_empty_str(block.get("thinking")) {
                    out.push(StreamEvent::Thinking(text.to_string()));
                }
                Block::Thinking {
                    signature: block
                        .get("signature")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                }
            }
            "tool_use" => Block::ToolUse {
                id: block
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                name: block
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                json: String::new(),
                initial: block
                    .get("input")
                    .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                    .map(Value::to_string),
            },
            _ => Block::Ignored,
        };
        // A repeated start for an open index closes the old block first, so nothing is lost.
        if let Some(old) = self.blocks.insert(index, state) {
            self.close_block(index, old, out);
        }
    }

    /// `content_block_delta`.
    fn on_block_delta(&mut self, index: u64, delta: &Value, out: &mut Vec<StreamEvent>) {
        match delta.get("type").and_then(Value::as_str).unwrap_or("") {
            "text_delta" => {
                if let Some(text) = non_empty_str(delta.get("text")) {
                    out.push(StreamEvent::Text(text.to_string()));
                }
            }
            "thinking_delta" => {
                if let Some(text) = non_empty_str(delta.get("thinking")) {
                    out.push(StreamEvent::Thinking(text.to_string()));
                }
            }
            "signature_delta" => {
                let piece = delta.get("signature").and_then(Value::as_str).unwrap_or("");
                match self.blocks.get_mut(&index) {
                    Some(Block::Thinking { signature }) => signature.push_str(piece),
                    // A signature for a block never started still belongs to a thinking block.
                    None => {
                        self.blocks.insert(
                            index,
                            Block::Thinking {
                                signature: piece.to_string(),
                            },
                        );
                    }
                    Some(_) => {}
                }
            }
            "input_json_delta" => {
                if let Some(Block::ToolUse { json, .. }) = self.blocks.get_mut(&index) {
                    if let Some(piece) = delta.get("partial_json").and_then(Value::as_str) {
                        json.push_str(piece);
                    }
                }
            }
            // citations_delta and anything newer: nothing to forward.
            _ => {}
        }
    }

    /// Handles one parsed event payload.
    fn on_payload(&mut self, name: Option<&str>, payload: &Value, out: &mut Vec<StreamEvent>) {
        // The payload's own `type` is authoritative; the SSE event name repeats it.
        let kind = payload
            .get("type")
            .and_then(Value::as_str)
            .or(name)
            .unwrap_or("");
        let index = payload.get("index").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "message_start" => self.on_usage(payload.pointer("/message/usage"), out),
            "content_block_start" => {
                if let Some(block) = payload.get("content_block") {
                    self.on_block_start(index, block, out);
                }
            }
            "content_block_delta" => {
                if let Some(delta) = payload.get("delta") {
                    self.on_block_delta(index, delta, out);
                }
            }
            "content_block_stop" => {
                if let Some(block) = self.blocks.remove(&index) {
                    self.close_block(index, block, out);
                }
            }
            "message_delta" => {
                if let Some(reason) = payload
                    .pointer("/delta/stop_reason")
                    .and_then(Value::as_str)
                {
                    self.stop_reason = Some(stop_reason(reason));
                }
                self.on_usage(payload.get("usage"), out);
            }
            "message_stop" => {
                // Blocks left open are complete by now: flush them rather than lose a tool call.
                for (index, block) in std::mem::take(&mut self.blocks) {
                    self.close_block(index, block, out);
                }
                let reason = self.stop_reason.unwrap_or(if self.emitted_tools {
                    FinishReason::ToolCalls
                } else {
                    FinishReason::Stop
                });
                out.push(StreamEvent::Finish(reason));
                self.closed = true;
            }
            "error" => self.fail(classify_stream_error(&error_fields(payload)), out),
            // `ping` and event types added later.
            _ => {}
        }
    }
}

impl StreamDecoder for AnthropicDecoder {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) {
        if self.closed {
            return;
        }
        let data = event.data.trim();
        if data.is_empty() {
            return;
        }
        match serde_json::from_str::<Value>(data) {
            Ok(payload) if payload.is_object() => {
                self.on_payload(event.event.as_deref(), &payload, out)
            }
            _ => {
                let text = truncate_chars(data, MAX_ERROR_MESSAGE_CHARS);
                let err = if event.event.as_deref() == Some("error") {
                    UpstreamError::new(UpstreamErrorKind::Server, text)
                } else {
                    UpstreamError::new(
                        UpstreamErrorKind::Malformed,
                        format!("malformed event: {text}"),
                    )
                };
                self.fail(err, out);
            }
        }
    }

    fn on_end(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.closed {
            self.fail(
                UpstreamError::new(
                    UpstreamErrorKind::Malformed,
                    "stream ended without message_stop",
                ),
                out,
            );
        }
    }
}

/// Maps a `stop_reason` to ours.
fn stop_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        // refusal, pause_turn and anything newer.
        _ => FinishReason::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::test_support::{
        arb_json, check_invariants, count, field, object, run, run_all_chunkings, text as word,
    };
    use crate::llm::{Thinking, ThinkingLevel, ToolSpec};
    use proptest::prelude::*;

    fn decode(bytes: &str) -> Vec<StreamEvent> {
        run_all_chunkings(AnthropicDecoder::new, bytes.as_bytes())
    }

    fn text(s: &str) -> StreamEvent {
        StreamEvent::Text(s.to_string())
    }

    fn thinking(s: &str) -> StreamEvent {
        StreamEvent::Thinking(s.to_string())
    }

    fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> StreamEvent {
        StreamEvent::Usage(Usage {
            input,
            output,
            cache_read,
            cache_write,
        })
    }

    const TEXT_STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" w\u{f6}rld \u{1F30D}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn text_stream() {
        assert_eq!(
            decode(TEXT_STREAM),
            vec![
                usage(25, 1, 0, 0),
                text("Hello"),
                text(" w\u{f6}rld \u{1F30D}"),
                usage(25, 15, 0, 0),
                StreamEvent::Finish(FinishReason::Stop),
            ]
        );
    }

    #[test]
    fn text_stream_with_crlf_line_endings() {
        let crlf = TEXT_STREAM.replace('\n', "\r\n");
        assert_eq!(decode(&crlf), decode(TEXT_STREAM));
    }

    #[test]
    fn extended_thinking_with_signature() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01Thk\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":40,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":3}}}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let me solve this step by step:\\n\\n1. First break down 27 * 453\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"\\n2. 453 = 400 + 50 + 3\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds\"}}\n\n",
            "event: content_block_stop\n",
            "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"redacted_thinking\",\"data\":\"EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP\"}}\n\n",
            "event: content_block_stop\n",
            "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"text_delta\",\"text\":\"27 * 453 = 12,231\"}}\n\n",
            "event: content_block_stop\n",
            "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":120}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        assert_eq!(
            decode(stream),
            vec![
                usage(40, 3, 0, 0),
                thinking("Let me solve this step by step:\n\n1. First break down 27 * 453"),
                thinking("\n2. 453 = 400 + 50 + 3"),
                StreamEvent::ThinkingSignature(
                    "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds".into()
                ),
                text("27 * 453 = 12,231"),
                usage(40, 120, 0, 0),
                StreamEvent::Finish(FinishReason::Stop),
            ]
        );
    }

    const TOOL_STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":1500,\"cache_read_input_tokens\":2048,\"output_tokens\":2},\"content\":[],\"stop_reason\":null}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay, let's check the weather for San Francisco, CA:\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\":\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\" \\\"San Fra\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ncisco, CA\\\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\", \\\"unit\\\": \\\"fahrenheit\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_02NoArgs\",\"name\":\"get_time\",\"input\":{}}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":1500,\"cache_read_input_tokens\":2048,\"output_tokens\":89}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn tool_use_with_input_json_deltas_and_cache_usage() {
        assert_eq!(
            decode(TOOL_STREAM),
            vec![
                usage(472, 2, 2048, 1500),
                text("Okay, let's check the weather for San Francisco, CA:"),
                StreamEvent::ToolCall(ToolCall {
                    id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
                    name: "get_weather".into(),
                    arguments: "{\"location\": \"San Francisco, CA\", \"unit\": \"fahrenheit\"}"
                        .into(),
                }),
                StreamEvent::ToolCall(ToolCall {
                    id: "toolu_02NoArgs".into(),
                    name: "get_time".into(),
                    arguments: "{}".into(),
                }),
                usage(472, 89, 2048, 1500),
                StreamEvent::Finish(FinishReason::ToolCalls),
            ]
        );
    }

    #[test]
    fn stop_reasons_map() {
        for (wire, ours) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("tool_use", FinishReason::ToolCalls),
            ("refusal", FinishReason::Other),
            ("pause_turn", FinishReason::Other),
        ] {
            let stream = format!(
                "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"{wire}\"}},\"usage\":{{\"output_tokens\":5}}}}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
            );
            assert_eq!(
                decode(&stream),
                vec![usage(0, 5, 0, 0), StreamEvent::Finish(ours)],
                "{wire}"
            );
        }
    }

    fn stream_error(kind_wire: &str, message: &str) -> Option<UpstreamError> {
        let stream = format!(
            "{}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"{kind_wire}\",\"message\":\"{message}\"}}}}\n\n",
            TEXT_STREAM.split("event: content_block_stop").next().unwrap_or("")
        );
        let events = decode(&stream);
        assert!(check_invariants(&events).is_ok());
        match events.last() {
            Some(StreamEvent::Error(err)) => Some(err.clone()),
            _ => None,
        }
    }

    #[test]
    fn error_event_in_stream() {
        let err = stream_error("overloaded_error", "Overloaded");
        assert_eq!(
            err,
            Some(UpstreamError {
                kind: UpstreamErrorKind::Overloaded,
                status: None,
                message: "Overloaded".into(),
                retry_after_ms: None,
            })
        );
        for (wire, message, kind) in [
            (
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
                UpstreamErrorKind::RateLimited,
            ),
            (
                "api_error",
                "Internal server error",
                UpstreamErrorKind::Server,
            ),
            (
                "invalid_request_error",
                "messages: text content blocks must be non-empty",
                UpstreamErrorKind::BadRequest,
            ),
            (
                "invalid_request_error",
                "prompt is too long: 215000 tokens > 200000 maximum",
                UpstreamErrorKind::ContextTooLong,
            ),
            (
                "authentication_error",
                "invalid x-api-key",
                UpstreamErrorKind::Auth,
            ),
            (
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
                UpstreamErrorKind::Auth,
            ),
            ("something_new", "?", UpstreamErrorKind::Server),
        ] {
            assert_eq!(
                stream_error(wire, message).map(|e| e.kind),
                Some(kind),
                "{wire}"
            );
        }
    }

    #[test]
    fn events_after_an_error_are_ignored() {
        let stream = format!(
            "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n{TEXT_STREAM}"
        );
        let events = decode(&stream);
        assert_eq!(events.len(), 1);
        assert!(matches!(events.first(), Some(StreamEvent::Error(_))));
    }

    #[test]
    fn cut_stream_is_malformed() {
        let cut = TOOL_STREAM
            .split("event: message_delta")
            .next()
            .unwrap_or("");
        let events = decode(cut);
        // Everything before the cut still arrives, then the error.
        assert_eq!(events.len(), 5);
        match events.last() {
            Some(StreamEvent::Error(err)) => {
                assert_eq!(err.kind, UpstreamErrorKind::Malformed);
                assert_eq!(err.message, "stream ended without message_stop");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        // Cut inside a line: the partial line is dropped, the end is still reported.
        let mid = &TOOL_STREAM[..TOOL_STREAM.len() - 10];
        assert!(matches!(
            decode(mid).last(),
            Some(StreamEvent::Error(UpstreamError {
                kind: UpstreamErrorKind::Malformed,
                ..
            }))
        ));
    }

    #[test]
    fn malformed_json_is_reported_once_then_silence() {
        let stream = concat!(
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"b\"}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let events = decode(stream);
        assert_eq!(events.len(), 2);
        assert_eq!(events.first(), Some(&text("a")));
        assert!(matches!(
            events.last(),
            Some(StreamEvent::Error(UpstreamError {
                kind: UpstreamErrorKind::Malformed,
                ..
            }))
        ));
    }

    #[test]
    fn finish_is_emitted_once() {
        let doubled =
            format!("{TEXT_STREAM}event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n");
        let events = decode(&doubled);
        let finishes = events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Finish(_)))
            .count();
        assert_eq!(finishes, 1);
    }

    fn history() -> Vec<ChatMessage> {
        vec![
            ChatMessage::System {
                content: "You are terse.".into(),
            },
            ChatMessage::System {
                content: "Use tools when needed.".into(),
            },
            ChatMessage::User {
                content: "Weather in Paris and the time?".into(),
            },
            ChatMessage::Assistant {
                content: "Checking.".into(),
                thinking: Some(Thinking {
                    text: "Two tools needed.".into(),
                    signature: Some("sig-abc".into()),
                }),
                tool_calls: vec![
                    ToolCall {
                        id: "toolu_1".into(),
                        name: "get_weather".into(),
                        arguments: "{\"location\":\"Paris\"}".into(),
                    },
                    ToolCall {
                        id: "toolu_2".into(),
                        name: "get_time".into(),
                        arguments: "not json".into(),
                    },
                ],
            },
            ChatMessage::Tool {
                tool_call_id: "toolu_1".into(),
                name: "get_weather".into(),
                content: "18C".into(),
                is_error: false,
            },
            ChatMessage::Tool {
                tool_call_id: "toolu_2".into(),
                name: "get_time".into(),
                content: "clock unavailable".into(),
                is_error: true,
            },
            ChatMessage::Assistant {
                content: "It is 18C; the time is unknown.".into(),
                thinking: Some(Thinking {
                    text: "unsigned, not replayed".into(),
                    signature: None,
                }),
                tool_calls: vec![],
            },
            ChatMessage::Assistant {
                content: String::new(),
                thinking: None,
                tool_calls: vec![],
            },
            ChatMessage::Assistant {
                content: "Anything else?".into(),
                thinking: None,
                tool_calls: vec![],
            },
            ChatMessage::User {
                content: "Thanks.".into(),
            },
            ChatMessage::User {
                content: "Bye.".into(),
            },
        ]
    }

    fn spec<'a>(
        base_url: &'a str,
        messages: &'a [ChatMessage],
        tools: &'a [ToolSpec],
        thinking: ThinkingLevel,
        max_tokens: u32,
    ) -> CallSpec<'a> {
        CallSpec {
            base_url,
            api_key: Some("sk-ant-test"),
            model: "claude-sonnet-4-5",
            messages,
            tools,
            thinking,
            max_tokens,
        }
    }

    fn body(req: &UpstreamRequest) -> Value {
        serde_json::from_str(&req.body).unwrap_or(Value::Null)
    }

    #[test]
    fn build_request_merges_and_alternates() {
        let messages = history();
        let tools = vec![ToolSpec {
            name: "get_weather".into(),
            description: "Current weather".into(),
            parameters: json!({"type":"object","properties":{"location":{"type":"string"}}}),
        }];
        let req = build_request(&spec(
            "https://api.anthropic.com",
            &messages,
            &tools,
            ThinkingLevel::Medium,
            4096,
        ));
        assert_eq!(req.url, "https://api.anthropic.com/v1/messages");
        for header in [
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
            ("x-api-key", "sk-ant-test"),
            ("anthropic-version", "2023-06-01"),
        ] {
            assert!(
                req.headers
                    .contains(&(header.0.to_string(), header.1.to_string())),
                "{header:?}"
            );
        }
        assert_eq!(
            body(&req),
            json!({
                "model": "claude-sonnet-4-5",
                // 4096 does not exceed the 8192 budget: raised to budget + 1024.
                "max_tokens": 9216,
                "stream": true,
                "system": "You are terse.\n\nUse tools when needed.",
                "thinking": {"type": "enabled", "budget_tokens": 8192},
                "tools": [{
                    "name": "get_weather",
                    "description": "Current weather",
                    "input_schema": {"type":"object","properties":{"location":{"type":"string"}}},
                }],
                "messages": [
                    {"role": "user", "content": "Weather in Paris and the time?"},
                    {"role": "assistant", "content": [
                        {"type": "thinking", "thinking": "Two tools needed.", "signature": "sig-abc"},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
                        {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C", "is_error": false},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "clock unavailable", "is_error": true},
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "It is 18C; the time is unknown."},
                        {"type": "text", "text": "Anything else?"},
                    ]},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Thanks."},
                        {"type": "text", "text": "Bye."},
                    ]},
                ],
            })
        );
    }

    #[test]
    fn build_request_roles_always_alternate() {
        let messages = history();
        let req = build_request(&spec(
            "https://api.anthropic.com",
            &messages,
            &[],
            ThinkingLevel::Off,
            1000,
        ));
        let b = body(&req);
        let roles: Vec<&str> = b["messages"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["role"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
        assert!(b.get("thinking").is_none());
        assert_eq!(b["max_tokens"], json!(1000));
    }

    #[test]
    fn build_request_url_variants_and_defaults() {
        let messages = vec![ChatMessage::User {
            content: "hi".into(),
        }];
        for (base, url) in [
            (
                "https://api.anthropic.com",
                "https://api.anthropic.com/v1/messages",
            ),
            (
                "https://api.anthropic.com/",
                "https://api.anthropic.com/v1/messages",
            ),
            (
                "https://proxy.example/anthropic/v1",
                "https://proxy.example/anthropic/v1/messages",
            ),
            (
                "https://proxy.example/anthropic/v1/",
                "https://proxy.example/anthropic/v1/messages",
            ),
        ] {
            let req = build_request(&spec(base, &messages, &[], ThinkingLevel::Off, 0));
            assert_eq!(req.url, url);
            let b = body(&req);
            assert_eq!(b["max_tokens"], json!(DEFAULT_MAX_TOKENS));
            assert!(b.get("system").is_none());
            assert!(b.get("tools").is_none());
        }
        let high = build_request(&spec(
            "https://api.anthropic.com",
            &messages,
            &[],
            ThinkingLevel::High,
            32000,
        ));
        assert_eq!(body(&high)["max_tokens"], json!(32000));
        assert_eq!(body(&high)["thinking"]["budget_tokens"], json!(16384));
        // xhigh: twice high's budget, max_tokens raised above it.
        let xhigh = build_request(&spec(
            "https://api.anthropic.com",
            &messages,
            &[],
            ThinkingLevel::Xhigh,
            4096,
        ));
        assert_eq!(body(&xhigh)["thinking"]["budget_tokens"], json!(32768));
        assert_eq!(
            body(&xhigh)["max_tokens"],
            json!(32768 + ANSWER_TOKENS_OVER_BUDGET)
        );
    }

    #[test]
    fn thinking_is_left_off_when_the_tool_turn_has_no_signed_thinking() {
        let messages = vec![
            ChatMessage::User {
                content: "time?".into(),
            },
            ChatMessage::Assistant {
                content: String::new(),
                thinking: None,
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "get_time".into(),
                    arguments: "{}".into(),
                }],
            },
            ChatMessage::Tool {
                tool_call_id: "call_1".into(),
                name: "get_time".into(),
                content: "12:00".into(),
                is_error: false,
            },
        ];
        let req = build_request(&spec(
            "https://api.anthropic.com",
            &messages,
            &[],
            ThinkingLevel::Low,
            2000,
        ));
        let b = body(&req);
        assert!(b.get("thinking").is_none());
        assert_eq!(b["max_tokens"], json!(2000));
    }

    #[test]
    fn classify_error_with_anthropic_bodies() {
        let e = classify_error(529, None, "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}");
        assert_eq!(e.kind, UpstreamErrorKind::Overloaded);
        assert_eq!(e.message, "Overloaded");
        assert_eq!(e.status, Some(529));

        let e = classify_error(429, Some("17"), "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"This request would exceed the rate limit for your organization.\"}}");
        assert_eq!(e.kind, UpstreamErrorKind::RateLimited);
        assert_eq!(e.retry_after_ms, Some(17_000));

        let e = classify_error(400, None, "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"prompt is too long: 215000 tokens > 200000 maximum\"}}");
        assert_eq!(e.kind, UpstreamErrorKind::ContextTooLong);

        let e = classify_error(400, None, "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"max_tokens: Field required\"}}");
        assert_eq!(e.kind, UpstreamErrorKind::BadRequest);
        assert_eq!(e.message, "max_tokens: Field required");

        let e = classify_error(401, None, "{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\",\"message\":\"invalid x-api-key\"}}");
        assert_eq!(e.kind, UpstreamErrorKind::Auth);

        let e = classify_error(500, None, "{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"Internal server error\"}}");
        assert_eq!(e.kind, UpstreamErrorKind::Server);

        let e = classify_error(413, None, "{\"type\":\"error\",\"error\":{\"type\":\"request_too_large\",\"message\":\"Request exceeds the maximum allowed number of bytes.\"}}");
        assert_eq!(e.kind, UpstreamErrorKind::BadRequest);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..1024), size in 1usize..64) {
            let events = run(&mut AnthropicDecoder::new(), &input, size);
            prop_assert!(check_invariants(&events).is_ok());
        }

        #[test]
        fn arbitrary_events_never_panic(
            events in prop::collection::vec(
                (prop::sample::select(EVENT_NAMES), prop_oneof![4 => arb_payload(), 1 => arb_json(WORDS)]),
                0..16,
            ),
        ) {
            let mut stream = String::new();
            for (name, payload) in &events {
                stream.push_str("event: ");
                stream.push_str(name);
                stream.push_str("\ndata: ");
                stream.push_str(&payload.to_string());
                stream.push_str("\n\n");
            }
            let out = run(&mut AnthropicDecoder::new(), stream.as_bytes(), stream.len());
            prop_assert!(check_invariants(&out).is_ok(), "{:?}", out);
            // Every stream ends in exactly one Finish or one Error.
            prop_assert!(matches!(out.last(), Some(StreamEvent::Finish(_) | StreamEvent::Error(_))), "{:?}", out);
            for e in &out {
                if let StreamEvent::ToolCall(call) = e {
                    prop_assert!(!call.id.is_empty() && !call.arguments.trim().is_empty());
                }
            }
        }

        #[test]
        fn arbitrary_history_builds_valid_json(
            texts in prop::collection::vec(any::<String>(), 0..8),
            roles in prop::collection::vec(0u8..4, 0..8),
        ) {
            let messages: Vec<ChatMessage> = roles
                .iter()
                .zip(texts.iter().chain(std::iter::repeat(&String::new())))
                .map(|(r, t)| match r {
                    0 => ChatMessage::User { content: t.clone() },
                    1 => ChatMessage::Assistant {
                        content: t.clone(),
                        thinking: None,
                        tool_calls: vec![ToolCall { id: "t".into(), name: "n".into(), arguments: t.clone() }],
                    },
                    2 => ChatMessage::Tool { tool_call_id: "t".into(), name: "n".into(), content: t.clone(), is_error: false },
                    _ => ChatMessage::System { content: t.clone() },
                })
                .collect();
            let req = build_request(&spec("https://api.anthropic.com", &messages, &[], ThinkingLevel::High, 0));
            let b = body(&req);
            let roles: Vec<String> = b["messages"]
                .as_array()
                .map(|m| m.iter().filter_map(|m| m["role"].as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            for pair in roles.windows(2) {
                prop_assert_ne!(&pair[0], &pair[1]);
            }
        }
    }

    /// A `usage` object with each count present, absent or odd.
    fn arb_usage() -> impl Strategy<Value = Value> {
        (
            field(count(), WORDS),
            field(count(), WORDS),
            field(count(), WORDS),
            field(count(), WORDS),
        )
            .prop_map(|(i, o, r, w)| {
                object(vec![
                    ("input_tokens", i),
                    ("output_tokens", o),
                    ("cache_read_input_tokens", r),
                    ("cache_creation_input_tokens", w),
                ])
            })
    }

    /// An event payload shaped like the real ones, its fields present, absent or odd.
    fn arb_payload() -> impl Strategy<Value = Value> {
        let block = (
            prop::sample::select(BLOCK_TYPES),
            field(word(WORDS), WORDS),
            field(word(WORDS), WORDS),
            field(arb_json(WORDS), WORDS),
        )
            .prop_map(|(ty, text, id, input)| {
                object(vec![
                    ("type", Some(json!(ty))),
                    ("text", text.clone()),
                    ("thinking", text),
                    ("id", id.clone()),
                    ("name", id),
                    ("input", input),
                ])
            });
        let delta = (
            prop::sample::select(DELTA_TYPES),
            field(word(WORDS), WORDS),
            field(word(WORDS), WORDS),
        )
            .prop_map(|(ty, piece, stop)| {
                object(vec![
                    ("type", Some(json!(ty))),
                    ("text", piece.clone()),
                    ("thinking", piece.clone()),
                    ("signature", piece.clone()),
                    ("partial_json", piece),
                    ("stop_reason", stop),
                ])
            });
        (
            prop::sample::select(EVENT_NAMES),
            field((0u64..4).prop_map(Value::from), WORDS),
            field(block, WORDS),
            field(delta, WORDS),
            field(arb_usage(), WORDS),
            field(arb_usage().prop_map(|u| json!({ "usage": u })), WORDS),
            prop::option::weighted(0.05, arb_json(WORDS)),
        )
            .prop_map(|(ty, index, block, delta, usage, message, error)| {
                object(vec![
                    ("type", Some(json!(ty))),
                    ("index", index),
                    ("content_block", block),
                    ("delta", delta),
                    ("usage", usage),
                    ("message", message),
                    ("error", error),
                ])
            })
    }

    const BLOCK_TYPES: &[&str] = &["text", "thinking", "tool_use", "redacted_thinking", "other"];

    const DELTA_TYPES: &[&str] = &[
        "text_delta",
        "thinking_delta",
        "signature_delta",
        "input_json_delta",
        "citations_delta",
    ];

    const EVENT_NAMES: &[&str] = &[
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
        "unknown",
    ];

    /// Keys and values the decoder looks at, for [`arb_json`].
    const WORDS: &[&str] = &[
        "type",
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "error",
        "message",
        "usage",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "index",
        "content_block",
        "text",
        "thinking",
        "tool_use",
        "redacted_thinking",
        "id",
        "name",
        "input",
        "delta",
        "text_delta",
        "thinking_delta",
        "signature_delta",
        "signature",
        "input_json_delta",
        "partial_json",
        "stop_reason",
        "end_turn",
        "tool_use",
        "overloaded_error",
        "",
    ];
}
