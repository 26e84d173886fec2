//! `tiffin sign` on an admin's machine: checks that a release the server staged is what this checkout of the fleet repository holds, then signs its statement (or a rotation of the root of trust) with the admin's SSH key; the server never holds a key.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::admin::fleet::trust::{SignedFiles, TrustSettings, root_files};
use crate::admin::fleet::{Fleet, Host};
use crate::admin::host_tree;
use crate::core::names::{HostName, ReleaseId};
use crate::core::release::{FileEntry, Manifest};
use crate::core::settings::format_time;
use crate::core::trust::{self, ROOT_NAMESPACE, STATEMENT_NAMESPACE, Signatures, Statement};

/// Where a signature comes from.
#[derive(Debug, Clone)]
pub enum Signer {
    /// An unencrypted OpenSSH private key file, read by tiffin.
    KeyFile(PathBuf),
    /// `ssh-keygen -Y sign`: a `.pub` whose private key is in ssh-agent or on a FIDO token, or
    /// a passphrase-protected key file (ssh-keygen asks for the passphrase).
    SshKeygen { program: String, key: PathBuf },
}

impl Signer {
    /// A `.pub` goes through ssh-keygen (the agent or the token holds the private key).
    pub fn for_key(key: &Path) -> Signer {
        if key.extension().is_some_and(|e| e == "pub") {
            Signer::SshKeygen {
                program: "ssh-keygen".into(),
                key: key.to_owned(),
            }
        } else {
            Signer::KeyFile(key.to_owned())
        }
    }

    fn sign(&self, namespace: &str, msg: &[u8]) -> Result<ssh_key::SshSig, SignError> {
        let signed = match self {
            Signer::KeyFile(key) => trust::sign_with_key_file(key, namespace, msg),
            Signer::SshKeygen { program, key } => {
                trust::sign_with_ssh_keygen(program, key, namespace, msg)
            }
        };
        signed.map_err(SignError::Trust)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(
        "fleet.toml has no [trust] section: add the admins' keys and a threshold first (docs/signing.md)"
    )]
    NoTrust,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a release MANIFEST: {message}")]
    NotAManifest { path: PathBuf, message: String },
    #[error("{path}: host {host} is not in this fleet repository")]
    UnknownHost { path: PathBuf, host: HostName },
    #[error(
        "{path}: release #{seq} of {host} is not what this checkout holds, so it was not signed:\n{differences}\nSign on a checkout of the commit the server published (git pull), or find out who changed the server's copy"
    )]
    Differs {
        path: PathBuf,
        host: HostName,
        seq: u64,
        differences: String,
    },
    #[error("{path}: no statement to {what}: sign the release first (`tiffin sign MANIFEST`)")]
    NoStatement { path: PathBuf, what: &'static str },
    #[error(
        "{path}: root version {version} needs the previous root in {previous} to be verified by the hosts (it is written at the first `tiffin sign` of a fleet)"
    )]
    NoPreviousRoot {
        path: PathBuf,
        previous: PathBuf,
        version: u64,
    },
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SignError + '_ {
    move |source| SignError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What one signing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub host: HostName,
    pub release: ReleaseId,
    pub seq: u64,
    pub expires: String,
    /// Signatures now on the statement (this one included), and how many the root needs.
    pub signatures: usize,
    pub threshold: u32,
}

/// The fleet's `[trust]`, or the error saying to add one.
pub fn trust_of(fleet: &Fleet) -> Result<&TrustSettings, SignError> {
    fleet.config.trust.as_ref().ok_or(SignError::NoTrust)
}

