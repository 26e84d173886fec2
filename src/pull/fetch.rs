//! Builds a release in `state_dir/releases/`: files already held locally are copied, only the rest is downloaded.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::durable::{self, Owner};
use crate::hash::sha256_hex;
use crate::layout::RELEASES_DIR;
use crate::names::ReleaseId;
use crate::release::{FileEntry, MANIFEST_FILE, Manifest, Sha256Hex};

use super::transport::{Remote, RemoteError, Wanted};
use super::verify::{self, VerifyError};

/// Files downloaded together: bounded so memory stays small whatever the tree.
const BATCH_BYTES: u64 = 4 << 20;
const BATCH_FILES: usize = 128;
/// How many complete releases the client keeps besides the current one (they seed the next delta).
pub const KEEP_RELEASES: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("downloading release {id}: {source}")]
    Remote {
        id: ReleaseId,
        #[source]
        source: RemoteError,
    },
    #[error("release {id}: {source}; nothing was applied")]
    Verify {
        id: ReleaseId,
        #[source]
        source: VerifyError,
    },
    #[error("release {id}: writing {path}: {source}")]
    Io {
        id: ReleaseId,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a fetch moved, for the log and the bench.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStats {
    pub downloaded_files: usize,
    pub downloaded_bytes: u64,
    pub reused_files: usize,
    pub reused_bytes: u64,
}

/// `state_dir/releases/`: complete releases by id, one `<id>.partial` while building.
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            dir: state_dir.join(RELEASES_DIR),
        }
    }
    pub fn release(&self, id: &ReleaseId) -> PathBuf {
        self.dir.join(id.as_str())
    }
    fn partial(&self, id: &ReleaseId) -> PathBuf {
        self.dir.join(format!("{id}.partial"))
    }
    /// A complete release holds its MANIFEST; it is renamed into place only when whole.
    pub fn has(&self, id: &ReleaseId) -> bool {
        self.release(id).join(MANIFEST_FILE).is_file()
    }

    /// Complete releases held locally, with their manifests (unreadable ones skipped).
    pub fn releases(&self) -> Vec<(ReleaseId, Manifest)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<ReleaseId>().ok())
            else {
                continue;
            };
            if let Ok(bytes) = fs::read(entry.path().join(MANIFEST_FILE))
                && let Ok(m) = Manifest::parse_verified(&bytes, &id)
            {
                out.push((id, m));
            }
        }
        out.sort_by_key(|(_, m)| std::cmp::Reverse(m.seq));
        out
    }

    /// Where each content is held locally, by sha256.
    fn index(&self) -> HashMap<Sha256Hex, PathBuf> {
        let mut index = HashMap::new();
        for (id, m) in self.releases() {
            let base = self.release(&id);
            for f in m.files {
                index.entry(f.sha256).or_insert_with(|| f.path.under(&base));
            }
        }
        index
    }

    /// Removes all but the newest `KEEP_RELEASES` releases, never one in `keep`; and any leftover `.partial`.
    pub fn prune(&self, keep: &[&ReleaseId]) {
        let releases = self.releases();
        for (i, (id, _)) in releases.iter().enumerate() {
            if i >= KEEP_RELEASES
                && !keep.contains(&id)
                && let Err(e) = fs::remove_dir_all(self.release(id))
            {
                tracing::warn!("cannot prune old release {}: {e}", id.short());
            }
        }
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".partial") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// A MANIFEST fetched and verified for its release id: what it says, and its exact bytes for the store.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub id: ReleaseId,
    pub manifest: Manifest,
    pub bytes: Vec<u8>,
}

/// Makes `releases/<id>` hold the release, verified, or leaves everything as it was.
pub async fn fetch_release<R: Remote>(
    remote: &mut R,
    store: &Store,
    release: &FetchedManifest,
) -> Result<FetchStats, FetchError> {
    if store.has(&release.id) {
        return Ok(FetchStats::default());
    }
    let mut build = Build {
        store,
        release,
        partial: store.partial(&release.id),
        stats: FetchStats::default(),
    };
    let result = build.run(remote).await;
    if result.is_err() {
        let _ = fs::remove_dir_all(&build.partial);
    }
    result
}

/// One release being built in `<id>.partial`, renamed to `<id>` only when whole.
struct Build<'a> {
    store: &'a Store,
    release: &'a FetchedManifest,
    partial: PathBuf,
    stats: FetchStats,
}

