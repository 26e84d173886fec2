//! `tiffin pull`: one poll of a client (connect, fetch, verify, deploy, rebuild, report).

pub mod activation;
pub mod conditions;
pub mod config;
pub mod connect;
pub mod deploy;
pub mod fetch;
mod inhibit;
pub mod leaving;
pub mod lifeline;
#[cfg(test)]
mod mem_remote;
pub mod nar;
pub mod notify;
pub mod pause;
pub mod postpone;
pub mod prebuilt;
pub mod reboot;
pub mod rebuild;
pub mod restart;
pub mod restart_policy;
pub mod resume;
pub mod signed;
pub mod state;
pub mod transport;
pub mod verify;
pub mod watch;
pub mod window;
pub mod wire;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::core::durable::Owner;
use crate::core::layout::{CURRENT_FILE, RELEASES_DIR, REPORTS_DIR};
use crate::core::names::ReleaseId;
use crate::core::release::{CONFIG_DIR, MANIFEST_FILE, Manifest, Stage};
use crate::core::report::{PullResult, REBUILD_LOG_FILE, Report, STATUS_FILE};
use crate::core::settings::{Action, Reboot, format_time};

use config::{ClientConfig, ConfigError};
use connect::ConnectError;
use deploy::{DeployError, DeployOptions, DeployStats};
use fetch::{FetchError, FetchStats, FetchedManifest, Store};
use state::{Applied, State, StateError};
use transport::{Connector, Remote, RemoteError};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The error names `/CURRENT` itself.
    #[error(transparent)]
    CurrentRead(RemoteError),
    #[error("/{CURRENT_FILE} on the server does not name a release: {0}")]
    CurrentInvalid(crate::core::names::NameError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(
        "release {id} has seq {seq}, not newer than the applied release #{applied_seq} ({applied}): refusing a downgrade. If this is intended (the server was restored from a backup), run `tiffin pull --allow-downgrade` once"
    )]
    Downgrade {
        id: ReleaseId,
        seq: u64,
        applied: String,
        applied_seq: u64,
    },
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error("release {id}: the rebuild failed: {message}; the previous system keeps running")]
    Rebuild { id: ReleaseId, message: String },
    #[error(
        "release #{seq} ({id}) would remove tiffin from this host: it would never update again. Nothing was applied. The system it builds lacks {missing}: keep services.tiffin.client enabled in its configuration, or set [apply] allow_leaving = true in its host.toml to decommission it"
    )]
    Leaving {
        id: ReleaseId,
        seq: u64,
        missing: String,
    },
    #[error("release {id}: the health check failed: {message}; {rolled}")]
    Health {
        id: ReleaseId,
        message: String,
        rolled: String,
    },
    #[error(
        "release {id} was activated, but its files for after activation could not be deployed: {message}; {rolled}"
    )]
    FilesAfter {
        id: ReleaseId,
        message: String,
        rolled: String,
    },
    #[error(
        "release {id} failed {failures} time(s), last: {error}; next retry at {next_retry} (or run `tiffin pull --now`)"
    )]
    BackingOff {
        id: ReleaseId,
        failures: u32,
        error: String,
        next_retry: String,
    },
    #[error(
        "no space left on the client's disk at {}: free space and run tiffin pull again (the release is not counted as failed)",
        path.display()
    )]
    DiskFull { path: PathBuf },
    #[error("uploading the report: {0}")]
    Report(RemoteError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(
        "the release is applied and reported, but the reboot it needs failed: {message} (reboot by hand, or fix reboot_command in the client configuration)"
    )]
    Reboot { message: String },
    #[error(transparent)]
    Prebuilt(#[from] prebuilt::PrebuiltError),
    #[error(transparent)]
    Signed(#[from] signed::SignedError),
    /// The server was not reached after activation: rolled back and quarantined.
    #[error("{0}")]
    Unconfirmed(Box<lifeline::CutOff>),
    #[error(
        "release #{seq} ({id}) is quarantined since {since}: {reason}. It is not applied again until a newer release is published or `tiffin trigger {host} --retry`"
    )]
    Quarantined {
        id: ReleaseId,
        seq: u64,
        host: String,
        since: String,
        reason: String,
    },
}

impl PullError {
    pub fn exit_code(&self) -> u8 {
        match self {
            PullError::Config(ConfigError::Invalid { .. }) => 2,
            _ => 1,
        }
    }

    /// The link failed: that says nothing about the release, so no backoff and no report.
    /// A file of the wrong size is the release's content, not the link: that one is reported.
    fn is_transport(&self) -> bool {
        match self {
            PullError::Remote(e) | PullError::Fetch(FetchError::Remote { source: e, .. }) => {
                !matches!(e, RemoteError::Size { .. } | RemoteError::TooLarge { .. })
            }
            PullError::Prebuilt(e) => e.is_transport(),
            _ => false,
        }
    }

    /// The same error as [`PullError::DiskFull`] when it is the client's disk that is full
    /// (ENOSPC, EDQUOT): that is not the release's fault, so it must not back it off.
    fn as_disk_full(&self) -> Option<PullError> {
        let (path, source) = match self {
            PullError::Fetch(FetchError::Io { path, source, .. })
            | PullError::State(StateError::Io { path, source })
            | PullError::Deploy(DeployError::Record(StateError::Io { path, source })) => {
                (path.clone(), source)
            }
            PullError::Deploy(DeployError::Io { root, path, source }) => (root.join(path), source),
            PullError::Prebuilt(prebuilt::PrebuiltError::Io { path, source, .. }) => {
                (path.clone(), source)
            }
            _ => return None,
        };
        is_disk_full(source).then_some(PullError::DiskFull { path })
    }
}

fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT)
}

/// The release id `/CURRENT` names (its first line, surrounding whitespace ignored; a
/// second line is a trigger, see `crate::core::current`).
pub fn parse_current(bytes: &[u8]) -> Result<ReleaseId, PullError> {
    crate::core::current::first_line(bytes)
        .parse()
        .map_err(PullError::CurrentInvalid)
}

/// How a successful poll ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    Unchanged {
        id: ReleaseId,
        seq: u64,
    },
    Applied {
        id: ReleaseId,
        seq: u64,
        fetch: FetchStats,
        deployed: DeployStats,
        /// `reboot = "if-needed"` and the new kernel, initrd or modules differ from the booted ones.
        reboot: bool,
    },
    /// `tiffin pause` holds this host: the report went out, nothing was applied.
    Paused {
        id: ReleaseId,
        until: String,
        reason: Option<String>,
    },
    /// Nothing new, but a reboot deferred to the reboot window is due now.
    RebootDue {
        id: ReleaseId,
        seq: u64,
    },
    /// A new release waits: metered or on battery (`[defer]`); the report went out.
    Deferred {
        id: ReleaseId,
        why: crate::core::report::Deferred,
    },
}

