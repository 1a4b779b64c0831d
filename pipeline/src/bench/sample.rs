//! `swegym bench sample`: rollouts/hour of the same tasks, samples and seeds at several
//! concurrencies, each a fresh run of the sample stage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;
use swegym_sample::{ExitReason, Rollout, SampleConfig, SampleOutcome};
use swegym_sandbox::Provisioner;

use crate::context::Context;
use crate::exit::Exit;
use crate::output;
use crate::sample::{build_policy, prepare, SampleArgs};

/// `swegym bench sample`: rollouts/hour of the same tasks, samples and seeds at several
/// concurrencies (`-j`), each a fresh run; with the local policy the concurrent episodes
/// share one batched engine, which is what this measures.
#[derive(clap::Args, Debug)]
pub struct SampleBenchArgs {
    /// The sampling flags (`--out` is a folder: each run writes `<out>/j<N>.parquet`).
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Concurrencies to compare; ratios are to the first.
    #[arg(long = "compare-jobs", num_args = 1.., default_values = ["1", "4"])]
    pub compare_jobs: Vec<usize>,
    /// The local policy's decoding weights to compare (f32, q8), each at every -j, in the
    /// same run (default: --weights alone). Ratios are to the first weights' first -j.
    #[arg(long = "compare-weights", num_args = 1..)]
    pub compare_weights: Vec<swegym_lm::DecodeWeights>,
    /// Runs per concurrency, interleaved (-j 1, -j 4, -j 1, …); the summary gives medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeats: u64,
}

#[derive(Debug, Serialize)]
struct SampleBenchRow {
    bench: &'static str,
    policy_id: String,
    /// The local policy's decoding weights (`--weights`; absent for other policies).
    #[serde(skip_serializing_if = "Option::is_none")]
    weights: Option<String>,
    jobs: usize,
    /// 1-based run of this concurrency (`--repeats`).
    run: usize,
    rollouts: usize,
    wall_seconds: f64,
    /// When the last rollout started; the rest of the wall time ran fewer than `jobs`
    /// rollouts (the drain: a short run's rate at -j N > 1 pays it, a long stage hardly).
    last_start_seconds: f64,
    rollouts_per_hour: f64,
    /// Rollouts/hour over the first concurrency's (its first run; the summary line uses
    /// medians).
    ratio: f64,
    /// Generated tokens per hour: the engine's throughput. Same seeds, but batched numerics
    /// let sampled replies differ, so two runs may generate different amounts of text and
    /// rollouts/hour alone can flatter or wrong a concurrency.
    completion_tokens_per_hour: f64,
    /// Completion tokens/hour over the first concurrency's.
    token_ratio: f64,
    /// Work done, to check the runs are comparable.
    turns: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    exit_reasons: BTreeMap<String, usize>,
    /// The local policy's engine: decode steps and their mean batch, prefill and idle time.
    #[serde(skip_serializing_if = "Option::is_none")]
    engine: Option<swegym_lm::GenerationStats>,
}

/// What every timed run of `swegym bench sample` shares: the tasks (their environments
/// built), the sampling config, the sandboxes, the flags and the output folder.
struct SampleBench<'a> {
    tasks: &'a [swegym_schema::Task],
    base_config: &'a SampleConfig,
    provisioner: &'a Arc<Provisioner>,
    args: &'a SampleBenchArgs,
    dir: &'a Path,
}

