//! Problem statements for synthesized bugs, written as a user's bug report: which
//! function misbehaves, the failing tests and what they report (expected vs actual, the
//! exception), never how to fix it (no mutation kind, no diff). When the tests ran with
//! tracebacks on, the report also quotes the library's frames of the first failure's
//! traceback, as a user pastes one: that can point at the line (the easy tier), never at
//! the fix.

use sha2::{Digest, Sha256};

/// One failing test and the message pytest printed for it, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct FailingTest {
    pub id: String,
    pub message: Option<String>,
}

/// One traceback entry quoted in a report: `file:line: in function` and its source line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub file: String,
    pub line: usize,
    pub function: String,
    pub source: String,
}

/// Library frames quoted, at most (the innermost ones).
pub const MAX_FRAMES: usize = 3;

/// What a bug report is written from.
#[derive(Debug, Clone)]
pub struct BugReport<'a> {
    /// Repository-relative path of the buggy file.
    pub file: &'a str,
    /// Qualified name of the buggy function.
    pub function: &'a str,
    /// The FAIL_TO_PASS tests with their messages (the first few are quoted).
    pub failing: &'a [FailingTest],
    /// Picks the wording (e.g. the instance id), so one statement is stable.
    pub wording_key: &'a str,
    /// The library frames of the first failure's traceback, outermost first (empty: no
    /// traceback quoted); the last [`MAX_FRAMES`] are quoted.
    pub traceback: &'a [Frame],
}

const SHOWN: usize = 3;
const MESSAGE_CHARS: usize = 400;

/// `pkg/sub/mod.py` + `C.m` → `pkg.sub.mod.C.m` (`__init__.py` names the package).
pub fn dotted_name(file: &str, function: &str) -> String {
    let module = file.trim_end_matches(".py").trim_end_matches("/__init__").replace('/', ".");
    let module = module.strip_prefix("src.").unwrap_or(&module).to_string();
    format!("{module}.{function}")
}

/// The exception a message names (`ValueError: bad` → `ValueError`), if any.
fn exception_name(message: &str) -> Option<&str> {
    let head = message.split([':', ' ', '(']).next()?.trim();
    let name = head.rsplit('.').next()?;
    let is_exc = (name.ends_with("Error") || name.ends_with("Exception") || name == "StopIteration") && name != "AssertionError";
    is_exc.then_some(name)
}

