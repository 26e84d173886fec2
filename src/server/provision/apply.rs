//! Applying a plan with the system's own tools (groupadd, useradd, usermod, sshd -t) and plain syscalls.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::action::{AccountFix, Action, MountHow, Want};
use super::ownership::CHROOT_ROOT_MARKER_TEXT;
use super::plan::{COMMENT_PREFIX, KEY_FILE_MODE, Plan, SshdCheck, Target};
use super::reports::{self, REPORTS_MODE};
use super::system::{Accounts, Password, RealSystem, System};
use super::{ProvisionError, Refusal, Rollback};
use crate::core::layout::{SERVER_DIR_MODE, SERVER_FILE_MODE};
use crate::core::names::HostName;

/// How sshd learns about a new drop-in (`TIFFIN_SSHD_RELOAD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadMethod {
    /// systemd when it runs (`/run/systemd/system` exists), else the pid file.
    Auto,
    /// `systemctl reload` of `ssh.service` or `sshd.service`, whichever is active.
    Systemd,
    /// SIGHUP to the pid in this file, or in sshd's `PidFile` when `None`.
    PidFile(Option<PathBuf>),
    /// Do not reload (someone else restarts sshd).
    Never,
}

impl std::str::FromStr for ReloadMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "auto" => Ok(ReloadMethod::Auto),
            "systemd" => Ok(ReloadMethod::Systemd),
            "pidfile" => Ok(ReloadMethod::PidFile(None)),
            "none" => Ok(ReloadMethod::Never),
            other => match other.strip_prefix("pidfile:") {
                Some(path) if path.starts_with('/') => Ok(ReloadMethod::PidFile(Some(path.into()))),
                _ => Err(format!(
                    "TIFFIN_SSHD_RELOAD={other:?}: expected auto, systemd, pidfile, pidfile:/ABSOLUTE/PATH or none"
                )),
            },
        }
    }
}

/// Runs a plan's actions in order on the real system; stops at the first failure.
pub struct Applier<'a> {
    sys: &'a RealSystem,
    sshd_config: PathBuf,
    /// The file `sshd -t -f` checks: the main config when it includes the drop-in, else the drop-in.
    validate: PathBuf,
    reload: ReloadMethod,
}

/// One provisioning at a time: two would race on the drop-in's backup and on useradd.
pub fn lock() -> Result<crate::core::durable::Lock, ProvisionError> {
    let dir = ["/run/lock", "/run", "/tmp"]
        .into_iter()
        .map(Path::new)
        .find(|d| d.is_dir())
        .unwrap_or(Path::new("/tmp"));
    crate::core::durable::Lock::try_exclusive(&dir.join("tiffin-provision.lock")).map_err(|e| {
        match e {
            crate::core::durable::LockError::Busy { path } => ProvisionError::Unexpected(format!(
                "another tiffin provision is running (it holds {}); wait for it and run again",
                path.display()
            )),
            crate::core::durable::LockError::Io { path, source } => ProvisionError::Io {
                step: "opening",
                path,
                source,
            },
        }
    })
}

