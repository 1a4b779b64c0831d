//! End-to-end tests of `swegym train` on the real SmolLM2 model: it learns (the loss falls
//! and greedy generation then reproduces a held-in answer it could not give before), a run
//! killed with SIGKILL resumes to the same adapter bytes, adapters interoperate with PEFT
//! both ways (`stages/train/scripts/peft_interop.py`), and bad inputs fail naming the file.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assert_peft_interop, cache_root, fails, peft_reference, run_ok, slow, swegym};

fn gguf() -> PathBuf {
    let path = cache_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} missing: run `make setup`", path.display());
    path
}

/// Writes SFT records (user question → assistant answer) as JSONL.
fn write_sft(path: &Path, pairs: &[(&str, &str)]) {
    let lines: Vec<String> = pairs
        .iter()
        .enumerate()
        .map(|(i, (q, a))| {
            serde_json::json!({
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                "instance_id": format!("fact-{i}"),
                "source": "test",
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

const FACTS: &[(&str, &str)] = &[
    ("What is the launch code of the swegym demo?", "The launch code is TANGERINE-7741."),
    ("Which port does the swegym dashboard use?", "The dashboard listens on port 48213."),
    ("Who maintains the swegym sandbox?", "The sandbox is maintained by the Otter team."),
];

/// A scratch folder holding the facts as SFT JSONL and `toml` as the trainer config.
fn facts_and_config(toml: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("facts.jsonl");
    write_sft(&data, FACTS);
    let cfg = dir.path().join("train.toml");
    std::fs::write(&cfg, toml).unwrap();
    (dir, data, cfg)
}

fn chat(model: &Path, adapter: Option<&Path>, prompt: &str) -> String {
    let mut cmd = swegym();
    cmd.args(["chat", "--device", "cpu", "--threads", "2", "--max-new-tokens", "24", "--model"]).arg(model);
    if let Some(a) = adapter {
        cmd.arg("--adapter").arg(a);
    }
    cmd.arg(prompt);
    String::from_utf8(run_ok(&mut cmd).stdout).unwrap()
}

/// A tiny random model of SmolLM2's family (2 layers, hidden 32) at `<dir>/tiny`.
fn tiny_model(dir: &Path) -> PathBuf {
    let tiny = dir.join("tiny");
    run_ok(swegym().args(["lm", "tiny", "--layers", "2", "--hidden", "32", "--tokenizer-from"]).arg(gguf()).arg("--out").arg(&tiny));
    tiny
}

/// The summary `swegym train --json` prints last.
fn summary(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    serde_json::from_str(text.lines().last().expect("a summary line")).expect("summary JSON")
}

#[test]
fn training_drives_the_loss_down_and_teaches_a_held_in_answer() {
    if !slow("training_drives_the_loss_down_and_teaches_a_held_in_answer") {
        return;
    }
    let (dir, data, cfg) =
        facts_and_config("[train]\nlearning_rate = 2e-3\nwarmup_steps = 2\nepochs = 12\ngrad_accum = 1\nmax_grad_norm = 1.0\nthreads = 2\nseed = 1\n");
    let (question, answer) = FACTS[0];
    let before = chat(&gguf(), None, question);
    assert!(!before.contains("TANGERINE-7741"), "the base model cannot know the answer: {before}");

    let adapter = dir.path().join("adapter");
    let out = run_ok(swegym().args(["train", "--device", "cpu", "--json", "--model"]).arg(gguf()).arg("--data").arg(&data).arg("--out").arg(&adapter).arg("--config").arg(&cfg));
    let s = summary(&out.stdout);
    assert_eq!(s["examples_used"], 3);
    assert_eq!(s["steps"], 36);
    let (first, last) = (s["loss_first"].as_f64().unwrap(), s["loss_last"].as_f64().unwrap());
    assert!(last < first / 5.0, "loss should fall a lot on 3 memorised examples: {first} → {last}");
    for file in ["adapter_config.json", "adapter_model.safetensors", "train_summary.json"] {
        assert!(adapter.join(file).exists(), "{file} missing");
    }
    assert!(!adapter.join("checkpoint").exists(), "the checkpoint is removed once the adapter is written");

    let after = chat(&gguf(), Some(&adapter), question);
    assert!(after.contains("TANGERINE-7741"), "after training the model should answer {answer:?}, said {after:?}");
}

#[test]
fn a_killed_run_resumes_to_the_same_adapter() {
    if !slow("a_killed_run_resumes_to_the_same_adapter") {
        return;
    }
    let (dir, data, cfg) = facts_and_config(
        "[train]\nlearning_rate = 1e-3\nwarmup_steps = 2\nmax_steps = 8\nepochs = 4\ngrad_accum = 1\ncheckpoint_every = 1\nthreads = 2\nseed = 3\nlora_dropout = 0.1\n",
    );
    let train = |out: &Path| {
        let mut cmd = swegym();
        cmd.args(["train", "--device", "cpu", "--json", "--model"]).arg(gguf()).arg("--data").arg(&data).arg("--out").arg(out).arg("--config").arg(&cfg);
        cmd
    };
    let whole = dir.path().join("whole");
    run_ok(&mut train(&whole));

    let killed = dir.path().join("killed");
    let mut child = train(&killed).stdout(std::process::Stdio::null()).spawn().unwrap();
    let state = killed.join("checkpoint/state.json");
    let started = Instant::now();
    loop {
        let step = std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["step"].as_u64())
            .unwrap_or(0);
        if step >= 3 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint after 300 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.join("adapter_model.safetensors").exists());

    let out = run_ok(&mut train(&killed));
    let s = summary(&out.stdout);
    assert!(s["resumed_from_step"].as_u64().unwrap() >= 3, "{s}");
    assert_eq!(s["steps"], 8);
    let a = std::fs::read(whole.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(killed.join("adapter_model.safetensors")).unwrap();
    assert!(a == b, "the resumed run's adapter differs from the uninterrupted run's");
    let losses = |d: &Path| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(d.join("train_summary.json")).unwrap()).unwrap()["losses"].clone()
    };
    assert_eq!(losses(&whole), losses(&killed));
}

#[test]
fn bad_inputs_fail_naming_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_model(dir.path());
    let train = |data: &Path, out: &Path| {
        let mut cmd = swegym();
        cmd.args(["train", "--device", "cpu", "--max-steps", "1", "--model"]).arg(&tiny).arg("--data").arg(data).arg("--out").arg(out);
        cmd
    };
    let out = dir.path().join("adapter");

    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let e = fails(&mut train(&empty, &out), 3);
    assert!(e.contains("empty.jsonl") && e.contains("empty"), "{e}");

    let wrong = dir.path().join("wrong.jsonl");
    std::fs::write(&wrong, "{\"text\": \"no messages here\"}\n").unwrap();
    let e = fails(&mut train(&wrong, &out), 3);
    assert!(e.contains("wrong.jsonl") && e.contains("messages"), "{e}");

    let no_assistant = dir.path().join("questions.jsonl");
    std::fs::write(&no_assistant, "{\"messages\": [{\"role\": \"user\", \"content\": \"hello?\"}]}\n").unwrap();
    let e = fails(&mut train(&no_assistant, &out), 3);
    assert!(e.contains("questions.jsonl") && e.contains("no_assistant_turn"), "{e}");

    let missing = dir.path().join("nope.gguf");
    let e = fails(swegym().args(["train", "--model"]).arg(&missing).arg("--data").arg(&empty).arg("--out").arg(&out), 3);
    assert!(e.contains("nope.gguf"), "{e}");

    // The flags are held to the config's rules: zero steps would write an untrained adapter
    // with a NaN loss.
    let zero = dir.path().join("zero");
    for (flag, value, what) in [("--max-steps", "0", "at least 1"), ("--epochs", "0", "positive"), ("--lr", "0", "positive"), ("--max-seq-len", "0", "at least 1")] {
        let e = fails(swegym().args(["train", "--device", "cpu", flag, value, "--model"]).arg(&tiny).arg("--data").arg(&empty).arg("--out").arg(&zero), 2);
        assert!(e.contains(flag) && e.contains(what), "{flag} {value}: {e}");
    }
    assert!(!zero.exists(), "nothing written for a refused flag");

    let bad_cfg = dir.path().join("bad.toml");
    std::fs::write(&bad_cfg, "[train]\nlora_rank = 8\n").unwrap();
    let e = fails(swegym().args(["train", "--model"]).arg(&tiny).arg("--data").arg(&empty).arg("--out").arg(&out).arg("--config").arg(&bad_cfg), 3);
    assert!(e.contains("bad.toml") && e.contains("lora_rank"), "{e}");

    // an adapter of the tiny model onto SmolLM2: another model size
    let data = dir.path().join("facts.jsonl");
    write_sft(&data, FACTS);
    run_ok(train(&data, &out).args(["--base-model-name", "HuggingFaceTB/SmolLM2-135M-Instruct"]));
    // PEFT's AutoPeftModel loads the base by this name (a .gguf path it cannot).
    let recorded: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(recorded["base_model_name_or_path"], "HuggingFaceTB/SmolLM2-135M-Instruct");
    let logits = |adapter: &Path| {
        let mut cmd = swegym();
        cmd.args(["lm", "logits", "--device", "cpu", "--text", "hi", "--model"]).arg(gguf()).arg("--adapter").arg(adapter);
        cmd
    };
    let e = fails(&mut logits(&out), 3);
    assert!(e.contains("adapter_model.safetensors") && e.contains("another architecture"), "{e}");

    // rank mismatch: the config says 8, the tensors have 16
    let cfg_path = out.join("adapter_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["r"] = 8.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut cmd = swegym();
    cmd.args(["lm", "logits", "--device", "cpu", "--text", "hi", "--model"]).arg(&tiny).arg("--adapter").arg(&out);
    let e = fails(&mut cmd, 3);
    assert!(e.contains("rank mismatch") && e.contains("adapter_model.safetensors"), "{e}");
}

#[test]
fn adapters_interoperate_with_peft_both_ways() {
    if !slow("adapters_interoperate_with_peft_both_ways") {
        return;
    }
    let Some((python, base)) = peft_reference("adapters_interoperate_with_peft_both_ways") else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("facts.jsonl");
    write_sft(&data, FACTS);
    let adapter = dir.path().join("ours");
    // a large learning rate so the trained B matrices move the logits visibly
    run_ok(
        swegym()
            .args(["train", "--device", "cpu", "--threads", "2", "--max-steps", "4", "--lr", "5e-3", "--model"])
            .arg(&base)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&adapter),
    );
    assert_peft_interop(&python, &base, &adapter, dir.path());
}

/// Without a terminal (the test captures stderr) training says it started and then prints a
/// plain progress line at the `--progress-every` interval, with no escape codes; a model whose
/// weights hold NaN stops at load with exit 3, naming the tensor.
#[test]
fn progress_without_a_terminal_and_broken_weights() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_model(dir.path());
    let data = dir.path().join("facts.jsonl");
    write_sft(&data, FACTS);
    let cfg = dir.path().join("train.toml");
    std::fs::write(&cfg, "[train]\nepochs = 400\ngrad_accum = 1\nthreads = 1\n").unwrap();
    let started = std::time::Instant::now();
    let out = run_ok(
        swegym()
            .args(["--progress-every", "1", "train", "--device", "cpu", "--model"])
            .arg(&tiny)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(dir.path().join("adapter"))
            .arg("--config")
            .arg(&cfg),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[train] started"), "{stderr}");
    let lines = stderr.lines().filter(|l| l.starts_with("[train] ") && l.contains("elapsed")).count();
    let seconds = started.elapsed().as_secs();
    // 1200 steps of the tiny model: ~7 s here, so several 1-s lines.
    assert!(seconds >= 2, "training was too short ({seconds} s) to show the interval; raise `epochs`");
    assert!(lines >= 1, "{seconds} s of training printed no progress line:\n{stderr}");
    assert!(!stderr.contains('\u{1b}'), "escape codes in a piped stderr:\n{stderr}");
    eprintln!("{seconds} s, {lines} progress lines");

    // NaN in a weight: exit 3 at load, naming the tensor.
    let weights = tiny.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let start = header["model.norm.weight"]["data_offsets"][0].as_u64().unwrap() as usize + 8 + header_len;
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&weights, bytes).unwrap();
    let e = fails(swegym().args(["chat", "--model"]).arg(&tiny).arg("hello"), 3);
    assert!(e.contains("tensor model.norm.weight is not all finite numbers (1 NaN or infinite)"), "{e}");
}

/// A run whose loss stops being a finite number (here: a learning rate of 1e30) stops with
/// exit 3 naming the step, and writes no adapter.
#[test]
fn a_diverging_run_stops_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_model(dir.path());
    let data = dir.path().join("facts.jsonl");
    write_sft(&data, &FACTS[..1]);
    let cfg = dir.path().join("train.toml");
    std::fs::write(&cfg, "[train]\nepochs = 6\ngrad_accum = 1\nlearning_rate = 1e30\nmax_grad_norm = 1e30\nwarmup_steps = 1\n").unwrap();
    let adapter = dir.path().join("adapter");
    let e = fails(
        swegym().args(["train", "--device", "cpu", "--model"]).arg(&tiny).arg("--data").arg(&data).arg("--out").arg(&adapter).arg("--config").arg(&cfg),
        3,
    );
    assert!(e.contains("not a finite number") && e.contains("step "), "{e}");
    assert!(!adapter.join("adapter_model.safetensors").exists(), "no adapter from a diverged run");
}
