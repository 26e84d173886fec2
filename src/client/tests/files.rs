//! Tests of files with settings: stages around the rebuild, owners resolved at their stage, units restarted once.

use super::*;
use crate::core::release::{FileSource, Stage};

/// `base_files()` plus a service's secret (after activation) and cert restarting one unit,
/// and a config reloading another.
fn service_files(
    secret: &'static [u8],
    cert: &'static [u8],
) -> Vec<(&'static str, &'static [u8], u32)> {
    let mut files = base_files();
    files.push(("files/etc/grafana/secret", secret, 0o600));
    files.push(("files/etc/grafana/cert", cert, 0o644));
    files.push(("files/etc/nginx/site", b"listen 80;\n", 0o644));
    files
}

fn with_settings(mut m: Manifest, owner: &str) -> Manifest {
    for e in &mut m.files {
        match e.path.as_str() {
            "files/etc/grafana/secret" => {
                e.owner = Some(owner.parse().unwrap());
                e.group = Some("root".parse().unwrap());
                e.stage = Stage::After;
                e.restart = vec!["grafana.service".parse().unwrap()];
            }
            "files/etc/grafana/cert" => {
                e.restart = vec!["grafana.service".parse().unwrap()];
                e.source = FileSource::Common;
            }
            "files/etc/nginx/site" => e.reload = vec!["nginx.service".parse().unwrap()],
            _ => {}
        }
    }
    m
}

impl Fixture {
    /// systemctl records into the same log as the rebuild, so the order shows.
    fn record_systemctl(&mut self) {
        let calls = self._dir.path().join("calls");
        let script = format!("echo systemctl \"$@\" >> {}", calls.display());
        self.cfg.systemctl = vec!["sh".into(), "-c".into(), script, "systemctl".into()];
    }

    fn publish_services(
        &mut self,
        secret: &'static [u8],
        cert: &'static [u8],
        owner: &str,
    ) -> ReleaseId {
        self.seq += 1;
        let files = service_files(secret, cert);
        let manifest = with_settings(self.manifest(&files, self.seq), owner);
        self.release(&manifest, &files)
    }

    fn systemctl_calls(&self) -> Vec<String> {
        self.calls()
            .lines()
            .filter(|l| l.starts_with("systemctl "))
            .map(str::to_owned)
            .collect()
    }
}

#[test]
fn changed_files_restart_their_units_once_after_activation() {
    let mut f = Fixture::new();
    f.record_systemctl();
    f.publish_services(b"one\n", b"cert1\n", "root");
    f.poll().unwrap();
    let calls = f.calls();
    let lines: Vec<&str> = calls.lines().collect();
    assert!(lines[0].starts_with("rebuild switch "), "{calls}");
    assert_eq!(
        &lines[1..],
        [
            "systemctl restart grafana.service",
            "systemctl reload nginx.service"
        ],
        "two changed files of grafana restart it once, after the rebuild"
    );
    assert_eq!(
        std::fs::read(f.root().join("etc/grafana/secret")).unwrap(),
        b"one\n"
    );

    // Only the cert changes: grafana restarts, nginx does not reload.
    f.publish_services(b"one\n", b"cert2\n", "root");
    f.poll().unwrap();
    assert_eq!(
        f.systemctl_calls()[2..],
        ["systemctl restart grafana.service"]
    );

    // Only the Nix part changes: no unit is touched.
    let mut files = service_files(b"one\n", b"cert2\n");
    files[1] = ("config/configuration.nix", b"{ ... }: { x = 1; }\n", 0o644);
    f.seq += 1;
    let manifest = with_settings(f.manifest(&files, f.seq), "root");
    f.release(&manifest, &files);
    f.poll().unwrap();
    assert_eq!(f.systemctl_calls().len(), 3, "{:?}", f.systemctl_calls());
    assert_eq!(f.report().result, PullResult::Ok);
}

