//! What `tiffin status` says about a workstation: a restart the user postponed or was warned of, a release deferred while metered or on battery.

use super::HostOps;
use crate::core::report::Deferred;

/// `status HOST`'s lines for an announced restart and a deferred release.
pub(super) fn lines(ops: &HostOps) -> Vec<(&'static str, String)> {
    let pending = ops.reboot == Some(crate::core::report::RebootReport::Pending);
    let restart = restart_line(ops)
        .filter(|_| pending)
        .map(|l| ("restart", l));
    let deferred = ops.deferred.map(|why| ("deferred", deferred_line(why)));
    restart.into_iter().chain(deferred).collect()
}

/// The restart line of `status HOST` when the host reported an announced restart.
fn restart_line(ops: &HostOps) -> Option<String> {
    let window = ops
        .reboot_window
        .map(|w| format!(" in the reboot window {w} (the client's local time)"))
        .unwrap_or_default();
    let deadline = ops
        .reboot_deadline
        .as_deref()
        .map(|d| format!("; it can be postponed until {d}"))
        .unwrap_or_default();
    if let Some(until) = &ops.reboot_postponed_until {
        return Some(format!(
            "pending: restart postponed by the user until {until}{deadline}"
        ));
    }
    if let Some(at) = &ops.reboot_at {
        return Some(format!(
            "pending: the user was warned; the computer restarts at {at}{deadline}"
        ));
    }
    ops.reboot_deadline
        .as_ref()
        .map(|_| format!("pending: the user was told; it restarts{window}{deadline}"))
}

/// `status HOST`'s line for a deferred release.
fn deferred_line(why: Deferred) -> String {
    let what = match why {
        Deferred::Metered => "the host's connection is metered",
        Deferred::OnBattery => "the host runs on battery below its threshold",
    };
    format!(
        "{}: {what}, so the new release waits (the host still checks and reports; `tiffin trigger` or `tiffin pull --now` on the host takes it anyway)",
        why.as_str()
    )
}

/// The table's NOTE: a postponed restart or a deferral, before the generic reboot note.
pub(super) fn note(ops: &HostOps) -> Option<String> {
    if let Some(until) = &ops.reboot_postponed_until {
        return Some(format!("restart postponed by the user until {until}"));
    }
    ops.deferred
        .map(|why| format!("deferred: {}", why.as_str()))
}
