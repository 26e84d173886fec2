//! Builds a release in `state_dir/releases/`: files already held locally are copied, only the rest is downloaded.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::core::durable::{self, Owner};
use crate::core::hash::sha256_hex;
use crate::core::layout::RELEASES_DIR;
use crate::core::names::ReleaseId;
use crate::core::release::{FileEntry, MANIFEST_FILE, Manifest, Sha256Hex};

use super::transport::{Remote, RemoteError, StreamError, Wanted};
use super::verify::{self, VerifyError};

/// Small files are downloaded together, a batch held in memory: bounded so memory stays small whatever the tree.
const BATCH_BYTES: u64 = 4 << 20;
const BATCH_FILES: usize = 128;
/// Files above this size are streamed to disk one at a time, never held whole.
pub const SMALL_FILE: u64 = 256 << 10;
/// The largest file a client accepts from a MANIFEST (sizes are the server's word, so bounded before use).
pub const FILE_LIMIT: u64 = 64 << 30;
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
    #[error(
        "release {id}: {path} is {size} bytes, more than the {limit} bytes a client accepts for one file; nothing was applied"
    )]
    TooLarge {
        id: ReleaseId,
        path: String,
        size: u64,
        limit: u64,
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
        check_sizes(&self.release.id, &self.release.manifest.files)?;
        self.prepare()?;
        let wanted = self.reuse_local()?;
        for step in plan(&wanted) {
            match step {
                Step::Batch(batch) => self.download(remote, batch).await?,
                Step::Stream(entry) => self.stream(remote, entry).await?,
            }
        }
        self.seal()?;
        Ok(self.stats)
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + use<> {
        let path = path.to_owned();
        let id = self.release.id.clone();
        move |source| FetchError::Io { id, path, source }
    }

    fn remote_err(&self) -> impl FnOnce(RemoteError) -> FetchError + use<> {
        let id = self.release.id.clone();
        move |source| FetchError::Remote { id, source }
    }

    fn verify_err(&self) -> impl FnOnce(VerifyError) -> FetchError + use<> {
        let id = self.release.id.clone();
        move |source| FetchError::Verify { id, source }
    }

    fn wanted(&self, entry: &FileEntry) -> Wanted {
        Wanted {
            path: format!("/{RELEASES_DIR}/{}/{}", self.release.id, entry.path),
            size: entry.size,
        }
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
                && self.copy_local(local, &dest, entry)?
            {
                self.stats.reused_files += 1;
                self.stats.reused_bytes = self.stats.reused_bytes.saturating_add(entry.size);
            } else if entry.size == 0 && entry.sha256.as_str() == sha256_hex(b"") {
                write_file(&dest, b"", entry).map_err(self.io(&dest))?;
            } else {
                wanted.push(entry);
            }
        }
        Ok(wanted)
    }

    /// Streams a locally held copy into `dest`, verified on the way; `false` when it no longer
    /// matches or cannot be read (then it is downloaded). Only a failing write is an error.
    fn copy_local(&self, local: &Path, dest: &Path, entry: &FileEntry) -> Result<bool, FetchError> {
        let Ok(mut source) = fs::File::open(local) else {
            return Ok(false);
        };
        let mut landing = Landing::create(dest).map_err(self.io(dest))?;
        let copied = io::copy(&mut source, &mut landing);
        if let Some(e) = landing.failed.take() {
            return Err(self.io(dest)(e));
        }
        let verified = copied.is_ok() && landing.verify(entry).is_ok();
        if !verified {
            fs::remove_file(dest).map_err(self.io(dest))?;
            return Ok(false);
        }
        landing.finish(entry).map_err(self.io(dest))?;
        Ok(true)
    }

    /// One batch of small files in flight at once; each file is verified before it is written.
    async fn download<R: Remote>(
        &mut self,
        remote: &mut R,
        batch: &[&FileEntry],
    ) -> Result<(), FetchError> {
        let requests: Vec<Wanted> = batch.iter().map(|e| self.wanted(e)).collect();
        let contents = remote
            .read_files(&requests)
            .await
            .map_err(self.remote_err())?;
        for (entry, bytes) in batch.iter().zip(contents) {
            verify::file(entry, &bytes).map_err(self.verify_err())?;
            let dest = entry.path.under(&self.partial);
            write_file(&dest, &bytes, entry).map_err(self.io(&dest))?;
            self.count_download(entry);
        }
        Ok(())
    }

    /// One large file streamed to disk in bounded chunks, hashed as it lands, verified before it counts.
    async fn stream<R: Remote>(
        &mut self,
        remote: &mut R,
        entry: &FileEntry,
    ) -> Result<(), FetchError> {
        let dest = entry.path.under(&self.partial);
        let mut landing = Landing::create(&dest).map_err(self.io(&dest))?;
        let streamed = remote.read_into(&self.wanted(entry), &mut landing).await;
        if let Some(e) = landing.failed.take() {
            return Err(self.io(&dest)(e));
        }
        match streamed {
            Ok(()) => {}
            Err(StreamError::Remote(e)) => return Err(self.remote_err()(e)),
            Err(StreamError::Local(e)) => return Err(self.io(&dest)(e)),
        }
        landing.verify(entry).map_err(self.verify_err())?;
        landing.finish(entry).map_err(self.io(&dest))?;
        self.count_download(entry);
        Ok(())
    }

    fn count_download(&mut self, entry: &FileEntry) {
        self.stats.downloaded_files += 1;
        self.stats.downloaded_bytes = self.stats.downloaded_bytes.saturating_add(entry.size);
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

/// Refuses a MANIFEST naming a file larger than `FILE_LIMIT`, before anything is allocated or written.
pub(crate) fn check_sizes(id: &ReleaseId, files: &[FileEntry]) -> Result<(), FetchError> {
    match files.iter().find(|f| f.size > FILE_LIMIT) {
        Some(f) => Err(FetchError::TooLarge {
            id: id.clone(),
            path: f.path.to_string(),
            size: f.size,
            limit: FILE_LIMIT,
        }),
        None => Ok(()),
    }
}

/// How one part of a release is downloaded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// Small files, pipelined and held in memory together (at most `BATCH_BYTES`, `BATCH_FILES`).
    Batch(&'a [&'a FileEntry]),
    /// One file larger than `SMALL_FILE`, streamed to disk.
    Stream(&'a FileEntry),
}

