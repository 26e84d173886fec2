//! The lab of one scenario: the bridge, the machines, the server's sshd, the clients' keys and client.toml, and the fleet repository; built up, used by the steps, and torn down completely.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::Serialize;
use tiffin::admin::fleet::FleetConfig;
use tiffin::core::layout::ChrootPaths;
use tiffin::core::names::HostName;

use super::LabError;
use super::boot;
use super::cgroup;
use super::exec::{self, ExecError, Finished, Running};
use super::interrupt::Interrupt;
use super::machine::{self, Machine, MachineSpec, SERVER_ADDRESS};
use super::procfs;
use super::scenario::{Init, LabSection, MachineName, Scenario};
use super::state::{self, MachineState, PREFIX, RunState};

/// The recording stand-in for nixos-rebuild, shipped inside the binary so `demo` works from anywhere.
pub const NIXOS_REBUILD_STANDIN: &str = include_str!("../../../vm-scenarios/bin/nixos-rebuild");
/// The recording stand-in for systemctl (the units tiffin restarts), shipped the same way.
pub const SYSTEMCTL_STANDIN: &str = include_str!("../../../vm-scenarios/bin/systemctl");
/// The stand-in for systemd-run (an activation in a unit of its own), shipped the same way.
pub const SYSTEMD_RUN_STANDIN: &str = include_str!("../../../vm-scenarios/bin/systemd-run");
/// The stand-in for nix-env (`-p PROFILE --set PATH`, the boot default), at `$TIFFIN_LAB_BIN/nix-env`.
pub const NIX_ENV_STANDIN: &str = include_str!("../../../vm-scenarios/bin/nix-env");
/// The stand-in for a reboot (boots the profile's system, starts `tiffin confirm-boot`), at `$TIFFIN_LAB_BIN/reboot`.
pub const REBOOT_STANDIN: &str = include_str!("../../../vm-scenarios/bin/reboot");
/// Sets up prebuilt releases (stand-in system flake, signing key), at `$TIFFIN_LAB_BIN/prebuilt-fleet`.
pub const PREBUILT_FLEET: &str = include_str!("../../../vm-scenarios/bin/prebuilt-fleet");
/// Nix inside the machines: no sandbox (no user namespaces needed), no binary cache to reach.
pub const LAB_NIX_CONFIG: &str =
    "experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\n";

/// How long one command may take before the lab kills it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a client's key and configuration live inside it.
pub const CLIENT_CONFIG: &str = "/etc/tiffin/client.toml";
/// `init = "systemd"`: the fleet repository, bound where the server's units see it.
pub const UNIT_FLEET: &str = "/var/lib/tiffin-lab/fleet";
pub const CLIENT_IDENTITY: &str = "/etc/tiffin/id_ed25519";
pub const KNOWN_HOSTS: &str = "/etc/ssh/ssh_known_hosts";
pub const SSHD_CONFIG: &str = "/etc/ssh/sshd_config";
pub const SERVER_HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";

/// Why a step (or the lab's setup) failed: what went wrong, where, which command, what it said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failure {
    pub problem: String,
    pub machine: Option<String>,
    pub command: Option<String>,
    /// The exit status, and what was expected.
    pub exit: Option<String>,
    pub output: Option<String>,
}

impl Failure {
    pub fn new(problem: impl Into<String>) -> Failure {
        Failure {
            problem: problem.into(),
            ..Failure::default()
        }
    }
    pub fn on(mut self, machine: &str) -> Failure {
        self.machine = Some(machine.to_owned());
        self
    }
}

#[derive(Debug)]
pub enum StepError {
    Failed(Box<Failure>),
    Interrupted,
}

impl From<Failure> for StepError {
    fn from(f: Failure) -> StepError {
        StepError::Failed(Box::new(f))
    }
}

pub type StepResult<T = ()> = Result<T, StepError>;

/// A whole `tiffin-lab run` or `demo`: its id, directory and record. Scenarios run one after the other in it.
#[derive(Debug)]
pub struct Run {
    pub id: String,
    pub dir: PathBuf,
    pub tiffin: PathBuf,
    pub lab_exe: PathBuf,
    pub sshd: PathBuf,
    pub interrupt: Interrupt,
    pub state: RunState,
    pub count: usize,
}

impl Run {
    /// Records the run, then creates its directory (in that order, so `down` always finds what exists).
    pub fn start(interrupt: Interrupt) -> Result<Run, LabError> {
        let lab_exe = std::env::current_exe()
            .map_err(|e| LabError::io("finding the tiffin-lab binary", e))?;
        let tiffin = lab_exe.with_file_name("tiffin");
        if !tiffin.is_file() {
            return Err(LabError::Setup(format!(
                "{} not found: tiffin-lab runs the real tiffin binary next to itself (build both with `cargo build`)",
                tiffin.display()
            )));
        }
        let sshd = find_sshd()?;
        let owner_pid = std::process::id();
        let id = unused_run_id();
        let dir = std::env::temp_dir().join(format!("{PREFIX}{id}"));
        let state = RunState {
            run: id.clone(),
            owner_pid,
            owner_start: procfs::start_time(owner_pid).unwrap_or_default(),
            kept: false,
            run_dir: dir.clone(),
            scenario: None,
            netns: Vec::new(),
            machines: Vec::new(),
        };
        state.save()?;
        let run = Run {
            id,
            dir,
            tiffin,
            lab_exe,
            sshd,
            interrupt,
            state,
            count: 0,
        };
        run.install_bin()?;
        Ok(run)
    }

