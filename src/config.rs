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
    /// Live objects one invocation calls at most in a fan-out (reload, revocation, cache
    /// invalidation); more are split over shard objects.
    pub fanout_shard_size: usize,
    /// Engine.IO ping interval and timeout advertised to socket.io clients.
    pub sio_ping_interval_ms: u64,
    pub sio_ping_timeout_ms: u64,
    /// How long finished stream events stay replayable for resume.
    pub replay_window_ms: u64,
    /// Time a tool call may take (an MCP exchange too: a listing, or a call with the session
    /// it may have to open).
    pub tool_timeout_ms: u64,
    /// How long a conversation reuses the tool list of an MCP server (`MCP_TOOLS_TTL_S`).
    pub mcp_tools_ttl_ms: i64,
    /// How long a tool call waits for a person's approval before it counts as declined.
    pub tool_approval_timeout_s: u64,
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
    /// Signing in with the app's own login, besides the gateway's tokens.
    pub login: LoginConfig,
}

/// The app's login: its session endpoint and the key set of its JWTs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginConfig {
    /// `AUTH_SESSION_URL`: a better-auth `get-session` endpoint, asked with the request's
    /// `Cookie` and `Authorization` headers.
    pub session_url: Option<String>,
    /// `AUTH_SESSION_CACHE_S`, in ms: how long a session answer is reused (0: not at all).
    pub session_cache_ms: i64,
    /// `AUTH_JWKS_URL`: the key set that verifies the app's JWTs.
    pub jwks_url: Option<String>,
    /// `AUTH_JWT_ISSUER`: the `iss` a JWT must carry, when set.
    pub jwt_issuer: Option<String>,
    /// `AUTH_JWT_AUDIENCE`: the `aud` a JWT must name, when set.
    pub jwt_audience: Option<String>,
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

        // The reference gateway's variable is an alias; ALLOWED_ORIGINS wins when both are set.
        let origins = var("ALLOWED_ORIGINS")
            .map(|v| ("ALLOWED_ORIGINS", v))
            .or_else(|| var("GATEWAY_CORS_ORIGIN").map(|v| ("GATEWAY_CORS_ORIGIN", v)));
        let allowed_origins = match origins {
            None => None,
            Some((_, v)) if v == "*" => None,
            Some((variable, v)) => {
                let list: Vec<String> = v
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect();
                for o in &list {
                    if !(o.starts_with("http://") || o.starts_with("https://")) {
                        return Err(ConfigError {
                            variable,
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
            // At most 990: an invocation may make 1,000 subrequests to Durable Objects and D1,
            // and the one that reads the registry also makes a few D1 queries.
            fanout_shard_size: number(&var, "FANOUT_SHARD_SIZE", 500, 2, 990)? as usize,
            sio_ping_interval_ms: number(&var, "SIO_PING_INTERVAL_MS", 25_000, 50, 3_600_000)?,
            sio_ping_timeout_ms: number(&var, "SIO_PING_TIMEOUT_MS", 20_000, 50, 3_600_000)?,
            replay_window_ms: number(&var, "REPLAY_WINDOW_MS", 120_000, 1_000, 86_400_000)?,
            tool_timeout_ms: number(&var, "TOOL_TIMEOUT_MS", 30_000, 100, 600_000)?,
            mcp_tools_ttl_ms: number(&var, "MCP_TOOLS_TTL_S", 300, 0, 86_400)? as i64 * 1000,
            tool_approval_timeout_s: number(&var, "TOOL_APPROVAL_TIMEOUT_S", 600, 1, 7 * 86_400)?,
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
            login: login_config(&var)?,
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

/// The app's login variables; an issuer or audience without a key set is a mistake, not ignored.
fn login_config(var: &impl Fn(&str) -> Option<String>) -> Result<LoginConfig, ConfigError> {
    let session_url = var("AUTH_SESSION_URL")
        .map(|v| absolute_url("AUTH_SESSION_URL", &v))
        .transpose()?;
    let jwks_url = var("AUTH_JWKS_URL")
        .map(|v| absolute_url("AUTH_JWKS_URL", &v))
        .transpose()?;
    let (jwt_issuer, jwt_audience) = (var("AUTH_JWT_ISSUER"), var("AUTH_JWT_AUDIENCE"));
    for (variable, value) in [
        ("AUTH_JWT_ISSUER", &jwt_issuer),
        ("AUTH_JWT_AUDIENCE", &jwt_audience),
    ] {
        if value.is_some() && jwks_url.is_none() {
            return Err(ConfigError {
                variable,
                reason: "is set but AUTH_JWKS_URL is not: JWTs are verified only with a key set"
                    .into(),
            });
        }
    }
    Ok(LoginConfig {
        session_url,
        session_cache_ms: number(var, "AUTH_SESSION_CACHE_S", 60, 0, 86_400)? as i64 * 1000,
        jwks_url,
        jwt_issuer,
        jwt_audience,
    })
}

/// An absolute http(s) URL with a host, used as it is.
fn absolute_url(variable: &'static str, value: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| ConfigError {
        variable,
        reason: format!("\"{value}\" is not an absolute http(s) URL: {why}"),
    };
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or_else(|| bad("it must start with https:// or http://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Err(bad("it has no host"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains spaces or control characters"));
    }
    if value.contains('#') {
        return Err(bad("it has a fragment"));
    }
    Ok(value.to_string())
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
        assert_eq!(c.mcp_tools_ttl_ms, 300_000);
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
    fn the_fan_out_shard_size_stays_under_the_subrequest_budget() {
        assert_eq!(parse(&[]).unwrap().fanout_shard_size, 500);
        assert_eq!(
            parse(&[("FANOUT_SHARD_SIZE", "4")])
                .unwrap()
                .fanout_shard_size,
            4
        );
        for bad in ["1", "991", "many"] {
            assert_eq!(
                parse(&[("FANOUT_SHARD_SIZE", bad)]).unwrap_err().variable,
                "FANOUT_SHARD_SIZE"
            );
        }
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
        assert_eq!(
            parse(&[("MCP_TOOLS_TTL_S", "86401")]).unwrap_err().variable,
            "MCP_TOOLS_TTL_S"
        );
        assert_eq!(
            parse(&[("MCP_TOOLS_TTL_S", "0")]).unwrap().mcp_tools_ttl_ms,
            0
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
    fn gateway_cors_origin_is_an_alias_that_allowed_origins_overrides() {
        let c = parse(&[("GATEWAY_CORS_ORIGIN", "http://localhost:3000")]).unwrap();
        assert!(c.origin_listed("http://localhost:3000"));
        assert!(!c.origin_allowed("https://evil.example"));
        let both = parse(&[
            ("GATEWAY_CORS_ORIGIN", "http://localhost:3000"),
            ("ALLOWED_ORIGINS", "https://app.example"),
        ])
        .unwrap();
        assert!(both.origin_listed("https://app.example"));
        assert!(!both.origin_allowed("http://localhost:3000"));
        assert_eq!(
            parse(&[("GATEWAY_CORS_ORIGIN", "localhost:3000")])
                .unwrap_err()
                .variable,
            "GATEWAY_CORS_ORIGIN"
        );
    }

    #[test]
    fn the_app_s_login_is_off_unless_configured() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            c.login,
            LoginConfig {
                session_cache_ms: 60_000,
                ..LoginConfig::default()
            }
        );
        let c = parse(&[
            (
                "AUTH_SESSION_URL",
                "https://app.example/api/auth/get-session",
            ),
            ("AUTH_SESSION_CACHE_S", "0"),
            ("AUTH_JWKS_URL", "http://127.0.0.1:9999/jwks"),
            ("AUTH_JWT_ISSUER", "https://app.example"),
            ("AUTH_JWT_AUDIENCE", "chat"),
        ])
        .unwrap();
        assert_eq!(
            c.login.session_url.as_deref(),
            Some("https://app.example/api/auth/get-session")
        );
        assert_eq!(c.login.session_cache_ms, 0);
        assert_eq!(
            c.login.jwks_url.as_deref(),
            Some("http://127.0.0.1:9999/jwks")
        );
        assert_eq!(c.login.jwt_issuer.as_deref(), Some("https://app.example"));
        assert_eq!(c.login.jwt_audience.as_deref(), Some("chat"));
    }

    #[test]
    fn bad_login_values_name_the_variable() {
        for (k, v) in [
            ("AUTH_SESSION_URL", "app.example/api/auth/get-session"),
            ("AUTH_SESSION_URL", "https:///get-session"),
            ("AUTH_SESSION_URL", "https://app.example/get session"),
            ("AUTH_JWKS_URL", "ftp://app.example/jwks"),
            ("AUTH_JWKS_URL", "https://:443/jwks"),
            ("AUTH_SESSION_CACHE_S", "-1"),
            ("AUTH_SESSION_CACHE_S", "forever"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err();
            assert_eq!(e.variable, k, "{v}");
            assert!(e.to_string().contains(k), "{e}");
        }
        let e = parse(&[("AUTH_JWT_AUDIENCE", "chat")]).unwrap_err();
        assert_eq!(e.variable, "AUTH_JWT_AUDIENCE");
        assert!(e.reason.contains("AUTH_JWKS_URL"), "{e}");
        assert_eq!(
            parse(&[("AUTH_JWT_ISSUER", "x")]).unwrap_err().variable,
            "AUTH_JWT_ISSUER"
        );
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
