//! The `swegym run` config: a TOML file read in two levels — raw serde structs (every
//! table `deny_unknown_fields`, so an unknown key fails naming it; every key optional where
//! a default exists) validated into [`RunConfig`], which has no `Option` left but those
//! meaning "none" and holds every path absolute and the selected task ids.
//!
//! Paths: relative paths resolve against the directory of the config file;
//! `${SWEGYM_CACHE}` is the cache root (default `~/.cache/swegym`) and a leading `~/` the
//! home directory. Everything a run needs from disk is checked here, before any work: the
//! model file, each split's task file and selection, environment specs, a warm-start SFT
//! file, a verifier's adapter folder. A failure names the key (`[policy] model`) and the
//! path.
//!
//! The defaults are written once, in `configs/reference.toml` (compiled in as [`REFERENCE`]).
//! `[eval]` holds the held-out split's knobs; their old names (`[policy] eval_temperature`,
//! `[agent] eval_max_turns`, `[sampling] eval_rollouts_per_task`, `best_of_temperature`)
//! are still read, with a warning. The resolved config keeps those values where they were
//! (`policy.eval_temperature`, …), so its JSON and hash — and every run folder's — are
//! unchanged.
//!
//! Sections added after runs existed (`[verifier]`, `[eval] best_of_temperature`) are
//! left out of the resolved JSON when unset, so older runs keep their config hash.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use swegym_filter::{FilterConfig, FilterRule, Preference, RawFilterConfig};
use swegym_lm::{DeviceChoice, Dtype};
use swegym_sample::prompt::Scaffold;
use swegym_sample::policy::local::ModelDtypes;
use swegym_sample::{EpisodeConfig, SampleConfig, SamplingParams};
use swegym_schema::Task;
use swegym_train::{RawTrainConfig, TrainConfig};

/// A config problem, naming the file, the key and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}{problem}")]
pub struct ConfigError {
    pub file: String,
    /// `[table] key: ` or empty.
    pub key: String,
    pub problem: String,
}

