//! `tiffin publish`: turn each host's directory into an immutable release in its chroot, atomically.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::diag::Problem;
use crate::durable;
use crate::fleet::{Fleet, Host};
use crate::hash::sha256_reader;
use crate::host_tree::{self, SourceFile};
use crate::layout::{CURRENT_FILE, ChrootPaths, SERVER_DIR_MODE, SERVER_FILE_MODE, list_releases};
use crate::names::{HostName, ReleaseId};
use crate::release::{FileEntry, MANIFEST_FILE, Manifest, ManifestHead};
use crate::settings::format_time;

/// Errors of publishing one host.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("host {host}: the fleet repository has problems (run `tiffin check`):\n{}", problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        host: HostName,
        problems: Vec<Problem>,
    },
    #[error("host {host}: {step} {path}: {source}")]
    Io {
        host: HostName,
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host {host}: the current release {id} is unreadable: {message}")]
    BrokenCurrent {
        host: HostName,
        id: String,
        message: String,
    },
    #[error("host {host}: injected fault ({0:?})", .fault)]
    Injected { host: HostName, fault: Fault },
}

/// Points where tests make publishing fail, to prove a failure leaves the previous state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// After writing this many files of the release.
    AfterFiles(usize),
    /// With the release complete in staging, before it is renamed into `releases/`.
    BeforeReleaseRename,
    /// With the release in `releases/`, before `CURRENT` is swapped.
    BeforeCurrentSwap,
}

#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub chroot_root: PathBuf,
    pub dry_run: bool,
    pub keep_releases: usize,
    pub now: SystemTime,
    /// Test hook; `None` in real use.
    pub fault: Option<Fault>,
}

/// What publishing did (or, with `--dry-run`, would do) for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged {
        id: ReleaseId,
        seq: u64,
    },
    Published {
        id: ReleaseId,
        seq: u64,
        change: Change,
        pruned: usize,
        dry_run: bool,
    },
}

/// How a new release differs from the previous one, counted in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub first: bool,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first {
            return write!(f, "first release, {} files", self.added);
        }
        let mut parts = Vec::new();
        for (n, what) in [
            (self.added, "added"),
            (self.changed, "changed"),
            (self.removed, "removed"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if parts.is_empty() {
            write!(f, "apply policy changed")
        } else {
            write!(f, "{}", parts.join(", "))
        }
    }
}

