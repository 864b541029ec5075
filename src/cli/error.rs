//! [`CliError`]: what an operator command of the binary can fail with, in the words it prints.

use crate::spool::SpoolError;

use super::admin::AdminError;

/// Errors of the operator commands; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The spool could not be opened or an operation on it failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A call to a running gateway's admin API failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// A command was called wrongly (a flag's value cannot be used).
    #[error("{0}")]
    Usage(String),
    /// A running gateway answered something the command cannot use.
    #[error("{0}")]
    Answer(String),
    /// Writing the command's output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}
