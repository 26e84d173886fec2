//! The Nix binary-cache vocabulary both sides share: store paths, `.narinfo` files and Nix's base-32 hashes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where every store path lives; a release's `toplevel` must be directly under it.
pub const STORE_DIR: &str = "/nix/store";
/// The largest `.narinfo` either side accepts (real ones are under 2 kB; a closure reference list can grow).
pub const NARINFO_LIMIT: u64 = 64 << 10;
/// The file every binary cache starts with.
pub const CACHE_INFO_FILE: &str = "nix-cache-info";
/// Nix's base-32 alphabet (no e, o, u, t).
const BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
const HASH_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarInfoError {
    #[error(
        "invalid store path {0:?}: expected /nix/store/<32 base-32 characters>-<name> (like \"/nix/store/…-nixos-system-web-1\")"
    )]
    StorePath(String),
    #[error("narinfo {file}: {why}")]
    Invalid { file: String, why: String },
}

/// A validated store path: `/nix/store/<hash>-<name>`, nothing below it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath(String);

impl StorePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The 32-character hash part, which names the path's `.narinfo` in a cache.
    pub fn hash_part(&self) -> &str {
        &self.0[STORE_DIR.len() + 1..STORE_DIR.len() + 1 + HASH_LEN]
    }
    /// `<hash>.narinfo`, the file that describes this path in a binary cache.
    pub fn narinfo_name(&self) -> String {
        format!("{}.narinfo", self.hash_part())
    }
}

