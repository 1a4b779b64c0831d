//! swegym-filter: the rejection step of RFT. Each rollout gets exactly one [`Decision`]:
//! keep, or drop with the [`DropReason`] of the first rule that rejected it.
//!
//! The rules ([`FilterRule`]) run in a fixed order, each over the rollouts the earlier ones
//! kept: [`FilterRule::Resolved`] (RFT's reward threshold: the patch resolved the task),
//! [`FilterRule::MaxTokens`] (over-long trajectories), [`FilterRule::DedupPatches`] (a patch
//! another kept rollout of the same task already has), [`FilterRule::PerInstanceCap`] (at
//! most N per task). The two set rules visit each task's rollouts in the configured
//! [`Preference`] order, so the preferred rollout of a group is the one kept — by turns, by
//! sample order, or by a verifier's p(YES) that the caller hands in. The defaults
//! are the SWE-Gym paper's (§3.3, Table 4): resolved only, at most 2 per instance
//! preferring fewer LM calls, duplicate patches dropped, 32,768 tokens at most.
//!
//! Architecture invariant: knows rollouts and numbers only — no files, no tokenizer (the
//! caller hands in each rollout's token count), no model (the caller hands in the
//! verifier's scores).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use swegym_schema::patch::clean_patch;
use swegym_schema::Rollout;

/// Which rollouts of a task a set rule keeps first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preference {
    /// Fewer assistant turns (LM calls) first, then fewer tokens, then sample order (the
    /// paper's choice).
    FewerTurns,
    /// Sample order (`sample_idx`).
    First,
    /// Higher verifier score (p(YES)) first — a rollout without one last — then as
    /// `FewerTurns`. `swegym run` sets it for `[verifier] select_keep = true`.
    VerifierScore,
}

/// One rejection rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum FilterRule {
    /// Keep only rollouts whose patch resolved the task.
    Resolved,
    /// Drop rollouts of more than this many tokens (the whole conversation, rendered).
    MaxTokens { max: usize },
    /// Drop a rollout whose patch equals that of a preferred kept rollout of the same task.
    DedupPatches,
    /// Keep at most `max` rollouts per task.
    PerInstanceCap { max: usize },
}

impl FilterRule {
    pub fn name(self) -> &'static str {
        match self {
            FilterRule::Resolved => "resolved",
            FilterRule::MaxTokens { .. } => "max_tokens",
            FilterRule::DedupPatches => "dedup_patches",
            FilterRule::PerInstanceCap { .. } => "per_instance_cap",
        }
    }

    /// The order rules run in (per-rollout rules first, then the set rules).
    fn rank(self) -> u8 {
        match self {
            FilterRule::Resolved => 0,
            FilterRule::MaxTokens { .. } => 1,
            FilterRule::DedupPatches => 2,
            FilterRule::PerInstanceCap { .. } => 3,
        }
    }
}

/// Why a rollout was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Graded, not resolved.
    NotResolved,
    /// Never graded (no verdict), so not known to be resolved.
    NotGraded,
    TooLong,
    DuplicatePatch,
    OverInstanceCap,
}

impl DropReason {
    pub const ALL: [DropReason; 5] =
        [DropReason::NotResolved, DropReason::NotGraded, DropReason::TooLong, DropReason::DuplicatePatch, DropReason::OverInstanceCap];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NotResolved => "not_resolved",
            DropReason::NotGraded => "not_graded",
            DropReason::TooLong => "too_long",
            DropReason::DuplicatePatch => "duplicate_patch",
            DropReason::OverInstanceCap => "over_instance_cap",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The filter's verdict on one rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Keep,
    Drop(DropReason),
}

/// A rollout and its length in tokens (counted by the caller, e.g. with the policy's chat
/// template, so the length rule agrees with what the trainer will see).
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub rollout: &'a Rollout,
    pub n_tokens: usize,
    /// The verifier's p(YES) for this rollout, when it was scored (read by
    /// [`Preference::VerifierScore`] only).
    pub score: Option<f64>,
}

