//! Named agent configurations: system prompt, model, thinking level, HTTP tools and MCP servers, validated when saved.

use crate::llm::{ThinkingLevel, ToolSpec};
use crate::mcp::McpTool;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// MCP servers an agent may list.
pub const MAX_MCP_SERVERS: usize = 8;
/// Longest MCP server name: the rest of the 64 characters a tool name may have is the tool's.
const MAX_SERVER_NAME: usize = 32;
/// Headers the gateway sets on every MCP request itself.
const RESERVED_HEADERS: [&str; 6] = [
    "accept",
    "content-type",
    "content-length",
    "host",
    "mcp-session-id",
    "mcp-protocol-version",
];

/// A tool the gateway runs by POSTing the arguments as JSON to a URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpTool {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments.
    #[serde(default = "empty_schema")]
    pub parameters: serde_json::Value,
    pub url: String,
    /// Sent as `Authorization: Bearer <secret>` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Each call waits for the conversation owner's approval before it runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requires_approval: bool,
}

impl HttpTool {
    /// The body to POST for the model's `arguments` (`{}` when it sent none), or the error
    /// result the model gets instead of a call.
    pub fn request_body<'a>(&self, arguments: &'a str) -> Result<&'a str, (String, bool)> {
        let args = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        match serde_json::from_str::<serde_json::Value>(args) {
            Ok(_) => Ok(args),
            Err(_) => Err((
                format!("tool {}: the arguments are not valid JSON", self.name),
                true,
            )),
        }
    }

    /// The call's headers.
    pub fn request_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("content-type", "application/json".to_string())];
        if let Some(secret) = &self.secret {
            headers.push(("authorization", format!("Bearer {secret}")));
        }
        headers
    }

    /// What the model sees of an answer with `status` and `body`, and whether it is an error.
    pub fn result(&self, status: u16, body: &crate::text::Bounded) -> (String, bool) {
        let mut text = body.text();
        if body.truncated {
            text.push_str(&format!(
                "\n[truncated by the gateway: the first {} bytes of a longer answer]",
                body.bytes.len()
            ));
        }
        if (200..300).contains(&status) {
            (text, false)
        } else {
            (
                format!("tool {} answered HTTP {status}: {text}", self.name),
                true,
            )
        }
    }

    /// What the model sees of a call that failed (`why`), or took longer than `timeout_ms`.
    pub fn failed(&self, why: Option<&str>, timeout_ms: u64) -> (String, bool) {
        let text = match why {
            Some(why) => format!("tool {} failed: {why}", self.name),
            None => format!("tool {} timed out after {timeout_ms} ms", self.name),
        };
        (text, true)
    }
}

fn empty_schema() -> serde_json::Value {
    serde_json::json!({"type": "object", "properties": {}})
}

/// A remote MCP server (Streamable HTTP) whose tools the agent may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct McpServer {
    /// The prefix of its tools' names as the model sees them (`name__tool`).
    pub name: String,
    pub url: String,
    /// Sent with every request (credentials, typically); never shown or sent to the model.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Which of its tools a person approves before each call.
    #[serde(default, skip_serializing_if = "ApprovalRule::is_never")]
    pub requires_approval: ApprovalRule,
}

impl McpServer {
    /// Identifies the server a session was opened with: its URL and the headers sent to it
    /// (a session may be bound to the credentials it was opened with). Memory only.
    pub fn session_key(&self) -> String {
        let mut key = self.url.clone();
        for (name, value) in &self.headers {
            key.push('\n');
            key.push_str(&name.to_ascii_lowercase());
            key.push(':');
            key.push_str(value);
        }
        key
    }

    fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        let name_ok = !name.is_empty()
            && name.len() <= MAX_SERVER_NAME
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            && !name.contains("__");
        if !name_ok {
            return Err(format!(
                "mcpServers: name \"{name}\" must be 1 to {MAX_SERVER_NAME} characters of letters, digits, '-' or '_', without \"__\" (it separates the server from the tool in tool names)"
            ));
        }
        if !(self.url.starts_with("https://") || self.url.starts_with("http://")) {
            return Err(format!("mcpServers \"{name}\": url must be http(s)"));
        }
        if self.url.len() > 2048 {
            return Err(format!(
                "mcpServers \"{name}\": url is longer than 2048 bytes"
            ));
        }
        if self.headers.len() > 16 {
            return Err(format!("mcpServers \"{name}\": at most 16 headers"));
        }
        for (header, value) in &self.headers {
            if !valid_header_name(header) {
                return Err(format!(
                    "mcpServers \"{name}\": \"{header}\" is not a header name (letters, digits and !#$%&'*+-.^_`|~)"
                ));
            }
            if RESERVED_HEADERS.contains(&header.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "mcpServers \"{name}\": header \"{header}\" is set by the gateway"
                ));
            }
            let value_ok = value.len() <= 8192
                && value
                    .bytes()
                    .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
            if !value_ok {
                // The value is a secret: never repeated in the message.
                return Err(format!(
                    "mcpServers \"{name}\": the value of header \"{header}\" must be at most 8192 bytes of printable ASCII"
                ));
            }
        }
        if let ApprovalRule::Tools(tools) = &self.requires_approval {
            if tools.len() > 128 {
                return Err(format!(
                    "mcpServers \"{name}\": requiresApproval names at most 128 tools"
                ));
            }
            if tools.iter().any(|t| t.is_empty() || t.len() > 128) {
                return Err(format!(
                    "mcpServers \"{name}\": requiresApproval names tools of 1 to 128 bytes"
                ));
            }
        }
        Ok(())
    }
}

/// Which tools of an MCP server need a person's approval: all (`true`), none (`false`, the
/// default), or those named (by their names on the server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ApprovalRule {
    All(bool),
    Tools(Vec<String>),
}

impl Default for ApprovalRule {
    fn default() -> Self {
        ApprovalRule::All(false)
    }
}

impl ApprovalRule {
    fn is_never(&self) -> bool {
        *self == ApprovalRule::All(false)
    }

    /// Whether the server's tool named `tool` (its name on the server) needs approval.
    pub fn covers(&self, tool: &str) -> bool {
        match self {
            ApprovalRule::All(all) => *all,
            ApprovalRule::Tools(tools) => tools.iter().any(|t| t == tool),
        }
    }
}

/// An HTTP header name: an RFC 9110 token.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A named agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    pub name: String,
    #[serde(default)]
    pub system_prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_level: Option<ThinkingLevel>,
    #[serde(default)]
    pub tools: Vec<HttpTool>,
    /// Users who may run this agent, besides everyone when it is public.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Whether every user may run it. Unset: public unless a tool carries a secret, an MCP
    /// server headers, or `users` names who may (an agent that holds the operator's secrets is
    /// private until said otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    /// Remote MCP servers whose tools the agent has, besides `tools`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_servers: Vec<McpServer>,
}

