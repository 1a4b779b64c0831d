//! `swegym run CONFIG`: online rejection-sampling fine-tuning, iteration by iteration,
//! resumable.
//!
//! The sequence (policy_0 = the base model, policy_{i+1} = base + adapter_i):
//! ```text
//! zero-shot:  eval      policy_0 on the test split, temperature 0           zero-shot/eval.parquet
//!             eval_score ([verifier], k > 1) p(YES) of each held-out rollout  zero-shot/eval_scores.parquet
//! iteration i:
//!   warm_start (i = 0, optional) oracle trajectories on the train split      warm_start.parquet
//!   sample      policy_i on the train split at [policy] temperature, graded  rollouts.parquet
//!   score       ([verifier] select_keep) p(YES) of every filter input        verifier_scores.parquet
//!   filter      keep / drop(reason) per rollout ([filter])                   filter.json
//!   export      kept rollouts (+ a warm-start SFT file) → SFT records        sft.parquet
//!   train       LoRA from the base on the kept data of iterations 0..=i      adapter/
//!   eval        policy_{i+1} on the test split, temperature 0                eval.parquet
//!   eval_score  ([verifier], k > 1) p(YES) of each held-out rollout          eval_scores.parquet
//!   metrics                                                                  metrics.json
//! report: report.md, metrics.parquet, resolve_rate.svg, empty_patch_rate.svg
//! ```
//! With `eval_rollouts_per_task` = k > 1, held-out rollout 0 is sampled at the evaluation
//! temperature and rollouts 1..k at `best_of_temperature` (the paper's 0 and 0.5), and the
//! held-out metrics add Pass@1 (rollout 0), Pass@k and, with a verifier, Best@k (its pick)
//! and Random@k. A `[verifier]` (a LoRA adapter from `swegym verifier train`) is loaded once
//! per scoring stage, after sampling and grading and never while training runs; with
//! `select_keep` the filter keeps a task's highest-p(YES) resolved rollouts first, with
//! `select_submit` the held-out submission is its pick (Best@k) instead of rollout 0.
//! With `[sampling] curriculum = "skip_solved"`, iteration i ≥ 1 samples only the train
//! tasks not solved in every rollout the last time they were sampled; the training table
//! counts, per iteration, the tasks solved always / sometimes / never.
//! Adapters are trained from the base on the cumulative kept data (not continued from the
//! previous adapter): each adapter is a function of the data alone, a resumed or re-run
//! iteration gives the same adapter, and early-iteration data is not forgotten. With
//! `[run] adapters = "continue"`, adapter_i continues adapter_{i-1} on iteration i's kept
//! data alone (training time per iteration then grows with that iteration's data only). An
//! iteration that keeps nothing new trains nothing: policy_{i+1} = policy_i (its held-out
//! evaluation is reused), and the reason is recorded.
//!
//! Every stage writes its outputs atomically and then a manifest (`dir`); a rerun skips
//! stages with a manifest and resumes the others (sampling from its durable per-rollout
//! log, training from its checkpoint), so a kill -9 anywhere loses at most the work in
//! flight.

pub mod config;
mod curriculum;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use swegym_evaluate::EvalOptions;
use swegym_filter::{Candidate, DecisionRow};
use swegym_lm::chat::{ChatMessage, ChatTemplate};
use swegym_sample::policy::local::{AdapterLoad, LocalPolicy, ModelDtypes};
use swegym_sample::policy::openai::{OpenAiConfig, OpenAiPolicy};
use swegym_sample::policy::oracle::OraclePolicy;
use swegym_sample::{Policy, Rollout};
use swegym_sandbox::{Limits, Provisioner};
use swegym_schema::rollout::read_rollouts;
use swegym_schema::{AtK, FilterCounts, IterationMetrics, Message, SplitMetrics, Submitter, Task};
use swegym_verifier::{Judge, ScalingOptions, ScoreOptions, ScoreRow, Scored};
use tracing::Instrument;

use self::config::{Adapters, Curriculum, PathEnv, PolicyKind, RftData, RunConfig, SplitKind, SplitSection, WarmStart};
use crate::run_dir::{fork, read_json, unix_now, write_json_atomic, RunDir, RunInfo};
use crate::run_dir::manifest::{
    EvalDetails, EvalScoreDetails, EvalScoring, ExportDetails, FilterDetails, Manifest, Reused, SampleDetails, ScoreDetails, Stage, StageDetails, TrainDetails,
};
use crate::context::Context;
use crate::exit::Exit;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The run config (TOML; see configs/). Relative paths in it resolve against its folder.
    pub config: PathBuf,
    /// The run's name: it goes to runs/<name>/ (default: [run] name, else the config's file name).
    #[arg(long)]
    pub name: Option<String>,
    /// The run directory itself, instead of runs/<name>/.
    #[arg(long, conflicts_with = "name")]
    pub run_dir: Option<PathBuf>,
    /// Start from another run's finished stages: every stage before the first one the
    /// config change can alter is copied (e.g. with `[run] rft_data = "warm_start"`, all of
    /// iteration 0 and iteration 1's sampling and filter), so the two runs are paired task
    /// by task. Knows [run] rft_data, [train] and [warm_start.train]; other changes are refused.
    #[arg(long, value_name = "RUN_DIR")]
    pub fork_from: Option<PathBuf>,
}

