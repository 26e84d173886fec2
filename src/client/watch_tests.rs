//! Tests of the watch loop against the in-memory chroot: changes, triggers, the lock, reconnects, backoff.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::*;
use crate::client::transport::{StreamError, Wanted};
use crate::client::watch::{
    Checked, Connector, Ended, Pace, Stop, WatchOptions, Watcher, reconnect_delay, watch,
};

const HOUR: Duration = Duration::from_secs(3600);

fn current_reads(remote: &MemRemote) -> usize {
    remote
        .log
        .iter()
        .filter(|o| **o == Op::Read("/CURRENT".into()))
        .count()
}

fn rebuilds(f: &Fixture) -> usize {
    f.calls().lines().count()
}

/// One check with the fixture's remote, at `at`.
fn check(w: &mut Watcher<'_>, remote: &mut MemRemote, at: Instant) -> Checked {
    check_once(w, remote, at).unwrap()
}

#[test]
fn a_change_between_two_checks_is_applied_once() {
    let mut f = Fixture::new();
    let a = f.publish(&base_files());
    let (cfg, opts) = (f.cfg.clone(), f.opts.clone());
    let mut w = Watcher::new(&cfg, &opts, HOUR);
    let t0 = Instant::now();
    let first = check(&mut w, &mut f.remote, t0);
    assert!(
        matches!(first, Checked::Polled(Ok(Polled::Applied { ref id, .. })) if *id == a),
        "{first:?}"
    );
    f.remote.log.clear();
    // Idle: one read of /CURRENT, nothing written, no rebuild.
    for i in 1..=3 {
        let idle = check(&mut w, &mut f.remote, t0 + Duration::from_secs(i));
        assert!(matches!(idle, Checked::Idle), "{idle:?}");
    }
    assert_eq!(f.remote.log, vec![Op::Read("/CURRENT".into()); 3]);
    let mut files = base_files();
    files[3].1 = b"a = 2\n";
    let b = f.publish(&files);
    let changed = check(&mut w, &mut f.remote, t0 + Duration::from_secs(4));
    assert!(
        matches!(changed, Checked::Polled(Ok(Polled::Applied { ref id, .. })) if *id == b),
        "{changed:?}"
    );
    let after = check(&mut w, &mut f.remote, t0 + Duration::from_secs(5));
    assert!(matches!(after, Checked::Idle), "{after:?}");
    assert_eq!(rebuilds(&f), 2);
    assert_eq!(
        std::fs::read(f.root().join("etc/app/conf")).unwrap(),
        b"a = 2\n"
    );
}

#[test]
fn the_heartbeat_goes_out_once_per_poll_interval_not_per_check() {
    let mut f = Fixture::new();
    f.publish(&base_files());
    let (cfg, opts) = (f.cfg.clone(), f.opts.clone());
    let mut w = Watcher::new(&cfg, &opts, Duration::from_secs(60));
    let t0 = Instant::now();
    check(&mut w, &mut f.remote, t0);
    f.remote.log.clear();
    for s in 1..60 {
        let c = check(&mut w, &mut f.remote, t0 + Duration::from_secs(s));
        assert!(matches!(c, Checked::Idle), "{c:?}");
    }
    assert!(!f.remote.log.iter().any(|o| matches!(o, Op::Write(_))));
    let beat = check(&mut w, &mut f.remote, t0 + Duration::from_secs(60));
    assert!(
        matches!(beat, Checked::Polled(Ok(Polled::Unchanged { .. }))),
        "{beat:?}"
    );
    assert_eq!(f.report().result, PullResult::Unchanged);
    assert_eq!(rebuilds(&f), 1);
}

