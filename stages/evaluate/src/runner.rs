//! Many evaluations at once: environments prepared once per (repo, version), a bounded set
//! of tokio tasks each owning one sandbox, one callback per finished job for progress.
//!
//! Architecture invariant: one bad task (no environment spec, a broken build, a sandbox
//! that would not start) becomes an `env_error` verdict for that task's jobs; the run goes
//! on. Only the caller decides whether a run with many such verdicts is a systemic failure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use swegym_sandbox::source::{self, SourceOptions};
use swegym_sandbox::{Backend, EnvHandle, EnvSpec, EnvSpecs, Limits, PreparedEnv, Sandbox};
use swegym_schema::Task;
use tokio::sync::{Mutex, OnceCell, Semaphore};
use tracing::Instrument;

use crate::{env_error_outcome, evaluate_in_sandbox, run_tests_only, EvalOptions, EvalOutcome};

/// What to do with one task.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    /// Grade a model patch.
    Patch { patch: String, model_name_or_path: String },
    /// Apply the test patch and run the tests with no model patch.
    TestsOnly,
}

/// One unit of work: a task and what to do with it.
#[derive(Debug, Clone)]
pub struct Job {
    pub task: Arc<Task>,
    pub kind: JobKind,
    /// A label for logs and results (`gold`, `empty`, `before`, or the model name).
    pub label: String,
}

/// A finished job.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub job_idx: usize,
    pub label: String,
    pub outcome: EvalOutcome,
    /// Seconds spent creating and destroying the sandbox (harness overhead).
    pub sandbox_seconds: f64,
}

/// One environment, built at most once per run; the error is kept for every later task.
type EnvCell = OnceCell<Result<(PreparedEnv, EnvHandle), String>>;

/// Everything the runner needs, resolved by the caller.
pub struct Harness {
    pub backend: Arc<dyn Backend>,
    pub specs: EnvSpecs,
    pub sources: SourceOptions,
    pub limits: Limits,
    pub eval: EvalOptions,
    /// Jobs running at once.
    pub jobs: usize,
    envs: Mutex<HashMap<String, Arc<EnvCell>>>,
}

impl Harness {
    pub fn new(backend: Arc<dyn Backend>, specs: EnvSpecs, sources: SourceOptions, limits: Limits, eval: EvalOptions, jobs: usize) -> Harness {
        Harness { backend, specs, sources, limits, eval, jobs: jobs.max(1), envs: Mutex::new(HashMap::new()) }
    }

    /// Runs every job, `self.jobs` at a time; `on_done` is called as each one finishes.
    /// Results come back in job order.
    pub async fn run(self: &Arc<Self>, jobs: Vec<Job>, on_done: impl Fn(&JobResult) + Send + Sync + 'static) -> Vec<JobResult> {
        let on_done = Arc::new(on_done);
        let permits = Arc::new(Semaphore::new(self.jobs));
        let mut handles = Vec::with_capacity(jobs.len());
        for (job_idx, job) in jobs.into_iter().enumerate() {
            let this = Arc::clone(self);
            let permits = Arc::clone(&permits);
            let on_done = Arc::clone(&on_done);
            let span = tracing::info_span!("job", job_idx, instance_id = %job.task.instance_id, label = %job.label);
            handles.push(tokio::spawn(
                async move {
                    let _permit = permits.acquire_owned().await.expect("semaphore is never closed");
                    let result = this.run_one(job_idx, job).await;
                    on_done(&result);
                    result
                }
                .instrument(span),
            ));
        }
        let mut results = Vec::with_capacity(handles.len());
        for handle in handles {
            match handle.await {
                Ok(r) => results.push(r),
                Err(e) => panic!("an evaluation task panicked: {e}"),
            }
        }
        match self.backend.cleanup().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(sandboxes = n, "removed sandboxes whose teardown had failed"),
            Err(e) => tracing::warn!(error = %e, "sweeping leftover sandboxes failed"),
        }
        results
    }

    /// Prepares (host side) and builds (in the backend) the environment of a task, once per key.
    pub async fn environment(&self, task: &Task) -> Result<(EnvSpec, PreparedEnv, EnvHandle), String> {
        let spec = self.specs.get(&task.repo, &task.version).cloned().ok_or_else(|| {
            format!(
                "no environment spec for repo {} version {}: add an [[environment]] for it to an environments.toml and pass it with --env-specs",
                task.repo, task.version
            )
        })?;
        let commit = task.environment_setup_commit.clone().unwrap_or_else(|| task.base_commit.clone());
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
            .clone()?;
        Ok((spec, built.0, built.1))
    }

    async fn run_one(&self, job_idx: usize, job: Job) -> JobResult {
        let task = &job.task;
        let mut sandbox_seconds = 0.0;
        let outcome = match self.sandbox_for(task).await {
            Err(message) => env_error_for(task, &job, message),
            Ok((spec, mut sandbox, create_s)) => {
                sandbox_seconds += create_s;
                let outcome = match &job.kind {
                    JobKind::Patch { patch, model_name_or_path } => {
                        let opts = EvalOptions { model_name_or_path: model_name_or_path.clone(), ..self.eval.clone() };
                        evaluate_in_sandbox(sandbox.as_ref(), task, &spec, patch, &opts).await
                    }
                    JobKind::TestsOnly => run_tests_only(sandbox.as_ref(), task, &spec, &self.eval).await,
                };
                let destroy_started = Instant::now();
                if let Err(e) = sandbox.destroy().await {
                    tracing::warn!(error = %e, "sandbox teardown failed");
                }
                sandbox_seconds += destroy_started.elapsed().as_secs_f64();
                outcome
            }
        };
        JobResult { job_idx, label: job.label, outcome, sandbox_seconds }
    }

    async fn sandbox_for(&self, task: &Task) -> Result<(EnvSpec, Box<dyn Sandbox>, f64), String> {
        let (spec, _prepared, handle) = self.environment(task).await?;
        let workspace = {
            let (spec2, sources) = (spec.clone(), self.sources.clone());
            let (id, base) = (task.instance_id.clone(), task.base_commit.clone());
            tokio::task::spawn_blocking(move || source::prepare_workspace(&spec2, &id, &base, &sources))
                .await
                .map_err(|e| format!("preparing the workspace: {e}"))?
                .map_err(|e| format!("preparing the workspace: {e}"))?
        };
        let created = Instant::now();
        let sandbox = self
            .backend
            .create(&handle, workspace.as_deref(), &self.limits)
            .await
            .map_err(|e| format!("starting the sandbox: {e}"))?;
        Ok((spec, sandbox, created.elapsed().as_secs_f64()))
    }
}

fn env_error_for(task: &Task, job: &Job, message: String) -> EvalOutcome {
    let (model, empty) = match &job.kind {
        JobKind::Patch { patch, model_name_or_path } => (model_name_or_path.as_str(), crate::patch::is_empty_patch(patch, &task.test_files())),
        JobKind::TestsOnly => ("", true),
    };
    env_error_outcome(task, model, empty, message)
}

/// Where per-job logs go: `<dir>/<instance id>/<label>.log`.
pub fn log_path(dir: &std::path::Path, instance_id: &str, label: &str) -> PathBuf {
    let clean = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect::<String>();
    dir.join(clean(instance_id)).join(format!("{}.log", clean(label)))
}