/// Publishes one host: unchanged trees write nothing; otherwise a new release
/// is staged, fsynced, renamed into `releases/`, and `CURRENT` swapped by rename.
pub fn publish_host(
    fleet: &Fleet,
    host: &Host,
    opts: &PublishOptions,
) -> Result<Outcome, PublishError> {
    let name = &host.name;
    let sources = host_tree::resolve_host_tree(&fleet.root, name).map_err(|problems| {
        PublishError::Invalid {
            host: name.clone(),
            problems,
        }
    })?;
    let paths = ChrootPaths::new(&opts.chroot_root, name);
    let current_id = paths
        .read_current()
        .map_err(io_error(name, "reading", &paths.current()))?;
    let entries =
        host_tree::hash_tree(&sources).map_err(io_error(name, "hashing", &fleet.host_dir(name)))?;
    let mut candidate = Manifest {
        host: name.clone(),
        seq: 0,
        created: format_time(opts.now),
        apply: host.apply.clone(),
        files: entries,
    };
    let broken = |id: &ReleaseId| {
        let (host, id) = (name.clone(), id.to_string());
        move |message: String| PublishError::BrokenCurrent { host, id, message }
    };
    let previous = match &current_id {
        Some(id) => {
            let bytes = fs::read(paths.release(id).join(MANIFEST_FILE))
                .map_err(|e| broken(id)(e.to_string()))?;
            // Cheap no-change test for big fleets: the candidate rendered with the current
            // release's header has the current id exactly when nothing changed.
            let head = ManifestHead::parse(&bytes).map_err(|e| broken(id)(e.to_string()))?;
            let same_header = Manifest {
                seq: head.seq,
                created: head.created,
                ..candidate.clone()
            };
            if &same_header.id() == id {
                return Ok(Outcome::Unchanged {
                    id: id.clone(),
                    seq: head.seq,
                });
            }
            Some(Manifest::parse_verified(&bytes, id).map_err(|e| broken(id)(e.to_string()))?)
        }
        None => None,
    };
    candidate.seq = next_seq(&paths, previous.as_ref());
    let change = diff(previous.as_ref(), &candidate);
    if opts.dry_run {
        return Ok(Outcome::Published {
            id: candidate.id(),
            seq: candidate.seq,
            change,
            pruned: 0,
            dry_run: true,
        });
    }

    let group = host_group(fleet, name);
    if !opts.chroot_root.is_dir() {
        fs::create_dir_all(&opts.chroot_root).map_err(io_error(
            name,
            "creating",
            &opts.chroot_root,
        ))?;
    }
    for dir in [&paths.root, &paths.releases()] {
        ensure_dir(dir, SERVER_DIR_MODE, group).map_err(io_error(name, "creating", dir))?;
    }
    let staging = paths.staging();
    // Left over by an interrupted publish; never visible to the client.
    let _ = fs::remove_dir_all(&staging);
    ensure_dir(&staging, 0o700, None).map_err(io_error(name, "creating", &staging))?;

    let result = stage_and_swap(
        &paths,
        &sources,
        previous.as_ref(),
        current_id.as_ref(),
        candidate,
        group,
        opts,
    );
    let _ = fs::remove_dir_all(&staging);
    let (id, seq) = result?;
    let pruned = prune(&paths, &id, opts.keep_releases).map_err(io_error(
        name,
        "pruning",
        &paths.releases(),
    ))?;
    Ok(Outcome::Published {
        id,
        seq,
        change,
        pruned,
        dry_run: false,
    })
}

fn stage_and_swap(
    paths: &ChrootPaths,
    sources: &[SourceFile],
    previous: Option<&Manifest>,
    previous_id: Option<&ReleaseId>,
    mut manifest: Manifest,
    group: Option<u32>,
    opts: &PublishOptions,
) -> Result<(ReleaseId, u64), PublishError> {
    let host = manifest.host.clone();
    let fault = |f: Fault| {
        if opts.fault == Some(f) {
            Err(PublishError::Injected {
                host: host.clone(),
                fault: f,
            })
        } else {
            Ok(())
        }
    };
    let tmp = paths.staging().join(format!("release-{}", manifest.seq));
    ensure_dir(&tmp, SERVER_DIR_MODE, group).map_err(io_error(&host, "creating", &tmp))?;

    // Unchanged files are hard links to the previous release (immutable, so sharing is safe).
    let reusable: HashMap<&str, &FileEntry> = match (previous, previous_id) {
        (Some(p), Some(_)) => p.files.iter().map(|f| (f.path.as_str(), f)).collect(),
        _ => HashMap::new(),
    };
    let mut entries = Vec::with_capacity(sources.len());
    for (i, src) in sources.iter().enumerate() {
        fault(Fault::AfterFiles(i))?;
        let dest = src.release_path.under(&tmp);
        if let Some(parent) = dest.parent() {
            ensure_dir_all(&tmp, parent, group).map_err(io_error(&host, "creating", parent))?;
        }
        let hashed = manifest
            .files
            .iter()
            .find(|f| f.path == src.release_path)
            .cloned()
            .expect("manifest built from the same sources");
        let linked = match (reusable.get(src.release_path.as_str()), previous_id) {
            (Some(old), Some(old_id)) if old.sha256 == hashed.sha256 && old.size == hashed.size => {
                fs::hard_link(src.release_path.under(&paths.release(old_id)), &dest).is_ok()
            }
            _ => false,
        };
        let entry = if linked {
            FileEntry {
                mode: src.mode,
                ..hashed
            }
        } else {
            // Hash what is written, not what was read earlier: the admin may be editing.
            copy_hashing(&src.source, &dest, group)
                .map_err(io_error(&host, "writing", &dest))?
                .into_entry(src)
        };
        entries.push(entry);
    }
    fault(Fault::AfterFiles(sources.len()))?;
    manifest.files = entries;
    let text = manifest.render();
    let id = ReleaseId::of_bytes(text.as_bytes());
    let manifest_path = tmp.join(MANIFEST_FILE);
    durable::create_synced(
        &manifest_path,
        text.as_bytes(),
        SERVER_FILE_MODE,
        owner_of(group),
    )
    .map_err(io_error(&host, "writing", &manifest_path))?;
    durable::sync_tree(&tmp).map_err(io_error(&host, "syncing", &tmp))?;
    fault(Fault::BeforeReleaseRename)?;

    let final_dir = paths.release(&id);
    fs::rename(&tmp, &final_dir).map_err(io_error(&host, "renaming into place", &final_dir))?;
    durable::sync_dir(&paths.releases()).map_err(io_error(&host, "syncing", &paths.releases()))?;
    fault(Fault::BeforeCurrentSwap)?;

    let current_tmp = paths.staging().join(CURRENT_FILE);
    // A crash between writing and renaming leaves it behind; it was never visible to anyone.
    let _ = fs::remove_file(&current_tmp);
    durable::create_synced(
        &current_tmp,
        format!("{id}\n").as_bytes(),
        SERVER_FILE_MODE,
        owner_of(group),
    )
    .map_err(io_error(&host, "writing", &current_tmp))?;
    fs::rename(&current_tmp, paths.current()).map_err(io_error(
        &host,
        "swapping",
        &paths.current(),
    ))?;
    durable::sync_dir(&paths.root).map_err(io_error(&host, "syncing", &paths.root))?;
    Ok((id, manifest.seq))
}