#[test]
fn a_release_held_by_a_pause_is_applied_at_the_first_check_after_resume() {
    let mut f = Fixture::new();
    let a = f.publish(&base_files());
    let (cfg, opts) = (f.cfg.clone(), f.opts.clone());
    let mut w = Watcher::new(&cfg, &opts, HOUR);
    let t0 = Instant::now();
    check(&mut w, &mut f.remote, t0);
    let p = crate::client::pause::Pause::new((opts.now)(), HOUR, None).unwrap();
    crate::client::pause::save(&cfg.state_dir, &p).unwrap();
    let mut files = base_files();
    files[3].1 = b"a = 2\n";
    let b = f.publish(&files);
    let held = check(&mut w, &mut f.remote, t0 + Duration::from_secs(1));
    assert!(
        matches!(held, Checked::Polled(Ok(Polled::Paused { .. }))),
        "{held:?}"
    );
    let still = check(&mut w, &mut f.remote, t0 + Duration::from_secs(2));
    assert!(matches!(still, Checked::Idle), "paused: {still:?}");
    assert!(crate::client::pause::remove(&cfg.state_dir).unwrap());
    // The next check, not the next heartbeat an hour later.
    let resumed = check(&mut w, &mut f.remote, t0 + Duration::from_secs(3));
    assert!(
        matches!(resumed, Checked::Polled(Ok(Polled::Applied { ref id, .. })) if *id == b),
        "{resumed:?}"
    );
    assert_ne!(a, b);
    assert!(
        f.report().paused_until.is_none(),
        "status no longer says paused"
    );
    let after = check(&mut w, &mut f.remote, t0 + Duration::from_secs(4));
    assert!(matches!(after, Checked::Idle), "{after:?}");
}

#[test]
fn a_reapply_trigger_restores_a_removed_file_once() {
    let mut f = Fixture::new();
    let a = f.publish(&base_files());
    let (cfg, opts) = (f.cfg.clone(), f.opts.clone());
    let mut w = Watcher::new(&cfg, &opts, HOUR);
    let t0 = Instant::now();
    check(&mut w, &mut f.remote, t0);
    std::fs::remove_file(f.root().join("etc/app/secret")).unwrap();
    f.remote
        .put("/CURRENT", format!("{a}\ntrigger 1800000000-1 reapply\n"));
    let c = check(&mut w, &mut f.remote, t0 + Duration::from_secs(1));
    assert!(
        matches!(c, Checked::Polled(Ok(Polled::Applied { ref id, .. })) if *id == a),
        "{c:?}"
    );
    assert_eq!(
        std::fs::read(f.root().join("etc/app/secret")).unwrap(),
        b"s3cret\n"
    );
    assert_eq!(rebuilds(&f), 2, "the rebuild ran again");
    assert_eq!(f.report().trigger.as_deref(), Some("1800000000-1"));
    assert_eq!(f.state().trigger.as_deref(), Some("1800000000-1"));
    // Handled once: the next checks are idle, and a heartbeat does not reapply it.
    let idle = check(&mut w, &mut f.remote, t0 + Duration::from_secs(2));
    assert!(matches!(idle, Checked::Idle), "{idle:?}");
    let beat = check(&mut w, &mut f.remote, t0 + HOUR * 2);
    assert!(
        matches!(beat, Checked::Polled(Ok(Polled::Unchanged { .. }))),
        "{beat:?}"
    );
    assert_eq!(rebuilds(&f), 2);
    assert_eq!(
        f.report().trigger.as_deref(),
        Some("1800000000-1"),
        "heartbeats keep naming it"
    );
}

#[test]
fn a_pull_trigger_retries_a_failed_release_despite_its_backoff() {
    let mut f = Fixture::new();
    let mut files = base_files();
    files.push(("config/broken", b"yes\n", 0o644));
    let id = f.publish(&files);
    assert!(f.poll().is_err());
    assert!(matches!(f.poll(), Err(PullError::BackingOff { .. })));
    let before = rebuilds(&f);
    f.remote
        .put("/CURRENT", format!("{id}\ntrigger 7-1 pull\n"));
    assert!(
        matches!(f.poll(), Err(PullError::Rebuild { .. })),
        "tried again"
    );
    assert_eq!(rebuilds(&f), before + 1);
    assert!(
        matches!(f.poll(), Err(PullError::BackingOff { .. })),
        "once"
    );
    assert_eq!(f.report().trigger.as_deref(), Some("7-1"));
}

