//! Model configuration: a serde mirror of HF `config.json` (raw) and GGUF metadata, both
//! resolved into [`ModelConfig`], which has no optional fields.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::gguf::GgufFile;
use crate::ModelError;

/// The model families this runtime implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, SmolLM2: no attention biases.
    Llama,
    /// Qwen2 / Qwen2.5(-Coder): Llama plus q/k/v biases.
    Qwen2,
}

/// The resolved configuration of a Llama-family causal LM.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub attention_bias: bool,
}

/// The fields of HF `config.json` this runtime reads (other fields are ignored: the
/// file is transformers', not ours).
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    pub model_type: Option<String>,
    pub architectures: Option<Vec<String>>,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: Option<i64>,
    pub head_dim: Option<i64>,
    pub rms_norm_eps: f64,
    /// transformers 4.x
    pub rope_theta: Option<f64>,
    /// transformers 4.x
    pub rope_scaling: Option<Value>,
    /// transformers 5.x: `{"rope_theta": .., "rope_type": ..}`
    pub rope_parameters: Option<Value>,
    pub max_position_embeddings: Option<i64>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
}

impl ModelConfig {
    /// Reads and resolves an HF `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::Config { path: path.into(), message: e.to_string() })?;
        let raw: HfConfig = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config { path: path.into(), message: e.to_string() })?;
        Self::from_hf(raw, path)
    }

    /// Resolves a parsed `config.json`; `path` is for error messages.
    pub fn from_hf(raw: HfConfig, path: &Path) -> Result<Self, ModelError> {
        let bad = |message: String| ModelError::Config { path: path.to_path_buf(), message };
        let model_type = raw.model_type.clone().unwrap_or_default();
        let architecture = match model_type.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                let archs = raw.architectures.clone().unwrap_or_default().join(",");
                return Err(bad(format!("model_type {other:?} ({archs}) is not supported (supported: llama, qwen2)")));
            }
        };
        let rope = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
        let rope_type = rope
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if rope_type != "default" {
            return Err(bad(format!("RoPE scaling {rope_type:?} is not supported (supported: default)")));
        }
        let rope_theta = raw
            .rope_theta
            .or_else(|| raw.rope_parameters.as_ref()?.get("rope_theta")?.as_f64())
            .unwrap_or(10_000.0);
        let config = Self {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim: raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            attention_bias: raw.attention_bias.unwrap_or(architecture == Architecture::Qwen2),
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }

    /// Reads the `{arch}.*` metadata of a GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let arch = file.get_str("general.architecture")?;
        let architecture = match arch {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(ModelError::Config {
                    path: file.path().into(),
                    message: format!("architecture {other:?} is not supported (supported: llama, qwen2)"),
                })
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let int = |k: &str| -> Result<i64, ModelError> { Ok(file.get_u64(&key(k))? as i64) };
        let opt_int = |k: &str| -> Result<Option<i64>, ModelError> {
            match file.get(&key(k)) {
                None => Ok(None),
                Some(_) => Ok(Some(int(k)?)),
            }
        };
        let hidden_size = int("embedding_length")?;
        let num_attention_heads = int("attention.head_count")?;
        let vocab_size = match opt_int("vocab_size")? {
            Some(v) => v,
            None => file.get_str_array("tokenizer.ggml.tokens")?.len() as i64,
        };
        let config = Self {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads,
            num_key_value_heads: opt_int("attention.head_count_kv")?.unwrap_or(num_attention_heads),
            head_dim: opt_int("attention.key_length")?.unwrap_or(hidden_size / num_attention_heads.max(1)),
            rms_norm_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: match file.get(&key("rope.freq_base")) {
                Some(_) => file.get_f64(&key("rope.freq_base"))?,
                None => 10_000.0,
            },
            max_position_embeddings: opt_int("context_length")?.unwrap_or(4096),
            tie_word_embeddings: file.tensor_info("output.weight").is_none(),
            attention_bias: file.tensor_info("blk.0.attn_q.bias").is_some(),
        };
        if file.get(&key("rope.scaling.type")).is_some() || file.tensor_info("rope_freqs.weight").is_some() {
            return Err(ModelError::Config {
                path: file.path().into(),
                message: "RoPE scaling is not supported (supported: plain RoPE)".into(),
            });
        }
        config
            .validate()
            .map_err(|message| ModelError::Config { path: file.path().into(), message })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        if let Some((name, v)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(format!("{name} = {v} must be positive"));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        Ok(())
    }
}

/// `dir/config.json`, for error messages and loading.
pub(crate) fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}
