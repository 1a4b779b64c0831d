//! A dataset folder (the Hugging Face layout, or ours): which task files hold a split, and
//! which splits the folder offers. Reads the folder's listing only, never the files.

use std::path::{Path, PathBuf};

/// The task files of `split` in a dataset folder: `<split>.jsonl|.json|.parquet`, or the
/// shards `<split>-*.parquet` / `data/<split>-*.parquet` (the Hugging Face layout).
pub fn split_files(dir: &Path, split: &str) -> Result<Vec<PathBuf>, String> {
    for ext in ["jsonl", "json", "parquet"] {
        let p = dir.join(format!("{split}.{ext}"));
        if p.is_file() {
            return Ok(vec![p]);
        }
    }
    for sub in [dir.to_path_buf(), dir.join("data")] {
        let mut shards: Vec<PathBuf> = std::fs::read_dir(&sub)
            .map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<PathBuf>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p: &PathBuf| {
                let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                name.starts_with(&format!("{split}-")) && name.ends_with(".parquet")
            })
            .collect();
        if !shards.is_empty() {
            shards.sort();
            return Ok(shards);
        }
    }
    Err(format!(
        "dataset {} has no split {split:?} (looked for {split}.jsonl, {split}.json, {split}.parquet, data/{split}-*.parquet); splits there: {}",
        dir.display(),
        splits_in(dir).join(", ")
    ))
}

/// The split names a dataset folder offers (file stems of its task files).
fn splits_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            matches!(ext, "jsonl" | "json" | "parquet") && !p.file_name().is_some_and(|n| n.to_string_lossy().contains("manifest"))
        })
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().to_string()))
        .collect();
    names.sort();
    if names.is_empty() {
        names.push("none".into());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_is_one_file_or_its_shards_and_a_missing_one_names_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["train.jsonl", "test.parquet", "synth_manifest.jsonl", "notes.txt"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("data")).unwrap();
        for f in ["dev-00001-of-00002.parquet", "dev-00000-of-00002.parquet"] {
            std::fs::write(dir.path().join("data").join(f), "").unwrap();
        }
        assert_eq!(split_files(dir.path(), "train").unwrap(), [dir.path().join("train.jsonl")]);
        let dev = split_files(dir.path(), "dev").unwrap();
        assert_eq!(dev, ["dev-00000-of-00002.parquet", "dev-00001-of-00002.parquet"].map(|f| dir.path().join("data").join(f)));
        let e = split_files(dir.path(), "validation").unwrap_err();
        assert!(e.contains("has no split \"validation\"") && e.contains("splits there: test, train"), "{e}");
    }
}
