//! Grading with SWE-bench semantics, and the check of a test log against the exit code
//! the harness recorded itself.
//!
//! Rules (SWE-bench `harness/grading.py`, v5 fixes included):
//! - a required test *passes* iff its status is PASSED or XFAIL; missing, FAILED, ERROR
//!   (and XPASS, which SWE-bench's parsers never record) fail;
//! - SKIPPED fails a FAIL_TO_PASS test and counts as maintained for a PASS_TO_PASS test;
//! - ids are looked up exactly, then cut at the first space (SWE-bench cuts parametrized
//!   ids there), then, for an id truncated inside its `[...]`, by prefix — all tests that
//!   share the prefix must pass;
//! - resolved iff every FAIL_TO_PASS and every PASS_TO_PASS test passes *and*
//!   [`check_log`] finds the log consistent with the exit code.
//!
//! # Fake results
//!
//! A patch runs code inside the test process (the library under test is imported by the
//! tests), so it can print lines that look like results. What stops the tricks we know:
//! - conftest.py and other test files in the model patch are dropped before it is applied
//!   ([`crate::patch::remove_test_files`]) and the test-patch files are reset;
//! - only the last `short test summary info` section of a pytest log is read
//!   ([`crate::parse`]): fake `PASSED id` lines printed at import or by a test with capture
//!   disabled are ignored, and a real FAILED beats a fake PASSED (worst status wins);
//! - print fakes then `os._exit(0)`: no final summary line → not resolved;
//! - a forged section + summary whose counts do not add up, or exit 0 with failures in the
//!   log, or exit 1 with none, or any exit code other than 0/1 → not resolved.
//!
//! Limits: a patch that suspends pytest's capture and prints a complete, self-consistent
//! forged section and summary, then exits with the matching code (`os._exit(0)`), is not
//! detected from the log; neither is a patch that makes the tests themselves pass by
//! monkeypatching them or pytest from library code. Catching those needs the results from
//! outside the test process (a second, untouched run; a results file the process cannot
//! write). unittest logs are checked more loosely (summary present, OK ⇔ exit 0, failures
//! ⇔ FAIL/ERROR lines, no more passed tests than tests ran). Exit codes 126/127 (command not
//! found) are reported as environment errors, so a patch exiting 127 on purpose is counted
//! as infrastructure, still unresolved.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use swegym_sandbox::LogParser;

use crate::parse::{ParsedLog, TestStatus};

/// Which list a required test comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TestKind {
    FailToPass,
    PassToPass,
}

/// One required test and what the log says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResult {
    pub id: String,
    /// `None`: the log does not mention the test.
    pub status: Option<TestStatus>,
    pub passed: bool,
}

impl TestResult {
    /// `id: STATUS` (MISSING when absent), as the verdict lists failures.
    pub fn describe(&self) -> String {
        format!("{}: {}", self.id, self.status.map(|s| s.as_str()).unwrap_or("MISSING"))
    }
}

/// The required tests, graded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grade {
    pub fail_to_pass: Vec<TestResult>,
    pub pass_to_pass: Vec<TestResult>,
}

impl Grade {
    pub fn f2p_passed(&self) -> u32 {
        self.fail_to_pass.iter().filter(|t| t.passed).count() as u32
    }

    pub fn p2p_passed(&self) -> u32 {
        self.pass_to_pass.iter().filter(|t| t.passed).count() as u32
    }

    /// Every required test passes (the log check is separate).
    pub fn all_pass(&self) -> bool {
        self.fail_to_pass.iter().chain(&self.pass_to_pass).all(|t| t.passed)
    }

    /// FAIL_TO_PASS tests that pass (for validation: must be none before the gold patch).
    pub fn f2p_passing(&self) -> Vec<&str> {
        self.fail_to_pass.iter().filter(|t| t.passed).map(|t| t.id.as_str()).collect()
    }

    /// Required tests that did not pass, as `id: STATUS`.
    pub fn failed_tests(&self) -> Vec<String> {
        self.fail_to_pass.iter().chain(&self.pass_to_pass).filter(|t| !t.passed).map(TestResult::describe).collect()
    }
}

