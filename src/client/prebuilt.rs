//! Prebuilt releases on the client: download the narinfos, fetch only the NARs the local store lacks, import the closure under the fleet's key, and switch to the server-built system without evaluating anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::core::layout::RELEASES_DIR;
use crate::core::names::ReleaseId;
use crate::core::narinfo::{CACHE_INFO_FILE, NARINFO_LIMIT, NarInfo, NarInfoError, StorePath};
use crate::core::release::{CACHE_DIR, FileEntry};
use crate::core::settings::Action;

use super::fetch::{FetchStats, FetchedManifest};
use super::rebuild::{self, Ended};
use super::transport::{Remote, RemoteError, StreamError, Wanted};
use super::verify::{self, VerifyError};

/// Narinfos are read in batches of this many (each at most `NARINFO_LIMIT`: memory stays bounded).
const NARINFO_BATCH: usize = 64;

/// The nix commands a prebuilt release runs, as argv templates (client.toml; the lab and
/// unusual stores change them). `{cache}`, `{key}`, `{toplevel}`, `{profile}`, `{root}` are filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The fleet's public key (`nix key convert-secret-to-public`); the only key a closure may be signed with.
    pub cache_public_key: Option<String>,
    /// Imports the closure from the downloaded cache, trusting only `{key}`.
    pub import: Vec<String>,
    /// Given store paths as extra arguments, prints those the local store does not hold.
    pub query_invalid: Vec<String>,
    /// Makes `{toplevel}` the new generation of the system profile.
    pub set_profile: Vec<String>,
    /// Makes `{root}` a GC root of `{toplevel}`.
    pub gc_root: Vec<String>,
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cache_public_key: None,
            import: argv(&[
                "nix",
                "--extra-experimental-features",
                "nix-command",
                "copy",
                "--from",
                "file://{cache}",
                "--option",
                "trusted-public-keys",
                "{key}",
                "--option",
                "require-sigs",
                "true",
                "{toplevel}",
            ]),
            query_invalid: argv(&["nix-store", "--check-validity", "--print-invalid"]),
            set_profile: argv(&["nix-env", "-p", "{profile}", "--set", "{toplevel}"]),
            gc_root: argv(&[
                "nix-store",
                "--add-root",
                "{root}",
                "--realise",
                "{toplevel}",
            ]),
        }
    }
}

/// Checks a `cache_public_key` value: `NAME:BASE64` of a 32-byte ed25519 key.
pub fn check_public_key(key: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "{key:?} is not a Nix public key: expected NAME:BASE64 as printed by `nix key convert-secret-to-public`"
        )
    };
    let (name, b64) = key.split_once(':').ok_or_else(bad)?;
    // 32 bytes in base64: 43 characters and one '=' of padding.
    let body = b64.strip_suffix('=').unwrap_or_default();
    let base64 = body.len() == 43
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if name.is_empty() || !base64 {
        return Err(bad());
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum PrebuiltError {
    #[error(
        "release {id} is prebuilt by the server, but the client configuration has no cache_public_key (services.tiffin.client.cachePublicKey): nothing was applied"
    )]
    NoKey { id: ReleaseId },
    #[error("release {id}: {source}; nothing was applied")]
    NarInfo {
        id: ReleaseId,
        #[source]
        source: NarInfoError,
    },
    #[error(
        "release {id}: {narinfo} describes {file} as {described}, but the MANIFEST lists it as {listed}: refusing the closure, nothing was applied"
    )]
    Mismatch {
        id: ReleaseId,
        narinfo: String,
        file: String,
        described: String,
        listed: String,
    },
    #[error("release {id}: {what}; nothing was applied")]
    Incomplete { id: ReleaseId, what: String },
    #[error(
        "release {id}: {file} does not hold the NAR of {path} its signed narinfo describes: {source}; refused before anything reached the Nix store (republish it on the server: tiffin verify --repair)"
    )]
    Nar {
        id: ReleaseId,
        file: String,
        path: StorePath,
        #[source]
        source: Box<super::nar::NarError>,
    },
    #[error("release {id}: {source}; nothing was applied")]
    Verify {
        id: ReleaseId,
        #[source]
        source: VerifyError,
    },
    #[error("downloading release {id}: {source}")]
    Remote {
        id: ReleaseId,
        #[source]
        source: RemoteError,
    },
    #[error("release {id}: writing {}: {source}", path.display())]
    Io {
        id: ReleaseId,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "release {id}: asking the local Nix store which paths it holds (`{command}`) failed: {message}"
    )]
    Query {
        id: ReleaseId,
        command: String,
        message: String,
    },
    #[error(
        "release {id}: importing the closure of {toplevel} (`{command}`) failed: {message}; nothing was switched (a closure must be signed by the key in cache_public_key)"
    )]
    Import {
        id: ReleaseId,
        toplevel: StorePath,
        command: String,
        message: String,
    },
}

