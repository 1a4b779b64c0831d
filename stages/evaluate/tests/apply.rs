//! The apply chain and the test-patch step over real git and real GNU patch, in a temp
//! repository driven through `HostDirSandbox`.

mod common;

use common::{secs, HostDirSandbox};
use swegym_evaluate::apply::{apply_patch, apply_test_patch, ApplyError, ApplyMethod};

const BASE: &str = "def a():\n    return 1\n\n\ndef b():\n    x = 1\n    y = 2\n    return x + y\n\n\ndef c():\n    return 3\n";

/// The patch `return 1 → 10`, `return 3 → 30`, made against [`BASE`] by git.
const PATCH: &str = "diff --git a/m.py b/m.py\nindex bcaeff5..32e51af 100644\n--- a/m.py\n+++ b/m.py\n@@ -1,5 +1,5 @@\n def a():\n-    return 1\n+    return 10\n \n \n def b():\n@@ -9,4 +9,4 @@ def b():\n \n \n def c():\n-    return 3\n+    return 30\n";

#[tokio::test]
async fn clean_patch_applies_with_git_apply() {
    let sb = HostDirSandbox::new();
    sb.init_repo(&[("m.py", BASE)]);
    let out = apply_patch(&sb, PATCH, secs(60)).await.unwrap();
    assert_eq!(out.method, Some(ApplyMethod::GitApply), "{}", out.log);
    assert_eq!(sb.read("m.py"), BASE.replace("return 1\n", "return 10\n").replace("return 3\n", "return 30\n"));
}

#[tokio::test]
async fn shifted_fuzzy_patch_needs_patch_fuzz_and_leaves_no_rejects() {
    let sb = HostDirSandbox::new();
    // Two lines inserted on top (offset) and a context line changed (fuzz): git apply
    // refuses, --reject applies hunk 2 only and writes m.py.rej, patch --fuzz=5 applies both.
    let shifted = format!("# new header\n# more\n{}", BASE.replace("y = 2\n", "y = 20\n"));
    sb.init_repo(&[("m.py", &shifted), ("other.txt", "untouched\n")]);
    sb.write(&[("pkg.egg-info/PKG-INFO", "untracked install output\n")]);
    let out = apply_patch(&sb, PATCH, secs(60)).await.unwrap();
    assert_eq!(out.method, Some(ApplyMethod::PatchFuzz), "{}", out.log);
    assert!(out.log.contains("git apply --verbose --reject"), "{}", out.log);
    assert_eq!(sb.read("m.py"), shifted.replace("return 1\n", "return 10\n").replace("return 3\n", "return 30\n"));
    // Only m.py changed; no .rej/.orig left; untracked install output kept.
    assert_eq!(sb.sh("git status --porcelain"), " M m.py\n?? pkg.egg-info/\n");
}

#[tokio::test]
async fn patch_that_does_not_apply_leaves_the_tree_clean() {
    let sb = HostDirSandbox::new();
    sb.init_repo(&[("m.py", "completely\ndifferent\ncontent\n")]);
    let out = apply_patch(&sb, PATCH, secs(60)).await.unwrap();
    assert_eq!(out.method, None);
    for method in ApplyMethod::CHAIN {
        assert!(out.log.contains(method.as_str().split(' ').next().unwrap()), "{}", out.log);
    }
    assert_eq!(sb.sh("git status --porcelain"), "");
    assert_eq!(sb.read("m.py"), "completely\ndifferent\ncontent\n");
}

#[tokio::test]
async fn new_file_patch_applies_and_failed_attempts_remove_it() {
    let sb = HostDirSandbox::new();
    sb.init_repo(&[("m.py", BASE)]);
    let new_file = "diff --git a/new.py b/new.py\nnew file mode 100644\n--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+x = 1\n";
    let out = apply_patch(&sb, new_file, secs(60)).await.unwrap();
    assert_eq!(out.method, Some(ApplyMethod::GitApply));
    assert_eq!(sb.read("new.py"), "x = 1\n");

    // A new file plus a hunk that cannot apply: whatever an attempt created is removed.
    let sb = HostDirSandbox::new();
    sb.init_repo(&[("m.py", "other\n")]);
    let out = apply_patch(&sb, &format!("{new_file}{PATCH}"), secs(60)).await.unwrap();
    assert_eq!(out.method, None, "{}", out.log);
    assert_eq!(sb.sh("git status --porcelain"), "");
}

#[tokio::test]
async fn test_patch_resets_model_edits_then_applies() {
    let sb = HostDirSandbox::new();
    sb.init_repo(&[("m.py", BASE), ("tests/test_m.py", "def test_a():\n    assert True\n")]);
    // The model edited the existing test file and created the file the test patch adds.
    sb.write(&[("tests/test_m.py", "def test_a():\n    pass  # model edit\n"), ("tests/test_new.py", "model\n")]);
    let test_patch = "diff --git a/tests/test_m.py b/tests/test_m.py\n--- a/tests/test_m.py\n+++ b/tests/test_m.py\n@@ -1,2 +1,5 @@\n def test_a():\n     assert True\n+\n+def test_b():\n+    assert False\ndiff --git a/tests/test_new.py b/tests/test_new.py\nnew file mode 100644\n--- /dev/null\n+++ b/tests/test_new.py\n@@ -0,0 +1 @@\n+def test_n(): pass\n";
    let log = apply_test_patch(&sb, test_patch, secs(60)).await.unwrap();
    assert!(log.contains("git apply --verbose"), "{log}");
    assert_eq!(sb.read("tests/test_m.py"), "def test_a():\n    assert True\n\ndef test_b():\n    assert False\n");
    assert_eq!(sb.read("tests/test_new.py"), "def test_n(): pass\n");
}

#[tokio::test]
async fn test_patch_that_does_not_apply_is_an_error() {
    let sb = HostDirSandbox::new();
    sb.init_repo(&[("tests/test_m.py", "something else\n")]);
    let test_patch = "diff --git a/tests/test_m.py b/tests/test_m.py\n--- a/tests/test_m.py\n+++ b/tests/test_m.py\n@@ -1 +1 @@\n-def test_a(): pass\n+def test_a(): assert 0\n";
    let err = apply_test_patch(&sb, test_patch, secs(60)).await.unwrap_err();
    assert!(matches!(err, ApplyError::TestPatch { .. }), "{err}");
    assert!(err.to_string().contains("does not apply"), "{err}");
}
