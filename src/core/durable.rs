//! Durable writes and locks shared by publish, provision, pull and the lab: create or replace a file fsynced, fsync directories, take an exclusive lock.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Who owns a file that tiffin writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Whoever runs tiffin (tests as a user).
    Caller,
    /// root:root, for files sshd or the system reads as root.
    Root,
    /// root and this group: release files a host's account reads through its group.
    RootGroup(u32),
}

impl Owner {
    /// Sets the owner of an open file (nothing for `Caller`).
    pub fn apply(self, file: &fs::File) -> std::io::Result<()> {
        match self {
            Owner::Caller => Ok(()),
            Owner::Root => std::os::unix::fs::fchown(file, Some(0), Some(0)),
            Owner::RootGroup(gid) => std::os::unix::fs::fchown(file, Some(0), Some(gid)),
        }
    }
}

/// Gives a freshly written file its final mode (the umask may have narrowed the one given at
/// creation) and owner, and fsyncs it: the one last step of every durable write.
pub fn finish(file: &fs::File, mode: u32, owner: Owner) -> std::io::Result<()> {
    // Owner first: chown clears set-id bits, so the mode must come after it.
    owner.apply(file)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.sync_all()
}

/// Creates `path`, which must not exist yet, with `bytes`, `mode` and `owner`, fsynced.
/// For files inside a tree that is renamed into place as a whole (a staged release, a
/// downloaded tree); the caller fsyncs the directories.
pub fn create_synced(path: &Path, bytes: &[u8], mode: u32, owner: Owner) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    finish(&f, mode, owner)
}

/// Replaces `path` by a temporary file in the same directory, fsynced, renamed over it,
/// and the directory fsynced: readers see the old content or the new, never a mix. The
/// temporary file is removed when anything fails.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, owner: Owner) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tiffin-tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    finish(tmp.as_file(), mode, owner)?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// An exclusive `flock`, released when dropped or when the process dies.
#[derive(Debug)]
pub struct Lock {
    _lock: nix::fcntl::Flock<fs::File>,
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} is held by another process", path.display())]
    Busy { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Lock {
    /// Takes the lock on `path` (created 0600 when missing, never through a symlink) without waiting.
    pub fn try_exclusive(path: &Path) -> Result<Lock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_owned(),
            source,
        };
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .map_err(io)?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Lock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Busy {
                path: path.to_owned(),
            }),
            Err((_, errno)) => Err(io(errno.into())),
        }
    }
}

/// fsyncs a directory, so the entries created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// fsyncs every directory of a freshly built tree (its files were synced as written),
/// so renaming the tree into place publishes complete entries.
pub fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    sync_dir(dir)
}

/// Creates `dir` (one level) with `mode` and, as root, owner root and the host's group.
pub fn ensure_dir(dir: &Path, mode: u32, group: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
            if let Some(gid) = group {
                std::os::unix::fs::chown(dir, Some(0), Some(gid))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_busy_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let first = Lock::try_exclusive(&p).unwrap();
        assert!(matches!(
            Lock::try_exclusive(&p),
            Err(LockError::Busy { .. })
        ));
        drop(first);
        Lock::try_exclusive(&p).unwrap();
        // Never through a symlink: a planted link is refused, not followed.
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("link")).unwrap();
        assert!(matches!(
            Lock::try_exclusive(&dir.path().join("link")),
            Err(LockError::Io { .. })
        ));
        assert!(!dir.path().join("elsewhere").exists());
    }

    #[test]
    fn create_synced_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        create_synced(&p, b"one", 0o640, Owner::Caller).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        create_synced(&p, b"two", 0o640, Owner::Caller).unwrap_err();
        assert_eq!(fs::read(&p).unwrap(), b"one");
    }

    #[test]
    fn replaces_with_the_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_atomic(&p, b"one\n", 0o600, Owner::Caller).unwrap();
        write_atomic(&p, b"two\n", 0o644, Owner::Caller).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("k")]);
        // A failure (here: the target is a directory) leaves no temporary file behind.
        fs::create_dir(dir.path().join("d")).unwrap();
        write_atomic(&dir.path().join("d"), b"x", 0o644, Owner::Caller).unwrap_err();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