impl PrebuiltError {
    /// The link failed: says nothing about the release.
    pub fn is_transport(&self) -> bool {
        matches!(self, PrebuiltError::Remote { source, .. }
            if !matches!(source, RemoteError::Size { .. } | RemoteError::TooLarge { .. }))
    }
}

/// The release without its `cache/`: what the ordinary fetch keeps under `releases/` (the
/// closure goes into the Nix store instead). The MANIFEST bytes stay whole, so the id still verifies.
pub fn without_cache(release: &FetchedManifest) -> FetchedManifest {
    let mut manifest = release.manifest.clone();
    manifest.files.retain(|f| f.path.first() != CACHE_DIR);
    FetchedManifest {
        id: release.id.clone(),
        manifest,
        bytes: release.bytes.clone(),
    }
}

/// One narinfo of the release, checked against the MANIFEST's entry for its NAR.
#[derive(Debug, Clone)]
pub struct Described<'a> {
    pub info: NarInfo,
    pub narinfo: &'a FileEntry,
    pub nar: &'a FileEntry,
    pub bytes: Vec<u8>,
}

/// The NARs to download: those of paths the local store does not hold, each once.
pub fn choose<'d, 'a>(
    described: &'d [Described<'a>],
    valid: &BTreeSet<StorePath>,
) -> Vec<&'d Described<'a>> {
    let mut seen = BTreeSet::new();
    described
        .iter()
        .filter(|d| !valid.contains(&d.info.store_path))
        .filter(|d| seen.insert(d.nar.path.as_str()))
        .collect()
}

/// Checks a narinfo against the release: it names the path its file is named after, and its
/// NAR is a file of the MANIFEST whose sha256 and size are the narinfo's FileHash and FileSize.
pub fn describe<'a>(
    id: &ReleaseId,
    files: &BTreeMap<&str, &'a FileEntry>,
    narinfo: &'a FileEntry,
    bytes: Vec<u8>,
) -> Result<Described<'a>, PrebuiltError> {
    let name = narinfo.path.to_string();
    let info = NarInfo::parse(&name, &bytes).map_err(|source| PrebuiltError::NarInfo {
        id: id.clone(),
        source,
    })?;
    if narinfo.path.as_str() != format!("{CACHE_DIR}/{}", info.store_path.narinfo_name()) {
        return Err(PrebuiltError::Incomplete {
            id: id.clone(),
            what: format!("{name} describes {}, another path", info.store_path),
        });
    }
    let nar_path = format!("{CACHE_DIR}/{}", info.url);
    let nar = *files
        .get(nar_path.as_str())
        .ok_or_else(|| PrebuiltError::Incomplete {
            id: id.clone(),
            what: format!("{name} points at {nar_path}, which the MANIFEST does not list"),
        })?;
    if !info.matches_file(nar.sha256.as_str(), nar.size) {
        return Err(PrebuiltError::Mismatch {
            id: id.clone(),
            narinfo: name,
            file: nar_path,
            described: format!("{} ({} bytes)", info.file_hash, info.file_size),
            listed: format!("sha256 {} ({} bytes)", nar.sha256.as_str(), nar.size),
        });
    }
    Ok(Described {
        info,
        narinfo,
        nar,
        bytes,
    })
}

/// What importing needs besides the transport.
pub struct Import<'a> {
    pub settings: &'a Settings,
    pub state_dir: &'a Path,
    pub timeout: Duration,
}

