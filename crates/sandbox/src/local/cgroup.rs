//! cgroup v1 groups for local sandboxes: the pids and memory limits of a sandbox, one
//! child group per command, and "kill everything in it".
//!
//! Each sandbox gets a group named after its temp dir under the group this process itself
//! is in (read from `/proc/self/cgroup`), in each of the `pids` and `memory` hierarchies
//! mounted at `/sys/fs/cgroup/<controller>`. Each command's bubblewrap process is moved
//! into a child group (`exec-N`) before it execs, so a timeout kills exactly that
//! command's tree while the limits hold for the whole sandbox. A controller that cannot be
//! used (not mounted, not writable, cgroup v2 only) is left out with a warning; the caller
//! then falls back to `setrlimit`.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::Limits;

/// Where this process may create groups, per controller (`None`: not usable).
#[derive(Debug, Clone, Default)]
pub(crate) struct CgroupRoots {
    pub pids: Option<PathBuf>,
    pub memory: Option<PathBuf>,
}

static WARNED_NO_CGROUP: AtomicBool = AtomicBool::new(false);

impl CgroupRoots {
    /// Finds this process's own groups in the v1 `pids` and `memory` hierarchies.
    pub fn discover() -> CgroupRoots {
        let text = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        CgroupRoots {
            pids: Self::own_group(&text, "pids"),
            memory: Self::own_group(&text, "memory"),
        }
    }

    fn own_group(proc_self_cgroup: &str, controller: &str) -> Option<PathBuf> {
        let mount = Path::new("/sys/fs/cgroup").join(controller);
        for line in proc_self_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if controllers.split(',').any(|c| c == controller) {
                let dir = mount.join(path.trim_start_matches('/'));
                if dir.join("cgroup.procs").is_file() {
                    return Some(dir);
                }
            }
        }
        None
    }
}

/// What the kernel cannot enforce through cgroups, applied with `setrlimit` instead.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RlimitFallback {
    /// `RLIMIT_AS` per process (the memory controller is missing).
    pub address_space: Option<u64>,
    /// `RLIMIT_NPROC` (the pids controller is missing; does not bind root).
    pub nproc: Option<u64>,
}

