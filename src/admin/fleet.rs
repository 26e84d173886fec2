//! The fleet repository: `fleet.toml`, `hosts/<name>/host.toml`, loading, checking, `init` and `host add`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::diag::{Problem, Severity, toml_message};
use crate::core::names::{DEFAULT_USER_PREFIX, HostName, MAX_ACCOUNT_NAME, account_name};
use crate::core::settings::{ApplyOverrides, ApplyPolicy, Interval};

pub mod files;
pub mod prebuilt;
pub mod rollout;
pub mod rules;
pub mod trust;

pub const FLEET_FILE: &str = "fleet.toml";
pub const HOST_FILE: &str = "host.toml";
pub const DEFAULT_CHROOT_ROOT: &str = "/var/lib/tiffin/chroots";
pub const DEFAULT_SSHD_DROPIN: &str = "/etc/ssh/sshd_config.d/tiffin.conf";
pub const DEFAULT_AUTHORIZED_KEYS_DIR: &str = "/etc/tiffin/authorized_keys";
pub const DEFAULT_POLL_INTERVAL: Interval = Interval::secs(15 * 60);
pub const DEFAULT_KEEP_RELEASES: usize = 5;
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tiffin";
pub const DEFAULT_SERVER_PORT: u16 = 22;
/// The tiffin input `tiffin init` writes into templates/flake.nix, to be replaced by the admin.
pub const TIFFIN_INPUT_PLACEHOLDER: &str = "github:OWNER/tiffin";

/// Errors of the fleet layer: reading and writing the admin's repository.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(
        "no fleet repository at {0}: {FLEET_FILE} not found (run `tiffin init`, or pass --fleet DIR / set TIFFIN_FLEET)"
    )]
    NotFound(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} already exists and is not empty; choose another directory")]
    InitNotEmpty(PathBuf),
    #[error("host {0} already exists in hosts/{0}; remove it first to re-add it")]
    HostExists(HostName),
    #[error("{0}")]
    Name(#[from] crate::core::names::NameError),
    #[error("{what}: {message}")]
    BadKey { what: String, message: String },
    #[error("the fleet repository has {} problem(s):\n{}", .0.len(), Problems(.0))]
    Invalid(Vec<Problem>),
    #[error("unknown host {0}: no hosts/{0}/ in the fleet repository")]
    UnknownHost(String),
}

impl FleetError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FleetError {
        let path = path.into();
        move |source| FleetError::Io { path, source }
    }
}

struct Problems<'a>(&'a [Problem]);
impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// `[server]` of fleet.toml: how the server serves the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Where each host's chroot lives (`<chroot_root>/<host>`).
    pub chroot_root: PathBuf,
    /// Prefix of each host's Unix account on the server.
    pub user_prefix: String,
    /// The sshd drop-in `tiffin provision` writes.
    pub sshd_dropin: PathBuf,
    /// Root-owned directory of one authorized_keys file per account, outside every chroot.
    pub authorized_keys_dir: PathBuf,
    /// Extra lines for the sshd `Match` block (e.g. `ClientAliveInterval 30`).
    pub sshd_extra: Vec<String>,
    /// How many releases to keep per host (the current one is always kept).
    pub keep_releases: usize,
    /// Server state outside every chroot: each host's last seq (`seq/<host>`), so that
    /// re-provisioning, pruning or moving chroot_root never restarts a host's seq.
    pub state_dir: PathBuf,
    /// Host name or address the hosts reach the server's sshd at (common/tiffin.nix).
    pub address: Option<String>,
    /// TCP port of the server's sshd, for the hosts (common/tiffin.nix).
    pub port: u16,
    /// The server's SSH host public key, pinned by every host (common/tiffin.nix).
    pub host_key: Option<String>,
    /// How `publish` builds a `build = "server"` host's system: an argv template with
    /// `{config}` (the release's config/ tree) and `{host}`, printing `nix build --json` output.
    pub build: Vec<String>,
    /// The Nix signing key (`nix key generate-secret`) prebuilt closures are signed with.
    pub signing_key: Option<PathBuf>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            chroot_root: DEFAULT_CHROOT_ROOT.into(),
            user_prefix: DEFAULT_USER_PREFIX.into(),
            sshd_dropin: DEFAULT_SSHD_DROPIN.into(),
            authorized_keys_dir: DEFAULT_AUTHORIZED_KEYS_DIR.into(),
            sshd_extra: Vec::new(),
            keep_releases: DEFAULT_KEEP_RELEASES,
            state_dir: DEFAULT_STATE_DIR.into(),
            address: None,
            port: DEFAULT_SERVER_PORT,
            host_key: None,
            build: prebuilt::DEFAULT_BUILD
                .iter()
                .map(|s| s.to_string())
                .collect(),
            signing_key: None,
        }
    }
}

