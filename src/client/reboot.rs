//! `reboot = "if-needed"`: whether the new system takes full effect only after a reboot.

use std::fs;
use std::path::Path;

/// The parts of a NixOS system that only a boot loads.
pub const BOOT_PARTS: [&str; 3] = ["kernel", "initrd", "kernel-modules"];

/// True when the booted system and the new system profile differ in a part only a boot
/// loads, the test nixpkgs' `system.autoUpgrade` makes. Without a booted system to
/// compare (not NixOS), nothing is needed.
pub fn needed(booted_system: &Path, system_profile: &Path) -> bool {
    if !booted_system.exists() {
        return false;
    }
    BOOT_PARTS.iter().any(|part| {
        fs::canonicalize(booted_system.join(part)).ok()
            != fs::canonicalize(system_profile.join(part)).ok()
    })
}

/// A fake system for tests: a directory whose boot parts link into a fake store.
#[cfg(test)]
pub(crate) fn fake_system(dir: &Path, name: &str, kernel: &str) -> std::path::PathBuf {
    use std::os::unix::fs::symlink;
    let sys = dir.join(name);
    fs::create_dir_all(&sys).unwrap();
    for (part, target) in [
        ("kernel", kernel),
        ("initrd", "initrd-1"),
        ("kernel-modules", "modules-1"),
    ] {
        let store = dir.join("store").join(target);
        fs::create_dir_all(store.parent().unwrap()).unwrap();
        fs::write(&store, target).unwrap();
        symlink(&store, sys.join(part)).unwrap();
    }
    sys
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn system(dir: &Path, name: &str, kernel: &str) -> std::path::PathBuf {
        fake_system(dir, name, kernel)
    }

    #[test]
    fn a_new_kernel_needs_a_reboot_the_same_kernel_does_not() {
        let tmp = tempfile::TempDir::new().unwrap();
        let booted = system(tmp.path(), "booted", "kernel-1");
        let same = system(tmp.path(), "same", "kernel-1");
        let newer = system(tmp.path(), "newer", "kernel-2");
        assert!(!needed(&booted, &same));
        assert!(needed(&booted, &newer));
        // A profile is a chain of links (system -> system-7-link -> store path): followed to the end.
        symlink(&newer, tmp.path().join("system-7-link")).unwrap();
        symlink(tmp.path().join("system-7-link"), tmp.path().join("system")).unwrap();
        assert!(needed(&booted, &tmp.path().join("system")));
        assert!(
            !needed(&tmp.path().join("not-nixos"), &newer),
            "nothing booted to compare"
        );
    }
}
