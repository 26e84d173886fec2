//! Running one command for the lab: its own process group, output (stdout and stderr, interleaved) in a log file, a timeout, and an early end on Ctrl-C.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::interrupt::Interrupt;
use super::procfs;

/// How a finished command ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    /// stdout and stderr as they interleaved.
    pub output: String,
}

impl Finished {
    /// The exit code, or 128 + the signal that killed it (as a shell reports it).
    pub fn code(&self) -> i32 {
        exit_code(self.status)
    }
}

pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("still running after {}s; killed it", after.as_secs())]
    TimedOut { after: Duration, output: String },
    #[error("interrupted")]
    Interrupted { output: String },
}

impl ExecError {
    pub fn output(&self) -> &str {
        match self {
            ExecError::Spawn { .. } => "",
            ExecError::TimedOut { output, .. } | ExecError::Interrupted { output } => output,
        }
    }
}

/// A started command.
#[derive(Debug)]
pub struct Running {
    child: Child,
    log: PathBuf,
    started: Instant,
}

impl Running {
    /// Starts `cmd` in a new process group (so Ctrl-C on the terminal reaches only the lab, which
    /// then ends it in order), with stdout and stderr appended to `log` and stdin from `stdin` or empty.
    pub fn spawn(mut cmd: Command, log: &Path, stdin: Option<&Path>) -> Result<Running, ExecError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let spawn_err = |source| ExecError::Spawn {
            program: program.clone(),
            source,
        };
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        let input = match stdin {
            Some(p) => Stdio::from(File::open(p).map_err(spawn_err)?),
            None => Stdio::null(),
        };
        cmd.stdin(input).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().map_err(spawn_err)?;
        Ok(Running {
            child,
            log: log.to_owned(),
            started: Instant::now(),
        })
    }

    /// The exit status if it ended.
    pub fn poll(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The output so far.
    pub fn output(&self) -> String {
        read_log(&self.log)
    }

    /// Waits for the end, at most `timeout`; on timeout or interrupt, kills the whole process group.
    pub fn wait(self, timeout: Duration, interrupt: &Interrupt) -> Result<Finished, ExecError> {
        let since = self.started;
        self.wait_since(since, timeout, interrupt)
    }

    /// [`Running::wait`], with the timeout counted from `since` (a signal sent to a command
    /// that ran for long: its stop timeout runs from the signal, not from its start).
    pub fn wait_since(
        mut self,
        since: Instant,
        timeout: Duration,
        interrupt: &Interrupt,
    ) -> Result<Finished, ExecError> {
        let mut nap = Duration::from_millis(1);
        loop {
            if let Some(status) = self.poll() {
                return Ok(Finished {
                    status,
                    output: self.output(),
                });
            }
            if interrupt.is_set() {
                self.kill();
                return Err(ExecError::Interrupted {
                    output: self.output(),
                });
            }
            if since.elapsed() >= timeout {
                self.kill();
                return Err(ExecError::TimedOut {
                    after: timeout,
                    output: self.output(),
                });
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(25));
        }
    }

    /// Waits up to 5 s for an end already under way (after a signal), then kills.
    pub fn wait_briefly(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = self.poll() {
                return Some(s);
            }
            if Instant::now() > deadline {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the command: every process of its group but the leader first, so that the leader
    /// (nsenter, for commands inside a machine) reaps its child before it ends. An orphan whose
    /// machine is being torn down would be handed to the host's init, and the machine's pid
    /// namespace would wait until that one reaps it.
    pub fn kill(&mut self) {
        let leader = self.child.id();
        for _ in 0..3 {
            for pid in procfs::group_members(leader) {
                if pid != leader {
                    procfs::signal(pid, Signal::SIGKILL);
                }
            }
            let deadline = Instant::now() + Duration::from_millis(300);
            while Instant::now() < deadline {
                if self.poll().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        procfs::signal_group(leader, Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A log file as text, at most its last 64 KiB.
pub fn read_log(path: &Path) -> String {
    const MAX: usize = 64 * 1024;
    let bytes = std::fs::read(path).unwrap_or_default();
    let tail = &bytes[bytes.len().saturating_sub(MAX)..];
    String::from_utf8_lossy(tail).into_owned()
}

/// Runs `cmd` to its end (see [`Running::spawn`]).
pub fn run(
    cmd: Command,
    log: &Path,
    stdin: Option<&Path>,
    timeout: Duration,
    interrupt: &Interrupt,
) -> Result<Finished, ExecError> {
    Running::spawn(cmd, log, stdin)?.wait(timeout, interrupt)
}

/// Quotes an argv for people to read and paste into a shell.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_interleaved_output_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let done = run(
            cmd,
            &log,
            None,
            Duration::from_secs(10),
            &Interrupt::default(),
        )
        .unwrap();
        assert_eq!(done.code(), 3);
        assert_eq!(done.output, "out\nerr\n");
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & echo started; wait"]);
        let t = Instant::now();
        let err = run(
            cmd,
            &log,
            None,
            Duration::from_millis(300),
            &Interrupt::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ExecError::TimedOut { .. }), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(err.output(), "started\n");
    }

    #[test]
    fn a_stop_timeout_runs_from_the_signal_not_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 1"]);
        let running = Running::spawn(cmd, &dir.path().join("log"), None).unwrap();
        // Long after its start, a 2 s timeout counted from now still lets it finish.
        std::thread::sleep(Duration::from_millis(600));
        let signalled = Instant::now();
        let done = running
            .wait_since(signalled, Duration::from_millis(500), &Interrupt::default())
            .unwrap();
        assert_eq!(done.code(), 0);
    }

    #[test]
    fn words_are_quoted_only_when_needed() {
        let argv = ["tiffin", "publish", "a b", "it's"].map(String::from);
        assert_eq!(shell_words(&argv), r"tiffin publish 'a b' 'it'\''s'");
    }
}
