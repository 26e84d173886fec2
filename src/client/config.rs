//! The client's configuration, `/etc/tiffin/client.toml` (or the same document as JSON).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::names::HostName;
use crate::core::settings::Interval;

use crate::core::names::{DEFAULT_USER_PREFIX, account_name};

/// `server = "host[:port]"`, with `[v6]:port` for IPv6 literals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for ServerAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid server {s:?}: {why}; write it like \"192.0.2.1\", \"fleet.example.org:2222\" or \"[2001:db8::1]:22\""
            )
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
                ),
            }
        } else if s.matches(':').count() == 1 {
            let (h, p) = s.split_once(':').unwrap_or((s, ""));
            (h, Some(p))
        } else if s.contains(':') {
            return Err(bad("an IPv6 address needs brackets"));
        } else {
            (s, None)
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("the host part is empty or has spaces"));
        }
        let port = match port {
            None => 22,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
        };
        Ok(ServerAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for ServerAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The server's pinned host key, parsed from its OpenSSH public key line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedKey(pub ssh_key::PublicKey);

impl PinnedKey {
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint(ssh_key::HashAlg::Sha256).to_string()
    }
}

impl<'de> Deserialize<'de> for PinnedKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ssh_key::PublicKey::from_openssh(s.trim())
            .map(PinnedKey)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "not an OpenSSH public key ({e}): copy the server's /etc/ssh/ssh_host_ed25519_key.pub, like \"ssh-ed25519 AAAA…\""
                ))
            })
    }
}

/// An argv template for the rebuild; `{action}`, `{config}` and `{host}` are substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildCommand(pub Vec<String>);

impl Default for RebuildCommand {
    fn default() -> Self {
        RebuildCommand(
            ["nixos-rebuild", "{action}", "--flake", "{config}#{host}"]
                .map(String::from)
                .to_vec(),
        )
    }
}

impl<'de> Deserialize<'de> for RebuildCommand {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let argv = Vec::<String>::deserialize(d)?;
        if argv.first().is_none_or(|p| p.is_empty()) {
            return Err(serde::de::Error::custom(
                "the rebuild command is empty: give an argv like [\"nixos-rebuild\", \"{action}\", \"--flake\", \"{config}#{host}\"]",
            ));
        }
        Ok(RebuildCommand(argv))
    }
}

/// An absolute path (relative ones would depend on the timer's working directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsPath(pub PathBuf);

