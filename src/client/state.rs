//! The client's memory between polls (`state_dir/state.toml`), its backoff, and the lock against a concurrent pull.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::core::names::ReleaseId;
use crate::core::settings::{format_time, parse_time};

pub const STATE_FILE: &str = "state.toml";
pub const LOCK_FILE: &str = "lock";

/// Errors of the local state; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a valid tiffin state ({message}); move it aside to start afresh (the next pull re-applies the current release)"
    )]
    Invalid { path: PathBuf, message: String },
    #[error(
        "another tiffin pull is running (it holds {path}); this one exits without doing anything"
    )]
    Busy { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The last release applied successfully.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    pub id: ReleaseId,
    pub seq: u64,
    pub at: String,
}

/// A release that failed, and when to try it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub id: ReleaseId,
    pub seq: Option<u64>,
    /// Failed attempts of this release in a row.
    pub failures: u32,
    pub last_attempt: String,
    pub next_retry: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Time of the last poll that reached the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_poll: Option<String>,
    /// A reboot the applied release needs, deferred to its reboot window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reboot: Option<PendingReboot>,
    /// How long the last attempt to apply a release took, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_apply_seconds: Option<u64>,
    /// The id of the last trigger handled (line 2 of `/CURRENT`), so each is acted on once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The applied release went in with `boot` because a switch inhibitor refused `switch`:
    /// reported until the host runs it (after a reboot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_only: Option<BootOnly>,
    /// The applied release is not confirmed yet: the host has not reached the server over a
    /// fresh session since activating it (or since booting it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed: Option<Unconfirmed>,
    /// A release that was rolled back: not applied again until a newer one or `--retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
    /// The last signed statement this host verified (signed fleets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<Accepted>,
    /// A restart the person at the computer is told about and may postpone (`reboot = "ask"`,
    /// or notifications on); `pending_reboot` is the silent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<super::restart_policy::PendingRestart>,
}

/// A signed statement the host verified: which release, until when, by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accepted {
    /// sha256 of the statement's bytes (`CURRENT`'s statement line names it).
    pub sha256: String,
    pub release: ReleaseId,
    pub seq: u64,
    pub expires: String,
    pub root: u64,
    pub signers: Vec<String>,
}

/// What confirms the applied release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Awaiting {
    /// A fresh session after the activation (this process; a crash leaves it for the next poll).
    Activation,
    /// A fresh session once the host has booted `system` (`tiffin confirm-boot`, or any poll).
    Boot,
}

/// A release waiting for its confirmation, and what to go back to without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unconfirmed {
    pub id: ReleaseId,
    pub seq: u64,
    pub awaiting: Awaiting,
    pub since: String,
    /// The system the release boots (the profile's generation after the apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<PathBuf>,
    /// The release and the system that ran before it: where a rollback goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Applied>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_system: Option<PathBuf>,
    /// The release's `[apply] confirm_timeout`, or the client's.
    pub timeout: crate::core::settings::Interval,
}

/// A release that was rolled back, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quarantine {
    pub id: ReleaseId,
    pub seq: u64,
    pub since: String,
    pub reason: String,
}

/// A release applied for the next boot only, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootOnly {
    pub id: ReleaseId,
    /// nixpkgs' words: the inhibitors that changed.
    pub reason: String,
}

/// A needed reboot waiting for its window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingReboot {
    /// The release whose system needs it.
    pub id: ReleaseId,
    pub since: String,
    /// The window it waits for; none: it waits for a reboot slot only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<crate::core::window::RebootWindow>,
    /// Whether it also waits for a slot the server grants (`max_rebooting`).
    #[serde(
        default,
        skip_serializing_if = "crate::core::settings::RebootSlot::is_free"
    )]
    pub slot: crate::core::settings::RebootSlot,
}

/// Exponential backoff: `initial`, doubling per failure, at most `max`.
pub fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(32);
    initial
        .checked_mul(1u32 << doublings.min(31))
        .unwrap_or(max)
        .min(max)
}

