//! SmolLM2-135M-Instruct from the shipped GGUF against transformers' logits
//! (`tests/fixtures/smollm2_reference_logits.json`, made by shared/baselines/sanity_and_logits.py
//! and `scripts/make_lm_reference.py`).

mod common;

use common::{fixture, smollm2_gguf};

use serde_json::Value;
use swegym_lm::{CausalLm, Dtype, GgufFile, Tokenizer};
use tch::{Device, Kind, Tensor};



fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn i64s(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

#[test]
fn smollm2_gguf_f32_logits_match_transformers() {
    let Some(path) = smollm2_gguf() else { return };
    swegym_lm::init_cpu_runtime();
    let file = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let model = CausalLm::from_gguf(&file, Dtype::F32, Device::Cpu).unwrap();
    let r = fixture("smollm2_reference_logits.json");

    let ids: Vec<i64> = tok.encode(r["text"].as_str().unwrap(), false).unwrap().into_iter().map(i64::from).collect();
    assert_eq!(ids, i64s(&r["input_ids"]));
    let logits = model.forward(&Tensor::from_slice(&ids).unsqueeze(0)); // [1, T, V]
    let n = ids.len() as i64;
    let last = logits.get(0).get(n - 1);

    // top-10 at the last position: same ids, logits within 1e-3
    let (values, indices) = last.topk(10, -1, true, true);
    let got_ids: Vec<i64> = Vec::try_from(&indices).unwrap();
    let got: Vec<f32> = Vec::try_from(&values).unwrap();
    let want = f32s(&r["last_position_top10"]["logits"]);
    let max_diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("last-position top-10 max abs diff vs transformers: {max_diff:e}");
    assert_eq!(got_ids, i64s(&r["last_position_top10"]["ids"]));
    assert!(max_diff <= 1e-3, "max abs diff {max_diff}");

    // whole-distribution statistics and per-position argmax
    let stats = &r["last_position_stats"];
    let mean = last.mean(Kind::Float).double_value(&[]);
    let lse = last.logsumexp([0i64].as_slice(), false).double_value(&[]);
    let l2 = last.norm().double_value(&[]);
    eprintln!("mean {mean} logsumexp {lse} l2 {l2}");
    assert!((mean - stats["mean"].as_f64().unwrap()).abs() < 1e-4);
    assert!((lse - stats["logsumexp"].as_f64().unwrap()).abs() < 1e-3);
    assert!((l2 - stats["l2_norm"].as_f64().unwrap()).abs() / l2 < 1e-5);
    let argmax: Vec<i64> = Vec::try_from(&logits.get(0).argmax(-1, false)).unwrap();
    assert_eq!(argmax, i64s(&r["argmax_per_position"]));
    let first8: Vec<f32> = Vec::try_from(&logits.get(0).get(0).narrow(0, 0, 8)).unwrap();
    let want8 = f32s(&r["first_position_logits_first8"]);
    let d0 = first8.iter().zip(&want8).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d0 <= 1e-3, "position 0 first-8 logits differ by {d0}");
}

#[test]
fn smollm2_gguf_greedy_chat_reproduces_transformers_text() {
    let Some(path) = smollm2_gguf() else { return };
    swegym_lm::init_cpu_runtime();
    let file = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let model = CausalLm::from_gguf(&file, Dtype::F32, Device::Cpu).unwrap();
    let chat = &fixture("smollm2_reference_logits.json")["chat_greedy"];
    let prompt = tok.encode(chat["prompt_text"].as_str().unwrap(), false).unwrap();
    let want_prompt: Vec<u32> = i64s(&chat["prompt_ids"]).into_iter().map(|i| i as u32).collect();
    assert_eq!(prompt, want_prompt);
    let eos = tok.eos_id().unwrap();
    let generated = model.generate_greedy(&prompt, 64, &[eos]);
    let text = tok.decode(&generated, false).unwrap();
    assert_eq!(text, chat["generated_text"].as_str().unwrap());
    let want: Vec<u32> = i64s(&chat["generated_ids"]).into_iter().map(|i| i as u32).collect();
    assert_eq!(generated, want);
}

#[test]
fn cached_forward_equals_full_forward() {
    let Some(path) = smollm2_gguf() else { return };
    swegym_lm::init_cpu_runtime();
    let file = GgufFile::open(&path).unwrap();
    let model = CausalLm::from_gguf(&file, Dtype::F32, Device::Cpu).unwrap();
    let ids = Tensor::from_slice(&i64s(&fixture("smollm2_reference_logits.json")["input_ids"])).unsqueeze(0);
    let full = model.forward(&ids);
    // prefill 4 positions, then 3 at once (masked chunk), then 2 one by one
    let mut cache = model.new_cache();
    let parts = [model.forward_cached(&ids.narrow(1, 0, 4), &mut cache),
                 model.forward_cached(&ids.narrow(1, 4, 3), &mut cache),
                 model.forward_cached(&ids.narrow(1, 7, 1), &mut cache),
                 model.forward_cached(&ids.narrow(1, 8, 1), &mut cache)];
    assert_eq!(cache.len(), 9);
    let stepped = Tensor::cat(&parts, 1);
    let max_diff = (&stepped - &full).abs().max().double_value(&[]);
    assert!(max_diff <= 1e-4, "cached vs full forward differ by {max_diff}");
}

#[test]
fn smollm2_gguf_bf16_runs_and_agrees_loosely() {
    // bf16 matmuls go through oneDNN: this is the test that dies with SIGILL on this VM's
    // CPU when ONEDNN_MAX_CPU_ISA is not capped (init_cpu_runtime / .cargo/config.toml).
    let Some(path) = smollm2_gguf() else { return };
    swegym_lm::init_cpu_runtime();
    let file = GgufFile::open(&path).unwrap();
    let model = CausalLm::from_gguf(&file, Dtype::Bf16, Device::Cpu).unwrap();
    let r = fixture("smollm2_reference_logits.json");
    let ids = Tensor::from_slice(&i64s(&r["input_ids"])).unsqueeze(0);
    let logits = model.forward(&ids);
    assert_eq!(logits.kind(), Kind::Float);
    let last = logits.get(0).get(-1);
    let (values, indices) = last.topk(10, -1, true, true);
    let got_ids: Vec<i64> = Vec::try_from(&indices).unwrap();
    let want_ids = i64s(&r["last_position_top10"]["ids"]);
    // transformers' own bf16 run swaps ranks 5/6 and 8/9 and moves logits by up to 0.57
    assert_eq!(got_ids[0], want_ids[0]);
    let overlap = got_ids.iter().filter(|i| want_ids.contains(i)).count();
    assert!(overlap >= 8, "bf16 top-10 {got_ids:?} vs f32 {want_ids:?}");
    let top: f32 = Vec::<f32>::try_from(&values).unwrap()[0];
    let want_top = f32s(&r["last_position_top10"]["logits"])[0];
    assert!((top - want_top).abs() < 1.0, "bf16 top logit {top} vs {want_top}");
}
