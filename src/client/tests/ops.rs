//! Tests of the reboot window and of pause against the in-memory chroot (clock at 08:00 UTC, local time = UTC).

use super::*;
use crate::core::report::RebootReport;
use crate::core::settings::Reboot;
use crate::core::window::RebootWindow;

fn window(s: &str) -> Option<RebootWindow> {
    Some(s.parse().unwrap())
}

/// A fixture whose next release takes a reboot: the profile's kernel differs from the booted one.
fn needs_reboot(win: Option<RebootWindow>) -> Fixture {
    let mut f = Fixture::new();
    let dir = f._dir.path().to_owned();
    f.opts.booted_system = super::reboot::fake_system(&dir, "booted", "kernel-1");
    f.opts.system_profile = super::reboot::fake_system(&dir, "profile", "kernel-2");
    f.apply.reboot = Reboot::IfNeeded;
    f.apply.reboot_window = win;
    f
}

#[test]
fn outside_the_window_a_reboot_is_pending_until_the_first_poll_inside_it() {
    let mut f = needs_reboot(window("01:00-05:00"));
    let id = f.publish(&base_files());
    let Polled::Applied { reboot, .. } = f.poll().unwrap() else {
        panic!("applied")
    };
    assert!(!reboot, "08:00 is outside 01:00-05:00: no reboot now");
    let r = f.report();
    assert_eq!(
        (r.reboot, r.reboot_window),
        (Some(RebootReport::Pending), window("01:00-05:00"))
    );
    assert_eq!(f.state().pending_reboot.unwrap().id, id);

    advance(600);
    assert_eq!(
        f.poll().unwrap(),
        Polled::Unchanged {
            id: id.clone(),
            seq: 1
        }
    );
    assert_eq!(
        f.report().reboot,
        Some(RebootReport::Pending),
        "still owed, still reported"
    );

    advance(17 * 3600 + 20 * 60); // 01:30 the next day
    assert_eq!(
        f.poll().unwrap(),
        Polled::RebootDue {
            id: id.clone(),
            seq: 1
        }
    );

    // The reboot happened: the booted system is the new one, so nothing is owed any more.
    let dir = f._dir.path().to_owned();
    f.opts.booted_system = super::reboot::fake_system(&dir, "booted-new", "kernel-2");
    advance(60);
    assert_eq!(f.poll().unwrap(), Polled::Unchanged { id, seq: 1 });
    assert_eq!(f.report().reboot, None);
    assert_eq!(f.state().pending_reboot, None);
}

#[test]
fn inside_the_window_or_without_one_the_reboot_is_now() {
    let mut f = needs_reboot(window("07:00-09:00"));
    f.publish(&base_files());
    let Polled::Applied { reboot, .. } = f.poll().unwrap() else {
        panic!("applied")
    };
    assert!(reboot, "08:00 is inside 07:00-09:00");
    assert_eq!(f.report().reboot, None);

    let mut f = needs_reboot(None);
    f.publish(&base_files());
    assert!(matches!(
        f.poll().unwrap(),
        Polled::Applied { reboot: true, .. }
    ));
}

#[test]
fn a_window_across_midnight_and_the_clients_own_window() {
    // The release names none: the client's window decides (22:00-06:00 is closed at 08:00).
    let mut f = needs_reboot(None);
    f.cfg.reboot_window = window("22:00-06:00");
    f.publish(&base_files());
    assert!(matches!(
        f.poll().unwrap(),
        Polled::Applied { reboot: false, .. }
    ));
    assert_eq!(f.report().reboot_window, window("22:00-06:00"));
    advance(15 * 3600); // 23:00
    assert!(matches!(f.poll().unwrap(), Polled::RebootDue { .. }));

    // A release's own window wins over the client's.
    let mut f = needs_reboot(window("06:00-10:00"));
    f.cfg.reboot_window = window("22:00-06:00");
    f.publish(&base_files());
    assert!(matches!(
        f.poll().unwrap(),
        Polled::Applied { reboot: true, .. }
    ));
}

