//! `tiffin verify`: re-hash every stored release, name each damaged file, and with `--repair` publish a fresh release in place of a damaged one.

use super::{FleetArgs, require_valid};
use crate::admin::fleet::Fleet;
use crate::command::error::{Error, Exit};
use crate::core::clock::now;
use crate::core::layout::ChrootPaths;
use crate::core::names::HostName;
use crate::server::publish::{self, Mode, Outcome, PublishOptions, When};
use crate::server::verify::{ReleaseCheck, verify_host};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Hosts to verify [default: all]
    pub hosts: Vec<String>,
    /// Publish a fresh release from the fleet repository for each host whose current release is
    /// damaged, and remove damaged older releases
    #[arg(long)]
    pub repair: bool,
}

/// Whether damage is only reported or also repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repair {
    No,
    Yes,
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    let fleet = args.fleet.load()?;
    let selected = fleet.select(&args.hosts)?;
    let repair = if args.repair { Repair::Yes } else { Repair::No };
    let chroot_root = args.fleet.chroot_root(&fleet);
    let _lock = match repair {
        Repair::No => None,
        Repair::Yes => {
            require_valid(&fleet, &selected)?;
            Some(publish::lock_chroot_root(&chroot_root).map_err(|e| {
                Error::Failed(format!("chroot root {}: {e}", chroot_root.display()))
            })?)
        }
    };
    let mut damaged_hosts = 0;
    for host in &selected {
        let paths = ChrootPaths::new(&chroot_root, host);
        let checks = verify_host(&paths).map_err(|e| {
            Error::Failed(format!(
                "host {host}: reading {}: {e}",
                paths.releases().display()
            ))
        })?;
        print_checks(host, &checks);
        if checks.iter().all(ReleaseCheck::is_sound) {
            continue;
        }
        damaged_hosts += 1;
        if repair == Repair::Yes {
            let opts = PublishOptions {
                chroot_root: chroot_root.clone(),
                state_dir: args.fleet.state_dir(&fleet),
                mode: Mode::Write,
                when: When::Always,
                keep_releases: fleet.config.server.keep_releases,
                now: now(),
                hold: crate::server::publish::Hold::Swap,
                fault: None,
            };
            repair_host(&fleet, host, &paths, &checks, &opts)?;
            damaged_hosts -= 1;
        }
    }
    if damaged_hosts > 0 {
        return Err(Error::Failed(format!(
            "{damaged_hosts} host(s) have damaged releases (a file changed on the server after publishing); `tiffin verify --repair` publishes fresh ones"
        )));
    }
    Ok(Exit::Ok)
}

fn print_checks(host: &HostName, checks: &[ReleaseCheck]) {
    let files: usize = checks.iter().map(|c| c.files).sum();
    let mut damaged = 0;
    for check in checks {
        let seq = check.seq.map_or("?".to_owned(), |s| s.to_string());
        for d in &check.damage {
            damaged += 1;
            println!(
                "error: {host}: release #{seq} {}: {}: {}",
                check.id.short(),
                d.path.display(),
                d.what
            );
        }
    }
    if damaged == 0 {
        println!(
            "{host}: {} release(s), {files} file(s), all intact",
            checks.len()
        );
    } else {
        println!(
            "{host}: {damaged} damaged file(s) in {} release(s)",
            checks.iter().filter(|c| !c.is_sound()).count()
        );
    }
}

fn repair_host(
    fleet: &Fleet,
    host: &HostName,
    paths: &ChrootPaths,
    checks: &[ReleaseCheck],
    opts: &PublishOptions,
) -> Result<(), Error> {
    let current = paths.read_current().ok().flatten();
    let current_damaged = checks
        .iter()
        .any(|c| !c.is_sound() && Some(&c.id) == current.as_ref());
    if current_damaged {
        let h = &fleet.hosts[host];
        match publish::publish_host(fleet, h, opts).map_err(|e| Error::Failed(e.to_string()))? {
            Outcome::Published { id, seq, .. } => println!(
                "{host}: repaired: published release #{seq} {} with fresh copies from the fleet repository",
                id.short()
            ),
            Outcome::AwaitingSignature { id, seq, .. } => println!(
                "{host}: a fresh copy is staged as release #{seq} {}: the hosts get it once the admins sign it (`tiffin sign`) and it is published again",
                id.short()
            ),
            Outcome::Unchanged { .. } | Outcome::Renewed { .. } | Outcome::Held { .. } => {
                unreachable!("When::Always with Hold::Swap always publishes")
            }
        }
    }
    // Damaged releases that are no longer current are never served again: remove them.
    let current = paths.read_current().ok().flatten();
    for check in checks.iter().filter(|c| !c.is_sound()) {
        if Some(&check.id) == current.as_ref() {
            continue;
        }
        let dir = paths.release(&check.id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| {
                Error::Failed(format!("host {host}: removing {}: {e}", dir.display()))
            })?;
            println!("{host}: removed damaged release {}", check.id.short());
        }
    }
    Ok(())
}
