//! The `tiffin` command line: argument definitions, dispatch, and the mapping of errors to exit codes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand};

use crate::fleet::{self, Fleet, FleetError, Severity};
use crate::names::HostName;
use crate::publish::{self, Outcome, PublishOptions};
use crate::status;

const ABOUT: &str = "Keep a fleet of NixOS machines up to date by pull.

A server keeps one configuration directory per host inside that host's own
SFTP chroot. Every host polls with `tiffin pull`, fetches only what changed,
verifies it, copies its extra files into the system, runs nixos-rebuild and
reports back. The server never runs commands on clients.";

const AFTER_HELP: &str = "Typical use:
  admin:   tiffin init fleet && cd fleet && tiffin host add web-1 --key ./web-1.pub && tiffin check
  server:  tiffin provision && tiffin publish && tiffin status
  client:  tiffin pull            (from a systemd timer; see the NixOS module)

Exit codes: 0 ok, 1 the operation failed, 2 bad usage or bad input,
3 (status) a host is failed, rolled back or stale.";

#[derive(Debug, Parser)]
#[command(name = "tiffin", version, about = ABOUT, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// More output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Where admin commands find the fleet repository.
#[derive(Debug, Clone, Args)]
pub struct RepoArgs {
    /// The fleet repository [default: the current directory]
    #[arg(long, env = "TIFFIN_FLEET", value_name = "DIR")]
    pub fleet: Option<PathBuf>,
}

impl RepoArgs {
    pub fn load(&self) -> Result<Fleet, Error> {
        let root = self.fleet.clone().unwrap_or_else(|| PathBuf::from("."));
        Ok(Fleet::load(&root)?)
    }
}

/// Where server commands find the fleet and the chroots.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Use this chroot root instead of fleet.toml's server.chroot_root (e.g. to publish into a test directory)
    #[arg(long, value_name = "DIR")]
    pub chroot_root: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a fleet repository with one example host
    #[command(
        long_about = "Create a fleet repository: fleet.toml, common/, templates/flake.nix and hosts/example/.\n\nDIR must not exist or be empty. Commit the result to git; it is the source of truth."
    )]
    Init {
        /// Where to create it
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Manage the hosts of the fleet
    #[command(subcommand)]
    Host(HostCommand),
    /// Validate the fleet repository; lists every problem with its path
    #[command(
        long_about = "Validate the whole fleet repository: fleet.toml, every host.toml and public key, host names, configuration.nix, and every symlink a publish would follow.\n\nEvery problem is listed with its path. Exits 2 if there is any error; warnings alone exit 0."
    )]
    Check {
        #[command(flatten)]
        fleet: RepoArgs,
    },
    /// Make OpenSSH serve every host: accounts, chroots, keys, sshd drop-in (root)
    #[command(
        long_about = "Make OpenSSH serve every host of the fleet (run as root on the server).\n\nFor each host: a system account <user_prefix><host> with its own group, a nologin shell and the password field '*' (no password, but not locked: sshd refuses key logins to locked accounts); the chroot <chroot_root>/<host> with releases/ and reports/, whose owners and modes are repaired when wrong; the host's key in <authorized_keys_dir>/<account>, marked `restrict`; and one `Match User` block per account in the sshd drop-in (SFTP only, chrooted, no forwarding, no TTY).\n\nThe plan is printed first, one line per change, with the drop-in's diff; --dry-run stops there. The new drop-in is checked with `sshd -t` before sshd is reloaded; if sshd refuses it, the previous drop-in stays. A second run prints \"nothing to do\". tiffin never edits sshd_config itself: if it lacks the Include for the drop-in, the line to add is printed.\n\nTIFFIN_SSHD_RELOAD=auto|systemd|pidfile|pidfile:/PATH|none chooses how sshd is reloaded (auto: systemctl when systemd runs, else SIGHUP to the pid in sshd's PidFile)."
    )]
    Provision {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Print what would change and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Lock the accounts of hosts gone from the fleet, remove their keys and move their chroots to <chroot_root>/.pruned/ (nothing is deleted)
        #[arg(long)]
        prune: bool,
    },
    /// Turn each host's directory into an immutable release in its chroot
    #[command(
        long_about = "Turn each host's directory into an immutable release in its chroot.\n\nA release is written under a temporary name, fsynced, renamed into releases/, and then CURRENT is swapped by rename, so a client never sees half a release. A host whose files and apply policy did not change gets no new release. Old releases are pruned (server.keep_releases), never the current one."
    )]
    Publish {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Hosts to publish [default: all]
        hosts: Vec<String>,
        /// Show what would be published and write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// One row per host: published and applied release, result, last seen, state
    #[command(
        long_about = "One row per host: published release, applied release, result, last seen, state.\n\nStates: up-to-date, pending (a newer release waits), failed, rolled-back, stale (no report for 3 poll intervals), never-seen.\nExits 3 when any host is failed, rolled-back or stale, so it can drive monitoring."
    )]
    Status {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Hosts to show [default: all]
        hosts: Vec<String>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// One poll of this host: check, download, verify, deploy files, rebuild, report (root)
    Pull(crate::pull::PullArgs),
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Add hosts/NAME/ from the templates
    #[command(
        long_about = "Add hosts/NAME/ from the templates: host.toml with the key, configuration.nix, flake.nix and common/ as symlinks, and an empty files/ tree."
    )]
    Add {
        /// Host name: a lowercase letter, then lowercase letters, digits or '-'
        name: String,
        /// The host's OpenSSH public key, or a file holding it (e.g. a copy of its /etc/ssh/ssh_host_ed25519_key.pub)
        #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
        key: String,
        #[command(flatten)]
        fleet: RepoArgs,
    },
}

