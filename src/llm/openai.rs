//! OpenAI-compatible Chat Completions streaming: builds the request, decodes the `data:` chunks into stream events.
//!
//! Written against OpenAI's documented chunk format and the variants compatible servers
//! produce: `reasoning_content` (DeepSeek, vLLM) or `reasoning` (OpenRouter) deltas, a
//! usage-only last chunk, numeric error codes (OpenRouter, vLLM), a missing `[DONE]`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::sse::SseEvent;
use super::{
    classify_http, classify_stream_error, error_fields, json_count, non_empty_str, truncate_chars,
    CallSpec, ChatMessage, FinishReason, StreamDecoder, StreamEvent, ToolCall, UpstreamError,
    UpstreamErrorKind, UpstreamRequest, Usage, MAX_ERROR_MESSAGE_CHARS,
};

/// Builds the streaming `POST {base_url}/chat/completions` request for `spec`.
///
/// `max_tokens` (not `max_completion_tokens`) because compatible servers widely accept it;
/// it is left out when `spec.max_tokens` is 0. Assistant thinking is not sent back: the
/// Chat Completions format has no field for it.
pub fn build_request(spec: &CallSpec) -> UpstreamRequest {
    let url = format!("{}/chat/completions", spec.base_url.trim_end_matches('/'));
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("accept".to_string(), "text/event-stream".to_string()),
    ];
    if let Some(key) = spec.api_key.filter(|k| !k.is_empty()) {
        headers.push(("authorization".to_string(), format!("Bearer {key}")));
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(spec.model));
    body.insert(
        "messages".into(),
        Value::Array(spec.messages.iter().map(message_json).collect()),
    );
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({ "include_usage": true }));
    if spec.max_tokens > 0 {
        body.insert("max_tokens".into(), json!(spec.max_tokens));
    }
    if let Some(effort) = spec.thinking.openai_effort(spec.model) {
        body.insert("reasoning_effort".into(), json!(effort));
    }
    if !spec.tools.is_empty() {
        let tools = spec
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    }
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }

    UpstreamRequest {
        url,
        headers,
        body: Value::Object(body).to_string(),
    }
}

/// One history entry in Chat Completions form.
fn message_json(message: &ChatMessage) -> Value {
    match message {
        ChatMessage::System { content } => json!({ "role": "system", "content": content }),
        ChatMessage::User { content } => json!({ "role": "user", "content": content }),
        ChatMessage::Assistant {
            content,
            tool_calls,
            ..
        } => {
            let mut m = Map::new();
            m.insert("role".into(), json!("assistant"));
            if tool_calls.is_empty() {
                m.insert("content".into(), json!(content));
            } else {
                // OpenAI wants `null`, not "", for an assistant turn that only calls tools.
                let content = if content.is_empty() {
                    Value::Null
                } else {
                    json!(content)
                };
                m.insert("content".into(), content);
                let calls = tool_calls
                    .iter()
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "type": "function",
                            "function": { "name": c.name, "arguments": c.arguments },
                        })
                    })
                    .collect();
                m.insert("tool_calls".into(), Value::Array(calls));
            }
            Value::Object(m)
        }
        ChatMessage::Tool {
            tool_call_id,
            content,
            ..
        } => json!({ "role": "tool", "tool_call_id": tool_call_id, "content": content }),
    }
}

/// Classifies a non-2xx Chat Completions response (see [`super::classify_http`]).
pub fn classify_error(status: u16, retry_after: Option<&str>, body: &str) -> UpstreamError {
    classify_http(status, retry_after, body)
}

/// A tool call being assembled from its streamed pieces.
#[derive(Debug, Default)]
struct PendingTool {
    id: String,
    name: String,
    arguments: String,
}

/// Decoder of a Chat Completions stream.
///
/// Order of what it yields: text and thinking deltas as they come; the tool calls, in
/// `index` order, once `finish_reason` arrives; usage whenever a chunk carries it; and
/// `Finish` last, at `[DONE]` (or at the end of a stream that had a `finish_reason` but no
/// `[DONE]`, which some servers omit). Holding `Finish` until then puts the usage chunk,
/// which OpenAI sends after the `finish_reason` chunk, before it. After an `Error` the
/// decoder yields nothing more.
#[derive(Debug, Default)]
pub struct OpenAiDecoder {
    /// Tool calls by their `index`; a BTreeMap yields them in index order.
    tools: BTreeMap<u64, PendingTool>,
    /// The first `finish_reason` seen.
    finish_reason: Option<FinishReason>,
    /// Whether any tool call was emitted (to infer the reason when none was given).
    emitted_tools: bool,
    /// `Finish` was emitted, or an error ended the stream: nothing more to yield.
    closed: bool,
}

