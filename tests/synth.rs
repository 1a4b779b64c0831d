//! End to end: `swegym synth` on a real PyPI sdist (tabulate 0.9.0) is deterministic for a
//! seed, keeps only mutants that parse and that leave other tests passing, reports its
//! yield per mutation kind, and what it keeps validates; a sample of the shipped
//! synth-pypi dataset validates (gold resolves, FAIL_TO_PASS fails before); the easy tier
//! (a misspelled parameter, tests with tracebacks) quotes the bug's line and validates.

mod common;

use std::path::Path;
use std::process::Command;

fn synth(out: &Path) -> String {
    let out = common::run_ok(
        common::swegym()
            .args(["synth", "--env-specs", "datasets/synth-pypi/environments.toml", "--env", "astanin/python-tabulate"])
            .args(["--n", "3", "--seed", "7", "--max-tries", "24", "-j", "2", "--timeout", "60"])
            .arg("--out")
            .arg(out),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rows(dir: &Path) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for split in ["train", "test"] {
        let text = std::fs::read_to_string(dir.join(format!("{split}.jsonl"))).unwrap();
        all.extend(text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()));
    }
    all
}

#[test]
fn synth_is_deterministic_parses_and_reports_yield() {
    if !common::slow("synth_is_deterministic_parses_and_reports_yield") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let table = synth(&a);
    synth(&b);
    for f in ["train.jsonl", "test.jsonl", "synth_manifest.jsonl"] {
        assert_eq!(std::fs::read_to_string(a.join(f)).unwrap(), std::fs::read_to_string(b.join(f)).unwrap(), "{f} differs between two runs with seed 7");
    }
    assert!(table.contains("| mutation kind | tried | kept | yield |"), "{table}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("synth_report.json")).unwrap()).unwrap();
    let by_kind = report["yields"]["by_kind"].as_object().unwrap();
    let (tried, kept): (u64, u64) = by_kind.values().fold((0, 0), |(t, k), y| (t + y["tried"].as_u64().unwrap(), k + y["kept"].as_u64().unwrap()));
    let rows = rows(&a);
    assert_eq!(kept as usize, rows.len());
    assert_eq!(rows.len(), 3, "{report}");
    assert!(tried >= kept);
    for row in &rows {
        let id = row["instance_id"].as_str().unwrap();
        assert!(!row["FAIL_TO_PASS"].as_array().unwrap().is_empty(), "{id}");
        assert!(!row["PASS_TO_PASS"].as_array().unwrap().is_empty(), "{id}: a kept bug leaves tests passing");
        assert_eq!(row["test_patch"], "", "synthesized tasks test with the library's own suite");
        let statement = row["problem_statement"].as_str().unwrap();
        let fixed_line = row["patch"].as_str().unwrap().lines().find(|l| l.starts_with('+') && !l.starts_with("+++")).unwrap_or("").trim_start_matches('+').trim();
        assert!(!statement.contains("diff --git"), "{statement}");
        assert!(fixed_line.len() < 16 || !statement.contains(fixed_line), "the statement gives the fix away: {statement}");
        // The mutant (the task's base, re-created from the sdist and the row) parses.
        let file = swegym_file(row);
        let mutant = common::cache_root().join("workspaces").join(id).join("repo").join(&file);
        let check = Command::new("python3").args(["-c", "import ast, sys; ast.parse(open(sys.argv[1]).read())"]).arg(&mutant).output().unwrap();
        assert!(check.status.success(), "{id}: {} does not parse: {}", mutant.display(), String::from_utf8_lossy(&check.stderr));
    }
    let out = common::run_ok(common::swegym().args(["dataset", "validate"]).arg(a.join("train.jsonl")).arg("--env-specs").arg("datasets/synth-pypi/environments.toml").arg("--out").arg(tmp.path().join("v")));
    assert!(String::from_utf8_lossy(&out.stdout).contains("instances valid"));
}

/// The id of the first row of each repository in a shipped dataset's split.
fn first_row_per_repo(dataset: &str, split: &str) -> Vec<String> {
    let text = std::fs::read_to_string(common::repo_root().join(format!("datasets/{dataset}/{split}.jsonl"))).unwrap();
    let mut repos = std::collections::BTreeSet::new();
    let mut ids = Vec::new();
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        if repos.insert(row["repo"].as_str().unwrap().to_string()) {
            ids.push(row["instance_id"].as_str().unwrap().to_string());
        }
    }
    ids
}

