//! Signed fleets on the server: a new release waits in `releases/` until the repository holds the admins' statement for it; the server verifies that statement (defence in depth: the host's check is the guarantee) and installs it with the release, and ships every root of trust.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::admin::fleet::Fleet;
use crate::admin::fleet::trust::{SignedFiles, TrustSettings, root_files};
use crate::core::durable;
use crate::core::hash::sha256_hex;
use crate::core::layout::{ChrootPaths, SERVER_DIR_MODE, SERVER_FILE_MODE};
use crate::core::names::{HostName, ReleaseId};
use crate::core::release::{MANIFEST_FILE, Manifest, ManifestHead};
use crate::core::trust::{self, Signers, Statement};

/// Where publish leaves the MANIFEST of a release that waits for its signatures, for the
/// admins to sign with `tiffin sign` (outside every chroot).
pub const TO_SIGN_DIR: &str = "to-sign";

/// A statement from the repository, verified against the fleet's root of trust.
#[derive(Debug, Clone)]
pub struct Approval {
    pub statement: Statement,
    pub bytes: Vec<u8>,
    pub signatures: Vec<u8>,
    pub signers: Signers,
    /// sha256 of `bytes`: the `statement` line of `CURRENT`.
    pub sha256: String,
}

/// Why a statement in the repository cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("host {host}: {path}: {source}")]
    Io {
        host: HostName,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "host {host}: the signed statement {path} does not verify: {source}. Nothing of it was installed; sign the release again (`tiffin sign`)"
    )]
    Refused {
        host: HostName,
        path: PathBuf,
        #[source]
        source: trust::TrustError,
    },
    #[error(
        "{path}: root of trust version {version} does not verify: {source}. Nothing was shipped to the hosts; sign it with the threshold of the previous root's keys and of its own (`tiffin sign --root`)"
    )]
    Root {
        path: PathBuf,
        version: u64,
        #[source]
        source: trust::TrustError,
    },
}

/// The repository's statement for `host` if it names `release` and verifies under the fleet's
/// root (its threshold, this host, not expired at `now`); `None` when there is none for it.
pub fn approval(
    fleet: &Fleet,
    trust_settings: &TrustSettings,
    host: &HostName,
    release: &ReleaseId,
    now: SystemTime,
) -> Result<Option<Approval>, SigningError> {
    let files = SignedFiles::of(&fleet.root, host);
    let Some(bytes) = read_optional(host, &files.statement)? else {
        return Ok(None);
    };
    // A statement for another release (an older one, or the next) is not this release's.
    match Statement::parse(&bytes) {
        Ok(s) if &s.release != release => return Ok(None),
        _ => {}
    }
    let signatures = read_optional(host, &files.signatures)?.unwrap_or_default();
    let root = trust_settings.root();
    let (statement, signers) =
        trust::check_statement(&root, &bytes, &signatures, host, release, now).map_err(
            |source| SigningError::Refused {
                host: host.clone(),
                path: files.statement.clone(),
                source,
            },
        )?;
    Ok(Some(Approval {
        statement,
        sha256: sha256_hex(&bytes),
        bytes,
        signatures,
        signers,
    }))
}

/// A statement that is only short of signatures (every one it has is good) is one the admins
/// are still signing: the release waits, as without a statement; anything else is refused.
pub fn still_signing(e: SigningError) -> Result<Option<Approval>, SigningError> {
    match e {
        SigningError::Refused {
            source: trust::TrustError::Threshold { ref rejected, .. },
            ..
        } if rejected.is_empty() => Ok(None),
        e => Err(e),
    }
}

fn read_optional(host: &HostName, path: &Path) -> Result<Option<Vec<u8>>, SigningError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SigningError::Io {
            host: host.clone(),
            path: path.to_owned(),
            source,
        }),
    }
}

/// The release waiting for signatures in `host`'s chroot that `candidate` would repeat (the
/// same files and policy, another seq and time), if any: publishing again stages nothing new.
pub fn staged_like(paths: &ChrootPaths, candidate: &Manifest) -> Option<(ReleaseId, u64)> {
    let current = paths.read_current().ok().flatten();
    let mut staged: Vec<(ReleaseId, u64)> = crate::core::layout::list_releases(paths)
        .into_iter()
        .filter(|(id, _)| Some(id) != current.as_ref())
        .collect();
    staged.sort_by_key(|(_, seq)| std::cmp::Reverse(*seq));
    staged.into_iter().find(|(id, _)| {
        let Ok(bytes) = fs::read(paths.release(id).join(MANIFEST_FILE)) else {
            return false;
        };
        let Ok(head) = ManifestHead::parse(&bytes) else {
            return false;
        };
        let same = Manifest {
            seq: head.seq,
            created: head.created,
            ..candidate.clone()
        };
        same.id() == *id && ReleaseId::of_bytes(&bytes) == *id
    })
}

