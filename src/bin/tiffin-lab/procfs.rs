//! What the lab reads from /proc: process start times (so a recorded pid is never confused with a reused one), parents, and namespace identities.

use std::fs;
use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Every pid on the machine, as seen from the lab's pid namespace.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The fields of /proc/PID/stat after the command name (which may hold spaces and parentheses).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The start time of a process (clock ticks since boot): with the pid, it names a process for good.
pub fn start_time(pid: u32) -> Option<u64> {
    // Field 22 of stat; the fields after the name start at field 3.
    stat_fields(pid)?.get(19)?.parse().ok()
}

pub fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// The processes of a process group.
pub fn group_members(pgid: u32) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|p| stat_fields(*p).and_then(|f| f.get(2)?.parse().ok()) == Some(pgid))
        .collect()
}

/// True when `pid` still runs and is the process that was started at `start`.
pub fn is_same_process(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start) && !is_zombie(pid)
}

pub fn is_zombie(pid: u32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .is_some_and(|s| s == "Z")
}

/// The children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|p| parent(*p) == Some(pid))
        .collect()
}

/// The inode that identifies a namespace of a process (`kind`: net, mnt, pid, uts …).
pub fn ns_inode(pid: u32, kind: &str) -> Option<u64> {
    link_inode(
        &fs::read_link(format!("/proc/{pid}/ns/{kind}"))
            .ok()?
            .to_string_lossy(),
    )
}

/// The namespace inode a file like /run/netns/NAME is bound to.
pub fn ns_file_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| m.ino())
}

fn link_inode(link: &str) -> Option<u64> {
    link.split_once(":[")?.1.strip_suffix(']')?.parse().ok()
}

/// Every process that lives in one of these namespaces (`kind`, inode).
pub fn pids_in(namespaces: &[(&str, u64)]) -> Vec<u32> {
    let me = std::process::id();
    pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter(|&p| {
            namespaces
                .iter()
                .any(|(kind, ino)| ns_inode(p, kind) == Some(*ino))
        })
        .filter(|&p| !is_zombie(p))
        .collect()
}

/// The program a process runs (the target of /proc/PID/exe).
pub fn exe(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Sends a signal by pid; a process that is already gone is not an error.
pub fn signal(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), sig);
    }
}

/// Sends a signal to a process group (the lab starts every command in its own).
pub fn signal_group(pgid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pgid) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(raw), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_links_and_own_process() {
        assert_eq!(link_inode("net:[4026532177]"), Some(4026532177));
        assert_eq!(link_inode("garbage"), None);
        let me = std::process::id();
        let start = start_time(me).expect("own start time");
        assert!(is_same_process(me, start));
        assert!(!is_same_process(me, start + 1));
        assert!(ns_inode(me, "net").is_some());
        assert_eq!(parent(me), Some(std::os::unix::process::parent_id()));
    }
}
