//! The sampling stage: K rollouts per task, a bounded number at once, each one appended
//! durably as it finishes, the Parquet written at the end.
//!
//! Durability: every finished rollout is one JSON line appended to `<out>.partial.jsonl`
//! and fsynced before the progress callback runs, so a crash or SIGKILL loses at most the
//! rollouts in flight. A rerun with the same `--out` reads that file (and the final Parquet,
//! if a previous run got that far), keeps the finished `(instance_id, sample_idx)` pairs and
//! runs only the others. A torn last line (killed mid-write) is cut off before appending.
//! Rollouts that ended in an infrastructure failure (`sandbox_error`, `policy_error`) count
//! as not finished and are run again; the newest line of a pair wins, so nothing is
//! duplicated. The Parquet (one row per pair, in task order then sample index) is written
//! atomically at the end, then the partial file is removed.
//!
//! Concurrency: one tokio task per rollout behind a semaphore of `jobs` permits; each owns
//! its sandbox. A panicking rollout is logged and counted, not written, and the stage goes on.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use swegym_sandbox::{Provisioner, Sandbox, WorkspaceRef};
use swegym_schema::rollout::{read_rollouts, write_rollouts};
use swegym_schema::{ExitReason, Rollout, Task};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::episode::{run_episode, EpisodeConfig, RolloutId};
use crate::policy::{Policy, SamplingParams};

/// Hands out fresh sandboxes for tasks.
#[async_trait::async_trait]
pub trait SandboxProvider: Send + Sync {
    /// A sandbox whose /testbed is `task`'s workspace at its base commit.
    async fn sandbox(&self, task: &Task) -> Result<Box<dyn Sandbox>, String>;
    /// Called once at the end of the stage.
    async fn cleanup(&self) {}
}

#[async_trait::async_trait]
impl SandboxProvider for Provisioner {
    async fn sandbox(&self, task: &Task) -> Result<Box<dyn Sandbox>, String> {
        let workspace = WorkspaceRef {
            instance_id: &task.instance_id,
            repo: &task.repo,
            version: &task.version,
            base_commit: &task.base_commit,
            env_commit: task.environment_setup_commit.as_deref().unwrap_or(&task.base_commit),
            gold_patch: &task.patch,
        };
        Provisioner::sandbox(self, &workspace).await.map(|p| p.sandbox).map_err(|e| e.to_string())
    }

    async fn cleanup(&self) {
        Provisioner::cleanup(self).await;
    }
}

/// Everything about a sampling run.
#[derive(Debug, Clone)]
pub struct SampleConfig {
    /// Rollouts per task.
    pub k: u32,
    /// Rollouts running at once.
    pub jobs: usize,
    /// Written into every row.
    pub iteration: u32,
    /// Base seed; each rollout's seed is derived from it, the instance id and the sample index.
    pub seed: u64,
    pub sampling: SamplingParams,
    pub episode: EpisodeConfig,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct SampleOutcome {
    /// Every rollout in the output, in task order then sample index.
    pub rollouts: Vec<Rollout>,
    /// Rollouts run by this call.
    pub ran: usize,
    /// Pairs found finished from an earlier run.
    pub resumed: usize,
    /// Rollouts whose task panicked (not written; a rerun runs them).
    pub panicked: usize,
    pub wall_seconds: f64,
    /// When the last rollout of this call started (seconds from the start): after it,
    /// fewer than `jobs` rollouts run (the drain), which weighs on a short run's rate.
    pub last_start_seconds: f64,
}

impl SampleOutcome {
    pub fn count(&self, reason: ExitReason) -> usize {
        self.rollouts.iter().filter(|r| r.exit_reason == reason).count()
    }
}

/// Errors that stop the stage (the output cannot be written); a bad rollout is never one.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Schema(#[from] swegym_schema::SchemaError),
}

/// Where the durable per-rollout lines of `out` go.
pub fn partial_path(out: &Path) -> PathBuf {
    out.with_extension("partial.jsonl")
}

