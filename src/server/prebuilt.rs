//! Prebuilt releases on the server: build a host's system from its `config/`, sign the closure, and lay it out as a binary cache whose files every release and host share.
//!
//! One content-addressed pool per signing key (`<state_dir>/prebuilt/cache-<key name>/`, root
//! only) is the `nix copy --to file://` target; a release's `cache/` holds hard links into it,
//! so a store path shared by N hosts and M releases is one file on disk.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::admin::host_tree::SourceFile;
use crate::core::hash::sha256_file;
use crate::core::names::{HostName, RelPath};
use crate::core::narinfo::{CACHE_INFO_FILE, NARINFO_LIMIT, NarInfo, StorePath};
use crate::core::release::{CACHE_DIR, CONFIG_DIR, FileEntry, Manifest, Mode, Sha256Hex};

pub use crate::admin::fleet::prebuilt::DEFAULT_BUILD;
/// How much of the build's output a failure shows.
const LOG_TAIL: u64 = 4 << 10;
/// The build's JSON on stdout; a real one is a few hundred bytes.
const JSON_LIMIT: u64 = 1 << 20;
/// The mode cache files are stored with: they are hard links shared by several hosts' chroots,
/// so no one host's group can own them; each chroot's 0750 directories keep other hosts out.
const CACHE_FILE_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum PrebuiltError {
    #[error(
        "host {host}: building its system failed (`{command}`: {message}); its previous release stays current. The build's last output:\n{log_tail}"
    )]
    BuildFailed {
        host: HostName,
        command: String,
        message: String,
        log_tail: String,
    },
    #[error(
        "host {host}: `{command}` printed no usable out path ({why}); [server] build in fleet.toml must print `nix build --json` output"
    )]
    BadOutput {
        host: HostName,
        command: String,
        why: String,
    },
    #[error("host {host}: {step} failed (`{command}`): {message}")]
    Nix {
        host: HostName,
        step: &'static str,
        command: String,
        message: String,
    },
    #[error(
        "host {host}: [apply] build = \"server\" needs [server] signing_key in fleet.toml (a file from `nix key generate-secret`, readable by root only)"
    )]
    NoKey { host: HostName },
    #[error("host {host}: {step} {path}: {source}")]
    Io {
        host: HostName,
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What building needs from the fleet: the argv template, the key, where server state lives.
#[derive(Debug, Clone, Copy)]
pub struct Builder<'a> {
    pub build: &'a [String],
    pub signing_key: Option<&'a Path>,
    pub state_dir: &'a Path,
}

/// A host's closure as cache files of its next release.
#[derive(Debug, Clone)]
pub struct Closure {
    pub toplevel: StorePath,
    /// Each with the file to hard-link from (the pool, or the current release).
    pub files: Vec<(SourceFile, FileEntry)>,
}

