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

use std::collections::BTreeMap;
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
use swegym_synth::plan::{plan, PlanOptions};
use swegym_synth::select::{narrow_to_failing_files, select, stable, Outcomes};
use swegym_synth::split::{split_of, Split};
use swegym_synth::statement::{problem_statement, BugReport, FailingTest, Frame};
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

pub async fn run(ctx: &Context, args: SynthArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.n == 0 {
        return Err(Exit::bad_input("--n must be at least 1"));
    }
    if !(0.0..1.0).contains(&args.test_fraction) {
        return Err(Exit::bad_input("--test-fraction must be in [0, 1)"));
    }
    let out_dir = args.harness.out.clone().unwrap_or_else(|| output::default_out_dir("synth"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let harness = args.harness.harness(ctx, &out_dir.join("train.jsonl")).await?;
    let specs = chosen_envs(&args)?;
    let kinds = if args.kinds.is_empty() { MutationKind::DEFAULT.to_vec() } else { args.kinds.clone() };
    let rules = SelectRules { max_fail_fraction: args.max_fail_fraction, ..SelectRules::synth() };

    let mut rows: Vec<(Split, Task)> = Vec::new();
    let mut manifest = Vec::new();
    let mut reports = Vec::new();
    let mut total = Yields::default();
    for spec in &specs {
        let span = tracing::info_span!("synth_env", repo = %spec.repo, version = %spec.version);
        let _enter = span.enter();
        let mut report = EnvReport {
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
        };
        match synth_env(&harness, spec, &args, &kinds, &rules, &mut report).await {
            Ok(kept) => {
                for (task, m, sel_counts, hardness) in kept {
                    let key = match args.split_by {
                        SplitBy::Function => format!("{}::{}", spec.repo, m.function_key()),
                        SplitBy::File => format!("{}::{}", spec.repo, m.file),
                    };
                    let split = split_of(&key, args.seed, args.test_fraction);
                    manifest.push(ManifestRow {
                        instance_id: task.instance_id.clone(),
                        repo: spec.repo.clone(),
                        split,
                        kind: m.kind,
                        file: m.file.clone(),
                        function: m.function.clone(),
                        line: m.line,
                        fail_to_pass: sel_counts.0,
                        pass_to_pass: sel_counts.1,
                        difficulty: Some(hardness),
                    });
                    rows.push((split, task));
                }
            }
            Err(e) => {
                eprintln!("error: {} {}: {e:#}; its tasks are left out", spec.repo, spec.version);
                report.error = Some(format!("{e:#}"));
            }
        }
        for (kind, y) in &report.yields.by_kind {
            let t = total.by_kind.entry(*kind).or_default();
            t.tried += y.tried;
            t.kept += y.kept;
            for (r, n) in &y.dropped {
                *t.dropped.entry(*r).or_default() += n;
            }
        }
        eprintln!("{} {}: kept {} of {} tried ({} sites)", spec.repo, spec.version, report.kept, report.tried, report.sites);
        reports.push(report);
    }

    let write = |split: Split| -> anyhow::Result<usize> {
        let path = out_dir.join(format!("{}.jsonl", split.as_str()));
        let mut text = String::new();
        let mut n = 0;
        for (s, task) in &rows {
            if *s == split {
                text.push_str(&serde_json::to_string(task)?);
                text.push('\n');
                n += 1;
            }
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(n)
    };
    let n_train = write(Split::Train)?;
    let n_test = write(Split::Test)?;
    let mut manifest_text = String::new();
    for m in &manifest {
        manifest_text.push_str(&serde_json::to_string(m)?);
        manifest_text.push('\n');
    }
    std::fs::write(out_dir.join("synth_manifest.jsonl"), manifest_text).context("writing synth_manifest.jsonl")?;
    copy_env_specs(&args.harness.env_specs, &out_dir)?;
    let report = Report {
        seed: args.seed,
        n: args.n,
        max_per_function: args.max_per_function,
        test_fraction: args.test_fraction,
        split_by: args.split_by,
        max_fail_fraction: args.max_fail_fraction,
        p2p_scope: args.p2p_scope,
        kinds,
        train: n_train,
        test: n_test,
        yields: total.clone(),
        envs: reports,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    output::write_json(&out_dir.join("synth_report.json"), &report)?;
    println!("{}", total.to_table());
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

    // The clean suite, run twice, one run after the other: the reference is what passes in
    // both. A flaky test, or one whose id changes from run to run (a parameter made from the
    // clock), would otherwise look broken by every mutant and never pass for the gold patch.
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
    report.clean_passing_tests = clean_outcomes.values().filter(|p| **p).count();
    report.unstable_tests = runs[0].values().filter(|p| **p).count().max(runs[1].values().filter(|p| **p).count()) - report.clean_passing_tests;
    if report.unstable_tests > 0 {
        tracing::warn!(tests = report.unstable_tests, "tests flaky or with ids that change between runs are left out of the reference");
    }
    tracing::info!(passing = report.clean_passing_tests, seconds = report.clean_test_seconds, "clean suite");

    // Every mutation site of the library's own (non-test) Python files, then the plan.
    let files = python_sources(&prepared.repo_dir)?;
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    let mut sites = Vec::new();
    for rel in files {
        let text = match std::fs::read_to_string(prepared.repo_dir.join(&rel)) {
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
    let max_tries = args.max_tries.unwrap_or(8 * args.n).min(planned.len());
    tracing::info!(sites = report.sites, planned = report.planned, max_tries, "mutation plan");

    let mut kept: Kept = Vec::new();
    let batch = (harness.jobs * 4).max(4);
    let bar = output::progress(max_tries, &format!("synth {}", spec.repo));
    let mut next = 0;
    let mut seen_ids = std::collections::HashSet::new();
    'batches: while next < max_tries && kept.len() < args.n {
        let chunk = &planned[next..(next + batch).min(max_tries)];
        next += chunk.len();
        let mut tasks = Vec::new();
        let mut pending = Vec::new();
        for m in chunk {
            match candidate(spec, &prefix, &prepared.repo_dir, &sources, m).await {
                // Two different edits can make the same mutant (`return not x`: the `not`
                // dropped, or the return value replaced by `x`): the first one stands.
                Ok(task) if !seen_ids.insert(task.instance_id.clone()) => {
                    tracing::info!(instance_id = %task.instance_id, kind = %m.kind, "same mutant as an earlier candidate; skipped");
                    pending.push(Slot::Duplicate);
                }
                Ok(task) => {
                    pending.push(Slot::Task(tasks.len()));
                    tasks.push(task);
                }
                Err(e) => {
                    tracing::warn!(kind = %m.kind, file = %m.file, function = %m.function, error = %e, reason = "candidate_error", "dropped");
                    pending.push(Slot::Error);
                }
            }
        }
        let results = run_jobs(harness, tasks.clone()).await;
        for (m, slot) in chunk.iter().zip(pending) {
            bar.inc(1);
            let idx = match slot {
                Slot::Duplicate => continue,
                Slot::Error => {
                    report.tried += 1;
                    report.yields.dropped(m.kind, DropReason::CandidateError);
                    continue;
                }
                Slot::Task(idx) => idx,
            };
            report.tried += 1;
            let (task, result) = (&tasks[idx], &results[idx]);
            match judge(result, &clean_outcomes, rules) {
                Ok(selection) => {
                    let selection = match args.p2p_scope {
                        P2pScope::Files => narrow_to_failing_files(&selection),
                        P2pScope::Suite => selection,
                    };
                    let messages = pytest_failure_messages(&result.outcome.log);
                    let failing: Vec<FailingTest> = selection
                        .fail_to_pass
                        .iter()
                        .map(|id| FailingTest { id: id.clone(), message: messages.get(id).cloned() })
                        .collect();
                    let (traceback, hits_line) = library_traceback(&result.outcome.log, &selection.fail_to_pass, m);
                    let mut task = task.clone();
                    task.problem_statement = problem_statement(&BugReport {
                        file: &m.file,
                        function: &m.function,
                        failing: &failing,
                        wording_key: &task.instance_id,
                        traceback: &traceback,
                    });
                    let hardness = difficulty(&task.patch, &task.problem_statement, &m.file, m.line, hits_line);
                    let counts = (selection.fail_to_pass.len(), selection.pass_to_pass.len());
                    task.fail_to_pass = selection.fail_to_pass;
                    task.pass_to_pass = selection.pass_to_pass;
                    tracing::info!(instance_id = %task.instance_id, kind = %m.kind, f2p = counts.0, p2p = counts.1, "kept");
                    report.yields.kept(m.kind);
                    kept.push((task, m.clone(), counts, hardness));
                    if kept.len() >= args.n {
                        // Later results of this batch are not counted: the outcome does not
                        // depend on the batch size.
                        for t in &tasks[idx + 1..] {
                            let _ = source::remove_workspace(&t.instance_id, &harness.provisioner.sources);
                        }
                        break 'batches;
                    }
                }
                Err(reason) => {
                    tracing::info!(instance_id = %task.instance_id, kind = %m.kind, reason = reason.as_str(), "dropped");
                    report.yields.dropped(m.kind, reason);
                    let _ = source::remove_workspace(&task.instance_id, &harness.provisioner.sources);
                }
            }
        }
    }
    bar.finish_and_clear();
    report.kept = kept.len();
    Ok(kept)
}

/// The library frames (outside the test files) of the first FAIL_TO_PASS test whose
/// traceback the log holds, to quote in the statement, and whether any failing test's
/// traceback passed through the bug's line (`None`: the run had tracebacks off).
fn library_traceback(log: &str, fail_to_pass: &[String], m: &Mutation) -> (Vec<Frame>, Option<bool>) {
    let tracebacks = pytest_tracebacks(log);
    if tracebacks.is_empty() {
        return (Vec::new(), None);
    }
    let at_line = |f: &TracebackFrame| f.file == m.file && f.line == m.line;
    let hits = fail_to_pass.iter().filter_map(|id| tracebacks.get(&pytest_headline(id))).any(|frames| frames.iter().any(at_line));
    let quoted = fail_to_pass
        .iter()
        .filter_map(|id| tracebacks.get(&pytest_headline(id)))
        .map(|frames| frames.iter().filter(|f| !is_test_path(&f.file)).map(|f| Frame { file: f.file.clone(), line: f.line, function: f.function.clone(), source: f.source.clone() }).collect::<Vec<_>>())
        .find(|frames| !frames.is_empty())
        .unwrap_or_default();
    (quoted, Some(hits))
}

/// What became of one planned mutation in a batch.
enum Slot {
    Task(usize),
    Error,
    Duplicate,
}

/// Runs each task's tests (no patch: the task's base is the mutant) through the harness.
async fn run_jobs(harness: &Arc<Harness>, tasks: Vec<Task>) -> Vec<JobResult> {
    let jobs: Vec<Job> = tasks.into_iter().map(|t| Job { task: Arc::new(t), kind: JobKind::TestsOnly, label: "mutant".into() }).collect();
    harness.run(jobs, |_| {}).await
}

/// The keep/drop decision for one mutant's test run.
fn judge(result: &JobResult, clean: &Outcomes, rules: &SelectRules) -> Result<swegym_synth::Selection, DropReason> {
    let v = &result.outcome.verdict;
    match v.status {
        EvalStatus::TestTimeout => return Err(DropReason::TestTimeout),
        EvalStatus::EnvError if result.outcome.grade.is_some() || result.outcome.log_problem.is_some() => return Err(DropReason::TestsDidNotRun),
        EvalStatus::EnvError => return Err(DropReason::CandidateError),
        _ if result.outcome.log_problem.is_some() => return Err(DropReason::TestsDidNotRun),
        _ => {}
    }
    select(&outcomes(&result.outcome.statuses), clean, rules)
}

fn outcomes(statuses: &BTreeMap<String, TestStatus>) -> Outcomes {
    statuses.iter().map(|(id, s)| (id.clone(), s.passes())).collect()
}

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

/// The task of one mutant: gold patch = mutant → clean; base = the deterministic commit of
/// the reverse of that patch on the sdist commit (what the harness re-creates).
async fn candidate(spec: &EnvSpec, prefix: &str, clean_repo: &Path, sources: &BTreeMap<String, String>, m: &Mutation) -> anyhow::Result<Task> {
    let original = sources.get(&m.file).context("source of the mutated file")?;
    let mutant = m.edit.apply(original);
    let gold = diff::file_diff(&m.file, &mutant, original);
    let id = format!("{prefix}-{}", diff::patch_digest(&gold));
    let clean_repo = clean_repo.to_path_buf();
    let gold2 = gold.clone();
    let base = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let tmp = tempfile::tempdir().context("temp dir")?;
        Ok(source::commit_reverse_patch(&clean_repo, &gold2, &tmp.path().join("repo"))?)
    })
    .await??;
    Ok(blank_task(spec, id, base, gold))
}

/// Tracked `.py` files that are the library's code: not tests (the harness's rule), not
/// docs, examples, benchmarks or build scripts. Sorted.
fn python_sources(repo: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("git").arg("-C").arg(repo).args(["ls-files", "-z", "--", "*.py"]).output().context("running git ls-files")?;
    anyhow::ensure!(out.status.success(), "git ls-files failed in {}", repo.display());
    let skip_dirs = ["docs", "doc", "examples", "example", "benchmarks", "bench", "scripts", "tools", "misc"];
    let skip_files = ["setup.py", "conftest.py", "noxfile.py", "tasks.py", "fabfile.py", "_version.py", "versioneer.py"];
    let mut files: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .filter(|p| !p.is_empty() && !is_test_path(p))
        .filter(|p| {
            let parts: Vec<&str> = p.split('/').collect();
            let name = parts.last().copied().unwrap_or("");
            !skip_files.contains(&name) && !parts[..parts.len() - 1].iter().any(|d| skip_dirs.contains(d))
        })
        .map(str::to_string)
        .collect();
    files.sort();
    Ok(files)
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
