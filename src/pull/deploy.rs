//! Copies a release's `files/` into `root`, atomically per file, never outside `root`, and retires files a newer release drops.
//!
//! Every directory is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! from a descriptor of `root`, so neither `..` nor a symlink planted on the
//! client (`root/etc -> /`) can lead a write elsewhere. A target that is itself
//! a symlink is replaced by the rename, never followed.
//!
//! Dropped files: `state_dir/deployed.toml` records every file tiffin wrote,
//! its sha256, and whether tiffin created it (no file was there before). When a
//! newer release no longer contains a path, tiffin deletes it only if it created
//! it and its content is unchanged since; otherwise the file is left in place
//! (and no longer managed), with a warning. Directories are never deleted.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode as FsMode, OFlags, ResolveFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::names::RelPath;
use crate::release::{FILES_DIR, FileEntry, Manifest, Sha256Hex};

use super::state::{StateError, write_file_atomic};

pub const DEPLOYED_FILE: &str = "deployed.toml";
const DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(
        "refusing to deploy {path}: {why}; nothing was deployed. Remove or fix it on this machine (tiffin never writes through symlinks or outside {root})"
    )]
    Unsafe {
        root: PathBuf,
        path: String,
        why: String,
    },
    #[error("deploying {path} into {root}: {source}")]
    Io {
        root: PathBuf,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Record(#[from] StateError),
}

/// One file tiffin wrote into `root`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployed {
    pub path: RelPath,
    pub sha256: Sha256Hex,
    /// No file existed at `path` before tiffin first wrote it: only those may be deleted.
    pub created: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    #[serde(default, rename = "file")]
    pub files: Vec<Deployed>,
}

