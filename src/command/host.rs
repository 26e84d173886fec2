//! `tiffin host add`: a new host directory from the templates.

use clap::Subcommand;

use super::RepoArgs;
use crate::admin::fleet::{self, FleetError};
use crate::command::error::{Error, Exit};
use crate::core::names::HostName;

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
    print!("{}", next_steps(&fleet, &name));
    let server = &fleet.config.server;
    if server.address.is_none() || server.host_key.is_none() {
        println!(
            "warning: fleet.toml has no [server] address/host_key yet: set them before publishing (every host's tiffin client reads them through common/tiffin.nix)."
        );
    }
    Ok(Exit::Ok)
}

/// What an admin does after `host add`, from editing the host to its first pull.
fn next_steps(fleet: &fleet::Fleet, name: &HostName) -> String {
    let account = fleet.account_name(name);
    format!(
        "Added hosts/{name}/ (account {account} on the server).
Next:
  1. Edit hosts/{name}/configuration.nix (hardware, file systems, services); files for / go under hosts/{name}/files/.
  2. Let the server accept it: on a NixOS server add
       services.tiffin.server.hosts.{name}.publicKey = \"<its key>\";
     and switch; on other servers run `tiffin provision`.
  3. tiffin check && tiffin publish {name}
  4. On the machine: install NixOS from the fleet's flake (nixos-install --flake <a copy of hosts/{name} with links dereferenced>#{name}),
     or with services.tiffin.client set to fleet.toml's [server] address, port and host_key; it logs in with /etc/tiffin/id_ed25519.
     (docs/nixos.md, \"A new machine joins the fleet\")
"
    )
}
