//! A running turn's progress kept in the conversation's own storage, in bounded batches and never per delta, and the reply rebuilt from it when the object died mid-turn.
//!
//! Two records: the stream events the turn sent (appended in batches: every `every_ms` or
//! `every_bytes`, whichever comes first, and at every step boundary), and the turn's record
//! (completed steps, tool calls and results, usage), written at step boundaries: before a tool
//! runs and as soon as it returns. Recovery never runs anything again; it stores what was shown.

use super::{StreamLog, ToolCallRecord, Turn};
use crate::llm::{ChatMessage, ProviderKind, ToolCall, Usage};
use crate::protocol::OutEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The result a tool call gets when the gateway restarted while it ran.
pub const INTERRUPTED_TOOL: &str =
    "interrupted: the gateway restarted while this tool ran; it may have completed";

/// When a batch of stream events is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    pub every_ms: u64,
    pub every_bytes: usize,
}

/// What to do after an event was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Nothing yet.
    Later,
    /// The first unsaved event: write the batch within this many ms, unless it fills first.
    Within(u64),
    /// The batch is full: write it now.
    Now,
}

/// Which of a running turn's stream events are written, and when the next batch is due.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// A turn runs and its events are kept.
    active: bool,
    /// Events up to this seq are written.
    saved_through: u64,
    unsaved_bytes: usize,
    unsaved_since: Option<i64>,
    /// The turn's record, and whether it changed since it was written.
    record: Option<TurnRecord>,
    record_dirty: bool,
    /// Writes of the running turn.
    turn_writes: u64,
    /// Writes by this instance.
    pub writes: u64,
}

impl Checkpoint {
    /// A turn starts; its events are those after `last_seq`.
    pub fn start(&mut self, last_seq: u64) {
        *self = Checkpoint {
            active: true,
            saved_through: last_seq,
            writes: self.writes,
            ..Checkpoint::default()
        };
    }

    /// A parked turn goes on: its events through `last_seq` and its record were written when
    /// it was parked (so they are deleted when it ends).
    pub fn resume(&mut self, last_seq: u64, record: TurnRecord) {
        self.start(last_seq);
        self.record = Some(record);
        self.turn_writes = 1;
    }

    /// The turn ended; nothing more is kept.
    pub fn stop(&mut self) {
        let writes = self.writes;
        *self = Checkpoint {
            writes,
            ..Checkpoint::default()
        };
    }

    /// The turn's record changed (a step ended, a tool is about to run or returned): it is
    /// written with the next batch, which is due now.
    pub fn set_record(&mut self, record: TurnRecord) {
        self.record = Some(record);
        self.record_dirty = true;
    }

    /// The running turn's record.
    pub fn record(&self) -> Option<&TurnRecord> {
        self.record.as_ref()
    }

    /// The record's text to write, once per change.
    pub fn record_to_save(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.record_dirty) {
            return None;
        }
        self.record
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok())
    }

    /// Writes of the running turn so far.
    pub fn turn_writes(&self) -> u64 {
        self.turn_writes
    }

    /// How long until the unsaved events are due, when some wait.
    pub fn due_in(&self, now_ms: i64, policy: CheckpointPolicy) -> Option<u64> {
        let since = self.unsaved_since.filter(|_| self.active)?;
        Some((policy.every_ms as i64 - (now_ms - since)).max(0) as u64)
    }

    /// Whether a turn's events are being kept.
    pub fn active(&self) -> bool {
        self.active
    }

    /// The last seq written.
    pub fn saved_through(&self) -> u64 {
        self.saved_through
    }

    /// An event of `bytes` was sent at `now_ms`.
    pub fn sent(&mut self, bytes: usize, now_ms: i64, policy: CheckpointPolicy) -> Flush {
        if !self.active {
            return Flush::Later;
        }
        self.unsaved_bytes += bytes;
        if self.unsaved_bytes >= policy.every_bytes {
            return Flush::Now;
        }
        match self.unsaved_since {
            None => {
                self.unsaved_since = Some(now_ms);
                Flush::Within(policy.every_ms)
            }
            Some(since) if now_ms - since >= policy.every_ms as i64 => Flush::Now,
            Some(_) => Flush::Later,
        }
    }

    /// Whether something waits to be written.
    pub fn pending(&self) -> bool {
        self.active && (self.unsaved_since.is_some() || self.unsaved_bytes > 0 || self.record_dirty)
    }

    /// The batch through `seq` was written.
    pub fn saved(&mut self, seq: u64) {
        self.saved_through = self.saved_through.max(seq);
        self.unsaved_bytes = 0;
        self.unsaved_since = None;
        self.writes += 1;
        self.turn_writes += 1;
    }
}