impl Import<'_> {
    /// Downloads what the store lacks into `state_dir/prebuilt/<id>/`, imports the closure of
    /// `toplevel` from there and removes the download again (the store holds it now).
    pub async fn run<R: Remote>(
        &self,
        remote: &mut R,
        release: &FetchedManifest,
        toplevel: &StorePath,
    ) -> Result<FetchStats, PrebuiltError> {
        let id = &release.id;
        let key = self
            .settings
            .cache_public_key
            .as_deref()
            .ok_or_else(|| PrebuiltError::NoKey { id: id.clone() })?;
        let dir = self.state_dir.join("prebuilt").join(id.as_str());
        let _ = fs::remove_dir_all(&dir);
        let io = |path: &Path| {
            let (id, path) = (id.clone(), path.to_owned());
            move |source| PrebuiltError::Io { id, path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        let result = self
            .fetch_and_import(remote, release, toplevel, key, &dir)
            .await;
        let _ = fs::remove_dir_all(&dir);
        result
    }

    async fn fetch_and_import<R: Remote>(
        &self,
        remote: &mut R,
        release: &FetchedManifest,
        toplevel: &StorePath,
        key: &str,
        dir: &Path,
    ) -> Result<FetchStats, PrebuiltError> {
        let id = &release.id;
        let files: BTreeMap<&str, &FileEntry> = release
            .manifest
            .files
            .iter()
            .filter(|f| f.path.first() == CACHE_DIR)
            .map(|f| (f.path.as_str(), f))
            .collect();
        let mut stats = FetchStats::default();
        let kept = KeptNarinfos::new(self.state_dir);
        let described = read_narinfos(remote, id, &files, &mut stats, &kept).await?;
        if !described.iter().any(|d| &d.info.store_path == toplevel) {
            return Err(PrebuiltError::Incomplete {
                id: id.clone(),
                what: format!("its cache/ has no narinfo for its toplevel {toplevel}"),
            });
        }
        let paths: Vec<&StorePath> = described.iter().map(|d| &d.info.store_path).collect();
        let valid = self.query_valid(id, &paths)?;
        for d in &described {
            let dest = dir.join(d.narinfo.path.strip_first().expect("cache/…").as_str());
            write_new(&dest, &d.bytes).map_err(|source| PrebuiltError::Io {
                id: id.clone(),
                path: dest.clone(),
                source,
            })?;
        }
        let info = files.get(format!("{CACHE_DIR}/{CACHE_INFO_FILE}").as_str());
        let info_bytes = format!("StoreDir: {}\n", crate::core::narinfo::STORE_DIR);
        if info.is_some_and(|e| verify::file(e, info_bytes.as_bytes()).is_err()) {
            tracing::warn!(
                "the release's nix-cache-info is not the usual one; using the usual one"
            );
        }
        let info_path = dir.join(CACHE_INFO_FILE);
        write_new(&info_path, info_bytes.as_bytes()).map_err(|source| PrebuiltError::Io {
            id: id.clone(),
            path: info_path.clone(),
            source,
        })?;
        let chosen = choose(&described, &valid);
        stats.reused_files += described.len() - chosen.len();
        tracing::info!(
            "prebuilt {toplevel}: {} store path(s), {} already in the local store; downloading {} NAR(s), {} bytes",
            described.len(),
            valid.len(),
            chosen.len(),
            chosen.iter().map(|d| d.nar.size).sum::<u64>()
        );
        for d in chosen {
            let path = stream_nar(remote, id, d.nar, dir).await?;
            super::nar::check(&path, &d.info).map_err(|source| PrebuiltError::Nar {
                id: id.clone(),
                file: d.nar.path.to_string(),
                path: d.info.store_path.clone(),
                source: Box::new(source),
            })?;
            stats.downloaded_files += 1;
            stats.downloaded_bytes = stats.downloaded_bytes.saturating_add(d.nar.size);
        }
        self.import(id, toplevel, key, dir)?;
        kept.keep_only(described.iter().map(|d| d.narinfo));
        Ok(stats)
    }

    /// The paths of `paths` the local store already holds.
    fn query_valid(
        &self,
        id: &ReleaseId,
        paths: &[&StorePath],
    ) -> Result<BTreeSet<StorePath>, PrebuiltError> {
        let argv = &self.settings.query_invalid;
        let command = argv.join(" ");
        let failed = |message: String| PrebuiltError::Query {
            id: id.clone(),
            command: command.clone(),
            message,
        };
        let (program, args) = argv.split_first().ok_or_else(|| failed("empty".into()))?;
        let out = std::process::Command::new(program)
            .args(args)
            .args(paths.iter().map(|p| p.as_str()))
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| failed(e.to_string()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(failed(format!("{}: {}", out.status, err.trim())));
        }
        let invalid: BTreeSet<&str> = std::str::from_utf8(&out.stdout)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .collect();
        Ok(paths
            .iter()
            .filter(|p| !invalid.contains(p.as_str()))
            .map(|p| (*p).clone())
            .collect())
    }

    fn import(
        &self,
        id: &ReleaseId,
        toplevel: &StorePath,
        key: &str,
        dir: &Path,
    ) -> Result<(), PrebuiltError> {
        let argv = fill(
            &self.settings.import,
            &[
                ("{cache}", &dir.display().to_string()),
                ("{key}", key),
                ("{toplevel}", toplevel.as_str()),
            ],
        );
        let log = self.state_dir.join("import.log");
        let ran = rebuild::run(&argv, &log, self.timeout);
        match ran.ended {
            Ended::Success => Ok(()),
            Ended::Failed(message) | Ended::LeftRunning(message) => {
                let tail = String::from_utf8_lossy(&ran.log_tail);
                let last: Vec<&str> = tail.lines().rev().take(4).collect();
                let last: Vec<&str> = last.into_iter().rev().collect();
                Err(PrebuiltError::Import {
                    id: id.clone(),
                    toplevel: toplevel.clone(),
                    command: argv.join(" "),
                    message: format!("{message}: {}", last.join(" / ")),
                })
            }
        }
    }
}

/// The narinfos of the closure imported last, by sha256 (`state_dir/narinfo/`): a new release
/// of a real system lists about a thousand, nearly all unchanged, and only the changed ones
/// are downloaded again. Bounded: after an import only that closure's narinfos stay.
struct KeptNarinfos {
    dir: PathBuf,
}

impl KeptNarinfos {
    fn new(state_dir: &Path) -> KeptNarinfos {
        KeptNarinfos {
            dir: state_dir.join("narinfo"),
        }
    }

    fn path(&self, entry: &FileEntry) -> PathBuf {
        self.dir.join(entry.sha256.as_str())
    }

    /// The kept copy of `entry`, when it is there and still hashes right.
    fn get(&self, entry: &FileEntry) -> Option<Vec<u8>> {
        let path = self.path(entry);
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.is_file() || meta.len() != entry.size {
            return None;
        }
        let bytes = fs::read(&path).ok()?;
        verify::file(entry, &bytes).is_ok().then_some(bytes)
    }

    /// Best effort: a narinfo not kept is only downloaded again next time.
    fn put(&self, entry: &FileEntry, bytes: &[u8]) {
        let kept = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .and_then(|()| {
                crate::core::durable::write_atomic(
                    &self.path(entry),
                    bytes,
                    0o600,
                    crate::core::durable::Owner::Caller,
                )
            });
        if let Err(e) = kept {
            tracing::debug!("keeping narinfo {}: {e}", entry.path);
        }
    }

    fn keep_only<'a>(&self, entries: impl Iterator<Item = &'a FileEntry>) {
        let keep: BTreeSet<String> = entries.map(|e| e.sha256.as_str().to_owned()).collect();
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        for name in dir.flatten().map(|e| e.file_name()) {
            if !name.to_str().is_some_and(|n| keep.contains(n)) {
                let _ = fs::remove_file(self.dir.join(&name));
            }
        }
    }
}

