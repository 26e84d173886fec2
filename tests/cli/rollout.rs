//! `publish` with `[rollout]` and `tiffin rollout`: waves released by the reports alone, a halt, a revert, status and metrics.

use std::fs;
use std::time::Duration;

use crate::status::report_received_at;
use crate::{NOW, TestFleet};

/// alpha (tagged canary), bravo, charlie; waves canary then the rest.
fn fleet(policy: &str) -> TestFleet {
    let fleet = TestFleet::with_hosts(&["alpha", "bravo", "charlie"]);
    let host_toml = fleet.root().join("hosts/alpha/host.toml");
    let text = fs::read_to_string(&host_toml).unwrap();
    fs::write(&host_toml, format!("tags = [\"canary\"]\n{text}")).unwrap();
    let fleet_toml = fleet.root().join("fleet.toml");
    let text = fs::read_to_string(&fleet_toml).unwrap();
    fs::write(&fleet_toml, format!("{text}\n[rollout]\n{policy}")).unwrap();
    fleet
}

fn at(secs: u64) -> std::time::SystemTime {
    humantime::parse_rfc3339(NOW).unwrap() + Duration::from_secs(secs)
}

fn time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(at(secs)).to_string()
}

/// The host reports `result` for the release its CURRENT names, received at NOW + `secs`.
fn reports(fleet: &TestFleet, host: &str, result: &str, secs: u64) {
    let id = fleet.current(host).lines().next().unwrap().to_owned();
    let (applied, extra) = match result {
        "ok" => (id.clone(), String::new()),
        _ => (
            "1".repeat(64),
            format!("quarantined = \"{id}\"\nerror = \"the health check failed\"\n"),
        ),
    };
    let body = format!(
        "host = \"{host}\"\nrelease = \"{id}\"\nseq = 1\nresult = \"{result}\"\napplied = \"{applied}\"\nlast_seen = \"{}\"\nversion = \"0.3.0\"\n{extra}",
        time(secs)
    );
    report_received_at(fleet, host, &body, at(secs));
}

fn has_current(fleet: &TestFleet, host: &str) -> bool {
    fleet.chroots().join(host).join("CURRENT").exists()
}

/// Release ids (12 hex digits shown) replaced, for the snapshots.
macro_rules! snapshot {
    ($name:expr, $text:expr) => {
        insta::with_settings!({filters => vec![(r"\b[0-9a-f]{12}\b", "[ID]"), (r"\b[0-9]{10}-[0-9]+\b", "[TRIGGER]")]}, {
            insta::assert_snapshot!($name, $text);
        })
    };
}

