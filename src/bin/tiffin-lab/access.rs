//! `expect_denied`: accesses a client must not have, tried with OpenSSH's own `ssh` and `sftp` from the client machine.
//!
//! Each check first proves that the client can log in and do what it is
//! allowed to (list its chroot, write its reports): a denial is only evidence
//! when the same credentials work for the allowed thing. Then every attempt
//! must fail in the expected way, and for writes the server's files are
//! checked afterwards.

use std::time::Duration;

use super::exec::{self, ExecError};
use super::machine::SERVER_ADDRESS;
use super::scenario::{Access, MachineName};
use super::steps::{chroot_of, fleet_config};
use super::world::{CLIENT_IDENTITY, Failure, KNOWN_HOSTS, StepError, StepResult, World};

/// One attempt may take this long; an attempt still running (e.g. a forward that works) is not denied.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
const PROBE: &str = "/tmp/tiffin-lab-probe";
const STRANGER_KEY: &str = "/tmp/tiffin-lab-stranger";
const SHELL_MARK: &str = "TIFFIN-LAB-SHELL-42";

/// How an attempt shows it was denied.
#[derive(Debug, Clone)]
enum Denied {
    /// Non-zero exit and one of these messages.
    Fails(&'static [&'static str]),
    /// Whatever the exit status, the output must not contain this.
    Lacks(String),
}

#[derive(Debug, Clone)]
struct Attempt {
    what: String,
    argv: Vec<String>,
    stdin: Option<String>,
    denied: Denied,
}

const NOT_THERE: &[&str] = &["not found", "No such file", "Permission denied"];
const REFUSED_WRITE: &[&str] = &["Permission denied", "Failure"];
const REFUSED_LOGIN: &[&str] = &["Permission denied"];
const REFUSED_FORWARD: &[&str] = &["forwarding failed", "prohibited", "open failed"];

/// Options every ssh/sftp of the lab uses: the client's own key, the pinned server key, no prompts.
fn ssh_options(identity: &str) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        &format!("IdentityFile={identity}"),
        "-o",
        &format!("UserKnownHostsFile={KNOWN_HOSTS}"),
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

struct Client {
    user: String,
    mux: String,
}

impl Client {
    fn target(&self) -> String {
        format!("{}@{SERVER_ADDRESS}", self.user)
    }
    /// Options that reuse the step's master connection.
    fn via_mux(&self) -> Vec<String> {
        let mut v = ssh_options(CLIENT_IDENTITY);
        v.extend([
            "-o".into(),
            format!("ControlPath={}", self.mux),
            "-o".into(),
            "ControlMaster=no".into(),
        ]);
        v
    }
    fn sftp(&self, what: impl Into<String>, batch: &str, denied: Denied) -> Attempt {
        let mut argv = vec!["sftp".to_owned(), "-b".into(), "-".into()];
        argv.extend(self.via_mux());
        argv.push(self.target());
        Attempt {
            what: what.into(),
            argv,
            stdin: Some(format!("{batch}\n")),
            denied,
        }
    }
    fn ssh(&self, what: impl Into<String>, extra: &[&str], denied: Denied) -> Attempt {
        let mut argv = vec!["ssh".to_owned()];
        argv.extend(self.via_mux());
        argv.extend(extra.iter().map(|s| s.to_string()));
        Attempt {
            what: what.into(),
            argv,
            stdin: None,
            denied,
        }
    }
}

