//! Shared fixture of the sample tests: a real bubblewrap sandbox (local backend) over a tiny
//! git repository, a stand-in environment (an empty venv dir; the system python3), and a
//! task whose gold patch and test patch fit that repository.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use swegym_sample::SandboxProvider;
use swegym_sandbox::local::LocalBackend;
use swegym_sandbox::{Backend, EnvHandle, Limits, Sandbox};
use swegym_schema::Task;

pub struct Fixture {
    pub root: tempfile::TempDir,
    pub backend: LocalBackend,
    pub env: EnvHandle,
    pub workspace: PathBuf,
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

pub const CALC: &str = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n";

pub fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let venv = root.path().join("venv");
    std::fs::create_dir_all(&venv).unwrap();
    let ws = root.path().join("workspace");
    std::fs::create_dir_all(ws.join("src/pkg")).unwrap();
    std::fs::create_dir_all(ws.join("tests")).unwrap();
    std::fs::write(ws.join("src/pkg/calc.py"), CALC).unwrap();
    std::fs::write(ws.join("src/pkg/__init__.py"), "").unwrap();
    std::fs::write(ws.join("tests/test_calc.py"), "import sys\nsys.path.insert(0, 'src')\nfrom pkg.calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n").unwrap();
    std::fs::write(ws.join(".hidden"), "x\n").unwrap();
    std::fs::write(ws.join("blob.bin"), [0u8, 1, 2, 255, 0]).unwrap();
    git(&ws, &["init", "-q"]);
    git(&ws, &["add", "."]);
    git(&ws, &["commit", "-qm", "base"]);
    let backend = LocalBackend::new(root.path().join("cache"));
    let env = EnvHandle::Local { venv_dir: venv, testbed: ws.clone() };
    Fixture { root, backend, env, workspace: ws }
}

impl Fixture {
    pub async fn sandbox(&self) -> Box<dyn Sandbox> {
        self.backend.create(&self.env, Some(&self.workspace), &Limits::default()).await.expect("sandbox starts")
    }
}

#[async_trait::async_trait]
impl SandboxProvider for Fixture {
    async fn sandbox(&self, _task: &Task) -> Result<Box<dyn Sandbox>, String> {
        self.backend.create(&self.env, Some(&self.workspace), &Limits::default()).await.map_err(|e| e.to_string())
    }
}

pub const GOLD: &str = "diff --git a/src/pkg/calc.py b/src/pkg/calc.py\n--- a/src/pkg/calc.py\n+++ b/src/pkg/calc.py\n@@ -1,5 +1,5 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n \n \n def sub(a, b):\n";

pub fn task() -> Task {
    serde_json::from_value(serde_json::json!({
        "instance_id": "tiny__calc-1", "repo": "tiny/calc", "base_commit": "HEAD", "version": "0.1",
        "patch": GOLD,
        "test_patch": "diff --git a/tests/test_calc.py b/tests/test_calc.py\n--- a/tests/test_calc.py\n+++ b/tests/test_calc.py\n@@ -5,3 +5,7 @@ from pkg.calc import add\n \n def test_add():\n     assert add(1, 2) == 3\n+\n+\n+def test_add_zero():\n+    assert add(0, 0) == 0\n",
        "problem_statement": "add() subtracts instead of adding.",
        "FAIL_TO_PASS": ["tests/test_calc.py::test_add"], "PASS_TO_PASS": [],
    }))
    .unwrap()
}

/// `<function=execute_bash>` with `command`.
pub fn bash(command: &str) -> String {
    format!("<function=execute_bash>\n<parameter=command>{command}</parameter>\n</function>")
}

pub fn finish() -> String {
    "I am done.\n<function=finish>\n<parameter=message>done</parameter>\n</function>".to_string()
}