// ---------------------------------------------------------------- raw (as written)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    run: Option<RawRun>,
    dataset: Option<RawDataset>,
    sandbox: Option<RawSandbox>,
    policy: Option<RawPolicy>,
    agent: Option<RawAgent>,
    sampling: Option<RawSampling>,
    filter: Option<RawFilterConfig>,
    train: Option<RawTrainConfig>,
    warm_start: Option<RawWarmStart>,
    verifier: Option<RawVerifier>,
    eval: Option<RawEval>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    name: Option<String>,
    iterations: Option<u32>,
    seed: Option<u64>,
    adapters: Option<String>,
    rft_data: Option<String>,
    about: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    train: Option<RawSplit>,
    test: Option<RawSplit>,
    select: Option<Select>,
    env_specs: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSplit {
    path: Option<String>,
    split: Option<String>,
    limit: Option<usize>,
    ids: Option<Vec<String>>,
    /// Synthesized datasets: only tasks of these difficulty tiers (easy, medium, hard).
    tiers: Option<Vec<String>>,
    /// Synthesized datasets: only tasks of these mutation kinds.
    kinds: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    backend: Option<Backend>,
    jobs: Option<usize>,
    memory_gib: Option<f64>,
    test_timeout_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    kind: Option<PolicyKind>,
    model: Option<String>,
    dtype: Option<String>,
    kv_dtype: Option<String>,
    prefill_dtype: Option<String>,
    weights: Option<String>,
    device: Option<String>,
    threads: Option<i32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_new_tokens: Option<u32>,
    /// Old name of `[eval] temperature`.
    eval_temperature: Option<f64>,
    merge_adapter: Option<bool>,
    base_url: Option<String>,
    served_model: Option<String>,
    api_key_env: Option<String>,
    request_timeout_s: Option<u64>,
    max_retries: Option<u32>,
    load_adapters: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    max_turns: Option<u32>,
    /// Old name of `[eval] max_turns`.
    eval_max_turns: Option<u32>,
    max_context_tokens: Option<usize>,
    max_observation_chars: Option<usize>,
    max_format_errors: Option<u32>,
    command_timeout_s: Option<u64>,
    scaffold: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSampling {
    rollouts_per_task: Option<u32>,
    /// Old names of `[eval] rollouts_per_task` and `best_of_temperature`.
    eval_rollouts_per_task: Option<u32>,
    best_of_temperature: Option<f64>,
    curriculum: Option<String>,
    tasks_per_iteration: Option<usize>,
}

/// `[eval]`: how the held-out split is sampled.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEval {
    temperature: Option<f64>,
    max_turns: Option<u32>,
    rollouts_per_task: Option<u32>,
    best_of_temperature: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarmStart {
    source: Option<WarmStartSource>,
    path: Option<String>,
    rollouts_per_task: Option<u32>,
    max_turns: Option<u32>,
    sample_base: Option<bool>,
    /// `[warm_start.train]`: [train] keys that differ for iteration 0's training.
    train: Option<RawTrainConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerifier {
    adapter: Option<String>,
    model: Option<String>,
    select_keep: Option<bool>,
    select_submit: Option<bool>,
}

// ---------------------------------------------------------------- defaults

/// `configs/reference.toml`, compiled in: the one place the run config's defaults are
/// written (a `# key = ...` line there is a key without a default value).
pub const REFERENCE: &str = include_str!("../../../configs/reference.toml");

/// The defaults, read from [`REFERENCE`] (tests check that it parses, that its [train],
/// [filter] and [agent] are those stages' own defaults, and that it names every key).
static DEFAULTS: std::sync::LazyLock<Defaults> = std::sync::LazyLock::new(|| toml::from_str(REFERENCE).expect("configs/reference.toml parses (a unit test checks it)"));

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    run: RunDefaults,
    dataset: DatasetDefaults,
    sandbox: SandboxDefaults,
    policy: PolicyDefaults,
    agent: AgentDefaults,
    sampling: SamplingDefaults,
    eval: EvalDefaults,
    /// `[filter]` and `[train]`: the filter's and the trainer's own defaults, written out (a test
    /// checks they resolve alike); read by that test only.
    #[cfg_attr(not(test), allow(dead_code))]
    filter: RawFilterConfig,
    #[cfg_attr(not(test), allow(dead_code))]
    train: RawTrainConfig,
    warm_start: WarmStartDefaults,
    verifier: VerifierDefaults,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunDefaults {
    iterations: u32,
    seed: u64,
    adapters: String,
    rft_data: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetDefaults {
    select: Select,
    env_specs: Vec<String>,
    /// `[dataset.train]` / `[dataset.test]`: every key commented (no defaults); read by a test.
    #[cfg_attr(not(test), allow(dead_code))]
    train: toml::Table,
    #[cfg_attr(not(test), allow(dead_code))]
    test: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxDefaults {
    backend: Backend,
    jobs: usize,
    memory_gib: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDefaults {
    kind: PolicyKind,
    dtype: String,
    kv_dtype: String,
    device: String,
    temperature: f64,
    top_p: f64,
    max_new_tokens: u32,
    merge_adapter: bool,
    request_timeout_s: u64,
    max_retries: u32,
    load_adapters: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentDefaults {
    scaffold: String,
    max_turns: u32,
    max_context_tokens: usize,
    max_observation_chars: usize,
    max_format_errors: u32,
    command_timeout_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplingDefaults {
    rollouts_per_task: u32,
    curriculum: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalDefaults {
    temperature: f64,
    rollouts_per_task: u32,
    best_of_temperature: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmStartDefaults {
    rollouts_per_task: u32,
    max_turns: u32,
    sample_base: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifierDefaults {
    select_keep: bool,
    select_submit: bool,
}

// ---------------------------------------------------------------- resolved

/// How tasks of a split are picked when `limit` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Select {
    /// The first `limit` rows, in file order.
    First,
    /// `limit` rows drawn with the run's seed.
    Random,
}

/// The sandbox backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Local,
    Docker,
}

impl From<Backend> for crate::context::BackendArg {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Local => crate::context::BackendArg::Local,
            Backend::Docker => crate::context::BackendArg::Docker,
        }
    }
}

/// Who serves the policy while sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Our runtime (crates/lm) in this process, the adapter merged or attached.
    Local,
    /// An OpenAI-compatible server (vLLM, SGLang); adapters are registered with it by name.
    Openai,
}

/// Off-policy data added to iteration 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmStartSource {
    /// The oracle policy's trajectories (gold patch played as an expert) on the train split,
    /// graded and filtered with the policy's rollouts.
    Oracle,
    /// An SFT dataset (Parquet or JSONL in the TRL layout), added as it is.
    Sft,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSection {
    pub name: String,
    pub iterations: u32,
    pub seed: u64,
    /// How adapter_i is trained: from the base on the kept data of iterations 0..=i
    /// (default), or continuing adapter_{i-1} on iteration i's kept data alone. Left out of
    /// the JSON when the default (old runs keep their hash).
    #[serde(skip_serializing_if = "Adapters::is_from_base")]
    pub adapters: Adapters,
    /// What iterations i ≥ 1 train on: the kept rollouts (default), or — an ablation — the
    /// warm-start (oracle) trajectories of the tasks the filter kept, one per kept rollout:
    /// the same tasks and steps without the policy's own data. Left out of the JSON when
    /// the default.
    #[serde(skip_serializing_if = "RftData::is_own")]
    pub rft_data: RftData,
    /// What the run is for and what it can and cannot show, in the config's words; the
    /// report prints it first. It may change when a run is resumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub about: Option<String>,
}

/// See [`RunSection::rft_data`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RftData {
    #[default]
    Own,
    WarmStart,
}

impl RftData {
    fn is_own(&self) -> bool {
        *self == RftData::Own
    }
}

/// See [`RunSection::adapters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Adapters {
    #[default]
    FromBase,
    Continue,
}

impl Adapters {
    fn is_from_base(&self) -> bool {
        *self == Adapters::FromBase
    }
}

/// One split: where it came from and the tasks selected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitSection {
    pub split: String,
    pub files: Vec<PathBuf>,
    /// The selected tasks, in order.
    pub instance_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetSection {
    pub train: SplitSection,
    pub test: SplitSection,
    pub env_specs: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SandboxSection {
    pub backend: Backend,
    pub jobs: usize,
    pub memory_gib: f64,
    pub test_timeout_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenAiSection {
    pub base_url: String,
    pub served_model: String,
    pub api_key_env: Option<String>,
    pub request_timeout_s: u64,
    pub max_retries: u32,
    /// Register each new adapter with the server (`POST <base_url>/load_lora_adapter`, vLLM).
    pub load_adapters: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicySection {
    pub kind: PolicyKind,
    /// The base model (GGUF file or HF folder): sampled with (local), trained on, and its
    /// tokenizer counts tokens for the filter.
    pub model: PathBuf,
    #[serde(serialize_with = "display")]
    pub dtype: Dtype,
    /// The local model's KV cache dtype (None: `swegym_lm::auto_kv_dtype`). Left out of
    /// the config hash when unset, so runs started before the key existed resume.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "display_some")]
    pub kv_dtype: Option<swegym_lm::KvDtype>,
    /// The dtype the local model's prefills compute in (None: the weights'; see
    /// `swegym_lm::CausalLm::set_prefill_dtype`). Left out of the config hash when unset.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "display_some")]
    pub prefill_dtype: Option<Dtype>,
    /// What the local model's decoding steps multiply by (None: its own weights; `q8`:
    /// 8-bit copies, see `swegym_lm::CausalLm::set_decode_weights`). Left out of the config
    /// hash when unset.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "display_some")]
    pub weights: Option<swegym_lm::DecodeWeights>,
    pub device: String,
    pub threads: Option<i32>,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: u32,
    /// `[eval] temperature` (kept here: the config's JSON and hash stay as runs wrote them).
    pub eval_temperature: f64,
    pub merge_adapter: bool,
    pub openai: Option<OpenAiSection>,
}

impl PolicySection {
    pub fn device_choice(&self) -> DeviceChoice {
        self.device.parse().expect("validated when the config was read")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentSection {
    pub max_turns: u32,
    /// `[eval] max_turns` (kept here for the hash, as `eval_temperature`).
    pub eval_max_turns: u32,
    pub max_context_tokens: usize,
    pub max_observation_chars: usize,
    pub max_format_errors: u32,
    pub command_timeout_s: u64,
    /// The prompts: openhands (CodeAct, the paper's) or compact (for small models). Left
    /// out of the JSON when openhands (old runs keep their hash).
    #[serde(skip_serializing_if = "is_openhands")]
    pub scaffold: Scaffold,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SamplingSection {
    pub rollouts_per_task: u32,
    /// `[eval] rollouts_per_task` (kept here for the hash, as `eval_temperature`).
    pub eval_rollouts_per_task: u32,
    /// `[eval] best_of_temperature`: with `eval_rollouts_per_task` = k > 1, held-out
    /// rollouts 1..k are sampled at this temperature, rollout 0 at `[eval] temperature`
    /// (the paper: 0.5 and 0). None
    /// when k = 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_of_temperature: Option<f64>,
    /// Which train tasks iteration i ≥ 1 samples: all (default), or `skip_solved` — not those
    /// the policy solved in every rollout the last time they were sampled (they teach
    /// nothing new; their kept rollouts stay in the data). Left out of the JSON when all.
    #[serde(skip_serializing_if = "Curriculum::is_all")]
    pub curriculum: Curriculum,
    /// At most this many train tasks per policy-sampling stage, picked by the curriculum
    /// (solved sometimes when last sampled first, then not sampled yet, then never solved;
    /// `run/curriculum.rs`). None (default, left out of the JSON): every eligible task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks_per_iteration: Option<usize>,
}

/// See [`SamplingSection::curriculum`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Curriculum {
    #[default]
    All,
    SkipSolved,
}

impl Curriculum {
    fn is_all(&self) -> bool {
        *self == Curriculum::All
    }
}

/// The outcome verifier the loop uses (`[verifier]`): a LoRA adapter trained by `swegym
/// verifier train` on a base model, loaded once per scoring stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifierSection {
    /// The adapter folder (PEFT layout).
    pub adapter: PathBuf,
    /// sha256 of `adapter_config.json` + `adapter_model.safetensors`, so a retrained adapter
    /// in the same folder changes the config hash (scores depend on it).
    pub adapter_sha256: String,
    /// The verifier's base model (default: `[policy] model`); loaded with the policy's
    /// dtype, device and threads.
    pub model: PathBuf,
    /// The filter's set rules (dedup, per-task cap) keep the highest-p(YES) rollouts of a
    /// task first (`[filter] prefer` becomes `verifier_score`): the train split is scored.
    pub select_keep: bool,
    /// On the held-out split (k > 1 rollouts per task) the verifier's pick is the task's
    /// submission (Best@k) instead of rollout 0 (Pass@1). With k > 1 the held-out split is
    /// scored and Best@k reported either way.
    pub select_submit: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum WarmStart {
    /// `max_turns`: the oracle's own turn limit (it needs a few turns to view, edit, test
    /// and finish, whatever the policy's limit).
    /// `sample_base = false`: iteration 0 trains on the warm-start data alone (the base
    /// policy samples nothing), so policy_1 is the warm-started policy the RFT iterations
    /// start from.
    /// `train`: iteration 0's trainer settings when `[warm_start.train]` changes any of
    /// [train]'s (e.g. more epochs for the expert data than for an RFT iteration's few kept
    /// rollouts); left out of the JSON when not set.
    Oracle {
        rollouts_per_task: u32,
        max_turns: u32,
        #[serde(skip_serializing_if = "is_true")]
        sample_base: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        train: Option<TrainConfig>,
    },
    Sft {
        path: PathBuf,
        #[serde(skip_serializing_if = "is_true")]
        sample_base: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        train: Option<TrainConfig>,
    },
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_openhands(s: &Scaffold) -> bool {
    *s == Scaffold::OpenHands
}

impl WarmStart {
    /// Whether iteration 0 samples the base policy besides the warm-start data.
    pub fn samples_base(&self) -> bool {
        match self {
            WarmStart::Oracle { sample_base, .. } | WarmStart::Sft { sample_base, .. } => *sample_base,
        }
    }

    /// Iteration 0's own trainer settings, when `[warm_start.train]` set any.
    pub fn train(&self) -> Option<&TrainConfig> {
        match self {
            WarmStart::Oracle { train, .. } | WarmStart::Sft { train, .. } => train.as_ref(),
        }
    }
}

/// A validated run config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunConfig {
    pub run: RunSection,
    pub dataset: DatasetSection,
    pub sandbox: SandboxSection,
    pub policy: PolicySection,
    pub agent: AgentSection,
    pub sampling: SamplingSection,
    pub filter: FilterConfig,
    pub train: TrainConfig,
    pub warm_start: Option<WarmStart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifier: Option<VerifierSection>,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

fn display_some<T: std::fmt::Display, S: serde::Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&v.to_string()),
        None => s.serialize_none(),
    }
}

/// What sampling on one split uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitKind {
    Train,
    Test,
}

impl RunConfig {
    /// The config as JSON (what `config.json` holds and the hash is taken of).
    /// The trainer settings of iteration `i`: `[warm_start.train]` over [train] for
    /// iteration 0 when set, [train] otherwise.
    pub fn train_for(&self, i: u32) -> &TrainConfig {
        match (&self.warm_start, i) {
            (Some(w), 0) => w.train().unwrap_or(&self.train),
            _ => &self.train,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("the config serializes")
    }

    /// sha256 of the resolved config's JSON, hex.
    pub fn hash(&self) -> String {
        let text = serde_json::to_string(&self.to_json()).expect("json");
        let digest = Sha256::digest(text.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The sampling stage's settings for `split` in `iteration`: the train split at the
    /// sampling temperature with `rollouts_per_task`, the test split at `eval_temperature`.
    pub fn sample_config(&self, split: SplitKind, iteration: u32, k: u32) -> SampleConfig {
        let (temperature, max_turns) = match split {
            SplitKind::Train => (self.policy.temperature, self.agent.max_turns),
            SplitKind::Test => (self.policy.eval_temperature, self.agent.eval_max_turns),
        };
        SampleConfig {
            k,
            jobs: self.sandbox.jobs,
            iteration,
            // A different stream per iteration; rollout seeds mix in the task and index.
            seed: self.run.seed.wrapping_add(u64::from(iteration).wrapping_mul(0x9e37_79b9)),
            sampling: SamplingParams {
                temperature,
                top_p: self.policy.top_p,
                max_tokens: self.policy.max_new_tokens,
                ..SamplingParams::default()
            },
            episode: EpisodeConfig {
                max_turns,
                max_observation_chars: self.agent.max_observation_chars,
                max_context_tokens: self.agent.max_context_tokens,
                max_format_errors: self.agent.max_format_errors,
                command_timeout: std::time::Duration::from_secs(self.agent.command_timeout_s),
                scaffold: self.agent.scaffold,
                ..EpisodeConfig::default()
            },
        }
    }
}

// ---------------------------------------------------------------- reading

/// What path expansion needs from the process (read once by the binary).
#[derive(Debug, Clone)]
pub struct PathEnv {
    pub cache_root: PathBuf,
    pub home: PathBuf,
}

/// Reads and validates `path`; `name` (from `--name`) overrides `[run] name`.
pub fn load(path: &Path, name: Option<&str>, env: &PathEnv) -> Result<(RunConfig, String), ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError { file: file.clone(), key: String::new(), problem: format!("cannot read: {e}") })?;
    let raw: RawConfig = toml::from_str(&text)
        .map_err(|e| ConfigError { file: file.clone(), key: String::new(), problem: e.to_string().trim_end().to_string() })?;
    // Absolute, so the resolved config (and its hash) does not depend on the working directory.
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let base = absolute.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    let resolver = Resolver { file: file.clone(), base, env: env.clone() };
    let default_name = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "run".into());
    let config = resolver.resolve(raw, name, &default_name)?;
    Ok((config, text))
}

struct Resolver {
    file: String,
    base: PathBuf,
    env: PathEnv,
}

impl Resolver {
    fn err(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.clone(), key: if key.is_empty() { String::new() } else { format!("{key}: ") }, problem: problem.into() }
    }

    /// `${SWEGYM_CACHE}` and `~/` expanded; relative to the config's folder.
    fn path(&self, key: &str, raw: &str) -> Result<PathBuf, ConfigError> {
        let mut s = raw.replace("${SWEGYM_CACHE}", &self.env.cache_root.to_string_lossy());
        if let Some(rest) = s.strip_prefix("~/") {
            s = self.env.home.join(rest).to_string_lossy().to_string();
        }
        if let Some(start) = s.find("${") {
            let var = s[start..].split('}').next().unwrap_or_default();
            return Err(self.err(key, format!("{raw:?}: unknown variable {var}}} (only ${{SWEGYM_CACHE}} is expanded)")));
        }
        let p = PathBuf::from(s);
        let p = if p.is_absolute() { p } else { self.base.join(p) };
        Ok(normalize(&p))
    }

    fn resolve(&self, mut raw: RawConfig, name: Option<&str>, default_name: &str) -> Result<RunConfig, ConfigError> {
        let eval = self.eval_keys(&mut raw);
        let run = self.run(raw.run.unwrap_or_default(), name, default_name)?;
        let policy = self.policy(raw.policy.ok_or_else(|| self.err("[policy]", "missing (the model to train is required)"))?, &eval)?;
        let dataset = self.dataset(raw.dataset.ok_or_else(|| self.err("[dataset]", "missing"))?, run.seed)?;
        let sandbox = self.sandbox(raw.sandbox.unwrap_or_default())?;
        let agent = self.agent(raw.agent.unwrap_or_default(), &eval)?;
        let sampling = self.sampling(raw.sampling.unwrap_or_default(), &eval)?;
        let mut filter = raw.filter.unwrap_or_default().resolve(&format!("{}: [filter]", self.file)).map_err(|e| ConfigError {
            file: self.file.clone(),
            key: format!("[filter] {}: ", e.key),
            problem: e.problem,
        })?;
        let verifier = match raw.verifier {
            None => None,
            Some(v) => Some(self.verifier(v, &policy, &sampling, &filter)?),
        };
        match &verifier {
            Some(v) if v.select_keep => filter.prefer = Preference::VerifierScore,
            _ if filter.prefer == Preference::VerifierScore => {
                return Err(self.err("[filter] prefer", "\"verifier_score\" needs a verifier: set [verifier] adapter and select_keep = true"));
            }
            _ => {}
        }
        let mut raw_train = raw.train.unwrap_or_default();
        // The trainer's seed follows the run's unless [train] sets its own.
        raw_train.seed = raw_train.seed.or(Some(run.seed));
        let train = raw_train
            .clone()
            .resolve(&format!("[train] of {}", self.file))
            .map_err(|e| ConfigError { file: self.file.clone(), key: String::new(), problem: e.to_string() })?;
        let warm_start = match raw.warm_start {
            None => None,
            Some(w) => Some(self.warm_start(w, &raw_train)?),
        };
        if run.rft_data == RftData::WarmStart && !matches!(warm_start, Some(WarmStart::Oracle { .. })) {
            return Err(self.err("[run] rft_data", "\"warm_start\" needs [warm_start] source = \"oracle\" (its trajectories replace the kept rollouts)"));
        }
        Ok(RunConfig { run, dataset, sandbox, policy, agent, sampling, filter, train, warm_start, verifier })
    }

    /// `[eval]`, with the keys it took over from other sections (`[policy] eval_temperature`,
    /// `[agent] eval_max_turns`, `[sampling] eval_rollouts_per_task` and
    /// `best_of_temperature`) read into it with a warning; where both are set, `[eval]`'s wins.
    fn eval_keys(&self, raw: &mut RawConfig) -> RawEval {
        /// `old` (the key under its old name `from`) into `new` unless `new` is set.
        fn fold<T>(new: &mut Option<T>, old: Option<T>, from: &str, to: &str, moved: &mut Vec<String>) {
            if let Some(v) = old {
                moved.push(format!("{from} is now [eval] {to}"));
                new.get_or_insert(v);
            }
        }
        let mut eval = raw.eval.take().unwrap_or_default();
        let (policy, agent, mut sampling) = (raw.policy.as_mut(), raw.agent.as_mut(), raw.sampling.as_mut());
        let mut moved = Vec::new();
        fold(&mut eval.temperature, policy.and_then(|p| p.eval_temperature.take()), "[policy] eval_temperature", "temperature", &mut moved);
        fold(&mut eval.max_turns, agent.and_then(|a| a.eval_max_turns.take()), "[agent] eval_max_turns", "max_turns", &mut moved);
        let old_k = sampling.as_mut().and_then(|s| s.eval_rollouts_per_task.take());
        fold(&mut eval.rollouts_per_task, old_k, "[sampling] eval_rollouts_per_task", "rollouts_per_task", &mut moved);
        let old_t = sampling.and_then(|s| s.best_of_temperature.take());
        fold(&mut eval.best_of_temperature, old_t, "[sampling] best_of_temperature", "best_of_temperature", &mut moved);
        if !moved.is_empty() {
            tracing::warn!("{}: {} (read as such; move the keys, the old names will go)", self.file, moved.join(", "));
        }
        eval
    }

    fn run(&self, r: RawRun, name: Option<&str>, default_name: &str) -> Result<RunSection, ConfigError> {
        let d = &DEFAULTS.run;
        let name = name.map(str::to_string).or(r.name).unwrap_or_else(|| default_name.to_string());
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(self.err("[run] name", format!("{name:?} is not a folder name")));
        }
        let iterations = r.iterations.unwrap_or(d.iterations);
        if iterations == 0 {
            return Err(self.err("[run] iterations", "must be at least 1"));
        }
        let adapters = match r.adapters.as_deref().unwrap_or(&d.adapters) {
            "from_base" => Adapters::FromBase,
            "continue" => Adapters::Continue,
            other => return Err(self.err("[run] adapters", format!("unknown value {other:?}; one of: from_base, continue"))),
        };
        let rft_data = match r.rft_data.as_deref().unwrap_or(&d.rft_data) {
            "own" => RftData::Own,
            "warm_start" => RftData::WarmStart,
            other => return Err(self.err("[run] rft_data", format!("unknown value {other:?}; one of: own, warm_start"))),
        };
        let about = r.about.map(|a| a.trim().to_string()).filter(|a| !a.is_empty());
        Ok(RunSection { name, iterations, seed: r.seed.unwrap_or(d.seed), adapters, rft_data, about })
    }

    fn sandbox(&self, sb: RawSandbox) -> Result<SandboxSection, ConfigError> {
        let d = &DEFAULTS.sandbox;
        let jobs = sb.jobs.unwrap_or(d.jobs);
        if jobs == 0 {
            return Err(self.err("[sandbox] jobs", "must be at least 1"));
        }
        let memory_gib = sb.memory_gib.unwrap_or(d.memory_gib);
        if memory_gib <= 0.0 {
            return Err(self.err("[sandbox] memory_gib", "must be positive"));
        }
        Ok(SandboxSection { backend: sb.backend.unwrap_or(d.backend), jobs, memory_gib, test_timeout_s: sb.test_timeout_s })
    }

    fn agent(&self, a: RawAgent, eval: &RawEval) -> Result<AgentSection, ConfigError> {
        let d = &DEFAULTS.agent;
        let max_turns = a.max_turns.unwrap_or(d.max_turns);
        let scaffold = a.scaffold.as_deref().unwrap_or(&d.scaffold);
        let agent = AgentSection {
            max_turns,
            eval_max_turns: eval.max_turns.unwrap_or(max_turns),
            max_context_tokens: a.max_context_tokens.unwrap_or(d.max_context_tokens),
            max_observation_chars: a.max_observation_chars.unwrap_or(d.max_observation_chars),
            max_format_errors: a.max_format_errors.unwrap_or(d.max_format_errors).max(1),
            command_timeout_s: a.command_timeout_s.unwrap_or(d.command_timeout_s),
            scaffold: Scaffold::parse(scaffold).ok_or_else(|| self.err("[agent] scaffold", format!("unknown scaffold {scaffold:?}; one of: openhands, compact")))?,
        };
        if agent.max_turns == 0 {
            return Err(self.err("[agent] max_turns", "must be at least 1"));
        }
        if agent.eval_max_turns == 0 {
            return Err(self.err("[eval] max_turns", "must be at least 1"));
        }
        Ok(agent)
    }

    fn sampling(&self, s: RawSampling, eval: &RawEval) -> Result<SamplingSection, ConfigError> {
        let d = (&DEFAULTS.sampling, &DEFAULTS.eval);
        let rollouts_per_task = s.rollouts_per_task.unwrap_or(d.0.rollouts_per_task);
        if rollouts_per_task == 0 {
            return Err(self.err("[sampling] rollouts_per_task", "must be at least 1"));
        }
        let eval_rollouts_per_task = eval.rollouts_per_task.unwrap_or(d.1.rollouts_per_task);
        if eval_rollouts_per_task == 0 {
            return Err(self.err("[eval] rollouts_per_task", "must be at least 1"));
        }
        // Used with k > 1 only (rollout 0 is sampled at [eval] temperature); with k = 1 it is
        // left unset, so a config that writes the default out is the config without it.
        let best_of_temperature = match (eval.best_of_temperature, eval_rollouts_per_task) {
            (_, 1) => None,
            (t, _) => {
                let t = t.unwrap_or(d.1.best_of_temperature);
                if !(0.0..=5.0).contains(&t) {
                    return Err(self.err("[eval] best_of_temperature", format!("{t} is outside [0, 5]")));
                }
                Some(t)
            }
        };
        let curriculum = match s.curriculum.as_deref().unwrap_or(&d.0.curriculum) {
            "all" => Curriculum::All,
            "skip_solved" => Curriculum::SkipSolved,
            other => return Err(self.err("[sampling] curriculum", format!("unknown value {other:?}; one of: all, skip_solved"))),
        };
        if s.tasks_per_iteration == Some(0) {
            return Err(self.err("[sampling] tasks_per_iteration", "must be at least 1 (leave it out to sample every train task)"));
        }
        Ok(SamplingSection { rollouts_per_task, eval_rollouts_per_task, best_of_temperature, curriculum, tasks_per_iteration: s.tasks_per_iteration })
    }

    fn verifier(&self, v: RawVerifier, policy: &PolicySection, sampling: &SamplingSection, filter: &FilterConfig) -> Result<VerifierSection, ConfigError> {
        let raw_adapter = v.adapter.ok_or_else(|| self.err("[verifier] adapter", "missing (the folder `swegym verifier train --out` wrote)"))?;
        let adapter = self.path("[verifier] adapter", &raw_adapter)?;
        if !adapter.is_dir() {
            return Err(self.err("[verifier] adapter", format!("{}: no such folder (train one with `swegym verifier train`)", adapter.display())));
        }
        swegym_lm::lora::read_adapter_config(&adapter).map_err(|e| self.err("[verifier] adapter", e.to_string()))?;
        let weights = adapter.join("adapter_model.safetensors");
        if !weights.is_file() {
            return Err(self.err("[verifier] adapter", format!("{}: no such file (an unfinished training? its folder holds the final adapter only)", weights.display())));
        }
        let mut digest = Sha256::new();
        for f in [adapter.join("adapter_config.json"), weights] {
            let bytes = std::fs::read(&f).map_err(|e| self.err("[verifier] adapter", format!("{}: {e}", f.display())))?;
            digest.update(&bytes);
        }
        let adapter_sha256 = digest.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let model = match v.model {
            None => policy.model.clone(),
            Some(raw) => {
                let model = self.path("[verifier] model", &raw)?;
                if !model.exists() {
                    return Err(self.err("[verifier] model", format!("{}: no such file or folder", model.display())));
                }
                if model.is_dir() && !model.join("config.json").exists() {
                    return Err(self.err("[verifier] model", format!("{}: a folder without config.json (not an HF model folder)", model.display())));
                }
                model
            }
        };
        let (select_keep, select_submit) = (v.select_keep.unwrap_or(DEFAULTS.verifier.select_keep), v.select_submit.unwrap_or(DEFAULTS.verifier.select_submit));
        let k = sampling.eval_rollouts_per_task;
        if select_submit && k < 2 {
            return Err(self.err(
                "[verifier] select_submit",
                format!("needs [eval] rollouts_per_task > 1 to pick from (it is {k}): Best@k picks one of k held-out rollouts per task"),
            ));
        }
        let set_rules = filter.rules.iter().any(|r| matches!(r, FilterRule::DedupPatches | FilterRule::PerInstanceCap { .. }));
        if select_keep && !set_rules {
            return Err(self.err(
                "[verifier] select_keep",
                "the filter keeps every resolved rollout ([filter] max_per_instance = 0 and dedup_patches = false), so there is nothing to choose between",
            ));
        }
        if !select_keep && k < 2 {
            return Err(self.err(
                "[verifier]",
                "nothing to do: set select_keep = true, or [eval] rollouts_per_task > 1 (Best@k is then reported; select_submit = true submits it)",
            ));
        }
        Ok(VerifierSection { adapter, adapter_sha256, model, select_keep, select_submit })
    }

    fn policy(&self, p: RawPolicy, eval: &RawEval) -> Result<PolicySection, ConfigError> {
        let d = &DEFAULTS.policy;
        let kind = p.kind.unwrap_or(d.kind);
        let model = self.model(p.model.as_deref())?;
        let dtypes = self.dtypes(&p)?;
        let device = p.device.clone().unwrap_or_else(|| d.device.clone());
        device.parse::<DeviceChoice>().map_err(|e| self.err("[policy] device", e))?;
        let temperature = p.temperature.unwrap_or(d.temperature);
        let eval_temperature = eval.temperature.unwrap_or(DEFAULTS.eval.temperature);
        for (key, t) in [("[policy] temperature", temperature), ("[eval] temperature", eval_temperature)] {
            if !(0.0..=5.0).contains(&t) {
                return Err(self.err(key, format!("{t} is outside [0, 5]")));
            }
        }
        let top_p = p.top_p.unwrap_or(d.top_p);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(self.err("[policy] top_p", format!("{top_p} is outside (0, 1]")));
        }
        Ok(PolicySection {
            kind,
            model,
            dtype: dtypes.weights,
            kv_dtype: dtypes.kv,
            prefill_dtype: dtypes.prefill,
            weights: dtypes.decode,
            device,
            threads: p.threads,
            temperature,
            top_p,
            max_new_tokens: p.max_new_tokens.unwrap_or(d.max_new_tokens).max(1),
            eval_temperature,
            merge_adapter: p.merge_adapter.unwrap_or(d.merge_adapter),
            openai: self.openai(kind, p)?,
        })
    }

    /// `[policy] model`: a GGUF file or an HF folder that is there.
    fn model(&self, raw: Option<&str>) -> Result<PathBuf, ConfigError> {
        let raw_model = raw.ok_or_else(|| self.err("[policy] model", "missing (a GGUF file or an HF folder)"))?;
        let model = self.path("[policy] model", raw_model)?;
        if !model.exists() {
            let hint = if raw_model.contains("SmolLM2") { " (`make setup` downloads the SmolLM2 GGUF)" } else { "" };
            return Err(self.err("[policy] model", format!("{}: no such file or folder{hint}", model.display())));
        }
        if model.is_dir() && !model.join("config.json").exists() {
            return Err(self.err("[policy] model", format!("{}: a folder without config.json (not an HF model folder)", model.display())));
        }
        Ok(model)
    }

    /// The local model's dtypes (weights, KV cache, prefill, decoding weights), checked together.
    fn dtypes(&self, p: &RawPolicy) -> Result<ModelDtypes, ConfigError> {
        let d = &DEFAULTS.policy;
        let weights = p.dtype.as_deref().unwrap_or(&d.dtype).parse::<Dtype>().map_err(|e| self.err("[policy] dtype", e))?;
        let kv = match p.kv_dtype.as_deref().unwrap_or(&d.kv_dtype) {
            "auto" => None,
            s => Some(s.parse::<swegym_lm::KvDtype>().map_err(|e| self.err("[policy] kv_dtype", format!("{e} (or \"auto\")")))?),
        };
        let prefill = match p.prefill_dtype.as_deref() {
            None => None,
            Some(s) => Some(s.parse::<Dtype>().map_err(|e| self.err("[policy] prefill_dtype", e))?),
        };
        let decode = match p.weights.as_deref() {
            None => None,
            Some(s) => Some(s.parse::<swegym_lm::DecodeWeights>().map_err(|e| self.err("[policy] weights", e))?),
        };
        let dtypes = ModelDtypes { weights, kv, prefill, decode };
        dtypes.check_prefill().map_err(|e| self.err("[policy] prefill_dtype", e))?;
        dtypes.check_decode().map_err(|e| self.err("[policy] weights", e))?;
        Ok(dtypes)
    }

    /// The server's settings with `kind = "openai"` (its keys are refused with `local`).
    fn openai(&self, kind: PolicyKind, p: RawPolicy) -> Result<Option<OpenAiSection>, ConfigError> {
        let d = &DEFAULTS.policy;
        match kind {
            PolicyKind::Local => {
                for (key, set) in [("base_url", p.base_url.is_some()), ("served_model", p.served_model.is_some()), ("api_key_env", p.api_key_env.is_some())] {
                    if set {
                        return Err(self.err(&format!("[policy] {key}"), "only for kind = \"openai\""));
                    }
                }
                Ok(None)
            }
            PolicyKind::Openai => Ok(Some(OpenAiSection {
                base_url: p.base_url.ok_or_else(|| self.err("[policy] base_url", "missing (kind = \"openai\" needs the server's /v1 URL)"))?,
                served_model: p.served_model.ok_or_else(|| self.err("[policy] served_model", "missing (the base model's name on the server)"))?,
                api_key_env: p.api_key_env,
                request_timeout_s: p.request_timeout_s.unwrap_or(d.request_timeout_s),
                max_retries: p.max_retries.unwrap_or(d.max_retries),
                load_adapters: p.load_adapters.unwrap_or(d.load_adapters),
            })),
        }
    }

    fn dataset(&self, d: RawDataset, seed: u64) -> Result<DatasetSection, ConfigError> {
        let select = d.select.unwrap_or(DEFAULTS.dataset.select);
        let train = self.split("train", d.train.ok_or_else(|| self.err("[dataset.train]", "missing"))?, select, seed)?;
        let test = self.split("test", d.test.ok_or_else(|| self.err("[dataset.test]", "missing"))?, select, seed)?;
        let mut env_specs = Vec::new();
        for raw in d.env_specs.unwrap_or_else(|| DEFAULTS.dataset.env_specs.clone()) {
            let p = self.path("[dataset] env_specs", &raw)?;
            if !p.is_file() {
                return Err(self.err("[dataset] env_specs", format!("{}: no such file", p.display())));
            }
            env_specs.push(p);
        }
        Ok(DatasetSection { train, test, env_specs })
    }

    fn split(&self, which: &str, s: RawSplit, select: Select, seed: u64) -> Result<SplitSection, ConfigError> {
        let table = format!("[dataset.{which}]");
        let raw_path = s.path.ok_or_else(|| self.err(&format!("{table} path"), "missing (a dataset folder or a task file)"))?;
        let path = self.path(&format!("{table} path"), &raw_path)?;
        let files = if path.is_file() {
            if let Some(split) = &s.split {
                return Err(self.err(&format!("{table} split"), format!("{split:?} given, but path {} is a file (the file is the split)", path.display())));
            }
            vec![path.clone()]
        } else if path.is_dir() {
            let split = s.split.clone().unwrap_or_else(|| which.to_string());
            swegym_schema::dataset_dir::split_files(&path, &split).map_err(|problem| self.err(&format!("{table} split"), problem))?
        } else {
            return Err(self.err(&format!("{table} path"), format!("{}: no such file or folder", path.display())));
        };
        let mut tasks: Vec<Task> = Vec::new();
        for f in &files {
            let load = swegym_schema::load_tasks(f).map_err(|e| self.err(&format!("{table} path"), e.to_string()))?;
            for e in &load.errors {
                tracing::warn!(%e, "skipping a bad task row");
            }
            tasks.extend(load.tasks);
        }
        if tasks.is_empty() {
            return Err(self.err(&format!("{table} path"), format!("{}: no task could be read", files[0].display())));
        }
        if s.tiers.is_some() || s.kinds.is_some() {
            self.keep_by_difficulty(&table, &files, s.tiers.as_deref(), s.kinds.as_deref(), &mut tasks)?;
        }
        let ids = s.ids.unwrap_or_default();
        if !ids.is_empty() {
            let known: std::collections::HashSet<&str> = tasks.iter().map(|t| t.instance_id.as_str()).collect();
            if let Some(missing) = ids.iter().find(|id| !known.contains(id.as_str())) {
                return Err(self.err(&format!("{table} ids"), format!("{missing} is not in {}", files[0].display())));
            }
            tasks.retain(|t| ids.contains(&t.instance_id));
        }
        if let Some(limit) = s.limit {
            if limit == 0 {
                return Err(self.err(&format!("{table} limit"), "must be at least 1 (leave it out for all tasks)"));
            }
            if select == Select::Random {
                shuffle(&mut tasks, seed);
            }
            tasks.truncate(limit);
        }
        Ok(SplitSection {
            split: s.split.unwrap_or_else(|| files[0].file_stem().map(|x| x.to_string_lossy().to_string()).unwrap_or_default()),
            files,
            instance_ids: tasks.into_iter().map(|t| t.instance_id).collect(),
        })
    }

    /// Keeps the tasks whose tier and mutation kind the split's `tiers` / `kinds` name, as
    /// the dataset's synth manifest (beside the split file) records them.
    fn keep_by_difficulty(&self, table: &str, files: &[PathBuf], tiers: Option<&[String]>, kinds: Option<&[String]>, tasks: &mut Vec<Task>) -> Result<(), ConfigError> {
        use swegym_synth::tier::{Manifest, Tier, MANIFEST_FILE};
        let tiers = match tiers {
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| Tier::parse(n).ok_or_else(|| self.err(&format!("{table} tiers"), format!("unknown tier {n:?}; one of: easy, medium, hard"))))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let kinds = match kinds {
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| swegym_synth::MutationKind::parse(n).ok_or_else(|| self.err(&format!("{table} kinds"), format!("unknown mutation kind {n:?}"))))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let dir = files[0].parent().unwrap_or(std::path::Path::new("."));
        let manifest = Manifest::in_folder(dir)
            .map_err(|e| self.err(&format!("{table} tiers"), e))?
            .ok_or_else(|| self.err(&format!("{table} tiers"), format!("selecting by tier or kind needs the dataset's {MANIFEST_FILE} in {} (written by `swegym synth`)", dir.display())))?;
        tasks.retain(|t| {
            let Some(row) = manifest.get(&t.instance_id) else { return false };
            let d = manifest.difficulty(&t.instance_id, &t.patch, &t.problem_statement).expect("row present");
            tiers.as_ref().is_none_or(|ts| ts.contains(&d.tier)) && kinds.as_ref().is_none_or(|ks| ks.contains(&row.kind))
        });
        if tasks.is_empty() {
            return Err(self.err(&format!("{table} tiers"), "no task of the split has the tiers and kinds asked for (see `swegym dataset stats`)"));
        }
        Ok(())
    }

    fn warm_start(&self, w: RawWarmStart, base_train: &RawTrainConfig) -> Result<WarmStart, ConfigError> {
        // [warm_start.train] over [train]: iteration 0's trainer settings.
        if let Some(over) = &w.train {
            if over.lora_r.is_some() || over.lora_alpha.is_some() || over.target_modules.is_some() {
                return Err(self.err(
                    "[warm_start.train]",
                    "lora_r, lora_alpha and target_modules are the adapter's shape, the same in every iteration: set them in [train]",
                ));
            }
        }
        let train = match w.train {
            None => None,
            Some(over) => Some(
                base_train
                    .clone()
                    .overlaid_by(over)
                    .resolve(&format!("[warm_start.train] of {}", self.file))
                    .map_err(|e| ConfigError { file: self.file.clone(), key: String::new(), problem: e.to_string() })?,
            ),
        };
        match w.source {
            None => Err(self.err("[warm_start] source", "missing (\"oracle\" or \"sft\")")),
            Some(WarmStartSource::Oracle) => {
                if w.path.is_some() {
                    return Err(self.err("[warm_start] path", "only for source = \"sft\""));
                }
                let k = w.rollouts_per_task.unwrap_or(DEFAULTS.warm_start.rollouts_per_task);
                if k == 0 {
                    return Err(self.err("[warm_start] rollouts_per_task", "must be at least 1"));
                }
                let max_turns = w.max_turns.unwrap_or(DEFAULTS.warm_start.max_turns);
                if max_turns == 0 {
                    return Err(self.err("[warm_start] max_turns", "must be at least 1"));
                }
                Ok(WarmStart::Oracle { rollouts_per_task: k, max_turns, sample_base: w.sample_base.unwrap_or(DEFAULTS.warm_start.sample_base), train })
            }
            Some(WarmStartSource::Sft) => {
                if w.rollouts_per_task.is_some() || w.max_turns.is_some() {
                    return Err(self.err("[warm_start] rollouts_per_task / max_turns", "only for source = \"oracle\""));
                }
                let raw = w.path.ok_or_else(|| self.err("[warm_start] path", "missing (an SFT Parquet or JSONL file)"))?;
                let path = self.path("[warm_start] path", &raw)?;
                if !path.is_file() {
                    return Err(self.err("[warm_start] path", format!("{}: no such file", path.display())));
                }
                swegym_schema::read_sft(&path).map_err(|e| self.err("[warm_start] path", e.to_string()))?;
                Ok(WarmStart::Sft { path, sample_base: w.sample_base.unwrap_or(DEFAULTS.warm_start.sample_base), train })
            }
        }
    }
}

/// A seeded Fisher-Yates shuffle (splitmix64), stable across platforms.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed ^ 0x5eed_5eed_5eed_5eed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// `a/./b/../c` → `a/c` (lexically; the path need not exist).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(dir: &Path) -> PathEnv {
        PathEnv { cache_root: dir.join("cache"), home: dir.join("home") }
    }

    /// A folder with a model file, a dataset with train/test splits, and a config.
    fn fixture(config: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache/models")).unwrap();
        std::fs::write(dir.path().join("cache/models/m.gguf"), b"GGUF").unwrap();
        let ds = dir.path().join("data");
        std::fs::create_dir_all(&ds).unwrap();
        let task = |id: &str| {
            serde_json::json!({"instance_id": id, "repo": "o/r", "base_commit": "abc", "patch": "", "test_patch": "",
                "FAIL_TO_PASS": ["t1"], "PASS_TO_PASS": [], "version": "1.0"})
            .to_string()
        };
        std::fs::write(ds.join("train.jsonl"), [task("a-1"), task("a-2"), task("a-3")].join("\n")).unwrap();
        std::fs::write(ds.join("test.jsonl"), task("b-1")).unwrap();
        std::fs::write(ds.join("synth_manifest.jsonl"), "").unwrap();
        // a verifier adapter folder (only its files are checked here)
        std::fs::create_dir_all(dir.path().join("verifier")).unwrap();
        let peft = r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}"#;
        std::fs::write(dir.path().join("verifier/adapter_config.json"), peft).unwrap();
        std::fs::write(dir.path().join("verifier/adapter_model.safetensors"), b"weights").unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, config).unwrap();
        (dir, cfg)
    }

    const GOOD: &str = r#"
