//! Policies: whatever writes the agent's next message. One async trait; the episode loop
//! does not know which one it talks to.
//!
//! - [`oracle::OraclePolicy`]: knows the gold patch, plays an expert trajectory (warm-start
//!   SFT data).
//! - [`openai::OpenAiPolicy`]: any OpenAI-compatible `/v1/chat/completions` server (vLLM,
//!   SGLang, llama.cpp), LoRA adapters by name.
//! - [`replay::ReplayPolicy`]: canned replies in order (tests, demos).
//!
//! - [`local::LocalPolicy`]: our own model (crates/lm) through its batched engine.

pub mod local;
pub mod openai;
pub mod oracle;
pub mod replay;

use swegym_schema::{Message, Task};

/// How to sample one reply.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f64,
    pub top_p: f64,
    /// New tokens per reply.
    pub max_tokens: u32,
    pub stop: Vec<String>,
    /// Per-rollout seed (servers that support it make sampling reproducible).
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        // OpenHands stops non-function-calling models at the end of the first call.
        SamplingParams { temperature: 1.0, top_p: 1.0, max_tokens: 2048, stop: vec!["</function".to_string()], seed: None }
    }
}

/// One request: the conversation so far and how to sample. `task` is there for the oracle
/// (which reads the gold patch); model policies must not look at its gold fields.
#[derive(Debug, Clone, Copy)]
pub struct PolicyRequest<'a> {
    pub task: &'a Task,
    pub messages: &'a [Message],
    pub params: &'a SamplingParams,
}

/// One reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Why a policy gave no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    /// The prompt does not fit the model's context (the server said so).
    #[error("context window exceeded: {0}")]
    ContextExceeded(String),
    /// The server kept failing (after retries) or answered something unusable.
    #[error("{0}")]
    Server(String),
    /// A replay policy ran out of replies.
    #[error("replay policy has no reply number {0}")]
    Exhausted(usize),
    /// The policy cannot act on this task (e.g. the oracle on a task without a gold patch).
    #[error("{0}")]
    Unsupported(String),
}

/// Writes the next assistant message.
#[async_trait::async_trait]
pub trait Policy: Send + Sync {
    /// Recorded in every rollout (`policy_id`), e.g. `oracle`, `openai:qwen2.5-coder-7b@iter1`.
    fn id(&self) -> String;

    async fn complete(&self, request: PolicyRequest<'_>) -> Result<Completion, PolicyError>;

    /// What the policy's own generation engine has done (the local policy's batched
    /// engine); None for policies without one.
    fn engine_stats(&self) -> Option<swegym_lm::GenerationStats> {
        None
    }

    /// Prompt tokens of `messages` as this policy's tokenizer counts them; the default is
    /// the character estimate of [`crate::prompt::estimate_tokens`].
    fn count_tokens(&self, messages: &[Message]) -> usize {
        crate::prompt::estimate_tokens(messages)
    }
}

/// Which policy, as chosen on the command line or in a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    Local,
    Oracle,
    Openai,
    Replay,
}
