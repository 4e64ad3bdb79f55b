//! Gateway configuration: parsed once from the Worker's vars and secrets, validated, with errors that name the variable.

use crate::llm::ProviderKind;

/// A configured upstream provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// The name models are prefixed with (`openai/gpt-4o`).
    pub name: &'static str,
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_key: Option<String>,
}

/// Everything the gateway reads from its environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub providers: Vec<ProviderConfig>,
    /// `provider/model` used when nothing else picks one.
    pub default_provider: String,
    pub default_model: String,
    pub admin_token: Option<String>,
    /// `None` allows any origin (`*`).
    pub allowed_origins: Option<Vec<String>>,
    pub max_message_bytes: usize,
    /// Bound on model calls in one turn (the tool loop).
    pub max_tool_steps: u32,
    /// Bytes-free time after which an upstream stream is declared stalled.
    pub upstream_stall_ms: u64,
    /// Retries of a retryable failure before the first byte, per candidate.
    pub upstream_retries: u32,
    /// Events that change a conversation (messages, commands, `set:thinking`) a user may send per
    /// minute, across all of that user's conversations.
    pub rate_limit_per_minute: u32,
    /// Messages waiting behind a running turn.
    pub max_queued_messages: usize,
    /// Engine.IO ping interval and timeout advertised to socket.io clients.
    pub sio_ping_interval_ms: u64,
    pub sio_ping_timeout_ms: u64,
    /// How long finished stream events stay replayable for resume.
    pub replay_window_ms: u64,
    /// Time a tool call may take.
    pub tool_timeout_ms: u64,
    /// `max_tokens` asked of the model.
    pub max_output_tokens: u32,
    /// How long a running turn keeps its user message in the conversation's storage before
    /// copying it to D1 (a turn that ends sooner copies it with the reply, in one batch).
    pub d1_copy_delay_ms: u64,
    /// How long a socket.io connection may stay open without authenticating.
    pub connect_timeout_ms: u64,
    /// When a running turn's stream events are written to the conversation's storage.
    pub checkpoint: crate::conversation::checkpoint::CheckpointPolicy,
    /// Whether a turn a restart interrupted is continued after it is stored.
    pub resume_interrupted: crate::conversation::checkpoint::ResumePolicy,
}

/// A variable that is present but unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "configuration variable {}: {}",
            self.variable, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

/// Default Anthropic endpoint when only a key is configured.
pub const ANTHROPIC_DEFAULT_BASE: &str = "https://api.anthropic.com";
/// Default OpenAI endpoint when only a key is configured.
pub const OPENAI_DEFAULT_BASE: &str = "https://api.openai.com/v1";

impl Config {
    /// Parses the configuration from a lookup of vars and secrets (`None` or empty means unset).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let var = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };

        let mut providers = Vec::new();
        let openai_key = var("OPENAI_API_KEY");
        if let Some(base) = var("OPENAI_BASE_URL")
            .or_else(|| openai_key.as_ref().map(|_| OPENAI_DEFAULT_BASE.to_string()))
        {
            providers.push(ProviderConfig {
                name: "openai",
                kind: ProviderKind::OpenAi,
                base_url: parse_url("OPENAI_BASE_URL", &base)?,
                api_key: openai_key,
            });
        }
        let anthropic_key = var("ANTHROPIC_API_KEY");
        if let Some(base) = var("ANTHROPIC_BASE_URL").or_else(|| {
            anthropic_key
                .as_ref()
                .map(|_| ANTHROPIC_DEFAULT_BASE.to_string())
        }) {
            providers.push(ProviderConfig {
                name: "anthropic",
                kind: ProviderKind::Anthropic,
                base_url: parse_url("ANTHROPIC_BASE_URL", &base)?,
                api_key: anthropic_key,
            });
        }
        providers.push(ProviderConfig {
            name: "echo",
            kind: ProviderKind::Echo,
            base_url: String::new(),
            api_key: None,
        });

