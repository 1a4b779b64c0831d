//! `swegym dataset validate|stats`: check that a dataset's instances are executable and
//! graded as SWE-bench would, or describe it as the SWE-Gym paper's dataset table does.
//! Both take a task file or a dataset folder; a folder means every split it has
//! ([`load_splits`]), with results per split.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use swegym_evaluate::runner::{Job, JobKind, JobResult};
use swegym_schema::{DatasetStats, EvalStatus, Task};
use swegym_synth::tier::{Manifest, Tier};

use crate::context::Context;
use crate::evaluate::{load_dataset, HarnessArgs};
use crate::output;
use swegym_schema::dataset_dir::split_files;
use crate::exit::Exit;

#[derive(clap::Subcommand, Debug)]
pub enum DatasetCommand {
    /// Per instance: FAIL_TO_PASS fails before the gold patch, the gold patch resolves, an
    /// empty patch does not. A folder: every split, results per split. Exit code 1 if any
    /// instance is invalid.
    Validate(ValidateArgs),
    /// Instances, repos, issue words, gold-patch size and test counts (mean / median / max).
    Stats(StatsArgs),
}

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// Task file (JSONL, JSON array or Parquet), or a dataset folder: every split in it
    /// (`<split>.jsonl|json|parquet`, `[data/]<split>-*.parquet` shards).
    pub dataset: PathBuf,
    /// Only these instance ids.
    #[arg(long = "instance-ids", num_args = 1..)]
    pub instance_ids: Vec<String>,
    #[command(flatten)]
    pub harness: HarnessArgs,
}

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Task file, or a dataset folder (a table per split).
    pub dataset: PathBuf,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Context, cmd: DatasetCommand) -> anyhow::Result<()> {
    match cmd {
        DatasetCommand::Validate(args) => validate(ctx, args).await,
        DatasetCommand::Stats(args) => stats(ctx, args),
    }
}

fn stats(ctx: &Context, args: StatsArgs) -> anyhow::Result<()> {
    let splits = load_splits(&args.dataset, ctx.task_load)?;
    // A synthesized dataset's manifest (beside the split files) gives each task's tier.
    let folder = if args.dataset.is_dir() { args.dataset.clone() } else { args.dataset.parent().map(Path::to_path_buf).unwrap_or_default() };
    let manifest = Manifest::in_folder(&folder).map_err(|e| Exit::bad_input(format!("reading the synth manifest: {e}")))?;
    let stats_json = |tasks: &[Task]| -> anyhow::Result<serde_json::Value> {
        let mut v = serde_json::to_value(DatasetStats::compute(tasks))?;
        if let (Some(m), Some(obj)) = (&manifest, v.as_object_mut()) {
            obj.insert("difficulty".into(), serde_json::to_value(TierCounts::of(m, tasks))?);
        }
        Ok(v)
    };
    if args.json {
        // A file: its stats object, as before; a folder: one object per split name.
        let json = if let [LoadedSplit { name: None, tasks, .. }] = &splits[..] {
            stats_json(tasks)?
        } else {
            let mut by_split = serde_json::Map::new();
            for split in &splits {
                by_split.insert(split.label().to_string(), stats_json(&split.tasks)?);
            }
            by_split.into()
        };
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    for (i, split) in splits.iter().enumerate() {
        if let Some(name) = &split.name {
            println!("{}split {name} ({})", if i > 0 { "\n" } else { "" }, split.files_label());
        }
        print!("{}", DatasetStats::compute(&split.tasks).to_table());
        if let Some(m) = &manifest {
            print!("{}", TierCounts::of(m, &split.tasks).to_table());
        }
    }
    Ok(())
}

/// Tasks per difficulty tier and mutation kind (from a synth manifest).
#[derive(Debug, Default, serde::Serialize)]
struct TierCounts {
    /// kind → tier → tasks.
    by_kind: BTreeMap<String, BTreeMap<Tier, usize>>,
    by_tier: BTreeMap<Tier, usize>,
    /// Tasks whose statement quotes a traceback entry at the bug's line.
    statement_shows_line: usize,
    /// Tasks the manifest does not list.
    unknown: usize,
}

impl TierCounts {
    fn of(manifest: &Manifest, tasks: &[Task]) -> TierCounts {
        let mut c = TierCounts::default();
        for t in tasks {
            let (Some(row), Some(d)) = (manifest.get(&t.instance_id), manifest.difficulty(&t.instance_id, &t.patch, &t.problem_statement)) else {
                c.unknown += 1;
                continue;
            };
            *c.by_kind.entry(row.kind.as_str().to_string()).or_default().entry(d.tier).or_default() += 1;
            *c.by_tier.entry(d.tier).or_default() += 1;
            c.statement_shows_line += usize::from(d.statement_shows_line);
        }
        c
    }

    fn to_table(&self) -> String {
        let mut out = String::from("\ndifficulty (synth manifest)      easy  medium   hard\n");
        let row = |name: &str, counts: &BTreeMap<Tier, usize>| {
            let n = |t: Tier| counts.get(&t).copied().unwrap_or(0);
            format!("  {name:<30} {:>5} {:>7} {:>6}\n", n(Tier::Easy), n(Tier::Medium), n(Tier::Hard))
        };
        for (kind, counts) in &self.by_kind {
            out.push_str(&row(kind, counts));
        }
        out.push_str(&row("all", &self.by_tier));
        out.push_str(&format!("  statements quoting the bug's line: {}\n", self.statement_shows_line));
        if self.unknown > 0 {
            out.push_str(&format!("  not in the manifest: {}\n", self.unknown));
        }
        out
    }
}

/// `train` of `train-00000-of-00002` (a Hugging Face shard name), else `None`.
fn shard_split(stem: &str) -> Option<&str> {
    let (left, of) = stem.rsplit_once("-of-")?;
    let (split, index) = left.rsplit_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    (digits(index) && digits(of) && !split.is_empty()).then_some(split)
}

/// The tasks of one split (or of the one file given).
struct LoadedSplit {
    /// `None` when a file was given.
    name: Option<String>,
    files: Vec<PathBuf>,
    tasks: Vec<Task>,
}

impl LoadedSplit {
    fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("dataset")
    }

    fn files_label(&self) -> String {
        self.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
    }
}

