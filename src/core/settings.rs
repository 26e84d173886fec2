//! Settings shared by the fleet files, the manifest and the client: apply policy and durations.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What `nixos-rebuild` does with a new release on the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Build, activate now, and make it the boot default.
    #[default]
    Switch,
    /// Build and make it the boot default; activate at next boot.
    Boot,
    /// Build and activate now, without touching the boot default.
    Test,
    /// Only build (useful to pre-stage a large change).
    Build,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Switch => "switch",
            Action::Boot => "boot",
            Action::Test => "test",
            Action::Build => "build",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the client reboots after applying a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reboot {
    /// Never reboot; a `boot` action waits for the next manual reboot.
    #[default]
    Never,
    /// Reboot when the new system's kernel, initrd or kernel modules differ from the booted ones.
    IfNeeded,
    /// As `if-needed`, but the person at the computer is told first and may postpone the
    /// restart until `reboot_deadline` after the release was applied (docs/workstations.md).
    Ask,
}

/// How a client applies a release; part of the MANIFEST, so changing it makes a new release.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyPolicy {
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub reboot: Reboot,
    /// A command run after the rebuild; a non-zero exit marks the release failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_check: Vec<String>,
    /// Apply a release even if the system it builds no longer runs tiffin's client (to
    /// decommission a host); left out of the MANIFEST when false, so older ids stay the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_leaving: bool,
    /// When a needed reboot may happen (the client's local time); left out of the MANIFEST when
    /// unset, so older ids stay the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_window: Option<crate::core::window::RebootWindow>,
    /// Where the system is built; left out of the MANIFEST for `client`, so older ids stay the same.
    #[serde(default, skip_serializing_if = "Build::is_client")]
    pub build: Build,
    /// Whether the host confirms a release by reaching the server over a fresh session after
    /// activating it (and after booting it), and rolls back when it cannot; left out of the
    /// MANIFEST when on, so older ids stay the same.
    #[serde(default, skip_serializing_if = "Confirm::is_on")]
    pub confirm: Confirm,
    /// How long the host tries to reach the server after an activation or a boot before it
    /// rolls back; unset: the client's `confirm_timeout` (default 3 min).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_timeout: Option<Interval>,
    /// Whether a needed reboot waits for a slot the server grants (the host is in a group with
    /// `max_rebooting`); set by the fleet from the host's tags, left out of the MANIFEST when
    /// free, so older ids stay the same.
    #[serde(default, skip_serializing_if = "RebootSlot::is_free")]
    pub reboot_slot: RebootSlot,
    /// `reboot = "ask"`: how long after the release was applied the user may keep postponing
    /// the restart; unset: three days. Left out of the MANIFEST when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_deadline: Option<Interval>,
}

/// `[apply] reboot_slot`: whether a reboot is the host's own decision or waits for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootSlot {
    /// Reboot when due (inside the window).
    #[default]
    Free,
    /// Ask in the report when due, and reboot when the server grants a slot (a `reboot` trigger).
    Wait,
}

impl RebootSlot {
    pub fn is_free(&self) -> bool {
        *self == RebootSlot::Free
    }
}

/// `[apply] confirm`: written `true` or `false`, kept as an enum so no call site reads a bare bool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Confirm {
    /// Reach the server over a fresh session after activation; roll back when it cannot.
    #[default]
    On,
    /// Trust the activation (a host that often has no network, or one being moved).
    Off,
}

impl Confirm {
    pub fn is_on(&self) -> bool {
        *self == Confirm::On
    }
}

impl Serialize for Confirm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(self.is_on())
    }
}

impl<'de> Deserialize<'de> for Confirm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(if bool::deserialize(d)? {
            Confirm::On
        } else {
            Confirm::Off
        })
    }
}

/// Where a host's system is built: by the client (`nixos-rebuild`) or once on the server,
/// shipped to the client as a signed binary cache in its release (docs/prebuilt.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Build {
    #[default]
    Client,
    Server,
}

impl Build {
    pub fn is_client(&self) -> bool {
        *self == Build::Client
    }
}

/// `[apply]` in a host.toml: each key set there overrides `[defaults.apply]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyOverrides {
    pub action: Option<Action>,
    pub reboot: Option<Reboot>,
    pub health_check: Option<Vec<String>>,
    pub allow_leaving: Option<bool>,
    pub reboot_window: Option<crate::core::window::RebootWindow>,
    pub build: Option<Build>,
    pub confirm: Option<Confirm>,
    pub confirm_timeout: Option<Interval>,
    pub reboot_deadline: Option<Interval>,
}

impl ApplyPolicy {
    pub fn overridden_by(&self, o: &ApplyOverrides) -> ApplyPolicy {
        ApplyPolicy {
            action: o.action.unwrap_or(self.action),
            reboot: o.reboot.unwrap_or(self.reboot),
            health_check: o
                .health_check
                .clone()
                .unwrap_or_else(|| self.health_check.clone()),
            allow_leaving: o.allow_leaving.unwrap_or(self.allow_leaving),
            reboot_window: o.reboot_window.or(self.reboot_window),
            build: o.build.unwrap_or(self.build),
            confirm: o.confirm.unwrap_or(self.confirm),
            confirm_timeout: o.confirm_timeout.or(self.confirm_timeout),
            reboot_slot: self.reboot_slot,
            reboot_deadline: o.reboot_deadline.or(self.reboot_deadline),
        }
    }
}

/// A duration written the way people write it: `"90s"`, `"15m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval(pub Duration);

impl Interval {
    pub const fn secs(s: u64) -> Interval {
        Interval(Duration::from_secs(s))
    }
}

impl FromStr for Interval {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let d = humantime::parse_duration(s).map_err(|e| {
            format!("invalid duration {s:?} ({e}): write it like \"90s\", \"15m\" or \"1h 30m\"")
        })?;
        if d.is_zero() {
            return Err(format!(
                "invalid duration {s:?}: it must be longer than zero"
            ));
        }
        Ok(Interval(d))
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Timestamps on disk: RFC 3339, UTC, whole seconds.
pub fn format_time(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn parse_time(s: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}
