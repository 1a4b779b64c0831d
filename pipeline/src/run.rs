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
mod eval;
mod export;
mod filter;
mod sample;
mod score;
mod train;

use self::score::at_k_line;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use swegym_lm::chat::ChatTemplate;
use swegym_sandbox::{Limits, Provisioner};
use swegym_schema::rollout::read_rollouts;
use swegym_schema::{IterationMetrics, SplitMetrics, Task};
use swegym_verifier::Judge;
use tracing::Instrument;

use self::config::{PathEnv, RunConfig, SplitKind, SplitSection, WarmStart};
use crate::run_dir::{fork, unix_now, write_json_atomic, RunDir, RunInfo};
use crate::run_dir::manifest::{
    EvalDetails, EvalScoreDetails, ExportDetails, FilterDetails, Manifest, SampleDetails, ScoreDetails, Stage, StageDetails, TrainDetails,
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
    let runner = Runner::open(ctx, &args).await?;
    runner.zero_shot().await?;
    for i in 0..runner.cfg.run.iterations {
        if runner.dir.iter_dir(i).join("metrics.json").exists() {
            println!("iter {i}: done earlier (metrics.json present)");
            continue;
        }
        runner.iteration(i).await?;
    }
    runner.finish(started)
}

impl Runner {
    /// Reads and checks the config, its tasks and the verifier's prompt; makes the sandbox
    /// backend (before the run folder, so a missing sandbox tool fails before any write);
    /// creates, forks or resumes the run folder and says which.
    async fn open(ctx: &Context, args: &RunArgs) -> anyhow::Result<Runner> {
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
        let dir = RunDir::new(args.run_dir.clone().unwrap_or_else(|| PathBuf::from("runs").join(&cfg.run.name)));
        let hash = cfg.hash();
        let specs = ctx.env_specs(&cfg.dataset.train.files[0], &extra_env_specs(&cfg))?;
        let backend = ctx.backend(cfg.sandbox.backend.into()).await?;
        let info = open_run_dir(&dir, &cfg, &text, &hash, args)?;
        print_header(&cfg, &dir, &info, train_tasks.len(), test_tasks.len());
        let limits = Limits { memory_bytes: (cfg.sandbox.memory_gib * (1u64 << 30) as f64) as u64, ..Limits::default() };
        let provisioner = Arc::new(Provisioner::new(backend, specs, ctx.source_options(), limits));
        Ok(Runner { cfg, dir, hash, provisioner, train_tasks, test_tasks, token_counter: std::sync::OnceLock::new(), judge })
    }

    /// Writes the report and says where everything is.
    fn finish(&self, started: Instant) -> anyhow::Result<()> {
        let report = crate::report::load_report(&self.dir.root)?;
        let files = swegym_report::write_report(&self.dir.root, &report).context("writing the report")?;
        println!();
        print!("{}", report.terminal());
        println!();
        println!("run {} finished in {:.0} s (this invocation).", self.cfg.run.name, started.elapsed().as_secs_f64());
        let names: Vec<String> = files.iter().map(|f| self.dir.rel(f)).collect();
        println!("report in {}: {}", self.dir.root.display(), names.join(", "));
        println!("SFT data of every iteration: swegym export {} --out sft.parquet", self.dir.root.display());
        Ok(())
    }
}

/// The run folder created (or forked from `--fork-from`) or resumed; its `run.json`.
fn open_run_dir(dir: &RunDir, cfg: &RunConfig, text: &str, hash: &str, args: &RunArgs) -> anyhow::Result<(RunInfo, bool)> {
    let config_dir = args.config.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let info = RunInfo {
        name: cfg.run.name.clone(),
        config_hash: hash.to_string(),
        git_revision: crate::run_dir::git_revision(config_dir),
        seed: cfg.run.seed,
        swegym_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: unix_now(),
        forked_from: None,
    };
    let info = match &args.fork_from {
        Some(src) if !dir.root.join("run.json").exists() => {
            let f = fork::fork(src, &dir.root, &cfg.to_json())?;
            println!("fork of {}: changed {}; {} stages copied, runs anew from {}", f.run, f.changed.join(", "), f.copied.len(), f.diverges_at);
            RunInfo { forked_from: Some(f), ..info }
        }
        Some(src) => {
            fork::check_target(&dir.root, src)?;
            info
        }
        None => info,
    };
    dir.open(&cfg.to_json(), text, info)
}

