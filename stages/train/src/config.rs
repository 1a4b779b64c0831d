//! The trainer's settings: a raw serde mirror of `[train]` in a TOML file (unknown keys
//! rejected by name, every field optional) validated into [`TrainConfig`], which has no
//! `Option`s left but the ones that mean "none".

use std::path::Path;

use serde::{Deserialize, Serialize};
use swegym_lm::lora::LoraConfig;
use swegym_lm::Dtype;

use crate::TrainError;

/// What to do with an example longer than `max_seq_len` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlong {
    /// Drop it (counted as `too_long`): the SWE-Gym recipe's rule (examples at or over the
    /// length limit are dropped).
    Drop,
    /// Keep its first `max_seq_len` tokens (dropped as `no_assistant_tokens_after_truncation`
    /// when no assistant token is left).
    Truncate,
}

/// The training dtype: a fixed one, or `auto` — bf16 where products in it run natively (a
/// CUDA device, or a CPU whose flags include `avx512_bf16` or `amx_bf16`), f32 elsewhere,
/// where libtorch emulates bf16 and trains at about half f32's rate (measured on a 2-vCPU
/// Ice Lake: 80 tok/s in bf16 in a run whose config assumed a bf16 CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainDtype {
    Auto,
    Fixed(Dtype),
}

impl TrainDtype {
    /// The dtype training uses on `device`.
    pub fn resolve(self, device: tch::Device) -> Dtype {
        match self {
            TrainDtype::Fixed(d) => d,
            TrainDtype::Auto if device.is_cuda() || swegym_lm::cpu_multiplies_bf16() => Dtype::Bf16,
            TrainDtype::Auto => Dtype::F32,
        }
    }
}

impl std::fmt::Display for TrainDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainDtype::Auto => f.write_str("auto"),
            TrainDtype::Fixed(d) => d.fmt(f),
        }
    }
}

impl std::str::FromStr for TrainDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TrainDtype::Auto),
            other => other.parse::<Dtype>().map(TrainDtype::Fixed).map_err(|e| e.replace("(expected f32, bf16 or f16)", "(expected auto, f32, bf16 or f16)")),
        }
    }
}

/// The raw `[train]` table (every key optional; defaults in [`TrainConfig::default`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrainConfig {
    pub lora_r: Option<i64>,
    pub lora_alpha: Option<f64>,
    pub lora_dropout: Option<f64>,
    pub target_modules: Option<Vec<String>>,
    pub learning_rate: Option<f64>,
    pub weight_decay: Option<f64>,
    pub warmup_steps: Option<usize>,
    pub epochs: Option<f64>,
    pub max_steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub grad_accum: Option<usize>,
    pub max_grad_norm: Option<f64>,
    pub max_seq_len: Option<usize>,
    pub overlong: Option<Overlong>,
    pub dtype: Option<String>,
    pub activation_checkpointing: Option<bool>,
    pub checkpoint_every: Option<usize>,
    pub seed: Option<u64>,
    pub threads: Option<i32>,
    pub base_model_name: Option<String>,
}

/// Resolved trainer settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainConfig {
    pub lora: LoraConfig,
    /// Peak learning rate (after warm-up, before cosine decay to 0).
    pub learning_rate: f64,
    /// AdamW decoupled weight decay (applied to the LoRA matrices).
    pub weight_decay: f64,
    /// Optimizer steps of linear warm-up from 0.
    pub warmup_steps: usize,
    /// Passes over the data (fractional allowed); `max_steps` caps the optimizer steps.
    pub epochs: f64,
    pub max_steps: Option<usize>,
    /// Examples per micro-batch (padded to the longest in it).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (0 = no clipping).
    pub max_grad_norm: f64,
    pub max_seq_len: usize,
    pub overlong: Overlong,
    #[serde(serialize_with = "crate::config::serialize_dtype")]
    pub dtype: TrainDtype,
    /// Recompute each decoder layer in the backward pass instead of keeping its
    /// activations (less memory for long contexts, ~30% more compute).
    pub activation_checkpointing: bool,
    /// Write a resumable checkpoint every N optimizer steps (0 = only at the end).
    pub checkpoint_every: usize,
    pub seed: u64,
    /// libtorch intra-op threads (None = libtorch's default).
    pub threads: Option<i32>,
    /// The base model's name as PEFT loads it, written as the adapter's
    /// `base_model_name_or_path` (e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`); without it, the
    /// model file's path (a GGUF path that `AutoPeftModel` cannot load). Left out of the JSON
    /// when not set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_model_name: Option<String>,
}

pub(crate) fn serialize_dtype<S: serde::Serializer>(d: &TrainDtype, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.to_string())
}

impl Default for TrainConfig {
    /// The SWE-Gym policy recipe's optimiser (lr 1e-4, AdamW wd 0.01, 5 warm-up steps,
    /// cosine) with LoRA r=16, α=32 on all seven projections, global batch 8.
    fn default() -> Self {
        TrainConfig {
            lora: LoraConfig::default(),
            learning_rate: 1e-4,
            weight_decay: 0.01,
            warmup_steps: 5,
            epochs: 3.0,
            max_steps: None,
            batch_size: 1,
            grad_accum: 8,
            max_grad_norm: 1.0,
            max_seq_len: 8192,
            overlong: Overlong::Drop,
            dtype: TrainDtype::Fixed(Dtype::F32),
            activation_checkpointing: false,
            checkpoint_every: 50,
            seed: 0,
            threads: None,
            base_model_name: None,
        }
    }
}

