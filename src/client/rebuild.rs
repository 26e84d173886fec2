//! Runs the rebuild command (`nixos-rebuild` by default) on the current release, with a timeout, keeping its output's tail.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::activation::{Detach, UNIT};
use crate::core::names::HostName;
use crate::core::settings::Action;

/// How much of the rebuild's output is kept and uploaded.
pub const LOG_TAIL: u64 = 64 * 1024;

/// Substitutes `{action}`, `{config}` and `{host}` in every argument.
pub fn argv(template: &[String], action: Action, config: &Path, host: &HostName) -> Vec<String> {
    template
        .iter()
        .map(|a| {
            a.replace("{action}", action.as_str())
                .replace("{config}", &config.to_string_lossy())
                .replace("{host}", host.as_str())
        })
        .collect()
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Success,
    Failed(String),
    /// An activation in its own unit outlived the timeout: tiffin stopped waiting and left it
    /// to finish (killing it could leave the system half-switched).
    LeftRunning(String),
}

impl Ended {
    /// Why it did not succeed, whether it failed or is still running.
    pub fn failure(self) -> Option<String> {
        match self {
            Ended::Success => None,
            Ended::Failed(m) | Ended::LeftRunning(m) => Some(m),
        }
    }
}

/// What tiffin does with a command still running at its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtTimeout {
    /// Kill its whole process group (a build, a health check).
    Kill,
    /// Stop waiting: the command runs in a unit of its own, which tiffin leaves alone.
    LeaveRunning,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub ended: Ended,
    /// The last `LOG_TAIL` bytes of stdout and stderr, interleaved as written.
    pub log_tail: Vec<u8>,
}

/// Runs `argv` with stdout+stderr into `log_path` (truncated first), killing its process group at `timeout`.
pub fn run(argv: &[String], log_path: &Path, timeout: Duration) -> Outcome {
    run_in(argv, None, log_path, timeout)
}

/// `run`, in the directory `cwd` when given (`nixos-rebuild build` leaves `./result` there).
pub fn run_in(argv: &[String], cwd: Option<&Path>, log_path: &Path, timeout: Duration) -> Outcome {
    let child = Child {
        argv,
        shown: argv.join(" "),
        cwd,
        at_timeout: AtTimeout::Kill,
    };
    child.run(log_path, timeout)
}

/// Runs an activating command (`nixos-rebuild switch`, `switch-to-configuration`) as `detach`
/// says. In a unit, tiffin's timeout (or tiffin being killed) ends only the wait: the
/// activation goes on, and the outcome says so.
pub fn activate(argv: &[String], log_path: &Path, timeout: Duration, detach: &Detach) -> Outcome {
    if *detach == Detach::Direct {
        return run(argv, log_path, timeout);
    }
    let wrapped = detach.wrap(argv, log_path);
    let child = Child {
        argv: &wrapped,
        // The command, not the wrapper's long argv, in what the admin reads.
        shown: format!("{} (as {UNIT}.service)", argv.join(" ")),
        cwd: None,
        at_timeout: AtTimeout::LeaveRunning,
    };
    child.run(log_path, timeout)
}

/// One command to run and wait for.
struct Child<'a> {
    argv: &'a [String],
    /// How messages name it.
    shown: String,
    cwd: Option<&'a Path>,
    at_timeout: AtTimeout,
}

impl Child<'_> {
    fn run(&self, log_path: &Path, timeout: Duration) -> Outcome {
        let (argv, cwd, at_timeout) = (self.argv, self.cwd, self.at_timeout);
        let failed = |msg: String| Outcome {
            ended: Ended::Failed(msg),
            log_tail: Vec::new(),
        };
        let Some((program, args)) = argv.split_first() else {
            return failed("the rebuild command is empty".into());
        };
        // Emptied, then written in append mode: an activation in a unit appends its own output
        // (systemd's `append:`) while the wrapper writes its errors here.
        let log = match std::fs::File::create(log_path).and_then(|_| {
            std::fs::OpenOptions::new()
                .append(true)
                .read(true)
                .open(log_path)
        }) {
            Ok(f) => f,
            Err(e) => return failed(format!("cannot create {}: {e}", log_path.display())),
        };
        let (out, err) = match (log.try_clone(), log.try_clone()) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return failed(format!("{}: {e}", log_path.display())),
        };
        let start = Instant::now();
        let mut command = Command::new(program);
        if let Some(dir) = cwd {
            command.current_dir(dir);
        }
        let mut child = match command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group, so a timeout kills the whole build, not only the wrapper.
            .process_group(0)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return failed(format!("cannot run {program}: {e}")),
        };
        let ended = loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => break Ended::Success,
                Ok(Some(status)) => {
                    break Ended::Failed(format!("{} exited with {status}", self.shown));
                }
                Ok(None) if start.elapsed() >= timeout => {
                    // The process group holds the command, or only the wrapper waiting for a unit.
                    let group = nix::unistd::Pid::from_raw(child.id() as i32);
                    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                    let _ = child.wait();
                    let within = humantime::format_duration(timeout);
                    break match at_timeout {
                        AtTimeout::Kill => Ended::Failed(format!(
                            "{} did not finish within {within} and was killed",
                            self.shown
                        )),
                        AtTimeout::LeaveRunning => Ended::LeftRunning(format!(
                            "the activation did not finish within {within}; it goes on as {UNIT}.service, \
                         which tiffin leaves to finish (killing it could leave the system half-switched): \
                         see `systemctl status {UNIT}` and {}; the release is tried again after its backoff",
                            log_path.display()
                        )),
                    };
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => break Ended::Failed(format!("waiting for {program}: {e}")),
            }
        };
        Outcome {
            ended,
            log_tail: tail(log, LOG_TAIL),
        }
    }
}

fn tail(mut f: std::fs::File, limit: u64) -> Vec<u8> {
    let len = f.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(limit)));
    let mut buf = Vec::new();
    let _ = f.take(limit).read_to_end(&mut buf);
    buf
}

/// Runs the reboot command (`reboot_command`); returns once the system accepted the request.
pub fn run_reboot(argv: &[String]) -> Result<(), String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "reboot_command is empty".to_owned())?;
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} exited with {status}", argv.join(" ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_substituted() {
        let host: HostName = "web-1".parse().unwrap();
        let got = argv(
            &crate::client::config::RebuildCommand::default().0,
            Action::Boot,
            Path::new("/var/lib/tiffin/current/config"),
            &host,
        );
        assert_eq!(
            got,
            [
                "nixos-rebuild",
                "boot",
                "--flake",
                "/var/lib/tiffin/current/config#web-1"
            ]
        );
    }

    #[test]
    fn keeps_the_tail_and_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let script = "head -c 100000 /dev/zero | tr '\\0' a; echo; echo last line >&2; exit 3";
        let o = run(
            &["sh".into(), "-c".into(), script.into()],
            &log,
            Duration::from_secs(20),
        );
        assert!(
            matches!(&o.ended, Ended::Failed(m) if m.contains("exit status: 3")),
            "{:?}",
            o.ended
        );
        assert_eq!(o.log_tail.len() as u64, LOG_TAIL);
        assert!(o.log_tail.ends_with(b"last line\n"));
    }

    #[test]
    fn a_hung_rebuild_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let o = run(
            &["sh".into(), "-c".into(), "sleep 30 & sleep 30".into()],
            &dir.path().join("log"),
            Duration::from_millis(300),
        );
        assert!(t.elapsed() < Duration::from_secs(10));
        assert!(
            matches!(&o.ended, Ended::Failed(m) if m.contains("killed")),
            "{:?}",
            o.ended
        );
    }
}
