//! `tiffin provision`: print the plan, and unless `--dry-run` apply it step by step.

use super::{FleetArgs, require_valid};
use crate::command::error::{Error, Exit};
use crate::core::clock::now;
use crate::server::provision::apply::{self, Applier};
use crate::server::provision::plan::{self, Departed};
use crate::server::provision::reports::AtBoot;
use crate::server::provision::{
    self, Plan, PlanOptions, ProvisionError, RELOAD_ENV, RealSystem, ReloadMethod, SYSTEM_ROOT_ENV,
    Target,
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

/// Whether this run may change the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunMode {
    DryRun,
    Apply,
}

impl Args {
    fn mode(&self) -> RunMode {
        if self.dry_run {
            RunMode::DryRun
        } else {
            RunMode::Apply
        }
    }
    fn departed(&self) -> Departed {
        if self.prune {
            Departed::Prune
        } else {
            Departed::Keep
        }
    }
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    let setup = Setup::check(args)?;
    // Held from planning to the last action, so a concurrent run cannot act on a stale plan.
    let _lock = match setup.mode {
        RunMode::DryRun => None,
        RunMode::Apply => Some(apply::lock()?),
    };
    let opts = PlanOptions {
        departed: args.departed(),
        now: now(),
        at_boot: AtBoot::detect(&setup.sys),
    };
    let plan = plan::plan(&setup.target, &setup.sys, &opts)?;
    print!("{}", plan.render(&setup.target));
    if plan.is_blocked() {
        return Err(ProvisionError::Blocked.into());
    }
    match setup.mode {
        RunMode::DryRun => {
            if !plan.actions.is_empty() {
                println!("dry run: nothing was changed");
            }
            Ok(Exit::Ok)
        }
        RunMode::Apply => setup.apply(&plan),
    }
}

/// What a run works with, every input checked before anything is planned.
struct Setup {
    mode: RunMode,
    target: Target,
    sys: RealSystem,
    reload: ReloadMethod,
}

impl Setup {
    fn check(args: &Args) -> Result<Setup, Error> {
        let mode = args.mode();
        let fleet = args.fleet.load()?;
        // Every host directory, loaded or not: one that fails to load is an error, never a departure.
        let all = fleet.select(&[])?;
        require_valid(&fleet, &all)?;
        let target = provision::target(&fleet, args.fleet.chroot_root.clone())?;
        let sys = RealSystem::from_env();
        if !sys.is_real_root() && mode == RunMode::Apply {
            return Err(ProvisionError::BadInput(format!(
                "{SYSTEM_ROOT_ENV} is only for planning: use it with --dry-run"
            ))
            .into());
        }
        let reload: ReloadMethod = std::env::var(RELOAD_ENV)
            .unwrap_or_default()
            .parse()
            .map_err(ProvisionError::BadInput)?;
        if mode == RunMode::Apply && !nix::unistd::geteuid().is_root() {
            return Err(ProvisionError::NotRoot.into());
        }
        Ok(Setup {
            mode,
            target,
            sys,
            reload,
        })
    }

    /// Applies the plan's actions in order; the first failure stops the run and names its step.
    fn apply(&self, plan: &Plan) -> Result<Exit, Error> {
        if plan.actions.is_empty() {
            return Ok(Exit::Ok);
        }
        let applier = Applier::new(&self.sys, &self.target, plan, self.reload.clone());
        let total = plan.actions.len();
        for (i, action) in plan.actions.iter().enumerate() {
            match applier.apply(action) {
                Ok(Some(message)) => println!("{message}"),
                Ok(None) => {}
                // It says itself what was rolled back and what to fix; no step to resume from.
                Err(e @ ProvisionError::SshdRejected { .. }) => return Err(e.into()),
                Err(source) => {
                    return Err(ProvisionError::Step {
                        step: i + 1,
                        total,
                        // One line, without the plan's column padding.
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
}
