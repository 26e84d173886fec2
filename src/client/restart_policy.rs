//! When a needed restart happens: a pure function of the policy, the user's postponement, the deadline, the window and the time.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::core::names::ReleaseId;
use crate::core::settings::{Interval, Reboot, parse_time};
use crate::core::window::RebootWindow;

/// How long before a restart the person at the computer is warned.
pub const WARNING_LEAD: Duration = Duration::from_secs(10 * 60);
/// A warning older than this no longer counts (the window closed, the laptop slept): the
/// person is warned again before the restart.
pub const WARNING_FRESH: Duration = Duration::from_secs(60 * 60);
/// `reboot = "ask"` without `reboot_deadline`: how long the user may keep postponing.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(3 * 24 * 3600);

/// Whether anyone is warned before the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warning {
    /// Nobody to tell (notifications off, `reboot = "if-needed"`): restart at once.
    Silent,
    /// Tell the person at the computer this long before.
    Before(Duration),
}

/// A postponement the user asked for (`tiffin reboot --postpone`, the notification's button).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Postponed {
    pub at: SystemTime,
    pub until: SystemTime,
}

/// Everything the decision depends on; `now` and `local_minute` come from an injected clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub policy: Reboot,
    pub warning: Warning,
    /// When the release that needs the restart was applied.
    pub needed_since: SystemTime,
    /// `reboot = "ask"`: how long after `needed_since` postponements count.
    pub deadline: Duration,
    pub postponed: Option<Postponed>,
    /// When the last warning of this restart was given.
    pub warned_at: Option<SystemTime>,
    pub window: Option<RebootWindow>,
    pub now: SystemTime,
    /// Minutes after local midnight at `now`.
    pub local_minute: u16,
}

/// What to do about the restart now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart now.
    Restart,
    /// Warn now; the first poll from `restart_at` restarts.
    Warn { restart_at: SystemTime },
    /// Warned already; the first poll from `restart_at` restarts.
    Warned { restart_at: SystemTime },
    /// The user postponed it until then (never past the deadline).
    Postponed { until: SystemTime },
    /// Outside the reboot window, which opens in `opens_in`.
    Window {
        window: RebootWindow,
        opens_in: Duration,
    },
    /// `reboot = "never"`: left to an admin.
    Never,
}

impl Decision {
    /// One line for a person: what happens to the restart and when.
    pub fn describe(&self) -> String {
        let t = |t: &SystemTime| crate::core::settings::format_time(*t);
        match self {
            Decision::Restart => "due now".to_owned(),
            Decision::Warn { restart_at } | Decision::Warned { restart_at } => {
                format!("announced: the computer restarts at {}", t(restart_at))
            }
            Decision::Postponed { until } => format!("postponed by the user until {}", t(until)),
            Decision::Window { window, opens_in } => format!(
                "waits for the reboot window {window} (local time), which opens in {}",
                humantime::format_duration(*opens_in)
            ),
            Decision::Never => "left to an admin (reboot = \"never\")".to_owned(),
        }
    }
}

impl Facts {
    /// The time after which postponements no longer count (`ask` only).
    pub fn deadline_at(&self) -> Option<SystemTime> {
        (self.policy == Reboot::Ask).then(|| self.needed_since + self.deadline)
    }

    /// The postponement in force now, cut at the deadline.
    fn postponed_until(&self) -> Option<SystemTime> {
        let p = self.postponed?;
        let until = match self.deadline_at() {
            Some(deadline) => p.until.min(deadline),
            None => return None,
        };
        (until > self.now).then_some(until)
    }

    /// The warning given for this restart, if it still counts: fresh, and given after the
    /// last postponement (a postponed restart is announced again).
    fn standing_warning(&self) -> Option<SystemTime> {
        let w = self.warned_at.filter(|w| *w <= self.now)?;
        let fresh = self.now.duration_since(w).unwrap_or_default() < WARNING_FRESH;
        let after_postponing = self.postponed.is_none_or(|p| w >= p.at);
        (fresh && after_postponing).then_some(w)
    }
}

/// What to do about a needed restart at `facts.now`.
pub fn decide(facts: &Facts) -> Decision {
    if facts.policy == Reboot::Never {
        return Decision::Never;
    }
    if let Some(until) = facts.postponed_until() {
        return Decision::Postponed { until };
    }
    if let Some(window) = facts.window.filter(|w| !w.contains(facts.local_minute)) {
        let minutes = u64::from(window.minutes_until_open(facts.local_minute));
        return Decision::Window {
            window,
            opens_in: Duration::from_secs(minutes * 60),
        };
    }
    let Warning::Before(lead) = facts.warning else {
        return Decision::Restart;
    };
    match facts.standing_warning() {
        Some(w) if facts.now >= w + lead => Decision::Restart,
        Some(w) => Decision::Warned {
            restart_at: w + lead,
        },
        None => Decision::Warn {
            restart_at: facts.now + lead,
        },
    }
}