impl SampleBench<'_> {
    /// One timed `swegym sample` run of `--compare-jobs`' `jobs`; `first` holds the first
    /// run's (rollouts/hour, tokens/hour), the base of the ratios.
    async fn run(&self, (weights, jobs): (Option<swegym_lm::DecodeWeights>, usize), run: usize, first: &mut Option<(f64, f64)>) -> anyhow::Result<SampleBenchRow> {
        let out = self.fresh_out(weights, jobs)?;
        let sample_args = SampleArgs { jobs, weights: weights.or(self.args.sample.weights), ..self.args.sample.clone() };
        let (outcome, engine) = self.sample(&sample_args, &out).await?;
        let weights = (self.args.sample.policy == crate::sample::PolicyArg::Local).then(|| sample_args.weights.unwrap_or_default().to_string());
        let row = SampleBenchRow::measured(&outcome, engine, weights, (jobs, run), first);
        print_row(&row, self.args);
        Ok(row)
    }

    /// The run's rollouts file, `<dir>/[<weights>-]j<N>.parquet`, with what an earlier run
    /// left there (the file and its partial log) removed: every run starts from nothing.
    fn fresh_out(&self, weights: Option<swegym_lm::DecodeWeights>, jobs: usize) -> anyhow::Result<PathBuf> {
        let out = match weights {
            Some(w) => self.dir.join(format!("{w}-j{jobs}.parquet")),
            None => self.dir.join(format!("j{jobs}.parquet")),
        };
        for stale in [out.clone(), swegym_sample::partial_path(&out)] {
            if stale.exists() {
                std::fs::remove_file(&stale).with_context(|| format!("removing {}", stale.display()))?;
            }
        }
        Ok(out)
    }

    /// The sample stage with a fresh policy of `sample_args` (its engine dropped when done),
    /// and what the policy's engine did.
    async fn sample(&self, sample_args: &SampleArgs, out: &Path) -> anyhow::Result<(SampleOutcome, Option<swegym_lm::GenerationStats>)> {
        let jobs = sample_args.jobs;
        let policy = build_policy(sample_args)?;
        let config = SampleConfig { jobs, ..self.base_config.clone() };
        let bar = output::progress(self.tasks.len() * config.k as usize, &format!("sampling -j {jobs}"));
        let bar2 = bar.clone();
        let outcome = swegym_sample::sample(self.tasks, Arc::clone(&policy), self.provisioner.clone(), &config, out, move |_: &Rollout| bar2.inc(1))
            .await
            .map_err(|e| Exit::infra(e.to_string()))?;
        bar.finish_and_clear();
        let engine = policy.engine_stats();
        drop(policy);
        Ok((outcome, engine))
    }
}

impl SampleBenchRow {
    /// The row of one run (`jobs`, 1-based `run`); the first row measured sets `first`.
    fn measured(
        outcome: &SampleOutcome,
        engine: Option<swegym_lm::GenerationStats>,
        weights: Option<String>,
        (jobs, run): (usize, usize),
        first: &mut Option<(f64, f64)>,
    ) -> SampleBenchRow {
        let hours = outcome.wall_seconds.max(1e-9) / 3600.0;
        let rollouts = &outcome.rollouts;
        let completion_tokens: u64 = rollouts.iter().map(|r| r.completion_tokens).sum();
        let (rate, token_rate) = (outcome.ran as f64 / hours, completion_tokens as f64 / hours);
        let (first_rate, first_tokens) = *first.get_or_insert((rate, token_rate));
        SampleBenchRow {
            bench: "sample",
            policy_id: rollouts.first().map(|r| r.policy_id.clone()).unwrap_or_default(),
            weights,
            jobs,
            run,
            rollouts: outcome.ran,
            wall_seconds: outcome.wall_seconds,
            last_start_seconds: outcome.last_start_seconds,
            rollouts_per_hour: rate,
            ratio: rate / first_rate,
            completion_tokens_per_hour: token_rate,
            token_ratio: token_rate / first_tokens,
            turns: rollouts.iter().map(|r| u64::from(r.turns)).sum(),
            prompt_tokens: rollouts.iter().map(|r| r.prompt_tokens).sum(),
            completion_tokens,
            exit_reasons: exit_reasons(rollouts),
            engine,
        }
    }
}

/// Rollouts per exit reason (the reasons that occur).
fn exit_reasons(rollouts: &[Rollout]) -> BTreeMap<String, usize> {
    let mut exit_reasons = BTreeMap::new();
    for reason in ExitReason::ALL {
        let n = rollouts.iter().filter(|r| r.exit_reason == reason).count();
        if n > 0 {
            exit_reasons.insert(reason.as_str().to_string(), n);
        }
    }
    exit_reasons
}

