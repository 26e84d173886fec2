//! Signed releases on the host: `/CURRENT`'s release is applied only with a statement the threshold of the pinned admins' keys signed for this host, not expired, not older than what the host runs; rotations of the keys are followed, never backwards.

use std::path::Path;
use std::time::SystemTime;

use super::config::ClientConfig;
use super::remote_path;
use super::state::{Accepted, State};
use super::transport::{Remote, RemoteError};
use crate::core::hash::sha256_hex;
use crate::core::layout::{STATEMENT_FILE, STATEMENT_SIG_FILE, TRUST_DIR};
use crate::core::names::ReleaseId;
use crate::core::settings::parse_time;
use crate::core::trust::{self, MAX_SIGNATURE_BYTES, MAX_STATEMENT_BYTES, Statement, TrustRoot};

/// The root of trust the host adopted after a rotation (the pinned one is client.toml's).
pub const ADOPTED_ROOT_FILE: &str = "trust-root.toml";

/// Why a signed host refuses `/CURRENT`'s release; nothing of it is applied.
#[derive(Debug, thiserror::Error)]
pub enum SignedError {
    #[error(
        "release {id} is not signed (no statement line in /CURRENT): this host applies only releases its admins signed (client.toml [trust]); sign it with `tiffin sign` and publish again"
    )]
    Unsigned { id: ReleaseId },
    #[error("release {id}: its signed statement is refused: {source}; nothing was applied")]
    Refused {
        id: ReleaseId,
        #[source]
        source: trust::TrustError,
    },
    #[error(
        "release {id}: /{STATEMENT_FILE} is not the statement /CURRENT names (sha256 {got}, expected {expected}): a publish may be under way; the next poll tries again"
    )]
    Mismatch {
        id: ReleaseId,
        expected: String,
        got: String,
    },
    #[error(
        "the signed statement of release {id} expired at {expires}: this host keeps what it runs and applies nothing new until the admins renew it (`tiffin sign --renew`)"
    )]
    Expired { id: ReleaseId, expires: String },
    #[error(
        "release {id} is signed with seq {seq}, older than the release #{applied_seq} this host runs: refusing a rollback"
    )]
    Rollback {
        id: ReleaseId,
        seq: u64,
        applied_seq: u64,
    },
    #[error("the release's MANIFEST has seq {manifest}, its signed statement {signed}: refused")]
    SeqMismatch { manifest: u64, signed: u64 },
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("{path}: {message}")]
    Root { path: String, message: String },
}

/// The root the host trusts now: the pinned one, or a later one it adopted.
pub fn current_root(cfg: &ClientConfig, pinned: &TrustRoot) -> TrustRoot {
    let adopted = std::fs::read_to_string(cfg.state_dir.join(ADOPTED_ROOT_FILE))
        .ok()
        .and_then(|t| TrustRoot::parse(&t).ok());
    match adopted {
        // Never backwards: a lower adopted version (client.toml pinned a newer one) is ignored.
        Some(a) if a.version > pinned.version => a,
        _ => pinned.clone(),
    }
}

/// Checks `/CURRENT`'s release `id` against its signed statement; `current` is `/CURRENT`'s bytes.
pub async fn check<R: Remote>(
    remote: &mut R,
    cfg: &ClientConfig,
    pinned: &TrustRoot,
    state: &State,
    (current, id): (&[u8], &ReleaseId),
    now: SystemTime,
) -> Result<Accepted, SignedError> {
    let hash = crate::core::current::statement(current)
        .ok_or_else(|| SignedError::Unsigned { id: id.clone() })?;
    // Verified before (the same bytes): a no-change poll reads nothing more.
    if let Some(a) = state
        .signed
        .as_ref()
        .filter(|a| a.sha256 == hash && &a.release == id)
    {
        return not_expired(a.clone(), now);
    }
    let bytes = remote
        .read(&remote_path(&[STATEMENT_FILE]), MAX_STATEMENT_BYTES as u64)
        .await?;
    let got = sha256_hex(&bytes);
    if got != hash {
        let (id, expected) = (id.clone(), hash);
        return Err(SignedError::Mismatch { id, expected, got });
    }
    let sigs = remote
        .read(
            &remote_path(&[STATEMENT_SIG_FILE]),
            MAX_SIGNATURE_BYTES as u64,
        )
        .await?;
    let mut root = current_root(cfg, pinned);
    if let Ok(s) = Statement::parse(&bytes)
        && s.root > root.version
    {
        root = follow_rotations(remote, cfg, root, s.root).await?;
    }
    let refused = |source| SignedError::Refused {
        id: id.clone(),
        source,
    };
    let (statement, signers) = trust::check_statement(&root, &bytes, &sigs, &cfg.host, id, now)
        .map_err(|e| match e {
            trust::TrustError::Expired { expires } => SignedError::Expired {
                id: id.clone(),
                expires,
            },
            e => refused(e),
        })?;
    if let Some(applied) = &state.applied
        && (statement.seq < applied.seq || (statement.seq == applied.seq && &applied.id != id))
    {
        let (id, seq, applied_seq) = (id.clone(), statement.seq, applied.seq);
        return Err(SignedError::Rollback {
            id,
            seq,
            applied_seq,
        });
    }
    Ok(Accepted {
        sha256: hash,
        release: id.clone(),
        seq: statement.seq,
        expires: statement.expires,
        root: statement.root,
        signers: signers.0,
    })
}

fn not_expired(a: Accepted, now: SystemTime) -> Result<Accepted, SignedError> {
    match parse_time(&a.expires) {
        Some(t) if now < t => Ok(a),
        _ => Err(SignedError::Expired {
            id: a.release,
            expires: a.expires,
        }),
    }
}

/// Adopts the rotations from `root` up to version `to`, each signed by the threshold of the
/// keys before it and of its own; the newest is kept in `state_dir` (never a lower one).
async fn follow_rotations<R: Remote>(
    remote: &mut R,
    cfg: &ClientConfig,
    mut root: TrustRoot,
    to: u64,
) -> Result<TrustRoot, SignedError> {
    for n in root.version + 1..=to {
        let toml = remote_path(&[TRUST_DIR, &format!("root-{n}.toml")]);
        let next = remote.read(&toml, MAX_STATEMENT_BYTES as u64).await?;
        let sig = remote_path(&[TRUST_DIR, &format!("root-{n}.sig")]);
        let sigs = remote.read(&sig, MAX_SIGNATURE_BYTES as u64).await?;
        root = trust::check_rotation(&root, &next, &sigs).map_err(|e| SignedError::Root {
            path: toml.clone(),
            message: e.to_string(),
        })?;
        tracing::info!("adopted the fleet's root of trust version {n}");
    }
    let path = cfg.state_dir.join(ADOPTED_ROOT_FILE);
    save_root(&path, &root)?;
    Ok(root)
}

fn save_root(path: &Path, root: &TrustRoot) -> Result<(), SignedError> {
    super::state::write_file_atomic(path, root.render().as_bytes(), 0o600).map_err(|e| {
        SignedError::Root {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    })
}
