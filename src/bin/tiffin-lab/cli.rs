//! The `tiffin-lab` command line: run, demo, shell, down (and the hidden machine-init).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::LabError;
use super::init::{self, InitArgs};
use super::interrupt::Interrupt;
use super::machine;
use super::runner::{self, Afterwards, Epilogue, Options};
use super::scenario::{self, Scenario};
use super::state::{self, MachineState, RunState};

const ABOUT: &str =
    "The tiffin lab: a server and clients on this one Linux machine, with the real OpenSSH.

Every lab machine is a network namespace on a private bridge (192.0.2.0/24)
plus a mount namespace in which /etc, /var, /root and /home are copy-on-write
overlays, /run and /tmp are private, and everything else is read-only. The
server runs the real sshd as `tiffin provision` configures it; clients run
the real `tiffin pull` (nixos-rebuild is a recording stand-in). Accounts exist
only in the server's view, deployed files only in a client's view, and the
machine running the lab is left exactly as it was. Needs root.";

const AFTER_HELP: &str = "First contact:
  sudo target/debug/tiffin-lab demo               a 3-client fleet: provision, publish, pull, status
  sudo target/debug/tiffin-lab run vm-scenarios/  every scenario, each in a fresh lab

Investigate a failure:
  sudo target/debug/tiffin-lab run --keep vm-scenarios/isolation.toml
  sudo target/debug/tiffin-lab shell client1      (then: sftp, cat /etc/tiffin/client.toml …)
  sudo target/debug/tiffin-lab down

Exit codes: 0 every scenario passed, 1 a scenario or the lab failed,
2 bad usage or a bad scenario file, 130 interrupted (the lab is torn down first).";

#[derive(Debug, Parser)]
#[command(name = "tiffin-lab", version, about = ABOUT, after_help = AFTER_HELP, max_term_width = 100)]
pub struct LabCli {
    /// More log output from tiffin-lab itself (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Run scenarios (files, or directories of *.toml files), each in a fresh lab
    #[command(
        long_about = "Run scenarios (files, or directories of *.toml files), one after the other, each in a fresh lab that is torn down afterwards.\n\nEvery scenario file is checked before the first lab starts. A failing step stops its scenario and is shown in full: the machine, the command, its exit status and its output. The scenario format is in docs/formats.md (\"Lab scenarios\")."
    )]
    Run {
        /// Scenario files or directories
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Leave the lab up afterwards (the first failing scenario's, else the last one's) for `tiffin-lab shell`
        #[arg(long)]
        keep: bool,
    },
    /// The first thing to try: a 3-client fleet provisioned, published, pulled, and its `tiffin status`
    Demo {
        /// Leave the lab up afterwards for `tiffin-lab shell`
        #[arg(long)]
        keep: bool,
    },
    /// Enter a machine of a kept lab: an interactive shell, or the command after `--`
    #[command(
        long_about = "Enter a machine of a kept lab (`run --keep`, `demo --keep`): an interactive shell, or the command after `--`.\n\nInside, `tiffin` is on PATH, and on the server TIFFIN_FLEET names the fleet repository. Clients hold their key and client.toml in /etc/tiffin/."
    )]
    Shell {
        /// server, client1, …
        machine: String,
        /// Which lab, when more than one is up
        #[arg(long, value_name = "RUN")]
        run: Option<String>,
        /// A command to run instead of a shell
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Remove kept labs, and whatever a killed tiffin-lab left behind
    Down {
        /// Only this run [default: every lab whose tiffin-lab is no longer running]
        run: Option<String>,
    },
    /// Measure the pull: a no-change poll against OpenSSH's sftp, a 1-file delta of a 500-file tree, peak RSS
    #[command(
        long_about = "Measure `tiffin pull` in a lab, against the same sshd in the same run:\n(a) a no-change pull against OpenSSH's sftp doing `ls -l /CURRENT`: median wall time over --polls runs, and bytes on the client's eth0 (rx+tx, frames included);\n(b) the bytes a pull moves when 1 file of a 500-file ~2 MB configuration changes, against the full tree;\n(c) the client's peak RSS during the full pull (/usr/bin/time -v).\n\nPrints a table, then as the last line:\npoll_ratio=<tiffin/openssh wall> poll_bytes=<rx+tx> delta_fraction=<changed bytes/full tree bytes> peak_rss_kib=<n>"
    )]
    Bench {
        /// No-change polls per tool (the median is reported)
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        polls: u32,
        #[command(flatten)]
        capacity: super::bench_capacity::CapacityArgs,
        /// Measure watch mode instead: publish→report latency of a watching client (median of 11), and per idle check the bytes on the client's link and the server's sshd CPU; the server's memory per kept session; the client's RSS growth over 10,000 checks. Last line: watch_latency_ms=… watch_check_bytes=… watch_server_cpu_us=… watch_server_kib=… watch_rss_growth_kib=…
        #[arg(long)]
        watch: bool,
        /// What runs as the machines' PID 1 while measuring: the lab's own init, or the real
        /// systemd with the units the modules render (docs/lab.md)
        #[arg(long, value_enum, default_value = "lab")]
        init: super::scenario::Init,
    },
    /// Internal: pid 1 of a lab machine
    #[command(hide = true)]
    MachineInit(InitArgs),
    /// Internal: a D-Bus stand-in (NetworkManager, UPower, a recording notification server)
    #[command(hide = true)]
    DbusStandin(super::dbus_standins::StandinArgs),
}

