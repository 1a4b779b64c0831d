//! The docker backend against a real daemon: images, exec, limits, isolation, removal, and an
//! env build that runs pytest. Skipped (with the reason printed) when no daemon answers;
//! image builds need SWEGYM_SLOW_TESTS=1.

mod docker_support;

use std::path::Path;
use std::time::{Duration, Instant};

use docker_support::*;
use swegym_sandbox::docker::{DockerBackend, DockerSandbox};
use swegym_sandbox::{Backend, EnvHandle, ExecRequest, Limits, Sandbox, SandboxError};

async fn container_exists(backend: &DockerBackend, id: &str) -> bool {
    match backend.docker().inspect_container(id, None).await {
        Ok(_) => true,
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => false,
        Err(e) => panic!("inspecting {id}: {e}"),
    }
}

async fn setup() -> Option<(DockerBackend, EnvHandle)> {
    let backend = backend().await?;
    let image = sandbox_image(&backend).await?;
    Some((backend, image))
}

async fn run(sb: &DockerSandbox, command: &str, timeout_s: u64) -> swegym_sandbox::ExecOutput {
    sb.exec(&ExecRequest::new(command, Duration::from_secs(timeout_s))).await.unwrap()
}

#[tokio::test]
async fn base_image_builds_and_is_reused() {
    if !slow_tests() {
        eprintln!("SKIPPED: building the base image is slow; set SWEGYM_SLOW_TESTS=1");
        return;
    }
    let Some(backend) = backend().await else { return };
    let started = Instant::now();
    let image = backend.ensure_base_image().await.unwrap();
    eprintln!("ensure_base_image (first call this run): {:.1}s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let (again, second) = tokio::join!(backend.ensure_base_image(), backend.ensure_base_image());
    assert_eq!(again.unwrap(), image);
    assert_eq!(second.unwrap(), image);
    eprintln!("ensure_base_image x2 concurrently when present: {:.2}s", started.elapsed().as_secs_f64());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(backend.image_exists("swegym-base:bookworm").await.unwrap());

    let sb = backend.create_sandbox(&EnvHandle::Image { image }, None, &Limits::default()).await.unwrap();
    let out = run(&sb, "python3 --version && git --version && patch --version | head -1 && ps --version", 30).await;
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    assert!(out.output.contains("Python 3.11"), "{}", out.output);
}

#[tokio::test]
async fn exec_reports_output_exit_code_cwd_env_and_caps_output() {
    let Some((backend, image)) = setup().await else { return };
    let sb = backend.create_sandbox(&image, None, &Limits::default()).await.unwrap();

    let out = run(&sb, "echo to-out; echo to-err >&2; pwd; echo \"home=$HOME\"; exit 3", 30).await;
    assert_eq!(out.exit_code, Some(3));
    assert!(!out.timed_out && !out.truncated);
    for want in ["to-out", "to-err", "/testbed", "home=/tmp"] {
        assert!(out.output.contains(want), "{want} missing in {:?}", out.output);
    }

    let mut req = ExecRequest::new("pwd; echo $GREETING", Duration::from_secs(30));
    req.cwd = Some("/tmp".into());
    req.env.push(("GREETING".into(), "hello there".into()));
    let out = sb.exec(&req).await.unwrap();
    assert_eq!(out.output, "/tmp\nhello there\n");

    let mut req = ExecRequest::new("head -c 100000 /dev/zero | tr '\\0' a; echo END", Duration::from_secs(30));
    req.output_cap = 1000;
    let out = sb.exec(&req).await.unwrap();
    assert!(out.truncated);
    assert!(out.output.len() < 1200 && out.output.starts_with("aaaa") && out.output.ends_with("aEND\n"), "{}", out.output);
    assert!(out.output.contains("bytes of output omitted"));

    let started = Instant::now();
    for _ in 0..5 {
        run(&sb, "true", 30).await;
    }
    eprintln!("exec round trip: {:.0} ms", started.elapsed().as_secs_f64() * 1000.0 / 5.0);
}

#[tokio::test]
async fn timeout_kills_the_whole_tree() {
    let Some((backend, image)) = setup().await else { return };
    let sb = backend.create_sandbox(&image, None, &Limits::default()).await.unwrap();
    let started = Instant::now();
    // A child in the group, a grandchild that left the group with setsid, and one that
    // ignores SIGTERM: all must be gone after the timeout.
    let cmd = "sleep 301 & setsid sleep 302 & bash -c 'trap \"\" TERM; sleep 303' & echo started; sleep 304";
    let out = run(&sb, cmd, 2).await;
    let took = started.elapsed();
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.exit_code, None);
    assert!(out.output.contains("started"));
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let ps = run(&sb, "ps -eo args", 30).await;
    for s in ["sleep 301", "sleep 302", "sleep 303", "sleep 304"] {
        assert!(!ps.output.contains(s), "{s} survived the timeout:\n{}", ps.output);
    }
    eprintln!("timed-out exec returned after {:.1}s (timeout 2s)", took.as_secs_f64());
}

