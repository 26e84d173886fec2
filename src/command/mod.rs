//! One module per `tiffin` command: its arguments, its run, its printing and exit status; the work itself is below, in the domain modules.

pub mod check;
pub mod confirm_boot;
pub mod error;
pub mod host;
pub mod init;
pub mod notify;
pub mod pause;
pub mod provision;
pub mod publish;
pub mod pull;
pub mod reboot;
pub mod rollout;
pub mod sign;
pub mod status;
pub mod trigger;
pub mod verify;

use std::path::PathBuf;

use clap::Args;

use crate::admin::fleet::{Fleet, FleetError};
use crate::command::error::Error;
use crate::core::names::HostName;

/// Where admin commands find the fleet repository.
#[derive(Debug, Clone, Args)]
pub struct RepoArgs {
    /// The fleet repository [default: the current directory]
    #[arg(long, env = "TIFFIN_FLEET", value_name = "DIR")]
    pub fleet: Option<PathBuf>,
}

impl RepoArgs {
    pub fn load(&self) -> Result<Fleet, Error> {
        let root = self.fleet.clone().unwrap_or_else(|| PathBuf::from("."));
        Ok(Fleet::load(&root)?)
    }
}

/// Where server commands find the fleet and the chroots.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Use this chroot root instead of fleet.toml's server.chroot_root (e.g. to publish into a test directory)
    #[arg(long, value_name = "DIR")]
    pub chroot_root: Option<PathBuf>,
    /// Use this state directory instead of fleet.toml's server.state_dir (where each host's last seq is kept)
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl FleetArgs {
    pub fn load(&self) -> Result<Fleet, Error> {
        self.repo.load()
    }
    pub fn chroot_root(&self, fleet: &Fleet) -> PathBuf {
        self.chroot_root
            .clone()
            .unwrap_or_else(|| fleet.config.server.chroot_root.clone())
    }
    pub fn state_dir(&self, fleet: &Fleet) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| fleet.config.server.state_dir.clone())
    }
}

/// Fails with every error of the fleet that concerns `hosts`, including a host directory that
/// did not load for a reason `Fleet::load` does not record (it leads outside the repository).
pub fn require_valid(fleet: &Fleet, hosts: &[HostName]) -> Result<(), Error> {
    let mut errors: Vec<_> = fleet.errors_for(hosts).cloned().collect();
    for host in hosts.iter().filter(|h| !fleet.hosts.contains_key(*h)) {
        if errors.iter().any(|p| p.host.as_ref() == Some(host)) {
            continue;
        }
        match crate::admin::host_tree::resolve_host_tree(&fleet.root, host) {
            Err(mut found) => errors.append(&mut found),
            Ok(_) => errors.push(crate::core::diag::Problem::error(
                Some(host),
                std::path::Path::new("hosts").join(host.as_str()),
                "this host did not load",
            )),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(FleetError::Invalid(errors).into())
    }
}
