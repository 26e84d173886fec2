//! The fleet's rules for prebuilt releases (`[apply] build = "server"`): the build template and the signing key `tiffin check` demands.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{FLEET_FILE, Host, ServerSettings};
use crate::core::diag::Problem;
use crate::core::names::HostName;
use crate::core::settings::Build;

/// The default `[server] build`: the flake in the release's `config/`, the host's toplevel, its
/// out path in the JSON (Nix 2.8 has no `--print-out-paths`).
pub const DEFAULT_BUILD: &[&str] = &[
    "nix",
    "--extra-experimental-features",
    "nix-command flakes",
    "build",
    "--no-link",
    "--json",
    "{config}#nixosConfigurations.{host}.config.system.build.toplevel",
];

/// Problems of `[server] build` and `signing_key`, only when some host is built on the server.
pub fn problems(server: &ServerSettings, hosts: &BTreeMap<HostName, Host>) -> Vec<Problem> {
    let Some(first) = hosts
        .values()
        .find(|h| h.apply.build == Build::Server)
        .map(|h| &h.name)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut error = |m: String| out.push(Problem::error(None, FLEET_FILE, m));
    if !server.build.iter().any(|a| a.contains("{config}")) {
        error(format!(
            "server.build must name the release's config/ tree as {{config}} (host {first} is built on the server): e.g. {:?}",
            DEFAULT_BUILD
        ));
    }
    let Some(key) = &server.signing_key else {
        error(format!(
            "server.signing_key is unset, but host {first} has [apply] build = \"server\": generate a key with `nix key generate-secret --key-name fleet-1 > /var/lib/tiffin/signing-key` (mode 0600) and name that file"
        ));
        return out;
    };
    out.extend(key_problems(key));
    out
}

fn key_problems(key: &Path) -> Vec<Problem> {
    let shown = key.display();
    let error = |m: String| vec![Problem::error(None, FLEET_FILE, m)];
    if !key.is_absolute() || key.starts_with("/nix/store") {
        return error(format!(
            "server.signing_key {shown:?} must be an absolute path outside /nix/store (the store is readable by everyone)"
        ));
    }
    match std::fs::metadata(key) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => error(format!(
            "server.signing_key {shown}: mode {:04o} lets others read the fleet's signing key; run `chmod 600 {shown}`",
            meta.permissions().mode() & 0o7777
        )),
        Ok(_) => Vec::new(),
        // The repository is often checked on a workstation that does not hold the key.
        Err(e) => vec![Problem::warning(
            None,
            FLEET_FILE,
            format!("server.signing_key {shown}: {e} (publish needs it on the server)"),
        )],
    }
}
