//! Scenario files (`vm-scenarios/*.toml`): the schema of docs/formats.md ("Lab scenarios"), loaded and checked before any namespace exists.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use tiffin::core::names::{HostName, RelPath};
use tiffin::core::release::Mode;
use tiffin::core::settings::Interval;
use tiffin::server::status::State;

use super::LabError;

/// The longest machine name: it names a network interface (IFNAMSIZ - 1).
pub const MAX_MACHINE_NAME: usize = 15;
/// Clients get 192.0.2.11, .12, …; this many fit comfortably below the broadcast address.
pub const MAX_CLIENTS: usize = 20;
pub const SERVER: &str = "server";

/// A lab machine: `server`, or a client, whose name is also its host name in the fleet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MachineName(String);

impl MachineName {
    pub fn server() -> MachineName {
        MachineName(SERVER.to_owned())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_server(&self) -> bool {
        self.0 == SERVER
    }
}

impl FromStr for MachineName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let host: Result<HostName, _> = s.parse();
        if host.is_ok() && s.len() <= MAX_MACHINE_NAME {
            Ok(MachineName(s.to_owned()))
        } else {
            Err(format!(
                "invalid machine name {s:?}: expected \"server\" or a client name of at most {MAX_MACHINE_NAME} lowercase letters, digits or '-', starting with a letter"
            ))
        }
    }
}

impl fmt::Display for MachineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MachineName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One machine or several: `on = "client1"` and `on = ["client1", "client2"]` both read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(MachineName),
    Many(Vec<MachineName>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<MachineName> {
        match self {
            OneOrMany::One(m) => vec![m.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// The whole file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    lab: LabSection,
    #[serde(default)]
    fleet: FleetSection,
    #[serde(default, rename = "step")]
    steps: Vec<toml::Spanned<Step>>,
}

/// `[lab]`: which machines exist besides the server, and what runs as their PID 1.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabSection {
    #[serde(default = "default_clients")]
    pub clients: Vec<MachineName>,
    #[serde(default)]
    pub init: Init,
    /// `init = "systemd"`: the `services.tiffin.client` options the clients' units are
    /// rendered with (host, server and key come from the lab).
    #[serde(default)]
    pub client_module: toml::Table,
    /// `init = "systemd"`: the `services.tiffin.server` options the server's units are rendered with.
    #[serde(default)]
    pub server_module: toml::Table,
}

impl Default for LabSection {
    fn default() -> Self {
        LabSection {
            clients: default_clients(),
            init: Init::default(),
            client_module: toml::Table::new(),
            server_module: toml::Table::new(),
        }
    }
}

/// What a machine runs as its PID 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// The lab's own minimal init (`machine-init`): it builds the machine and reaps orphans.
    #[default]
    Lab,
    /// The real systemd, booted with the units tiffin's NixOS modules render (docs/lab.md).
    Systemd,
}

fn default_clients() -> Vec<MachineName> {
    ["client1", "client2", "client3"]
        .iter()
        .map(|c| MachineName(c.to_string()))
        .collect()
}

/// `[fleet]`: how the fleet the lab builds (`tiffin init` + `tiffin host add` per client) is adjusted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    pub poll_interval: Option<Interval>,
    #[serde(default)]
    pub sshd_extra: Vec<String>,
    #[serde(default)]
    pub hosts: BTreeMap<HostName, HostSection>,
    /// Files under `common/files/`, deployed to every host.
    #[serde(default)]
    pub common_files: BTreeMap<RelPath, FileSection>,
}