impl<'de> Deserialize<'de> for AbsPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = PathBuf::deserialize(d)?;
        if p.is_absolute() {
            Ok(AbsPath(p))
        } else {
            Err(serde::de::Error::custom(format!(
                "{} is not an absolute path",
                p.display()
            )))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: HostName,
    server: ServerAddr,
    user: Option<String>,
    #[serde(default = "default_identity")]
    identity: AbsPath,
    server_key: PinnedKey,
    #[serde(default = "default_state_dir")]
    state_dir: AbsPath,
    #[serde(default = "default_root")]
    root: AbsPath,
    #[serde(default)]
    rebuild: Option<RebuildCommand>,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: Interval,
    #[serde(default = "default_io_timeout")]
    io_timeout: Interval,
    #[serde(default = "default_rebuild_timeout")]
    rebuild_timeout: Interval,
    #[serde(default = "default_backoff_initial")]
    backoff_initial: Interval,
    #[serde(default = "default_backoff_max")]
    backoff_max: Interval,
    /// Run after applying a release whose `reboot = "if-needed"` finds a new kernel, initrd or modules.
    #[serde(default = "default_reboot_command")]
    reboot_command: Vec<String>,
    /// How units are restarted and reloaded: this argv, then `restart UNIT` or `reload UNIT`.
    #[serde(default = "default_systemctl")]
    systemctl: Vec<String>,
    /// Where activations run: in a unit of their own (`systemd-run`) or as tiffin's child.
    #[serde(default)]
    activation: super::activation::Activation,
    /// The argv that starts an activation's unit; tiffin adds its options and the command.
    #[serde(default = "default_systemd_run")]
    systemd_run: Vec<String>,
    /// Where a release names no `[apply] reboot_window`: this client's own (its local time).
    #[serde(default)]
    reboot_window: Option<crate::core::window::RebootWindow>,
    /// `tiffin pull --watch`: how often `/CURRENT` is read over the kept session.
    #[serde(default = "default_watch_interval")]
    watch_interval: Interval,
    /// `tiffin pull --watch`: how often an idle watcher uploads its heartbeat report.
    #[serde(default = "default_poll_interval")]
    poll_interval: Interval,
    /// Prebuilt releases: the fleet's Nix public key and the nix commands (docs/prebuilt.md).
    cache_public_key: Option<String>,
    nix_import: Option<Vec<String>>,
    nix_query_invalid: Option<Vec<String>>,
    nix_set_profile: Option<Vec<String>>,
    nix_gc_root: Option<Vec<String>>,
    /// After an activation or a boot: how long to try reaching the server before rolling back.
    #[serde(default = "default_confirm_timeout")]
    confirm_timeout: Interval,
    #[serde(default = "default_system_profile")]
    system_profile: AbsPath,
    /// `[trust]`: version, threshold and keys of the fleet's root of trust.
    trust: Option<crate::core::trust::TrustRoot>,
    /// Desktop notifications to the people logged in (workstations).
    #[serde(default)]
    notify: super::notify::Notify,
    /// Whether a metered connection or a low battery defers downloading a new release.
    #[serde(default)]
    defer: super::conditions::Deferral,
}

fn invalid(path: &Path, key: Option<&str>, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        key: key.map(str::to_owned),
        message,
    }
}

impl RawConfig {
    /// The document as written, each error naming its key (serde_path_to_error's path).
    fn read(text: &str, syntax: Syntax, path: &Path) -> Result<RawConfig, ConfigError> {
        let key_of = |p: &serde_path_to_error::Path| {
            let s = p.to_string();
            (s != ".").then_some(s)
        };
        match syntax {
            Syntax::Toml => {
                let de = toml::Deserializer::parse(text)
                    .map_err(|e| invalid(path, None, crate::core::diag::toml_message(&e)))?;
                serde_path_to_error::deserialize(de).map_err(|e| {
                    let key = key_of(e.path());
                    invalid(
                        path,
                        key.as_deref(),
                        crate::core::diag::toml_message(e.inner()),
                    )
                })
            }
            Syntax::Json => {
                let mut de = serde_json::Deserializer::from_str(text);
                serde_path_to_error::deserialize(&mut de).map_err(|e| {
                    let key = key_of(e.path());
                    invalid(path, key.as_deref(), e.inner().to_string())
                })
            }
        }
    }

