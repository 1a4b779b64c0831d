//! The stages of a run and their manifests, typed: [`Stage`] names each (its manifest is
//! `<stage>.manifest.json`), [`Manifest`] holds the done-marker, timing and outputs of one,
//! and each stage's `details` is a struct of its own, read back by field, never by a string
//! key. The JSON on disk is the shape runs have always written, so run folders made before
//! these types existed still resume and report.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use swegym_export::ExportSummary;
use swegym_schema::{FilterCounts, TrainMetrics};
use swegym_train::TrainNumbers;
use swegym_verifier::metrics::Classifier;

/// A stage of the run loop (see the `run` module doc for the sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The held-out evaluation of a policy.
    Eval,
    /// p(YES) of each held-out rollout, and the verifier's pick per task.
    EvalScore,
    /// The oracle's trajectories on the train split (iteration 0, optional).
    WarmStart,
    /// The policy's rollouts on the train split, graded.
    Sample,
    /// p(YES) of every rollout the filter sees (`[verifier] select_keep`).
    Score,
    Filter,
    Export,
    Train,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Eval => "eval",
            Stage::EvalScore => "eval_score",
            Stage::WarmStart => "warm_start",
            Stage::Sample => "sample",
            Stage::Score => "score",
            Stage::Filter => "filter",
            Stage::Export => "export",
            Stage::Train => "train",
        }
    }
}

/// A stage's manifest: done-marker, timing, outputs and the stage's own numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest<D> {
    pub stage: Stage,
    pub config_hash: String,
    pub wall_s: f64,
    pub finished_at: u64,
    /// Output files, relative to the run directory.
    pub outputs: Vec<String>,
    pub details: D,
}

/// What every stage's details carry: the one line printed when it finishes.
pub trait StageDetails: Serialize + DeserializeOwned {
    fn line(&self) -> &str;
}

/// A stage that reused an earlier output because the policy did not change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reused {
    pub line: String,
    /// The output reused, relative to the run directory.
    pub reused_from: String,
}

/// `sample`, `warm_start` and a sampled `eval`: rollouts made and graded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleDetails {
    pub line: String,
    pub policy_id: String,
    pub rollouts: usize,
    /// Rollouts this invocation ran (the others were resumed from the stage's log).
    pub ran: usize,
    pub resumed: usize,
}

impl StageDetails for SampleDetails {
    fn line(&self) -> &str {
        &self.line
    }
}

/// `eval`: the policy sampled on the held-out split, or (an iteration that trained nothing)
/// the previous policy's evaluation reused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EvalDetails {
    Reused(Reused),
    Sampled(SampleDetails),
}

impl EvalDetails {
    /// The evaluation this one reused, relative to the run directory.
    pub fn reused_from(&self) -> Option<&str> {
        match self {
            EvalDetails::Reused(r) => Some(&r.reused_from),
            EvalDetails::Sampled(_) => None,
        }
    }
}

impl StageDetails for EvalDetails {
    fn line(&self) -> &str {
        match self {
            EvalDetails::Reused(r) => &r.line,
            EvalDetails::Sampled(s) => &s.line,
        }
    }
}

/// `score` (and a scored `eval_score`): the verifier's p(YES) of each rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreDetails {
    pub line: String,
    pub scored: usize,
    pub prompt_tokens: u64,
    /// Rollouts whose judge prompt was cut to fit.
    pub truncated: usize,
    pub classifier: Classifier,
}

impl StageDetails for ScoreDetails {
    fn line(&self) -> &str {
        &self.line
    }
}

/// How `eval_score` got its scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EvalScoring {
    Reused(Reused),
    Scored(ScoreDetails),
}

/// `eval_score`: the held-out scores and the verifier's pick (a sample index) per task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalScoreDetails {
    #[serde(flatten)]
    pub scoring: EvalScoring,
    pub picks: BTreeMap<String, u32>,
}

impl StageDetails for EvalScoreDetails {
    fn line(&self) -> &str {
        match &self.scoring {
            EvalScoring::Reused(r) => &r.line,
            EvalScoring::Scored(s) => &s.line,
        }
    }
}

/// `filter`: how many rollouts it kept and dropped, by reason (the rows are in `filter.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterDetails {
    pub line: String,
    pub counts: FilterCounts,
}

impl StageDetails for FilterDetails {
    fn line(&self) -> &str {
        &self.line
    }
}

/// `export`: the SFT records written (kept rollouts plus a warm-start file's records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportDetails {
    pub line: String,
    pub records: u64,
    #[serde(default)]
    pub warm_start_records: u64,
    pub summary: ExportSummary,
}

impl StageDetails for ExportDetails {
    fn line(&self) -> &str {
        &self.line
    }
}

/// `train`: an adapter trained on the kept data so far, or training skipped (nothing new
/// kept) with the previous adapter carried over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainDetails {
    pub line: String,
    pub trained: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_reason: Option<String>,
    /// The adapter policy_{i+1} uses, relative to the run directory (None: the base model).
    pub adapter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<TrainNumbers>,
}