impl RawTrainConfig {
    /// Validates into a [`TrainConfig`]; `what` names the source in errors (a file, or
    /// `[train]` of a run config).
    pub fn resolve(self, what: &str) -> Result<TrainConfig, TrainError> {
        let d = TrainConfig::default();
        let bad = |key: &str, problem: String| TrainError::Config { what: what.to_string(), key: key.to_string(), problem };
        let mut lora = d.lora.clone();
        if let Some(r) = self.lora_r {
            if r < 1 {
                return Err(bad("lora_r", format!("must be at least 1, got {r}")));
            }
            lora.r = r;
        }
        if let Some(a) = self.lora_alpha {
            lora.alpha = a;
        }
        if let Some(p) = self.lora_dropout {
            if !(0.0..1.0).contains(&p) {
                return Err(bad("lora_dropout", format!("must be in [0, 1), got {p}")));
            }
            lora.dropout = p;
        }
        if let Some(targets) = self.target_modules {
            lora.target_modules = LoraConfig::parse_targets(&targets).map_err(|e| bad("target_modules", e))?;
        }
        let dtype = match self.dtype {
            Some(s) => s.parse::<TrainDtype>().map_err(|e| bad("dtype", e))?,
            None => d.dtype,
        };
        let positive = |key: &str, v: Option<usize>, default: usize| -> Result<usize, TrainError> {
            match v {
                Some(0) => Err(bad(key, "must be at least 1".into())),
                Some(v) => Ok(v),
                None => Ok(default),
            }
        };
        let epochs = self.epochs.unwrap_or(d.epochs);
        if epochs <= 0.0 {
            return Err(bad("epochs", format!("must be positive, got {epochs}")));
        }
        let learning_rate = self.learning_rate.unwrap_or(d.learning_rate);
        if learning_rate <= 0.0 {
            return Err(bad("learning_rate", format!("must be positive, got {learning_rate}")));
        }
        Ok(TrainConfig {
            lora,
            learning_rate,
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            warmup_steps: self.warmup_steps.unwrap_or(d.warmup_steps),
            epochs,
            max_steps: match self.max_steps {
                Some(0) => return Err(bad("max_steps", "must be at least 1 (leave it out for no cap)".into())),
                other => other,
            },
            batch_size: positive("batch_size", self.batch_size, d.batch_size)?,
            grad_accum: positive("grad_accum", self.grad_accum, d.grad_accum)?,
            max_grad_norm: self.max_grad_norm.unwrap_or(d.max_grad_norm),
            max_seq_len: positive("max_seq_len", self.max_seq_len, d.max_seq_len)?,
            overlong: self.overlong.unwrap_or(d.overlong),
            dtype,
            activation_checkpointing: self.activation_checkpointing.unwrap_or(d.activation_checkpointing),
            checkpoint_every: self.checkpoint_every.unwrap_or(d.checkpoint_every),
            seed: self.seed.unwrap_or(d.seed),
            threads: self.threads,
            base_model_name: match self.base_model_name.map(|n| n.trim().to_string()) {
                Some(n) if n.is_empty() => return Err(bad("base_model_name", "is empty (leave it out to record the model file's path)".into())),
                other => other,
            },
        })
    }
}

impl RawTrainConfig {
    /// These keys, with every key `over` sets replaced by its value (a run's
    /// `[warm_start.train]` over its `[train]`).
    pub fn overlaid_by(self, over: RawTrainConfig) -> RawTrainConfig {
        RawTrainConfig {
            lora_r: over.lora_r.or(self.lora_r),
            lora_alpha: over.lora_alpha.or(self.lora_alpha),
            lora_dropout: over.lora_dropout.or(self.lora_dropout),
            target_modules: over.target_modules.or(self.target_modules),
            learning_rate: over.learning_rate.or(self.learning_rate),
            weight_decay: over.weight_decay.or(self.weight_decay),
            warmup_steps: over.warmup_steps.or(self.warmup_steps),
            epochs: over.epochs.or(self.epochs),
            max_steps: over.max_steps.or(self.max_steps),
            batch_size: over.batch_size.or(self.batch_size),
            grad_accum: over.grad_accum.or(self.grad_accum),
            max_grad_norm: over.max_grad_norm.or(self.max_grad_norm),
            max_seq_len: over.max_seq_len.or(self.max_seq_len),
            overlong: over.overlong.or(self.overlong),
            dtype: over.dtype.or(self.dtype),
            activation_checkpointing: over.activation_checkpointing.or(self.activation_checkpointing),
            checkpoint_every: over.checkpoint_every.or(self.checkpoint_every),
            seed: over.seed.or(self.seed),
            threads: over.threads.or(self.threads),
            base_model_name: over.base_model_name.or(self.base_model_name),
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file holding either a `[train]` table or the keys at top level.
    pub fn from_toml_file(path: &Path) -> Result<TrainConfig, TrainError> {
        let what = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Config { what: what.clone(), key: String::new(), problem: format!("cannot read: {e}") })?;
        let value: toml::Table = toml::from_str(&text)
            .map_err(|e| TrainError::Config { what: what.clone(), key: String::new(), problem: e.to_string() })?;
        let table = match value.get("train") {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => value,
        };
        let raw: RawTrainConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| TrainError::Config { what: what.clone(), key: String::new(), problem: e.to_string() })?;
        raw.resolve(&what)
    }
}
