//! A cgroup of its own for each machine that boots the real systemd, so that everything systemd creates stays under it and teardown removes it whole.
//!
//! systemd as a machine's PID 1 (in a cgroup namespace) makes its slices and scopes below the
//! cgroup it starts in. Started in the lab's own cgroup that would be the host's hierarchy
//! itself; so each such machine first joins `tiffin-lab-<run>-<machine>` in every hierarchy
//! it can (cgroup v2, or each v1 hierarchy but cpuset, which needs configuring first), and
//! teardown removes those directories depth-first once the machine's processes are gone.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The directories a machine joins: one per mounted hierarchy, under this process's cgroup there.
pub fn dirs_for(name: &str) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|own| own.join(name))
        .collect()
}

/// Creates the directories (those that cannot be made are left out: the machine then stays
/// in the lab's own cgroup of that hierarchy).
pub fn create(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter()
        .filter(|d| fs::create_dir(d).is_ok() || d.is_dir())
        .cloned()
        .collect()
}

/// Removes every directory under and including each of `dirs`, deepest first; waits up to
/// a few seconds for processes that are still exiting. Returns what could not be removed.
pub fn remove(dirs: &[PathBuf]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left: Vec<PathBuf> = dirs.iter().filter(|d| d.exists()).cloned().collect();
    while !left.is_empty() {
        left.retain(|d| remove_tree(d).is_err() && d.exists());
        if left.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    left.iter()
        .map(|d| {
            format!(
                "cgroup {} is still there (processes left in it?)",
                d.display()
            )
        })
        .collect()
}

/// Every directory named with `prefix` directly under this process's cgroup of each
/// hierarchy: what `tiffin-lab down` removes for a lab that died without tearing down.
pub fn leftovers(prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for own in hierarchies() {
        let Ok(entries) = fs::read_dir(&own) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) && e.path().is_dir() {
                out.push(e.path());
            }
        }
    }
    out
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = remove_tree(&e.path());
            }
        }
    }
    fs::remove_dir(dir)
}

/// This process's cgroup directory in each mounted hierarchy (cgroup2, and every v1
/// hierarchy but cpuset), from /proc/self/mountinfo and /proc/self/cgroup.
fn hierarchies() -> Vec<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let subsystems: Vec<String> = fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    let mut out = Vec::new();
    for line in mounts.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split(' ');
        let (fstype, _source, options) = (r.next(), r.next(), r.next().unwrap_or(""));
        let mut l = left.split(' ').skip(3);
        let (Some(root), Some(mount_point)) = (l.next(), l.next()) else {
            continue;
        };
        let key = match fstype {
            Some("cgroup2") => Some(String::new()),
            Some("cgroup") => v1_key(options, &subsystems),
            _ => None,
        };
        let Some(key) = key else { continue };
        if let Some(path) = own_path(&own, &key) {
            // The mount shows the hierarchy from `root` down.
            let Some(below) = Path::new(&path).strip_prefix(root).ok() else {
                continue;
            };
            out.push(Path::new(mount_point).join(below));
        }
    }
    out
}

/// The controller list (or `name=…`) a v1 hierarchy is known by in /proc/self/cgroup, from
/// its mount options; none for cpuset.
fn v1_key(options: &str, subsystems: &[String]) -> Option<String> {
    let parts: Vec<&str> = options
        .split(',')
        .filter(|o| o.starts_with("name=") || subsystems.iter().any(|s| s == o))
        .collect();
    if parts.is_empty() || parts.contains(&"cpuset") {
        return None;
    }
    Some(parts.join(","))
}

/// The path of this process's cgroup in the hierarchy known as `key` ("" for cgroup2).
fn own_path(own: &str, key: &str) -> Option<String> {
    own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_id, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let same = if key.is_empty() {
            controllers.is_empty()
        } else {
            let mut a: Vec<&str> = controllers.split(',').collect();
            let mut b: Vec<&str> = key.split(',').collect();
            a.sort_unstable();
            b.sort_unstable();
            a == b
        };
        same.then(|| path.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_hierarchy_is_known_by_its_controllers_and_cpuset_is_left_out() {
        let subs: Vec<String> = ["cpuset", "cpu", "cpuacct", "memory"]
            .map(String::from)
            .into();
        assert_eq!(
            v1_key("rw,nosuid,nodev,noexec,relatime,memory", &subs).as_deref(),
            Some("memory")
        );
        assert_eq!(
            v1_key("rw,xattr,name=systemd", &subs).as_deref(),
            Some("name=systemd")
        );
        assert_eq!(
            v1_key("rw,cpu,cpuacct", &subs).as_deref(),
            Some("cpu,cpuacct")
        );
        assert_eq!(v1_key("rw,cpuset", &subs), None);
        let own = "9:name=systemd:/\n4:memory:/a/b\n1:cpu,cpuacct:/\n0::/u\n";
        assert_eq!(own_path(own, "memory").as_deref(), Some("/a/b"));
        assert_eq!(own_path(own, "cpuacct,cpu").as_deref(), Some("/"));
        assert_eq!(own_path(own, "").as_deref(), Some("/u"));
    }
}