impl Builder<'_> {
    fn io(
        &self,
        host: &HostName,
        step: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> PrebuiltError + use<> {
        let (host, path) = (host.clone(), path.to_owned());
        move |source| PrebuiltError::Io {
            host,
            step,
            path,
            source,
        }
    }

    /// Builds the host's system from the `config/` part of `sources` and returns its
    /// closure as cache files: taken from `current` when it already ships this toplevel
    /// (nothing signed or copied), otherwise signed, copied into the pool and listed.
    pub fn closure(
        &self,
        host: &HostName,
        sources: &[SourceFile],
        current: Option<(&Path, &Manifest)>,
    ) -> Result<Closure, PrebuiltError> {
        let toplevel = self.build_system(host, sources)?;
        if let Some((dir, manifest)) = current
            && manifest.toplevel.as_ref() == Some(&toplevel)
        {
            let files = manifest
                .files
                .iter()
                .filter(|f| f.path.first() == CACHE_DIR)
                .map(|f| (source_file(f.path.clone(), f.path.under(dir)), f.clone()))
                .collect();
            return Ok(Closure { toplevel, files });
        }
        let key = self
            .signing_key
            .ok_or_else(|| PrebuiltError::NoKey { host: host.clone() })?;
        let pool = self.pool(host, key)?;
        let key_arg = key.display().to_string();
        let top = toplevel.as_str();
        let nix = ["nix", "--extra-experimental-features", "nix-command"];
        let sign = [
            &nix[..],
            &["store", "sign", "-r", "--key-file", &key_arg, top],
        ]
        .concat();
        run_nix(host, "signing the closure", &sign)?;
        let to = format!("file://{}", pool.display());
        let copy = [&nix[..], &["copy", "--to", &to, top]].concat();
        run_nix(host, "copying the closure into the cache", &copy)?;
        let listed = run_nix(
            host,
            "listing the closure",
            &["nix-store", "--query", "--requisites", top],
        )?;
        let files = self.list_cache(host, &pool, &listed)?;
        Ok(Closure { toplevel, files })
    }

    /// `<state_dir>/prebuilt/cache-<key name>/`: a new key name starts a new pool, so a
    /// narinfo signed with an old key is never shipped under a new one.
    fn pool(&self, host: &HostName, key: &Path) -> Result<PathBuf, PrebuiltError> {
        let text =
            fs::read_to_string(key).map_err(self.io(host, "reading the signing key", key))?;
        let name = text.split(':').next().unwrap_or_default().trim();
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !name.starts_with('.');
        if !plain || !text.contains(':') {
            return Err(self.io(host, "reading the signing key", key)(
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not a `nix key generate-secret` key (NAME:BASE64, NAME of letters, digits, '-', '_', '.')",
                ),
            ));
        }
        let base = self.state_dir.join("prebuilt");
        let pool = base.join(format!("cache-{name}"));
        for dir in [&base, &pool] {
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(self.io(host, "creating", dir)(e));
                }
                _ => {}
            }
        }
        Ok(pool)
    }

    /// The cache files of a closure, from the pool: `nix-cache-info`, each path's narinfo and NAR.
    fn list_cache(
        &self,
        host: &HostName,
        pool: &Path,
        requisites: &str,
    ) -> Result<Vec<(SourceFile, FileEntry)>, PrebuiltError> {
        let mut names = vec![CACHE_INFO_FILE.to_owned()];
        for line in requisites.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let path: StorePath = line.parse().map_err(|e| PrebuiltError::Nix {
                host: host.clone(),
                step: "listing the closure",
                command: "nix-store --query --requisites".into(),
                message: format!("{e}"),
            })?;
            let narinfo = pool.join(path.narinfo_name());
            let bytes = read_bounded(&narinfo, NARINFO_LIMIT)
                .map_err(self.io(host, "reading", &narinfo))?;
            let info = NarInfo::parse(&narinfo.display().to_string(), &bytes).map_err(|e| {
                PrebuiltError::Nix {
                    host: host.clone(),
                    step: "reading the cache",
                    command: format!("nix copy --to file://{}", pool.display()),
                    message: e.to_string(),
                }
            })?;
            names.push(path.narinfo_name());
            names.push(info.url);
        }
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let source = pool.join(&name);
                let (sha, size) =
                    sha256_file(&source).map_err(self.io(host, "hashing", &source))?;
                let path: RelPath = format!("{CACHE_DIR}/{name}")
                    .parse()
                    .expect("narinfo names and nar/ URLs are checked plain names");
                let entry = FileEntry::new(
                    path.clone(),
                    size,
                    Mode::new(CACHE_FILE_MODE).expect("a mode"),
                    Sha256Hex::new(sha).expect("hex of a digest"),
                );
                Ok((source_file(path, source), entry))
            })
            .collect()
    }

    /// Copies the `config/` files into a fresh directory of the server's and runs the build
    /// there, so the build sees exactly the release's `config/` (never `files/`).
    fn build_system(
        &self,
        host: &HostName,
        sources: &[SourceFile],
    ) -> Result<StorePath, PrebuiltError> {
        let work = self.state_dir.join("prebuilt").join("build");
        let dir = work.join(host.as_str());
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(self.io(host, "creating", &dir))?;
        for src in sources {
            let Some(rel) = (src.release_path.first() == CONFIG_DIR)
                .then(|| src.release_path.strip_first())
                .flatten()
            else {
                continue;
            };
            let dest = rel.under(&dir);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(self.io(host, "creating", parent))?;
            }
            fs::copy(&src.source, &dest).map_err(self.io(host, "copying", &dest))?;
        }
        let argv = fill(self.build, &dir, host);
        let log = work.join(format!("{host}.log"));
        let out = run_logged(&argv, &log).map_err(self.io(host, "running the build, log", &log))?;
        let command = argv.join(" ");
        if !out.ok {
            return Err(PrebuiltError::BuildFailed {
                host: host.clone(),
                command,
                message: out.status,
                log_tail: out.log_tail,
            });
        }
        out_path(&out.stdout).map_err(|why| PrebuiltError::BadOutput {
            host: host.clone(),
            command,
            why,
        })
    }
}

