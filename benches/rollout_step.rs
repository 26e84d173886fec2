//! Measures `tiffin rollout step` on a 1,000-host fleet in the middle of a rollout when nothing changed (no new report since the last step), and the controller alone.
//!
//! Run: `cargo bench --bench rollout_step` (HOSTS overrides the size). Prints figures; asserts nothing.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDPdVHr+fKZOwwD9E3poAecxwyLqorA/Hm8Zv3LEstG0 bench";

fn tiffin(fleet: &Path, args: &[&str], extra: &[&str]) -> (Duration, String) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tiffin"))
        .args(args)
        .args(extra)
        .current_dir(fleet)
        .output()
        .expect("run tiffin");
    let took = start.elapsed();
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "tiffin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (took, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A fleet of `hosts` one-file hosts, the first 10 tagged canary, with `[rollout]`.
fn write_fleet(fleet: &Path, hosts: usize) {
    Command::new(env!("CARGO_BIN_EXE_tiffin"))
        .args(["init", fleet.to_str().unwrap()])
        .output()
        .unwrap();
    fs::remove_dir_all(fleet.join("hosts/example")).unwrap();
    let toml = fs::read_to_string(fleet.join("fleet.toml")).unwrap();
    let policy = "\n[rollout]\nwaves = [\"canary\", \"10%\", \"50%\", \"100%\"]\n";
    fs::write(fleet.join("fleet.toml"), format!("{toml}{policy}")).unwrap();
    for h in 0..hosts {
        let dir = fleet.join(format!("hosts/host-{h:04}"));
        fs::create_dir_all(&dir).unwrap();
        let tags = if h < 10 { "tags = [\"canary\"]\n" } else { "" };
        fs::write(
            dir.join("host.toml"),
            format!("{tags}public_key = \"{KEY}\"\n"),
        )
        .unwrap();
        fs::write(
            dir.join("configuration.nix"),
            format!("{{...}}: {{ networking.hostName = \"host-{h:04}\"; }}\n"),
        )
        .unwrap();
        std::os::unix::fs::symlink("../../templates/flake.nix", dir.join("flake.nix")).unwrap();
        std::os::unix::fs::symlink("../../common", dir.join("common")).unwrap();
    }
}

/// Every canary reports its release applied, received now (after its wave started).
fn canaries_report(chroots: &Path) {
    for h in 0..10 {
        let name = format!("host-{h:04}");
        let current = fs::read_to_string(chroots.join(&name).join("CURRENT")).unwrap();
        let id = current.lines().next().unwrap();
        let dir = chroots.join(&name).join("reports");
        fs::create_dir_all(&dir).unwrap();
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        fs::write(
            dir.join("status.toml"),
            format!("host = \"{name}\"\nrelease = \"{id}\"\nseq = 1\nresult = \"ok\"\napplied = \"{id}\"\nlast_seen = \"{now}\"\nversion = \"bench\"\n"),
        )
        .unwrap();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo test --benches asks for a listing
    }
    let hosts = std::env::var("HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let tmp = tempfile::TempDir::new().unwrap();
    let fleet = tmp.path().join("fleet");
    let chroots = tmp.path().join("chroots");
    let state = tmp.path().join("state");
    let extra = [
        "--chroot-root",
        chroots.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    write_fleet(&fleet, hosts);
    let (took, _) = tiffin(&fleet, &["publish"], &extra);
    println!("publish of {hosts} hosts with [rollout] (wave 1 of 4: 10 canaries): {took:.1?}");
    let (took, out) = tiffin(&fleet, &["rollout", "step"], &extra);
    println!(
        "step with nothing reported: {took:.1?} ({} line(s) of output)",
        out.lines().count()
    );
    canaries_report(&chroots);
    let (took, out) = tiffin(&fleet, &["rollout", "step"], &extra);
    println!(
        "step that starts wave 2 ({} hosts made current): {took:.1?}",
        out.lines().filter(|l| l.ends_with("is current")).count()
    );
    let rounds = 15;
    let times: Vec<Duration> = (0..rounds)
        .map(|_| tiffin(&fleet, &["rollout", "step"], &extra).0)
        .collect();
    println!(
        "`tiffin rollout step`, nothing changed, {hosts} hosts: median {:.1?} (min {:.1?}, max {:.1?}, {rounds} runs; goal <= 100 ms)",
        median(times.clone()),
        times.iter().min().unwrap(),
        times.iter().max().unwrap()
    );
}
