//! The MCP client (Streamable HTTP transport, tools only) as a pure core: JSON-RPC requests, one exchange with a server as a state machine (initialize, re-initialize on a forgotten session, paginated `tools/list`, `tools/call`), answers read as JSON or SSE, the tool names the model sees, call results as the model reads them, and the per-conversation listing cache.
//!
//! The glue (`shell/mcp.rs`) performs each [`Post`] an [`Exchange`] asks for, reads its body
//! through an [`AnswerReader`] and feeds the [`Answer`] back, until the exchange is done.
//!
//! Tool names: a server's tool `search` of the server named `docs` reaches the model as
//! `docs__search`. Characters outside `[A-Za-z0-9_-]` become `_`, the name is cut to 64
//! characters, and a name already taken (by an HTTP tool, or an earlier MCP tool) gets `_2`,
//! `_3`, ... (cut to fit). Servers are taken in the agent's order, tools in the server's, so the
//! same listings always give the same names; [`McpTool`] keeps the way back to the server and
//! the tool's own name.

use crate::agents::{AgentConfig, McpServer};
use crate::conversation::ToolOutcome;
use crate::llm::sse::{SseDecoder, SseEvent};
use crate::llm::ToolSpec;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// The protocol version the gateway asks for in `initialize`.
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// Tools an agent has at most, HTTP and MCP together; MCP tools past it are left out.
pub const MAX_TOOLS_PER_AGENT: usize = 128;
/// Pages of `tools/list` read per listing; a server with more is listed that far.
pub const MAX_LIST_PAGES: u32 = 10;
/// Bytes of one answer read at most (a listing page, a call's result).
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Bytes of a call's result the model gets; the rest is cut, with a marker.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;
/// Bytes of a tool's description passed to the model.
const MAX_DESCRIPTION_BYTES: usize = 4 * 1024;
/// Longest tool name the providers take (`^[a-zA-Z0-9_-]{1,64}$`).
const MAX_EXPOSED_NAME: usize = 64;
/// The gateway's name and version in `initialize`.
const CLIENT_NAME: &str = "edge-chat-gateway";
const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why an exchange with a server failed; its text follows the server's name in what the model
/// reads ("MCP server \"docs\" timed out after 30000 ms").
#[derive(Debug, Clone, PartialEq)]
pub enum McpError {
    /// The request could not be sent or its answer broke off.
    Unreachable(String),
    /// No answer within the time allowed.
    Timeout(u64),
    /// An HTTP status other than success, and the start of its body.
    Status { status: u16, text: String },
    /// A JSON-RPC error response.
    Rpc { code: i64, message: String },
    /// An answer that is not what the protocol says.
    Protocol(String),
    /// An answer longer than the bound.
    TooLarge(usize),
}

impl fmt::Display for McpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            McpError::Unreachable(why) => write!(f, "could not be reached: {why}"),
            McpError::Timeout(ms) => write!(f, "timed out after {ms} ms"),
            McpError::Status { status, text } if text.is_empty() => {
                write!(f, "answered HTTP {status}")
            }
            McpError::Status { status, text } => write!(f, "answered HTTP {status}: {text}"),
            McpError::Rpc { code, message } => {
                write!(f, "answered with JSON-RPC error {code}: {message}")
            }
            McpError::Protocol(why) => write!(f, "answered outside the MCP protocol: {why}"),
            McpError::TooLarge(limit) => write!(f, "answered more than {limit} bytes"),
        }
    }
}

impl std::error::Error for McpError {}

// ---------------------------------------------------------------------------
// JSON-RPC requests

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
fn response_result(message: Value) -> Result<Value, McpError> {
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

// ---------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------
// One exchange with a server

/// What the client knows of its session with one server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Session {
    /// Set once `initialize` succeeded.
    pub open: Option<OpenSession>,
    /// The id of the last request sent (ids are unique within the client's life with the server).
    last_id: u64,
}

/// An initialized session.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenSession {
    /// The `Mcp-Session-Id` the server gave, if it gave one.
    pub id: Option<String>,
    /// The protocol version the server chose.
    pub protocol_version: String,
}

/// What an exchange does once its session is open.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Every page of `tools/list`.
    ListTools,
    /// `tools/call` of the server's tool `name`.
    CallTool { name: String, arguments: Value },
}

/// What an exchange gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The server's tools; `more`: it had more pages (or tools) than the bounds let in.
    Tools { tools: Vec<ListedTool>, more: bool },
    /// The `result` of `tools/call`.
    Called(Value),
}

impl Outcome {
    /// The listed tools and whether there were more (an exchange that called a tool has none).
    pub fn into_tools(self) -> Result<(Vec<ListedTool>, bool), McpError> {
        match self {
            Outcome::Tools { tools, more } => Ok((tools, more)),
            Outcome::Called(_) => Err(McpError::Protocol("a call result, not a listing".into())),
        }
    }

