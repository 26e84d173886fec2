//! Applying a plan with the system's own tools (groupadd, useradd, usermod, sshd -t) and plain syscalls.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::ProvisionError;
use super::plan::{AccountFix, Action, KEY_FILE_MODE, Want};
use super::system::{Accounts, Password, RealSystem};
use crate::layout::{SERVER_DIR_MODE, SERVER_FILE_MODE};

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
    pub sys: &'a RealSystem,
    pub sshd_config: PathBuf,
    /// The file `sshd -t -f` checks: the main config when it includes the drop-in, else the drop-in.
    pub validate: PathBuf,
    pub reload: ReloadMethod,
}

/// One provisioning at a time: two would race on the drop-in's backup and on useradd.
pub fn lock() -> Result<crate::durable::Lock, ProvisionError> {
    let dir = ["/run/lock", "/run", "/tmp"]
        .into_iter()
        .map(Path::new)
        .find(|d| d.is_dir())
        .unwrap_or(Path::new("/tmp"));
    crate::durable::Lock::try_exclusive(&dir.join("tiffin-provision.lock")).map_err(|e| match e {
        crate::durable::LockError::Busy { path } => ProvisionError::Unexpected(format!(
            "another tiffin provision is running (it holds {}); wait for it and run again",
            path.display()
        )),
        crate::durable::LockError::Io { path, source } => ProvisionError::Io {
            step: "opening",
            path,
            source,
        },
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

impl Applier<'_> {
    fn accounts(&self) -> Result<Accounts, ProvisionError> {
        Accounts::load(self.sys).map_err(ProvisionError::inspect(Path::new("/etc")))
    }

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

    /// Applies one action; returns a line to print when there is more to say than the plan did.
    pub fn apply(&self, action: &Action) -> Result<Option<String>, ProvisionError> {
        match action {
            Action::CreateGroup { name } => {
                run("groupadd", &["--system", name])?;
            }
            Action::CreateAccount {
                name,
                host,
                group,
                home,
                shell,
            } => {
                let comment = format!("{}{host}", super::plan::COMMENT_PREFIX);
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
                self.verify_unlocked(name)?;
            }
            Action::FixAccount { name, fixes } => {
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
                args.push(name.clone());
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run("usermod", &args)?;
            }
            Action::UnlockAccount { name, .. } => {
                run("usermod", &["--password", "*", "--expiredate", "", name])?;
                self.verify_unlocked(name)?;
            }
            Action::CreateDir { path, want } => {
                let (uid, gid) = self.ids(want)?;
                let real = self.sys.real(path);
                match fs::DirBuilder::new().mode(0o700).create(&real) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err("creating", path)(e)),
                }
                self.set_meta(path, uid, gid, want.mode.bits())?;
            }
            Action::Repair { path, want, .. } => {
                let (uid, gid) = self.ids(want)?;
                self.set_meta(path, uid, gid, want.mode.bits())?;
            }
            Action::RepairTree { path, group, .. } => {
                let (_, gid) = self.ids(&Want {
                    owner: "root".into(),
                    group: group.clone(),
                    mode: crate::release::Mode::from_stat(0),
                })?;
                self.repair_tree(path, gid)?;
            }
            Action::WriteKey { path, content, .. } => {
                crate::durable::write_atomic(
                    &self.sys.real(path),
                    content.as_bytes(),
                    KEY_FILE_MODE,
                    crate::durable::Owner::Root,
                )
                .map_err(io_err("writing", path))?;
            }
            Action::WriteDropin { path, old, new, .. } => {
                self.write_dropin(path, old.is_some(), new)?;
            }
            Action::Reload => return self.reload().map(Some),
            Action::LockAccount { name, .. } => {
                // Locking alone does not stop key logins when sshd uses PAM; expiry does.
                run("usermod", &["--lock", "--expiredate", "1", name])?;
            }
            Action::RemoveKey { path } => {
                fs::remove_file(self.sys.real(path)).map_err(io_err("removing", path))?;
            }
            Action::MoveChroot { from, to } => {
                fs::rename(self.sys.real(from), self.sys.real(to))
                    .map_err(io_err("moving", from))?;
            }
        }
        Ok(None)
    }

    fn repair_tree(&self, path: &Path, gid: u32) -> Result<(), ProvisionError> {
        let real = self.sys.real(path);
        let meta = fs::symlink_metadata(&real).map_err(io_err("inspecting", path))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            self.set_meta(path, 0, gid, SERVER_DIR_MODE)?;
            for entry in fs::read_dir(&real).map_err(io_err("listing", path))? {
                let entry = entry.map_err(io_err("listing", path))?;
                self.repair_tree(&path.join(entry.file_name()), gid)?;
            }
        } else if kind.is_file() {
            self.set_meta(path, 0, gid, SERVER_FILE_MODE)?;
        }
        Ok(())
    }

    /// Puts the new drop-in in place, lets `sshd -t` judge the whole configuration, and
    /// puts the previous file (the same inode, so byte-identical) back if sshd refuses it.
    fn write_dropin(&self, path: &Path, had_old: bool, new: &str) -> Result<(), ProvisionError> {
        let real = self.sys.real(path);
        let dir = real.parent().unwrap_or(Path::new("/"));
        let name = real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Dot names: sshd's `Include dir/*.conf` (or `dir/*`) never reads them.
        let staged = dir.join(format!(".{name}.tiffin-new"));
        let backup = dir.join(format!(".{name}.tiffin-previous"));
        let _ = fs::remove_file(&staged);
        let _ = fs::remove_file(&backup);
        crate::durable::create_synced(
            &staged,
            new.as_bytes(),
            KEY_FILE_MODE,
            crate::durable::Owner::Root,
        )
        .map_err(io_err("writing", &staged))?;
        if had_old {
            fs::hard_link(&real, &backup).map_err(io_err("backing up", path))?;
        }
        fs::rename(&staged, &real).map_err(io_err("replacing", path))?;
        let check = sshd_test(&self.validate);
        let restore = || -> std::io::Result<()> {
            if had_old {
                fs::rename(&backup, &real)?;
            } else {
                fs::remove_file(&real)?;
            }
            crate::durable::sync_dir(dir)
        };
        match check {
            Ok(()) => {
                if had_old {
                    let _ = fs::remove_file(&backup);
                }
                crate::durable::sync_dir(dir).map_err(io_err("syncing", dir))?;
                Ok(())
            }
            Err(message) => {
                let restored = restore();
                // Tells a broken drop-in from a server where `sshd -t` fails anyway
                // (a broken sshd_config, a missing /run/sshd when sshd is stopped).
                let fails_without_it = restored.is_ok() && sshd_test(&self.validate).is_err();
                Err(ProvisionError::SshdRejected {
                    dropin: path.to_owned(),
                    message,
                    restored: restored.err().map(|e| e.to_string()),
                    had_old,
                    fails_without_it,
                })
            }
        }
    }

    fn reload(&self) -> Result<String, ProvisionError> {
        let method = match &self.reload {
            ReloadMethod::Auto if Path::new("/run/systemd/system").is_dir() => {
                ReloadMethod::Systemd
            }
            ReloadMethod::Auto => ReloadMethod::PidFile(None),
            other => other.clone(),
        };
        match method {
            ReloadMethod::Never => Ok(
                "not reloading sshd (TIFFIN_SSHD_RELOAD=none): restart it to use the new drop-in"
                    .into(),
            ),
            ReloadMethod::Systemd => {
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
            ReloadMethod::PidFile(file) => {
                let file = file.unwrap_or_else(|| sshd_pid_file(&self.sshd_config));
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
                let real = self.sys.real(&file);
                let pid = match fs::read_to_string(&real) {
                    Ok(text) => text.trim().parse::<i32>().ok(),
                    Err(_) => None,
                };
                let running = pid.filter(|pid| {
                    fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim().starts_with("sshd"))
                });
                match running {
                    Some(pid) => {
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
                    None => Ok(format!(
                        "sshd is not running (no live sshd pid in {}): it reads the drop-in when it starts",
                        file.display()
                    )),
                }
            }
            ReloadMethod::Auto => unreachable!("resolved above"),
        }
    }
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