/// `[fleet.hosts.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// Replaces `hosts/NAME/configuration.nix`.
    pub configuration: Option<String>,
    /// Files under `hosts/NAME/files/`.
    #[serde(default)]
    pub files: BTreeMap<RelPath, FileSection>,
    /// TOML added to the end of `hosts/NAME/host.toml` (e.g. `[files."etc/x"]` tables).
    pub host_toml: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSection {
    pub content: String,
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProvisionExpect {
    #[default]
    Changed,
    NothingToDo,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullExpect {
    #[default]
    Ok,
    Unchanged,
    Failed,
    Refused,
}

impl PullExpect {
    pub fn as_str(self) -> &'static str {
        match self {
            PullExpect::Ok => "ok",
            PullExpect::Unchanged => "unchanged",
            PullExpect::Failed => "failed",
            PullExpect::Refused => "refused",
        }
    }
}

/// What `expect_denied` tries, with OpenSSH's own clients, from a client machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    ReadOther,
    ListOther,
    WriteRelease,
    WriteRoot,
    Shell,
    PortForward,
    WrongKey,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadOther => "read-other",
            Access::ListOther => "list-other",
            Access::WriteRelease => "write-release",
            Access::WriteRoot => "write-root",
            Access::Shell => "shell",
            Access::PortForward => "port-forward",
            Access::WrongKey => "wrong-key",
        }
    }
    pub fn needs_other(self) -> bool {
        matches!(
            self,
            Access::ReadOther | Access::ListOther | Access::WrongKey
        )
    }
}

/// One step. The `do` key picks the variant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    Provision {
        #[serde(default)]
        expect: ProvisionExpect,
    },
    Publish {
        #[serde(default)]
        hosts: Vec<HostName>,
    },
    Edit {
        host: HostName,
        path: RelPath,
        content: Option<String>,
        #[serde(default)]
        remove: bool,
        mode: Option<Mode>,
    },
    Pull {
        on: Option<OneOrMany>,
        #[serde(default)]
        expect: PullExpect,
        #[serde(default)]
        args: Vec<String>,
    },
    ExpectFile {
        on: MachineName,
        path: String,
        content: Option<String>,
        mode: Option<Mode>,
        #[serde(default)]
        absent: bool,
    },
    ExpectDenied {
        on: MachineName,
        access: Access,
        other: Option<MachineName>,
    },
    ExpectStatus {
        hosts: BTreeMap<HostName, State>,
    },
    NetDown {
        on: MachineName,
    },
    NetUp {
        on: MachineName,
    },
    StopServer,
    StartServer,
    Run {
        on: MachineName,
        command: String,
        #[serde(default)]
        expect_exit: i32,
        expect_output: Option<String>,
        /// Start the command and go on; its result is checked at the next `wait` step (or the scenario's end).
        #[serde(default)]
        background: bool,
    },
    /// Wait for every `run` started with `background = true` and check its expectations.
    Wait,
    /// Start `tiffin pull --watch` on clients (default: all); it runs until `watch_stop`.
    WatchStart {
        on: Option<OneOrMany>,
    },
    /// SIGTERM the watchers on clients (default: all); each must exit 0 within 30 s.
    WatchStop {
        on: Option<OneOrMany>,
    },
    /// Run `command` on `on` until it exits 0; fail after `within` seconds.
    WaitUntil {
        on: MachineName,
        command: String,
        within: u64,
    },
}