    /// The `tools/call` result (an exchange that listed tools has none).
    pub fn into_call_result(self) -> Result<Value, McpError> {
        match self {
            Outcome::Called(result) => Ok(result),
            Outcome::Tools { .. } => Err(McpError::Protocol("a listing, not a call result".into())),
        }
    }
}

/// One HTTP POST to the server's URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Post {
    pub body: String,
    pub headers: Vec<(String, String)>,
    /// The request's id, whose response the answer must carry; `None` for a notification.
    pub id: Option<u64>,
}

/// What came back for a [`Post`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A successful answer carrying the response to the request, and the `Mcp-Session-Id`
    /// header it had.
    Response {
        session_id: Option<String>,
        message: Value,
    },
    /// A successful answer to a notification.
    Accepted,
    /// Another HTTP status, and the start of its body.
    Status { status: u16, text: String },
    /// Nothing usable came back.
    Failed(McpError),
}

impl Answer {
    fn into_error(self) -> McpError {
        match self {
            Answer::Status { status, text } => McpError::Status { status, text },
            Answer::Failed(e) => e,
            Answer::Accepted | Answer::Response { .. } => {
                McpError::Protocol("an answer the exchange did not expect".into())
            }
        }
    }
}

/// What the glue does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Send this, then [`Exchange::answered`].
    Post(Post),
    /// The exchange is over.
    Done(Result<Outcome, McpError>),
}

/// What the exchange waits for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Awaiting {
    Initialize,
    Initialized,
    /// The operation's request; `with_session`: it carried a session id.
    Operation {
        with_session: bool,
    },
}

/// One operation with a server, opening (or re-opening) the session it needs: `initialize` and
/// `notifications/initialized` when the session is not open, then the operation. A request
/// whose session the server forgot (404) opens a new session and is sent again, once.
#[derive(Debug)]
pub struct Exchange {
    headers: Vec<(String, String)>,
    session: Session,
    operation: Operation,
    awaiting: Option<Awaiting>,
    next: Option<Next>,
    reinitialized: bool,
    cursor: Option<String>,
    pages: u32,
    tools: Vec<ListedTool>,
}

impl Exchange {
    /// Starts `operation` with `server`, in `session` when it is open.
    pub fn new(server: &McpServer, session: Session, operation: Operation) -> Self {
        let mut exchange = Exchange {
            headers: server
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            session,
            operation,
            awaiting: None,
            next: None,
            reinitialized: false,
            cursor: None,
            pages: 0,
            tools: Vec::new(),
        };
        if exchange.session.open.is_some() {
            exchange.send_operation();
        } else {
            exchange.send_initialize();
        }
        exchange
    }

    /// The next thing to do; `None` while an answer is awaited.
    pub fn poll(&mut self) -> Option<Next> {
        self.next.take()
    }

    /// The session as it stands (opened, or forgotten, by this exchange).
    pub fn into_session(self) -> Session {
        self.session
    }

    /// The answer to the last [`Post`].
    pub fn answered(&mut self, answer: Answer) {
        let Some(awaiting) = self.awaiting.take() else {
            return;
        };
        match (awaiting, answer) {
            (
                Awaiting::Initialize,
                Answer::Response {
                    session_id,
                    message,
                },
            ) => match opened_version(message) {
                Ok(protocol_version) => {
                    self.session.open = Some(OpenSession {
                        id: session_id,
                        protocol_version,
                    });
                    self.awaiting = Some(Awaiting::Initialized);
                    self.post(initialized_notification(), None);
                }
                Err(e) => self.done(Err(e)),
            },
            (Awaiting::Initialized, Answer::Failed(e)) => self.done(Err(e)),
            // A server that refuses the notification says why on the request that follows.
            (Awaiting::Initialized, _) => self.send_operation(),
            (Awaiting::Operation { .. }, Answer::Response { message, .. }) => {
                match response_result(message) {
                    Ok(result) => self.operation_done(result),
                    Err(e) => self.done(Err(e)),
                }
            }
            (Awaiting::Operation { with_session: true }, Answer::Status { status: 404, .. })
                if !self.reinitialized =>
            {
                // The server forgot the session: a new one, and the operation from its start.
                self.reinitialized = true;
                self.session.open = None;
                self.cursor = None;
                self.pages = 0;
                self.tools.clear();
                self.send_initialize();
            }
            (_, answer) => self.done(Err(answer.into_error())),
        }
    }

    fn send_initialize(&mut self) {
        let id = self.next_id();
        self.awaiting = Some(Awaiting::Initialize);
        self.post(initialize_request(id), Some(id));
    }

