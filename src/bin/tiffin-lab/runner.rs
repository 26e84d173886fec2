//! Runs scenarios one after the other, each in a fresh lab: progress lines while it runs, the failing step in full when one fails, a summary at the end.

use std::io::Write;
use std::time::{Duration, Instant};

use super::LabError;
use super::interrupt::Interrupt;
use super::scenario::{MachineName, PlacedStep, Scenario, Step};
use super::steps;
use super::world::{Failure, Run, StepError, World};

/// How a scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Interrupted,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Outcome::Passed => "PASS",
            Outcome::Failed => "FAIL",
            Outcome::Interrupted => "INTERRUPTED",
        }
    }
}

/// What happens to a scenario's lab once the scenario ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Afterwards {
    #[default]
    TearDown,
    /// Leave up the first failing (or interrupted) scenario's lab, else the last one's, and stop there.
    Keep,
}

/// What a passing scenario shows after its steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Epilogue {
    #[default]
    Nothing,
    /// `tiffin status` on the server, then what just happened (the demo).
    StatusAndRecap,
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub afterwards: Afterwards,
    pub epilogue: Epilogue,
}

/// Where a scenario stands in the run: with `--keep`, the last one's lab stays up even when it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Last,
    NotLast,
}

/// What became of a scenario's lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lab {
    Kept,
    TornDown,
}

/// What a run did, per scenario.
#[derive(Debug, Default)]
pub struct Summary {
    pub results: Vec<(String, Outcome)>,
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

    /// The closing line: how many passed and failed, and how many did not run.
    fn line(&self, scenarios: usize, elapsed: Duration) -> String {
        let passed = self
            .results
            .iter()
            .filter(|(_, o)| *o == Outcome::Passed)
            .count();
        let failed = self.failed();
        let mut line = if self.interrupted() {
            format!(
                "\ninterrupted; {passed} passed, {} failed before",
                failed.len()
            )
        } else if failed.is_empty() && passed == scenarios {
            format!("\n{passed} passed")
        } else {
            format!("\n{passed} passed, {} failed", failed.len())
        };
        if !failed.is_empty() {
            line.push_str(&format!(" ({})", failed.join(", ")));
        }
        let not_run = scenarios - self.results.len();
        if not_run > 0 {
            line.push_str(&format!(", {not_run} not run"));
        }
        format!("{line} in {}\n", secs(elapsed))
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
        let position = if i + 1 == scenarios.len() {
            Position::Last
        } else {
            Position::NotLast
        };
        let (outcome, lab) = run_one(&mut run, scenario, opts, position);
        summary.results.push((scenario.name.clone(), outcome));
        if outcome == Outcome::Interrupted || lab == Lab::Kept {
            break;
        }
    }
    for p in run.finish() {
        say(&format!("tiffin-lab: teardown: {p}\n"));
    }
    say(&summary.line(scenarios.len(), started.elapsed()));
    Ok(summary)
}

/// Runs one scenario in a lab of its own: set up, run the steps, report, tear down (or keep).
fn run_one(
    run: &mut Run,
    scenario: &Scenario,
    opts: &Options,
    position: Position,
) -> (Outcome, Lab) {
    let started = Instant::now();
    say(&format!(
        "\n== {} ({})\n   {}\n",
        scenario.name,
        scenario.path.display(),
        scenario.proves
    ));
    let mut world = World::new(run, scenario);
    let mut outcome = set_up(&mut world, scenario, started);
    if outcome == Outcome::Passed {
        outcome = run_steps(&mut world, scenario);
    }
    if outcome == Outcome::Passed && opts.epilogue == Epilogue::StatusAndRecap {
        show_status(&mut world);
    }
    let keep = opts.afterwards == Afterwards::Keep
        && (position == Position::Last || outcome != Outcome::Passed);
    let lab = if keep {
        keep_lab(&mut world, scenario);
        Lab::Kept
    } else {
        outcome = tear_down(&mut world, outcome);
        Lab::TornDown
    };
    drop(world);
    say(&format!(
        "   {} {} ({})\n",
        outcome.word(),
        scenario.name,
        secs(started.elapsed())
    ));
    (outcome, lab)
}

/// Brings the lab up and says which machines it has.
fn set_up(world: &mut World, scenario: &Scenario, started: Instant) -> Outcome {
    say("   lab up: ");
    match world.build(scenario) {
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
    }
}

/// The steps in order, up to the first that does not pass.
fn run_steps(world: &mut World, scenario: &Scenario) -> Outcome {
    for (i, placed) in scenario.steps.iter().enumerate() {
        let outcome = run_step(world, scenario, i + 1, placed);
        if outcome != Outcome::Passed {
            return outcome;
        }
    }
    Outcome::Passed
}

fn run_step(world: &mut World, scenario: &Scenario, n: usize, placed: &PlacedStep) -> Outcome {
    let total = scenario.steps.len();
    let t = Instant::now();
    say(&format!(
        "   [{n:>2}/{total}] {} ... ",
        placed.step.describe(scenario.clients())
    ));
    let mut result = steps::run(world, n, &placed.step);
    if result.is_ok() && n == total && !world.background.is_empty() {
        // Background runs nobody waited for are checked at the end.
        result = steps::wait_background(world);
    }
    match result {
        Ok(()) => {
            say(&format!("ok ({})\n", secs(t.elapsed())));
            Outcome::Passed
        }
        Err(StepError::Interrupted) => {
            say("interrupted\n");
            Outcome::Interrupted
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
            Outcome::Failed
        }
    }
}

fn show_status(world: &mut World) {
    match world.exec(&MachineName::server(), &["tiffin", "status"], None) {
        Ok(done) => say(&format!("\n$ tiffin status\n{}\n", done.output.trim_end())),
        Err(_) => say("\n(tiffin status could not run)\n"),
    }
    say(DEMO_RECAP);
}

fn keep_lab(world: &mut World, scenario: &Scenario) {
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
        // Dropping the world then tears the lab down.
        Err(_) => say("   could not record the kept lab; tearing it down\n"),
    }
}

/// Tears the lab down; a scenario that passed fails when its lab does not go away cleanly.
fn tear_down(world: &mut World, outcome: Outcome) -> Outcome {
    if outcome == Outcome::Interrupted {
        say(
            "   interrupted: tearing the lab down (interrupt again to abort; then `tiffin-lab down` cleans up)\n",
        );
    }
    let problems = world.down();
    if problems.is_empty() {
        return outcome;
    }
    say("   teardown problems:\n");
    for p in &problems {
        say(&format!("     {p}\n"));
    }
    if outcome == Outcome::Passed {
        Outcome::Failed
    } else {
        outcome
    }
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
