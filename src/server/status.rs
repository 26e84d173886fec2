//! `tiffin status`: each host's published and applied release and its state, from the reports in the chroots.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::admin::fleet::Fleet;
use crate::core::layout::ChrootPaths;
use crate::core::names::{HostName, ReleaseId};
use crate::core::release::{MANIFEST_FILE, ManifestHead};
use crate::core::report::{PullResult, REBUILD_LOG_FILE, Report, STATUS_FILE};
use crate::core::settings::{Interval, format_time, parse_time};
use crate::core::untrusted::{FIELD_MAX, one_line};

pub mod prometheus;
pub mod story;
#[cfg(test)]
mod tests;
mod workstation;

/// A host is stale when it has not reported for this many poll intervals.
pub const STALE_AFTER_INTERVALS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    UpToDate,
    Pending,
    Failed,
    RolledBack,
    Stale,
    NeverSeen,
    /// The host's CURRENT, release or report cannot be read: its state is unknown.
    Unreadable,
    /// `tiffin pause` holds the host: it reports, but applies nothing until the pause ends.
    Paused,
    /// A prebuilt host applied its release but runs another system than the published toplevel.
    Drifted,
    /// The host rolled the published release back (a failed health check, or the server was
    /// unreachable after activating or booting it) and holds it back until a newer release or
    /// `tiffin trigger HOST --retry`.
    Quarantined,
    /// A signed fleet: the statement of the published release has expired; the host keeps
    /// what it runs and applies nothing new until the admins renew it.
    Expired,
    /// A signed fleet: the published release has no statement that verifies under the
    /// fleet's root of trust; the host will refuse it.
    Unverifiable,
}

impl State {
    /// Every state, in the order of the enum: what the metrics export one series for.
    pub const ALL: [State; 12] = [
        State::UpToDate,
        State::Pending,
        State::Failed,
        State::RolledBack,
        State::Stale,
        State::NeverSeen,
        State::Unreadable,
        State::Paused,
        State::Drifted,
        State::Quarantined,
        State::Expired,
        State::Unverifiable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::UpToDate => "up-to-date",
            State::Pending => "pending",
            State::Failed => "failed",
            State::RolledBack => "rolled-back",
            State::Stale => "stale",
            State::NeverSeen => "never-seen",
            State::Unreadable => "unreadable",
            State::Paused => "paused",
            State::Drifted => "drifted",
            State::Quarantined => "quarantined",
            State::Expired => "expired",
            State::Unverifiable => "unverifiable",
        }
    }
    /// States that make `tiffin status` exit 3, for monitoring.
    pub fn is_alarming(self) -> bool {
        matches!(
            self,
            State::Failed
                | State::RolledBack
                | State::Stale
                | State::Unreadable
                | State::Drifted
                | State::Quarantined
                | State::Expired
                | State::Unverifiable
        )
    }

    /// Red for what alarms (the same list as the exit status), green when up to date.
    fn colour(self) -> &'static str {
        match self {
            _ if self.is_alarming() => "\x1b[31m",
            State::UpToDate => "\x1b[32m",
            _ => "\x1b[33m",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    pub id: ReleaseId,
    pub seq: u64,
    /// A prebuilt release's system, which the host should be running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toplevel: Option<crate::core::narinfo::StorePath>,
}

/// One row of `tiffin status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostStatus {
    pub host: HostName,
    pub state: State,
    pub published: Option<Published>,
    /// The release the host runs successfully.
    pub applied: Option<String>,
    /// The release of the last attempt (equals `applied` unless it failed).
    pub attempted: Option<String>,
    pub attempted_seq: Option<u64>,
    pub result: Option<PullResult>,
    /// When the server last received a report (its own clock: the report file's mtime).
    pub last_seen: Option<String>,
    pub error: Option<String>,
    /// Worth a look, but no alarm (e.g. more in reports/ than the report and its log).
    pub warning: Option<String>,
    /// What the report says about reboots, pauses, retries and timing.
    #[serde(flatten)]
    pub ops: HostOps,
    /// A trigger (`tiffin trigger`) in CURRENT the host has not reported handling yet: its id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger_pending: Option<String>,
    /// When the server received the report, to the nanosecond (the rollout's stale-report rule).
    #[serde(skip)]
    pub received: Option<SystemTime>,
}