/// Which policy a stage samples with.
#[derive(Debug, Clone, PartialEq)]
enum PolicyChoice {
    Oracle,
    /// The base model, with this adapter (None: the base alone).
    Model { adapter: Option<PathBuf> },
}

/// The run in progress: its config, folder, sandboxes and tasks.
struct Runner {
    cfg: RunConfig,
    dir: RunDir,
    hash: String,
    provisioner: Arc<Provisioner>,
    train_tasks: Vec<Task>,
    test_tasks: Vec<Task>,
    token_counter: std::sync::OnceLock<Option<(swegym_lm::Tokenizer, ChatTemplate)>>,
    /// The verifier's judge prompt for its base model (with `[verifier]`), checked at start.
    judge: Option<Judge>,
}

pub async fn run(ctx: &Context, args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    let env = PathEnv { cache_root: ctx.cache_root.clone(), home };
    let name = args.name.clone().or_else(|| args.run_dir.as_ref().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().to_string()));
    let (cfg, text) = config::load(&args.config, name.as_deref(), &env).map_err(|e| Exit::bad_input(e.to_string()))?;
    // The verifier's tokenizer must carry the judge prompt: checked before any work.
    let judge = match &cfg.verifier {
        Some(v) => Some(crate::verifier::judge_for(&v.model).map_err(|e| Exit::bad_input(format!("{}: [verifier] model: {e}", args.config.display())))?),
        None => None,
    };
    let train_tasks = load_split(&cfg.dataset.train)?;
    let test_tasks = load_split(&cfg.dataset.test)?;
    let root = args.run_dir.clone().unwrap_or_else(|| PathBuf::from("runs").join(&cfg.run.name));
    let dir = RunDir::new(root);
    let hash = cfg.hash();
    let config_dir = args.config.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let info = RunInfo {
        name: cfg.run.name.clone(),
        config_hash: hash.clone(),
        git_revision: crate::run_dir::git_revision(config_dir),
        seed: cfg.run.seed,
        swegym_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: unix_now(),
        forked_from: None,
    };
    // Infrastructure before the run folder, so a missing sandbox tool fails before any write.
    let specs = ctx.env_specs(&cfg.dataset.train.files[0], &extra_env_specs(&cfg))?;
    let backend = ctx.backend(cfg.sandbox.backend.into()).await?;
    let info = match &args.fork_from {
        Some(src) if !dir.root.join("run.json").exists() => {
            let f = fork::fork(src, &dir.root, &cfg.to_json())?;
            println!(
                "fork of {}: changed {}; {} stages copied, runs anew from {}",
                f.run,
                f.changed.join(", "),
                f.copied.len(),
                f.diverges_at
            );
            RunInfo { forked_from: Some(f), ..info }
        }
        Some(src) => {
            fork::check_target(&dir.root, src)?;
            info
        }
        None => info,
    };
    let (info, resumed) = dir.open(&cfg.to_json(), &text, info)?;
    println!(
        "run {} → {} ({}; config {}, git {}, seed {})",
        info.name,
        dir.root.display(),
        if resumed { "resuming" } else { "new" },
        &info.config_hash[..12],
        info.git_revision,
        info.seed
    );
    println!(
        "  {} train tasks × {} rollouts, {} test tasks × {}, {} iterations, policy {}",
        train_tasks.len(),
        cfg.sampling.rollouts_per_task,
        test_tasks.len(),
        cfg.sampling.eval_rollouts_per_task,
        cfg.run.iterations,
        cfg.policy.model.display()
    );
    if let Some(v) = &cfg.verifier {
        let uses: Vec<&str> = [(v.select_keep, "keep (filter order)"), (v.select_submit, "submit (Best@k)")].into_iter().filter(|u| u.0).map(|u| u.1).collect();
        println!(
            "  verifier {} + {}: picks {}",
            v.model.display(),
            v.adapter.display(),
            if uses.is_empty() { "nothing (Best@k reported)".to_string() } else { uses.join(", ") }
        );
    }
    let limits = Limits { memory_bytes: (cfg.sandbox.memory_gib * (1u64 << 30) as f64) as u64, ..Limits::default() };
    let provisioner = Arc::new(Provisioner::new(backend, specs, ctx.source_options(), limits));
    let runner = Runner { cfg, dir, hash, provisioner, train_tasks, test_tasks, token_counter: std::sync::OnceLock::new(), judge };

    runner.zero_shot().await?;
    for i in 0..runner.cfg.run.iterations {
        if runner.dir.iter_dir(i).join("metrics.json").exists() {
            println!("iter {i}: done earlier (metrics.json present)");
            continue;
        }
        runner.iteration(i).await?;
    }
    let report = crate::report::load_report(&runner.dir.root)?;
    let files = swegym_report::write_report(&runner.dir.root, &report).context("writing the report")?;
    println!();
    print!("{}", report.terminal());
    println!();
    println!("run {} finished in {:.0} s (this invocation).", runner.cfg.run.name, started.elapsed().as_secs_f64());
    let names: Vec<String> = files.iter().map(|f| runner.dir.rel(f)).collect();
    println!("report in {}: {}", runner.dir.root.display(), names.join(", "));
    println!("SFT data of every iteration: swegym export {} --out sft.parquet", runner.dir.root.display());
    Ok(())
}

