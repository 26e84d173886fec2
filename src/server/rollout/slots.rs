//! Reboot slots: at most `max_rebooting` hosts of a group reboot at once (FleetLock's counting semaphore). A host asks in its report, the controller grants a slot with a `reboot` trigger on its `CURRENT`, and the slot comes back when the host reports after its reboot, or after `reboot_slot_timeout`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::Stamp;
use crate::admin::fleet::rollout::{GroupName, GroupSettings, reboot_limits};
use crate::core::names::HostName;

/// Where the slots held are recorded, in the server's `state_dir`.
pub const SLOTS_FILE: &str = "reboot-slots.toml";

/// `<state_dir>/reboot-slots.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    #[serde(default)]
    pub held: BTreeMap<HostName, Held>,
}

/// A slot granted to a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub granted: Stamp,
    /// The id of the `reboot` trigger that carried the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

/// What a host's report says about its reboot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotView {
    /// When the server received its last report.
    pub report_at: Option<SystemTime>,
    /// It waits for a slot (its reboot window is open).
    pub wants: bool,
    /// A reboot is still owed (pending): a report after the grant without one means it rebooted.
    pub owes: bool,
}

/// One round of the semaphore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotStep {
    pub slots: Slots,
    pub granted: Vec<HostName>,
    pub released: Vec<HostName>,
    pub reclaimed: Vec<HostName>,
}

/// Gives back the slots of hosts that reported after their reboot and those held too long,
/// then grants free slots to the hosts that ask, by name, while every limited group of the
/// host has room.
pub fn assign(
    groups: &BTreeMap<GroupName, GroupSettings>,
    tags: &BTreeMap<HostName, BTreeSet<GroupName>>,
    slots: &Slots,
    views: &BTreeMap<HostName, SlotView>,
    now: SystemTime,
) -> SlotStep {
    let mut step = SlotStep {
        slots: slots.clone(),
        ..SlotStep::default()
    };
    let no_tags = BTreeSet::new();
    let tags_of = |h: &HostName| tags.get(h).unwrap_or(&no_tags);
    for (host, held) in &slots.held {
        let view = views.get(host).copied().unwrap_or_default();
        let back = view.report_at.is_some_and(|at| at > held.granted.0) && !view.owes;
        let timeout = reboot_limits(groups, tags_of(host))
            .filter_map(|(g, _)| groups.get(g).map(|s| s.reboot_slot_timeout.0))
            .min();
        let expired =
            timeout.is_none_or(|t| now.duration_since(held.granted.0).unwrap_or_default() >= t);
        if back {
            step.released.push(host.clone());
        } else if expired {
            step.reclaimed.push(host.clone());
        }
    }
    for host in step.released.iter().chain(&step.reclaimed) {
        step.slots.held.remove(host);
    }
    for (host, view) in views {
        if !view.wants || step.slots.held.contains_key(host) || step.reclaimed.contains(host) {
            continue;
        }
        let limits: Vec<(&GroupName, u32)> = reboot_limits(groups, tags_of(host)).collect();
        if limits.is_empty() {
            continue;
        }
        let room = limits.iter().all(|(g, limit)| {
            let used = step
                .slots
                .held
                .keys()
                .filter(|h| tags_of(h).contains(*g))
                .count();
            used < *limit as usize
        });
        if room {
            step.slots.held.insert(
                host.clone(),
                Held {
                    granted: Stamp(now),
                    trigger: None,
                },
            );
            step.granted.push(host.clone());
        }
    }
    step
}
