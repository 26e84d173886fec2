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
    /// tiffin restarts the computer at `at` (in ten minutes); `reboot = "ask"` offers to postpone.
    RestartSoon { at: String, postpone: Postpone },
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
            Event::RestartSoon { at, postpone } => (
                "Restarting in 10 minutes".to_owned(),
                format!("Save your work: the computer restarts at {at} to finish an update."),
                *postpone,
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
                "An update did not work on this computer, so it was undone. Your administrators have been told.".to_owned(),
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
    /// Tells the people at the computer, when notifications are on. Never fails the poll and
    /// never waits for it: a computer with nobody logged in gets nothing and loses nothing.
    pub(super) fn tell(&self, event: Event) {
        announce(self.cfg.notify, &event);
    }
}

/// How long a pull waits for one notification to be on the screens before it goes on (the
/// next notification would otherwise race it, and show first).
const SHOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Tells the people at the computer (a helper), when notifications are on. Waits, at most
/// [`SHOWN_WAIT`] per user, until the notification is shown, so that two notifications of
/// one poll arrive in their order; a helper slower than that is left to finish on its own.
pub fn announce(notify: Notify, event: &Event) {
    if !notify.is_on() {
        return;
    }
    let message = event.message();
    tracing::info!("telling the people at this computer: {}", message.summary);
    match spawn_helper(&message) {
        Ok(child) => wait_a_while(child, SHOWN_WAIT.saturating_mul(2)),
        Err(e) => tracing::warn!("cannot start the notifier: {e}"),
    }
}

/// Waits for `child` to exit, at most `limit`; it is not killed after that.
fn wait_a_while(mut child: std::process::Child, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        match child.try_wait() {
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
            Ok(Some(_)) | Err(_) => return,
        }
    }
    tracing::info!("the notifier is still running; going on without it");
}

/// Runs `tiffin notify` (this binary) in a process group of its own: it finds the sessions
/// and notifies each user as that user.
fn spawn_helper(message: &Message) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("notify");
    cmd.args(["--summary", &message.summary, "--body", &message.body]);
    if message.postpone == Postpone::Offered {
        cmd.arg("--offer-postpone");
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn()
}

/// A time as the person at the computer reads it: local, to the minute ("Thu 10 Dec 10:00").
pub fn local_time(t: std::time::SystemTime, with_day: bool) -> String {
    let local = chrono::DateTime::<chrono::Local>::from(t);
    let format = if with_day { "%a %d %b %H:%M" } else { "%H:%M" };
    local.format(format).to_string()
}

/// A logged-in user with a graphical session, as logind lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionUser {
    pub uid: u32,
}

/// Whether a session with these logind properties gets notifications: a person's (class
/// `user`, not the greeter's) graphical one.
pub fn is_graphical(kind: &str, class: &str) -> bool {
    matches!(kind, "x11" | "wayland" | "mir") && class == "user"
}

const LOGIN1: &str = "org.freedesktop.login1";

/// The users with a graphical session, each once; none when there is no logind.
pub async fn graphical_users() -> Vec<SessionUser> {
    match list_graphical().await {
        Ok(users) => users,
        Err(e) => {
            tracing::info!("no sessions to notify (logind: {e})");
            Vec::new()
        }
    }
}

async fn list_graphical() -> zbus::Result<Vec<SessionUser>> {
    type Session = (String, u32, String, String, zbus::zvariant::OwnedObjectPath);
    let conn = zbus::Connection::system().await?;
    let manager = zbus::Proxy::new(
        &conn,
        LOGIN1,
        "/org/freedesktop/login1",
        "org.freedesktop.login1.Manager",
    )
    .await?;
    let sessions: Vec<Session> = manager.call("ListSessions", &()).await?;
    let mut users = Vec::new();
    for (_, uid, _, _, path) in sessions.into_iter().take(MAX_SESSIONS) {
        let session =
            zbus::Proxy::new(&conn, LOGIN1, path, "org.freedesktop.login1.Session").await?;
        let kind: String = session.get_property("Type").await?;
        let class: String = session.get_property("Class").await?;
        if is_graphical(&kind, &class) {
            users.push(SessionUser { uid });
        }
    }
    users.sort();
    users.dedup();
    Ok(users)
}

/// At most this many sessions are looked at (a bounded answer, whatever logind says).
const MAX_SESSIONS: usize = 64;

/// `tiffin notify` as root: one child per graphical user, with that user's uid and group,
/// since the session bus lets only its owner in (EXTERNAL authentication checks the uid).
/// Each child says on its stdout when the notification is shown; it is waited for that
/// long (at most [`SHOWN_WAIT`]), so notifications arrive in the order they were sent.
pub fn notify_sessions(users: &[SessionUser], message: &Message) {
    for user in users {
        match spawn_as(user.uid, message) {
            Ok(child) => wait_until_shown(child),
            Err(e) => tracing::warn!("cannot notify uid {}: {e}", user.uid),
        }
    }
}