/// environments.toml beside the test split's files (when elsewhere than the train split's)
/// and the config's `env_specs`.
fn extra_env_specs(cfg: &RunConfig) -> Vec<PathBuf> {
    let beside = |s: &SplitSection| s.files[0].parent().map(|d| d.join("environments.toml"));
    let mut extra = Vec::new();
    if let (Some(test), train) = (beside(&cfg.dataset.test), beside(&cfg.dataset.train)) {
        if test.exists() && Some(&test) != train.as_ref() {
            extra.push(test);
        }
    }
    extra.extend(cfg.dataset.env_specs.iter().cloned());
    extra
}

/// The selected tasks of a split, in the config's order.
fn load_split(split: &SplitSection) -> anyhow::Result<Vec<Task>> {
    let mut by_id = std::collections::HashMap::new();
    for f in &split.files {
        for t in swegym_schema::load_tasks(f).map_err(|e| Exit::bad_input(e.to_string()))?.tasks {
            by_id.insert(t.instance_id.clone(), t);
        }
    }
    split
        .instance_ids
        .iter()
        .map(|id| by_id.remove(id).ok_or_else(|| Exit::bad_input(format!("task {id} vanished from {}", split.files[0].display()))))
        .collect()
}

fn label_of(dir: &RunDir, adapter: Option<&Path>) -> String {
    match adapter {
        None => "base".to_string(),
        Some(a) => format!("base+{}", dir.rel(a)),
    }
}

