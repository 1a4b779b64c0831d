//! The keep/drop decision on a candidate's test runs: how each run ended (as the harness
//! reported it, handed in as plain data: this stage runs no tests), then [`select`] on
//! the outcomes of the runs that finished.
//!
//! A synthesized mutant has one run (its tests with the bug), judged against the clean
//! suite's reference; a mined commit has three (before the gold patch, after it, after it
//! again), the reference being what passes in both runs after it.

use crate::select::{select, stable, Outcomes, Selection};
use crate::{DropReason, SelectRules};

/// How a test run ended, as the harness's verdict says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The tests ran (resolved, unresolved or an empty patch).
    Tests,
    /// The test command ran past its timeout.
    Timeout,
    /// The patch of the run did not apply.
    PatchApplyFailed,
    /// The harness or environment failed.
    EnvError,
}

/// One test run of a candidate, as the decisions read it.
#[derive(Debug, Clone, PartialEq)]
pub struct TestRun {
    /// The run's name (`before`, `after`, `mutant`, …).
    pub label: String,
    pub end: RunEnd,
    /// The tests ran to an exit code (the harness graded them).
    pub graded: bool,
    /// Why the harness did not trust the log, if it did not.
    pub log_problem: Option<String>,
    /// The verdict's error, if any.
    pub error: Option<String>,
    /// Test id → passed.
    pub outcomes: Outcomes,
}

/// The keep/drop decision for one mutant's test run, against the clean suite's reference.
pub fn judge_mutant(run: &TestRun, clean: &Outcomes, rules: &SelectRules) -> Result<Selection, DropReason> {
    match run.end {
        RunEnd::Timeout => return Err(DropReason::TestTimeout),
        RunEnd::EnvError if run.graded || run.log_problem.is_some() => return Err(DropReason::TestsDidNotRun),
        RunEnd::EnvError => return Err(DropReason::CandidateError),
        _ if run.log_problem.is_some() => return Err(DropReason::TestsDidNotRun),
        _ => {}
    }
    select(&run.outcomes, clean, rules)
}

/// FAIL_TO_PASS / PASS_TO_PASS of a mined commit from the run before the gold patch and
/// the two after it.
pub fn judge_mined(before: &TestRun, after: &TestRun, again: &TestRun) -> Result<Selection, DropReason> {
    for a in [after, again] {
        match a.end {
            RunEnd::Timeout => return Err(DropReason::TestTimeout),
            RunEnd::PatchApplyFailed | RunEnd::EnvError if !a.graded => return Err(DropReason::CandidateError),
            _ if a.log_problem.is_some() => return Err(DropReason::TestsDidNotRun),
            _ => {}
        }
    }
    if before.end == RunEnd::Timeout {
        return Err(DropReason::TestTimeout);
    }
    if before.end == RunEnd::EnvError && !before.graded {
        return Err(DropReason::CandidateError);
    }
    // A run that stopped early (pytest's exit 2, 4: collection interrupted, a conftest that
    // cannot import) reports no test at all: its "failures" would be every test named.
    if before.log_problem.is_some() {
        return Err(DropReason::TestsDidNotRun);
    }
    let fixed = stable(&after.outcomes, &again.outcomes);
    select(&before.outcomes, &fixed, &SelectRules::mine())
}

