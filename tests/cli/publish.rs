//! `publish`: releases laid out as docs/formats.md says, no-op when nothing changed, atomic under failure.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::time::SystemTime;

use tiffin::admin::fleet::Fleet;
use tiffin::core::release::Manifest;
use tiffin::server::publish::{Fault, Hold, Mode, PublishOptions, When, publish_host};

use crate::{TestFleet, list};

fn manifest(fleet: &TestFleet, host: &str, id: &str) -> Manifest {
    let bytes = fs::read(
        fleet
            .chroots()
            .join(host)
            .join("releases")
            .join(id)
            .join("MANIFEST"),
    )
    .unwrap();
    Manifest::parse_verified(&bytes, &id.parse().unwrap()).unwrap()
}

#[test]
fn publish_lays_out_releases_and_is_a_no_op_when_nothing_changed() {
    let fleet = TestFleet::with_hosts(&["client1", "client2", "client3"]);
    fleet.write("hosts/client2/files/etc/wireguard/key", "secret\n");
    fs::set_permissions(
        fleet.root().join("hosts/client2/files/etc/wireguard/key"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fleet.tiffin(&["check"]).assert().success();
    fleet.tiffin(&["publish"]).assert().success();

    // The server layout of docs/formats.md.
    let host = fleet.chroots().join("client2");
    let id = fleet.current("client2");
    assert_eq!(list(&host), ["CURRENT", "releases"]);
    assert_eq!(fleet.releases("client2"), std::slice::from_ref(&id));
    let release = host.join("releases").join(&id);
    assert_eq!(list(&release), ["MANIFEST", "config", "files"]);
    assert_eq!(
        list(&release.join("config")),
        ["common", "configuration.nix", "flake.nix"]
    );
    assert!(
        release.join("config/common/default.nix").is_file(),
        "symlinked common/ is dereferenced"
    );
    assert!(!release.join("config/flake.nix").is_symlink());
    assert!(
        !release.join("config/host.toml").exists(),
        "host.toml is not published"
    );
    let key = release.join("files/etc/wireguard/key");
    assert_eq!(fs::read_to_string(&key).unwrap(), "secret\n");
    assert_eq!(
        fs::metadata(&key).unwrap().mode() & 0o7777,
        0o640,
        "readable by the host's group only"
    );
    assert_eq!(fs::metadata(&release).unwrap().mode() & 0o7777, 0o750);
    let m = manifest(&fleet, "client2", &id);
    assert_eq!(m.seq, 1);
    assert_eq!(m.host.as_str(), "client2");
    let entry = m
        .files
        .iter()
        .find(|f| f.path.as_str() == "files/etc/wireguard/key")
        .unwrap();
    assert_eq!(
        entry.mode.to_string(),
        "0600",
        "the MANIFEST carries the client-side mode"
    );
    assert_eq!(entry.size, 7);

    // Publishing again changes nothing: same CURRENT inode and mtime, no new release.
    let current_files = || -> Vec<_> {
        ["client1", "client2", "client3"]
            .iter()
            .map(|h| {
                let meta = fs::metadata(fleet.chroots().join(h).join("CURRENT")).unwrap();
                (
                    meta.ino(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    fleet.releases(h),
                )
            })
            .collect()
    };
    let before = current_files();
    let (code, out) = fleet.output(&["publish"]);
    assert_eq!(code, 0);
    assert_eq!(out.matches("unchanged").count(), 3, "{out}");
    assert_eq!(before, current_files());

    // One changed file of one host: seq+1, the MANIFEST differs only in that entry.
    let old_ids = [
        fleet.current("client1"),
        fleet.current("client2"),
        fleet.current("client3"),
    ];
    fleet.write(
        "hosts/client2/configuration.nix",
        "{...}: { networking.hostName = \"client2\"; }\n",
    );
    let (code, out) = fleet.output(&["publish"]);
    assert_eq!(code, 0, "{out}");
    crate::assert_snapshot_ids!("publish_one_change", out);
    assert_eq!(fleet.current("client1"), old_ids[0]);
    assert_eq!(fleet.current("client3"), old_ids[2]);
    let new_id = fleet.current("client2");
    assert_ne!(new_id, old_ids[1]);
    let (old, new) = (
        manifest(&fleet, "client2", &old_ids[1]),
        manifest(&fleet, "client2", &new_id),
    );
    assert_eq!(new.seq, old.seq + 1);
    let differing: Vec<_> = old
        .files
        .iter()
        .zip(&new.files)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.path.as_str().to_owned())
        .collect();
    assert_eq!(differing, ["config/configuration.nix"]);
    assert_eq!(old.files.len(), new.files.len());
    assert_eq!(old.apply, new.apply);
    // Unchanged files are shared with the previous release, not copied.
    let ino = |id: &str| {
        fs::metadata(
            fleet
                .chroots()
                .join("client2/releases")
                .join(id)
                .join("files/etc/wireguard/key"),
        )
        .unwrap()
        .ino()
    };
    assert_eq!(ino(&old_ids[1]), ino(&new_id));
}

#[test]
fn a_mode_or_policy_change_is_a_new_release() {
    let fleet = TestFleet::with_hosts(&["web"]);
    fleet.tiffin(&["publish"]).assert().success();
    let first = fleet.current("web");
    fs::set_permissions(
        fleet.root().join("hosts/web/files/etc/tiffin-managed"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fleet.tiffin(&["publish"]).assert().success();
    let second = fleet.current("web");
    assert_ne!(first, second, "mode change");
    let host_toml = fs::read_to_string(fleet.root().join("hosts/web/host.toml")).unwrap();
    fleet.write(
        "hosts/web/host.toml",
        &host_toml.replace("# action = \"switch\"", "action = \"boot\""),
    );
    fleet.tiffin(&["publish"]).assert().success();
    let third = fleet.current("web");
    assert_ne!(second, third, "policy change");
    assert_eq!(manifest(&fleet, "web", &third).seq, 3);
}

#[test]
fn dry_run_writes_nothing() {
    let fleet = TestFleet::with_hosts(&["web", "db"]);
    let (code, out) = fleet.output(&["publish", "--dry-run", "web"]);
    assert_eq!(code, 0);
    crate::assert_snapshot_ids!("publish_dry_run", out);
    assert!(!fleet.chroots().exists());
}

#[test]
fn old_releases_are_pruned_but_never_the_current_one() {
    let fleet = TestFleet::with_hosts(&["web"]);
    fleet.write("fleet.toml", "[server]\nkeep_releases = 2\n");
    for i in 0..4 {
        fleet.write("hosts/web/files/etc/counter", &format!("{i}\n"));
        fleet.tiffin(&["publish"]).assert().success();
    }
    let releases = fleet.releases("web");
    assert_eq!(releases.len(), 2, "{releases:?}");
    assert!(releases.contains(&fleet.current("web")));
    let mut seqs: Vec<u64> = releases
        .iter()
        .map(|id| manifest(&fleet, "web", id).seq)
        .collect();
    seqs.sort();
    assert_eq!(seqs, [3, 4]);
}

#[test]
fn a_broken_host_fails_alone_and_names_the_link() {
    let fleet = TestFleet::with_hosts(&["web", "db"]);
    symlink("/etc/shadow", fleet.root().join("hosts/db/files/shadow")).unwrap();
    let (code, out) = fleet.output(&["publish", "db"]);
    assert_eq!(code, 2, "{out}");
    insta::assert_snapshot!(out);
    assert!(
        !fleet.chroots().join("db").exists(),
        "nothing outside the repository was read or written"
    );
    fleet.tiffin(&["publish", "web"]).assert().success();
    let (code, out) = fleet.output(&["publish", "nosuchhost"]);
    assert_eq!(code, 2);
    assert!(out.contains("unknown host nosuchhost"), "{out}");
}

/// A failure at any point of writing a release leaves CURRENT and releases/ exactly as before.
#[test]
fn injected_failures_leave_the_previous_release() {
    let fleet = TestFleet::with_hosts(&["web"]);
    fleet.tiffin(&["publish"]).assert().success();
    let loaded = Fleet::load(&fleet.root()).unwrap();
    let host = loaded.hosts.values().next().unwrap();
    fleet.write("hosts/web/files/etc/new-a", "a\n");
    fleet.write("hosts/web/files/etc/new-b", "b\n");
    let snapshot = || {
        let current = fs::read(fleet.chroots().join("web/CURRENT")).unwrap();
        let ino = fs::metadata(fleet.chroots().join("web/CURRENT"))
            .unwrap()
            .ino();
        (current, ino, fleet.releases("web"))
    };
    let before = snapshot();
    let faults = [
        Fault::AfterFiles(0),
        Fault::AfterFiles(2),
        Fault::AfterFiles(6),
        Fault::BeforeReleaseRename,
    ];
    for fault in faults {
        let opts = PublishOptions {
            chroot_root: fleet.chroots(),
            state_dir: fleet.state_dir(),
            mode: Mode::Write,
            when: When::Changed,
            keep_releases: 5,
            now: SystemTime::now(),
            hold: Hold::Swap,
            fault: Some(fault),
        };
        let err = publish_host(&loaded, host, &opts).unwrap_err();
        assert!(err.to_string().contains("injected fault"), "{err}");
        assert_eq!(snapshot(), before, "after {fault:?}");
        assert!(
            !fleet.chroots().join("web/.staging").exists(),
            "staging cleaned after {fault:?}"
        );
    }
    // Failing after the rename but before the swap leaves a complete release that CURRENT does
    // not name; clients never see it, and the next publish supersedes it (pruning removes it later).
    let opts = PublishOptions {
        chroot_root: fleet.chroots(),
        state_dir: fleet.state_dir(),
        mode: Mode::Write,
        when: When::Changed,
        keep_releases: 5,
        now: SystemTime::now(),
        hold: Hold::Swap,
        fault: Some(Fault::BeforeCurrentSwap),
    };
    publish_host(&loaded, host, &opts).unwrap_err();
    assert_eq!(
        fs::read(fleet.chroots().join("web/CURRENT")).unwrap(),
        before.0
    );
    for id in fleet.releases("web") {
        manifest(&fleet, "web", &id); // every release present is complete and verifies
    }
    fleet.tiffin(&["publish"]).assert().success();
    let m = manifest(&fleet, "web", &fleet.current("web"));
    assert!(m.files.iter().any(|f| f.path.as_str() == "files/etc/new-b"));
    // Every attempt reserved its seq before writing (the four injected failures above took 2 to 5,
    // the orphaned release 6): gaps, never a seq handed out twice.
    assert_eq!(m.seq, 7, "the seq of an orphaned release is never reused");
}

#[test]
fn seq_survives_a_chroot_that_is_removed_or_moved() {
    let fleet = TestFleet::with_hosts(&["web"]);
    fleet.tiffin(&["publish"]).assert().success();
    fleet.write("hosts/web/files/etc/motd", "two\n");
    fleet.tiffin(&["publish"]).assert().success();
    assert_eq!(manifest(&fleet, "web", &fleet.current("web")).seq, 2);
    // As after `provision --prune` or a new chroot_root: the host's chroot is gone.
    fs::remove_dir_all(fleet.chroots()).unwrap();
    fleet.write("hosts/web/files/etc/motd", "three\n");
    fleet.tiffin(&["publish"]).assert().success();
    assert_eq!(
        manifest(&fleet, "web", &fleet.current("web")).seq,
        3,
        "a client that applied #2 must not be offered #1"
    );
    // A record that cannot be read stops the publish rather than guess.
    fs::write(fleet.state_dir().join("seq/web"), "garbage").unwrap();
    fleet.write("hosts/web/files/etc/motd", "four\n");
    let (code, out) = fleet.output(&["publish"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("seq/web") && out.contains("not a number"),
        "{out}"
    );
}

#[test]
fn a_damaged_stored_file_is_found_never_linked_again_and_repaired() {
    let fleet = TestFleet::with_hosts(&["web"]);
    fleet.tiffin(&["publish"]).assert().success();
    let first = fleet.current("web");
    let stored = fleet
        .chroots()
        .join("web/releases")
        .join(&first)
        .join("config/configuration.nix");
    let good = fs::read(&stored).unwrap();
    fs::write(&stored, "{ }: { damaged = true; }\n").unwrap();

    // verify names the file, the release and what is wrong, and fails.
    let (code, out) = fleet.output(&["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("release #1 {}", &first[..12]))
            && out.contains("config/configuration.nix")
            && out.contains("bytes, the MANIFEST says"),
        "{out}"
    );

    // A publish for another change copies the file afresh instead of linking the damaged one.
    fleet.write("hosts/web/files/etc/motd", "hello\n");
    fleet.tiffin(&["publish"]).assert().success();
    let second = fleet.current("web");
    let fresh = fleet
        .chroots()
        .join("web/releases")
        .join(&second)
        .join("config/configuration.nix");
    assert_eq!(fs::read(&fresh).unwrap(), good);
    use std::os::unix::fs::MetadataExt;
    assert_ne!(
        fs::metadata(&fresh).unwrap().ino(),
        fs::metadata(&stored).unwrap().ino()
    );

    // Damage the current release too; --repair publishes a fresh one and removes the old damaged one.
    fs::write(&fresh, "x").unwrap();
    let (code, out) = fleet.output(&["verify", "--repair"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("web: repaired: published release #3"), "{out}");
    assert!(
        out.contains(&format!("removed damaged release {}", &first[..12])),
        "{out}"
    );
    let (code, out) = fleet.output(&["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("all intact"), "{out}");
    let third = fleet.current("web");
    assert_eq!(manifest(&fleet, "web", &third).seq, 3);
}

#[test]
fn a_host_whose_host_toml_does_not_load_is_an_error_not_a_departure() {
    let fleet = TestFleet::with_hosts(&["web", "db"]);
    fleet.tiffin(&["publish"]).assert().success();
    let before = fleet.current("db");
    let host_toml = fs::read_to_string(fleet.root().join("hosts/db/host.toml")).unwrap();
    fleet.write(
        "hosts/db/host.toml",
        &format!("{host_toml}\nacton = \"boot\"\n"),
    );
    fleet.write("hosts/db/files/etc/motd", "changed\n");
    let (code, out) = fleet.output(&["publish"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("hosts/db/host.toml") && out.contains("acton"),
        "names the file and the key: {out}"
    );
    assert_eq!(fleet.current("db"), before, "db keeps its release");
}
