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
//!
//! Stages: a file is deployed before the rebuild (`stage = "before"`, the default) or after
//! a successful activation (`"after"`), each stage on its own call. Owner and group names
//! are resolved in this machine's user database when their stage runs, all of them before
//! the first file of the stage is written, so a missing account leaves the stage untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode as FsMode, SFlag};
use nix::unistd::UnlinkatFlags;
use serde::{Deserialize, Serialize};

use crate::core::durable::{self, Owner};
use crate::core::names::AccountName;
use crate::core::names::RelPath;
use crate::core::release::{FILES_DIR, FileEntry, Manifest, Sha256Hex, Stage};

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
    #[error(
        "cannot deploy /{path}: its {what} \"{name}\" does not exist on this machine; nothing of the files deployed {} was written. Create the account in the host's configuration (with stage = \"after\" on the file when the new configuration creates it), or fix files.{path:?}.{what} in the host's host.toml",
        stage.when()
    )]
    UnknownAccount {
        path: String,
        what: Account,
        name: AccountName,
        stage: Stage,
    },
    #[error("cannot look up the {what} \"{name}\" of /{path}: {source}")]
    Lookup {
        path: String,
        what: Account,
        name: AccountName,
        #[source]
        source: Errno,
    },
}

/// Which of a file's accounts a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    Owner,
    Group,
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Account::Owner => "owner",
            Account::Group => "group",
        })
    }
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
                message: crate::core::diag::toml_message(&e),
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
    /// The files written because their content, mode or owner differed (their units restart).
    pub changed: Vec<RelPath>,
}

impl DeployStats {
    /// Adds what a later stage did.
    pub fn absorb(&mut self, later: DeployStats) {
        self.written += later.written;
        self.unchanged += later.unchanged;
        self.removed += later.removed;
        self.kept.extend(later.kept);
        self.changed.extend(later.changed);
    }
}

/// Where to deploy: `root`, the verified release holding the content, tiffin's record.
#[derive(Debug, Clone)]
pub struct DeployOptions<'a> {
    pub root: &'a Path,
    pub release_dir: &'a Path,
    pub state_dir: &'a Path,
    /// `Owner::Root` in real use; tests as a user keep their own (`Owner::Caller`).
    pub owner: Owner,
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

const BENEATH: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// Both stages at once, for a caller with no rebuild between them.
pub fn deploy(manifest: &Manifest, opts: &DeployOptions) -> Result<DeployStats, DeployError> {
    let mut stats = deploy_stage(manifest, opts, Stage::Before)?;
    stats.absorb(deploy_stage(manifest, opts, Stage::After)?);
    Ok(stats)
}

/// Checks every target, resolves the owners of `stage`'s files, writes those that changed,
/// retires the dropped ones (in the first stage), saves the record.
pub fn deploy_stage(
    manifest: &Manifest,
    opts: &DeployOptions,
    stage: Stage,
) -> Result<DeployStats, DeployError> {
    let root = nix::fcntl::open(
        opts.root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        FsMode::empty(),
    )
    .map_err(|e| DeployError::Io {
        root: opts.root.to_owned(),
        path: ".".into(),
        source: e.into(),
    })?;
    let all = targets(manifest);
    // Check everything first: one unsafe path and nothing is deployed.
    for (rel, _) in &all {
        check_target(&root, opts.root, rel).map_err(|why| unsafe_path(opts.root, rel, why))?;
    }
    let staged: Vec<(RelPath, &FileEntry)> = all
        .iter()
        .filter(|(_, e)| e.stage == stage)
        .cloned()
        .collect();
    let ids = staged
        .iter()
        .map(|(rel, e)| resolve_ids(rel, e, opts.owner))
        .collect::<Result<Vec<_>, _>>()?;
    let mut run = Run::start(opts, root)?;
    if let Err(e) = run.write_all(&staged, &ids) {
        run.remember_partial();
        return Err(e);
    }
    if stage == Stage::Before {
        run.retire_dropped(&all);
    }
    run.finish(&all)
}

