//! The `export` stage: the kept rollouts (and, in iteration 0, a warm-start SFT file) as SFT
//! records in `sft.parquet`; or, with `[run] rft_data = "warm_start"`, the warm-start
//! trajectories of the kept rollouts' tasks.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use swegym_sample::Rollout;
use swegym_schema::rollout::read_rollouts;

use super::config::{RftData, WarmStart};
use super::Runner;
use super::filter::FilterFileRows;
use crate::run_dir::manifest::ExportDetails;
use crate::run_dir::read_json;
use crate::exit::Exit;

impl Runner {
    pub(super) async fn export_stage(&self, dir: &Path, i: u32) -> anyhow::Result<(Vec<PathBuf>, ExportDetails)> {
        let all = self.filter_input(dir)?;
        let decisions = read_json::<FilterFileRows>(&dir.join("filter.json"))?.decisions;
        anyhow::ensure!(decisions.len() == all.len(), "{}: {} decisions for {} rollouts (rerun after deleting filter.*)", dir.display(), decisions.len(), all.len());
        let kept: Vec<usize> = decisions.iter().zip(&all).enumerate().filter(|(_, (d, r))| d.keeps(r)).map(|(j, _)| j).collect();
        if i > 0 && self.cfg.run.rft_data == RftData::WarmStart {
            return self.export_warm_start_instead(dir, &all, &kept);
        }
        let mut records = swegym_export::records_from_rollouts(&all, &kept);
        let mut warm_records = 0;
        if let (Some(WarmStart::Sft { path, .. }), 0) = (&self.cfg.warm_start, i) {
            let extra = swegym_schema::read_sft(path).map_err(|e| Exit::bad_input(e.to_string()))?;
            warm_records = extra.len();
            records.extend(extra);
        }
        let out = dir.join("sft.parquet");
        let summary = swegym_export::write_records(&out, &records)?;
        let line = format!("{} SFT records ({} from rollouts, {} from the warm-start file) on {} tasks", summary.records, kept.len(), warm_records, summary.instances);
        Ok((vec![out], ExportDetails { line, records: summary.records as u64, warm_start_records: warm_records as u64, summary }))
    }

    /// `[run] rft_data = "warm_start"` (an ablation): for each rollout the filter kept, the
    /// warm-start (oracle) trajectory of the same task instead — the same tasks and steps,
    /// none of the policy's own data.
    pub(super) fn export_warm_start_instead(&self, dir: &Path, all: &[Rollout], kept: &[usize]) -> anyhow::Result<(Vec<PathBuf>, ExportDetails)> {
        let warm_path = self.dir.iter_dir(0).join("warm_start.parquet");
        let warm = read_rollouts(&warm_path).with_context(|| format!("{} (rft_data = \"warm_start\" reads it)", warm_path.display()))?;
        let mut used: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut picked = Vec::new();
        let mut missing = 0;
        for &j in kept {
            let id = all[j].instance_id.as_str();
            let of_task: Vec<usize> = (0..warm.len()).filter(|&w| warm[w].instance_id == id && warm[w].resolved == Some(true)).collect();
            if of_task.is_empty() {
                missing += 1;
                continue;
            }
            let n = used.entry(id).or_default();
            picked.push(of_task[*n % of_task.len()]);
            *n += 1;
        }
        let records = swegym_export::records_from_rollouts(&warm, &picked);
        let out = dir.join("sft.parquet");
        let summary = swegym_export::write_records(&out, &records)?;
        let line = format!(
            "{} SFT records: the warm-start trajectories of the {} kept rollouts' tasks (rft_data = \"warm_start\"; {missing} kept without a resolved warm-start trajectory) on {} tasks",
            summary.records,
            kept.len(),
            summary.instances
        );
        Ok((vec![out], ExportDetails { line, records: summary.records as u64, warm_start_records: summary.records as u64, summary }))
    }
}
