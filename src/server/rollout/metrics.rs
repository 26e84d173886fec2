//! The rollout in the Prometheus text format, after the hosts' metrics: its phase, its wave, its hosts by verdict, the reboot slots held.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::{HostView, Phase, Rollout, Verdict, verdicts};
use crate::core::names::HostName;
use crate::server::status::prometheus::Family;

const PHASES: [Phase; 6] = [
    Phase::Running,
    Phase::Paused,
    Phase::Halted,
    Phase::Reverted,
    Phase::Done,
    Phase::Cancelled,
];

/// What a host of the rollout is, for `tiffin_rollout_hosts`.
const KINDS: [&str; 6] = ["done", "failed", "accepted", "absent", "waiting", "held"];

/// The families, with zeros when there is no rollout, so alert rules always find them.
pub fn render(
    rollout: Option<&Rollout>,
    views: &BTreeMap<HostName, HostView>,
    slots_held: usize,
    now: SystemTime,
) -> String {
    let mut out = String::new();
    let name = "tiffin_rollout_phase";
    let help = "The last rollout's phase (1) among all phases (0); all 0 before the first.";
    let mut f = Family::new(&mut out, name, help);
    for p in PHASES {
        let on = rollout.is_some_and(|r| r.phase == p);
        f.sample(name, &[("phase", p.as_str())], u8::from(on));
    }
    let name = "tiffin_rollout_wave";
    let help = "The wave going out (1-based; 0 before the first rollout).";
    let wave = rollout.map_or(0, |r| (r.wave + 1).min(r.waves.len()));
    Family::new(&mut out, name, help).sample(name, &[], wave);
    let name = "tiffin_rollout_waves";
    let help = "How many waves the last rollout has.";
    Family::new(&mut out, name, help).sample(name, &[], rollout.map_or(0, |r| r.waves.len()));
    let name = "tiffin_rollout_hosts";
    let help = "Hosts of the last rollout by what they are: done, failed, accepted (a failure an admin let pass), absent, waiting (in a started wave), held (their wave has not started).";
    let counts = counts(rollout, views, now);
    let mut f = Family::new(&mut out, name, help);
    for kind in KINDS {
        f.sample(
            name,
            &[("kind", kind)],
            counts.get(kind).copied().unwrap_or(0),
        );
    }
    let name = "tiffin_reboot_slots_held";
    let help = "Reboot slots granted and not yet given back (groups with max_rebooting).";
    Family::new(&mut out, name, help).sample(name, &[], slots_held);
    out
}

fn counts(
    rollout: Option<&Rollout>,
    views: &BTreeMap<HostName, HostView>,
    now: SystemTime,
) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    let Some(r) = rollout else {
        return counts;
    };
    for wave in &r.waves {
        if wave.started.is_none() {
            *counts.entry("held").or_default() += wave.hosts.len();
            continue;
        }
        for (host, verdict) in verdicts(r, wave, views, now) {
            let kind = match verdict {
                Verdict::Done => "done",
                Verdict::Failed(_) if wave.accepted.contains(&host) => "accepted",
                Verdict::Failed(_) => "failed",
                Verdict::Absent(_) => "absent",
                Verdict::Waiting(_) => "waiting",
            };
            *counts.entry(kind).or_default() += 1;
        }
    }
    counts
}
