//! The verifier's stages (`score`, `eval_score`) and the held-out Pass@1 / Pass@k / Best@k
//! numbers computed from their scores.

use std::path::{Path, PathBuf};

use swegym_sample::Rollout;
use swegym_schema::rollout::read_rollouts;
use swegym_schema::{AtK, Submitter};
use swegym_verifier::{ScalingOptions, ScoreOptions, ScoreRow, Scored};

use super::Runner;
use crate::run_dir::manifest::{EvalDetails, EvalScoreDetails, EvalScoring, Manifest, ScoreDetails};
use crate::exit::Exit;

impl Runner {
    /// Whether held-out rollouts are scored: a verifier and k > 1 of them per task.
    pub(super) fn scores_held_out(&self) -> bool {
        self.cfg.verifier.is_some() && self.cfg.sampling.eval_rollouts_per_task > 1
    }

    /// Pass@1 / Pass@k — and, with the held-out scores in `dir`, Best@k / Random@k — of
    /// held-out rollouts, with `swegym verifier eval`'s functions (`scaling` at k = 1 and
    /// k = M: one subset each, so no draw matters); None with one rollout per task.
    pub(super) fn at_k(&self, rollouts: &[Rollout], dir: &Path) -> anyhow::Result<Option<AtK>> {
        let k = self.cfg.sampling.eval_rollouts_per_task;
        if k < 2 {
            return Ok(None);
        }
        let scores = if self.scores_held_out() { Some(read_scores_file(&dir.join("eval_scores.parquet"))?) } else { None };
        let p_yes: std::collections::HashMap<(&str, u32), f64> =
            scores.iter().flatten().map(|s| ((s.instance_id.as_str(), s.sample_idx), s.p_yes)).collect();
        let mut instances: std::collections::BTreeMap<String, Vec<Scored>> = std::collections::BTreeMap::new();
        for r in rollouts {
            let p = p_yes.get(&(r.instance_id.as_str(), r.sample_idx)).copied().unwrap_or(0.0);
            instances.entry(r.instance_id.clone()).or_default().push(Scored { sample_idx: r.sample_idx, resolved: r.resolved == Some(true), p_yes: p });
        }
        let options = ScalingOptions { ks: vec![1, k as usize], subsets: 100, bootstrap: 0, seed: self.cfg.run.seed };
        let report = swegym_verifier::scaling(&instances, &options);
        let (Some(one), Some(at_k)) = (report.points.iter().find(|p| p.k == 1), report.points.iter().find(|p| p.k == k as usize)) else {
            return Ok(None);
        };
        let verified = scores.is_some();
        let best = verified.then_some(at_k.best.mean / 100.0);
        let submitted_by = if self.cfg.verifier.as_ref().is_some_and(|v| v.select_submit) { Submitter::Verifier } else { Submitter::RolloutZero };
        Ok(Some(AtK {
            k,
            instances: at_k.instances as u64,
            pass_at_1: one.pass.mean / 100.0,
            pass_at_k: at_k.pass.mean / 100.0,
            best_at_k: best,
            random_at_k: verified.then_some(at_k.random.mean / 100.0),
            submitted_by,
            submitted_resolve_rate: match submitted_by {
                Submitter::Verifier => best.unwrap_or(0.0),
                Submitter::RolloutZero => one.pass.mean / 100.0,
            },
        }))
    }

    /// The verifier's base model and adapter, loaded as the policy is (dtype, device, threads).
    pub(super) fn verifier_model(&self) -> crate::lm::ModelArgs {
        let v = self.cfg.verifier.as_ref().expect("only called with a [verifier] section");
        let p = &self.cfg.policy;
        let dtype = match p.dtype {
            swegym_lm::Dtype::F32 => crate::lm::DtypeArg::F32,
            swegym_lm::Dtype::Bf16 => crate::lm::DtypeArg::Bf16,
            swegym_lm::Dtype::F16 => crate::lm::DtypeArg::F16,
        };
        crate::lm::ModelArgs { model: v.model.clone(), dtype, device: p.device_choice(), threads: p.threads, adapter: Some(v.adapter.clone()), merge_adapter: true, weights: None }
    }

