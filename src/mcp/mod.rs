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

mod cache;
mod exchange;
mod result;
mod tools;
mod wire;

pub use cache::ToolCache;
pub use exchange::{Answer, Exchange, Next, OpenSession, Operation, Outcome, Post, Session};
pub use result::{call_result, failed_call};
pub use tools::{expose, Exposed, ListedTool, McpTool};
pub use wire::{call_arguments, AnswerReader};

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

/// Shared by the tests of the submodules.
#[cfg(test)]
mod test_support {
    use super::ListedTool;
    use serde_json::{json, Value};

    /// A tool as a server lists it, with the default schema.
    pub fn tool(name: &str) -> ListedTool {
        ListedTool {
            name: name.into(),
            description: String::new(),
            input_schema: json!({ "type": "object" }),
        }
    }

    /// A JSON-RPC response to request `id`.
    pub fn response(id: u64, result: Value) -> Value {
        json!({ "jsonrpc": "2.0", "id": id, "result": result })
    }
}
