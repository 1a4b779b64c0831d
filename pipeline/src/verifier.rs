//! `swegym verifier data|train|score|eval`: the SWE-Gym paper's outcome verifier.
//!
//! ```text
//! data   graded rollouts (files, or a run's train-split rollouts)  → verifier_sft.parquet (+ .summary.json)
//! train  judge examples → LoRA adapter (the policy trainer, the paper's verifier recipe scaled to this CPU)
//! score  model [+ adapter] × rollouts → scores.parquet: p(YES) per rollout (+ .summary.json)
//! eval   scores → Pass@k / Best@k / Random@k ± bootstrap std, AUC, accuracy → table + JSON
//! ```
//! `eval --run RUN` writes `RUN/verifier/eval.json`, which `swegym report RUN` plots.
//! [`score_rollouts`] is also what `swegym run` scores with when its config has a
//! `[verifier]` section.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use serde_json::json;
use swegym_lm::chat::ChatTemplate;
use swegym_lm::Tokenizer;
use swegym_schema::rollout::read_rollouts;
use swegym_schema::Rollout;
use swegym_train::{RawTrainConfig, TrainConfig};
use swegym_verifier::{Candidate, DataConfig, Decision, Judge, Origin, ScalingOptions, ScoreOptions, ScoreRow, Scored};

use crate::run_dir::{write_json_atomic, RunDir};
use crate::exit::Exit;

#[derive(clap::Subcommand, Debug)]
pub enum VerifierCommand {
    /// Graded rollouts → label-balanced judge examples (YES resolved / NO not) as SFT Parquet.
    Data(DataArgs),
    /// LoRA-train a verifier on judge examples (the policy trainer; the paper's verifier recipe).
    Train(VerifierTrainArgs),
    /// p(YES) of each rollout from a (verifier) model's next-token logits → scores Parquet.
    Score(ScoreArgs),
    /// Pass@k, Best@k and Random@k with bootstrap error bars, AUC and accuracy, from scores.
    Eval(EvalArgs),
}

pub async fn run(cmd: VerifierCommand) -> anyhow::Result<()> {
    match cmd {
        VerifierCommand::Data(args) => data(args),
        VerifierCommand::Train(args) => train(args).await,
        VerifierCommand::Score(args) => score(args).await,
        VerifierCommand::Eval(args) => eval(args),
    }
}

// ---------------------------------------------------------------------------------- data

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// Graded rollouts Parquet files (`swegym sample --evaluate`, a run's iter-NNN/rollouts.parquet).
    #[arg(long, num_args = 1..)]
    pub rollouts: Vec<PathBuf>,
    /// A run directory: adds its train-split rollouts (iter-*/rollouts.parquet and warm_start.parquet).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// The verifier's base model (GGUF file or HF folder): its tokenizer and chat template count tokens.
    #[arg(long)]
    pub model: PathBuf,
    /// The SFT file to write (.parquet, or .jsonl).
    #[arg(long)]
    pub out: PathBuf,
    /// Policy ids whose rollouts are off-policy (a teacher's); every other policy is on-policy.
    #[arg(long = "off-policy", num_args = 1.., default_values = ["oracle"])]
    pub off_policy: Vec<String>,
    /// The share of on-policy examples in the kept set (0..=1); default: the natural mix.
    #[arg(long)]
    pub on_policy_share: Option<f64>,
    /// Negatives kept per positive (1 = balanced).
    #[arg(long, default_value_t = 1.0)]
    pub negatives_per_positive: f64,
    /// Examples of this many tokens or more are dropped (judge prompt + answer, model tokenizer).
    #[arg(long, default_value_t = 8192)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The rollouts files of a run's train split, in iteration order.
