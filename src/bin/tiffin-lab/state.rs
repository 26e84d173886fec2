//! Labs on record in /run/tiffin-lab/<run>.toml: what `tiffin-lab shell` enters and what `tiffin-lab down` removes, also after the lab process died or was killed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::LabError;
use super::cgroup;
use super::procfs;

/// Where running and kept labs are recorded.
pub const STATE_DIR: &str = "/run/tiffin-lab";
/// Every namespace, run directory and state file of the lab starts with this.
pub const PREFIX: &str = "tiffin-lab-";

/// One run of `tiffin-lab` (run or demo), as recorded while it has a lab up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    /// The run id; every name of the run starts with `tiffin-lab-<run>`.
    pub run: String,
    pub owner_pid: u32,
    pub owner_start: u64,
    /// Left up on purpose (`--keep`): `down` removes it, `shell` enters it.
    pub kept: bool,
    pub run_dir: PathBuf,
    #[serde(default)]
    pub scenario: Option<String>,
    /// Network namespaces created so far (machines and bridge).
    #[serde(default)]
    pub netns: Vec<String>,
    #[serde(default, rename = "machine")]
    pub machines: Vec<MachineState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineState {
    pub name: String,
    pub address: String,
    pub init_pid: u32,
    pub init_start: u64,
    /// The environment commands get inside the machine (PATH, TIFFIN_FLEET …).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `init = "systemd"`: the cgroups the machine runs in, removed at teardown.
    #[serde(default)]
    pub cgroups: Vec<String>,
}

impl RunState {
    pub fn path_of(run: &str) -> PathBuf {
        Path::new(STATE_DIR).join(format!("{run}.toml"))
    }

    pub fn prefix(&self) -> String {
        format!("{PREFIX}{}", self.run)
    }

    /// Written to a temporary name and renamed, so `down` never reads half a record.
    pub fn save(&self) -> Result<(), LabError> {
        let path = RunState::path_of(&self.run);
        let text = format!(
            "# A tiffin-lab run; `tiffin-lab down` removes what it names.\n{}",
            toml::to_string(self).expect("state serializes")
        );
        let mut tries = 0;
        loop {
            fs::create_dir_all(STATE_DIR)
                .map_err(|e| LabError::io(format!("creating {STATE_DIR}"), e))?;
            let written = tiffin::core::durable::write_atomic(
                &path,
                text.as_bytes(),
                0o600,
                tiffin::core::durable::Owner::Caller,
            );
            match written {
                // Another run's `remove` took the directory away while it was empty, between
                // the two calls above: make it again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
                other => {
                    return other
                        .map_err(|e| LabError::io(format!("writing {}", path.display()), e));
                }
            }
        }
    }

    /// Removes the record, and the state directory once it is empty.
    pub fn remove(&self) {
        let _ = fs::remove_file(RunState::path_of(&self.run));
        let _ = fs::remove_dir(STATE_DIR);
    }

    /// True while the `tiffin-lab` process that made this run still lives.
    pub fn owner_alive(&self) -> bool {
        procfs::is_same_process(self.owner_pid, self.owner_start)
    }

    /// Every run on record, with the ones that cannot be read.
    pub fn load_all() -> Vec<Result<RunState, String>> {
        let Ok(entries) = fs::read_dir(STATE_DIR) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|p| {
                let text = fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| {
                    format!("{}: {}", p.display(), tiffin::core::diag::toml_message(&e))
                })
            })
            .collect()
    }
}

