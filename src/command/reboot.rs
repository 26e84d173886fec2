//! `tiffin reboot`: the restart this computer waits for, and `--postpone` for the person at it.

use std::path::PathBuf;

use crate::client::PullError;
use crate::client::config::ClientConfig;
use crate::client::postpone::{self, PostponeError};
use crate::client::state::{self, State};
use crate::command::error::{Error, Exit};
use crate::core::clock::now;
use crate::core::settings::Interval;

pub const LONG_ABOUT: &str = "The restart this computer waits for, and postponing it.

With reboot = \"ask\" in the host's [apply], a release that needs a restart is announced to
the people logged in (services.tiffin.client.notify) and waits: tiffin restarts the
computer at the first moment inside its reboot window, after a ten-minute warning, unless
someone postpones it. `tiffin reboot --postpone 2h` (or the notification's Postpone button)
holds it back; postpone as often as you like until reboot_deadline (default 3 days) after
the release was applied. After the deadline the restart can no longer be postponed.

Run as root it records the postponement itself; run as a member of the groups the NixOS
module allows (services.tiffin.client.allowTrigger.groups), it asks the unit
tiffin-postpone@.service to, which polkit permits. Without --postpone it shows the waiting
restart (root). `tiffin status HOST` on the server shows the postponement.";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The client configuration (its state_dir holds the restart and the postponement)
    #[arg(long, default_value = "/etc/tiffin/client.toml", value_name = "FILE")]
    pub config: PathBuf,
    /// Hold the restart back this long, like "1h" or "2h 30m" (never past the deadline)
    #[arg(long, value_name = "DURATION")]
    pub postpone: Option<Interval>,
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    let root = nix::unistd::geteuid().is_root();
    match args.postpone {
        Some(length) if !root => ask_the_unit(length),
        Some(length) => record(args, length),
        None => show(args),
    }
}

/// As root: the postponement is written, cut at the deadline, or refused with the reason.
fn record(args: &Args, length: Interval) -> Result<Exit, Error> {
    let cfg = ClientConfig::load(&args.config).map_err(PullError::from)?;
    state::prepare_state_dir(&cfg.state_dir).map_err(PullError::from)?;
    match postpone::postpone(&cfg.state_dir, length.0, now()) {
        Ok(granted) => {
            let deadline = granted
                .deadline
                .map(|d| format!(" (it can be postponed until {d})"))
                .unwrap_or_default();
            println!(
                "{}: restart postponed until {}{deadline}",
                cfg.host, granted.until
            );
            Ok(Exit::Ok)
        }
        Err(PostponeError::State(e)) => Err(PullError::from(e).into()),
        Err(e) => Err(Error::Usage(format!("{}: {e}", cfg.host))),
    }
}

/// As a user: `systemctl start tiffin-postpone@SECONDSs.service`, which polkit allows the
/// module's groups; the unit runs this command as root.
fn ask_the_unit(length: Interval) -> Result<Exit, Error> {
    let unit = format!("tiffin-postpone@{}s.service", length.0.as_secs());
    let status = std::process::Command::new("systemctl")
        .args(["start", &unit])
        .status()
        .map_err(|e| Error::Usage(format!("cannot run systemctl start {unit}: {e}")))?;
    if !status.success() {
        return Err(Error::Usage(format!(
            "systemctl start {unit} failed ({status}): you may not be in a group allowed to postpone (services.tiffin.client.allowTrigger.groups), or the restart cannot be postponed (journalctl -u {unit} says why)"
        )));
    }
    println!("the restart is postponed by {length} (never past its deadline)");
    Ok(Exit::Ok)
}

/// Without `--postpone`: the restart this computer waits for, if any.
fn show(args: &Args) -> Result<Exit, Error> {
    let cfg = ClientConfig::load(&args.config).map_err(PullError::from)?;
    let state = State::load(&cfg.state_dir).map_err(PullError::from)?;
    let Some(r) = state.restart else {
        println!("{}: no restart is waiting", cfg.host);
        return Ok(Exit::Ok);
    };
    let p = postpone::load(&cfg.state_dir);
    let t = now();
    let facts = r.facts(p.as_ref(), t, crate::client::window::local_minute(t));
    let decision = crate::client::restart_policy::decide(&facts);
    println!(
        "{}: release {} needs a restart (since {}): {}",
        cfg.host,
        r.id.short(),
        r.since,
        decision.describe()
    );
    Ok(Exit::Ok)
}
