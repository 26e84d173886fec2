//! `tiffin status HOST`: one host's story, from its published release to the tail of its last rebuild log.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::{HostStatus, State, ago, read_client_bytes, read_report, short};
use crate::core::layout::ChrootPaths;
use crate::core::release::{MANIFEST_FILE, ManifestHead};
use crate::core::report::{REBUILD_LOG_FILE, RebootReport};
use crate::core::settings::parse_time;
use crate::core::untrusted::{FIELD_MAX, one_line};

/// How many lines of `reports/rebuild.log` the story shows.
pub const LOG_LINES: usize = 20;
/// The largest log read: a client uploads at most the rebuild's and the health check's
/// 64 KiB tails; a bigger file is refused, not read.
const LOG_LIMIT: u64 = 256 * 1024;

/// What the row does not hold, read again from the chroot: release times, the running
/// system, the log.
struct Details {
    created: Option<String>,
    applied_at: Option<String>,
    system: Option<String>,
    started: Option<String>,
    finished: Option<String>,
    version: Option<String>,
    log: Option<Result<String, String>>,
}

fn details(row: &HostStatus, paths: &ChrootPaths) -> Details {
    let created = row.published.as_ref().and_then(|p| {
        let bytes = std::fs::read(paths.release(&p.id).join(MANIFEST_FILE)).ok()?;
        ManifestHead::parse(&bytes).ok().map(|h| h.created)
    });
    // Errors were already counted in the row; here a report is only a source of details.
    let report = read_report(paths, &mut Vec::new()).map(|r| r.report);
    let log = match read_client_bytes(&paths.reports().join(REBUILD_LOG_FILE), LOG_LIMIT) {
        Ok((bytes, _)) => Some(Ok(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(e.to_string())),
    };
    Details {
        created,
        applied_at: report.as_ref().and_then(|r| r.applied_at.clone()),
        system: report.as_ref().and_then(|r| r.system.clone()),
        started: report.as_ref().and_then(|r| r.started.clone()),
        finished: report.as_ref().and_then(|r| r.finished.clone()),
        version: report
            .as_ref()
            .map(|r| r.version.clone())
            .filter(|v| !v.is_empty()),
        log,
    }
}

/// The story of `row`'s host, for people.
pub fn render(row: &HostStatus, paths: &ChrootPaths, now: SystemTime) -> String {
    let d = details(row, paths);
    let mut out = format!("{}: {}\n", row.host, row.state.as_str());
    // Values quote what the client wrote: each is one harmless line (core::untrusted).
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "  {key:<12}{}", one_line(&value, FIELD_MAX));
    };
    line(
        "published",
        match &row.published {
            Some(p) => format!(
                "#{} {}{}",
                p.seq,
                p.id.short(),
                d.created
                    .as_deref()
                    .map(|c| format!(", created {c}"))
                    .unwrap_or_default()
            ),
            None => "nothing yet (run `tiffin publish`)".into(),
        },
    );
    line("applied", applied(row, &d));
    if let Some(attempted) = row
        .attempted
        .as_deref()
        .filter(|a| row.applied.as_deref() != Some(*a))
    {
        let seq = row
            .attempted_seq
            .map(|s| format!("#{s} "))
            .unwrap_or_default();
        line("attempted", format!("{seq}{}", short(attempted)));
    }
    line("last report", last_report(row, now));
    if let Some(timing) = timing(row, &d) {
        line("last poll", timing);
    }
    if let Some(system) = &d.system {
        line("system", system.clone());
    }
    if let Some(toplevel) = row.published.as_ref().and_then(|p| p.toplevel.as_ref()) {
        let drift = if row.state == State::Drifted {
            " (built on the server; the host runs another system: changed by hand, or rolled back)"
        } else {
            " (built on the server)"
        };
        line("toplevel", format!("{}{drift}", toplevel.as_str()));
    }
    for (key, value) in ops_lines(row) {
        line(key, value);
    }
    if let Some(e) = &row.error {
        line("error", e.clone());
    }
    if let Some(w) = &row.warning {
        line("warning", w.clone());
    }
    if let Some(v) = &d.version {
        line("client", format!("tiffin {v}"));
    }
    out.push_str(&log_tail(d.log));
    out
}

fn applied(row: &HostStatus, d: &Details) -> String {
    let Some(a) = &row.applied else {
        return "nothing yet".into();
    };
    let seq = super::prometheus::applied_seq(row)
        .map(|s| format!("#{s} "))
        .unwrap_or_default();
    let at = d
        .applied_at
        .as_deref()
        .map(|t| format!(", at {t} (the client's clock)"))
        .unwrap_or_default();
    format!("{seq}{}{at}", short(a))
}