/// The seed of one rollout (stable across runs and machines).
pub fn rollout_seed(base: u64, instance_id: &str, sample_idx: u32) -> u64 {
    // FNV-1a over the id, then splitmix64 with the base seed and the index.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in instance_id.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = base ^ h ^ ((sample_idx as u64) << 32 | sample_idx as u64);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The append-only, fsynced JSONL of finished rollouts.
struct RolloutLog {
    file: std::fs::File,
    path: PathBuf,
}

impl RolloutLog {
    /// Opens (creating) the log, returns it and the rollouts already in it. A torn last
    /// line is cut off.
    fn open(path: &Path) -> Result<(RolloutLog, Vec<Rollout>), SampleError> {
        let io = |source| SampleError::Io { path: path.to_path_buf(), source };
        let mut file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(path).map_err(io)?;
        let mut rollouts = Vec::new();
        let mut good_len: u64 = 0;
        {
            let mut reader = std::io::BufReader::new(&file);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(io)?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                match serde_json::from_str::<Rollout>(&line) {
                    Ok(r) => rollouts.push(r),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "unreadable line in the partial rollouts file; its rollout will run again");
                    }
                }
                good_len += n as u64;
            }
        }
        if file.metadata().map_err(io)?.len() > good_len {
            tracing::warn!(path = %path.display(), "cutting a torn last line (the previous run was killed while writing)");
            file.set_len(good_len).map_err(io)?;
            file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        }
        Ok((RolloutLog { file, path: path.to_path_buf() }, rollouts))
    }

    fn append(&mut self, rollout: &Rollout) -> Result<(), SampleError> {
        let io = |source| SampleError::Io { path: self.path.clone(), source };
        let mut line = serde_json::to_vec(rollout).map_err(|e| io(std::io::Error::other(e)))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)
    }
}

/// Runs the missing rollouts of `tasks` × `0..k` and writes `out` (Parquet). `on_done` is
/// called once per rollout run by this call, after it is durable.
pub async fn sample(
    tasks: &[Task],
    policy: Arc<dyn Policy>,
    provider: Arc<dyn SandboxProvider>,
    config: &SampleConfig,
    out: &Path,
    on_done: impl Fn(&Rollout) + Send + Sync + 'static,
) -> Result<SampleOutcome, SampleError> {
    let started = Instant::now();
    let span = tracing::info_span!("sample", policy = %policy.id(), k = config.k, jobs = config.jobs, tasks = tasks.len());
    async move {
        let partial = partial_path(out);
        let (log, logged) = RolloutLog::open(&partial)?;
        // Finished pairs: the previous Parquet, then the log (newer lines win).
        let mut done: HashMap<(String, u32), Rollout> = HashMap::new();
        if out.exists() {
            for r in read_rollouts(out)? {
                done.insert((r.instance_id.clone(), r.sample_idx), r);
            }
        }
        for r in logged {
            done.insert((r.instance_id.clone(), r.sample_idx), r);
        }
        done.retain(|_, r| !r.exit_reason.is_infra_failure());
        let wanted: HashSet<&str> = tasks.iter().map(|t| t.instance_id.as_str()).collect();
        let resumed = done.keys().filter(|(id, idx)| wanted.contains(id.as_str()) && *idx < config.k).count();
        if resumed > 0 {
            tracing::info!(resumed, "skipping rollouts finished by an earlier run");
        }

        let log = Arc::new(Mutex::new(log));
        let on_done = Arc::new(on_done);
        let permits = Arc::new(Semaphore::new(config.jobs.max(1)));
        let last_start = Arc::new(Mutex::new(0.0f64));
        let mut handles = Vec::new();
        for task in tasks {
            let task = Arc::new(task.clone());
            for sample_idx in 0..config.k {
                if done.contains_key(&(task.instance_id.clone(), sample_idx)) {
                    continue;
                }
                let (task, policy, provider, log, on_done, permits) =
                    (Arc::clone(&task), Arc::clone(&policy), Arc::clone(&provider), Arc::clone(&log), Arc::clone(&on_done), Arc::clone(&permits));
                let last_start = Arc::clone(&last_start);
                let id = RolloutId { sample_idx, iteration: config.iteration, seed: rollout_seed(config.seed, &task.instance_id, sample_idx) };
                let (params, episode) = (config.sampling.clone(), config.episode.clone());
                let span = tracing::info_span!("rollout", instance_id = %task.instance_id, sample_idx);
                handles.push(tokio::spawn(
                    async move {
                        let _permit = permits.acquire_owned().await.expect("semaphore is never closed");
                        {
                            let mut last = last_start.lock().expect("last start lock");
                            *last = last.max(started.elapsed().as_secs_f64());
                        }
                        let rollout = one_rollout(&task, policy.as_ref(), provider.as_ref(), &params, &episode, &id).await;
                        let written = log.lock().expect("log lock").append(&rollout);
                        if written.is_ok() {
                            on_done(&rollout);
                        }
                        written.map(|()| rollout)
                    }
                    .instrument(span),
                ));
            }
        }
        let (mut ran, mut panicked) = (0, 0);
        let mut first_error = None;
        for handle in handles {
            match handle.await {
                Ok(Ok(r)) => {
                    ran += 1;
                    done.insert((r.instance_id.clone(), r.sample_idx), r);
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "could not record a rollout");
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    panicked += 1;
                    tracing::error!(error = %e, "a rollout task panicked; it will run again on the next run");
                }
            }
        }
        provider.cleanup().await;
        if let Some(e) = first_error {
            return Err(e);
        }
        // Infra failures of this run are written too (they are data), and retried next time.
        let order: HashMap<&str, usize> = tasks.iter().enumerate().map(|(i, t)| (t.instance_id.as_str(), i)).collect();
        let mut rollouts: Vec<Rollout> = done.into_values().collect();
        rollouts.sort_by_key(|r| (order.get(r.instance_id.as_str()).copied().unwrap_or(usize::MAX), r.instance_id.clone(), r.sample_idx));
        write_rollouts(out, &rollouts)?;
        if panicked == 0 {
            let _ = std::fs::remove_file(&partial);
        }
        let last_start_seconds = *last_start.lock().expect("last start lock");
        Ok(SampleOutcome { rollouts, ran, resumed, panicked, wall_seconds: started.elapsed().as_secs_f64(), last_start_seconds })
    }
    .instrument(span)
    .await
}

