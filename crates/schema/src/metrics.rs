//! Per-iteration metrics of an RFT run: what one policy did on one split
//! ([`SplitMetrics`]) and what one iteration did as a whole ([`IterationMetrics`], the
//! `iter-NNN/metrics.json` of a run directory).
//!
//! Indexing: policy_0 is the base model, policy_{i+1} = base + adapter_i. Iteration i
//! samples the train split with policy_i and trains adapter_i; its `test` metrics are
//! policy_{i+1}'s held-out evaluation. policy_0's held-out evaluation (the zero-shot row)
//! is the run's `zero-shot/metrics.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rollout::{ExitReason, Rollout};

/// What one policy did on one split: rates are over rollouts (in [0, 1]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMetrics {
    /// `train` or `test`.
    pub split: String,
    /// Which policy: `base`, `base+adapter-000`, `oracle`, …
    pub policy: String,
    pub rollouts: u64,
    /// Distinct tasks sampled.
    pub instances: u64,
    /// Rollouts whose patch resolved the task.
    pub resolved: u64,
    /// Resolved rollouts / rollouts (with one rollout per task, the paper's resolve rate).
    pub resolve_rate: f64,
    /// Distinct tasks with at least one resolved rollout.
    pub unique_resolved: u64,
    pub empty_patch: u64,
    /// Rollouts whose patch changes nothing outside test files / rollouts.
    pub empty_patch_rate: f64,
    /// Rollouts not graded (no verdict): counted in the denominators as unresolved.
    pub ungraded: u64,
    /// Rollouts per exit reason (every reason present, zeros included).
    pub exit_reasons: BTreeMap<String, u64>,
    /// Assistant turns (LM calls) per rollout.
    pub mean_turns: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Sampling + grading wall time of the stage that produced these rollouts.
    pub wall_s: f64,
    /// Held-out split with k > 1 rollouts per task: Pass@1, Pass@k and, with a verifier,
    /// Best@k and Random@k (absent otherwise, and in metrics written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_k: Option<AtK>,
    /// Held-out split: per task, the share of its rollouts that resolved it and that had an
    /// empty patch (what the report's bootstrap intervals and paired comparisons resample);
    /// absent on the train split and in metrics written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_task: Option<BTreeMap<String, TaskOutcome>>,
    /// Train split: the tasks by how often the policy solved them — in every one of its
    /// rollouts, in some, in none (a curriculum's signal: only the middle group teaches
    /// something new); absent on the held-out split and in metrics written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_mix: Option<TaskMix>,
}

/// Who picks the one rollout per task that is submitted on the held-out split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Submitter {
    /// Rollout 0 (the greedy one): the submitted rate is Pass@1.
    RolloutZero,
    /// The verifier's highest-p(YES) rollout: the submitted rate is Best@k.
    Verifier,
}

/// Rates over tasks (in [0, 1]) when each held-out task has k rollouts, rollout 0 at the
/// evaluation temperature and the others sampled (the SWE-Gym paper's inference-time
/// scaling, App. B.1, computed with `swegym verifier eval`'s functions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AtK {
    pub k: u32,
    /// Tasks with k rollouts (the ones averaged).
    pub instances: u64,
    /// Rollout 0 resolved.
    pub pass_at_1: f64,
    /// Some rollout of the k resolved.
    pub pass_at_k: f64,
    /// The verifier's pick (highest p(YES); ties: the lower sample index) resolved; None
    /// without a verifier.
    pub best_at_k: Option<f64>,
    /// The expected value of a uniform pick (the share of resolved rollouts per task); None
    /// without a verifier.
    pub random_at_k: Option<f64>,
    pub submitted_by: Submitter,
    /// Pass@1 or Best@k, as `submitted_by` says.
    pub submitted_resolve_rate: f64,
}

/// Tasks by how often the policy solved them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMix {
    pub always: u64,
    pub sometimes: u64,
    pub never: u64,
}

/// One task's outcome on a split: shares of its rollouts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TaskOutcome {
    pub resolved: f64,
    pub empty_patch: f64,
}

