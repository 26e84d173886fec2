//! Rollouts: the record of a publish going out in waves, and the controller that advances, halts or finishes it, a pure function of the policy, the hosts' reports and the time.
//!
//! There is no daemon: `tiffin rollout step` (a timer, or by hand) loads the record, asks
//! [`advance`] what to do, carries it out (`exec`) and saves the record, under the publish lock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::admin::fleet::rollout::{OnFailure, RolloutSettings};
use crate::core::names::HostName;
use crate::core::report::PullResult;

pub mod exec;
pub mod metrics;
pub mod slots;
#[cfg(test)]
mod tests;

/// Where the rollout's record lives, in the server's `state_dir` (outside every chroot).
pub const ROLLOUT_FILE: &str = "rollout.toml";

/// A moment on the server's clock, kept to the millisecond (a report received in the same
/// second a wave started must still be told apart), written as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(pub SystemTime);

impl Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text)
            .map(Stamp)
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Waves are going out; each step may start the next one.
    Running,
    /// Held by an admin (`tiffin rollout pause`): no new wave until `resume`.
    Paused,
    /// Too many hosts of a wave failed: no further host gets the release.
    Halted,
    /// Halted, and the hosts that took the release were moved back to their previous one.
    Reverted,
    /// Every wave went out and was healthy.
    Done,
    /// Ended by an admin (`tiffin rollout cancel`) or by a newer rollout.
    Cancelled,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Halted => "halted",
            Phase::Reverted => "reverted",
            Phase::Done => "done",
            Phase::Cancelled => "cancelled",
        }
    }
    /// A rollout that still holds hosts back and makes `tiffin status` exit 3.
    pub fn is_alarming(self) -> bool {
        matches!(self, Phase::Halted | Phase::Reverted)
    }
    /// Whether later waves may still go out (after a resume, for a paused or halted one).
    pub fn is_open(self) -> bool {
        matches!(self, Phase::Running | Phase::Paused | Phase::Halted)
    }
}

/// One wave: its hosts, when it started, since when all of them are settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub hosts: Vec<HostName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Stamp>,
    /// Since when every host of the wave is done or absent (the soak runs from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled: Option<Stamp>,
    /// When an admin last resumed it: `wave_timeout` counts from here again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Stamp>,
    /// Hosts whose failure an admin accepted with `tiffin rollout resume`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub accepted: BTreeSet<HostName>,
}

/// What the rollout brings one host, and what it ran before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub release: String,
    pub seq: u64,
    /// The release `CURRENT` named when the rollout began (none: the host's first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// `<state_dir>/rollout.toml`: the last rollout, whatever its phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub started: Stamp,
    pub phase: Phase,
    /// Why it halted, was paused or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The index of the wave going out (the last one started).
    pub wave: usize,
    pub waves: Vec<Wave>,
    pub targets: BTreeMap<HostName, Target>,
}

/// What a host's report says, as the controller needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    /// When the server received the last report (its own clock), if any.
    pub report_at: Option<SystemTime>,
    /// Silent longer than this, the host counts as absent.
    pub stale_after: Duration,
    /// The release of the last attempt, the release it runs, and the result.
    pub attempted: Option<String>,
    pub applied: Option<String>,
    pub result: Option<PullResult>,
    pub quarantined: Option<String>,
    /// The release runs only after a reboot still to come (pending, or applied for the next boot).
    pub awaiting_reboot: bool,
    /// Held by `tiffin pause`.
    pub paused: bool,
    /// The seq `CURRENT` names now (a newer publish may have moved the host on).
    pub published_seq: Option<u64>,
    /// The report's error, for the halt's reason.
    pub error: Option<String>,
}

/// One host of a started wave, judged from its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Reported the release applied (and confirmed: the report came over a fresh session)
    /// after the wave started, and healthy.
    Done,
    /// Reported it failed, rolled back or quarantined after the wave started.
    Failed(String),
    /// No verdict yet: why.
    Waiting(String),
    /// Silent longer than its stale limit, paused, or moved on by a newer publish: does not
    /// block the wave, gets the release when it is back.
    Absent(String),
}

/// Judges one host of a wave that started at `started`.
pub fn judge(target: &Target, view: &HostView, started: SystemTime, now: SystemTime) -> Verdict {
    if view.published_seq.is_some_and(|s| s > target.seq) {
        return Verdict::Absent("moved on by a newer publish".into());
    }
    let fresh = view.report_at.is_some_and(|at| at > started);
    let on_target = view.attempted.as_deref() == Some(target.release.as_str());
    if fresh && on_target {
        let failed = matches!(
            view.result,
            Some(PullResult::Failed | PullResult::RolledBack)
        ) || view.quarantined.as_deref() == Some(target.release.as_str());
        if failed {
            let result = view.result.map_or("failed", PullResult::as_str);
            return Verdict::Failed(match &view.error {
                Some(e) => format!("{result}: {}", crate::core::untrusted::one_line(e, 200)),
                None => result.to_owned(),
            });
        }
        if view.applied.as_deref() == Some(target.release.as_str()) {
            if !view.awaiting_reboot {
                return Verdict::Done;
            }
            return absent_or(view, now, "applied, waiting for its reboot");
        }
    }
    if view.paused {
        return Verdict::Absent("paused".into());
    }
    let why = if fresh {
        "its report since the wave started names another release"
    } else {
        "no report since the wave started"
    };
    absent_or(view, now, why)
}

