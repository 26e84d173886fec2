//! `tiffin publish`: turn each host's directory into an immutable release in its chroot, atomically.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::admin::fleet::{Fleet, Host};
use crate::admin::host_tree::{self, SourceFile};
use crate::core::diag::Problem;
use crate::core::durable;
use crate::core::hash::{sha256_file, sha256_reader};
use crate::core::layout::{
    CURRENT_FILE, ChrootPaths, SERVER_DIR_MODE, SERVER_FILE_MODE, list_releases,
};
use crate::core::names::{HostName, ReleaseId};
use crate::core::release::{FileEntry, MANIFEST_FILE, Manifest, ManifestHead};
use crate::core::settings::format_time;

/// Errors of publishing one host.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("host {host}: the fleet repository has problems (run `tiffin check`):\n{}", problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        host: HostName,
        problems: Vec<Problem>,
    },
    #[error("host {host}: {step} {path}: {source}")]
    Io {
        host: HostName,
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host {host}: the current release {id} is unreadable: {message}")]
    BrokenCurrent {
        host: HostName,
        id: String,
        message: String,
    },
    #[error("host {host}: injected fault ({0:?})", .fault)]
    Injected { host: HostName, fault: Fault },
    #[error(
        "host {host}: the rollout's release {id} is not in {} any more (pruned, or removed by hand): publish again to start a new rollout", dir.display()
    )]
    HeldMissing {
        host: HostName,
        id: String,
        dir: PathBuf,
    },
    #[error(
        "host {host}: the rollout's release {id} has no signed statement that verifies in the repository any more: sign it again (`tiffin sign`); the host keeps its current release"
    )]
    HeldUnsigned { host: HostName, id: String },
    #[error(transparent)]
    Prebuilt(#[from] crate::server::prebuilt::PrebuiltError),
    #[error(transparent)]
    Signing(#[from] crate::server::signing::SigningError),
}

/// Points where tests make publishing fail, to prove a failure leaves the previous state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// After writing this many files of the release.
    AfterFiles(usize),
    /// With the release complete in staging, before it is renamed into `releases/`.
    BeforeReleaseRename,
    /// With the release in `releases/`, before `CURRENT` is swapped.
    BeforeCurrentSwap,
}

/// Whether publish writes releases or only says what it would write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Write,
    DryRun,
}

/// Whether a host whose directory did not change still gets a new release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Only when something changed (every publish).
    Changed,
    /// Always: `tiffin verify --repair` replaces a damaged current release by a fresh copy.
    Always,
}

#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub chroot_root: PathBuf,
    /// Where each host's last seq is kept (`<state_dir>/seq/<host>`), outside every chroot.
    pub state_dir: PathBuf,
    pub mode: Mode,
    pub when: When,
    pub keep_releases: usize,
    pub now: SystemTime,
    /// Whether a new release becomes current now or waits for its rollout wave.
    pub hold: Hold,
    /// Test hook; `None` in real use.
    pub fault: Option<Fault>,
}

/// What a publish does with a host's new release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// `CURRENT` names it at once (no rollout, or `--all-at-once`).
    Swap,
    /// It waits in `releases/` until its rollout wave releases it (`server::rollout`).
    Rollout,
}

/// What publishing did (or, with `--dry-run`, would do) for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged {
        id: ReleaseId,
        seq: u64,
    },
    Published {
        id: ReleaseId,
        seq: u64,
        change: Change,
        pruned: usize,
        mode: Mode,
    },
    /// A signed fleet: the release is in `releases/` but `CURRENT` still names the previous
    /// one until the repository holds the admins' statement for it (`tiffin sign`).
    AwaitingSignature {
        id: ReleaseId,
        seq: u64,
        change: Change,
        /// The MANIFEST to sign (`<state_dir>/to-sign/<host>.MANIFEST`).
        to_sign: Option<PathBuf>,
        mode: Mode,
    },
    /// A rollout: the release (signed, on a signed fleet) is in `releases/`; `CURRENT` names
    /// it when the host's wave starts.
    Held {
        id: ReleaseId,
        seq: u64,
        change: Change,
        mode: Mode,
    },
    /// A signed fleet: the same release, a new statement (a renewed expiry).
    Renewed {
        id: ReleaseId,
        seq: u64,
        expires: String,
    },
}

/// Whether a written release becomes current.
enum Gate<'a> {
    /// `CURRENT` names it; a signed fleet's statement goes with it.
    Swap(Option<&'a crate::server::signing::Approval>),
    /// It waits in `releases/` for its statement.
    Stage,
}

/// How a new release differs from the previous one, counted in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub first: bool,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first {
            return write!(f, "first release, {} files", self.added);
        }
        let mut parts = Vec::new();
        for (n, what) in [
            (self.added, "added"),
            (self.changed, "changed"),
            (self.removed, "removed"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if parts.is_empty() {
            write!(f, "apply policy changed")
        } else {
            write!(f, "{}", parts.join(", "))
        }
    }
}

