//! Applying patches inside a sandbox's `/testbed`: the model patch through the SWE-bench
//! chain (`git apply -v` → `git apply -v --reject` → `patch --batch --fuzz=5 -p1`), then
//! the reset of the test-patch files and the test patch itself (`git apply -v`).
//!
//! Between two attempts the tree is reset to HEAD, but only at the paths the patch names
//! (tracked ones checked out, new ones removed, `.rej` / `.orig` leftovers removed): a
//! blanket `git clean -fd` would also delete untracked files the environment's install
//! left in /testbed (e.g. `*.egg-info` of an editable install).

use std::time::Duration;

use swegym_sandbox::{ExecOutput, ExecRequest, Sandbox, SandboxError};

use crate::patch::{modified_and_new_files, split_file_diffs};
use crate::shell::quote;

/// Where the model patch is written inside the sandbox.
pub const PATCH_PATH: &str = "/tmp/swegym_patch.diff";
/// Where the test patch is written inside the sandbox.
pub const TEST_PATCH_PATH: &str = "/tmp/swegym_test_patch.diff";

/// The method that applied a patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyMethod {
    GitApply,
    GitApplyReject,
    PatchFuzz,
}

impl ApplyMethod {
    /// In the order they are tried.
    pub const CHAIN: [ApplyMethod; 3] = [ApplyMethod::GitApply, ApplyMethod::GitApplyReject, ApplyMethod::PatchFuzz];

    /// The name written into verdicts.
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyMethod::GitApply => "git apply",
            ApplyMethod::GitApplyReject => "git apply --reject",
            ApplyMethod::PatchFuzz => "patch --fuzz=5",
        }
    }

    fn command(self, path: &str) -> String {
        let path = quote(path);
        match self {
            ApplyMethod::GitApply => format!("git apply --verbose {path}"),
            ApplyMethod::GitApplyReject => format!("git apply --verbose --reject {path}"),
            ApplyMethod::PatchFuzz => format!("patch --batch --fuzz=5 -p1 --no-backup-if-mismatch -i {path}"),
        }
    }
}

/// What the apply chain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The method that worked; `None` when every method failed (the tree is reset then).
    pub method: Option<ApplyMethod>,
    /// Every attempt's command and output.
    pub log: String,
}

/// Errors of the apply steps. All are the environment's or the dataset's, never the patch's
/// (a patch that does not apply is an [`ApplyOutcome`] with no method).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("`{command}` timed out after {seconds} s")]
    Timeout { command: String, seconds: u64 },
    #[error("resetting the test files failed (exit {exit_code:?}):\n{output}")]
    Reset { exit_code: Option<i32>, output: String },
    #[error("the task's test patch does not apply (exit {exit_code:?}):\n{output}")]
    TestPatch { exit_code: Option<i32>, output: String },
}

/// Runs one command in /testbed; a timeout is an error (these commands are quick).
pub(crate) async fn run(sandbox: &dyn Sandbox, command: String, timeout: Duration) -> Result<ExecOutput, ApplyError> {
    let out = sandbox.exec(&ExecRequest::new(command.clone(), timeout)).await?;
    if out.timed_out {
        return Err(ApplyError::Timeout { command, seconds: timeout.as_secs() });
    }
    Ok(out)
}

fn log_attempt(log: &mut String, command: &str, out: &ExecOutput) {
    log.push_str(&format!("$ {command}\n{}", out.output));
    if !out.output.is_empty() && !out.output.ends_with('\n') {
        log.push('\n');
    }
    log.push_str(&format!("[exit {}]\n", out.exit_code.map_or("none".to_string(), |c| c.to_string())));
}

/// A shell script that resets `paths` to HEAD: tracked paths are checked out, others
/// removed, and `.rej` / `.orig` leftovers of each path removed.
fn reset_script(paths: &[String]) -> String {
    let list: Vec<String> = paths.iter().map(|p| quote(p)).collect();
    format!(
        "for p in {}; do if git cat-file -e \"HEAD:$p\" 2>/dev/null; then git checkout -q HEAD -- \"$p\"; else rm -f -- \"$p\"; fi; rm -f -- \"$p.rej\" \"$p.orig\"; done",
        list.join(" ")
    )
}

/// Tries each method of [`ApplyMethod::CHAIN`] on `patch` (already cleaned) in /testbed,
/// resetting the paths the patch names after a failed attempt that may have left changes.
pub async fn apply_patch(sandbox: &dyn Sandbox, patch: &str, timeout: Duration) -> Result<ApplyOutcome, ApplyError> {
    sandbox.write_file(PATCH_PATH, patch.as_bytes()).await?;
    let mut paths: Vec<String> = Vec::new();
    for f in split_file_diffs(patch) {
        for p in f.paths() {
            if !paths.iter().any(|q| q == p) {
                paths.push(p.to_string());
            }
        }
    }
    let mut log = String::new();
    for method in ApplyMethod::CHAIN {
        let command = method.command(PATCH_PATH);
        let out = run(sandbox, command.clone(), timeout).await?;
        log_attempt(&mut log, &command, &out);
        if out.exit_code == Some(0) {
            tracing::debug!(method = method.as_str(), "patch applied");
            return Ok(ApplyOutcome { method: Some(method), log });
        }
        // A plain `git apply` is atomic; the others may leave partial changes behind.
        if method != ApplyMethod::GitApply && !paths.is_empty() {
            let script = reset_script(&paths);
            let out = run(sandbox, script.clone(), timeout).await?;
            if out.exit_code != Some(0) {
                log_attempt(&mut log, &script, &out);
            }
        }
    }
    Ok(ApplyOutcome { method: None, log })
}

/// Resets the files the test patch touches (modified ones to HEAD, new ones removed, as
/// SWE-bench's eval script does) and applies it with `git apply -v`. Returns the log.
/// An empty test patch (a synthesized task tests with the repository's own tests) applies
/// nothing and logs so.
pub async fn apply_test_patch(sandbox: &dyn Sandbox, test_patch: &str, timeout: Duration) -> Result<String, ApplyError> {
    let mut log = String::new();
    if test_patch.trim().is_empty() {
        log.push_str(">>>>> No test patch: the repository's own tests\n");
        return Ok(log);
    }
    let (modified, new) = modified_and_new_files(test_patch);
    let mut paths = modified;
    paths.extend(new);
    if !paths.is_empty() {
        let script = reset_script(&paths);
        let out = run(sandbox, script.clone(), timeout).await?;
        log_attempt(&mut log, &script, &out);
        if out.exit_code != Some(0) {
            return Err(ApplyError::Reset { exit_code: out.exit_code, output: out.output });
        }
    }
    sandbox.write_file(TEST_PATCH_PATH, test_patch.as_bytes()).await?;
    let command = format!("git apply --verbose {}", quote(TEST_PATCH_PATH));
    let out = run(sandbox, command.clone(), timeout).await?;
    log_attempt(&mut log, &command, &out);
    if out.exit_code != Some(0) {
        return Err(ApplyError::TestPatch { exit_code: out.exit_code, output: out.output });
    }
    Ok(log)
}