/// Turns an io::Error into a PublishError naming the host, the step and the path.
fn io_error(
    host: &HostName,
    step: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> PublishError + use<> {
    let (host, path) = (host.clone(), path.to_owned());
    move |source| PublishError::Io {
        host,
        step,
        path,
        source,
    }
}

struct Copied {
    sha256: String,
    size: u64,
}

impl Copied {
    fn into_entry(self, src: &SourceFile) -> FileEntry {
        FileEntry {
            path: src.release_path.clone(),
            size: self.size,
            mode: src.mode,
            sha256: crate::release::Sha256Hex::new(self.sha256).expect("hex of a digest"),
        }
    }
}

fn copy_hashing(src: &Path, dest: &Path, group: Option<u32>) -> std::io::Result<Copied> {
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(SERVER_FILE_MODE)
        .open(dest)?;
    let (sha256, size) = sha256_reader(fs::File::open(src)?, &mut out)?;
    durable::finish(&out, SERVER_FILE_MODE, owner_of(group))?;
    Ok(Copied { sha256, size })
}

/// Creates `dir` (one level) with `mode` and, as root, owner root and the host's group.
pub fn ensure_dir(dir: &Path, mode: u32, group: Option<u32>) -> std::io::Result<()> {
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
            if let Some(gid) = group {
                std::os::unix::fs::chown(dir, Some(0), Some(gid))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

fn ensure_dir_all(base: &Path, dir: &Path, group: Option<u32>) -> std::io::Result<()> {
    if dir == base || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir_all(base, parent, group)?;
    }
    ensure_dir(dir, SERVER_DIR_MODE, group)
}

/// The host's group on the server, when we can and should chown to it.
fn host_group(fleet: &Fleet, host: &HostName) -> Option<u32> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let account = fleet.account_name(host);
    match nix::unistd::Group::from_name(&account) {
        Ok(Some(g)) => Some(g.gid.as_raw()),
        _ => {
            tracing::debug!(
                "host {host}: group {account} does not exist, so its release stays root-only until `tiffin provision` runs"
            );
            Some(0)
        }
    }
}

fn next_seq(paths: &ChrootPaths, previous: Option<&Manifest>) -> u64 {
    // A release newer than CURRENT can exist if CURRENT was rolled back by hand; never reuse its seq.
    let newest_listed = list_releases(paths)
        .into_iter()
        .map(|(_, seq)| seq)
        .max()
        .unwrap_or(0);
    previous.map_or(0, |p| p.seq).max(newest_listed) + 1
}

/// Removes all but the newest `keep` releases, never the current one.
fn prune(paths: &ChrootPaths, current: &ReleaseId, keep: usize) -> std::io::Result<usize> {
    let mut releases = list_releases(paths);
    releases.sort_by_key(|r| std::cmp::Reverse(r.1));
    let mut pruned = 0;
    for (id, _) in releases.into_iter().skip(keep.max(1)) {
        if &id != current {
            fs::remove_dir_all(paths.release(&id))?;
            pruned += 1;
        }
    }
    Ok(pruned)
}

fn diff(previous: Option<&Manifest>, next: &Manifest) -> Change {
    let Some(prev) = previous else {
        return Change {
            added: next.files.len(),
            first: true,
            ..Change::default()
        };
    };
    let old: HashMap<&str, &FileEntry> = prev.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut change = Change::default();
    for f in &next.files {
        match old.get(f.path.as_str()) {
            None => change.added += 1,
            Some(o) if *o != f => change.changed += 1,
            Some(_) => {}
        }
    }
    let new: std::collections::HashSet<&str> = next.files.iter().map(|f| f.path.as_str()).collect();
    change.removed = prev
        .files
        .iter()
        .filter(|f| !new.contains(f.path.as_str()))
        .count();
    change
}

/// Why a host directory did not load, for a host that was selected but is not in the fleet.
fn problems_of(fleet: &Fleet, name: &HostName) -> Vec<Problem> {
    let mut problems: Vec<Problem> = fleet
        .problems
        .iter()
        .filter(|p| p.host.as_ref() == Some(name))
        .cloned()
        .collect();
    if problems.is_empty() {
        problems = host_tree::resolve_host_tree(&fleet.root, name)
            .err()
            .unwrap_or_else(|| {
                vec![Problem::error(
                    Some(name),
                    Path::new("hosts").join(name.as_str()),
                    "this host did not load",
                )]
            });
    }
    problems
}

/// Takes the publish lock of a chroot root (creating the root when missing), so two
/// `tiffin publish` runs never interleave on one chroot root; held until dropped.
pub fn lock_chroot_root(chroot_root: &Path) -> Result<durable::Lock, String> {
    fs::create_dir_all(chroot_root).map_err(|e| e.to_string())?;
    durable::Lock::try_exclusive(&chroot_root.join(".publish.lock")).map_err(|e| match e {
        durable::LockError::Busy { path } => format!(
            "another `tiffin publish` holds {}; wait for it to finish",
            path.display()
        ),
        e => e.to_string(),
    })
}

/// Release files belong to root and the host's group; without root (tests) to the caller.
fn owner_of(group: Option<u32>) -> durable::Owner {
    group.map_or(durable::Owner::Caller, durable::Owner::RootGroup)
}

/// Publishes `hosts` in parallel (hashing dominates); results in host order.
pub fn publish_all(
    fleet: &Fleet,
    hosts: &[HostName],
    opts: &PublishOptions,
) -> Vec<(HostName, Result<Outcome, PublishError>)> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(hosts.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Result<Outcome, PublishError>>> =
        (0..hosts.len()).map(|_| None).collect();
    let slots = std::sync::Mutex::new(&mut results);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(name) = hosts.get(i) else { break };
                    let result = match fleet.hosts.get(name) {
                        Some(host) => publish_host(fleet, host, opts),
                        None => Err(PublishError::Invalid {
                            host: name.clone(),
                            problems: problems_of(fleet, name),
                        }),
                    };
                    slots.lock().expect("no panics while holding")[i] = Some(result);
                }
            });
        }
    });
    hosts
        .iter()
        .cloned()
        .zip(results.into_iter().map(|r| r.expect("every host visited")))
        .collect()
}
