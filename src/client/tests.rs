//! Tests of one poll against the in-memory chroot: request counts, delta, verification, downgrade, backoff, deploy safety.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::config::{ClientConfig, Syntax};
use super::mem_remote::{MemRemote, Op};
use super::*;
use crate::core::hash::sha256_hex;
use crate::core::release::{FileEntry, Mode, Sha256Hex};
use crate::core::settings::ApplyPolicy;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOkDc3beSlNd2363XxewBPJDfsiRJahqtAVPNfHiyuwH test";
const T0: u64 = 1_800_000_000;

thread_local! {
    static CLOCK: Cell<u64> = const { Cell::new(T0) };
}
fn clock() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(CLOCK.with(Cell::get))
}
/// The lab's clocks run in UTC: minutes after midnight UTC.
fn utc_minute(t: SystemTime) -> u16 {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    (secs % 86_400 / 60) as u16
}
fn advance(secs: u64) {
    CLOCK.with(|c| c.set(c.get() + secs));
}

/// On a paused clock: the lifeline's waits (minutes) pass at once.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(f)
}

/// A server chroot in memory, a client state dir and root on disk.
struct Fixture {
    _dir: tempfile::TempDir,
    cfg: ClientConfig,
    remote: MemRemote,
    seq: u64,
    opts: PollOptions,
    apply: ApplyPolicy,
    /// Fresh sessions (the confirmation's) that fail before one works; `usize::MAX`: all.
    unreachable: usize,
    /// What the last poll's fresh sessions did, and how many connected.
    fresh_log: Vec<Op>,
    fresh_sessions: usize,
}

impl Fixture {
    fn new() -> Fixture {
        CLOCK.with(|c| c.set(T0));
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        // The stand-in rebuild fails when the configuration asks it to, and records what it was asked.
        // Its `build` (the check that a release keeps tiffin) leaves ./result with tiffin's units,
        // without them when the configuration holds `leaves`, and records nothing.
        let text = format!(
            r#"host = "client1"
server = "192.0.2.1"
server_key = "{KEY}"
state_dir = "{state}"
root = "{root}"
rebuild = ["sh", "-c", "if [ {{action}} = build ]; then u=result/etc/systemd/system; mkdir -p $u/timers.target.wants; touch $u/tiffin-pull.service $u/tiffin-pull.timer; [ -e {{config}}/leaves ] || touch $u/timers.target.wants/tiffin-pull.timer; exit 0; fi; echo rebuild {{action}} {{config}} {{host}} >> {calls}; if [ -e {{config}}/broken ]; then echo broken config >&2; exit 1; fi"]
backoff_initial = "1m"
backoff_max = "1h"
"#,
            state = dir.path().join("state").display(),
            root = root.display(),
            calls = dir.path().join("calls").display(),
        );
        let cfg = ClientConfig::parse(&text, Syntax::Toml, Path::new("client.toml")).unwrap();
        state::prepare_state_dir(&cfg.state_dir).unwrap();
        Fixture {
            _dir: dir,
            cfg,
            remote: MemRemote::new(),
            seq: 0,
            opts: PollOptions {
                retry_now: false,
                allow_downgrade: false,
                owner: crate::core::durable::Owner::Caller,
                system_link: "/nonexistent/current-system".into(),
                booted_system: "/nonexistent/booted-system".into(),
                system_profile: "/nonexistent/profiles/system".into(),
                now: clock,
                local_minute: utc_minute,
                conditions: super::conditions::Source::Fixed(Default::default()),
            },
            apply: ApplyPolicy::default(),
            unreachable: 0,
            fresh_log: Vec::new(),
            fresh_sessions: 0,
        }
    }

    fn root(&self) -> &Path {
        &self.cfg.root
    }

    /// Publishes a release made of `files` (path, content, mode) and points CURRENT at it.
    fn publish(&mut self, files: &[(&str, &[u8], u32)]) -> ReleaseId {
        self.seq += 1;
        let seq = self.seq;
        self.publish_with_seq(files, seq)
    }

    fn publish_with_seq(&mut self, files: &[(&str, &[u8], u32)], seq: u64) -> ReleaseId {
        let manifest = self.manifest(files, seq);
        self.release(&manifest, files)
    }

    /// The manifest `publish` would write for `files`, to be altered before `release`.
    fn manifest(&self, files: &[(&str, &[u8], u32)], seq: u64) -> Manifest {
        Manifest {
            host: "client1".parse().unwrap(),
            seq,
            created: "2026-11-24T00:00:00Z".into(),
            apply: self.apply.clone(),
            toplevel: None,
            files: files
                .iter()
                .map(|(p, c, m)| {
                    FileEntry::new(
                        p.parse().unwrap(),
                        c.len() as u64,
                        Mode::new(*m).unwrap(),
                        Sha256Hex::new(sha256_hex(c)).unwrap(),
                    )
                })
                .collect(),
        }
    }

    /// Plants `manifest` and the content of `files` in the chroot and points CURRENT at it.
    fn release(&mut self, manifest: &Manifest, files: &[(&str, &[u8], u32)]) -> ReleaseId {
        let text = manifest.render();
        let id = ReleaseId::of_bytes(text.as_bytes());
        self.remote
            .put(&format!("/releases/{id}/MANIFEST"), text.as_bytes());
        for (p, c, _) in files {
            self.remote.put(&format!("/releases/{id}/{p}"), *c);
        }
        self.point(&id);
        id
    }

    fn point(&mut self, id: &ReleaseId) {
        self.remote.put("/CURRENT", format!("{id}\n"));
    }

    fn poll(&mut self) -> Result<Polled, PullError> {
        self.remote.log.clear();
        let mut fresh = super::mem_remote::Fresh::of(&self.remote, self.unreachable);
        let polled = block_on(poll(&mut self.remote, &mut fresh, &self.cfg, &self.opts));
        self.fresh_log = fresh.merge_into(&mut self.remote);
        self.fresh_sessions = fresh.sessions;
        polled
    }