fn run_rollout_files(run: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let root = crate::report::find_run(run)?;
    let dir = RunDir::new(root.clone());
    let mut files = Vec::new();
    let mut i = 0;
    while dir.iter_dir(i).exists() {
        for name in ["warm_start.parquet", "rollouts.parquet"] {
            let p = dir.iter_dir(i).join(name);
            if p.exists() {
                files.push(p);
            }
        }
        i += 1;
    }
    if files.is_empty() {
        return Err(Exit::bad_input(format!("{}: no iter-NNN/rollouts.parquet yet (run `swegym run` first)", root.display())));
    }
    Ok(files)
}

/// Reads rollouts files, each error naming the file and what it should be.
fn read_rollout_files(files: &[PathBuf]) -> anyhow::Result<Vec<(usize, Rollout)>> {
    let mut all = Vec::new();
    for (f, path) in files.iter().enumerate() {
        let rollouts = read_rollouts(path).map_err(|e| {
            Exit::bad_input(format!("{e}\n  ({} must be a rollouts Parquet as `swegym sample` or `swegym run` write it)", path.display()))
        })?;
        all.extend(rollouts.into_iter().map(|r| (f, r)));
    }
    Ok(all)
}

/// A model's tokenizer and chat template, without its weights.
pub(crate) fn judge_for(model: &Path) -> anyhow::Result<Judge> {
    let bad = |e: &dyn std::fmt::Display| Exit::bad_input(format!("{}: {e}", model.display()));
    let tokenizer = if model.is_dir() {
        Tokenizer::from_file(model.join("tokenizer.json")).map_err(|e| bad(&e))?
    } else {
        let file = swegym_lm::GgufFile::open(model).map_err(|e| bad(&e))?;
        Tokenizer::from_gguf(&file).map_err(|e| bad(&e))?
    };
    let template: ChatTemplate = swegym_lm::chat_template_for(model, &tokenizer)
        .ok_or_else(|| bad(&"no chat template (the judge prompt is a chat): use an instruct model or add chat_template.jinja"))?;
    Judge::new(tokenizer, template).map_err(|e| bad(&e))
}

fn data(args: DataArgs) -> anyhow::Result<()> {
    let files = data_inputs(&args)?;
    let judge = judge_for(&args.model)?;
    let rollouts = read_rollout_files(&files)?;
    let names = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
    let candidates = candidates(&judge, &rollouts, &args.off_policy)?;
    let config = DataConfig {
        max_tokens: args.max_tokens,
        negatives_per_positive: args.negatives_per_positive,
        on_policy_share: args.on_policy_share,
        seed: args.seed,
    };
    let outcome = swegym_verifier::build_data(&candidates, &config).map_err(|e| data_error(e, &names))?;
    let summary = swegym_export::write_records(&args.out, &outcome.records).map_err(|e| Exit::bad_input(e.to_string()))?;
    let decisions = decisions_json(&files, &rollouts, &candidates, &outcome.decisions);
    let s = &outcome.summary;
    let summary_path = args.out.with_extension("summary.json");
    write_json_atomic(
        &summary_path,
        &json!({"inputs": files, "model": args.model, "off_policy": args.off_policy, "summary": s, "export": summary, "decisions": decisions}),
    )?;
    print_data_summary(s, summary.instances, &args.out, &summary_path);
    Ok(())
}

/// The rollouts files of `--rollouts` and `--run`, once the flags are checked.
fn data_inputs(args: &DataArgs) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = args.rollouts.clone();
    if let Some(run) = &args.run {
        files.extend(run_rollout_files(run)?);
    }
    if files.is_empty() {
        return Err(Exit::bad_input("no rollouts: pass --rollouts FILE... or --run RUN"));
    }
    if let Some(f) = args.on_policy_share {
        if !(0.0..=1.0).contains(&f) {
            return Err(Exit::bad_input(format!("--on-policy-share must be in [0, 1], got {f}")));
        }
    }
    if args.negatives_per_positive.is_nan() || args.negatives_per_positive <= 0.0 {
        return Err(Exit::bad_input(format!("--negatives-per-positive must be positive, got {}", args.negatives_per_positive)));
    }
    Ok(files)
}

