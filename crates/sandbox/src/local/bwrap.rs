//! One command in a bubblewrap sandbox: the mount table, the environment, and the run with
//! a timeout that kills the whole tree, an output cap, and the cgroup move.
//!
//! Layout inside: a read-only tmpfs root holding read-only binds of the host's `/usr`,
//! `/lib*`, `/bin`, `/sbin` (symlinks where the host has merged `/usr`), of the host's `/etc`
//! as every host user may read it (a filtered copy, see `etc.rs`: no `/etc/shadow`), the
//! Python installation the venv points at, `/opt/venv` (read-only, writable only while an
//! environment is built), `/testbed` and `/tmp` (host dirs of this sandbox, writable),
//! fresh `/proc` and `/dev`. All namespaces are new (user, mount, pid, net, ipc, uts,
//! cgroup), with every capability dropped and no further user namespaces allowed, so even
//! root inside cannot remount anything writable. Network: only an unconfigured loopback.
//!
//! bwrap starts with an empty environment (it is pid 1 inside, and `/proc/1/environ` is
//! readable there: swegym's own environment, API keys included, must never be it); the
//! command gets only the variables set with `--setenv`.
//!
//! Each command is `bwrap … -- bash -c <command>`; bubblewrap runs as pid 1 of the new pid
//! namespace, so when the command's shell ends, everything it left behind dies with it.
//! On timeout the bwrap process group and every process in the command's cgroup get
//! SIGKILL.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::cgroup::{Cgroup, RlimitFallback};
use crate::exec::OutputCap;
use crate::{ExecOutput, ExecRequest, SandboxError, TESTBED, VENV, WHEELS};

/// `PATH` inside every sandbox.
pub const SANDBOX_PATH: &str = "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin";

/// How long to wait for output after the command's process has ended.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The host dirs a sandbox binds.
#[derive(Debug, Clone)]
pub(crate) struct Mounts {
    /// Bound read-only at `/etc`: the world-readable copy of the host's.
    pub etc: PathBuf,
    /// Bound writable at [`TESTBED`].
    pub testbed: PathBuf,
    /// Bound writable at `/tmp`.
    pub tmp: PathBuf,
    /// Bound at [`VENV`]; writable only while an environment is built.
    pub venv: PathBuf,
    pub venv_writable: bool,
    /// Bound read-only at [`WHEELS`] while an environment is built.
    pub wheels: Option<PathBuf>,
    /// Extra host paths bound read-only at the same place (the Python the venv uses).
    pub ro_extra: Vec<PathBuf>,
}

/// Everything one command run needs besides the request.
pub(crate) struct RunContext<'a> {
    pub bwrap: &'a Path,
    pub mounts: &'a Mounts,
    /// Environment variables set before the request's own.
    pub base_env: &'a [(String, String)],
    /// The sandbox's cgroup; each command runs in a child of it.
    pub cgroup: Option<&'a Cgroup>,
    pub rlimits: RlimitFallback,
}

/// The host's top-level system dirs, as (name, symlink target or `None` for a dir).
fn system_entries() -> &'static [(String, Option<PathBuf>)] {
    static ENTRIES: OnceLock<Vec<(String, Option<PathBuf>)>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        let mut out = Vec::new();
        for name in ["usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let path = Path::new("/").join(name);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(&path) {
                        out.push((name.to_string(), Some(target)));
                    }
                }
                Ok(m) if m.is_dir() => out.push((name.to_string(), None)),
                _ => {}
            }
        }
        out
    })
}