/// The release `CURRENT` names: the base of the next one (its seq, and files to hard-link).
struct Previous {
    id: ReleaseId,
    manifest: Manifest,
}

/// A host's next release, computed from its directory but not written yet.
struct Next {
    sources: Vec<SourceFile>,
    paths: ChrootPaths,
    previous: Option<Previous>,
    manifest: Manifest,
    change: Change,
}

enum Prepared {
    Unchanged { id: ReleaseId, seq: u64 },
    Next(Box<Next>),
}

/// Publishes one host: unchanged trees write nothing; otherwise a new release
/// is staged, fsynced, renamed into `releases/`, and `CURRENT` swapped by rename.
pub fn publish_host(
    fleet: &Fleet,
    host: &Host,
    opts: &PublishOptions,
) -> Result<Outcome, PublishError> {
    let prepared = prepare(fleet, host, opts)?;
    if let Some(trust) = &fleet.config.trust {
        return publish_signed(fleet, trust, host, opts, prepared);
    }
    let next = match prepared {
        Prepared::Unchanged { id, seq } => return Ok(Outcome::Unchanged { id, seq }),
        Prepared::Next(next) => next,
    };
    match (opts.mode, opts.hold) {
        (Mode::DryRun, Hold::Swap) => Ok(Outcome::Published {
            id: next.manifest.id(),
            seq: next.manifest.seq,
            change: next.change,
            pruned: 0,
            mode: Mode::DryRun,
        }),
        (Mode::Write, Hold::Swap) => install(fleet, *next, opts, Gate::Swap(None)),
        (mode, Hold::Rollout) => hold(fleet, *next, opts, mode),
    }
}

/// A rollout's release: written once and left in `releases/` (publishing the same tree
/// again finds it); its wave makes it current.
fn hold(
    fleet: &Fleet,
    next: Next,
    opts: &PublishOptions,
    mode: Mode,
) -> Result<Outcome, PublishError> {
    let change = next.change;
    let held = crate::server::signing::staged_like(&next.paths, &next.manifest);
    let (id, seq) = match (held, mode) {
        (Some(held), _) => held,
        (None, Mode::DryRun) => (next.manifest.id(), next.manifest.seq),
        (None, Mode::Write) => match install(fleet, next, opts, Gate::Stage)? {
            Outcome::Published { id, seq, .. } => (id, seq),
            _ => unreachable!("install returns Published"),
        },
    };
    Ok(Outcome::Held {
        id,
        seq,
        change,
        mode,
    })
}

/// A signed fleet's host: a release becomes current only with a statement for it that
/// verifies; without one it is staged (once) and left to sign; a new statement for the
/// current release renews it.
fn publish_signed(
    fleet: &Fleet,
    trust: &crate::admin::fleet::trust::TrustSettings,
    host: &Host,
    opts: &PublishOptions,
    prepared: Prepared,
) -> Result<Outcome, PublishError> {
    use crate::server::signing;
    let paths = ChrootPaths::new(&opts.chroot_root, &host.name);
    if opts.mode == Mode::Write {
        let rotations = signing::rotations(&fleet.root, trust)?;
        signing::ship_rotations(
            &paths,
            &host.name,
            &rotations,
            host_group(fleet, &host.name),
        )?;
    }
    let next = match prepared {
        Prepared::Unchanged { id, seq } => {
            return renew(fleet, trust, (&paths, &host.name), opts, (id, seq));
        }
        Prepared::Next(next) => next,
    };
    let staged = signing::staged_like(&paths, &next.manifest);
    let approval = match &staged {
        Some((id, _)) => signing::approval(fleet, trust, &host.name, id, opts.now)
            .or_else(signing::still_signing)?,
        None => None,
    };
    if let Some((id, seq)) = &staged
        && let Some(approval) = approval
    {
        if opts.hold == Hold::Rollout {
            let (id, seq, change, mode) = (id.clone(), *seq, next.change, opts.mode);
            return Ok(Outcome::Held {
                id,
                seq,
                change,
                mode,
            });
        }
        if opts.mode == Mode::DryRun {
            let (id, seq, change) = (id.clone(), *seq, next.change);
            let mode = Mode::DryRun;
            return Ok(Outcome::Published {
                id,
                seq,
                change,
                pruned: 0,
                mode,
            });
        }
        return activate(
            fleet,
            (&paths, &host.name),
            opts,
            (id.clone(), *seq),
            &approval,
            next.change,
        );
    }
    stage_to_sign(fleet, (&paths, &host.name), opts, staged, *next)
}

