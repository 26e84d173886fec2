//! What each scenario step does in the lab, and how it decides that the step passed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use tiffin::core::names::{HostName, RelPath};
use tiffin::core::release::Mode;
use tiffin::core::report::{PullResult, Report};
use tiffin::server::status::State;

use super::access;
use super::exec::{self, Finished};
use super::scenario::{MachineName, OneOrMany, ProvisionExpect, PullExpect, Step};
use super::world::{
    Background, CLIENT_CONFIG, Failure, StepError, StepResult, World, exec_failure, write_host_file,
};

/// How long `wait` lets background commands run.
pub const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the nixos-rebuild stand-in keeps its records on a client.
pub const STANDIN_STATE: &str = "/var/lib/fake-nix";

/// Runs one step.
pub fn run(world: &mut World, number: usize, step: &Step) -> StepResult {
    match step {
        Step::Provision { expect } => provision(world, *expect),
        Step::Publish { hosts } => publish(world, hosts),
        Step::Edit {
            host,
            path,
            content,
            remove,
            mode,
        } => edit(
            world,
            host,
            path,
            Change::of(*remove, content.as_deref(), *mode),
        ),
        Step::Pull { on, expect, args } => pull(world, on.as_ref(), *expect, args),
        Step::ExpectFile {
            on,
            path,
            content,
            mode,
            absent,
        } => expect_file(
            world,
            on,
            path,
            FileExpect::of(*absent, content.as_deref(), *mode),
        ),
        Step::ExpectDenied { on, access, other } => {
            access::expect_denied(world, on, *access, other.as_ref())
        }
        Step::ExpectStatus { hosts } => expect_status(world, hosts),
        Step::NetDown { on } => link(world, on, LinkState::Down),
        Step::NetUp { on } => link(world, on, LinkState::Up),
        Step::StopServer => world.stop_sshd(),
        Step::StartServer => world.start_sshd(),
        Step::Run {
            on,
            command,
            expect_exit,
            expect_output,
            background,
        } => {
            let check = RunCheck {
                on,
                command,
                expect_exit: *expect_exit,
                expect_output: expect_output.as_deref(),
            };
            if *background {
                start_background(world, number, &check)
            } else {
                let done = world.exec(on, &["sh", "-c", command], None)?;
                check.judge(&done)
            }
        }
        Step::Wait => wait_background(world),
        Step::WatchStart { on } => super::watch_steps::start(world, number, on.as_ref()),
        Step::WatchStop { on } => super::watch_steps::stop(world, on.as_ref()),
        Step::WaitUntil {
            on,
            command,
            within,
        } => super::watch_steps::wait_until(world, on, command, *within),
    }
}

fn publish(world: &mut World, hosts: &[HostName]) -> StepResult {
    let mut argv = vec!["tiffin", "publish"];
    argv.extend(hosts.iter().map(HostName::as_str));
    expect_success(
        world,
        &MachineName::server(),
        &argv,
        "tiffin publish failed",
    )
}

/// What an `edit` step does to its file.
enum Change<'a> {
    Write {
        content: &'a str,
        mode: Option<Mode>,
    },
    Remove,
}

impl<'a> Change<'a> {
    /// From the step's keys; the scenario check made sure `content` is there unless `remove` is.
    fn of(remove: bool, content: Option<&'a str>, mode: Option<Mode>) -> Change<'a> {
        if remove {
            Change::Remove
        } else {
            Change::Write {
                content: content.unwrap_or_default(),
                mode,
            }
        }
    }
}

/// Edits the fleet repository from outside, as its owner would.
fn edit(world: &World, host: &HostName, path: &RelPath, change: Change) -> StepResult {
    let target = path.under(&world.fleet_dir.join("hosts").join(host.as_str()));
    match change {
        Change::Remove => fs::remove_file(&target).map_err(|e| {
            Failure::new(format!("removing hosts/{host}/{path} from the fleet: {e}")).into()
        }),
        Change::Write { content, mode } => write_host_file(&target, content, mode.map(Mode::bits)),
    }
}

/// A `run` step's command and what it must end with.
struct RunCheck<'a> {
    on: &'a MachineName,
    command: &'a str,
    expect_exit: i32,
    expect_output: Option<&'a str>,
}

