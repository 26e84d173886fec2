//! What tiffin may take over on the server: only a drop-in it wrote, only a chroot root it created (or an empty one); judged alike for provision's plan and for `tiffin check`.

use std::path::Path;

use crate::admin::fleet::rules::Setting;
use crate::admin::fleet::{FLEET_FILE, ServerSettings};
use crate::core::diag::Problem;
use crate::core::layout::{CURRENT_FILE, RELEASES_DIR, REPORTS_DIR, STAGING_DIR};
use crate::core::names::HostName;

use super::ProvisionError;
use super::dropin::MARKER;
use super::system::{Kind, System};

/// The file that makes a chroot root tiffin's: written when provision creates or adopts it.
/// Host names never start with a dot, so it cannot clash with a host's chroot.
/// Where pruned chroots go, inside the chroot root (host names never start with a dot).
pub const PRUNED_DIR: &str = ".pruned";
pub const CHROOT_ROOT_MARKER: &str = ".tiffin-chroot-root";
pub const CHROOT_ROOT_MARKER_TEXT: &str = "This directory is the chroot root of a tiffin fleet: `tiffin provision` created or adopted it and manages what is in it (docs/provision.md).\n";
/// publish's lock, in every chroot root it wrote to.
const PUBLISH_LOCK: &str = ".publish.lock";
/// What publish (or an earlier provision) leaves in a host's directory.
const HOST_ENTRIES: &[&str] = &[CURRENT_FILE, RELEASES_DIR, REPORTS_DIR, STAGING_DIR];

/// Whose the chroot root is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChrootRoot {
    Missing,
    /// It carries the marker: tiffin created or adopted it, and manages its owner and mode.
    Marked,
    /// No marker, but nothing in it that is not tiffin's: provision marks it and uses it as is.
    Adoptable(Adoption),
    /// Someone else's; the message says why and what to do.
    Foreign(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// Provision creates it in this run.
    Created,
    Empty,
    /// It holds only what `tiffin publish` writes (publish ran first, or an older tiffin).
    Published,
}

/// Whose the drop-in path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropin {
    Missing,
    /// A drop-in tiffin wrote, with its text.
    Ours(String),
    Foreign(String),
}

pub fn chroot_root(sys: &dyn System, s: Setting) -> Result<ChrootRoot, ProvisionError> {
    let path = s.path;
    let Some(meta) = sys.stat(path).map_err(ProvisionError::inspect(path))? else {
        return Ok(ChrootRoot::Missing);
    };
    if meta.kind != Kind::Dir {
        return Ok(ChrootRoot::Foreign(format!(
            "{s} is {}, not a directory: choose a directory of tiffin's own, such as /var/lib/tiffin/chroots",
            meta.kind.describe()
        )));
    }
    let marker = sys.lstat(&path.join(CHROOT_ROOT_MARKER));
    if matches!(marker, Ok(Some(m)) if m.kind == Kind::File && m.uid == 0) {
        return Ok(ChrootRoot::Marked);
    }
    let entries = sys.list(path).map_err(ProvisionError::inspect(path))?;
    if entries.is_empty() {
        return Ok(ChrootRoot::Adoptable(Adoption::Empty));
    }
    let mut foreign = Vec::new();
    for name in &entries {
        if !is_tiffins(sys, path, name)? {
            foreign.push(name.as_str());
        }
    }
    if foreign.is_empty() {
        return Ok(ChrootRoot::Adoptable(Adoption::Published));
    }
    let shown: Vec<String> = foreign.iter().take(3).map(|n| format!("{n:?}")).collect();
    let more = if foreign.len() > 3 { ", …" } else { "" };
    Ok(ChrootRoot::Foreign(format!(
        "{s} holds what tiffin did not put there ({}{more}) and has no {CHROOT_ROOT_MARKER}: tiffin takes over only a chroot root it created or an empty directory. Choose a directory of tiffin's own (such as /var/lib/tiffin/chroots); if this is the chroot root of an earlier tiffin, mark it: `touch {}/{CHROOT_ROOT_MARKER}`",
        shown.join(", "),
        path.display()
    )))
}

/// An entry publish or provision writes into a chroot root: the publish lock, `.pruned`, or a
/// host's directory holding nothing but CURRENT, releases/, reports/ and .staging/.
fn is_tiffins(sys: &dyn System, root: &Path, name: &str) -> Result<bool, ProvisionError> {
    let path = root.join(name);
    let Some(meta) = sys.lstat(&path).map_err(ProvisionError::inspect(&path))? else {
        return Ok(true);
    };
    Ok(match meta.kind {
        Kind::File => name == PUBLISH_LOCK,
        Kind::Dir if name == PRUNED_DIR => true,
        Kind::Dir if name.parse::<HostName>().is_ok() => sys
            .list(&path)
            .map_err(ProvisionError::inspect(&path))?
            .iter()
            .all(|e| HOST_ENTRIES.contains(&e.as_str())),
        _ => false,
    })
}

pub fn dropin(sys: &dyn System, s: Setting) -> Result<Dropin, ProvisionError> {
    let path = s.path;
    let Some(meta) = sys.lstat(path).map_err(ProvisionError::inspect(path))? else {
        return Ok(Dropin::Missing);
    };
    let what_to_do = "name a new file for it in fleet.toml (such as /etc/ssh/sshd_config.d/tiffin.conf), or move that file away if nothing needs it";
    if meta.kind != Kind::File {
        return Ok(Dropin::Foreign(format!(
            "{s} is {}: tiffin writes its drop-in only as a regular file of its own; {what_to_do}",
            meta.kind.describe()
        )));
    }
    let text = String::from_utf8_lossy(&sys.read(path).map_err(ProvisionError::inspect(path))?)
        .into_owned();
    if text.lines().next().is_some_and(|l| l.starts_with(MARKER)) {
        return Ok(Dropin::Ours(text));
    }
    Ok(Dropin::Foreign(format!(
        "{s} exists and tiffin did not write it (its first line is not \"{MARKER} …\"): tiffin replaces only a drop-in it wrote; {what_to_do}"
    )))
}

/// For `tiffin check` on the server: the chroot root and drop-in of fleet.toml when they exist
/// and are not tiffin's. Where they do not exist (not the server) it says nothing.
pub fn problems(server: &ServerSettings, sys: &dyn System) -> Vec<Problem> {
    let root_setting = server.chroot_root_setting();
    let dropin_setting = server.dropin_setting();
    let judged = [
        (
            root_setting,
            chroot_root(sys, root_setting).map(|r| match r {
                ChrootRoot::Foreign(m) => Some(m),
                _ => None,
            }),
        ),
        (
            dropin_setting,
            dropin(sys, dropin_setting).map(|d| match d {
                Dropin::Foreign(m) => Some(m),
                _ => None,
            }),
        ),
    ];
    judged
        .into_iter()
        .filter_map(|(s, found)| match found {
            Ok(None) => None,
            Ok(Some(message)) => Some(Problem::error(None, FLEET_FILE, message)),
            Err(e) => Some(Problem::warning(
                None,
                FLEET_FILE,
                format!("{s}: cannot tell whether it is tiffin's ({e})"),
            )),
        })
        .collect()
}
