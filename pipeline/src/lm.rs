//! `swegym chat` (one prompt → the model's reply, with tokens/s) and `swegym lm logits`
//! (top-k next-token logits, for checking numerics against transformers). The model is a
//! GGUF file or an HF folder; the work runs on a blocking thread.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use swegym_lm::chat::{ChatMessage, Role};
use swegym_lm::{CausalLm, DeviceChoice, Dtype, GenerationRequest, Generator, SamplingParams, Tokenizer};
use tch::Tensor;

use crate::bench::Stat;
use crate::Exit;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtypeArg {
    F32,
    Bf16,
    F16,
}

impl DtypeArg {
    pub fn dtype(self) -> Dtype {
        match self {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::Bf16 => Dtype::Bf16,
            DtypeArg::F16 => Dtype::F16,
        }
    }
}

/// Which model, in what dtype, where.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file or an HF folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    /// auto (CUDA when libtorch has it), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
    /// A LoRA adapter folder (PEFT layout: adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Fold the adapter into the base weights instead of keeping it as separate layers.
    #[arg(long, requires = "adapter")]
    pub merge_adapter: bool,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<(CausalLm, Tokenizer)> {
        if let Some(n) = self.threads {
            tch::set_num_threads(n);
        }
        let device = self.device.resolve().map_err(|e| Exit::bad_input(e.to_string()))?;
        let (mut model, tokenizer) =
            swegym_lm::load_model(&self.model, self.dtype.dtype(), device).map_err(|e| Exit::bad_input(e.to_string()))?;
        if let Some(dir) = &self.adapter {
            swegym_lm::lora::load_adapter(&mut model, dir, self.merge_adapter).map_err(|e| Exit::bad_input(e.to_string()))?;
        }
        Ok((model, tokenizer))
    }
}

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System prompt (default: the template's own, if it has one).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 = no top-k cut.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The user message.
    pub prompt: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum LmCommand {
    /// Top-k next-token logits after a text (no special tokens added).
    Logits(LogitsArgs),
    /// Write a tiny random model of a real model's architecture family (Llama), with that
    /// model's tokenizer and chat template, as an HF folder: fast tests and smoke runs.
    Tiny(TinyArgs),
}

#[derive(clap::Args, Debug)]
pub struct TinyArgs {
    /// Where the tokenizer and chat template come from (GGUF file or HF folder).
    #[arg(long)]
    pub tokenizer_from: PathBuf,
    /// The HF folder to write.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub layers: i64,
    #[arg(long, default_value_t = 64)]
    pub hidden: i64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(clap::Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub text: String,
    #[arg(long, default_value_t = 10)]
    pub top: i64,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || chat_blocking(&args)).await.context("chat thread")?
}

fn chat_blocking(args: &ChatArgs) -> anyhow::Result<()> {
    let (model, tokenizer) = args.model.load()?;
    let template = swegym_lm::chat_template_for(&args.model.model, &tokenizer)
        .ok_or_else(|| Exit::bad_input(format!("{}: no chat template (neither ChatML nor Llama 3)", args.model.model.display())))?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new(Role::System, system.clone()));
    }
    messages.push(ChatMessage::new(Role::User, args.prompt.clone()));
    let text = template.render(&messages, true).text;
    let prompt = tokenizer.encode(&text, false)?;
    let mut stop_token_ids = Vec::new();
    if let Some(id) = tokenizer.token_to_id(template.end_of_turn()) {
        stop_token_ids.push(id);
    }
    let params = SamplingParams {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        stop_token_ids,
        ..SamplingParams::default()
    };
    let started = Instant::now();
    let completion = Generator::new(&model, tokenizer)
        .run(vec![GenerationRequest::new(prompt, params)], 1)
        .remove(0)
        .map_err(|e| Exit::bad_input(e.to_string()))?;
    let wall = started.elapsed().as_secs_f64();
    println!("{}", completion.text);
    let n = completion.tokens.len();
    let decode_rate = if n > 1 { (n - 1) as f64 / completion.decode_seconds } else { f64::NAN };
    eprintln!(
        "{n} tokens ({:?}) in {wall:.2} s: prefill {} tokens at {:.0} tok/s, decode {decode_rate:.1} tok/s ({}, {:?}, {} threads)",
        completion.finish_reason,
        completion.prompt_tokens,
        completion.prompt_tokens as f64 / completion.prefill_seconds,
        model.dtype(),
        model.device(),
        tch::get_num_threads(),
    );
    Ok(())
}

