//! `trigger`: a second line in CURRENT, kept by publish, shown pending by status until reported.

use std::fs;

use crate::TestFleet;

fn current_text(fleet: &TestFleet, host: &str) -> String {
    fs::read_to_string(fleet.chroots().join(host).join("CURRENT")).unwrap()
}

fn report(fleet: &TestFleet, host: &str, release: &str, trigger: Option<&str>) {
    let dir = fleet.chroots().join(host).join("reports");
    fs::create_dir_all(&dir).unwrap();
    let trigger = trigger.map_or(String::new(), |t| format!("trigger = \"{t}\"\n"));
    fs::write(
        dir.join("status.toml"),
        format!("host = \"{host}\"\nrelease = \"{release}\"\nseq = 1\nresult = \"ok\"\nlast_seen = \"2026-11-24T11:59:00Z\"\nversion = \"0.1.0\"\n{trigger}"),
    )
    .unwrap();
}

#[test]
fn help_teaches() {
    let fleet = TestFleet::with_hosts(&["alpha"]);
    let (code, out) = fleet.output(&["trigger", "--help"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!("trigger_help", out);
}

#[test]
fn a_host_or_all_is_required_and_nothing_published_is_named() {
    let fleet = TestFleet::with_hosts(&["alpha", "bravo"]);
    let (code, out) = fleet.output(&["trigger"]);
    assert_eq!(code, 2, "{out}");
    let (code, out) = fleet.output(&["trigger", "alpha"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("host alpha: nothing is published yet"),
        "{out}"
    );
    assert!(out.contains("run `tiffin publish alpha` first"), "{out}");
}

#[test]
fn a_trigger_is_kept_by_publish_and_pending_until_reported() {
    let fleet = TestFleet::with_hosts(&["alpha", "bravo"]);
    fleet.tiffin(&["publish"]).assert().success();
    let first = current_text(&fleet, "alpha");
    let (code, out) = fleet.output(&["trigger", "alpha", "--reapply"]);
    assert_eq!(code, 0, "{out}");
    // TIFFIN_NOW is 2026-11-24T12:00:00Z.
    assert_eq!(out, "alpha: trigger 1795521600-1 (reapply) written\n");
    assert_eq!(
        current_text(&fleet, "alpha"),
        format!("{first}trigger 1795521600-1 reapply\n")
    );
    assert_eq!(
        current_text(&fleet, "bravo").lines().count(),
        1,
        "only alpha"
    );

    let release = fleet.current("alpha").lines().next().unwrap().to_owned();
    report(&fleet, "alpha", &release, None);
    let (_, table) = fleet.output(&["status", "alpha"]);
    assert!(table.contains("trigger 1795521600-1 pending"), "{table}");
    let (_, json) = fleet.output(&["status", "alpha", "--json"]);
    assert!(
        json.contains("\"trigger_pending\": \"1795521600-1\""),
        "{json}"
    );

    // A new release replaces line 1 and keeps the trigger.
    fleet.write(
        "hosts/alpha/configuration.nix",
        "{...}: { networking.hostName = \"alpha\"; }\n",
    );
    fleet.tiffin(&["publish", "alpha"]).assert().success();
    let text = current_text(&fleet, "alpha");
    assert_ne!(text.lines().next(), Some(release.as_str()));
    assert_eq!(text.lines().nth(1), Some("trigger 1795521600-1 reapply"));

    let (code, out) = fleet.output(&["trigger", "--all"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("alpha: trigger 1795521600-2 (pull) written"),
        "{out}"
    );
    assert!(
        out.contains("bravo: trigger 1795521600-1 (pull) written"),
        "{out}"
    );

    let release = current_text(&fleet, "alpha")
        .lines()
        .next()
        .unwrap()
        .to_owned();
    report(&fleet, "alpha", &release, Some("1795521600-2"));
    let (_, table) = fleet.output(&["status", "alpha"]);
    assert!(!table.contains("pending"), "{table}");
    assert!(table.contains("up-to-date"), "{table}");
}
