//! `swegym export RUN --out sft.parquet`: the kept SFT data of chosen iterations of a run
//! (default: all that exported), concatenated as one dataset in the TRL / torchtune /
//! `datasets` layout (`.parquet`) or as JSONL (`.jsonl`).

use std::path::PathBuf;

use anyhow::Context as _;

use crate::report::find_run;
use crate::run_dir::RunDir;
use crate::exit::Exit;

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The run: its directory, or its name under runs/.
    pub run: PathBuf,
    /// The dataset to write: `.parquet` or `.jsonl`.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Only these iterations (default: every iteration whose export finished).
    #[arg(long, num_args = 1..)]
    pub iterations: Vec<u32>,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    swegym_export::SftFormat::from_path(&args.out).map_err(|e| Exit::bad_input(e.to_string()))?;
    let root = find_run(&args.run)?;
    let dir = RunDir::new(root.clone());
    let exported: Vec<u32> = (0..10_000u32).take_while(|i| dir.iter_dir(*i).exists()).filter(|i| RunDir::manifest_path(&dir.iter_dir(*i), crate::run_dir::manifest::Stage::Export).exists()).collect();
    let chosen = if args.iterations.is_empty() { exported.clone() } else { args.iterations.clone() };
    if let Some(missing) = chosen.iter().find(|i| !exported.contains(i)) {
        return Err(Exit::bad_input(format!(
            "{}: iteration {missing} has no exported SFT data (iterations with data: {:?})",
            root.display(),
            exported
        )));
    }
    if chosen.is_empty() {
        return Err(Exit::bad_input(format!("{}: no iteration has exported SFT data yet", root.display())));
    }
    let files: Vec<PathBuf> = chosen.iter().map(|i| dir.iter_dir(*i).join("sft.parquet")).collect();
    let records = swegym_export::concat_datasets(&files, true)?;
    if records.is_empty() {
        // An empty Parquet file loads nowhere useful: `datasets.load_dataset` refuses any
        // 0-row Parquet (pyarrow's own too), and there is nothing to train on.
        return Err(Exit::bad_input(format!(
            "{}: iterations {chosen:?} kept no SFT records, so there is nothing to export (iterations with records: {:?})",
            root.display(),
            exported.iter().filter(|i| !is_empty_export(&dir, **i)).collect::<Vec<_>>()
        )));
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let summary = swegym_export::write_records(&args.out, &records)?;
    println!(
        "{} SFT records on {} tasks from iterations {:?} of {} → {}",
        summary.records,
        summary.instances,
        chosen,
        root.display(),
        args.out.display()
    );
    let sources: Vec<String> = summary.by_source.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!("by source: {}; mean turns {:.1}", if sources.is_empty() { "none".into() } else { sources.join(", ") }, summary.mean_turns);
    Ok(())
}

/// Whether iteration `i` exported no record (by its manifest).
fn is_empty_export(dir: &RunDir, i: u32) -> bool {
    let manifest: anyhow::Result<Option<crate::run_dir::manifest::Manifest<crate::run_dir::manifest::ExportDetails>>> =
        RunDir::manifest(&dir.iter_dir(i), crate::run_dir::manifest::Stage::Export);
    manifest.ok().flatten().is_none_or(|m| m.details.records == 0)
}
