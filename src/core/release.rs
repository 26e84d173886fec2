//! The release format both sides share: the MANIFEST (TOML), its entries, and the id that verifies it.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::hash::sha256_hex;
use crate::core::names::{HostName, RelPath, ReleaseId};
use crate::core::narinfo::StorePath;
use crate::core::settings::ApplyPolicy;

pub mod meta;
use crate::core::names::{AccountName, UnitName};
pub use meta::{FileMeta, FileSource, Stage};

pub const MANIFEST_FILE: &str = "MANIFEST";
/// The Nix part of a release (what the flake sees).
pub const CONFIG_DIR: &str = "config";
/// The files copied into the client's `/`, kept apart so they never enter a Nix store.
pub const FILES_DIR: &str = "files";
/// A prebuilt release's binary cache (`nix-cache-info`, `*.narinfo`, `nar/*`): the closure of `toplevel`.
pub const CACHE_DIR: &str = "cache";

/// Errors about a release's content: a manifest that does not parse or does not hold together.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("MANIFEST is not valid: {0}")]
    Invalid(String),
    #[error("MANIFEST does not match its release id: expected sha256 {expected}, got {actual}")]
    IdMismatch { expected: ReleaseId, actual: String },
}

/// Permission bits of a file, written in manifests as a 4-digit octal string ("0644").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mode(u32);

impl Mode {
    pub fn new(bits: u32) -> Option<Mode> {
        (bits <= 0o7777).then_some(Mode(bits))
    }
    /// The permission bits of a stat mode.
    pub fn from_stat(mode: u32) -> Mode {
        Mode(mode & 0o7777)
    }
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        let bad = || format!("invalid mode {s:?}: expected 3 or 4 octal digits like \"0644\"");
        if !(3..=4).contains(&s.len()) {
            return Err(bad());
        }
        u32::from_str_radix(s, 8)
            .ok()
            .and_then(Mode::new)
            .ok_or_else(bad)
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A lowercase hex sha256 of a file's content.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn new(s: String) -> Option<Sha256Hex> {
        (s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then_some(Sha256Hex(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Sha256Hex::new(s.clone()).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid sha256 {s:?}: expected 64 lowercase hex digits"
            ))
        })
    }
}

/// One regular file of a release. `path` starts with `config/` or `files/`.
/// The fields after `sha256` only concern `files/` and are left out at their defaults, so a
/// manifest without them reads as before (root:root, deployed before the rebuild, no restarts).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: RelPath,
    pub size: u64,
    pub mode: Mode,
    pub sha256: Sha256Hex,
    /// Owner by name, resolved on the client when the file is deployed; `None` is root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<AccountName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<AccountName>,
    #[serde(default, skip_serializing_if = "Stage::is_before")]
    pub stage: Stage,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart: Vec<UnitName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reload: Vec<UnitName>,
    /// Which tree the file came from (`common` for `common/files/`).
    #[serde(default, skip_serializing_if = "FileSource::is_host")]
    pub source: FileSource,
}

impl FileEntry {
    /// An entry with the default settings: root's, deployed before the rebuild, restarting nothing.
    pub fn new(path: RelPath, size: u64, mode: Mode, sha256: Sha256Hex) -> FileEntry {
        FileEntry {
            path,
            size,
            mode,
            sha256,
            owner: None,
            group: None,
            stage: Stage::Before,
            restart: Vec::new(),
            reload: Vec::new(),
            source: FileSource::Host,
        }
    }

    /// This entry with `meta` and `source` in place of its settings.
    pub fn with_meta(self, meta: &FileMeta, source: FileSource) -> FileEntry {
        FileEntry {
            owner: meta.owner.clone(),
            group: meta.group.clone(),
            stage: meta.stage,
            restart: meta.restart.clone(),
            reload: meta.reload.clone(),
            source,
            ..self
        }
    }

    /// The settings besides content and mode.
    pub fn meta(&self) -> FileMeta {
        FileMeta {
            owner: self.owner.clone(),
            group: self.group.clone(),
            stage: self.stage,
            restart: self.restart.clone(),
            reload: self.reload.clone(),
        }
    }
}

