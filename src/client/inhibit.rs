//! Switch inhibitors (nixpkgs' `system.switch.inhibitors`): a release whose `switch` or `test` they refuse is applied with `boot` and runs after the next reboot, instead of failing on every retry.

use std::path::Path;

use super::rebuild::{self, Ended};
use super::state::BootOnly;
use super::transport::Remote;
use crate::core::release::Manifest;
use crate::core::report::RebootReport;
use crate::core::settings::Action;

/// What nixpkgs' pre-switch check prints when an inhibitor changed (switchable-system.nix).
const REFUSED: &str = "Switching into this system is not recommended";
/// The line before the list of changed inhibitors.
const CHANGES: &str = "There are changes to critical components of the system:";
/// A reason longer than this is cut: it goes into every report until the reboot.
const REASON_MAX: usize = 300;

/// Whether an activation's output says a switch inhibitor refused it.
pub fn refused(log_tail: &[u8]) -> bool {
    String::from_utf8_lossy(log_tail).contains(REFUSED)
}

/// The changed inhibitors as nixpkgs lists them (`dbus-implementation : dbus -> broker`),
/// one line, capped; a generic phrase when the list cannot be found.
pub fn reason(log_tail: &[u8]) -> String {
    let text = String::from_utf8_lossy(log_tail);
    let changes: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains(CHANGES))
        .skip(1)
        .take_while(|l| !l.contains(REFUSED))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let listed = changes
        .join("; ")
        .chars()
        .filter(|c| !c.is_control())
        .take(REASON_MAX)
        .collect::<String>();
    if listed.is_empty() {
        "a switch inhibitor changed".to_owned()
    } else {
        format!("a switch inhibitor changed ({listed})")
    }
}

impl<R: Remote, C: super::transport::Connector> super::Poll<'_, R, C> {
    /// A `switch` or `test` refused by a switch inhibitor is applied again with `boot` (the
    /// profile and boot loader, no activation). Gives how it ended, the action that took
    /// effect, and why it is for the next boot only.
    pub(super) fn boot_if_inhibited(
        &self,
        manifest: &Manifest,
        switched: rebuild::Outcome,
        log: &Path,
    ) -> (rebuild::Outcome, Action, Option<String>) {
        let action = manifest.apply.action;
        let inhibited = matches!(action, Action::Switch | Action::Test)
            && matches!(switched.ended, Ended::Failed(_))
            && refused(&switched.log_tail);
        if !inhibited {
            return (switched, action, None);
        }
        let why = reason(&switched.log_tail);
        tracing::warn!(
            "{why}: nixpkgs refuses to {action} into this release; applying it with boot, it runs after the next reboot",
            action = action.as_str()
        );
        let mut booted = self.switch_system(manifest, Action::Boot, log);
        let mut tail = switched.log_tail;
        tail.extend_from_slice(b"\n--- applied with boot instead ---\n");
        tail.extend_from_slice(&booted.log_tail);
        booted.log_tail = tail;
        let boot_only = matches!(booted.ended, Ended::Success).then_some(why);
        (booted, Action::Boot, boot_only)
    }

    /// After applying: remember (and report) a release that runs only after the next boot.
    pub(super) fn record_boot_only(&mut self, boot_only: Option<String>) {
        self.state.boot_only = boot_only.map(|reason| BootOnly {
            id: self.id.clone(),
            reason,
        });
        self.report_boot_only();
    }

    /// On every poll: while the host does not run the applied release's system yet (no reboot
    /// since it went in with `boot`), the report says so; after the reboot it is forgotten.
    pub(super) fn report_boot_only(&mut self) {
        let Some(b) = self.state.boot_only.clone() else {
            return;
        };
        let applied = self.state.applied.as_ref().map(|a| &a.id);
        if applied != Some(&b.id) || runs_profile(&self.opts.system_link, &self.opts.system_profile)
        {
            self.state.boot_only = None;
            return;
        }
        self.report.boot_only = Some(b.reason);
        if self.report.reboot.is_none() {
            self.report.reboot = Some(RebootReport::Needed);
        }
    }
}

/// Whether the running system is the system profile's newest generation.
fn runs_profile(system_link: &Path, system_profile: &Path) -> bool {
    match (
        std::fs::canonicalize(system_link),
        std::fs::canonicalize(system_profile),
    ) {
        (Ok(running), Ok(profile)) => running == profile,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What nixpkgs' switchInhibitors pre-switch check prints (switchable-system.nix).
    const NIXPKGS: &str = "Checking switch inhibitors...\n\
        There are changes to critical components of the system:\n\
        \n\
        dbus-implementation : dbus -> broker\n\
        \n\
        Switching into this system is not recommended.\n\
        You probably want to run 'nixos-rebuild boot' and reboot your system instead.\n\
        \n\
        If you really want to switch into this configuration directly, then\n\
        you can set NIXOS_NO_CHECK=1 to ignore pre-switch checks.\n\
        Pre-switch check 'switchInhibitors' failed\n\
        Pre-switch checks failed\n";

    #[test]
    fn nixpkgs_refusal_is_recognised_and_its_inhibitors_named() {
        assert!(refused(NIXPKGS.as_bytes()));
        assert_eq!(
            reason(NIXPKGS.as_bytes()),
            "a switch inhibitor changed (dbus-implementation : dbus -> broker)"
        );
        assert!(!refused(b"error: attribute 'x' missing\n"));
    }

    #[test]
    fn a_reason_is_one_capped_line_without_control_characters() {
        let hostile = format!(
            "{CHANGES}\nx\x1b]52;c;AAAA\x07 : {}\n{REFUSED}.\n",
            "y".repeat(5000)
        );
        let r = reason(hostile.as_bytes());
        assert!(!r.chars().any(char::is_control), "{r:?}");
        assert!(r.len() < REASON_MAX + 64, "{}", r.len());
        assert_eq!(reason(REFUSED.as_bytes()), "a switch inhibitor changed");
    }
}
