//! Model catalog: what each known model can do and costs; lookups by `id` or `provider/id`, operator overrides, and the cost of a turn's usage.
//!
//! Prices are USD per million tokens, as the providers publish them. A model
//! the catalog does not know has no prices, and its cost is reported as
//! `null` (`Option<Cost>::None`), never as zero: a zero would claim the turn
//! was free when we simply do not know.

use serde::{Deserialize, Serialize};

use crate::llm::{ThinkingLevel, Usage};

/// Longest provider name or model id a catalog row may carry; the same bound `/model` enforces.
pub const MAX_ID_CHARS: usize = 200;

/// Prices of one model in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Prices {
    /// Uncached prompt tokens.
    pub input: f64,
    /// Generated tokens, reasoning included.
    pub output: f64,
    /// Prompt tokens served from the provider's cache.
    pub cache_read: f64,
    /// Prompt tokens written to the provider's cache (Anthropic bills these above input).
    pub cache_write: f64,
}

/// What the gateway knows about one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// Provider name: `openai`, `anthropic`, `echo` or any configured provider.
    pub provider: String,
    /// The id the provider knows the model by.
    pub id: String,
    /// Tokens of prompt plus output the model accepts.
    pub context_window: u64,
    /// Most tokens the model generates in one call.
    pub max_output: u64,
    /// `None` when the prices are unknown: cost is then reported as `null`.
    #[serde(default)]
    pub prices: Option<Prices>,
    /// Whether the model can reason before answering.
    #[serde(default)]
    pub reasoning: bool,
    /// Thinking levels a session on this model may select; always includes `off`.
    #[serde(default = "off_only")]
    pub thinking_levels: Vec<ThinkingLevel>,
}

/// Serde default for rows that name no levels: a model that cannot reason takes only `off`.
fn off_only() -> Vec<ThinkingLevel> {
    vec![ThinkingLevel::Off]
}

impl ModelInfo {
    /// Checks an operator-supplied row: non-empty ids without whitespace, a positive window and
    /// output limit, finite non-negative prices, and thinking levels that include `off`.
    pub fn validate(&self) -> Result<(), String> {
        check_name("provider", &self.provider)?;
        check_name("model id", &self.id)?;
        let key = format!("{}/{}", self.provider, self.id);
        if self.context_window == 0 {
            return Err(format!("{key}: contextWindow must be positive"));
        }
        if self.max_output == 0 {
            return Err(format!("{key}: maxOutput must be positive"));
        }
        if let Some(p) = &self.prices {
            let fields = [
                ("input", p.input),
                ("output", p.output),
                ("cacheRead", p.cache_read),
                ("cacheWrite", p.cache_write),
            ];
            for (name, value) in fields {
                // NaN fails `>= 0.0` too, so one test covers both.
                if !(value.is_finite() && value >= 0.0) {
                    return Err(format!(
                        "{key}: price {name} must be a finite number >= 0 (USD per million tokens), got {value}"
                    ));
                }
            }
        }
        if !self.thinking_levels.contains(&ThinkingLevel::Off) {
            return Err(format!("{key}: thinkingLevels must include \"off\""));
        }
        // A non-reasoning model would reject a reasoning parameter upstream; refuse it here instead.
        if !self.reasoning
            && self
                .thinking_levels
                .iter()
                .any(|l| *l != ThinkingLevel::Off)
        {
            return Err(format!(
                "{key}: a model with reasoning=false may only take thinking level \"off\""
            ));
        }
        Ok(())
    }

    /// `provider/id`, the form that names this model unambiguously.
    pub fn qualified_id(&self) -> String {
        format!("{}/{}", self.provider, self.id)
    }
}

/// Rejects empty, overlong, whitespace or control-character names.
fn check_name(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    let chars = value.chars().count();
    if chars > MAX_ID_CHARS {
        return Err(format!(
            "{what} is {chars} characters long; at most {MAX_ID_CHARS} are allowed"
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{what} {value:?} must not contain whitespace or control characters"
        ));
    }
    Ok(())
}

/// Cost of some usage in USD, per kind of token and in total.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    /// Uncached prompt tokens.
    pub input: f64,
    /// Generated tokens.
    pub output: f64,
    /// Cache reads.
    pub cache_read: f64,
    /// Cache writes.
    pub cache_write: f64,
    /// Sum of the four.
    pub total: f64,
}

