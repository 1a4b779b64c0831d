//! `swegym synth`: SWE-smith-style task synthesis in clean PyPI sdists. Per environment:
//! build it and run its test suite clean, twice (the tests passing in both are the
//! reference) → parse its Python with tree-sitter and plan
//! mutations (seeded) → run the suite on each mutant in a sandbox (the evaluate stage's
//! harness, the mutant being the task's own base commit) → keep mutants that break ≥ 1
//! test and leave others passing → rows with FAIL_TO_PASS / PASS_TO_PASS, a bug-report
//! problem statement and a function-disjoint train / test split.
//!
//! Out: `<out>/train.jsonl`, `<out>/test.jsonl`, `<out>/synth_manifest.jsonl` (kind, file,
//! function, split per instance), `<out>/synth_report.json` and the yield table printed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use swegym_evaluate::parse::{pytest_failure_messages, pytest_headline, pytest_tracebacks, TestStatus, TracebackFrame};
use swegym_evaluate::patch::is_test_path;
use swegym_evaluate::runner::{Harness, Job, JobKind, JobResult};
use swegym_sandbox::source;
use swegym_sandbox::{EnvSpec, SourceSpec};
use swegym_schema::{EvalStatus, Task};
use swegym_synth::judge::{judge_mutant, RunEnd, TestRun};
use swegym_synth::plan::{plan, PlanOptions};
use swegym_synth::select::{narrow_to_failing_files, passing, stable, unstable, Outcomes, Selection};
use swegym_synth::sources::library_sources;
use swegym_synth::split::{split_of, Split};
use swegym_synth::statement::{library_traceback, problem_statement, BugReport, FailingTest, Frame};
use swegym_synth::tier::{difficulty, Difficulty, ManifestRow};
use swegym_synth::yields::Yields;
use swegym_synth::{diff, DropReason, Mutation, MutationKind, PythonFile, SelectRules};

use crate::context::Context;
use crate::evaluate::HarnessArgs;
use crate::output;
use crate::exit::Exit;

/// Which tests a kept task's PASS_TO_PASS lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum P2pScope {
    /// The passing tests of the test files that hold a FAIL_TO_PASS test (as SWE-bench).
    Files,
    /// Every passing test of the suite.
    Suite,
}

/// What the train / test split keeps apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitBy {
    Function,
    File,
}

#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Environments to synthesize in, by repo (`owner/name`); default: every `synth` source
    /// of the --env-specs files.
    #[arg(long = "env")]
    pub envs: Vec<String>,
    /// Tasks kept per environment, at most.
    #[arg(long, default_value_t = 50)]
    pub n: usize,
    /// Seed of the mutation plan and the split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Mutants tried per environment, at most (default 8 × n).
    #[arg(long)]
    pub max_tries: Option<usize>,
    /// Mutants tried per function, at most.
    #[arg(long, default_value_t = 2)]
    pub max_per_function: usize,
    /// Mutation kinds (default: all but misspelled_name), e.g. `--kinds comparison_operator wrong_return`.
    #[arg(long, num_args = 1.., value_parser = parse_kind)]
    pub kinds: Vec<MutationKind>,
    /// Share of functions (or files, with --split-by file) whose instances go to the
    /// held-out `test` split.
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// The unit the split keeps apart: `function` (no function in both splits) or `file`
    /// (no source file in both, so no function either).
    #[arg(long, value_enum, default_value = "function")]
    pub split_by: SplitBy,
    /// Largest share of the suite's passing tests a kept bug may break.
    #[arg(long, default_value_t = 0.5)]
    pub max_fail_fraction: f64,
    /// Which passing tests go into PASS_TO_PASS.
    #[arg(long, value_enum, default_value = "files")]
    pub p2p_scope: P2pScope,
    #[command(flatten)]
    pub harness: HarnessArgs,
}

fn parse_kind(s: &str) -> Result<MutationKind, String> {
    MutationKind::parse(s).ok_or_else(|| {
        let names: Vec<&str> = MutationKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("unknown mutation kind {s:?}; one of: {}", names.join(", "))
    })
}