impl AgentConfig {
    /// Checks an operator-supplied config; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err(
                "name must be 1 to 64 characters of letters, digits, '-', '_' or '.'".into(),
            );
        }
        if self.system_prompt.len() > 100_000 {
            return Err("systemPrompt is longer than 100000 bytes".into());
        }
        if self.users.len() > 1000 {
            return Err("at most 1000 users".into());
        }
        if let Some(bad) = self.users.iter().find(|u| !crate::auth::valid_user_id(u)) {
            return Err(format!(
                "users: \"{bad}\" is not a user id (1 to 128 printable characters without spaces)"
            ));
        }
        if self.tools.len() > 64 {
            return Err("at most 64 tools".into());
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.tools {
            if !valid_tool_name(&t.name) {
                return Err(format!("tool name \"{}\" must be 1 to 64 characters of letters, digits, '-' or '_' (the providers refuse any other)", t.name));
            }
            if !names.insert(t.name.as_str()) {
                return Err(format!("tool \"{}\" is defined twice", t.name));
            }
            if !(t.url.starts_with("https://") || t.url.starts_with("http://")) {
                return Err(format!("tool \"{}\": url must be http(s)", t.name));
            }
            if !t.parameters.is_object() {
                return Err(format!(
                    "tool \"{}\": parameters must be a JSON Schema object",
                    t.name
                ));
            }
        }
        if self.mcp_servers.len() > MAX_MCP_SERVERS {
            return Err(format!("at most {MAX_MCP_SERVERS} mcpServers"));
        }
        let mut servers = std::collections::HashSet::new();
        for server in &self.mcp_servers {
            server.validate()?;
            if !servers.insert(server.name.as_str()) {
                return Err(format!("mcpServers: \"{}\" is defined twice", server.name));
            }
        }
        Ok(())
    }

    /// The tools whose calls wait for the conversation owner's approval, by the names the model
    /// knows: the HTTP tools so marked, and the tools of `mcp_tools` (this turn's, from the
    /// agent's MCP servers) that their server's rule covers.
    pub fn approval_tools(&self, mcp_tools: &[McpTool]) -> Vec<String> {
        let http = self.tools.iter().map(|t| t.name.as_str());
        let mcp = mcp_tools.iter().map(|t| t.exposed.as_str());
        http.chain(mcp)
            .filter(|name| self.requires_approval(name, mcp_tools))
            .map(str::to_string)
            .collect()
    }

    /// The tools as the model sees them (no URL, no secret).
    pub fn tool_specs(&self) -> Vec<ToolSpec> {
        self.tools
            .iter()
            .map(|t| ToolSpec {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
            })
            .collect()
    }

    /// The tool with this name.
    pub fn tool(&self, name: &str) -> Option<&HttpTool> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// The MCP server with this name.
    pub fn mcp_server(&self, name: &str) -> Option<&McpServer> {
        self.mcp_servers.iter().find(|s| s.name == name)
    }

    /// Whether a call of the tool the model knows as `tool_name` waits for a person's approval:
    /// an HTTP tool's own flag, or the rule of the MCP server that `mcp_tools` (this turn's
    /// tools from MCP servers) says the name belongs to.
    pub fn requires_approval(&self, tool_name: &str, mcp_tools: &[McpTool]) -> bool {
        if let Some(tool) = self.tool(tool_name) {
            return tool.requires_approval;
        }
        mcp_tools
            .iter()
            .find(|t| t.exposed == tool_name)
            .is_some_and(|t| {
                self.mcp_server(&t.server)
                    .is_some_and(|s| s.requires_approval.covers(&t.name))
            })
    }

    /// Whether it holds operator secrets: a tool's secret or an MCP server's headers.
    fn holds_secrets(&self) -> bool {
        self.tools.iter().any(|t| t.secret.is_some())
            || self.mcp_servers.iter().any(|s| !s.headers.is_empty())
    }

    /// Whether `user` may run this agent.
    pub fn allows(&self, user: &str) -> bool {
        if self.users.iter().any(|u| u == user) {
            return true;
        }
        self.public
            .unwrap_or_else(|| self.users.is_empty() && !self.holds_secrets())
    }
}

/// The agent named `name` (by name or row id) that `user` may run; one the user may not run is
/// not found, so its existence is not revealed.
pub fn find_for<'a>(
    agents: &'a [(String, AgentConfig)],
    name: &str,
    user: &str,
) -> Option<&'a AgentConfig> {
    agents
        .iter()
        .find(|(id, a)| (a.name == name || id == name) && a.allows(user))
        .map(|(_, a)| a)
}

/// The names of the agents `user` may run, for a listing.
pub fn names_for<'a>(agents: &'a [(String, AgentConfig)], user: &str) -> Vec<&'a str> {
    agents
        .iter()
        .filter(|(_, a)| a.allows(user))
        .map(|(_, a)| a.name.as_str())
        .collect()
}