/// Splits the files to download into steps, in manifest order (large files streamed, the rest batched).
pub(crate) fn plan<'a>(wanted: &'a [&'a FileEntry]) -> Vec<Step<'a>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, e) in wanted.iter().enumerate() {
        let full = bytes.saturating_add(e.size) > BATCH_BYTES || i - start >= BATCH_FILES;
        if e.size > SMALL_FILE || (i > start && full) {
            if i > start {
                out.push(Step::Batch(&wanted[start..i]));
            }
            start = i;
            bytes = 0;
        }
        if e.size > SMALL_FILE {
            out.push(Step::Stream(e));
            start = i + 1;
        } else {
            bytes += e.size;
        }
    }
    if start < wanted.len() {
        out.push(Step::Batch(&wanted[start..]));
    }
    out
}

/// A file being written into `<id>.partial`, hashed as its bytes land. A failing write is kept
/// in `failed`, so the caller can tell the client's disk from the server's side of a copy.
struct Landing {
    file: fs::File,
    hasher: Sha256,
    written: u64,
    failed: Option<io::Error>,
}

impl Landing {
    fn create(dest: &Path) -> io::Result<Landing> {
        if let Some(parent) = dest.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)?;
        Ok(Landing {
            file,
            hasher: Sha256::new(),
            written: 0,
            failed: None,
        })
    }

    fn verify(&self, entry: &FileEntry) -> Result<(), VerifyError> {
        let sha = hex::encode(self.hasher.clone().finalize());
        verify::landed(entry, self.written, &sha)
    }

    fn finish(self, entry: &FileEntry) -> io::Result<()> {
        durable::finish(&self.file, entry.mode.bits(), Owner::Caller)
    }
}

impl Write for Landing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = fault::check().and_then(|()| self.file.write(buf));
        match written {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.written += n as u64;
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                self.failed = Some(e);
                Err(io::Error::new(
                    kind,
                    "writing the file on the client failed",
                ))
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A test hook that makes the client's disk full (no effect outside tests).
pub(crate) mod fault {
    #[cfg(test)]
    thread_local! {
        pub static DISK_FULL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[cfg(test)]
    pub fn check() -> std::io::Result<()> {
        if DISK_FULL.with(|f| f.get()) {
            return Err(std::io::Error::from_raw_os_error(nix::libc::ENOSPC));
        }
        Ok(())
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub fn check() -> std::io::Result<()> {
        Ok(())
    }
}

fn write_file(dest: &Path, bytes: &[u8], entry: &FileEntry) -> std::io::Result<()> {
    fault::check()?;
    if let Some(parent) = dest.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    durable::create_synced(dest, bytes, entry.mode.bits(), Owner::Caller)
}
