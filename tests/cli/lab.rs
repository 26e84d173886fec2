//! `tiffin-lab`: scenario files checked without root; as root (CI), a failing scenario's report,
//! and a host left exactly as it was after a passing, a failing and an interrupted run.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest;

/// Root-only tests build labs; one at a time, so one test's lab is never taken for another's leftover.
static LAB: Mutex<()> = Mutex::new(());

fn lab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tiffin-lab"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("TIFFIN_FLEET");
    c
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The run id from "tiffin-lab: run 3f9a2c, …".
fn run_id(output: &str) -> String {
    let rest = output
        .split("tiffin-lab: run ")
        .nth(1)
        .unwrap_or_else(|| panic!("no run id in:\n{output}"));
    rest[..6].to_owned()
}

/// Run ids, directories and durations vary; the rest of the report must not.
fn normalise(output: &str) -> String {
    let id = run_id(output);
    let tmp = std::env::temp_dir().display().to_string();
    let s = output
        .replace(&format!("{tmp}/tiffin-lab-{id}"), "[RUNDIR]")
        .replace(&id, "[RUN]");
    durations(&s)
}

/// Every duration like "12.3s" becomes "[T]".
fn durations(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let boundary = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
        if boundary && chars[i].is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && chars[j].is_ascii_digit() {
                j += 1;
            }
            if j + 2 < chars.len() && chars[j] == '.' && chars[j + 1].is_ascii_digit() {
                let mut k = j + 1;
                while k < chars.len() && chars[k].is_ascii_digit() {
                    k += 1;
                }
                if k < chars.len() && chars[k] == 's' {
                    out.push_str("[T]");
                    i = k + 1;
                    continue;
                }
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

#[test]
fn a_bad_scenario_is_refused_before_any_lab_starts() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    fs::write(
        &bad,
        "# Proves: nothing\n[[step]]\ndo = \"run\"\non = \"client9\"\ncommand = \"true\"\n\n[[step]]\ndo = \"expect_denied\"\non = \"client1\"\naccess = \"read-other\"\n",
    )
    .unwrap();
    let unknown = dir.path().join("unknown.toml");
    fs::write(
        &unknown,
        "# Proves: nothing\n[[step]]\ndo = \"provision\"\nexpec = \"changed\"\n",
    )
    .unwrap();
    let out = lab().arg("run").arg(&bad).arg(&unknown).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let shown = text(&out).replace(&dir.path().display().to_string(), "[DIR]");
    insta::assert_snapshot!("lab_bad_scenarios", shown);
}

#[test]
fn help_teaches_the_commands() {
    let out = lab().arg("--help").output().unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!("lab_help", text(&out));
}

#[test]
#[ignore = "needs root: network and mount namespaces, a real sshd"]
fn a_failing_step_is_reported_with_machine_command_and_output() {
    crate::require_root();
    let _one_lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let out = lab()
        .args(["run", "tests/fixtures/lab/failing.toml"])
        .output()
        .unwrap();
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    insta::assert_snapshot!("lab_failing_fixture", normalise(&shown));
}

// ---- the host is left as it was --------------------------------------------------------------

/// What a lab must never change on the host: accounts and the SSH configuration.
fn host_files() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut paths: Vec<PathBuf> = ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"]
        .iter()
        .map(PathBuf::from)
        .collect();
    collect(Path::new("/etc/ssh"), &mut paths);
    for p in paths {
        let hash = fs::read(&p)
            .map(|b| hex::encode(sha2::Sha256::digest(&b)))
            .unwrap_or_else(|e| format!("unreadable: {e}"));
        out.insert(p.display().to_string(), hash);
    }
    out.insert(
        "/home entries".into(),
        format!("{:?}", entries(Path::new("/home"))),
    );
    out
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in entries(dir) {
        let p = dir.join(e);
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Everything of a run still visible on the host: namespaces, mounts, processes, files.
fn leftovers(run: &str) -> Vec<String> {
    let prefix = format!("tiffin-lab-{run}");
    let mut left = Vec::new();
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    for l in String::from_utf8_lossy(&netns.stdout).lines() {
        if l.contains(&prefix) {
            left.push(format!("network namespace {l}"));
        }
    }
    for l in fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
        if l.contains(&prefix) {
            left.push(format!("mount {l}"));
        }
    }
    let me = std::process::id().to_string();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let environ = fs::read(e.path().join("environ")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let env = String::from_utf8_lossy(&environ);
        if cmd.contains(&prefix) || env.split('\0').any(|v| v == format!("TIFFIN_LAB={run}")) {
            left.push(format!("process {pid}: {cmd}"));
        }
    }
    let dir = std::env::temp_dir().join(&prefix);
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    if Path::new(&format!("/run/tiffin-lab/{run}.toml")).exists() {
        left.push(format!("state file /run/tiffin-lab/{run}.toml"));
    }
    left
}

/// Starts `tiffin-lab run FILE`, waits until its progress shows `marker`, sends SIGINT.
fn interrupt_at(file: &str, marker: &str) -> (Option<i32>, String, Vec<String>) {
    let mut child = lab()
        .args(["run", file])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = Arc::clone(&seen);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while !seen.lock().unwrap().contains(marker) {
        assert!(
            Instant::now() < deadline,
            "the step never started:\n{}",
            seen.lock().unwrap()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "tiffin-lab ended early:\n{}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // While the step runs, the lab is visible: this is what the checks afterwards must not find.
    let run = run_id(&seen.lock().unwrap());
    let during = leftovers(&run);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit 60s after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let out = format!("{}{err}", seen.lock().unwrap());
    (status.code(), out, during)
}

#[test]
#[ignore = "needs root: network and mount namespaces, a real sshd"]
fn the_host_is_left_as_it_was_after_a_pass_a_failure_and_an_interrupt() {
    crate::require_root();
    let _one_lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let before = host_files();

    // (a) a passing scenario that creates accounts, keys and an sshd drop-in on its server.
    let out = lab()
        .args(["run", "vm-scenarios/provision-idempotent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let passed = run_id(&text(&out));
    assert_eq!(leftovers(&passed), Vec::<String>::new(), "after a pass");

    // (b) a failing one.
    let out = lab()
        .args(["run", "tests/fixtures/lab/failing.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failed = run_id(&text(&out));
    assert_eq!(leftovers(&failed), Vec::<String>::new(), "after a failure");

    // (c) SIGINT in the middle of a step (a `sleep 600` on client1, after provisioning).
    let (code, out, during) = interrupt_at(
        "tests/fixtures/lab/interrupted.toml",
        "[ 2/2] run on client1: sleep 600 ... ",
    );
    assert_eq!(code, Some(130), "{out}");
    assert!(out.contains("interrupted: tearing the lab down"), "{out}");
    assert!(
        during.iter().any(|l| l.starts_with("network namespace"))
            && during.iter().any(|l| l.starts_with("process"))
            && during.iter().any(|l| l.starts_with("mount")),
        "the leftover checks must see a running lab, or they prove nothing: {during:#?}"
    );
    let interrupted = run_id(&out);
    assert_eq!(
        leftovers(&interrupted),
        Vec::<String>::new(),
        "after SIGINT"
    );

    assert_eq!(
        host_files(),
        before,
        "the host's accounts or /etc/ssh changed"
    );
}

// ---- the benches still run (their figures are printed, never asserted) ------------------------

/// The last line of a bench's output, the one scripts read.
fn last_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

#[test]
#[ignore = "needs root: network and mount namespaces, a real sshd"]
fn the_benches_run_to_their_figures_line() {
    crate::require_root();
    let _one_lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let out = lab().args(["bench", "--polls", "2"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let line = last_line(&out);
    assert!(
        line.starts_with("poll_ratio=") && line.contains(" peak_rss_kib="),
        "{line}\n{}",
        text(&out)
    );
    let out = lab()
        .args(["bench", "--capacity", "--clients", "2", "--seconds", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let line = last_line(&out);
    assert!(
        line.starts_with("capacity_polls_per_s=") && line.contains(" capacity_cpu_ratio="),
        "{line}\n{}",
        text(&out)
    );
}
