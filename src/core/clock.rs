//! "Now", in one place, so tests can fix it.

use std::time::SystemTime;

/// The current time, or TIFFIN_NOW (RFC 3339) when set, so snapshots of relative times are stable.
pub fn now() -> SystemTime {
    std::env::var("TIFFIN_NOW")
        .ok()
        .and_then(|s| crate::core::settings::parse_time(&s))
        .unwrap_or_else(SystemTime::now)
}
