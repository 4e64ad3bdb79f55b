//! Routing engine: picks the provider and model of a turn from operator rules (first match by priority wins), and lists fallback candidates; a bad rule is skipped, never fatal.

use std::fmt;

use regex_lite::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

/// Longest regex condition accepted, in characters; bounds compile time and memory per rule.
pub const MAX_REGEX_CHARS: usize = 1_000;

/// Memory bound of one compiled regex. regex-lite searches in O(pattern × content), so a
/// smaller compiled pattern also bounds the time each turn spends routing.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Rule name reported when no rule matched.
pub const DEFAULT_RULE_NAME: &str = "default";

/// Reason reported when no rule matched.
pub const DEFAULT_REASON: &str = "no rule matched; configured default";

/// What must hold of a message for a rule to apply; every present condition must hold, so an
/// empty set matches every message.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Conditions {
    /// The content contains at least one of these, ignoring case; empty means no condition.
    pub keywords: Vec<String>,
    /// The content matches this regex (regex-lite syntax, case-sensitive unless it starts with `(?i)`).
    pub regex: Option<String>,
    /// The content is at least this many characters long.
    pub min_length: Option<usize>,
    /// The content is at most this many characters long.
    pub max_length: Option<usize>,
    /// The user is one of these ids (exact); empty means any user.
    pub user_ids: Vec<String>,
    /// The conversation's agent is one of these names (ASCII case ignored); empty means any,
    /// including no agent.
    pub agents: Vec<String>,
}

/// Serde default of [`RoutingRule::enabled`]: a rule is on unless switched off.
fn enabled_by_default() -> bool {
    true
}

/// One operator routing rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingRule {
    /// Storage id, when the rule came from a database row.
    #[serde(default)]
    pub id: Option<String>,
    /// Human-readable name, reported as `ruleName` in the decision.
    #[serde(default)]
    pub name: String,
    /// Lower runs first.
    #[serde(default)]
    pub priority: i64,
    /// A disabled rule is kept in storage but never matches.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// What must hold for the rule to apply.
    #[serde(default)]
    pub conditions: Conditions,
    /// Provider to route to.
    #[serde(default)]
    pub provider: String,
    /// Model to route to.
    #[serde(default)]
    pub model: String,
    /// Why, for the user; a generated one is used when empty.
    #[serde(default)]
    pub reason: String,
}

/// Why a rule cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleError {
    /// The name is empty or blank.
    EmptyName,
    /// The provider is empty or blank.
    EmptyProvider,
    /// The model is empty or blank.
    EmptyModel,
    /// The keyword at this index is empty or blank (it would match every message).
    EmptyKeyword {
        /// Position in `conditions.keywords`.
        index: usize,
    },
    /// The regex is longer than [`MAX_REGEX_CHARS`].
    RegexTooLong {
        /// Its length in characters.
        chars: usize,
    },
    /// The regex does not compile.
    InvalidRegex {
        /// The compiler's explanation.
        message: String,
    },
    /// `minLength` is greater than `maxLength`, so nothing could match.
    LengthRange {
        /// `conditions.minLength`.
        min: usize,
        /// `conditions.maxLength`.
        max: usize,
    },
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleError::EmptyName => write!(f, "name must not be empty"),
            RuleError::EmptyProvider => write!(f, "provider must not be empty"),
            RuleError::EmptyModel => write!(f, "model must not be empty"),
            RuleError::EmptyKeyword { index } => write!(
                f,
                "conditions.keywords[{index}] is empty; an empty keyword would match every message"
            ),
            RuleError::RegexTooLong { chars } => write!(
                f,
                "conditions.regex is {chars} characters long; at most {MAX_REGEX_CHARS} are allowed"
            ),
            RuleError::InvalidRegex { message } => {
                write!(f, "conditions.regex does not compile: {message}")
            }
            RuleError::LengthRange { min, max } => write!(
                f,
                "conditions.minLength ({min}) is greater than conditions.maxLength ({max}); no message could match"
            ),
        }
    }
}

impl std::error::Error for RuleError {}

