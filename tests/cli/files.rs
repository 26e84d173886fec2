//! `files/` with settings and `common/files/`: what `check` refuses and what the MANIFEST says.

use std::fs;

use tiffin::core::release::{FileSource, Manifest, Stage};

use crate::TestFleet;

fn current_manifest(fleet: &TestFleet, host: &str) -> Manifest {
    let id = fleet.current(host);
    let path = fleet
        .chroots()
        .join(host)
        .join("releases")
        .join(&id)
        .join("MANIFEST");
    Manifest::parse_verified(&fs::read(path).unwrap(), &id.parse().unwrap()).unwrap()
}

fn append(fleet: &TestFleet, rel: &str, text: &str) {
    let path = fleet.root().join(rel);
    let mut content = fs::read_to_string(&path).unwrap();
    content.push_str(text);
    fs::write(path, content).unwrap();
}

#[test]
fn common_files_reach_every_host_and_a_host_file_wins() {
    let fleet = TestFleet::with_hosts(&["client1", "client2"]);
    fleet.write("common/files/etc/ssl/fleet-ca.pem", "common CA\n");
    fleet.write(
        "common/files/etc/ssh/ssh_known_hosts",
        "server ssh-ed25519 AAAA\n",
    );
    fleet.write(
        "hosts/client1/files/etc/ssl/fleet-ca.pem",
        "client1's own CA\n",
    );
    fleet.write("hosts/client2/files/etc/grafana/secret", "s3cret\n");
    append(
        &fleet,
        "hosts/client2/host.toml",
        "\n[files.\"etc/grafana/secret\"]\nowner = \"grafana\"\ngroup = \"grafana\"\nstage = \"after\"\nrestart = [\"grafana.service\"]\n\n[files.\"etc/ssl/fleet-ca.pem\"]\nreload = [\"nginx.service\"]\n",
    );
    fleet.tiffin(&["check"]).assert().success();
    fleet.tiffin(&["publish"]).assert().success();

    let one = current_manifest(&fleet, "client1");
    let entry = |m: &Manifest, p: &str| m.files.iter().find(|f| f.path.as_str() == p).cloned();
    let ca1 = entry(&one, "files/etc/ssl/fleet-ca.pem").unwrap();
    assert_eq!(ca1.source, FileSource::Host, "the host's own file wins");
    assert_eq!(ca1.size, "client1's own CA\n".len() as u64);
    let known = entry(&one, "files/etc/ssh/ssh_known_hosts").unwrap();
    assert_eq!(known.source, FileSource::Common);
    assert!(
        !one.files
            .iter()
            .any(|f| f.path.as_str().starts_with("config/common/files")),
        "common/files/ never enters the Nix part"
    );

    let two = current_manifest(&fleet, "client2");
    let secret = entry(&two, "files/etc/grafana/secret").unwrap();
    assert_eq!(secret.owner.as_ref().unwrap().as_str(), "grafana");
    assert_eq!(secret.group.as_ref().unwrap().as_str(), "grafana");
    assert_eq!(secret.stage, Stage::After);
    assert_eq!(secret.restart[0].as_str(), "grafana.service");
    let ca2 = entry(&two, "files/etc/ssl/fleet-ca.pem").unwrap();
    assert_eq!(
        (ca2.source, ca2.reload[0].as_str()),
        (FileSource::Common, "nginx.service")
    );
    let id2 = fleet.current("client2");
    let stored = fleet.chroots().join("client2/releases").join(&id2);
    assert_eq!(
        fs::read_to_string(stored.join("files/etc/ssl/fleet-ca.pem")).unwrap(),
        "common CA\n"
    );

    // A changed owner alone is a new release.
    let host_toml = fleet.root().join("hosts/client2/host.toml");
    let text = fs::read_to_string(&host_toml)
        .unwrap()
        .replace("owner = \"grafana\"", "owner = \"root\"");
    fs::write(&host_toml, text).unwrap();
    fleet.tiffin(&["publish"]).assert().success();
    assert_ne!(fleet.current("client2"), id2);
}

#[test]
fn check_names_a_table_without_a_file_and_a_bad_unit() {
    let fleet = TestFleet::with_hosts(&["client1"]);
    append(
        &fleet,
        "hosts/client1/host.toml",
        "\n[files.\"etc/grafana/secret\"]\nowner = \"grafana\"\n\n[files.\"etc/tiffin-managed\"]\nrestart = [\"grafana\"]\nstage = \"later\"\n",
    );
    let (code, out) = fleet.output(&["check"]);
    assert_eq!(code, 2, "{out}");
    for needle in [
        "error: hosts/client1/host.toml: files.\"etc/grafana/secret\": no such file in hosts/client1/files/ or common/files/",
        "error: hosts/client1/host.toml: files.\"etc/tiffin-managed\".restart: invalid unit name \"grafana\"",
        "error: hosts/client1/host.toml: files.\"etc/tiffin-managed\".stage: unknown stage \"later\"",
    ] {
        assert!(out.contains(needle), "{needle} in\n{out}");
    }
    fleet.tiffin(&["publish"]).assert().code(2);
}

#[test]
fn a_common_file_where_the_host_has_a_directory_is_named() {
    let fleet = TestFleet::with_hosts(&["client1"]);
    fleet.write("common/files/etc/app", "a file\n");
    fleet.write("hosts/client1/files/etc/app/conf", "a directory's file\n");
    let (code, out) = fleet.output(&["check"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("error: common/files/etc/app: conflicts with the host's own hosts/client1/files/etc/app/conf"),
        "{out}"
    );
}

#[test]
fn common_files_must_be_a_directory() {
    let fleet = TestFleet::with_hosts(&["client1"]);
    fs::remove_dir(fleet.root().join("common/files")).unwrap();
    fleet.write("common/files", "not a directory\n");
    let (code, out) = fleet.output(&["check"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("error: common/files: must be a directory"),
        "{out}"
    );
}
