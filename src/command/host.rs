//! `tiffin host add`: a new host directory from the templates.

use clap::Subcommand;

use super::RepoArgs;
use crate::error::{Error, Exit};
use crate::fleet::{self, FleetError};
use crate::names::HostName;

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Add hosts/NAME/ from the templates
    #[command(
        long_about = "Add hosts/NAME/ from the templates: host.toml with the key, configuration.nix, flake.nix and common/ as symlinks, and an empty files/ tree."
    )]
    Add(AddArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Host name: a lowercase letter, then lowercase letters, digits or '-'
    pub name: String,
    /// The host's OpenSSH public key, or a file holding it (e.g. a copy of its /etc/ssh/ssh_host_ed25519_key.pub)
    #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
    pub key: String,
    #[command(flatten)]
    pub fleet: RepoArgs,
}

pub fn run(command: &HostCommand) -> Result<Exit, Error> {
    match command {
        HostCommand::Add(args) => add(args),
    }
}

fn add(args: &AddArgs) -> Result<Exit, Error> {
    let fleet = args.fleet.load()?;
    let name: HostName = args.name.parse().map_err(FleetError::from)?;
    fleet::add_host(&fleet, &name, &args.key)?;
    println!(
        "Added hosts/{name}/ (account {} on the server).\nNext: edit hosts/{name}/configuration.nix, put extra files under hosts/{name}/files/, then `tiffin check`.",
        fleet.account_name(&name)
    );
    Ok(Exit::Ok)
}
