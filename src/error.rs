//! Errors that reach the operator. Each one names what failed, where, and what to do next;
//! the exit code follows from the kind.

use std::fmt;

/// Exit codes promised by the command line.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const INVALID: i32 = 2;
    pub const LOCKED: i32 = 3;
}

/// An expected failure, rendered as one clear message plus an optional hint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid input or configuration, found before any node was touched.
    #[error("{file}: {message}")]
    Config {
        file: String,
        message: String,
        fix: String,
    },

    /// The environment's lock is held by another operation.
    #[error("{node}: environment {env} is locked by another operation: {holder}")]
    Locked {
        node: String,
        env: String,
        holder: String,
    },

    /// A node failed during a step; what the tool did about it is in `outcome`.
    #[error("{node}: step `{step}` failed: {cause}")]
    Step {
        node: String,
        step: String,
        cause: String,
        outcome: String,
        hint: String,
    },

    /// Several nodes failed; each failure was already reported.
    #[error("{failed} of {total} node(s) failed")]
    Nodes { failed: usize, total: usize },
}

impl Error {
    pub fn config(
        file: impl fmt::Display,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Error::Config {
            file: file.to_string(),
            message: message.into(),
            fix: fix.into(),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. } => exit::INVALID,
            Error::Locked { .. } => exit::LOCKED,
            Error::Step { .. } | Error::Nodes { .. } => exit::FAILED,
        }
    }

    /// The lines printed after the message: what happened and what to do.
    pub fn hints(&self) -> Vec<String> {
        match self {
            Error::Config { fix, .. } => vec![format!("fix: {fix}")],
            Error::Locked { env, .. } => vec![format!(
                "wait for it to finish, or check `slipway lock status {env}`"
            )],
            Error::Step { outcome, hint, .. } => {
                let mut lines = vec![];
                if !outcome.is_empty() {
                    lines.push(format!("outcome: {outcome}"));
                }
                if !hint.is_empty() {
                    lines.push(format!("next: {hint}"));
                }
                lines
            }
            Error::Nodes { .. } => vec![],
        }
    }
}

/// Finds the exit code for any error chain: ours decide, anything else is a failure.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<Error>())
        .map_or(exit::FAILED, Error::exit_code)
}