/// Signs the statement of the staged release in `manifest_path`, after checking it against
/// the host's directory. A statement for the same release already in the repository gets
/// this signature added (k of n); one for another release is replaced.
pub fn sign_manifest(
    fleet: &Fleet,
    manifest_path: &Path,
    signer: &Signer,
    expires: SystemTime,
) -> Result<Signed, SignError> {
    let settings = trust_of(fleet)?;
    ensure_root_file(fleet, settings)?;
    let bytes = fs::read(manifest_path).map_err(io(manifest_path))?;
    let manifest = Manifest::parse(&bytes).map_err(|e| SignError::NotAManifest {
        path: manifest_path.to_owned(),
        message: e.to_string(),
    })?;
    let host = fleet
        .hosts
        .get(&manifest.host)
        .ok_or_else(|| SignError::UnknownHost {
            path: manifest_path.to_owned(),
            host: manifest.host.clone(),
        })?;
    check_against_checkout(fleet, host, &manifest, manifest_path)?;
    let statement = Statement {
        host: manifest.host.clone(),
        release: ReleaseId::of_bytes(&bytes),
        seq: manifest.seq,
        expires: format_time(expires),
        root: settings.version,
    };
    let files = SignedFiles::of(&fleet.root, &manifest.host);
    let existing = fs::read(&files.statement)
        .ok()
        .and_then(|b| Statement::parse(&b).ok());
    match existing {
        Some(s) if s.release == statement.release && s.root == statement.root => {
            cosign_files(&files, signer, settings)
        }
        _ => write_fresh(&files, &statement, signer, settings),
    }
}

/// Adds this admin's signature to the host's statement as it is (a second signer of k of n).
pub fn cosign(fleet: &Fleet, host: &HostName, signer: &Signer) -> Result<Signed, SignError> {
    let settings = trust_of(fleet)?;
    cosign_files(&SignedFiles::of(&fleet.root, host), signer, settings)
}

/// A new statement for the host's signed release with a later expiry, signed afresh: the
/// release is not applied again (the same id), the hosts only learn the new expiry.
pub fn renew(
    fleet: &Fleet,
    host: &HostName,
    signer: &Signer,
    expires: SystemTime,
) -> Result<Signed, SignError> {
    let settings = trust_of(fleet)?;
    let files = SignedFiles::of(&fleet.root, host);
    let old = read_statement(&files, "renew")?;
    let statement = Statement {
        expires: format_time(expires),
        root: settings.version,
        ..old
    };
    write_fresh(&files, &statement, signer, settings)
}

fn read_statement(files: &SignedFiles, what: &'static str) -> Result<Statement, SignError> {
    let bytes = fs::read(&files.statement).map_err(|_| SignError::NoStatement {
        path: files.statement.clone(),
        what,
    })?;
    Ok(Statement::parse(&bytes)?)
}

fn write_fresh(
    files: &SignedFiles,
    statement: &Statement,
    signer: &Signer,
    settings: &TrustSettings,
) -> Result<Signed, SignError> {
    let text = statement.render();
    let sig = signer.sign(STATEMENT_NAMESPACE, text.as_bytes())?;
    let sigs = Signatures(vec![sig]);
    let dir = files.statement.parent().expect("signed/<host>.statement");
    fs::create_dir_all(dir).map_err(io(dir))?;
    write(&files.signatures, sigs.render().as_bytes())?;
    write(&files.statement, text.as_bytes())?;
    Ok(signed(statement, 1, settings))
}

fn cosign_files(
    files: &SignedFiles,
    signer: &Signer,
    settings: &TrustSettings,
) -> Result<Signed, SignError> {
    let statement = read_statement(files, "sign with another key")?;
    let text = statement.render();
    let mut sigs = match fs::read(&files.signatures) {
        Ok(b) => Signatures::parse(&b)?,
        Err(_) => Signatures(Vec::new()),
    };
    sigs.add(signer.sign(STATEMENT_NAMESPACE, text.as_bytes())?);
    write(&files.signatures, sigs.render().as_bytes())?;
    Ok(signed(&statement, sigs.0.len(), settings))
}

