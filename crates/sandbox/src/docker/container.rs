//! One container per sandbox: created with no network, resource limits, a read-only root
//! with `/testbed` and `/tmp` as the only writable places, `docker-init` + `sleep infinity`
//! as PID 1; commands by `docker exec`, files by tar; removed on `destroy`, on drop, and by
//! the leftover sweep (containers are labelled with this process's pid).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures::TryStreamExt;

use super::run::{run_exec, shell_quote, unique_token, ExecPlan};
use super::{is_not_found, tarball, Connection};
use crate::{ExecOutput, ExecRequest, Limits, SandboxError, SandboxKind, TESTBED, VENV};

/// Label on every container swegym makes (the leftover sweep looks for it).
pub const LABEL: &str = "swegym";
/// Label holding the pid of the process that made the container.
pub const LABEL_PID: &str = "swegym.pid";
/// Label holding the host name of the process that made the container.
pub const LABEL_HOST: &str = "swegym.host";
/// Label saying what the container is for (`sandbox`, `build`).
pub const LABEL_ROLE: &str = "swegym.role";

/// Writable places inside a sandbox whose root is read-only (both are volumes, so the tar
/// archive endpoint can write there; a tmpfs would hide what `docker cp` writes).
pub const WRITABLE_ROOTS: [&str; 2] = [TESTBED, "/tmp"];

/// `PATH` inside sandboxes built by swegym: the venv first.
pub(crate) const VENV_PATH: &str = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const PLAIN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Prepended to every command in a SWE-bench-convention image.
const SWEBENCH_ACTIVATE: &str = "source /opt/miniconda3/bin/activate >/dev/null 2>&1 && conda activate testbed >/dev/null 2>&1 \
    || { echo 'swegym: cannot activate conda env testbed (/opt/miniconda3) in this image' >&2; exit 125; }";

/// What kind of image the container runs, which decides the command environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// Built by swegym: venv at /opt/venv.
    Venv,
    /// SWE-bench convention: conda env `testbed` under /opt/miniconda3.
    SweBench,
}

/// How to make a container.
pub(crate) struct ContainerPlan<'a> {
    pub image: &'a str,
    pub name: String,
    pub role: &'a str,
    pub limits: Option<&'a Limits>,
    pub cpu_shares: Option<i64>,
    pub readonly_rootfs: bool,
    /// Start `/testbed` empty (a workspace will be uploaded) instead of a copy of the image's.
    pub empty_testbed: bool,
}

impl<'a> ContainerPlan<'a> {
    /// A writable, unlimited container that builds an image from `image` (committed after).
    pub fn build(image: &'a str, name: String) -> ContainerPlan<'a> {
        ContainerPlan { image, name, role: "build", limits: None, cpu_shares: None, readonly_rootfs: false, empty_testbed: false }
    }
}

/// The labels of containers made by this process.
pub(crate) fn own_labels(role: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL.to_string(), "1".to_string()),
        (LABEL_PID.to_string(), std::process::id().to_string()),
        (LABEL_HOST.to_string(), host_name()),
        (LABEL_ROLE.to_string(), role.to_string()),
    ])
}

/// Docker's default capabilities that no sandbox keeps.
const DROPPED_CAPABILITIES: [&str; 7] = ["AUDIT_WRITE", "MKNOD", "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETPCAP", "SYS_CHROOT"];

