//! The rules for `[server]` in fleet.toml (and a host's `[apply]`) that need no server to judge, in one place: what `tiffin check` accepts is what `publish` and `provision` accept.

use std::fmt;
use std::path::{Component, Path};

use super::{FLEET_FILE, ServerSettings};
use crate::core::diag::Problem;
use crate::core::names::MAX_ACCOUNT_NAME;

pub const CHROOT_ROOT_KEY: &str = "server.chroot_root";
pub const SSHD_DROPIN_KEY: &str = "server.sshd_dropin";
pub const KEYS_DIR_KEY: &str = "server.authorized_keys_dir";
/// `tiffin provision --chroot-root DIR` (and publish's, status'…) names the chroot root instead.
pub const CHROOT_ROOT_FLAG: &str = "--chroot-root";

/// Directories the system shares with other software. tiffin changes the owner and mode
/// of its chroot root and keys directory (sshd demands root-owned, not group/other-writable
/// paths) and writes files into them, so neither may be one of these.
const SHARED_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/etc",
    "/etc/ssh",
    "/etc/ssh/sshd_config.d",
    "/etc/systemd",
    "/etc/systemd/system",
    "/home",
    "/lib",
    "/lib64",
    "/media",
    "/mnt",
    "/nix",
    "/nix/var",
    "/opt",
    "/root",
    "/run",
    "/run/sshd",
    "/sbin",
    "/srv",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/sbin",
    "/usr/share",
    "/var",
    "/var/cache",
    "/var/empty",
    "/var/lib",
    "/var/local",
    "/var/log",
    "/var/mail",
    "/var/opt",
    "/var/spool",
    "/var/tmp",
    "/var/www",
];

/// Trees no tiffin path may be in at all: kernel interfaces and the read-only Nix store.
const FORBIDDEN_TREES: &[&str] = &["/proc", "/sys", "/dev", "/nix/store"];

/// Where a path setting was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    FleetToml,
    /// On the command line (`--chroot-root`).
    Flag,
}

/// A path setting as messages name it: `server.chroot_root "/var"`.
#[derive(Debug, Clone, Copy)]
pub struct Setting<'a> {
    pub key: &'static str,
    pub path: &'a Path,
    pub origin: Origin,
}

impl<'a> Setting<'a> {
    pub fn fleet(key: &'static str, path: &'a Path) -> Setting<'a> {
        Setting {
            key,
            path,
            origin: Origin::FleetToml,
        }
    }

    /// A message about this setting, prefixed with the file to fix (as `check` prints it).
    pub fn located(&self, message: &str) -> String {
        match self.origin {
            Origin::FleetToml => format!("{FLEET_FILE}: {message}"),
            Origin::Flag => message.to_owned(),
        }
    }
}

impl fmt::Display for Setting<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.key, self.path)
    }
}

impl ServerSettings {
    pub fn chroot_root_setting(&self) -> Setting<'_> {
        Setting::fleet(CHROOT_ROOT_KEY, &self.chroot_root)
    }
    pub fn dropin_setting(&self) -> Setting<'_> {
        Setting::fleet(SSHD_DROPIN_KEY, &self.sshd_dropin)
    }
    pub fn keys_dir_setting(&self) -> Setting<'_> {
        Setting::fleet(KEYS_DIR_KEY, &self.authorized_keys_dir)
    }
}

/// Every rule, as problems of fleet.toml (what `Fleet::load` records).
pub fn problems(server: &ServerSettings) -> Vec<Problem> {
    messages(server, server.chroot_root_setting())
        .into_iter()
        .map(|m| Problem::error(None, FLEET_FILE, m))
        .collect()
}

/// Every rule, with the chroot root from fleet.toml or from the command line.
pub fn messages(server: &ServerSettings, chroot_root: Setting) -> Vec<String> {
    let keys_dir = server.keys_dir_setting();
    let dropin = server.dropin_setting();
    let mut out = Vec::new();
    let root_problem = path_problem(chroot_root)
        .or_else(|| shared_dir_problem(chroot_root, "/var/lib/tiffin/chroots"));
    let root_ok = root_problem.is_none();
    out.extend(root_problem);
    out.extend(
        path_problem(keys_dir)
            .or_else(|| shared_dir_problem(keys_dir, "/etc/tiffin/authorized_keys")),
    );
    out.extend(path_problem(dropin).or_else(|| dropin_name_problem(dropin)));
    if root_ok {
        for inside in [keys_dir, dropin] {
            out.extend(inside_chroot_problem(inside, chroot_root));
        }
    }
    out.extend(user_prefix_problem(&server.user_prefix));
    out.extend(
        server
            .sshd_extra
            .iter()
            .filter_map(|l| sshd_extra_problem(l)),
    );
    if server.keep_releases == 0 {
        out.push("server.keep_releases must be at least 1".into());
    }
    out
}

