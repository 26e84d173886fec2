//! `tiffin rollout`: advance the rollout (`step`, from a timer), show it, pause, resume, cancel or revert it.

use super::FleetArgs;
use crate::command::error::{Error, Exit};
use crate::core::clock::now;
use crate::server::publish::{self, Hold, Mode, PublishOptions, When};
use crate::server::rollout::exec::{self, Done};
use crate::server::rollout::{self as ro, Command as Cmd};

pub const LONG_ABOUT: &str = "Advance, show, pause, resume, cancel or revert the fleet's rollout.

With [rollout] in fleet.toml, `tiffin publish` writes every host's new release but makes it
current only for the first wave; the others wait in releases/ (`tiffin status HOST`: \"held
back by rollout\"). `tiffin rollout step`, run every minute by the server module's timer
(services.tiffin.server.rollout.enable) or by hand, reads the hosts' reports and decides:

  - a wave is healthy when each of its hosts reported the release applied and healthy,
    confirmed over a fresh connection (the host rolls back on its own otherwise), in a
    report the server received after the wave started, and stayed so for `soak`;
  - hosts silent longer than their stale limit (3 poll intervals), paused, or moved on by a
    newer publish are absent: they do not hold the wave up, and get the release when back;
  - more than `max_failures` failed, rolled-back or quarantined hosts in a wave (those still
    waiting at `wave_timeout` count too) halt the rollout: no further host gets the release,
    and `on_failure = \"revert\"` moves the hosts that took it back to their previous release
    as a new, higher seq;
  - otherwise the next wave starts: its hosts' CURRENT names the release, with a trigger, so
    watching hosts apply it within their watch_interval.

A step also runs the reboot slots of groups with `max_rebooting`: a host whose reboot is due
asks in its report and reboots when the step grants it a slot (a `reboot` trigger); the slot
comes back when it reports after the reboot, or after `reboot_slot_timeout`.

Every subcommand takes the publish lock, so a step never interleaves with a publish.
`tiffin rollout status` and `tiffin status` exit 3 on a halted or reverted rollout.
A signed fleet: the releases were signed before the rollout began, so the server needs no
admin key; a revert cannot be signed here (the admins revert in the repository, sign and
publish with --all-at-once). docs/rollouts.md has a worked example.";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Advance the rollout by what the reports say; grant reboot slots (run it from a timer)
    Step(FleetOnly),
    /// Show the rollout: each wave's hosts done, failed, absent or waited for, and why it halted
    Status(FleetOnly),
    /// Start no further wave until `resume`
    Pause(FleetOnly),
    /// Go on after a pause or a halt; the current wave's failures so far are accepted
    Resume(FleetOnly),
    /// End the rollout (or acknowledge a reverted one): hosts not reached keep their release
    Cancel(FleetOnly),
    /// Halt, and move the hosts that took the release back to their previous one (a new seq)
    Revert(FleetOnly),
}

#[derive(Debug, clap::Args)]
pub struct FleetOnly {
    #[command(flatten)]
    pub fleet: FleetArgs,
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    let (fleet_args, cmd) = match &args.action {
        Action::Status(a) => return status(&a.fleet),
        Action::Step(a) => (a, None),
        Action::Pause(a) => (a, Some(Cmd::Pause)),
        Action::Resume(a) => (a, Some(Cmd::Resume)),
        Action::Cancel(a) => (a, Some(Cmd::Cancel)),
        Action::Revert(a) => (a, Some(Cmd::Revert)),
    };
    let fleet = fleet_args.fleet.load()?;
    let opts = options(&fleet_args.fleet, &fleet);
    let _lock = publish::lock_chroot_root(&opts.chroot_root)
        .map_err(|e| Error::Failed(format!("chroot root {}: {e}", opts.chroot_root.display())))?;
    let done = match cmd {
        None => exec::step(&fleet, &opts),
        Some(cmd) => exec::command(&fleet, &opts, cmd, &who()),
    }
    .map_err(|e| Error::Failed(e.to_string()))?;
    print_done(&done);
    if !done.errors.is_empty() {
        return Err(Error::Failed(format!(
            "{} host(s) could not be changed; the rest is done and the rollout recorded (the next step tries again)",
            done.errors.len()
        )));
    }
    Ok(Exit::Ok)
}

/// The options a rollout acts with: the fleet's chroots and state, now, releases swapped.
fn options(args: &FleetArgs, fleet: &crate::admin::fleet::Fleet) -> PublishOptions {
    PublishOptions {
        chroot_root: args.chroot_root(fleet),
        state_dir: args.state_dir(fleet),
        mode: Mode::Write,
        when: When::Changed,
        keep_releases: fleet.config.server.keep_releases,
        now: now(),
        hold: Hold::Swap,
        fault: None,
    }
}

/// Who asked, for the record's reason (`SUDO_USER`, else `USER`).
fn who() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "an admin".into())
}

/// What a step or publish did to the rollout: its events, its errors.
pub fn print_done(done: &Done) {
    for event in &done.events {
        println!("rollout: {event}");
    }
    for error in &done.errors {
        eprintln!("error: rollout: {error}");
    }
}

fn status(args: &FleetArgs) -> Result<Exit, Error> {
    let fleet = args.load()?;
    let opts = options(args, &fleet);
    let rollout = exec::load(&opts.state_dir).map_err(|e| Error::Failed(e.to_string()))?;
    match &rollout {
        // Reboot slots need no rollout ([groups] max_rebooting alone): shown either way.
        None => {
            println!("no rollout yet: a `tiffin publish` with [rollout] in fleet.toml starts one")
        }
        Some(rollout) => {
            let hosts: Vec<_> = rollout.targets.keys().cloned().collect();
            let views = exec::views(&fleet, &hosts, &opts.chroot_root, opts.now);
            for line in ro::summary(rollout, &views, opts.now) {
                println!("{}", crate::core::untrusted::one_line(&line, 4096));
            }
        }
    }
    for (host, held) in exec::held_slots(&opts.state_dir).held {
        println!(
            "reboot slot: {host} since {}",
            crate::core::settings::format_time(held.granted.0)
        );
    }
    Ok(if rollout.is_some_and(|r| r.phase.is_alarming()) {
        Exit::Alarm
    } else {
        Exit::Ok
    })
}
