//! Resolving a fleet repository's `hosts/<name>/` into the files a release holds (symlink rules, modes).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::admin::fleet::HOST_FILE;
use crate::core::diag::Problem;
use crate::core::hash::sha256_file;
use crate::core::names::{HostName, RelPath};
use crate::core::release::{
    CONFIG_DIR, FILES_DIR, FileEntry, FileMeta, FileSource, Mode, Sha256Hex,
};

pub mod common;

/// A file of a host directory, resolved: where its content is read from, and
/// where it goes in the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// `config/…` or `files/…`.
    pub release_path: RelPath,
    /// Real path inside the fleet repository (symlinks resolved).
    pub source: PathBuf,
    pub mode: Mode,
    /// Owner, group, stage and units from host.toml's `[files."…"]` (defaults otherwise).
    pub meta: FileMeta,
    /// `hosts/<name>/files/` or `common/files/`.
    pub origin: FileSource,
}

/// Resolves `hosts/<host>/` into release paths, dereferencing symlinks that
/// stay inside the fleet repository. Every problem is reported, naming the
/// link or file relative to the repository.
pub fn resolve_host_tree(
    fleet_root: &Path,
    host: &HostName,
) -> Result<Vec<SourceFile>, Vec<Problem>> {
    let real_root = match fs::canonicalize(fleet_root) {
        Ok(r) => r,
        Err(e) => {
            return Err(vec![Problem::error(
                Some(host),
                fleet_root,
                format!("cannot resolve the fleet repository: {e}"),
            )]);
        }
    };
    let host_rel = Path::new("hosts").join(host.as_str());
    let mut walk = Walk {
        real_root: &real_root,
        host,
        out: Vec::new(),
        problems: Vec::new(),
        ancestors: Vec::new(),
        origin: FileSource::Host,
    };
    // hosts/ or hosts/<name> may itself be a symlink: only a target inside the repository counts.
    let host_real = match fs::canonicalize(real_root.join(&host_rel)) {
        Ok(real) if real.starts_with(&real_root) => real,
        Ok(real) => {
            return Err(vec![Problem::error(
                Some(host),
                &host_rel,
                format!(
                    "the host directory leads outside the fleet repository (to {}): publish reads nothing outside it",
                    real.display()
                ),
            )]);
        }
        Err(e) => {
            return Err(vec![Problem::error(
                Some(host),
                &host_rel,
                format!("cannot read: {e}"),
            )]);
        }
    };
    walk.ancestors.push(host_real.clone());
    let mut entries = match sorted_entries(&host_real) {
        Ok(e) => e,
        Err(e) => {
            return Err(vec![Problem::error(
                Some(host),
                &host_rel,
                format!("cannot read: {e}"),
            )]);
        }
    };
    entries.retain(|n| n != HOST_FILE);
    for name in entries {
        let top = if name == FILES_DIR {
            FILES_DIR
        } else {
            CONFIG_DIR
        };
        let release_rel = if top == FILES_DIR {
            FILES_DIR.to_owned()
        } else {
            format!("{CONFIG_DIR}/{name}")
        };
        walk.visit(&host_rel.join(&name), &host_real.join(&name), &release_rel);
    }
    common::add_common_files(&mut walk);
    if walk.problems.is_empty() {
        walk.out.sort_by(|a, b| a.release_path.cmp(&b.release_path));
        Ok(walk.out)
    } else {
        Err(walk.problems)
    }
}

struct Walk<'a> {
    real_root: &'a Path,
    host: &'a HostName,
    out: Vec<SourceFile>,
    problems: Vec<Problem>,
    /// Real paths of the directories being walked, to stop symlink loops.
    ancestors: Vec<PathBuf>,
    /// The tree the files being walked come from.
    origin: FileSource,
}