    fn send_operation(&mut self) {
        let id = self.next_id();
        let body = match &self.operation {
            Operation::ListTools => list_tools_request(id, self.cursor.as_deref()),
            Operation::CallTool { name, arguments } => call_tool_request(id, name, arguments),
        };
        let with_session = self.session.open.as_ref().is_some_and(|s| s.id.is_some());
        self.awaiting = Some(Awaiting::Operation { with_session });
        self.post(body, Some(id));
    }

    fn operation_done(&mut self, result: Value) {
        if let Operation::CallTool { .. } = self.operation {
            return self.done(Ok(Outcome::Called(result)));
        }
        let page = match tools_page(&result) {
            Ok(page) => page,
            Err(e) => return self.done(Err(e)),
        };
        self.pages += 1;
        let room = MAX_TOOLS_PER_AGENT.saturating_sub(self.tools.len());
        let cut = page.tools.len() > room;
        self.tools.extend(page.tools.into_iter().take(room));
        match page.next_cursor {
            Some(cursor) if !cut && self.pages < MAX_LIST_PAGES => {
                self.cursor = Some(cursor);
                self.send_operation();
            }
            more => {
                let tools = std::mem::take(&mut self.tools);
                let more = cut || more.is_some();
                self.done(Ok(Outcome::Tools { tools, more }));
            }
        }
    }

    fn next_id(&mut self) -> u64 {
        self.session.last_id += 1;
        self.session.last_id
    }

    /// Queues a POST with the transport's headers, the session's, then the server's own.
    fn post(&mut self, body: String, id: Option<u64>) {
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            (
                "accept".to_string(),
                "application/json, text/event-stream".to_string(),
            ),
        ];
        if let Some(open) = &self.session.open {
            if let Some(session_id) = &open.id {
                headers.push(("mcp-session-id".into(), session_id.clone()));
            }
            headers.push(("mcp-protocol-version".into(), open.protocol_version.clone()));
        }
        headers.extend(self.headers.iter().cloned());
        self.next = Some(Next::Post(Post { body, headers, id }));
    }

    fn done(&mut self, outcome: Result<Outcome, McpError>) {
        self.next = Some(Next::Done(outcome));
    }
}

/// The protocol version an `initialize` response chose. Any version is taken: the two methods
/// the gateway uses read the same in every version so far, and the version goes back to the
/// server in `MCP-Protocol-Version` as it gave it.
fn opened_version(message: Value) -> Result<String, McpError> {
    let result = response_result(message)?;
    let version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            McpError::Protocol("an initialize result without a protocolVersion".into())
        })?;
    Ok(version.to_string())
}

// ---------------------------------------------------------------------------
// Tools as listed, and as the model sees them

/// A tool as its server lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedTool {
    /// Its name on the server.
    pub name: String,
    pub description: String,
    /// JSON Schema of its arguments, as given (`{"type":"object"}` when it gave none).
    pub input_schema: Value,
}

/// One page of `tools/list`.
struct ToolsPage {
    tools: Vec<ListedTool>,
    next_cursor: Option<String>,
}

/// Reads a `tools/list` result; entries without a name are skipped.
fn tools_page(result: &Value) -> Result<ToolsPage, McpError> {
    let list = result
        .get("tools")
        .and_then(Value::as_array)
        .ok_or_else(|| McpError::Protocol("a tools/list result without a tools array".into()))?;
    let tools = list.iter().filter_map(listed_tool).collect();
    let next_cursor = result
        .get("nextCursor")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(ToolsPage { tools, next_cursor })
}

fn listed_tool(tool: &Value) -> Option<ListedTool> {
    let name = tool
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty() && n.len() <= 256)?;
    let description = tool
        .get("description")
        .or_else(|| tool.get("title"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let input_schema = match tool.get("inputSchema") {
        Some(schema) if schema.is_object() => schema.clone(),
        _ => json!({ "type": "object" }),
    };
    Some(ListedTool {
        name: name.to_string(),
        description: crate::text::prefix_bytes(description, MAX_DESCRIPTION_BYTES).to_string(),
        input_schema,
    })
}

/// An MCP tool of a turn: the name the model knows it by, and the way back to its server.
#[derive(Debug, Clone, PartialEq)]
pub struct McpTool {
    /// The name the model sees (`server__tool`, see the module's doc).
    pub exposed: String,
    /// The server's name in the agent's config.
    pub server: String,
    /// The tool's name on its server.
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

impl McpTool {
    /// The tool as the model sees it.
    pub fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.exposed.clone(),
            description: self.description.clone(),
            parameters: self.input_schema.clone(),
        }
    }
}

