//! Slash commands: the registry behind `commands:manifest` and `/help`, and a parser that turns `command:execute` input into a [`Command`] or an error that says what would work.

use std::fmt;

use serde_json::{json, Value};

use crate::llm::ThinkingLevel;

/// Version of the manifest's shape; bumped when a client would have to change to read it.
pub const MANIFEST_VERSION: u32 = 1;

/// Longest model id `/model` accepts, in characters.
pub const MAX_MODEL_ID_CHARS: usize = 200;

/// Longest agent name `/agent` accepts, in characters.
pub const MAX_AGENT_NAME_CHARS: usize = 200;

/// Longest echo of user input inside an error message, so a 64 KB "command" does not come back whole.
const MAX_ECHO_CHARS: usize = 40;

/// The word that clears an override in `/model clear` and `/agent clear`.
const CLEAR: &str = "clear";

/// A parsed slash command, ready to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/model`: show the conversation's model.
    ShowModel,
    /// `/model <id>`: override the model (the id may be `provider/id`).
    SetModel(String),
    /// `/model clear`: drop the override and return to routing.
    ClearModel,
    /// `/thinking <level>`.
    SetThinking(ThinkingLevel),
    /// `/agent`: show the conversation's agent.
    ShowAgent,
    /// `/agent <name>`: switch agent (names may contain spaces).
    SetAgent(String),
    /// `/agent clear`: run without a named agent.
    ClearAgent,
    /// `/status`: provider, model, thinking level, agent.
    Status,
    /// `/new`: start a new conversation.
    New,
    /// `/help`: list the commands.
    Help,
}

impl Command {
    /// Canonical name of the command (without `/`), for `command:result.command`.
    pub fn name(&self) -> &'static str {
        match self {
            Command::ShowModel | Command::SetModel(_) | Command::ClearModel => "model",
            Command::SetThinking(_) => "thinking",
            Command::ShowAgent | Command::SetAgent(_) | Command::ClearAgent => "agent",
            Command::Status => "status",
            Command::New => "new",
            Command::Help => "help",
        }
    }
}

/// Which command a [`CommandSpec`] describes; private so the parser's match stays exhaustive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Model,
    Thinking,
    Agent,
    Status,
    New,
    Help,
}

/// Where an argument's allowed values come from, filled in when the manifest is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgValues {
    /// Free text.
    Any,
    /// The catalog's model ids, plus `clear`.
    Models,
    /// The thinking levels.
    ThinkingLevels,
}

/// One argument of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgSpec {
    /// Placeholder name, as in `<level>`.
    pub name: &'static str,
    /// What it means.
    pub description: &'static str,
    /// Whether the command fails without it.
    pub required: bool,
    /// Its allowed values, if it has a fixed set.
    pub values: ArgValues,
}

/// One command as the manifest and `/help` describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// Name without `/`.
    pub name: &'static str,
    /// One sentence on what it does.
    pub description: &'static str,
    /// Argument syntax after the name, as `/help` shows it.
    pub usage: &'static str,
    /// Other names, without `/`.
    pub aliases: &'static [&'static str],
    /// Its arguments.
    pub args: &'static [ArgSpec],
    /// Whether only an admin may run it (none of today's commands).
    pub admin_only: bool,
    kind: Kind,
}

/// Every command, in the order `/help` and the manifest list them.
pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "model",
        description: "Show the model, switch to another, or clear the override and return to automatic routing.",
        usage: "[<id>|clear]",
        aliases: &["m"],
        args: &[ArgSpec {
            name: "model",
            description: "Model id or provider/id; \"clear\" removes the override.",
            required: false,
            values: ArgValues::Models,
        }],
        admin_only: false,
        kind: Kind::Model,
    },
    CommandSpec {
        name: "thinking",
        description: "Set the reasoning effort of the model.",
        usage: "<level>",
        aliases: &["think"],
        args: &[ArgSpec {
            name: "level",
            description: "Thinking level.",
            required: true,
            values: ArgValues::ThinkingLevels,
        }],
        admin_only: false,
        kind: Kind::Thinking,
    },
    CommandSpec {
        name: "agent",
        description: "Show the agent, switch to another, or clear it.",
        usage: "[<name>|clear]",
        aliases: &[],
        args: &[ArgSpec {
            name: "name",
            description: "Agent name (may contain spaces); \"clear\" runs without an agent.",
            required: false,
            values: ArgValues::Any,
        }],
        admin_only: false,
        kind: Kind::Agent,
    },
    CommandSpec {
        name: "status",
        description: "Show the provider, model, thinking level and agent of this conversation.",
        usage: "",
        aliases: &["s"],
        args: &[],
        admin_only: false,
        kind: Kind::Status,
    },
    CommandSpec {
        name: "new",
        description: "Start a new conversation.",
        usage: "",
        aliases: &[],
        args: &[],
        admin_only: false,
        kind: Kind::New,
    },
    CommandSpec {
        name: "help",
        description: "List the commands and their arguments.",
        usage: "",
        aliases: &["h", "?"],
        args: &[],
        admin_only: false,
        kind: Kind::Help,
    },
];

