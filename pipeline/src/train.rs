//! `swegym train` (LoRA SFT on a Parquet/JSONL SFT dataset → a PEFT adapter folder, with a
//! progress bar and a final summary) and `swegym bench train` (training tokens/s, peak RSS
//! and the fraction of the matmul limit, next to PyTorch + PEFT measured in the same run
//! by `scripts/baselines/bench_lora.py`).

use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use swegym_lm::DeviceChoice;
use swegym_train::{RawTrainConfig, StepLog, TrainConfig, TrainError, TrainRequest};

use crate::lm::DtypeArg;
use crate::exit::Exit;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The base model: a GGUF file or an HF folder.
    #[arg(long)]
    pub model: PathBuf,
    /// SFT data: Parquet or JSONL with a `messages` column (TRL layout).
    #[arg(long)]
    pub data: PathBuf,
    /// The adapter folder to write (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Trainer settings: a TOML file with a [train] table (or its keys at top level).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// auto (CUDA when libtorch has it), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Overrides `dtype` of the config.
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Overrides `threads` (libtorch intra-op threads).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Overrides `max_steps` (at least 1).
    #[arg(long, value_parser = at_least_one)]
    pub max_steps: Option<usize>,
    /// Overrides `epochs` (positive; may be fractional).
    #[arg(long, value_parser = positive_number)]
    pub epochs: Option<f64>,
    /// Overrides `learning_rate` (positive).
    #[arg(long, value_parser = positive_number)]
    pub lr: Option<f64>,
    /// Overrides `seed`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Overrides `checkpoint_every` (at least 1).
    #[arg(long, value_parser = at_least_one)]
    pub checkpoint_every: Option<usize>,
    /// Overrides `max_seq_len` (at least 1).
    #[arg(long, value_parser = at_least_one)]
    pub max_seq_len: Option<usize>,
    /// Overrides `base_model_name`: the base model's name as PEFT loads it, recorded as the
    /// adapter's `base_model_name_or_path` (e.g. HuggingFaceTB/SmolLM2-135M-Instruct; without
    /// it, the model file's path).
    #[arg(long, value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub base_model_name: Option<String>,
    /// Continue an earlier adapter (same rank and target modules) instead of starting a
    /// fresh one.
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    /// One JSON line per step on stdout instead of a progress bar.
    #[arg(long)]
    pub json: bool,
}

/// The overrides are held to the config file's own rules (a zero-step run would write an
/// adapter that nothing trained, with a NaN loss).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

fn positive_number(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        Ok(x) => Err(format!("must be a positive number, got {x}")),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

impl TrainArgs {
    /// The config file (or the defaults) with the command-line overrides applied.
    fn config(&self) -> anyhow::Result<TrainConfig> {
        let mut cfg = match &self.config {
            Some(path) => TrainConfig::from_toml_file(path).map_err(|e| Exit::bad_input(e.to_string()))?,
            None => RawTrainConfig::default().resolve("defaults").expect("defaults are valid"),
        };
        self.apply_overrides(&mut cfg);
        Ok(cfg)
    }

    /// The command-line overrides of the config's keys (also used by `swegym verifier train`).
    pub(crate) fn apply_overrides(&self, cfg: &mut TrainConfig) {
        if let Some(d) = self.dtype {
            cfg.dtype = swegym_train::TrainDtype::Fixed(d.dtype());
        }
        if let Some(n) = self.threads {
            cfg.threads = Some(n);
        }
        if let Some(n) = self.max_steps {
            cfg.max_steps = Some(n);
        }
        if let Some(e) = self.epochs {
            cfg.epochs = e;
        }
        if let Some(lr) = self.lr {
            cfg.learning_rate = lr;
        }
        if let Some(s) = self.seed {
            cfg.seed = s;
        }
        if let Some(n) = self.checkpoint_every {
            cfg.checkpoint_every = n;
        }
        if let Some(name) = &self.base_model_name {
            cfg.base_model_name = Some(name.clone());
        }
        if let Some(n) = self.max_seq_len {
            cfg.max_seq_len = n;
        }
    }
}

/// A trainer error as the exit code it maps to: bad data, config, model or adapter is the
/// user's input (3); a write failure is the machine's (4).
pub fn train_exit(e: TrainError) -> anyhow::Error {
    match e {
        TrainError::Io { .. } | TrainError::Torch(_) => Exit::infra(e.to_string()),
        _ => Exit::bad_input(e.to_string()),
    }
}

pub async fn run(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    run_with_config(args, cfg).await
}

/// `swegym train` with a resolved config (`swegym verifier train` brings its own defaults).
pub(crate) async fn run_with_config(args: TrainArgs, cfg: TrainConfig) -> anyhow::Result<()> {
    if !args.model.exists() {
        return Err(Exit::bad_input(format!("{}: no such model file or folder (--model)", args.model.display())));
    }
    let records = swegym_schema::sft::read_sft(&args.data).map_err(|e| Exit::bad_input(e.to_string()))?;
    let device = args.device.resolve().map_err(|e| Exit::bad_input(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let bar = (!args.json).then(train_bar);
        let mut on_step = |s: &StepLog| match &bar {
            Some(bar) => {
                bar.set_length(s.total_steps as u64);
                bar.set_position(s.step as u64);
                bar.set_message(format!("loss {:.4} lr {:.2e} |g| {:.3} {:.0} tok/s", s.loss, s.learning_rate, s.grad_norm, s.tokens_per_s));
            }
            None => println!("{}", serde_json::to_string(s).expect("step json")),
        };
        let data_name = args.data.display().to_string();
        let summary = swegym_train::train(
            TrainRequest { model: &args.model, records: &records, data_name: &data_name, out_dir: &args.out, config: &cfg, device, init_adapter: args.init_adapter.as_deref() },
            &mut on_step,
        )
        .map_err(train_exit)?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        print_summary(&summary, &args.out);
        if args.json {
            println!("{}", serde_json::to_string(&summary)?);
        }
        Ok(())
    })
    .await
    .context("trainer thread")?
}

/// The training progress bar (steps, loss, learning rate, gradient norm, tokens/s).
fn train_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} train [{bar:30}] {pos}/{len} steps {msg} (eta {eta})")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message("loading the model");
    crate::output::plain_progress_when_piped(&bar, "train");
    bar
}

/// What the training did, on stderr; `out`: the adapter folder.
fn print_summary(summary: &swegym_train::TrainSummary, out: &std::path::Path) {
    let dropped: Vec<String> = summary.examples_dropped.iter().map(|(k, v)| format!("{v} {k}")).collect();
    eprintln!(
        "trained {} steps on {} of {} examples (dropped: {}; truncated: {})\n  tokens {} ({} learned), loss {:.4} → {:.4}, {:.0} tok/s, {:.1} s{}\n  adapter: {}",
        summary.steps,
        summary.examples_used,
        summary.examples_total,
        if dropped.is_empty() { "none".into() } else { dropped.join(", ") },
        summary.examples_truncated,
        summary.tokens,
        summary.loss_tokens,
        summary.loss_first,
        summary.loss_last,
        summary.tokens_per_s,
        summary.wall_s,
        if summary.resumed_from_step > 0 { format!(" (resumed after step {})", summary.resumed_from_step) } else { String::new() },
        out.display()
    );
}
