//! `[lab] init = "systemd"`: the units tiffin's NixOS modules give a host, rendered by NixOS's own unit generator and installed on each machine, then the real systemd booted.
//!
//! Rendering runs `nixos-tests/lib/render-units.nix` on the host with nixpkgs' lib
//! (`NIXPKGS_LIB`) and the nixpkgs files that turn `systemd.services` into unit text
//! (`NIXPKGS_NIXOS`); no unit is written by hand, so a change to a module shows here.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::os::unix::fs::PermissionsExt;

use serde::Deserialize;

use super::machine::Machine;
use super::systemd_pid1::BOOT_SIGNAL;

/// The repository the lab was built from: the renderer and the modules.
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// What the renderer gives for one machine (nixos-tests/lib/render-units.nix).
#[derive(Debug, Deserialize)]
pub struct Rendered {
    pub units: std::collections::BTreeMap<String, String>,
    pub wants: std::collections::BTreeMap<String, Vec<String>>,
    pub scripts: std::collections::BTreeMap<String, String>,
    pub links: std::collections::BTreeMap<String, String>,
    #[serde(rename = "polkitRules")]
    pub polkit_rules: String,
    #[serde(rename = "desktopEntries")]
    pub desktop_entries: Vec<DesktopEntry>,
    #[serde(rename = "failedAssertions")]
    pub failed_assertions: Vec<String>,
    /// The modules' `systemd.tmpfiles.settings` as tmpfiles.d lines.
    pub tmpfiles: String,
}

#[derive(Debug, Deserialize)]
pub struct DesktopEntry {
    pub name: String,
    pub text: String,
}

/// Where the lab puts the desktop entries a module gives (NixOS: the system's share/applications).
pub const APPLICATIONS: &str = "/var/lib/lab-desktop/applications";

/// The two nixpkgs directories the renderer reads.
fn nixpkgs_dirs() -> Result<(PathBuf, PathBuf), String> {
    let shared = Path::new(REPO).join("../shared");
    let dir = |var: &str, fallback: PathBuf| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| fallback.is_dir().then_some(fallback))
    };
    match (
        dir("NIXPKGS_LIB", shared.join("nixpkgs-lib/lib")),
        dir("NIXPKGS_NIXOS", shared.join("nixpkgs-nixos")),
    ) {
        (Some(lib), Some(nixos)) => Ok((lib, nixos)),
        _ => Err("init = \"systemd\" renders the machines' units with nixpkgs' lib and NixOS's \
                  unit generator: set NIXPKGS_LIB (a nixpkgs lib/ directory) and NIXPKGS_NIXOS (a \
                  directory with nixos/lib/{utils,systemd-lib,systemd-unit-options,systemd-types}.nix \
                  and nixos/modules/system/boot/systemd.nix), see docs/lab.md"
            .into()),
    }
}

/// What a machine's units are rendered from.
pub struct Module<'a> {
    /// "client" or "server".
    pub name: &'static str,
    /// Its `services.tiffin.<name>` options.
    pub options: serde_json::Value,
    pub tiffin_bin: &'a Path,
    pub rebuild_bin: &'a Path,
}

/// Renders a module's units with NixOS's generator.
pub fn render(module: &Module) -> Result<Rendered, String> {
    let (lib, nixos) = nixpkgs_dirs()?;
    let renderer = Path::new(REPO).join("nixos-tests/lib/render-units.nix");
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(&renderer)
        .arg("--arg")
        .arg("nixpkgsLib")
        .arg(&lib)
        .arg("--arg")
        .arg("nixpkgsNixos")
        .arg(&nixos)
        .args(["--argstr", "module", module.name, "--argstr", "options"])
        .arg(module.options.to_string())
        .arg("--argstr")
        .arg("tiffinBin")
        .arg(module.tiffin_bin)
        .arg("--argstr")
        .arg("rebuildBin")
        .arg(module.rebuild_bin)
        .output()
        .map_err(|e| format!("cannot run nix-instantiate (install nix-bin): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rendering the {} module's units ({}) failed:\n{}",
            module.name,
            renderer.display(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        ));
    }
    let rendered: Rendered =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("the renderer's output: {e}"))?;
    if !rendered.failed_assertions.is_empty() {
        return Err(format!(
            "the {} module refuses the lab's options: {}",
            module.name,
            rendered.failed_assertions.join("; ")
        ));
    }
    Ok(rendered)
}