#[derive(Debug, Serialize)]
struct EnvReport {
    repo: String,
    version: String,
    /// Tests passing in both clean runs (the reference).
    clean_passing_tests: usize,
    /// Tests passing in one clean run only, or whose id changed between the runs.
    unstable_tests: usize,
    clean_test_seconds: f64,
    sites: usize,
    planned: usize,
    tried: usize,
    kept: usize,
    yields: Yields,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    seed: u64,
    n: usize,
    max_per_function: usize,
    test_fraction: f64,
    split_by: SplitBy,
    max_fail_fraction: f64,
    p2p_scope: P2pScope,
    kinds: Vec<MutationKind>,
    train: usize,
    test: usize,
    yields: Yields,
    envs: Vec<EnvReport>,
    wall_seconds: f64,
}

/// Synthesizes tasks in each chosen environment and writes the rows, the manifest and the
/// report; fails when no mutant was kept.
pub async fn run(ctx: &Context, args: SynthArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    check_args(&args)?;
    let out_dir = args.harness.out.clone().unwrap_or_else(|| output::default_out_dir("synth"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let harness = args.harness.harness(ctx, &out_dir.join("train.jsonl")).await?;
    let specs = chosen_envs(&args)?;
    let kinds = if args.kinds.is_empty() { MutationKind::DEFAULT.to_vec() } else { args.kinds.clone() };
    let rules = SelectRules { max_fail_fraction: args.max_fail_fraction, ..SelectRules::synth() };

    let mut found = Found::default();
    for spec in &specs {
        let span = tracing::info_span!("synth_env", repo = %spec.repo, version = %spec.version);
        let _enter = span.enter();
        let mut report = EnvReport::new(spec);
        match synth_env(&harness, spec, &args, &kinds, &rules, &mut report).await {
            Ok(kept) => found.add(spec, kept, &args),
            Err(e) => {
                eprintln!("error: {} {}: {e:#}; its tasks are left out", spec.repo, spec.version);
                report.error = Some(format!("{e:#}"));
            }
        }
        found.total.add(&report.yields);
        eprintln!("{} {}: kept {} of {} tried ({} sites)", spec.repo, spec.version, report.kept, report.tried, report.sites);
        found.reports.push(report);
    }

    let (n_train, n_test) = found.write(&out_dir)?;
    copy_env_specs(&args.harness.env_specs, &out_dir)?;
    let report = Report::new(&args, kinds, (n_train, n_test), found, started);
    output::write_json(&out_dir.join("synth_report.json"), &report)?;
    println!("{}", report.yields.to_table());
    println!(
        "{} instances ({} train, {} test) from {} environments in {:.0} s → {}",
        n_train + n_test,
        n_train,
        n_test,
        specs.len(),
        started.elapsed().as_secs_f64(),
        out_dir.display()
    );
    if n_train + n_test == 0 {
        return Err(Exit::check_failed("no mutant was kept; see the yield table and the warnings above"));
    }
    Ok(())
}

/// Refuses --n 0 and a --test-fraction outside [0, 1).
fn check_args(args: &SynthArgs) -> anyhow::Result<()> {
    if args.n == 0 {
        return Err(Exit::bad_input("--n must be at least 1"));
    }
    if !(0.0..1.0).contains(&args.test_fraction) {
        return Err(Exit::bad_input("--test-fraction must be in [0, 1)"));
    }
    Ok(())
}

/// What the environments gave: the rows with their split, their manifest rows, each
/// environment's report and the yields over all of them.
#[derive(Default)]
struct Found {
    rows: Vec<(Split, Task)>,
    manifest: Vec<ManifestRow>,
    reports: Vec<EnvReport>,
    total: Yields,
}

impl Found {
    /// Puts one environment's kept tasks into their split (by function or file key).
    fn add(&mut self, spec: &EnvSpec, kept: Kept, args: &SynthArgs) {
        for (task, m, (fail_to_pass, pass_to_pass), hardness) in kept {
            let key = match args.split_by {
                SplitBy::Function => format!("{}::{}", spec.repo, m.function_key()),
                SplitBy::File => format!("{}::{}", spec.repo, m.file),
            };
            let split = split_of(&key, args.seed, args.test_fraction);
            self.manifest.push(ManifestRow {
                instance_id: task.instance_id.clone(),
                repo: spec.repo.clone(),
                split,
                kind: m.kind,
                file: m.file.clone(),
                function: m.function.clone(),
                line: m.line,
                fail_to_pass,
                pass_to_pass,
                difficulty: Some(hardness),
            });
            self.rows.push((split, task));
        }
    }

    /// Writes `train.jsonl`, `test.jsonl` and `synth_manifest.jsonl`; (train, test) rows.
    fn write(&self, out_dir: &Path) -> anyhow::Result<(usize, usize)> {
        let write = |split: Split| -> anyhow::Result<usize> {
            let path = out_dir.join(format!("{}.jsonl", split.as_str()));
            let tasks: Vec<&Task> = self.rows.iter().filter(|(s, _)| *s == split).map(|(_, task)| task).collect();
            swegym_schema::write_tasks(&path, &tasks)?;
            Ok(tasks.len())
        };
        let n_train = write(Split::Train)?;
        let n_test = write(Split::Test)?;
        std::fs::write(out_dir.join("synth_manifest.jsonl"), jsonl(&self.manifest)?).context("writing synth_manifest.jsonl")?;
        Ok((n_train, n_test))
    }
}

/// One JSON line per item.
fn jsonl<T: Serialize>(items: &[T]) -> anyhow::Result<String> {
    let mut text = String::new();
    for item in items {
        text.push_str(&serde_json::to_string(item)?);
        text.push('\n');
    }
    Ok(text)
}

impl EnvReport {
    /// The report of an environment not yet synthesized in.
    fn new(spec: &EnvSpec) -> EnvReport {
        EnvReport {
            repo: spec.repo.clone(),
            version: spec.version.clone(),
            clean_passing_tests: 0,
            unstable_tests: 0,
            clean_test_seconds: 0.0,
            sites: 0,
            planned: 0,
            tried: 0,
            kept: 0,
            yields: Yields::default(),
            error: None,
        }
    }
}

impl Report {
    /// The run's report: its settings, the (train, test) row counts and what was found.
    fn new(args: &SynthArgs, kinds: Vec<MutationKind>, (train, test): (usize, usize), found: Found, started: Instant) -> Report {
        Report {
            seed: args.seed,
            n: args.n,
            max_per_function: args.max_per_function,
            test_fraction: args.test_fraction,
            split_by: args.split_by,
            max_fail_fraction: args.max_fail_fraction,
            p2p_scope: args.p2p_scope,
            kinds,
            train,
            test,
            yields: found.total,
            envs: found.reports,
            wall_seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// The synth environments of the --env-specs files (all, or those named by --env),
/// ordered by (repo, version).
fn chosen_envs(args: &SynthArgs) -> anyhow::Result<Vec<EnvSpec>> {
    let mut all = swegym_sandbox::EnvSpecs::default();
    for path in &args.harness.env_specs {
        all.load_file(path).map_err(|e| Exit::bad_input(e.to_string()))?;
    }
    let mut specs: Vec<EnvSpec> = all.iter().filter(|s| matches!(s.source, SourceSpec::Synth { .. })).cloned().collect();
    for want in &args.envs {
        if !specs.iter().any(|s| &s.repo == want) {
            return Err(Exit::bad_input(format!(
                "--env {want}: no `synth` environment for it in the --env-specs files; add one (synth = \"name==version\", sha256 = \"...\")"
            )));
        }
    }
    if !args.envs.is_empty() {
        specs.retain(|s| args.envs.contains(&s.repo));
    }
    if specs.is_empty() {
        return Err(Exit::bad_input(
            "no synth environment: pass --env-specs FILE with [[environment]] tables using `synth = \"name==version\"` and `sha256`",
        ));
    }
    Ok(specs)
}

/// Kept tasks of one environment with their mutation and (F2P, P2P) counts.
type Kept = Vec<(Task, Mutation, (usize, usize), Difficulty)>;

/// Synthesizes in one environment: its clean suite twice (the reference), the mutation
/// plan, then the mutants tried until `--n` are kept or the tries run out.
async fn synth_env(
    harness: &Arc<Harness>,
    spec: &EnvSpec,
    args: &SynthArgs,
    kinds: &[MutationKind],
    rules: &SelectRules,
    report: &mut EnvReport,
) -> anyhow::Result<Kept> {
    let prefix = format!("{}-synth", spec.repo.replace('/', "__"));
    let mut probe = blank_task(spec, format!("{prefix}-clean"), String::new(), String::new());
    let (_, prepared, _) = harness.environment(&probe).await.map_err(anyhow::Error::msg)?;
    probe.base_commit = source::head_commit(&prepared.repo_dir)?;
    let clean = clean_reference(harness, &probe, report).await?;
    let (sources, planned) = plan_mutants(&prepared.repo_dir, kinds, args, report)?;
    let max_tries = args.max_tries.unwrap_or(8 * args.n).min(planned.len());
    tracing::info!(sites = report.sites, planned = report.planned, max_tries, "mutation plan");
    let mut env = EnvRun { harness, spec, args, rules, prefix, clean_repo: prepared.repo_dir, sources, clean, seen_ids: HashSet::new(), kept: Vec::new(), report };
    env.try_mutants(&planned[..max_tries]).await;
    env.report.kept = env.kept.len();
    Ok(env.kept)
}

/// The clean suite, run twice, one run after the other: the reference is what passes in
/// both. A flaky test, or one whose id changes from run to run (a parameter made from the
/// clock), would otherwise look broken by every mutant and never pass for the gold patch.
async fn clean_reference(harness: &Arc<Harness>, probe: &Task, report: &mut EnvReport) -> anyhow::Result<Outcomes> {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let clean = run_jobs(harness, vec![probe.clone()]).await.pop().expect("one job");
        let v = &clean.outcome.verdict;
        if !matches!(v.status, EvalStatus::Resolved | EvalStatus::Unresolved) {
            anyhow::bail!("the clean test suite did not run cleanly ({}: {}); see the environment spec", v.status, v.error.clone().unwrap_or_default());
        }
        report.clean_test_seconds = v.test_seconds;
        runs.push(outcomes(&clean.outcome.statuses));
    }
    let clean_outcomes: Outcomes = stable(&runs[0], &runs[1]);
    report.clean_passing_tests = passing(&clean_outcomes);
    report.unstable_tests = unstable(&runs[0], &runs[1], &clean_outcomes);
    if report.unstable_tests > 0 {
        tracing::warn!(tests = report.unstable_tests, "tests flaky or with ids that change between runs are left out of the reference");
    }
    tracing::info!(passing = report.clean_passing_tests, seconds = report.clean_test_seconds, "clean suite");
    Ok(clean_outcomes)
}

/// Every mutation site of the library's own (non-test) Python files, then the plan; the
/// files' text by path.
fn plan_mutants(repo: &Path, kinds: &[MutationKind], args: &SynthArgs, report: &mut EnvReport) -> anyhow::Result<(BTreeMap<String, String>, Vec<Mutation>)> {
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    let mut sites = Vec::new();
    for rel in python_sources(repo)? {
        let text = match std::fs::read_to_string(repo.join(&rel)) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(file = %rel, error = %e, "unreadable; skipped");
                continue;
            }
        };
        match PythonFile::parse(&rel, text.clone()).and_then(|f| f.mutations(kinds)) {
            Ok(ms) => sites.extend(ms),
            Err(e) => tracing::warn!(file = %rel, error = %e, "skipped"),
        }
        sources.insert(rel, text);
    }
    report.sites = sites.len();
    let planned = plan(sites, &PlanOptions { seed: args.seed, max_per_function: args.max_per_function });
    report.planned = planned.len();
    Ok((sources, planned))
}

/// One environment's mutants being tried: what they are judged against and what is kept.
struct EnvRun<'a> {
    harness: &'a Arc<Harness>,
    spec: &'a EnvSpec,
    args: &'a SynthArgs,
    rules: &'a SelectRules,
    /// Instance ids are `<prefix>-<digest of the gold patch>`.
    prefix: String,
    /// The pristine repository (HEAD = the sdist commit).
    clean_repo: PathBuf,
    /// Clean text of each library file, by path.
    sources: BTreeMap<String, String>,
    /// The clean suite's reference outcomes.
    clean: Outcomes,
    /// Instance ids of the candidates made so far.
    seen_ids: HashSet<String>,
    kept: Kept,
    report: &'a mut EnvReport,
}

/// What became of one planned mutation in a batch.
enum Slot {
    Task(usize),
    Error,
    Duplicate,
}

impl EnvRun<'_> {
    /// Tries the mutants of `planned` in order, in batches the harness runs in parallel,
    /// until `--n` are kept.
    async fn try_mutants(&mut self, planned: &[Mutation]) {
        let batch = (self.harness.jobs * 4).max(4);
        let bar = output::progress(planned.len(), &format!("synth {}", self.spec.repo));
        for chunk in planned.chunks(batch) {
            if self.kept.len() >= self.args.n {
                break;
            }
            let (tasks, slots) = self.candidates(chunk).await;
            let results = run_jobs(self.harness, tasks.clone()).await;
            self.judge_batch(chunk, slots, &tasks, &results, &bar);
        }
        bar.finish_and_clear();
    }

    /// The candidate tasks of a batch, and what became of each mutation.
    async fn candidates(&mut self, chunk: &[Mutation]) -> (Vec<Task>, Vec<Slot>) {
        let mut tasks = Vec::new();
        let mut slots = Vec::new();
        for m in chunk {
            match self.candidate(m).await {
                // Two different edits can make the same mutant (`return not x`: the `not`
                // dropped, or the return value replaced by `x`): the first one stands.
                Ok(task) if !self.seen_ids.insert(task.instance_id.clone()) => {
                    tracing::info!(instance_id = %task.instance_id, kind = %m.kind, "same mutant as an earlier candidate; skipped");
                    slots.push(Slot::Duplicate);
                }
                Ok(task) => {
                    slots.push(Slot::Task(tasks.len()));
                    tasks.push(task);
                }
                Err(e) => {
                    tracing::warn!(kind = %m.kind, file = %m.file, function = %m.function, error = %e, reason = "candidate_error", "dropped");
                    slots.push(Slot::Error);
                }
            }
        }
        (tasks, slots)
    }

    /// The task of one mutant: gold patch = mutant → clean; base = the deterministic commit
    /// of the reverse of that patch on the sdist commit (what the harness re-creates).
    async fn candidate(&self, m: &Mutation) -> anyhow::Result<Task> {
        let original = self.sources.get(&m.file).context("source of the mutated file")?;
        let mutant = m.edit.apply(original);
        let gold = diff::file_diff(&m.file, &mutant, original);
        let id = format!("{}-{}", self.prefix, diff::patch_digest(&gold));
        let clean_repo = self.clean_repo.clone();
        let gold2 = gold.clone();
        let base = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let tmp = tempfile::tempdir().context("temp dir")?;
            Ok(source::commit_reverse_patch(&clean_repo, &gold2, &tmp.path().join("repo"))?)
        })
        .await??;
        Ok(blank_task(self.spec, id, base, gold))
    }

    /// Counts and judges a batch's mutants in plan order, stopping at the `--n`th kept.
    fn judge_batch(&mut self, chunk: &[Mutation], slots: Vec<Slot>, tasks: &[Task], results: &[JobResult], bar: &indicatif::ProgressBar) {
        for (m, slot) in chunk.iter().zip(slots) {
            bar.inc(1);
            let idx = match slot {
                Slot::Duplicate => continue,
                Slot::Error => {
                    self.report.tried += 1;
                    self.report.yields.dropped(m.kind, DropReason::CandidateError);
                    continue;
                }
                Slot::Task(idx) => idx,
            };
            self.report.tried += 1;
            if self.judge(m, &tasks[idx], &results[idx]) && self.kept.len() >= self.args.n {
                // Later results of this batch are not counted: the outcome does not
                // depend on the batch size.
                for t in &tasks[idx + 1..] {
                    let _ = source::remove_workspace(&t.instance_id, &self.harness.provisioner.sources);
                }
                return;
            }
        }
    }

    /// Keeps the mutant (true) or drops it with its reason (its workspace removed).
    fn judge(&mut self, m: &Mutation, task: &Task, result: &JobResult) -> bool {
        match judge_mutant(&test_run(result), &self.clean, self.rules) {
            Ok(selection) => {
                let (task, counts, hardness) = kept_task(task, result, m, selection, self.args.p2p_scope);
                tracing::info!(instance_id = %task.instance_id, kind = %m.kind, f2p = counts.0, p2p = counts.1, "kept");
                self.report.yields.kept(m.kind);
                self.kept.push((task, m.clone(), counts, hardness));
                true
            }
            Err(reason) => {
                tracing::info!(instance_id = %task.instance_id, kind = %m.kind, reason = reason.as_str(), "dropped");
                self.report.yields.dropped(m.kind, reason);
                let _ = source::remove_workspace(&task.instance_id, &self.harness.provisioner.sources);
                false
            }
        }
    }
}

