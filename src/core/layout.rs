//! The chroot layout on the server: one directory per host with CURRENT, releases/ and reports/, and the modes everything there has.

use std::fs;
use std::path::{Path, PathBuf};

use crate::core::names::{HostName, ReleaseId};
use crate::core::release::{MANIFEST_FILE, Manifest};

/// The signed statement that lets the host apply the release `CURRENT` names (signed fleets).
pub const STATEMENT_FILE: &str = "STATEMENT";
/// The admins' signatures over `STATEMENT`: armored SSHSIG blocks, one per signer.
pub const STATEMENT_SIG_FILE: &str = "STATEMENT.sig";
/// Every root of trust after the first (`root-<n>.toml` + `.sig`), for hosts pinned to an older one.
pub const TRUST_DIR: &str = "trust";
pub const CURRENT_FILE: &str = "CURRENT";
pub const RELEASES_DIR: &str = "releases";
pub const REPORTS_DIR: &str = "reports";
/// Where publish builds a release before renaming it into `releases/` (root only, invisible to the client).
pub const STAGING_DIR: &str = ".staging";
/// Release files and directories on the server: readable by the host's group only, whatever mode they get on the client.
pub const SERVER_FILE_MODE: u32 = 0o640;
pub const SERVER_DIR_MODE: u32 = 0o750;

/// Paths of one host's chroot on the server.
#[derive(Debug, Clone)]
pub struct ChrootPaths {
    pub root: PathBuf,
}

impl ChrootPaths {
    pub fn new(chroot_root: &Path, host: &HostName) -> ChrootPaths {
        ChrootPaths {
            root: chroot_root.join(host.as_str()),
        }
    }
    pub fn current(&self) -> PathBuf {
        self.root.join(CURRENT_FILE)
    }
    pub fn releases(&self) -> PathBuf {
        self.root.join(RELEASES_DIR)
    }
    pub fn release(&self, id: &ReleaseId) -> PathBuf {
        self.releases().join(id.as_str())
    }
    pub fn statement(&self) -> PathBuf {
        self.root.join(STATEMENT_FILE)
    }
    pub fn statement_sig(&self) -> PathBuf {
        self.root.join(STATEMENT_SIG_FILE)
    }
    pub fn trust(&self) -> PathBuf {
        self.root.join(TRUST_DIR)
    }
    pub fn staging(&self) -> PathBuf {
        self.root.join(STAGING_DIR)
    }
    pub fn reports(&self) -> PathBuf {
        self.root.join(REPORTS_DIR)
    }

    /// The id `CURRENT` names, if any.
    pub fn read_current(&self) -> std::io::Result<Option<ReleaseId>> {
        match fs::read(self.current()) {
            // Line 1 only: line 2 is a trigger (`crate::core::current`).
            Ok(bytes) => crate::core::current::first_line(&bytes)
                .parse()
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn read_manifest(&self, id: &ReleaseId) -> Result<Manifest, String> {
        let bytes = fs::read(self.release(id).join(MANIFEST_FILE)).map_err(|e| e.to_string())?;
        Manifest::parse_verified(&bytes, id).map_err(|e| e.to_string())
    }
}

/// Every readable release with its seq.
pub fn list_releases(paths: &ChrootPaths) -> Vec<(ReleaseId, u64)> {
    let Ok(entries) = fs::read_dir(paths.releases()) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let id: ReleaseId = e.ok()?.file_name().to_str()?.parse().ok()?;
            let seq = paths.read_manifest(&id).ok()?.seq;
            Some((id, seq))
        })
        .collect()
}