/// Why a command could not be parsed; each message says what would work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// The command string was empty or only `/`.
    Empty,
    /// No command or alias has this name (shortened for echoing).
    Unknown {
        /// The name as typed, without `/`.
        name: String,
    },
    /// A required argument is missing.
    MissingArgument {
        /// Canonical command name.
        command: &'static str,
        /// The argument's placeholder name.
        arg: &'static str,
    },
    /// More arguments than the command takes.
    TooManyArguments {
        /// Canonical command name.
        command: &'static str,
        /// Most arguments it takes.
        max: usize,
        /// How many were given.
        got: usize,
    },
    /// Not one of the thinking levels (shortened for echoing).
    InvalidThinkingLevel {
        /// The level as typed.
        value: String,
    },
    /// A model id longer than [`MAX_MODEL_ID_CHARS`].
    ModelIdTooLong {
        /// Its length in characters.
        chars: usize,
    },
    /// A model id with whitespace or control characters (shortened for echoing).
    InvalidModelId {
        /// The id as given.
        value: String,
    },
    /// An agent name longer than [`MAX_AGENT_NAME_CHARS`].
    AgentNameTooLong {
        /// Its length in characters.
        chars: usize,
    },
    /// An agent name with control characters (shortened for echoing).
    InvalidAgentName {
        /// The name as given.
        value: String,
    },
    /// `args` was neither a string, an array of strings nor null.
    InvalidArgs {
        /// What it was instead (`a number`, `an object`, ...).
        found: &'static str,
    },
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Empty => write!(f, "No command given. Available: {}", available()),
            CommandError::Unknown { name } => {
                write!(f, "Unknown command \"/{name}\". Available: {}", available())
            }
            CommandError::MissingArgument { command, arg } => {
                write!(f, "Missing argument <{arg}> for /{command}. Usage: {}", usage_of(command))?;
                if *command == "thinking" {
                    write!(f, ". Available: {}", levels())?;
                }
                Ok(())
            }
            CommandError::TooManyArguments { command, max, got } => {
                let takes = match max {
                    0 => "no arguments".to_string(),
                    1 => "at most 1 argument".to_string(),
                    n => format!("at most {n} arguments"),
                };
                write!(
                    f,
                    "Too many arguments for /{command}: it takes {takes}, got {got}. Usage: {}",
                    usage_of(command)
                )
            }
            CommandError::InvalidThinkingLevel { value } => write!(
                f,
                "Invalid thinking level \"{value}\". Available: {}",
                levels()
            ),
            CommandError::ModelIdTooLong { chars } => write!(
                f,
                "Model id is {chars} characters long; at most {MAX_MODEL_ID_CHARS} are allowed"
            ),
            CommandError::InvalidModelId { value } => write!(
                f,
                "Invalid model id \"{value}\": it must not contain whitespace or control characters. Usage: {}",
                usage_of("model")
            ),
            CommandError::AgentNameTooLong { chars } => write!(
                f,
                "Agent name is {chars} characters long; at most {MAX_AGENT_NAME_CHARS} are allowed"
            ),
            CommandError::InvalidAgentName { value } => write!(
                f,
                "Invalid agent name \"{value}\": it must not contain control characters"
            ),
            CommandError::InvalidArgs { found } => write!(
                f,
                "Command arguments must be a string, an array of strings or null; got {found}"
            ),
        }
    }
}

impl std::error::Error for CommandError {}

