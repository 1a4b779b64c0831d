//! swegym-train: LoRA supervised fine-tuning of the policy over tch (libtorch).
//!
//! [`train`] takes SFT records (chat messages; `swegym_schema::sft`), renders them with the
//! model's chat template, learns only from assistant tokens, and writes a PEFT-layout
//! adapter (`adapter_config.json` + `adapter_model.safetensors`) that PEFT, vLLM and our
//! own runtime (`swegym_lm::lora`) load. Checkpoints in `<out>/checkpoint/` make a killed
//! run resume to the same final adapter.

pub mod config;
pub mod data;
mod optim;
mod trainer;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

pub use config::{Overlong, RawTrainConfig, TrainConfig};
pub use data::{tokenize_records, Example, TokenizeReport};
pub use trainer::{train, StepOutcome, TrainRequest, Trainer};

/// One optimizer step, as reported to the caller's progress callback.
#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    /// 1-based optimizer step.
    pub step: usize,
    pub total_steps: usize,
    /// Mean loss per assistant token over the step's micro-batches.
    pub loss: f64,
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (all positions, padding excluded) processed in this step.
    pub tokens: u64,
    /// Assistant (loss) tokens in this step.
    pub loss_tokens: u64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

/// What a training run did (also written to `<out>/train_summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub examples_total: usize,
    pub examples_used: usize,
    /// Examples not trained on, by reason (`too_long`, `no_assistant_turn`, ...).
    pub examples_dropped: BTreeMap<String, usize>,
    /// Examples truncated to `max_seq_len` (with `overlong = "truncate"`).
    pub examples_truncated: usize,
    pub steps: usize,
    /// Tokens processed over the whole run (padding excluded).
    pub tokens: u64,
    pub loss_tokens: u64,
    pub loss_first: f64,
    pub loss_last: f64,
    /// Per-step losses, in order.
    pub losses: Vec<f64>,
    pub tokens_per_s: f64,
    pub wall_s: f64,
    /// Steps done before this process started (a resumed run).
    pub resumed_from_step: usize,
    pub adapter_dir: PathBuf,
    pub config: TrainConfig,
}

/// A training failure; every message names the file or setting and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{what}: {}{problem}", if key.is_empty() { String::new() } else { format!("key `{key}`: ") })]
    Config { what: String, key: String, problem: String },
    #[error("{path}: {problem}")]
    Data { path: PathBuf, problem: String },
    #[error(transparent)]
    Model(#[from] swegym_lm::ModelError),
    #[error("{path}: {problem}")]
    Checkpoint { path: PathBuf, problem: String },
    #[error("{path}: cannot write: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("step {step}: the loss is {loss}, not a finite number: training diverged (lower the learning rate) or the weights are broken; no adapter was written")]
    NonFiniteLoss { step: usize, loss: f64 },
}