/// `[defaults]` of fleet.toml: settings every host inherits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostDefaults {
    pub poll_interval: Interval,
    pub apply: ApplyPolicy,
}

impl Default for HostDefaults {
    fn default() -> Self {
        HostDefaults {
            poll_interval: DEFAULT_POLL_INTERVAL,
            apply: ApplyPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub defaults: HostDefaults,
    /// Signed releases: hosts apply only what the threshold of these keys signed (docs/signing.md).
    #[serde(default)]
    pub trust: Option<trust::TrustSettings>,
    /// A publish goes out in waves, each gated on the last one's health (docs/rollouts.md).
    #[serde(default)]
    pub rollout: Option<rollout::RolloutSettings>,
    /// Settings of the hosts tagged with each name (e.g. `max_rebooting`).
    #[serde(default)]
    pub groups: BTreeMap<rollout::GroupName, rollout::GroupSettings>,
}

/// `hosts/<name>/host.toml` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    public_key: String,
    poll_interval: Option<Interval>,
    #[serde(default)]
    apply: ApplyOverrides,
    /// `[files."etc/grafana/secret"]`: owner, group, stage, restart, reload.
    #[serde(default)]
    files: BTreeMap<String, files::RawFileMeta>,
    /// The groups the host belongs to (rollout waves, reboot limits).
    #[serde(default)]
    tags: Vec<rollout::GroupName>,
}

/// A host as the fleet defines it, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: HostName,
    /// The OpenSSH public key line (`ssh-ed25519 AAAA… comment`), validated.
    pub public_key: String,
    pub poll_interval: Interval,
    pub apply: ApplyPolicy,
    /// Settings of files of `files/` (or `common/files/`) by their path on the client.
    pub files: BTreeMap<crate::core::names::RelPath, crate::core::release::FileMeta>,
    /// Its groups (host.toml `tags`).
    pub tags: std::collections::BTreeSet<rollout::GroupName>,
}

/// The loaded fleet repository.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub root: PathBuf,
    pub config: FleetConfig,
    pub hosts: BTreeMap<HostName, Host>,
    /// Problems found while loading; hosts with an error are absent from `hosts`.
    pub problems: Vec<Problem>,
}

impl Fleet {
    pub fn account_name(&self, host: &HostName) -> String {
        account_name(&self.config.server.user_prefix, host)
    }

    pub fn host_dir(&self, host: &HostName) -> PathBuf {
        self.root.join("hosts").join(host.as_str())
    }

    /// Loads fleet.toml and every host; problems are collected, not returned
    /// as the first error, so `check` can list them all. Only an unreadable
    /// repository is an error here.
    pub fn load(root: &Path) -> Result<Fleet, FleetError> {
        let fleet_file = root.join(FLEET_FILE);
        if !fleet_file.is_file() {
            return Err(FleetError::NotFound(root.to_owned()));
        }
        let mut problems = Vec::new();
        let config = match read_toml::<FleetConfig>(&fleet_file) {
            Ok(c) => c,
            Err(message) => {
                problems.push(Problem::error(None, FLEET_FILE, message));
                FleetConfig::default()
            }
        };
        problems.extend(rules::problems(&config.server));
        problems.extend(config.trust.iter().flat_map(trust::TrustSettings::problems));
        client_settings_problems(&config, &mut problems);
        problems.extend(template_problems(root));
        let mut hosts = BTreeMap::new();
        for name in host_dir_names(root, &mut problems)? {
            if let Some(host) = load_host(root, &config, &name, &mut problems) {
                if let Some(message) = rules::reboot_window_problem(&host.apply) {
                    let host_file = Path::new("hosts").join(name.as_str()).join(HOST_FILE);
                    problems.push(Problem::warning(Some(&name), host_file, message));
                }
                hosts.insert(name, host);
            }
        }
        problems.extend(prebuilt::problems(&config.server, &hosts));
        if let Some(r) = &config.rollout {
            let tags = hosts
                .values()
                .flat_map(|h| h.tags.iter().cloned())
                .collect();
            problems.extend(r.problems(&tags));
        }
        Ok(Fleet {
            root: root.to_owned(),
            config,
            hosts,
            problems,
        })
    }

