//! One rollout: the agent loop in a live sandbox, from the task prompt to an exit reason and
//! the patch left in /testbed.
//!
//! Loop: turn limit → context budget (the policy's token count of the prompt plus the reply
//! budget) → the policy's reply → parse → run the tool → `EXECUTION RESULT of [NAME]:` user
//! message → stuck detector. Exactly one [`ExitReason`] ends it. Unparseable replies get a
//! format-error user message; `max_format_errors` of them in a row end the rollout.
//!
//! `execute_bash`: each call is one `Sandbox::exec` (its own `bash -c`) with the configured
//! timeout (default 300 s, as OpenHands). The working directory carries over: the command
//! runs after `cd <last cwd>`, and a marker line with `$PWD` is printed after it and cut from
//! the observation, so `cd` persists across calls. Environment variables, shell functions
//! and background jobs do not persist (each call is a fresh shell); a command that `exit`s
//! keeps the previous directory.
//!
//! The patch at the end: `git add -A && git diff --cached --no-color <base>`, with test
//! files removed (`swegym_schema::patch`). The base is the *tree* of /testbed as the rollout
//! starts (`git add -A && git write-tree`, then `git reset` so the index looks untouched),
//! not HEAD: an environment's install can change tracked files (`pip install -e .`
//! rewrites the `*.egg-info` an sdist commits), and a diff against HEAD would put those
//! changes in every patch — no rollout would ever have an empty patch. The grading sandbox
//! starts from the same installed state, so the patch applies there as it is.

use std::time::{Duration, Instant};

use swegym_sandbox::{ExecRequest, Sandbox, SandboxError, TESTBED};
use swegym_schema::patch::{is_empty_patch, remove_test_files};
use swegym_schema::{ExitReason, Message, Rollout, Task};

use crate::action::{is_plain_message, normalize_reply, parse_action, Action};
use crate::editor::{quote, Editor};
use crate::policy::{Policy, PolicyError, PolicyRequest, SamplingParams};
use crate::prompt;
use crate::stuck::{Event, StuckDetector};

/// Limits and sizes of one rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeConfig {
    /// LM calls per rollout.
    pub max_turns: u32,
    /// Characters of one observation kept (head + tail).
    pub max_observation_chars: usize,
    /// Prompt tokens plus the reply budget (`max_tokens`) must fit this.
    pub max_context_tokens: usize,
    /// Unparseable replies in a row that end the rollout.
    pub max_format_errors: u32,
    /// Limit of one `execute_bash` command.
    pub command_timeout: Duration,
    /// Bytes of a command's output read back from the sandbox (before truncation to
    /// `max_observation_chars`).
    pub command_output_cap: usize,
    /// The prompts the agent gets.
    pub scaffold: prompt::Scaffold,
}

impl Default for EpisodeConfig {
    fn default() -> Self {
        EpisodeConfig {
            max_turns: 30,
            max_observation_chars: 30_000,
            max_context_tokens: 32_768,
            max_format_errors: 3,
            command_timeout: Duration::from_secs(300),
            command_output_cap: 1 << 20,
            scaffold: prompt::Scaffold::OpenHands,
        }
    }
}

/// Who the rollout is, for the row.
#[derive(Debug, Clone)]
pub struct RolloutId {
    pub sample_idx: u32,
    pub iteration: u32,
    pub seed: u64,
}

/// Runs one rollout of `policy` on `task` in `sandbox` (whose /testbed is the task's
/// workspace at its base). Never fails: a sandbox or policy failure is the exit reason.
pub async fn run_episode(
    sandbox: &dyn Sandbox,
    task: &Task,
    policy: &dyn Policy,
    params: &SamplingParams,
    config: &EpisodeConfig,
    id: &RolloutId,
) -> Rollout {
    let started = Instant::now();
    let mut ep = Episode::new(task, config);
    let params = SamplingParams { seed: Some(id.seed), ..params.clone() };
    let (exit_reason, mut error) = match snapshot_tree(sandbox, config).await {
        Err(e) => (ExitReason::SandboxError, Some(format!("snapshotting the workspace: {e}"))),
        Ok(base) => {
            let (reason, error) = ep.run(sandbox, task, policy, &params).await;
            match extract_patch(sandbox, task, &base, config).await {
                Ok(patch) => ep.patch = patch,
                Err(e) if reason == ExitReason::SandboxError => tracing::debug!(error = %e, "no patch after a sandbox error"),
                Err(e) => return ep.into_rollout(task, policy, &params, id, ExitReason::SandboxError, Some(format!("extracting the patch: {e}")), started),
            }
            (reason, error)
        }
    };
    if error.is_none() && exit_reason == ExitReason::StuckInLoop {
        error = ep.stuck_rule.map(|r| r.describe().to_string());
    }
    ep.into_rollout(task, policy, &params, id, exit_reason, error, started)
}

