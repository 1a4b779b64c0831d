//! `swegym bench train`: LoRA SFT tokens/s of our trainer on one fixed sequence per dtype,
//! beside PEFT run in the same session by the peer's own script
//! (`scripts/baselines/bench_lora.py`), and against the machine's matmul limit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use swegym_train::{Example, Overlong, RawTrainConfig, TrainConfig, Trainer};

use super::{require_script, ReferenceModels, Stat};
use crate::exit::Exit;
use crate::lm::DtypeArg;

/// `swegym bench train`: LoRA SFT tokens/s on one fixed sequence (as the PEFT baseline:
/// r=16, α=32, dropout 0, all seven projections, AdamW lr 1e-4 wd 0.01, batch 1, loss on
/// every token), per dtype.
#[derive(clap::Args, Debug)]
pub struct TrainBenchArgs {
    #[command(flatten)]
    pub models: ReferenceModels,
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
    tok_s: Stat,
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
        tok_s: Stat::of(rates),
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
    super::median(&mut rates)
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
        require_script(&args.script)?;
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
    let sides = Sides { model, hf_model, python, peft_here };
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for &dtype in &args.dtypes {
            let row = bench_dtype(&args, &sides, &text, dtype)?;
            println!("{}", serde_json::to_string(&row)?);
        }
        Ok(())
    })
    .await
    .context("bench thread")?
}

/// What runs where: our model, and the PEFT side's HF folder and Python (`peft_here`: it
/// can run here).
struct Sides {
    model: PathBuf,
    hf_model: PathBuf,
    python: PathBuf,
    peft_here: bool,
}

/// One dtype's row: PEFT's run (when it can run here), then ours on the first `--seq`
/// tokens of `text`.
fn bench_dtype(args: &TrainBenchArgs, sides: &Sides, text: &str, dtype: DtypeArg) -> anyhow::Result<TrainBenchRow> {
    let peft = if sides.peft_here { Some(run_peft(args, &sides.python, &sides.hf_model, dtype)?) } else { None };
    tch::set_num_threads(args.threads);
    let (lm, tokenizer) = swegym_lm::load_model(&sides.model, dtype.dtype(), tch::Device::Cpu).map_err(|e| Exit::bad_input(e.to_string()))?;
    let mut ids = tokenizer.encode(text, false)?;
    anyhow::ensure!(ids.len() >= args.seq, "the benchmark text has {} tokens, fewer than --seq {}", ids.len(), args.seq);
    ids.truncate(args.seq);
    let example = Example { loss_mask: vec![true; ids.len()], ids, record_idx: 0 };
    let config_of_model = lm.config().clone();
    let cfg = TrainConfig {
        dtype: swegym_train::TrainDtype::Fixed(dtype.dtype()),
        activation_checkpointing: args.activation_checkpointing,
        max_grad_norm: 0.0,
        overlong: Overlong::Truncate,
        ..RawTrainConfig::default().resolve("bench").expect("defaults")
    };
    let limit = args.matmul_gflops.unwrap_or_else(|| measure_matmul_gflops(dtype.dtype().kind()));
    let mut trainer = Trainer::new(lm, &cfg, 0);
    super::generate::reset_peak_rss();
    let (times, losses) = train_steps(&mut trainer, &example, args, dtype);
    let peak = super::generate::proc_status_mib("VmHWM");
    let mut sorted = times[args.warmup.min(times.len() - 1)..].to_vec();
    let median_step = super::median(&mut sorted);
    let flops = step_flops(&config_of_model, args.seq, trainer.n_trainable());
    let ours = TrainBenchSide {
        tok_s: Stat::of(times.iter().skip(args.warmup).map(|t| args.seq as f64 / t).collect()),
        peak_rss_mib: peak,
        loss_first: losses[0],
        loss_last: *losses.last().expect("steps ≥ 1"),
        losses,
    };
    Ok(TrainBenchRow {
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
    })
}

/// `--steps` timed training steps on `example`, each logged on stderr: (seconds, loss) per step.
fn train_steps(trainer: &mut Trainer, example: &Example, args: &TrainBenchArgs, dtype: DtypeArg) -> (Vec<f64>, Vec<f64>) {
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    for step in 0..args.steps {
        let t0 = Instant::now();
        let out = trainer.step(&[vec![example]], 1e-4, step as u64);
        let dt = t0.elapsed().as_secs_f64();
        eprintln!("  [swegym {}] step {:2} loss {:.4} {:6.2} s {:7.1} tok/s", dtype.dtype(), step + 1, out.loss, dt, args.seq as f64 / dt);
        times.push(dt);
        losses.push(out.loss);
    }
    (times, losses)
}