    pub fn host_dirs(&self) -> Vec<HostName> {
        let mut names: Vec<HostName> = fs::read_dir(self.root.join("hosts"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|n: &HostName| self.host_dir(n).is_dir())
            .collect();
        names.sort();
        names
    }

    /// Errors that concern the whole fleet or one of `selected` hosts.
    pub fn errors_for<'a>(&'a self, selected: &'a [HostName]) -> impl Iterator<Item = &'a Problem> {
        self.problems.iter().filter(move |p| {
            p.severity == Severity::Error
                && match &p.host {
                    None => true,
                    Some(h) => selected.contains(h),
                }
        })
    }

    /// The hosts named on the command line, or all of them.
    /// The hosts `names` asks for, or every host directory when it is empty: also those that
    /// failed to load, so a mistyped host.toml is an error for publish and provision, never a
    /// host that silently left the fleet.
    pub fn select(&self, names: &[String]) -> Result<Vec<HostName>, FleetError> {
        if names.is_empty() {
            let mut all = self.host_dirs();
            all.extend(self.hosts.keys().cloned());
            all.sort();
            all.dedup();
            return Ok(all);
        }
        names
            .iter()
            .map(|n| {
                let name: HostName = n.parse()?;
                if self.hosts.contains_key(&name) || self.root.join("hosts").join(n).is_dir() {
                    Ok(name)
                } else {
                    Err(FleetError::UnknownHost(n.clone()))
                }
            })
            .collect()
    }
}

/// The problem with a host whose account name would be longer than Unix allows.
fn account_problem(user_prefix: &str, name: &HostName) -> Option<Problem> {
    let account = account_name(user_prefix, name);
    (account.len() > MAX_ACCOUNT_NAME).then(|| {
        Problem::error(
            Some(name),
            Path::new("hosts").join(name.as_str()),
            format!(
                "host name \"{name}\" is too long: its account {account:?} has {} bytes, Unix allows {MAX_ACCOUNT_NAME} (shorten the name or server.user_prefix)",
                account.len()
            ),
        )
    })
}

/// The valid host names under `hosts/`, sorted; a bad name is a problem. A host directory
/// that leads outside the repository is left out here (nothing is read through it);
/// `check` and `publish` name the link (`host_tree::resolve_host_tree`).
fn host_dir_names(root: &Path, problems: &mut Vec<Problem>) -> Result<Vec<HostName>, FleetError> {
    let hosts_dir = root.join("hosts");
    let entries = match fs::read_dir(&hosts_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FleetError::io(&hosts_dir)(e)),
    };
    let mut dir_names: Vec<String> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(FleetError::io(&hosts_dir))?;
        dir_names.push(entry.file_name().to_string_lossy().into_owned());
    }
    dir_names.sort();
    let real_root = fs::canonicalize(root).ok();
    let mut names = Vec::new();
    for dir_name in dir_names {
        let rel = Path::new("hosts").join(&dir_name);
        if dir_name.starts_with('.') || !root.join(&rel).is_dir() {
            continue;
        }
        match dir_name.parse::<HostName>() {
            Err(e) => problems.push(Problem::error(None, &rel, e.to_string())),
            Ok(name) => {
                let inside = match (&real_root, fs::canonicalize(root.join(&rel))) {
                    (Some(real_root), Ok(real)) => real.starts_with(real_root),
                    _ => false,
                };
                if inside {
                    names.push(name);
                }
            }
        }
    }
    Ok(names)
}

