//! What every command of the binary shares: writing its lines to stdout (a closed pipe, as
//! `| head` leaves, is not an error) and reading the admin API's token file.

use std::io::Write as _;
use std::process::ExitCode;

use super::CliError;

/// Writes lines to stdout, stopping at the first error (a closed pipe: `routes | head -1`).
pub fn print_lines(lines: impl IntoIterator<Item = String>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()
}

/// Whether an error is, or was caused by, writing to a closed pipe.
pub fn broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The exit of a command whose output could not be written: quietly `done` (what the command
/// would have exited with) when the reader closed the pipe (as `head` does), else the error and 1.
pub fn stdout_failed(e: &std::io::Error, done: ExitCode) -> ExitCode {
    if broken_pipe(e) {
        return done;
    }
    eprintln!("openim-callback-gateway: cannot write to stdout: {e}");
    ExitCode::FAILURE
}

/// The bearer token in `token_file` (`--token-file`, the gateway's `admin_token_file`), if given.
pub fn admin_token(token_file: Option<&std::path::Path>) -> Result<Option<String>, CliError> {
    token_file
        .map(crate::config::read_admin_token)
        .transpose()
        .map(|t| t.map(|t| t.expose().to_owned()))
        .map_err(|e| CliError::Usage(format!("--token-file: {e}")))
}