impl FromStr for StorePath {
    type Err = NarInfoError;
    fn from_str(s: &str) -> Result<StorePath, NarInfoError> {
        let bad = || NarInfoError::StorePath(s.to_owned());
        let rest = s
            .strip_prefix(STORE_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(bad)?;
        let (hash, name) = rest.split_at_checked(HASH_LEN).ok_or_else(bad)?;
        let name = name.strip_prefix('-').ok_or_else(bad)?;
        let hash_ok = hash.bytes().all(|b| BASE32.contains(&b));
        let name_ok = !name.is_empty()
            && name.len() <= 211
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
        if hash_ok && name_ok {
            Ok(StorePath(s.to_owned()))
        } else {
            Err(bad())
        }
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for StorePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StorePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Nix's base-32 form of a hash (as in `sha256:…` in a narinfo): the bytes read from the
/// last bit backwards, five bits per character.
pub fn nix_base32(bytes: &[u8]) -> String {
    let len = (bytes.len() * 8).div_ceil(5);
    (0..len)
        .rev()
        .map(|n| {
            let bit = n * 5;
            let (i, j) = (bit / 8, bit % 8);
            let low = u16::from(bytes[i]) >> j;
            let high = bytes.get(i + 1).map_or(0, |b| u16::from(*b) << (8 - j));
            BASE32[usize::from((low | high) & 0x1f)] as char
        })
        .collect()
}

/// How a cache's NAR file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// What `nix copy --to file://…` writes.
    Xz,
    None,
}

/// What tiffin reads of a `.narinfo`: which path it describes, which file holds the NAR,
/// that file's hash and size, how it is compressed, and the NAR's own hash and size (which
/// the fleet's key signs; the client unpacks a NAR and checks them before Nix sees it, and
/// Nix checks them and the signatures again on import).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    /// Relative to the cache's root, like `nar/<filehash>.nar.xz`.
    pub url: String,
    /// `sha256:<nix base-32>` of the file at `url`.
    pub file_hash: String,
    pub file_size: u64,
    pub compression: Compression,
    /// `sha256:<nix base-32>` of the NAR itself (uncompressed).
    pub nar_hash: String,
    pub nar_size: u64,
}

impl NarInfo {
    /// Parses a narinfo read from `file` (bounded by the caller to [`NARINFO_LIMIT`]).
    pub fn parse(file: &str, bytes: &[u8]) -> Result<NarInfo, NarInfoError> {
        let invalid = |why: String| NarInfoError::Invalid {
            file: file.to_owned(),
            why,
        };
        if bytes.len() as u64 > NARINFO_LIMIT {
            return Err(invalid(format!("larger than {NARINFO_LIMIT} bytes")));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| invalid("not UTF-8".into()))?;
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
                .map(str::trim)
                .ok_or_else(|| invalid(format!("no {key} line")))
        };
        let store_path: StorePath = field("StorePath")?
            .parse()
            .map_err(|e: NarInfoError| invalid(e.to_string()))?;
        let url = field("URL")?.to_owned();
        let url_ok = url.strip_prefix("nar/").is_some_and(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && !n.starts_with('.')
        });
        if !url_ok {
            return Err(invalid(format!(
                "URL {url:?} is not a file under nar/ of the same cache"
            )));
        }
        let file_hash = field("FileHash")?.to_owned();
        let file_size = field("FileSize")?
            .parse()
            .map_err(|_| invalid("FileSize is not a number".into()))?;
        // Nix's default when the line is missing is bzip2, which tiffin does not unpack.
        let compression = match field("Compression").unwrap_or("bzip2") {
            "xz" => Compression::Xz,
            "none" => Compression::None,
            other => {
                return Err(invalid(format!(
                    "Compression {other:?}: tiffin unpacks only xz (what `nix copy --to file://` writes) and none"
                )));
            }
        };
        let nar_hash = field("NarHash")?.to_owned();
        let hash_ok = nar_hash
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 52 && h.bytes().all(|b| BASE32.contains(&b)));
        if !hash_ok {
            return Err(invalid(format!(
                "NarHash {nar_hash:?} is not sha256:<52 base-32 characters>"
            )));
        }
        let nar_size = field("NarSize")?
            .parse()
            .map_err(|_| invalid("NarSize is not a number".into()))?;
        Ok(NarInfo {
            store_path,
            url,
            file_hash,
            file_size,
            compression,
            nar_hash,
            nar_size,
        })
    }

    /// Whether the NAR file described here is the one the MANIFEST lists (hex sha256, size).
    pub fn matches_file(&self, sha256_hex: &str, size: u64) -> bool {
        let Ok(bytes) = hex::decode(sha256_hex) else {
            return false;
        };
        self.file_size == size && self.file_hash == format!("sha256:{}", nix_base32(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Measured with Debian's nix 2.8: `nix copy --to file://…` of a one-file derivation.
    const REAL: &str = "StorePath: /nix/store/h53jn4wvi4jxxl9bg4mg78zilfmafzv7-dep
URL: nar/0lgqic60cyk5pgq5kl8pp9zdgilsbxg599vyqqbw267lkk5spy5n.nar.xz
Compression: xz
FileHash: sha256:0lgqic60cyk5pgq5kl8pp9zdgilsbxg599vyqqbw267lkk5spy5n
FileSize: 128
NarHash: sha256:10iyq1ycwi0d4pjir7m8zrjabw3wpq9lcjyr7yjkcjhwrvcn8mvp
NarSize: 120
References: 
Deriver: 5psch5arkv001shax77a8ibvknrlpgqy-dep.drv
Sig: fleet-1:BCJRvmLaE5CPwr2Kzv7Z3Pii1pNZmvl0GgSTbbfRK1Zk8StCmCl0Sl8mU+FFYReGHUQ/TIy+QrF6SZjivVj2BQ==
";

    #[test]
    fn parses_a_real_narinfo() {
        let n = NarInfo::parse("h53j.narinfo", REAL.as_bytes()).unwrap();
        assert_eq!(
            n.store_path.as_str(),
            "/nix/store/h53jn4wvi4jxxl9bg4mg78zilfmafzv7-dep"
        );
        assert_eq!(n.store_path.hash_part(), "h53jn4wvi4jxxl9bg4mg78zilfmafzv7");
        assert_eq!(
            n.url,
            "nar/0lgqic60cyk5pgq5kl8pp9zdgilsbxg599vyqqbw267lkk5spy5n.nar.xz"
        );
        assert_eq!(n.file_size, 128);
    }

    #[test]
    fn base32_matches_nix() {
        // `nix hash to-base32 --type sha256` of the sha256 of the empty string.
        let empty = hex::decode("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
            .unwrap();
        assert_eq!(
            nix_base32(&empty),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
    }

    #[test]
    fn a_file_hash_that_disagrees_is_refused() {
        let n = NarInfo::parse("x.narinfo", REAL.as_bytes()).unwrap();
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(!n.matches_file(empty, 128));
        let same = NarInfo {
            file_hash: "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73".into(),
            ..n
        };
        assert!(same.matches_file(empty, 128));
        assert!(!same.matches_file(empty, 129), "the size counts too");
    }

    #[test]
    fn refuses_hostile_narinfos() {
        for (text, why) in [
            (
                REAL.replace("URL: nar/", "URL: ../"),
                "not a file under nar/",
            ),
            (
                REAL.replace("URL: nar/0", "URL: nar/.."),
                "not a file under nar/",
            ),
            (
                REAL.replace("/nix/store/h53j", "/etc/store/h53j"),
                "invalid store path",
            ),
            (REAL.replace("FileSize: 128", "FileSize: -1"), "FileSize"),
            (REAL.replace("FileHash", "Filehash"), "no FileHash"),
            ("x".repeat(NARINFO_LIMIT as usize + 1), "larger than"),
        ] {
            let err = NarInfo::parse("x.narinfo", text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn store_paths() {
        let ok = "/nix/store/hkrmp39wm59gr305lrkzhw1yzgj6m9lq-nixos-system-h";
        assert_eq!(ok.parse::<StorePath>().unwrap().as_str(), ok);
        for bad in [
            "/nix/store/hkrmp39wm59gr305lrkzhw1yzgj6m9lq",
            "/nix/store/hkrmp39wm59gr305lrkzhw1yzgj6m9lq-",
            "/nix/store/hkrmp39wm59gr305lrkzhw1yzgj6m9lq-a/bin",
            "/nix/store/ekrmp39wm59gr305lrkzhw1yzgj6m9lq-a",
            "/nix/store/hkrmp39wm59gr305lrkzhw1yzgj6m9lq-.a",
            "nix/store/hkrmp39wm59gr305lrkzhw1yzgj6m9lq-a",
            "/nix/store/../hkrmp39wm59gr305lrkzhw1yzgj6m9l-a",
        ] {
            assert!(bad.parse::<StorePath>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn narinfo_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = NarInfo::parse("x", &bytes);
        }
    }
}
