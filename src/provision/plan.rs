//! The plan: what provisioning must change, computed by inspecting the server, one typed action per change.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::layout::{ChrootPaths, SERVER_DIR_MODE, SERVER_FILE_MODE};
use crate::names::HostName;
use crate::release::Mode;

use super::ProvisionError;
use super::dropin::{self, Block, Gone, Inclusion};
use super::system::{Accounts, Kind, Meta, NOLOGIN_CANDIDATES, Password, System, User};

/// Where pruned chroots go, inside the chroot root (host names never start with a dot).
pub const PRUNED_DIR: &str = ".pruned";
pub const KEY_FILE_MODE: u32 = 0o644;
pub const PUBLIC_DIR_MODE: u32 = 0o755;
pub const REPORTS_MODE: u32 = 0o700;
/// The comment (GECOS) of every account tiffin creates.
pub const COMMENT_PREFIX: &str = "tiffin host ";

/// One host as provisioning needs it.
#[derive(Debug, Clone)]
pub struct HostTarget {
    pub host: HostName,
    pub account: String,
    /// The validated OpenSSH public key line.
    pub key: String,
}

/// What the fleet asks the server to look like.
#[derive(Debug, Clone)]
pub struct Target {
    pub hosts: Vec<HostTarget>,
    pub user_prefix: String,
    pub chroot_root: PathBuf,
    pub keys_dir: PathBuf,
    pub dropin: PathBuf,
    pub sshd_config: PathBuf,
    pub sshd_extra: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub prune: bool,
    /// Names the pruned chroots.
    pub now: SystemTime,
}

/// Owner, group and mode a path must have, by name (the group may not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub owner: String,
    pub group: String,
    pub mode: Mode,
}

