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
    /// The id of the last trigger (line 2 of `CURRENT`) this client handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

impl Report {
    pub fn render(&self) -> String {
        toml::to_string(self).expect("a report always serializes")
    }
    pub fn parse(text: &str) -> Result<Report, String> {
        toml::from_str(text).map_err(|e| crate::diag::toml_message(&e))
    }
}
