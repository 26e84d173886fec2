//! `init`, `host add`, `check`: the fleet repository and every error an admin can make in it.

use std::os::unix::fs::symlink;

use crate::{KEYS, TestFleet};

#[test]
fn init_then_check_is_clean_but_warns_about_the_example_key() {
    let fleet = TestFleet::bare();
    for path in [
        "fleet.toml",
        "templates/flake.nix",
        "common/default.nix",
        "hosts/example/host.toml",
        "hosts/example/configuration.nix",
        "hosts/example/files/etc/tiffin-managed",
    ] {
        assert!(fleet.root().join(path).is_file(), "{path}");
    }
    assert_eq!(
        std::fs::read_link(fleet.root().join("hosts/example/flake.nix")).unwrap(),
        std::path::Path::new("../../templates/flake.nix")
    );
    let (code, out) = fleet.output(&["check"]);
    assert_eq!(code, 0, "{out}");
    insta::assert_snapshot!("check_after_init", out);
}

#[test]
fn init_refuses_a_non_empty_directory() {
    let fleet = TestFleet::bare();
    let out = assert_cmd::Command::cargo_bin("tiffin")
        .unwrap()
        .args(["init", "fleet"])
        .current_dir(fleet.tmp.path())
        .assert()
        .code(2);
    let text = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(text.contains("already exists and is not empty"), "{text}");
}

#[test]
fn host_add_reads_a_key_file_and_refuses_duplicates() {
    let fleet = TestFleet::with_hosts(&[]);
    let key_file = fleet.tmp.path().join("web.pub");
    std::fs::write(&key_file, format!("{}\n", KEYS[1])).unwrap();
    fleet
        .tiffin(&["host", "add", "web-1", "--key", key_file.to_str().unwrap()])
        .assert()
        .success();
    let host_toml = std::fs::read_to_string(fleet.root().join("hosts/web-1/host.toml")).unwrap();
    assert!(host_toml.contains(KEYS[1]), "{host_toml}");
    let (code, out) = fleet.output(&["host", "add", "web-1", "--key", KEYS[1]]);
    assert_eq!(code, 2);
    insta::assert_snapshot!("host_add_duplicate", out);
}

/// The server's address and key in fleet.toml and a real tiffin input in the template:
/// a fleet whose `check` has nothing to say until a test breaks it.
fn make_ready(fleet: &TestFleet) {
    let toml = std::fs::read_to_string(fleet.root().join("fleet.toml")).unwrap();
    let toml = toml.replacen(
        "[server]\n",
        &format!(
            "[server]\naddress = \"fleet.example.org\"\nhost_key = \"{}\"\n",
            KEYS[2]
        ),
        1,
    );
    fleet.write("fleet.toml", &toml);
    let flake = std::fs::read_to_string(fleet.root().join("templates/flake.nix")).unwrap();
    fleet.write(
        "templates/flake.nix",
        &flake.replace("github:OWNER/tiffin", "git+https://git.example.org/tiffin"),
    );
}

/// One broken fleet per kind of mistake; each error must name the file and what was expected.
fn check_error(setup: impl FnOnce(&TestFleet)) -> String {
    let fleet = TestFleet::with_hosts(&["web"]);
    make_ready(&fleet);
    setup(&fleet);
    let (code, out) = fleet.output(&["check"]);
    assert_eq!(code, 2, "check must fail: {out}");
    out
}

#[test]
fn error_invalid_toml() {
    let out = check_error(|f| f.write("fleet.toml", "[server\nchroot_root = 1\n"));
    insta::assert_snapshot!(out);
}

#[test]
fn error_unknown_key() {
    let out = check_error(|f| {
        f.write(
            "hosts/web/host.toml",
            &format!("public_key = \"{}\"\npoll_intervall = \"5m\"\n", KEYS[0]),
        )
    });
    insta::assert_snapshot!(out);
}

#[test]
fn error_unknown_value() {
    let out = check_error(|f| {
        f.write(
            "hosts/web/host.toml",
            &format!(
                "public_key = \"{}\"\n[apply]\naction = \"swtich\"\n",
                KEYS[0]
            ),
        )
    });
    insta::assert_snapshot!(out);
}