/// What a turn records at its step boundaries: enough to store it if the object dies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TurnRecord {
    /// The id the reply is stored under, whoever stores it (the turn, or a recovery): a reply
    /// copied twice is one row.
    pub reply_id: String,
    pub provider: String,
    pub model: String,
    pub thinking_level: String,
    /// Text of the completed steps.
    pub text_len: usize,
    /// Context of the completed steps and tool results.
    pub context: Vec<ChatMessage>,
    pub tool_records: Vec<ToolCallRecord>,
    pub usage: Usage,
    pub usage_reported: bool,
    pub steps: u32,
    /// The tool call being run when this was written.
    pub running_tool: Option<ToolCall>,
    /// The interrupted reply this turn continues: a continuation that is interrupted in turn
    /// is stored, not continued again.
    pub continues: Option<String>,
}

impl TurnRecord {
    /// The record of `turn` so far, with the tool call about to run (if any).
    pub fn of(base: &TurnRecord, turn: &Turn, running_tool: Option<&ToolCall>) -> TurnRecord {
        TurnRecord {
            text_len: turn.text.len(),
            context: turn.new_context.clone(),
            tool_records: turn.tool_records.clone(),
            usage: turn.usage,
            usage_reported: turn.usage_reported,
            steps: turn.steps,
            running_tool: running_tool.cloned(),
            ..base.clone()
        }
    }
}

/// A stream event as written to storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedEvent {
    pub seq: u64,
    pub name: String,
    pub data: String,
}

/// A batch of events as one stored row (one row written per batch, not per event): its last
/// seq and the JSON array of its events. `None` when there is nothing to write.
pub fn encode_batch<'a>(events: impl IntoIterator<Item = &'a OutEvent>) -> Option<(u64, String)> {
    let saved: Vec<SavedEvent> = events
        .into_iter()
        .filter_map(|e| {
            Some(SavedEvent {
                seq: e.seq?,
                name: e.name.to_string(),
                data: e.data.clone(),
            })
        })
        .collect();
    let last = saved.last()?.seq;
    Some((last, serde_json::to_string(&saved).unwrap_or_default()))
}

/// The events of stored batches, in order; a row that does not parse is skipped.
pub fn decode_batches(rows: &[String]) -> Vec<SavedEvent> {
    let mut events: Vec<SavedEvent> = rows
        .iter()
        .filter_map(|r| crate::store::stored::<Vec<SavedEvent>>(r))
        .flatten()
        .collect();
    events.sort_by_key(|e| e.seq);
    events.dedup_by_key(|e| e.seq);
    events
}

/// A turn rebuilt after its object died.
#[derive(Debug)]
pub struct Recovered {
    pub record: TurnRecord,
    /// What the clients were shown, with the context the history needs.
    pub turn: Turn,
    /// The written events, to replay to clients that reconnect.
    pub events: Vec<OutEvent>,
}

/// Rebuilds an interrupted turn from its record and written events: the text is what the
/// written `agent:text` events showed (the record's completed steps, then the partial step),
/// and a tool that was running is answered as interrupted, so the stored history stays valid.
pub fn recover(record: Option<TurnRecord>, events: &[SavedEvent]) -> Option<Recovered> {
    if record.is_none() && events.is_empty() {
        return None;
    }
    let record = record.unwrap_or_default();
    let mut text = String::new();
    for e in events.iter().filter(|e| e.name == "agent:text") {
        if let Ok(v) = serde_json::from_str::<Value>(&e.data) {
            text.push_str(v["text"].as_str().unwrap_or_default());
        }
    }
    let mut turn = Turn {
        usage: record.usage,
        usage_reported: record.usage_reported,
        steps: record.steps,
        tool_records: record.tool_records.clone(),
        new_context: record.context.clone(),
        ..Turn::default()
    };
    if let Some(call) = &record.running_tool {
        turn.record_tool_result(call, INTERRUPTED_TOOL.to_string(), true);
    } else if text.len() > record.text_len && text.is_char_boundary(record.text_len) {
        // The step that was streaming: its text so far, without the calls it had not finished.
        turn.new_context.push(ChatMessage::Assistant {
            content: text[record.text_len..].to_string(),
            thinking: None,
            tool_calls: Vec::new(),
        });
    }
    turn.text = text;
    let events = events
        .iter()
        .filter_map(|e| {
            let name = crate::protocol::stream_event_name(&e.name)?;
            Some(OutEvent {
                name,
                seq: Some(e.seq),
                data: e.data.clone(),
            })
        })
        .collect();
    Some(Recovered {
        record,
        turn,
        events,
    })
}