    /// The run directory with its `bin/`, which every machine shares.
    fn install_bin(&self) -> Result<(), LabError> {
        let bin = self.bin_dir();
        fs::create_dir_all(&bin)
            .and_then(|()| fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755)))
            .map_err(|e| LabError::io(format!("creating {}", bin.display()), e))?;
        for (path, text) in [
            (self.standin(), NIXOS_REBUILD_STANDIN),
            (self.systemctl_standin(), SYSTEMCTL_STANDIN),
            (self.systemd_run_standin(), SYSTEMD_RUN_STANDIN),
            (bin.join("prebuilt-fleet"), PREBUILT_FLEET),
            (bin.join("nix-env"), NIX_ENV_STANDIN),
            (bin.join("reboot"), REBOOT_STANDIN),
        ] {
            tiffin::core::durable::write_atomic(
                &path,
                text.as_bytes(),
                0o755,
                tiffin::core::durable::Owner::Caller,
            )
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
        }
        Ok(())
    }

    pub fn prefix(&self) -> String {
        format!("{PREFIX}{}", self.id)
    }

    /// Shared read-only helpers for the machines (the nixos-rebuild stand-in).
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    pub fn standin(&self) -> PathBuf {
        self.bin_dir().join("nixos-rebuild")
    }

    pub fn systemctl_standin(&self) -> PathBuf {
        self.bin_dir().join("systemctl")
    }

    pub fn systemd_run_standin(&self) -> PathBuf {
        self.bin_dir().join("systemd-run")
    }

    /// Removes the run directory and the record, unless a lab was kept.
    pub fn finish(self) -> Vec<String> {
        if self.state.kept {
            return Vec::new();
        }
        let mut problems = Vec::new();
        if let Err(e) = state::remove_run_dir(&self.dir) {
            problems.push(e);
        }
        self.state.remove();
        problems
    }
}

/// The real OpenSSH server: the lab tests tiffin against it, never a stand-in.
fn find_sshd() -> Result<PathBuf, LabError> {
    ["/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            LabError::MissingTools(
                "sshd (install openssh-server; the lab runs the real OpenSSH server)".into(),
            )
        })
}

/// A run id no recorded run has.
fn unused_run_id() -> String {
    let mut id = new_run_id();
    while RunState::path_of(&id).exists() {
        id = new_run_id();
    }
    id
}

fn new_run_id() -> String {
    use sha2::Digest;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = format!("{}-{nanos}", std::process::id());
    hex::encode(sha2::Sha256::digest(seed.as_bytes()))[..6].to_owned()
}

/// A command started with `background = true`, checked at the next `wait`.
#[derive(Debug)]
pub struct Background {
    pub step: usize,
    pub on: MachineName,
    pub command: String,
    pub expect_exit: i32,
    pub expect_output: Option<String>,
    pub running: Running,
}

/// The machines of one scenario, and everything the steps need to reach them.
#[derive(Debug)]
pub struct World<'r> {
    pub run: &'r mut Run,
    pub dir: PathBuf,
    pub logs: PathBuf,
    pub fleet_dir: PathBuf,
    pub bridge_ns: String,
    netns: Vec<String>,
    pub machines: Vec<Machine>,
    pub clients: Vec<MachineName>,
    /// The scenario's `[lab]`: what runs as each machine's PID 1, and the units' module options.
    pub lab: LabSection,
    pub server_key: String,
    pub client_keys: BTreeMap<MachineName, String>,
    sshd: Option<Running>,
    pub sshd_log: PathBuf,
    pub background: Vec<Background>,
    log_seq: usize,
    finished: bool,
}