impl OpenAiDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        OpenAiDecoder::default()
    }

    /// Emits the assembled tool calls in index order and forgets them.
    fn flush_tools(&mut self, out: &mut Vec<StreamEvent>) {
        for (index, tool) in std::mem::take(&mut self.tools) {
            let arguments = if tool.arguments.trim().is_empty() {
                "{}".to_string()
            } else {
                tool.arguments
            };
            // An id is needed to answer the call; synthesize a stable one if the server sent none.
            let id = if tool.id.is_empty() {
                format!("call_{index}")
            } else {
                tool.id
            };
            out.push(StreamEvent::ToolCall(ToolCall {
                id,
                name: tool.name,
                arguments,
            }));
            self.emitted_tools = true;
        }
    }

    /// Emits pending tool calls then `Finish`, once.
    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        self.flush_tools(out);
        let reason = self.finish_reason.unwrap_or(if self.emitted_tools {
            FinishReason::ToolCalls
        } else {
            FinishReason::Stop
        });
        out.push(StreamEvent::Finish(reason));
        self.closed = true;
    }

    /// Emits `err` and closes the stream.
    fn fail(&mut self, err: UpstreamError, out: &mut Vec<StreamEvent>) {
        out.push(StreamEvent::Error(err));
        self.closed = true;
    }

    /// Handles one parsed chunk.
    fn on_chunk(&mut self, chunk: &Value, out: &mut Vec<StreamEvent>) {
        if chunk.get("error").is_some_and(|e| !e.is_null()) {
            self.fail(classify_stream_error(&error_fields(chunk)), out);
            return;
        }
        if let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        {
            if let Some(delta) = choice.get("delta").filter(|d| d.is_object()) {
                self.on_delta(delta, out);
            }
            // Some servers send `""` instead of `null` on every chunk before the last.
            if let Some(reason) = non_empty_str(choice.get("finish_reason")) {
                if self.finish_reason.is_none() {
                    self.finish_reason = Some(finish_reason(reason));
                    self.flush_tools(out);
                }
            }
        }
        // Groq reports usage under `x_groq`; everyone else at the top level.
        let usage = chunk
            .get("usage")
            .filter(|u| u.is_object())
            .or_else(|| chunk.pointer("/x_groq/usage").filter(|u| u.is_object()));
        if let Some(usage) = usage {
            out.push(StreamEvent::Usage(parse_usage(usage)));
        }
    }

    /// Handles `choices[0].delta`.
    fn on_delta(&mut self, delta: &Value, out: &mut Vec<StreamEvent>) {
        // Some servers send both names with the same text; take one so it is not doubled.
        let reasoning = non_empty_str(delta.get("reasoning_content"))
            .or_else(|| non_empty_str(delta.get("reasoning")));
        if let Some(text) = reasoning {
            out.push(StreamEvent::Thinking(text.to_string()));
        }
        if let Some(text) = non_empty_str(delta.get("content")) {
            out.push(StreamEvent::Text(text.to_string()));
        }
        // A refusal is what the user gets instead of an answer: show it as text.
        if let Some(text) = non_empty_str(delta.get("refusal")) {
            out.push(StreamEvent::Text(text.to_string()));
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                self.on_tool_delta(call);
            }
        }
    }

    /// Merges one `tool_calls[]` piece into the call with the same `index`.
    fn on_tool_delta(&mut self, call: &Value) {
        let id = non_empty_str(call.get("id"));
        let index = match call.get("index").and_then(Value::as_u64) {
            Some(i) => i,
            // Without an index (some servers send whole calls): a new id opens a new call,
            // a piece without id continues the last one.
            None => {
                let existing =
                    id.and_then(|id| self.tools.iter().find(|(_, t)| t.id == id).map(|(i, _)| *i));
                let last = self.tools.keys().next_back().copied();
                match (existing, id, last) {
                    (Some(i), _, _) => i,
                    (None, Some(_), Some(l)) => l.saturating_add(1),
                    (None, None, Some(l)) => l,
                    (None, _, None) => 0,
                }
            }
        };
        let tool = self.tools.entry(index).or_default();
        if let Some(id) = id {
            if tool.id.is_empty() {
                tool.id = id.to_string();
            }
        }
        let function = call.get("function");
        if let Some(name) = non_empty_str(function.and_then(|f| f.get("name"))) {
            // Some servers repeat the name on every piece; the first one stands.
            if tool.name.is_empty() {
                tool.name = name.to_string();
            }
        }
        match function.and_then(|f| f.get("arguments")) {
            Some(Value::String(piece)) => tool.arguments.push_str(piece),
            // A few servers send the arguments as a JSON object instead of its text.
            Some(v @ (Value::Object(_) | Value::Array(_))) => {
                tool.arguments.push_str(&v.to_string())
            }
            _ => {}
        }
    }
}

