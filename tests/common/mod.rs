//! Helpers shared by the end-to-end tests: the binary, the repo and cache paths,
//! gating of slow and docker tests, and reading Parquet back with pyarrow.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn swegym() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swegym"));
    cmd.current_dir(repo_root());
    cmd
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("pipeline/ has a parent").to_path_buf()
}

pub fn cache_root() -> PathBuf {
    std::env::var_os("SWEGYM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/swegym"))
}

/// True when slow tests should run (CI sets SWEGYM_SLOW_TESTS=1); prints why not otherwise.
pub fn slow(test: &str) -> bool {
    if std::env::var("SWEGYM_SLOW_TESTS").is_ok_and(|v| v == "1") {
        return true;
    }
    eprintln!("skipping {test}: slow test (builds environments); set SWEGYM_SLOW_TESTS=1 to run it");
    false
}

/// True when a docker daemon answers. Otherwise: with slow tests on (CI) the test fails —
/// it never passes for work it did not do —, else it is skipped with a note.
pub fn docker(test: &str) -> bool {
    let ok = Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success());
    if !ok {
        missing(test, "no docker daemon reachable (`docker info` failed)");
    }
    ok
}

/// A prerequisite of `test` is missing: a failure when slow tests are on, a note otherwise.
pub fn missing(test: &str, what: &str) {
    if std::env::var("SWEGYM_SLOW_TESTS").is_ok_and(|v| v == "1") {
        panic!("{test}: {what}, and SWEGYM_SLOW_TESTS=1 asks for every test to run");
    }
    eprintln!("skipping {test}: {what}");
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("swegym runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs swegym and returns its stderr, asserting the exit code.
pub fn fails(cmd: &mut Command, code: i32) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "{cmd:?}: {stderr}");
    stderr
}

