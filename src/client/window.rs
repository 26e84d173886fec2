//! The reboot window on the client: whether a needed reboot happens now or waits, by the local clock.

use std::time::{Duration, SystemTime};

use crate::core::settings::RebootSlot;
use crate::core::window::RebootWindow;

/// Minutes after local midnight at `t`, in the client's time zone (`TZ`, else `/etc/localtime`).
pub fn local_minute(t: SystemTime) -> u16 {
    use chrono::Timelike;
    let local = chrono::DateTime::<chrono::Local>::from(t);
    // hour() < 24 and minute() < 60: the product fits.
    (local.hour() * 60 + local.minute()) as u16
}

/// What to do about a reboot the new system needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootWhen {
    Now,
    /// Outside the window: the first poll inside it reboots.
    Deferred {
        window: RebootWindow,
        opens_in: Duration,
    },
}

/// The release's window if it names one, else the client's; none means any time.
pub fn decide(window: Option<RebootWindow>, local_minute: u16) -> RebootWhen {
    match window {
        Some(window) if !window.contains(local_minute) => RebootWhen::Deferred {
            window,
            opens_in: Duration::from_secs(u64::from(window.minutes_until_open(local_minute)) * 60),
        },
        _ => RebootWhen::Now,
    }
}

/// Whether the state records a deferred reboot whose window is open now (the watcher asks at
/// each check; an unreadable state owes nothing here, the next poll reports it).
pub fn pending_reboot_open(state_dir: &std::path::Path, opts: &super::PollOptions) -> bool {
    super::state::State::load(state_dir)
        .ok()
        .and_then(|s| s.pending_reboot)
        .is_some_and(|p| {
            p.window
                .is_none_or(|w| w.contains((opts.local_minute)((opts.now)())))
        })
}

impl<R: super::transport::Remote, C: super::transport::Connector> super::Poll<'_, R, C> {
    /// On a poll with nothing new: whether a deferred reboot is due now. A reboot no longer
    /// needed (the host was rebooted since) is forgotten; one still waiting is reported.
    pub(super) fn settle_pending_reboot(&mut self) -> bool {
        let Some(pending) = self.state.pending_reboot.clone() else {
            return false;
        };
        if pending.id != self.id
            || !super::reboot::needed(&self.opts.booted_system, &self.opts.system_profile)
        {
            self.state.pending_reboot = None;
            return false;
        }
        self.report.reboot = Some(crate::core::report::RebootReport::Pending);
        self.report.reboot_window = pending.window;
        // Kept until a boot makes it unneeded, so a reboot that fails is tried again.
        let open = pending
            .window
            .is_none_or(|w| w.contains((self.opts.local_minute)(self.started)));
        open && self.slot_allows(pending.slot)
    }

    /// Inside the window: a host that waits for a reboot slot reboots only on a `reboot`
    /// trigger this poll handles (the server's grant), and asks in its report otherwise.
    pub(super) fn slot_allows(&mut self, slot: RebootSlot) -> bool {
        use crate::core::report::RebootSlotReport;
        if slot.is_free() {
            return true;
        }
        let granted = self
            .trigger
            .as_ref()
            .is_some_and(|t| t.kind == crate::core::current::TriggerKind::Reboot);
        if granted {
            tracing::info!("the server granted a reboot slot: rebooting");
            self.report.reboot_slot = Some(RebootSlotReport::Granted);
        } else {
            tracing::info!("the reboot is due and waits for a reboot slot from the server");
            self.report.reboot_slot = Some(RebootSlotReport::Wanted);
        }
        granted
    }

    /// After applying a release: `true` to reboot now; outside the window the reboot is
    /// recorded as pending and reported instead.
    pub(super) fn reboot_now_or_later(
        &mut self,
        needed: bool,
        (release_window, slot): (Option<RebootWindow>, RebootSlot),
    ) -> bool {
        self.state.pending_reboot = None;
        if !needed {
            return false;
        }
        let now = (self.opts.now)();
        let window = release_window.or(self.cfg.reboot_window);
        match decide(window, (self.opts.local_minute)(now)) {
            RebootWhen::Now if self.slot_allows(slot) => true,
            RebootWhen::Now => {
                self.state.pending_reboot = Some(super::state::PendingReboot {
                    id: self.id.clone(),
                    since: crate::core::settings::format_time(now),
                    window,
                    slot,
                });
                self.report.reboot = Some(crate::core::report::RebootReport::Pending);
                self.report.reboot_window = window;
                false
            }
            RebootWhen::Deferred { window, opens_in } => {
                tracing::info!(
                    "the new system needs a reboot; it waits for the reboot window {window} (local time), which opens in {}",
                    humantime::format_duration(opens_in)
                );
                self.state.pending_reboot = Some(super::state::PendingReboot {
                    id: self.id.clone(),
                    since: crate::core::settings::format_time(now),
                    window: Some(window),
                    slot,
                });
                self.report.reboot = Some(crate::core::report::RebootReport::Pending);
                self.report.reboot_window = Some(window);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Option<RebootWindow> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn outside_the_window_the_reboot_waits_for_its_start() {
        let at_11 = 11 * 60;
        assert_eq!(
            decide(w("01:00-05:00"), at_11),
            RebootWhen::Deferred {
                window: w("01:00-05:00").unwrap(),
                opens_in: Duration::from_secs(14 * 3600),
            }
        );
        assert_eq!(decide(w("01:00-05:00"), 3 * 60), RebootWhen::Now);
        assert_eq!(decide(None, at_11), RebootWhen::Now, "no window: any time");
    }

    #[test]
    fn a_window_across_midnight_is_open_on_both_sides_of_it() {
        let win = w("23:00-02:00");
        assert_eq!(decide(win, 23 * 60 + 30), RebootWhen::Now);
        assert_eq!(decide(win, 60), RebootWhen::Now);
        assert!(
            matches!(decide(win, 2 * 60), RebootWhen::Deferred { opens_in, .. } if opens_in == Duration::from_secs(21 * 3600))
        );
    }

    #[test]
    fn local_minute_reads_the_time_zone() {
        // 2026-12-01T12:34:56Z; the process's TZ is whatever the test runs with, so only the
        // range and the minute within the hour (all real zones are whole or half hours off,
        // or 45 minutes) are certain.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_128_496);
        let m = local_minute(t);
        assert!(m < 1440);
        assert!([34, 4, 49, 19].contains(&(m % 60)), "{m}");
    }
}
