//! Provider-neutral model types: the history we send, the stream events we get back, usage and upstream errors.

pub mod anthropic;
pub mod openai;
pub mod redact;
pub mod sse;
pub mod stream;

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
    /// Beyond `high`: offered only on models that take it (see [`ThinkingLevel::offered`]).
    Xhigh,
}

impl ThinkingLevel {
    /// Every level, weakest first.
    pub const ALL: [ThinkingLevel; 6] = [
        ThinkingLevel::Off,
        ThinkingLevel::Minimal,
        ThinkingLevel::Low,
        ThinkingLevel::Medium,
        ThinkingLevel::High,
        ThinkingLevel::Xhigh,
    ];

    /// The levels the reference gateway's agent offers on a reasoning model without `xhigh`.
    pub const STANDARD: [ThinkingLevel; 5] = [
        ThinkingLevel::Off,
        ThinkingLevel::Minimal,
        ThinkingLevel::Low,
        ThinkingLevel::Medium,
        ThinkingLevel::High,
    ];

    /// The levels offered on a reasoning model: the standard five, and `xhigh` where the model
    /// takes it.
    pub fn offered(xhigh: bool) -> Vec<ThinkingLevel> {
        if xhigh {
            ThinkingLevel::ALL.to_vec()
        } else {
            ThinkingLevel::STANDARD.to_vec()
        }
    }

    /// The wire name (`off`, `minimal`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ThinkingLevel::Off => "off",
            ThinkingLevel::Minimal => "minimal",
            ThinkingLevel::Low => "low",
            ThinkingLevel::Medium => "medium",
            ThinkingLevel::High => "high",
            ThinkingLevel::Xhigh => "xhigh",
        }
    }

    /// Parses a wire name; `None` for anything else.
    pub fn parse(s: &str) -> Option<ThinkingLevel> {
        ThinkingLevel::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// Anthropic `thinking.budget_tokens` for this level; `None` disables thinking. `xhigh`
    /// doubles `high`'s budget (the request's `max_tokens` is raised above it).
    pub fn anthropic_budget(self) -> Option<u32> {
        match self {
            ThinkingLevel::Off => None,
            ThinkingLevel::Minimal => Some(1024),
            ThinkingLevel::Low => Some(2048),
            ThinkingLevel::Medium => Some(8192),
            ThinkingLevel::High => Some(16384),
            ThinkingLevel::Xhigh => Some(32768),
        }
    }

    /// OpenAI-compatible `reasoning_effort` for `model`; `None` leaves the field out. OpenAI's
    /// o-series takes no `minimal` (it is sent as `low`); `xhigh` is sent as such to a model
    /// that takes it and as `high` to any other.
    pub fn openai_effort(self, model: &str) -> Option<&'static str> {
        match self {
            ThinkingLevel::Off => None,
            ThinkingLevel::Minimal if is_openai_o_series(model) => Some("low"),
            ThinkingLevel::Minimal => Some("minimal"),
            ThinkingLevel::Low => Some("low"),
            ThinkingLevel::Medium => Some("medium"),
            ThinkingLevel::High => Some("high"),
            ThinkingLevel::Xhigh if supports_xhigh(model) => Some("xhigh"),
            ThinkingLevel::Xhigh => Some("high"),
        }
    }
}

/// Whether a model takes the `xhigh` level, by its id, as the reference gateway's agent
/// decides it: the GPT-5.2, 5.3 and 5.4 families and Claude Opus 4.6.
pub fn supports_xhigh(model: &str) -> bool {
    let id = model.to_ascii_lowercase();
    ["gpt-5.2", "gpt-5.3", "gpt-5.4", "opus-4-6", "opus-4.6"]
        .iter()
        .any(|family| id.contains(family))
}