/// Everything a poll needs besides the transport.
#[derive(Debug, Clone)]
pub struct PollOptions {
    pub retry_now: bool,
    pub allow_downgrade: bool,
    /// Who owns deployed files: root:root in real use, the caller in tests run as a user.
    pub owner: Owner,
    /// `/run/current-system`, reported as `system`.
    pub system_link: PathBuf,
    /// `/run/booted-system` and `/nix/var/nix/profiles/system`, compared for `reboot = "if-needed"`.
    pub booted_system: PathBuf,
    pub system_profile: PathBuf,
    pub now: fn() -> SystemTime,
    /// Minutes after local midnight, for the reboot window.
    pub local_minute: fn(SystemTime) -> u16,
    /// Where metered and on-battery are read (`[defer]`).
    pub conditions: conditions::Source,
}

impl Default for PollOptions {
    fn default() -> Self {
        PollOptions {
            retry_now: false,
            allow_downgrade: false,
            owner: if nix::unistd::geteuid().is_root() {
                Owner::Root
            } else {
                Owner::Caller
            },
            system_link: "/run/current-system".into(),
            booted_system: "/run/booted-system".into(),
            system_profile: "/nix/var/nix/profiles/system".into(),
            now: crate::core::clock::now,
            local_minute: window::local_minute,
            conditions: conditions::Source::SystemBus,
        }
    }
}

/// The largest MANIFEST a client accepts (about 300,000 files).
const MANIFEST_LIMIT: u64 = 64 << 20;
const CURRENT_LIMIT: u64 = 256;
pub const CURRENT_LINK: &str = "current";

fn remote_path(parts: &[&str]) -> String {
    format!("/{}", parts.join("/"))
}

/// One poll against `remote`. State is updated and a report uploaded in every case that reached `/CURRENT`.
/// `fresh` opens the new session that confirms an activation (`remote` never does).
pub async fn poll<R: Remote, C: Connector>(
    remote: &mut R,
    fresh: &mut C,
    cfg: &ClientConfig,
    opts: &PollOptions,
) -> Result<Polled, PullError> {
    let mut poll = Poll::begin(remote, fresh, cfg, opts).await?;
    if let Some(e) = poll.unreadable.take() {
        return poll.unreadable_state(e).await;
    }
    if let Err(e) = poll.check_signed().await {
        return poll.refused(e).await;
    }
    match pause::active(&cfg.state_dir, poll.started) {
        Ok(Some(pause)) => return poll.hold(pause).await,
        Ok(None) => {}
        Err(e) => return poll.unreadable_state(e).await,
    }
    if let Some(q) = poll.holding_quarantine() {
        return poll.quarantined(q).await;
    }
    // A reapply trigger applies the applied release again; any trigger acts despite a backoff.
    if !poll.reapplying()
        && let Some(seq) = poll.unchanged()
    {
        return poll.heartbeat(seq).await;
    }
    if let Some(why) = poll.deferring().await {
        return poll.defer(why).await;
    }
    if poll.trigger.is_none() {
        poll.refuse_while_backing_off().await?;
    }
    match poll.apply().await {
        Ok(attempt) => poll.conclude(attempt).await,
        Err(e) => poll.not_applied(e).await,
    }
}

/// An activation a process left unconfirmed (it was killed or crashed while confirming), whose
/// time is over, on a host that cannot reach the server now: rolled back and quarantined here,
/// as that process would have, so a host cut off by its release does not stay so. `None`
/// when nothing is overdue. The caller holds the state lock.
pub async fn recover_overdue<C: Connector>(
    fresh: &mut C,
    cfg: &ClientConfig,
    opts: &PollOptions,
    unreachable: &str,
) -> Option<PullError> {
    let state = State::load(&cfg.state_dir).ok()?;
    let u = state
        .unconfirmed
        .clone()
        .filter(|u| u.awaiting == state::Awaiting::Activation)?;
    let since = crate::core::settings::parse_time(&u.since)?;
    if (opts.now)() < since + u.timeout.0 {
        return None;
    }
    let started = (opts.now)();
    let mut offline = lifeline::Offline;
    let mut poll = Poll {
        report: first_report(cfg, &state, &u.id, started),
        remote: &mut offline,
        fresh,
        cfg,
        opts,
        state,
        id: u.id.clone(),
        started,
        log: None,
        trigger: None,
        handled_before: None,
        detach: activation::Detach::resolve(cfg.activation, &cfg.systemd_run),
        unreadable: None,
        running: None,
        current: Vec::new(),
    };
    poll.report.seq = Some(u.seq);
    let action = poll
        .stored_manifest(&u.id)
        .map_or(Action::Switch, |m| m.apply.action);
    let pending = lifeline::Pending {
        id: u.id,
        seq: u.seq,
        timeout: u.timeout,
        previous: u.previous,
        previous_system: u.previous_system,
        system: u.system,
    };
    let unreached = lifeline::Unreached {
        attempts: 0,
        last: format!(
            "the confirmation was cut short (tiffin ended) and the server is unreachable now: {unreachable}"
        ),
    };
    Some(poll.cut_off(&pending, action, unreached).await)
}

/// How applying a release ended once its files were deployed.
#[derive(Debug)]
enum Outcome {
    /// `reboot`: the new system takes a reboot and `reboot = "if-needed"` lets tiffin do it.
    /// `boot_only`: a switch inhibitor refused `switch`/`test`, so the release was applied
    /// with `boot` (why, in nixpkgs' words): it runs after the next boot.
    Applied {
        reboot: bool,
        boot_only: Option<String>,
    },
    /// `current` points back at the previous release, whose system keeps running.
    RebuildFailed { message: String },
    HealthFailed {
        message: String,
        rolled_back: RollBack,
    },
    /// The files of `stage = "after"` could not be deployed after activation (an account the
    /// configuration should have created is missing): rolled back like a failed health check.
    FilesAfterFailed {
        message: String,
        rolled_back: RollBack,
    },
}

