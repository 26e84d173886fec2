//! `reboot_window = "01:00-05:00"`: the daily span of local clock time in which a client may reboot.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MINUTES_PER_DAY: u16 = 24 * 60;

/// A span of the day, start inclusive, end exclusive, in minutes after midnight. `end <
/// start` crosses midnight (`"22:00-04:00"`). Read against the client's local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RebootWindow {
    start: u16,
    end: u16,
}

impl RebootWindow {
    /// Whether `minute` (minutes after local midnight, 0..1440) falls inside the window.
    pub fn contains(self, minute: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }

    /// Minutes from `minute` until the window next opens (0 when it is open).
    pub fn minutes_until_open(self, minute: u16) -> u16 {
        if self.contains(minute) {
            0
        } else {
            (self.start + MINUTES_PER_DAY - minute % MINUTES_PER_DAY) % MINUTES_PER_DAY
        }
    }
}

fn hh_mm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let ok = |p: &str| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit());
    if !ok(h) || !ok(m) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    // "24:00" ends a window at midnight; it cannot start one (checked by the caller).
    (h < 24 && m < 60 || h == 24 && m == 0).then_some(h * 60 + m)
}

impl FromStr for RebootWindow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid reboot_window {s:?}: {why}; write it like \"01:00-05:00\" (the client's local time, 24-hour clock; \"22:00-04:00\" crosses midnight)"
            )
        };
        let (a, b) = s
            .trim()
            .split_once('-')
            .ok_or_else(|| bad("no '-' between start and end"))?;
        let start = hh_mm(a.trim()).ok_or_else(|| bad("the start is not HH:MM"))?;
        let end = hh_mm(b.trim()).ok_or_else(|| bad("the end is not HH:MM"))?;
        if start == MINUTES_PER_DAY {
            return Err(bad("a window starts at 00:00, not 24:00"));
        }
        let end = end % MINUTES_PER_DAY;
        if start == end {
            return Err(bad(
                "start and end are the same; leave reboot_window out to reboot at any time",
            ));
        }
        Ok(RebootWindow { start, end })
    }
}

impl fmt::Display for RebootWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

impl Serialize for RebootWindow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RebootWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> RebootWindow {
        s.parse().unwrap()
    }
    const fn at(h: u16, m: u16) -> u16 {
        h * 60 + m
    }

    #[test]
    fn inside_and_outside_a_window_within_one_day() {
        let win = w("01:00-05:00");
        assert!(!win.contains(at(0, 59)));
        assert!(win.contains(at(1, 0)), "the start is inside");
        assert!(win.contains(at(4, 59)));
        assert!(!win.contains(at(5, 0)), "the end is outside");
        assert!(!win.contains(at(11, 0)));
        assert_eq!(win.minutes_until_open(at(11, 0)), at(14, 0));
        assert_eq!(win.minutes_until_open(at(0, 30)), 30);
        assert_eq!(win.minutes_until_open(at(2, 0)), 0);
    }

    #[test]
    fn a_window_may_cross_midnight() {
        let win = w("22:30-04:00");
        for inside in [at(22, 30), at(23, 59), at(0, 0), at(3, 59)] {
            assert!(win.contains(inside), "{inside}");
        }
        for outside in [at(4, 0), at(12, 0), at(22, 29)] {
            assert!(!win.contains(outside), "{outside}");
        }
        assert_eq!(win.minutes_until_open(at(22, 0)), 30);
        let to_midnight = w("23:00-24:00");
        assert!(to_midnight.contains(at(23, 59)) && !to_midnight.contains(at(0, 0)));
        assert_eq!(to_midnight.to_string(), "23:00-00:00");
    }

    #[test]
    fn malformed_windows_say_how_to_write_one() {
        for bad in [
            "",
            "1-5",
            "01:00",
            "01:00-5:00",
            "25:00-01:00",
            "01:60-02:00",
            "24:00-01:00",
            "03:00-03:00",
            "01:00-05:00-06:00",
            "０１:00-02:00",
        ] {
            let e = bad.parse::<RebootWindow>().unwrap_err();
            assert!(e.contains("write it like \"01:00-05:00\""), "{bad}: {e}");
        }
        assert_eq!(w(" 01:00 - 05:00 ").to_string(), "01:00-05:00");
    }

    proptest::proptest! {
        #[test]
        fn every_minute_is_inside_or_waits_for_the_start(s in 0u16..1440, e in 0u16..1440, m in 0u16..1440) {
            proptest::prop_assume!(s != e);
            let win = RebootWindow { start: s, end: e };
            let wait = win.minutes_until_open(m);
            proptest::prop_assert_eq!(wait == 0, win.contains(m));
            proptest::prop_assert!(win.contains((m + wait) % 1440));
            proptest::prop_assert_eq!(win.to_string().parse::<RebootWindow>().unwrap(), win);
        }
    }
}
