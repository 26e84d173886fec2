//! Desktop notifications to the people logged in at a workstation: what tiffin did, and what it is about to do.

use serde::{Deserialize, Serialize};

/// client.toml `notify`: whether the people at this computer are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Notify {
    /// A server: nobody is told.
    #[default]
    Off,
    /// Every graphical session logind knows gets freedesktop notifications.
    Desktop,
}

impl Notify {
    pub fn is_on(self) -> bool {
        self == Notify::Desktop
    }
}

/// What the person at the computer is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A release was applied and runs now.
    Applied { seq: u64 },
    /// The new system needs a restart; `deadline` under `reboot = "ask"`.
    RestartNeeded { deadline: Option<String> },
    /// tiffin restarts the computer at `at` (in ten minutes).
    RestartSoon { at: String },
    /// A release failed; the previous system keeps running.
    Failed,
    /// `tiffin pause` holds updates back, or a release was rolled back and is held back.
    Held { why: Held },
}

/// Why updates are held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Paused,
    Quarantined,
}

/// A notification's text: summary, body, and whether it carries the "Postpone" button.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub summary: String,
    pub body: String,
    pub postpone: Postpone,
}

/// Whether a notification offers to postpone the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Postpone {
    Offered,
    NotOffered,
}

impl Event {
    /// The words the person reads (docs/workstations.md quotes them).
    pub fn message(&self) -> Message {
        let (summary, body, postpone) = match self {
            Event::Applied { seq } => (
                "Your computer was updated".to_owned(),
                format!("Update #{seq} is installed and running."),
                Postpone::NotOffered,
            ),
            Event::RestartNeeded { deadline: Some(d) } => (
                "Restart needed".to_owned(),
                format!(
                    "An update needs a restart to finish. Restart when it suits you, or postpone; after {d} the computer restarts by itself in its restart window."
                ),
                Postpone::Offered,
            ),
            Event::RestartNeeded { deadline: None } => (
                "Restart needed".to_owned(),
                "An update needs a restart to finish. The computer restarts by itself in its restart window, after a ten-minute warning.".to_owned(),
                Postpone::NotOffered,
            ),
            Event::RestartSoon { at } => (
                "Restarting in 10 minutes".to_owned(),
                format!("Save your work: the computer restarts at {at} to finish an update."),
                Postpone::Offered,
            ),
            Event::Failed => (
                "An update failed".to_owned(),
                "Your computer keeps running as before. Your administrators have been told."
                    .to_owned(),
                Postpone::NotOffered,
            ),
            Event::Held { why: Held::Paused } => (
                "Updates are paused".to_owned(),
                "Your administrators paused updates of this computer for a while.".to_owned(),
                Postpone::NotOffered,
            ),
            Event::Held {
                why: Held::Quarantined,
            } => (
                "An update was undone".to_owned(),
                "An update cut this computer off its update server, so it was undone. Your administrators have been told.".to_owned(),
                Postpone::NotOffered,
            ),
        };
        Message {
            summary,
            body,
            postpone,
        }
    }
}

impl<R: super::transport::Remote, C: super::transport::Connector> super::Poll<'_, R, C> {
    /// Tells the people at the computer, when notifications are on. Never fails the poll:
    /// a computer with nobody logged in gets nothing and loses nothing.
    pub(super) fn tell(&self, event: Event) {
        if !self.cfg.notify.is_on() {
            return;
        }
        let message = event.message();
        tracing::info!("telling the people at this computer: {}", message.summary);
    }
}
