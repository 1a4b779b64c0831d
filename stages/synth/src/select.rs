//! Which candidates become tasks: FAIL_TO_PASS / PASS_TO_PASS from the test outcomes in
//! the buggy state and in the fixed state, and the keep/drop rules.
//!
//! A test is *passing* when the harness graded it so (PASSED or XFAIL); a test absent
//! from a run (its module failed to import, the run stopped) is not passing.
//! FAIL_TO_PASS = passing when fixed and not passing with the bug; PASS_TO_PASS = passing
//! in both; tests not passing when fixed are no part of the task.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Test id → passed, from one run.
pub type Outcomes = BTreeMap<String, bool>;

/// Why a candidate was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// No test that passes when fixed fails with the bug.
    NoFailingTest,
    /// Every test that passes when fixed fails with the bug (the bug breaks everything).
    BreaksAllTests,
    /// More than the allowed share of the suite fails with the bug.
    BreaksTooManyTests,
    /// The buggy run did not finish cleanly (collection error, crash, untrusted log).
    TestsDidNotRun,
    /// The buggy run hit the test timeout (e.g. an endless loop).
    TestTimeout,
    /// The candidate could not be materialized (patch does not apply, workspace error).
    CandidateError,
    /// A mined commit changes no Python source outside the tests, or no test file.
    NotSourceAndTests,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoFailingTest => "no_failing_test",
            DropReason::BreaksAllTests => "breaks_all_tests",
            DropReason::BreaksTooManyTests => "breaks_too_many_tests",
            DropReason::TestsDidNotRun => "tests_did_not_run",
            DropReason::TestTimeout => "test_timeout",
            DropReason::CandidateError => "candidate_error",
            DropReason::NotSourceAndTests => "not_source_and_tests",
        }
    }
}

/// The keep rules.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectRules {
    /// At least one PASS_TO_PASS test must remain (a bug that breaks every test is dropped).
    pub require_pass_to_pass: bool,
    /// Largest share of the fixed state's passing tests that may fail with the bug (1.0 = no cap).
    pub max_fail_fraction: f64,
}

impl SelectRules {
    /// Synthesized bugs: ≥ 1 failing test, ≥ 1 still passing, at most half the suite broken.
    pub fn synth() -> SelectRules {
        SelectRules { require_pass_to_pass: true, max_fail_fraction: 0.5 }
    }

    /// Mined fixes: ≥ 1 FAIL_TO_PASS test (SWE-bench's rule).
    pub fn mine() -> SelectRules {
        SelectRules { require_pass_to_pass: false, max_fail_fraction: 1.0 }
    }
}

/// A kept candidate's test lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    pub fail_to_pass: Vec<String>,
    pub pass_to_pass: Vec<String>,
}

/// Splits the tests by their outcomes with the bug and when fixed, then applies `rules`.
pub fn select(buggy: &Outcomes, fixed: &Outcomes, rules: &SelectRules) -> Result<Selection, DropReason> {
    let mut fail_to_pass = Vec::new();
    let mut pass_to_pass = Vec::new();
    for (id, _) in fixed.iter().filter(|(_, passed)| **passed) {
        if buggy.get(id).copied().unwrap_or(false) {
            pass_to_pass.push(id.clone());
        } else {
            fail_to_pass.push(id.clone());
        }
    }
    if fail_to_pass.is_empty() {
        return Err(DropReason::NoFailingTest);
    }
    if rules.require_pass_to_pass && pass_to_pass.is_empty() {
        return Err(DropReason::BreaksAllTests);
    }
    let total = (fail_to_pass.len() + pass_to_pass.len()) as f64;
    if fail_to_pass.len() as f64 > rules.max_fail_fraction * total {
        return Err(DropReason::BreaksTooManyTests);
    }
    Ok(Selection { fail_to_pass, pass_to_pass })
}

/// The tests passing in both of two runs of the same code: a flaky test, or one whose id
/// changes from run to run (a parameter made from the clock), is passing in neither. Nor
/// is one whose id names the date of the runs (within a day, for any time zone): the two
/// runs agree on it, but tomorrow's run reports another id and the task stops resolving
/// (marshmallow's `test_invalid_datetime_deserialization[11-21-2026 …]` did that).
pub fn stable(first: &Outcomes, second: &Outcomes) -> Outcomes {
    let days = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() / 86_400).unwrap_or(0) as i64;
    stable_on(first, second, days)
}

/// [`stable`] for runs on day `days` since 1970-01-01 (UTC).
fn stable_on(first: &Outcomes, second: &Outcomes, days: i64) -> Outcomes {
    let dates: Vec<String> = (days - 1..=days + 1).flat_map(date_spellings).collect();
    first
        .iter()
        .map(|(id, passed)| {
            let dated = dates.iter().any(|d| id.contains(d.as_str()));
            (id.clone(), *passed && !dated && second.get(id).copied().unwrap_or(false))
        })
        .collect()
}

/// How many tests pass in `outcomes`.
pub fn passing(outcomes: &Outcomes) -> usize {
    outcomes.values().filter(|p| **p).count()
}

/// How many tests passing in the better of two runs are not passing in their [`stable`]
/// `reference`: flaky ones, and ones whose id changed between the runs.
pub fn unstable(first: &Outcomes, second: &Outcomes, reference: &Outcomes) -> usize {
    passing(first).max(passing(second)) - passing(reference)
}

