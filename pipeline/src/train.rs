//! `swegym train` (LoRA SFT on a Parquet/JSONL SFT dataset → a PEFT adapter folder, with a
//! progress bar and a final summary) and `swegym bench train` (training tokens/s, peak RSS
//! and the fraction of the matmul limit, next to PyTorch + PEFT measured in the same run
//! by `scripts/baselines/bench_lora.py`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use swegym_lm::DeviceChoice;
use swegym_train::{Example, Overlong, RawTrainConfig, StepLog, TrainConfig, TrainError, TrainRequest, Trainer};

use crate::lm::DtypeArg;
use crate::Exit;

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
    /// Overrides `max_steps`.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Overrides `epochs`.
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Overrides `learning_rate`.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Overrides `seed`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Overrides `checkpoint_every`.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Overrides `max_seq_len`.
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// One JSON line per step on stdout instead of a progress bar.
    #[arg(long)]
    pub json: bool,
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
            cfg.dtype = d.dtype();
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
        let bar = (!args.json).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{spinner} train [{bar:30}] {pos}/{len} steps {msg} (eta {eta})")
                    .expect("template")
                    .progress_chars("=> "),
            );
            bar.set_message("loading the model");
            crate::output::plain_progress_when_piped(&bar, "train");
            bar
        });
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
            TrainRequest { model: &args.model, records: &records, data_name: &data_name, out_dir: &args.out, config: &cfg, device },
            &mut on_step,
        )
        .map_err(train_exit)?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
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
            args.out.display()
        );
        if args.json {
            println!("{}", serde_json::to_string(&summary)?);
        }
        Ok(())
    })
    .await
    .context("trainer thread")?
}

/// `swegym bench train`: LoRA SFT tokens/s on one fixed sequence (as the PEFT baseline:
/// r=16, α=32, dropout 0, all seven projections, AdamW lr 1e-4 wd 0.01, batch 1, loss on
/// every token), per dtype.
#[derive(clap::Args, Debug)]
pub struct TrainBenchArgs {
    #[command(flatten)]
    pub models: crate::bench::ReferenceModels,
    /// The PEFT side (relative paths are from the current folder: the clone's root).
    #[arg(long, default_value = "scripts/baselines/bench_lora.py")]
    pub script: PathBuf,
    /// Skip running PEFT (our side only).
    #[arg(long)]
    pub no_peft: bool,
    #[arg(long, value_enum, num_args = 1.., default_values = ["f32", "bf16"])]
    pub dtypes: Vec<DtypeArg>,
    #[arg(long, default_value_t = 1024)]
    pub seq: usize,
    #[arg(long, default_value_t = 16)]
    pub steps: usize,
    /// Steps left out of the statistics (warm-up).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    /// Recompute layers in the backward pass.
    #[arg(long)]
    pub activation_checkpointing: bool,
    /// The matmul limit in GFLOP/s to report against (default: measured in this run, a
    /// 2048³ matmul in the benchmark's dtype, median of 5).
    #[arg(long)]
    pub matmul_gflops: Option<f64>,
}

