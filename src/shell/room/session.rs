//! Session commands: session:info, thinking level, the /model override and the slash commands.

use super::*;

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
                return json!({ "conversationId": id, "command": name, "success": false, "message": message });
            }
        };
        let name = parsed.name();
        let (success, message, data) = match parsed {
            Command::Help => (true, commands::help_text(), Value::Null),
            Command::New => {
                let fresh = new_id();
                (
                    true,
                    format!("New conversation {fresh}: open a socket with conversationId={fresh}"),
                    json!({ "conversationId": fresh }),
                )
            }
            Command::ShowModel => {
                let (p, m) = self.current_model();
                let over = self.room.borrow().session.model_override.clone();
                let how = match &over {
                    Some(o) => format!("override {o}"),
                    None => "routing decides".into(),
                };
                (
                    true,
                    format!("Model: {p}/{m} ({how})"),
                    json!({ "provider": p, "modelId": m, "override": over }),
                )
            }
            Command::SetModel(spec) => match self.set_model_override(Some(spec)).await {
                Ok(info) => {
                    let (p, m) = self.current_model();
                    (true, format!("Model set to {p}/{m} for this conversation; routing is bypassed until /model clear"), serde_json::from_str(&info).unwrap_or(Value::Null))
                }
                Err(e) => (false, e, Value::Null),
            },
            Command::ClearModel => match self.set_model_override(None).await {
                Ok(info) => (
                    true,
                    "Model override cleared; routing decides again".into(),
                    serde_json::from_str(&info).unwrap_or(Value::Null),
                ),
                Err(e) => (false, e, Value::Null),
            },
            Command::SetThinking(level) => match self.set_thinking(level.as_str()).await {
                Ok(()) => (
                    true,
                    format!("Thinking level set to {}", level.as_str()),
                    json!({ "thinkingLevel": level.as_str() }),
                ),
                Err(e) => (false, e, Value::Null),
            },
            Command::ShowAgent => {
                let agent = self.room.borrow().session.agent.clone();
                let msg = agent
                    .as_ref()
                    .map(|a| format!("Agent: {a}"))
                    .unwrap_or_else(|| "No agent is active".into());
                (true, msg, json!({ "agentName": agent }))
            }
            Command::SetAgent(name) => {
                let operator = self.operator().await;
                match crate::agents::find_for(&operator.agents, &name, user) {
                    Some(a) => {
                        self.room.borrow_mut().session.agent = Some(a.name.clone());
                        self.save_session().await;
                        self.broadcast("session:info", self.session_info(&operator.catalog));
                        (
                            true,
                            format!("Agent set to {}", a.name),
                            json!({ "agentName": a.name }),
                        )
                    }
                    None => (
                        false,
                        super::turn::unknown_agent_message(&name, &operator.agents, user),
                        json!({ "code": ErrorCode::UnknownAgent.as_str() }),
                    ),
                }
            }
            Command::ClearAgent => {
                self.room.borrow_mut().session.agent = None;
                self.save_session().await;
                let catalog = &self.operator().await.catalog;
                self.broadcast("session:info", self.session_info(catalog));
                (true, "Agent cleared".into(), Value::Null)
            }
            Command::Status => {
                let (msg, data) = self.room.borrow().session.status_report();
                (true, msg, data)
            }
        };
        let mut result = json!({ "conversationId": id, "command": name, "success": success, "message": message });
        if !data.is_null() {
            result["data"] = data;
        }
        result
    }
}
