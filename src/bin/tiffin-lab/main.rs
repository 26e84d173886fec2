//! `tiffin-lab`, the test harness (not part of the tiffin library): it runs vm-scenarios on one Linux machine, each lab machine a network namespace plus a mount namespace with its own /etc and /var.
//!
//! Layout: `cli` (commands) → `runner` (scenarios, progress, failures) →
//! `world` (the machines of one scenario: bridge, namespaces, sshd, fleet) →
//! `machine` (one machine: enter it, read and write its files) and `exec`
//! (run a command with a timeout, capture its output). `steps` and `access`
//! give each scenario step its meaning; `state` records running labs for
//! `down` and `shell`; `init` is the tiny pid 1 inside every machine.

mod access;
mod bench;
mod bench_capacity;
mod bench_watch;
mod boot;
mod cgroup;
mod cli;
mod dbus_standins;
mod exec;
mod init;
mod interrupt;
mod machine;
mod procfs;
mod runner;
mod scenario;
mod state;
mod steps;
mod systemd_pid1;
mod watch_steps;
mod world;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::LabCli::parse();
    tiffin::cli::init_tracing(cli.verbose);
    match cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// Errors of the lab harness itself (a failing scenario is not one of them: it is a result).
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{}: {message}", path.display())]
    Scenario { path: PathBuf, message: String },
    #[error("{0}")]
    Usage(String),
    #[error(
        "tiffin-lab must run as root: it creates network and mount namespaces (run it with sudo; nothing outside the lab's namespaces changes)"
    )]
    NotRoot,
    #[error("missing tools: {0}")]
    MissingTools(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Building or tearing down the lab failed; the message names the command and its output.
    #[error("{0}")]
    Setup(String),
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Failed(String),
}

impl LabError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> LabError {
        LabError::Io {
            what: what.into(),
            source,
        }
    }

    /// 0 ok, 1 a scenario or the lab failed, 2 bad usage or a bad scenario file, 130 interrupted.
    pub fn exit_code(&self) -> u8 {
        match self {
            LabError::Scenario { .. } | LabError::Usage(_) => 2,
            LabError::Interrupted => 130,
            _ => 1,
        }
    }
}
