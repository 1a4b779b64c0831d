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
