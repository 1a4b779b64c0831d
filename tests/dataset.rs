//! End to end: `swegym dataset stats` on the 300 real SWE-bench Lite test rows, a
//! dataset with bad rows (reported by row and id, the rest still used), and a dataset
//! folder (one table per split; side files are not splits).

mod common;

#[test]
fn stats_of_swebench_lite_test() {
    let path = common::repo_root().join("datasets/swebench-lite/test.json");
    let out = common::run_ok(common::swegym().args(["dataset", "stats", "--json"]).arg(&path));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["instances"], 300);
    assert_eq!(stats["repos"], 12);
    assert_eq!(stats["instances_per_repo"]["django/django"], 114);
    assert_eq!(stats["instances_per_repo"]["sympy/sympy"], 77);
    // SWE-bench Lite keeps only single-file gold patches.
    assert_eq!(stats["gold_files_edited"]["max"], 1.0);
    let table = common::run_ok(common::swegym().args(["dataset", "stats"]).arg(&path));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("300 instances from 12 repos"), "{table}");
    assert!(table.contains("tests: FAIL_TO_PASS"), "{table}");
}

#[test]
fn bad_rows_are_named_and_the_rest_load() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(common::repo_root().join("datasets/swebench-lite-marshmallow/tasks.jsonl")).unwrap();
    let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
    let mut broken: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    broken["FAIL_TO_PASS"] = "not a list".into();
    lines[1] = broken.to_string();
    lines.push("{truncated".into());
    let path = tmp.path().join("d.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = common::run_ok(common::swegym().args(["dataset", "stats", "--json"]).arg(&path));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["instances"], 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("row 2 (marshmallow-code__marshmallow-1343)"), "{stderr}");
    assert!(stderr.contains("row 3"), "{stderr}");
}

#[test]
fn a_dataset_with_no_good_row_is_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("d.jsonl");
    std::fs::write(&path, "{oops\n").unwrap();
    let out = common::swegym().args(["dataset", "stats"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_dataset_folder_is_described_per_split() {
    let out = common::run_ok(common::swegym().args(["dataset", "stats", "--json", "datasets/synth-pypi"]));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let splits: Vec<&String> = stats.as_object().unwrap().keys().collect();
    assert_eq!(splits, ["test", "train"], "the manifest and the report are not splits");
    let train = stats["train"]["instances"].as_u64().unwrap();
    let test = stats["test"]["instances"].as_u64().unwrap();
    assert!(train > 0 && test > 0 && train + test >= 300, "{stats}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("synth_manifest.jsonl is not a split"), "{stderr}");
    let table = common::run_ok(common::swegym().args(["dataset", "stats", "datasets/synth-pypi"]));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("split test (datasets/synth-pypi/test.jsonl)") && table.contains("split train"), "{table}");

    let empty = tempfile::tempdir().unwrap();
    let out = common::swegym().args(["dataset", "validate"]).arg(empty.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no split found"));
}