#[derive(Debug, Serialize)]
struct TrainBenchSide {
    tok_s: crate::bench::Stat,
    peak_rss_mib: f64,
    loss_first: f64,
    loss_last: f64,
    losses: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct TrainBenchRow {
    bench: &'static str,
    dtype: String,
    seq: usize,
    steps: usize,
    threads: i32,
    activation_checkpointing: bool,
    n_trainable: i64,
    swegym: TrainBenchSide,
    /// The matmul limit used (GFLOP/s; measured in this run unless given).
    matmul_limit_gflops: f64,
    /// Model FLOPs per step (forward + input-gradient backward of the frozen base; LoRA
    /// and attention included) over the median step time, / the matmul limit.
    matmul_limit_fraction: f64,
    peft: Option<TrainBenchSide>,
    tok_s_ratio: Option<f64>,
}

/// The Python stdlib text the PEFT baseline trains on (`bench_lora.py`'s `fixed_text`).
fn fixed_text(python: &Path) -> anyhow::Result<String> {
    let code = "import inspect, sys, json.decoder, json.encoder, json.scanner, textwrap, string\n\
                sys.stdout.write('\\n'.join(inspect.getsource(m) for m in (json.decoder, json.encoder, json.scanner, textwrap, string)))";
    let out = std::process::Command::new(python).args(["-c", code]).output().with_context(|| format!("running {}", python.display()))?;
    anyhow::ensure!(out.status.success(), "{}: {}", python.display(), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

fn run_peft(args: &TrainBenchArgs, python: &Path, hf_model: &Path, dtype: DtypeArg) -> anyhow::Result<TrainBenchSide> {
    let mode = match dtype {
        DtypeArg::F32 => "fp32",
        _ => "bf16_weights",
    };
    let out_dir = tempfile::tempdir()?;
    let status = std::process::Command::new(python)
        .arg(&args.script)
        .args([mode, if args.activation_checkpointing { "1" } else { "0" }])
        .env("MODEL_DIR", hf_model)
        .env("OUT_DIR", out_dir.path())
        .env("SEQ", args.seq.to_string())
        .env("STEPS", args.steps.to_string())
        .env("WARMUP", args.warmup.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", args.script.display()))?;
    anyhow::ensure!(status.success(), "{} {mode} failed: {status}", args.script.display());
    let file = out_dir.path().join(format!("lora_{mode}_gc{}.json", u8::from(args.activation_checkpointing)));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    let times: Vec<f64> = json["step_times_s"].as_array().context("step_times_s")?.iter().filter_map(|v| v.as_f64()).collect();
    let losses: Vec<f64> = json["losses"].as_array().context("losses")?.iter().filter_map(|v| v.as_f64()).collect();
    let rates: Vec<f64> = times.iter().skip(args.warmup).map(|t| args.seq as f64 / t).collect();
    Ok(TrainBenchSide {
        tok_s: crate::bench::Stat::of(rates),
        peak_rss_mib: json["peak_rss_train_mib"].as_f64().unwrap_or(f64::NAN),
        loss_first: losses.first().copied().unwrap_or(f64::NAN),
        loss_last: losses.last().copied().unwrap_or(f64::NAN),
        losses,
    })
}

/// GFLOP/s of a 2048³ matmul in `kind` on the CPU (median of 5, after one warm-up).
pub fn measure_matmul_gflops(kind: tch::Kind) -> f64 {
    let n = 2048i64;
    let a = tch::Tensor::randn([n, n], (kind, tch::Device::Cpu));
    let b = tch::Tensor::randn([n, n], (kind, tch::Device::Cpu));
    let _ = a.matmul(&b);
    let mut rates: Vec<f64> = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            let _ = a.matmul(&b);
            2.0 * (n * n * n) as f64 / t0.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    crate::bench::median(&mut rates)
}

/// Matmul FLOPs of one training step on `seq` tokens: forward and input-gradient backward
/// through every projection and the lm_head (2 · params each), LoRA's weight gradients
/// (one more pass of its small matmuls), and causal attention (QKᵀ and AV forward, twice
/// that backward).
fn step_flops(config: &swegym_lm::ModelConfig, seq: usize, n_lora: i64) -> f64 {
    let c = config;
    let (h, q, kv, i) = (c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.intermediate_size);
    let per_layer = h * (q + 2 * kv) + q * h + 3 * h * i;
    let linear = (c.num_hidden_layers * per_layer + c.vocab_size * h) as f64;
    let t = seq as f64;
    let attention = c.num_hidden_layers as f64 * 2.0 * 2.0 * (t * t / 2.0) * q as f64;
    t * (4.0 * linear + 6.0 * n_lora as f64) + 3.0 * attention
}

pub async fn bench(ctx: &crate::context::Context, args: TrainBenchArgs) -> anyhow::Result<()> {
    let (model, hf_model, python) = args.models.resolve(ctx);
    let peft_here = !args.no_peft && args.models.python_side_here(ctx);
    if peft_here {
        crate::bench::require_script(&args.script)?;
    }
    if !args.no_peft && !peft_here {
        eprintln!(
            "PEFT cannot run here ({} or {} is missing; make them with `SWEGYM_SETUP_REF=1 make setup` and crates/lm/scripts/make_smollm2_hf.py)",
            python.display(),
            hf_model.join("model.safetensors").display()
        );
    }
    let text_python = if python.exists() { python.clone() } else { ctx.cache_root.join("venv/bin/python") };
    let text = fixed_text(&text_python)?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for &dtype in &args.dtypes {
            let peft = if peft_here { Some(run_peft(&args, &python, &hf_model, dtype)?) } else { None };
            tch::set_num_threads(args.threads);
            let (lm, tokenizer) = swegym_lm::load_model(&model, dtype.dtype(), tch::Device::Cpu).map_err(|e| Exit::bad_input(e.to_string()))?;
            let mut ids = tokenizer.encode(&text, false)?;
            anyhow::ensure!(ids.len() >= args.seq, "the benchmark text has {} tokens, fewer than --seq {}", ids.len(), args.seq);
            ids.truncate(args.seq);
            let example = Example { loss_mask: vec![true; ids.len()], ids, record_idx: 0 };
            let config_of_model = lm.config().clone();
            let cfg = TrainConfig {
                dtype: dtype.dtype(),
                activation_checkpointing: args.activation_checkpointing,
                max_grad_norm: 0.0,
                overlong: Overlong::Truncate,
                ..RawTrainConfig::default().resolve("bench").expect("defaults")
            };
            let limit = args.matmul_gflops.unwrap_or_else(|| measure_matmul_gflops(dtype.dtype().kind()));
            let mut trainer = Trainer::new(lm, &cfg, 0);
            crate::lm::reset_peak_rss();
            let (mut times, mut losses) = (Vec::new(), Vec::new());
            for step in 0..args.steps {
                let t0 = Instant::now();
                let out = trainer.step(&[vec![&example]], 1e-4, step as u64);
                let dt = t0.elapsed().as_secs_f64();
                eprintln!("  [swegym {}] step {:2} loss {:.4} {:6.2} s {:7.1} tok/s", dtype.dtype(), step + 1, out.loss, dt, args.seq as f64 / dt);
                times.push(dt);
                losses.push(out.loss);
            }
            let peak = crate::lm::proc_status_mib("VmHWM");
            let rates: Vec<f64> = times.iter().skip(args.warmup).map(|t| args.seq as f64 / t).collect();
            let mut sorted = times[args.warmup.min(times.len() - 1)..].to_vec();
            let median_step = crate::bench::median(&mut sorted);
            let flops = step_flops(&config_of_model, args.seq, trainer.n_trainable());
            let ours = TrainBenchSide {
                tok_s: crate::bench::Stat::of(rates),
                peak_rss_mib: peak,
                loss_first: losses[0],
                loss_last: *losses.last().expect("steps ≥ 1"),
                losses,
            };
            let row = TrainBenchRow {
                bench: "train",
                dtype: dtype.dtype().to_string(),
                seq: args.seq,
                steps: args.steps,
                threads: args.threads,
                activation_checkpointing: args.activation_checkpointing,
                n_trainable: trainer.n_trainable(),
                matmul_limit_gflops: limit,
                matmul_limit_fraction: flops / median_step / (limit * 1e9),
                tok_s_ratio: peft.as_ref().map(|p| ours.tok_s.median / p.tok_s.median),
                swegym: ours,
                peft,
            };
            println!("{}", serde_json::to_string(&row)?);
        }
        Ok(())
    })
    .await
    .context("bench thread")?
}
