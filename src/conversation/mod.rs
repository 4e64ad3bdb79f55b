//! The per-conversation core: session state, the sequenced replay log, the turn accumulator, sends queue, dedupe and rate limit.

use crate::catalog::{self, Catalog, Cost};
use crate::llm::{
    ChatMessage, FinishReason, StreamEvent, Thinking, ThinkingLevel, ToolCall, UpstreamError, Usage,
};
use crate::protocol::OutEvent;
use crate::routing::RoutingDecision;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::VecDeque;

pub mod approval;
pub mod checkpoint;
pub mod plan;
pub mod reply;
pub mod room;
pub mod socket;
pub mod steps;

/// Accumulated figures of a conversation, for `/status` and admin stats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Metrics {
    pub messages: u64,
    pub turns: u64,
    pub tokens: Usage,
    /// USD of the turns whose model had known prices.
    pub cost_usd: f64,
    /// Turns whose cost could not be known (model without prices).
    pub unpriced_turns: u64,
    pub model_switches: u64,
}

/// The agent session bound to a conversation; persisted as JSON so it survives eviction and restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionState {
    /// Provider and model of the current (or last) turn.
    pub provider: Option<String>,
    pub model_id: Option<String>,
    pub thinking_level: Option<ThinkingLevel>,
    /// `/model` override: bypasses routing until cleared.
    pub model_override: Option<String>,
    /// Active named agent.
    pub agent: Option<String>,
    pub routing_decision: Option<RoutingDecision>,
    pub metrics: Metrics,
}

impl SessionState {
    /// The thinking level in force (`off` until set).
    pub fn thinking(&self) -> ThinkingLevel {
        self.thinking_level.unwrap_or(ThinkingLevel::Off)
    }

    /// Resets the thinking level to `off` when the model in use does not take it (`levels`).
    pub fn clamp_thinking(&mut self, levels: &[ThinkingLevel]) {
        if !levels.contains(&self.thinking()) {
            self.thinking_level = Some(ThinkingLevel::Off);
        }
    }

    /// Records the model a turn runs on, counting a switch when it changed.
    pub fn use_model(&mut self, provider: &str, model: &str) {
        let changed =
            self.provider.as_deref() != Some(provider) || self.model_id.as_deref() != Some(model);
        if changed && self.model_id.is_some() {
            self.metrics.model_switches += 1;
        }
        self.provider = Some(provider.to_string());
        self.model_id = Some(model.to_string());
    }

    /// The `session:info` payload.
    pub fn info_payload(
        &self,
        conversation_id: &str,
        default: (&str, &str),
        levels: &[ThinkingLevel],
    ) -> String {
        let mut v = json!({
            "conversationId": conversation_id,
            "provider": self.provider.as_deref().unwrap_or(default.0),
            "modelId": self.model_id.as_deref().unwrap_or(default.1),
            "thinkingLevel": self.thinking().as_str(),
            "availableThinkingLevels": levels.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
        });
        if let Some(agent) = &self.agent {
            v["agentName"] = Value::String(agent.clone());
        }
        if let Some(over) = &self.model_override {
            v["modelOverride"] = Value::String(over.clone());
        }
        if let Some(d) = &self.routing_decision {
            v["routingDecision"] = serde_json::to_value(d).unwrap_or(Value::Null);
        }
        v.to_string()
    }
}

impl SessionState {
    /// The `/status` answer: a one-line summary and the figures as data.
    pub fn status_report(&self) -> (String, Value) {
        let m = &self.metrics;
        let data = json!({
            "messages": m.messages, "turns": m.turns,
            "tokens": { "input": m.tokens.input, "output": m.tokens.output, "cacheRead": m.tokens.cache_read, "cacheWrite": m.tokens.cache_write, "total": m.tokens.total() },
            "costUsd": m.cost_usd, "unpricedTurns": m.unpriced_turns, "modelSwitches": m.model_switches,
            "provider": self.provider, "modelId": self.model_id, "thinkingLevel": self.thinking().as_str(),
            "modelOverride": self.model_override, "agentName": self.agent, "routingDecision": self.routing_decision,
        });
        // Turns of unpriced models are unknown cost, not free: say so next to the sum.
        let cost = if m.unpriced_turns > 0 {
            format!(
                "${:.6} (+{} turns of unknown cost)",
                m.cost_usd, m.unpriced_turns
            )
        } else {
            format!("${:.6}", m.cost_usd)
        };
        let line = format!(
            "{} messages, {} turns, {} tokens, cost {cost}, {} model switches",
            m.messages,
            m.turns,
            m.tokens.total(),
            m.model_switches
        );
        (line, data)
    }
}

/// Why a turn ended (PROTOCOL.md `stopReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Stop,
    Length,
    Aborted,
    Error,
    Truncated,
    MaxSteps,
    /// The object died mid-turn (a deploy, an eviction, a crash); stored with what was shown.
    Interrupted,
}

