//! Operating a fleet: `status --format prometheus` (checked by promtool), one host's story, pause and reboot window from the command line.

use std::fs;
use std::process::{Command as Std, Stdio};

use crate::TestFleet;
use crate::status::{report, report_received_at};

const HOSTS: [&str; 10] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
];
const STATES: [&str; 10] = [
    "up-to-date",
    "pending",
    "failed",
    "rolled-back",
    "stale",
    "never-seen",
    "unreadable",
    "paused",
    "drifted",
    "quarantined",
];
const SYSTEM: &str = "/nix/store/00000000000000000000000000000000-nixos-system-25.05";

fn log(fleet: &TestFleet, host: &str, text: &str) {
    fs::write(fleet.chroots().join(host).join("reports/rebuild.log"), text).unwrap();
}

/// One host in each state, with the report fields a current client writes.
fn fleet_in_every_state() -> TestFleet {
    let fleet = TestFleet::with_hosts(&HOSTS);
    fleet.tiffin(&["publish"]).assert().success();
    let old = "1".repeat(64);
    let cur = |h: &str| fleet.current(h);
    let times = "started = \"2026-11-24T11:57:40Z\"\nfinished = \"2026-11-24T11:58:00Z\"\n";
    report(
        &fleet,
        "alpha",
        &format!(
            "host = \"alpha\"\nrelease = \"{}\"\nseq = 1\nresult = \"ok\"\napplied = \"{}\"\n{times}last_seen = \"2026-11-24T11:58:00Z\"\nsystem = \"{SYSTEM}\"\nversion = \"0.1.0\"\napplied_seq = 1\napplied_at = \"2026-11-24T11:58:00Z\"\nlast_apply_seconds = 20\nreboot = \"pending\"\nreboot_window = \"01:00-05:00\"\n",
            cur("alpha"),
            cur("alpha")
        ),
    );
    log(
        &fleet,
        "alpha",
        &(1..=30)
            .map(|i| format!("building line {i}\n"))
            .collect::<String>(),
    );
    report(
        &fleet,
        "bravo",
        &format!(
            "host = \"bravo\"\nrelease = \"{old}\"\nseq = 7\nresult = \"unchanged\"\nlast_seen = \"2026-11-24T11:59:30Z\"\nversion = \"0.1.0\"\napplied_seq = 7\n"
        ),
    );
    report(
        &fleet,
        "charlie",
        &format!(
            "host = \"charlie\"\nrelease = \"{}\"\nseq = 1\nresult = \"failed\"\napplied = \"{old}\"\n{times}last_seen = \"2026-11-24T11:50:00Z\"\nsystem = \"{SYSTEM}\"\nerror = \"nixos-rebuild exited with status 1: error: attribute 'foo' missing\"\nversion = \"0.1.0\"\napplied_seq = 0\nlast_apply_seconds = 4\nnext_retry = \"2026-11-24T12:45:00Z\"\n",
            cur("charlie")
        ),
    );
    log(
        &fleet,
        "charlie",
        "building the system configuration...\nerror: attribute 'foo' missing\n\x1b[31m       at /etc/nixos/configuration.nix:3:5\x1b[0m\n",
    );
    report(
        &fleet,
        "delta",
        &format!(
            "host = \"delta\"\nrelease = \"{}\"\nseq = 1\nresult = \"rolled-back\"\napplied = \"{old}\"\nlast_seen = \"2026-11-24T11:40:00Z\"\nerror = \"the health check failed\"\nversion = \"0.1.0\"\nnext_retry = \"2026-11-24T12:40:00Z\"\n",
            cur("delta")
        ),
    );
    report(
        &fleet,
        "echo",
        &format!(
            "host = \"echo\"\nrelease = \"{}\"\nseq = 1\nresult = \"ok\"\nlast_seen = \"2026-11-24T09:00:00Z\"\nversion = \"0.1.0\"\n",
            cur("echo")
        ),
    );
    report_received_at(
        &fleet,
        "golf",
        "this is not toml",
        humantime::parse_rfc3339("2026-11-24T11:59:00Z").unwrap(),
    );
    report(
        &fleet,
        "hotel",
        &format!(
            "host = \"hotel\"\nrelease = \"{old}\"\nseq = 3\nresult = \"unchanged\"\napplied = \"{old}\"\nlast_seen = \"2026-11-24T11:59:00Z\"\nversion = \"0.1.0\"\napplied_seq = 3\npaused_until = \"2026-11-24T18:00:00Z\"\npause_reason = \"conference demo\"\nreboot = \"pending\"\nreboot_window = \"01:00-05:00\"\n"
        ),
    );
    // Built on the server (a MANIFEST with a toplevel, as publish writes it), running another system.
    let india = crate::prebuilt::prebuilt_release(&fleet, "india");
    report(
        &fleet,
        "india",
        &format!(
            "host = \"india\"\nrelease = \"{india}\"\nseq = 1\nresult = \"ok\"\napplied = \"{india}\"\nlast_seen = \"2026-11-24T11:59:00Z\"\nsystem = \"{SYSTEM}\"\nversion = \"0.1.0\"\napplied_seq = 1\n"
        ),
    );
    // Rolled back because the server was unreachable after activation, and held back.
    report(
        &fleet,
        "juliet",
        &format!(
            "host = \"juliet\"\nrelease = \"{}\"\nseq = 1\nresult = \"rolled-back\"\napplied = \"{old}\"\napplied_seq = 0\nlast_seen = \"2026-11-24T11:59:00Z\"\nerror = \"release #1 is quarantined since 2026-11-24T11:40:00Z: rolled back: the server was unreachable after activation (no fresh session within 3m, last: connection refused). It is not applied again until a newer release is published or `tiffin trigger juliet --retry`\"\nversion = \"0.1.0\"\nquarantined = \"{}\"\n",
            cur("juliet"),
            cur("juliet")
        ),
    );
    fleet
}

