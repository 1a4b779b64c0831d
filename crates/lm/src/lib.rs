//! swegym-lm: the policy model runtime over tch (libtorch) — GGUF and safetensors
//! checkpoints, the tokenizer, and the Llama-family causal LM (Llama, Qwen2).
//!
//! Entry points: [`CausalLm::from_gguf`] / [`CausalLm::from_hf_dir`] and
//! [`Tokenizer::from_gguf`] / [`Tokenizer::from_file`]. Call [`init_cpu_runtime`] at
//! process start-up, before any other thread exists and before the first libtorch op.

pub mod config;
mod dequant;
pub mod gguf;
pub mod model;
pub mod tokenizer;
pub mod weights;

use std::path::PathBuf;

pub use config::{Architecture, HfConfig, ModelConfig};
pub use gguf::{GgmlType, GgufError, GgufFile, MetadataValue, TensorInfo};
pub use model::{CausalLm, Dtype, KvCache};
pub use tokenizer::{PreTokenizer, Tokenizer, TokenizerError};
pub use weights::Weights;

/// A problem loading a model; every message names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: bad model config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: cannot read safetensors: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: missing tensor {name}")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor {name} has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, found: Vec<i64>, expected: Vec<i64> },
    #[error("{path}: tensors the config does not use: {names}")]
    UnexpectedTensors { path: PathBuf, names: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The oneDNN ISA cap this crate needs on CPUs that report AMX but fault on it (see
/// `shared/baselines/README.md`): without it the first bf16 matmul raises SIGILL.
pub const ONEDNN_ISA_CAP: (&str, &str) = ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16");

/// Sets [`ONEDNN_ISA_CAP`] unless the environment already sets it. oneDNN reads it once,
/// at its first use, so call this first thing in `main`, while the process has one thread.
pub fn init_cpu_runtime() {
    let (key, value) = ONEDNN_ISA_CAP;
    if std::env::var_os(key).is_none() {
        // Edition 2021: set_var is safe to call; the single-thread precondition is documented above.
        std::env::set_var(key, value);
    }
}
