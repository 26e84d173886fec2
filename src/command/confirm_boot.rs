//! `tiffin confirm-boot`: what the boot-time unit runs: confirm the boot into a new release by reaching the server, or go back to the previous one.

use std::path::PathBuf;

use crate::client::config::ClientConfig;
use crate::client::lifeline::{self, BootCheck};
use crate::client::watch::SshConnector;
use crate::client::{PollOptions, PullError, rebuild};
use crate::command::error::{Error, Exit};

pub const LONG_ABOUT: &str = "Confirm, at boot, a release that runs only after a reboot.

A release applied with `boot` (action = \"boot\", a switch inhibitor, or a new kernel with
reboot = \"if-needed\") is not confirmed until the host has booted into it and reached the
server. The NixOS module runs this command once per boot (tiffin-confirm-boot.service,
after network-online.target). When the booted system is the one such a release waits
for, it opens a fresh SSH session to the server, again and again, for up to
confirm_timeout (the release's [apply] confirm_timeout, else client.toml's, default 3m).

Reached: the release is confirmed (exit 0). Not reached: the previous release's files
are deployed again, the release is quarantined (never booted nor applied again
automatically; `tiffin trigger HOST --retry` on the server tries it again), the previous
system is made the boot default (nix-env --set on the system profile, then its
switch-to-configuration boot, which writes the default entry of GRUB and systemd-boot
alike), and the host reboots once into it (reboot_command), exit 1. When the boot default
cannot be set, it does not reboot: that would boot the same system again.

Nothing waits, or the host booted another system: it says so and exits 0. A `tiffin pull`
that reaches the server while the boot waits confirms it too.";

/// Options of `tiffin confirm-boot`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The client configuration (TOML, or JSON when the name ends in .json)
    #[arg(long, default_value = "/etc/tiffin/client.toml", value_name = "FILE")]
    pub config: PathBuf,
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    let cfg = ClientConfig::load(&args.config).map_err(PullError::from)?;
    let opts = PollOptions {
        system_profile: cfg.system_profile.clone(),
        ..PollOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PullError::Runtime)?;
    let checked = runtime.block_on(lifeline::confirm_boot(
        &mut SshConnector { cfg: &cfg },
        &cfg,
        &opts,
    ))?;
    said(&cfg, checked)
}

/// Prints how it ended; reboots into the previous system when that is the boot default.
fn said(cfg: &ClientConfig, checked: BootCheck) -> Result<Exit, Error> {
    let host = &cfg.host;
    match checked {
        BootCheck::NothingPending => println!("{host}: no boot to confirm"),
        BootCheck::OtherSystem { id, booted } => println!(
            "{host}: release {} waits for a boot into its system, but this boot runs {}: nothing to confirm now",
            id.short(),
            booted.map_or("an unknown system".into(), |b| b.display().to_string())
        ),
        BootCheck::Confirmed { id, seq } => println!(
            "{host}: the boot into release #{seq} ({}) is confirmed: the server was reached",
            id.short()
        ),
        BootCheck::NoPrevious { id, seq, last } => {
            return Err(Error::Failed(format!(
                "the server was not reached after booting release #{seq} ({}) (last: {last}), and no previous system is recorded to go back to: it stays",
                id.short()
            )));
        }
        BootCheck::RolledBack {
            id,
            seq,
            to,
            previous_system,
            reason,
            boot_default,
        } => {
            let to = to.map_or("no release".into(), |t| format!("release {}", t.short()));
            println!(
                "{host}: release #{seq} ({}) {reason}; back to {to}, its system {}",
                id.short(),
                previous_system.display()
            );
            if let Err(message) = boot_default {
                return Err(Error::Failed(format!(
                    "making {} the boot default failed: {message}. Not rebooting (it would boot the same system again): choose the previous generation in the boot menu, or fix it and reboot",
                    previous_system.display()
                )));
            }
            println!(
                "{host}: {} is the boot default; rebooting into it: {}",
                previous_system.display(),
                cfg.reboot_command.join(" ")
            );
            rebuild::run_reboot(&cfg.reboot_command)
                .map_err(|message| PullError::Reboot { message })?;
            // Exit 1: the boot was not confirmed, whatever the reboot does next.
            return Err(Error::Failed(format!(
                "release #{seq} ({}) was not confirmed after booting it; rebooting into the previous system",
                id.short()
            )));
        }
    }
    Ok(Exit::Ok)
}