/// The line the user's child prints once the notification server took the notification.
pub const SHOWN: &str = "shown";

/// Reads the child's first line (or its end), at most [`SHOWN_WAIT`]; the child goes on
/// (it may wait for the Postpone button).
fn wait_until_shown(mut child: std::process::Child) {
    use std::io::BufRead;
    let Some(stdout) = child.stdout.take() else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    if rx.recv_timeout(SHOWN_WAIT).is_err() {
        tracing::info!("a notification was not confirmed within {SHOWN_WAIT:?}; going on");
    }
}

fn spawn_as(uid: u32, message: &Message) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .ok_or_else(|| std::io::Error::other(format!("no account with uid {uid}")))?;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["notify", "--as-user"]);
    cmd.args(["--summary", &message.summary, "--body", &message.body]);
    if message.postpone == Postpone::Offered {
        cmd.arg("--offer-postpone");
    }
    // std drops the supplementary groups (setgroups) before setuid when run as root.
    cmd.uid(uid)
        .gid(user.gid.as_raw())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &user.dir)
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            format!("unix:path=/run/user/{uid}/bus"),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
}

/// How long a notification that offers to postpone waits for its button.
const BUTTON_WAIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// What the Postpone button asks for.
pub const BUTTON_POSTPONES: &str = "1h";

/// `tiffin notify --as-user`: shows the notification on this user's session bus; when it
/// offers to postpone and the button is pressed, runs `tiffin reboot --postpone 1h` as the
/// user (which polkit lets through to the root unit).
pub async fn show_as_user(message: &Message) -> zbus::Result<()> {
    use futures::StreamExt;
    let conn = zbus::Connection::session().await?;
    let proxy = zbus::Proxy::new(
        &conn,
        "org.freedesktop.Notifications",
        "/org/freedesktop/Notifications",
        "org.freedesktop.Notifications",
    )
    .await?;
    let mut actions = proxy.receive_signal("ActionInvoked").await?;
    let mut closed = proxy.receive_signal("NotificationClosed").await?;
    let id = notify_call(&proxy, message).await?;
    // The parent waits for this line before the next notification (their order).
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{SHOWN}").and_then(|()| out.flush());
    }
    if message.postpone == Postpone::NotOffered {
        return Ok(());
    }
    let wait = async {
        loop {
            tokio::select! {
                Some(m) = actions.next() => {
                    if let Ok((n, key)) = m.body().deserialize::<(u32, String)>()
                        && n == id && key == "postpone" {
                        return true;
                    }
                }
                Some(m) = closed.next() => {
                    if let Ok((n, _)) = m.body().deserialize::<(u32, u32)>() && n == id {
                        return false;
                    }
                }
                else => return false,
            }
        }
    };
    if tokio::time::timeout(BUTTON_WAIT, wait).await == Ok(true) {
        postpone_as_user();
    }
    Ok(())
}

async fn notify_call(proxy: &zbus::Proxy<'_>, message: &Message) -> zbus::Result<u32> {
    use std::collections::HashMap;
    use zbus::zvariant::Value;
    let actions: Vec<&str> = match message.postpone {
        Postpone::Offered => vec!["postpone", "Postpone 1 hour"],
        Postpone::NotOffered => Vec::new(),
    };
    let mut hints: HashMap<&str, Value<'_>> = HashMap::new();
    hints.insert("urgency", Value::U8(1));
    hints.insert("desktop-entry", Value::from("tiffin"));
    let body = (
        "tiffin",
        0u32,
        "system-software-update",
        message.summary.as_str(),
        message.body.as_str(),
        actions,
        hints,
        -1i32,
    );
    proxy.call("Notify", &body).await
}

fn postpone_as_user() {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let status = std::process::Command::new(exe)
        .args(["reboot", "--postpone", BUTTON_POSTPONES])
        .status();
    if let Err(e) = status {
        tracing::warn!("cannot postpone: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_persons_graphical_sessions_are_told() {
        assert!(is_graphical("wayland", "user"));
        assert!(is_graphical("x11", "user"));
        assert!(!is_graphical("tty", "user"));
        assert!(!is_graphical("wayland", "greeter"));
        assert!(!is_graphical("unspecified", "user"));
    }

    #[test]
    fn the_texts_people_read() {
        let texts: Vec<String> = [
            Event::Applied { seq: 7 },
            Event::RestartNeeded {
                deadline: Some("Thu 10 Dec 10:00".into()),
            },
            Event::RestartNeeded { deadline: None },
            Event::RestartSoon {
                at: "01:40".into(),
                postpone: Postpone::Offered,
            },
            Event::Failed,
            Event::Held { why: Held::Paused },
            Event::Held {
                why: Held::Quarantined,
            },
        ]
        .iter()
        .map(|e| {
            let m = e.message();
            format!("{} | {} | {:?}", m.summary, m.body, m.postpone)
        })
        .collect();
        insta::assert_snapshot!(texts.join("\n"));
    }
}
