//! `swegym sample`: K agent rollouts per task with a policy (oracle, an OpenAI-compatible
//! server, or a replay script) in sandboxes, written durably to a rollouts Parquet; with
//! `--evaluate`, each rollout's patch is then graded and the verdict columns filled.
//!
//! Two-step arguments: the raw flags are validated into the stage's `SampleConfig` and a
//! policy object here; the API key is read from the environment variable the user names,
//! once, here (the stage reads no environment).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use swegym_evaluate::runner::{Harness, Job, JobKind};
use swegym_evaluate::EvalOptions;
use swegym_sample::policy::local::ModelDtypes;
use swegym_sample::policy::openai::OpenAiConfig;
use swegym_sample::prompt::Scaffold;
use swegym_sample::{EpisodeConfig, ExitReason, Policy, Rollout, SampleConfig, SamplingParams};
use swegym_sandbox::{Limits, Provisioner};
use swegym_schema::rollout::write_rollouts;

use crate::context::{BackendArg, Context};
use crate::evaluate::load_dataset;
use crate::output;
use crate::policy::{openai_config, LocalSpec, PolicySpec};
use crate::exit::Exit;

/// Which policy writes the agent's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyArg {
    /// Our own model (--model: a GGUF file or an HF folder); episodes share one batched engine.
    Local,
    /// Knows the gold patch; plays an expert trajectory (warm-start data).
    Oracle,
    /// An OpenAI-compatible chat endpoint (--base-url, --model).
    Openai,
    /// Canned replies from --replay-file (a JSON array of strings), in order.
    Replay,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SampleArgs {
    /// Task dataset: JSONL, JSON array or Parquet in the SWE-bench / SWE-Gym schema.
    #[arg(long)]
    pub dataset: PathBuf,
    #[arg(long, value_enum)]
    pub policy: PolicyArg,
    /// --policy oracle: the share of rollouts in which the expert slips (a near-miss edit or
    /// stopping before the fix is complete; drawn from each rollout's seed), for rollouts
    /// with mixed outcomes where no model resolves tasks yet (a verifier's data). Policy id
    /// `oracle-slips<rate>`.
    #[arg(long, default_value_t = 0.0)]
    pub oracle_slip_rate: f64,
    /// OpenAI-compatible base URL (with /v1), for --policy openai.
    #[arg(long)]
    pub base_url: Option<String>,
    /// Model name sent to the server (--policy openai), or the model file/folder (--policy local).
    #[arg(long)]
    pub model: Option<String>,
    /// Weights dtype of the local model.
    #[arg(long, default_value = "f32")]
    pub dtype: swegym_lm::Dtype,
    /// dtype of the local model's KV cache: f32, bf16, f16 or q8 (default: f16 for f32
    /// weights on the CPU, which halves the bytes a decoding step reads per row of context;
    /// else the weights dtype). q8 (int8 values with a scale per position and head) halves
    /// them again, at 8 bits of each key and value.
    #[arg(long)]
    pub kv_dtype: Option<swegym_lm::KvDtype>,
    /// dtype the local model's prefills compute in (default: the weights'). bf16 for f32
    /// weights keeps a bf16 copy of the projections for prompts and observations (decoding
    /// stays f32): about twice as fast where the CPU multiplies bf16 natively (AVX512-BF16,
    /// AMX), at bf16's rounding of the prompt's keys, values and first logits.
    #[arg(long)]
    pub prefill_dtype: Option<swegym_lm::Dtype>,
    /// What the local model's decoding steps multiply by: f32 (its own weights) or q8
    /// (8-bit copies, int8 in blocks of 32 with a center and step each, exact for a Q4_1
    /// GGUF, remade after an adapter merge): a step streams every weight once, and q8
    /// streams 0.31 of f32's bytes. Steps of 1-4 rows read the copies (1.85x tokens/s at
    /// batch 1 on an AVX2 EPYC), larger ones the f32 weights. Prefills stay in the weights'
    /// (or --prefill-dtype's) dtype. q8 needs f32 weights on a CPU with AVX2 (elsewhere the
    /// model's own weights are used, with a warning).
    #[arg(long)]
    pub weights: Option<swegym_lm::DecodeWeights>,
    /// Device of the local model: auto (CUDA when libtorch has it), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: swegym_lm::DeviceChoice,
    /// Name of the environment variable holding the API key (none sent when unset).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// --policy openai: a LoRA adapter the server hosts, sent as the model name.
    /// --policy local: a PEFT adapter folder, merged into the model's weights.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Seconds one HTTP request may take.
    #[arg(long, default_value_t = 600)]
    pub request_timeout: u64,
    /// Retries of a failed request (429, 5xx, timeouts), with exponential backoff.
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
    /// Replies for --policy replay.
    #[arg(long)]
    pub replay_file: Option<PathBuf>,
    /// Rollouts per task.
    #[arg(short = 'k', long, default_value_t = 4)]
    pub k: u32,
    /// Rollouts running at once.
    #[arg(short = 'j', long, default_value_t = 2)]
    pub jobs: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// New tokens per reply.
    #[arg(long, default_value_t = 2048)]
    pub max_tokens: u32,
    /// LM calls per rollout.
    #[arg(long, default_value_t = 30)]
    pub max_turns: u32,
    /// Prompt + reply tokens allowed (SmolLM2: 8192).
    #[arg(long, default_value_t = 32768)]
    pub max_context_tokens: usize,
    /// Characters of one observation kept (head and tail).
    #[arg(long, default_value_t = 30000)]
    pub max_observation_chars: usize,
    /// Unparseable replies in a row that end a rollout.
    #[arg(long, default_value_t = 3)]
    pub max_format_errors: u32,
    /// Seconds one execute_bash command may run.
    #[arg(long, default_value_t = 300)]
    pub command_timeout: u64,
    /// The agent's prompts: openhands (OpenHands' CodeAct prompts) or compact (short
    /// prompts for small models; the oracle then plays the short trajectory).
    #[arg(long, value_enum, default_value = "openhands")]
    pub scaffold: ScaffoldArg,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The RFT iteration recorded in each row.
    #[arg(long, default_value_t = 0)]
    pub iteration: u32,
    /// Only these instance ids.
    #[arg(long = "instance-ids", num_args = 1..)]
    pub instance_ids: Vec<String>,
    /// Grade each rollout's patch afterwards and fill the `resolved` / `status` columns.
    #[arg(long)]
    pub evaluate: bool,
    /// Seconds the test command may run when grading (default: the environment spec's).
    #[arg(long)]
    pub test_timeout: Option<u64>,
    /// Sandbox backend.
    #[arg(long, value_enum, default_value = "local")]
    pub backend: BackendArg,
    /// More environment specs (`environments.toml`).
    #[arg(long = "env-specs")]
    pub env_specs: Vec<PathBuf>,
    /// Memory limit of one sandbox, GiB.
    #[arg(long, default_value_t = 4.0)]
    pub memory_gib: f64,
    /// The rollouts Parquet; `<out minus .parquet>.partial.jsonl` holds finished rollouts
    /// while the run goes (a rerun resumes from it).
    #[arg(long, short)]
    pub out: PathBuf,
}

