//! The `openai` policy against a real OpenAI-compatible server: llama-cpp-python's server
//! serving SmolLM2-135M-Instruct (Q4_1 GGUF), started by the test. Runs when the venv built
//! by `stages/sample/scripts/install-llamacpp-server.sh` exists; prints how to build it
//! otherwise. Also: retries against a port nobody listens on.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use swegym_sample::policy::openai::{OpenAiConfig, OpenAiPolicy};
use swegym_sample::{run_episode, EpisodeConfig, ExitReason, Message, Policy, PolicyError, PolicyRequest, RolloutId, SamplingParams};

fn cache_root() -> PathBuf {
    std::env::var_os("SWEGYM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/swegym"))
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_server() -> Option<(Server, String)> {
    let python = cache_root().join("venv-llamacpp/bin/python");
    let model = cache_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let ready = python.exists() && Command::new(&python).args(["-c", "import llama_cpp.server"]).output().is_ok_and(|o| o.status.success());
    if !ready || !model.exists() {
        assert!(
            std::env::var("SWEGYM_SLOW_TESTS").as_deref() != Ok("1"),
            "SWEGYM_SLOW_TESTS=1 but {} with llama-cpp-python[server] or {} is missing (.ci/run installs both)",
            python.display(),
            model.display()
        );
        eprintln!(
            "skipping: needs {} with llama-cpp-python[server] (run stages/sample/scripts/install-llamacpp-server.sh, ~5 min) and {} (make setup)",
            python.display(),
            model.display()
        );
        return None;
    }
    let port = free_port();
    let child = Command::new(&python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(&model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--n_threads", "2", "--n_ctx", "8192", "--chat_format", "chatml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the server starts");
    let server = Server(child);
    let base = format!("http://127.0.0.1:{port}/v1");
    let started = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "llama.cpp server did not listen within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    Some((server, base))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_policy_against_llamacpp_server() {
    let Some((_server, base)) = start_server() else { return };
    let policy = OpenAiPolicy::new(OpenAiConfig::new(base.clone(), "smollm2")).unwrap();
    assert_eq!(policy.id(), "openai:smollm2");
    let task = common::task();
    // One plain completion: text and the server's token counts come back.
    let params = SamplingParams { temperature: 0.0, max_tokens: 32, stop: vec![], ..SamplingParams::default() };
    let messages = vec![Message::user("Write a Python function that reverses a string.")];
    let first = policy.complete(PolicyRequest { task: &task, messages: &messages, params: &params }).await.unwrap();
    assert!(!first.text.is_empty());
    assert!(first.prompt_tokens > 10 && first.completion_tokens > 0 && first.completion_tokens <= 32, "{first:?}");
    // Greedy decoding is deterministic — from the same server state. The server reuses the
    // evaluated prefix of a repeated prompt and re-evaluates only its last token, alone,
    // which is not bit-identical to the first request's batched prefill: on a CPU without
    // AVX-512 that flipped a near-tie. The second and third requests both start from that
    // reused prefix, so they must agree token for token.
    let c = policy.complete(PolicyRequest { task: &task, messages: &messages, params: &params }).await.unwrap();
    let again = policy.complete(PolicyRequest { task: &task, messages: &messages, params: &params }).await.unwrap();
    assert_eq!(c.text, again.text);

    // A whole rollout on the tiny task: SmolLM2 rarely writes a valid call, but every rollout
    // ends with an exit reason and nothing crashes.
    let f = common::fixture();
    let config = EpisodeConfig { max_turns: 3, max_context_tokens: 8192, ..EpisodeConfig::default() };
    let params = SamplingParams { temperature: 0.7, max_tokens: 128, ..SamplingParams::default() };
    for sample_idx in 0..1 {
        let mut sb = f.sandbox().await;
        let id = RolloutId { sample_idx, iteration: 0, seed: 1 + sample_idx as u64 };
        let r = run_episode(sb.as_ref(), &task, &policy, &params, &config, &id).await;
        sb.destroy().await.unwrap();
        eprintln!("rollout {sample_idx}: {} after {} turns; {} prompt / {} completion tokens; error {:?}", r.exit_reason, r.turns, r.prompt_tokens, r.completion_tokens, r.error);
        assert!(r.turns >= 1 && r.completion_tokens > 0, "{r:?}");
        assert!(!matches!(r.exit_reason, ExitReason::PolicyError | ExitReason::SandboxError), "{:?}: {:?}", r.exit_reason, r.error);
    }

    // A prompt larger than the server's context is `context_exceeded`, not a crash.
    let huge = vec![Message::user("word ".repeat(12_000))];
    match policy.complete(PolicyRequest { task: &task, messages: &huge, params: &params }).await {
        Err(PolicyError::ContextExceeded(_)) => {}
        other => panic!("expected ContextExceeded, got {other:?}"),
    }
}

#[tokio::test]
async fn retries_then_gives_up_on_an_unreachable_server() {
    let port = free_port(); // bound and released: nothing listens
    let config = OpenAiConfig { max_retries: 2, initial_backoff: Duration::from_millis(20), ..OpenAiConfig::new(format!("http://127.0.0.1:{port}/v1"), "m") };
    let policy = OpenAiPolicy::new(config).unwrap();
    let task = common::task();
    let messages = vec![Message::user("hi")];
    let started = Instant::now();
    let err = policy.complete(PolicyRequest { task: &task, messages: &messages, params: &SamplingParams::default() }).await.unwrap_err();
    assert!(matches!(&err, PolicyError::Server(m) if m.contains("failed after 3 attempts")), "{err}");
    // Backoff 20 ms + 40 ms.
    assert!(started.elapsed() >= Duration::from_millis(60));
}
