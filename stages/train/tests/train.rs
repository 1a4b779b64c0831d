//! The trainer on a tiny random Llama (byte-level tokenizer, ChatML template): the loss
//! falls on memorised chats, a run that crashes after a checkpoint resumes to the same
//! adapter bytes and losses, and records without assistant turns are dropped by reason.
//! (The real-model tests — learning a held-in answer, SIGKILL + resume, PEFT interop — are
//! in the top-level `tests/train.rs`.)

use std::path::Path;

use swegym_lm::Tokenizer;
use swegym_schema::sft::SftRecord;
use swegym_schema::Message;
use swegym_train::{RawTrainConfig, StepLog, TrainConfig, TrainRequest};

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";

fn tiny_model(dir: &Path) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tok = Tokenizer::byte_level(&["<|im_start|>", "<|im_end|>"]);
    swegym_lm::export::save_tiny_llama(&tok, Some(CHATML), 2, 64, 0, dir).unwrap();
}

fn record(q: &str, a: Option<&str>) -> SftRecord {
    let mut messages = vec![Message::user(q)];
    if let Some(a) = a {
        messages.push(Message::assistant(a));
    }
    let n_turns = SftRecord::assistant_turns(&messages);
    SftRecord {
        messages,
        instance_id: format!("q-{}", q.len()),
        iteration: None,
        source: "test".into(),
        resolved: Some(true),
        n_turns,
        sample_idx: None,
        exit_reason: None,
        patch: None,
    }
}

fn config(toml: &str) -> TrainConfig {
    let raw: RawTrainConfig = toml::from_str(toml).unwrap();
    raw.resolve("test").unwrap()
}

/// libtorch's random generator is process-global (dropout and LoRA init draw from it), so
/// the trainings of these tests take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn train(model: &Path, records: &[SftRecord], out: &Path, cfg: &TrainConfig, on_step: &mut dyn FnMut(&StepLog)) -> swegym_train::TrainSummary {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    swegym_train::train(
        TrainRequest { model, records, data_name: "test records", out_dir: out, config: cfg, device: tch::Device::Cpu, init_adapter: None },
        on_step,
    )
    .unwrap()
}

#[test]
fn loss_falls_on_memorised_chats_and_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(&dir.path().join("model"));
    let records = vec![
        record("capital of France?", Some("Paris.")),
        record("2 + 2?", Some("4, of course.")),
        record("a question nobody answers", None),
    ];
    let cfg = config("learning_rate = 1e-2\nwarmup_steps = 2\nepochs = 20\ngrad_accum = 2\nthreads = 1\n");
    let out = dir.path().join("adapter");
    let s = train(&dir.path().join("model"), &records, &out, &cfg, &mut |_| {});
    assert_eq!((s.examples_total, s.examples_used), (3, 2));
    assert_eq!(s.examples_dropped.get("no_assistant_turn"), Some(&1));
    assert_eq!(s.steps, 20);
    // a random hidden-64 model with N(0, 0.02) tied embeddings cannot produce large logits,
    // so its loss cannot fall far below ln(vocab); SmolLM2 memorises outright (tests/train.rs)
    assert!(s.loss_last < s.loss_first - 0.5, "{} → {}", s.loss_first, s.loss_last);
    assert!(out.join("adapter_model.safetensors").exists() && out.join("adapter_config.json").exists());
}

#[test]
fn training_can_continue_from_an_earlier_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    tiny_model(&model);
    let records = vec![record("capital of France?", Some("Paris.")), record("2 + 2?", Some("4, of course."))];
    let cfg = config("learning_rate = 1e-2\nwarmup_steps = 1\nepochs = 20\nthreads = 1\n");
    let first = dir.path().join("first");
    let s1 = train(&model, &records, &first, &cfg, &mut |_| {});
    // Continued on the same data, the loss starts where the first training ended.
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let second = dir.path().join("second");
    let req = TrainRequest { model: &model, records: &records, data_name: "test records", out_dir: &second, config: &cfg, device: tch::Device::Cpu, init_adapter: Some(&first) };
    let s2 = swegym_train::train(req, &mut |_| {}).unwrap();
    let (end1, start2, start1) = (*s1.losses.last().unwrap(), s2.losses[0], s1.losses[0]);
    assert!(end1 < start1 && start2 < (start1 + end1) / 2.0, "first {start1} → {end1}, continued from {start2}");
    // An adapter of another rank is refused by name.
    let other = config("lora_r = 4\nepochs = 1\nthreads = 1\n");
    let req = TrainRequest { model: &model, records: &records, data_name: "test records", out_dir: &dir.path().join("third"), config: &other, device: tch::Device::Cpu, init_adapter: Some(&first) };
    let err = swegym_train::train(req, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("cannot start from this adapter") && err.contains("shape"), "{err}");
}