/// A kept mutant's task: its test lists (PASS_TO_PASS narrowed to `scope`), the bug
/// report written from its run's log; with its (F2P, P2P) counts and difficulty.
fn kept_task(task: &Task, result: &JobResult, m: &Mutation, selection: Selection, scope: P2pScope) -> (Task, (usize, usize), Difficulty) {
    let selection = match scope {
        P2pScope::Files => narrow_to_failing_files(&selection),
        P2pScope::Suite => selection,
    };
    let messages = pytest_failure_messages(&result.outcome.log);
    let failing: Vec<FailingTest> = selection.fail_to_pass.iter().map(|id| FailingTest { id: id.clone(), message: messages.get(id).cloned() }).collect();
    let tracebacks = failing_tracebacks(&result.outcome.log, &selection.fail_to_pass);
    let (traceback, hits_line) = library_traceback(tracebacks.as_deref(), &m.file, m.line, &is_test_path);
    let mut task = task.clone();
    task.problem_statement = problem_statement(&BugReport { file: &m.file, function: &m.function, failing: &failing, wording_key: &task.instance_id, traceback: &traceback });
    let hardness = difficulty(&task.patch, &task.problem_statement, &m.file, m.line, hits_line);
    let counts = (selection.fail_to_pass.len(), selection.pass_to_pass.len());
    task.fail_to_pass = selection.fail_to_pass;
    task.pass_to_pass = selection.pass_to_pass;
    (task, counts, hardness)
}

