//! `swegym run CONFIG --fork-from runs/A`: a new run that starts from another run's
//! finished stages, for an ablation that differs from it only after some point — e.g. the
//! RFT control (`[run] rft_data = "warm_start"`) shares the zero-shot evaluation, the whole
//! warm-start iteration and iteration 1's sampling, grading and filter with the run it
//! controls, and so is paired with it task by task at the cost of its own training and
//! evaluation alone.
//!
//! Which stages are copied follows from the config keys that differ: each known key names
//! the first (iteration, stage) whose output it can change, and every stage before the
//! earliest of them is copied (its manifest and the outputs the manifest lists, paths
//! relative to the run folder, so they stay valid). A key this module does not know
//! refuses the fork: copying a stage whose output the change could alter would silently
//! mix two experiments.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::manifest::Stage;
use super::{config_diff_all, read_json, RunDir, RunInfo};

/// The stages of an iteration in the order they run.
const ITERATION_STAGES: [Stage; 8] = [Stage::WarmStart, Stage::Sample, Stage::Score, Stage::Filter, Stage::Export, Stage::Train, Stage::Eval, Stage::EvalScore];

/// The first stage whose output a config change can alter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForkPoint {
    pub iteration: u32,
    pub stage: Stage,
}

impl ForkPoint {
    fn rank(self) -> (u32, usize) {
        (self.iteration, ITERATION_STAGES.iter().position(|s| *s == self.stage).unwrap_or(0))
    }

    fn label(self) -> String {
        format!("iter-{:03} {}", self.iteration, self.stage.name())
    }
}

/// What `run.json` records about a forked run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForkedFrom {
    /// The source run's folder, as given.
    pub run: String,
    pub config_hash: String,
    /// The config keys that differ from the source's.
    pub changed: Vec<String>,
    /// The first stage run anew (`iter-001 export`), or `none` when every finished stage
    /// of the source was copied.
    pub diverges_at: String,
    /// The stages copied, as `<folder> <stage>`.
    pub copied: Vec<String>,
}

/// The effective trainer settings of iteration `i` in a resolved config's JSON (see
/// `RunConfig::train_for`).
fn train_json(config: &serde_json::Value, i: u32) -> serde_json::Value {
    match config.get("warm_start").and_then(|w| w.get("train")) {
        Some(t) if i == 0 => t.clone(),
        _ => config.get("train").cloned().unwrap_or_default(),
    }
}

/// Where the new config first departs from the source's: `Ok(None)` when no stage's
/// output depends on what changed; an error naming the keys the fork cannot handle.
pub fn fork_point(source: &serde_json::Value, new: &serde_json::Value, changed: &[String]) -> Result<Option<ForkPoint>, String> {
    let mut points = Vec::new();
    let mut unknown = Vec::new();
    for key in changed {
        match key.as_str() {
            "run.name" | "run.about" | "run.iterations" => {}
            "run.rft_data" => points.push(ForkPoint { iteration: 1, stage: Stage::Export }),
            k if k.starts_with("train.") || k.starts_with("warm_start.train.") || k == "warm_start.train" => {
                // The first iteration whose effective trainer settings differ.
                let iterations = new["run"]["iterations"].as_u64().unwrap_or(1).max(source["run"]["iterations"].as_u64().unwrap_or(1)) as u32;
                if let Some(i) = (0..iterations.max(2)).find(|&i| train_json(source, i) != train_json(new, i)) {
                    points.push(ForkPoint { iteration: i, stage: Stage::Train });
                }
            }
            other => unknown.push(other.to_string()),
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "{} changed, and a fork copies only stages that the change cannot alter: it knows [run] rft_data, [train] and [warm_start.train] (and [run] name, about, iterations). Start a new run instead",
            unknown.join(", ")
        ));
    }
    Ok(points.into_iter().min_by_key(|p| p.rank()))
}

/// Copies a file or a folder (recursively) to `to`, creating parents.
fn copy_path(from: &Path, to: &Path) -> anyhow::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
        for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
            let entry = entry?;
            copy_path(&entry.path(), &to.join(entry.file_name()))?;
        }
        return Ok(());
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Copies one finished stage (manifest and outputs) of `src_dir` into the same place under
/// `dst_root`; false when the stage has no manifest there.
fn copy_stage(src_root: &Path, dst_root: &Path, folder: &str, stage: Stage) -> anyhow::Result<bool> {
    let manifest = RunDir::manifest_path(&src_root.join(folder), stage);
    if !manifest.exists() {
        return Ok(false);
    }
    let m: super::manifest::Manifest<serde_json::Value> = read_json(&manifest)?;
    for rel in &m.outputs {
        let from = src_root.join(rel);
        anyhow::ensure!(from.exists(), "{}: {} lists {rel}, which is missing; the source run is damaged", src_root.display(), manifest.display());
        copy_path(&from, &dst_root.join(rel))?;
    }
    copy_path(&manifest, &RunDir::manifest_path(&dst_root.join(folder), stage))?;
    Ok(true)
}