fn tiny(args: &TinyArgs) -> anyhow::Result<()> {
    let (tokenizer, template) = if args.tokenizer_from.is_dir() {
        let tok = Tokenizer::from_file(args.tokenizer_from.join("tokenizer.json")).map_err(|e| Exit::bad_input(e.to_string()))?;
        let template = std::fs::read_to_string(args.tokenizer_from.join("chat_template.jinja")).ok();
        (tok, template)
    } else {
        let file = swegym_lm::GgufFile::open(&args.tokenizer_from).map_err(|e| Exit::bad_input(e.to_string()))?;
        let tok = Tokenizer::from_gguf(&file).map_err(|e| Exit::bad_input(e.to_string()))?;
        let template = file.get("tokenizer.chat_template").and_then(|v| v.as_str().map(str::to_string));
        (tok, template)
    };
    swegym_lm::export::save_tiny_llama(&tokenizer, template.as_deref(), args.layers, args.hidden, args.seed, &args.out)
        .map_err(|e| Exit::infra(e.to_string()))?;
    eprintln!("wrote a {}-layer, hidden-{} Llama with {} tokens of vocabulary to {}", args.layers, args.hidden, tokenizer.vocab_size(), args.out.display());
    Ok(())
}

#[derive(Debug, Serialize)]
struct TopLogit {
    id: i64,
    token: String,
    logit: f64,
}

#[derive(Debug, Serialize)]
struct LogitsReport {
    model: String,
    dtype: String,
    input_ids: Vec<u32>,
    top: Vec<TopLogit>,
}

pub async fn run(cmd: LmCommand) -> anyhow::Result<()> {
    match cmd {
        LmCommand::Logits(args) => tokio::task::spawn_blocking(move || logits(&args)).await.context("logits thread")?,
        LmCommand::Tiny(args) => tokio::task::spawn_blocking(move || tiny(&args)).await.context("tiny thread")?,
    }
}

fn logits(args: &LogitsArgs) -> anyhow::Result<()> {
    let (model, tokenizer) = args.model.load()?;
    let ids = tokenizer.encode(&args.text, false)?;
    if ids.is_empty() {
        return Err(Exit::bad_input("--text encodes to no tokens"));
    }
    let input: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let logits = model.forward(&Tensor::from_slice(&input).unsqueeze(0).to_device(model.device()));
    let last = logits.get(0).get(-1).to_device(tch::Device::Cpu);
    let (values, indices) = last.topk(args.top.clamp(1, model.config().vocab_size), -1, true, true);
    let values: Vec<f32> = Vec::try_from(&values)?;
    let indices: Vec<i64> = Vec::try_from(&indices)?;
    let top: Vec<TopLogit> = indices
        .iter()
        .zip(&values)
        .map(|(&id, &logit)| TopLogit { id, token: tokenizer.decode(&[id as u32], false).unwrap_or_default(), logit: f64::from(logit) })
        .collect();
    let report = LogitsReport { model: args.model.model.display().to_string(), dtype: model.dtype().to_string(), input_ids: ids, top };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("input ids: {:?}", report.input_ids);
        for (rank, t) in report.top.iter().enumerate() {
            println!("{:>3}  {:>7}  {:>10.4}  {:?}", rank + 1, t.id, t.logit, t.token);
        }
    }
    Ok(())
}