/// Waiting, unless the host has been silent longer than its stale limit.
fn absent_or(view: &HostView, now: SystemTime, why: &str) -> Verdict {
    let silent = view
        .report_at
        .map(|at| now.duration_since(at).unwrap_or_default());
    match silent {
        None => Verdict::Absent("never reported".into()),
        Some(s) if s > view.stale_after => Verdict::Absent(format!(
            "silent for {}",
            humantime::format_duration(Duration::from_secs(s.as_secs()))
        )),
        Some(_) => Verdict::Waiting(why.into()),
    }
}

/// What a step asks to be done to a host's chroot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make `CURRENT` name the host's rollout release (if it names an older one) and trigger it.
    Release(HostName),
    /// Publish the host's previous release again, as a new, higher seq.
    Revert(HostName),
}

/// The outcome of one step: the rollout as it is now, what to do, what to tell the admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub rollout: Rollout,
    pub actions: Vec<Action>,
    pub events: Vec<String>,
}

/// The verdicts of one wave's hosts, in the wave's order.
pub fn verdicts(
    rollout: &Rollout,
    wave: &Wave,
    views: &BTreeMap<HostName, HostView>,
    now: SystemTime,
) -> Vec<(HostName, Verdict)> {
    let started = wave.started.map_or(now, |s| s.0);
    wave.hosts
        .iter()
        .map(|h| {
            let verdict = match (rollout.targets.get(h), views.get(h)) {
                (Some(t), Some(v)) => judge(t, v, started, now),
                _ => Verdict::Absent("not in the fleet any more".into()),
            };
            (h.clone(), verdict)
        })
        .collect()
}

/// One step of a running rollout: start the first wave, or judge the current one and halt,
/// wait, or start the next (or finish). Other phases are left as they are.
pub fn advance(
    rollout: &Rollout,
    policy: &RolloutSettings,
    views: &BTreeMap<HostName, HostView>,
    now: SystemTime,
) -> Step {
    let mut step = Step {
        rollout: rollout.clone(),
        actions: Vec::new(),
        events: Vec::new(),
    };
    if rollout.phase != Phase::Running || rollout.waves.is_empty() {
        return step;
    }
    let i = rollout.wave;
    let Some(wave) = rollout.waves.get(i) else {
        return step;
    };
    let Some(started) = wave.started else {
        start_wave(&mut step, i, now);
        return step;
    };
    let clock = wave.resumed.map_or(started, |r| r.max(started));
    let timed_out = now.duration_since(clock.0).unwrap_or_default() >= policy.wave_timeout.0;
    let tally = tally(
        wave,
        &verdicts(rollout, wave, views, now),
        timed_out,
        policy,
    );
    if tally.failed.len() > policy.max_failures.allowed(wave.hosts.len()) {
        halt(&mut step, policy, &tally.failed);
        return step;
    }
    // A wave whose every host is absent has tried nothing: it waits, and halts at its timeout.
    let untried = tally.done == 0 && wave.accepted.is_empty();
    if untried && timed_out {
        let why = format!(
            "no host of the wave reported the release within wave_timeout ({}): all {} absent, nothing has tried it",
            policy.wave_timeout,
            wave.hosts.len()
        );
        halt(&mut step, policy, &[why]);
        return step;
    }
    let waiting = tally.waiting + usize::from(untried);
    let current = &mut step.rollout.waves[i];
    if waiting > 0 {
        current.settled = None;
        return step;
    }
    let settled = *current.settled.get_or_insert(Stamp(now));
    let soak = policy.soak.map_or(Duration::ZERO, |s| s.0);
    if now.duration_since(settled.0).unwrap_or_default() < soak && !timed_out {
        return step;
    }
    if i + 1 < rollout.waves.len() {
        step.rollout.wave = i + 1;
        start_wave(&mut step, i + 1, now);
    } else {
        step.rollout.phase = Phase::Done;
        step.events.push(format!(
            "rollout done: all {} wave(s) went out",
            rollout.waves.len()
        ));
    }
    step
}