/// A system tool, looked up in PATH and the usual sbin directories (root's PATH may lack them).
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs a tool; a failure carries its exit status and stderr.
fn run(name: &str, args: &[&str]) -> Result<String, ProvisionError> {
    let program = tool(name);
    let shown = format!("{name} {}", args.join(" "));
    tracing::debug!("running {shown}");
    let out = Command::new(&program)
        .args(args)
        .output()
        .map_err(|source| ProvisionError::Spawn {
            command: shown.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ProvisionError::Tool {
            command: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn io_err(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError {
    let path = path.to_owned();
    move |source| ProvisionError::Io { step, path, source }
}

impl<'a> Applier<'a> {
    /// An applier for `plan`, checking the drop-in with `sshd -t` the way sshd will read it.
    pub fn new(sys: &'a RealSystem, target: &Target, plan: &Plan, reload: ReloadMethod) -> Self {
        Applier {
            sys,
            sshd_config: target.sshd_config.clone(),
            validate: match plan.sshd_check {
                SshdCheck::WholeConfig => target.sshd_config.clone(),
                SshdCheck::DropinAlone => target.dropin.clone(),
            },
            reload,
        }
    }

    /// Applies one action; returns a line to print when there is more to say than the plan did.
    pub fn apply(&self, action: &Action) -> Result<Option<String>, ProvisionError> {
        match action {
            Action::CreateGroup { name } => self.create_group(name)?,
            Action::CreateAccount {
                name,
                host,
                group,
                home,
                shell,
            } => self.create_account(name, host, group, home, shell)?,
            Action::FixAccount { name, fixes } => self.fix_account(name, fixes)?,
            Action::UnlockAccount { name, .. } => self.unlock_account(name)?,
            Action::CreateDir { path, want } => self.create_dir(path, want)?,
            Action::MarkChrootRoot { path, .. } => {
                // Root only: nothing in the chroot root is for other local users (a host reads only its own chroot).
                self.write_root_file(path, CHROOT_ROOT_MARKER_TEXT, 0o600)?
            }
            Action::MountReports { path, account, how } => {
                self.mount_reports(path, account, *how)?
            }
            Action::WriteMountUnit {
                path,
                reports,
                host,
                account,
            } => self.write_mount_unit(path, reports, host, account)?,
            Action::UnmountReports { path, unit } => self.unmount_reports(path, unit.as_deref())?,
            Action::Repair { path, want, .. } => self.repair(path, want)?,
            Action::RepairTree { path, group, .. } => self.repair_tree(path, group)?,
            Action::WriteKey { path, content, .. } => {
                self.write_root_file(path, content, KEY_FILE_MODE)?
            }
            Action::WriteDropin { path, old, new, .. } => {
                self.write_dropin(path, Previous::of(old.as_deref()), new)?
            }
            Action::Reload => return self.reload().map(Some),
            Action::LockAccount { name, .. } => self.lock_account(name)?,
            Action::RemoveKey { path } => self.remove_key(path)?,
            Action::MoveChroot { from, to } => self.move_chroot(from, to)?,
        }
        Ok(None)
    }
}

/// Accounts and groups, with the system's own tools.
impl Applier<'_> {
    fn create_group(&self, name: &str) -> Result<(), ProvisionError> {
        run("groupadd", &["--system", name]).map(drop)
    }

    fn create_account(
        &self,
        name: &str,
        host: &HostName,
        group: &str,
        home: &Path,
        shell: &Path,
    ) -> Result<(), ProvisionError> {
        let comment = format!("{COMMENT_PREFIX}{host}");
        let home = home.to_string_lossy();
        let shell = shell.to_string_lossy();
        run(
            "useradd",
            &[
                "--system",
                "--gid",
                group,
                "--home-dir",
                &home,
                "--no-create-home",
                "--shell",
                &shell,
                "--comment",
                &comment,
                name,
            ],
        )?;
        // useradd leaves a locked "!" (Debian) or "!!" (Fedora): sshd refuses key logins then.
        run("usermod", &["--password", "*", name])?;
        self.verify_unlocked(name)
    }

    fn fix_account(&self, name: &str, fixes: &[AccountFix]) -> Result<(), ProvisionError> {
        let mut args: Vec<String> = Vec::new();
        for f in fixes {
            match f {
                AccountFix::Home { to, .. } => {
                    args.extend(["--home".into(), to.to_string_lossy().into_owned()])
                }
                AccountFix::Shell { to, .. } => {
                    args.extend(["--shell".into(), to.to_string_lossy().into_owned()])
                }
                AccountFix::Group { to, .. } => args.extend(["--gid".into(), to.clone()]),
            }
        }
        args.push(name.to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("usermod", &args).map(drop)
    }

    fn unlock_account(&self, name: &str) -> Result<(), ProvisionError> {
        run("usermod", &["--password", "*", "--expiredate", "", name])?;
        self.verify_unlocked(name)
    }

    fn lock_account(&self, name: &str) -> Result<(), ProvisionError> {
        // Locking alone does not stop key logins when sshd uses PAM; expiry does.
        run("usermod", &["--lock", "--expiredate", "1", name]).map(drop)
    }

    fn accounts(&self) -> Result<Accounts, ProvisionError> {
        Accounts::load(self.sys).map_err(ProvisionError::inspect(Path::new("/etc")))
    }

    /// The uid and gid of a `Want`'s owner and group, which earlier steps may have just created.
    fn ids(&self, want: &Want) -> Result<(u32, u32), ProvisionError> {
        let accounts = self.accounts()?;
        let uid = match want.owner.as_str() {
            "root" => 0,
            name => accounts
                .users
                .get(name)
                .map(|u| u.uid)
                .ok_or_else(|| ProvisionError::Missing(format!("account {name}")))?,
        };
        let gid = match want.group.as_str() {
            "root" => 0,
            name => accounts
                .groups
                .get(name)
                .map(|g| g.gid)
                .ok_or_else(|| ProvisionError::Missing(format!("group {name}")))?,
        };
        Ok((uid, gid))
    }

    /// The password field must end up `*`: not locked (sshd refuses locked accounts), no password.
    fn verify_unlocked(&self, name: &str) -> Result<(), ProvisionError> {
        let accounts = self.accounts()?;
        let state = accounts
            .shadow
            .as_ref()
            .and_then(|s| s.get(name))
            .map(|s| (s.password, s.expires));
        match state {
            Some((Password::NoPassword, None)) => Ok(()),
            other => Err(ProvisionError::Unexpected(format!(
                "account {name}: after usermod, /etc/shadow still says {}: sshd would refuse its key logins; check /etc/shadow by hand",
                match other {
                    Some((p, None)) => p.describe().to_owned(),
                    Some((p, Some(_))) => format!("{} with an expiry date", p.describe()),
                    None => "nothing (no entry)".to_owned(),
                }
            ))),
        }
    }
}

/// Directories and files, with plain syscalls on the real paths.
impl Applier<'_> {
    fn create_dir(&self, path: &Path, want: &Want) -> Result<(), ProvisionError> {
        let (uid, gid) = self.ids(want)?;
        let real = self.sys.real(path);
        match fs::DirBuilder::new().mode(0o700).create(&real) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("creating", path)(e)),
        }
        self.set_meta(path, uid, gid, want.mode.bits())
    }

    fn repair(&self, path: &Path, want: &Want) -> Result<(), ProvisionError> {
        let (uid, gid) = self.ids(want)?;
        self.set_meta(path, uid, gid, want.mode.bits())
    }

    fn repair_tree(&self, path: &Path, group: &str) -> Result<(), ProvisionError> {
        let (_, gid) = self.ids(&Want {
            owner: "root".into(),
            group: group.to_owned(),
            mode: crate::core::release::Mode::from_stat(0),
        })?;
        self.repair_entries(path, gid)
    }

    /// root:gid 0750 for directories, 0640 for files, all the way down; symlinks are left alone.
    fn repair_entries(&self, path: &Path, gid: u32) -> Result<(), ProvisionError> {
        let real = self.sys.real(path);
        let meta = fs::symlink_metadata(&real).map_err(io_err("inspecting", path))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            self.set_meta(path, 0, gid, SERVER_DIR_MODE)?;
            for entry in fs::read_dir(&real).map_err(io_err("listing", path))? {
                let entry = entry.map_err(io_err("listing", path))?;
                self.repair_entries(&path.join(entry.file_name()), gid)?;
            }
        } else if kind.is_file() {
            self.set_meta(path, 0, gid, SERVER_FILE_MODE)?;
        }
        Ok(())
    }

    /// Sets owner, group and mode without following a symlink put in its place.
    fn set_meta(&self, path: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), ProvisionError> {
        let real = self.sys.real(path);
        let meta = fs::symlink_metadata(&real).map_err(io_err("inspecting", path))?;
        if meta.file_type().is_symlink() {
            return Err(ProvisionError::Unexpected(format!(
                "{} became a symlink while provisioning; not following it",
                path.display()
            )));
        }
        std::os::unix::fs::lchown(&real, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
        fs::set_permissions(&real, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
    }

    /// A root-owned 0644 file, written atomically: a key, the chroot root's marker, a unit.
    fn write_root_file(&self, path: &Path, content: &str, mode: u32) -> Result<(), ProvisionError> {
        crate::core::durable::write_atomic(
            &self.sys.real(path),
            content.as_bytes(),
            mode,
            crate::core::durable::Owner::Root,
        )
        .map_err(io_err("writing", path))
    }

    fn remove_key(&self, path: &Path) -> Result<(), ProvisionError> {
        fs::remove_file(self.sys.real(path)).map_err(io_err("removing", path))
    }

    fn move_chroot(&self, from: &Path, to: &Path) -> Result<(), ProvisionError> {
        fs::rename(self.sys.real(from), self.sys.real(to)).map_err(io_err("moving", from))
    }
}

/// The reports/ tmpfs: mounted with plain syscalls, persisted with a systemd unit.
impl Applier<'_> {
    fn mount_reports(
        &self,
        path: &Path,
        account: &str,
        how: MountHow,
    ) -> Result<(), ProvisionError> {
        use nix::mount::MsFlags;
        let inert = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let (flags, options) = match how {
            MountHow::New => {
                let (uid, gid) = self.ids(&Want::new(account, account, REPORTS_MODE))?;
                (inert, reports::mount_options(uid, gid))
            }
            // A remount changes the bound; owner and mode are a stat's business (`Repair`).
            MountHow::Remount { .. } => (inert | MsFlags::MS_REMOUNT, reports::bound_options()),
        };
        nix::mount::mount(
            Some("tmpfs"),
            &self.sys.real(path),
            Some("tmpfs"),
            flags,
            Some(options.as_str()),
        )
        .map_err(|e| io_err("mounting a tmpfs on", path)(e.into()))
    }

    fn write_mount_unit(
        &self,
        path: &Path,
        reports: &Path,
        host: &HostName,
        account: &str,
    ) -> Result<(), ProvisionError> {
        let (uid, gid) = self.ids(&Want::new(account, account, REPORTS_MODE))?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(self.sys.real(dir)).map_err(io_err("creating", dir))?;
        self.write_root_file(path, &reports::unit_text(host, reports, uid, gid), 0o644)?;
        run("systemctl", &["daemon-reload"])?;
        run("systemctl", &["enable", &reports::unit_name(reports)]).map(drop)
    }

    /// The unit first, so systemd does not mount it again; then the tmpfs (lazily: an open
    /// sftp session of the pruned host must not stop the run).
    fn unmount_reports(&self, path: &Path, unit: Option<&Path>) -> Result<(), ProvisionError> {
        if let Some(unit) = unit {
            run("systemctl", &["disable", &reports::unit_name(path)])?;
            fs::remove_file(self.sys.real(unit)).map_err(io_err("removing", unit))?;
            run("systemctl", &["daemon-reload"])?;
        }
        let mounted = self
            .sys
            .mount_at(path)
            .map_err(io_err("inspecting", path))?;
        if mounted.is_some() {
            nix::mount::umount2(&self.sys.real(path), nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| io_err("unmounting", path)(e.into()))?;
        }
        Ok(())
    }
}

/// The drop-in: swapped in, judged by `sshd -t`, rolled back when refused.
impl Applier<'_> {
    /// Puts the new drop-in in place, lets `sshd -t` judge the whole configuration, and
    /// puts the previous file (the same inode, so byte-identical) back if sshd refuses it.
    fn write_dropin(
        &self,
        path: &Path,
        previous: Previous,
        new: &str,
    ) -> Result<(), ProvisionError> {
        let swap = DropinSwap::new(self.sys.real(path), previous);
        swap.put_in_place(path, new)?;
        match sshd_test(&self.validate) {
            Ok(()) => swap.keep(),
            Err(message) => Err(self.refused(path, &swap, message)),
        }
    }

    /// Rolls the refused drop-in back and says what sshd objects to.
    fn refused(&self, path: &Path, swap: &DropinSwap, message: String) -> ProvisionError {
        let rollback = match (swap.roll_back(), swap.previous) {
            (Err(e), _) => Rollback::Failed(e.to_string()),
            (Ok(()), Previous::Present) => Rollback::Restored,
            (Ok(()), Previous::Absent) => Rollback::Removed,
        };
        // Tells a broken drop-in from a server where `sshd -t` fails anyway
        // (a broken sshd_config, a missing /run/sshd when sshd is stopped).
        let cause = match rollback {
            Rollback::Restored | Rollback::Removed if sshd_test(&self.validate).is_err() => {
                Refusal::Elsewhere
            }
            _ => Refusal::Dropin,
        };
        ProvisionError::SshdRejected {
            dropin: path.to_owned(),
            message,
            rollback,
            cause,
        }
    }
}

/// Whether a drop-in existed before this run: what a refused one rolls back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Previous {
    Absent,
    Present,
}