/// The uid and gid a file gets: its owner and group resolved here (root when unnamed).
/// `None` when files keep the caller's owner (tests as a user), after checking the names
/// exist all the same.
fn resolve_ids(
    rel: &RelPath,
    entry: &FileEntry,
    owner: Owner,
) -> Result<Option<(u32, u32)>, DeployError> {
    let lookup = |what: Account, name: &AccountName| {
        let found = match what {
            Account::Owner => {
                nix::unistd::User::from_name(name.as_str()).map(|u| u.map(|u| u.uid.as_raw()))
            }
            Account::Group => {
                nix::unistd::Group::from_name(name.as_str()).map(|g| g.map(|g| g.gid.as_raw()))
            }
        };
        match found {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(DeployError::UnknownAccount {
                path: rel.to_string(),
                what,
                name: name.clone(),
                stage: entry.stage,
            }),
            Err(source) => Err(DeployError::Lookup {
                path: rel.to_string(),
                what,
                name: name.clone(),
                source,
            }),
        }
    };
    let uid = entry
        .owner
        .as_ref()
        .map(|n| lookup(Account::Owner, n))
        .transpose()?;
    let gid = entry
        .group
        .as_ref()
        .map(|n| lookup(Account::Group, n))
        .transpose()?;
    Ok(match owner {
        Owner::Caller => None,
        Owner::Root => Some((uid.unwrap_or(0), gid.unwrap_or(0))),
        Owner::RootGroup(group) => Some((uid.unwrap_or(0), gid.unwrap_or(group))),
    })
}

fn unsafe_path(root: &Path, rel: &RelPath, why: String) -> DeployError {
    DeployError::Unsafe {
        root: root.to_owned(),
        path: rel.to_string(),
        why,
    }
}

/// One deploy under way: `root`, what earlier deploys wrote, and what this one wrote so far.
struct Run<'a> {
    opts: &'a DeployOptions<'a>,
    root: OwnedFd,
    previous: BTreeMap<RelPath, Deployed>,
    deployed: Vec<Deployed>,
    stats: DeployStats,
}

