//! End-to-end tests of `swegym run`, `report` and `export`: bad configs fail before any
//! work naming the key or path (fast); the smoke config runs the whole RFT loop on real
//! parts (bubblewrap sandboxes, pytest, a tiny real-architecture model, the LoRA trainer),
//! its SFT export is read by pyarrow in the TRL layout, and a run killed with SIGKILL
//! mid-iteration resumes to the same metrics as an uninterrupted one; with a `[verifier]`
//! (an adapter trained here by `swegym verifier train`) the loop scores rollouts, keeps and
//! submits the verifier's picks and reports Pass@1 / Pass@k / Best@k / Random@k as the
//! scores and labels imply, and a rerun does not score again. The smoke tests are slow (they
//! build an environment and train): SWEGYM_SLOW_TESTS=1.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{cache_root, fails, read_parquet_with_pyarrow, repo_root, run_ok, slow, swegym};
use serde_json::Value;
use swegym_schema::{ExitReason, Message, Rollout};

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A config with absolute paths into the repo, with `edit` applied to its text.
fn config_in(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let repo = repo_root();
    let text = format!(
        r#"
[run]
iterations = 1
[dataset.train]
path = "{ds}"
split = "train"
limit = 1
[dataset.test]
path = "{ds}"
split = "test"
limit = 1
[policy]
model = "{model}"
[train]
max_steps = 1
"#,
        ds = repo.join("datasets/synth-pypi").display(),
        model = cache_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf").display(),
    );
    let path = dir.join("c.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// (what, edit of the config text, fragments the error must contain)
type BadConfig = (&'static str, Box<dyn Fn(String) -> String>, Vec<String>);

#[test]
fn bad_configs_fail_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let model = cache_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf").display().to_string();
    let marshmallow = repo_root().join("datasets/swebench-lite-marshmallow").display().to_string();
    let synth = repo_root().join("datasets/synth-pypi").display().to_string();
    // a verifier adapter folder: only its files are checked before the run starts
    let adapter = tmp.path().join("verifier-adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::write(adapter.join("adapter_config.json"), r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}"#).unwrap();
    std::fs::write(adapter.join("adapter_model.safetensors"), b"weights").unwrap();
    let adapter = adapter.display().to_string();
    let cases: Vec<BadConfig> = vec![
        ("unknown key", Box::new(|t: String| t.replace("[train]\n", "[train]\nlearning_rat = 0.1\n")), vec!["unknown field `learning_rat`".into()]),
        ("unknown table", Box::new(|t: String| t + "[trainer]\nx = 1\n"), vec!["unknown field `trainer`".into()]),
        (
            "missing model file",
            Box::new(move |t: String| t.replace(&model, "/nonexistent/model.gguf")),
            vec!["[policy] model".into(), "/nonexistent/model.gguf".into()],
        ),
        (
            "dataset without the split",
            Box::new(move |t: String| t.replacen(&synth, &marshmallow, 2)),
            vec!["[dataset.train] split".into(), "has no split \"train\"".into(), "splits there: tasks".into()],
        ),
        (
            "verifier adapter missing",
            Box::new(|t: String| t + "[verifier]\nadapter = \"/nonexistent/verifier\"\nselect_keep = true\n"),
            vec!["[verifier] adapter".into(), "/nonexistent/verifier".into()],
        ),
        (
            "verifier submit with one held-out rollout",
            Box::new(move |t: String| t + &format!("[verifier]\nadapter = \"{adapter}\"\nselect_submit = true\n")),
            vec!["[verifier] select_submit".into(), "[eval] rollouts_per_task".into()],
        ),
    ];
    for (what, edit, want) in cases {
        let cfg = config_in(tmp.path(), edit);
        let run_dir = tmp.path().join(format!("run-{}", what.replace(' ', "-")));
        let started = Instant::now();
        let out = swegym().args(["run"]).arg(&cfg).arg("--run-dir").arg(&run_dir).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{what}: exit code, stderr:\n{stderr}");
        for w in &want {
            assert!(stderr.contains(w.as_str()), "{what}: {stderr:?} lacks {w:?}");
        }
        assert!(stderr.contains("c.toml"), "{what}: the error names the config file: {stderr}");
        assert!(!run_dir.exists(), "{what}: no run directory is made for a bad config");
        assert!(started.elapsed() < Duration::from_secs(30), "{what}: failed fast");
    }
}

/// The tiny model the smoke config names, made once (SmolLM2's tokenizer and template).
fn ensure_tiny_model() {
    let out = cache_root().join("models/tiny-smollm2");
    if out.join("config.json").exists() {
        return;
    }
    let gguf = cache_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.exists(), "{} missing: run `make setup`", gguf.display());
    run_ok(swegym().args(["lm", "tiny", "--tokenizer-from"]).arg(&gguf).arg("--out").arg(&out));
}

/// The metrics of a run: counts and rates that must not depend on timing or interruptions
/// (exactly), and the numbers that may (token counts and losses: observations carry
/// pytest's timings, e.g. "passed in 0.52s", so two runs' oracle trajectories differ in a
/// few digits), wall times left out.
fn run_metrics(run: &Path) -> (Vec<Value>, Vec<(String, f64)>) {
    let mut approx = Vec::new();
    let mut exact = vec![read_json(&run.join("zero-shot/metrics.json"))];
    for i in 0..2 {
        exact.push(read_json(&run.join(format!("iter-{i:03}/metrics.json"))));
    }
    for (k, v) in exact.iter_mut().enumerate() {
        split_metrics(&format!("{k}"), v, &mut approx);
    }
    (exact, approx)
}

fn split_metrics(path: &str, v: &mut Value, approx: &mut Vec<(String, f64)>) {
    const TIMING: [&str; 3] = ["wall_s", "stage_seconds", "tokens_per_s"];
    const NUMERIC: [&str; 5] = ["prompt_tokens", "completion_tokens", "tokens", "loss_first", "loss_last"];
    if let Value::Object(map) = v {
        for key in TIMING {
            map.remove(key);
        }
        for key in NUMERIC {
            if let Some(x) = map.remove(key) {
                approx.push((format!("{path}.{key}"), x.as_f64().unwrap_or(-1.0)));
            }
        }
        for (key, child) in map.iter_mut() {
            split_metrics(&format!("{path}.{key}"), child, approx);
        }
    }
}

fn assert_same_metrics(a: &Path, b: &Path) {
    let (exact_a, approx_a) = run_metrics(a);
    let (exact_b, approx_b) = run_metrics(b);
    assert_eq!(exact_a, exact_b, "the runs' counts and rates differ");
    assert_eq!(approx_a.len(), approx_b.len());
    for ((key, x), (_, y)) in approx_a.iter().zip(&approx_b) {
        let close = (x - y).abs() <= 0.01 * x.abs().max(1.0);
        assert!(close, "{key}: {x} vs {y}");
    }
}

fn smoke(run_dir: &Path) -> std::process::Command {
    let mut cmd = swegym();
    cmd.args(["run", "configs/smoke.toml", "--run-dir"]).arg(run_dir);
    cmd
}

/// Starts the smoke run and SIGKILLs it once `marker` (relative to the run dir) exists.
fn run_until_then_kill(run_dir: &Path, marker: &str) {
    let mut child = smoke(run_dir).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    loop {
        if run_dir.join(marker).exists() {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before {marker} appeared");
        }
        assert!(started.elapsed() < Duration::from_secs(900), "{marker} never appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn smoke_run_end_to_end_then_killed_and_resumed() {
    if !slow("smoke_run_end_to_end_then_killed_and_resumed") {
        return;
    }
    ensure_tiny_model();
    let tmp = tempfile::tempdir().unwrap();

    // 1. Uninterrupted.
    let a = tmp.path().join("a");
    let out = run_ok(&mut smoke(&a));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("zero-shot") && stdout.contains("iter 2"), "the summary table: {stdout}");
    let info = read_json(&a.join("run.json"));
    assert_eq!(info["config_hash"].as_str().unwrap().len(), 64);
    assert_eq!(info["seed"], 0);
    assert!(info["git_revision"].as_str().is_some_and(|r| !r.is_empty()));
    for f in ["config.toml", "config.json", "zero-shot/eval.parquet", "report.md", "metrics.parquet", "resolve_rate.svg", "empty_patch_rate.svg"] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    for i in 0..2 {
        let it = a.join(format!("iter-{i:03}"));
        for f in ["rollouts.parquet", "filter.json", "sft.parquet", "eval.parquet", "metrics.json"] {
            assert!(it.join(f).exists(), "iter {i}: {f} missing");
        }
        for stage in ["sample", "filter", "export", "train", "eval"] {
            assert!(it.join(format!("{stage}.manifest.json")).exists(), "iter {i}: {stage} manifest missing");
        }
    }
    let m0 = read_json(&a.join("iter-000/metrics.json"));
    assert_eq!(m0["train"]["rollouts"], 2);
    assert_eq!(m0["warm_start"]["rollouts"], 2);
    assert_eq!(m0["warm_start"]["resolved"], 2, "the oracle resolves both train tasks: {m0}");
    assert_eq!(m0["kept"], 2, "{m0}");
    assert_eq!(m0["training"]["trained"], true);
    assert_eq!(m0["training"]["steps"], 2);
    assert!(m0["training"]["loss_first"].as_f64().is_some_and(f64::is_finite), "{m0}");
    assert!(a.join("iter-000/adapter/adapter_config.json").exists() && a.join("iter-000/adapter/adapter_model.safetensors").exists());
    assert_eq!(m0["test"]["rollouts"], 1);
    assert_eq!(m0["test"]["policy"], "base+iter-000/adapter");
    let m1 = read_json(&a.join("iter-001/metrics.json"));
    assert_eq!(m1["kept_cumulative"].as_u64().unwrap(), 2 + m1["kept"].as_u64().unwrap());
    assert_eq!(m1["train"]["policy"], "base+iter-000/adapter");
    // metrics.parquet: one row per (policy, split), read by pyarrow.
    let rows = read_parquet_with_pyarrow(&a.join("metrics.parquet"));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 5, "zero-shot test + (train, test) per iteration: {rows:?}");
    assert!(std::fs::read_to_string(a.join("resolve_rate.svg")).unwrap().contains("<polyline"));

    // 2. The SFT export, read by pyarrow in the TRL layout.
    let sft = tmp.path().join("sft.parquet");
    run_ok(swegym().args(["export"]).arg(&a).arg("--out").arg(&sft));
    check_trl_parquet(&sft, 2 + m1["kept"].as_u64().unwrap() as usize);
    let only0 = tmp.path().join("sft0.jsonl");
    run_ok(swegym().args(["export"]).arg(&a).arg("--out").arg(&only0).args(["--iterations", "0"]));
    assert_eq!(std::fs::read_to_string(&only0).unwrap().lines().count(), 2);
    // Iteration 1 kept nothing (the tiny policy resolves nothing): exporting it alone writes
    // no empty file (which `datasets.load_dataset` cannot load) and exits 3.
    assert_eq!(m1["kept"], 0, "configs/smoke.toml's tiny policy resolves nothing");
    let only1 = tmp.path().join("sft1.parquet");
    let e = fails(swegym().args(["export"]).arg(&a).arg("--out").arg(&only1).args(["--iterations", "1"]), 3);
    assert!(e.contains("kept no SFT records") && e.contains("iterations with records: [0]"), "{e}");
    assert!(!only1.exists());

    // 2b. That export as the warm start of another run (source = "sft"): its records join
    //     iteration 0's SFT data as they are and the adapter trains on them.
    let c = tmp.path().join("c");
    let smoke_text = std::fs::read_to_string(repo_root().join("configs/smoke.toml")).unwrap();
    let warm = smoke_text.split("[warm_start]").next().unwrap().to_string()
        + &format!("[warm_start]\nsource = \"sft\"\npath = \"{}\"\n", sft.display());
    let warm = warm.replace("iterations = 2 ", "iterations = 1 ").replace("\"../datasets", &format!("\"{}/datasets", repo_root().display()));
    let warm_cfg = tmp.path().join("warm.toml");
    std::fs::write(&warm_cfg, warm).unwrap();
    run_ok(swegym().args(["run"]).arg(&warm_cfg).arg("--run-dir").arg(&c));
    let mc = read_json(&c.join("iter-000/metrics.json"));
    assert_eq!(mc["warm_start_records"], 2, "{mc}");
    assert_eq!(mc["kept"], 2, "{mc}");
    assert_eq!(mc["training"]["trained"], true, "{mc}");
    assert!(!c.join("iter-001").exists());

    // 3. `swegym report` on the finished run; rerunning `swegym run` does nothing new.
    let report = run_ok(swegym().args(["report"]).arg(&a));
    assert!(String::from_utf8_lossy(&report.stdout).contains("Held-out split"));
    let before = run_metrics(&a);
    let rerun = run_ok(&mut smoke(&a));
    assert!(String::from_utf8_lossy(&rerun.stdout).contains("done earlier"));
    assert_eq!(run_metrics(&a), before, "a finished run is left as it is");

    // 4. Killed three times mid-iteration — between stages of iteration 0, inside its
    //    training (after the step-1 checkpoint), while iteration 1 samples — and resumed:
    //    the same metrics as the uninterrupted run.
    let b = tmp.path().join("b");
    run_until_then_kill(&b, "iter-000/warm_start.manifest.json");
    run_until_then_kill(&b, "iter-000/adapter.partial/checkpoint");
    assert!(!b.join("iter-000/metrics.json").exists());
    run_until_then_kill(&b, "iter-001/rollouts.partial.jsonl");
    let train_summary = read_json(&b.join("iter-000/adapter/train_summary.json"));
    assert_eq!(train_summary["resumed_from_step"], 1, "training resumed from its checkpoint: {train_summary}");
    let adapter_dir = train_summary["adapter_dir"].as_str().unwrap_or_default();
    assert!(adapter_dir.ends_with("iter-000/adapter"), "the summary names the adapter where it lives: {adapter_dir}");
    let resumed = run_ok(&mut smoke(&b));
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("done earlier"));
    assert_same_metrics(&a, &b);
    // Nothing duplicated: one row per (task, sample) in each rollouts file.
    for f in ["iter-000/rollouts.parquet", "iter-001/rollouts.parquet", "iter-000/warm_start.parquet"] {
        let rows = read_parquet_with_pyarrow(&b.join(f));
        assert_eq!(rows.as_array().unwrap().len(), 2, "{f}");
    }
    // A changed config is refused on resume, naming what changed.
    let changed = tmp.path().join("changed.toml");
    let text = std::fs::read_to_string(repo_root().join("configs/smoke.toml")).unwrap().replace("seed = 0 ", "seed = 1 ");
    std::fs::write(&changed, text.replace("\"../datasets", &format!("\"{}/datasets", repo_root().display()))).unwrap();
    let out = swegym().args(["run"]).arg(&changed).arg("--run-dir").arg(&b).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("different config") && stderr.contains("run.seed"), "{stderr}");
}

