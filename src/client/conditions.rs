//! Metered and on battery: whether NetworkManager and UPower say a new release should wait (client.toml `[defer]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::report::Deferred;

/// client.toml `[defer]`; both off by default (a server has neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deferral {
    #[serde(default)]
    pub metered: OnMetered,
    /// Defer while on battery below this charge (percent, 1 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_battery_below: Option<Percent>,
}

/// What a metered connection does to a new release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnMetered {
    #[default]
    Ignore,
    Defer,
}

/// A battery charge threshold, 1 to 100 percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Percent(u8);

impl TryFrom<u8> for Percent {
    type Error = String;
    fn try_from(p: u8) -> Result<Self, String> {
        if (1..=100).contains(&p) {
            Ok(Percent(p))
        } else {
            Err(format!(
                "{p} is not a battery percentage: give 1 to 100 (100 defers whenever on battery)"
            ))
        }
    }
}

impl From<Percent> for u8 {
    fn from(p: Percent) -> u8 {
        p.0
    }
}

impl Deferral {
    pub fn is_off(&self) -> bool {
        self.metered == OnMetered::Ignore && self.on_battery_below.is_none()
    }
}

/// What the system bus said; `None` where it said nothing (no NetworkManager, no UPower,
/// no bus): an unknown condition never defers.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observed {
    /// NetworkManager's `Metered` (NMMetered: 0 unknown, 1 yes, 2 no, 3 guess-yes, 4 guess-no).
    pub metered: Option<u32>,
    /// UPower's `OnBattery`.
    pub on_battery: Option<bool>,
    /// UPower's display device `Percentage`.
    pub percentage: Option<f64>,
}

/// Where a poll learns the conditions: the system bus, or a fixed answer (tests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source {
    SystemBus,
    Fixed(Observed),
}

/// Whether the rule defers a new release under what was observed.
pub fn deferral(rule: &Deferral, seen: &Observed) -> Option<Deferred> {
    let metered = matches!(seen.metered, Some(1 | 3));
    if rule.metered == OnMetered::Defer && metered {
        return Some(Deferred::Metered);
    }
    let below = rule.on_battery_below?;
    let low = seen
        .percentage
        .is_none_or(|p| p < f64::from(u8::from(below)));
    (seen.on_battery == Some(true) && low).then_some(Deferred::OnBattery)
}

/// How long the bus may take to answer before the conditions count as unknown.
const BUS_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks the system bus what the rule needs; a silent or absent bus observes nothing.
pub async fn observe(rule: &Deferral, source: Source) -> Observed {
    if rule.is_off() {
        return Observed::default();
    }
    let bus = match source {
        Source::Fixed(seen) => return seen,
        Source::SystemBus => tokio::time::timeout(BUS_TIMEOUT, zbus::Connection::system()).await,
    };
    let conn = match bus {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::info!("no system bus, so neither metered nor on battery: {e}");
            return Observed::default();
        }
        Err(_) => return Observed::default(),
    };
    let mut seen = Observed::default();
    if rule.metered == OnMetered::Defer {
        seen.metered = property(&conn, NM, "Metered").await;
    }
    if rule.on_battery_below.is_some() {
        seen.on_battery = property(&conn, UPOWER, "OnBattery").await;
        seen.percentage = property(&conn, DISPLAY_DEVICE, "Percentage").await;
    }
    seen
}

/// A D-Bus object's interface: service, path, interface.
type Object = (&'static str, &'static str, &'static str);
const NM: Object = (
    "org.freedesktop.NetworkManager",
    "/org/freedesktop/NetworkManager",
    "org.freedesktop.NetworkManager",
);
const UPOWER: Object = (
    "org.freedesktop.UPower",
    "/org/freedesktop/UPower",
    "org.freedesktop.UPower",
);
const DISPLAY_DEVICE: Object = (
    "org.freedesktop.UPower",
    "/org/freedesktop/UPower/devices/DisplayDevice",
    "org.freedesktop.UPower.Device",
);

/// One property, or `None` (logged) when the service is absent or answers with another type.
async fn property<T>(
    conn: &zbus::Connection,
    (service, path, iface): Object,
    name: &str,
) -> Option<T>
where
    T: TryFrom<zbus::zvariant::OwnedValue>,
    T::Error: Into<zbus::Error>,
{
    let get = async {
        let proxy = zbus::Proxy::new(conn, service, path, iface).await?;
        proxy.get_property::<T>(name).await
    };
    match tokio::time::timeout(BUS_TIMEOUT, get).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::info!("{service} {path} {name}: unknown ({e})");
            None
        }
        Err(_) => {
            tracing::info!("{service} {path} {name}: no answer within {BUS_TIMEOUT:?}");
            None
        }
    }
}

