//! What provisioning reads from the server (accounts, groups, shadow, file metadata), behind a trait so plans are testable without root.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::core::release::Mode;

pub const PASSWD: &str = "/etc/passwd";
pub const GROUP: &str = "/etc/group";
pub const SHADOW: &str = "/etc/shadow";
pub const SSHD_CONFIG: &str = "/etc/ssh/sshd_config";
/// Where distributions put `nologin`, in the order we prefer them.
pub const NOLOGIN_CANDIDATES: &[&str] = &["/usr/sbin/nologin", "/sbin/nologin", "/usr/bin/nologin"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Dir => "a directory",
            Kind::File => "a regular file",
            Kind::Symlink => "a symlink",
            Kind::Other => "a special file",
        }
    }
}

/// The parts of a stat that matter for sshd's and our checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub uid: u32,
    pub gid: u32,
    pub mode: Mode,
}

impl Meta {
    /// sshd's rule for every component of a chroot path and of an authorized keys path.
    pub fn root_owned_not_writable(&self) -> bool {
        self.uid == 0 && self.mode.bits() & 0o022 == 0
    }
}

/// The filesystem mounted exactly at a directory: what bounds what can be stored there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mounted {
    pub fs: FsKind,
    pub bytes: u64,
    pub inodes: u64,
    pub flags: MountFlags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Tmpfs,
    Other,
}

/// Whether a mount runs nothing a client puts there: nosuid, nodev and noexec all set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountFlags {
    Inert,
    Permissive,
}

/// Read access to the server, by the paths the server sees (`/etc/passwd`, the chroot root…).
pub trait System {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// `lstat`: `None` when the path does not exist.
    fn lstat(&self, path: &Path) -> io::Result<Option<Meta>>;
    /// `stat` (follows symlinks): `None` when the path does not exist.
    fn stat(&self, path: &Path) -> io::Result<Option<Meta>>;
    /// Entry names of a directory, sorted.
    fn list(&self, path: &Path) -> io::Result<Vec<String>>;
    /// The filesystem mounted exactly at `path` (a directory on another device than its
    /// parent), `None` when nothing is, or the path does not exist.
    fn mount_at(&self, path: &Path) -> io::Result<Option<Mounted>>;
}

/// The running system, optionally seen under another root directory
/// (`TIFFIN_SYSTEM_ROOT`, for planning against a fake system in tests).
#[derive(Debug, Clone)]
pub struct RealSystem {
    pub root: PathBuf,
}

impl RealSystem {
    pub fn new(root: PathBuf) -> RealSystem {
        RealSystem { root }
    }
    /// `/`, or the directory `TIFFIN_SYSTEM_ROOT` names (tests plan and check against a copy).
    pub fn from_env() -> RealSystem {
        let root = std::env::var_os(super::SYSTEM_ROOT_ENV)
            .map_or_else(|| PathBuf::from("/"), PathBuf::from);
        RealSystem { root }
    }
    /// Where a server path really is.
    pub fn real(&self, path: &Path) -> PathBuf {
        match path.strip_prefix("/") {
            Ok(rel) if self.root != Path::new("/") => self.root.join(rel),
            _ => path.to_owned(),
        }
    }
    pub fn is_real_root(&self) -> bool {
        self.root == Path::new("/")
    }
}

fn meta_of(m: &fs::Metadata) -> Meta {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Other
    };
    Meta {
        kind,
        uid: m.uid(),
        gid: m.gid(),
        mode: Mode::from_stat(m.mode()),
    }
}