fn load_host(
    root: &Path,
    config: &FleetConfig,
    name: &HostName,
    problems: &mut Vec<Problem>,
) -> Option<Host> {
    let rel = Path::new("hosts").join(name.as_str());
    let mut ok = true;
    if let Some(problem) = account_problem(&config.server.user_prefix, name) {
        problems.push(problem);
        ok = false;
    }
    let host_file = rel.join(HOST_FILE);
    let parsed = match read_toml::<HostFile>(&root.join(&host_file)) {
        Ok(h) => h,
        Err(message) => {
            problems.push(Problem::error(Some(name), &host_file, message));
            return None;
        }
    };
    let public_key = match parse_public_key(&parsed.public_key) {
        Ok(k) => k,
        Err(message) => {
            problems.push(Problem::error(
                Some(name),
                &host_file,
                format!("public_key: {message}"),
            ));
            return None;
        }
    };
    if public_key.contains("example-replace-me") {
        problems.push(Problem::warning(
            Some(name),
            &host_file,
            "public_key is the example key from `tiffin init`: replace it with the host's key (or remove the host)",
        ));
    }
    if !root.join(&rel).join("configuration.nix").exists() {
        problems.push(Problem::error(
            Some(name),
            rel.join("configuration.nix"),
            "missing: every host needs a configuration.nix (the NixOS configuration its flake builds)",
        ));
        ok = false;
    }
    let flake = root.join(&rel).join("flake.nix");
    if flake.exists() && !root.join(&rel).join("flake.lock").exists() {
        problems.push(Problem::warning(
            Some(name),
            rel.join("flake.nix"),
            "no flake.lock beside it: each client resolves the inputs itself, so hosts may build different nixpkgs (run `nix flake lock` in the host directory, or symlink a shared lock)",
        ));
    }
    if let Some(interval) = parsed.poll_interval
        && interval != config.defaults.poll_interval
    {
        problems.extend(poll_interval_problem(root, name, interval));
    }
    let file_metas = files::check(name, &host_file, &parsed.files, problems);
    ok.then(|| Host {
        name: name.clone(),
        public_key,
        poll_interval: parsed
            .poll_interval
            .unwrap_or(config.defaults.poll_interval),
        apply: with_slot(
            config.defaults.apply.overridden_by(&parsed.apply),
            config,
            &parsed.tags,
        ),
        files: file_metas,
        tags: parsed.tags.into_iter().collect(),
    })
}

/// A host in a group with `max_rebooting` waits for a slot before it reboots.
fn with_slot(
    mut apply: ApplyPolicy,
    config: &FleetConfig,
    tags: &[rollout::GroupName],
) -> ApplyPolicy {
    let limited = tags.iter().any(|t| {
        config
            .groups
            .get(t)
            .is_some_and(|g| g.max_rebooting.is_some())
    });
    if limited {
        apply.reboot_slot = crate::core::settings::RebootSlot::Wait;
    }
    apply
}

/// A host.toml poll_interval other than fleet.toml's reaches `tiffin status` only, unless the
/// host's configuration.nix sets its timer too.
fn poll_interval_problem(root: &Path, name: &HostName, interval: Interval) -> Option<Problem> {
    let rel = Path::new("hosts").join(name.as_str());
    let configuration =
        fs::read_to_string(root.join(&rel).join("configuration.nix")).unwrap_or_default();
    (!configuration.contains("services.tiffin.client.interval")).then(|| {
        Problem::warning(
            Some(name),
            rel.join(HOST_FILE),
            format!(
                "poll_interval {interval} differs from fleet.toml's, but the host's timer comes from fleet.toml (common/tiffin.nix): also set services.tiffin.client.interval (a systemd calendar expression) in {}/configuration.nix",
                rel.display()
            ),
        )
    })
}

