//! The watch steps: `watch_start` and `watch_stop` (one `tiffin pull --watch` per client) and `wait_until`.

use std::time::{Duration, Instant};

use super::scenario::{MachineName, OneOrMany};
use super::world::{Background, Failure, StepResult, World};

/// Where each client's watcher leaves its pid, so `watch_stop` can signal it from inside the machine.
const WATCH_PID: &str = "/var/tmp/tiffin-watch.pid";
/// The shell waits for the watcher, so the step's exit status is the watcher's own. Its
/// output goes to `/var/tmp/tiffin-watch.log` inside the client, where steps can read it.
const WATCH_COMMAND: &str = "rm -f /var/tmp/tiffin-watch.pid; tiffin pull --watch --config /etc/tiffin/client.toml >>/var/tmp/tiffin-watch.log 2>&1 & echo $! > /var/tmp/tiffin-watch.pid; wait $!";
/// How long a watcher may take to exit after SIGTERM (it finishes an apply first).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Between two tries of a `wait_until` command.
const RETRY: Duration = Duration::from_millis(200);

fn machines(world: &World, on: Option<&OneOrMany>) -> Vec<MachineName> {
    on.map_or_else(|| world.clients.clone(), OneOrMany::to_vec)
}

/// A watcher runs until `watch_stop`: `wait` leaves it alone.
pub fn is_watcher(b: &Background) -> bool {
    b.command == WATCH_COMMAND
}

fn watcher_of(world: &World, m: &MachineName) -> Option<usize> {
    world
        .background
        .iter()
        .position(|b| &b.on == m && b.command == WATCH_COMMAND)
}

/// Starts a watcher on each machine; it runs until `watch_stop` (or the scenario's end).
pub fn start(world: &mut World, number: usize, on: Option<&OneOrMany>) -> StepResult {
    for m in machines(world, on) {
        if watcher_of(world, &m).is_some() {
            return Err(
                Failure::new("a watcher already runs here (watch_stop it first)")
                    .on(m.as_str())
                    .into(),
            );
        }
        let running = world.spawn(&m, &["sh", "-c", WATCH_COMMAND], None)?;
        world.background.push(Background {
            step: number,
            on: m,
            command: WATCH_COMMAND.to_owned(),
            expect_exit: 0,
            expect_output: None,
            running,
        });
    }
    Ok(())
}

/// SIGTERMs each machine's watcher and checks that it exits 0.
pub fn stop(world: &mut World, on: Option<&OneOrMany>) -> StepResult {
    for m in machines(world, on) {
        let Some(i) = watcher_of(world, &m) else {
            return Err(Failure::new("no watcher runs here: watch_start one first")
                .on(m.as_str())
                .into());
        };
        let job = world.background.remove(i);
        let signalled = std::time::Instant::now();
        let signal = format!("kill -TERM $(cat {WATCH_PID})");
        let sent = world.exec(&m, &["sh", "-c", &signal], None)?;
        if !sent.status.success() {
            return Err(Failure {
                problem: "could not signal the watcher".into(),
                machine: Some(m.to_string()),
                command: Some(signal),
                exit: Some(sent.code().to_string()),
                output: Some(sent.output),
            }
            .into());
        }
        let interrupt = world.interrupt();
        let done = job
            .running
            // From the SIGTERM: a watcher started minutes ago has its whole STOP_TIMEOUT.
            .wait_since(signalled, STOP_TIMEOUT, &interrupt)
            .map_err(|e| super::world::exec_failure(e, m.as_str(), WATCH_COMMAND))?;
        if done.code() != 0 {
            return Err(Failure {
                problem: "the watcher did not exit cleanly on SIGTERM".into(),
                machine: Some(m.to_string()),
                command: Some(WATCH_COMMAND.into()),
                exit: Some(format!("{} (expected 0)", done.code())),
                output: Some(done.output),
            }
            .into());
        }
    }
    Ok(())
}

/// Runs `command` until it exits 0; fails with its last output after `within` seconds.
pub fn wait_until(world: &mut World, on: &MachineName, command: &str, within: u64) -> StepResult {
    let deadline = Instant::now() + Duration::from_secs(within);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let done = world.exec_with(on, &["sh", "-c", command], None, left.max(RETRY))?;
        if done.status.success() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure {
                problem: format!("the condition did not hold within {within} s"),
                machine: Some(on.to_string()),
                command: Some(command.to_owned()),
                exit: Some(format!("{} (expected 0)", done.code())),
                output: Some(done.output),
            }
            .into());
        }
        std::thread::sleep(RETRY);
    }
}