impl Runner {
    /// Runs `body` unless the stage's manifest says it is done; writes the manifest after.
    async fn stage<D, Fut>(&self, dir: &Path, stage: Stage, body: Fut) -> anyhow::Result<Manifest<D>>
    where
        D: StageDetails,
        Fut: std::future::Future<Output = anyhow::Result<(Vec<PathBuf>, D)>>,
    {
        let place = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let name = stage.name();
        if let Some(m) = RunDir::manifest(dir, stage)? {
            println!("{place:<9} {name:<10} done earlier");
            return Ok(m);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let started = Instant::now();
        let span = tracing::info_span!("stage", stage = name, place = %place);
        let (outputs, details) = body.instrument(span).await.with_context(|| format!("{place} {name}"))?;
        let manifest = Manifest {
            stage,
            config_hash: self.hash.clone(),
            wall_s: started.elapsed().as_secs_f64(),
            finished_at: unix_now(),
            outputs: outputs.iter().map(|p| self.dir.rel(p)).collect(),
            details,
        };
        self.dir.write_manifest(dir, &manifest)?;
        println!("{place:<9} {name:<10} {}  ({:.0} s)", manifest.details.line(), manifest.wall_s);
        Ok(manifest)
    }

    async fn zero_shot(&self) -> anyhow::Result<()> {
        let dir = self.dir.zero_shot_dir();
        if dir.join("metrics.json").exists() {
            return Ok(());
        }
        let out = dir.join("eval.parquet");
        let sampled = async {
            let (outputs, details) = self.sample_stage(SplitKind::Test, PolicyChoice::Model { adapter: None }, 0, &out, "zero-shot eval").await?;
            Ok((outputs, EvalDetails::Sampled(details)))
        };
        let m = self.stage(&dir, Stage::Eval, sampled).await?;
        if self.scores_held_out() {
            self.stage(&dir, Stage::EvalScore, self.eval_score_stage(&dir, &m)).await?;
        }
        let rollouts = read_rollouts(&out)?;
        let mut metrics = SplitMetrics::from_rollouts("test", &label_of(&self.dir, None), &rollouts, m.wall_s);
        metrics.at_k = self.at_k(&rollouts, &dir)?;
        if let Some(a) = &metrics.at_k {
            println!("zero-shot: held-out {}", at_k_line(a));
        }
        write_json_atomic(&dir.join("metrics.json"), &metrics)
    }

    /// Whether held-out rollouts are scored: a verifier and k > 1 of them per task.
    fn scores_held_out(&self) -> bool {
        self.cfg.verifier.is_some() && self.cfg.sampling.eval_rollouts_per_task > 1
    }

    /// Pass@1 / Pass@k — and, with the held-out scores in `dir`, Best@k / Random@k — of
    /// held-out rollouts, with `swegym verifier eval`'s functions (`scaling` at k = 1 and
    /// k = M: one subset each, so no draw matters); None with one rollout per task.
    fn at_k(&self, rollouts: &[Rollout], dir: &Path) -> anyhow::Result<Option<AtK>> {
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

    /// The adapter policy_i uses (None: the base), from iteration i-1's train manifest.
    fn adapter_of_policy(&self, i: u32) -> anyhow::Result<Option<PathBuf>> {
        if i == 0 {
            return Ok(None);
        }
        let prev = self.dir.iter_dir(i - 1);
        let m: Manifest<TrainDetails> =
            RunDir::manifest(&prev, Stage::Train)?.ok_or_else(|| anyhow::anyhow!("{}: iteration {} has no train manifest", prev.display(), i - 1))?;
        Ok(m.details.adapter_path(&self.dir.root))
    }

    async fn iteration(&self, i: u32) -> anyhow::Result<()> {
        let dir = self.dir.iter_dir(i);
        let adapter_i = self.adapter_of_policy(i)?;
        let label_i = label_of(&self.dir, adapter_i.as_deref());
        println!("iter {i}: policy_{i} = {label_i}");
        let warm_path = dir.join("warm_start.parquet");
        let warm_oracle = match (&self.cfg.warm_start, i) {
            (Some(WarmStart::Oracle { rollouts_per_task, .. }), 0) => Some(*rollouts_per_task),
            _ => None,
        };
        let mut warm_manifest = None;
        if let Some(k) = warm_oracle {
            let body = self.sample_stage_k(SplitKind::Train, PolicyChoice::Oracle, i, k, &warm_path, "warm start (oracle)");
            warm_manifest = Some(self.stage(&dir, Stage::WarmStart, body).await?);
        }
        let rollouts_path = dir.join("rollouts.parquet");
        let sample = self
            .stage(&dir, Stage::Sample, self.sample_stage(SplitKind::Train, PolicyChoice::Model { adapter: adapter_i.clone() }, i, &rollouts_path, "sample (train)"))
            .await?;
        let score = match &self.cfg.verifier {
            Some(v) if v.select_keep => Some(self.stage(&dir, Stage::Score, self.score_stage(&dir)).await?),
            _ => None,
        };
        let filter = self.stage(&dir, Stage::Filter, self.filter_stage(&dir)).await?;
        let export = self.stage(&dir, Stage::Export, self.export_stage(&dir, i)).await?;
        let train = self.stage(&dir, Stage::Train, self.train_stage(i, adapter_i.clone())).await?;
        let adapter_next = train.details.adapter_path(&self.dir.root);
        let eval = self.stage(&dir, Stage::Eval, self.eval_stage(i, &train, adapter_next.clone())).await?;
        let eval_score = if self.scores_held_out() { Some(self.stage(&dir, Stage::EvalScore, self.eval_score_stage(&dir, &eval)).await?) } else { None };

        // Metrics: computed from the stage outputs (the single source of truth).
        let rollouts = read_rollouts(&rollouts_path)?;
        let warm_start = match &warm_manifest {
            Some(m) => Some(SplitMetrics::from_rollouts("train", "oracle", &read_rollouts(&warm_path)?, m.wall_s)),
            None => None,
        };
        let kept = export.details.records;
        let mut kept_cumulative = kept;
        for j in 0..i {
            let m: Option<Manifest<ExportDetails>> = RunDir::manifest(&self.dir.iter_dir(j), Stage::Export)?;
            kept_cumulative += m.map_or(0, |m| m.details.records);
        }
        let test_rollouts = read_rollouts(&dir.join("eval.parquet"))?;
        let stage_seconds = [
            Some(timing_of(&sample)),
            warm_manifest.as_ref().map(timing_of),
            score.as_ref().map(timing_of),
            Some(timing_of(&filter)),
            Some(timing_of(&export)),
            Some(timing_of(&train)),
            Some(timing_of(&eval)),
            eval_score.as_ref().map(timing_of),
        ]
        .into_iter()
        .flatten()
        .collect();
        let metrics = IterationMetrics {
            iteration: i,
            train: SplitMetrics::from_rollouts("train", &label_i, &rollouts, sample.wall_s),
            warm_start,
            warm_start_records: export.details.warm_start_records,
            filter: filter.details.counts.clone(),
            kept,
            kept_cumulative,
            training: train.details.metrics(),
            test: SplitMetrics { at_k: self.at_k(&test_rollouts, &dir)?, ..SplitMetrics::from_rollouts("test", &label_of(&self.dir, adapter_next.as_deref()), &test_rollouts, eval.wall_s) },
            stage_seconds,
        };
        write_json_atomic(&dir.join("metrics.json"), &metrics)?;
        println!(
            "iter {i}: train resolve {:.1}% · kept {} ({} cumulative) · held-out resolve {:.1}%, empty patch {:.1}% (policy_{})",
            100.0 * metrics.train.resolve_rate,
            metrics.kept,
            metrics.kept_cumulative,
            100.0 * metrics.test.resolve_rate,
            100.0 * metrics.test.empty_patch_rate,
            i + 1
        );
        if let Some(a) = &metrics.test.at_k {
            println!("iter {i}: held-out {}", at_k_line(a));
        }
        Ok(())
    }

    /// Samples `split` with `choice` (k from `[sampling]`) and grades every rollout.
    async fn sample_stage(&self, split: SplitKind, choice: PolicyChoice, iteration: u32, out: &Path, what: &str) -> anyhow::Result<(Vec<PathBuf>, SampleDetails)> {
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

    async fn sample_stage_k(
        &self,
        split: SplitKind,
        choice: PolicyChoice,
        iteration: u32,
        k: u32,
        out: &Path,
        what: &str,
    ) -> anyhow::Result<(Vec<PathBuf>, SampleDetails)> {
        let curriculum_tasks;
        let tasks = match split {
            SplitKind::Train
                if !matches!(choice, PolicyChoice::Oracle)
                    && (iteration > 0 && self.cfg.sampling.curriculum == Curriculum::SkipSolved || self.cfg.sampling.tasks_per_iteration.is_some()) =>
            {
                let skip_solved = self.cfg.sampling.curriculum == Curriculum::SkipSolved;
                let pick = curriculum::pick(&self.train_tasks, &self.train_history(iteration)?, skip_solved, self.cfg.sampling.tasks_per_iteration, self.cfg.run.seed);
                println!("iter {iteration}: curriculum: {}", pick.counts.line(self.train_tasks.len()));
                if pick.tasks.is_empty() {
                    return no_sampling(out, "every train task was solved in every rollout (curriculum skip_solved)");
                }
                curriculum_tasks = pick.tasks;
                &curriculum_tasks
            }
            SplitKind::Train => &self.train_tasks,
            SplitKind::Test => &self.test_tasks,
        };
        let policy = self.build_policy(&choice).await?;
        let policy_id = policy.id();
        let mut config = self.cfg.sample_config(split, iteration, k);
        if let (PolicyChoice::Oracle, Some(WarmStart::Oracle { max_turns, .. })) = (&choice, &self.cfg.warm_start) {
            config.episode.max_turns = *max_turns;
        }
        // Held-out best-of-k: rollout 0 at the evaluation temperature, then rollouts 1..k at
        // best_of_temperature. The second call finds rollout 0 in `out` and runs the others
        // (the stage resumes by (task, sample) pair), with the same seeds either way.
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
        let resumed = resumed.unwrap_or(0);
        let infra = rollouts.iter().filter(|r| r.exit_reason.is_infra_failure()).count();
        if !rollouts.is_empty() && infra == rollouts.len() {
            let first = rollouts.iter().find_map(|r| r.error.clone()).unwrap_or_default();
            return Err(Exit::infra(format!(
                "every rollout failed in the infrastructure (sandbox or policy); first error: {first}. Fix it and rerun the same command to resume"
            )));
        }
        let eval = EvalOptions { test_timeout: self.cfg.sandbox.test_timeout_s.map(Duration::from_secs), ..EvalOptions::default() };
        crate::sample::evaluate_rollouts(self.provisioner.clone(), eval, self.cfg.sandbox.jobs, tasks, &mut rollouts, out).await?;
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

    /// The graded train rollouts of iterations 0..iteration (empty where one sampled
    /// nothing), what the curriculum picks from.
    fn train_history(&self, iteration: u32) -> anyhow::Result<Vec<Vec<Rollout>>> {
        let mut per_iteration = Vec::new();
        for j in 0..iteration {
            let path = self.dir.iter_dir(j).join("rollouts.parquet");
            per_iteration.push(if path.exists() { read_rollouts(&path)? } else { Vec::new() });
        }
        Ok(per_iteration)
    }

    async fn build_policy(&self, choice: &PolicyChoice) -> anyhow::Result<Arc<dyn Policy>> {
        let adapter = match choice {
            PolicyChoice::Oracle => return Ok(Arc::new(OraclePolicy::exact().with_scaffold(self.cfg.agent.scaffold))),
            PolicyChoice::Model { adapter } => adapter.clone(),
        };
        let p = &self.cfg.policy;
        match p.kind {
            PolicyKind::Local => {
                let dtypes = ModelDtypes { weights: p.dtype, kv: p.kv_dtype, prefill: p.prefill_dtype, decode: p.weights };
                crate::sample::warn_slow_bf16_prefill(&dtypes);
                let (model, device, threads, merge, jobs) = (p.model.clone(), p.device_choice(), p.threads, p.merge_adapter, self.cfg.sandbox.jobs);
                let policy = tokio::task::spawn_blocking(move || {
                    let adapter = adapter.as_deref().map(|dir| AdapterLoad { dir, merge });
                    LocalPolicy::load_with_adapter(&model, adapter, dtypes, device, jobs, threads)
                })
                .await
                .context("loading the policy model")?
                .map_err(|e| Exit::bad_input(e.to_string()))?;
                Ok(Arc::new(policy))
            }
            PolicyKind::Openai => {
                let o = p.openai.as_ref().expect("validated: kind openai has an [policy] openai part");
                let api_key = match &o.api_key_env {
                    None => None,
                    Some(var) => Some(std::env::var(var).map_err(|_| Exit::bad_input(format!("[policy] api_key_env {var}: the variable is not set")))?),
                };
                let adapter_name = match &adapter {
                    Some(dir) => Some(self.register_adapter(o, api_key.as_deref(), dir).await?),
                    None => None,
                };
                let config = OpenAiConfig {
                    adapter: adapter_name,
                    api_key,
                    request_timeout: Duration::from_secs(o.request_timeout_s),
                    max_retries: o.max_retries,
                    ..OpenAiConfig::new(o.base_url.clone(), o.served_model.clone())
                };
                Ok(Arc::new(OpenAiPolicy::new(config).map_err(|e| Exit::infra(e.to_string()))?))
            }
        }
    }

    /// The adapter's name on the server (`<run>-<iter-NNN>`); with `load_adapters`, asks the
    /// server to load it (vLLM's `POST /v1/load_lora_adapter`; "already loaded" is fine).
    async fn register_adapter(&self, o: &config::OpenAiSection, api_key: Option<&str>, dir: &Path) -> anyhow::Result<String> {
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

    /// Token counts with the policy's tokenizer and chat template (as the trainer renders),
    /// or a 4-characters-per-token estimate when the model has no template.
    fn count_tokens(&self, messages: &[Message]) -> usize {
        let counter = self.token_counter.get_or_init(|| {
            let path = &self.cfg.policy.model;
            let tokenizer = if path.is_dir() {
                swegym_lm::Tokenizer::from_file(path.join("tokenizer.json")).ok()
            } else {
                swegym_lm::GgufFile::open(path).ok().and_then(|f| swegym_lm::Tokenizer::from_gguf(&f).ok())
            }?;
            let template = swegym_lm::chat_template_for(path, &tokenizer)?;
            Some((tokenizer, template))
        });
        let estimate = || messages.iter().map(|m| m.content.chars().count().div_ceil(4) + 4).sum();
        match counter {
            Some((tokenizer, template)) => {
                let chat: Vec<ChatMessage> = messages.iter().map(|m| ChatMessage::new(m.role, m.content.clone())).collect();
                template.tokenize(tokenizer, &chat, false).map(|t| t.ids.len()).unwrap_or_else(|_| estimate())
            }
            None => estimate(),
        }
    }

    /// The filter's input: the policy's rollouts, then the warm-start rollouts (if any).
    fn filter_input(&self, dir: &Path) -> anyhow::Result<Vec<Rollout>> {
        let mut all = read_rollouts(&dir.join("rollouts.parquet"))?;
        let warm = dir.join("warm_start.parquet");
        if warm.exists() {
            all.extend(read_rollouts(&warm)?);
        }
        Ok(all)
    }

    async fn filter_stage(&self, dir: &Path) -> anyhow::Result<(Vec<PathBuf>, FilterDetails)> {
        let all = self.filter_input(dir)?;
        let n_tokens: Vec<usize> = all.iter().map(|r| self.count_tokens(&r.messages)).collect();
        // With select_keep, the score stage's p(YES) per rollout (policy, task, sample).
        let scores: Option<Vec<Option<f64>>> = match &self.cfg.verifier {
            Some(v) if v.select_keep => {
                let rows = read_scores_file(&dir.join("verifier_scores.parquet"))?;
                let by_key: std::collections::HashMap<(&str, &str, u32), f64> =
                    rows.iter().map(|s| ((s.policy_id.as_str(), s.instance_id.as_str(), s.sample_idx), s.p_yes)).collect();
                Some(all.iter().map(|r| by_key.get(&(r.policy_id.as_str(), r.instance_id.as_str(), r.sample_idx)).copied()).collect())
            }
            _ => None,
        };
        let score_of = |j: usize| scores.as_ref().and_then(|s| s[j]);
        let candidates: Vec<Candidate<'_>> =
            all.iter().zip(&n_tokens).enumerate().map(|(j, (rollout, &n))| Candidate { rollout, n_tokens: n, score: score_of(j) }).collect();
        let outcome = swegym_filter::filter(&candidates, &self.cfg.filter);
        let decisions = outcome.rows(&candidates);
        for (reason, n) in outcome.dropped() {
            if n > 0 {
                tracing::info!(reason = reason.as_str(), n, "filter drops");
            }
        }
        let counts = outcome.counts();
        let out = dir.join("filter.json");
        write_json_atomic(&out, &FilterFile { rules: &self.cfg.filter, counts: &counts, decisions: &decisions })?;
        let drops: Vec<String> = counts.dropped.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r} {n}")).collect();
        let line = format!("kept {}/{} (dropped: {})", counts.kept, counts.input, if drops.is_empty() { "none".into() } else { drops.join(", ") });
        Ok((vec![out], FilterDetails { line, counts }))
    }

    /// The verifier's base model and adapter, loaded as the policy is (dtype, device, threads).
    fn verifier_model(&self) -> crate::lm::ModelArgs {
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
    async fn score_into(&self, rollouts: &[Rollout], out: &Path, what: &str) -> anyhow::Result<(Vec<PathBuf>, ScoreDetails)> {
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
    async fn score_stage(&self, dir: &Path) -> anyhow::Result<(Vec<PathBuf>, ScoreDetails)> {
        let all = self.filter_input(dir)?;
        self.score_into(&all, &dir.join("verifier_scores.parquet"), "score (train)").await
    }

    /// `eval_score`: p(YES) of every held-out rollout in `dir/eval.parquet` (a reused
    /// evaluation reuses its scores), and the verifier's pick per task.
    async fn eval_score_stage(&self, dir: &Path, eval: &Manifest<EvalDetails>) -> anyhow::Result<(Vec<PathBuf>, EvalScoreDetails)> {
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

    /// Copies an earlier stage's output to `out` (atomically): the policy did not change.
    fn reuse(&self, previous: &Path, out: &Path) -> anyhow::Result<(Vec<PathBuf>, Reused)> {
        let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let tmp = out.with_file_name(format!(".{name}.tmp"));
        std::fs::copy(previous, &tmp).with_context(|| format!("copying {}", previous.display()))?;
        std::fs::rename(&tmp, out)?;
        let reused_from = self.dir.rel(previous);
        Ok((vec![out.to_path_buf()], Reused { line: format!("reused {reused_from} (policy unchanged)"), reused_from }))
    }

    async fn export_stage(&self, dir: &Path, i: u32) -> anyhow::Result<(Vec<PathBuf>, ExportDetails)> {
        let all = self.filter_input(dir)?;
        let decisions = read_json::<FilterFileRows>(&dir.join("filter.json"))?.decisions;
        anyhow::ensure!(decisions.len() == all.len(), "{}: {} decisions for {} rollouts (rerun after deleting filter.*)", dir.display(), decisions.len(), all.len());
        let kept: Vec<usize> = decisions.iter().zip(&all).enumerate().filter(|(_, (d, r))| d.keeps(r)).map(|(j, _)| j).collect();
        if i > 0 && self.cfg.run.rft_data == RftData::WarmStart {
            return self.export_warm_start_instead(dir, &all, &kept);
        }
        let mut records = swegym_export::records_from_rollouts(&all, &kept);
        let mut warm_records = 0;
        if let (Some(WarmStart::Sft { path, .. }), 0) = (&self.cfg.warm_start, i) {
            let extra = swegym_schema::read_sft(path).map_err(|e| Exit::bad_input(e.to_string()))?;
            warm_records = extra.len();
            records.extend(extra);
        }
        let out = dir.join("sft.parquet");
        let summary = swegym_export::write_records(&out, &records)?;
        let line = format!("{} SFT records ({} from rollouts, {} from the warm-start file) on {} tasks", summary.records, kept.len(), warm_records, summary.instances);
        Ok((vec![out], ExportDetails { line, records: summary.records as u64, warm_start_records: warm_records as u64, summary }))
    }

    /// `[run] rft_data = "warm_start"` (an ablation): for each rollout the filter kept, the
    /// warm-start (oracle) trajectory of the same task instead — the same tasks and steps,
    /// none of the policy's own data.
    fn export_warm_start_instead(&self, dir: &Path, all: &[Rollout], kept: &[usize]) -> anyhow::Result<(Vec<PathBuf>, ExportDetails)> {
        let warm_path = self.dir.iter_dir(0).join("warm_start.parquet");
        let warm = read_rollouts(&warm_path).with_context(|| format!("{} (rft_data = \"warm_start\" reads it)", warm_path.display()))?;
        let mut used: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut picked = Vec::new();
        let mut missing = 0;
        for &j in kept {
            let id = all[j].instance_id.as_str();
            let of_task: Vec<usize> = (0..warm.len()).filter(|&w| warm[w].instance_id == id && warm[w].resolved == Some(true)).collect();
            if of_task.is_empty() {
                missing += 1;
                continue;
            }
            let n = used.entry(id).or_default();
            picked.push(of_task[*n % of_task.len()]);
            *n += 1;
        }
        let records = swegym_export::records_from_rollouts(&warm, &picked);
        let out = dir.join("sft.parquet");
        let summary = swegym_export::write_records(&out, &records)?;
        let line = format!(
            "{} SFT records: the warm-start trajectories of the {} kept rollouts' tasks (rft_data = \"warm_start\"; {missing} kept without a resolved warm-start trajectory) on {} tasks",
            summary.records,
            kept.len(),
            summary.instances
        );
        Ok((vec![out], ExportDetails { line, records: summary.records as u64, warm_start_records: summary.records as u64, summary }))
    }

    async fn train_stage(&self, i: u32, previous: Option<PathBuf>) -> anyhow::Result<(Vec<PathBuf>, TrainDetails)> {
        let dir = self.dir.iter_dir(i);
        let export: Option<Manifest<ExportDetails>> = RunDir::manifest(&dir, Stage::Export)?;
        let kept_now = export.map_or(0, |m| m.details.records);
        let carry = |reason: String| {
            let adapter = previous.as_deref().map(|p| self.dir.rel(p));
            let line = format!("skipped: {reason}; policy_{} = policy_{i}", i + 1);
            Ok((vec![], TrainDetails { line, trained: false, skipped_reason: Some(reason), adapter, examples: None, summary: None }))
        };
        if kept_now == 0 {
            return carry(format!("iteration {i} kept no trajectories"));
        }
        // From the base on every iteration's kept data, or continuing the previous adapter
        // on this iteration's alone.
        let (files, init): (Vec<PathBuf>, Option<PathBuf>) = match self.cfg.run.adapters {
            Adapters::FromBase => ((0..=i).map(|j| self.dir.iter_dir(j).join("sft.parquet")).collect(), None),
            Adapters::Continue => (vec![dir.join("sft.parquet")], previous.clone()),
        };
        let continues = init.is_some();
        let records = swegym_export::concat_datasets(&files, true)?;
        let out = dir.join("adapter");
        let partial = dir.join("adapter.partial");
        let summary: swegym_train::TrainNumbers = if out.join("train_summary.json").exists() {
            read_json(&out.join("train_summary.json"))?
        } else {
            let device = self.cfg.policy.device_choice().resolve().map_err(|e| Exit::bad_input(e.to_string()))?;
            let (model, config, partial2) = (self.cfg.policy.model.clone(), self.cfg.train_for(i).clone(), partial.clone());
            let data_name = match init {
                None => format!("{} (sft.parquet of iterations 0..={i})", self.dir.rel(&dir)),
                Some(_) => format!("{} (sft.parquet of iteration {i}, continuing policy_{i}'s adapter)", self.dir.rel(&dir)),
            };
            let bar = crate::output::stage_bar(0, "train (LoRA)");
            let bar2 = bar.clone();
            let result = tokio::task::spawn_blocking(move || {
                let mut on_step = |s: &swegym_train::StepLog| {
                    bar2.set_length(s.total_steps as u64);
                    bar2.set_position(s.step as u64);
                    bar2.set_message(format!("loss {:.4} lr {:.2e} {:.0} tok/s", s.loss, s.learning_rate, s.tokens_per_s));
                };
                let req = swegym_train::TrainRequest {
                    model: &model,
                    records: &records,
                    data_name: &data_name,
                    out_dir: &partial2,
                    config: &config,
                    device,
                    init_adapter: init.as_deref(),
                };
                swegym_train::train(req, &mut on_step)
            })
            .await
            .context("the training thread")?;
            bar.finish_and_clear();
            match result {
                Ok(mut summary) => {
                    // The trainer wrote into adapter.partial/; the summary names where the
                    // adapter lives once it is in place.
                    summary.adapter_dir = out.clone();
                    write_json_atomic(&partial.join("train_summary.json"), &summary)?;
                    if out.exists() {
                        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
                    }
                    std::fs::rename(&partial, &out).with_context(|| format!("renaming {} into place", partial.display()))?;
                    swegym_train::TrainNumbers::from(&summary)
                }
                Err(swegym_train::TrainError::Data { problem, .. }) if problem.starts_with("nothing to train on") => {
                    return carry(problem);
                }
                Err(e) => return Err(Exit::bad_input(format!("training adapter {i}: {e}"))),
            }
        };
        let data = match (self.cfg.run.adapters, continues) {
            (Adapters::FromBase, _) if i == 0 => "from the base",
            (Adapters::FromBase, _) => "cumulative, from the base",
            (Adapters::Continue, true) => "this iteration's, continuing the previous adapter",
            (Adapters::Continue, false) => "this iteration's, from the base",
        };
        let mut line = format!(
            "{} steps on {} examples ({data}), loss {:.4} → {:.4}, {} tokens",
            summary.steps,
            summary.examples_used,
            summary.loss_first.unwrap_or(f64::NAN),
            summary.loss_last.unwrap_or(f64::NAN),
            summary.tokens
        );
        let (warmup, peak) = (self.cfg.train_for(i).warmup_steps as u64, self.cfg.train_for(i).learning_rate);
        if summary.steps <= warmup {
            // Linear warm-up from 0 that the run never finished: say how small the update was.
            let reached = peak * summary.steps.saturating_sub(1) as f64 / warmup.max(1) as f64;
            line.push_str(&format!(
                "; all of it warm-up ({warmup} steps): the learning rate reached {reached:.1e} of {peak:.1e}"
            ));
        }
        let details =
            TrainDetails { line, trained: true, skipped_reason: None, adapter: Some(self.dir.rel(&out)), examples: Some(summary.examples_total), summary: Some(summary) };
        Ok((vec![out.clone()], details))
    }

    async fn eval_stage(&self, i: u32, train: &Manifest<TrainDetails>, adapter: Option<PathBuf>) -> anyhow::Result<(Vec<PathBuf>, EvalDetails)> {
        let dir = self.dir.iter_dir(i);
        let out = dir.join("eval.parquet");
        if !train.details.trained {
            // policy_{i+1} = policy_i: its held-out evaluation is the one already made.
            let previous = if i == 0 { self.dir.zero_shot_dir() } else { self.dir.iter_dir(i - 1) }.join("eval.parquet");
            let (outputs, reused) = self.reuse(&previous, &out)?;
            return Ok((outputs, EvalDetails::Reused(reused)));
        }
        let (outputs, sampled) = self.sample_stage(SplitKind::Test, PolicyChoice::Model { adapter }, i + 1, &out, "eval (test)").await?;
        Ok((outputs, EvalDetails::Sampled(sampled)))
    }
}

/// Given the train rollouts of iterations in order, the tasks that the last iteration to
/// sample them solved in every rollout.
/// A sampling stage that samples nothing (an empty rollouts file) and says why.
fn no_sampling(out: &Path, why: &str) -> anyhow::Result<(Vec<PathBuf>, SampleDetails)> {
    swegym_schema::rollout::write_rollouts(out, &[])?;
    Ok((vec![out.to_path_buf()], SampleDetails { line: format!("skipped: {why}"), policy_id: "none".into(), rollouts: 0, ran: 0, resumed: 0 }))
}

/// A scores Parquet the run wrote (a missing or unreadable one is a broken run folder).
fn read_scores_file(path: &Path) -> anyhow::Result<Vec<ScoreRow>> {
    swegym_verifier::read_scores(path).map_err(|e| anyhow::anyhow!("{e} (delete the stage's manifest and rerun to score again)"))
}

/// The verifier's pick per task: the sample index of its highest-p(YES) rollout (ties: the
/// lower index), the rollout Best@k counts.
fn verifier_picks(scores: &[ScoreRow]) -> std::collections::BTreeMap<String, u32> {
    let mut by_task: std::collections::BTreeMap<String, Vec<Scored>> = std::collections::BTreeMap::new();
    for s in scores {
        by_task.entry(s.instance_id.clone()).or_default().push(Scored { sample_idx: s.sample_idx, resolved: s.resolved == Some(true), p_yes: s.p_yes });
    }
    by_task.into_iter().filter_map(|(id, rs)| swegym_verifier::metrics::pick(&rs).map(|p| (id, p.sample_idx))).collect()
}

/// `Pass@1 a% · Pass@k b% · Best@k c% · Random@k d% (submitted: …)`.
fn at_k_line(a: &AtK) -> String {
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

/// `(stage name, wall seconds)` of a manifest, for an iteration's `stage_seconds`.
fn timing_of<D>(m: &Manifest<D>) -> (String, f64) {
    (m.stage.name().to_string(), m.wall_s)
}

/// A run's `filter.json` as written: the rules, the counts and one row per rollout.
#[derive(serde::Serialize)]
struct FilterFile<'a> {
    rules: &'a swegym_filter::FilterConfig,
    counts: &'a FilterCounts,
    decisions: &'a [DecisionRow],
}

/// The rows of a run's `filter.json`, as the export stage reads them.
#[derive(serde::Deserialize)]
struct FilterFileRows {
    decisions: Vec<DecisionRow>,
}
