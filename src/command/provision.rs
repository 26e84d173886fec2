//! `tiffin provision`: print the plan, and unless `--dry-run` apply it step by step.

use std::path::PathBuf;

use super::{FleetArgs, require_valid};
use crate::clock::now;
use crate::error::{Error, Exit};
use crate::provision::{
    self, PlanOptions, ProvisionError, RELOAD_ENV, RealSystem, ReloadMethod, SYSTEM_ROOT_ENV,
    apply, plan,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Print what would change and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Lock the accounts of hosts gone from the fleet, remove their keys and move their chroots to <chroot_root>/.pruned/ (nothing is deleted)
    #[arg(long)]
    pub prune: bool,
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    let dry_run = args.dry_run;
    let fleet = args.fleet.load()?;
    let all: Vec<_> = fleet.hosts.keys().cloned().collect();
    require_valid(&fleet, &all)?;
    let target = provision::target(&fleet, args.fleet.chroot_root(&fleet))?;

    let root = std::env::var_os(SYSTEM_ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    let sys = RealSystem::new(root);
    if !sys.is_real_root() && !dry_run {
        return Err(ProvisionError::BadInput(format!(
            "{SYSTEM_ROOT_ENV} is only for planning: use it with --dry-run"
        ))
        .into());
    }
    let reload: ReloadMethod = std::env::var(RELOAD_ENV)
        .unwrap_or_default()
        .parse()
        .map_err(ProvisionError::BadInput)?;
    if !dry_run && !nix::unistd::geteuid().is_root() {
        return Err(ProvisionError::NotRoot.into());
    }

    // Held from planning to the last action, so a concurrent run cannot act on a stale plan.
    let _lock = if dry_run { None } else { Some(apply::lock()?) };
    let opts = PlanOptions {
        departed: if args.prune {
            plan::Departed::Prune
        } else {
            plan::Departed::Keep
        },
        now: now(),
    };
    let plan = plan::plan(&target, &sys, &opts)?;
    print!("{}", plan.render(&target));
    if plan.is_blocked() {
        return Err(ProvisionError::Blocked.into());
    }
    if dry_run {
        if !plan.actions.is_empty() {
            println!("dry run: nothing was changed");
        }
        return Ok(Exit::Ok);
    }
    if plan.actions.is_empty() {
        return Ok(Exit::Ok);
    }
    let applier = apply::Applier::new(&sys, &target, &plan, reload);
    let total = plan.actions.len();
    for (i, action) in plan.actions.iter().enumerate() {
        match applier.apply(action) {
            Ok(Some(message)) => println!("{message}"),
            Ok(None) => {}
            Err(e @ ProvisionError::SshdRejected { .. }) => return Err(e.into()),
            Err(source) => {
                return Err(ProvisionError::Step {
                    step: i + 1,
                    total,
                    action: action
                        .to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                    source: Box::new(source),
                }
                .into());
            }
        }
    }
    println!("done: {total} change(s) applied");
    Ok(Exit::Ok)
}
