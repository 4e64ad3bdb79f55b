//! What a turn runs with (model candidates, agent, tools, context) and the session changes the commands make, decided from the session, the message and the operator's configuration.

use super::SessionState;
use crate::agents::{self, AgentConfig};
use crate::catalog::{self, Catalog};
use crate::config::Config;
use crate::llm::{ChatMessage, ThinkingLevel, ToolSpec};
use crate::protocol::MessageEvent;
use crate::routing::{CompiledRules, RoutingContext, RoutingDecision, Target};
use crate::selection;

/// The operator's configuration a plan reads.
#[derive(Clone, Copy)]
pub struct Operator<'a> {
    pub catalog: &'a Catalog,
    pub rules: &'a CompiledRules,
    pub agents: &'a [(String, AgentConfig)],
}

/// A planned turn.
#[derive(Debug)]
pub struct TurnPlan {
    /// The agent the session named that is gone or not this user's: the turn runs without it,
    /// and the clients are told.
    pub missing_agent: Option<String>,
    pub agent: Option<AgentConfig>,
    /// Models to try in order, each on a configured provider; empty when none can serve.
    pub candidates: Vec<RoutingDecision>,
    pub tools: Vec<ToolSpec>,
    /// The context of the first call: system prompt, history, the user message.
    pub base: Vec<ChatMessage>,
}

/// Plans the turn answering `message` from `user`: picks the agent (checked again at every
/// turn, so an agent made private since it was chosen stops here), then the model (`/model`
/// override, the client's choice, the agent's model, then the routing rules and the default),
/// records both in the session and clamps its thinking level to what the model takes. The user
/// message joins `history`.
pub fn plan_turn(
    session: &mut SessionState,
    history: &mut Vec<ChatMessage>,
    message: &MessageEvent,
    user: &str,
    operator: Operator<'_>,
    config: &Config,
) -> TurnPlan {
    if let Some(agent) = &message.agent_id {
        session.agent = Some(agent.clone());
    }
    let (agent, missing_agent) = session_agent(session, user, operator);
    let candidates: Vec<RoutingDecision> =
        candidates(session, message, user, agent.as_ref(), operator, config)
            .into_iter()
            .filter(|c| config.provider(&c.provider).is_some())
            .collect();
    if let Some(first) = candidates.first() {
        session.use_model(&first.provider, &first.model);
        if session.thinking_level.is_none() {
            session.thinking_level = agent.as_ref().and_then(|a| a.thinking_level);
        }
        let levels = catalog::thinking_levels_for(
            operator.catalog.lookup(Some(&first.provider), &first.model),
            &first.model,
        );
        session.clamp_thinking(&levels);
    }
    let tools = agent.as_ref().map(|a| a.tool_specs()).unwrap_or_default();
    let mut base = context(agent.as_ref(), history);
    let user_message = ChatMessage::User {
        content: message.content.clone(),
    };
    history.push(user_message.clone());
    base.push(user_message);
    TurnPlan {
        missing_agent,
        agent,
        candidates,
        tools,
        base,
    }
}

/// Plans the call that continues a turn the gateway stored as interrupted: the session's agent
/// (checked again) and its tools, the history as the context (it ends with the stored partial
/// reply) and the model the interrupted turn used, when its provider is still configured.
pub fn plan_continuation(
    session: &mut SessionState,
    history: &[ChatMessage],
    user: &str,
    operator: Operator<'_>,
    config: &Config,
    target: Target,
) -> TurnPlan {
    let (agent, missing_agent) = session_agent(session, user, operator);
    let candidates = match config.provider(&target.provider) {
        Some(_) if !target.model.is_empty() => vec![RoutingDecision {
            provider: target.provider,
            model: target.model,
            rule_name: "resume".into(),
            reason: "continues the turn a restart interrupted".into(),
        }],
        _ => Vec::new(),
    };
    if let Some(first) = candidates.first() {
        session.use_model(&first.provider, &first.model);
    }
    TurnPlan {
        missing_agent,
        tools: agent.as_ref().map(|a| a.tool_specs()).unwrap_or_default(),
        base: context(agent.as_ref(), history),
        agent,
        candidates,
    }
}