impl StopReason {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Stop => "stop",
            StopReason::Length => "length",
            StopReason::Aborted => "aborted",
            StopReason::Error => "error",
            StopReason::Truncated => "truncated",
            StopReason::MaxSteps => "max_steps",
            StopReason::Interrupted => "interrupted",
        }
    }

    /// How a turn ends on a failure nothing will retry: a stream that broke after text went out
    /// was cut (`truncated`); anything else is an `error`.
    pub fn after_failure(kind: crate::llm::UpstreamErrorKind, text_sent: bool) -> StopReason {
        use crate::llm::UpstreamErrorKind as K;
        let broke = matches!(kind, K::Malformed | K::Network | K::Timeout);
        if text_sent && broke {
            StopReason::Truncated
        } else {
            StopReason::Error
        }
    }
}

/// A stream event that must reach the clients now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emit {
    Text(String),
    Thinking(String),
}

impl Emit {
    /// The event's name on the wire and its text.
    pub fn into_event(self) -> (&'static str, String) {
        match self {
            Emit::Text(t) => ("agent:text", t),
            Emit::Thinking(t) => ("agent:thinking", t),
        }
    }
}

/// What to do after one model call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// Run these tools, then call the model again.
    RunTools(Vec<ToolCall>),
    /// The turn is over.
    Done(StopReason),
    /// The call failed; `before_output` says no byte of it reached a client (so it may be retried or failed over).
    Failed {
        error: UpstreamError,
        before_output: bool,
    },
}

/// Largest `structuredContent` kept with a tool call's record in the stored reply, as JSON text;
/// a larger one is left out of the record (the model saw it in the result).
pub const MAX_RECORDED_STRUCTURED_BYTES: usize = 16 * 1024;

/// A tool call as recorded in the assistant message's metadata (the seed's shape, and the
/// tool's `structuredContent` when it gave one small enough).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCallRecord {
    pub tool_call_id: String,
    pub tool_name: String,
    pub args: Value,
    pub is_error: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured_content: Option<Value>,
}

/// What a tool call gave: the text the model reads, whether it is an error, and the structured
/// result an MCP tool may add (the text carries it too).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutcome {
    pub text: String,
    pub is_error: bool,
    pub structured: Option<Value>,
}

impl ToolOutcome {
    /// A result that is text only.
    pub fn text(text: impl Into<String>, is_error: bool) -> Self {
        ToolOutcome {
            text: text.into(),
            is_error,
            structured: None,
        }
    }
}

/// One turn in progress: the buffers of the current model call and of the whole turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Turn {
    /// Text of the whole turn, as the clients saw it.
    pub text: String,
    pub tool_records: Vec<ToolCallRecord>,
    /// Usage summed over finished calls.
    pub usage: Usage,
    /// Prompt tokens of the last call: what fills the context window.
    pub last_prompt_tokens: u64,
    /// Model calls made so far.
    pub steps: u32,
    /// Whether the provider reported any usage (an aborted or broken stream may never say).
    pub usage_reported: bool,
    /// Messages this turn adds to the model's context (assistant steps, tool results).
    pub new_context: Vec<ChatMessage>,
    /// The model call in progress (none between calls, when a turn is kept).
    #[serde(skip)]
    step: Step,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Step {
    text: String,
    thinking: String,
    signature: Option<String>,
    tool_calls: Vec<ToolCall>,
    usage: Usage,
    finish: Option<FinishReason>,
    error: Option<UpstreamError>,
    output: bool,
}

impl Turn {
    /// Starts the next model call.
    pub fn begin_step(&mut self) {
        self.step = Step::default();
        self.steps += 1;
    }

    /// Uncounts a call that failed before any output, so its retry does not use up a step.
    pub fn forget_failed_step(&mut self) {
        self.steps = self.steps.saturating_sub(1);
    }

    /// Takes one stream event and adds what it emits to `emits`, merged into the last emit when
    /// both are text (or both thinking): deltas decoded together go out as one frame, so a
    /// gateway that fell behind catches up with fewer, larger frames instead of one per delta.
    pub fn take_event(&mut self, event: StreamEvent, emits: &mut Vec<Emit>) {
        let Some(emit) = self.on_stream_event(event) else {
            return;
        };
        match (emits.last_mut(), emit) {
            (Some(Emit::Text(last)), Emit::Text(t)) => last.push_str(&t),
            (Some(Emit::Thinking(last)), Emit::Thinking(t)) => last.push_str(&t),
            (_, emit) => emits.push(emit),
        }
    }