/// `/model, /thinking, ...` for error messages.
fn available() -> String {
    COMMANDS
        .iter()
        .map(|c| format!("/{}", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `off, minimal, low, medium, high, xhigh`.
fn levels() -> String {
    ThinkingLevel::ALL
        .iter()
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `/name usage`, e.g. `/model [<id>|clear]`.
fn usage_of(name: &str) -> String {
    match COMMANDS.iter().find(|c| c.name == name) {
        Some(c) if !c.usage.is_empty() => format!("/{} {}", c.name, c.usage),
        _ => format!("/{name}"),
    }
}

/// User input as it may be echoed in an error: bounded, control characters made visible.
fn echo(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_ECHO_CHARS)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if s.chars().nth(MAX_ECHO_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Finds a command by name or alias, ignoring ASCII case.
fn find(word: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| {
        c.name.eq_ignore_ascii_case(word) || c.aliases.iter().any(|a| a.eq_ignore_ascii_case(word))
    })
}

/// How a JSON value is named in [`CommandError::InvalidArgs`].
fn json_kind(v: &Value, in_array: bool) -> &'static str {
    match (v, in_array) {
        (Value::Null, false) => "null",
        (Value::Bool(_), false) => "a boolean",
        (Value::Number(_), false) => "a number",
        (Value::String(_), false) => "a string",
        (Value::Array(_), false) => "an array",
        (Value::Object(_), false) => "an object",
        (Value::Null, true) => "an array holding null",
        (Value::Bool(_), true) => "an array holding a boolean",
        (Value::Number(_), true) => "an array holding a number",
        (Value::String(_), true) => "an array holding a string",
        (Value::Array(_), true) => "an array holding an array",
        (Value::Object(_), true) => "an array holding an object",
    }
}

/// The client's `args` as words: a string splits on whitespace, an array's strings are taken
/// whole (trimmed, blank ones dropped), null or absent is none.
fn client_args(args: Option<&Value>) -> Result<Vec<String>, CommandError> {
    match args {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.split_whitespace().map(str::to_string).collect()),
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let Value::String(s) = item else {
                    return Err(CommandError::InvalidArgs {
                        found: json_kind(item, true),
                    });
                };
                let s = s.trim();
                if !s.is_empty() {
                    out.push(s.to_string());
                }
            }
            Ok(out)
        }
        Some(other) => Err(CommandError::InvalidArgs {
            found: json_kind(other, false),
        }),
    }
}

/// The canonical name (`model`, `thinking`, ...) of a command line, when its first word names a command.
pub fn canonical_name(command: &str) -> Option<&'static str> {
    let line = command.trim();
    let word = line
        .strip_prefix('/')
        .unwrap_or(line)
        .split_whitespace()
        .next()?;
    find(word).map(|spec| spec.name)
}

/// Parses `command:execute` input.
///
/// `command` may start with `/` or not, is matched ignoring ASCII case, may be an alias, and may
/// carry its arguments (`"/model gpt-4o"`); `args` from the client (a string, an array of
/// strings, or null/absent) are appended to those. Never panics, whatever the input.
pub fn parse(command: &str, args: Option<&Value>) -> Result<Command, CommandError> {
    let line = command.trim();
    let line = line.strip_prefix('/').unwrap_or(line);
    let mut words = line.split_whitespace();
    let Some(word) = words.next() else {
        return Err(CommandError::Empty);
    };
    let spec = find(word).ok_or_else(|| CommandError::Unknown { name: echo(word) })?;
    let mut argv: Vec<String> = words.map(str::to_string).collect();
    argv.extend(client_args(args)?);

    let too_many = |max: usize| CommandError::TooManyArguments {
        command: spec.name,
        max,
        got: argv.len(),
    };
    match spec.kind {
        Kind::Model => match argv.as_slice() {
            [] => Ok(Command::ShowModel),
            [arg] if arg.eq_ignore_ascii_case(CLEAR) => Ok(Command::ClearModel),
            [id] => validate_model_id(id).map(|()| Command::SetModel(id.clone())),
            _ => Err(too_many(1)),
        },
        Kind::Thinking => match argv.as_slice() {
            [] => Err(CommandError::MissingArgument {
                command: spec.name,
                arg: "level",
            }),
            [level] => ThinkingLevel::parse(&level.to_ascii_lowercase())
                .map(Command::SetThinking)
                .ok_or_else(|| CommandError::InvalidThinkingLevel { value: echo(level) }),
            _ => Err(too_many(1)),
        },
        Kind::Agent => match argv.as_slice() {
            [] => Ok(Command::ShowAgent),
            [arg] if arg.eq_ignore_ascii_case(CLEAR) => Ok(Command::ClearAgent),
            // Agent names may contain spaces: the rest of the line is the name.
            words => {
                let name = words.join(" ");
                validate_agent_name(&name).map(|()| Command::SetAgent(name))
            }
        },
        Kind::Status | Kind::New | Kind::Help if !argv.is_empty() => Err(too_many(0)),
        Kind::Status => Ok(Command::Status),
        Kind::New => Ok(Command::New),
        Kind::Help => Ok(Command::Help),
    }
}

/// A model id goes upstream in a JSON body and into storage: bounded, one word, printable.
fn validate_model_id(id: &str) -> Result<(), CommandError> {
    let chars = id.chars().count();
    if chars > MAX_MODEL_ID_CHARS {
        return Err(CommandError::ModelIdTooLong { chars });
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(CommandError::InvalidModelId { value: echo(id) });
    }
    Ok(())
}