    /// Scores `rollouts` with the verifier into `out` (atomically); the manifest's numbers.
    pub(super) async fn score_into(&self, rollouts: &[Rollout], out: &Path, what: &str) -> anyhow::Result<(Vec<PathBuf>, ScoreDetails)> {
        let judge = self.judge.as_ref().expect("checked at start with a [verifier] section");
        let rows = crate::verifier::score_rollouts(judge, &self.verifier_model(), rollouts, ScoreOptions::default(), what).await?;
        swegym_verifier::write_scores(out, &rows).map_err(|e| Exit::infra(e.to_string()))?;
        let graded: Vec<(f64, bool)> = rows.iter().filter_map(|r| r.resolved.map(|y| (r.p_yes, y))).collect();
        let quality = swegym_verifier::metrics::classifier(&graded);
        let tokens: u64 = rows.iter().map(|r| u64::from(r.prompt_tokens)).sum();
        let truncated = rows.iter().filter(|r| r.truncated).count();
        let mean = |m: Option<f64>| m.map_or("-".to_string(), |v| format!("{v:.3}"));
        let line = format!(
            "{} rollouts scored ({} prompt tokens, {} cut): mean p_yes {} resolved / {} unresolved, AUC {}",
            rows.len(),
            tokens,
            truncated,
            mean(quality.mean_p_yes_resolved),
            mean(quality.mean_p_yes_unresolved),
            mean(quality.auc)
        );
        Ok((vec![out.to_path_buf()], ScoreDetails { line, scored: rows.len(), prompt_tokens: tokens, truncated, classifier: quality }))
    }

    /// `score`: p(YES) of every rollout the filter will see (the policy's and the warm start's).
    pub(super) async fn score_stage(&self, dir: &Path) -> anyhow::Result<(Vec<PathBuf>, ScoreDetails)> {
        let all = self.filter_input(dir)?;
        self.score_into(&all, &dir.join("verifier_scores.parquet"), "score (train)").await
    }

    /// `eval_score`: p(YES) of every held-out rollout in `dir/eval.parquet` (a reused
    /// evaluation reuses its scores), and the verifier's pick per task.
    pub(super) async fn eval_score_stage(&self, dir: &Path, eval: &Manifest<EvalDetails>) -> anyhow::Result<(Vec<PathBuf>, EvalScoreDetails)> {
        let out = dir.join("eval_scores.parquet");
        let rollouts = read_rollouts(&dir.join("eval.parquet"))?;
        let reused = eval.details.reused_from().map(|rel| self.dir.root.join(rel).with_file_name("eval_scores.parquet"));
        let (outputs, scoring) = match reused.filter(|p| p.exists()) {
            Some(previous) => {
                let (outputs, reused) = self.reuse(&previous, &out)?;
                (outputs, EvalScoring::Reused(reused))
            }
            None => {
                let (outputs, scored) = self.score_into(&rollouts, &out, "score (held-out)").await?;
                (outputs, EvalScoring::Scored(scored))
            }
        };
        let scores = read_scores_file(&out)?;
        Ok((outputs, EvalScoreDetails { scoring, picks: verifier_picks(&scores) }))
    }
}

/// A scores Parquet the run wrote (a missing or unreadable one is a broken run folder).
pub(super) fn read_scores_file(path: &Path) -> anyhow::Result<Vec<ScoreRow>> {
    swegym_verifier::read_scores(path).map_err(|e| anyhow::anyhow!("{e} (delete the stage's manifest and rerun to score again)"))
}

/// The verifier's pick per task: the sample index of its highest-p(YES) rollout (ties: the
/// lower index), the rollout Best@k counts.
pub(super) fn verifier_picks(scores: &[ScoreRow]) -> std::collections::BTreeMap<String, u32> {
    let mut by_task: std::collections::BTreeMap<String, Vec<Scored>> = std::collections::BTreeMap::new();
    for s in scores {
        by_task.entry(s.instance_id.clone()).or_default().push(Scored { sample_idx: s.sample_idx, resolved: s.resolved == Some(true), p_yes: s.p_yes });
    }
    by_task.into_iter().filter_map(|(id, rs)| swegym_verifier::metrics::pick(&rs).map(|p| (id, p.sample_idx))).collect()
}

/// `Pass@1 a% · Pass@k b% · Best@k c% · Random@k d% (submitted: …)`.
pub(super) fn at_k_line(a: &AtK) -> String {
    let mut parts = vec![format!("Pass@1 {:.1}%", 100.0 * a.pass_at_1), format!("Pass@{} {:.1}%", a.k, 100.0 * a.pass_at_k)];
    if let Some(b) = a.best_at_k {
        parts.push(format!("Best@{} {:.1}%", a.k, 100.0 * b));
    }
    if let Some(r) = a.random_at_k {
        parts.push(format!("Random@{} {:.1}%", a.k, 100.0 * r));
    }
    let by = match a.submitted_by {
        Submitter::Verifier => "the verifier's pick",
        Submitter::RolloutZero => "rollout 0",
    };
    format!("{} over {} tasks (submitted: {by}, {:.1}% resolved)", parts.join(" · "), a.instances, 100.0 * a.submitted_resolve_rate)
}