/// The tracebacks of the FAIL_TO_PASS tests that the log holds, in their order (`None`:
/// the log holds no traceback, the run had tracebacks off).
fn failing_tracebacks(log: &str, fail_to_pass: &[String]) -> Option<Vec<Vec<Frame>>> {
    let tracebacks = pytest_tracebacks(log);
    if tracebacks.is_empty() {
        return None;
    }
    let frame = |f: &TracebackFrame| Frame { file: f.file.clone(), line: f.line, function: f.function.clone(), source: f.source.clone() };
    Some(fail_to_pass.iter().filter_map(|id| tracebacks.get(&pytest_headline(id))).map(|frames| frames.iter().map(frame).collect()).collect())
}

/// Runs each task's tests (no patch: the task's base is the mutant) through the harness.
async fn run_jobs(harness: &Arc<Harness>, tasks: Vec<Task>) -> Vec<JobResult> {
    let jobs: Vec<Job> = tasks.into_iter().map(|t| Job { task: Arc::new(t), kind: JobKind::TestsOnly, label: "mutant".into() }).collect();
    harness.run(jobs, |_| {}).await
}

/// One harness result as the synth stage's decisions read it.
pub(crate) fn test_run(result: &JobResult) -> TestRun {
    let o = &result.outcome;
    let end = match o.verdict.status {
        EvalStatus::Resolved | EvalStatus::Unresolved | EvalStatus::EmptyPatch => RunEnd::Tests,
        EvalStatus::TestTimeout => RunEnd::Timeout,
        EvalStatus::PatchApplyFailed => RunEnd::PatchApplyFailed,
        EvalStatus::EnvError => RunEnd::EnvError,
    };
    TestRun {
        label: result.label.clone(),
        end,
        graded: o.grade.is_some(),
        log_problem: o.log_problem.as_ref().map(ToString::to_string),
        error: o.verdict.error.clone(),
        outcomes: outcomes(&o.statuses),
    }
}