/// Prices `usage` (whose `input` counts uncached prompt tokens only, as `llm` normalises it).
///
/// Only a model with known prices has a cost: for an unknown model the caller reports
/// `cost: null` (`Option<Cost>::None`), never a zero cost.
pub fn cost(prices: &Prices, usage: &Usage) -> Cost {
    // u64 -> f64 is lossy only above 2^53 tokens, far past any real turn.
    let usd = |tokens: u64, per_million: f64| tokens as f64 * per_million / 1_000_000.0;
    let input = usd(usage.input, prices.input);
    let output = usd(usage.output, prices.output);
    let cache_read = usd(usage.cache_read, prices.cache_read);
    let cache_write = usd(usage.cache_write, prices.cache_write);
    Cost {
        input,
        output,
        cache_read,
        cache_write,
        total: input + output + cache_read + cache_write,
    }
}

/// Thinking levels a session on `model` (its catalog row `info`) may select, weakest first,
/// always with `off`.
///
/// An unknown model (`None`) gets the levels of a reasoning model (`xhigh` only where its id says
/// it takes it): it is most likely a self-hosted or newly released model, and refusing a level
/// the model supports would block its user, while a level it does not support only earns an
/// upstream `upstream_bad_request` the user can act on.
pub fn thinking_levels_for(info: Option<&ModelInfo>, model: &str) -> Vec<ThinkingLevel> {
    let Some(info) = info else {
        return ThinkingLevel::offered(crate::llm::supports_xhigh(model));
    };
    // Normalise rows that bypassed validation: sorted, deduplicated, `off` present.
    let mut levels = info.thinking_levels.clone();
    levels.push(ThinkingLevel::Off);
    levels.sort();
    levels.dedup();
    levels
}

/// The models the gateway knows: the built-in list, with operator rows laid over it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Catalog {
    models: Vec<ModelInfo>,
    skipped: Vec<String>,
}

/// The levels of a reasoning model, as the reference gateway's agent offers them: GPT-5 accepts
/// `minimal` effort (the o-series gets `low` for it), and on Anthropic `minimal` maps to the
/// smallest budget the API accepts (1,024 tokens), distinct from `low` (2,048). On an o-series
/// model reasoning cannot be turned off: `off` sends no effort and the model reasons at its
/// default.
const REASONING: &[ThinkingLevel] = &ThinkingLevel::STANDARD;

/// [`REASONING`] and `xhigh`, for the models that take it ([`crate::llm::supports_xhigh`]).
const WITH_XHIGH: &[ThinkingLevel] = &ThinkingLevel::ALL;

/// Levels of a model that cannot reason.
const OFF: &[ThinkingLevel] = &[ThinkingLevel::Off];

/// Builds one built-in row. Anthropic cache prices follow its published multipliers and are
/// passed in explicitly so each row reads like the price page. A model with more than `off`
/// among its levels is a reasoning model.
fn row(
    provider: &str,
    id: &str,
    context_window: u64,
    max_output: u64,
    (input, output, cache_read, cache_write): (f64, f64, f64, f64),
    levels: &[ThinkingLevel],
) -> ModelInfo {
    ModelInfo {
        provider: provider.to_string(),
        id: id.to_string(),
        context_window,
        max_output,
        prices: Some(Prices {
            input,
            output,
            cache_read,
            cache_write,
        }),
        reasoning: levels.len() > 1,
        thinking_levels: levels.to_vec(),
    }
}

/// OpenAI prices: cached input is billed at the published cached rate; OpenAI does not bill
/// cache writes separately, so a cache write costs what plain input costs.
fn openai(
    id: &str,
    window: u64,
    max_output: u64,
    input: f64,
    cached: f64,
    output: f64,
    levels: &[ThinkingLevel],
) -> ModelInfo {
    row(
        "openai",
        id,
        window,
        max_output,
        (input, output, cached, input),
        levels,
    )
}

/// Anthropic prices: cache write is 1.25× input (5-minute cache), cache read 0.1× input.
fn anthropic(
    id: &str,
    max_output: u64,
    input: f64,
    output: f64,
    levels: &[ThinkingLevel],
) -> ModelInfo {
    row(
        "anthropic",
        id,
        200_000,
        max_output,
        (input, output, input * 0.1, input * 1.25),
        levels,
    )
}

