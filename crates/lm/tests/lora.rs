//! LoRA layers on the tiny Llama and Qwen2 fixtures: a fresh adapter (B = 0) leaves the
//! logits unchanged; a trained-looking one (random B) changes them by exactly
//! `s · B A x` (checked against the merged weights); saving and loading round-trips in
//! PEFT's layout; and bad adapters fail by name (rank mismatch, another architecture,
//! unsupported PEFT options, stray tensors, NaN weights). Interop with PEFT itself is checked by
//! `stages/train/scripts/peft_interop.py` (run by the `train` e2e tests).

mod common;

use common::fixture_path;
use swegym_lm::lora::{load_adapter, read_adapter_config, save_adapter, AdapterConfig, LoraConfig, LoraTarget};
use swegym_lm::{CausalLm, DecodeWeights, Dtype};
use tch::{Device, Kind, Tensor};

fn tiny(name: &str) -> CausalLm {
    CausalLm::from_hf_dir(&fixture_path(name), Dtype::F32, Device::Cpu).unwrap()
}

fn input() -> Tensor {
    Tensor::from_slice(&[5i64, 17, 99, 3, 250, 42, 7, 8]).unsqueeze(0)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Gives every B matrix random values (a fresh adapter has B = 0 and changes nothing).
fn randomize_b(model: &CausalLm) {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(7);
    for (name, t) in model.lora_tensors() {
        if name.ends_with("lora_B.weight") {
            t.shallow_clone().copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.05));
        }
    }
}

fn adapter_config(lora: &LoraConfig) -> AdapterConfig {
    AdapterConfig { lora: lora.clone(), base_model_name_or_path: Some("tiny".into()) }
}