#[test]
fn a_one_shot_pull_holding_the_lock_makes_the_check_wait() {
    let mut f = Fixture::new();
    f.publish(&base_files());
    let (cfg, opts) = (f.cfg.clone(), f.opts.clone());
    let mut w = Watcher::new(&cfg, &opts, HOUR);
    let lock = state::lock(&cfg.state_dir).unwrap();
    let t0 = Instant::now();
    let busy = check(&mut w, &mut f.remote, t0);
    assert!(matches!(busy, Checked::Busy), "{busy:?}");
    assert_eq!(rebuilds(&f), 0);
    drop(lock);
    let c = check(&mut w, &mut f.remote, t0 + Duration::from_secs(1));
    assert!(
        matches!(c, Checked::Polled(Ok(Polled::Applied { .. }))),
        "{c:?}"
    );
    // Idle, the watcher holds no lock: a one-shot pull takes it.
    assert!(matches!(
        check(&mut w, &mut f.remote, t0 + Duration::from_secs(2)),
        Checked::Idle
    ));
    drop(state::lock(&cfg.state_dir).unwrap());
}

/// A session over the shared in-memory chroot; `cut` makes every request fail as a lost link.
struct Session {
    chroot: Rc<RefCell<MemRemote>>,
    script: Rc<RefCell<Script>>,
}

/// What happens on the wire: at the `cut_at`-th read of `/CURRENT` the link drops and
/// `/CURRENT` becomes `then` (published while the client was away).
#[derive(Default)]
struct Script {
    cut: bool,
    current_reads: usize,
    cut_at: usize,
    then: Vec<u8>,
    connects: usize,
}

impl Session {
    fn lost(&self, path: &str) -> Result<(), RemoteError> {
        let mut s = self.script.borrow_mut();
        if path == "/CURRENT" {
            s.current_reads += 1;
            if s.current_reads == s.cut_at {
                s.cut = true;
                let then = s.then.clone();
                self.chroot.borrow_mut().put("/CURRENT", then);
            }
        }
        if s.cut {
            return Err(RemoteError::Lost {
                server: "mem".into(),
                path: path.into(),
            });
        }
        Ok(())
    }

    /// Runs `op` on the chroot without holding its borrow across an await.
    async fn with<T>(
        &self,
        op: impl AsyncFnOnce(&mut MemRemote) -> Result<T, RemoteError>,
    ) -> Result<T, RemoteError> {
        let mut chroot = std::mem::take(&mut *self.chroot.borrow_mut());
        let out = op(&mut chroot).await;
        *self.chroot.borrow_mut() = chroot;
        out
    }
}