#[tokio::test]
async fn the_host_is_untouched_and_only_the_workspace_and_tmp_are_writable() {
    let Some((backend, image)) = setup().await else { return };
    let mut sb = backend.create_sandbox(&image, None, &Limits::default()).await.unwrap();
    let probe = format!("/etc/swegym-probe-{}", std::process::id());
    let out = run(&sb, &format!("echo pwned > {probe}"), 30).await;
    assert_ne!(out.exit_code, Some(0));
    assert!(out.output.contains("Read-only file system"), "{}", out.output);
    for path in ["/usr/lib/x", "/root/x", "/opt/x"] {
        let out = run(&sb, &format!("touch {path}"), 30).await;
        assert_ne!(out.exit_code, Some(0), "{path} was writable");
    }
    let out = run(&sb, "touch /testbed/ok /tmp/ok && echo fine", 30).await;
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    let err = sb.write_file("/etc/passwd", b"x").await.unwrap_err();
    assert!(err.to_string().contains("only /testbed and /tmp are writable"), "{err}");
    assert!(!Path::new(&probe).exists(), "the write reached the host");

    let id = sb.container_id().to_string();
    sb.destroy().await.unwrap();
    sb.destroy().await.unwrap(); // idempotent
    assert!(!container_exists(&backend, &id).await);
    assert!(!Path::new(&probe).exists());
}

#[tokio::test]
async fn no_network() {
    let Some((backend, image)) = setup().await else { return };
    let sb = backend.create_sandbox(&image, None, &Limits::default()).await.unwrap();
    let out = run(&sb, "ls /sys/class/net; timeout 5 bash -c 'echo > /dev/tcp/1.1.1.1/80' && echo CONNECTED; timeout 5 bash -c 'echo > /dev/tcp/deb.debian.org/80' && echo RESOLVED", 30).await;
    assert_eq!(out.output.lines().next(), Some("lo"), "{}", out.output);
    assert!(!out.output.contains("CONNECTED") && !out.output.contains("RESOLVED"), "{}", out.output);
    let inspect = backend.docker().inspect_container(sb.container_id(), None).await.unwrap();
    assert_eq!(inspect.host_config.unwrap().network_mode.as_deref(), Some("none"));
}