impl SplitMetrics {
    /// Metrics of graded rollouts (`resolved` null counts as unresolved and `ungraded`).
    pub fn from_rollouts(split: &str, policy: &str, rollouts: &[Rollout], wall_s: f64) -> SplitMetrics {
        let n = rollouts.len() as u64;
        let rate = |k: u64| if n == 0 { 0.0 } else { k as f64 / n as f64 };
        let resolved = rollouts.iter().filter(|r| r.resolved == Some(true)).count() as u64;
        let empty_patch = rollouts.iter().filter(|r| r.empty_patch).count() as u64;
        let instances: std::collections::BTreeSet<&str> = rollouts.iter().map(|r| r.instance_id.as_str()).collect();
        let solved: std::collections::BTreeSet<&str> =
            rollouts.iter().filter(|r| r.resolved == Some(true)).map(|r| r.instance_id.as_str()).collect();
        let exit_reasons = ExitReason::ALL
            .iter()
            .map(|reason| (reason.as_str().to_string(), rollouts.iter().filter(|r| r.exit_reason == *reason).count() as u64))
            .collect();
        SplitMetrics {
            split: split.to_string(),
            policy: policy.to_string(),
            rollouts: n,
            instances: instances.len() as u64,
            resolved,
            resolve_rate: rate(resolved),
            unique_resolved: solved.len() as u64,
            empty_patch,
            empty_patch_rate: rate(empty_patch),
            ungraded: rollouts.iter().filter(|r| r.resolved.is_none()).count() as u64,
            exit_reasons,
            mean_turns: if n == 0 { 0.0 } else { rollouts.iter().map(|r| r.turns as f64).sum::<f64>() / n as f64 },
            prompt_tokens: rollouts.iter().map(|r| r.prompt_tokens).sum(),
            completion_tokens: rollouts.iter().map(|r| r.completion_tokens).sum(),
            wall_s,
            at_k: None,
            per_task: (split == "test").then(|| per_task(rollouts)),
            task_mix: (split == "train").then(|| task_mix(rollouts)),
        }
    }

    /// The share of rollouts that ended for `reason`.
    pub fn exit_rate(&self, reason: ExitReason) -> f64 {
        let k = self.exit_reasons.get(reason.as_str()).copied().unwrap_or(0);
        if self.rollouts == 0 { 0.0 } else { k as f64 / self.rollouts as f64 }
    }
}

/// Per task: the share of its rollouts resolved and with an empty patch.
pub fn per_task(rollouts: &[Rollout]) -> BTreeMap<String, TaskOutcome> {
    let mut counts: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
    for r in rollouts {
        let c = counts.entry(r.instance_id.clone()).or_default();
        c.0 += 1;
        c.1 += u32::from(r.resolved == Some(true));
        c.2 += u32::from(r.empty_patch);
    }
    counts.into_iter().map(|(id, (n, res, empty))| (id, TaskOutcome { resolved: f64::from(res) / f64::from(n), empty_patch: f64::from(empty) / f64::from(n) })).collect()
}

/// The tasks of `rollouts` by how many of their rollouts resolved them.
pub fn task_mix(rollouts: &[Rollout]) -> TaskMix {
    let mut mix = TaskMix::default();
    for t in per_task(rollouts).values() {
        match t.resolved {
            r if r >= 1.0 => mix.always += 1,
            r if r > 0.0 => mix.sometimes += 1,
            _ => mix.never += 1,
        }
    }
    mix
}

/// What the rejection filter did in one iteration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterCounts {
    /// Rollouts that entered the filter (policy samples plus warm-start rollouts).
    pub input: u64,
    pub kept: u64,
    /// Drops by reason (`not_resolved`, `too_long`, `duplicate_patch`, `over_instance_cap`, …).
    pub dropped: BTreeMap<String, u64>,
}

/// What training did in one iteration (or why it did not train).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainMetrics {
    /// False when the iteration kept nothing new and the previous adapter was carried.
    pub trained: bool,
    /// Why training was skipped (null when it ran).
    pub skipped_reason: Option<String>,
    /// SFT examples the adapter was trained on (cumulative over iterations 0..=i).
    pub examples: u64,
    pub examples_used: u64,
    /// Examples the trainer dropped, by reason (`too_long`, …).
    pub examples_dropped: BTreeMap<String, u64>,
    pub steps: u64,
    pub tokens: u64,
    pub loss_first: Option<f64>,
    pub loss_last: Option<f64>,
    pub tokens_per_s: f64,
    /// The adapter policy_{i+1} uses (`iter-NNN/adapter`, or an earlier one when carried).
    pub adapter: Option<String>,
}