fn source_file(release_path: RelPath, source: PathBuf) -> SourceFile {
    SourceFile {
        release_path,
        source,
        mode: Mode::new(CACHE_FILE_MODE).expect("a mode"),
        meta: crate::core::release::FileMeta::default(),
        origin: crate::core::release::FileSource::Host,
    }
}

/// Puts a cache file into a release by hard link (the point of the pool); `false` when the
/// link cannot be made (another filesystem), and the caller copies instead.
pub fn link_cache_file(source: &Path, dest: &Path) -> bool {
    fs::hard_link(source, dest).is_ok()
}

/// `{config}` and `{host}` filled into the build template.
pub fn fill(template: &[String], config: &Path, host: &HostName) -> Vec<String> {
    let config = config.display().to_string();
    template
        .iter()
        .map(|a| {
            a.replace("{config}", &config)
                .replace("{host}", host.as_str())
        })
        .collect()
}

/// The toplevel out path in `nix build --json` output: `[{"outputs":{"out":"/nix/store/…"}}]`.
pub fn out_path(stdout: &[u8]) -> Result<StorePath, String> {
    let value: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| format!("not JSON: {e}"))?;
    let out = value
        .as_array()
        .and_then(|a| a.first())
        .and_then(|b| b.get("outputs")?.get("out")?.as_str())
        .ok_or("no [0].outputs.out in the JSON")?;
    out.parse()
        .map_err(|e: crate::core::narinfo::NarInfoError| e.to_string())
}

struct Ran {
    ok: bool,
    status: String,
    stdout: Vec<u8>,
    log_tail: String,
}

/// Runs `argv` with stderr into `log` (only its tail is read back) and stdout bounded.
fn run_logged(argv: &[String], log: &Path) -> std::io::Result<Ran> {
    let log_file = fs::File::create(log)?;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()?;
    let mut stdout = Vec::new();
    if let Some(out) = child.stdout.take() {
        out.take(JSON_LIMIT).read_to_end(&mut stdout)?;
    }
    let status = child.wait()?;
    Ok(Ran {
        ok: status.success(),
        status: status.to_string(),
        stdout,
        log_tail: tail(log, LOG_TAIL),
    })
}

fn run_nix(host: &HostName, step: &'static str, argv: &[&str]) -> Result<String, PrebuiltError> {
    let failed = |message: String| PrebuiltError::Nix {
        host: host.clone(),
        step,
        command: argv.join(" "),
        message,
    };
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = err.lines().rev().take(8).collect();
        let last: Vec<&str> = last.into_iter().rev().collect();
        return Err(failed(format!("{}: {}", out.status, last.join("\n"))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The last `limit` bytes of a file, lossily as text.
fn tail(path: &Path, limit: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(limit)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_out_path_of_nix_build_json() {
        let json = br#"[{"drvPath":"/nix/store/qfjsgvq3wx8n3k55pmcmkn0953mr04vg-nixos-system-h.drv","outputs":{"out":"/nix/store/hkrmp39wm59gr305lrkzhw1yzgj6m9lq-nixos-system-h"}}]"#;
        assert_eq!(
            out_path(json).unwrap().as_str(),
            "/nix/store/hkrmp39wm59gr305lrkzhw1yzgj6m9lq-nixos-system-h"
        );
        for (bad, why) in [
            (&b"/nix/store/x"[..], "not JSON"),
            (b"[]", "no [0].outputs.out"),
            (
                br#"[{"outputs":{"out":"/tmp/evil"}}]"#,
                "invalid store path",
            ),
        ] {
            let err = out_path(bad).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn fills_the_template() {
        let argv = fill(
            &DEFAULT_BUILD
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            Path::new("/srv/b"),
            &"web-1".parse().unwrap(),
        );
        assert_eq!(
            argv.last().unwrap(),
            "/srv/b#nixosConfigurations.web-1.config.system.build.toplevel"
        );
    }
}
