//! swegym-export: kept rollouts → SFT records, and SFT datasets on disk.
//!
//! A rollout becomes one [`SftRecord`]: its whole conversation as `messages` (system, the
//! task prompt, then assistant tool calls and `EXECUTION RESULT of [...]` user observations,
//! the form SWE-Gym's trajectories use), with `instance_id`, `iteration`, `source` (the
//! policy id), `resolved`, `n_turns`, `sample_idx`, `exit_reason` and `patch`. Several
//! datasets (iterations of a run, a warm-start file) concatenate into one, and the output
//! format follows the file extension: `.parquet` (TRL / torchtune / `datasets` layout) or
//! `.jsonl`. Loss masks are not stored: the trainer renders the chat template and learns
//! from assistant turns only, as TRL's `assistant_only_loss` and torchtune's
//! `train_on_assistant` do with these rows.
//!
//! Architecture invariant: knows rollouts and records, not why a rollout was kept (the
//! filter's decision arrives as indices) nor any model or tokenizer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use swegym_schema::sft::write_sft_jsonl;
use swegym_schema::{read_sft, write_sft, Rollout, SchemaError, SftRecord};

/// The on-disk form of an SFT dataset, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SftFormat {
    Parquet,
    Jsonl,
}

impl SftFormat {
    /// `.parquet` or `.jsonl`; anything else is an error naming the path.
    pub fn from_path(path: &Path) -> Result<SftFormat, ExportError> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("parquet") => Ok(SftFormat::Parquet),
            Some("jsonl") => Ok(SftFormat::Jsonl),
            _ => Err(ExportError::Format { path: path.to_path_buf() }),
        }
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: unknown SFT format (the name must end in .parquet or .jsonl)")]
    Format { path: PathBuf },
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// The SFT record of one rollout.
pub fn record_from_rollout(r: &Rollout) -> SftRecord {
    SftRecord {
        messages: r.messages.clone(),
        instance_id: r.instance_id.clone(),
        iteration: Some(r.iteration as i64),
        source: r.policy_id.clone(),
        resolved: r.resolved,
        n_turns: r.turns as i64,
        sample_idx: Some(r.sample_idx as i64),
        exit_reason: Some(r.exit_reason.as_str().to_string()),
        patch: Some(r.patch.clone()),
    }
}

/// The records of `rollouts[kept]`, in the order of `kept`.
pub fn records_from_rollouts(rollouts: &[Rollout], kept: &[usize]) -> Vec<SftRecord> {
    kept.iter().map(|&i| record_from_rollout(&rollouts[i])).collect()
}

/// What a written dataset holds (also the stage's manifest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ExportSummary {
    pub records: usize,
    pub instances: usize,
    pub by_source: BTreeMap<String, usize>,
    /// Records per iteration (`none` for records without one).
    pub by_iteration: BTreeMap<String, usize>,
    pub messages: usize,
    pub mean_turns: f64,
}

impl ExportSummary {
    pub fn of(records: &[SftRecord]) -> ExportSummary {
        let mut s = ExportSummary { records: records.len(), ..ExportSummary::default() };
        let instances: std::collections::BTreeSet<&str> = records.iter().map(|r| r.instance_id.as_str()).collect();
        s.instances = instances.len();
        for r in records {
            *s.by_source.entry(r.source.clone()).or_default() += 1;
            let it = r.iteration.map_or_else(|| "none".to_string(), |i| i.to_string());
            *s.by_iteration.entry(it).or_default() += 1;
            s.messages += r.messages.len();
        }
        s.mean_turns = if records.is_empty() { 0.0 } else { records.iter().map(|r| r.n_turns as f64).sum::<f64>() / records.len() as f64 };
        s
    }
}

/// Writes `records` to `out` (atomically) in the format its extension names.
pub fn write_records(out: &Path, records: &[SftRecord]) -> Result<ExportSummary, ExportError> {
    match SftFormat::from_path(out)? {
        SftFormat::Parquet => write_sft(out, records)?,
        SftFormat::Jsonl => write_sft_jsonl(out, records)?,
    }
    Ok(ExportSummary::of(records))
}