/// A task file as one unnamed split, or every split of a dataset folder, by name:
/// `<split>.jsonl|json|parquet`, and `<split>-NNNNN-of-NNNNN.parquet` shards in the folder or
/// in `data/` (the Hugging Face layout), each resolved as `swegym run` resolves a split
/// ([`split_files`]). A file holding no task row (`synth_manifest.jsonl`,
/// `synth_report.json`, …) is not a split: it is named in a note and passed over.
fn load_splits(path: &Path, options: swegym_schema::LoadOptions) -> anyhow::Result<Vec<LoadedSplit>> {
    if !path.is_dir() {
        return Ok(vec![LoadedSplit { name: None, files: vec![path.to_path_buf()], tasks: load_dataset(path, options)? }]);
    }
    let mut names = std::collections::BTreeSet::new();
    for sub in [path.to_path_buf(), path.join("data")] {
        let Ok(entries) = std::fs::read_dir(&sub) else { continue };
        for file in entries.flatten().map(|e| e.path()).filter(|p| p.is_file()) {
            let name = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            if let Some(split) = name.strip_suffix(".parquet").and_then(shard_split) {
                names.insert(split.to_string());
            } else if sub == path {
                if let Some(stem) = ["jsonl", "json", "parquet"].iter().find_map(|ext| name.strip_suffix(&format!(".{ext}"))) {
                    names.insert(stem.to_string());
                }
            }
        }
    }
    let mut splits = Vec::new();
    for name in names {
        let files = split_files(path, &name).map_err(Exit::bad_input)?;
        let (mut tasks, mut errors, mut unreadable) = (Vec::new(), Vec::new(), None);
        for f in &files {
            match swegym_schema::load_tasks_with(f, options) {
                Ok(load) => {
                    tasks.extend(load.tasks);
                    errors.extend(load.errors);
                }
                Err(e) => unreadable = Some(e.to_string()),
            }
        }
        if tasks.is_empty() {
            let why = unreadable.unwrap_or_else(|| "no row is a task".to_string());
            for f in &files {
                eprintln!("note: {} is not a split ({why})", f.display());
            }
            continue;
        }
        for e in &errors {
            eprintln!("warning: skipping {e}");
        }
        splits.push(LoadedSplit { name: Some(name), files, tasks });
    }
    if splits.is_empty() {
        return Err(Exit::bad_input(format!(
            "{}: no split found (looked for <split>.jsonl, <split>.json, <split>.parquet and [data/]<split>-NNNNN-of-NNNNN.parquet holding task rows)",
            path.display()
        )));
    }
    Ok(splits)
}

/// The three checks of one instance.
#[derive(Debug, Serialize)]
struct InstanceValidation {
    instance_id: String,
    valid: bool,
    /// Before any patch: FAIL_TO_PASS tests that already pass (must be none).
    before_status: EvalStatus,
    before_f2p_passing: Vec<String>,
    gold_status: EvalStatus,
    empty_status: EvalStatus,
    problems: Vec<String>,
}

