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

use serde::{Deserialize, Serialize};

pub use config::{Overlong, RawTrainConfig, TrainConfig, TrainDtype};
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

/// The numbers of a [`TrainSummary`] that outlive the run (a run's train manifest and
/// metrics): read back from `train_summary.json` or a manifest, other fields ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainNumbers {
    pub examples_total: u64,
    pub examples_used: u64,
    pub examples_dropped: BTreeMap<String, u64>,
    pub steps: u64,
    pub tokens: u64,
    /// None when no step ran (serde_json writes a NaN as null).
    pub loss_first: Option<f64>,
    pub loss_last: Option<f64>,
    pub tokens_per_s: f64,
}

impl From<&TrainSummary> for TrainNumbers {
    fn from(s: &TrainSummary) -> TrainNumbers {
        let finite = |x: f64| x.is_finite().then_some(x);
        TrainNumbers {
            examples_total: s.examples_total as u64,
            examples_used: s.examples_used as u64,
            examples_dropped: s.examples_dropped.iter().map(|(k, v)| (k.clone(), *v as u64)).collect(),
            steps: s.steps as u64,
            tokens: s.tokens,
            loss_first: finite(s.loss_first),
            loss_last: finite(s.loss_last),
            tokens_per_s: s.tokens_per_s,
        }
    }
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