/// Fills `dst` (a folder that has no `run.json` yet) with the stages of `src` that come
/// before the fork point. `new_config` is the new run's resolved config.
pub fn fork(src: &Path, dst: &Path, new_config: &serde_json::Value) -> anyhow::Result<ForkedFrom> {
    let bad = crate::exit::Exit::bad_input;
    let src_info: RunInfo = read_json(&src.join("run.json")).map_err(|_| bad(format!("--fork-from {}: not a run folder (it has no readable run.json)", src.display())))?;
    let src_config: serde_json::Value = read_json(&src.join("config.json")).map_err(|_| bad(format!("--fork-from {}: its config.json is missing or unreadable", src.display())))?;
    let changed = config_diff_all(&src_config, new_config);
    let point = fork_point(&src_config, new_config, &changed).map_err(|e| bad(format!("--fork-from {}: {e}", src.display())))?;
    if let Some(p) = point {
        check_source_reached(src, p)?;
    }
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut copied = Vec::new();
    // The zero-shot evaluation depends on nothing a fork may change.
    for stage in [Stage::Eval, Stage::EvalScore] {
        if copy_stage(src, dst, "zero-shot", stage)? {
            copied.push(format!("zero-shot {}", stage.name()));
        }
    }
    if src.join("zero-shot/metrics.json").exists() {
        copy_path(&src.join("zero-shot/metrics.json"), &dst.join("zero-shot/metrics.json"))?;
    }
    copy_iterations(src, dst, point, &mut copied)?;
    Ok(ForkedFrom {
        run: src.display().to_string(),
        config_hash: src_info.config_hash,
        changed,
        diverges_at: point.map_or_else(|| "none".to_string(), |p| p.label()),
        copied,
    })
}

/// Whether `iteration`'s `stage` comes before the fork point (every stage does when there
/// is none): such a stage is copied.
fn before_point(point: Option<ForkPoint>, iteration: u32, stage: Stage) -> bool {
    point.is_none_or(|p| ForkPoint { iteration, stage }.rank() < p.rank())
}

/// Every stage before the fork point must be finished in the source: a fork never copies
/// half an iteration's inputs.
fn check_source_reached(src: &Path, p: ForkPoint) -> anyhow::Result<()> {
    let bad = crate::exit::Exit::bad_input;
    let needed = ITERATION_STAGES.iter().take_while(|s| before_point(Some(p), p.iteration, **s)).copied().collect::<Vec<_>>();
    // The last stage before the point that every run has (warm_start, sample and score
    // are optional) must be done in the source.
    let last_required = needed.iter().rev().find(|s| matches!(s, Stage::Filter | Stage::Export | Stage::Train | Stage::Eval));
    if let Some(s) = last_required {
        if !RunDir::manifest_path(&src.join(format!("iter-{:03}", p.iteration)), *s).exists() {
            return Err(bad(format!(
                "--fork-from {}: the fork starts at {}, and the source has not finished iter-{:03} {} yet; let it get there (resume it), then fork",
                src.display(),
                p.label(),
                p.iteration,
                s.name()
            )));
        }
    }
    if p.iteration > 0 && !src.join(format!("iter-{:03}", p.iteration - 1)).join("metrics.json").exists() {
        return Err(bad(format!("--fork-from {}: iteration {} is not finished there; resume it first", src.display(), p.iteration - 1)));
    }
    Ok(())
}

