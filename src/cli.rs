//! The `tiffin` command line: the top-level parser and the dispatch to one module per command.

use clap::{Parser, Subcommand};

use crate::command::error::{Error, Exit};
use crate::command::{
    check, confirm_boot, host, init, notify, pause, provision, publish, pull, reboot, rollout,
    sign, status, trigger, verify,
};

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
3 (status) a host is failed, rolled back, quarantined, expired, unverifiable,
stale, unreadable or drifted, or the rollout is halted or reverted.";

#[derive(Debug, Parser)]
#[command(name = "tiffin", version, about = ABOUT, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// More output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a fleet repository with one example host
    #[command(
        long_about = "Create a fleet repository: fleet.toml, common/, templates/flake.nix and hosts/example/.\n\nDIR must not exist or be empty. Commit the result to git; it is the source of truth."
    )]
    Init(init::Args),
    /// Manage the hosts of the fleet
    #[command(subcommand)]
    Host(host::HostCommand),
    /// Validate the fleet repository; lists every problem with its path
    #[command(
        long_about = "Validate the whole fleet repository: fleet.toml, every host.toml and public key, host names, configuration.nix, and every symlink a publish would follow.\n\nEvery problem is listed with its path. Exits 2 if there is any error; warnings alone exit 0."
    )]
    Check(check::Args),
    /// Sign what the hosts of a signed fleet may apply, with your SSH key (admin)
    #[command(long_about = sign::LONG_ABOUT)]
    Sign(sign::Args),
    /// Make OpenSSH serve every host: accounts, chroots, keys, sshd drop-in (root)
    #[command(
        long_about = "Make OpenSSH serve every host of the fleet (run as root on the server).\n\nFor each host: a system account <user_prefix><host> with its own group, a nologin shell and the password field '*' (no password, but not locked: sshd refuses key logins to locked accounts); the chroot <chroot_root>/<host> with releases/ and reports/, whose owners and modes are repaired when wrong; the host's key in <authorized_keys_dir>/<account>, marked `restrict`; and one `Match User` block per account in the sshd drop-in (SFTP only, chrooted, no forwarding, no TTY).\n\nThe plan is printed first, one line per change, with the drop-in's diff; --dry-run stops there. The new drop-in is checked with `sshd -t` before sshd is reloaded; if sshd refuses it, the previous drop-in stays. A second run prints \"nothing to do\". tiffin never edits sshd_config itself: if it lacks the Include for the drop-in, the line to add is printed.\n\nTIFFIN_SSHD_RELOAD=auto|systemd|pidfile|pidfile:/PATH|none chooses how sshd is reloaded (auto: systemctl when systemd runs, else SIGHUP to the pid in sshd's PidFile)."
    )]
    Provision(provision::Args),
    /// Turn each host's directory into an immutable release in its chroot
    #[command(
        long_about = "Turn each host's directory into an immutable release in its chroot.\n\nA release is written under a temporary name, fsynced, renamed into releases/, and then CURRENT is swapped by rename, so a client never sees half a release. A host whose files and apply policy did not change gets no new release. Old releases are pruned (server.keep_releases), never the current one.\n\nA host with [apply] build = \"server\" has its system built here first (server.build on its config/, signed with server.signing_key) and its closure shipped in the release as a binary cache (docs/prebuilt.md); a failing build fails that host only, which keeps its current release."
    )]
    Publish(publish::Args),
    /// One row per host: published and applied release, result, last seen, state
    #[command(
        long_about = "One row per host: published release, applied release, result, last seen, state.\n\nStates: up-to-date, pending (a newer release waits), failed, rolled-back, stale (no report received for 3 poll intervals, by the server's clock), never-seen, unreadable (its CURRENT, release or report cannot be read or trusted), paused (`tiffin pause` holds it; it still reports), drifted (a host built on the server, [apply] build = \"server\", runs another system than the published toplevel), quarantined (the host rolled the published release back and holds it back until a newer one or `tiffin trigger HOST --retry`), expired and unverifiable (a signed fleet: the published release's statement has expired, or does not verify).\nExits 3 when any host is failed, rolled-back, quarantined, expired, unverifiable, stale, unreadable or drifted, so it can drive monitoring. NOTE shows the error, or a warning (the client's clock is off, reports/ holds more than the report and its log).\n\nOne HOST alone tells its story: published and applied releases with seq and time, the last result and error, the running system, a pending reboot, a pause, the next retry, and the tail of its reports/rebuild.log.\n\n--format prometheus prints the same as metrics (tiffin_host_state{host,state} and friends, see docs/operations.md); --output FILE writes atomically, for node_exporter's textfile collector."
    )]
    Status(status::Args),
    /// Re-hash every stored release against its MANIFEST; --repair replaces damaged ones
    #[command(
        long_about = "Re-hash every stored release of each host against its MANIFEST and name every file that changed on the server after publishing (a disk error, a hand edit). Exits 1 if any is damaged.\n\nWith --repair (as root, like publish): a host whose current release is damaged gets a fresh release published from the fleet repository (a new seq, every file copied, none linked), and damaged older releases are removed. publish itself never hard-links a stored file whose content no longer matches its hash."
    )]
    Verify(verify::Args),
    /// One poll of this host: check, download, verify, deploy files, rebuild, report (root)
    #[command(long_about = pull::LONG_ABOUT)]
    Pull(pull::Args),
    /// At boot: confirm the release this boot runs, or go back to the previous one (root)
    #[command(long_about = confirm_boot::LONG_ABOUT)]
    ConfirmBoot(confirm_boot::Args),
    /// Hold this host's releases back for a while; pulls still report (root)
    #[command(long_about = pause::PAUSE_ABOUT)]
    Pause(pause::PauseArgs),
    /// End a pause of this host now; the next pull applies the current release (root)
    #[command(long_about = pause::RESUME_ABOUT)]
    Resume(pause::ResumeArgs),
    /// Ask hosts to poll now, reapply (--reapply), or retry a quarantined release (--retry)
    #[command(long_about = trigger::LONG_ABOUT)]
    Trigger(trigger::Args),
    /// Roll a publish out in waves: step (from a timer), status, pause, resume, cancel, revert
    #[command(long_about = rollout::LONG_ABOUT)]
    Rollout(rollout::Args),
    /// The restart this computer waits for; --postpone holds it back (the person at it)
    #[command(long_about = reboot::LONG_ABOUT)]
    Reboot(reboot::Args),
    /// Desktop notifications to the people logged in (started by pull; internal)
    #[command(hide = true)]
    Notify(notify::Args),
}

pub fn run(cli: Cli) -> Result<Exit, Error> {
    match &cli.command {
        Command::Init(args) => init::run(args),
        Command::Host(cmd) => host::run(cmd),
        Command::Check(args) => check::run(args),
        Command::Sign(args) => sign::run(args),
        Command::Publish(args) => publish::run(args),
        Command::Status(args) => status::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Provision(args) => provision::run(args),
        Command::Pull(args) => pull::run(args),
        Command::ConfirmBoot(args) => confirm_boot::run(args),
        Command::Pause(args) => pause::pause(args),
        Command::Resume(args) => pause::resume(args),
        Command::Trigger(args) => trigger::run(args),
        Command::Rollout(args) => rollout::run(args),
        Command::Reboot(args) => reboot::run(args),
        Command::Notify(args) => notify::run(args),
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
        // Colours only for a person at a terminal, not in the journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
}