/// No statement for the release yet: it is staged once (publishing again finds it) and its
/// MANIFEST left for the admins to sign.
fn stage_to_sign(
    fleet: &Fleet,
    (paths, host): (&ChrootPaths, &HostName),
    opts: &PublishOptions,
    staged: Option<(ReleaseId, u64)>,
    next: Next,
) -> Result<Outcome, PublishError> {
    use crate::server::signing;
    let (change, mode) = (next.change, opts.mode);
    let (id, seq) = match (staged, mode) {
        (Some(staged), _) => staged,
        (None, Mode::DryRun) => (next.manifest.id(), next.manifest.seq),
        (None, Mode::Write) => match install(fleet, next, opts, Gate::Stage)? {
            Outcome::Published { id, seq, .. } => (id, seq),
            _ => unreachable!("install returns Published"),
        },
    };
    let to_sign = match mode {
        Mode::Write => Some(signing::leave_to_sign(&opts.state_dir, paths, host, &id)?),
        Mode::DryRun => None,
    };
    Ok(Outcome::AwaitingSignature {
        id,
        seq,
        change,
        to_sign,
        mode,
    })
}

/// The release is current already: a statement for it that is not the installed one (a new
/// expiry) is installed with `CURRENT`'s statement line; the release itself is untouched.
fn renew(
    fleet: &Fleet,
    trust: &crate::admin::fleet::trust::TrustSettings,
    (paths, host): (&ChrootPaths, &HostName),
    opts: &PublishOptions,
    (id, seq): (ReleaseId, u64),
) -> Result<Outcome, PublishError> {
    use crate::server::signing;
    let host = host.clone();
    let Some(approval) = signing::approval(fleet, trust, &host, &id, opts.now)? else {
        return Ok(Outcome::Unchanged { id, seq });
    };
    if signing::installed_statement(paths).as_deref() == Some(approval.sha256.as_str()) {
        return Ok(Outcome::Unchanged { id, seq });
    }
    if opts.mode == Mode::Write {
        install_and_swap(fleet, (paths, &host), opts, &id, &approval)?;
    }
    let expires = approval.statement.expires.clone();
    Ok(Outcome::Renewed { id, seq, expires })
}

/// The statement into the chroot first, then `CURRENT` naming the release and the statement.
fn install_and_swap(
    fleet: &Fleet,
    (paths, host): (&ChrootPaths, &HostName),
    opts: &PublishOptions,
    id: &ReleaseId,
    approval: &crate::server::signing::Approval,
) -> Result<(), PublishError> {
    let group = host_group(fleet, host);
    let staging = paths.staging();
    ensure_dir(&staging, 0o700, None).map_err(io_error(host, "creating", &staging))?;
    crate::server::signing::install_statement(paths, host, approval, group)?;
    let stager = Stager {
        paths,
        host,
        group,
        fault: opts.fault,
    };
    stager.swap_current(id, Some(&approval.sha256))
}

/// A staged release whose statement verifies: the statement goes into the chroot, then
/// `CURRENT` names the release.
fn activate(
    fleet: &Fleet,
    (paths, host): (&ChrootPaths, &HostName),
    opts: &PublishOptions,
    (id, seq): (ReleaseId, u64),
    approval: &crate::server::signing::Approval,
    change: Change,
) -> Result<Outcome, PublishError> {
    let host = host.clone();
    install_and_swap(fleet, (paths, &host), opts, &id, approval)?;
    // Signed and published: nothing of it is left to sign.
    let _ = fs::remove_file(
        opts.state_dir
            .join(crate::server::signing::TO_SIGN_DIR)
            .join(format!("{host}.MANIFEST")),
    );
    let pruned = prune(paths, &id, opts.keep_releases).map_err(io_error(
        &host,
        "pruning",
        &paths.releases(),
    ))?;
    let mode = Mode::Write;
    Ok(Outcome::Published {
        id,
        seq,
        change,
        pruned,
        mode,
    })
}

/// What releasing a rollout's held release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// `CURRENT` names it now.
    Now,
    /// `CURRENT` named it already.
    Already,
    /// `CURRENT` names a newer release (a later publish): left alone.
    Superseded,
}

/// A rollout's wave reaches the host: `CURRENT` names its held release (with its statement on
/// a signed fleet), unless it names it already or a newer one.
pub fn release_held(
    fleet: &Fleet,
    host: &HostName,
    (id, seq): (&ReleaseId, u64),
    opts: &PublishOptions,
) -> Result<Released, PublishError> {
    let paths = ChrootPaths::new(&opts.chroot_root, host);
    let current = paths
        .read_current()
        .map_err(io_error(host, "reading", &paths.current()))?;
    if current.as_ref() == Some(id) {
        return Ok(Released::Already);
    }
    if current.is_some_and(|c| seq_of(&paths, &c).is_some_and(|s| s > seq)) {
        return Ok(Released::Superseded);
    }
    if !paths.release(id).join(MANIFEST_FILE).is_file() {
        let dir = paths.release(id);
        let (host, id) = (host.clone(), id.to_string());
        return Err(PublishError::HeldMissing { host, id, dir });
    }
    match &fleet.config.trust {
        Some(trust) => {
            let approval = crate::server::signing::approval(fleet, trust, host, id, opts.now)?
                .ok_or_else(|| PublishError::HeldUnsigned {
                    host: host.clone(),
                    id: id.to_string(),
                })?;
            install_and_swap(fleet, (&paths, host), opts, id, &approval)?;
            let to_sign = opts.state_dir.join(crate::server::signing::TO_SIGN_DIR);
            let _ = fs::remove_file(to_sign.join(format!("{host}.MANIFEST")));
        }
        None => {
            let group = host_group(fleet, host);
            let staging = paths.staging();
            ensure_dir(&staging, 0o700, None).map_err(io_error(host, "creating", &staging))?;
            let stager = Stager {
                paths: &paths,
                host,
                group,
                fault: opts.fault,
            };
            stager.swap_current(id, None)?;
        }
    }
    prune(&paths, id, opts.keep_releases).map_err(io_error(host, "pruning", &paths.releases()))?;
    Ok(Released::Now)
}