/// Resolved filter settings: the rules to run and the preference of the set rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilterConfig {
    /// In run order (sorted by [`FilterConfig::new`]).
    pub rules: Vec<FilterRule>,
    pub prefer: Preference,
}

impl FilterConfig {
    pub fn new(mut rules: Vec<FilterRule>, prefer: Preference) -> FilterConfig {
        rules.sort_by_key(|r| r.rank());
        rules.dedup_by_key(|r| r.rank());
        FilterConfig { rules, prefer }
    }
}

impl Default for FilterConfig {
    /// The SWE-Gym paper's filter.
    fn default() -> Self {
        FilterConfig::new(
            vec![
                FilterRule::Resolved,
                FilterRule::MaxTokens { max: DEFAULT_MAX_TOKENS },
                FilterRule::DedupPatches,
                FilterRule::PerInstanceCap { max: DEFAULT_MAX_PER_INSTANCE },
            ],
            Preference::FewerTurns,
        )
    }
}

/// The verifier recipe's length limit (examples of 32,768 tokens or more are dropped).
pub const DEFAULT_MAX_TOKENS: usize = 32_768;
/// The paper's best cap (Table 4).
pub const DEFAULT_MAX_PER_INSTANCE: usize = 2;

/// Which rollouts the `Resolved` rule lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// Only resolved rollouts (RFT).
    Resolved,
    /// Every rollout (no reward threshold; e.g. to distil all teacher data).
    All,
}

/// The raw `[filter]` table of a run config (every key optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilterConfig {
    /// `resolved` (default) or `all`.
    pub keep: Option<Keep>,
    /// At most this many per task (default 2; 0 = no cap).
    pub max_per_instance: Option<usize>,
    /// `fewer_turns` (default) or `first`.
    pub prefer: Option<Preference>,
    /// Drop duplicate patches within a task (default true).
    pub dedup_patches: Option<bool>,
    /// Drop trajectories over this many tokens (default 32768; 0 = no limit).
    pub max_tokens: Option<usize>,
}

/// A bad `[filter]` setting.
#[derive(Debug, thiserror::Error)]
#[error("{what}: key `{key}`: {problem}")]
pub struct FilterConfigError {
    pub what: String,
    pub key: String,
    pub problem: String,
}

impl RawFilterConfig {
    /// Validates into a [`FilterConfig`]; `what` names the source in errors.
    pub fn resolve(self, what: &str) -> Result<FilterConfig, FilterConfigError> {
        let mut rules = Vec::new();
        if self.keep.unwrap_or(Keep::Resolved) == Keep::Resolved {
            rules.push(FilterRule::Resolved);
        }
        match self.max_tokens {
            Some(0) => {}
            Some(max) if max < 64 => {
                return Err(FilterConfigError {
                    what: what.into(),
                    key: "max_tokens".into(),
                    problem: format!("{max} tokens cannot hold a trajectory (use 0 for no limit)"),
                })
            }
            Some(max) => rules.push(FilterRule::MaxTokens { max }),
            None => rules.push(FilterRule::MaxTokens { max: DEFAULT_MAX_TOKENS }),
        }
        if self.dedup_patches.unwrap_or(true) {
            rules.push(FilterRule::DedupPatches);
        }
        match self.max_per_instance.unwrap_or(DEFAULT_MAX_PER_INSTANCE) {
            0 => {}
            max => rules.push(FilterRule::PerInstanceCap { max }),
        }
        Ok(FilterConfig::new(rules, self.prefer.unwrap_or(Preference::FewerTurns)))
    }
}

/// What the filter decided, aligned with its input.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterOutcome {
    pub decisions: Vec<Decision>,
}

impl FilterOutcome {
    /// Indices of the kept rollouts, in input order.
    pub fn kept(&self) -> Vec<usize> {
        self.decisions.iter().enumerate().filter(|(_, d)| **d == Decision::Keep).map(|(i, _)| i).collect()
    }

    /// Drops by reason (every reason present, zeros included).
    pub fn dropped(&self) -> BTreeMap<DropReason, usize> {
        let mut counts: BTreeMap<DropReason, usize> = DropReason::ALL.iter().map(|r| (*r, 0)).collect();
        for d in &self.decisions {
            if let Decision::Drop(reason) = d {
                *counts.entry(*reason).or_default() += 1;
            }
        }
        counts
    }

