//! The local backend: sandboxes made with bubblewrap, environments built into cached venvs.
//!
//! Host layout under the cache root given to [`LocalBackend::new`]:
//!
//! ```text
//! <cache_root>/envs/local/<key>/venv        the environment's venv (bound at /opt/venv)
//! <cache_root>/envs/local/<key>/testbed     the post-install repo each sandbox copies
//! <cache_root>/envs/local/<key>/ready.json  written last: the environment is complete
//! <cache_root>/envs/local/<key>/build.log   every build step's command and output
//! <cache_root>/sandboxes/local/sbx-XXXX/    one live sandbox: testbed/ and tmp/
//! <cache_root>/sandboxes/etc/etc-<pid>-XXXX/ the /etc every sandbox of one process sees
//! ```
//!
//! Resource limits come from a cgroup per sandbox (see [`cgroup`]); the sandbox itself
//! and each command in it are described in [`bwrap`].

mod bwrap;
mod cgroup;
mod etc;
mod files;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use self::bwrap::{Mounts, RunContext};
use self::cgroup::{Cgroup, CgroupRoots};
use crate::exec::tail_chars;
use crate::{
    Backend, EnvHandle, EnvSpec, ExecOutput, ExecRequest, Limits, PreparedEnv, Sandbox, SandboxError, SandboxKind, TESTBED,
    VENV, WHEELS,
};

pub use self::bwrap::SANDBOX_PATH;

/// Characters of a failed build step's output kept in [`SandboxError::EnvBuild`].
const BUILD_ERROR_TAIL_CHARS: usize = 4000;
/// Output kept per build step in `build.log`.
const BUILD_STEP_OUTPUT_CAP: usize = 8 << 20;

/// File in each sandbox dir holding the pid of the process that made it.
const OWNER_FILE: &str = "owner.pid";

/// The bubblewrap backend.
#[derive(Debug)]
pub struct LocalBackend {
    cache_root: PathBuf,
    bwrap: PathBuf,
    ro_binds: Vec<PathBuf>,
    build_limits: Limits,
    build_step_timeout: Duration,
    cgroup_roots: OnceLock<CgroupRoots>,
    build_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The world-readable copy of the host's `/etc` ([`etc`]), made on first use and
    /// removed with the backend.
    public_etc: tokio::sync::OnceCell<tempfile::TempDir>,
}

/// What `ready.json` records about a built environment.
#[derive(Debug, Serialize, Deserialize)]
struct ReadyMarker {
    key: String,
    spec: EnvSpec,
    python: PathBuf,
    build_seconds: f64,
}

impl LocalBackend {
    /// A backend keeping its environments and sandboxes under `cache_root`
    /// (the pipeline passes `~/.cache/swegym`). Runs `bwrap` from the C library's default
    /// path (/bin:/usr/bin) unless [`LocalBackend::with_bwrap`] names it.
    pub fn new(cache_root: PathBuf) -> LocalBackend {
        LocalBackend {
            cache_root,
            bwrap: PathBuf::from("bwrap"),
            ro_binds: Vec::new(),
            build_limits: Limits { memory_bytes: 8 << 30, max_pids: 1024 },
            build_step_timeout: Duration::from_secs(1800),
            cgroup_roots: OnceLock::new(),
            build_locks: std::sync::Mutex::new(HashMap::new()),
            public_etc: tokio::sync::OnceCell::new(),
        }
    }

    /// Runs this bubblewrap binary (the pipeline passes the one on its `PATH`).
    pub fn with_bwrap(mut self, bwrap: PathBuf) -> LocalBackend {
        self.bwrap = bwrap;
        self
    }

    /// Extra host paths bound read-only at the same path in every sandbox (the Python the
    /// venv was made from is bound without being named here).
    pub fn with_ro_binds(mut self, paths: Vec<PathBuf>) -> LocalBackend {
        self.ro_binds = paths;
        self
    }

    /// Limits of the sandbox environments are built in, and the timeout of each build step
    /// (default 8 GiB, 1024 pids, 30 minutes).
    pub fn with_build_limits(mut self, limits: Limits, step_timeout: Duration) -> LocalBackend {
        self.build_limits = limits;
        self.build_step_timeout = step_timeout;
        self
    }