/// Day `days` since 1970-01-01 as strftime would print it in the usual orders
/// (2026-11-21, 11-21-2026, 21-11-2026, with `-`, `/` or `.`, and 20261121).
fn date_spellings(days: i64) -> Vec<String> {
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut out = vec![format!("{y:04}{m:02}{d:02}")];
    for sep in ["-", "/", "."] {
        out.push(format!("{y:04}{sep}{m:02}{sep}{d:02}"));
        out.push(format!("{m:02}{sep}{d:02}{sep}{y:04}"));
        out.push(format!("{d:02}{sep}{m:02}{sep}{y:04}"));
    }
    out
}

/// The file part of a pytest id (`tests/test_a.py::C::t` → `tests/test_a.py`).
pub fn test_file(id: &str) -> &str {
    id.split("::").next().unwrap_or(id)
}

/// PASS_TO_PASS narrowed to the test files that hold a FAIL_TO_PASS test (SWE-bench
/// grades only the files its test patch names).
pub fn narrow_to_failing_files(selection: &Selection) -> Selection {
    let files: BTreeSet<&str> = selection.fail_to_pass.iter().map(|t| test_file(t)).collect();
    Selection {
        fail_to_pass: selection.fail_to_pass.clone(),
        pass_to_pass: selection.pass_to_pass.iter().filter(|t| files.contains(test_file(t))).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(items: &[(&str, bool)]) -> Outcomes {
        items.iter().map(|(id, p)| (id.to_string(), *p)).collect()
    }

    #[test]
    fn fail_to_pass_and_pass_to_pass() {
        let fixed = outcomes(&[("a.py::x", true), ("a.py::y", true), ("b.py::z", true), ("b.py::flaky", false)]);
        let buggy = outcomes(&[("a.py::x", false), ("a.py::y", true), ("b.py::flaky", true)]);
        let s = select(&buggy, &fixed, &SelectRules::mine()).unwrap();
        assert_eq!(s.fail_to_pass, vec!["a.py::x", "b.py::z"], "missing with the bug = failing");
        assert_eq!(s.pass_to_pass, vec!["a.py::y"]);
        let narrowed = narrow_to_failing_files(&Selection { fail_to_pass: vec!["a.py::x".into()], pass_to_pass: vec!["a.py::y".into(), "b.py::q".into()] });
        assert_eq!(narrowed.pass_to_pass, vec!["a.py::y"]);
    }

    #[test]
    fn stable_outcomes_pass_in_both_runs() {
        let first = outcomes(&[("t::a", true), ("t::flaky", true), ("t::at[12:50:59]", true), ("t::b", false)]);
        let second = outcomes(&[("t::a", true), ("t::flaky", false), ("t::at[12:51:03]", true), ("t::b", false)]);
        let both = stable(&first, &second);
        let passing_ids: Vec<&str> = both.iter().filter(|(_, p)| **p).map(|(id, _)| id.as_str()).collect();
        assert_eq!(passing_ids, ["t::a"]);
        assert_eq!(passing(&first), 3);
        assert_eq!(unstable(&first, &second, &both), 2, "the flaky test and the one whose id holds the clock");
    }

    #[test]
    fn ids_naming_the_date_of_the_runs_are_not_stable() {
        // day 20778 is 2026-11-21
        assert!(date_spellings(20_778).contains(&"2026-11-21".to_string()));
        assert!(date_spellings(0).contains(&"1970-01-01".to_string()));
        assert!(date_spellings(11_016).contains(&"29.02.2000".to_string()));
        let ids = [
            ("t::dt[11-21-2026", true),
            ("t::dt[2026/11/22 00:01]", true),
            ("t::dt[20261120]", true),
            ("t::iso[2013-11-10T01:23:45]", true),
            ("t::dt[11-25-2026", true),
        ];
        let runs = outcomes(&ids);
        let both = stable_on(&runs, &runs, 20_778);
        let passing: Vec<&str> = both.iter().filter(|(_, p)| **p).map(|(id, _)| id.as_str()).collect();
        assert_eq!(passing, ["t::dt[11-25-2026", "t::iso[2013-11-10T01:23:45]"], "a date in the test's code is fine");
    }

    #[test]
    fn drop_reasons() {
        let fixed = outcomes(&[("t::a", true), ("t::b", true), ("t::c", true)]);
        let same = fixed.clone();
        assert_eq!(select(&same, &fixed, &SelectRules::synth()), Err(DropReason::NoFailingTest));
        let none = Outcomes::new();
        assert_eq!(select(&none, &fixed, &SelectRules::synth()), Err(DropReason::BreaksAllTests));
        assert!(select(&none, &fixed, &SelectRules::mine()).is_ok(), "mining keeps a fix whose tests are all new");
        let two = outcomes(&[("t::a", false), ("t::b", false), ("t::c", true)]);
        assert_eq!(select(&two, &fixed, &SelectRules::synth()), Err(DropReason::BreaksTooManyTests));
        let one = outcomes(&[("t::a", false), ("t::b", true), ("t::c", true)]);
        assert_eq!(select(&one, &fixed, &SelectRules::synth()).unwrap().fail_to_pass, vec!["t::a"]);
    }
}
