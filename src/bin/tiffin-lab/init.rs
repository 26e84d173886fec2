//! `tiffin-lab machine-init`: pid 1 of a lab machine. It builds the machine's private view of the filesystem, says "ready", then only reaps orphans until the lab kills it (and with it, every process of the machine).
//!
//! It runs as the child of `unshare --mount --uts --ipc --pid --fork
//! --mount-proc --propagation private`, started inside the machine's network
//! namespace, so every mount below is private to the machine.

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::scenario::Init;

/// tiffin's default state directory, on the server and on clients.
const STATE_DIR: &str = "/var/lib/tiffin";
/// Directories that get a copy-on-write overlay: everything a system tool writes to. `/nix`
/// (where the host has one) gives each machine a Nix store of its own for prebuilt releases.
const OVERLAID: &[&str] = &["/etc", "/var", "/root", "/home", "/nix"];

/// What `machine-init` needs to know.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The machine's name (its hostname)
    #[arg(long)]
    pub name: String,
    /// The machine's directory in the run directory (a tmpfs for the overlays is mounted on it)
    #[arg(long)]
    pub dir: PathBuf,
    /// A directory of the host to show, read-only, at the same path, even under the machine's private /tmp or /run
    #[arg(long = "share")]
    pub shares: Vec<PathBuf>,
    /// A directory of the host to show writable at the same path (the server's fleet repository)
    #[arg(long = "share-rw")]
    pub shares_rw: Vec<PathBuf>,
    /// What becomes the machine's PID 1 once it is built
    #[arg(long, value_enum, default_value = "lab")]
    pub init: Init,
}

/// Builds the machine, reports on stdout ("ready" or "error: …"), then reaps forever.
pub fn main(args: &InitArgs) -> ! {
    let mut out = std::io::stdout();
    match build(args) {
        Ok(()) => {
            let _ = writeln!(out, "ready");
            let _ = out.flush();
            if args.init == Init::Systemd {
                super::systemd_pid1::boot_when_asked();
            }
        }
        Err(message) => {
            let _ = writeln!(out, "error: {message}");
            let _ = out.flush();
            std::process::exit(1);
        }
    }
    reap_forever()
}

