//! How a turn shows on the wire and in storage: the user message's metadata and `message:ack`, the stored reply, `agent:end`, and the end of a turn that reached no model.

use super::{assistant_metadata, Metrics, StopReason, TokenCounts, Turn, TurnUsage};
use crate::error::RoomError;
use crate::llm::{ChatMessage, UpstreamError};
use serde_json::{json, Value};

/// Largest metadata text of a stored reply; past it the replayable context is dropped (and the
/// metadata says so), then the tool calls' structured content, so the row stays storable.
pub const MAX_METADATA_BYTES: usize = 400_000;

/// The assistant message to store: its content and metadata text.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReply {
    pub content: String,
    pub metadata: String,
}

/// What opens a turn whose user message is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// `session:info`: the model, thinking level and routing the turn runs with.
    SessionInfo,
    /// `message:ack` (and the sender's socket.io ack).
    Ack,
    /// `agent:start`; the model call follows.
    Start,
    /// The turn cannot start: `error` ("Failed to start agent session. Please try again."), then
    /// `agent:end`.
    StartFailed,
}

/// The events that open a turn, in the reference gateway's order: `session:info`, then
/// `message:ack`, then `agent:start`. `planned`: the turn's plan was made (its history could be
/// read), so its session is known; `callable`: a configured provider can serve it. A turn that
/// cannot start still acknowledges its message, which is stored.
pub fn opening(planned: bool, callable: bool) -> &'static [Opening] {
    use Opening::*;
    match (planned, callable) {
        (true, true) => &[SessionInfo, Ack, Start],
        (true, false) => &[SessionInfo, Ack, StartFailed],
        (false, _) => &[Ack, StartFailed],
    }
}

/// The stored user message's metadata.
pub fn user_metadata(now_iso: &str, client_message_id: Option<&str>) -> String {
    let mut m = json!({ "timestamp": now_iso });
    if let Some(c) = client_message_id {
        m["clientMessageId"] = Value::String(c.to_string());
    }
    m.to_string()
}

/// The `message:ack` payload; `duplicate` for a resend of a message stored already.
pub fn ack_payload(
    conversation: &str,
    message_id: &str,
    client_message_id: Option<&str>,
    duplicate: bool,
) -> String {
    let mut ack = json!({ "conversationId": conversation, "messageId": message_id });
    if let Some(c) = client_message_id {
        ack["clientMessageId"] = Value::String(c.to_string());
    }
    if duplicate {
        ack["duplicate"] = Value::Bool(true);
    }
    ack.to_string()
}

/// The reply a turn stores, or `None` when it produced nothing worth a row (a clean stop
/// without text or tools). Aborted, failed and cut turns are always stored, so the history
/// says what happened.
pub fn stored_reply(
    turn: &Turn,
    usage: &TurnUsage,
    stop: StopReason,
    error: Option<&UpstreamError>,
    now_iso: &str,
) -> Option<StoredReply> {
    let store_it = !turn.text.is_empty()
        || !turn.tool_records.is_empty()
        || matches!(
            stop,
            StopReason::Aborted
                | StopReason::Error
                | StopReason::Truncated
                | StopReason::Interrupted
        );
    if !store_it {
        return None;
    }
    let mut metadata = assistant_metadata(now_iso, usage, turn, stop, error);
    if replays_context(turn) {
        // Tool steps and signed thinking replay to the model on resume.
        metadata["context"] = serde_json::to_value(&turn.new_context).unwrap_or(Value::Null);
    }
    let (content, cut) = crate::store::fit_content(&turn.text);
    if cut {
        metadata["truncatedForStorage"] =
            json!({ "storedBytes": content.len(), "totalBytes": turn.text.len() });
    }
    let mut text = metadata.to_string();
    if text.len() > MAX_METADATA_BYTES {
        // Oversized tool arguments or steps: keep the row storable, say so.
        metadata.as_object_mut().map(|m| m.remove("context"));
        metadata["contextDropped"] = Value::Bool(true);
        text = metadata.to_string();
    }
    if text.len() > MAX_METADATA_BYTES {
        let calls = metadata["toolCalls"].as_array_mut().into_iter().flatten();
        for call in calls.filter_map(Value::as_object_mut) {
            call.remove("structuredContent");
        }
        text = metadata.to_string();
    }
    Some(StoredReply {
        content: content.into_owned(),
        metadata: text,
    })
}

