//! The sampling stage: an OpenHands-style CodeAct agent acting in task sandboxes, driven
//! by a [`Policy`], K rollouts per task, appended durably as they finish.
//!
//! Files, one concept each: [`action`] (the `<function=…>` text form and its tolerant
//! parser), [`prompt`] (system prompt, task prompt, observations, token estimate),
//! [`editor`] (`str_replace_editor` with OpenHands' semantics), [`stuck`] (OpenHands'
//! stuck-detector rules), [`episode`] (one rollout: the agent loop, `execute_bash`, patch
//! extraction), [`policy`] (the trait and the oracle / openai / replay policies),
//! [`stage`] (K × tasks rollouts with bounded concurrency, durable resume, Parquet).
//!
//! Architecture invariant: this stage knows nothing of grading — a rollout's verdict
//! columns stay null until the evaluate stage (run by the pipeline) fills them — and it
//! reads no environment variables; endpoints, keys and paths are handed in. A failure of
//! one rollout (sandbox, policy, malformed model output) is its exit reason, never an `Err`.

pub mod action;
pub mod editor;
pub mod episode;
pub mod policy;
pub mod prompt;
pub mod stage;
pub mod stuck;

pub use action::{Action, EditorArgs, EditorCommand, ParseError};
pub use episode::{run_episode, EpisodeConfig, RolloutId};
pub use policy::{Completion, Policy, PolicyError, PolicyKind, PolicyRequest, SamplingParams};
pub use stage::{partial_path, rollout_seed, sample, SampleConfig, SampleError, SampleOutcome, SandboxProvider};
pub use swegym_schema::{ExitReason, Message, Role, Rollout};
