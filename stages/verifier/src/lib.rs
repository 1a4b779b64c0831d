//! swegym-verifier: an outcome verifier for software-engineering agents (SWE-Gym paper §4):
//! a model that reads a whole agent trajectory and answers whether it resolved its task,
//! used to pick the best of k rollouts (Best@k).
//!
//! - [`prompt`]: the judge prompt — the trajectory flattened into an interaction log inside
//!   a fixed judge chat, answered `<judgement>YES</judgement>` / `<judgement>NO</judgement>`.
//! - [`judge`]: that prompt as token ids for one model, and which next-token ids mean YES
//!   and NO.
//! - [`data`]: graded rollouts → label-balanced, on/off-policy-mixed SFT records (trained
//!   by the same LoRA trainer as the policy), every rollout left out counted by reason.
//! - [`score`]: p(YES) from the next-token logits, batched, identical to one-by-one.
//! - [`scores`]: the scores Parquet.
//! - [`metrics`]: Pass@k / Best@k / Random@k with the paper's subset method and bootstrap
//!   error bars; AUC and accuracy.
//!
//! Architecture invariant: knows rollouts, SFT records and a loaded model; it neither
//! trains (the caller hands the records to `swegym-train`) nor reads files other than the
//! ones it is handed, nor environment variables.

pub mod data;
pub mod judge;
pub mod metrics;
pub mod prompt;
pub mod score;
pub mod scores;

use std::path::PathBuf;

pub use data::{build as build_data, Candidate, DataConfig, DataError, DataOutcome, DataSummary, Decision, DropReason, Origin};
pub use judge::{AnswerTokens, Judge};
pub use metrics::{scaling, EvalFile, KPoint, Rate, ScalingOptions, ScalingReport, Scored};
pub use score::{score_prompts, Score, ScoreOptions};
pub use scores::{read_scores, write_scores, ScoreRow};

/// A verifier failure; every message names the file or the setting and what to do.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error("{path}: {problem}")]
    Input { path: PathBuf, problem: String },
    #[error("the tokenizer cannot carry the judge prompt: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Schema(#[from] swegym_schema::SchemaError),
}