impl StreamDecoder for OpenAiDecoder {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) {
        if self.closed {
            return;
        }
        let data = event.data.trim();
        if data == "[DONE]" {
            self.finish(out);
            return;
        }
        if data.is_empty() {
            return;
        }
        let named_error = event.event.as_deref() == Some("error");
        match serde_json::from_str::<Value>(data) {
            Ok(chunk) if chunk.is_object() => {
                if named_error && chunk.get("error").is_none() {
                    // An `event: error` whose payload is the error object itself.
                    let fields = error_fields(&json!({ "error": chunk }));
                    self.fail(classify_stream_error(&fields), out);
                } else {
                    self.on_chunk(&chunk, out);
                }
            }
            _ => {
                let text = truncate_chars(data, MAX_ERROR_MESSAGE_CHARS);
                let err = if named_error {
                    UpstreamError::new(UpstreamErrorKind::Server, text)
                } else {
                    UpstreamError::new(
                        UpstreamErrorKind::Malformed,
                        format!("malformed chunk: {text}"),
                    )
                };
                self.fail(err, out);
            }
        }
    }

    fn on_end(&mut self, out: &mut Vec<StreamEvent>) {
        if self.closed {
            return;
        }
        if self.finish_reason.is_some() {
            // Some servers close the stream after the finish_reason chunk without `[DONE]`.
            self.finish(out);
        } else {
            self.fail(
                UpstreamError::new(UpstreamErrorKind::Malformed, "stream ended without [DONE]"),
                out,
            );
        }
    }
}

/// Maps a `finish_reason` to ours.
fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" | "end_turn" | "eos" => FinishReason::Stop,
        "length" | "max_tokens" => FinishReason::Length,
        "tool_calls" | "function_call" | "tool_use" => FinishReason::ToolCalls,
        _ => FinishReason::Other,
    }
}