/// Orphans of the machine are re-parented to pid 1; without reaping, they would stay zombies.
fn reap_forever() -> ! {
    loop {
        match nix::sys::wait::wait() {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The machine's private view, in the only order that works: the shares are opened before
/// mounts hide them, the machine directory is created while / is still writable, and the
/// shares come back last, over the private /run and /tmp.
fn build(args: &InitArgs) -> Result<(), String> {
    let shares = open_shares(args)?;
    upper_layers(&args.dir)?;
    // ip-netns's bind mounts hold references to every lab's network namespaces; drop our copies.
    let _ = umount2("/run/netns", MntFlags::MNT_DETACH);
    // Read-only root: nothing a scenario runs can write outside the machine's private places.
    remount_bind(Path::new("/"), MsFlags::MS_RDONLY, "remount / read-only")?;
    overlays(&args.dir)?;
    empty_state_dir()?;
    private_run_and_tmp()?;
    for share in &shares {
        share.show()?;
    }
    drop(shares);
    nix::unistd::sethostname(&args.name).map_err(|e| format!("sethostname: {e}"))?;
    if args.init == Init::Systemd {
        super::systemd_pid1::prepare(&args.name)?;
    }
    Ok(())
}

/// Whether the machine may write to a shared host directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShareAccess {
    ReadOnly,
    Writable,
}

/// A host directory shown inside the machine at its own path.
struct Share {
    path: PathBuf,
    /// Opened before the overlays and tmpfs mounts can hide the path; bind-mounting
    /// /proc/self/fd/N brings it back.
    dir: File,
    access: ShareAccess,
}

fn open_shares(args: &InitArgs) -> Result<Vec<Share>, String> {
    let read_only = args.shares.iter().map(|p| (p, ShareAccess::ReadOnly));
    let writable = args.shares_rw.iter().map(|p| (p, ShareAccess::Writable));
    read_only
        .chain(writable)
        .map(|(path, access)| {
            let dir = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
            Ok(Share {
                path: path.clone(),
                dir,
                access,
            })
        })
        .collect()
}

impl Share {
    fn show(&self) -> Result<(), String> {
        let path = &self.path;
        // A read-only share still visible through the read-only root needs nothing; a writable
        // one is always bound, so writes reach the host's directory, not an overlay.
        if path.is_dir() && self.access == ShareAccess::ReadOnly {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        let source = PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()));
        bind(&source, path, &format!("show {}", path.display()))?;
        if self.access == ShareAccess::Writable {
            // A bind mount copies the read-only flag of the root it came from; lift it.
            remount_bind(
                path,
                MsFlags::empty(),
                &format!("make {} writable", path.display()),
            )?;
        }
        Ok(())
    }
}

/// The overlays' upper layers live in a tmpfs of the machine's own: nothing of the machine
/// touches the host's disk, it works whatever filesystem the host's /tmp is (overlayfs in a
/// container cannot hold upper layers), and it vanishes with the machine.
fn upper_layers(machine_dir: &Path) -> Result<(), String> {
    fs::create_dir_all(machine_dir)
        .map_err(|e| format!("creating {}: {e}", machine_dir.display()))?;
    tmpfs(
        machine_dir,
        "mode=700",
        "tmpfs for the overlays' upper layers",
    )?;
    for d in OVERLAID {
        let (upper, work) = overlay_dirs(machine_dir, d);
        for p in [&upper, &work] {
            fs::create_dir_all(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
        }
    }
    Ok(())
}

/// A copy-on-write overlay on each of [`OVERLAID`] that exists.
fn overlays(machine_dir: &Path) -> Result<(), String> {
    for d in OVERLAID {
        let target = Path::new(d);
        if !target.is_dir() {
            continue;
        }
        let options = overlay_options(machine_dir, d)?;
        // `volatile` (Linux 5.10+): the overlay is thrown away, so it need not sync the host's
        // disk, which would make every teardown wait for a syncfs of the root filesystem.
        if overlay(target, &format!("{options},volatile"), "").is_err() {
            overlay(target, &options, &format!("overlay {d}"))?;
        }
    }
    Ok(())
}

fn overlay_options(machine_dir: &Path, overlaid: &str) -> Result<String, String> {
    let (upper, work) = overlay_dirs(machine_dir, overlaid);
    for p in [&upper, &work] {
        let s = p.to_string_lossy();
        if s.contains([',', ':', '\\']) {
            return Err(format!(
                "{s}: the run directory's path must not contain ',', ':' or '\\' (overlay options); set TMPDIR to a plainer path"
            ));
        }
    }
    Ok(format!(
        "lowerdir={overlaid},upperdir={},workdir={}",
        upper.display(),
        work.display()
    ))
}

/// tiffin's state directory starts empty on every machine: the overlay on /var would show the
/// host's /var/lib/tiffin (a real server or client on the machine running the lab), and a
/// scenario must see only what it made. A tmpfs of its own, mode 755 as on a fresh system.
fn empty_state_dir() -> Result<(), String> {
    mkdir(STATE_DIR, 0o755)?;
    tmpfs(Path::new(STATE_DIR), "mode=755", "tmpfs on /var/lib/tiffin")
}

/// The machine's own /run and /tmp, with the directories its daemons expect.
fn private_run_and_tmp() -> Result<(), String> {
    // mode=755: sshd refuses a chroot whose path crosses a group/other-writable directory.
    tmpfs(Path::new("/run"), "mode=755", "tmpfs on /run")?;
    mkdir("/run/sshd", 0o755)?;
    mkdir("/run/lock", 0o1777)?;
    tmpfs(Path::new("/tmp"), "mode=1777", "tmpfs on /tmp")
}

/// `<machine dir>/<etc|var|…>/{upper,work}`.
fn overlay_dirs(machine_dir: &Path, overlaid: &str) -> (PathBuf, PathBuf) {
    let base = machine_dir.join(overlaid.trim_start_matches('/'));
    (base.join("upper"), base.join("work"))
}

// ---- mounts: each names what it is for, which is what an error says ----------------------

fn mounted(result: nix::Result<()>, what: &str) -> Result<(), String> {
    result.map_err(|e| format!("{what}: mount: {e}"))
}

fn tmpfs(target: &Path, options: &str, what: &str) -> Result<(), String> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mounted(
        mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(options)),
        what,
    )
}

fn overlay(target: &Path, options: &str, what: &str) -> Result<(), String> {
    let flags = MsFlags::empty();
    mounted(
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            flags,
            Some(options),
        ),
        what,
    )
}

fn bind(source: &Path, target: &Path, what: &str) -> Result<(), String> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mounted(
        mount(Some(source), target, None::<&str>, flags, None::<&str>),
        what,
    )
}

/// Changes the flags of a bind mount (or of `/`): `flags` on top of remount and bind.
fn remount_bind(target: &Path, flags: MsFlags, what: &str) -> Result<(), String> {
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags;
    mounted(
        mount(None::<&str>, target, None::<&str>, flags, None::<&str>),
        what,
    )
}

fn mkdir(path: &str, mode: u32) -> Result<(), String> {
    fs::create_dir_all(path)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
        .map_err(|e| format!("creating {path}: {e}"))
}