fn last_report(row: &HostStatus, now: SystemTime) -> String {
    let Some(seen) = &row.last_seen else {
        if row.state == State::Unreadable
            && row.error.as_deref().is_some_and(|e| e.contains("reports/"))
        {
            return "there is one, but it cannot be read (see error)".into();
        }
        return "never: check that the host's timer runs and that it reaches this server (`tiffin pull` on the host says why)".into();
    };
    let when = parse_time(seen).map(|t| ago(t, now)).unwrap_or_default();
    let result = row.result.map_or("-", |r| r.as_str());
    format!("{result}, received {seen} ({when}, the server's clock)")
}

fn timing(row: &HostStatus, d: &Details) -> Option<String> {
    let (started, finished) = (d.started.as_deref()?, d.finished.as_deref()?);
    let took = row
        .ops
        .last_apply_seconds
        .map(|s| format!("; the last apply took {s}s"))
        .unwrap_or_default();
    Some(format!("{started} to {finished}{took}"))
}

/// Reboot, pause and retry, each when it applies.
fn ops_lines(row: &HostStatus) -> Vec<(&'static str, String)> {
    let ops = &row.ops;
    // An announced restart and a deferral have lines of their own.
    let mut lines = super::workstation::lines(ops);
    if ops.reboot == Some(RebootReport::Pending) && lines.iter().all(|(k, _)| *k != "restart") {
        let why = match (ops.reboot_window, row.state) {
            (_, State::Paused) => "waits for the pause to end".to_owned(),
            (Some(w), _) => format!("waits for the reboot window {w} (the client's local time)"),
            (None, _) => "waits".to_owned(),
        };
        lines.push(("reboot", format!("pending: {why}")));
    }
    if let Some(why) = &ops.boot_only {
        lines.push((
            "next boot",
            format!("the applied release runs after the next reboot: {why}, so it was applied with `boot`"),
        ));
    }
    if ops.reboot == Some(RebootReport::Needed) {
        lines.push((
            "reboot",
            "needed to run the applied release; reboot = \"never\", so it waits for an admin"
                .to_owned(),
        ));
    }
    if row.state == State::Paused
        && let Some(until) = &ops.paused_until
    {
        let reason = ops
            .pause_reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        lines.push((
            "paused",
            format!("until {until}{reason} (`tiffin resume` on the host ends it)"),
        ));
    }
    if let Some(signed) = &ops.signed {
        lines.push((
            "signed",
            match signed.signers.is_empty() {
                true => format!("#{} until {}", signed.seq, signed.expires),
                false => format!(
                    "#{} by {} until {}",
                    signed.seq,
                    signed.signers.join(", "),
                    signed.expires
                ),
            },
        ));
    }
    if row.state == State::Quarantined
        && let Some(id) = &ops.quarantined
    {
        lines.push((
            "quarantined",
            format!(
                "release {} was rolled back on the host and is held back (see error) until a newer release is published or `tiffin trigger {} --retry`",
                short(id),
                row.host
            ),
        ));
    }
    if let Some(id) = &row.trigger_pending {
        lines.push((
            "pending",
            format!("trigger {id} pending: the host acts on it at its next check or poll"),
        ));
    }
    if let Some(retry) = &ops.next_retry
        && matches!(row.state, State::Failed | State::RolledBack)
    {
        lines.push((
            "next retry",
            format!("{retry} (or `tiffin pull --now` on the host)"),
        ));
    }
    lines
}

/// The table's NOTE for a host without error or warning: its pause, or a reboot it owes.
pub(super) fn note(row: &HostStatus) -> Option<String> {
    let ops = &row.ops;
    if row.state == State::Paused {
        let until = ops.paused_until.as_deref().unwrap_or("?");
        let reason = ops
            .pause_reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        return Some(format!("paused until {until}{reason}"));
    }
    if let Some(note) = super::workstation::note(ops) {
        return Some(note);
    }
    let reboot = ops.reboot.map(|r| match r {
        RebootReport::Pending => match ops.reboot_window {
            Some(w) => format!("reboot pending (window {w})"),
            None => "reboot pending".to_owned(),
        },
        RebootReport::Needed => "reboot needed (applied for the next boot)".to_owned(),
    });
    // A signed fleet's table names each host's statement; `status HOST` has the fingerprints.
    reboot.or_else(|| {
        ops.signed.as_ref().map(|s| {
            format!(
                "signed #{} by {} key(s) until {}",
                s.seq,
                s.signers.len(),
                s.expires
            )
        })
    })
}

fn log_tail(log: Option<Result<String, String>>) -> String {
    match log {
        None => "\nno reports/rebuild.log yet\n".into(),
        Some(Err(e)) => format!("\nreports/rebuild.log unreadable: {e}\n"),
        Some(Ok(text)) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_LINES)..];
            let mut out = format!(
                "\nreports/rebuild.log, last {} of {} line(s):\n",
                tail.len(),
                lines.len()
            );
            for l in tail {
                // The client wrote it: no terminal escapes reach the reader's terminal.
                let _ = writeln!(out, "  | {}", one_line(l, FIELD_MAX));
            }
            out
        }
    }
}