/// Reads a `usage` object.
///
/// `input` excludes the cached prompt tokens, which OpenAI counts inside `prompt_tokens`
/// and reports again in `prompt_tokens_details.cached_tokens`: they are priced apart
/// (`cache_read`) and must not be counted twice. DeepSeek's `prompt_cache_hit_tokens` is
/// read when the OpenAI field is absent. Chat Completions reports no cache writes.
fn parse_usage(usage: &Value) -> Usage {
    let prompt = json_count(usage.get("prompt_tokens"));
    let cached = match usage.pointer("/prompt_tokens_details/cached_tokens") {
        Some(v) if !v.is_null() => json_count(Some(v)),
        _ => json_count(usage.get("prompt_cache_hit_tokens")),
    };
    let cached = cached.min(prompt);
    Usage {
        input: prompt - cached,
        output: json_count(usage.get("completion_tokens")),
        cache_read: cached,
        cache_write: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::test_support::{
        arb_json, check_invariants, count, field, object, run, run_all_chunkings, text as word,
    };
    use crate::llm::{ThinkingLevel, ToolSpec};
    use proptest::prelude::*;

    fn decode(bytes: &str) -> Vec<StreamEvent> {
        run_all_chunkings(OpenAiDecoder::new, bytes.as_bytes())
    }

    fn text(s: &str) -> StreamEvent {
        StreamEvent::Text(s.to_string())
    }

    fn thinking(s: &str) -> StreamEvent {
        StreamEvent::Thinking(s.to_string())
    }

    fn tool(id: &str, name: &str, arguments: &str) -> StreamEvent {
        StreamEvent::ToolCall(ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        })
    }

    fn usage(input: u64, output: u64, cache_read: u64) -> StreamEvent {
        StreamEvent::Usage(Usage {
            input,
            output,
            cache_read,
            cache_write: 0,
        })
    }

    fn error_kind(events: &[StreamEvent]) -> Option<UpstreamErrorKind> {
        events.iter().find_map(|e| match e {
            StreamEvent::Error(err) => Some(err.kind),
            _ => None,
        })
    }

    const TEXT_STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1726000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_483d39d857\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1726000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_483d39d857\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1726000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_483d39d857\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w\u{f6}rld \u{1F30D}\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1726000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_483d39d857\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1726000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_483d39d857\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":7,\"total_tokens\":1207,\"prompt_tokens_details\":{\"cached_tokens\":1024,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn text_stream_with_cached_usage_chunk() {
        assert_eq!(
            decode(TEXT_STREAM),
            vec![
                text("Hello"),
                text(" w\u{f6}rld \u{1F30D}"),
                // 1200 prompt tokens of which 1024 cached: input counts only the other 176.
                usage(176, 7, 1024),
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
    fn deepseek_reasoning_content() {
        let stream = concat!(
            "data: {\"id\":\"b1f3c0de\",\"object\":\"chat.completion.chunk\",\"created\":1737000000,\"model\":\"deepseek-reasoner\",\"system_fingerprint\":\"fp_7e73fd9a08\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"b1f3c0de\",\"object\":\"chat.completion.chunk\",\"created\":1737000000,\"model\":\"deepseek-reasoner\",\"system_fingerprint\":\"fp_7e73fd9a08\",\"choices\":[{\"index\":0,\"delta\":{\"content\":null,\"reasoning_content\":\"Okay, the user\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"b1f3c0de\",\"object\":\"chat.completion.chunk\",\"created\":1737000000,\"model\":\"deepseek-reasoner\",\"system_fingerprint\":\"fp_7e73fd9a08\",\"choices\":[{\"index\":0,\"delta\":{\"content\":null,\"reasoning_content\":\" says hi.\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"b1f3c0de\",\"object\":\"chat.completion.chunk\",\"created\":1737000000,\"model\":\"deepseek-reasoner\",\"system_fingerprint\":\"fp_7e73fd9a08\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi!\",\"reasoning_content\":null},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"b1f3c0de\",\"object\":\"chat.completion.chunk\",\"created\":1737000000,\"model\":\"deepseek-reasoner\",\"system_fingerprint\":\"fp_7e73fd9a08\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\",\"reasoning_content\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":13,\"completion_tokens\":150,\"total_tokens\":163,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":140},\"prompt_cache_hit_tokens\":0,\"prompt_cache_miss_tokens\":13}}\n\n",
            "data: [DONE]\n\n",
        );
        assert_eq!(
            decode(stream),
            vec![
                thinking("Okay, the user"),
                thinking(" says hi."),
                text("Hi!"),
                usage(13, 150, 0),
                StreamEvent::Finish(FinishReason::Stop),
            ]
        );
    }

    #[test]
    fn openrouter_reasoning_with_comments_and_cache_hit_fallback() {
        let stream = concat!(
            ": OPENROUTER PROCESSING\n\n",
            "data: {\"id\":\"gen-1744\",\"provider\":\"Fireworks\",\"model\":\"deepseek/deepseek-r1\",\"object\":\"chat.completion.chunk\",\"created\":1744000000,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"reasoning\":\"Let me think\"},\"finish_reason\":null,\"native_finish_reason\":null,\"logprobs\":null}]}\n\n",
            ": OPENROUTER PROCESSING\n\n",
            "data: {\"id\":\"gen-1744\",\"provider\":\"Fireworks\",\"model\":\"deepseek/deepseek-r1\",\"object\":\"chat.completion.chunk\",\"created\":1744000000,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"42\",\"reasoning\":null},\"finish_reason\":null,\"native_finish_reason\":null,\"logprobs\":null}]}\n\n",
            "data: {\"id\":\"gen-1744\",\"provider\":\"Fireworks\",\"model\":\"deepseek/deepseek-r1\",\"object\":\"chat.completion.chunk\",\"created\":1744000000,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":\"length\",\"native_finish_reason\":\"length\",\"logprobs\":null}]}\n\n",
            "data: {\"id\":\"gen-1744\",\"provider\":\"Fireworks\",\"model\":\"deepseek/deepseek-r1\",\"object\":\"chat.completion.chunk\",\"created\":1744000000,\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":9,\"total_tokens\":49,\"prompt_cache_hit_tokens\":32}}\n\n",
            "data: [DONE]\n\n",
        );
        assert_eq!(
            decode(stream),
            vec![
                thinking("Let me think"),
                text("42"),
                usage(8, 9, 32),
                StreamEvent::Finish(FinishReason::Length),
            ]
        );
    }

    #[test]
    fn reasoning_sent_under_both_names_is_not_doubled() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\"hmm\",\"reasoning_content\":\"hmm\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n",
        );
        assert_eq!(
            decode(stream),
            vec![thinking("hmm"), StreamEvent::Finish(FinishReason::Stop)]
        );
    }

    /// Two parallel calls, their pieces interleaved, as OpenAI streams them.
    const TOOLS_STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-T1\",\"object\":\"chat.completion.chunk\",\"created\":1726000001,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_DdmO9pD3xa9XTPNJ32zg2hcA\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}],\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-T1\",\"object\":\"chat.completion.chunk\",\"created\":1726000001,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"lo\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-T1\",\"object\":\"chat.completion.chunk\",\"created\":1726000001,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"cation\\\": \\\"Par\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-T1\",\"object\":\"chat.completion.chunk\",\"created\":1726000001,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_Hq7Zr0bX2mVfL4cNn8TtYw3K\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-T1\",\"object\":\"chat.completion.chunk\",\"created\":1726000001,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"{\\\"tz\\\":\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-T1\",\"object\":\"chat.completion.chunk\",\"created\":1726000001,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"is\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-T1\",\"object\":\"chat.completion.chunk\",\"created\":1726000001,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\" \\\"Europe/Paris\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-T1\",\"object\":\"chat.completion.chunk\",\"created\":1726000001,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-T1\",\"object\":\"chat.completion.chunk\",\"created\":1726000001,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":85,\"completion_tokens\":46,\"total_tokens\":131,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn parallel_tool_calls_assembled_by_index() {
        assert_eq!(
            decode(TOOLS_STREAM),
            vec![
                tool(
                    "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                    "get_weather",
                    "{\"location\": \"Paris\"}"
                ),
                tool(
                    "call_Hq7Zr0bX2mVfL4cNn8TtYw3K",
                    "get_time",
                    "{\"tz\": \"Europe/Paris\"}"
                ),
                usage(85, 46, 0),
                StreamEvent::Finish(FinishReason::ToolCalls),
            ]
        );
    }

    #[test]
    fn tool_call_with_empty_arguments_gets_an_empty_object_and_bad_json_stays_raw() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"broken\",\"arguments\":\"{not json\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"now\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: [DONE]\n\n",
        );
        assert_eq!(
            decode(stream),
            vec![
                tool("call_a", "now", "{}"),
                tool("call_b", "broken", "{not json"),
                StreamEvent::Finish(FinishReason::ToolCalls),
            ]
        );
    }

    #[test]
    fn tool_calls_without_finish_reason_are_emitted_at_done() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"id\":\"call_x\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":{\"a\":1}}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"id\":\"call_y\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: [DONE]\n\n",
        );
        assert_eq!(
            decode(stream),
            vec![
                tool("call_x", "f", "{\"a\":1}"),
                tool("call_y", "g", "{}"),
                StreamEvent::Finish(FinishReason::ToolCalls),
            ]
        );
    }

    #[test]
    fn error_object_in_stream_ends_it() {
        let stream = concat!(
            "data: {\"id\":\"chatcmpl-E\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hal\"},\"finish_reason\":null}]}\n\n",
            "data: {\"error\":{\"message\":\"The server had an error while processing your request. Sorry about that!\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
            "data: {\"id\":\"chatcmpl-E\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"f\"},\"finish_reason\":null}]}\n\n",
            "data: [DONE]\n\n",
        );
        let events = decode(stream);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0], text("Hal"));
        match &events[1] {
            StreamEvent::Error(err) => {
                assert_eq!(err.kind, UpstreamErrorKind::Server);
                assert_eq!(
                    err.message,
                    "The server had an error while processing your request. Sorry about that!"
                );
                assert_eq!(err.status, None);
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn error_objects_are_classified() {
        let cases = [
            ("{\"error\":{\"message\":\"This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.\",\"type\":\"invalid_request_error\",\"param\":\"messages\",\"code\":\"context_length_exceeded\"}}", UpstreamErrorKind::ContextTooLong),
            ("{\"error\":{\"message\":\"Rate limit reached for gpt-4o-mini. Please try again in 1.5s.\",\"type\":\"tokens\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}", UpstreamErrorKind::RateLimited),
            ("{\"id\":\"gen-1\",\"object\":\"chat.completion.chunk\",\"error\":{\"code\":\"server_error\",\"message\":\"Provider disconnected unexpectedly\"},\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}", UpstreamErrorKind::Server),
            ("{\"error\":{\"code\":502,\"message\":\"Bad gateway\"}}", UpstreamErrorKind::Server),
            ("{\"error\":{\"object\":\"error\",\"message\":\"invalid tool schema\",\"type\":\"BadRequestError\",\"code\":400}}", UpstreamErrorKind::BadRequest),
            ("{\"error\":{\"message\":\"Incorrect API key provided\",\"type\":\"invalid_request_error\",\"code\":\"invalid_api_key\"}}", UpstreamErrorKind::Auth),
            ("{\"error\":\"model is overloaded, please try again later\"}", UpstreamErrorKind::Overloaded),
            ("{\"error\":{\"message\":\"something odd\"}}", UpstreamErrorKind::Server),
        ];
        for (chunk, kind) in cases {
            let stream = format!("data: {chunk}\n\ndata: [DONE]\n\n");
            assert_eq!(error_kind(&decode(&stream)), Some(kind), "{chunk}");
        }
        let rate = format!("data: {}\n\n", cases[1].0);
        match decode(&rate).first() {
            Some(StreamEvent::Error(err)) => assert_eq!(err.retry_after_ms, Some(1500)),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn stream_cut_before_finish_is_malformed() {
        let cut = TEXT_STREAM.split("data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1726000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_483d39d857\",\"choices\":[{\"index\":0,\"delta\":{},").next().unwrap_or("");
        let events = decode(cut);
        assert_eq!(events.len(), 3);
        match events.last() {
            Some(StreamEvent::Error(err)) => {
                assert_eq!(err.kind, UpstreamErrorKind::Malformed);
                assert_eq!(err.message, "stream ended without [DONE]");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn missing_done_after_finish_reason_is_accepted() {
        let without_done = TEXT_STREAM.replace("data: [DONE]\n\n", "");
        assert_eq!(decode(&without_done), decode(TEXT_STREAM));
        let tools_without_done = TOOLS_STREAM.replace("data: [DONE]\n\n", "");
        assert_eq!(decode(&tools_without_done), decode(TOOLS_STREAM));
    }

    #[test]
    fn malformed_json_is_reported_once_then_silence() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"more\"},\"finish_reason\":null}]}\n\n",
            "data: not json either\n\n",
        );
        let events = decode(stream);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0], text("ok"));
        assert_eq!(error_kind(&events), Some(UpstreamErrorKind::Malformed));
    }

    #[test]
    fn finish_is_emitted_once() {
        let doubled = format!("{TEXT_STREAM}data: [DONE]\n\n");
        let events = decode(&doubled);
        let finishes = events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Finish(_)))
            .count();
        assert_eq!(finishes, 1);
        assert!(check_invariants(&events).is_ok());
    }

    #[test]
    fn finish_reasons_map() {
        for (wire, ours) in [
            ("stop", FinishReason::Stop),
            ("length", FinishReason::Length),
            ("tool_calls", FinishReason::ToolCalls),
            ("function_call", FinishReason::ToolCalls),
            ("content_filter", FinishReason::Other),
        ] {
            let stream = format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"{wire}\"}}]}}\n\ndata: [DONE]\n\n"
            );
            assert_eq!(decode(&stream), vec![StreamEvent::Finish(ours)], "{wire}");
        }
    }

    #[test]
    fn build_request_maps_history_and_options() {
        let messages = vec![
            ChatMessage::System {
                content: "Be brief.".into(),
            },
            ChatMessage::User {
                content: "Weather in Paris?".into(),
            },
            ChatMessage::Assistant {
                content: String::new(),
                thinking: Some(crate::llm::Thinking {
                    text: "need the tool".into(),
                    signature: None,
                }),
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: "{\"location\":\"Paris\"}".into(),
                }],
            },
            ChatMessage::Tool {
                tool_call_id: "call_1".into(),
                name: "get_weather".into(),
                content: "18C, cloudy".into(),
                is_error: false,
            },
            ChatMessage::Assistant {
                content: "18C and cloudy.".into(),
                thinking: None,
                tool_calls: vec![],
            },
        ];
        let tools = vec![ToolSpec {
            name: "get_weather".into(),
            description: "Current weather".into(),
            parameters: json!({"type":"object","properties":{"location":{"type":"string"}}}),
        }];
        let spec = CallSpec {
            base_url: "https://api.openai.com/v1/",
            api_key: Some("sk-test"),
            model: "gpt-4o-mini",
            messages: &messages,
            tools: &tools,
            thinking: ThinkingLevel::Low,
            max_tokens: 1024,
        };
        let req = build_request(&spec);
        assert_eq!(req.url, "https://api.openai.com/v1/chat/completions");
        assert!(req
            .headers
            .contains(&("authorization".to_string(), "Bearer sk-test".to_string())));
        assert!(req
            .headers
            .contains(&("accept".to_string(), "text/event-stream".to_string())));
        assert!(req
            .headers
            .contains(&("content-type".to_string(), "application/json".to_string())));
        let body: Value = serde_json::from_str(&req.body).unwrap_or(Value::Null);
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o-mini",
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": 1024,
                "reasoning_effort": "low",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "18C, cloudy"},
                    {"role": "assistant", "content": "18C and cloudy."},
                ],
                "tools": [{"type": "function", "function": {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parameters": {"type":"object","properties":{"location":{"type":"string"}}},
                }}],
            })
        );
    }

    #[test]
    fn build_request_leaves_out_optional_parts() {
        let messages = vec![ChatMessage::User {
            content: "hi".into(),
        }];
        let spec = CallSpec {
            base_url: "http://localhost:11434/v1",
            api_key: None,
            model: "llama3.2",
            messages: &messages,
            tools: &[],
            thinking: ThinkingLevel::Off,
            max_tokens: 0,
        };
        let req = build_request(&spec);
        assert_eq!(req.url, "http://localhost:11434/v1/chat/completions");
        assert!(!req.headers.iter().any(|(k, _)| k == "authorization"));
        let body: Value = serde_json::from_str(&req.body).unwrap_or(Value::Null);
        for absent in ["tools", "reasoning_effort", "max_tokens"] {
            assert!(body.get(absent).is_none(), "{absent}");
        }
        assert_eq!(body["messages"], json!([{"role":"user","content":"hi"}]));
    }

    #[test]
    fn reasoning_effort_follows_what_the_model_takes() {
        let messages = vec![ChatMessage::User {
            content: "hi".into(),
        }];
        let effort = |model: &str, thinking: ThinkingLevel| {
            let spec = CallSpec {
                base_url: "https://api.openai.com/v1",
                api_key: None,
                model,
                messages: &messages,
                tools: &[],
                thinking,
                max_tokens: 0,
            };
            let body: Value = serde_json::from_str(&build_request(&spec).body).unwrap();
            body["reasoning_effort"].clone()
        };
        assert_eq!(effort("gpt-5.2", ThinkingLevel::Xhigh), json!("xhigh"));
        assert_eq!(effort("gpt-5", ThinkingLevel::Xhigh), json!("high"));
        assert_eq!(effort("o4-mini", ThinkingLevel::Minimal), json!("low"));
        assert_eq!(effort("gpt-5", ThinkingLevel::Minimal), json!("minimal"));
    }

    #[test]
    fn classify_error_by_status_and_body() {
        let e = classify_error(401, None, "{\"error\":{\"message\":\"Incorrect API key provided: sk-abc.\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"invalid_api_key\"}}");
        assert_eq!(e.kind, UpstreamErrorKind::Auth);
        assert_eq!(e.message, "Incorrect API key provided: sk-abc.");
        assert_eq!(e.status, Some(401));

        let e = classify_error(403, None, "forbidden");
        assert_eq!(e.kind, UpstreamErrorKind::Auth);

        let e = classify_error(429, Some("2"), "{\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}");
        assert_eq!(e.kind, UpstreamErrorKind::RateLimited);
        assert_eq!(e.retry_after_ms, Some(2000));

        let e = classify_error(429, None, "{\"error\":{\"message\":\"Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000, Requested 1500. Please try again in 1.5s. Visit https://platform.openai.com/account/rate-limits to learn more.\",\"type\":\"tokens\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}");
        assert_eq!(e.retry_after_ms, Some(1500));

        let e = classify_error(
            429,
            Some("Wed, 21 Oct 2015 07:28:00 GMT"),
            "{\"error\":{\"message\":\"slow down\"}}",
        );
        assert_eq!(e.kind, UpstreamErrorKind::RateLimited);
        assert_eq!(e.retry_after_ms, None);

        let e = classify_error(400, None, "{\"error\":{\"message\":\"This model's maximum context length is 128000 tokens. However, your messages resulted in 200000 tokens. Please reduce the length of the messages.\",\"type\":\"invalid_request_error\",\"param\":\"messages\",\"code\":\"context_length_exceeded\"}}");
        assert_eq!(e.kind, UpstreamErrorKind::ContextTooLong);

        let e = classify_error(413, None, "request has too many tokens");
        assert_eq!(e.kind, UpstreamErrorKind::ContextTooLong);

        let e = classify_error(422, None, "{\"error\":{\"message\":\"Unknown parameter: 'foo'.\",\"type\":\"invalid_request_error\"}}");
        assert_eq!(e.kind, UpstreamErrorKind::BadRequest);

        let e = classify_error(
            404,
            None,
            "{\"error\":\"model \\\"llama9\\\" not found, try pulling it first\"}",
        );
        assert_eq!(e.kind, UpstreamErrorKind::BadRequest);
        assert_eq!(
            e.message,
            "model \"llama9\" not found, try pulling it first"
        );

        let e = classify_error(503, Some("5"), "{\"error\":{\"message\":\"The engine is currently overloaded, please try again later\",\"type\":\"server_error\"}}");
        assert_eq!(e.kind, UpstreamErrorKind::Overloaded);
        assert_eq!(e.retry_after_ms, Some(5000));

        let e = classify_error(529, None, "");
        assert_eq!(e.kind, UpstreamErrorKind::Overloaded);
        assert_eq!(e.message, "HTTP 529");

        let e = classify_error(502, None, "<html><body>Bad Gateway</body></html>");
        assert_eq!(e.kind, UpstreamErrorKind::Server);
        assert_eq!(e.message, "<html><body>Bad Gateway</body></html>");
    }

    #[test]
    fn classify_error_truncates_long_bodies_on_char_boundaries() {
        let body = "\u{e9}".repeat(1000);
        let e = classify_error(500, None, &body);
        assert_eq!(e.message.chars().count(), 300);
        assert!(e.message.chars().all(|c| c == '\u{e9}'));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..1024), size in 1usize..64) {
            let events = run(&mut OpenAiDecoder::new(), &input, size);
            prop_assert!(check_invariants(&events).is_ok());
        }

        #[test]
        fn arbitrary_chunks_never_panic(
            chunks in prop::collection::vec(prop_oneof![4 => arb_chunk(), 1 => arb_json(WORDS)], 0..12),
            done in any::<bool>(),
        ) {
            let mut stream = String::new();
            for c in &chunks {
                stream.push_str("data: ");
                stream.push_str(&c.to_string());
                stream.push_str("\n\n");
            }
            if done {
                stream.push_str("data: [DONE]\n\n");
            }
            let events = run(&mut OpenAiDecoder::new(), stream.as_bytes(), stream.len());
            prop_assert!(check_invariants(&events).is_ok(), "{:?}", events);
            let errored = events.iter().any(|e| matches!(e, StreamEvent::Error(_)));
            if done && !errored {
                prop_assert!(matches!(events.last(), Some(StreamEvent::Finish(_))), "{:?}", events);
            }
            for e in &events {
                if let StreamEvent::ToolCall(call) = e {
                    prop_assert!(!call.id.is_empty() && !call.arguments.trim().is_empty());
                }
            }
        }

        #[test]
        fn classify_error_never_panics(status in any::<u16>(), retry in any::<Option<String>>(), body in any::<String>()) {
            let e = classify_error(status, retry.as_deref(), &body);
            prop_assert!(e.message.chars().count() <= 300);
        }
    }

    /// A `tool_calls[]` piece with each field present, absent or odd.
    fn arb_tool_delta() -> impl Strategy<Value = Value> {
        (
            field((0u64..4).prop_map(Value::from), WORDS),
            field(word(WORDS), WORDS),
            field(word(WORDS), WORDS),
            field(word(WORDS), WORDS),
        )
            .prop_map(|(index, id, name, arguments)| {
                let function = object(vec![("name", name), ("arguments", arguments)]);
                object(vec![
                    ("index", index),
                    ("id", id),
                    ("type", Some(json!("function"))),
                    ("function", Some(function)),
                ])
            })
    }

    /// A chunk shaped like the real ones, its fields present, absent or odd.
    fn arb_chunk() -> impl Strategy<Value = Value> {
        let delta = (
            field(word(WORDS), WORDS),
            field(word(WORDS), WORDS),
            field(word(WORDS), WORDS),
            field(
                prop::collection::vec(arb_tool_delta(), 0..3).prop_map(Value::Array),
                WORDS,
            ),
        )
            .prop_map(|(content, reasoning, reasoning_content, tool_calls)| {
                object(vec![
                    ("content", content),
                    ("reasoning", reasoning),
                    ("reasoning_content", reasoning_content),
                    ("tool_calls", tool_calls),
                ])
            });
        let choice = (delta, field(word(WORDS), WORDS)).prop_map(|(delta, finish)| {
            object(vec![("delta", Some(delta)), ("finish_reason", finish)])
        });
        let usage = (
            field(count(), WORDS),
            field(count(), WORDS),
            field(count(), WORDS),
        )
            .prop_map(|(prompt, completion, cached)| {
                object(vec![
                    ("prompt_tokens", prompt),
                    ("completion_tokens", completion),
                    (
                        "prompt_tokens_details",
                        Some(object(vec![("cached_tokens", cached)])),
                    ),
                ])
            });
        (
            field(
                prop::collection::vec(choice, 0..2).prop_map(Value::Array),
                WORDS,
            ),
            field(usage, WORDS),
            prop::option::weighted(0.05, arb_json(WORDS)),
        )
            .prop_map(|(choices, usage, error)| {
                object(vec![
                    ("choices", choices),
                    ("usage", usage),
                    ("error", error),
                ])
            })
    }

    /// Keys and values the decoder looks at, for [`arb_json`].
    const WORDS: &[&str] = &[
        "choices",
        "delta",
        "content",
        "reasoning",
        "reasoning_content",
        "refusal",
        "tool_calls",
        "index",
        "id",
        "function",
        "name",
        "arguments",
        "finish_reason",
        "usage",
        "prompt_tokens",
        "completion_tokens",
        "prompt_tokens_details",
        "cached_tokens",
        "prompt_cache_hit_tokens",
        "error",
        "message",
        "type",
        "code",
        "x_groq",
        "stop",
        "length",
        "tool_calls",
        "[DONE]",
        "",
    ];
}