/// The context a parked turn goes on with once its tool call is answered: the session's agent
/// (checked again: one made private meanwhile is dropped) and the history, which ends with the
/// turn's user message (the turn's own steps are kept with it).
pub fn resumed_context(
    session: &mut SessionState,
    history: &[ChatMessage],
    user: &str,
    operator: Operator<'_>,
) -> (Option<AgentConfig>, Vec<ChatMessage>) {
    let (agent, _) = session_agent(session, user, operator);
    let base = context(agent.as_ref(), history);
    (agent, base)
}

/// The session's agent if `user` may still run it; else none, and the name that was dropped.
fn session_agent(
    session: &mut SessionState,
    user: &str,
    operator: Operator<'_>,
) -> (Option<AgentConfig>, Option<String>) {
    let agent_name = session.agent.clone();
    let agent: Option<AgentConfig> = agent_name
        .as_ref()
        .and_then(|n| agents::find_for(operator.agents, n, user).cloned());
    let missing_agent = agent_name.filter(|_| agent.is_none());
    if missing_agent.is_some() {
        session.agent = None;
    }
    (agent, missing_agent)
}

/// The agent's system prompt, then the history.
fn context(agent: Option<&AgentConfig>, history: &[ChatMessage]) -> Vec<ChatMessage> {
    let mut base = Vec::with_capacity(history.len() + 2);
    if let Some(a) = agent.filter(|a| !a.system_prompt.is_empty()) {
        base.push(ChatMessage::System {
            content: a.system_prompt.clone(),
        });
    }
    base.extend(history.iter().cloned());
    base
}

/// Candidates in order: override, client choice, agent model, then routing rules and the
/// default. A routed turn records the rule that chose it in the session.
fn candidates(
    session: &mut SessionState,
    message: &MessageEvent,
    user: &str,
    agent: Option<&AgentConfig>,
    operator: Operator<'_>,
    config: &Config,
) -> Vec<RoutingDecision> {
    let choice = selection::Choice {
        model_override: session.model_override.as_deref(),
        client_provider: message.provider.as_deref(),
        client_model: message.model_id.as_deref(),
        agent,
    };
    if let Some(only) = selection::explicit_candidate(&choice, operator.catalog, config) {
        return vec![only];
    }
    let default = Target {
        provider: config.default_provider.clone(),
        model: config.default_model.clone(),
    };
    let ctx = RoutingContext {
        content: &message.content,
        user_id: user,
        agent: agent.map(|a| a.name.as_str()),
    };
    let candidates = operator.rules.candidates(&ctx, &default);
    if let Some(first) = candidates.first() {
        session.routing_decision = Some(first.clone());
    }
    candidates
}

/// The refusal of an agent that does not exist or that `user` may not run (the two read the
/// same, and the listing names only the agents the user may run).
pub fn unknown_agent_message(name: &str, agents: &[(String, AgentConfig)], user: &str) -> String {
    let names = agents::names_for(agents, user);
    let list = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    };
    format!("Unknown agent \"{name}\". Available: {list}")
}

impl SessionState {
    /// The provider and model of the session, or the configured default before its first turn.
    pub fn current_model(&self, config: &Config) -> (String, String) {
        (
            self.provider
                .clone()
                .unwrap_or_else(|| config.default_provider.clone()),
            self.model_id
                .clone()
                .unwrap_or_else(|| config.default_model.clone()),
        )
    }

    /// The thinking levels the session's current model takes.
    pub fn available_levels(&self, config: &Config, catalog: &Catalog) -> Vec<ThinkingLevel> {
        let (provider, model) = self.current_model(config);
        catalog::thinking_levels_for(catalog.lookup(Some(&provider), &model), &model)
    }

    /// The `session:info` payload of conversation `id`.
    pub fn info(&self, id: &str, config: &Config, catalog: &Catalog) -> String {
        let levels = self.available_levels(config, catalog);
        let default = (
            config.default_provider.as_str(),
            config.default_model.as_str(),
        );
        self.info_payload(id, default, &levels)
    }

    /// Sets the thinking level, if the current model takes it; else the seed's error text.
    pub fn set_thinking(
        &mut self,
        level: &str,
        config: &Config,
        catalog: &Catalog,
    ) -> Result<(), String> {
        let levels = self.available_levels(config, catalog);
        match ThinkingLevel::parse(level).filter(|l| levels.contains(l)) {
            Some(parsed) => {
                self.thinking_level = Some(parsed);
                Ok(())
            }
            None => Err(thinking_levels_error(level, &levels)),
        }
    }

