//! The sshd drop-in: one `Match User` block per host account, the check that sshd_config includes it, and its diff.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One account's block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub account: String,
    pub chroot: PathBuf,
    pub keys_file: PathBuf,
    /// Set for accounts of hosts gone from the fleet: the block stays, so the
    /// account is still confined should anyone ever unlock it.
    pub gone: Option<Gone>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Still served as before until `--prune`.
    Kept,
    /// Locked, key removed, chroot moved aside.
    Pruned,
}

/// Settings every block carries: SFTP only, in the chroot, keys only, nothing forwarded.
/// `internal-sftp -d /` starts the session at the chroot's root, whatever the home directory;
/// `-P setstat,fsetstat,lsetstat` refuses the requests that set a file's times or mode, which
/// tiffin's client never sends: a client cannot date its report (`put -p`) to look fresh.
pub const FIXED_LINES: &[&str] = &[
    "ForceCommand internal-sftp -d / -P setstat,fsetstat,lsetstat",
    "AuthenticationMethods publickey",
    "PubkeyAuthentication yes",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "DisableForwarding yes",
    "AllowTcpForwarding no",
    "AllowAgentForwarding no",
    "AllowStreamLocalForwarding no",
    "X11Forwarding no",
    "PermitTunnel no",
    "PermitTTY no",
    "PermitUserRC no",
];

/// sshd's keepalive for every host session, unless `sshd_extra` sets the same keyword (sshd takes
/// the first value it reads, so the default is left out rather than listed twice). After 15 s
/// without a byte from the client, sshd asks through the encrypted channel; the ask after 4
/// unanswered ones ends the session: about 75 s (150 s before OpenSSH 9.5, which asks only
/// every other interval), so a watcher whose host vanished (power cut, link down, no TCP reset)
/// frees its sshd processes within minutes, not after the kernel's 2 h keepalive. A live
/// watcher checks every few seconds, so sshd never needs to ask it; a timer poll lasts under a
/// second.
pub const CLIENT_ALIVE: &[(&str, &str)] =
    &[("ClientAliveInterval", "15"), ("ClientAliveCountMax", "4")];

/// The keyword of an sshd_config line, lowercased (sshd's keywords are case-insensitive and may
/// be followed by `=`).
pub fn keyword(line: &str) -> String {
    line.trim()
        .split(|c: char| c.is_whitespace() || c == '=')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// How tiffin recognises a drop-in it wrote: the start of [`HEADER`]'s first line. It replaces
/// no other file (`ownership`), so a wrong `sshd_dropin` can never overwrite a system file.
pub const MARKER: &str = "# Written by `tiffin provision`";

pub const HEADER: &str = "\
# Written by `tiffin provision` from the fleet repository: do not edit, every run rewrites it.
# One Match block per host account: SFTP only (internal-sftp), chrooted to the host's
# directory, key from a root-owned file outside the chroot, no forwarding, no TTY.
# Explicit per-account blocks (not `Match User <prefix>*`) so that no other account that
# happens to share the prefix is matched, and each chroot path is written out literally.
";

pub fn render(blocks: &[Block], extra: &[String]) -> String {
    let mut out = String::from(HEADER);
    for b in blocks {
        out.push('\n');
        match b.gone {
            None => {}
            Some(Gone::Kept) => {
                let _ = writeln!(
                    out,
                    "# {}: its host is gone from the fleet; kept until `tiffin provision --prune`.",
                    b.account
                );
            }
            Some(Gone::Pruned) => {
                let _ = writeln!(
                    out,
                    "# {}: pruned (locked, no key, chroot moved aside); still confined if ever unlocked.",
                    b.account
                );
            }
        }
        let _ = writeln!(out, "Match User {}", b.account);
        let _ = writeln!(out, "    ChrootDirectory {}", b.chroot.display());
        let _ = writeln!(out, "    AuthorizedKeysFile {}", b.keys_file.display());
        for line in FIXED_LINES {
            let _ = writeln!(out, "    {line}");
        }
        for (key, value) in CLIENT_ALIVE {
            let overridden = extra.iter().any(|l| keyword(l) == key.to_ascii_lowercase());
            if !overridden {
                let _ = writeln!(out, "    {key} {value}");
            }
        }
        for line in extra {
            let _ = writeln!(out, "    {}", line.trim());
        }
    }
    out
}

/// What the main sshd_config says about our drop-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inclusion {
    /// An `Include` outside any `Match` block names the drop-in.
    Included,
    /// An `Include` names it, but after a `Match` line, so it is only read inside that block.
    InsideMatch {
        line: usize,
    },
    NotIncluded,
}