/// Reads SFT datasets (Parquet or JSONL) and concatenates them in order. A path in
/// `allow_empty` may hold zero rows (an iteration that kept nothing); any other empty
/// input is an error.
pub fn concat_datasets(inputs: &[PathBuf], allow_empty: bool) -> Result<Vec<SftRecord>, ExportError> {
    let mut all = Vec::new();
    for path in inputs {
        if allow_empty && is_empty_dataset(path)? {
            continue;
        }
        all.extend(read_sft(path)?);
    }
    Ok(all)
}

/// True for a zero-row Parquet (as `write_sft` writes for an iteration that kept nothing)
/// or an empty JSONL file.
pub fn is_empty_dataset(path: &Path) -> Result<bool, ExportError> {
    let io = |source| SchemaError::Io { path: path.to_path_buf(), source };
    match SftFormat::from_path(path)? {
        SftFormat::Jsonl => Ok(std::fs::read_to_string(path).map_err(io)?.trim().is_empty()),
        SftFormat::Parquet => {
            use swegym_schema::parquet_io::parquet_num_rows;
            Ok(parquet_num_rows(path)? == 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swegym_schema::{ExitReason, Message, Role};

    fn rollout(id: &str, idx: u32, iteration: u32) -> Rollout {
        Rollout {
            instance_id: id.into(),
            sample_idx: idx,
            iteration,
            policy_id: "oracle".into(),
            messages: vec![Message::system("s"), Message::user("u"), Message::assistant("a"), Message::user("o"), Message::assistant("f")],
            patch: "diff --git a/x b/x\n".into(),
            empty_patch: false,
            exit_reason: ExitReason::Submitted,
            turns: 2,
            prompt_tokens: 0,
            completion_tokens: 0,
            wall_seconds: 0.0,
            temperature: 0.0,
            seed: 0,
            error: None,
            resolved: Some(true),
            status: Some("resolved".into()),
        }
    }

    #[test]
    fn rollouts_become_records() {
        let rs = vec![rollout("a", 0, 1), rollout("b", 3, 1), rollout("c", 1, 1)];
        let recs = records_from_rollouts(&rs, &[2, 0]);
        assert_eq!(recs.iter().map(|r| r.instance_id.as_str()).collect::<Vec<_>>(), ["c", "a"]);
        let r = &recs[0];
        assert_eq!((r.iteration, r.sample_idx, r.n_turns, r.resolved), (Some(1), Some(1), 2, Some(true)));
        assert_eq!(r.source, "oracle");
        assert_eq!(r.exit_reason.as_deref(), Some("submitted"));
        assert_eq!(r.messages[2].role, Role::Assistant);
    }

    #[test]
    fn write_concat_and_summary() {
        let dir = tempfile::tempdir().unwrap();
        let rs = vec![rollout("a", 0, 0), rollout("b", 0, 1)];
        let p0 = dir.path().join("i0.parquet");
        let p1 = dir.path().join("i1.jsonl");
        let empty = dir.path().join("i2.parquet");
        write_records(&p0, &records_from_rollouts(&rs, &[0])).unwrap();
        write_records(&p1, &records_from_rollouts(&rs, &[1])).unwrap();
        write_records(&empty, &[]).unwrap();
        assert!(is_empty_dataset(&empty).unwrap());
        assert!(!is_empty_dataset(&p0).unwrap());
        let all = concat_datasets(&[p0.clone(), empty.clone(), p1], true).unwrap();
        let s = ExportSummary::of(&all);
        assert_eq!((s.records, s.instances, s.messages, s.mean_turns), (2, 2, 10, 2.0));
        assert_eq!(s.by_iteration, BTreeMap::from([("0".to_string(), 1), ("1".to_string(), 1)]));
        assert!(concat_datasets(&[p0, empty], false).unwrap_err().to_string().contains("empty file"));
        let bad = write_records(&dir.path().join("x.csv"), &[]).unwrap_err().to_string();
        assert!(bad.contains("x.csv: unknown SFT format"), "{bad}");
    }
}