impl State {
    pub fn load(state_dir: &Path) -> Result<State, StateError> {
        let path = state_dir.join(STATE_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| StateError::Invalid {
                path,
                message: crate::core::diag::toml_message(&e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(StateError::Io { path, source: e }),
        }
    }

    pub fn save(&self, state_dir: &Path) -> Result<(), StateError> {
        let text = toml::to_string(self).expect("state always serializes");
        let path = state_dir.join(STATE_FILE);
        super::fetch::fault::check().map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        write_file_atomic(&path, text.as_bytes(), 0o600)
    }

    /// Records a failure of `id`; the count restarts when a different release fails.
    pub fn record_failure(
        &mut self,
        id: &ReleaseId,
        seq: Option<u64>,
        error: &str,
        now: SystemTime,
        (initial, max): (Duration, Duration),
    ) {
        let failures = match &self.failure {
            Some(f) if &f.id == id => f.failures.saturating_add(1),
            _ => 1,
        };
        self.failure = Some(Failure {
            id: id.clone(),
            seq,
            failures,
            last_attempt: format_time(now),
            next_retry: format_time(now + backoff(initial, max, failures)),
            error: error.to_owned(),
        });
    }

    /// The failure of `id` if it is still backing off at `now`.
    pub fn backing_off(&self, id: &ReleaseId, now: SystemTime) -> Option<&Failure> {
        self.failure
            .as_ref()
            .filter(|f| &f.id == id && parse_time(&f.next_retry).is_some_and(|retry| now < retry))
    }
}

/// Creates `state_dir` (0700) if needed and checks nobody else can read it: it holds secrets.
pub fn prepare_state_dir(state_dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
    {
        Ok(()) => {}
        Err(e) => return Err(io(state_dir)(e)),
    }
    let meta = fs::symlink_metadata(state_dir).map_err(io(state_dir))?;
    if !meta.is_dir() {
        return Err(io(state_dir)(std::io::Error::other(
            "not a directory (a symlink is not accepted)",
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700)).map_err(io(state_dir))?;
    }
    Ok(())
}

/// Takes the exclusive lock of `state_dir` (held until dropped), or says a pull is running.
pub fn lock(state_dir: &Path) -> Result<crate::core::durable::Lock, StateError> {
    crate::core::durable::Lock::try_exclusive(&state_dir.join(LOCK_FILE)).map_err(|e| match e {
        crate::core::durable::LockError::Busy { path } => StateError::Busy { path },
        crate::core::durable::LockError::Io { path, source } => io(&path)(source),
    })
}

/// Writes `path` by temp name + fsync + rename + directory fsync: never half-written.
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    crate::core::durable::write_atomic(path, bytes, mode, crate::core::durable::Owner::Caller)
        .map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let m = Duration::from_secs(60);
        let cap = Duration::from_secs(3600);
        let got: Vec<u64> = (1..=8).map(|n| backoff(m, cap, n).as_secs()).collect();
        assert_eq!(got, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(m, cap, u32::MAX), cap);
    }

    #[test]
    fn a_new_release_resets_the_count() {
        let a: ReleaseId = "a".repeat(64).parse().unwrap();
        let b: ReleaseId = "b".repeat(64).parse().unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let policy = (Duration::from_secs(60), Duration::from_secs(3600));
        let mut s = State::default();
        s.record_failure(&a, Some(1), "x", t0, policy);
        s.record_failure(&a, Some(1), "x", t0, policy);
        assert_eq!(s.failure.as_ref().unwrap().failures, 2);
        assert!(s.backing_off(&a, t0 + Duration::from_secs(119)).is_some());
        assert!(s.backing_off(&a, t0 + Duration::from_secs(120)).is_none());
        assert!(s.backing_off(&b, t0).is_none());
        s.record_failure(&b, Some(2), "y", t0, policy);
        assert_eq!(s.failure.as_ref().unwrap().failures, 1);
    }

    #[test]
    fn second_lock_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err();
        assert!(matches!(err, StateError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("another tiffin pull is running"));
        drop(first);
        lock(dir.path()).unwrap();
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let s = State {
            applied: Some(Applied {
                id: "c".repeat(64).parse().unwrap(),
                seq: 3,
                at: "2026-11-24T00:00:00Z".into(),
            }),
            ..State::default()
        };
        s.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), s);
    }
}
