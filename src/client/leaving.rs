//! Before a release changes the system: build it and check that the new system still runs tiffin's client, so no release can switch a host off tiffin for good.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::rebuild::{self, Ended};

/// What a NixOS system that runs tiffin's client holds: the pull unit, its timer, and the
/// timer enabled (nixpkgs links every `wantedBy` unit into `<target>.wants/`).
pub const CLIENT_UNITS: [&str; 3] = [
    "etc/systemd/system/tiffin-pull.service",
    "etc/systemd/system/tiffin-pull.timer",
    "etc/systemd/system/timers.target.wants/tiffin-pull.timer",
];

/// What building the release showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Built {
    KeepsTiffin,
    /// The built system lacks this unit file: switching to it would end tiffin on this host.
    LeavesTiffin {
        missing: String,
    },
    Failed {
        message: String,
        log_tail: Vec<u8>,
    },
}

/// Runs the rebuild command with `build` in `work_dir` (it leaves `./result` there, as
/// `nixos-rebuild build` does) and looks for tiffin's client in the system it built.
pub fn build_and_check(argv: &[String], work_dir: &Path, log: &Path, timeout: Duration) -> Built {
    let _ = std::fs::remove_dir_all(work_dir);
    if let Err(e) = std::fs::create_dir_all(work_dir) {
        return Built::Failed {
            message: format!("creating {}: {e}", work_dir.display()),
            log_tail: Vec::new(),
        };
    }
    let outcome = rebuild::run_in(argv, Some(work_dir), log, timeout);
    let built = match outcome.ended {
        Ended::Failed(message) | Ended::LeftRunning(message) => Built::Failed {
            message,
            log_tail: outcome.log_tail,
        },
        Ended::Success => match toplevel(work_dir, &outcome.log_tail) {
            None => Built::Failed {
                message: format!(
                    "{} succeeded but left no ./result link and printed no store path",
                    argv.join(" ")
                ),
                log_tail: outcome.log_tail,
            },
            Some(system) => check(&system),
        },
    };
    let _ = std::fs::remove_dir_all(work_dir);
    built
}

/// The built system: `./result`, or the last absolute path the build printed.
fn toplevel(work_dir: &Path, log_tail: &[u8]) -> Option<PathBuf> {
    let result = work_dir.join("result");
    if let Ok(system) = std::fs::canonicalize(&result) {
        return Some(system);
    }
    String::from_utf8_lossy(log_tail)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('/'))
        .map(PathBuf::from)
}

/// Whether `system` runs tiffin's client (the paths are followed: `etc` is a store link).
pub fn check(system: &Path) -> Built {
    match CLIENT_UNITS.iter().find(|u| !system.join(u).exists()) {
        Some(missing) => Built::LeavesTiffin {
            missing: (*missing).to_owned(),
        },
        None => Built::KeepsTiffin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_without_the_enabled_timer_leaves_tiffin() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        for unit in &CLIENT_UNITS[..2] {
            let p = sys.join(unit);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "[Unit]\n").unwrap();
        }
        assert_eq!(
            check(sys),
            Built::LeavesTiffin {
                missing: CLIENT_UNITS[2].into()
            }
        );
        let wants = sys.join(CLIENT_UNITS[2]);
        std::fs::create_dir_all(wants.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("../tiffin-pull.timer", &wants).unwrap();
        assert_eq!(check(sys), Built::KeepsTiffin);
    }

    #[test]
    fn the_built_system_is_found_from_result_or_the_printed_path() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("system");
        std::fs::create_dir(&sys).unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        assert_eq!(
            toplevel(&work, format!("building…\n{}\n", sys.display()).as_bytes()),
            Some(sys.clone())
        );
        std::os::unix::fs::symlink(&sys, work.join("result")).unwrap();
        assert_eq!(
            toplevel(&work, b"no path here\n"),
            Some(sys.canonicalize().unwrap())
        );
        assert_eq!(toplevel(&dir.path().join("nowhere"), b"none\n"), None);
    }
}