#[test]
fn a_fresh_adapter_changes_nothing_and_has_peft_names_and_shapes() {
    for fixture in ["tiny-llama", "tiny-qwen2"] {
        let base = tiny(fixture).forward(&input());
        let mut model = tiny(fixture);
        let lora = LoraConfig::default();
        model.add_lora(&lora, 0);
        assert!(max_diff(&base, &model.forward(&input())) == 0.0, "{fixture}: B = 0 must leave logits unchanged");
        let tensors = model.lora_tensors();
        let layers = model.config().num_hidden_layers as usize;
        assert_eq!(tensors.len(), layers * 7 * 2);
        let (name, a) = &tensors[0];
        assert_eq!(name, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
        assert_eq!(a.size(), vec![16, model.config().hidden_size]);
        let (name, b) = &tensors[1];
        assert_eq!(name, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
        assert_eq!(b.size()[1], 16);
        // A is Kaiming-uniform with bound 1/sqrt(in)
        let bound = 1.0 / (model.config().hidden_size as f64).sqrt();
        assert!(a.abs().max().double_value(&[]) <= bound);
    }
}

#[test]
fn merged_equals_unmerged_and_save_load_round_trips() {
    for fixture in ["tiny-llama", "tiny-qwen2"] {
        let mut model = tiny(fixture);
        let lora = LoraConfig { r: 4, alpha: 8.0, target_modules: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down], ..LoraConfig::default() };
        model.add_lora(&lora, 1);
        randomize_b(&model);
        let base = tiny(fixture).forward(&input());
        let with_lora = model.forward(&input());
        assert!(max_diff(&base, &with_lora) > 1e-3, "{fixture}: a random B must change the logits");

        let dir = tempfile::tempdir().unwrap();
        save_adapter(&model, &adapter_config(&lora), dir.path()).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(cfg["peft_type"], "LORA");
        assert_eq!(cfg["task_type"], "CAUSAL_LM");
        assert_eq!(cfg["r"], 4);
        assert_eq!(cfg["lora_alpha"], 8.0);
        assert_eq!(cfg["bias"], "none");
        assert!(cfg["modules_to_save"].is_null());
        assert_eq!(cfg["target_modules"], serde_json::json!(["q_proj", "v_proj", "down_proj"]));
        assert_eq!(read_adapter_config(dir.path()).unwrap().lora, lora);

        for merge in [false, true] {
            let mut loaded = tiny(fixture);
            load_adapter(&mut loaded, dir.path(), merge).unwrap();
            assert_eq!(loaded.has_lora(), !merge);
            let d = max_diff(&with_lora, &loaded.forward(&input()));
            assert!(d < 1e-5, "{fixture} merge={merge}: logits differ by {d}");
        }
    }
}

/// Three positions: a product of at most `Q8_MAX_ROWS` rows, which reads the 8-bit copies.
fn decoding_input() -> Tensor {
    Tensor::from_slice(&[5i64, 17, 99]).unsqueeze(0)
}

/// The 8-bit copies decoding reads are remade when an adapter is merged: a model set to
/// q8 before the merge gives exactly the logits of one quantized after it (bias and all,
/// on the Qwen2 fixture), and an unmerged adapter on q8 copies adds its f32 delta, near
/// the merged result.
#[test]
fn q8_decoding_copies_follow_a_merge() {
    for fixture in ["tiny-llama", "tiny-qwen2"] {
        let mut model = tiny(fixture);
        let lora = LoraConfig { r: 4, alpha: 8.0, target_modules: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down], ..LoraConfig::default() };
        model.add_lora(&lora, 1);
        randomize_b(&model);
        let dir = tempfile::tempdir().unwrap();
        save_adapter(&model, &adapter_config(&lora), dir.path()).unwrap();
        let q8_after = {
            let mut m = tiny(fixture);
            load_adapter(&mut m, dir.path(), true).unwrap();
            assert_eq!(m.set_decode_weights(DecodeWeights::Q8), DecodeWeights::Q8);
            m.forward(&decoding_input())
        };
        let q8_before = |merge: bool| {
            let mut m = tiny(fixture);
            assert_eq!(m.set_decode_weights(DecodeWeights::Q8), DecodeWeights::Q8);
            load_adapter(&mut m, dir.path(), merge).unwrap();
            assert_eq!(m.decode_weights(), DecodeWeights::Q8);
            m.forward(&decoding_input())
        };
        assert_eq!(max_diff(&q8_after, &q8_before(true)), 0.0, "{fixture}: a merge must remake the 8-bit copies");
        let f32_merged = model.forward(&decoding_input());
        let (unmerged, q8_error) = (max_diff(&q8_after, &q8_before(false)), max_diff(&q8_after, &f32_merged));
        assert!(q8_error > 0.0 && unmerged < 2.0 * q8_error, "{fixture}: unmerged on q8 {unmerged}, q8 vs f32 {q8_error}");
        let f32_logit_range = f64::try_from(f32_merged.max() - f32_merged.min()).unwrap();
        assert!(q8_error < 0.05 * f32_logit_range, "{fixture}: q8 logits off by {q8_error} of a range {f32_logit_range}");
    }
}

#[test]
fn peft_tensor_names_with_the_adapter_name_load_too() {
    let mut model = tiny("tiny-llama");
    let lora = LoraConfig { r: 2, alpha: 2.0, target_modules: vec![LoraTarget::O], ..LoraConfig::default() };
    model.add_lora(&lora, 3);
    randomize_b(&model);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &adapter_config(&lora), dir.path()).unwrap();
    // rename to PEFT's in-memory names: `lora_A.default.weight`
    let renamed: Vec<(String, Tensor)> = model
        .lora_tensors()
        .into_iter()
        .map(|(n, t)| (n.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight"), t))
        .collect();
    swegym_lm::weights::save_safetensors(&dir.path().join("adapter_model.safetensors"), &renamed).unwrap();
    let mut loaded = tiny("tiny-llama");
    load_adapter(&mut loaded, dir.path(), false).unwrap();
    assert!(max_diff(&model.forward(&input()), &loaded.forward(&input())) < 1e-6);
}

/// Writes an adapter of `lora` for `source`, lets `edit` spoil it, loads it onto the
/// `onto` fixture and returns the error.
fn load_error(mut model: CausalLm, onto: &str, lora: &LoraConfig, edit: impl Fn(&std::path::Path)) -> String {
    model.add_lora(lora, 0);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &adapter_config(lora), dir.path()).unwrap();
    edit(dir.path());
    let mut target = tiny(onto);
    load_adapter(&mut target, dir.path(), false).unwrap_err().to_string()
}