/// The seq of a stored release, if its MANIFEST can be read.
fn seq_of(paths: &ChrootPaths, id: &ReleaseId) -> Option<u64> {
    let bytes = fs::read(paths.release(id).join(MANIFEST_FILE)).ok()?;
    ManifestHead::parse(&bytes).ok().map(|h| h.seq)
}

/// A rollout's revert: the stored release `from` published again as a new, higher seq (the
/// host's seq guard never sees a lower one), its files hard-linked, and made current.
pub fn republish(
    fleet: &Fleet,
    host: &HostName,
    from: &ReleaseId,
    opts: &PublishOptions,
) -> Result<(ReleaseId, u64), PublishError> {
    let paths = ChrootPaths::new(&opts.chroot_root, host);
    let source = paths.release(from);
    let bytes = fs::read(source.join(MANIFEST_FILE)).map_err(|_| PublishError::HeldMissing {
        host: host.clone(),
        id: from.to_string(),
        dir: source.clone(),
    })?;
    let mut manifest =
        Manifest::parse_verified(&bytes, from).map_err(|e| PublishError::BrokenCurrent {
            host: host.clone(),
            id: from.to_string(),
            message: e.to_string(),
        })?;
    let current_seq = paths
        .read_current()
        .ok()
        .flatten()
        .and_then(|c| seq_of(&paths, &c))
        .unwrap_or(0);
    let recorded = SeqRecord::new(&opts.state_dir, host).read()?;
    manifest.seq = current_seq.max(recorded) + 1;
    manifest.created = format_time(opts.now);
    let stager = Stager {
        paths: &paths,
        host,
        group: host_group(fleet, host),
        fault: opts.fault,
    };
    stager.prepare_dirs(&opts.chroot_root)?;
    SeqRecord::new(&opts.state_dir, host).reserve(manifest.seq)?;
    let result = stager
        .link_release(&source, &manifest)
        .and_then(|id| stager.swap_current(&id, None).map(|()| id));
    let _ = fs::remove_dir_all(paths.staging());
    let id = result?;
    prune(&paths, &id, opts.keep_releases).map_err(io_error(host, "pruning", &paths.releases()))?;
    Ok((id, manifest.seq))
}

/// Resolves and hashes the host's directory and compares it with the current release.
fn prepare(fleet: &Fleet, host: &Host, opts: &PublishOptions) -> Result<Prepared, PublishError> {
    let name = &host.name;
    let invalid = |problems| PublishError::Invalid {
        host: name.clone(),
        problems,
    };
    let mut sources = host_tree::resolve_host_tree(&fleet.root, name).map_err(invalid)?;
    host_tree::common::attach_meta(name, &mut sources, &host.files).map_err(invalid)?;
    let paths = ChrootPaths::new(&opts.chroot_root, name);
    let current_id = paths
        .read_current()
        .map_err(io_error(name, "reading", &paths.current()))?;
    let entries =
        host_tree::hash_tree(&sources).map_err(io_error(name, "hashing", &fleet.host_dir(name)))?;
    let (sources, entries, toplevel) = add_closure(fleet, host, &paths, opts, sources, entries)?;
    let mut manifest = Manifest {
        host: name.clone(),
        seq: 0,
        created: format_time(opts.now),
        apply: host.apply.clone(),
        toplevel,
        files: entries,
    };
    let previous = match current_id {
        None => None,
        Some(id) => match read_current_release(&paths, id, &manifest, opts.when)? {
            Current::Same { id, seq } => return Ok(Prepared::Unchanged { id, seq }),
            Current::Differs(previous) => Some(previous),
        },
    };
    let previous_manifest = previous.as_ref().map(|p| &p.manifest);
    let recorded = SeqRecord::new(&opts.state_dir, name).read()?;
    manifest.seq = next_seq(&paths, previous_manifest).max(recorded + 1);
    let change = diff(previous_manifest, &manifest);
    Ok(Prepared::Next(Box::new(Next {
        sources,
        paths,
        previous,
        manifest,
        change,
    })))
}

