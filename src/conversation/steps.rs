//! One turn's model calls and tools as a state machine: call results, stream events, tool results, timers and an abort in; calls, tool runs, waits, frames and the turn's end out.

use super::{Emit, StepOutcome, StopReason, ToolOutcome, Turn};
use crate::error::RoomError;
use crate::llm::{ChatMessage, StreamEvent, ToolCall, UpstreamError};
use crate::retry::{Next, RetryPolicy};
use crate::routing::RoutingDecision;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::VecDeque;

/// The result a tool call owed after an abort gets instead of running.
pub const NOT_RUN_ABORTED: &str = "not run: the turn was aborted";
/// The result of a tool that was running when the turn was aborted.
pub const ABORTED_WHILE_RUNNING: &str = "aborted while running";
/// The result of a tool whose approval the turn was waiting for when it was aborted.
pub const NOT_RUN_ABORTED_WAITING: &str =
    "not run: the turn was aborted while this tool waited for the user's approval";

/// A person's answer to a tool call that waits for approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    Approved,
    /// Declined by the user, with their reason if they gave one.
    Denied(Option<String>),
    /// Nobody answered within this many seconds: declined.
    TimedOut(u64),
}

impl Approval {
    /// What the model gets instead of a result when the call does not run.
    fn declined_result(&self, tool: &str) -> Option<String> {
        match self {
            Approval::Approved => None,
            Approval::Denied(None) => Some(format!(
                "declined: the user did not approve running the tool {tool}"
            )),
            Approval::Denied(Some(reason)) => Some(format!(
                "declined: the user did not approve running the tool {tool}; their reason: {reason}"
            )),
            Approval::TimedOut(s) => Some(format!(
                "declined: nobody approved running the tool {tool} within {s} s"
            )),
        }
    }
}

/// Bytes of a tool's result that `agent:tool:end` carries; a longer one is cut, with a marker.
pub const EVENT_RESULT_BYTES: usize = 8 * 1024;
/// Largest `structuredContent` (as JSON) that `agent:tool:end` carries; a larger one is left out.
pub const EVENT_STRUCTURED_BYTES: usize = 64 * 1024;

/// A tool's result as `agent:tool:end` shows it: its first [`EVENT_RESULT_BYTES`] bytes.
fn event_result(text: &str) -> String {
    let kept = crate::text::prefix_bytes(text, EVENT_RESULT_BYTES);
    if kept.len() == text.len() {
        return text.to_string();
    }
    format!(
        "{kept}\n[truncated by the gateway: the first {} of {} bytes]",
        kept.len(),
        text.len()
    )
}

/// What the glue does next, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum StepAction {
    /// Send a stream event to every socket of the conversation.
    Send { name: &'static str, data: String },
    /// Open a model call on `target` with these messages; then feed its stream events with
    /// [`TurnSteps::stream_event`] and its end with [`TurnSteps::call_ended`], or its failure
    /// to open with [`TurnSteps::call_failed`].
    Call {
        target: RoutingDecision,
        messages: Vec<ChatMessage>,
    },
    /// Wait this long, then [`TurnSteps::timer_fired`].
    Wait { ms: u64 },
    /// Run this tool of the agent, then [`TurnSteps::tool_done`] with its outcome.
    RunTool(ToolCall),
    /// This call needs a person's approval first: the glue keeps [`TurnSteps::suspend`] and
    /// stops; [`TurnSteps::resume`] and [`TurnSteps::approval`] go on once it is answered.
    AwaitApproval(ToolCall),
    /// The turn moved to another model: the session records it and every socket is told.
    FellOver(RoutingDecision),
    /// The turn is over; [`TurnSteps::into_turn`] gives what it produced.
    End {
        stop: StopReason,
        error: Option<UpstreamError>,
    },
}

/// A turn whose tool call waits for a person's approval, as kept in the conversation's storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SuspendedSteps {
    pub turn: Turn,
    candidates: Vec<RoutingDecision>,
    known_tools: Vec<String>,
    approval_tools: Vec<String>,
    candidate: usize,
    max_steps: u32,
    /// The calls of the same step after the waiting one.
    owed: Vec<ToolCall>,
    /// The call waiting for approval.
    pub awaiting: ToolCall,
}