    fn report(&self) -> Report {
        Report::parse(std::str::from_utf8(&self.remote.files["/reports/status.toml"]).unwrap())
            .unwrap()
    }

    fn state(&self) -> State {
        State::load(&self.cfg.state_dir).unwrap()
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("calls")).unwrap_or_default()
    }
}

/// One watcher check over `remote` as the kept session, with fresh sessions to a copy of it.
fn check_once(
    w: &mut super::watch::Watcher<'_>,
    remote: &mut MemRemote,
    at: std::time::Instant,
) -> Result<super::watch::Checked, RemoteError> {
    let mut fresh = super::mem_remote::Fresh::of(remote, 0);
    let checked = block_on(w.check(remote, &mut fresh, at));
    fresh.merge_into(remote);
    checked
}

fn base_files() -> Vec<(&'static str, &'static [u8], u32)> {
    vec![
        ("config/flake.nix", b"{ outputs = _: {}; }\n", 0o644),
        ("config/configuration.nix", b"{ ... }: {}\n", 0o644),
        ("files/etc/app/secret", b"s3cret\n", 0o600),
        ("files/etc/app/conf", b"a = 1\n", 0o644),
        ("files/usr/local/bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
    ]
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn first_poll_applies_everything() {
    let mut f = Fixture::new();
    let id = f.publish(&base_files());
    let polled = f.poll().unwrap();
    let Polled::Applied {
        fetch, deployed, ..
    } = polled
    else {
        panic!("{polled:?}")
    };
    assert_eq!(fetch.downloaded_files, 5);
    assert_eq!(deployed.written, 3);
    let root = f.root().to_owned();
    assert_eq!(
        std::fs::read(root.join("etc/app/secret")).unwrap(),
        b"s3cret\n"
    );
    assert_eq!(mode_of(&root.join("etc/app/secret")), 0o600);
    assert_eq!(mode_of(&root.join("etc/app/conf")), 0o644);
    assert_eq!(mode_of(&root.join("usr/local/bin/tool")), 0o755);
    let config = f.cfg.state_dir.join("current/config");
    assert_eq!(
        f.calls(),
        format!("rebuild switch {} client1\n", config.display())
    );
    let report = f.report();
    assert_eq!(report.result, PullResult::Ok);
    assert_eq!(report.release.as_deref(), Some(id.as_str()));
    assert_eq!(report.applied.as_deref(), Some(id.as_str()));
    assert_eq!(report.seq, Some(1));
    assert!(f.remote.files.contains_key("/reports/rebuild.log"));
    assert_eq!(f.state().applied.unwrap().id, id);
}

#[test]
fn unchanged_poll_reads_current_and_uploads_one_report() {
    let mut f = Fixture::new();
    let id = f.publish(&base_files());
    f.poll().unwrap();
    advance(60);
    let polled = f.poll().unwrap();
    assert_eq!(
        polled,
        Polled::Unchanged {
            id: id.clone(),
            seq: 1
        }
    );
    assert_eq!(
        f.remote.log,
        [
            Op::Read("/CURRENT".into()),
            Op::Write("/reports/status.toml".into())
        ]
    );
    let report = f.report();
    assert_eq!(report.result, PullResult::Unchanged);
    assert_eq!(report.release.as_deref(), Some(id.as_str()));
    assert_eq!(
        report.last_seen,
        crate::core::settings::format_time(clock())
    );
    assert_eq!(f.calls().lines().count(), 1, "no second rebuild");
}

#[test]
fn delta_downloads_only_the_changed_file() {
    let mut f = Fixture::new();
    let mut files = base_files();
    let many: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| {
            (
                format!("config/mod{i}.nix"),
                format!("{{ x = {i}; }}\n").into_bytes(),
            )
        })
        .collect();
    for (p, c) in &many {
        files.push((p.as_str(), c.as_slice(), 0o644));
    }
    f.publish(&files);
    f.poll().unwrap();
    files[1] = (
        "config/configuration.nix",
        b"{ ... }: { changed = 1; }\n",
        0o644,
    );
    let id2 = f.publish(&files);
    let Polled::Applied {
        fetch, deployed, ..
    } = f.poll().unwrap()
    else {
        panic!()
    };
    assert_eq!(fetch.downloaded_files, 1);
    assert_eq!(fetch.reused_files, files.len() - 1);
    assert_eq!(deployed.written, 0, "files/ did not change");
    assert_eq!(deployed.unchanged, 3);
    let reads: Vec<_> = f
        .remote
        .log
        .iter()
        .filter_map(|o| match o {
            Op::Read(p) => Some(p.clone()),
            Op::Write(_) => None,
        })
        .collect();
    assert_eq!(
        reads,
        [
            "/CURRENT".to_owned(),
            format!("/releases/{id2}/MANIFEST"),
            format!("/releases/{id2}/config/configuration.nix"),
        ]
    );
}

#[test]
fn a_tampered_file_applies_nothing_and_is_named() {
    let mut f = Fixture::new();
    let id1 = f.publish(&base_files());
    f.poll().unwrap();
    let mut files = base_files();
    files[2] = ("files/etc/app/secret", b"new secret\n", 0o600);
    files[3] = ("files/etc/app/conf", b"a = 2\n", 0o644);
    let id2 = f.publish(&files);
    f.remote
        .put(&format!("/releases/{id2}/files/etc/app/conf"), "a = 3\n");
    let err = f.poll().unwrap_err().to_string();
    assert!(err.contains("files/etc/app/conf"), "{err}");
    assert!(err.contains("sha256"), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    // Nothing changed on the machine: old files, old release, no partial tree.
    assert_eq!(
        std::fs::read(f.root().join("etc/app/secret")).unwrap(),
        b"s3cret\n"
    );
    assert_eq!(f.state().applied.unwrap().id, id1);
    let store = Store::new(&f.cfg.state_dir);
    assert!(!store.has(&id2));
    assert!(!store.dir.join(format!("{id2}.partial")).exists());
    assert_eq!(
        std::fs::read_link(f.cfg.state_dir.join(CURRENT_LINK)).unwrap(),
        Path::new("releases").join(id1.as_str())
    );
    let report = f.report();
    assert_eq!(report.result, PullResult::Failed);
    assert_eq!(report.applied.as_deref(), Some(id1.as_str()));
    assert!(report.error.unwrap().contains("files/etc/app/conf"));
}

#[test]
fn a_manifest_that_does_not_match_its_id_is_refused() {
    let mut f = Fixture::new();
    let id = f.publish(&base_files());
    let path = format!("/releases/{id}/MANIFEST");
    let mut text = f.remote.files[&path].clone();
    text.extend_from_slice(b"\n");
    f.remote.put(&path, text);
    let err = f.poll().unwrap_err().to_string();
    assert!(err.contains("does not match its release id"), "{err}");
    assert!(!f.root().join("etc").exists());
    assert_eq!(f.calls(), "");
}

#[test]
fn a_release_for_another_host_is_refused() {
    let mut f = Fixture::new();
    f.cfg.host = "client2".parse().unwrap();
    f.publish(&base_files());
    let err = f.poll().unwrap_err().to_string();
    assert!(
        err.contains("is for host client1, not for this host (client2)"),
        "{err}"
    );
}

#[test]
fn downgrade_is_refused_unless_allowed() {
    let mut f = Fixture::new();
    let old = f.publish(&base_files());
    f.poll().unwrap();
    let mut files = base_files();
    files[3] = ("files/etc/app/conf", b"a = 2\n", 0o644);
    let new = f.publish(&files);
    f.poll().unwrap();
    f.point(&old);
    let err = f.poll().unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Downgrade {
                seq: 1,
                applied_seq: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--allow-downgrade"));
    assert_eq!(
        std::fs::read(f.root().join("etc/app/conf")).unwrap(),
        b"a = 2\n"
    );
    assert_eq!(f.state().applied.unwrap().id, new);
    assert_eq!(f.report().result, PullResult::Failed);
    f.opts.allow_downgrade = true;
    f.poll().unwrap();
    assert_eq!(
        std::fs::read(f.root().join("etc/app/conf")).unwrap(),
        b"a = 1\n"
    );
    assert_eq!(f.state().applied.unwrap().id, old);
}

#[test]
fn a_failed_rebuild_backs_off_and_a_newer_release_resets_it() {
    let mut f = Fixture::new();
    let good = f.publish(&base_files());
    f.poll().unwrap();
    let mut files = base_files();
    files.push(("config/broken", b"yes\n", 0o644));
    let bad = f.publish(&files);
    let err = f.poll().unwrap_err().to_string();
    assert!(err.contains("the rebuild failed"), "{err}");
    let report = f.report();
    assert_eq!(report.result, PullResult::Failed);
    assert_eq!(report.release.as_deref(), Some(bad.as_str()));
    assert_eq!(report.applied.as_deref(), Some(good.as_str()));
    assert!(
        std::str::from_utf8(&f.remote.files["/reports/rebuild.log"])
            .unwrap()
            .contains("broken config")
    );
    // The previous release stays current.
    assert_eq!(
        std::fs::read_link(f.cfg.state_dir.join(CURRENT_LINK)).unwrap(),
        Path::new("releases").join(good.as_str())
    );
    assert_eq!(f.calls().lines().count(), 2);

    // Within the backoff: no retry, only CURRENT and the report.
    advance(30);
    let err = f.poll().unwrap_err();
    assert!(
        matches!(err, PullError::BackingOff { failures: 1, .. }),
        "{err}"
    );
    assert_eq!(f.remote.log.len(), 2, "{:?}", f.remote.log);
    assert_eq!(f.calls().lines().count(), 2);
    assert_eq!(f.report().result, PullResult::Failed);

    // After it: retried (and fails again, doubling the wait to 2m).
    advance(31);
    f.poll().unwrap_err();
    assert_eq!(f.calls().lines().count(), 3);
    let failure = f.state().failure.unwrap();
    assert_eq!(failure.failures, 2);
    assert_eq!(
        failure.next_retry,
        crate::core::settings::format_time(clock() + Duration::from_secs(120))
    );

    // --now ignores the backoff.
    f.opts.retry_now = true;
    f.poll().unwrap_err();
    assert_eq!(f.calls().lines().count(), 4);
    f.opts.retry_now = false;

    // A fix converges at once, whatever the backoff.
    let fixed = f.publish(&base_files()[..4]);
    f.poll().unwrap();
    assert_eq!(f.state().applied.unwrap().id, fixed);
    assert!(f.state().failure.is_none());
    assert_eq!(f.report().result, PullResult::Ok);
}

#[test]
fn a_cut_link_mid_download_applies_nothing_and_the_next_poll_converges() {
    let mut f = Fixture::new();
    let id = f.publish(&base_files());
    f.remote.fail_after_reads = Some(3);
    let err = f.poll().unwrap_err().to_string();
    assert!(
        err.contains("the connection to mem was lost while"),
        "{err}"
    );
    assert!(!f.root().join("etc").exists());
    assert!(f.state().applied.is_none());
    assert!(
        f.state().failure.is_none(),
        "a cut link is not the release's fault: no backoff"
    );
    f.remote.fail_after_reads = None;
    f.poll().unwrap();
    assert_eq!(f.state().applied.unwrap().id, id);
}

#[test]
fn secrets_stay_out_of_the_flake_directory() {
    let mut f = Fixture::new();
    let mut files = base_files();
    files.push(("files/etc/poison", b"POISON-7f3a\n", 0o600));
    f.publish(&files);
    f.poll().unwrap();
    let config = f.cfg.state_dir.join("current/config");
    let mut stack = vec![config.canonicalize().unwrap()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                assert!(
                    !std::fs::read(&p)
                        .unwrap()
                        .windows(6)
                        .any(|w| w == b"POISON"),
                    "{}",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn dropped_files_are_removed_only_if_tiffin_created_them_unchanged() {
    let mut f = Fixture::new();
    let root = f.root().to_owned();
    std::fs::create_dir_all(root.join("etc/app")).unwrap();
    std::fs::write(root.join("etc/app/conf"), "admin's own\n").unwrap();
    let mut files = base_files();
    files.push(("files/etc/app/edited", b"x\n", 0o644));
    f.publish(&files);
    f.poll().unwrap();
    std::fs::write(root.join("etc/app/edited"), "changed by hand\n").unwrap();
    // The next release drops conf (pre-existing), edited (changed since) and secret (pristine).
    let kept: Vec<_> = base_files()
        .into_iter()
        .filter(|(p, _, _)| !p.starts_with("files/etc/app/"))
        .collect();
    f.publish(&kept);
    let Polled::Applied { deployed, .. } = f.poll().unwrap() else {
        panic!()
    };
    assert!(!root.join("etc/app/secret").exists());
    assert_eq!(
        std::fs::read(root.join("etc/app/conf")).unwrap(),
        b"a = 1\n"
    );
    assert_eq!(
        std::fs::read(root.join("etc/app/edited")).unwrap(),
        b"changed by hand\n"
    );
    assert_eq!(deployed.removed, 1);
    assert_eq!(deployed.kept, ["etc/app/conf", "etc/app/edited"]);
}

#[test]
fn a_symlink_on_the_client_blocks_the_whole_deploy() {
    let mut f = Fixture::new();
    let outside = f._dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, f.root().join("etc")).unwrap();
    f.publish(&base_files());
    let err = f.poll().unwrap_err().to_string();
    assert!(err.contains("refusing to deploy etc/app/"), "{err}");
    assert!(err.contains("nothing was deployed"), "{err}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(
        !f.root().join("usr").exists(),
        "nothing else was deployed either"
    );
}

#[test]
fn a_symlink_as_the_target_is_replaced_not_followed() {
    let mut f = Fixture::new();
    let outside = f._dir.path().join("victim");
    std::fs::write(&outside, "untouched\n").unwrap();
    std::fs::create_dir_all(f.root().join("etc/app")).unwrap();
    std::os::unix::fs::symlink(&outside, f.root().join("etc/app/conf")).unwrap();
    f.publish(&base_files());
    f.poll().unwrap();
    assert_eq!(std::fs::read(&outside).unwrap(), b"untouched\n");
    let target = f.root().join("etc/app/conf");
    assert!(!std::fs::symlink_metadata(&target).unwrap().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"a = 1\n");
}

/// Everything below `dir`, with content and mode, to prove it did not change.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let content = if meta.is_dir() {
                stack.push(p.clone());
                Vec::new()
            } else if meta.is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(&p).unwrap()
            };
            out.insert(p, (content, meta.permissions().mode()));
        }
    }
    out
}

