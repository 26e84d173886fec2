//! The lifeline: a release is confirmed by reaching the server over a fresh session after
//! activating (or booting) it; without that it is rolled back and quarantined.
//!
//! A release that breaks the host's path to the server (a firewall rule, a route, DNS, an
//! SSH client option) must not leave the host running, unreachable and unfixable. So the
//! kept session never counts: only a new TCP connection, handshake and SFTP read of
//! `/CURRENT`, made by the system just activated, confirms it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::state::{Applied, Awaiting, Quarantine, State, Unconfirmed};
use super::transport::{Connector, Remote};
use super::{CURRENT_LIMIT, remote_path};
use crate::core::layout::CURRENT_FILE;
use crate::core::names::ReleaseId;
use crate::core::settings::{Interval, format_time};

/// The waits between two attempts to reach the server: quick at first, then every 15 s.
const RETRY_DELAYS: [u64; 5] = [1, 2, 4, 8, 15];

/// Why the server could not be reached within the time given: the last attempt's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreached {
    pub attempts: u32,
    pub last: String,
}

/// An activation that could not be confirmed, and where rolling back left the host.
#[derive(Debug, thiserror::Error)]
#[error(
    "release #{seq} ({id}) was activated, but the server was unreachable after activation: no fresh session within {timeout} ({attempts} attempt(s), last: {last}); {rolled}. It is quarantined: not applied again until a newer release is published or `tiffin trigger {host} --retry`"
)]
pub struct CutOff {
    pub id: ReleaseId,
    pub seq: u64,
    pub host: String,
    pub timeout: Interval,
    pub attempts: u32,
    pub last: String,
    pub rolled: String,
}

/// Opens fresh sessions until one reads `/CURRENT`, for at most `within`: attempts at once,
/// then after 1, 2, 4, 8 and every 15 s, the last one at the deadline itself. Each attempt is
/// bounded by the time left (at least `LAST_ATTEMPT`), so a server that never answers costs
/// `within` and a few seconds, not more.
pub async fn reach<C: Connector>(fresh: &mut C, within: Duration) -> Result<C::Session, Unreached> {
    let deadline = tokio::time::Instant::now() + within;
    let mut attempts = 0u32;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        attempts += 1;
        let budget = left.max(LAST_ATTEMPT);
        let last = match tokio::time::timeout(budget, attempt(fresh)).await {
            Ok(Ok(session)) => return Ok(session),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {}", Interval(budget)),
        };
        tracing::warn!("reaching the server over a fresh session (attempt {attempts}): {last}");
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Unreached { attempts, last });
        }
        let wait = RETRY_DELAYS[(attempts as usize - 1).min(RETRY_DELAYS.len() - 1)];
        tokio::time::sleep(Duration::from_secs(wait).min(deadline - now)).await;
    }
}

/// The least time one attempt gets, also the one at the deadline.
const LAST_ATTEMPT: Duration = Duration::from_secs(2);

/// One new session and one read of `/CURRENT` over it.
async fn attempt<C: Connector>(fresh: &mut C) -> Result<C::Session, String> {
    let mut session = fresh.connect().await.map_err(|e| e.to_string())?;
    match session
        .read(&remote_path(&[CURRENT_FILE]), CURRENT_LIMIT)
        .await
    {
        Ok(_) => Ok(session),
        Err(e) => {
            fresh.close(session).await;
            Err(e.to_string())
        }
    }
}

/// What an apply leaves to confirm, from how it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing (confirmation off, or `build`).
    Nothing,
    /// A fresh session now, from the system just activated.
    Activation,
    /// A fresh session once the host has booted the new system (`boot`, an inhibitor).
    Boot,
    /// Both: activated now, and a reboot into a new kernel follows (`reboot = "if-needed"`).
    ActivationThenBoot,
}

impl Needs {
    pub fn now(self) -> bool {
        matches!(self, Needs::Activation | Needs::ActivationThenBoot)
    }
    pub fn boot(self) -> bool {
        matches!(self, Needs::Boot | Needs::ActivationThenBoot)
    }
}

/// What a confirmation needs to know about the release and what ran before it.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: ReleaseId,
    pub seq: u64,
    pub timeout: Interval,
    pub previous: Option<Applied>,
    pub previous_system: Option<PathBuf>,
    /// The system the host boots next (the profile's generation), for a boot confirmation.
    pub system: Option<PathBuf>,
}

impl Pending {
    pub fn record(&self, awaiting: Awaiting, now: std::time::SystemTime) -> Unconfirmed {
        Unconfirmed {
            id: self.id.clone(),
            seq: self.seq,
            awaiting,
            since: format_time(now),
            system: self.system.clone(),
            previous: self.previous.clone(),
            previous_system: self.previous_system.clone(),
            timeout: self.timeout,
        }
    }
}