impl Catalog {
    /// The built-in models with their published prices (2025/2026 list prices, standard tier).
    pub fn builtin() -> Catalog {
        let models = vec![
            // OpenAI: (window, max output, input, cached input, output).
            openai("gpt-4o", 128_000, 16_384, 2.50, 1.25, 10.00, OFF),
            openai("gpt-4o-mini", 128_000, 16_384, 0.15, 0.075, 0.60, OFF),
            openai("gpt-4.1", 1_047_576, 32_768, 2.00, 0.50, 8.00, OFF),
            openai("gpt-4.1-mini", 1_047_576, 32_768, 0.40, 0.10, 1.60, OFF),
            openai("gpt-4.1-nano", 1_047_576, 32_768, 0.10, 0.025, 0.40, OFF),
            openai("o3", 200_000, 100_000, 2.00, 0.50, 8.00, REASONING),
            openai("o4-mini", 200_000, 100_000, 1.10, 0.275, 4.40, REASONING),
            openai("gpt-5", 400_000, 128_000, 1.25, 0.125, 10.00, REASONING),
            openai("gpt-5-mini", 400_000, 128_000, 0.25, 0.025, 2.00, REASONING),
            openai("gpt-5.2", 400_000, 128_000, 1.75, 0.175, 14.00, WITH_XHIGH),
            // Anthropic: (max output, input, output); every model has a 200k window.
            anthropic("claude-opus-4-6", 128_000, 5.00, 25.00, WITH_XHIGH),
            anthropic("claude-opus-4-1", 32_000, 15.00, 75.00, REASONING),
            anthropic("claude-sonnet-4-5", 64_000, 3.00, 15.00, REASONING),
            anthropic("claude-sonnet-4-0", 64_000, 3.00, 15.00, REASONING),
            anthropic("claude-3-7-sonnet-latest", 64_000, 3.00, 15.00, REASONING),
            anthropic("claude-haiku-4-5", 64_000, 1.00, 5.00, REASONING),
            anthropic("claude-3-5-haiku-latest", 8_192, 0.80, 4.00, OFF),
            // The local echo provider costs nothing: zero prices, so its cost is 0, not null.
            row("echo", "echo", 32_768, 32_768, (0.0, 0.0, 0.0, 0.0), OFF),
        ];
        Catalog {
            models,
            skipped: Vec::new(),
        }
    }

    /// An empty catalog, for callers that want only their own rows.
    pub fn empty() -> Catalog {
        Catalog::default()
    }

    /// Lays operator rows over this catalog: a row with the same provider and id (ASCII case
    /// ignored) replaces the existing one in place, a new one is appended. A row that fails
    /// [`ModelInfo::validate`] is left out and its reason recorded in [`Catalog::skipped`], so a
    /// bad row can never price a turn negatively or break lookups.
    pub fn with_overrides(mut self, rows: Vec<ModelInfo>) -> Catalog {
        for row in rows {
            if let Err(e) = row.validate() {
                self.skipped.push(e);
                continue;
            }
            match self
                .models
                .iter_mut()
                .find(|m| same(&m.provider, &row.provider) && same(&m.id, &row.id))
            {
                Some(existing) => *existing = row,
                None => self.models.push(row),
            }
        }
        self
    }

    /// Why operator rows were left out, one message per row.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Finds a model, ignoring ASCII case.
    ///
    /// `model` may be `provider/id`, and then the prefix names the provider. With an explicit
    /// `provider`, the model must belong to it: a prefix naming another provider finds nothing
    /// rather than guessing which of the two was meant. An id that itself contains `/` (as on
    /// OpenRouter) is tried whole before it is split. Without a provider, a bare id is found only
    /// when exactly one provider has it.
    pub fn lookup(&self, provider: Option<&str>, model: &str) -> Option<&ModelInfo> {
        let find = |p: &str, id: &str| {
            self.models
                .iter()
                .find(|m| same(&m.provider, p) && same(&m.id, id))
        };
        let split = model.split_once('/');
        match provider {
            Some(p) => find(p, model).or_else(|| match split {
                Some((prefix, id)) if same(prefix, p) => find(p, id),
                _ => None,
            }),
            None => split
                .and_then(|(prefix, id)| find(prefix, id))
                .or_else(|| self.unique_by_id(model)),
        }
    }

    /// The only model with this id across providers, if there is exactly one.
    fn unique_by_id(&self, id: &str) -> Option<&ModelInfo> {
        let mut matches = self.models.iter().filter(|m| same(&m.id, id));
        let first = matches.next()?;
        matches.next().is_none().then_some(first)
    }

    /// Every model, built-in ones first in their listed order, then added ones.
    pub fn all(&self) -> &[ModelInfo] {
        &self.models
    }

