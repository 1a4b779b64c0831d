//! The images swegym builds, offline, on the docker host:
//!
//! ```text
//! swegym-base:<recipe-hash>  (+ swegym-base:<suite>)   mmdebstrap rootfs, imported via the engine API
//!   └ swegym-py:<X.Y.Z>-<hash>                          + the pyenv build copied to its host path
//!       └ swegym-env:<key>                              + /testbed, /opt/venv, install steps (committed)
//! ```
//!
//! Every build is idempotent (an existing tag is reused), serialized per image name inside
//! the process (a tokio mutex) and across processes (a lock file under
//! `<cache_root>/docker/locks/`), and leaves nothing half made: an image is only tagged
//! once its container finished every step, and the build container is always removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::query_parameters::{CommitContainerOptionsBuilder, CreateImageOptionsBuilder, TagImageOptionsBuilder};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::container::{self, build_step, ContainerPlan, VENV_PATH};
use super::{tarball, BaseImageRecipe, DockerBackend};
use crate::{PreparedEnv, SandboxError, TESTBED, VENV, WHEELS};

/// Bump when the way images are built changes, so old images are not reused.
const RECIPE_VERSION: u32 = 1;
/// Repository names of the images.
pub const BASE_REPO: &str = "swegym-base";
pub const PYTHON_REPO: &str = "swegym-py";
pub const ENV_REPO: &str = "swegym-env";
/// Image label naming the image an env image was built on (a changed parent means rebuild).
const LABEL_PARENT: &str = "swegym.parent";

fn short_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Docker tags allow `[A-Za-z0-9_.-]`, at most 128 characters.
pub(crate) fn sanitize_tag(tag: &str) -> String {
    let clean: String = tag.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '-' }).collect();
    if clean.len() <= 128 {
        return clean;
    }
    format!("{}-{}", &clean[..115], short_hash(tag))
}

impl BaseImageRecipe {
    /// Hash of everything that decides the rootfs' content.
    pub fn hash(&self) -> String {
        short_hash(&format!("v{RECIPE_VERSION}|{}|{:?}|{}", self.suite, self.mirror, self.packages.join(",")))
    }
}

/// Where a pyenv build lives: its prefix (`…/versions/3.11.7`) and version name.
fn python_prefix(python: &Path) -> Option<(PathBuf, String)> {
    let bin = python.parent()?;
    if bin.file_name()? != "bin" {
        return None;
    }
    let prefix = bin.parent()?;
    if prefix == Path::new("/usr") || prefix == Path::new("/usr/local") || prefix == Path::new("/") {
        return None;
    }
    let version = prefix.file_name()?.to_string_lossy().into_owned();
    Some((prefix.to_path_buf(), version))
}

/// Leaves out of the copied interpreter what a venv never uses: the base site-packages
/// (venvs are created without system site-packages), CPython's own test suite and the
/// static libpython.
fn python_exclude(rel: &Path) -> bool {
    let parts: Vec<_> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    match parts.as_slice() {
        [lib, py, sub, ..] if lib == "lib" && py.starts_with("python") => {
            (sub == "site-packages" && parts.len() > 3)
                || sub == "test"
                || (sub.starts_with("config-") && parts.last().is_some_and(|f| f.ends_with(".a")))
        }
        [lib, file] if lib == "lib" => file.starts_with("libpython") && file.ends_with(".a"),
        _ => false,
    }
}