/// Where rolling back after a failed health check left the host.
#[derive(Debug)]
enum RollBack {
    /// The previous release's files are deployed again and its system rebuilt.
    Done {
        to: ReleaseId,
    },
    NoPrevious,
    /// `current` still points at the failed release.
    RedeployFailed {
        to: ReleaseId,
        error: String,
    },
    RebuildFailed {
        to: ReleaseId,
        message: String,
    },
}

impl RollBack {
    fn result(&self) -> PullResult {
        match self {
            RollBack::Done { .. } => PullResult::RolledBack,
            _ => PullResult::Failed,
        }
    }
}

impl std::fmt::Display for RollBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RollBack::Done { to } => write!(f, "rolled back to release {}", to.short()),
            RollBack::NoPrevious => f.write_str("there is no previous release to roll back to"),
            RollBack::RedeployFailed { to, error } => write!(
                f,
                "rolling back to release {}: its files/ could not be deployed again: {error}",
                to.short()
            ),
            RollBack::RebuildFailed { to, message } => write!(
                f,
                "rolling back to release {} failed too: {message}",
                to.short()
            ),
        }
    }
}

/// A release fetched, verified and deployed, and how switching to it ended.
#[derive(Debug)]
struct Attempt {
    seq: u64,
    /// The release's `[apply]` (its reboot window, whether and how long to confirm).
    apply: crate::core::settings::ApplyPolicy,
    fetch: FetchStats,
    deployed: DeployStats,
    outcome: Outcome,
}

/// One poll under way: the session, the configuration, the state and the report being built.
struct Poll<'a, R, C> {
    remote: &'a mut R,
    /// Opens the fresh sessions that confirm an activation.
    fresh: &'a mut C,
    cfg: &'a ClientConfig,
    opts: &'a PollOptions,
    state: State,
    report: Report,
    /// The release `/CURRENT` names.
    id: ReleaseId,
    started: SystemTime,
    /// The rebuild's (and health check's) output tail, uploaded beside the report.
    log: Option<Vec<u8>>,
    /// A trigger on line 2 of `/CURRENT` not handled before; this poll handles it.
    trigger: Option<crate::core::current::Trigger>,
    /// The trigger handled before this poll: kept when the link fails, so the new one is not lost.
    handled_before: Option<String>,
    /// Where activations run (in a unit of their own where systemd is the init).
    detach: activation::Detach,
    /// `state.toml` could not be read: this poll only reports that, naming the file.
    unreadable: Option<StateError>,
    /// The system that ran before this poll switched (where a boot rollback goes).
    running: Option<PathBuf>,
    /// `/CURRENT`'s bytes (its statement line, for signed fleets).
    current: Vec<u8>,
}

