//! Integration tests of the `tiffin` binary, one module per area, sharing the fixture below.

mod files;
mod fleet;
mod lab;
mod ops;
mod prebuilt;
mod provision;
mod publish;
mod pull;
mod rollout;
mod signing;
mod status;
mod trigger;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use tempfile::TempDir;

/// Public keys used by the test fleets (private halves discarded).
pub const KEYS: [&str; 4] = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDPdVHr+fKZOwwD9E3poAecxwyLqorA/Hm8Zv3LEstG0 test-1",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOJk9Cr0xxwC9xXDWRktTfOnYiRO7cKhC/p6pBoFCCfY test-2",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIGR4Y3IEV/noKM/dHXLuCpY32OTx6vKpYdpyb/suXER test-3",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILFFn8AmILDGUK7roLBkWuOwH4/y89e+eo82hlL/2b8x test-4",
];

/// A fixed "now" so times in output are stable.
pub const NOW: &str = "2026-11-24T12:00:00Z";

/// A fleet repository in a temporary directory, with a chroot root beside it.
pub struct TestFleet {
    pub tmp: TempDir,
}

impl TestFleet {
    /// `tiffin init` without the example host, then `host add` for each name.
    pub fn with_hosts(names: &[&str]) -> TestFleet {
        let fleet = TestFleet::bare();
        fs::remove_dir_all(fleet.root().join("hosts/example")).unwrap();
        for (i, name) in names.iter().enumerate() {
            fleet
                .tiffin(&["host", "add", name, "--key", KEYS[i % KEYS.len()]])
                .assert()
                .success();
        }
        fleet
    }

    /// Exactly what `tiffin init` writes.
    pub fn bare() -> TestFleet {
        let tmp = TempDir::new().unwrap();
        Command::cargo_bin("tiffin")
            .unwrap()
            .args(["init", "fleet"])
            .current_dir(tmp.path())
            .assert()
            .success();
        TestFleet { tmp }
    }

    pub fn root(&self) -> PathBuf {
        self.tmp.path().join("fleet")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    pub fn chroots(&self) -> PathBuf {
        self.tmp.path().join("chroots")
    }

    /// `tiffin ARGS` run in the fleet, publishing into the test chroot root.
    pub fn tiffin(&self, args: &[&str]) -> Command {
        let mut cmd = Command::cargo_bin("tiffin").unwrap();
        cmd.args(args)
            .current_dir(self.root())
            .env("TIFFIN_NOW", NOW)
            .env("NO_COLOR", "1")
            .env_remove("TIFFIN_FLEET")
            .env_remove("RUST_LOG");
        if matches!(
            args.first(),
            Some(&"publish" | &"status" | &"verify" | &"trigger" | &"rollout")
        ) {
            cmd.arg("--chroot-root").arg(self.chroots());
            cmd.arg("--state-dir").arg(self.state_dir());
        }
        cmd
    }

    pub fn write(&self, rel: &str, content: &str) {
        let path = self.root().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    pub fn current(&self, host: &str) -> String {
        fs::read_to_string(self.chroots().join(host).join("CURRENT"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn releases(&self, host: &str) -> Vec<String> {
        list(&self.chroots().join(host).join("releases"))
    }

    /// stdout and stderr of a command, with the temporary directory replaced by [TMP].
    pub fn output(&self, args: &[&str]) -> (i32, String) {
        let out = self.tiffin(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let tmp = self.tmp.path().to_string_lossy().into_owned();
        (out.status.code().unwrap_or(-1), text.replace(&tmp, "[TMP]"))
    }
}

pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Release ids vary with template content; snapshots show their shape only.
#[macro_export]
macro_rules! assert_snapshot_ids {
    ($name:expr, $value:expr) => {
        insta::with_settings!({filters => vec![(r"\b[0-9a-f]{64}\b", "[ID]"), (r"\b[0-9a-f]{12}\b", "[ID12]")]}, {
            insta::assert_snapshot!($name, $value);
        });
    };
}

/// Runs `tests/cli/<script>` as root inside private mount, network and pid namespaces, with the
/// `tiffin` binary, a scratch directory and `args` as its arguments, and proves the machine's
/// accounts, `/etc/ssh` and `/home` are exactly as before. The script ends with "== all good".
/// Tests that call it are `#[ignore = "needs root: …"]`; `scripts/test` runs them as root.
pub fn run_isolated_script(script: &str, timeout_secs: u32, args: &[&str]) {
    require_root();
    let before = machine_state();
    let dir = tempfile::Builder::new()
        .prefix(&format!("tiffin-{script}."))
        .tempdir()
        .unwrap();
    let out = std::process::Command::new("timeout")
        .arg(timeout_secs.to_string())
        .args([
            "unshare",
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "--kill-child",
        ])
        .args(["--mount-proc", "--propagation", "private", "bash"])
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/cli")
                .join(script),
        )
        .arg(env!("CARGO_BIN_EXE_tiffin"))
        .arg(dir.path())
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(out.status.success(), "{script} failed: {stderr}");
    assert!(stdout.contains("== all good"), "{script} did not finish");
    let after = machine_state();
    assert!(before.len() > 3, "saw the machine's files");
    for (path, state) in &before {
        assert_eq!(after.get(path), Some(state), "{} changed", path.display());
    }
    assert_eq!(
        before.len(),
        after.len(),
        "files appeared or vanished under /etc/ssh"
    );
}

/// A root-only test (marked `#[ignore = "needs root: …"]`) run without root fails, never passes.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (namespaces, root-owned directories, a real sshd): run it as root, as scripts/test and CI do"
    );
}

/// Bytes and ownership of the machine's account files and sshd configuration.
fn machine_state() -> BTreeMap<PathBuf, (Vec<u8>, u32, u32, u32)> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, (Vec<u8>, u32, u32, u32)>) {
        let Ok(m) = fs::symlink_metadata(p) else {
            return;
        };
        let content = if m.is_file() {
            fs::read(p).unwrap_or_default()
        } else if m.file_type().is_symlink() {
            fs::read_link(p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else {
            Vec::new()
        };
        out.insert(p.to_owned(), (content, m.uid(), m.gid(), m.mode()));
        if m.is_dir() {
            let mut names: Vec<_> = fs::read_dir(p)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            names.sort();
            for n in names {
                walk(&n, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    for p in [
        "/etc/passwd",
        "/etc/group",
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/ssh",
    ] {
        walk(Path::new(p), &mut out);
    }
    // Home directories are not overlaid on the machine: none may appear.
    let homes: Vec<String> = fs::read_dir("/home")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.insert(
        "/home (entries)".into(),
        (homes.join("\n").into_bytes(), 0, 0, 0),
    );
    out
}