[run]
iterations = 3
seed = 7
[dataset.train]
path = "data"
limit = 2
[dataset.test]
path = "data/test.jsonl"
[policy]
model = "${SWEGYM_CACHE}/models/m.gguf"
[train]
max_steps = 2
"#;

    /// The config `fixture` needs, from the reference: its required keys filled in, the
    /// optional sections ([warm_start], [verifier]) left out.
    fn reference_as_a_config() -> String {
        let mut text = String::new();
        let mut skip = false;
        for line in REFERENCE.lines() {
            if line.starts_with('[') {
                skip = line.starts_with("[warm_start]") || line.starts_with("[verifier]");
            }
            if !skip {
                text.push_str(line);
                text.push('\n');
            }
        }
        text.replace("# path = \"../datasets/synth-pypi-easy\"", "path = \"data\"")
            .replace("# model = \"${SWEGYM_CACHE}/models/SmolLM2-135M-Instruct.Q4_1.gguf\"", "model = \"${SWEGYM_CACHE}/models/m.gguf\"")
    }

    #[test]
    fn the_reference_config_is_what_an_empty_config_gets() {
        // It parses into the defaults' structs (every key a default is read from is there,
        // with no stray key: deny_unknown_fields both ways).
        let d: Defaults = toml::from_str(REFERENCE).unwrap();
        assert!(d.dataset.train.is_empty() && d.dataset.test.is_empty(), "[dataset.train|test] have no defaults");
        // The stages' own defaults: the reference writes them as they are.
        assert_eq!(d.filter.clone().resolve("ref").unwrap(), RawFilterConfig::default().resolve("ref").unwrap());
        assert_eq!(d.train.clone().resolve("ref").unwrap(), RawTrainConfig::default().resolve("ref").unwrap());
        let e = EpisodeConfig::default();
        let a = &d.agent;
        assert_eq!(
            (a.max_turns, a.max_context_tokens, a.max_observation_chars, a.max_format_errors, a.command_timeout_s, Scaffold::parse(&a.scaffold)),
            (e.max_turns, e.max_context_tokens, e.max_observation_chars, e.max_format_errors, e.command_timeout.as_secs(), Some(e.scaffold))
        );
        // The reference, required keys filled in, resolves exactly as a config of the
        // required keys alone: same config, same hash.
        let minimal = "[dataset.train]\npath = \"data\"\n[dataset.test]\npath = \"data\"\n[policy]\nmodel = \"${SWEGYM_CACHE}/models/m.gguf\"\n";
        let (dir, cfg) = fixture(minimal);
        let (empty, _) = load(&cfg, Some("r"), &env(dir.path())).unwrap();
        std::fs::write(&cfg, reference_as_a_config()).unwrap();
        let (full, _) = load(&cfg, Some("r"), &env(dir.path())).unwrap();
        assert_eq!(full, empty);
        assert_eq!(full.hash(), empty.hash());
    }

    #[test]
    fn the_reference_config_names_every_key() {
        // Every `# key = value` line uncommented: each is a key the config reads.
        let uncommented: String = REFERENCE
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.split_once(" = ").is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) => rest.to_string(),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let raw: Result<RawConfig, _> = toml::from_str(&uncommented);
        assert!(raw.is_ok(), "{}", raw.unwrap_err());
        // Every key the config reads is in the reference, in its section (serde names the
        // known keys when it meets an unknown one).
        for section in ["run", "dataset", "dataset.train", "sandbox", "policy", "agent", "sampling", "eval", "filter", "train", "warm_start", "verifier"] {
            let probe = format!("[{section}]\nnot_a_key = 1\n");
            let err = toml::from_str::<RawConfig>(&probe).unwrap_err().to_string();
            let expected = err.split("expected one of").nth(1).unwrap_or_else(|| panic!("{section}: {err}"));
            let header = format!("[{section}]\n");
            let body = uncommented.split(&header).nth(1).unwrap_or_else(|| panic!("no [{section}] in the reference"));
            let body = body.split("\n[").next().unwrap();
            for key in expected.split(',').map(|k| k.trim().trim_matches('`')).filter(|k| !k.is_empty()) {
                let old_name = matches!(key, "eval_temperature" | "eval_max_turns" | "eval_rollouts_per_task") || section == "sampling" && key == "best_of_temperature";
                let table = matches!((section, key), ("dataset", "train" | "test") | ("warm_start", "train"));
                if !old_name && !table {
                    assert!(body.lines().any(|l| l.starts_with(&format!("{key} = "))), "[{section}] {key} is not in configs/reference.toml");
                }
            }
        }
    }

    #[test]
    fn shipped_configs_use_the_eval_section() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") || path.ends_with("reference.toml") {
                continue;
            }
            let raw: RawConfig = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let old = raw.policy.as_ref().is_some_and(|p| p.eval_temperature.is_some())
                || raw.agent.as_ref().is_some_and(|a| a.eval_max_turns.is_some())
                || raw.sampling.as_ref().is_some_and(|s| s.eval_rollouts_per_task.is_some() || s.best_of_temperature.is_some());
            assert!(!old, "{}: an [eval] key under its old name", path.display());
        }
    }

    #[test]
    fn eval_keys_under_their_old_names_resolve_the_same() {
        let old = format!("{GOOD}[agent]\neval_max_turns = 5\n[sampling]\neval_rollouts_per_task = 3\nbest_of_temperature = 0.7\n");
        let old = old.replace("[policy]\n", "[policy]\neval_temperature = 0.2\n");
        let new = format!("{GOOD}[eval]\ntemperature = 0.2\nmax_turns = 5\nrollouts_per_task = 3\nbest_of_temperature = 0.7\n");
        let (dir, cfg) = fixture(&old);
        let (a, _) = load(&cfg, None, &env(dir.path())).unwrap();
        std::fs::write(&cfg, new).unwrap();
        let (b, _) = load(&cfg, None, &env(dir.path())).unwrap();
        assert_eq!((a.policy.eval_temperature, a.agent.eval_max_turns, a.sampling.eval_rollouts_per_task, a.sampling.best_of_temperature), (0.2, 5, 3, Some(0.7)));
        assert_eq!(a, b);
        assert_eq!(a.hash(), b.hash(), "moving the keys to [eval] keeps a run's config hash");
        // best_of_temperature with one held-out rollout per task: unused, so unset.
        std::fs::write(&cfg, GOOD).unwrap();
        let (plain, _) = load(&cfg, None, &env(dir.path())).unwrap();
        std::fs::write(&cfg, format!("{GOOD}[eval]\nbest_of_temperature = 0.9\n")).unwrap();
        let (unused, _) = load(&cfg, None, &env(dir.path())).unwrap();
        assert_eq!((unused.sampling.best_of_temperature, unused.hash()), (None, plain.hash()));
    }

    #[test]
    fn resolves_defaults_paths_and_selection() {
        let (dir, cfg) = fixture(GOOD);
        let (c, _) = load(&cfg, None, &env(dir.path())).unwrap();
        assert_eq!(c.run, RunSection { name: "c".into(), iterations: 3, seed: 7, adapters: Adapters::FromBase, rft_data: RftData::Own, about: None });
        assert_eq!(c.dataset.train.instance_ids, ["a-1", "a-2"]);
        assert_eq!(c.dataset.train.split, "train");
        assert_eq!(c.dataset.test.instance_ids, ["b-1"]);
        assert_eq!(c.dataset.test.split, "test");
        assert_eq!(c.policy.model, dir.path().join("cache/models/m.gguf"));
        assert_eq!(c.train.seed, 7, "the trainer's seed follows the run's");
        assert_eq!(c.train.max_steps, Some(2));
        assert_eq!(c.filter, FilterConfig::default());
        assert_eq!((c.policy.temperature, c.policy.eval_temperature), (1.0, 0.0));
        let s = c.sample_config(SplitKind::Test, 1, 1);
        assert_eq!(s.sampling.temperature, 0.0);
        // Same config, same hash; --name changes it.
        let (again, _) = load(&cfg, None, &env(dir.path())).unwrap();
        assert_eq!(c.hash(), again.hash());
        let (named, _) = load(&cfg, Some("other"), &env(dir.path())).unwrap();
        assert_eq!(named.run.name, "other");
        assert_ne!(named.hash(), c.hash());
        // sections added later are absent from the JSON when unset (old runs keep their hash)
        let json = c.to_json();
        assert!(json.get("verifier").is_none() && json["sampling"].get("best_of_temperature").is_none(), "{json}");
        assert!(c.policy.kv_dtype.is_none() && json["policy"].get("kv_dtype").is_none(), "{json}");
        assert!(c.policy.prefill_dtype.is_none() && json["policy"].get("prefill_dtype").is_none(), "{json}");
    }

    #[test]
    fn tiers_kinds_scaffold_and_a_warm_start_without_base_sampling() {
        let (dir, cfg) = fixture(&GOOD.replace("limit = 2\n", "tiers = [\"easy\"]\n").replace("[train]", "[agent]\nscaffold = \"compact\"\n[warm_start]\nsource = \"oracle\"\nsample_base = false\n[train]"));
        let row = |id: &str, kind: &str, tier: Option<&str>| {
            let mut v = serde_json::json!({"instance_id": id, "repo": "o/r", "split": "train", "kind": kind, "file": "p/m.py", "function": "f", "line": 3, "fail_to_pass": 1, "pass_to_pass": 1});
            if let Some(t) = tier {
                v["difficulty"] = serde_json::json!({"lines_changed": 1, "files_changed": 1, "statement_shows_line": t == "easy", "statement_chars": 10, "tier": t});
            }
            v.to_string()
        };
        let manifest = [row("a-1", "misspelled_name", Some("medium")), row("a-2", "misspelled_name", Some("easy")), row("a-3", "wrong_return", None)].join("\n");
        std::fs::write(dir.path().join("data/synth_manifest.jsonl"), &manifest).unwrap();
        let (c, _) = load(&cfg, None, &env(dir.path())).unwrap();
        assert_eq!(c.dataset.train.instance_ids, ["a-2"]);
        assert_eq!(c.agent.scaffold, Scaffold::Compact);
        assert_eq!(c.sample_config(SplitKind::Train, 0, 1).episode.scaffold, Scaffold::Compact);
        assert!(!c.warm_start.as_ref().unwrap().samples_base());
        // a-3 has no difficulty written: measured from its row (no patch: not one line → hard).
        let (dir2, cfg2) = fixture(&GOOD.replace("limit = 2\n", "tiers = [\"hard\"]\nkinds = [\"wrong_return\"]\n"));
        std::fs::write(dir2.path().join("data/synth_manifest.jsonl"), &manifest).unwrap();
        assert_eq!(load(&cfg2, None, &env(dir2.path())).unwrap().0.dataset.train.instance_ids, ["a-3"]);
    }

    #[test]
    fn tiers_kinds_scaffold_and_loop_choices_name_a_bad_value() {
        for (text, want) in [
            (GOOD.replace("limit = 2\n", "tiers = [\"trivial\"]\n"), "[dataset.train] tiers: unknown tier \"trivial\""),
            (GOOD.replace("limit = 2\n", "kinds = [\"typo\"]\n"), "[dataset.train] kinds: unknown mutation kind \"typo\""),
            (GOOD.replace("limit = 2\n", "tiers = [\"easy\"]\n"), "no task of the split has the tiers and kinds"),
            (GOOD.replace("[train]", "[agent]\nscaffold = \"tiny\"\n[train]"), "[agent] scaffold: unknown scaffold \"tiny\""),
            (GOOD.replace("seed = 7", "seed = 7\nadapters = \"stack\""), "[run] adapters: unknown value \"stack\""),
            (GOOD.replace("seed = 7", "seed = 7\nrft_data = \"oracle\""), "[run] rft_data: unknown value \"oracle\""),
            (GOOD.replace("seed = 7", "seed = 7\nrft_data = \"warm_start\""), "[run] rft_data: \"warm_start\" needs [warm_start] source = \"oracle\""),
            (GOOD.replace("[train]", "[sampling]\ncurriculum = \"hardest\"\n[train]"), "[sampling] curriculum: unknown value \"hardest\""),
            (GOOD.replace("[train]", "[sampling]\ntasks_per_iteration = 0\n[train]"), "[sampling] tasks_per_iteration: must be at least 1"),
        ] {
            let (dir, cfg) = fixture(&text);
            let err = load(&cfg, None, &env(dir.path())).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn loop_choices_left_at_their_defaults_leave_the_json_as_it_was() {
        // The defaults leave the JSON (and so old runs' hashes) as they were.
        let (dir, cfg) = fixture(&format!("{GOOD}[warm_start]\nsource = \"oracle\"\n"));
        let json = load(&cfg, None, &env(dir.path())).unwrap().0.to_json();
        assert!(json["agent"].get("scaffold").is_none() && json["warm_start"]["source"] == "oracle" && json["warm_start"].get("sample_base").is_none(), "{json}");
        assert!(json["run"].get("adapters").is_none() && json["run"].get("rft_data").is_none() && json["sampling"].get("curriculum").is_none(), "{json}");
        assert!(json["sampling"].get("tasks_per_iteration").is_none(), "{json}");
        let (dir, cfg) = fixture(&GOOD.replace("[train]", "[sampling]\ncurriculum = \"skip_solved\"\n[train]"));
        assert_eq!(load(&cfg, None, &env(dir.path())).unwrap().0.sampling.curriculum, Curriculum::SkipSolved);
        let (dir, cfg) = fixture(&GOOD.replace("seed = 7", "seed = 7\nadapters = \"continue\""));
        assert_eq!(load(&cfg, None, &env(dir.path())).unwrap().0.run.adapters, Adapters::Continue);
        let (dir, cfg) = fixture(&format!("{}[warm_start]\nsource = \"oracle\"\n", GOOD.replace("seed = 7", "seed = 7\nrft_data = \"warm_start\"")));
        let c = load(&cfg, None, &env(dir.path())).unwrap().0;
        assert_eq!(c.run.rft_data, RftData::WarmStart);
        assert_eq!(c.to_json()["run"]["rft_data"], "warm_start");
        let (dir, cfg) = fixture(&GOOD.replace("seed = 7", "seed = 7\nabout = \"\"\"\n  What it shows.\n\"\"\""));
        let c = load(&cfg, None, &env(dir.path())).unwrap().0;
        assert_eq!((c.run.about.as_deref(), &c.to_json()["run"]["about"]), (Some("What it shows."), &serde_json::json!("What it shows.")));
        let (dir, cfg) = fixture(GOOD);
        let c = load(&cfg, None, &env(dir.path())).unwrap().0;
        assert!(c.to_json()["run"].get("about").is_none(), "left out when not set");
        assert_eq!(c.train_for(0), &c.train, "no [warm_start.train]: [train] everywhere");
    }

    #[test]
    fn warm_start_train_is_iteration_zeros_trainer_over_train() {
        // [warm_start.train]: iteration 0's trainer settings over [train]; the rest keep [train].
        let (dir, cfg) = fixture(&format!("{GOOD}[warm_start]\nsource = \"oracle\"\n[warm_start.train]\nepochs = 2.0\nwarmup_steps = 1\n"));
        let c = load(&cfg, None, &env(dir.path())).unwrap().0;
        let (zero, one) = (c.train_for(0), c.train_for(1));
        assert_eq!((zero.epochs, zero.warmup_steps), (2.0, 1));
        assert_eq!((one.epochs, one.warmup_steps), (c.train.epochs, c.train.warmup_steps));
        assert_eq!((zero.learning_rate, zero.lora.r, zero.seed), (one.learning_rate, one.lora.r, one.seed), "the rest from [train]");
        assert_eq!(c.to_json()["warm_start"]["train"]["epochs"], 2.0);
        let (dir, cfg) = fixture(&format!("{GOOD}[warm_start]\nsource = \"oracle\"\n[warm_start.train]\nlora_r = 4\n"));
        let e = load(&cfg, None, &env(dir.path())).unwrap_err().to_string();
        assert!(e.contains("[warm_start.train]") && e.contains("adapter's shape"), "{e}");
        let (dir, cfg) = fixture(&format!("{GOOD}[warm_start]\nsource = \"oracle\"\n[warm_start.train]\nepochs = 0.0\n"));
        let e = load(&cfg, None, &env(dir.path())).unwrap_err().to_string();
        assert!(e.contains("[warm_start.train]") && e.contains("epochs"), "{e}");
    }

    #[test]
    fn prefill_dtype_is_the_weights_unless_set() {
        let (dir, cfg) = fixture(&GOOD.replace("[policy]\n", "[policy]\nprefill_dtype = \"bf16\"\n"));
        let (c, _) = load(&cfg, None, &env(dir.path())).unwrap();
        assert_eq!(c.policy.prefill_dtype, Some(Dtype::Bf16));
        assert_eq!(c.to_json()["policy"]["prefill_dtype"], "bf16");
        for bad in ["fp8", "f16"] {
            let (dir, cfg) = fixture(&GOOD.replace("[policy]\n", &format!("[policy]\nprefill_dtype = \"{bad}\"\n")));
            let err = load(&cfg, None, &env(dir.path())).unwrap_err().to_string();
            assert!(err.contains("[policy] prefill_dtype"), "{err}");
        }
    }

    #[test]
    fn decoding_weights_are_the_models_own_unless_set() {
        let (dir, cfg) = fixture(GOOD);
        let (c, _) = load(&cfg, None, &env(dir.path())).unwrap();
        assert!(c.policy.weights.is_none() && c.to_json()["policy"].get("weights").is_none(), "unset: out of the config hash");
        let (dir, cfg) = fixture(&GOOD.replace("[policy]\n", "[policy]\nweights = \"q8\"\n"));
        let (c, _) = load(&cfg, None, &env(dir.path())).unwrap();
        assert_eq!(c.policy.weights, Some(swegym_lm::DecodeWeights::Q8));
        assert_eq!(c.to_json()["policy"]["weights"], "q8");
        for (lines, says) in [("weights = \"q4\"\n", "expected f32 or q8"), ("weights = \"q8\"\ndtype = \"bf16\"\n", "made from f32 weights")] {
            let (dir, cfg) = fixture(&GOOD.replace("[policy]\n", &format!("[policy]\n{lines}")));
            let err = load(&cfg, None, &env(dir.path())).unwrap_err().to_string();
            assert!(err.contains("[policy] weights") && err.contains(says), "{err}");
        }
    }

    #[test]
    fn kv_dtype_is_auto_unless_set() {
        for (line, want) in [("kv_dtype = \"auto\"\n", None), ("kv_dtype = \"bf16\"\n", Some(swegym_lm::KvDtype::Bf16)), ("kv_dtype = \"q8\"\n", Some(swegym_lm::KvDtype::Q8))] {
            let (dir, cfg) = fixture(&GOOD.replace("[policy]\n", &format!("[policy]\n{line}")));
            let (c, _) = load(&cfg, None, &env(dir.path())).unwrap();
            assert_eq!(c.policy.kv_dtype, want, "{line}");
        }
    }

    #[test]
    fn verifier_section_resolves_and_changes_the_hash() {
        let (dir, cfg) = fixture(GOOD);
        let (plain, _) = load(&cfg, None, &env(dir.path())).unwrap();
        let text = format!("{GOOD}[sampling]\neval_rollouts_per_task = 4\n[verifier]\nadapter = \"verifier\"\nselect_keep = true\nselect_submit = true\n");
        std::fs::write(&cfg, &text).unwrap();
        let (c, _) = load(&cfg, None, &env(dir.path())).unwrap();
        let v = c.verifier.clone().unwrap();
        assert_eq!(v.adapter, dir.path().join("verifier"));
        assert_eq!(v.model, c.policy.model, "the verifier's base defaults to the policy's");
        assert!(v.select_keep && v.select_submit);
        assert_eq!(v.adapter_sha256.len(), 64);
        assert_eq!(c.filter.prefer, Preference::VerifierScore, "select_keep orders the filter's set rules by p(YES)");
        assert_eq!(c.sampling.best_of_temperature, Some(0.5), "the paper's temperature for rollouts 1..k");
        assert_ne!(c.hash(), plain.hash());
        // a retrained adapter in the same folder is another config
        std::fs::write(dir.path().join("verifier/adapter_model.safetensors"), b"other weights").unwrap();
        let (retrained, _) = load(&cfg, None, &env(dir.path())).unwrap();
        assert_ne!(retrained.hash(), c.hash());
        // k > 1 alone: scored and reported, rollout 0 submitted
        std::fs::write(&cfg, text.replace("select_keep = true\nselect_submit = true\n", "")).unwrap();
        let (report_only, _) = load(&cfg, None, &env(dir.path())).unwrap();
        let v = report_only.verifier.unwrap();
        assert!(!v.select_keep && !v.select_submit);
        assert_eq!(report_only.filter.prefer, Preference::FewerTurns);
    }

    /// (config text, fragment the error must contain)
    #[test]
    fn bad_configs_name_the_key_or_path() {
        let cases: &[(&str, &str)] = &[
            ("[run]\nitrations = 2\n", "unknown field `itrations`"),
            (&GOOD.replace("[train]\n", "[train]\nlearning_rat = 1.0\n"), "unknown field `learning_rat`"),
            (&GOOD.replace("[policy]\n", "[policy]\ntemp = 1.0\n"), "unknown field `temp`"),
            (&GOOD.replace("m.gguf", "missing.gguf"), "[policy] model: "),
            (&GOOD.replace("path = \"data\"\n", "path = \"data\"\nsplit = \"validation\"\n"), "has no split \"validation\""),
            (&GOOD.replace("path = \"data\"\n", "path = \"nowhere\"\n"), "[dataset.train] path: "),
            (&GOOD.replace("limit = 2", "ids = [\"zzz\"]"), "[dataset.train] ids: zzz is not in"),
            (&GOOD.replace("max_steps = 2", "lora_r = 0"), "lora_r"),
            (&GOOD.replace("[train]", "[filter]\nmax_tokens = 3\n[train]"), "[filter] max_tokens"),
            (&format!("{GOOD}[warm_start]\nsource = \"sft\"\npath = \"none.parquet\"\n"), "[warm_start] path: "),
            (&GOOD.replace("${SWEGYM_CACHE}", "${NOPE}"), "unknown variable ${NOPE}"),
            (&GOOD.replace("seed = 7", "seed = 7\nname = \"a/b\""), "[run] name"),
            (&format!("{GOOD}[verifier]\nadapter = \"nowhere\"\nselect_keep = true\n"), "[verifier] adapter: "),
            (&format!("{GOOD}[verifier]\nselect_keep = true\n"), "[verifier] adapter: missing"),
            (&format!("{GOOD}[verifier]\nadapter = \"data\"\nselect_keep = true\n"), "[verifier] adapter: "),
            (&format!("{GOOD}[verifier]\nadapter = \"verifier\"\nselect_submit = true\n"), "[verifier] select_submit: needs [eval] rollouts_per_task > 1"),
            (&format!("{GOOD}[verifier]\nadapter = \"verifier\"\n"), "[verifier]: nothing to do"),
            (&format!("{GOOD}[verifier]\nadapter = \"verifier\"\nselect_keep = true\nmodel = \"none.gguf\"\n"), "[verifier] model: "),
            (&format!("{GOOD}[verifier]\nadapter = \"verifier\"\nselect_keep = true\nselect_best = true\n"), "unknown field `select_best`"),
            (
                &format!("{GOOD}[filter]\nmax_per_instance = 0\ndedup_patches = false\n[verifier]\nadapter = \"verifier\"\nselect_keep = true\n"),
                "[verifier] select_keep: the filter keeps every resolved rollout",
            ),
            (&format!("{GOOD}[filter]\nprefer = \"verifier_score\"\n"), "[filter] prefer: "),
            (&GOOD.replace("[policy]\n", "[policy]\nkv_dtype = \"f8\"\n"), "[policy] kv_dtype: unknown dtype \"f8\""),
        ];
        for (text, want) in cases {
            let (dir, cfg) = fixture(text);
            let err = load(&cfg, None, &env(dir.path())).unwrap_err().to_string();
            assert!(err.contains(want), "config:\n{text}\nerror {err:?} lacks {want:?}");
            assert!(err.contains("c.toml"), "{err} does not name the file");
        }
    }

    #[test]
    fn seeded_selection_is_stable() {
        let mut a: Vec<u32> = (0..20).collect();
        let mut b = a.clone();
        shuffle(&mut a, 3);
        shuffle(&mut b, 3);
        assert_eq!(a, b);
        assert_ne!(a, (0..20).collect::<Vec<_>>());
    }
}
