//! `tiffin-lab bench --capacity`: the timer mode's server side, no-change polls per second and sshd CPU per poll against OpenSSH `sftp`.
//!
//! One lab server serves N fleet hosts (`cap1`…`capN`, all on the lab machine `client1`, each
//! with its own account, chroot and state directory). N concurrent workers poll as fast as they
//! can for a fixed time: first `tiffin pull` (no change: read `/CURRENT`, upload a heartbeat),
//! then OpenSSH's `sftp -b` doing bento's check (`ls -l /CURRENT`), alternating in rounds so a
//! load change on the machine hits both alike. Server CPU is read from /proc, not guessed from
//! wall time: the listening sshd reaps every per-connection process (which has reaped its own
//! privilege-separated child), so its utime+stime+cutime+cstime, read once all sessions of a
//! phase have exited, is exactly what the server spent on them. The clients run on the same
//! cores but are never counted.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::LabError;
use super::bench::failed;
use super::procfs;
use super::scenario::{MachineName, Scenario};
use super::steps;
use super::world::{Run, World};

/// The flags of `tiffin-lab bench` that select and shape this bench.
#[derive(Debug, Clone, clap::Args)]
pub struct CapacityArgs {
    /// Measure the timer mode's server side instead: no-change polls per second with --clients
    /// concurrent hosts, and sshd's CPU per `tiffin pull` against per OpenSSH `sftp -b` session
    /// doing bento's check (`ls -l /CURRENT`); server CPU from /proc, clients not counted. Last
    /// line: capacity_polls_per_s=<n> capacity_cpu_ratio=<tiffin/sftp server CPU per poll>
    #[arg(long)]
    pub capacity: bool,
    /// With --capacity: concurrent clients (fleet hosts polling at once). The lab's sshd admits
    /// 64 handshakes at once (MaxStartups 64:30:128; a stock sshd 10), so refusals are rare;
    /// a refused or failed poll is counted as failed.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub clients: u32,
    /// With --capacity: seconds of polling per tool, split over two rounds
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(4..=120))]
    pub seconds: u32,
}

const SETUP: &str =
    "# Proves: nothing by itself: the fleet `tiffin-lab bench --capacity` adds its hosts to.
[lab]
clients = [\"client1\"]
";

/// Rounds per tool: tiffin, sftp, tiffin, sftp.
const ROUNDS: u32 = 2;
const PHASE_SLACK: Duration = Duration::from_secs(120);
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);

/// On the server: one fleet host per worker, all with client1's key.
const ADD_HOSTS: &str = r#"set -eu
cd "$TIFFIN_FLEET"
key=$(sed -n 's/^public_key = "\(.*\)"$/\1/p' hosts/client1/host.toml)
[ -n "$key" ] || { echo "no public_key in hosts/client1/host.toml"; exit 1; }
i=0
while [ $i -lt $N ]; do
    i=$((i + 1))
    tiffin host add cap$i --key "$key" >/dev/null
done
"#;

/// On client1: each worker a host of its own (its own state directory and account), applied once.
const PREPARE: &str = r#"set -eu
i=0
while [ $i -lt $N ]; do
    i=$((i + 1))
    w=/tmp/cap/w$i
    rm -rf $w && mkdir -p $w
    { echo "state_dir = \"$w/state\""; sed 's/^host = .*/host = "cap'$i'"/' /etc/tiffin/client.toml; } >$w/client.toml
    tiffin pull --config $w/client.toml >$w/first.log 2>&1 || { cat $w/first.log; exit 1; }
    echo "ls -l /CURRENT" >$w/batch
done
"#;

/// On client1: N workers poll with one tool until the deadline; prints `<tool>_ok`, `_failed`, `_ms`.
const PHASE: &str = r#"set -u
poll_tiffin() { tiffin pull --config /tmp/cap/w$1/client.toml; }
poll_sftp() {
    sftp -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=/etc/tiffin/id_ed25519 \
        -o StrictHostKeyChecking=yes -b /tmp/cap/w$1/batch tiffin-cap$1@192.0.2.1
}
rm -f /tmp/cap/w*/$T.count
end=$(($(date +%s) + S))
t0=$(date +%s%N)
i=0
while [ $i -lt $N ]; do
    i=$((i + 1))
    (
        ok=0 bad=0 w=/tmp/cap/w$i
        rm -f $w/$T.err
        while [ "$(date +%s)" -lt $end ]; do
            if poll_$T $i >/dev/null 2>$w/last.err; then ok=$((ok + 1)); else bad=$((bad + 1)); cp $w/last.err $w/$T.err; fi
        done
        echo "$ok $bad" >$w/$T.count
    ) &