/// What `<out>.summary.json` holds.
#[derive(Debug, Serialize)]
struct SampleSummary {
    policy_id: String,
    tasks: usize,
    k: u32,
    rollouts: usize,
    ran: usize,
    resumed: usize,
    panicked: usize,
    exit_reasons: BTreeMap<String, usize>,
    empty_patch: usize,
    resolved: Option<usize>,
    mean_turns: f64,
    wall_seconds: f64,
    /// Rollouts run by this call per hour of wall time.
    rollouts_per_hour: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScaffoldArg {
    #[value(name = "openhands")]
    OpenHands,
    Compact,
}

impl From<ScaffoldArg> for Scaffold {
    fn from(a: ScaffoldArg) -> Scaffold {
        match a {
            ScaffoldArg::OpenHands => Scaffold::OpenHands,
            ScaffoldArg::Compact => Scaffold::Compact,
        }
    }
}

/// The policy the flags describe (checked here), loaded on this thread.
pub(crate) fn build_policy(args: &SampleArgs) -> anyhow::Result<Arc<dyn Policy>> {
    policy_spec(args)?.build_blocking()
}

fn policy_spec(args: &SampleArgs) -> anyhow::Result<PolicySpec> {
    if args.oracle_slip_rate != 0.0 && args.policy != PolicyArg::Oracle {
        return Err(Exit::bad_input("--oracle-slip-rate applies only to --policy oracle"));
    }
    Ok(match args.policy {
        PolicyArg::Oracle => PolicySpec::Oracle { slip_rate: args.oracle_slip_rate, scaffold: args.scaffold.into() },
        PolicyArg::Local => {
            let model = args.model.as_ref().ok_or_else(|| Exit::bad_input("--policy local needs --model (a GGUF file or an HF folder)"))?;
            if !Path::new(model).exists() {
                return Err(Exit::bad_input(format!("--model {model}: no such file or folder")));
            }
            let adapter = args.adapter.as_deref().map(PathBuf::from);
            if let Some(dir) = adapter.as_ref().filter(|d| !d.join("adapter_config.json").exists()) {
                return Err(Exit::bad_input(format!("--adapter {}: no adapter_config.json there (a PEFT adapter folder)", dir.display())));
            }
            let dtypes = ModelDtypes { weights: args.dtype, kv: args.kv_dtype, prefill: args.prefill_dtype, decode: args.weights };
            dtypes.check_prefill().map_err(|e| Exit::bad_input(format!("--prefill-dtype: {e}")))?;
            dtypes.check_decode().map_err(|e| Exit::bad_input(format!("--weights: {e} (--dtype f32)")))?;
            PolicySpec::Local(LocalSpec { model: PathBuf::from(model), adapter, merge_adapter: true, dtypes, device: args.device, max_batch: args.jobs, threads: None })
        }
        PolicyArg::Replay => PolicySpec::Replay { file: args.replay_file.clone().ok_or_else(|| Exit::bad_input("--policy replay needs --replay-file"))? },
        PolicyArg::Openai => {
            let (Some(base_url), Some(model)) = (&args.base_url, &args.model) else {
                return Err(Exit::bad_input("--policy openai needs --base-url and --model"));
            };
            let config = openai_config(base_url, model, args.api_key_env.as_deref(), "--api-key-env", args.request_timeout, args.max_retries)?;
            PolicySpec::OpenAi(OpenAiConfig { adapter: args.adapter.clone(), ..config })
        }
    })
}

/// The tasks, the stage config and the sandbox provisioner that `args` describe (the policy
/// is built apart: a benchmark builds one per concurrency).
pub(crate) async fn prepare(ctx: &Context, args: &SampleArgs) -> anyhow::Result<(Vec<swegym_schema::Task>, SampleConfig, Arc<Provisioner>)> {
    let mut tasks = load_dataset(&args.dataset, ctx.task_load)?;
    if !args.instance_ids.is_empty() {
        tasks.retain(|t| args.instance_ids.contains(&t.instance_id));
        if tasks.is_empty() {
            return Err(Exit::bad_input("no task of the dataset has one of the --instance-ids"));
        }
    }
    if args.k == 0 {
        return Err(Exit::bad_input("-k must be at least 1"));
    }
    let config = SampleConfig {
        k: args.k,
        jobs: args.jobs.max(1),
        iteration: args.iteration,
        seed: args.seed,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            max_tokens: args.max_tokens,
            ..SamplingParams::default()
        },
        episode: EpisodeConfig {
            max_turns: args.max_turns,
            max_observation_chars: args.max_observation_chars,
            max_context_tokens: args.max_context_tokens,
            max_format_errors: args.max_format_errors.max(1),
            command_timeout: Duration::from_secs(args.command_timeout),
            scaffold: args.scaffold.into(),
            ..EpisodeConfig::default()
        },
    };
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let specs = ctx.env_specs(&args.dataset, &args.env_specs)?;
    let backend = ctx.backend(args.backend).await?;
    let limits = Limits { memory_bytes: (args.memory_gib * (1u64 << 30) as f64) as u64, ..Limits::default() };
    let provisioner = Arc::new(Provisioner::new(backend, specs, ctx.source_options(), limits));
    Ok((tasks, config, provisioner))
}