/// Copies the source's iteration stages before the fork point (`copied` gets each as
/// `<folder> <stage>`), and the metrics of each iteration copied whole.
fn copy_iterations(src: &Path, dst: &Path, point: Option<ForkPoint>, copied: &mut Vec<String>) -> anyhow::Result<()> {
    let mut iterations: Vec<u32> = std::fs::read_dir(src)
        .with_context(|| format!("reading {}", src.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("iter-").and_then(|n| n.parse().ok()))
        .collect();
    iterations.sort_unstable();
    for it in iterations {
        let folder = format!("iter-{it:03}");
        let mut whole = true;
        for stage in ITERATION_STAGES {
            if !before_point(point, it, stage) {
                whole = false;
                continue;
            }
            if copy_stage(src, dst, &folder, stage)? {
                copied.push(format!("{folder} {}", stage.name()));
            }
        }
        let metrics = src.join(&folder).join("metrics.json");
        if whole && metrics.exists() {
            copy_path(&metrics, &dst.join(&folder).join("metrics.json"))?;
        }
    }
    Ok(())
}

/// The folder a fork fills must be new: an existing run is resumed, not forked into.
pub fn check_target(dst: &Path, src: &Path) -> anyhow::Result<()> {
    if dst.join("run.json").exists() {
        let info: RunInfo = read_json(&dst.join("run.json"))?;
        let same = info.forked_from.as_ref().is_some_and(|f| Path::new(&f.run) == src);
        if !same {
            return Err(crate::exit::Exit::bad_input(format!(
                "{} is already a run{}; --fork-from fills a new folder: pick another --name, or resume it without --fork-from",
                dst.display(),
                info.forked_from.as_ref().map(|f| format!(" (forked from {})", f.run)).unwrap_or_default()
            ))
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({
            "run": {"name": "a", "iterations": 2, "seed": 0},
            "sampling": {"rollouts_per_task": 2},
            "train": {"learning_rate": 0.001, "epochs": 3.0},
            "warm_start": {"source": "oracle", "train": {"learning_rate": 0.001, "epochs": 2.0}},
        });
        fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
            match (a, b) {
                (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                    for (k, v) in y {
                        merge(x.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
                (a, b) => *a = b,
            }
        }
        merge(&mut c, extra);
        c
    }

    fn point(a: &serde_json::Value, b: &serde_json::Value) -> Result<Option<ForkPoint>, String> {
        fork_point(a, b, &config_diff_all(a, b))
    }

    #[test]
    fn each_known_change_forks_where_it_first_matters() {
        let a = cfg(json!({}));
        assert_eq!(point(&a, &cfg(json!({"run": {"name": "b", "about": "x", "iterations": 4}}))), Ok(None));
        assert_eq!(point(&a, &cfg(json!({"run": {"name": "b", "rft_data": "warm_start"}}))), Ok(Some(ForkPoint { iteration: 1, stage: Stage::Export })));
        // [train] is overridden for iteration 0 by [warm_start.train] here except where it is not.
        assert_eq!(point(&a, &cfg(json!({"train": {"epochs": 1.0}}))), Ok(Some(ForkPoint { iteration: 1, stage: Stage::Train })));
        assert_eq!(point(&a, &cfg(json!({"warm_start": {"train": {"epochs": 1.0}}}))), Ok(Some(ForkPoint { iteration: 0, stage: Stage::Train })));
        // The earliest of several.
        assert_eq!(
            point(&a, &cfg(json!({"run": {"rft_data": "warm_start"}, "warm_start": {"train": {"epochs": 1.0}}}))),
            Ok(Some(ForkPoint { iteration: 0, stage: Stage::Train }))
        );
        let err = point(&a, &cfg(json!({"sampling": {"rollouts_per_task": 4}, "run": {"rft_data": "warm_start"}}))).unwrap_err();
        assert!(err.contains("sampling.rollouts_per_task changed") && err.contains("Start a new run"), "{err}");
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn manifest(root: &Path, folder: &str, stage: &str, outputs: &[&str]) {
        let m = json!({"stage": stage, "config_hash": "h", "wall_s": 1.0, "finished_at": 0, "outputs": outputs, "details": {"line": "x"}});
        write(&root.join(folder).join(format!("{stage}.manifest.json")), &m.to_string());
        for o in outputs {
            write(&root.join(o), o);
        }
    }

    #[test]
    fn a_fork_copies_the_stages_before_the_point_and_nothing_after() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("a"), tmp.path().join("b"));
        let a = cfg(json!({}));
        write(&src.join("config.json"), &a.to_string());
        let info = json!({"name": "a", "config_hash": "abc", "git_revision": "g", "seed": 0, "swegym_version": "0", "created_at": 0});
        write(&src.join("run.json"), &info.to_string());
        manifest(&src, "zero-shot", "eval", &["zero-shot/eval.parquet"]);
        write(&src.join("zero-shot/metrics.json"), "{}");
        for s in ["warm_start", "filter", "export", "eval"] {
            manifest(&src, "iter-000", s, &[&format!("iter-000/{s}.out")]);
        }
        manifest(&src, "iter-000", "train", &["iter-000/adapter"]);
        std::fs::remove_file(src.join("iter-000/adapter")).unwrap();
        write(&src.join("iter-000/adapter/adapter_model.safetensors"), "w");
        write(&src.join("iter-000/metrics.json"), "{}");
        for s in ["sample", "filter", "export", "train"] {
            manifest(&src, "iter-001", s, &[&format!("iter-001/{s}.out")]);
        }
        write(&src.join("iter-001/stray.log"), "not a stage output");
        let b = cfg(json!({"run": {"name": "b", "rft_data": "warm_start"}}));
        let f = fork(&src, &dst, &b).unwrap();
        assert_eq!(f.diverges_at, "iter-001 export");
        assert_eq!(f.changed, ["run.name", "run.rft_data"]);
        assert!(dst.join("iter-000/adapter/adapter_model.safetensors").exists() && dst.join("iter-000/metrics.json").exists());
        assert!(dst.join("zero-shot/metrics.json").exists() && dst.join("zero-shot/eval.manifest.json").exists());
        assert!(dst.join("iter-001/filter.manifest.json").exists() && dst.join("iter-001/sample.out").exists());
        for gone in ["iter-001/export.manifest.json", "iter-001/export.out", "iter-001/train.out", "iter-001/stray.log", "iter-001/metrics.json", "run.json"] {
            assert!(!dst.join(gone).exists(), "{gone} was copied");
        }
        assert_eq!(f.copied.len(), 8, "{:?}", f.copied);
        // A source that has not reached the point yet is refused, and says what to do.
        std::fs::remove_file(src.join("iter-001/filter.manifest.json")).unwrap();
        let err = fork(&src, &tmp.path().join("c"), &b).unwrap_err().to_string();
        assert!(err.contains("has not finished iter-001 filter") && err.contains("resume it"), "{err}");
    }
}