#[test]
fn error_bad_host_name() {
    let out = check_error(|f| {
        std::fs::rename(f.root().join("hosts/web"), f.root().join("hosts/Web_1")).unwrap();
    });
    insta::assert_snapshot!(out);
}

#[test]
fn error_name_too_long_for_an_account() {
    let out = check_error(|f| {
        std::fs::rename(
            f.root().join("hosts/web"),
            f.root().join("hosts/a-very-long-host-name-for-unix"),
        )
        .unwrap();
    });
    insta::assert_snapshot!(out);
}

#[test]
fn error_bad_public_key() {
    let out = check_error(|f| {
        f.write(
            "hosts/web/host.toml",
            "public_key = \"ssh-ed25519 AAAAnotbase64!!\"\n",
        )
    });
    insta::assert_snapshot!(out);
}

#[test]
fn error_symlink_leaving_the_repository() {
    let out = check_error(|f| {
        symlink("/etc/passwd", f.root().join("hosts/web/files/etc/passwd")).unwrap();
    });
    insta::assert_snapshot!(out);
}

#[test]
fn error_dangling_symlink() {
    let out = check_error(|f| {
        symlink("../missing.nix", f.root().join("hosts/web/extra.nix")).unwrap();
    });
    insta::assert_snapshot!(out);
}

#[test]
fn error_missing_configuration_nix() {
    let out = check_error(|f| {
        std::fs::remove_file(f.root().join("hosts/web/configuration.nix")).unwrap();
    });
    insta::assert_snapshot!(out);
}

#[test]
fn error_symlink_loop() {
    let out = check_error(|f| {
        symlink("..", f.root().join("hosts/web/files/loop")).unwrap();
    });
    insta::assert_snapshot!(out);
}

#[test]
fn check_lists_every_problem_at_once() {
    let out = check_error(|f| {
        f.write("hosts/web/host.toml", "public_key = \"nope\"\n");
        f.write(
            "hosts/db/host.toml",
            &format!("public_key = \"{}\"\n", KEYS[2]),
        );
        symlink("/etc/hostname", f.root().join("hosts/db/files")).unwrap();
        f.write("fleet.toml", "[server]\nkeep_releases = 0\n");
    });
    insta::assert_snapshot!(out);
}

#[test]
fn host_add_rejects_bad_input() {
    let fleet = TestFleet::with_hosts(&[]);
    let mut outputs = Vec::new();
    for args in [
        ["host", "add", "Web", "--key", KEYS[0]],
        ["host", "add", "web", "--key", "ssh-rsa AAAA"],
        [
            "host",
            "add",
            "web",
            "--key",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
        ],
    ] {
        let (code, out) = fleet.output(&args);
        assert_eq!(code, 2, "{out}");
        outputs.push(out);
    }
    assert!(
        !fleet.root().join("hosts/web").exists(),
        "nothing half-written"
    );
    insta::assert_snapshot!(outputs.join("---\n"));
}

#[test]
fn no_fleet_here_says_how_to_fix_it() {
    let tmp = tempfile::TempDir::new().unwrap();
    let out = assert_cmd::Command::cargo_bin("tiffin")
        .unwrap()
        .arg("check")
        .current_dir(tmp.path())
        .env_remove("TIFFIN_FLEET")
        .assert()
        .code(2);
    let text = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    insta::assert_snapshot!(text);
}

#[test]
fn help_teaches() {
    for (name, args) in [
        ("help", vec!["--help"]),
        ("help_publish", vec!["publish", "--help"]),
        ("help_status", vec!["status", "--help"]),
        ("help_verify", vec!["verify", "--help"]),
        ("help_host_add", vec!["host", "add", "--help"]),
    ] {
        let out = assert_cmd::Command::cargo_bin("tiffin")
            .unwrap()
            .args(&args)
            .env("COLUMNS", "100")
            .env_remove("TIFFIN_FLEET")
            .assert()
            .success();
        insta::assert_snapshot!(name, String::from_utf8_lossy(&out.get_output().stdout));
    }
}