impl Step {
    /// The `do` value, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Provision { .. } => "provision",
            Step::Publish { .. } => "publish",
            Step::Edit { .. } => "edit",
            Step::Pull { .. } => "pull",
            Step::ExpectFile { .. } => "expect_file",
            Step::ExpectDenied { .. } => "expect_denied",
            Step::ExpectStatus { .. } => "expect_status",
            Step::NetDown { .. } => "net_down",
            Step::NetUp { .. } => "net_up",
            Step::StopServer => "stop_server",
            Step::StartServer => "start_server",
            Step::Run { .. } => "run",
            Step::Wait => "wait",
            Step::WatchStart { .. } => "watch_start",
            Step::WatchStop { .. } => "watch_stop",
            Step::WaitUntil { .. } => "wait_until",
        }
    }

    /// A one-line description for the progress output.
    pub fn describe(&self, clients: &[MachineName]) -> String {
        match self {
            Step::Provision {
                expect: ProvisionExpect::Changed,
            } => "provision on server".into(),
            Step::Provision {
                expect: ProvisionExpect::NothingToDo,
            } => "provision on server (nothing to do)".into(),
            Step::Publish { hosts } if hosts.is_empty() => "publish (all hosts)".into(),
            Step::Publish { hosts } => {
                format!(
                    "publish {}",
                    joined(hosts.iter().map(HostName::as_str), ",")
                )
            }
            Step::Edit {
                host,
                path,
                remove: true,
                ..
            } => format!("edit: remove hosts/{host}/{path}"),
            Step::Edit { host, path, .. } => format!("edit hosts/{host}/{path}"),
            Step::Pull { on, expect, .. } => {
                let machines = on.as_ref().map(OneOrMany::to_vec);
                let machines = machines.as_deref().unwrap_or(clients);
                format!(
                    "pull on {} (expect {})",
                    joined(machines.iter().map(MachineName::as_str), ","),
                    expect.as_str()
                )
            }
            Step::ExpectFile {
                on,
                path,
                absent: true,
                ..
            } => format!("expect_file {on}:{path} absent"),
            Step::ExpectFile { on, path, .. } => format!("expect_file {on}:{path}"),
            Step::ExpectDenied {
                on,
                access,
                other: Some(o),
            } => format!("expect_denied {on} {} {o}", access.as_str()),
            Step::ExpectDenied { on, access, .. } => {
                format!("expect_denied {on} {}", access.as_str())
            }
            Step::ExpectStatus { hosts } => {
                let states: Vec<String> = hosts
                    .iter()
                    .map(|(h, s)| format!("{h}={}", s.as_str()))
                    .collect();
                format!("expect_status {}", states.join(" "))
            }
            Step::NetDown { on } => format!("net_down {on}"),
            Step::NetUp { on } => format!("net_up {on}"),
            Step::StopServer => "stop_server".into(),
            Step::StartServer => "start_server".into(),
            Step::Run {
                on,
                command,
                background,
                ..
            } => {
                let bg = if *background { " (background)" } else { "" };
                format!("run on {on}{bg}: {}", headline(command))
            }
            Step::Wait => "wait for background runs".into(),
            Step::WatchStart { .. } | Step::WatchStop { .. } | Step::WaitUntil { .. } => {
                self.describe_watch(clients)
            }
        }
    }
}

impl Step {
    /// The watch steps' progress lines (`describe`'s, kept apart).
    fn describe_watch(&self, clients: &[MachineName]) -> String {
        match self {
            Step::WatchStart { on } | Step::WatchStop { on } => {
                let machines = on.as_ref().map(OneOrMany::to_vec);
                let machines = machines.as_deref().unwrap_or(clients);
                let verb = if matches!(self, Step::WatchStart { .. }) {
                    "start"
                } else {
                    "stop"
                };
                format!(
                    "watch_{verb} on {}",
                    joined(machines.iter().map(MachineName::as_str), ",")
                )
            }
            Step::WaitUntil {
                on,
                command,
                within,
            } => format!("wait until (≤{within}s) on {on}: {}", headline(command)),
            _ => String::new(),
        }
    }
}

/// What a command does, in at most 60 characters: its first line that says something (not
/// `set -e`, not a comment), with `…` when the command goes on.
fn headline(command: &str) -> String {
    let first = command
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("set ") && !l.starts_with('#'))
        .unwrap_or_default();
    let short: String = first.chars().take(60).collect();
    let whole = command.trim();
    if short.len() < whole.len() && !whole.ends_with(&short) {
        format!("{short}…")
    } else {
        short
    }
}

/// A step with where it sits in its file.
#[derive(Debug, Clone)]
pub struct PlacedStep {
    pub step: Step,
    pub line: usize,
}

/// A loaded and checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file stem, e.g. `isolation`.
    pub name: String,
    pub path: PathBuf,
    /// The opening comment, without `#`.
    pub proves: String,
    pub lab: LabSection,
    pub fleet: FleetSection,
    pub steps: Vec<PlacedStep>,
}

