//! `tiffin pull`: load the client configuration, take the lock, run one poll over SSH and say what it did.

use std::path::PathBuf;
use std::time::Duration;

use crate::client::config::ClientConfig;
use crate::client::connect::SshRemote;
use crate::client::resume::{self, Retrying};
use crate::client::watch::{self, Pace, SshConnector, Stop, WatchOptions};
use crate::client::{PollOptions, Polled, PullError, poll, rebuild, state};
use crate::command::error::{Error, Exit};
use crate::core::durable::Lock;
use crate::core::settings::Interval;

pub const LONG_ABOUT: &str =
    "One poll of this host, normally run by the systemd timer of the NixOS module.

Connects to the server (its host key must be the one pinned in the configuration),
reads /CURRENT in this host's chroot and, when it names a release not applied yet:
downloads only the files whose content this host does not already hold, verifies
every file against the release's MANIFEST and the MANIFEST against the release id,
copies files/ into root (atomically per file, never through a symlink), points
state_dir/current at the release, runs the rebuild command on state_dir/current/config
and uploads reports/status.toml and reports/rebuild.log. An unchanged release costs
one read of /CURRENT and one report upload.

After activating a release (switch, test), the report goes out over a new SSH
connection: the kept one never counts. If no new connection reaches the server within
confirm_timeout (client.toml or the release's [apply], default 3m), the previous release
is rolled back and the new one quarantined: it is not applied again until a newer release
is published or `tiffin trigger HOST --retry` (a failed health check quarantines too). A
release applied with boot is confirmed after the reboot (`tiffin confirm-boot`).
[apply] confirm = false turns this off.

A release that failed otherwise is retried with exponential backoff (backoff_initial
doubling up to backoff_max); a newer release is tried at once. Exit codes: 0 applied or
unchanged, 1 failed or quarantined (the previous system keeps running), 2 bad
configuration.

A second line in /CURRENT is a trigger from `tiffin trigger` on the server: `pull` polls
now despite a backoff, `reapply` deploys files/ again and reruns the rebuild even though
the release is applied. Each trigger is handled once and named in the report.

With --retry-for DURATION, a pull that cannot reach the server (no network yet after a
resume, no answer) or finds another pull running tries again after 1s, 2s, 4s, then every
5s, until DURATION is spent; such a failure never counts against a release. The NixOS
module runs `tiffin pull --retry-for 5m` as tiffin-resume.service after every suspend or
hibernation, and the user's button runs `tiffin pull --now --retry-for 1m`.

With --watch, the client keeps one SSH session open and reads /CURRENT every
watch_interval (client.toml, default 5s): a new release or trigger is applied within one
interval, over the same session. The lock is held only while applying, so a one-shot
`tiffin pull` still works while a watcher idles. While idle, a heartbeat report goes out
once per poll_interval (default 15m). A lost session is reconnected with backoff (about 1s,
doubling up to 60s, jittered), the pinned host key checked each time. SIGTERM exits at once
when idle, after the report when applying. The NixOS module runs it as tiffin-watch.service
(services.tiffin.client.watch.enable).";

/// Options of `tiffin pull`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The client configuration (TOML, or JSON when the name ends in .json)
    #[arg(long, default_value = "/etc/tiffin/client.toml", value_name = "FILE")]
    pub config: PathBuf,
    /// Check the configuration, print what it would do, and exit (0 valid, 2 not)
    #[arg(long)]
    pub validate: bool,
    /// Retry a failed release now instead of waiting for its backoff
    #[arg(long)]
    pub now: bool,
    /// Apply the current release even if its seq is not newer than the applied one (e.g. after restoring the server from a backup)
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Keep the session open and apply every new release or trigger within watch_interval; runs until SIGTERM
    #[arg(long, conflicts_with_all = ["validate", "now", "allow_downgrade"])]
    pub watch: bool,
    /// With --watch: exit after an apply when PATH resolves to another file than at start (repeatable; the NixOS unit passes its own unit file, so a switch that updates tiffin hands over to the new version)
    #[arg(long, value_name = "PATH", requires = "watch")]
    pub exit_on_change: Vec<PathBuf>,
    /// Keep trying, quickly (1 s doubling to 5 s), while the server cannot be reached or another pull holds the lock, for up to DURATION, like "5m" (the NixOS module's tiffin-resume.service after a suspend, and the user's button)
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["validate", "watch"])]
    pub retry_for: Option<Interval>,
    /// With --watch: stop after N checks, printing memory and descriptors after 10 and N (for the bench)
    #[arg(long, value_name = "N", requires = "watch", hide = true)]
    pub checks: Option<u64>,
    /// With --watch: check every MS milliseconds instead of watch_interval (for the bench)
    #[arg(long, value_name = "MS", requires = "watch", hide = true)]
    pub check_interval_ms: Option<u64>,
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    let cfg = ClientConfig::load(&args.config).map_err(PullError::from)?;
    if args.validate {
        validate(args, &cfg);
        return Ok(Exit::Ok);
    }
    state::prepare_state_dir(&cfg.state_dir).map_err(PullError::from)?;
    if args.watch {
        return watch(args, &cfg);
    }
    let opts = PollOptions {
        retry_now: args.now,
        allow_downgrade: args.allow_downgrade,
        system_profile: cfg.system_profile.clone(),
        ..PollOptions::default()
    };
    // Held until the reboot below, like the poll.
    let (_lock, polled) = match args.retry_for {
        Some(budget) => retrying(&cfg, &opts, budget)?,
        None => locked_poll(&cfg, &opts)?,
    };
    match polled {
        Polled::Unchanged { id, seq } => {
            println!("{}: unchanged (release #{seq} {})", cfg.host, id.short());
        }
        Polled::Applied {
            id,
            seq,
            fetch,
            deployed,
            reboot,
        } => {
            println!(
                "{}: applied release #{seq} {} (downloaded {} file(s), {} bytes; reused {} local file(s); files/: {} written, {} unchanged, {} removed{})",
                cfg.host,
                id.short(),
                fetch.downloaded_files,
                fetch.downloaded_bytes,
                fetch.reused_files,
                deployed.written,
                deployed.unchanged,
                deployed.removed,
                if deployed.kept.is_empty() {
                    String::new()
                } else {
                    format!(", {} dropped but kept", deployed.kept.len())
                }
            );
            if reboot {
                self::reboot(&cfg)?;
            }
        }
        Polled::Paused { id, until, reason } => {
            println!(
                "{}: paused until {until}{}: release {} not applied (`tiffin resume` ends the pause)",
                cfg.host,
                reason.map(|r| format!(" ({r})")).unwrap_or_default(),
                id.short()
            );
        }
        Polled::RebootDue { id, seq } => {
            println!(
                "{}: unchanged (release #{seq} {}); the reboot it waits for is due: its window is open",
                cfg.host,
                id.short()
            );
            self::reboot(&cfg)?;
        }
        Polled::Deferred { id, why } => {
            println!(
                "{}: release {} deferred ({}): checked and reported, not downloaded (`tiffin pull --now` takes it anyway)",
                cfg.host,
                id.short(),
                why.as_str()
            );
        }
    }
    Ok(Exit::Ok)
}