/// Why a postponement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no restart is waiting on this computer: there is nothing to postpone")]
    NothingPending,
    #[error(
        "this computer's restart cannot be postponed: its release says reboot = \"if-needed\" (only reboot = \"ask\" lets the user postpone)"
    )]
    NotAsk,
    #[error(
        "the restart can no longer be postponed: its deadline {deadline} has passed; the computer restarts at the first moment inside its reboot window, after a ten-minute warning"
    )]
    PastDeadline { deadline: String },
}

/// The time a postponement of `length` asked at `now` holds the restart back to: never past
/// the deadline, refused once the deadline has passed.
pub fn postpone(facts: &Facts, length: Duration) -> Result<SystemTime, Refused> {
    let deadline = match facts.policy {
        Reboot::Ask => facts.needed_since + facts.deadline,
        Reboot::IfNeeded => return Err(Refused::NotAsk),
        Reboot::Never => return Err(Refused::NothingPending),
    };
    if facts.now >= deadline {
        let deadline = crate::core::settings::format_time(deadline);
        return Err(Refused::PastDeadline { deadline });
    }
    Ok((facts.now + length).min(deadline))
}

/// A restart the applied release needs, announced to the user (state.toml `[restart]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingRestart {
    /// The release whose system needs it.
    pub id: ReleaseId,
    /// Since when a restart has been needed (a newer release keeps the first time, so a
    /// stream of releases cannot move the deadline).
    pub since: String,
    pub policy: Reboot,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<RebootWindow>,
    /// `reboot = "ask"`: how long after `since` postponements count.
    pub deadline: Interval,
    /// When the person was last warned that the computer restarts in ten minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warned_at: Option<String>,
    /// Whether the restart also waits for a slot the server grants (`max_rebooting`).
    #[serde(
        default,
        skip_serializing_if = "crate::core::settings::RebootSlot::is_free"
    )]
    pub slot: crate::core::settings::RebootSlot,
}

/// `postpone.toml`: when the user asked, and until when the restart waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postponement {
    pub at: String,
    pub until: String,
}

impl Postponement {
    fn times(&self) -> Option<Postponed> {
        Some(Postponed {
            at: parse_time(&self.at)?,
            until: parse_time(&self.until)?,
        })
    }
}