    /// Feeds one decoded stream event; returns what to send to clients.
    pub fn on_stream_event(&mut self, event: StreamEvent) -> Option<Emit> {
        if self.step.error.is_some() {
            return None; // nothing after an error counts
        }
        match event {
            StreamEvent::Text(t) if !t.is_empty() => {
                self.step.output = true;
                self.step.text.push_str(&t);
                self.text.push_str(&t);
                Some(Emit::Text(t))
            }
            StreamEvent::Thinking(t) if !t.is_empty() => {
                self.step.output = true;
                self.step.thinking.push_str(&t);
                Some(Emit::Thinking(t))
            }
            StreamEvent::Text(_) | StreamEvent::Thinking(_) => None,
            StreamEvent::ThinkingSignature(s) => {
                self.step
                    .signature
                    .get_or_insert_with(String::new)
                    .push_str(&s);
                None
            }
            StreamEvent::ToolCall(c) => {
                self.step.tool_calls.push(c);
                None
            }
            StreamEvent::Usage(u) => {
                self.usage_reported = true;
                merge_usage(&mut self.step.usage, &u);
                None
            }
            StreamEvent::Finish(f) => {
                self.step.finish.get_or_insert(f);
                None
            }
            StreamEvent::Error(e) => {
                self.step.error = Some(e);
                None
            }
        }
    }

    /// Records a failure that happened outside the stream (fetch error, stall, abort of the body).
    pub fn fail_step(&mut self, error: UpstreamError) {
        self.step.error.get_or_insert(error);
    }

    /// Ends the current call: folds its usage in and says what comes next.
    pub fn end_step(&mut self, max_steps: u32) -> StepOutcome {
        let step = std::mem::take(&mut self.step);
        self.usage.add(&step.usage);
        if step.usage.prompt_tokens() > 0 {
            self.last_prompt_tokens = step.usage.prompt_tokens();
        }
        let has_content =
            !step.text.is_empty() || !step.tool_calls.is_empty() || !step.thinking.is_empty();
        if has_content {
            let thinking = (!step.thinking.is_empty()).then(|| Thinking {
                text: step.thinking.clone(),
                signature: step.signature.clone(),
            });
            self.new_context.push(ChatMessage::Assistant {
                content: step.text.clone(),
                thinking,
                tool_calls: if step.error.is_some() {
                    Vec::new()
                } else {
                    step.tool_calls.clone()
                },
            });
        }
        if let Some(error) = step.error {
            return StepOutcome::Failed {
                error,
                before_output: !step.output,
            };
        }
        if !step.tool_calls.is_empty() {
            if self.steps >= max_steps {
                // The model still wants tools; their calls stay unanswered, so drop them from the context.
                if let Some(ChatMessage::Assistant { tool_calls, .. }) = self.new_context.last_mut()
                {
                    tool_calls.clear();
                }
                return StepOutcome::Done(StopReason::MaxSteps);
            }
            return StepOutcome::RunTools(step.tool_calls);
        }
        match step.finish {
            Some(FinishReason::Length) => StepOutcome::Done(StopReason::Length),
            _ => StepOutcome::Done(StopReason::Stop),
        }
    }

    /// Records a tool's text result for the model and the metadata.
    pub fn record_tool_result(&mut self, call: &ToolCall, result: String, is_error: bool) {
        self.record_tool_outcome(call, ToolOutcome::text(result, is_error));
    }

    /// Records a tool's outcome for the model and the metadata; its structured content is kept
    /// in the record when it is small.
    pub fn record_tool_outcome(&mut self, call: &ToolCall, outcome: ToolOutcome) {
        let args =
            serde_json::from_str(&call.arguments).unwrap_or(Value::String(call.arguments.clone()));
        let structured_content = outcome
            .structured
            .filter(|s| s.to_string().len() <= MAX_RECORDED_STRUCTURED_BYTES);
        self.tool_records.push(ToolCallRecord {
            tool_call_id: call.id.clone(),
            tool_name: call.name.clone(),
            args,
            is_error: outcome.is_error,
            structured_content,
        });
        self.new_context.push(ChatMessage::Tool {
            tool_call_id: call.id.clone(),
            name: call.name.clone(),
            content: outcome.text,
            is_error: outcome.is_error,
        });
    }
}

/// Later usage values replace earlier ones field by field (providers send running totals).
fn merge_usage(into: &mut Usage, from: &Usage) {
    if from.input > 0 {
        into.input = from.input;
    }
    if from.output > 0 {
        into.output = from.output;
    }
    if from.cache_read > 0 {
        into.cache_read = from.cache_read;
    }
    if from.cache_write > 0 {
        into.cache_write = from.cache_write;
    }
}

/// The usage block of `agent:end` and of the stored message's metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnUsage {
    pub provider: String,
    pub model_id: String,
    pub thinking_level: &'static str,
    pub tokens: TokenCounts,
    /// `None` when the model has no known prices: unknown, not zero.
    pub cost: Option<Cost>,
    pub context: ContextUsage,
}

/// Token counts with their total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenCounts {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub total: u64,
}

impl From<Usage> for TokenCounts {
    fn from(u: Usage) -> Self {
        TokenCounts {
            input: u.input,
            output: u.output,
            cache_read: u.cache_read,
            cache_write: u.cache_write,
            total: u.total(),
        }
    }
}

/// How full the model's context window was at the last call.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ContextUsage {
    /// Percent of the window, `None` when the window is unknown.
    pub percent: Option<f64>,
    pub window: u64,
}