/// A `build = "server"` host: its system built, its closure's cache files added to the
/// release (`toplevel` set); other hosts pass through unchanged.
fn add_closure(
    fleet: &Fleet,
    host: &Host,
    paths: &ChrootPaths,
    opts: &PublishOptions,
    mut sources: Vec<SourceFile>,
    mut entries: Vec<FileEntry>,
) -> Result<PrebuiltParts, PublishError> {
    if host.apply.build != crate::core::settings::Build::Server {
        return Ok((sources, entries, None));
    }
    let server = &fleet.config.server;
    let builder = crate::server::prebuilt::Builder {
        build: &server.build,
        signing_key: server.signing_key.as_deref(),
        state_dir: &opts.state_dir,
    };
    // The current release, read only to reuse its cache files when the toplevel is the same;
    // never for `verify --repair` (When::Always), which must not link a damaged file again.
    let reusable = opts.when == When::Changed;
    let current = paths
        .read_current()
        .ok()
        .flatten()
        .filter(|_| reusable)
        .and_then(|id| {
            let dir = paths.release(&id);
            let bytes = fs::read(dir.join(MANIFEST_FILE)).ok()?;
            Some((dir, Manifest::parse_verified(&bytes, &id).ok()?))
        });
    let closure = builder.closure(
        &host.name,
        &sources,
        current.as_ref().map(|(d, m)| (d.as_path(), m)),
    )?;
    for (src, entry) in closure.files {
        sources.push(src);
        entries.push(entry);
    }
    Ok((sources, entries, Some(closure.toplevel)))
}

type PrebuiltParts = (
    Vec<SourceFile>,
    Vec<FileEntry>,
    Option<crate::core::narinfo::StorePath>,
);

enum Current {
    Same { id: ReleaseId, seq: u64 },
    Differs(Previous),
}

/// Reads the current release and tells whether `candidate` would be the same release.
fn read_current_release(
    paths: &ChrootPaths,
    id: ReleaseId,
    candidate: &Manifest,
    when: When,
) -> Result<Current, PublishError> {
    let broken = |message: String| PublishError::BrokenCurrent {
        host: candidate.host.clone(),
        id: id.to_string(),
        message,
    };
    let bytes =
        fs::read(paths.release(&id).join(MANIFEST_FILE)).map_err(|e| broken(e.to_string()))?;
    // Cheap no-change test for big fleets: the candidate rendered with the current
    // release's header has the current id exactly when nothing changed.
    let head = ManifestHead::parse(&bytes).map_err(|e| broken(e.to_string()))?;
    let same_header = Manifest {
        seq: head.seq,
        created: head.created,
        ..candidate.clone()
    };
    if same_header.id() == id && when == When::Changed {
        return Ok(Current::Same { id, seq: head.seq });
    }
    let manifest = Manifest::parse_verified(&bytes, &id).map_err(|e| broken(e.to_string()))?;
    Ok(Current::Differs(Previous { id, manifest }))
}

/// Writes the release, swaps `CURRENT`, prunes old releases.
fn install(
    fleet: &Fleet,
    next: Next,
    opts: &PublishOptions,
    gate: Gate,
) -> Result<Outcome, PublishError> {
    let name = next.manifest.host.clone();
    let stager = Stager {
        paths: &next.paths,
        host: &name,
        group: host_group(fleet, &name),
        fault: opts.fault,
    };
    stager.prepare_dirs(&opts.chroot_root)?;
    // Reserved before anything is published: a failure later leaves a gap, never a reused seq.
    SeqRecord::new(&opts.state_dir, &name).reserve(next.manifest.seq)?;
    let result = stager.stage_and_swap(&next, &gate);
    let _ = fs::remove_dir_all(next.paths.staging());
    let (id, seq) = result?;
    let pruned = prune(&next.paths, &id, opts.keep_releases).map_err(io_error(
        &name,
        "pruning",
        &next.paths.releases(),
    ))?;
    Ok(Outcome::Published {
        id,
        seq,
        change: next.change,
        pruned,
        mode: Mode::Write,
    })
}

/// Writes one host's release: the chroot it writes into, the group its files get, the fault to inject.
struct Stager<'a> {
    paths: &'a ChrootPaths,
    host: &'a HostName,
    group: Option<u32>,
    fault: Option<Fault>,
}

