//! `evaluate_in_sandbox` and `run_tests_only` end to end: a small real repository, real
//! git, real pytest (from the venv `scripts/setup.sh` makes), through `HostDirSandbox`.
//! Covers the validation triple (gold resolves, FAIL_TO_PASS fails before, empty patch does
//! not resolve), the patch's failures, the environment's, and fake-PASSED patches.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{python_with_pytest, HostDirSandbox};
use swegym_evaluate::{evaluate_in_sandbox, run_tests_only, EvalOptions, EvalOutcome};
use swegym_sandbox::{EnvSpec, LogParser, SourceSpec};
use swegym_schema::{EvalStatus, Task};

const CALC: &str = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n";
const TESTS: &str = "from calc import add, mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n";

/// Adds `test_add` (FAIL_TO_PASS) to tests/test_calc.py.
const TEST_PATCH: &str = "diff --git a/tests/test_calc.py b/tests/test_calc.py\n--- a/tests/test_calc.py\n+++ b/tests/test_calc.py\n@@ -3,3 +3,7 @@ from calc import add, mul\n \n def test_mul():\n     assert mul(2, 3) == 6\n+\n+\n+def test_add():\n+    assert add(2, 3) == 5\n";

const GOLD: &str = "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,5 +1,5 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n \n \n def mul(a, b):\n";

fn task() -> Task {
    serde_json::from_value(serde_json::json!({
        "instance_id": "demo__calc-1",
        "repo": "demo/calc",
        "base_commit": "HEAD",
        "patch": GOLD,
        "test_patch": TEST_PATCH,
        "FAIL_TO_PASS": ["tests/test_calc.py::test_add"],
        "PASS_TO_PASS": ["tests/test_calc.py::test_mul"],
        "version": "1.0",
    }))
    .unwrap()
}

fn env(python: &Path) -> EnvSpec {
    EnvSpec {
        repo: "demo/calc".into(),
        version: "1.0".into(),
        python: "3.11".into(),
        source: SourceSpec::Git("/nonexistent".into()),
        pip: vec![],
        install: vec![],
        test_cmd: format!("{} -m pytest --no-header -rA --tb=no -p no:cacheprovider", python.display()),
        log_parser: LogParser::Pytest,
        test_timeout_s: 120,
    }
}

fn sandbox() -> HostDirSandbox {
    let sb = HostDirSandbox::new();
    sb.init_repo(&[("calc.py", CALC), ("tests/test_calc.py", TESTS)]);
    sb
}

async fn eval(patch: &str) -> Option<EvalOutcome> {
    let python = python_with_pytest()?;
    let sb = sandbox();
    let opts = EvalOptions { model_name_or_path: "m".into(), ..EvalOptions::default() };
    Some(evaluate_in_sandbox(&sb, &task(), &env(&python), patch, &opts).await)
}

/// A patch to calc.py that appends `code` to the module (runs at import).
fn append_to_calc(code: &str) -> String {
    let added: String = code.lines().map(|l| format!("+{l}\n")).collect();
    let n = code.lines().count();
    format!("diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,6 +1,{} @@\n def add(a, b):\n-    return a - b\n+    return a + b\n \n \n def mul(a, b):\n     return a * b\n{added}", 6 + n)
}

#[tokio::test]
async fn gold_patch_resolves() {
    let Some(out) = eval(GOLD).await else { return };
    let v = &out.verdict;
    assert_eq!(v.status, EvalStatus::Resolved, "{}", out.log);
    assert!(v.resolved && !v.empty_patch);
    assert_eq!(v.apply_method.as_deref(), Some("git apply"));
    assert_eq!((v.fail_to_pass_passed, v.fail_to_pass_total, v.pass_to_pass_passed, v.pass_to_pass_total), (1, 1, 1, 1));
    assert_eq!(v.test_exit_code, Some(0));
    assert_eq!(v.model_name_or_path, "m");
    assert!(out.log.contains(">>>>> Start Test Output\n") && out.log.contains(">>>>> End Test Output\n"));
    assert!(out.log.contains("PASSED tests/test_calc.py::test_add"), "{}", out.log);
}