    /// Sets (`Some`) or clears (`None`) the `/model` override. A model on a provider that is not
    /// configured is refused, naming the ones that are; the thinking level is clamped to what
    /// the new model takes.
    pub fn set_model_override(
        &mut self,
        spec: Option<&str>,
        config: &Config,
        catalog: &Catalog,
    ) -> Result<(), String> {
        let Some(spec) = spec else {
            self.model_override = None;
            return Ok(());
        };
        let (provider, id) = selection::resolve_model(spec, None, catalog, config);
        if config.provider(&provider).is_none() {
            let configured: Vec<&str> = config.providers.iter().map(|p| p.name).collect();
            return Err(format!(
                "provider \"{provider}\" is not configured; configured: {}",
                configured.join(", ")
            ));
        }
        self.model_override = Some(format!("{provider}/{id}"));
        self.use_model(&provider, &id);
        self.routing_decision = None;
        let levels = catalog::thinking_levels_for(catalog.lookup(Some(&provider), &id), &id);
        self.clamp_thinking(&levels);
        Ok(())
    }

    /// Records a turn moving to another model after its provider failed.
    pub fn fall_over(&mut self, decision: RoutingDecision) {
        self.use_model(&decision.provider, &decision.model);
        self.routing_decision = Some(decision);
    }
}