    /// Turns per-sandbox cgroups off: limits then come from `setrlimit` alone (memory per
    /// process; the pids limit does not bind root). For hosts without cgroup v1 access.
    pub fn with_cgroups(self, enabled: bool) -> LocalBackend {
        if !enabled {
            let _ = self.cgroup_roots.set(CgroupRoots::default());
        }
        self
    }

    /// `<cache_root>/envs/local/<key>`: the built environment.
    pub fn env_dir(&self, key: &str) -> PathBuf {
        self.cache_root.join("envs").join("local").join(key)
    }

    /// `<cache_root>/sandboxes/local`: where live sandboxes keep their files.
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.cache_root.join("sandboxes").join("local")
    }

    /// Removes sandbox dirs and cgroups left by swegym processes that are no longer alive
    /// (a run killed with SIGKILL cannot clean up after itself); returns how many.
    pub fn sweep_orphans(&self) -> usize {
        self.sweep_etc_copies();
        let Ok(entries) = std::fs::read_dir(self.sandboxes_dir()) else {
            return 0;
        };
        let mut swept = 0;
        for entry in entries.flatten() {
            let dir = entry.path();
            let name = dir_name(&dir);
            if !name.starts_with("sbx-") {
                continue;
            }
            let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).ok().and_then(|s| s.trim().parse::<u32>().ok());
            let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            // A dir without an owner file is either being created right now or from before
            // owner files existed: only sweep it once it is an hour old.
            let stale = owner.is_none()
                && entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > Duration::from_secs(3600));
            if alive || (owner.is_none() && !stale) {
                continue;
            }
            let cgroup = Cgroup::existing(self.cgroup_roots(), &format!("swegym-{name}"));
            cgroup.kill_all_blocking(Duration::from_secs(5));
            let _ = cgroup.remove_blocking();
            if std::fs::remove_dir_all(&dir).is_ok() {
                swept += 1;
            }
        }
        if swept > 0 {
            tracing::warn!(sandboxes = swept, "removed sandboxes left by killed swegym runs");
        }
        swept
    }

    /// `<cache_root>/sandboxes/etc`: the `/etc` copies of live processes, one each.
    fn etc_copies_dir(&self) -> PathBuf {
        self.cache_root.join("sandboxes").join("etc")
    }

    /// The host folder bound at `/etc` in this backend's sandboxes: the world-readable part
    /// of the host's `/etc`, copied once per backend (see [`etc`]).
    async fn public_etc(&self) -> Result<PathBuf, SandboxError> {
        let parent = self.etc_copies_dir();
        let dir = self
            .public_etc
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&parent).map_err(|e| SandboxError::io(format!("creating {}", parent.display()), e))?;
                    let dir = tempfile::Builder::new()
                        .prefix(&format!("etc-{}-", std::process::id()))
                        .tempdir_in(&parent)
                        .map_err(|e| SandboxError::io(format!("creating a folder in {}", parent.display()), e))?;
                    let counts = etc::copy_public(Path::new("/etc"), &dir.path().join("etc"))
                        .map_err(|e| SandboxError::io(format!("copying /etc into {}", dir.path().display()), e))?;
                    tracing::debug!(copied = counts.copied, left_out = counts.left_out, "sandbox /etc made");
                    Ok::<_, SandboxError>(dir)
                })
                .await
                .map_err(|e| SandboxError::Other(format!("copying /etc: {e}")))?
            })
            .await?;
        Ok(dir.path().join("etc"))
    }

    /// Removes the `/etc` copies of processes that are no longer alive; returns how many.
    fn sweep_etc_copies(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.etc_copies_dir()) else {
            return 0;
        };
        let mut swept = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = name.strip_prefix("etc-").and_then(|rest| rest.split('-').next()).and_then(|pid| pid.parse::<u32>().ok());
            let dead = owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if dead && std::fs::remove_dir_all(entry.path()).is_ok() {
                swept += 1;
            }
        }
        swept
    }

    fn cgroup_roots(&self) -> &CgroupRoots {
        self.cgroup_roots.get_or_init(CgroupRoots::discover)
    }

    fn key_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.build_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(key.to_string()).or_default().clone()
    }

    /// Like [`Backend::create`], returning the concrete type (host paths for inspection).
    pub async fn create_local(
        &self,
        env: &EnvHandle,
        workspace: Option<&Path>,
        limits: &Limits,
    ) -> Result<LocalSandbox, SandboxError> {
        let (venv_dir, template) = match env {
            EnvHandle::Local { venv_dir, testbed } => (venv_dir, testbed),
            other => {
                return Err(SandboxError::Setup(format!(
                    "the local backend cannot run {other:?}: build the environment with the local backend's ensure_env"
                )))
            }
        };
        let source = workspace.unwrap_or(template);
        if !source.is_dir() {
            return Err(SandboxError::Setup(format!("workspace {} is not a directory", source.display())));
        }
        if !venv_dir.is_dir() {
            return Err(SandboxError::Setup(format!(
                "venv {} is missing: build the environment with ensure_env",
                venv_dir.display()
            )));
        }
        let parent = self.sandboxes_dir();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| SandboxError::io(format!("creating {}", parent.display()), e))?;
        let dir = tempfile::Builder::new()
            .prefix("sbx-")
            .tempdir_in(&parent)
            .map_err(|e| SandboxError::io(format!("creating a sandbox dir in {}", parent.display()), e))?;
        // Who owns this dir, so a later run can sweep it if this process is killed.
        tokio::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
            .await
            .map_err(|e| SandboxError::io(format!("writing {}", dir.path().join(OWNER_FILE).display()), e))?;
        let testbed = dir.path().join("testbed");
        copy_tree(source, &testbed).await?;
        let tmp = dir.path().join("tmp");
        make_tmp_dir(&tmp).await?;

        let mut ro_extra = self.ro_binds.clone();
        ro_extra.extend(python_binds_of_venv(venv_dir));
        let mounts = Mounts {
            etc: self.public_etc().await?,
            testbed,
            tmp,
            venv: venv_dir.clone(),
            venv_writable: false,
            wheels: None,
            ro_extra,
        };
        let name = format!("swegym-{}", dir_name(dir.path()));
        let cgroup = Cgroup::create(self.cgroup_roots(), &name, limits);
        let rlimits = cgroup.fallback(limits);
        let sandbox = LocalSandbox {
            inner: Some(Inner { dir, cgroup, rlimits, mounts }),
            bwrap: self.bwrap.clone(),
            base_env: bwrap::default_env(),
        };
        sandbox.probe().await?;
        tracing::debug!(sandbox = %sandbox.host_dir().map(|p| p.display().to_string()).unwrap_or_default(), source = %source.display(), "local sandbox created");
        Ok(sandbox)
    }

    /// Whether `dir` holds a complete build of `spec`.
    async fn is_ready(dir: &Path, spec: &EnvSpec) -> bool {
        let Ok(text) = tokio::fs::read(dir.join("ready.json")).await else {
            return false;
        };
        match serde_json::from_slice::<ReadyMarker>(&text) {
            Ok(marker) => marker.spec == *spec && dir.join("venv").is_dir() && dir.join("testbed").is_dir(),
            Err(_) => false,
        }
    }

    async fn build_env(&self, env: &PreparedEnv, dir: &Path) -> Result<(), SandboxError> {
        let started = Instant::now();
        let key = env.key.as_str();
        let build_err = |step: &str, tail: String| SandboxError::EnvBuild {
            key: key.to_string(),
            step: step.to_string(),
            exit_code: None,
            tail,
        };
        // Anything here without ready.json is a dead build: clear it (we hold the lock).
        for stale in ["ready.json", "venv", "testbed"] {
            remove_path(&dir.join(stale)).await?;
        }
        if let Ok(mut entries) = tokio::fs::read_dir(dir).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                if entry.file_name().to_string_lossy().starts_with("build-") {
                    remove_path(&entry.path()).await?;
                }
            }
        }
        if !env.python.is_absolute() || !env.python.exists() {
            return Err(build_err(
                "find python",
                format!(
                    "interpreter {} for python {} not found: install it (e.g. `pyenv install {}`)",
                    env.python.display(),
                    env.spec.python,
                    env.spec.python
                ),
            ));
        }
        if !env.repo_dir.is_dir() {
            return Err(build_err("copy repo", format!("repo dir {} does not exist: run source::prepare_env", env.repo_dir.display())));
        }
        if !env.wheelhouse.is_dir() {
            return Err(build_err(
                "find wheelhouse",
                format!("wheelhouse {} does not exist: run source::prepare_env", env.wheelhouse.display()),
            ));
        }

        let log_path = dir.join("build.log");
        let mut log = tokio::fs::File::create(&log_path)
            .await
            .map_err(|e| SandboxError::io(format!("creating {}", log_path.display()), e))?;
        let build = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(dir)
            .map_err(|e| SandboxError::io(format!("creating a build dir in {}", dir.display()), e))?;
        let testbed = build.path().join("testbed");
        let venv = build.path().join("venv");
        let tmp = build.path().join("tmp");
        copy_tree(&env.repo_dir, &testbed).await?;
        tokio::fs::create_dir(&venv)
            .await
            .map_err(|e| SandboxError::io(format!("creating {}", venv.display()), e))?;
        make_tmp_dir(&tmp).await?;

        let mut ro_extra = self.ro_binds.clone();
        ro_extra.extend(python_binds_of_interpreter(&env.python));
        let mounts = Mounts {
            etc: self.public_etc().await?,
            testbed: testbed.clone(),
            tmp,
            venv: venv.clone(),
            venv_writable: true,
            wheels: Some(env.wheelhouse.clone()),
            ro_extra,
        };
        let cgroup = Cgroup::create(self.cgroup_roots(), &format!("swegym-{}-{}", key, dir_name(build.path())), &self.build_limits);
        let mut base_env = bwrap::default_env();
        base_env.extend([
            ("PIP_NO_INDEX".to_string(), "1".to_string()),
            ("PIP_FIND_LINKS".to_string(), WHEELS.to_string()),
            ("PIP_DISABLE_PIP_VERSION_CHECK".to_string(), "1".to_string()),
            ("PIP_NO_CACHE_DIR".to_string(), "1".to_string()),
            ("PIP_PROGRESS_BAR".to_string(), "off".to_string()),
        ]);
        let ctx = RunContext {
            bwrap: &self.bwrap,
            mounts: &mounts,
            base_env: &base_env,
            cgroup: Some(&cgroup),
            rlimits: cgroup.fallback(&self.build_limits),
        };

        let mut steps = vec![format!("{} -m venv {VENV}", shell_quote(&env.python.to_string_lossy()))];
        if !env.spec.pip.is_empty() {
            let reqs: Vec<String> = env.spec.pip.iter().map(|r| shell_quote(r)).collect();
            steps.push(format!("pip install --no-index --find-links {WHEELS} {}", reqs.join(" ")));
        }
        steps.extend(env.spec.install.iter().cloned());

        log_line(&mut log, &log_path, &format!("# environment {key} ({} {})\n", env.spec.repo, env.spec.version)).await?;
        for step in &steps {
            let request = ExecRequest {
                command: step.clone(),
                cwd: Some(TESTBED.to_string()),
                env: Vec::new(),
                timeout: self.build_step_timeout,
                output_cap: BUILD_STEP_OUTPUT_CAP,
            };
            tracing::info!(env = key, step = %step, "environment build step");
            let out = bwrap::run(&ctx, &request).await?;
            log_line(&mut log, &log_path, &format!("\n$ {step}\n{}", out.output)).await?;
            log_line(
                &mut log,
                &log_path,
                &format!("\n# exit {:?}{} after {:.1}s\n", out.exit_code, if out.timed_out { " (timed out)" } else { "" }, out.duration.as_secs_f64()),
            )
            .await?;
            if out.exit_code != Some(0) {
                let mut tail = tail_chars(&out.output, BUILD_ERROR_TAIL_CHARS);
                if out.timed_out {
                    tail.push_str(&format!("\n[timed out after {}s]", self.build_step_timeout.as_secs()));
                }
                tracing::warn!(env = key, step = %step, exit_code = ?out.exit_code, log = %log_path.display(), "environment build failed");
                if let Err(e) = cgroup.remove().await {
                    tracing::warn!(error = %e, "build cgroup not removed");
                }
                return Err(SandboxError::EnvBuild { key: key.to_string(), step: step.clone(), exit_code: out.exit_code, tail });
            }
        }
        if let Err(e) = cgroup.remove().await {
            tracing::warn!(error = %e, "build cgroup not removed");
        }

        // Commit: move the parts in, then write ready.json last (atomically).
        let marker = ReadyMarker {
            key: key.to_string(),
            spec: env.spec.clone(),
            python: env.python.clone(),
            build_seconds: started.elapsed().as_secs_f64(),
        };
        let marker_json = serde_json::to_vec_pretty(&marker).map_err(|e| SandboxError::Other(format!("serializing ready.json: {e}")))?;
        let marker_tmp = build.path().join("ready.json");
        tokio::fs::write(&marker_tmp, marker_json)
            .await
            .map_err(|e| SandboxError::io(format!("writing {}", marker_tmp.display()), e))?;
        for (from, to) in [(&venv, dir.join("venv")), (&testbed, dir.join("testbed")), (&marker_tmp, dir.join("ready.json"))] {
            tokio::fs::rename(from, &to)
                .await
                .map_err(|e| SandboxError::io(format!("moving {} to {}", from.display(), to.display()), e))?;
        }
        let build_path = build.path().to_path_buf();
        tokio::task::spawn_blocking(move || build.close())
            .await
            .map_err(|e| SandboxError::Other(format!("removing build dir: {e}")))?
            .map_err(|e| SandboxError::io(format!("removing {}", build_path.display()), e))?;
        tracing::info!(env = key, seconds = started.elapsed().as_secs_f64(), "environment built");
        Ok(())
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Local
    }

    async fn cleanup(&self) -> Result<usize, SandboxError> {
        Ok(self.sweep_orphans())
    }

    async fn ensure_env(&self, env: &PreparedEnv) -> Result<EnvHandle, SandboxError> {
        let dir = self.env_dir(&env.key);
        let handle = EnvHandle::Local { venv_dir: dir.join("venv"), testbed: dir.join("testbed") };
        if Self::is_ready(&dir, &env.spec).await {
            return Ok(handle);
        }
        // One build per key: a task lock within this process, a file lock across processes.
        let key_lock = self.key_lock(&env.key);
        let _in_process = key_lock.lock().await;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| SandboxError::io(format!("creating {}", dir.display()), e))?;
        let _file_lock = FileLock::acquire(dir.join(".lock")).await?;
        if Self::is_ready(&dir, &env.spec).await {
            return Ok(handle);
        }
        self.build_env(env, &dir).await?;
        Ok(handle)
    }

    async fn create(
        &self,
        env: &EnvHandle,
        workspace: Option<&Path>,
        limits: &Limits,
    ) -> Result<Box<dyn Sandbox>, SandboxError> {
        Ok(Box::new(self.create_local(env, workspace, limits).await?))
    }
}

