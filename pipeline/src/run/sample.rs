//! The sampling stages of a run (`warm_start`, `sample`, and `eval` when it samples): the
//! policy of the stage built (the oracle, our runtime with the adapter merged or attached,
//! or an OpenAI-compatible server with the adapter registered), the split's tasks picked
//! (the curriculum on the train split), every rollout sampled and then graded.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use swegym_evaluate::EvalOptions;
use swegym_sample::policy::local::ModelDtypes;
use swegym_sample::{Policy, Rollout};
use swegym_schema::rollout::read_rollouts;
use swegym_schema::{SplitMetrics, Task};

use super::config::{self, Curriculum, PolicyKind, SplitKind, WarmStart};
use super::{curriculum, PolicyChoice, Runner};
use crate::policy::{openai_config, LocalSpec, PolicySpec};
use crate::run_dir::manifest::SampleDetails;
use crate::exit::Exit;

impl Runner {
    /// Samples `split` with `choice` (k from `[sampling]`) and grades every rollout.
    pub(super) async fn sample_stage(&self, split: SplitKind, choice: PolicyChoice, iteration: u32, out: &Path, what: &str) -> anyhow::Result<(Vec<PathBuf>, SampleDetails)> {
        let k = match split {
            SplitKind::Train => self.cfg.sampling.rollouts_per_task,
            SplitKind::Test => self.cfg.sampling.eval_rollouts_per_task,
        };
        let base_skipped = self.cfg.warm_start.as_ref().is_some_and(|w| !w.samples_base());
        if split == SplitKind::Train && iteration == 0 && base_skipped {
            // Iteration 0 is the warm start alone: the base policy samples nothing.
            return no_sampling(out, "[warm_start] sample_base = false (iteration 0 trains on the warm-start data alone)");
        }
        self.sample_stage_k(split, choice, iteration, k, out, what).await
    }

    /// Samples `k` rollouts per task of `split` (the curriculum's pick on the train split)
    /// with `choice`, then grades them.
    pub(super) async fn sample_stage_k(
        &self,
        split: SplitKind,
        choice: PolicyChoice,
        iteration: u32,
        k: u32,
        out: &Path,
        what: &str,
    ) -> anyhow::Result<(Vec<PathBuf>, SampleDetails)> {
        let tasks = match self.tasks_to_sample(split, &choice, iteration)? {
            Ok(tasks) => tasks,
            Err(why) => return no_sampling(out, why),
        };
        let policy = self.build_policy(&choice).await?;
        let policy_id = policy.id();
        let (ran, resumed, mut rollouts) = self.sample_rollouts(&tasks, policy, split, &choice, iteration, k, out, what).await?;
        let infra = rollouts.iter().filter(|r| r.exit_reason.is_infra_failure()).count();
        if !rollouts.is_empty() && infra == rollouts.len() {
            let first = rollouts.iter().find_map(|r| r.error.clone()).unwrap_or_default();
            return Err(Exit::infra(format!(
                "every rollout failed in the infrastructure (sandbox or policy); first error: {first}. Fix it and rerun the same command to resume"
            )));
        }
        let eval = EvalOptions { test_timeout: self.cfg.sandbox.test_timeout_s.map(Duration::from_secs), ..EvalOptions::default() };
        crate::sample::evaluate_rollouts(self.provisioner.clone(), eval, self.cfg.sandbox.jobs, &tasks, &mut rollouts, out).await?;
        let m = SplitMetrics::from_rollouts("", "", &rollouts, 0.0);
        let line = format!(
            "{} rollouts by {policy_id}: resolved {} ({:.1}%), empty patch {:.1}%, mean turns {:.1}",
            m.rollouts,
            m.resolved,
            100.0 * m.resolve_rate,
            100.0 * m.empty_patch_rate,
            m.mean_turns
        );
        Ok((vec![out.to_path_buf()], SampleDetails { line, policy_id, rollouts: m.rollouts as usize, ran, resumed }))
    }

    /// The tasks a sampling stage runs: the split's, or on the train split the curriculum's
    /// pick (`Err`: why nothing is sampled).
    fn tasks_to_sample(&self, split: SplitKind, choice: &PolicyChoice, iteration: u32) -> anyhow::Result<Result<Cow<'_, [Task]>, &'static str>> {
        let s = &self.cfg.sampling;
        let curriculum_applies = iteration > 0 && s.curriculum == Curriculum::SkipSolved || s.tasks_per_iteration.is_some();
        Ok(Ok(match split {
            SplitKind::Train if !matches!(choice, PolicyChoice::Oracle) && curriculum_applies => {
                let skip_solved = s.curriculum == Curriculum::SkipSolved;
                let pick = curriculum::pick(&self.train_tasks, &self.train_history(iteration)?, skip_solved, s.tasks_per_iteration, self.cfg.run.seed);
                println!("iter {iteration}: curriculum: {}", pick.counts.line(self.train_tasks.len()));
                if pick.tasks.is_empty() {
                    return Ok(Err("every train task was solved in every rollout (curriculum skip_solved)"));
                }
                Cow::Owned(pick.tasks)
            }
            SplitKind::Train => Cow::Borrowed(&self.train_tasks[..]),
            SplitKind::Test => Cow::Borrowed(&self.test_tasks[..]),
        }))
    }