fn edit_config(dir: &std::path::Path, key: &str, value: serde_json::Value) {
    let path = dir.join("adapter_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(&path, cfg.to_string()).unwrap();
}

#[test]
fn bad_adapters_fail_by_name() {
    let lora = LoraConfig { r: 4, target_modules: vec![LoraTarget::Q, LoraTarget::K], ..LoraConfig::default() };
    // a Llama of another width (hidden 32, 3 layers)
    let other_dir = tempfile::tempdir().unwrap();
    let tok = swegym_lm::Tokenizer::byte_level(&["<|im_start|>", "<|im_end|>"]);
    swegym_lm::export::save_tiny_llama(&tok, None, 3, 32, 0, other_dir.path()).unwrap();
    let other = CausalLm::from_hf_dir(other_dir.path(), Dtype::F32, Device::Cpu).unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("rank mismatch", load_error(tiny("tiny-llama"), "tiny-llama", &lora, |d| edit_config(d, "r", 8.into()))),
        ("another architecture", load_error(other, "tiny-llama", &lora, |_| {})),
        ("use_dora", load_error(tiny("tiny-llama"), "tiny-llama", &lora, |d| edit_config(d, "use_dora", true.into()))),
        ("modules_to_save", load_error(tiny("tiny-llama"), "tiny-llama", &lora, |d| edit_config(d, "modules_to_save", serde_json::json!(["lm_head"])))),
        ("unknown target module", load_error(tiny("tiny-llama"), "tiny-llama", &lora, |d| edit_config(d, "target_modules", serde_json::json!(["q_proj", "wq"])))),
        ("missing tensor", load_error(tiny("tiny-llama"), "tiny-llama", &lora, |d| edit_config(d, "target_modules", serde_json::json!(["q_proj", "k_proj", "o_proj"])))),
        ("non-finite values (NaN or inf)", load_error(tiny("tiny-llama"), "tiny-llama", &lora, |d| {
            let file = d.join("adapter_model.safetensors");
            let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&file).unwrap();
            let spoiled: Vec<(String, Tensor)> =
                tensors.into_iter().map(|(n, t)| if n.contains("lora_B") { (n, t.full_like(f64::NAN)) } else { (n, t) }).collect();
            swegym_lm::weights::save_safetensors(&file, &spoiled).unwrap();
        })),
        ("adapter_config.json", load_error(tiny("tiny-llama"), "tiny-llama", &lora, |d| std::fs::remove_file(d.join("adapter_config.json")).unwrap())),
    ];
    for (needle, message) in cases {
        assert!(message.contains(needle), "expected {needle:?} in: {message}");
        assert!(message.contains("bad LoRA adapter"), "{message}");
    }
}

#[test]
fn lora_training_forward_has_gradients_only_on_lora_tensors() {
    let mut model = tiny("tiny-llama");
    model.add_lora(&LoraConfig::default(), 0);
    let params: Vec<Tensor> = model.lora_tensors().into_iter().map(|(_, t)| t.set_requires_grad(true)).collect();
    let ids = input();
    let step = model.train_step(1, ids.size()[1], false);
    let mut x = model.embed(&ids);
    for i in 0..model.num_layers() {
        x = model.layer_forward(i, &x, &step);
    }
    let h = model.final_norm(&x);
    let logits = h.linear::<Tensor>(model.lm_head_weight(), None);
    logits.sum(Kind::Float).backward();
    // with B = 0, dL/dA = 0 and dL/dB != 0
    let grads: Vec<(bool, f64)> = params.iter().map(|p| (p.grad().defined(), p.grad().abs().sum(Kind::Float).double_value(&[]))).collect();
    assert!(grads.iter().all(|(defined, _)| *defined));
    assert!(grads.iter().step_by(2).all(|(_, g)| *g == 0.0), "A gets no gradient while B is zero");
    assert!(grads.iter().skip(1).step_by(2).all(|(_, g)| *g > 0.0), "every B gets a gradient");
    assert!(!model.lm_head_weight().requires_grad(), "base weights stay frozen");
}