/// What may already be in `root` on a hostile client.
#[derive(Debug, Clone)]
enum Plant {
    SymlinkOut(String),
    SymlinkUp(String),
    Dir(String),
    File(String),
}

fn arb_component() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("etc".to_owned()),
        Just("..a".to_owned()),
        "[a-z.]{1,3}",
    ]
}

fn arb_rel() -> impl Strategy<Value = String> {
    proptest::collection::vec(arb_component(), 1..4).prop_map(|c| c.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Hostile manifests (any path text) and pre-planted symlinks, directories and files in root:
    /// nothing outside root is ever written, and nothing panics.
    #[test]
    fn nothing_lands_outside_root(
        paths in proptest::collection::vec(prop_oneof![arb_rel(), "\\PC{0,12}", Just("../x".to_owned()), Just("/etc/x".to_owned())], 1..8),
        plants in proptest::collection::vec(prop_oneof![
            arb_rel().prop_map(Plant::SymlinkOut),
            arb_rel().prop_map(Plant::SymlinkUp),
            arb_rel().prop_map(Plant::Dir),
            arb_rel().prop_map(Plant::File),
        ], 0..6),
    ) {
        let mut f = Fixture::new();
        let outside = f._dir.path().join("outside");
        std::fs::create_dir_all(outside.join("a/b")).unwrap();
        std::fs::write(outside.join("a/x"), "keep").unwrap();
        let root = f.root().to_owned();
        for plant in &plants {
            let (Plant::SymlinkOut(p) | Plant::SymlinkUp(p) | Plant::Dir(p) | Plant::File(p)) = plant;
            // Plants are what a local admin or attacker put inside root; a '..' plant would be the test escaping.
            if p.parse::<crate::core::names::RelPath>().is_err() { continue; }
            let at = root.join(p);
            if let Some(parent) = at.parent()
                && std::fs::create_dir_all(parent).is_err() { continue; }
            let _ = match plant {
                Plant::SymlinkOut(_) => std::os::unix::fs::symlink(&outside, &at),
                Plant::SymlinkUp(_) => std::os::unix::fs::symlink("../../../..", &at),
                Plant::Dir(_) => std::fs::create_dir_all(&at),
                Plant::File(_) => std::fs::write(&at, "planted"),
            };
        }
        let before = snapshot(&outside);
        let contents: Vec<(String, Vec<u8>)> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("files/{p}"), format!("content {i}\n").into_bytes()))
            .collect();
        // Write a raw manifest, so paths the server side would never produce are tried too.
        let mut text = String::from("host = \"client1\"\nseq = 1\ncreated = \"x\"\n[apply]\n");
        for (p, c) in &contents {
            text.push_str(&format!(
                "[[file]]\npath = {}\nsize = {}\nmode = \"0644\"\nsha256 = \"{}\"\n",
                toml::Value::String(p.clone()), c.len(), sha256_hex(c)
            ));
            f.remote.put(&format!("/releases/ID/{p}"), c.clone());
        }
        let id = ReleaseId::of_bytes(text.as_bytes());
        let files = std::mem::take(&mut f.remote.files);
        for (k, v) in files {
            f.remote.put(&k.replace("/ID/", &format!("/{id}/")), v);
        }
        f.remote.put(&format!("/releases/{id}/MANIFEST"), text.clone());
        f.point(&id);
        if f.poll().is_ok() {
            // Applied: every file landed where its path says, with its content.
            for (p, c) in &contents {
                let rel = p.strip_prefix("files/").unwrap();
                prop_assert_eq!(&std::fs::read(root.join(rel)).unwrap(), c);
            }
        }
        prop_assert_eq!(snapshot(&outside), before);
        // Also nothing next to root.
        let siblings: Vec<_> = std::fs::read_dir(f._dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        for s in siblings {
            prop_assert!(["root", "state", "outside", "calls"].contains(&s.to_str().unwrap()), "{s:?}");
        }
    }
}