/// A live bubblewrap sandbox: a host dir holding `testbed/` and `tmp/`, and a cgroup.
#[derive(Debug)]
pub struct LocalSandbox {
    inner: Option<Inner>,
    bwrap: PathBuf,
    base_env: Vec<(String, String)>,
}

#[derive(Debug)]
struct Inner {
    dir: tempfile::TempDir,
    cgroup: Cgroup,
    rlimits: cgroup::RlimitFallback,
    mounts: Mounts,
}

impl LocalSandbox {
    fn inner(&self) -> Result<&Inner, SandboxError> {
        self.inner.as_ref().ok_or_else(|| SandboxError::Setup("the sandbox was destroyed".into()))
    }

    /// The sandbox's host dir (`testbed/` and `tmp/` inside); `None` once destroyed.
    pub fn host_dir(&self) -> Option<&Path> {
        self.inner.as_ref().map(|i| i.dir.path())
    }

    /// The cgroup dirs holding the sandbox's limits (empty once destroyed or without cgroups).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.inner.as_ref().map(|i| i.cgroup.dirs()).unwrap_or_default()
    }

    /// Host pids of every process now running in the sandbox (needs the pids or memory cgroup).
    pub fn live_pids(&self) -> Vec<i32> {
        self.inner.as_ref().map(|i| i.cgroup.pids()).unwrap_or_default()
    }

    /// Runs `true`: a sandbox that cannot start says why now, not on the first command.
    async fn probe(&self) -> Result<(), SandboxError> {
        let out = self.exec(&ExecRequest::new("true", Duration::from_secs(60))).await?;
        if out.exit_code != Some(0) {
            return Err(SandboxError::Setup(format!(
                "bwrap could not start a sandbox (exit {:?}): {}",
                out.exit_code,
                out.output.trim()
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sandbox for LocalSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Local
    }

    async fn exec(&self, request: &ExecRequest) -> Result<ExecOutput, SandboxError> {
        let inner = self.inner()?;
        let ctx = RunContext {
            bwrap: &self.bwrap,
            mounts: &inner.mounts,
            base_env: &self.base_env,
            cgroup: Some(&inner.cgroup),
            rlimits: inner.rlimits,
        };
        bwrap::run(&ctx, request).await
    }

    async fn write_file(&self, path: &str, contents: &[u8]) -> Result<(), SandboxError> {
        let rel = files::sandbox_rel_path(path)?;
        let root = self.inner()?.dir.path().to_path_buf();
        let contents = contents.to_vec();
        tokio::task::spawn_blocking(move || files::write_in_root(&root, &rel, &contents))
            .await
            .map_err(|e| SandboxError::Other(format!("writing {path}: {e}")))?
            .map_err(|e| SandboxError::io(format!("writing {path} in the sandbox"), e))
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        let rel = files::sandbox_rel_path(path)?;
        let root = self.inner()?.dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || files::read_in_root(&root, &rel))
            .await
            .map_err(|e| SandboxError::Other(format!("reading {path}: {e}")))?
            .map_err(|e| SandboxError::io(format!("reading {path} in the sandbox"), e))
    }

    async fn destroy(&mut self) -> Result<(), SandboxError> {
        let Some(inner) = self.inner.take() else {
            return Ok(());
        };
        let Inner { dir, cgroup, .. } = inner;
        let cgroup_result = cgroup.remove().await;
        let path = dir.path().to_path_buf();
        let dir_result = tokio::task::spawn_blocking(move || remove_sandbox_dir(dir))
            .await
            .map_err(|e| SandboxError::Other(format!("removing {}: {e}", path.display())))?;
        cgroup_result.map_err(|e| SandboxError::io(format!("removing cgroups {:?}", cgroup.dirs()), e))?;
        dir_result.map_err(|e| SandboxError::io(format!("removing {}", path.display()), e))?;
        tracing::debug!(sandbox = %path.display(), "local sandbox destroyed");
        Ok(())
    }
}

impl Drop for LocalSandbox {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            // The cgroup's own Drop kills and removes it; TempDir's removes the dir.
            if let Err(e) = inner.cgroup.remove_blocking() {
                tracing::warn!(cgroups = ?inner.cgroup.dirs(), error = %e, "cgroup not removed on drop");
            }
            let path = inner.dir.path().to_path_buf();
            if let Err(e) = remove_sandbox_dir(inner.dir) {
                tracing::warn!(sandbox = %path.display(), error = %e, "sandbox dir not removed on drop");
            }
        }
    }
}

