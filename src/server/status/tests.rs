//! Hostile reports: whatever bytes a client writes, the table and the story show one harmless line per field and one row per host.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::{State, host_status, render_table, story};
use crate::core::layout::ChrootPaths;
use crate::core::names::HostName;
use crate::core::report::{PullResult, RebootReport, Report};
use crate::core::settings::Interval;
use crate::core::untrusted::harmful;

const HOSTS: [&str; 3] = ["client1", "client2", "client3"];

fn report(host: &str, s: &[String; 10]) -> Report {
    Report {
        host: host.to_owned(),
        release: Some(s[0].clone()),
        seq: Some(3),
        result: PullResult::Failed,
        applied: Some(s[1].clone()),
        started: Some(s[2].clone()),
        finished: Some(s[3].clone()),
        last_seen: s[4].clone(),
        system: Some(s[5].clone()),
        error: Some(s[6].clone()),
        version: s[7].clone(),
        restart_failed: vec![s[8].clone()],
        applied_seq: Some(2),
        applied_at: Some(s[9].clone()),
        last_apply_seconds: Some(4),
        next_retry: Some(s[2].clone()),
        reboot: Some(RebootReport::Needed),
        reboot_window: None,
        paused_until: Some(s[3].clone()),
        pause_reason: Some(s[8].clone()),
        trigger: Some(s[9].clone()),
        boot_only: Some(s[6].clone()),
        quarantined: Some(s[0].clone()),
        signed_seq: Some(4),
        signed_expires: Some(s[2].clone()),
        signers: vec![s[7].clone()],
        reboot_slot: None,
        reboot_deadline: Some(s[4].clone()),
        reboot_postponed_until: Some(s[5].clone()),
        reboot_at: Some(s[3].clone()),
        deferred: Some(crate::core::report::Deferred::Metered),
    }
}

/// The fleet's table and every host's story, for reports (or raw files) of these strings.
fn rendered(files: &[Vec<u8>; 3]) -> (String, Vec<String>) {
    let root = tempfile::tempdir().unwrap();
    // The real clock: received times come from the files' change times, which the kernel sets.
    let now = SystemTime::now();
    let mut rows = Vec::new();
    let mut stories = Vec::new();
    for (host, bytes) in HOSTS.iter().zip(files) {
        let name: HostName = host.parse().unwrap();
        let paths = ChrootPaths::new(root.path(), &name);
        std::fs::create_dir_all(paths.reports()).unwrap();
        for file in ["status.toml", "rebuild.log"] {
            let path = paths.reports().join(file);
            std::fs::write(&path, bytes).unwrap();
            // Received a minute ago by the test's clock, whatever day the test runs.
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(now - Duration::from_secs(60)).unwrap();
        }
        let row = host_status(&name, &paths, Interval::secs(900), now);
        stories.push(story::render(&row, &paths, now));
        rows.push(row);
    }
    (render_table(&rows, now, false), stories)
}

fn assert_harmless(table: &str, stories: &[String]) -> Result<(), TestCaseError> {
    for text in std::iter::once(table).chain(stories.iter().map(String::as_str)) {
        let bad: Vec<char> = text.chars().filter(|&c| c != '\n' && harmful(c)).collect();
        prop_assert!(bad.is_empty(), "control characters {bad:?} in\n{text}");
    }
    prop_assert_eq!(
        table.lines().count(),
        HOSTS.len() + 1,
        "one row per host:\n{}",
        table
    );
    Ok(())
}

/// Any text, with the characters a terminal acts on well represented (`any::<String>()`
/// alone leaves control characters out).
fn hostile() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        any::<char>(),
        Just('\x1b'),
        Just('\n'),
        Just('\r'),
        Just('\x07'),
        Just('\u{9b}'),
        Just('\u{7f}'),
        Just('\u{202e}'),
    ];
    proptest::collection::vec(c, 0..60).prop_map(String::from_iter)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn hostile_report_fields_are_shown_harmlessly(s in proptest::array::uniform10(hostile())) {
        let text = report("client1", &s).render().into_bytes();
        let (table, stories) = rendered(&[text.clone(), text.clone(), text]);
        assert_harmless(&table, &stories)?;
    }

    #[test]
    fn hostile_bytes_that_are_no_report_are_shown_harmlessly(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut toml = b"error = \"".to_vec();
        toml.extend_from_slice(&b);
        let (table, stories) = rendered(&[b.clone(), toml, b]);
        assert_harmless(&table, &stories)?;
    }
}

