//! `[rollout]` and `[groups]` in fleet.toml, `tags` in host.toml: the waves a publish goes out in, when a wave counts as healthy, what halts it, and how many hosts of a group may reboot at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use super::FLEET_FILE;
use crate::core::diag::Problem;
use crate::core::names::HostName;
use crate::core::settings::Interval;

/// The longest group name (a tag in host.toml).
const MAX_GROUP_NAME: usize = 63;

/// A group of hosts, named by the `tags` of their host.toml: `[a-z0-9][a-z0-9_-]*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(String);

impl GroupName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for GroupName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = s.len() <= MAX_GROUP_NAME
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(GroupName(s.to_owned()))
        } else {
            Err(format!(
                "invalid group name {s:?}: use lowercase letters, digits, '-' and '_' (at most {MAX_GROUP_NAME}), starting with a letter or digit"
            ))
        }
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for GroupName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One entry of `waves`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaveSpec {
    /// `"canary"`: the hosts tagged so that no earlier wave took.
    Group(GroupName),
    /// `"50%"`: hosts until this share of the rollout's hosts has the release (cumulative).
    Percent(u8),
    /// `5`: this many more hosts.
    Count(u32),
}

impl FromStr for WaveSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(p @ 1..=100) => Ok(WaveSpec::Percent(p)),
                _ => Err(format!(
                    "invalid wave {s:?}: a share is written \"1%\" to \"100%\""
                )),
            };
        }
        if let Ok(n) = s.parse::<u32>() {
            return Count::new(n).map(|c| WaveSpec::Count(c.0));
        }
        s.parse().map(WaveSpec::Group).map_err(|e| {
            format!("invalid wave {s:?}: not a share (\"10%\"), a count (5) nor a group ({e})")
        })
    }
}

impl fmt::Display for WaveSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSpec::Group(g) => write!(f, "{g}"),
            WaveSpec::Percent(p) => write!(f, "{p}%"),
            WaveSpec::Count(n) => write!(f, "{n}"),
        }
    }
}

/// A positive count of hosts.
struct Count(u32);
impl Count {
    fn new(n: u32) -> Result<Count, String> {
        if n == 0 {
            Err("invalid wave 0: a wave takes at least one host".into())
        } else {
            Ok(Count(n))
        }
    }
}

/// A TOML integer or string, for the entries that may be written either way.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(i64),
    Text(String),
}

impl NumberOrText {
    fn text(self) -> String {
        match self {
            NumberOrText::Number(n) => n.to_string(),
            NumberOrText::Text(s) => s,
        }
    }
}

impl<'de> Deserialize<'de> for WaveSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        NumberOrText::deserialize(d)?
            .text()
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `max_failures`: a number of hosts of a wave, or a share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureLimit {
    Count(u32),
    Percent(u8),
}

impl FailureLimit {
    /// How many failed hosts a wave of `size` hosts tolerates; one more halts the rollout.
    pub fn allowed(self, size: usize) -> usize {
        match self {
            FailureLimit::Count(n) => n as usize,
            FailureLimit::Percent(p) => size * usize::from(p) / 100,
        }
    }
}

impl Default for FailureLimit {
    fn default() -> Self {
        FailureLimit::Count(0)
    }
}

impl FromStr for FailureLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(p @ 0..=100) => Ok(FailureLimit::Percent(p)),
                _ => Err(format!(
                    "invalid max_failures {s:?}: a share is \"0%\" to \"100%\""
                )),
            };
        }
        s.parse().map(FailureLimit::Count).map_err(|_| {
            format!("invalid max_failures {s:?}: write a number of hosts (1) or a share (\"10%\")")
        })
    }
}

impl fmt::Display for FailureLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureLimit::Count(n) => write!(f, "{n}"),
            FailureLimit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl<'de> Deserialize<'de> for FailureLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        NumberOrText::deserialize(d)?
            .text()
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a halted rollout does to the hosts that took the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Leave every host where it is; an admin resumes, reverts or cancels.
    #[default]
    Pause,
    /// Move the hosts that took the release back to their previous one, as a new release.
    Revert,
}

impl OnFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Pause => "pause",
            OnFailure::Revert => "revert",
        }
    }
}

