//! `swegym bench generate`: prefill and decode tokens/s of our runtime per dtype, decoding
//! weights (f32, q8) and batch, with peak RSS, beside transformers run in the same session
//! by the peer's own script (`scripts/baselines/bench_generate.py`), or its committed
//! results when it cannot run, and beside llama.cpp on the same GGUF
//! (`scripts/baselines/llamacpp_bench.py`, batch 1) when llama-cpp-python is installed.
//! `--json FILE` writes one object per measured configuration.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use swegym_lm::{CausalLm, GenerationRequest, Generator, SamplingParams, Tokenizer};

use super::{require_script, ReferenceModels, Stat};
use crate::exit::Exit;
use crate::lm::DtypeArg;

/// `swegym bench generate`: see the `bench` module doc.
#[derive(clap::Args, Debug)]
pub struct GenerateBenchArgs {
    #[command(flatten)]
    pub models: ReferenceModels,
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
    /// Decoding weights to measure for f32 models: f32 (the model's own) and q8 (8-bit
    /// copies; see `swegym sample --weights`). Other dtypes decode from their own weights.
    #[arg(long, num_args = 1.., default_values = ["f32", "q8"])]
    pub weights: Vec<swegym_lm::DecodeWeights>,
    /// llama.cpp's side: a Python with llama-cpp-python (default:
    /// <cache>/venv-llamacpp/bin/python, made by stages/sample/scripts/install-llamacpp-server.sh).
    #[arg(long)]
    pub llamacpp_python: Option<PathBuf>,
    /// The llama.cpp side's script (relative paths are from the clone's root).
    #[arg(long, default_value = "scripts/baselines/llamacpp_bench.py")]
    pub llamacpp_script: PathBuf,
    /// Skip llama.cpp even when it is installed.
    #[arg(long)]
    pub no_llamacpp: bool,
    /// Also write the results here as a JSON list, one object per measured configuration:
    /// `{"engine", "weights", "batch", "decode_tok_s", "prefill_tok_s"}` (medians).
    #[arg(long)]
    pub json: Option<PathBuf>,
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
    /// What decoding steps multiplied by (`CausalLm::decode_weights`).
    weights: String,
    /// MiB of weights a one-row decoding step streams (`CausalLm::decode_weight_bytes`).
    decode_weight_mib: f64,
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
        require_script(&args.script)?;
    }
    if !args.no_transformers && !transformers_here {
        eprintln!(
            "transformers cannot run here ({} or {} is missing): comparing with the numbers in {} instead",
            python.display(),
            hf_model.join("model.safetensors").display(),
            args.baseline_dir.display()
        );
    }
    let llamacpp = if args.no_llamacpp { None } else { llamacpp_side(ctx, &args) };
    let sides = Sides { model, hf_model, python, transformers_here, llamacpp };
    tokio::task::spawn_blocking(move || measure(&args, &sides)).await.context("bench thread")?
}

/// What runs where: our model, the transformers side (its HF folder and Python, when it
/// can run here) and llama.cpp's (its Python and script, when it can).
struct Sides {
    model: PathBuf,
    hf_model: PathBuf,
    python: PathBuf,
    transformers_here: bool,
    llamacpp: Option<(PathBuf, PathBuf)>,
}

/// Every configuration of `args` (one JSON line each), llama.cpp's, then the table and
/// the `--json` file.
fn measure(args: &GenerateBenchArgs, sides: &Sides) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    for &dtype in &args.dtypes {
        measure_dtype(args, sides, dtype, &mut rows, &mut summary)?;
    }
    if let Some((python, script)) = &sides.llamacpp {
        let theirs = run_llamacpp(args, python, script, &sides.model)?;
        println!("{}", serde_json::to_string(&theirs)?);
        summary.push(theirs);
    }
    print_table(&rows, &summary);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The model loaded in `dtype`, measured at every batch and decoding weights, beside
