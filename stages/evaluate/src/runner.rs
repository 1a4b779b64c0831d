//! Many evaluations at once: environments prepared once per (repo, version) (by the
//! sandbox crate's `Provisioner`), a bounded set of tokio tasks each owning one sandbox,
//! one callback per finished job for progress.
//!
//! Architecture invariant: one bad task (no environment spec, a broken build, a sandbox
//! that would not start) becomes an `env_error` verdict for that task's jobs; the run goes
//! on. Only the caller decides whether a run with many such verdicts is a systemic failure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use swegym_sandbox::source::SourceOptions;
use swegym_sandbox::{Backend, EnvHandle, EnvSpec, EnvSpecs, Limits, PreparedEnv, Provisioned, Provisioner, WorkspaceRef};
use swegym_schema::Task;
use tokio::sync::Semaphore;
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

/// Everything the runner needs, resolved by the caller. Environments and sandboxes come
/// from a [`Provisioner`] (in `swegym-sandbox`), which the caller may share with other
/// stages so each environment is built once per process.
pub struct Harness {
    pub provisioner: Arc<Provisioner>,
    pub eval: EvalOptions,
    /// Jobs running at once.
    pub jobs: usize,
}

impl Harness {
    pub fn new(backend: Arc<dyn Backend>, specs: EnvSpecs, sources: SourceOptions, limits: Limits, eval: EvalOptions, jobs: usize) -> Harness {
        Harness::with_provisioner(Arc::new(Provisioner::new(backend, specs, sources, limits)), eval, jobs)
    }

    /// A harness over an existing provisioner (its built environments are reused).
    pub fn with_provisioner(provisioner: Arc<Provisioner>, eval: EvalOptions, jobs: usize) -> Harness {
        Harness { provisioner, eval, jobs: jobs.max(1) }
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
        self.provisioner.cleanup().await;
        results
    }

    /// Prepares (host side) and builds (in the backend) the environment of a task, once per key.
    pub async fn environment(&self, task: &Task) -> Result<(EnvSpec, PreparedEnv, EnvHandle), String> {
        let commit = task.environment_setup_commit.as_deref().unwrap_or(&task.base_commit);
        self.provisioner.environment(&task.repo, &task.version, commit).await.map_err(|e| e.to_string())
    }

    async fn run_one(&self, job_idx: usize, job: Job) -> JobResult {
        let task = &job.task;
        let mut sandbox_seconds = 0.0;
        let outcome = match self.provisioner.sandbox(&workspace_ref(task)).await {
            Err(e) => env_error_for(task, &job, e.to_string()),
            Ok(Provisioned { spec, mut sandbox, create_seconds }) => {
                sandbox_seconds += create_seconds;
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
}

/// How the provisioner sees a task.
pub fn workspace_ref(task: &Task) -> WorkspaceRef<'_> {
    WorkspaceRef {
        instance_id: &task.instance_id,
        repo: &task.repo,
        version: &task.version,
        base_commit: &task.base_commit,
        env_commit: task.environment_setup_commit.as_deref().unwrap_or(&task.base_commit),
        gold_patch: &task.patch,
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
