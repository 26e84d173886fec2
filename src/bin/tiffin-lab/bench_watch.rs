//! `tiffin-lab bench --watch`: watch mode's figures, measured in a lab against the real sshd.
//!
//! (a) publish→report latency of a watching client (`watch_interval = "1s"`, the stand-in
//! rebuild), the median over `changes` publishes at random phases; (b) per idle check: bytes
//! on the client's eth0 (both ways, frames included) and the server's sshd CPU, each the
//! difference between a 10-check and a 10,000-check watcher (connection costs cancel out);
//! (c) the server's memory per kept session (PSS of that session's sshd processes);
//! (d) the client's RSS and open descriptors after 10 and after 10,000 checks.

use std::collections::BTreeMap;
use std::time::Duration;

use super::LabError;
use super::bench::failed;
use super::scenario::{MachineName, Scenario};
use super::steps;
use super::world::{Run, World};

const SETUP: &str = r##"# Proves: nothing by itself: it sets up the fleet `tiffin-lab bench --watch` measures (one client, applied, watch_interval = 1s).

[lab]
clients = ["client1"]

[[step]]
do = "provision"

[[step]]
do = "publish"

[[step]]
do = "pull"
expect = "ok"

[[step]]
do = "run"
on = "client1"
command = "echo 'watch_interval = \"1s\"' >> /etc/tiffin/client.toml"
"##;

/// Idle checks of the long watcher; the short one makes 10.
pub const CHECKS: u64 = 10_000;
const TIMEOUT: Duration = Duration::from_secs(240);

/// The latency watcher, stopped by pid from inside the client.
const WATCH: &str = "tiffin pull --watch --config /etc/tiffin/client.toml >/var/tmp/bench-watch.log 2>&1 & echo $! >/var/tmp/bench-watch.pid; wait $!";
const WATCHING: &str = "for i in $(seq 100); do grep -q 'watching /CURRENT' /var/tmp/bench-watch.log 2>/dev/null && sleep 1.5 && exit 0; sleep 0.1; done; cat /var/tmp/bench-watch.log; exit 1";
const STOP: &str = "kill -TERM $(cat /var/tmp/bench-watch.pid)";

/// On the server: `N` publishes, each at a random phase of the watcher's checks, each timed
/// from the end of `tiffin publish` (CURRENT swapped) until the report names the release as ok.
const LATENCY: &str = r##"set -eu
cur=/var/lib/tiffin/chroots/client1/CURRENT
rep=/var/lib/tiffin/chroots/client1/reports/status.toml
now() { date +%s%N; }
: >/tmp/bench.lat
i=0
while [ $i -lt $N ]; do
    i=$((i + 1))
    r=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
    sleep $(awk "BEGIN {print 0.3 + ($r % 1000) / 1000}")
    echo "# change $i" >>$TIFFIN_FLEET/hosts/client1/configuration.nix
    tiffin publish client1 >/dev/null
    t0=$(now)
    id=$(head -1 $cur)
    until grep -q "release = \"$id\"" $rep 2>/dev/null && grep -q 'result = "ok"' $rep; do
        [ $(( $(now) - t0 )) -lt 30000000000 ] || { echo "change $i: no report within 30 s"; cat $rep; exit 1; }
        sleep 0.005
    done
    echo $((($(now) - t0) / 1000000)) >>/tmp/bench.lat
done
echo latency_ms=$(sort -n /tmp/bench.lat | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2))}')
echo latency_all=$(sort -n /tmp/bench.lat | tr '\n' ',')
"##;

/// On the server: the listening sshd's own and its reaped sessions' CPU, in microseconds.
const SERVER_CPU: &str = r#"sleep 0.5; awk -v hz=$(getconf CLK_TCK) '{print "cpu_us=" ($14 + $15 + $16 + $17) * 1000000 / hz}' /proc/$(cat /run/sshd.pid)/stat"#;

/// On the server, while one session is kept: PSS and private memory (USS) of every sshd
/// process but the listener. With one session PSS charges it a share of the listener's
/// libraries; each further session adds about its USS.
const SERVER_PSS: &str = r#"l=$(cat /run/sshd.pid); t=0; u=0; n=0
for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" != "$l" ] && [ "$(cat $d/comm 2>/dev/null)" = sshd ] || continue
    k=$(awk '/^Pss:/ {print $2}' $d/smaps_rollup 2>/dev/null || echo 0)
    v=$(awk '/^Private_(Clean|Dirty):/ {s += $2} END {print s + 0}' $d/smaps_rollup 2>/dev/null || echo 0)
    t=$((t + ${k:-0})); u=$((u + ${v:-0})); n=$((n + 1))
    echo "process $p: $(tr '\0' ' ' <$d/cmdline) Pss ${k:-0} kB"