/// The sandbox's default environment (before the request's own variables).
pub(crate) fn default_env() -> Vec<(String, String)> {
    vec![
        ("PATH".into(), SANDBOX_PATH.into()),
        ("HOME".into(), "/tmp".into()),
        ("VIRTUAL_ENV".into(), VENV.into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TMPDIR".into(), "/tmp".into()),
    ]
}

/// The full bwrap argument list for one command.
pub(crate) fn bwrap_args(mounts: &Mounts, env: &[(String, String)], cwd: &str, command: &str) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::with_capacity(64);
    let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
        for i in items {
            a.push(i.as_ref().to_os_string());
        }
    };
    push(&[
        &"--unshare-user",
        &"--disable-userns",
        &"--unshare-pid",
        &"--unshare-net",
        &"--unshare-ipc",
        &"--unshare-uts",
        &"--unshare-cgroup-try",
        &"--hostname",
        &"sandbox",
        &"--cap-drop",
        &"ALL",
        &"--die-with-parent",
        &"--new-session",
    ]);
    for (name, target) in system_entries() {
        let dest = format!("/{name}");
        match target {
            Some(t) => push(&[&"--symlink", t, &dest]),
            None if name == "etc" => push(&[&"--ro-bind", &mounts.etc, &dest]),
            None => push(&[&"--ro-bind", &dest, &dest]),
        }
    }
    for extra in &mounts.ro_extra {
        push(&[&"--ro-bind", extra, extra]);
    }
    push(&[&"--proc", &"/proc", &"--dev", &"/dev"]);
    push(&[&"--bind", &mounts.tmp, &"/tmp"]);
    push(&[&"--bind", &mounts.testbed, &TESTBED]);
    let venv_flag = if mounts.venv_writable { "--bind" } else { "--ro-bind" };
    push(&[&venv_flag, &mounts.venv, &VENV]);
    if let Some(wheels) = &mounts.wheels {
        push(&[&"--ro-bind", wheels, &WHEELS]);
    }
    // Last: the tmpfs root itself (mount points are made by now) becomes read-only.
    push(&[&"--remount-ro", &"/"]);
    push(&[&"--chdir", &cwd, &"--clearenv"]);
    for (k, v) in env {
        push(&[&"--setenv", k, v]);
    }
    push(&[&"--", &"bash", &"-c", &command]);
    a
}

fn check_env_name(name: &str) -> Result<(), SandboxError> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(SandboxError::Other(format!("invalid environment variable name {name:?}")));
    }
    Ok(())
}

static EXEC_SEQ: AtomicU64 = AtomicU64::new(0);

