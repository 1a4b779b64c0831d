//! One command inside a running container: `docker exec` with a timeout that kills the
//! command's whole process tree, an output cap (head + tail) and the exit code.
//!
//! Killing the tree, in three layers:
//! 1. inside, the command runs under `timeout --kill-after`, which signals its whole process
//!    group (fork bombs and ordinary children die with it);
//! 2. every process of the exec carries `SWEGYM_EXEC=<id>` in its environment, so after a
//!    timeout a killer exec (pure bash builtins, one process) SIGKILLs the stragglers that
//!    left the group (`setsid`, daemons);
//! 3. if the stream still does not end, the container is restarted (PID 1 is
//!    `docker-init`, so every process dies; `/testbed` and `/tmp` are volumes and survive).

use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::Docker;
use futures::StreamExt;

use crate::exec::OutputCap;
use crate::{ExecOutput, SandboxError};

/// Seconds between `timeout`'s SIGTERM and its SIGKILL.
const KILL_AFTER_S: u64 = 3;
/// Extra seconds the host waits past the inner timeout before it kills from outside.
const HOST_GRACE: Duration = Duration::from_secs(10);

/// What to run, resolved (the sandbox builds this from an [`crate::ExecRequest`]).
pub(crate) struct ExecPlan<'a> {
    pub container: &'a str,
    /// The bash script (run with `bash -c`).
    pub script: String,
    pub cwd: &'a str,
    pub env: Vec<String>,
    pub timeout: Duration,
    pub output_cap: usize,
}

/// Runs `plan` and waits for it, killing its tree on timeout.
pub(crate) async fn run_exec(docker: &Docker, plan: ExecPlan<'_>) -> Result<ExecOutput, SandboxError> {
    let started = Instant::now();
    let marker = unique_token();
    let secs = plan.timeout.as_secs_f64().max(0.001);
    let mut env = plan.env;
    env.push(format!("SWEGYM_EXEC={marker}"));
    let cmd = vec![
        "timeout".to_string(),
        format!("--kill-after={KILL_AFTER_S}s"),
        format!("{secs:.3}s"),
        "bash".to_string(),
        "-c".to_string(),
        plan.script,
    ];
    let exec = docker
        .create_exec(
            plan.container,
            CreateExecOptions::<String> {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                env: Some(env),
                cmd: Some(cmd),
                working_dir: Some(plan.cwd.to_string()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| SandboxError::Docker(format!("creating exec in container {}: {e}", plan.container)))?;

    let mut capture = OutputCap::new(plan.output_cap);
    let started_exec = docker
        .start_exec(&exec.id, Some(StartExecOptions { detach: false, tty: false, output_capacity: None }))
        .await
        .map_err(|e| SandboxError::Docker(format!("starting exec in container {}: {e}", plan.container)))?;
    let StartExecResults::Attached { mut output, .. } = started_exec else {
        return Err(SandboxError::Docker(format!("exec in container {} started detached", plan.container)));
    };

    let host_limit = plan.timeout + Duration::from_secs(KILL_AFTER_S) + HOST_GRACE;
    let read_all = async {
        while let Some(frame) = output.next().await {
            match frame {
                Ok(LogOutput::StdOut { message } | LogOutput::StdErr { message } | LogOutput::Console { message }) => {
                    capture.push(&message)
                }
                Ok(LogOutput::StdIn { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let host_timed_out = match tokio::time::timeout(host_limit, read_all).await {
        Ok(Ok(())) => false,
        Ok(Err(e)) => {
            return Err(SandboxError::Docker(format!("reading exec output in container {}: {e}", plan.container)));
        }
        Err(_) => true,
    };
    drop(output);

    let code = if host_timed_out {
        tracing::warn!(container = plan.container, timeout_s = secs, "exec outlived its timeout; killing it from the host");
        kill_marked(docker, plan.container, &marker).await;
        None
    } else {
        let inspect = docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| SandboxError::Docker(format!("inspecting exec in container {}: {e}", plan.container)))?;
        inspect.exit_code
    };
    let duration = started.elapsed();
    // `timeout` exits 124 (TERM sufficed) or 137 (KILL needed) when the limit hit.
    let inner_timed_out = matches!(code, Some(124) | Some(137)) && duration + Duration::from_millis(50) >= plan.timeout;
    if inner_timed_out {
        // Processes that left the group (setsid, daemons) still carry the marker.
        kill_marked(docker, plan.container, &marker).await;
    }
    let timed_out = host_timed_out || inner_timed_out;
    let (output, truncated) = capture.finish();
    Ok(ExecOutput { exit_code: if timed_out { None } else { code.map(|c| c as i32) }, output, truncated, timed_out, duration })
}

/// SIGKILLs every process whose environment holds `SWEGYM_EXEC=<marker>`; restarts the
/// container when even that cannot run (e.g. the pids limit is exhausted).
async fn kill_marked(docker: &Docker, container: &str, marker: &str) {
    // Bash builtins only: one process, so it can run even close to the pids limit.
    let script = format!(
        "for d in /proc/[0-9]*; do \
           while IFS= read -r -d '' v; do \
             if [[ $v == SWEGYM_EXEC={marker} ]]; then kill -9 \"${{d#/proc/}}\" 2>/dev/null; break; fi; \
           done < \"$d/environ\" 2>/dev/null; \
         done; exit 0"
    );
    let killed = async {
        let exec = docker
            .create_exec(
                container,
                CreateExecOptions::<String> {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(vec!["bash".into(), "-c".into(), script]),
                    ..Default::default()
                },
            )
            .await?;
        if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&exec.id, None).await? {
            while output.next().await.is_some() {}
        }
        let inspect = docker.inspect_exec(&exec.id).await?;
        Ok::<_, bollard::errors::Error>(inspect.exit_code == Some(0))
    };
    match tokio::time::timeout(Duration::from_secs(20), killed).await {
        Ok(Ok(true)) => return,
        Ok(Ok(false)) => tracing::warn!(container, "the killer exec failed; restarting the container"),
        Ok(Err(e)) => tracing::warn!(container, error = %e, "cannot run the killer exec; restarting the container"),
        Err(_) => tracing::warn!(container, "the killer exec hung; restarting the container"),
    }
    let restart = bollard::query_parameters::RestartContainerOptionsBuilder::new().t(0).build();
    if let Err(e) = docker.restart_container(container, Some(restart)).await {
        tracing::error!(container, error = %e, "cannot restart the container after a timeout");
    }
}

/// A token unique within this host and process for naming containers and marking execs.
pub(crate) fn unique_token() -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let seed = format!("{}-{}-{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    Sha256::digest(seed.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Quotes a word for bash (`'...'`, with embedded `'` escaped).
pub(crate) fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("pytest<9"), "'pytest<9'");
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        assert_eq!(shell_quote("numpy==1.2"), "numpy==1.2");
    }
}