#[test]
fn reboot_if_needed_only_when_the_kernel_changes_and_only_for_switch_or_boot() {
    use crate::core::settings::{Action, Reboot};
    let mut f = Fixture::new();
    let dir = f._dir.path().to_owned();
    f.opts.booted_system = super::reboot::fake_system(&dir, "booted", "kernel-1");
    f.opts.system_profile = super::reboot::fake_system(&dir, "profile-same", "kernel-1");
    f.apply.reboot = Reboot::IfNeeded;
    f.publish(&base_files());
    let Polled::Applied { reboot, .. } = f.poll().unwrap() else {
        panic!("applied")
    };
    assert!(!reboot, "same kernel, initrd and modules: no reboot");

    f.opts.system_profile = super::reboot::fake_system(&dir, "profile-new", "kernel-2");
    f.publish(&[("config/flake.nix", b"{ }\n", 0o644)]);
    let Polled::Applied { reboot, .. } = f.poll().unwrap() else {
        panic!("applied")
    };
    assert!(reboot, "a new kernel takes a reboot");

    f.apply.action = Action::Test;
    f.publish(&[("config/flake.nix", b"{ x = 1; }\n", 0o644)]);
    let Polled::Applied { reboot, .. } = f.poll().unwrap() else {
        panic!("applied")
    };
    assert!(
        !reboot,
        "`test` never changes the boot default, so it never reboots"
    );

    f.apply = ApplyPolicy {
        reboot: Reboot::Never,
        ..ApplyPolicy::default()
    };
    f.publish(&[("config/flake.nix", b"{ x = 2; }\n", 0o644)]);
    let Polled::Applied { reboot, .. } = f.poll().unwrap() else {
        panic!("applied")
    };
    assert!(!reboot, "reboot = never");
}