/// What went wrong in a candidate's runs, as the harness saw it (`before: …; after: …`):
/// each run's log problem, or else its verdict's error.
pub fn run_problems(runs: &[&TestRun]) -> Option<String> {
    let problems: Vec<String> =
        runs.iter().filter_map(|r| r.log_problem.clone().or_else(|| r.error.clone()).map(|p| format!("{}: {p}", r.label))).collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(end: RunEnd, passing: &[&str], failing: &[&str]) -> TestRun {
        let outcomes = passing.iter().map(|t| (t.to_string(), true)).chain(failing.iter().map(|t| (t.to_string(), false))).collect();
        TestRun { label: "run".into(), end, graded: true, log_problem: None, error: None, outcomes }
    }

    fn clean() -> Outcomes {
        [("t::a", true), ("t::b", true), ("t::c", true)].iter().map(|(id, p)| (id.to_string(), *p)).collect()
    }

    #[test]
    fn a_mutant_that_breaks_one_test_is_kept() {
        let s = judge_mutant(&run(RunEnd::Tests, &["t::b", "t::c"], &["t::a"]), &clean(), &SelectRules::synth()).unwrap();
        assert_eq!(s.fail_to_pass, ["t::a"]);
        assert_eq!(s.pass_to_pass, ["t::b", "t::c"]);
    }

    #[test]
    fn a_mutant_run_that_did_not_finish_is_dropped_with_its_reason() {
        let rules = SelectRules::synth();
        let broken = run(RunEnd::Tests, &["t::b", "t::c"], &["t::a"]);
        assert_eq!(judge_mutant(&TestRun { end: RunEnd::Timeout, ..broken.clone() }, &clean(), &rules), Err(DropReason::TestTimeout));
        let env = TestRun { end: RunEnd::EnvError, graded: false, ..broken.clone() };
        assert_eq!(judge_mutant(&env, &clean(), &rules), Err(DropReason::CandidateError));
        assert_eq!(judge_mutant(&TestRun { graded: true, ..env.clone() }, &clean(), &rules), Err(DropReason::TestsDidNotRun));
        let untrusted = TestRun { log_problem: Some("pytest exited with 4".into()), ..broken.clone() };
        assert_eq!(judge_mutant(&untrusted, &clean(), &rules), Err(DropReason::TestsDidNotRun));
        assert_eq!(judge_mutant(&TestRun { graded: false, ..untrusted }, &clean(), &rules), Err(DropReason::TestsDidNotRun));
    }

    #[test]
    fn a_mined_fix_keeps_the_tests_it_makes_pass_in_both_runs_after() {
        let before = run(RunEnd::Tests, &["t::old"], &["t::new"]);
        let after = run(RunEnd::Tests, &["t::old", "t::new", "t::flaky"], &[]);
        let again = run(RunEnd::Tests, &["t::old", "t::new"], &["t::flaky"]);
        let s = judge_mined(&before, &after, &again).unwrap();
        assert_eq!(s.fail_to_pass, ["t::new"]);
        assert_eq!(s.pass_to_pass, ["t::old"]);
        assert_eq!(judge_mined(&after, &after, &again), Err(DropReason::NoFailingTest));
    }

    #[test]
    fn a_mined_fix_whose_runs_did_not_finish_is_dropped_with_its_reason() {
        let before = run(RunEnd::Tests, &[], &["t::new"]);
        let after = run(RunEnd::Tests, &["t::new"], &[]);
        let not_applied = TestRun { end: RunEnd::PatchApplyFailed, graded: false, ..after.clone() };
        assert_eq!(judge_mined(&before, &not_applied, &after), Err(DropReason::CandidateError));
        assert_eq!(judge_mined(&before, &after, &TestRun { end: RunEnd::Timeout, ..after.clone() }), Err(DropReason::TestTimeout));
        let untrusted = TestRun { log_problem: Some("no tests ran".into()), ..after.clone() };
        assert_eq!(judge_mined(&before, &untrusted, &after), Err(DropReason::TestsDidNotRun));
        assert_eq!(judge_mined(&TestRun { end: RunEnd::Timeout, ..before.clone() }, &after, &after), Err(DropReason::TestTimeout));
        assert_eq!(judge_mined(&TestRun { end: RunEnd::EnvError, graded: false, ..before.clone() }, &after, &after), Err(DropReason::CandidateError));
        assert_eq!(judge_mined(&TestRun { log_problem: Some("exit 2".into()), ..before }, &after, &after), Err(DropReason::TestsDidNotRun));
    }

    #[test]
    fn run_problems_name_each_run() {
        let ok = run(RunEnd::Tests, &[], &[]);
        assert_eq!(run_problems(&[&ok, &ok]), None);
        let before = TestRun { label: "before".into(), log_problem: Some("pytest exited with 4".into()), error: Some("shadowed".into()), ..ok.clone() };
        let after = TestRun { label: "after".into(), error: Some("sandbox died".into()), ..ok.clone() };
        assert_eq!(run_problems(&[&before, &ok, &after]).as_deref(), Some("before: pytest exited with 4; after: sandbox died"));
    }
}
