//! The run directory: what is written before any work (`config.toml` as given,
//! `config.json` resolved, `run.json` with the config hash, git revision and seed), where
//! each stage's outputs go, and the stage manifests that make a rerun resume.
//!
//! Layout:
//! ```text
//! runs/<name>/
//!   config.toml  config.json  run.json
//!   zero-shot/   eval.parquet  eval.manifest.json  metrics.json      (policy_0 on the test split)
//!                eval_scores.parquet                                  (with a [verifier], k > 1)
//!   iter-000/    warm_start.parquet  rollouts.parquet  filter.json  sft.parquet
//!                adapter/  eval.parquet  <stage>.manifest.json …  metrics.json
//!                verifier_scores.parquet  eval_scores.parquet         (with a [verifier])
//!   report.md  metrics.parquet  resolve_rate.svg  empty_patch_rate.svg
//! ```
//! A stage is done when its manifest exists; the manifest is written (atomically) after
//! the stage's outputs, which are written atomically too, so a kill anywhere leaves either
//! a finished stage or one that runs again. `metrics.json` is written last in a folder.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod fork;
pub mod manifest;

use self::manifest::{Manifest, Stage};
use crate::exit::Exit;

/// What `run.json` records about a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub name: String,
    /// sha256 of the resolved config (`config.json`).
    pub config_hash: String,
    /// `git rev-parse HEAD` of the working tree the run was started from (`-dirty` when it
    /// had changes), or `unknown`.
    pub git_revision: String,
    pub seed: u64,
    pub swegym_version: String,
    /// Unix seconds when the run was created.
    pub created_at: u64,
    /// The run this one was forked from (`swegym run --fork-from`), and what it copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<fork::ForkedFrom>,
}

/// The run directory and its paths.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

/// Where `swegym verifier eval --run` writes its report in a run folder.
pub fn verifier_eval_path(run_root: &Path) -> PathBuf {
    run_root.join("verifier").join("eval.json")
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Writes JSON via a temp file + rename (+ fsync), so readers never see half a file.
pub fn write_json_atomic(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    write_atomic(path, text.as_bytes())
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", path.display()))
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

impl RunDir {
    pub fn new(root: PathBuf) -> RunDir {
        RunDir { root }
    }

    pub fn zero_shot_dir(&self) -> PathBuf {
        self.root.join("zero-shot")
    }

    pub fn iter_dir(&self, iteration: u32) -> PathBuf {
        self.root.join(format!("iter-{iteration:03}"))
    }

    /// `path` relative to the run directory (for manifests and messages).
    pub fn rel(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).display().to_string()
    }

    pub fn manifest_path(dir: &Path, stage: Stage) -> PathBuf {
        dir.join(format!("{}.manifest.json", stage.name()))
    }

    /// The stage's manifest, if the stage finished (with `D`, its details' type).
    pub fn manifest<D: DeserializeOwned>(dir: &Path, stage: Stage) -> anyhow::Result<Option<Manifest<D>>> {
        let p = RunDir::manifest_path(dir, stage);
        if !p.exists() {
            return Ok(None);
        }
        read_json(&p).map(Some).with_context(|| format!("{} is not a {} manifest: delete it to run the stage again", p.display(), stage.name()))
    }

    pub fn write_manifest<D: Serialize>(&self, dir: &Path, manifest: &Manifest<D>) -> anyhow::Result<()> {
        write_json_atomic(&RunDir::manifest_path(dir, manifest.stage), manifest)
    }

    /// Creates the run directory and writes the config, its hash, the git revision and the
    /// seed — or, for an existing run, checks that the config is the same (refusing to
    /// resume under a changed config, except for `[run] iterations` — a run can be extended —
    /// and `[run] about`).
    /// Returns the run's info and whether it was resumed.
    pub fn open(&self, config_json: &serde_json::Value, config_text: &str, info: RunInfo) -> anyhow::Result<(RunInfo, bool)> {
        let run_json = self.root.join("run.json");
        if run_json.exists() {
            let old: RunInfo = read_json(&run_json)?;
            if old.config_hash != info.config_hash {
                let diff = config_diff(&read_json::<serde_json::Value>(&self.root.join("config.json")).unwrap_or_default(), config_json);
                if !diff.is_empty() && diff.iter().all(|k| k == "run.iterations" || k == "run.about") {
                    // Only how far the run goes or its description changed (no stage's output
                    // depends on either): go on under the new config.
                    println!("note: {}: [run] {} changed; the run goes on with the new value", self.root.display(), diff.iter().map(|k| k.trim_start_matches("run.")).collect::<Vec<_>>().join(" and "));
                    write_atomic(&self.root.join("config.toml"), config_text.as_bytes())?;
                    write_json_atomic(&self.root.join("config.json"), config_json)?;
                    let extended = RunInfo { config_hash: info.config_hash, ..old };
                    write_json_atomic(&run_json, &extended)?;
                    return Ok((extended, true));
                }
                return Err(Exit::bad_input(format!(
                    "{} was started with a different config (hash {} there, {} now; changed: {}). \
                     Resume it with the config it was started with ({}), or start a new run with --name",
                    self.root.display(),
                    &old.config_hash[..12.min(old.config_hash.len())],
                    &info.config_hash[..12],
                    if diff.is_empty() { "unknown".to_string() } else { diff.join(", ") },
                    self.root.join("config.toml").display()
                )));
            }
            return Ok((old, true));
        }
        std::fs::create_dir_all(&self.root).with_context(|| format!("creating {}", self.root.display()))?;
        write_atomic(&self.root.join("config.toml"), config_text.as_bytes())?;
        write_json_atomic(&self.root.join("config.json"), config_json)?;
        // run.json last: its presence means the run's identity is on disk.
        write_json_atomic(&run_json, &info)?;
        Ok((info, false))
    }

    /// The iterations whose `metrics.json` exists, in order.
    pub fn finished_iterations(&self) -> Vec<u32> {
        let mut its: Vec<u32> = std::fs::read_dir(&self.root)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| n.strip_prefix("iter-").and_then(|s| s.parse().ok()))
            .filter(|i| self.iter_dir(*i).join("metrics.json").exists())
            .collect();
        its.sort_unstable();
        its
    }
}