#[test]
fn status_shows_every_state_including_paused() {
    let fleet = fleet_in_every_state();
    let (code, out) = fleet.output(&["status"]);
    assert_eq!(code, 3, "{out}");
    for (host, state) in HOSTS.iter().zip(STATES) {
        let line = out.lines().find(|l| l.starts_with(host)).unwrap();
        assert!(line.contains(state), "{line}");
    }
    let line = |host: &str| {
        out.lines()
            .find(|l| l.starts_with(host))
            .unwrap()
            .to_owned()
    };
    assert!(
        line("hotel").ends_with("paused until 2026-11-24T18:00:00Z: conference demo"),
        "{out}"
    );
    assert!(
        line("alpha").ends_with("reboot pending (window 01:00-05:00)"),
        "{out}"
    );
    let (code, out) = fleet.output(&["status", "hotel", "alpha", "bravo"]);
    assert_eq!(code, 0, "paused is not an alarm: {out}");
}

/// `promtool check metrics` on the text; CI installs promtool (Debian package `prometheus`).
fn promtool_check(text: &str) -> String {
    use std::io::Write;
    let mut child = Std::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is needed for this test ({e}): apt-get install prometheus (.ci/run does)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{said}\n---\n{text}"
    );
    said
}

#[test]
fn prometheus_metrics_for_a_fleet_in_every_state_pass_promtool() {
    let fleet = fleet_in_every_state();
    let (code, text) = fleet.output(&["status", "--format", "prometheus"]);
    assert_eq!(code, 3, "the exit code is the same as the table's");
    let said = promtool_check(&text);
    assert_eq!(said.trim(), "", "promtool's linter has nothing to say");
    for (host, state) in HOSTS.iter().zip(STATES) {
        let ones: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with(&format!("tiffin_host_state{{host=\"{host}\",")) && l.ends_with(" 1")
            })
            .collect();
        assert_eq!(
            ones,
            [format!(
                "tiffin_host_state{{host=\"{host}\",state=\"{state}\"}} 1"
            )],
            "{host}"
        );
        assert!(
            text.contains(&format!("tiffin_hosts{{state=\"{state}\"}} 1\n")),
            "{state}"
        );
    }
    for line in [
        "tiffin_host_published_seq{host=\"alpha\"} 1",
        "tiffin_host_applied_seq{host=\"alpha\"} 1",
        "tiffin_host_applied_seq{host=\"charlie\"} 0",
        "tiffin_host_applied_seq{host=\"echo\"} 1",
        "tiffin_host_last_seen_timestamp_seconds{host=\"alpha\"} 1795521480",
        "tiffin_host_last_apply_duration_seconds{host=\"alpha\"} 20",
        "tiffin_host_last_result{host=\"charlie\",result=\"failed\"} 1",
        "tiffin_host_reboot_pending{host=\"alpha\"} 1",
        "tiffin_host_reboot_pending{host=\"bravo\"} 0",
        "tiffin_host_paused{host=\"hotel\"} 1",
        "tiffin_host_paused_until_timestamp_seconds{host=\"hotel\"} 1795543200",
        "tiffin_host_next_retry_timestamp_seconds{host=\"charlie\"} 1795524300",
        "tiffin_status_timestamp_seconds 1795521600",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    assert!(
        !text.contains("host=\"foxtrot\",result"),
        "a host never seen has no result"
    );
    crate::assert_snapshot_ids!("status_prometheus", text);
}

