//! The controller as a pure function of (policy, reports, time): every transition.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use super::slots::{Held, SlotView, Slots, assign};
use super::*;
use crate::admin::fleet::rollout::{FailureLimit, GroupName, GroupSettings, WaveSpec};
use crate::core::settings::Interval;

const MIN: Duration = Duration::from_secs(60);

fn t(mins: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + MIN * mins as u32
}

fn h(name: &str) -> HostName {
    name.parse().unwrap()
}

fn policy(waves: &[&str]) -> RolloutSettings {
    RolloutSettings {
        waves: waves.iter().map(|w| w.parse().unwrap()).collect(),
        max_failures: FailureLimit::Count(0),
        wave_timeout: Interval::secs(3600),
        soak: None,
        on_failure: OnFailure::Pause,
    }
}

/// A rollout of `hosts` (client1 tagged canary), each to release "new-<host>" seq 2 from "old".
fn rollout(policy: &RolloutSettings, hosts: &[&str]) -> Rollout {
    let targets = hosts
        .iter()
        .map(|n| {
            let target = Target {
                release: format!("new-{n}"),
                seq: 2,
                previous: Some("old".into()),
            };
            (h(n), target)
        })
        .collect();
    let tags = hosts
        .iter()
        .map(|n| {
            let tags: BTreeSet<GroupName> = if *n == "client1" {
                ["canary".parse().unwrap()].into()
            } else {
                BTreeSet::new()
            };
            (h(n), tags)
        })
        .collect();
    plan(policy, targets, &tags, t(0))
}

/// A host that reported at `at` running the old release (a heartbeat).
/// The rollout of `hosts` after its first step at `at` (the first wave started).
fn started(policy: &RolloutSettings, hosts: &[&str], at: SystemTime) -> Rollout {
    advance(&rollout(policy, hosts), policy, &BTreeMap::new(), at).rollout
}

fn heartbeat(at: SystemTime) -> HostView {
    HostView {
        report_at: Some(at),
        stale_after: Duration::from_secs(45 * 60),
        attempted: Some("old".into()),
        applied: Some("old".into()),
        result: Some(PullResult::Unchanged),
        published_seq: Some(2),
        ..HostView::default()
    }
}

fn applied(host: &str, at: SystemTime) -> HostView {
    HostView {
        attempted: Some(format!("new-{host}")),
        applied: Some(format!("new-{host}")),
        result: Some(PullResult::Ok),
        ..heartbeat(at)
    }
}

fn rolled_back(host: &str, at: SystemTime) -> HostView {
    HostView {
        attempted: Some(format!("new-{host}")),
        applied: Some("old".into()),
        result: Some(PullResult::RolledBack),
        quarantined: Some(format!("new-{host}")),
        error: Some("the server was unreachable after activation".into()),
        ..heartbeat(at)
    }
}

fn views(list: &[(&str, HostView)]) -> BTreeMap<HostName, HostView> {
    list.iter().map(|(n, v)| (h(n), v.clone())).collect()
}

fn releases(step: &Step) -> Vec<String> {
    step.actions
        .iter()
        .map(|a| match a {
            Action::Release(h) => format!("release {h}"),
            Action::Revert(h) => format!("revert {h}"),
        })
        .collect()
}

#[test]
fn the_first_step_starts_the_canary_wave_and_only_it() {
    let p = policy(&["canary", "50%", "100%"]);
    let r = rollout(&p, &["client1", "client2", "client3", "client4"]);
    assert_eq!(r.waves.len(), 3);
    let s = advance(&r, &p, &BTreeMap::new(), t(0));
    assert_eq!(releases(&s), vec!["release client1"]);
    assert_eq!(s.rollout.waves[0].started, Some(Stamp(t(0))));
    assert_eq!(s.events, vec!["wave 1 of 3 started: client1"]);
    // Nothing reported since: the next step waits and does nothing.
    let v = views(&[("client1", heartbeat(t(0)))]);
    let again = advance(&s.rollout, &p, &v, t(1));
    assert!(again.actions.is_empty());
    assert_eq!(again.rollout, s.rollout);
}