/// The dotted keys whose values differ between two configs (at most 8).
fn config_diff(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let mut out = config_diff_all(old, new);
    out.truncate(8);
    out
}

/// Every dotted key whose value differs between two configs.
fn config_diff_all(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, x.get(k).unwrap_or(&serde_json::Value::Null), y.get(k).unwrap_or(&serde_json::Value::Null), out);
                }
            }
            _ if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

/// The git revision of the working tree at `dir` (`-dirty` with uncommitted changes).
pub fn git_revision(dir: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{rev}-dirty") } else { rev }
        }
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_names_changed_keys() {
        let a = json!({"run": {"seed": 1, "name": "x"}, "train": {"lr": 1.0}});
        let b = json!({"run": {"seed": 2, "name": "x"}, "train": {"lr": 1.0, "r": 4}});
        assert_eq!(config_diff(&a, &b), ["run.seed", "train.r"]);
    }

    #[test]
    fn open_refuses_a_changed_config() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::new(dir.path().join("r"));
        let info = |hash: &str| RunInfo {
            name: "r".into(),
            config_hash: hash.repeat(16),
            git_revision: "x".into(),
            seed: 0,
            swegym_version: "0".into(),
            created_at: 0,
            forked_from: None,
        };
        let (_, resumed) = rd.open(&json!({"a": 1}), "a = 1\n", info("ab")).unwrap();
        assert!(!resumed);
        assert!(rd.root.join("config.toml").exists() && rd.root.join("config.json").exists());
        let (_, resumed) = rd.open(&json!({"a": 1}), "a = 1\n", info("ab")).unwrap();
        assert!(resumed);
        let err = rd.open(&json!({"a": 2}), "a = 2\n", info("cd")).unwrap_err().to_string();
        assert!(err.contains("different config") && err.contains("changed: a"), "{err}");
    }

    #[test]
    fn a_run_can_be_extended_by_more_iterations() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::new(dir.path().join("r"));
        let info = |hash: &str, created_at: u64| RunInfo {
            name: "r".into(),
            config_hash: hash.repeat(16),
            git_revision: "x".into(),
            seed: 0,
            swegym_version: "0".into(),
            created_at,
            forked_from: None,
        };
        rd.open(&json!({"run": {"iterations": 1, "seed": 0}}), "iterations = 1\n", info("ab", 5)).unwrap();
        let (got, resumed) = rd.open(&json!({"run": {"iterations": 3, "seed": 0}}), "iterations = 3\n", info("cd", 9)).unwrap();
        assert!(resumed);
        assert_eq!((got.config_hash, got.created_at), ("cd".repeat(16), 5), "the new hash, the run's own identity otherwise");
        assert_eq!(std::fs::read_to_string(rd.root.join("config.toml")).unwrap(), "iterations = 3\n");
        // Now resumed under the new config as it is; any other change is still refused.
        assert!(rd.open(&json!({"run": {"iterations": 3, "seed": 0}}), "iterations = 3\n", info("cd", 9)).unwrap().1);
        let err = rd.open(&json!({"run": {"iterations": 4, "seed": 1}}), "x\n", info("ef", 9)).unwrap_err().to_string();
        assert!(err.contains("different config"), "{err}");
        // The run's description may change too (alone or with iterations).
        let (got, resumed) = rd.open(&json!({"run": {"iterations": 4, "seed": 0, "about": "why"}}), "y\n", info("gh", 9)).unwrap();
        assert!(resumed && got.config_hash == "gh".repeat(16));
        assert_eq!(read_json::<serde_json::Value>(&rd.root.join("config.json")).unwrap()["run"]["about"], "why");
    }
}