/// The seed's error text for a thinking level the session's model does not take.
pub fn thinking_levels_error(level: &str, levels: &[ThinkingLevel]) -> String {
    let names: Vec<&str> = levels.iter().map(|l| l.as_str()).collect();
    format!(
        "Invalid thinking level \"{level}\". Available: {}",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RoutingRule;
    use serde_json::json;
    use std::collections::HashMap;

    fn config() -> Config {
        let vars: HashMap<&str, &str> = [
            ("OPENAI_BASE_URL", "http://127.0.0.1:1/v1"),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:1"),
            ("DEFAULT_MODEL", "openai/gpt-4o-mini"),
        ]
        .into();
        Config::from_lookup(|k| vars.get(k).map(|v| v.to_string())).unwrap()
    }

    fn config_without_anthropic() -> Config {
        let vars: HashMap<&str, &str> = [
            ("OPENAI_BASE_URL", "http://127.0.0.1:1/v1"),
            ("DEFAULT_MODEL", "openai/gpt-4o-mini"),
        ]
        .into();
        Config::from_lookup(|k| vars.get(k).map(|v| v.to_string())).unwrap()
    }

    fn message(content: &str) -> MessageEvent {
        MessageEvent {
            conversation_id: None,
            content: content.into(),
            provider: None,
            model_id: None,
            agent_id: None,
            client_message_id: None,
        }
    }

    fn agent(value: serde_json::Value) -> (String, AgentConfig) {
        let a: AgentConfig = serde_json::from_value(value).unwrap();
        (a.name.clone(), a)
    }

    struct World {
        catalog: Catalog,
        rules: CompiledRules,
        agents: Vec<(String, AgentConfig)>,
        config: Config,
    }

    impl World {
        fn new(rules: Vec<RoutingRule>, agents: Vec<(String, AgentConfig)>) -> World {
            World {
                catalog: Catalog::builtin(),
                rules: CompiledRules::compile(rules),
                agents,
                config: config(),
            }
        }

        fn operator(&self) -> Operator<'_> {
            Operator {
                catalog: &self.catalog,
                rules: &self.rules,
                agents: &self.agents,
            }
        }

        fn plan(
            &self,
            session: &mut SessionState,
            history: &mut Vec<ChatMessage>,
            m: &MessageEvent,
            user: &str,
        ) -> TurnPlan {
            plan_turn(session, history, m, user, self.operator(), &self.config)
        }
    }

    #[test]
    fn a_plain_turn_runs_on_the_default_with_history_then_the_message() {
        let w = World::new(Vec::new(), Vec::new());
        let mut session = SessionState::default();
        let mut history = vec![ChatMessage::User {
            content: "earlier".into(),
        }];
        let plan = w.plan(&mut session, &mut history, &message("now"), "alice");
        assert_eq!(plan.candidates.len(), 1);
        assert_eq!(plan.candidates[0].model, "gpt-4o-mini");
        assert_eq!(session.model_id.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(plan.base.len(), 2);
        assert_eq!(history.len(), 2, "the user message joins the history");
        assert!(plan.tools.is_empty() && plan.missing_agent.is_none());
    }

    #[test]
    fn an_agent_gives_its_prompt_tools_model_and_thinking_level() {
        let w = World::new(
            Vec::new(),
            vec![agent(json!({
                "name": "helper", "systemPrompt": "be brief", "model": "anthropic/claude-sonnet-4-5",
                "thinkingLevel": "high", "public": true,
                "tools": [{ "name": "lookup", "description": "d", "url": "http://127.0.0.1:1/t", "parameters": { "type": "object" } }]
            }))],
        );
        let mut session = SessionState::default();
        let mut m = message("hi");
        m.agent_id = Some("helper".into());
        let plan = w.plan(&mut session, &mut Vec::new(), &m, "alice");
        assert!(matches!(&plan.base[0], ChatMessage::System { content } if content == "be brief"));
        assert_eq!(plan.tools[0].name, "lookup");
        assert_eq!(plan.candidates[0].provider, "anthropic");
        assert_eq!(session.agent.as_deref(), Some("helper"));
        assert_eq!(session.thinking(), ThinkingLevel::High);
    }

    #[test]
    fn a_continuation_keeps_the_interrupted_model_and_adds_nothing_to_the_history() {
        let w = World::new(
            Vec::new(),
            vec![agent(
                json!({ "name": "helper", "systemPrompt": "be brief", "public": true }),
            )],
        );
        let mut session = SessionState {
            agent: Some("helper".into()),
            ..SessionState::default()
        };
        let history = vec![
            ChatMessage::User {
                content: "tell me".into(),
            },
            ChatMessage::Assistant {
                content: "Once".into(),
                thinking: None,
                tool_calls: Vec::new(),
            },
        ];
        let target = |provider: &str| Target {
            provider: provider.into(),
            model: "claude-sonnet-4-5".into(),
        };
        let plan = plan_continuation(
            &mut session,
            &history,
            "alice",
            w.operator(),
            &w.config,
            target("anthropic"),
        );
        assert_eq!(plan.candidates.len(), 1);
        assert_eq!(plan.candidates[0].rule_name, "resume");
        assert_eq!(session.provider.as_deref(), Some("anthropic"));
        assert_eq!(plan.base.len(), 3, "the prompt, then the history as it is");
        assert_eq!(plan.base[2], history[1]);

        // The provider is gone from the configuration: nothing to continue with.
        let gone = plan_continuation(
            &mut session,
            &history,
            "alice",
            w.operator(),
            &w.config,
            target("mistral"),
        );
        assert!(gone.candidates.is_empty());
    }

    #[test]
    fn an_agent_the_user_may_not_run_is_dropped_from_the_session_and_reported() {
        let w = World::new(
            Vec::new(),
            vec![agent(json!({ "name": "private", "users": ["bob"] }))],
        );
        let mut session = SessionState {
            agent: Some("private".into()),
            ..SessionState::default()
        };
        let plan = w.plan(&mut session, &mut Vec::new(), &message("hi"), "alice");
        assert_eq!(plan.missing_agent.as_deref(), Some("private"));
        assert!(plan.agent.is_none() && session.agent.is_none());
        assert_eq!(
            unknown_agent_message("private", &w.agents, "alice"),
            "Unknown agent \"private\". Available: none"
        );
    }

    #[test]
    fn routing_rules_order_the_candidates_and_drop_unconfigured_providers() {
        let rules: Vec<RoutingRule> = serde_json::from_value(json!([
            { "name": "code", "priority": 1, "conditions": { "keywords": ["code"] },
              "provider": "anthropic", "model": "claude-sonnet-4-5" },
            { "name": "elsewhere", "priority": 2, "provider": "mistral", "model": "large" },
            { "name": "bigger", "priority": 3, "provider": "openai", "model": "gpt-4o" }
        ]))
        .unwrap();
        let w = World::new(rules, Vec::new());
        let mut session = SessionState::default();
        let plan = w.plan(
            &mut session,
            &mut Vec::new(),
            &message("write code"),
            "alice",
        );
        let models: Vec<&str> = plan.candidates.iter().map(|c| c.model.as_str()).collect();
        assert_eq!(models, ["claude-sonnet-4-5", "gpt-4o", "gpt-4o-mini"]);
        assert_eq!(session.routing_decision.as_ref().unwrap().rule_name, "code");
    }

    #[test]
    fn the_model_override_wins_and_is_refused_on_an_unconfigured_provider() {
        let w = World::new(Vec::new(), Vec::new());
        let mut session = SessionState {
            thinking_level: Some(ThinkingLevel::High),
            ..SessionState::default()
        };
        let refused = session.set_model_override(
            Some("anthropic/claude-sonnet-4-5"),
            &config_without_anthropic(),
            &w.catalog,
        );
        assert_eq!(
            refused.unwrap_err(),
            "provider \"anthropic\" is not configured; configured: openai, echo"
        );
        session
            .set_model_override(Some("gpt-4o-mini"), &w.config, &w.catalog)
            .unwrap();
        assert_eq!(
            session.model_override.as_deref(),
            Some("openai/gpt-4o-mini")
        );
        // gpt-4o-mini takes no thinking: the level is clamped.
        assert_eq!(session.thinking(), ThinkingLevel::Off);
        let mut m = message("hi");
        m.model_id = Some("claude-sonnet-4-5".into());
        let plan = w.plan(&mut session, &mut Vec::new(), &m, "alice");
        assert_eq!(plan.candidates[0].rule_name, "override");
        session
            .set_model_override(None, &w.config, &w.catalog)
            .unwrap();
        assert!(session.model_override.is_none());
    }

    #[test]
    fn thinking_levels_are_checked_against_the_current_model() {
        let w = World::new(Vec::new(), Vec::new());
        let mut session = SessionState::default();
        let e = session
            .set_thinking("high", &w.config, &w.catalog)
            .unwrap_err();
        assert!(e.starts_with("Invalid thinking level \"high\". Available: off"));
        session.use_model("anthropic", "claude-sonnet-4-5");
        session.set_thinking("high", &w.config, &w.catalog).unwrap();
        let info: serde_json::Value =
            serde_json::from_str(&session.info("c1", &w.config, &w.catalog)).unwrap();
        assert_eq!(info["thinkingLevel"], "high");
        assert_eq!(info["provider"], "anthropic");
    }

    #[test]
    fn fallover_records_the_new_model_and_why() {
        let mut session = SessionState::default();
        session.use_model("openai", "a");
        session.fall_over(RoutingDecision {
            provider: "anthropic".into(),
            model: "b".into(),
            rule_name: "r".into(),
            reason: "fallover: openai upstream_error 500".into(),
        });
        assert_eq!(
            session.current_model(&config()),
            ("anthropic".into(), "b".into())
        );
        assert_eq!(session.metrics.model_switches, 1);
        assert!(session
            .routing_decision
            .unwrap()
            .reason
            .starts_with("fallover"));
    }

    #[test]
    fn a_parked_turn_goes_on_with_the_agents_prompt_and_the_stored_history_while_the_user_may_run_it(
    ) {
        let ops = agent(json!({"name": "ops", "systemPrompt": "Be careful.", "users": ["alice"]}));
        let mut w = World::new(Vec::new(), vec![ops]);
        let mut session = SessionState {
            agent: Some("ops".into()),
            ..SessionState::default()
        };
        let history = vec![ChatMessage::User {
            content: "deploy it".into(),
        }];
        let (agent, base) = resumed_context(&mut session, &history, "alice", w.operator());
        assert_eq!(agent.map(|a| a.name), Some("ops".into()));
        assert_eq!(
            base,
            vec![
                ChatMessage::System {
                    content: "Be careful.".into()
                },
                history[0].clone()
            ]
        );
        // Made private to someone else while the call waited: the turn goes on without it.
        w.agents = vec![agent_json_private()];
        let (agent, base) = resumed_context(&mut session, &history, "alice", w.operator());
        assert!(agent.is_none());
        assert_eq!(base, history);
        assert_eq!(session.agent, None);
    }

    fn agent_json_private() -> (String, AgentConfig) {
        agent(json!({"name": "ops", "systemPrompt": "Be careful.", "users": ["bob"]}))
    }
}