impl RunCheck<'_> {
    fn judge(&self, done: &Finished) -> StepResult {
        let code = done.code();
        let expect_exit = self.expect_exit;
        let fail = |problem: String| -> StepError {
            Failure {
                problem,
                machine: Some(self.on.to_string()),
                command: Some(self.command.trim().to_owned()),
                exit: Some(format!("{code} (expected {expect_exit})")),
                output: Some(done.output.clone()),
            }
            .into()
        };
        if code != expect_exit {
            return Err(fail(format!("exit status {code}, expected {expect_exit}")));
        }
        if let Some(want) = self.expect_output
            && !done.output.contains(want)
        {
            return Err(fail(format!("the output does not contain {want:?}")));
        }
        Ok(())
    }
}

/// Starts a `run` step with `background = true`; `wait` (or the scenario's end) judges it.
fn start_background(world: &mut World, number: usize, check: &RunCheck) -> StepResult {
    let running = world.spawn(check.on, &["sh", "-c", check.command], None)?;
    world.background.push(Background {
        step: number,
        on: check.on.clone(),
        command: check.command.to_owned(),
        expect_exit: check.expect_exit,
        expect_output: check.expect_output.map(str::to_owned),
        running,
    });
    Ok(())
}

/// Waits for every background command and checks it; the first failure is reported.
pub fn wait_background(world: &mut World) -> StepResult {
    let (watchers, jobs): (Vec<Background>, Vec<Background>) = world
        .background
        .drain(..)
        .partition(super::watch_steps::is_watcher);
    world.background = watchers;
    let interrupt = world.interrupt();
    let mut first_failure = None;
    for job in jobs {
        let check = RunCheck {
            on: &job.on,
            command: &job.command,
            expect_exit: job.expect_exit,
            expect_output: job.expect_output.as_deref(),
        };
        let result = job
            .running
            .wait(BACKGROUND_TIMEOUT, &interrupt)
            .map_err(|e| exec_failure(e, job.on.as_str(), &job.command))
            .and_then(|done| check.judge(&done));
        match result {
            Ok(()) => {}
            Err(StepError::Interrupted) => return Err(StepError::Interrupted),
            Err(StepError::Failed(mut f)) if first_failure.is_none() => {
                f.problem = format!("background run of step {}: {}", job.step, f.problem);
                first_failure = Some(StepError::Failed(f));
            }
            // Only the first failure is reported; the rest are still waited for.
            Err(_) => {}
        }
    }
    first_failure.map_or(Ok(()), Err)
}

fn expect_success(world: &mut World, on: &MachineName, argv: &[&str], problem: &str) -> StepResult {
    let mark = world.sshd_mark();
    let done = world.exec(on, argv, None)?;
    if !done.status.success() {
        return Err(Failure {
            problem: problem.to_owned(),
            machine: Some(on.to_string()),
            command: Some(exec::shell_words(
                &argv.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )),
            exit: Some(format!("{} (expected 0)", done.code())),
            output: Some(done.output),
        }
        .into());
    }
    world.settle_sshd(mark)
}

// ---- provision ------------------------------------------------------------------------------

fn provision(world: &mut World, expect: ProvisionExpect) -> StepResult {
    let before = server_snapshot(world)?;
    expect_success(
        world,
        &MachineName::server(),
        &["tiffin", "provision"],
        "tiffin provision failed",
    )?;
    let after = server_snapshot(world)?;
    let changed = diff(&before, &after);
    match (expect, changed.is_empty()) {
        (ProvisionExpect::Changed, true) => Err(Failure::new(
            "expected provision to change the server, but its accounts, keys, sshd drop-in and chroots are exactly as before",
        )
        .on("server")
        .into()),
        (ProvisionExpect::NothingToDo, false) => Err(Failure {
            problem: format!(
                "expected nothing to do, but provision changed {} path(s) on the server",
                changed.len()
            ),
            machine: Some("server".into()),
            command: Some("tiffin provision".into()),
            exit: None,
            output: Some(changed.join("\n")),
        }
        .into()),
        _ => Ok(()),
    }
}