/// Builds a turn's usage from the catalog. Cost is unknown (`None`) for a model without prices,
/// and for a turn whose provider never reported usage: zero would claim it was free.
pub fn turn_usage(
    catalog: &Catalog,
    provider: &str,
    model: &str,
    thinking: ThinkingLevel,
    turn: &Turn,
) -> TurnUsage {
    let (usage, last_prompt_tokens) = (&turn.usage, turn.last_prompt_tokens);
    let info = catalog.lookup(Some(provider), model);
    let cost = info
        .and_then(|i| i.prices.as_ref())
        .filter(|_| turn.usage_reported)
        .map(|p| catalog::cost(p, usage));
    let window = info.map(|i| i.context_window).unwrap_or(0);
    let percent = (window > 0)
        .then(|| ((last_prompt_tokens as f64 / window as f64) * 10_000.0).round() / 100.0);
    TurnUsage {
        provider: provider.to_string(),
        model_id: model.to_string(),
        thinking_level: thinking.as_str(),
        tokens: (*usage).into(),
        cost,
        context: ContextUsage { percent, window },
    }
}

impl Metrics {
    /// Adds a finished turn.
    pub fn record_turn(&mut self, usage: &TurnUsage) {
        self.turns += 1;
        self.tokens.input += usage.tokens.input;
        self.tokens.output += usage.tokens.output;
        self.tokens.cache_read += usage.tokens.cache_read;
        self.tokens.cache_write += usage.tokens.cache_write;
        match &usage.cost {
            Some(c) => self.cost_usd += c.total,
            None => self.unpriced_turns += 1,
        }
    }
}

/// The assistant message's metadata (the seed's shape plus what the gateway adds).
pub fn assistant_metadata(
    now_iso: &str,
    usage: &TurnUsage,
    turn: &Turn,
    stop: StopReason,
    error: Option<&UpstreamError>,
) -> Value {
    let mut m = json!({
        "timestamp": now_iso,
        "model": usage.model_id,
        "provider": usage.provider,
        "toolCalls": turn.tool_records,
        "tokenUsage": usage.tokens,
        "cost": usage.cost,
        "stopReason": stop.as_str(),
        "steps": turn.steps,
    });
    if stop == StopReason::Aborted {
        m["aborted"] = Value::Bool(true);
    }
    if let Some(e) = error {
        m["error"] = json!({ "code": e.kind.code(), "message": e.message, "status": e.status });
    }
    m
}

/// The sequenced log of a conversation's stream, kept for resume.
#[derive(Debug)]
pub struct StreamLog {
    next_seq: u64,
    events: VecDeque<(i64, OutEvent)>,
    bytes: usize,
    max_bytes: usize,
    window_ms: i64,
}

/// A resume request older than what the log still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayGap {
    /// The oldest sequence number still held.
    pub oldest: u64,
}

impl StreamLog {
    /// A log that continues numbering at `next_seq` and keeps events for `window_ms` (and at most `max_bytes`).
    pub fn new(next_seq: u64, window_ms: u64, max_bytes: usize) -> Self {
        StreamLog {
            next_seq: next_seq.max(1),
            events: VecDeque::new(),
            bytes: 0,
            max_bytes,
            window_ms: window_ms as i64,
        }
    }

    /// The number the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Numbers an event, keeps it for replay and returns it.
    pub fn push(&mut self, name: &'static str, data: String, now_ms: i64) -> &OutEvent {
        let event = OutEvent {
            name,
            seq: Some(self.next_seq),
            data,
        };
        self.next_seq += 1;
        self.bytes += event.data.len() + 64;
        self.events.push_back((now_ms, event));
        self.prune(now_ms);
        // The event just pushed always stays: prune never drops the newest.
        &self.events.back().expect("pushed above").1
    }

    /// Drops events older than the window or beyond the byte budget, always keeping the newest.
    pub fn prune(&mut self, now_ms: i64) {
        while self.events.len() > 1 {
            let Some((at, e)) = self.events.front() else {
                break;
            };
            if now_ms - at <= self.window_ms && self.bytes <= self.max_bytes {
                break;
            }
            self.bytes -= e.data.len() + 64;
            self.events.pop_front();
        }
    }

    /// Every held event after `last_seq`, in order; a gap when some were already dropped.
    pub fn after(&self, last_seq: u64) -> Result<impl Iterator<Item = &OutEvent>, ReplayGap> {
        if let Some((_, first)) = self.events.front() {
            let oldest = first.seq.unwrap_or(0);
            if last_seq.saturating_add(1) < oldest {
                return Err(ReplayGap { oldest });
            }
        } else if last_seq.saturating_add(1) < self.next_seq {
            return Err(ReplayGap {
                oldest: self.next_seq,
            });
        }
        Ok(self
            .events
            .iter()
            .map(|(_, e)| e)
            .filter(move |e| e.seq.unwrap_or(0) > last_seq))
    }
}