#[test]
fn a_failed_health_check_rolls_back_to_the_previous_release() {
    let mut f = Fixture::new();
    let first = f.publish(&base_files());
    f.poll().unwrap();
    f.apply.health_check = vec![
        "sh".into(),
        "-c".into(),
        "echo unhealthy >&2; exit 1".into(),
    ];
    let second = f.publish(&[
        ("config/flake.nix", b"{ y = 1; }\n", 0o644),
        ("files/etc/new-secret", b"new\n", 0o600),
    ]);
    let err = f.poll().unwrap_err().to_string();
    assert!(err.contains("the health check failed"), "{err}");
    assert!(
        err.contains(&format!("rolled back to release {}", first.short())),
        "{err}"
    );
    let report = f.report();
    assert_eq!(report.result, PullResult::RolledBack);
    assert_eq!(
        report.release.as_deref(),
        Some(second.as_str()),
        "the attempted release"
    );
    assert_eq!(
        report.applied.as_deref(),
        Some(first.as_str()),
        "the release still running"
    );
    // Rebuilt three times: the first release, the second, and the first again.
    let calls = f.calls();
    assert_eq!(calls.lines().count(), 3, "{calls}");
    let current = std::fs::read_link(f.cfg.state_dir.join(super::CURRENT_LINK)).unwrap();
    assert!(
        current.ends_with(first.as_str()),
        "current points back at the first release: {current:?}"
    );
    assert_eq!(f.state().applied.unwrap().id, first);
    // The previous release's files are back, and the new release's are gone again.
    assert!(
        !f.root().join("etc/new-secret").exists(),
        "the new release's file is removed"
    );
    for (path, content, mode) in base_files() {
        if let Some(rel) = path.strip_prefix("files/") {
            let target = f.root().join(rel);
            assert_eq!(std::fs::read(&target).unwrap(), content, "{rel}");
            assert_eq!(mode_of(&target), mode, "{rel}");
        }
    }
}

#[test]
fn a_release_that_would_remove_tiffin_is_refused_and_nothing_is_applied() {
    let mut f = Fixture::new();
    let good = f.publish(&base_files());
    f.poll().unwrap();
    let mut files = base_files();
    files.push(("config/leaves", b"yes\n", 0o644));
    files.push(("files/etc/new-secret", b"s\n", 0o600));
    let leaving = f.publish(&files);
    let err = f.poll().unwrap_err();
    assert!(matches!(err, PullError::Leaving { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("would remove tiffin from this host: it would never update again")
            && message.contains("timers.target.wants/tiffin-pull.timer")
            && message.contains("allow_leaving"),
        "{message}"
    );
    // Nothing of it was applied: no file deployed, no switch, the previous release current.
    assert!(!f.root().join("etc/new-secret").exists());
    assert_eq!(
        f.calls().lines().count(),
        1,
        "only the first release's switch"
    );
    assert_eq!(
        std::fs::read_link(f.cfg.state_dir.join(CURRENT_LINK)).unwrap(),
        Path::new("releases").join(good.as_str())
    );
    let report = f.report();
    assert_eq!(report.result, PullResult::Failed);
    assert_eq!(report.release.as_deref(), Some(leaving.as_str()));
    assert!(report.error.unwrap().contains("would remove tiffin"));
}

#[test]
fn a_manifest_size_beyond_the_limit_is_refused_and_reported() {
    for size in [u64::MAX, 1 << 40] {
        let mut f = Fixture::new();
        let mut files = base_files();
        files.push(("files/big", b"tiny", 0o644));
        let mut manifest = f.manifest(&files, 1);
        let big = manifest
            .files
            .iter_mut()
            .find(|e| e.path.to_string() == "files/big")
            .unwrap();
        big.size = size;
        f.release(&manifest, &files);
        let err = f.poll().unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "files/big is {size} bytes, more than the {} bytes",
                fetch::FILE_LIMIT
            )),
            "{err}"
        );
        let report = f.report();
        assert_eq!(report.result, PullResult::Failed);
        let shown = report.error.unwrap();
        assert!(
            shown.contains("files/big") && shown.contains("68719476736"),
            "{shown}"
        );
        assert!(!f.root().join("etc").exists(), "nothing was applied");
        assert_eq!(f.remote.reads(), 2, "only CURRENT and MANIFEST were read");
    }
}