/// pyarrow reads `path` with `messages: list<struct<role: string, content: string>>`, each
/// row a whole chat ending in an assistant turn; `datasets` loads it too when installed.
fn check_trl_parquet(path: &Path, n_rows: usize) {
    let python = cache_root().join("venv/bin/python");
    let script = r#"
import sys, json, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
out = {"schema": {f.name: str(f.type) for f in t.schema}, "rows": t.to_pylist()}
try:
    import datasets
    d = datasets.load_dataset("parquet", data_files=sys.argv[1], split="train")
    out["datasets_rows"] = len(d)
    out["datasets_first_role"] = d[0]["messages"][0]["role"]
except ImportError:
    pass
print(json.dumps(out))
"#;
    let out = std::process::Command::new(&python).arg("-c").arg(script).arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema"]["messages"], "list<item: struct<role: string not null, content: string not null>>", "{}", v["schema"]);
    for col in ["instance_id", "iteration", "source", "resolved", "n_turns"] {
        assert!(v["schema"].get(col).is_some(), "column {col} missing: {}", v["schema"]);
    }
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), n_rows);
    for r in rows {
        let messages = r["messages"].as_array().unwrap();
        assert_eq!(messages[0]["role"], "system");
        assert_eq!(messages[1]["role"], "user");
        assert_eq!(messages.last().unwrap()["role"], "assistant");
        assert!(messages.iter().all(|m| ["system", "user", "assistant"].contains(&m["role"].as_str().unwrap())));
        assert_eq!(r["resolved"], true);
        assert_eq!(r["n_turns"].as_u64().unwrap() as usize, messages.iter().filter(|m| m["role"] == "assistant").count());
    }
    if let Some(n) = v.get("datasets_rows") {
        assert_eq!(n.as_u64().unwrap() as usize, n_rows);
        assert_eq!(v["datasets_first_role"], "system");
    }
}