#[test]
fn a_failed_restart_is_reported_and_the_release_stays_applied() {
    let mut f = Fixture::new();
    f.cfg.systemctl = vec![
        "sh".into(),
        "-c".into(),
        "[ \"$2\" != grafana.service ] || { echo 'Job for grafana.service failed.' >&2; exit 1; }"
            .into(),
        "systemctl".into(),
    ];
    let id = f.publish_services(b"one\n", b"cert1\n", "root");
    f.poll().unwrap();
    let report = f.report();
    assert_eq!(report.result, PullResult::Ok);
    assert_eq!(report.applied.as_deref(), Some(id.as_str()));
    assert_eq!(
        report.restart_failed.len(),
        1,
        "{:?}",
        report.restart_failed
    );
    assert!(
        report.restart_failed[0].starts_with("grafana.service: restart: ")
            && report.restart_failed[0].contains("Job for grafana.service failed."),
        "{:?}",
        report.restart_failed
    );
}

#[test]
fn an_owner_missing_after_activation_rolls_back_and_names_file_and_account() {
    let mut f = Fixture::new();
    f.record_systemctl();
    let first = f.publish_services(b"one\n", b"cert1\n", "root");
    f.poll().unwrap();
    f.publish_services(b"two\n", b"cert2\n", "tiffin-no-such-user");
    let err = f.poll().unwrap_err().to_string();
    assert!(err.contains("could not be deployed"), "{err}");
    assert!(
        err.contains("cannot deploy /etc/grafana/secret: its owner \"tiffin-no-such-user\" does not exist on this machine"),
        "{err}"
    );
    assert!(
        err.contains(&format!("rolled back to release {}", first.short())),
        "{err}"
    );
    assert_eq!(f.report().result, PullResult::RolledBack);
    // Nothing of the stage was written, and the first release's files are back.
    assert_eq!(
        std::fs::read(f.root().join("etc/grafana/secret")).unwrap(),
        b"one\n"
    );
    assert_eq!(
        std::fs::read(f.root().join("etc/grafana/cert")).unwrap(),
        b"cert1\n"
    );
    // The cert changed and changed back: grafana restarted after each activation.
    let rebuilds = f
        .calls()
        .lines()
        .filter(|l| l.starts_with("rebuild"))
        .count();
    assert_eq!(rebuilds, 3, "{}", f.calls());
    assert_eq!(f.state().applied.unwrap().id, first);
}

#[test]
fn an_owner_missing_before_the_rebuild_writes_nothing_and_never_rebuilds() {
    let mut f = Fixture::new();
    f.seq += 1;
    let files = service_files(b"one\n", b"cert1\n");
    let mut manifest = f.manifest(&files, f.seq);
    for e in &mut manifest.files {
        if e.path.as_str() == "files/usr/local/bin/tool" {
            e.group = Some("tiffin-no-such-group".parse().unwrap());
        }
    }
    f.release(&manifest, &files);
    let err = f.poll().unwrap_err().to_string();
    assert!(
        err.contains(
            "cannot deploy /usr/local/bin/tool: its group \"tiffin-no-such-group\" does not exist"
        ),
        "{err}"
    );
    assert!(
        !f.root().join("etc/app/secret").exists(),
        "nothing of the stage is written"
    );
    assert_eq!(f.calls(), "", "no rebuild");
    assert_eq!(f.report().result, PullResult::Failed);
}

/// A release whose rebuild failed after its files were deployed, retried: its files are in
/// place already, but they changed since the release that ran, so their units restart.
#[test]
fn a_retried_release_restarts_the_units_of_files_an_earlier_attempt_wrote() {
    let mut f = Fixture::new();
    f.record_systemctl();
    f.publish_services(b"one\n", b"cert1\n", "root");
    f.poll().unwrap();
    let before = f.systemctl_calls().len();
    let working = f.cfg.rebuild.clone();
    f.cfg.rebuild.0 = vec!["sh".into(), "-c".into(), "exit 1".into()];
    // No build check first (it runs the rebuild command too): the switch itself fails.
    f.apply.allow_leaving = true;
    f.publish_services(b"one\n", b"cert2\n", "root");
    f.poll().unwrap_err();
    assert_eq!(
        std::fs::read(f.root().join("etc/grafana/cert")).unwrap(),
        b"cert2\n"
    );
    assert_eq!(
        f.systemctl_calls().len(),
        before,
        "no restart without activation"
    );
    f.cfg.rebuild = working;
    f.opts.retry_now = true;
    f.poll().unwrap();
    assert_eq!(
        f.systemctl_calls()[before..],
        ["systemctl restart grafana.service"]
    );
}