        let (default_provider, default_model) = match var("DEFAULT_MODEL") {
            Some(m) => {
                let (p, id) = m.split_once('/').ok_or_else(|| ConfigError {
                    variable: "DEFAULT_MODEL",
                    reason: format!("\"{m}\" is not provider/model (e.g. openai/gpt-4o-mini)"),
                })?;
                if !providers.iter().any(|c| c.name == p) {
                    return Err(ConfigError {
                        variable: "DEFAULT_MODEL",
                        reason: format!(
                            "provider \"{p}\" is not configured (set its base URL or API key)"
                        ),
                    });
                }
                if id.is_empty() {
                    return Err(ConfigError {
                        variable: "DEFAULT_MODEL",
                        reason: "the model id is empty".into(),
                    });
                }
                (p.to_string(), id.to_string())
            }
            // The first real provider, else the built-in echo provider so a fresh checkout works offline.
            None => match providers.first() {
                Some(p) if p.kind == ProviderKind::OpenAi => {
                    ("openai".into(), "gpt-4o-mini".into())
                }
                Some(p) if p.kind == ProviderKind::Anthropic => {
                    ("anthropic".into(), "claude-sonnet-4-5".into())
                }
                _ => ("echo".into(), "echo".into()),
            },
        };

        let allowed_origins = match var("ALLOWED_ORIGINS") {
            None => None,
            Some(v) if v == "*" => None,
            Some(v) => {
                let list: Vec<String> = v
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect();
                for o in &list {
                    if !(o.starts_with("http://") || o.starts_with("https://")) {
                        return Err(ConfigError {
                            variable: "ALLOWED_ORIGINS",
                            reason: format!(
                                "\"{o}\" is not an origin like https://app.example.com"
                            ),
                        });
                    }
                }
                Some(list)
            }
        };

        Ok(Config {
            providers,
            default_provider,
            default_model,
            admin_token: var("ADMIN_TOKEN"),
            allowed_origins,
            max_message_bytes: number(&var, "MAX_MESSAGE_BYTES", 65_536, 1, 1 << 20)? as usize,
            max_tool_steps: number(&var, "MAX_TOOL_STEPS", 8, 1, 64)? as u32,
            upstream_stall_ms: number(&var, "UPSTREAM_STALL_TIMEOUT_MS", 60_000, 100, 600_000)?,
            upstream_retries: number(&var, "UPSTREAM_RETRIES", 2, 0, 10)? as u32,
            rate_limit_per_minute: number(&var, "RATE_LIMIT_PER_MINUTE", 60, 1, 100_000)? as u32,
            max_queued_messages: number(&var, "MAX_QUEUED_MESSAGES", 8, 0, 1_000)? as usize,
            sio_ping_interval_ms: number(&var, "SIO_PING_INTERVAL_MS", 25_000, 50, 3_600_000)?,
            sio_ping_timeout_ms: number(&var, "SIO_PING_TIMEOUT_MS", 20_000, 50, 3_600_000)?,
            replay_window_ms: number(&var, "REPLAY_WINDOW_MS", 120_000, 1_000, 86_400_000)?,
            tool_timeout_ms: number(&var, "TOOL_TIMEOUT_MS", 30_000, 100, 600_000)?,
            max_output_tokens: number(&var, "MAX_OUTPUT_TOKENS", 4_096, 1, 1_000_000)? as u32,
            d1_copy_delay_ms: number(&var, "D1_COPY_DELAY_MS", 1_000, 0, 60_000)?,
            connect_timeout_ms: number(&var, "CONNECT_TIMEOUT_MS", 10_000, 100, 60_000)?,
            checkpoint: crate::conversation::checkpoint::CheckpointPolicy {
                every_ms: number(&var, "CHECKPOINT_INTERVAL_MS", 1_000, 50, 60_000)?,
                every_bytes: number(&var, "CHECKPOINT_BYTES", 8_192, 1, 1 << 20)? as usize,
            },
            resume_interrupted: match var("RESUME_INTERRUPTED_TURNS") {
                None => crate::conversation::checkpoint::ResumePolicy::Auto,
                Some(v) => {
                    crate::conversation::checkpoint::ResumePolicy::parse(&v).ok_or_else(|| {
                        ConfigError {
                            variable: "RESUME_INTERRUPTED_TURNS",
                            reason: format!("\"{v}\" is not auto, on or off"),
                        }
                    })?
                }
            },
        })
    }

    /// The provider with this name, if configured.
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// Whether a browser `Origin` may open sockets and call the API.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        match &self.allowed_origins {
            None => true,
            Some(list) => list.iter().any(|o| o == origin.trim_end_matches('/')),
        }
    }

    /// Whether an origin is named in `ALLOWED_ORIGINS` (a `*` names none).
    pub fn origin_listed(&self, origin: &str) -> bool {
        self.allowed_origins
            .as_ref()
            .is_some_and(|list| list.iter().any(|o| o == origin.trim_end_matches('/')))
    }
}