impl Stager<'_> {
    fn io(
        &self,
        step: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> PublishError + use<> {
        io_error(self.host, step, path)
    }

    fn inject(&self, at: Fault) -> Result<(), PublishError> {
        if self.fault == Some(at) {
            return Err(PublishError::Injected {
                host: self.host.clone(),
                fault: at,
            });
        }
        Ok(())
    }

    /// The chroot root, the host's chroot and releases/, and an empty root-only staging directory.
    fn prepare_dirs(&self, chroot_root: &Path) -> Result<(), PublishError> {
        if !chroot_root.is_dir() {
            fs::create_dir_all(chroot_root).map_err(self.io("creating", chroot_root))?;
        }
        for dir in [&self.paths.root, &self.paths.releases()] {
            ensure_dir(dir, SERVER_DIR_MODE, self.group).map_err(self.io("creating", dir))?;
        }
        let staging = self.paths.staging();
        // Left over by an interrupted publish; never visible to the client.
        let _ = fs::remove_dir_all(&staging);
        ensure_dir(&staging, 0o700, None).map_err(self.io("creating", &staging))
    }

    fn stage_and_swap(&self, next: &Next, gate: &Gate) -> Result<(ReleaseId, u64), PublishError> {
        let mut manifest = next.manifest.clone();
        let tmp = self
            .paths
            .staging()
            .join(format!("release-{}", manifest.seq));
        ensure_dir(&tmp, SERVER_DIR_MODE, self.group).map_err(self.io("creating", &tmp))?;
        manifest.files = self.write_files(&tmp, next)?;
        let id = self.write_manifest(&tmp, &manifest)?;
        self.inject(Fault::BeforeReleaseRename)?;
        let final_dir = self.paths.release(&id);
        fs::rename(&tmp, &final_dir).map_err(self.io("renaming into place", &final_dir))?;
        let releases = self.paths.releases();
        durable::sync_dir(&releases).map_err(self.io("syncing", &releases))?;
        self.inject(Fault::BeforeCurrentSwap)?;
        if let Gate::Swap(approval) = gate {
            self.swap_current(&id, approval.map(|a| a.sha256.as_str()))?;
        }
        Ok((id, manifest.seq))
    }

    /// A release whose files are those of the stored release `source` (hard-linked: releases
    /// are immutable), under `manifest`, renamed into `releases/`.
    fn link_release(&self, source: &Path, manifest: &Manifest) -> Result<ReleaseId, PublishError> {
        let tmp = self
            .paths
            .staging()
            .join(format!("release-{}", manifest.seq));
        ensure_dir(&tmp, SERVER_DIR_MODE, self.group).map_err(self.io("creating", &tmp))?;
        for file in &manifest.files {
            let (old, dest) = (file.path.under(source), file.path.under(&tmp));
            if let Some(parent) = dest.parent() {
                ensure_dir_all(&tmp, parent, self.group).map_err(self.io("creating", parent))?;
            }
            let intact = sha256_file(&old)
                .is_ok_and(|(sha, size)| sha == file.sha256.as_str() && size == file.size);
            if !intact {
                let e = std::io::Error::other("no longer matches its MANIFEST (`tiffin verify`)");
                return Err(self.io("linking", &old)(e));
            }
            fs::hard_link(&old, &dest).map_err(self.io("linking", &dest))?;
        }
        let id = self.write_manifest(&tmp, manifest)?;
        let final_dir = self.paths.release(&id);
        fs::rename(&tmp, &final_dir).map_err(self.io("renaming into place", &final_dir))?;
        let releases = self.paths.releases();
        durable::sync_dir(&releases).map_err(self.io("syncing", &releases))?;
        Ok(id)
    }

    /// Copies (or hard-links, when unchanged since the previous release) every file into `tmp`.
    fn write_files(&self, tmp: &Path, next: &Next) -> Result<Vec<FileEntry>, PublishError> {
        // Unchanged files are hard links to the previous release (immutable, so sharing is safe).
        let reusable: HashMap<&str, &FileEntry> = next
            .previous
            .iter()
            .flat_map(|p| p.manifest.files.iter().map(|f| (f.path.as_str(), f)))
            .collect();
        let mut entries = Vec::with_capacity(next.sources.len());
        for (i, src) in next.sources.iter().enumerate() {
            self.inject(Fault::AfterFiles(i))?;
            let hashed = next
                .manifest
                .files
                .iter()
                .find(|f| f.path == src.release_path)
                .expect("manifest built from the same sources");
            let reuse = reusable
                .get(src.release_path.as_str())
                .filter(|old| old.sha256 == hashed.sha256 && old.size == hashed.size)
                .and(next.previous.as_ref());
            entries.push(self.write_file(tmp, src, hashed, reuse)?);
        }
        self.inject(Fault::AfterFiles(next.sources.len()))?;
        Ok(entries)
    }

    fn write_file(
        &self,
        tmp: &Path,
        src: &SourceFile,
        hashed: &FileEntry,
        reuse: Option<&Previous>,
    ) -> Result<FileEntry, PublishError> {
        let dest = src.release_path.under(tmp);
        if let Some(parent) = dest.parent() {
            ensure_dir_all(tmp, parent, self.group).map_err(self.io("creating", parent))?;
        }
        if src.release_path.first() == crate::core::release::CACHE_DIR
            && crate::server::prebuilt::link_cache_file(&src.source, &dest)
        {
            return Ok(hashed.clone());
        }
        if let Some(previous) = reuse {
            let old = src.release_path.under(&self.paths.release(&previous.id));
            // A stored file changed after publishing must not spread into every later release.
            let intact = sha256_file(&old)
                .is_ok_and(|(sha, size)| sha == hashed.sha256.as_str() && size == hashed.size);
            if !intact {
                tracing::warn!(
                    "host {}: {} no longer matches release {}'s MANIFEST; copied afresh instead of linked (`tiffin verify` checks every stored release)",
                    self.host,
                    old.display(),
                    previous.id.short()
                );
            } else if fs::hard_link(old, &dest).is_ok() {
                return Ok(FileEntry {
                    mode: src.mode,
                    ..hashed.clone()
                });
            }
        }
        // Hash what is written, not what was read earlier: the admin may be editing.
        Ok(copy_hashing(&src.source, &dest, self.group)
            .map_err(self.io("writing", &dest))?
            .into_entry(src))
    }

    fn write_manifest(&self, tmp: &Path, manifest: &Manifest) -> Result<ReleaseId, PublishError> {
        let text = manifest.render();
        let path = tmp.join(MANIFEST_FILE);
        durable::create_synced(
            &path,
            text.as_bytes(),
            SERVER_FILE_MODE,
            owner_of(self.group),
        )
        .map_err(self.io("writing", &path))?;
        durable::sync_tree(tmp).map_err(self.io("syncing", tmp))?;
        Ok(ReleaseId::of_bytes(text.as_bytes()))
    }

    /// `statement`: the sha256 of the signed statement installed with the release.
    fn swap_current(&self, id: &ReleaseId, statement: Option<&str>) -> Result<(), PublishError> {
        let tmp = self.paths.staging().join(CURRENT_FILE);
        // A crash between writing and renaming leaves it behind; it was never visible to anyone.
        let _ = fs::remove_file(&tmp);
        // A pending trigger (line 2, `tiffin trigger`) survives the new release.
        let kept = fs::read(self.paths.current())
            .ok()
            .and_then(|b| crate::core::current::trigger(&b));
        let text = crate::core::current::render(id.as_str(), kept.as_ref(), statement);
        durable::create_synced(
            &tmp,
            text.as_bytes(),
            SERVER_FILE_MODE,
            owner_of(self.group),
        )
        .map_err(self.io("writing", &tmp))?;
        let current = self.paths.current();
        fs::rename(&tmp, &current).map_err(self.io("swapping", &current))?;
        durable::sync_dir(&self.paths.root).map_err(self.io("syncing", &self.paths.root))
    }
}

