//! `tiffin pull --retry-for`: after a resume (or the user's button), keep trying quickly while the server cannot be reached yet, then leave it to the timer.

use std::time::Duration;

use super::PullError;
use super::connect::ConnectError;
use super::state::StateError;

/// The wait after the first failed attempt; it doubles up to [`LONGEST_WAIT`].
pub const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between two attempts: a server that answers again is reached within this
/// (plus one connection attempt).
pub const LONGEST_WAIT: Duration = Duration::from_secs(5);

/// Whether a failed attempt is worth trying again soon: the server was not reached (no
/// network yet, no answer, the SSH session could not be opened) or another pull holds the
/// lock. Nothing of a release was tried, so nothing counts against one. A refused host key
/// or identity, a failed rebuild and everything after the connection are final.
pub fn worth_retrying(e: &PullError) -> bool {
    matches!(
        e,
        PullError::Connect(ConnectError::Timeout { .. } | ConnectError::Ssh { .. })
            | PullError::State(StateError::Busy { .. })
    )
}

/// Why this attempt waits, for the log: the lock's own message says the pull exits, which
/// under `--retry-for` it does not.
pub fn why_waiting(e: &PullError) -> String {
    match e {
        PullError::State(StateError::Busy { path }) => format!(
            "another tiffin pull is running (it holds {})",
            path.display()
        ),
        other => other.to_string(),
    }
}

/// The retries of one `tiffin pull --retry-for BUDGET`: 1 s, 2 s, 4 s, then every 5 s, as
/// long as the next attempt still starts within the budget.
#[derive(Debug, Clone)]
pub struct Retrying {
    budget: Duration,
    failed: u32,
}

impl Retrying {
    pub fn new(budget: Duration) -> Self {
        Retrying { budget, failed: 0 }
    }

    /// After a failed attempt, `elapsed` since the first began: how long to wait before the
    /// next one, or `None` when it would start past the budget (the failure stands).
    pub fn next_wait(&mut self, elapsed: Duration) -> Option<Duration> {
        self.failed = self.failed.saturating_add(1);
        let wait = wait_after(self.failed);
        (elapsed + wait <= self.budget).then_some(wait)
    }

    /// How many attempts failed so far.
    pub fn failed(&self) -> u32 {
        self.failed
    }
}

/// The wait after `failed` failed attempts (≥ 1): doubling from [`FIRST_WAIT`], capped.
pub fn wait_after(failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(16);
    FIRST_WAIT.saturating_mul(1 << doublings).min(LONGEST_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_waits_double_then_stay_at_five_seconds() {
        let got: Vec<u64> = (1..=7).map(|n| wait_after(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 5, 5, 5, 5]);
        assert_eq!(wait_after(u32::MAX), LONGEST_WAIT);
    }

    #[test]
    fn no_attempt_starts_past_the_budget() {
        let mut r = Retrying::new(Duration::from_secs(10));
        // Attempts that fail at once: waits 1, 2, 4 bring the clock to 7 s; 7 + 5 > 10.
        let mut elapsed = Duration::ZERO;
        let mut waits = Vec::new();
        while let Some(w) = r.next_wait(elapsed) {
            waits.push(w.as_secs());
            elapsed += w;
        }
        assert_eq!(waits, [1, 2, 4]);
        assert_eq!(r.failed(), 4);
    }

    #[test]
    fn slow_attempts_use_up_the_budget_too() {
        let mut r = Retrying::new(Duration::from_secs(30));
        // A connection attempt that times out after 10 s.
        assert_eq!(r.next_wait(Duration::from_secs(10)), Some(FIRST_WAIT));
        assert_eq!(
            r.next_wait(Duration::from_secs(21)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(r.next_wait(Duration::from_secs(33)), None);
    }

    #[test]
    fn only_an_unreachable_server_or_a_busy_lock_is_tried_again() {
        let timeout = PullError::Connect(ConnectError::Timeout {
            server: "s".into(),
            timeout: "10s".into(),
        });
        let ssh = PullError::Connect(ConnectError::Ssh {
            server: "s".into(),
            step: "connect",
            message: "no route to host".into(),
        });
        let busy = PullError::State(StateError::Busy {
            path: "/var/lib/tiffin/lock".into(),
        });
        let mismatch = PullError::Connect(ConnectError::HostKeyMismatch {
            server: "s".into(),
            expected: "a".into(),
            actual: "b".into(),
        });
        let rebuild = PullError::Reboot {
            message: "x".into(),
        };
        assert!(worth_retrying(&timeout) && worth_retrying(&ssh) && worth_retrying(&busy));
        assert!(!worth_retrying(&mismatch) && !worth_retrying(&rebuild));
    }
}
