//! A turn parked on a tool call that waits for a person's approval: what is kept while it waits (so the object may hibernate or restart), the event that asks, and who may answer and how.

use super::checkpoint::TurnRecord;
use super::steps::{Approval, SuspendedSteps};
use crate::error::RoomError;
use crate::llm::{ThinkingLevel, ToolCall, ToolSpec};
use crate::mcp::McpTool;
use crate::protocol::{json_str, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The key-value row of a turn waiting for approval.
pub const WAITING_KEY: &str = "waiting";

/// A turn waiting for a person's approval of one of its tool calls, as kept in the
/// conversation's storage until it is answered, aborted or times out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitingTurn {
    pub steps: SuspendedSteps,
    /// The turn's checkpoint record (reply id, model, what it continues).
    pub record: TurnRecord,
    /// The tools the model was given, as it was given them (an MCP server's list may change
    /// while the turn waits; the turn goes on with the tools it started with).
    pub tools: Vec<ToolSpec>,
    /// The turn's tools from MCP servers, by the names the model knows (the way back to each
    /// server and the tool's own name, for an approved call that runs after a restart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_tools: Vec<McpTool>,
    /// The thinking level every call of the turn runs with, when not the session's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<ThinkingLevel>,
    /// The seq of the `agent:tool:approval` event that asked: a socket whose replay carries
    /// it is not asked again.
    pub question_seq: u64,
    /// When the question was asked, and when an unanswered question counts as declined.
    pub asked_at_ms: i64,
    pub deadline_ms: i64,
}

impl WaitingTurn {
    /// The call waiting for approval.
    pub fn call(&self) -> &ToolCall {
        &self.steps.awaiting
    }

    /// `agent:tool:approval`: the call, its arguments as JSON (as text when the model sent
    /// something else), and when it will count as declined (epoch ms).
    pub fn event_payload(&self, conversation_id: &str) -> String {
        let call = self.call();
        let args: Value = if call.arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(&call.arguments)
                .unwrap_or_else(|_| Value::String(call.arguments.clone()))
        };
        json!({
            "conversationId": conversation_id,
            "toolCallId": call.id,
            "toolName": call.name,
            "args": args,
            "expiresAt": self.deadline_ms,
        })
        .to_string()
    }

    /// Whether nobody answered in time at `now_ms`; then the call is declined with this answer.
    pub fn expired(&self, now_ms: i64) -> Option<Approval> {
        (now_ms >= self.deadline_ms).then(|| {
            let waited_s = (self.deadline_ms - self.asked_at_ms).max(0) as u64 / 1000;
            Approval::TimedOut(waited_s)
        })
    }

    /// Checks a `tool:approve` from `user` against this wait: only the conversation's `owner`
    /// answers, and only the call that waits.
    pub fn answer(
        &self,
        user: &str,
        owner: Option<&str>,
        tool_call_id: &str,
        approved: bool,
        reason: Option<String>,
    ) -> Result<Approval, RoomError> {
        if owner != Some(user) {
            return Err(RoomError::client(
                ErrorCode::Unauthorized,
                "only the conversation's owner may answer its tool calls",
            ));
        }
        if tool_call_id != self.call().id {
            return Err(no_pending(tool_call_id));
        }
        Ok(if approved {
            Approval::Approved
        } else {
            Approval::Denied(reason)
        })
    }
}

/// The refusal of an answer to a call that does not wait for approval (never did, or was
/// answered, aborted or timed out already).
pub fn no_pending(tool_call_id: &str) -> RoomError {
    RoomError::client(
        ErrorCode::NoPendingApproval,
        format!(
            "no tool call {} waits for approval in this conversation",
            json_str(tool_call_id)
        ),
    )
}

/// The refusal of a message while a call waits for approval: the turn is parked, not queued
/// behind (a queue would not outlive the object's hibernation).
pub fn message_refused(waiting: &WaitingTurn) -> RoomError {
    RoomError::client(
        ErrorCode::ApprovalPending,
        format!(
            "the tool call {} ({}) waits for your approval: answer it with tool:approve, or abort the turn, then send your message again",
            json_str(&waiting.call().id),
            waiting.call().name
        ),
    )
}