/// What the hosts' tiffin client reads from `[server]` and `[defaults]` (common/tiffin.nix).
fn client_settings_problems(config: &FleetConfig, problems: &mut Vec<Problem>) {
    let server = &config.server;
    match &server.address {
        None => problems.push(Problem::warning(
            None,
            FLEET_FILE,
            "server.address is not set: the hosts' tiffin client (common/tiffin.nix) does not know where the server is, and a host's rebuild fails until it is set",
        )),
        Some(a) if a.is_empty() || a.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            problems.push(Problem::error(
                None,
                FLEET_FILE,
                format!("server.address {a:?} must be a host name or address, without spaces"),
            ));
        }
        Some(_) => {}
    }
    if server.port == 0 {
        problems.push(Problem::error(
            None,
            FLEET_FILE,
            "server.port must be a TCP port (1-65535)",
        ));
    }
    match &server.host_key {
        None => problems.push(Problem::warning(
            None,
            FLEET_FILE,
            "server.host_key is not set: the hosts' tiffin client (common/tiffin.nix) pins it; give the server's /etc/ssh/ssh_host_ed25519_key.pub",
        )),
        Some(k) => {
            if let Err(message) = parse_public_key(k) {
                problems.push(Problem::error(
                    None,
                    FLEET_FILE,
                    format!("server.host_key: {message}"),
                ));
            }
        }
    }
    if poll_calendar(config.defaults.poll_interval.0).is_none() {
        problems.push(Problem::warning(
            None,
            FLEET_FILE,
            format!(
                "defaults.poll_interval {} does not divide a minute, an hour or a day evenly, so common/tiffin.nix cannot make it the hosts' timer and their rebuilds fail: choose e.g. \"15m\" or \"1h\", or set services.tiffin.client.interval in every configuration.nix",
                config.defaults.poll_interval
            ),
        ));
    }
}

/// The systemd calendar expression common/tiffin.nix makes of a poll interval: one that
/// fires evenly, so the interval must divide a minute, an hour or a day. `None` otherwise.
pub fn poll_calendar(interval: std::time::Duration) -> Option<String> {
    let secs = interval.as_secs();
    if interval.subsec_nanos() != 0 || secs == 0 {
        return None;
    }
    if secs < 60 && 60u64.is_multiple_of(secs) {
        Some(format!("*:*:0/{secs}"))
    } else if secs < 3600 && secs.is_multiple_of(60) && 60u64.is_multiple_of(secs / 60) {
        Some(format!("*:0/{}", secs / 60))
    } else if secs < 86400 && secs.is_multiple_of(3600) && 24u64.is_multiple_of(secs / 3600) {
        Some(format!("0/{}:00", secs / 3600))
    } else if secs == 86400 {
        Some("daily".to_owned())
    } else {
        None
    }
}

/// Whether the fleet's flake template and common/ still bring tiffin's client into every
/// host's system (a fleet made by an older `tiffin init` may lack them).
fn template_problems(root: &Path) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Ok(flake) = fs::read_to_string(root.join(TEMPLATE_FLAKE)) {
        if !flake.contains("tiffin.nixosModules.client") {
            problems.push(Problem::warning(
                None,
                TEMPLATE_FLAKE,
                "does not add tiffin's client module (tiffin.nixosModules.client) to the hosts' systems: a host's first pull switches to a system without the tiffin client and the host stops pulling; add a `tiffin` input and the modules tiffin.nixosModules.client and ./common/tiffin.nix (tiffin's docs/nixos.md, \"An existing fleet\")",
            ));
        } else if flake.contains(TIFFIN_INPUT_PLACEHOLDER) {
            problems.push(Problem::warning(
                None,
                TEMPLATE_FLAKE,
                format!(
                    "the tiffin input is still the placeholder {TIFFIN_INPUT_PLACEHOLDER:?}: set it to where you get tiffin from, then run `nix flake lock` in templates/"
                ),
            ));
        }
    }
    if root.join("common").is_dir() {
        if !root.join(COMMON_TIFFIN_NIX).is_file() {
            problems.push(Problem::warning(
                None,
                COMMON_TIFFIN_NIX,
                "missing: it configures every host's tiffin client from fleet.toml (server address, port, host key, poll interval); copy it from a fresh `tiffin init` (tiffin's docs/nixos.md, \"An existing fleet\")",
            ));
        }
        if fs::metadata(root.join(COMMON_FLEET_TOML)).is_err() {
            problems.push(Problem::warning(
                None,
                COMMON_FLEET_TOML,
                "missing: common/tiffin.nix reads fleet.toml through it, in the repository and in every release; create it with `ln -s ../fleet.toml common/fleet.toml`",
            ));
        }
    }
    problems
}

/// Reads and deserializes a TOML file; the error is a one-line message
/// naming what was wrong (the caller adds the path).
fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "missing: this file is required".to_owned(),
        _ => format!("cannot read: {e}"),
    })?;
    toml::from_str(&text).map_err(|e| toml_message(&e))
}