/// `[rollout]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSettings {
    /// The waves, in order; hosts no wave takes form a last wave of their own.
    pub waves: Vec<WaveSpec>,
    /// Failed, rolled-back or quarantined hosts a wave tolerates; one more halts the rollout.
    #[serde(default)]
    pub max_failures: FailureLimit,
    /// A wave whose hosts have not all reported by then counts those as failed.
    #[serde(default = "default_wave_timeout")]
    pub wave_timeout: Interval,
    /// How long a wave's hosts must stay healthy before the next wave starts; unset: none.
    #[serde(default)]
    pub soak: Option<Interval>,
    #[serde(default)]
    pub on_failure: OnFailure,
}

fn default_wave_timeout() -> Interval {
    Interval::secs(2 * 3600)
}

/// `[groups.<name>]`: settings of the hosts tagged `<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSettings {
    /// At most this many of the group's hosts reboot at once (each waits for a slot).
    pub max_rebooting: Option<u32>,
    /// A slot not given back (the host reported after its reboot) within this is taken back.
    #[serde(default = "default_slot_timeout")]
    pub reboot_slot_timeout: Interval,
}

fn default_slot_timeout() -> Interval {
    Interval::secs(30 * 60)
}

impl RolloutSettings {
    /// What `tiffin check` says of `[rollout]`, given the tags the hosts carry.
    pub fn problems(&self, tags: &BTreeSet<GroupName>) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.waves.is_empty() {
            out.push(Problem::error(
                None,
                FLEET_FILE,
                "[rollout]: waves is empty: name at least one wave, e.g. waves = [\"canary\", \"50%\", \"100%\"]",
            ));
        }
        for wave in &self.waves {
            if let WaveSpec::Group(g) = wave
                && !tags.contains(g)
            {
                out.push(Problem::warning(
                    None,
                    FLEET_FILE,
                    format!("[rollout]: wave \"{g}\" names a group no host.toml has in its tags: that wave is always empty"),
                ));
            }
        }
        out
    }
}