pub fn expect_denied(
    world: &mut World,
    on: &MachineName,
    access: Access,
    other: Option<&MachineName>,
) -> StepResult {
    let config = fleet_config(world)?;
    let prefix = config.server.user_prefix.clone();
    let chroot_root = config.server.chroot_root.display().to_string();
    let me = Client {
        user: format!("{prefix}{on}"),
        mux: format!("/run/tiffin-lab-mux-{on}"),
    };
    let own = chroot_of(world, on.as_str())?;
    let own_id = own.read_current().ok().flatten();
    world.write_file(on, PROBE, "written by tiffin-lab expect_denied\n", 0o644)?;

    // The control: the client's key logs in (a master connection the attempts reuse), lists its
    // chroot and writes its reports.
    let mut master = vec!["ssh".to_owned(), "-M".into(), "-S".into(), me.mux.clone()];
    master.extend(["-f".into(), "-N".into()]);
    master.extend(ssh_options(CLIENT_IDENTITY));
    master.push(me.target());
    run_control(world, on, &master, None, "log in with its own key")?;
    let result: StepResult = (|| {
        let control = me.sftp(
            "",
            &format!("ls /\nput {PROBE} /reports/tiffin-lab-probe\nrm /reports/tiffin-lab-probe"),
            Denied::Lacks(String::new()),
        );
        run_control(
            world,
            on,
            &control.argv,
            control.stdin.as_deref(),
            "list its own chroot and write into its reports/ (what it is allowed to do)",
        )?;
        let attempts = attempts(
            world,
            &me,
            access,
            other,
            &prefix,
            &chroot_root,
            own_id.as_ref(),
        )?;
        for a in &attempts {
            try_attempt(world, on, access, a)?;
        }
        Ok(())
    })();
    let mut exit = vec![
        "ssh".to_owned(),
        "-S".into(),
        me.mux.clone(),
        "-O".into(),
        "exit".into(),
    ];
    exit.push(me.target());
    let argv: Vec<&str> = exit.iter().map(String::as_str).collect();
    let _ = world.exec(on, &argv, None);
    result?;
    check_server_untouched(world, on, access, own_id.as_ref())
}