/// `swegym bench generate`: see the `bench` module doc.
#[derive(clap::Args, Debug)]
pub struct GenerateBenchArgs {
    #[command(flatten)]
    pub models: crate::bench::ReferenceModels,
    /// The transformers side (relative paths are from the current folder: the clone's root).
    #[arg(long, default_value = "scripts/baselines/bench_generate.py")]
    pub script: PathBuf,
    /// Where the transformers numbers come from when it cannot run here.
    #[arg(long, default_value = "scripts/baselines/results")]
    pub baseline_dir: PathBuf,
    /// Skip running transformers; compare with the files in --baseline-dir.
    #[arg(long)]
    pub no_transformers: bool,
    #[arg(long, value_enum, num_args = 1.., default_values = ["f32", "bf16"])]
    pub dtypes: Vec<DtypeArg>,
    /// dtype of our KV cache (default: each run's weights dtype).
    #[arg(long, value_enum)]
    pub kv_dtype: Option<DtypeArg>,
    #[arg(long, num_args = 1.., default_values = ["1", "8"])]
    pub batches: Vec<usize>,
    #[arg(long, default_value_t = 512)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 256)]
    pub new_tokens: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    /// Timed runs per configuration (after one warm-up); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

#[derive(Debug, Clone, Serialize)]
struct SideResult {
    prefill_tok_s: Stat,
    decode_tok_s: Stat,
    decode_ms_per_step: f64,
    peak_rss_load_mib: f64,
    peak_rss_generate_mib: f64,
    /// "measured" (this run) or the baseline file read.
    source: String,
}

#[derive(Debug, Serialize)]
struct GenerateBench {
    bench: &'static str,
    dtype: String,
    kv_dtype: String,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    threads: i32,
    swegym: SideResult,
    transformers: Option<SideResult>,
    decode_ratio: Option<f64>,
    prefill_ratio: Option<f64>,
}

pub(crate) fn proc_status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS.
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub async fn bench_generate(ctx: &crate::context::Context, args: GenerateBenchArgs) -> anyhow::Result<()> {
    let (model, hf_model, python) = args.models.resolve(ctx);
    let transformers_here = !args.no_transformers && args.models.python_side_here(ctx);
    if transformers_here {
        crate::bench::require_script(&args.script)?;
    }
    if !args.no_transformers && !transformers_here {
        eprintln!(
            "transformers cannot run here ({} or {} is missing): comparing with the numbers in {} instead",
            python.display(),
            hf_model.join("model.safetensors").display(),
            args.baseline_dir.display()
        );
    }
    tokio::task::spawn_blocking(move || {
        let mut rows = Vec::new();
        for &dtype in &args.dtypes {
            tch::set_num_threads(args.threads);
            let (mut lm, tokenizer) = swegym_lm::load_model(&model, dtype.dtype(), tch::Device::Cpu)
                .map_err(|e| Exit::bad_input(e.to_string()))?;
            if let Some(kv) = args.kv_dtype {
                lm.set_kv_dtype(kv.dtype());
            }
            let peak_load = proc_status_mib("VmHWM");
            for &batch in &args.batches {
                let theirs = if transformers_here {
                    Some(run_transformers(&args, &python, &hf_model, dtype, batch)?)
                } else {
                    baseline_file(&args.baseline_dir, dtype, batch)
                };
                reset_peak_rss();
                let ours = run_ours(&lm, &tokenizer, &args, batch, peak_load);
                let ratio = |a: &Stat, b: Option<&Stat>| b.map(|b| a.median / b.median);
                let row = GenerateBench {
                    bench: "generate",
                    dtype: dtype.dtype().to_string(),
                    kv_dtype: lm.kv_dtype().to_string(),
                    batch,
                    prompt_len: args.prompt_len,
                    new_tokens: args.new_tokens,
                    threads: args.threads,
                    decode_ratio: ratio(&ours.decode_tok_s, theirs.as_ref().map(|t| &t.decode_tok_s)),
                    prefill_ratio: ratio(&ours.prefill_tok_s, theirs.as_ref().map(|t| &t.prefill_tok_s)),
                    swegym: ours,
                    transformers: theirs,
                };
                println!("{}", serde_json::to_string(&row)?);
                rows.push(row);
            }
        }
        eprintln!("\n| dtype | batch | prefill tok/s ours / transformers (×) | decode tok/s ours / transformers (×) | peak RSS MiB gen ours / transformers | transformers from |");
        eprintln!("|---|---|---|---|---|---|");
        for r in &rows {
            let t = r.transformers.as_ref();
            let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
            eprintln!(
                "| {} | {} | {:.0} / {} ({}) | {:.1} / {} ({}) | {:.0} / {} | {} |",
                if r.kv_dtype == r.dtype { r.dtype.clone() } else { format!("{} (KV cache {})", r.dtype, r.kv_dtype) },
                r.batch,
                r.swegym.prefill_tok_s.median,
                f(t.map(|t| t.prefill_tok_s.median)),
                r.prefill_ratio.map_or("-".into(), |v| format!("{v:.2}×")),
                r.swegym.decode_tok_s.median,
                f(t.map(|t| t.decode_tok_s.median)),
                r.decode_ratio.map_or("-".into(), |v| format!("{v:.2}×")),
                r.swegym.peak_rss_generate_mib,
                f(t.map(|t| t.peak_rss_generate_mib)),
                t.map_or("-", |t| t.source.as_str()),
            );
        }
        Ok(())
    })
    .await
    .context("bench thread")?
}

fn run_ours(lm: &CausalLm, tokenizer: &Tokenizer, args: &GenerateBenchArgs, batch: usize, peak_load: f64) -> SideResult {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1234);
    let vocab = lm.config().vocab_size as u32;
    let prompts: Vec<Vec<u32>> =
        (0..batch).map(|_| (0..args.prompt_len).map(|_| rng.random_range(100..vocab)).collect()).collect();
    let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(args.new_tokens) };
    let one = || {
        let mut generator = Generator::new(lm, tokenizer.clone());
        let t0 = Instant::now();
        for (i, p) in prompts.iter().enumerate() {
            let done = generator.add(i as u64, GenerationRequest::new(p.clone(), params.clone()));
            assert!(matches!(done, Ok(None)), "prefill of a benchmark row");
        }
        let t1 = Instant::now();
        let mut finished = 0;
        while finished < batch {
            finished += generator.step().expect("decode step").len();
        }
        let t2 = Instant::now();
        let (prefill, decode) = ((t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64());
        ((batch * args.prompt_len) as f64 / prefill, (batch * (args.new_tokens - 1)) as f64 / decode)
    };
    one(); // warm-up
    let runs: Vec<(f64, f64)> = (0..args.runs.max(1)).map(|_| one()).collect();
    let decode = Stat::of(runs.iter().map(|r| r.1).collect());
    SideResult {
        prefill_tok_s: Stat::of(runs.iter().map(|r| r.0).collect()),
        decode_ms_per_step: 1000.0 * batch as f64 / decode.median,
        decode_tok_s: decode,
        peak_rss_load_mib: peak_load,
        peak_rss_generate_mib: proc_status_mib("VmHWM"),
        source: "measured".into(),
    }
}

