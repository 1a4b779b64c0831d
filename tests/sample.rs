//! End-to-end tests of `swegym sample` on the shipped SWE-bench Lite marshmallow instances
//! (real environments, real bubblewrap sandboxes, real pytest): the oracle resolves both
//! through `--evaluate`, and a run killed with SIGKILL resumes with nothing lost or
//! duplicated. Slow (they build the environments on a fresh machine): SWEGYM_SLOW_TESTS=1.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{read_parquet_with_pyarrow, repo_root, run_ok, slow, swegym};

const DATASET: &str = "datasets/swebench-lite-marshmallow/tasks.jsonl";

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn oracle_resolves_the_marshmallow_instances() {
    if !slow("oracle_resolves_the_marshmallow_instances") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rollouts.parquet");
    let run = run_ok(swegym().args(["sample", "--dataset", DATASET, "--policy", "oracle", "-k", "1", "-j", "2", "--evaluate", "--out"]).arg(&out));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("resolved 2/2"), "{stdout}");
    let rows = read_parquet_with_pyarrow(&out);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert_eq!(r["exit_reason"], "submitted", "{r}");
        assert_eq!(r["resolved"], true, "{}", r["patch"]);
        assert_eq!(r["status"], "resolved");
        assert_eq!(r["empty_patch"], false);
        assert_eq!(r["policy_id"], "oracle");
        // Only the gold patch's files: nothing the environment's install changed (egg-info).
        let files: Vec<&str> = r["patch"].as_str().unwrap().lines().filter_map(|l| l.strip_prefix("diff --git a/")).collect();
        assert!(!files.is_empty() && files.iter().all(|f| f.starts_with("src/marshmallow/") && f.ends_with(".py")), "{files:?}");
        let messages = r["messages"].as_array().unwrap();
        assert_eq!(messages[0]["role"], "system");
        assert_eq!(messages[1]["role"], "user");
        assert!(messages[1]["content"].as_str().unwrap().contains("<pr_description>"));
        // Observations are user messages in OpenHands' form; the last message is the finish call.
        assert!(messages.iter().skip(2).filter(|m| m["role"] == "user").all(|m| m["content"].as_str().unwrap().starts_with("EXECUTION RESULT of [")));
        assert!(messages.last().unwrap()["content"].as_str().unwrap().contains("<function=finish>"));
        // The oracle ran the test file and it passed.
        let test_obs = messages[messages.len() - 2]["content"].as_str().unwrap();
        assert!(test_obs.contains(" passed"), "{test_obs}");
        assert!(!test_obs.contains(" failed"), "{test_obs}");
        assert_eq!(r["turns"].as_u64().unwrap() as usize, messages.iter().filter(|m| m["role"] == "assistant").count());
    }
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("rollouts.summary.json")).unwrap()).unwrap();
    assert_eq!(summary["resolved"], 2);
    assert_eq!(summary["exit_reasons"]["submitted"], 2);
}