pub fn inclusion(main_config: &str, config_dir: &Path, dropin: &Path) -> Inclusion {
    let mut in_match = None;
    let mut found_in_match = None;
    for (i, raw) in main_config.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let keyword = words.next().unwrap_or_default().to_ascii_lowercase();
        let keyword = keyword.trim_end_matches('=');
        if keyword == "match" {
            in_match = Some(i + 1);
        } else if keyword == "include" {
            for pattern in words {
                let pattern = pattern.trim_matches('"');
                let full = if pattern.starts_with('/') {
                    PathBuf::from(pattern)
                } else {
                    config_dir.join(pattern)
                };
                if glob_match(&full.to_string_lossy(), &dropin.to_string_lossy()) {
                    match in_match {
                        None => return Inclusion::Included,
                        Some(_) => found_in_match = found_in_match.or(Some(i + 1)),
                    }
                }
            }
        }
    }
    match found_in_match {
        Some(line) => Inclusion::InsideMatch { line },
        None => Inclusion::NotIncluded,
    }
}

/// The `Include` line to add so sshd reads `dropin`.
pub fn include_line(dropin: &Path) -> String {
    let dir = dropin.parent().unwrap_or(Path::new("/"));
    let glob = match dropin.extension() {
        Some(ext) => format!("*.{}", ext.to_string_lossy()),
        None => dropin
            .file_name()
            .map_or_else(|| "*".to_owned(), |n| n.to_string_lossy().into_owned()),
    };
    format!("Include {}", dir.join(glob).display())
}