#[test]
fn a_healthy_wave_starts_the_next_and_the_last_one_finishes() {
    let p = policy(&["canary", "100%"]);
    let r = started(&p, &["client1", "client2"], t(0));
    let v = views(&[
        ("client1", applied("client1", t(1))),
        ("client2", heartbeat(t(1))),
    ]);
    let s = advance(&r, &p, &v, t(2));
    assert_eq!(releases(&s), vec!["release client2"]);
    assert_eq!(s.rollout.wave, 1);
    let v = views(&[
        ("client1", applied("client1", t(1))),
        ("client2", applied("client2", t(3))),
    ]);
    let s = advance(&s.rollout, &p, &v, t(4));
    assert_eq!(s.rollout.phase, Phase::Done);
    assert!(s.actions.is_empty());
}

#[test]
fn a_report_received_before_the_wave_started_does_not_count() {
    let p = policy(&["canary", "100%"]);
    let r = started(&p, &["client1", "client2"], t(10));
    // client1 "reported" the new release a minute before its wave started (a forged or an
    // old report): not done; it is waited for.
    let v = views(&[("client1", applied("client1", t(9)))]);
    let s = advance(&r, &p, &v, t(11));
    assert!(s.actions.is_empty(), "{:?}", s.actions);
    let verdict = judge(&r.targets[&h("client1")], &v[&h("client1")], t(10), t(11));
    assert_eq!(
        verdict,
        Verdict::Waiting("no report since the wave started".into())
    );
    // The same report a moment after the start counts.
    let v = views(&[(
        "client1",
        applied("client1", t(10) + Duration::from_millis(1)),
    )]);
    assert_eq!(
        releases(&advance(&r, &p, &v, t(11))),
        vec!["release client2"]
    );
}

#[test]
fn soak_holds_the_next_wave_until_the_hosts_stayed_healthy() {
    let mut p = policy(&["canary", "100%"]);
    p.soak = Some(Interval::secs(600));
    let r = started(&p, &["client1", "client2"], t(0));
    let v = views(&[("client1", applied("client1", t(1)))]);
    let s = advance(&r, &p, &v, t(2));
    assert!(s.actions.is_empty());
    assert_eq!(s.rollout.waves[0].settled, Some(Stamp(t(2))));
    let s = advance(&s.rollout, &p, &v, t(11));
    assert!(s.actions.is_empty(), "9 of 10 minutes");
    let s2 = advance(&s.rollout, &p, &v, t(12));
    assert_eq!(releases(&s2), vec!["release client2"]);
    // Failing during the soak halts instead.
    let v = views(&[("client1", rolled_back("client1", t(5)))]);
    let s3 = advance(&s.rollout, &p, &v, t(6));
    assert_eq!(s3.rollout.phase, Phase::Halted);
}

#[test]
fn one_failure_over_max_failures_halts_and_names_the_host() {
    let p = policy(&["canary", "100%"]);
    let r = started(&p, &["client1", "client2", "client3"], t(0));
    let v = views(&[("client1", rolled_back("client1", t(1)))]);
    let s = advance(&r, &p, &v, t(2));
    assert_eq!(s.rollout.phase, Phase::Halted);
    assert!(s.actions.is_empty(), "pause: nobody else gets it");
    let reason = s.rollout.reason.clone().unwrap();
    assert!(
        reason.contains(
            "wave 1 of 2: 1 host(s) failed, more than max_failures (0): client1 rolled-back: the server was unreachable after activation"
        ),
        "{reason}"
    );
    // A halted rollout stays halted: steps do nothing.
    let again = advance(&s.rollout, &p, &v, t(30));
    assert_eq!(again.rollout, s.rollout);
    assert!(again.actions.is_empty());
}

#[test]
fn the_failure_threshold_as_a_count_and_as_a_share() {
    let hosts = ["client1", "client2", "client3", "client4", "client5"];
    let failed_two = |p: &RolloutSettings| {
        let r = started(p, &hosts, t(0));
        let v = views(&[
            ("client1", rolled_back("client1", t(1))),
            ("client2", rolled_back("client2", t(1))),
            ("client3", applied("client3", t(1))),
            ("client4", applied("client4", t(1))),
            ("client5", applied("client5", t(1))),
        ]);
        advance(&r, p, &v, t(2)).rollout.phase
    };
    let mut p = policy(&["100%"]);
    for (limit, phase) in [
        (FailureLimit::Count(1), Phase::Halted),
        (FailureLimit::Count(2), Phase::Done),
        (FailureLimit::Percent(20), Phase::Halted), // 20% of 5 = 1 tolerated
        (FailureLimit::Percent(40), Phase::Done),   // 2 tolerated
    ] {
        p.max_failures = limit;
        assert_eq!(failed_two(&p), phase, "{limit}");
    }
}

