//! `swegym dataset validate|stats`: check that a dataset's instances are executable and
//! graded as SWE-bench would, or describe it as the SWE-Gym paper's dataset table does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use swegym_evaluate::runner::{Job, JobKind, JobResult};
use swegym_schema::{DatasetStats, EvalStatus};

use crate::context::Context;
use crate::evaluate::{load_dataset, HarnessArgs};
use crate::output;
use crate::Exit;

#[derive(clap::Subcommand, Debug)]
pub enum DatasetCommand {
    /// Per instance: FAIL_TO_PASS fails before the gold patch, the gold patch resolves, an
    /// empty patch does not. Exit code 1 if any instance is invalid.
    Validate(ValidateArgs),
    /// Instances, repos, issue words, gold-patch size and test counts (mean / median / max).
    Stats(StatsArgs),
}

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// Task dataset: JSONL, JSON array or Parquet.
    pub dataset: PathBuf,
    /// Only these instance ids.
    #[arg(long = "instance-ids", num_args = 1..)]
    pub instance_ids: Vec<String>,
    #[command(flatten)]
    pub harness: HarnessArgs,
}

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    pub dataset: PathBuf,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Context, cmd: DatasetCommand) -> anyhow::Result<()> {
    match cmd {
        DatasetCommand::Validate(args) => validate(ctx, args).await,
        DatasetCommand::Stats(args) => stats(args),
    }
}

fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let tasks = load_dataset(&args.dataset)?;
    let stats = DatasetStats::compute(&tasks);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", stats.to_table());
    }
    Ok(())
}

/// The three checks of one instance.
#[derive(Debug, Serialize)]
struct InstanceValidation {
    instance_id: String,
    valid: bool,
    /// Before any patch: FAIL_TO_PASS tests that already pass (must be none).
    before_status: EvalStatus,
    before_f2p_passing: Vec<String>,
    gold_status: EvalStatus,
    empty_status: EvalStatus,
    problems: Vec<String>,
}

const LABELS: [&str; 3] = ["before", "gold", "empty"];

async fn validate(ctx: &Context, args: ValidateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tasks = load_dataset(&args.dataset)?;
    if !args.instance_ids.is_empty() {
        tasks.retain(|t| args.instance_ids.contains(&t.instance_id));
        if tasks.is_empty() {
            return Err(Exit::bad_input("none of --instance-ids is in the dataset"));
        }
    }
    let out_dir = args.harness.out.clone().unwrap_or_else(|| output::default_out_dir("validate"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let harness = args.harness.harness(ctx, &args.dataset).await?;
    let mut jobs = Vec::new();
    for task in &tasks {
        let task = Arc::new(task.clone());
        jobs.push(Job { task: Arc::clone(&task), kind: JobKind::TestsOnly, label: LABELS[0].into() });
        let gold = JobKind::Patch { patch: task.patch.clone(), model_name_or_path: "gold".into() };
        jobs.push(Job { task: Arc::clone(&task), kind: gold, label: LABELS[1].into() });
        let empty = JobKind::Patch { patch: String::new(), model_name_or_path: "empty".into() };
        jobs.push(Job { task, kind: empty, label: LABELS[2].into() });
    }
    let bar = output::progress(jobs.len(), "validating");
    let bar2 = bar.clone();
    let results = harness
        .run(jobs, move |r| {
            bar2.inc(1);
            bar2.println(format!("{:<50} {:<7} {}", r.outcome.verdict.instance_id, r.label, r.outcome.verdict.status));
        })
        .await;
    bar.finish_and_clear();
    let verdicts = output::write_logs(&out_dir, &results)?;
    output::write_verdicts(&out_dir, "verdicts.parquet", &verdicts)?;

    let checks: Vec<InstanceValidation> = results.chunks(3).map(check_instance).collect();
    output::write_json(&out_dir.join("validation.json"), &checks)?;
    println!("{:<50} {:<16} {:<16} {:<16} valid", "instance", "before (F2P)", "gold", "empty");
    for c in &checks {
        let before = match c.before_status {
            EvalStatus::EnvError | EvalStatus::TestTimeout => c.before_status.as_str().to_string(),
            _ if c.before_f2p_passing.is_empty() => "fails".to_string(),
            _ => format!("{} pass", c.before_f2p_passing.len()),
        };
        println!(
            "{:<50} {:<16} {:<16} {:<16} {}",
            c.instance_id,
            before,
            c.gold_status.as_str(),
            c.empty_status.as_str(),
            if c.valid { "yes" } else { "NO" }
        );
        for p in &c.problems {
            println!("    {p}");
        }
    }
    let invalid = checks.iter().filter(|c| !c.valid).count();
    println!(
        "{} of {} instances valid ({} backend, {:.1} s); logs in {}",
        checks.len() - invalid,
        checks.len(),
        args.harness.backend.name(),
        started.elapsed().as_secs_f64(),
        out_dir.display()
    );
    if invalid > 0 {
        return Err(Exit::check_failed(format!("{invalid} instance(s) invalid; see the logs in {}", out_dir.display())));
    }
    Ok(())
}

fn check_instance(results: &[JobResult]) -> InstanceValidation {
    let [before, gold, empty] = results else { unreachable!("three jobs per instance") };
    let before_f2p_passing: Vec<String> = before
        .outcome
        .grade
        .as_ref()
        .map(|g| g.f2p_passing().into_iter().map(str::to_string).collect())
        .unwrap_or_default();
    let mut problems = Vec::new();
    let b = &before.outcome.verdict;
    if matches!(b.status, EvalStatus::EnvError | EvalStatus::TestTimeout) {
        problems.push(format!("before: the tests did not run cleanly ({}: {})", b.status, b.error.clone().unwrap_or_default()));
    }
    if !before_f2p_passing.is_empty() {
        problems.push(format!("before: FAIL_TO_PASS tests pass without the fix: {}", before_f2p_passing.join(", ")));
    }
    let g = &gold.outcome.verdict;
    if g.status != EvalStatus::Resolved {
        let detail = g.error.clone().unwrap_or_else(|| g.failed_tests.iter().take(5).cloned().collect::<Vec<_>>().join(", "));
        problems.push(format!("gold: {} ({detail})", g.status));
    }
    let e = &empty.outcome.verdict;
    if e.resolved || e.status != EvalStatus::EmptyPatch {
        problems.push(format!("empty: expected empty_patch, got {}", e.status));
    }
    InstanceValidation {
        instance_id: g.instance_id.clone(),
        valid: problems.is_empty(),
        before_status: b.status,
        before_f2p_passing,
        gold_status: g.status,
        empty_status: e.status,
        problems,
    }
}