impl RoutingRule {
    /// Checks the rule: non-empty name, provider and model; non-blank keywords; a regex of at most
    /// [`MAX_REGEX_CHARS`] that compiles; `minLength <= maxLength`.
    pub fn validate(&self) -> Result<(), RuleError> {
        self.check().map(|_| ())
    }

    /// Validates and returns the compiled regex, so [`CompiledRules::compile`] compiles it once.
    fn check(&self) -> Result<Option<Regex>, RuleError> {
        if self.name.trim().is_empty() {
            return Err(RuleError::EmptyName);
        }
        if self.provider.trim().is_empty() {
            return Err(RuleError::EmptyProvider);
        }
        if self.model.trim().is_empty() {
            return Err(RuleError::EmptyModel);
        }
        let c = &self.conditions;
        if let Some(index) = c.keywords.iter().position(|k| k.trim().is_empty()) {
            return Err(RuleError::EmptyKeyword { index });
        }
        if let (Some(min), Some(max)) = (c.min_length, c.max_length) {
            if min > max {
                return Err(RuleError::LengthRange { min, max });
            }
        }
        let Some(pattern) = &c.regex else {
            return Ok(None);
        };
        let chars = pattern.chars().count();
        if chars > MAX_REGEX_CHARS {
            return Err(RuleError::RegexTooLong { chars });
        }
        RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(Some)
            .map_err(|e| RuleError::InvalidRegex {
                message: e.to_string(),
            })
    }
}

/// A rule left out of routing, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRule {
    /// The rule's storage id, if it had one.
    pub id: Option<String>,
    /// The rule's name as given (may be empty: that can be the reason).
    pub name: String,
    /// What is wrong with it.
    pub error: RuleError,
}

impl fmt::Display for SkippedRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "routing rule {:?}", self.name)?;
        if let Some(id) = &self.id {
            write!(f, " (id {id})")?;
        }
        write!(f, " skipped: {}", self.error)
    }
}

/// Where a turn goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Provider name.
    pub provider: String,
    /// Model id.
    pub model: String,
}

/// The outcome of routing, as `session:info.routingDecision` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingDecision {
    /// Provider name.
    pub provider: String,
    /// Model id.
    pub model: String,
    /// The matching rule's name, or `default`.
    pub rule_name: String,
    /// Why this target was chosen.
    pub reason: String,
}

/// What routing looks at in one turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingContext<'a> {
    /// The user message.
    pub content: &'a str,
    /// The authenticated user.
    pub user_id: &'a str,
    /// The conversation's agent, if one is selected.
    pub agent: Option<&'a str>,
}

/// A validated rule with its matchers prepared.
#[derive(Debug, Clone)]
struct CompiledRule {
    rule: RoutingRule,
    regex: Option<Regex>,
    /// Keywords lowercased once here rather than on every turn.
    keywords: Vec<String>,
}

impl CompiledRule {
    /// Whether every present condition holds; `lower` is the content lowercased, computed
    /// only when some rule has keywords.
    fn matches(&self, ctx: &RoutingContext<'_>, lower: Option<&str>, chars: usize) -> bool {
        let c = &self.rule.conditions;
        if !self.keywords.is_empty() {
            let lower = lower.unwrap_or_default();
            if !self.keywords.iter().any(|k| lower.contains(k.as_str())) {
                return false;
            }
        }
        if c.min_length.is_some_and(|min| chars < min)
            || c.max_length.is_some_and(|max| chars > max)
        {
            return false;
        }
        if !c.user_ids.is_empty() && !c.user_ids.iter().any(|u| u == ctx.user_id) {
            return false;
        }
        if !c.agents.is_empty() {
            // A rule for named agents does not apply to a conversation with none.
            let Some(agent) = ctx.agent else {
                return false;
            };
            if !c.agents.iter().any(|a| a.eq_ignore_ascii_case(agent)) {
                return false;
            }
        }
        // Last: the regex is the most expensive condition.
        self.regex
            .as_ref()
            .is_none_or(|re| re.is_match(ctx.content))
    }

