//! Tests of the lifeline against the in-memory chroot: confirmation over a fresh session,
//! rollback when none comes, quarantine, `--retry`, and the confirmation of a boot.

use super::*;
use crate::core::settings::{Action, Confirm, Interval};
use state::Awaiting;

/// A first release applied (and confirmed), and a second one published.
fn second_release(f: &mut Fixture) -> (ReleaseId, ReleaseId) {
    let first = f.publish(&base_files());
    f.poll().unwrap();
    let second = f.publish(&[
        ("config/flake.nix", b"{ cut = true; }\n", 0o644),
        ("files/etc/new-secret", b"new\n", 0o600),
    ]);
    (first, second)
}

fn writes_of_the_report(log: &[Op]) -> usize {
    log.iter()
        .filter(|o| **o == Op::Write("/reports/status.toml".into()))
        .count()
}

#[test]
fn an_activation_is_confirmed_over_a_fresh_session_never_the_kept_one() {
    let mut f = Fixture::new();
    let id = f.publish(&base_files());
    f.poll().unwrap();
    assert_eq!(f.fresh_sessions, 1, "one new session for the confirmation");
    assert_eq!(
        f.fresh_log,
        vec![
            Op::Read("/CURRENT".into()),
            Op::Write("/reports/rebuild.log".into()),
            Op::Write("/reports/status.toml".into()),
        ],
        "the fresh session reads /CURRENT, then carries the log and the report"
    );
    assert_eq!(
        writes_of_the_report(&f.remote.log),
        0,
        "the kept session uploads nothing after the activation"
    );
    assert_eq!(f.report().result, PullResult::Ok);
    let state = f.state();
    assert_eq!(state.applied.unwrap().id, id);
    assert_eq!(state.unconfirmed, None, "confirmed: nothing waits");
    // A heartbeat needs no confirmation: no fresh session.
    f.poll().unwrap();
    assert_eq!(f.fresh_sessions, 0);
}

