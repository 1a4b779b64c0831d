//! Whole rollouts in a real sandbox, driven by the scripted replay policy (and the oracle):
//! every exit reason, `cd` persisting across `execute_bash` calls, command timeouts, patch
//! extraction without test files, and the stage's resume.

mod common;

use std::sync::Arc;
use std::time::Duration;

use swegym_sample::policy::oracle::OraclePolicy;
use swegym_sample::policy::replay::ReplayPolicy;
use swegym_sample::prompt::{estimate_tokens, initial_messages, Scaffold};
use swegym_sample::{run_episode, sample, EpisodeConfig, ExitReason, Policy, Role, RolloutId, SampleConfig, SamplingParams};
use swegym_schema::Rollout;

use common::{bash, finish};

fn id() -> RolloutId {
    RolloutId { sample_idx: 0, iteration: 0, seed: 7 }
}

async fn episode(replies: Vec<String>, config: EpisodeConfig) -> Rollout {
    let f = common::fixture();
    let mut sb = f.sandbox().await;
    let policy = ReplayPolicy::new("replay", replies);
    let r = run_episode(sb.as_ref(), &common::task(), &policy, &SamplingParams::default(), &config, &id()).await;
    sb.destroy().await.unwrap();
    r
}

fn observations(r: &Rollout) -> Vec<&str> {
    r.messages.iter().skip(2).filter(|m| m.role == Role::User).map(|m| m.content.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_with_a_patch_and_cd_state() {
    let edit = "Fix the operator.\n<function=str_replace_editor>\n<parameter=command>str_replace</parameter>\n<parameter=path>/testbed/src/pkg/calc.py</parameter>\n<parameter=old_str>def add(a, b):\n    return a - b</parameter>\n<parameter=new_str>def add(a, b):\n    return a + b</parameter>\n</function>";
    let new_test = "<function=str_replace_editor>\n<parameter=command>create</parameter>\n<parameter=path>/testbed/tests/test_more.py</parameter>\n<parameter=file_text>def test_x():\n    pass\n</parameter>\n</function>";
    let r = episode(
        vec![
            bash("cd src/pkg && ls"),
            bash("pwd"),
            // `exit` skips the marker: the directory stays.
            bash("cd /tmp; exit 3"),
            bash("pwd"),
            edit.to_string(),
            new_test.to_string(),
            bash("echo 'print(1)' > /testbed/reproduce.py && python3 /testbed/reproduce.py"),
            finish(),
        ],
        EpisodeConfig::default(),
    )
    .await;
    assert_eq!(r.exit_reason, ExitReason::Submitted, "{:?}", r.error);
    assert_eq!(r.turns, 8);
    let obs = observations(&r);
    assert_eq!(obs[0], "EXECUTION RESULT of [execute_bash]:\n__init__.py\ncalc.py\n[Current working directory: /testbed/src/pkg]\n[Command finished with exit code 0]");
    assert_eq!(obs[1], "EXECUTION RESULT of [execute_bash]:\n/testbed/src/pkg\n[Current working directory: /testbed/src/pkg]\n[Command finished with exit code 0]");
    assert_eq!(obs[2], "EXECUTION RESULT of [execute_bash]:\n[Current working directory: /testbed/src/pkg]\n[Command finished with exit code 3]");
    assert!(obs[4].starts_with("EXECUTION RESULT of [str_replace_editor]:\nThe file /testbed/src/pkg/calc.py has been edited."));
    // The last message is the finish call (no observation after it).
    assert_eq!(r.messages.last().unwrap().role, Role::Assistant);
    // The patch has the source fix and the agent's script, not the test file.
    assert!(r.patch.contains("diff --git a/src/pkg/calc.py b/src/pkg/calc.py") && r.patch.contains("+    return a + b"), "{}", r.patch);
    assert!(r.patch.contains("reproduce.py"));
    assert!(!r.patch.contains("test_more.py"), "{}", r.patch);
    assert!(!r.empty_patch);
    assert!(r.prompt_tokens > 0 && r.completion_tokens > 0);
    assert_eq!((r.seed, r.policy_id.as_str()), (7, "replay"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_turns() {
    let r = episode(vec![bash("ls"), bash("pwd"), bash("whoami"), finish()], EpisodeConfig { max_turns: 2, ..EpisodeConfig::default() }).await;
    assert_eq!((r.exit_reason, r.turns), (ExitReason::MaxTurns, 2));
    assert!(r.empty_patch && r.patch.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_in_loop() {
    // The same action and observation 4 times.
    let r = episode(vec![bash("ls"); 6], EpisodeConfig::default()).await;
    assert_eq!((r.exit_reason, r.turns), (ExitReason::StuckInLoop, 4));
    assert_eq!(r.error.as_deref(), Some("the same action and observation 4 times in a row"));
    // The same failing edit 3 times.
    let bad_edit = "<function=str_replace_editor>\n<parameter=command>str_replace</parameter>\n<parameter=path>/testbed/src/pkg/calc.py</parameter>\n<parameter=old_str>nope</parameter>\n<parameter=new_str>x</parameter>\n</function>";
    let r = episode(vec![bad_edit.to_string(); 5], EpisodeConfig::default()).await;
    assert_eq!((r.exit_reason, r.turns), (ExitReason::StuckInLoop, 3));
    // Monologue: the same plain message 3 times (format errors in between are not observations).
    let r = episode(vec!["I should look at the code.".to_string(); 5], EpisodeConfig { max_format_errors: 10, ..EpisodeConfig::default() }).await;
    assert_eq!((r.exit_reason, r.turns), (ExitReason::StuckInLoop, 3));
    // Ping-pong between two actions.
    let r = episode((0..8).map(|i| bash(if i % 2 == 0 { "ls" } else { "pwd" })).collect(), EpisodeConfig::default()).await;
    assert_eq!((r.exit_reason, r.turns), (ExitReason::StuckInLoop, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_error() {
    let replies = vec![
        "Let me think about this.".to_string(),
        "<function=python>\n<parameter=code>print(1)</parameter>\n</function>".to_string(),
        "<function=str_replace_editor>\n<parameter=path>/testbed</parameter>\n</function>".to_string(),
        finish(),
    ];
    let r = episode(replies.clone(), EpisodeConfig::default()).await;
    assert_eq!((r.exit_reason, r.turns), (ExitReason::FormatError, 3));
    let obs = observations(&r);
    assert_eq!(obs.len(), 2);
    assert!(obs[0].starts_with("ERROR: your last reply did not contain a valid function call: no function call found"), "{}", obs[0]);
    assert!(obs[1].contains("unknown function `python`"));
    // A good reply in between resets the count.
    let mut mixed = replies[..2].to_vec();
    mixed.push(bash("ls"));
    mixed.extend(replies[..2].iter().cloned());
    mixed.push(finish());
    let r = episode(mixed, EpisodeConfig::default()).await;
    assert_eq!(r.exit_reason, ExitReason::Submitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_exceeded() {
    let params = SamplingParams::default();
    let initial = estimate_tokens(&initial_messages(&common::task(), Scaffold::OpenHands)) + params.max_tokens as usize;
    // The first prompt fits; after a long observation the next one does not.
    let config = EpisodeConfig { max_context_tokens: initial + 200, ..EpisodeConfig::default() };
    let r = episode(vec![bash("seq 1 2000"), finish()], config).await;
    assert_eq!((r.exit_reason, r.turns), (ExitReason::ContextExceeded, 1));
    assert!(r.error.as_deref().unwrap().contains("exceeds the context budget"));
    // Observations are truncated in the middle to the configured size.
    let config = EpisodeConfig { max_observation_chars: 100, ..EpisodeConfig::default() };
    let r = episode(vec![bash("seq 1 2000"), finish()], config).await;
    assert_eq!(r.exit_reason, ExitReason::Submitted);
    let obs = observations(&r)[0];
    assert!(obs.starts_with("EXECUTION RESULT of [execute_bash]:\n1\n2\n3\n") && obs.contains("[... Observation truncated due to length ...]") && obs.ends_with("[Command finished with exit code 0]"), "{obs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_and_policy_errors() {
    // A sandbox that is gone: the sandbox's Err ends the rollout as sandbox_error.
    let f = common::fixture();
    let mut sb = f.sandbox().await;
    sb.destroy().await.unwrap();
    let policy = ReplayPolicy::new("replay", vec![bash("ls"), finish()]);
    let r = run_episode(sb.as_ref(), &common::task(), &policy, &SamplingParams::default(), &EpisodeConfig::default(), &id()).await;
    assert_eq!((r.exit_reason, r.turns), (ExitReason::SandboxError, 0));
    assert!(r.error.is_some());
    // A policy with no reply left.
    let r = episode(vec![bash("ls")], EpisodeConfig::default()).await;
    assert_eq!((r.exit_reason, r.turns), (ExitReason::PolicyError, 1));
    assert_eq!(r.error.as_deref(), Some("replay policy has no reply number 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_timeout_is_an_observation() {
    let config = EpisodeConfig { command_timeout: Duration::from_secs(1), ..EpisodeConfig::default() };
    let r = episode(vec![bash("echo start; sleep 30"), finish()], config).await;
    assert_eq!(r.exit_reason, ExitReason::Submitted);
    assert_eq!(observations(&r)[0], "EXECUTION RESULT of [execute_bash]:\nstart\n[Command timed out after 1 seconds. The command and its child processes were killed.]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_solves_the_tiny_task() {
    let f = common::fixture();
    let mut sb = f.sandbox().await;
    let task = common::task();
    let r = run_episode(sb.as_ref(), &task, &OraclePolicy::exact(), &SamplingParams::default(), &EpisodeConfig::default(), &id()).await;
    sb.destroy().await.unwrap();
    assert_eq!(r.exit_reason, ExitReason::Submitted, "{:#?}", r.messages);
    // The extracted patch is the gold patch (same change, same file).
    assert_eq!(r.patch.lines().filter(|l| l.starts_with('+') || l.starts_with('-')).collect::<Vec<_>>(), common::GOLD.lines().filter(|l| l.starts_with('+') || l.starts_with('-')).collect::<Vec<_>>());
    // It ran the failing test's file (this stand-in environment has no pytest; the
    // marshmallow end-to-end test checks a real run).
    let last_call = &r.messages[r.messages.len() - 3].content;
    assert!(last_call.contains("python -m pytest -q -p no:cacheprovider tests/test_calc.py"), "{last_call}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compact_oracle_views_edits_and_finishes() {
    let f = common::fixture();
    let mut sb = f.sandbox().await;
    let task = common::task();
    let oracle = OraclePolicy::exact().with_scaffold(Scaffold::Compact);
    let config = EpisodeConfig { scaffold: Scaffold::Compact, ..EpisodeConfig::default() };
    let r = run_episode(sb.as_ref(), &task, &oracle, &SamplingParams::default(), &config, &id()).await;
    sb.destroy().await.unwrap();
    // view, the bare line (refused: `sub` returns `a - b` too), the line with context, finish
    assert_eq!((r.exit_reason, r.turns), (ExitReason::Submitted, 4), "{:#?}", r.messages);
    assert!(r.messages[5].content.contains("Multiple occurrences of old_str `return a - b`"), "{}", r.messages[5].content);
    assert_eq!(r.patch.lines().filter(|l| l.starts_with('+') || l.starts_with('-')).collect::<Vec<_>>(), common::GOLD.lines().filter(|l| l.starts_with('+') || l.starts_with('-')).collect::<Vec<_>>());
    // The compact prompts, and no thoughts before the calls.
    assert!(r.messages[0].content.starts_with("You fix bugs in the Python repository at /testbed."), "{}", r.messages[0].content);
    assert!(r.messages[1].content.starts_with("<issue>"), "{}", r.messages[1].content);
    assert!(r.messages.iter().filter(|m| m.role == swegym_schema::Role::Assistant).all(|m| m.content.starts_with("<function=")), "{:#?}", r.messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slipping_oracle_submits_a_wrong_fix() {
    // Slipping in every rollout, the oracle gets the tiny task's one added line wrong (its
    // only near miss other than the bug itself: a negated return value) and goes on as the
    // exact oracle does: the tests, then finish.
    let f = common::fixture();
    let mut sb = f.sandbox().await;
    let task = common::task();
    let oracle = OraclePolicy::with_slips(1.0).unwrap();
    // run_episode samples with the rollout's seed (7), which picks the slip
    let r = run_episode(sb.as_ref(), &task, &oracle, &SamplingParams::default(), &EpisodeConfig::default(), &id()).await;
    sb.destroy().await.unwrap();
    assert_eq!(r.exit_reason, ExitReason::Submitted, "{:#?}", r.messages);
    assert_eq!(r.policy_id, "oracle-slips1");
    let changed: Vec<&str> = r.patch.lines().filter(|l| (l.starts_with('+') || l.starts_with('-')) && !l.starts_with("+++") && !l.starts_with("---")).collect();
    assert_eq!(changed, ["-    return a - b", "+    return not a + b"], "{}", r.patch);
    assert!(r.messages[r.messages.len() - 3].content.contains("python -m pytest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_runs_k_rollouts_and_resumes() {
    let f = Arc::new(common::fixture());
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("rollouts.parquet");
    let tasks = vec![common::task()];
    let policy: Arc<dyn Policy> = Arc::new(ReplayPolicy::new("replay", vec![bash("ls"), finish()]));
    let config = SampleConfig { k: 3, jobs: 2, iteration: 2, seed: 1, sampling: SamplingParams::default(), episode: EpisodeConfig::default() };
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let outcome = sample(&tasks, Arc::clone(&policy), f.clone(), &config, &out, move |r| seen2.lock().unwrap().push(r.sample_idx)).await.unwrap();
    assert_eq!((outcome.ran, outcome.resumed, outcome.rollouts.len()), (3, 0, 3));
    assert_eq!(outcome.count(ExitReason::Submitted), 3);
    // two at a time: the third started when one of the first two had finished
    assert!(outcome.last_start_seconds > 0.0 && outcome.last_start_seconds < outcome.wall_seconds, "{} of {}", outcome.last_start_seconds, outcome.wall_seconds);
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, [0, 1, 2]);
    assert!(!swegym_sample::partial_path(&out).exists());
    let rows = swegym_schema::rollout::read_rollouts(&out).unwrap();
    assert_eq!(rows.iter().map(|r| (r.sample_idx, r.iteration)).collect::<Vec<_>>(), [(0, 2), (1, 2), (2, 2)]);
    // Distinct seeds per sample.
    assert_ne!(rows[0].seed, rows[1].seed);
    // A rerun with a larger K runs only the new ones.
    let config = SampleConfig { k: 4, ..config };
    let outcome = sample(&tasks, policy, f.clone(), &config, &out, |_| {}).await.unwrap();
    assert_eq!((outcome.ran, outcome.resumed, outcome.rollouts.len()), (1, 3, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_before_the_rollout_are_not_in_its_patch() {
    // Like an environment install rewriting a tracked file (an sdist's egg-info).
    let f = common::fixture();
    std::fs::write(f.workspace.join("src/pkg/__init__.py"), "__version__ = 'installed'\n").unwrap();
    std::fs::write(f.workspace.join("generated.txt"), "made by the install\n").unwrap();
    let mut sb = f.sandbox().await;
    let policy = ReplayPolicy::new("replay", vec![bash("git status --porcelain"), finish()]);
    let r = run_episode(sb.as_ref(), &common::task(), &policy, &SamplingParams::default(), &EpisodeConfig::default(), &id()).await;
    assert_eq!(r.exit_reason, ExitReason::Submitted);
    assert_eq!((r.patch.as_str(), r.empty_patch), ("", true));
    // The agent sees an ordinary checkout (nothing staged).
    assert!(observations(&r)[0].starts_with("EXECUTION RESULT of [execute_bash]:\n M src/pkg/__init__.py\n?? generated.txt\n"), "{}", observations(&r)[0]);
    // A real edit on top is the whole patch.
    let policy = ReplayPolicy::new("replay", vec![bash("sed -i 's/a - b/a + b/' src/pkg/calc.py"), finish()]);
    let r = run_episode(sb.as_ref(), &common::task(), &policy, &SamplingParams::default(), &EpisodeConfig::default(), &id()).await;
    assert!(r.patch.starts_with("diff --git a/src/pkg/calc.py b/src/pkg/calc.py\n") && !r.patch.contains("__init__") && !r.patch.contains("generated"), "{}", r.patch);
    sb.destroy().await.unwrap();
}
