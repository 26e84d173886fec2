//! `tiffin status --format prometheus`: the fleet's state in the Prometheus text format, for node_exporter's textfile collector.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::{HostStatus, State};
use crate::core::report::PullResult;
use crate::core::settings::parse_time;

/// One metric family: its name, type and help, then its samples.
pub(crate) struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    pub(crate) fn new(out: &'a mut String, name: &str, help: &str) -> Family<'a> {
        // Every family here is a gauge: each value is a current state, none only ever grows.
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        Family { out }
    }

    pub(crate) fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(self.out, "{sep}{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unix_seconds(t: &str) -> Option<u64> {
    parse_time(t)?
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// A gauge with one sample per host that has a value.
fn per_host(
    out: &mut String,
    rows: &[HostStatus],
    name: &str,
    help: &str,
    value: impl Fn(&HostStatus) -> Option<u64>,
) {
    let mut f = Family::new(out, name, help);
    for r in rows {
        if let Some(v) = value(r) {
            f.sample(name, &[("host", r.host.as_str())], v);
        }
    }
}

/// The seq of the release the host runs, from its report or, for older clients, from a
/// release whose seq status knows.
pub(super) fn applied_seq(r: &HostStatus) -> Option<u64> {
    r.ops
        .applied_seq
        .or_else(|| match (&r.applied, &r.published) {
            (Some(a), Some(p)) if a == p.id.as_str() => Some(p.seq),
            (Some(a), _) if Some(a) == r.attempted.as_ref() => r.attempted_seq,
            _ => None,
        })
}

/// A per-host gauge: name, help, and the host's value (none: no sample for that host).
type PerHost = (&'static str, &'static str, fn(&HostStatus) -> Option<u64>);

const PER_HOST: [PerHost; 10] = [
    (
        "tiffin_host_published_seq",
        "The seq of the release CURRENT names for the host.",
        |r| r.published.as_ref().map(|p| p.seq),
    ),
    (
        "tiffin_host_applied_seq",
        "The seq of the release the host runs successfully.",
        applied_seq,
    ),
    (
        "tiffin_host_last_seen_timestamp_seconds",
        "When the server last received the host's report (Unix time, the server's clock).",
        |r| r.last_seen.as_deref().and_then(unix_seconds),
    ),
    (
        "tiffin_host_last_apply_duration_seconds",
        "How long the host's last attempt to apply a release took.",
        |r| r.ops.last_apply_seconds,
    ),
    (
        "tiffin_host_reboot_pending",
        "1 when the host's new system needs a reboot: one that waits for its reboot window or pause, or one left to an admin (reboot = never).",
        |r| r.result.map(|_| u64::from(r.ops.reboot.is_some())),
    ),
    (
        "tiffin_host_paused",
        "1 while tiffin pause holds the host's releases back.",
        |r| r.result.map(|_| u64::from(r.state == State::Paused)),
    ),
    (
        "tiffin_host_paused_until_timestamp_seconds",
        "When the host's pause ends by itself (Unix time).",
        |r| {
            (r.state == State::Paused)
                .then(|| r.ops.paused_until.as_deref().and_then(unix_seconds))
                .flatten()
        },
    ),
    (
        "tiffin_host_next_retry_timestamp_seconds",
        "When a host backing off a failed release tries it again (Unix time).",
        |r| r.ops.next_retry.as_deref().and_then(unix_seconds),
    ),
    (
        "tiffin_host_signed_seq",
        "Signed fleets: the seq of the published release's statement, verified by the server.",
        |r| r.ops.signed.as_ref().map(|s| s.seq),
    ),
    (
        "tiffin_host_signed_expiry_timestamp_seconds",
        "Signed fleets: when the published release's statement expires (Unix time); the host applies nothing new after it.",
        |r| r.ops.signed.as_ref().and_then(|s| unix_seconds(&s.expires)),
    ),
];

/// Renders every host and the fleet totals; `now` is when the numbers were read.
pub fn render(rows: &[HostStatus], now: SystemTime) -> String {
    let mut out = String::new();
    let name = "tiffin_host_state";
    let help = "Whether the host is in this state (1) or not (0); one series per state.";
    let mut f = Family::new(&mut out, name, help);
    for r in rows {
        for s in State::ALL {
            let labels = [("host", r.host.as_str()), ("state", s.as_str())];
            f.sample(name, &labels, u8::from(r.state == s));
        }
    }
    let name = "tiffin_hosts";
    let mut f = Family::new(&mut out, name, "Hosts of the fleet in each state.");
    for s in State::ALL {
        let count = rows.iter().filter(|r| r.state == s).count();
        f.sample(name, &[("state", s.as_str())], count);
    }
    let name = "tiffin_host_last_result";
    let help = "The result of the host's last poll (1) among all results (0).";
    let mut f = Family::new(&mut out, name, help);
    for r in rows {
        let Some(result) = r.result else { continue };
        for x in PullResult::ALL {
            let labels = [("host", r.host.as_str()), ("result", x.as_str())];
            f.sample(name, &labels, u8::from(result == x));
        }
    }
    for (name, help, value) in PER_HOST {
        per_host(&mut out, rows, name, help, value);
    }
    let name = "tiffin_status_timestamp_seconds";
    let help = "When tiffin status read the chroots for these numbers (Unix time).";
    let mut f = Family::new(&mut out, name, help);
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    f.sample(name, &[], secs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn an_empty_fleet_still_has_every_family_and_zero_totals() {
        let out = render(&[], SystemTime::UNIX_EPOCH);
        for s in State::ALL {
            assert!(
                out.contains(&format!("tiffin_hosts{{state=\"{}\"}} 0\n", s.as_str())),
                "{out}"
            );
        }
        assert_eq!(
            out.matches("# TYPE ").count(),
            out.matches("# HELP ").count()
        );
        assert!(out.ends_with("tiffin_status_timestamp_seconds 0\n"));
    }
}
