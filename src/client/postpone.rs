//! A restart the person at a workstation is told about and may postpone (`reboot = "ask"`): its record, the postponement, and the poll's steps.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::restart_policy::{self, Decision, PendingRestart, Postponement};
use super::state::StateError;
use crate::core::report::RebootReport;
use crate::core::settings::{ApplyPolicy, Interval, Reboot, format_time};

/// `state_dir/postpone.toml`, written by `tiffin reboot --postpone` (root, or its unit).
pub const POSTPONE_FILE: &str = "postpone.toml";
/// The longest single postponement; the deadline cuts it shorter.
pub const MAX_POSTPONE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The postponement on disk; a damaged file counts as none (it only ever delays a restart,
/// and the deadline bounds that anyway) and is said in the log.
pub fn load(state_dir: &Path) -> Option<Postponement> {
    let path = state_dir.join(POSTPONE_FILE);
    let text = fs::read_to_string(&path).ok()?;
    match toml::from_str(&text) {
        Ok(p) => Some(p),
        Err(e) => {
            let why = crate::core::diag::toml_message(&e);
            tracing::warn!("{}: ignored, not a postponement: {why}", path.display());
            None
        }
    }
}

/// Writes the postponement (atomically, 0600), replacing any earlier one.
pub fn save(state_dir: &Path, p: &Postponement) -> Result<(), StateError> {
    let text = toml::to_string(p).expect("a postponement always serializes");
    super::state::write_file_atomic(&state_dir.join(POSTPONE_FILE), text.as_bytes(), 0o600)
}

fn forget(state_dir: &Path) {
    match fs::remove_file(state_dir.join(POSTPONE_FILE)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {POSTPONE_FILE}: {e}"),
    }
}

/// Whether a restart goes through [`PendingRestart`] (told, warned, postponable) rather
/// than the silent reboot in the window.
pub fn announced(apply: &ApplyPolicy, notify: super::notify::Notify) -> bool {
    apply.reboot == Reboot::Ask || (apply.reboot == Reboot::IfNeeded && notify.is_on())
}

/// Whether the state's announced restart is due now (the watcher asks at each check).
pub fn restart_due(state_dir: &Path, opts: &super::PollOptions) -> bool {
    let Some(r) = super::state::State::load(state_dir)
        .ok()
        .and_then(|s| s.restart)
    else {
        return false;
    };
    let now = (opts.now)();
    let facts = r.facts(load(state_dir).as_ref(), now, (opts.local_minute)(now));
    matches!(
        restart_policy::decide(&facts),
        Decision::Restart | Decision::Warn { .. }
    )
}

impl<R: super::transport::Remote, C: super::transport::Connector> super::Poll<'_, R, C> {
    /// After applying a release that needs a restart: `true` to restart now. A restart the
    /// user is told about is recorded and decided by the policy; any other goes the old way.
    pub(super) fn restart_after_apply(&mut self, needed: bool, apply: &ApplyPolicy) -> bool {
        // Called after every successful apply: the place to say it was applied.
        let seq = self.report.seq.unwrap_or_default();
        self.tell(super::notify::Event::Applied { seq });
        let earlier = self.state.restart.take();
        if !needed || !announced(apply, self.cfg.notify) {
            forget(&self.cfg.state_dir);
            return self.reboot_now_or_later(needed, (apply.reboot_window, apply.reboot_slot));
        }
        self.state.pending_reboot = None;
        let now = (self.opts.now)();
        self.state.restart = Some(PendingRestart {
            id: self.id.clone(),
            since: earlier.map_or_else(|| format_time(now), |e| e.since),
            policy: apply.reboot,
            window: apply.reboot_window.or(self.cfg.reboot_window),
            deadline: apply
                .reboot_deadline
                .unwrap_or(Interval(restart_policy::DEFAULT_DEADLINE)),
            warned_at: None,
            slot: apply.reboot_slot,
        });
        self.tell(super::notify::Event::RestartNeeded {
            deadline: self.restart_deadline(),
        });
        self.settle_restart()
    }

    /// On a poll with nothing new: whether the announced restart is due now. One no longer
    /// needed (the computer was restarted since) is forgotten.
    pub(super) fn settle_restart(&mut self) -> bool {
        let Some(mut r) = self.state.restart.clone() else {
            return false;
        };
        let booted = &self.opts.booted_system;
        if r.id != self.id || !super::reboot::needed(booted, &self.opts.system_profile) {
            self.state.restart = None;
            forget(&self.cfg.state_dir);
            return false;
        }
        let postponed = load(&self.cfg.state_dir);
        let now = (self.opts.now)();
        let facts = r.facts(postponed.as_ref(), now, (self.opts.local_minute)(now));
        let decision = restart_policy::decide(&facts);
        if let Decision::Warn { restart_at } = decision {
            r.warned_at = Some(format_time(now));
            let at = super::notify::local_time(restart_at, false);
            tracing::info!("the computer restarts at {at}: the person at it is warned now");
            let postpone = match facts.deadline_at().is_some_and(|d| d > now) {
                true => super::notify::Postpone::Offered,
                false => super::notify::Postpone::NotOffered,
            };
            self.tell(super::notify::Event::RestartSoon { at, postpone });
        }
        self.report_restart(&r, &facts, decision);
        let slot = r.slot;
        self.state.restart = Some(r);
        // Due by the person's policy; a host in a group with max_rebooting also waits for its slot.
        decision == Decision::Restart && self.slot_allows(slot)
    }

    /// The report's account of the restart: pending, its window, deadline and postponement.
    fn report_restart(
        &mut self,
        r: &PendingRestart,
        facts: &restart_policy::Facts,
        decision: Decision,
    ) {
        self.report.reboot = Some(RebootReport::Pending);
        self.report.reboot_window = r.window;
        self.report.reboot_deadline = facts.deadline_at().map(format_time);
        self.report.reboot_postponed_until = match decision {
            Decision::Postponed { until } => Some(format_time(until)),
            _ => None,
        };
        self.report.reboot_at = match decision {
            Decision::Warn { restart_at } | Decision::Warned { restart_at } => {
                Some(format_time(restart_at))
            }
            _ => None,
        };
    }

    /// The deadline as the person reads it.
    fn restart_deadline(&self) -> Option<String> {
        let r = self.state.restart.as_ref()?;
        let now = (self.opts.now)();
        let deadline = r.facts(None, now, 0).deadline_at()?;
        Some(super::notify::local_time(deadline, true))
    }
}

