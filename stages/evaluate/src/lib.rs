//! The SWE-bench-grade evaluation harness: one patch on one task inside a live sandbox.
//!
//! [`evaluate_in_sandbox`]: empty-patch check → clean-up → test-file sections dropped →
//! apply chain → test files reset + test patch → the test command over the test patch's
//! files, with a timeout → parse → check the log against the exit code → grade → a
//! [`Verdict`] plus the full log for the per-instance log file. [`run_tests_only`] does the
//! same without a model patch (for `dataset validate`: FAIL_TO_PASS must fail before the
//! gold patch). A dataset row is valid when
//! `run_tests_only(..).grade` has no passing FAIL_TO_PASS test ([`Grade::f2p_passing`]),
//! `evaluate_in_sandbox(.., &task.patch, ..)` is `Resolved`, and
//! `evaluate_in_sandbox(.., "", ..)` is `EmptyPatch` (never resolved).
//!
//! Architecture invariant: a failure on one instance is a [`Verdict`], never an `Err`;
//! the environment's failures (`env_error`, `test_timeout`) are kept apart from the
//! patch's (`unresolved`, `patch_apply_failed`, `empty_patch`). Creating and destroying the
//! sandbox is the caller's job.

pub mod apply;
pub mod grade;
pub mod parse;
pub mod patch;
pub mod runner;
mod shell;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use swegym_sandbox::{EnvSpec, ExecRequest, LogParser, Sandbox};
use swegym_schema::{EvalStatus, Prediction, Task, Verdict};
use tracing::Instrument;

pub use apply::{ApplyError, ApplyMethod, ApplyOutcome};
pub use grade::{Grade, LogProblem, TestResult};
pub use parse::{ParsedLog, TestStatus};

/// Marks the start of the test command's output in the log (SWE-bench's marker).
pub const START_TEST_OUTPUT: &str = ">>>>> Start Test Output";
/// Marks the end of the test command's output in the log.
pub const END_TEST_OUTPUT: &str = ">>>>> End Test Output";

/// Extensions of test-patch files that are not test targets (SWE-bench's `NON_TEST_EXTS`,
/// whose `"csv"` has no dot).
pub const NON_TEST_EXTS: [&str; 11] =
    [".json", ".png", "csv", ".txt", ".md", ".jpg", ".jpeg", ".pkl", ".yml", ".yaml", ".toml"];

/// Everything needed to test one instance (SWE-bench's `TestSpec`).
#[derive(Debug, Clone, PartialEq)]
pub struct TestSpec {
    pub instance_id: String,
    pub test_patch: String,
    /// Every file the test patch touches (reset before it is applied; excluded from the
    /// model patch).
    pub test_patch_files: Vec<String>,
    /// The test targets: test-patch files without [`NON_TEST_EXTS`] (`get_test_directives`).
    pub test_directives: Vec<String>,
    /// `env.test_cmd` followed by the directives, shell-quoted.
    pub test_command: String,
    pub timeout: Duration,
    pub log_parser: LogParser,
    pub fail_to_pass: Vec<String>,
    pub pass_to_pass: Vec<String>,
}

impl TestSpec {
    /// The spec of `task` in `env`; `timeout` overrides `env.test_timeout_s` when given.
    pub fn new(task: &Task, env: &EnvSpec, timeout: Option<Duration>) -> TestSpec {
        let test_patch_files = task.test_files();
        let test_directives: Vec<String> = test_patch_files
            .iter()
            .filter(|f| !NON_TEST_EXTS.iter().any(|ext| f.ends_with(ext)))
            .cloned()
            .collect();
        let mut test_command = env.test_cmd.trim().to_string();
        for d in &test_directives {
            test_command.push(' ');
            test_command.push_str(&shell::quote(d));
        }
        TestSpec {
            instance_id: task.instance_id.clone(),
            test_patch: task.test_patch.clone(),
            test_patch_files,
            test_directives,
            test_command,
            timeout: timeout.unwrap_or(Duration::from_secs(env.test_timeout_s)),
            log_parser: env.log_parser,
            fail_to_pass: task.fail_to_pass.clone(),
            pass_to_pass: task.pass_to_pass.clone(),
        }
    }
}

/// Options of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Written into the verdict ([`evaluate_prediction`] takes it from the prediction).
    pub model_name_or_path: String,
    /// Overrides the environment's `test_timeout_s`.
    pub test_timeout: Option<Duration>,
    /// Limit of each git / patch command.
    pub command_timeout: Duration,
    /// Bytes of test output kept (head and tail); pytest's summary is at the tail.
    pub test_output_cap: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            model_name_or_path: String::new(),
            test_timeout: None,
            command_timeout: Duration::from_secs(120),
            test_output_cap: 16 << 20,
        }
    }
}