/// Errors at the command layer, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Provision(#[from] crate::provision::ProvisionError),
    #[error(transparent)]
    Pull(#[from] crate::pull::PullError),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Fleet(FleetError::Io { .. }) => 1,
            Error::Fleet(_) | Error::Usage(_) => 2,
            Error::Failed(_) => 1,
            Error::Provision(e) => e.exit_code(),
            Error::Pull(e) => e.exit_code(),
        }
    }
}

pub fn exit_code_of(err: &Error) -> u8 {
    err.exit_code()
}

/// What a successful command returns to the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok,
    /// `status` found a host failed, rolled back or stale.
    Alarm,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        match e {
            Exit::Ok => ExitCode::SUCCESS,
            Exit::Alarm => ExitCode::from(3),
        }
    }
}

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn,tiffin=info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

/// "Now", overridable for tests with TIFFIN_NOW (RFC 3339), so snapshots of relative times are stable.
pub fn now() -> SystemTime {
    std::env::var("TIFFIN_NOW")
        .ok()
        .and_then(|s| crate::settings::parse_time(&s))
        .unwrap_or_else(SystemTime::now)
}

impl FleetArgs {
    pub fn load(&self) -> Result<Fleet, Error> {
        self.repo.load()
    }
    pub fn chroot_root(&self, fleet: &Fleet) -> PathBuf {
        self.chroot_root
            .clone()
            .unwrap_or_else(|| fleet.config.server.chroot_root.clone())
    }
}

/// Fails with every error of the fleet that concerns `hosts` (warnings are printed).
pub fn require_valid(fleet: &Fleet, hosts: &[HostName]) -> Result<(), Error> {
    let errors: Vec<_> = fleet.errors_for(hosts).cloned().collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(FleetError::Invalid(errors).into())
    }
}