/// A release's MANIFEST. Its bytes' sha256 is the release id, so it pins every file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub host: HostName,
    /// Publish counter of this host, strictly increasing.
    pub seq: u64,
    /// RFC 3339 time of publishing.
    pub created: String,
    pub apply: ApplyPolicy,
    #[serde(rename = "file", default)]
    pub files: Vec<FileEntry>,
    /// The system the server built (`[apply] build = "server"`); its closure is under `cache/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toplevel: Option<StorePath>,
}

impl Manifest {
    /// The canonical bytes: files sorted by path, fixed key order.
    pub fn render(&self) -> String {
        let mut sorted = self.clone();
        sorted.files.sort_by(|a, b| a.path.cmp(&b.path));
        let body = toml::to_string(&sorted).expect("a manifest always serializes");
        format!("# tiffin release manifest; the release id is the sha256 of this file.\n{body}")
    }

    pub fn id(&self) -> ReleaseId {
        ReleaseId::of_bytes(self.render().as_bytes())
    }

    /// Parses and validates: paths unique, under `config/` or `files/`, no
    /// file where another file needs a directory.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ReleaseError> {
        let text =
            std::str::from_utf8(bytes).map_err(|_| ReleaseError::Invalid("not UTF-8".into()))?;
        let manifest: Manifest = toml::from_str(text)
            .map_err(|e| ReleaseError::Invalid(crate::core::diag::toml_message(&e)))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Parses bytes fetched for `id`, checking they hash to it first.
    pub fn parse_verified(bytes: &[u8], id: &ReleaseId) -> Result<Manifest, ReleaseError> {
        let actual = sha256_hex(bytes);
        if actual != id.as_str() {
            return Err(ReleaseError::IdMismatch {
                expected: id.clone(),
                actual,
            });
        }
        Manifest::parse(bytes)
    }

    fn validate(&self) -> Result<(), ReleaseError> {
        let mut seen = BTreeSet::new();
        for f in &self.files {
            let first = f.path.first();
            let known = first == CONFIG_DIR
                || first == FILES_DIR
                || (first == CACHE_DIR && self.toplevel.is_some());
            if !known || f.path.strip_first().is_none() {
                return Err(ReleaseError::Invalid(format!(
                    "file {:?} is not under {CONFIG_DIR}/ or {FILES_DIR}/ (or {CACHE_DIR}/ with a toplevel)",
                    f.path.as_str()
                )));
            }
            if first == CONFIG_DIR && (f.meta() != FileMeta::default() || !f.source.is_host()) {
                return Err(ReleaseError::Invalid(format!(
                    "file {:?} of the Nix part has an owner, group, stage, units or source: only {FILES_DIR}/ files have them",
                    f.path.as_str()
                )));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(ReleaseError::Invalid(format!(
                    "file {:?} is listed twice",
                    f.path.as_str()
                )));
            }
        }
        // A path that is both a file and a parent of another file cannot be laid out.
        for f in &self.files {
            let mut prefix = String::new();
            for comp in f.path.components() {
                if !prefix.is_empty() && seen.contains(prefix.as_str()) {
                    return Err(ReleaseError::Invalid(format!(
                        "file {:?} is also needed as a directory by {:?}",
                        prefix,
                        f.path.as_str()
                    )));
                }
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(comp);
            }
        }
        Ok(())
    }

    /// True when both describe the same tree and policy (ignoring seq and time).
    pub fn same_content(&self, other: &Manifest) -> bool {
        let key = |m: &Manifest| {
            let mut files = m.files.clone();
            files.sort_by(|a, b| a.path.cmp(&b.path));
            (m.apply.clone(), files, m.toplevel.clone())
        };
        key(self) == key(other)
    }
}

/// The header of a MANIFEST (everything before the file list), parsed without the
/// file list: `status` and `publish` read thousands of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ManifestHead {
    pub host: HostName,
    pub seq: u64,
    pub created: String,
    #[serde(default)]
    pub toplevel: Option<StorePath>,
}

