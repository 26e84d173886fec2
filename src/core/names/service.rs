//! Names a client hands to its own system: account names (file owners and groups) and systemd unit names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::MAX_ACCOUNT_NAME;

/// The longest unit name systemd accepts.
pub const MAX_UNIT_NAME: usize = 255;

/// The unit types systemd knows; a name must end in one of them.
pub const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "target",
    "timer",
    "path",
    "mount",
    "automount",
    "swap",
    "device",
    "slice",
    "scope",
];

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceNameError {
    #[error(
        "invalid account name {0:?}: expected a letter or '_' followed by letters, digits, '_' or '-' (optionally ending in '$'), at most {MAX_ACCOUNT_NAME} bytes, like \"grafana\""
    )]
    Account(String),
    #[error(
        "invalid unit name {name:?}: {why}; expected a systemd unit like \"grafana.service\" or \"wg-quick@wg0.service\""
    )]
    Unit { name: String, why: String },
}

/// A user or group name, resolved in the client's own user database when a file is deployed.
/// The syntax is the portable one (what useradd and systemd accept); whether it exists is
/// only known on the client.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountName(String);

impl AccountName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AccountName {
    type Err = ServiceNameError;
    fn from_str(s: &str) -> Result<Self, ServiceNameError> {
        let body = s.strip_suffix('$').unwrap_or(s);
        let mut chars = body.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if first_ok && rest_ok && s.len() <= MAX_ACCOUNT_NAME {
            Ok(AccountName(s.to_owned()))
        } else {
            Err(ServiceNameError::Account(s.to_owned()))
        }
    }
}

/// A systemd unit name (`name[@instance].type`). It is passed to `systemctl` as one argument,
/// so it never starts with '-' (it would be read as an option) and holds only the characters
/// systemd allows in unit names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitName(String);

impl UnitName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UnitName {
    type Err = ServiceNameError;
    fn from_str(s: &str) -> Result<Self, ServiceNameError> {
        let bad = |why: &str| {
            Err(ServiceNameError::Unit {
                name: s.to_owned(),
                why: why.to_owned(),
            })
        };
        if s.is_empty() || s.len() > MAX_UNIT_NAME {
            return bad(&format!("it must have 1 to {MAX_UNIT_NAME} bytes"));
        }
        if s.starts_with('-') || s.starts_with('.') {
            return bad("it starts with '-' or '.'");
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || ":_.\\-@".contains(c);
        if !s.chars().all(allowed) {
            return bad("only letters, digits and ':', '_', '.', '\\', '-', '@' are allowed");
        }
        let Some((prefix, kind)) = s.rsplit_once('.') else {
            return bad("it has no type suffix");
        };
        if !UNIT_TYPES.contains(&kind) {
            return bad(&format!(
                "\".{kind}\" is not a unit type (one of {})",
                UNIT_TYPES.join(", ")
            ));
        }
        let (name, instance) = match prefix.split_once('@') {
            Some((n, i)) => (n, Some(i)),
            None => (prefix, None),
        };
        if name.is_empty() || name.contains('@') || instance.is_some_and(|i| i.contains('@')) {
            return bad("it needs a name before the type, and at most one '@'");
        }
        Ok(UnitName(s.to_owned()))
    }
}

// The macro is names.rs's, in scope here because `mod service;` follows it.
string_newtype_impls!(AccountName);
string_newtype_impls!(UnitName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        for ok in [
            "grafana",
            "systemd-network",
            "_apt",
            "Debian-exim",
            "machine$",
            "a",
        ] {
            assert!(ok.parse::<AccountName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "-x",
            "a b",
            "a:b",
            "a/b",
            "$",
            "a$b",
            &"a".repeat(33),
        ] {
            assert!(bad.parse::<AccountName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn unit_names() {
        for ok in [
            "grafana.service",
            "wg-quick@wg0.service",
            "systemd-networkd.service",
            "nginx.socket",
            "multi-user.target",
            "dev-disk-by\\x2duuid-1.device",
        ] {
            assert!(ok.parse::<UnitName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "grafana",
            "grafana.serv",
            "-grafana.service",
            ".service",
            "--now.service",
            "a b.service",
            "a;b.service",
            "a@b@c.service",
            "@x.service",
        ] {
            assert!(bad.parse::<UnitName>().is_err(), "{bad}");
        }
    }
}
