//! Test-log parsers: pytest (`-rA` short summary, `-v` lines, pytest-9 `SUBFAILED`) and
//! unittest (`-v` / Django `--verbosity 2`) → test id → [`TestStatus`], plus the run's
//! own summary (pytest's final `=== 3 passed, 1 failed in 0.12s ===` line, unittest's
//! `Ran N tests` / `OK` / `FAILED (...)`), which [`crate::grade::check_log`] holds the
//! statuses and the exit code against.
//!
//! Ids are written as SWE-bench writes them: pytest ids are the first whitespace-separated
//! token after the status word (so `test_x[a b]` becomes `test_x[a`); unittest ids are
//! `test_name (module.Class)` (Python ≥ 3.11's `(module.Class.test_name)` is folded back to
//! that form, subtest parameters dropped), or the docstring line unittest prints instead.
//!
//! pytest: when the log has a `short test summary info` section (`-rA`), only the status
//! lines of the *last* such section (the one closed by the last final summary line) are
//! read; lines printed elsewhere (captured output, text printed at import) are ignored,
//! except `-v` lines saying SKIPPED (`-rA` gives no id for skips). Without that section,
//! every line is read, as SWE-bench does. A test seen with several statuses keeps the worst.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use swegym_sandbox::LogParser;

/// The outcome of one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TestStatus {
    Passed,
    /// Expected failure that failed (counts as passed, as in SWE-bench).
    Xfail,
    Skipped,
    /// Expected failure that passed (non-strict). SWE-bench's parsers do not record it, so a
    /// required test reported XPASS is graded as missing (not passed).
    Xpass,
    Failed,
    Error,
}

impl TestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Passed => "PASSED",
            TestStatus::Xfail => "XFAIL",
            TestStatus::Skipped => "SKIPPED",
            TestStatus::Xpass => "XPASS",
            TestStatus::Failed => "FAILED",
            TestStatus::Error => "ERROR",
        }
    }

    /// Rank used to keep the worst of several statuses of one test.
    fn severity(self) -> u8 {
        match self {
            TestStatus::Passed => 0,
            TestStatus::Xfail => 1,
            TestStatus::Skipped => 2,
            TestStatus::Xpass => 3,
            TestStatus::Failed => 4,
            TestStatus::Error => 5,
        }
    }

    /// The worse of two statuses.
    pub fn worst(self, other: TestStatus) -> TestStatus {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    /// SWE-bench's "passes": PASSED or XFAIL.
    pub fn passes(self) -> bool {
        matches!(self, TestStatus::Passed | TestStatus::Xfail)
    }

    pub fn is_failure(self) -> bool {
        matches!(self, TestStatus::Failed | TestStatus::Error)
    }
}

impl std::fmt::Display for TestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status lines counted per kind, as the run's summary counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    pub passed: u32,
    /// pytest: FAILED plus pytest-9 SUBFAILED lines (pytest counts both as "failed").
    pub failed: u32,
    pub errors: u32,
    /// pytest: the sum of N over `SKIPPED [N] ...` lines.
    pub skipped: u32,
    pub xfailed: u32,
    pub xpassed: u32,
}

/// pytest's final line, e.g. `==== 2 failed, 5 passed, 1 skipped in 0.02s ====`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PytestSummary {
    /// Counts by their word as printed, singular (`error`, `warning`), e.g. `{"passed": 5}`.
    pub counts: BTreeMap<String, u32>,
    /// The line itself, trimmed.
    pub line: String,
}

impl PytestSummary {
    pub fn count(&self, key: &str) -> u32 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    /// The counts that [`StatusCounts`] has lines for.
    pub fn status_counts(&self) -> StatusCounts {
        StatusCounts {
            passed: self.count("passed"),
            failed: self.count("failed"),
            errors: self.count("error"),
            skipped: self.count("skipped"),
            xfailed: self.count("xfailed"),
            xpassed: self.count("xpassed"),
        }
    }
}

/// unittest's `Ran N tests in Xs` and the `OK` / `FAILED (...)` line after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnittestSummary {
    pub ran: u32,
    pub ok: bool,
    /// `failures=`, `errors=`, `skipped=`, `expected failures=`, `unexpected successes=`.
    pub counts: BTreeMap<String, u32>,
}

