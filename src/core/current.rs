//! `/CURRENT` in a host's chroot: line 1 the release id, an optional line 2 the last trigger.
//!
//! Old clients read line 1 only, so a trigger line never breaks them. The trigger line is
//! `trigger <id> <pull|reapply|retry|reboot>`; its id is unique per trigger, and a client acts on a
//! trigger whose id differs from the one it handled last.

use std::fmt;

/// What a trigger asks of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerKind {
    /// Poll now, ignoring a failed release's backoff.
    Pull,
    /// Deploy `files/` again and rerun the rebuild, even when the release is already applied.
    Reapply,
    /// Apply a quarantined release again (one that was rolled back).
    Retry,
    /// A reboot slot (`max_rebooting`): the host may reboot now, inside its window.
    Reboot,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Pull => "pull",
            TriggerKind::Reapply => "reapply",
            TriggerKind::Retry => "retry",
            TriggerKind::Reboot => "reboot",
        }
    }
}

/// The longest trigger id accepted (the server writes `<unix seconds>-<counter>`).
const MAX_TRIGGER_ID: usize = 64;

/// One trigger, as written on line 2 of `CURRENT`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Trigger {
    pub id: String,
    pub kind: TriggerKind,
}

impl Trigger {
    /// `trigger <id> <kind>`; anything else is `None` (a newer server's line an old client ignores).
    pub fn parse_line(line: &str) -> Option<Trigger> {
        let mut words = line.split_ascii_whitespace();
        if words.next()? != "trigger" {
            return None;
        }
        let id = words.next()?;
        let kind = match words.next()? {
            "pull" => TriggerKind::Pull,
            "reapply" => TriggerKind::Reapply,
            "retry" => TriggerKind::Retry,
            "reboot" => TriggerKind::Reboot,
            _ => return None,
        };
        let valid_id = !id.is_empty()
            && id.len() <= MAX_TRIGGER_ID
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        (valid_id && words.next().is_none()).then(|| Trigger {
            id: id.to_owned(),
            kind,
        })
    }

    /// The id's trailing counter (`<seconds>-<n>`), so the next trigger counts on from it.
    pub fn counter(&self) -> u64 {
        self.id
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trigger {} {}", self.id, self.kind.as_str())
    }
}

/// The first line of `CURRENT` (the release id's text, untrimmed of nothing but whitespace).
pub fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines().next().unwrap_or_default().trim().to_owned()
}

/// The trigger (line 2 of `CURRENT`), if there is a valid one.
pub fn trigger(bytes: &[u8]) -> Option<Trigger> {
    let text = String::from_utf8_lossy(bytes);
    text.lines().skip(1).find_map(Trigger::parse_line)
}

/// The sha256 of the signed statement that goes with the release (`statement <hex>`, after
/// the trigger): a client reads `STATEMENT` again only when it changed, so a no-change poll of
/// a signed host costs what an unsigned one does. Old clients ignore the line.
pub fn statement(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    text.lines().skip(1).find_map(|l| {
        let hex = l.strip_prefix("statement ")?.trim();
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| hex.to_owned())
    })
}

/// `CURRENT`'s text: the release id, then the trigger line and the statement line if any.
pub fn render(id: &str, trigger: Option<&Trigger>, statement: Option<&str>) -> String {
    let mut text = format!("{id}\n");
    if let Some(t) = trigger {
        text.push_str(&format!("{t}\n"));
    }
    if let Some(s) = statement {
        text.push_str(&format!("statement {s}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_one_is_the_release_and_line_two_the_trigger() {
        let text = render(
            "abc",
            Some(&Trigger {
                id: "1700000000-3".into(),
                kind: TriggerKind::Reapply,
            }),
            None,
        );
        assert_eq!(text, "abc\ntrigger 1700000000-3 reapply\n");
        assert_eq!(first_line(text.as_bytes()), "abc");
        let t = trigger(text.as_bytes()).unwrap();
        assert_eq!(
            (t.id.as_str(), t.kind, t.counter()),
            ("1700000000-3", TriggerKind::Reapply, 3)
        );
        assert_eq!(first_line(b"  abc  \n"), "abc");
        assert_eq!(trigger(b"abc\n"), None);
    }

    #[test]
    fn the_statement_line_follows_the_trigger_and_old_clients_ignore_it() {
        let hash = "a".repeat(64);
        let text = render("abc", None, Some(&hash));
        assert_eq!(text, format!("abc\nstatement {hash}\n"));
        assert_eq!(statement(text.as_bytes()), Some(hash.clone()));
        assert_eq!(trigger(text.as_bytes()), None, "not a trigger");
        let t = Trigger {
            id: "1-1".into(),
            kind: TriggerKind::Pull,
        };
        let both = render("abc", Some(&t), Some(&hash));
        assert_eq!(trigger(both.as_bytes()), Some(t));
        assert_eq!(statement(both.as_bytes()), Some(hash));
        assert_eq!(statement(b"abc\nstatement XYZ\n"), None);
        assert!(both.len() <= 256, "within the client's CURRENT limit");
    }

    #[test]
    fn a_malformed_trigger_line_is_ignored() {
        for line in [
            "trigger",
            "trigger 1",
            "trigger 1 rebuild",
            "trigger 1 pull extra",
            "trigger a/b pull",
            "trigger ../x reapply",
            "push 1 pull",
        ] {
            assert_eq!(Trigger::parse_line(line), None, "{line}");
        }
        let long = format!("trigger {} pull", "1".repeat(65));
        assert_eq!(Trigger::parse_line(&long), None);
    }
}