impl Remote for Session {
    async fn read(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, RemoteError> {
        self.lost(path)?;
        self.with(async |c| c.read(path, limit).await).await
    }
    async fn read_files(&mut self, files: &[Wanted]) -> Result<Vec<Vec<u8>>, RemoteError> {
        self.lost("files")?;
        self.with(async |c| c.read_files(files).await).await
    }
    async fn read_into(
        &mut self,
        file: &Wanted,
        out: &mut dyn std::io::Write,
    ) -> Result<(), StreamError> {
        self.lost(&file.path)?;
        let mut chroot = std::mem::take(&mut *self.chroot.borrow_mut());
        let r = chroot.read_into(file, out).await;
        *self.chroot.borrow_mut() = chroot;
        r
    }
    async fn write_atomic(&mut self, path: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        self.lost(path)?;
        self.with(async |c| c.write_atomic(path, bytes).await).await
    }
}

struct Mem {
    chroot: Rc<RefCell<MemRemote>>,
    script: Rc<RefCell<Script>>,
}

impl Mem {
    /// The fixture's chroot behind a connector whose `cut_at`-th read of `/CURRENT` finds the
    /// link gone, after which `/CURRENT` is `then`.
    fn cutting(f: &mut Fixture, cut_at: usize, then: Vec<u8>) -> Mem {
        Mem {
            chroot: Rc::new(RefCell::new(std::mem::take(&mut f.remote))),
            script: Rc::new(RefCell::new(Script {
                cut_at,
                then,
                ..Script::default()
            })),
        }
    }
}

impl Connector for Mem {
    type Session = Session;
    async fn connect(&mut self) -> Result<Session, PullError> {
        let mut s = self.script.borrow_mut();
        s.connects += 1;
        // A new session works again (the link is back).
        s.cut = false;
        Ok(Session {
            chroot: self.chroot.clone(),
            script: self.script.clone(),
        })
    }
    async fn close(&mut self, _: Session) {}
}

#[test]
fn a_session_lost_during_the_poll_is_not_counted_as_seen() {
    let mut f = Fixture::new();
    let a = f.publish(&base_files());
    let then = f.remote.files["/CURRENT"].clone();
    // The check's read of /CURRENT works; the poll's own read of it finds the link gone.
    let mut mem = Mem::cutting(&mut f, 2, then);
    let (cfg, opts) = (f.cfg.clone(), f.opts.clone());
    let mut w = Watcher::new(&cfg, &opts, HOUR);
    let t0 = Instant::now();
    let mut session = block_on(mem.connect()).unwrap();
    let lost = block_on(w.check(&mut session, &mut mem, t0)).unwrap_err();
    assert_eq!(
        lost,
        RemoteError::Lost {
            server: "mem".into(),
            path: "/CURRENT".into()
        }
    );
    assert!(f.state().applied.is_none());
    let mut session = block_on(mem.connect()).unwrap();
    let c = block_on(w.check(&mut session, &mut mem, t0 + Duration::from_secs(1))).unwrap();
    assert!(
        matches!(c, Checked::Polled(Ok(Polled::Applied { ref id, .. })) if *id == a),
        "{c:?}"
    );
}

fn fast() -> Pace {
    Pace {
        interval: Duration::from_millis(1),
        heartbeat: HOUR,
        reconnect: (Duration::from_millis(1), Duration::from_millis(4)),
    }
}

#[test]
fn a_dropped_session_reconnects_and_applies_what_was_published_meanwhile() {
    let mut f = Fixture::new();
    let mut files = base_files();
    files[3].1 = b"a = 2\n";
    let b = f.publish_with_seq(&files, 2);
    let then = f.remote.files["/CURRENT"].clone();
    let a = f.publish_with_seq(&base_files(), 1);
    // Reads of /CURRENT: check 1, its poll, the poll's confirmation, then check 2 is cut.
    let mut mem = Mem::cutting(&mut f, 4, then);
    let (chroot, script) = (mem.chroot.clone(), mem.script.clone());
    let opts = WatchOptions {
        poll: &f.opts,
        pace: fast(),
        stop: Stop::default(),
        max_checks: Some(4),
        exit_on_change: Vec::new(),
    };
    let ended = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(watch(&mut mem, &f.cfg, &opts));
    assert_eq!(ended, Ended::Checks(4));
    // Two kept sessions, and a fresh one to confirm each apply.
    assert_eq!(script.borrow().connects, 4);
    let applied = f.state().applied.unwrap();
    assert_eq!((applied.id, applied.seq), (b.clone(), 2));
    assert_ne!(a, b);
    assert_eq!(rebuilds(&f), 2);
    assert_eq!(
        current_reads(&chroot.borrow()),
        7,
        "a, its poll, its confirmation, b, its poll, its confirmation, idle"
    );
}

#[test]
fn a_stop_request_ends_an_idle_watcher_at_once() {
    let mut f = Fixture::new();
    f.publish(&base_files());
    let chroot = Rc::new(RefCell::new(std::mem::take(&mut f.remote)));
    let script = Rc::new(RefCell::new(Script::default()));
    let mut mem = Mem { chroot, script };
    let stop = Stop::default();
    let mut pace = fast();
    pace.interval = HOUR;
    let opts = WatchOptions {
        poll: &f.opts,
        pace,
        stop: stop.clone(),
        max_checks: None,
        exit_on_change: Vec::new(),
    };
    let started = Instant::now();
    let ended = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(async {
            let asker = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                stop.request();
            };
            let (ended, ()) = tokio::join!(watch(&mut mem, &f.cfg, &opts), asker);
            ended
        });
    assert_eq!(ended, Ended::Stopped);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rebuilds(&f), 1, "the first check applied before the stop");
}

