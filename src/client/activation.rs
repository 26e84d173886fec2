//! Where an activation runs: in a transient systemd unit of its own, so that neither tiffin's rebuild timeout nor stopping tiffin can kill a system half-way through switching.
//!
//! nixos-rebuild does the same for `switch-to-configuration` (`systemd-run … --unit=
//! nixos-rebuild-switch-to-configuration`) when `/run/systemd/system` exists. tiffin runs the
//! whole activating command that way (`nixos-rebuild switch|boot|test`, or a prebuilt system's
//! `switch-to-configuration`): its output is appended to tiffin's log file by systemd rather
//! than piped, so a tiffin that is killed or gives up waiting leaves the activation to finish.

use std::path::Path;

use serde::Deserialize;

/// The transient unit an activation runs as; one at a time (a second start is refused while it runs).
pub const UNIT: &str = "tiffin-activation";

/// Where systemd keeps its runtime state while it is the running init.
const SYSTEMD_RUNNING: &str = "/run/systemd/system";

/// Environment variables systemd sets for tiffin's own unit, which must not leak into another.
const PER_UNIT_VARIABLES: [&str; 12] = [
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "NOTIFY_SOCKET",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "SYSTEMD_EXEC_PID",
    "MANAGERPID",
    "MAINPID",
    "MONITOR_SERVICE_RESULT",
];

/// `activation` in client.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// Under systemd-run when systemd is the running init (as nixos-rebuild decides), else direct.
    #[default]
    Auto,
    /// Always under `systemd_run` (the lab points it at its stand-in).
    SystemdRun,
    /// As tiffin's own child: a timeout kills it (a system without systemd, a chroot).
    Direct,
}

impl Activation {
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Auto => "auto",
            Activation::SystemdRun => "systemd-run",
            Activation::Direct => "direct",
        }
    }
}

/// How one activating command is run, decided once per poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detach {
    /// tiffin's child, in its own process group, killed at the timeout.
    Direct,
    /// The unit [`UNIT`], started by this argv (`systemd-run`); never killed by tiffin.
    Unit { systemd_run: Vec<String> },
}

impl Detach {
    /// `activation` with `systemd_run` (client.toml), on this machine now.
    pub fn resolve(activation: Activation, systemd_run: &[String]) -> Detach {
        let unit = || Detach::Unit {
            systemd_run: systemd_run.to_vec(),
        };
        match activation {
            Activation::SystemdRun => unit(),
            Activation::Direct => Detach::Direct,
            Activation::Auto if Path::new(SYSTEMD_RUNNING).is_dir() => unit(),
            Activation::Auto => Detach::Direct,
        }
    }

    /// The argv that runs `argv` as this says, its output appended to `log`.
    pub fn wrap(&self, argv: &[String], log: &Path) -> Vec<String> {
        let Detach::Unit { systemd_run } = self else {
            return argv.to_vec();
        };
        let log = log.display();
        let mut out = systemd_run.clone();
        out.extend([
            format!("--unit={UNIT}"),
            "--collect".into(),
            "--no-ask-password".into(),
            "--quiet".into(),
            "--wait".into(),
            "--service-type=exec".into(),
            "--property=StandardInput=null".into(),
            format!("--property=StandardOutput=append:{log}"),
            format!("--property=StandardError=append:{log}"),
        ]);
        // By name only (systemd-run copies the value from its own environment), so no value
        // (a proxy's credentials) shows in the process list.
        for name in forwarded_variables() {
            out.push(format!("--setenv={name}"));
        }
        out.push("--".into());
        out.extend(argv.iter().cloned());
        out
    }
}

/// tiffin's environment (the unit's PATH, HOME, NIX_PATH, proxies, LOCALE_ARCHIVE, …), less
/// what systemd sets per unit; names systemd-run could not pass are left out.
fn forwarded_variables() -> Vec<String> {
    let mut names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| {
            !k.is_empty()
                && !k.contains('=')
                && k.bytes().all(|b| b.is_ascii_graphic())
                && !PER_UNIT_VARIABLES.contains(&k.as_str())
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_runs_the_command_with_its_output_appended_to_the_log() {
        let detach = Detach::Unit {
            systemd_run: vec!["systemd-run".into()],
        };
        let argv = ["nixos-rebuild".to_owned(), "switch".to_owned()];
        let got = detach.wrap(&argv, Path::new("/var/lib/tiffin/rebuild.log"));
        assert_eq!(got[0], "systemd-run");
        assert!(got.contains(&"--unit=tiffin-activation".to_owned()));
        assert!(got.contains(&"--wait".to_owned()));
        assert!(
            got.contains(
                &"--property=StandardOutput=append:/var/lib/tiffin/rebuild.log".to_owned()
            )
        );
        let dashes = got.iter().position(|a| a == "--").unwrap();
        assert_eq!(&got[dashes + 1..], &argv);
        assert!(
            got[..dashes]
                .iter()
                .filter(|a| a.starts_with("--setenv="))
                .all(|a| !a.contains("=") || a.matches('=').count() == 1),
            "variables go by name, never with their values: {got:?}"
        );
        assert!(!got.iter().any(|a| a == "--setenv=INVOCATION_ID"));
    }

    #[test]
    fn direct_runs_the_command_as_it_is() {
        let argv = ["switch-to-configuration".to_owned(), "boot".to_owned()];
        assert_eq!(Detach::Direct.wrap(&argv, Path::new("/l")), argv);
        assert_eq!(
            Detach::resolve(Activation::Direct, &["systemd-run".into()]),
            Detach::Direct
        );
        assert!(matches!(
            Detach::resolve(Activation::SystemdRun, &["x".into()]),
            Detach::Unit { .. }
        ));
    }
}
