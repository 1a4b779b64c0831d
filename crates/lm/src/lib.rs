//! swegym-lm: the policy model runtime over tch (libtorch) — GGUF and safetensors
//! checkpoints, the tokenizer, and the Llama-family causal LM (Llama, Qwen2).
//!
//! Entry points: [`CausalLm::from_gguf`] / [`CausalLm::from_hf_dir`] and
//! [`Tokenizer::from_gguf`] / [`Tokenizer::from_file`] (or [`load_model`] for either),
//! [`Generator`] / [`Engine`] for batched generation, [`chat`] for chat templates. Call [`init_cpu_runtime`] at
//! process start-up, before any other thread exists and before the first libtorch op.

mod kernels;
pub mod chat;
pub mod config;
mod dequant;
pub mod export;
pub mod generate;
pub mod gguf;
pub mod lora;
pub mod model;
pub mod tokenizer;
pub mod weights;

use std::path::PathBuf;

pub use config::{Architecture, HfConfig, ModelConfig};
pub use generate::{
    Completion, Engine, EngineOptions, FinishReason, GenerateError, GenerationRequest, GenerationStats, Generator,
    SamplingParams,
};
pub use gguf::{GgmlType, GgufError, GgufFile, MetadataValue, TensorInfo};
pub use lora::{AdapterConfig, LoraConfig, LoraTarget};
pub use model::{auto_kv_dtype, CausalLm, DecodeWeights, Dtype, KvCache, KvDtype, RowKv, TrainStep};
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
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{path}: neither a .gguf file nor a folder with config.json")]
    UnknownFormat { path: PathBuf },
    #[error("device {requested}: {problem}")]
    Device { requested: String, problem: String },
    #[error("{path}: bad LoRA adapter: {message}")]
    Adapter { path: PathBuf, message: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{path}: tensor {name} is not all finite numbers ({count} NaN or infinite): the file is corrupt or was saved from a diverged run")]
    NonFinite { path: PathBuf, name: String, count: i64 },
}

/// Loads a model and its tokenizer from a GGUF file or an HF folder (`config.json`,
/// `*.safetensors`, `tokenizer.json`).
pub fn load_model(path: &std::path::Path, dtype: Dtype, device: tch::Device) -> Result<(CausalLm, Tokenizer), ModelError> {
    if path.is_dir() && path.join("config.json").exists() {
        let tokenizer = Tokenizer::from_file(path.join("tokenizer.json"))?;
        Ok((CausalLm::from_hf_dir(path, dtype, device)?, tokenizer))
    } else if path.is_file() {
        let file = GgufFile::open(path)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        Ok((CausalLm::from_gguf(&file, dtype, device)?, tokenizer))
    } else {
        Err(ModelError::UnknownFormat { path: path.to_path_buf() })
    }
}

/// Where the model runs: `auto` (the first CUDA device when libtorch has one, else the
/// CPU), `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device {other:?} (expected auto, cpu, cuda or cuda:N)")),
        }
    }
}

impl DeviceChoice {
    /// The libtorch device; asking for a CUDA device libtorch does not have is an error.
    pub fn resolve(self) -> Result<tch::Device, ModelError> {
        match self {
            Self::Auto => Ok(tch::Device::cuda_if_available()),
            Self::Cpu => Ok(tch::Device::Cpu),
            Self::Cuda(i) => {
                let n = tch::Cuda::device_count() as usize;
                if i < n {
                    Ok(tch::Device::Cuda(i))
                } else {
                    Err(ModelError::Device {
                        requested: format!("cuda:{i}"),
                        problem: format!("libtorch sees {n} CUDA devices (a CPU-only libtorch sees none)"),
                    })
                }
            }
        }
    }
}

/// Whether this CPU multiplies bf16 natively (the `avx512_bf16` or `amx_bf16` flag of
/// `/proc/cpuinfo`): there a bf16 product runs at about twice f32's rate (on a 2-vCPU AMD
/// EPYC, SmolLM2's projections for 93 positions: 360 against 150 GFLOP/s); elsewhere
/// libtorch converts bf16 to f32 and is slower than f32. False where it cannot tell.
pub fn cpu_multiplies_bf16() -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return false };
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    flags.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16")
}

/// The oneDNN ISA cap this crate needs on CPUs that report AMX but fault on it (see
/// `scripts/baselines/README.md`): without it the first bf16 matmul raises SIGILL.
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

/// The chat template of the model at `path`: the Jinja template its files carry (GGUF
/// `tokenizer.chat_template`; an HF folder's `chat_template.jinja` or the `chat_template`
/// of `tokenizer_config.json`), else what the tokenizer's special tokens imply.
pub fn chat_template_for(path: &std::path::Path, tokenizer: &Tokenizer) -> Option<chat::ChatTemplate> {
    let source = if path.is_dir() {
        std::fs::read_to_string(path.join("chat_template.jinja")).ok().or_else(|| {
            let text = std::fs::read_to_string(path.join("tokenizer_config.json")).ok()?;
            let json: serde_json::Value = serde_json::from_str(&text).ok()?;
            json.get("chat_template")?.as_str().map(str::to_string)
        })
    } else {
        GgufFile::open(path).ok().and_then(|f| f.get("tokenizer.chat_template")?.as_str().map(str::to_string))
    };
    source.as_deref().and_then(chat::ChatTemplate::from_jinja).or_else(|| chat::ChatTemplate::from_tokenizer(tokenizer))
}