#[test]
fn a_key_with_a_second_line_is_refused() {
    // A second line in authorized_keys would be a key without `restrict`.
    let two_lines = format!("{}\n{}", KEYS[0], KEYS[1]);
    let fleet = TestFleet::with_hosts(&[]);
    let (code, out) = fleet.output(&["host", "add", "web", "--key", &two_lines]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("spans several lines"), "{out}");
    let out = check_error(|f| {
        f.write(
            "hosts/web/host.toml",
            &format!("public_key = \"{} x\\nssh-ed25519 AAAA\"\n", KEYS[0]),
        )
    });
    assert!(
        out.contains("hosts/web/host.toml: public_key: it spans several lines"),
        "{out}"
    );
}

#[test]
fn a_host_directory_that_leads_outside_the_repository_is_refused() {
    let out = check_error(|f| {
        let outside = f.tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("configuration.nix"), "{...}: {}\n").unwrap();
        std::fs::write(
            outside.join("host.toml"),
            format!("public_key = \"{}\"\n", KEYS[3]),
        )
        .unwrap();
        symlink(&outside, f.root().join("hosts/db")).unwrap();
    });
    assert!(
        out.contains("error: hosts/db: the host directory leads outside the fleet repository"),
        "{out}"
    );
}

#[test]
fn a_nix_file_linked_from_a_files_tree_is_refused() {
    // The Nix part goes to /nix/store (world-readable); files/ holds secrets.
    let out = check_error(|f| {
        f.write("hosts/web/files/etc/wireguard/key", "secret\n");
        symlink(
            "files/etc/wireguard/key",
            f.root().join("hosts/web/key.nix"),
        )
        .unwrap();
    });
    assert!(
        out.contains("error: hosts/web/key.nix: the Nix part reaches into a files/ tree"),
        "{out}"
    );
    // Nor through a link to a whole directory that holds a files/ tree.
    let out = check_error(|f| {
        f.write("hosts/db/files/etc/secret", "secret\n");
        symlink("../db", f.root().join("hosts/web/other")).unwrap();
    });
    assert!(
        out.contains("error: hosts/web/other/files: the Nix part reaches into a files/ tree"),
        "{out}"
    );
    // Sharing a file between two hosts' files/ trees stays allowed.
    let fleet = TestFleet::with_hosts(&["web", "db"]);
    fleet.write("hosts/web/files/etc/ca.pem", "ca\n");
    symlink(
        "../../../web/files/etc/ca.pem",
        fleet.root().join("hosts/db/files/etc/ca.pem"),
    )
    .unwrap();
    fleet.tiffin(&["check"]).assert().success();
}

#[test]
fn init_brings_the_tiffin_client_to_every_host() {
    let fleet = TestFleet::bare();
    let root = fleet.root();
    let flake = std::fs::read_to_string(root.join("templates/flake.nix")).unwrap();
    for needed in [
        "inputs.tiffin.url",
        "inputs.tiffin.inputs.nixpkgs.follows = \"nixpkgs\"",
        "tiffin.nixosModules.client",
        "./common/tiffin.nix",
    ] {
        assert!(flake.contains(needed), "templates/flake.nix lacks {needed}");
    }
    let module = std::fs::read_to_string(root.join("common/tiffin.nix")).unwrap();
    assert!(
        module.contains("builtins.readFile ./fleet.toml"),
        "{module}"
    );
    // Read through a link, so a release (links dereferenced) carries fleet.toml too.
    assert_eq!(
        std::fs::read_link(root.join("common/fleet.toml")).unwrap(),
        std::path::Path::new("../fleet.toml")
    );
    assert_eq!(
        std::fs::read_to_string(root.join("hosts/example/common/fleet.toml")).unwrap(),
        std::fs::read_to_string(root.join("fleet.toml")).unwrap()
    );
    // With a shared lock in templates/, host add links it: nothing more to do per host.
    fleet.write("templates/flake.lock", "{}\n");
    fleet
        .tiffin(&["host", "add", "web-1", "--key", KEYS[1]])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_link(root.join("hosts/web-1/flake.lock")).unwrap(),
        std::path::Path::new("../../templates/flake.lock")
    );
}

