//! Prebuilt releases without Nix: what `check` demands, a failing build, and `status` telling a drifted host.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use sha2::{Digest, Sha256};

use crate::TestFleet;

const TOPLEVEL: &str = "/nix/store/hkrmp39wm59gr305lrkzhw1yzgj6m9lq-nixos-system-alpha";

fn build_on_server(fleet: &TestFleet, host: &str) {
    let path = format!("hosts/{host}/host.toml");
    let text = fs::read_to_string(fleet.root().join(&path)).unwrap();
    assert!(text.contains("[apply]\n"), "{text}");
    fleet.write(
        &path,
        &text.replacen("[apply]\n", "[apply]\nbuild = \"server\"\n", 1),
    );
}

fn set_server(fleet: &TestFleet, lines: &str) {
    let text = fs::read_to_string(fleet.root().join("fleet.toml")).unwrap();
    fleet.write(
        "fleet.toml",
        &text.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1),
    );
}

#[test]
fn check_demands_a_private_signing_key_for_server_builds() {
    let fleet = TestFleet::with_hosts(&["alpha", "bravo"]);
    build_on_server(&fleet, "alpha");
    let (code, out) = fleet.output(&["check"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("server.signing_key is unset"), "{out}");
    assert!(out.contains("host alpha"), "{out}");
    assert!(out.contains("nix key generate-secret"), "{out}");

    let key = fleet.tmp.path().join("signing-key");
    fs::write(&key, "fleet-1:secret\n").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    set_server(
        &fleet,
        &format!("signing_key = {:?}", key.display().to_string()),
    );
    let (code, out) = fleet.output(&["check"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("mode 0644 lets others read"), "{out}");

    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out) = fleet.output(&["check"]);
    assert!(!out.contains("signing_key"), "{out}");
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_failing_build_keeps_that_hosts_release_and_publishes_the_others() {
    let fleet = TestFleet::with_hosts(&["alpha", "bravo"]);
    fleet.tiffin(&["publish"]).assert().success();
    let (alpha, bravo) = (fleet.current("alpha"), fleet.current("bravo"));
    build_on_server(&fleet, "alpha");
    let key = fleet.tmp.path().join("signing-key");
    fs::write(&key, "fleet-1:secret\n").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    set_server(
        &fleet,
        &format!(
            "signing_key = {:?}\nbuild = [\"sh\", \"-c\", \"echo evaluating {{host}} >&2; echo 'error: attribute missing' >&2; exit 1\", \"{{config}}\"]",
            key.display().to_string()
        ),
    );
    fleet.write("hosts/bravo/configuration.nix", "{...}: { }\n");
    let (code, out) = fleet.output(&["publish"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("host alpha: building its system failed"),
        "{out}"
    );
    assert!(out.contains("error: attribute missing"), "{out}");
    assert!(out.contains("previous release stays current"), "{out}");
    assert_eq!(fleet.current("alpha"), alpha);
    assert_ne!(fleet.current("bravo"), bravo, "bravo still publishes");
}

/// A release with a toplevel, written as publish would (no Nix needed to read it).
pub(crate) fn prebuilt_release(fleet: &TestFleet, host: &str) -> String {
    let manifest = format!(
        "# tiffin release manifest; the release id is the sha256 of this file.\nhost = \"{host}\"\nseq = 1\ncreated = \"2026-11-24T12:00:00Z\"\ntoplevel = \"/nix/store/hkrmp39wm59gr305lrkzhw1yzgj6m9lq-nixos-system-{host}\"\n\n[apply]\nbuild = \"server\"\n"
    );
    let id = hex::encode(Sha256::digest(manifest.as_bytes()));
    let dir = fleet.chroots().join(host).join("releases").join(&id);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("MANIFEST"), &manifest).unwrap();
    fs::write(
        fleet.chroots().join(host).join("CURRENT"),
        format!("{id}\n"),
    )
    .unwrap();
    id
}

fn report(fleet: &TestFleet, host: &str, id: &str, system: &str) {
    let dir = fleet.chroots().join(host).join("reports");
    fs::create_dir_all(&dir).unwrap();
    let body = format!(
        "host = \"{host}\"\nrelease = \"{id}\"\nseq = 1\nresult = \"ok\"\nlast_seen = \"2026-11-24T11:59:00Z\"\nsystem = \"{system}\"\nversion = \"0.1.0\"\n"
    );
    fs::write(dir.join("status.toml"), body).unwrap();
    let at = humantime::parse_rfc3339("2026-11-24T11:59:00Z").unwrap();
    fs::File::options()
        .write(true)
        .open(dir.join("status.toml"))
        .unwrap()
        .set_modified(at)
        .unwrap();
}

#[test]
fn status_shows_a_prebuilt_host_running_another_system_as_drifted() {
    let fleet = TestFleet::with_hosts(&["alpha"]);
    let id = prebuilt_release(&fleet, "alpha");
    report(&fleet, "alpha", &id, TOPLEVEL);
    let (code, out) = fleet.output(&["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"up-to-date\""), "{out}");
    assert!(
        out.contains(TOPLEVEL),
        "the published toplevel is in the JSON: {out}"
    );

    report(
        &fleet,
        "alpha",
        &id,
        "/nix/store/00000000000000000000000000000000-nixos-system-alpha",
    );
    let (code, out) = fleet.output(&["status"]);
    assert_eq!(code, 3, "drifted counts as an alarm: {out}");
    assert!(out.contains("drifted"), "{out}");
}