fn attempts(
    world: &mut World,
    me: &Client,
    access: Access,
    other: Option<&MachineName>,
    prefix: &str,
    chroot_root: &str,
    own_id: Option<&tiffin::names::ReleaseId>,
) -> StepResult<Vec<Attempt>> {
    let other_name = other.map(|o| o.to_string()).unwrap_or_default();
    let other_id = match other {
        Some(o) => chroot_of(world, o.as_str())?.read_current().ok().flatten(),
        None => None,
    };
    let got = "/tmp/tiffin-lab-got";
    let mut v = Vec::new();
    match access {
        Access::ReadOther => {
            let x = &other_name;
            v.push(me.sftp(
                format!("read {x}'s CURRENT through /.."),
                &format!("get /../{x}/CURRENT {got}"),
                Denied::Fails(NOT_THERE),
            ));
            v.push(me.sftp(
                format!("read {x}'s CURRENT through .."),
                &format!("get ../{x}/CURRENT {got}"),
                Denied::Fails(NOT_THERE),
            ));
            v.push(me.sftp(
                format!("read {x}'s CURRENT by its path on the server"),
                &format!("get {chroot_root}/{x}/CURRENT {got}"),
                Denied::Fails(NOT_THERE),
            ));
            if let Some(id) = &other_id {
                v.push(me.sftp(
                    format!("read {x}'s MANIFEST by its release id"),
                    &format!("get /releases/{id}/MANIFEST {got}"),
                    Denied::Fails(NOT_THERE),
                ));
            }
        }
        Access::ListOther => {
            let x = &other_name;
            v.push(me.sftp(
                format!("list {x}'s chroot through /.."),
                &format!("ls /../{x}"),
                Denied::Fails(NOT_THERE),
            ));
            v.push(me.sftp(
                "list the server's chroot root",
                &format!("ls {chroot_root}"),
                Denied::Fails(NOT_THERE),
            ));
            v.push(me.sftp(
                format!("look for {x} above its own root"),
                "ls -la /..",
                Denied::Lacks(x.clone()),
            ));
        }
        Access::WriteRelease => {
            let Some(id) = own_id else {
                return Err(Failure::new(format!(
                    "write-release needs a published release of {} (add a publish step before it)",
                    me.user.trim_start_matches(prefix)
                ))
                .into());
            };
            let r = format!("/releases/{id}");
            for (what, batch) in [
                ("add a file to its release", format!("put {PROBE} {r}/evil")),
                (
                    "overwrite its MANIFEST",
                    format!("put {PROBE} {r}/MANIFEST"),
                ),
                ("delete its MANIFEST", format!("rm {r}/MANIFEST")),
                ("rename its MANIFEST", format!("rename {r}/MANIFEST {r}/M")),
                ("chmod its MANIFEST", format!("chmod 666 {r}/MANIFEST")),
                (
                    "create a directory in its release",
                    format!("mkdir {r}/evil"),
                ),
                ("create a release", "mkdir /releases/evil".to_owned()),
                (
                    "add a file to releases/",
                    format!("put {PROBE} /releases/evil"),
                ),
            ] {
                v.push(me.sftp(what, &batch, Denied::Fails(REFUSED_WRITE)));
            }
        }
        Access::WriteRoot => {
            let mut list = vec![
                ("create a file at its root", format!("put {PROBE} /evil")),
                ("create a directory at its root", "mkdir /evil".to_owned()),
                ("replace CURRENT", format!("put {PROBE} /CURRENT")),
                ("rename reports/", "rename /reports /evil".to_owned()),
                (
                    "create a symlink at its root",
                    "symlink /reports /evil".to_owned(),
                ),
                (
                    "escape reports/ with ..",
                    format!("put {PROBE} /reports/../evil"),
                ),
            ];
            if own_id.is_some() {
                list.push(("delete CURRENT", "rm /CURRENT".to_owned()));
            }
            for (what, batch) in list {
                v.push(me.sftp(what, &batch, Denied::Fails(REFUSED_WRITE)));
            }
        }
        Access::Shell => {
            let echo = "echo TIFFIN-LAB-SHELL-$((6*7))";
            let target = me.target();
            v.push(me.ssh(
                "run a command",
                &[&target, echo],
                Denied::Lacks(SHELL_MARK.into()),
            ));
            v.push(me.ssh(
                "run a command with a terminal",
                &["-tt", &target, echo],
                Denied::Lacks(SHELL_MARK.into()),
            ));
        }
        Access::PortForward => {
            let target = me.target();
            let dest = format!("{SERVER_ADDRESS}:22");
            v.push(me.ssh(
                "forward its stdio to a TCP port (-W)",
                &["-W", &dest, &target],
                Denied::Lacks("SSH-2.0".into()),
            ));
            // A remote forward needs a connection of its own (the master did not ask for it).
            let mut argv = vec!["ssh".to_owned()];
            argv.extend(ssh_options(CLIENT_IDENTITY));
            argv.extend(
                [
                    "-N",
                    "-o",
                    "ExitOnForwardFailure=yes",
                    "-R",
                    "127.0.0.1:10022:127.0.0.1:22",
                    &target,
                ]
                .map(String::from),
            );
            v.push(Attempt {
                what: "open a remote port forward (-R)".into(),
                argv,
                stdin: None,
                denied: Denied::Fails(REFUSED_FORWARD),
            });
        }
        Access::WrongKey => {
            let other_user = format!("{prefix}{other_name}");
            let mut argv = vec!["ssh".to_owned()];
            argv.extend(ssh_options(CLIENT_IDENTITY));
            argv.extend([format!("{other_user}@{SERVER_ADDRESS}"), "true".into()]);
            v.push(Attempt {
                what: format!("log in as {other_user} with its own key"),
                argv,
                stdin: None,
                denied: Denied::Fails(REFUSED_LOGIN),
            });
            let on: MachineName = me
                .user
                .trim_start_matches(prefix)
                .parse()
                .map_err(Failure::new)?;
            world.generate_key(&on, STRANGER_KEY, "stranger")?;
            let mut argv = vec!["ssh".to_owned()];
            argv.extend(ssh_options(STRANGER_KEY));
            argv.extend([me.target(), "true".into()]);
            v.push(Attempt {
                what: format!("log in as {} with a key the fleet does not know", me.user),
                argv,
                stdin: None,
                denied: Denied::Fails(REFUSED_LOGIN),
            });
        }
    }
    Ok(v)
}

/// Runs an allowed access; it must work, or the denials prove nothing.
fn run_control(
    world: &mut World,
    on: &MachineName,
    argv: &[String],
    stdin: Option<&str>,
    what: &str,
) -> StepResult {
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let done = world.exec_with(on, &refs, stdin, ATTEMPT_TIMEOUT)?;
    if done.status.success() {
        return Ok(());
    }
    Err(Failure {
        problem: format!(
            "the control failed: {on} could not {what}, so a denial would prove nothing"
        ),
        machine: Some(on.to_string()),
        command: Some(describe(argv, stdin)),
        exit: Some(format!("{} (expected 0)", done.code())),
        output: Some(done.output),
    }
    .into())
}