fn start_wave(step: &mut Step, i: usize, now: SystemTime) {
    let total = step.rollout.waves.len();
    let wave = &mut step.rollout.waves[i];
    wave.started = Some(Stamp(now));
    wave.settled = None;
    step.actions
        .extend(wave.hosts.iter().cloned().map(Action::Release));
    step.events.push(format!(
        "wave {} of {total} started: {}",
        i + 1,
        names(&wave.hosts)
    ));
}

fn names(hosts: &[HostName]) -> String {
    hosts
        .iter()
        .map(HostName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A wave's hosts counted: the failures (with why), how many are waited for, how many done.
struct Tally {
    failed: Vec<String>,
    waiting: usize,
    done: usize,
}

fn tally(
    wave: &Wave,
    verdicts: &[(HostName, Verdict)],
    timed_out: bool,
    policy: &RolloutSettings,
) -> Tally {
    let mut t = Tally {
        failed: Vec::new(),
        waiting: 0,
        done: 0,
    };
    for (host, verdict) in verdicts {
        match verdict {
            Verdict::Failed(why) if !wave.accepted.contains(host) => {
                t.failed.push(format!("{host} {why}"));
            }
            Verdict::Waiting(_) if timed_out => t.failed.push(format!(
                "{host} did not report the release within wave_timeout ({})",
                policy.wave_timeout
            )),
            Verdict::Waiting(_) => t.waiting += 1,
            Verdict::Done => t.done += 1,
            _ => {}
        }
    }
    t
}

/// Too many failures: no further wave; with `on_failure = "revert"` the hosts that took the
/// release go back to their previous one.
fn halt(step: &mut Step, policy: &RolloutSettings, failed: &[String]) {
    let (i, total) = (step.rollout.wave, step.rollout.waves.len());
    let reason = format!(
        "wave {} of {total}: {} host(s) failed, more than max_failures ({}): {}",
        i + 1,
        failed.len(),
        policy.max_failures,
        failed.join("; ")
    );
    step.rollout.phase = Phase::Halted;
    step.rollout.reason = Some(reason.clone());
    step.events.push(format!("rollout halted: {reason}"));
    if policy.on_failure == OnFailure::Revert {
        revert(step);
    }
}

/// The hosts of every started wave, moved back to their previous release.
fn revert(step: &mut Step) {
    let reached: Vec<HostName> = step
        .rollout
        .waves
        .iter()
        .filter(|w| w.started.is_some())
        .flat_map(|w| w.hosts.iter().cloned())
        .collect();
    step.rollout.phase = Phase::Reverted;
    step.events.push(format!(
        "reverting {} host(s) to their previous release: {}",
        reached.len(),
        names(&reached)
    ));
    step.actions.extend(reached.into_iter().map(Action::Revert));
}

/// What an admin asks of a rollout by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    /// Go on; the current wave's failures so far are accepted.
    Resume,
    Cancel,
    Revert,
}

/// An admin's command, or why it does not apply.
pub fn command(
    rollout: &Rollout,
    cmd: Command,
    views: &BTreeMap<HostName, HostView>,
    now: SystemTime,
    by: &str,
) -> Result<Step, String> {
    let mut step = Step {
        rollout: rollout.clone(),
        actions: Vec::new(),
        events: Vec::new(),
    };
    let phase = rollout.phase;
    let refuse = |what: &str| Err(format!("the rollout is {}: {what}", phase.as_str()));
    match cmd {
        Command::Pause if phase != Phase::Running => return refuse("only a running one pauses"),
        Command::Pause => {
            step.rollout.phase = Phase::Paused;
            step.rollout.reason = Some(format!("paused by {by}"));
        }
        Command::Resume if !matches!(phase, Phase::Paused | Phase::Halted) => {
            return refuse("only a paused or halted one resumes");
        }
        Command::Resume => resume(&mut step, views, now),
        // A reverted rollout stays an alarm until someone acknowledges it by cancelling it.
        Command::Cancel if !phase.is_open() && phase != Phase::Reverted => {
            return refuse("it is over already");
        }
        Command::Cancel => {
            step.rollout.phase = Phase::Cancelled;
            step.rollout.reason = Some(format!("cancelled by {by}"));
        }
        Command::Revert if phase == Phase::Reverted => return refuse("it was reverted already"),
        Command::Revert => {
            step.rollout.reason = Some(format!("reverted by {by}"));
            revert(&mut step);
        }
    }
    step.events
        .push(format!("rollout {}", step.rollout.phase.as_str()));
    Ok(step)
}

/// Running again; the hosts of the current wave that failed (or were absent) so far no
/// longer count.
fn resume(step: &mut Step, views: &BTreeMap<HostName, HostView>, now: SystemTime) {
    let i = step.rollout.wave;
    let failed: Vec<HostName> = match step.rollout.waves.get(i) {
        Some(w) => verdicts(&step.rollout, w, views, now)
            .into_iter()
            // Absent hosts too: a wave nobody could try goes on once an admin says so.
            .filter(|(_, v)| matches!(v, Verdict::Failed(_) | Verdict::Absent(_)))
            .map(|(h, _)| h)
            .collect(),
        None => Vec::new(),
    };
    if let Some(w) = step.rollout.waves.get_mut(i) {
        w.accepted.extend(failed);
        // A timed-out wave's clock starts again, so its waiting hosts get their time.
        w.resumed = Some(Stamp(now));
    }
    step.rollout.phase = Phase::Running;
    step.rollout.reason = None;
}

/// A new rollout of `targets`, cut into waves by the policy and the hosts' tags.
pub fn plan(
    policy: &RolloutSettings,
    targets: BTreeMap<HostName, Target>,
    tags: &BTreeMap<HostName, BTreeSet<crate::admin::fleet::rollout::GroupName>>,
    now: SystemTime,
) -> Rollout {
    let hosts: BTreeMap<HostName, BTreeSet<_>> = targets
        .keys()
        .map(|h| (h.clone(), tags.get(h).cloned().unwrap_or_default()))
        .collect();
    let waves = crate::admin::fleet::rollout::cut_waves(&policy.waves, &hosts)
        .into_iter()
        .map(|hosts| Wave {
            hosts,
            started: None,
            settled: None,
            resumed: None,
            accepted: BTreeSet::new(),
        })
        .collect();
    Rollout {
        started: Stamp(now),
        phase: Phase::Running,
        reason: None,
        wave: 0,
        waves,
        targets,
    }
}

/// How many hosts a line names before it says "and N more".
const NAMES_SHOWN: usize = 8;

/// The rollout for a person: one line for the whole, one per wave (counts, and the hosts that
/// failed, are absent or are waited for), the reason of a halt.
pub fn summary(
    rollout: &Rollout,
    views: &BTreeMap<HostName, HostView>,
    now: SystemTime,
) -> Vec<String> {
    let total = rollout.waves.len();
    let mut lines = vec![format!(
        "rollout of {} host(s) started {}: {}, wave {} of {total}",
        rollout.targets.len(),
        crate::core::settings::format_time(rollout.started.0),
        rollout.phase.as_str(),
        (rollout.wave + 1).min(total),
    )];
    if let Some(reason) = &rollout.reason {
        lines.push(format!("  why: {reason}"));
    }
    for (i, wave) in rollout.waves.iter().enumerate() {
        lines.push(wave_line(rollout, i, wave, views, now));
    }
    lines
}

fn wave_line(
    rollout: &Rollout,
    i: usize,
    wave: &Wave,
    views: &BTreeMap<HostName, HostView>,
    now: SystemTime,
) -> String {
    let head = format!("  wave {} of {}", i + 1, rollout.waves.len());
    let Some(started) = wave.started else {
        return format!("{head}: {} host(s), not started", wave.hosts.len());
    };
    let mut by: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (host, verdict) in verdicts(rollout, wave, views, now) {
        let (kind, name) = match verdict {
            Verdict::Done => ("done", host.to_string()),
            Verdict::Failed(why) if wave.accepted.contains(&host) => {
                ("accepted", format!("{host} ({why})"))
            }
            Verdict::Failed(why) => ("failed", format!("{host} ({why})")),
            Verdict::Waiting(why) => ("waiting", format!("{host} ({why})")),
            Verdict::Absent(why) => ("absent", format!("{host} ({why})")),
        };
        by.entry(kind).or_default().push(name);
    }
    let parts: Vec<String> = ["done", "failed", "accepted", "absent", "waiting"]
        .iter()
        .filter_map(|k| {
            let names = by.get(k)?;
            Some(match *k {
                "done" => format!("{} done", names.len()),
                _ => format!("{} {k}: {}", names.len(), shown(names)),
            })
        })
        .collect();
    format!(
        "{head} (started {}): {} host(s): {}",
        crate::core::settings::format_time(started.0),
        wave.hosts.len(),
        parts.join("; ")
    )
}

fn shown(names: &[String]) -> String {
    let mut text = names
        .iter()
        .take(NAMES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMES_SHOWN {
        text.push_str(&format!(" and {} more", names.len() - NAMES_SHOWN));
    }
    text
}

/// Where a host stands in the rollout, for `tiffin status HOST`: held back until its wave.
pub fn held_back(rollout: &Rollout, host: &HostName) -> Option<String> {
    if !rollout.phase.is_open() {
        return None;
    }
    let (i, wave) = rollout
        .waves
        .iter()
        .enumerate()
        .find(|(_, w)| w.hosts.contains(host))?;
    if wave.started.is_some() {
        return None;
    }
    let target = rollout.targets.get(host)?;
    Some(format!(
        "held back by rollout (wave {} of {}, {}): release #{} waits for it",
        i + 1,
        rollout.waves.len(),
        rollout.phase.as_str(),
        target.seq
    ))
}