pub fn run(cli: Cli) -> Result<Exit, Error> {
    match cli.command {
        Command::Init { dir } => {
            fleet::init(&dir)?;
            println!(
                "Created a fleet repository in {}.\nNext: `tiffin host add NAME --key KEY`, edit hosts/NAME/configuration.nix, then `tiffin check`.",
                dir.display()
            );
            Ok(Exit::Ok)
        }
        Command::Host(HostCommand::Add { name, key, fleet }) => {
            let fleet = fleet.load()?;
            let name: HostName = name.parse().map_err(FleetError::from)?;
            fleet::add_host(&fleet, &name, &key)?;
            println!(
                "Added hosts/{name}/ (account {} on the server).\nNext: edit hosts/{name}/configuration.nix, put extra files under hosts/{name}/files/, then `tiffin check`.",
                fleet.account_name(&name)
            );
            Ok(Exit::Ok)
        }
        Command::Check { fleet } => check(&fleet.load()?),
        Command::Publish {
            fleet: args,
            hosts,
            dry_run,
        } => {
            let fleet = args.load()?;
            let selected = fleet.select(&hosts)?;
            require_valid(&fleet, &selected)?;
            let opts = PublishOptions {
                chroot_root: args.chroot_root(&fleet),
                dry_run,
                keep_releases: fleet.config.server.keep_releases,
                now: now(),
                fault: None,
            };
            let _lock = if dry_run {
                None
            } else {
                Some(publish::lock_chroot_root(&opts.chroot_root).map_err(|e| {
                    Error::Failed(format!("chroot root {}: {e}", opts.chroot_root.display()))
                })?)
            };
            publish_command(&fleet, &selected, &opts)
        }
        Command::Status {
            fleet: args,
            hosts,
            json,
        } => {
            let fleet = args.load()?;
            let selected = fleet.select(&hosts)?;
            let now = now();
            let rows = status::collect(&fleet, &selected, &args.chroot_root(&fleet), now);
            if json {
                print!("{}", status::render_json(&rows));
            } else {
                let colour =
                    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                print!("{}", status::render_table(&rows, now, colour));
            }
            Ok(if rows.iter().any(|r| r.state.is_alarming()) {
                Exit::Alarm
            } else {
                Exit::Ok
            })
        }
        Command::Provision {
            fleet: args,
            dry_run,
            prune,
        } => crate::provision::command(&args, dry_run, prune),
        Command::Pull(args) => crate::pull::command(&args),
    }
}

fn check(fleet: &Fleet) -> Result<Exit, Error> {
    let mut problems = fleet.problems.clone();
    for name in fleet.host_dirs() {
        if let Err(mut found) = crate::release::resolve_host_tree(&fleet.root, &name) {
            problems.append(&mut found);
        }
    }
    problems.sort_by(|a, b| (a.severity, &a.path).cmp(&(b.severity, &b.path)));
    for p in &problems {
        println!("{p}");
    }
    let errors = problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    let warnings = problems.len() - errors;
    if errors > 0 {
        return Err(Error::Usage(format!(
            "the fleet repository has {errors} error(s) and {warnings} warning(s)"
        )));
    }
    println!(
        "ok: {} host(s), {warnings} warning(s) in {}",
        fleet.hosts.len(),
        display_root(&fleet.root)
    );
    Ok(Exit::Ok)
}

fn display_root(root: &Path) -> String {
    if root == Path::new(".") {
        "the current directory".into()
    } else {
        root.display().to_string()
    }
}

fn publish_command(
    fleet: &Fleet,
    hosts: &[HostName],
    opts: &PublishOptions,
) -> Result<Exit, Error> {
    let (mut failed, mut invalid) = (0, 0);
    for (name, result) in publish::publish_all(fleet, hosts, opts) {
        match result {
            Ok(Outcome::Unchanged { id, seq }) => {
                println!("{name}: unchanged (release #{seq} {})", id.short());
            }
            Ok(Outcome::Published {
                id,
                seq,
                change,
                pruned,
                dry_run,
            }) => {
                let verb = if dry_run {
                    "would publish"
                } else {
                    "published"
                };
                let pruned = if pruned > 0 {
                    format!(", pruned {pruned} old release(s)")
                } else {
                    String::new()
                };
                println!(
                    "{name}: {verb} release #{seq} {} ({change}){pruned}",
                    id.short()
                );
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
                invalid += usize::from(matches!(e, publish::PublishError::Invalid { .. }));
            }
        }
    }
    if invalid > 0 {
        return Err(Error::Usage(format!(
            "{failed} of {} host(s) not published: fix the fleet repository (`tiffin check` lists every problem); each failed host keeps its previous release",
            hosts.len()
        )));
    }
    if failed > 0 {
        return Err(Error::Failed(format!(
            "{failed} of {} host(s) failed to publish; the others are done, and each failed host keeps its previous release",
            hosts.len()
        )));
    }
    Ok(Exit::Ok)
}