/// The turn's model calls and tools: which candidate, how many retries, which tools are owed.
#[derive(Debug)]
pub struct TurnSteps {
    turn: Turn,
    conversation: String,
    candidates: Vec<RoutingDecision>,
    /// The context before this turn's own steps: system prompt, history, the user message.
    base: Vec<ChatMessage>,
    /// Tools the agent has; a call to any other is answered with an error, not run.
    known_tools: Vec<String>,
    /// Tools that run only once a person approves the call.
    approval_tools: Vec<String>,
    candidate: usize,
    attempts: u32,
    policy: RetryPolicy,
    max_steps: u32,
    aborted: bool,
    /// Tool calls of the last step not run yet.
    owed: VecDeque<ToolCall>,
    /// The tool call being run.
    running: Option<ToolCall>,
    /// The tool call waiting for a person's approval.
    awaiting: Option<ToolCall>,
    ended: bool,
    actions: VecDeque<StepAction>,
}

impl TurnSteps {
    /// A turn that calls `candidates[0]` first (the glue may have opened that call already).
    /// `candidates` must not be empty.
    pub fn new(
        conversation: &str,
        candidates: Vec<RoutingDecision>,
        base: Vec<ChatMessage>,
        known_tools: Vec<String>,
        policy: RetryPolicy,
        max_steps: u32,
    ) -> Self {
        let mut steps = TurnSteps {
            turn: Turn::default(),
            conversation: conversation.to_string(),
            candidates,
            base,
            known_tools,
            approval_tools: Vec::new(),
            candidate: 0,
            attempts: 0,
            policy,
            max_steps,
            aborted: false,
            owed: VecDeque::new(),
            running: None,
            awaiting: None,
            ended: false,
            actions: VecDeque::new(),
        };
        if steps.candidates.is_empty() {
            steps.end(StopReason::Error, None);
        } else {
            steps.call();
        }
        steps
    }

    /// Marks these of the known tools as running only once a person approves each call.
    pub fn with_approval(mut self, tools: Vec<String>) -> Self {
        self.approval_tools = tools;
        self
    }

    /// The tool call waiting for a person's approval, if any.
    pub fn awaiting(&self) -> Option<&ToolCall> {
        self.awaiting.as_ref()
    }

    /// What must outlive the object while a call waits for approval: everything but the base
    /// context, which is rebuilt from the stored history. `None` unless a call waits.
    pub fn suspend(&self) -> Option<SuspendedSteps> {
        let awaiting = self.awaiting.clone()?;
        Some(SuspendedSteps {
            turn: self.turn.clone(),
            candidates: self.candidates.clone(),
            known_tools: self.known_tools.clone(),
            approval_tools: self.approval_tools.clone(),
            candidate: self.candidate,
            max_steps: self.max_steps,
            owed: self.owed.iter().cloned().collect(),
            awaiting,
        })
    }

    /// The steps of a suspended turn again, `base` being its context before its own steps;
    /// feed the answer with [`TurnSteps::approval`] (or [`TurnSteps::abort`]).
    pub fn resume(
        conversation: &str,
        suspended: SuspendedSteps,
        base: Vec<ChatMessage>,
        policy: RetryPolicy,
    ) -> Self {
        TurnSteps {
            turn: suspended.turn,
            conversation: conversation.to_string(),
            candidates: suspended.candidates,
            base,
            known_tools: suspended.known_tools,
            approval_tools: suspended.approval_tools,
            candidate: suspended.candidate,
            attempts: 0,
            policy,
            max_steps: suspended.max_steps,
            aborted: false,
            owed: suspended.owed.into(),
            running: None,
            awaiting: Some(suspended.awaiting),
            ended: false,
            actions: VecDeque::new(),
        }
    }

    /// The answer to the call waiting for approval: approved, it runs; otherwise the model gets
    /// a result saying it was declined and why, and the turn goes on.
    pub fn approval(&mut self, answer: Approval) {
        let Some(call) = self.awaiting.take() else {
            return;
        };
        match answer.declined_result(&call.name) {
            None => {
                self.running = Some(call.clone());
                self.actions.push_back(StepAction::RunTool(call));
            }
            Some(result) => {
                self.record_tool(&call, result, true);
                self.next_tool();
            }
        }
    }

    /// The next thing to do, if any.
    pub fn poll(&mut self) -> Option<StepAction> {
        self.actions.pop_front()
    }

    /// The turn so far: text, tool records, usage and the context it adds.
    pub fn turn(&self) -> &Turn {
        &self.turn
    }

    /// What the turn produced, once it ended.
    pub fn into_turn(self) -> Turn {
        self.turn
    }