/// Whether the stored reply must carry the turn's context: more than one step, or thinking
/// with a signature the provider needs back.
fn replays_context(turn: &Turn) -> bool {
    turn.new_context.len() > 1
        || turn.new_context.iter().any(|m| {
            matches!(
                m,
                ChatMessage::Assistant {
                    thinking: Some(_),
                    ..
                }
            )
        })
}

/// `agent:end.usage` as the reference gateway builds it from the session's statistics: `tokens`
/// and `cost` (a number, USD) are the conversation's running totals, `metrics` once this turn is
/// counted in. A turn whose cost is unknown adds nothing to `cost` and is counted in
/// `unpricedTurns`; `turn` holds this turn's own tokens and cost breakdown (`null` when unknown).
pub fn end_usage(usage: &TurnUsage, metrics: &Metrics) -> Value {
    json!({
        "provider": usage.provider,
        "modelId": usage.model_id,
        "thinkingLevel": usage.thinking_level,
        "tokens": TokenCounts::from(metrics.tokens),
        "cost": metrics.cost_usd,
        "unpricedTurns": metrics.unpriced_turns,
        "context": usage.context,
        "turn": { "tokens": usage.tokens, "cost": usage.cost },
    })
}

/// The `agent:end` payload of a turn that reached a model; `metrics` already count it.
pub fn end_payload(
    conversation: &str,
    usage: &TurnUsage,
    metrics: &Metrics,
    stop: StopReason,
    error: Option<&UpstreamError>,
) -> String {
    let usage = end_usage(usage, metrics);
    let mut end =
        json!({ "conversationId": conversation, "usage": usage, "stopReason": stop.as_str() });
    if let Some(e) = error {
        end["error"] =
            json!({ "code": e.kind.code(), "message": crate::llm::redact::redact(&e.message) });
    }
    end.to_string()
}

