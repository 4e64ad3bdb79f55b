//! The tools a conversation listed from its agent's MCP servers: which servers are due for a listing, and what each last gave.

use super::tools::ListedTool;
use crate::agents::{AgentConfig, McpServer};
use std::collections::BTreeMap;

/// How long after a failed listing a server is listed again: a server that hangs costs one
/// turn in this long its wait (`TOOL_TIMEOUT_MS`), not every turn.
pub const RELIST_AFTER_FAILURE_MS: i64 = 10_000;

/// The tools a conversation listed from its agent's MCP servers: kept while the agent's config
/// is the same, each server's for a TTL. A server whose listing failed keeps the tools of its
/// last good listing (their calls then fail on their own) and is listed again at the first
/// turn [`RELIST_AFTER_FAILURE_MS`] later.
#[derive(Debug, Default)]
pub struct ToolCache {
    agent: Option<AgentConfig>,
    listings: BTreeMap<String, Listing>,
}

#[derive(Debug, Default)]
struct Listing {
    tools: Vec<ListedTool>,
    /// When the listing is due again.
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
    /// the tools it had and lists it again after [`RELIST_AFTER_FAILURE_MS`] (or the TTL, if
    /// shorter).
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
            None => listing.fresh_until = Some(now_ms + ttl_ms.min(RELIST_AFTER_FAILURE_MS)),
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
    use crate::mcp::test_support::tool;
    use serde_json::json;

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
        cache.listed("one", Some(vec![tool("x")]), 0, 60_000);
        cache.listed("two", None, 0, 60_000);
        assert_eq!(
            cache.listings(&a),
            [("one", &[tool("x")][..]), ("two", &[][..])]
        );
        // A failed listing is tried again after a short wait; a good one after its TTL.
        assert!(cache.due(&a, RELIST_AFTER_FAILURE_MS - 1).is_empty());
        assert_eq!(names(cache.due(&a, RELIST_AFTER_FAILURE_MS)), ["two"]);
        assert_eq!(names(cache.due(&a, 60_000)), ["one", "two"]);
        // A TTL shorter than the wait after a failure bounds it.
        cache.listed("two", None, 0, 1000);
        assert_eq!(names(cache.due(&a, 1000)), ["two"]);
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