    /// Takes one stream event of the open call; what must reach the clients now is added to
    /// `emits` (merged with the last one of its kind).
    pub fn stream_event(&mut self, event: StreamEvent, emits: &mut Vec<Emit>) {
        self.turn.take_event(event, emits);
    }

    /// The open call could not be opened (or broke outside its stream).
    pub fn call_failed(&mut self, error: UpstreamError) {
        self.turn.fail_step(error);
        self.call_ended();
    }

    /// The open call's stream ended (or the glue stopped reading it after an abort).
    pub fn call_ended(&mut self) {
        if self.ended {
            return;
        }
        let outcome = self.turn.end_step(self.max_steps);
        if self.aborted {
            if let StepOutcome::RunTools(calls) = outcome {
                // Calls the model made before the abort still need results, or the history is invalid.
                self.owed.extend(calls);
                self.settle_owed();
            }
            self.end(StopReason::Aborted, None);
            return;
        }
        match outcome {
            StepOutcome::Done(stop) => self.end(stop, None),
            StepOutcome::RunTools(calls) => {
                self.owed.extend(calls);
                self.next_tool();
            }
            StepOutcome::Failed {
                error,
                before_output,
            } => self.failed(error, before_output),
        }
    }

    /// The running tool finished with `outcome`.
    pub fn tool_done(&mut self, outcome: ToolOutcome) {
        let Some(call) = self.running.take() else {
            return;
        };
        let outcome = if self.aborted {
            ToolOutcome::text(ABORTED_WHILE_RUNNING, true)
        } else {
            outcome
        };
        self.record_outcome(&call, outcome);
        self.next_tool();
    }

    /// The wait before a retry is over.
    pub fn timer_fired(&mut self) {
        if self.ended {
            return;
        }
        if self.aborted {
            self.end(StopReason::Aborted, None);
        } else {
            self.call();
        }
    }

    /// The client asked to stop: no new call or tool starts; what is open ends as aborted. A
    /// call waiting for approval is answered as not run, and the turn ends now.
    pub fn abort(&mut self) {
        self.aborted = true;
        if let Some(call) = self.awaiting.take() {
            self.record_tool(&call, NOT_RUN_ABORTED_WAITING.to_string(), true);
            self.settle_owed();
            self.end(StopReason::Aborted, None);
        }
    }

    fn call(&mut self) {
        self.turn.begin_step();
        let mut messages = self.base.clone();
        messages.extend(self.turn.new_context.iter().cloned());
        let target = self.candidates[self.candidate].clone();
        self.actions
            .push_back(StepAction::Call { target, messages });
    }

    fn failed(&mut self, error: UpstreamError, before_output: bool) {
        let next = self.policy.next(
            &error,
            before_output,
            self.attempts,
            self.candidate,
            self.candidates.len(),
        );
        if before_output && error.kind.retryable() {
            // A call that produced nothing does not use up a step.
            self.turn.forget_failed_step();
        }
        match next {
            Next::Retry { after_ms } => {
                self.attempts += 1;
                self.actions.push_back(StepAction::Wait { ms: after_ms });
            }
            Next::FallOver { to } => {
                let from = &self.candidates[self.candidate];
                // The class and status only: the provider's text stays in the log.
                let reason = format!(
                    "fallover: {} {} {}",
                    from.provider,
                    error.kind.code(),
                    error.status.map(|s| s.to_string()).unwrap_or_default()
                )
                .trim_end()
                .to_string();
                self.candidate = to;
                self.attempts = 0;
                let decision = RoutingDecision {
                    reason,
                    ..self.candidates[to].clone()
                };
                self.actions.push_back(StepAction::FellOver(decision));
                self.call();
            }
            Next::GiveUp => {
                let stop = StopReason::after_failure(error.kind, !self.turn.text.is_empty());
                // The reference gateway's text; the provider's (masked) reason is the detail.
                let e = RoomError::prompt_failed(RoomError::Upstream {
                    code: error.kind.code(),
                    message: crate::llm::redact::redact(&error.message),
                    retryable: error.kind.retryable(),
                });
                self.send("error", e.event_payload(Some(&self.conversation)));
                self.end(stop, Some(error));
            }
        }
    }