/// `--validate`: the summary, and a note when the identity cannot be read from here.
fn validate(args: &Args, cfg: &ClientConfig) {
    print!("{}: valid\n{}", args.config.display(), cfg.summary());
    if let Err(e) = std::fs::File::open(&cfg.identity) {
        println!(
            "note: the identity {} cannot be read here ({e}); pull will need it",
            cfg.identity.display()
        );
    }
}

/// The lock, then one poll.
fn locked_poll(cfg: &ClientConfig, opts: &PollOptions) -> Result<(Lock, Polled), PullError> {
    let lock = state::lock(&cfg.state_dir)?;
    Ok((lock, poll_over_ssh(cfg, opts)?))
}

/// `--retry-for`: attempts until one reaches the server and gets the lock, or the budget is
/// spent. A laptop just resumed has no network for a while; the timer is too slow a fallback.
fn retrying(
    cfg: &ClientConfig,
    opts: &PollOptions,
    budget: Interval,
) -> Result<(Lock, Polled), PullError> {
    let started = std::time::Instant::now();
    let mut retries = Retrying::new(budget.0);
    loop {
        let e = match locked_poll(cfg, opts) {
            Err(e) if resume::worth_retrying(&e) => e,
            done => return done,
        };
        let Some(wait) = retries.next_wait(started.elapsed()) else {
            tracing::warn!(
                "{}: gave up after {} attempt(s) in {}: the timer tries again",
                cfg.host,
                retries.failed(),
                humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
            );
            return Err(e);
        };
        tracing::warn!(
            "{}: {}; trying again in {}",
            cfg.host,
            resume::why_waiting(&e),
            humantime::format_duration(wait)
        );
        std::thread::sleep(wait);
    }
}

/// One SSH session, one poll; the debug line counts what crossed the SFTP channel.
fn poll_over_ssh(cfg: &ClientConfig, opts: &PollOptions) -> Result<Polled, PullError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PullError::Runtime)?;
    runtime.block_on(async {
        let mut remote = match SshRemote::connect(cfg).await {
            Ok(remote) => remote,
            Err(e) => {
                let e = PullError::from(e);
                // An activation a killed pull left unconfirmed, and no server now: roll it back.
                let (fresh, why) = (&mut SshConnector { cfg }, e.to_string());
                let overdue = crate::client::recover_overdue(fresh, cfg, opts, &why).await;
                return Err(overdue.unwrap_or(e));
            }
        };
        // The activation is confirmed over a session of its own, never this one.
        let result = poll(&mut remote, &mut SshConnector { cfg }, cfg, opts).await;
        let wire = remote.wire();
        tracing::debug!(
            "sftp requests: {}, bytes out: {}, bytes in: {}",
            wire.packets_out(),
            wire.bytes_out(),
            wire.bytes_in()
        );
        remote.close().await;
        result
    })
}

/// `--watch`: SIGTERM and SIGINT ask the loop to stop; it ends cleanly (exit 0).
fn watch(args: &Args, cfg: &ClientConfig) -> Result<Exit, Error> {
    let stop = Stop::default();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(PullError::Runtime)?;
    let on_signal = stop.clone();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            on_signal.request();
        }
    });
    let mut pace = Pace::of(cfg);
    if let Some(ms) = args.check_interval_ms {
        pace.interval = std::time::Duration::from_millis(ms);
    }
    let poll = PollOptions {
        system_profile: cfg.system_profile.clone(),
        ..PollOptions::default()
    };
    let opts = WatchOptions {
        poll: &poll,
        pace,
        stop,
        max_checks: args.checks,
        exit_on_change: args.exit_on_change.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PullError::Runtime)?;
    let ended = runtime.block_on(watch::watch(&mut SshConnector { cfg }, cfg, &opts));
    tracing::info!("watch ended: {ended:?}");
    Ok(Exit::Ok)
}

fn reboot(cfg: &ClientConfig) -> Result<(), PullError> {
    let argv = &cfg.reboot_command;
    println!(
        "{}: the new system's kernel, initrd or modules differ from the booted ones (reboot = \"if-needed\"): running {}",
        cfg.host,
        argv.join(" ")
    );
    rebuild::run_reboot(argv).map_err(|message| PullError::Reboot { message })
}