struct Episode<'a> {
    config: &'a EpisodeConfig,
    messages: Vec<Message>,
    cwd: String,
    editor: Editor,
    stuck: StuckDetector,
    stuck_rule: Option<crate::stuck::StuckRule>,
    turns: u32,
    prompt_tokens: u64,
    completion_tokens: u64,
    patch: String,
    /// Unique per episode so a command's own output cannot fake it.
    cwd_marker: String,
}

impl<'a> Episode<'a> {
    fn new(task: &Task, config: &'a EpisodeConfig) -> Episode<'a> {
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Episode {
            config,
            messages: prompt::initial_messages(task, config.scaffold),
            cwd: TESTBED.to_string(),
            editor: Editor::new(TESTBED, config.command_timeout),
            stuck: StuckDetector::new(),
            stuck_rule: None,
            turns: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            patch: String::new(),
            cwd_marker: format!("__SWEGYM_CWD_{nonce:x}__"),
        }
    }

    async fn run(&mut self, sandbox: &dyn Sandbox, task: &Task, policy: &dyn Policy, params: &SamplingParams) -> (ExitReason, Option<String>) {
        let mut format_errors = 0u32;
        loop {
            if self.turns >= self.config.max_turns {
                return (ExitReason::MaxTurns, None);
            }
            let prompt_tokens = policy.count_tokens(&self.messages);
            if prompt_tokens + params.max_tokens as usize > self.config.max_context_tokens {
                let msg = format!(
                    "the prompt has {prompt_tokens} tokens; with {} for the reply it exceeds the context budget of {}",
                    params.max_tokens, self.config.max_context_tokens
                );
                return (ExitReason::ContextExceeded, Some(msg));
            }
            let completion = match policy.complete(PolicyRequest { task, messages: &self.messages, params }).await {
                Ok(c) => c,
                Err(PolicyError::ContextExceeded(m)) => return (ExitReason::ContextExceeded, Some(m)),
                Err(e) => return (ExitReason::PolicyError, Some(e.to_string())),
            };
            self.turns += 1;
            self.prompt_tokens += completion.prompt_tokens;
            self.completion_tokens += completion.completion_tokens;
            let reply = normalize_reply(&completion.text);
            self.messages.push(Message::assistant(reply.clone()));
            let action = match parse_action(&reply) {
                Ok(a) => a,
                Err(e) => {
                    format_errors += 1;
                    tracing::debug!(turn = self.turns, error = %e, "unparseable reply");
                    if is_plain_message(&reply) {
                        self.stuck.push(Event::Message(reply.trim().to_string()));
                        if let Some(rule) = self.stuck.check() {
                            self.stuck_rule = Some(rule);
                            return (ExitReason::StuckInLoop, None);
                        }
                    }
                    if format_errors >= self.config.max_format_errors {
                        return (ExitReason::FormatError, Some(format!("{format_errors} replies in a row without a valid function call; last: {e}")));
                    }
                    self.messages.push(prompt::format_error_message(&e.to_string()));
                    continue;
                }
            };
            format_errors = 0;
            let (observation, is_error) = match &action {
                Action::Finish { .. } => return (ExitReason::Submitted, None),
                Action::ExecuteBash { command } => match self.bash(sandbox, command).await {
                    Ok(o) => (o, false),
                    Err(e) => return (ExitReason::SandboxError, Some(format!("execute_bash: {e}"))),
                },
                Action::StrReplaceEditor(args) => match self.editor.run(sandbox, args).await {
                    Ok(o) => (o.text, o.is_error),
                    Err(e) => return (ExitReason::SandboxError, Some(format!("str_replace_editor: {e}"))),
                },
            };
            self.messages.push(prompt::observation_message(action.tool_name(), &observation, self.config.max_observation_chars));
            self.stuck.push(Event::Step { action, observation, is_error });
            if let Some(rule) = self.stuck.check() {
                self.stuck_rule = Some(rule);
                return (ExitReason::StuckInLoop, None);
            }
        }
    }

    /// One `execute_bash`: runs in the last working directory, reports the new one.
    async fn bash(&mut self, sandbox: &dyn Sandbox, command: &str) -> Result<String, SandboxError> {
        let marker = &self.cwd_marker;
        let script = format!(
            "cd {cwd} 2>/dev/null || cd {TESTBED}\n{command}\n__swegym_ec=$?\nprintf '\\n{marker}%s\\n' \"$PWD\"\nexit $__swegym_ec",
            cwd = quote(&self.cwd)
        );
        let request = ExecRequest { output_cap: self.config.command_output_cap, ..ExecRequest::new(script, self.config.command_timeout) };
        let out = sandbox.exec(&request).await?;
        let mut output = out.output;
        if let Some(at) = output.rfind(&format!("\n{marker}")) {
            let line_end = output[at + 1..].find('\n').map_or(output.len(), |i| at + 1 + i);
            let cwd = output[at + 1 + marker.len()..line_end].trim().to_string();
            if cwd.starts_with('/') {
                self.cwd = cwd;
            }
            output.replace_range(at..(line_end + 1).min(output.len()), "");
        }
        let mut lines: Vec<String> = Vec::new();
        let output = output.trim_end_matches('\n');
        if !output.is_empty() {
            lines.push(output.to_string());
        }
        if out.timed_out {
            lines.push(format!(
                "[Command timed out after {} seconds. The command and its child processes were killed.]",
                self.config.command_timeout.as_secs()
            ));
        } else {
            let code = out.exit_code.map_or_else(|| "-1".to_string(), |c| c.to_string());
            lines.push(format!("[Current working directory: {}]\n[Command finished with exit code {code}]", self.cwd));
        }
        Ok(lines.join("\n"))
    }

    #[allow(clippy::too_many_arguments)]
    fn into_rollout(
        self,
        task: &Task,
        policy: &dyn Policy,
        params: &SamplingParams,
        id: &RolloutId,
        exit_reason: ExitReason,
        error: Option<String>,
        started: Instant,
    ) -> Rollout {
        let empty_patch = is_empty_patch(&self.patch, &task.test_files());
        tracing::info!(exit_reason = exit_reason.as_str(), turns = self.turns, empty_patch, "rollout finished");
        Rollout {
            instance_id: task.instance_id.clone(),
            sample_idx: id.sample_idx,
            iteration: id.iteration,
            policy_id: policy.id(),
            messages: self.messages,
            patch: self.patch,
            empty_patch,
            exit_reason,
            turns: self.turns,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            wall_seconds: started.elapsed().as_secs_f64(),
            temperature: params.temperature,
            seed: id.seed,
            error,
            resolved: None,
            status: None,
        }
    }
}

async fn git(sandbox: &dyn Sandbox, command: String, config: &EpisodeConfig, cap: usize) -> Result<String, SandboxError> {
    let request = ExecRequest { output_cap: cap, ..ExecRequest::new(command.clone(), config.command_timeout.max(Duration::from_secs(120))) };
    let out = sandbox.exec(&request).await?;
    if out.exit_code != Some(0) {
        return Err(SandboxError::Other(format!("`{command}` failed (exit {:?}): {}", out.exit_code, out.output.trim())));
    }
    if out.truncated {
        return Err(SandboxError::Other(format!("`{command}`: output larger than {cap} bytes")));
    }
    Ok(out.output)
}

/// The tree of /testbed as the rollout starts: `git add -A && git write-tree`, then the
/// index is reset to HEAD so the agent sees an ordinary checkout.
async fn snapshot_tree(sandbox: &dyn Sandbox, config: &EpisodeConfig) -> Result<String, SandboxError> {
    let out = git(sandbox, format!("cd {TESTBED} && git add -A && git write-tree && git reset -q"), config, 4096).await?;
    let tree = out.trim().to_string();
    if tree.len() < 40 || !tree.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(SandboxError::Other(format!("git write-tree printed {tree:?}")));
    }
    Ok(tree)
}

/// `git add -A && git diff --cached --no-color <base>`, test files removed.
async fn extract_patch(sandbox: &dyn Sandbox, task: &Task, base: &str, config: &EpisodeConfig) -> Result<String, SandboxError> {
    let diff = git(sandbox, format!("cd {TESTBED} && git add -A && git diff --cached --no-color {base}"), config, 64 << 20).await?;
    Ok(remove_test_files(&diff, &task.test_files()))
}