#[test]
fn a_ready_fleet_checks_clean() {
    let fleet = TestFleet::with_hosts(&["web"]);
    make_ready(&fleet);
    let (code, out) = fleet.output(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "warning: hosts/web/flake.nix: no flake.lock beside it: each client resolves the inputs itself, so hosts may build different nixpkgs (run `nix flake lock` in the host directory, or symlink a shared lock)\nok: 1 host(s), 1 warning(s) in the current directory"
    );
}

#[test]
fn check_tells_an_older_fleet_what_it_lacks() {
    let fleet = TestFleet::with_hosts(&["web"]);
    make_ready(&fleet);
    // A fleet from before the template brought tiffin.
    fleet.write(
        "templates/flake.nix",
        "{\n  inputs.nixpkgs.url = \"github:NixOS/nixpkgs/nixos-25.05\";\n  outputs = {nixpkgs, ...}: let\n    system = nixpkgs.lib.nixosSystem {modules = [./configuration.nix];};\n  in {\n    nixosConfigurations.${system.config.networking.hostName} = system;\n  };\n}\n",
    );
    std::fs::remove_file(fleet.root().join("common/tiffin.nix")).unwrap();
    std::fs::remove_file(fleet.root().join("common/fleet.toml")).unwrap();
    let (code, out) = fleet.output(&["check"]);
    assert_eq!(code, 0, "warnings only: {out}");
    insta::assert_snapshot!("check_older_fleet", out);
}

#[test]
fn check_validates_what_the_hosts_client_reads() {
    let out = check_error(|f| {
        let toml = std::fs::read_to_string(f.root().join("fleet.toml")).unwrap();
        let toml = toml
            .replace(
                "address = \"fleet.example.org\"",
                "address = \"fleet example\"",
            )
            .replace(KEYS[2], "ssh-ed25519 not-a-key")
            .replacen("[defaults]\n", "[defaults]\npoll_interval = \"7m\"\n", 1)
            .replacen("[server]\n", "[server]\nport = 0\n", 1);
        f.write("fleet.toml", &toml);
        // A host polling at its own interval must say so to its timer as well.
        let host = std::fs::read_to_string(f.root().join("hosts/web/host.toml")).unwrap();
        f.write(
            "hosts/web/host.toml",
            &host.replace("# poll_interval = \"15m\"", "poll_interval = \"1h\""),
        );
    });
    insta::assert_snapshot!("check_client_settings", out);
}

#[test]
fn host_add_says_what_comes_next() {
    let fleet = crate::TestFleet::bare();
    let out = fleet
        .tiffin(&["host", "add", "web-1", "--key", crate::KEYS[0]])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for step in [
        "account tiffin-web-1 on the server",
        "services.tiffin.server.hosts.web-1.publicKey",
        "tiffin check && tiffin publish web-1",
        "A new machine joins the fleet",
        "warning: fleet.toml has no [server] address/host_key yet",
    ] {
        assert!(text.contains(step), "missing {step:?} in:\n{text}");
    }
}

#[test]
fn check_refuses_the_server_settings_provision_and_publish_refuse() {
    let fleet = TestFleet::with_hosts(&["web"]);
    fleet.write(
        "fleet.toml",
        "[server]\n\
         chroot_root = \"/var\"\n\
         user_prefix = \"Tiffin-\"\n\
         sshd_dropin = \"/etc/passwd\"\n\
         authorized_keys_dir = \"keys\"\n\
         sshd_extra = [\"ClientAliveInterval 30\", \"Match all\", \"Include=/etc/ssh/more.conf\"]\n",
    );
    let empty = tempfile::tempdir().unwrap();
    let out = fleet
        .tiffin(&["check"])
        .env("TIFFIN_SYSTEM_ROOT", empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    insta::assert_snapshot!(text);
    // publish refuses the same fleet, naming the same key.
    let (code, out) = fleet.output(&["publish"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("server.chroot_root \"/var\" is a directory the system shares"),
        "{out}"
    );
}