    fn decision(&self) -> RoutingDecision {
        let r = &self.rule;
        RoutingDecision {
            provider: r.provider.clone(),
            model: r.model.clone(),
            rule_name: r.name.clone(),
            reason: if r.reason.trim().is_empty() {
                format!("matched rule \"{}\"", r.name)
            } else {
                r.reason.clone()
            },
        }
    }
}

/// Enabled, valid rules in the order they are tried.
#[derive(Debug, Clone, Default)]
pub struct CompiledRules {
    rules: Vec<CompiledRule>,
    skipped: Vec<SkippedRule>,
    /// Whether any rule has keywords, so content is lowercased only when needed.
    any_keywords: bool,
}

impl CompiledRules {
    /// Prepares rules for routing: disabled rules are dropped; rules that fail
    /// [`RoutingRule::validate`] are dropped and recorded in [`CompiledRules::skipped`], so a bad
    /// row can never break routing; the rest are ordered by priority (lower first), then name,
    /// then input order.
    pub fn compile(rules: Vec<RoutingRule>) -> CompiledRules {
        let mut compiled = Vec::with_capacity(rules.len());
        let mut skipped = Vec::new();
        for rule in rules.into_iter().filter(|r| r.enabled) {
            match rule.check() {
                Ok(regex) => {
                    let keywords = rule
                        .conditions
                        .keywords
                        .iter()
                        .map(|k| k.to_lowercase())
                        .collect();
                    compiled.push(CompiledRule {
                        rule,
                        regex,
                        keywords,
                    });
                }
                Err(error) => skipped.push(SkippedRule {
                    id: rule.id,
                    name: rule.name,
                    error,
                }),
            }
        }
        // Stable: rules with equal priority and name keep their input order.
        compiled
            .sort_by(|a, b| (a.rule.priority, &a.rule.name).cmp(&(b.rule.priority, &b.rule.name)));
        let any_keywords = compiled.iter().any(|r| !r.keywords.is_empty());
        CompiledRules {
            rules: compiled,
            skipped,
            any_keywords,
        }
    }

    /// Rules left out because they did not validate, in input order.
    pub fn skipped(&self) -> &[SkippedRule] {
        &self.skipped
    }

    /// Number of rules routing will try.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether routing will always fall to the default.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules routing will try, in order.
    pub fn rules(&self) -> impl Iterator<Item = &RoutingRule> {
        self.rules.iter().map(|r| &r.rule)
    }

    /// The first matching rule's target, or `default` (rule name `default`) when none matches.
    pub fn route(&self, ctx: &RoutingContext<'_>, default: &Target) -> RoutingDecision {
        self.matching(ctx)
            .next()
            .unwrap_or_else(|| default_decision(default))
    }

    /// Every matching rule's target in order, then the default, each provider+model once: the
    /// caller tries the next only when a provider fails before its first byte with a retryable
    /// error.
    pub fn candidates(&self, ctx: &RoutingContext<'_>, default: &Target) -> Vec<RoutingDecision> {
        let mut out: Vec<RoutingDecision> = Vec::new();
        for d in self
            .matching(ctx)
            .chain(std::iter::once(default_decision(default)))
        {
            if !out
                .iter()
                .any(|o| o.provider == d.provider && o.model == d.model)
            {
                out.push(d);
            }
        }
        out
    }

    /// Decisions of the matching rules, lazily, in order.
    fn matching<'s>(
        &'s self,
        ctx: &'s RoutingContext<'_>,
    ) -> impl Iterator<Item = RoutingDecision> + 's {
        let lower = self.any_keywords.then(|| ctx.content.to_lowercase());
        let chars = ctx.content.chars().count();
        self.rules
            .iter()
            .filter(move |r| r.matches(ctx, lower.as_deref(), chars))
            .map(CompiledRule::decision)
    }
}