/// An agent name is shown to every client of the conversation: bounded and printable.
fn validate_agent_name(name: &str) -> Result<(), CommandError> {
    let chars = name.chars().count();
    if chars > MAX_AGENT_NAME_CHARS {
        return Err(CommandError::AgentNameTooLong { chars });
    }
    if name.chars().any(char::is_control) {
        return Err(CommandError::InvalidAgentName { value: echo(name) });
    }
    Ok(())
}

/// The manifest object sent on connect as `commands:manifest`'s `manifest` field:
/// `{version, commands: [{name, description, aliases, args: [{name, description, required, values?}], adminOnly}]}`.
///
/// `models` are the names `/model` offers (the catalog's ids); `clear` is appended so a client
/// that checks input against `values` still lets `/model clear` through. Names carry no `/`.
pub fn manifest(models: &[String]) -> Value {
    let levels: Vec<&str> = ThinkingLevel::ALL.iter().map(|l| l.as_str()).collect();
    let commands: Vec<Value> = COMMANDS
        .iter()
        .map(|c| {
            let args: Vec<Value> = c
                .args
                .iter()
                .map(|a| {
                    let mut arg = json!({
                        "name": a.name,
                        "description": a.description,
                        "required": a.required,
                    });
                    let values = match a.values {
                        ArgValues::Any => None,
                        ArgValues::Models => {
                            let mut v: Vec<&str> = models.iter().map(String::as_str).collect();
                            v.push(CLEAR);
                            Some(json!(v))
                        }
                        ArgValues::ThinkingLevels => Some(json!(levels)),
                    };
                    if let (Some(values), Some(obj)) = (values, arg.as_object_mut()) {
                        obj.insert("values".into(), values);
                    }
                    arg
                })
                .collect();
            json!({
                "name": c.name,
                "description": c.description,
                "aliases": c.aliases,
                "args": args,
                "adminOnly": c.admin_only,
            })
        })
        .collect();
    json!({ "version": MANIFEST_VERSION, "commands": commands })
}

/// The text `/help` answers with: one line per command with its usage, aliases and description.
pub fn help_text() -> String {
    let mut out = String::from("Available commands:");
    for c in COMMANDS {
        out.push_str("\n  ");
        out.push_str(&usage_of(c.name));
        match c.aliases {
            [] => {}
            [one] => out.push_str(&format!(" (alias /{one})")),
            many => {
                let list: Vec<String> = many.iter().map(|a| format!("/{a}")).collect();
                out.push_str(&format!(" (aliases {})", list.join(", ")));
            }
        }
        out.push_str(" - ");
        out.push_str(c.description);
        if c.args.iter().any(|a| a.values == ArgValues::ThinkingLevels) {
            out.push_str(&format!(" Levels: {}.", levels()));
        }
    }
    out
}

/// A command's answer: the `success`, `message` and `data` of its `command:result`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandReply {
    pub success: bool,
    pub message: String,
    /// `Null` when there is nothing to add.
    pub data: Value,
}

impl CommandReply {
    fn ok(message: impl Into<String>, data: Value) -> Self {
        CommandReply {
            success: true,
            message: message.into(),
            data,
        }
    }

    /// A refusal, with the reason.
    pub fn failed(message: impl Into<String>, data: Value) -> Self {
        CommandReply {
            success: false,
            message: message.into(),
            data,
        }
    }
}

/// What a command reads of the conversation's session.
#[derive(Debug, Clone, Copy)]
pub struct SessionView<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub model_override: Option<&'a str>,
    pub agent: Option<&'a str>,
}

/// What running a command needs from the conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandStep {
    /// Nothing to change: this is the answer.
    Reply(CommandReply),
    /// Change the session, then answer with the `after_*` function of the change.
    SetModel(String),
    ClearModel,
    SetThinking(ThinkingLevel),
    SetAgent(String),
    ClearAgent,
    /// Answer with the session's status report.
    Status,
}

