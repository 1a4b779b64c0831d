//! `swegym report RUN`: the per-iteration tables of a run (finished or not) in the terminal,
//! and `report.md`, `metrics.parquet`, `resolve_rate.svg`, `empty_patch_rate.svg` written
//! into the run directory; with verifier results (`RUN/verifier/eval.json`, from `swegym
//! verifier eval --run RUN`) also the Pass@k / Best@k table and `verifier/pass_best_at_k.svg`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use swegym_report::scaling::{Mean, ScalingCurves, ScalingPoint};
use swegym_report::RunReport;
use swegym_schema::{IterationMetrics, SplitMetrics};
use swegym_verifier::ScalingReport;

use crate::run_dir::{read_json, RunDir, RunInfo};
use crate::exit::Exit;

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
    // The config's own description of the run ([run] about), when it has one.
    let config: serde_json::Value = read_json(&root.join("config.json")).unwrap_or_default();
    let mut about = config["run"]["about"].as_str().map(str::to_string);
    if let Some(f) = &info.forked_from {
        // A fork shares its source's stages up to the point it diverges: say so first.
        let shared = format!(
            "Forked from {} (config {}): changed {}; every stage before {} is that run's own output, copied, so the two runs are paired on those stages task by task.",
            f.run,
            &f.config_hash[..12.min(f.config_hash.len())],
            f.changed.join(", "),
            f.diverges_at
        );
        about = Some(match about {
            Some(a) => format!("{a}\n\n{shared}"),
            None => shared,
        });
    }
    Ok(RunReport { run: info.name, about, zero_shot, iterations })
}

/// A verifier's Pass@k / Best@k / Random@k as the report's curves.
pub fn scaling_curves(report: &ScalingReport, verifier: &str) -> ScalingCurves {
    let mean = |r: &swegym_verifier::Rate| Mean { mean: r.mean, std: r.std };
    let c = &report.classifier;
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    ScalingCurves {
        verifier: verifier.to_string(),
        points: report
            .points
            .iter()
            .map(|p| ScalingPoint { k: p.k, instances: p.instances, pass: mean(&p.pass), best: mean(&p.best), random: mean(&p.random) })
            .collect(),
        notes: vec![format!(
            "Verifier on these {} rollouts ({} resolved): AUC {}, accuracy {:.1}% (p_yes > 0.5 read as YES), mean p_yes {} resolved / {} unresolved.",
            c.rollouts,
            c.positives,
            fmt(c.auc),
            100.0 * c.accuracy,
            fmt(c.mean_p_yes_resolved),
            fmt(c.mean_p_yes_unresolved)
        )],
    }
}

/// The run's verifier results, if `swegym verifier eval --run` wrote them.
fn load_verifier(root: &Path) -> anyhow::Result<Option<swegym_verifier::EvalFile>> {
    let path = crate::run_dir::verifier_eval_path(root);
    if !path.exists() {
        return Ok(None);
    }
    read_json(&path).map(Some)
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let root = find_run(&args.run)?;
    let report = load_report(&root)?;
    let verifier = load_verifier(&root)?;
    if args.json {
        let value = serde_json::json!({"run": report.run, "zero_shot": report.zero_shot, "iterations": report.iterations, "verifier": verifier});
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    if let Some(v) = &verifier {
        let curves = scaling_curves(&v.report, "the verifier");
        let dir = crate::run_dir::verifier_eval_path(&root).parent().expect("has a parent").to_path_buf();
        let files = swegym_report::scaling::write_scaling(&dir, &curves).context("writing the verifier report")?;
        print!("{}", curves.table().to_text());
        println!("{}", curves.notes.join("\n"));
        let names: Vec<String> = files.iter().map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string()).collect();
        println!("written to {}: {}\n", root.display(), names.join(", "));
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