/// The run's own account of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunSummary {
    Pytest(PytestSummary),
    Unittest(UnittestSummary),
}

/// A parsed test log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParsedLog {
    pub statuses: BTreeMap<String, TestStatus>,
    /// Status lines counted (pytest: within the authoritative section).
    pub line_counts: StatusCounts,
    /// The final summary; `None` when the log has none.
    pub summary: Option<RunSummary>,
    /// pytest: whether a `short test summary info` section (from `-rA`) was read.
    pub has_short_summary: bool,
    /// pytest: `-v` SKIPPED lines seen (unique ids).
    pub verbose_skipped: u32,
}

impl ParsedLog {
    fn record(&mut self, id: &str, status: TestStatus) {
        if id.is_empty() {
            return;
        }
        self.statuses
            .entry(id.to_string())
            .and_modify(|s| *s = s.worst(status))
            .or_insert(status);
    }

    pub fn pytest_summary(&self) -> Option<&PytestSummary> {
        match &self.summary {
            Some(RunSummary::Pytest(s)) => Some(s),
            _ => None,
        }
    }

    pub fn unittest_summary(&self) -> Option<&UnittestSummary> {
        match &self.summary {
            Some(RunSummary::Unittest(s)) => Some(s),
            _ => None,
        }
    }
}

/// Parses a log with the parser an environment names.
pub fn parse_log(parser: LogParser, log: &str) -> ParsedLog {
    match parser {
        LogParser::Pytest => parse_pytest(log),
        LogParser::Unittest => parse_unittest(log),
    }
}

static ANSI: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\x1b\[[0-9;?]*[ -/]*[@-~]").unwrap());
static PYTEST_FINAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:=+ )?((?:\d+ [a-z]+(?: [a-z]+)?)(?:, \d+ [a-z]+(?: [a-z]+)?)*|no tests ran) in \d+(?:\.\d+)? ?s(?:econds)?(?: \([^)]*\))?(?: =+)?$").unwrap()
});
static PYTEST_TEST_FIRST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS|SUBFAILED)(?:[\[(\s]|$)").unwrap()
});
static SKIP_COUNT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\[(\d+)\]").unwrap());

fn strip_ansi(line: &str) -> std::borrow::Cow<'_, str> {
    if line.contains('\x1b') {
        ANSI.replace_all(line, "")
    } else {
        std::borrow::Cow::Borrowed(line)
    }
}

/// A status-first pytest line (`PASSED id`, `FAILED id - msg`, `SKIPPED [2] f.py:3: why`,
/// `SUBFAILED[msg] (i=1) id - msg`): (status, id or `None` for an aggregated skip, count).
fn status_first(line: &str) -> Option<(TestStatus, Option<String>, u32)> {
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim_start()),
        None => (line, ""),
    };
    let status = match word {
        "PASSED" => TestStatus::Passed,
        "FAILED" => TestStatus::Failed,
        "ERROR" => TestStatus::Error,
        "XFAIL" => TestStatus::Xfail,
        "XPASS" => TestStatus::Xpass,
        "SKIPPED" => TestStatus::Skipped,
        w if w.starts_with("SUBFAILED") => {
            // `SUBFAILED(i=2) id`, `SUBFAILED[msg] id`, `SUBFAILED[msg] (i=1) id`.
            let after = line["SUBFAILED".len()..].trim_start();
            let after = skip_group(after, '[', ']');
            let after = skip_group(after.trim_start(), '(', ')');
            let id = after.split_whitespace().next()?;
            return Some((TestStatus::Failed, Some(id.to_string()), 1));
        }
        _ => return None,
    };
    if status == TestStatus::Skipped {
        if let Some(c) = SKIP_COUNT.captures(rest) {
            return Some((status, None, c[1].parse().unwrap_or(1)));
        }
    }
    let id = rest.split_whitespace().next()?;
    Some((status, Some(id.to_string()), 1))
}

/// Skips one balanced `open…close` group at the start of `s`, if there is one.
fn skip_group(s: &str, open: char, close: char) -> &str {
    if !s.starts_with(open) {
        return s;
    }
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return &s[i + c.len_utf8()..];
            }
        }
    }
    ""
}