impl Previous {
    fn of(old: Option<&str>) -> Previous {
        match old {
            Some(_) => Previous::Present,
            None => Previous::Absent,
        }
    }
}

/// The drop-in's replacement, staged beside it; the previous file is hard-linked aside as the backup.
struct DropinSwap {
    real: PathBuf,
    dir: PathBuf,
    staged: PathBuf,
    backup: PathBuf,
    previous: Previous,
}

impl DropinSwap {
    fn new(real: PathBuf, previous: Previous) -> DropinSwap {
        let dir = real.parent().unwrap_or(Path::new("/")).to_owned();
        let name = real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Dot names: sshd's `Include dir/*.conf` (or `dir/*`) never reads them.
        DropinSwap {
            staged: dir.join(format!(".{name}.tiffin-new")),
            backup: dir.join(format!(".{name}.tiffin-previous")),
            real,
            dir,
            previous,
        }
    }

    /// Writes and fsyncs the new text under the staged name, then renames it over the drop-in.
    fn put_in_place(&self, path: &Path, new: &str) -> Result<(), ProvisionError> {
        // Leftovers of an interrupted run.
        let _ = fs::remove_file(&self.staged);
        let _ = fs::remove_file(&self.backup);
        crate::core::durable::create_synced(
            &self.staged,
            new.as_bytes(),
            KEY_FILE_MODE,
            crate::core::durable::Owner::Root,
        )
        .map_err(io_err("writing", &self.staged))?;
        if self.previous == Previous::Present {
            fs::hard_link(&self.real, &self.backup).map_err(io_err("backing up", path))?;
        }
        fs::rename(&self.staged, &self.real).map_err(io_err("replacing", path))
    }