    /// The rules between keys, and the defaults that depend on other keys.
    fn validate(self, path: &Path) -> Result<ClientConfig, ConfigError> {
        let prebuilt = self.prebuilt_settings(path)?;
        if let Some(Err(e)) = self.trust.as_ref().map(|t| t.validate()) {
            return Err(invalid(path, Some("trust"), e.to_string()));
        }
        let user = match self.user {
            Some(u) if valid_account_name(&u) => u,
            Some(u) => {
                let message = format!("{u:?} is not a valid account name");
                return Err(invalid(path, Some("user"), message));
            }
            None => account_name(DEFAULT_USER_PREFIX, &self.host),
        };
        if self.backoff_max < self.backoff_initial {
            let message = format!(
                "{} is shorter than backoff_initial ({})",
                self.backoff_max, self.backoff_initial
            );
            return Err(invalid(path, Some("backoff_max"), message));
        }
        if self.reboot_command.first().is_none_or(|p| p.is_empty()) {
            let message = "is empty: give an argv like [\"systemctl\", \"reboot\"]".into();
            return Err(invalid(path, Some("reboot_command"), message));
        }
        if self.systemd_run.first().is_none_or(|p| p.is_empty()) {
            let message = "is empty: give an argv like [\"systemd-run\"] (tiffin adds its options and the command)".into();
            return Err(invalid(path, Some("systemd_run"), message));
        }
        if self.systemctl.first().is_none_or(|p| p.is_empty()) {
            let message = "is empty: give an argv like [\"systemctl\"] (tiffin adds `restart UNIT` or `reload UNIT`)".into();
            return Err(invalid(path, Some("systemctl"), message));
        }
        if self.watch_interval.0 < Duration::from_secs(1) {
            let message = format!("{} is shorter than the minimum, 1s", self.watch_interval);
            return Err(invalid(path, Some("watch_interval"), message));
        }
        if self.state_dir.0.starts_with(&self.root.0) && self.root.0 != Path::new("/") {
            let message =
                "must not be inside root: deployed files would overwrite tiffin's own state".into();
            return Err(invalid(path, Some("state_dir"), message));
        }
        Ok(ClientConfig {
            prebuilt,
            host: self.host,
            server: self.server,
            user,
            identity: self.identity.0,
            server_key: self.server_key,
            state_dir: self.state_dir.0,
            root: self.root.0,
            rebuild: self.rebuild.unwrap_or_default(),
            connect_timeout: self.connect_timeout,
            io_timeout: self.io_timeout,
            rebuild_timeout: self.rebuild_timeout,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            reboot_command: self.reboot_command,
            systemctl: self.systemctl,
            activation: self.activation,
            systemd_run: self.systemd_run,
            reboot_window: self.reboot_window,
            watch_interval: self.watch_interval,
            poll_interval: self.poll_interval,
            confirm_timeout: self.confirm_timeout,
            system_profile: self.system_profile.0,
            trust: self.trust,
            notify: self.notify,
            defer: self.defer,
        })
    }
}

impl RawConfig {
    fn prebuilt_settings(&self, path: &Path) -> Result<super::prebuilt::Settings, ConfigError> {
        let mut settings = super::prebuilt::Settings::default();
        if let Some(key) = &self.cache_public_key {
            super::prebuilt::check_public_key(key)
                .map_err(|m| invalid(path, Some("cache_public_key"), m))?;
            settings.cache_public_key = Some(key.clone());
        }
        for (key, given, slot) in [
            ("nix_import", &self.nix_import, &mut settings.import),
            (
                "nix_query_invalid",
                &self.nix_query_invalid,
                &mut settings.query_invalid,
            ),
            (
                "nix_set_profile",
                &self.nix_set_profile,
                &mut settings.set_profile,
            ),
            ("nix_gc_root", &self.nix_gc_root, &mut settings.gc_root),
        ] {
            if let Some(argv) = given {
                if argv.first().is_none_or(|p| p.is_empty()) {
                    let message = "is empty: give an argv (see docs/prebuilt.md)".into();
                    return Err(invalid(path, Some(key), message));
                }
                *slot = argv.clone();
            }
        }
        Ok(settings)
    }
}

fn valid_account_name(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= crate::core::names::MAX_ACCOUNT_NAME
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn default_systemd_run() -> Vec<String> {
    vec!["systemd-run".into()]
}

fn default_systemctl() -> Vec<String> {
    vec!["systemctl".into()]
}

fn default_reboot_command() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}

fn default_confirm_timeout() -> Interval {
    Interval::secs(180)
}

fn default_system_profile() -> AbsPath {
    AbsPath("/nix/var/nix/profiles/system".into())
}

fn default_identity() -> AbsPath {
    AbsPath("/etc/tiffin/id_ed25519".into())
}
fn default_state_dir() -> AbsPath {
    AbsPath("/var/lib/tiffin".into())
}
fn default_root() -> AbsPath {
    AbsPath("/".into())
}
fn default_connect_timeout() -> Interval {
    Interval::secs(10)
}
fn default_io_timeout() -> Interval {
    Interval::secs(60)
}
fn default_rebuild_timeout() -> Interval {
    Interval::secs(3600)
}
fn default_backoff_initial() -> Interval {
    Interval::secs(300)
}
fn default_backoff_max() -> Interval {
    Interval::secs(6 * 3600)
}
fn default_watch_interval() -> Interval {
    Interval::secs(5)
}
fn default_poll_interval() -> Interval {
    Interval::secs(15 * 60)
}

