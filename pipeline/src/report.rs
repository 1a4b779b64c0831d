//! `swegym report RUN`: the per-iteration tables of a run (finished or not) in the terminal,
//! and `report.md`, `metrics.parquet`, `resolve_rate.svg`, `empty_patch_rate.svg` written
//! into the run directory.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use swegym_report::RunReport;
use swegym_schema::{IterationMetrics, SplitMetrics};

use crate::run::dir::{read_json, RunDir, RunInfo};
use crate::Exit;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The run: its directory, or its name under runs/.
    pub run: PathBuf,
    /// Print the metrics as JSON (the zero-shot row and every iteration) instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `RUN` as a directory, else `runs/RUN`; it must hold a `run.json`.
pub fn find_run(run: &Path) -> anyhow::Result<PathBuf> {
    let candidates = [run.to_path_buf(), Path::new("runs").join(run)];
    candidates
        .iter()
        .find(|d| d.join("run.json").is_file())
        .cloned()
        .ok_or_else(|| Exit::bad_input(format!("{}: not a run directory (no run.json there or in runs/{})", run.display(), run.display())))
}

/// Reads the metrics every finished part of a run wrote.
pub fn load_report(root: &Path) -> anyhow::Result<RunReport> {
    let info: RunInfo = read_json(&root.join("run.json"))?;
    let dir = RunDir::new(root.to_path_buf());
    let zero = dir.zero_shot_dir().join("metrics.json");
    let zero_shot: Option<SplitMetrics> = if zero.exists() { Some(read_json(&zero)?) } else { None };
    let iterations: Vec<IterationMetrics> =
        dir.finished_iterations().into_iter().map(|i| read_json(&dir.iter_dir(i).join("metrics.json"))).collect::<anyhow::Result<_>>()?;
    Ok(RunReport { run: info.name, zero_shot, iterations })
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let root = find_run(&args.run)?;
    let report = load_report(&root)?;
    if args.json {
        let value = serde_json::json!({"run": report.run, "zero_shot": report.zero_shot, "iterations": report.iterations});
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    if report.zero_shot.is_none() && report.iterations.is_empty() {
        println!("{}: no finished stage has metrics yet", root.display());
        return Ok(());
    }
    let files = swegym_report::write_report(&root, &report).context("writing the report")?;
    print!("{}", report.terminal());
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap_or_default().to_string_lossy().to_string()).collect();
    println!("\nwritten to {}: {}", root.display(), names.join(", "));
    Ok(())
}
