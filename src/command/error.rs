//! What a command gives back to the shell: its error (each with its exit code) or how it succeeded.

use std::process::ExitCode;

use crate::admin::fleet::FleetError;

/// Errors at the command layer, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Provision(#[from] crate::server::provision::ProvisionError),
    #[error(transparent)]
    Pull(#[from] crate::client::PullError),
}

impl Error {
    /// 1: the operation failed; 2: bad usage or bad input (configuration, fleet repository).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Fleet(FleetError::Io { .. }) => 1,
            Error::Fleet(_) | Error::Usage(_) => 2,
            Error::Failed(_) => 1,
            Error::Provision(e) => e.exit_code(),
            Error::Pull(e) => e.exit_code(),
        }
    }
}

/// What a successful command returns to the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok,
    /// `status` found a host failed, rolled back, stale or unreadable.
    Alarm,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        match e {
            Exit::Ok => ExitCode::SUCCESS,
            Exit::Alarm => ExitCode::from(3),
        }
    }
}