/// A run's line on stderr, and its engine's when the policy has one.
fn print_row(row: &SampleBenchRow, args: &SampleBenchArgs) {
    let (jobs, run) = (row.jobs, row.run);
    let label = row.weights.as_ref().map_or_else(String::new, |w| format!("{w} "));
    eprintln!(
        "{label}-j {jobs} (run {run}): {} rollouts in {:.1} s (the last started at {:.1} s) = {:.0} rollouts/hour ({:.2}x {}); {} turns, {} completion tokens = {:.0}/hour ({:.2}x)",
        row.rollouts,
        row.wall_seconds,
        row.last_start_seconds,
        row.rollouts_per_hour,
        row.ratio,
        first_label(args),
        row.turns,
        row.completion_tokens,
        row.completion_tokens_per_hour,
        row.token_ratio
    );
    if let Some(e) = &row.engine {
        eprintln!(
            "    engine: {} decode steps, mean batch {:.2} rows, {:.1} s decoding ({:.1} ms/step, {:.1} tokens/s); {:.1} s prefilling {} tokens ({} reused; {:.0}% of the wall time, the batch waiting); {:.1} s idle",
            e.decode_steps,
            e.mean_batch(),
            e.decode_seconds,
            e.decode_seconds * 1e3 / e.decode_steps.max(1) as f64,
            e.decoded_tokens as f64 / e.decode_seconds.max(1e-9),
            e.prefill_seconds,
            e.prefill_tokens,
            e.cached_prompt_tokens,
            100.0 * e.prefill_seconds / row.wall_seconds.max(1e-9),
            e.idle_seconds
        );
    }
}

pub async fn bench(ctx: &Context, args: SampleBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.compare_jobs.is_empty(), "--compare-jobs needs at least one value");
    if !args.compare_weights.is_empty() && args.sample.policy != crate::sample::PolicyArg::Local {
        return Err(Exit::bad_input("--compare-weights compares the local policy's decoding weights: use it with --policy local"));
    }
    let dir = args.sample.out.clone();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (tasks, base_config, provisioner) = prepare(ctx, &args.sample).await?;
    // Environments are built (or found) before any clock starts.
    for task in &tasks {
        let w = swegym_evaluate::runner::workspace_ref(task);
        provisioner.prepare(&w).await.map_err(|e| Exit::infra(e.to_string()))?;
    }
    let weights: Vec<Option<swegym_lm::DecodeWeights>> =
        if args.compare_weights.is_empty() { vec![None] } else { args.compare_weights.iter().copied().map(Some).collect() };
    let configs: Vec<(Option<swegym_lm::DecodeWeights>, usize)> = weights.iter().flat_map(|&w| args.compare_jobs.iter().map(move |&j| (w, j.max(1)))).collect();
    let bench = SampleBench { tasks: &tasks, base_config: &base_config, provisioner: &provisioner, args: &args, dir: &dir };
    let mut first: Option<(f64, f64)> = None;
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); configs.len()];
    for run in 1..=args.repeats as usize {
        for (config, runs) in configs.iter().zip(&mut runs) {
            let row = bench.run(*config, run, &mut first).await?;
            runs.push((row.rollouts_per_hour, row.completion_tokens_per_hour));
            println!("{}", serde_json::to_string(&row)?);
        }
    }
    if args.repeats > 1 {
        print_medians(&args, &configs, runs);
    }
    Ok(())
}

/// The summary lines of `--repeats` > 1: each configuration's medians, and their ratios to
/// the first configuration's.
fn print_medians(args: &SampleBenchArgs, configs: &[(Option<swegym_lm::DecodeWeights>, usize)], runs: Vec<Vec<(f64, f64)>>) {
    let median = |mut v: Vec<f64>| super::median(&mut v);
    let medians: Vec<(f64, f64)> = runs.into_iter().map(|r| (median(r.iter().map(|x| x.0).collect()), median(r.iter().map(|x| x.1).collect()))).collect();
    let base = medians[0];
    for ((w, jobs), (rate, tokens)) in configs.iter().zip(&medians) {
        let w = w.map_or_else(String::new, |w| format!("{w} "));
        eprintln!(
            "median of {} runs, {w}-j {jobs}: {rate:.0} rollouts/hour ({:.2}x {}), {tokens:.0} completion tokens/hour ({:.2}x)",
            args.repeats,
            rate / base.0,
            first_label(args),
            tokens / base.1
        );
    }
}

/// The configuration the ratios are to: the first weights (when compared) at the first -j.
fn first_label(args: &SampleBenchArgs) -> String {
    let jobs = format!("-j {}", args.compare_jobs[0].max(1));
    args.compare_weights.first().map_or(jobs.clone(), |w| format!("{w} {jobs}"))
}