/// Each rollout as a judge-example candidate: its origin (`off_policy` policy ids are a
/// teacher's) and its example's tokens.
fn candidates<'a>(judge: &Judge, rollouts: &'a [(usize, Rollout)], off_policy: &[String]) -> anyhow::Result<Vec<Candidate<'a>>> {
    let mut candidates = Vec::with_capacity(rollouts.len());
    for (_, r) in rollouts {
        let origin = if off_policy.contains(&r.policy_id) { Origin::OffPolicy } else { Origin::OnPolicy };
        let n_tokens = judge.example_tokens(&r.messages, r.resolved == Some(true)).map_err(|e| Exit::bad_input(e.to_string()))?;
        candidates.push(Candidate { rollout: r, origin, n_tokens });
    }
    Ok(candidates)
}

/// Why no judge examples could be made from the files `names`, and what to do about it.
fn data_error(e: swegym_verifier::DataError, names: &str) -> anyhow::Error {
    use swegym_verifier::DataError::*;
    let todo = match e {
        NothingGraded(_) => "grade them first: `swegym sample --evaluate`, or the rollouts of a `swegym run`",
        NoPositives { .. } => "add resolved trajectories, e.g. oracle ones (`swegym sample --policy oracle --evaluate`), as off-policy data",
        NoNegatives { .. } => "add failed trajectories, e.g. the policy's own (`swegym sample --policy local --evaluate`)",
        MixInfeasible { .. } => "change --on-policy-share or add rollouts of the scarce source",
    };
    Exit::bad_input(format!("{names}: {e}; {todo}"))
}

/// The per-rollout decisions of the summary file: which file, which rollout, kept or
/// dropped and why.
fn decisions_json(files: &[PathBuf], rollouts: &[(usize, Rollout)], candidates: &[Candidate<'_>], decisions: &[Decision]) -> Vec<serde_json::Value> {
    rollouts
        .iter()
        .zip(candidates)
        .zip(decisions)
        .map(|(((f, r), c), d)| {
            let (decision, reason) = match d {
                Decision::Keep => ("keep", None),
                Decision::Drop(reason) => ("drop", Some(reason.as_str())),
            };
            json!({"file": files[*f], "instance_id": r.instance_id, "sample_idx": r.sample_idx, "policy_id": r.policy_id,
                   "origin": c.origin, "resolved": r.resolved, "n_tokens": c.n_tokens, "decision": decision, "reason": reason})
        })
        .collect()
}

/// What `verifier data` made, kept and dropped, on stdout.
fn print_data_summary(s: &swegym_verifier::DataSummary, instances: usize, out: &Path, summary_path: &Path) {
    let drops: Vec<String> = s.dropped.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r} {n}")).collect();
    let k = &s.kept_by_origin;
    println!(
        "{} judge examples ({} YES, {} NO) from {} rollouts on {} tasks → {}\n  on-policy {} YES / {} NO, off-policy {} YES / {} NO; dropped: {}\n  summary and per-rollout decisions: {}",
        s.kept,
        s.positives,
        s.negatives,
        s.input,
        instances,
        out.display(),
        k.on_policy_positive,
        k.on_policy_negative,
        k.off_policy_positive,
        k.off_policy_negative,
        if drops.is_empty() { "none".to_string() } else { drops.join(", ") },
        summary_path.display()
    );
}

// --------------------------------------------------------------------------------- train

/// The verifier recipe of the paper (`train_unsloth_qwen25coder_32b_verifier.py`: LoRA r=64,
/// α=64, dropout 0 on all seven projections, lr 2e-4, 2 epochs, batch 1 × accumulation 8,
/// warm-up 15, linear decay, max 10,240 tokens) scaled to this CPU: warm-up 2 steps (a CPU
/// run has tens of steps, not hundreds) and sequences up to SmolLM2's context, 8,192
/// tokens. The decay is the trainer's cosine, not linear. A `--config` file's keys win.
pub const VERIFIER_TRAIN_DEFAULTS: &str = r#"
lora_r = 64
lora_alpha = 64.0
lora_dropout = 0.0
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
learning_rate = 2e-4
warmup_steps = 2
epochs = 2.0
batch_size = 1
grad_accum = 8
max_seq_len = 8192
overlong = "drop"
"#;