#[test]
fn a_unit_file_replaced_by_a_switch_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, unit) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("unit"),
    );
    std::fs::write(&old, "ExecStart=/nix/store/a-tiffin/bin/tiffin\n").unwrap();
    std::fs::write(&new, "ExecStart=/nix/store/b-tiffin/bin/tiffin\n").unwrap();
    std::os::unix::fs::symlink(&old, &unit).unwrap();
    let paths = vec![unit.clone()];
    let at_start = crate::client::watch::resolved(&paths);
    assert_eq!(crate::client::watch::changed(&paths, &at_start), None);
    // What a switch does: the link now leads to the new unit in the store.
    std::fs::remove_file(&unit).unwrap();
    std::os::unix::fs::symlink(&new, &unit).unwrap();
    assert_eq!(crate::client::watch::changed(&paths, &at_start), Some(unit));
}

/// A server that never answers the connection attempt.
struct Silent;

impl Connector for Silent {
    type Session = MemRemote;
    async fn connect(&mut self) -> Result<MemRemote, PullError> {
        std::future::pending().await
    }
    async fn close(&mut self, _: MemRemote) {}
}

#[test]
fn a_stop_request_does_not_wait_for_a_connection_attempt() {
    let f = Fixture::new();
    let stop = Stop::default();
    let opts = WatchOptions {
        poll: &f.opts,
        pace: fast(),
        stop: stop.clone(),
        max_checks: None,
        exit_on_change: Vec::new(),
    };
    let ended = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(async {
            let asker = async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                stop.request();
            };
            let mut silent = Silent;
            let (ended, ()) = tokio::join!(watch(&mut silent, &f.cfg, &opts), asker);
            ended
        });
    assert_eq!(ended, Ended::Stopped);
}

#[test]
fn reconnect_backoff_is_capped_and_jittered() {
    let b = (Duration::from_secs(1), Duration::from_secs(60));
    assert_eq!(reconnect_delay(1, b, 0.0), Duration::from_millis(500));
    assert_eq!(
        reconnect_delay(1, b, 0.999_999),
        Duration::from_micros(999_999) + Duration::from_nanos(500)
    );
    assert_eq!(reconnect_delay(3, b, 0.0), Duration::from_secs(2));
    for failures in [7, 8, 50, u32::MAX] {
        for jitter in [0.0, 0.3, 0.999, 5.0, -1.0, f64::NAN] {
            let d = reconnect_delay(failures, b, jitter);
            assert!(
                d >= Duration::from_secs(30) && d <= Duration::from_secs(60),
                "{failures} {jitter} {d:?}"
            );
        }
    }
    assert_ne!(
        reconnect_delay(9, b, 0.1),
        reconnect_delay(9, b, 0.9),
        "jitter spreads a fleet"
    );
}

proptest! {
    #[test]
    fn reconnect_delay_stays_within_half_and_all_of_its_cap(failures in 1u32.., jitter in 0.0f64..1.0) {
        let b = (Duration::from_secs(1), Duration::from_secs(60));
        let d = reconnect_delay(failures, b, jitter);
        let base = Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(b.1);
        prop_assert!(d >= base / 2 && d <= base, "{:?} {:?}", d, base);
    }
}