/// A validated client configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub host: HostName,
    pub server: ServerAddr,
    pub user: String,
    pub identity: PathBuf,
    pub server_key: PinnedKey,
    pub state_dir: PathBuf,
    pub root: PathBuf,
    pub rebuild: RebuildCommand,
    pub connect_timeout: Interval,
    pub io_timeout: Interval,
    pub rebuild_timeout: Interval,
    pub backoff_initial: Interval,
    pub backoff_max: Interval,
    pub reboot_command: Vec<String>,
    /// Restarts and reloads units: this argv, then `restart UNIT` or `reload UNIT`.
    pub systemctl: Vec<String>,
    /// Where activations run (`auto`: in a unit of their own when systemd is the init).
    pub activation: super::activation::Activation,
    /// Starts an activation's unit (`systemd-run`).
    pub systemd_run: Vec<String>,
    /// Used when the release's `[apply]` names no reboot window.
    pub reboot_window: Option<crate::core::window::RebootWindow>,
    /// `tiffin pull --watch` reads `/CURRENT` this often (at least 1s).
    pub watch_interval: Interval,
    /// `tiffin pull --watch` sends its heartbeat report this often while idle.
    pub poll_interval: Interval,
    /// How prebuilt releases are imported and switched to.
    pub prebuilt: super::prebuilt::Settings,
    /// How long to try reaching the server after an activation or a boot before rolling back
    /// (a release's `[apply] confirm_timeout` wins).
    pub confirm_timeout: Interval,
    /// The system profile whose generations are the boot entries (`nixos-rebuild` and
    /// `nix-env -p` set it); read to know which system a `boot` release boots.
    pub system_profile: PathBuf,
    /// The fleet's root of trust, pinned at enrollment: with it, only releases its admins
    /// signed are applied (docs/signing.md); without it, releases are trusted as served.
    pub trust: Option<crate::core::trust::TrustRoot>,
    pub notify: super::notify::Notify,
    pub defer: super::conditions::Deferral,
}

/// A configuration that cannot be used, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the client configuration {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {}{message}", key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        key: Option<String>,
        message: String,
    },
}

/// Which syntax a configuration file is in, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Toml,
    Json,
}