/// The demo: the quickstart as a scenario.
const DEMO: &str = include_str!("demo.toml");

/// Runs a command line; the result is the process's exit code.
pub fn run(cli: LabCli) -> Result<u8, LabError> {
    match cli.command {
        LabCommand::MachineInit(args) => init::main(&args),
        LabCommand::DbusStandin(args) => super::dbus_standins::main(&args).map_err(LabError::Usage),
        LabCommand::Run { paths, keep } => {
            let scenarios = load_scenarios(&paths)?;
            preflight()?;
            let opts = Options {
                afterwards: afterwards(keep),
                epilogue: Epilogue::Nothing,
            };
            run_and_judge(&scenarios, &opts)
        }
        LabCommand::Demo { keep } => {
            let demo = Scenario::parse(std::path::Path::new("demo"), DEMO)?;
            preflight()?;
            let opts = Options {
                afterwards: afterwards(keep),
                epilogue: Epilogue::StatusAndRecap,
            };
            run_and_judge(&[demo], &opts)
        }
        LabCommand::Bench { capacity, init, .. } if capacity.capacity => {
            bench_capacity(&capacity, init)
        }
        LabCommand::Bench {
            watch: true, init, ..
        } => bench_watch(init),
        LabCommand::Bench { polls, init, .. } => bench(polls, init),
        LabCommand::Shell {
            machine,
            run,
            command,
        } => shell(&machine, run.as_deref(), &command),
        LabCommand::Down { run } => down(run.as_deref()),
    }
}

fn afterwards(keep: bool) -> Afterwards {
    if keep {
        Afterwards::Keep
    } else {
        Afterwards::TearDown
    }
}

