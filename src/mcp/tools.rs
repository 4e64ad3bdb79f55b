//! Tools as servers list them, and as the model sees them: `server__tool` names, sanitized, unique and bounded (the scheme is in the parent module's doc).

use super::McpError;
use crate::llm::ToolSpec;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashSet;

/// Bytes of a tool's description passed to the model.
const MAX_DESCRIPTION_BYTES: usize = 4 * 1024;
/// Longest tool name the providers take (`^[a-zA-Z0-9_-]{1,64}$`).
const MAX_EXPOSED_NAME: usize = 64;

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
pub(super) struct ToolsPage {
    pub tools: Vec<ListedTool>,
    pub next_cursor: Option<String>,
}

/// Reads a `tools/list` result; entries without a name are skipped.
pub(super) fn tools_page(result: &Value) -> Result<ToolsPage, McpError> {
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::test_support::tool;

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
}