/// The result of one evaluation: the verdict and what it was decided from.
#[derive(Debug, Clone)]
pub struct EvalOutcome {
    pub verdict: Verdict,
    /// Present when the tests ran to an exit code.
    pub grade: Option<Grade>,
    /// Test id → status, as parsed from the test output.
    pub statuses: BTreeMap<String, TestStatus>,
    /// Why the log was not trusted, if it was not.
    pub log_problem: Option<LogProblem>,
    /// The per-instance log: patch handling, apply attempts, test patch, test output
    /// between [`START_TEST_OUTPUT`] and [`END_TEST_OUTPUT`], the decision.
    pub log: String,
}

/// Evaluates `prediction` (its patch and model name) on `task`.
pub async fn evaluate_prediction(
    sandbox: &dyn Sandbox,
    task: &Task,
    env: &EnvSpec,
    prediction: &Prediction,
    opts: &EvalOptions,
) -> EvalOutcome {
    let opts = EvalOptions { model_name_or_path: prediction.model_name_or_path.clone(), ..opts.clone() };
    evaluate_in_sandbox(sandbox, task, env, &prediction.model_patch, &opts).await
}

/// Evaluates one model patch on `task` in a fresh sandbox whose /testbed is the task's
/// workspace at its base commit. Never fails: every outcome is a verdict.
pub async fn evaluate_in_sandbox(
    sandbox: &dyn Sandbox,
    task: &Task,
    env: &EnvSpec,
    patch: &str,
    opts: &EvalOptions,
) -> EvalOutcome {
    let span = tracing::info_span!("evaluate", instance_id = %task.instance_id, model = %opts.model_name_or_path);
    async {
        let started = Instant::now();
        let spec = TestSpec::new(task, env, opts.test_timeout);
        let mut run = Run::new(task, opts);
        run.verdict.empty_patch = patch::is_empty_patch(patch, &spec.test_patch_files);
        if run.verdict.empty_patch {
            run.log.push_str(">>>>> Empty patch: the diff, test files excluded, changes nothing\n");
            return run.finish(EvalStatus::EmptyPatch, None, started);
        }
        let cleaned = patch::clean_patch(patch);
        let effective = patch::remove_test_files(&cleaned, &spec.test_patch_files);
        let dropped: Vec<String> = patch::split_file_diffs(&cleaned)
            .iter()
            .filter(|f| patch::is_test_file_diff(f, &spec.test_patch_files))
            .map(|f| f.path().to_string())
            .collect();
        if !dropped.is_empty() {
            run.log.push_str(&format!(">>>>> Dropped edits to test files: {}\n", dropped.join(", ")));
        }
        match apply::apply_patch(sandbox, &effective, opts.command_timeout).await {
            Err(e) => return run.env_error(format!("applying the patch: {e}"), started),
            Ok(outcome) => {
                run.log.push_str(&outcome.log);
                match outcome.method {
                    Some(method) => {
                        run.log.push_str(&format!(">>>>> Applied Patch ({})\n", method.as_str()));
                        run.verdict.apply_method = Some(method.as_str().to_string());
                    }
                    None => {
                        run.log.push_str(">>>>> Patch Apply Failed\n");
                        tracing::info!(reason = "patch_apply_failed", "not resolved");
                        return run.finish(EvalStatus::PatchApplyFailed, Some("no apply method worked".into()), started);
                    }
                }
            }
        }
        run.test_and_grade(sandbox, &spec, opts, started).await
    }
    .instrument(span)
    .await
}

/// Applies the test patch and runs the tests with no model patch (the task's state at its
/// base). The verdict's status says whether all required tests pass *before* any fix;
/// `grade` says which (for validation, no FAIL_TO_PASS test may pass).
pub async fn run_tests_only(sandbox: &dyn Sandbox, task: &Task, env: &EnvSpec, opts: &EvalOptions) -> EvalOutcome {
    let span = tracing::info_span!("run_tests_only", instance_id = %task.instance_id);
    async {
        let started = Instant::now();
        let spec = TestSpec::new(task, env, opts.test_timeout);
        let mut run = Run::new(task, opts);
        run.verdict.empty_patch = true;
        run.log.push_str(">>>>> No model patch (tests at the base commit)\n");
        run.test_and_grade(sandbox, &spec, opts, started).await
    }
    .instrument(span)
    .await
}