const LABELS: [&str; 3] = ["before", "gold", "empty"];

async fn validate(ctx: &Context, args: ValidateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let splits = selected_splits(ctx, &args)?;
    let out_dir = args.harness.out.clone().unwrap_or_else(|| output::default_out_dir("validate"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // One harness for every split: environments are built once and the splits' jobs share
    // the sandboxes' concurrency. Specs beside the dataset: the folder's, or the file's.
    let harness = args.harness.harness(ctx, &splits[0].files[0]).await?;
    let jobs = validation_jobs(&splits);
    let bar = output::progress(jobs.len(), "validating");
    let bar2 = bar.clone();
    let results = harness
        .run(jobs, move |r| {
            bar2.inc(1);
            bar2.println(format!("{:<50} {:<7} {}", r.outcome.verdict.instance_id, r.label, r.outcome.verdict.status));
        })
        .await;
    bar.finish_and_clear();

    let mut per_split = Vec::new();
    let mut rest = results.as_slice();
    for split in &splits {
        let (mine, later) = rest.split_at(3 * split.tasks.len());
        rest = later;
        per_split.push(write_split_checks(&out_dir, split, mine)?);
    }
    let (total, valid): (usize, usize) = per_split.iter().fold((0, 0), |(t, v), s| (t + s.instances, v + s.valid));
    if splits.len() > 1 || splits[0].name.is_some() {
        output::write_json(&out_dir.join("validation_summary.json"), &per_split)?;
        for s in &per_split {
            println!("split {:<12} {} of {} instances valid", s.split, s.valid, s.instances);
        }
    }
    println!(
        "{valid} of {total} instances valid ({} backend, {:.1} s); logs in {}",
        args.harness.backend.name(),
        started.elapsed().as_secs_f64(),
        out_dir.display()
    );
    if valid < total {
        return Err(Exit::check_failed(format!("{} instance(s) invalid; see the logs in {}", total - valid, out_dir.display())));
    }
    Ok(())
}

/// The dataset's splits, holding only `--instance-ids` when given (splits left empty
/// dropped).
fn selected_splits(ctx: &Context, args: &ValidateArgs) -> anyhow::Result<Vec<LoadedSplit>> {
    let mut splits = load_splits(&args.dataset, ctx.task_load)?;
    if !args.instance_ids.is_empty() {
        for split in &mut splits {
            split.tasks.retain(|t| args.instance_ids.contains(&t.instance_id));
        }
        splits.retain(|s| !s.tasks.is_empty());
        if splits.is_empty() {
            return Err(Exit::bad_input("none of --instance-ids is in the dataset"));
        }
    }
    Ok(splits)
}

/// Three jobs per instance, in the order of [`LABELS`]: the tests before any patch, with
/// the gold patch, with an empty patch.
fn validation_jobs(splits: &[LoadedSplit]) -> Vec<Job> {
    let mut jobs = Vec::new();
    for task in splits.iter().flat_map(|s| &s.tasks) {
        let task = Arc::new(task.clone());
        jobs.push(Job { task: Arc::clone(&task), kind: JobKind::TestsOnly, label: LABELS[0].into() });
        let gold = JobKind::Patch { patch: task.patch.clone(), model_name_or_path: "gold".into() };
        jobs.push(Job { task: Arc::clone(&task), kind: gold, label: LABELS[1].into() });
        let empty = JobKind::Patch { patch: String::new(), model_name_or_path: "empty".into() };
        jobs.push(Job { task, kind: empty, label: LABELS[2].into() });
    }
    jobs
}

/// One split's results (`results`: three per instance): `<out>/<split>/` (or `<out>/` for a
/// file) gets its logs, verdicts and checks, and stdout its table.
fn write_split_checks(out_dir: &Path, split: &LoadedSplit, results: &[JobResult]) -> anyhow::Result<SplitValidation> {
    let dir = match &split.name {
        Some(name) => out_dir.join(name),
        None => out_dir.to_path_buf(),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let verdicts = output::write_logs(&dir, results)?;
    output::write_verdicts(&dir, "verdicts.parquet", &verdicts)?;
    let checks: Vec<InstanceValidation> = results.chunks(3).map(check_instance).collect();
    output::write_json(&dir.join("validation.json"), &checks)?;
    if let Some(name) = &split.name {
        println!("split {name} ({})", split.files_label());
    }
    print_checks(&checks);
    let invalid = checks.iter().filter(|c| !c.valid).count();
    Ok(SplitValidation { split: split.label().to_string(), files: split.files.clone(), instances: checks.len(), valid: checks.len() - invalid })
}

/// The validation counts of one split (`validation_summary.json` of a folder).
#[derive(Debug, Serialize)]
struct SplitValidation {
    split: String,
    files: Vec<PathBuf>,
    instances: usize,
    valid: usize,
}

fn print_checks(checks: &[InstanceValidation]) {
    println!("{:<50} {:<16} {:<16} {:<16} valid", "instance", "before (F2P)", "gold", "empty");
    for c in checks {
        let before = match c.before_status {
            EvalStatus::EnvError | EvalStatus::TestTimeout => c.before_status.as_str().to_string(),
            _ if c.before_f2p_passing.is_empty() => "fails".to_string(),
            _ => format!("{} pass", c.before_f2p_passing.len()),
        };
        println!(
            "{:<50} {:<16} {:<16} {:<16} {}",
            c.instance_id,
            before,
            c.gold_status.as_str(),
            c.empty_status.as_str(),
            if c.valid { "yes" } else { "NO" }
        );
        for p in &c.problems {
            println!("    {p}");
        }
    }
}

fn check_instance(results: &[JobResult]) -> InstanceValidation {
    let [before, gold, empty] = results else { unreachable!("three jobs per instance") };
    let before_f2p_passing: Vec<String> = before
        .outcome
        .grade
        .as_ref()
        .map(|g| g.f2p_passing().into_iter().map(str::to_string).collect())
        .unwrap_or_default();
    let mut problems = Vec::new();
    let b = &before.outcome.verdict;
    if matches!(b.status, EvalStatus::EnvError | EvalStatus::TestTimeout) {
        problems.push(format!("before: the tests did not run cleanly ({}: {})", b.status, b.error.clone().unwrap_or_default()));
    }
    if !before_f2p_passing.is_empty() {
        problems.push(format!("before: FAIL_TO_PASS tests pass without the fix: {}", before_f2p_passing.join(", ")));
    }
    let g = &gold.outcome.verdict;
    if g.status != EvalStatus::Resolved {
        let detail = g.error.clone().unwrap_or_else(|| g.failed_tests.iter().take(5).cloned().collect::<Vec<_>>().join(", "));
        problems.push(format!("gold: {} ({detail})", g.status));
    }
    let e = &empty.outcome.verdict;
    if e.resolved || e.status != EvalStatus::EmptyPatch {
        problems.push(format!("empty: expected empty_patch, got {}", e.status));
    }
    InstanceValidation {
        instance_id: g.instance_id.clone(),
        valid: problems.is_empty(),
        before_status: b.status,
        before_f2p_passing,
        gold_status: g.status,
        empty_status: e.status,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_give_their_split() {
        let check = |stem: &str, expect: Option<&str>| assert_eq!(shard_split(stem), expect, "{stem}");
        check("train-00000-of-00001", Some("train"));
        check("dev-set-00003-of-00010", Some("dev-set"));
        check("train", None);
        check("train-of-00001", None);
        check("train-0000a-of-00001", None);
        check("-00000-of-00001", None);
    }

    #[test]
    fn a_folder_gives_its_splits_and_passes_over_side_files() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/swebench-lite-marshmallow/tasks.jsonl");
        let rows: Vec<String> = std::fs::read_to_string(shipped).unwrap().lines().map(str::to_string).collect();
        std::fs::write(d.join("train.jsonl"), format!("{}\n", rows[0])).unwrap();
        std::fs::write(d.join("test.jsonl"), format!("{}\n", rows[1])).unwrap();
        std::fs::write(d.join("synth_manifest.jsonl"), "{\"instance_id\": \"x\", \"kind\": \"wrong_return\"}\n").unwrap();
        std::fs::write(d.join("synth_report.json"), "{\n  \"seed\": 0\n}\n").unwrap();
        std::fs::write(d.join("environments.toml"), "").unwrap();
        let splits = load_splits(d, Default::default()).unwrap();
        let names: Vec<&str> = splits.iter().map(LoadedSplit::label).collect();
        assert_eq!(names, ["test", "train"]);
        assert_eq!(splits[1].files, [d.join("train.jsonl")]);
        assert_eq!(splits[1].tasks.len(), 1);
        let file = load_splits(&d.join("train.jsonl"), Default::default()).unwrap();
        assert_eq!((file.len(), file[0].label()), (1, "dataset"));
        let empty = tempfile::tempdir().unwrap();
        let e = load_splits(empty.path(), Default::default()).err().unwrap();
        assert!(e.to_string().contains("no split found"), "{e}");
    }
}