/// Sequence numbers skipped when an instance finds its previous one died mid-turn: numbers it
/// issued after the last save are unknown, so the next ones start past any it could have used.
pub const SEQ_SKIP_AFTER_CRASH: u64 = 1_000_000;

/// The next stream sequence number of an instance that loads `saved` (the last saved next
/// number) and finds a turn marked running (its predecessor died during it).
pub fn next_seq_after_load(saved: Option<u64>, turn_was_running: bool) -> u64 {
    let next = saved.unwrap_or(1);
    if turn_was_running {
        next + SEQ_SKIP_AFTER_CRASH
    } else {
        next
    }
}

/// What becomes of a `message` that reached the conversation (after the rate limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// A resend of a stored message: its ack again, to the sender only; no second turn.
    Duplicate { message_id: String },
    /// A resend of a message being stored right now (or stored, its ack not sent yet) or
    /// queued: nothing; the original's `message:ack` broadcast reaches the sender too.
    Pending,
    /// A turn runs and the queue is full.
    QueueFull,
    /// A turn runs: the message waits behind it.
    Queue,
    /// Nothing runs: this message's turn starts now.
    Start,
}

/// What the conversation knows when a `message` arrives.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionState<'a> {
    /// The message id stored for this `clientMessageId`, if any (the dedupe table).
    pub stored_as: Option<&'a str>,
    /// The `clientMessageId` of the message being stored right now, or stored and not yet
    /// acknowledged.
    pub in_flight: Option<&'a str>,
    pub turn_running: bool,
    pub queued: usize,
    pub max_queued: usize,
}

/// Decides a `message`'s fate; `queued_ids` are the queued messages' `clientMessageId`s.
pub fn admit<'a>(
    client_id: Option<&str>,
    state: AdmissionState<'_>,
    mut queued_ids: impl Iterator<Item = Option<&'a str>>,
) -> Admission {
    if let Some(client_id) = client_id {
        // Being stored, or stored and not yet acknowledged: the original's ack will do.
        if state.in_flight == Some(client_id) || queued_ids.any(|q| q == Some(client_id)) {
            return Admission::Pending;
        }
        if let Some(message_id) = state.stored_as {
            return Admission::Duplicate {
                message_id: message_id.to_string(),
            };
        }
    }
    match (state.turn_running, state.queued >= state.max_queued) {
        (false, _) => Admission::Start,
        (true, true) => Admission::QueueFull,
        (true, false) => Admission::Queue,
    }
}

/// How the conversation's table of accepted `clientMessageId`s (the dedupe of resends) stays
/// bounded: the newest `MAX_ENTRIES` ids younger than `MAX_AGE_MS` are kept, and the rest are
/// pruned every `PRUNE_EVERY` inserts. A resend older than either bound starts a new turn.
pub mod seen {
    /// Ids kept at most.
    pub const MAX_ENTRIES: u64 = 1024;
    /// Age after which an id is forgotten (a client resends within seconds, not days).
    pub const MAX_AGE_MS: i64 = 24 * 3_600_000;
    /// Inserts between two prunes: the prune is a scan, not a per-message cost.
    pub const PRUNE_EVERY: u64 = 64;
    /// ?1 the oldest `at` kept, ?2 `MAX_ENTRIES`.
    pub const PRUNE: &str = "DELETE FROM seen WHERE at < ?1 OR client_id IN (SELECT client_id FROM seen ORDER BY at DESC LIMIT -1 OFFSET ?2)";

    /// Whether the insert numbered `inserts` (from 1) is followed by a prune.
    pub fn prune_due(inserts: u64) -> bool {
        inserts > 0 && inserts.is_multiple_of(PRUNE_EVERY)
    }

    /// The parameters of [`PRUNE`] at `now_ms`.
    pub fn prune_params(now_ms: i64) -> (i64, u64) {
        (now_ms - MAX_AGE_MS, MAX_ENTRIES)
    }
}

/// A stored message as the history reads it: id, role, content and metadata text.
pub type StoredRow = (String, String, String, String);

/// The model context from the rows D1 holds followed by those still waiting in the outbox: a
/// row in both (a copy committed between the two reads) counts once, and `storing` (the
/// message of the turn being planned, which the plan adds itself) is left out.
pub fn history_from_rows(
    copied: impl IntoIterator<Item = StoredRow>,
    waiting: impl IntoIterator<Item = StoredRow>,
    storing: &str,
) -> Vec<ChatMessage> {
    let mut seen = std::collections::HashSet::new();
    let rows: Vec<(String, String, Value)> = copied
        .into_iter()
        .chain(waiting)
        .filter(|(id, ..)| id != storing && seen.insert(id.clone()))
        .map(|(_, role, content, metadata)| {
            let metadata = serde_json::from_str(&metadata).unwrap_or_default();
            (role, content, metadata)
        })
        .collect();
    context_from_rows(&rows)
}