/// A graded judge-training trajectory: a few bash steps, then finish.
fn judge_rollout(instance: &str, sample_idx: u32, resolved: bool) -> Rollout {
    let mut messages = vec![
        Message::system("You are a helpful assistant that can interact with a computer to solve tasks."),
        Message::user(format!("<uploaded_files>\n/testbed\n</uploaded_files>\n<pr_description>\nFix {instance}.\n</pr_description>")),
    ];
    for s in 0..=sample_idx {
        messages.push(Message::assistant(format!("<function=execute_bash>\n<parameter=command>sed -n {s},+3p src/lib.py</parameter>\n</function>")));
        messages.push(Message::user(format!("EXECUTION RESULT of [execute_bash]:\nreturn {s}")));
    }
    messages.push(Message::assistant("<function=finish>\n</function>"));
    Rollout {
        instance_id: instance.into(),
        sample_idx,
        iteration: 0,
        policy_id: if resolved { "oracle" } else { "local:tiny" }.into(),
        turns: sample_idx + 2,
        messages,
        patch: format!("diff --git a/src/lib.py b/src/lib.py\n+return {sample_idx}\n"),
        empty_patch: false,
        exit_reason: ExitReason::Submitted,
        prompt_tokens: 10,
        completion_tokens: 5,
        wall_seconds: 1.0,
        temperature: 0.0,
        seed: 0,
        error: None,
        resolved: Some(resolved),
        status: Some(if resolved { "resolved" } else { "unresolved" }.into()),
    }
}