impl<R: super::transport::Remote, C: super::transport::Connector> super::Poll<'_, R, C> {
    /// A new release waits while metered or on battery, unless someone asked for it now
    /// (`tiffin pull --now`, a trigger).
    pub(super) async fn deferring(&self) -> Option<Deferred> {
        if self.opts.retry_now || self.trigger.is_some() || self.cfg.defer.is_off() {
            return None;
        }
        let seen = observe(&self.cfg.defer, self.opts.conditions).await;
        deferral(&self.cfg.defer, &seen)
    }

    /// Deferred: the report goes out (not failed, not stale) naming why; nothing is fetched.
    pub(super) async fn defer(mut self, why: Deferred) -> Result<super::Polled, super::PullError> {
        tracing::info!(
            "release {} waits: deferred ({}); `tiffin pull --now` takes it anyway",
            self.id.short(),
            why.as_str()
        );
        let applied = self.state.applied.clone();
        // What runs, not what waits: the server sees the newer release as pending.
        self.report.release = applied.as_ref().map(|a| a.id.to_string());
        self.report.seq = applied.as_ref().map(|a| a.seq);
        self.report.deferred = Some(why);
        let saved = self.save_state();
        if let Err(e) = &saved {
            self.report.error = Some(e.to_string());
        }
        self.upload().await?;
        saved?;
        Ok(super::Polled::Deferred { id: self.id, why })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(metered: OnMetered, below: Option<u8>) -> Deferral {
        Deferral {
            metered,
            on_battery_below: below.map(|p| Percent::try_from(p).unwrap()),
        }
    }

    #[test]
    fn metered_yes_and_guess_yes_defer_the_rest_do_not() {
        let r = rule(OnMetered::Defer, None);
        for (m, expect) in [
            (Some(1), Some(Deferred::Metered)),
            (Some(3), Some(Deferred::Metered)),
            (Some(0), None),
            (Some(2), None),
            (Some(4), None),
            (None, None),
        ] {
            let seen = Observed {
                metered: m,
                ..Observed::default()
            };
            assert_eq!(deferral(&r, &seen), expect, "{m:?}");
        }
        let seen = Observed {
            metered: Some(1),
            ..Observed::default()
        };
        assert_eq!(deferral(&rule(OnMetered::Ignore, None), &seen), None);
    }

    #[test]
    fn on_battery_below_the_threshold_defers() {
        let r = rule(OnMetered::Ignore, Some(40));
        let on = |p: Option<f64>| Observed {
            on_battery: Some(true),
            percentage: p,
            ..Observed::default()
        };
        assert_eq!(deferral(&r, &on(Some(39.5))), Some(Deferred::OnBattery));
        assert_eq!(deferral(&r, &on(Some(40.0))), None);
        assert_eq!(
            deferral(&r, &on(None)),
            Some(Deferred::OnBattery),
            "on battery, charge unknown: the cautious answer"
        );
        let plugged = Observed {
            on_battery: Some(false),
            percentage: Some(5.0),
            ..Observed::default()
        };
        assert_eq!(deferral(&r, &plugged), None);
        assert_eq!(deferral(&r, &Observed::default()), None, "no UPower");
    }

    #[test]
    fn a_threshold_outside_1_to_100_is_refused() {
        assert!(Percent::try_from(0).is_err());
        assert!(Percent::try_from(101).is_err());
        let d: Deferral = toml::from_str("metered = \"defer\"\non_battery_below = 30\n").unwrap();
        assert_eq!(d, rule(OnMetered::Defer, Some(30)));
        assert!(toml::from_str::<Deferral>("on_battery_below = 0\n").is_err());
    }
}
