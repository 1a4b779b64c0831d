//! The one place a policy is built, for `swegym sample` (from its flags) and for `swegym run`
//! (from `[policy]` and the stage's adapter): a [`PolicySpec`] says which policy with which
//! settings, checked where it is made; [`PolicySpec::build`] loads it. The API key of an
//! OpenAI-compatible server is read here, from the variable the user names, and nowhere else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use swegym_sample::policy::local::{AdapterLoad, LocalPolicy, ModelDtypes};
use swegym_sample::policy::openai::{OpenAiConfig, OpenAiPolicy};
use swegym_sample::policy::oracle::OraclePolicy;
use swegym_sample::policy::replay::ReplayPolicy;
use swegym_sample::prompt::Scaffold;
use swegym_sample::Policy;

use crate::exit::Exit;

/// Which policy, with everything needed to load it.
#[derive(Debug, Clone)]
pub enum PolicySpec {
    /// Plays the gold patch as an expert; slips in `slip_rate` of its rollouts.
    Oracle { slip_rate: f64, scaffold: Scaffold },
    /// Our runtime in this process.
    Local(LocalSpec),
    /// An OpenAI-compatible server.
    OpenAi(OpenAiConfig),
    /// Canned replies from a JSON file.
    Replay { file: PathBuf },
}

/// A local model: file or folder, an adapter folder (merged or attached), dtypes, device,
/// the batch its engine decodes at most, libtorch threads.
#[derive(Debug, Clone)]
pub struct LocalSpec {
    pub model: PathBuf,
    pub adapter: Option<PathBuf>,
    pub merge_adapter: bool,
    pub dtypes: ModelDtypes,
    pub device: swegym_lm::DeviceChoice,
    pub max_batch: usize,
    pub threads: Option<i32>,
}

impl PolicySpec {
    /// Loads the policy on the calling thread (a local model's weights: seconds).
    pub fn build_blocking(self) -> anyhow::Result<Arc<dyn Policy>> {
        Ok(match self {
            PolicySpec::Oracle { slip_rate, scaffold } => {
                Arc::new(OraclePolicy::with_slips(slip_rate).map_err(|e| Exit::bad_input(format!("--oracle-slip-rate: {e}")))?.with_scaffold(scaffold))
            }
            PolicySpec::Local(l) => {
                warn_slow_bf16_prefill(&l.dtypes);
                let adapter = l.adapter.as_deref().map(|dir| AdapterLoad { dir, merge: l.merge_adapter });
                Arc::new(
                    LocalPolicy::load_with_adapter(&l.model, adapter, l.dtypes, l.device, l.max_batch.max(1), l.threads)
                        .map_err(|e| Exit::bad_input(e.to_string()))?,
                )
            }
            PolicySpec::Replay { file } => Arc::new(ReplayPolicy::from_file(&file).map_err(|e| Exit::bad_input(e.to_string()))?),
            PolicySpec::OpenAi(config) => Arc::new(OpenAiPolicy::new(config).map_err(|e| Exit::infra(e.to_string()))?),
        })
    }

    /// Loads the policy on a blocking thread (inside the async loop).
    pub async fn build(self) -> anyhow::Result<Arc<dyn Policy>> {
        tokio::task::spawn_blocking(move || self.build_blocking()).await.context("loading the policy model")?
    }
}

/// An OpenAI-compatible server's settings; `api_key_env` names the variable holding the key
/// (`what` names the setting in the error when it is not set).
pub fn openai_config(base_url: &str, model: &str, api_key_env: Option<&str>, what: &str, request_timeout_s: u64, max_retries: u32) -> anyhow::Result<OpenAiConfig> {
    Ok(OpenAiConfig {
        api_key: api_key(api_key_env, what)?,
        request_timeout: Duration::from_secs(request_timeout_s),
        max_retries,
        ..OpenAiConfig::new(base_url.to_string(), model.to_string())
    })
}

/// The API key in the variable `var` (None: no key is sent); `what` names the setting.
pub fn api_key(var: Option<&str>, what: &str) -> anyhow::Result<Option<String>> {
    match var {
        None => Ok(None),
        Some(var) => std::env::var(var).map(Some).map_err(|_| Exit::bad_input(format!("{what} {var}: the variable is not set"))),
    }
}

/// A bf16 prefill where the CPU does not multiply bf16 natively still runs (libtorch
/// converts), but slower than f32: say so rather than let the setting cost time silently.
fn warn_slow_bf16_prefill(dtypes: &ModelDtypes) {
    if dtypes.prefill == Some(swegym_lm::Dtype::Bf16) && dtypes.weights == swegym_lm::Dtype::F32 && !swegym_lm::cpu_multiplies_bf16() {
        tracing::warn!("prefill dtype bf16: this CPU reports neither avx512_bf16 nor amx_bf16, so bf16 products are emulated and slower than f32; leave the prefill dtype unset here");
    }
}
