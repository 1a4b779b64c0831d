//! The `swegym` command line: parses arguments, resolves the context, dispatches to one
//! subcommand module, and maps failures to documented exit codes.
//!
//! Exit codes: see `exit.rs` (and `--help`).

mod bench;
mod context;
mod dataset;
mod evaluate;
mod exit;
mod export;
mod lm;
mod mine;
mod output;
mod policy;
mod report;
mod run;
mod run_dir;
mod sample;
mod synth;
mod train;
mod verifier;

use clap::{Parser, Subcommand};

use crate::context::Context;
use crate::exit::Exit;

#[derive(Parser, Debug)]
#[command(
    name = "swegym",
    version,
    about = "Online rejection-sampling fine-tuning of software-engineering agents",
    after_help = "Examples:
  swegym run configs/demo.toml                      # the demo RFT run (resumable) -> runs/demo/report.md
  swegym evaluate --dataset datasets/swebench-lite-marshmallow/tasks.jsonl --predictions preds.jsonl
  swegym sample --dataset datasets/synth-pypi/test.jsonl --policy oracle -k 2 --evaluate --out rollouts.parquet
  swegym dataset stats datasets/swebench-lite

Exit codes:
  0 success   1 a check failed (an invalid instance)   2 bad usage
  3 bad input (dataset, predictions, config, model weights, a loss that is not finite)
  4 infrastructure (no docker daemon or bwrap; every grading job of a stage an env_error)"
)]
struct Cli {
    /// More logging (-v info, -vv debug); SWEGYM_LOG=<filter> overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Load tasks whose FAIL_TO_PASS is empty (evaluate, sample, dataset, bench); they are
    /// still never graded resolved. Without it such rows are skipped as bad rows. Not for
    /// `run`: a training run never loads them.
    #[arg(long, global = true)]
    allow_no_fail_to_pass: bool,
    /// When stderr is not a terminal (a log file, CI), print each long stage's progress as a
    /// plain line this often.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    progress_every: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Grade SWE-bench predictions (instance_id, model_name_or_path, model_patch) by running the tests.
    Evaluate(evaluate::EvaluateArgs),
    /// Check or describe a task dataset.
    #[command(subcommand)]
    Dataset(dataset::DatasetCommand),
    /// Synthesize tasks: SWE-smith-style bugs in clean PyPI sdists, kept when tests catch them.
    Synth(synth::SynthArgs),
    /// Mine tasks from a local git history: commits changing source and tests.
    Mine(mine::MineArgs),
    /// Sample agent rollouts (K per task) with a policy in sandboxes → rollouts Parquet.
    Sample(sample::SampleArgs),
    /// Online RFT from a config: per iteration sample, grade, filter, export, LoRA-train, evaluate (resumable).
    Run(run::RunArgs),
    /// The per-iteration tables of a run, and report.md, metrics.parquet and SVG plots in its folder.
    Report(report::ReportArgs),
    /// The kept SFT data of a run's iterations as one dataset (.parquet in the TRL layout, or .jsonl).
    Export(export::ExportArgs),
    /// Benchmarks that print machine-readable results.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// One prompt to a model (GGUF file or HF folder) → its reply, with tokens/s.
    Chat(lm::ChatArgs),
    /// Model tools (numerics checks).
    #[command(subcommand)]
    Lm(lm::LmCommand),
    /// LoRA fine-tuning on an SFT dataset (Parquet/JSONL `messages`) → a PEFT adapter folder.
    Train(train::TrainArgs),
    /// Outcome verifiers: judge data from graded rollouts, LoRA training, p(YES) scoring, Pass@k / Best@k.
    #[command(subcommand)]
    Verifier(verifier::VerifierCommand),
}

fn main() {
    // bf16 matmuls in libtorch crash on CPUs that report AMX but fault on it (DESIGN.md):
    // the oneDNN cap is set here, before any thread starts, and nowhere else in the process.
    swegym_lm::init_cpu_runtime();
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let _ = output::PLAIN_PROGRESS_EVERY.set(std::time::Duration::from_secs(cli.progress_every));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        let mut ctx = Context::from_env()?;
        ctx.task_load.allow_no_fail_to_pass = cli.allow_no_fail_to_pass;
        if cli.allow_no_fail_to_pass && matches!(cli.command, Command::Run(_)) {
            let message = "--allow-no-fail-to-pass does not apply to `swegym run`: a training run never loads a task without a FAIL_TO_PASS test (it would reward a no-op)";
            return Err(Exit::usage(message));
        }
        match cli.command {
            Command::Evaluate(args) => evaluate::run(&ctx, args).await,
            Command::Dataset(cmd) => dataset::run(&ctx, cmd).await,
            Command::Bench(cmd) => bench::run(&ctx, cmd).await,
            Command::Chat(args) => lm::chat(args).await,
            Command::Lm(cmd) => lm::run(cmd).await,
            Command::Sample(args) => sample::run(&ctx, args).await,
            Command::Run(args) => run::run(&ctx, args).await,
            Command::Report(args) => report::run(args),
            Command::Export(args) => export::run(args),
            Command::Synth(args) => synth::run(&ctx, args).await,
            Command::Mine(args) => mine::run(&ctx, args).await,
            Command::Train(args) => train::run(args).await,
            Command::Verifier(cmd) => verifier::run(cmd).await,
        }
    });
    if let Err(err) = result {
        let code = exit::exit_code(&err);
        eprintln!("error: {err:#}");
        std::process::exit(code);
    }
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("SWEGYM_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Colour codes only for a terminal: a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).with_target(false).init();
}