    /// sshd accepted it: the backup goes, and the directory is synced so the rename lasts.
    fn keep(&self) -> Result<(), ProvisionError> {
        if self.previous == Previous::Present {
            let _ = fs::remove_file(&self.backup);
        }
        crate::core::durable::sync_dir(&self.dir).map_err(io_err("syncing", &self.dir))
    }

    fn roll_back(&self) -> std::io::Result<()> {
        match self.previous {
            Previous::Present => fs::rename(&self.backup, &self.real)?,
            Previous::Absent => fs::remove_file(&self.real)?,
        }
        crate::core::durable::sync_dir(&self.dir)
    }
}

/// Telling sshd about the new drop-in, by the method `TIFFIN_SSHD_RELOAD` chose.
impl Applier<'_> {
    fn reload(&self) -> Result<String, ProvisionError> {
        match &self.reload {
            ReloadMethod::Never => Ok(
                "not reloading sshd (TIFFIN_SSHD_RELOAD=none): restart it to use the new drop-in"
                    .into(),
            ),
            ReloadMethod::Systemd => reload_systemd(),
            ReloadMethod::PidFile(file) => self.reload_pid_file(file.as_deref()),
            ReloadMethod::Auto if Path::new("/run/systemd/system").is_dir() => reload_systemd(),
            ReloadMethod::Auto => self.reload_pid_file(None),
        }
    }

    /// SIGHUP to the sshd whose pid `file` (or sshd's own `PidFile`) names, if it still runs.
    fn reload_pid_file(&self, file: Option<&Path>) -> Result<String, ProvisionError> {
        let file = file.map_or_else(|| sshd_pid_file(&self.sshd_config), Path::to_owned);
        // A pid is only meaningful in the pid namespace /proc shows; signalling it from
        // another one (a container, a half-entered lab machine) would hit a stranger.
        let proc_is_ours = fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse::<u32>().ok())
            == Some(std::process::id());
        if !proc_is_ours {
            return Err(ProvisionError::Unexpected(format!(
                "cannot reload sshd: /proc does not show this process (another pid namespace), so the pid in {} cannot be checked; reload sshd yourself",
                file.display()
            )));
        }
        let Some(pid) = live_sshd_pid(&self.sys.real(&file)) else {
            return Ok(format!(
                "sshd is not running (no live sshd pid in {}): it reads the drop-in when it starts",
                file.display()
            ));
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .map_err(|e| {
            ProvisionError::Unexpected(format!(
                "cannot send SIGHUP to sshd (pid {pid} from {}): {e}",
                file.display()
            ))
        })?;
        Ok(format!(
            "reloaded sshd (SIGHUP to pid {pid} from {})",
            file.display()
        ))
    }
}