/// transformers' numbers for the same dtype and batch.
fn measure_dtype(args: &GenerateBenchArgs, sides: &Sides, dtype: DtypeArg, rows: &mut Vec<GenerateBench>, summary: &mut Vec<EngineRow>) -> anyhow::Result<()> {
    tch::set_num_threads(args.threads);
    let (mut lm, tokenizer) = swegym_lm::load_model(&sides.model, dtype.dtype(), tch::Device::Cpu).map_err(|e| Exit::bad_input(e.to_string()))?;
    if let Some(kv) = args.kv_dtype {
        lm.set_kv_dtype(kv.dtype());
    }
    let peak_load = proc_status_mib("VmHWM");
    let weights: Vec<swegym_lm::DecodeWeights> = if dtype == DtypeArg::F32 { args.weights.clone() } else { vec![swegym_lm::DecodeWeights::F32] };
    for &batch in &args.batches {
        let theirs = if sides.transformers_here {
            Some(run_transformers(args, &sides.python, &sides.hf_model, dtype, batch)?)
        } else {
            baseline_file(&args.baseline_dir, dtype, batch)
        };
        for &w in &weights {
            let used = lm.set_decode_weights(w);
            if used != w {
                eprintln!("{w} decoding weights do not apply here (they need f32 weights and AVX2): skipped");
                continue;
            }
            reset_peak_rss();
            let ours = run_ours(&lm, &tokenizer, args, batch, peak_load);
            let weights_label = if used == swegym_lm::DecodeWeights::Q8 { "q8".to_string() } else { dtype.dtype().to_string() };
            summary.push(EngineRow { engine: "swegym", weights: weights_label.clone(), batch, decode_tok_s: ours.decode_tok_s.median, prefill_tok_s: ours.prefill_tok_s.median });
            let row = GenerateBench::new(&lm, args, (dtype, weights_label, batch), ours, theirs.clone());
            println!("{}", serde_json::to_string(&row)?);
            rows.push(row);
        }
        if let Some(t) = theirs.as_ref().filter(|t| t.source == "measured") {
            summary.push(EngineRow { engine: "transformers", weights: dtype.dtype().to_string(), batch, decode_tok_s: t.decode_tok_s.median, prefill_tok_s: t.prefill_tok_s.median });
        }
    }
    Ok(())
}

impl GenerateBench {
    /// The result line of one configuration (`dtype`, decoding weights' label, batch): our
    /// side, the transformers side and the ratios.
    fn new(lm: &CausalLm, args: &GenerateBenchArgs, (dtype, weights, batch): (DtypeArg, String, usize), ours: SideResult, theirs: Option<SideResult>) -> GenerateBench {
        let ratio = |a: &Stat, b: Option<&Stat>| b.map(|b| a.median / b.median);
        GenerateBench {
            bench: "generate",
            dtype: dtype.dtype().to_string(),
            weights,
            decode_weight_mib: lm.decode_weight_bytes() as f64 / (1 << 20) as f64,
            kv_dtype: lm.kv_dtype().to_string(),
            batch,
            prompt_len: args.prompt_len,
            new_tokens: args.new_tokens,
            threads: args.threads,
            decode_ratio: ratio(&ours.decode_tok_s, theirs.as_ref().map(|t| &t.decode_tok_s)),
            prefill_ratio: ratio(&ours.prefill_tok_s, theirs.as_ref().map(|t| &t.prefill_tok_s)),
            swegym: ours,
            transformers: theirs,
        }
    }
}

/// One measured configuration, as `--json` writes it (medians).
#[derive(Debug, Clone, Serialize)]
struct EngineRow {
    engine: &'static str,
    /// f32, bf16 or f16 (the model's own weights), q8, or the GGUF's type (llama.cpp).
    weights: String,
    batch: usize,
    decode_tok_s: f64,
    prefill_tok_s: f64,
}

