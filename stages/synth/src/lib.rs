//! Task synthesis and mining: turning clean repositories and their histories into
//! SWE-style task candidates, and choosing which candidates become tasks.
//!
//! - [`mutate`]: SWE-smith-style bugs. Python is parsed with tree-sitter; each
//!   [`mutate::MutationKind`] finds its sites inside function bodies and rewrites one exact
//!   byte range, and a mutant whose re-parse has an ERROR node is never produced.
//! - [`plan`]: a deterministic order (for a seed) over every candidate mutation, balanced
//!   across kinds, capped per function.
//! - [`diff`]: the gold patch (mutant → clean) as a `git apply`-able unified diff.
//! - [`select`]: from test statuses with and without the bug, FAIL_TO_PASS / PASS_TO_PASS
//!   and the keep/drop decision (with a named reason).
//! - [`judge`]: that decision on a candidate's test runs as the harness reported them
//!   (a timeout, an environment error, an untrusted log are drop reasons of their own).
//! - [`sources`]: which Python files are the library's own code (where mutations go).
//! - [`statement`]: a bug-report problem statement from the failing behaviour, quoting
//!   the library frames of the first failure's traceback when the tests ran with them.
//! - [`split`]: the train / held-out test split, by function, so no function is in both.
//! - [`mine`]: commits that change both source and tests → candidate instances.
//! - [`tier`]: difficulty as data (lines changed, whether the statement's traceback shows
//!   the bug's line, …) and the easy / medium / hard tier; the manifest row.
//! - [`yields`]: kept / tried per mutation kind and drops by reason.
//!
//! Architecture invariant: this stage runs no tests and knows no sandbox. It turns source
//! text and git history into candidates and test outcomes into decisions; the pipeline
//! runs the candidates through the evaluate stage's harness in between.

pub mod diff;
pub mod judge;
pub mod mine;
pub mod mutate;
pub mod plan;
pub mod select;
pub mod sources;
pub mod split;
pub mod statement;
pub mod tier;
pub mod yields;

use std::path::PathBuf;

pub use mutate::{Edit, Mutation, MutationKind, PythonFile};
pub use select::{DropReason, SelectRules, Selection};

/// Errors of the synth stage (bad inputs; one bad candidate is a drop reason, not an error).
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tree-sitter: {0}")]
    Parser(String),
    #[error("git in {repo}: `{command}` failed: {message}")]
    Git { repo: PathBuf, command: String, message: String },
    #[error("{0}")]
    BadInput(String),
}

impl SynthError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        SynthError::Io { what: what.into(), source }
    }
}
