//! One lab machine: a network namespace plus a pid 1 (`machine-init`) that holds the machine's mount, pid, uts and ipc namespaces; how to enter it and how to reach its files.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2, readlinkat};
use nix::sys::signal::Signal;

use super::cgroup;
use super::procfs;
use super::scenario::{Init, MachineName};

/// The lab's network: 192.0.2.0/24 (TEST-NET-1), only ever inside the lab's namespaces.
pub const SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

pub fn client_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 11 + index as u8)
}

/// The PATH inside machines: tiffin's directory first, so `tiffin` works in `run` steps and shells.
pub fn machine_path(tiffin_dir: &Path) -> String {
    format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        tiffin_dir.display()
    )
}

/// How to enter a machine, by the pid of its pid 1. Used by running labs and by `tiffin-lab shell`.
pub fn enter_command<S: AsRef<OsStr>>(
    init_pid: u32,
    env: &[(String, String)],
    workdir: &str,
    argv: &[S],
) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg("--target")
        .arg(init_pid.to_string())
        .args(["--mount", "--uts", "--ipc", "--net", "--pid"])
        .arg(format!("--wd={workdir}"))
        .arg("--")
        .args(argv);
    cmd.env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// What starting a machine needs.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    pub name: MachineName,
    pub address: Ipv4Addr,
    /// The network namespace (already created, with its interface).
    pub netns: String,
    /// The machine's directory in the run directory.
    pub dir: PathBuf,
    /// Host directories to show at the same path inside, read-only and writable.
    pub shares: Vec<PathBuf>,
    pub shares_rw: Vec<PathBuf>,
    /// The environment of every command run inside.
    pub env: Vec<(String, String)>,
    /// Its PID 1: the lab's own init, or the real systemd (in cgroups of its own).
    pub init: Init,
    /// `init = systemd`: the cgroups it runs in (made by the caller, removed at stop).
    pub cgroups: Vec<PathBuf>,
}

#[derive(Debug)]
pub struct Machine {
    pub name: MachineName,
    pub address: Ipv4Addr,
    /// The machine's pid 1, as the lab sees it.
    pub init_pid: u32,
    pub init_start: u64,
    /// The `unshare` process whose child is `init_pid`.
    holder: Option<Child>,
    pub env: Vec<(String, String)>,
    /// Namespace inodes, to find every process of the machine at teardown.
    pub net_ns: Option<u64>,
    pub mnt_ns: Option<u64>,
    /// `init = systemd`: removed once its processes are gone.
    pub cgroups: Vec<PathBuf>,
}

impl Machine {
    /// Starts the machine's pid 1 and waits until its filesystem view is built.
    pub fn start(spec: MachineSpec, lab_exe: &Path) -> Result<Machine, String> {
        std::fs::create_dir_all(&spec.dir)
            .map_err(|e| format!("creating {}: {e}", spec.dir.display()))?;
        let log_path = spec.dir.join("init.log");
        let mut holder = spawn_init(&spec, lab_exe, &log_path)?;
        let holder_pid = holder.id();
        let said = first_line(holder.stdout.take().expect("piped stdout"));
        // From here on the machine exists: every way out stops it.
        let mut machine = Machine {
            name: spec.name,
            address: spec.address,
            init_pid: 0,
            init_start: 0,
            holder: Some(holder),
            env: spec.env,
            net_ns: None,
            mnt_ns: None,
            cgroups: spec.cgroups.clone(),
        };
        let line = said
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_default();
        if line.trim() != "ready" {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            machine.stop();
            return Err(not_started(&machine.name, &line, &log));
        }
        let Some(pid) = only_child(holder_pid) else {
            machine.stop();
            return Err(format!(
                "machine {}: cannot find its pid 1 (child of {holder_pid})",
                machine.name
            ));
        };
        machine.init_pid = pid;
        machine.init_start = procfs::start_time(pid).unwrap_or_default();
        machine.net_ns = procfs::ns_inode(pid, "net");
        machine.mnt_ns = procfs::ns_inode(pid, "mnt");
        Ok(machine)
    }