impl<'a, R: Remote, C: Connector> Poll<'a, R, C> {
    /// Loads the state and reads `/CURRENT`.
    async fn begin(
        remote: &'a mut R,
        fresh: &'a mut C,
        cfg: &'a ClientConfig,
        opts: &'a PollOptions,
    ) -> Result<Poll<'a, R, C>, PullError> {
        let started = (opts.now)();
        // A state that cannot be read is reported (below), not only printed: the server
        // would otherwise only see the host go stale.
        let (mut state, unreadable) = match State::load(&cfg.state_dir) {
            Ok(state) => (state, None),
            Err(e @ (StateError::Invalid { .. } | StateError::Io { .. })) => {
                (State::default(), Some(e))
            }
            Err(e) => return Err(e.into()),
        };
        let text = remote
            .read(&remote_path(&[CURRENT_FILE]), CURRENT_LIMIT)
            .await
            .map_err(PullError::CurrentRead)?;
        let id = parse_current(&text)?;
        state.last_poll = Some(format_time(started));
        // This process's own session reached the server: what waited for that is confirmed.
        if let Some(said) = lifeline::settle_at_poll(&mut state, &opts.booted_system) {
            tracing::info!("{said}");
        }
        let handled_before = state.trigger.clone();
        let trigger = crate::core::current::trigger(&text)
            .filter(|t| handled_before.as_deref() != Some(t.id.as_str()));
        if let Some(t) = &trigger {
            tracing::info!("handling {t}");
            state.trigger = Some(t.id.clone());
        }
        let report = first_report(cfg, &state, &id, started);
        Ok(Poll {
            remote,
            fresh,
            cfg,
            opts,
            state,
            report,
            id,
            started,
            log: None,
            trigger,
            handled_before,
            detach: activation::Detach::resolve(cfg.activation, &cfg.systemd_run),
            unreadable,
            running: None,
            current: text,
        })
    }

    /// A signed fleet: `/CURRENT`'s release must come with a valid statement; the verified one
    /// is kept in the state and named in the report.
    async fn check_signed(&mut self) -> Result<(), signed::SignedError> {
        let Some(pinned) = &self.cfg.trust else {
            return Ok(());
        };
        let now = (self.opts.now)();
        let current = (self.current.as_slice(), &self.id);
        let accepted =
            signed::check(self.remote, self.cfg, pinned, &self.state, current, now).await?;
        self.report.signed_seq = Some(accepted.seq);
        self.report.signed_expires = Some(accepted.expires.clone());
        self.report.signers.clone_from(&accepted.signers);
        self.state.signed = Some(accepted);
        Ok(())
    }

    /// A release this host may not apply (unsigned, forged, expired, a rollback): nothing of
    /// it is applied, and the report says why. A lost link reports nothing, as ever.
    async fn refused(mut self, e: signed::SignedError) -> Result<Polled, PullError> {
        if let signed::SignedError::Remote(e) = e {
            return Err(PullError::Remote(e));
        }
        if let Err(save) = self.save_state() {
            tracing::warn!("{save}");
        }
        let err = PullError::Signed(e);
        self.report.result = PullResult::Failed;
        self.report.error = Some(err.to_string());
        if let Err(upload) = self.upload().await {
            tracing::warn!("{upload}");
        }
        Err(err)
    }

    /// The quarantine that holds `/CURRENT`'s release back, unless a `retry` trigger lifts it
    /// (then it is gone from the state, and the release is applied again).
    fn holding_quarantine(&mut self) -> Option<state::Quarantine> {
        let q = self.state.quarantine.as_ref().filter(|q| q.id == self.id)?;
        let retry = self
            .trigger
            .as_ref()
            .is_some_and(|t| t.kind == crate::core::current::TriggerKind::Retry);
        if retry {
            tracing::info!("retrying the quarantined release {}", q.id.short());
            self.state.quarantine = None;
            return None;
        }
        Some(q.clone())
    }

    /// `/CURRENT` names a release this host rolled back: nothing is applied; the report says
    /// so, with the story, until a newer release or `tiffin trigger HOST --retry`.
    async fn quarantined(mut self, q: state::Quarantine) -> Result<Polled, PullError> {
        if let Err(e) = self.save_state() {
            tracing::warn!("{e}");
        }
        let err = PullError::Quarantined {
            id: q.id.clone(),
            seq: q.seq,
            host: self.cfg.host.to_string(),
            since: q.since,
            reason: q.reason,
        };
        self.report.seq = Some(q.seq);
        self.report.result = PullResult::RolledBack;
        self.report.quarantined = Some(q.id.to_string());
        self.report.error = Some(err.to_string());
        self.upload().await?;
        Err(err)
    }

    /// A `reapply` trigger: deploy and rebuild the release even when it is the applied one.
    fn reapplying(&self) -> bool {
        self.trigger
            .as_ref()
            .is_some_and(|t| t.kind == crate::core::current::TriggerKind::Reapply)
    }

    fn store(&self) -> Store {
        Store::new(&self.cfg.state_dir)
    }

    /// The applied release's seq when `/CURRENT` still names it.
    fn unchanged(&self) -> Option<u64> {
        let applied = self.state.applied.as_ref()?;
        (applied.id == self.id).then_some(applied.seq)
    }

    /// Nothing to apply: any old failure is over, and the report says the host is alive.
    async fn heartbeat(mut self, seq: u64) -> Result<Polled, PullError> {
        self.state.failure = None;
        let reboot_due = self.settle_pending_reboot() || self.settle_restart();
        self.report_boot_only();
        // The report needs no local disk: it goes out even when the state cannot be saved.
        let saved = self.save_state();
        self.report.seq = Some(seq);
        if let Err(e) = &saved {
            self.report.error = Some(e.to_string());
        }
        self.upload().await?;
        saved?;
        if reboot_due {
            return Ok(Polled::RebootDue { id: self.id, seq });
        }
        Ok(Polled::Unchanged { id: self.id, seq })
    }

    /// Local state that cannot be read (`state.toml`, `pause.toml`): a failed report naming
    /// the file goes out; nothing is applied, and the file is left as it is for its admin.
    async fn unreadable_state(mut self, e: StateError) -> Result<Polled, PullError> {
        self.report.result = PullResult::Failed;
        self.report.error = Some(e.to_string());
        if let Err(upload) = self.upload().await {
            tracing::warn!("{upload}");
        }
        Err(PullError::State(e))
    }

    /// Saves the state; a full disk says so.
    fn save_state(&self) -> Result<(), PullError> {
        self.state.save(&self.cfg.state_dir).map_err(|e| {
            let e = PullError::State(e);
            e.as_disk_full().unwrap_or(e)
        })
    }

    /// A release that failed is not tried again before its backoff ends (unless asked to).
    async fn refuse_while_backing_off(&mut self) -> Result<(), PullError> {
        if self.opts.retry_now || self.opts.allow_downgrade {
            return Ok(());
        }
        let Some(f) = self.state.backing_off(&self.id, self.started).cloned() else {
            return Ok(());
        };
        self.state.save(&self.cfg.state_dir)?;
        let err = PullError::BackingOff {
            id: self.id.clone(),
            failures: f.failures,
            error: f.error.clone(),
            next_retry: f.next_retry.clone(),
        };
        self.report.seq = f.seq;
        self.report.result = PullResult::Failed;
        self.report.error = Some(f.error);
        self.report.next_retry = Some(f.next_retry);
        self.upload().await?;
        Err(err)
    }

    /// Fetch, verify, deploy, then switch. An `Err` means the rebuild never ran.
    async fn apply(&mut self) -> Result<Attempt, PullError> {
        let release = self.fetch_manifest().await?;
        let plain = prebuilt::without_cache(&release);
        let mut fetch = fetch::fetch_release(self.remote, &self.store(), &plain).await?;
        if let Some(toplevel) = &release.manifest.toplevel {
            fetch = self.import_closure(&release, toplevel, fetch).await?;
        }
        self.refuse_leaving_tiffin(&release.id, &release.manifest)?;
        let mut deployed = self.deploy(&release.id, &release.manifest, Stage::Before)?;
        let outcome = self.switch(&release.manifest, &mut deployed)?;
        Ok(Attempt {
            seq: release.manifest.seq,
            apply: release.manifest.apply.clone(),
            fetch,
            deployed,
            outcome,
        })
    }

    /// The MANIFEST of `/CURRENT`'s release, verified against its id and this host, and newer than the applied one.
    async fn fetch_manifest(&mut self) -> Result<FetchedManifest, PullError> {
        let id = self.id.clone();
        let bytes = self
            .remote
            .read(
                &remote_path(&[RELEASES_DIR, id.as_str(), MANIFEST_FILE]),
                MANIFEST_LIMIT,
            )
            .await?;
        let manifest =
            verify::manifest(&bytes, &id, &self.cfg.host).map_err(|source| FetchError::Verify {
                id: id.clone(),
                source,
            })?;
        self.report.seq = Some(manifest.seq);
        if let Some(a) = self
            .state
            .signed
            .as_ref()
            .filter(|_| self.cfg.trust.is_some())
            && a.seq != manifest.seq
        {
            let (manifest, signed) = (manifest.seq, a.seq);
            return Err(signed::SignedError::SeqMismatch { manifest, signed }.into());
        }
        if let Some(applied) = &self.state.applied
            && manifest.seq <= applied.seq
            && !self.opts.allow_downgrade
            && !(self.reapplying() && applied.id == id)
        {
            return Err(PullError::Downgrade {
                id,
                seq: manifest.seq,
                applied: applied.id.to_string(),
                applied_seq: applied.seq,
            });
        }
        Ok(FetchedManifest {
            id,
            manifest,
            bytes,
        })
    }

    /// Builds the release before anything of it is applied and refuses it when the system it
    /// builds no longer runs tiffin's client: the host would never update again. `[apply]
    /// allow_leaving` is the way out for a host being decommissioned; `action = "build"`
    /// changes nothing, so it needs no check.
    fn refuse_leaving_tiffin(
        &mut self,
        id: &ReleaseId,
        manifest: &Manifest,
    ) -> Result<(), PullError> {
        if manifest.apply.allow_leaving || manifest.apply.action == Action::Build {
            return Ok(());
        }
        if let Some(toplevel) = &manifest.toplevel {
            // Built by the server and imported already: only the check is left.
            return match leaving::check(Path::new(toplevel.as_str())) {
                leaving::Built::LeavesTiffin { missing } => Err(PullError::Leaving {
                    id: id.clone(),
                    seq: manifest.seq,
                    missing,
                }),
                _ => Ok(()),
            };
        }
        let config_dir = self.store().release(id).join(CONFIG_DIR);
        let argv = rebuild::argv(
            &self.cfg.rebuild.0,
            Action::Build,
            &config_dir,
            &self.cfg.host,
        );
        tracing::info!(
            "building first, to check it keeps tiffin: {}",
            argv.join(" ")
        );
        let work_dir = self.cfg.state_dir.join("build-check");
        let log = self.cfg.state_dir.join(REBUILD_LOG_FILE);
        match leaving::build_and_check(&argv, &work_dir, &log, self.cfg.rebuild_timeout.0) {
            leaving::Built::KeepsTiffin => Ok(()),
            leaving::Built::LeavesTiffin { missing } => Err(PullError::Leaving {
                id: id.clone(),
                seq: manifest.seq,
                missing,
            }),
            leaving::Built::Failed { message, log_tail } => {
                self.log = Some(log_tail);
                Err(PullError::Rebuild {
                    id: id.clone(),
                    message,
                })
            }
        }
    }

    /// Copies the `files/` of one stage of a release held in the store into root.
    fn deploy(
        &self,
        id: &ReleaseId,
        manifest: &Manifest,
        stage: Stage,
    ) -> Result<DeployStats, DeployError> {
        let release_dir = self.store().release(id);
        let opts = DeployOptions {
            root: &self.cfg.root,
            release_dir: &release_dir,
            state_dir: &self.cfg.state_dir,
            owner: self.opts.owner,
        };
        deploy::deploy_stage(manifest, &opts, stage)
    }

    /// After a successful rebuild: the files of `stage = "after"`, then the units of every
    /// changed file restarted or reloaded (only when the rebuild activated the system).
    /// `since`: the release that ran before, whose files the units have seen.
    /// `action`: how the system was activated (`boot` after a switch inhibitor refused).
    fn after_activation(
        &mut self,
        id: &ReleaseId,
        manifest: &Manifest,
        action: Action,
        deployed: &mut DeployStats,
        since: Option<&ReleaseId>,
    ) -> Result<(), DeployError> {
        deployed.absorb(self.deploy(id, manifest, Stage::After)?);
        if !matches!(action, Action::Switch | Action::Test) {
            return Ok(());
        }
        let since = since.and_then(|s| self.stored_manifest(s).ok());
        let plan = restart::Plan::of(manifest, &deployed.changed, since.as_ref());
        if !plan.is_empty() {
            let log = self.cfg.state_dir.join("restart.log");
            let failed = restart::run(&self.cfg.systemctl, &plan, &log, self.cfg.rebuild_timeout.0);
            self.report.restart_failed.extend(failed);
        }
        Ok(())
    }

    /// Points `current` at the release, rebuilds, deploys the files for after activation,
    /// restarts units and runs its health check; a failure puts the previous release back.
    fn switch(
        &mut self,
        manifest: &Manifest,
        deployed: &mut DeployStats,
    ) -> Result<Outcome, PullError> {
        let state_dir = &self.cfg.state_dir;
        let previous = self.state.applied.as_ref().map(|a| a.id.clone());
        point_current(state_dir, &self.id).map_err(|e| StateError::Io {
            path: state_dir.join(CURRENT_LINK),
            source: e,
        })?;
        let running = std::fs::read_link(&self.opts.system_link).ok();
        self.running.clone_from(&running);
        let log = state_dir.join(REBUILD_LOG_FILE);
        let rebuilt = self.switch_system(manifest, manifest.apply.action, &log);
        let (rebuilt, action, boot_only) = self.boot_if_inhibited(manifest, rebuilt, &log);
        self.log = Some(rebuilt.log_tail);
        match rebuilt.ended {
            rebuild::Ended::Success => {}
            // Still activating in its own unit: nothing may switch or point `current` elsewhere
            // under it; the next attempt (after the backoff) finds how it ended.
            rebuild::Ended::LeftRunning(message) => return Ok(Outcome::RebuildFailed { message }),
            rebuild::Ended::Failed(mut message) => {
                restore_current(state_dir, previous.as_ref());
                if manifest.toplevel.is_some() {
                    message = self.reactivate(running.as_deref(), action, message);
                }
                return Ok(Outcome::RebuildFailed { message });
            }
        }
        let id = self.id.clone();
        if let Err(e) = self.after_activation(&id, manifest, action, deployed, previous.as_ref()) {
            let rolled_back = self.roll_back(previous.as_ref(), manifest.apply.action);
            let message = e.to_string();
            return Ok(Outcome::FilesAfterFailed {
                message,
                rolled_back,
            });
        }
        if let Some(message) = self.health_check(manifest) {
            let rolled_back = self.roll_back(previous.as_ref(), manifest.apply.action);
            return Ok(Outcome::HealthFailed {
                message,
                rolled_back,
            });
        }
        let reboot = match boot_only {
            Some(_) => manifest.apply.reboot != Reboot::Never,
            None => self.reboot_needed(manifest),
        };
        Ok(Outcome::Applied { reboot, boot_only })
    }

    /// Switches to the release's system with `action`: the server-built toplevel when it has
    /// one, else the rebuild (an activating one in a unit of its own where systemd runs).
    fn switch_system(&self, manifest: &Manifest, action: Action, log: &Path) -> rebuild::Outcome {
        match &manifest.toplevel {
            Some(toplevel) => {
                tracing::info!("switching to the prebuilt {toplevel}");
                self.prebuilt_switch()
                    .run(Path::new(toplevel.as_str()), action, log)
            }
            None => self.rebuild(action, log),
        }
    }

    /// The rebuild command with `action`; one that activates runs as [`Poll::detach`] says.
    fn rebuild(&self, action: Action, log: &Path) -> rebuild::Outcome {
        let argv = self.rebuild_argv(action);
        tracing::info!("running {}", argv.join(" "));
        let timeout = self.cfg.rebuild_timeout.0;
        match action {
            Action::Switch | Action::Boot | Action::Test => {
                rebuild::activate(&argv, log, timeout, &self.detach)
            }
            Action::Build => rebuild::run(&argv, log, timeout),
        }
    }

    fn prebuilt_switch(&self) -> prebuilt::Switch<'_> {
        prebuilt::Switch {
            settings: &self.cfg.prebuilt,
            profile: &self.opts.system_profile,
            timeout: self.cfg.rebuild_timeout.0,
            detach: &self.detach,
        }
    }

    /// A prebuilt system that failed to switch: the system that ran before is made the
    /// profile's generation and activated again; says so in the message.
    fn reactivate(&self, running: Option<&Path>, action: Action, message: String) -> String {
        let Some(running) = running else {
            return format!("{message}; no previous system to go back to");
        };
        let log = self.cfg.state_dir.join("rollback.log");
        match self.prebuilt_switch().run(running, action, &log).ended {
            rebuild::Ended::Success => format!(
                "{message}; the previous system {} is active again",
                running.display()
            ),
            rebuild::Ended::Failed(m) | rebuild::Ended::LeftRunning(m) => format!(
                "{message}; going back to {} failed too: {m}",
                running.display()
            ),
        }
    }

    /// Downloads and imports a prebuilt release's closure; what it moved joins the fetch's figures.
    async fn import_closure(
        &mut self,
        release: &FetchedManifest,
        toplevel: &crate::core::narinfo::StorePath,
        mut fetch: FetchStats,
    ) -> Result<FetchStats, PullError> {
        let import = prebuilt::Import {
            settings: &self.cfg.prebuilt,
            state_dir: &self.cfg.state_dir,
            timeout: self.cfg.rebuild_timeout.0,
        };
        let got = import.run(self.remote, release, toplevel).await?;
        fetch.downloaded_files += got.downloaded_files;
        fetch.downloaded_bytes = fetch.downloaded_bytes.saturating_add(got.downloaded_bytes);
        fetch.reused_files += got.reused_files;
        Ok(fetch)
    }

    /// `rebuild` with `{action}`, `{config}` (`state_dir/current/config`) and `{host}` filled in.
    fn rebuild_argv(&self, action: Action) -> Vec<String> {
        let config_dir = self.cfg.state_dir.join(CURRENT_LINK).join(CONFIG_DIR);
        rebuild::argv(&self.cfg.rebuild.0, action, &config_dir, &self.cfg.host)
    }

    /// Runs the release's health check, if it has one; `Some` is why it failed (its output joins the log).
    fn health_check(&mut self, manifest: &Manifest) -> Option<String> {
        if manifest.apply.health_check.is_empty() {
            return None;
        }
        let check = rebuild::run(
            &manifest.apply.health_check,
            &self.cfg.state_dir.join("health.log"),
            self.cfg.rebuild_timeout.0,
        );
        let message = check.ended.failure()?;
        if let Some(log) = self.log.as_mut() {
            log.extend_from_slice(b"\n--- health check ---\n");
            log.extend_from_slice(&check.log_tail);
        }
        Some(message)
    }

    fn reboot_needed(&self, manifest: &Manifest) -> bool {
        manifest.apply.reboot != Reboot::Never
            && matches!(manifest.apply.action, Action::Switch | Action::Boot)
            && reboot::needed(&self.opts.booted_system, &self.opts.system_profile)
    }

    /// After a failed health check (or files that could not follow activation): deploy the
    /// previous release's `files/` again and rebuild it, if there is one, so a rolled-back
    /// host runs the old configuration with the old files. Its files are deployed in their
    /// own stages around the rebuild, and the units of those that changed back restart.
    fn roll_back(&mut self, previous: Option<&ReleaseId>, action: Action) -> RollBack {
        let Some(prev) = previous else {
            return RollBack::NoPrevious;
        };
        let to = prev.clone();
        let redeployed = self.stored_manifest(prev).and_then(|m| {
            Ok((
                self.deploy(prev, &m, Stage::Before)
                    .map_err(|e| e.to_string())?,
                m,
            ))
        });
        let (mut stats, manifest) = match redeployed {
            Ok(done) => done,
            Err(error) => return RollBack::RedeployFailed { to, error },
        };
        restore_current(&self.cfg.state_dir, Some(prev));
        let log = self.cfg.state_dir.join("rollback.log");
        let back = match &manifest.toplevel {
            Some(top) => self
                .prebuilt_switch()
                .run(Path::new(top.as_str()), action, &log),
            None => self.rebuild(action, &log),
        };
        if let Some(message) = back.ended.failure() {
            return RollBack::RebuildFailed { to, message };
        }
        // Against what was written back only: the failed release's files never ran for long.
        match self.after_activation(prev, &manifest, action, &mut stats, None) {
            Ok(()) => RollBack::Done { to },
            Err(e) => RollBack::RedeployFailed {
                to,
                error: e.to_string(),
            },
        }
    }

    /// The MANIFEST of a release in the store, verified against its id.
    fn stored_manifest(&self, id: &ReleaseId) -> Result<Manifest, String> {
        let bytes = std::fs::read(self.store().release(id).join(MANIFEST_FILE))
            .map_err(|e| e.to_string())?;
        Manifest::parse_verified(&bytes, id).map_err(|e| e.to_string())
    }

    /// Records and reports how the attempt ended.
    async fn conclude(self, attempt: Attempt) -> Result<Polled, PullError> {
        let id = self.id.clone();
        match attempt.outcome {
            Outcome::Applied {
                reboot,
                ref boot_only,
            } => {
                let boot_only = boot_only.clone();
                self.applied(attempt, reboot, boot_only).await
            }
            Outcome::RebuildFailed { message } => {
                self.fail(PullResult::Failed, PullError::Rebuild { id, message })
                    .await
            }
            Outcome::HealthFailed {
                message,
                rolled_back,
            } => {
                let rolled = rolled_back.to_string();
                let err = PullError::Health {
                    id,
                    message,
                    rolled,
                };
                self.fail_after_activation(&rolled_back, err).await
            }
            Outcome::FilesAfterFailed {
                message,
                rolled_back,
            } => {
                let rolled = rolled_back.to_string();
                let err = PullError::FilesAfter {
                    id,
                    message,
                    rolled,
                };
                self.fail_after_activation(&rolled_back, err).await
            }
        }
    }

    async fn applied(
        mut self,
        attempt: Attempt,
        reboot: bool,
        boot_only: Option<String>,
    ) -> Result<Polled, PullError> {
        let id = self.id.clone();
        let now = (self.opts.now)();
        let at = format_time(now);
        if let Some(toplevel) = self.stored_manifest(&id).ok().and_then(|m| m.toplevel) {
            let timeout = self.cfg.rebuild_timeout.0;
            prebuilt::keep_roots(&self.cfg.prebuilt, &self.cfg.state_dir, &toplevel, timeout);
        }
        let needs = needs(&attempt.apply, boot_only.is_some(), reboot);
        let pending = self.pending(&attempt);
        self.state.applied = Some(Applied {
            id: id.clone(),
            seq: attempt.seq,
            at: at.clone(),
        });
        self.state.failure = None;
        // A release applied ends any quarantine: a newer one came, or --retry lifted it.
        self.state.quarantine = None;
        self.state.unconfirmed = match needs {
            lifeline::Needs::Nothing => None,
            lifeline::Needs::Boot => Some(pending.record(state::Awaiting::Boot, now)),
            _ => Some(pending.record(state::Awaiting::Activation, now)),
        };
        self.timed_attempt();
        (self.report.applied_seq, self.report.applied_at) = (Some(attempt.seq), Some(at));
        let reboot = self.restart_after_apply(reboot, &attempt.apply);
        self.record_boot_only(boot_only);
        self.state.save(&self.cfg.state_dir)?;
        self.report.result = PullResult::Ok;
        self.report.applied = Some(id.to_string());
        if needs.now() {
            self.confirm(&pending, needs, &attempt).await?;
        } else {
            self.upload().await?;
        }
        self.store().prune(&[&id]);
        Ok(Polled::Applied {
            id,
            seq: attempt.seq,
            fetch: attempt.fetch,
            deployed: attempt.deployed,
            reboot,
        })
    }

    /// The release being applied, what ran before it and how long it has to be confirmed.
    fn pending(&self, attempt: &Attempt) -> lifeline::Pending {
        lifeline::Pending {
            id: self.id.clone(),
            seq: attempt.seq,
            timeout: attempt
                .apply
                .confirm_timeout
                .unwrap_or(self.cfg.confirm_timeout),
            previous: self.state.applied.clone(),
            previous_system: self.running.clone(),
            system: lifeline::profile_system(&self.opts.system_profile),
        }
    }

    /// The lifeline after an activation: the report goes out over a fresh session (the kept
    /// one never counts). None within the timeout: roll back, quarantine, report when possible.
    async fn confirm(
        &mut self,
        pending: &lifeline::Pending,
        needs: lifeline::Needs,
        attempt: &Attempt,
    ) -> Result<(), PullError> {
        let mut session = match lifeline::reach(self.fresh, pending.timeout.0).await {
            Ok(session) => session,
            Err(unreached) => {
                let action = attempt.apply.action;
                return Err(self.cut_off(pending, action, unreached).await);
            }
        };
        tracing::info!(
            "release #{} ({}) is confirmed: the server was reached over a fresh session",
            pending.seq,
            pending.id.short()
        );
        self.state.unconfirmed = needs
            .boot()
            .then(|| pending.record(state::Awaiting::Boot, (self.opts.now)()));
        let saved = self.save_state();
        let sent = self.send_report(&mut session).await;
        self.fresh.close(session).await;
        saved.and(sent)
    }

    /// The server could not be reached after activation: the previous release comes back,
    /// this one is quarantined, and the report goes out as soon as a fresh session works.
    async fn cut_off(
        &mut self,
        pending: &lifeline::Pending,
        action: Action,
        unreached: lifeline::Unreached,
    ) -> PullError {
        let previous = pending.previous.as_ref().map(|a| a.id.clone());
        let rolled = self.roll_back(previous.as_ref(), action);
        let err = PullError::Unconfirmed(Box::new(lifeline::CutOff {
            id: pending.id.clone(),
            seq: pending.seq,
            host: self.cfg.host.to_string(),
            timeout: pending.timeout,
            attempts: unreached.attempts,
            last: unreached.last.clone(),
            rolled: rolled.to_string(),
        }));
        let reason = format!(
            "rolled back: the server was unreachable after activation (no fresh session within {}, last: {})",
            pending.timeout, unreached.last
        );
        let now = (self.opts.now)();
        lifeline::quarantine(&mut self.state, &pending.id, pending.seq, &reason, now);
        self.tell(notify::Event::Held {
            why: notify::Held::Quarantined,
        });
        (
            self.state.applied,
            self.state.pending_reboot,
            self.state.boot_only,
        ) = (pending.previous.clone(), None, None);
        self.state.restart = None;
        if let Err(e) = self.save_state() {
            tracing::warn!("{e}");
        }
        self.report.applied = pending.previous.as_ref().map(|a| a.id.to_string());
        self.report.applied_seq = pending.previous.as_ref().map(|a| a.seq);
        self.report.applied_at = pending.previous.as_ref().map(|a| a.at.clone());
        (
            self.report.reboot,
            self.report.reboot_window,
            self.report.boot_only,
        ) = (None, None, None);
        self.report.result = rolled.result();
        self.report.quarantined = Some(pending.id.to_string());
        self.report.error = Some(err.to_string());
        match lifeline::reach(self.fresh, pending.timeout.0).await {
            Ok(mut session) => {
                if let Err(e) = self.send_report(&mut session).await {
                    tracing::warn!("{e}");
                }
                self.fresh.close(session).await;
            }
            Err(u) => tracing::warn!(
                "the report of the rollback waits for the next poll: the server is still unreachable ({})",
                u.last
            ),
        }
        err
    }

    /// A release that failed once activated. Rolled back, it is quarantined rather than
    /// retried by backoff: trying it again would break the host again, on a timer. Not
    /// rolled back (no previous release, or going back failed too), it backs off as usual.
    async fn fail_after_activation(
        mut self,
        rolled_back: &RollBack,
        e: PullError,
    ) -> Result<Polled, PullError> {
        if !matches!(rolled_back, RollBack::Done { .. }) {
            return self.fail(rolled_back.result(), e).await;
        }
        let message = e.to_string();
        let seq = self.report.seq.unwrap_or_default();
        let now = (self.opts.now)();
        lifeline::quarantine(&mut self.state, &self.id, seq, &message, now);
        self.tell(notify::Event::Held {
            why: notify::Held::Quarantined,
        });
        self.timed_attempt();
        if let Err(save) = self.save_state() {
            tracing::warn!("{save}");
        }
        self.report.result = PullResult::RolledBack;
        self.report.quarantined = Some(self.id.to_string());
        self.report.error = Some(format!(
            "{message}. It is quarantined: not applied again until a newer release is published or `tiffin trigger {} --retry`",
            self.cfg.host
        ));
        if let Err(upload) = self.upload().await {
            tracing::warn!("{upload}");
        }
        Err(e)
    }

    /// A failure before the rebuild: nothing changed on this machine.
    async fn not_applied(mut self, e: PullError) -> Result<Polled, PullError> {
        if e.is_transport() {
            self.state.trigger = self.handled_before.take();
            self.state.save(&self.cfg.state_dir)?;
            return Err(e);
        }
        if let Some(full) = e.as_disk_full() {
            return self.disk_full(full).await;
        }
        self.fail(PullResult::Failed, e).await
    }

    /// The client's disk is full: reported, but not counted toward the release's backoff, so
    /// the next poll tries again at once.
    async fn disk_full(mut self, e: PullError) -> Result<Polled, PullError> {
        if let Err(save) = self.state.save(&self.cfg.state_dir) {
            tracing::warn!("{save}");
        }
        self.report.result = PullResult::Failed;
        self.report.error = Some(e.to_string());
        if let Err(upload) = self.upload().await {
            tracing::warn!("{upload}");
        }
        Err(e)
    }

    /// Records how long this attempt took, for the report.
    fn timed_attempt(&mut self) {
        let took = (self.opts.now)().duration_since(self.started);
        self.state.last_apply_seconds = Some(took.unwrap_or_default().as_secs());
        self.report.last_apply_seconds = self.state.last_apply_seconds;
    }

    /// Counts the failure toward the release's backoff and reports it (a report that cannot be uploaded is only logged).
    async fn fail(mut self, result: PullResult, e: PullError) -> Result<Polled, PullError> {
        let message = e.to_string();
        let backoff = (self.cfg.backoff_initial.0, self.cfg.backoff_max.0);
        let (now, seq) = ((self.opts.now)(), self.report.seq);
        self.state
            .record_failure(&self.id, seq, &message, now, backoff);
        if self.state.failure.as_ref().is_some_and(|f| f.failures == 1) {
            self.tell(notify::Event::Failed);
        }
        self.timed_attempt();
        self.report.next_retry = self.state.failure.as_ref().map(|f| f.next_retry.clone());
        // The report still goes out when the state cannot be saved (a full disk).
        if let Err(save) = self.save_state() {
            tracing::warn!("{save}");
        }
        self.report.result = result;
        self.report.error = Some(message);
        if let Err(upload) = self.upload().await {
            tracing::warn!("{upload}");
        }
        Err(e)
    }

    /// Uploads the log, if any, then the report, both atomically, over the kept session.
    async fn upload(&mut self) -> Result<(), PullError> {
        self.finish_report();
        send(self.remote, &self.report, self.log.as_deref()).await
    }

    /// The same over another session (a fresh one, which confirms an activation).
    async fn send_report<S: Remote>(&mut self, session: &mut S) -> Result<(), PullError> {
        self.finish_report();
        send(session, &self.report, self.log.as_deref()).await
    }

    fn finish_report(&mut self) {
        let finished = format_time((self.opts.now)());
        // Read at the end: the rebuild may just have switched it.
        self.report.system = std::fs::read_link(&self.opts.system_link)
            .ok()
            .map(|p| p.display().to_string());
        self.report.finished = Some(finished.clone());
        self.report.last_seen = finished;
    }
}