/// A turn's MCP tools, and a line for each server whose tools did not all fit.
#[derive(Debug, Default, PartialEq)]
pub struct Exposed {
    pub tools: Vec<McpTool>,
    pub left_out: Vec<String>,
}

/// Names every listed tool for the model (see the module's doc), after the names in `taken`
/// (the agent's HTTP tools). At most `max_tools` tools in all, `taken` counted; the rest is
/// left out, in order.
pub fn expose(taken: &[&str], servers: &[(&str, &[ListedTool])], max_tools: usize) -> Exposed {
    let mut used: HashSet<String> = taken.iter().map(|t| t.to_string()).collect();
    let room = max_tools.saturating_sub(taken.len());
    let mut exposed = Exposed::default();
    for (server, tools) in servers {
        let mut dropped = 0;
        for tool in tools.iter() {
            if exposed.tools.len() >= room {
                dropped += 1;
                continue;
            }
            let name = unique_name(&exposed_name(server, &tool.name), &used);
            used.insert(name.clone());
            exposed.tools.push(McpTool {
                exposed: name,
                server: server.to_string(),
                name: tool.name.clone(),
                description: tool.description.clone(),
                input_schema: tool.input_schema.clone(),
            });
        }
        if dropped > 0 {
            exposed.left_out.push(format!(
                "MCP server \"{server}\": {dropped} of its {} tools left out (an agent has at most {max_tools} tools)",
                tools.len()
            ));
        }
    }
    exposed
}

/// `server__tool` with every character the providers refuse made `_`, cut to 64.
pub fn exposed_name(server: &str, tool: &str) -> String {
    let clean = |c: char| {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '_'
        }
    };
    let name: String = server
        .chars()
        .map(clean)
        .chain("__".chars())
        .chain(tool.chars().map(clean))
        .take(MAX_EXPOSED_NAME)
        .collect();
    name
}