impl<'a> Run<'a> {
    fn start(opts: &'a DeployOptions<'a>, root: OwnedFd) -> Result<Run<'a>, DeployError> {
        let previous = Record::load(opts.state_dir)?
            .files
            .into_iter()
            .map(|d| (d.path.clone(), d))
            .collect();
        Ok(Run {
            opts,
            root,
            previous,
            deployed: Vec::new(),
            stats: DeployStats::default(),
        })
    }

    fn io_err(&self, rel: &RelPath) -> impl FnOnce(std::io::Error) -> DeployError + use<> {
        let root = self.opts.root.to_owned();
        let path = rel.to_string();
        move |source| DeployError::Io { root, path, source }
    }

    fn write_all(
        &mut self,
        targets: &[(RelPath, &FileEntry)],
        ids: &[Option<(u32, u32)>],
    ) -> Result<(), DeployError> {
        for ((rel, entry), ids) in targets.iter().zip(ids) {
            self.write_one(rel, entry, *ids)?;
        }
        Ok(())
    }

    /// Records `rel` as deployed, then replaces it unless it already is what the release wants.
    fn write_one(
        &mut self,
        rel: &RelPath,
        entry: &FileEntry,
        ids: Option<(u32, u32)>,
    ) -> Result<(), DeployError> {
        let dir = match open_parent(&self.root, rel, Missing::Create) {
            Ok(Some(dir)) => dir,
            Ok(None) => {
                let vanished = std::io::Error::other("parent directory vanished");
                return Err(self.io_err(rel)(vanished));
            }
            Err(Walk::Unsafe(at)) => {
                let why = blocked(self.opts.root, &at);
                return Err(unsafe_path(self.opts.root, rel, why));
            }
            Err(Walk::Io(e)) => return Err(self.io_err(rel)(e)),
        };
        let name = rel.components().last().unwrap_or_default();
        let existing = inspect(&dir, name).map_err(self.io_err(rel))?;
        let created = match self.previous.get(rel) {
            Some(p) => p.created,
            None => matches!(existing, Existing::Absent),
        };
        self.deployed.push(Deployed {
            path: rel.clone(),
            sha256: entry.sha256.clone(),
            created,
        });
        if existing.is_wanted(entry, ids) {
            self.stats.unchanged += 1;
            return Ok(());
        }
        // Streamed from the store: memory does not grow with the file.
        let mut content =
            File::open(entry.path.under(self.opts.release_dir)).map_err(self.io_err(rel))?;
        replace_beneath(&dir, name, &mut content, entry.mode.bits(), ids)
            .map_err(self.io_err(rel))?;
        self.stats.written += 1;
        self.stats.changed.push(rel.clone());
        Ok(())
    }

    /// After a failed write: record what this run wrote and what earlier runs did, so no
    /// file tiffin created is ever forgotten (and so never retired).
    fn remember_partial(self) {
        let done: BTreeSet<RelPath> = self.deployed.iter().map(|d| d.path.clone()).collect();
        let mut files = self.deployed;
        files.extend(
            self.previous
                .into_values()
                .filter(|d| !done.contains(&d.path)),
        );
        if let Err(save) = (Record { files }).save(self.opts.state_dir) {
            tracing::warn!(
                "after a failed deploy, the record of deployed files could not be saved: {save}"
            );
        }
    }

    /// Deletes what earlier releases deployed and this one no longer has, where that is safe.
    fn retire_dropped(&mut self, targets: &[(RelPath, &FileEntry)]) {
        let wanted: BTreeSet<&RelPath> = targets.iter().map(|(r, _)| r).collect();
        for (rel, old) in &self.previous {
            if wanted.contains(rel) {
                continue;
            }
            match retire(&self.root, rel, old) {
                Ok(Retired::Removed) => self.stats.removed += 1,
                Ok(Retired::Kept) => {
                    tracing::warn!(
                        "{} is no longer in the release; left in place because tiffin did not create it or it changed since",
                        rel
                    );
                    self.stats.kept.push(rel.to_string());
                }
                Err(e) => {
                    tracing::warn!("{rel} is no longer in the release; could not remove it: {e}");
                    self.stats.kept.push(rel.to_string());
                }
            }
        }
    }

    /// Saves the record: what this stage wrote, and what earlier runs wrote of the release's
    /// other files (another stage's, not written yet).
    fn finish(self, all: &[(RelPath, &FileEntry)]) -> Result<DeployStats, DeployError> {
        let done: BTreeSet<RelPath> = self.deployed.iter().map(|d| d.path.clone()).collect();
        let wanted: BTreeSet<&RelPath> = all.iter().map(|(r, _)| r).collect();
        let mut files = self.deployed;
        files.extend(
            self.previous
                .into_values()
                .filter(|d| wanted.contains(&d.path) && !done.contains(&d.path)),
        );
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let record = Record { files };
        record.save(self.opts.state_dir)?;
        Ok(self.stats)
    }
}

enum Walk {
    /// The directory at this path (relative to root) is a symlink or not a directory.
    Unsafe(String),
    Io(std::io::Error),
}

fn walk_error(e: Errno, at: String) -> Walk {
    match e {
        Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => Walk::Unsafe(at),
        e => Walk::Io(e.into()),
    }
}

/// Why a walk was refused, naming the blocking path in full as it is on this machine.
fn blocked(root: &Path, at: &str) -> String {
    format!(
        "{} on this machine is a symlink or not a directory",
        root.join(at).display()
    )
}

/// What a walk to a target's directory does about a directory that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    Create,
    /// The target cannot exist either: the walk ends with `None`.
    Stop,
}

/// `name` in `dir`, resolved only beneath `dir` and through no symlink.
fn open_beneath(dir: &OwnedFd, name: &str, flags: OFlag, mode: u32) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .mode(FsMode::from_bits_truncate(mode))
        .resolve(BENEATH);
    nix::fcntl::openat2(dir, name, how)
}

