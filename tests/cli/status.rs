//! `status`: the state of every host from the reports in the chroots, for people and for scripts.

use std::fs;

use crate::TestFleet;

const HOSTS: [&str; 6] = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];

/// Writes a client's report as the server would receive it at the `last_seen` it names
/// (status judges by the file's mtime, the server's own clock).
pub(crate) fn report(fleet: &TestFleet, host: &str, body: &str) {
    let received = body
        .lines()
        .find_map(|l| l.strip_prefix("last_seen = \""))
        .and_then(|t| humantime::parse_rfc3339(t.trim_end_matches('"')).ok())
        .expect("a report with last_seen");
    report_received_at(fleet, host, body, received);
}

pub(crate) fn report_received_at(
    fleet: &TestFleet,
    host: &str,
    body: &str,
    at: std::time::SystemTime,
) {
    let dir = fleet.chroots().join(host).join("reports");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("status.toml"), body).unwrap();
    fs::File::options()
        .write(true)
        .open(dir.join("status.toml"))
        .unwrap()
        .set_modified(at)
        .unwrap();
}

/// A fleet with one host in each state.
fn fleet_in_every_state() -> TestFleet {
    let fleet = TestFleet::with_hosts(&HOSTS);
    fleet.tiffin(&["publish"]).assert().success();
    let old = "1".repeat(64);
    let cur = |h: &str| fleet.current(h);
    report(
        &fleet,
        "alpha",
        &format!(
            "host = \"alpha\"\nrelease = \"{}\"\nseq = 1\nresult = \"ok\"\nlast_seen = \"2026-11-24T11:58:00Z\"\nversion = \"0.1.0\"\n",
            cur("alpha")
        ),
    );
    report(
        &fleet,
        "bravo",
        &format!(
            "host = \"bravo\"\nrelease = \"{old}\"\nseq = 7\nresult = \"unchanged\"\nlast_seen = \"2026-11-24T11:59:30Z\"\nversion = \"0.1.0\"\n"
        ),
    );
    report(
        &fleet,
        "charlie",
        &format!(
            "host = \"charlie\"\nrelease = \"{}\"\nseq = 1\nresult = \"failed\"\napplied = \"{old}\"\nlast_seen = \"2026-11-24T11:50:00Z\"\nerror = \"nixos-rebuild exited with status 1: error: attribute 'foo' missing\"\nversion = \"0.1.0\"\n",
            cur("charlie")
        ),
    );
    report(
        &fleet,
        "delta",
        &format!(
            "host = \"delta\"\nrelease = \"{}\"\nseq = 1\nresult = \"rolled-back\"\napplied = \"{old}\"\nlast_seen = \"2026-11-24T11:40:00Z\"\nversion = \"0.1.0\"\n",
            cur("delta")
        ),
    );
    report(
        &fleet,
        "echo",
        &format!(
            "host = \"echo\"\nrelease = \"{}\"\nseq = 1\nresult = \"ok\"\nlast_seen = \"2026-11-24T09:00:00Z\"\nversion = \"0.1.0\"\n",
            cur("echo")
        ),
    );
    fleet
}

#[test]
fn status_table_in_every_state() {
    let fleet = fleet_in_every_state();
    let (code, out) = fleet.output(&["status"]);
    assert_eq!(
        code, 3,
        "failed, rolled-back and stale hosts make status exit 3"
    );
    crate::assert_snapshot_ids!("status_table", out);
    for (host, state) in HOSTS.iter().zip([
        "up-to-date",
        "pending",
        "failed",
        "rolled-back",
        "stale",
        "never-seen",
    ]) {
        let line = out.lines().find(|l| l.starts_with(host)).unwrap();
        assert!(line.contains(state), "{line}");
    }
}

#[test]
fn status_json_in_every_state() {
    let fleet = fleet_in_every_state();
    let (code, out) = fleet.output(&["status", "--json"]);
    assert_eq!(code, 3);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let states: Vec<&str> = doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "up-to-date",
            "pending",
            "failed",
            "rolled-back",
            "stale",
            "never-seen"
        ]
    );
    crate::assert_snapshot_ids!("status_json", out);
}

