//! `common/files/`, deployed to every host unless the host has a file of its own there, and host.toml's per-file settings attached to the resolved files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{SourceFile, Walk};
use crate::admin::fleet::HOST_FILE;
use crate::core::diag::Problem;
use crate::core::names::{HostName, RelPath};
use crate::core::release::{FILES_DIR, FileMeta, FileSource};

pub use crate::admin::fleet::COMMON_FILES;

/// Walks `common/files/` and adds what the host's own `files/` does not have. A common file
/// where the host has a directory (or the other way round) is a problem: the host wins on a
/// path, but a tree cannot be half one and half the other.
pub(super) fn add_common_files(walk: &mut Walk) {
    let path = walk.real_root.join(COMMON_FILES);
    if std::fs::symlink_metadata(&path).is_err() {
        return;
    }
    if !path.is_dir() {
        let message = "must be a directory: the files under it are deployed to every host";
        walk.problem(Path::new(COMMON_FILES), message);
        return;
    }
    let own: Vec<SourceFile> = std::mem::take(&mut walk.out);
    walk.origin = FileSource::Common;
    walk.visit(Path::new(COMMON_FILES), &path, FILES_DIR);
    walk.origin = FileSource::Host;
    let common = std::mem::replace(&mut walk.out, own);
    let own_files: BTreeSet<String> = walk
        .out
        .iter()
        .map(|f| f.release_path.as_str().to_owned())
        .filter(|p| p.starts_with(&format!("{FILES_DIR}/")))
        .collect();
    let mut kept = Vec::new();
    for file in common {
        let p = file.release_path.as_str();
        if own_files.contains(p) {
            continue;
        }
        let clash = own_files
            .iter()
            .find(|o| p.starts_with(&format!("{o}/")) || o.starts_with(&format!("{p}/")));
        match clash {
            Some(o) => {
                let shown = Path::new(COMMON_FILES).join(p.strip_prefix("files/").unwrap_or(p));
                let message = format!(
                    "conflicts with the host's own hosts/{}/{o}: one is a file where the other needs a directory; rename one of them",
                    walk.host
                );
                walk.problem(&shown, message);
            }
            None => kept.push(file),
        }
    }
    walk.out.extend(kept);
}

/// Gives each resolved file of `files/` its settings from host.toml's `[files."…"]`. A table
/// for a path that neither `hosts/<name>/files/` nor `common/files/` has is a problem naming
/// the table: a typo there would otherwise leave a secret readable by root only, silently.
pub fn attach_meta(
    host: &HostName,
    sources: &mut [SourceFile],
    metas: &BTreeMap<RelPath, FileMeta>,
) -> Result<(), Vec<Problem>> {
    let host_file = Path::new("hosts").join(host.as_str()).join(HOST_FILE);
    let mut problems = Vec::new();
    for (path, meta) in metas {
        let wanted = format!("{FILES_DIR}/{path}");
        match sources
            .iter_mut()
            .find(|s| s.release_path.as_str() == wanted)
        {
            Some(source) => source.meta = meta.clone(),
            None => problems.push(Problem::error(
                Some(host),
                &host_file,
                format!(
                    "files.{:?}: no such file in hosts/{host}/files/ or {COMMON_FILES}/ (the key is the path on the client without its leading '/', like \"etc/grafana/secret\")",
                    path.as_str()
                ),
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::release::{Mode, Stage};

    fn source(path: &str, origin: FileSource) -> SourceFile {
        SourceFile {
            release_path: path.parse().unwrap(),
            source: path.into(),
            mode: Mode::new(0o600).unwrap(),
            meta: FileMeta::default(),
            origin,
        }
    }

    #[test]
    fn settings_attach_to_host_and_common_files_and_a_stray_table_is_named() {
        let host: HostName = "web".parse().unwrap();
        let mut sources = vec![
            source("config/flake.nix", FileSource::Host),
            source("files/etc/grafana/secret", FileSource::Host),
            source("files/etc/ssl/ca.pem", FileSource::Common),
        ];
        let after = FileMeta {
            stage: Stage::After,
            ..FileMeta::default()
        };
        let mut metas = BTreeMap::new();
        metas.insert("etc/grafana/secret".parse().unwrap(), after.clone());
        metas.insert("etc/ssl/ca.pem".parse().unwrap(), after.clone());
        attach_meta(&host, &mut sources, &metas).unwrap();
        assert_eq!(sources[1].meta, after);
        assert_eq!(sources[2].meta, after);

        metas.insert("etc/grafana/secrte".parse().unwrap(), after);
        // The Nix part is not a place for settings either.
        metas.insert("flake.nix".parse().unwrap(), FileMeta::default());
        let problems = attach_meta(&host, &mut sources, &metas).unwrap_err();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        insta::assert_snapshot!("settings_for_a_path_that_does_not_exist", text.join("\n"));
    }
}
