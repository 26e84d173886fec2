//! Measures `tiffin publish` (nothing changed) and `tiffin status` on a 1,000-host fleet of 100 small files each.
//!
//! Run: `cargo bench --bench fleet_scale` (HOSTS and FILES override the size). Prints figures; asserts nothing.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDPdVHr+fKZOwwD9E3poAecxwyLqorA/Hm8Zv3LEstG0 bench";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn tiffin(fleet: &Path, args: &[&str]) -> Duration {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tiffin"))
        .args(args)
        .current_dir(fleet)
        .output()
        .expect("run tiffin");
    let took = start.elapsed();
    // status exits 3 when hosts are stale/failed; anything else is a failure of the bench itself.
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "tiffin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo test --benches asks for a listing
    }
    let hosts = env_usize("HOSTS", 1000);
    let files = env_usize("FILES", 100);
    let tmp = tempfile::TempDir::new().unwrap();
    let fleet = tmp.path().join("fleet");
    let chroots = tmp.path().join("chroots");
    let chroots_arg = chroots.to_str().unwrap().to_owned();
    let state_arg = tmp.path().join("state").to_str().unwrap().to_owned();

    let start = Instant::now();
    Command::new(env!("CARGO_BIN_EXE_tiffin"))
        .args(["init", fleet.to_str().unwrap()])
        .output()
        .unwrap();
    fs::remove_dir_all(fleet.join("hosts/example")).unwrap();
    for h in 0..hosts {
        let dir = fleet.join(format!("hosts/host-{h:04}"));
        fs::create_dir_all(dir.join("files/etc/app")).unwrap();
        fs::write(dir.join("host.toml"), format!("public_key = \"{KEY}\"\n")).unwrap();
        fs::write(
            dir.join("configuration.nix"),
            format!("{{...}}: {{ networking.hostName = \"host-{h:04}\"; }}\n"),
        )
        .unwrap();
        std::os::unix::fs::symlink("../../templates/flake.nix", dir.join("flake.nix")).unwrap();
        std::os::unix::fs::symlink("../../common", dir.join("common")).unwrap();
        for f in 0..files.saturating_sub(3) {
            fs::write(
                dir.join(format!("files/etc/app/f{f:03}.conf")),
                format!("host {h} file {f}\n").repeat(8),
            )
            .unwrap();
        }
    }
    println!(
        "fleet: {hosts} hosts x {files} files, written in {:.1?}",
        start.elapsed()
    );

    let publish = [
        "publish",
        "--chroot-root",
        &chroots_arg,
        "--state-dir",
        &state_arg,
    ];
    let first = tiffin(&fleet, &publish);
    println!("publish, first release of every host: {first:.2?}");
    let unchanged: Vec<Duration> = (0..5).map(|_| tiffin(&fleet, &publish)).collect();
    let status: Vec<Duration> = (0..10)
        .map(|_| tiffin(&fleet, &["status", "--chroot-root", &chroots_arg]))
        .collect();
    let status_json: Vec<Duration> = (0..10)
        .map(|_| tiffin(&fleet, &["status", "--json", "--chroot-root", &chroots_arg]))
        .collect();
    println!(
        "publish, nothing changed (median of 5): {:.3?}  goal <= 2 s",
        median(unchanged)
    );
    println!(
        "status table (median of 10):           {:.3?}  goal <= 0.3 s",
        median(status)
    );
    println!(
        "status --json (median of 10):          {:.3?}",
        median(status_json)
    );
    let prometheus: Vec<Duration> = (0..10)
        .map(|_| {
            let args = [
                "status",
                "--format",
                "prometheus",
                "--chroot-root",
                &chroots_arg,
            ];
            tiffin(&fleet, &args)
        })
        .collect();
    println!(
        "status --format prometheus (median of 10): {:.3?}",
        median(prometheus)
    );
}
