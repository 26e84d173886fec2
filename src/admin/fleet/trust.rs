//! `[trust]` in fleet.toml: the admins' keys, how many of them must sign, how long a signature lasts, and where signed statements and roots live in the repository.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::FLEET_FILE;
use crate::core::diag::Problem;
use crate::core::names::HostName;
use crate::core::settings::Interval;
use crate::core::trust::{AdminKey, TrustRoot};

/// Where `tiffin sign` writes each host's statement and signatures (committed beside the hosts).
pub const SIGNED_DIR: &str = "signed";
/// Where the fleet's roots of trust are kept, one file per version (`root-<n>.toml`, and
/// `root-<n>.sig` for a rotation).
pub const TRUST_DIR: &str = "trust";

/// `[trust]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSettings {
    /// Raised by one at each rotation of the keys; hosts never accept a lower one.
    pub version: u64,
    /// How many of `keys` must sign a statement (k of n).
    pub threshold: u32,
    pub keys: Vec<AdminKey>,
    /// How long a statement `tiffin sign` writes is valid (`--expires` overrides it).
    #[serde(default = "default_expiry")]
    pub expiry: Interval,
    /// `tiffin status` warns this long before a host's statement expires.
    #[serde(default = "default_warn_before")]
    pub warn_before: Interval,
}

fn default_expiry() -> Interval {
    Interval::secs(30 * 86_400)
}

fn default_warn_before() -> Interval {
    Interval::secs(7 * 86_400)
}

impl TrustSettings {
    /// The root of trust this section defines.
    pub fn root(&self) -> TrustRoot {
        TrustRoot {
            version: self.version,
            threshold: self.threshold,
            keys: self.keys.clone(),
        }
    }

    /// What `tiffin check` says of the section.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Err(e) = self.root().validate() {
            out.push(Problem::error(None, FLEET_FILE, format!("[trust]: {e}")));
        }
        if self.warn_before >= self.expiry {
            out.push(Problem::warning(
                None,
                FLEET_FILE,
                format!(
                    "[trust]: warn_before ({}) is not shorter than expiry ({}): every host would be warned about from the moment it is signed",
                    self.warn_before, self.expiry
                ),
            ));
        }
        out
    }
}

/// The files of one host's signed statement in the repository.
#[derive(Debug, Clone)]
pub struct SignedFiles {
    pub statement: PathBuf,
    pub signatures: PathBuf,
}

impl SignedFiles {
    pub fn of(fleet_root: &Path, host: &HostName) -> SignedFiles {
        let dir = fleet_root.join(SIGNED_DIR);
        SignedFiles {
            statement: dir.join(format!("{host}.statement")),
            signatures: dir.join(format!("{host}.sig")),
        }
    }
}

/// The files of root version `n` in the repository.
pub fn root_files(fleet_root: &Path, n: u64) -> (PathBuf, PathBuf) {
    let dir = fleet_root.join(TRUST_DIR);
    (
        dir.join(format!("root-{n}.toml")),
        dir.join(format!("root-{n}.sig")),
    )
}