/// A file of `len` pseudo-random bytes (large files are streamed, small ones batched).
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn files_longer_or_shorter_than_promised_are_refused_and_reported() {
    let large = content(3 * fetch::SMALL_FILE as usize + 17, 1);
    for (len, name) in [(6usize, "files/small"), (large.len(), "files/large")] {
        for served in [len - 1, len + 1] {
            let mut f = Fixture::new();
            let promised = content(len, 2);
            let mut files = base_files();
            files.push((name, &promised, 0o644));
            let id = f.publish(&files);
            f.remote
                .put(&format!("/releases/{id}/{name}"), content(served, 2));
            let err = f.poll().unwrap_err().to_string();
            assert!(
                err.contains(name) && err.contains("the manifest says"),
                "{err}"
            );
            assert!(!f.root().join("etc").exists(), "nothing was applied");
            assert_eq!(f.report().result, PullResult::Failed);
            assert!(
                f.state().failure.is_some(),
                "the release's content, not the link"
            );
        }
    }
}

#[test]
fn a_large_file_is_streamed_verified_and_reused_by_the_next_release() {
    let mut f = Fixture::new();
    let large = content(5 * fetch::SMALL_FILE as usize + 3, 7);
    let mut files = base_files();
    files.push(("files/var/big.bin", &large, 0o640));
    f.publish(&files);
    let Polled::Applied { fetch, .. } = f.poll().unwrap() else {
        panic!("not applied")
    };
    assert_eq!(fetch.downloaded_files, files.len());
    assert_eq!(std::fs::read(f.root().join("var/big.bin")).unwrap(), large);
    assert_eq!(mode_of(&f.root().join("var/big.bin")), 0o640);

    files[0] = (
        "config/flake.nix",
        b"{ outputs = _: { changed = 1; }; }\n",
        0o644,
    );
    f.publish(&files);
    let Polled::Applied { fetch, .. } = f.poll().unwrap() else {
        panic!("not applied")
    };
    assert_eq!(fetch.downloaded_files, 1, "only the changed file");
    assert_eq!(
        fetch.reused_bytes,
        files.iter().skip(1).map(|f| f.1.len() as u64).sum::<u64>()
    );
}

