//! `tiffin provision`: make OpenSSH serve every host (accounts, chroots, keys, sshd drop-in).
//!
//! It inspects the server (`system`), computes a plan of typed actions (`plan`), prints it, and,
//! unless `--dry-run`, applies it (`apply`). The sshd drop-in (`dropin`) is validated with
//! `sshd -t` in place before sshd is reloaded; a refused drop-in is rolled back.

pub mod apply;
pub mod dropin;
pub mod plan;
pub mod system;

use std::path::{Path, PathBuf};

use crate::cli::{self, Error, Exit, FleetArgs};

pub use apply::ReloadMethod;
pub use plan::{Action, Plan, PlanOptions, Target};
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
        "sshd refused the new drop-in {}, so sshd was not reloaded; {}\n{message}\n{}",
        dropin.display(),
        match (restored, had_old) {
            (Some(e), _) => format!("restoring the previous drop-in FAILED ({e}): restore it by hand before sshd restarts"),
            (None, true) => "the previous drop-in is back in place, unchanged".to_owned(),
            (None, false) => "the new drop-in was removed again".to_owned(),
        },
        if *fails_without_it {
            "sshd -t fails without the new drop-in too, so the cause is elsewhere in sshd's configuration or setup: fix what sshd names, then run `tiffin provision` again."
        } else {
            "Fix server.sshd_extra in fleet.toml (or the line sshd names), then run `tiffin provision` again."
        }
    )]
    SshdRejected {
        dropin: PathBuf,
        message: String,
        restored: Option<String>,
        had_old: bool,
        fails_without_it: bool,
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

/// What the fleet asks for, checked for what sshd_config can express.
pub fn target(fleet: &crate::fleet::Fleet, chroot_root: PathBuf) -> Result<Target, ProvisionError> {
    let server = &fleet.config.server;
    for (what, path) in [
        ("chroot root", &chroot_root),
        ("server.authorized_keys_dir", &server.authorized_keys_dir),
        ("server.sshd_dropin", &server.sshd_dropin),
    ] {
        if !path.is_absolute() {
            return Err(ProvisionError::BadInput(format!(
                "the {what} {} must be an absolute path",
                path.display()
            )));
        }
        if let Some(c) = dropin::unsafe_in_config(path) {
            return Err(ProvisionError::BadInput(format!(
                "the {what} {} contains {c:?}, which sshd_config cannot take literally: choose a path without spaces, quotes, '%', '#' or ','",
                path.display()
            )));
        }
    }
    for line in &server.sshd_extra {
        let keyword = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if keyword == "match" || keyword == "include" {
            return Err(ProvisionError::BadInput(format!(
                "fleet.toml server.sshd_extra {line:?}: a {keyword} line would change which accounts the blocks apply to; only per-account settings belong there"
            )));
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
        keys_dir: server.authorized_keys_dir.clone(),
        dropin: server.sshd_dropin.clone(),
        sshd_config: PathBuf::from(system::SSHD_CONFIG),
        sshd_extra: server.sshd_extra.clone(),
    })
}

pub fn command(args: &FleetArgs, dry_run: bool, prune: bool) -> Result<Exit, Error> {
    let fleet = args.load()?;
    let all: Vec<_> = fleet.hosts.keys().cloned().collect();
    cli::require_valid(&fleet, &all)?;
    let target = target(&fleet, args.chroot_root(&fleet))?;

    let root = std::env::var_os(SYSTEM_ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    let sys = RealSystem::new(root);
    if !sys.is_real_root() && !dry_run {
        return Err(ProvisionError::BadInput(format!(
            "{SYSTEM_ROOT_ENV} is only for planning: use it with --dry-run"
        ))
        .into());
    }
    let reload: ReloadMethod = std::env::var(RELOAD_ENV)
        .unwrap_or_default()
        .parse()
        .map_err(ProvisionError::BadInput)?;
    if !dry_run && !nix::unistd::geteuid().is_root() {
        return Err(ProvisionError::NotRoot.into());
    }

    // Held from planning to the last action, so a concurrent run cannot act on a stale plan.
    let _lock = if dry_run { None } else { Some(apply::lock()?) };
    let opts = PlanOptions {
        prune,
        now: cli::now(),
    };
    let plan = plan::plan(&target, &sys, &opts)?;
    print!("{}", plan.render(&target));
    if plan.is_blocked() {
        return Err(ProvisionError::Blocked.into());
    }
    if dry_run {
        if !plan.actions.is_empty() {
            println!("dry run: nothing was changed");
        }
        return Ok(Exit::Ok);
    }
    if plan.actions.is_empty() {
        return Ok(Exit::Ok);
    }
    let applier = apply::Applier {
        sys: &sys,
        sshd_config: target.sshd_config.clone(),
        // Without the Include, checking sshd_config would not read the drop-in at all.
        validate: if plan.sshd_reads_dropin {
            target.sshd_config.clone()
        } else {
            target.dropin.clone()
        },
        reload,
    };
    let total = plan.actions.len();
    for (i, action) in plan.actions.iter().enumerate() {
        match applier.apply(action) {
            Ok(Some(message)) => println!("{message}"),
            Ok(None) => {}
            Err(e @ ProvisionError::SshdRejected { .. }) => return Err(e.into()),
            Err(source) => {
                return Err(ProvisionError::Step {
                    step: i + 1,
                    total,
                    action: action
                        .to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                    source: Box::new(source),
                }
                .into());
            }
        }
    }
    println!("done: {total} change(s) applied");
    Ok(Exit::Ok)
}