    /// The counts in the metrics' shape.
    pub fn counts(&self) -> swegym_schema::FilterCounts {
        swegym_schema::FilterCounts {
            input: self.decisions.len() as u64,
            kept: self.kept().len() as u64,
            dropped: self.dropped().into_iter().map(|(r, n)| (r.as_str().to_string(), n as u64)).collect(),
        }
    }
}

/// keep or drop, as a run's `filter.json` writes it (the reason is a field of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Keep,
    Drop,
}

/// The decision on one rollout as a record: which rollout (by key), its length, keep or
/// drop with the reason, and the verifier's p(YES) when the filter ordered by it. A run
/// writes these rows to `filter.json` and its export stage keeps the rollouts they keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRow {
    pub instance_id: String,
    pub sample_idx: u32,
    pub policy_id: String,
    pub n_tokens: usize,
    pub decision: DecisionKind,
    pub reason: Option<DropReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_yes: Option<f64>,
}

impl DecisionRow {
    /// The row of `candidate`'s `decision`.
    pub fn new(candidate: &Candidate<'_>, decision: Decision) -> DecisionRow {
        let (kind, reason) = match decision {
            Decision::Keep => (DecisionKind::Keep, None),
            Decision::Drop(reason) => (DecisionKind::Drop, Some(reason)),
        };
        let r = candidate.rollout;
        DecisionRow {
            instance_id: r.instance_id.clone(),
            sample_idx: r.sample_idx,
            policy_id: r.policy_id.clone(),
            n_tokens: candidate.n_tokens,
            decision: kind,
            reason,
            p_yes: candidate.score,
        }
    }

    /// Whether this row keeps `rollout` (the same task; a row of another rollout keeps nothing).
    pub fn keeps(&self, rollout: &Rollout) -> bool {
        self.decision == DecisionKind::Keep && self.instance_id == rollout.instance_id
    }
}