/// Rebuilds the model context from stored messages (oldest first).
pub fn context_from_rows(rows: &[(String, String, Value)]) -> Vec<ChatMessage> {
    let mut out = Vec::with_capacity(rows.len());
    for (role, content, metadata) in rows {
        match role.as_str() {
            "user" => out.push(ChatMessage::User {
                content: content.clone(),
            }),
            "system" => out.push(ChatMessage::System {
                content: content.clone(),
            }),
            "assistant" => {
                // Tool steps are stored in the metadata so a resumed conversation replays validly to either provider.
                if let Some(steps) = metadata
                    .get("context")
                    .and_then(|c| serde_json::from_value::<Vec<ChatMessage>>(c.clone()).ok())
                {
                    out.extend(steps);
                } else if !content.is_empty() {
                    out.push(ChatMessage::Assistant {
                        content: content.clone(),
                        thinking: None,
                        tool_calls: Vec::new(),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_reads_d1_then_the_outbox_once_each_without_the_message_being_stored() {
        let row = |id: &str, role: &str, content: &str| {
            (
                id.to_string(),
                role.to_string(),
                content.to_string(),
                "{}".to_string(),
            )
        };
        let copied = vec![row("m1", "user", "q1"), row("m2", "assistant", "a1")];
        // m2 committed between the two reads: it is in both.
        let waiting = vec![
            row("m2", "assistant", "a1"),
            row("m3", "user", "q2"),
            row("m4", "user", "now"),
        ];
        let h = history_from_rows(copied, waiting, "m4");
        let texts: Vec<&str> = h
            .iter()
            .map(|m| match m {
                ChatMessage::User { content } | ChatMessage::Assistant { content, .. } => {
                    content.as_str()
                }
                _ => "?",
            })
            .collect();
        assert_eq!(texts, ["q1", "a1", "q2"]);
    }

    use crate::llm::UpstreamErrorKind;

    #[test]
    fn deltas_taken_together_merge_by_kind_in_order() {
        let mut turn = Turn::default();
        turn.begin_step();
        let mut emits = Vec::new();
        for e in [
            StreamEvent::Thinking("a".into()),
            StreamEvent::Thinking("b".into()),
            StreamEvent::Text("He".into()),
            StreamEvent::Usage(Usage::default()),
            StreamEvent::Text("llo".into()),
            StreamEvent::Text(String::new()),
            StreamEvent::Thinking("c".into()),
            StreamEvent::Text("!".into()),
        ] {
            turn.take_event(e, &mut emits);
        }
        assert_eq!(
            emits,
            [
                Emit::Thinking("ab".into()),
                Emit::Text("Hello".into()),
                Emit::Thinking("c".into()),
                Emit::Text("!".into())
            ]
        );
        assert_eq!(turn.text, "Hello!");
    }

    fn call(id: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: "add".into(),
            arguments: r#"{"a":1}"#.into(),
        }
    }

    #[test]
    fn a_plain_turn_accumulates_text_and_usage() {
        let mut t = Turn::default();
        t.begin_step();
        assert_eq!(
            t.on_stream_event(StreamEvent::Text("Hel".into())),
            Some(Emit::Text("Hel".into()))
        );
        assert_eq!(t.on_stream_event(StreamEvent::Text("".into())), None);
        t.on_stream_event(StreamEvent::Text("lo".into()));
        t.on_stream_event(StreamEvent::Usage(Usage {
            input: 10,
            output: 1,
            ..Default::default()
        }));
        t.on_stream_event(StreamEvent::Usage(Usage {
            output: 2,
            ..Default::default()
        }));
        t.on_stream_event(StreamEvent::Finish(FinishReason::Stop));
        assert_eq!(t.end_step(8), StepOutcome::Done(StopReason::Stop));
        assert_eq!(t.text, "Hello");
        assert_eq!(
            t.usage,
            Usage {
                input: 10,
                output: 2,
                ..Default::default()
            }
        );
        assert_eq!(t.last_prompt_tokens, 10);
    }

    #[test]
    fn tool_steps_loop_until_the_bound() {
        let mut t = Turn::default();
        t.begin_step();
        t.on_stream_event(StreamEvent::ToolCall(call("c1")));
        t.on_stream_event(StreamEvent::Finish(FinishReason::ToolCalls));
        assert_eq!(t.end_step(2), StepOutcome::RunTools(vec![call("c1")]));
        t.record_tool_result(&call("c1"), "2".into(), false);
        t.begin_step();
        t.on_stream_event(StreamEvent::ToolCall(call("c2")));
        assert_eq!(t.end_step(2), StepOutcome::Done(StopReason::MaxSteps));
        assert_eq!(t.tool_records.len(), 1);
        assert_eq!(t.tool_records[0].args, json!({"a": 1}));
        // assistant(c1), tool(c1), assistant(without the unanswered c2)
        assert_eq!(t.new_context.len(), 3);
        assert!(
            matches!(&t.new_context[2], ChatMessage::Assistant { tool_calls, .. } if tool_calls.is_empty())
        );
    }

    #[test]
    fn an_error_says_whether_output_was_sent() {
        let mut t = Turn::default();
        t.begin_step();
        t.on_stream_event(StreamEvent::Error(UpstreamError::new(
            UpstreamErrorKind::Overloaded,
            "busy",
        )));
        assert!(matches!(
            t.end_step(8),
            StepOutcome::Failed {
                before_output: true,
                ..
            }
        ));
        t.begin_step();
        t.on_stream_event(StreamEvent::Text("a".into()));
        t.fail_step(UpstreamError::new(UpstreamErrorKind::Malformed, "cut"));
        assert_eq!(t.on_stream_event(StreamEvent::Text("b".into())), None);
        assert!(matches!(
            t.end_step(8),
            StepOutcome::Failed {
                before_output: false,
                ..
            }
        ));
        assert_eq!(t.text, "a");
    }

    #[test]
    fn stream_log_numbers_and_replays() {
        let mut log = StreamLog::new(1, 1000, 1 << 20);
        for i in 0..5 {
            log.push("agent:text", format!("{i}"), 0);
        }
        assert_eq!(log.next_seq(), 6);
        let seqs: Vec<u64> = log.after(3).unwrap().map(|e| e.seq.unwrap()).collect();
        assert_eq!(seqs, vec![4, 5]);
        assert_eq!(log.after(5).unwrap().count(), 0);
        assert_eq!(log.after(0).unwrap().count(), 5);
        // After the window, old events go but the newest stays.
        log.push("agent:end", "{}".into(), 5000);
        assert_eq!(log.after(0).err(), Some(ReplayGap { oldest: 6 }));
        assert_eq!(log.after(5).unwrap().count(), 1);
    }

    #[test]
    fn stream_log_resumes_numbering_and_reports_gaps_when_empty() {
        let log = StreamLog::new(100, 1000, 1 << 20);
        assert_eq!(log.after(99).unwrap().count(), 0);
        assert_eq!(log.after(50).err(), Some(ReplayGap { oldest: 100 }));
    }

    #[test]
    fn a_failure_after_text_is_a_cut_only_when_the_stream_broke() {
        use crate::llm::UpstreamErrorKind as K;
        assert_eq!(
            StopReason::after_failure(K::Network, true),
            StopReason::Truncated
        );
        assert_eq!(
            StopReason::after_failure(K::Timeout, true),
            StopReason::Truncated
        );
        assert_eq!(
            StopReason::after_failure(K::Network, false),
            StopReason::Error
        );
        assert_eq!(
            StopReason::after_failure(K::Overloaded, true),
            StopReason::Error
        );
    }

    fn state<'a>(
        stored_as: Option<&'a str>,
        in_flight: Option<&'a str>,
        running: bool,
        queued: usize,
    ) -> AdmissionState<'a> {
        AdmissionState {
            stored_as,
            in_flight,
            turn_running: running,
            queued,
            max_queued: 2,
        }
    }

    #[test]
    fn after_a_crash_mid_turn_numbering_skips_past_what_the_dead_instance_may_have_sent() {
        assert_eq!(next_seq_after_load(None, false), 1);
        assert_eq!(next_seq_after_load(Some(40), false), 40);
        assert_eq!(
            next_seq_after_load(Some(40), true),
            40 + SEQ_SKIP_AFTER_CRASH
        );
        // A client that resumes from the dead instance's last number gets a gap, not a repeat.
        let log = StreamLog::new(next_seq_after_load(Some(40), true), 60_000, 1 << 20);
        assert!(log.after(57).is_err());
    }

    #[test]
    fn thinking_falls_back_to_off_on_a_model_without_that_level() {
        let mut s = SessionState {
            thinking_level: Some(ThinkingLevel::High),
            ..SessionState::default()
        };
        s.clamp_thinking(&[ThinkingLevel::Off, ThinkingLevel::High]);
        assert_eq!(s.thinking(), ThinkingLevel::High);
        s.clamp_thinking(&[ThinkingLevel::Off]);
        assert_eq!(s.thinking(), ThinkingLevel::Off);
    }

    #[test]
    fn a_message_starts_queues_or_is_refused_by_the_queue_bound() {
        let none = std::iter::empty();
        assert_eq!(
            admit(None, state(None, None, false, 0), none),
            Admission::Start
        );
        assert_eq!(
            admit(Some("c1"), state(None, None, true, 1), std::iter::empty()),
            Admission::Queue
        );
        assert_eq!(
            admit(Some("c1"), state(None, None, true, 2), std::iter::empty()),
            Admission::QueueFull
        );
    }

    #[test]
    fn a_resend_racing_its_original_never_makes_a_second_turn() {
        // The original is being stored (in flight): the resend waits for its ack.
        assert_eq!(
            admit(
                Some("c1"),
                state(None, Some("c1"), true, 0),
                std::iter::empty()
            ),
            Admission::Pending
        );
        // The original is queued behind another turn.
        let queued = [Some("c0"), None, Some("c1")];
        assert_eq!(
            admit(Some("c1"), state(None, None, true, 3), queued.into_iter()),
            Admission::Pending,
            "a resend of a queued message is not refused as queue_full"
        );
        // The original is stored: the same ack again.
        assert_eq!(
            admit(
                Some("c1"),
                state(Some("m1"), None, false, 0),
                std::iter::empty()
            ),
            Admission::Duplicate {
                message_id: "m1".into()
            }
        );
        // Without a clientMessageId nothing can be recognised: it is a new message.
        assert_eq!(
            admit(None, state(None, Some("c1"), true, 0), std::iter::empty()),
            Admission::Queue
        );
    }

    #[test]
    fn the_dedupe_table_is_pruned_every_64_inserts_to_a_day_and_1024_ids() {
        let due: Vec<u64> = (0..=200).filter(|&n| seen::prune_due(n)).collect();
        assert_eq!(due, vec![64, 128, 192]);
        assert_eq!(
            seen::prune_params(100_000_000),
            (100_000_000 - 86_400_000, 1024)
        );
        assert!(seen::PRUNE.contains("OFFSET ?2") && seen::PRUNE.contains("at < ?1"));
    }

    #[test]
    fn context_rebuilds_tool_steps() {
        let steps = vec![
            ChatMessage::Assistant {
                content: String::new(),
                thinking: None,
                tool_calls: vec![call("c1")],
            },
            ChatMessage::Tool {
                tool_call_id: "c1".into(),
                name: "add".into(),
                content: "2".into(),
                is_error: false,
            },
            ChatMessage::Assistant {
                content: "two".into(),
                thinking: None,
                tool_calls: vec![],
            },
        ];
        let rows = vec![
            ("user".to_string(), "1+1?".to_string(), json!({})),
            (
                "assistant".to_string(),
                "two".to_string(),
                json!({ "context": steps }),
            ),
            ("assistant".to_string(), "plain".to_string(), json!({})),
        ];
        let ctx = context_from_rows(&rows);
        assert_eq!(ctx.len(), 5);
        assert_eq!(
            ctx[0],
            ChatMessage::User {
                content: "1+1?".into()
            }
        );
        assert_eq!(
            ctx[4],
            ChatMessage::Assistant {
                content: "plain".into(),
                thinking: None,
                tool_calls: vec![]
            }
        );
    }

    #[test]
    fn cost_is_unknown_without_prices_or_reported_usage() {
        let catalog = Catalog::builtin();
        let mut t = Turn::default();
        t.begin_step();
        t.on_stream_event(StreamEvent::Text("partial".into()));
        t.end_step(8);
        let aborted = turn_usage(&catalog, "openai", "gpt-4o-mini", ThinkingLevel::Off, &t);
        assert_eq!(aborted.cost, None, "no usage reported: unknown, not free");
        t.begin_step();
        t.on_stream_event(StreamEvent::Usage(Usage {
            input: 1_000_000,
            output: 0,
            cache_read: 0,
            cache_write: 0,
        }));
        t.end_step(8);
        let priced = turn_usage(&catalog, "openai", "gpt-4o-mini", ThinkingLevel::Off, &t);
        assert!((priced.cost.unwrap().total - 0.15).abs() < 1e-9);
        assert_eq!(priced.context.window, 128_000);
        let unknown = turn_usage(&catalog, "openai", "not-a-model", ThinkingLevel::Off, &t);
        assert_eq!((unknown.cost, unknown.context.percent), (None, None));
    }

    #[test]
    fn status_reports_unknown_cost_apart() {
        let mut s = SessionState::default();
        s.metrics.messages = 2;
        s.metrics.turns = 2;
        s.metrics.cost_usd = 0.0015;
        s.metrics.unpriced_turns = 1;
        s.metrics.tokens = Usage {
            input: 10,
            output: 5,
            cache_read: 3,
            cache_write: 0,
        };
        let (line, data) = s.status_report();
        assert_eq!(line, "2 messages, 2 turns, 18 tokens, cost $0.001500 (+1 turns of unknown cost), 0 model switches");
        assert_eq!(data["tokens"]["total"], 18);
        assert_eq!(data["unpricedTurns"], 1);
    }

    #[test]
    fn session_info_payload() {
        let mut s = SessionState::default();
        s.use_model("openai", "gpt-4o");
        s.use_model("openai", "gpt-4o-mini");
        assert_eq!(s.metrics.model_switches, 1);
        s.agent = Some("helper".into());
        let v: Value =
            serde_json::from_str(&s.info_payload("c", ("echo", "echo"), &[ThinkingLevel::Off]))
                .unwrap();
        assert_eq!(v["modelId"], "gpt-4o-mini");
        assert_eq!(v["agentName"], "helper");
        assert_eq!(v["availableThinkingLevels"], json!(["off"]));
        assert!(v.get("routingDecision").is_none());
    }
}