    /// The names a user can type to pick each model: the bare id when only one provider has it,
    /// else `provider/id`, so every name resolves through [`Catalog::lookup`] without a provider.
    pub fn model_ids(&self) -> Vec<String> {
        self.models
            .iter()
            .map(|m| match self.unique_by_id(&m.id) {
                Some(_) => m.id.clone(),
                None => m.qualified_id(),
            })
            .collect()
    }
}

/// Name equality for providers and ids: ASCII case is ignored because users type ids by hand.
fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Usage {
        Usage {
            input,
            output,
            cache_read,
            cache_write,
        }
    }

    #[test]
    fn every_builtin_row_validates() {
        let catalog = Catalog::builtin();
        for m in catalog.all() {
            assert_eq!(m.validate(), Ok(()), "{}", m.qualified_id());
        }
        assert_eq!(catalog.all().len(), 18);
    }

    #[test]
    fn a_million_input_tokens_of_gpt_4o_mini_cost_15_cents() {
        let c = Catalog::builtin();
        let m = c.lookup(Some("openai"), "gpt-4o-mini").unwrap();
        let cost = cost(m.prices.as_ref().unwrap(), &usage(1_000_000, 0, 0, 0));
        assert!(close(cost.input, 0.15));
        assert!(close(cost.total, 0.15));
        assert_eq!(cost.output, 0.0);
    }

    #[test]
    fn cost_of_a_mixed_anthropic_turn_matches_hand_computation() {
        // claude-sonnet-4-5: $3 in, $15 out, $0.30 cache read, $3.75 cache write per million.
        // 2,000 in = $0.006; 500 out = $0.0075; 10,000 read = $0.003; 4,000 write = $0.015.
        let c = Catalog::builtin();
        let m = c.lookup(None, "claude-sonnet-4-5").unwrap();
        let cost = cost(
            m.prices.as_ref().unwrap(),
            &usage(2_000, 500, 10_000, 4_000),
        );
        assert!(close(cost.input, 0.006));
        assert!(close(cost.output, 0.0075));
        assert!(close(cost.cache_read, 0.003));
        assert!(close(cost.cache_write, 0.015));
        assert!(close(cost.total, 0.0315));
    }

    #[test]
    fn cost_of_gpt_5_output_and_cached_input() {
        // gpt-5: $10 per million out, $0.125 per million cached in.
        let c = Catalog::builtin();
        let m = c.lookup(None, "gpt-5").unwrap();
        let cost = cost(m.prices.as_ref().unwrap(), &usage(0, 1_000, 1_000_000, 0));
        assert!(close(cost.output, 0.01));
        assert!(close(cost.cache_read, 0.125));
        assert!(close(cost.total, 0.135));
    }

    #[test]
    fn anthropic_cache_prices_follow_the_multipliers() {
        let c = Catalog::builtin();
        for m in c.all().iter().filter(|m| m.provider == "anthropic") {
            let p = m.prices.unwrap();
            assert!(close(p.cache_write, p.input * 1.25), "{}", m.id);
            assert!(close(p.cache_read, p.input * 0.1), "{}", m.id);
        }
        let opus = c.lookup(None, "claude-opus-4-1").unwrap().prices.unwrap();
        assert!(close(opus.cache_write, 18.75));
        assert!(close(opus.cache_read, 1.5));
    }

    #[test]
    fn echo_is_free_not_unknown() {
        let c = Catalog::builtin();
        let m = c.lookup(None, "echo/echo").unwrap();
        assert_eq!(m.context_window, 32_768);
        assert!(!m.reasoning);
        assert_eq!(m.thinking_levels, vec![ThinkingLevel::Off]);
        let cost = cost(m.prices.as_ref().unwrap(), &usage(123, 456, 7, 8));
        assert_eq!(cost, Cost::default());
    }

    #[test]
    fn cost_does_not_overflow_on_huge_usage() {
        let p = Prices {
            input: 75.0,
            output: 75.0,
            cache_read: 75.0,
            cache_write: 75.0,
        };
        let cost = cost(&p, &usage(u64::MAX, u64::MAX, u64::MAX, u64::MAX));
        assert!(cost.total.is_finite() && cost.total > 0.0);
    }

    #[test]
    fn cost_serialises_camel_case() {
        let p = Prices {
            input: 1.0,
            output: 2.0,
            cache_read: 0.5,
            cache_write: 4.0,
        };
        let v = serde_json::to_value(cost(&p, &usage(1_000_000, 1_000_000, 1_000_000, 1_000_000)))
            .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"input": 1.0, "output": 2.0, "cacheRead": 0.5, "cacheWrite": 4.0, "total": 7.5})
        );
    }

    #[test]
    fn lookup_by_provider_slash_model() {
        let c = Catalog::builtin();
        let m = c.lookup(None, "anthropic/claude-haiku-4-5").unwrap();
        assert_eq!(
            (m.provider.as_str(), m.id.as_str()),
            ("anthropic", "claude-haiku-4-5")
        );
        // A prefix agreeing with the explicit provider works too.
        assert!(c.lookup(Some("openai"), "openai/gpt-4.1").is_some());
        // A prefix naming another provider is refused, not guessed.
        assert!(c
            .lookup(Some("openai"), "anthropic/claude-haiku-4-5")
            .is_none());
        // The right id under the wrong provider is not found.
        assert!(c.lookup(Some("anthropic"), "gpt-4o").is_none());
        assert!(c.lookup(None, "nope/gpt-4o").is_none());
    }

    #[test]
    fn lookup_bare_id_and_case() {
        let c = Catalog::builtin();
        assert_eq!(c.lookup(None, "GPT-4o").unwrap().id, "gpt-4o");
        assert_eq!(c.lookup(Some("OpenAI"), "o3").unwrap().id, "o3");
        assert!(c.lookup(None, "").is_none());
        assert!(c.lookup(None, "/").is_none());
        assert!(c.lookup(None, "unknown-model").is_none());
    }

    #[test]
    fn bare_id_shared_by_two_providers_is_ambiguous() {
        let mut row = Catalog::builtin().lookup(None, "gpt-4o").unwrap().clone();
        row.provider = "openrouter".into();
        let c = Catalog::builtin().with_overrides(vec![row]);
        assert!(c.lookup(None, "gpt-4o").is_none());
        assert_eq!(
            c.lookup(None, "openrouter/gpt-4o").unwrap().provider,
            "openrouter"
        );
        assert_eq!(
            c.lookup(Some("openai"), "gpt-4o").unwrap().provider,
            "openai"
        );
        let ids = c.model_ids();
        assert!(ids.contains(&"openai/gpt-4o".to_string()));
        assert!(ids.contains(&"openrouter/gpt-4o".to_string()));
        assert!(ids.contains(&"gpt-4o-mini".to_string()));
        for id in &ids {
            assert!(c.lookup(None, id).is_some(), "{id}");
        }
    }

    #[test]
    fn ids_with_slashes_are_tried_whole_first() {
        let row = ModelInfo {
            provider: "openrouter".into(),
            id: "meta-llama/llama-3.3-70b".into(),
            context_window: 131_072,
            max_output: 8_192,
            prices: None,
            reasoning: false,
            thinking_levels: vec![ThinkingLevel::Off],
        };
        let c = Catalog::empty().with_overrides(vec![row]);
        assert!(c
            .lookup(Some("openrouter"), "meta-llama/llama-3.3-70b")
            .is_some());
        assert!(c
            .lookup(None, "openrouter/meta-llama/llama-3.3-70b")
            .is_some());
        assert!(c.lookup(None, "meta-llama/llama-3.3-70b").is_some());
    }

    #[test]
    fn override_replaces_and_adds() {
        let mut cheaper = Catalog::builtin().lookup(None, "gpt-4o").unwrap().clone();
        cheaper.id = "GPT-4o".into();
        cheaper.prices = Some(Prices {
            input: 1.0,
            output: 2.0,
            cache_read: 0.5,
            cache_write: 1.0,
        });
        let local = ModelInfo {
            provider: "ollama".into(),
            id: "qwen3:8b".into(),
            context_window: 40_960,
            max_output: 8_192,
            prices: None,
            reasoning: true,
            thinking_levels: vec![ThinkingLevel::Off, ThinkingLevel::High],
        };
        let before = Catalog::builtin().all().len();
        let c = Catalog::builtin().with_overrides(vec![cheaper, local]);
        assert_eq!(c.all().len(), before + 1);
        assert_eq!(c.lookup(None, "gpt-4o").unwrap().prices.unwrap().input, 1.0);
        let q = c.lookup(None, "ollama/qwen3:8b").unwrap();
        assert_eq!(q.prices, None);
        assert!(c.skipped().is_empty());
    }

    #[test]
    fn invalid_override_rows_are_skipped_with_a_reason() {
        let good = Catalog::builtin().lookup(None, "gpt-4o").unwrap().clone();
        let mut negative = good.clone();
        negative.prices.as_mut().unwrap().input = -1.0;
        let mut zero_window = good.clone();
        zero_window.context_window = 0;
        let c = Catalog::builtin().with_overrides(vec![negative, zero_window]);
        assert_eq!(c.skipped().len(), 2);
        assert!(c.skipped()[0].contains("price input"), "{}", c.skipped()[0]);
        assert!(
            c.skipped()[1].contains("contextWindow"),
            "{}",
            c.skipped()[1]
        );
        assert_eq!(c.lookup(None, "gpt-4o").unwrap().prices.unwrap().input, 2.5);
    }

    #[test]
    fn validate_reports_each_problem() {
        let base = Catalog::builtin().lookup(None, "o3").unwrap().clone();
        let check = |f: &dyn Fn(&mut ModelInfo), needle: &str| {
            let mut m = base.clone();
            f(&mut m);
            let e = m.validate().unwrap_err();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        };
        check(&|m| m.id.clear(), "model id must not be empty");
        check(&|m| m.provider.clear(), "provider must not be empty");
        check(&|m| m.id = "a b".into(), "whitespace");
        check(&|m| m.id = "x".repeat(201), "at most 200");
        check(&|m| m.max_output = 0, "maxOutput");
        check(
            &|m| m.prices.as_mut().unwrap().output = f64::NAN,
            "price output",
        );
        check(
            &|m| m.prices.as_mut().unwrap().cache_write = f64::INFINITY,
            "price cacheWrite",
        );
        check(
            &|m| m.thinking_levels = vec![ThinkingLevel::High],
            "include \"off\"",
        );
        check(&|m| m.reasoning = false, "reasoning=false");
    }

    #[test]
    fn thinking_levels_for_known_and_unknown_models() {
        let c = Catalog::builtin();
        let levels = |id: &str| thinking_levels_for(c.lookup(None, id), id);
        assert_eq!(levels("gpt-4o"), vec![ThinkingLevel::Off]);
        // Every reasoning model offers what the reference gateway's agent offers.
        for id in ["o4-mini", "gpt-5", "claude-sonnet-4-5", "claude-opus-4-1"] {
            assert_eq!(levels(id), ThinkingLevel::STANDARD.to_vec(), "{id}");
        }
        for id in ["gpt-5.2", "claude-opus-4-6"] {
            assert_eq!(levels(id), ThinkingLevel::ALL.to_vec(), "{id}");
            assert!(crate::llm::supports_xhigh(id));
        }
        assert_eq!(
            thinking_levels_for(None, "qwen3"),
            ThinkingLevel::STANDARD.to_vec()
        );
        assert_eq!(
            thinking_levels_for(None, "gpt-5.4-preview"),
            ThinkingLevel::ALL.to_vec()
        );
        // A row built by hand without `off`, unsorted and repeated, is normalised.
        let mut odd = c.lookup(None, "o3").unwrap().clone();
        odd.thinking_levels = vec![ThinkingLevel::High, ThinkingLevel::Low, ThinkingLevel::High];
        assert_eq!(
            thinking_levels_for(Some(&odd), "o3"),
            vec![ThinkingLevel::Off, ThinkingLevel::Low, ThinkingLevel::High]
        );
        // An operator row may offer xhigh.
        let row: ModelInfo = serde_json::from_value(serde_json::json!({
            "provider": "openai", "id": "house", "contextWindow": 1000, "maxOutput": 100,
            "reasoning": true, "thinkingLevels": ["off", "xhigh"]
        }))
        .unwrap();
        assert_eq!(row.validate(), Ok(()));
        assert_eq!(
            thinking_levels_for(Some(&row), "house"),
            vec![ThinkingLevel::Off, ThinkingLevel::Xhigh]
        );
    }

    #[test]
    fn model_info_round_trips_camel_case_with_defaults() {
        let v = serde_json::json!({
            "provider": "vllm", "id": "mistral-small", "contextWindow": 32768, "maxOutput": 4096
        });
        let m: ModelInfo = serde_json::from_value(v).unwrap();
        assert_eq!(m.prices, None);
        assert!(!m.reasoning);
        assert_eq!(m.thinking_levels, vec![ThinkingLevel::Off]);
        assert_eq!(m.validate(), Ok(()));
        let out = serde_json::to_value(Catalog::builtin().lookup(None, "o3").unwrap()).unwrap();
        assert_eq!(out["contextWindow"], 200_000);
        assert_eq!(out["prices"]["cacheRead"], 0.5);
        assert_eq!(
            out["thinkingLevels"],
            serde_json::json!(["off", "minimal", "low", "medium", "high"])
        );
    }
}