/// The report a poll starts from: what the host runs, before this poll changes anything.
fn first_report(cfg: &ClientConfig, state: &State, id: &ReleaseId, started: SystemTime) -> Report {
    Report {
        host: cfg.host.to_string(),
        release: Some(id.to_string()),
        seq: None,
        result: PullResult::Unchanged,
        applied: state.applied.as_ref().map(|a| a.id.to_string()),
        started: Some(format_time(started)),
        finished: None,
        last_seen: String::new(),
        system: None,
        error: None,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        restart_failed: Vec::new(),
        applied_seq: state.applied.as_ref().map(|a| a.seq),
        applied_at: state.applied.as_ref().map(|a| a.at.clone()),
        last_apply_seconds: state.last_apply_seconds,
        next_retry: None,
        reboot: None,
        reboot_window: None,
        paused_until: None,
        pause_reason: None,
        trigger: state.trigger.clone(),
        boot_only: None,
        quarantined: None,
        signed_seq: None,
        signed_expires: None,
        signers: Vec::new(),
        reboot_slot: None,
        reboot_deadline: None,
        reboot_postponed_until: None,
        reboot_at: None,
        deferred: None,
    }
}

/// What an apply leaves to confirm: `boot_only` says a switch inhibitor turned it into `boot`.
fn needs(
    apply: &crate::core::settings::ApplyPolicy,
    boot_only: bool,
    reboot: bool,
) -> lifeline::Needs {
    if !apply.confirm.is_on() {
        return lifeline::Needs::Nothing;
    }
    match apply.action {
        _ if boot_only => lifeline::Needs::Boot,
        Action::Switch | Action::Test if reboot => lifeline::Needs::ActivationThenBoot,
        Action::Switch | Action::Test => lifeline::Needs::Activation,
        Action::Boot => lifeline::Needs::Boot,
        Action::Build => lifeline::Needs::Nothing,
    }
}

