//! The failure of a command as its documented exit code: 0 success; 1 the run finished but
//! a check failed (an invalid instance in `dataset validate`); 2 bad usage (clap, or flags
//! that do not go together); 3 bad input (dataset, predictions, config, model weights, a
//! loss that stops being finite); 4 infrastructure (docker unreachable, sandbox tool
//! missing, every grading job of a stage an `env_error`). `main` maps an error to its code
//! with [`exit_code`], the one mapping; anything not an [`Exit`] is 1.

/// What kind of failure ends a command; its discriminant is the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    CheckFailed = 1,
    Usage = 2,
    BadInput = 3,
    Infra = 4,
}

/// A failure with its kind (see the module doc).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub kind: ExitKind,
    pub message: String,
}

impl Exit {
    fn of(kind: ExitKind, message: impl Into<String>) -> anyhow::Error {
        Exit { kind, message: message.into() }.into()
    }
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Exit::of(ExitKind::Usage, message)
    }
    pub fn check_failed(message: impl Into<String>) -> anyhow::Error {
        Exit::of(ExitKind::CheckFailed, message)
    }
    pub fn bad_input(message: impl Into<String>) -> anyhow::Error {
        Exit::of(ExitKind::BadInput, message)
    }
    pub fn infra(message: impl Into<String>) -> anyhow::Error {
        Exit::of(ExitKind::Infra, message)
    }
}

/// The process exit code of a command's error: its [`ExitKind`] when it is an [`Exit`]
/// (wherever in the context chain), else 1.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    err.downcast_ref::<Exit>().map_or(1, |e| e.kind as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_exits_with_its_documented_code() {
        use anyhow::Context as _;
        let cases = [(Exit::check_failed("x"), 1), (Exit::usage("x"), 2), (Exit::bad_input("x"), 3), (Exit::infra("x"), 4), (anyhow::anyhow!("x"), 1)];
        for (err, code) in cases {
            assert_eq!(exit_code(&err), code);
            assert_eq!(exit_code(&Err::<(), _>(err).context("outer").unwrap_err()), code, "the code survives added context");
        }
    }
}