impl Want {
    fn new(owner: &str, group: &str, mode: u32) -> Want {
        Want {
            owner: owner.to_owned(),
            group: group.to_owned(),
            mode: Mode::new(mode).expect("a permission mode"),
        }
    }
    fn root(mode: u32) -> Want {
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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateGroup { name } => write!(f, "create group    {name} (system group)"),
            Action::CreateAccount {
                name,
                group,
                home,
                shell,
                ..
            } => write!(
                f,
                "create account  {name} (system; group {group}; home {}; shell {}; password '*': key logins only, not locked)",
                home.display(),
                shell.display()
            ),
            Action::FixAccount { name, fixes } => {
                let parts: Vec<String> = fixes
                    .iter()
                    .map(|x| match x {
                        AccountFix::Home { from, to } => {
                            format!("home {} -> {}", from.display(), to.display())
                        }
                        AccountFix::Shell { from, to } => {
                            format!("shell {} -> {}", from.display(), to.display())
                        }
                        AccountFix::Group { from, to } => format!("group {from} -> {to}"),
                    })
                    .collect();
                write!(f, "fix account     {name}: {}", parts.join("; "))
            }
            Action::UnlockAccount { name, was, expired } => {
                let mut why = Vec::new();
                if *was != Password::NoPassword {
                    why.push(format!("it had {}", was.describe()));
                }
                if *expired {
                    why.push("it had an expiry date".to_owned());
                }
                write!(
                    f,
                    "unlock account  {name} (password '*', no expiry; {})",
                    why.join(", ")
                )
            }
            Action::CreateDir { path, want } => {
                write!(f, "create dir      {}  {want}", path.display())
            }
            Action::Repair {
                path,
                kind,
                want,
                was,
            } => {
                let what = if *kind == Kind::Dir { "dir " } else { "file" };
                write!(
                    f,
                    "repair {what}     {}  {want} (was {was})",
                    path.display()
                )
            }
            Action::RepairTree {
                path,
                group,
                wrong,
                example,
            } => write!(
                f,
                "repair tree     {}  root:{group}, dirs {}, files {} ({wrong} wrong, e.g. {example})",
                path.display(),
                Mode::new(SERVER_DIR_MODE).expect("mode"),
                Mode::new(SERVER_FILE_MODE).expect("mode"),
            ),
            Action::WriteKey {
                path,
                fingerprint,
                replaces,
                ..
            } => {
                let what = if *replaces {
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
            Action::WriteDropin {
                path,
                old,
                new,
                blocks,
            } => match old {
                None => write!(
                    f,
                    "write drop-in   {}  root:root 0644 (new: {blocks} Match block(s); checked with sshd -t first)",
                    path.display()
                ),
                Some(old) => {
                    let (added, removed) = dropin::line_changes(old, new);
                    write!(
                        f,
                        "write drop-in   {}  root:root 0644 (+{added} -{removed} lines; checked with sshd -t first)",
                        path.display()
                    )
                }
            },
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Nothing is changed while one exists.
    Blocker,
    Warning,
    Note,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Blocker => "problem",
            Level::Warning => "warning",
            Level::Note => "note",
        };
        write!(f, "{level}: {}", self.message)
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub hosts: usize,
    pub actions: Vec<Action>,
    pub findings: Vec<Finding>,
    /// Whether the main sshd_config includes the drop-in; if not, `sshd -t` checks the drop-in alone.
    pub sshd_reads_dropin: bool,
}

impl Plan {
    pub fn is_blocked(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Blocker)
    }

    /// The plan as people read it: one line per action, then the drop-in diff, then findings.
    pub fn render(&self, target: &Target) -> String {
        let mut out = format!(
            "tiffin provision: {} host(s), chroot root {}, drop-in {}\n",
            self.hosts,
            target.chroot_root.display(),
            target.dropin.display()
        );
        if self.actions.is_empty() {
            out.push_str("nothing to do: every account, directory, key and the drop-in are as they should be\n");
        }
        for a in &self.actions {
            out.push_str("  ");
            out.push_str(&a.to_string());
            out.push('\n');
        }
        for a in &self.actions {
            if let Action::WriteDropin { path, old, new, .. } = a {
                out.push_str("drop-in diff:\n");
                for line in dropin::diff(path, old.as_deref(), new).lines() {
                    out.push_str("  ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        for f in &self.findings {
            out.push_str(&f.to_string());
            out.push('\n');
        }
        out
    }
}

/// Collects actions and findings while walking the server.
struct Planner<'a> {
    sys: &'a dyn System,
    accounts: &'a Accounts,
    actions: Vec<Action>,
    findings: Vec<Finding>,
}

impl Planner<'_> {
    fn blocker(&mut self, message: String) {
        self.findings.push(Finding {
            level: Level::Blocker,
            message,
        });
    }
    fn warning(&mut self, message: String) {
        self.findings.push(Finding {
            level: Level::Warning,
            message,
        });
    }
    fn note(&mut self, message: String) {
        self.findings.push(Finding {
            level: Level::Note,
            message,
        });
    }

    fn lstat(&self, path: &Path) -> Result<Option<Meta>, ProvisionError> {
        self.sys.lstat(path).map_err(ProvisionError::inspect(path))
    }
    fn stat(&self, path: &Path) -> Result<Option<Meta>, ProvisionError> {
        self.sys.stat(path).map_err(ProvisionError::inspect(path))
    }

    fn was(&self, meta: &Meta) -> Want {
        Want {
            owner: self.accounts.user_name(meta.uid),
            group: self.accounts.group_name(meta.gid),
            mode: meta.mode,
        }
    }

    fn matches(&self, meta: &Meta, want: &Want) -> bool {
        let uid = self.accounts.users.get(&want.owner).map(|u| u.uid);
        let gid = self.accounts.groups.get(&want.group).map(|g| g.gid);
        let uid = uid.or((want.owner == "root").then_some(0));
        let gid = gid.or((want.group == "root").then_some(0));
        uid == Some(meta.uid) && gid == Some(meta.gid) && meta.mode == want.mode
    }

    /// Every ancestor of `path` must be a root-owned directory nobody else can write
    /// (sshd's rule for chroot paths and, with StrictModes, for key files); missing ones are created.
    fn ancestors(&mut self, path: &Path, why: &str) -> Result<(), ProvisionError> {
        let mut chain: Vec<&Path> = path.ancestors().skip(1).collect();
        chain.reverse();
        for dir in chain {
            match self.stat(dir)? {
                None => self.actions.push(Action::CreateDir {
                    path: dir.to_owned(),
                    want: Want::root(PUBLIC_DIR_MODE),
                }),
                Some(m) if m.kind != Kind::Dir => self.blocker(format!(
                    "{} is not a directory, but {why} {} must be under it",
                    dir.display(),
                    path.display()
                )),
                Some(m) if !m.root_owned_not_writable() => {
                    let was = self.was(&m);
                    self.blocker(format!(
                        "{} is {was}: sshd refuses {why} {} under a directory that is not root-owned or is writable by group or others (\"bad ownership or modes\"); fix it with `chown root {0} && chmod go-w {0}`, or choose another path in fleet.toml",
                        dir.display(),
                        path.display()
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// A path tiffin manages: created, or repaired when owner, group or mode differ.
    fn managed(
        &mut self,
        path: &Path,
        kind: Kind,
        want: Want,
        follow: bool,
    ) -> Result<bool, ProvisionError> {
        let meta = if follow {
            self.stat(path)?
        } else {
            self.lstat(path)?
        };
        match meta {
            None if kind == Kind::Dir => {
                self.actions.push(Action::CreateDir {
                    path: path.to_owned(),
                    want,
                });
                Ok(false)
            }
            None => Ok(false),
            Some(m) if m.kind != kind => {
                let expected = if kind == Kind::Dir {
                    "a directory"
                } else {
                    "a regular file"
                };
                self.blocker(format!(
                    "{} is not {expected} (it is {}); move it away, tiffin will not replace it",
                    path.display(),
                    m.kind.describe()
                ));
                Ok(false)
            }
            Some(m) => {
                if !self.matches(&m, &want) {
                    let was = self.was(&m);
                    self.actions.push(Action::Repair {
                        path: path.to_owned(),
                        kind,
                        want,
                        was,
                    });
                }
                Ok(true)
            }
        }
    }

    /// Counts entries of a release tree whose owner, group or mode is not root:group 0750/0640.
    fn tree_wrong(
        &self,
        path: &Path,
        group: &str,
        wrong: &mut usize,
        example: &mut Option<Want>,
    ) -> Result<(), ProvisionError> {
        let Some(meta) = self.lstat(path)? else {
            return Ok(());
        };
        let mode = match meta.kind {
            Kind::Dir => SERVER_DIR_MODE,
            Kind::File => SERVER_FILE_MODE,
            Kind::Symlink | Kind::Other => return Ok(()),
        };
        if !self.matches(&meta, &Want::new("root", group, mode)) {
            *wrong += 1;
            example.get_or_insert_with(|| self.was(&meta));
        }
        if meta.kind == Kind::Dir {
            for name in self.sys.list(path).map_err(ProvisionError::inspect(path))? {
                self.tree_wrong(&path.join(name), group, wrong, example)?;
            }
        }
        Ok(())
    }
}

fn is_nologin(shell: &Path) -> bool {
    matches!(
        shell.file_name().and_then(|n| n.to_str()),
        Some("nologin" | "false")
    )
}

pub fn key_line(key: &str) -> String {
    format!("restrict {}\n", key.trim())
}

fn fingerprint(key: &str) -> String {
    match ssh_key::PublicKey::from_openssh(key.trim()) {
        Ok(k) => format!(
            "{} {}",
            k.algorithm(),
            k.fingerprint(ssh_key::HashAlg::Sha256)
        ),
        Err(_) => "an unreadable key".to_owned(),
    }
}

/// `20261124T224416Z`: sortable and free of characters that need quoting.
pub fn stamp(t: SystemTime) -> String {
    crate::settings::format_time(t).replace(['-', ':'], "")
}

/// Computes the plan: inspects accounts, directories, keys and the drop-in, and lists every change.
pub fn plan(target: &Target, sys: &dyn System, opts: &PlanOptions) -> Result<Plan, ProvisionError> {
    let accounts = Accounts::load(sys).map_err(ProvisionError::inspect(Path::new("/etc")))?;
    let mut p = Planner {
        sys,
        accounts: &accounts,
        actions: Vec::new(),
        findings: Vec::new(),
    };

    let nologin = NOLOGIN_CANDIDATES
        .iter()
        .map(Path::new)
        .find(|c| matches!(sys.stat(c), Ok(Some(m)) if m.kind == Kind::File));
    let shell = match nologin {
        Some(s) => s.to_owned(),
        None => {
            p.blocker(format!(
                "no nologin shell found (looked for {}): install it (util-linux or shadow provide it)",
                NOLOGIN_CANDIDATES.join(", ")
            ));
            PathBuf::from(NOLOGIN_CANDIDATES[0])
        }
    };
    if accounts.shadow.is_none() {
        p.note(
            "cannot read /etc/shadow (not root): whether accounts are locked is not checked".into(),
        );
    }

    // Accounts first: the directories below are owned by them.
    for h in &target.hosts {
        let chroot = target.chroot_root.join(h.host.as_str());
        let group = h.account.clone();
        if !accounts.groups.contains_key(&group) {
            p.actions.push(Action::CreateGroup {
                name: group.clone(),
            });
        }
        match accounts.users.get(&h.account) {
            None => p.actions.push(Action::CreateAccount {
                name: h.account.clone(),
                host: h.host.clone(),
                group: group.clone(),
                home: chroot.clone(),
                shell: shell.clone(),
            }),
            Some(u) if u.uid == 0 => p.blocker(format!(
                "account {} has uid 0: tiffin will not serve a host through a root account; remove or renumber it",
                u.name
            )),
            // Only an account tiffin created (its comment) or that already points at the chroot
            // is adopted; taking over, say, `daemon` for a host named so would be a disaster.
            Some(u) if u.home != chroot && u.comment != format!("{COMMENT_PREFIX}{}", h.host) => {
                p.blocker(format!(
                    "account {} exists and is not tiffin's (home {}, comment {:?}): tiffin will not take it over; rename the host or change server.user_prefix, or, if it is meant for host {}, make its home {} (`usermod --home {} {0}`)",
                    u.name,
                    u.home.display(),
                    u.comment,
                    h.host,
                    chroot.display(),
                    chroot.display()
                ))
            }
            Some(u) => {
                let fixes = account_fixes(u, &chroot, &shell, &group, &accounts);
                if !fixes.is_empty() {
                    p.actions.push(Action::FixAccount {
                        name: u.name.clone(),
                        fixes,
                    });
                }
                if let Some(shadow) = &accounts.shadow {
                    let (was, expired) = match shadow.get(&u.name) {
                        Some(s) => (s.password, s.expires.is_some()),
                        None => (Password::Locked, false),
                    };
                    if was != Password::NoPassword || expired {
                        p.actions.push(Action::UnlockAccount {
                            name: u.name.clone(),
                            was,
                            expired,
                        });
                    }
                }
            }
        }
        if let Some(g) = accounts.groups.get(&group) {
            let mut others: BTreeSet<&str> = g
                .members
                .iter()
                .map(String::as_str)
                .filter(|m| *m != h.account)
                .collect();
            others.extend(
                accounts
                    .users
                    .values()
                    .filter(|u| u.gid == g.gid && u.name != h.account)
                    .map(|u| u.name.as_str()),
            );
            if !others.is_empty() {
                let list: Vec<&str> = others.into_iter().collect();
                p.warning(format!(
                    "group {group} also has {}: they can read every file of host {} (secrets included); remove them (`gpasswd -d USER {group}`)",
                    list.join(", "),
                    h.host
                ));
            }
        }
    }

    // The chroot tree of DESIGN.md's "Server layout".
    p.ancestors(&target.chroot_root, "chroot")?;
    p.managed(
        &target.chroot_root,
        Kind::Dir,
        Want::root(PUBLIC_DIR_MODE),
        true,
    )?;
    for h in &target.hosts {
        let group = h.account.as_str();
        let paths = ChrootPaths::new(&target.chroot_root, &h.host);
        p.managed(
            &paths.root,
            Kind::Dir,
            Want::new("root", group, SERVER_DIR_MODE),
            false,
        )?;
        let releases = paths.releases();
        let releases_exist = p.managed(
            &releases,
            Kind::Dir,
            Want::new("root", group, SERVER_DIR_MODE),
            false,
        )?;
        p.managed(
            &paths.reports(),
            Kind::Dir,
            Want::new(&h.account, group, REPORTS_MODE),
            false,
        )?;
        p.managed(
            &paths.current(),
            Kind::File,
            Want::new("root", group, SERVER_FILE_MODE),
            false,
        )?;
        if releases_exist {
            for name in sys
                .list(&releases)
                .map_err(ProvisionError::inspect(&releases))?
            {
                let tree = releases.join(&name);
                let (mut wrong, mut example) = (0, None);
                p.tree_wrong(&tree, group, &mut wrong, &mut example)?;
                if let Some(example) = example {
                    p.actions.push(Action::RepairTree {
                        path: tree,
                        group: group.to_owned(),
                        wrong,
                        example,
                    });
                }
            }
        }
    }

    // Keys: outside every chroot, root-owned, read by sshd as root before it chroots.
    if target.keys_dir.starts_with(&target.chroot_root) {
        p.blocker(format!(
            "server.authorized_keys_dir {} is inside the chroot root {}: keys must live outside every chroot (e.g. /etc/tiffin/authorized_keys)",
            target.keys_dir.display(),
            target.chroot_root.display()
        ));
    }
    p.ancestors(&target.keys_dir, "the authorized keys directory")?;
    p.managed(
        &target.keys_dir,
        Kind::Dir,
        Want::root(PUBLIC_DIR_MODE),
        true,
    )?;
    for h in &target.hosts {
        let path = target.keys_dir.join(&h.account);
        let content = key_line(&h.key);
        let current = match sys.read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ProvisionError::inspect(&path)(e)),
        };
        match current {
            Some(bytes) if bytes == content.as_bytes() => {
                p.managed(&path, Kind::File, Want::root(KEY_FILE_MODE), false)?;
            }
            other => p.actions.push(Action::WriteKey {
                path,
                fingerprint: fingerprint(&h.key),
                content,
                replaces: other.is_some(),
            }),
        }
    }

    // Accounts of hosts gone from the fleet.
    let fleet_accounts: BTreeSet<&str> = target.hosts.iter().map(|h| h.account.as_str()).collect();
    let mut blocks: Vec<Block> = target
        .hosts
        .iter()
        .map(|h| Block {
            account: h.account.clone(),
            chroot: target.chroot_root.join(h.host.as_str()),
            keys_file: target.keys_dir.join(&h.account),
            gone: None,
        })
        .collect();
    let mut pruned_dir_planned = false;
    for u in accounts.users.values() {
        let Some(rest) = u.name.strip_prefix(&target.user_prefix) else {
            continue;
        };
        if fleet_accounts.contains(u.name.as_str()) {
            continue;
        }
        let Ok(host) = rest.parse::<HostName>() else {
            continue;
        };
        let chroot = target.chroot_root.join(host.as_str());
        if u.home != chroot || !is_nologin(&u.shell) || u.uid == 0 {
            p.note(format!(
                "account {} has the prefix {:?} but is not one of tiffin's (home {}, shell {}): left alone",
                u.name,
                target.user_prefix,
                u.home.display(),
                u.shell.display()
            ));
            continue;
        }
        let locked = accounts
            .shadow
            .as_ref()
            .and_then(|s| s.get(&u.name))
            .is_some_and(|s| s.password == Password::Locked && s.expires.is_some());
        let keys_file = target.keys_dir.join(&u.name);
        let gone = if opts.prune || locked {
            Gone::Pruned
        } else {
            Gone::Kept
        };
        blocks.push(Block {
            account: u.name.clone(),
            chroot: chroot.clone(),
            keys_file: keys_file.clone(),
            gone: Some(gone),
        });
        if !opts.prune {
            if !locked {
                p.note(format!(
                    "host {host} is gone from the fleet: account {} is kept and still served; `tiffin provision --prune` locks it, removes its key and moves its chroot to {}/",
                    u.name,
                    target.chroot_root.join(PRUNED_DIR).display()
                ));
            }
            continue;
        }
        if !locked {
            p.actions.push(Action::LockAccount {
                name: u.name.clone(),
                host: host.clone(),
            });
        }
        if p.lstat(&keys_file)?.is_some() {
            p.actions.push(Action::RemoveKey { path: keys_file });
        }
        if p.lstat(&chroot)?.is_some() {
            let pruned = target.chroot_root.join(PRUNED_DIR);
            if !pruned_dir_planned {
                p.managed(&pruned, Kind::Dir, Want::root(0o700), false)?;
                pruned_dir_planned = true;
            }
            p.actions.push(Action::MoveChroot {
                from: chroot,
                to: pruned.join(format!("{host}-{}", stamp(opts.now))),
            });
        }
    }
    blocks.sort_by(|a, b| a.account.cmp(&b.account));

    // The drop-in, last: sshd is reloaded only once everything it points to exists.
    let new = dropin::render(&blocks, &target.sshd_extra);
    if let Some(dir) = target.dropin.parent() {
        let mut chain: Vec<&Path> = dir.ancestors().collect();
        chain.reverse();
        for d in chain {
            if p.stat(d)?.is_none() {
                p.actions.push(Action::CreateDir {
                    path: d.to_owned(),
                    want: Want::root(PUBLIC_DIR_MODE),
                });
            }
        }
    }
    let old = match sys.read(&target.dropin) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(ProvisionError::inspect(&target.dropin)(e)),
    };
    if old.as_deref() == Some(new.as_str()) {
        p.managed(&target.dropin, Kind::File, Want::root(KEY_FILE_MODE), false)?;
    } else {
        p.actions.push(Action::WriteDropin {
            path: target.dropin.clone(),
            old,
            new,
            blocks: blocks.len(),
        });
        p.actions.push(Action::Reload);
    }
    let sshd_reads_dropin = check_inclusion(&mut p, target)?;

    let Planner {
        actions, findings, ..
    } = p;
    // Ancestors shared by the chroot root, the keys directory and the drop-in are created once.
    let mut created = BTreeSet::new();
    let actions = actions
        .into_iter()
        .filter(|a| match a {
            Action::CreateDir { path, .. } => created.insert(path.clone()),
            _ => true,
        })
        .collect();
    let mut findings = findings;
    findings.sort_by_key(|f| f.level);
    Ok(Plan {
        hosts: target.hosts.len(),
        actions,
        findings,
        sshd_reads_dropin,
    })
}

fn account_fixes(
    u: &User,
    chroot: &Path,
    shell: &Path,
    group: &str,
    accounts: &Accounts,
) -> Vec<AccountFix> {
    let mut fixes = Vec::new();
    if u.home != chroot {
        fixes.push(AccountFix::Home {
            from: u.home.clone(),
            to: chroot.to_owned(),
        });
    }
    if !is_nologin(&u.shell) {
        fixes.push(AccountFix::Shell {
            from: u.shell.clone(),
            to: shell.to_owned(),
        });
    }
    if accounts.groups.get(group).map(|g| g.gid) != Some(u.gid) {
        fixes.push(AccountFix::Group {
            from: accounts.group_name(u.gid),
            to: group.to_owned(),
        });
    }
    fixes
}

/// Warns unless sshd_config includes the drop-in (outside any Match block); true when it does.
fn check_inclusion(p: &mut Planner<'_>, target: &Target) -> Result<bool, ProvisionError> {
    let main = match p.sys.read(&target.sshd_config) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            p.warning(format!(
                "{} does not exist: is openssh-server installed? sshd must include {} (`{}`)",
                target.sshd_config.display(),
                target.dropin.display(),
                dropin::include_line(&target.dropin)
            ));
            return Ok(false);
        }
        Err(e) => return Err(ProvisionError::inspect(&target.sshd_config)(e)),
    };
    let config_dir = target.sshd_config.parent().unwrap_or(Path::new("/"));
    let inclusion = dropin::inclusion(&main, config_dir, &target.dropin);
    match inclusion {
        Inclusion::Included => {}
        Inclusion::NotIncluded => p.warning(format!(
            "{} does not include {}, so sshd ignores it and no host can log in: add this line near the top of {0}, before any Match block (tiffin never edits it):\n    {}",
            target.sshd_config.display(),
            target.dropin.display(),
            dropin::include_line(&target.dropin)
        )),
        Inclusion::InsideMatch { line } => p.warning(format!(
            "{}:{line} includes {} inside a Match block, so its blocks apply only where that Match does: move the Include above the first Match line",
            target.sshd_config.display(),
            target.dropin.display()
        )),
    }
    Ok(inclusion != Inclusion::NotIncluded)
}

#[cfg(test)]
mod tests;
