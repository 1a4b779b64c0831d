//! Acceptance 2: SmolLM2 saved as an HF folder loads from safetensors and gives the same
//! logits as from the GGUF — the folder written by transformers
//! (`scripts/make_smollm2_hf.py`, when made on this machine) and the one our own
//! `export::gguf_to_hf_dir` writes.

mod common;

use std::path::Path;

use common::{fixture, smollm2_gguf, smollm2_hf_dir};
use swegym_lm::{CausalLm, Dtype, GgufFile, ModelConfig, Tokenizer};
use tch::{Device, Tensor};

fn reference_ids() -> Tensor {
    let ids: Vec<i64> = serde_json::from_value(fixture("smollm2_reference_logits.json")["input_ids"].clone()).unwrap();
    Tensor::from_slice(&ids).unsqueeze(0)
}

/// Max abs logit difference between the GGUF model and the HF folder at `dir`, over all
/// positions of the reference input; also checks the folder's config and tokenizer.
fn compare_with_gguf(gguf: &Path, dir: &Path) -> f64 {
    swegym_lm::init_cpu_runtime();
    let file = GgufFile::open(gguf).unwrap();
    assert_eq!(ModelConfig::from_hf_file(&dir.join("config.json")).unwrap(), ModelConfig::from_gguf(&file).unwrap());
    let text = fixture("smollm2_reference_logits.json")["text"].as_str().unwrap().to_string();
    let hf_tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let gguf_tok = Tokenizer::from_gguf(&file).unwrap();
    assert_eq!(hf_tok.encode(&text, false).unwrap(), gguf_tok.encode(&text, false).unwrap());
    assert_eq!(hf_tok.eos_id(), gguf_tok.eos_id());
    let ids = reference_ids();
    let from_gguf = CausalLm::from_gguf(&file, Dtype::F32, Device::Cpu).unwrap().forward(&ids);
    let from_hf = CausalLm::from_hf_dir(dir, Dtype::F32, Device::Cpu).unwrap().forward(&ids);
    (&from_gguf - &from_hf).abs().max().double_value(&[])
}

#[test]
fn smollm2_hf_folder_written_by_transformers_gives_the_gguf_logits() {
    let (Some(gguf), Some(dir)) = (smollm2_gguf(), smollm2_hf_dir()) else { return };
    let max_diff = compare_with_gguf(&gguf, &dir);
    eprintln!("transformers' safetensors vs GGUF: max abs logit diff {max_diff:e}");
    // both dequantize Q4_1/Q8_0 bit-exactly, so the weights and the logits are identical
    assert_eq!(max_diff, 0.0);
}

#[test]
fn smollm2_hf_folder_written_by_us_gives_the_gguf_logits() {
    let Some(gguf) = smollm2_gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    swegym_lm::export::gguf_to_hf_dir(&GgufFile::open(&gguf).unwrap(), dir.path()).unwrap();
    let max_diff = compare_with_gguf(&gguf, dir.path());
    eprintln!("our safetensors vs GGUF: max abs logit diff {max_diff:e}");
    assert_eq!(max_diff, 0.0);
}