/// `systemctl reload` of `ssh.service` (Debian) or `sshd.service`, whichever is active.
fn reload_systemd() -> Result<String, ProvisionError> {
    for unit in ["ssh.service", "sshd.service"] {
        let active = Command::new(tool("systemctl"))
            .args(["is-active", "--quiet", unit])
            .status()
            .is_ok_and(|s| s.success());
        if active {
            run("systemctl", &["reload", unit])?;
            return Ok(format!("reloaded sshd (systemctl reload {unit})"));
        }
    }
    Ok("sshd is not running (neither ssh.service nor sshd.service is active): it reads the drop-in when it starts".into())
}

/// The pid in a pid file, if a process of that pid is an sshd (pid files outlive their process).
fn live_sshd_pid(pid_file: &Path) -> Option<i32> {
    let pid = fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim().starts_with("sshd"))
        .then_some(pid)
}

/// `sshd -t` on a configuration file that includes (or is) the drop-in; `Err` holds sshd's message.
pub fn sshd_test(main_config: &Path) -> Result<(), String> {
    let out = Command::new(tool("sshd"))
        .arg("-t")
        .arg("-f")
        .arg(main_config)
        .output()
        .map_err(|e| format!("cannot run sshd -t ({e}); is openssh-server installed?"))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Err(format!(
            "sshd -t -f {} failed ({}): {stderr}",
            main_config.display(),
            out.status
        ))
    }
}