fn optional(r: io::Result<fs::Metadata>) -> io::Result<Option<Meta>> {
    match r {
        Ok(m) => Ok(Some(meta_of(&m))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl System for RealSystem {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(self.real(path))
    }
    fn lstat(&self, path: &Path) -> io::Result<Option<Meta>> {
        optional(fs::symlink_metadata(self.real(path)))
    }
    fn stat(&self, path: &Path) -> io::Result<Option<Meta>> {
        optional(fs::metadata(self.real(path)))
    }
    fn list(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.real(path))? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
    fn mount_at(&self, path: &Path) -> io::Result<Option<Mounted>> {
        let real = self.real(path);
        let parent = real.parent().unwrap_or(Path::new("/"));
        let Some(meta) = optional_raw(fs::symlink_metadata(&real))? else {
            return Ok(None);
        };
        if !meta.is_dir() || meta.dev() == fs::metadata(parent)?.dev() {
            return Ok(None);
        }
        let fs_type = nix::sys::statfs::statfs(&real)?.filesystem_type();
        let vfs = nix::sys::statvfs::statvfs(&real)?;
        let inert = nix::sys::statvfs::FsFlags::ST_NOSUID
            | nix::sys::statvfs::FsFlags::ST_NODEV
            | nix::sys::statvfs::FsFlags::ST_NOEXEC;
        Ok(Some(Mounted {
            fs: if fs_type == nix::sys::statfs::TMPFS_MAGIC {
                FsKind::Tmpfs
            } else {
                FsKind::Other
            },
            bytes: vfs.blocks() * vfs.fragment_size(),
            inodes: vfs.files(),
            flags: if vfs.flags().contains(inert) {
                MountFlags::Inert
            } else {
                MountFlags::Permissive
            },
        }))
    }
}

fn optional_raw(r: io::Result<fs::Metadata>) -> io::Result<Option<fs::Metadata>> {
    match r {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// One line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub comment: String,
    pub home: PathBuf,
    pub shell: PathBuf,
}

/// One line of /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The password state of an account, from /etc/shadow (never the hash itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    /// The password field is exactly `*`: no password matches, and the account is not locked.
    pub password: Password,
    /// The expiry field (days since 1970), empty when the account never expires.
    pub expires: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Password {
    /// `*`: what tiffin wants.
    NoPassword,
    /// Starts with `!` (useradd's default on Debian, `usermod -L`): sshd refuses key logins.
    Locked,
    /// Empty: anyone could log in where passwords are allowed.
    Empty,
    /// A real password hash (or another value): hosts need none.
    Usable,
}

impl Password {
    pub fn of_field(field: &str) -> Password {
        match field {
            "*" => Password::NoPassword,
            "" => Password::Empty,
            f if f.starts_with('!') => Password::Locked,
            _ => Password::Usable,
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            Password::NoPassword => "no password ('*')",
            Password::Locked => "locked ('!…', sshd refuses key logins)",
            Password::Empty => "empty password",
            Password::Usable => "a usable password",
        }
    }
}

/// Accounts and groups as the server's files say.
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    pub users: BTreeMap<String, User>,
    pub groups: BTreeMap<String, Group>,
    /// `None` when /etc/shadow is unreadable (a dry run by a non-root user).
    pub shadow: Option<BTreeMap<String, Shadow>>,
}

impl Accounts {
    pub fn load(sys: &dyn System) -> io::Result<Accounts> {
        let text = |p: &str| -> io::Result<String> {
            match sys.read(Path::new(p)) {
                Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(io::Error::new(e.kind(), format!("{p}: {e}"))),
            }
        };
        let users = parse_passwd(&text(PASSWD)?);
        let groups = parse_group(&text(GROUP)?);
        let shadow = match text(SHADOW) {
            Ok(t) => Some(parse_shadow(&t)),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => None,
            Err(e) => return Err(e),
        };
        Ok(Accounts {
            users,
            groups,
            shadow,
        })
    }

    pub fn group_by_gid(&self, gid: u32) -> Option<&Group> {
        self.groups.values().find(|g| g.gid == gid)
    }
    pub fn user_by_uid(&self, uid: u32) -> Option<&User> {
        self.users.values().find(|u| u.uid == uid)
    }
    /// A uid as people read it: the name, or the number when no account has it.
    pub fn user_name(&self, uid: u32) -> String {
        self.user_by_uid(uid)
            .map_or_else(|| uid.to_string(), |u| u.name.clone())
    }
    pub fn group_name(&self, gid: u32) -> String {
        self.group_by_gid(gid)
            .map_or_else(|| gid.to_string(), |g| g.name.clone())
    }
}

fn fields(line: &str) -> Option<Vec<&str>> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() || line.starts_with('#') || line.starts_with('+') || line.starts_with('-') {
        return None;
    }
    Some(line.split(':').collect())
}

pub fn parse_passwd(text: &str) -> BTreeMap<String, User> {
    text.lines()
        .filter_map(fields)
        .filter_map(|f| {
            (f.len() >= 7).then_some(())?;
            Some(User {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                comment: f[4].to_owned(),
                home: f[5].into(),
                shell: f[6].into(),
            })
        })
        .map(|u| (u.name.clone(), u))
        .collect()
}

pub fn parse_group(text: &str) -> BTreeMap<String, Group> {
    text.lines()
        .filter_map(fields)
        .filter_map(|f| {
            (f.len() >= 4).then_some(())?;
            Some(Group {
                name: f[0].to_owned(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .map(|g| (g.name.clone(), g))
        .collect()
}

pub fn parse_shadow(text: &str) -> BTreeMap<String, Shadow> {
    text.lines()
        .filter_map(fields)
        .filter(|f| f.len() >= 2)
        .map(|f| {
            let shadow = Shadow {
                password: Password::of_field(f[1]),
                expires: f.get(7).and_then(|e| e.parse().ok()),
            };
            (f[0].to_owned(), shadow)
        })
        .collect()
}

/// An in-memory server for unit tests of the planner.
#[cfg(test)]
pub mod fake {
    use super::*;

    #[derive(Debug, Clone)]
    struct Node {
        meta: Meta,
        content: Vec<u8>,
    }

    #[derive(Debug, Clone, Default)]
    pub struct FakeSystem {
        nodes: BTreeMap<PathBuf, Node>,
        mounts: BTreeMap<PathBuf, Mounted>,
    }

    impl FakeSystem {
        /// A minimal Debian-like root: /, /etc, /etc/ssh with an Include of sshd_config.d, /var/lib, nologin.
        pub fn debian() -> FakeSystem {
            let mut s = FakeSystem::default();
            for d in [
                "/",
                "/etc",
                "/etc/ssh",
                "/usr",
                "/usr/sbin",
                "/var",
                "/var/lib",
                "/run",
            ] {
                s.dir(d, 0, 0, 0o755);
            }
            s.file(
                "/etc/passwd",
                0,
                0,
                0o644,
                "root:x:0:0:root:/root:/bin/bash\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n",
            );
            s.file("/etc/group", 0, 0, 0o644, "root:x:0:\nnogroup:x:65534:\n");
            s.file(
                "/etc/shadow",
                0,
                42,
                0o640,
                "root:*:20000:0:99999:7:::\nsshd:*:20000:0:99999:7:::\n",
            );
            s.file(
                "/etc/ssh/sshd_config",
                0,
                0,
                0o644,
                "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\nSubsystem sftp /usr/lib/openssh/sftp-server\n",
            );
            s.dir("/etc/ssh/sshd_config.d", 0, 0, 0o755);
            s.file("/usr/sbin/nologin", 0, 0, 0o755, "");
            s
        }
        pub fn dir(&mut self, path: &str, uid: u32, gid: u32, mode: u32) -> &mut Self {
            self.put(path, Kind::Dir, uid, gid, mode, Vec::new())
        }
        pub fn file(
            &mut self,
            path: &str,
            uid: u32,
            gid: u32,
            mode: u32,
            content: &str,
        ) -> &mut Self {
            self.put(
                path,
                Kind::File,
                uid,
                gid,
                mode,
                content.as_bytes().to_vec(),
            )
        }
        pub fn append(&mut self, path: &str, line: &str) -> &mut Self {
            let node = self.nodes.get_mut(Path::new(path)).expect("file exists");
            node.content.extend_from_slice(line.as_bytes());
            self
        }
        pub fn remove(&mut self, path: &str) -> &mut Self {
            self.nodes.remove(Path::new(path));
            self
        }
        pub fn symlink(&mut self, path: &str) -> &mut Self {
            self.put(path, Kind::Symlink, 0, 0, 0o777, Vec::new())
        }
        /// A filesystem mounted on the directory `path`.
        pub fn mount(&mut self, path: &str, mounted: Mounted) -> &mut Self {
            self.mounts.insert(path.into(), mounted);
            self
        }
        fn put(
            &mut self,
            path: &str,
            kind: Kind,
            uid: u32,
            gid: u32,
            mode: u32,
            content: Vec<u8>,
        ) -> &mut Self {
            let meta = Meta {
                kind,
                uid,
                gid,
                mode: Mode::new(mode).expect("mode"),
            };
            self.nodes.insert(path.into(), Node { meta, content });
            self
        }
    }

    impl System for FakeSystem {
        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            match self.nodes.get(path) {
                Some(n) if n.meta.kind == Kind::File => Ok(n.content.clone()),
                Some(_) => Err(io::Error::other("not a file")),
                None => Err(io::ErrorKind::NotFound.into()),
            }
        }
        fn lstat(&self, path: &Path) -> io::Result<Option<Meta>> {
            Ok(self.nodes.get(path).map(|n| n.meta))
        }
        fn stat(&self, path: &Path) -> io::Result<Option<Meta>> {
            self.lstat(path)
        }
        fn list(&self, path: &Path) -> io::Result<Vec<String>> {
            Ok(self
                .nodes
                .keys()
                .filter(|p| p.parent() == Some(path) && p.as_path() != path)
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect())
        }
        fn mount_at(&self, path: &Path) -> io::Result<Option<Mounted>> {
            Ok(self.mounts.get(path).copied())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_states() {
        let s = parse_shadow(
            "a:*:1:0:99999:7:::\nb:!:1::::::\nc::1::::::\nd:$y$j9T$x:1::::::\ne:!*:1:::::1:\n",
        );
        assert_eq!(s["a"].password, Password::NoPassword);
        assert_eq!(s["b"].password, Password::Locked);
        assert_eq!(s["c"].password, Password::Empty);
        assert_eq!(s["d"].password, Password::Usable);
        assert_eq!(s["e"].password, Password::Locked);
        assert_eq!(s["e"].expires, Some(1));
        assert_eq!(s["a"].expires, None);
    }

    #[test]
    fn passwd_and_group() {
        let u = parse_passwd(
            "# c\nroot:x:0:0:root:/root:/bin/bash\nbad line\nt:x:999:998:tiffin host a:/c/a:/usr/sbin/nologin\n",
        );
        assert_eq!(u.len(), 2);
        assert_eq!(u["t"].home, PathBuf::from("/c/a"));
        assert_eq!(u["t"].gid, 998);
        let g = parse_group("t:x:998:\nadm:x:4:alice,bob\n");
        assert_eq!(g["adm"].members, vec!["alice", "bob"]);
        assert!(g["t"].members.is_empty());
    }

    #[test]
    fn real_system_maps_paths_under_its_root() {
        let s = RealSystem::new("/tmp/x".into());
        assert_eq!(
            s.real(Path::new("/etc/passwd")),
            PathBuf::from("/tmp/x/etc/passwd")
        );
        let r = RealSystem::new("/".into());
        assert_eq!(
            r.real(Path::new("/etc/passwd")),
            PathBuf::from("/etc/passwd")
        );
    }
}