/// The operational details of a host's report; each absent from the JSON when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostOps {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_apply_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot: Option<crate::core::report::RebootReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot_window: Option<crate::core::window::RebootWindow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// Why the applied release runs only after the next boot (a switch inhibitor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_only: Option<String>,
    /// The release the host rolled back and holds back (`error` says why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<String>,
    /// Signed fleets: the published release's statement, as the server verified it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed: Option<SignedStatus>,
    /// The host waits for a reboot slot, or reboots on one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot_slot: Option<crate::core::report::RebootSlotReport>,
    /// `reboot = "ask"`: the restart's deadline, the user's postponement, the announced time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot_deadline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot_postponed_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot_at: Option<String>,
    /// The host deferred a new release (metered, on battery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred: Option<crate::core::report::Deferred>,
}

/// The statement in a host's chroot, verified by the server against the fleet's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignedStatus {
    pub seq: u64,
    pub expires: String,
    /// Fingerprints of the admin keys that signed it.
    pub signers: Vec<String>,
}

impl HostOps {
    fn of(report: &Report) -> HostOps {
        HostOps {
            applied_seq: report.applied_seq,
            last_apply_seconds: report.last_apply_seconds,
            next_retry: report.next_retry.clone(),
            reboot: report.reboot,
            reboot_window: report.reboot_window,
            paused_until: report.paused_until.clone(),
            pause_reason: report.pause_reason.clone(),
            boot_only: report.boot_only.clone(),
            quarantined: report.quarantined.clone(),
            signed: None,
            reboot_slot: report.reboot_slot,
            reboot_deadline: report.reboot_deadline.clone(),
            reboot_postponed_until: report.reboot_postponed_until.clone(),
            reboot_at: report.reboot_at.clone(),
            deferred: report.deferred,
        }
    }

    /// The pause the report names, if it has not ended by the server's clock.
    fn paused_at(&self, now: SystemTime) -> bool {
        self.paused_until
            .as_deref()
            .and_then(parse_time)
            .is_some_and(|until| now < until)
    }
}

/// Reads every selected host's chroot and report.
pub fn collect(
    fleet: &Fleet,
    hosts: &[HostName],
    chroot_root: &Path,
    now: SystemTime,
) -> Vec<HostStatus> {
    let mut rows: Vec<HostStatus> = hosts
        .iter()
        .map(|name| {
            let interval = fleet
                .hosts
                .get(name)
                .map_or(fleet.config.defaults.poll_interval, |h| h.poll_interval);
            let paths = ChrootPaths::new(chroot_root, name);
            let mut row = host_status(name, &paths, interval, now);
            if let Some(trust) = &fleet.config.trust {
                signed_status(&mut row, trust, &paths, now);
            }
            row
        })
        .collect();
    rows.sort_by(|a, b| a.host.cmp(&b.host));
    rows
}

/// A signed fleet: the published release's statement in the chroot, verified here with the
/// fleet's root (what the host will do with it): expired or unverifiable is the host's state
/// (unless it cannot be read or went stale), and an expiry within `warn_before` is a warning.
fn signed_status(
    row: &mut HostStatus,
    trust: &crate::admin::fleet::trust::TrustSettings,
    paths: &ChrootPaths,
    now: SystemTime,
) {
    let Some(published) = &row.published else {
        return;
    };
    let statement = std::fs::read(paths.statement()).unwrap_or_default();
    let sigs = std::fs::read(paths.statement_sig()).unwrap_or_default();
    // What the host checks first: CURRENT names this very statement.
    let line = std::fs::read(paths.current())
        .ok()
        .and_then(|b| crate::core::current::statement(&b));
    if line.as_deref() != Some(crate::core::hash::sha256_hex(&statement).as_str()) {
        let why = "CURRENT names no signed statement, or another one than STATEMENT: the host will refuse the release as unsigned";
        return flag(row, State::Unverifiable, why.into());
    }
    let root = trust.root();
    let checked = crate::core::trust::check_statement(
        &root,
        &statement,
        &sigs,
        &row.host,
        &published.id,
        now,
    );
    match checked {
        Ok((s, signers)) => signed_ok(row, trust, (s, signers), now),
        Err(crate::core::trust::TrustError::Expired { expires }) => {
            // The metrics keep the expiry (and seq) of an expired statement.
            if let Ok(st) = crate::core::trust::Statement::parse(&statement) {
                row.ops.signed = Some(SignedStatus {
                    seq: st.seq,
                    expires: st.expires,
                    signers: Vec::new(),
                });
            }
            let why = format!(
                "the signed statement expired at {expires}: the host applies nothing new until it is renewed (`tiffin sign --renew {}`)",
                row.host
            );
            flag(row, State::Expired, why);
        }
        Err(e) => flag(
            row,
            State::Unverifiable,
            format!("the published release's signed statement does not verify: {e}"),
        ),
    }
}