/// The outcome of a job that never got a sandbox (no environment spec, a failed build, a
/// sandbox that would not start): `env_error`, with the message, for that task alone.
pub fn env_error_outcome(task: &Task, model_name_or_path: &str, empty_patch: bool, message: String) -> EvalOutcome {
    let opts = EvalOptions { model_name_or_path: model_name_or_path.to_string(), ..EvalOptions::default() };
    let mut run = Run::new(task, &opts);
    run.verdict.empty_patch = empty_patch;
    run.env_error(message, Instant::now())
}

/// One evaluation in progress: the verdict and the log being built.
struct Run {
    verdict: Verdict,
    grade: Option<Grade>,
    statuses: BTreeMap<String, TestStatus>,
    log_problem: Option<LogProblem>,
    log: String,
}

impl Run {
    fn new(task: &Task, opts: &EvalOptions) -> Run {
        Run {
            verdict: Verdict {
                instance_id: task.instance_id.clone(),
                model_name_or_path: opts.model_name_or_path.clone(),
                status: EvalStatus::EnvError,
                resolved: false,
                empty_patch: false,
                apply_method: None,
                fail_to_pass_passed: 0,
                fail_to_pass_total: task.fail_to_pass.len() as u32,
                pass_to_pass_passed: 0,
                pass_to_pass_total: task.pass_to_pass.len() as u32,
                failed_tests: Vec::new(),
                test_exit_code: None,
                test_seconds: 0.0,
                total_seconds: 0.0,
                error: None,
            },
            grade: None,
            statuses: BTreeMap::new(),
            log_problem: None,
            log: format!(">>>>> Instance {}\n", task.instance_id),
        }
    }

    fn finish(mut self, status: EvalStatus, error: Option<String>, started: Instant) -> EvalOutcome {
        self.verdict.status = status;
        self.verdict.resolved = status == EvalStatus::Resolved;
        self.verdict.error = error;
        self.verdict.total_seconds = started.elapsed().as_secs_f64();
        self.log.push_str(&format!(">>>>> Verdict: {status}"));
        if let Some(e) = &self.verdict.error {
            self.log.push_str(&format!(" ({e})"));
        }
        self.log.push('\n');
        EvalOutcome {
            verdict: self.verdict,
            grade: self.grade,
            statuses: self.statuses,
            log_problem: self.log_problem,
            log: self.log,
        }
    }

    fn env_error(self, message: String, started: Instant) -> EvalOutcome {
        tracing::warn!(reason = "env_error", error = %message, "evaluation failed in the environment");
        self.finish(EvalStatus::EnvError, Some(message), started)
    }