/// The drop-in writes paths literally: absolute, no `..` (it would dodge the rules below),
/// nothing sshd_config would need quoted.
fn path_problem(s: Setting) -> Option<String> {
    if !s.path.is_absolute() {
        return Some(format!("{s} must be an absolute path"));
    }
    if s.path.components().any(|c| c == Component::ParentDir) {
        return Some(format!("{s} must not contain \"..\": write the path out"));
    }
    unsafe_in_config(s.path).map(|c| {
        format!(
            "{s} contains {c:?}, which sshd_config cannot take literally: choose a path without spaces, quotes, '%', '#' or ','"
        )
    })
}

fn shared_dir_problem(s: Setting, example: &str) -> Option<String> {
    if let Some(tree) = FORBIDDEN_TREES.iter().find(|t| s.path.starts_with(t)) {
        return Some(format!(
            "{s} is in {tree}, which is no place for tiffin's files: choose a directory of tiffin's own, such as {example}"
        ));
    }
    SHARED_DIRS.iter().any(|d| s.path == Path::new(d)).then(|| {
        format!(
            "{s} is a directory the system shares with other software, and tiffin would take it over (owner, mode, what is in it): choose a directory of tiffin's own, such as {example}"
        )
    })
}

/// tiffin writes a drop-in of its own, never sshd_config or another system file.
fn dropin_name_problem(s: Setting) -> Option<String> {
    let name = s.path.file_name().map(|n| n.to_string_lossy());
    let dir = s.path.parent().and_then(Path::file_name);
    let name_ok = name.is_some_and(|n| n.ends_with(".conf") && n.len() > 5 && !n.starts_with('.'));
    let dir_ok = dir.is_some_and(|d| d.to_string_lossy().ends_with(".d"));
    (!(name_ok && dir_ok)).then(|| {
        format!(
            "{s} must be a file named *.conf (not starting with '.') in an sshd_config.d-like directory (one whose name ends in .d), such as /etc/ssh/sshd_config.d/tiffin.conf: tiffin writes a drop-in of its own, never sshd_config or another system file"
        )
    })
}

/// sshd reads keys and its drop-in as root before it chroots: nothing of that in a chroot.
fn inside_chroot_problem(s: Setting, chroot_root: Setting) -> Option<String> {
    s.path.starts_with(chroot_root.path).then(|| {
        format!(
            "{s} is inside the chroot root {:?} ({}): sshd's files must live outside every chroot (e.g. {})",
            chroot_root.path,
            chroot_root.key,
            if s.key == KEYS_DIR_KEY {
                "/etc/tiffin/authorized_keys"
            } else {
                "/etc/ssh/sshd_config.d/tiffin.conf"
            }
        )
    })
}

/// Account names every useradd takes: a lowercase letter, then `[a-z0-9_-]`; room for a host.
/// (Each host's full account name is checked against the 32-byte limit with the host.)
fn user_prefix_problem(prefix: &str) -> Option<String> {
    let key = "server.user_prefix";
    if prefix.is_empty() {
        return Some(format!(
            "{key} is empty: the prefix keeps the hosts' accounts apart from the system's (with none, host \"daemon\" would be the system's daemon account); use one such as \"tiffin-\""
        ));
    }
    let first_ok = prefix.starts_with(|c: char| c.is_ascii_lowercase());
    let rest_ok = prefix
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !(first_ok && rest_ok) {
        return Some(format!(
            "{key} {prefix:?} must start with a lowercase letter and hold only lowercase letters, digits, '_' and '-' (account names every useradd accepts), such as \"tiffin-\""
        ));
    }
    (prefix.len() >= MAX_ACCOUNT_NAME).then(|| {
        format!(
            "{key} {prefix:?} has {} bytes: an account name (prefix and host) may have at most {MAX_ACCOUNT_NAME}, so no host would fit; shorten it",
            prefix.len()
        )
    })
}

/// Extra lines go inside every Match block: one line each, and none that opens or pulls in another block.
fn sshd_extra_problem(line: &str) -> Option<String> {
    if line.chars().any(char::is_control) || line.trim().is_empty() {
        return Some(format!(
            "server.sshd_extra entry {line:?} must be one non-empty sshd_config line"
        ));
    }
    // sshd takes `Keyword value` and `Keyword=value` alike.
    let keyword = line
        .trim()
        .split(|c: char| c.is_whitespace() || c == '=')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let what = match keyword.as_str() {
        "match" => "a Match",
        "include" => "an Include",
        _ => return None,
    };
    Some(format!(
        "server.sshd_extra {line:?}: {what} line would change which accounts the blocks apply to; only per-account settings belong there"
    ))
}

/// Characters that would need quoting or escaping in sshd_config (`%` is a token there).
pub fn unsafe_in_config(path: &Path) -> Option<char> {
    path.to_string_lossy()
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '%' | '"' | '\'' | '#' | ','))
}