fn signed(statement: &Statement, signatures: usize, settings: &TrustSettings) -> Signed {
    Signed {
        host: statement.host.clone(),
        release: statement.release.clone(),
        seq: statement.seq,
        expires: statement.expires.clone(),
        signatures,
        threshold: settings.threshold,
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), SignError> {
    crate::core::durable::write_atomic(path, bytes, 0o644, crate::core::durable::Owner::Caller)
        .map_err(io(path))
}

/// The release's `config/` and `files/` and its apply policy must be what this checkout
/// gives the host; the closure of a prebuilt release (`cache/`) is the build host's.
fn check_against_checkout(
    fleet: &Fleet,
    host: &Host,
    manifest: &Manifest,
    path: &Path,
) -> Result<(), SignError> {
    let differs = |differences: String| SignError::Differs {
        path: path.to_owned(),
        host: host.name.clone(),
        seq: manifest.seq,
        differences,
    };
    let problems = |p: Vec<crate::core::diag::Problem>| {
        differs(
            p.iter()
                .map(|p| format!("  {p}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    };
    let mut sources = host_tree::resolve_host_tree(&fleet.root, &host.name).map_err(problems)?;
    host_tree::common::attach_meta(&host.name, &mut sources, &host.files).map_err(problems)?;
    let ours = host_tree::hash_tree(&sources).map_err(io(&fleet.host_dir(&host.name)))?;
    let theirs: Vec<&FileEntry> = manifest
        .files
        .iter()
        .filter(|f| !f.path.as_str().starts_with("cache/"))
        .collect();
    let mut lines = file_differences(&ours, &theirs);
    if manifest.apply != host.apply {
        lines.push("  [apply] differs from this checkout's host.toml and fleet.toml".into());
    }
    if lines.is_empty() {
        return Ok(());
    }
    lines.truncate(20);
    Err(differs(lines.join("\n")))
}

fn file_differences(ours: &[FileEntry], theirs: &[&FileEntry]) -> Vec<String> {
    let mut lines = Vec::new();
    for f in theirs {
        match ours.iter().find(|o| o.path == f.path) {
            None => lines.push(format!(
                "  {}: in the release, not in this checkout",
                f.path
            )),
            Some(o) if o != *f => lines.push(format!("  {}: another content or setting", f.path)),
            Some(_) => {}
        }
    }
    for o in ours {
        if !theirs.iter().any(|f| f.path == o.path) {
            lines.push(format!(
                "  {}: in this checkout, not in the release",
                o.path
            ));
        }
    }
    lines
}

/// `trust/root-<version>.toml` for the fleet's current root, written when missing: a later
/// rotation is verified against it.
fn ensure_root_file(fleet: &Fleet, settings: &TrustSettings) -> Result<PathBuf, SignError> {
    let (path, _) = root_files(&fleet.root, settings.version);
    if !path.exists() {
        let dir = path.parent().expect("trust/root-<n>.toml");
        fs::create_dir_all(dir).map_err(io(dir))?;
        write(&path, settings.root().render().as_bytes())?;
    }
    Ok(path)
}

/// Signs the fleet's current root (`[trust]`, version n ≥ 2) as a rotation from root n-1:
/// the threshold of the old keys and of the new ones must each sign it. Returns the root's
/// file and how many signatures it holds.
pub fn sign_root(fleet: &Fleet, signer: &Signer) -> Result<(PathBuf, usize), SignError> {
    let settings = trust_of(fleet)?;
    let path = ensure_root_file(fleet, settings)?;
    let (previous, _) = root_files(&fleet.root, settings.version.saturating_sub(1));
    if settings.version < 2 || !previous.exists() {
        return Err(SignError::NoPreviousRoot {
            path,
            previous,
            version: settings.version,
        });
    }
    let text = fs::read(&path).map_err(io(&path))?;
    let (_, sig_path) = root_files(&fleet.root, settings.version);
    let mut sigs = match fs::read(&sig_path) {
        Ok(b) => Signatures::parse(&b)?,
        Err(_) => Signatures(Vec::new()),
    };
    sigs.add(signer.sign(ROOT_NAMESPACE, &text)?);
    write(&sig_path, sigs.render().as_bytes())?;
    Ok((path, sigs.0.len()))
}
