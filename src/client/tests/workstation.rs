//! Workstations against the in-memory chroot: a restart the user may postpone until its deadline, and releases deferred while metered or on battery (clock at 08:00 UTC).

use super::*;
use crate::client::conditions::{Deferral, Observed, OnMetered, Source};
use crate::client::postpone;
use crate::client::restart_policy::Refused;
use crate::core::report::{Deferred, RebootReport};
use crate::core::settings::{Interval, Reboot};

/// A fixture whose next release needs a restart, `reboot = "ask"`, window 01:00-05:00.
fn asks() -> Fixture {
    let mut f = Fixture::new();
    let dir = f._dir.path().to_owned();
    f.opts.booted_system = super::reboot::fake_system(&dir, "booted", "kernel-1");
    f.opts.system_profile = super::reboot::fake_system(&dir, "profile", "kernel-2");
    f.apply.reboot = Reboot::Ask;
    f.apply.reboot_window = Some("01:00-05:00".parse().unwrap());
    f.apply.reboot_deadline = Some(Interval::secs(2 * 86_400));
    f
}

fn at(offset: u64) -> String {
    crate::core::settings::format_time(clock() + Duration::from_secs(offset))
}

#[test]
fn ask_warns_in_the_window_takes_postponements_and_restarts_after_the_warning() {
    let mut f = asks();
    let id = f.publish(&base_files());
    let Polled::Applied { reboot, .. } = f.poll().unwrap() else {
        panic!("applied")
    };
    assert!(!reboot, "asked, never restarted at once");
    let r = f.report();
    assert_eq!(r.reboot, Some(RebootReport::Pending));
    assert_eq!(r.reboot_deadline, Some(at(2 * 86_400)));
    assert_eq!(f.state().restart.unwrap().id, id);

    advance(17 * 3600 + 30 * 60); // 01:30 the next day: warned, restarts at 01:40
    assert!(matches!(f.poll().unwrap(), Polled::Unchanged { .. }));
    assert_eq!(f.report().reboot_at, Some(at(600)));

    let granted = postpone::postpone(&f.cfg.state_dir, Duration::from_secs(7200), clock()).unwrap();
    assert_eq!(granted.until, at(7200));
    advance(15 * 60);
    assert!(matches!(f.poll().unwrap(), Polled::Unchanged { .. }));
    let r = f.report();
    assert_eq!(r.reboot_postponed_until, Some(at(7200 - 900)));
    assert_eq!(r.reboot_at, None);

    advance(7200); // 03:45: the postponement is over: warned again, not restarted unwarned
    assert!(matches!(f.poll().unwrap(), Polled::Unchanged { .. }));
    assert_eq!(f.report().reboot_at, Some(at(600)));
    advance(600);
    assert_eq!(f.poll().unwrap(), Polled::RebootDue { id, seq: 1 });
}

#[test]
fn postponing_stops_at_the_deadline() {
    let mut f = asks();
    f.publish(&base_files());
    f.poll().unwrap();
    let dir = f.cfg.state_dir.clone();
    let g = postpone::postpone(&dir, Duration::from_secs(5 * 86_400), clock()).unwrap();
    assert_eq!(g.until, at(2 * 86_400), "cut at the deadline");
    advance(2 * 86_400);
    let e = postpone::postpone(&dir, Duration::from_secs(60), clock()).unwrap_err();
    assert!(
        matches!(
            e,
            postpone::PostponeError::Refused(Refused::PastDeadline { .. })
        ),
        "{e}"
    );
    // Past the deadline, in the window: warned, then restarted.
    advance(17 * 3600 + 30 * 60);
    f.poll().unwrap();
    assert!(f.report().reboot_at.is_some());
    advance(600);
    assert!(matches!(f.poll().unwrap(), Polled::RebootDue { .. }));
}

#[test]
fn nothing_to_postpone_without_a_restart_and_if_needed_stays_silent() {
    let mut f = Fixture::new();
    f.publish(&base_files());
    f.poll().unwrap();
    let e = postpone::postpone(&f.cfg.state_dir, Duration::from_secs(60), clock()).unwrap_err();
    assert!(e.to_string().contains("nothing to postpone"), "{e}");
    let mut f = asks();
    f.apply.reboot = Reboot::IfNeeded;
    f.apply.reboot_window = None;
    f.publish(&base_files());
    let Polled::Applied { reboot, .. } = f.poll().unwrap() else {
        panic!("applied")
    };
    assert!(
        reboot,
        "if-needed without notifications: restarted at once, as before"
    );
    assert_eq!(f.state().restart, None);
}

fn defers(f: &mut Fixture, seen: Observed) {
    f.cfg.defer = Deferral {
        metered: OnMetered::Defer,
        on_battery_below: Some(30.try_into().unwrap()),
    };
    f.opts.conditions = Source::Fixed(seen);
}

#[test]
fn metered_defers_a_new_release_but_reports_and_now_overrides() {
    let mut f = Fixture::new();
    let first = f.publish(&base_files());
    f.poll().unwrap();
    defers(
        &mut f,
        Observed {
            metered: Some(3),
            ..Observed::default()
        },
    );
    let second = f.publish(&[("config/flake.nix", b"{ }\n", 0o644)]);
    assert_eq!(
        f.poll().unwrap(),
        Polled::Deferred {
            id: second.clone(),
            why: Deferred::Metered
        }
    );
    let r = f.report();
    assert_eq!(
        (r.result, r.deferred),
        (PullResult::Unchanged, Some(Deferred::Metered))
    );
    assert_eq!(
        r.release,
        Some(first.to_string()),
        "what runs, not what waits"
    );
    assert!(f.state().failure.is_none(), "not a failure");
    f.opts.retry_now = true;
    assert!(matches!(f.poll().unwrap(), Polled::Applied { .. }));
    assert_eq!(f.report().deferred, None);
}

#[test]
fn on_battery_below_the_threshold_defers_and_plugged_in_applies() {
    let mut f = Fixture::new();
    f.publish(&base_files());
    f.poll().unwrap();
    let battery = |on, p| Observed {
        on_battery: Some(on),
        percentage: Some(p),
        ..Observed::default()
    };
    defers(&mut f, battery(true, 20.0));
    f.publish(&[("config/flake.nix", b"{ }\n", 0o644)]);
    assert!(matches!(
        f.poll().unwrap(),
        Polled::Deferred {
            why: Deferred::OnBattery,
            ..
        }
    ));
    defers(&mut f, battery(false, 20.0));
    assert!(matches!(f.poll().unwrap(), Polled::Applied { .. }));
}

#[test]
fn an_asked_restart_in_a_group_with_max_rebooting_also_waits_for_its_slot() {
    let mut f = asks();
    f.apply.reboot_slot = crate::core::settings::RebootSlot::Wait;
    let id = f.publish(&base_files());
    f.poll().unwrap();
    advance(17 * 3600 + 30 * 60); // 01:30: warned
    assert!(matches!(f.poll().unwrap(), Polled::Unchanged { .. }));
    advance(600); // 01:40: due by the person's policy, but no slot granted yet
    assert!(matches!(f.poll().unwrap(), Polled::Unchanged { .. }));
    assert_eq!(
        f.report().reboot_slot,
        Some(crate::core::report::RebootSlotReport::Wanted)
    );
    f.remote
        .put("/CURRENT", format!("{id}\ntrigger 1800000000-1 reboot\n"));
    advance(60);
    assert_eq!(f.poll().unwrap(), Polled::RebootDue { id, seq: 1 });
}