/// This machine's host name (labels containers so a sweep on another host leaves them alone).
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// Creates and starts a container; on any failure after creation it is removed again.
pub(crate) async fn start_container(docker: &Docker, plan: &ContainerPlan<'_>) -> Result<String, SandboxError> {
    let mut mounts = Vec::new();
    if plan.readonly_rootfs {
        mounts.push(volume_mount(TESTBED, plan.empty_testbed));
        mounts.push(volume_mount("/tmp", false));
    } else if plan.empty_testbed {
        mounts.push(volume_mount(TESTBED, true));
    }
    let host_config = HostConfig {
        network_mode: Some("none".into()),
        init: Some(true),
        readonly_rootfs: Some(plan.readonly_rootfs),
        memory: plan.limits.map(|l| l.memory_bytes as i64),
        memory_swap: plan.limits.map(|l| l.memory_bytes as i64),
        pids_limit: plan.limits.map(|l| l.max_pids as i64),
        cpu_shares: plan.cpu_shares,
        security_opt: Some(vec!["no-new-privileges".into()]),
        // Of Docker's default capabilities, root in the container keeps only those that file
        // work and process control need (files copied in keep the host's owners, so root must
        // still write what another uid owns): no raw sockets, device nodes, chroot, binding
        // low ports, audit writes or file capabilities.
        cap_drop: Some(DROPPED_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
        mounts: if mounts.is_empty() { None } else { Some(mounts) },
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(plan.image.to_string()),
        cmd: Some(vec!["sleep".into(), "infinity".into()]),
        entrypoint: Some(vec![]),
        labels: Some(own_labels(plan.role)),
        network_disabled: Some(true),
        working_dir: Some(TESTBED.into()),
        host_config: Some(host_config),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new().name(&plan.name).build();
    let created = docker.create_container(Some(options), body).await.map_err(|e| {
        if is_not_found(&e) {
            SandboxError::Docker(format!(
                "image {} is not on this docker host; build it (swegym builds its own images) or load it with `docker load` — no registry can be pulled from",
                plan.image
            ))
        } else {
            SandboxError::Docker(format!("creating container {} from {}: {e}", plan.name, plan.image))
        }
    })?;
    if let Err(e) = docker.start_container(&created.id, None).await {
        remove_container(docker, &created.id).await;
        return Err(SandboxError::Docker(format!("starting container {} from {}: {e}", plan.name, plan.image)));
    }
    Ok(created.id)
}

fn volume_mount(target: &str, no_copy: bool) -> Mount {
    Mount {
        target: Some(target.into()),
        typ: Some(MountType::VOLUME),
        volume_options: Some(MountVolumeOptions { no_copy: Some(no_copy), ..Default::default() }),
        ..Default::default()
    }
}

/// Force-removes a container and its anonymous volumes; a missing container is fine.
pub(crate) async fn remove_container(docker: &Docker, id: &str) -> bool {
    // The daemon can refuse while it is still tearing the container down (fuse-overlayfs
    // "device busy", "removal already in progress"): retry a few times before giving up.
    let mut last = None;
    for attempt in 0..5u32 {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match docker.remove_container(id, Some(options)).await {
            Ok(()) => return true,
            Err(e) if is_not_found(&e) => return true,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
    }
    if let Some(e) = last {
        tracing::warn!(container = id, error = %e, "cannot remove container");
    }
    false
}

/// Uploads a host directory's contents to `dest` (an existing directory) in the container.
pub(crate) async fn upload_dir(
    docker: &Docker,
    container: &str,
    src: &Path,
    dest: &str,
    exclude: Option<tarball::Exclude>,
) -> Result<(), SandboxError> {
    upload_tree(docker, container, src, dest, PathBuf::new(), exclude).await
}

/// Uploads `src` so that it appears at `dest_root/dest_prefix` in the container.
pub(crate) async fn upload_tree(
    docker: &Docker,
    container: &str,
    src: &Path,
    dest_root: &str,
    dest_prefix: PathBuf,
    exclude: Option<tarball::Exclude>,
) -> Result<(), SandboxError> {
    if !src.is_dir() {
        return Err(SandboxError::Other(format!("{} is not a directory; cannot copy it into the container", src.display())));
    }
    let body = bollard::body_try_stream(tarball::dir_stream(src.to_path_buf(), dest_prefix, exclude));
    let options = UploadToContainerOptionsBuilder::new().path(dest_root).build();
    docker
        .upload_to_container(container, Some(options), body)
        .await
        .map_err(|e| SandboxError::Docker(format!("copying {} into container {container} at {dest_root}: {e}", src.display())))
}

/// A live docker sandbox. Removed by [`crate::Sandbox::destroy`], or on drop.
pub struct DockerSandbox {
    docker: Docker,
    conn: Arc<Connection>,
    id: String,
    name: String,
    flavor: Flavor,
    readonly_rootfs: bool,
    removed: bool,
}

impl std::fmt::Debug for DockerSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerSandbox").field("name", &self.name).field("id", &self.id).field("removed", &self.removed).finish()
    }
}

impl DockerSandbox {
    pub(crate) fn new(docker: Docker, conn: Arc<Connection>, id: String, name: String, flavor: Flavor, readonly_rootfs: bool) -> Self {
        DockerSandbox { docker, conn, id, name, flavor, readonly_rootfs, removed: false }
    }

    /// The container's name (`swegym-sbx-…`).
    pub fn container_name(&self) -> &str {
        &self.name
    }

    /// The container's id.
    pub fn container_id(&self) -> &str {
        &self.id
    }

    fn exec_env(&self, request: &ExecRequest) -> Vec<String> {
        let mut env = match self.flavor {
            Flavor::Venv => vec![
                format!("PATH={VENV_PATH}"),
                format!("VIRTUAL_ENV={VENV}"),
                "PIP_NO_INDEX=1".to_string(),
                "PIP_DISABLE_PIP_VERSION_CHECK=1".to_string(),
            ],
            Flavor::SweBench => vec![format!("PATH={PLAIN_PATH}")],
        };
        env.extend(["HOME=/tmp".to_string(), "LANG=C.UTF-8".to_string(), "PYTHONUNBUFFERED=1".to_string()]);
        env.extend(request.env.iter().map(|(k, v)| format!("{k}={v}")));
        env
    }

    /// Where a file at `path` can be uploaded: (upload root, path relative to it).
    fn upload_target(&self, path: &str) -> Result<(String, PathBuf), SandboxError> {
        let p = Path::new(path);
        if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(SandboxError::Other(format!("sandbox path {path:?} must be absolute without `..`")));
        }
        for root in WRITABLE_ROOTS {
            if let Ok(rel) = p.strip_prefix(root) {
                if rel.as_os_str().is_empty() {
                    break;
                }
                return Ok((root.to_string(), rel.to_path_buf()));
            }
        }
        if self.readonly_rootfs {
            return Err(SandboxError::Other(format!("cannot write {path}: only {} and /tmp are writable in this sandbox", TESTBED)));
        }
        let rel = p.strip_prefix("/").unwrap_or(p).to_path_buf();
        Ok(("/".to_string(), rel))
    }

    fn ensure_live(&self) -> Result<(), SandboxError> {
        if self.removed {
            return Err(SandboxError::Other(format!("sandbox {} was destroyed", self.name)));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::Sandbox for DockerSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Docker
    }

    async fn exec(&self, request: &ExecRequest) -> Result<ExecOutput, SandboxError> {
        self.ensure_live()?;
        let script = match self.flavor {
            Flavor::Venv => request.command.clone(),
            Flavor::SweBench => format!("{SWEBENCH_ACTIVATE}\n{}", request.command),
        };
        let plan = ExecPlan {
            container: &self.id,
            script,
            cwd: request.cwd.as_deref().unwrap_or(TESTBED),
            env: self.exec_env(request),
            timeout: request.timeout,
            output_cap: request.output_cap,
        };
        let out = run_exec(&self.docker, plan).await?;
        tracing::debug!(container = %self.name, exit_code = ?out.exit_code, timed_out = out.timed_out, duration_ms = out.duration.as_millis() as u64, "exec");
        Ok(out)
    }

    async fn write_file(&self, path: &str, contents: &[u8]) -> Result<(), SandboxError> {
        self.ensure_live()?;
        let (root, rel) = self.upload_target(path)?;
        let tar = tarball::single_file_tar(&rel, contents)?;
        let options = UploadToContainerOptionsBuilder::new().path(&root).build();
        self.docker
            .upload_to_container(&self.id, Some(options), bollard::body_full(tar.into()))
            .await
            .map_err(|e| SandboxError::Docker(format!("writing {path} in sandbox {}: {e}", self.name)))
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        self.ensure_live()?;
        let options = DownloadFromContainerOptionsBuilder::new().path(path).build();
        let chunks: Vec<bytes::Bytes> = self.docker.download_from_container(&self.id, Some(options)).try_collect().await.map_err(|e| {
            if is_not_found(&e) {
                SandboxError::Other(format!("{path} does not exist in sandbox {}", self.name))
            } else {
                SandboxError::Docker(format!("reading {path} from sandbox {}: {e}", self.name))
            }
        })?;
        let tar: Vec<u8> = chunks.concat();
        tarball::first_file_from_tar(&tar, path)
    }

    async fn destroy(&mut self) -> Result<(), SandboxError> {
        if self.removed {
            return Ok(());
        }
        let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match self.docker.remove_container(&self.id, Some(options)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(SandboxError::Docker(format!("removing container {}: {e}", self.name))),
        }
        self.removed = true;
        tracing::debug!(container = %self.name, "sandbox removed");
        Ok(())
    }
}

impl Drop for DockerSandbox {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // Synchronous and runtime-independent: a fresh client on a fresh runtime in its own
        // thread, so this works inside or outside tokio and during a panic's unwinding.
        let conn = Arc::clone(&self.conn);
        let id = self.id.clone();
        let name = self.name.clone();
        let joined = std::thread::Builder::new().name("swegym-docker-drop".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let docker = conn.client().await.ok()?;
                Some(remove_container(&docker, &id).await)
            })
        });
        match joined.map(|h| h.join()) {
            Ok(Ok(Some(true))) => tracing::debug!(container = %name, "sandbox removed on drop"),
            _ => tracing::warn!(container = %name, "could not remove the container on drop; `cleanup_leftovers` will"),
        }
        self.removed = true;
    }
}

