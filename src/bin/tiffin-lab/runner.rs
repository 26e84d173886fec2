//! Runs scenarios one after the other, each in a fresh lab: progress lines while it runs, the failing step in full when one fails, a summary at the end.

use std::io::Write;
use std::time::{Duration, Instant};

use super::LabError;
use super::interrupt::Interrupt;
use super::scenario::{MachineName, Scenario, Step};
use super::steps;
use super::world::{Failure, Run, StepError, World};

/// How a scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Interrupted,
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Leave the last lab (or the first failing one) up.
    pub keep: bool,
    /// Print `tiffin status` after the steps (the demo does).
    pub show_status: bool,
}

/// What a run did, per scenario.
#[derive(Debug, Default)]
pub struct Summary {
    pub results: Vec<(String, Outcome)>,
    pub elapsed: Duration,
    pub kept: bool,
}

impl Summary {
    pub fn failed(&self) -> Vec<&str> {
        self.results
            .iter()
            .filter(|(_, o)| *o == Outcome::Failed)
            .map(|(n, _)| n.as_str())
            .collect()
    }
    pub fn interrupted(&self) -> bool {
        self.results.iter().any(|(_, o)| *o == Outcome::Interrupted)
    }
}

/// Progress goes to stdout, flushed at once so a reader (or a test) sees a step start.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

pub fn run_scenarios(
    scenarios: &[Scenario],
    opts: &Options,
    interrupt: Interrupt,
) -> Result<Summary, LabError> {
    let started = Instant::now();
    let mut run = Run::start(interrupt)?;
    say(&format!(
        "tiffin-lab: run {}, {} scenario(s); lab files in {}\n",
        run.id,
        scenarios.len(),
        run.dir.display()
    ));
    let mut summary = Summary::default();
    for (i, scenario) in scenarios.iter().enumerate() {
        let last = i + 1 == scenarios.len();
        let (outcome, kept) = run_one(&mut run, scenario, opts, last);
        summary.results.push((scenario.name.clone(), outcome));
        summary.kept |= kept;
        if outcome == Outcome::Interrupted || kept {
            break;
        }
    }
    for p in run.finish() {
        say(&format!("tiffin-lab: teardown: {p}\n"));
    }
    summary.elapsed = started.elapsed();
    let passed = summary
        .results
        .iter()
        .filter(|(_, o)| *o == Outcome::Passed)
        .count();
    let failed = summary.failed();
    let mut line = format!("\n{passed} passed, {} failed", failed.len());
    if failed.is_empty() && passed == scenarios.len() {
        line = format!("\n{passed} passed");
    }
    if summary.interrupted() {
        line = format!(
            "\ninterrupted; {passed} passed, {} failed before",
            failed.len()
        );
    }
    if !failed.is_empty() {
        line.push_str(&format!(" ({})", failed.join(", ")));
    }
    let not_run = scenarios.len() - summary.results.len();
    if not_run > 0 {
        line.push_str(&format!(", {not_run} not run"));
    }
    say(&format!("{line} in {}\n", secs(summary.elapsed)));
    Ok(summary)
}