/// A verified statement: named in the row, and a warning when it expires soon.
fn signed_ok(
    row: &mut HostStatus,
    trust: &crate::admin::fleet::trust::TrustSettings,
    (s, signers): (crate::core::trust::Statement, crate::core::trust::Signers),
    now: SystemTime,
) {
    let left = s.expires_at().duration_since(now).unwrap_or_default();
    if left < trust.warn_before.0 && row.warning.is_none() {
        row.warning = Some(format!(
            "the signed statement expires {} (in {}): renew it (`tiffin sign --renew {}`)",
            s.expires,
            Interval(std::time::Duration::from_secs(left.as_secs())),
            row.host
        ));
    }
    row.ops.signed = Some(SignedStatus {
        seq: s.seq,
        expires: s.expires,
        signers: signers.0,
    });
}

/// A statement the host will refuse: the row's state (unless the host's own state is unknown
/// or stale, which say more) and the reason first in its error.
fn flag(row: &mut HostStatus, state: State, why: String) {
    if !matches!(row.state, State::Unreadable | State::Stale) {
        row.state = state;
    }
    row.error = Some(match row.error.take() {
        Some(e) => format!("{why}; {e}"),
        None => why,
    });
}

/// One host's row: its published release, its report, and the state they add up to.
pub fn host_status(
    name: &HostName,
    paths: &ChrootPaths,
    interval: Interval,
    now: SystemTime,
) -> HostStatus {
    // Every problem found on the way ends up in the row's error column; any makes the state unknown.
    let mut errors = Vec::new();
    let published = read_published(paths, &mut errors);
    let published_trigger = std::fs::read(paths.current())
        .ok()
        .and_then(|b| crate::core::current::trigger(&b));
    let warning = reports_warning(paths);
    let Some(Received { report, at }) = read_report(paths, &mut errors) else {
        return HostStatus {
            host: name.clone(),
            state: if errors.is_empty() {
                State::NeverSeen
            } else {
                State::Unreadable
            },
            published,
            applied: None,
            attempted: None,
            attempted_seq: None,
            result: None,
            last_seen: None,
            error: joined(errors),
            warning,
            ops: HostOps::default(),
            trigger_pending: published_trigger.map(|t| t.id),
            received: None,
        };
    };
    if report.host != name.as_str() {
        // The chroot decides who reported; a mismatch means a misconfigured client.
        errors.push(format!("report claims host {:?}", report.host));
    }
    let succeeded = matches!(report.result, PullResult::Ok | PullResult::Unchanged);
    let applied = if succeeded {
        report.release.clone()
    } else {
        report.applied.clone()
    };
    let ops = HostOps::of(&report);
    let state = if !errors.is_empty() {
        State::Unreadable
    } else if is_stale(at, interval, now) {
        State::Stale
    } else if ops.paused_at(now) {
        State::Paused
    } else {
        reported_state(&report, published.as_ref(), applied.as_deref())
    };
    errors.extend(report.error.clone());
    HostStatus {
        host: name.clone(),
        state,
        published,
        applied,
        attempted: report.release,
        attempted_seq: report.seq,
        result: Some(report.result),
        last_seen: Some(format_time(at)),
        error: joined(errors),
        warning: warning
            .or_else(|| dated_warning(paths, at))
            .or_else(|| clock_warning(&report.last_seen, at)),
        ops,
        trigger_pending: published_trigger
            .filter(|t| report.trigger.as_deref() != Some(t.id.as_str()))
            .map(|t| t.id),
        received: Some(at),
    }
}

/// The state a readable, fresh, unpaused report adds up to against what is published.
fn reported_state(report: &Report, published: Option<&Published>, applied: Option<&str>) -> State {
    // Held back by the host: it says which release, and it is the one published.
    if report.quarantined.is_some()
        && report.quarantined == report.release
        && published.is_some_and(|p| report.release.as_deref() == Some(p.id.as_str()))
    {
        return State::Quarantined;
    }
    match report.result {
        PullResult::Failed => State::Failed,
        PullResult::RolledBack => State::RolledBack,
        PullResult::Ok | PullResult::Unchanged => match (published, applied) {
            (Some(p), Some(a)) if p.id.as_str() == a => match &p.toplevel {
                // Built on the server: the host must run exactly the published system.
                Some(t) if report.system.as_deref() != Some(t.as_str()) => State::Drifted,
                _ => State::UpToDate,
            },
            _ => State::Pending,
        },
    }
}

