//! `tiffin publish`: one line per host (published, unchanged, failed), exit 1 or 2 when any host failed.

use super::{FleetArgs, require_valid};
use crate::admin::fleet::Fleet;
use crate::command::error::{Error, Exit};
use crate::core::clock::now;
use crate::core::names::HostName;
use crate::server::publish::{self, Hold, Mode, Outcome, PublishError, PublishOptions, When};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Hosts to publish [default: all]
    pub hosts: Vec<String>,
    /// Show what would be published and write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// With [rollout] in fleet.toml: make every new release current at once, without waves
    /// (an urgent fix); a rollout going on carries on for its other hosts
    #[arg(long)]
    pub all_at_once: bool,
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    let fleet = args.fleet.load()?;
    let selected = fleet.select(&args.hosts)?;
    require_valid(&fleet, &selected)?;
    let opts = PublishOptions {
        chroot_root: args.fleet.chroot_root(&fleet),
        state_dir: args.fleet.state_dir(&fleet),
        mode: if args.dry_run {
            Mode::DryRun
        } else {
            Mode::Write
        },
        when: When::Changed,
        keep_releases: fleet.config.server.keep_releases,
        now: now(),
        hold: match (&fleet.config.rollout, args.all_at_once) {
            (Some(_), false) => Hold::Rollout,
            _ => Hold::Swap,
        },
        fault: None,
    };
    let _lock = if opts.mode == Mode::DryRun {
        None
    } else {
        Some(publish::lock_chroot_root(&opts.chroot_root).map_err(|e| {
            Error::Failed(format!("chroot root {}: {e}", opts.chroot_root.display()))
        })?)
    };
    if opts.hold == Hold::Rollout {
        refuse_over_halted(&opts)?;
    }
    publish_and_print(&fleet, &selected, &opts)
}

/// A halted rollout stopped a bad release: a new one must not carry it past the halt.
fn refuse_over_halted(opts: &PublishOptions) -> Result<(), Error> {
    let last = crate::server::rollout::exec::load(&opts.state_dir)
        .map_err(|e| Error::Failed(e.to_string()))?;
    match last {
        Some(r) if r.phase == crate::server::rollout::Phase::Halted => Err(Error::Failed(format!(
            "nothing published: the last rollout is halted ({}). Decide first: `tiffin rollout resume` (go on), `revert` or `cancel`; or publish an urgent fix with --all-at-once",
            r.reason.as_deref().unwrap_or("no reason recorded")
        ))),
        _ => Ok(()),
    }
}

fn publish_and_print(
    fleet: &Fleet,
    hosts: &[HostName],
    opts: &PublishOptions,
) -> Result<Exit, Error> {
    let (mut failed, mut invalid) = (0, 0);
    let mut outcomes = Vec::new();
    for (name, result) in publish::publish_all(fleet, hosts, opts) {
        match result {
            Ok(outcome) => {
                println!("{name}: {}", describe(&outcome));
                outcomes.push((name, outcome));
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
                invalid += usize::from(matches!(e, PublishError::Invalid { .. }));
            }
        }
    }
    if opts.hold == Hold::Rollout && opts.mode == Mode::Write {
        let done = crate::server::rollout::exec::start(fleet, &outcomes, opts)
            .map_err(|e| Error::Failed(e.to_string()))?;
        super::rollout::print_done(&done);
        failed += done.errors.len();
    }
    if invalid > 0 {
        return Err(Error::Usage(format!(
            "{failed} of {} host(s) not published: fix the fleet repository (`tiffin check` lists every problem); each failed host keeps its previous release",
            hosts.len()
        )));
    }
    if failed > 0 {
        return Err(Error::Failed(format!(
            "{failed} of {} host(s) failed to publish; the others are done, and each failed host keeps its previous release",
            hosts.len()
        )));
    }
    Ok(Exit::Ok)
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Unchanged { id, seq } => format!("unchanged (release #{seq} {})", id.short()),
        Outcome::Published {
            id,
            seq,
            change,
            pruned,
            mode,
        } => {
            let verb = match mode {
                Mode::DryRun => "would publish",
                Mode::Write => "published",
            };
            let pruned = if *pruned > 0 {
                format!(", pruned {pruned} old release(s)")
            } else {
                String::new()
            };
            format!("{verb} release #{seq} {} ({change}){pruned}", id.short())
        }
        Outcome::AwaitingSignature {
            id,
            seq,
            change,
            to_sign,
            mode,
        } => {
            let verb = match mode {
                Mode::DryRun => "would stage",
                Mode::Write => "staged",
            };
            let to_sign = to_sign
                .as_ref()
                .map(|p| format!(": sign {} (`tiffin sign`), then publish again", p.display()))
                .unwrap_or_default();
            format!(
                "{verb} release #{seq} {} ({change}), waiting for the admins' signatures{to_sign}; the hosts keep their current release",
                id.short()
            )
        }
        Outcome::Held {
            id,
            seq,
            change,
            mode,
        } => {
            let verb = match mode {
                Mode::DryRun => "would publish",
                Mode::Write => "published",
            };
            format!(
                "{verb} release #{seq} {} ({change}), held for its rollout wave",
                id.short()
            )
        }
        Outcome::Renewed { id, seq, expires } => format!(
            "release #{seq} {} re-signed: its statement now expires {expires}",
            id.short()
        ),
    }
}
