//! The data types every swegym stage exchanges, and their on-disk codecs.
//!
//! Architecture invariant: this crate depends on nothing of ours and knows nothing
//! about sandboxes, models or the pipeline; it only says what a task, a prediction, a
//! verdict, a rollout, an SFT record and an iteration's metrics *are* and how they are read
//! and written (and, in [`patch`], how a patch is read as text).

pub mod dataset_dir;
pub mod metrics;
pub mod parquet_io;
pub mod patch;
pub mod prediction;
pub mod rollout;
pub mod sft;
pub mod stats;
pub mod task;
pub mod verdict;

pub use metrics::{per_task, task_mix, AtK, FilterCounts, IterationMetrics, SplitMetrics, Submitter, TaskMix, TaskOutcome, TrainMetrics};
pub use prediction::{load_predictions, Prediction};
pub use rollout::{ExitReason, Message, Role, Rollout};
pub use sft::{read_sft, write_sft, SftRecord};
pub use stats::DatasetStats;
pub use task::{load_tasks, load_tasks_with, write_tasks, LoadOptions, RowError, Task, TaskLoad};
pub use verdict::{EvalStatus, Verdict};

/// Errors of reading or writing a whole file (a bad *row* is a [`RowError`], not this).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("parquet error in {path}: {message}")]
    Parquet {
        path: std::path::PathBuf,
        message: String,
    },
}

/// Writes `rows` as JSONL, one object a line, atomically (a temp file renamed over `path`);
/// `name` says which row could not be encoded.
pub(crate) fn write_jsonl<T: serde::Serialize>(path: &std::path::Path, rows: &[T], name: impl Fn(&T) -> String) -> Result<(), SchemaError> {
    let io = |source| SchemaError::Io { path: path.to_path_buf(), source };
    let mut text = String::new();
    for row in rows {
        let line = serde_json::to_string(row).map_err(|e| SchemaError::Format { path: path.to_path_buf(), message: format!("cannot encode {}: {e}", name(row)) })?;
        text.push_str(&line);
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