impl DockerBackend {
    /// Builds `swegym-base:<recipe-hash>` (also tagged `swegym-base:<suite>`) when missing and
    /// returns its name: a Debian rootfs from `mmdebstrap` (or `debootstrap`), cached as a
    /// tarball under `<cache_root>/docker/`, imported through the engine API. No registry.
    pub async fn ensure_base_image(&self) -> Result<String, SandboxError> {
        let recipe = &self.options.base;
        let hash = recipe.hash();
        let image = format!("{BASE_REPO}:{hash}");
        let _guard = self.lock_image(&image).await?;
        if self.image_exists(&image).await? {
            self.tag(&image, BASE_REPO, &recipe.suite).await?;
            return Ok(image);
        }
        let started = Instant::now();
        let rootfs = self.cache_dir.join(format!("rootfs-{}-{hash}.tar", recipe.suite));
        if !rootfs.is_file() {
            build_rootfs(recipe, &rootfs).await?;
        }
        tracing::info!(image = %image, rootfs = %rootfs.display(), "importing the base rootfs");
        let options = CreateImageOptionsBuilder::new()
            .from_src("-")
            .repo(BASE_REPO)
            .tag(&hash)
            .message(&format!("swegym base image: debian {} minbase + {}", recipe.suite, recipe.packages.join(" ")))
            .changes(vec![
                format!("ENV PATH={}", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
                "ENV LANG=C.UTF-8".into(),
                format!("WORKDIR {TESTBED}"),
                "CMD [\"bash\"]".into(),
            ])
            .build();
        let body = bollard::body_try_stream(tarball::file_stream(rootfs.clone()));
        let mut progress = self.docker.create_image(Some(options), Some(body), None);
        while let Some(item) = progress.next().await {
            item.map_err(|e| SandboxError::Docker(format!("importing {} as {image}: {e}", rootfs.display())))?;
        }
        if !self.image_exists(&image).await? {
            return Err(SandboxError::Docker(format!("importing {} finished but {image} does not exist", rootfs.display())));
        }
        self.tag(&image, BASE_REPO, &recipe.suite).await?;
        tracing::info!(image = %image, secs = started.elapsed().as_secs_f64(), "base image ready");
        Ok(image)
    }

    /// The image with the interpreter `python` (a host pyenv build) at the same path, built
    /// on the base image when missing. Returns (image, interpreter path inside it). A python
    /// that is not a pyenv-style prefix (e.g. `/usr/bin/python3`) means the base's own
    /// python3 (Debian's 3.11).
    pub async fn ensure_python_image(&self, python: &Path) -> Result<(String, String), SandboxError> {
        let base = self.ensure_base_image().await?;
        let Some((prefix, version)) = python_prefix(python) else {
            return Ok((base, "/usr/bin/python3".to_string()));
        };
        if !python.exists() {
            return Err(SandboxError::Other(format!("python {} does not exist on this host", python.display())));
        }
        let stamp = std::fs::metadata(python).map(|m| format!("{}-{:?}", m.len(), m.modified().ok())).unwrap_or_default();
        let hash = short_hash(&format!("v{RECIPE_VERSION}|{base}|{}|{stamp}", prefix.display()));
        let image = format!("{PYTHON_REPO}:{}", sanitize_tag(&format!("{version}-{hash}")));
        let in_image = python.to_string_lossy().into_owned();
        let _guard = self.lock_image(&image).await?;
        if self.image_exists(&image).await? {
            return Ok((image, in_image));
        }
        let started = Instant::now();
        let key = format!("python {version}");
        let name = format!("swegym-build-py-{}", super::run::unique_token());
        let plan = ContainerPlan::build(&base, name);
        let id = container::start_container(&self.docker, &plan).await?;
        let result = async {
            let rel = prefix.strip_prefix("/").unwrap_or(&prefix).to_path_buf();
            container::upload_tree(&self.docker, &id, &prefix, "/", rel, Some(python_exclude)).await?;
            let check = format!("{} -c 'import sys, venv, ensurepip, zlib; print(sys.version)'", run_quote(&in_image));
            build_step(&self.docker, &id, &key, "check the copied interpreter", check, vec![], Duration::from_secs(120)).await?;
            self.commit(&id, &image, &base).await
        }
        .await;
        container::remove_container(&self.docker, &id).await;
        result?;
        tracing::info!(image = %image, secs = started.elapsed().as_secs_f64(), "python image ready");
        Ok((image, in_image))
    }

    /// Builds `swegym-env:<key>` when missing (or built on another parent): /testbed from
    /// `env.repo_dir`, the wheelhouse at /wheels, `python -m venv /opt/venv`, the spec's pip
    /// requirements and install commands (offline), /wheels removed, then committed.
    pub(crate) async fn ensure_env_image(&self, env: &PreparedEnv) -> Result<String, SandboxError> {
        let (parent, python) = self.ensure_python_image(&env.python).await?;
        let image = format!("{ENV_REPO}:{}", sanitize_tag(&env.key));
        let _guard = self.lock_image(&image).await?;
        if let Some(found_parent) = self.image_label(&image, LABEL_PARENT).await? {
            if found_parent == parent {
                return Ok(image);
            }
            tracing::info!(image = %image, old_parent = %found_parent, new_parent = %parent, "rebuilding env image on a new parent");
        }
        let started = Instant::now();
        let name = format!("swegym-build-env-{}", super::run::unique_token());
        let plan = ContainerPlan::build(&parent, name);
        let id = container::start_container(&self.docker, &plan).await?;
        let result = self.run_env_build(&id, env, &python).await.and(Ok(()));
        let result = match result {
            Ok(()) => self.commit(&id, &image, &parent).await,
            Err(e) => Err(e),
        };
        container::remove_container(&self.docker, &id).await;
        result?;
        tracing::info!(image = %image, secs = started.elapsed().as_secs_f64(), "env image ready");
        Ok(image)
    }

    async fn run_env_build(&self, id: &str, env: &PreparedEnv, python: &str) -> Result<(), SandboxError> {
        let key = &env.key;
        let timeout = self.options.build_step_timeout;
        let docker = &self.docker;
        let setup = format!("rm -rf {TESTBED} {WHEELS} && mkdir -p {TESTBED} {WHEELS}");
        build_step(docker, id, key, "prepare /testbed and /wheels", setup, vec![], Duration::from_secs(60)).await?;
        container::upload_dir(docker, id, &env.repo_dir, TESTBED, None).await?;
        if env.wheelhouse.is_dir() {
            container::upload_dir(docker, id, &env.wheelhouse, WHEELS, None).await?;
        }
        let build_env = vec![
            format!("PATH={VENV_PATH}"),
            format!("VIRTUAL_ENV={VENV}"),
            "PIP_NO_INDEX=1".to_string(),
            format!("PIP_FIND_LINKS={WHEELS}"),
            "PIP_NO_CACHE_DIR=1".to_string(),
            "PIP_DISABLE_PIP_VERSION_CHECK=1".to_string(),
            "HOME=/root".to_string(),
            "LANG=C.UTF-8".to_string(),
        ];
        let venv = format!("{} -m venv {VENV}", run_quote(python));
        build_step(docker, id, key, &venv, venv.clone(), build_env.clone(), timeout).await?;
        if !env.spec.pip.is_empty() {
            let pip = container::pip_install_script(&env.spec.pip);
            build_step(docker, id, key, &pip, pip.clone(), build_env.clone(), timeout).await?;
        }
        for command in &env.spec.install {
            build_step(docker, id, key, command, command.clone(), build_env.clone(), timeout).await?;
        }
        let cleanup = format!("rm -rf {WHEELS} && git config --system --add safe.directory '*'");
        build_step(docker, id, key, "remove /wheels", cleanup, vec![], Duration::from_secs(120)).await?;
        Ok(())
    }

    /// Commits a build container as `image`, labelled with the image it was built on.
    async fn commit(&self, container: &str, image: &str, parent: &str) -> Result<(), SandboxError> {
        let (repo, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
        let options =
            CommitContainerOptionsBuilder::new().container(container).repo(repo).tag(tag).pause(true).comment("built by swegym").build();
        let config = bollard::models::ContainerConfig {
            labels: Some(std::collections::HashMap::from([(LABEL_PARENT.to_string(), parent.to_string())])),
            cmd: Some(vec!["bash".into()]),
            working_dir: Some(TESTBED.into()),
            ..Default::default()
        };
        self.docker
            .commit_container(options, config)
            .await
            .map_err(|e| SandboxError::Docker(format!("committing container {container} as {image}: {e}")))?;
        Ok(())
    }

    async fn tag(&self, image: &str, repo: &str, tag: &str) -> Result<(), SandboxError> {
        let options = TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
        self.docker.tag_image(image, Some(options)).await.map_err(|e| SandboxError::Docker(format!("tagging {image} as {repo}:{tag}: {e}")))
    }

    /// Whether `image` exists on the docker host.
    pub async fn image_exists(&self, image: &str) -> Result<bool, SandboxError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if super::is_not_found(&e) => Ok(false),
            Err(e) => Err(SandboxError::Docker(format!("inspecting image {image}: {e}"))),
        }
    }