done
wait
t1=$(date +%s%N)
n=$(ls /tmp/cap/w*/$T.count | wc -l)
[ "$n" -eq "$N" ] || { echo "only $n of $N $T workers reported their counts"; exit 1; }
cat /tmp/cap/w*/$T.count | awk -v t=$T '{ok += $1; bad += $2} END {print t "_ok=" ok; print t "_failed=" bad}'
echo ${T}_ms=$(((t1 - t0) / 1000000))
for e in /tmp/cap/w*/$T.err; do [ -f "$e" ] && { echo "first error:"; head -c 2000 "$e"; break; }; done
exit 0
"#;

/// What one tool did over all its rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    pub wall_ms: u64,
    /// Server CPU (the listening sshd and everything it reaped), milliseconds.
    pub server_cpu_ms: f64,
}

impl Tally {
    /// Adds one phase's printed counters and the server CPU it cost.
    fn add(&mut self, tool: &str, output: &str, server_cpu_ms: f64) -> Result<(), String> {
        let kv: BTreeMap<&str, &str> = output
            .lines()
            .filter_map(|l| l.trim().split_once('='))
            .collect();
        let get = |k: &str| -> Result<u64, String> {
            kv.get(format!("{tool}_{k}").as_str())
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("the {tool} phase printed no {tool}_{k}:\n{output}"))
        };
        self.ok += get("ok")?;
        self.failed += get("failed")?;
        self.wall_ms += get("ms")?;
        self.server_cpu_ms += server_cpu_ms;
        Ok(())
    }

    pub fn per_s(&self) -> f64 {
        self.ok as f64 * 1000.0 / self.wall_ms.max(1) as f64
    }

    /// Server CPU per poll (failed attempts cost it too, so they count).
    pub fn cpu_ms_per_poll(&self) -> f64 {
        self.server_cpu_ms / (self.ok + self.failed).max(1) as f64
    }
}

/// The bench's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    pub clients: u32,
    pub cores: usize,
    pub tiffin: Tally,
    pub sftp: Tally,
}

impl Capacity {
    /// The table, then the issue's exact last line.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{:<52} {:>12} {:>12}\n",
            "measure", "tiffin pull", "openssh sftp"
        );
        let row = |out: &mut String, what: &str, a: String, b: String| {
            out.push_str(&format!("{what:<52} {a:>12} {b:>12}\n"));
        };
        let (t, s) = (&self.tiffin, &self.sftp);
        let what = format!("polls done ({} concurrent clients)", self.clients);
        row(&mut out, &what, t.ok.to_string(), s.ok.to_string());
        row(
            &mut out,
            "polls failed",
            t.failed.to_string(),
            s.failed.to_string(),
        );
        let (tr, sr) = (format!("{:.1}", t.per_s()), format!("{:.1}", s.per_s()));
        row(
            &mut out,
            "polls per second (clients on the same cores)",
            tr,
            sr,
        );
        let (tc, sc) = (
            format!("{:.2}", t.cpu_ms_per_poll()),
            format!("{:.2}", s.cpu_ms_per_poll()),
        );
        row(
            &mut out,
            "server CPU ms per poll (sshd, from /proc)",
            tc,
            sc,
        );
        let bound = |x: &Tally| format!("{:.0}", self.server_bound_per_s(x));
        let what = format!("server-bound polls/s on {} core(s)", self.cores);
        row(&mut out, &what, bound(t), bound(s));
        out.push_str(&format!(
            "capacity_polls_per_s={:.1} capacity_cpu_ratio={:.2}\n",
            t.per_s(),
            self.ratio()
        ));
        out
    }

    pub fn ratio(&self) -> f64 {
        self.tiffin.cpu_ms_per_poll() / self.sftp.cpu_ms_per_poll().max(f64::MIN_POSITIVE)
    }

    /// What the server alone could serve if every core did nothing but sshd's work.
    pub fn server_bound_per_s(&self, t: &Tally) -> f64 {
        self.cores as f64 * 1000.0 / t.cpu_ms_per_poll().max(f64::MIN_POSITIVE)
    }
}

