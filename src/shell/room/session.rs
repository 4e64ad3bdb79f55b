//! Session commands: session:info, thinking level, the /model override and the slash commands.

use super::*;
use crate::commands::CommandStep;

impl ConversationObject {
    pub(super) fn session_info(&self, catalog: &Catalog) -> String {
        let Ok(config) = self.config.as_ref() else {
            return "{}".into();
        };
        let room = self.room.borrow();
        room.session.info(&room.id, config, catalog)
    }

    /// The seed's error text for a level the session does not take.
    async fn thinking_levels_error(&self, level: &str) -> String {
        let Ok(config) = self.config() else {
            return format!("Invalid thinking level \"{level}\"");
        };
        let operator = self.operator().await;
        let levels = self
            .room
            .borrow()
            .session
            .available_levels(&config, &operator.catalog);
        plan::thinking_levels_error(level, &levels)
    }

    pub(super) async fn set_thinking(&self, level: &str) -> std::result::Result<(), String> {
        let config = self.config().map_err(|e| e.to_string())?;
        let operator = self.operator().await;
        let catalog = &operator.catalog;
        self.room
            .borrow_mut()
            .session
            .set_thinking(level, &config, catalog)?;
        self.save_session().await;
        self.broadcast("session:info", self.session_info(catalog));
        Ok(())
    }

    /// Sets (`Some`) or clears (`None`) the `/model` override; every socket gets `session:info`.
    pub(super) async fn set_model_override(
        &self,
        model: Option<String>,
    ) -> std::result::Result<String, String> {
        let config = self.config().map_err(|e| e.to_string())?;
        let operator = self.operator().await;
        let catalog = &operator.catalog;
        self.room
            .borrow_mut()
            .session
            .set_model_override(model.as_deref(), &config, catalog)?;
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
        let Ok(config) = self.config() else {
            let reply = commands::CommandReply::failed("the gateway is misconfigured", Value::Null);
            return commands::result_payload(&id, name, reply);
        };
        let (provider, model) = self.room.borrow().session.current_model(&config);
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
                let (provider, model) = self.room.borrow().session.current_model(&config);
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
            None => Err(plan::unknown_agent_message(name, &operator.agents, user)),
        }
    }
}