/// Everything provisioning owns on the server: accounts, keys, the drop-in, the chroots
/// (type, mode, owner, content), without times.
fn server_snapshot(world: &World) -> StepResult<BTreeMap<String, String>> {
    let config = world.fleet_config()?;
    let server = world.server();
    let mut out = BTreeMap::new();
    let mut roots: Vec<String> = ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    roots.push(config.server.sshd_dropin.display().to_string());
    roots.push(config.server.authorized_keys_dir.display().to_string());
    roots.push(config.server.chroot_root.display().to_string());
    for inside in roots {
        walk(&server.path(&inside), &inside, &mut out);
    }
    Ok(out)
}

fn walk(path: &Path, shown: &str, out: &mut BTreeMap<String, String>) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    let kind = if meta.is_dir() {
        "dir".to_owned()
    } else if meta.file_type().is_symlink() {
        format!(
            "link to {}",
            fs::read_link(path).unwrap_or_default().display()
        )
    } else if meta.is_file() {
        let sha =
            tiffin::core::hash::sha256_file(path).map_or_else(|e| e.to_string(), |(sha, _)| sha);
        format!("file sha256 {sha}")
    } else {
        "other".to_owned()
    };
    out.insert(
        shown.to_owned(),
        format!(
            "{kind} mode {} owner {}:{}",
            Mode::from_stat(meta.mode()),
            meta.uid(),
            meta.gid()
        ),
    );
    if meta.is_dir() {
        let mut names: Vec<_> = fs::read_dir(path)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        names.sort();
        for n in names {
            let name = n.to_string_lossy();
            walk(&path.join(&n), &format!("{shown}/{name}"), out);
        }
    }
}

fn diff(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (path, was) in before {
        match after.get(path) {
            None => out.push(format!("removed {path}")),
            Some(now) if now != was => out.push(format!("changed {path}: {was} -> {now}")),
            Some(_) => {}
        }
    }
    for path in after.keys() {
        if !before.contains_key(path) {
            out.push(format!("added {path}"));
        }
    }
    out
}

// ---- pull -----------------------------------------------------------------------------------

/// What "nothing applied" compares on a client: the current release link, the system link, and
/// the stand-in's record of rebuilds.
fn applied_state(world: &World, on: &MachineName) -> Vec<String> {
    let m = world.machine(on);
    let link = |p: &str| match m.lstat_inside(p) {
        Ok((_, Some(target))) => target.display().to_string(),
        Ok((_, None)) => "(not a link)".into(),
        Err(_) => "(none)".into(),
    };
    vec![
        format!(
            "/var/lib/tiffin/current -> {}",
            link("/var/lib/tiffin/current")
        ),
        format!("/run/current-system -> {}", link("/run/current-system")),
        format!(
            "{STANDIN_STATE}/calls.log: {} line(s)",
            m.read_inside(&format!("{STANDIN_STATE}/calls.log"))
                .map(|t| t.iter().filter(|b| **b == b'\n').count())
                .unwrap_or(0)
        ),
    ]
}

