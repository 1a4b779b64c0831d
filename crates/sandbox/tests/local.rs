//! The bubblewrap backend against real bwrap, real cgroups, real processes: isolation,
//! timeouts, limits, cleanup, and (with `SWEGYM_SLOW_TESTS=1`) a real environment build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use swegym_sandbox::local::{LocalBackend, LocalSandbox};
use swegym_sandbox::{Backend, EnvHandle, ExecRequest, Limits, Sandbox, SandboxError};

/// A backend with its own cache root, a stand-in environment (an empty venv; the system
/// python3 in /usr/bin) and a small git workspace.
struct Fixture {
    root: tempfile::TempDir,
    backend: LocalBackend,
    env: EnvHandle,
    workspace: PathBuf,
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let venv = root.path().join("venv");
    std::fs::create_dir_all(&venv).unwrap();
    std::fs::write(venv.join("marker"), b"venv").unwrap();
    let workspace = root.path().join("workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(workspace.join("hello.txt"), b"hello from the workspace\n").unwrap();
    git(&workspace, &["init", "-q"]);
    git(&workspace, &["add", "."]);
    git(&workspace, &["commit", "-qm", "base"]);
    let backend = LocalBackend::new(cache);
    let env = EnvHandle::Local { venv_dir: venv, testbed: workspace.clone() };
    Fixture { root, backend, env, workspace }
}

impl Fixture {
    async fn sandbox(&self, limits: &Limits) -> LocalSandbox {
        self.backend.create_local(&self.env, Some(&self.workspace), limits).await.expect("sandbox starts")
    }
}

fn req(command: &str) -> ExecRequest {
    ExecRequest::new(command, Duration::from_secs(60))
}

/// Host processes whose command line contains `pattern`.
fn pgrep(pattern: &str) -> Vec<String> {
    let out = Command::new("pgrep").args(["-af", pattern]).output().expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// A name no other process has in its command line.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("swegym_{tag}_{}_{nanos}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_output_and_exit_code() {
    let f = fixture();
    let mut sb = f.sandbox(&Limits::default()).await;
    let out = sb.exec(&req("echo out; echo err >&2; cat hello.txt; exit 3")).await.unwrap();
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(out.output, "out\nerr\nhello from the workspace\n");
    assert!(!out.timed_out && !out.truncated);
    // The repo's .git came along.
    let out = sb.exec(&req("git status --porcelain && git log --oneline | wc -l")).await.unwrap();
    assert_eq!((out.exit_code, out.output.as_str()), (Some(0), "1\n"));
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cwd_and_environment() {
    let f = fixture();
    let mut sb = f.sandbox(&Limits::default()).await;
    let out = sb.exec(&req("pwd; echo $HOME $VIRTUAL_ENV $PATH")).await.unwrap();
    assert_eq!(out.output, "/testbed\n/tmp /opt/venv /opt/venv/bin:/usr/local/bin:/usr/bin:/bin\n");
    let mut r = req("pwd; echo $FOO; echo $HOME");
    r.cwd = Some("/tmp".into());
    r.env = vec![("FOO".into(), "bar baz".into()), ("HOME".into(), "/testbed".into())];
    let out = sb.exec(&r).await.unwrap();
    assert_eq!(out.output, "/tmp\nbar baz\n/testbed\n");
    // Host environment does not leak in.
    let out = sb.exec(&req("env | cut -d= -f1 | sort | tr '\\n' ' '")).await.unwrap();
    assert!(!out.output.contains("CARGO"), "{}", out.output);
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_tree() {
    let f = fixture();
    let mut sb = f.sandbox(&Limits::default()).await;
    let marker = unique("sleeper");
    let command = format!("bash -c 'exec -a {marker} sleep 1000' & exec -a {marker} sleep 1000");
    let mut r = req(&command);
    r.timeout = Duration::from_secs(2);
    let monitor = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        pgrep(&marker).len()
    };
    let start = Instant::now();
    let (out, seen_while_running) = tokio::join!(sb.exec(&r), monitor);
    let out = out.unwrap();
    assert!(seen_while_running >= 2, "the sleepers should run before the timeout");
    assert!(out.timed_out);
    assert_eq!(out.exit_code, None);
    assert!(start.elapsed() < Duration::from_secs(8), "took {:?}", start.elapsed());
    assert!(out.duration >= Duration::from_secs(2));
    let mut left = pgrep(&marker);
    for _ in 0..20 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = pgrep(&marker);
    }
    assert!(left.is_empty(), "processes survived the timeout: {left:?}");
    assert!(sb.live_pids().is_empty());

    // A cancelled exec (its future dropped) takes its tree down too.
    let marker = unique("cancelled");
    let r = req(&format!("exec -a {marker} sleep 1000"));
    assert!(tokio::time::timeout(Duration::from_millis(1000), sb.exec(&r)).await.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pgrep(&marker).is_empty(), "{:?}", pgrep(&marker));

    // The sandbox still works after a timeout.
    assert_eq!(sb.exec(&req("echo ok")).await.unwrap().output, "ok\n");
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_processes_end_with_the_command() {
    let f = fixture();
    let mut sb = f.sandbox(&Limits::default()).await;
    let marker = unique("bg");
    let start = Instant::now();
    let out = sb.exec(&req(&format!("(exec -a {marker} sleep 1000) & echo started"))).await.unwrap();
    assert_eq!((out.exit_code, out.output.as_str()), (Some(0), "started\n"));
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(pgrep(&marker).is_empty());
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_cap_keeps_head_and_tail() {
    let f = fixture();
    let mut sb = f.sandbox(&Limits::default()).await;
    let mut r = req("seq 1 200000");
    r.output_cap = 1000;
    let out = sb.exec(&r).await.unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert!(out.truncated);
    assert!(out.output.starts_with("1\n2\n3\n"), "{}", &out.output[..50]);
    assert!(out.output.ends_with("199999\n200000\n"));
    assert!(out.output.contains("bytes of output omitted"));
    assert!(out.output.len() < 1100);
    // A flood far past the cap neither blocks nor buffers it all.
    let mut r = req("head -c 200000000 /dev/zero | tr '\\0' x; echo; echo END");
    r.output_cap = 4096;
    let out = sb.exec(&r).await.unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert!(out.output.ends_with("END\n"));
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_testbed_and_tmp_are_writable() {
    let f = fixture();
    let mut sb = f.sandbox(&Limits::default()).await;
    let cache_file = f.backend.sandboxes_dir().join("escape.txt");
    let venv_file = f.root.path().join("venv/x");
    for target in ["/etc/swegym_x", "/root/swegym_x", "/swegym_x", "/usr/swegym_x", "/opt/venv/x", "/proc/x", "/sys/x"]
        .iter()
        .map(|s| s.to_string())
        .chain([cache_file.display().to_string()])
    {
        let out = sb.exec(&req(&format!("touch {target}"))).await.unwrap();
        assert_ne!(out.exit_code, Some(0), "touch {target} succeeded: {}", out.output);
    }
    assert!(!Path::new("/etc/swegym_x").exists() && !Path::new("/root/swegym_x").exists());
    assert!(!cache_file.exists() && !venv_file.exists());
    let out = sb.exec(&req("touch /testbed/ok /tmp/ok && echo done > /testbed/new.txt")).await.unwrap();
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    assert_eq!(sb.read_file("/testbed/new.txt").await.unwrap(), b"done\n");
    // The workspace itself is copied, never written.
    assert!(!f.workspace.join("new.txt").exists());
    // Root inside has no capabilities and cannot undo the read-only mounts.
    let out = sb.exec(&req("mount -o remount,rw /usr || mount -o remount,bind,rw /usr")).await.unwrap();
    assert_ne!(out.exit_code, Some(0));
    let out = sb.exec(&req("grep CapEff /proc/self/status")).await.unwrap();
    assert_eq!(out.output.trim(), "CapEff:\t0000000000000000");
    sb.destroy().await.unwrap();
}

/// swegym's environment (API keys) never reaches a sandbox: not the command's environment,
/// not bwrap's own (pid 1 inside, `/proc/1/environ` readable there), not any process's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swegyms_environment_stays_outside() {
    let canary = unique("canary_secret");
    // Set for the whole test process and never removed, so every sandbox started from now
    // on is started by a process that holds the secret.
    std::env::set_var("SWEGYM_TEST_CANARY_API_KEY", &canary);
    let f = fixture();
    let mut sb = f.sandbox(&Limits::default()).await;
    let out = sb
        .exec(&req("env; for f in /proc/[0-9]*/environ; do echo \"== $f\"; tr '\\0' '\\n' < $f; done; echo; echo done"))
        .await
        .unwrap();
    assert!(out.output.contains("== /proc/1/environ") && out.output.ends_with("done\n"), "{}", out.output);
    assert!(out.output.contains("PATH=/opt/venv/bin"), "the command's own variables are there: {}", out.output);
    assert!(!out.output.contains(&canary) && !out.output.contains("SWEGYM_TEST_CANARY"), "{}", out.output);
    sb.destroy().await.unwrap();
}

/// Host files readable only by their owner stay unreadable even when swegym runs as root
/// (the sandbox's user is the host's, mapped): `/etc` inside is its world-readable part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_secrets_stay_outside() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    let mut sb = f.sandbox(&Limits::default()).await;
    // What programs need is there.
    let out = sb.exec(&req("id -un; test -s /etc/passwd && test -r /etc/ld.so.cache && echo ok")).await.unwrap();
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    // Whatever in the host's /etc others may not read is absent inside.
    let hidden: Vec<String> = ["/etc/shadow", "/etc/gshadow", "/etc/ssl/private", "/etc/sudoers"]
        .into_iter()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o004 == 0))
        .map(str::to_string)
        .collect();
    for path in &hidden {
        let out = sb.exec(&req(&format!("cat {path} || ls {path}"))).await.unwrap();
        assert_ne!(out.exit_code, Some(0), "{path} was readable: {}", out.output);
    }
    if nix_is_root() {
        assert!(hidden.iter().any(|p| p == "/etc/shadow"), "a root host has an owner-only /etc/shadow: {hidden:?}");
    }
    // Nothing of the host's home, cache or keys is mounted.
    for path in ["/root/.ssh", "/root/.cache", "/home", f.backend.sandboxes_dir().to_str().unwrap()] {
        let out = sb.exec(&req(&format!("ls {path}"))).await.unwrap();
        assert_ne!(out.exit_code, Some(0), "{path} is visible: {}", out.output);
    }
    sb.destroy().await.unwrap();
}