/// utime + stime + cutime + cstime from the text of /proc/PID/stat, in clock ticks.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the command name (which may hold spaces and parentheses) start at field 3.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    (11..=14).map(|i| fields.get(i)?.parse::<u64>().ok()).sum()
}

fn is_sshd(pid: u32) -> bool {
    procfs::exe(pid).is_some_and(|e| {
        Path::new(&e)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("sshd"))
    })
}

/// The server's listening sshd: the sshd in the server's pid namespace whose parent is no sshd.
fn listener(world: &World) -> Result<u32, LabError> {
    let ns = procfs::ns_inode(world.server().init_pid, "pid")
        .ok_or_else(|| LabError::Failed("the server's pid namespace is gone".into()))?;
    procfs::pids_in(&[("pid", ns)])
        .into_iter()
        .find(|&p| is_sshd(p) && procfs::parent(p).is_none_or(|pp| !is_sshd(pp)))
        .ok_or_else(|| LabError::Failed("no listening sshd on the server".into()))
}

/// The listener's CPU (its own and its reaped children's) in ms, once every session has ended.
fn server_cpu_ms(listener: u32, ticks_per_s: u64) -> Result<f64, LabError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !procfs::children(listener).is_empty() {
        if Instant::now() > deadline {
            return Err(LabError::Failed(format!(
                "sshd sessions still open 20 s after the phase ended (children of {listener}: {:?})",
                procfs::children(listener)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stat = std::fs::read_to_string(format!("/proc/{listener}/stat"))
        .map_err(|e| LabError::io(format!("reading /proc/{listener}/stat"), e))?;
    let ticks = cpu_ticks(&stat)
        .ok_or_else(|| LabError::Failed(format!("unreadable /proc/{listener}/stat: {stat}")))?;
    Ok(ticks as f64 * 1000.0 / ticks_per_s as f64)
}

fn clock_ticks_per_s() -> u64 {
    // USER_HZ, the unit of /proc/PID/stat's times: 100 on every Linux architecture tiffin targets.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Builds the lab, measures, tears it down; prints the table with the figures line last.
pub fn bench(args: &CapacityArgs, lab: super::bench::Lab) -> Result<u8, LabError> {
    let banner = |run: &Run| {
        format!(
            "tiffin-lab bench --capacity: run {}, {} clients, {} s per tool; lab files in {}",
            run.id,
            args.clients,
            args.seconds,
            run.dir.display()
        )
    };
    let out = super::bench::in_lab("bench-capacity", SETUP, lab, banner, |world, scenario| {
        Ok(measure(world, scenario, args)?.render())
    })?;
    print!("{out}");
    Ok(0)
}

fn setup(world: &mut World, scenario: &Scenario, n: u32) -> Result<(), LabError> {
    world.build(scenario).map_err(failed)?;
    let server = MachineName::server();
    eprintln!("   setup: {n} fleet hosts cap1…cap{n} with client1's key");
    sh(world, &server, &format!("N={n}\n{ADD_HOSTS}"))?;
    let more = Scenario::parse(
        Path::new("bench-capacity"),
        &format!("{SETUP}[[step]]\ndo = \"provision\"\n[[step]]\ndo = \"publish\"\n"),
    )?;
    for (i, placed) in more.steps.iter().enumerate() {
        eprintln!("   setup: {}", placed.step.describe(more.clients()));
        steps::run(world, i + 1, &placed.step).map_err(failed)?;
    }
    eprintln!("   setup: each host's first pull (applies its release)");
    sh(world, &scenario.clients()[0], &format!("N={n}\n{PREPARE}"))?;
    Ok(())
}

fn measure(
    world: &mut World,
    scenario: &Scenario,
    args: &CapacityArgs,
) -> Result<Capacity, LabError> {
    setup(world, scenario, args.clients)?;
    let client = scenario.clients()[0].clone();
    let ticks = clock_ticks_per_s();
    let per_round = (args.seconds / ROUNDS).max(1);
    let mut tallies = [Tally::default(), Tally::default()];
    for round in 1..=ROUNDS {
        for (tool, tally) in ["tiffin", "sftp"].into_iter().zip(tallies.iter_mut()) {
            eprintln!(
                "   round {round}/{ROUNDS}: {tool}, {} clients for {per_round} s",
                args.clients
            );
            let sshd = listener(world)?;
            let before = server_cpu_ms(sshd, ticks)?;
            let script = format!("N={}\nS={per_round}\nT={tool}\n{PHASE}", args.clients);
            let out = sh_for(world, &client, &script, per_round)?;
            let spent = server_cpu_ms(sshd, ticks)? - before;
            if let Some(at) = out.find("first error:") {
                eprintln!("   {tool}: some polls failed; {}", out[at..].trim());
            }
            tally.add(tool, &out, spent).map_err(LabError::Failed)?;
        }
    }
    let [tiffin, sftp] = tallies;
    Ok(Capacity {
        clients: args.clients,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        tiffin,
        sftp,
    })
}

fn sh(world: &mut World, on: &MachineName, script: &str) -> Result<String, LabError> {
    sh_timeout(world, on, script, SETUP_TIMEOUT)
}

/// A phase lasts its seconds plus the polls still running at the deadline.
fn sh_for(
    world: &mut World,
    on: &MachineName,
    script: &str,
    seconds: u32,
) -> Result<String, LabError> {
    sh_timeout(
        world,
        on,
        script,
        Duration::from_secs(u64::from(seconds)) + PHASE_SLACK,
    )
}

fn sh_timeout(
    world: &mut World,
    on: &MachineName,
    script: &str,
    timeout: Duration,
) -> Result<String, LabError> {
    super::bench::sh_within(world, on, script, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (sshd: /usr/sbin/sshd -D (x)) S 1 4242 4242 0 -1 4194560 900 12000 0 3 7 5 1100 230 20 0 1 0 123456 15000000 2000 18446744073709551615";

    #[test]
    fn cpu_ticks_of_a_stat_line() {
        // utime 7, stime 5, cutime 1100, cstime 230 (fields 14-17).
        assert_eq!(cpu_ticks(STAT), Some(1342));
        assert_eq!(cpu_ticks("4242 (sshd) S 1 2"), None);
        assert_eq!(cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn rounds_add_up_and_the_last_line_is_the_issue_s() {
        let mut t = Tally::default();
        t.add(
            "tiffin",
            "tiffin_ok=300\ntiffin_failed=0\ntiffin_ms=15000\n",
            9900.0,
        )
        .unwrap();
        t.add(
            "tiffin",
            "noise\ntiffin_ok=300\ntiffin_failed=0\ntiffin_ms=15000\n",
            9900.0,
        )
        .unwrap();
        let mut s = Tally::default();
        s.add(
            "sftp",
            "sftp_ok=200\nsftp_failed=0\nsftp_ms=15000\n",
            6000.0,
        )
        .unwrap();
        s.add(
            "sftp",
            "sftp_ok=190\nsftp_failed=10\nsftp_ms=15000\n",
            6000.0,
        )
        .unwrap();
        assert_eq!((t.ok, t.wall_ms), (600, 30000));
        assert!((t.per_s() - 20.0).abs() < 1e-9);
        assert!((t.cpu_ms_per_poll() - 33.0).abs() < 1e-9);
        assert!(
            (s.cpu_ms_per_poll() - 30.0).abs() < 1e-9,
            "failed polls cost CPU too"
        );
        let c = Capacity {
            clients: 8,
            cores: 2,
            tiffin: t,
            sftp: s,
        };
        let text = c.render();
        assert_eq!(
            text.lines().last().unwrap(),
            "capacity_polls_per_s=20.0 capacity_cpu_ratio=1.10"
        );
        assert!(text.contains("server-bound polls/s on 2 core(s)"), "{text}");
        assert!((c.server_bound_per_s(&c.tiffin) - 2000.0 / 33.0).abs() < 1e-9);
        assert!(
            t.add("tiffin", "sftp_ok=1\nsftp_failed=0\nsftp_ms=1\n", 0.0)
                .is_err()
        );
    }
}
