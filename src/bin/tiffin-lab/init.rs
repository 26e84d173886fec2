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

/// Directories that get a copy-on-write overlay: everything a system tool writes to.
pub const OVERLAID: &[&str] = &["/etc", "/var", "/root", "/home"];

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
}

/// Builds the machine, reports on stdout ("ready" or "error: …"), then reaps forever.
pub fn main(args: &InitArgs) -> ! {
    let mut out = std::io::stdout();
    match build(args) {
        Ok(()) => {
            let _ = writeln!(out, "ready");
            let _ = out.flush();
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

fn build(args: &InitArgs) -> Result<(), String> {
    // Shares are opened before anything hides them; bind-mounting /proc/self/fd/N later
    // brings each back at its own path.
    let mut shares = Vec::new();
    for (path, writable) in args
        .shares
        .iter()
        .map(|p| (p, false))
        .chain(args.shares_rw.iter().map(|p| (p, true)))
    {
        let dir = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        shares.push((path.clone(), dir, writable));
    }
    // The overlays' upper layers live in a tmpfs of the machine's own: nothing of the machine
    // touches the host's disk, it works whatever filesystem the host's /tmp is (overlayfs in a
    // container cannot hold upper layers), and it vanishes with the machine.
    fs::create_dir_all(&args.dir).map_err(|e| format!("creating {}: {e}", args.dir.display()))?;
    mount_or(
        Some(Path::new("tmpfs")),
        &args.dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=700"),
        "tmpfs for the overlays' upper layers",
    )?;
    for d in OVERLAID {
        let (upper, work) = overlay_dirs(&args.dir, d);
        for p in [&upper, &work] {
            fs::create_dir_all(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
        }
    }
    // ip-netns's bind mounts hold references to every lab's network namespaces; drop our copies.
    let _ = umount2("/run/netns", MntFlags::MNT_DETACH);
    // Read-only root: nothing a scenario runs can write outside the machine's private places.
    mount_or(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None,
        "remount / read-only",
    )?;
    for d in OVERLAID {
        let target = Path::new(d);
        if !target.is_dir() {
            continue;
        }
        let (upper, work) = overlay_dirs(&args.dir, d);
        for p in [&upper, &work] {
            let s = p.to_string_lossy();
            if s.contains([',', ':', '\\']) {
                return Err(format!(
                    "{s}: the run directory's path must not contain ',', ':' or '\\' (overlay options); set TMPDIR to a plainer path"
                ));
            }
        }
        let options = format!(
            "lowerdir={d},upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        // `volatile` (Linux 5.10+): the overlay is thrown away, so it need not sync the host's
        // disk, which would make every teardown wait for a syncfs of the root filesystem.
        let volatile = format!("{options},volatile");
        if mount_or(
            Some(Path::new("overlay")),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(&volatile),
            "",
        )
        .is_err()
        {
            mount_or(
                Some(Path::new("overlay")),
                target,
                Some("overlay"),
                MsFlags::empty(),
                Some(&options),
                &format!("overlay {d}"),
            )?;
        }
    }
    // mode=755: sshd refuses a chroot whose path crosses a group/other-writable directory.
    tmpfs("/run", "mode=755")?;
    mkdir("/run/sshd", 0o755)?;
    mkdir("/run/lock", 0o1777)?;
    tmpfs("/tmp", "mode=1777")?;
    for (path, dir, writable) in &shares {
        // A read-only share still visible through the read-only root needs nothing; a writable
        // one is always bound, so writes reach the host's directory, not an overlay.
        if path.is_dir() && !writable {
            continue;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        let source = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        mount_or(
            Some(&source),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            &format!("show {}", path.display()),
        )?;
        // A bind mount copies the read-only flag of the root it came from; lift it.
        if *writable {
            mount_or(
                None,
                path,
                None,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND,
                None,
                &format!("make {} writable", path.display()),
            )?;
        }
    }
    drop(shares);
    nix::unistd::sethostname(&args.name).map_err(|e| format!("sethostname: {e}"))?;
    Ok(())
}

/// `<machine dir>/<etc|var|…>/{upper,work}`.
pub fn overlay_dirs(machine_dir: &Path, overlaid: &str) -> (PathBuf, PathBuf) {
    let base = machine_dir.join(overlaid.trim_start_matches('/'));
    (base.join("upper"), base.join("work"))
}

fn mount_or(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
) -> Result<(), String> {
    mount(source, target, fstype, flags, data).map_err(|e| format!("{what}: mount: {e}"))
}

fn tmpfs(target: &str, options: &str) -> Result<(), String> {
    mount_or(
        Some(Path::new("tmpfs")),
        Path::new(target),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options),
        &format!("tmpfs on {target}"),
    )
}

fn mkdir(path: &str, mode: u32) -> Result<(), String> {
    fs::create_dir_all(path)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
        .map_err(|e| format!("creating {path}: {e}"))
}