#[test]
fn output_writes_the_metrics_file_atomically_and_json_is_an_alias() {
    let fleet = fleet_in_every_state();
    let file = fleet.tmp.path().join("textfile/tiffin.prom");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    let (code, out) = fleet.output(&[
        "status",
        "--format",
        "prometheus",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert_eq!((code, out.as_str()), (3, ""), "nothing on stdout");
    let (_, direct) = fleet.output(&["status", "--format", "prometheus"]);
    assert_eq!(fs::read_to_string(&file).unwrap(), direct);
    assert_eq!(
        crate::list(file.parent().unwrap()),
        ["tiffin.prom"],
        "no temporary left"
    );
    let (_, json) = fleet.output(&["status", "--json"]);
    let (_, format_json) = fleet.output(&["status", "--format", "json"]);
    assert_eq!(json, format_json);
    let (code, out) = fleet.output(&["status", "--json", "--format", "table"]);
    assert_eq!(code, 2, "{out}");
}

#[test]
fn one_hosts_story_in_each_state() {
    let fleet = fleet_in_every_state();
    for (host, state) in HOSTS.iter().zip(STATES) {
        let (_, out) = fleet.output(&["status", host]);
        assert!(out.starts_with(&format!("{host}: {state}\n")), "{out}");
        crate::assert_snapshot_ids!(format!("status_story_{state}"), out);
    }
    let (_, alpha) = fleet.output(&["status", "alpha"]);
    assert!(
        alpha.contains("building line 30") && !alpha.contains("building line 10\n"),
        "the tail: {alpha}"
    );
    assert!(
        alpha.contains("pending: waits for the reboot window 01:00-05:00"),
        "{alpha}"
    );
    let (_, charlie) = fleet.output(&["status", "charlie"]);
    assert!(
        !charlie.contains('\x1b'),
        "no terminal escapes from the client's log"
    );
    assert!(
        charlie.contains("next retry  2026-11-24T12:45:00Z"),
        "{charlie}"
    );
}

#[test]
fn a_malformed_reboot_window_exits_2_in_check_and_in_pull_validate() {
    let fleet = TestFleet::with_hosts(&["alpha"]);
    let host_toml = fleet.root().join("hosts/alpha/host.toml");
    let text = fs::read_to_string(&host_toml).unwrap();
    fs::write(
        &host_toml,
        text.replace("[apply]\n", "[apply]\nreboot_window = \"1am-5am\"\n"),
    )
    .unwrap();
    let (code, out) = fleet.output(&["check"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("hosts/alpha/host.toml")
            && out.contains("invalid reboot_window \"1am-5am\"")
            && out.contains("\"01:00-05:00\""),
        "{out}"
    );
    fs::write(
        &host_toml,
        text.replace("[apply]\n", "[apply]\nreboot_window = \"22:00-04:00\"\n"),
    )
    .unwrap();
    let (code, out) = fleet.output(&["check"]);
    assert_eq!(code, 0, "a window across midnight is fine: {out}");

    let config = fleet.tmp.path().join("client.toml");
    let key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOkDc3beSlNd2363XxewBPJDfsiRJahqtAVPNfHiyuwH server";
    let body = format!("host = \"alpha\"\nserver = \"192.0.2.1\"\nserver_key = \"{key}\"\n");
    fs::write(&config, format!("{body}reboot_window = \"05:00-05:00\"\n")).unwrap();
    let (code, out) = fleet.output(&["pull", "--validate", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("key `reboot_window`") && out.contains("start and end are the same"),
        "{out}"
    );
    fs::write(&config, format!("{body}reboot_window = \"01:00-05:00\"\n")).unwrap();
    let (code, out) = fleet.output(&["pull", "--validate", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("reboot window (where a release sets none): 01:00-05:00"),
        "{out}"
    );
}

#[test]
fn pause_and_resume_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("client.toml");
    let key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOkDc3beSlNd2363XxewBPJDfsiRJahqtAVPNfHiyuwH server";
    fs::write(&config, format!("host = \"alpha\"\nserver = \"192.0.2.1\"\nserver_key = \"{key}\"\nstate_dir = \"{}\"\n", state.display())).unwrap();
    let run = |args: &[&str]| {
        let out = assert_cmd::Command::cargo_bin("tiffin")
            .unwrap()
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("TIFFIN_NOW", crate::NOW)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, out) = run(&["pause", "--for", "2h", "--reason", "conference demo"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "alpha: paused until 2026-11-24T14:00:00Z (conference demo); pulls report but apply nothing until then (`tiffin resume` ends it early)\n"
    );
    let saved = fs::read_to_string(state.join("pause.toml")).unwrap();
    assert!(
        saved.contains("until = \"2026-11-24T14:00:00Z\""),
        "{saved}"
    );
    let (code, out) = run(&["pause", "--for", "31d"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("longer than the longest pause"), "{out}");
    let (code, out) = run(&["pause", "--reason", "two\nlines"]);
    assert_eq!(code, 2, "{out}");
    assert_eq!(
        run(&["resume"]),
        (
            0,
            "alpha: resumed; the next pull applies the current release\n".into()
        )
    );
    assert!(!state.join("pause.toml").exists());
    assert_eq!(
        run(&["resume"]),
        (0, "alpha: not paused; nothing to do\n".into())
    );
}

/// The alert rules docs/operations.md gives, checked and unit-tested with promtool.
#[test]
fn the_documented_alert_rules_pass_promtool_and_fire_when_they_should() {
    let doc =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    let rules = doc
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```\n").next())
        .expect("docs/operations.md has a ```yaml block of alert rules");
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("rules.yml"), rules).unwrap();
    fs::write(dir.path().join("test.yml"), RULE_TESTS).unwrap();
    for args in [
        &["check", "rules", "rules.yml"][..],
        &["test", "rules", "test.yml"],
    ] {
        let out = Std::new("promtool")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("promtool is needed ({e}): apt-get install prometheus"));
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Host a waits for its release, b too but is paused, c failed, d stopped reporting; the rollout halts at 2m.
const RULE_TESTS: &str = r#"
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - {series: 'tiffin_host_published_seq{host="a"}', values: '2x90'}
      - {series: 'tiffin_host_applied_seq{host="a"}', values: '1x90'}
      - {series: 'tiffin_host_paused{host="a"}', values: '0x90'}
      - {series: 'tiffin_host_published_seq{host="b"}', values: '2x90'}
      - {series: 'tiffin_host_applied_seq{host="b"}', values: '1x90'}
      - {series: 'tiffin_host_paused{host="b"}', values: '1x90'}
      - {series: 'tiffin_host_state{host="c",state="failed"}', values: '1x90'}
      - {series: 'tiffin_host_state{host="d",state="stale"}', values: '0 0 1x88'}
      - {series: 'tiffin_status_timestamp_seconds', values: '0x90'}
      - {series: 'tiffin_rollout_phase{phase="running"}', values: '1 1 0x88'}
      - {series: 'tiffin_rollout_phase{phase="halted"}', values: '0 0 1x88'}
    alert_rule_test:
      - {eval_time: 1m, alertname: TiffinRolloutHalted, exp_alerts: []}
      - eval_time: 3m
        alertname: TiffinRolloutHalted
        exp_alerts:
          - exp_labels: {severity: warning, phase: halted}
            exp_annotations:
              summary: "tiffin: the rollout is halted"
              description: "`tiffin rollout status` on the server says which hosts failed and why; then `tiffin rollout resume`, `revert` or `cancel` (docs/rollouts.md)."
      - {eval_time: 59m, alertname: TiffinReleaseNotApplied, exp_alerts: []}
      - eval_time: 61m
        alertname: TiffinReleaseNotApplied
        exp_alerts:
          - exp_labels: {severity: warning, host: a}
            exp_annotations: {summary: "tiffin: a has not applied its newest release for an hour"}
      - {eval_time: 4m, alertname: TiffinHostFailed, exp_alerts: []}
      - eval_time: 6m
        alertname: TiffinHostFailed
        exp_alerts:
          - exp_labels: {severity: warning, host: c, state: failed}
            exp_annotations:
              summary: "tiffin: c is failed"
              description: "Run `tiffin status c` on the server: the error and the tail of the rebuild log."
      - {eval_time: 1m, alertname: TiffinHostStale, exp_alerts: []}
      - eval_time: 3m
        alertname: TiffinHostStale
        exp_alerts:
          - exp_labels: {severity: warning, host: d, state: stale}
            exp_annotations:
              summary: "tiffin: d has not reported for 3 poll intervals"
              description: "Is it up, is its tiffin-pull.timer running, can it reach the server? `tiffin pull` on the host says why."
      - {eval_time: 9m, alertname: TiffinMetricsStale, exp_alerts: []}
      - eval_time: 11m
        alertname: TiffinMetricsStale
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations: {summary: "tiffin: the fleet's metrics were last written 11m 0s ago"}
"#;

#[test]
fn a_reboot_window_reaches_the_manifest_and_without_if_needed_is_a_warning() {
    let fleet = TestFleet::with_hosts(&["alpha", "bravo"]);
    let host_toml = fleet.root().join("hosts/alpha/host.toml");
    let text = fs::read_to_string(&host_toml).unwrap();
    fs::write(
        &host_toml,
        text.replace("[apply]\n", "[apply]\nreboot_window = \"01:00-05:00\"\n"),
    )
    .unwrap();
    let (code, out) = fleet.output(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: hosts/alpha/host.toml: [apply] reboot_window = \"01:00-05:00\" has no effect while reboot = \"never\""),
        "{out}"
    );
    fs::write(
        &host_toml,
        text.replace(
            "[apply]\n",
            "[apply]\nreboot = \"if-needed\"\nreboot_window = \"01:00-05:00\"\n",
        ),
    )
    .unwrap();
    let (code, out) = fleet.output(&["check"]);
    assert!(code == 0 && !out.contains("reboot_window"), "{out}");
    fleet.tiffin(&["publish"]).assert().success();
    let manifest = |h: &str| {
        fs::read_to_string(
            fleet
                .chroots()
                .join(h)
                .join("releases")
                .join(fleet.current(h))
                .join("MANIFEST"),
        )
        .unwrap()
    };
    assert!(manifest("alpha").contains("[apply]\naction = \"switch\"\nreboot = \"if-needed\"\nreboot_window = \"01:00-05:00\"\n"), "{}", manifest("alpha"));
    assert!(
        !manifest("bravo").contains("reboot_window"),
        "left out when unset, so ids stay the same"
    );
}

#[test]
fn pause_help_teaches() {
    let out = assert_cmd::Command::cargo_bin("tiffin")
        .unwrap()
        .args(["pause", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!("pause_help", String::from_utf8_lossy(&out.stdout));
}