/// The status of a required test id in a status map (exact, first-space cut, then prefix
/// for an id truncated inside `[...]`; the worst of all prefix matches).
pub fn lookup(statuses: &BTreeMap<String, TestStatus>, id: &str) -> Option<TestStatus> {
    if let Some(s) = statuses.get(id) {
        return Some(*s);
    }
    let cut = id.split_whitespace().next().unwrap_or(id);
    if cut != id {
        if let Some(s) = statuses.get(cut) {
            return Some(*s);
        }
    }
    let truncated = cut.rfind('[').is_some_and(|open| !cut[open..].contains(']'));
    if !truncated {
        return None;
    }
    statuses
        .range(cut.to_string()..)
        .take_while(|(k, _)| k.starts_with(cut))
        .map(|(_, s)| *s)
        .reduce(TestStatus::worst)
}

/// Grades FAIL_TO_PASS and PASS_TO_PASS against a status map.
pub fn grade(statuses: &BTreeMap<String, TestStatus>, fail_to_pass: &[String], pass_to_pass: &[String]) -> Grade {
    let result = |id: &String, kind: TestKind| {
        let status = lookup(statuses, id);
        let passed = match (status, kind) {
            (Some(s), _) if s.passes() => true,
            (Some(TestStatus::Skipped), TestKind::PassToPass) => true,
            _ => false,
        };
        TestResult { id: id.clone(), status, passed }
    };
    Grade {
        fail_to_pass: fail_to_pass.iter().map(|id| result(id, TestKind::FailToPass)).collect(),
        pass_to_pass: pass_to_pass.iter().map(|id| result(id, TestKind::PassToPass)).collect(),
    }
}

/// Why a test log cannot be trusted, or says the run did not complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LogProblem {
    #[error("pytest exited with {code} ({meaning}); only 0 and 1 mean the tests ran to the end")]
    PytestExit { code: i32, meaning: String },
    #[error("log contradicts exit code: possible fake PASSED lines ({detail})")]
    Contradiction { detail: String },
    #[error("the test command ended without an exit code (killed by a signal)")]
    NoExitCode,
    #[error("test command exited with {code}: command not found or not executable (environment broken?)")]
    CommandNotFound { code: i32 },
}

impl LogProblem {
    fn contradiction(detail: impl Into<String>) -> Self {
        LogProblem::Contradiction { detail: detail.into() }
    }

    /// True when the problem is the environment's, not the patch's.
    pub fn is_env(&self) -> bool {
        matches!(self, LogProblem::CommandNotFound { .. })
    }
}

fn pytest_exit_meaning(code: i32) -> &'static str {
    match code {
        2 => "interrupted: e.g. errors during collection",
        3 => "internal error",
        4 => "usage error",
        5 => "no tests collected",
        c if c > 128 => "killed by a signal",
        _ => "not a pytest exit code",
    }
}

/// Checks a parsed log against the test command's exit code, recorded by the harness.
pub fn check_log(parser: LogParser, parsed: &ParsedLog, exit_code: i32) -> Result<(), LogProblem> {
    if exit_code == 126 || exit_code == 127 {
        return Err(LogProblem::CommandNotFound { code: exit_code });
    }
    match parser {
        LogParser::Pytest => check_pytest(parsed, exit_code),
        LogParser::Unittest => check_unittest(parsed, exit_code),
    }
}

fn check_pytest(parsed: &ParsedLog, exit_code: i32) -> Result<(), LogProblem> {
    if exit_code != 0 && exit_code != 1 {
        return Err(LogProblem::PytestExit { code: exit_code, meaning: pytest_exit_meaning(exit_code).into() });
    }
    let Some(summary) = parsed.pytest_summary() else {
        return Err(LogProblem::contradiction(format!(
            "exit code {exit_code} but no final `=== N passed ... in Xs ===` line"
        )));
    };
    let counted = summary.status_counts();
    let failures_in_summary = counted.failed + counted.errors;
    let failures_in_lines = parsed.statuses.values().filter(|s| s.is_failure()).count() as u32;
    if exit_code == 0 && (failures_in_summary > 0 || failures_in_lines > 0) {
        return Err(LogProblem::contradiction(format!(
            "exit code 0 but the log reports failures (`{}`, {failures_in_lines} failing ids)",
            summary.line
        )));
    }
    if exit_code == 1 && failures_in_summary == 0 && failures_in_lines == 0 {
        return Err(LogProblem::contradiction(format!("exit code 1 but the log reports no failure (`{}`)", summary.line)));
    }
    if parsed.has_short_summary {
        let lines = parsed.line_counts;
        if counted != lines {
            return Err(LogProblem::contradiction(format!(
                "final line `{}` does not match the status lines (passed {}, failed {}, errors {}, skipped {}, xfailed {}, xpassed {})",
                summary.line, lines.passed, lines.failed, lines.errors, lines.skipped, lines.xfailed, lines.xpassed
            )));
        }
        if parsed.verbose_skipped > counted.skipped {
            return Err(LogProblem::contradiction(format!(
                "{} tests reported SKIPPED but the final line says {} skipped",
                parsed.verbose_skipped, counted.skipped
            )));
        }
    } else {
        let total_in_summary = counted.passed + counted.failed + counted.errors + counted.xfailed + counted.xpassed;
        let recorded = parsed.statuses.values().filter(|s| **s != TestStatus::Skipped).count() as u32;
        if recorded > total_in_summary {
            return Err(LogProblem::contradiction(format!(
                "{recorded} test results in the log but the final line `{}` counts {total_in_summary}",
                summary.line
            )));
        }
    }
    Ok(())
}