    /// Starts the next owed tool, or the next model call once none is owed.
    fn next_tool(&mut self) {
        if self.aborted {
            self.settle_owed();
            self.end(StopReason::Aborted, None);
            return;
        }
        while let Some(call) = self.owed.pop_front() {
            let start = json!({ "conversationId": self.conversation, "toolCallId": call.id, "toolName": call.name });
            self.send("agent:tool:start", start.to_string());
            if self.known_tools.contains(&call.name) {
                if self.approval_tools.contains(&call.name) {
                    self.awaiting = Some(call.clone());
                    self.actions.push_back(StepAction::AwaitApproval(call));
                    return;
                }
                self.running = Some(call.clone());
                self.actions.push_back(StepAction::RunTool(call));
                return;
            }
            self.record_tool(&call, format!("unknown tool \"{}\"", call.name), true);
        }
        self.call();
    }

    /// Answers every owed call without running it.
    fn settle_owed(&mut self) {
        while let Some(call) = self.owed.pop_front() {
            self.turn
                .record_tool_result(&call, NOT_RUN_ABORTED.to_string(), true);
        }
    }

    fn record_tool(&mut self, call: &ToolCall, result: String, is_error: bool) {
        self.record_outcome(call, ToolOutcome::text(result, is_error));
    }

    /// Records the outcome for the model and the reply, and tells the clients with
    /// `agent:tool:end`: the result's first [`EVENT_RESULT_BYTES`] bytes, and the structured
    /// content when it is at most [`EVENT_STRUCTURED_BYTES`] as JSON.
    fn record_outcome(&mut self, call: &ToolCall, outcome: ToolOutcome) {
        let mut end = json!({
            "conversationId": self.conversation,
            "toolCallId": call.id,
            "toolName": call.name,
            "isError": outcome.is_error,
            "result": event_result(&outcome.text),
        });
        if let Some(structured) = &outcome.structured {
            if structured.to_string().len() <= EVENT_STRUCTURED_BYTES {
                end["structuredContent"] = structured.clone();
            }
        }
        self.turn.record_tool_outcome(call, outcome);
        self.send("agent:tool:end", end.to_string());
    }

    fn send(&mut self, name: &'static str, data: String) {
        self.actions.push_back(StepAction::Send { name, data });
    }

    fn end(&mut self, stop: StopReason, error: Option<UpstreamError>) {
        self.ended = true;
        self.owed.clear();
        self.actions.push_back(StepAction::End { stop, error });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{FinishReason, UpstreamErrorKind, Usage};
    use serde_json::Value;

    fn target(provider: &str, model: &str) -> RoutingDecision {
        RoutingDecision {
            provider: provider.into(),
            model: model.into(),
            rule_name: "default".into(),
            reason: "default".into(),
        }
    }

    fn user(text: &str) -> Vec<ChatMessage> {
        vec![ChatMessage::User {
            content: text.into(),
        }]
    }

    fn steps(candidates: Vec<RoutingDecision>, retries: u32) -> TurnSteps {
        TurnSteps::new(
            "c1",
            candidates,
            user("hi"),
            vec!["lookup".into()],
            RetryPolicy::new(retries),
            4,
        )
    }

    fn call(id: &str, name: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: "{}".into(),
        }
    }