#[test]
fn absent_hosts_do_not_block_and_waiting_ones_fail_at_the_timeout() {
    let p = policy(&["100%"]);
    let r = started(&p, &["client1", "client2", "client3"], t(0));
    // client2 was last heard of long ago (a laptop switched off), client3 never reported.
    let never = HostView {
        report_at: None,
        ..HostView::default()
    };
    let v = views(&[
        ("client1", applied("client1", t(1))),
        ("client2", heartbeat(t(0) - MIN * 120)),
        ("client3", never),
    ]);
    let s = advance(&r, &p, &v, t(2));
    assert_eq!(s.rollout.phase, Phase::Done);
    let lines = summary(&r, &v, t(2));
    assert!(
        lines[1].contains("1 done; 2 absent: client2 (silent for 2h 2m), client3 (never reported)"),
        "{lines:?}"
    );
    // A host still reporting the old release is waited for, until wave_timeout.
    let v = views(&[
        ("client1", applied("client1", t(1))),
        ("client2", heartbeat(t(30))),
        ("client3", applied("client3", t(1))),
    ]);
    assert_eq!(advance(&r, &p, &v, t(31)).rollout.phase, Phase::Running);
    let late = advance(&r, &p, &v, t(60));
    assert_eq!(late.rollout.phase, Phase::Halted);
    assert!(
        late.rollout
            .reason
            .unwrap()
            .contains("client2 did not report the release within wave_timeout (1h)")
    );
}

#[test]
fn a_wave_whose_hosts_are_all_absent_proves_nothing_and_halts_at_its_timeout() {
    let p = policy(&["canary", "100%"]);
    let r = started(&p, &["client1", "client2"], t(0));
    // The canary is a laptop that is off: nothing has tried the release.
    let v = views(&[
        ("client1", heartbeat(t(0) - MIN * 120)),
        ("client2", heartbeat(t(1))),
    ]);
    let s = advance(&r, &p, &v, t(30));
    assert!(s.actions.is_empty(), "not healthy: nobody tried it");
    assert_eq!(s.rollout.phase, Phase::Running);
    let s = advance(&r, &p, &v, t(60));
    assert_eq!(s.rollout.phase, Phase::Halted);
    assert!(
        s.rollout
            .reason
            .clone()
            .unwrap()
            .contains("all 1 absent, nothing has tried it"),
        "{:?}",
        s.rollout.reason
    );
    // An admin who resumes lets it go on without the canary.
    let resumed = command(&s.rollout, Command::Resume, &v, t(61), "erin").unwrap();
    assert_eq!(
        releases(&advance(&resumed.rollout, &p, &v, t(62))),
        vec!["release client2"]
    );
}

#[test]
fn a_paused_host_or_one_moved_on_by_a_newer_publish_is_absent() {
    let target = Target {
        release: "new".into(),
        seq: 2,
        previous: None,
    };
    let paused = HostView {
        paused: true,
        ..heartbeat(t(5))
    };
    assert_eq!(
        judge(&target, &paused, t(0), t(6)),
        Verdict::Absent("paused".into())
    );
    let newer = HostView {
        published_seq: Some(3),
        ..heartbeat(t(5))
    };
    assert_eq!(
        judge(&target, &newer, t(0), t(6)),
        Verdict::Absent("moved on by a newer publish".into())
    );
    let rebooting = HostView {
        attempted: Some("new".into()),
        applied: Some("new".into()),
        result: Some(PullResult::Ok),
        awaiting_reboot: true,
        ..heartbeat(t(5))
    };
    assert_eq!(
        judge(&target, &rebooting, t(0), t(6)),
        Verdict::Waiting("applied, waiting for its reboot".into())
    );
}

