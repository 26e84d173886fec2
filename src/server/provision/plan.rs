//! The plan: what provisioning must change, computed by inspecting the server, one typed action per change.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::admin::fleet::rules::{
    CHROOT_ROOT_FLAG, CHROOT_ROOT_KEY, Origin, SSHD_DROPIN_KEY, Setting,
};
use crate::core::layout::{ChrootPaths, REPORTS_DIR, SERVER_DIR_MODE, SERVER_FILE_MODE};
use crate::core::names::HostName;

use super::ProvisionError;
use super::action::{AccountFix, Action, MountHow, Want};
use super::dropin::{self, Block, Gone, Inclusion};
use super::ownership::{self, Adoption, CHROOT_ROOT_MARKER, ChrootRoot, Dropin, PRUNED_DIR};
use super::reports::{self, AtBoot, REPORTS_MODE};
use super::system::{Accounts, FsKind, Kind, Meta, NOLOGIN_CANDIDATES, Password, System, User};

pub const KEY_FILE_MODE: u32 = 0o644;
pub const PUBLIC_DIR_MODE: u32 = 0o755;
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
    /// fleet.toml's, or `--chroot-root`'s: messages name the one to change.
    pub chroot_root_from: Origin,
    pub keys_dir: PathBuf,
    pub dropin: PathBuf,
    pub sshd_config: PathBuf,
    pub sshd_extra: Vec<String>,
}

impl Target {
    pub fn chroot_root_setting(&self) -> Setting<'_> {
        let key = match self.chroot_root_from {
            Origin::FleetToml => CHROOT_ROOT_KEY,
            Origin::Flag => CHROOT_ROOT_FLAG,
        };
        Setting {
            key,
            path: &self.chroot_root,
            origin: self.chroot_root_from,
        }
    }
    pub fn dropin_setting(&self) -> Setting<'_> {
        Setting::fleet(SSHD_DROPIN_KEY, &self.dropin)
    }
}

/// What happens to the accounts of hosts gone from the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departed {
    /// Still served, with a note that `--prune` would retire them.
    Keep,
    /// Locked, key removed, chroot moved under [`PRUNED_DIR`] (nothing is deleted).
    Prune,
}

#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub departed: Departed,
    /// Names the pruned chroots.
    pub now: SystemTime,
    /// Whether systemd units mount the reports/ tmpfs at boot.
    pub at_boot: AtBoot,
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
    pub sshd_check: SshdCheck,
}

/// What `sshd -t` is pointed at to judge the drop-in as sshd will read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshdCheck {
    /// sshd_config includes the drop-in: check the whole configuration.
    WholeConfig,
    /// It does not (yet), so checking sshd_config would not read the drop-in: check it alone.
    DropinAlone,
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

/// Computes the plan: inspects accounts, directories, keys and the drop-in, and lists every change.
pub fn plan(target: &Target, sys: &dyn System, opts: &PlanOptions) -> Result<Plan, ProvisionError> {
    let accounts = Accounts::load(sys).map_err(ProvisionError::inspect(Path::new("/etc")))?;
    let mut p = Planner::new(target, sys, &accounts, opts.at_boot);
    // Accounts first: the directories below are owned by them.
    p.accounts();
    // The chroot tree of the server layout (docs/formats.md).
    p.chroot_tree()?;
    // Keys: outside every chroot, root-owned, read by sshd as root before it chroots.
    p.keys()?;
    let departed = p.departed_hosts(opts)?;
    // The drop-in, last: sshd is reloaded only once everything it points to exists.
    p.dropin(departed)?;
    let sshd_check = p.inclusion()?;
    Ok(p.finish(sshd_check))
}

/// Collects actions and findings while walking the server, one phase of `plan` after another.
struct Planner<'a> {
    target: &'a Target,
    sys: &'a dyn System,
    accounts: &'a Accounts,
    actions: Vec<Action>,
    findings: Vec<Finding>,
    /// `<chroot root>/.pruned` once it is planned: checked once, however many chroots move there.
    pruned_dir: Option<PathBuf>,
    at_boot: AtBoot,
}