/// Reads a Parquet file with pyarrow (the setup venv's python) as a list of row objects.
pub fn read_parquet_with_pyarrow(path: &Path) -> serde_json::Value {
    let python = cache_root().join("venv/bin/python");
    assert!(python.exists(), "{} missing: run `make setup`", python.display());
    let script = "import sys, json, pyarrow.parquet as pq\nprint(json.dumps(pq.read_table(sys.argv[1]).to_pylist()))";
    let out = Command::new(&python).arg("-c").arg(script).arg(path).output().expect("python runs");
    assert!(out.status.success(), "pyarrow could not read {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("pyarrow printed JSON")
}

/// The PEFT reference side — the reference venv's python and SmolLM2 as an HF folder — or
/// None, with a note naming what is missing, when `SWEGYM_SETUP_REF=1 make setup` has not
/// made them.
pub fn peft_reference(test: &str) -> Option<(PathBuf, PathBuf)> {
    let python = cache_root().join("venv-ref/bin/python");
    let base = cache_root().join("models/smollm2-hf");
    if python.exists() && base.join("model.safetensors").exists() {
        return Some((python, base));
    }
    missing(test, &format!("{} or {} is missing (`SWEGYM_SETUP_REF=1 make setup` makes both)", python.display(), base.display()));
    None
}

/// `stages/train/scripts/peft_interop.py`: PEFT loads `adapter` (trained on `base`) with our
/// logits, and we load an adapter PEFT made with its logits; panics with the report otherwise.
pub fn assert_peft_interop(python: &Path, base: &Path, adapter: &Path, work: &Path) {
    let out = Command::new(python)
        .arg(repo_root().join("stages/train/scripts/peft_interop.py"))
        .arg("--base")
        .arg(base)
        .arg("--swegym")
        .arg(env!("CARGO_BIN_EXE_swegym"))
        .arg("--ours")
        .arg(adapter)
        .arg("--work")
        .arg(work)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "PEFT interop failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}

fn alive(pid: &str) -> bool {
    !pid.trim().is_empty() && Path::new(&format!("/proc/{}", pid.trim())).exists()
}

/// Sandbox dirs the local backend left under the cache: those whose owner process has
/// exited (dirs of other swegym processes still running are theirs, not leftovers).
pub fn leftover_local_sandboxes() -> Vec<PathBuf> {
    let dir = cache_root().join("sandboxes/local");
    let entries: Vec<PathBuf> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    entries.into_iter().filter(|d| !alive(&std::fs::read_to_string(d.join("owner.pid")).unwrap_or_default())).collect()
}

/// What `backend` has left behind (sandbox dirs or containers of exited processes).
pub fn leftovers(backend: &str) -> Vec<String> {
    match backend {
        "local" => leftover_local_sandboxes().iter().map(|p| p.display().to_string()).collect(),
        _ => leftover_containers(),
    }
}

/// Asserts the run left nothing behind that was not there `before` it (an earlier, killed
/// process's ownerless leftovers are not this run's to answer for).
pub fn assert_nothing_left(backend: &str, before: &[String]) {
    let new: Vec<String> = leftovers(backend).into_iter().filter(|l| !before.contains(l)).collect();
    assert!(new.is_empty(), "{backend}: left behind: {new:?}");
}

/// Containers labelled by swegym whose creating process has exited (must be none after a run).
pub fn leftover_containers() -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--filter", "label=swegym=1", "--format", "{{.ID}} {{.Label \"swegym.pid\"}}"])
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').or(Some((l, ""))))
        .filter(|(_, pid)| !alive(pid))
        .map(|(id, _)| id.to_string())
        .collect()
}

/// The patches of the grading scenario and the status each must get.
pub const SCENARIO: &[(&str, Option<&str>, &str)] = &[
    ("gold", None, "resolved"),
    ("wrong", Some("wrong.diff"), "unresolved"),
    ("no-apply", Some("does_not_apply.diff"), "patch_apply_failed"),
    ("hang", Some("hang.diff"), "test_timeout"),
    ("fake-passed", Some("fake_passed.diff"), "unresolved"),
    ("empty", Some(""), "empty_patch"),
];

/// Grades six patches of marshmallow-1359 (copies of the task under six instance ids, so
/// one run covers them) with the given backend and checks every verdict, the Parquet
/// (read by pyarrow), the summary and that nothing is left behind.
pub fn grading_scenario(backend: &str) {
    let before = leftovers(backend);
    let tmp = tempfile::tempdir().unwrap();
    let tasks_path = repo_root().join("datasets/swebench-lite-marshmallow/tasks.jsonl");
    let line = std::fs::read_to_string(&tasks_path).unwrap().lines().next().unwrap().to_string();
    let task: serde_json::Value = serde_json::from_str(&line).unwrap();
    let fixtures = repo_root().join("tests/fixtures/marshmallow-1359");
    let (mut tasks, mut preds) = (String::new(), String::new());
    for (name, fixture, _) in SCENARIO {
        let id = format!("{}-{name}", task["instance_id"].as_str().unwrap());
        let mut t = task.clone();
        t["instance_id"] = id.clone().into();
        tasks.push_str(&format!("{t}\n"));
        let patch = match fixture {
            None => task["patch"].as_str().unwrap().to_string(),
            Some("") => String::new(),
            Some(f) => std::fs::read_to_string(fixtures.join(f)).unwrap(),
        };
        let p = serde_json::json!({"instance_id": id, "model_name_or_path": "scenario", "model_patch": patch});
        preds.push_str(&format!("{p}\n"));
    }
    let dataset = tmp.path().join("tasks.jsonl");
    std::fs::write(&dataset, tasks).unwrap();
    std::fs::write(tmp.path().join("preds.jsonl"), preds).unwrap();
    let out_dir = tmp.path().join("out");
    let env_specs = repo_root().join("datasets/swebench-lite-marshmallow/environments.toml");
    run_ok(swegym().args(["evaluate", "--backend", backend, "-j", "2", "--timeout", "15"]).arg("--dataset").arg(&dataset)
        .arg("--predictions").arg(tmp.path().join("preds.jsonl")).arg("--env-specs").arg(&env_specs).arg("--out").arg(&out_dir));

    let rows = read_parquet_with_pyarrow(&out_dir.join("verdicts.parquet"));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), SCENARIO.len());
    for (name, _, expect) in SCENARIO {
        let row = rows.iter().find(|r| r["instance_id"].as_str().unwrap().ends_with(&format!("-{name}"))).unwrap();
        assert_eq!(row["status"], *expect, "{name}: {row}");
        assert_eq!(row["resolved"], *expect == "resolved", "{name}");
        let log = std::fs::read_dir(out_dir.join("logs").join(row["instance_id"].as_str().unwrap())).unwrap().count();
        assert_eq!(log, 1, "{name}: one log file");
    }
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["resolved_instances"], 1);
    assert_eq!(summary["apply_failed_instances"], 1);
    assert_eq!(summary["timeout_instances"], 1);
    assert_eq!(summary["empty_patch_instances"], 1);
    assert_eq!(summary["unresolved_instances"], 2);
    assert_eq!(summary["error_instances"], 0);
    let fake_log = std::fs::read_to_string(out_dir.join("logs").join(format!("{}-fake-passed/scenario.log", task["instance_id"].as_str().unwrap()))).unwrap();
    assert!(fake_log.contains("Log check"), "the fake PASSED lines are caught by the log check:\n{fake_log}");
    assert_nothing_left(backend, &before);
}

/// `dataset validate` on the two real marshmallow instances with the given backend.
pub fn validate_marshmallow(backend: &str) {
    let before = leftovers(backend);
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let out = run_ok(swegym().args(["dataset", "validate", "datasets/swebench-lite-marshmallow/tasks.jsonl", "--backend", backend]).arg("--out").arg(&out_dir));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 of 2 instances valid"), "{stdout}");
    let checks: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("validation.json")).unwrap()).unwrap();
    for c in checks.as_array().unwrap() {
        assert_eq!(c["valid"], true, "{c}");
        assert_eq!(c["gold_status"], "resolved");
        assert_eq!(c["empty_status"], "empty_patch");
        assert_eq!(c["before_f2p_passing"].as_array().unwrap().len(), 0);
    }
    assert_nothing_left(backend, &before);
}