impl Scenario {
    pub fn clients(&self) -> &[MachineName] {
        &self.lab.clients
    }

    pub fn has_machine(&self, m: &MachineName) -> bool {
        m.is_server() || self.lab.clients.contains(m)
    }

    fn is_client(&self, host: &str) -> bool {
        self.lab.clients.iter().any(|c| c.as_str() == host)
    }

    /// Parses and checks a scenario; every problem is reported with the file, the step and its line.
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, LabError> {
        let bad = |message: String| LabError::Scenario {
            path: path.to_owned(),
            message,
        };
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".into());
        let proves = opening_comment(text).ok_or_else(|| {
            bad("the first line must be a comment saying what the scenario proves, like \"# Proves: …\"".into())
        })?;
        let file: ScenarioFile =
            toml::from_str(text).map_err(|e| bad(tiffin::core::diag::toml_message(&e)))?;
        let steps = file
            .steps
            .into_iter()
            .map(|s| PlacedStep {
                line: line_of(text, s.span().start),
                step: s.into_inner(),
            })
            .collect();
        let scenario = Scenario {
            name,
            path: path.to_owned(),
            proves,
            lab: file.lab,
            fleet: file.fleet,
            steps,
        };
        let problems = scenario.problems();
        if problems.is_empty() {
            Ok(scenario)
        } else {
            Err(bad(problems.join("\n  ")))
        }
    }

    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, LabError> {
        let text = std::fs::read_to_string(path).map_err(|e| LabError::Scenario {
            path: path.to_owned(),
            message: format!("cannot read: {e}"),
        })?;
        Scenario::parse(path, &text)
    }

    /// Everything that does not fit between the parts of the file: unknown machines, missing
    /// keys. In file order, so the list reads top to bottom like the file.
    fn problems(&self) -> Vec<String> {
        let mut out = self.lab_problems();
        out.extend(self.fleet_problems());
        for (i, placed) in self.steps.iter().enumerate() {
            out.extend(StepCheck::problems(self, i + 1, placed));
        }
        out
    }

    /// `[lab]`: the clients must fit the lab's network and name distinct machines.
    fn lab_problems(&self) -> Vec<String> {
        let clients = &self.lab.clients;
        let mut out = Vec::new();
        if clients.is_empty() {
            out.push("[lab] clients: name at least one client".to_owned());
        }
        if clients.len() > MAX_CLIENTS {
            out.push(format!(
                "[lab] clients: at most {MAX_CLIENTS} clients fit the lab's network"
            ));
        }
        for (i, c) in clients.iter().enumerate() {
            if c.is_server() {
                out.push("[lab] clients: \"server\" is the server's name, not a client".into());
            }
            if clients[..i].contains(c) {
                out.push(format!("[lab] clients: {c} is listed twice"));
            }
        }
        out
    }

    /// `[fleet]`: hosts are clients of the lab, and each sshd_extra entry is one config line.
    fn fleet_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for host in self.fleet.hosts.keys() {
            if !self.is_client(host.as_str()) {
                out.push(format!(
                    "[fleet.hosts.{host}]: {host} is not one of the clients ({})",
                    names(&self.lab.clients)
                ));
            }
        }
        for line in &self.fleet.sshd_extra {
            if line.contains('\n') || line.trim().is_empty() {
                out.push(format!(
                    "[fleet] sshd_extra: {line:?} must be one non-empty sshd_config line"
                ));
            }
        }
        out
    }
}

/// The checks of one step, one validator per step kind; every problem names the step and its line.
struct StepCheck<'a> {
    scenario: &'a Scenario,
    at: String,
    problems: Vec<String>,
}

