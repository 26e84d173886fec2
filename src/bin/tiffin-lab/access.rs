//! `expect_denied`: accesses a client must not have, tried with OpenSSH's own `ssh` and `sftp` from the client machine.
//!
//! Each check first proves that the client can log in and do what it is
//! allowed to (list its chroot, write its reports): a denial is only evidence
//! when the same credentials work for the allowed thing. Then every attempt
//! must fail in the expected way, and for writes the server's files are
//! checked afterwards.

use std::time::Duration;

use tiffin::core::names::ReleaseId;

use super::exec::{self, ExecError};
use super::machine::SERVER_ADDRESS;
use super::scenario::{Access, MachineName};
use super::world::{CLIENT_IDENTITY, Failure, KNOWN_HOSTS, StepError, StepResult, World};

/// One attempt may take this long; an attempt still running (e.g. a forward that works) is not denied.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
const PROBE: &str = "/tmp/tiffin-lab-probe";
const STRANGER_KEY: &str = "/tmp/tiffin-lab-stranger";
const SHELL_MARK: &str = "TIFFIN-LAB-SHELL-42";
/// Where a read that should fail would land on the client.
const GOT: &str = "/tmp/tiffin-lab-got";

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

impl Attempt {
    /// True when the attempt ended the way a denial does. `code` is `None` when it was still
    /// running at the timeout, which means the access worked.
    fn was_denied(&self, code: Option<i32>, output: &str) -> bool {
        match (&self.denied, code) {
            (Denied::Fails(messages), Some(c)) if c != 0 => {
                messages.iter().any(|m| output.contains(m))
            }
            (Denied::Fails(_), _) => false,
            (Denied::Lacks(text), Some(_)) => !output.contains(text.as_str()),
            (Denied::Lacks(_), None) => false,
        }
    }

    fn expected(&self) -> String {
        match &self.denied {
            Denied::Fails(m) => format!("a non-zero exit with one of: {}", m.join(" | ")),
            Denied::Lacks(t) => format!("no {t:?} in the output"),
        }
    }
}

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

/// The client whose accesses are tried, as the server knows it.
struct Client {
    on: MachineName,
    /// Its account on the server.
    user: String,
    /// The fleet's account prefix, to name another client's account.
    prefix: String,
    /// Where the server keeps the chroots, as the server's own path.
    chroot_root: String,
    /// Its published release, if any.
    own_id: Option<ReleaseId>,
    /// The control socket of the master connection the attempts reuse.
    mux: String,
}

/// Checks that `on` cannot do `access` (to `other`, for the accesses that name one).
pub fn expect_denied(
    world: &mut World,
    on: &MachineName,
    access: Access,
    other: Option<&MachineName>,
) -> StepResult {
    let me = Client::of(world, on)?;
    world.write_file(on, PROBE, "written by tiffin-lab expect_denied\n", 0o644)?;
    me.open_master(world)?;
    let result = me.try_all(world, access, other);
    // Closed whatever happened, or the master would outlive the step.
    me.close_master(world);
    result?;
    me.check_server_untouched(world, access)
}

impl Client {
    fn of(world: &World, on: &MachineName) -> StepResult<Client> {
        let config = world.fleet_config()?;
        let prefix = config.server.user_prefix.clone();
        let own_id = world.chroot_of(on.as_str())?.read_current().ok().flatten();
        Ok(Client {
            on: on.clone(),
            user: format!("{prefix}{on}"),
            prefix,
            chroot_root: config.server.chroot_root.display().to_string(),
            own_id,
            mux: format!("/run/tiffin-lab-mux-{on}"),
        })
    }

    fn target(&self) -> String {
        format!("{}@{SERVER_ADDRESS}", self.user)
    }

    // ---- the control --------------------------------------------------------------------

    /// The first control: the client's key logs in (a master connection the attempts reuse).
    fn open_master(&self, world: &mut World) -> StepResult {
        let mut master = vec!["ssh".to_owned(), "-M".into(), "-S".into(), self.mux.clone()];
        master.extend(["-f".into(), "-N".into()]);
        master.extend(ssh_options(CLIENT_IDENTITY));
        master.push(self.target());
        self.control(world, &master, None, "log in with its own key")
    }

    fn close_master(&self, world: &mut World) {
        let exit = ["ssh", "-S", &self.mux, "-O", "exit", &self.target()].map(String::from);
        let argv: Vec<&str> = exit.iter().map(String::as_str).collect();
        let _ = world.exec(&self.on, &argv, None);
    }

