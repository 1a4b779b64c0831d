//! `swegym mine`: task instances from a local git history, as SWE-bench builds them minus
//! GitHub. Commits changing both source and tests → candidates (base = parent, `patch` =
//! source part, `test_patch` = test part, problem statement = commit message) → the tests
//! before (base + test patch) and twice after (+ gold patch) in sandboxes → keep candidates
//! with ≥ 1 FAIL_TO_PASS test, record PASS_TO_PASS (tests passing in both runs after).
//!
//! Out: `<out>/tasks.jsonl`, `<out>/environments.toml` (a `git` source at the repository),
//! `<out>/mine_report.json`, `<out>/logs/<instance>/{before,after,after-again}.log` (every
//! candidate's test runs, kept or not).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use swegym_evaluate::patch::is_test_path;
use swegym_evaluate::runner::{Harness, Job, JobKind, JobResult};
use swegym_sandbox::spec::DEFAULT_PYTEST_CMD;
use swegym_schema::Task;
use swegym_synth::judge::{judge_mined, run_problems, TestRun};
use swegym_synth::mine::{mine, MineOptions, MinedCommit};
use swegym_synth::DropReason;

use crate::context::Context;
use crate::evaluate::HarnessArgs;
use crate::output;
use crate::exit::Exit;
use crate::synth::test_run;

#[derive(clap::Args, Debug)]
pub struct MineArgs {
    /// A local git repository (a clone; its history from HEAD is read).
    #[arg(long)]
    pub repo: PathBuf,
    /// `owner/name` written into the rows (default `local/<directory name>`).
    #[arg(long)]
    pub name: Option<String>,
    /// The environment's version key written into the rows.
    #[arg(long, default_value = "0")]
    pub version: String,
    /// pyenv Python version of the environment.
    #[arg(long, default_value = "3.11")]
    pub python: String,
    /// Test requirements (pip specifiers).
    #[arg(long = "pip", default_values_t = ["pytest<9".to_string()])]
    pub pip: Vec<String>,
    /// Install commands run in /testbed (default `pip install -e .`).
    #[arg(long = "install")]
    pub install: Vec<String>,
    /// Test command (default: SWE-bench's pytest command with `--continue-on-collection-errors`,
    /// so that a test module importing what only the fix adds fails alone instead of stopping
    /// the whole run before the fix).
    #[arg(long)]
    pub test_cmd: Option<String>,
    /// Only commits after this date (`git log --since`).
    #[arg(long)]
    pub since: Option<String>,
    /// Newest commits looked at, at most.
    #[arg(long)]
    pub max_commits: Option<usize>,
    /// Also merge commits (diffed against their first parent).
    #[arg(long)]
    pub merges: bool,
    /// Build one environment at this revision for every candidate (default: one per base commit).
    #[arg(long)]
    pub env_commit: Option<String>,
    #[command(flatten)]
    pub harness: HarnessArgs,
}

#[derive(Debug, Serialize)]
struct MineReport {
    repo: String,
    commits_seen: usize,
    candidates: usize,
    kept: usize,
    dropped: BTreeMap<DropReason, u32>,
    wall_seconds: f64,
    /// What became of each candidate, newest first (the logs are in `logs/<instance_id>/`).
    outcomes: Vec<CandidateOutcome>,
}

/// One candidate's fate: kept with its test counts, or dropped with the reason and what
/// the harness said about its runs.
#[derive(Debug, Serialize)]
struct CandidateOutcome {
    instance_id: String,
    commit: String,
    /// The commit message's first line.
    subject: String,
    kept: bool,
    dropped: Option<DropReason>,
    fail_to_pass: usize,
    pass_to_pass: usize,
    /// The harness's problem with the runs (`before: pytest exited with 4 …`), if any.
    detail: Option<String>,
}