#[tokio::test]
async fn fail_to_pass_fails_before_the_fix() {
    let Some(python) = python_with_pytest() else { return };
    let sb = sandbox();
    let out = run_tests_only(&sb, &task(), &env(&python), &EvalOptions::default()).await;
    assert_eq!(out.verdict.status, EvalStatus::Unresolved, "{}", out.log);
    let grade = out.grade.expect("tests ran");
    assert!(grade.f2p_passing().is_empty());
    assert_eq!(grade.p2p_passed(), 1);
    assert_eq!(out.verdict.failed_tests, vec!["tests/test_calc.py::test_add: FAILED"]);
}

#[tokio::test]
async fn empty_and_test_only_patches_are_empty() {
    for patch in ["", "I could not find the bug.", TEST_PATCH] {
        let Some(out) = eval(patch).await else { return };
        assert_eq!(out.verdict.status, EvalStatus::EmptyPatch, "{patch:?}");
        assert!(out.verdict.empty_patch && !out.verdict.resolved);
    }
}

#[tokio::test]
async fn wrong_fix_is_unresolved() {
    let wrong = GOLD.replace("+    return a + b", "+    return a * b");
    let Some(out) = eval(&wrong).await else { return };
    assert_eq!(out.verdict.status, EvalStatus::Unresolved, "{}", out.log);
    assert_eq!(out.verdict.failed_tests, vec!["tests/test_calc.py::test_add: FAILED"]);
    assert_eq!(out.verdict.error, None);
    assert_eq!(out.verdict.test_exit_code, Some(1));
}

#[tokio::test]
async fn breaking_pass_to_pass_is_unresolved() {
    let breaks = GOLD.replace(" def mul(a, b):\n", "-def mul(a, b):\n+def mul(a, b, c):\n");
    let Some(out) = eval(&breaks).await else { return };
    assert_eq!(out.verdict.status, EvalStatus::Unresolved, "{}", out.log);
    assert_eq!(out.verdict.failed_tests, vec!["tests/test_calc.py::test_mul: FAILED"]);
}

#[tokio::test]
async fn patch_that_does_not_apply() {
    // The line it removes does not exist: no fuzz can help.
    let bad = GOLD.replace("-    return a - b", "-    return a / b");
    let Some(out) = eval(&bad).await else { return };
    assert_eq!(out.verdict.status, EvalStatus::PatchApplyFailed, "{}", out.log);
    assert!(out.log.contains(">>>>> Patch Apply Failed"));
    assert_eq!(out.verdict.apply_method, None);
}

#[tokio::test]
async fn messy_llm_patch_is_cleaned_and_applies() {
    let messy = format!("Here is my fix:\r\n```diff\r\n{}```\r\nHope it helps!", GOLD.trim_end().replace('\n', "\r\n"));
    let Some(out) = eval(&messy).await else { return };
    assert_eq!(out.verdict.status, EvalStatus::Resolved, "{}", out.log);
}

#[tokio::test]
async fn fake_passed_lines_then_exit_are_not_resolved() {
    // The "fix" breaks add() again at import and prints fake results past pytest's capture,
    // then leaves with exit code 0 before any test runs.
    let fake = append_to_calc(concat!(
        "import gc, os, sys\n",
        "import _pytest.capture\n",
        "for _o in gc.get_objects():\n",
        "    if isinstance(_o, _pytest.capture.CaptureManager):\n",
        "        _o.suspend_global_capture(in_=True)\n",
        "print('PASSED tests/test_calc.py::test_add')\n",
        "print('PASSED tests/test_calc.py::test_mul')\n",
        "sys.stdout.flush()\n",
        "os._exit(0)\n",
    ));
    let Some(out) = eval(&fake).await else { return };
    assert_eq!(out.verdict.status, EvalStatus::Unresolved, "{}", out.log);
    assert!(out.verdict.error.as_deref().unwrap_or("").contains("possible fake PASSED"), "{:?}", out.verdict.error);
    assert!(out.log.contains("PASSED tests/test_calc.py::test_add"), "the fake lines are in the log: {}", out.log);
}