#[test]
fn a_newline_in_a_report_cannot_forge_another_row() {
    let forged = "x\nclient9  #1 aaaaaaaaaaaa  #1 aaaaaaaaaaaa  ok  1s ago  up-to-date".to_owned();
    let s: [String; 10] = std::array::from_fn(|_| forged.clone());
    let text = report("client1", &s).render().into_bytes();
    let (table, _) = rendered(&[text.clone(), text.clone(), text]);
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(!table.lines().any(|l| l.starts_with("client9")), "{table}");
}

#[test]
fn a_hostile_report_as_the_admin_sees_it() {
    // A clipboard write (OSC 52), a window title, a screen clear, a carriage return that
    // would overwrite the line, a newline that would forge a row, a bidi override.
    let s: [String; 10] = [
        "\x1b]52;c;cm0gLXJmIH4=\x07release".into(),
        "applied\r\x1b[2Kall good".into(),
        "2026-12-01T10:00:00Z\x1b]0;pwned\x07".into(),
        "2026-12-01T10:00:05Z".into(),
        "2099-01-01T00:00:00Z".into(),
        "/nix/store/x-system\x1b[H\x1b[2J".into(),
        "boom\nclient2  #1 aaaaaaaaaaaa  #1 aaaaaaaaaaaa  ok  1s ago  up-to-date".into(),
        "0.1.0\u{202e}1.0.9".into(),
        "app.service\u{9b}31m".into(),
        "trigger\x7f".into(),
    ];
    let text = report("client1", &s).render().into_bytes();
    let log = b"building\r\x1b[2Koverwritten\n\x1b]52;c;Y2xpcGJvYXJk\x07done\n".to_vec();
    let (table, stories) = rendered(&[text, log, Vec::new()]);
    insta::with_settings!({filters => vec![
        (r"received \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "received [TIME]"),
        (r"clock is [0-9a-z ]+ ahead", "clock is [SKEW] ahead"),
    ]}, {
        insta::assert_snapshot!("hostile_report_table", table);
        insta::assert_snapshot!("hostile_report_story", stories[0]);
        insta::assert_snapshot!("hostile_log_story", stories[1]);
    });
}

#[test]
fn a_report_dated_in_the_future_by_its_client_still_goes_stale() {
    let root = tempfile::tempdir().unwrap();
    let name: HostName = "client1".parse().unwrap();
    let paths = ChrootPaths::new(root.path(), &name);
    std::fs::create_dir_all(paths.reports()).unwrap();
    let path = paths.reports().join("status.toml");
    let s: [String; 10] = std::array::from_fn(|_| "x".to_owned());
    std::fs::write(&path, report("client1", &s).render()).unwrap();
    // What `put -p` or a setstat does: the client dates its file in 2099.
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(4_070_908_800))
        .unwrap();
    let an_hour_later = SystemTime::now() + Duration::from_secs(3600);
    let row = host_status(&name, &paths, Interval::secs(900), an_hour_later);
    assert_eq!(row.state, State::Stale, "{row:?}");
    assert!(
        !row.last_seen
            .as_deref()
            .unwrap_or_default()
            .starts_with("2099"),
        "{row:?}"
    );
    let warning = row.warning.unwrap_or_default();
    assert!(
        warning.contains("is dated 2099-01-01T00:00:00Z by its client"),
        "{warning}"
    );
}

#[test]
fn a_hostile_postponement_shows_as_one_harmless_line() {
    let s: [String; 10] = std::array::from_fn(|i| format!("x{i}\x1b]52;c;cm0=\x07\nforged"));
    let mut r = report("client1", &s);
    (r.reboot, r.error) = (Some(RebootReport::Pending), None);
    let text = r.render().into_bytes();
    let (table, stories) = rendered(&[text.clone(), Vec::new(), text]);
    assert!(
        stories[0].contains("restart postponed by the user until x5"),
        "{}",
        stories[0]
    );
    assert_harmless(&table, &stories).unwrap();
}