impl Record {
    pub fn load(state_dir: &Path) -> Result<Record, StateError> {
        let path = state_dir.join(DEPLOYED_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| StateError::Invalid {
                path,
                message: crate::diag::toml_message(&e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }
    pub fn save(&self, state_dir: &Path) -> Result<(), StateError> {
        let text = toml::to_string(self).expect("record always serializes");
        write_file_atomic(&state_dir.join(DEPLOYED_FILE), text.as_bytes(), 0o600)
    }
}

/// What a deploy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployStats {
    pub written: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// Dropped from the release but left in place (not created by tiffin, or changed since).
    pub kept: Vec<String>,
}

/// Where to deploy: `root`, the verified release holding the content, tiffin's record.
#[derive(Debug, Clone)]
pub struct DeployOptions<'a> {
    pub root: &'a Path,
    pub release_dir: &'a Path,
    pub state_dir: &'a Path,
    /// Set owner root:root (when running as root; tests as a user keep their own).
    pub chown_root: bool,
}

/// The `files/` entries of a manifest, with their path below `root`.
fn targets(manifest: &Manifest) -> Vec<(RelPath, &FileEntry)> {
    manifest
        .files
        .iter()
        .filter(|f| f.path.first() == FILES_DIR)
        .filter_map(|f| Some((f.path.strip_first()?, f)))
        .collect()
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

pub fn deploy(manifest: &Manifest, opts: &DeployOptions) -> Result<DeployStats, DeployError> {
    let root = opts.root;
    let io = |path: &RelPath| {
        let path = path.to_string();
        move |e: std::io::Error| DeployError::Io {
            root: root.to_owned(),
            path,
            source: e,
        }
    };
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        FsMode::empty(),
    )
    .map_err(|e| DeployError::Io {
        root: root.to_owned(),
        path: ".".into(),
        source: e.into(),
    })?;
    let targets = targets(manifest);
    // Check everything first: one unsafe path and nothing is deployed.
    for (rel, _) in &targets {
        check_target(&root_fd, rel).map_err(|why| DeployError::Unsafe {
            root: root.to_owned(),
            path: rel.to_string(),
            why,
        })?;
    }

    let mut record = Record::load(opts.state_dir)?;
    let previous: BTreeMap<RelPath, Deployed> = record
        .files
        .drain(..)
        .map(|d| (d.path.clone(), d))
        .collect();
    let mut stats = DeployStats::default();
    let mut now_deployed = Vec::new();
    let mut write_all = || -> Result<(), DeployError> {
        for (rel, entry) in &targets {
            let dir = open_parent(&root_fd, rel, true).map_err(|e| match e {
                Walk::Unsafe(why) => DeployError::Unsafe {
                    root: root.to_owned(),
                    path: rel.to_string(),
                    why,
                },
                Walk::Io(e) => io(rel)(e),
            })?;
            let name = rel.components().last().unwrap_or_default();
            let existing = inspect(&dir, name).map_err(io(rel))?;
            let created = match previous.get(rel) {
                Some(p) => p.created,
                None => matches!(existing, Existing::Absent),
            };
            now_deployed.push(Deployed {
                path: rel.clone(),
                sha256: entry.sha256.clone(),
                created,
            });
            if let Existing::Regular {
                sha,
                mode,
                owner_root,
            } = &existing
                && sha == &entry.sha256
                && *mode == entry.mode.bits()
                && (*owner_root || !opts.chown_root)
            {
                stats.unchanged += 1;
                continue;
            }
            let src = entry.path.under(opts.release_dir);
            let bytes = std::fs::read(&src).map_err(io(rel))?;
            write_atomic(&dir, name, &bytes, entry.mode.bits(), opts.chown_root)
                .map_err(io(rel))?;
            stats.written += 1;
        }
        Ok(())
    };
    if let Err(e) = write_all() {
        // Remember what this run wrote and what earlier runs did, so no file tiffin
        // created is ever forgotten (and so never retired) after a partial deploy.
        let done: std::collections::BTreeSet<RelPath> =
            now_deployed.iter().map(|d| d.path.clone()).collect();
        record.files = now_deployed;
        record
            .files
            .extend(previous.into_values().filter(|d| !done.contains(&d.path)));
        if let Err(save) = record.save(opts.state_dir) {
            tracing::warn!(
                "after a failed deploy, the record of deployed files could not be saved: {save}"
            );
        }
        return Err(e);
    }

    let wanted: std::collections::BTreeSet<&RelPath> = targets.iter().map(|(r, _)| r).collect();
    for (rel, old) in &previous {
        if wanted.contains(rel) {
            continue;
        }
        match retire(&root_fd, rel, old) {
            Ok(true) => stats.removed += 1,
            Ok(false) => {
                tracing::warn!(
                    "{} is no longer in the release; left in place because tiffin did not create it or it changed since",
                    rel
                );
                stats.kept.push(rel.to_string());
            }
            Err(e) => {
                tracing::warn!("{rel} is no longer in the release; could not remove it: {e}");
                stats.kept.push(rel.to_string());
            }
        }
    }
    record.files = now_deployed;
    record.save(opts.state_dir)?;
    Ok(stats)
}

enum Walk {
    Unsafe(String),
    Io(std::io::Error),
}

fn why(e: Errno, comp: &str) -> Walk {
    match e {
        Errno::LOOP | Errno::XDEV | Errno::NOTDIR => Walk::Unsafe(format!(
            "{comp:?} on this machine is a symlink or not a directory"
        )),
        e => Walk::Io(e.into()),
    }
}

/// Opens the directory that will hold `rel`, one component at a time, creating missing ones when asked.
fn open_parent(root: &OwnedFd, rel: &RelPath, create: bool) -> Result<Option<OwnedFd>, Walk> {
    let comps: Vec<&str> = rel.components().collect();
    let mut cur = rustix::io::dup(root).map_err(|e| Walk::Io(e.into()))?;
    for comp in &comps[..comps.len() - 1] {
        let open = |dir: &OwnedFd| {
            rustix::fs::openat2(
                dir,
                *comp,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                FsMode::empty(),
                BENEATH,
            )
        };
        cur = match open(&cur) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&cur, *comp, FsMode::from_raw_mode(DIR_MODE)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(why(e, comp)),
                }
                open(&cur).map_err(|e| why(e, comp))?
            }
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(why(e, comp)),
        };
    }
    Ok(Some(cur))
}

/// Refuses a target whose existing parents are not plain directories, or that is itself a directory.
fn check_target(root: &OwnedFd, rel: &RelPath) -> Result<(), String> {
    match open_parent(root, rel, false) {
        Err(Walk::Unsafe(why)) => Err(why),
        Err(Walk::Io(e)) => Err(e.to_string()),
        Ok(None) => Ok(()),
        Ok(Some(dir)) => {
            let name = rel.components().last().unwrap_or_default();
            match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    Err("a directory exists there".into())
                }
                _ => Ok(()),
            }
        }
    }
}

enum Existing {
    Absent,
    /// A regular file, hashed.
    Regular {
        sha: Sha256Hex,
        mode: u32,
        owner_root: bool,
    },
    Other,
}

fn inspect(dir: &Option<OwnedFd>, name: &str) -> std::io::Result<Existing> {
    let Some(dir) = dir else {
        return Ok(Existing::Absent);
    };
    // Look before opening: opening a planted device or FIFO could have effects of its own.
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
        Ok(_) => return Ok(Existing::Other),
        Err(Errno::NOENT) => return Ok(Existing::Absent),
        Err(e) => return Err(e.into()),
    }
    let fd = match rustix::fs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        FsMode::empty(),
        BENEATH,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Existing::Absent),
        // A symlink or something we must not open: it will be replaced, never followed.
        Err(_) => return Ok(Existing::Other),
    };
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Ok(Existing::Other);
    }
    let sha = hash_fd(fd)?;
    Ok(Existing::Regular {
        sha,
        mode: st.st_mode & 0o7777,
        owner_root: st.st_uid == 0 && st.st_gid == 0,
    })
}

