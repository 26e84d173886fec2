//! Integration tests of the `tiffin` binary, one module per area, sharing the fixture below.

mod fleet;
mod lab;
mod provision;
mod publish;
mod status;

use std::fs;
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
        if matches!(args.first(), Some(&"publish") | Some(&"status")) {
            cmd.arg("--chroot-root").arg(self.chroots());
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