/// Opens the directory that will hold `rel`, one component at a time.
fn open_parent(root: &OwnedFd, rel: &RelPath, missing: Missing) -> Result<Option<OwnedFd>, Walk> {
    let comps: Vec<&str> = rel.components().collect();
    let mut cur = root.try_clone().map_err(Walk::Io)?;
    for (i, comp) in comps[..comps.len() - 1].iter().enumerate() {
        let at = || comps[..=i].join("/");
        let open = |dir: &OwnedFd| open_beneath(dir, comp, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0);
        cur = match open(&cur) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if missing == Missing::Create => {
                let mode = FsMode::from_bits_truncate(DIR_MODE);
                match nix::sys::stat::mkdirat(&cur, *comp, mode) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(walk_error(e, at())),
                }
                open(&cur).map_err(|e| walk_error(e, at()))?
            }
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(walk_error(e, at())),
        };
    }
    Ok(Some(cur))
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Refuses a target whose existing parents are not plain directories, or that is itself a directory.
fn check_target(root: &OwnedFd, root_path: &Path, rel: &RelPath) -> Result<(), String> {
    match open_parent(root, rel, Missing::Stop) {
        Err(Walk::Unsafe(at)) => Err(blocked(root_path, &at)),
        Err(Walk::Io(e)) => Err(e.to_string()),
        Ok(None) => Ok(()),
        Ok(Some(dir)) => {
            let name = rel.components().last().unwrap_or_default();
            match nix::sys::stat::fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if file_type(&st) == SFlag::S_IFDIR => {
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
        uid: u32,
        gid: u32,
    },
    Other,
}

impl Existing {
    /// Already what the release wants: its content, its mode and its owner (`None`: any).
    fn is_wanted(&self, entry: &FileEntry, ids: Option<(u32, u32)>) -> bool {
        let Existing::Regular {
            sha,
            mode,
            uid,
            gid,
        } = self
        else {
            return false;
        };
        let owned = ids.is_none_or(|want| (*uid, *gid) == want);
        sha == &entry.sha256 && *mode == entry.mode.bits() && owned
    }
}

fn inspect(dir: &OwnedFd, name: &str) -> std::io::Result<Existing> {
    // Look before opening: opening a planted device or FIFO could have effects of its own.
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if file_type(&st) == SFlag::S_IFREG => {}
        Ok(_) => return Ok(Existing::Other),
        Err(Errno::ENOENT) => return Ok(Existing::Absent),
        Err(e) => return Err(e.into()),
    }
    let fd = match open_beneath(dir, name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Existing::Absent),
        // A symlink or something we must not open: it will be replaced, never followed.
        Err(_) => return Ok(Existing::Other),
    };
    let st = nix::sys::stat::fstat(&fd)?;
    if file_type(&st) != SFlag::S_IFREG {
        return Ok(Existing::Other);
    }
    let (sha, _) = crate::core::hash::sha256_reader(File::from(fd), std::io::sink())?;
    Ok(Existing::Regular {
        sha: Sha256Hex::new(sha).expect("hex of a digest"),
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
    })
}

