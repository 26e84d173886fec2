//! `tiffin pull --watch`: one kept SSH session, `/CURRENT` read every `watch_interval`, one poll per change.
//!
//! A check is one `open`/`read`/`close` of `/CURRENT` over the session already open. Its
//! bytes are compared with the last ones seen, so a change can never be missed, whatever
//! the server's mtime resolution: `CURRENT` is replaced by rename and every release and
//! trigger id is new. A change (or a heartbeat falling due, once per `poll_interval`) runs
//! exactly one poll over the same session, under the state lock; idle, the watcher holds
//! no lock, so a one-shot `tiffin pull` runs as before. A lost session is reconnected with
//! capped, jittered backoff, the pinned host key checked again each time.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::config::ClientConfig;
use super::connect::SshRemote;
use super::state::{self, StateError};
use super::transport::{Remote, RemoteError};
use super::{CURRENT_LIMIT, PollOptions, Polled, PullError, poll, rebuild, remote_path};
use crate::core::layout::CURRENT_FILE;

/// The first reconnect waits about this long, doubling per failed attempt, up to `RECONNECT_MAX`.
pub const RECONNECT_INITIAL: Duration = Duration::from_secs(1);
pub const RECONNECT_MAX: Duration = Duration::from_secs(60);

/// How fast the watcher goes: tests and the bench shorten it, `client.toml` sets it.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Between two checks (`watch_interval`).
    pub interval: Duration,
    /// Between two heartbeat reports while idle (`poll_interval`).
    pub heartbeat: Duration,
    /// The reconnect backoff: first delay and cap.
    pub reconnect: (Duration, Duration),
}

impl Pace {
    pub fn of(cfg: &ClientConfig) -> Pace {
        Pace {
            interval: cfg.watch_interval.0,
            heartbeat: cfg.poll_interval.0,
            reconnect: (RECONNECT_INITIAL, RECONNECT_MAX),
        }
    }
}

/// The delay before reconnect attempt `failures` (1 = the first): `initial` doubling per
/// failure, capped at `max`, then jittered into its upper half with `jitter` in [0, 1), so a
/// fleet that lost its server at once does not come back in lockstep.
pub fn reconnect_delay(
    failures: u32,
    (initial, max): (Duration, Duration),
    jitter: f64,
) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    let base = initial
        .checked_mul(1u32 << doublings)
        .unwrap_or(max)
        .min(max);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    base / 2 + base.mul_f64(jitter / 2.0)
}

/// A number in [0, 1) that differs per call and per process (no cryptography needed).
fn jitter() -> f64 {
    use std::hash::BuildHasher;
    let bits = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// A request to stop (SIGTERM, SIGINT): idle, the watcher exits at once; applying, after the report.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

impl Stop {
    /// Safe to call from another thread (the signal thread).
    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Resolves once a stop is asked for.
    async fn asked(&self) {
        while !self.requested() {
            self.wake.notified().await;
        }
    }

    /// Sleeps `d` unless asked to stop first; `true` when asked.
    async fn sleep(&self, d: Duration) -> bool {
        if self.requested() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => self.requested(),
            _ = self.wake.notified() => true,
        }
    }
}

pub use super::transport::Connector;

/// SSH sessions, each checking the pinned host key and authenticating afresh.
pub struct SshConnector<'a> {
    pub cfg: &'a ClientConfig,
}

impl Connector for SshConnector<'_> {
    type Session = SshRemote;
    async fn connect(&mut self) -> Result<SshRemote, PullError> {
        Ok(SshRemote::connect(self.cfg).await?)
    }
    async fn close(&mut self, session: SshRemote) {
        let w = session.wire();
        tracing::debug!(
            "session closed: sftp requests {}, bytes out {}, bytes in {}",
            w.packets_out(),
            w.bytes_out(),
            w.bytes_in()
        );
        session.close().await;
    }
}

/// What one check did.
#[derive(Debug)]
pub enum Checked {
    /// `/CURRENT` unchanged and no heartbeat due: nothing else was sent.
    Idle,
    /// Another pull holds the lock: this check did nothing and the next one looks again.
    Busy,
    /// `/CURRENT` cannot be read for a reason that is not the link (e.g. nothing published yet).
    Unreadable(RemoteError),
    /// One poll ran (a change, a trigger or a heartbeat), ending like this.
    Polled(Result<Polled, PullError>),
}

