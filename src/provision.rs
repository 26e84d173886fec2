//! `tiffin provision`: make OpenSSH serve every host (accounts, chroots, keys, sshd drop-in).

use crate::cli::{Error, Exit, FleetArgs};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("provision is not implemented yet")]
    NotYet,
}

impl ProvisionError {
    pub fn exit_code(&self) -> u8 {
        1
    }
}

pub fn command(_args: &FleetArgs, _dry_run: bool, _prune: bool) -> Result<Exit, Error> {
    Err(ProvisionError::NotYet.into())
}