#[test]
fn without_a_fresh_session_within_the_timeout_the_previous_release_comes_back() {
    let mut f = Fixture::new();
    let (first, second) = second_release(&mut f);
    f.unreachable = usize::MAX;
    let err = f.poll().unwrap_err();
    assert!(matches!(err, PullError::Unconfirmed(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("the server was unreachable after activation")
            && text.contains("no fresh session within 3m")
            && text.contains(&format!("rolled back to release {}", first.short()))
            && text.contains("tiffin trigger client1 --retry"),
        "{text}"
    );
    // Rebuilt: the first release, the second, the first again.
    assert_eq!(f.calls().lines().count(), 3, "{}", f.calls());
    let current = std::fs::read_link(f.cfg.state_dir.join(CURRENT_LINK)).unwrap();
    assert!(current.ends_with(first.as_str()), "{current:?}");
    assert!(
        !f.root().join("etc/new-secret").exists(),
        "the new file is gone"
    );
    let state = f.state();
    assert_eq!(state.applied.unwrap().id, first);
    let q = state.quarantine.expect("quarantined");
    assert_eq!((q.id, q.seq), (second.clone(), 2));
    assert!(
        q.reason.contains("unreachable after activation"),
        "{}",
        q.reason
    );
    assert_eq!(state.unconfirmed, None);
    assert_eq!(state.failure, None, "no backoff: a quarantine");
    // Nothing reached the server: the report on it is still the first release's.
    assert_eq!(f.report().release.as_deref(), Some(first.as_str()));
}

#[test]
fn the_rollback_is_reported_as_soon_as_a_fresh_session_works() {
    let mut f = Fixture::new();
    let (first, second) = second_release(&mut f);
    // Attempts at 0, 1, 3, 7, 15, 30, 45 … 165 and 180 s: 16 in the 3 minutes; the next works.
    f.unreachable = 16;
    f.poll().unwrap_err();
    assert_eq!(f.fresh_sessions, 1, "one session: the rollback's report");
    let report = f.report();
    assert_eq!(report.result, PullResult::RolledBack);
    assert_eq!(report.release.as_deref(), Some(second.as_str()));
    assert_eq!(report.applied.as_deref(), Some(first.as_str()));
    assert_eq!(report.quarantined.as_deref(), Some(second.as_str()));
    let error = report.error.unwrap();
    assert!(
        error.contains("the server was unreachable after activation"),
        "{error}"
    );
}

#[test]
fn a_quarantined_release_is_not_applied_again_even_after_a_restart_until_retry() {
    let mut f = Fixture::new();
    let (first, second) = second_release(&mut f);
    f.unreachable = usize::MAX;
    f.poll().unwrap_err();
    let rebuilds = f.calls().lines().count();
    // The next polls (each a new process: the state is read back from disk) hold it back.
    f.unreachable = 0;
    advance(7 * 24 * 3600);
    for _ in 0..2 {
        let err = f.poll().unwrap_err();
        assert!(matches!(err, PullError::Quarantined { .. }), "{err}");
        assert!(err.to_string().contains("is quarantined since"), "{err}");
    }
    assert_eq!(f.calls().lines().count(), rebuilds, "nothing rebuilt");
    let report = f.report();
    assert_eq!(report.result, PullResult::RolledBack);
    assert_eq!(report.quarantined.as_deref(), Some(second.as_str()));
    assert_eq!(report.applied.as_deref(), Some(first.as_str()));
    // `tiffin trigger client1 --retry` lifts it: applied (and confirmed) again.
    let current = format!("{second}\ntrigger 1800000000-1 retry\n");
    f.remote.put("/CURRENT", current);
    let polled = f.poll().unwrap();
    assert!(
        matches!(polled, Polled::Applied { ref id, .. } if *id == second),
        "{polled:?}"
    );
    let state = f.state();
    assert_eq!(state.quarantine, None);
    assert_eq!(state.applied.unwrap().id, second);
    assert_eq!(f.report().quarantined, None);
}

#[test]
fn a_newer_release_is_applied_despite_a_quarantine_and_ends_it() {
    let mut f = Fixture::new();
    let (_, _second) = second_release(&mut f);
    f.unreachable = usize::MAX;
    f.poll().unwrap_err();
    f.unreachable = 0;
    let third = f.publish(&[("config/flake.nix", b"{ fixed = true; }\n", 0o644)]);
    let polled = f.poll().unwrap();
    assert!(
        matches!(polled, Polled::Applied { ref id, .. } if *id == third),
        "{polled:?}"
    );
    assert_eq!(f.state().quarantine, None);
}

#[test]
fn a_failed_health_check_quarantines_instead_of_backing_off() {
    let mut f = Fixture::new();
    let (_, second) = second_release(&mut f);
    f.apply.health_check = vec!["false".into()];
    let second_again = f.publish(&[("config/flake.nix", b"{ unhealthy = 1; }\n", 0o644)]);
    assert_ne!(second, second_again);
    f.poll().unwrap_err();
    let state = f.state();
    assert_eq!(state.failure, None, "no backoff");
    assert_eq!(state.quarantine.unwrap().id, second_again);
    let report = f.report();
    assert_eq!(report.quarantined.as_deref(), Some(second_again.as_str()));
    assert!(report.error.unwrap().contains("--retry"));
    // `--now` does not retry it either: only a trigger or a newer release does.
    f.opts.retry_now = true;
    let err = f.poll().unwrap_err();
    assert!(matches!(err, PullError::Quarantined { .. }), "{err}");
}

#[test]
fn confirm_off_trusts_the_activation() {
    let mut f = Fixture::new();
    f.apply.confirm = Confirm::Off;
    f.unreachable = usize::MAX;
    let id = f.publish(&base_files());
    f.poll().unwrap();
    assert_eq!(f.fresh_sessions, 0);
    assert_eq!(
        writes_of_the_report(&f.remote.log),
        1,
        "the kept session reports"
    );
    assert_eq!(f.state().applied.unwrap().id, id);
}

#[test]
fn a_release_timeout_overrides_the_clients() {
    let mut f = Fixture::new();
    let (_, _) = second_release(&mut f);
    f.apply.confirm_timeout = Some(Interval::secs(10));
    let third = f.publish(&[("config/flake.nix", b"{ t = 10; }\n", 0o644)]);
    // Attempts at 0, 1, 3 and 7 s, and the last at the deadline, 10 s.
    f.unreachable = 5;
    let err = f.poll().unwrap_err().to_string();
    assert!(
        err.contains("no fresh session within 10s (5 attempt(s)"),
        "{err}"
    );
    assert_eq!(f.state().quarantine.unwrap().id, third);
}

/// A stand-in NixOS system: `nixos-version`, and a `switch-to-configuration` that records.
fn system(dir: &Path, name: &str, calls: &Path) -> PathBuf {
    let top = dir.join(name);
    std::fs::create_dir_all(top.join("bin")).unwrap();
    std::fs::write(top.join("nixos-version"), "lab\n").unwrap();
    let script = format!(
        "#!/bin/sh\necho \"{name} switch-to-configuration $1\" >> {}\n",
        calls.display()
    );
    let stc = top.join("bin/switch-to-configuration");
    std::fs::write(&stc, script).unwrap();
    std::fs::set_permissions(&stc, std::fs::Permissions::from_mode(0o755)).unwrap();
    top
}

/// A host whose `boot` release waits for its boot: the profile leads to `new`, it ran `old`.
fn boot_pending(f: &mut Fixture) -> (ReleaseId, ReleaseId, PathBuf, PathBuf) {
    let dir = f._dir.path().to_owned();
    let calls = dir.join("boot-calls");
    let (old, new) = (system(&dir, "old", &calls), system(&dir, "new", &calls));
    f.opts.system_link = dir.join("current-system");
    std::os::unix::fs::symlink(&old, &f.opts.system_link).unwrap();
    f.opts.booted_system = dir.join("booted-system");
    std::os::unix::fs::symlink(&old, &f.opts.booted_system).unwrap();
    f.opts.system_profile = dir.join("profile");
    std::os::unix::fs::symlink(&old, &f.opts.system_profile).unwrap();
    let first = f.publish(&base_files());
    f.poll().unwrap();
    std::fs::remove_file(&f.opts.system_profile).unwrap();
    std::os::unix::fs::symlink(&new, &f.opts.system_profile).unwrap();
    f.apply.action = Action::Boot;
    let second = f.publish(&[("config/flake.nix", b"{ boot = 1; }\n", 0o644)]);
    f.poll().unwrap();
    (first, second, old, new)
}

fn reboot_into(f: &Fixture, system: &Path) {
    std::fs::remove_file(&f.opts.booted_system).unwrap();
    std::os::unix::fs::symlink(system, &f.opts.booted_system).unwrap();
}

#[test]
fn a_boot_release_waits_for_its_boot_and_a_pull_after_it_confirms_it() {
    let mut f = Fixture::new();
    let (_, second, _, new) = boot_pending(&mut f);
    assert_eq!(
        f.fresh_sessions, 0,
        "a boot release is confirmed after the boot"
    );
    let u = f.state().unconfirmed.expect("waits");
    assert_eq!((u.id.clone(), u.awaiting), (second.clone(), Awaiting::Boot));
    assert_eq!(
        u.system.as_deref(),
        Some(std::fs::canonicalize(&new).unwrap().as_path())
    );
    // Before the reboot, a poll confirms nothing.
    f.poll().unwrap();
    assert!(f.state().unconfirmed.is_some());
    reboot_into(&f, &new);
    f.poll().unwrap();
    assert_eq!(
        f.state().unconfirmed,
        None,
        "booted it and reached the server"
    );
}

#[test]
fn confirm_boot_without_the_server_goes_back_to_the_previous_system_once() {
    let mut f = Fixture::new();
    let (first, second, old, new) = boot_pending(&mut f);
    let profile_calls = f._dir.path().join("profile-calls");
    f.cfg.prebuilt.set_profile = vec![
        "sh".into(),
        "-c".into(),
        format!("echo \"$0 $1\" >> {}", profile_calls.display()),
        "{profile}".into(),
        "{toplevel}".into(),
    ];
    f.cfg.activation = super::activation::Activation::Direct;
    reboot_into(&f, &new);
    let mut never = super::mem_remote::Fresh::of(&f.remote, usize::MAX);
    let checked = block_on(crate::client::lifeline::confirm_boot(
        &mut never, &f.cfg, &f.opts,
    ))
    .unwrap();
    let crate::client::lifeline::BootCheck::RolledBack {
        id,
        to,
        previous_system,
        boot_default,
        reason,
        ..
    } = checked
    else {
        panic!("{checked:?}")
    };
    assert_eq!((id, to), (second.clone(), Some(first.clone())));
    assert_eq!(previous_system, old);
    assert_eq!(boot_default, Ok(()));
    assert!(
        reason.contains("unreachable for 3m after booting it"),
        "{reason}"
    );
    let set = std::fs::read_to_string(&profile_calls).unwrap();
    assert_eq!(
        set.trim(),
        format!("{} {}", f.opts.system_profile.display(), old.display())
    );
    let boot = std::fs::read_to_string(f._dir.path().join("boot-calls")).unwrap();
    assert_eq!(boot, "old switch-to-configuration boot\n");
    let state = f.state();
    assert_eq!(state.applied.unwrap().id, first);
    assert_eq!(state.quarantine.unwrap().id, second);
    assert_eq!(state.unconfirmed, None);
    // Rebooted into the previous system: nothing waits, so never a second reboot.
    reboot_into(&f, &old);
    let again = block_on(crate::client::lifeline::confirm_boot(
        &mut never, &f.cfg, &f.opts,
    ))
    .unwrap();
    assert!(
        matches!(again, crate::client::lifeline::BootCheck::NothingPending),
        "{again:?}"
    );
    // And the next pull holds the release back.
    let err = f.poll().unwrap_err();
    assert!(matches!(err, PullError::Quarantined { .. }), "{err}");
}

#[test]
fn confirm_boot_with_the_server_confirms_and_on_another_system_does_nothing() {
    let mut f = Fixture::new();
    let (_, second, old, new) = boot_pending(&mut f);
    let mut fresh = super::mem_remote::Fresh::of(&f.remote, 0);
    // Booted the old system (picked by hand): nothing decided.
    reboot_into(&f, &old);
    let other = block_on(crate::client::lifeline::confirm_boot(
        &mut fresh, &f.cfg, &f.opts,
    ))
    .unwrap();
    assert!(
        matches!(
            other,
            crate::client::lifeline::BootCheck::OtherSystem { .. }
        ),
        "{other:?}"
    );
    assert!(f.state().unconfirmed.is_some());
    reboot_into(&f, &new);
    let ok = block_on(crate::client::lifeline::confirm_boot(
        &mut fresh, &f.cfg, &f.opts,
    ))
    .unwrap();
    assert!(
        matches!(ok, crate::client::lifeline::BootCheck::Confirmed { ref id, .. } if *id == second),
        "{ok:?}"
    );
    assert_eq!(f.state().unconfirmed, None);
    assert_eq!(f.state().applied.unwrap().id, second);
}

#[test]
fn an_activation_left_unconfirmed_by_a_killed_pull_is_rolled_back_once_overdue() {
    let mut f = Fixture::new();
    let (first, second) = second_release(&mut f);
    // What a pull killed mid-confirmation leaves: the release applied, and unconfirmed.
    f.apply.confirm = Confirm::Off;
    let _ = second;
    let third = f.publish(&[("config/flake.nix", b"{ killed = 1; }\n", 0o644)]);
    f.poll().unwrap();
    let mut state = f.state();
    let confirmed_first = state.applied.clone().unwrap();
    assert_eq!(confirmed_first.id, third);
    state.applied = Some(state::Applied {
        id: third.clone(),
        ..confirmed_first
    });
    state.unconfirmed = Some(state::Unconfirmed {
        id: third.clone(),
        seq: 3,
        awaiting: Awaiting::Activation,
        since: crate::core::settings::format_time(clock()),
        system: None,
        previous: Some(state::Applied {
            id: first.clone(),
            seq: 1,
            at: "2026-11-24T00:00:00Z".into(),
        }),
        previous_system: None,
        timeout: Interval::secs(180),
    });
    state.save(&f.cfg.state_dir).unwrap();
    let mut never = super::mem_remote::Fresh::of(&f.remote, usize::MAX);
    // Within its time: not yet.
    advance(60);
    let early = block_on(recover_overdue(&mut never, &f.cfg, &f.opts, "refused"));
    assert!(early.is_none(), "{early:?}");
    advance(180);
    let rolled = block_on(recover_overdue(&mut never, &f.cfg, &f.opts, "refused")).unwrap();
    assert!(
        rolled
            .to_string()
            .contains("the confirmation was cut short"),
        "{rolled}"
    );
    let state = f.state();
    assert_eq!(state.applied.unwrap().id, first);
    assert_eq!(state.quarantine.unwrap().id, third);
    assert_eq!(state.unconfirmed, None);
    // Nothing is overdue any more.
    assert!(block_on(recover_overdue(&mut never, &f.cfg, &f.opts, "refused")).is_none());
}

#[test]
fn a_watcher_needs_a_fresh_session_too_its_kept_one_never_confirms() {
    let mut f = Fixture::new();
    let (first, second) = second_release(&mut f);
    let (cfg, opts) = (f.cfg.clone(), f.opts.clone());
    let mut w = super::watch::Watcher::new(&cfg, &opts, Duration::from_secs(3600));
    // The kept session works throughout; no new one does.
    let mut never = super::mem_remote::Fresh::of(&f.remote, usize::MAX);
    let checked = block_on(w.check(&mut f.remote, &mut never, std::time::Instant::now())).unwrap();
    assert!(
        matches!(
            checked,
            super::watch::Checked::Polled(Err(PullError::Unconfirmed(_)))
        ),
        "{checked:?}"
    );
    assert_eq!(
        never.attempts, 32,
        "16 to confirm, 16 to report the rollback"
    );
    let state = f.state();
    assert_eq!(state.applied.unwrap().id, first);
    assert_eq!(state.quarantine.unwrap().id, second);
}