/// sshd's effective `PidFile` (from `sshd -T`), `/run/sshd.pid` when it cannot tell.
fn sshd_pid_file(main_config: &Path) -> PathBuf {
    let fallback = PathBuf::from("/run/sshd.pid");
    let Ok(out) = Command::new(tool("sshd"))
        .arg("-T")
        .arg("-f")
        .arg(main_config)
        .output()
    else {
        return fallback;
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("pidfile ").map(|p| PathBuf::from(p.trim())))
        .filter(|p| p.is_absolute())
        .unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_failures_carry_status_and_stderr() {
        let err = run("sh", &["-c", "echo 'useradd: group x exists' >&2; exit 9"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`sh -c"), "{text}");
        assert!(text.contains("exit status: 9"), "{text}");
        assert!(text.contains("useradd: group x exists"), "{text}");
        assert_eq!(run("sh", &["-c", "echo ok"]).unwrap(), "ok\n");
    }

    #[test]
    fn reload_methods() {
        assert_eq!("".parse(), Ok(ReloadMethod::Auto));
        assert_eq!("none".parse(), Ok(ReloadMethod::Never));
        assert_eq!(
            "pidfile:/run/lab/sshd.pid".parse(),
            Ok(ReloadMethod::PidFile(Some("/run/lab/sshd.pid".into())))
        );
        assert!("pidfile:relative".parse::<ReloadMethod>().is_err());
        assert!("sometimes".parse::<ReloadMethod>().is_err());
    }
}