#[test]
fn waves_go_out_on_the_reports_alone_and_a_stale_report_does_not_count() {
    let fleet = fleet("waves = [\"canary\", \"100%\"]\n");
    let (code, out) = fleet.output(&["publish"]);
    assert_eq!(code, 0, "{out}");
    snapshot!("rollout_publish", out);
    assert!(has_current(&fleet, "alpha"));
    assert!(!has_current(&fleet, "bravo") && !has_current(&fleet, "charlie"));
    let (code, out) = fleet.output(&["status", "bravo"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("held back by rollout (wave 2 of 2, running): release #1 waits for it"),
        "{out}"
    );
    // A report received before the wave started (same second, earlier) does not count.
    let mut early = fleet.tiffin(&["rollout", "step"]);
    reports(&fleet, "alpha", "ok", 0);
    let later = at(0) - Duration::from_millis(500);
    let report = fleet.chroots().join("alpha/reports/status.toml");
    fs::File::options()
        .write(true)
        .open(&report)
        .unwrap()
        .set_modified(later)
        .unwrap();
    early.env("TIFFIN_NOW", time(60)).assert().success();
    assert!(
        !has_current(&fleet, "bravo"),
        "the canary has not reported since its wave"
    );
    reports(&fleet, "alpha", "ok", 30);
    let out = fleet
        .tiffin(&["rollout", "step"])
        .env("TIFFIN_NOW", time(60))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    snapshot!("rollout_step", out);
    let current = fs::read_to_string(fleet.chroots().join("bravo/CURRENT")).unwrap();
    assert!(
        current.lines().nth(1).unwrap().ends_with(" pull"),
        "triggered: {current}"
    );
    for host in ["bravo", "charlie"] {
        reports(&fleet, host, "ok", 90);
    }
    let step = fleet
        .tiffin(&["rollout", "step"])
        .env("TIFFIN_NOW", time(120))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&step.stdout)
            .contains("rollout: rollout done: all 2 wave(s) went out")
    );
    let (code, out) = fleet.output(&["rollout", "status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": done, wave 2 of 2"), "{out}");
}

#[test]
fn a_failed_canary_halts_the_rollout_and_status_says_why() {
    let fleet = fleet("waves = [\"canary\", \"100%\"]\n");
    fleet.tiffin(&["publish"]).assert().success();
    reports(&fleet, "alpha", "rolled-back", 30);
    let step = fleet
        .tiffin(&["rollout", "step"])
        .env("TIFFIN_NOW", time(60))
        .output()
        .unwrap();
    assert!(step.status.success());
    assert!(!has_current(&fleet, "bravo") && !has_current(&fleet, "charlie"));
    let out = fleet
        .tiffin(&["status"])
        .env("TIFFIN_NOW", time(60))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    snapshot!("rollout_halted_status", text);
    // A new publish would carry the bad release past the halt: refused until an admin decides.
    fleet.write("hosts/bravo/configuration.nix", "{...}: { }\n");
    let (code, out) = fleet.output(&["publish"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("nothing published: the last rollout is halted"),
        "{out}"
    );
    let prom = fleet
        .tiffin(&["status", "--format", "prometheus"])
        .env("TIFFIN_NOW", time(60))
        .output()
        .unwrap();
    let prom = String::from_utf8_lossy(&prom.stdout).into_owned();
    assert!(
        prom.contains("tiffin_rollout_phase{phase=\"halted\"} 1\n"),
        "{prom}"
    );
    assert!(
        prom.contains("tiffin_rollout_hosts{kind=\"failed\"} 1\n"),
        "{prom}"
    );
    assert!(
        prom.contains("tiffin_rollout_hosts{kind=\"held\"} 2\n"),
        "{prom}"
    );
    fleet.tiffin(&["rollout", "cancel"]).assert().success();
    let (code, out) = fleet.output(&["publish"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn revert_moves_the_hosts_that_took_the_release_back_as_a_higher_seq() {
    let fleet = fleet("waves = [\"canary\", \"100%\"]\non_failure = \"revert\"\n");
    fleet
        .tiffin(&["publish", "--all-at-once"])
        .assert()
        .success();
    let first = fleet.current("alpha");
    let first_files: Vec<String> = fs::read_to_string(
        fleet
            .chroots()
            .join("alpha/releases")
            .join(&first)
            .join("MANIFEST"),
    )
    .unwrap()
    .lines()
    .filter(|l| l.starts_with("sha256"))
    .map(str::to_owned)
    .collect();
    fleet.write(
        "hosts/alpha/configuration.nix",
        "{...}: { networking.hostName = \"alpha\"; services.broken = true; }\n",
    );
    fleet.write(
        "hosts/bravo/configuration.nix",
        "{...}: { networking.hostName = \"bravo\"; services.broken = true; }\n",
    );
    fleet.tiffin(&["publish"]).assert().success();
    let bad = fleet.current("alpha");
    assert_ne!(bad, first);
    assert!(!fleet.current("bravo").is_empty());
    reports(&fleet, "alpha", "rolled-back", 30);
    let out = fleet
        .tiffin(&["rollout", "step"])
        .env("TIFFIN_NOW", time(60))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("rollout: alpha: reverted: release #3 "),
        "{text}"
    );
    let reverted = fleet.current("alpha");
    let manifest = fs::read_to_string(
        fleet
            .chroots()
            .join("alpha/releases")
            .join(reverted.lines().next().unwrap())
            .join("MANIFEST"),
    )
    .unwrap();
    assert!(manifest.contains("\nseq = 3\n"), "{manifest}");
    let files: Vec<String> = manifest
        .lines()
        .filter(|l| l.starts_with("sha256"))
        .map(str::to_owned)
        .collect();
    assert_eq!(files, first_files, "the previous release's files");
    let (code, out) = fleet.output(&["rollout", "status"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("reverted, wave 1 of 2"), "{out}");
}

#[test]
fn rollout_status_shows_the_reboot_slots_also_without_a_rollout() {
    let fleet = TestFleet::with_hosts(&["alpha", "bravo"]);
    for host in ["alpha", "bravo"] {
        let host_toml = fleet.root().join(format!("hosts/{host}/host.toml"));
        let text = fs::read_to_string(&host_toml).unwrap();
        fs::write(&host_toml, format!("tags = [\"office\"]\n{text}")).unwrap();
    }
    let fleet_toml = fleet.root().join("fleet.toml");
    let text = fs::read_to_string(&fleet_toml).unwrap();
    fs::write(
        &fleet_toml,
        format!("{text}\n[groups.office]\nmax_rebooting = 1\n"),
    )
    .unwrap();
    fleet.tiffin(&["publish"]).assert().success();
    for host in ["alpha", "bravo"] {
        let id = fleet.current(host).lines().next().unwrap().to_owned();
        let body = format!(
            "host = \"{host}\"\nrelease = \"{id}\"\nseq = 1\nresult = \"ok\"\napplied = \"{id}\"\nlast_seen = \"{}\"\nversion = \"0.3.0\"\nreboot = \"pending\"\nreboot_slot = \"wanted\"\n",
            time(10)
        );
        report_received_at(&fleet, host, &body, at(10));
    }
    let step = fleet
        .tiffin(&["rollout", "step"])
        .env("TIFFIN_NOW", time(20))
        .output()
        .unwrap();
    let step = String::from_utf8_lossy(&step.stdout).into_owned();
    assert_eq!(
        step, "rollout: alpha: reboot slot granted\n",
        "one slot: {step}"
    );
    let (code, out) = fleet.output(&["rollout", "status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("no rollout yet"), "{out}");
    assert_eq!(out.matches("reboot slot: ").count(), 1, "{out}");
    assert!(out.contains("reboot slot: alpha since "), "{out}");
}

#[test]
fn an_unreadable_rollout_record_is_an_alarm_but_status_still_shows_the_hosts() {
    let fleet = fleet("waves = [\"canary\", \"100%\"]\n");
    fleet.tiffin(&["publish"]).assert().success();
    let record = fleet.state_dir().join("rollout.toml");
    fs::write(&record, "garbage = [\n").unwrap();
    let (code, out) = fleet.output(&["status"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("alpha ") && out.contains("charlie "), "{out}");
    assert!(
        out.contains(
            "error: the rollout's record cannot be read: [TMP]/state/rollout.toml: line 1"
        ),
        "{out}"
    );
    let (code, out) = fleet.output(&["rollout", "step"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("The record is left as it is"), "{out}");
    assert_eq!(
        fs::read_to_string(&record).unwrap(),
        "garbage = [\n",
        "left as it was"
    );
}
