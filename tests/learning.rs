//! Issue 29's experiment data: the held-out tasks of `configs/learn.toml` are disjoint from
//! its training (and warm-start) tasks by source file and by function, as the rows' gold
//! patches and the synth manifest say; and `swegym dataset stats` shows the easy tier.

mod common;

use std::collections::BTreeSet;

fn rows(split: &str) -> Vec<serde_json::Value> {
    let path = common::repo_root().join(format!("datasets/synth-pypi-easy/{split}.jsonl"));
    std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `repo::file` of every file a row's gold patch touches.
fn patch_files(row: &serde_json::Value) -> Vec<String> {
    let repo = row["repo"].as_str().unwrap();
    row["patch"].as_str().unwrap().lines().filter_map(|l| l.strip_prefix("diff --git a/")).map(|l| format!("{repo}::{}", l.split(" b/").next().unwrap())).collect()
}

#[test]
fn learn_config_uses_file_and_function_disjoint_splits() {
    // The config trains (warm start included: the oracle plays the train split) on the
    // train split and evaluates on the test split of this dataset.
    let text = std::fs::read_to_string(common::repo_root().join("configs/learn.toml")).unwrap();
    let cfg: toml::Value = toml::from_str(&text).unwrap();
    for (which, split) in [("train", "train"), ("test", "test")] {
        let s = &cfg["dataset"][which];
        assert_eq!(s["path"].as_str(), Some("../datasets/synth-pypi-easy"), "[dataset.{which}]");
        assert_eq!(s["split"].as_str(), Some(split), "[dataset.{which}]");
    }
    assert_eq!(cfg["warm_start"]["source"].as_str(), Some("oracle"), "the warm start is the oracle on train tasks, not a file");

    let (train, test) = (rows("train"), rows("test"));
    assert!(test.len() >= 60, "at least 60 held-out tasks: {}", test.len());
    let files = |rs: &[serde_json::Value]| rs.iter().flat_map(patch_files).collect::<BTreeSet<_>>();
    let common_files: Vec<_> = files(&train).intersection(&files(&test)).cloned().collect();
    assert!(common_files.is_empty(), "files in both splits: {common_files:?}");

    let manifest = std::fs::read_to_string(common::repo_root().join("datasets/synth-pypi-easy/synth_manifest.jsonl")).unwrap();
    let manifest: Vec<serde_json::Value> = manifest.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids = |rs: &[serde_json::Value]| rs.iter().map(|r| r["instance_id"].as_str().unwrap().to_string()).collect::<BTreeSet<_>>();
    let (train_ids, test_ids) = (ids(&train), ids(&test));
    let functions = |want: &BTreeSet<String>| {
        manifest
            .iter()
            .filter(|m| want.contains(m["instance_id"].as_str().unwrap()))
            .map(|m| format!("{}::{}::{}", m["repo"].as_str().unwrap(), m["file"].as_str().unwrap(), m["function"].as_str().unwrap()))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(manifest.len(), train.len() + test.len(), "every row has its manifest line");
    let common_functions: Vec<_> = functions(&train_ids).intersection(&functions(&test_ids)).cloned().collect();
    assert!(common_functions.is_empty(), "functions in both splits: {common_functions:?}");
    // The manifest's file is the patch's file.
    for m in &manifest {
        let id = m["instance_id"].as_str().unwrap();
        let row = train.iter().chain(&test).find(|r| r["instance_id"] == id).unwrap();
        assert_eq!(patch_files(row), [format!("{}::{}", m["repo"].as_str().unwrap(), m["file"].as_str().unwrap())], "{id}");
        assert_eq!(m["split"].as_str().unwrap(), if test_ids.contains(id) { "test" } else { "train" }, "{id}");
    }
}

#[test]
fn stats_show_the_easy_tier() {
    let path = common::repo_root().join("datasets/synth-pypi-easy");
    let out = common::run_ok(common::swegym().args(["dataset", "stats", "--json"]).arg(&path));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let test = &stats["test"]["difficulty"];
    assert_eq!(test["by_tier"]["easy"], 71, "{test}");
    assert_eq!(test["statement_shows_line"], 71, "{test}");
    assert_eq!(stats["train"]["difficulty"]["by_kind"]["misspelled_name"]["easy"], 226, "{stats}");
    let table = common::run_ok(common::swegym().args(["dataset", "stats"]).arg(&path));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("difficulty (synth manifest)") && table.contains("misspelled_name"), "{table}");
}
