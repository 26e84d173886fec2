//! Validated newtypes for names and paths that come from outside: host names, release ids, relative paths.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest Unix account name useradd accepts on common distributions.
pub const MAX_ACCOUNT_NAME: usize = 32;

/// The prefix of every host's account on the server unless fleet.toml sets another.
pub const DEFAULT_USER_PREFIX: &str = "tiffin-";

/// A host's Unix account on the server: `user_prefix + host`. Both sides name it:
/// provision creates it, a client logs in as it.
pub fn account_name(user_prefix: &str, host: &HostName) -> String {
    format!("{user_prefix}{host}")
}

/// Why an outside string was rejected as one of our names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "invalid host name {0:?}: expected a lowercase letter followed by lowercase letters, digits or '-' (like \"web-1\")"
    )]
    Host(String),
    #[error("invalid release id {0:?}: expected 64 lowercase hex digits (a sha256)")]
    Release(String),
    #[error("invalid relative path {path:?}: {why}")]
    RelPath { path: String, why: &'static str },
}

/// A host's name: `[a-z][a-z0-9-]*`, at most 32 bytes (the account-name check
/// with the prefix happens in the fleet, which knows the prefix).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostName(String);

impl HostName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HostName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if first_ok && rest_ok && s.len() <= MAX_ACCOUNT_NAME {
            Ok(HostName(s.to_owned()))
        } else {
            Err(NameError::Host(s.to_owned()))
        }
    }
}

/// The id of a release: the lowercase hex sha256 of its MANIFEST bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReleaseId(String);

impl ReleaseId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 12 hex digits, enough for people to tell releases apart.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
    /// The id of a manifest's bytes.
    pub fn of_bytes(bytes: &[u8]) -> ReleaseId {
        ReleaseId(crate::core::hash::sha256_hex(bytes))
    }
}

impl FromStr for ReleaseId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(ReleaseId(s.to_owned()))
        } else {
            Err(NameError::Release(s.to_owned()))
        }
    }
}

/// A relative, `/`-separated path that cannot leave the directory it is
/// joined to: no leading `/`, no empty, `.` or `..` component, no NUL, no
/// backslash (so no Windows-style tricks), no control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
    /// Joins onto `base`; safe by construction because every component is a plain name.
    pub fn under(&self, base: &Path) -> PathBuf {
        base.join(&self.0)
    }
    /// `self/child`, validated.
    pub fn join(&self, child: &str) -> Result<RelPath, NameError> {
        format!("{}/{child}", self.0).parse()
    }
    /// The path without its first component (`files/etc/x` → `etc/x`).
    pub fn strip_first(&self) -> Option<RelPath> {
        self.0
            .split_once('/')
            .map(|(_, rest)| RelPath(rest.to_owned()))
    }
    pub fn first(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }
}

impl FromStr for RelPath {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let bad = |why| {
            Err(NameError::RelPath {
                path: s.to_owned(),
                why,
            })
        };
        if s.is_empty() {
            return bad("it is empty");
        }
        if s.len() > 4096 {
            return bad("it is longer than 4096 bytes");
        }
        if s.starts_with('/') {
            return bad("it is absolute");
        }
        if s.contains('\\') {
            return bad("it contains a backslash");
        }
        if s.chars().any(|c| c.is_control()) {
            return bad("it contains a control character");
        }
        for component in s.split('/') {
            match component {
                "" => return bad("it has an empty component"),
                "." | ".." => return bad("it has a '.' or '..' component"),
                _ => {}
            }
        }
        Ok(RelPath(s.to_owned()))
    }
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
string_newtype_impls!(HostName);
string_newtype_impls!(ReleaseId);
string_newtype_impls!(RelPath);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn host_names() {
        for ok in ["a", "web-1", "client1", "a-b-c"] {
            assert!(ok.parse::<HostName>().is_ok(), "{ok}");
        }
        for bad in ["", "1a", "-a", "Web", "a_b", "a.b", "a b", &"a".repeat(33)] {
            assert!(bad.parse::<HostName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rel_paths() {
        for ok in ["a", "a/b", "etc/wireguard/key", ".hidden", "a..b", "..a"] {
            assert!(ok.parse::<RelPath>().is_ok(), "{ok}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "./a", "a/..", "..", "a\\..\\b", "a\0b", "a/\n",
        ] {
            assert!(bad.parse::<RelPath>().is_err(), "{bad:?}");
        }
    }

    /// Resolving a path lexically from a base, the way a careless joiner would.
    fn escapes(p: &str) -> bool {
        let mut depth: i64 = 0;
        if p.starts_with('/') || p.contains('\\') || p.contains('\0') {
            return true;
        }
        for c in p.split('/') {
            match c {
                ".." => depth -= 1,
                "." | "" => {}
                _ => depth += 1,
            }
            if depth < 0 {
                return true;
            }
        }
        false
    }

    proptest! {
        #[test]
        fn rel_path_never_leaves_base(s in "[a-z./\\\\\0]{0,12}|\\PC{0,24}") {
            if let Ok(p) = s.parse::<RelPath>() {
                prop_assert!(!escapes(p.as_str()), "{s:?} accepted");
                let joined = p.under(Path::new("/base"));
                prop_assert!(joined.starts_with("/base"));
                for comp in joined.strip_prefix("/base").unwrap().components() {
                    prop_assert!(matches!(comp, std::path::Component::Normal(_)), "{s:?}");
                }
            }
        }

        #[test]
        fn rel_path_round_trips(parts in proptest::collection::vec("[a-zA-Z0-9_.-]{1,8}", 1..5)) {
            let s = parts.join("/");
            match s.parse::<RelPath>() {
                Ok(p) => prop_assert_eq!(p.as_str(), s.as_str()),
                Err(_) => prop_assert!(parts.iter().any(|c| c == "." || c == "..")),
            }
        }
    }
}

pub mod service;
pub use service::{AccountName, ServiceNameError, UnitName};
