//! lbctl: the operator's command line for lbd, over the control socket
//! (see [`crate::api::types`]).
//!
//! `args` is the command tree, `client` the HTTP client, `output` the pure
//! rendering of answers, `commands` ties them together. Exit status: 0 done,
//! 1 the daemon refused or could not be reached, 2 usage error.

pub mod args;
pub mod client;
pub mod commands;
pub mod output;

use std::{path::PathBuf, process::ExitCode};

use hyper::StatusCode;

pub use args::Cli;

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// The socket could not be reached.
    Connect {
        socket: PathBuf,
        error: std::io::Error,
    },
    /// lbd answered with an error.
    Daemon { status: StatusCode, message: String },
    /// Anything else: timeouts, broken connections, answers lbctl cannot read.
    Other(String),
    /// stdout was closed under us (`lbctl stats --watch | head`).
    BrokenPipe,
    /// Arguments clap accepted one by one but not together (a health check
    /// whose timeout is not below its interval): a usage error, exit 2.
    Usage(clap::Error),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Connect { socket, error } => {
                f.write_str(&client::connect_message(socket, error))
            }
            CliError::Daemon { message, .. } => f.write_str(message),
            CliError::Other(m) => f.write_str(m),
            CliError::BrokenPipe => f.write_str("stdout closed"),
            CliError::Usage(e) => write!(f, "{}", e.render()),
        }
    }
}

impl std::error::Error for CliError {}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::BrokenPipe => 0,
            CliError::Usage(_) => 2,
            // Argument errors are clap's (exit 2) before any request; the
            // daemon's own 400 is a refusal like any other.
            CliError::Connect { .. } | CliError::Daemon { .. } | CliError::Other(_) => 1,
        }
    }
}

/// Runs one parsed command; prints `lbctl: <message>` on failure.
pub async fn run(cli: Cli) -> ExitCode {
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(CliError::Usage(e)) => {
            // As clap prints its own usage errors.
            let _ = e.print();
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("lbctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