/// `name`, or `name` with the first free `_2`, `_3`, ... (cut to stay within 64).
fn unique_name(name: &str, used: &HashSet<String>) -> String {
    if !used.contains(name) {
        return name.to_string();
    }
    (2..)
        .map(|n| {
            let suffix = format!("_{n}");
            // ASCII only (see `exposed_name`): any byte is a boundary.
            let keep = name.len().min(MAX_EXPOSED_NAME - suffix.len());
            format!("{}{suffix}", &name[..keep])
        })
        .find(|candidate| !used.contains(candidate))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Call results as the model reads them

/// A `tools/call` result as the model reads it: the text content in order (one block a line),
/// one line for each other kind of content, the structured content as JSON when no text block
/// carries it already, cut to [`MAX_RESULT_BYTES`]; `isError` as the error flag.
pub fn call_result(result: &Value) -> ToolOutcome {
    let is_error = result
        .get("isError")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let structured = result
        .get("structuredContent")
        .filter(|s| !s.is_null())
        .cloned();
    let mut carried = false;
    let mut lines = Vec::new();
    let content = result.get("content").and_then(Value::as_array);
    for block in content.into_iter().flatten() {
        let kind = block
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let field = |name: &str| block.get(name).and_then(Value::as_str).unwrap_or_default();
        let line = match kind {
            "text" => {
                let text = field("text");
                if let Some(s) = &structured {
                    carried |= serde_json::from_str::<Value>(text).is_ok_and(|t| &t == s);
                }
                text.to_string()
            }
            "image" | "audio" => format!(
                "[{kind}: {}, {} bytes, not shown]",
                or_unknown(field("mimeType")),
                base64_len(field("data"))
            ),
            "resource_link" => format!(
                "[resource link: {} <{}>{}]",
                or_unknown(field("name")),
                field("uri"),
                mime_note(field("mimeType"))
            ),
            "resource" => summarize_resource(block.get("resource").unwrap_or(&Value::Null)),
            other => format!("[content of type \"{other}\", not shown]"),
        };
        lines.push(line);
    }
    if let Some(s) = structured.as_ref().filter(|_| !carried) {
        lines.push(s.to_string());
    }
    let text = if lines.is_empty() {
        "(the tool returned no content)".to_string()
    } else {
        lines.join("\n")
    };
    ToolOutcome {
        text: bounded_result(text),
        is_error,
        structured,
    }
}

/// What the model reads of an exchange that failed.
pub fn failed_call(tool: &McpTool, error: &McpError) -> ToolOutcome {
    ToolOutcome::text(
        format!(
            "tool {}: MCP server \"{}\" {error}",
            tool.exposed, tool.server
        ),
        true,
    )
}

fn summarize_resource(resource: &Value) -> String {
    let field = |name: &str| {
        resource
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let size = match (resource.get("text"), resource.get("blob")) {
        (Some(Value::String(text)), _) => format!(", {} bytes of text", text.len()),
        (_, Some(Value::String(blob))) => format!(", {} bytes", base64_len(blob)),
        _ => String::new(),
    };
    format!(
        "[embedded resource: <{}>{}{size}, not shown]",
        field("uri"),
        mime_note(field("mimeType"))
    )
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "unknown"
    } else {
        s
    }
}

fn mime_note(mime: &str) -> String {
    if mime.is_empty() {
        String::new()
    } else {
        format!(" ({mime})")
    }
}

/// Bytes that `data`, base64, decodes to.
fn base64_len(data: &str) -> usize {
    let padding = data.bytes().rev().take_while(|&b| b == b'=').count();
    (data.len() * 3 / 4).saturating_sub(padding)
}

fn bounded_result(text: String) -> String {
    if text.len() <= MAX_RESULT_BYTES {
        return text;
    }
    let kept = crate::text::prefix_bytes(&text, MAX_RESULT_BYTES);
    format!(
        "{kept}\n[truncated by the gateway: the first {} bytes of {}]",
        kept.len(),
        text.len()
    )
}

// ---------------------------------------------------------------------------
// The listing cache of a conversation

/// The tools a conversation listed from its agent's MCP servers: kept while the agent's config
/// is the same, each server's for a TTL. A server whose listing failed keeps the tools of its
/// last good listing (their calls then fail on their own) and is listed again at the next turn.
#[derive(Debug, Default)]
pub struct ToolCache {
    agent: Option<AgentConfig>,
    listings: BTreeMap<String, Listing>,
}

#[derive(Debug, Default)]
struct Listing {
    tools: Vec<ListedTool>,
    /// When the listing is due again; `None`: the last one failed.
    fresh_until: Option<i64>,
}

impl ToolCache {
    /// The servers of `agent` to list before its turn: all of them when the agent's config
    /// changed (what was cached is dropped), else those never listed, listed too long ago, or
    /// whose last listing failed.
    pub fn due(&mut self, agent: &AgentConfig, now_ms: i64) -> Vec<McpServer> {
        if self.agent.as_ref() != Some(agent) {
            self.agent = Some(agent.clone());
            self.listings.clear();
        }
        agent
            .mcp_servers
            .iter()
            .filter(|s| {
                let until = self.listings.get(&s.name).and_then(|l| l.fresh_until);
                until.is_none_or(|t| now_ms >= t)
            })
            .cloned()
            .collect()
    }

    /// A listing of `server` ended: its tools, kept for `ttl_ms`; or a failure, which keeps
    /// the tools it had and lists it again next time.
    pub fn listed(
        &mut self,
        server: &str,
        tools: Option<Vec<ListedTool>>,
        now_ms: i64,
        ttl_ms: i64,
    ) {
        let listing = self.listings.entry(server.to_string()).or_default();
        match tools {
            Some(tools) => {
                listing.tools = tools;
                listing.fresh_until = Some(now_ms + ttl_ms);
            }
            None => listing.fresh_until = None,
        }
    }

    /// Every server's tools, in the agent's order (servers without any are left out).
    pub fn listings<'a>(&'a self, agent: &'a AgentConfig) -> Vec<(&'a str, &'a [ListedTool])> {
        agent
            .mcp_servers
            .iter()
            .filter_map(|s| {
                let listing = self.listings.get(&s.name)?;
                Some((s.name.as_str(), listing.tools.as_slice()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(headers: &[(&str, &str)]) -> McpServer {
        McpServer {
            name: "docs".into(),
            url: "https://mcp.example/mcp".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            requires_approval: Default::default(),
        }
    }

    fn tool(name: &str) -> ListedTool {
        ListedTool {
            name: name.into(),
            description: String::new(),
            input_schema: json!({ "type": "object" }),
        }
    }

    fn response(id: u64, result: Value) -> Value {
        json!({ "jsonrpc": "2.0", "id": id, "result": result })
    }

    fn initialize_result() -> Value {
        json!({ "protocolVersion": "2025-06-18", "capabilities": { "tools": {} }, "serverInfo": { "name": "s", "version": "1" } })
    }

    /// The next POST of `ex`, as (method, id, the headers named `mcp-*`).
    fn next_post(ex: &mut Exchange) -> (String, Option<u64>, Vec<(String, String)>, Value) {
        let Some(Next::Post(post)) = ex.poll() else {
            panic!("expected a POST");
        };
        let body: Value = serde_json::from_str(&post.body).unwrap();
        let mcp = post
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("mcp-"))
            .cloned()
            .collect();
        (
            body["method"].as_str().unwrap().to_string(),
            post.id,
            mcp,
            body,
        )
    }

    fn header(name: &str, value: &str) -> (String, String) {
        (name.to_string(), value.to_string())
    }

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

    #[test]
    fn an_exchange_initializes_then_lists_every_page_in_the_session() {
        let mut ex = Exchange::new(
            &server(&[("Authorization", "Bearer k")]),
            Session::default(),
            Operation::ListTools,
        );
        let Some(Next::Post(first)) = ex.poll() else {
            panic!()
        };
        assert_eq!(
            first.headers,
            [
                header("content-type", "application/json"),
                header("accept", "application/json, text/event-stream"),
                header("Authorization", "Bearer k"),
            ]
        );
        assert_eq!(first.id, Some(1));
        assert!(ex.poll().is_none(), "one request at a time");
        ex.answered(Answer::Response {
            session_id: Some("s-1".into()),
            message: response(1, initialize_result()),
        });
        let (method, id, mcp, _) = next_post(&mut ex);
        assert_eq!((method.as_str(), id), ("notifications/initialized", None));
        let session_headers = vec![
            header("mcp-session-id", "s-1"),
            header("mcp-protocol-version", "2025-06-18"),
        ];
        assert_eq!(mcp, session_headers);
        ex.answered(Answer::Accepted);
        let mut cursors = Vec::new();
        for page in 0..3 {
            let (method, id, mcp, body) = next_post(&mut ex);
            assert_eq!(method, "tools/list");
            assert_eq!(mcp, session_headers);
            cursors.push(body["params"]["cursor"].clone());
            let next = if page < 2 {
                json!(format!("c{}", page + 1))
            } else {
                Value::Null
            };
            let id = id.unwrap();
            ex.answered(Answer::Response {
                session_id: None,
                message: response(
                    id,
                    json!({ "tools": [{ "name": format!("t{page}"), "inputSchema": { "type": "object", "properties": { "q": {} } } }, { "nameless": true }], "nextCursor": next }),
                ),
            });
        }
        assert_eq!(cursors, [Value::Null, json!("c1"), json!("c2")]);
        let Some(Next::Done(Ok(Outcome::Tools { tools, more }))) = ex.poll() else {
            panic!()
        };
        assert!(!more);
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["t0", "t1", "t2"]);
        assert_eq!(
            tools[0].input_schema,
            json!({ "type": "object", "properties": { "q": {} } })
        );
        let session = ex.into_session();
        assert_eq!(session.open.unwrap().id.as_deref(), Some("s-1"));
        assert_eq!(session.last_id, 4);
    }

    #[test]
    fn a_forgotten_session_is_opened_again_once_and_the_call_sent_again() {
        let open = Session {
            open: Some(OpenSession {
                id: Some("old".into()),
                protocol_version: "2025-03-26".into(),
            }),
            last_id: 9,
        };
        let call = Operation::CallTool {
            name: "echo".into(),
            arguments: json!({ "text": "hi" }),
        };
        let mut ex = Exchange::new(&server(&[]), open.clone(), call.clone());
        let (method, id, mcp, body) = next_post(&mut ex);
        assert_eq!((method.as_str(), id), ("tools/call", Some(10)));
        assert_eq!(
            body["params"],
            json!({ "name": "echo", "arguments": { "text": "hi" } })
        );
        assert_eq!(
            mcp,
            [
                header("mcp-session-id", "old"),
                header("mcp-protocol-version", "2025-03-26")
            ]
        );
        ex.answered(Answer::Status {
            status: 404,
            text: String::new(),
        });
        let (method, _, mcp, _) = next_post(&mut ex);
        assert_eq!(method, "initialize");
        assert!(mcp.is_empty(), "a new session starts without the old id");
        ex.answered(Answer::Response {
            session_id: Some("new".into()),
            message: response(11, initialize_result()),
        });
        assert_eq!(next_post(&mut ex).0, "notifications/initialized");
        ex.answered(Answer::Status {
            status: 400,
            text: "ignored".into(),
        });
        let (method, id, mcp, _) = next_post(&mut ex);
        assert_eq!((method.as_str(), id), ("tools/call", Some(12)));
        assert_eq!(mcp[0], header("mcp-session-id", "new"));
        // Forgotten again: no second re-initialization.
        ex.answered(Answer::Status {
            status: 404,
            text: "Session not found".into(),
        });
        assert_eq!(
            ex.poll(),
            Some(Next::Done(Err(McpError::Status {
                status: 404,
                text: "Session not found".into()
            })))
        );
        // A 404 to a request without a session id is the server's answer, not a lost session.
        let mut ex = Exchange::new(
            &server(&[]),
            Session {
                open: Some(OpenSession {
                    id: None,
                    protocol_version: "2025-06-18".into(),
                }),
                last_id: 0,
            },
            call,
        );
        next_post(&mut ex);
        ex.answered(Answer::Status {
            status: 404,
            text: String::new(),
        });
        assert!(matches!(
            ex.poll(),
            Some(Next::Done(Err(McpError::Status { status: 404, .. })))
        ));
    }

    #[test]
    fn errors_end_the_exchange_with_what_went_wrong() {
        let call = || Operation::CallTool {
            name: "t".into(),
            arguments: json!({}),
        };
        let mut ex = Exchange::new(&server(&[]), Session::default(), call());
        ex.answered(Answer::Failed(McpError::Unreachable("refused".into())));
        assert_eq!(
            ex.poll(),
            Some(Next::Done(Err(McpError::Unreachable("refused".into()))))
        );
        let mut ex = Exchange::new(&server(&[]), Session::default(), call());
        ex.answered(Answer::Response {
            session_id: None,
            message: response(1, json!({ "capabilities": {} })),
        });
        assert!(
            matches!(ex.poll(), Some(Next::Done(Err(McpError::Protocol(m)))) if m.contains("protocolVersion"))
        );
        let mut ex = Exchange::new(&server(&[]), Session::default(), call());
        ex.answered(Answer::Response {
            session_id: None,
            message: response(1, initialize_result()),
        });
        next_post(&mut ex);
        ex.answered(Answer::Accepted);
        next_post(&mut ex);
        ex.answered(Answer::Response {
            session_id: None,
            message: json!({ "jsonrpc": "2.0", "id": 2, "error": { "code": -32602, "message": "bad arguments" } }),
        });
        let Some(Next::Done(Err(e))) = ex.poll() else {
            panic!()
        };
        assert_eq!(
            e.to_string(),
            "answered with JSON-RPC error -32602: bad arguments"
        );
        assert_eq!(
            McpError::Status {
                status: 401,
                text: "no".into()
            }
            .to_string(),
            "answered HTTP 401: no"
        );
    }

    #[test]
    fn a_listing_stops_at_the_page_bound() {
        let open = Session {
            open: Some(OpenSession {
                id: None,
                protocol_version: "2025-06-18".into(),
            }),
            last_id: 0,
        };
        let mut ex = Exchange::new(&server(&[]), open, Operation::ListTools);
        for page in 0..MAX_LIST_PAGES {
            let (_, id, _, _) = next_post(&mut ex);
            ex.answered(Answer::Response {
                session_id: None,
                message: response(
                    id.unwrap(),
                    json!({ "tools": [{ "name": format!("t{page}") }], "nextCursor": "more" }),
                ),
            });
        }
        let Some(Next::Done(Ok(Outcome::Tools { tools, more }))) = ex.poll() else {
            panic!()
        };
        assert_eq!((tools.len(), more), (MAX_LIST_PAGES as usize, true));
        assert_eq!(tools[0].input_schema, json!({ "type": "object" }));
    }

    #[test]
    fn exposed_names_are_sanitized_unique_and_bounded() {
        assert_eq!(exposed_name("docs", "search"), "docs__search");
        assert_eq!(exposed_name("docs", "get file.v2/é"), "docs__get_file_v2__");
        let long = "x".repeat(80);
        assert_eq!(exposed_name("docs", &long).len(), 64);
        let a = [
            tool("search"),
            tool("search!"),
            tool(&long),
            tool(&format!("{long}y")),
        ];
        let b = [tool("search")];
        let exposed = expose(&["docs__search"], &[("docs", &a), ("web", &b)], 128);
        let names: Vec<&str> = exposed.tools.iter().map(|t| t.exposed.as_str()).collect();
        let cut = format!("docs__{}", "x".repeat(58));
        let cut2 = format!("docs__{}_2", "x".repeat(56));
        assert_eq!(
            names,
            [
                "docs__search_2",
                "docs__search_",
                cut.as_str(),
                cut2.as_str(),
                "web__search"
            ]
        );
        assert!(names.iter().all(|n| n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')));
        assert_eq!(
            (
                exposed.tools[0].server.as_str(),
                exposed.tools[0].name.as_str()
            ),
            ("docs", "search")
        );
        assert_eq!(exposed.tools[4].spec().name, "web__search");
        // The same listings give the same names.
        assert_eq!(
            expose(&["docs__search"], &[("docs", &a), ("web", &b)], 128),
            exposed
        );
        // The bound counts the HTTP tools; what does not fit is left out and said.
        let bounded = expose(&["h1", "h2"], &[("docs", &a), ("web", &b)], 5);
        assert_eq!(bounded.tools.len(), 3);
        assert_eq!(
            bounded.left_out,
            [
                "MCP server \"docs\": 1 of its 4 tools left out (an agent has at most 5 tools)",
                "MCP server \"web\": 1 of its 1 tools left out (an agent has at most 5 tools)"
            ]
        );
    }

    #[test]
    fn a_call_result_reads_as_text_with_its_structured_content() {
        let r = call_result(&json!({
            "content": [{ "type": "text", "text": "It is 21 °C." }, { "type": "text", "text": "Sunny." }],
            "structuredContent": { "celsius": 21 }
        }));
        assert_eq!(r.text, "It is 21 °C.\nSunny.\n{\"celsius\":21}");
        assert_eq!(r.structured, Some(json!({ "celsius": 21 })));
        assert!(!r.is_error);
        // Content that carries the structured content already (as the spec asks): not twice.
        let r = call_result(&json!({
            "content": [{ "type": "text", "text": "{ \"celsius\": 21 }" }],
            "structuredContent": { "celsius": 21 }
        }));
        assert_eq!(r.text, "{ \"celsius\": 21 }");
        let r = call_result(&json!({
            "content": [
                { "type": "image", "data": "aGVsbG8=", "mimeType": "image/png" },
                { "type": "audio", "data": "AAAA", "mimeType": "audio/wav" },
                { "type": "resource_link", "uri": "file:///a.txt", "name": "a.txt", "mimeType": "text/plain" },
                { "type": "resource", "resource": { "uri": "file:///b.md", "mimeType": "text/markdown", "text": "# B" } },
                { "type": "resource", "resource": { "uri": "file:///c.bin", "blob": "AAAA" } },
                { "type": "hologram" }
            ],
            "isError": true
        }));
        assert_eq!(
            r.text.lines().collect::<Vec<_>>(),
            [
                "[image: image/png, 5 bytes, not shown]",
                "[audio: audio/wav, 3 bytes, not shown]",
                "[resource link: a.txt <file:///a.txt> (text/plain)]",
                "[embedded resource: <file:///b.md> (text/markdown), 3 bytes of text, not shown]",
                "[embedded resource: <file:///c.bin>, 3 bytes, not shown]",
                "[content of type \"hologram\", not shown]",
            ]
        );
        assert!(r.is_error && r.structured.is_none());
        assert_eq!(
            call_result(&json!({})).text,
            "(the tool returned no content)"
        );
        let long = "é".repeat(MAX_RESULT_BYTES);
        let r = call_result(&json!({ "content": [{ "type": "text", "text": long }] }));
        assert!(r.text.len() < MAX_RESULT_BYTES + 100);
        assert!(r.text.ends_with(&format!(
            "[truncated by the gateway: the first {MAX_RESULT_BYTES} bytes of {}]",
            long.len()
        )));
        let t = McpTool {
            exposed: "docs__slow".into(),
            server: "docs".into(),
            name: "slow".into(),
            description: String::new(),
            input_schema: json!({}),
        };
        let failed = failed_call(&t, &McpError::Timeout(1500));
        assert_eq!(
            (failed.text.as_str(), failed.is_error),
            (
                "tool docs__slow: MCP server \"docs\" timed out after 1500 ms",
                true
            )
        );
    }

    #[test]
    fn the_cache_lists_what_is_due_and_keeps_tools_through_a_failure() {
        let agent = |url: &str| -> AgentConfig {
            serde_json::from_value(json!({ "name": "a", "mcpServers": [
                { "name": "one", "url": url }, { "name": "two", "url": "https://two/mcp" }] }))
            .unwrap()
        };
        let names = |servers: Vec<McpServer>| -> Vec<String> {
            servers.into_iter().map(|s| s.name).collect()
        };
        let a = agent("https://one/mcp");
        let mut cache = ToolCache::default();
        assert_eq!(names(cache.due(&a, 0)), ["one", "two"]);
        cache.listed("one", Some(vec![tool("x")]), 0, 1000);
        cache.listed("two", None, 0, 1000);
        assert_eq!(
            cache.listings(&a),
            [("one", &[tool("x")][..]), ("two", &[][..])]
        );
        // A failed listing is tried again at the next turn; a good one after its TTL.
        assert_eq!(names(cache.due(&a, 999)), ["two"]);
        assert_eq!(names(cache.due(&a, 1000)), ["one", "two"]);
        cache.listed("one", None, 1000, 1000);
        assert_eq!(
            cache.listings(&a)[0],
            ("one", &[tool("x")][..]),
            "kept through a failure"
        );
        // Another config of the agent: everything again.
        cache.listed("one", Some(vec![tool("x")]), 1000, 1000);
        cache.listed("two", Some(vec![tool("y")]), 1000, 1000);
        assert!(cache.due(&a, 1001).is_empty());
        let changed = agent("https://one.example/mcp");
        assert_eq!(names(cache.due(&changed, 1001)), ["one", "two"]);
        assert!(cache.listings(&changed).is_empty());
    }
}