/// Validates an OpenSSH public key (the line itself, or the path of a file
/// holding one) and returns it normalised to `algorithm base64 [comment]`.
pub fn parse_public_key(text: &str) -> Result<String, String> {
    let line = text.trim();
    if line.is_empty() {
        return Err(
            "it is empty: expected an OpenSSH public key like \"ssh-ed25519 AAAA… root@host\""
                .into(),
        );
    }
    if line.contains("PRIVATE KEY") {
        return Err("this is a private key: give the public key (the .pub file) instead".into());
    }
    // One line, no control characters: the key is written into authorized_keys after
    // `restrict`, and a second line there would be a key without restrictions.
    if line.chars().any(char::is_control) {
        return Err(
            "it spans several lines or holds control characters: give exactly one public key line"
                .into(),
        );
    }
    let key = ssh_key::PublicKey::from_openssh(line).map_err(|e| {
        format!(
            "not an OpenSSH public key ({e}): expected a line like \"ssh-ed25519 AAAA… root@host\""
        )
    })?;
    key.to_openssh()
        .map_err(|e| format!("cannot re-encode the key: {e}"))
}

/// The files `tiffin init` writes, relative to the new repository.
const INIT_FILES: &[(&str, &str)] = &[
    (FLEET_FILE, include_str!("templates/fleet.toml")),
    ("templates/flake.nix", include_str!("templates/flake.nix")),
    (
        "templates/configuration.nix",
        include_str!("templates/configuration.nix"),
    ),
    ("common/default.nix", include_str!("templates/common.nix")),
    (COMMON_TIFFIN_NIX, include_str!("templates/tiffin.nix")),
    (
        ".gitignore",
        "# tiffin writes nothing into the fleet repository; keep it that way.\n",
    ),
];

/// The module that configures every host's tiffin client (templates/flake.nix adds it).
pub const COMMON_TIFFIN_NIX: &str = "common/tiffin.nix";
/// Files every host gets, relative to the fleet repository (a host's own files/ wins on a path).
pub const COMMON_FILES: &str = "common/files";
/// The link through which common/tiffin.nix reads fleet.toml, in the repository and in a release.
pub const COMMON_FLEET_TOML: &str = "common/fleet.toml";
const TEMPLATE_FLAKE: &str = "templates/flake.nix";
const TEMPLATE_LOCK: &str = "templates/flake.lock";

pub const EXAMPLE_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv0F/EMgr0VKJtAWiIm+AEip+1wxUFWA08fWuUB5qDC example-replace-me";

/// `tiffin init`: a new fleet repository with one example host.
pub fn init(dir: &Path) -> Result<(), FleetError> {
    if dir.exists()
        && fs::read_dir(dir)
            .map_err(FleetError::io(dir))?
            .next()
            .is_some()
    {
        return Err(FleetError::InitNotEmpty(dir.to_owned()));
    }
    for (rel, content) in INIT_FILES {
        write_new(&dir.join(rel), content)?;
    }
    // A link, so publish copies fleet.toml into each release's config/common/.
    symlink_new("../fleet.toml", &dir.join(COMMON_FLEET_TOML))?;
    // Files every host gets (a host's own files/ wins on the same path).
    let common_files = dir.join(COMMON_FILES);
    fs::create_dir_all(&common_files).map_err(FleetError::io(&common_files))?;
    add_host_unchecked(dir, &"example".parse().expect("valid"), EXAMPLE_KEY)
}

/// `tiffin host add`: `hosts/NAME/` from the templates.
pub fn add_host(fleet: &Fleet, name: &HostName, key: &str) -> Result<(), FleetError> {
    if fleet.root.join("hosts").join(name.as_str()).exists() {
        return Err(FleetError::HostExists(name.clone()));
    }
    if let Some(problem) = account_problem(&fleet.config.server.user_prefix, name) {
        return Err(FleetError::Invalid(vec![problem]));
    }
    // KEY is either the key itself or a file holding it (e.g. /etc/ssh/ssh_host_ed25519_key.pub).
    let key_text = if Path::new(key).is_file() {
        fs::read_to_string(key).map_err(FleetError::io(key))?
    } else {
        key.to_owned()
    };
    let normalised = parse_public_key(&key_text).map_err(|message| FleetError::BadKey {
        what: format!("--key {key:?}"),
        message,
    })?;
    add_host_unchecked(&fleet.root, name, &normalised)
}

