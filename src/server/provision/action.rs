//! The actions of a plan: one typed change to the server each, and the line the plan prints for it.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::core::layout::{SERVER_DIR_MODE, SERVER_FILE_MODE};
use crate::core::names::HostName;
use crate::core::release::Mode;

use super::dropin;
use super::ownership::Adoption;
use super::reports::{REPORTS_BYTES, REPORTS_INODES};
use super::system::{Kind, Mounted, Password};

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

/// Whether reports/ gets its tmpfs or has one whose bound must change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountHow {
    New,
    Remount { was: Mounted },
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
    /// The marker that makes the chroot root tiffin's (`ownership`).
    MarkChrootRoot {
        path: PathBuf,
        why: Adoption,
    },
    /// A bounded tmpfs on a host's reports/, owned by its account.
    MountReports {
        path: PathBuf,
        account: String,
        how: MountHow,
    },
    /// The systemd unit that mounts it at boot, written, then enabled.
    WriteMountUnit {
        path: PathBuf,
        reports: PathBuf,
        host: HostName,
        account: String,
    },
    /// A pruned host's reports/ tmpfs goes (with its unit), before its chroot is moved aside.
    UnmountReports {
        path: PathBuf,
        unit: Option<PathBuf>,
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
            Action::MarkChrootRoot { path, why } => fmt_mark(f, path, *why),
            Action::MountReports { path, account, how } => fmt_mount(f, path, account, *how),
            Action::WriteMountUnit { path, .. } => write!(
                f,
                "write unit      {}  root:root 0644 (mounts the tmpfs again at boot; systemctl enable)",
                path.display()
            ),
            Action::UnmountReports { path, unit } => fmt_unmount(f, path, unit.as_deref()),
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

fn fmt_mark(f: &mut fmt::Formatter<'_>, path: &Path, why: Adoption) -> fmt::Result {
    let why = match why {
        Adoption::Created => "created by this run",
        Adoption::Empty => "it is empty",
        Adoption::Published => "it holds only what tiffin publish wrote",
    };
    write!(
        f,
        "mark chroot     {}  root:root 0644 (tiffin's from now on: {why})",
        path.display()
    )
}

/// The bound as a plan shows it: `size 1024k, 64 inodes`.
fn bound(bytes: u64, inodes: u64) -> String {
    format!("size {}k, {inodes} inodes", bytes / 1024)
}

fn fmt_mount(f: &mut fmt::Formatter<'_>, path: &Path, account: &str, how: MountHow) -> fmt::Result {
    let ours = bound(REPORTS_BYTES, REPORTS_INODES);
    match how {
        MountHow::New => write!(
            f,
            "mount tmpfs     {}  {account}:{account} 0700 ({ours}, nosuid,nodev,noexec: all the host can store on the server)",
            path.display()
        ),
        MountHow::Remount { was } => write!(
            f,
            "remount tmpfs   {}  ({ours}, nosuid,nodev,noexec; was {})",
            path.display(),
            bound(was.bytes, was.inodes)
        ),
    }
}

fn fmt_unmount(f: &mut fmt::Formatter<'_>, path: &Path, unit: Option<&Path>) -> fmt::Result {
    write!(f, "unmount tmpfs   {}", path.display())?;
    match unit {
        Some(unit) => write!(
            f,
            " (its host is pruned; the unit {} is disabled and removed)",
            unit.display()
        ),
        None => f.write_str(" (its host is pruned)"),
    }
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