/// Whether the chroot root may be planned into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whose {
    Tiffins,
    SomeoneElses,
}

/// How `Planner::managed` looks at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Symlinks {
    /// Judge what the path points to: the configured roots (chroot root, keys directory) may be links.
    Follow,
    /// Judge the path itself: inside those roots a symlink is refused like any other wrong kind.
    Refuse,
}

/// Entries of a release tree whose owner, group or mode is not what publish would have written.
#[derive(Debug, Default)]
struct WrongEntries {
    count: usize,
    example: Option<Want>,
}

/// An account of tiffin's whose host is no longer in the fleet.
struct Departure {
    account: String,
    host: HostName,
    chroot: PathBuf,
    keys_file: PathBuf,
    /// Locked and expired: an earlier `--prune` retired it.
    locked: bool,
}

/// The basics every phase uses: findings, inspection, ownership checks.
impl<'a> Planner<'a> {
    fn new(
        target: &'a Target,
        sys: &'a dyn System,
        accounts: &'a Accounts,
        at_boot: AtBoot,
    ) -> Planner<'a> {
        Planner {
            target,
            sys,
            accounts,
            actions: Vec::new(),
            findings: Vec::new(),
            pruned_dir: None,
            at_boot,
        }
    }

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
    /// A file's content, `None` when it does not exist.
    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, ProvisionError> {
        match self.sys.read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ProvisionError::inspect(path)(e)),
        }
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
    /// True when it exists and is of the right kind (so what is inside it can be checked too).
    fn managed(
        &mut self,
        path: &Path,
        kind: Kind,
        want: Want,
        symlinks: Symlinks,
    ) -> Result<bool, ProvisionError> {
        let meta = match symlinks {
            Symlinks::Follow => self.stat(path)?,
            Symlinks::Refuse => self.lstat(path)?,
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
}

/// Phase 1, accounts: a group and an account per host, created or adopted, and unlocked.
impl Planner<'_> {
    fn accounts(&mut self) {
        let shell = self.nologin_shell();
        if self.accounts.shadow.is_none() {
            self.note(
                "cannot read /etc/shadow (not root): whether accounts are locked is not checked"
                    .into(),
            );
        }
        let target = self.target;
        for h in &target.hosts {
            self.account(h, &shell);
            self.group_members(h);
        }
    }

    /// The shell of every host account; a blocker when the server has no nologin at all.
    fn nologin_shell(&mut self) -> PathBuf {
        let found = NOLOGIN_CANDIDATES
            .iter()
            .map(Path::new)
            .find(|c| matches!(self.sys.stat(c), Ok(Some(m)) if m.kind == Kind::File));
        match found {
            Some(s) => s.to_owned(),
            None => {
                self.blocker(format!(
                    "no nologin shell found (looked for {}): install it (util-linux or shadow provide it)",
                    NOLOGIN_CANDIDATES.join(", ")
                ));
                PathBuf::from(NOLOGIN_CANDIDATES[0])
            }
        }
    }

    fn account(&mut self, h: &HostTarget, shell: &Path) {
        let chroot = self.target.chroot_root.join(h.host.as_str());
        // Each host's account has a group of its own name: the files of its chroot are its alone.
        let group = &h.account;
        if !self.accounts.groups.contains_key(group) {
            self.actions.push(Action::CreateGroup {
                name: group.clone(),
            });
        }
        let accounts = self.accounts;
        match accounts.users.get(&h.account) {
            None => self.actions.push(Action::CreateAccount {
                name: h.account.clone(),
                host: h.host.clone(),
                group: group.clone(),
                home: chroot,
                shell: shell.to_owned(),
            }),
            Some(u) if u.uid == 0 => self.blocker(format!(
                "account {} has uid 0: tiffin will not serve a host through a root account; remove or renumber it",
                u.name
            )),
            // Only an account tiffin created (its comment) or that already points at the chroot
            // is adopted; taking over, say, `daemon` for a host named so would be a disaster.
            Some(u) if u.home != chroot && u.comment != format!("{COMMENT_PREFIX}{}", h.host) => {
                self.blocker(format!(
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
                let fixes = account_fixes(u, &chroot, shell, group, accounts);
                if !fixes.is_empty() {
                    self.actions.push(Action::FixAccount {
                        name: u.name.clone(),
                        fixes,
                    });
                }
                self.unlock(u);
            }
        }
    }

    /// sshd refuses key logins to a locked or expired account (unknown when shadow is unreadable).
    fn unlock(&mut self, u: &User) {
        let Some(shadow) = &self.accounts.shadow else {
            return;
        };
        let (was, expired) = match shadow.get(&u.name) {
            Some(s) => (s.password, s.expires.is_some()),
            None => (Password::Locked, false),
        };
        if was != Password::NoPassword || expired {
            self.actions.push(Action::UnlockAccount {
                name: u.name.clone(),
                was,
                expired,
            });
        }
    }

    /// Anyone else in a host's group reads its files, secrets included: worth a warning.
    fn group_members(&mut self, h: &HostTarget) {
        let group = &h.account;
        let Some(g) = self.accounts.groups.get(group) else {
            return;
        };
        let mut others: BTreeSet<&str> = g
            .members
            .iter()
            .map(String::as_str)
            .filter(|m| *m != h.account)
            .collect();
        others.extend(
            self.accounts
                .users
                .values()
                .filter(|u| u.gid == g.gid && u.name != h.account)
                .map(|u| u.name.as_str()),
        );
        if !others.is_empty() {
            let list: Vec<&str> = others.into_iter().collect();
            self.warning(format!(
                "group {group} also has {}: they can read every file of host {} (secrets included); remove them (`gpasswd -d USER {group}`)",
                list.join(", "),
                h.host
            ));
        }
    }
}

/// Phase 2, the chroot tree: the chroot root, then per host its chroot, releases, reports, CURRENT.
impl Planner<'_> {
    fn chroot_tree(&mut self) -> Result<(), ProvisionError> {
        let target = self.target;
        self.ancestors(&target.chroot_root, "chroot")?;
        if self.chroot_root()? == Whose::SomeoneElses {
            // Nothing is planned inside someone else's directory.
            return Ok(());
        }
        for h in &target.hosts {
            self.host_chroot(h)?;
        }
        self.boot_note();
        Ok(())
    }

    /// Created and marked; adopted as it is when empty or publish's; repaired only when marked
    /// (tiffin never changes the owner or mode of a directory it did not create).
    fn chroot_root(&mut self) -> Result<Whose, ProvisionError> {
        let target = self.target;
        let root = &target.chroot_root;
        let setting = target.chroot_root_setting();
        let why = match ownership::chroot_root(self.sys, setting)? {
            ChrootRoot::Foreign(message) => {
                self.blocker(setting.located(&message));
                return Ok(Whose::SomeoneElses);
            }
            ChrootRoot::Marked => {
                let want = Want::root(PUBLIC_DIR_MODE);
                self.managed(root, Kind::Dir, want, Symlinks::Follow)?;
                return Ok(Whose::Tiffins);
            }
            ChrootRoot::Missing => {
                self.actions.push(Action::CreateDir {
                    path: root.clone(),
                    want: Want::root(PUBLIC_DIR_MODE),
                });
                Adoption::Created
            }
            ChrootRoot::Adoptable(why) => {
                self.adoptable_modes(root)?;
                why
            }
        };
        self.actions.push(Action::MarkChrootRoot {
            path: root.join(CHROOT_ROOT_MARKER),
            why,
        });
        Ok(Whose::Tiffins)
    }

    /// A directory tiffin adopts keeps its owner and mode, so they must already suit sshd.
    fn adoptable_modes(&mut self, root: &Path) -> Result<(), ProvisionError> {
        match self.stat(root)? {
            Some(m) if !m.root_owned_not_writable() => {
                let was = self.was(&m);
                self.blocker(format!(
                    "{} is {was}: sshd refuses chroots under a directory that is not root-owned or is writable by group or others, and tiffin changes no directory it did not create: fix it with `chown root {0} && chmod go-w {0}`, or choose another path in fleet.toml",
                    root.display()
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Without systemd units the tmpfs mounts last until the server reboots: say so when mounting.
    fn boot_note(&mut self) {
        let mounts = self
            .actions
            .iter()
            .any(|a| matches!(a, Action::MountReports { .. }));
        if mounts && self.at_boot == AtBoot::Manual {
            self.note(format!(
                "systemd does not manage this server's mounts, so the tmpfs on each reports/ lasts until the server reboots: run `tiffin provision` after each boot (it mounts what is missing), or add a line per host to /etc/fstab: `tmpfs <chroot>/reports tmpfs {},mode=0700,uid=<account's uid>,gid=<its gid>,nosuid,nodev,noexec 0 0`",
                reports::bound_options()
            ));
        }
    }

    /// Root-owned and readable by the host's group only; reports/ is the one place the host writes.
    fn host_chroot(&mut self, h: &HostTarget) -> Result<(), ProvisionError> {
        let group = h.account.as_str();
        let paths = ChrootPaths::new(&self.target.chroot_root, &h.host);
        let published = Want::new("root", group, SERVER_DIR_MODE);
        self.managed(&paths.root, Kind::Dir, published.clone(), Symlinks::Refuse)?;
        let releases = paths.releases();
        let releases_exist = self.managed(&releases, Kind::Dir, published, Symlinks::Refuse)?;
        self.managed(
            &paths.reports(),
            Kind::Dir,
            Want::new(&h.account, group, REPORTS_MODE),
            Symlinks::Refuse,
        )?;
        self.reports_mount(h, &paths.reports())?;
        self.managed(
            &paths.current(),
            Kind::File,
            Want::new("root", group, SERVER_FILE_MODE),
            Symlinks::Refuse,
        )?;
        if releases_exist {
            self.release_trees(&releases, group)?;
        }
        Ok(())
    }

    /// reports/ on a bounded tmpfs of its own (`reports`), with its unit where systemd mounts at boot.
    fn reports_mount(&mut self, h: &HostTarget, path: &Path) -> Result<(), ProvisionError> {
        let mounted = self
            .sys
            .mount_at(path)
            .map_err(ProvisionError::inspect(path))?;
        let how = match mounted {
            None => Some(MountHow::New),
            Some(m) if m.fs == FsKind::Other => {
                self.blocker(format!(
                    "{} has another filesystem mounted on it: tiffin mounts a bounded tmpfs there (what the host can store on the server); unmount it",
                    path.display()
                ));
                None
            }
            Some(m) if reports::bounded(&m) => None,
            Some(was) => Some(MountHow::Remount { was }),
        };
        if let Some(how) = how {
            self.actions.push(Action::MountReports {
                path: path.to_owned(),
                account: h.account.clone(),
                how,
            });
        }
        if self.at_boot == AtBoot::SystemdUnits {
            self.mount_unit(h, path)?;
        }
        Ok(())
    }

    /// Rewritten and enabled unless it holds exactly what this run would write and is enabled.
    fn mount_unit(&mut self, h: &HostTarget, reports: &Path) -> Result<(), ProvisionError> {
        let path = reports::unit_path(reports);
        let uid = self.accounts.users.get(&h.account).map(|u| u.uid);
        let gid = self.accounts.groups.get(&h.account).map(|g| g.gid);
        let current = match (uid, gid) {
            (Some(uid), Some(gid)) => {
                let want = reports::unit_text(&h.host, reports, uid, gid);
                self.read(&path)?.is_some_and(|b| b == want.as_bytes())
            }
            // The account is created by this plan: its uid is not known yet.
            _ => false,
        };
        if !current || self.lstat(&reports::wants_link(reports))?.is_none() {
            self.actions.push(Action::WriteMountUnit {
                path,
                reports: reports.to_owned(),
                host: h.host.clone(),
                account: h.account.clone(),
            });
        }
        Ok(())
    }

    /// A publish that ran before the host's group existed left its release trees root:root.
    fn release_trees(&mut self, releases: &Path, group: &str) -> Result<(), ProvisionError> {
        for name in self
            .sys
            .list(releases)
            .map_err(ProvisionError::inspect(releases))?
        {
            let tree = releases.join(&name);
            let mut wrong = WrongEntries::default();
            self.tree_wrong(&tree, group, &mut wrong)?;
            if let Some(example) = wrong.example {
                self.actions.push(Action::RepairTree {
                    path: tree,
                    group: group.to_owned(),
                    wrong: wrong.count,
                    example,
                });
            }
        }
        Ok(())
    }

    /// Adds the entries under `path` that are not root:group 0750/0640 to `wrong`.
    fn tree_wrong(
        &self,
        path: &Path,
        group: &str,
        wrong: &mut WrongEntries,
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
            wrong.count += 1;
            wrong.example.get_or_insert_with(|| self.was(&meta));
        }
        if meta.kind == Kind::Dir {
            for name in self.sys.list(path).map_err(ProvisionError::inspect(path))? {
                self.tree_wrong(&path.join(name), group, wrong)?;
            }
        }
        Ok(())
    }
}

/// Phase 3, keys: one root-owned file per account, outside every chroot.
impl Planner<'_> {
    fn keys(&mut self) -> Result<(), ProvisionError> {
        let target = self.target;
        self.ancestors(&target.keys_dir, "the authorized keys directory")?;
        self.managed(
            &target.keys_dir,
            Kind::Dir,
            Want::root(PUBLIC_DIR_MODE),
            Symlinks::Follow,
        )?;
        for h in &target.hosts {
            self.key(h)?;
        }
        Ok(())
    }

    /// Rewritten whenever its content differs from `restrict <the fleet's key>`.
    fn key(&mut self, h: &HostTarget) -> Result<(), ProvisionError> {
        let path = self.target.keys_dir.join(&h.account);
        let content = key_line(&h.key);
        match self.read(&path)? {
            Some(bytes) if bytes == content.as_bytes() => {
                self.managed(
                    &path,
                    Kind::File,
                    Want::root(KEY_FILE_MODE),
                    Symlinks::Refuse,
                )?;
            }
            other => self.actions.push(Action::WriteKey {
                path,
                fingerprint: fingerprint(&h.key),
                content,
                replaces: other.is_some(),
            }),
        }
        Ok(())
    }
}

/// Phase 4, departed hosts: accounts of hosts gone from the fleet, kept (with a note) or pruned.
impl Planner<'_> {
    /// Their drop-in blocks: kept even once pruned, so the account stays confined if unlocked.
    fn departed_hosts(&mut self, opts: &PlanOptions) -> Result<Vec<Block>, ProvisionError> {
        let fleet: BTreeSet<&str> = self
            .target
            .hosts
            .iter()
            .map(|h| h.account.as_str())
            .collect();
        let accounts = self.accounts;
        let mut blocks = Vec::new();
        for u in accounts.users.values() {
            let Some(d) = self.departure(u, &fleet) else {
                continue;
            };
            let gone = if opts.departed == Departed::Prune || d.locked {
                Gone::Pruned
            } else {
                Gone::Kept
            };
            blocks.push(Block {
                account: d.account.clone(),
                chroot: d.chroot.clone(),
                keys_file: d.keys_file.clone(),
                gone: Some(gone),
            });
            match opts.departed {
                Departed::Keep => self.keep(&d),
                Departed::Prune => self.prune(&d, opts.now)?,
            }
        }
        Ok(blocks)
    }

    /// `u` when it is tiffin's account of a host gone from the fleet; a note when it merely
    /// shares the prefix (someone else's account, left alone).
    fn departure(&mut self, u: &User, fleet: &BTreeSet<&str>) -> Option<Departure> {
        let target = self.target;
        let rest = u.name.strip_prefix(&target.user_prefix)?;
        if fleet.contains(u.name.as_str()) {
            return None;
        }
        let host = rest.parse::<HostName>().ok()?;
        let chroot = target.chroot_root.join(host.as_str());
        if u.home != chroot || !is_nologin(&u.shell) || u.uid == 0 {
            self.note(format!(
                "account {} has the prefix {:?} but is not one of tiffin's (home {}, shell {}): left alone",
                u.name,
                target.user_prefix,
                u.home.display(),
                u.shell.display()
            ));
            return None;
        }
        let locked = self
            .accounts
            .shadow
            .as_ref()
            .and_then(|s| s.get(&u.name))
            .is_some_and(|s| s.password == Password::Locked && s.expires.is_some());
        Some(Departure {
            account: u.name.clone(),
            keys_file: target.keys_dir.join(&u.name),
            host,
            chroot,
            locked,
        })
    }

    fn keep(&mut self, d: &Departure) {
        if !d.locked {
            self.note(format!(
                "host {} is gone from the fleet: account {} is kept and still served; `tiffin provision --prune` locks it, removes its key and moves its chroot to {}/",
                d.host,
                d.account,
                self.target.chroot_root.join(PRUNED_DIR).display()
            ));
        }
    }

    /// Lock, remove the key, move the chroot aside: each only if an earlier run has not.
    fn prune(&mut self, d: &Departure, now: SystemTime) -> Result<(), ProvisionError> {
        if !d.locked {
            self.actions.push(Action::LockAccount {
                name: d.account.clone(),
                host: d.host.clone(),
            });
        }
        if self.lstat(&d.keys_file)?.is_some() {
            self.actions.push(Action::RemoveKey {
                path: d.keys_file.clone(),
            });
        }
        if self.lstat(&d.chroot)?.is_some() {
            self.unmount_reports(&d.chroot)?;
            let pruned = self.pruned_dir()?;
            self.actions.push(Action::MoveChroot {
                from: d.chroot.clone(),
                to: pruned.join(format!("{}-{}", d.host, stamp(now))),
            });
        }
        Ok(())
    }

    /// The tmpfs and its unit go first: moved along with the chroot, the unit would mount a
    /// tmpfs at the old path again at the next boot.
    fn unmount_reports(&mut self, chroot: &Path) -> Result<(), ProvisionError> {
        let path = chroot.join(REPORTS_DIR);
        let mounted = self
            .sys
            .mount_at(&path)
            .map_err(ProvisionError::inspect(&path))?;
        let unit = reports::unit_path(&path);
        let unit = self.lstat(&unit)?.map(|_| unit);
        if mounted.is_some() || unit.is_some() {
            self.actions.push(Action::UnmountReports { path, unit });
        }
        Ok(())
    }

    fn pruned_dir(&mut self) -> Result<PathBuf, ProvisionError> {
        if let Some(dir) = &self.pruned_dir {
            return Ok(dir.clone());
        }
        let dir = self.target.chroot_root.join(PRUNED_DIR);
        self.managed(&dir, Kind::Dir, Want::root(0o700), Symlinks::Refuse)?;
        self.pruned_dir = Some(dir.clone());
        Ok(dir)
    }
}

/// Phase 5, the drop-in: written (and sshd reloaded) only when its text changes.
impl Planner<'_> {
    fn dropin(&mut self, departed: Vec<Block>) -> Result<(), ProvisionError> {
        let target = self.target;
        let blocks = dropin_blocks(target, departed);
        let new = dropin::render(&blocks, &target.sshd_extra);
        self.dropin_dirs()?;
        let setting = target.dropin_setting();
        let old = match ownership::dropin(self.sys, setting)? {
            Dropin::Missing => None,
            Dropin::Ours(text) => Some(text),
            Dropin::Foreign(message) => {
                self.blocker(setting.located(&message));
                return Ok(());
            }
        };
        if old.as_deref() == Some(new.as_str()) {
            self.managed(
                &target.dropin,
                Kind::File,
                Want::root(KEY_FILE_MODE),
                Symlinks::Refuse,
            )?;
        } else {
            self.actions.push(Action::WriteDropin {
                path: target.dropin.clone(),
                old,
                new,
                blocks: blocks.len(),
            });
            self.actions.push(Action::Reload);
        }
        Ok(())
    }

    /// The directories the drop-in goes in, created when missing.
    fn dropin_dirs(&mut self) -> Result<(), ProvisionError> {
        let target = self.target;
        let Some(dir) = target.dropin.parent() else {
            return Ok(());
        };
        let mut chain: Vec<&Path> = dir.ancestors().collect();
        chain.reverse();
        for d in chain {
            if self.stat(d)?.is_none() {
                self.actions.push(Action::CreateDir {
                    path: d.to_owned(),
                    want: Want::root(PUBLIC_DIR_MODE),
                });
            }
        }
        Ok(())
    }

    /// Warns unless sshd_config includes the drop-in (outside any Match block).
    fn inclusion(&mut self) -> Result<SshdCheck, ProvisionError> {
        let target = self.target;
        let Some(main) = self.read(&target.sshd_config)? else {
            self.warning(format!(
                "{} does not exist: is openssh-server installed? sshd must include {} (`{}`)",
                target.sshd_config.display(),
                target.dropin.display(),
                dropin::include_line(&target.dropin)
            ));
            return Ok(SshdCheck::DropinAlone);
        };
        let main = String::from_utf8_lossy(&main);
        let config_dir = target.sshd_config.parent().unwrap_or(Path::new("/"));
        let inclusion = dropin::inclusion(&main, config_dir, &target.dropin);
        match inclusion {
            Inclusion::Included => {}
            Inclusion::NotIncluded => self.warning(format!(
                "{} does not include {}, so sshd ignores it and no host can log in: add this line near the top of {0}, before any Match block (tiffin never edits it):\n    {}",
                target.sshd_config.display(),
                target.dropin.display(),
                dropin::include_line(&target.dropin)
            )),
            Inclusion::InsideMatch { line } => self.warning(format!(
                "{}:{line} includes {} inside a Match block, so its blocks apply only where that Match does: move the Include above the first Match line",
                target.sshd_config.display(),
                target.dropin.display()
            )),
        }
        Ok(match inclusion {
            Inclusion::Included | Inclusion::InsideMatch { .. } => SshdCheck::WholeConfig,
            Inclusion::NotIncluded => SshdCheck::DropinAlone,
        })
    }

    /// The plan as collected, with problems first.
    fn finish(self, sshd_check: SshdCheck) -> Plan {
        // Ancestors shared by the chroot root, the keys directory and the drop-in are created once.
        let mut created = BTreeSet::new();
        let actions = self
            .actions
            .into_iter()
            .filter(|a| match a {
                Action::CreateDir { path, .. } => created.insert(path.clone()),
                _ => true,
            })
            .collect();
        let mut findings = self.findings;
        findings.sort_by_key(|f| f.level);
        Plan {
            hosts: self.target.hosts.len(),
            actions,
            findings,
            sshd_check,
        }
    }
}

/// One block per fleet host and per departed account, in account order.
fn dropin_blocks(target: &Target, departed: Vec<Block>) -> Vec<Block> {
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
    blocks.extend(departed);
    blocks.sort_by(|a, b| a.account.cmp(&b.account));
    blocks
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
    crate::core::settings::format_time(t).replace(['-', ':'], "")
}

#[cfg(test)]
mod tests;
