//! Checks that what came over the wire is what the release id promises: the MANIFEST, then each file.

use crate::core::hash::sha256_hex;
use crate::core::names::{HostName, ReleaseId};
use crate::core::release::{FileEntry, Manifest, ReleaseError};

/// Why fetched bytes were rejected; each names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    // The release id is named by the error that wraps this one (FetchError::Verify).
    #[error("{source}")]
    Manifest {
        id: ReleaseId,
        #[source]
        source: ManifestProblem,
    },
    #[error(
        "its MANIFEST is for host {found}, not for this host ({expected}); check `host` in the client configuration and the account it logs in as"
    )]
    WrongHost {
        id: ReleaseId,
        expected: HostName,
        found: HostName,
    },
    #[error("{path}: size {got} bytes, the manifest says {expected}")]
    Size {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error("{path}: sha256 {got}, the manifest says {expected}")]
    Sha256 {
        path: String,
        expected: String,
        got: String,
    },
}

/// A release error, cloneable so reports and state can carry it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestProblem(String);

/// Parses a MANIFEST fetched for `id`: its sha256 must be the id, and it must be for `host`.
pub fn manifest(bytes: &[u8], id: &ReleaseId, host: &HostName) -> Result<Manifest, VerifyError> {
    let m =
        Manifest::parse_verified(bytes, id).map_err(|e: ReleaseError| VerifyError::Manifest {
            id: id.clone(),
            source: ManifestProblem(e.to_string()),
        })?;
    if &m.host != host {
        return Err(VerifyError::WrongHost {
            id: id.clone(),
            expected: host.clone(),
            found: m.host,
        });
    }
    Ok(m)
}

/// Checks a file's bytes against its manifest entry.
pub fn file(entry: &FileEntry, bytes: &[u8]) -> Result<(), VerifyError> {
    landed(entry, bytes.len() as u64, &sha256_hex(bytes))
}

/// Checks the size and sha256 of a file streamed to disk against its manifest entry.
pub fn landed(entry: &FileEntry, size: u64, sha256: &str) -> Result<(), VerifyError> {
    if size != entry.size {
        return Err(VerifyError::Size {
            path: entry.path.to_string(),
            expected: entry.size,
            got: size,
        });
    }
    if sha256 != entry.sha256.as_str() {
        return Err(VerifyError::Sha256 {
            path: entry.path.to_string(),
            expected: entry.sha256.as_str().to_owned(),
            got: sha256.to_owned(),
        });
    }
    Ok(())
}