impl<'a> Build<'a> {
    async fn run<R: Remote>(&mut self, remote: &mut R) -> Result<FetchStats, FetchError> {
        self.prepare()?;
        let wanted = self.reuse_local()?;
        for batch in batches(&wanted) {
            self.download(remote, batch).await?;
        }
        self.seal()?;
        Ok(self.stats)
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + use<> {
        let path = path.to_owned();
        let id = self.release.id.clone();
        move |source| FetchError::Io { id, path, source }
    }

    /// `releases/` exists and `<id>.partial` is a fresh empty directory (a crashed build's is discarded).
    fn prepare(&self) -> Result<(), FetchError> {
        let (dir, partial) = (&self.store.dir, &self.partial);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(self.io(dir))?;
        if partial.exists() {
            fs::remove_dir_all(partial).map_err(self.io(partial))?;
        }
        fs::DirBuilder::new()
            .mode(0o755)
            .create(partial)
            .map_err(self.io(partial))
    }

    /// Copies every file whose content is held locally (or is empty); returns the ones to download.
    fn reuse_local(&mut self) -> Result<Vec<&'a FileEntry>, FetchError> {
        let index = self.store.index();
        let mut wanted = Vec::new();
        for entry in &self.release.manifest.files {
            let dest = entry.path.under(&self.partial);
            if let Some(local) = index.get(&entry.sha256)
                && let Ok(bytes) = fs::read(local)
                && verify::file(entry, &bytes).is_ok()
            {
                write_file(&dest, &bytes, entry).map_err(self.io(&dest))?;
                self.stats.reused_files += 1;
                self.stats.reused_bytes += entry.size;
            } else if entry.size == 0 && entry.sha256.as_str() == sha256_hex(b"") {
                write_file(&dest, b"", entry).map_err(self.io(&dest))?;
            } else {
                wanted.push(entry);
            }
        }
        Ok(wanted)
    }

    /// One batch in flight at once; each file is verified before it is written.
    async fn download<R: Remote>(
        &mut self,
        remote: &mut R,
        batch: &[&FileEntry],
    ) -> Result<(), FetchError> {
        let id = &self.release.id;
        let requests: Vec<Wanted> = batch
            .iter()
            .map(|e| Wanted {
                path: format!("/{RELEASES_DIR}/{id}/{}", e.path),
                size: e.size,
            })
            .collect();
        let contents = remote
            .read_files(&requests)
            .await
            .map_err(|source| FetchError::Remote {
                id: id.clone(),
                source,
            })?;
        for (entry, bytes) in batch.iter().zip(contents) {
            verify::file(entry, &bytes).map_err(|source| FetchError::Verify {
                id: id.clone(),
                source,
            })?;
            let dest = entry.path.under(&self.partial);
            write_file(&dest, &bytes, entry).map_err(self.io(&dest))?;
            self.stats.downloaded_files += 1;
            self.stats.downloaded_bytes += entry.size;
        }
        Ok(())
    }

    /// The MANIFEST last, every directory fsynced, then the rename that makes the release complete.
    fn seal(&self) -> Result<(), FetchError> {
        let partial = &self.partial;
        let manifest_path = partial.join(MANIFEST_FILE);
        durable::create_synced(&manifest_path, &self.release.bytes, 0o644, Owner::Caller)
            .map_err(self.io(&manifest_path))?;
        durable::sync_tree(partial).map_err(self.io(partial))?;
        let dest = self.store.release(&self.release.id);
        fs::rename(partial, &dest).map_err(self.io(&dest))?;
        durable::sync_dir(&self.store.dir).map_err(self.io(&self.store.dir))
    }
}

fn batches<'a>(wanted: &'a [&'a FileEntry]) -> Vec<&'a [&'a FileEntry]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, e) in wanted.iter().enumerate() {
        if i > start && (bytes + e.size > BATCH_BYTES || i - start >= BATCH_FILES) {
            out.push(&wanted[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += e.size;
    }
    if start < wanted.len() {
        out.push(&wanted[start..]);
    }
    out
}

fn write_file(dest: &Path, bytes: &[u8], entry: &FileEntry) -> std::io::Result<()> {
    if let Some(parent) = dest.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    durable::create_synced(dest, bytes, entry.mode.bits(), Owner::Caller)
}