    /// `Some(value)` of a label when the image exists (`Some("")` when it lacks the label).
    async fn image_label(&self, image: &str, label: &str) -> Result<Option<String>, SandboxError> {
        match self.docker.inspect_image(image).await {
            Ok(found) => Ok(Some(found.config.and_then(|c| c.labels).and_then(|mut l| l.remove(label)).unwrap_or_default())),
            Err(e) if super::is_not_found(&e) => Ok(None),
            Err(e) => Err(SandboxError::Docker(format!("inspecting image {image}: {e}"))),
        }
    }
}

fn run_quote(word: &str) -> String {
    super::run::shell_quote(word)
}

/// Builds the rootfs tarball with mmdebstrap (preferred: it uses apt and the host's apt
/// configuration) or debootstrap, writing to a temporary name and renaming when complete.
async fn build_rootfs(recipe: &BaseImageRecipe, dest: &Path) -> Result<(), SandboxError> {
    let dir = dest.parent().expect("rootfs path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| SandboxError::io(format!("creating {}", dir.display()), e))?;
    let partial = dest.with_extension(format!("partial-{}.tar", std::process::id()));
    let started = Instant::now();
    let key = format!("base image ({})", recipe.suite);
    let result = if which("mmdebstrap") {
        let mut cmd = tokio::process::Command::new("mmdebstrap");
        cmd.arg("--variant=minbase")
            .arg("--format=tar")
            .arg(format!("--include={}", recipe.packages.join(",")))
            .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
            .arg("--dpkgopt=path-exclude=/usr/share/man/*")
            .arg("--dpkgopt=path-exclude=/usr/share/info/*")
            .arg(&recipe.suite)
            .arg(&partial);
        if let Some(mirror) = &recipe.mirror {
            cmd.arg(mirror);
        }
        tracing::info!(suite = %recipe.suite, dest = %dest.display(), "building the base rootfs with mmdebstrap (about 2 minutes)");
        run_host(cmd, &key, "mmdebstrap").await
    } else if which("debootstrap") {
        let root = tempfile::Builder::new()
            .prefix("swegym-rootfs-")
            .tempdir_in(dir)
            .map_err(|e| SandboxError::io(format!("creating a temp dir in {}", dir.display()), e))?;
        let mut cmd = tokio::process::Command::new("debootstrap");
        cmd.arg("--variant=minbase").arg(format!("--include={}", recipe.packages.join(","))).arg(&recipe.suite).arg(root.path());
        cmd.arg(recipe.mirror.as_deref().unwrap_or("http://deb.debian.org/debian"));
        tracing::info!(suite = %recipe.suite, dest = %dest.display(), "building the base rootfs with debootstrap");
        let built = run_host(cmd, &key, "debootstrap").await;
        match built {
            Ok(()) => {
                let mut tar = tokio::process::Command::new("tar");
                tar.arg("-C").arg(root.path()).arg("--numeric-owner").arg("-cf").arg(&partial).arg(".");
                run_host(tar, &key, "tar the debootstrap rootfs").await
            }
            Err(e) => Err(e),
        }
    } else {
        Err(SandboxError::Setup(
            "building the docker base image needs mmdebstrap or debootstrap on this host: `apt-get install mmdebstrap`".into(),
        ))
    };
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, dest).map_err(|e| SandboxError::io(format!("moving {} to {}", partial.display(), dest.display()), e))?;
    tracing::info!(dest = %dest.display(), secs = started.elapsed().as_secs_f64(), "base rootfs built");
    Ok(())
}