/// Whether `model` is an OpenAI o-series reasoning model (`o1`, `o3-mini`, `o4-mini`, ...),
/// whose `reasoning_effort` has no `minimal`.
fn is_openai_o_series(model: &str) -> bool {
    let id = model.rsplit('/').next().unwrap_or(model).as_bytes();
    id.len() >= 2 && id[0].eq_ignore_ascii_case(&b'o') && id[1].is_ascii_digit()
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

// ---------------------------------------------------------------------------
// Shared helpers for the provider modules: upstream error classification.
// ---------------------------------------------------------------------------

/// Longest provider message (in chars) copied into an [`UpstreamError`]; bodies can be whole HTML pages.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 300;

/// How much of an error body (in bytes) is searched for wording; error bodies are small, a proxy's HTML page need not be read whole.
const MAX_ERROR_SCAN_BYTES: usize = 16 * 1024;

/// The fields providers put in an error body, whichever of the common shapes it uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorBody {
    /// `error.message` (or a bare `error` string, or a top-level `message`).
    pub message: Option<String>,
    /// `error.type` (`invalid_request_error`, `overloaded_error`, ...).
    pub error_type: Option<String>,
    /// `error.code`, as text even when the provider sent a number (OpenRouter, vLLM).
    pub code: Option<String>,
}

/// Reads the error fields from a JSON error body; fields it cannot find stay `None`.
///
/// Accepts OpenAI's `{"error":{"message","type","code"}}`, Anthropic's
/// `{"type":"error","error":{"type","message"}}`, a bare `{"error":"text"}` (Ollama),
/// a top-level `{"message"}` and a one-element array of any of these (some gateways wrap it).
pub fn parse_error_body(body: &str) -> ErrorBody {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => error_fields(&v),
        Err(_) => ErrorBody::default(),
    }
}