impl<'a> StepCheck<'a> {
    fn problems(scenario: &'a Scenario, number: usize, placed: &PlacedStep) -> Vec<String> {
        let mut check = StepCheck {
            scenario,
            at: format!(
                "step {number} (line {}, {})",
                placed.line,
                placed.step.kind()
            ),
            problems: Vec::new(),
        };
        // Exhaustive on purpose: a new step kind has to say what of it is checked.
        match &placed.step {
            Step::Pull { on, .. } => check.pull(on.as_ref()),
            Step::Publish { hosts } => check.hosts(hosts.iter()),
            Step::ExpectStatus { hosts } => check.expect_status(hosts),
            Step::Edit {
                host,
                content,
                remove,
                ..
            } => check.edit(host, content.as_deref(), *remove),
            Step::ExpectFile {
                on,
                path,
                content,
                mode,
                absent,
            } => {
                check.machine(on, "on");
                check.expect_file(path, content.is_some() || mode.is_some(), *absent);
            }
            Step::ExpectDenied { on, access, other } => {
                check.expect_denied(on, *access, other.as_ref())
            }
            Step::Run { on, command, .. } => check.run(on, command),
            Step::WatchStart { on } | Step::WatchStop { on } => check.pull(on.as_ref()),
            Step::WaitUntil {
                on,
                command,
                within,
            } => {
                check.run(on, command);
                if *within == 0 {
                    check.problem("within must be at least 1 (seconds)".into());
                }
            }
            Step::NetDown { on } | Step::NetUp { on } => check.machine(on, "on"),
            Step::Provision { .. } | Step::StopServer | Step::StartServer | Step::Wait => {}
        }
        check.problems
    }

    fn problem(&mut self, text: String) {
        self.problems.push(format!("{}: {text}", self.at));
    }

    /// A machine the step names (`what` is its key) must be one of the lab's.
    fn machine(&mut self, m: &MachineName, what: &str) {
        if !self.scenario.has_machine(m) {
            let machines = names(self.scenario.clients());
            self.problem(format!(
                "{what} {m} is not a machine of this lab (server, {machines})"
            ));
        }
    }

    fn hosts<'h>(&mut self, hosts: impl Iterator<Item = &'h HostName>) {
        for h in hosts {
            if !self.scenario.is_client(h.as_str()) {
                self.problem(format!("host {h} is not one of the clients"));
            }
        }
    }

    fn pull(&mut self, on: Option<&OneOrMany>) {
        for m in on.map(OneOrMany::to_vec).unwrap_or_default() {
            self.machine(&m, "on");
            if m.is_server() {
                self.problem("pull runs on clients, not on the server".into());
            }
        }
    }

    fn expect_status(&mut self, hosts: &BTreeMap<HostName, State>) {
        if hosts.is_empty() {
            self.problem("hosts: name at least one host".into());
        }
        self.hosts(hosts.keys());
    }

    fn edit(&mut self, host: &HostName, content: Option<&str>, remove: bool) {
        self.hosts(std::iter::once(host));
        match (content, remove) {
            (Some(_), true) => {
                self.problem("give either `content` or `remove = true`, not both".into())
            }
            (None, false) => self.problem("give the new `content`, or `remove = true`".into()),
            _ => {}
        }
    }

    fn expect_file(&mut self, path: &str, expects_something: bool, absent: bool) {
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            self.problem(format!("path {path:?} must be absolute, without '..'"));
        }
        if absent && expects_something {
            self.problem("`absent = true` cannot be combined with `content` or `mode`".into());
        }
    }

    fn expect_denied(&mut self, on: &MachineName, access: Access, other: Option<&MachineName>) {
        self.machine(on, "on");
        if let Some(o) = other {
            self.machine(o, "other");
        }
        if on.is_server() {
            self.problem("expect_denied runs on a client (it logs in to the server)".into());
        }
        match (access.needs_other(), other) {
            (true, None) => self.problem(format!(
                "access {:?} needs `other`, the client whose chroot or account is tried",
                access.as_str()
            )),
            (false, Some(_)) => {
                self.problem(format!("access {:?} takes no `other`", access.as_str()))
            }
            (true, Some(o)) if o == on || o.is_server() => {
                self.problem(format!("`other` must be another client than {on}"))
            }
            _ => {}
        }
    }

    fn run(&mut self, on: &MachineName, command: &str) {
        self.machine(on, "on");
        if command.trim().is_empty() {
            self.problem("command is empty".into());
        }
    }
}