fn hash_fd(fd: OwnedFd) -> std::io::Result<Sha256Hex> {
    let (sha, _) = crate::hash::sha256_reader(std::fs::File::from(fd), std::io::sink())?;
    Ok(Sha256Hex::new(sha).expect("hex of a digest"))
}

/// Temp name in the target directory, content, mode, owner, fsync, rename over the target, fsync the directory.
fn write_atomic(
    dir: &Option<OwnedFd>,
    name: &str,
    bytes: &[u8],
    mode: u32,
    chown_root: bool,
) -> std::io::Result<()> {
    let Some(dir) = dir else {
        return Err(std::io::Error::other("parent directory vanished"));
    };
    let tmp = format!(".{name}.tiffin-{}", std::process::id());
    let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
    let fd = rustix::fs::openat2(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        FsMode::from_raw_mode(0o600),
        BENEATH,
    )?;
    let result = (|| {
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes)?;
        if chown_root {
            rustix::fs::fchown(
                &file,
                Some(rustix::fs::Uid::ROOT),
                Some(rustix::fs::Gid::ROOT),
            )?;
        }
        // After chown, which clears set-id bits.
        rustix::fs::fchmod(&file, FsMode::from_raw_mode(mode))?;
        file.sync_all()?;
        rustix::fs::renameat(dir, tmp.as_str(), dir, name)?;
        rustix::fs::fsync(dir)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
    }
    result
}

/// Deletes a dropped file if tiffin created it and it is unchanged; `Ok(false)` when it must stay.
fn retire(root: &OwnedFd, rel: &RelPath, old: &Deployed) -> std::io::Result<bool> {
    if !old.created {
        return Ok(false);
    }
    let dir = match open_parent(root, rel, false) {
        Ok(Some(d)) => Some(d),
        Ok(None) => return Ok(true),
        Err(Walk::Unsafe(_)) => return Ok(false),
        Err(Walk::Io(e)) => return Err(e),
    };
    let name = rel.components().last().unwrap_or_default();
    match inspect(&dir, name)? {
        Existing::Absent => Ok(true),
        Existing::Regular { sha, .. } if sha == old.sha256 => {
            let dir = dir.expect("inspected inside it");
            rustix::fs::unlinkat(&dir, name, AtFlags::empty())?;
            rustix::fs::fsync(&dir)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha256_hex;
    use crate::release::{FileEntry, Mode, Sha256Hex};
    use crate::settings::ApplyPolicy;

    fn manifest(files: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            host: "client1".parse().unwrap(),
            seq: 1,
            created: "2026-11-24T00:00:00Z".into(),
            apply: ApplyPolicy::default(),
            files: files
                .iter()
                .map(|(p, c)| FileEntry {
                    path: p.parse().unwrap(),
                    size: c.len() as u64,
                    mode: Mode::new(0o644).unwrap(),
                    sha256: Sha256Hex::new(sha256_hex(c)).unwrap(),
                })
                .collect(),
        }
    }

    /// A deploy that fails half-way still records the files it created, so a later
    /// release that drops them removes them instead of leaving them forever.
    #[test]
    fn a_partial_deploy_remembers_what_it_created() {
        let tmp = tempfile::TempDir::new().unwrap();
        let (root, release, state) = (
            tmp.path().join("root"),
            tmp.path().join("rel"),
            tmp.path().join("state"),
        );
        for d in [&root, &state, &release.join("files/etc")] {
            std::fs::create_dir_all(d).unwrap();
        }
        // files/etc/a is in the release; files/etc/b is missing from it, so its copy fails.
        std::fs::write(release.join("files/etc/a"), b"a\n").unwrap();
        let m = manifest(&[("files/etc/a", b"a\n"), ("files/etc/b", b"b\n")]);
        let opts = DeployOptions {
            root: &root,
            release_dir: &release,
            state_dir: &state,
            chown_root: false,
        };
        deploy(&m, &opts).unwrap_err();
        assert!(root.join("etc/a").exists());
        let record = Record::load(&state).unwrap();
        let a = record
            .files
            .iter()
            .find(|d| d.path.as_str() == "etc/a")
            .expect("etc/a is recorded");
        assert!(a.created, "tiffin created etc/a");

        // The next release drops etc/a: tiffin created it and it is unchanged, so it goes.
        std::fs::write(release.join("files/etc/b"), b"b\n").unwrap();
        let stats = deploy(&manifest(&[("files/etc/b", b"b\n")]), &opts).unwrap();
        assert_eq!(stats.removed, 1);
        assert!(!root.join("etc/a").exists());
    }
}
