//! Writes a checkpoint as an HF folder — `config.json`, `model.safetensors` (f32) and
//! `tokenizer.json` — e.g. a GGUF model dequantized, so transformers and our own
//! safetensors loader read the same weights.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use tch::Kind;

use crate::config::{Architecture, ModelConfig};
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;
use crate::ModelError;

/// The HF `config.json` of `config` (transformers 4.x/5.x both read it).
pub fn hf_config_json(config: &ModelConfig, tokenizer: Option<&Tokenizer>) -> serde_json::Value {
    let (model_type, class) = match config.architecture {
        Architecture::Llama => ("llama", "LlamaForCausalLM"),
        Architecture::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
    };
    json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.attention_bias,
        "mlp_bias": false,
        "bos_token_id": tokenizer.and_then(Tokenizer::bos_id),
        "eos_token_id": tokenizer.and_then(Tokenizer::eos_id),
        "torch_dtype": "float32",
    })
}

/// Writes `weights` (as f32) with `config` and `tokenizer` into `dir` (created).
pub fn save_hf_dir(
    config: &ModelConfig,
    weights: &Weights,
    tokenizer: Option<&Tokenizer>,
    dir: &Path,
) -> Result<(), ModelError> {
    let io = |path: &Path, e: &dyn std::fmt::Display| ModelError::Config { path: path.into(), message: format!("cannot write: {e}") };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
    let config_file = dir.join("config.json");
    let text = serde_json::to_string_pretty(&hf_config_json(config, tokenizer)).expect("json");
    std::fs::write(&config_file, text).map_err(|e| io(&config_file, &e))?;

    let mut data: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, t) in weights.iter() {
        let t = t.to_kind(Kind::Float).contiguous();
        let values: Vec<f32> = Vec::try_from(t.flatten(0, -1))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.insert(name.to_string(), (t.size().iter().map(|&d| d as usize).collect(), bytes));
    }
    let st_file = dir.join("model.safetensors");
    let views = data
        .iter()
        .map(|(name, (shape, bytes))| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io(&st_file, &e))?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), &st_file).map_err(|e| io(&st_file, &e))?;

    if let Some(tok) = tokenizer {
        let tok_file = dir.join("tokenizer.json");
        tok.inner().save(&tok_file, false).map_err(|e| io(&tok_file, &e))?;
    }
    Ok(())
}

/// A GGUF checkpoint (config, dequantized weights, tokenizer) as an HF folder in `dir`.
pub fn gguf_to_hf_dir(file: &GgufFile, dir: &Path) -> Result<(), ModelError> {
    let config = ModelConfig::from_gguf(file)?;
    let weights = Weights::from_gguf(file, &config)?;
    let tokenizer = Tokenizer::from_gguf(file)
        .map_err(|e| ModelError::Config { path: file.path().into(), message: e.to_string() })?;
    save_hf_dir(&config, &weights, Some(&tokenizer), dir)
}
