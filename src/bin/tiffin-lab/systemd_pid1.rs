//! Inside a machine with `init = "systemd"`: the unit world the real systemd boots into (the host's own units masked, a machine id, no fstab), the wait for the lab's go, and the exec of systemd as PID 1.
//!
//! The machine's /etc is an overlay of the host's, so the host's enabled units (its sshd,
//! getty, timers, tmpfiles, …) would start in the machine too. Every unit a target of the
//! host wants is masked in the machine's /etc (a link to /dev/null in the overlay; the host's
//! /etc is untouched) except the journal, D-Bus and polkit, so a boot of multi-user.target
//! starts those and whatever the lab installs: tiffin's units, rendered from its modules.

use std::ffi::CString;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// The file the lab creates inside the machine when its units are installed: then boot.
pub const BOOT_SIGNAL: &str = "/run/tiffin-lab-boot";

/// The units of the host that still start in a machine: the journal, the system bus, polkit.
const KEPT: [&str; 7] = [
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
    "systemd-journald-audit.socket",
    "dbus.socket",
    "dbus.service",
    "polkit.service",
];

/// Where the host's packages and its admin put units and their `.wants` links.
const UNIT_DIRS: [&str; 3] = [
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/etc/systemd/system",
];

/// The machine's /etc for systemd: a machine id of its own, no fstab, the host's wanted units masked.
pub fn prepare(name: &str) -> Result<(), String> {
    let id = machine_id(name);
    fs::write("/etc/machine-id", format!("{id}\n"))
        .map_err(|e| format!("writing /etc/machine-id: {e}"))?;
    fs::write("/etc/fstab", "").map_err(|e| format!("emptying /etc/fstab: {e}"))?;
    // systemd sets the hostname from it: the machine's name, not the host's.
    fs::write("/etc/hostname", format!("{name}\n"))
        .map_err(|e| format!("writing /etc/hostname: {e}"))?;
    let masks = Path::new("/etc/systemd/system");
    fs::create_dir_all(masks).map_err(|e| format!("creating {}: {e}", masks.display()))?;
    // Generators add units from the host's /etc/init.d, fstab, gettys…: none runs here.
    let generators = Path::new("/etc/systemd/system-generators");
    fs::create_dir_all(generators)
        .map_err(|e| format!("creating {}: {e}", generators.display()))?;
    for dir in [
        "/lib/systemd/system-generators",
        "/usr/lib/systemd/system-generators",
    ] {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let mask = generators.join(e.file_name());
            let _ = fs::remove_file(&mask);
            std::os::unix::fs::symlink("/dev/null", &mask)
                .map_err(|e| format!("masking {}: {e}", mask.display()))?;
        }
    }
    for unit in wanted_units() {
        if KEPT.contains(&unit.as_str()) {
            continue;
        }
        let mask = masks.join(&unit);
        let _ = fs::remove_file(&mask);
        std::os::unix::fs::symlink("/dev/null", &mask)
            .map_err(|e| format!("masking {}: {e}", mask.display()))?;
    }
    Ok(())
}

/// Every unit named in a `<target>.wants` or `.requires` directory of the host.
fn wanted_units() -> Vec<String> {
    let mut units = Vec::new();
    for dir in UNIT_DIRS {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.ends_with(".wants") || name.ends_with(".requires")) {
                continue;
            }
            for w in fs::read_dir(e.path()).into_iter().flatten().flatten() {
                let unit = w.file_name().to_string_lossy().into_owned();
                if !units.contains(&unit) {
                    units.push(unit);
                }
            }
        }
    }
    units
}

/// 32 hex digits from the machine's name and the time: unique per boot, as systemd wants.
fn machine_id(name: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for round in 0..2u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(name.as_bytes());
        h.write_u8(round);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// Reaps orphans until the lab says go, then becomes systemd (never returns).
pub fn boot_when_asked() -> ! {
    while !Path::new(BOOT_SIGNAL).exists() {
        while let Ok(status) =
            nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = fs::remove_file(BOOT_SIGNAL);
    // stdout was the pipe the lab read "ready" from; nobody reads it now. systemd's own
    // output goes where machine-init's stderr goes: the machine's init.log.
    let _ = nix::unistd::dup2_stdout(std::io::stderr());
    let program = CString::new("/lib/systemd/systemd").expect("no NUL");
    let args = [
        program.clone(),
        CString::new("--system").expect("no NUL"),
        CString::new("--unit=multi-user.target").expect("no NUL"),
        CString::new("--log-target=journal-or-kmsg").expect("no NUL"),
    ];
    let env = [
        CString::new("container=tiffin-lab").expect("no NUL"),
        CString::new("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .expect("no NUL"),
    ];
    let err = nix::unistd::execve(&program, &args, &env).unwrap_err();
    eprintln!("machine-init: cannot exec /lib/systemd/systemd: {err}");
    std::process::exit(1)
}