impl<'r> World<'r> {
    /// An empty world for `scenario`; `build` brings it up. Dropping it tears it down.
    pub fn new(run: &'r mut Run, scenario: &Scenario) -> World<'r> {
        run.count += 1;
        let dir = run.dir.join(format!("{:02}-{}", run.count, scenario.name));
        let prefix = run.prefix();
        run.state.scenario = Some(scenario.name.clone());
        World {
            logs: dir.join("logs"),
            fleet_dir: dir.join("fleet"),
            sshd_log: dir.join("server").join("sshd.log"),
            dir,
            bridge_ns: format!("{prefix}.net"),
            run,
            netns: Vec::new(),
            machines: Vec::new(),
            clients: scenario.clients().to_vec(),
            lab: scenario.lab.clone(),
            server_key: String::new(),
            client_keys: BTreeMap::new(),
            sshd: None,
            background: Vec::new(),
            log_seq: 0,
            finished: false,
        }
    }

    pub fn interrupt(&self) -> Interrupt {
        self.run.interrupt.clone()
    }

    fn check_interrupt(&self) -> StepResult {
        if self.run.interrupt.is_set() {
            Err(StepError::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Builds the lab: network, machines, the server's sshd, the clients' identities, the fleet.
    pub fn build(&mut self, scenario: &Scenario) -> StepResult {
        for d in [&self.dir, &self.logs, &self.fleet_dir] {
            fs::create_dir_all(d)
                .map_err(|e| Failure::new(format!("creating {}: {e}", d.display())))?;
        }
        self.create_network()?;
        self.start_machines()?;
        self.setup_server()?;
        self.setup_clients()?;
        self.setup_fleet(scenario)?;
        if self.lab.init == Init::Systemd {
            self.boot_systemd()?;
        }
        Ok(())
    }

    /// `init = "systemd"`: each machine's units rendered from its module and installed, then
    /// systemd booted on every machine.
    fn boot_systemd(&mut self) -> StepResult {
        let rebuild_bin = self.run.standin();
        let fleet = self.fleet_dir.display().to_string();
        let bind = format!("mkdir -p {UNIT_FLEET} && mount --bind {fleet} {UNIT_FLEET}");
        self.exec_ok(&MachineName::server(), &["sh", "-c", &bind])?;
        for m in self.machine_names() {
            let module = boot::Module {
                name: if m.is_server() { "server" } else { "client" },
                options: self.module_options(&m),
                tiffin_bin: &self.run.tiffin,
                rebuild_bin: &rebuild_bin,
            };
            let rendered = boot::render(&module).map_err(|e| Failure::new(e).on(m.as_str()))?;
            boot::install(self.machine(&m), &rendered)
                .map_err(|e| Failure::new(e).on(m.as_str()))?;
        }
        for m in self.machine_names() {
            self.check_interrupt()?;
            boot::boot(self.machine(&m), &self.dir.join(m.as_str()))
                .map_err(|e| Failure::new(e).on(m.as_str()))?;
        }
        Ok(())
    }

    /// The `services.tiffin.<module>` options a machine's units are rendered with: the
    /// scenario's, with what the lab decides (enable; a client's host, server and pinned key).
    fn module_options(&self, m: &MachineName) -> serde_json::Value {
        let table = if m.is_server() {
            &self.lab.server_module
        } else {
            &self.lab.client_module
        };
        let mut o = serde_json::to_value(table).unwrap_or_else(|_| serde_json::json!({}));
        if let Some(obj) = o.as_object_mut() {
            obj.insert("enable".into(), true.into());
            // The metrics timer reads the lab's fleet repository unless the scenario names one
            // (where units see it: the run directory is under /tmp, which PrivateTmp hides).
            if let Some(serde_json::Value::Object(metrics)) = obj.get_mut("metrics") {
                metrics.entry("fleet").or_insert_with(|| UNIT_FLEET.into());
            }
            if !m.is_server() {
                obj.insert("host".into(), m.as_str().into());
                obj.insert("server".into(), SERVER_ADDRESS.to_string().into());
                obj.insert("serverPublicKey".into(), self.server_key.trim().into());
            }
        }
        o
    }

    pub fn machine_names(&self) -> Vec<MachineName> {
        let mut v = vec![MachineName::server()];
        v.extend(self.clients.iter().cloned());
        v
    }

    pub fn address_of(&self, m: &MachineName) -> std::net::Ipv4Addr {
        if m.is_server() {
            SERVER_ADDRESS
        } else {
            let i = self.clients.iter().position(|c| c == m).unwrap_or(0);
            machine::client_address(i)
        }
    }

    fn netns_of(&self, m: &MachineName) -> String {
        format!("{}-{m}", self.run.prefix())
    }

    /// The lab's record, brought up to date with what exists now, for `down` after a crash.
    fn record(&mut self) -> StepResult {
        self.record_state()
            .map_err(|e| Failure::new(e.to_string()).into())
    }

    fn record_state(&mut self) -> Result<(), LabError> {
        self.run.state.netns = self.netns.clone();
        self.run.state.machines = self
            .machines
            .iter()
            .map(|m| MachineState {
                name: m.name.to_string(),
                address: m.address.to_string(),
                init_pid: m.init_pid,
                init_start: m.init_start,
                env: m.env.iter().cloned().collect(),
                cgroups: m.cgroups.iter().map(|c| c.display().to_string()).collect(),
            })
            .collect();
        self.run.state.save()
    }

    /// A bridge in its own network namespace (never in the host's), one veth per machine.
    fn create_network(&mut self) -> StepResult {
        let bridge = self.bridge_ns.clone();
        self.netns.push(bridge.clone());
        self.record()?;
        self.host(&["ip", "netns", "add", &bridge])?;
        self.host(&["ip", "-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        self.host(&["ip", "-n", &bridge, "link", "set", "br0", "up"])?;
        for m in self.machine_names() {
            let ns = self.netns_of(&m);
            self.netns.push(ns.clone());
            self.record()?;
            let address = format!("{}/24", self.address_of(&m));
            self.host(&["ip", "netns", "add", &ns])?;
            self.host(&[
                "ip",
                "-n",
                &bridge,
                "link",
                "add",
                m.as_str(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ])?;
            self.host(&[
                "ip",
                "-n",
                &bridge,
                "link",
                "set",
                m.as_str(),
                "master",
                "br0",
                "up",
            ])?;
            self.host(&["ip", "-n", &ns, "addr", "add", &address, "dev", "eth0"])?;
            self.host(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            self.host(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn start_machines(&mut self) -> StepResult {
        let tiffin_dir = self
            .run
            .tiffin
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("/"));
        for m in self.machine_names() {
            self.check_interrupt()?;
            let mut env = vec![
                ("PATH".to_owned(), machine::machine_path(&tiffin_dir)),
                ("HOME".to_owned(), "/root".to_owned()),
                ("USER".to_owned(), "root".to_owned()),
                ("LOGNAME".to_owned(), "root".to_owned()),
                ("SHELL".to_owned(), "/bin/sh".to_owned()),
                ("LC_ALL".to_owned(), "C".to_owned()),
                ("TIFFIN_LAB".to_owned(), self.run.id.clone()),
                ("TIFFIN_LAB_MACHINE".to_owned(), m.to_string()),
                (
                    "TIFFIN_LAB_BIN".to_owned(),
                    self.run.bin_dir().display().to_string(),
                ),
                ("NIX_CONFIG".to_owned(), LAB_NIX_CONFIG.to_owned()),
            ];
            let shares = vec![tiffin_dir.clone(), self.run.bin_dir()];
            let mut shares_rw = Vec::new();
            if m.is_server() {
                env.push((
                    "TIFFIN_FLEET".to_owned(),
                    self.fleet_dir.display().to_string(),
                ));
                shares_rw.push(self.fleet_dir.clone());
                if self.lab.init == Init::Systemd {
                    // The lab's sshd is its own process, not a unit: provision signals its pid.
                    env.push(("TIFFIN_SSHD_RELOAD".to_owned(), "pidfile".to_owned()));
                }
            }
            let cgroups = match self.lab.init {
                Init::Lab => Vec::new(),
                Init::Systemd => {
                    cgroup::create(&cgroup::dirs_for(&format!("{}-{}", self.run.prefix(), m)))
                }
            };
            let spec = MachineSpec {
                address: self.address_of(&m),
                netns: self.netns_of(&m),
                dir: self.dir.join(m.as_str()),
                shares,
                shares_rw,
                env,
                name: m.clone(),
                init: self.lab.init,
                cgroups,
            };
            let machine = Machine::start(spec, &self.run.lab_exe)
                .map_err(|e| Failure::new(e).on(m.as_str()))?;
            self.machines.push(machine);
            self.record()?;
        }
        Ok(())
    }

    pub fn machine(&self, name: &MachineName) -> &Machine {
        self.machines
            .iter()
            .find(|m| &m.name == name)
            .expect("scenario references were checked at load")
    }

    pub fn server(&self) -> &Machine {
        self.machine(&MachineName::server())
    }

    /// The server's own host keys (never the host machine's), its sshd_config, and sshd.
    fn setup_server(&mut self) -> StepResult {
        let server = MachineName::server();
        let m = self.server();
        let ssh_dir = m.path("/etc/ssh");
        let dropins = m.path("/etc/ssh/sshd_config.d");
        // Removing the host's keys and drop-ins inside the overlay leaves whiteouts, not changes to the host.
        for dir in [&ssh_dir, &dropins] {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let is_key = name.starts_with("ssh_host_");
                let in_dropins = dir == &dropins && e.path().is_file();
                if is_key || in_dropins {
                    fs::remove_file(e.path()).map_err(|err| {
                        Failure::new(format!("removing {name} in the server's /etc/ssh: {err}"))
                            .on("server")
                    })?;
                }
            }
        }
        self.mkdir(&server, "/etc/ssh/sshd_config.d", 0o755)?;
        self.write_file(&server, SSHD_CONFIG, &sshd_config(), 0o644)?;
        self.server_key = self.generate_key(&server, SERVER_HOST_KEY, "tiffin-lab-server")?;
        self.start_sshd()
    }

    /// Each client generates its own key; it pins the server's host key for ssh/sftp and tiffin.
    fn setup_clients(&mut self) -> StepResult {
        let standin = self.run.standin().display().to_string();
        let systemctl = self.run.systemctl_standin().display().to_string();
        let systemd_run = self.run.systemd_run_standin().display().to_string();
        for c in self.clients.clone() {
            self.check_interrupt()?;
            self.mkdir(&c, "/etc/tiffin", 0o755)?;
            let key = self.generate_key(&c, CLIENT_IDENTITY, &format!("root@{c}"))?;
            self.client_keys.insert(c.clone(), key);
            let known = format!("{SERVER_ADDRESS} {}\n", self.server_key);
            self.write_file(&c, KNOWN_HOSTS, &known, 0o644)?;
            let config = ClientToml {
                host: c.to_string(),
                server: format!("{SERVER_ADDRESS}:22"),
                identity: CLIENT_IDENTITY.to_owned(),
                server_key: self.server_key.clone(),
                rebuild: vec![
                    standin.clone(),
                    "{action}".into(),
                    "--flake".into(),
                    "{config}#{host}".into(),
                ],
                systemctl: vec![systemctl.clone()],
                // Every activation runs as on NixOS: in a unit of its own (the stand-in).
                activation: "systemd-run".into(),
                systemd_run: vec![systemd_run.clone()],
            };
            // On the real init, the real systemctl and systemd-run (in a unit of its own).
            let config = match self.lab.init {
                Init::Lab => config,
                Init::Systemd => ClientToml {
                    systemctl: vec!["systemctl".into()],
                    activation: "auto".into(),
                    systemd_run: vec!["systemd-run".into()],
                    ..config
                },
            };
            let text = format!(
                "# Written by tiffin-lab for the lab machine {c}; see docs/formats.md.\n{}",
                toml::to_string(&config).expect("client.toml serializes")
            );
            self.write_file(&c, CLIENT_CONFIG, &text, 0o600)?;
        }
        Ok(())
    }

    /// `tiffin init`, `tiffin host add` for every client, then the scenario's `[fleet]`.
    fn setup_fleet(&mut self, scenario: &Scenario) -> StepResult {
        let server = MachineName::server();
        let fleet = self.fleet_dir.display().to_string();
        self.exec_ok(&server, &["tiffin", "init", &fleet])?;
        let example = self.fleet_dir.join("hosts/example");
        fs::remove_dir_all(&example)
            .map_err(|e| Failure::new(format!("removing {}: {e}", example.display())))?;
        for c in self.clients.clone() {
            let key = self.client_keys[&c].clone();
            self.exec_ok(
                &server,
                &["tiffin", "host", "add", c.as_str(), "--key", &key],
            )?;
        }
        let fleet_toml = self.fleet_dir.join(tiffin::admin::fleet::FLEET_FILE);
        let text = fs::read_to_string(&fleet_toml)
            .map_err(|e| Failure::new(format!("reading {}: {e}", fleet_toml.display())))?;
        let text = adjust_fleet_toml(&text, scenario);
        write_host_file(&fleet_toml, &text, None)?;
        for (host, spec) in &scenario.fleet.hosts {
            let dir = self.fleet_dir.join("hosts").join(host.as_str());
            if let Some(config) = &spec.configuration {
                write_host_file(&dir.join("configuration.nix"), config, None)?;
            }
            for (path, file) in &spec.files {
                let target = path.under(&dir.join("files"));
                write_host_file(
                    &target,
                    &file.content,
                    Some(file.mode.map_or(0o644, |m| m.bits())),
                )?;
            }
            if let Some(extra) = &spec.host_toml {
                append_host_toml(&dir.join(tiffin::admin::fleet::HOST_FILE), extra)?;
            }
        }
        for (path, file) in &scenario.fleet.common_files {
            let target = path.under(
                &self
                    .fleet_dir
                    .join(tiffin::admin::host_tree::common::COMMON_FILES),
            );
            let mode = Some(file.mode.map_or(0o644, |m| m.bits()));
            write_host_file(&target, &file.content, mode)?;
        }
        Ok(())
    }

    // ---- commands -------------------------------------------------------------------------

    fn next_log(&mut self, machine: &str, argv0: &str) -> PathBuf {
        self.log_seq += 1;
        let base = Path::new(argv0)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.logs
            .join(format!("{:03}-{machine}-{base}.log", self.log_seq))
    }

    /// Runs a command on the host itself (only `ip` for the lab's own namespaces).
    pub fn host(&mut self, argv: &[&str]) -> StepResult<Finished> {
        self.check_interrupt()?;
        let log = self.next_log("host", argv[0]);
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]).env("LC_ALL", "C");
        let command = exec::shell_words(&argv.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let done = exec::run(cmd, &log, None, COMMAND_TIMEOUT, &self.run.interrupt)
            .map_err(|e| exec_failure(e, "the lab host", &command))?;
        if done.status.success() {
            Ok(done)
        } else {
            Err(Failure {
                problem: format!("`{command}` failed while building the lab"),
                machine: Some("the lab host".into()),
                command: Some(command),
                exit: Some(done.code().to_string()),
                output: Some(done.output),
            }
            .into())
        }
    }

    /// Runs `argv` inside a machine; any exit status is returned, only failing to run is an error.
    pub fn exec(
        &mut self,
        on: &MachineName,
        argv: &[&str],
        stdin: Option<&str>,
    ) -> StepResult<Finished> {
        self.exec_with(on, argv, stdin, COMMAND_TIMEOUT)
    }

    pub fn exec_with(
        &mut self,
        on: &MachineName,
        argv: &[&str],
        stdin: Option<&str>,
        timeout: Duration,
    ) -> StepResult<Finished> {
        self.check_interrupt()?;
        let running = self.spawn(on, argv, stdin)?;
        let command = exec::shell_words(&argv.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        running
            .wait(timeout, &self.run.interrupt)
            .map_err(|e| exec_failure(e, on.as_str(), &command))
    }

    /// Starts `argv` inside a machine and returns at once.
    pub fn spawn(
        &mut self,
        on: &MachineName,
        argv: &[&str],
        stdin: Option<&str>,
    ) -> StepResult<Running> {
        let log = self.next_log(on.as_str(), argv[0]);
        let input = match stdin {
            Some(text) => {
                let p = log.with_extension("stdin");
                fs::write(&p, text)
                    .map_err(|e| Failure::new(format!("writing {}: {e}", p.display())))?;
                Some(p)
            }
            None => None,
        };
        let cmd = self.machine(on).command(argv);
        let command = exec::shell_words(&argv.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        Running::spawn(cmd, &log, input.as_deref())
            .map_err(|e| exec_failure(e, on.as_str(), &command))
    }

    /// Runs `argv` inside a machine and fails unless it exits 0.
    pub fn exec_ok(&mut self, on: &MachineName, argv: &[&str]) -> StepResult<Finished> {
        let done = self.exec(on, argv, None)?;
        if done.status.success() {
            Ok(done)
        } else {
            let command =
                exec::shell_words(&argv.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            Err(Failure {
                problem: format!("`{}` failed", argv[0]),
                machine: Some(on.to_string()),
                command: Some(command),
                exit: Some(format!("{} (expected 0)", done.code())),
                output: Some(done.output),
            }
            .into())
        }
    }

    // ---- files inside machines ------------------------------------------------------------

    pub fn write_file(&self, on: &MachineName, path: &str, content: &str, mode: u32) -> StepResult {
        let target = self.machine(on).path(path);
        write_host_file(&target, content, Some(mode)).map_err(|e| match e {
            StepError::Failed(mut f) => {
                f.problem = format!("writing {path} on {on}: {}", f.problem);
                f.machine = Some(on.to_string());
                StepError::Failed(f)
            }
            other => other,
        })
    }

    pub fn mkdir(&self, on: &MachineName, path: &str, mode: u32) -> StepResult {
        let target = self.machine(on).path(path);
        fs::create_dir_all(&target)
            .and_then(|()| fs::set_permissions(&target, fs::Permissions::from_mode(mode)))
            .map_err(|e| {
                Failure::new(format!("creating {path}: {e}"))
                    .on(on.as_str())
                    .into()
            })
    }

    pub fn read_file(&self, on: &MachineName, path: &str) -> Result<String, std::io::Error> {
        let bytes = self.machine(on).read_inside(path)?;
        String::from_utf8(bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// A new ed25519 key pair at `path` on a machine (no passphrase); returns the public key line.
    pub fn generate_key(
        &mut self,
        on: &MachineName,
        path: &str,
        comment: &str,
    ) -> StepResult<String> {
        let public = format!("{path}.pub");
        self.exec(on, &["rm", "-f", path, &public], None)?;
        self.exec_ok(
            on,
            &[
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                comment,
                "-f",
                path,
            ],
        )?;
        self.read_public_key(on, &public)
    }

    /// `algorithm base64` of an OpenSSH public key file inside a machine.
    fn read_public_key(&self, on: &MachineName, path: &str) -> StepResult<String> {
        let text = self
            .read_file(on, path)
            .map_err(|e| Failure::new(format!("reading {path}: {e}")).on(on.as_str()))?;
        let fields: Vec<&str> = text.split_whitespace().take(2).collect();
        if fields.len() == 2 {
            Ok(fields.join(" "))
        } else {
            Err(
                Failure::new(format!("{path} is not an OpenSSH public key: {text:?}"))
                    .on(on.as_str())
                    .into(),
            )
        }
    }

    // ---- sshd -----------------------------------------------------------------------------

    pub fn sshd_running(&mut self) -> bool {
        match &mut self.sshd {
            Some(r) => r.poll().is_none(),
            None => false,
        }
    }

    /// How many times sshd said it listens, and the log's length.
    fn sshd_log_state(&self) -> (usize, usize) {
        let text = exec::read_log(&self.sshd_log);
        (text.matches("Server listening on").count(), text.len())
    }

    pub fn start_sshd(&mut self) -> StepResult {
        if self.sshd_running() {
            return Err(Failure::new("sshd is already running on the server").into());
        }
        let (before, _) = self.sshd_log_state();
        let sshd = self.run.sshd.display().to_string();
        let argv = [sshd.as_str(), "-D", "-e", "-f", SSHD_CONFIG];
        let cmd = self.server().command(&argv);
        let command = exec::shell_words(&argv.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let running = Running::spawn(cmd, &self.sshd_log, None)
            .map_err(|e| exec_failure(e, "server", &command))?;
        self.sshd = Some(running);
        self.wait_sshd_listening(before, &command)
    }

    fn wait_sshd_listening(&mut self, before: usize, command: &str) -> StepResult {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            self.check_interrupt()?;
            if self.sshd_log_state().0 > before {
                return Ok(());
            }
            let exited = match &mut self.sshd {
                Some(r) => r.poll(),
                None => None,
            };
            if exited.is_some() || Instant::now() > deadline {
                return Err(Failure {
                    problem: if exited.is_some() {
                        "sshd exited instead of listening".into()
                    } else {
                        "sshd did not listen within 15s".into()
                    },
                    machine: Some("server".into()),
                    command: Some(command.to_owned()),
                    exit: exited.map(|s| exec::exit_code(s).to_string()),
                    output: Some(exec::read_log(&self.sshd_log)),
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The log's length now, to look at what a step made sshd say.
    pub fn sshd_mark(&self) -> usize {
        self.sshd_log_state().1
    }

    /// After a step that may have reloaded sshd (SIGHUP re-executes it): wait until it listens again.
    pub fn settle_sshd(&mut self, mark: usize) -> StepResult {
        let text = exec::read_log(&self.sshd_log);
        let new = text.get(mark..).unwrap_or_default();
        if let Some(at) = new.rfind("Received SIGHUP")
            && !new[at..].contains("Server listening on")
        {
            let before = text.matches("Server listening on").count();
            return self.wait_sshd_listening(before, "sshd (reloading after SIGHUP)");
        }
        Ok(())
    }

    /// Stops every sshd process of the server (the listener and the sessions), by pid.
    pub fn stop_sshd(&mut self) -> StepResult {
        let server = self.server();
        let pid_ns = procfs::ns_inode(server.init_pid, "pid");
        let sshd_pids = |ns: Option<u64>| -> Vec<u32> {
            let Some(ns) = ns else { return Vec::new() };
            procfs::pids_in(&[("pid", ns)])
                .into_iter()
                .filter(|p| {
                    procfs::exe(*p).is_some_and(|e| {
                        Path::new(&e)
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("sshd"))
                    })
                })
                .collect()
        };
        for pid in sshd_pids(pid_ns) {
            procfs::signal(pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sshd_pids(pid_ns).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for pid in sshd_pids(pid_ns) {
            procfs::signal(pid, Signal::SIGKILL);
        }
        if let Some(mut r) = self.sshd.take() {
            let _ = r.wait_briefly();
        }
        Ok(())
    }

    // ---- teardown -------------------------------------------------------------------------

    /// Leaves the lab up for `tiffin-lab shell` / `down`.
    pub fn keep(&mut self) -> StepResult {
        self.run.state.kept = true;
        self.record()?;
        // Dropping a command's handle neither kills nor waits: it goes on in the kept lab.
        self.background.clear();
        self.sshd = None;
        for m in &mut self.machines {
            m.detach();
        }
        self.finished = true;
        Ok(())
    }

    /// Tears everything down: commands, sshd, machines (all their processes), namespaces, files.
    /// Returns what could not be removed.
    pub fn down(&mut self) -> Vec<String> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let t = Instant::now();
        self.stop_machines(t);
        let mut problems = self.delete_namespaces(t);
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("removing {}: {e}", self.dir.display())),
        }
        tracing::debug!("files removed at {:?}", t.elapsed());
        self.run.state.scenario = None;
        if let Err(e) = self.record_state() {
            problems.push(e.to_string());
        }
        tracing::debug!("recorded at {:?}", t.elapsed());
        problems
    }

    fn stop_machines(&mut self, t: Instant) {
        // All machines die at once (their pid 1 first: the kernel then kills every process in
        // them, sshd and running commands included); then each is waited for.
        for m in &self.machines {
            m.kill();
        }
        // Their nsenter parents must reap them, not be killed: a process orphaned while its pid 1
        // exits goes to the host's init, and the namespace waits until that one reaps it.
        for mut b in self.background.drain(..) {
            b.running.wait_briefly();
        }
        if let Some(mut r) = self.sshd.take() {
            r.wait_briefly();
        }
        for m in self.machines.iter_mut().rev() {
            let killed = m.stop();
            tracing::debug!(
                "stopped {} ({} straggler(s)) at {:?}",
                m.name,
                killed.len(),
                t.elapsed()
            );
        }
        self.machines.clear();
    }

    /// Deletes the lab's network namespaces, then looks for any of the run's still there.
    fn delete_namespaces(&mut self, t: Instant) -> Vec<String> {
        let mut problems = Vec::new();
        for ns in self.netns.iter().rev() {
            if let Err(e) = state::delete_netns(ns) {
                problems.push(e);
            }
            tracing::debug!("deleted {ns} at {:?}", t.elapsed());
        }
        let left = state::netns_with_prefix(&self.run.prefix());
        if !left.is_empty() {
            problems.push(format!("network namespaces left: {}", left.join(", ")));
        }
        self.netns.clear();
        tracing::debug!("namespaces checked at {:?}", t.elapsed());
        problems
    }
}

impl Drop for World<'_> {
    fn drop(&mut self) {
        for p in self.down() {
            eprintln!("tiffin-lab: teardown: {p}");
        }
    }
}

/// A command that could not run to its end, as a failure.
pub fn exec_failure(e: ExecError, machine: &str, command: &str) -> StepError {
    match e {
        ExecError::Interrupted { .. } => StepError::Interrupted,
        e => Failure {
            problem: e.to_string(),
            machine: Some(machine.to_owned()),
            command: Some(command.to_owned()),
            exit: None,
            output: Some(e.output().to_owned()).filter(|o| !o.is_empty()),
        }
        .into(),
    }
}

/// Writes a file on the host's side (fleet repository, or a machine through /proc/PID/root),
/// by temporary file and rename: a command running meanwhile (a background publish loop, sshd)
/// sees the old content or the new, never half of it, and a final symlink is replaced rather
/// than followed (through /proc/PID/root an absolute one would lead to the host's own file).
pub fn write_host_file(path: &Path, content: &str, mode: Option<u32>) -> StepResult {
    let fail = |e: std::io::Error| Failure::new(format!("writing {}: {e}", path.display()));
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(fail)?;
    }
    // Without a mode, what a plain write would leave: the file's own mode, or a new file's.
    let mode = mode.unwrap_or_else(|| match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(_) => 0o666 & !umask(),
    });
    tiffin::core::durable::write_atomic(
        path,
        content.as_bytes(),
        mode,
        tiffin::core::durable::Owner::Caller,
    )
    .map_err(|e| fail(e).into())
}

/// Adds a scenario's `host_toml` text to the end of a host.toml `tiffin host add` wrote.
fn append_host_toml(path: &Path, extra: &str) -> StepResult {
    let text = fs::read_to_string(path)
        .map_err(|e| Failure::new(format!("reading {}: {e}", path.display())))?;
    write_host_file(path, &format!("{text}\n{extra}"), None)
}

/// The process's umask, read without changing it (setting it to read it would race with threads).
fn umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Umask:"))?;
            u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
        })
        .unwrap_or(0o022)
}

#[derive(Serialize)]
struct ClientToml {
    host: String,
    server: String,
    identity: String,
    server_key: String,
    rebuild: Vec<String>,
    systemctl: Vec<String>,
    activation: String,
    systemd_run: Vec<String>,
}

/// The lab server's base sshd configuration; tiffin provision adds its drop-in.
fn sshd_config() -> String {
    format!(
        "# The lab server's sshd_config, written by tiffin-lab into this machine's /etc overlay\n\
         # (the host's own /etc/ssh is untouched). `tiffin provision` adds its drop-in.\n\
         Include /etc/ssh/sshd_config.d/*.conf\n\
         ListenAddress {SERVER_ADDRESS}\n\
         HostKey {SERVER_HOST_KEY}\n\
         PidFile /run/sshd.pid\n\
         PermitRootLogin no\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM yes\n\
         PrintMotd no\n\
         MaxStartups 64:30:128\n\
         LogLevel VERBOSE\n\
         Subsystem sftp internal-sftp\n"
    )
}

/// fleet.toml from `tiffin init`, with the scenario's `[fleet]` settings put under their tables.
pub fn adjust_fleet_toml(template: &str, scenario: &Scenario) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut server_lines = Vec::new();
    if !scenario.fleet.sshd_extra.is_empty() {
        let items: Vec<String> = scenario.fleet.sshd_extra.iter().map(|l| quote(l)).collect();
        server_lines.push(format!("sshd_extra = [{}]", items.join(", ")));
    }
    let mut defaults_lines = Vec::new();
    if let Some(interval) = scenario.fleet.poll_interval {
        defaults_lines.push(format!("poll_interval = {}", quote(&interval.to_string())));
    }
    let mut out = String::new();
    let mut placed_server = server_lines.is_empty();
    let mut placed_defaults = defaults_lines.is_empty();
    for line in template.lines() {
        out.push_str(line);
        out.push('\n');
        match line.trim() {
            "[server]" if !placed_server => {
                out.push_str("# set by the lab scenario\n");
                for l in &server_lines {
                    out.push_str(l);
                    out.push('\n');
                }
                placed_server = true;
            }
            "[defaults]" if !placed_defaults => {
                out.push_str("# set by the lab scenario\n");
                for l in &defaults_lines {
                    out.push_str(l);
                    out.push('\n');
                }
                placed_defaults = true;
            }
            _ => {}
        }
    }
    if !placed_server {
        out.push_str(&format!("\n[server]\n{}\n", server_lines.join("\n")));
    }
    if !placed_defaults {
        out.push_str(&format!("\n[defaults]\n{}\n", defaults_lines.join("\n")));
    }
    out
}

/// The fleet as the server holds it, read from outside.
impl World<'_> {
    /// The fleet's settings as the server sees them.
    pub fn fleet_config(&self) -> StepResult<FleetConfig> {
        let path = self.fleet_dir.join(tiffin::admin::fleet::FLEET_FILE);
        let text = fs::read_to_string(&path)
            .map_err(|e| Failure::new(format!("reading {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            Failure::new(format!(
                "{}: {}",
                path.display(),
                tiffin::core::diag::toml_message(&e)
            ))
            .into()
        })
    }

    /// A host's chroot on the server, as the lab reaches it from outside.
    pub fn chroot_of(&self, host: &str) -> StepResult<ChrootPaths> {
        let config = self.fleet_config()?;
        let root = self
            .server()
            .path(&config.server.chroot_root.display().to_string());
        let host: HostName = host
            .parse()
            .map_err(|e: tiffin::core::names::NameError| Failure::new(e.to_string()))?;
        Ok(ChrootPaths::new(&root, &host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_files_are_replaced_whole_and_keep_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let mode_of = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        let file = dir.path().join("a/b/file");
        write_host_file(&file, "one\n", Some(0o640)).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "one\n");
        assert_eq!(mode_of(&file), 0o640);
        write_host_file(&file, "two\n", None).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "two\n");
        assert_eq!(mode_of(&file), 0o640, "an unnamed mode is the file's own");
        let fresh = dir.path().join("fresh");
        write_host_file(&fresh, "x", None).unwrap();
        assert_eq!(mode_of(&fresh), 0o666 & !umask());
        // A final symlink is replaced, its target left alone.
        let target = dir.path().join("target");
        fs::write(&target, "target\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_host_file(&link, "new\n", Some(0o644)).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "target\n");
        assert!(fs::symlink_metadata(&link).unwrap().is_file());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 4, "no temporary file left: {names:?}");
    }

    #[test]
    fn fleet_settings_land_under_their_tables() {
        let scenario = Scenario::parse(
            Path::new("t.toml"),
            "# x\n[fleet]\npoll_interval = \"1m\"\nsshd_extra = [\"ClientAliveInterval 5\"]\n",
        )
        .unwrap();
        let template = include_str!("../../admin/templates/fleet.toml");
        let out = adjust_fleet_toml(template, &scenario);
        let parsed: tiffin::admin::fleet::FleetConfig = toml::from_str(&out).unwrap();
        assert_eq!(parsed.server.sshd_extra, vec!["ClientAliveInterval 5"]);
        assert_eq!(parsed.defaults.poll_interval.to_string(), "1m");
        let plain = Scenario::parse(Path::new("t.toml"), "# x\n").unwrap();
        assert_eq!(adjust_fleet_toml(template, &plain), template);
    }
}