done
echo session_pss_kib=$t; echo session_uss_kib=$u; echo session_processes=$n"#;

/// On the client: one watcher of `C` idle checks as fast as it goes, with the bytes it moved.
fn idle(checks: u64, name: &str) -> String {
    format!(
        r#"set -eu
bytes() {{ awk '{{gsub(":", " ")}} $1 == "eth0" {{print $2 + $10}}' /proc/net/dev; }}
b0=$(bytes)
tiffin pull --watch --config /etc/tiffin/client.toml --checks {checks} --check-interval-ms 0 >/tmp/bench.{name} 2>&1 || {{ cat /tmp/bench.{name}; exit 1; }}
b1=$(bytes)
echo {name}_bytes=$((b1 - b0))
grep '^checks=' /tmp/bench.{name} | sed 's/^/{name}_/'
"#
    )
}

/// The measured figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub changes: u32,
    pub latency_ms: u64,
    pub latency_all: String,
    pub check_bytes: f64,
    pub server_cpu_us: f64,
    pub server_kib: u64,
    pub server_uss_kib: u64,
    pub session_processes: u64,
    pub rss_10: u64,
    pub rss_n: u64,
    pub fds_10: u64,
    pub fds_n: u64,
}

/// `key=value` words of the measurement's output.
fn values(text: &str) -> BTreeMap<String, String> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl Figures {
    fn from_lines(changes: u32, text: &str) -> Result<Figures, String> {
        // `checks=N rss_kib=… fds=…` lines become a_checks=10 … b_checks=10000 …, keyed by their count.
        let mut kv = values(text);
        for line in text.lines() {
            if let Some((name, rest)) = line.split_once("_checks=") {
                let checks = rest.split_whitespace().next().unwrap_or_default();
                for (k, v) in values(rest) {
                    kv.insert(format!("{name}@{checks}.{k}"), v);
                }
            }
        }
        let get = |k: &str| -> Result<f64, String> {
            kv.get(k)
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| format!("the measurement printed no {k}:\n{text}"))
        };
        let n = CHECKS;
        let extra = (n - 10) as f64;
        let cpu = (get("cpu2")? - get("cpu1")?) - (get("cpu1")? - get("cpu0")?);
        Ok(Figures {
            changes,
            latency_ms: get("latency_ms")? as u64,
            latency_all: kv.get("latency_all").cloned().unwrap_or_default(),
            check_bytes: (get("b_bytes")? - get("a_bytes")?) / extra,
            server_cpu_us: cpu / extra,
            server_kib: get("session_pss_kib")? as u64,
            server_uss_kib: get("session_uss_kib")? as u64,
            session_processes: get("session_processes")? as u64,
            rss_10: get("b@10.rss_kib")? as u64,
            rss_n: get(&format!("b@{n}.rss_kib"))? as u64,
            fds_10: get("b@10.fds")? as u64,
            fds_n: get(&format!("b@{n}.fds"))? as u64,
        })
    }

    /// The table, then the issue's exact last line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut row =
            |what: &str, value: String| out.push_str(&format!("{what:<58} {value:>12}\n"));
        row(
            &format!(
                "publish→report, median ms of {} (watch_interval 1s)",
                self.changes
            ),
            self.latency_ms.to_string(),
        );
        row(
            "  all, sorted",
            self.latency_all.trim_end_matches(',').to_owned(),
        );
        row(
            "idle check, bytes on the client's eth0 (rx+tx, frames)",
            format!("{:.0}", self.check_bytes),
        );
        row(
            "idle check, server sshd CPU µs",
            format!("{:.1}", self.server_cpu_us),
        );
        row(
            &format!(
                "kept session, server PSS KiB ({} sshd processes)",
                self.session_processes
            ),
            self.server_kib.to_string(),
        );
        row(
            "kept session, server private memory (USS) KiB",
            self.server_uss_kib.to_string(),
        );
        row("client RSS KiB after 10 checks", self.rss_10.to_string());
        row(
            &format!("client RSS KiB after {CHECKS} checks"),
            self.rss_n.to_string(),
        );
        row(
            &format!("client open fds after 10 / {CHECKS} checks"),
            format!("{} / {}", self.fds_10, self.fds_n),
        );
        out.push_str(&format!(
            "watch_latency_ms={} watch_check_bytes={:.0} watch_server_cpu_us={:.0} watch_server_kib={} watch_rss_growth_kib={}\n",
            self.latency_ms,
            self.check_bytes,
            self.server_cpu_us,
            self.server_kib,
            self.rss_n as i64 - self.rss_10 as i64
        ));
        out
    }
}

