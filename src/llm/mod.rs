//! Provider-neutral model types: the history we send, the stream events we get back, usage and upstream errors.

pub mod anthropic;
pub mod openai;
pub mod sse;

use serde::{Deserialize, Serialize};

/// Which wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Chat Completions compatible (OpenAI, Ollama, vLLM, OpenRouter, Groq, LM Studio).
    OpenAi,
    /// Anthropic Messages API.
    Anthropic,
    /// Built-in local provider that streams the prompt back; needs no network.
    Echo,
}

/// Reasoning effort requested from the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThinkingLevel {
    Off,
    Minimal,
    Low,
    Medium,
    High,
}

impl ThinkingLevel {
    /// Every level, weakest first.
    pub const ALL: [ThinkingLevel; 5] = [
        ThinkingLevel::Off,
        ThinkingLevel::Minimal,
        ThinkingLevel::Low,
        ThinkingLevel::Medium,
        ThinkingLevel::High,
    ];

    /// The wire name (`off`, `minimal`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ThinkingLevel::Off => "off",
            ThinkingLevel::Minimal => "minimal",
            ThinkingLevel::Low => "low",
            ThinkingLevel::Medium => "medium",
            ThinkingLevel::High => "high",
        }
    }

    /// Parses a wire name; `None` for anything else.
    pub fn parse(s: &str) -> Option<ThinkingLevel> {
        ThinkingLevel::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// Anthropic `thinking.budget_tokens` for this level; `None` disables thinking.
    pub fn anthropic_budget(self) -> Option<u32> {
        match self {
            ThinkingLevel::Off => None,
            ThinkingLevel::Minimal => Some(1024),
            ThinkingLevel::Low => Some(2048),
            ThinkingLevel::Medium => Some(8192),
            ThinkingLevel::High => Some(16384),
        }
    }

    /// OpenAI-compatible `reasoning_effort`; `None` leaves the field out.
    pub fn openai_effort(self) -> Option<&'static str> {
        match self {
            ThinkingLevel::Off => None,
            ThinkingLevel::Minimal => Some("minimal"),
            ThinkingLevel::Low => Some("low"),
            ThinkingLevel::Medium => Some("medium"),
            ThinkingLevel::High => Some("high"),
        }
    }
}

/// A tool call the model asked for, with its arguments as the JSON text the model produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// Raw JSON text of the arguments (may be `{}` when the model sent none).
    pub arguments: String,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

/// One entry of the model's context, provider-neutral.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum ChatMessage {
    System {
        content: String,
    },
    User {
        content: String,
    },
    Assistant {
        content: String,
        /// Reasoning text and its signature (Anthropic needs the signature to replay thinking).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thinking: Option<Thinking>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    Tool {
        tool_call_id: String,
        name: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
}

/// A reasoning block as the provider sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thinking {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Token counts of one upstream call (or of a whole turn, when summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    #[serde(rename = "cacheRead")]
    pub cache_read: u64,
    #[serde(rename = "cacheWrite")]
    pub cache_write: u64,
}

impl Usage {
    /// input + output + cache read + cache write.
    pub fn total(&self) -> u64 {
        self.input + self.output + self.cache_read + self.cache_write
    }

    /// Adds another call's usage (the steps of a tool loop).
    pub fn add(&mut self, other: &Usage) {
        self.input += other.input;
        self.output += other.output;
        self.cache_read += other.cache_read;
        self.cache_write += other.cache_write;
    }

    /// Tokens of the prompt as the model saw it: what fills the context window.
    pub fn prompt_tokens(&self) -> u64 {
        self.input + self.cache_read + self.cache_write
    }
}

/// Why the model stopped one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    /// Content filter, refusal or anything else the provider names.
    Other,
}

/// What a provider stream decoder yields, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A text delta, to forward at once.
    Text(String),
    /// A reasoning delta, to forward at once.
    Thinking(String),
    /// The signature that closes a reasoning block (Anthropic).
    ThinkingSignature(String),
    /// A complete tool call, assembled from its streamed pieces.
    ToolCall(ToolCall),
    /// Usage so far; later values replace earlier ones field by field when non-zero.
    Usage(Usage),
    /// The call finished normally with this reason.
    Finish(FinishReason),
    /// The provider reported an error inside a 200 stream.
    Error(UpstreamError),
}

/// Who is at fault for an upstream failure, and so whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Bad or missing API key (401/403).
    Auth,
    /// 429; retry after the given delay.
    RateLimited,
    /// 529 or an `overloaded_error`.
    Overloaded,
    /// 400/404/422 other than context length.
    BadRequest,
    /// The prompt does not fit the model's context.
    ContextTooLong,
    /// 5xx.
    Server,
    /// Connection refused, reset, DNS.
    Network,
    /// No bytes for longer than the stall timeout.
    Timeout,
    /// The stream did not parse or ended without its end marker.
    Malformed,
}

impl UpstreamErrorKind {
    /// The `error.code` a client sees for this class.
    pub fn code(self) -> &'static str {
        match self {
            UpstreamErrorKind::Auth => "upstream_auth",
            UpstreamErrorKind::RateLimited => "upstream_rate_limited",
            UpstreamErrorKind::Overloaded => "upstream_overloaded",
            UpstreamErrorKind::BadRequest => "upstream_bad_request",
            UpstreamErrorKind::ContextTooLong => "context_too_long",
            UpstreamErrorKind::Server => "upstream_error",
            UpstreamErrorKind::Network => "upstream_error",
            UpstreamErrorKind::Timeout => "upstream_timeout",
            UpstreamErrorKind::Malformed => "upstream_error",
        }
    }

    /// Whether trying again (or another candidate) can help.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            UpstreamErrorKind::RateLimited
                | UpstreamErrorKind::Overloaded
                | UpstreamErrorKind::Server
                | UpstreamErrorKind::Network
                | UpstreamErrorKind::Timeout
        )
    }
}

/// An upstream failure, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    /// HTTP status when there was one.
    pub status: Option<u16>,
    /// Human-readable reason (the provider's own message when it sent one).
    pub message: String,
    /// Milliseconds to wait before retrying, from `retry-after` or the error body.
    pub retry_after_ms: Option<u64>,
}

impl UpstreamError {
    /// Builds an error with no status.
    pub fn new(kind: UpstreamErrorKind, message: impl Into<String>) -> Self {
        UpstreamError {
            kind,
            status: None,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// An HTTP request to send upstream, built by a provider module.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Everything a provider needs to build one streaming call.
#[derive(Debug, Clone)]
pub struct CallSpec<'a> {
    pub base_url: &'a str,
    pub api_key: Option<&'a str>,
    pub model: &'a str,
    pub messages: &'a [ChatMessage],
    pub tools: &'a [ToolSpec],
    pub thinking: ThinkingLevel,
    pub max_tokens: u32,
}

/// A decoder of one provider's stream: feed SSE events, drain stream events.
pub trait StreamDecoder {
    /// Handles one SSE event (`event:` name, joined `data:`), appending what it yields to `out`.
    fn on_event(&mut self, event: &sse::SseEvent, out: &mut Vec<StreamEvent>);
    /// The byte stream ended; yields a trailing error when the provider's end marker never came.
    fn on_end(&mut self, out: &mut Vec<StreamEvent>);
}