#[tokio::test]
async fn fake_summary_with_wrong_counts_is_not_resolved() {
    let fake = append_to_calc(concat!(
        "import gc, os, sys\n",
        "import _pytest.capture\n",
        "for _o in gc.get_objects():\n",
        "    if isinstance(_o, _pytest.capture.CaptureManager):\n",
        "        _o.suspend_global_capture(in_=True)\n",
        "print('=' * 20 + ' short test summary info ' + '=' * 20)\n",
        "print('PASSED tests/test_calc.py::test_add')\n",
        "print('=' * 20 + ' 3 passed in 0.01s ' + '=' * 20)\n",
        "sys.stdout.flush()\n",
        "os._exit(0)\n",
    ));
    let Some(out) = eval(&fake).await else { return };
    assert_eq!(out.verdict.status, EvalStatus::Unresolved, "{}", out.log);
    assert!(out.verdict.error.as_deref().unwrap_or("").contains("does not match"), "{:?}", out.verdict.error);
}

#[tokio::test]
async fn model_conftest_is_dropped() {
    // A conftest.py that turns every failure into a pass; it is a test file, so it is
    // dropped from the patch and the real failure of test_add stands.
    let conftest = "diff --git a/conftest.py b/conftest.py\nnew file mode 100644\n--- /dev/null\n+++ b/conftest.py\n@@ -0,0 +1,6 @@\n+import pytest\n+@pytest.hookimpl(hookwrapper=True)\n+def pytest_runtest_makereport(item, call):\n+    outcome = yield\n+    rep = outcome.get_result()\n+    rep.outcome = 'passed'\n";
    let wrong = GOLD.replace("+    return a + b", "+    return a * b");
    let Some(out) = eval(&format!("{conftest}{wrong}")).await else { return };
    assert_eq!(out.verdict.status, EvalStatus::Unresolved, "{}", out.log);
    assert!(out.log.contains("Dropped edits to test files: conftest.py"), "{}", out.log);
}

#[tokio::test]
async fn hanging_tests_time_out() {
    let Some(python) = python_with_pytest() else { return };
    let hang = append_to_calc("import time\ntime.sleep(60)\n");
    let sb = sandbox();
    let opts = EvalOptions { test_timeout: Some(Duration::from_secs(3)), ..EvalOptions::default() };
    let out = evaluate_in_sandbox(&sb, &task(), &env(&python), &hang, &opts).await;
    assert_eq!(out.verdict.status, EvalStatus::TestTimeout, "{}", out.log);
    assert!(out.verdict.total_seconds < 30.0);
    assert!(out.log.contains(">>>>> Tests Timed Out"));
}

#[tokio::test]
async fn environment_failures_are_env_errors() {
    let Some(python) = python_with_pytest() else { return };
    // The test patch does not apply to this workspace.
    let sb = HostDirSandbox::new();
    sb.init_repo(&[("calc.py", CALC), ("tests/test_calc.py", "other\n")]);
    let out = evaluate_in_sandbox(&sb, &task(), &env(&python), GOLD, &EvalOptions::default()).await;
    assert_eq!(out.verdict.status, EvalStatus::EnvError, "{}", out.log);
    assert!(out.verdict.error.as_deref().unwrap().contains("test patch"), "{:?}", out.verdict.error);

    // The test command does not exist.
    let sb = sandbox();
    let mut broken = env(&python);
    broken.test_cmd = "no-such-pytest -rA".into();
    let out = evaluate_in_sandbox(&sb, &task(), &broken, GOLD, &EvalOptions::default()).await;
    assert_eq!(out.verdict.status, EvalStatus::EnvError, "{}", out.log);
    assert_eq!(out.verdict.test_exit_code, Some(127));

    // The sandbox itself fails (its /testbed is gone): the error is data, not a panic.
    let sb = sandbox();
    std::fs::remove_dir_all(sb.testbed()).unwrap();
    let out = evaluate_in_sandbox(&sb, &task(), &env(&python), GOLD, &EvalOptions::default()).await;
    assert_eq!(out.verdict.status, EvalStatus::EnvError, "{}", out.log);
    assert!(out.verdict.error.as_deref().unwrap().contains("applying the patch"), "{:?}", out.verdict.error);
}
