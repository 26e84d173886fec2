//! Signed releases from the command line, with keys made by the real ssh-keygen: publish stages a release until the repository holds its statement, `tiffin sign` checks and signs it, publish verifies and installs it; status shows signers and expiry, and an expired or forged statement.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Std;

use crate::TestFleet;

/// An ed25519 key made by ssh-keygen: its private key file and its public line.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let status = Std::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (openssh-client) is installed");
    assert!(status.success());
    let line = fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, line.trim().to_owned())
}

/// A fleet of host `alpha` whose fleet.toml trusts `n` fresh admin keys, `threshold` of them.
fn signed_fleet(n: usize, threshold: u32) -> (TestFleet, Vec<PathBuf>) {
    let fleet = TestFleet::with_hosts(&["alpha"]);
    let keys: Vec<(PathBuf, String)> = (0..n)
        .map(|i| keygen(fleet.tmp.path(), &format!("admin{i}")))
        .collect();
    let lines: Vec<String> = keys.iter().map(|(_, l)| format!("{l:?}")).collect();
    let toml = fs::read_to_string(fleet.root().join("fleet.toml")).unwrap();
    fleet.write(
        "fleet.toml",
        &format!(
            "{toml}\n[trust]\nversion = 1\nthreshold = {threshold}\nkeys = [{}]\n",
            lines.join(", ")
        ),
    );
    (fleet, keys.into_iter().map(|(k, _)| k).collect())
}

fn to_sign(fleet: &TestFleet) -> String {
    fleet
        .state_dir()
        .join("to-sign/alpha.MANIFEST")
        .display()
        .to_string()
}

fn sign(fleet: &TestFleet, key: &Path, args: &[&str]) -> (i32, String) {
    let mut all = vec!["sign", "--key", key.to_str().unwrap()];
    all.extend_from_slice(args);
    fleet.output(&all)
}

#[test]
fn a_release_waits_for_its_signatures_and_publish_installs_them() {
    let (fleet, keys) = signed_fleet(3, 2);
    let (code, out) = fleet.output(&["publish"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("waiting for the admins' signatures"), "{out}");
    assert!(
        !fleet.chroots().join("alpha/CURRENT").exists(),
        "nothing is current before it is signed"
    );
    // Publishing again stages nothing new.
    let before = fleet.releases("alpha");
    fleet.tiffin(&["publish"]).assert().success();
    assert_eq!(fleet.releases("alpha"), before);

    let (code, out) = sign(&fleet, &keys[0], &[&to_sign(&fleet)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 of 2 signature(s); 1 more needed"), "{out}");
    let (_, out) = fleet.output(&["publish"]);
    assert!(
        out.contains("waiting for the admins' signatures"),
        "one is not enough: {out}"
    );

    let (code, out) = sign(&fleet, &keys[1], &["--cosign", "alpha"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 of 2 signature(s)"), "{out}");
    let (code, out) = fleet.output(&["publish"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("published release #1"), "{out}");
    let chroot = fleet.chroots().join("alpha");
    let current = fs::read_to_string(chroot.join("CURRENT")).unwrap();
    assert!(
        current.lines().any(|l| l.starts_with("statement ")),
        "{current}"
    );
    assert!(chroot.join("STATEMENT").is_file() && chroot.join("STATEMENT.sig").is_file());
    assert!(
        !Path::new(&to_sign(&fleet)).exists(),
        "nothing left to sign once published"
    );

    let (_, table) = fleet.output(&["status"]);
    assert!(
        table.contains("signed #1 by 2 key(s) until 2026-12-24T12:00:00Z"),
        "{table}"
    );
    let (_, story) = fleet.output(&["status", "alpha"]);
    assert!(story.contains("signed      #1 by SHA256:"), "{story}");
    let (_, json) = fleet.output(&["status", "--json"]);
    assert!(json.contains("\"signed\""), "{json}");
}

#[test]
fn sign_refuses_a_release_that_is_not_what_the_checkout_holds() {
    let (fleet, keys) = signed_fleet(1, 1);
    fleet.tiffin(&["publish"]).assert().success();
    fleet.write(
        "hosts/alpha/configuration.nix",
        "{ ... }: { changed = true; }\n",
    );
    let (code, out) = sign(&fleet, &keys[0], &[&to_sign(&fleet)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not what this checkout holds"), "{out}");
    assert!(
        out.contains("config/configuration.nix: another content"),
        "{out}"
    );
    assert!(!fleet.root().join("signed/alpha.statement").exists());
}

#[test]
fn a_statement_forged_on_the_server_makes_the_host_unverifiable() {
    let (fleet, keys) = signed_fleet(1, 1);
    fleet.tiffin(&["publish"]).assert().success();
    sign(&fleet, &keys[0], &[&to_sign(&fleet)]);
    fleet.tiffin(&["publish"]).assert().success();
    let path = fleet.chroots().join("alpha/STATEMENT");
    let forged = fs::read_to_string(&path)
        .unwrap()
        .replace("seq = 1", "seq = 9");
    fs::write(&path, forged).unwrap();
    let (code, out) = fleet.output(&["status", "alpha"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.starts_with("alpha: unverifiable"), "{out}");
}

#[test]
fn an_expired_statement_shows_and_renewing_it_makes_no_new_release() {
    let (fleet, keys) = signed_fleet(1, 1);
    fleet.tiffin(&["publish"]).assert().success();
    sign(&fleet, &keys[0], &["--expires", "1h", &to_sign(&fleet)]);
    fleet.tiffin(&["publish"]).assert().success();
    let first_line = |f: &TestFleet| f.current("alpha").lines().next().unwrap().to_owned();
    let release = first_line(&fleet);
    let later = |args: &[&str]| {
        let out = fleet
            .tiffin(args)
            .env("TIFFIN_NOW", "2026-11-24T14:00:00Z")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap(), text)
    };
    let (code, out) = later(&["status", "alpha"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.starts_with("alpha: expired"), "{out}");
    let (code, out) = later(&[
        "sign",
        "--key",
        keys[0].to_str().unwrap(),
        "--renew",
        "alpha",
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = later(&["publish"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("re-signed"), "{out}");
    assert_eq!(first_line(&fleet), release, "the same release");
    let (code, out) = later(&["status", "alpha"]);
    assert!(!out.starts_with("alpha: expired"), "{code}: {out}");
}

#[test]
fn sign_help_teaches() {
    let fleet = TestFleet::bare();
    let (code, out) = fleet.output(&["sign", "--help"]);
    assert_eq!(code, 0, "{out}");
    insta::assert_snapshot!("sign_help", out);
}

#[test]
fn check_validates_the_trust_section() {
    let (fleet, _) = signed_fleet(1, 1);
    let toml = fs::read_to_string(fleet.root().join("fleet.toml")).unwrap();
    fleet.write(
        "fleet.toml",
        &toml.replace("threshold = 1", "threshold = 3"),
    );
    let (code, out) = fleet.output(&["check"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("fleet.toml") && out.contains("[trust]"),
        "{out}"
    );
    let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 rsa";
    fleet.write(
        "fleet.toml",
        &toml.replace(
            "threshold = 1\nkeys = [",
            &format!("threshold = 1\nkeys = [\"{rsa}\", "),
        ),
    );
    let (code, out) = fleet.output(&["check"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("fleet.toml"), "{out}");
}