/// The checks over one session after another: what was seen last, when the last poll ran.
pub struct Watcher<'a> {
    cfg: &'a ClientConfig,
    opts: &'a PollOptions,
    heartbeat: Duration,
    /// `/CURRENT`'s bytes at the last poll that reached the server.
    last: Option<Vec<u8>>,
    last_poll: Option<Instant>,
    /// When a poll last ran for a deferred reboot whose window was open (a failed reboot
    /// command is retried once per `REBOOT_RETRY`, not at every check).
    last_reboot_try: Option<Instant>,
    /// What the last poll left waiting: a release held back by `tiffin pause`.
    holding: Holding,
    pub checks: u64,
}

/// Whether the last poll held a release back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holding {
    Nothing,
    /// `tiffin pause` held it: the next check after the pause ended (`tiffin resume`, or its
    /// end time) polls, rather than the next heartbeat.
    Paused,
}

const REBOOT_RETRY: Duration = Duration::from_secs(60);

/// Errors that mean the session is gone: reconnect, do not report.
fn is_lost(e: &RemoteError) -> bool {
    matches!(e, RemoteError::Lost { .. } | RemoteError::Timeout { .. })
}

fn poll_lost(e: &PullError) -> bool {
    match e {
        PullError::CurrentRead(r) | PullError::Report(r) => is_lost(r),
        e => e.is_transport(),
    }
}

/// The link's own error inside a poll's, for the one log line about the loss.
fn link_error(e: PullError, cfg: &ClientConfig) -> RemoteError {
    match e {
        PullError::CurrentRead(r) | PullError::Report(r) | PullError::Remote(r) => r,
        PullError::Fetch(super::fetch::FetchError::Remote { source, .. }) => source,
        e => RemoteError::Other {
            path: cfg.server.to_string(),
            message: e.to_string(),
        },
    }
}

impl<'a> Watcher<'a> {
    pub fn new(cfg: &'a ClientConfig, opts: &'a PollOptions, heartbeat: Duration) -> Watcher<'a> {
        Watcher {
            cfg,
            opts,
            heartbeat,
            last: None,
            last_poll: None,
            last_reboot_try: None,
            holding: Holding::Nothing,
            checks: 0,
        }
    }

    /// One check over `remote`; `Err` means the session is lost (nothing was recorded).
    /// `fresh` opens the new session that confirms an activation (the kept one never does).
    pub async fn check<R: Remote, C: Connector>(
        &mut self,
        remote: &mut R,
        fresh: &mut C,
        now: Instant,
    ) -> Result<Checked, RemoteError> {
        self.checks += 1;
        let bytes = match remote
            .read(&remote_path(&[CURRENT_FILE]), CURRENT_LIMIT)
            .await
        {
            Ok(bytes) => bytes,
            Err(e) if is_lost(&e) => return Err(e),
            Err(e) => return Ok(Checked::Unreadable(e)),
        };
        let due = self
            .last_poll
            .is_none_or(|t| now.saturating_duration_since(t) >= self.heartbeat);
        let reboot = self.reboot_due(now);
        let resumed = self.resumed();
        if !due && !reboot && !resumed && self.last.as_deref() == Some(&bytes[..]) {
            return Ok(Checked::Idle);
        }
        if reboot {
            self.last_reboot_try = Some(now);
        }
        // Held only while applying: a one-shot pull idles nothing away, and never overlaps.
        let _lock = match state::lock(&self.cfg.state_dir) {
            Ok(lock) => lock,
            Err(StateError::Busy { .. }) => return Ok(Checked::Busy),
            Err(e) => return Ok(Checked::Polled(Err(e.into()))),
        };
        let result = match poll(remote, fresh, self.cfg, self.opts).await {
            Err(e) if poll_lost(&e) => return Err(link_error(e, self.cfg)),
            result => result,
        };
        self.last = Some(bytes);
        self.last_poll = Some(now);
        self.holding = match &result {
            Ok(Polled::Paused { .. }) => Holding::Paused,
            _ => Holding::Nothing,
        };
        Ok(Checked::Polled(result))
    }
}