impl PendingRestart {
    /// The facts of [`restart_policy::decide`] at `now`.
    pub fn facts(&self, postponed: Option<&Postponement>, now: SystemTime, minute: u16) -> Facts {
        Facts {
            policy: self.policy,
            warning: Warning::Before(WARNING_LEAD),
            needed_since: parse_time(&self.since).unwrap_or(now),
            deadline: self.deadline.0,
            postponed: postponed.and_then(Postponement::times),
            warned_at: self.warned_at.as_deref().and_then(parse_time),
            window: self.window,
            now,
            local_minute: minute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const MIN: Duration = Duration::from_secs(60);

    /// Day 0 starts at local midnight in these tests: the minute is derived from the time.
    fn at(hours: u64, minutes: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(hours * 3600 + minutes * 60)
    }

    fn minute_of(t: SystemTime) -> u16 {
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        ((secs / 60) % 1440) as u16
    }

    /// A restart needed since 10:00 on day 0, `ask`, deadline 3 days, warned, window 01:00-05:00.
    fn facts(now: SystemTime) -> Facts {
        Facts {
            policy: Reboot::Ask,
            warning: Warning::Before(WARNING_LEAD),
            needed_since: at(10, 0),
            deadline: DEFAULT_DEADLINE,
            postponed: None,
            warned_at: None,
            window: Some("01:00-05:00".parse().unwrap()),
            now,
            local_minute: minute_of(now),
        }
    }

    fn with_now(f: Facts, now: SystemTime) -> Facts {
        Facts {
            now,
            local_minute: minute_of(now),
            ..f
        }
    }

    #[test]
    fn outside_the_window_it_waits_inside_it_warns_then_restarts() {
        let f = facts(at(11, 0));
        assert_eq!(
            decide(&f),
            Decision::Window {
                window: f.window.unwrap(),
                opens_in: 14 * HOUR
            }
        );
        let f = with_now(f, at(25, 0));
        assert_eq!(
            decide(&f),
            Decision::Warn {
                restart_at: at(25, 10)
            }
        );
        let warned = Facts {
            warned_at: Some(at(25, 0)),
            ..f
        };
        assert_eq!(
            decide(&with_now(warned, at(25, 5))),
            Decision::Warned {
                restart_at: at(25, 10)
            }
        );
        assert_eq!(decide(&with_now(warned, at(25, 15))), Decision::Restart);
    }

    #[test]
    fn a_stale_warning_is_given_again() {
        let f = Facts {
            warned_at: Some(at(25, 0)),
            ..facts(at(49, 0))
        };
        assert_eq!(
            decide(&f),
            Decision::Warn {
                restart_at: at(49, 10)
            },
            "the warning of yesterday's window does not count today"
        );
    }

    #[test]
    fn postponing_holds_the_restart_until_the_deadline_and_no_longer() {
        let p = Postponed {
            at: at(25, 5),
            until: at(30, 0),
        };
        let f = Facts {
            postponed: Some(p),
            warned_at: Some(at(25, 0)),
            ..facts(at(25, 15))
        };
        assert_eq!(decide(&f), Decision::Postponed { until: at(30, 0) });
        // After the postponement, in the next window: warned again, since it was postponed
        // after the last warning.
        let next = with_now(f, at(49, 0));
        assert_eq!(
            decide(&next),
            Decision::Warn {
                restart_at: at(49, 10)
            }
        );
        // A postponement past the deadline (day 3, 10:00) ends at the deadline.
        let long = Facts {
            postponed: Some(Postponed {
                at: at(73, 0),
                until: at(200, 0),
            }),
            ..facts(at(81, 0))
        };
        assert_eq!(decide(&long), Decision::Postponed { until: at(82, 0) });
        assert_eq!(
            decide(&with_now(long, at(97, 0))),
            Decision::Warn {
                restart_at: at(97, 10)
            },
            "past the deadline: the first moment in the window, after the warning"
        );
    }

    #[test]
    fn postponements_are_cut_at_the_deadline_and_refused_after_it() {
        let f = facts(at(12, 0));
        assert_eq!(postpone(&f, 2 * HOUR), Ok(at(14, 0)));
        let late = with_now(f, at(81, 0));
        assert_eq!(postpone(&late, 5 * HOUR), Ok(at(82, 0)));
        let after = with_now(f, at(82, 0));
        assert!(matches!(
            postpone(&after, MIN),
            Err(Refused::PastDeadline { .. })
        ));
        let if_needed = Facts {
            policy: Reboot::IfNeeded,
            ..f
        };
        assert_eq!(postpone(&if_needed, MIN), Err(Refused::NotAsk));
    }

    #[test]
    fn if_needed_ignores_postponements_and_restarts_at_once_when_silent() {
        let f = Facts {
            policy: Reboot::IfNeeded,
            warning: Warning::Silent,
            postponed: Some(Postponed {
                at: at(2, 0),
                until: at(9, 0),
            }),
            ..facts(at(2, 0))
        };
        assert_eq!(decide(&f), Decision::Restart);
        let no_window = Facts { window: None, ..f };
        assert_eq!(decide(&with_now(no_window, at(14, 0))), Decision::Restart);
        let never = Facts {
            policy: Reboot::Never,
            ..f
        };
        assert_eq!(decide(&never), Decision::Never);
    }

    #[test]
    fn a_window_across_midnight_and_no_window() {
        let f = Facts {
            window: Some("23:00-02:00".parse().unwrap()),
            ..facts(at(23, 30))
        };
        assert!(matches!(decide(&f), Decision::Warn { .. }));
        let none = Facts {
            window: None,
            ..facts(at(11, 0))
        };
        assert!(matches!(decide(&none), Decision::Warn { .. }));
    }

    proptest::proptest! {
        /// Whatever the user does, a restart is never held past the deadline by a
        /// postponement, and a restart never happens without a standing warning.
        #[test]
        fn never_past_the_deadline_never_unwarned(
            now in 0u64..200 * 60, asked in 0u64..200 * 60, len in 1u64..400 * 60,
            warned in proptest::option::of(0u64..200 * 60),
        ) {
            let t = |m: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(m * 60);
            let f = Facts {
                postponed: (asked <= now).then(|| Postponed { at: t(asked), until: t(asked + len) }),
                warned_at: warned.map(t),
                window: None,
                ..facts(t(now))
            };
            let f = with_now(f, t(now));
            match decide(&f) {
                Decision::Postponed { until } => {
                    proptest::prop_assert!(until <= f.deadline_at().unwrap());
                    proptest::prop_assert!(until > f.now);
                }
                Decision::Restart => {
                    let w = f.warned_at.unwrap();
                    proptest::prop_assert!(f.now >= w + WARNING_LEAD);
                }
                _ => {}
            }
        }
    }
}
