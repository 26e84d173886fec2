//! The actions of a plan: one typed change to the server each, and the line the plan prints for it.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::layout::{SERVER_DIR_MODE, SERVER_FILE_MODE};
use crate::names::HostName;
use crate::release::Mode;

use super::dropin;
use super::system::{Kind, Password};

/// Owner, group and mode a path must have, by name (the group may not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub owner: String,
    pub group: String,
    pub mode: Mode,
}

impl Want {
    pub(super) fn new(owner: &str, group: &str, mode: u32) -> Want {
        Want {
            owner: owner.to_owned(),
            group: group.to_owned(),
            mode: Mode::new(mode).expect("a permission mode"),
        }
    }
    pub(super) fn root(mode: u32) -> Want {
        Want::new("root", "root", mode)
    }
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} {}", self.owner, self.group, self.mode)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountFix {
    Home { from: PathBuf, to: PathBuf },
    Shell { from: PathBuf, to: PathBuf },
    Group { from: String, to: String },
}

/// One change to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CreateGroup {
        name: String,
    },
    CreateAccount {
        name: String,
        host: HostName,
        group: String,
        home: PathBuf,
        shell: PathBuf,
    },
    FixAccount {
        name: String,
        fixes: Vec<AccountFix>,
    },
    /// Password `*` (no password, not locked: sshd refuses key logins to locked accounts) and no expiry.
    UnlockAccount {
        name: String,
        was: Password,
        expired: bool,
    },
    CreateDir {
        path: PathBuf,
        want: Want,
    },
    Repair {
        path: PathBuf,
        kind: Kind,
        want: Want,
        was: Want,
    },
    /// A release tree left root:root by a publish that ran before provisioning.
    RepairTree {
        path: PathBuf,
        group: String,
        wrong: usize,
        example: Want,
    },
    WriteKey {
        path: PathBuf,
        content: String,
        fingerprint: String,
        replaces: bool,
    },
    WriteDropin {
        path: PathBuf,
        old: Option<String>,
        new: String,
        blocks: usize,
    },
    Reload,
    LockAccount {
        name: String,
        host: HostName,
    },
    RemoveKey {
        path: PathBuf,
    },
    MoveChroot {
        from: PathBuf,
        to: PathBuf,
    },
}

impl fmt::Display for Action {
    /// One plan line: the kind of change padded to 16 columns, then what it changes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateGroup { name } => write!(f, "create group    {name} (system group)"),
            Action::CreateAccount {
                name,
                group,
                home,
                shell,
                ..
            } => fmt_create_account(f, name, group, home, shell),
            Action::FixAccount { name, fixes } => {
                write!(f, "fix account     {name}: {}", fix_list(fixes))
            }
            Action::UnlockAccount { name, was, expired } => write!(
                f,
                "unlock account  {name} (password '*', no expiry; {})",
                unlock_reasons(*was, *expired)
            ),
            Action::CreateDir { path, want } => {
                write!(f, "create dir      {}  {want}", path.display())
            }
            Action::Repair {
                path,
                kind,
                want,
                was,
            } => fmt_repair(f, path, *kind, want, was),
            Action::RepairTree {
                path,
                group,
                wrong,
                example,
            } => fmt_repair_tree(f, path, group, *wrong, example),
            Action::WriteKey {
                path,
                fingerprint,
                replaces,
                ..
            } => fmt_write_key(f, path, fingerprint, *replaces),
            Action::WriteDropin {
                path,
                old,
                new,
                blocks,
            } => fmt_write_dropin(f, path, old.as_deref(), new, *blocks),
            Action::Reload => write!(f, "reload sshd"),
            Action::LockAccount { name, host } => write!(
                f,
                "lock account    {name} (host {host} is gone from the fleet: usermod --lock --expiredate 1)"
            ),
            Action::RemoveKey { path } => write!(f, "remove key      {}", path.display()),
            Action::MoveChroot { from, to } => {
                write!(f, "move chroot     {} -> {}", from.display(), to.display())
            }
        }
    }
}

fn fmt_create_account(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    group: &str,
    home: &Path,
    shell: &Path,
) -> fmt::Result {
    write!(
        f,
        "create account  {name} (system; group {group}; home {}; shell {}; password '*': key logins only, not locked)",
        home.display(),
        shell.display()
    )
}

fn fmt_repair(
    f: &mut fmt::Formatter<'_>,
    path: &Path,
    kind: Kind,
    want: &Want,
    was: &Want,
) -> fmt::Result {
    // Padded alike so both keep the plan's column.
    let what = if kind == Kind::Dir { "dir " } else { "file" };
    write!(
        f,
        "repair {what}     {}  {want} (was {was})",
        path.display()
    )
}

/// A release tree is repaired to the modes publish writes (`layout`'s).
fn fmt_repair_tree(
    f: &mut fmt::Formatter<'_>,
    path: &Path,
    group: &str,
    wrong: usize,
    example: &Want,
) -> fmt::Result {
    write!(
        f,
        "repair tree     {}  root:{group}, dirs {}, files {} ({wrong} wrong, e.g. {example})",
        path.display(),
        Mode::new(SERVER_DIR_MODE).expect("mode"),
        Mode::new(SERVER_FILE_MODE).expect("mode"),
    )
}

fn fmt_write_key(
    f: &mut fmt::Formatter<'_>,
    path: &Path,
    fingerprint: &str,
    replaces: bool,
) -> fmt::Result {
    let what = if replaces {
        "replaces another key"
    } else {
        "new"
    };
    write!(
        f,
        "write key       {}  root:root 0644 ({what}: restrict {fingerprint})",
        path.display()
    )
}

/// A new drop-in counts its blocks; a rewritten one counts the lines its diff shows.
fn fmt_write_dropin(
    f: &mut fmt::Formatter<'_>,
    path: &Path,
    old: Option<&str>,
    new: &str,
    blocks: usize,
) -> fmt::Result {
    let change = match old {
        None => format!("new: {blocks} Match block(s)"),
        Some(old) => {
            let (added, removed) = dropin::line_changes(old, new);
            format!("+{added} -{removed} lines")
        }
    };
    write!(
        f,
        "write drop-in   {}  root:root 0644 ({change}; checked with sshd -t first)",
        path.display()
    )
}

/// `home A -> B; shell C -> D`: what a fix-account line changes.
fn fix_list(fixes: &[AccountFix]) -> String {
    let parts: Vec<String> = fixes
        .iter()
        .map(|x| match x {
            AccountFix::Home { from, to } => format!("home {} -> {}", from.display(), to.display()),
            AccountFix::Shell { from, to } => {
                format!("shell {} -> {}", from.display(), to.display())
            }
            AccountFix::Group { from, to } => format!("group {from} -> {to}"),
        })
        .collect();
    parts.join("; ")
}

/// Why an account gets unlocked: its password state, its expiry, or both.
fn unlock_reasons(was: Password, expired: bool) -> String {
    let mut why = Vec::new();
    if was != Password::NoPassword {
        why.push(format!("it had {}", was.describe()));
    }
    if expired {
        why.push("it had an expiry date".to_owned());
    }
    why.join(", ")
}