async fn read_narinfos<'a, R: Remote>(
    remote: &mut R,
    id: &ReleaseId,
    files: &BTreeMap<&str, &'a FileEntry>,
    stats: &mut FetchStats,
    kept: &KeptNarinfos,
) -> Result<Vec<Described<'a>>, PrebuiltError> {
    let narinfos: Vec<&FileEntry> = files
        .values()
        .copied()
        .filter(|f| f.path.as_str().ends_with(".narinfo"))
        .collect();
    if let Some(big) = narinfos.iter().find(|f| f.size > NARINFO_LIMIT) {
        return Err(PrebuiltError::Incomplete {
            id: id.clone(),
            what: format!(
                "{} is {} bytes, more than a narinfo may be",
                big.path, big.size
            ),
        });
    }
    let mut described = Vec::with_capacity(narinfos.len());
    let mut missing = Vec::new();
    for entry in narinfos {
        match kept.get(entry) {
            Some(bytes) => {
                stats.reused_files += 1;
                stats.reused_bytes = stats.reused_bytes.saturating_add(entry.size);
                described.push(describe(id, files, entry, bytes)?);
            }
            None => missing.push(entry),
        }
    }
    for batch in missing.chunks(NARINFO_BATCH) {
        let wanted: Vec<Wanted> = batch.iter().map(|f| wanted(id, f)).collect();
        let contents =
            remote
                .read_files(&wanted)
                .await
                .map_err(|source| PrebuiltError::Remote {
                    id: id.clone(),
                    source,
                })?;
        for (entry, bytes) in batch.iter().zip(contents) {
            verify::file(entry, &bytes).map_err(|source| PrebuiltError::Verify {
                id: id.clone(),
                source,
            })?;
            stats.downloaded_files += 1;
            stats.downloaded_bytes = stats.downloaded_bytes.saturating_add(entry.size);
            kept.put(entry, &bytes);
            described.push(describe(id, files, entry, bytes)?);
        }
    }
    Ok(described)
}

