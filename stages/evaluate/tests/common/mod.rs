//! Test harness shared by the integration tests: `HostDirSandbox`, a `Sandbox` that runs
//! `bash -c` on the host with a temp dir standing for /testbed and another for /tmp (paths
//! in commands and file names are rewritten), plus helpers to build real git repos. It runs
//! real git, real `patch` and real pytest; it isolates nothing and is for tests only.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use swegym_sandbox::{ExecOutput, ExecRequest, Sandbox, SandboxError, SandboxKind};

pub struct HostDirSandbox {
    _root: tempfile::TempDir,
    testbed: PathBuf,
    tmp: PathBuf,
}

impl HostDirSandbox {
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let testbed = root.path().join("testbed");
        let tmp = root.path().join("tmp");
        std::fs::create_dir_all(&testbed).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        HostDirSandbox { _root: root, testbed, tmp }
    }

    pub fn testbed(&self) -> &Path {
        &self.testbed
    }

    /// Rewrites the sandbox paths the harness uses (`/testbed…` as a whole word, and the
    /// `/tmp/swegym_*` files) to their host directories; other paths are left alone.
    fn map(&self, text: &str) -> String {
        let text = text.replace("/tmp/swegym_", &format!("{}/swegym_", self.tmp.display()));
        let testbed = self.testbed.display().to_string();
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(idx) = rest.find("/testbed") {
            let starts_word = idx == 0 || !rest[..idx].ends_with(|c: char| c.is_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'));
            out.push_str(&rest[..idx]);
            out.push_str(if starts_word { &testbed } else { "/testbed" });
            rest = &rest[idx + "/testbed".len()..];
        }
        out.push_str(rest);
        out
    }

    /// Runs a command in /testbed and panics unless it succeeds (test set-up).
    pub fn sh(&self, command: &str) -> String {
        let out = std::process::Command::new("bash").arg("-c").arg(command).current_dir(&self.testbed).output().unwrap();
        assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes files into /testbed and commits them as the base of a new git repository.
    pub fn init_repo(&self, files: &[(&str, &str)]) {
        self.write(files);
        self.sh("git init -q . && git config user.email t@t && git config user.name t && git add -A && git commit -qm base");
    }

    pub fn write(&self, files: &[(&str, &str)]) {
        for (path, text) in files {
            let p = self.testbed.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }

    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.testbed.join(path)).unwrap()
    }
}

fn cap_output(bytes: Vec<u8>, cap: usize) -> (String, bool) {
    if bytes.len() <= cap {
        return (String::from_utf8_lossy(&bytes).into_owned(), false);
    }
    let head = &bytes[..cap / 2];
    let tail = &bytes[bytes.len() - cap / 2..];
    (format!("{}\n[... output truncated ...]\n{}", String::from_utf8_lossy(head), String::from_utf8_lossy(tail)), true)
}

#[async_trait::async_trait]
impl Sandbox for HostDirSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Local
    }

    async fn exec(&self, request: &ExecRequest) -> Result<ExecOutput, SandboxError> {
        let started = Instant::now();
        let cwd = request.cwd.as_deref().map(|c| PathBuf::from(self.map(c))).unwrap_or_else(|| self.testbed.clone());
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg("-c")
            .arg(format!("exec 2>&1\n{}", self.map(&request.command)))
            .current_dir(cwd)
            .env("HOME", &self.tmp)
            .envs(request.env.iter().map(|(k, v)| (k.clone(), v.clone())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| SandboxError::io("spawning bash", e))?;
        let pid = child.id();
        match tokio::time::timeout(request.timeout, child.wait_with_output()).await {
            Ok(out) => {
                let out = out.map_err(|e| SandboxError::io("waiting for bash", e))?;
                let (output, truncated) = cap_output(out.stdout, request.output_cap);
                Ok(ExecOutput { exit_code: out.status.code(), output, truncated, timed_out: false, duration: started.elapsed() })
            }
            Err(_) => {
                if let Some(pid) = pid {
                    let _ = std::process::Command::new("kill").arg("-KILL").arg("--").arg(format!("-{pid}")).status();
                }
                Ok(ExecOutput {
                    exit_code: None,
                    output: String::new(),
                    truncated: false,
                    timed_out: true,
                    duration: started.elapsed(),
                })
            }
        }
    }

    async fn write_file(&self, path: &str, contents: &[u8]) -> Result<(), SandboxError> {
        let p = PathBuf::from(self.map(path));
        std::fs::write(&p, contents).map_err(|e| SandboxError::io(format!("writing {}", p.display()), e))
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        let p = PathBuf::from(self.map(path));
        std::fs::read(&p).map_err(|e| SandboxError::io(format!("reading {}", p.display()), e))
    }

    async fn destroy(&mut self) -> Result<(), SandboxError> {
        Ok(())
    }
}

/// A Python with pytest for the tests that run it: `SWEGYM_TEST_PYTHON`, else the venv
/// `scripts/setup.sh` makes (`${SWEGYM_CACHE:-~/.cache/swegym}/venv`). `None` (and a note
/// on stderr) when neither has pytest, a panic then under `SWEGYM_SLOW_TESTS=1` (CI).
pub fn python_with_pytest() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("SWEGYM_TEST_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    let cache = std::env::var("SWEGYM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/swegym"));
    candidates.push(cache.join("venv/bin/python"));
    for python in candidates {
        let ok = std::process::Command::new(&python)
            .args(["-c", "import pytest"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(python);
        }
    }
    if std::env::var("SWEGYM_SLOW_TESTS").is_ok_and(|v| v == "1") {
        panic!("SWEGYM_SLOW_TESTS=1 but no Python with pytest: run scripts/setup.sh or set SWEGYM_TEST_PYTHON");
    }
    eprintln!("note: no Python with pytest (set SWEGYM_TEST_PYTHON or run scripts/setup.sh); pytest tests skipped");
    None
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
