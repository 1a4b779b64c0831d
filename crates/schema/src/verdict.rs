//! The grading outcome of one patch on one task, SWE-bench style.
//!
//! Infrastructure failures (the environment broke, the tests timed out) are kept apart
//! from model failures (empty patch, patch did not apply, tests failed); all of them
//! count as unresolved.

use serde::{Deserialize, Serialize};

/// Exactly one status per graded patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalStatus {
    /// Every FAIL_TO_PASS and PASS_TO_PASS test passes.
    Resolved,
    /// The patch applied and the tests ran, but not all required tests pass.
    Unresolved,
    /// The patch, test files excluded, changes nothing.
    EmptyPatch,
    /// No apply method (git apply, --reject, patch --fuzz) could apply it.
    PatchApplyFailed,
    /// The test command ran past its timeout and was killed.
    TestTimeout,
    /// The harness or environment failed (sandbox, test_patch, missing env): not the model's fault.
    EnvError,
}

impl EvalStatus {
    pub const ALL: [EvalStatus; 6] = [
        EvalStatus::Resolved,
        EvalStatus::Unresolved,
        EvalStatus::EmptyPatch,
        EvalStatus::PatchApplyFailed,
        EvalStatus::TestTimeout,
        EvalStatus::EnvError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EvalStatus::Resolved => "resolved",
            EvalStatus::Unresolved => "unresolved",
            EvalStatus::EmptyPatch => "empty_patch",
            EvalStatus::PatchApplyFailed => "patch_apply_failed",
            EvalStatus::TestTimeout => "test_timeout",
            EvalStatus::EnvError => "env_error",
        }
    }

    /// True when the failure is the infrastructure's, not the patch's.
    pub fn is_infra_failure(self) -> bool {
        matches!(self, EvalStatus::EnvError)
    }
}

impl std::fmt::Display for EvalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub instance_id: String,
    pub model_name_or_path: String,
    pub status: EvalStatus,
    pub resolved: bool,
    pub empty_patch: bool,
    /// Which method applied the patch (`git apply`, `git apply --reject`, `patch --fuzz=5`), if any.
    pub apply_method: Option<String>,
    pub fail_to_pass_passed: u32,
    pub fail_to_pass_total: u32,
    pub pass_to_pass_passed: u32,
    pub pass_to_pass_total: u32,
    /// Required tests that did not pass, as `id: STATUS` (missing tests say MISSING).
    pub failed_tests: Vec<String>,
    /// Exit code of the test command; `None` when it did not run or was killed.
    pub test_exit_code: Option<i32>,
    /// Seconds the test command itself ran.
    pub test_seconds: f64,
    /// Seconds for the whole evaluation (sandbox, apply, tests, teardown).
    pub total_seconds: f64,
    /// Why it is not resolved, in words, when there is more to say than the status.
    pub error: Option<String>,
}
