//! Carrying a rollout step out on the server: the records on disk, the hosts' views read from their reports, releasing and reverting hosts, granting reboot slots. The caller holds the publish lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::slots::{self, SLOTS_FILE, SlotView, Slots};
use super::{Action, HostView, Phase, ROLLOUT_FILE, Rollout, Step, Target};
use crate::admin::fleet::Fleet;
use crate::core::current::TriggerKind;
use crate::core::durable;
use crate::core::layout::ChrootPaths;
use crate::core::names::{HostName, ReleaseId};
use crate::core::report::{RebootReport, RebootSlotReport};
use crate::server::publish::{self, Outcome, PublishError, PublishOptions, Released};
use crate::server::status::{self, STALE_AFTER_INTERVALS, State};

/// Errors of the rollout layer.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: {message}. The record is left as it is: fix it, or remove it to end the rollout (hosts not reached keep their release until the next publish)", path.display()
    )]
    Record { path: PathBuf, message: String },
    #[error(
        "no rollout: {} does not exist (a `tiffin publish` with [rollout] in fleet.toml starts one)", path.display()
    )]
    NoRollout { path: PathBuf },
    #[error(
        "fleet.toml has no [rollout] section, but a rollout is {phase}: add it back, or `tiffin rollout cancel`"
    )]
    NoPolicy { phase: &'static str },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RolloutError + use<> {
    let path = path.to_owned();
    move |source| RolloutError::Io { path, source }
}

