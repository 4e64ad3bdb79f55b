//! Which model a turn runs on: the `/model` override, then the client's choice, then the agent's model, then routing.

use crate::agents::AgentConfig;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::routing::RoutingDecision;

/// Providers whose names are recognised in `provider/model` even when not configured,
/// so the error can say the provider is missing instead of guessing a model name.
const KNOWN_PROVIDERS: [&str; 3] = ["openai", "anthropic", "echo"];

/// Splits a model spec into (provider, model): an explicit provider wins, then a `provider/` prefix,
/// then the catalog, then the configured default provider.
pub fn resolve_model(
    spec: &str,
    provider: Option<&str>,
    catalog: &Catalog,
    config: &Config,
) -> (String, String) {
    if let Some(p) = provider {
        let model = spec.strip_prefix(&format!("{p}/")).unwrap_or(spec);
        return (p.to_string(), model.to_string());
    }
    if let Some((p, m)) = spec.split_once('/') {
        if config.provider(p).is_some() || KNOWN_PROVIDERS.contains(&p) {
            return (p.to_string(), m.to_string());
        }
    }
    if let Some(info) = catalog.lookup(None, spec) {
        return (info.provider.clone(), info.id.clone());
    }
    (config.default_provider.clone(), spec.to_string())
}

/// The model used when a client names only a provider.
pub fn default_model_for(provider: &str, config: &Config) -> String {
    if provider == config.default_provider {
        return config.default_model.clone();
    }
    match provider {
        "anthropic" => "claude-sonnet-4-5".into(),
        "echo" => "echo".into(),
        _ => "gpt-4o-mini".into(),
    }
}

/// What a message asks for, besides its content.
pub struct Choice<'a> {
    /// The conversation's `/model` override.
    pub model_override: Option<&'a str>,
    pub client_provider: Option<&'a str>,
    pub client_model: Option<&'a str>,
    pub agent: Option<&'a AgentConfig>,
}

/// The single candidate that bypasses routing, if anything picks one; `None` means the rules decide.
pub fn explicit_candidate(
    choice: &Choice<'_>,
    catalog: &Catalog,
    config: &Config,
) -> Option<RoutingDecision> {
    let pick = |spec: &str, provider: Option<&str>, rule: &str, reason: String| {
        let (provider, model) = resolve_model(spec, provider, catalog, config);
        RoutingDecision {
            provider,
            model,
            rule_name: rule.into(),
            reason,
        }
    };
    if let Some(o) = choice.model_override {
        return Some(pick(
            o,
            None,
            "override",
            "/model override for this conversation".into(),
        ));
    }
    if choice.client_provider.is_some() || choice.client_model.is_some() {
        let spec = match choice.client_model {
            Some(m) => m.to_string(),
            None => default_model_for(choice.client_provider.unwrap_or_default(), config),
        };
        return Some(pick(
            &spec,
            choice.client_provider,
            "client",
            "provider/model chosen by the client".into(),
        ));
    }
    let agent = choice.agent?;
    let model = agent.model.as_deref()?;
    Some(pick(
        model,
        agent.provider.as_deref(),
        "agent",
        format!("model of agent {}", agent.name),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config() -> Config {
        let vars: HashMap<&str, &str> = [
            ("OPENAI_BASE_URL", "http://127.0.0.1:1/v1"),
            ("DEFAULT_MODEL", "openai/gpt-4o-mini"),
        ]
        .into();
        Config::from_lookup(|k| vars.get(k).map(|v| v.to_string())).unwrap()
    }

    fn agent(model: Option<&str>) -> AgentConfig {
        serde_json::from_value(serde_json::json!({ "name": "helper", "model": model })).unwrap()
    }

    #[test]
    fn resolves_prefixes_catalog_ids_and_unknown_names() {
        let (c, cat) = (config(), Catalog::builtin());
        assert_eq!(
            resolve_model("anthropic/claude-haiku-4-5", None, &cat, &c),
            ("anthropic".into(), "claude-haiku-4-5".into())
        );
        assert_eq!(
            resolve_model("claude-haiku-4-5", None, &cat, &c),
            ("anthropic".into(), "claude-haiku-4-5".into())
        );
        assert_eq!(
            resolve_model("my-local-model", None, &cat, &c),
            ("openai".into(), "my-local-model".into())
        );
        assert_eq!(
            resolve_model("openai/gpt-4o", Some("openai"), &cat, &c),
            ("openai".into(), "gpt-4o".into())
        );
        // An OpenRouter-style id keeps its slash when the prefix is not a provider.
        assert_eq!(
            resolve_model("meta-llama/llama-3", None, &cat, &c),
            ("openai".into(), "meta-llama/llama-3".into())
        );
    }

    #[test]
    fn override_beats_client_beats_agent() {
        let (c, cat) = (config(), Catalog::builtin());
        let a = agent(Some("gpt-4.1"));
        let mut choice = Choice {
            model_override: Some("openai/o3"),
            client_provider: None,
            client_model: Some("gpt-4o"),
            agent: Some(&a),
        };
        let d = explicit_candidate(&choice, &cat, &c).unwrap();
        assert_eq!((d.model.as_str(), d.rule_name.as_str()), ("o3", "override"));
        choice.model_override = None;
        let d = explicit_candidate(&choice, &cat, &c).unwrap();
        assert_eq!(
            (d.model.as_str(), d.rule_name.as_str()),
            ("gpt-4o", "client")
        );
        choice.client_model = None;
        let d = explicit_candidate(&choice, &cat, &c).unwrap();
        assert_eq!(
            (d.model.as_str(), d.rule_name.as_str()),
            ("gpt-4.1", "agent")
        );
        let plain = agent(None);
        choice.agent = Some(&plain);
        assert!(explicit_candidate(&choice, &cat, &c).is_none());
    }

    #[test]
    fn a_provider_alone_gets_its_default_model() {
        let (c, cat) = (config(), Catalog::builtin());
        let choice = Choice {
            model_override: None,
            client_provider: Some("anthropic"),
            client_model: None,
            agent: None,
        };
        let d = explicit_candidate(&choice, &cat, &c).unwrap();
        assert_eq!(
            (d.provider.as_str(), d.model.as_str()),
            ("anthropic", "claude-sonnet-4-5")
        );
        let choice = Choice {
            client_provider: Some("openai"),
            ..choice
        };
        assert_eq!(
            explicit_candidate(&choice, &cat, &c).unwrap().model,
            "gpt-4o-mini"
        );
    }
}