/// Runs one command in a new bubblewrap sandbox and waits for it (or its timeout).
pub(crate) async fn run(ctx: &RunContext<'_>, req: &ExecRequest) -> Result<ExecOutput, SandboxError> {
    let start = Instant::now();
    let mut env = ctx.base_env.to_vec();
    for (k, v) in &req.env {
        check_env_name(k)?;
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    let cwd = req.cwd.as_deref().unwrap_or(TESTBED);
    let args = bwrap_args(ctx.mounts, &env, cwd, &req.command);

    // The command's own cgroup, inside the sandbox's.
    let exec_cgroup = ctx.cgroup.map(|cg| cg.child(&format!("exec-{}", EXEC_SEQ.fetch_add(1, Ordering::Relaxed))));
    let procs_fds: Vec<OwnedFd> = match &exec_cgroup {
        Some(cg) => cg.open_procs().map_err(|e| SandboxError::io("opening cgroup.procs of the sandbox cgroup", e))?,
        None => Vec::new(),
    };
    let raw_fds: Vec<RawFd> = procs_fds.iter().map(|f| f.as_raw_fd()).collect();
    let rlimits = ctx.rlimits;

    // stdout and stderr share one pipe, so the output keeps its interleaving.
    let (reader, writer) = std::io::pipe().map_err(|e| SandboxError::io("creating the output pipe", e))?;
    let writer2 = writer.try_clone().map_err(|e| SandboxError::io("creating the output pipe", e))?;

    let mut cmd = tokio::process::Command::new(ctx.bwrap);
    // Nothing of swegym's environment reaches bwrap (pid 1 in the sandbox, its environ
    // readable there); the command's variables are the --setenv ones. With no PATH, a bare
    // `bwrap` is looked for in the C library's default path (/bin:/usr/bin); the binary
    // hands in the full path it found on its own PATH.
    cmd.env_clear()
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .kill_on_drop(true)
        .process_group(0);
    // SAFETY: the hook only calls write(2) and setrlimit(2), both async-signal-safe, on
    // descriptors and values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &raw_fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            rlimits.apply()
        });
    }
    let spawned = cmd.spawn();
    // Close our copies of the pipe's write end (held by `cmd`) so EOF can arrive.
    drop(cmd);
    drop(procs_fds);
    let mut child = spawned.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SandboxError::Setup(format!(
            "bwrap not found at `{}`: install bubblewrap (`apt-get install bubblewrap`, or run `make setup`)",
            ctx.bwrap.display()
        )),
        _ => SandboxError::io(format!("starting `{}`", ctx.bwrap.display()), e),
    })?;
    let pid = child.id();
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
        .map_err(|e| SandboxError::io("reading the output pipe", e))?;

    // If this future is dropped mid-run, `kill_on_drop` kills bwrap, `--die-with-parent`
    // its pid 1 (and so the namespace), and the command cgroup's `Drop` anything left.
    let mut cap = OutputCap::new(req.output_cap);
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    let mut status: Option<std::process::ExitStatus> = None;
    let mut timed_out = false;
    let mut escalated = false;
    let deadline = tokio::time::sleep(req.timeout);
    tokio::pin!(deadline);
    let grace = tokio::time::sleep(DRAIN_GRACE);
    tokio::pin!(grace);
    let mut grace_armed = false;

    loop {
        if eof && status.is_some() {
            break;
        }
        tokio::select! {
            read = pipe.read(&mut buf), if !eof => match read {
                Ok(0) => eof = true,
                Ok(n) => cap.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading sandbox output failed");
                    eof = true;
                }
            },
            waited = child.wait(), if status.is_none() => {
                let st = waited.map_err(|e| SandboxError::io("waiting for bwrap", e))?;
                status = Some(st);
                grace.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                grace_armed = true;
            },
            _ = &mut deadline, if status.is_none() && !timed_out => {
                timed_out = true;
                kill_sandboxed(pid, exec_cgroup.as_ref()).await;
                // bwrap itself now sees its pid 1 die and exits; give it a moment.
                grace.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                grace_armed = true;
            },
            _ = &mut grace, if grace_armed => {
                if status.is_none() && !escalated {
                    // bwrap did not exit by itself: kill it (and its process group) too.
                    escalated = true;
                    tracing::warn!(pid, "bwrap still running after its sandbox was killed; killing it");
                    kill_group(pid);
                    grace.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                    continue;
                }
                if status.is_none() {
                    tracing::warn!(pid, "bwrap did not exit after SIGKILL; giving up on it");
                }
                // Output still open after the process ended: stop reading here.
                break;
            },
        }
    }
    if let Some(cg) = &exec_cgroup {
        if let Err(e) = cg.remove().await {
            tracing::warn!(cgroups = ?cg.dirs(), error = %e, "command cgroup not removed; the sandbox's destroy will retry");
        }
    }
    let (output, truncated) = cap.finish();
    let exit_code = if timed_out { None } else { status.and_then(|s| s.code()) };
    Ok(ExecOutput { exit_code, output, truncated, timed_out, duration: start.elapsed() })
}

/// SIGKILL to everything inside the sandbox, sparing the outer bwrap process (our child),
/// which then sees its pid 1 die and exits by itself.
async fn kill_sandboxed(pid: Option<u32>, cgroup: Option<&Cgroup>) {
    let Some(pid) = pid else {
        return;
    };
    kill_children(pid);
    if let Some(cg) = cgroup {
        if !cg.kill_all_but(Some(pid as i32), Duration::from_secs(5)).await {
            tracing::warn!(cgroups = ?cg.dirs(), "processes left in the command cgroup after SIGKILL");
        }
    }
}

/// SIGKILL to the direct children of `pid` (bwrap's pid 1 in the sandbox's namespace).
fn kill_children(pid: u32) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for child in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
            // SAFETY: plain syscall on a child of our own unreaped child.
            unsafe {
                libc::kill(child, libc::SIGKILL);
            }
        }
    }
}

/// SIGKILL to bwrap's process group (bwrap and anything it left in its group).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: plain syscall; the child is not reaped yet, so its pgid is still ours.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}