impl FilterOutcome {
    /// One [`DecisionRow`] per candidate, aligned with `candidates`.
    pub fn rows(&self, candidates: &[Candidate<'_>]) -> Vec<DecisionRow> {
        candidates.iter().zip(&self.decisions).map(|(c, d)| DecisionRow::new(c, *d)).collect()
    }
}

/// Decides keep or drop(reason) for every candidate.
pub fn filter(candidates: &[Candidate<'_>], config: &FilterConfig) -> FilterOutcome {
    let mut decisions = vec![Decision::Keep; candidates.len()];
    let order = preference_order(candidates, config.prefer);
    for rule in &config.rules {
        match *rule {
            FilterRule::Resolved => {
                for (d, c) in decisions.iter_mut().zip(candidates) {
                    if *d == Decision::Keep {
                        match c.rollout.resolved {
                            Some(true) => {}
                            Some(false) => *d = Decision::Drop(DropReason::NotResolved),
                            None => *d = Decision::Drop(DropReason::NotGraded),
                        }
                    }
                }
            }
            FilterRule::MaxTokens { max } => {
                for (d, c) in decisions.iter_mut().zip(candidates) {
                    if *d == Decision::Keep && c.n_tokens > max {
                        *d = Decision::Drop(DropReason::TooLong);
                    }
                }
            }
            FilterRule::DedupPatches => {
                let mut seen: HashSet<(&str, String)> = HashSet::new();
                for &i in &order {
                    if decisions[i] == Decision::Keep {
                        let r = candidates[i].rollout;
                        if !seen.insert((r.instance_id.as_str(), patch_key(&r.patch))) {
                            decisions[i] = Decision::Drop(DropReason::DuplicatePatch);
                        }
                    }
                }
            }
            FilterRule::PerInstanceCap { max } => {
                let mut per_task: HashMap<&str, usize> = HashMap::new();
                for &i in &order {
                    if decisions[i] == Decision::Keep {
                        let n = per_task.entry(candidates[i].rollout.instance_id.as_str()).or_default();
                        if *n >= max {
                            decisions[i] = Decision::Drop(DropReason::OverInstanceCap);
                        } else {
                            *n += 1;
                        }
                    }
                }
            }
        }
    }
    FilterOutcome { decisions }
}

/// Candidate indices in preference order (ties broken by input order, so the result is
/// deterministic).
fn preference_order(candidates: &[Candidate<'_>], prefer: Preference) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    match prefer {
        Preference::FewerTurns => order.sort_by_key(|&i| {
            let c = &candidates[i];
            (c.rollout.turns, c.n_tokens, c.rollout.sample_idx, i)
        }),
        Preference::First => order.sort_by_key(|&i| (candidates[i].rollout.sample_idx, i)),
        Preference::VerifierScore => {
            let fewer_turns = |i: usize| {
                let c = &candidates[i];
                (c.rollout.turns, c.n_tokens, c.rollout.sample_idx, i)
            };
            // higher score first; unscored (None) after every scored one
            let key = |i: usize| candidates[i].score.map_or(f64::NEG_INFINITY, |p| if p.is_nan() { f64::NEG_INFINITY } else { p });
            order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then_with(|| candidates[a].score.is_none().cmp(&candidates[b].score.is_none())).then_with(|| fewer_turns(a).cmp(&fewer_turns(b))));
        }
    }
    order
}

/// Patches compare after the harness's clean-up (CRLF, fences, final newline) and with
/// trailing whitespace ignored.
fn patch_key(patch: &str) -> String {
    clean_patch(patch).lines().map(str::trim_end).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use swegym_schema::{ExitReason, Message};

    /// (instance, sample_idx, resolved, turns, tokens, patch)
    type Row = (&'static str, u32, Option<bool>, u32, usize, &'static str);

    fn rollouts(rows: &[Row]) -> Vec<Rollout> {
        rows.iter()
            .map(|&(id, idx, resolved, turns, _, patch)| Rollout {
                instance_id: id.into(),
                sample_idx: idx,
                iteration: 0,
                policy_id: "p".into(),
                messages: vec![Message::user("x")],
                patch: patch.into(),
                empty_patch: patch.is_empty(),
                exit_reason: ExitReason::Submitted,
                turns,
                prompt_tokens: 0,
                completion_tokens: 0,
                wall_seconds: 0.0,
                temperature: 1.0,
                seed: 0,
                error: None,
                resolved,
                status: None,
            })
            .collect()
    }

    fn check(rows: &[Row], config: &FilterConfig, expect: &[&str]) {
        check_scored(rows, &vec![None; rows.len()], config, expect);
    }

    /// `check` with a verifier score per row.
    fn check_scored(rows: &[Row], scores: &[Option<f64>], config: &FilterConfig, expect: &[&str]) {
        let rs = rollouts(rows);
        let candidates: Vec<Candidate<'_>> =
            rs.iter().zip(rows).zip(scores).map(|((r, row), &score)| Candidate { rollout: r, n_tokens: row.4, score }).collect();
        let outcome = filter(&candidates, config);
        let got: Vec<&str> = outcome
            .decisions
            .iter()
            .map(|d| match d {
                Decision::Keep => "keep",
                Decision::Drop(r) => r.as_str(),
            })
            .collect();
        assert_eq!(got, expect, "rows {rows:?}");
        let counts = outcome.counts();
        assert_eq!(counts.input as usize, rows.len());
        assert_eq!(counts.kept + counts.dropped.values().sum::<u64>(), counts.input);
    }

    const P1: &str = "diff --git a/x.py b/x.py\n-a\n+b\n";
    const P1_CRLF: &str = "diff --git a/x.py b/x.py\r\n-a\r\n+b  \r\n";
    const P2: &str = "diff --git a/x.py b/x.py\n-a\n+c\n";
    const P3: &str = "diff --git a/x.py b/x.py\n-a\n+d\n";

    #[test]
    fn paper_defaults() {
        let d = FilterConfig::default();
        check(
            &[
                ("a", 0, Some(true), 9, 100, P1),
                ("a", 1, Some(true), 3, 100, P2),
                ("a", 2, Some(true), 5, 100, P3),
                ("a", 3, Some(true), 2, 100, P1_CRLF), // same patch as #0 after clean-up, fewer turns: kept instead
                ("a", 4, Some(false), 1, 100, P3),
                ("b", 0, None, 1, 100, P1),
                ("b", 1, Some(true), 4, 40_000, P1),
                ("c", 0, Some(true), 4, 100, P1),
            ],
            &d,
            &["duplicate_patch", "keep", "over_instance_cap", "keep", "not_resolved", "not_graded", "too_long", "keep"],
        );
    }

    #[test]
    fn raw_config_variants() {
        let parse = |text: &str| toml::from_str::<RawFilterConfig>(text).unwrap().resolve("t").unwrap();
        assert_eq!(parse(""), FilterConfig::default());
        let rows: &[Row] = &[("a", 0, Some(false), 9, 100, P1), ("a", 1, Some(true), 3, 100, P1), ("a", 2, Some(true), 1, 100, P2)];
        check(rows, &parse("keep = 'all'\nmax_per_instance = 0\ndedup_patches = false"), &["keep", "keep", "keep"]);
        check(rows, &parse("keep = 'all'\nmax_per_instance = 1\nprefer = 'first'"), &["keep", "duplicate_patch", "over_instance_cap"]);
        check(rows, &parse("max_per_instance = 1"), &["not_resolved", "over_instance_cap", "keep"]);
        check(rows, &parse("max_tokens = 99"), &["not_resolved", "too_long", "too_long"]);
        let unknown = toml::from_str::<RawFilterConfig>("max_per_task = 1").unwrap_err().to_string();
        assert!(unknown.contains("max_per_task"), "{unknown}");
        let bad = toml::from_str::<RawFilterConfig>("max_tokens = 10").unwrap().resolve("[filter] of x.toml").unwrap_err().to_string();
        assert!(bad.contains("[filter] of x.toml: key `max_tokens`"), "{bad}");
    }

    #[test]
    fn verifier_score_picks_what_the_cap_and_dedup_keep() {
        let c = FilterConfig::new(vec![FilterRule::Resolved, FilterRule::DedupPatches, FilterRule::PerInstanceCap { max: 1 }], Preference::VerifierScore);
        let rows: &[Row] = &[
            ("a", 0, Some(true), 1, 10, P1),  // fewest turns, low score
            ("a", 1, Some(true), 9, 10, P2),  // highest score: kept
            ("a", 2, Some(false), 1, 10, P3), // higher score still, but not resolved
            ("b", 0, Some(true), 5, 10, P1),  // same patch as b#1, lower score: the duplicate
            ("b", 1, Some(true), 6, 10, P1),
            ("c", 0, Some(true), 4, 10, P1), // unscored goes last
            ("c", 1, Some(true), 5, 10, P2),
            ("d", 0, Some(true), 4, 10, P1), // equal scores: fewer turns
            ("d", 1, Some(true), 3, 10, P2),
        ];
        let scores = [Some(0.1), Some(0.6), Some(0.9), Some(0.3), Some(0.4), None, Some(0.01), Some(0.5), Some(0.5)];
        check_scored(
            rows,
            &scores,
            &c,
            &["over_instance_cap", "keep", "not_resolved", "duplicate_patch", "keep", "over_instance_cap", "keep", "over_instance_cap", "keep"],
        );
        // without scores the same rows fall back to fewer turns
        check(rows, &c, &["keep", "over_instance_cap", "not_resolved", "keep", "duplicate_patch", "keep", "over_instance_cap", "over_instance_cap", "keep"]);
    }

    #[test]
    fn rules_run_in_a_fixed_order() {
        let c = FilterConfig::new(vec![FilterRule::PerInstanceCap { max: 1 }, FilterRule::Resolved], Preference::First);
        assert_eq!(c.rules, vec![FilterRule::Resolved, FilterRule::PerInstanceCap { max: 1 }]);
        // The cap counts only resolved rollouts: the unresolved #0 does not use the slot.
        check(&[("a", 0, Some(false), 1, 1, P1), ("a", 1, Some(true), 1, 1, P2)], &c, &["not_resolved", "keep"]);
    }
}
