//! `swegym evaluate`: grade SWE-bench predictions against a task dataset.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use swegym_evaluate::runner::{Harness, Job, JobKind};
use swegym_evaluate::EvalOptions;
use swegym_sandbox::Limits;
use swegym_schema::{load_predictions, Prediction, Task};

use crate::context::{BackendArg, Context};
use crate::output::{self, Summary};
use crate::exit::Exit;

/// Options shared by everything that runs the harness.
#[derive(clap::Args, Debug, Clone)]
pub struct HarnessArgs {
    /// Sandbox backend.
    #[arg(long, value_enum, default_value = "local")]
    pub backend: BackendArg,
    /// Evaluations running at once.
    #[arg(short = 'j', long, default_value_t = 2)]
    pub jobs: usize,
    /// More environment specs (`environments.toml`); later ones override earlier ones.
    #[arg(long = "env-specs")]
    pub env_specs: Vec<PathBuf>,
    /// Seconds the test command may run (default: the environment spec's, 1800 unless set).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Memory limit of one sandbox, GiB.
    #[arg(long, default_value_t = 4.0)]
    pub memory_gib: f64,
    /// Output directory (default runs/<command>-<time>).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

impl HarnessArgs {
    pub async fn harness(&self, ctx: &Context, dataset: &std::path::Path) -> anyhow::Result<Arc<Harness>> {
        let specs = ctx.env_specs(dataset, &self.env_specs)?;
        let backend = ctx.backend(self.backend).await?;
        let limits = Limits { memory_bytes: (self.memory_gib * (1u64 << 30) as f64) as u64, ..Limits::default() };
        let eval = EvalOptions { test_timeout: self.timeout.map(Duration::from_secs), ..EvalOptions::default() };
        Ok(Arc::new(Harness::new(backend, specs, ctx.source_options(), limits, eval, self.jobs)))
    }
}

#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// Task dataset: JSONL, JSON array or Parquet in the SWE-bench / SWE-Gym schema.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Predictions: JSONL (or JSON) rows of instance_id, model_name_or_path, model_patch.
    #[arg(long)]
    pub predictions: PathBuf,
    /// Only these instance ids.
    #[arg(long = "instance-ids", num_args = 1..)]
    pub instance_ids: Vec<String>,
    #[command(flatten)]
    pub harness: HarnessArgs,
}

/// Loads a dataset, printing bad rows and failing only if nothing loads.
pub fn load_dataset(path: &std::path::Path, options: swegym_schema::LoadOptions) -> anyhow::Result<Vec<Task>> {
    let load = swegym_schema::load_tasks_with(path, options).map_err(|e| Exit::bad_input(e.to_string()))?;
    for e in &load.errors {
        eprintln!("warning: skipping {e}");
    }
    if load.tasks.is_empty() {
        return Err(Exit::bad_input(format!("{}: no task could be read ({} bad rows)", path.display(), load.errors.len())));
    }
    Ok(load.tasks)
}

pub async fn run(ctx: &Context, args: EvaluateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let tasks = load_dataset(&args.dataset, ctx.task_load)?;
    let (predictions, bad) = load_predictions(&args.predictions).map_err(|e| Exit::bad_input(e.to_string()))?;
    for e in &bad {
        eprintln!("warning: skipping {e}");
    }
    let only: HashSet<&str> = args.instance_ids.iter().map(String::as_str).collect();
    let Matched { jobs, unknown, seen } = match_predictions(&tasks, &predictions, &only);
    if jobs.is_empty() {
        return Err(Exit::bad_input(format!(
            "no prediction in {} matches an instance of {}",
            args.predictions.display(),
            args.dataset.display()
        )));
    }
    let total_instances = if only.is_empty() { tasks.len() } else { only.len() };
    let missing: Vec<String> = tasks
        .iter()
        .filter(|t| (only.is_empty() || only.contains(t.instance_id.as_str())) && !seen.contains(&t.instance_id))
        .map(|t| t.instance_id.clone())
        .collect();
    let out_dir = args.harness.out.clone().unwrap_or_else(|| output::default_out_dir("evaluate"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let harness = args.harness.harness(ctx, &args.dataset).await?;
    let bar = output::progress(jobs.len(), "evaluating");
    let bar2 = bar.clone();
    let results = harness
        .run(jobs, move |r| {
            bar2.inc(1);
            bar2.println(format!("{:<50} {}", r.outcome.verdict.instance_id, r.outcome.verdict.status));
        })
        .await;
    bar.finish_and_clear();
    let verdicts = output::write_logs(&out_dir, &results)?;
    output::write_verdicts(&out_dir, "verdicts.parquet", &verdicts)?;
    let summary = Summary::new(total_instances, &verdicts, missing, unknown, started.elapsed().as_secs_f64());
    output::write_json(&out_dir.join("summary.json"), &summary)?;
    summary.print(&out_dir);
    if let Some(why) = all_failed_in_the_infrastructure(verdicts.iter()) {
        return Err(Exit::infra(format!("{why}; no patch was graded (logs in {})", out_dir.display())));
    }
    Ok(())
}

/// The predictions matched with the dataset's tasks.
struct Matched {
    /// One grading job per instance (its first prediction).
    jobs: Vec<Job>,
    /// Instance ids of predictions the dataset does not have.
    unknown: Vec<String>,
    /// Instance ids that have a job.
    seen: HashSet<String>,
}

/// A job for the first prediction of each task of `tasks` (of `only`'s, when not empty);
/// a later prediction for the same task is skipped with a warning.
fn match_predictions(tasks: &[Task], predictions: &[Prediction], only: &HashSet<&str>) -> Matched {
    let by_id: HashMap<&str, &Task> = tasks.iter().map(|t| (t.instance_id.as_str(), t)).collect();
    let mut m = Matched { jobs: Vec::new(), unknown: Vec::new(), seen: HashSet::new() };
    for p in predictions {
        if !only.is_empty() && !only.contains(p.instance_id.as_str()) {
            continue;
        }
        let Some(task) = by_id.get(p.instance_id.as_str()) else {
            m.unknown.push(p.instance_id.clone());
            continue;
        };
        if !m.seen.insert(p.instance_id.clone()) {
            eprintln!("warning: a second prediction for {} is skipped", p.instance_id);
            continue;
        }
        let label = if p.model_name_or_path.is_empty() { "prediction".to_string() } else { p.model_name_or_path.clone() };
        m.jobs.push(Job {
            task: Arc::new((*task).clone()),
            kind: JobKind::Patch { patch: p.model_patch.clone(), model_name_or_path: p.model_name_or_path.clone() },
            label,
        });
    }
    m
}

/// When every one of (at least one) verdicts is the infrastructure's failure (`env_error`),
/// what to tell the user: a stage in which nothing was graded has failed, whatever it wrote.
pub fn all_failed_in_the_infrastructure<'a>(verdicts: impl Iterator<Item = &'a swegym_schema::Verdict>) -> Option<String> {
    let (mut n, mut first) = (0usize, None);
    for v in verdicts {
        if !v.status.is_infra_failure() {
            return None;
        }
        n += 1;
        if first.is_none() {
            first = Some(format!("{}: {}", v.instance_id, v.error.as_deref().unwrap_or("no message")));
        }
    }
    first.map(|first| format!("every one of {n} grading jobs failed in the infrastructure (env_error); the first: {first}"))
}