#[test]
fn a_full_disk_is_reported_as_such_and_not_counted_against_the_release() {
    let mut f = Fixture::new();
    let id = f.publish(&base_files());
    fetch::fault::DISK_FULL.with(|d| d.set(true));
    let result = f.poll();
    fetch::fault::DISK_FULL.with(|d| d.set(false));
    let err = result.unwrap_err();
    assert!(matches!(err, PullError::DiskFull { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("no space left on the client's disk at ")
            && text.contains("free space and run tiffin pull again"),
        "{text}"
    );
    let report = f.report();
    assert_eq!(report.result, PullResult::Failed);
    assert!(report.error.unwrap().contains("no space left"));
    assert!(f.state().failure.is_none(), "no backoff for a full disk");
    assert!(!f.root().join("etc").exists());
    // The next poll tries again at once, and applies it.
    assert!(matches!(f.poll().unwrap(), Polled::Applied { .. }));
    assert_eq!(f.state().applied.unwrap().id, id);
}

#[test]
fn a_missing_current_is_named_once() {
    let mut f = Fixture::new();
    let err = f.poll().unwrap_err().to_string();
    assert_eq!(err, "/CURRENT: no such file on the server");
    f.remote.put("/CURRENT", "not-an-id\n");
    let err = f.poll().unwrap_err().to_string();
    assert!(
        err.starts_with("/CURRENT on the server does not name a release: "),
        "{err}"
    );
    assert_eq!(err.matches("CURRENT").count(), 1, "{err}");
}

fn arb_entry() -> impl Strategy<Value = FileEntry> {
    (
        "(config|files)/[a-z]{1,6}(/[a-z]{1,6}){0,2}",
        prop_oneof![
            0u64..2 * fetch::SMALL_FILE,
            Just(u64::MAX),
            Just(1u64 << 40),
            any::<u64>(),
        ],
    )
        .prop_map(|(path, size)| {
            FileEntry::new(
                path.parse().unwrap(),
                size,
                Mode::new(0o644).unwrap(),
                Sha256Hex::new(sha256_hex(path.as_bytes())).unwrap(),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the server puts in MANIFEST, CURRENT or a report, the parsers answer; none panics.
    #[test]
    fn parsers_never_panic_on_server_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), text in "\\PC{0,300}") {
        let id = ReleaseId::of_bytes(&bytes);
        let _ = Manifest::parse(&bytes);
        let _ = Manifest::parse_verified(&bytes, &id);
        let _ = Manifest::parse(text.as_bytes());
        let _ = parse_current(&bytes);
        let _ = parse_current(text.as_bytes());
        let _ = Report::parse(&String::from_utf8_lossy(&bytes));
        let _ = Report::parse(&text);
    }

    /// Any manifest's sizes: the plan never panics, covers each file once in order, and keeps
    /// every batch within its bounds (a large file is streamed, never batched).
    #[test]
    fn the_fetch_plan_is_bounded_for_any_sizes(entries in proptest::collection::vec(arb_entry(), 0..300)) {
        let id = ReleaseId::of_bytes(b"x");
        let refused = fetch::check_sizes(&id, &entries).is_err();
        prop_assert_eq!(refused, entries.iter().any(|e| e.size > fetch::FILE_LIMIT));
        let wanted: Vec<&FileEntry> = entries.iter().collect();
        let mut seen = Vec::new();
        for step in fetch::plan(&wanted) {
            match step {
                fetch::Step::Batch(batch) => {
                    prop_assert!(!batch.is_empty() && batch.len() <= 128);
                    prop_assert!(batch.iter().all(|e| e.size <= fetch::SMALL_FILE));
                    let total: u64 = batch.iter().map(|e| e.size).sum();
                    prop_assert!(total <= 4 << 20 || batch.len() == 1);
                    seen.extend(batch.iter().copied());
                }
                fetch::Step::Stream(e) => {
                    prop_assert!(e.size > fetch::SMALL_FILE);
                    seen.push(e);
                }
            }
        }
        prop_assert_eq!(&seen, &wanted);
    }
}

#[test]
fn a_heartbeat_goes_out_when_the_state_cannot_be_saved() {
    let mut f = Fixture::new();
    let id = f.publish(&base_files());
    f.poll().unwrap();
    fetch::fault::DISK_FULL.with(|d| d.set(true));
    let result = f.poll();
    fetch::fault::DISK_FULL.with(|d| d.set(false));
    let err = result.unwrap_err();
    assert!(matches!(err, PullError::DiskFull { .. }), "{err:?}");
    let report = f.report();
    assert_eq!(report.result, PullResult::Unchanged);
    assert_eq!(report.release.as_deref(), Some(id.as_str()));
    assert!(
        report
            .error
            .unwrap()
            .contains("no space left on the client's disk at ")
    );
    assert!(matches!(f.poll().unwrap(), Polled::Unchanged { .. }));
}

mod files;
mod lifeline;
mod ops;
mod signed;
#[path = "watch_tests.rs"]
mod watch_tests;
mod workstation;
// ---- prebuilt releases (`toplevel` in the MANIFEST) --------------------------------------

const PB_DEP: &str = "/nix/store/h53jn4wvi4jxxl9bg4mg78zilfmafzv7-dep";
const PB_TOP: &str = "/nix/store/hkrmp39wm59gr305lrkzhw1yzgj6m9lq-nixos-system-client1";

/// A NAR's xz file and its narinfo, true to each other.
fn pb_nar(path: &str, url: &str, nar: &[u8]) -> (Vec<u8>, Vec<u8>) {
    crate::client::nar::xz_with_narinfo(path, url, nar)
}

/// The client's nix commands as recording shell stand-ins: `invalid` lists what the store lacks.
fn prebuilt_client(f: &mut Fixture, invalid: &[&str]) -> PathBuf {
    let calls = f._dir.path().join("nix-calls");
    let rec = |what: &str| {
        vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("echo {what} \"$@\" >> {}", calls.display()),
            "sh".to_owned(),
        ]
    };
    let p = &mut f.cfg.prebuilt;
    p.cache_public_key = Some("fleet-1:txoMHnami2CpfXuGgeJKHMqMToq/kChyvAoKR8vhTQo=".into());
    p.query_invalid = vec![
        "sh".into(),
        "-c".into(),
        format!("printf '%s\\n' {}", invalid.join(" ")),
        "sh".into(),
    ];
    p.import = [rec("import"), vec!["{toplevel}".into()]].concat();
    p.set_profile = [rec("profile"), vec!["{toplevel}".into()]].concat();
    p.gc_root = rec("root");
    calls
}

/// How a test's prebuilt release is spoiled, as a server could.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tamper {
    Nothing,
    /// The top narinfo's FileHash disagrees with its NAR file.
    FileHash,
    /// The top NAR file is an xz bomb, and the narinfo's unsigned FileHash and FileSize are
    /// rewritten to match it; the signed NarHash and NarSize stay true.
    Bomb,
}

/// A prebuilt release: base files plus a cache of two paths, spoiled as `tamper` says.
fn prebuilt_release(f: &mut Fixture, tamper: Tamper) -> ReleaseId {
    let (dep_nar, dep_ni) = pb_nar(PB_DEP, "nar/dep.nar.xz", b"dep-nar");
    let (mut top_nar, mut top_ni) = pb_nar(PB_TOP, "nar/top.nar.xz", b"top-nar-bytes");
    match tamper {
        Tamper::Nothing => {}
        Tamper::FileHash => top_ni = pb_nar(PB_TOP, "nar/top.nar.xz", b"other bytes").1,
        Tamper::Bomb => {
            let (bomb, bomb_ni) = pb_nar(PB_TOP, "nar/top.nar.xz", &vec![0u8; 16 << 20]);
            let file_lines = |ni: &[u8]| -> Vec<String> {
                String::from_utf8_lossy(ni)
                    .lines()
                    .filter(|l| l.starts_with("File"))
                    .map(str::to_owned)
                    .collect()
            };
            let (old, new) = (file_lines(&top_ni), file_lines(&bomb_ni));
            let mut text = String::from_utf8(top_ni).unwrap();
            for (o, n) in old.iter().zip(&new) {
                text = text.replace(o, n);
            }
            (top_nar, top_ni) = (bomb, text.into_bytes());
        }
    }
    let dep_name = format!("cache/{}.narinfo", &PB_DEP[11..43]);
    let top_name = format!("cache/{}.narinfo", &PB_TOP[11..43]);
    let owned: Vec<(String, Vec<u8>)> = vec![
        (
            "cache/nix-cache-info".into(),
            b"StoreDir: /nix/store\n".to_vec(),
        ),
        (dep_name, dep_ni),
        (top_name, top_ni),
        ("cache/nar/dep.nar.xz".into(), dep_nar.to_vec()),
        ("cache/nar/top.nar.xz".into(), top_nar.to_vec()),
    ];
    let mut files: Vec<(&str, &[u8], u32)> = base_files();
    files.extend(owned.iter().map(|(p, c)| (p.as_str(), c.as_slice(), 0o644)));
    f.seq += 1;
    let mut manifest = f.manifest(&files, f.seq);
    manifest.toplevel = Some(PB_TOP.parse().unwrap());
    manifest.apply.build = crate::core::settings::Build::Server;
    // The stand-in toplevel does not exist here, so the leaving check is not the test's subject.
    manifest.apply.allow_leaving = true;
    f.release(&manifest, &files)
}

#[test]
fn an_xz_bomb_behind_a_true_narinfo_is_refused_before_nix_sees_it() {
    let mut f = Fixture::new();
    let calls = prebuilt_client(&mut f, &[PB_TOP]);
    prebuilt_release(&mut f, Tamper::Bomb);
    let err = f.poll().unwrap_err();
    assert!(
        matches!(
            &err,
            PullError::Prebuilt(prebuilt::PrebuiltError::Nar { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("NarSize"), "{err}");
    let nix = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(!nix.contains("import"), "nothing reached nix copy: {nix}");
    assert_eq!(f.report().result, PullResult::Failed);
}

#[test]
fn a_prebuilt_release_fetches_only_missing_nars_and_never_rebuilds() {
    let mut f = Fixture::new();
    let calls = prebuilt_client(&mut f, &[PB_TOP]);
    let id = prebuilt_release(&mut f, Tamper::Nothing);
    let err = f.poll().unwrap_err();
    let read: Vec<String> = f
        .remote
        .log
        .iter()
        .filter_map(|op| match op {
            Op::Read(p) if p.contains("/cache/nar/") => Some(p.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        read,
        [format!("/releases/{id}/cache/nar/top.nar.xz")],
        "the store holds dep"
    );
    let nix = std::fs::read_to_string(&calls).unwrap();
    assert!(nix.contains(&format!("import {PB_TOP}")), "{nix}");
    // There is no such toplevel here: without its nixos-version it is not made the
    // profile's generation (as nixos-rebuild checks) nor activated; failed, reported.
    assert!(!nix.contains(&format!("profile {PB_TOP}")), "{nix}");
    assert!(matches!(err, PullError::Rebuild { .. }), "{err}");
    assert!(err.to_string().contains("has no nixos-version"), "{err}");
    assert_eq!(
        f.calls(),
        "",
        "nixos-rebuild never runs for a prebuilt release"
    );
    assert!(
        !f.cfg
            .state_dir
            .join("releases")
            .join(id.as_str())
            .join("cache")
            .exists()
    );
    assert!(
        !f.cfg.state_dir.join("prebuilt").join(id.as_str()).exists(),
        "the download is gone"
    );
}

#[test]
fn a_new_release_of_the_same_closure_downloads_no_narinfo_again() {
    let mut f = Fixture::new();
    prebuilt_client(&mut f, &[PB_TOP]);
    let narinfo_reads = |f: &Fixture| {
        f.remote
            .log
            .iter()
            .filter(|op| matches!(op, Op::Read(p) if p.ends_with(".narinfo")))
            .count()
    };
    prebuilt_release(&mut f, Tamper::Nothing);
    let _ = f.poll();
    assert_eq!(narinfo_reads(&f), 2, "the first release: both narinfos");
    f.remote.log.clear();
    // The same closure in a newer release (another seq): its narinfos are kept from the first.
    prebuilt_release(&mut f, Tamper::Nothing);
    let _ = f.poll();
    assert!(
        f.remote
            .log
            .iter()
            .any(|op| matches!(op, Op::Read(p) if p.ends_with("MANIFEST"))),
        "the second release was fetched: {:?}",
        f.remote.log
    );
    assert_eq!(narinfo_reads(&f), 0, "{:?}", f.remote.log);
    let nar_reads = f
        .remote
        .log
        .iter()
        .filter(|op| matches!(op, Op::Read(p) if p.contains("/cache/nar/")))
        .count();
    assert_eq!(
        nar_reads, 1,
        "the store still lacks the toplevel: its NAR is fetched"
    );
    let kept = std::fs::read_dir(f.cfg.state_dir.join("narinfo"))
        .unwrap()
        .count();
    assert_eq!(kept, 2, "one closure's narinfos, no more");
}

#[test]
fn a_narinfo_that_disagrees_with_its_nar_is_refused_before_anything_is_applied() {
    let mut f = Fixture::new();
    let calls = prebuilt_client(&mut f, &[PB_TOP, PB_DEP]);
    prebuilt_release(&mut f, Tamper::FileHash);
    let err = f.poll().unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Prebuilt(prebuilt::PrebuiltError::Mismatch { .. })
        ),
        "{err}"
    );
    assert!(!calls.exists(), "nothing imported or switched");
    assert!(
        !f.root().join("etc/app/secret").exists(),
        "files/ not deployed"
    );
    let report = f.report();
    assert_eq!(report.result, PullResult::Failed);
    let error = report.error.unwrap();
    assert!(error.contains("but the MANIFEST lists it as"), "{error}");
}

#[test]
fn a_prebuilt_release_without_a_cache_key_is_refused() {
    let mut f = Fixture::new();
    prebuilt_client(&mut f, &[PB_TOP]);
    f.cfg.prebuilt.cache_public_key = None;
    prebuilt_release(&mut f, Tamper::Nothing);
    let err = f.poll().unwrap_err();
    assert!(err.to_string().contains("cache_public_key"), "{err}");
    assert_eq!(f.report().result, PullResult::Failed);
}