/// When a question asked at `now_ms` counts as declined, for `timeout_s`.
pub fn deadline(now_ms: i64, timeout_s: u64) -> i64 {
    now_ms.saturating_add((timeout_s as i64).saturating_mul(1000))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::conversation::steps::{StepAction, TurnSteps};
    use crate::llm::{ChatMessage, StreamEvent};
    use crate::retry::RetryPolicy;
    use crate::routing::RoutingDecision;

    /// A turn waiting for the approval of `deploy` (call `t1`), asked at 1 s, for 600 s.
    pub(crate) fn waiting(arguments: &str) -> WaitingTurn {
        let target = RoutingDecision {
            provider: "openai".into(),
            model: "m".into(),
            rule_name: "default".into(),
            reason: "default".into(),
        };
        let base = vec![ChatMessage::User {
            content: "hi".into(),
        }];
        let mut steps = TurnSteps::new(
            "c1",
            vec![target],
            base,
            vec!["deploy".into()],
            RetryPolicy::new(0),
            4,
        )
        .with_approval(vec!["deploy".into()]);
        while steps.poll().is_some() {}
        let call = ToolCall {
            id: "t1".into(),
            name: "deploy".into(),
            arguments: arguments.into(),
        };
        steps.stream_event(StreamEvent::ToolCall(call), &mut Vec::new());
        steps.call_ended();
        let actions: Vec<StepAction> = std::iter::from_fn(|| steps.poll()).collect();
        assert!(matches!(actions.last(), Some(StepAction::AwaitApproval(_))));
        WaitingTurn {
            steps: steps.suspend().unwrap(),
            record: TurnRecord::default(),
            tools: Vec::new(),
            mcp_tools: Vec::new(),
            thinking: None,
            question_seq: 5,
            asked_at_ms: 1_000,
            deadline_ms: deadline(1_000, 600),
        }
    }

    #[test]
    fn the_question_names_the_call_its_arguments_and_its_deadline() {
        let w = waiting(r#"{"env":"prod"}"#);
        let v: Value = serde_json::from_str(&w.event_payload("c1")).unwrap();
        assert_eq!(
            v,
            json!({"conversationId": "c1", "toolCallId": "t1", "toolName": "deploy",
                   "args": {"env": "prod"}, "expiresAt": 601_000})
        );
        let v: Value = serde_json::from_str(&waiting("not json").event_payload("c1")).unwrap();
        assert_eq!(v["args"], "not json");
        let v: Value = serde_json::from_str(&waiting("").event_payload("c1")).unwrap();
        assert_eq!(v["args"], json!({}));
    }

    #[test]
    fn only_the_owner_answers_and_only_the_call_that_waits() {
        let w = waiting("{}");
        assert_eq!(
            w.answer("alice", Some("alice"), "t1", true, None),
            Ok(Approval::Approved)
        );
        assert_eq!(
            w.answer("alice", Some("alice"), "t1", false, Some("no".into())),
            Ok(Approval::Denied(Some("no".into())))
        );
        let other = w.answer("mallory", Some("alice"), "t1", true, None);
        assert_eq!(other.unwrap_err().code(), ErrorCode::Unauthorized);
        let unowned = w.answer("mallory", None, "t1", true, None);
        assert_eq!(unowned.unwrap_err().code(), ErrorCode::Unauthorized);
        let wrong = w.answer("alice", Some("alice"), "t2", true, None);
        assert_eq!(wrong.unwrap_err().code(), ErrorCode::NoPendingApproval);
    }

    #[test]
    fn an_unanswered_question_is_declined_at_its_deadline() {
        let w = waiting("{}");
        assert_eq!(w.expired(600_999), None);
        assert_eq!(w.expired(601_000), Some(Approval::TimedOut(600)));
    }

    #[test]
    fn what_is_kept_reads_back_the_same() {
        let w = waiting(r#"{"env":"prod"}"#);
        let text = serde_json::to_string(&w).unwrap();
        assert_eq!(serde_json::from_str::<WaitingTurn>(&text).unwrap(), w);
        let refused = message_refused(&w);
        assert_eq!(refused.code(), ErrorCode::ApprovalPending);
    }
}