/// Temp name in the target directory, content, owner, mode, fsync, rename over the target,
/// fsync the directory. The target itself is never opened: a symlink there is replaced.
fn replace_beneath(
    dir: &OwnedFd,
    name: &str,
    content: &mut File,
    mode: u32,
    ids: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let tmp = format!(".{name}.tiffin-{}", std::process::id());
    let _ = nix::unistd::unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
    let fd = open_beneath(dir, &tmp, flags, 0o600)?;
    let result = (|| {
        let mut file = File::from(fd);
        std::io::copy(content, &mut file)?;
        // Owner first: chown clears set-id bits, so the mode is set after it.
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        durable::finish(&file, mode, Owner::Caller)?;
        nix::fcntl::renameat(dir, tmp.as_str(), dir, name)?;
        nix::unistd::fsync(dir)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = nix::unistd::unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// Whether a dropped file went.
enum Retired {
    /// Deleted, or already gone.
    Removed,
    /// Left in place: tiffin did not create it, it changed since, or its path is no longer safe.
    Kept,
}

/// Deletes a dropped file if tiffin created it and it is unchanged.
fn retire(root: &OwnedFd, rel: &RelPath, old: &Deployed) -> std::io::Result<Retired> {
    if !old.created {
        return Ok(Retired::Kept);
    }
    let dir = match open_parent(root, rel, Missing::Stop) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(Retired::Removed),
        Err(Walk::Unsafe(_)) => return Ok(Retired::Kept),
        Err(Walk::Io(e)) => return Err(e),
    };
    let name = rel.components().last().unwrap_or_default();
    match inspect(&dir, name)? {
        Existing::Absent => Ok(Retired::Removed),
        Existing::Regular { sha, .. } if sha == old.sha256 => {
            nix::unistd::unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir)?;
            nix::unistd::fsync(&dir)?;
            Ok(Retired::Removed)
        }
        _ => Ok(Retired::Kept),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::hash::sha256_hex;
    use crate::core::release::{FileEntry, Mode, Sha256Hex};
    use crate::core::settings::ApplyPolicy;

    fn manifest(files: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            host: "client1".parse().unwrap(),
            seq: 1,
            created: "2026-11-24T00:00:00Z".into(),
            apply: ApplyPolicy::default(),
            toplevel: None,
            files: files
                .iter()
                .map(|(p, c)| {
                    FileEntry::new(
                        p.parse().unwrap(),
                        c.len() as u64,
                        Mode::new(0o644).unwrap(),
                        Sha256Hex::new(sha256_hex(c)).unwrap(),
                    )
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
            owner: Owner::Caller,
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

#[cfg(test)]
mod stage_tests {
    use super::*;
    use crate::core::hash::sha256_hex;
    use crate::core::release::{Mode, Sha256Hex};
    use crate::core::settings::ApplyPolicy;

    /// An owner this machine does not know: the error names the file and the account, and
    /// no file of the stage is written, also those listed before it.
    #[test]
    fn an_unknown_owner_names_file_and_account_and_writes_nothing() {
        let tmp = tempfile::TempDir::new().unwrap();
        let (root, release, state) = (
            tmp.path().join("root"),
            tmp.path().join("rel"),
            tmp.path().join("state"),
        );
        for d in [&root, &state, &release.join("files/etc/grafana")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut files = Vec::new();
        for (name, owner) in [("a-first", None), ("secret", Some("tiffin-no-such-user"))] {
            std::fs::write(release.join("files/etc/grafana").join(name), b"x\n").unwrap();
            let mut e = FileEntry::new(
                format!("files/etc/grafana/{name}").parse().unwrap(),
                2,
                Mode::new(0o600).unwrap(),
                Sha256Hex::new(sha256_hex(b"x\n")).unwrap(),
            );
            e.owner = owner.map(|o| o.parse().unwrap());
            files.push(e);
        }
        let manifest = Manifest {
            host: "web".parse().unwrap(),
            seq: 1,
            created: "2026-11-24T00:00:00Z".into(),
            apply: ApplyPolicy::default(),
            files,
            toplevel: None,
        };
        let opts = DeployOptions {
            root: &root,
            release_dir: &release,
            state_dir: &state,
            owner: Owner::Caller,
        };
        let err = deploy_stage(&manifest, &opts, Stage::Before).unwrap_err();
        insta::assert_snapshot!("unknown_owner_on_the_client", err.to_string());
        assert!(!root.join("etc/grafana/a-first").exists());
        // The other stage has nothing of its own to resolve: it deploys nothing and succeeds.
        let stats = deploy_stage(&manifest, &opts, Stage::After).unwrap();
        assert_eq!((stats.written, stats.changed.len()), (0, 0));
    }
}
