//! `tiffin pause`: a client that reports but applies nothing until its pause ends (by itself, or by `tiffin resume`).

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::state::StateError;
use crate::core::settings::{format_time, parse_time};

pub const PAUSE_FILE: &str = "pause.toml";

/// The longest pause: a forgotten one must not hold a host back for long.
pub const MAX_PAUSE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest reason; it travels in every report.
pub const MAX_REASON: usize = 200;

/// Why a host is paused, as an operator wrote it: one line of printable text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PauseReason(String);

impl PauseReason {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PauseReason {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.chars().count() > MAX_REASON {
            return Err(format!(
                "the reason has {} characters, more than {MAX_REASON}: keep it to one short line",
                s.chars().count()
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(
                "the reason has a control character (a newline?): keep it to one line".into(),
            );
        }
        Ok(PauseReason(s))
    }
}

impl std::str::FromStr for PauseReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PauseReason::try_from(s.to_owned())
    }
}

impl From<PauseReason> for String {
    fn from(r: PauseReason) -> String {
        r.0
    }
}

/// `state_dir/pause.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pause {
    pub since: String,
    /// The pause ends by itself at this time.
    pub until: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<PauseReason>,
}

impl Pause {
    /// A pause from `now` for `length` (at most [`MAX_PAUSE`]).
    pub fn new(
        now: SystemTime,
        length: Duration,
        reason: Option<PauseReason>,
    ) -> Result<Pause, String> {
        if length > MAX_PAUSE {
            return Err(format!(
                "{} is longer than the longest pause, {}: pause again when it ends",
                humantime::format_duration(length),
                humantime::format_duration(MAX_PAUSE)
            ));
        }
        Ok(Pause {
            since: format_time(now),
            until: format_time(now + length),
            reason,
        })
    }

    fn is_over(&self, now: SystemTime) -> bool {
        parse_time(&self.until).is_none_or(|until| now >= until)
    }
}

/// Writes the pause (atomically, 0600), replacing any earlier one.
pub fn save(state_dir: &Path, pause: &Pause) -> Result<(), StateError> {
    let text = toml::to_string(pause).expect("a pause always serializes");
    super::state::write_file_atomic(&state_dir.join(PAUSE_FILE), text.as_bytes(), 0o600)
}

/// Ends the pause; `false` when there was none.
pub fn remove(state_dir: &Path) -> Result<bool, StateError> {
    let path = state_dir.join(PAUSE_FILE);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(StateError::Io { path, source }),
    }
    crate::core::durable::sync_dir(state_dir).map_err(|source| StateError::Io { path, source })?;
    Ok(true)
}

/// The pause in force at `now`, if any. One that is over is removed (best effort), so
/// it ends by itself even when nobody runs `tiffin resume`.
pub fn active(state_dir: &Path, now: SystemTime) -> Result<Option<Pause>, StateError> {
    let path = state_dir.join(PAUSE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    let pause: Pause = toml::from_str(&text).map_err(|e| StateError::Invalid {
        path: path.clone(),
        message: crate::core::diag::toml_message(&e),
    })?;
    if pause.is_over(now) {
        if let Err(e) = remove(state_dir) {
            tracing::warn!("the pause is over, but {e}");
        }
        return Ok(None);
    }
    Ok(Some(pause))
}

impl<R: super::transport::Remote, C: super::transport::Connector> super::Poll<'_, R, C> {
    /// While paused: the heartbeat goes out, carrying the pause, and nothing is applied (nor
    /// a deferred reboot made).
    pub(super) async fn hold(mut self, pause: Pause) -> Result<super::Polled, super::PullError> {
        let applied = self.state.applied.clone();
        // What runs, not what waits: the server compares it with the release it publishes.
        self.report.release = applied.as_ref().map(|a| a.id.to_string());
        self.report.seq = applied.as_ref().map(|a| a.seq);
        self.report.paused_until = Some(pause.until.clone());
        self.report.pause_reason = pause.reason.as_ref().map(|r| r.as_str().to_owned());
        if let Some(pending) = &self.state.pending_reboot {
            self.report.reboot = Some(crate::core::report::RebootReport::Pending);
            self.report.reboot_window = pending.window;
        }
        let saved = self.save_state();
        if let Err(e) = &saved {
            self.report.error = Some(e.to_string());
        }
        self.upload().await?;
        saved?;
        Ok(super::Polled::Paused {
            id: self.id,
            until: pause.until,
            reason: pause.reason.map(String::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_796_128_496);
    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    #[test]
    fn a_pause_holds_until_its_end_and_then_ends_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let reason: PauseReason = "demo at 11:00".parse().unwrap();
        let pause = Pause::new(at(0), Duration::from_secs(3600), Some(reason)).unwrap();
        save(dir.path(), &pause).unwrap();
        assert_eq!(active(dir.path(), at(10)).unwrap(), Some(pause.clone()));
        assert_eq!(active(dir.path(), at(3599)).unwrap(), Some(pause));
        assert_eq!(
            active(dir.path(), at(3600)).unwrap(),
            None,
            "over at its end"
        );
        assert!(
            !dir.path().join(PAUSE_FILE).exists(),
            "an expired pause is removed"
        );
    }

    #[test]
    fn resume_ends_a_pause_early_and_says_when_there_was_none() {
        let dir = tempfile::tempdir().unwrap();
        save(
            dir.path(),
            &Pause::new(at(0), Duration::from_secs(60), None).unwrap(),
        )
        .unwrap();
        assert!(remove(dir.path()).unwrap());
        assert_eq!(active(dir.path(), at(1)).unwrap(), None);
        assert!(!remove(dir.path()).unwrap());
    }

    #[test]
    fn limits_on_length_and_reason() {
        let e = Pause::new(at(0), MAX_PAUSE + Duration::from_secs(1), None).unwrap_err();
        assert!(e.contains("longer than the longest pause, 30days"), "{e}");
        assert!(
            "two\nlines"
                .parse::<PauseReason>()
                .unwrap_err()
                .contains("one line")
        );
        assert!(
            "x".repeat(201)
                .parse::<PauseReason>()
                .unwrap_err()
                .contains("more than 200")
        );
    }

    #[test]
    fn a_damaged_pause_file_is_an_error_naming_it_not_a_silent_resume() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(PAUSE_FILE), "until = 3\n").unwrap();
        let e = active(dir.path(), at(0)).unwrap_err();
        assert!(e.to_string().contains("pause.toml"), "{e}");
    }
}