/// Runs a parsed command as far as it can without the conversation: answers what only reads
/// the session (`fresh_id` is the id `/new` offers), and names the change the rest need.
pub fn run(command: Command, session: SessionView<'_>, fresh_id: &str) -> CommandStep {
    match command {
        Command::Help => CommandStep::Reply(CommandReply::ok(help_text(), Value::Null)),
        Command::New => CommandStep::Reply(CommandReply::ok(
            format!("New conversation {fresh_id}: open a socket with conversationId={fresh_id}"),
            json!({ "conversationId": fresh_id }),
        )),
        Command::ShowModel => {
            let how = match session.model_override {
                Some(o) => format!("override {o}"),
                None => "routing decides".into(),
            };
            CommandStep::Reply(CommandReply::ok(
                format!("Model: {}/{} ({how})", session.provider, session.model),
                json!({ "provider": session.provider, "modelId": session.model, "override": session.model_override }),
            ))
        }
        Command::ShowAgent => CommandStep::Reply(CommandReply::ok(
            session
                .agent
                .map(|a| format!("Agent: {a}"))
                .unwrap_or_else(|| "No agent is active".into()),
            json!({ "agentName": session.agent }),
        )),
        Command::SetModel(spec) => CommandStep::SetModel(spec),
        Command::ClearModel => CommandStep::ClearModel,
        Command::SetThinking(level) => CommandStep::SetThinking(level),
        Command::SetAgent(name) => CommandStep::SetAgent(name),
        Command::ClearAgent => CommandStep::ClearAgent,
        Command::Status => CommandStep::Status,
    }
}

/// The answer to `/model <id>` once the override was set (`info`: the new `session:info`) or
/// refused (the reason); `session` is the session after it.
pub fn after_set_model(result: Result<Value, String>, session: SessionView<'_>) -> CommandReply {
    match result {
        Ok(info) => CommandReply::ok(
            format!(
                "Model set to {}/{} for this conversation; routing is bypassed until /model clear",
                session.provider, session.model
            ),
            info,
        ),
        Err(e) => CommandReply::failed(e, Value::Null),
    }
}

/// The answer to `/model clear`.
pub fn after_clear_model(result: Result<Value, String>) -> CommandReply {
    match result {
        Ok(info) => CommandReply::ok("Model override cleared; routing decides again", info),
        Err(e) => CommandReply::failed(e, Value::Null),
    }
}

/// The answer to `/thinking <level>`.
pub fn after_set_thinking(result: Result<(), String>, level: ThinkingLevel) -> CommandReply {
    match result {
        Ok(()) => CommandReply::ok(
            format!("Thinking level set to {}", level.as_str()),
            json!({ "thinkingLevel": level.as_str() }),
        ),
        Err(e) => CommandReply::failed(e, Value::Null),
    }
}

/// The answer to `/agent <name>`: the agent's name when it was set, or the refusal.
pub fn after_set_agent(result: Result<String, String>, refusal_code: &str) -> CommandReply {
    match result {
        Ok(name) => CommandReply::ok(format!("Agent set to {name}"), json!({ "agentName": name })),
        Err(e) => CommandReply::failed(e, json!({ "code": refusal_code })),
    }
}

/// The answer to `/agent clear`.
pub fn after_clear_agent() -> CommandReply {
    CommandReply::ok("Agent cleared", Value::Null)
}