/// Builds `hosts/NAME/` under a temporary name and renames it into place, so a failure
/// leaves no half-made host behind (a retry would otherwise be refused as a duplicate).
fn add_host_unchecked(root: &Path, name: &HostName, key: &str) -> Result<(), FleetError> {
    let dir = root.join("hosts").join(name.as_str());
    let tmp = root
        .join("hosts")
        .join(format!(".{name}.new-{}", std::process::id()));
    let shared_lock = root.join(TEMPLATE_LOCK).is_file();
    let result = write_host_dir(&tmp, name, key, shared_lock)
        .and_then(|()| fs::rename(&tmp, &dir).map_err(FleetError::io(&dir)));
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn write_host_dir(
    dir: &Path,
    name: &HostName,
    key: &str,
    shared_lock: bool,
) -> Result<(), FleetError> {
    // A TOML basic string: parse_public_key allowed no control characters, so escaping
    // backslash and quote is all it takes.
    let key = key.replace('\\', "\\\\").replace('"', "\\\"");
    let host_toml = format!(
        "# {name}: settings for this host. Keys not set here come from [defaults] in fleet.toml.\n\
         public_key = \"{key}\"\n\
         # poll_interval = \"15m\"\n\
         # tags = [\"canary\"]   # its groups: rollout waves, reboot limits ([rollout], [groups] in fleet.toml)\n\
         \n\
         [apply]\n\
         # action = \"switch\"   # switch | boot | test | build\n\
         # reboot = \"never\"    # never | if-needed\n\
         \n\
         # Settings of a file of files/ (or of the fleet's common/files/), by its path on the host:\n\
         # [files.\"etc/grafana/secret\"]\n\
         # owner = \"grafana\"              # user or group name, looked up on the host (default root)\n\
         # group = \"grafana\"\n\
         # stage = \"after\"                # before (the rebuild, default) | after (activation)\n\
         # restart = [\"grafana.service\"]  # restarted when the file changes; reload = [...] reloads\n"
    );
    write_new(&dir.join(HOST_FILE), &host_toml)?;
    let config = include_str!("templates/configuration.nix").replace("@HOST@", name.as_str());
    write_new(&dir.join("configuration.nix"), &config)?;
    symlink_new("../../templates/flake.nix", &dir.join("flake.nix"))?;
    if shared_lock {
        symlink_new("../../templates/flake.lock", &dir.join("flake.lock"))?;
    }
    symlink_new("../../common", &dir.join("common"))?;
    let files = dir.join("files");
    fs::create_dir_all(&files).map_err(FleetError::io(&files))?;
    write_new(
        &files.join("etc/tiffin-managed"),
        &format!(
            "This host ({name}) is managed by tiffin; files under hosts/{name}/files/ land here.\n"
        ),
    )
}

fn write_new(path: &Path, content: &str) -> Result<(), FleetError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(FleetError::io(parent))?;
    }
    fs::write(path, content).map_err(FleetError::io(path))
}

fn symlink_new(target: &str, link: &Path) -> Result<(), FleetError> {
    std::os::unix::fs::symlink(target, link).map_err(FleetError::io(link))
}

#[cfg(test)]
mod tests {
    use super::poll_calendar;
    use std::time::Duration;

    #[test]
    fn poll_calendar_fires_evenly_or_not_at_all() {
        let cal = |s| poll_calendar(Duration::from_secs(s));
        assert_eq!(cal(30).as_deref(), Some("*:*:0/30"));
        assert_eq!(cal(60).as_deref(), Some("*:0/1"));
        assert_eq!(cal(15 * 60).as_deref(), Some("*:0/15"));
        assert_eq!(cal(3600).as_deref(), Some("0/1:00"));
        assert_eq!(cal(6 * 3600).as_deref(), Some("0/6:00"));
        assert_eq!(cal(86400).as_deref(), Some("daily"));
        for uneven in [7, 45, 90, 7 * 60, 90 * 60, 5 * 3600, 2 * 86400] {
            assert_eq!(cal(uneven), None, "{uneven}s");
        }
        assert_eq!(poll_calendar(Duration::from_millis(1500)), None);
    }
}