fn test_first(line: &str) -> Option<(String, TestStatus)> {
    let c = PYTEST_TEST_FIRST.captures(line)?;
    let id = &c[1];
    if !(id.contains("::") || id.ends_with(".py")) {
        return None;
    }
    let status = match &c[2] {
        "PASSED" => TestStatus::Passed,
        "FAILED" | "SUBFAILED" => TestStatus::Failed,
        "SKIPPED" => TestStatus::Skipped,
        "ERROR" => TestStatus::Error,
        "XFAIL" => TestStatus::Xfail,
        _ => TestStatus::Xpass,
    };
    Some((id.to_string(), status))
}

fn parse_pytest_final(line: &str) -> Option<PytestSummary> {
    let c = PYTEST_FINAL.captures(line.trim())?;
    let mut counts = BTreeMap::new();
    if &c[1] != "no tests ran" {
        for item in c[1].split(", ") {
            let (n, word) = item.split_once(' ')?;
            let word = match word {
                "errors" => "error",
                "warnings" => "warning",
                w => w,
            };
            *counts.entry(word.to_string()).or_insert(0) += n.parse::<u32>().ok()?;
        }
    }
    Some(PytestSummary { counts, line: line.trim().to_string() })
}

fn is_short_summary_header(line: &str) -> bool {
    line.starts_with('=') && line.contains(" short test summary info ")
}

/// Parses a pytest log (see the module docs for which lines count).
pub fn parse_pytest(log: &str) -> ParsedLog {
    let lines: Vec<String> = log.lines().map(|l| strip_ansi(l).into_owned()).collect();
    let mut parsed = ParsedLog::default();
    let last_final = lines.iter().rposition(|l| parse_pytest_final(l).is_some());
    if let Some(idx) = last_final {
        parsed.summary = parse_pytest_final(&lines[idx]).map(RunSummary::Pytest);
    }
    let header = last_final.and_then(|end| lines[..end].iter().rposition(|l| is_short_summary_header(l)));
    match (header, last_final) {
        (Some(start), Some(end)) => {
            parsed.has_short_summary = true;
            for line in &lines[start + 1..end] {
                if let Some((status, id, n)) = status_first(line) {
                    count_line(&mut parsed.line_counts, status, n);
                    if let Some(id) = id {
                        parsed.record(&id, status);
                    }
                }
            }
            let mut skipped = std::collections::BTreeSet::new();
            for line in &lines[..start] {
                if let Some((id, TestStatus::Skipped)) = test_first(line) {
                    skipped.insert(id);
                }
            }
            parsed.verbose_skipped = skipped.len() as u32;
            for id in skipped {
                parsed.record(&id, TestStatus::Skipped);
            }
        }
        _ => {
            for line in &lines {
                if let Some((status, id, n)) = status_first(line) {
                    count_line(&mut parsed.line_counts, status, n);
                    if let Some(id) = id {
                        parsed.record(&id, status);
                    }
                } else if let Some((id, status)) = test_first(line) {
                    parsed.record(&id, status);
                }
            }
        }
    }
    parsed
}

/// The message pytest's short summary prints after a failed or errored test
/// (`FAILED tests/test_x.py::test_a - assert [1, 2] == [1, 2, 3]`), by test id (ids as
/// [`parse_pytest`] writes them). Tests printed without a message are absent. Read from the
/// last short-summary section only.
pub fn pytest_failure_messages(log: &str) -> BTreeMap<String, String> {
    let lines: Vec<String> = log.lines().map(|l| strip_ansi(l).into_owned()).collect();
    let mut messages = BTreeMap::new();
    let Some(end) = lines.iter().rposition(|l| parse_pytest_final(l).is_some()) else {
        return messages;
    };
    let Some(start) = lines[..end].iter().rposition(|l| is_short_summary_header(l)) else {
        return messages;
    };
    for line in &lines[start + 1..end] {
        let Some(rest) = line.strip_prefix("FAILED ").or_else(|| line.strip_prefix("ERROR ")) else {
            continue;
        };
        let Some((id, message)) = rest.split_once(" - ") else {
            continue;
        };
        let id = id.split_whitespace().next().unwrap_or(id);
        messages.entry(id.to_string()).or_insert_with(|| message.trim().to_string());
    }
    messages
}

