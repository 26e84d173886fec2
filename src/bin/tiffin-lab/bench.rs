//! `tiffin-lab bench`: the pull issue's figures, measured in a lab against the same sshd in the same run.
//!
//! (a) a no-change `tiffin pull` against OpenSSH's `sftp` doing bento's poll (`ls -l` of one
//! file): median wall time over N runs and bytes on the client's interface; (b) the bytes a
//! pull moves when 1 file of a 500-file ~2 MB configuration changes, against the full tree;
//! (c) the client's peak RSS during the full 500-file pull, and (d) pulling one 200 MB file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::LabError;
use super::interrupt::Interrupt;
use super::scenario::{Init, MachineName, Scenario};
use super::steps;
use super::world::{Run, StepError, World};

const SETUP: &str = include_str!("bench.toml");
const MEASURE_TIMEOUT: Duration = Duration::from_secs(900);

/// Shell helpers for the client: bytes on eth0 (rx + tx, frames included) from the namespace's /proc.
const HELPERS: &str = r#"set -eu
cfg=/etc/tiffin/client.toml
bytes() { awk '{gsub(":", " ")} $1 == "eth0" {print $2 + $10}' /proc/net/dev; }
"#;

const FULL_AND_POLLS: &str = r#"
b0=$(bytes)
/usr/bin/time -v -o /tmp/bench.time tiffin pull --config $cfg >/tmp/bench.full 2>&1 || { cat /tmp/bench.full; exit 1; }
b1=$(bytes)
echo full_bytes=$((b1 - b0))
echo peak_rss_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' /tmp/bench.time)
measure() {
    name=$1; shift
    : >/tmp/bench.$name
    b0=$(bytes)
    i=0
    while [ $i -lt $N ]; do
        i=$((i + 1))
        t0=$(date +%s%N)
        "$@" >/tmp/bench.out 2>&1 || { echo "$name poll failed:"; cat /tmp/bench.out; exit 1; }
        t1=$(date +%s%N)
        echo $(((t1 - t0) / 1000)) >>/tmp/bench.$name
    done
    b1=$(bytes)
    echo ${name}_us=$(sort -n /tmp/bench.$name | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2))}')
    echo ${name}_bytes=$(((b1 - b0) / N))
}
measure tiffin tiffin pull --config $cfg
echo "ls -l /CURRENT" >/tmp/bench.batch
measure sftp sftp -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=/etc/tiffin/id_ed25519 -o StrictHostKeyChecking=yes -b /tmp/bench.batch tiffin-client1@192.0.2.1
"#;

const CHANGE_ONE: &str = "head -c 3000 /dev/urandom | base64 -w 76 > $TIFFIN_FLEET/hosts/client1/modules/m7.nix && tiffin publish client1";

const DELTA: &str = r#"
b0=$(bytes)
tiffin pull --config $cfg
b1=$(bytes)
echo delta_bytes=$((b1 - b0))
"#;

const ADD_BIG: &str = "mkdir -p $TIFFIN_FLEET/hosts/client1/files/var/lib && head -c 200M /dev/urandom > $TIFFIN_FLEET/hosts/client1/files/var/lib/big.bin && tiffin publish client1";

// Streamed, so its peak RSS should match the small-file pull's (docs/client.md: Memory).
const BIG: &str = r#"
/usr/bin/time -v -o /tmp/bench.time tiffin pull --config $cfg >/tmp/bench.big 2>&1 || { cat /tmp/bench.big; exit 1; }
echo big_file_rss_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' /tmp/bench.time)
"#;

/// The measured figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub polls: u32,
    pub tiffin_us: f64,
    pub sftp_us: f64,
    pub tiffin_bytes: u64,
    pub sftp_bytes: u64,
    pub full_bytes: u64,
    pub delta_bytes: u64,
    pub peak_rss_kib: u64,
    /// Pulling one 200 MB file.
    pub big_file_rss_kib: u64,
}

impl Figures {
    fn from_lines(polls: u32, text: &str) -> Result<Figures, String> {
        let kv: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.trim().split_once('='))
            .collect();
        let get = |k: &str| -> Result<f64, String> {
            kv.get(k)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .ok_or_else(|| format!("the measurement printed no {k}:\n{text}"))
        };
        Ok(Figures {
            polls,
            tiffin_us: get("tiffin_us")?,
            sftp_us: get("sftp_us")?,
            tiffin_bytes: get("tiffin_bytes")? as u64,
            sftp_bytes: get("sftp_bytes")? as u64,
            full_bytes: get("full_bytes")? as u64,
            delta_bytes: get("delta_bytes")? as u64,
            peak_rss_kib: get("peak_rss_kib")? as u64,
            big_file_rss_kib: get("big_file_rss_kib")? as u64,
        })
    }

    /// The table, then the issue's exact last line.
    pub fn render(&self) -> String {
        let ms = |us: f64| format!("{:.1}", us / 1000.0);
        let mut out = format!(
            "{:<44} {:>12} {:>12}\n",
            "measure", "tiffin pull", "openssh sftp"
        );
        out.push_str(&format!(
            "{:<44} {:>12} {:>12}\n",
            format!("no-change poll, median ms of {}", self.polls),
            ms(self.tiffin_us),
            ms(self.sftp_us)
        ));
        out.push_str(&format!(
            "{:<44} {:>12} {:>12}\n",
            "no-change poll, bytes on eth0 (rx+tx)", self.tiffin_bytes, self.sftp_bytes
        ));
        for (what, value) in [
            ("full 500-file pull, bytes", self.full_bytes),
            ("1-file delta pull, bytes", self.delta_bytes),
            ("full pull, client peak RSS KiB", self.peak_rss_kib),
            (
                "one 200 MB file, client peak RSS KiB",
                self.big_file_rss_kib,
            ),
        ] {
            out.push_str(&format!("{what:<44} {value:>12}\n"));
        }
        out.push_str(&format!(
            "poll_ratio={:.2} poll_bytes={} delta_fraction={:.4} peak_rss_kib={}\n",
            self.tiffin_us / self.sftp_us,
            self.tiffin_bytes,
            self.delta_bytes as f64 / self.full_bytes as f64,
            self.peak_rss_kib
        ));
        out
    }
}

