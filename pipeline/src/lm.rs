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

use crate::exit::Exit;

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
    /// What decoding steps multiply by: f32 (the model's own weights) or q8 (8-bit copies
    /// of f32 weights; see `swegym sample --weights`). Default: the model's own.
    #[arg(long)]
    pub weights: Option<swegym_lm::DecodeWeights>,
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
        if let Some(w) = self.weights {
            if model.set_decode_weights(w) != w {
                tracing::warn!("--weights {w}: not for this model here (q8 needs f32 weights on a CPU with AVX2); decoding uses the model's own weights");
            }
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