/// A fresh sandbox container name.
pub(crate) fn sandbox_name() -> String {
    format!("swegym-sbx-{}", unique_token())
}

/// Runs a build step with a long timeout; its failure becomes [`SandboxError::EnvBuild`].
pub(crate) async fn build_step(
    docker: &Docker,
    container: &str,
    key: &str,
    step: &str,
    script: String,
    env: Vec<String>,
    timeout: Duration,
) -> Result<ExecOutput, SandboxError> {
    tracing::info!(env = key, step, "env build step");
    let plan = ExecPlan { container, script, cwd: TESTBED, env, timeout, output_cap: 256 * 1024 };
    let out = run_exec(docker, plan).await?;
    if out.exit_code == Some(0) {
        return Ok(out);
    }
    let tail = crate::exec::tail_chars(&out.output, 4000);
    let tail = if out.timed_out { format!("{tail}\n[timed out after {}s]", timeout.as_secs()) } else { tail };
    Err(SandboxError::EnvBuild { key: key.to_string(), step: step.to_string(), exit_code: out.exit_code, tail })
}

/// `pip install --no-index --find-links /wheels <reqs…>` with each requirement quoted.
pub(crate) fn pip_install_script(requirements: &[String]) -> String {
    let reqs: Vec<String> = requirements.iter().map(|r| shell_quote(r)).collect();
    format!("pip install --no-index --find-links {} {}", crate::WHEELS, reqs.join(" "))
}