impl TrainDetails {
    /// The adapter as a path under `root` (None: the base model).
    pub fn adapter_path(&self, root: &std::path::Path) -> Option<PathBuf> {
        self.adapter.as_ref().map(|rel| root.join(rel))
    }

    /// The training part of an iteration's metrics.
    pub fn metrics(&self) -> TrainMetrics {
        let s = self.summary.clone().unwrap_or_default();
        TrainMetrics {
            trained: self.trained,
            skipped_reason: self.skipped_reason.clone(),
            examples: s.examples_total,
            examples_used: s.examples_used,
            examples_dropped: s.examples_dropped,
            steps: s.steps,
            tokens: s.tokens,
            loss_first: s.loss_first,
            loss_last: s.loss_last,
            tokens_per_s: s.tokens_per_s,
            adapter: self.adapter.clone(),
        }
    }
}

impl StageDetails for TrainDetails {
    fn line(&self) -> &str {
        &self.line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Details as runs wrote them before they were typed (`serde_json::json!` objects) read
    /// back into the types, and written again the same way.
    #[test]
    fn details_written_by_earlier_runs_still_read() {
        let sampled: EvalDetails = serde_json::from_str(r#"{"line":"1 rollouts by x","policy_id":"local:m","rollouts":1,"ran":1,"resumed":0}"#).unwrap();
        assert_eq!(sampled.reused_from(), None);
        let reused: EvalDetails = serde_json::from_str(r#"{"line":"reused zero-shot/eval.parquet (policy unchanged)","reused_from":"zero-shot/eval.parquet"}"#).unwrap();
        assert_eq!(reused.reused_from(), Some("zero-shot/eval.parquet"));
        assert_eq!(serde_json::to_value(&reused).unwrap(), serde_json::json!({"line": "reused zero-shot/eval.parquet (policy unchanged)", "reused_from": "zero-shot/eval.parquet"}));

        let carried: TrainDetails =
            serde_json::from_str(r#"{"line":"skipped: iteration 1 kept no trajectories; policy_2 = policy_1","trained":false,"skipped_reason":"iteration 1 kept no trajectories","adapter":"iter-000/adapter"}"#).unwrap();
        assert!(!carried.trained && carried.metrics().steps == 0);
        assert_eq!(carried.adapter_path(std::path::Path::new("/r")), Some(PathBuf::from("/r/iter-000/adapter")));
        // The whole TrainSummary, as earlier runs stored it: extra fields ignored, NaN as null.
        let trained: TrainDetails = serde_json::from_str(
            r#"{"line":"3 steps","trained":true,"adapter":"iter-000/adapter","examples":4,"summary":{"examples_total":4,"examples_used":3,"examples_dropped":{"too_long":1},"examples_truncated":0,"steps":3,"tokens":900,"loss_tokens":80,"loss_first":2.5,"loss_last":null,"losses":[2.5,1.0,null],"tokens_per_s":120.0,"wall_s":7.5,"resumed_from_step":0,"adapter_dir":"/x","config":{"lr":1}}}"#,
        )
        .unwrap();
        let m = trained.metrics();
        assert_eq!((m.examples, m.examples_used, m.steps, m.tokens, m.loss_first, m.loss_last), (4, 3, 3, 900, Some(2.5), None));
        assert_eq!(m.examples_dropped.get("too_long"), Some(&1));

        let scored: EvalScoreDetails = serde_json::from_str(
            r#"{"line":"2 rollouts scored","scored":2,"prompt_tokens":10,"truncated":0,"classifier":{"rollouts":2,"positives":1,"negatives":1,"auc":1.0,"accuracy":1.0,"mean_p_yes_resolved":0.9,"mean_p_yes_unresolved":0.1},"picks":{"a":1}}"#,
        )
        .unwrap();
        assert!(matches!(scored.scoring, EvalScoring::Scored(_)) && scored.picks["a"] == 1);
        let reused: EvalScoreDetails = serde_json::from_str(r#"{"line":"reused","reused_from":"iter-000/eval_scores.parquet","picks":{}}"#).unwrap();
        assert!(matches!(reused.scoring, EvalScoring::Reused(_)));
        assert_eq!(reused.line(), "reused");

        let filter: FilterDetails = serde_json::from_str(r#"{"line":"kept 1/2","counts":{"input":2,"kept":1,"dropped":{"not_resolved":1}}}"#).unwrap();
        assert_eq!(filter.counts.kept, 1);
    }

    #[test]
    fn stage_names_are_the_manifest_file_names() {
        for stage in [Stage::Eval, Stage::EvalScore, Stage::WarmStart, Stage::Sample, Stage::Score, Stage::Filter, Stage::Export, Stage::Train] {
            assert_eq!(serde_json::to_value(stage).unwrap(), serde_json::Value::String(stage.name().into()));
        }
    }
}