#[test]
fn on_failure_revert_reverts_every_host_that_took_the_release() {
    let mut p = policy(&["canary", "50%", "100%"]);
    p.on_failure = OnFailure::Revert;
    p.max_failures = FailureLimit::Count(0);
    let hosts = ["client1", "client2", "client3", "client4"];
    let r = started(&p, &hosts, t(0));
    let v = views(&[("client1", applied("client1", t(1)))]);
    let r = advance(&r, &p, &v, t(2)).rollout;
    assert_eq!(r.wave, 1);
    let v = views(&[
        ("client1", applied("client1", t(1))),
        ("client2", rolled_back("client2", t(3))),
    ]);
    let s = advance(&r, &p, &v, t(4));
    assert_eq!(s.rollout.phase, Phase::Reverted);
    assert_eq!(releases(&s), vec!["revert client1", "revert client2"]);
    assert!(s.rollout.phase.is_alarming());
}

#[test]
fn pause_resume_cancel_and_revert_by_hand() {
    let p = policy(&["canary", "100%"]);
    let r = started(&p, &["client1", "client2"], t(0));
    let none = BTreeMap::new();
    let paused = command(&r, Command::Pause, &none, t(1), "alice").unwrap();
    assert_eq!(paused.rollout.phase, Phase::Paused);
    assert_eq!(paused.rollout.reason.as_deref(), Some("paused by alice"));
    // A paused rollout starts no wave, whatever the reports say.
    let v = views(&[("client1", applied("client1", t(1)))]);
    assert!(advance(&paused.rollout, &p, &v, t(2)).actions.is_empty());
    assert!(command(&paused.rollout, Command::Pause, &none, t(2), "alice").is_err());
    let resumed = command(&paused.rollout, Command::Resume, &v, t(2), "alice").unwrap();
    assert_eq!(resumed.rollout.phase, Phase::Running);
    assert_eq!(
        releases(&advance(&resumed.rollout, &p, &v, t(3))),
        vec!["release client2"]
    );
    // Resuming a halted rollout accepts the failures so far.
    let bad = views(&[("client1", rolled_back("client1", t(1)))]);
    let halted = advance(&r, &p, &bad, t(2)).rollout;
    assert_eq!(halted.phase, Phase::Halted);
    let resumed = command(&halted, Command::Resume, &bad, t(3), "bob").unwrap();
    assert_eq!(resumed.rollout.waves[0].accepted, [h("client1")].into());
    assert_eq!(
        releases(&advance(&resumed.rollout, &p, &bad, t(4))),
        vec!["release client2"]
    );
    let cancelled = command(&r, Command::Cancel, &none, t(1), "carol").unwrap();
    assert_eq!(cancelled.rollout.phase, Phase::Cancelled);
    assert!(command(&cancelled.rollout, Command::Resume, &none, t(2), "carol").is_err());
    let reverted = command(&r, Command::Revert, &none, t(1), "dave").unwrap();
    assert_eq!(releases(&reverted), vec!["revert client1"]);
    assert_eq!(reverted.rollout.phase, Phase::Reverted);
    // Reverted stays an alarm until an admin acknowledges it with cancel.
    let acknowledged = command(&reverted.rollout, Command::Cancel, &none, t(2), "dave").unwrap();
    assert_eq!(acknowledged.rollout.phase, Phase::Cancelled);
    assert!(!acknowledged.rollout.phase.is_alarming());
}

#[test]
fn status_says_a_host_is_held_back_until_its_wave() {
    let p = policy(&["canary", "50%", "100%"]);
    let r = started(&p, &["client1", "client2", "client3", "client4"], t(0));
    assert_eq!(held_back(&r, &h("client1")), None, "its wave started");
    assert_eq!(
        held_back(&r, &h("client4")).as_deref(),
        Some("held back by rollout (wave 3 of 3, running): release #2 waits for it")
    );
    let record = toml::to_string(&r).unwrap();
    assert_eq!(toml::from_str::<Rollout>(&record).unwrap(), r);
}

fn groups(limit: u32) -> BTreeMap<GroupName, GroupSettings> {
    [(
        "laptops".parse().unwrap(),
        GroupSettings {
            max_rebooting: Some(limit),
            reboot_slot_timeout: Interval::secs(1800),
        },
    )]
    .into()
}