fn which(program: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| dir.join(program).is_file())
}

async fn run_host(mut cmd: tokio::process::Command, key: &str, step: &str) -> Result<(), SandboxError> {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = cmd.output().await.map_err(|e| SandboxError::io(format!("running {step}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let tail = crate::exec::tail_chars(&text, 4000);
    Err(SandboxError::EnvBuild { key: key.to_string(), step: step.to_string(), exit_code: out.status.code(), tail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_prefix_and_exclusions() {
        let (prefix, version) = python_prefix(Path::new("/root/.pyenv/versions/3.11.7/bin/python3.11")).unwrap();
        assert_eq!(prefix, Path::new("/root/.pyenv/versions/3.11.7"));
        assert_eq!(version, "3.11.7");
        assert!(python_prefix(Path::new("/usr/bin/python3")).is_none());
        assert!(python_exclude(Path::new("lib/python3.11/site-packages/numpy")));
        assert!(!python_exclude(Path::new("lib/python3.11/site-packages")));
        assert!(python_exclude(Path::new("lib/python3.11/test")));
        assert!(!python_exclude(Path::new("lib/python3.11/ensurepip")));
        assert!(python_exclude(Path::new("lib/python3.11/config-3.11-x86_64-linux-gnu/libpython3.11.a")));
        assert!(!python_exclude(Path::new("lib/libpython3.11.so.1.0")));
    }

    #[test]
    fn tags_are_sanitized() {
        assert_eq!(sanitize_tag("o__r-1.0-abc"), "o__r-1.0-abc");
        assert_eq!(sanitize_tag("a/b+c"), "a-b-c");
        assert!(sanitize_tag(&"x".repeat(300)).len() <= 128);
    }
}