    /// The second control (what the client may do), then every attempt of `access`.
    fn try_all(
        &self,
        world: &mut World,
        access: Access,
        other: Option<&MachineName>,
    ) -> StepResult {
        let allowed = self.sftp(
            "",
            &format!("ls /\nput {PROBE} /reports/tiffin-lab-probe\nrm /reports/tiffin-lab-probe"),
            Denied::Lacks(String::new()),
        );
        self.control(
            world,
            &allowed.argv,
            allowed.stdin.as_deref(),
            "list its own chroot and write into its reports/ (what it is allowed to do)",
        )?;
        for a in &self.attempts(world, access, other)? {
            self.try_attempt(world, access, a)?;
        }
        Ok(())
    }

    /// Runs an allowed access; it must work, or the denials prove nothing.
    fn control(
        &self,
        world: &mut World,
        argv: &[String],
        stdin: Option<&str>,
        what: &str,
    ) -> StepResult {
        let on = &self.on;
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

    // ---- the attempts, per access -------------------------------------------------------

    fn attempts(
        &self,
        world: &mut World,
        access: Access,
        other: Option<&MachineName>,
    ) -> StepResult<Vec<Attempt>> {
        // Every access that names `other` has one: the scenario was checked at load.
        let other = other.map(MachineName::as_str).unwrap_or_default();
        Ok(match access {
            Access::ReadOther => {
                let other_id = world.chroot_of(other)?.read_current().ok().flatten();
                self.read_other(other, other_id.as_ref())
            }
            Access::ListOther => self.list_other(other),
            Access::WriteRelease => self.write_release()?,
            Access::WriteRoot => self.write_root(),
            Access::Shell => self.shell(),
            Access::PortForward => self.port_forward(),
            Access::WrongKey => {
                world.generate_key(&self.on, STRANGER_KEY, "stranger")?;
                self.wrong_key(other)
            }
        })
    }

    fn read_other(&self, x: &str, other_id: Option<&ReleaseId>) -> Vec<Attempt> {
        let root = &self.chroot_root;
        let mut table = vec![
            (
                format!("read {x}'s CURRENT through /.."),
                format!("get /../{x}/CURRENT {GOT}"),
            ),
            (
                format!("read {x}'s CURRENT through .."),
                format!("get ../{x}/CURRENT {GOT}"),
            ),
            (
                format!("read {x}'s CURRENT by its path on the server"),
                format!("get {root}/{x}/CURRENT {GOT}"),
            ),
        ];
        if let Some(id) = other_id {
            table.push((
                format!("read {x}'s MANIFEST by its release id"),
                format!("get /releases/{id}/MANIFEST {GOT}"),
            ));
        }
        self.sftp_table(table, NOT_THERE)
    }

    fn list_other(&self, x: &str) -> Vec<Attempt> {
        vec![
            self.sftp(
                format!("list {x}'s chroot through /.."),
                &format!("ls /../{x}"),
                Denied::Fails(NOT_THERE),
            ),
            self.sftp(
                "list the server's chroot root",
                &format!("ls {}", self.chroot_root),
                Denied::Fails(NOT_THERE),
            ),
            self.sftp(
                format!("look for {x} above its own root"),
                "ls -la /..",
                Denied::Lacks(x.to_owned()),
            ),
        ]
    }

    fn write_release(&self) -> StepResult<Vec<Attempt>> {
        let Some(id) = &self.own_id else {
            return Err(Failure::new(format!(
                "write-release needs a published release of {} (add a publish step before it)",
                self.on
            ))
            .into());
        };
        let r = format!("/releases/{id}");
        let table = [
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
        ];
        Ok(self.sftp_table(table, REFUSED_WRITE))
    }

    fn write_root(&self) -> Vec<Attempt> {
        let mut table = vec![
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
        // Without a release there is no CURRENT, and removing nothing proves nothing.
        if self.own_id.is_some() {
            table.push(("delete CURRENT", "rm /CURRENT".to_owned()));
        }
        self.sftp_table(table, REFUSED_WRITE)
    }

    fn shell(&self) -> Vec<Attempt> {
        // The mark is computed by the shell, so an echo of the command line does not count.
        let echo = "echo TIFFIN-LAB-SHELL-$((6*7))";
        let target = self.target();
        vec![
            self.ssh(
                "run a command",
                &[&target, echo],
                Denied::Lacks(SHELL_MARK.into()),
            ),
            self.ssh(
                "run a command with a terminal",
                &["-tt", &target, echo],
                Denied::Lacks(SHELL_MARK.into()),
            ),
        ]
    }

    fn port_forward(&self) -> Vec<Attempt> {
        let target = self.target();
        let dest = format!("{SERVER_ADDRESS}:22");
        vec![
            self.ssh(
                "forward its stdio to a TCP port (-W)",
                &["-W", &dest, &target],
                Denied::Lacks("SSH-2.0".into()),
            ),
            // A remote forward needs a connection of its own (the master did not ask for it).
            own_connection(
                "open a remote port forward (-R)",
                CLIENT_IDENTITY,
                &[
                    "-N",
                    "-o",
                    "ExitOnForwardFailure=yes",
                    "-R",
                    "127.0.0.1:10022:127.0.0.1:22",
                    &target,
                ],
                Denied::Fails(REFUSED_FORWARD),
            ),
        ]
    }

    /// Logins that must fail, so each is a connection of its own.
    fn wrong_key(&self, other: &str) -> Vec<Attempt> {
        let other_user = format!("{}{other}", self.prefix);
        vec![
            own_connection(
                format!("log in as {other_user} with its own key"),
                CLIENT_IDENTITY,
                &[&format!("{other_user}@{SERVER_ADDRESS}"), "true"],
                Denied::Fails(REFUSED_LOGIN),
            ),
            own_connection(
                format!("log in as {} with a key the fleet does not know", self.user),
                STRANGER_KEY,
                &[&self.target(), "true"],
                Denied::Fails(REFUSED_LOGIN),
            ),
        ]
    }

    // ---- building and trying attempts ---------------------------------------------------

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

    /// sftp batches that must all fail with one of `refused`.
    fn sftp_table<W: Into<String>>(
        &self,
        table: impl IntoIterator<Item = (W, String)>,
        refused: &'static [&'static str],
    ) -> Vec<Attempt> {
        table
            .into_iter()
            .map(|(what, batch)| self.sftp(what, &batch, Denied::Fails(refused)))
            .collect()
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

    fn try_attempt(&self, world: &mut World, access: Access, a: &Attempt) -> StepResult {
        let on = &self.on;
        let refs: Vec<&str> = a.argv.iter().map(String::as_str).collect();
        let running = world.spawn(on, &refs, a.stdin.as_deref())?;
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
        if a.was_denied(code, &output) {
            return Ok(());
        }
        let expected = a.expected();
        Err(Failure {
            problem: format!(
                "{on} was not denied {}: it could {}{}",
                access.as_str(),
                a.what,
                note.map(|n| format!(" ({n})")).unwrap_or_default()
            ),
            machine: Some(on.to_string()),
            command: Some(describe(&a.argv, a.stdin.as_deref())),
            exit: Some(match code {
                Some(c) => format!("{c} (expected {expected})"),
                None => format!("none (expected {expected})"),
            }),
            output: Some(output),
        }
        .into())
    }

    // ---- afterwards ---------------------------------------------------------------------

    /// After write attempts, the server must show no trace of them.
    fn check_server_untouched(&self, world: &World, access: Access) -> StepResult {
        if !matches!(access, Access::WriteRelease | Access::WriteRoot) {
            return Ok(());
        }
        let on = &self.on;
        let own_id = self.own_id.as_ref();
        let chroot = world.chroot_of(on.as_str())?;
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
        let Some(id) = own_id else {
            return Ok(());
        };
        let dir = chroot.release(id);
        let manifest =
            std::fs::read(dir.join(tiffin::core::release::MANIFEST_FILE)).unwrap_or_default();
        if &ReleaseId::of_bytes(&manifest) != id {
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
        Ok(())
    }
}

/// An ssh of its own (not through the master), with `identity`.
fn own_connection(
    what: impl Into<String>,
    identity: &str,
    extra: &[&str],
    denied: Denied,
) -> Attempt {
    let mut argv = vec!["ssh".to_owned()];
    argv.extend(ssh_options(identity));
    argv.extend(extra.iter().map(|s| s.to_string()));
    Attempt {
        what: what.into(),
        argv,
        stdin: None,
        denied,
    }
}

fn describe(argv: &[String], stdin: Option<&str>) -> String {
    let words = exec::shell_words(argv);
    match stdin {
        Some(batch) => format!("{words} <<< {:?}", batch.trim_end()),
        None => words,
    }
}