    /// A command that runs `argv` inside the machine, as root, in `/`.
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        enter_command(self.init_pid, &self.env, "/", argv)
    }

    /// The host path of a path inside the machine (through /proc/PID/root).
    /// Absolute symlinks inside the machine resolve against the host's root, so callers look
    /// at symlinks with `symlink_metadata` rather than through them.
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/{}",
            self.init_pid,
            inside.trim_start_matches('/')
        ))
    }

    /// Opens a path as the machine resolves it: absolute symlinks and `..` stay inside the
    /// machine (openat2 with RESOLVE_IN_ROOT on its root), unlike a plain walk of
    /// /proc/PID/root/… which would follow `/var/run -> /run` into the host's /run.
    pub fn open_inside(&self, inside: &str, flags: OFlag) -> std::io::Result<File> {
        let root = File::open(format!("/proc/{}/root", self.init_pid))?;
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let relative = inside.trim_start_matches('/');
        let relative = if relative.is_empty() { "." } else { relative };
        match openat2(&root, relative, how) {
            Ok(fd) => Ok(File::from(fd)),
            // Kernels before 5.6: the plain walk, good enough for paths without symlinks.
            Err(nix::errno::Errno::ENOSYS) => {
                let mut options = std::fs::OpenOptions::new();
                options.read(true).custom_flags(flags.bits());
                options.open(self.path(inside))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The metadata of a path inside the machine, not following a final symlink, and the
    /// symlink's target when it is one.
    pub fn lstat_inside(&self, inside: &str) -> std::io::Result<(Metadata, Option<PathBuf>)> {
        let file = self.open_inside(inside, OFlag::O_PATH | OFlag::O_NOFOLLOW)?;
        let meta = file.metadata()?;
        let target = if meta.file_type().is_symlink() {
            Some(PathBuf::from(
                readlinkat(&file, "").map_err(std::io::Error::from)?,
            ))
        } else {
            None
        };
        Ok((meta, target))
    }

    /// The content of a file inside the machine.
    pub fn read_inside(&self, inside: &str) -> std::io::Result<Vec<u8>> {
        let mut file = self.open_inside(inside, OFlag::O_RDONLY)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Kills the machine: its pid 1 first (the kernel then kills every process of its pid
    /// namespace), then anything left in its namespaces. Idempotent.
    pub fn stop(&mut self) -> Vec<u32> {
        let killed = self.stop_processes();
        for problem in cgroup::remove(&std::mem::take(&mut self.cgroups)) {
            tracing::warn!("machine {}: {problem}", self.name);
        }
        killed
    }

    fn stop_processes(&mut self) -> Vec<u32> {
        self.kill();
        if let Some(mut holder) = self.holder.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match holder.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = holder.kill();
                        let _ = holder.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        self.kill_stragglers()
    }

    /// Sends SIGKILL to the machine's pid 1 and returns at once (see `stop`).
    pub fn kill(&self) {
        if self.init_pid != 0 && procfs::is_same_process(self.init_pid, self.init_start) {
            procfs::signal(self.init_pid, Signal::SIGKILL);
        }
    }

    /// Leaves the machine running (`--keep`): the lab forgets it without killing anything.
    pub fn detach(&mut self) {
        // Dropping the Child handle neither kills nor waits; `tiffin-lab down` ends it later.
        self.holder = None;
        self.init_pid = 0;
        self.net_ns = None;
        self.mnt_ns = None;
        self.cgroups.clear();
    }

    /// Processes still inside the machine's namespaces (entered without its pid namespace), killed by pid.
    fn kill_stragglers(&self) -> Vec<u32> {
        let mut namespaces = Vec::new();
        if let Some(n) = self.net_ns {
            namespaces.push(("net", n));
        }
        if let Some(m) = self.mnt_ns {
            namespaces.push(("mnt", m));
        }
        if namespaces.is_empty() {
            return Vec::new();
        }
        let mut killed = Vec::new();
        for _round in 0..50 {
            let left = procfs::pids_in(&namespaces);
            if left.is_empty() {
                break;
            }
            for pid in left {
                procfs::signal(pid, Signal::SIGKILL);
                if !killed.contains(&pid) {
                    killed.push(pid);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        killed
    }
}

/// `nsenter` into the machine's network namespace, `unshare` for the rest, and `machine-init`
/// as the new pid 1; its stderr goes to `log`, its stdout is where it says "ready".
fn spawn_init(spec: &MachineSpec, lab_exe: &Path, log: &Path) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    let log_file =
        std::fs::File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let mut cmd = match spec.init {
        Init::Lab => Command::new("nsenter"),
        // systemd: first into the machine's cgroups, so the new cgroup namespace starts there.
        Init::Systemd => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(r#"n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1/cgroup.procs" || exit 1; shift; n=$((n-1)); done; exec "$@""#)
                .arg("sh")
                .arg(spec.cgroups.len().to_string())
                .args(&spec.cgroups)
                .arg("nsenter");
            c
        }
    };
    cmd.arg(format!("--net=/run/netns/{}", spec.netns))
        .arg("--")
        .arg("unshare");
    if spec.init == Init::Systemd {
        cmd.arg("--cgroup");
    }
    cmd.args([
        "--mount",
        "--uts",
        "--ipc",
        "--pid",
        "--fork",
        "--mount-proc",
        "--propagation",
        "private",
        "--kill-child",
        "--",
    ])
    .arg(lab_exe)
    .arg("machine-init")
    .arg("--name")
    .arg(spec.name.as_str())
    .arg("--dir")
    .arg(&spec.dir)
    .arg("--init")
    .arg(match spec.init {
        Init::Lab => "lab",
        Init::Systemd => "systemd",
    });
    for share in &spec.shares {
        cmd.arg("--share").arg(share);
    }
    for share in &spec.shares_rw {
        cmd.arg("--share-rw").arg(share);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .process_group(0);
    cmd.spawn()
        .map_err(|e| format!("starting nsenter/unshare: {e}"))
}

/// The first line `out` says, read on a thread of its own so that waiting for it can time out.
fn first_line(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx
}

fn not_started(name: &MachineName, line: &str, log: &str) -> String {
    let said = line.trim().trim_start_matches("error: ");
    format!(
        "machine {name} did not start: {}{}",
        if said.is_empty() { "no answer" } else { said },
        if log.trim().is_empty() {
            String::new()
        } else {
            format!("\n{}", log.trim_end())
        }
    )
}

/// The machine's pid 1: the only child of `unshare`, which may take a moment to appear.
fn only_child(holder_pid: u32) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(&pid) = procfs::children(holder_pid).first() {
            return Some(pid);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop();
    }
}