#[derive(clap::Args, Debug)]
pub struct VerifierTrainArgs {
    /// The model, the judge examples (`swegym verifier data`), the adapter folder, and the
    /// trainer's options as `swegym train` has them; defaults: the paper's verifier recipe.
    #[command(flatten)]
    pub train: crate::train::TrainArgs,
}

/// [`VERIFIER_TRAIN_DEFAULTS`] under the keys of `file` (a `[train]` table, or its keys at top level).
fn verifier_train_config(file: Option<&Path>) -> anyhow::Result<TrainConfig> {
    let mut table: toml::Table = toml::from_str(VERIFIER_TRAIN_DEFAULTS).expect("the compiled-in defaults parse");
    let what = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Exit::bad_input(format!("{}: cannot read: {e}", path.display())))?;
            let mut user: toml::Table = toml::from_str(&text).map_err(|e| Exit::bad_input(format!("{}: {e}", path.display())))?;
            if let Some(toml::Value::Table(t)) = user.remove("train") {
                user = t;
            }
            table.extend(user);
            path.display().to_string()
        }
        None => "the verifier defaults".to_string(),
    };
    let raw: RawTrainConfig = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| Exit::bad_input(format!("{what}: {e}")))?;
    raw.resolve(&what).map_err(|e| Exit::bad_input(e.to_string()))
}

async fn train(args: VerifierTrainArgs) -> anyhow::Result<()> {
    let mut cfg = verifier_train_config(args.train.config.as_deref())?;
    args.train.apply_overrides(&mut cfg);
    crate::train::run_with_config(args.train, cfg).await
}

// --------------------------------------------------------------------------------- score

#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// The verifier: base model, dtype, device, threads and its `--adapter`.
    #[command(flatten)]
    pub model: crate::lm::ModelArgs,
    /// Rollouts Parquet files to score (graded ones carry their labels into the scores).
    #[arg(long, num_args = 1.., required = true)]
    pub rollouts: Vec<PathBuf>,
    /// The scores Parquet to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Tokens of one forward (rows × padded length).
    #[arg(long, default_value_t = 8192)]
    pub batch_tokens: usize,
    /// Longer prompts keep their first quarter and last three quarters.
    #[arg(long, default_value_t = 8192)]
    pub max_prompt_tokens: usize,
    /// Prompts are padded to a multiple of this (a prompt's padded length depends on it
    /// alone, which makes batched scores equal one-by-one scores).
    #[arg(long, default_value_t = 64)]
    pub bucket: usize,
}

/// Scores `rollouts` with `model` (base + adapter, loaded once on a blocking thread): each
/// trajectory's judge prompt rendered by `judge`, the prompts batched by `score_prompts`.
/// Draws no random numbers; the caller must not run it while libtorch trains (its settings,
/// such as the thread count, are process-wide). Rows are in input order.
pub(crate) async fn score_rollouts(
    judge: &Judge,
    model: &crate::lm::ModelArgs,
    rollouts: &[Rollout],
    options: ScoreOptions,
    what: &str,
) -> anyhow::Result<Vec<ScoreRow>> {
    let prompts: Vec<Vec<u32>> =
        rollouts.iter().map(|r| judge.prompt_ids(&r.messages)).collect::<Result<_, _>>().map_err(|e| Exit::bad_input(e.to_string()))?;
    let (model_args, answer, n, what) = (model.clone(), judge.answer, prompts.len(), what.to_string());
    let scores = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<swegym_verifier::Score>> {
        let (model, _) = model_args.load()?;
        let bar = crate::output::stage_bar(n as u64, &what);
        let scores = swegym_verifier::score_prompts(&model, answer, &prompts, &options, &mut |done| bar.set_position(done as u64));
        bar.finish_and_clear();
        Ok(scores)
    })
    .await
    .context("the scoring thread")??;
    Ok(rollouts.iter().zip(&scores).map(|(r, s)| ScoreRow::new(r, s)).collect())
}

async fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let rollouts: Vec<Rollout> = read_rollout_files(&args.rollouts)?.into_iter().map(|(_, r)| r).collect();
    if rollouts.is_empty() {
        return Err(Exit::bad_input(format!("{}: no rollouts to score", args.rollouts[0].display())));
    }
    let judge = judge_for(&args.model.model)?;
    let options = ScoreOptions { batch_tokens: args.batch_tokens, max_prompt_tokens: args.max_prompt_tokens, bucket: args.bucket };
    let answer = judge.answer;
    let started = Instant::now();
    let rows = score_rollouts(&judge, &args.model, &rollouts, options, "score").await?;
    let wall_s = started.elapsed().as_secs_f64();
    swegym_verifier::write_scores(&args.out, &rows).map_err(|e| Exit::infra(e.to_string()))?;
    let tokens: usize = rows.iter().map(|s| s.prompt_tokens as usize).sum();
    let truncated = rows.iter().filter(|s| s.truncated).count();
    let graded: Vec<(f64, bool)> = rows.iter().filter_map(|r| r.resolved.map(|y| (r.p_yes, y))).collect();
    let quality = swegym_verifier::metrics::classifier(&graded);
    let yes = judge.tokenizer.id_to_token(answer.yes).unwrap_or_default();
    let no = judge.tokenizer.id_to_token(answer.no).unwrap_or_default();
    write_json_atomic(
        &args.out.with_extension("summary.json"),
        &json!({"rollouts": args.rollouts, "model": args.model.model, "adapter": args.model.adapter, "answer_tokens": {"yes": answer.yes, "yes_token": yes, "no": answer.no, "no_token": no},
                "options": options, "scored": rows.len(), "truncated": truncated, "prompt_tokens": tokens, "wall_s": wall_s, "classifier": quality}),
    )?;
    println!(
        "scored {} rollouts ({} prompt tokens, {} cut to {}) in {:.1} s ({:.0} tok/s); YES = token {} {:?}, NO = token {} {:?} → {}",
        rows.len(),
        tokens,
        truncated,
        args.max_prompt_tokens,
        wall_s,
        tokens as f64 / wall_s.max(1e-9),
        answer.yes,
        yes,
        answer.no,
        no,
        args.out.display()
    );
    let mean = |m: Option<f64>| m.map_or("-".to_string(), |v| format!("{v:.3}"));
    println!(
        "  graded {} ({} resolved): mean p_yes {} resolved / {} unresolved; AUC {}; accuracy {:.1}%",
        quality.rollouts,
        quality.positives,
        mean(quality.mean_p_yes_resolved),
        mean(quality.mean_p_yes_unresolved),
        mean(quality.auc),
        100.0 * quality.accuracy
    );
    Ok(())
}

// ---------------------------------------------------------------------------------- eval

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Scores Parquet files (`swegym verifier score`) of graded rollouts, several per task.
    #[arg(long, num_args = 1.., required = true)]
    pub scores: Vec<PathBuf>,
    #[arg(long, num_args = 1.., default_values_t = [1usize, 2, 4, 8, 16])]
    pub ks: Vec<usize>,
    /// Random subsets of k rollouts per task (the paper: 100).
    #[arg(long, default_value_t = 100)]
    pub subsets: usize,
    /// Bootstrap samples of half the tasks for the error bars (the paper: 1000).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A run directory: write RUN/verifier/eval.json, which `swegym report RUN` plots.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Print the JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let (instances, first_rollout_not_greedy) = read_graded_scores(&args.scores)?;
    let options = ScalingOptions { ks: args.ks.clone(), subsets: args.subsets, bootstrap: args.bootstrap, seed: args.seed };
    let report = swegym_verifier::scaling(&instances, &options);
    let file = swegym_verifier::EvalFile { scores: args.scores.clone(), first_rollout_not_greedy, report };
    let mut outs = args.out.clone().into_iter().collect::<Vec<_>>();
    if let Some(run) = &args.run {
        let root = crate::report::find_run(run)?;
        let path = crate::run_dir::verifier_eval_path(&root);
        std::fs::create_dir_all(path.parent().expect("has a parent")).with_context(|| format!("creating {}", path.display()))?;
        outs.push(path);
    }
    for out in &outs {
        write_json_atomic(out, &file)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&file)?);
        return Ok(());
    }
    print_eval(&file, &outs);
    Ok(())
}