/// Runs one scenario in a lab of its own; returns its outcome and whether its lab was kept.
fn run_one(run: &mut Run, scenario: &Scenario, opts: &Options, last: bool) -> (Outcome, bool) {
    let started = Instant::now();
    say(&format!(
        "\n== {} ({})\n   {}\n",
        scenario.name,
        scenario.path.display(),
        scenario.proves
    ));
    let mut world = World::new(run, scenario);
    say("   lab up: ");
    let mut outcome = match world.build(scenario) {
        Ok(()) => {
            let machines: Vec<String> = std::iter::once(MachineName::server())
                .chain(scenario.clients().iter().cloned())
                .map(|m| format!("{m} {}", world.address_of(&m)))
                .collect();
            say(&format!(
                "{} ({})\n",
                machines.join(", "),
                secs(started.elapsed())
            ));
            Outcome::Passed
        }
        Err(StepError::Interrupted) => {
            say("interrupted\n");
            Outcome::Interrupted
        }
        Err(StepError::Failed(f)) => {
            say("FAILED\n");
            say(&render_failure("lab setup failed", &f, None));
            Outcome::Failed
        }
    };
    let total = scenario.steps.len();
    if outcome == Outcome::Passed {
        for (i, placed) in scenario.steps.iter().enumerate() {
            let n = i + 1;
            let t = Instant::now();
            say(&format!(
                "   [{n:>2}/{total}] {} ... ",
                placed.step.describe(scenario.clients())
            ));
            let mut result = steps::run(&mut world, n, &placed.step);
            if result.is_ok() && n == total && !world.background.is_empty() {
                // Background runs nobody waited for are checked at the end.
                result = steps::wait_background(&mut world);
            }
            match result {
                Ok(()) => say(&format!("ok ({})\n", secs(t.elapsed()))),
                Err(StepError::Interrupted) => {
                    say("interrupted\n");
                    outcome = Outcome::Interrupted;
                    break;
                }
                Err(StepError::Failed(f)) => {
                    say(&format!("FAILED ({})\n", secs(t.elapsed())));
                    let title = format!(
                        "step {n} of {total} failed (line {}, {})",
                        placed.line,
                        placed.step.kind()
                    );
                    let sshd_tail = mentions_ssh(&placed.step)
                        .then(|| tail(&super::exec::read_log(&world.sshd_log), 15));
                    say(&render_failure(&title, &f, sshd_tail.as_deref()));
                    outcome = Outcome::Failed;
                    break;
                }
            }
        }
    }
    if outcome == Outcome::Passed && opts.show_status {
        match world.exec(&MachineName::server(), &["tiffin", "status"], None) {
            Ok(done) => say(&format!("\n$ tiffin status\n{}\n", done.output.trim_end())),
            Err(_) => say("\n(tiffin status could not run)\n"),
        }
        say(DEMO_RECAP);
    }
    let keep = opts.keep && outcome != Outcome::Interrupted && (last || outcome == Outcome::Failed);
    let keep = keep || (opts.keep && outcome == Outcome::Interrupted);
    if keep {
        match world.keep() {
            Ok(()) => say(&format!(
                "   lab kept (run {}): enter a machine with `tiffin-lab shell server` (or {}); remove it with `tiffin-lab down`\n",
                world.run.id,
                scenario
                    .clients()
                    .iter()
                    .map(MachineName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(_) => say("   could not record the kept lab; tearing it down\n"),
        }
    } else {
        if outcome == Outcome::Interrupted {
            say(
                "   interrupted: tearing the lab down (interrupt again to abort; then `tiffin-lab down` cleans up)\n",
            );
        }
        let problems = world.down();
        if !problems.is_empty() {
            say("   teardown problems:\n");
            for p in &problems {
                say(&format!("     {p}\n"));
            }
            if outcome == Outcome::Passed {
                outcome = Outcome::Failed;
            }
        }
    }
    drop(world);
    let word = match outcome {
        Outcome::Passed => "PASS",
        Outcome::Failed => "FAIL",
        Outcome::Interrupted => "INTERRUPTED",
    };
    say(&format!(
        "   {word} {} ({})\n",
        scenario.name,
        secs(started.elapsed())
    ));
    (outcome, keep)
}

/// What the demo showed, for someone who just ran it.
const DEMO_RECAP: &str = "
What happened: `tiffin provision` gave each client an account and an SFTP chroot on the
server's real sshd; `tiffin publish` put each client's configuration there as a release;
each client's `tiffin pull` fetched its own release with its own key, verified it, deployed
its files and ran nixos-rebuild (here a recording stand-in) and reported back, which is
what `tiffin status` shows. Every machine was a set of namespaces on this machine.
Next: `tiffin-lab run vm-scenarios/` (every scenario), or `tiffin-lab demo --keep` and
`tiffin-lab shell client1` to look around (docs/lab.md).
";

/// Steps whose failures are often explained by what sshd logged.
fn mentions_ssh(step: &Step) -> bool {
    matches!(
        step,
        Step::Provision { .. }
            | Step::Pull { .. }
            | Step::ExpectDenied { .. }
            | Step::StartServer
            | Step::StopServer
    )
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The full account of a failure: what, where, which command, its exit status and output.
pub fn render_failure(title: &str, f: &Failure, sshd_log: Option<&str>) -> String {
    let mut s = format!("\n   {title}: {}\n", f.problem);
    if let Some(m) = &f.machine {
        s.push_str(&format!("     machine: {m}\n"));
    }
    if let Some(c) = &f.command {
        let mut lines = c.lines();
        s.push_str(&format!(
            "     command: {}\n",
            lines.next().unwrap_or_default()
        ));
        for l in lines {
            s.push_str(&format!("              {l}\n"));
        }
    }
    if let Some(e) = &f.exit {
        s.push_str(&format!("     exit:    {e}\n"));
    }
    if let Some(o) = &f.output {
        if o.trim().is_empty() {
            s.push_str("     output:  (none)\n");
        } else {
            s.push_str("     output:\n");
            for l in tail(o, 40).lines() {
                s.push_str(&format!("       | {l}\n"));
            }
        }
    }
    if let Some(log) = sshd_log.filter(|l| !l.trim().is_empty()) {
        s.push_str("     server's sshd log (last lines):\n");
        for l in log.lines() {
            s.push_str(&format!("       | {l}\n"));
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_machine_command_exit_and_output() {
        let f = Failure {
            problem: "exit status 1, expected 0".into(),
            machine: Some("client1".into()),
            command: Some("cat /etc/x".into()),
            exit: Some("1 (expected 0)".into()),
            output: Some("cat: /etc/x: No such file or directory\n".into()),
        };
        let text = render_failure("step 2 of 2 failed (line 9, run)", &f, None);
        assert_eq!(
            text,
            "\n   step 2 of 2 failed (line 9, run): exit status 1, expected 0\n     machine: client1\n     command: cat /etc/x\n     exit:    1 (expected 0)\n     output:\n       | cat: /etc/x: No such file or directory\n\n"
        );
    }
}
