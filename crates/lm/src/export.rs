//! Writes a checkpoint as an HF folder — `config.json`, `model.safetensors` (f32) and
//! `tokenizer.json` — e.g. a GGUF model dequantized, so transformers and our own
//! safetensors loader read the same weights.

use std::path::Path;

use serde_json::json;
use tch::Kind;

use crate::config::{Architecture, ModelConfig};
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use crate::weights::{save_safetensors, Weights};
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

    let mut tensors: Vec<(String, tch::Tensor)> = weights.iter().map(|(n, t)| (n.to_string(), t.to_kind(Kind::Float))).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    save_safetensors(&dir.join("model.safetensors"), &tensors)?;

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

/// Writes a tiny random Llama (`layers` layers of width `hidden`, 4 heads / 2 KV heads,
/// tied embeddings, N(0, 0.02) weights from `seed`) with `tokenizer` and the Jinja chat
/// `template` as an HF folder: a model of the real architecture for fast tests.
pub fn save_tiny_llama(
    tokenizer: &Tokenizer,
    template: Option<&str>,
    layers: i64,
    hidden: i64,
    seed: u64,
    dir: &Path,
) -> Result<(), ModelError> {
    let (heads, kv_heads) = (4, 2);
    let config = ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: tokenizer.vocab_size() as i64,
        hidden_size: hidden,
        intermediate_size: 2 * hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim: hidden / heads,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
    };
    let _guard = tch::no_grad_guard();
    tch::manual_seed(seed as i64);
    let mut tensors = std::collections::HashMap::new();
    let randn = |shape: &[i64]| tch::Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)) * 0.02;
    let (h, d) = (hidden, hidden / heads);
    tensors.insert("model.embed_tokens.weight".to_string(), randn(&[config.vocab_size, h]));
    tensors.insert("model.norm.weight".to_string(), tch::Tensor::ones([h], (Kind::Float, tch::Device::Cpu)));
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("self_attn.q_proj", [heads * d, h]),
            ("self_attn.k_proj", [kv_heads * d, h]),
            ("self_attn.v_proj", [kv_heads * d, h]),
            ("self_attn.o_proj", [h, heads * d]),
            ("mlp.gate_proj", [2 * h, h]),
            ("mlp.up_proj", [2 * h, h]),
            ("mlp.down_proj", [h, 2 * h]),
        ] {
            tensors.insert(format!("{p}.{name}.weight"), randn(&shape));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.insert(format!("{p}.{norm}.weight"), tch::Tensor::ones([h], (Kind::Float, tch::Device::Cpu)));
        }
    }
    let weights = Weights::from_map(dir, tensors);
    save_hf_dir(&config, &weights, Some(tokenizer), dir)?;
    if let Some(template) = template {
        let io = |path: &Path, e: &dyn std::fmt::Display| ModelError::Config { path: path.into(), message: format!("cannot write: {e}") };
        let path = dir.join("chat_template.jinja");
        std::fs::write(&path, template).map_err(|e| io(&path, &e))?;
        let path = dir.join("tokenizer_config.json");
        let cfg = json!({
            "chat_template": template,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": tokenizer.eos_id().and_then(|id| tokenizer.id_to_token(id)),
            "bos_token": tokenizer.bos_id().and_then(|id| tokenizer.id_to_token(id)),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&cfg).expect("json")).map_err(|e| io(&path, &e))?;
    }
    Ok(())
}
