//! A conversation's MCP tools: the agent's servers listed before a turn (cached per conversation), their sessions kept in memory, and calls to them.

use super::*;
use crate::agents::McpServer;
use crate::conversation::ToolOutcome;
use crate::mcp::{self, ListedTool, McpError, McpTool, Operation, Outcome};

impl ConversationObject {
    /// The MCP tools of `agent` for a turn: its servers listed again where the cache says so
    /// (all at once, under an abort signal the turn's `abort` reaches), then named for the
    /// model. A server that cannot be listed keeps the tools of its last listing, or adds none;
    /// the turn goes on either way.
    pub(super) async fn mcp_tools(&self, agent: &AgentConfig, config: &Config) -> Vec<McpTool> {
        if agent.mcp_servers.is_empty() {
            return Vec::new();
        }
        let due = self.mcp_cache.borrow_mut().due(agent, now_ms());
        if !due.is_empty() && !self.aborted.get() {
            let ctrl = AbortController::default();
            let signal = ctrl.signal();
            *self.abort.borrow_mut() = Some(ctrl);
            let listings = futures::future::join_all(
                due.iter()
                    .map(|server| self.list_server(server, &signal, config.tool_timeout_ms)),
            )
            .await;
            let mut cache = self.mcp_cache.borrow_mut();
            for (server, tools) in due.iter().zip(listings) {
                cache.listed(&server.name, tools, now_ms(), config.mcp_tools_ttl_ms);
            }
        }
        let cache = self.mcp_cache.borrow();
        let taken: Vec<&str> = agent.tools.iter().map(|t| t.name.as_str()).collect();
        let exposed = mcp::expose(&taken, &cache.listings(agent), mcp::MAX_TOOLS_PER_AGENT);
        for line in &exposed.left_out {
            console_warn!("agent {}: {line}", agent.name);
        }
        exposed.tools
    }

    /// Every page of `server`'s tools, or `None` (logged) when it could not be listed.
    async fn list_server(
        &self,
        server: &McpServer,
        signal: &AbortSignal,
        timeout_ms: u64,
    ) -> Option<Vec<ListedTool>> {
        let listed = self
            .mcp_exchange(server, Operation::ListTools, signal, timeout_ms)
            .await
            .and_then(Outcome::into_tools);
        match listed {
            Ok((tools, more)) => {
                if more {
                    console_warn!(
                        "MCP server \"{}\": listed {} tools, it has more than the bounds let in ({} pages, {} tools)",
                        server.name,
                        tools.len(),
                        mcp::MAX_LIST_PAGES,
                        mcp::MAX_TOOLS_PER_AGENT
                    );
                }
                Some(tools)
            }
            Err(e) => {
                console_warn!(
                    "MCP server \"{}\" could not be listed (tried again in 10 s at the earliest): {e}",
                    server.name
                );
                None
            }
        }
    }

    /// Calls the MCP tool `tool` of `server` with the model's arguments: what the model reads.
    /// A server that cannot be reached, or fails, gives an error result, never a failed turn.
    pub(super) async fn call_mcp_tool(
        &self,
        server: &McpServer,
        tool: &McpTool,
        arguments: &str,
        signal: &AbortSignal,
        timeout_ms: u64,
    ) -> ToolOutcome {
        let arguments = match mcp::call_arguments(&tool.exposed, arguments) {
            Ok(arguments) => arguments,
            Err(refusal) => return refusal,
        };
        let operation = Operation::CallTool {
            name: tool.name.clone(),
            arguments,
        };
        let called = self
            .mcp_exchange(server, operation, signal, timeout_ms)
            .await
            .and_then(Outcome::into_call_result);
        match called {
            Ok(result) => mcp::call_result(&result),
            Err(e) => {
                console_warn!("MCP tool {}: {e}", tool.exposed);
                mcp::failed_call(tool, &e)
            }
        }
    }

    /// One exchange with `server` in this conversation's session with it, which it updates.
    async fn mcp_exchange(
        &self,
        server: &McpServer,
        operation: Operation,
        signal: &AbortSignal,
        timeout_ms: u64,
    ) -> std::result::Result<Outcome, McpError> {
        let key = server.session_key();
        let session = self
            .mcp_sessions
            .borrow()
            .get(&key)
            .cloned()
            .unwrap_or_default();
        let (session, outcome) =
            crate::shell::mcp::exchange(server, session, operation, signal, timeout_ms).await;
        if let Some(session) = session {
            self.mcp_sessions.borrow_mut().insert(key, session);
        }
        outcome
    }
}