#[test]
fn a_slipping_oracle_is_graded_unresolved() {
    // Slipping in every rollout: a near-miss edit of the fix (1359: e.g. `or` → `and`, or the
    // call's arguments swapped) or the fix cut short (1343 has nothing to flip), as each
    // rollout's seed draws. The real grading says unresolved.
    if !slow("a_slipping_oracle_is_graded_unresolved") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rollouts.parquet");
    let run = run_ok(swegym().args(["sample", "--dataset", DATASET, "--policy", "oracle", "--oracle-slip-rate", "1", "-k", "2", "-j", "2", "--evaluate", "--out"]).arg(&out));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("resolved 0/4"), "{stdout}");
    let rows = read_parquet_with_pyarrow(&out);
    for r in rows.as_array().unwrap() {
        assert_eq!((r["policy_id"].as_str(), r["exit_reason"].as_str(), r["resolved"].as_bool()), (Some("oracle-slips1"), Some("submitted"), Some(false)), "{r}");
        // The test run is in every trajectory. (It need not fail: SWE-bench's failing tests
        // come with the test patch, which the agent never sees; 1343 cut short after its
        // first hunk passes the visible test file.)
        let messages = r["messages"].as_array().unwrap();
        assert!(messages[messages.len() - 3]["content"].as_str().unwrap().contains("python -m pytest"));
        assert_eq!(r["status"], if r["empty_patch"] == true { "empty_patch" } else { "unresolved" });
        if r["instance_id"] == "marshmallow-code__marshmallow-1359" && r["empty_patch"] == false {
            let patch = r["patch"].as_str().unwrap();
            assert!(patch.contains("-            or getattr(schema.opts, self.SCHEMA_OPTS_VAR_NAME)\n+") && !patch.contains("+            or getattr(self.root.opts, self.SCHEMA_OPTS_VAR_NAME)\n"), "{patch}");
        }
    }
    // The policy refuses a slip rate it cannot have, and one given to another policy.
    for (policy, rate) in [("oracle", "1.5"), ("replay", "0.5")] {
        let o = swegym().args(["sample", "--dataset", DATASET, "--policy", policy, "--oracle-slip-rate", rate, "--out"]).arg(tmp.path().join("x.parquet")).output().unwrap();
        assert_eq!(o.status.code(), Some(3), "{policy} {rate}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("slip rate") || String::from_utf8_lossy(&o.stderr).contains("--oracle-slip-rate"), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn killed_run_resumes_without_loss_or_duplicates() {
    if !slow("killed_run_resumes_without_loss_or_duplicates") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rollouts.parquet");
    let partial = tmp.path().join("rollouts.partial.jsonl");
    let args = |cmd: &mut std::process::Command| {
        cmd.args(["sample", "--dataset", DATASET, "--policy", "oracle", "-k", "3", "-j", "1", "--out"]).arg(&out);
    };
    // Start, wait for the first durable rollout, then SIGKILL the process.
    let mut cmd = swegym();
    args(&mut cmd);
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while lines(&partial).is_empty() {
        assert!(child.try_wait().unwrap().is_none(), "swegym sample ended before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(600), "no rollout finished in 10 minutes");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = lines(&partial);
    assert!(!before.is_empty() && before.len() < 6, "{} rollouts before the kill", before.len());
    assert!(!out.exists(), "no Parquet is written before the end");

    // Rerun: only the missing rollouts run.
    let mut cmd = swegym();
    args(&mut cmd);
    let run = run_ok(&mut cmd);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains(&format!("6 rollouts ({} run now, {} resumed)", 6 - before.len(), before.len())), "{stdout}");
    let rows = read_parquet_with_pyarrow(&out);
    let rows = rows.as_array().unwrap();
    let keys: BTreeSet<(String, u64)> = rows.iter().map(|r| (r["instance_id"].as_str().unwrap().to_string(), r["sample_idx"].as_u64().unwrap())).collect();
    assert_eq!((rows.len(), keys.len()), (6, 6), "one row per (instance, sample)");
    // The rollouts finished before the kill are kept as they were (same timing, not rerun).
    let by_key: HashMap<(String, u64), &serde_json::Value> = rows.iter().map(|r| ((r["instance_id"].as_str().unwrap().to_string(), r["sample_idx"].as_u64().unwrap()), r)).collect();
    for b in &before {
        let key = (b["instance_id"].as_str().unwrap().to_string(), b["sample_idx"].as_u64().unwrap());
        assert_eq!(by_key[&key]["wall_seconds"], b["wall_seconds"]);
    }
    assert!(!partial.exists(), "the partial file is removed once the Parquet is written");
    assert!(rows.iter().all(|r| r["exit_reason"] == "submitted"));
    // A third run has nothing to do.
    let mut cmd = swegym();
    args(&mut cmd);
    let stdout = String::from_utf8_lossy(&run_ok(&mut cmd).stdout).to_string();
    assert!(stdout.contains("6 rollouts (0 run now, 6 resumed)"), "{stdout}");
    let _ = repo_root();
}