/// `<object at 0x7f0e7f722480>` → `<object at 0x...>`, also in pytest's shortened reprs
/// (`<test_dicttoo...x7f4120dfe010>` → `<test_dicttoo...x...>`): a default repr's address
/// differs from run to run, and the statement must not (a seeded synth run gives the same
/// rows). Eight or more hex digits after `0x` or `...x` count as an address (assertion
/// messages print integers in decimal).
fn without_addresses(s: &str) -> String {
    const MIN_DIGITS: usize = 8;
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('x') {
        let (head, tail) = rest.split_at(i + 1);
        out.push_str(head);
        let digits = tail.bytes().take_while(u8::is_ascii_hexdigit).count();
        let after_marker = head.ends_with("0x") || head.ends_with("...x");
        if after_marker && digits >= MIN_DIGITS {
            out.push_str("...");
            rest = &tail[digits..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

fn truncate(s: &str) -> String {
    let s = without_addresses(s);
    let s = s.trim();
    if s.chars().count() <= MESSAGE_CHARS {
        return s.to_string();
    }
    let cut: String = s.chars().take(MESSAGE_CHARS).collect();
    format!("{cut} …")
}

/// The problem statement (markdown).
pub fn problem_statement(report: &BugReport) -> String {
    let digest = Sha256::digest(report.wording_key.as_bytes());
    let pick = digest[0] as usize;
    let dotted = dotted_name(report.file, report.function);
    let short = report.function.rsplit('.').next().unwrap_or(report.function);
    let exception = report.failing.iter().filter_map(|t| t.message.as_deref().and_then(exception_name)).next();
    let title = match exception {
        Some(exc) => format!("`{short}` raises `{exc}` where it used to work"),
        None => ["`{f}` returns wrong results", "Incorrect behaviour of `{f}`", "`{f}` gives unexpected output"][pick % 3].replace("{f}", short),
    };
    let intro = [
        "`{d}` (in `{file}`) no longer behaves correctly.",
        "Something is off with `{d}` from `{file}`: calls that should work give the wrong outcome.",
        "I ran the test suite and `{d}` in `{file}` misbehaves.",
    ][(pick / 3) % 3]
        .replace("{d}", &dotted)
        .replace("{file}", report.file);
    let n = report.failing.len();
    let mut out = format!("{title}\n\n{intro}\n\n");
    out.push_str(&format!(
        "{} {} fail{}:\n\n",
        n,
        if n == 1 { "test" } else { "tests" },
        if n > SHOWN { format!(", for example (first {SHOWN})") } else { String::new() }
    ));
    for t in report.failing.iter().take(SHOWN) {
        out.push_str(&format!("- `{}`\n", t.id));
        match &t.message {
            Some(m) => out.push_str(&format!("  ```\n  {}\n  ```\n", truncate(m).replace('\n', "\n  "))),
            None => out.push_str("  (no message; run the test to see the failure)\n"),
        }
    }
    if !report.traceback.is_empty() {
        out.push_str("\nThe first failure's traceback, in the library:\n\n```\n");
        for f in &report.traceback[report.traceback.len().saturating_sub(MAX_FRAMES)..] {
            out.push_str(&format!("{}:{}: in {}\n", f.file, f.line, f.function));
            if !f.source.is_empty() {
                out.push_str(&format!("    {}\n", f.source));
            }
        }
        out.push_str("```\n");
    }
    out.push_str(&format!(
        "\nExpected: `{short}` behaves as its documentation and these tests describe, and they pass; the rest of the test suite must keep passing.\n"
    ));
    out
}

/// What a statement quotes from the failing tests' tracebacks, and whether they show the
/// bug's line. `failing`: the tracebacks of the FAIL_TO_PASS tests the log holds, in their
/// order (`None`: the run had tracebacks off). Returns the library frames (outside the
/// test files, `is_test`) of the first of them that has any, and whether any passed
/// through `file`:`line` (`None` when tracebacks were off).
pub fn library_traceback(failing: Option<&[Vec<Frame>]>, file: &str, line: usize, is_test: &dyn Fn(&str) -> bool) -> (Vec<Frame>, Option<bool>) {
    let Some(failing) = failing else {
        return (Vec::new(), None);
    };
    let hits = failing.iter().any(|frames| frames.iter().any(|f| f.file == file && f.line == line));
    let quoted = failing
        .iter()
        .map(|frames| frames.iter().filter(|f| !is_test(&f.file)).cloned().collect::<Vec<_>>())
        .find(|frames| !frames.is_empty())
        .unwrap_or_default();
    (quoted, Some(hits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_function_quotes_the_failure_and_hides_the_fix() {
        let failing = vec![
            FailingTest { id: "tests/test_more.py::ChunkedTests::test_even".into(), message: Some("AssertionError: Lists differ: [[1, 2]] != [[1], [2]]".into()) },
            FailingTest { id: "tests/test_more.py::ChunkedTests::test_odd".into(), message: None },
        ];
        let s = problem_statement(&BugReport { file: "more_itertools/more.py", function: "chunked", failing: &failing, wording_key: "x", traceback: &[] });
        assert!(s.contains("`more_itertools.more.chunked`"), "{s}");
        assert!(s.contains("2 tests fail:"), "{s}");
        assert!(s.contains("Lists differ: [[1, 2]] != [[1], [2]]"), "{s}");
        assert!(!s.contains("line"), "no line number: {s}");
        let again = problem_statement(&BugReport { file: "more_itertools/more.py", function: "chunked", failing: &failing, wording_key: "x", traceback: &[] });
        assert_eq!(s, again);
    }

    #[test]
    fn a_traceback_quotes_the_innermost_library_frames() {
        let failing = vec![FailingTest { id: "t.py::a".into(), message: Some("NameError: name 'itearble' is not defined".into()) }];
        let frame = |line: usize, function: &str, source: &str| Frame { file: "pkg/m.py".into(), line, function: function.into(), source: source.into() };
        let traceback = [frame(1, "a", "b()"), frame(2, "b", "c()"), frame(3, "c", "d()"), frame(152, "chunked", "return iter(itearble)")];
        let s = problem_statement(&BugReport { file: "pkg/m.py", function: "chunked", failing: &failing, wording_key: "k", traceback: &traceback });
        assert!(s.contains("```\npkg/m.py:2: in b\n    c()\npkg/m.py:3: in c\n    d()\npkg/m.py:152: in chunked\n    return iter(itearble)\n```\n"), "{s}");
        assert!(!s.contains("pkg/m.py:1:"), "{s}");
        assert!(s.starts_with("`chunked` raises `NameError`"), "{s}");
    }

    #[test]
    fn exceptions_make_the_title() {
        let failing = vec![FailingTest { id: "t.py::a".into(), message: Some("TypeError: unsupported operand".into()) }];
        let s = problem_statement(&BugReport { file: "src/pkg/__init__.py", function: "C.m", failing: &failing, wording_key: "k", traceback: &[] });
        assert!(s.starts_with("`m` raises `TypeError`"), "{s}");
        assert!(s.contains("`pkg.C.m`"), "{s}");
        assert_eq!(exception_name("AssertionError: x"), None);
        assert_eq!(exception_name("json.decoder.JSONDecodeError: x"), Some("JSONDecodeError"));
    }

    #[test]
    fn object_addresses_are_masked() {
        let check = |input: &str, expect: &str| assert_eq!(without_addresses(input), expect, "{input}");
        check("AssertionError: <a.B object at 0x7f255343d9c0> != <a.B object at 0x7f25531e8e80>", "AssertionError: <a.B object at 0x...> != <a.B object at 0x...>");
        check("<function f.<locals>.g at 0x7fde5da76ac0>", "<function f.<locals>.g at 0x...>");
        check("assert <test_dicttoo...x7f4120dfe010> == <test_dicttoo...x7f4120dff810>", "assert <test_dicttoo...x...> == <test_dicttoo...x...>");
        check("assert 0xff == 255 at 0x", "assert 0xff == 255 at 0x");
        check("box xx 0x 0xabcdefg", "box xx 0x 0xabcdefg");
        check("no address", "no address");
    }

    #[test]
    fn the_library_traceback_of_the_first_failure_that_has_one() {
        let frame = |file: &str, line: usize| Frame { file: file.into(), line, function: "f".into(), source: String::new() };
        let is_test = |p: &str| p.starts_with("tests/");
        assert_eq!(library_traceback(None, "pkg/m.py", 7, &is_test), (Vec::new(), None), "tracebacks off");
        let only_tests = vec![frame("tests/test_m.py", 3)];
        let through_bug = vec![frame("tests/test_m.py", 5), frame("pkg/a.py", 2), frame("pkg/m.py", 7)];
        let (quoted, hits) = library_traceback(Some(&[only_tests.clone(), through_bug]), "pkg/m.py", 7, &is_test);
        assert_eq!(quoted, [frame("pkg/a.py", 2), frame("pkg/m.py", 7)]);
        assert_eq!(hits, Some(true));
        assert_eq!(library_traceback(Some(&[only_tests]), "pkg/m.py", 7, &is_test), (Vec::new(), Some(false)));
    }
}