/// What `tiffin reboot --postpone` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub until: String,
    pub deadline: Option<String>,
}

/// `tiffin reboot --postpone LENGTH` (as root): records the postponement, cut at the deadline.
pub fn postpone(
    state_dir: &Path,
    length: Duration,
    now: SystemTime,
) -> Result<Granted, PostponeError> {
    if length > MAX_POSTPONE {
        return Err(PostponeError::TooLong(length));
    }
    let state = super::state::State::load(state_dir)?;
    let r = state.restart.ok_or(PostponeError::Refused(
        restart_policy::Refused::NothingPending,
    ))?;
    let facts = r.facts(None, now, 0);
    let until = restart_policy::postpone(&facts, length).map_err(PostponeError::Refused)?;
    let p = Postponement {
        at: format_time(now),
        until: format_time(until),
    };
    save(state_dir, &p)?;
    Ok(Granted {
        until: p.until,
        deadline: facts.deadline_at().map(format_time),
    })
}

/// Why `tiffin reboot --postpone` did nothing.
#[derive(Debug, thiserror::Error)]
pub enum PostponeError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Refused(restart_policy::Refused),
    #[error(
        "{} is longer than the longest postponement, 7 days: postpone again later",
        humantime::format_duration(*.0)
    )]
    TooLong(Duration),
}
