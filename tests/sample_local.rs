//! End to end: `swegym sample --policy local` — the real SmolLM2 GGUF through our batched
//! engine acts in real bwrap sandboxes on a real SWE-bench task; every rollout ends with an
//! exit reason and lands in the Parquet (read back by pyarrow).

mod common;

#[test]
fn smollm2_completes_rollouts_through_the_local_policy() {
    if !common::slow("smollm2_completes_rollouts_through_the_local_policy") {
        return;
    }
    let gguf = common::cache_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.exists(), "{} missing: run `make setup`", gguf.display());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rollouts.parquet");
    common::run_ok(
        common::swegym()
            .args(["sample", "--dataset", "datasets/swebench-lite-marshmallow/tasks.jsonl", "--policy", "local", "--model"])
            .arg(&gguf)
            .args(["--instance-ids", "marshmallow-code__marshmallow-1359", "-k", "2", "-j", "2", "--max-turns", "2"])
            .args(["--max-tokens", "48", "--temperature", "0.7", "--device", "cpu", "--out"])
            .arg(&out),
    );
    let rows = common::read_parquet_with_pyarrow(&out);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let reasons = ["submitted", "max_turns", "stuck_in_loop", "context_exceeded", "format_error"];
    for r in rows {
        assert!(r["policy_id"].as_str().unwrap().starts_with("local:SmolLM2"), "{r}");
        assert!(reasons.contains(&r["exit_reason"].as_str().unwrap()), "model output must end the episode for a model reason: {r}");
        assert!(r["completion_tokens"].as_u64().unwrap() > 0, "{r}");
        assert!(r["messages"].as_array().unwrap().iter().any(|m| m["role"] == "assistant"), "{r}");
    }
}

#[test]
fn bench_sample_compares_concurrencies_with_a_bf16_prefill() {
    // `swegym bench sample`: the same rollouts at -j 1 and -j 2 through one batched engine
    // each, its JSON rows on stdout (rate, ratio, when the last rollout started, the
    // engine's counters), here with the prefills in bf16 (the task's ~1900-token prompt
    // and the observations take the bf16 path; a CPU without bf16 emulates it)
    if !common::slow("bench_sample_compares_concurrencies_with_a_bf16_prefill") {
        return;
    }
    let gguf = common::cache_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.exists(), "{} missing: run `make setup`", gguf.display());
    let tmp = tempfile::tempdir().unwrap();
    let out = common::run_ok(
        common::swegym()
            .args(["bench", "sample", "--dataset", "datasets/swebench-lite-marshmallow/tasks.jsonl", "--policy", "local", "--model"])
            .arg(&gguf)
            .args(["--instance-ids", "marshmallow-code__marshmallow-1359", "-k", "2", "--max-turns", "2", "--max-tokens", "24"])
            .args(["--temperature", "0.7", "--device", "cpu", "--prefill-dtype", "bf16", "--compare-jobs", "1", "2", "--out"])
            .arg(tmp.path()),
    );
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.iter().map(|r| r["jobs"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    for r in &rows {
        assert_eq!(r["rollouts"], 2, "{r}");
        let (wall, last) = (r["wall_seconds"].as_f64().unwrap(), r["last_start_seconds"].as_f64().unwrap());
        assert!(last >= 0.0 && last < wall, "{r}");
        let engine = &r["engine"];
        assert!(engine["prefill_tokens"].as_u64().unwrap() > 16 && engine["decoded_tokens"].as_u64().unwrap() > 0, "{r}");
        assert!(r["rollouts_per_hour"].as_f64().unwrap() > 0.0, "{r}");
    }
    // -j 1 runs the second rollout after the first; -j 2 starts both at once
    assert!(rows[0]["last_start_seconds"].as_f64().unwrap() > rows[1]["last_start_seconds"].as_f64().unwrap(), "{rows:?}");
    assert_eq!(rows[0]["ratio"], 1.0);
    for reason in rows[1]["exit_reasons"].as_object().unwrap().keys() {
        assert!(["submitted", "max_turns", "stuck_in_loop", "context_exceeded", "format_error"].contains(&reason.as_str()), "{rows:?}");
    }
    assert!(tmp.path().join("j1.parquet").exists() && tmp.path().join("j2.parquet").exists());
}