impl Syntax {
    pub fn of(path: &Path) -> Syntax {
        if path.extension().is_some_and(|e| e == "json") {
            Syntax::Json
        } else {
            Syntax::Toml
        }
    }
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        ClientConfig::parse(&text, Syntax::of(path), path)
    }

    /// Parses `text`; `path` only names the file in errors.
    pub fn parse(text: &str, syntax: Syntax, path: &Path) -> Result<ClientConfig, ConfigError> {
        RawConfig::read(text, syntax, path)?.validate(path)
    }

    /// A few lines for people: what this configuration will do.
    pub fn summary(&self) -> String {
        format!(
            "host {host}: connects to {user}@{server} with {identity}\n\
             pinned server key: {fp}\n\
             state in {state}, files/ land under {root}\n\
             rebuild: {rebuild} (timeout {rt}; activation: {activation})\n\
             timeouts: connect {ct}, i/o {it}; failed releases retried after {bi}, doubling up to {bm}\n\
             after an activation or a boot: the server must be reached within {cf}, else the previous release comes back\n",
            host = self.host,
            user = self.user,
            server = self.server,
            identity = self.identity.display(),
            fp = self.server_key.fingerprint(),
            state = self.state_dir.display(),
            root = self.root.display(),
            rebuild = self.rebuild.0.join(" "),
            rt = self.rebuild_timeout,
            activation = self.activation.as_str(),
            ct = self.connect_timeout,
            it = self.io_timeout,
            bi = self.backoff_initial,
            bm = self.backoff_max,
            cf = self.confirm_timeout,
        ) + &self
            .reboot_window
            .map(|w| format!("reboot window (where a release sets none): {w}, local time\n"))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOkDc3beSlNd2363XxewBPJDfsiRJahqtAVPNfHiyuwH test";

    fn parse(text: &str) -> Result<ClientConfig, ConfigError> {
        ClientConfig::parse(text, Syntax::Toml, Path::new("client.toml"))
    }

    #[test]
    fn a_malformed_reboot_window_names_its_key() {
        let base = format!("host = \"web-1\"\nserver = \"192.0.2.1\"\nserver_key = \"{KEY}\"\n");
        let e = parse(&format!("{base}reboot_window = \"1am-5am\"\n")).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("key `reboot_window`") && text.contains("\"01:00-05:00\""),
            "{text}"
        );
        let ok = parse(&format!("{base}reboot_window = \"22:00-04:00\"\n")).unwrap();
        assert_eq!(ok.reboot_window.unwrap().to_string(), "22:00-04:00");
        assert!(
            ok.summary()
                .contains("reboot window (where a release sets none): 22:00-04:00")
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(&format!(
            "host = \"web-1\"\nserver = \"192.0.2.1\"\nserver_key = \"{KEY}\"\n"
        ))
        .unwrap();
        assert_eq!(c.user, "tiffin-web-1");
        assert_eq!(c.server.port, 22);
        assert_eq!(c.state_dir, Path::new("/var/lib/tiffin"));
        assert_eq!(c.rebuild, RebuildCommand::default());
        assert_eq!(c.watch_interval, Interval::secs(5));
        assert_eq!(c.poll_interval, Interval::secs(900));
    }

    #[test]
    fn json_is_the_same_document() {
        let text = format!(
            r#"{{"host":"web-1","server":"[2001:db8::1]:2222","server_key":"{KEY}","io_timeout":"5s"}}"#
        );
        let c = ClientConfig::parse(&text, Syntax::Json, Path::new("c.json")).unwrap();
        assert_eq!(c.server.host, "2001:db8::1");
        assert_eq!(c.server.port, 2222);
        assert_eq!(c.io_timeout, Interval::secs(5));
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key, what) in [
            (
                format!(
                    "host = \"a\"\nserver = \"x\"\nserver_key = \"{KEY}\"\nio_timeout = \"soon\"\n"
                ),
                "io_timeout",
                "invalid duration",
            ),
            (
                "host = \"a\"\nserver = \"x\"\nserver_key = \"ssh-ed25519 nope\"\n".to_owned(),
                "server_key",
                "not an OpenSSH public key",
            ),
            (
                format!("host = \"a\"\nserver = \"x:99999\"\nserver_key = \"{KEY}\"\n"),
                "server",
                "port",
            ),
            (
                format!(
                    "host = \"a\"\nserver = \"x\"\nserver_key = \"{KEY}\"\nstate_dir = \"var\"\n"
                ),
                "state_dir",
                "absolute",
            ),
            (
                format!("host = \"a\"\nserver = \"x\"\nserver_key = \"{KEY}\"\nrebuild = []\n"),
                "rebuild",
                "empty",
            ),
            (
                format!(
                    "host = \"a\"\nserver = \"x\"\nserver_key = \"{KEY}\"\nwatch_interval = \"500ms\"\n"
                ),
                "watch_interval",
                "minimum, 1s",
            ),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with("client.toml: key `"), "{err}");
            assert!(err.contains(&format!("`{key}`")), "{err}");
            assert!(err.contains(what), "{err}");
        }
        let err = parse("host = \"a\"\nserver = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server_key"), "{err}");
        let err = parse(&format!(
            "host = \"a\"\nserver = \"x\"\nserver_key = \"{KEY}\"\nsever = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `sever`"), "{err}");
    }
}
