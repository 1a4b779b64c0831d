//! Helpers shared by the integration tests: fixture paths and the cached SmolLM2 GGUF.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub fn fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_path(name)).unwrap()).unwrap()
}

/// The SmolLM2 GGUF that `make setup` puts in the cache, or `None` (with the reason
/// printed) when it is absent; CI runs setup first, so there it is always present.
/// A prerequisite is missing: with `SWEGYM_SLOW_TESTS=1` (CI) the test fails — it never
/// passes for work it did not do —, otherwise it is skipped with the reason printed.
pub fn missing(why: &str) {
    assert!(std::env::var("SWEGYM_SLOW_TESTS").as_deref() != Ok("1"), "SWEGYM_SLOW_TESTS=1 asks for every test to run, but {why}");
    eprintln!("skipped: {why}");
}

pub fn smollm2_gguf() -> Option<PathBuf> {
    let cache = std::env::var_os("SWEGYM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/swegym"));
    let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        Some(path)
    } else {
        missing(&format!("{} is absent (run `make setup`)", path.display()));
        None
    }
}

/// The HF folder transformers writes with `scripts/make_smollm2_hf.py`, or `None` (with the
/// reason printed) when it has not been made on this machine.
pub fn smollm2_hf_dir() -> Option<PathBuf> {
    let cache = std::env::var_os("SWEGYM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/swegym"));
    let path = cache.join("models/smollm2-hf");
    if path.join("model.safetensors").exists() {
        Some(path)
    } else {
        missing(&format!(
            "{} is absent (make it with `SWEGYM_SETUP_REF=1 make setup`, or ~/.cache/swegym/venv-ref/bin/python crates/lm/scripts/make_smollm2_hf.py)",
            path.display()
        ));
        None
    }
}

/// A byte-level tokenizer without merges for the tiny fixtures (vocab 320): ids 0..256 are
/// the 256 bytes (GPT-2's byte-to-char map), 256 `<|im_start|>`, 257 `<|im_end|>` (EOS).
pub fn byte_tokenizer() -> swegym_lm::Tokenizer {
    swegym_lm::Tokenizer::byte_level(&["<|im_start|>", "<|im_end|>"])
}

/// The tiny random Llama fixture (2 layers, hidden 64, vocab 320, tied embeddings).
pub fn tiny_llama(dtype: swegym_lm::Dtype) -> swegym_lm::CausalLm {
    swegym_lm::CausalLm::from_hf_dir(&fixture_path("tiny-llama"), dtype, tch::Device::Cpu).unwrap()
}
