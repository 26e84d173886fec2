//! `tiffin trigger`: ask hosts to act now (or to apply their release again), one line per host.

use super::FleetArgs;
use crate::command::error::{Error, Exit};
use crate::core::clock::now;
use crate::core::current::TriggerKind;
use crate::core::layout::ChrootPaths;
use crate::server::publish;

pub const LONG_ABOUT: &str = "Ask hosts to act now, without waiting for their timer.

Writes a trigger as the second line of each host's CURRENT (the first line, the release,
is kept; old clients read only the first line), atomically and under the publish lock.
A client running `tiffin pull --watch` acts on it within one check (watch_interval,
default 5s); a timer client at its next poll. Each trigger has a new id and is handled
once; the client names it in its report, and `tiffin status` shows \"trigger pending\"
until it has.

Without --reapply the client polls now, even if a failed release is backing off. With
--reapply it also deploys files/ again (a file deleted or edited on the client is
restored) and reruns the rebuild, even though the release is already applied. With
--retry it applies a quarantined release again: one the host rolled back because its
health check failed or because the server could not be reached after activating or
booting it (`tiffin status` shows the host as quarantined). Without --retry such a
release is not tried again until a newer one is published.

A remote administrator with a shell on the host can do the same for one host:
`ssh HOST systemctl start tiffin-pull`.";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Hosts to trigger
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub hosts: Vec<String>,
    /// Every host of the fleet
    #[arg(long)]
    pub all: bool,
    /// Deploy files/ again and rerun the rebuild even if the release is already applied
    #[arg(long, conflicts_with = "retry")]
    pub reapply: bool,
    /// Apply a quarantined release again (one the host rolled back)
    #[arg(long)]
    pub retry: bool,
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    let fleet = args.fleet.load()?;
    let selected = fleet.select(&args.hosts)?;
    let chroot_root = args.fleet.chroot_root(&fleet);
    let kind = match (args.reapply, args.retry) {
        (true, _) => TriggerKind::Reapply,
        (_, true) => TriggerKind::Retry,
        _ => TriggerKind::Pull,
    };
    let _lock = publish::lock_chroot_root(&chroot_root)
        .map_err(|e| Error::Failed(format!("chroot root {}: {e}", chroot_root.display())))?;
    let mut failed = 0;
    for host in &selected {
        let paths = ChrootPaths::new(&chroot_root, host);
        let group = publish::host_group(&fleet, host);
        match crate::server::trigger::trigger_host(host, &paths, kind, now(), group) {
            Ok(t) => println!("{host}: trigger {} ({}) written", t.id, kind.as_str()),
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(Error::Failed(format!(
            "{failed} of {} host(s) not triggered",
            selected.len()
        )));
    }
    Ok(Exit::Ok)
}