fn print_table(rows: &[GenerateBench], summary: &[EngineRow]) {
    eprintln!("\n| dtype | decoding weights | batch | prefill tok/s ours / transformers (×) | decode tok/s ours / transformers (×) | peak RSS MiB gen ours / transformers | transformers from |");
    eprintln!("|---|---|---|---|---|---|---|");
    for r in rows {
        let t = r.transformers.as_ref();
        let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
        eprintln!(
            "| {} | {} | {} | {:.0} / {} ({}) | {:.1} / {} ({}) | {:.0} / {} | {} |",
            if r.kv_dtype == r.dtype { r.dtype.clone() } else { format!("{} (KV cache {})", r.dtype, r.kv_dtype) },
            r.weights,
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
    let ours = |w: &str, batch: usize| summary.iter().find(|r| r.engine == "swegym" && r.weights == w && r.batch == batch).map(|r| r.decode_tok_s);
    let llama = summary.iter().find(|r| r.engine == "llama.cpp");
    let batches: std::collections::BTreeSet<usize> = summary.iter().filter(|r| r.engine == "swegym").map(|r| r.batch).collect();
    for batch in batches {
        if let (Some(q8), Some(f32)) = (ours("q8", batch), ours("f32", batch)) {
            // llama.cpp's side runs at batch 1 (its Python bindings decode one sequence); at
            // batch 8 the bar is 4 × that rate, the stand-in for its batched decoding
            let vs_llama = llama.filter(|_| batch == 1 || batch == 8).map_or(String::new(), |l| {
                let bar = if batch == 1 { l.decode_tok_s } else { 4.0 * l.decode_tok_s };
                format!("; {:.2}× llama.cpp {} ({})", q8 / bar, l.weights, if batch == 1 { format!("{:.1} tok/s at batch 1", l.decode_tok_s) } else { format!("4 × its batch-1 {:.1} tok/s", l.decode_tok_s) })
            });
            eprintln!("decode at batch {batch}: q8 {q8:.1} tok/s, {:.2}× f32 ({f32:.1}){vs_llama}", q8 / f32);
        }
    }
}

/// llama.cpp's side when it can run here: its Python (with llama-cpp-python) and script.
fn llamacpp_side(ctx: &crate::context::Context, args: &GenerateBenchArgs) -> Option<(PathBuf, PathBuf)> {
    let python = args.llamacpp_python.clone().unwrap_or_else(|| ctx.cache_root.join("venv-llamacpp/bin/python"));
    let ready = python.exists()
        && args.llamacpp_script.is_file()
        && std::process::Command::new(&python).args(["-c", "import llama_cpp"]).output().is_ok_and(|o| o.status.success());
    if !ready {
        eprintln!(
            "llama.cpp is not measured: {} cannot import llama_cpp or {} is missing (stages/sample/scripts/install-llamacpp-server.sh installs it)",
            python.display(),
            args.llamacpp_script.display()
        );
    }
    ready.then_some((python, args.llamacpp_script.clone()))
}

/// llama.cpp at batch 1 on `model` (its own random prompt of the same length), by the
/// peer-side script: its thin `eval` + argmax loop, medians of `--runs`.
fn run_llamacpp(args: &GenerateBenchArgs, python: &std::path::Path, script: &std::path::Path, model: &std::path::Path) -> anyhow::Result<EngineRow> {
    let out = tempfile::tempdir()?;
    let json = out.path().join("llamacpp.json");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(model)
        .env("PROMPT_LEN", args.prompt_len.to_string())
        .env("NEW_TOKENS", args.new_tokens.to_string())
        .env("RUNS", args.runs.max(1).to_string())
        .env("THREADS", args.threads.to_string())
        // a path that does not exist: the script then skips its reference cross-check
        .env("REF_JSON", "-")
        .env("OUT_JSON", &json)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        let tail: String = String::from_utf8_lossy(&output.stderr).lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(Exit::infra(format!("{} {} failed ({}):\n{tail}", script.display(), model.display(), output.status)));
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let median = |k: &str| v["raw"][k]["median"].as_f64().ok_or_else(|| Exit::infra(format!("{}: no raw.{k}.median", json.display())));
    Ok(EngineRow { engine: "llama.cpp", weights: gguf_type(model), batch: 1, decode_tok_s: median("decode_tok_s")?, prefill_tok_s: median("prefill_tok_s")? })
}

/// The GGUF's main weight type as its file name says it (`…Q4_1.gguf` → `Q4_1`), else "gguf".
fn gguf_type(model: &std::path::Path) -> String {
    let stem = model.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    stem.rsplit('.').next().filter(|t| t.starts_with('Q') || t.starts_with('F') || t.starts_with("BF")).unwrap_or("gguf").to_string()
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