/// Whether a turn the gateway stored as interrupted is continued by a new model call
/// (`RESUME_INTERRUPTED_TURNS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePolicy {
    /// Only on Anthropic-compatible providers, whose assistant prefill continues the partial
    /// text where it stopped; elsewhere the model would answer the user message again.
    Auto,
    /// On every provider.
    Always,
    Never,
}

impl ResumePolicy {
    /// `auto`, `on` / `true` / `1`, `off` / `false` / `0`.
    pub fn parse(value: &str) -> Option<ResumePolicy> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(ResumePolicy::Auto),
            "on" | "true" | "1" => Some(ResumePolicy::Always),
            "off" | "false" | "0" => Some(ResumePolicy::Never),
            _ => None,
        }
    }

    /// Whether a turn interrupted on a provider of `kind` is continued.
    pub fn applies(self, kind: ProviderKind) -> bool {
        match self {
            ResumePolicy::Auto => kind == ProviderKind::Anthropic,
            ResumePolicy::Always => true,
            ResumePolicy::Never => false,
        }
    }
}

/// The call that continues a turn stored as interrupted, kept in storage until it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Continuation {
    /// The stored partial reply it continues.
    pub reply_id: String,
    pub provider: String,
    pub model: String,
}

impl Recovered {
    /// The continuation this recovered turn gets under `policy`, its provider being of `kind`
    /// (`None`: no longer configured). A turn that was itself a continuation gets none, so a
    /// turn that kills its object every time is not run forever.
    pub fn continuation(
        &self,
        reply_id: &str,
        policy: ResumePolicy,
        kind: Option<ProviderKind>,
    ) -> Option<Continuation> {
        let r = &self.record;
        let resumable = r.continues.is_none()
            && !r.provider.is_empty()
            && !r.model.is_empty()
            && kind.is_some_and(|k| policy.applies(k));
        resumable.then(|| Continuation {
            reply_id: reply_id.to_string(),
            provider: r.provider.clone(),
            model: r.model.clone(),
        })
    }
}

/// Shapes the context of the call that continues an interrupted turn (the history ends with
/// the stored partial reply). On Anthropic a final assistant message is a prefill the model
/// continues; the API refuses one that ends in whitespace, so it is trimmed, and an empty one
/// is dropped. Elsewhere the partial stays as an ordinary assistant message. Returns whether
/// the call prefills (Anthropic refuses a prefill with extended thinking on: the call runs
/// without it).
pub fn continuation_context(kind: ProviderKind, messages: &mut Vec<ChatMessage>) -> bool {
    if kind != ProviderKind::Anthropic {
        return false;
    }
    let Some(ChatMessage::Assistant {
        content,
        thinking,
        tool_calls,
    }) = messages.last_mut()
    else {
        return false;
    };
    if !tool_calls.is_empty() {
        // A complete step with calls: their results follow, or it is not a prefill.
        return false;
    }
    let kept = content.trim_end().len();
    content.truncate(kept);
    *thinking = None;
    if content.is_empty() {
        messages.pop();
        return false;
    }
    true
}

impl StreamLog {
    /// Puts back an event written before a restart, with its seq.
    pub fn restore(&mut self, event: OutEvent, now_ms: i64) {
        let Some(seq) = event.seq else { return };
        self.next_seq = self.next_seq.max(seq + 1);
        self.bytes += event.data.len() + 64;
        self.events.push_back((now_ms, event));
    }