pub async fn run(ctx: &Context, args: SampleArgs) -> anyhow::Result<()> {
    let (tasks, config, provisioner) = prepare(ctx, &args).await?;
    let policy = build_policy(&args)?;
    let total = tasks.len() * args.k as usize;
    let bar = output::progress(total, "sampling");
    let bar2 = bar.clone();
    let outcome = swegym_sample::sample(&tasks, Arc::clone(&policy), provisioner.clone(), &config, &args.out, move |r: &Rollout| {
        bar2.inc(1);
        bar2.println(format!("{:<50} #{:<3} {:<16} turns {:>3}{}", r.instance_id, r.sample_idx, r.exit_reason, r.turns, if r.empty_patch { "  (empty patch)" } else { "" }));
    })
    .await
    .map_err(|e| Exit::infra(e.to_string()))?;
    bar.finish_and_clear();
    let mut rollouts = outcome.rollouts.clone();

    let mut resolved = None;
    if args.evaluate {
        let eval = EvalOptions { test_timeout: args.test_timeout.map(Duration::from_secs), ..EvalOptions::default() };
        resolved = Some(evaluate_rollouts(provisioner, eval, args.jobs, &tasks, &mut rollouts, &args.out).await?);
    }
    let summary = SampleSummary::of(policy.id(), tasks.len(), args.k, &outcome, &rollouts, resolved);
    let summary_path = summary_path(&args.out);
    output::write_json(&summary_path, &summary)?;
    summary.print(&args.out, &summary_path);
    if outcome.panicked > 0 {
        return Err(Exit::infra(format!("{} rollouts panicked; rerun the same command to run them", outcome.panicked)));
    }
    let infra = rollouts.iter().filter(|r| r.exit_reason.is_infra_failure()).count();
    if !rollouts.is_empty() && infra == rollouts.len() {
        let first = rollouts.iter().find_map(|r| r.error.clone()).unwrap_or_default();
        return Err(Exit::infra(format!("every rollout failed in the infrastructure (sandbox or policy); first error: {first}")));
    }
    Ok(())
}

