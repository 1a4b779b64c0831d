//! SmolLM2-135M-Instruct from the shipped GGUF against transformers' logits
//! (`tests/fixtures/smollm2_reference_logits.json`, made by scripts/baselines/sanity_and_logits.py
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

#[test]
fn smollm2_gguf_bf16_prefill_agrees_with_f32_and_leaves_decoding_alone() {
    // an f32 model with a bf16 prefill (set_prefill_dtype): prompts of more than 16
    // positions compute in bf16, shorter ones (a decoding step's size) stay exactly f32
    let Some(path) = smollm2_gguf() else { return };
    swegym_lm::init_cpu_runtime();
    let _guard = tch::no_grad_guard();
    let file = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let mut model = CausalLm::from_gguf(&file, Dtype::F32, Device::Cpu).unwrap();
    let text = "The agent reads the issue, opens the file that raises the error, and finds that the \
                parser drops the last column when a row ends with a separator. It edits the loop so \
                the trailing empty field is kept, then runs the failing test again: it passes, and \
                so do the tests that passed before. It submits the patch with a short summary.";
    let ids: Vec<u32> = tok.encode(text, false).unwrap();
    assert!(ids.len() > 40, "{} tokens", ids.len());
    let short = &ids[..12];
    // f32 results: the whole text, its last 20 tokens prefilled after the rest, a short prompt
    let f32_full = model.forward(&Tensor::from_slice(&ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>()).unsqueeze(0));
    let split = ids.len() - 20;
    let cached_last = |model: &CausalLm| {
        let mut cache = model.new_cache();
        let row = cache.push_row(ids.len() as i64);
        let _ = model.prefill_row(&mut cache, row, &ids[..split]);
        model.prefill_row(&mut cache, row, &ids[split..])
    };
    let short_last = |model: &CausalLm| {
        let mut cache = model.new_cache();
        let row = cache.push_row(16);
        model.prefill_row(&mut cache, row, short)
    };
    let (f32_cached, f32_short) = (cached_last(&model), short_last(&model));

    model.set_prefill_dtype(Dtype::Bf16);
    assert_eq!(model.prefill_dtype(), Dtype::Bf16);
    let bf16_full = model.forward(&Tensor::from_slice(&ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>()).unsqueeze(0));
    let full_diff = (&bf16_full - &f32_full).abs().max().double_value(&[]);
    assert!(full_diff > 0.0, "the long prompt did not go through bf16");
    let argmax = |t: &Tensor| Vec::<i64>::try_from(&t.get(0).argmax(-1, false)).unwrap();
    let (a, b) = (argmax(&bf16_full), argmax(&f32_full));
    let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    eprintln!("bf16 prefill: full forward max |Δlogit| {full_diff:.3}, argmax agrees at {agree}/{} positions", a.len());
    assert!(agree * 10 >= a.len() * 9, "argmax agrees at {agree} of {} positions", a.len());
    assert!(full_diff < 1.5, "max |Δlogit| {full_diff}");
    // an observation's prefill after a context (the materialised bf16 attention)
    let bf16_cached = cached_last(&model);
    let cached_diff = (&bf16_cached - &f32_cached).abs().max().double_value(&[]);
    eprintln!("bf16 prefill: last 20 tokens after {split}: max |Δlogit| {cached_diff:.3}");
    assert_eq!(bf16_cached.argmax(-1, false).int64_value(&[]), f32_cached.argmax(-1, false).int64_value(&[]));
    assert!(cached_diff > 0.0 && cached_diff < 1.5, "max |Δlogit| {cached_diff}");
    // 12 positions are a decoding step's size: exactly the f32 result
    assert!(short_last(&model).equal(&f32_short), "a short prefill changed with the bf16 prefill");
    // back to f32: the copies are gone and results are f32's again, bit for bit
    model.set_prefill_dtype(Dtype::F32);
    assert_eq!(model.prefill_dtype(), Dtype::F32);
    assert!(cached_last(&model).equal(&f32_cached));
}