    /// Numbers the next event `seq` (or later): past any seq a dead instance may have sent.
    pub fn skip_to(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::StreamEvent;

    const POLICY: CheckpointPolicy = CheckpointPolicy {
        every_ms: 500,
        every_bytes: 100,
    };

    #[test]
    fn batches_are_due_by_time_or_size_never_per_delta() {
        let mut c = Checkpoint::default();
        assert_eq!(c.sent(10, 0, POLICY), Flush::Later, "no turn runs");
        c.start(4);
        assert_eq!(c.sent(10, 0, POLICY), Flush::Within(500));
        assert_eq!(c.sent(10, 100, POLICY), Flush::Later);
        assert_eq!(c.due_in(100, POLICY), Some(400));
        assert_eq!(c.sent(10, 500, POLICY), Flush::Now);
        c.saved(7);
        assert_eq!(c.saved_through(), 7);
        assert!(!c.pending());
        assert_eq!(c.sent(60, 600, POLICY), Flush::Within(500));
        assert_eq!(c.sent(60, 610, POLICY), Flush::Now, "the batch is full");
        c.saved(9);
        assert_eq!(c.turn_writes(), 2);
        c.set_record(TurnRecord::default());
        assert!(c.pending());
        assert!(c.record_to_save().unwrap().contains("replyId"));
        assert!(c.record_to_save().is_none(), "written once per change");
        c.stop();
        assert!(!c.active() && c.record().is_none() && !c.pending());
        // 2,000 deltas of 10 bytes, 10 ms apart: a batch per 500 ms or 100 bytes.
        assert_eq!(writes_for_2000_deltas(POLICY), 200, "bytes bound them here");
        // The defaults (CHECKPOINT_INTERVAL_MS, CHECKPOINT_BYTES): a row a second.
        let defaults = CheckpointPolicy {
            every_ms: 1000,
            every_bytes: 8192,
        };
        assert_eq!(writes_for_2000_deltas(defaults), 19);
    }

    /// Rows written for a turn of 2,000 deltas of 10 bytes, 10 ms apart (20 s).
    fn writes_for_2000_deltas(policy: CheckpointPolicy) -> u64 {
        let mut c = Checkpoint::default();
        c.start(0);
        for i in 0..2000 {
            if c.sent(10, i * 10, policy) == Flush::Now {
                c.saved(i as u64);
            }
        }
        c.turn_writes()
    }

    fn delta(seq: u64, text: &str) -> SavedEvent {
        SavedEvent {
            seq,
            name: "agent:text".into(),
            data: serde_json::json!({ "conversationId": "c", "text": text }).to_string(),
        }
    }

    #[test]
    fn an_interrupted_stream_is_rebuilt_from_the_written_deltas() {
        let events = vec![
            SavedEvent {
                seq: 3,
                name: "agent:start".into(),
                data: "{}".into(),
            },
            delta(4, "Hel"),
            delta(5, "lo"),
        ];
        let record = TurnRecord {
            reply_id: "r1".into(),
            steps: 1,
            ..TurnRecord::default()
        };
        let r = recover(Some(record), &events).unwrap();
        assert_eq!(r.turn.text, "Hello");
        assert_eq!(r.record.reply_id, "r1");
        assert!(
            matches!(&r.turn.new_context[..], [ChatMessage::Assistant { content, .. }] if content == "Hello")
        );
        assert_eq!(r.events.len(), 3);
        assert_eq!(r.events[1].seq, Some(4));
        let mut log = StreamLog::new(1, 60_000, 1 << 20);
        for e in r.events {
            log.restore(e, 0);
        }
        log.skip_to(5 + super::super::SEQ_SKIP_AFTER_CRASH);
        assert_eq!(log.after(3).unwrap().count(), 2);
        assert_eq!(log.next_seq(), 5 + super::super::SEQ_SKIP_AFTER_CRASH);
        assert!(recover(None, &[]).is_none());
    }

    #[test]
    fn batches_round_trip_as_one_row_each() {
        let events = [
            OutEvent {
                name: "agent:text",
                seq: Some(7),
                data: r#"{"text":"a\"b"}"#.into(),
            },
            OutEvent {
                name: "agent:text",
                seq: Some(8),
                data: r#"{"text":"c"}"#.into(),
            },
        ];
        let (last, row) = encode_batch(&events).unwrap();
        assert_eq!(last, 8);
        let (_, again) = encode_batch(&events[1..]).unwrap();
        let back = decode_batches(&[row, again, "not json".into()]);
        assert_eq!(back.iter().map(|e| e.seq).collect::<Vec<_>>(), [7, 8]);
        assert_eq!(back[0].data, r#"{"text":"a\"b"}"#);
        assert!(encode_batch(&[]).is_none());
    }

    #[test]
    fn a_tool_running_at_the_restart_is_answered_as_interrupted_and_not_run_again() {
        let call = ToolCall {
            id: "t1".into(),
            name: "charge".into(),
            arguments: "{}".into(),
        };
        let mut turn = Turn::default();
        turn.begin_step();
        turn.on_stream_event(StreamEvent::Text("paying ".into()));
        turn.on_stream_event(StreamEvent::ToolCall(call.clone()));
        turn.end_step(4);
        let base = TurnRecord {
            reply_id: "r".into(),
            ..TurnRecord::default()
        };
        let record = TurnRecord::of(&base, &turn, Some(&call));
        assert_eq!(record.text_len, 7);
        let r = recover(Some(record), &[delta(2, "paying ")]).unwrap();
        let results: Vec<&str> = r
            .turn
            .new_context
            .iter()
            .filter_map(|m| match m {
                ChatMessage::Tool { content, .. } => Some(content.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(results, [INTERRUPTED_TOOL]);
        assert_eq!(r.turn.tool_records.len(), 1);
        assert!(r.turn.tool_records[0].is_error);
        assert_eq!(r.turn.text, "paying ");
    }

    #[test]
    fn resume_policy_reads_its_values_and_defaults_to_anthropic_only() {
        assert_eq!(ResumePolicy::parse("AUTO"), Some(ResumePolicy::Auto));
        assert_eq!(ResumePolicy::parse("on"), Some(ResumePolicy::Always));
        assert_eq!(ResumePolicy::parse("0"), Some(ResumePolicy::Never));
        assert_eq!(ResumePolicy::parse("sometimes"), None);
        assert!(ResumePolicy::Auto.applies(ProviderKind::Anthropic));
        assert!(!ResumePolicy::Auto.applies(ProviderKind::OpenAi));
        assert!(ResumePolicy::Always.applies(ProviderKind::OpenAi));
        assert!(!ResumePolicy::Never.applies(ProviderKind::Anthropic));
    }

    fn assistant(text: &str, calls: Vec<ToolCall>) -> ChatMessage {
        ChatMessage::Assistant {
            content: text.into(),
            thinking: None,
            tool_calls: calls,
        }
    }

    #[test]
    fn an_anthropic_continuation_prefills_the_partial_without_trailing_whitespace() {
        let user = ChatMessage::User {
            content: "tell me".into(),
        };
        let mut messages = vec![user.clone(), assistant("Once upon a time \n", vec![])];
        assert!(continuation_context(ProviderKind::Anthropic, &mut messages));
        assert_eq!(
            messages,
            vec![user.clone(), assistant("Once upon a time", vec![])]
        );

        // Only whitespace shown: no prefill, the model answers the user message.
        let mut messages = vec![user.clone(), assistant("  \n", vec![])];
        assert!(!continuation_context(
            ProviderKind::Anthropic,
            &mut messages
        ));
        assert_eq!(messages, vec![user.clone()]);

        // Interrupted between steps: the last message is a tool result, an ordinary call.
        let call = ToolCall {
            id: "c1".into(),
            name: "lookup".into(),
            arguments: "{}".into(),
        };
        let result = ChatMessage::Tool {
            tool_call_id: "c1".into(),
            name: "lookup".into(),
            content: INTERRUPTED_TOOL.into(),
            is_error: true,
        };
        let mut messages = vec![user.clone(), assistant("", vec![call]), result];
        let before = messages.clone();
        assert!(!continuation_context(
            ProviderKind::Anthropic,
            &mut messages
        ));
        assert_eq!(messages, before);
    }

    #[test]
    fn elsewhere_the_partial_stays_in_the_history_as_it_was() {
        let mut messages = vec![
            ChatMessage::User {
                content: "tell me".into(),
            },
            assistant("Once upon ", vec![]),
        ];
        let before = messages.clone();
        assert!(!continuation_context(ProviderKind::OpenAi, &mut messages));
        assert_eq!(messages, before);
    }

    #[test]
    fn a_recovered_turn_is_continued_once_and_only_where_the_policy_says() {
        let record = TurnRecord {
            reply_id: "r1".into(),
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            ..TurnRecord::default()
        };
        let recovered = recover(Some(record.clone()), &[]).unwrap();
        let anthropic = Some(ProviderKind::Anthropic);
        let c = recovered
            .continuation("r1", ResumePolicy::Auto, anthropic)
            .unwrap();
        assert_eq!(
            (c.reply_id.as_str(), c.model.as_str()),
            ("r1", "claude-sonnet-4-5")
        );
        assert!(recovered
            .continuation("r1", ResumePolicy::Auto, Some(ProviderKind::OpenAi))
            .is_none());
        assert!(recovered
            .continuation("r1", ResumePolicy::Never, anthropic)
            .is_none());
        assert!(
            recovered
                .continuation("r1", ResumePolicy::Always, None)
                .is_none(),
            "a provider no longer configured"
        );
        let again = recover(
            Some(TurnRecord {
                continues: Some("r0".into()),
                ..record
            }),
            &[],
        )
        .unwrap();
        assert!(again
            .continuation("r1", ResumePolicy::Always, anthropic)
            .is_none());
    }
}
