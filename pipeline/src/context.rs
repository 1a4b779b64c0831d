//! The run's context, read once from the process environment at start-up: cache and pyenv
//! roots, environment specs, and the sandbox backend. Stages receive these as values.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use swegym_sandbox::docker::{DockerBackend, DockerOptions};
use swegym_sandbox::local::LocalBackend;
use swegym_sandbox::source::SourceOptions;
use swegym_sandbox::{Backend, EnvSpecs, SandboxKind};

use crate::exit::Exit;

/// Environment specs shipped with swegym, compiled in: (name, TOML).
const BUILTIN_ENV_SPECS: &[(&str, &str)] =
    &[("datasets/swebench-lite-marshmallow/environments.toml", include_str!("../../datasets/swebench-lite-marshmallow/environments.toml"))];

/// Which sandbox backend, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    Local,
    Docker,
}

impl From<BackendArg> for SandboxKind {
    fn from(b: BackendArg) -> SandboxKind {
        match b {
            BackendArg::Local => SandboxKind::Local,
            BackendArg::Docker => SandboxKind::Docker,
        }
    }
}

/// What the process environment says, resolved once.
#[derive(Debug, Clone)]
pub struct Context {
    /// `$SWEGYM_CACHE`, else `~/.cache/swegym`.
    pub cache_root: PathBuf,
    /// `$PYENV_ROOT`, else `~/.pyenv`.
    pub pyenv_root: PathBuf,
    /// `$DOCKER_HOST`, if set.
    pub docker_host: Option<String>,
    /// What a loaded dataset may hold (`--allow-no-fail-to-pass`).
    pub task_load: swegym_schema::LoadOptions,
}

impl Context {
    pub fn from_env() -> anyhow::Result<Context> {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
        let cache_root = std::env::var_os("SWEGYM_CACHE").map(PathBuf::from).unwrap_or_else(|| home.join(".cache/swegym"));
        let pyenv_root = std::env::var_os("PYENV_ROOT").map(PathBuf::from).unwrap_or_else(|| home.join(".pyenv"));
        std::fs::create_dir_all(&cache_root).with_context(|| format!("creating the cache dir {}", cache_root.display()))?;
        Ok(Context {
            cache_root,
            pyenv_root,
            docker_host: std::env::var("DOCKER_HOST").ok().filter(|s| !s.is_empty()),
            task_load: swegym_schema::LoadOptions::default(),
        })
    }

    pub fn source_options(&self) -> SourceOptions {
        SourceOptions { cache_root: self.cache_root.clone(), pyenv_root: self.pyenv_root.clone() }
    }

    /// The built-in specs, then `environments.toml` beside the dataset, then each `--env-specs`.
    pub fn env_specs(&self, dataset: &Path, extra: &[PathBuf]) -> anyhow::Result<EnvSpecs> {
        let mut specs = EnvSpecs::default();
        for (name, text) in BUILTIN_ENV_SPECS {
            specs.load_str(text, Path::new("."), Path::new(name)).map_err(|e| Exit::bad_input(e.to_string()))?;
        }
        if let Some(beside) = dataset.parent().map(|d| d.join("environments.toml")) {
            if beside.exists() {
                specs.load_file(&beside).map_err(|e| Exit::bad_input(e.to_string()))?;
            }
        }
        for path in extra {
            specs.load_file(path).map_err(|e| Exit::bad_input(e.to_string()))?;
        }
        Ok(specs)
    }

    /// Connects the chosen backend; for docker, also removes what killed runs left and
    /// arranges removal of this run's containers on Ctrl-C.
    pub async fn backend(&self, kind: BackendArg) -> anyhow::Result<Arc<dyn Backend>> {
        match kind {
            BackendArg::Local => {
                let Some(bwrap) = which("bwrap") else {
                    return Err(Exit::infra("bubblewrap (`bwrap`) not found: run `make setup` (or `apt-get install bubblewrap`)"));
                };
                // By its full path: bwrap starts with an empty environment (no PATH to search).
                let backend = LocalBackend::new(self.cache_root.clone()).with_bwrap(bwrap);
                backend.sweep_orphans();
                Ok(Arc::new(backend))
            }
            BackendArg::Docker => {
                let options = DockerOptions { host: self.docker_host.clone(), ..DockerOptions::default() };
                let backend = DockerBackend::connect(self.cache_root.clone(), options).await.map_err(|e| Exit::infra(e.to_string()))?;
                match backend.cleanup_orphans().await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(containers = n, "removed containers left by killed swegym runs"),
                    Err(e) => tracing::warn!(error = %e, "could not look for leftover containers"),
                }
                backend.spawn_ctrl_c_cleanup();
                Ok(Arc::new(backend))
            }
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

impl BackendArg {
    pub fn name(self) -> &'static str {
        SandboxKind::from(self).as_str()
    }
}