fn wanted(id: &ReleaseId, entry: &FileEntry) -> Wanted {
    Wanted {
        path: format!("/{RELEASES_DIR}/{id}/{}", entry.path),
        size: entry.size,
    }
}

/// One NAR streamed into `dir`, hashed as it lands and checked against the MANIFEST; its path.
async fn stream_nar<R: Remote>(
    remote: &mut R,
    id: &ReleaseId,
    nar: &FileEntry,
    dir: &Path,
) -> Result<PathBuf, PrebuiltError> {
    let dest = dir.join(nar.path.strip_first().expect("cache/…").as_str());
    let io = |source| PrebuiltError::Io {
        id: id.clone(),
        path: dest.clone(),
        source,
    };
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let mut out = Hashing {
        file: fs::File::create_new(&dest).map_err(io)?,
        hasher: Sha256::new(),
        written: 0,
    };
    match remote.read_into(&wanted(id, nar), &mut out).await {
        Ok(()) => {}
        Err(StreamError::Remote(source)) => {
            return Err(PrebuiltError::Remote {
                id: id.clone(),
                source,
            });
        }
        Err(StreamError::Local(e)) => return Err(io(e)),
    }
    let sha = hex::encode(out.hasher.finalize());
    verify::landed(nar, out.written, &sha).map_err(|source| PrebuiltError::Verify {
        id: id.clone(),
        source,
    })?;
    Ok(dest)
}

struct Hashing {
    file: fs::File,
    hasher: Sha256,
    written: u64,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::File::create_new(path)?.write_all(bytes)
}

fn fill(template: &[String], values: &[(&str, &str)]) -> Vec<String> {
    template
        .iter()
        .map(|a| {
            values
                .iter()
                .fold(a.clone(), |acc, (k, v)| acc.replace(k, v))
        })
        .collect()
}

/// Switching to a prebuilt system, as `nixos-rebuild` would: the profile for `switch` and
/// `boot` (only for a toplevel with `nixos-version`, as nixos-rebuild checks), then
/// `<toplevel>/bin/switch-to-configuration <action>`, in a unit of its own where systemd runs.
pub struct Switch<'a> {
    pub settings: &'a Settings,
    pub profile: &'a Path,
    pub timeout: Duration,
    pub detach: &'a super::activation::Detach,
}