/// Turns an io::Error into a PublishError naming the host, the step and the path.
fn io_error(
    host: &HostName,
    step: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> PublishError + use<> {
    let (host, path) = (host.clone(), path.to_owned());
    move |source| PublishError::Io {
        host,
        step,
        path,
        source,
    }
}

struct Copied {
    sha256: String,
    size: u64,
}

impl Copied {
    fn into_entry(self, src: &SourceFile) -> FileEntry {
        let sha = crate::core::release::Sha256Hex::new(self.sha256).expect("hex of a digest");
        FileEntry::new(src.release_path.clone(), self.size, src.mode, sha)
            .with_meta(&src.meta, src.origin)
    }
}

fn copy_hashing(src: &Path, dest: &Path, group: Option<u32>) -> std::io::Result<Copied> {
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(SERVER_FILE_MODE)
        .open(dest)?;
    let (sha256, size) = sha256_reader(fs::File::open(src)?, &mut out)?;
    durable::finish(&out, SERVER_FILE_MODE, owner_of(group))?;
    Ok(Copied { sha256, size })
}

pub use crate::core::durable::ensure_dir;

fn ensure_dir_all(base: &Path, dir: &Path, group: Option<u32>) -> std::io::Result<()> {
    if dir == base || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir_all(base, parent, group)?;
    }
    ensure_dir(dir, SERVER_DIR_MODE, group)
}

/// The host's group on the server, when we can and should chown to it.
pub fn host_group(fleet: &Fleet, host: &HostName) -> Option<u32> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let account = fleet.account_name(host);
    match nix::unistd::Group::from_name(&account) {
        Ok(Some(g)) => Some(g.gid.as_raw()),
        _ => {
            tracing::debug!(
                "host {host}: group {account} does not exist, so its release stays root-only until `tiffin provision` runs"
            );
            Some(0)
        }
    }
}

fn next_seq(paths: &ChrootPaths, previous: Option<&Manifest>) -> u64 {
    // A release newer than CURRENT can exist if CURRENT was rolled back by hand; never reuse its seq.
    let newest_listed = list_releases(paths)
        .into_iter()
        .map(|(_, seq)| seq)
        .max()
        .unwrap_or(0);
    previous.map_or(0, |p| p.seq).max(newest_listed) + 1
}

/// A host's last seq, kept outside its chroot (`<state_dir>/seq/<host>`): a chroot that is
/// re-provisioned, pruned or moved loses its releases, but the next seq still exceeds every
/// seq the host's client may have applied, so the client never refuses it as a downgrade.
struct SeqRecord<'a> {
    path: PathBuf,
    host: &'a HostName,
}