/// The `command:result` payload.
pub fn result_payload(conversation_id: &str, command: &str, reply: CommandReply) -> Value {
    let mut result = json!({ "conversationId": conversation_id, "command": command, "success": reply.success, "message": reply.message });
    if !reply.data.is_null() {
        result["data"] = reply.data;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIEW: SessionView<'static> = SessionView {
        provider: "openai",
        model: "gpt-4o",
        model_override: None,
        agent: None,
    };

    #[test]
    fn reading_commands_answer_without_touching_the_session() {
        let CommandStep::Reply(r) = run(Command::ShowModel, VIEW, "n1") else {
            panic!("/model answers at once")
        };
        assert_eq!(r.message, "Model: openai/gpt-4o (routing decides)");
        assert_eq!(
            r.data,
            json!({ "provider": "openai", "modelId": "gpt-4o", "override": null })
        );
        let over = SessionView {
            model_override: Some("anthropic/claude-haiku-4-5"),
            agent: Some("helper"),
            ..VIEW
        };
        let CommandStep::Reply(r) = run(Command::ShowModel, over, "n1") else {
            panic!()
        };
        assert!(r.message.ends_with("(override anthropic/claude-haiku-4-5)"));
        let CommandStep::Reply(r) = run(Command::ShowAgent, over, "n1") else {
            panic!()
        };
        assert_eq!(
            (r.message.as_str(), r.data.clone()),
            ("Agent: helper", json!({ "agentName": "helper" }))
        );
        let CommandStep::Reply(r) = run(Command::New, VIEW, "n1") else {
            panic!()
        };
        assert_eq!(r.data, json!({ "conversationId": "n1" }));
        assert_eq!(
            run(Command::SetThinking(ThinkingLevel::Low), VIEW, "n1"),
            CommandStep::SetThinking(ThinkingLevel::Low)
        );
    }

    #[test]
    fn changes_answer_with_their_outcome() {
        let set = after_set_model(Ok(json!({ "modelId": "gpt-4o" })), VIEW);
        assert!(set.success && set.message.starts_with("Model set to openai/gpt-4o"));
        let refused = after_set_model(Err("provider \"x\" is not configured".into()), VIEW);
        assert!(!refused.success && refused.data.is_null());
        let agent = after_set_agent(
            Err("Unknown agent \"ops\". Available: none".into()),
            "unknown_agent",
        );
        assert_eq!(agent.data, json!({ "code": "unknown_agent" }));
        assert_eq!(
            result_payload("c1", "agent", after_clear_agent()),
            json!({ "conversationId": "c1", "command": "agent", "success": true, "message": "Agent cleared" })
        );
        assert_eq!(
            after_set_thinking(Ok(()), ThinkingLevel::High).data,
            json!({ "thinkingLevel": "high" })
        );
    }

    #[test]
    fn canonical_names_resolve_aliases() {
        assert_eq!(canonical_name("/think ultra"), Some("thinking"));
        assert_eq!(canonical_name("S"), Some("status"));
        assert_eq!(canonical_name("/nope"), None);
        assert_eq!(canonical_name(""), None);
    }

    fn p(command: &str) -> Result<Command, CommandError> {
        parse(command, None)
    }

    fn pa(command: &str, args: Value) -> Result<Command, CommandError> {
        parse(command, Some(&args))
    }

    fn err(command: &str) -> String {
        p(command).unwrap_err().to_string()
    }

    #[test]
    fn model_forms() {
        assert_eq!(p("/model"), Ok(Command::ShowModel));
        assert_eq!(p("model"), Ok(Command::ShowModel));
        assert_eq!(p("/m"), Ok(Command::ShowModel));
        assert_eq!(p("/MODEL gpt-4o"), Ok(Command::SetModel("gpt-4o".into())));
        assert_eq!(
            p("/m anthropic/claude-haiku-4-5"),
            Ok(Command::SetModel("anthropic/claude-haiku-4-5".into()))
        );
        assert_eq!(p("/model clear"), Ok(Command::ClearModel));
        assert_eq!(p("/model CLEAR"), Ok(Command::ClearModel));
        assert_eq!(
            pa("/model", json!("gpt-4o")),
            Ok(Command::SetModel("gpt-4o".into()))
        );
        assert_eq!(
            pa("model", json!(["gpt-4o"])),
            Ok(Command::SetModel("gpt-4o".into()))
        );
        assert_eq!(pa("model", json!(["clear"])), Ok(Command::ClearModel));
        assert_eq!(pa("model", Value::Null), Ok(Command::ShowModel));
        assert_eq!(pa("model", json!([])), Ok(Command::ShowModel));
        assert_eq!(pa("model", json!("  ")), Ok(Command::ShowModel));
        // Model ids keep their case: providers may distinguish it.
        assert_eq!(
            p("/model Qwen/Qwen3-8B"),
            Ok(Command::SetModel("Qwen/Qwen3-8B".into()))
        );
    }

    #[test]
    fn thinking_forms() {
        for level in ThinkingLevel::ALL {
            assert_eq!(
                p(&format!("/thinking {}", level.as_str())),
                Ok(Command::SetThinking(level))
            );
        }
        assert_eq!(
            p("/think HIGH"),
            Ok(Command::SetThinking(ThinkingLevel::High))
        );
        assert_eq!(
            pa("thinking", json!("low")),
            Ok(Command::SetThinking(ThinkingLevel::Low))
        );
        assert_eq!(
            pa("Think", json!(["minimal"])),
            Ok(Command::SetThinking(ThinkingLevel::Minimal))
        );
    }

    #[test]
    fn agent_forms() {
        assert_eq!(p("/agent"), Ok(Command::ShowAgent));
        assert_eq!(p("/agent coder"), Ok(Command::SetAgent("coder".into())));
        assert_eq!(p("/agent clear"), Ok(Command::ClearAgent));
        assert_eq!(
            p("/agent Code   Reviewer"),
            Ok(Command::SetAgent("Code Reviewer".into()))
        );
        assert_eq!(
            pa("agent", json!("Code Reviewer")),
            Ok(Command::SetAgent("Code Reviewer".into()))
        );
        assert_eq!(
            pa("agent", json!(["Code Reviewer"])),
            Ok(Command::SetAgent("Code Reviewer".into()))
        );
        assert_eq!(pa("agent", json!(["Clear"])), Ok(Command::ClearAgent));
    }

    #[test]
    fn argumentless_commands_and_aliases() {
        assert_eq!(p("/status"), Ok(Command::Status));
        assert_eq!(p("/s"), Ok(Command::Status));
        assert_eq!(p("/new"), Ok(Command::New));
        assert_eq!(p("  /New  "), Ok(Command::New));
        assert_eq!(p("/help"), Ok(Command::Help));
        assert_eq!(p("/h"), Ok(Command::Help));
        assert_eq!(p("/?"), Ok(Command::Help));
        assert_eq!(p("?"), Ok(Command::Help));
        assert_eq!(pa("help", json!([])), Ok(Command::Help));
    }

    #[test]
    fn command_names_are_canonical() {
        assert_eq!(p("/m x").unwrap().name(), "model");
        assert_eq!(p("/think off").unwrap().name(), "thinking");
        assert_eq!(p("/agent clear").unwrap().name(), "agent");
        assert_eq!(p("/s").unwrap().name(), "status");
        assert_eq!(p("/new").unwrap().name(), "new");
        assert_eq!(p("/?").unwrap().name(), "help");
    }

    #[test]
    fn unknown_and_empty_commands_list_the_available_ones() {
        assert_eq!(
            err("/foo"),
            "Unknown command \"/foo\". Available: /model, /thinking, /agent, /status, /new, /help"
        );
        assert_eq!(err("foo bar"), err("/foo"));
        assert_eq!(p(""), Err(CommandError::Empty));
        assert_eq!(p(" / "), Err(CommandError::Empty));
        assert!(err("").starts_with("No command given. Available: /model,"));
        // Only one slash is stripped.
        assert!(matches!(p("//model"), Err(CommandError::Unknown { .. })));
    }

    #[test]
    fn unknown_command_echo_is_bounded_and_printable() {
        let long = "x".repeat(10_000);
        let Err(CommandError::Unknown { name }) = p(&long) else {
            panic!("expected Unknown");
        };
        assert_eq!(name.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(name.ends_with('…'));
        let Err(CommandError::Unknown { name }) = p("/a\u{7}b") else {
            panic!("expected Unknown");
        };
        assert_eq!(name, "a\u{FFFD}b");
    }

    #[test]
    fn bad_thinking_level_lists_the_levels() {
        assert_eq!(
            err("/thinking x"),
            "Invalid thinking level \"x\". Available: off, minimal, low, medium, high, xhigh"
        );
    }

    #[test]
    fn missing_argument() {
        assert_eq!(
            p("/thinking"),
            Err(CommandError::MissingArgument {
                command: "thinking",
                arg: "level"
            })
        );
        assert_eq!(
            err("/think"),
            "Missing argument <level> for /thinking. Usage: /thinking <level>. Available: off, minimal, low, medium, high, xhigh"
        );
        assert!(pa("thinking", json!([" "])).is_err());
    }

    #[test]
    fn too_many_arguments() {
        assert_eq!(
            p("/model a b"),
            Err(CommandError::TooManyArguments {
                command: "model",
                max: 1,
                got: 2
            })
        );
        assert_eq!(
            err("/model a b"),
            "Too many arguments for /model: it takes at most 1 argument, got 2. Usage: /model [<id>|clear]"
        );
        assert_eq!(
            err("/status now"),
            "Too many arguments for /status: it takes no arguments, got 1. Usage: /status"
        );
        assert!(matches!(
            p("/new x"),
            Err(CommandError::TooManyArguments { max: 0, .. })
        ));
        assert!(matches!(
            p("/help model"),
            Err(CommandError::TooManyArguments { .. })
        ));
        assert!(matches!(
            p("/thinking low high"),
            Err(CommandError::TooManyArguments { .. })
        ));
        assert!(matches!(
            pa("/model clear", json!("gpt-4o")),
            Err(CommandError::TooManyArguments { got: 2, .. })
        ));
        assert!(matches!(
            pa("/model", json!("gpt 4o")),
            Err(CommandError::TooManyArguments { .. })
        ));
    }

    #[test]
    fn model_id_limits() {
        let ok = "m".repeat(MAX_MODEL_ID_CHARS);
        assert_eq!(p(&format!("/model {ok}")), Ok(Command::SetModel(ok)));
        let long = "m".repeat(MAX_MODEL_ID_CHARS + 1);
        assert_eq!(
            p(&format!("/model {long}")),
            Err(CommandError::ModelIdTooLong { chars: 201 })
        );
        assert_eq!(
            CommandError::ModelIdTooLong { chars: 201 }.to_string(),
            "Model id is 201 characters long; at most 200 are allowed"
        );
        assert_eq!(
            pa("/model", json!(["gpt 4o"])),
            Err(CommandError::InvalidModelId {
                value: "gpt 4o".into()
            })
        );
        assert!(matches!(
            pa("/model", json!(["gpt\u{0}4o"])),
            Err(CommandError::InvalidModelId { .. })
        ));
        assert!(pa("/model", json!(["gpt 4o"]))
            .unwrap_err()
            .to_string()
            .contains("must not contain whitespace or control characters"));
    }

    #[test]
    fn agent_name_limits() {
        let long = "a".repeat(MAX_AGENT_NAME_CHARS + 1);
        assert_eq!(
            pa("/agent", json!(long)),
            Err(CommandError::AgentNameTooLong { chars: 201 })
        );
        assert!(matches!(
            pa("/agent", json!(["bad\u{1b}name"])),
            Err(CommandError::InvalidAgentName { .. })
        ));
    }

    #[test]
    fn args_of_the_wrong_type_are_refused() {
        assert_eq!(
            pa("/model", json!(5)),
            Err(CommandError::InvalidArgs { found: "a number" })
        );
        assert_eq!(
            pa("/model", json!({"id": "x"})),
            Err(CommandError::InvalidArgs { found: "an object" })
        );
        assert_eq!(
            pa("/model", json!(true)),
            Err(CommandError::InvalidArgs { found: "a boolean" })
        );
        assert_eq!(
            pa("/model", json!(["a", 1])),
            Err(CommandError::InvalidArgs {
                found: "an array holding a number"
            })
        );
        assert_eq!(
            pa("/model", json!([null])).unwrap_err().to_string(),
            "Command arguments must be a string, an array of strings or null; got an array holding null"
        );
    }

    #[test]
    fn parse_never_panics_on_odd_input() {
        let inputs = [
            "/",
            "//",
            "\u{0}",
            "/model \u{0}",
            "/thinking \u{FFFF}",
            "é/model",
            "/agent \t\n",
            "🙂",
        ];
        for input in inputs {
            let _ = p(input);
            let _ = pa(input, json!(["🙂", "x".repeat(300)]));
        }
    }

    #[test]
    fn manifest_shape() {
        let m = manifest(&[
            "gpt-4o".to_string(),
            "anthropic/claude-haiku-4-5".to_string(),
        ]);
        assert_eq!(m["version"], MANIFEST_VERSION);
        let commands = m["commands"].as_array().unwrap();
        let names: Vec<&str> = commands
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["model", "thinking", "agent", "status", "new", "help"]
        );
        assert_eq!(
            commands[0],
            json!({
                "name": "model",
                "description": COMMANDS[0].description,
                "aliases": ["m"],
                "args": [{
                    "name": "model",
                    "description": COMMANDS[0].args[0].description,
                    "required": false,
                    "values": ["gpt-4o", "anthropic/claude-haiku-4-5", "clear"],
                }],
                "adminOnly": false,
            })
        );
        assert_eq!(
            commands[1]["args"][0]["values"],
            json!(["off", "minimal", "low", "medium", "high", "xhigh"])
        );
        assert_eq!(commands[1]["args"][0]["required"], true);
        assert_eq!(commands[1]["aliases"], json!(["think"]));
        // Free-text arguments carry no `values`.
        assert!(commands[2]["args"][0].get("values").is_none());
        assert_eq!(commands[5]["aliases"], json!(["h", "?"]));
        assert_eq!(commands[3]["args"], json!([]));
    }

    #[test]
    fn every_manifest_name_and_alias_parses() {
        for c in COMMANDS {
            for name in std::iter::once(&c.name).chain(c.aliases) {
                let args = if c.kind == Kind::Thinking {
                    Some(json!("off"))
                } else {
                    None
                };
                assert!(parse(name, args.as_ref()).is_ok(), "{name}");
                assert!(parse(&format!("/{name}"), args.as_ref()).is_ok(), "/{name}");
            }
        }
    }

    #[test]
    fn help_lists_every_command_with_args_and_aliases() {
        let help = help_text();
        assert!(help.starts_with("Available commands:\n"));
        assert!(help.contains("\n  /model [<id>|clear] (alias /m) - "));
        assert!(help.contains("\n  /thinking <level> (alias /think) - "));
        assert!(help.contains("Levels: off, minimal, low, medium, high, xhigh."));
        assert!(help.contains("\n  /agent [<name>|clear] - "));
        assert!(help.contains("\n  /status (alias /s) - "));
        assert!(help.contains("\n  /new - "));
        assert!(help.contains("\n  /help (aliases /h, /?) - "));
        assert_eq!(help.lines().count(), 1 + COMMANDS.len());
    }
}