/// `git -C repo args…`'s trimmed output; its stderr in the error when it fails.
fn git(repo: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git").arg("-C").arg(repo).args(args).output().context("running git")?;
    anyhow::ensure!(out.status.success(), "git {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Mines the repository's history, runs each candidate's tests and writes the kept rows,
/// the environment and the report.
pub async fn run(ctx: &Context, args: MineArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let repo = std::fs::canonicalize(&args.repo).map_err(|e| Exit::bad_input(format!("--repo {}: {e}", args.repo.display())))?;
    let name = repo_name(&args, &repo)?;
    let opts = MineOptions { since: args.since.clone(), max_commits: args.max_commits, include_merges: args.merges };
    let mined = mine(&repo, &opts, &is_test_path).map_err(|e| Exit::bad_input(e.to_string()))?;
    let env_commit = match &args.env_commit {
        Some(rev) => Some(git(&repo, &["rev-parse", &format!("{rev}^{{commit}}")]).map_err(|e| Exit::bad_input(format!("--env-commit: {e}")))?),
        None => None,
    };
    let out_dir = args.harness.out.clone().unwrap_or_else(|| output::default_out_dir("mine"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    std::fs::write(out_dir.join("environments.toml"), env_toml(&args, &name, &repo)).context("writing environments.toml")?;
    eprintln!("{}: {} commits read, {} candidates (source + tests)", repo.display(), mined.commits_seen, mined.candidates.len());

    let prefix = name.replace('/', "__");
    let tasks: Vec<Task> = mined.candidates.iter().map(|c| candidate_task(c, &prefix, &name, &args.version, &env_commit)).collect();
    let mut judged = Judged { kept: Vec::new(), dropped: mined.skipped.clone(), outcomes: Vec::new() };
    if !tasks.is_empty() {
        let harness = args.harness.harness(ctx, &out_dir.join("tasks.jsonl")).await?;
        let (first, second) = run_candidates(&harness, &tasks, &out_dir).await?;
        for (((task, candidate), pair), again) in tasks.iter().zip(&mined.candidates).zip(first.chunks(2)).zip(&second) {
            let [before, after] = pair else { unreachable!("two jobs per candidate") };
            judged.judge(task, candidate, [before, after, again].map(test_run));
        }
    }
    swegym_schema::write_tasks(&out_dir.join("tasks.jsonl"), &judged.kept)?;
    let report = MineReport {
        repo: name,
        commits_seen: mined.commits_seen,
        candidates: tasks.len(),
        kept: judged.kept.len(),
        dropped: judged.dropped,
        wall_seconds: started.elapsed().as_secs_f64(),
        outcomes: judged.outcomes,
    };
    output::write_json(&out_dir.join("mine_report.json"), &report)?;
    let drops: Vec<String> = report.dropped.iter().map(|(r, n)| format!("{}: {n}", r.as_str())).collect();
    println!(
        "{} instances kept of {} candidates ({} commits; dropped {}) → {}",
        report.kept,
        report.candidates,
        report.commits_seen,
        if drops.is_empty() { "none".to_string() } else { drops.join(", ") },
        out_dir.join("tasks.jsonl").display()
    );
    Ok(())
}

/// `--name`, which must be `owner/name`, or `local/<directory name>`.
fn repo_name(args: &MineArgs, repo: &Path) -> anyhow::Result<String> {
    match &args.name {
        Some(n) if n.split('/').count() == 2 => Ok(n.clone()),
        Some(n) => Err(Exit::bad_input(format!("--name {n:?} must be `owner/name`"))),
        None => Ok(format!("local/{}", repo.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_else(|| "repo".into()))),
    }
}

/// The task of one mined commit (its test lists empty until judged).
fn candidate_task(c: &MinedCommit, prefix: &str, name: &str, version: &str, env_commit: &Option<String>) -> Task {
    Task {
        instance_id: c.instance_id(prefix),
        repo: name.to_string(),
        base_commit: c.parent.clone(),
        patch: c.patch.clone(),
        test_patch: c.test_patch.clone(),
        problem_statement: c.message.clone(),
        hints_text: String::new(),
        fail_to_pass: Vec::new(),
        pass_to_pass: Vec::new(),
        version: version.to_string(),
        environment_setup_commit: env_commit.clone(),
        created_at: c.created_at.clone(),
    }
}

/// Runs every candidate's tests: per candidate, before the fix and after it; then, once
/// every candidate has run, after it again (the reference is what passes in both runs
/// after: a test whose id holds the clock would be a PASS_TO_PASS test no later run can
/// find, and two runs at once could share the clock). Writes the logs; returns the
/// (before, after) pairs and the runs after again, in candidate order.
async fn run_candidates(harness: &Arc<Harness>, tasks: &[Task], out_dir: &Path) -> anyhow::Result<(Vec<JobResult>, Vec<JobResult>)> {
    let gold = |t: &Arc<Task>, label: &str| Job {
        task: Arc::clone(t),
        kind: JobKind::Patch { patch: t.patch.clone(), model_name_or_path: "gold".into() },
        label: label.into(),
    };
    let shared: Vec<Arc<Task>> = tasks.iter().cloned().map(Arc::new).collect();
    let mut jobs = Vec::new();
    for t in &shared {
        jobs.push(Job { task: Arc::clone(t), kind: JobKind::TestsOnly, label: "before".into() });
        jobs.push(gold(t, "after"));
    }
    let again: Vec<Job> = shared.iter().map(|t| gold(t, "after-again")).collect();
    let bar = output::progress(jobs.len() + again.len(), "mining");
    let bar2 = bar.clone();
    let first = harness.run(jobs, move |_| bar2.inc(1)).await;
    let bar2 = bar.clone();
    let second = harness.run(again, move |_| bar2.inc(1)).await;
    bar.finish_and_clear();
    output::write_logs(out_dir, &first)?;
    output::write_logs(out_dir, &second)?;
    Ok((first, second))
}

/// The candidates judged so far: kept tasks, drops by reason (the commits passed over
/// included), each candidate's outcome.
struct Judged {
    kept: Vec<Task>,
    dropped: BTreeMap<DropReason, u32>,
    outcomes: Vec<CandidateOutcome>,
}

impl Judged {
    /// Keeps or drops one candidate from its runs before, after and after again.
    fn judge(&mut self, task: &Task, candidate: &MinedCommit, [before, after, again]: [TestRun; 3]) {
        let mut outcome = CandidateOutcome {
            instance_id: task.instance_id.clone(),
            commit: candidate.commit.clone(),
            subject: candidate.subject().to_string(),
            kept: false,
            dropped: None,
            fail_to_pass: 0,
            pass_to_pass: 0,
            detail: run_problems(&[&before, &after, &again]),
        };
        match judge_mined(&before, &after, &again) {
            Ok(sel) => {
                let mut t = task.clone();
                t.fail_to_pass = sel.fail_to_pass;
                t.pass_to_pass = sel.pass_to_pass;
                tracing::info!(instance_id = %t.instance_id, f2p = t.fail_to_pass.len(), p2p = t.pass_to_pass.len(), "kept");
                (outcome.kept, outcome.fail_to_pass, outcome.pass_to_pass) = (true, t.fail_to_pass.len(), t.pass_to_pass.len());
                self.kept.push(t);
            }
            Err(reason) => {
                tracing::info!(instance_id = %task.instance_id, reason = reason.as_str(), "dropped");
                *self.dropped.entry(reason).or_default() += 1;
                outcome.dropped = Some(reason);
            }
        }
        self.outcomes.push(outcome);
    }
}

/// The environment of the mined rows: a `git` source at the repository itself.
fn env_toml(args: &MineArgs, name: &str, repo: &Path) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let list = |v: &[String]| format!("[{}]", v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", "));
    let mut t = format!(
        "# Written by `swegym mine`; the rows' base commits are fetched from this repository.\n[[environment]]\nrepo = {}\nversion = {}\npython = {}\ngit = {}\npip = {}\n",
        q(name),
        q(&args.version),
        q(&args.python),
        q(&repo.to_string_lossy()),
        list(&args.pip)
    );
    if !args.install.is_empty() {
        t.push_str(&format!("install = {}\n", list(&args.install)));
    }
    let cmd = args.test_cmd.clone().unwrap_or_else(|| format!("{DEFAULT_PYTEST_CMD} --continue-on-collection-errors"));
    t.push_str(&format!("test_cmd = {}\n", q(&cmd)));
    t
}