fn joined(errors: Vec<String>) -> Option<String> {
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// The release `CURRENT` names, with its seq.
fn read_published(paths: &ChrootPaths, errors: &mut Vec<String>) -> Option<Published> {
    match paths.read_current() {
        Ok(Some(id)) => match read_head(&paths.release(&id)) {
            Ok(head) => Some(Published {
                id,
                seq: head.seq,
                toplevel: head.toplevel,
            }),
            Err(e) => {
                errors.push(format!("release {} unreadable: {e}", id.short()));
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            errors.push(format!("CURRENT unreadable: {e}"));
            None
        }
    }
}

/// A report and when the server received it.
struct Received {
    report: Report,
    /// The report file's mtime: the server's clock, not a time the client wrote.
    at: SystemTime,
}

/// The client's last report, if it wrote one that can be read.
fn read_report(paths: &ChrootPaths, errors: &mut Vec<String>) -> Option<Received> {
    let parsed = match read_client_file(&paths.reports().join(STATUS_FILE), REPORT_LIMIT) {
        Ok((text, at)) => Report::parse(&text).map(|report| Received { report, at }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => Err(e.to_string()),
    };
    parsed
        .map_err(|e| errors.push(format!("reports/{STATUS_FILE} unreadable: {e}")))
        .ok()
}

/// Not heard from for `STALE_AFTER_INTERVALS` poll intervals, by the server's clock.
fn is_stale(received: SystemTime, interval: Interval, now: SystemTime) -> bool {
    now.duration_since(received).unwrap_or_default() > interval.0 * STALE_AFTER_INTERVALS
}

/// How far the client's clock may be off before status mentions it.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Says so when the time the client wrote is far from when the server received the report.
fn clock_warning(reported: &str, received: SystemTime) -> Option<String> {
    let Some(reported) = parse_time(reported) else {
        return Some(format!("the report's last_seen {reported:?} is not a time"));
    };
    let (how, by) = match reported.duration_since(received) {
        Ok(ahead) => ("ahead", ahead),
        Err(e) => ("behind", e.duration()),
    };
    (by > CLOCK_SKEW).then(|| {
        format!(
            "the client's clock is {} {how} of the server's",
            humantime::format_duration(Duration::from_secs(by.as_secs()))
        )
    })
}

/// What a client may keep in its reports/: the report, the rebuild log, and their upload temporaries.
const EXPECTED_REPORTS: [&str; 4] = [
    STATUS_FILE,
    REBUILD_LOG_FILE,
    "status.toml.tmp",
    "rebuild.log.tmp",
];

/// A warning when reports/ holds more than the client needs (it is the one place a client can write).
fn reports_warning(paths: &ChrootPaths) -> Option<String> {
    let entries = fs::read_dir(paths.reports()).ok()?;
    let (mut count, mut bytes) = (0u64, 0u64);
    for entry in entries.flatten() {
        if EXPECTED_REPORTS.contains(&entry.file_name().to_string_lossy().as_ref()) {
            continue;
        }
        count += 1;
        bytes += entry.metadata().map_or(0, |m| m.len());
    }
    (count > 0).then(|| {
        format!("reports/ holds {count} other entr(ies), {bytes} bytes: only the report and its log belong there")
    })
}

/// The largest report `status` reads; a real one is under 1 KiB.
const REPORT_LIMIT: u64 = 64 * 1024;

/// Reads a file the client wrote in its chroot. `status` runs as root and the client
/// controls `reports/`, so a symlink (to another host's report, to /dev/zero) or a
/// huge or special file is refused instead of followed.
fn read_client_file(path: &Path, limit: u64) -> std::io::Result<(String, SystemTime)> {
    let (bytes, at) = read_client_bytes(path, limit)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))?;
    Ok((text, at))
}

/// [`read_client_file`] for bytes that need not be text (a rebuild log).
fn read_client_bytes(path: &Path, limit: u64) -> std::io::Result<(Vec<u8>, SystemTime)> {
    use nix::fcntl::OFlag;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "it is a symlink, which tiffin never follows in a client's chroot",
                )
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    if meta.len() > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} bytes, more than the {limit} a report may have",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok((bytes, received_at(&meta)?))
}

/// When the server received a client's file, by its own clock: the file's mtime, unless
/// the change time (set by the server's kernel at every write, rename or setstat, never by
/// the client) is earlier. An SFTP client can set its file's mtime (`put -p`, setstat) to
/// any date; one in the future would keep a host from ever going stale.
fn received_at(meta: &fs::Metadata) -> std::io::Result<SystemTime> {
    use std::os::unix::fs::MetadataExt;
    let modified = meta.modified()?;
    let changed = u64::try_from(meta.ctime()).ok().map(|s| {
        SystemTime::UNIX_EPOCH + Duration::new(s, meta.ctime_nsec().clamp(0, 999_999_999) as u32)
    });
    Ok(changed.map_or(modified, |c| c.min(modified)))
}