/// The `agent:end` payload of a turn that ended before any model call (clients wait for it);
/// its `error.message` is the gateway's own reason (the `error` event's `detail`, if it has one).
pub fn early_end_payload(conversation: &str, error: &RoomError) -> String {
    let message = error.detail().unwrap_or(error.message());
    json!({ "conversationId": conversation, "stopReason": StopReason::Error.as_str(), "error": { "code": error.code().as_str(), "message": message } }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::conversation::turn_usage;
    use crate::llm::{StreamEvent, Thinking, ThinkingLevel, ToolCall, UpstreamErrorKind};
    use crate::protocol::ErrorCode;

    fn usage(turn: &Turn) -> TurnUsage {
        turn_usage(
            &Catalog::builtin(),
            "echo",
            "echo",
            ThinkingLevel::Off,
            turn,
        )
    }

    fn answered(text: &str) -> Turn {
        let mut t = Turn::default();
        t.begin_step();
        t.on_stream_event(StreamEvent::Text(text.into()));
        t.end_step(4);
        t
    }

    #[test]
    fn a_turn_opens_in_the_reference_gateways_order() {
        use Opening::*;
        assert_eq!(opening(true, true), [SessionInfo, Ack, Start]);
        // Whatever happens, the stored message is acknowledged, and never before session:info
        // when the session is known.
        assert_eq!(opening(true, false), [SessionInfo, Ack, StartFailed]);
        assert_eq!(opening(false, true), [Ack, StartFailed]);
        assert_eq!(opening(false, false), [Ack, StartFailed]);
    }

    #[test]
    fn acks_name_the_client_id_and_say_duplicate_only_for_resends() {
        let a: Value = serde_json::from_str(&ack_payload("c", "m", Some("k"), false)).unwrap();
        assert_eq!(
            a,
            json!({ "conversationId": "c", "messageId": "m", "clientMessageId": "k" })
        );
        let d: Value = serde_json::from_str(&ack_payload("c", "m", Some("k"), true)).unwrap();
        assert_eq!(d["duplicate"], true);
        assert_eq!(
            ack_payload("c", "m", None, false),
            r#"{"conversationId":"c","messageId":"m"}"#
        );
        assert_eq!(
            user_metadata("T", Some("k")),
            r#"{"clientMessageId":"k","timestamp":"T"}"#
        );
    }

    #[test]
    fn a_clean_stop_without_output_stores_nothing_but_an_abort_does() {
        let empty = Turn::default();
        let u = usage(&empty);
        assert!(stored_reply(&empty, &u, StopReason::Stop, None, "T").is_none());
        let r = stored_reply(&empty, &u, StopReason::Aborted, None, "T").unwrap();
        let m: Value = serde_json::from_str(&r.metadata).unwrap();
        assert_eq!(
            (m["aborted"].clone(), m["stopReason"].clone()),
            (json!(true), json!("aborted"))
        );
    }

    #[test]
    fn a_single_text_step_stores_no_context_but_tools_and_thinking_do() {
        let plain = answered("hello");
        let r = stored_reply(&plain, &usage(&plain), StopReason::Stop, None, "T").unwrap();
        assert_eq!(r.content, "hello");
        assert!(!r.metadata.contains("\"context\""));

        let mut tools = Turn::default();
        tools.begin_step();
        let call = ToolCall {
            id: "t1".into(),
            name: "lookup".into(),
            arguments: "{\"q\":1}".into(),
        };
        tools.on_stream_event(StreamEvent::ToolCall(call.clone()));
        tools.end_step(4);
        tools.record_tool_result(&call, "42".into(), false);
        let r = stored_reply(&tools, &usage(&tools), StopReason::Stop, None, "T").unwrap();
        let m: Value = serde_json::from_str(&r.metadata).unwrap();
        assert_eq!(m["context"].as_array().unwrap().len(), 2);
        assert_eq!(m["toolCalls"][0]["args"], json!({ "q": 1 }));

        let mut thought = Turn {
            text: "x".into(),
            ..Turn::default()
        };
        thought.new_context.push(ChatMessage::Assistant {
            content: "x".into(),
            thinking: Some(Thinking {
                text: "hmm".into(),
                signature: Some("sig".into()),
            }),
            tool_calls: Vec::new(),
        });
        let r = stored_reply(&thought, &usage(&thought), StopReason::Stop, None, "T").unwrap();
        assert!(r.metadata.contains("\"signature\":\"sig\""));
    }

    #[test]
    fn an_oversized_context_is_dropped_and_said() {
        let mut t = Turn {
            text: "x".into(),
            ..Turn::default()
        };
        for i in 0..3 {
            t.new_context.push(ChatMessage::Tool {
                tool_call_id: format!("t{i}"),
                name: "big".into(),
                content: "y".repeat(MAX_METADATA_BYTES / 2),
                is_error: false,
            });
        }
        let r = stored_reply(&t, &usage(&t), StopReason::Stop, None, "T").unwrap();
        assert!(r.metadata.len() < MAX_METADATA_BYTES);
        let m: Value = serde_json::from_str(&r.metadata).unwrap();
        assert_eq!(m["contextDropped"], true);
        assert!(m.get("context").is_none());
    }

    #[test]
    fn many_structured_results_are_dropped_from_an_oversized_record() {
        let mut t = Turn::default();
        t.begin_step();
        let big =
            json!({ "rows": "z".repeat(crate::conversation::MAX_RECORDED_STRUCTURED_BYTES - 20) });
        for i in 0..30 {
            let call = crate::llm::ToolCall {
                id: format!("t{i}"),
                name: "mcp__rows".into(),
                arguments: "{}".into(),
            };
            t.record_tool_outcome(
                &call,
                crate::conversation::ToolOutcome {
                    text: "rows".into(),
                    is_error: false,
                    structured: Some(big.clone()),
                },
            );
        }
        assert!(t
            .tool_records
            .iter()
            .all(|r| r.structured_content.is_some()));
        let r = stored_reply(&t, &usage(&t), StopReason::Stop, None, "T").unwrap();
        assert!(r.metadata.len() < MAX_METADATA_BYTES);
        let m: Value = serde_json::from_str(&r.metadata).unwrap();
        assert_eq!(m["toolCalls"].as_array().unwrap().len(), 30);
        assert!(m["toolCalls"][0].get("structuredContent").is_none());
    }

    /// A turn of `input` prompt and `output` generated tokens, as a provider reports them.
    fn reported(input: u64, output: u64, cache_read: u64) -> Turn {
        let mut t = Turn::default();
        t.begin_step();
        t.on_stream_event(StreamEvent::Text("x".into()));
        t.on_stream_event(StreamEvent::Usage(crate::llm::Usage {
            input,
            output,
            cache_read,
            cache_write: 0,
        }));
        t.end_step(4);
        t
    }

    #[test]
    fn end_usage_is_the_running_total_with_the_turn_apart() {
        let catalog = Catalog::builtin();
        let priced =
            |t: &Turn| turn_usage(&catalog, "openai", "gpt-4o-mini", ThinkingLevel::Off, t);
        let mut metrics = Metrics::default();
        let first = priced(&reported(1_000_000, 0, 0));
        metrics.record_turn(&first);
        let second_turn = reported(0, 1_000_000, 1_000);
        let second = priced(&second_turn);
        metrics.record_turn(&second);
        let u = end_usage(&second, &metrics);
        assert_eq!(
            u["tokens"],
            json!({ "input": 1_000_000, "output": 1_000_000, "cacheRead": 1_000, "cacheWrite": 0, "total": 2_001_000 })
        );
        // $0.15 input + $0.60 output + 1,000 cached at $0.075 per million.
        let cost = u["cost"].as_f64().expect("cost is a number");
        assert!((cost - (0.15 + 0.60 + 0.000075)).abs() < 1e-12, "{cost}");
        assert_eq!(u["unpricedTurns"], 0);
        assert_eq!(u["turn"]["tokens"]["output"], 1_000_000);
        assert_eq!(u["turn"]["tokens"]["input"], 0);
        assert!((u["turn"]["cost"]["total"].as_f64().unwrap() - (0.60 + 0.000075)).abs() < 1e-12);
        assert_eq!(u["context"], json!({ "percent": 0.78, "window": 128_000 }));
        assert_eq!(
            (
                u["provider"].clone(),
                u["modelId"].clone(),
                u["thinkingLevel"].clone()
            ),
            (json!("openai"), json!("gpt-4o-mini"), json!("off"))
        );

        // A model without prices: the total stays a number, the turn's cost is null, and the
        // turn is counted as unpriced.
        let unknown = turn_usage(
            &catalog,
            "openai",
            "house",
            ThinkingLevel::Off,
            &second_turn,
        );
        metrics.record_turn(&unknown);
        let u = end_usage(&unknown, &metrics);
        assert!((u["cost"].as_f64().unwrap() - cost).abs() < 1e-12);
        assert_eq!(u["unpricedTurns"], 1);
        assert_eq!(u["turn"]["cost"], Value::Null);
        assert_eq!(u["context"], json!({ "percent": null, "window": 0 }));
        assert_eq!(u["tokens"]["total"], 3_002_000);
    }

    #[test]
    fn end_payloads_carry_the_stop_reason_and_a_redacted_error() {
        let t = answered("hi");
        let e = UpstreamError::new(
            UpstreamErrorKind::Network,
            "reset with key sk-abcdefghijklmnopqrstuvwxyz123456",
        );
        let v: Value = serde_json::from_str(&end_payload(
            "c",
            &usage(&t),
            &Metrics::default(),
            StopReason::Truncated,
            Some(&e),
        ))
        .unwrap();
        assert_eq!(v["stopReason"], "truncated");
        assert_eq!(v["error"]["code"], "upstream_error");
        assert!(!v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("abcdefghijklmnopqrstuvwxyz"));
        assert_eq!(v["usage"]["modelId"], "echo");
        let early = RoomError::client(ErrorCode::ProviderNotConfigured, "no provider");
        let v: Value = serde_json::from_str(&early_end_payload("c", &early)).unwrap();
        assert_eq!(
            v,
            json!({ "conversationId": "c", "stopReason": "error", "error": { "code": "provider_not_configured", "message": "no provider" } })
        );
        // A turn that could not start says why in agent:end, not the reference gateway's text.
        let v: Value =
            serde_json::from_str(&early_end_payload("c", &RoomError::start_failed(early))).unwrap();
        assert_eq!(v["error"]["message"], "no provider");
    }
}