impl Watcher<'_> {
    /// The pause that held the last poll's release is over (resumed, or ended by itself):
    /// the release is applied at this check. An unreadable pause file also polls, so the
    /// poll reports it.
    fn resumed(&self) -> bool {
        self.holding == Holding::Paused
            && !matches!(
                super::pause::active(&self.cfg.state_dir, (self.opts.now)()),
                Ok(Some(_))
            )
    }

    /// A reboot deferred to its window is owed and the window is open: the poll that settles
    /// it runs at this check, not only at the next heartbeat.
    fn reboot_due(&self, now: Instant) -> bool {
        let tried_lately = self
            .last_reboot_try
            .is_some_and(|t| now.saturating_duration_since(t) < REBOOT_RETRY);
        !tried_lately
            && (super::window::pending_reboot_open(&self.cfg.state_dir, self.opts)
                || super::postpone::restart_due(&self.cfg.state_dir, self.opts))
    }
}

/// Everything `watch` needs besides the connector and the configuration.
pub struct WatchOptions<'a> {
    pub poll: &'a PollOptions,
    pub pace: Pace,
    pub stop: Stop,
    /// Stop after this many checks (the bench; tests).
    pub max_checks: Option<u64>,
    /// Exit after an apply when one of these resolves elsewhere (a switch replaced the unit or binary).
    pub exit_on_change: Vec<PathBuf>,
}

/// Why the watcher ended (every one is a clean exit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Stopped,
    Checks(u64),
    /// `exit_on_change` found this path changed after an apply: the service manager starts the new version.
    Changed(PathBuf),
}

/// One log line per change of the link's state, never one per attempt.
#[derive(Default)]
struct Link {
    failures: u32,
    ever_up: bool,
}

impl Link {
    fn up(&mut self, cfg: &ClientConfig, pace: &Pace) {
        if !self.ever_up {
            tracing::info!(
                "watching /CURRENT on {} every {}",
                cfg.server,
                crate::core::settings::Interval(pace.interval)
            );
        } else if self.failures > 0 {
            tracing::info!(
                "reconnected to {} after {} attempt(s)",
                cfg.server,
                self.failures
            );
        }
        self.ever_up = true;
        self.failures = 0;
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    fn down(&mut self, why: &dyn std::fmt::Display, pace: &Pace) -> Duration {
        self.failures = self.failures.saturating_add(1);
        if self.failures == 1 {
            tracing::warn!(
                "{why}; reconnecting with backoff ({} up to {})",
                crate::core::settings::Interval(pace.reconnect.0),
                crate::core::settings::Interval(pace.reconnect.1)
            );
        } else {
            tracing::debug!("reconnect attempt {} failed: {why}", self.failures);
        }
        reconnect_delay(self.failures, pace.reconnect, jitter())
    }
}

/// Where each `exit_on_change` path resolves now.
pub(super) fn resolved(paths: &[PathBuf]) -> Vec<Option<PathBuf>> {
    paths
        .iter()
        .map(|p| std::fs::canonicalize(p).ok())
        .collect()
}

/// Watches until stopped: connects, checks every interval, reconnects when the session is lost.
pub async fn watch<C: Connector>(
    connector: &mut C,
    cfg: &ClientConfig,
    opts: &WatchOptions<'_>,
) -> Ended {
    let mut watcher = Watcher::new(cfg, opts.poll, opts.pace.heartbeat);
    let mut link = Link::default();
    let started_as = resolved(&opts.exit_on_change);
    loop {
        if opts.stop.requested() {
            return Ended::Stopped;
        }
        // A connection attempt can take connect_timeout: a stop does not wait for it.
        let attempt = tokio::select! {
            attempt = connector.connect() => attempt,
            () = opts.stop.asked() => return Ended::Stopped,
        };
        let mut session = match attempt {
            Ok(session) => session,
            Err(e) => {
                recover(connector, cfg, opts.poll, &e).await;
                let delay = link.down(&e, &opts.pace);
                if opts.stop.sleep(delay).await {
                    return Ended::Stopped;
                }
                continue;
            }
        };
        link.up(cfg, &opts.pace);
        let ended = over_session(&mut watcher, &mut session, connector, opts, &started_as).await;
        connector.close(session).await;
        match ended {
            Err(lost) => {
                let delay = link.down(&lost, &opts.pace);
                if opts.stop.sleep(delay).await {
                    return Ended::Stopped;
                }
            }
            Ok(ended) => return ended,
        }
    }
}

/// The server is unreachable: an activation a killed watcher left unconfirmed, past its
/// time, is rolled back now (under the lock, which a one-shot pull may hold instead).
async fn recover<C: Connector>(
    connector: &mut C,
    cfg: &ClientConfig,
    opts: &PollOptions,
    e: &PullError,
) {
    let Ok(_lock) = state::lock(&cfg.state_dir) else {
        return;
    };
    if let Some(rolled) = super::recover_overdue(connector, cfg, opts, &e.to_string()).await {
        tracing::error!("{rolled}");
    }
}

/// Checks over one session until it is lost (`Err`) or the watcher ends (`Ok`).
async fn over_session<R: Remote, C: Connector>(
    watcher: &mut Watcher<'_>,
    session: &mut R,
    fresh: &mut C,
    opts: &WatchOptions<'_>,
    started_as: &[Option<PathBuf>],
) -> Result<Ended, RemoteError> {
    let mut unreadable = false;
    loop {
        let checked = watcher.check(session, fresh, Instant::now()).await?;
        if let Checked::Unreadable(e) = &checked {
            // Once per stretch, not once per check.
            if !std::mem::replace(&mut unreadable, true) {
                tracing::warn!("{e}; checking again every interval");
            }
        } else {
            unreadable = false;
        }
        if let Checked::Polled(result) = checked {
            let applied = matches!(result, Ok(Polled::Applied { .. }));
            said(watcher.cfg, result);
            if applied && let Some(path) = changed(&opts.exit_on_change, started_as) {
                tracing::info!(
                    "{} changed with this release: exiting so the new version takes over",
                    path.display()
                );
                return Ok(Ended::Changed(path));
            }
        }
        if let Some(n) = opts.max_checks {
            // What the bench reads: memory and descriptors after 10 checks and at the end.
            if watcher.checks == 10 || watcher.checks >= n {
                let (rss, fds) = usage();
                println!("checks={} rss_kib={rss} fds={fds}", watcher.checks);
            }
            if watcher.checks >= n {
                return Ok(Ended::Checks(watcher.checks));
            }
        }
        if opts.stop.sleep(opts.pace.interval).await {
            return Ok(Ended::Stopped);
        }
    }
}

/// This process's resident memory (KiB) and open descriptors, from /proc.
fn usage() -> (u64, usize) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    (rss, fds)
}

