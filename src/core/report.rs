//! The status report a client uploads to `reports/status.toml` in its chroot.

use serde::{Deserialize, Serialize};

pub const STATUS_FILE: &str = "status.toml";
pub const REBUILD_LOG_FILE: &str = "rebuild.log";

/// The outcome of the client's last poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullResult {
    /// The release was applied.
    Ok,
    /// Applying the release failed; the previous system keeps running.
    Failed,
    /// The release was applied, failed its health check, and the previous system was restored.
    RolledBack,
    /// Nothing new: a heartbeat.
    Unchanged,
}

impl PullResult {
    /// Every result, for the metrics' one series per result.
    pub const ALL: [PullResult; 4] = [
        PullResult::Ok,
        PullResult::Failed,
        PullResult::RolledBack,
        PullResult::Unchanged,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            PullResult::Ok => "ok",
            PullResult::Failed => "failed",
            PullResult::RolledBack => "rolled-back",
            PullResult::Unchanged => "unchanged",
        }
    }
}

/// `reports/status.toml`. Written by the client, read by `tiffin status`.
/// Unknown keys are accepted so an older server reads a newer client's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The host as the client believes it is; the server trusts the chroot, not this.
    pub host: String,
    /// The release applied (or attempted, when failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub result: PullResult,
    /// The release this host runs successfully, which differs from `release` after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    pub last_seen: String,
    /// Target of `/run/current-system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// tiffin version of the client.
    #[serde(default)]
    pub version: String,
    /// Units whose restart or reload after activation failed, one line each
    /// ("grafana.service: restart: …"); the release stays applied unless its health check fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_failed: Vec<String>,
    /// The seq of `applied`, which differs from `seq` after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_seq: Option<u64>,
    /// When `applied` was applied, by the client's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    /// How long the last attempt to apply a release took (fetch to health check), in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_apply_seconds: Option<u64>,
    /// When a failed release is tried again (it is backing off until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<String>,
    /// `pending`: the applied release needs a reboot that waits for `reboot_window` (or a pause);
    /// `needed`: it needs one that an admin gives (`reboot = "never"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<RebootReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_window: Option<crate::core::window::RebootWindow>,
    /// Set while `tiffin pause` holds this host: it reports but applies nothing until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// The id of the last trigger (line 2 of `CURRENT`) this client handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The applied release runs only after the next boot: a switch inhibitor (nixpkgs'
    /// `system.switch.inhibitors`, named here) refused switching to it, so it went in with `boot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_only: Option<String>,
    /// A release this host rolled back (its health check failed, or the server could not be
    /// reached after activating or booting it): it is not applied again until a newer release
    /// or `tiffin trigger HOST --retry`. `error` says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<String>,
    /// Signed fleets: the statement the host verified for `release`: its seq, its expiry and
    /// the fingerprints of the keys that signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_expires: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<String>,
    /// A reboot limited by `max_rebooting` (fleet.toml `[groups]`): `wanted` while the host
    /// waits for a slot inside its window, `granted` when it reboots on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_slot: Option<RebootSlotReport>,
    /// `reboot = "ask"`: until when the user may postpone the restart (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_deadline: Option<String>,
    /// The user postponed the restart until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_postponed_until: Option<String>,
    /// The person at the computer was warned: it restarts at the first poll from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_at: Option<String>,
    /// A newer release waits: the host checked, but a metered connection or a low battery
    /// deferred downloading it (not a failure; `tiffin pull --now` or a trigger overrides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<Deferred>,
}

/// Where a host stands with its reboot slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootSlotReport {
    /// Its reboot is due and waits for the server to grant a slot.
    Wanted,
    /// It reboots now, on the slot the server granted.
    Granted,
}

/// Why a client deferred downloading a new release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Deferred {
    /// NetworkManager says the connection is metered.
    Metered,
    /// UPower says the computer runs on battery, below the client's threshold.
    OnBattery,
}

impl Deferred {
    pub fn as_str(self) -> &'static str {
        match self {
            Deferred::Metered => "metered",
            Deferred::OnBattery => "on battery",
        }
    }
}

/// A reboot the client owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootReport {
    /// Needed, and deferred until the reboot window opens (or the pause ends).
    Pending,
    /// Needed to run the applied release, and left to an admin (`reboot = "never"`).
    Needed,
}

impl Report {
    pub fn render(&self) -> String {
        toml::to_string(self).expect("a report always serializes")
    }
    pub fn parse(text: &str) -> Result<Report, String> {
        toml::from_str(text).map_err(|e| crate::core::diag::toml_message(&e))
    }
}