/// The system `profile` leads to now (its generation's store path).
pub fn profile_system(profile: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(profile).ok()
}

/// A poll reached the server over a session of its own (a new process, so a new
/// connection): that confirms an activation left unconfirmed by a process that ended
/// mid-way, and a boot once the host runs the system it waited for.
pub fn settle_at_poll(state: &mut State, booted_system: &Path) -> Option<String> {
    let u = state.unconfirmed.as_ref()?;
    let confirmed = match u.awaiting {
        Awaiting::Activation => true,
        Awaiting::Boot => booted(booted_system, u.system.as_deref()),
    };
    if !confirmed {
        return None;
    }
    let said = format!(
        "release #{} ({}) is confirmed: the server was reached over a fresh session{}",
        u.seq,
        u.id.short(),
        if u.awaiting == Awaiting::Boot {
            " after booting it"
        } else {
            ""
        }
    );
    state.unconfirmed = None;
    Some(said)
}

/// Whether the host booted `system`.
pub fn booted(booted_system: &Path, system: Option<&Path>) -> bool {
    let Some(system) = system else { return false };
    let (Ok(b), Ok(s)) = (
        std::fs::canonicalize(booted_system),
        std::fs::canonicalize(system),
    ) else {
        return false;
    };
    b == s
}

/// Records `id` as quarantined (not applied again until a newer release or `--retry`).
pub fn quarantine(
    state: &mut State,
    id: &ReleaseId,
    seq: u64,
    reason: &str,
    now: std::time::SystemTime,
) {
    state.quarantine = Some(Quarantine {
        id: id.clone(),
        seq,
        since: format_time(now),
        reason: reason.to_owned(),
    });
    state.unconfirmed = None;
    // A quarantine replaces the backoff: the release is not retried by time.
    state.failure = None;
}

/// No session at all: a rollback decided without the server runs through this, and every
/// request it would make fails at once (its report goes over a fresh session, when one works).
pub struct Offline;

impl Remote for Offline {
    async fn read(&mut self, path: &str, _: u64) -> Result<Vec<u8>, super::RemoteError> {
        Err(offline(path))
    }
    async fn read_files(
        &mut self,
        _: &[super::transport::Wanted],
    ) -> Result<Vec<Vec<u8>>, super::RemoteError> {
        Err(offline("files"))
    }
    async fn read_into(
        &mut self,
        file: &super::transport::Wanted,
        _: &mut dyn std::io::Write,
    ) -> Result<(), super::transport::StreamError> {
        Err(offline(&file.path).into())
    }
    async fn write_atomic(&mut self, path: &str, _: &[u8]) -> Result<(), super::RemoteError> {
        Err(offline(path))
    }
}

fn offline(path: &str) -> super::RemoteError {
    super::RemoteError::Other {
        path: path.to_owned(),
        message: "no session to the server".into(),
    }
}

/// How `tiffin confirm-boot` ended.
#[derive(Debug)]
pub enum BootCheck {
    /// No release waits for a boot confirmation.
    NothingPending,
    /// A release waits, but the host booted another system (an older generation picked by
    /// hand, say): nothing is decided; the next boot into it is checked.
    OtherSystem {
        id: ReleaseId,
        booted: Option<PathBuf>,
    },
    Confirmed {
        id: ReleaseId,
        seq: u64,
    },
    /// Unreachable, and nothing recorded to go back to: the release stays.
    NoPrevious {
        id: ReleaseId,
        seq: u64,
        last: String,
    },
    /// Unreachable: the previous release's files are back, the release is quarantined, and
    /// `boot_default` says whether the previous system is the boot default (then reboot).
    RolledBack {
        id: ReleaseId,
        seq: u64,
        to: Option<ReleaseId>,
        previous_system: PathBuf,
        reason: String,
        boot_default: Result<(), String>,
    },
}