/// Leaves a copy of a staged release's MANIFEST in `<state_dir>/to-sign/<host>.MANIFEST`: what
/// `tiffin sign` reads (copied from the server, or read here when the repository is here).
pub fn leave_to_sign(
    state_dir: &Path,
    paths: &ChrootPaths,
    host: &HostName,
    id: &ReleaseId,
) -> Result<PathBuf, SigningError> {
    let io = |path: &Path| {
        let (host, path) = (host.clone(), path.to_owned());
        move |source| SigningError::Io { host, path, source }
    };
    let dir = state_dir.join(TO_SIGN_DIR);
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let manifest = paths.release(id).join(MANIFEST_FILE);
    let bytes = fs::read(&manifest).map_err(io(&manifest))?;
    let target = dir.join(format!("{host}.MANIFEST"));
    durable::write_atomic(&target, &bytes, 0o644, durable::Owner::Caller).map_err(io(&target))?;
    Ok(target)
}

/// Writes `STATEMENT` and `STATEMENT.sig` into the chroot (each atomically), before `CURRENT`
/// names the release: a client that sees the new `CURRENT` finds its statement.
pub fn install_statement(
    paths: &ChrootPaths,
    host: &HostName,
    approval: &Approval,
    group: Option<u32>,
) -> Result<(), SigningError> {
    let owner = group.map_or(durable::Owner::Caller, durable::Owner::RootGroup);
    for (path, bytes) in [
        (paths.statement_sig(), &approval.signatures),
        (paths.statement(), &approval.bytes),
    ] {
        durable::write_atomic(&path, bytes, SERVER_FILE_MODE, owner).map_err(|source| {
            SigningError::Io {
                host: host.clone(),
                path: path.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// The sha256 of the statement installed in the chroot, if any.
pub fn installed_statement(paths: &ChrootPaths) -> Option<String> {
    fs::read(paths.statement()).ok().map(|b| sha256_hex(&b))
}

/// One rotation of the root of trust: version n's canonical bytes and their signatures.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub version: u64,
    pub root: Vec<u8>,
    pub signatures: Vec<u8>,
}

/// The rotations a host pinned to an older root needs: `trust/root-<n>.toml` and `.sig` for
/// every version after the first up to the fleet's, each verified against the one before.
pub fn rotations(
    fleet_root: &Path,
    settings: &TrustSettings,
) -> Result<Vec<Rotation>, SigningError> {
    let mut out = Vec::new();
    let (first, _) = root_files(fleet_root, 1);
    let Ok(text) = fs::read_to_string(&first) else {
        // A fleet signed from version 1 on ships nothing: every host pins version 1.
        return Ok(out);
    };
    let mut current = trust::TrustRoot::parse(&text).map_err(|source| SigningError::Root {
        path: first.clone(),
        version: 1,
        source,
    })?;
    for n in 2..=settings.version {
        let (toml, sig) = root_files(fleet_root, n);
        let bad = |source| SigningError::Root {
            path: toml.clone(),
            version: n,
            source,
        };
        let next = fs::read(&toml).unwrap_or_default();
        let sigs = fs::read(&sig).unwrap_or_default();
        current = trust::check_rotation(&current, &next, &sigs).map_err(bad)?;
        out.push(Rotation {
            version: n,
            root: next,
            signatures: sigs,
        });
    }
    Ok(out)
}

/// Ships the rotations into the chroot's `trust/` (unchanged files are left as they are).
pub fn ship_rotations(
    paths: &ChrootPaths,
    host: &HostName,
    rotations: &[Rotation],
    group: Option<u32>,
) -> Result<(), SigningError> {
    if rotations.is_empty() {
        return Ok(());
    }
    let io = |path: &Path| {
        let (host, path) = (host.clone(), path.to_owned());
        move |source| SigningError::Io { host, path, source }
    };
    let dir = paths.trust();
    durable::ensure_dir(&dir, SERVER_DIR_MODE, group).map_err(io(&dir))?;
    let owner = group.map_or(durable::Owner::Caller, durable::Owner::RootGroup);
    for r in rotations {
        let n = r.version;
        let files = [
            (format!("root-{n}.sig"), &r.signatures),
            (format!("root-{n}.toml"), &r.root),
        ];
        for (name, bytes) in files {
            let path = dir.join(name);
            if fs::read(&path).ok().as_ref() == Some(bytes) {
                continue;
            }
            durable::write_atomic(&path, bytes, SERVER_FILE_MODE, owner).map_err(io(&path))?;
        }
    }
    Ok(())
}