/// Installs what was rendered into the machine: unit files (over the masks machine-init
/// made), `.wants` links, the scripts and package links under its private /nix/store, the
/// polkit rule and the desktop entries.
pub fn install(m: &Machine, r: &Rendered) -> Result<(), String> {
    if !m.path("/nix/store").is_dir() {
        return Err("init = \"systemd\" puts the units' scripts into the machine's /nix/store, and this host has no /nix (install nix-bin)".into());
    }
    // As NixOS does: each unit file in a store path of its own, linked from /etc/systemd/system,
    // so a new unit is a new link target (what `tiffin pull --exit-on-change` watches).
    for (name, text) in &r.units {
        let hash = tiffin::core::hash::sha256_hex(text.as_bytes());
        let file = format!("/nix/store/{}-unit-{name}/{name}", &hash[..32]);
        write(m, &file, text, 0o444)?;
        link(m, &format!("/etc/systemd/system/{name}"), &file)?;
    }
    for (target, units) in &r.wants {
        for u in units {
            link(
                m,
                &format!("/etc/systemd/system/{target}.wants/{u}"),
                &format!("../{u}"),
            )?;
        }
    }
    for (path, text) in &r.scripts {
        write(m, path, text, 0o555)?;
    }
    for (path, target) in &r.links {
        if Path::new(target).is_file() {
            // A program (tiffin, the rebuild stand-in) is copied, not linked: the run
            // directory may be under /tmp, which a unit with PrivateTmp= does not see.
            copy(m, path, Path::new(target))?;
        } else {
            link(m, path, target)?;
        }
    }
    if !r.polkit_rules.is_empty() {
        write(
            m,
            "/etc/polkit-1/rules.d/10-tiffin.rules",
            &r.polkit_rules,
            0o644,
        )?;
    }
    for d in &r.desktop_entries {
        write(
            m,
            &format!("{APPLICATIONS}/{}.desktop", d.name),
            &d.text,
            0o644,
        )?;
    }
    if !r.tmpfiles.is_empty() {
        // What systemd-tmpfiles-setup does at boot for these lines (the host's own rules are
        // not the machine's, so that unit stays masked): done once, now.
        write(m, TMPFILES, &r.tmpfiles, 0o644)?;
        let out = m
            .command(&["systemd-tmpfiles", "--create", TMPFILES])
            .output()
            .map_err(|e| format!("systemd-tmpfiles: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "systemd-tmpfiles --create {TMPFILES}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// Where the modules' tmpfiles rules go in a machine.
const TMPFILES: &str = "/etc/tmpfiles.d/tiffin.conf";

/// A file inside the machine, replacing whatever is there (a mask link), parents made.
fn write(m: &Machine, inside: &str, text: &str, mode: u32) -> Result<(), String> {
    let host = m.path(inside);
    let io = |e: std::io::Error| format!("writing {inside}: {e}");
    if let Some(parent) = host.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let _ = fs::remove_file(&host);
    fs::write(&host, text).map_err(io)?;
    fs::set_permissions(&host, fs::Permissions::from_mode(mode)).map_err(io)
}

/// A copy of the host's file `from` inside the machine, executable, parents made.
fn copy(m: &Machine, inside: &str, from: &Path) -> Result<(), String> {
    let host = m.path(inside);
    let io = |e: std::io::Error| format!("copying {} to {inside}: {e}", from.display());
    if let Some(parent) = host.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let _ = fs::remove_file(&host);
    fs::copy(from, &host).map_err(io)?;
    fs::set_permissions(&host, fs::Permissions::from_mode(0o555)).map_err(io)
}

/// A symlink inside the machine, replacing whatever is there, parents made.
fn link(m: &Machine, inside: &str, target: &str) -> Result<(), String> {
    let host = m.path(inside);
    let io = |e: std::io::Error| format!("linking {inside}: {e}");
    if let Some(parent) = host.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let _ = fs::remove_file(&host);
    symlink(target, &host).map_err(io)
}

/// Tells the machine's init to become systemd, and waits until systemd finished booting
/// (`running`, or `degraded`: the failed units are named in the lab's log).
pub fn boot(m: &Machine, machine_dir: &Path) -> Result<(), String> {
    write(m, BOOT_SIGNAL, "", 0o644)?;
    // Until machine-init has become systemd, systemctl finds nobody to ask ("offline").
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !m.path("/run/systemd/system").is_dir() {
        if std::time::Instant::now() > deadline {
            return Err("machine-init did not become systemd within 20s (see its init.log)".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let state = loop {
        let out = m
            .command(&["timeout", "60", "systemctl", "is-system-running", "--wait"])
            .output()
            .map_err(|e| format!("systemctl is-system-running: {e}"))?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // Just after the exec, systemd may not answer on its bus yet.
        if matches!(state.as_str(), "running" | "degraded") || std::time::Instant::now() > deadline
        {
            break state;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    match state.as_str() {
        "running" => Ok(()),
        "degraded" => {
            let failed = m
                .command(&["systemctl", "--failed", "--no-legend", "--plain"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default();
            tracing::warn!("{}: systemd is up, degraded: {failed}", m.name);
            Ok(())
        }
        _ => {
            let log = fs::read_to_string(machine_dir.join("init.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            Err(format!(
                "systemd did not finish booting within 60s (is-system-running: {state:?}); its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ))
        }
    }
}