#[tokio::test]
async fn fork_bomb_is_contained_by_the_pids_limit() {
    let Some((backend, image)) = setup().await else { return };
    let limits = Limits { memory_bytes: 512 << 20, max_pids: 64 };
    let sb = backend.create_sandbox(&image, None, &limits).await.unwrap();
    let started = Instant::now();
    let out = run(&sb, "bomb() { bomb | bomb & }; bomb; sleep 5", 4).await;
    eprintln!("fork bomb exec ended after {:.1}s: timed_out={} exit={:?}", started.elapsed().as_secs_f64(), out.timed_out, out.exit_code);
    assert!(started.elapsed() < Duration::from_secs(60));
    let inspect = backend.docker().inspect_container(sb.container_id(), None).await.unwrap();
    let hc = inspect.host_config.unwrap();
    assert_eq!(hc.pids_limit, Some(64));
    assert_eq!(hc.memory, Some(512 << 20));
    // The sandbox survives and is usable again once the bomb is gone.
    let mut alive = None;
    for _ in 0..20 {
        match sb.exec(&ExecRequest::new("echo alive; ps -e --no-headers | wc -l", Duration::from_secs(10))).await {
            Ok(o) if o.exit_code == Some(0) => {
                alive = Some(o.output);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let alive = alive.expect("sandbox usable after the fork bomb");
    let n: usize = alive.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(n < 10, "bomb processes survived: {alive}");
}

#[tokio::test]
async fn files_round_trip_by_tar() {
    let Some((backend, image)) = setup().await else { return };
    let sb = backend.create_sandbox(&image, None, &Limits::default()).await.unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    sb.write_file("/testbed/deep/dir/blob.bin", &data).await.unwrap();
    assert_eq!(sb.read_file("/testbed/deep/dir/blob.bin").await.unwrap(), data);
    sb.write_file("/tmp/patch.diff", b"diff --git a/x b/x\n").await.unwrap();
    let out = run(&sb, "cat /tmp/patch.diff; wc -c < deep/dir/blob.bin", 30).await;
    assert_eq!(out.output, "diff --git a/x b/x\n200000\n");
    let err = sb.read_file("/testbed/missing.txt").await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = sb.read_file("/testbed/deep").await.unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");
}

#[tokio::test]
async fn a_workspace_replaces_testbed_with_its_git_history() {
    let Some((backend, image)) = setup().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    tiny_project(&ws);
    let head = sh(&ws, "git rev-parse HEAD");
    let sb = backend.create_sandbox(&image, Some(&ws), &Limits::default()).await.unwrap();
    let out = run(&sb, "git rev-parse HEAD && git status --porcelain && ls", 30).await;
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    assert_eq!(out.output, format!("{head}\npyproject.toml\ntests\ntinycalc\n"));
}

#[tokio::test]
async fn no_container_is_left_after_destroy_drop_or_panic() {
    let Some((backend, image)) = setup().await else { return };
    let backend = std::sync::Arc::new(backend);
    let limits = Limits::default();

    let mut timings = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let mut sb = backend.create(&image, None, &limits).await.unwrap();
        let created = started.elapsed();
        sb.destroy().await.unwrap();
        timings.push((created, started.elapsed()));
    }
    for (created, total) in &timings {
        eprintln!("create {:.0} ms, create+destroy {:.0} ms", created.as_secs_f64() * 1e3, total.as_secs_f64() * 1e3);
    }

    let sb = backend.create_sandbox(&image, None, &limits).await.unwrap();
    let id = sb.container_id().to_string();
    drop(sb);
    assert!(!container_exists(&backend, &id).await, "drop left the container");

    let (tx, rx) = tokio::sync::oneshot::channel();
    let b = std::sync::Arc::clone(&backend);
    let image2 = image.clone();
    let task = tokio::spawn(async move {
        let sb = b.create_sandbox(&image2, None, &Limits::default()).await.unwrap();
        tx.send(sb.container_id().to_string()).unwrap();
        panic!("agent crashed while holding a sandbox");
    });
    assert!(task.await.unwrap_err().is_panic());
    let id = rx.await.unwrap();
    assert!(!container_exists(&backend, &id).await, "a panic left the container");

    // A failed create (bad workspace upload) leaves nothing either.
    let err = backend.create_sandbox(&image, Some(Path::new("/nonexistent/ws")), &limits).await.unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[tokio::test]
async fn missing_swebench_image_names_itself_and_the_fix() {
    let Some(backend) = backend().await else { return };
    let err = backend.swebench_env("getmoto__moto-5876").await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("xingyaoww/sweb.eval.x86_64.getmoto_s_moto-5876"), "{text}");
    assert!(text.contains("docker load"), "{text}");
    let err = backend
        .create_sandbox(&EnvHandle::SweBenchImage { image: "swebench/sweb.eval.x86_64.nope_1776_nope-1".into() }, None, &Limits::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not on this docker host"), "{err}");
}

#[tokio::test]
async fn env_build_from_a_tiny_project_then_pytest_runs_inside_and_failures_leave_nothing() {
    if !slow_tests() {
        eprintln!("SKIPPED: env image builds are slow; set SWEGYM_SLOW_TESTS=1");
        return;
    }
    let Some(backend) = backend().await else { return };
    let Some(python) = host_python("3.11") else { return };
    let Some(wheelhouse) = test_wheelhouse(&python) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    tiny_project(&repo);
    let key = format!("swegym__tinycalc-0.1-test{}", std::process::id());
    let env = prepared_env(&key, &repo, &wheelhouse, &python, vec!["pip install -e .".into()]);

    let started = Instant::now();
    let (a, b) = tokio::join!(backend.ensure_env(&env), backend.ensure_env(&env));
    let handle = a.unwrap();
    assert_eq!(b.unwrap(), handle);
    eprintln!("ensure_env (python image if missing + env build, two concurrent callers): {:.1}s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    assert_eq!(backend.ensure_env(&env).await.unwrap(), handle);
    eprintln!("ensure_env when built: {:.2}s", started.elapsed().as_secs_f64());

    // The post-install /testbed of the image.
    let mut sb = backend.create(&handle, None, &Limits::default()).await.unwrap();
    let out = sb.exec(&ExecRequest::new("pytest -rA tests; ls /wheels", Duration::from_secs(120))).await.unwrap();
    assert!(out.output.contains("PASSED tests/test_add.py::test_add"), "{}", out.output);
    assert!(out.output.contains("PASSED tests/test_add.py::test_interpreter"), "{}", out.output);
    assert!(out.output.contains("No such file or directory"), "/wheels must be gone: {}", out.output);
    let out = sb.exec(&ExecRequest::new("readlink -f $(which python)", Duration::from_secs(30))).await.unwrap();
    assert_eq!(out.output.trim(), std::fs::canonicalize(&python).unwrap().to_string_lossy(), "same interpreter as the host");
    sb.destroy().await.unwrap();

    // A task workspace with a bug: the editable install follows /testbed.
    let ws = tmp.path().join("ws");
    sh(tmp.path(), &format!("git clone -q {} ws", repo.display()));
    std::fs::write(ws.join("tinycalc/__init__.py"), "def add(a, b):\n    return a - b\n").unwrap();
    let mut sb = backend.create(&handle, Some(&ws), &Limits::default()).await.unwrap();
    let out = sb.exec(&ExecRequest::new("pytest -rA tests", Duration::from_secs(120))).await.unwrap();
    assert_eq!(out.exit_code, Some(1), "{}", out.output);
    assert!(out.output.contains("FAILED tests/test_add.py::test_add"), "{}", out.output);
    sb.destroy().await.unwrap();

    backend.docker().remove_image(&handle_image(&handle), None::<bollard::query_parameters::RemoveImageOptions>, None).await.unwrap();

    // A failing install step: EnvBuild naming the step, no image, no build container.
    let key = format!("swegym__tinycalc-0.1-broken{}", std::process::id());
    let env = prepared_env(&key, &repo, &wheelhouse, &python, vec!["echo building; pip install no-such-package-xyz".into()]);
    let err = backend.ensure_env(&env).await.unwrap_err();
    match &err {
        SandboxError::EnvBuild { key: k, step, exit_code, tail } => {
            assert_eq!(k, &key);
            assert!(step.contains("no-such-package-xyz"), "{step}");
            assert_eq!(*exit_code, Some(1));
            assert!(tail.contains("building") && tail.contains("No matching distribution"), "{tail}");
        }
        other => panic!("expected EnvBuild, got {other}"),
    }
    assert!(!backend.image_exists(&format!("swegym-env:{key}")).await.unwrap());
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec!["swegym.role=build".to_string(), format!("swegym.pid={}", std::process::id())],
    )]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    assert!(backend.docker().list_containers(Some(options)).await.unwrap().is_empty(), "a build container was left");
}

fn handle_image(handle: &EnvHandle) -> String {
    match handle {
        EnvHandle::Image { image } => image.clone(),
        other => panic!("unexpected handle {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_daemon_is_a_clear_error() {
    let options = swegym_sandbox::docker::DockerOptions { host: Some("unix:///nonexistent/docker.sock".into()), ..Default::default() };
    let err = DockerBackend::connect(cache_root(), options).await.unwrap_err().to_string();
    assert!(err.contains("docker daemon not reachable at unix:///nonexistent/docker.sock"), "{err}");
    assert!(err.contains("start it or use --backend local"), "{err}");
}

#[tokio::test]
async fn swebench_convention_images_run_commands_in_the_testbed_conda_env() {
    let Some((backend, base)) = setup().await else { return };
    let EnvHandle::Image { image: base } = base else { unreachable!() };
    // A stand-in for a SWE-bench image: repo at /testbed, an `activate` that provides `conda`.
    let fake = "swegym-test/sweb.eval.x86_64.fake_s_fake-1";
    let body = bollard::models::ContainerCreateBody {
        image: Some(base),
        cmd: Some(vec![
            "bash".into(),
            "-c".into(),
            "mkdir -p /opt/miniconda3/bin /testbed && echo 'conda() { [ \"$1\" = activate ] && export CONDA_DEFAULT_ENV=$2; }' > /opt/miniconda3/bin/activate && echo repo > /testbed/README".into(),
        ]),
        ..Default::default()
    };
    let docker = backend.docker();
    let c = docker.create_container(None::<bollard::query_parameters::CreateContainerOptions>, body).await.unwrap();
    docker.start_container(&c.id, None).await.unwrap();
    let mut wait = docker.wait_container(&c.id, None::<bollard::query_parameters::WaitContainerOptions>);
    while let Some(r) = futures::StreamExt::next(&mut wait).await {
        r.unwrap();
    }
    let (repo, tag) = fake.split_once(':').unwrap_or((fake, "latest"));
    let commit = bollard::query_parameters::CommitContainerOptionsBuilder::new().container(&c.id).repo(repo).tag(tag).build();
    docker.commit_container(commit, bollard::models::ContainerConfig::default()).await.unwrap();
    docker.remove_container(&c.id, None::<bollard::query_parameters::RemoveContainerOptions>).await.unwrap();

    let options =
        swegym_sandbox::docker::DockerOptions { swebench_template: "swegym-test/sweb.eval.x86_64.{id}".into(), ..Default::default() };
    let sb_backend = DockerBackend::connect(cache_root(), options).await.unwrap();
    let handle = sb_backend.swebench_env("Fake__fake-1").await.unwrap();
    assert_eq!(handle, EnvHandle::SweBenchImage { image: fake.into() });
    let mut sb = sb_backend.create(&handle, None, &Limits::default()).await.unwrap();
    let out = sb.exec(&ExecRequest::new("echo env=$CONDA_DEFAULT_ENV; pwd; cat README", Duration::from_secs(30))).await.unwrap();
    assert_eq!(out.output, "env=testbed\n/testbed\nrepo\n");
    sb.destroy().await.unwrap();
    docker.remove_image(fake, None::<bollard::query_parameters::RemoveImageOptions>, None).await.unwrap();
}