/// Test id → passed (PASSED or XFAIL).
fn outcomes(statuses: &BTreeMap<String, TestStatus>) -> Outcomes {
    statuses.iter().map(|(id, s)| (id.clone(), s.passes())).collect()
}

/// A task of the environment with the given id, base and gold patch; nothing else set.
fn blank_task(spec: &EnvSpec, instance_id: String, base_commit: String, patch: String) -> Task {
    Task {
        instance_id,
        repo: spec.repo.clone(),
        base_commit,
        patch,
        test_patch: String::new(),
        problem_statement: String::new(),
        hints_text: String::new(),
        fail_to_pass: Vec::new(),
        pass_to_pass: Vec::new(),
        version: spec.version.clone(),
        environment_setup_commit: None,
        created_at: String::new(),
    }
}

/// Tracked `.py` files that are the library's code (`swegym_synth::sources`'s rules, with
/// the harness's test-file rule). Sorted.
fn python_sources(repo: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("git").arg("-C").arg(repo).args(["ls-files", "-z", "--", "*.py"]).output().context("running git ls-files")?;
    anyhow::ensure!(out.status.success(), "git ls-files failed in {}", repo.display());
    Ok(library_sources(&String::from_utf8_lossy(&out.stdout), &is_test_path))
}

/// Puts the spec files used beside the rows (`<out>/environments.toml`) unless one is there.
fn copy_env_specs(spec_files: &[PathBuf], out_dir: &Path) -> anyhow::Result<()> {
    let target = out_dir.join("environments.toml");
    if target.exists() || spec_files.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for f in spec_files {
        text.push_str(&std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?);
        text.push('\n');
    }
    std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))
}