/// The file a row's gold patch edits.
fn swegym_file(row: &serde_json::Value) -> String {
    let patch = row["patch"].as_str().unwrap();
    let header = patch.lines().next().unwrap();
    header.rsplit(" b/").next().unwrap().to_string()
}

#[test]
fn shipped_synth_dataset_sample_validates() {
    if !common::slow("shipped_synth_dataset_sample_validates") {
        return;
    }
    // The first row of each repo in each split, validated through the folder (every split).
    let mut ids: Vec<String> = Vec::new();
    for split in ["train", "test"] {
        let first = first_row_per_repo("synth-pypi", split);
        assert!(first.len() >= 4, "{split}: {first:?}");
        ids.extend(first);
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = common::run_ok(common::swegym().args(["dataset", "validate", "datasets/synth-pypi", "-j", "2", "--instance-ids"]).args(&ids).arg("--out").arg(tmp.path().join("v")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{n} of {n} instances valid", n = ids.len())), "{stdout}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("v/validation_summary.json")).unwrap()).unwrap();
    let per_split: Vec<(&str, u64)> = summary.as_array().unwrap().iter().map(|s| (s["split"].as_str().unwrap(), s["valid"].as_u64().unwrap())).collect();
    assert_eq!(per_split, [("test", 5), ("train", 5)], "{summary}");
    assert!(tmp.path().join("v/train/validation.json").exists() && tmp.path().join("v/test/verdicts.parquet").exists());
}

#[test]
fn an_unknown_mutation_kind_is_named() {
    let out = common::swegym().args(["synth", "--kinds", "flip_everything"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("comparison_operator"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_easy_tier_quotes_the_line_and_validates() {
    if !common::slow("the_easy_tier_quotes_the_line_and_validates") {
        return;
    }
    // A misspelled parameter in toolz, tests with tracebacks: the statement quotes the frame
    // at the bug's line (never the fix), the manifest says so, and the gold patch resolves.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("easy");
    common::run_ok(
        common::swegym()
            .args(["synth", "--env-specs", "datasets/synth-pypi-easy/environments.toml", "--env", "pytoolz/toolz", "--kinds", "misspelled_name"])
            .args(["--n", "2", "--seed", "0", "--max-tries", "12", "--split-by", "file", "--test-fraction", "0.4", "-j", "2", "--timeout", "60"])
            .arg("--out")
            .arg(&out),
    );
    let rows = rows(&out);
    assert_eq!(rows.len(), 2);
    let manifest: Vec<serde_json::Value> = std::fs::read_to_string(out.join("synth_manifest.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (row, m) in rows.iter().zip(&manifest) {
        let statement = row["problem_statement"].as_str().unwrap();
        let (file, line) = (m["file"].as_str().unwrap(), m["line"].as_u64().unwrap());
        assert!(statement.contains("NameError") && statement.contains(&format!("{file}:{line}: in ")), "{statement}");
        let fixed = row["patch"].as_str().unwrap().lines().find(|l| l.starts_with('+') && !l.starts_with("+++")).unwrap().trim_start_matches('+').trim();
        assert!(!statement.contains(fixed), "the statement gives the fix away: {statement}");
        assert_eq!(m["kind"], "misspelled_name");
        assert_eq!((m["difficulty"]["tier"].as_str(), m["difficulty"]["traceback_hits_line"].as_bool()), (Some("easy"), Some(true)), "{m}");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("synth_report.json")).unwrap()).unwrap();
    assert_eq!(report["split_by"], "file");
    // The rows and one shipped easy row per repository and split validate.
    let v = common::run_ok(common::swegym().args(["dataset", "validate"]).arg(&out).args(["-j", "2", "--out"]).arg(tmp.path().join("v")));
    assert!(String::from_utf8_lossy(&v.stdout).contains("2 of 2 instances valid"), "{}", String::from_utf8_lossy(&v.stdout));
    let ids: Vec<String> = ["train", "test"].iter().flat_map(|split| first_row_per_repo("synth-pypi-easy", split)).collect();
    let v = common::run_ok(common::swegym().args(["dataset", "validate", "datasets/synth-pypi-easy", "-j", "2", "--instance-ids"]).args(&ids).arg("--out").arg(tmp.path().join("v2")));
    let stdout = String::from_utf8_lossy(&v.stdout);
    assert!(stdout.contains(&format!("{n} of {n} instances valid", n = ids.len())), "{stdout}");
}