impl ManifestHead {
    pub fn parse(bytes: &[u8]) -> Result<ManifestHead, ReleaseError> {
        let text =
            std::str::from_utf8(bytes).map_err(|_| ReleaseError::Invalid("not UTF-8".into()))?;
        // Rendered manifests put every top-level key before the first table.
        let head = text.split("\n[").next().unwrap_or_default();
        toml::from_str(head).map_err(|e| ReleaseError::Invalid(crate::core::diag::toml_message(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::settings::{Action, Build, Reboot};
    use proptest::prelude::*;

    fn arb_units() -> impl Strategy<Value = Vec<UnitName>> {
        proptest::collection::vec(
            "[a-z][a-z0-9-]{0,6}(@[a-z0-9]{1,3})?\\.(service|socket|timer)",
            0..3,
        )
        .prop_map(|v| v.iter().map(|u| u.parse().unwrap()).collect())
    }

    fn arb_meta() -> impl Strategy<Value = (FileMeta, FileSource)> {
        let account = proptest::option::of("[a-z_][a-z0-9_-]{0,8}")
            .prop_map(|a| a.map(|a| a.parse::<AccountName>().unwrap()));
        (
            account.clone(),
            account,
            prop_oneof![Just(Stage::Before), Just(Stage::After)],
            arb_units(),
            arb_units(),
            prop_oneof![Just(FileSource::Host), Just(FileSource::Common)],
        )
            .prop_map(|(owner, group, stage, restart, reload, source)| {
                let meta = FileMeta {
                    owner,
                    group,
                    stage,
                    restart,
                    reload,
                };
                (meta, source)
            })
    }

    fn arb_entry() -> impl Strategy<Value = FileEntry> {
        (
            prop_oneof![Just("config"), Just("files")],
            proptest::collection::vec("[a-zA-Z0-9_.-]{1,6}", 1..4),
            0u64..1 << 40,
            0u32..=0o7777,
            "[0-9a-f]{64}",
            arb_meta(),
        )
            .prop_filter_map(
                "no dot components",
                |(top, parts, size, mode, sha, (meta, source))| {
                    let path = format!("{top}/{}", parts.join("/")).parse().ok()?;
                    let entry = FileEntry::new(path, size, Mode::new(mode)?, Sha256Hex::new(sha)?);
                    // Only files/ entries carry settings.
                    Some(if top == FILES_DIR {
                        entry.with_meta(&meta, source)
                    } else {
                        entry
                    })
                },
            )
    }

    fn arb_manifest() -> impl Strategy<Value = Manifest> {
        (
            "[a-z][a-z0-9-]{0,10}",
            any::<u64>(),
            prop_oneof![
                Just(Action::Switch),
                Just(Action::Boot),
                Just(Action::Test),
                Just(Action::Build)
            ],
            prop_oneof![Just(Reboot::Never), Just(Reboot::IfNeeded)],
            proptest::collection::vec("\\PC{0,8}", 0..3),
            proptest::collection::vec(arb_entry(), 0..12),
            any::<bool>(),
            proptest::option::of("[0-9a-df-np-sv-z]{32}-[a-z][a-z0-9-]{0,12}"),
        )
            .prop_map(
                |(host, seq, action, reboot, health_check, files, allow_leaving, toplevel)| {
                    // Keep a consistent tree: drop files that collide with another's directory.
                    let mut kept: Vec<FileEntry> = Vec::new();
                    for f in files {
                        let conflicts = kept.iter().any(|k| {
                            k.path == f.path
                                || f.path.as_str().starts_with(&format!("{}/", k.path))
                                || k.path.as_str().starts_with(&format!("{}/", f.path))
                        });
                        if !conflicts {
                            kept.push(f);
                        }
                    }
                    kept.sort_by(|a, b| a.path.cmp(&b.path));
                    Manifest {
                        host: host.parse().unwrap(),
                        seq,
                        created: "2026-11-24T12:00:00Z".into(),
                        apply: ApplyPolicy {
                            action,
                            reboot,
                            health_check,
                            allow_leaving,
                            reboot_window: None,
                            build: if toplevel.is_some() {
                                Build::Server
                            } else {
                                Build::Client
                            },
                            ..ApplyPolicy::default()
                        },
                        files: kept,
                        toplevel: toplevel.map(|t| format!("/nix/store/{t}").parse().unwrap()),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn manifest_round_trips(m in arb_manifest()) {
            let text = m.render();
            let parsed = Manifest::parse(text.as_bytes()).unwrap();
            prop_assert_eq!(&parsed, &m);
            prop_assert_eq!(parsed.render(), text.clone());
            prop_assert!(Manifest::parse_verified(text.as_bytes(), &m.id()).is_ok());
        }

        /// The id changes if and only if a path, mode, content (sha256, size), policy, toplevel,
        /// owner, group, stage, restart or reload list, or source changes.
        #[test]
        fn id_tracks_content(m in arb_manifest(), which in 0usize..14, pick in any::<prop::sample::Index>()) {
            let mut changed = m.clone();
            let file = (!changed.files.is_empty()).then(|| pick.index(changed.files.len()));
            // Settings only exist on files/ entries: a config/ entry takes none.
            let settable = file.filter(|i| changed.files[*i].path.first() == FILES_DIR);
            let other = |a: &Option<AccountName>| Some(match a { Some(n) if n.as_str() == "x" => "y", _ => "x" }.parse::<AccountName>().unwrap());
            let mut expect_change = true;
            match (which, settable) {
                (7, Some(i)) => changed.files[i].owner = other(&changed.files[i].owner),
                (8, Some(i)) => changed.files[i].group = other(&changed.files[i].group),
                (9, Some(i)) => changed.files[i].stage = if changed.files[i].stage == Stage::Before { Stage::After } else { Stage::Before },
                (10, Some(i)) => changed.files[i].restart.push("changed-unit.service".parse().unwrap()),
                (11, Some(i)) => changed.files[i].reload = if changed.files[i].reload.is_empty() { vec!["r.service".parse().unwrap()] } else { Vec::new() },
                (12, Some(i)) => changed.files[i].source = if changed.files[i].source.is_host() { FileSource::Common } else { FileSource::Host },
                (7..=12, _) => expect_change = false,
                _ => {}
            }
            match (which, file) {
                (7..=12, _) => {}
                (0, Some(i)) => { let p = format!("{}x", changed.files[i].path); changed.files[i].path = p.parse().unwrap(); }
                (1, Some(i)) => changed.files[i].mode = Mode::new(changed.files[i].mode.bits() ^ 0o100).unwrap(),
                (2, Some(i)) => { let s = changed.files[i].sha256.as_str().to_owned(); let flipped = format!("{}{}", if s.starts_with('0') { '1' } else { '0' }, &s[1..]); changed.files[i].sha256 = Sha256Hex::new(flipped).unwrap(); }
                (3, _) => changed.apply.action = if m.apply.action == Action::Switch { Action::Boot } else { Action::Switch },
                (4, _) => changed.apply.health_check.push("true".into()),
                (5, _) => changed.apply.allow_leaving = !m.apply.allow_leaving,
                (6, _) => changed.toplevel = match &m.toplevel {
                    Some(_) => None,
                    None => Some("/nix/store/hkrmp39wm59gr305lrkzhw1yzgj6m9lq-system".parse().unwrap()),
                },
                _ => expect_change = false,
            }
            // A renamed path may now collide with another's directory; such a manifest cannot exist.
            prop_assume!(changed.validate().is_ok());
            prop_assert_eq!(m.id() != changed.id(), expect_change);
            prop_assert_eq!(!m.same_content(&changed), expect_change);
        }
    }

    /// A MANIFEST written before files had settings reads with the defaults, and the settings
    /// appear in the text only when set.
    #[test]
    fn settings_are_optional_and_only_for_files() {
        let sha = "0".repeat(64);
        let old = format!(
            "host = \"a\"\nseq = 1\ncreated = \"x\"\n[apply]\n[[file]]\npath = \"files/etc/k\"\nsize = 1\nmode = \"0600\"\nsha256 = \"{sha}\"\n"
        );
        let m = Manifest::parse(old.as_bytes()).unwrap();
        assert_eq!(m.files[0].meta(), FileMeta::default());
        assert_eq!(m.files[0].source, FileSource::Host);
        let text = m.render();
        assert!(
            !text.contains("stage") && !text.contains("source"),
            "{text}"
        );
        let with = format!(
            "{old}owner = \"grafana\"\nstage = \"after\"\nrestart = [\"grafana.service\"]\nsource = \"common\"\n"
        );
        let m = Manifest::parse(with.as_bytes()).unwrap();
        assert_eq!(m.files[0].owner.as_ref().unwrap().as_str(), "grafana");
        assert_eq!(m.files[0].stage, Stage::After);
        assert_eq!(m.files[0].source, FileSource::Common);
        let config = with.replace("files/etc/k", "config/k");
        let err = Manifest::parse(config.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("only files/ files have them"), "{err}");
        let bad_unit = with.replace("grafana.service", "grafana");
        let err = Manifest::parse(bad_unit.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid unit name"), "{err}");
    }

    #[test]
    fn toplevel_round_trips_and_old_manifests_still_parse() {
        let sha = "0".repeat(64);
        let old = format!(
            "host = \"a\"\nseq = 1\ncreated = \"x\"\n[apply]\n[[file]]\npath = \"config/f\"\nsize = 1\nmode = \"0644\"\nsha256 = \"{sha}\"\n"
        );
        let mut m = Manifest::parse(old.as_bytes()).unwrap();
        assert_eq!(m.toplevel, None);
        assert!(!m.render().contains("toplevel"), "old ids stay the same");
        let before = m.id();
        m.toplevel = Some(
            "/nix/store/hkrmp39wm59gr305lrkzhw1yzgj6m9lq-nixos-system-a"
                .parse()
                .unwrap(),
        );
        m.apply.build = Build::Server;
        m.files.push(FileEntry::new(
            "cache/nar/x.nar.xz".parse().unwrap(),
            1,
            Mode::new(0o644).unwrap(),
            Sha256Hex::new(sha.clone()).unwrap(),
        ));
        m.files.sort_by(|a, b| a.path.cmp(&b.path));
        let text = m.render();
        assert_eq!(Manifest::parse(text.as_bytes()).unwrap(), m);
        assert_ne!(m.id(), before);
        let head = ManifestHead::parse(text.as_bytes()).unwrap();
        assert_eq!(head.toplevel, m.toplevel);
        // cache/ belongs to a release with a toplevel only.
        let no_top = text.replace("toplevel = ", "# toplevel = ");
        let err = Manifest::parse(no_top.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("cache/"), "{err}");
        let bad = text.replace("/nix/store/hkrmp", "/tmp/store/hkrmp");
        assert!(Manifest::parse(bad.as_bytes()).is_err());
    }

    #[test]
    fn rejects_bad_manifests() {
        let base = "host = \"a\"\nseq = 1\ncreated = \"x\"\n[apply]\n";
        let sha = "0".repeat(64);
        for (files, why) in [
            (
                format!(
                    "[[file]]\npath = \"../x\"\nsize = 1\nmode = \"0644\"\nsha256 = \"{sha}\"\n"
                ),
                "'.' or '..'",
            ),
            (
                format!(
                    "[[file]]\npath = \"other/x\"\nsize = 1\nmode = \"0644\"\nsha256 = \"{sha}\"\n"
                ),
                "not under",
            ),
            (
                format!(
                    "[[file]]\npath = \"files/a\"\nsize = 1\nmode = \"0644\"\nsha256 = \"{sha}\"\n[[file]]\npath = \"files/a/b\"\nsize = 1\nmode = \"0644\"\nsha256 = \"{sha}\"\n"
                ),
                "also needed as a directory",
            ),
            (
                format!(
                    "[[file]]\npath = \"files/a\"\nsize = 1\nmode = \"10644\"\nsha256 = \"{sha}\"\n"
                ),
                "invalid mode",
            ),
            (
                "[[file]]\npath = \"files/a\"\nsize = 1\nmode = \"0644\"\nsha256 = \"xyz\"\n"
                    .to_owned(),
                "invalid sha256",
            ),
        ] {
            let err = Manifest::parse(format!("{base}{files}").as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