/// The scored rollouts of `paths` by task, each rollout once and every one graded, and how
/// many tasks' first rollout (the lowest sample index) was sampled at t > 0.
fn read_graded_scores(paths: &[PathBuf]) -> anyhow::Result<(BTreeMap<String, Vec<Scored>>, usize)> {
    let mut instances: BTreeMap<String, Vec<Scored>> = BTreeMap::new();
    let mut first_temperature: BTreeMap<String, (u32, f64)> = BTreeMap::new();
    let mut seen = BTreeMap::new();
    for path in paths {
        let rows = swegym_verifier::read_scores(path).map_err(|e| Exit::bad_input(e.to_string()))?;
        let ungraded = rows.iter().filter(|r| r.resolved.is_none()).count();
        if ungraded > 0 {
            return Err(Exit::bad_input(format!(
                "{}: {ungraded} of {} scored rollouts have no verdict (resolved is null); grade the rollouts (`swegym sample --evaluate`) and score them again",
                path.display(),
                rows.len()
            )));
        }
        for r in rows {
            if let Some(other) = seen.insert((r.instance_id.clone(), r.sample_idx), path.clone()) {
                return Err(Exit::bad_input(format!(
                    "{}: rollout {} #{} is also in {} (each rollout once)",
                    path.display(),
                    r.instance_id,
                    r.sample_idx,
                    other.display()
                )));
            }
            let first = first_temperature.entry(r.instance_id.clone()).or_insert((r.sample_idx, r.temperature));
            if r.sample_idx < first.0 {
                *first = (r.sample_idx, r.temperature);
            }
            instances.entry(r.instance_id).or_default().push(Scored { sample_idx: r.sample_idx, resolved: r.resolved == Some(true), p_yes: r.p_yes });
        }
    }
    Ok((instances, first_temperature.values().filter(|(_, t)| *t > 0.0).count()))
}

/// The scaling table, the verifier's quality and notes on stdout; `outs`: the files written.
fn print_eval(file: &swegym_verifier::EvalFile, outs: &[PathBuf]) {
    print!("{}", crate::report::scaling_curves(&file.report, "the verifier").table().to_text());
    let c = &file.report.classifier;
    let opt = |v: Option<f64>, scale: f64| v.map_or("-".to_string(), |v| format!("{:.3}", v * scale));
    println!(
        "{} tasks, {}–{} rollouts each ({} in all: {} resolved); verifier AUC {}, accuracy {:.1}%, mean p_yes {} resolved / {} unresolved",
        file.report.instances,
        file.report.min_rollouts,
        file.report.max_rollouts,
        c.rollouts,
        c.positives,
        opt(c.auc, 1.0),
        100.0 * c.accuracy,
        opt(c.mean_p_yes_resolved, 1.0),
        opt(c.mean_p_yes_unresolved, 1.0)
    );
    if !file.report.skipped_ks.is_empty() {
        println!("  k = {:?}: no task has that many rollouts", file.report.skipped_ks);
    }
    if file.first_rollout_not_greedy > 0 {
        println!("  note: rollout 0 of {} tasks was sampled at t > 0 (the paper's rollout 0 is greedy)", file.first_rollout_not_greedy);
    }
    for out in outs {
        println!("  written to {}", out.display());
    }
}