/// A reboot window only matters when the host may reboot: set with `reboot = "never"` it is a
/// mistake worth a warning (the window would silently never be used).
pub fn reboot_window_problem(apply: &crate::core::settings::ApplyPolicy) -> Option<String> {
    let window = apply.reboot_window?;
    (apply.reboot == crate::core::settings::Reboot::Never).then(|| {
        format!(
            "[apply] reboot_window = \"{window}\" has no effect while reboot = \"never\": set reboot = \"if-needed\" (or drop the window)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(edit: impl FnOnce(&mut ServerSettings)) -> Vec<String> {
        let mut s = ServerSettings::default();
        edit(&mut s);
        messages(&s, s.chroot_root_setting())
    }

    #[test]
    fn the_defaults_pass() {
        assert_eq!(server(|_| {}), Vec::<String>::new());
    }

    #[test]
    fn shared_and_relative_chroot_roots_are_refused() {
        for bad in [
            "/",
            "/var",
            "/var/lib",
            "/var/lib/",
            "/srv",
            "/home",
            "/etc",
            "/tmp",
            "/nix",
        ] {
            let m = server(|s| s.chroot_root = bad.into());
            assert_eq!(m.len(), 1, "{bad}: {m:?}");
            assert!(m[0].contains("shares with other software"), "{bad}: {m:?}");
        }
        let m = server(|s| s.chroot_root = "/proc/1/root".into());
        assert!(m[0].contains("is in /proc"), "{m:?}");
        let m = server(|s| s.chroot_root = "chroots".into());
        assert_eq!(
            m,
            ["server.chroot_root \"chroots\" must be an absolute path"]
        );
        let m = server(|s| s.chroot_root = "/var/lib/tiffin/../..".into());
        assert!(m[0].contains("must not contain \"..\""), "{m:?}");
        assert!(server(|s| s.chroot_root = "/srv/tiffin".into()).is_empty());
        let m = server(|s| s.authorized_keys_dir = "/etc".into());
        assert!(
            m[0].starts_with(
                "server.authorized_keys_dir \"/etc\" is a directory the system shares"
            ),
            "{m:?}"
        );
    }

    #[test]
    fn the_dropin_is_a_conf_file_in_a_dot_d_directory() {
        for bad in [
            "/etc/ssh/sshd_config",
            "/etc/passwd",
            "/etc/ssh/sshd_config.d/.tiffin.conf",
            "/etc/ssh/sshd_config.d/tiffin",
            "/etc/ssh/tiffin.conf",
            "/etc/ssh/sshd_config.d/.conf",
        ] {
            let m = server(|s| s.sshd_dropin = bad.into());
            assert_eq!(m.len(), 1, "{bad}: {m:?}");
            assert!(m[0].contains("must be a file named *.conf"), "{bad}: {m:?}");
        }
        assert!(server(|s| s.sshd_dropin = "/etc/ssh/sshd.d/fleet.conf".into()).is_empty());
        let m = server(|s| s.sshd_dropin = "/var/lib/tiffin/chroots/x.d/t.conf".into());
        assert!(m[0].contains("inside the chroot root"), "{m:?}");
        let m = server(|s| s.authorized_keys_dir = "/var/lib/tiffin/chroots/keys".into());
        assert_eq!(
            m,
            [
                "server.authorized_keys_dir \"/var/lib/tiffin/chroots/keys\" is inside the chroot root \"/var/lib/tiffin/chroots\" (server.chroot_root): sshd's files must live outside every chroot (e.g. /etc/tiffin/authorized_keys)"
            ]
        );
    }

    #[test]
    fn user_prefixes() {
        for ok in ["tiffin-", "t", "fleet_a1-"] {
            assert!(server(|s| s.user_prefix = ok.into()).is_empty(), "{ok}");
        }
        for bad in [
            "", "Tiffin-", "1tiffin", "-t", "_t", "ti ffin", "ti:f", "tïffin",
        ] {
            let m = server(|s| s.user_prefix = bad.into());
            assert_eq!(m.len(), 1, "{bad:?}: {m:?}");
        }
        let m = server(|s| s.user_prefix = "a".repeat(32));
        assert!(m[0].contains("no host would fit"), "{m:?}");
    }

    #[test]
    fn sshd_extra_lines() {
        for bad in [
            "Match all",
            "match User x",
            "Include /etc/x",
            "Match=all",
            "  include x",
        ] {
            let m = server(|s| s.sshd_extra = vec![bad.into()]);
            assert_eq!(m.len(), 1, "{bad}: {m:?}");
            assert!(m[0].contains("would change which accounts"), "{bad}: {m:?}");
        }
        let m = server(|s| s.sshd_extra = vec!["A 1\nMatch all".into()]);
        assert!(
            m[0].contains("must be one non-empty sshd_config line"),
            "{m:?}"
        );
        assert!(server(|s| s.sshd_extra = vec!["ClientAliveInterval 30".into()]).is_empty());
    }

    #[test]
    fn unsafe_paths() {
        assert_eq!(unsafe_in_config(Path::new("/var/lib/tiffin/chroots")), None);
        assert_eq!(unsafe_in_config(Path::new("/var/my chroots")), Some(' '));
        assert_eq!(unsafe_in_config(Path::new("/var/100%")), Some('%'));
    }
}
