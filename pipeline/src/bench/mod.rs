//! `swegym bench …`: benchmarks that print one JSON object per result line.
//!
//! `bench harness`: the harness overhead per evaluation — the wall time of one evaluation
//! beyond the test command itself (sandbox create/destroy, copying the workspace, patch and
//! test-patch application, parsing) — per backend, median of N sequential runs after a
//! warm-up that builds the environment.
//!
//! `bench generate`: prefill and decode tokens/s of our model runtime (swegym-lm) per dtype
//! and batch size, with peak RSS, next to transformers measured in the same run by
//! `scripts/baselines/bench_generate.py` (the peer baseline's own script), and the ratios.

mod generate;
mod sample;
mod train;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use swegym_evaluate::runner::{Job, JobKind};

use crate::context::{BackendArg, Context};
use crate::evaluate::{load_dataset, HarnessArgs};
use crate::exit::Exit;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Harness overhead per evaluation (time beyond the test command), per backend.
    Harness(HarnessBenchArgs),
    /// Generation tokens/s (prefill, decode) vs transformers, per dtype and batch size.
    Generate(generate::GenerateBenchArgs),
    /// LoRA training tokens/s, peak RSS and matmul-limit fraction vs PyTorch + PEFT.
    Train(train::TrainBenchArgs),
    /// Agent rollouts/hour at several concurrencies (-j) on the same tasks and seeds.
    Sample(sample::SampleBenchArgs),
}

#[derive(clap::Args, Debug)]
pub struct HarnessBenchArgs {
    /// Dataset whose first instance (or --instance-id) is evaluated with its gold patch.
    #[arg(long, default_value = "datasets/swebench-lite-marshmallow/tasks.jsonl")]
    pub dataset: PathBuf,
    #[arg(long)]
    pub instance_id: Option<String>,
    /// Backends to measure.
    #[arg(long = "backends", value_enum, num_args = 1.., default_values = ["local", "docker"])]
    pub backends: Vec<BackendArg>,
    /// Measured evaluations per backend (after one warm-up).
    #[arg(short, long, default_value_t = 5)]
    pub n: usize,
    #[arg(long = "env-specs")]
    pub env_specs: Vec<PathBuf>,
}

#[derive(Debug, Serialize)]
struct HarnessBench {
    bench: &'static str,
    backend: &'static str,
    instance_id: String,
    n: usize,
    status: String,
    median_total_s: f64,
    median_test_s: f64,
    /// Total minus test command: what the harness itself costs.
    median_overhead_s: f64,
    min_overhead_s: f64,
    max_overhead_s: f64,
    /// Sandbox create + destroy alone.
    median_sandbox_s: f64,
}

pub async fn run(ctx: &Context, cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Harness(args) => harness(ctx, args).await,
        BenchCommand::Generate(args) => generate::bench_generate(ctx, args).await,
        BenchCommand::Train(args) => train::bench(ctx, args).await,
        BenchCommand::Sample(args) => sample::bench(ctx, args).await,
    }
}

/// Our model and the reference side of a model benchmark (transformers / PEFT).
#[derive(clap::Args, Debug, Clone)]
pub struct ReferenceModels {
    /// Our model (default: the SmolLM2 GGUF in the cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The same model as an HF folder for the Python side (default: <cache>/models/smollm2-hf,
    /// made by crates/lm/scripts/make_smollm2_hf.py; `SWEGYM_SETUP_REF=1 make setup` makes it).
    #[arg(long)]
    pub hf_model: Option<PathBuf>,
    /// Python with torch + transformers + peft (default: <cache>/venv-ref/bin/python).
    #[arg(long)]
    pub python: Option<PathBuf>,
}

impl ReferenceModels {
    /// `(model, hf_model, python)` with the cache defaults filled in.
    pub fn resolve(&self, ctx: &crate::context::Context) -> (PathBuf, PathBuf, PathBuf) {
        let models = ctx.cache_root.join("models");
        (
            self.model.clone().unwrap_or_else(|| models.join("SmolLM2-135M-Instruct.Q4_1.gguf")),
            self.hf_model.clone().unwrap_or_else(|| models.join("smollm2-hf")),
            self.python.clone().unwrap_or_else(|| ctx.cache_root.join("venv-ref/bin/python")),
        )
    }

    /// Whether the Python side can run: its interpreter and the HF folder exist.
    pub fn python_side_here(&self, ctx: &crate::context::Context) -> bool {
        let (_, hf_model, python) = self.resolve(ctx);
        python.exists() && hf_model.join("model.safetensors").exists()
    }
}

/// A peer's benchmark script must exist before anything is measured: the default paths are
/// relative to the clone's root, so a benchmark started elsewhere says so instead of failing
/// halfway with "No such file".
pub fn require_script(script: &std::path::Path) -> anyhow::Result<()> {
    if script.is_file() {
        return Ok(());
    }
    Err(Exit::bad_input(format!(
        "the peer's benchmark script {} is not there: run swegym from the clone's root (the default is relative to it) or pass --script",
        script.display()
    )))
}

/// min / median / max of a sample.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stat {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(mut v: Vec<f64>) -> Stat {
        v.sort_by(f64::total_cmp);
        Stat { min: v[0], median: median(&mut v.clone()), max: v[v.len() - 1] }
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

async fn harness(ctx: &Context, args: HarnessBenchArgs) -> anyhow::Result<()> {
    let tasks = load_dataset(&args.dataset, ctx.task_load)?;
    let task = match &args.instance_id {
        Some(id) => tasks.iter().find(|t| &t.instance_id == id).ok_or_else(|| Exit::bad_input(format!("{id} is not in the dataset")))?,
        None => &tasks[0],
    };
    let task = Arc::new(task.clone());
    for backend in &args.backends {
        let hargs = HarnessArgs {
            backend: *backend,
            jobs: 1,
            env_specs: args.env_specs.clone(),
            timeout: None,
            memory_gib: 4.0,
            out: None,
        };
        let harness = hargs.harness(ctx, &args.dataset).await?;
        let job = || Job {
            task: Arc::clone(&task),
            kind: JobKind::Patch { patch: task.patch.clone(), model_name_or_path: "gold".into() },
            label: "gold".into(),
        };
        // Warm-up: builds the environment and the caches.
        let warm = harness.run(vec![job()], |_| {}).await;
        let status = warm[0].outcome.verdict.status;
        if status.is_infra_failure() {
            return Err(Exit::infra(format!(
                "{} backend: warm-up failed: {}",
                backend.name(),
                warm[0].outcome.verdict.error.clone().unwrap_or_default()
            )));
        }
        let (mut total, mut test, mut overhead, mut sandbox) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.n {
            let r = harness.run(vec![job()], |_| {}).await.remove(0);
            let v = &r.outcome.verdict;
            total.push(v.total_seconds + r.sandbox_seconds);
            test.push(v.test_seconds);
            overhead.push(v.total_seconds + r.sandbox_seconds - v.test_seconds);
            sandbox.push(r.sandbox_seconds);
        }
        let (min, max) = overhead.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let result = HarnessBench {
            bench: "harness_overhead",
            backend: backend.name(),
            instance_id: task.instance_id.clone(),
            n: args.n,
            status: status.to_string(),
            median_total_s: median(&mut total),
            median_test_s: median(&mut test),
            median_overhead_s: median(&mut overhead),
            min_overhead_s: min,
            max_overhead_s: max,
            median_sandbox_s: median(&mut sandbox),
        };
        println!("{}", serde_json::to_string(&result)?);
    }
    Ok(())
}