impl Walk<'_> {
    /// `shown` is the path relative to the repository as the admin sees it.
    fn visit(&mut self, shown: &Path, path: &Path, release_rel: &str) {
        let Some((real, meta)) = self.resolve(shown, path) else {
            return;
        };
        // common/files/ is deployed as files (common::add_common_files), never part of the Nix
        // part, also when the host's `common` link brings the whole common/ directory in.
        if release_rel.starts_with(CONFIG_DIR) && real == self.real_root.join(common::COMMON_FILES)
        {
            return;
        }
        if release_rel.starts_with(CONFIG_DIR) && self.is_in_some_files_tree(&real) {
            self.problem(
                shown,
                format!(
                    "the Nix part reaches into a files/ tree (through {}): the Nix part ends up in /nix/store, readable by every local user, so nothing from files/ may enter it",
                    real.strip_prefix(self.real_root).unwrap_or(&real).display()
                ),
            );
            return;
        }
        let Ok(release_path) = release_rel.parse::<RelPath>() else {
            self.problem(
                shown,
                "this name cannot be published: use plain names without backslashes or control characters",
            );
            return;
        };
        if meta.is_file() {
            self.out.push(SourceFile {
                release_path,
                source: real,
                mode: Mode::from_stat(meta.permissions().mode()),
                meta: FileMeta::default(),
                origin: self.origin,
            });
        } else if meta.is_dir() {
            self.visit_dir(shown, real, release_rel);
        } else {
            self.problem(
                shown,
                "not a regular file, directory or symlink: only those can be published",
            );
        }
    }

    /// The real path and metadata behind `path`, following a symlink only while it stays in the repository.
    fn resolve(&mut self, shown: &Path, path: &Path) -> Option<(PathBuf, fs::Metadata)> {
        let meta = fs::symlink_metadata(path)
            .map_err(|e| self.problem(shown, format!("cannot read: {e}")))
            .ok()?;
        if !meta.file_type().is_symlink() {
            return Some((path.to_owned(), meta));
        }
        let target = fs::read_link(path).unwrap_or_default();
        let Ok(real) = fs::canonicalize(path) else {
            self.problem(
                shown,
                format!(
                    "dangling symlink: its target {} does not exist",
                    target.display()
                ),
            );
            return None;
        };
        if !real.starts_with(self.real_root) {
            self.problem(
                shown,
                format!(
                    "symlink leaves the fleet repository (target {}): publish reads nothing outside it; copy the file in instead",
                    target.display()
                ),
            );
            return None;
        }
        let meta = fs::metadata(&real)
            .map_err(|e| self.problem(shown, format!("cannot read: {e}")))
            .ok()?;
        Some((real, meta))
    }

    fn visit_dir(&mut self, shown: &Path, real: PathBuf, release_rel: &str) {
        if self.ancestors.contains(&real) {
            self.problem(
                shown,
                "symlink loop: it points to a directory that contains it",
            );
            return;
        }
        let names = match sorted_entries(&real) {
            Ok(n) => n,
            Err(e) => {
                self.problem(shown, format!("cannot read directory: {e}"));
                return;
            }
        };
        self.ancestors.push(real.clone());
        for name in names {
            self.visit(
                &shown.join(&name),
                &real.join(&name),
                &format!("{release_rel}/{name}"),
            );
        }
        self.ancestors.pop();
    }

    /// Whether a real path lies in `hosts/<any>/files/` (a file meant to stay out of the Nix store).
    fn is_in_some_files_tree(&self, real: &Path) -> bool {
        if real.starts_with(self.real_root.join(common::COMMON_FILES)) {
            return true;
        }
        let Ok(rest) = real.strip_prefix(self.real_root.join("hosts")) else {
            return false;
        };
        rest.components()
            .nth(1)
            .is_some_and(|c| c.as_os_str() == FILES_DIR)
    }

    fn problem(&mut self, shown: &Path, message: impl Into<String>) {
        self.problems
            .push(Problem::error(Some(self.host), shown, message));
    }
}

fn sorted_entries(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Hashes the resolved files into manifest entries.
pub fn hash_tree(files: &[SourceFile]) -> std::io::Result<Vec<FileEntry>> {
    files
        .iter()
        .map(|f| {
            let (sha, size) = sha256_file(&f.source)?;
            let sha = Sha256Hex::new(sha).expect("hex of a digest");
            Ok(FileEntry::new(f.release_path.clone(), size, f.mode, sha)
                .with_meta(&f.meta, f.origin))
        })
        .collect()
}