/// The opening comment without its `#`: what the scenario proves.
fn opening_comment(text: &str) -> Option<String> {
    let first = text.lines().next().unwrap_or_default();
    let comment = first.strip_prefix('#')?.trim();
    (!comment.is_empty()).then(|| comment.to_owned())
}

fn joined<'a>(items: impl Iterator<Item = &'a str>, separator: &str) -> String {
    items.collect::<Vec<_>>().join(separator)
}

fn names(v: &[MachineName]) -> String {
    joined(v.iter().map(MachineName::as_str), ", ")
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Expands the command line's paths: files as given, directories to their `*.toml` files, sorted.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LabError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| LabError::io(format!("reading the directory {}", p.display()), e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml") && f.is_file())
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(LabError::Usage(format!(
                    "{} holds no scenario (*.toml) file",
                    p.display()
                )));
            }
            out.extend(found);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(LabError::Usage(format!(
                "{}: no such scenario file or directory",
                p.display()
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_and_fixture_loads() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["vm-scenarios", "tests/fixtures/lab"] {
            for e in std::fs::read_dir(repo.join(dir)).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "toml") {
                    files.push(p);
                }
            }
        }
        assert!(files.len() >= 6, "{files:?}");
        for f in files {
            let s = Scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
            assert!(!s.steps.is_empty(), "{}: no steps", f.display());
        }
    }

    fn parse(text: &str) -> Result<Scenario, String> {
        Scenario::parse(Path::new("t.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_example_parses() {
        let s = parse(
            r#"# Proves: everything
[lab]
clients = ["client1", "client2"]
[fleet]
poll_interval = "1m"
sshd_extra = ["ClientAliveInterval 5"]
[fleet.hosts.client1]
configuration = '{...}: { }'
[fleet.hosts.client1.files."etc/app/secret"]
content = "s3cret\n"
mode = "0600"
[[step]]
do = "provision"
[[step]]
do = "provision"
expect = "nothing-to-do"
[[step]]
do = "publish"
hosts = ["client2"]
[[step]]
do = "edit"
host = "client2"
path = "configuration.nix"
content = "x"
[[step]]
do = "pull"
on = ["client1"]
expect = "refused"
args = ["--now"]
[[step]]
do = "expect_file"
on = "client1"
path = "/etc/app/secret"
mode = "0600"
[[step]]
do = "expect_denied"
on = "client1"
access = "read-other"
other = "client2"
[[step]]
do = "expect_status"
hosts = { client1 = "up-to-date", client2 = "failed" }
[[step]]
do = "net_down"
on = "client2"
[[step]]
do = "stop_server"
[[step]]
do = "run"
on = "server"
command = "true"
background = true
[[step]]
do = "wait"
"#,
        )
        .unwrap();
        assert_eq!(s.steps.len(), 12);
        assert_eq!(s.steps[1].line, 14);
        assert_eq!(
            s.steps[1].step,
            Step::Provision {
                expect: ProvisionExpect::NothingToDo
            }
        );
        assert_eq!(s.proves, "Proves: everything");
    }

    #[test]
    fn unknown_keys_and_steps_are_refused() {
        let e = parse("# x\n[[step]]\ndo = \"provision\"\nexpec = \"changed\"\n").unwrap_err();
        assert!(e.contains("unknown field `expec`"), "{e}");
        let e = parse("# x\n[[step]]\ndo = \"reboot\"\n").unwrap_err();
        assert!(e.contains("reboot"), "{e}");
        let e = parse("# x\n[lab]\nclient = []\n").unwrap_err();
        assert!(e.contains("unknown field `client`"), "{e}");
    }

    #[test]
    fn references_are_checked() {
        let e = parse(
            "# x\n[[step]]\ndo = \"run\"\non = \"client9\"\ncommand = \"true\"\n\n[[step]]\ndo = \"expect_denied\"\non = \"client1\"\naccess = \"wrong-key\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("step 1 (line 2, run): on client9 is not a machine"),
            "{e}"
        );
        assert!(
            e.contains("step 2 (line 7, expect_denied): access \"wrong-key\" needs `other`"),
            "{e}"
        );
    }

    proptest::proptest! {
        /// Whatever a scenario file holds, loading it answers with a scenario or an error.
        #[test]
        fn parsing_never_panics(text in "(#[ -~]{0,20}\n)?(\\[\\[step\\]\\]\n|do = \"[a-z_]{1,12}\"\n|on = \"[a-z0-9]{0,8}\"\n|[a-z_]{1,10} = [0-9\"a-z\\[\\]]{0,10}\n|[ -~]{0,30}\n){0,12}") {
            let _ = Scenario::parse(Path::new("p.toml"), &text);
        }

        /// A machine name is a valid interface name and host name, or refused.
        #[test]
        fn machine_names_fit_interfaces(name in "[ -~]{0,20}") {
            if let Ok(m) = name.parse::<MachineName>() {
                proptest::prop_assert!(m.as_str().len() <= MAX_MACHINE_NAME);
                proptest::prop_assert!(m.as_str().parse::<HostName>().is_ok());
                proptest::prop_assert!(!m.as_str().contains(['/', '.', ' ']));
            }
        }
    }

    #[test]
    fn the_opening_comment_is_required() {
        let e = parse("[[step]]\ndo = \"provision\"\n").unwrap_err();
        assert!(e.contains("first line must be a comment"), "{e}");
    }

    #[test]
    fn every_step_kind_has_its_progress_line() {
        let s = parse(
            r#"# x
[[step]]
do = "provision"
[[step]]
do = "provision"
expect = "nothing-to-do"
[[step]]
do = "publish"
[[step]]
do = "publish"
hosts = ["client1", "client2"]
[[step]]
do = "edit"
host = "client1"
path = "configuration.nix"
content = "x"
[[step]]
do = "edit"
host = "client1"
path = "files/etc/a"
remove = true
[[step]]
do = "pull"
[[step]]
do = "pull"
on = ["client2", "client3"]
expect = "refused"
[[step]]
do = "expect_file"
on = "client1"
path = "/etc/a"
[[step]]
do = "expect_file"
on = "client1"
path = "/etc/b"
absent = true
[[step]]
do = "expect_denied"
on = "client1"
access = "read-other"
other = "client2"
[[step]]
do = "expect_denied"
on = "client1"
access = "shell"
[[step]]
do = "expect_status"
hosts = { client1 = "up-to-date", client2 = "failed" }
[[step]]
do = "net_down"
on = "client2"
[[step]]
do = "net_up"
on = "client2"
[[step]]
do = "stop_server"
[[step]]
do = "start_server"
[[step]]
do = "run"
on = "server"
command = "set -e\n# why\n\ntrue"
[[step]]
do = "run"
on = "client1"
background = true
command = "echo 0123456789012345678901234567890123456789012345678901234567890123456789"
[[step]]
do = "run"
on = "client1"
command = "echo one\necho two"
[[step]]
do = "wait"
"#,
        )
        .unwrap();
        let lines: Vec<String> = s
            .steps
            .iter()
            .map(|p| p.step.describe(s.clients()))
            .collect();
        assert_eq!(
            lines,
            [
                "provision on server",
                "provision on server (nothing to do)",
                "publish (all hosts)",
                "publish client1,client2",
                "edit hosts/client1/configuration.nix",
                "edit: remove hosts/client1/files/etc/a",
                "pull on client1,client2,client3 (expect ok)",
                "pull on client2,client3 (expect refused)",
                "expect_file client1:/etc/a",
                "expect_file client1:/etc/b absent",
                "expect_denied client1 read-other client2",
                "expect_denied client1 shell",
                "expect_status client1=up-to-date client2=failed",
                "net_down client2",
                "net_up client2",
                "stop_server",
                "start_server",
                "run on server: true",
                "run on client1 (background): echo 0123456789012345678901234567890123456789012345678901234…",
                "run on client1: echo one…",
                "wait for background runs",
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_in_file_order() {
        let e = parse(
            r#"# x
[lab]
clients = ["server", "client1", "client1", "client2"]
[fleet]
sshd_extra = ["", "ok"]
[fleet.hosts.client9]
configuration = "x"
[[step]]
do = "pull"
on = ["server", "client7"]
[[step]]
do = "publish"
hosts = ["client1", "zed"]
[[step]]
do = "expect_status"
hosts = {}
[[step]]
do = "expect_status"
hosts = { q = "up-to-date" }
[[step]]
do = "edit"
host = "zz"
path = "a"
content = "x"
remove = true
[[step]]
do = "edit"
host = "client1"
path = "a"
[[step]]
do = "expect_file"
on = "c9"
path = "rel/../x"
content = "a"
absent = true
[[step]]
do = "net_down"
on = "c9"
[[step]]
do = "net_up"
on = "c8"
[[step]]
do = "run"
on = "c7"
command = "  "
[[step]]
do = "expect_denied"
on = "server"
access = "shell"
other = "client2"
[[step]]
do = "expect_denied"
on = "client1"
access = "read-other"
other = "client1"
[[step]]
do = "expect_denied"
on = "c5"
access = "wrong-key"
other = "c6"
[[step]]
do = "expect_denied"
on = "client1"
access = "list-other"
[[step]]
do = "wait"
"#,
        )
        .unwrap_err();
        assert_eq!(
            e.split("\n  ").collect::<Vec<_>>(),
            [
                "t.toml: [lab] clients: \"server\" is the server's name, not a client",
                "[lab] clients: client1 is listed twice",
                "[fleet.hosts.client9]: client9 is not one of the clients (server, client1, client1, client2)",
                "[fleet] sshd_extra: \"\" must be one non-empty sshd_config line",
                "step 1 (line 8, pull): pull runs on clients, not on the server",
                "step 1 (line 8, pull): on client7 is not a machine of this lab (server, server, client1, client1, client2)",
                "step 2 (line 11, publish): host zed is not one of the clients",
                "step 3 (line 14, expect_status): hosts: name at least one host",
                "step 4 (line 17, expect_status): host q is not one of the clients",
                "step 5 (line 20, edit): host zz is not one of the clients",
                "step 5 (line 20, edit): give either `content` or `remove = true`, not both",
                "step 6 (line 26, edit): give the new `content`, or `remove = true`",
                "step 7 (line 30, expect_file): on c9 is not a machine of this lab (server, server, client1, client1, client2)",
                "step 7 (line 30, expect_file): path \"rel/../x\" must be absolute, without '..'",
                "step 7 (line 30, expect_file): `absent = true` cannot be combined with `content` or `mode`",
                "step 8 (line 36, net_down): on c9 is not a machine of this lab (server, server, client1, client1, client2)",
                "step 9 (line 39, net_up): on c8 is not a machine of this lab (server, server, client1, client1, client2)",
                "step 10 (line 42, run): on c7 is not a machine of this lab (server, server, client1, client1, client2)",
                "step 10 (line 42, run): command is empty",
                "step 11 (line 46, expect_denied): expect_denied runs on a client (it logs in to the server)",
                "step 11 (line 46, expect_denied): access \"shell\" takes no `other`",
                "step 12 (line 51, expect_denied): `other` must be another client than client1",
                "step 13 (line 56, expect_denied): on c5 is not a machine of this lab (server, server, client1, client1, client2)",
                "step 13 (line 56, expect_denied): other c6 is not a machine of this lab (server, server, client1, client1, client2)",
                "step 14 (line 61, expect_denied): access \"list-other\" needs `other`, the client whose chroot or account is tried",
            ]
        );
    }
}
