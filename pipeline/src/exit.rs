//! The failure of a command as its documented exit code: 0 success; 1 the run finished but
//! a check failed (an invalid instance in `dataset validate`); 2 bad usage (clap, or flags
//! that do not go together); 3 bad input (dataset, predictions, config, model weights, a
//! loss that stops being finite); 4 infrastructure (docker unreachable, sandbox tool
//! missing, every grading job of a stage an `env_error`). `main` maps an error to its code;
//! anything not an [`Exit`] is 1.

/// A failure with its exit code (see the module doc).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl Exit {
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Exit { code: 2, message: message.into() }.into()
    }
    pub fn check_failed(message: impl Into<String>) -> anyhow::Error {
        Exit { code: 1, message: message.into() }.into()
    }
    pub fn bad_input(message: impl Into<String>) -> anyhow::Error {
        Exit { code: 3, message: message.into() }.into()
    }
    pub fn infra(message: impl Into<String>) -> anyhow::Error {
        Exit { code: 4, message: message.into() }.into()
    }
}