/// One entry of a pytest traceback (`--tb=short` or `--tb=long`): where it ran and the
/// source line pytest showed for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracebackFrame {
    pub file: String,
    pub line: usize,
    pub function: String,
    /// The source line shown under the entry (trimmed; empty when none was shown).
    pub source: String,
}

static FAILURE_HEADLINE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^_{3,} (.+?) _{3,}$").unwrap());
static FRAME: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(\S+\.py):(\d+): in (\S+)$").unwrap());

/// The pytest headline of a failure section for a test id: `a/t.py::C::test_x[1]` →
/// `C.test_x[1]` (what pytest prints between the underscores).
pub fn pytest_headline(test_id: &str) -> String {
    match test_id.split_once("::") {
        Some((_, rest)) => rest.replace("::", "."),
        None => test_id.to_string(),
    }
}

/// Each failed test's traceback entries from the FAILURES section of a pytest log run with
/// tracebacks on (`--tb=short` / `--tb=long`), outermost first, keyed by the section's
/// headline ([`pytest_headline`]). Empty for `--tb=no`. Setup and teardown errors
/// (`ERROR at setup of …`) are not failures and are left out.
pub fn pytest_tracebacks(log: &str) -> BTreeMap<String, Vec<TracebackFrame>> {
    let mut out: BTreeMap<String, Vec<TracebackFrame>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_failures = false;
    let mut awaiting_source = false;
    for raw in log.lines() {
        let line = strip_ansi(raw);
        let line = line.trim_end();
        if line.starts_with("=====") {
            in_failures = line.contains(" FAILURES ");
            current = None;
            continue;
        }
        if !in_failures {
            continue;
        }
        if let Some(c) = FAILURE_HEADLINE.captures(line) {
            let name = c[1].to_string();
            current = (!name.starts_with("ERROR at ")).then(|| {
                out.entry(name.clone()).or_default();
                name
            });
            awaiting_source = false;
            continue;
        }
        let Some(name) = &current else { continue };
        if let Some(c) = FRAME.captures(line) {
            let frames = out.get_mut(name).expect("entry made at the headline");
            frames.push(TracebackFrame { file: c[1].to_string(), line: c[2].parse().unwrap_or(0), function: c[3].to_string(), source: String::new() });
            awaiting_source = true;
        } else if awaiting_source && line.starts_with("    ") {
            if let Some(f) = out.get_mut(name).and_then(|f| f.last_mut()) {
                f.source = line.trim().to_string();
            }
            awaiting_source = false;
        } else {
            awaiting_source = false;
        }
    }
    out
}

fn count_line(c: &mut StatusCounts, status: TestStatus, n: u32) {
    match status {
        TestStatus::Passed => c.passed += n,
        TestStatus::Failed => c.failed += n,
        TestStatus::Error => c.errors += n,
        TestStatus::Skipped => c.skipped += n,
        TestStatus::Xfail => c.xfailed += n,
        TestStatus::Xpass => c.xpassed += n,
    }
}

static UNITTEST_ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(\S+) \(([^()\s]+)\)").unwrap());
static UNITTEST_RAN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^Ran (\d+) tests? in ").unwrap());
static UNITTEST_RESULT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(OK|FAILED)(?: \((.*)\))?\s*$").unwrap());

/// `test_x (mod.Class.test_x) (i=1)` → `test_x (mod.Class)`; other text is trimmed.
pub fn normalize_unittest_id(raw: &str) -> String {
    let raw = raw.trim();
    match UNITTEST_ID.captures(raw) {
        Some(c) => {
            let name = &c[1];
            let qual = &c[2];
            let qual = qual.strip_suffix(&format!(".{name}")).unwrap_or(qual);
            format!("{name} ({qual})")
        }
        None => raw.to_string(),
    }
}

fn unittest_status(text: &str) -> Option<TestStatus> {
    let t = text.trim();
    Some(match t {
        "ok" | "OK" => TestStatus::Passed,
        "FAIL" => TestStatus::Failed,
        "ERROR" => TestStatus::Error,
        "expected failure" => TestStatus::Xfail,
        "unexpected success" => TestStatus::Xpass,
        _ if t.starts_with("skipped") => TestStatus::Skipped,
        _ => return None,
    })
}