/// glob(3) as sshd uses it for `Include`: `*` and `?` never match `/`; `[...]` classes.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len())
                .take_while(|&i| i == 0 || t[i - 1] != '/')
                .any(|i| go(&p[1..], &t[i..])),
            Some('?') => t.first().is_some_and(|&c| c != '/') && go(&p[1..], &t[1..]),
            Some('[') => {
                let Some(end) = p.iter().skip(1).position(|&c| c == ']').map(|e| e + 1) else {
                    return t.first() == Some(&'[') && go(&p[1..], &t[1..]);
                };
                let Some(&c) = t.first() else { return false };
                let class = &p[1..end];
                let (negate, class) = match class.first() {
                    Some('!') | Some('^') => (true, &class[1..]),
                    _ => (false, class),
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        hit |= class[i] <= c && c <= class[i + 2];
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit != negate && c != '/' && go(&p[end + 1..], &t[1..])
            }
            Some(&pc) => t.first() == Some(&pc) && go(&p[1..], &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

/// A unified diff of the drop-in, for the plan.
pub fn diff(path: &Path, old: Option<&str>, new: &str) -> String {
    let old_text = old.unwrap_or("");
    let name = path.display().to_string();
    let old_name = if old.is_some() {
        name.clone()
    } else {
        "/dev/null".to_owned()
    };
    similar::TextDiff::from_lines(old_text, new)
        .unified_diff()
        .context_radius(2)
        .header(&old_name, &name)
        .to_string()
}

/// Counts of added and removed lines.
pub fn line_changes(old: &str, new: &str) -> (usize, usize) {
    let d = similar::TextDiff::from_lines(old, new);
    let mut added = 0;
    let mut removed = 0;
    for change in d.iter_all_changes() {
        match change.tag() {
            similar::ChangeTag::Insert => added += 1,
            similar::ChangeTag::Delete => removed += 1,
            similar::ChangeTag::Equal => {}
        }
    }
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(
            "/etc/ssh/sshd_config.d/*.conf",
            "/etc/ssh/sshd_config.d/tiffin.conf"
        ));
        assert!(!glob_match(
            "/etc/ssh/sshd_config.d/*.conf",
            "/etc/ssh/sshd_config.d/x/tiffin.conf"
        ));
        assert!(!glob_match(
            "/etc/ssh/sshd_config.d/*.conf",
            "/etc/ssh/sshd_config.d/tiffin.cfg"
        ));
        assert!(glob_match(
            "/etc/ssh/sshd_config.d/*",
            "/etc/ssh/sshd_config.d/tiffin.conf"
        ));
        assert!(glob_match(
            "/etc/ssh/*/tiffin.conf",
            "/etc/ssh/sshd_config.d/tiffin.conf"
        ));
        assert!(glob_match(
            "/etc/ssh/sshd_config.d/t?ffin.[a-c]onf",
            "/etc/ssh/sshd_config.d/tiffin.conf"
        ));
        assert!(!glob_match(
            "/etc/ssh/sshd_config.d/[!t]*",
            "/etc/ssh/sshd_config.d/tiffin.conf"
        ));
    }

    #[test]
    fn inclusion_rules() {
        let dropin = Path::new("/etc/ssh/sshd_config.d/tiffin.conf");
        let dir = Path::new("/etc/ssh");
        assert_eq!(
            inclusion(
                "# Include /x\nInclude /etc/ssh/sshd_config.d/*.conf\n",
                dir,
                dropin
            ),
            Inclusion::Included
        );
        assert_eq!(
            inclusion("include sshd_config.d/*.conf\n", dir, dropin),
            Inclusion::Included
        );
        assert_eq!(inclusion("Port 22\n", dir, dropin), Inclusion::NotIncluded);
        assert_eq!(
            inclusion(
                "Match User x\n  Include /etc/ssh/sshd_config.d/*.conf\n",
                dir,
                dropin
            ),
            Inclusion::InsideMatch { line: 2 }
        );
        assert_eq!(
            include_line(dropin),
            "Include /etc/ssh/sshd_config.d/*.conf"
        );
    }

    #[test]
    fn client_alive_defaults_yield_to_sshd_extra() {
        let block = Block {
            account: "tiffin-web-1".into(),
            chroot: "/c/web-1".into(),
            keys_file: "/k/tiffin-web-1".into(),
            gone: None,
        };
        let plain = render(std::slice::from_ref(&block), &[]);
        assert!(plain.contains("\n    ClientAliveInterval 15\n    ClientAliveCountMax 4\n"));
        for own in [
            "ClientAliveInterval 60",
            "clientaliveinterval=60",
            "  CLIENTALIVEINTERVAL\t60",
        ] {
            let text = render(std::slice::from_ref(&block), &[own.into()]);
            assert_eq!(
                text.to_ascii_lowercase()
                    .matches("clientaliveinterval")
                    .count(),
                1,
                "{text}"
            );
            assert!(text.contains("    ClientAliveCountMax 4\n"), "{text}");
        }
        let text = render(&[block], &["ClientAliveCountMax 0".into()]);
        assert!(text.contains("    ClientAliveInterval 15\n"), "{text}");
        assert!(!text.contains("ClientAliveCountMax 4"), "{text}");
        assert_eq!(keyword("ClientAliveIntervalX 1"), "clientaliveintervalx");
    }

    #[test]
    fn the_header_carries_the_marker() {
        assert!(HEADER.starts_with(MARKER));
        assert!(render(&[], &[]).lines().next().unwrap().starts_with(MARKER));
    }
}