/// Reads a TOML record of `state_dir`, `None` when there is none.
fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, RolloutError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| RolloutError::Record {
                path: path.to_owned(),
                message: crate::core::diag::toml_message(&e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

fn save_toml<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), RolloutError> {
    let text = toml::to_string(value).expect("a record always serializes");
    if let Some(dir) = path.parent() {
        durable::ensure_dir(dir, 0o755, None).map_err(io(dir))?;
    }
    durable::write_atomic(path, text.as_bytes(), 0o644, durable::Owner::Caller).map_err(io(path))
}

/// The last rollout's record, if any.
pub fn load(state_dir: &Path) -> Result<Option<Rollout>, RolloutError> {
    load_toml(&state_dir.join(ROLLOUT_FILE))
}

pub fn save(state_dir: &Path, rollout: &Rollout) -> Result<(), RolloutError> {
    save_toml(&state_dir.join(ROLLOUT_FILE), rollout)
}

/// What the hosts' reports say, as the controller reads them.
pub fn views(
    fleet: &Fleet,
    hosts: &[HostName],
    chroot_root: &Path,
    now: std::time::SystemTime,
) -> BTreeMap<HostName, HostView> {
    status::collect(fleet, hosts, chroot_root, now)
        .into_iter()
        .map(|row| {
            let interval = fleet
                .hosts
                .get(&row.host)
                .map_or(fleet.config.defaults.poll_interval, |h| h.poll_interval);
            let view = HostView {
                report_at: row.received,
                stale_after: interval.0 * STALE_AFTER_INTERVALS,
                attempted: row.attempted.clone(),
                applied: row.applied.clone(),
                result: row.result,
                quarantined: row.ops.quarantined.clone(),
                awaiting_reboot: row.ops.reboot == Some(RebootReport::Pending),
                paused: row.state == State::Paused,
                published_seq: row.published.as_ref().map(|p| p.seq),
                error: row.error.clone(),
            };
            (row.host, view)
        })
        .collect()
}

/// What a step did, for the admin and the log.
#[derive(Debug, Default)]
pub struct Done {
    pub rollout: Option<Rollout>,
    pub events: Vec<String>,
    /// What failed on the way (one host's chroot, a missing statement); the rest went on.
    pub errors: Vec<String>,
}

/// `tiffin rollout step`: the reboot slots, then the rollout's next move, carried out and
/// saved. Safe to run at any time and as often as wanted.
pub fn step(fleet: &Fleet, opts: &PublishOptions) -> Result<Done, RolloutError> {
    let mut done = Done::default();
    slot_round(fleet, opts, &mut done)?;
    let Some(rollout) = load(&opts.state_dir)? else {
        return Ok(done);
    };
    let Some(policy) = &fleet.config.rollout else {
        if rollout.phase.is_open() {
            return Err(RolloutError::NoPolicy {
                phase: rollout.phase.as_str(),
            });
        }
        done.rollout = Some(rollout);
        return Ok(done);
    };
    // Only the wave going out is judged: a step reads no other host's report.
    let wave_hosts = rollout
        .waves
        .get(rollout.wave)
        .map(|w| w.hosts.clone())
        .unwrap_or_default();
    let views = views(fleet, &wave_hosts, &opts.chroot_root, opts.now);
    let step = super::advance(&rollout, policy, &views, opts.now);
    let changed = step.rollout != rollout;
    carry(fleet, opts, (step, changed), &views, &mut done)?;
    Ok(done)
}

fn hosts_of(rollout: &Rollout) -> Vec<HostName> {
    rollout.targets.keys().cloned().collect()
}

/// Saves the step's rollout (when it changed), then does its actions; hosts of the wave going
/// out whose `CURRENT` is older than their release (a step that failed half-way) get it now.
fn carry(
    fleet: &Fleet,
    opts: &PublishOptions,
    (step, changed): (Step, bool),
    views: &BTreeMap<HostName, HostView>,
    done: &mut Done,
) -> Result<(), RolloutError> {
    if changed {
        save(&opts.state_dir, &step.rollout)?;
    }
    done.events.extend(step.events);
    let rollout = step.rollout;
    let mut actions = step.actions;
    let listed: std::collections::BTreeSet<HostName> = actions
        .iter()
        .map(|(Action::Release(h) | Action::Revert(h))| h.clone())
        .collect();
    let current = rollout
        .waves
        .get(rollout.wave)
        .filter(|w| w.started.is_some());
    if rollout.phase == Phase::Running
        && let Some(wave) = current
    {
        for host in wave.hosts.iter().filter(|h| !listed.contains(*h)) {
            let seq = rollout.targets.get(host).map_or(0, |t| t.seq);
            let behind = views
                .get(host)
                .is_none_or(|v| v.published_seq.is_none_or(|s| s < seq));
            if behind {
                actions.push(Action::Release(host.clone()));
            }
        }
    }
    for action in actions {
        let (Action::Release(h) | Action::Revert(h)) = &action;
        let Some(target) = rollout.targets.get(h) else {
            continue;
        };
        let result = match &action {
            Action::Release(_) => release(fleet, opts, h, target),
            Action::Revert(_) => revert(fleet, opts, h, target),
        };
        match result {
            Ok(Some(event)) => done.events.push(event),
            Ok(None) => {}
            Err(e) => done.errors.push(e.to_string()),
        }
    }
    done.rollout = Some(rollout);
    Ok(())
}

/// The host's wave started: its held release becomes current, and a trigger tells a watching
/// host to poll now.
fn release(
    fleet: &Fleet,
    opts: &PublishOptions,
    host: &HostName,
    target: &Target,
) -> Result<Option<String>, RolloutError> {
    let id = release_id(&target.release)?;
    match publish::release_held(fleet, host, (&id, target.seq), opts)? {
        Released::Now => {
            trigger(fleet, opts, host, TriggerKind::Pull)?;
            Ok(Some(format!(
                "{host}: release #{} {} is current",
                target.seq,
                id.short()
            )))
        }
        Released::Already | Released::Superseded => Ok(None),
    }
}

/// A release id from the record (which a person may have edited).
fn release_id(text: &str) -> Result<ReleaseId, RolloutError> {
    text.parse().map_err(|e: crate::core::names::NameError| {
        RolloutError::Refused(format!("the rollout's record: {e}"))
    })
}

fn trigger(
    fleet: &Fleet,
    opts: &PublishOptions,
    host: &HostName,
    kind: TriggerKind,
) -> Result<String, RolloutError> {
    let paths = ChrootPaths::new(&opts.chroot_root, host);
    let group = publish::host_group(fleet, host);
    crate::server::trigger::trigger_host(host, &paths, kind, opts.now, group)
        .map(|t| t.id)
        .map_err(|e| RolloutError::Refused(e.to_string()))
}

/// A host that took the rollout's release goes back to its previous one, as a new release.
/// A signed fleet's server cannot sign it: the admins revert in the repository, sign, publish.
fn revert(
    fleet: &Fleet,
    opts: &PublishOptions,
    host: &HostName,
    target: &Target,
) -> Result<Option<String>, RolloutError> {
    let paths = ChrootPaths::new(&opts.chroot_root, host);
    let current = paths.read_current().ok().flatten();
    if current.as_ref().map(ReleaseId::as_str) != Some(target.release.as_str()) {
        return Ok(None);
    }
    let Some(previous) = &target.previous else {
        return Ok(Some(format!(
            "{host}: nothing to revert to (the rollout's release was its first); left as it is"
        )));
    };
    if fleet.config.trust.is_some() {
        return Err(RolloutError::Refused(format!(
            "{host}: a signed fleet's server cannot sign a revert: revert the change in the repository, `tiffin sign` the hosts' new MANIFESTs, then `tiffin publish --all-at-once {host}`"
        )));
    }
    let from = release_id(previous)?;
    let (id, seq) = publish::republish(fleet, host, &from, opts)?;
    trigger(fleet, opts, host, TriggerKind::Pull)?;
    Ok(Some(format!(
        "{host}: reverted: release #{seq} {} has the files of {}",
        id.short(),
        from.short()
    )))
}

/// A publish with `[rollout]`: the hosts whose release it held become a new rollout (one that
/// was going replaces the last), and its first wave goes out at once.
pub fn start(
    fleet: &Fleet,
    outcomes: &[(HostName, Outcome)],
    opts: &PublishOptions,
) -> Result<Done, RolloutError> {
    let policy = fleet
        .config
        .rollout
        .as_ref()
        .ok_or(RolloutError::NoPolicy { phase: "starting" })?;
    let mut targets = BTreeMap::new();
    for (host, outcome) in outcomes {
        if let Outcome::Held { id, seq, .. } = outcome {
            let paths = ChrootPaths::new(&opts.chroot_root, host);
            let previous = paths.read_current().ok().flatten().map(|c| c.to_string());
            let (release, seq) = (id.to_string(), *seq);
            targets.insert(
                host.clone(),
                Target {
                    release,
                    seq,
                    previous,
                },
            );
        }
    }
    let mut done = Done::default();
    if targets.is_empty() {
        return Ok(done);
    }
    if let Some(old) = load(&opts.state_dir)?
        && old.phase.is_open()
    {
        done.events.push(format!(
            "the rollout started {} ({}) is replaced by this one",
            crate::core::settings::format_time(old.started.0),
            old.phase.as_str()
        ));
    }
    let tags = fleet
        .hosts
        .iter()
        .map(|(n, h)| (n.clone(), h.tags.clone()))
        .collect();
    let rollout = super::plan(policy, targets, &tags, opts.now);
    let views = views(fleet, &hosts_of(&rollout), &opts.chroot_root, opts.now);
    let step = super::advance(&rollout, policy, &views, opts.now);
    carry(fleet, opts, (step, true), &views, &mut done)?;
    Ok(done)
}

/// An admin's `pause`, `resume`, `cancel` or `revert`, carried out and saved.
pub fn command(
    fleet: &Fleet,
    opts: &PublishOptions,
    cmd: super::Command,
    by: &str,
) -> Result<Done, RolloutError> {
    let path = opts.state_dir.join(ROLLOUT_FILE);
    let rollout = load(&opts.state_dir)?.ok_or(RolloutError::NoRollout { path })?;
    let views = views(fleet, &hosts_of(&rollout), &opts.chroot_root, opts.now);
    let step =
        super::command(&rollout, cmd, &views, opts.now, by).map_err(RolloutError::Refused)?;
    let mut done = Done::default();
    carry(fleet, opts, (step, true), &views, &mut done)?;
    Ok(done)
}

/// Reboot slots: given back, reclaimed, granted (a `reboot` trigger on the host's `CURRENT`).
fn slot_round(fleet: &Fleet, opts: &PublishOptions, done: &mut Done) -> Result<(), RolloutError> {
    let groups = &fleet.config.groups;
    let limited: Vec<HostName> = fleet
        .hosts
        .values()
        .filter(|h| {
            crate::admin::fleet::rollout::reboot_limits(groups, &h.tags)
                .next()
                .is_some()
        })
        .map(|h| h.name.clone())
        .collect();
    let path = opts.state_dir.join(SLOTS_FILE);
    let held: Slots = load_toml(&path)?.unwrap_or_default();
    if limited.is_empty() && held.held.is_empty() {
        return Ok(());
    }
    let views: BTreeMap<HostName, SlotView> =
        status::collect(fleet, &limited, &opts.chroot_root, opts.now)
            .into_iter()
            .map(|row| {
                let view = SlotView {
                    report_at: row.received,
                    wants: row.ops.reboot_slot == Some(RebootSlotReport::Wanted)
                        && row.state != State::Stale,
                    owes: row.ops.reboot == Some(RebootReport::Pending),
                };
                (row.host, view)
            })
            .collect();
    let tags = fleet
        .hosts
        .iter()
        .map(|(n, h)| (n.clone(), h.tags.clone()))
        .collect();
    let mut step = slots::assign(groups, &tags, &held, &views, opts.now);
    for host in &step.released {
        done.events.push(format!(
            "{host}: reboot slot given back (it reported after its reboot)"
        ));
    }
    for host in &step.reclaimed {
        done.events.push(format!(
            "{host}: reboot slot taken back (no report after its reboot within reboot_slot_timeout)"
        ));
    }
    for host in &step.granted {
        match trigger(fleet, opts, host, TriggerKind::Reboot) {
            Ok(id) => {
                if let Some(h) = step.slots.held.get_mut(host) {
                    h.trigger = Some(id);
                }
                done.events.push(format!("{host}: reboot slot granted"));
            }
            Err(e) => {
                step.slots.held.remove(host);
                done.errors.push(e.to_string());
            }
        }
    }
    save_toml(&path, &step.slots)
}

/// The slots held now, for `tiffin status`.
pub fn held_slots(state_dir: &Path) -> Slots {
    load_toml(&state_dir.join(SLOTS_FILE))
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The rollout as `tiffin status` shows it: the record, its hosts' views, the slots held.
#[derive(Default)]
pub struct Overview {
    pub rollout: Option<Rollout>,
    pub views: BTreeMap<HostName, HostView>,
    pub slots: Slots,
}

/// Reads what `tiffin status` shows of the rollout; an unreadable record is an error line.
pub fn overview(
    fleet: &Fleet,
    chroot_root: &Path,
    state_dir: &Path,
    now: std::time::SystemTime,
) -> Result<Overview, RolloutError> {
    let rollout = load(state_dir)?;
    let views = match &rollout {
        Some(r) => views(fleet, &hosts_of(r), chroot_root, now),
        None => BTreeMap::new(),
    };
    Ok(Overview {
        rollout,
        views,
        slots: held_slots(state_dir),
    })
}