/// One iteration of an RFT run (`iter-NNN/metrics.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationMetrics {
    pub iteration: u32,
    /// policy_i on the train split (the rollouts the filter saw).
    pub train: SplitMetrics,
    /// Warm-start rollouts (oracle) or records (an SFT file) added in this iteration.
    pub warm_start: Option<SplitMetrics>,
    /// Records read from a warm-start SFT file (kept as they are).
    pub warm_start_records: u64,
    pub filter: FilterCounts,
    /// SFT records exported by this iteration (its `sft.parquet`).
    pub kept: u64,
    /// SFT records of iterations 0..=i (what adapter_i trains on).
    pub kept_cumulative: u64,
    pub training: TrainMetrics,
    /// policy_{i+1} on the held-out split at temperature 0.
    pub test: SplitMetrics,
    /// Wall seconds per stage (`sample`, `warm_start`, `filter`, `export`, `train`, `eval`).
    pub stage_seconds: BTreeMap<String, f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::Message;

    fn rollout(id: &str, idx: u32, reason: ExitReason, resolved: Option<bool>, empty: bool, turns: u32) -> Rollout {
        Rollout {
            instance_id: id.into(),
            sample_idx: idx,
            iteration: 0,
            policy_id: "p".into(),
            messages: vec![Message::user("x")],
            patch: String::new(),
            empty_patch: empty,
            exit_reason: reason,
            turns,
            prompt_tokens: 10,
            completion_tokens: 2,
            wall_seconds: 1.0,
            temperature: 1.0,
            seed: 0,
            error: None,
            resolved,
            status: None,
        }
    }

    #[test]
    fn rates_over_rollouts() {
        let rs = vec![
            rollout("a", 0, ExitReason::Submitted, Some(true), false, 3),
            rollout("a", 1, ExitReason::Submitted, Some(true), false, 5),
            rollout("b", 0, ExitReason::StuckInLoop, Some(false), true, 10),
            rollout("c", 0, ExitReason::MaxTurns, None, true, 30),
        ];
        let m = SplitMetrics::from_rollouts("train", "base", &rs, 2.0);
        assert_eq!((m.rollouts, m.instances, m.resolved, m.unique_resolved, m.empty_patch, m.ungraded), (4, 3, 2, 1, 2, 1));
        assert_eq!(m.resolve_rate, 0.5);
        assert_eq!(m.empty_patch_rate, 0.5);
        assert_eq!(m.exit_rate(ExitReason::StuckInLoop), 0.25);
        assert_eq!(m.exit_reasons.len(), ExitReason::ALL.len());
        assert_eq!(m.mean_turns, 12.0);
        assert_eq!((m.prompt_tokens, m.completion_tokens), (40, 8));
        let empty = SplitMetrics::from_rollouts("test", "base", &[], 0.0);
        assert_eq!((empty.resolve_rate, empty.mean_turns), (0.0, 0.0));
        // a: 2 of 2 resolved; b: 0 of 1; c: ungraded (not resolved)
        assert_eq!(m.task_mix, Some(TaskMix { always: 1, sometimes: 0, never: 2 }));
        assert!(m.per_task.is_none(), "per-task outcomes are kept for the held-out split");
        let mixed = [rollout("a", 0, ExitReason::Submitted, Some(true), false, 3), rollout("a", 1, ExitReason::Submitted, Some(false), false, 3)];
        assert_eq!(task_mix(&mixed), TaskMix { always: 0, sometimes: 1, never: 0 });
        let test = SplitMetrics::from_rollouts("test", "base", &mixed, 1.0);
        assert_eq!(test.per_task.unwrap()["a"], TaskOutcome { resolved: 0.5, empty_patch: 0.0 });
        assert!(test.task_mix.is_none());
    }

    #[test]
    fn metrics_without_at_k_still_load() {
        let m = SplitMetrics::from_rollouts("test", "base", &[rollout("a", 0, ExitReason::Submitted, Some(true), false, 3)], 1.0);
        let json = serde_json::to_value(&m).unwrap();
        assert!(json.get("at_k").is_none(), "absent, not null, when there is nothing at k: {json}");
        let back: SplitMetrics = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
    }
}