#[test]
fn status_exits_0_when_all_is_well_and_can_select_hosts() {
    let fleet = fleet_in_every_state();
    let (code, out) = fleet.output(&["status", "alpha", "bravo", "foxtrot"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 4);
}

#[test]
fn the_chroot_decides_who_reported() {
    let fleet = fleet_in_every_state();
    // A report in foxtrot's chroot that claims to be alpha counts for foxtrot, and is not trusted.
    report(
        &fleet,
        "foxtrot",
        &format!(
            "host = \"alpha\"\nrelease = \"{}\"\nresult = \"ok\"\nlast_seen = \"2026-11-24T11:59:00Z\"\n",
            fleet.current("foxtrot")
        ),
    );
    let (_, out) = fleet.output(&["status", "--json", "alpha", "foxtrot"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["hosts"][1]["host"], "foxtrot");
    assert_eq!(doc["hosts"][1]["state"], "unreadable");
    assert!(
        doc["hosts"][1]["error"]
            .as_str()
            .unwrap()
            .contains("claims host \"alpha\"")
    );
    assert_eq!(
        doc["hosts"][0]["last_seen"], "2026-11-24T11:58:00Z",
        "alpha's own report is untouched"
    );
}

#[test]
fn a_garbled_report_is_shown_not_fatal() {
    let fleet = fleet_in_every_state();
    report_received_at(
        &fleet,
        "alpha",
        "this is not toml",
        std::time::SystemTime::now(),
    );
    let (code, out) = fleet.output(&["status", "alpha"]);
    assert!(
        out.contains("unreadable") && out.contains("reports/status.toml unreadable"),
        "{out}"
    );
    assert_eq!(code, 3, "an unreadable report is not 'all is well'");
}

#[test]
fn an_unreadable_current_is_its_own_state() {
    let fleet = fleet_in_every_state();
    fs::write(fleet.chroots().join("alpha/CURRENT"), "not an id\n").unwrap();
    let (code, out) = fleet.output(&["status", "alpha"]);
    assert_eq!(code, 3, "{out}");
    // One host alone is its story: the state on the first line, the error on its own.
    assert!(
        out.starts_with("alpha: unreadable\n") && out.contains("CURRENT unreadable"),
        "{out}"
    );
}

#[test]
fn a_report_from_the_future_still_goes_stale() {
    let fleet = fleet_in_every_state();
    // The client's clock is a year ahead, but the server received the report four hours ago.
    report_received_at(
        &fleet,
        "alpha",
        &format!(
            "host = \"alpha\"\nrelease = \"{}\"\nseq = 1\nresult = \"ok\"\nlast_seen = \"2027-11-24T12:00:00Z\"\n",
            fleet.current("alpha")
        ),
        humantime::parse_rfc3339("2026-11-24T08:00:00Z").unwrap(),
    );
    let (code, out) = fleet.output(&["status", "--json", "alpha"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let alpha = &doc["hosts"][0];
    assert_eq!(alpha["state"], "stale", "{alpha}");
    assert_eq!(
        alpha["last_seen"], "2026-11-24T08:00:00Z",
        "the server's clock"
    );
    assert!(
        alpha["warning"]
            .as_str()
            .unwrap()
            .contains("ahead of the server's"),
        "{alpha}"
    );
    assert_eq!(code, 3);
}

#[test]
fn more_than_a_report_in_reports_is_a_warning() {
    let fleet = fleet_in_every_state();
    fs::write(
        fleet.chroots().join("alpha/reports/filler"),
        vec![0u8; 4096],
    )
    .unwrap();
    let (code, out) = fleet.output(&["status", "alpha"]);
    assert_eq!(code, 0, "a warning, not an alarm: {out}");
    assert!(
        out.starts_with("alpha: up-to-date\n")
            && out.contains("reports/ holds 1 other entr(ies), 4096 bytes"),
        "{out}"
    );
}

#[test]
fn a_report_that_is_a_symlink_or_huge_is_refused_not_followed() {
    let fleet = fleet_in_every_state();
    // The client owns reports/: it could point its report at another host's, or at /dev/zero.
    let alpha_report = fleet.chroots().join("alpha/reports/status.toml");
    let foxtrot_reports = fleet.chroots().join("foxtrot/reports");
    fs::create_dir_all(&foxtrot_reports).unwrap();
    std::os::unix::fs::symlink(&alpha_report, foxtrot_reports.join("status.toml")).unwrap();
    std::os::unix::fs::symlink(
        "/dev/zero",
        fleet.chroots().join("bravo/reports/status.toml.tmp"),
    )
    .unwrap();
    fs::rename(
        fleet.chroots().join("bravo/reports/status.toml.tmp"),
        fleet.chroots().join("bravo/reports/status.toml"),
    )
    .unwrap();
    fs::write(
        fleet.chroots().join("charlie/reports/status.toml"),
        "x".repeat(100_000),
    )
    .unwrap();
    let (_, out) = fleet.output(&["status", "--json", "bravo", "charlie", "foxtrot"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    for (i, why) in [(0, "symlink"), (1, "more than"), (2, "symlink")] {
        let host = &doc["hosts"][i];
        assert_eq!(host["state"], "unreadable", "{host}");
        assert!(host["error"].as_str().unwrap().contains(why), "{host}");
    }
}