/// A tool name both providers accept (`^[a-zA-Z0-9_-]{1,64}$`).
fn valid_tool_name(s: &str) -> bool {
    valid_name(s) && !s.contains('.')
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(json: serde_json::Value) -> AgentConfig {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn parses_and_validates() {
        let a = agent(serde_json::json!({
            "name": "researcher", "systemPrompt": "Be terse.", "model": "gpt-4o", "thinkingLevel": "low",
            "tools": [{"name": "add", "description": "adds", "url": "http://127.0.0.1:1/tools/add",
                       "parameters": {"type": "object"}}]
        }));
        assert!(a.validate().is_ok());
        assert_eq!(a.thinking_level, Some(ThinkingLevel::Low));
        assert_eq!(a.tool_specs()[0].name, "add");
        assert!(a.tool("add").is_some());
    }

    #[test]
    fn who_may_run_an_agent() {
        let open = agent(serde_json::json!({"name": "open"}));
        assert!(open.allows("anyone"));
        let secret = agent(serde_json::json!({"name": "ops", "tools": [
            {"name": "t", "url": "http://x/", "secret": "s3cret"}]}));
        assert!(
            !secret.allows("anyone"),
            "a tool with a secret makes it private"
        );
        let listed = agent(
            serde_json::json!({"name": "ops", "users": ["ann"], "tools": [
            {"name": "t", "url": "http://x/", "secret": "s3cret"}]}),
        );
        assert!(listed.allows("ann"));
        assert!(!listed.allows("bob"));
        let only = agent(serde_json::json!({"name": "mine", "users": ["ann"]}));
        assert!(!only.allows("bob"), "a users list alone makes it private");
        let public = agent(serde_json::json!({"name": "pub", "public": true, "tools": [
            {"name": "t", "url": "http://x/", "secret": "s3cret"}]}));
        assert!(public.allows("bob"));
        let closed = agent(serde_json::json!({"name": "closed", "public": false}));
        assert!(!closed.allows("bob"));
        let agents = vec![
            ("a1".to_string(), open),
            ("a2".to_string(), listed),
            ("a3".to_string(), closed),
        ];
        assert_eq!(names_for(&agents, "bob"), vec!["open"]);
        assert_eq!(names_for(&agents, "ann"), vec!["open", "ops"]);
        assert!(find_for(&agents, "ops", "bob").is_none());
        assert!(find_for(&agents, "a2", "ann").is_some());
        assert!(find_for(&agents, "closed", "bob").is_none());
    }

    #[test]
    fn a_tool_call_is_shaped_and_answered_for_the_model() {
        let tool: HttpTool = serde_json::from_value(serde_json::json!(
            {"name": "add", "url": "http://x/", "secret": "s"}))
        .unwrap();
        assert_eq!(tool.request_body("  "), Ok("{}"));
        assert_eq!(tool.request_body("{\"a\":1}"), Ok("{\"a\":1}"));
        assert!(tool
            .request_body("{nope")
            .unwrap_err()
            .0
            .contains("not valid JSON"));
        assert_eq!(
            tool.request_headers()[1],
            ("authorization", "Bearer s".into())
        );
        let mut body = crate::text::Bounded::new(3);
        body.push(b"42");
        assert_eq!(tool.result(200, &body), ("42".into(), false));
        assert_eq!(
            tool.result(500, &body),
            ("tool add answered HTTP 500: 42".into(), true)
        );
        body.push(b"and more");
        assert!(tool
            .result(200, &body)
            .0
            .ends_with("the first 3 bytes of a longer answer]"));
        assert_eq!(tool.failed(None, 50).0, "tool add timed out after 50 ms");
        assert_eq!(
            tool.failed(Some("reset"), 50),
            ("tool add failed: reset".into(), true)
        );
    }

    #[test]
    fn mcp_servers_parse_validate_and_make_an_agent_with_headers_private() {
        let a = agent(serde_json::json!({"name": "researcher", "mcpServers": [
            {"name": "docs", "url": "https://mcp.example/mcp",
             "headers": {"Authorization": "Bearer k", "X-Team": "a"}, "requiresApproval": ["delete_page"]},
            {"name": "wiki", "url": "http://127.0.0.1:1/mcp", "requiresApproval": true}]}));
        assert!(a.validate().is_ok());
        assert!(!a.allows("anyone"), "MCP headers are secrets: private");
        assert_eq!(
            a.mcp_servers[0].requires_approval,
            ApprovalRule::Tools(vec!["delete_page".into()])
        );
        // Saved as given; a server without headers or approval writes neither.
        let saved = serde_json::to_value(&a).unwrap();
        assert_eq!(
            saved["mcpServers"][1],
            serde_json::json!(
            {"name": "wiki", "url": "http://127.0.0.1:1/mcp", "requiresApproval": true})
        );
        let open = agent(
            serde_json::json!({"name": "o", "mcpServers": [{"name": "wiki", "url": "https://w/mcp"}]}),
        );
        assert!(open.allows("anyone"));
        assert!(serde_json::to_value(&open).unwrap()["mcpServers"][0]
            .get("requiresApproval")
            .is_none());
        assert_ne!(
            a.mcp_servers[0].session_key(),
            open.mcp_servers[0].session_key()
        );
    }

    #[test]
    fn refuses_bad_mcp_servers_with_what_is_wrong() {
        let refusal = |server: serde_json::Value| {
            agent(serde_json::json!({"name": "a", "mcpServers": [server]}))
                .validate()
                .unwrap_err()
        };
        assert!(
            refusal(serde_json::json!({"name": "my__docs", "url": "https://x/"}))
                .contains("without \"__\"")
        );
        assert!(
            refusal(serde_json::json!({"name": "my.docs", "url": "https://x/"}))
                .contains("letters, digits")
        );
        assert!(
            refusal(serde_json::json!({"name": "x".repeat(33), "url": "https://x/"}))
                .contains("1 to 32")
        );
        assert!(refusal(serde_json::json!({"name": "d", "url": "ftp://x/"}))
            .contains("url must be http(s)"));
        assert!(refusal(
            serde_json::json!({"name": "d", "url": "https://x/", "headers": {"bad name": "v"}})
        )
        .contains("not a header name"));
        assert!(refusal(
            serde_json::json!({"name": "d", "url": "https://x/", "headers": {"Accept": "*/*"}})
        )
        .contains("set by the gateway"));
        let bad_value = refusal(
            serde_json::json!({"name": "d", "url": "https://x/", "headers": {"X-Key": "s3cret\r\nX: y"}}),
        );
        assert!(bad_value.contains("printable ASCII") && !bad_value.contains("s3cret"));
        assert!(refusal(
            serde_json::json!({"name": "d", "url": "https://x/", "requiresApproval": [""]})
        )
        .contains("requiresApproval"));
        let nine: Vec<serde_json::Value> = (0..9)
            .map(|i| serde_json::json!({"name": format!("s{i}"), "url": "https://x/"}))
            .collect();
        let many = agent(serde_json::json!({"name": "a", "mcpServers": nine}));
        assert_eq!(many.validate().unwrap_err(), "at most 8 mcpServers");
        let twice = agent(serde_json::json!({"name": "a", "mcpServers": [
            {"name": "d", "url": "https://x/"}, {"name": "d", "url": "https://y/"}]}));
        assert!(twice.validate().unwrap_err().contains("defined twice"));
        assert!(serde_json::from_value::<AgentConfig>(
            serde_json::json!({"name": "a", "mcpServers": [
            {"name": "d", "url": "https://x/", "requiresApproval": "yes"}]})
        )
        .is_err());
    }

    #[test]
    fn approval_is_asked_of_the_http_tool_or_the_mcp_server_a_name_belongs_to() {
        let a = agent(serde_json::json!({"name": "a",
            "tools": [{"name": "pay", "url": "http://x/", "requiresApproval": true}, {"name": "add", "url": "http://x/"}],
            "mcpServers": [
                {"name": "docs", "url": "https://x/", "requiresApproval": ["delete"]},
                {"name": "ops", "url": "https://y/", "requiresApproval": true},
                {"name": "web", "url": "https://z/"}]}));
        let mcp = |exposed: &str, server: &str, name: &str| McpTool {
            exposed: exposed.into(),
            server: server.into(),
            name: name.into(),
            description: String::new(),
            input_schema: serde_json::json!({}),
        };
        let tools = [
            mcp("docs__delete", "docs", "delete"),
            mcp("docs__read", "docs", "read"),
            mcp("ops__restart_2", "ops", "restart"),
            mcp("web__get", "web", "get"),
        ];
        let asks = |name: &str| a.requires_approval(name, &tools);
        assert!(asks("pay") && !asks("add"));
        assert!(asks("docs__delete") && !asks("docs__read"));
        assert!(
            asks("ops__restart_2"),
            "by the tool's name on the server, whatever it is exposed as"
        );
        assert!(!asks("web__get") && !asks("unknown"));
        assert_eq!(
            a.approval_tools(&tools),
            ["pay", "docs__delete", "ops__restart_2"]
        );
        let saved = serde_json::to_value(&a).unwrap();
        assert_eq!(saved["tools"][0]["requiresApproval"], true);
        assert!(saved["tools"][1].get("requiresApproval").is_none());
    }

    #[test]
    fn refuses_bad_configs() {
        assert!(agent(serde_json::json!({"name": "bad name"}))
            .validate()
            .is_err());
        let dup = agent(serde_json::json!({"name": "a", "tools": [
            {"name": "t", "url": "http://x/"}, {"name": "t", "url": "http://x/"}]}));
        assert!(dup.validate().unwrap_err().contains("twice"));
        let url =
            agent(serde_json::json!({"name": "a", "tools": [{"name": "t", "url": "file:///etc"}]}));
        assert!(url.validate().unwrap_err().contains("url"));
    }
}
