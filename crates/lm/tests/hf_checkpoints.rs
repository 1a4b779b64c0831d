//! Tiny random HF checkpoints (Llama with tied embeddings; Qwen2 with q/k/v biases, untied
//! head, sharded safetensors) against transformers' logits, and load errors by name.
//! Fixtures made by `scripts/make_lm_reference.py`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use swegym_lm::{Architecture, CausalLm, Dtype, ModelConfig, ModelError};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn check_logits(name: &str, arch: Architecture) {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny_logits.json")).unwrap()).unwrap();
    let r = &reference[name];
    let model = CausalLm::from_hf_dir(&fixtures().join(name), Dtype::F32, Device::Cpu).unwrap();
    assert_eq!(model.config().architecture, arch);
    let ids: Vec<Vec<i64>> = serde_json::from_value(r["input_ids"].clone()).unwrap();
    let want: Vec<Vec<Vec<f32>>> = serde_json::from_value(r["logits"].clone()).unwrap();
    let input = Tensor::from_slice2(&ids);
    let logits = model.forward(&input);
    let want = Tensor::from_slice(&want.concat().concat()).view(logits.size().as_slice());
    let max_diff = (&logits - &want).abs().max().double_value(&[]);
    eprintln!("{name}: max abs logit diff vs transformers {max_diff:e}");
    assert!(max_diff <= 1e-4, "{name}: max abs diff {max_diff}");
    assert_eq!(logits.kind(), Kind::Float);
}

#[test]
fn tiny_llama_tied_logits_match_transformers() {
    check_logits("tiny-llama", Architecture::Llama);
}

#[test]
fn tiny_qwen2_sharded_with_biases_logits_match_transformers() {
    check_logits("tiny-qwen2", Architecture::Qwen2);
}

#[test]
fn transformers5_config_is_resolved() {
    let c = ModelConfig::from_hf_file(&fixtures().join("tiny-qwen2/config.json")).unwrap();
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (4, 2, 16));
    assert_eq!(c.rope_theta, 1e6);
    assert!(c.attention_bias && !c.tie_word_embeddings);
}

/// Copies the tiny Llama into a temp dir, lets `edit` break it, and returns the load error.
fn load_error(edit: impl FnOnce(&Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("tiny-llama").join(f), dir.path().join(f)).unwrap();
    }
    edit(dir.path());
    let err: ModelError = CausalLm::from_hf_dir(dir.path(), Dtype::F32, Device::Cpu).unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "not one line: {msg}");
    msg
}

fn edit_config(dir: &Path, key: &str, value: Value) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[key] = value;
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn config_tensor_mismatch_fails_by_name() {
    let msg = load_error(|d| edit_config(d, "intermediate_size", 128.into()));
    assert!(msg.contains("model.layers.0.mlp.gate_proj.weight") && msg.contains("[160, 64]"), "{msg}");

    let msg = load_error(|d| edit_config(d, "num_hidden_layers", 3.into()));
    assert!(msg.contains("missing tensor model.layers.2.input_layernorm.weight"), "{msg}");

    let msg = load_error(|d| edit_config(d, "num_hidden_layers", 1.into()));
    assert!(msg.contains("does not use") && msg.contains("model.layers.1."), "{msg}");

    let msg = load_error(|d| edit_config(d, "model_type", "gpt_neox".into()));
    assert!(msg.contains("config.json") && msg.contains("gpt_neox"), "{msg}");

    let msg = load_error(|d| edit_config(d, "num_key_value_heads", 3.into()));
    assert!(msg.contains("not a multiple"), "{msg}");
}

#[test]
fn truncated_safetensors_names_the_file() {
    let msg = load_error(|d| {
        let path = d.join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert!(msg.contains("model.safetensors"), "{msg}");
    let msg = load_error(|d| std::fs::remove_file(d.join("model.safetensors")).unwrap());
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");
}

/// Overwrites values `index..index + n` of tensor `name` in a safetensors file with NaN.
fn poison_safetensors(path: &Path, name: &str, index: usize, n: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header[name]["dtype"], "F32", "{name}");
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize;
    for i in index..index + n {
        let at = 8 + header_len + start + 4 * i;
        bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// Corrupt weights (NaN in a tensor) fail at load, naming the model and the tensor, instead
/// of loading and giving NaN logits.
#[test]
fn non_finite_weights_fail_by_name() {
    let msg = load_error(|d| poison_safetensors(&d.join("model.safetensors"), "model.layers.1.mlp.up_proj.weight", 7, 3));
    assert!(msg.contains(": tensor model.layers.1.mlp.up_proj.weight is not all finite numbers (3 NaN or infinite)"), "{msg}");
}