/// The run's first lines: where it goes, whether it resumes, what it samples.
fn print_header(cfg: &RunConfig, dir: &RunDir, (info, resumed): &(RunInfo, bool), n_train: usize, n_test: usize) {
    println!(
        "run {} → {} ({}; config {}, git {}, seed {})",
        info.name,
        dir.root.display(),
        if *resumed { "resuming" } else { "new" },
        &info.config_hash[..12],
        info.git_revision,
        info.seed
    );
    println!(
        "  {n_train} train tasks × {} rollouts, {n_test} test tasks × {}, {} iterations, policy {}",
        cfg.sampling.rollouts_per_task,
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
        let warm_start = match (&self.cfg.warm_start, i) {
            (Some(WarmStart::Oracle { rollouts_per_task, .. }), 0) => {
                let out = dir.join("warm_start.parquet");
                let body = self.sample_stage_k(SplitKind::Train, PolicyChoice::Oracle, i, *rollouts_per_task, &out, "warm start (oracle)");
                Some(self.stage(&dir, Stage::WarmStart, body).await?)
            }
            _ => None,
        };
        let rollouts = dir.join("rollouts.parquet");
        let sample_body = self.sample_stage(SplitKind::Train, PolicyChoice::Model { adapter: adapter_i.clone() }, i, &rollouts, "sample (train)");
        let sample = self.stage(&dir, Stage::Sample, sample_body).await?;
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
        let stages = IterationStages { warm_start, sample, score, filter, export, train, eval, eval_score };
        let metrics = self.iteration_metrics(i, &label_i, adapter_next.as_deref(), &stages)?;
        write_json_atomic(&dir.join("metrics.json"), &metrics)?;
        print_iteration(&metrics);
        Ok(())
    }

    /// An iteration's metrics, computed from its stages' outputs (the single source of truth).
    fn iteration_metrics(&self, i: u32, label_i: &str, adapter_next: Option<&Path>, s: &IterationStages) -> anyhow::Result<IterationMetrics> {
        let dir = self.dir.iter_dir(i);
        let rollouts = read_rollouts(&dir.join("rollouts.parquet"))?;
        let warm_start = match &s.warm_start {
            Some(m) => Some(SplitMetrics::from_rollouts("train", "oracle", &read_rollouts(&dir.join("warm_start.parquet"))?, m.wall_s)),
            None => None,
        };
        let kept = s.export.details.records;
        let mut kept_cumulative = kept;
        for j in 0..i {
            let m: Option<Manifest<ExportDetails>> = RunDir::manifest(&self.dir.iter_dir(j), Stage::Export)?;
            kept_cumulative += m.map_or(0, |m| m.details.records);
        }
        let test_rollouts = read_rollouts(&dir.join("eval.parquet"))?;
        let test = SplitMetrics::from_rollouts("test", &label_of(&self.dir, adapter_next), &test_rollouts, s.eval.wall_s);
        Ok(IterationMetrics {
            iteration: i,
            train: SplitMetrics::from_rollouts("train", label_i, &rollouts, s.sample.wall_s),
            warm_start,
            warm_start_records: s.export.details.warm_start_records,
            filter: s.filter.details.counts.clone(),
            kept,
            kept_cumulative,
            training: s.train.details.metrics(),
            test: SplitMetrics { at_k: self.at_k(&test_rollouts, &dir)?, ..test },
            stage_seconds: s.seconds(),
        })
    }

}

/// The manifests of one iteration's stages (those it ran: warm start, score and eval_score
/// are optional).
struct IterationStages {
    warm_start: Option<Manifest<SampleDetails>>,
    sample: Manifest<SampleDetails>,
    score: Option<Manifest<ScoreDetails>>,
    filter: Manifest<FilterDetails>,
    export: Manifest<ExportDetails>,
    train: Manifest<TrainDetails>,
    eval: Manifest<EvalDetails>,
    eval_score: Option<Manifest<EvalScoreDetails>>,
}

impl IterationStages {
    /// Wall seconds by stage name, an iteration's `stage_seconds`.
    fn seconds(&self) -> std::collections::BTreeMap<String, f64> {
        fn timing_of<D>(m: &Manifest<D>) -> (String, f64) {
            (m.stage.name().to_string(), m.wall_s)
        }
        [
            Some(timing_of(&self.sample)),
            self.warm_start.as_ref().map(timing_of),
            self.score.as_ref().map(timing_of),
            Some(timing_of(&self.filter)),
            Some(timing_of(&self.export)),
            Some(timing_of(&self.train)),
            Some(timing_of(&self.eval)),
            self.eval_score.as_ref().map(timing_of),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// The line an iteration ends with.
fn print_iteration(metrics: &IterationMetrics) {
    let i = metrics.iteration;
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
}
