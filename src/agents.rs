//! Named agent configurations: system prompt, model, thinking level and HTTP tools, validated when saved.

use crate::llm::{ThinkingLevel, ToolSpec};
use serde::{Deserialize, Serialize};

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
    /// Whether every user may run it. Unset: public unless a tool carries a secret or `users`
    /// names who may (an agent that holds the operator's secrets is private until said otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
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
            if !valid_name(&t.name) {
                return Err(format!("tool name \"{}\" must be 1 to 64 characters of letters, digits, '-', '_' or '.'", t.name));
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
        Ok(())
    }

    /// The tools whose calls wait for the conversation owner's approval.
    pub fn approval_tools(&self) -> Vec<String> {
        self.tools
            .iter()
            .filter(|t| t.requires_approval)
            .map(|t| t.name.clone())
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

    /// Whether `user` may run this agent.
    pub fn allows(&self, user: &str) -> bool {
        if self.users.iter().any(|u| u == user) {
            return true;
        }
        self.public.unwrap_or_else(|| {
            self.users.is_empty() && !self.tools.iter().any(|t| t.secret.is_some())
        })
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
