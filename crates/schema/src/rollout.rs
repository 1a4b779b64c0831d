//! A rollout: one agent trajectory on one task (the chat messages, the patch it left, why it
//! ended, its cost), and its Parquet layout.
//!
//! `messages` is `list<struct<role: string, content: string>>`, the layout TRL, torchtune
//! and `datasets` read. The verdict columns (`resolved`, `status`) are null until the
//! rollout's patch is graded (`swegym sample --evaluate`, or a later join on
//! `(instance_id, sample_idx)` with a `verdicts.parquet`).

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::SchemaError;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat message (OpenAI / TRL shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Message {
        Message { role: Role::System, content: content.into() }
    }
    pub fn user(content: impl Into<String>) -> Message {
        Message { role: Role::User, content: content.into() }
    }
    pub fn assistant(content: impl Into<String>) -> Message {
        Message { role: Role::Assistant, content: content.into() }
    }
}

/// Why a rollout ended; exactly one per rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// The agent called `finish`.
    Submitted,
    /// The turn limit was reached.
    MaxTurns,
    /// OpenHands' stuck detector fired (repeated actions, errors, ping-pong, monologue).
    StuckInLoop,
    /// The next prompt would not fit the context budget (or the server said so).
    ContextExceeded,
    /// Too many unparseable replies in a row.
    FormatError,
    /// The sandbox failed (an infrastructure failure, not the model's).
    SandboxError,
    /// The policy could not answer after its retries (an infrastructure failure: the
    /// server was unreachable or kept failing), kept apart from the model's failures.
    PolicyError,
}

impl ExitReason {
    pub const ALL: [ExitReason; 7] = [
        ExitReason::Submitted,
        ExitReason::MaxTurns,
        ExitReason::StuckInLoop,
        ExitReason::ContextExceeded,
        ExitReason::FormatError,
        ExitReason::SandboxError,
        ExitReason::PolicyError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Submitted => "submitted",
            ExitReason::MaxTurns => "max_turns",
            ExitReason::StuckInLoop => "stuck_in_loop",
            ExitReason::ContextExceeded => "context_exceeded",
            ExitReason::FormatError => "format_error",
            ExitReason::SandboxError => "sandbox_error",
            ExitReason::PolicyError => "policy_error",
        }
    }

    /// The infrastructure's failures (not counted against the model).
    pub fn is_infra_failure(self) -> bool {
        matches!(self, ExitReason::SandboxError | ExitReason::PolicyError)
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One agent trajectory on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub instance_id: String,
    /// Index among the K rollouts of this task (0..K).
    pub sample_idx: u32,
    /// The RFT iteration whose policy sampled it (0 = the base or teacher policy).
    pub iteration: u32,
    pub policy_id: String,
    pub messages: Vec<Message>,
    /// `git diff --cached <base>` at the end, test files excluded.
    pub patch: String,
    /// The patch changes nothing (SWE-Gym's empty-patch metric).
    pub empty_patch: bool,
    pub exit_reason: ExitReason,
    /// Assistant turns (LM calls).
    pub turns: u32,
    /// Prompt tokens summed over the LM calls.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub wall_seconds: f64,
    pub temperature: f64,
    pub seed: u64,
    /// What went wrong for `sandbox_error` / `policy_error` / `context_exceeded`.
    #[serde(default)]
    pub error: Option<String>,
    /// Set by evaluation; null before.
    #[serde(default)]
    pub resolved: Option<bool>,
    /// The verdict's status (`resolved`, `unresolved`, `empty_patch`, …); null before evaluation.
    #[serde(default)]
    pub status: Option<String>,
}

/// The Arrow schema of [`Rollout`] rows.
pub fn rollout_schema() -> SchemaRef {
    let s = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let message = Fields::from(vec![s("role", false), s("content", false)]);
    Arc::new(Schema::new(vec![
        s("instance_id", false),
        Field::new("sample_idx", DataType::UInt32, false),
        Field::new("iteration", DataType::UInt32, false),
        s("policy_id", false),
        Field::new("messages", DataType::List(Arc::new(Field::new("item", DataType::Struct(message), true))), false),
        s("patch", false),
        Field::new("empty_patch", DataType::Boolean, false),
        s("exit_reason", false),
        Field::new("turns", DataType::UInt32, false),
        Field::new("prompt_tokens", DataType::UInt64, false),
        Field::new("completion_tokens", DataType::UInt64, false),
        Field::new("wall_seconds", DataType::Float64, false),
        Field::new("temperature", DataType::Float64, false),
        Field::new("seed", DataType::UInt64, false),
        s("error", true),
        Field::new("resolved", DataType::Boolean, true),
        s("status", true),
    ]))
}

/// Writes rollouts as Parquet (atomically).
pub fn write_rollouts(path: &Path, rollouts: &[Rollout]) -> Result<(), SchemaError> {
    crate::parquet_io::write_parquet(path, rollout_schema(), rollouts)
}

/// Reads a rollouts Parquet file back.
pub fn read_rollouts(path: &Path) -> Result<Vec<Rollout>, SchemaError> {
    crate::parquet_io::read_parquet_json(path)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value(v)
                .map_err(|e| SchemaError::Format { path: path.to_path_buf(), message: format!("row {i}: {e}") })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollouts_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.parquet");
        let r = Rollout {
            instance_id: "a__b-1".into(),
            sample_idx: 3,
            iteration: 1,
            policy_id: "oracle".into(),
            messages: vec![Message::system("sys"), Message::user("do it"), Message::assistant("<function=finish>\n</function>")],
            patch: "diff --git a/x b/x\n".into(),
            empty_patch: false,
            exit_reason: ExitReason::StuckInLoop,
            turns: 1,
            prompt_tokens: 10,
            completion_tokens: 5,
            wall_seconds: 1.5,
            temperature: 0.7,
            seed: u64::MAX,
            error: None,
            resolved: None,
            status: None,
        };
        let mut graded = r.clone();
        graded.sample_idx = 4;
        graded.resolved = Some(true);
        graded.status = Some("resolved".into());
        write_rollouts(&p, &[r.clone(), graded.clone()]).unwrap();
        assert_eq!(read_rollouts(&p).unwrap(), vec![r, graded]);
    }
}