    /// The tool results the turn added to the context: (call id, text).
    fn tool_results(turn: &Turn) -> Vec<(&str, &str)> {
        turn.new_context
            .iter()
            .filter_map(|m| match m {
                ChatMessage::Tool {
                    tool_call_id,
                    content,
                    ..
                } => Some((tool_call_id.as_str(), content.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Every action queued now.
    fn drain(s: &mut TurnSteps) -> Vec<StepAction> {
        std::iter::from_fn(|| s.poll()).collect()
    }

    fn feed(s: &mut TurnSteps, events: Vec<StreamEvent>) -> Vec<Emit> {
        let mut emits = Vec::new();
        for e in events {
            s.stream_event(e, &mut emits);
        }
        emits
    }

    fn names(actions: &[StepAction]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                StepAction::Send { name, .. } => name.to_string(),
                StepAction::Call { target, .. } => format!("call {}", target.model),
                StepAction::Wait { ms } => format!("wait {ms}"),
                StepAction::RunTool(c) => format!("run {}", c.name),
                StepAction::AwaitApproval(c) => format!("await {}", c.name),
                StepAction::FellOver(d) => format!("fellover {}", d.model),
                StepAction::End { stop, .. } => format!("end {}", stop.as_str()),
            })
            .collect()
    }

    fn error(kind: UpstreamErrorKind) -> UpstreamError {
        UpstreamError::new(kind, "boom")
    }

    #[test]
    fn a_plain_answer_is_one_call_then_the_end() {
        let mut s = steps(vec![target("openai", "a")], 2);
        assert_eq!(names(&drain(&mut s)), ["call a"]);
        let emits = feed(
            &mut s,
            vec![
                StreamEvent::Text("Hel".into()),
                StreamEvent::Text("lo".into()),
                StreamEvent::Finish(FinishReason::Stop),
            ],
        );
        assert_eq!(emits, [Emit::Text("Hello".into())]);
        s.call_ended();
        assert_eq!(names(&drain(&mut s)), ["end stop"]);
        assert_eq!(s.into_turn().text, "Hello");
    }

    #[test]
    fn retry_then_fallover_then_success() {
        let mut s = steps(vec![target("openai", "a"), target("anthropic", "b")], 1);
        drain(&mut s);
        let mut overloaded = error(UpstreamErrorKind::Overloaded);
        overloaded.status = Some(529);
        s.call_failed(overloaded.clone());
        assert_eq!(names(&drain(&mut s)), ["wait 500"]);
        s.timer_fired();
        assert_eq!(names(&drain(&mut s)), ["call a"]);
        s.call_failed(overloaded);
        let actions = drain(&mut s);
        assert_eq!(names(&actions), ["fellover b", "call b"]);
        let StepAction::FellOver(d) = &actions[0] else {
            unreachable!()
        };
        assert_eq!(d.provider, "anthropic");
        assert_eq!(d.reason, "fallover: openai upstream_overloaded 529");
        feed(&mut s, vec![StreamEvent::Text("ok".into())]);
        s.call_ended();
        assert_eq!(names(&drain(&mut s)), ["end stop"]);
        // Failed calls that produced nothing do not count as steps.
        assert_eq!(s.turn().steps, 1);
    }

    #[test]
    fn retry_after_from_the_provider_sets_the_wait() {
        let mut s = steps(vec![target("openai", "a")], 3);
        drain(&mut s);
        let mut limited = error(UpstreamErrorKind::RateLimited);
        limited.retry_after_ms = Some(2_000);
        s.call_failed(limited);
        assert_eq!(names(&drain(&mut s)), ["wait 2000"]);
    }

    #[test]
    fn giving_up_sends_a_redacted_error_then_ends() {
        let mut s = steps(vec![target("openai", "a")], 0);
        drain(&mut s);
        s.call_failed(UpstreamError::new(
            UpstreamErrorKind::Auth,
            "bad key sk-abcdefghijklmnopqrstuvwxyz123456",
        ));
        let actions = drain(&mut s);
        assert_eq!(names(&actions), ["error", "end error"]);
        let StepAction::Send { data, .. } = &actions[0] else {
            unreachable!()
        };
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["code"], "upstream_auth");
        assert_eq!(v["conversationId"], "c1");
        assert_eq!(
            v["error"],
            "The agent failed to process your message. Please try again."
        );
        assert!(v["detail"].as_str().unwrap().starts_with("bad key"));
        assert!(!data.contains("abcdefghijklmnopqrstuvwxyz"));
        let StepAction::End { error, .. } = &actions[1] else {
            unreachable!()
        };
        assert_eq!(error.as_ref().unwrap().kind, UpstreamErrorKind::Auth);
    }

    #[test]
    fn a_stall_after_text_truncates_and_a_stall_before_it_retries() {
        let stalled = || error(UpstreamErrorKind::Timeout);
        // Text reached the clients: the turn is cut, not retried (it would show text twice).
        let mut s = steps(vec![target("openai", "a")], 2);
        drain(&mut s);
        feed(&mut s, vec![StreamEvent::Text("partial".into())]);
        feed(&mut s, vec![StreamEvent::Error(stalled())]);
        s.call_ended();
        assert_eq!(names(&drain(&mut s)), ["error", "end truncated"]);
        assert_eq!(s.turn().text, "partial");
        // Nothing reached them: the same model is tried again after a backoff.
        let mut s = steps(vec![target("openai", "a")], 2);
        drain(&mut s);
        s.call_failed(stalled());
        assert_eq!(names(&drain(&mut s)), ["wait 500"]);
    }

    #[test]
    fn tools_run_in_order_between_calls_and_unknown_ones_are_answered_with_an_error() {
        let mut s = steps(vec![target("openai", "a")], 0);
        drain(&mut s);
        feed(
            &mut s,
            vec![
                StreamEvent::ToolCall(call("t1", "lookup")),
                StreamEvent::ToolCall(call("t2", "nope")),
                StreamEvent::Finish(FinishReason::ToolCalls),
            ],
        );
        s.call_ended();
        assert_eq!(names(&drain(&mut s)), ["agent:tool:start", "run lookup"]);
        s.tool_done(ToolOutcome::text("42", false));
        let actions = drain(&mut s);
        assert_eq!(
            names(&actions),
            [
                "agent:tool:end",
                "agent:tool:start",
                "agent:tool:end",
                "call a"
            ]
        );
        let StepAction::Call { messages, .. } = &actions[3] else {
            unreachable!()
        };
        // The user message, the assistant's calls, then both results.
        assert_eq!(messages.len(), 4);
        assert!(
            matches!(&messages[3], ChatMessage::Tool { content, is_error: true, .. } if content == "unknown tool \"nope\"")
        );
        assert_eq!(s.turn().tool_records.len(), 2);
    }

    /// The data of every `agent:tool:end` among `actions`.
    fn tool_ends(actions: &[StepAction]) -> Vec<Value> {
        actions
            .iter()
            .filter_map(|a| match a {
                StepAction::Send { name, data } if *name == "agent:tool:end" => {
                    Some(serde_json::from_str(data).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn tool_end_carries_the_result_cut_and_the_structured_content_when_small() {
        let mut s = steps(vec![target("openai", "a")], 0);
        drain(&mut s);
        feed(
            &mut s,
            vec![
                StreamEvent::ToolCall(call("t1", "lookup")),
                StreamEvent::ToolCall(call("t2", "lookup")),
                StreamEvent::ToolCall(call("t3", "lookup")),
            ],
        );
        s.call_ended();
        drain(&mut s);
        s.tool_done(ToolOutcome {
            text: "{\"n\":1}".into(),
            is_error: false,
            structured: Some(json!({ "n": 1 })),
        });
        let ends = tool_ends(&drain(&mut s));
        assert_eq!(
            ends[0],
            json!({ "conversationId": "c1", "toolCallId": "t1", "toolName": "lookup",
                    "isError": false, "result": "{\"n\":1}", "structuredContent": { "n": 1 } })
        );
        // A long result is cut on a character boundary, with a marker; a huge structured
        // content is left out of the event.
        let long = "é".repeat(EVENT_RESULT_BYTES);
        let huge = json!({ "blob": "x".repeat(EVENT_STRUCTURED_BYTES) });
        s.tool_done(ToolOutcome {
            text: long.clone(),
            is_error: true,
            structured: Some(huge),
        });
        let ends = tool_ends(&drain(&mut s));
        let result = ends[0]["result"].as_str().unwrap();
        assert!(result.starts_with(crate::text::prefix_bytes(&long, EVENT_RESULT_BYTES)));
        assert!(result.ends_with(&format!(
            "[truncated by the gateway: the first {EVENT_RESULT_BYTES} of {} bytes]",
            long.len()
        )));
        assert_eq!(ends[0]["isError"], true);
        assert!(ends[0].get("structuredContent").is_none());
        // The records keep a small structured content only; the model gets the whole text.
        s.tool_done(ToolOutcome::text("plain", false));
        assert_eq!(tool_ends(&drain(&mut s))[0]["result"], "plain");
        let turn = s.into_turn();
        let kept: Vec<Option<&Value>> = turn
            .tool_records
            .iter()
            .map(|r| r.structured_content.as_ref())
            .collect();
        assert_eq!(kept, [Some(&json!({ "n": 1 })), None, None]);
        assert!(turn.new_context.iter().any(
            |m| matches!(m, ChatMessage::Tool { content, is_error: true, .. } if *content == long)
        ));
    }

    #[test]
    fn abort_while_tools_are_owed_answers_each_so_the_history_stays_valid() {
        let mut s = steps(vec![target("openai", "a")], 0);
        drain(&mut s);
        feed(
            &mut s,
            vec![
                StreamEvent::ToolCall(call("t1", "lookup")),
                StreamEvent::ToolCall(call("t2", "lookup")),
                StreamEvent::ToolCall(call("t3", "lookup")),
            ],
        );
        s.call_ended();
        drain(&mut s);
        s.abort();
        s.tool_done(ToolOutcome::text("late", false));
        let actions = drain(&mut s);
        assert_eq!(names(&actions), ["agent:tool:end", "end aborted"]);
        let turn = s.into_turn();
        let results = tool_results(&turn);
        assert_eq!(
            results,
            [
                ("t1", ABORTED_WHILE_RUNNING),
                ("t2", NOT_RUN_ABORTED),
                ("t3", NOT_RUN_ABORTED)
            ]
        );
        assert!(turn.tool_records.iter().all(|r| r.is_error));
    }

    #[test]
    fn abort_mid_stream_with_tool_calls_answers_them_without_running_any() {
        let mut s = steps(vec![target("openai", "a")], 0);
        drain(&mut s);
        feed(
            &mut s,
            vec![
                StreamEvent::Text("let me look".into()),
                StreamEvent::ToolCall(call("t1", "lookup")),
            ],
        );
        s.abort();
        s.call_ended();
        assert_eq!(names(&drain(&mut s)), ["end aborted"]);
        let turn = s.into_turn();
        assert_eq!(turn.text, "let me look");
        assert_eq!(turn.new_context.len(), 2);
    }

    #[test]
    fn abort_during_a_retry_wait_ends_without_calling_again() {
        let mut s = steps(vec![target("openai", "a")], 2);
        drain(&mut s);
        s.call_failed(error(UpstreamErrorKind::Server));
        assert_eq!(names(&drain(&mut s)), ["wait 500"]);
        s.abort();
        s.timer_fired();
        assert_eq!(names(&drain(&mut s)), ["end aborted"]);
        s.timer_fired();
        s.call_ended();
        assert!(s.poll().is_none());
    }

    #[test]
    fn the_step_limit_ends_a_model_that_keeps_asking_for_tools() {
        let mut s = TurnSteps::new(
            "c1",
            vec![target("openai", "a")],
            user("hi"),
            vec!["lookup".into()],
            RetryPolicy::new(0),
            2,
        );
        for round in 0..2 {
            drain(&mut s);
            feed(
                &mut s,
                vec![StreamEvent::ToolCall(call(&format!("t{round}"), "lookup"))],
            );
            s.call_ended();
            if round == 0 {
                drain(&mut s);
                s.tool_done(ToolOutcome::text("r", false));
            }
        }
        assert_eq!(names(&drain(&mut s)), ["end max_steps"]);
    }

    #[test]
    fn usage_is_summed_over_the_calls_of_a_turn() {
        let mut s = steps(vec![target("openai", "a")], 0);
        drain(&mut s);
        let usage = |input, output| {
            StreamEvent::Usage(Usage {
                input,
                output,
                cache_read: 0,
                cache_write: 0,
            })
        };
        feed(
            &mut s,
            vec![StreamEvent::ToolCall(call("t1", "lookup")), usage(10, 2)],
        );
        s.call_ended();
        drain(&mut s);
        s.tool_done(ToolOutcome::text("r", false));
        drain(&mut s);
        feed(&mut s, vec![StreamEvent::Text("done".into()), usage(20, 3)]);
        s.call_ended();
        assert_eq!(names(&drain(&mut s)), ["end stop"]);
        let turn = s.into_turn();
        assert_eq!((turn.usage.input, turn.usage.output), (30, 5));
        assert_eq!(turn.last_prompt_tokens, 20);
    }

    #[test]
    fn no_candidate_ends_at_once() {
        let mut s = steps(Vec::new(), 0);
        assert_eq!(names(&drain(&mut s)), ["end error"]);
    }

    /// A turn whose model called `lookup` (needs approval) and `free` (does not), suspended,
    /// stored as JSON and resumed in a new instance.
    fn waiting_for_lookup() -> (TurnSteps, Vec<StepAction>) {
        let mut s = TurnSteps::new(
            "c1",
            vec![target("openai", "a")],
            user("hi"),
            vec!["lookup".into(), "free".into()],
            RetryPolicy::new(0),
            4,
        )
        .with_approval(vec!["lookup".into()]);
        drain(&mut s);
        feed(
            &mut s,
            vec![
                StreamEvent::Text("checking".into()),
                StreamEvent::ToolCall(call("t1", "free")),
                StreamEvent::ToolCall(call("t2", "lookup")),
                StreamEvent::ToolCall(call("t3", "free")),
            ],
        );
        s.call_ended();
        let mut actions = drain(&mut s);
        s.tool_done(ToolOutcome::text("free result", false));
        actions.extend(drain(&mut s));
        (s, actions)
    }

    fn suspended_and_resumed(s: &TurnSteps) -> TurnSteps {
        let kept = serde_json::to_string(&s.suspend().expect("a call waits")).unwrap();
        let back: SuspendedSteps = serde_json::from_str(&kept).unwrap();
        TurnSteps::resume("c1", back, user("hi"), RetryPolicy::new(0))
    }

    #[test]
    fn a_tool_that_needs_approval_waits_and_runs_once_approved_after_a_restart() {
        let (s, actions) = waiting_for_lookup();
        assert_eq!(
            names(&actions),
            [
                "agent:tool:start",
                "run free",
                "agent:tool:end",
                "agent:tool:start",
                "await lookup"
            ]
        );
        assert_eq!(s.awaiting().map(|c| c.id.as_str()), Some("t2"));
        let mut s = suspended_and_resumed(&s);
        assert!(drain(&mut s).is_empty(), "nothing happens until the answer");
        assert_eq!(s.turn().text, "checking");
        s.approval(Approval::Approved);
        assert_eq!(names(&drain(&mut s)), ["run lookup"]);
        s.tool_done(ToolOutcome::text("42", false));
        // The third call runs without asking, then the model is called with all three results.
        assert_eq!(
            names(&drain(&mut s)),
            ["agent:tool:end", "agent:tool:start", "run free"]
        );
        s.tool_done(ToolOutcome::text("free again", false));
        let actions = drain(&mut s);
        assert_eq!(names(&actions), ["agent:tool:end", "call a"]);
        let StepAction::Call { messages, .. } = &actions[1] else {
            unreachable!()
        };
        let results: Vec<&str> = messages
            .iter()
            .filter_map(|m| match m {
                ChatMessage::Tool { content, .. } => Some(content.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(results, ["free result", "42", "free again"]);
        assert_eq!(
            messages[0],
            user("hi")[0],
            "the base context is the one given"
        );
        // An answer with no call waiting does nothing.
        s.approval(Approval::Approved);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn a_declined_or_unanswered_call_gives_the_model_a_declined_result_and_the_turn_goes_on() {
        for (answer, expected) in [
            (
                Approval::Denied(Some("not on prod".into())),
                "declined: the user did not approve running the tool lookup; their reason: not on prod",
            ),
            (
                Approval::Denied(None),
                "declined: the user did not approve running the tool lookup",
            ),
            (
                Approval::TimedOut(600),
                "declined: nobody approved running the tool lookup within 600 s",
            ),
        ] {
            let (s, _) = waiting_for_lookup();
            let mut s = suspended_and_resumed(&s);
            s.approval(answer);
            let actions = drain(&mut s);
            assert_eq!(
                names(&actions),
                ["agent:tool:end", "agent:tool:start", "run free"]
            );
            let StepAction::Send { data, .. } = &actions[0] else {
                unreachable!()
            };
            let end: Value = serde_json::from_str(data).unwrap();
            assert_eq!(end["toolCallId"], "t2");
            assert_eq!(end["isError"], true);
            let declined = s.turn().new_context.iter().any(|m| {
                matches!(m, ChatMessage::Tool { content, is_error: true, .. } if content == expected)
            });
            assert!(declined, "{expected}");
        }
    }

    #[test]
    fn abort_ends_the_wait_and_answers_every_call_still_owed() {
        let (s, _) = waiting_for_lookup();
        let mut s = suspended_and_resumed(&s);
        s.abort();
        assert_eq!(names(&drain(&mut s)), ["agent:tool:end", "end aborted"]);
        assert!(s.awaiting().is_none());
        let turn = s.into_turn();
        let results = tool_results(&turn);
        assert_eq!(
            results,
            [
                ("t1", "free result"),
                ("t2", NOT_RUN_ABORTED_WAITING),
                ("t3", NOT_RUN_ABORTED)
            ]
        );
    }

    #[test]
    fn only_a_turn_that_waits_can_be_suspended() {
        let mut s = steps(vec![target("openai", "a")], 0);
        drain(&mut s);
        assert!(s.suspend().is_none());
        // Unknown tools are answered, never awaited, even when named for approval.
        let mut s = steps(vec![target("openai", "a")], 0).with_approval(vec!["nope".into()]);
        drain(&mut s);
        feed(&mut s, vec![StreamEvent::ToolCall(call("t1", "nope"))]);
        s.call_ended();
        assert_eq!(
            names(&drain(&mut s)),
            ["agent:tool:start", "agent:tool:end", "call a"]
        );
    }
}
