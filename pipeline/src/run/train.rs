//! The `train` stage: a LoRA adapter from the base on the kept data of iterations 0..=i (or
//! continuing the previous adapter on iteration i's), in `adapter.partial/` until it is
//! finished and renamed into place; an iteration that kept nothing trains nothing.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::config::Adapters;
use super::Runner;
use crate::run_dir::manifest::{ExportDetails, Manifest, Stage, TrainDetails};
use crate::run_dir::{read_json, write_json_atomic, RunDir};
use crate::exit::Exit;

/// What the trainer did: numbers of a finished adapter, or why nothing was trained.
enum Trained {
    Adapter(swegym_train::TrainNumbers),
    Nothing(String),
}

impl Runner {
    pub(super) async fn train_stage(&self, i: u32, previous: Option<PathBuf>) -> anyhow::Result<(Vec<PathBuf>, TrainDetails)> {
        let dir = self.dir.iter_dir(i);
        let export: Option<Manifest<ExportDetails>> = RunDir::manifest(&dir, Stage::Export)?;
        let kept_now = export.map_or(0, |m| m.details.records);
        let carry = |reason: String| {
            let adapter = previous.as_deref().map(|p| self.dir.rel(p));
            let line = format!("skipped: {reason}; policy_{} = policy_{i}", i + 1);
            Ok((vec![], TrainDetails { line, trained: false, skipped_reason: Some(reason), adapter, examples: None, summary: None }))
        };
        if kept_now == 0 {
            return carry(format!("iteration {i} kept no trajectories"));
        }
        // From the base on every iteration's kept data, or continuing the previous adapter
        // on this iteration's alone.
        let (files, init): (Vec<PathBuf>, Option<PathBuf>) = match self.cfg.run.adapters {
            Adapters::FromBase => ((0..=i).map(|j| self.dir.iter_dir(j).join("sft.parquet")).collect(), None),
            Adapters::Continue => (vec![dir.join("sft.parquet")], previous.clone()),
        };
        let continues = init.is_some();
        let out = dir.join("adapter");
        let summary = if out.join("train_summary.json").exists() {
            read_json(&out.join("train_summary.json"))?
        } else {
            match self.train_adapter(i, &files, init, &out).await? {
                Trained::Adapter(summary) => summary,
                Trained::Nothing(reason) => return carry(reason),
            }
        };
        let line = self.train_line(i, continues, &summary);
        let details =
            TrainDetails { line, trained: true, skipped_reason: None, adapter: Some(self.dir.rel(&out)), examples: Some(summary.examples_total), summary: Some(summary) };
        Ok((vec![out.clone()], details))
    }

    /// Trains adapter `i` on the SFT `files` (continuing `init` when set) into
    /// `adapter.partial/` beside `out`, then renames it to `out`.
    async fn train_adapter(&self, i: u32, files: &[PathBuf], init: Option<PathBuf>, out: &Path) -> anyhow::Result<Trained> {
        let dir = self.dir.iter_dir(i);
        let records = swegym_export::concat_datasets(files, true)?;
        let partial = dir.join("adapter.partial");
        let device = self.cfg.policy.device_choice().resolve().map_err(|e| Exit::bad_input(e.to_string()))?;
        let (model, config, partial2) = (self.cfg.policy.model.clone(), self.cfg.train_for(i).clone(), partial.clone());
        let data_name = match init {
            None => format!("{} (sft.parquet of iterations 0..={i})", self.dir.rel(&dir)),
            Some(_) => format!("{} (sft.parquet of iteration {i}, continuing policy_{i}'s adapter)", self.dir.rel(&dir)),
        };
        let bar = crate::output::stage_bar(0, "train (LoRA)");
        let bar2 = bar.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut on_step = |s: &swegym_train::StepLog| {
                bar2.set_length(s.total_steps as u64);
                bar2.set_position(s.step as u64);
                bar2.set_message(format!("loss {:.4} lr {:.2e} {:.0} tok/s", s.loss, s.learning_rate, s.tokens_per_s));
            };
            let req = swegym_train::TrainRequest {
                model: &model,
                records: &records,
                data_name: &data_name,
                out_dir: &partial2,
                config: &config,
                device,
                init_adapter: init.as_deref(),
            };
            swegym_train::train(req, &mut on_step)
        })
        .await
        .context("the training thread")?;
        bar.finish_and_clear();
        match result {
            Ok(mut summary) => {
                // The trainer wrote into adapter.partial/; the summary names where the
                // adapter lives once it is in place.
                summary.adapter_dir = out.to_path_buf();
                write_json_atomic(&partial.join("train_summary.json"), &summary)?;
                if out.exists() {
                    std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
                }
                std::fs::rename(&partial, out).with_context(|| format!("renaming {} into place", partial.display()))?;
                Ok(Trained::Adapter(swegym_train::TrainNumbers::from(&summary)))
            }
            Err(swegym_train::TrainError::Data { problem, .. }) if problem.starts_with("nothing to train on") => Ok(Trained::Nothing(problem)),
            Err(e) => Err(Exit::bad_input(format!("training adapter {i}: {e}"))),
        }
    }

    /// The manifest's line: steps, examples, which data, the loss, and — when the run ended
    /// inside the linear warm-up — how far the learning rate got.
    fn train_line(&self, i: u32, continues: bool, summary: &swegym_train::TrainNumbers) -> String {
        let data = match (self.cfg.run.adapters, continues) {
            (Adapters::FromBase, _) if i == 0 => "from the base",
            (Adapters::FromBase, _) => "cumulative, from the base",
            (Adapters::Continue, true) => "this iteration's, continuing the previous adapter",
            (Adapters::Continue, false) => "this iteration's, from the base",
        };
        let mut line = format!(
            "{} steps on {} examples ({data}), loss {:.4} → {:.4}, {} tokens",
            summary.steps,
            summary.examples_used,
            summary.loss_first.unwrap_or(f64::NAN),
            summary.loss_last.unwrap_or(f64::NAN),
            summary.tokens
        );
        let (warmup, peak) = (self.cfg.train_for(i).warmup_steps as u64, self.cfg.train_for(i).learning_rate);
        if summary.steps <= warmup {
            // Linear warm-up from 0 that the run never finished: say how small the update was.
            let reached = peak * summary.steps.saturating_sub(1) as f64 / warmup.max(1) as f64;
            line.push_str(&format!("; all of it warm-up ({warmup} steps): the learning rate reached {reached:.1e} of {peak:.1e}"));
        }
        line
    }
}