/// Removes a sandbox's dir with its owner file last, so that a process killed while
/// removing it (a testbed takes a while) leaves a dir a later [`LocalBackend::sweep_orphans`]
/// recognizes as its own to sweep, not an ownerless one it must leave alone for an hour.
fn remove_sandbox_dir(dir: tempfile::TempDir) -> std::io::Result<()> {
    let path = dir.keep();
    for entry in std::fs::read_dir(&path)? {
        let entry = entry?;
        if entry.file_name() == OWNER_FILE {
            continue;
        }
        let result = match entry.file_type()? {
            t if t.is_dir() => std::fs::remove_dir_all(entry.path()),
            _ => std::fs::remove_file(entry.path()),
        };
        match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::remove_dir_all(&path)
}

/// An exclusive `flock` on a file, released on drop.
struct FileLock {
    file: std::fs::File,
}

impl FileLock {
    async fn acquire(path: PathBuf) -> Result<FileLock, SandboxError> {
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| SandboxError::io(format!("opening lock {}", path.display()), e))?;
            loop {
                // SAFETY: flock on a descriptor we own.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                    return Ok(FileLock { file });
                }
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(SandboxError::io(format!("locking {}", path.display()), err));
                }
            }
        })
        .await
        .map_err(|e| SandboxError::Other(format!("waiting for the build lock: {e}")))?
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor we own.
        unsafe {
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// `cp -a` of a directory tree (keeps `.git`, modes, symlinks).
async fn copy_tree(from: &Path, to: &Path) -> Result<(), SandboxError> {
    let out = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("-T")
        .arg("--")
        .arg(from)
        .arg(to)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| SandboxError::io(format!("running cp -a {} {}", from.display(), to.display()), e))?;
    if !out.status.success() {
        return Err(SandboxError::Setup(format!(
            "copying {} to {} failed: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A sandbox's `/tmp` on the host: world-writable with the sticky bit, like `/tmp`.
async fn make_tmp_dir(path: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir(path)
        .await
        .map_err(|e| SandboxError::io(format!("creating {}", path.display()), e))?;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o1777))
        .await
        .map_err(|e| SandboxError::io(format!("chmod {}", path.display()), e))
}

async fn remove_path(path: &Path) -> Result<(), SandboxError> {
    let result = match tokio::fs::symlink_metadata(path).await {
        Ok(m) if m.is_dir() => tokio::fs::remove_dir_all(path).await,
        Ok(_) => tokio::fs::remove_file(path).await,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|e| SandboxError::io(format!("removing {}", path.display()), e))
}

async fn log_line(log: &mut tokio::fs::File, path: &Path, text: &str) -> Result<(), SandboxError> {
    log.write_all(text.as_bytes())
        .await
        .map_err(|e| SandboxError::io(format!("writing {}", path.display()), e))?;
    log.flush().await.map_err(|e| SandboxError::io(format!("writing {}", path.display()), e))
}

fn dir_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Quotes one word for `bash -c`.
fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The installation prefix of a Python (`…/versions/3.11.7` for `…/versions/3.11.7/bin/python3`),
/// as named and as resolved, unless it lies under `/usr` (bound anyway).
fn python_binds_of_interpreter(python: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut add = |exe: &Path| {
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            if !prefix.starts_with("/usr") && prefix != Path::new("/") && !out.iter().any(|p: &PathBuf| p == prefix) {
                out.push(prefix.to_path_buf());
            }
        }
    };
    add(python);
    if let Ok(real) = std::fs::canonicalize(python) {
        add(&real);
    }
    out
}

/// The Python installation a venv points at (`home = …/bin` in its `pyvenv.cfg`), as
/// named and as resolved, unless it lies under `/usr`.
fn python_binds_of_venv(venv: &Path) -> Vec<PathBuf> {
    let Ok(cfg) = std::fs::read_to_string(venv.join("pyvenv.cfg")) else {
        return Vec::new();
    };
    let Some(home) = cfg.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == "home").then(|| PathBuf::from(v.trim()))
    }) else {
        return Vec::new();
    };
    let candidates = [home.parent().map(Path::to_path_buf), std::fs::canonicalize(&home).ok().and_then(|b| b.parent().map(Path::to_path_buf))];
    let mut out: Vec<PathBuf> = Vec::new();
    for prefix in candidates.into_iter().flatten() {
        if !prefix.starts_with("/usr") && prefix != Path::new("/") && !out.contains(&prefix) {
            out.push(prefix);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_quotes_only_when_needed() {
        assert_eq!(shell_quote("pytest"), "pytest");
        assert_eq!(shell_quote("/root/.pyenv/versions/3.11.7/bin/python3"), "/root/.pyenv/versions/3.11.7/bin/python3");
        assert_eq!(shell_quote("pytest<9"), "'pytest<9'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn python_prefix_is_bound_unless_under_usr() {
        assert_eq!(
            python_binds_of_interpreter(Path::new("/nonexistent/versions/3.11.7/bin/python3")),
            vec![PathBuf::from("/nonexistent/versions/3.11.7")]
        );
        assert!(python_binds_of_interpreter(Path::new("/usr/bin/python3")).is_empty());
    }

    #[test]
    fn sandbox_dir_removal_removes_every_entry_and_follows_no_links() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep.txt"), "x").unwrap();
        let parent = tempfile::tempdir().unwrap();
        let dir = tempfile::Builder::new().prefix("sbx-").tempdir_in(parent.path()).unwrap();
        let root = dir.path().to_path_buf();
        std::fs::write(root.join(OWNER_FILE), "1").unwrap();
        std::fs::create_dir_all(root.join("testbed/pkg/sub")).unwrap();
        std::fs::write(root.join("testbed/pkg/sub/a.py"), "pass").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("testbed/link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("tmp")).unwrap();
        remove_sandbox_dir(dir).unwrap();
        assert!(!root.exists());
        assert!(outside.path().join("keep.txt").exists(), "a link was followed");
    }
}