impl Switch<'_> {
    /// Runs the switch; the log goes to `log`. `build` only imports (done before).
    pub fn run(&self, toplevel: &Path, action: Action, log: &Path) -> rebuild::Outcome {
        if action == Action::Build {
            return rebuild::Outcome {
                ended: Ended::Success,
                log_tail: Vec::new(),
            };
        }
        let top = toplevel.display().to_string();
        let mut tail = Vec::new();
        // A toplevel without it is no NixOS system (or a store path Nix did not finish):
        // making it the profile's generation would leave a host that cannot boot.
        if !toplevel.join("nixos-version").is_file() {
            return rebuild::Outcome {
                ended: Ended::Failed(format!(
                    "{top} has no nixos-version: it is not a complete NixOS system, so it was \
                     not made the system profile nor activated"
                )),
                log_tail: Vec::new(),
            };
        }
        if matches!(action, Action::Switch | Action::Boot) {
            let profile = self.profile.display().to_string();
            let argv = fill(
                &self.settings.set_profile,
                &[("{profile}", &profile), ("{toplevel}", &top)],
            );
            let set = rebuild::run(&argv, log, self.timeout);
            if let Some(m) = set.ended.failure() {
                return rebuild::Outcome {
                    ended: Ended::Failed(format!("setting the system profile: {m}")),
                    log_tail: set.log_tail,
                };
            }
            tail = set.log_tail;
        }
        let switch = vec![
            toplevel
                .join("bin/switch-to-configuration")
                .display()
                .to_string(),
            action.as_str().to_owned(),
        ];
        let mut ran = rebuild::activate(&switch, log, self.timeout, self.detach);
        tail.extend_from_slice(&ran.log_tail);
        ran.log_tail = tail;
        ran
    }
}