/// A verifier adapter for the tiny model: judge data from graded rollouts, then `swegym
/// verifier train` for 2 steps.
fn train_tiny_verifier(dir: &Path) -> PathBuf {
    let model = cache_root().join("models/tiny-smollm2");
    let rollouts: Vec<Rollout> = (0..3).flat_map(|t| [judge_rollout(&format!("t-{t}"), 0, true), judge_rollout(&format!("t-{t}"), 1, false)]).collect();
    let graded = dir.join("judge_rollouts.parquet");
    swegym_schema::rollout::write_rollouts(&graded, &rollouts).unwrap();
    let data = dir.join("judge_sft.parquet");
    run_ok(swegym().args(["verifier", "data", "--model"]).arg(&model).arg("--rollouts").arg(&graded).arg("--out").arg(&data));
    let adapter = dir.join("verifier-adapter");
    run_ok(swegym().args(["verifier", "train", "--device", "cpu", "--threads", "2", "--max-steps", "2", "--model"]).arg(&model).arg("--data").arg(&data).arg("--out").arg(&adapter));
    assert!(adapter.join("adapter_model.safetensors").exists());
    adapter
}

/// (Pass@1, Pass@k, Best@k, Random@k) recomputed from a held-out rollouts file and its scores
/// file, both read by pyarrow: rollout 0; any; the highest p_yes (ties: the lower sample
/// index); the share resolved — averaged over tasks.
fn at_k_from_files(eval: &Path, scores: &Path) -> (f64, f64, f64, f64) {
    let p_yes: std::collections::BTreeMap<(String, u64), f64> = read_parquet_with_pyarrow(scores)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| ((r["instance_id"].as_str().unwrap().to_string(), r["sample_idx"].as_u64().unwrap()), r["p_yes"].as_f64().unwrap()))
        .collect();
    let mut tasks: std::collections::BTreeMap<String, Vec<(u64, bool, f64)>> = std::collections::BTreeMap::new();
    for r in read_parquet_with_pyarrow(eval).as_array().unwrap() {
        let id = r["instance_id"].as_str().unwrap().to_string();
        let idx = r["sample_idx"].as_u64().unwrap();
        let p = p_yes[&(id.clone(), idx)];
        tasks.entry(id).or_default().push((idx, r["resolved"] == true, p));
    }
    let n = tasks.len() as f64;
    let (mut pass1, mut passk, mut best, mut random) = (0.0, 0.0, 0.0, 0.0);
    for rs in tasks.values_mut() {
        rs.sort_by_key(|r| r.0);
        pass1 += f64::from(u8::from(rs[0].1));
        passk += f64::from(u8::from(rs.iter().any(|r| r.1)));
        let top = rs.iter().fold(rs[0], |t, r| if r.2 > t.2 { *r } else { t });
        best += f64::from(u8::from(top.1));
        random += rs.iter().filter(|r| r.1).count() as f64 / rs.len() as f64;
    }
    (pass1 / n, passk / n, best / n, random / n)
}