#[test]
fn a_pause_holds_a_release_back_but_the_heartbeat_goes_out() {
    let mut f = Fixture::new();
    let first = f.publish(&base_files());
    f.poll().unwrap();
    let reason = "conference demo".parse().unwrap();
    let p = pause::Pause::new(clock(), Duration::from_secs(3600), Some(reason)).unwrap();
    pause::save(&f.cfg.state_dir, &p).unwrap();
    let second = f.publish(&[("config/flake.nix", b"{ x = 2; }\n", 0o644)]);
    let calls = f.calls();

    advance(60);
    let polled = f.poll().unwrap();
    assert_eq!(
        polled,
        Polled::Paused {
            id: second.clone(),
            until: p.until.clone(),
            reason: Some("conference demo".into())
        }
    );
    assert_eq!(f.calls(), calls, "no rebuild while paused");
    let r = f.report();
    assert_eq!(r.result, PullResult::Unchanged);
    assert_eq!(
        r.release.as_deref(),
        Some(first.as_str()),
        "reports what runs"
    );
    assert_eq!(r.paused_until.as_deref(), Some(p.until.as_str()));
    assert_eq!(r.pause_reason.as_deref(), Some("conference demo"));
    let ops: Vec<_> = f
        .remote
        .log
        .iter()
        .filter(|op| matches!(op, Op::Read(_)))
        .collect();
    assert_eq!(ops.len(), 1, "only /CURRENT is read: {ops:?}");

    // Resumed: the next poll applies it.
    assert!(pause::remove(&f.cfg.state_dir).unwrap());
    assert!(matches!(f.poll().unwrap(), Polled::Applied { id, .. } if id == second));
    assert_eq!(f.report().paused_until, None);
}

#[test]
fn a_pause_ends_by_itself() {
    let mut f = Fixture::new();
    f.publish(&base_files());
    let p = pause::Pause::new(clock(), Duration::from_secs(600), None).unwrap();
    pause::save(&f.cfg.state_dir, &p).unwrap();
    assert!(matches!(f.poll().unwrap(), Polled::Paused { .. }));
    advance(600);
    assert!(matches!(f.poll().unwrap(), Polled::Applied { .. }));
}

#[test]
fn the_report_carries_the_applied_seq_the_apply_time_and_the_next_retry() {
    let mut f = Fixture::new();
    f.publish(&base_files());
    f.poll().unwrap();
    let r = f.report();
    assert_eq!((r.applied_seq, r.last_apply_seconds), (Some(1), Some(0)));
    assert_eq!(r.applied_at.as_deref(), Some("2027-01-15T08:00:00Z"));
    f.publish(&[("config/broken", b"", 0o644)]);
    advance(5);
    f.poll().unwrap_err();
    let r = f.report();
    assert_eq!((r.seq, r.applied_seq), (Some(2), Some(1)));
    assert_eq!(r.next_retry.as_deref(), Some("2027-01-15T08:01:05Z"));
    f.poll().unwrap_err();
    assert_eq!(
        f.report().next_retry.as_deref(),
        Some("2027-01-15T08:01:05Z"),
        "while backing off"
    );
}

#[test]
fn a_watcher_reboots_at_the_first_check_inside_the_window_not_at_its_next_heartbeat() {
    use crate::client::watch::{Checked, Watcher};
    use std::time::Instant;
    let mut f = needs_reboot(window("01:00-05:00"));
    let id = f.publish(&base_files());
    let (cfg, opts) = (f.cfg.clone(), f.opts.clone());
    let mut w = Watcher::new(&cfg, &opts, Duration::from_secs(3600));
    let t0 = Instant::now();
    let first = check_once(&mut w, &mut f.remote, t0).unwrap();
    assert!(
        matches!(
            first,
            Checked::Polled(Ok(Polled::Applied { reboot: false, .. }))
        ),
        "{first:?}"
    );
    let at = |s: u64| t0 + Duration::from_secs(s);
    let outside = check_once(&mut w, &mut f.remote, at(5)).unwrap();
    assert!(matches!(outside, Checked::Idle), "08:00: {outside:?}");

    advance(17 * 3600 + 20 * 60); // 01:20 the next day, the heartbeat not due yet
    let inside = check_once(&mut w, &mut f.remote, at(10)).unwrap();
    assert!(
        matches!(inside, Checked::Polled(Ok(Polled::RebootDue { id: ref due, .. })) if *due == id),
        "{inside:?}"
    );
    // The reboot command did not take (the lab's booted system is unchanged): tried again
    // a minute later, not at every check.
    let soon = check_once(&mut w, &mut f.remote, at(15)).unwrap();
    assert!(matches!(soon, Checked::Idle), "{soon:?}");
    let later = check_once(&mut w, &mut f.remote, at(75)).unwrap();
    assert!(
        matches!(later, Checked::Polled(Ok(Polled::RebootDue { .. }))),
        "{later:?}"
    );
    assert_eq!(f.state().pending_reboot.unwrap().id, id);
}

