//! Text from the other side (a client's report shown on the server, a server's file shown on a client), made safe for a person's terminal: one line, no control characters, capped.
//!
//! A report is written by its client, so every string in it (errors, times, versions, the
//! pause reason, the text of a parse error that quotes a bad value, log lines) may hold ANSI
//! and OSC sequences (a clipboard write, a window title, a screen clear), carriage returns
//! that overwrite a line, or newlines that forge another host's row. Where such text is
//! rendered for a person it goes through [`one_line`]; JSON keeps the exact data (its
//! encoder escapes it) and Prometheus output takes only tiffin's own words.

/// The most characters one field shows (a log line, an error, a reason).
pub const FIELD_MAX: usize = 300;

/// `text` as one harmless line: every control character (C0 with newline and tab, DEL, C1)
/// and every bidirectional-override character shown as a visible escape (`\n`, `\u{1b}`),
/// so nothing reaches the terminal as a command; at most `max` characters, then `…`.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (shown, c) in text.chars().enumerate() {
        if shown >= max {
            out.push('…');
            break;
        }
        if harmful(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters a terminal acts on, or that reorder what the reader sees.
pub fn harmful(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_are_shown_not_sent() {
        assert_eq!(
            one_line("ok\x1b]52;c;cGF3bmVk\x07\r\nclient1  up-to-date", FIELD_MAX),
            "ok\\u{1b}]52;c;cGF3bmVk\\u{7}\\r\\nclient1  up-to-date"
        );
        assert_eq!(
            one_line("a\u{202e}b\u{9b}c\u{7f}", 10),
            "a\\u{202e}b\\u{9b}c\\u{7f}"
        );
        assert_eq!(one_line(&"x".repeat(500), 5), "xxxxx…");
        assert_eq!(
            one_line("plain text, ünïcode", FIELD_MAX),
            "plain text, ünïcode"
        );
    }

    proptest! {
        #[test]
        fn no_control_character_survives(s in proptest::collection::vec(any::<char>(), 0..200).prop_map(String::from_iter), max in 1usize..400) {
            let out = one_line(&s, max);
            prop_assert!(!out.chars().any(harmful), "{out:?}");
            prop_assert!(!out.contains('\n'));
            prop_assert!(out.chars().count() <= max * 10 + 1);
        }
    }
}