fn laptops(n: usize) -> BTreeMap<HostName, BTreeSet<GroupName>> {
    (1..=n)
        .map(|i| {
            (
                h(&format!("client{i}")),
                ["laptops".parse().unwrap()].into(),
            )
        })
        .collect()
}

fn wants(at: SystemTime) -> SlotView {
    SlotView {
        report_at: Some(at),
        wants: true,
        owes: true,
    }
}

#[test]
fn slots_are_granted_up_to_the_limit_given_back_and_reclaimed() {
    let (g, tags) = (groups(1), laptops(4));
    let all_want: BTreeMap<HostName, SlotView> = (1..=4)
        .map(|i| (h(&format!("client{i}")), wants(t(0))))
        .collect();
    let s = assign(&g, &tags, &Slots::default(), &all_want, t(1));
    assert_eq!(s.granted, vec![h("client1")], "one at a time, by name");
    // Still rebooting (no report since the grant): nobody else.
    let s2 = assign(&g, &tags, &s.slots, &all_want, t(2));
    assert!(s2.granted.is_empty() && s2.released.is_empty());
    // client1 reported after its reboot, owing nothing: its slot goes to client2.
    let mut back = all_want.clone();
    back.insert(
        h("client1"),
        SlotView {
            report_at: Some(t(3)),
            wants: false,
            owes: false,
        },
    );
    let s3 = assign(&g, &tags, &s2.slots, &back, t(4));
    assert_eq!(
        (s3.released.clone(), s3.granted.clone()),
        (vec![h("client1")], vec![h("client2")])
    );
    // A report after the grant that still owes the reboot (it reported before rebooting) keeps it.
    let mut before = back.clone();
    before.insert(h("client2"), wants(t(5)));
    let s4 = assign(&g, &tags, &s3.slots, &before, t(6));
    assert!(s4.released.is_empty() && s4.granted.is_empty());
    // Not back within reboot_slot_timeout: taken back, and another host gets it.
    let s5 = assign(&g, &tags, &s4.slots, &before, t(4 + 30));
    assert_eq!(s5.reclaimed, vec![h("client2")]);
    assert_eq!(s5.granted, vec![h("client3")]);
}

#[test]
fn a_host_needs_room_in_every_limited_group_it_belongs_to() {
    let mut g = groups(2);
    g.insert(
        "rack-a".parse().unwrap(),
        GroupSettings {
            max_rebooting: Some(1),
            reboot_slot_timeout: Interval::secs(1800),
        },
    );
    let mut tags = laptops(3);
    for host in ["client1", "client2"] {
        tags.get_mut(&h(host))
            .unwrap()
            .insert("rack-a".parse().unwrap());
    }
    let want: BTreeMap<HostName, SlotView> = (1..=3)
        .map(|i| (h(&format!("client{i}")), wants(t(0))))
        .collect();
    let s = assign(&g, &tags, &Slots::default(), &want, t(1));
    assert_eq!(s.granted, vec![h("client1"), h("client3")]);
    // A host in no limited group never takes a slot.
    let s = assign(&BTreeMap::new(), &tags, &Slots::default(), &want, t(1));
    assert!(s.granted.is_empty());
    let held = Slots {
        held: [(
            h("client9"),
            Held {
                granted: Stamp(t(0)),
                trigger: None,
            },
        )]
        .into(),
    };
    let s = assign(&g, &tags, &held, &BTreeMap::new(), t(1));
    assert_eq!(
        s.reclaimed,
        vec![h("client9")],
        "a host no group limits any more"
    );
}

#[test]
fn wave_specs_in_a_plan_follow_tags_then_names() {
    let p = policy(&["canary", "2", "100%"]);
    let r = rollout(&p, &["client1", "client2", "client3", "client4"]);
    let waves: Vec<Vec<&str>> = r
        .waves
        .iter()
        .map(|w| w.hosts.iter().map(HostName::as_str).collect())
        .collect();
    assert_eq!(
        waves,
        vec![vec!["client1"], vec!["client2", "client3"], vec!["client4"]]
    );
    assert!(matches!(p.waves[1], WaveSpec::Count(2)));
}