pub(super) fn changed(paths: &[PathBuf], started_as: &[Option<PathBuf>]) -> Option<PathBuf> {
    let now = resolved(paths);
    paths
        .iter()
        .zip(now.iter().zip(started_as))
        .find(|(_, (now, then))| now != then)
        .map(|(p, _)| p.clone())
}

/// Logs how a poll ended, and reboots when an applied release needs it (as a one-shot pull does).
fn said(cfg: &ClientConfig, result: Result<Polled, PullError>) {
    match result {
        Ok(Polled::Unchanged { id, seq }) => {
            tracing::debug!("{}: unchanged (release #{seq} {})", cfg.host, id.short());
        }
        Ok(Polled::Applied {
            id, seq, reboot, ..
        }) => {
            tracing::info!("{}: applied release #{seq} {}", cfg.host, id.short());
            if reboot {
                reboot_now(
                    cfg,
                    "the new system's kernel, initrd or modules differ from the booted ones",
                );
            }
        }
        Ok(Polled::Paused { id, until, .. }) => {
            tracing::debug!(
                "{}: paused until {until}: release {} waits",
                cfg.host,
                id.short()
            );
        }
        Ok(Polled::RebootDue { id, seq }) => {
            tracing::info!(
                "{}: release #{seq} {}: its deferred reboot is due",
                cfg.host,
                id.short()
            );
            reboot_now(cfg, "the reboot window is open");
        }
        Ok(Polled::Deferred { id, why }) => {
            tracing::info!(
                "{}: release {} deferred ({})",
                cfg.host,
                id.short(),
                why.as_str()
            );
        }
        Err(e) => tracing::error!("{e}"),
    }
}

fn reboot_now(cfg: &ClientConfig, why: &str) {
    tracing::info!("{why}: running {}", cfg.reboot_command.join(" "));
    if let Err(message) = rebuild::run_reboot(&cfg.reboot_command) {
        tracing::error!("{}", PullError::Reboot { message });
    }
}
