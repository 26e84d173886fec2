//! `tiffin verify`: every stored release re-hashed against its MANIFEST, so a file changed on the server after publishing is found.

use std::path::PathBuf;

use crate::core::hash::sha256_file;
use crate::core::layout::ChrootPaths;
use crate::core::names::ReleaseId;
use crate::core::release::Manifest;

/// One file of a stored release that no longer is what its MANIFEST says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub path: PathBuf,
    pub what: String,
}

/// What one stored release holds, checked.
#[derive(Debug, Clone)]
pub struct ReleaseCheck {
    pub id: ReleaseId,
    /// `None` when the MANIFEST itself is unreadable or does not match the id.
    pub seq: Option<u64>,
    pub files: usize,
    pub damage: Vec<Damage>,
}

impl ReleaseCheck {
    pub fn is_sound(&self) -> bool {
        self.damage.is_empty()
    }
}

/// Checks every release in the host's `releases/`, newest first.
pub fn verify_host(paths: &ChrootPaths) -> std::io::Result<Vec<ReleaseCheck>> {
    let mut checks = Vec::new();
    let entries = match std::fs::read_dir(paths.releases()) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(checks),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        // Anything that is not named by a release id was never published by tiffin.
        if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            checks.push(verify_release(paths, id));
        }
    }
    checks.sort_by_key(|c| std::cmp::Reverse(c.seq));
    Ok(checks)
}

/// Re-hashes one release's files; the MANIFEST is checked against the id first.
pub fn verify_release(paths: &ChrootPaths, id: ReleaseId) -> ReleaseCheck {
    let dir = paths.release(&id);
    let manifest = match paths.read_manifest(&id) {
        Ok(m) => m,
        Err(what) => {
            return ReleaseCheck {
                damage: vec![Damage {
                    path: dir.join(crate::core::release::MANIFEST_FILE),
                    what,
                }],
                id,
                seq: None,
                files: 0,
            };
        }
    };
    let damage = damaged_files(&dir, &manifest);
    ReleaseCheck {
        id,
        seq: Some(manifest.seq),
        files: manifest.files.len(),
        damage,
    }
}

fn damaged_files(dir: &std::path::Path, manifest: &Manifest) -> Vec<Damage> {
    let mut damage = Vec::new();
    for entry in &manifest.files {
        let path = entry.path.under(dir);
        let what = match sha256_file(&path) {
            Err(e) => format!("cannot read it: {e}"),
            Ok((_, size)) if size != entry.size => {
                format!("{size} bytes, the MANIFEST says {}", entry.size)
            }
            Ok((sha, _)) if sha != entry.sha256.as_str() => format!(
                "its sha256 is {sha}, the MANIFEST says {}",
                entry.sha256.as_str()
            ),
            Ok(_) => continue,
        };
        damage.push(Damage { path, what });
    }
    damage
}
