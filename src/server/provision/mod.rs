//! `tiffin provision`: make OpenSSH serve every host (accounts, chroots, keys, sshd drop-in).
//!
//! It inspects the server (`system`), computes a plan of typed actions (`plan`, `action`),
//! prints it, and, unless `--dry-run`, applies it (`apply`). The sshd drop-in (`dropin`) is
//! validated with `sshd -t` in place before sshd is reloaded; a refused drop-in is rolled back.
//! It takes over only what is tiffin's (`ownership`: a drop-in it wrote, a chroot root it
//! created) and bounds what each host can store (`reports`: a tmpfs on every reports/).

pub mod action;
pub mod apply;
pub mod dropin;
pub mod ownership;
pub mod plan;
pub mod reports;
pub mod system;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::admin::fleet::rules::{self, Origin, Setting};

pub use action::Action;
pub use apply::ReloadMethod;
pub use plan::{Plan, PlanOptions, Target};
pub use system::{RealSystem, System};

/// Test hook: plan against a copy of a server under this directory instead of `/` (dry runs only).
pub const SYSTEM_ROOT_ENV: &str = "TIFFIN_SYSTEM_ROOT";
/// How to reload sshd: auto (default), systemd, pidfile, pidfile:/PATH, none.
pub const RELOAD_ENV: &str = "TIFFIN_SSHD_RELOAD";

/// Errors of provisioning; each says what failed, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    BadInput(String),
    #[error(
        "tiffin provision creates accounts and changes sshd's configuration, so it must run as root (try `sudo tiffin provision`, or `tiffin provision --dry-run` to see the plan)"
    )]
    NotRoot,
    #[error("cannot inspect {path}: {source}{}", if source.kind() == std::io::ErrorKind::PermissionDenied { " (run tiffin provision as root)" } else { "" })]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "nothing was changed: the server has problems provisioning cannot fix by itself (listed above)"
    )]
    Blocked,
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Tool {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} does not exist although an earlier step should have created it")]
    Missing(String),
    #[error("{0}")]
    Unexpected(String),
    #[error(
        "sshd refused the new drop-in {}, so sshd was not reloaded; {rollback}\n{message}\n{cause}",
        dropin.display()
    )]
    SshdRejected {
        dropin: PathBuf,
        message: String,
        rollback: Rollback,
        cause: Refusal,
    },
    #[error("step {step} of {total} failed ({action}): {source}\nThe {done} step(s) before it are done; fix the cause and run `tiffin provision` again, it continues from there.", done = step - 1)]
    Step {
        step: usize,
        total: usize,
        action: String,
        #[source]
        source: Box<ProvisionError>,
    },
}

/// What became of the previous drop-in once sshd refused the new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollback {
    /// The previous file is back (the same inode).
    Restored,
    /// There was none: the new one was removed.
    Removed,
    /// Putting things back failed; the error says why.
    Failed(String),
}

impl fmt::Display for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rollback::Failed(e) => write!(
                f,
                "restoring the previous drop-in FAILED ({e}): restore it by hand before sshd restarts"
            ),
            Rollback::Restored => f.write_str("the previous drop-in is back in place, unchanged"),
            Rollback::Removed => f.write_str("the new drop-in was removed again"),
        }
    }
}

/// Where `sshd -t`'s objection lies, found by checking again without the new drop-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// In the drop-in (or could not be told apart: the rollback failed).
    Dropin,
    /// `sshd -t` fails without the new drop-in too.
    Elsewhere,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Elsewhere => {
                "sshd -t fails without the new drop-in too, so the cause is elsewhere in sshd's configuration or setup: fix what sshd names, then run `tiffin provision` again."
            }
            Refusal::Dropin => {
                "Fix server.sshd_extra in fleet.toml (or the line sshd names), then run `tiffin provision` again."
            }
        })
    }
}

impl ProvisionError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ProvisionError::BadInput(_) => 2,
            _ => 1,
        }
    }
    pub fn inspect(path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError {
        let path = path.to_owned();
        move |source| ProvisionError::Inspect { path, source }
    }
}

/// What the fleet asks for. fleet.toml's settings passed `fleet::rules` when the fleet loaded;
/// a chroot root given with `--chroot-root` instead is held to the same rules here.
pub fn target(
    fleet: &crate::admin::fleet::Fleet,
    chroot_override: Option<PathBuf>,
) -> Result<Target, ProvisionError> {
    let server = &fleet.config.server;
    let (chroot_root, chroot_root_from) = match chroot_override {
        Some(path) => (path, Origin::Flag),
        None => (server.chroot_root.clone(), Origin::FleetToml),
    };
    if chroot_root_from == Origin::Flag {
        let setting = Setting {
            key: rules::CHROOT_ROOT_FLAG,
            path: &chroot_root,
            origin: Origin::Flag,
        };
        let problems = rules::messages(server, setting);
        if !problems.is_empty() {
            return Err(ProvisionError::BadInput(problems.join("\n")));
        }
    }
    let hosts = fleet
        .hosts
        .values()
        .map(|h| plan::HostTarget {
            host: h.name.clone(),
            account: fleet.account_name(&h.name),
            key: h.public_key.clone(),
        })
        .collect();
    Ok(Target {
        hosts,
        user_prefix: server.user_prefix.clone(),
        chroot_root,
        chroot_root_from,
        keys_dir: server.authorized_keys_dir.clone(),
        dropin: server.sshd_dropin.clone(),
        sshd_config: PathBuf::from(system::SSHD_CONFIG),
        sshd_extra: server.sshd_extra.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(rollback: Rollback, cause: Refusal) -> String {
        ProvisionError::SshdRejected {
            dropin: "/etc/ssh/sshd_config.d/tiffin.conf".into(),
            message: "sshd -t said no".into(),
            rollback,
            cause,
        }
        .to_string()
    }

    #[test]
    fn a_refused_dropin_says_what_was_rolled_back_and_where_to_look() {
        let head = "sshd refused the new drop-in /etc/ssh/sshd_config.d/tiffin.conf, so sshd was not reloaded; ";
        assert_eq!(
            rejected(Rollback::Restored, Refusal::Dropin),
            format!(
                "{head}the previous drop-in is back in place, unchanged\nsshd -t said no\nFix server.sshd_extra in fleet.toml (or the line sshd names), then run `tiffin provision` again."
            )
        );
        assert_eq!(
            rejected(Rollback::Removed, Refusal::Elsewhere),
            format!(
                "{head}the new drop-in was removed again\nsshd -t said no\nsshd -t fails without the new drop-in too, so the cause is elsewhere in sshd's configuration or setup: fix what sshd names, then run `tiffin provision` again."
            )
        );
        assert_eq!(
            rejected(Rollback::Failed("EIO".into()), Refusal::Dropin),
            format!(
                "{head}restoring the previous drop-in FAILED (EIO): restore it by hand before sshd restarts\nsshd -t said no\nFix server.sshd_extra in fleet.toml (or the line sshd names), then run `tiffin provision` again."
            )
        );
    }
}
