//! Each host's `reports/` on a small tmpfs of its own: the bound on what a client can store on the server, and the systemd unit that mounts it again at boot.
//!
//! `reports/` is the one place a client can write. On the filesystem that also holds every
//! host's releases, one client could fill it and make the next publish of any host fail; on a
//! tmpfs of its own it can fill only that tmpfs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::core::names::HostName;

use super::system::{FsKind, MountFlags, Mounted, RealSystem, System};

/// What one host may keep in reports/: its report and rebuild log (64 KiB tails) with
/// their upload temporaries fit many times over.
/// The mode of reports/: its account alone writes there (sshd's chroot rules need root above it).
pub const REPORTS_MODE: u32 = 0o700;
pub const REPORTS_BYTES: u64 = 1024 * 1024;
pub const REPORTS_INODES: u64 = 64;
/// Where generated units go, and where `systemctl enable` links one `WantedBy=local-fs.target`.
pub const UNIT_DIR: &str = "/etc/systemd/system";
pub const WANTS_DIR: &str = "/etc/systemd/system/local-fs.target.wants";

/// How the reports/ mounts come back after the server reboots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtBoot {
    /// systemd manages this mount namespace: one generated, enabled `.mount` unit per host.
    SystemdUnits,
    /// Nothing here would mount them (no systemd, or another mount namespace than its):
    /// the plan says how to get them back.
    Manual,
}

impl AtBoot {
    /// systemd when it runs (`/run/systemd/system`) and this process shares PID 1's mount
    /// namespace: a unit mounts in PID 1's namespace, so from any other it would mount elsewhere.
    pub fn detect(sys: &RealSystem) -> AtBoot {
        let systemd = matches!(
            sys.stat(Path::new("/run/systemd/system")),
            Ok(Some(m)) if m.kind == super::system::Kind::Dir
        );
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        // Unreadable (not root, in a dry run): assume the usual case, one namespace.
        let elsewhere =
            sys.is_real_root() && matches!((ns("self"), ns("1")), (Some(a), Some(b)) if a != b);
        if systemd && !elsewhere {
            AtBoot::SystemdUnits
        } else {
            AtBoot::Manual
        }
    }
}

/// The mount at reports/ is the bound tiffin sets: a tmpfs of that size and inode count
/// on which nothing runs. Owner and mode are judged from a stat, like every other path.
pub fn bounded(m: &Mounted) -> bool {
    m.fs == FsKind::Tmpfs
        && m.bytes == REPORTS_BYTES
        && m.inodes == REPORTS_INODES
        && m.flags == MountFlags::Inert
}

/// The size and inode options, which a remount can change.
pub fn bound_options() -> String {
    format!("size={}k,nr_inodes={REPORTS_INODES}", REPORTS_BYTES / 1024)
}

/// The tmpfs options of a new mount: the bound, and the root directory as reports/ must be
/// (a tmpfs's default 1777 would let every account in).
pub fn mount_options(uid: u32, gid: u32) -> String {
    format!(
        "{},mode={:04o},uid={uid},gid={gid}",
        bound_options(),
        REPORTS_MODE
    )
}

/// `systemd-escape --path --suffix=mount PATH`: the only name systemd accepts for a mount unit.
pub fn unit_name(path: &Path) -> String {
    let text = path.to_string_lossy();
    let trimmed = text.trim_matches('/');
    let mut out = String::new();
    if trimmed.is_empty() {
        out.push('-');
    }
    let parts = trimmed.split('/').filter(|p| !p.is_empty());
    for (i, part) in parts.enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, b) in part.bytes().enumerate() {
            let keep = b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.';
            if keep && !(i == 0 && j == 0 && b == b'.') {
                out.push(b as char);
            } else {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push_str(".mount");
    out
}

pub fn unit_path(reports: &Path) -> PathBuf {
    Path::new(UNIT_DIR).join(unit_name(reports))
}

pub fn wants_link(reports: &Path) -> PathBuf {
    Path::new(WANTS_DIR).join(unit_name(reports))
}

/// The unit that mounts a host's reports/ at boot.
pub fn unit_text(host: &HostName, reports: &Path, uid: u32, gid: u32) -> String {
    format!(
        "{marker} (docs/provision.md): do not edit, every run rewrites it.\n\
         # Bounds what host {host} can store on this server: reports/ is the one place it writes.\n\
         [Unit]\n\
         Description=tiffin: the bounded reports/ of host {host}\n\
         \n\
         [Mount]\n\
         What=tmpfs\n\
         Where={where_}\n\
         Type=tmpfs\n\
         Options={options},nosuid,nodev,noexec\n\
         \n\
         [Install]\n\
         WantedBy=local-fs.target\n",
        marker = super::dropin::MARKER,
        where_ = reports.display(),
        options = mount_options(uid, gid),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_systemd_escapes() {
        let cases = [
            "/var/lib/tiffin/chroots/web-1/reports",
            "/srv/tiffin/chroots/a.b/reports",
            "/x/.hidden/y",
            "/",
        ];
        for path in cases {
            let ours = unit_name(Path::new(path));
            // Where systemd-escape is installed, it must agree.
            if let Ok(out) = std::process::Command::new("systemd-escape")
                .args(["--path", "--suffix=mount", path])
                .output()
            {
                assert_eq!(ours, String::from_utf8_lossy(&out.stdout).trim(), "{path}");
            }
        }
        assert_eq!(
            unit_name(Path::new("/var/lib/tiffin/chroots/web-1/reports")),
            "var-lib-tiffin-chroots-web\\x2d1-reports.mount"
        );
    }

    #[test]
    fn the_bound() {
        assert_eq!(
            mount_options(990, 991),
            "size=1024k,nr_inodes=64,mode=0700,uid=990,gid=991"
        );
        let m = Mounted {
            fs: FsKind::Tmpfs,
            bytes: REPORTS_BYTES,
            inodes: REPORTS_INODES,
            flags: MountFlags::Inert,
        };
        assert!(bounded(&m));
        assert!(!bounded(&Mounted {
            flags: MountFlags::Permissive,
            ..m
        }));
        assert!(!bounded(&Mounted {
            bytes: 2 * REPORTS_BYTES,
            ..m
        }));
    }
}