/// What the boot-time unit runs: waits up to the release's confirmation timeout for one fresh
/// session; without one, puts the previous release back and makes its system the boot
/// default. The lock is held only to read and write the state, never while waiting, so a
/// pull at boot runs meanwhile (and its session confirms the boot too).
pub async fn confirm_boot<C: Connector>(
    fresh: &mut C,
    cfg: &super::config::ClientConfig,
    opts: &super::PollOptions,
) -> Result<BootCheck, super::PullError> {
    let state = State::load(&cfg.state_dir)?;
    let Some(u) = state.unconfirmed else {
        return Ok(BootCheck::NothingPending);
    };
    if !booted(&opts.booted_system, u.system.as_deref()) {
        let booted = std::fs::canonicalize(&opts.booted_system).ok();
        return Ok(BootCheck::OtherSystem { id: u.id, booted });
    }
    tracing::info!(
        "release #{} ({}) waits for its boot to be confirmed: reaching the server (up to {})",
        u.seq,
        u.id.short(),
        u.timeout
    );
    let reached = reach(fresh, u.timeout.0).await;
    let _lock = lock_waiting(&cfg.state_dir, cfg.rebuild_timeout.0).await?;
    let mut state = State::load(&cfg.state_dir)?;
    if state.unconfirmed.as_ref() != Some(&u) {
        // A pull confirmed it meanwhile (or applied something newer): nothing left to do.
        return Ok(BootCheck::Confirmed {
            id: u.id,
            seq: u.seq,
        });
    }
    let last = match reached {
        Ok(session) => {
            fresh.close(session).await;
            state.unconfirmed = None;
            state.save(&cfg.state_dir)?;
            return Ok(BootCheck::Confirmed {
                id: u.id,
                seq: u.seq,
            });
        }
        Err(unreached) => unreached.last,
    };
    let Some(previous_system) = u.previous_system.clone() else {
        state.unconfirmed = None;
        state.save(&cfg.state_dir)?;
        return Ok(BootCheck::NoPrevious {
            id: u.id,
            seq: u.seq,
            last,
        });
    };
    let reason = format!(
        "rolled back: the server was unreachable for {} after booting it (last: {last})",
        u.timeout
    );
    let to = restore_previous(cfg, opts, &u);
    state.applied = u.previous.clone();
    (state.pending_reboot, state.boot_only) = (None, None);
    state.restart = None;
    quarantine(&mut state, &u.id, u.seq, &reason, (opts.now)());
    // Saved before the boot loader is touched: whatever happens next, this release is never
    // booted again automatically.
    state.save(&cfg.state_dir)?;
    let boot_default = boot_default(cfg, opts, &previous_system);
    Ok(BootCheck::RolledBack {
        id: u.id,
        seq: u.seq,
        to,
        previous_system,
        reason,
        boot_default,
    })
}

/// The previous release's files deployed again (both stages: the reboot that follows starts
/// every unit afresh) and `current` pointed back at it; its id, when that worked.
fn restore_previous(
    cfg: &super::config::ClientConfig,
    opts: &super::PollOptions,
    u: &Unconfirmed,
) -> Option<ReleaseId> {
    let prev = u.previous.as_ref()?;
    let store = super::fetch::Store::new(&cfg.state_dir);
    let release_dir = store.release(&prev.id);
    let deployed = std::fs::read(release_dir.join(crate::core::release::MANIFEST_FILE))
        .map_err(|e| e.to_string())
        .and_then(|b| {
            crate::core::release::Manifest::parse_verified(&b, &prev.id).map_err(|e| e.to_string())
        })
        .and_then(|m| {
            let d = super::deploy::DeployOptions {
                root: &cfg.root,
                release_dir: &release_dir,
                state_dir: &cfg.state_dir,
                owner: opts.owner,
            };
            for stage in [
                crate::core::release::Stage::Before,
                crate::core::release::Stage::After,
            ] {
                super::deploy::deploy_stage(&m, &d, stage).map_err(|e| e.to_string())?;
            }
            Ok(())
        });
    if let Err(e) = deployed {
        tracing::warn!(
            "the files of release {} could not be deployed again: {e}",
            prev.id.short()
        );
    }
    super::restore_current(&cfg.state_dir, Some(&prev.id));
    Some(prev.id.clone())
}

/// Makes `system` the system profile's generation and the boot loader's default
/// (`switch-to-configuration boot`, which writes GRUB's or systemd-boot's entry alike).
fn boot_default(
    cfg: &super::config::ClientConfig,
    opts: &super::PollOptions,
    system: &Path,
) -> Result<(), String> {
    let detach = super::activation::Detach::resolve(cfg.activation, &cfg.systemd_run);
    let switch = super::prebuilt::Switch {
        settings: &cfg.prebuilt,
        profile: &opts.system_profile,
        timeout: cfg.rebuild_timeout.0,
        detach: &detach,
    };
    let log = cfg.state_dir.join("rollback.log");
    match switch
        .run(system, crate::core::settings::Action::Boot, &log)
        .ended
        .failure()
    {
        None => Ok(()),
        Some(message) => Err(message),
    }
}

/// The state lock, waited for (a pull may hold it while it applies), up to `max`.
async fn lock_waiting(
    state_dir: &Path,
    max: Duration,
) -> Result<crate::core::durable::Lock, super::state::StateError> {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        match super::state::lock(state_dir) {
            Err(super::state::StateError::Busy { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_say_what_is_confirmed_when() {
        assert!(Needs::Activation.now() && !Needs::Activation.boot());
        assert!(!Needs::Boot.now() && Needs::Boot.boot());
        assert!(Needs::ActivationThenBoot.now() && Needs::ActivationThenBoot.boot());
        assert!(!Needs::Nothing.now() && !Needs::Nothing.boot());
    }
}