/// The decision for the configured default target.
fn default_decision(default: &Target) -> RoutingDecision {
    RoutingDecision {
        provider: default.provider.clone(),
        model: default.model.clone(),
        rule_name: DEFAULT_RULE_NAME.to_string(),
        reason: DEFAULT_REASON.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, priority: i64, model: &str, conditions: Conditions) -> RoutingRule {
        RoutingRule {
            id: None,
            name: name.into(),
            priority,
            enabled: true,
            conditions,
            provider: "openai".into(),
            model: model.into(),
            reason: format!("{name} reason"),
        }
    }

    fn default_target() -> Target {
        Target {
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
        }
    }

    fn ctx(content: &str) -> RoutingContext<'_> {
        RoutingContext {
            content,
            user_id: "u1",
            agent: None,
        }
    }

    fn routed(rules: &CompiledRules, c: &RoutingContext<'_>) -> String {
        rules.route(c, &default_target()).rule_name
    }

    #[test]
    fn no_rules_routes_to_the_default() {
        let rules = CompiledRules::compile(vec![]);
        let d = rules.route(&ctx("hello"), &default_target());
        assert_eq!(
            d,
            RoutingDecision {
                provider: "anthropic".into(),
                model: "claude-sonnet-4-5".into(),
                rule_name: "default".into(),
                reason: "no rule matched; configured default".into(),
            }
        );
        assert!(rules.is_empty());
    }

    #[test]
    fn empty_conditions_match_everything() {
        let rules = CompiledRules::compile(vec![rule("all", 0, "gpt-4o", Conditions::default())]);
        let d = rules.route(&ctx(""), &default_target());
        assert_eq!(
            (d.provider.as_str(), d.model.as_str()),
            ("openai", "gpt-4o")
        );
        assert_eq!(d.rule_name, "all");
        assert_eq!(d.reason, "all reason");
    }

    #[test]
    fn keywords_match_any_ignoring_case() {
        let c = Conditions {
            keywords: vec!["Rust".into(), "ÉCOLE".into()],
            ..Default::default()
        };
        let rules = CompiledRules::compile(vec![rule("kw", 0, "gpt-4o", c)]);
        assert_eq!(routed(&rules, &ctx("I love RUST code")), "kw");
        assert_eq!(routed(&rules, &ctx("à l'école")), "kw");
        assert_eq!(routed(&rules, &ctx("python")), "default");
    }

    #[test]
    fn regex_condition() {
        let c = Conditions {
            regex: Some(r"^\s*(fn|impl)\b".into()),
            ..Default::default()
        };
        let ci = Conditions {
            regex: Some(r"(?i)translate".into()),
            ..Default::default()
        };
        let rules = CompiledRules::compile(vec![rule("re", 0, "a", c), rule("ci", 1, "b", ci)]);
        assert_eq!(routed(&rules, &ctx("  fn main() {}")), "re");
        assert_eq!(routed(&rules, &ctx("see fn main")), "default");
        assert_eq!(routed(&rules, &ctx("TRANSLATE this")), "ci");
    }

    #[test]
    fn length_conditions_count_chars_not_bytes() {
        let c = Conditions {
            min_length: Some(3),
            max_length: Some(5),
            ..Default::default()
        };
        let rules = CompiledRules::compile(vec![rule("len", 0, "a", c)]);
        assert_eq!(routed(&rules, &ctx("ab")), "default");
        assert_eq!(routed(&rules, &ctx("abc")), "len");
        assert_eq!(routed(&rules, &ctx("abcde")), "len");
        assert_eq!(routed(&rules, &ctx("abcdef")), "default");
        // Five chars, ten bytes.
        assert_eq!(routed(&rules, &ctx("ééééé")), "len");
    }

    #[test]
    fn user_and_agent_conditions() {
        let users = Conditions {
            user_ids: vec!["u2".into()],
            ..Default::default()
        };
        let agents = Conditions {
            agents: vec!["Coder".into()],
            ..Default::default()
        };
        let rules =
            CompiledRules::compile(vec![rule("u", 0, "a", users), rule("ag", 1, "b", agents)]);
        assert_eq!(routed(&rules, &ctx("x")), "default");
        let u2 = RoutingContext {
            user_id: "u2",
            ..ctx("x")
        };
        assert_eq!(routed(&rules, &u2), "u");
        let coder = RoutingContext {
            agent: Some("coder"),
            ..ctx("x")
        };
        assert_eq!(routed(&rules, &coder), "ag");
        let other = RoutingContext {
            agent: Some("writer"),
            ..ctx("x")
        };
        assert_eq!(routed(&rules, &other), "default");
    }

    #[test]
    fn all_present_conditions_must_hold() {
        let c = Conditions {
            keywords: vec!["deploy".into()],
            min_length: Some(10),
            user_ids: vec!["u1".into()],
            ..Default::default()
        };
        let rules = CompiledRules::compile(vec![rule("and", 0, "a", c)]);
        assert_eq!(routed(&rules, &ctx("deploy it now")), "and");
        assert_eq!(routed(&rules, &ctx("deploy")), "default");
        let other_user = RoutingContext {
            user_id: "u9",
            ..ctx("deploy it now")
        };
        assert_eq!(routed(&rules, &other_user), "default");
    }

    #[test]
    fn lower_priority_runs_first_then_name() {
        let rules = CompiledRules::compile(vec![
            rule("z-late", 10, "a", Conditions::default()),
            rule("b", -1, "b", Conditions::default()),
            rule("a", -1, "c", Conditions::default()),
        ]);
        assert_eq!(routed(&rules, &ctx("x")), "a");
        let names: Vec<_> = rules.rules().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "z-late"]);
    }

    #[test]
    fn disabled_rules_never_match_and_are_not_errors() {
        let mut off = rule("off", 0, "a", Conditions::default());
        off.enabled = false;
        let rules = CompiledRules::compile(vec![off]);
        assert_eq!(routed(&rules, &ctx("x")), "default");
        assert!(rules.skipped().is_empty());
    }

    #[test]
    fn empty_reason_gets_a_generated_one() {
        let mut r = rule("named", 0, "a", Conditions::default());
        r.reason = " ".into();
        let rules = CompiledRules::compile(vec![r]);
        assert_eq!(
            rules.route(&ctx("x"), &default_target()).reason,
            "matched rule \"named\""
        );
    }

    #[test]
    fn validate_refuses_each_kind_of_bad_rule() {
        let ok = rule("ok", 0, "a", Conditions::default());
        assert_eq!(ok.validate(), Ok(()));
        let bad = |f: &dyn Fn(&mut RoutingRule)| {
            let mut r = ok.clone();
            f(&mut r);
            r.validate().unwrap_err()
        };
        assert_eq!(bad(&|r| r.name = "  ".into()), RuleError::EmptyName);
        assert_eq!(bad(&|r| r.provider.clear()), RuleError::EmptyProvider);
        assert_eq!(bad(&|r| r.model.clear()), RuleError::EmptyModel);
        assert_eq!(
            bad(&|r| r.conditions.keywords = vec!["a".into(), "".into()]),
            RuleError::EmptyKeyword { index: 1 }
        );
        assert_eq!(
            bad(&|r| r.conditions.regex = Some("a".repeat(1_001))),
            RuleError::RegexTooLong { chars: 1_001 }
        );
        assert!(matches!(
            bad(&|r| r.conditions.regex = Some("(unclosed".into())),
            RuleError::InvalidRegex { .. }
        ));
        assert_eq!(
            bad(&|r| {
                r.conditions.min_length = Some(10);
                r.conditions.max_length = Some(2);
            }),
            RuleError::LengthRange { min: 10, max: 2 }
        );
        // Exactly the limit is fine, and so is min == max.
        let mut edge = ok.clone();
        edge.conditions.regex = Some("a".repeat(1_000));
        edge.conditions.min_length = Some(4);
        edge.conditions.max_length = Some(4);
        assert_eq!(edge.validate(), Ok(()));
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        assert_eq!(
            RuleError::LengthRange { min: 10, max: 2 }.to_string(),
            "conditions.minLength (10) is greater than conditions.maxLength (2); no message could match"
        );
        assert_eq!(
            RuleError::RegexTooLong { chars: 1_001 }.to_string(),
            "conditions.regex is 1001 characters long; at most 1000 are allowed"
        );
        let mut r = rule("x", 0, "a", Conditions::default());
        r.conditions.regex = Some("[".into());
        let e = r.validate().unwrap_err().to_string();
        assert!(e.starts_with("conditions.regex does not compile: "), "{e}");
    }

    #[test]
    fn invalid_rules_are_skipped_and_routing_goes_on() {
        let mut broken = rule("broken", -100, "a", Conditions::default());
        broken.id = Some("r7".into());
        broken.conditions.regex = Some("(".into());
        let rules =
            CompiledRules::compile(vec![broken, rule("good", 5, "b", Conditions::default())]);
        assert_eq!(routed(&rules, &ctx("x")), "good");
        assert_eq!(rules.len(), 1);
        let skipped = rules.skipped();
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].name, "broken");
        assert_eq!(skipped[0].id.as_deref(), Some("r7"));
        assert!(skipped[0].to_string().starts_with(
            "routing rule \"broken\" (id r7) skipped: conditions.regex does not compile"
        ));
    }

    #[test]
    fn candidates_list_matches_in_order_then_default_without_duplicates() {
        let kw = Conditions {
            keywords: vec!["code".into()],
            ..Default::default()
        };
        let mut dup_default = rule("dup-default", 3, "claude-sonnet-4-5", Conditions::default());
        dup_default.provider = "anthropic".into();
        let rules = CompiledRules::compile(vec![
            rule("second", 2, "gpt-4.1", Conditions::default()),
            rule("first", 1, "gpt-5", kw),
            rule("same-target", 2, "gpt-5", Conditions::default()),
            dup_default,
        ]);
        let names = |c: &RoutingContext<'_>| -> Vec<String> {
            rules
                .candidates(c, &default_target())
                .into_iter()
                .map(|d| d.rule_name)
                .collect()
        };
        // "same-target" repeats "first"'s gpt-5, so it is dropped when "first" matches; the
        // default's target was already offered by "dup-default".
        assert_eq!(
            names(&ctx("write code")),
            ["first", "second", "dup-default"]
        );
        // Equal priority: by name, "same-target" before "second".
        assert_eq!(
            names(&ctx("hello")),
            ["same-target", "second", "dup-default"]
        );
        let none = CompiledRules::compile(vec![]);
        assert_eq!(
            none.candidates(&ctx("x"), &default_target()),
            vec![none.route(&ctx("x"), &default_target())]
        );
    }

    #[test]
    fn rules_deserialise_camel_case_with_defaults() {
        let v = serde_json::json!([
            {"name": "long", "priority": 2, "provider": "openai", "model": "gpt-4.1",
             "conditions": {"minLength": 2000, "userIds": ["u1"]}, "reason": "long prompts"},
            {"name": "minimal", "provider": "echo", "model": "echo"}
        ]);
        let rules: Vec<RoutingRule> = serde_json::from_value(v).unwrap();
        assert!(rules[0].enabled && rules[1].enabled);
        assert_eq!(rules[0].conditions.min_length, Some(2000));
        assert_eq!(rules[0].conditions.user_ids, ["u1"]);
        assert_eq!(rules[1].conditions, Conditions::default());
        let d = CompiledRules::compile(rules).route(&ctx("x"), &default_target());
        assert_eq!(
            serde_json::to_value(d).unwrap(),
            serde_json::json!({"provider": "echo", "model": "echo", "ruleName": "minimal", "reason": "matched rule \"minimal\""})
        );
    }

    #[test]
    fn a_catastrophic_looking_regex_runs_in_linear_time() {
        let c = Conditions {
            regex: Some("(a+)+$".into()),
            ..Default::default()
        };
        let rules = CompiledRules::compile(vec![rule("redos", 0, "a", c)]);
        let content = format!("{}!", "a".repeat(20_000));
        assert_eq!(routed(&rules, &ctx(&content)), "default");
    }
}
