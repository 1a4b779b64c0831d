//! What an evaluation run leaves on disk: `verdicts.parquet`, `summary.json` and
//! `logs/<instance>/<label>.log`, plus the summary printed to the terminal; and progress on
//! stderr (a bar on a terminal, a plain line every 30 s otherwise).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use swegym_evaluate::runner::{log_path, JobResult};
use swegym_schema::parquet_io::{verdict_schema, write_parquet};
use swegym_schema::{EvalStatus, Verdict};

/// The SWE-bench-style report of one run (ids per outcome).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub total_instances: usize,
    pub submitted_instances: usize,
    pub resolved_instances: usize,
    pub unresolved_instances: usize,
    pub empty_patch_instances: usize,
    pub apply_failed_instances: usize,
    pub timeout_instances: usize,
    pub error_instances: usize,
    /// Resolved / total instances of the dataset, in percent.
    pub resolve_rate: f64,
    pub resolved_ids: Vec<String>,
    pub unresolved_ids: Vec<String>,
    pub empty_patch_ids: Vec<String>,
    pub apply_failed_ids: Vec<String>,
    pub timeout_ids: Vec<String>,
    pub error_ids: Vec<String>,
    /// Dataset instances with no prediction.
    pub missing_ids: Vec<String>,
    /// Predictions naming no instance of the dataset (skipped).
    pub unknown_ids: Vec<String>,
    pub wall_seconds: f64,
}

impl Summary {
    pub fn new(total_instances: usize, verdicts: &[Verdict], missing_ids: Vec<String>, unknown_ids: Vec<String>, wall_seconds: f64) -> Summary {
        let mut by: BTreeMap<EvalStatus, Vec<String>> = BTreeMap::new();
        for v in verdicts {
            by.entry(v.status).or_default().push(v.instance_id.clone());
        }
        let mut ids = |s: EvalStatus| {
            let mut v = by.remove(&s).unwrap_or_default();
            v.sort();
            v
        };
        let (resolved_ids, unresolved_ids, empty_patch_ids) = (ids(EvalStatus::Resolved), ids(EvalStatus::Unresolved), ids(EvalStatus::EmptyPatch));
        let (apply_failed_ids, timeout_ids, error_ids) = (ids(EvalStatus::PatchApplyFailed), ids(EvalStatus::TestTimeout), ids(EvalStatus::EnvError));
        Summary {
            total_instances,
            submitted_instances: verdicts.len(),
            resolved_instances: resolved_ids.len(),
            unresolved_instances: unresolved_ids.len(),
            empty_patch_instances: empty_patch_ids.len(),
            apply_failed_instances: apply_failed_ids.len(),
            timeout_instances: timeout_ids.len(),
            error_instances: error_ids.len(),
            resolve_rate: if total_instances == 0 { 0.0 } else { 100.0 * resolved_ids.len() as f64 / total_instances as f64 },
            resolved_ids,
            unresolved_ids,
            empty_patch_ids,
            apply_failed_ids,
            timeout_ids,
            error_ids,
            missing_ids,
            unknown_ids,
            wall_seconds,
        }
    }

    pub fn print(&self, out_dir: &Path) {
        println!("instances in dataset   {:>6}", self.total_instances);
        println!("predictions evaluated  {:>6}", self.submitted_instances);
        println!("resolved               {:>6}  ({:.1}% of the dataset)", self.resolved_instances, self.resolve_rate);
        println!("unresolved             {:>6}", self.unresolved_instances);
        println!("empty patch            {:>6}", self.empty_patch_instances);
        println!("patch apply failed     {:>6}", self.apply_failed_instances);
        println!("tests timed out        {:>6}", self.timeout_instances);
        println!("environment errors     {:>6}", self.error_instances);
        if !self.unknown_ids.is_empty() {
            println!("unknown instance ids   {:>6}  (skipped: {})", self.unknown_ids.len(), self.unknown_ids.join(", "));
        }
        println!("wall time              {:>6.1} s", self.wall_seconds);
        println!("results in {}", out_dir.display());
    }
}

/// Writes each job's log and returns the verdicts in job order.
pub fn write_logs(out_dir: &Path, results: &[JobResult]) -> anyhow::Result<Vec<Verdict>> {
    let logs = out_dir.join("logs");
    let mut verdicts = Vec::with_capacity(results.len());
    for r in results {
        let path = log_path(&logs, &r.outcome.verdict.instance_id, &r.label);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, &r.outcome.log).with_context(|| format!("writing {}", path.display()))?;
        verdicts.push(r.outcome.verdict.clone());
    }
    Ok(verdicts)
}

pub fn write_verdicts(out_dir: &Path, name: &str, verdicts: &[Verdict]) -> anyhow::Result<PathBuf> {
    let path = out_dir.join(name);
    write_parquet(&path, verdict_schema(), verdicts).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// How often a stage's progress is printed as a plain line when stderr is not a terminal
/// (`--progress-every`, set once by `main`; 30 s when unset).
pub static PLAIN_PROGRESS_EVERY: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

/// When stderr is not a terminal (a log file, CI, nohup) indicatif draws nothing: a line
/// says the stage started, and a thread then prints `bar`'s state as one plain line (no
/// escape codes) every [`PLAIN_PROGRESS_EVERY`] until the bar is finished or dropped, so a
/// long stage is never silent there.
pub fn plain_progress_when_piped(bar: &indicatif::ProgressBar, what: &str) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        return;
    }
    let every = *PLAIN_PROGRESS_EVERY.get_or_init(|| std::time::Duration::from_secs(30));
    eprintln!("[{what}] started");
    let weak = bar.downgrade();
    let what = what.to_string();
    let spawned = std::thread::Builder::new().name("plain-progress".into()).spawn(move || {
        let mut last = std::time::Instant::now();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let Some(bar) = weak.upgrade() else { return };
            if bar.is_finished() {
                return;
            }
            if last.elapsed() >= every {
                last = std::time::Instant::now();
                eprintln!("{}", plain_progress_line(&what, &bar));
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread for plain progress lines");
    }
}

/// `[sampling] 12/40 (30%), 4m10s elapsed: <message>`.
fn plain_progress_line(what: &str, bar: &indicatif::ProgressBar) -> String {
    let elapsed = bar.elapsed().as_secs();
    let mut line = format!("[{what}] {}", bar.position());
    if let Some(len) = bar.length().filter(|&n| n > 0) {
        line.push_str(&format!("/{len} ({:.0}%)", 100.0 * bar.position() as f64 / len as f64));
    }
    line.push_str(&format!(", {}m{:02}s elapsed", elapsed / 60, elapsed % 60));
    let message = bar.message();
    if !message.is_empty() {
        line.push_str(&format!(": {message}"));
    }
    line
}

/// A progress bar on stderr; when stderr is not a terminal, plain lines instead
/// ([`plain_progress_when_piped`]).
pub fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed_precise}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    plain_progress_when_piped(&bar, what);
    bar
}

/// A progress bar with ETA on stderr (plain lines when stderr is not a terminal).
pub fn stage_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    plain_progress_when_piped(&bar, what);
    bar
}

/// `<base>/<name>-<unix seconds>` when the user gave no output directory.
pub fn default_out_dir(name: &str) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    PathBuf::from("runs").join(format!("{name}-{secs}"))
}