/// Reads the error fields from an already parsed JSON value (see [`parse_error_body`]).
pub fn error_fields(v: &serde_json::Value) -> ErrorBody {
    use serde_json::Value;
    let v = match v {
        Value::Array(items) => match items.first() {
            Some(first) => first,
            None => return ErrorBody::default(),
        },
        other => other,
    };
    let text = |x: Option<&Value>| -> Option<String> {
        match x {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    };
    match v.get("error") {
        Some(Value::Object(e)) => ErrorBody {
            message: text(e.get("message")),
            error_type: text(e.get("type")),
            code: text(e.get("code")),
        },
        Some(Value::String(s)) if !s.is_empty() => ErrorBody {
            message: Some(s.clone()),
            error_type: None,
            code: None,
        },
        _ => ErrorBody {
            message: text(v.get("message")),
            error_type: None,
            code: None,
        },
    }
}

/// The string at `v` when it is a non-empty string.
pub fn non_empty_str(v: Option<&serde_json::Value>) -> Option<&str> {
    v.and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `s` cut to at most `max_chars` characters (never inside a character), surrounding whitespace trimmed.
pub fn truncate_chars(s: &str, max_chars: usize) -> String {
    crate::text::prefix_chars(s.trim(), max_chars)
        .trim_end()
        .to_string()
}

/// Longest retry delay reported, in milliseconds (a day): keeps `now + delay` far from overflow.
pub const MAX_RETRY_AFTER_MS: u64 = 24 * 60 * 60 * 1000;

/// Parses a `retry-after` header value in seconds (integer or decimal) into milliseconds,
/// at most [`MAX_RETRY_AFTER_MS`].
///
/// An HTTP-date is ignored (`None`): turning it into a delay needs a clock, which this pure
/// core does not read; the caller falls back to its own backoff.
pub fn parse_retry_after(value: &str) -> Option<u64> {
    decimal_times(value.trim(), 1000).map(rounded_ms)
}

/// Finds a delay hint in an error message ("Please try again in 1.5s", "try again in 6ms",
/// "retry after 20 seconds", "try again in 7m12s"), in milliseconds, at most [`MAX_RETRY_AFTER_MS`].
pub fn retry_hint_from_text(text: &str) -> Option<u64> {
    let lower = scan_prefix(text).to_ascii_lowercase();
    for marker in ["try again in ", "retry after ", "retry in "] {
        if let Some(pos) = lower.find(marker) {
            if let Some(ms) = lower
                .get(pos + marker.len()..)
                .and_then(parse_duration_prefix)
            {
                return Some(ms);
            }
        }
    }
    None
}

/// Parses a duration such as `1.5s`, `6ms`, `20 seconds` or `1m30s` at the start of `s`, in milliseconds.
fn parse_duration_prefix(s: &str) -> Option<u64> {
    let mut rest = s;
    let mut total = 0u128;
    let mut any = false;
    loop {
        let num_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if num_len == 0 {
            break;
        }
        let (num, after) = rest.split_at(num_len);
        let after = after.trim_start_matches(' ');
        let unit_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let (unit, tail) = after.split_at(unit_len);
        let unit_ms = match unit {
            "ms" | "msec" | "milliseconds" | "millisecond" => 1,
            "s" | "sec" | "secs" | "second" | "seconds" => 1000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
            "h" | "hr" | "hour" | "hours" => 3_600_000,
            _ => break,
        };
        let Some(value) = decimal_times(num, unit_ms) else {
            break;
        };
        total = (total + value).min(MAX_FIXED_MS);
        any = true;
        rest = tail;
    }
    any.then(|| rounded_ms(total))
}

/// Fractional digits kept by [`decimal_times`]: its results count 10^-18 ms.
const FRACTION_DIGITS: usize = 18;
/// One millisecond in [`decimal_times`]'s units.
const FIXED_MS: u128 = 10u128.pow(FRACTION_DIGITS as u32);
/// [`MAX_RETRY_AFTER_MS`] in [`decimal_times`]'s units, where its results saturate.
const MAX_FIXED_MS: u128 = MAX_RETRY_AFTER_MS as u128 * FIXED_MS;

/// `num` (ASCII digits with at most one `.`, and at least one digit: `2`, `1.5`, `1.`, `.5`)
/// times `unit_ms`, exactly, in 10^-18 ms (fraction digits past the 18th are dropped),
/// saturating at [`MAX_RETRY_AFTER_MS`]; `None` for anything else.
///
/// Written out rather than parsed as `f64`: the float parser's tables are about 10 KB of the
/// Worker's compressed bundle, for two delay hints.
fn decimal_times(num: &str, unit_ms: u64) -> Option<u128> {
    let (whole, fraction) = num.split_once('.').unwrap_or((num, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + fraction.len() == 0 || !digits(whole) || !digits(fraction) {
        return None;
    }
    let unit = u128::from(unit_ms);
    let mut value = 0u128;
    for b in whole.bytes() {
        value = (value * 10 + u128::from(b - b'0') * unit * FIXED_MS).min(MAX_FIXED_MS);
    }
    let mut scale = FIXED_MS;
    for b in fraction.bytes().take(FRACTION_DIGITS) {
        scale /= 10;
        value += u128::from(b - b'0') * unit * scale;
    }
    Some(value.min(MAX_FIXED_MS))
}

/// Fixed-point milliseconds from [`decimal_times`], rounded half up to whole ones.
fn rounded_ms(fixed: u128) -> u64 {
    ((fixed + FIXED_MS / 2) / FIXED_MS) as u64
}

/// The first [`MAX_ERROR_SCAN_BYTES`] of `s`, cut on a char boundary.
fn scan_prefix(s: &str) -> &str {
    crate::text::prefix_bytes(s, MAX_ERROR_SCAN_BYTES)
}

/// Whether an error text says the prompt does not fit the model's context window.
pub fn mentions_context_length(text: &str) -> bool {
    let lower = scan_prefix(text).to_ascii_lowercase();
    [
        "context_length_exceeded",
        "maximum context length",
        "context length",
        "context window",
        "context size",
        "too many tokens",
        "prompt is too long",
        "input is too long",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

/// The kind an error's `type`/`code`/message names, when they name one.
///
/// Used for error objects inside a 200 stream (no status) and to refine a status class.
/// Covers OpenAI (`type`, string `code`), Anthropic (`type`) and the numeric `code` that
/// OpenRouter and vLLM put there (mapped as an HTTP status).
pub fn kind_from_error_fields(fields: &ErrorBody) -> Option<UpstreamErrorKind> {
    let ty = fields.error_type.as_deref().unwrap_or("");
    let code = fields.code.as_deref().unwrap_or("");
    let message = fields.message.as_deref().unwrap_or("");
    let names = |list: &[&str]| {
        list.iter()
            .any(|n| ty.eq_ignore_ascii_case(n) || code.eq_ignore_ascii_case(n))
    };
    if names(&["context_length_exceeded", "string_above_max_length"])
        || mentions_context_length(message)
    {
        return Some(UpstreamErrorKind::ContextTooLong);
    }
    let lower = scan_prefix(message).to_ascii_lowercase();
    if names(&["overloaded_error", "overloaded"]) || lower.contains("overloaded") {
        return Some(UpstreamErrorKind::Overloaded);
    }
    if names(&[
        "rate_limit_error",
        "rate_limit_exceeded",
        "insufficient_quota",
        "tokens",
        "requests",
    ]) || lower.contains("rate limit")
    {
        return Some(UpstreamErrorKind::RateLimited);
    }
    if names(&[
        "authentication_error",
        "permission_error",
        "invalid_api_key",
        "invalid_authentication",
        "unauthorized",
    ]) {
        return Some(UpstreamErrorKind::Auth);
    }
    if names(&[
        "invalid_request_error",
        "not_found_error",
        "request_too_large",
        "model_not_found",
        "badrequesterror",
        "notfounderror",
    ]) {
        return Some(UpstreamErrorKind::BadRequest);
    }
    if names(&[
        "server_error",
        "api_error",
        "internal_error",
        "internalservererror",
        "service_unavailable",
    ]) {
        return Some(UpstreamErrorKind::Server);
    }
    if let Ok(status) = code.parse::<u16>() {
        if (400..600).contains(&status) {
            return Some(status_kind(status));
        }
    }
    None
}

/// The kind a non-2xx status alone implies.
pub fn status_kind(status: u16) -> UpstreamErrorKind {
    match status {
        401 | 403 => UpstreamErrorKind::Auth,
        408 => UpstreamErrorKind::Timeout,
        429 => UpstreamErrorKind::RateLimited,
        529 => UpstreamErrorKind::Overloaded,
        400..=499 => UpstreamErrorKind::BadRequest,
        // 5xx, and statuses that should never reach here (1xx/3xx): the upstream misbehaved.
        _ => UpstreamErrorKind::Server,
    }
}

/// Classifies a non-2xx upstream response from its status, `retry-after` header and body.
///
/// The status decides first (401/403 auth, 429 rate limit, 529 overloaded); a 4xx whose
/// body speaks of the context length is `ContextTooLong`, other 4xx `BadRequest`; a 5xx
/// that says "overloaded" is `Overloaded`, other 5xx `Server`. The message is the
/// provider's `error.message` when the body is JSON, else the body itself, cut to
/// [`MAX_ERROR_MESSAGE_CHARS`]. The delay comes from `retry-after` (seconds), or for a
/// 429 from a hint in the message ("try again in 1.5s").
pub fn classify_http(status: u16, retry_after: Option<&str>, body: &str) -> UpstreamError {
    let fields = parse_error_body(body);
    let by_fields = kind_from_error_fields(&fields);
    let kind = match status_kind(status) {
        UpstreamErrorKind::BadRequest
            if by_fields == Some(UpstreamErrorKind::ContextTooLong)
                || mentions_context_length(body) =>
        {
            UpstreamErrorKind::ContextTooLong
        }
        UpstreamErrorKind::Server
            if by_fields == Some(UpstreamErrorKind::Overloaded)
                || scan_prefix(body)
                    .to_ascii_lowercase()
                    .contains("overloaded") =>
        {
            UpstreamErrorKind::Overloaded
        }
        kind => kind,
    };
    let message = match &fields.message {
        Some(m) => truncate_chars(m, MAX_ERROR_MESSAGE_CHARS),
        None => truncate_chars(body, MAX_ERROR_MESSAGE_CHARS),
    };
    let message = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        message
    };
    let mut retry_after_ms = retry_after.and_then(parse_retry_after);
    if retry_after_ms.is_none() && kind == UpstreamErrorKind::RateLimited {
        retry_after_ms = fields
            .message
            .as_deref()
            .and_then(retry_hint_from_text)
            .or_else(|| retry_hint_from_text(body));
    }
    UpstreamError {
        kind,
        status: Some(status),
        message,
        retry_after_ms,
    }
}

/// Classifies an error object found inside a 200 stream (no status, no header).
///
/// Unknown types default to `Server`: the request was accepted, so a failure mid-generation
/// is more likely the upstream's trouble than ours, and retrying is worth it.
pub fn classify_stream_error(fields: &ErrorBody) -> UpstreamError {
    let kind = kind_from_error_fields(fields).unwrap_or(UpstreamErrorKind::Server);
    let message = fields
        .message
        .as_deref()
        .map(|m| truncate_chars(m, MAX_ERROR_MESSAGE_CHARS))
        .filter(|m| !m.is_empty())
        .or_else(|| fields.error_type.clone())
        .or_else(|| fields.code.clone())
        .unwrap_or_else(|| "error in stream".to_string());
    let retry_after_ms = if kind == UpstreamErrorKind::RateLimited {
        fields.message.as_deref().and_then(retry_hint_from_text)
    } else {
        None
    };
    UpstreamError {
        kind,
        status: None,
        message,
        retry_after_ms,
    }
}

/// Largest token count read from a provider: far above any real call, yet low enough that
/// summing many calls' [`Usage`] (which adds without overflow checks) cannot overflow.
pub const MAX_TOKEN_COUNT: u64 = u32::MAX as u64;

/// Reads a JSON token count: a non-negative integer (or a float, which some servers send),
/// clamped to [`MAX_TOKEN_COUNT`]; anything else is 0.
pub fn json_count(v: Option<&serde_json::Value>) -> u64 {
    let n = match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or_else(|| match n.as_f64() {
            Some(f) if f.is_finite() && f > 0.0 => f as u64,
            _ => 0,
        }),
        _ => 0,
    };
    n.min(MAX_TOKEN_COUNT)
}

/// Helpers shared by the provider modules' tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::sse::{SseDecoder, SseEvent};
    use super::{StreamDecoder, StreamEvent};
    use proptest::prelude::*;
    use serde_json::Value;

    /// Feeds `bytes` through an [`SseDecoder`] in `chunk`-byte pieces into `decoder`, then ends both.
    pub fn run(decoder: &mut dyn StreamDecoder, bytes: &[u8], chunk: usize) -> Vec<StreamEvent> {
        let mut sse = SseDecoder::new();
        let mut events: Vec<SseEvent> = Vec::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            let pushed = sse.push(piece, &mut events);
            for e in events.drain(..) {
                decoder.on_event(&e, &mut out);
            }
            if pushed.is_err() {
                break;
            }
        }
        sse.finish(&mut events);
        for e in events.drain(..) {
            decoder.on_event(&e, &mut out);
        }
        decoder.on_end(&mut out);
        out
    }

    /// The same stream decoded whole, in 1-byte and in 7-byte chunks must agree; returns it.
    pub fn run_all_chunkings<D: StreamDecoder>(
        new: impl Fn() -> D,
        bytes: &[u8],
    ) -> Vec<StreamEvent> {
        let whole = run(&mut new(), bytes, bytes.len());
        assert_eq!(run(&mut new(), bytes, 1), whole, "1-byte chunks");
        assert_eq!(run(&mut new(), bytes, 7), whole, "7-byte chunks");
        whole
    }

    /// Checks what every decoder promises: at most one `Finish`, nothing after `Finish` or `Error`.
    pub fn check_invariants(events: &[StreamEvent]) -> Result<(), String> {
        let mut closed = false;
        for (i, e) in events.iter().enumerate() {
            if closed {
                return Err(format!("event {i} after Finish/Error: {e:?}"));
            }
            if matches!(e, StreamEvent::Finish(_) | StreamEvent::Error(_)) {
                closed = true;
            }
        }
        Ok(())
    }

    /// An object of the fields that are present (`Some`).
    pub fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
        Value::Object(
            fields
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                .collect(),
        )
    }

    /// A field value: usually absent or of the expected shape `usual`, sometimes any JSON.
    pub fn field(
        usual: impl Strategy<Value = Value> + 'static,
        words: &'static [&'static str],
    ) -> BoxedStrategy<Option<Value>> {
        prop_oneof![
            2 => Just(None),
            4 => usual.prop_map(Some),
            1 => arb_json(words).prop_map(Some),
        ]
        .boxed()
    }

    /// A token count as servers send it, or a strange number.
    pub fn count() -> BoxedStrategy<Value> {
        prop_oneof![
            4 => (0u64..5000).prop_map(Value::from),
            1 => any::<u64>().prop_map(Value::from),
            1 => any::<i64>().prop_map(Value::from),
            1 => any::<f64>().prop_map(Value::from),
        ]
        .boxed()
    }

    /// A string from `words` or any string.
    pub fn text(words: &'static [&'static str]) -> BoxedStrategy<Value> {
        prop_oneof![
            2 => prop::sample::select(words).prop_map(Value::from),
            1 => any::<String>().prop_map(Value::from),
        ]
        .boxed()
    }

    /// Arbitrary JSON whose keys and strings are drawn mostly from `words`, so that random
    /// values reach the decoders' deeper paths.
    pub fn arb_json(words: &'static [&'static str]) -> BoxedStrategy<Value> {
        let word = prop::sample::select(words).prop_map(str::to_string);
        let string = prop_oneof![3 => word.clone(), 1 => any::<String>()];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..5).prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            string.clone().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((word.clone(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xhigh_is_offered_and_sent_only_where_the_model_takes_it() {
        for id in [
            "gpt-5.2",
            "gpt-5.2-codex",
            "gpt-5.4-mini",
            "claude-opus-4-6",
            "anthropic/claude-opus-4.6",
        ] {
            assert!(supports_xhigh(id), "{id}");
        }
        for id in [
            "gpt-5",
            "gpt-5-mini",
            "o3",
            "claude-opus-4-1",
            "claude-sonnet-4-5",
        ] {
            assert!(!supports_xhigh(id), "{id}");
        }
        assert_eq!(
            ThinkingLevel::offered(false),
            ThinkingLevel::STANDARD.to_vec()
        );
        assert_eq!(
            ThinkingLevel::offered(true).last(),
            Some(&ThinkingLevel::Xhigh)
        );
        assert_eq!(ThinkingLevel::parse("xhigh"), Some(ThinkingLevel::Xhigh));
        assert_eq!(ThinkingLevel::Xhigh.as_str(), "xhigh");
        let xhigh = ThinkingLevel::Xhigh;
        assert_eq!(xhigh.openai_effort("gpt-5.2"), Some("xhigh"));
        assert_eq!(
            xhigh.openai_effort("gpt-5"),
            Some("high"),
            "clamped where not taken"
        );
        assert!(xhigh.anthropic_budget() > ThinkingLevel::High.anthropic_budget());
    }

    #[test]
    fn minimal_effort_is_low_on_the_o_series_only() {
        let minimal = ThinkingLevel::Minimal;
        for id in ["o3", "o4-mini", "O1", "openai/o3-mini"] {
            assert_eq!(minimal.openai_effort(id), Some("low"), "{id}");
        }
        for id in ["gpt-5", "gpt-5-mini", "omni-7b", "qwen3"] {
            assert_eq!(minimal.openai_effort(id), Some("minimal"), "{id}");
        }
        assert_eq!(ThinkingLevel::Off.openai_effort("o3"), None);
        assert_eq!(ThinkingLevel::Low.openai_effort("gpt-5"), Some("low"));
    }

    #[test]
    fn retry_after_header() {
        assert_eq!(parse_retry_after("2"), Some(2000));
        assert_eq!(parse_retry_after(" 0.5 "), Some(500));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after(""), None);
        assert_eq!(parse_retry_after("1."), Some(1000));
        assert_eq!(parse_retry_after("1.2.3"), None);
        assert_eq!(
            parse_retry_after(&"9".repeat(400)),
            Some(MAX_RETRY_AFTER_MS)
        );
        assert_eq!(parse_retry_after(".25"), Some(250));
        assert_eq!(parse_retry_after("."), None);
        assert_eq!(
            parse_retry_after("1.2345"),
            Some(1235),
            "half a millisecond rounds up"
        );
        assert_eq!(parse_retry_after("0.0004999"), Some(0));
        assert_eq!(
            parse_retry_after(&format!("0.{}1", "0".repeat(30))),
            Some(0)
        );
    }

    #[test]
    fn retry_hints_in_messages() {
        assert_eq!(
            retry_hint_from_text("Please try again in 1.5s."),
            Some(1500)
        );
        assert_eq!(retry_hint_from_text("Please try again in 20ms"), Some(20));
        assert_eq!(retry_hint_from_text("Try again in 7m12s."), Some(432_000));
        assert_eq!(
            retry_hint_from_text("Please retry after 20 seconds"),
            Some(20_000)
        );
        assert_eq!(retry_hint_from_text("try again in 1h"), Some(3_600_000));
        assert_eq!(
            retry_hint_from_text("try again in 90000h"),
            Some(MAX_RETRY_AFTER_MS)
        );
        assert_eq!(retry_hint_from_text("retry in 1m30.5s"), Some(90_500));
        assert_eq!(retry_hint_from_text("try again in 0.25ms"), Some(0));
        assert_eq!(retry_hint_from_text("try again in 1.2.3s"), None);
        assert_eq!(retry_hint_from_text("try again in a moment"), None);
        assert_eq!(retry_hint_from_text("try again in 5 parsecs"), None);
        assert_eq!(retry_hint_from_text("slow down"), None);
    }

    #[test]
    fn error_body_shapes() {
        let openai = parse_error_body(
            r#"{"error":{"message":"m","type":"invalid_request_error","param":null,"code":"context_length_exceeded"}}"#,
        );
        assert_eq!(openai.message.as_deref(), Some("m"));
        assert_eq!(openai.error_type.as_deref(), Some("invalid_request_error"));
        assert_eq!(openai.code.as_deref(), Some("context_length_exceeded"));

        let anthropic = parse_error_body(
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(anthropic.error_type.as_deref(), Some("overloaded_error"));
        assert_eq!(anthropic.message.as_deref(), Some("Overloaded"));

        let numeric = parse_error_body(r#"{"error":{"code":429,"message":"Rate limited"}}"#);
        assert_eq!(numeric.code.as_deref(), Some("429"));
        assert_eq!(
            kind_from_error_fields(&numeric),
            Some(UpstreamErrorKind::RateLimited)
        );

        let wrapped =
            parse_error_body(r#"[{"error":{"code":503,"message":"busy","status":"UNAVAILABLE"}}]"#);
        assert_eq!(wrapped.message.as_deref(), Some("busy"));

        assert_eq!(
            parse_error_body(r#"{"error":"model not found"}"#)
                .message
                .as_deref(),
            Some("model not found")
        );
        assert_eq!(
            parse_error_body(r#"{"message":"Forbidden"}"#)
                .message
                .as_deref(),
            Some("Forbidden")
        );
        assert_eq!(parse_error_body("<html>"), ErrorBody::default());
        assert_eq!(parse_error_body("[]"), ErrorBody::default());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_chars("  abc  ", 300), "abc");
        assert_eq!(
            truncate_chars("\u{1F30D}\u{1F30D}\u{1F30D}", 2),
            "\u{1F30D}\u{1F30D}"
        );
        assert_eq!(truncate_chars("", 3), "");
    }

    #[test]
    fn token_counts_are_clamped() {
        use serde_json::json;
        assert_eq!(json_count(Some(&json!(12))), 12);
        assert_eq!(json_count(Some(&json!(12.7))), 12);
        assert_eq!(json_count(Some(&json!(-3))), 0);
        assert_eq!(json_count(Some(&json!("12"))), 0);
        assert_eq!(json_count(None), 0);
        assert_eq!(json_count(Some(&json!(u64::MAX))), MAX_TOKEN_COUNT);
        assert_eq!(json_count(Some(&json!(1e300))), MAX_TOKEN_COUNT);
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_kind(401), UpstreamErrorKind::Auth);
        assert_eq!(status_kind(403), UpstreamErrorKind::Auth);
        assert_eq!(status_kind(408), UpstreamErrorKind::Timeout);
        assert_eq!(status_kind(429), UpstreamErrorKind::RateLimited);
        assert_eq!(status_kind(529), UpstreamErrorKind::Overloaded);
        assert_eq!(status_kind(404), UpstreamErrorKind::BadRequest);
        assert_eq!(status_kind(500), UpstreamErrorKind::Server);
        assert_eq!(status_kind(302), UpstreamErrorKind::Server);
    }
}