/// One rollout from getting a sandbox to destroying it.
async fn one_rollout(
    task: &Task,
    policy: &dyn Policy,
    provider: &dyn SandboxProvider,
    params: &SamplingParams,
    episode: &EpisodeConfig,
    id: &RolloutId,
) -> Rollout {
    let started = Instant::now();
    match provider.sandbox(task).await {
        Ok(mut sandbox) => {
            let rollout = run_episode(sandbox.as_ref(), task, policy, params, episode, id).await;
            if let Err(e) = sandbox.destroy().await {
                tracing::warn!(error = %e, "sandbox teardown failed");
            }
            rollout
        }
        Err(message) => {
            tracing::warn!(error = %message, reason = "sandbox_error", "no sandbox for the rollout");
            Rollout {
                instance_id: task.instance_id.clone(),
                sample_idx: id.sample_idx,
                iteration: id.iteration,
                policy_id: policy.id(),
                messages: crate::prompt::initial_messages(task, episode.scaffold),
                patch: String::new(),
                empty_patch: true,
                exit_reason: ExitReason::SandboxError,
                turns: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
                wall_seconds: started.elapsed().as_secs_f64(),
                temperature: params.temperature,
                seed: id.seed,
                error: Some(message),
                resolved: None,
                status: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_stable_and_distinct() {
        let a = rollout_seed(0, "x__y-1", 0);
        assert_eq!(a, rollout_seed(0, "x__y-1", 0));
        assert_ne!(a, rollout_seed(0, "x__y-1", 1));
        assert_ne!(a, rollout_seed(1, "x__y-1", 0));
        assert_ne!(a, rollout_seed(0, "x__y-2", 0));
    }

    #[test]
    fn torn_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.partial.jsonl");
        let r = Rollout {
            instance_id: "a".into(),
            sample_idx: 0,
            iteration: 0,
            policy_id: "p".into(),
            messages: vec![],
            patch: String::new(),
            empty_patch: true,
            exit_reason: ExitReason::MaxTurns,
            turns: 1,
            prompt_tokens: 0,
            completion_tokens: 0,
            wall_seconds: 0.0,
            temperature: 1.0,
            seed: 0,
            error: None,
            resolved: None,
            status: None,
        };
        {
            let (mut log, old) = RolloutLog::open(&p).unwrap();
            assert!(old.is_empty());
            log.append(&r).unwrap();
        }
        // A torn second line, as if killed mid-write.
        let mut text = std::fs::read_to_string(&p).unwrap();
        let good = text.len();
        text.push_str("{\"instance_id\": \"b\", \"sam");
        std::fs::write(&p, &text).unwrap();
        let (mut log, old) = RolloutLog::open(&p).unwrap();
        assert_eq!(old, vec![r.clone()]);
        assert_eq!(std::fs::metadata(&p).unwrap().len() as usize, good);
        let r2 = Rollout { sample_idx: 1, ..r.clone() };
        log.append(&r2).unwrap();
        drop(log);
        let (_, old) = RolloutLog::open(&p).unwrap();
        assert_eq!(old, vec![r, r2]);
    }
}
