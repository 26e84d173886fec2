//! Restarts (or reloads) the units whose files changed, once per unit, after activation and the files of `stage = "after"`.
//!
//! A unit named by several changed files is restarted once; a unit that one file restarts
//! and another reloads is restarted (a restart reloads too). A failure is reported, not
//! rolled back: the health check, which runs after the restarts, decides that.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::core::names::{RelPath, UnitName};
use crate::core::release::{FILES_DIR, FileEntry, Manifest};

use super::rebuild;

/// What to tell systemd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub restart: BTreeSet<UnitName>,
    /// Units reloaded and not restarted.
    pub reload: BTreeSet<UnitName>,
}

impl Plan {
    /// The units of the files of `manifest` that changed: `written` now (paths below root),
    /// or different from the release that ran before (`since`). The second catches a file
    /// an earlier attempt of this release wrote before its rebuild failed: retried, it is
    /// already in place, but its service has never seen it.
    pub fn of(manifest: &Manifest, written: &[RelPath], since: Option<&Manifest>) -> Plan {
        let written: BTreeSet<&str> = written.iter().map(RelPath::as_str).collect();
        let before: BTreeMap<&str, &FileEntry> = since
            .map(|m| m.files.iter().map(|f| (f.path.as_str(), f)).collect())
            .unwrap_or_default();
        let differs = |e: &FileEntry| {
            since.is_some()
                && before.get(e.path.as_str()).is_none_or(|b| {
                    (&b.sha256, b.mode, &b.owner, &b.group)
                        != (&e.sha256, e.mode, &e.owner, &e.group)
                })
        };
        let mut plan = Plan::default();
        for entry in &manifest.files {
            let Some(rel) = entry.path.strip_first() else {
                continue;
            };
            if entry.path.first() != FILES_DIR
                || !(written.contains(rel.as_str()) || differs(entry))
            {
                continue;
            }
            plan.restart.extend(entry.restart.iter().cloned());
            plan.reload.extend(entry.reload.iter().cloned());
        }
        let restart = &plan.restart;
        plan.reload.retain(|u| !restart.contains(u));
        plan
    }

    pub fn is_empty(&self) -> bool {
        self.restart.is_empty() && self.reload.is_empty()
    }
}

/// Runs `systemctl restart UNIT` (then `reload UNIT`) once per unit of `plan`, through the
/// configured argv; returns one line per failure ("grafana.service: restart: …").
pub fn run(systemctl: &[String], plan: &Plan, log: &Path, timeout: Duration) -> Vec<String> {
    let calls = plan
        .restart
        .iter()
        .map(|u| ("restart", u))
        .chain(plan.reload.iter().map(|u| ("reload", u)));
    let mut failures = Vec::new();
    for (verb, unit) in calls {
        let mut argv = systemctl.to_vec();
        argv.extend([verb.to_owned(), unit.to_string()]);
        tracing::info!("running {}", argv.join(" "));
        let done = rebuild::run(&argv, log, timeout);
        if let Some(message) = done.ended.failure() {
            let said = String::from_utf8_lossy(&done.log_tail);
            let last = said.lines().rev().find(|l| !l.trim().is_empty());
            let detail = last.map(|l| format!(" ({})", l.trim())).unwrap_or_default();
            let line = format!("{unit}: {verb}: {message}{detail}");
            tracing::warn!("{line}");
            failures.push(line);
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::release::{FileEntry, Mode, Sha256Hex};

    fn entry(path: &str, restart: &[&str], reload: &[&str]) -> FileEntry {
        let mut e = FileEntry::new(
            path.parse().unwrap(),
            1,
            Mode::new(0o600).unwrap(),
            Sha256Hex::new("0".repeat(64)).unwrap(),
        );
        e.restart = restart.iter().map(|u| u.parse().unwrap()).collect();
        e.reload = reload.iter().map(|u| u.parse().unwrap()).collect();
        e
    }

    #[test]
    fn each_unit_once_and_a_restart_covers_a_reload() {
        let manifest = Manifest {
            host: "web".parse().unwrap(),
            seq: 1,
            created: "2026-11-24T00:00:00Z".into(),
            apply: Default::default(),
            files: vec![
                entry("files/etc/a/cert", &["a.service"], &["b.service"]),
                entry("files/etc/a/key", &["a.service"], &[]),
                entry("files/etc/b/conf", &["b.service"], &["c.service"]),
                entry("files/etc/d/conf", &["d.service"], &[]),
            ],
            toplevel: None,
        };
        let changed: Vec<RelPath> = ["etc/a/cert", "etc/a/key", "etc/b/conf"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let plan = Plan::of(&manifest, &changed, None);
        let names = |s: &BTreeSet<UnitName>| s.iter().map(|u| u.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&plan.restart), ["a.service", "b.service"]);
        assert_eq!(names(&plan.reload), ["c.service"]);
        assert!(Plan::of(&manifest, &[], None).is_empty());
        // Nothing written now, but the cert differs from the release that ran before.
        let mut since = manifest.clone();
        since.files[0].sha256 = Sha256Hex::new("1".repeat(64)).unwrap();
        let plan = Plan::of(&manifest, &[], Some(&since));
        assert_eq!(names(&plan.restart), ["a.service"]);
        assert_eq!(names(&plan.reload), ["b.service"]);
        assert!(Plan::of(&manifest, &[], Some(&manifest)).is_empty());
    }

    #[test]
    fn a_failed_call_is_reported_and_the_others_still_run() {
        let tmp = tempfile::TempDir::new().unwrap();
        let calls = tmp.path().join("calls");
        let script = format!(
            "echo \"$@\" >> {}; [ \"$2\" != bad.service ] || {{ echo 'Unit bad.service not found.'; exit 5; }}",
            calls.display()
        );
        let argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            script,
            "systemctl".to_owned(),
        ];
        let plan = Plan {
            restart: ["bad.service", "good.service"]
                .iter()
                .map(|u| u.parse().unwrap())
                .collect(),
            reload: ["other.service"]
                .iter()
                .map(|u| u.parse().unwrap())
                .collect(),
        };
        let failures = run(
            &argv,
            &plan,
            &tmp.path().join("log"),
            Duration::from_secs(10),
        );
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].starts_with("bad.service: restart: "),
            "{}",
            failures[0]
        );
        assert!(
            failures[0].contains("Unit bad.service not found."),
            "{}",
            failures[0]
        );
        let recorded = std::fs::read_to_string(calls).unwrap();
        assert_eq!(
            recorded,
            "restart bad.service\nrestart good.service\nreload other.service\n"
        );
    }
}
