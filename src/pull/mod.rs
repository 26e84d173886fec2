//! `tiffin pull`: one poll of a client (connect, fetch, verify, deploy, rebuild, report).

use std::path::PathBuf;

use crate::cli::{Error, Exit};

/// Options of `tiffin pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The client configuration
    #[arg(long, default_value = "/etc/tiffin/client.toml", value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("pull is not implemented yet")]
    NotYet,
}

impl PullError {
    pub fn exit_code(&self) -> u8 {
        1
    }
}

pub fn command(_args: &PullArgs) -> Result<Exit, Error> {
    Err(PullError::NotYet.into())
}