/// Network namespaces whose names start with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Kills every process in the network namespace, then deletes it. A missing one is fine.
pub fn delete_netns(name: &str) -> Result<(), String> {
    let file = Path::new("/run/netns").join(name);
    if !file.exists() {
        return Ok(());
    }
    if let Some(ino) = procfs::ns_file_inode(&file) {
        for _ in 0..50 {
            let left = procfs::pids_in(&[("net", ino)]);
            if left.is_empty() {
                break;
            }
            for pid in left {
                procfs::signal(pid, Signal::SIGKILL);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let out = Command::new("ip")
        .args(["netns", "delete", name])
        .output()
        .map_err(|e| format!("ip netns delete {name}: {e}"))?;
    if out.status.success() || !file.exists() {
        Ok(())
    } else {
        Err(format!(
            "ip netns delete {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes a run directory, refusing anything that does not look like one.
pub fn remove_run_dir(dir: &Path) -> Result<(), String> {
    let name_ok = dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(PREFIX));
    if !name_ok || !dir.is_absolute() {
        return Err(format!(
            "{}: not a tiffin-lab run directory; left alone",
            dir.display()
        ));
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", dir.display())),
    }
}

/// Ends everything a recorded run left: machines, namespaces, its run directory, the record.
pub fn destroy(state: &RunState) -> Vec<String> {
    let mut problems = Vec::new();
    for m in &state.machines {
        if procfs::is_same_process(m.init_pid, m.init_start) {
            procfs::signal(m.init_pid, Signal::SIGKILL);
        }
    }
    // The machines' cgroups (init = "systemd"), recorded or found by the run's prefix.
    let mut cgroups: Vec<std::path::PathBuf> = state
        .machines
        .iter()
        .flat_map(|m| m.cgroups.iter().map(Into::into))
        .collect();
    for c in cgroup::leftovers(&format!("{}-", state.prefix())) {
        if !cgroups.contains(&c) {
            cgroups.push(c);
        }
    }
    problems.extend(cgroup::remove(&cgroups));
    let mut names = state.netns.clone();
    for n in netns_with_prefix(&format!("{}-", state.prefix())) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    for n in &names {
        if let Err(e) = delete_netns(n) {
            problems.push(e);
        }
    }
    if let Err(e) = remove_run_dir(&state.run_dir) {
        problems.push(e);
    }
    state.remove();
    problems
}

/// What `tiffin-lab down` did.
#[derive(Debug, Default)]
pub struct DownReport {
    pub removed: Vec<String>,
    pub skipped: Vec<String>,
    pub problems: Vec<String>,
}

/// `tiffin-lab down [RUN]`: removes kept labs and the leftovers of labs whose process died.
/// A lab whose `tiffin-lab` still runs is left to tear itself down.
pub fn down(only: Option<&str>) -> DownReport {
    let mut down = Down::default();
    for state in RunState::load_all() {
        down.recorded(state, only);
    }
    if only.is_none() {
        // Leftovers no record names (e.g. the record was lost with a reboot of /run).
        down.unrecorded_cgroups();
        down.unrecorded_netns();
        down.unrecorded_run_dirs();
    }
    down.report
}

/// What `down` did so far, and the runs it must not touch.
#[derive(Default)]
struct Down {
    report: DownReport,
    /// Name prefixes of runs left alone: their namespaces and directories are not leftovers.
    live_prefixes: Vec<String>,
}

impl Down {
    fn recorded(&mut self, state: Result<RunState, String>, only: Option<&str>) {
        let state = match state {
            Ok(s) => s,
            Err(e) => {
                self.report
                    .problems
                    .push(format!("{e} (remove it by hand once its lab is gone)"));
                return;
            }
        };
        if only.is_some_and(|r| r != state.run) {
            self.live_prefixes.push(state.prefix());
            return;
        }
        if state.owner_alive() && !state.kept {
            self.report.skipped.push(format!(
                "run {} is still running (tiffin-lab pid {}); it tears its lab down itself (stop it with Ctrl-C or kill {})",
                state.run, state.owner_pid, state.owner_pid
            ));
            self.live_prefixes.push(state.prefix());
            return;
        }
        self.report.problems.extend(destroy(&state));
        self.report.removed.push(format!(
            "run {}{}",
            state.run,
            state
                .scenario
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        ));
    }

    fn is_live(&self, name: &str) -> bool {
        self.live_prefixes
            .iter()
            .any(|p| name.starts_with(p.as_str()))
    }

    fn unrecorded_cgroups(&mut self) {
        let left: Vec<_> = cgroup::leftovers(PREFIX)
            .into_iter()
            .filter(|c| {
                !c.file_name()
                    .is_some_and(|n| self.is_live(&n.to_string_lossy()))
            })
            .collect();
        for c in &left {
            self.report.removed.push(format!("cgroup {}", c.display()));
        }
        self.report.problems.extend(cgroup::remove(&left));
    }

    fn unrecorded_netns(&mut self) {
        for n in netns_with_prefix(PREFIX) {
            if self.is_live(&n) {
                continue;
            }
            match delete_netns(&n) {
                Ok(()) => self.report.removed.push(format!("network namespace {n}")),
                Err(e) => self.report.problems.push(e),
            }
        }
    }

    fn unrecorded_run_dirs(&mut self) {
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(PREFIX) || self.is_live(&name) || !e.path().is_dir() {
                continue;
            }
            match remove_run_dir(&e.path()) {
                Ok(()) => self
                    .report
                    .removed
                    .push(format!("run directory {}", e.path().display())),
                Err(err) => self.report.problems.push(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips() {
        let s = RunState {
            run: "3f9a2c".into(),
            owner_pid: 42,
            owner_start: 7,
            kept: true,
            run_dir: "/tmp/tiffin-lab-3f9a2c".into(),
            scenario: Some("isolation".into()),
            netns: vec!["tiffin-lab-3f9a2c-net".into()],
            machines: vec![MachineState {
                name: "server".into(),
                address: "192.0.2.1".into(),
                init_pid: 100,
                init_start: 5,
                env: BTreeMap::from([("PATH".into(), "/bin".into())]),
                cgroups: vec!["/sys/fs/cgroup/unified/tiffin-lab-3f9a2c-server".into()],
            }],
        };
        let text = toml::to_string(&s).unwrap();
        assert_eq!(toml::from_str::<RunState>(&text).unwrap(), s);
        assert_eq!(s.prefix(), "tiffin-lab-3f9a2c");
    }

    #[test]
    fn only_run_directories_are_removed() {
        assert!(remove_run_dir(Path::new("/tmp/not-ours")).is_err());
        assert!(remove_run_dir(Path::new("relative/tiffin-lab-x")).is_err());
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("tiffin-lab-abc");
        fs::create_dir_all(run.join("x")).unwrap();
        remove_run_dir(&run).unwrap();
        assert!(!run.exists());
    }
}