fn mtime(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn smoke_run_with_a_verifier_keeps_and_submits_its_picks() {
    if !slow("smoke_run_with_a_verifier_keeps_and_submits_its_picks") {
        return;
    }
    ensure_tiny_model();
    let tmp = tempfile::tempdir().unwrap();
    let adapter = train_tiny_verifier(tmp.path());

    // The smoke config, one iteration, two held-out rollouts per task, two oracle
    // trajectories per train task (same gold patch: dedup and the cap of 1 choose among them
    // by p(YES)), the verifier keeping and submitting.
    let smoke_text = std::fs::read_to_string(repo_root().join("configs/smoke.toml")).unwrap();
    let text = smoke_text
        .replace("iterations = 2 ", "iterations = 1 ")
        .replace("rollouts_per_task = 1       # rollouts per held-out task", "rollouts_per_task = 2       # rollouts per held-out task")
        .replace("max_per_instance = 2 ", "max_per_instance = 1 ")
        .replace("rollouts_per_task = 1     # oracle", "rollouts_per_task = 2     # oracle")
        .replace("\"../datasets", &format!("\"{}/datasets", repo_root().display()))
        + &format!("\n[verifier]\nadapter = \"{}\"\nselect_keep = true\nselect_submit = true\n", adapter.display());
    assert!(text.contains("rollouts_per_task = 2       # rollouts per held-out task") && text.contains("rollouts_per_task = 2     # oracle"), "the smoke config changed: {text}");
    let cfg = tmp.path().join("verified.toml");
    std::fs::write(&cfg, &text).unwrap();
    let run = tmp.path().join("v");
    let out = run_ok(swegym().arg("run").arg(&cfg).arg("--run-dir").arg(&run));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("verifier ") && stdout.contains("picks keep (filter order), submit (Best@k)"), "{stdout}");

    // Scores next to the rollouts, each with a manifest.
    for f in ["zero-shot/eval_scores.parquet", "zero-shot/eval_score.manifest.json", "iter-000/verifier_scores.parquet", "iter-000/score.manifest.json", "iter-000/eval_scores.parquet", "iter-000/eval_score.manifest.json"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let it = run.join("iter-000");
    let train_scores = read_parquet_with_pyarrow(&it.join("verifier_scores.parquet"));
    let train_scores = train_scores.as_array().unwrap();
    assert_eq!(train_scores.len(), 2 + 4, "the policy's 2 rollouts and the 4 oracle ones are scored");
    assert!(train_scores.iter().all(|r| r["p_yes"].as_f64().is_some_and(|p| (0.0..=1.0).contains(&p))));

    // select_keep: per task, the kept rollout is the highest-p(YES) resolved one.
    let filter = read_json(&it.join("filter.json"));
    let decisions = filter["decisions"].as_array().unwrap();
    assert_eq!(filter["rules"]["prefer"], "verifier_score");
    let mut by_task: std::collections::BTreeMap<&str, Vec<&Value>> = std::collections::BTreeMap::new();
    for d in decisions {
        assert!(d["p_yes"].as_f64().is_some(), "every filter input has its score: {d}");
        by_task.entry(d["instance_id"].as_str().unwrap()).or_default().push(d);
    }
    let resolved_of: std::collections::BTreeMap<(String, String, u64), bool> = ["rollouts.parquet", "warm_start.parquet"]
        .iter()
        .flat_map(|f| read_parquet_with_pyarrow(&it.join(f)).as_array().unwrap().clone())
        .map(|r| ((r["policy_id"].as_str().unwrap().to_string(), r["instance_id"].as_str().unwrap().to_string(), r["sample_idx"].as_u64().unwrap()), r["resolved"] == true))
        .collect();
    for (task, ds) in &by_task {
        let kept: Vec<&&Value> = ds.iter().filter(|d| d["decision"] == "keep").collect();
        assert_eq!(kept.len(), 1, "{task}: one kept (cap 1): {ds:?}");
        let resolved_p: Vec<f64> = ds
            .iter()
            .filter(|d| resolved_of[&(d["policy_id"].as_str().unwrap().to_string(), task.to_string(), d["sample_idx"].as_u64().unwrap())])
            .map(|d| d["p_yes"].as_f64().unwrap())
            .collect();
        assert_eq!(resolved_p.len(), 2, "{task}: both oracle trajectories resolve: {ds:?}");
        let best = resolved_p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(kept[0]["p_yes"].as_f64().unwrap(), best, "{task}: the kept one has the highest p(YES) of the resolved: {ds:?}");
    }

    // Held-out: 2 rollouts per task, rollout 0 greedy, rollout 1 at best_of_temperature.
    let eval_rows = read_parquet_with_pyarrow(&it.join("eval.parquet"));
    let temps: Vec<(u64, f64)> = eval_rows.as_array().unwrap().iter().map(|r| (r["sample_idx"].as_u64().unwrap(), r["temperature"].as_f64().unwrap())).collect();
    assert_eq!(temps, vec![(0, 0.0), (1, 0.5)]);

    // Metrics: the numbers the labels and scores imply, the verifier's pick submitted.
    let check_at_k = |folder: &str, at_k: &Value| {
        let (pass1, passk, best, random) = at_k_from_files(&run.join(folder).join("eval.parquet"), &run.join(folder).join("eval_scores.parquet"));
        let close = |key: &str, want: f64| assert!((at_k[key].as_f64().unwrap() - want).abs() < 1e-9, "{folder} {key}: {at_k} vs {want}");
        close("pass_at_1", pass1);
        close("pass_at_k", passk);
        close("best_at_k", best);
        close("random_at_k", random);
        close("submitted_resolve_rate", best);
        assert_eq!((at_k["k"].as_u64(), at_k["instances"].as_u64(), at_k["submitted_by"].as_str()), (Some(2), Some(1), Some("verifier")), "{at_k}");
    };
    let zero = read_json(&run.join("zero-shot/metrics.json"));
    check_at_k("zero-shot", &zero["at_k"]);
    let m0 = read_json(&it.join("metrics.json"));
    check_at_k("iter-000", &m0["test"]["at_k"]);
    assert!(m0["train"].get("at_k").is_none(), "the train split has no k-rollout metrics: {m0}");
    assert!(m0["stage_seconds"].get("score").is_some() && m0["stage_seconds"].get("eval_score").is_some(), "{m0}");
    let picks = read_json(&it.join("eval_score.manifest.json"))["details"]["picks"].clone();
    assert_eq!(picks.as_object().map(|p| p.len()), Some(1), "one pick per held-out task: {picks}");

    // The report shows them, in the table and in metrics.parquet.
    let report = run_ok(swegym().arg("report").arg(&run));
    let report_out = String::from_utf8_lossy(&report.stdout);
    assert!(report_out.contains("pass@1 %") && report_out.contains("best@2 %") && report_out.contains("random@2 %"), "{report_out}");
    let rows = read_parquet_with_pyarrow(&run.join("metrics.parquet"));
    for r in rows.as_array().unwrap() {
        if r["split"] == "test" {
            assert_eq!(r["k"], 2, "{r}");
            assert!(r["best_at_k"].as_f64().is_some() && r["pass_at_1"].as_f64().is_some(), "{r}");
        } else {
            assert_eq!(r["best_at_k"], Value::Null, "{r}");
        }
    }

    // Stopped after the scoring stages (metrics not yet written): a rerun resumes without
    // scoring again and writes the same metrics.
    let scored = ["zero-shot/eval_scores.parquet", "iter-000/verifier_scores.parquet", "iter-000/eval_scores.parquet"];
    let before: Vec<std::time::SystemTime> = scored.iter().map(|f| mtime(&run.join(f))).collect();
    std::fs::remove_file(run.join("zero-shot/metrics.json")).unwrap();
    std::fs::remove_file(it.join("metrics.json")).unwrap();
    let rerun = run_ok(swegym().arg("run").arg(&cfg).arg("--run-dir").arg(&run));
    let rerun_out = String::from_utf8_lossy(&rerun.stdout);
    for stage in ["score", "eval_score"] {
        assert!(rerun_out.lines().any(|l| l.starts_with("iter-000") && l.contains(&format!(" {stage} ")) && l.ends_with("done earlier")), "{stage}: {rerun_out}");
    }
    assert!(rerun_out.lines().any(|l| l.starts_with("zero-shot") && l.contains(" eval_score ") && l.ends_with("done earlier")), "{rerun_out}");
    let after: Vec<std::time::SystemTime> = scored.iter().map(|f| mtime(&run.join(f))).collect();
    assert_eq!(before, after, "no scores file was written again");
    assert_eq!(read_json(&run.join("zero-shot/metrics.json")), zero);
    let m0_again = read_json(&it.join("metrics.json"));
    assert_eq!(m0_again["test"]["at_k"], m0["test"]["at_k"]);
}

/// The curriculum's budget and the warm-start ablation on the smoke config: with
/// `tasks_per_iteration = 1` iteration 0 samples one of the two train tasks and iteration 1
/// the other (not sampled yet beats never solved). The ablation is a fork of that run
/// (`--fork-from`) with `rft_data = "warm_start"` and `keep = "all"`: it copies iteration 0
/// and iteration 1's sampling and filter byte for byte, and iteration 1 trains on the
/// oracle's trajectory of the task it kept, not on the policy's rollout.
#[test]
fn smoke_run_with_a_task_budget_and_the_warm_start_ablation() {
    if !slow("smoke_run_with_a_task_budget_and_the_warm_start_ablation") {
        return;
    }
    ensure_tiny_model();
    let tmp = tempfile::tempdir().unwrap();
    let own = std::fs::read_to_string(repo_root().join("configs/smoke.toml"))
        .unwrap()
        .replace("seed = 0 ", "seed = 0\nadapters = \"continue\" ")
        .replace("rollouts_per_task = 1       # rollouts per train task", "rollouts_per_task = 1\ntasks_per_iteration = 1\ncurriculum = \"skip_solved\" # rollouts per train task")
        .replace("keep = \"resolved\"", "keep = \"all\"")
        .replace("path = \"../datasets/", &format!("path = \"{}/datasets/", repo_root().display()))
        .replace("${SWEGYM_CACHE}", &cache_root().display().to_string());
    assert!(own.contains("tasks_per_iteration = 1") && own.contains("adapters = \"continue\"") && own.contains("keep = \"all\""), "the smoke config changed: {own}");
    let ablation = own.replace("adapters = \"continue\" ", "adapters = \"continue\"\nrft_data = \"warm_start\" ");
    let (config, control) = (tmp.path().join("budget.toml"), tmp.path().join("control.toml"));
    std::fs::write(&config, own).unwrap();
    std::fs::write(&control, ablation).unwrap();
    let run = tmp.path().join("run");
    let out = run_ok(swegym().args(["run"]).arg(&config).arg("--run-dir").arg(&run));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("iter 1: curriculum: 1 of 2 train tasks: 0 solved sometimes, 1 not sampled yet, 0 never solved"), "{stdout}");
    let tasks_of = |run: &Path, file: &str| -> std::collections::BTreeSet<String> {
        swegym_schema::rollout::read_rollouts(&run.join(file)).unwrap().into_iter().map(|r| r.instance_id).collect()
    };
    let (first, second) = (tasks_of(&run, "iter-000/rollouts.parquet"), tasks_of(&run, "iter-001/rollouts.parquet"));
    assert_eq!((first.len(), second.len()), (1, 1), "{first:?} {second:?}");
    assert!(first.is_disjoint(&second), "iteration 1 samples the task iteration 0 did not: {first:?} {second:?}");
    let own_sft = read_parquet_with_pyarrow(&run.join("iter-001/sft.parquet"));
    assert_eq!(own_sft.as_array().unwrap().len(), 1, "{own_sft}");
    assert_ne!(own_sft[0]["source"], "oracle", "{own_sft}");

    // A fork that changes what is sampled is refused before any write.
    let other = tmp.path().join("other.toml");
    std::fs::write(&other, std::fs::read_to_string(&control).unwrap().replace("tasks_per_iteration = 1", "tasks_per_iteration = 2")).unwrap();
    let refused = swegym().args(["run"]).arg(&other).arg("--run-dir").arg(tmp.path().join("refused")).arg("--fork-from").arg(&run).output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{err}");
    assert!(err.contains("sampling.tasks_per_iteration changed") && err.contains("Start a new run"), "{err}");
    assert!(!tmp.path().join("refused").exists(), "a refused fork wrote nothing");

    // The control: forked from the run, it shares everything before iteration 1's export.
    let fork = tmp.path().join("fork");
    let out = run_ok(swegym().args(["run"]).arg(&control).arg("--run-dir").arg(&fork).arg("--fork-from").arg(&run));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("changed run.name, run.rft_data;") && stdout.contains("runs anew from iter-001 export"), "{stdout}");
    for f in ["zero-shot/eval.parquet", "iter-000/rollouts.parquet", "iter-000/sft.parquet", "iter-000/adapter/adapter_model.safetensors", "iter-000/eval.parquet", "iter-001/rollouts.parquet", "iter-001/filter.json"] {
        assert_eq!(std::fs::read(run.join(f)).unwrap(), std::fs::read(fork.join(f)).unwrap(), "{f} is the source's");
    }
    for stage in ["sample", "filter"] {
        assert!(stdout.lines().any(|l| l.starts_with("iter-001") && l.contains(&format!(" {stage} ")) && l.ends_with("done earlier")), "{stage}: {stdout}");
    }
    // Iteration 1 kept the policy's rollout and trained on the oracle's trajectory instead.
    let m1 = read_json(&fork.join("iter-001/metrics.json"));
    assert_eq!(m1["kept"], 1, "{m1}");
    let sft = read_parquet_with_pyarrow(&fork.join("iter-001/sft.parquet"));
    let rows = sft.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{sft}");
    assert_eq!(rows[0]["source"], "oracle", "{}", rows[0]);
    assert_eq!(rows[0]["resolved"], true);
    assert!(second.contains(rows[0]["instance_id"].as_str().unwrap()), "{}", rows[0]);
    let export = read_json(&fork.join("iter-001/export.manifest.json"));
    assert!(export.to_string().contains("the warm-start trajectories of the 1 kept rollouts' tasks"), "{export}");
    assert_eq!(read_json(&fork.join("run.json"))["forked_from"]["diverges_at"], "iter-001 export");
    let report = std::fs::read_to_string(fork.join("report.md")).unwrap();
    assert!(report.contains("Forked from") && report.contains("iter-001 export"), "{report}");
    // The same command again resumes the fork (nothing copied or run anew).
    let again = run_ok(swegym().args(["run"]).arg(&control).arg("--run-dir").arg(&fork).arg("--fork-from").arg(&run));
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(again.contains("resuming") && !again.contains("fork of"), "{again}");
}