/// Parses a unittest `-v` log (also Django's `runtests.py --verbosity 2`).
pub fn parse_unittest(log: &str) -> ParsedLog {
    let lines: Vec<String> = log.lines().map(|l| strip_ansi(l).into_owned()).collect();
    let mut parsed = ParsedLog::default();
    for (i, line) in lines.iter().enumerate() {
        if let Some((left, status_text)) = line.rsplit_once(" ... ") {
            if let Some(status) = unittest_status(status_text) {
                // `a ... b ... ok` (a test whose subtests printed nothing): the last id.
                let id_part = left.rsplit(" ... ").next().unwrap_or(left);
                let id = normalize_unittest_id(id_part);
                let indented = line.starts_with(' ');
                if !indented {
                    count_line(&mut parsed.line_counts, status, 1);
                }
                parsed.record(&id, status);
            }
            continue;
        }
        let after_rule = i > 0 && lines[i - 1].starts_with("======");
        if after_rule {
            for (prefix, status) in [("FAIL: ", TestStatus::Failed), ("ERROR: ", TestStatus::Error)] {
                if let Some(rest) = line.strip_prefix(prefix) {
                    parsed.record(&normalize_unittest_id(rest), status);
                }
            }
        }
        if let Some(c) = UNITTEST_RAN.captures(line) {
            let ran = c[1].parse().unwrap_or(0);
            let result = lines[i + 1..].iter().find(|l| !l.trim().is_empty());
            if let Some(r) = result.and_then(|l| UNITTEST_RESULT.captures(l.trim())) {
                let mut counts = BTreeMap::new();
                if let Some(inner) = r.get(2) {
                    for item in inner.as_str().split(", ") {
                        if let Some((k, v)) = item.split_once('=') {
                            counts.insert(k.trim().to_string(), v.trim().parse().unwrap_or(0));
                        }
                    }
                }
                parsed.summary = Some(RunSummary::Unittest(UnittestSummary { ran, ok: &r[1] == "OK", counts }));
            }
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracebacks_of_failed_tests() {
        let log = "============================= test session starts ==============================
collected 3 items

tests/test_more.py F.F                                                    [100%]

=================================== FAILURES ===================================
____________________________ ChunkedTests.test_even ____________________________
tests/test_more.py:45: in test_even
    self.assertEqual(list(mi.chunked(x, 2)), [[1, 2]])
more_itertools/more.py:152: in chunked
    iterator = iter(partial(take, n, iter(itearble)), [])
E   NameError: name 'itearble' is not defined
_________________________________ test_p[1-2] __________________________________
tests/test_more.py:9: in test_p
    assert f(1) == 2
E   assert 3 == 2
______________________ ERROR at setup of test_fixture ______________________
tests/conftest.py:3: in fx
    raise RuntimeError
=========================== short test summary info ============================
FAILED tests/test_more.py::ChunkedTests::test_even - NameError: name 'itearble' is not defined
========================= 2 failed, 1 passed in 0.12s ==========================
";
        let tb = pytest_tracebacks(log);
        assert_eq!(tb.len(), 2, "{tb:?}");
        let even = &tb[&pytest_headline("tests/test_more.py::ChunkedTests::test_even")];
        assert_eq!(even.len(), 2);
        assert_eq!(even[1], TracebackFrame { file: "more_itertools/more.py".into(), line: 152, function: "chunked".into(), source: "iterator = iter(partial(take, n, iter(itearble)), [])".into() });
        assert_eq!(tb[&pytest_headline("tests/test_more.py::test_p[1-2]")][0].line, 9);
        assert!(pytest_tracebacks("FAILED a.py::t - x\n===== 1 failed in 0.1s =====\n").is_empty());
    }
    use TestStatus::*;

    fn check(parsed: &ParsedLog, expect: &[(&str, TestStatus)]) {
        let got: Vec<(String, TestStatus)> = parsed.statuses.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let want: Vec<(String, TestStatus)> = {
            let mut w: Vec<(String, TestStatus)> = expect.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            w.sort_by(|a, b| a.0.cmp(&b.0));
            w
        };
        assert_eq!(got, want);
    }

    fn counts(passed: u32, failed: u32, errors: u32, skipped: u32, xfailed: u32, xpassed: u32) -> StatusCounts {
        StatusCounts { passed, failed, errors, skipped, xfailed, xpassed }
    }

    #[test]
    fn pytest8_ra() {
        let p = parse_pytest(include_str!("../tests/data/pytest8_rA.log"));
        check(
            &p,
            &[
                ("tests/test_a.py::test_ok", Passed),
                ("tests/test_a.py::test_param[a", Passed),
                ("tests/test_a.py::test_param[c]", Passed),
                ("tests/test_b.py::test_b1", Passed),
                ("tests/test_b.py::test_b2", Passed),
                ("tests/test_a.py::test_xf", Xfail),
                ("tests/test_a.py::test_xp", Xpass),
                ("tests/test_a.py::test_err", Error),
                ("tests/test_a.py::test_bad", Failed),
                ("tests/test_a.py::TestSub::test_subs", Failed),
            ],
        );
        assert!(p.has_short_summary);
        assert_eq!(p.line_counts, counts(5, 2, 1, 1, 1, 1));
        assert_eq!(p.pytest_summary().unwrap().status_counts(), p.line_counts);
    }

    #[test]
    fn pytest9_subfailed_overrides_passed() {
        let p = parse_pytest(include_str!("../tests/data/pytest9_rA_subfailed.log"));
        assert_eq!(p.statuses["tests/test_a.py::TestSub::test_subs"], Failed);
        assert_eq!(p.statuses["tests/test_a.py::test_ok"], Passed);
        assert_eq!(p.line_counts, counts(6, 2, 1, 1, 1, 1));
        assert_eq!(p.pytest_summary().unwrap().status_counts(), p.line_counts);

        let v = parse_pytest(include_str!("../tests/data/pytest9_v_subtests.log"));
        check(
            &v,
            &[
                ("t2/test_c.py::T::test_m", Failed),
                ("t2/test_c.py::test_fx", Failed),
                ("tests/test_b.py::test_b1", Passed),
                ("tests/test_b.py::test_b2", Passed),
            ],
        );
        let s = v.pytest_summary().unwrap();
        assert_eq!(s.count("subtests passed"), 2);
        assert_eq!(s.status_counts(), v.line_counts);
    }

    #[test]
    fn pytest_verbose_adds_skipped_ids() {
        let p = parse_pytest(include_str!("../tests/data/pytest8_v.log"));
        assert_eq!(p.statuses["tests/test_a.py::test_skip"], Skipped);
        assert_eq!(p.verbose_skipped, 1);
        assert_eq!(p.statuses["tests/test_a.py::test_bad"], Failed);
        assert_eq!(p.line_counts.skipped, 1);
    }

    #[test]
    fn pytest_collection_error() {
        let p = parse_pytest(include_str!("../tests/data/pytest8_collection_error.log"));
        check(&p, &[("t2/test_err.py", Error)]);
        assert_eq!(p.pytest_summary().unwrap().count("error"), 1);
    }

    #[test]
    fn pytest_without_short_summary_reads_every_line() {
        let log = "tests/t.py::test_a PASSED                 [ 50%]\ntests/t.py::test_b FAILED   [100%]\nsome noise PASSED\n=== 1 failed, 1 passed in 0.1s ===\n";
        let p = parse_pytest(log);
        check(&p, &[("tests/t.py::test_a", Passed), ("tests/t.py::test_b", Failed)]);
        assert!(!p.has_short_summary);
    }

    #[test]
    fn pytest_final_line_forms() {
        type Counts = &'static [(&'static str, u32)];
        let cases: [(&str, Option<Counts>); 7] = [
            ("==== 3 passed, 1 failed, 2 xfailed in 0.12s ====", Some(&[("passed", 3), ("failed", 1), ("xfailed", 2)])),
            ("= 2 errors, 1 warning in 1.00s =", Some(&[("error", 2), ("warning", 1)])),
            ("=== 1 passed in 62.50s (0:01:02) ===", Some(&[("passed", 1)])),
            ("3 passed in 0.01s", Some(&[("passed", 3)])),
            ("==== 1 failed, 2 passed in 0.12 seconds ====", Some(&[("failed", 1), ("passed", 2)])),
            ("======= no tests ran in 0.01s =======", Some(&[])),
            ("PASSED tests/t.py::test_x", None),
        ];
        for (line, expect) in cases {
            let got = parse_pytest_final(line).map(|s| s.counts);
            let want = expect.map(|e| e.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>());
            assert_eq!(got, want, "{line}");
        }
    }

    #[test]
    fn pytest_ignores_lines_outside_the_last_section() {
        // Fake lines printed at import and by a test with capture disabled; the real result
        // (FAILED) is what the last section says.
        for log in [
            include_str!("../tests/data/fake_import_then_real_failure.log"),
            include_str!("../tests/data/fake_terminal_noise.log"),
        ] {
            let p = parse_pytest(log);
            assert_eq!(p.statuses["tests/test_target.py::test_fixed"], Failed, "{log}");
            assert_eq!(p.pytest_summary().unwrap().status_counts(), p.line_counts);
        }
    }

    #[test]
    fn worst_status_wins() {
        let p = parse_pytest("PASSED t.py::a\nFAILED t.py::a - x\nXFAIL t.py::b\nPASSED t.py::b\n");
        check(&p, &[("t.py::a", Failed), ("t.py::b", Xfail)]);
        assert_eq!(Passed.worst(Error), Error);
        assert_eq!(Skipped.worst(Xfail), Skipped);
    }

    #[test]
    fn unittest_py311() {
        let p = parse_unittest(include_str!("../tests/data/unittest_py311.log"));
        check(
            &p,
            &[
                ("Docstring first line.", Passed),
                ("test_err (ut.test_u.A)", Error),
                ("test_fail (ut.test_u.A)", Failed),
                ("test_ok (ut.test_u.A)", Passed),
                ("test_skip (ut.test_u.A)", Skipped),
                ("test_sub (ut.test_u.A)", Failed),
                ("test_us (ut.test_u.A)", Xpass),
                ("test_xf (ut.test_u.A)", Xfail),
            ],
        );
        let s = p.unittest_summary().unwrap();
        assert_eq!((s.ran, s.ok), (8, false));
        assert_eq!(s.counts["failures"], 2);
        assert_eq!(s.counts["unexpected successes"], 1);
    }

    #[test]
    fn unittest_py39_same_ids() {
        let a = parse_unittest(include_str!("../tests/data/unittest_py39.log"));
        let b = parse_unittest(include_str!("../tests/data/unittest_py311.log"));
        assert_eq!(a.statuses, b.statuses);
        let ok = parse_unittest(include_str!("../tests/data/unittest_ok.log"));
        check(&ok, &[("test_a (ut.test_ok.B)", Passed), ("test_b (ut.test_ok.B)", Skipped)]);
        let s = ok.unittest_summary().unwrap();
        assert!(s.ok);
        assert_eq!(s.counts["skipped"], 1);
    }

    #[test]
    fn unittest_id_forms() {
        let cases = [
            ("test_x (m.C)", "test_x (m.C)"),
            ("test_x (m.C.test_x)", "test_x (m.C)"),
            ("  test_x (m.C.test_x) (i=1)", "test_x (m.C)"),
            ("test_x (m.C) [msg] (i=1)", "test_x (m.C)"),
            ("A docstring line.", "A docstring line."),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_unittest_id(raw), want, "{raw}");
        }
    }

    #[test]
    fn failure_messages_come_from_the_short_summary() {
        let log = "FAILED noise - not in summary\n=== short test summary info ===\nPASSED t.py::ok\nFAILED t.py::test_a - assert [1, 2] == [1, 2, 3]\nERROR t.py::test_b - ValueError: boom - twice\nFAILED t.py::test_c\n=== 2 failed, 1 passed, 1 error in 0.1s ===\n";
        let m = pytest_failure_messages(log);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m["t.py::test_a"], "assert [1, 2] == [1, 2, 3]");
        assert_eq!(m["t.py::test_b"], "ValueError: boom - twice");
    }
}