impl<'a> SeqRecord<'a> {
    fn new(state_dir: &Path, host: &'a HostName) -> SeqRecord<'a> {
        SeqRecord {
            path: state_dir.join("seq").join(host.as_str()),
            host,
        }
    }

    /// The recorded seq, 0 when there is none yet. A record that cannot be read stops the
    /// publish: guessing could hand out a seq the client already applied.
    fn read(&self) -> Result<u64, PublishError> {
        match fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse().map_err(|_| PublishError::Io {
                host: self.host.clone(),
                step: "reading the seq record",
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{:?} is not a number; put the highest seq this host ever had there (or remove the file if the host is new)",
                        text.trim()
                    ),
                ),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_error(self.host, "reading the seq record", &self.path)(e)),
        }
    }

    fn reserve(&self, seq: u64) -> Result<(), PublishError> {
        let dir = self.path.parent().expect("seq/<host>");
        let io = |step| io_error(self.host, step, &self.path);
        // The state directory like any under /var/lib; only seq/ itself is root's alone.
        if let Some(state_dir) = dir.parent() {
            fs::create_dir_all(state_dir).map_err(io("creating the state directory of"))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(io("creating the seq record in")(e));
            }
            _ => {}
        }
        durable::write_atomic(
            &self.path,
            format!("{seq}\n").as_bytes(),
            0o600,
            durable::Owner::Caller,
        )
        .map_err(io("writing the seq record"))
    }
}

/// Removes all but the newest `keep` releases, never the current one.
fn prune(paths: &ChrootPaths, current: &ReleaseId, keep: usize) -> std::io::Result<usize> {
    let mut releases = list_releases(paths);
    releases.sort_by_key(|r| std::cmp::Reverse(r.1));
    let mut pruned = 0;
    for (id, _) in releases.into_iter().skip(keep.max(1)) {
        if &id != current {
            fs::remove_dir_all(paths.release(&id))?;
            pruned += 1;
        }
    }
    Ok(pruned)
}

fn diff(previous: Option<&Manifest>, next: &Manifest) -> Change {
    let Some(prev) = previous else {
        return Change {
            added: next.files.len(),
            first: true,
            ..Change::default()
        };
    };
    let old: HashMap<&str, &FileEntry> = prev.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut change = Change::default();
    for f in &next.files {
        match old.get(f.path.as_str()) {
            None => change.added += 1,
            Some(o) if *o != f => change.changed += 1,
            Some(_) => {}
        }
    }
    let new: std::collections::HashSet<&str> = next.files.iter().map(|f| f.path.as_str()).collect();
    change.removed = prev
        .files
        .iter()
        .filter(|f| !new.contains(f.path.as_str()))
        .count();
    change
}

/// Why a host directory did not load, for a host that was selected but is not in the fleet.
fn problems_of(fleet: &Fleet, name: &HostName) -> Vec<Problem> {
    let mut problems: Vec<Problem> = fleet
        .problems
        .iter()
        .filter(|p| p.host.as_ref() == Some(name))
        .cloned()
        .collect();
    if problems.is_empty() {
        problems = host_tree::resolve_host_tree(&fleet.root, name)
            .err()
            .unwrap_or_else(|| {
                vec![Problem::error(
                    Some(name),
                    Path::new("hosts").join(name.as_str()),
                    "this host did not load",
                )]
            });
    }
    problems
}

/// Takes the publish lock of a chroot root (creating the root when missing), so two
/// `tiffin publish` runs never interleave on one chroot root; held until dropped.
pub fn lock_chroot_root(chroot_root: &Path) -> Result<durable::Lock, String> {
    fs::create_dir_all(chroot_root).map_err(|e| e.to_string())?;
    durable::Lock::try_exclusive(&chroot_root.join(".publish.lock")).map_err(|e| match e {
        durable::LockError::Busy { path } => format!(
            "another `tiffin publish` holds {}; wait for it to finish",
            path.display()
        ),
        e => e.to_string(),
    })
}

/// Release files belong to root and the host's group; without root (tests) to the caller.
fn owner_of(group: Option<u32>) -> durable::Owner {
    group.map_or(durable::Owner::Caller, durable::Owner::RootGroup)
}

/// Publishes `hosts` in parallel (hashing dominates); results in host order.
pub fn publish_all(
    fleet: &Fleet,
    hosts: &[HostName],
    opts: &PublishOptions,
) -> Vec<(HostName, Result<Outcome, PublishError>)> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(hosts.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Result<Outcome, PublishError>>> =
        (0..hosts.len()).map(|_| None).collect();
    let slots = std::sync::Mutex::new(&mut results);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(name) = hosts.get(i) else { break };
                    let result = match fleet.hosts.get(name) {
                        Some(host) => publish_host(fleet, host, opts),
                        None => Err(PublishError::Invalid {
                            host: name.clone(),
                            problems: problems_of(fleet, name),
                        }),
                    };
                    slots.lock().expect("no panics while holding")[i] = Some(result);
                }
            });
        }
    });
    hosts
        .iter()
        .cloned()
        .zip(results.into_iter().map(|r| r.expect("every host visited")))
        .collect()
}