#[test]
fn a_crash_after_a_checkpoint_resumes_to_the_same_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    tiny_model(&model);
    let records: Vec<SftRecord> = (0..5).map(|i| record(&format!("question {i}?"), Some(&format!("answer {i}")))).collect();
    let cfg = config("learning_rate = 5e-3\nwarmup_steps = 1\nepochs = 3\ngrad_accum = 2\nbatch_size = 2\ncheckpoint_every = 2\nlora_dropout = 0.2\nactivation_checkpointing = true\nthreads = 1\nseed = 9\n");

    let whole = dir.path().join("whole");
    let s_whole = train(&model, &records, &whole, &cfg, &mut |_| {});
    assert_eq!(s_whole.steps, 4);

    let crashed = dir.path().join("crashed");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train(&model, &records, &crashed, &cfg, &mut |s| {
            if s.step == 3 {
                panic!("simulated crash at step 3");
            }
        })
    }));
    assert!(result.is_err());
    assert!(crashed.join("checkpoint/state.json").exists());
    let s = train(&model, &records, &crashed, &cfg, &mut |_| {});
    assert_eq!(s.resumed_from_step, 2);
    assert_eq!(s.losses, s_whole.losses);
    let a = std::fs::read(whole.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(crashed.join("adapter_model.safetensors")).unwrap();
    assert!(a == b, "resumed adapter differs");
}

#[test]
fn activation_checkpointing_gives_the_same_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    tiny_model(&model);
    let records: Vec<SftRecord> = (0..3).map(|i| record(&format!("q{i}"), Some(&format!("the answer is {i}")))).collect();
    let base = "learning_rate = 1e-2\nepochs = 2\ngrad_accum = 1\nlora_dropout = 0.1\nthreads = 1\n";
    let plain = train(&model, &records, &dir.path().join("a"), &config(base), &mut |_| {});
    let ckpt = train(&model, &records, &dir.path().join("b"), &config(&format!("{base}activation_checkpointing = true\n")), &mut |_| {});
    for (x, y) in plain.losses.iter().zip(&ckpt.losses) {
        assert!((x - y).abs() < 1e-5, "{:?} vs {:?}", plain.losses, ckpt.losses);
    }
}

#[test]
fn bf16_training_tracks_f32() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    tiny_model(&model);
    let records: Vec<SftRecord> = (0..3).map(|i| record(&format!("q{i}"), Some(&format!("the answer is {i}")))).collect();
    let base = "learning_rate = 1e-2\nepochs = 4\ngrad_accum = 1\nthreads = 1\n";
    let f32 = train(&model, &records, &dir.path().join("f32"), &config(base), &mut |_| {});
    let bf16 = train(&model, &records, &dir.path().join("bf16"), &config(&format!("{base}dtype = \"bf16\"\n")), &mut |_| {});
    assert_eq!(f32.losses.len(), bf16.losses.len());
    for (a, b) in f32.losses.iter().zip(&bf16.losses) {
        assert!((a - b).abs() < 0.05, "bf16 {:?} vs f32 {:?}", bf16.losses, f32.losses);
    }
    assert!(bf16.loss_last < bf16.loss_first);
    // the adapter is f32 whatever the base dtype (PEFT's autocast_adapter_dtype)
    let bytes = std::fs::read(dir.path().join("bf16/adapter_model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    assert!(header.contains("\"F32\"") && !header.contains("BF16"), "{header}");
    // `auto` trains in the dtype this CPU runs fastest, and the summary says which.
    let auto = train(&model, &records, &dir.path().join("auto"), &config(&format!("{base}max_steps = 1\ndtype = \"auto\"\n")), &mut |_| {});
    let want = if swegym_lm::cpu_multiplies_bf16() { "bf16" } else { "f32" };
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("auto/train_summary.json")).unwrap()).unwrap();
    assert_eq!(summary["config"]["dtype"], want, "{summary}");
    assert_eq!(auto.config.dtype.to_string(), want);
    let err = swegym_train::RawTrainConfig { dtype: Some("f8".into()), ..Default::default() }.resolve("t").unwrap_err().to_string();
    assert!(err.contains("expected auto, f32, bf16 or f16"), "{err}");
}