fn check_unittest(parsed: &ParsedLog, exit_code: i32) -> Result<(), LogProblem> {
    let Some(summary) = parsed.unittest_summary() else {
        return Err(LogProblem::contradiction(format!("exit code {exit_code} but no `Ran N tests` / `OK` / `FAILED` summary")));
    };
    let failing = parsed.statuses.values().filter(|s| s.is_failure() || **s == TestStatus::Xpass).count();
    if summary.ok != (exit_code == 0) {
        return Err(LogProblem::contradiction(format!(
            "exit code {exit_code} but the summary says {}",
            if summary.ok { "OK" } else { "FAILED" }
        )));
    }
    if summary.ok && failing > 0 {
        return Err(LogProblem::contradiction(format!("summary says OK but {failing} tests failed in the log")));
    }
    if !summary.ok && failing == 0 {
        return Err(LogProblem::contradiction("summary says FAILED but no test failed in the log"));
    }
    if parsed.line_counts.passed > summary.ran {
        return Err(LogProblem::contradiction(format!(
            "{} tests reported ok but only {} ran",
            parsed.line_counts.passed, summary.ran
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse_pytest, parse_unittest};
    use TestStatus::*;

    fn map(entries: &[(&str, TestStatus)]) -> BTreeMap<String, TestStatus> {
        entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// (statuses, F2P, P2P, expected all_pass, expected failed tests)
    fn check(statuses: &[(&str, TestStatus)], f2p: &[&str], p2p: &[&str], all_pass: bool, failed: &[&str]) {
        let g = grade(&map(statuses), &ids(f2p), &ids(p2p));
        assert_eq!(g.all_pass(), all_pass, "{g:?}");
        assert_eq!(g.failed_tests(), ids(failed));
    }

    #[test]
    fn grading_rules() {
        // Plain pass.
        check(&[("a", Passed), ("b", Passed)], &["a"], &["b"], true, &[]);
        // XFAIL passes.
        check(&[("a", Xfail), ("b", Passed)], &["a"], &["b"], true, &[]);
        // Missing, FAILED, ERROR fail.
        check(&[("b", Passed)], &["a"], &["b"], false, &["a: MISSING"]);
        check(&[("a", Failed), ("b", Error)], &["a"], &["b"], false, &["a: FAILED", "b: ERROR"]);
        // SKIPPED fails F2P but is maintained for P2P.
        check(&[("a", Skipped), ("b", Passed)], &["a"], &["b"], false, &["a: SKIPPED"]);
        check(&[("a", Passed), ("b", Skipped)], &["a"], &["b"], true, &[]);
        // XPASS is not a pass.
        check(&[("a", Xpass)], &["a"], &[], false, &["a: XPASS"]);
        // No required tests at all: vacuously resolved (SWE-bench's compute_* return 1).
        check(&[], &[], &[], true, &[]);
    }

    #[test]
    fn truncated_ids_match_by_prefix() {
        let statuses = map(&[
            ("t.py::test_p[a", Passed),
            ("t.py::test_q[x y]", Passed),
            ("t.py::test_q[x z]", Failed),
            ("t.py::test_r[1]", Passed),
        ]);
        let cases: [(&str, Option<TestStatus>); 6] = [
            // Dataset id with a space, log id cut at the space.
            ("t.py::test_p[a b]", Some(Passed)),
            // Dataset id cut by SWE-bench, log ids untruncated: the worst of the prefix.
            ("t.py::test_q[x", Some(Failed)),
            ("t.py::test_r[", Some(Passed)),
            ("t.py::test_r[1]", Some(Passed)),
            // A complete id is never matched by prefix.
            ("t.py::test_r[10]", None),
            ("t.py::test_s", None),
        ];
        for (id, want) in cases {
            assert_eq!(lookup(&statuses, id), want, "{id}");
        }
    }

    fn check_pytest_log(log: &str, exit_code: i32, expect_ok: bool, needle: &str) {
        let parsed = parse_pytest(log);
        let got = check_log(LogParser::Pytest, &parsed, exit_code);
        assert_eq!(got.is_ok(), expect_ok, "{got:?}\n{log}");
        if let Err(e) = got {
            assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
        }
    }

    #[test]
    fn real_logs_are_consistent() {
        check_pytest_log(include_str!("../tests/data/pytest8_rA.log"), 1, true, "");
        check_pytest_log(include_str!("../tests/data/pytest9_rA_subfailed.log"), 1, true, "");
        check_pytest_log(include_str!("../tests/data/pytest9_v_subtests.log"), 1, true, "");
        check_pytest_log(include_str!("../tests/data/pytest8_v.log"), 1, true, "");
        check_pytest_log(include_str!("../tests/data/fake_import_then_real_failure.log"), 1, true, "");
        check_pytest_log(include_str!("../tests/data/fake_terminal_noise.log"), 1, true, "");
        check_pytest_log(include_str!("../tests/data/pytest8_collection_error.log"), 2, false, "interrupted");
        let ok = "=== short test summary info ===\nPASSED t.py::a\nSKIPPED [2] t.py:3: x\n=== 1 passed, 2 skipped in 0.1s ===\n";
        check_pytest_log(ok, 0, true, "");
    }

    #[test]
    fn fake_passed_tricks_are_caught() {
        // Library prints fake PASSED lines at import, then os._exit(0): no final line.
        check_pytest_log(include_str!("../tests/data/fake_import_exit0.log"), 0, false, "no final");
        // Forged section + final line whose counts do not add up.
        check_pytest_log(include_str!("../tests/data/fake_forged_summary_mismatch.log"), 0, false, "does not match");
        let forged = "=== short test summary info ===\nPASSED t.py::a\n=== 1 passed in 0.1s ===\n";
        // Exit 1 (a real failure) with a log that shows none.
        check_pytest_log(forged, 1, false, "no failure");
        // Exit 0 with failures in the log.
        check_pytest_log("=== short test summary info ===\nFAILED t.py::a - x\n=== 1 failed in 0.1s ===\n", 0, false, "reports failures");
        // pytest's own non-0/1 exits.
        for code in [2, 3, 4, 5, 137] {
            check_pytest_log(forged, code, false, "pytest exited");
        }
        // Command not found is the environment's.
        let e = check_log(LogParser::Pytest, &parse_pytest(""), 127).unwrap_err();
        assert!(e.is_env());
        // No -rA section: more results than the final line counts.
        check_pytest_log("t.py::a PASSED\nt.py::b PASSED\n=== 1 passed in 0.1s ===\n", 0, false, "counts 1");
        // Fake -v SKIPPED lines beyond the skipped count.
        check_pytest_log(
            "t.py::a SKIPPED (x)\nt.py::b SKIPPED (x)\n=== short test summary info ===\nSKIPPED [1] t.py:1: x\n=== 1 skipped in 0.1s ===\n",
            0,
            false,
            "2 tests reported SKIPPED",
        );
    }

    #[test]
    fn unittest_checks() {
        let failing = parse_unittest(include_str!("../tests/data/unittest_py311.log"));
        assert!(check_log(LogParser::Unittest, &failing, 1).is_ok());
        assert!(check_log(LogParser::Unittest, &failing, 0).is_err());
        let ok = parse_unittest(include_str!("../tests/data/unittest_ok.log"));
        assert!(check_log(LogParser::Unittest, &ok, 0).is_ok());
        assert!(check_log(LogParser::Unittest, &ok, 1).is_err());
        // Fake ok lines and exit: no summary.
        let fake = parse_unittest("test_x (m.C) ... ok\n");
        assert!(check_log(LogParser::Unittest, &fake, 0).unwrap_err().to_string().contains("possible fake"));
        // More ok lines than tests ran.
        let fake = parse_unittest("test_x (m.C) ... ok\ntest_y (m.C) ... ok\n\n----\nRan 1 test in 0.0s\n\nOK\n");
        assert!(check_log(LogParser::Unittest, &fake, 0).is_err());
    }
}