/// Every scenario file, all checked before any lab starts: one bad file and nothing runs.
fn load_scenarios(paths: &[PathBuf]) -> Result<Vec<Scenario>, LabError> {
    let files = scenario::collect(paths)?;
    let mut scenarios = Vec::new();
    let mut problems = Vec::new();
    for f in &files {
        match Scenario::load(f) {
            Ok(s) => scenarios.push(s),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(scenarios)
    } else {
        Err(LabError::Usage(format!(
            "{} scenario file(s) have problems; nothing ran:\n{}",
            problems.len(),
            problems.join("\n")
        )))
    }
}

fn bench(polls: u32, init: super::scenario::Init) -> Result<u8, LabError> {
    preflight()?;
    if !std::path::Path::new("/usr/bin/time").is_file() {
        return Err(LabError::MissingTools(
            "/usr/bin/time (package time), for the client's peak RSS".into(),
        ));
    }
    super::bench::bench(polls, bench_lab(init)?)
}

fn bench_capacity(
    args: &super::bench_capacity::CapacityArgs,
    init: super::scenario::Init,
) -> Result<u8, LabError> {
    preflight()?;
    super::bench_capacity::bench(args, bench_lab(init)?)
}

fn bench_watch(init: super::scenario::Init) -> Result<u8, LabError> {
    preflight()?;
    super::bench_watch::bench(11, bench_lab(init)?)
}

fn bench_lab(init: super::scenario::Init) -> Result<super::bench::Lab, LabError> {
    let interrupt = Interrupt::install()
        .map_err(|e| LabError::io("installing the SIGINT/SIGTERM handler", e))?;
    Ok(super::bench::Lab { interrupt, init })
}

fn down(run: Option<&str>) -> Result<u8, LabError> {
    require_root()?;
    let report = state::down(run);
    for r in &report.removed {
        println!("removed {r}");
    }
    for s in &report.skipped {
        println!("left alone: {s}");
    }
    if report.removed.is_empty() && report.skipped.is_empty() && report.problems.is_empty() {
        println!("nothing to remove: no lab is up");
    }
    if report.problems.is_empty() {
        Ok(0)
    } else {
        Err(LabError::Failed(format!(
            "could not remove everything:\n  {}",
            report.problems.join("\n  ")
        )))
    }
}

fn run_and_judge(scenarios: &[Scenario], opts: &Options) -> Result<u8, LabError> {
    let interrupt = Interrupt::install()
        .map_err(|e| LabError::io("installing the SIGINT/SIGTERM handler", e))?;
    let summary = runner::run_scenarios(scenarios, opts, interrupt)?;
    if summary.interrupted() {
        return Err(LabError::Interrupted);
    }
    let failed = summary.failed();
    if failed.is_empty() {
        Ok(0)
    } else {
        Err(LabError::Failed(format!(
            "{} of {} scenario(s) failed: {}",
            failed.len(),
            scenarios.len(),
            failed.join(", ")
        )))
    }
}

fn require_root() -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// Root and the system tools the lab drives, checked before anything is created.
fn preflight() -> Result<(), LabError> {
    require_root()?;
    let tools = [
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("ssh", "openssh-client"),
        ("sftp", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("sshd", "openssh-server"),
        ("useradd", "passwd"),
    ];
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(PathBuf::from)
        .collect();
    let missing: Vec<String> = tools
        .iter()
        .filter(|(t, _)| !dirs.iter().any(|d| d.join(t).is_file()))
        .map(|(t, pkg)| format!("{t} (package {pkg})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::MissingTools(missing.join(", ")))
    }
}

fn shell(name: &str, run: Option<&str>, command: &[String]) -> Result<u8, LabError> {
    require_root()?;
    let lab = the_lab(run)?;
    let m = the_machine(&lab, name)?;
    let mut env: Vec<(String, String)> = m.env.clone().into_iter().collect();
    if let Ok(term) = std::env::var("TERM") {
        env.push(("TERM".into(), term));
    }
    let argv: Vec<String> = if command.is_empty() {
        eprintln!(
            "tiffin-lab: entering {name} ({}) of run {}; `exit` to leave",
            m.address, lab.run
        );
        vec![interactive_shell().into(), "-i".into()]
    } else {
        command.to_vec()
    };
    let status = machine::enter_command(m.init_pid, &env, "/root", &argv)
        .status()
        .map_err(|e| LabError::io("running nsenter", e))?;
    Ok(u8::try_from(super::exec::exit_code(status)).unwrap_or(1))
}

/// The one lab that is up (kept, or still run by its tiffin-lab), or the one `--run` names.
fn the_lab(run: Option<&str>) -> Result<RunState, LabError> {
    let mut labs: Vec<RunState> = RunState::load_all()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|s| run.is_none_or(|r| r == s.run))
        .filter(|s| !s.machines.is_empty() && (s.kept || s.owner_alive()))
        .collect();
    match labs.len() {
        0 => Err(LabError::Usage(match run {
            Some(r) => format!("no lab with run id {r} is up (see /run/tiffin-lab/)"),
            None => "no lab is up: start one with `tiffin-lab demo --keep` or `tiffin-lab run --keep PATH`".into(),
        })),
        1 => Ok(labs.remove(0)),
        n => Err(LabError::Usage(format!(
            "{n} labs are up (runs {}): choose one with --run RUN",
            labs.iter()
                .map(|s| s.run.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A machine of the lab whose pid 1 still runs.
fn the_machine<'a>(lab: &'a RunState, name: &str) -> Result<&'a MachineState, LabError> {
    let Some(m) = lab.machines.iter().find(|m| m.name == name) else {
        return Err(LabError::Usage(format!(
            "run {} has no machine {name:?} (machines: {})",
            lab.run,
            lab.machines
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    if !super::procfs::is_same_process(m.init_pid, m.init_start) {
        return Err(LabError::Failed(format!(
            "machine {name} of run {} is gone (its pid 1 {} no longer runs); clean up with `tiffin-lab down`",
            lab.run, m.init_pid
        )));
    }
    Ok(m)
}

fn interactive_shell() -> &'static str {
    if std::path::Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    }
}