/// A warning when the report's file claims a time the server did not see it at (its mtime
/// set by the client, beyond the allowed skew past when it was received).
fn dated_warning(paths: &ChrootPaths, received: SystemTime) -> Option<String> {
    let modified = fs::symlink_metadata(paths.reports().join(STATUS_FILE))
        .and_then(|m| m.modified())
        .ok()?;
    let ahead = modified.duration_since(received).ok()?;
    (ahead > CLOCK_SKEW).then(|| {
        format!(
            "reports/{STATUS_FILE} is dated {} by its client (an SFTP client can set that); the server received it at {}, which status uses",
            format_time(modified),
            format_time(received)
        )
    })
}

fn read_head(release_dir: &Path) -> Result<ManifestHead, String> {
    let bytes = fs::read(release_dir.join(MANIFEST_FILE)).map_err(|e| e.to_string())?;
    ManifestHead::parse(&bytes).map_err(|e| e.to_string())
}

/// "5s ago", "3m ago", "2h ago", "4d ago".
pub fn ago(then: SystemTime, now: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or(Duration::ZERO).as_secs();
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The table for people; `colour` only on a terminal.
const HEADER: [&str; 7] = [
    "HOST",
    "PUBLISHED",
    "APPLIED",
    "RESULT",
    "LAST SEEN",
    "STATE",
    "NOTE",
];

/// The table for people; the STATE column is coloured when `colour` is set (a terminal, no NO_COLOR).
pub fn render_table(rows: &[HostStatus], now: SystemTime, colour: bool) -> String {
    // Cells quote what clients wrote: each is one harmless line (core::untrusted).
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| table_row(r, now).map(|c| one_line(&c, FIELD_MAX)))
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[String], state: Option<State>| {
        let mut s = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            let cell = if i == 5
                && let Some(st) = state.filter(|_| colour)
            {
                format!("{}{c:<w$}\x1b[0m", st.colour())
            } else {
                format!("{c:<w$}")
            };
            let _ = write!(s, "{cell}  ");
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut out, &HEADER.map(String::from), None);
    for (row, r) in cells.iter().zip(rows) {
        line(&mut out, row, Some(r.state));
    }
    out
}

fn table_row(r: &HostStatus, now: SystemTime) -> [String; 7] {
    let published = r
        .published
        .as_ref()
        .map_or("-".into(), |p| format!("#{} {}", p.seq, p.id.short()));
    let applied = match (&r.applied, &r.published) {
        (Some(a), Some(p)) if a == p.id.as_str() => format!("#{} {}", p.seq, short(a)),
        (Some(a), _) if Some(a) == r.attempted.as_ref() => match r.attempted_seq {
            Some(seq) => format!("#{seq} {}", short(a)),
            None => short(a).to_owned(),
        },
        (Some(a), _) => short(a).to_owned(),
        (None, _) => "-".into(),
    };
    [
        r.host.to_string(),
        published,
        applied,
        r.result.map_or("-", |x| x.as_str()).to_owned(),
        r.last_seen
            .as_deref()
            .and_then(parse_time)
            .map_or("never".into(), |t| ago(t, now)),
        r.state.as_str().to_owned(),
        note(r),
    ]
}

/// The first line of the error, or what a failed host attempted; a pending trigger is marked.
fn note(r: &HostStatus) -> String {
    let note = note_text(r);
    match (&r.trigger_pending, note.is_empty()) {
        (None, _) => note,
        (Some(id), true) => format!("trigger {id} pending"),
        (Some(id), false) => format!("trigger {id} pending; {note}"),
    }
}

fn note_text(r: &HostStatus) -> String {
    match (&r.error, r.state) {
        (Some(e), _) => e.lines().next().unwrap_or_default().to_owned(),
        (None, State::Failed | State::RolledBack) => match (&r.attempted, r.attempted_seq) {
            (Some(a), Some(seq)) => format!("attempted #{seq} {}", short(a)),
            _ => String::new(),
        },
        _ => r
            .warning
            .clone()
            .or_else(|| story::note(r))
            .unwrap_or_default(),
    }
}

pub fn render_json(rows: &[HostStatus]) -> String {
    #[derive(Serialize)]
    struct Doc<'a> {
        hosts: &'a [HostStatus],
    }
    serde_json::to_string_pretty(&Doc { hosts: rows }).expect("status serializes") + "\n"
}