    /// Test patch → test command → parse → log check → grade.
    async fn test_and_grade(mut self, sandbox: &dyn Sandbox, spec: &TestSpec, opts: &EvalOptions, started: Instant) -> EvalOutcome {
        match apply::apply_test_patch(sandbox, &spec.test_patch, opts.command_timeout).await {
            Ok(log) => {
                self.log.push_str(&log);
                self.log.push_str(">>>>> Applied Test Patch\n");
            }
            Err(e) => return self.env_error(format!("test patch: {e}"), started),
        }
        if spec.test_directives.is_empty() && !spec.test_patch.trim().is_empty() {
            tracing::warn!("the test patch names no test file; running the whole suite");
        }
        let mut request = ExecRequest::new(spec.test_command.clone(), spec.timeout);
        request.output_cap = opts.test_output_cap;
        self.log.push_str(&format!(">>>>> Test command: {}\n{START_TEST_OUTPUT}\n", spec.test_command));
        let out = match sandbox.exec(&request).await {
            Ok(out) => out,
            Err(e) => {
                self.log.push_str(&format!("{END_TEST_OUTPUT}\n"));
                return self.env_error(format!("running the tests: {e}"), started);
            }
        };
        self.log.push_str(&out.output);
        if !out.output.ends_with('\n') {
            self.log.push('\n');
        }
        self.log.push_str(&format!("{END_TEST_OUTPUT}\n"));
        self.verdict.test_seconds = out.duration.as_secs_f64();
        self.verdict.test_exit_code = out.exit_code;
        self.log.push_str(&format!(
            ">>>>> Test exit code: {} ({:.1} s{})\n",
            out.exit_code.map_or("none".into(), |c| c.to_string()),
            self.verdict.test_seconds,
            if out.truncated { ", output truncated" } else { "" }
        ));
        if out.timed_out {
            self.log.push_str(">>>>> Tests Timed Out\n");
            tracing::info!(reason = "test_timeout", seconds = spec.timeout.as_secs(), "not resolved");
            let msg = format!("tests ran past {} s", spec.timeout.as_secs());
            return self.finish(EvalStatus::TestTimeout, Some(msg), started);
        }
        let parsed = parse::parse_log(spec.log_parser, &out.output);
        let grade = grade::grade(&parsed.statuses, &spec.fail_to_pass, &spec.pass_to_pass);
        self.verdict.fail_to_pass_passed = grade.f2p_passed();
        self.verdict.pass_to_pass_passed = grade.p2p_passed();
        self.verdict.failed_tests = grade.failed_tests();
        let problem = match out.exit_code {
            Some(code) => grade::check_log(spec.log_parser, &parsed, code).err(),
            None => Some(LogProblem::NoExitCode),
        };
        let all_pass = grade.all_pass();
        self.statuses = parsed.statuses;
        self.grade = Some(grade);
        self.log.push_str(&format!(
            ">>>>> FAIL_TO_PASS {}/{}, PASS_TO_PASS {}/{}\n",
            self.verdict.fail_to_pass_passed,
            self.verdict.fail_to_pass_total,
            self.verdict.pass_to_pass_passed,
            self.verdict.pass_to_pass_total
        ));
        for failed in &self.verdict.failed_tests {
            self.log.push_str(&format!("  not passed: {failed}\n"));
        }
        let Some(problem) = problem else {
            // With no FAIL_TO_PASS test nothing shows the patch fixed anything: a no-op that
            // keeps PASS_TO_PASS green must not be a reward (such tasks load only when the
            // user asks for it).
            let shows_a_fix = !spec.fail_to_pass.is_empty();
            if !shows_a_fix {
                self.log.push_str(">>>>> No FAIL_TO_PASS test: nothing shows a fix, so this is never resolved\n");
            }
            let status = if all_pass && shows_a_fix { EvalStatus::Resolved } else { EvalStatus::Unresolved };
            tracing::info!(status = status.as_str(), f2p_passed = self.verdict.fail_to_pass_passed, p2p_passed = self.verdict.pass_to_pass_passed, "graded");
            return self.finish(status, None, started);
        };
        let mut message = problem.to_string();
        if out.truncated {
            message.push_str(&format!(" (the test output was truncated to {} bytes)", opts.test_output_cap));
        }
        self.log.push_str(&format!(">>>>> Log check: {message}\n"));
        let status = if problem.is_env() { EvalStatus::EnvError } else { EvalStatus::Unresolved };
        tracing::info!(status = status.as_str(), reason = "log_check", problem = %message, "not resolved");
        self.log_problem = Some(problem);
        self.finish(status, Some(message), started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use swegym_sandbox::SourceSpec;

    pub(crate) fn env_spec(test_cmd: &str) -> EnvSpec {
        EnvSpec {
            repo: "o/r".into(),
            version: "1.0".into(),
            python: "3.11".into(),
            source: SourceSpec::Git(PathBuf::from("/nonexistent")),
            pip: vec![],
            install: vec![],
            test_cmd: test_cmd.into(),
            log_parser: LogParser::Pytest,
            test_timeout_s: 1800,
        }
    }

    #[test]
    fn test_spec_takes_directives_from_the_test_patch() {
        let task: Task = serde_json::from_value(serde_json::json!({
            "instance_id": "o__r-1", "repo": "o/r", "base_commit": "abc", "version": "1.0",
            "test_patch": "diff --git a/tests/test_a.py b/tests/test_a.py\n--- a/tests/test_a.py\n+++ b/tests/test_a.py\n@@ -1 +1 @@\n-a\n+b\ndiff --git a/tests/data/x.json b/tests/data/x.json\n--- a/tests/data/x.json\n+++ b/tests/data/x.json\n@@ -1 +1 @@\n-a\n+b\ndiff --git a/tests/my dir/test_b.py b/tests/my dir/test_b.py\nnew file mode 100644\n--- /dev/null\n+++ b/tests/my dir/test_b.py\n@@ -0,0 +1 @@\n+x\n",
            "FAIL_TO_PASS": ["tests/test_a.py::test_x"], "PASS_TO_PASS": [],
        }))
        .unwrap();
        let spec = TestSpec::new(&task, &env_spec("pytest -rA"), None);
        assert_eq!(spec.test_patch_files, vec!["tests/test_a.py", "tests/data/x.json", "tests/my dir/test_b.py"]);
        assert_eq!(spec.test_directives, vec!["tests/test_a.py", "tests/my dir/test_b.py"]);
        assert_eq!(spec.test_command, "pytest -rA tests/test_a.py 'tests/my dir/test_b.py'");
        assert_eq!(spec.timeout, Duration::from_secs(1800));
        let spec = TestSpec::new(&task, &env_spec("pytest -rA"), Some(Duration::from_secs(5)));
        assert_eq!(spec.timeout, Duration::from_secs(5));
    }
}