fn parse_url(variable: &'static str, value: &str) -> Result<String, ConfigError> {
    if !(value.starts_with("http://") || value.starts_with("https://")) {
        return Err(ConfigError {
            variable,
            reason: format!("\"{value}\" is not an http(s) URL"),
        });
    }
    Ok(value.trim_end_matches('/').to_string())
}

fn number(
    var: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    match var(variable) {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            Ok(n) => Err(ConfigError {
                variable,
                reason: format!("{n} is outside {min}..={max}"),
            }),
            Err(_) => Err(ConfigError {
                variable,
                reason: format!("\"{v}\" is not a whole number"),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn empty_environment_falls_back_to_echo() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            (c.default_provider.as_str(), c.default_model.as_str()),
            ("echo", "echo")
        );
        assert_eq!(c.max_message_bytes, 65_536);
        assert!(c.admin_token.is_none());
        assert!(c.origin_allowed("https://anything.example"));
    }

    #[test]
    fn openai_base_url_configures_openai_and_becomes_default() {
        let c = parse(&[
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/"),
            ("OPENAI_API_KEY", "k"),
        ])
        .unwrap();
        let p = c.provider("openai").unwrap();
        assert_eq!(p.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(p.api_key.as_deref(), Some("k"));
        assert_eq!(c.default_provider, "openai");
    }

    #[test]
    fn bad_values_name_the_variable() {
        assert_eq!(
            parse(&[("MAX_MESSAGE_BYTES", "lots")])
                .unwrap_err()
                .variable,
            "MAX_MESSAGE_BYTES"
        );
        assert_eq!(
            parse(&[("MAX_MESSAGE_BYTES", "0")]).unwrap_err().variable,
            "MAX_MESSAGE_BYTES"
        );
        assert_eq!(
            parse(&[("OPENAI_BASE_URL", "ftp://x")])
                .unwrap_err()
                .variable,
            "OPENAI_BASE_URL"
        );
        assert_eq!(
            parse(&[("DEFAULT_MODEL", "gpt-4o")]).unwrap_err().variable,
            "DEFAULT_MODEL"
        );
        assert_eq!(
            parse(&[("DEFAULT_MODEL", "anthropic/claude")])
                .unwrap_err()
                .variable,
            "DEFAULT_MODEL"
        );
        assert_eq!(
            parse(&[("ALLOWED_ORIGINS", "example.com")])
                .unwrap_err()
                .variable,
            "ALLOWED_ORIGINS"
        );
        let e = parse(&[("MAX_MESSAGE_BYTES", "lots")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("MAX_MESSAGE_BYTES") && e.contains("lots"), "{e}");
    }

    #[test]
    fn origins_are_an_allow_list() {
        let c = parse(&[(
            "ALLOWED_ORIGINS",
            "https://a.example, http://localhost:3000/",
        )])
        .unwrap();
        assert!(c.origin_allowed("https://a.example"));
        assert!(c.origin_allowed("http://localhost:3000"));
        assert!(!c.origin_allowed("https://evil.example"));
    }

    #[test]
    fn blank_values_count_as_unset() {
        let c = parse(&[
            ("OPENAI_BASE_URL", " "),
            ("ADMIN_TOKEN", ""),
            ("DEFAULT_MODEL", ""),
        ])
        .unwrap();
        assert!(c.provider("openai").is_none());
        assert!(c.admin_token.is_none());
    }
}
