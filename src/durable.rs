//! Durable file writes shared by publish, provision and pull: atomic replace and directory fsyncs.

use std::fs;
use std::io::Write;
use std::path::Path;

/// Who owns a file written by `write_atomic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Whoever runs tiffin (tests as a user).
    Caller,
    /// root:root, for files sshd or the system reads as root.
    Root,
}

/// Replaces `path` by a temporary file in the same directory, fsynced, renamed over it,
/// and the directory fsynced: readers see the old content or the new, never a mix. The
/// temporary file is removed when anything fails.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, owner: Owner) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tiffin-tmp")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    // The umask may have narrowed the mode given at creation.
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    if owner == Owner::Root {
        std::os::unix::fs::fchown(tmp.as_file(), Some(0), Some(0))?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