fn side_from_json(v: &serde_json::Value, source: String) -> Option<SideResult> {
    let stat = |k: &str| -> Option<Stat> {
        Some(Stat { min: v[k]["min"].as_f64()?, median: v[k]["median"].as_f64()?, max: v[k]["max"].as_f64()? })
    };
    Some(SideResult {
        prefill_tok_s: stat("prefill_tok_s")?,
        decode_tok_s: stat("decode_tok_s")?,
        decode_ms_per_step: v["decode_ms_per_step"]["median"].as_f64()?,
        peak_rss_load_mib: v["peak_rss_load_mib"].as_f64()?,
        peak_rss_generate_mib: v["peak_rss_generate_mib"].as_f64()?,
        source,
    })
}

fn hf_dtype(dtype: DtypeArg) -> &'static str {
    match dtype {
        DtypeArg::F32 => "float32",
        DtypeArg::Bf16 => "bfloat16",
        DtypeArg::F16 => "float16",
    }
}

fn baseline_file(dir: &std::path::Path, dtype: DtypeArg, batch: usize) -> Option<SideResult> {
    let path = dir.join(format!("generate_{}_b{batch}.json", hf_dtype(dtype)));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    side_from_json(&v, format!("baseline file {}", path.display()))
}

fn run_transformers(
    args: &GenerateBenchArgs,
    python: &std::path::Path,
    hf_model: &std::path::Path,
    dtype: DtypeArg,
    batch: usize,
) -> anyhow::Result<SideResult> {
    let out = tempfile::tempdir()?;
    let status = std::process::Command::new(python)
        .arg(&args.script)
        .arg(hf_dtype(dtype))
        .arg(batch.to_string())
        .env("MODEL_DIR", hf_model)
        .env("OUT_DIR", out.path())
        .env("PROMPT_LEN", args.prompt_len.to_string())
        .env("NEW_TOKENS", args.new_tokens.to_string())
        .env("RUNS", args.runs.max(1).to_string())
        .status()
        .with_context(|| format!("running {}", args.script.display()))?;
    if !status.success() {
        return Err(Exit::infra(format!("{} {} {batch} failed ({status})", args.script.display(), hf_dtype(dtype))));
    }
    let path = out.path().join(format!("generate_{}_b{batch}.json", hf_dtype(dtype)));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    side_from_json(&v, "measured".into()).ok_or_else(|| Exit::infra(format!("{}: unexpected JSON", path.display())))
}