fn nix_is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_in_and_out() {
    let f = fixture();
    let mut sb = f.sandbox(&Limits::default()).await;
    sb.write_file("/testbed/pkg/deep/a.py", b"print('hi')\n").await.unwrap();
    let out = sb.exec(&req("python3 pkg/deep/a.py")).await.unwrap();
    assert_eq!(out.output, "hi\n");
    // /tmp persists across commands.
    sb.write_file("/tmp/note.txt", b"from host").await.unwrap();
    sb.exec(&req("cat /tmp/note.txt > /tmp/copy.txt")).await.unwrap();
    assert_eq!(sb.exec(&req("cat /tmp/copy.txt")).await.unwrap().output, "from host");
    assert_eq!(sb.read_file("/tmp/copy.txt").await.unwrap(), b"from host");
    // Other paths are refused.
    for bad in ["/etc/passwd", "/opt/venv/marker", "testbed/hello.txt", "/testbed/../etc/passwd"] {
        let e = sb.read_file(bad).await.unwrap_err();
        assert!(e.to_string().contains("only files under /testbed or /tmp"), "{bad}: {e}");
    }
    assert!(sb.write_file("/usr/x", b"x").await.is_err());
    // A symlink planted inside cannot reach host files.
    let passwd = std::fs::read("/etc/passwd").unwrap();
    sb.exec(&req("ln -s /etc/passwd /testbed/evil && ln -s /etc /testbed/evil_dir")).await.unwrap();
    assert!(sb.read_file("/testbed/evil").await.is_err());
    assert!(sb.write_file("/testbed/evil", b"pwned").await.is_err());
    assert!(sb.write_file("/testbed/evil_dir/passwd", b"pwned").await.is_err() || !Path::new("/etc/passwd").exists());
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
    sb.destroy().await.unwrap();
    assert!(sb.read_file("/testbed/hello.txt").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_is_unreachable() {
    let f = fixture();
    let mut sb = f.sandbox(&Limits::default()).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!(
        "import socket\nfor addr in [('1.1.1.1', 53), ('127.0.0.1', {port})]:\n    try:\n        socket.create_connection(addr, timeout=3)\n        print('connected', addr)\n    except OSError as e:\n        print('failed', addr, e)\n"
    );
    sb.write_file("/tmp/net.py", script.as_bytes()).await.unwrap();
    let out = sb.exec(&req("python3 /tmp/net.py")).await.unwrap();
    assert!(!out.output.contains("connected"), "{}", out.output);
    assert_eq!(out.output.matches("failed").count(), 2, "{}", out.output);
    assert!(listener.accept().is_err(), "the host listener was reached");
    let out = sb.exec(&req("cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '")).await.unwrap();
    assert_eq!(out.output.trim(), "lo");
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_is_contained() {
    let f = fixture();
    let limits = Limits { max_pids: 64, ..Limits::default() };
    let mut sb = f.sandbox(&limits).await;
    assert!(!sb.cgroup_dirs().is_empty(), "cgroups are needed to contain a fork bomb");
    // The classic bomb: its first call returns at once, so the shell ends and the pid
    // namespace takes the rest down.
    let out = sb.exec(&req(":(){ :|:& };:")).await.unwrap();
    assert!(!out.timed_out);
    assert!(sb.live_pids().is_empty());

    // One that keeps the shell alive: bounded by pids.max, then killed at the timeout.
    let mut r = req(":(){ :|:& };: ; sleep 1000");
    r.timeout = Duration::from_secs(4);
    let sb_ref = &sb;
    let monitor = async move {
        let mut max_seen = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(3500) {
            max_seen = max_seen.max(sb_ref.live_pids().len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        max_seen
    };
    let start = Instant::now();
    let (out, max_seen) = tokio::join!(sb.exec(&r), monitor);
    let out = out.unwrap();
    assert!(out.timed_out, "{}", out.output);
    assert!(start.elapsed() < Duration::from_secs(15), "{:?}", start.elapsed());
    assert!(max_seen > 10, "the bomb did not run ({max_seen} pids)");
    assert!(max_seen <= 64, "pids.max was exceeded: {max_seen}");
    assert!(sb.live_pids().is_empty());
    // The host is fine.
    assert!(Command::new("true").status().unwrap().success());
    assert_eq!(sb.exec(&req("echo alive")).await.unwrap().output, "alive\n");
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_rf_root_harms_nothing_outside() {
    let f = fixture();
    let canary = f.root.path().join("canary.txt");
    std::fs::write(&canary, b"alive").unwrap();
    let mut sb = f.sandbox(&Limits::default()).await;
    let mut r = req("rm -rf --no-preserve-root / 2>/dev/null; ls -A /testbed | wc -l");
    r.timeout = Duration::from_secs(300);
    let out = sb.exec(&r).await.unwrap();
    assert!(!out.timed_out);
    assert_eq!(out.output.trim(), "0", "the workspace copy is gone: {}", out.output);
    for p in ["/usr/bin/bash", "/etc/passwd", "/bin/sh"] {
        assert!(Path::new(p).exists(), "{p} was removed");
    }
    assert!(canary.exists());
    assert!(f.root.path().join("venv/marker").exists());
    assert!(f.workspace.join("hello.txt").exists());
    assert!(f.workspace.join(".git").exists());
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_the_allocator() {
    let f = fixture();
    let limits = Limits { memory_bytes: 128 << 20, ..Limits::default() };
    let mut sb = f.sandbox(&limits).await;
    assert!(!sb.cgroup_dirs().is_empty(), "cgroups are needed for the memory limit");
    let out = sb.exec(&req("python3 -c \"x = b'a' * (32 << 20); print('small ok')\"")).await.unwrap();
    assert_eq!(out.output, "small ok\n");
    let out = sb
        .exec(&req("python3 -c \"x = b'a' * (512 << 20); print('survived')\"; echo rc=$?"))
        .await
        .unwrap();
    assert!(!out.output.lines().any(|l| l == "survived"), "{}", out.output);
    assert!(out.output.contains("rc=137"), "expected an OOM kill: {}", out.output);
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_and_drop_leave_nothing_behind() {
    let f = fixture();
    let mut sb = f.sandbox(&Limits::default()).await;
    let dir = sb.host_dir().unwrap().to_path_buf();
    let cgroups = sb.cgroup_dirs();
    assert!(dir.join("testbed/hello.txt").exists());
    assert_eq!(cgroups.len(), 2, "expected a pids and a memory cgroup: {cgroups:?}");
    assert!(cgroups.iter().all(|c| c.exists()));
    let mut r = req("(sleep 1000 &) ; echo x > /tmp/y; chmod 000 /testbed/hello.txt; mkdir -p /testbed/ro/d && chmod 500 /testbed/ro");
    r.timeout = Duration::from_secs(10);
    sb.exec(&r).await.unwrap();
    sb.destroy().await.unwrap();
    sb.destroy().await.unwrap(); // idempotent
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(cgroups.iter().all(|c| !c.exists()), "cgroups left behind: {cgroups:?}");
    assert!(sb.exec(&req("true")).await.is_err());

    // Dropped without destroy: cleaned up too.
    let sb = f.sandbox(&Limits::default()).await;
    let dir = sb.host_dir().unwrap().to_path_buf();
    let cgroups = sb.cgroup_dirs();
    drop(sb);
    assert!(!dir.exists());
    assert!(cgroups.iter().all(|c| !c.exists()));
    let left: Vec<_> = std::fs::read_dir(f.backend.sandboxes_dir()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_for_bad_setups() {
    let f = fixture();
    let backend = LocalBackend::new(f.root.path().join("c2")).with_bwrap("/nonexistent/bwrap".into());
    let e = backend.create(&f.env, Some(&f.workspace), &Limits::default()).await.err().unwrap();
    assert!(matches!(e, SandboxError::Setup(_)) && e.to_string().contains("bwrap not found"), "{e}");
    let e = f.backend.create(&EnvHandle::Image { image: "x".into() }, None, &Limits::default()).await.err().unwrap();
    assert!(e.to_string().contains("local backend cannot run"), "{e}");
    let e = f.backend.create(&f.env, Some(Path::new("/nonexistent/ws")), &Limits::default()).await.err().unwrap();
    assert!(e.to_string().contains("not a directory"), "{e}");
    // No sandbox dir is left behind by the failures.
    let dir = backend.sandboxes_dir();
    assert!(!dir.exists() || std::fs::read_dir(dir).unwrap().next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sandboxes_at_once() {
    let f = fixture();
    let start = Instant::now();
    let runs = (0..8).map(|i| {
        let f = &f;
        async move {
            let mut sb = f.sandbox(&Limits::default()).await;
            let out = sb.exec(&req(&format!("echo {i} > /testbed/i.txt; cat /testbed/i.txt"))).await.unwrap();
            sb.destroy().await.unwrap();
            out.output
        }
    });
    let outputs = futures::future::join_all(runs).await;
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(out, &format!("{i}\n"));
    }
    eprintln!("8 sandboxes created, run, destroyed in {:?}", start.elapsed());
}

// ---- environment builds (slow: venv + pip, offline from a wheelhouse) ----

fn slow_tests_enabled(test: &str) -> bool {
    let on = std::env::var("SWEGYM_SLOW_TESTS").as_deref() == Ok("1");
    if !on {
        eprintln!("skipping {test}: set SWEGYM_SLOW_TESTS=1 to build a real environment (venv + pip)");
    }
    on
}

/// `~/.cache/swegym/test-wheelhouse` with setuptools, wheel and pytest (downloaded once).
fn test_wheelhouse() -> PathBuf {
    let home = std::env::var("HOME").expect("HOME is set");
    let dir = Path::new(&home).join(".cache/swegym/test-wheelhouse");
    let has = |prefix: &str| {
        std::fs::read_dir(&dir)
            .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with(prefix)))
            .unwrap_or(false)
    };
    if !(has("pytest-") && has("setuptools-") && has("wheel-")) {
        let status = Command::new("python3")
            .args(["-m", "pip", "download", "-q", "-d"])
            .arg(&dir)
            .args(["setuptools", "wheel", "pytest"])
            .status()
            .expect("pip runs");
        assert!(status.success(), "pip download into {} failed", dir.display());
    }
    dir
}

/// The host's python3 as a real interpreter path (through pyenv's shim if there is one).
fn host_python() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A tiny installable project with one passing test, as a git repo.
fn tiny_project(dir: &Path) -> PathBuf {
    let repo = dir.join("tinypkg");
    std::fs::create_dir_all(repo.join("tinypkg")).unwrap();
    std::fs::create_dir_all(repo.join("tests")).unwrap();
    std::fs::write(
        repo.join("pyproject.toml"),
        "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"tinypkg\"\nversion = \"0.1.0\"\n\n[tool.setuptools]\npackages = [\"tinypkg\"]\n",
    )
    .unwrap();
    std::fs::write(repo.join("tinypkg/__init__.py"), "def add(a, b):\n    return a + b\n").unwrap();
    std::fs::write(
        repo.join("tests/test_add.py"),
        "from tinypkg import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n",
    )
    .unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "base"]);
    repo
}

fn tiny_env(dir: &Path, install: Vec<String>) -> swegym_sandbox::PreparedEnv {
    use swegym_sandbox::{EnvSpec, LogParser, SourceSpec};
    let repo_dir = tiny_project(dir);
    let spec = EnvSpec {
        repo: "tiny/tinypkg".into(),
        version: "0.1".into(),
        python: "3.11".into(),
        source: SourceSpec::Git(repo_dir.clone()),
        pip: vec!["pytest".into()],
        install,
        test_cmd: "pytest --no-header -rA --tb=no -p no:cacheprovider".into(),
        log_parser: LogParser::Pytest,
        test_timeout_s: 600,
    };
    swegym_sandbox::PreparedEnv { key: spec.key(), spec, repo_dir, wheelhouse: test_wheelhouse(), python: host_python() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_env_builds_once_and_pytest_runs_in_a_sandbox() {
    if !slow_tests_enabled("ensure_env_builds_once_and_pytest_runs_in_a_sandbox") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let env = tiny_env(root.path(), vec!["pip install -e .".into()]);
    let backend = LocalBackend::new(root.path().join("cache"));

    let start = Instant::now();
    let (a, b) = tokio::join!(backend.ensure_env(&env), backend.ensure_env(&env));
    let handle = a.unwrap();
    assert_eq!(handle, b.unwrap());
    eprintln!("environment built in {:?}", start.elapsed());
    let env_dir = backend.env_dir(&env.key);
    let log = std::fs::read_to_string(env_dir.join("build.log")).unwrap();
    assert_eq!(log.matches("-m venv /opt/venv").count(), 1, "built more than once:\n{log}");
    assert!(env_dir.join("ready.json").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(&env_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("build-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let start = Instant::now();
    assert_eq!(backend.ensure_env(&env).await.unwrap(), handle);
    assert!(start.elapsed() < Duration::from_secs(1), "cached lookup took {:?}", start.elapsed());

    let mut sb = backend.create_local(&handle, None, &Limits::default()).await.unwrap();
    let out = sb.exec(&req(&env.spec.test_cmd)).await.unwrap();
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    assert!(out.output.contains("PASSED tests/test_add.py::test_add"), "{}", out.output);
    let out = sb.exec(&req("python -c 'import tinypkg, sys; print(tinypkg.__file__, sys.prefix)'")).await.unwrap();
    assert_eq!(out.output, "/testbed/tinypkg/__init__.py /opt/venv\n");
    // The venv is read-only in a sandbox.
    let out = sb.exec(&req("touch /opt/venv/x || pip install --no-index pytest --force-reinstall")).await.unwrap();
    assert_ne!(out.exit_code, Some(0), "{}", out.output);
    // A patched workspace copy: the test now fails.
    sb.write_file("/testbed/tinypkg/__init__.py", b"def add(a, b):\n    return a - b\n").await.unwrap();
    let out = sb.exec(&req(&env.spec.test_cmd)).await.unwrap();
    assert_eq!(out.exit_code, Some(1), "{}", out.output);
    assert!(out.output.contains("FAILED tests/test_add.py::test_add"), "{}", out.output);
    sb.destroy().await.unwrap();
    // The template is untouched.
    let template = match &handle {
        EnvHandle::Local { testbed, .. } => testbed.clone(),
        other => panic!("{other:?}"),
    };
    assert!(std::fs::read_to_string(template.join("tinypkg/__init__.py")).unwrap().contains("a + b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_build_step_leaves_no_half_built_env() {
    if !slow_tests_enabled("failing_build_step_leaves_no_half_built_env") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let env = tiny_env(root.path(), vec!["pip install -e .".into(), "echo boom-output; exit 3".into()]);
    let backend = LocalBackend::new(root.path().join("cache"));
    let err = backend.ensure_env(&env).await.unwrap_err();
    match &err {
        SandboxError::EnvBuild { key, step, exit_code, tail } => {
            assert_eq!(key, &env.key);
            assert_eq!(step, "echo boom-output; exit 3");
            assert_eq!(*exit_code, Some(3));
            assert!(tail.contains("boom-output"), "{tail}");
        }
        other => panic!("expected EnvBuild, got {other}"),
    }
    let env_dir = backend.env_dir(&env.key);
    let mut names: Vec<String> =
        std::fs::read_dir(&env_dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, vec![".lock", "build.log"]);
    let log = std::fs::read_to_string(env_dir.join("build.log")).unwrap();
    assert!(log.contains("boom-output") && log.contains("# exit Some(3)"), "{log}");
    // A missing interpreter is a clear build error too.
    let mut env2 = env.clone();
    env2.python = PathBuf::from("/nonexistent/python3.99");
    let err = backend.ensure_env(&env2).await.unwrap_err();
    assert!(err.to_string().contains("pyenv install"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_overhead_and_bad_cwd() {
    let f = fixture();
    let mut sb = f.sandbox(&Limits::default()).await;
    let mut times = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        assert_eq!(sb.exec(&req("true")).await.unwrap().exit_code, Some(0));
        times.push(start.elapsed());
    }
    times.sort();
    eprintln!("exec of `true`: median {:?}, max {:?}", times[10], times[19]);
    assert!(times[10] < Duration::from_secs(1));
    // A missing cwd is the command's failure, reported like a shell would.
    let mut r = req("pwd");
    r.cwd = Some("/testbed/nope".into());
    let out = sb.exec(&r).await.unwrap();
    assert_eq!(out.exit_code, Some(1));
    assert!(out.output.contains("/testbed/nope"), "{}", out.output);
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cgroups_memory_falls_back_to_rlimit() {
    let mut f = fixture();
    f.backend = LocalBackend::new(f.root.path().join("cache")).with_cgroups(false);
    let limits = Limits { memory_bytes: 256 << 20, ..Limits::default() };
    let mut sb = f.sandbox(&limits).await;
    assert!(sb.cgroup_dirs().is_empty());
    let out = sb.exec(&req("python3 -c \"x = b'a' * (512 << 20); print('survived')\"")).await.unwrap();
    assert_ne!(out.exit_code, Some(0));
    assert!(out.output.contains("MemoryError"), "{}", out.output);
    // Timeouts still take the whole tree down (pid namespace + process group).
    let marker = unique("nocg");
    let mut r = req(&format!("(exec -a {marker} sleep 1000) & exec -a {marker} sleep 1000"));
    r.timeout = Duration::from_secs(1);
    let out = sb.exec(&r).await.unwrap();
    assert!(out.timed_out);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pgrep(&marker).is_empty(), "{:?}", pgrep(&marker));
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_of_a_killed_run_are_swept() {
    let f = fixture();
    let sb = f.sandbox(&Limits::default()).await;
    let mut r = req("(exec -a swegym-orphan-marker sleep 1000 &) ; true");
    r.timeout = Duration::from_secs(10);
    sb.exec(&r).await.unwrap();
    let dir = sb.host_dir().unwrap().to_path_buf();
    let cgroups = sb.cgroup_dirs();
    // Pretend the process that made it was SIGKILLed: no destroy, no drop, and its owner
    // pid belongs to a process that has exited.
    std::mem::forget(sb);
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    std::fs::write(dir.join("owner.pid"), dead_pid.to_string()).unwrap();
    // A live sandbox of this process is left alone.
    let live = f.sandbox(&Limits::default()).await;
    assert_eq!(f.backend.sweep_orphans(), 1);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(cgroups.iter().all(|c| !c.exists()), "cgroups left behind: {cgroups:?}");
    assert!(pgrep("swegym-orphan-marker").is_empty(), "the orphan's processes survive: {:?}", pgrep("swegym-orphan-marker"));
    assert!(live.host_dir().unwrap().exists());
    assert_eq!(f.backend.sweep_orphans(), 0);
}