/// Writes the log, if any, then the report, both atomically.
async fn send<S: Remote>(
    session: &mut S,
    report: &Report,
    log: Option<&[u8]>,
) -> Result<(), PullError> {
    if let Some(log) = log {
        session
            .write_atomic(&remote_path(&[REPORTS_DIR, REBUILD_LOG_FILE]), log)
            .await
            .map_err(PullError::Report)?;
    }
    session
        .write_atomic(
            &remote_path(&[REPORTS_DIR, STATUS_FILE]),
            report.render().as_bytes(),
        )
        .await
        .map_err(PullError::Report)
}

/// `state_dir/current` → `releases/<id>`, swapped by rename.
fn point_current(state_dir: &Path, id: &ReleaseId) -> std::io::Result<()> {
    let tmp = state_dir.join(".current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new(RELEASES_DIR).join(id.as_str()), &tmp)?;
    std::fs::rename(&tmp, state_dir.join(CURRENT_LINK))?;
    crate::core::durable::sync_dir(state_dir)
}

fn restore_current(state_dir: &Path, previous: Option<&ReleaseId>) {
    let result = match previous {
        Some(prev) => point_current(state_dir, prev),
        None => std::fs::remove_file(state_dir.join(CURRENT_LINK)),
    };
    if let Err(e) = result {
        tracing::warn!("cannot point {CURRENT_LINK} back to the previous release: {e}");
    }
}

#[cfg(test)]
mod tests;