fn try_attempt(world: &mut World, on: &MachineName, access: Access, a: &Attempt) -> StepResult {
    let refs: Vec<&str> = a.argv.iter().map(String::as_str).collect();
    let running = world.spawn(on, &refs, a.stdin.as_deref())?;
    let command = describe(&a.argv, a.stdin.as_deref());
    let (code, output, note) = match running.wait(ATTEMPT_TIMEOUT, &world.interrupt()) {
        Ok(done) => (Some(done.code()), done.output, None),
        Err(ExecError::Interrupted { .. }) => return Err(StepError::Interrupted),
        Err(ExecError::TimedOut { output, .. }) => (
            None,
            output,
            Some("it was still running after 20s, so the access worked".to_owned()),
        ),
        Err(e) => return Err(Failure::new(e.to_string()).on(on.as_str()).into()),
    };
    let denied = match (&a.denied, code) {
        (Denied::Fails(messages), Some(c)) if c != 0 => messages.iter().any(|m| output.contains(m)),
        (Denied::Fails(_), _) => false,
        (Denied::Lacks(text), Some(_)) => !output.contains(text.as_str()),
        (Denied::Lacks(_), None) => false,
    };
    if denied {
        return Ok(());
    }
    let expected = match &a.denied {
        Denied::Fails(m) => format!("a non-zero exit with one of: {}", m.join(" | ")),
        Denied::Lacks(t) => format!("no {t:?} in the output"),
    };
    Err(Failure {
        problem: format!(
            "{on} was not denied {}: it could {}{}",
            access.as_str(),
            a.what,
            note.map(|n| format!(" ({n})")).unwrap_or_default()
        ),
        machine: Some(on.to_string()),
        command: Some(command),
        exit: Some(match code {
            Some(c) => format!("{c} (expected {expected})"),
            None => format!("none (expected {expected})"),
        }),
        output: Some(output),
    }
    .into())
}

fn describe(argv: &[String], stdin: Option<&str>) -> String {
    let words = exec::shell_words(argv);
    match stdin {
        Some(batch) => format!("{words} <<< {:?}", batch.trim_end()),
        None => words,
    }
}

/// After write attempts, the server must show no trace of them.
fn check_server_untouched(
    world: &World,
    on: &MachineName,
    access: Access,
    own_id: Option<&tiffin::names::ReleaseId>,
) -> StepResult {
    if !matches!(access, Access::WriteRelease | Access::WriteRoot) {
        return Ok(());
    }
    let chroot = chroot_of(world, on.as_str())?;
    let fail = |problem: String| -> StepError { Failure::new(problem).on("server").into() };
    let now = chroot.read_current().ok().flatten();
    if now.as_ref() != own_id {
        return Err(fail(format!(
            "{on}'s CURRENT changed during the write attempts ({:?} -> {:?})",
            own_id.map(|i| i.short().to_owned()),
            now.map(|i| i.short().to_owned())
        )));
    }
    for evil in ["evil", "releases/evil"] {
        let p = chroot.current().with_file_name(evil);
        if p.symlink_metadata().is_ok() {
            return Err(fail(format!(
                "{on} managed to create {evil} in its chroot on the server"
            )));
        }
    }
    if let Some(id) = own_id {
        let dir = chroot.release(id);
        let manifest = std::fs::read(dir.join(tiffin::release::MANIFEST_FILE)).unwrap_or_default();
        if &tiffin::names::ReleaseId::of_bytes(&manifest) != id {
            return Err(fail(format!(
                "{on}'s release {} no longer matches its id after the write attempts",
                id.short()
            )));
        }
        if dir.join("evil").symlink_metadata().is_ok() {
            return Err(fail(format!(
                "{on} managed to add a file to its release {}",
                id.short()
            )));
        }
    }
    Ok(())
}