#[test]
fn an_unreadable_pause_or_state_file_is_reported_naming_it() {
    for (file, garbage) in [
        ("pause.toml", "until = [not a time\n"),
        ("state.toml", "\u{0}\u{1}garbage = \n"),
    ] {
        let mut f = Fixture::new();
        f.publish(&base_files());
        f.poll().unwrap();
        let path = f.cfg.state_dir.join(file);
        std::fs::write(&path, garbage).unwrap();
        let calls = f.calls();
        let err = f.poll().unwrap_err();
        assert!(matches!(err, PullError::State(_)), "{file}: {err}");
        let r = f.report();
        assert_eq!(r.result, PullResult::Failed, "{file}");
        let error = r.error.unwrap_or_default();
        assert!(
            error.contains(&path.display().to_string()),
            "{file}: {error}"
        );
        assert_eq!(f.calls(), calls, "{file}: nothing applied");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            garbage,
            "{file}: left as it was"
        );
    }
}

#[test]
fn a_host_with_a_reboot_limit_asks_for_a_slot_and_reboots_only_on_the_grant() {
    use crate::core::report::RebootSlotReport;
    let mut f = needs_reboot(window("07:00-09:00"));
    f.apply.reboot_slot = crate::core::settings::RebootSlot::Wait;
    let id = f.publish(&base_files());
    let Polled::Applied { reboot, .. } = f.poll().unwrap() else {
        panic!("applied")
    };
    assert!(!reboot, "inside the window, but no slot granted yet");
    let r = f.report();
    assert_eq!(
        (r.reboot, r.reboot_slot),
        (Some(RebootReport::Pending), Some(RebootSlotReport::Wanted))
    );
    // Still no grant: it keeps asking, and does not reboot.
    advance(60);
    assert_eq!(
        f.poll().unwrap(),
        Polled::Unchanged {
            id: id.clone(),
            seq: 1
        }
    );
    assert_eq!(f.report().reboot_slot, Some(RebootSlotReport::Wanted));
    // Another trigger is no grant.
    f.remote
        .put("/CURRENT", format!("{id}\ntrigger 1800000000-1 pull\n"));
    advance(60);
    assert!(matches!(f.poll().unwrap(), Polled::Unchanged { .. }));
    // The server's grant: a `reboot` trigger. The reboot is due now, and said so.
    f.remote
        .put("/CURRENT", format!("{id}\ntrigger 1800000000-2 reboot\n"));
    advance(60);
    assert_eq!(
        f.poll().unwrap(),
        Polled::RebootDue {
            id: id.clone(),
            seq: 1
        }
    );
    let r = f.report();
    assert_eq!(r.reboot_slot, Some(RebootSlotReport::Granted));
    assert_eq!(r.trigger.as_deref(), Some("1800000000-2"));
    // Rebooted: the next report owes nothing, and the server takes the slot back.
    let dir = f._dir.path().to_owned();
    f.opts.booted_system = super::reboot::fake_system(&dir, "booted-new", "kernel-2");
    advance(60);
    assert_eq!(f.poll().unwrap(), Polled::Unchanged { id, seq: 1 });
    let r = f.report();
    assert_eq!((r.reboot, r.reboot_slot), (None, None));
}

#[test]
fn outside_its_window_a_host_with_a_reboot_limit_does_not_ask_yet() {
    let mut f = needs_reboot(window("01:00-05:00"));
    f.apply.reboot_slot = crate::core::settings::RebootSlot::Wait;
    f.publish(&base_files());
    f.poll().unwrap();
    let r = f.report();
    assert_eq!(
        (r.reboot, r.reboot_slot),
        (Some(RebootReport::Pending), None)
    );
}