pub(super) fn failed(e: StepError) -> LabError {
    match e {
        StepError::Interrupted => LabError::Interrupted,
        StepError::Failed(f) => {
            LabError::Failed(super::runner::render_failure("the bench failed", &f, None))
        }
    }
}

fn sh(world: &mut World, on: &MachineName, script: &str) -> Result<String, LabError> {
    sh_within(world, on, script, MEASURE_TIMEOUT)
}

/// Runs a shell script on a lab machine; a non-zero exit fails the bench with its output.
pub(super) fn sh_within(
    world: &mut World,
    on: &MachineName,
    script: &str,
    timeout: Duration,
) -> Result<String, LabError> {
    let done = world
        .exec_with(on, &["sh", "-c", script], None, timeout)
        .map_err(failed)?;
    if !done.status.success() {
        return Err(LabError::Failed(format!(
            "the bench failed on {on}: exit {}\n{}",
            done.code(),
            done.output
        )));
    }
    Ok(done.output)
}

/// What every bench's lab is built with: the interrupt flag, and the machines' PID 1
/// (`--init`: the figures are measured on the lab's own init or on the real systemd).
pub struct Lab {
    pub interrupt: Interrupt,
    pub init: Init,
}

/// Builds a lab from `setup`, runs `measure` in it and tears it down whatever happened;
/// `banner` (given the run) goes to stderr first. Returns what `measure` rendered.
pub(super) fn in_lab(
    name: &str,
    setup: &str,
    lab: Lab,
    banner: impl FnOnce(&Run) -> String,
    measure: impl FnOnce(&mut World, &Scenario) -> Result<String, LabError>,
) -> Result<String, LabError> {
    let mut scenario = Scenario::parse(Path::new(name), setup)?;
    scenario.lab.init = lab.init;
    let mut run = Run::start(lab.interrupt)?;
    eprintln!("{}", banner(&run));
    let result = {
        let mut world = World::new(&mut run, &scenario);
        let result = measure(&mut world, &scenario);
        for p in world.down() {
            eprintln!("tiffin-lab: teardown: {p}");
        }
        result
    };
    for p in run.finish() {
        eprintln!("tiffin-lab: teardown: {p}");
    }
    result
}

/// Builds the lab, measures, tears it down; prints the table with the figures line last.
pub fn bench(polls: u32, lab: Lab) -> Result<u8, LabError> {
    let banner = |run: &Run| {
        format!(
            "tiffin-lab bench: run {}, {polls} polls each; lab files in {}",
            run.id,
            run.dir.display()
        )
    };
    let out = in_lab("bench", SETUP, lab, banner, |world, scenario| {
        Ok(measure(world, scenario, polls)?.render())
    })?;
    print!("{out}");
    Ok(0)
}

fn measure(world: &mut World, scenario: &Scenario, polls: u32) -> Result<Figures, LabError> {
    world.build(scenario).map_err(failed)?;
    for (i, placed) in scenario.steps.iter().enumerate() {
        eprintln!("   setup: {}", placed.step.describe(scenario.clients()));
        steps::run(world, i + 1, &placed.step).map_err(failed)?;
    }
    let client = scenario.clients()[0].clone();
    eprintln!("   measuring: full pull, then {polls} no-change polls of tiffin and of sftp");
    let mut out = sh(
        world,
        &client,
        &format!("N={polls}\n{HELPERS}{FULL_AND_POLLS}"),
    )?;
    eprintln!("   measuring: 1 changed file, published and pulled");
    sh(world, &MachineName::server(), CHANGE_ONE)?;
    out.push_str(&sh(world, &client, &format!("{HELPERS}{DELTA}"))?);
    eprintln!("   measuring: one 200 MB file, published and pulled");
    sh(world, &MachineName::server(), ADD_BIG)?;
    out.push_str(&sh(world, &client, &format!("{HELPERS}{BIG}"))?);
    Figures::from_lines(polls, &out).map_err(LabError::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_is_the_issue_s() {
        let f = Figures::from_lines(
            20,
            "full_bytes=2000000\npeak_rss_kib=13000\ntiffin_us=100000\ntiffin_bytes=6655\nsftp_us=300000\nsftp_bytes=10824\nnoise\ndelta_bytes=40000\nbig_file_rss_kib=13100\n",
        )
        .unwrap();
        let text = f.render();
        assert_eq!(
            text.lines().last().unwrap(),
            "poll_ratio=0.33 poll_bytes=6655 delta_fraction=0.0200 peak_rss_kib=13000"
        );
        assert!(Figures::from_lines(1, "tiffin_us=1").is_err());
    }
}