/// The groups with a reboot limit a host belongs to.
pub fn reboot_limits<'a>(
    groups: &'a BTreeMap<GroupName, GroupSettings>,
    tags: &'a BTreeSet<GroupName>,
) -> impl Iterator<Item = (&'a GroupName, u32)> + 'a {
    tags.iter().filter_map(|t| {
        let limit = groups.get(t)?.max_rebooting?;
        Some((t, limit))
    })
}

/// The rollout's hosts cut into waves, in the order of `specs`: a group takes its tagged
/// hosts not taken yet, a share tops the hosts reached up to that share of all of them
/// (rounded up), a count takes that many more; hosts are taken by name. Empty waves are
/// dropped, and the hosts left over form a last wave.
pub fn cut_waves(
    specs: &[WaveSpec],
    hosts: &BTreeMap<HostName, BTreeSet<GroupName>>,
) -> Vec<Vec<HostName>> {
    let total = hosts.len();
    let mut left: Vec<&HostName> = hosts.keys().collect();
    let mut reached = 0usize;
    let mut waves = Vec::new();
    for spec in specs {
        let wave: Vec<HostName> = match spec {
            WaveSpec::Group(g) => {
                let (take, keep): (Vec<&HostName>, Vec<&HostName>) =
                    left.iter().partition(|h| hosts[**h].contains(g));
                left = keep;
                take.into_iter().cloned().collect()
            }
            WaveSpec::Percent(p) => {
                let target = (total * usize::from(*p)).div_ceil(100);
                let n = target.saturating_sub(reached).min(left.len());
                left.drain(..n).cloned().collect()
            }
            WaveSpec::Count(n) => {
                let n = (*n as usize).min(left.len());
                left.drain(..n).cloned().collect()
            }
        };
        reached += wave.len();
        if !wave.is_empty() {
            waves.push(wave);
        }
    }
    if !left.is_empty() {
        waves.push(left.into_iter().cloned().collect());
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(spec: &[(&str, &[&str])]) -> BTreeMap<HostName, BTreeSet<GroupName>> {
        spec.iter()
            .map(|(h, tags)| {
                (
                    h.parse().unwrap(),
                    tags.iter().map(|t| t.parse().unwrap()).collect(),
                )
            })
            .collect()
    }

    fn names(waves: &[Vec<HostName>]) -> Vec<Vec<&str>> {
        waves
            .iter()
            .map(|w| w.iter().map(|h| h.as_str()).collect())
            .collect()
    }

    #[test]
    fn waves_take_groups_shares_and_counts_and_the_rest_goes_last() {
        let fleet = hosts(&[
            ("a", &[]),
            ("b", &["canary"]),
            ("c", &[]),
            ("d", &[]),
            ("e", &[]),
            ("f", &[]),
            ("g", &[]),
            ("h", &[]),
            ("i", &[]),
            ("j", &["canary"]),
        ]);
        let specs: Vec<WaveSpec> = ["canary", "30%", "2", "100%"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            names(&cut_waves(&specs, &fleet)),
            vec![
                vec!["b", "j"],
                vec!["a"],
                vec!["c", "d"],
                vec!["e", "f", "g", "h", "i"]
            ]
        );
        // No final 100%: the rest is a wave of its own; an empty group wave is dropped.
        let specs: Vec<WaveSpec> = ["nobody", "1"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(
            names(&cut_waves(&specs, &fleet)),
            vec![vec!["a"], vec!["b", "c", "d", "e", "f", "g", "h", "i", "j"]]
        );
    }

    #[test]
    fn wave_and_limit_texts_parse_or_say_what_is_wrong() {
        assert_eq!("10%".parse::<WaveSpec>(), Ok(WaveSpec::Percent(10)));
        assert_eq!("3".parse::<WaveSpec>(), Ok(WaveSpec::Count(3)));
        assert!(
            "0".parse::<WaveSpec>()
                .unwrap_err()
                .contains("at least one host")
        );
        assert!(
            "101%"
                .parse::<WaveSpec>()
                .unwrap_err()
                .contains("\"1%\" to \"100%\"")
        );
        assert!(
            "Canary!"
                .parse::<WaveSpec>()
                .unwrap_err()
                .contains("invalid group name")
        );
        assert_eq!(FailureLimit::Percent(10).allowed(25), 2);
        assert_eq!(FailureLimit::Percent(10).allowed(5), 0);
        assert_eq!(FailureLimit::Count(1).allowed(1), 1);
        assert!("x".parse::<FailureLimit>().is_err());
        let s: RolloutSettings =
            toml::from_str("waves = [\"canary\", 5, \"100%\"]\nmax_failures = \"10%\"\nsoak = \"10m\"\non_failure = \"revert\"").unwrap();
        assert_eq!(
            s.waves,
            vec![
                WaveSpec::Group("canary".parse().unwrap()),
                WaveSpec::Count(5),
                WaveSpec::Percent(100)
            ]
        );
        assert_eq!(s.max_failures, FailureLimit::Percent(10));
        assert_eq!(s.on_failure, OnFailure::Revert);
        assert_eq!(s.wave_timeout, Interval::secs(7200));
    }

    proptest::proptest! {
        #[test]
        fn every_host_is_in_exactly_one_wave(n in 0usize..60, tagged in proptest::collection::vec(proptest::bool::ANY, 60), specs in proptest::collection::vec(0u8..4, 0..6), arg in 1u32..120) {
            let fleet: BTreeMap<HostName, BTreeSet<GroupName>> = (0..n)
                .map(|i| (format!("h{i}").parse().unwrap(), if tagged[i] { ["canary".parse().unwrap()].into() } else { BTreeSet::new() }))
                .collect();
            let specs: Vec<WaveSpec> = specs.iter().map(|k| match k {
                0 => WaveSpec::Group("canary".parse().unwrap()),
                1 => WaveSpec::Percent((arg % 100 + 1) as u8),
                2 => WaveSpec::Count(arg),
                _ => WaveSpec::Percent(100),
            }).collect();
            let waves = cut_waves(&specs, &fleet);
            let all: Vec<&HostName> = waves.iter().flatten().collect();
            proptest::prop_assert_eq!(all.len(), n);
            let unique: BTreeSet<&HostName> = all.iter().copied().collect();
            proptest::prop_assert_eq!(unique.len(), n);
            proptest::prop_assert!(waves.iter().all(|w| !w.is_empty()));
        }
    }
}