    /// Samples the rollouts (resuming those in `out`), dropping the policy after:
    /// (ran now, found done, all rollouts). Held-out best-of-k: rollout 0 at the evaluation
    /// temperature, then rollouts 1..k at best_of_temperature; the second call finds
    /// rollout 0 in `out` and runs the others (the stage resumes by (task, sample) pair),
    /// with the same seeds either way.
    #[allow(clippy::too_many_arguments)]
    async fn sample_rollouts(
        &self,
        tasks: &[Task],
        policy: Arc<dyn Policy>,
        split: SplitKind,
        choice: &PolicyChoice,
        iteration: u32,
        k: u32,
        out: &Path,
        what: &str,
    ) -> anyhow::Result<(usize, usize, Vec<Rollout>)> {
        let mut config = self.cfg.sample_config(split, iteration, k);
        if let (PolicyChoice::Oracle, Some(WarmStart::Oracle { max_turns, .. })) = (choice, &self.cfg.warm_start) {
            config.episode.max_turns = *max_turns;
        }
        let phases = match (split, self.cfg.sampling.best_of_temperature) {
            (SplitKind::Test, Some(t)) if k > 1 => vec![(1, config.sampling.temperature), (k, t)],
            _ => vec![(k, config.sampling.temperature)],
        };
        let bar = crate::output::stage_bar((tasks.len() * k as usize) as u64, what);
        let (mut ran, mut resumed, mut rollouts) = (0, None, Vec::new());
        for (phase_k, temperature) in phases {
            config.k = phase_k;
            config.sampling.temperature = temperature;
            let bar2 = bar.clone();
            let outcome = swegym_sample::sample(tasks, Arc::clone(&policy), self.provisioner.clone(), &config, out, move |r: &Rollout| {
                bar2.inc(1);
                bar2.set_message(format!("{} #{} {}", r.instance_id, r.sample_idx, r.exit_reason));
            })
            .await
            .map_err(|e| Exit::infra(e.to_string()))?;
            if outcome.panicked > 0 {
                bar.finish_and_clear();
                return Err(Exit::infra(format!("{} rollouts panicked; rerun the same command to run them", outcome.panicked)));
            }
            ran += outcome.ran;
            resumed.get_or_insert(outcome.resumed);
            rollouts = outcome.rollouts;
        }
        bar.finish_and_clear();
        drop(policy); // frees the model before grading
        Ok((ran, resumed.unwrap_or(0), rollouts))
    }

    /// The graded train rollouts of iterations 0..iteration (empty where one sampled
    /// nothing), what the curriculum picks from.
    pub(super) fn train_history(&self, iteration: u32) -> anyhow::Result<Vec<Vec<Rollout>>> {
        let mut per_iteration = Vec::new();
        for j in 0..iteration {
            let path = self.dir.iter_dir(j).join("rollouts.parquet");
            per_iteration.push(if path.exists() { read_rollouts(&path)? } else { Vec::new() });
        }
        Ok(per_iteration)
    }

    /// The stage's policy: the oracle, or `[policy]` with the stage's adapter (merged into a
    /// local model, or registered with the server by name).
    pub(super) async fn build_policy(&self, choice: &PolicyChoice) -> anyhow::Result<Arc<dyn Policy>> {
        let adapter = match choice {
            PolicyChoice::Oracle => return PolicySpec::Oracle { slip_rate: 0.0, scaffold: self.cfg.agent.scaffold }.build().await,
            PolicyChoice::Model { adapter } => adapter.clone(),
        };
        let p = &self.cfg.policy;
        let spec = match p.kind {
            PolicyKind::Local => PolicySpec::Local(LocalSpec {
                model: p.model.clone(),
                adapter,
                merge_adapter: p.merge_adapter,
                dtypes: ModelDtypes { weights: p.dtype, kv: p.kv_dtype, prefill: p.prefill_dtype, decode: p.weights },
                device: p.device_choice(),
                max_batch: self.cfg.sandbox.jobs,
                threads: p.threads,
            }),
            PolicyKind::Openai => {
                let o = p.openai.as_ref().expect("validated: kind openai has an [policy] openai part");
                let mut config = openai_config(&o.base_url, &o.served_model, o.api_key_env.as_deref(), "[policy] api_key_env", o.request_timeout_s, o.max_retries)?;
                if let Some(dir) = &adapter {
                    config.adapter = Some(self.register_adapter(o, config.api_key.as_deref(), dir).await?);
                }
                PolicySpec::OpenAi(config)
            }
        };
        spec.build().await
    }

    /// The adapter's name on the server (`<run>-<iter-NNN>`); with `load_adapters`, asks the
    /// server to load it (vLLM's `POST /v1/load_lora_adapter`; "already loaded" is fine).
    pub(super) async fn register_adapter(&self, o: &config::OpenAiSection, api_key: Option<&str>, dir: &Path) -> anyhow::Result<String> {
        let iter = dir.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let name = format!("{}-{iter}", self.cfg.run.name);
        if !o.load_adapters {
            return Ok(name);
        }
        let path = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
        let url = format!("{}/load_lora_adapter", o.base_url.trim_end_matches('/'));
        let mut req = reqwest::Client::new().post(&url).json(&json!({"lora_name": name, "lora_path": path}));
        if let Some(key) = api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| Exit::infra(format!("{url}: {e}")))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() && !body.contains("already been loaded") {
            return Err(Exit::infra(format!(
                "{url} answered {status}: {body} (start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or set [policy] load_adapters = false and load {} yourself)",
                path.display()
            )));
        }
        Ok(name)
    }
}

/// A sampling stage that samples nothing (an empty rollouts file) and says why.
pub(super) fn no_sampling(out: &Path, why: &str) -> anyhow::Result<(Vec<PathBuf>, SampleDetails)> {
    swegym_schema::rollout::write_rollouts(out, &[])?;
    Ok((vec![out.to_path_buf()], SampleDetails { line: format!("skipped: {why}"), policy_id: "none".into(), rollouts: 0, ran: 0, resumed: 0 }))
}
