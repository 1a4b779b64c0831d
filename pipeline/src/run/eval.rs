//! The `eval` stage: policy_{i+1} on the held-out split, or — when the iteration trained
//! nothing — policy_i's evaluation reused.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::config::SplitKind;
use super::{PolicyChoice, Runner};
use crate::run_dir::manifest::{EvalDetails, Manifest, Reused, TrainDetails};

impl Runner {
    pub(super) async fn eval_stage(&self, i: u32, train: &Manifest<TrainDetails>, adapter: Option<PathBuf>) -> anyhow::Result<(Vec<PathBuf>, EvalDetails)> {
        let dir = self.dir.iter_dir(i);
        let out = dir.join("eval.parquet");
        if !train.details.trained {
            // policy_{i+1} = policy_i: its held-out evaluation is the one already made.
            let previous = if i == 0 { self.dir.zero_shot_dir() } else { self.dir.iter_dir(i - 1) }.join("eval.parquet");
            let (outputs, reused) = self.reuse(&previous, &out)?;
            return Ok((outputs, EvalDetails::Reused(reused)));
        }
        let (outputs, sampled) = self.sample_stage(SplitKind::Test, PolicyChoice::Model { adapter }, i + 1, &out, "eval (test)").await?;
        Ok((outputs, EvalDetails::Sampled(sampled)))
    }

    /// Copies an earlier stage's output to `out` (atomically): the policy did not change.
    pub(super) fn reuse(&self, previous: &Path, out: &Path) -> anyhow::Result<(Vec<PathBuf>, Reused)> {
        let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let tmp = out.with_file_name(format!(".{name}.tmp"));
        std::fs::copy(previous, &tmp).with_context(|| format!("copying {}", previous.display()))?;
        std::fs::rename(&tmp, out)?;
        let reused_from = self.dir.rel(previous);
        Ok((vec![out.to_path_buf()], Reused { line: format!("reused {reused_from} (policy unchanged)"), reused_from }))
    }
}