/// Keeps exactly two GC roots, `state_dir/gcroots/{applied,previous}`: the applied release's
/// system and the one before it. Older systems become collectable (their profile
/// generations aside, which `nix-collect-garbage --delete-older-than` handles).
pub fn keep_roots(settings: &Settings, state_dir: &Path, toplevel: &StorePath, timeout: Duration) {
    let dir = state_dir.join("gcroots");
    if let Err(e) = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
        tracing::warn!("cannot create {}: {e}", dir.display());
        return;
    }
    let applied = dir.join("applied");
    let before = fs::read_link(&applied).ok();
    let mut roots = Vec::new();
    if let Some(prev) = before.filter(|p| p != Path::new(toplevel.as_str())) {
        roots.push((dir.join("previous"), prev.display().to_string()));
    }
    roots.push((applied, toplevel.to_string()));
    for (root, target) in roots {
        let argv = fill(
            &settings.gc_root,
            &[
                ("{root}", &root.display().to_string()),
                ("{toplevel}", &target),
            ],
        );
        let _ = fs::remove_file(&root);
        if let Some(m) = rebuild::run(&argv, &state_dir.join("gcroot.log"), timeout)
            .ended
            .failure()
        {
            tracing::warn!(
                "cannot keep {} as a GC root of {target}: {m}",
                root.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::release::{Manifest, Mode, Sha256Hex};

    fn entry(path: &str, sha: &str, size: u64) -> FileEntry {
        FileEntry::new(
            path.parse().unwrap(),
            size,
            Mode::new(0o644).unwrap(),
            Sha256Hex::new(sha.to_owned()).unwrap(),
        )
    }

    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_B32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";

    fn narinfo(hash: &str, name: &str, url: &str, file_hash: &str, size: u64) -> Vec<u8> {
        format!(
            "StorePath: /nix/store/{hash}-{name}\nURL: {url}\nCompression: xz\nFileHash: sha256:{file_hash}\nFileSize: {size}\nNarHash: sha256:{file_hash}\nNarSize: 1\nReferences: \n"
        )
        .into_bytes()
    }

    const DEP: &str = "h53jn4wvi4jxxl9bg4mg78zilfmafzv7";
    const TOP: &str = "hkrmp39wm59gr305lrkzhw1yzgj6m9lq";

    #[test]
    fn fetches_only_the_nars_the_store_lacks() {
        let id: ReleaseId = "a".repeat(64).parse().unwrap();
        let nar_dep = entry("cache/nar/dep.nar.xz", EMPTY_HEX, 10);
        let nar_top = entry("cache/nar/top.nar.xz", EMPTY_HEX, 20);
        let ni_dep = entry(&format!("cache/{DEP}.narinfo"), EMPTY_HEX, 1);
        let ni_top = entry(&format!("cache/{TOP}.narinfo"), EMPTY_HEX, 1);
        let files: BTreeMap<&str, &FileEntry> = [&nar_dep, &nar_top, &ni_dep, &ni_top]
            .into_iter()
            .map(|f| (f.path.as_str(), f))
            .collect();
        let dep = describe(
            &id,
            &files,
            &ni_dep,
            narinfo(DEP, "dep", "nar/dep.nar.xz", EMPTY_B32, 10),
        )
        .unwrap();
        let top = describe(
            &id,
            &files,
            &ni_top,
            narinfo(TOP, "system", "nar/top.nar.xz", EMPTY_B32, 20),
        )
        .unwrap();
        let all = [dep, top];
        let none = BTreeSet::new();
        let chosen: Vec<&str> = choose(&all, &none)
            .iter()
            .map(|d| d.nar.path.as_str())
            .collect();
        assert_eq!(chosen, ["cache/nar/dep.nar.xz", "cache/nar/top.nar.xz"]);
        let has_dep: BTreeSet<StorePath> =
            [format!("/nix/store/{DEP}-dep").parse().unwrap()].into();
        let chosen: Vec<&str> = choose(&all, &has_dep)
            .iter()
            .map(|d| d.nar.path.as_str())
            .collect();
        assert_eq!(chosen, ["cache/nar/top.nar.xz"]);
        let has_both: BTreeSet<StorePath> = all.iter().map(|d| d.info.store_path.clone()).collect();
        assert!(choose(&all, &has_both).is_empty());
    }

    #[test]
    fn refuses_a_narinfo_that_disagrees_with_its_file() {
        let id: ReleaseId = "a".repeat(64).parse().unwrap();
        let other = "1".repeat(64);
        let nar = entry("cache/nar/top.nar.xz", &other, 20);
        let ni = entry(&format!("cache/{TOP}.narinfo"), EMPTY_HEX, 1);
        let files: BTreeMap<&str, &FileEntry> = [&nar, &ni]
            .into_iter()
            .map(|f| (f.path.as_str(), f))
            .collect();
        let err = describe(
            &id,
            &files,
            &ni,
            narinfo(TOP, "system", "nar/top.nar.xz", EMPTY_B32, 20),
        )
        .unwrap_err();
        assert!(matches!(err, PrebuiltError::Mismatch { .. }), "{err}");
        // A narinfo for another path than its name says, or a NAR the MANIFEST lacks.
        let err = describe(
            &id,
            &files,
            &ni,
            narinfo(DEP, "dep", "nar/top.nar.xz", EMPTY_B32, 20),
        )
        .unwrap_err();
        assert!(err.to_string().contains("another path"), "{err}");
        let err = describe(
            &id,
            &files,
            &ni,
            narinfo(TOP, "system", "nar/gone.nar.xz", EMPTY_B32, 20),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not list"), "{err}");
    }

    #[test]
    fn the_release_store_never_gets_the_cache() {
        let text = format!(
            "host = \"a\"\nseq = 1\ncreated = \"x\"\ntoplevel = \"/nix/store/{TOP}-system\"\n[apply]\nbuild = \"server\"\n"
        );
        let mut manifest = Manifest::parse(text.as_bytes()).unwrap();
        manifest.files = vec![
            entry("cache/nar/top.nar.xz", EMPTY_HEX, 20),
            entry("config/flake.nix", EMPTY_HEX, 0),
            entry("files/etc/x", EMPTY_HEX, 0),
        ];
        let bytes = manifest.render().into_bytes();
        let release = FetchedManifest {
            id: manifest.id(),
            manifest,
            bytes: bytes.clone(),
        };
        let plain = without_cache(&release);
        let kept: Vec<&str> = plain
            .manifest
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(kept, ["config/flake.nix", "files/etc/x"]);
        // The stored MANIFEST is the whole one, so the id still verifies it.
        assert_eq!(plain.bytes, bytes);
        assert!(Manifest::parse_verified(&plain.bytes, &plain.id).is_ok());
    }

    #[test]
    fn public_keys() {
        assert!(check_public_key("fleet-1:LrF5NDHGYnSKLpsdGHfXGIQjW9yq8ZyhAVxmA3Lpzqk=").is_ok());
        assert!(check_public_key("fleet-1").is_err());
        assert!(check_public_key("fleet-1:AAAA").is_err());
        assert!(check_public_key(":LrF5NDHGYnSKLpsdGHfXGIQjW9yq8ZyhAVxmA3Lpzqk=").is_err());
    }
}