fn pull(
    world: &mut World,
    on: Option<&OneOrMany>,
    expect: PullExpect,
    args: &[String],
) -> StepResult {
    let machines = on.map_or_else(|| world.clients.clone(), OneOrMany::to_vec);
    let mut argv = vec!["tiffin", "pull", "--config", CLIENT_CONFIG];
    argv.extend(args.iter().map(String::as_str));
    let command = exec::shell_words(&argv.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let before: Vec<Vec<String>> = machines.iter().map(|m| applied_state(world, m)).collect();
    // All clients pull at once, as their timers would.
    let mut running = Vec::new();
    for m in &machines {
        running.push(world.spawn(m, &argv, None)?);
    }
    let interrupt = world.interrupt();
    let mut results = Vec::new();
    for (m, r) in machines.iter().zip(running) {
        results.push(
            r.wait(super::world::COMMAND_TIMEOUT, &interrupt)
                .map_err(|e| exec_failure(e, m.as_str(), &command)),
        );
    }
    let mut failures = Vec::new();
    for ((m, result), before) in machines.iter().zip(results).zip(before) {
        let done = match result {
            Ok(d) => d,
            Err(StepError::Interrupted) => return Err(StepError::Interrupted),
            Err(StepError::Failed(f)) => {
                failures.push(*f);
                continue;
            }
        };
        if let Err(problem) = judge_pull(world, m, expect, &done, &before) {
            failures.push(Failure {
                problem,
                machine: Some(m.to_string()),
                command: Some(command.clone()),
                exit: Some(done.code().to_string()),
                output: Some(done.output),
            });
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    let others: Vec<String> = failures
        .iter()
        .skip(1)
        .filter_map(|f| f.machine.clone())
        .collect();
    let mut first = failures.remove(0);
    if !others.is_empty() {
        first.problem = format!("{} (also failed on: {})", first.problem, others.join(", "));
    }
    Err(first.into())
}

fn judge_pull(
    world: &World,
    on: &MachineName,
    expect: PullExpect,
    done: &Finished,
    before: &[String],
) -> Result<(), String> {
    let code = done.code();
    let report = || -> Result<Report, String> {
        let chroot = world
            .chroot_of(on.as_str())
            .map_err(|_| "no chroot".to_string())?;
        let path = chroot.reports().join(tiffin::core::report::STATUS_FILE);
        let text = fs::read_to_string(&path).map_err(|e| {
            format!("the server has no report from {on} (reports/status.toml: {e})")
        })?;
        Report::parse(&text).map_err(|e| format!("its report does not parse: {e}"))
    };
    let want_result = |want: PullResult| -> Result<(), String> {
        let r = report()?;
        if r.result == want {
            Ok(())
        } else {
            Err(format!(
                "its report says result = {:?}, expected {:?}{}",
                r.result.as_str(),
                want.as_str(),
                r.error
                    .map(|e| format!(" (error: {e})"))
                    .unwrap_or_default()
            ))
        }
    };
    match expect {
        PullExpect::Ok | PullExpect::Unchanged if code != 0 => Err(format!(
            "exit status {code}, expected 0 ({})",
            expect.as_str()
        )),
        PullExpect::Ok => want_result(PullResult::Ok),
        PullExpect::Unchanged => want_result(PullResult::Unchanged),
        PullExpect::Failed if code != 1 => {
            Err(format!("exit status {code}, expected 1 (a failed apply)"))
        }
        PullExpect::Failed => want_result(PullResult::Failed),
        PullExpect::Refused if code == 0 => {
            Err("exit status 0, expected the pull to be refused (non-zero)".into())
        }
        PullExpect::Refused => {
            let after = applied_state(world, on);
            if after == before {
                Ok(())
            } else {
                Err(format!(
                    "refused, but something was applied: before [{}], after [{}]",
                    before.join("; "),
                    after.join("; ")
                ))
            }
        }
    }
}

// ---- expectations ---------------------------------------------------------------------------

/// What an `expect_file` step wants of its path.
enum FileExpect<'a> {
    Absent,
    /// A regular file (not a symlink), with this content and mode when they are given.
    Present {
        content: Option<&'a str>,
        mode: Option<Mode>,
    },
}

impl<'a> FileExpect<'a> {
    fn of(absent: bool, content: Option<&'a str>, mode: Option<Mode>) -> FileExpect<'a> {
        if absent {
            FileExpect::Absent
        } else {
            FileExpect::Present { content, mode }
        }
    }
}

fn expect_file(world: &World, on: &MachineName, path: &str, expect: FileExpect) -> StepResult {
    let machine = world.machine(on);
    let fail = |problem: String| -> StepError { Failure::new(problem).on(on.as_str()).into() };
    let found = match machine.lstat_inside(path) {
        Ok(found) => Some(found),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(fail(format!("cannot look at {path} on {on}: {e}"))),
    };
    let (content, mode, meta, link) = match (expect, found) {
        (FileExpect::Absent, None) => return Ok(()),
        (FileExpect::Absent, Some(_)) => {
            return Err(fail(format!("{path} exists on {on}, expected it absent")));
        }
        (FileExpect::Present { .. }, None) => {
            return Err(fail(format!("{path} does not exist on {on}")));
        }
        (FileExpect::Present { content, mode }, Some((meta, link))) => (content, mode, meta, link),
    };
    if let Some(target) = link {
        return Err(fail(format!(
            "{path} on {on} is a symlink to {}, expected a regular file",
            target.display()
        )));
    }
    if !meta.is_file() {
        return Err(fail(format!("{path} on {on} is not a regular file")));
    }
    if let Some(want) = mode {
        let found = Mode::from_stat(meta.permissions().mode());
        if found != want {
            return Err(fail(format!(
                "{path} on {on} has mode {found}, expected {want}"
            )));
        }
    }
    match content {
        Some(want) => expect_content(world, on, path, want),
        None => Ok(()),
    }
}

fn expect_content(world: &World, on: &MachineName, path: &str, want: &str) -> StepResult {
    let found = world
        .machine(on)
        .read_inside(path)
        .map_err(|e| Failure::new(format!("cannot read {path} on {on}: {e}")).on(on.as_str()))?;
    if found == want.as_bytes() {
        return Ok(());
    }
    Err(Failure {
        problem: format!("{path} on {on} has other content than expected"),
        machine: Some(on.to_string()),
        command: None,
        exit: None,
        output: Some(format!(
            "expected: {:?}\nfound:    {:?}",
            clip(want),
            clip(&String::from_utf8_lossy(&found))
        )),
    }
    .into())
}

fn clip(s: &str) -> String {
    const MAX: usize = 2000;
    if s.len() <= MAX {
        s.to_owned()
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

fn expect_status(world: &mut World, hosts: &BTreeMap<HostName, State>) -> StepResult {
    #[derive(serde::Deserialize)]
    struct Doc {
        hosts: Vec<Row>,
    }
    #[derive(serde::Deserialize)]
    struct Row {
        host: String,
        state: State,
    }
    let server = MachineName::server();
    // stdout to a file: warnings on stderr must not garble the JSON.
    let json_path = "/tmp/tiffin-lab-status.json";
    let script = format!("tiffin status --json > {json_path}");
    let done = world.exec(&server, &["sh", "-c", &script], None)?;
    let failure = |problem: String, done: &Finished| -> StepError {
        Failure {
            problem,
            machine: Some("server".into()),
            command: Some("tiffin status --json".into()),
            exit: Some(done.code().to_string()),
            output: Some(done.output.clone()),
        }
        .into()
    };
    // Exit 3 means "some host is failed or stale", which a scenario may well expect.
    if !matches!(done.code(), 0 | 3) {
        return Err(failure("tiffin status failed".into(), &done));
    }
    let json = world.read_file(&server, json_path).unwrap_or_default();
    let doc: Doc = serde_json::from_str(&json)
        .map_err(|e| failure(format!("tiffin status --json did not parse: {e}"), &done))?;
    let found: BTreeMap<String, State> = doc.hosts.into_iter().map(|r| (r.host, r.state)).collect();
    let wrong: Vec<String> = hosts
        .iter()
        .filter_map(|(h, want)| match found.get(h.as_str()) {
            Some(s) if s == want => None,
            Some(s) => Some(format!("{h} is {}, expected {}", s.as_str(), want.as_str())),
            None => Some(format!("{h} is missing, expected {}", want.as_str())),
        })
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(failure(wrong.join("; "), &done))
    }
}

/// A machine's cable at the lab's bridge.
#[derive(Debug, Clone, Copy)]
enum LinkState {
    Up,
    Down,
}

impl LinkState {
    fn as_str(self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

fn link(world: &mut World, on: &MachineName, state: LinkState) -> StepResult {
    let bridge = world.bridge_ns.clone();
    world
        .host(&[
            "ip",
            "-n",
            &bridge,
            "link",
            "set",
            on.as_str(),
            state.as_str(),
        ])
        .map(|_| ())
}
