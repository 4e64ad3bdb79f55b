//! Session commands: session:info, thinking level, the /model override and the slash commands.

use super::*;
use crate::commands::CommandStep;

impl ConversationObject {
    pub(super) fn session_info(&self, catalog: &Catalog) -> String {
        let config = self.config.as_ref().ok();
        let default = config
            .map(|c| (c.default_provider.clone(), c.default_model.clone()))
            .unwrap_or_else(|| ("echo".into(), "echo".into()));
        let room = self.room.borrow();
        let provider = room.session.provider.clone().unwrap_or(default.0.clone());
        let model = room.session.model_id.clone().unwrap_or(default.1.clone());
        let levels = catalog::thinking_levels_for(catalog.lookup(Some(&provider), &model));
        room.session
            .info_payload(&room.id, (&default.0, &default.1), &levels)
    }

    /// The thinking levels the session's current model takes.
    pub(super) fn available_levels(&self, catalog: &Catalog) -> Vec<ThinkingLevel> {
        let (provider, model) = self.current_model();
        catalog::thinking_levels_for(catalog.lookup(Some(&provider), &model))
    }

    /// The seed's error text for a level the session does not take.
    pub(super) async fn thinking_levels_error(&self, level: &str) -> String {
        let levels = self.available_levels(&self.operator().await.catalog);
        let names: Vec<&str> = levels.iter().map(|l| l.as_str()).collect();
        format!(
            "Invalid thinking level \"{level}\". Available: {}",
            names.join(", ")
        )
    }

    pub(super) async fn set_thinking(&self, level: &str) -> std::result::Result<(), String> {
        let operator = self.operator().await;
        let catalog = &operator.catalog;
        let levels = self.available_levels(catalog);
        let Some(parsed) = ThinkingLevel::parse(level).filter(|l| levels.contains(l)) else {
            return Err(self.thinking_levels_error(level).await);
        };
        self.room.borrow_mut().session.thinking_level = Some(parsed);
        self.save_session().await;
        self.broadcast("session:info", self.session_info(catalog));
        Ok(())
    }

    pub(super) fn current_model(&self) -> (String, String) {
        let room = self.room.borrow();
        let config = self.config.as_ref().ok();
        let provider = room
            .session
            .provider
            .clone()
            .or_else(|| config.map(|c| c.default_provider.clone()))
            .unwrap_or_else(|| "echo".into());
        let model = room
            .session
            .model_id
            .clone()
            .or_else(|| config.map(|c| c.default_model.clone()))
            .unwrap_or_else(|| "echo".into());
        (provider, model)
    }

    /// Sets (`Some`) or clears (`None`) the `/model` override; every socket gets `session:info`.
    pub(super) async fn set_model_override(
        &self,
        model: Option<String>,
    ) -> std::result::Result<String, String> {
        let config = self.config().map_err(|e| e.to_string())?;
        let operator = self.operator().await;
        let catalog = &operator.catalog;
        match &model {
            Some(spec) => {
                let (provider, id) = selection::resolve_model(spec, None, catalog, &config);
                if config.provider(&provider).is_none() {
                    return Err(format!(
                        "provider \"{provider}\" is not configured; configured: {}",
                        config
                            .providers
                            .iter()
                            .map(|p| p.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                let mut room = self.room.borrow_mut();
                room.session.model_override = Some(format!("{provider}/{id}"));
                room.session.use_model(&provider, &id);
                room.session.routing_decision = None;
                let levels = catalog::thinking_levels_for(catalog.lookup(Some(&provider), &id));
                room.session.clamp_thinking(&levels);
            }
            None => {
                self.room.borrow_mut().session.model_override = None;
            }
        }
        self.save_session().await;
        let info = self.session_info(catalog);
        self.broadcast("session:info", info.clone());
        Ok(info)
    }

    pub(super) async fn execute_command(
        &self,
        command: &str,
        args: Option<&Value>,
        user: &str,
    ) -> Value {
        let id = self.room.borrow().id.clone();
        let parsed = match commands::parse(command, args) {
            Ok(c) => c,
            Err(e) => {
                let message = match e {
                    // The levels this session's model takes, as set:thinking says them.
                    commands::CommandError::InvalidThinkingLevel { value } => {
                        self.thinking_levels_error(&value).await
                    }
                    e => e.to_string(),
                };
                let name = commands::canonical_name(command).unwrap_or(command);
                let reply = commands::CommandReply::failed(message, Value::Null);
                return commands::result_payload(&id, name, reply);
            }
        };
        let name = parsed.name();
        let (provider, model) = self.current_model();
        let (model_override, agent) = {
            let room = self.room.borrow();
            (
                room.session.model_override.clone(),
                room.session.agent.clone(),
            )
        };
        let view = commands::SessionView {
            provider: &provider,
            model: &model,
            model_override: model_override.as_deref(),
            agent: agent.as_deref(),
        };
        let info = |r: std::result::Result<String, String>| {
            r.map(|info| serde_json::from_str(&info).unwrap_or(Value::Null))
        };
        let reply = match commands::run(parsed, view, &new_id()) {
            CommandStep::Reply(reply) => reply,
            CommandStep::Status => {
                let (message, data) = self.room.borrow().session.status_report();
                commands::CommandReply {
                    success: true,
                    message,
                    data,
                }
            }
            CommandStep::SetModel(spec) => {
                let result = info(self.set_model_override(Some(spec)).await);
                let (provider, model) = self.current_model();
                let after = commands::SessionView {
                    provider: &provider,
                    model: &model,
                    ..view
                };
                commands::after_set_model(result, after)
            }
            CommandStep::ClearModel => {
                commands::after_clear_model(info(self.set_model_override(None).await))
            }
            CommandStep::SetThinking(level) => {
                commands::after_set_thinking(self.set_thinking(level.as_str()).await, level)
            }
            CommandStep::SetAgent(name) => {
                let result = self.set_agent(&name, user).await;
                commands::after_set_agent(result, ErrorCode::UnknownAgent.as_str())
            }
            CommandStep::ClearAgent => {
                self.room.borrow_mut().session.agent = None;
                self.save_session().await;
                let catalog = &self.operator().await.catalog;
                self.broadcast("session:info", self.session_info(catalog));
                commands::after_clear_agent()
            }
        };
        commands::result_payload(&id, name, reply)
    }

    /// Switches to the agent `name`, if `user` may run it; answers its name or the refusal.
    async fn set_agent(&self, name: &str, user: &str) -> std::result::Result<String, String> {
        let operator = self.operator().await;
        match crate::agents::find_for(&operator.agents, name, user) {
            Some(a) => {
                self.room.borrow_mut().session.agent = Some(a.name.clone());
                self.save_session().await;
                self.broadcast("session:info", self.session_info(&operator.catalog));
                Ok(a.name.clone())
            }
            None => Err(super::turn::unknown_agent_message(
                name,
                &operator.agents,
                user,
            )),
        }
    }
}
