//! Sandboxes for tasks, with environments prepared and built once per key: the part of a
//! run that both the evaluation harness and the sampling stage need.
//!
//! [`Provisioner::environment`] prepares (host side) and builds (in the backend) the
//! environment of a (repo, version, setup commit) at most once per run — concurrent callers
//! wait on the same `OnceCell`, and a failure is kept for every later caller.
//! [`Provisioner::sandbox`] adds the task's workspace at its base commit and starts a
//! fresh sandbox. This crate knows no `Task` type, so callers describe the task with a
//! [`WorkspaceRef`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Mutex, OnceCell};

use crate::source::{self, SourceOptions};
use crate::{Backend, EnvHandle, EnvSpec, EnvSpecs, Limits, PreparedEnv, Sandbox};

/// What a sandbox is for: the task's repo, version, base commit and environment commit.
#[derive(Debug, Clone, Copy)]
pub struct WorkspaceRef<'a> {
    pub instance_id: &'a str,
    pub repo: &'a str,
    pub version: &'a str,
    pub base_commit: &'a str,
    /// SWE-bench's `environment_setup_commit` when the task has one, else the base commit.
    pub env_commit: &'a str,
    /// The task's gold patch: a `synth` source's workspace is the sdist with its reverse
    /// committed (see [`source::prepare_task_workspace`]); other sources ignore it.
    pub gold_patch: &'a str,
}

/// A started sandbox and what it took.
pub struct Provisioned {
    pub spec: EnvSpec,
    pub sandbox: Box<dyn Sandbox>,
    /// Seconds `Backend::create` took.
    pub create_seconds: f64,
}

/// Why no sandbox could be had for a task (an infrastructure failure).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProvisionError {
    #[error("no environment spec for repo {repo} version {version}: add an [[environment]] for it to an environments.toml and pass it with --env-specs")]
    NoSpec { repo: String, version: String },
    #[error("{0}")]
    Environment(String),
    #[error("preparing the workspace: {0}")]
    Workspace(String),
    #[error("starting the sandbox: {0}")]
    Start(String),
}

/// One environment, built at most once per run; the error is kept for every later task.
type EnvCell = OnceCell<Result<(PreparedEnv, EnvHandle), String>>;

/// Environments once per key, sandboxes on demand.
pub struct Provisioner {
    pub backend: Arc<dyn Backend>,
    pub specs: EnvSpecs,
    pub sources: SourceOptions,
    pub limits: Limits,
    envs: Mutex<HashMap<String, Arc<EnvCell>>>,
}

impl Provisioner {
    pub fn new(backend: Arc<dyn Backend>, specs: EnvSpecs, sources: SourceOptions, limits: Limits) -> Provisioner {
        Provisioner { backend, specs, sources, limits, envs: Mutex::new(HashMap::new()) }
    }

    /// Prepares and builds the environment of (`repo`, `version`) at `env_commit`, once per key.
    pub async fn environment(&self, repo: &str, version: &str, env_commit: &str) -> Result<(EnvSpec, PreparedEnv, EnvHandle), ProvisionError> {
        let spec = self
            .specs
            .get(repo, version)
            .cloned()
            .ok_or_else(|| ProvisionError::NoSpec { repo: repo.to_string(), version: version.to_string() })?;
        let commit = env_commit.to_string();
        let key = source::env_key(&spec, Some(&commit));
        let cell = {
            let mut envs = self.envs.lock().await;
            Arc::clone(envs.entry(key.clone()).or_insert_with(|| Arc::new(OnceCell::new())))
        };
        let built = cell
            .get_or_init(|| async {
                let started = Instant::now();
                let (spec2, sources) = (spec.clone(), self.sources.clone());
                let prepared = tokio::task::spawn_blocking(move || source::prepare_env(&spec2, Some(&commit), &sources))
                    .await
                    .map_err(|e| format!("preparing {key}: {e}"))?
                    .map_err(|e| format!("preparing the environment source: {e}"))?;
                let handle = self.backend.ensure_env(&prepared).await.map_err(|e| format!("building the environment: {e}"))?;
                tracing::info!(env = %key, seconds = started.elapsed().as_secs_f64(), "environment ready");
                Ok((prepared, handle))
            })
            .await
            .clone()
            .map_err(ProvisionError::Environment)?;
        Ok((spec, built.0, built.1))
    }

    /// A fresh sandbox whose /testbed is the task's workspace at its base commit.
    pub async fn sandbox(&self, task: &WorkspaceRef<'_>) -> Result<Provisioned, ProvisionError> {
        let (spec, _prepared, handle) = self.environment(task.repo, task.version, task.env_commit).await?;
        let workspace = {
            let (spec2, sources) = (spec.clone(), self.sources.clone());
            let (id, base, gold) = (task.instance_id.to_string(), task.base_commit.to_string(), task.gold_patch.to_string());
            tokio::task::spawn_blocking(move || source::prepare_task_workspace(&spec2, &id, &base, &gold, &sources))
                .await
                .map_err(|e| ProvisionError::Workspace(e.to_string()))?
                .map_err(|e| ProvisionError::Workspace(e.to_string()))?
        };
        let created = Instant::now();
        let sandbox = self
            .backend
            .create(&handle, workspace.as_deref(), &self.limits)
            .await
            .map_err(|e| ProvisionError::Start(e.to_string()))?;
        Ok(Provisioned { spec, sandbox, create_seconds: created.elapsed().as_secs_f64() })
    }

    /// Removes what this process's sandboxes left behind (see [`Backend::cleanup`]), logging
    /// instead of failing.
    pub async fn cleanup(&self) {
        match self.backend.cleanup().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(sandboxes = n, "removed sandboxes whose teardown had failed"),
            Err(e) => tracing::warn!(error = %e, "sweeping leftover sandboxes failed"),
        }
    }
}