impl SampleSummary {
    fn of(policy_id: String, tasks: usize, k: u32, outcome: &swegym_sample::SampleOutcome, rollouts: &[Rollout], resolved: Option<usize>) -> SampleSummary {
        let mut exit_reasons = BTreeMap::new();
        for reason in ExitReason::ALL {
            exit_reasons.insert(reason.as_str().to_string(), rollouts.iter().filter(|r| r.exit_reason == reason).count());
        }
        SampleSummary {
            policy_id,
            tasks,
            k,
            rollouts: rollouts.len(),
            ran: outcome.ran,
            resumed: outcome.resumed,
            panicked: outcome.panicked,
            exit_reasons,
            empty_patch: rollouts.iter().filter(|r| r.empty_patch).count(),
            resolved,
            mean_turns: rollouts.iter().map(|r| r.turns as f64).sum::<f64>() / rollouts.len().max(1) as f64,
            wall_seconds: outcome.wall_seconds,
            rollouts_per_hour: if outcome.wall_seconds > 0.0 { outcome.ran as f64 * 3600.0 / outcome.wall_seconds } else { 0.0 },
        }
    }

    fn print(&self, out: &Path, summary_path: &Path) {
        println!("{} rollouts ({} run now, {} resumed) of {} tasks × {} → {}", self.rollouts, self.ran, self.resumed, self.tasks, self.k, out.display());
        let reasons: Vec<String> = self.exit_reasons.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r} {n}")).collect();
        println!("exit reasons: {}; empty patch {}; mean turns {:.1}", reasons.join(", "), self.empty_patch, self.mean_turns);
        if let Some(n) = self.resolved {
            println!("resolved {n}/{}", self.rollouts);
        }
        println!("{:.0} rollouts/hour ({:.1} s wall); summary: {}", self.rollouts_per_hour, self.wall_seconds, summary_path.display());
    }
}

fn summary_path(out: &Path) -> PathBuf {
    out.with_extension("summary.json")
}

/// Grades every rollout without a verdict (in the same process, reusing the environments
/// the provisioner built), fills `resolved` / `status`, rewrites the Parquet; returns how
/// many rollouts are resolved.
pub(crate) async fn evaluate_rollouts(
    provisioner: Arc<Provisioner>,
    eval: EvalOptions,
    jobs: usize,
    tasks: &[swegym_schema::Task],
    rollouts: &mut [Rollout],
    out: &Path,
) -> anyhow::Result<usize> {
    let by_id: BTreeMap<&str, &swegym_schema::Task> = tasks.iter().map(|t| (t.instance_id.as_str(), t)).collect();
    let mut job_rows = Vec::new();
    let mut jobs_list = Vec::new();
    for (i, r) in rollouts.iter().enumerate() {
        if r.status.is_some() {
            continue;
        }
        let Some(task) = by_id.get(r.instance_id.as_str()) else { continue };
        job_rows.push(i);
        jobs_list.push(Job {
            task: Arc::new((*task).clone()),
            kind: JobKind::Patch { patch: r.patch.clone(), model_name_or_path: r.policy_id.clone() },
            label: format!("{}-s{}", r.policy_id, r.sample_idx),
        });
    }
    if !jobs_list.is_empty() {
        let harness = Arc::new(Harness::with_provisioner(provisioner, eval, jobs));
        let bar = output::progress(jobs_list.len(), "grading");
        let bar2 = bar.clone();
        let results = harness.run(jobs_list, move |_| bar2.inc(1)).await;
        bar.finish_and_clear();
        if let Some(why) = crate::evaluate::all_failed_in_the_infrastructure(results.iter().map(|r| &r.outcome.verdict)) {
            // Left ungraded (no status), so the same command grades them again once fixed.
            return Err(Exit::infra(format!("{why}; fix it and rerun the same command (the rollouts are kept, ungraded)")));
        }
        for result in results {
            let r = &mut rollouts[job_rows[result.job_idx]];
            r.resolved = Some(result.outcome.verdict.resolved);
            r.status = Some(result.outcome.verdict.status.as_str().to_string());
        }
        write_rollouts(out, rollouts).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(rollouts.iter().filter(|r| r.resolved == Some(true)).count())
}