fn sh(world: &mut World, on: &MachineName, script: &str) -> Result<String, LabError> {
    super::bench::sh_within(world, on, script, TIMEOUT)
}

/// Builds the lab, measures, tears it down; prints the table with the figures line last.
pub fn bench(changes: u32, lab: super::bench::Lab) -> Result<u8, LabError> {
    let banner = |run: &Run| {
        format!(
            "tiffin-lab bench --watch: run {}, {changes} changes; lab files in {}",
            run.id,
            run.dir.display()
        )
    };
    let out = super::bench::in_lab("bench-watch", SETUP, lab, banner, |world, scenario| {
        Ok(measure(world, scenario, changes)?.render())
    })?;
    print!("{out}");
    Ok(0)
}

fn measure(world: &mut World, scenario: &Scenario, changes: u32) -> Result<Figures, LabError> {
    world.build(scenario).map_err(failed)?;
    for (i, placed) in scenario.steps.iter().enumerate() {
        eprintln!("   setup: {}", placed.step.describe(scenario.clients()));
        steps::run(world, i + 1, &placed.step).map_err(failed)?;
    }
    let client = scenario.clients()[0].clone();
    let server = MachineName::server();
    eprintln!("   measuring: {changes} publishes applied by a watching client");
    let watcher = world
        .spawn(&client, &["sh", "-c", WATCH], None)
        .map_err(failed)?;
    sh(world, &client, WATCHING)?;
    let mut out = sh(world, &server, &format!("N={changes}\n{LATENCY}"))?;
    sh(world, &client, STOP)?;
    let interrupt = world.interrupt();
    let stopped = watcher
        .wait(TIMEOUT, &interrupt)
        .map_err(|e| super::world::exec_failure(e, client.as_str(), WATCH))
        .map_err(failed)?;
    if !stopped.status.success() {
        return Err(LabError::Failed(format!(
            "the watcher did not exit 0 on SIGTERM:\n{}",
            stopped.output
        )));
    }
    eprintln!("   measuring: a 10-check and a {CHECKS}-check watcher, idle");
    let cpu = |world: &mut World, n: u32| -> Result<String, LabError> {
        Ok(sh(world, &MachineName::server(), SERVER_CPU)?.replace("cpu_us", &format!("cpu{n}")))
    };
    out.push_str(&cpu(world, 0)?);
    out.push_str(&sh(world, &client, &idle(10, "a"))?);
    out.push_str(&cpu(world, 1)?);
    let long = world
        .spawn(&client, &["sh", "-c", &idle(CHECKS, "b")], None)
        .map_err(failed)?;
    std::thread::sleep(Duration::from_secs(3));
    let pss = sh(world, &server, SERVER_PSS)?;
    for line in pss.lines().filter(|l| l.starts_with("process ")) {
        eprintln!("   kept session: {line}");
    }
    out.push_str(&pss);
    let done = long
        .wait(TIMEOUT, &interrupt)
        .map_err(|e| super::world::exec_failure(e, client.as_str(), "the idle watcher"))
        .map_err(failed)?;
    if !done.status.success() {
        return Err(LabError::Failed(format!(
            "the idle watcher failed:\n{}",
            done.output
        )));
    }
    out.push_str(&done.output);
    out.push_str(&cpu(world, 2)?);
    Figures::from_lines(changes, &out).map_err(LabError::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_is_the_issue_s() {
        let text = format!(
            "latency_ms=612\nlatency_all=400,612,900,\ncpu0=1000\na_bytes=9000\na_checks=10 rss_kib=9000 fds=9\ncpu1=41000\nsession_pss_kib=2100\nsession_uss_kib=900\nsession_processes=2\nb_bytes=8999010\nb_checks=10 rss_kib=9100 fds=10\nb_checks={CHECKS} rss_kib=9300 fds=10\ncpu2=5076000\n"
        );
        let f = Figures::from_lines(11, &text).unwrap();
        assert_eq!(
            f.render().lines().last().unwrap(),
            "watch_latency_ms=612 watch_check_bytes=900 watch_server_cpu_us=500 watch_server_kib=2100 watch_rss_growth_kib=200"
        );
        assert!(Figures::from_lines(11, "latency_ms=1").is_err());
    }
}