impl RlimitFallback {
    /// Applies the limits to the calling process. Async-signal-safe: meant for `pre_exec`.
    pub fn apply(&self) -> io::Result<()> {
        let set = |resource, value: u64| -> io::Result<()> {
            let lim = libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t };
            // SAFETY: setrlimit only reads the struct we pass.
            if unsafe { libc::setrlimit(resource, &lim) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        if let Some(v) = self.address_space {
            set(libc::RLIMIT_AS, v)?;
        }
        if let Some(v) = self.nproc {
            set(libc::RLIMIT_NPROC, v)?;
        }
        Ok(())
    }
}

/// One group in each usable hierarchy (a sandbox's, or one command's inside it).
#[derive(Debug)]
pub(crate) struct Cgroup {
    pids: Option<PathBuf>,
    memory: Option<PathBuf>,
    removed: AtomicBool,
}

impl Cgroup {
    /// Creates the sandbox group `name` with `limits`. Never fails: a controller whose group
    /// cannot be made is left out (warned once), and [`Cgroup::fallback`] says what
    /// `setrlimit` must do instead.
    pub fn create(roots: &CgroupRoots, name: &str, limits: &Limits) -> Cgroup {
        let pids = roots.pids.as_ref().and_then(|parent| {
            make_group(parent, name, &[("pids.max", limits.max_pids.to_string())], &[])
        });
        let memory = roots.memory.as_ref().and_then(|parent| {
            make_group(
                parent,
                name,
                &[("memory.limit_in_bytes", limits.memory_bytes.to_string())],
                // Only present with swap accounting; without swap the line above suffices.
                &[("memory.memsw.limit_in_bytes", limits.memory_bytes.to_string())],
            )
        });
        if (pids.is_none() || memory.is_none()) && !WARNED_NO_CGROUP.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                pids_cgroup = pids.is_some(),
                memory_cgroup = memory.is_some(),
                "cgroup v1 pids/memory controllers not usable; falling back to setrlimit \
                 (RLIMIT_AS per process; RLIMIT_NPROC does not bind root, so fork bombs are \
                 only stopped by the timeout). Run as root with /sys/fs/cgroup/{{pids,memory}} mounted."
            );
        }
        Cgroup { pids, memory, removed: AtomicBool::new(false) }
    }

    /// The group `name` as it already exists under `roots` (for sweeping what a killed
    /// process left); controllers where it does not exist are left out.
    pub fn existing(roots: &CgroupRoots, name: &str) -> Cgroup {
        let find = |root: &Option<PathBuf>| root.as_ref().map(|r| r.join(name)).filter(|d| d.is_dir());
        Cgroup { pids: find(&roots.pids), memory: find(&roots.memory), removed: AtomicBool::new(false) }
    }

    /// The `setrlimit` limits standing in for the controllers this group lacks.
    pub fn fallback(&self, limits: &Limits) -> RlimitFallback {
        RlimitFallback {
            address_space: self.memory.is_none().then_some(limits.memory_bytes),
            nproc: self.pids.is_none().then_some(u64::from(limits.max_pids)),
        }
    }

    /// A child group (no limits of its own; the parent's hold). Controllers whose child
    /// cannot be made are left out.
    pub fn child(&self, name: &str) -> Cgroup {
        let pids = self.pids.as_ref().and_then(|p| make_group(p, name, &[], &[]));
        let memory = self.memory.as_ref().and_then(|p| make_group(p, name, &[], &[]));
        Cgroup { pids, memory, removed: AtomicBool::new(false) }
    }

    /// The group's directories (for tests and logs).
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.pids.iter().chain(self.memory.iter()).cloned().collect()
    }

    /// Opens each group's `cgroup.procs` for writing; a child process writes `0` to them
    /// (in `pre_exec`) to move itself in before it execs.
    pub fn open_procs(&self) -> io::Result<Vec<OwnedFd>> {
        self.dirs()
            .iter()
            .map(|d| {
                let f = fs::OpenOptions::new().write(true).open(d.join("cgroup.procs"))?;
                Ok(OwnedFd::from(f))
            })
            .collect()
    }

    /// Host pids of every process in the group and its children.
    pub fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for dir in self.dirs() {
            collect_pids(&dir, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// One round of SIGKILL to every process in the group but `spare`; how many were found.
    fn kill_round(&self, spare: Option<i32>) -> usize {
        let mut pids = self.pids();
        pids.retain(|&p| Some(p) != spare);
        for &pid in &pids {
            // SAFETY: plain syscall; the pid was listed in our own group a moment ago.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        pids.len()
    }

    /// Kills everything in the group until it is empty (or `max_wait` passes).
    pub async fn kill_all(&self, max_wait: Duration) -> bool {
        self.kill_all_but(None, max_wait).await
    }

    /// Kills everything in the group except `spare` until nothing else is left (or
    /// `max_wait` passes).
    pub async fn kill_all_but(&self, spare: Option<i32>, max_wait: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.kill_round(spare) == 0 {
                return true;
            }
            if start.elapsed() > max_wait {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// [`Cgroup::kill_all`] for `Drop`: blocks the calling thread.
    pub fn kill_all_blocking(&self, max_wait: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.kill_round(None) == 0 {
                return true;
            }
            if start.elapsed() > max_wait {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills everything and removes the group directories (children first).
    pub async fn remove(&self) -> io::Result<()> {
        if self.removed.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.kill_all(Duration::from_secs(10)).await;
        let start = Instant::now();
        loop {
            match self.rmdir_all() {
                Ok(()) => {
                    self.removed.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if start.elapsed() < Duration::from_secs(5) => {
                    tracing::debug!(error = %e, "cgroup still busy; retrying");
                    self.kill_round(None);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Cgroup::remove`] for `Drop`: blocks the calling thread.
    pub fn remove_blocking(&self) -> io::Result<()> {
        if self.removed.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        self.kill_all_blocking(Duration::from_secs(10));
        let start = Instant::now();
        loop {
            match self.rmdir_all() {
                Ok(()) => return Ok(()),
                Err(_) if start.elapsed() < Duration::from_secs(5) => {
                    self.kill_round(None);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn rmdir_all(&self) -> io::Result<()> {
        for dir in self.dirs() {
            rmdir_tree(&dir)?;
        }
        Ok(())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.removed.load(Ordering::Relaxed) {
            if let Err(e) = self.remove_blocking() {
                tracing::warn!(cgroups = ?self.dirs(), error = %e, "could not remove cgroup");
            }
        }
    }
}

/// Makes `parent/name` and writes `limits` into it; `optional` writes may fail. `None`
/// (after a debug log) when the group cannot be made or a required limit not written.
fn make_group(parent: &Path, name: &str, limits: &[(&str, String)], optional: &[(&str, String)]) -> Option<PathBuf> {
    let dir = parent.join(name);
    if let Err(e) = fs::create_dir(&dir) {
        if e.kind() != io::ErrorKind::AlreadyExists {
            tracing::debug!(cgroup = %dir.display(), error = %e, "cannot create cgroup");
            return None;
        }
    }
    for (file, value) in limits {
        if let Err(e) = fs::write(dir.join(file), value) {
            tracing::debug!(cgroup = %dir.display(), file, value, error = %e, "cannot set cgroup limit");
            let _ = fs::remove_dir(&dir);
            return None;
        }
    }
    for (file, value) in optional {
        if dir.join(file).exists() {
            if let Err(e) = fs::write(dir.join(file), value) {
                tracing::debug!(cgroup = %dir.display(), file, value, error = %e, "optional cgroup limit not set");
            }
        }
    }
    Some(dir)
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_pids(&entry.path(), out);
            }
        }
    }
}

/// Removes a cgroup directory and its child groups (a cgroup's files go with it).
fn rmdir_tree(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            rmdir_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
