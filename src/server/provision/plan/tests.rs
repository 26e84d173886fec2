//! Plans against an in-memory server: what provisioning would change, snapshotted.

use super::*;
use crate::server::provision::reports::{REPORTS_BYTES, REPORTS_INODES};
use crate::server::provision::system::fake::FakeSystem;
use crate::server::provision::system::{MountFlags, Mounted};

const KEYS: [&str; 3] = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHUCjPt2qjOB8lNVJFDp5AJ4np61qYkiH6bnAG8e2sV0 root@client1",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDSmylHGy80u0GccoliCFKxZKla3ar59W/B68cYw51bz root@client2",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL6XRxgdnbuw2na78/HdDOr86bgPlsv20D1jenj+O7Gy root@client3",
];
const ROOT: &str = "/var/lib/tiffin/chroots";
const RELEASE: &str = "4f7d2a39d1c2e7b08a4d4c1f9e9b3a6c5d8e7f60718293a4b5c6d7e8f9011223";

fn target(hosts: &[&str]) -> Target {
    Target {
        hosts: hosts
            .iter()
            .enumerate()
            .map(|(i, h)| HostTarget {
                host: h.parse().unwrap(),
                account: format!("tiffin-{h}"),
                key: KEYS[i % 3].to_owned(),
            })
            .collect(),
        user_prefix: "tiffin-".into(),
        chroot_root: ROOT.into(),
        chroot_root_from: Origin::FleetToml,
        keys_dir: "/etc/tiffin/authorized_keys".into(),
        dropin: "/etc/ssh/sshd_config.d/tiffin.conf".into(),
        sshd_config: "/etc/ssh/sshd_config".into(),
        sshd_extra: vec!["LogLevel VERBOSE".into()],
    }
}

fn opts(departed: Departed) -> PlanOptions {
    PlanOptions {
        departed,
        now: crate::core::settings::parse_time("2026-11-24T22:44:16Z").unwrap(),
        at_boot: AtBoot::SystemdUnits,
    }
}

const BOUNDED: Mounted = Mounted {
    fs: FsKind::Tmpfs,
    bytes: REPORTS_BYTES,
    inodes: REPORTS_INODES,
    flags: MountFlags::Inert,
};

/// A server on which `target` is fully provisioned (uids from 990 down).
fn provisioned(t: &Target) -> FakeSystem {
    let mut s = FakeSystem::debian();
    s.dir("/var/lib/tiffin", 0, 0, 0o755)
        .dir(ROOT, 0, 0, 0o755)
        .file(&format!("{ROOT}/{CHROOT_ROOT_MARKER}"), 0, 0, 0o644, "")
        .dir("/etc/systemd/system/local-fs.target.wants", 0, 0, 0o755)
        .dir("/etc/tiffin", 0, 0, 0o755)
        .dir("/etc/tiffin/authorized_keys", 0, 0, 0o755);
    for (i, h) in t.hosts.iter().enumerate() {
        let id = 990 - i as u32;
        let chroot = format!("{ROOT}/{}", h.host);
        s.append(
            "/etc/passwd",
            &format!(
                "{}:x:{id}:{id}:tiffin host {}:{chroot}:/usr/sbin/nologin\n",
                h.account, h.host
            ),
        )
        .append("/etc/group", &format!("{}:x:{id}:\n", h.account))
        .append(
            "/etc/shadow",
            &format!("{}:*:20000:::::: \n", h.account).replace(" ", ""),
        )
        .dir(&chroot, 0, id, 0o750)
        .dir(&format!("{chroot}/releases"), 0, id, 0o750)
        .dir(&format!("{chroot}/reports"), id, id, 0o700)
        .mount(&format!("{chroot}/reports"), BOUNDED);
        let reports = PathBuf::from(format!("{chroot}/reports"));
        let unit = reports::unit_path(&reports);
        s.file(
            &unit.to_string_lossy(),
            0,
            0,
            0o644,
            &reports::unit_text(&h.host, &reports, id, id),
        )
        .file(
            &reports::wants_link(&reports).to_string_lossy(),
            0,
            0,
            0o644,
            "",
        )
        .file(
            &format!("/etc/tiffin/authorized_keys/{}", h.account),
            0,
            0,
            0o644,
            &key_line(&h.key),
        );
    }
    let blocks: Vec<Block> = t
        .hosts
        .iter()
        .map(|h| Block {
            account: h.account.clone(),
            chroot: t.chroot_root.join(h.host.as_str()),
            keys_file: t.keys_dir.join(&h.account),
            gone: None,
        })
        .collect();
    s.file(
        "/etc/ssh/sshd_config.d/tiffin.conf",
        0,
        0,
        0o644,
        &dropin::render(&blocks, &t.sshd_extra),
    );
    s
}

fn kinds(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .map(|a| {
            a.to_string()
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn three_hosts_on_an_empty_server() {
    let t = target(&["client1", "client2", "client3"]);
    let plan = plan(&t, &FakeSystem::debian(), &opts(Departed::Keep)).unwrap();
    assert!(!plan.is_blocked());
    insta::assert_snapshot!("plan_three_hosts", plan.render(&t));
}

#[test]
fn rendered_dropin() {
    let t = target(&["client1", "client2", "client3"]);
    let plan = plan(&t, &FakeSystem::debian(), &opts(Departed::Keep)).unwrap();
    let new = plan
        .actions
        .iter()
        .find_map(|a| match a {
            Action::WriteDropin { new, .. } => Some(new.clone()),
            _ => None,
        })
        .expect("a drop-in is written");
    insta::assert_snapshot!("dropin_three_hosts", new);
}

#[test]
fn provisioned_server_has_nothing_to_do() {
    let t = target(&["client1", "client2", "client3"]);
    let plan = plan(&t, &provisioned(&t), &opts(Departed::Keep)).unwrap();
    assert_eq!(plan.actions, vec![], "{}", plan.render(&t));
    assert!(plan.findings.is_empty(), "{:?}", plan.findings);
    assert!(plan.render(&t).contains("nothing to do"));
}

#[test]
fn locked_and_expired_accounts_are_unlocked() {
    let t = target(&["client1", "client2"]);
    let mut s = provisioned(&t);
    let shadow = String::from_utf8(s.read(Path::new("/etc/shadow")).unwrap())
        .unwrap()
        .replace(
            "tiffin-client1:*:20000::::::",
            "tiffin-client1:!:20000::::::",
        )
        .replace(
            "tiffin-client2:*:20000::::::",
            "tiffin-client2:*:20000:::::1:",
        );
    s.file("/etc/shadow", 0, 42, 0o640, &shadow);
    let plan = plan(&t, &s, &opts(Departed::Keep)).unwrap();
    assert_eq!(
        plan.actions,
        vec![
            Action::UnlockAccount {
                name: "tiffin-client1".into(),
                was: Password::Locked,
                expired: false
            },
            Action::UnlockAccount {
                name: "tiffin-client2".into(),
                was: Password::NoPassword,
                expired: true
            },
        ]
    );
}

#[test]
fn publish_before_provision_is_repaired() {
    // What `tiffin publish` leaves when the host group does not exist yet: root:root everywhere.
    let t = target(&["client1"]);
    let mut s = provisioned(&t);
    let chroot = format!("{ROOT}/client1");
    let rel = format!("{chroot}/releases/{RELEASE}");
    s.dir(&chroot, 0, 0, 0o750)
        .dir(&format!("{chroot}/releases"), 0, 0, 0o750)
        .file(&format!("{chroot}/CURRENT"), 0, 0, 0o640, RELEASE)
        .dir(&format!("{chroot}/.staging"), 0, 0, 0o700)
        .dir(&rel, 0, 0, 0o750)
        .file(&format!("{rel}/MANIFEST"), 0, 0, 0o640, "")
        .dir(&format!("{rel}/files"), 0, 0, 0o755)
        .file(&format!("{rel}/files/secret"), 0, 990, 0o600, "");
    let plan = plan(&t, &s, &opts(Departed::Keep)).unwrap();
    let text = plan.render(&t);
    insta::assert_snapshot!("plan_repairs_publish_before_provision", text);
    assert!(!text.contains(".staging"), "staging is publish's business");
    assert!(matches!(
        plan.actions.last(),
        Some(Action::RepairTree { wrong: 4, .. })
    ));
}

#[test]
fn unsafe_ancestor_blocks_everything() {
    let t = target(&["client1"]);
    let mut s = FakeSystem::debian();
    s.dir("/var/lib", 1000, 1000, 0o755)
        .dir("/var", 0, 0, 0o1777);
    let plan = plan(&t, &s, &opts(Departed::Keep)).unwrap();
    assert!(plan.is_blocked());
    let problems: Vec<&str> = plan
        .findings
        .iter()
        .filter(|f| f.level == Level::Blocker)
        .map(|f| f.message.as_str())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("/var is root:root 1777"),
        "{}",
        problems[0]
    );
    assert!(
        problems[1].starts_with("/var/lib is 1000:1000 0755"),
        "{}",
        problems[1]
    );
}

#[test]
fn wrong_chroot_root_modes_are_repaired_not_blocking() {
    let t = target(&["client1"]);
    let mut s = provisioned(&t);
    s.dir(ROOT, 1000, 0, 0o775);
    let plan = plan(&t, &s, &opts(Departed::Keep)).unwrap();
    assert!(!plan.is_blocked());
    assert_eq!(kinds(&plan), vec!["repair dir"]);
    assert!(
        plan.actions[0]
            .to_string()
            .contains("root:root 0755 (was 1000:root 0775)")
    );
}

#[test]
fn gone_hosts_are_kept_until_prune() {
    let t = target(&["client1", "client2"]);
    let mut s = provisioned(&t);
    // client3 was in the fleet; tiffin-admin merely shares the prefix.
    s.append(
        "/etc/passwd",
        "tiffin-client3:x:980:980:tiffin host client3:/var/lib/tiffin/chroots/client3:/usr/sbin/nologin\n\
         tiffin-admin:x:1001:1001:Admin:/home/admin:/bin/bash\n",
    )
    .append("/etc/group", "tiffin-client3:x:980:\n")
    .append("/etc/shadow", "tiffin-client3:*:20000::::::\ntiffin-admin:$y$x:20000::::::\n")
    .dir(&format!("{ROOT}/client3"), 0, 980, 0o750)
    .file("/etc/tiffin/authorized_keys/tiffin-client3", 0, 0, 0o644, "restrict x\n");

    let kept = plan(&t, &s, &opts(Departed::Keep)).unwrap();
    assert_eq!(kinds(&kept), vec!["write drop-in", "reload sshd"]);
    let text = kept.render(&t);
    assert!(
        text.contains("host client3 is gone from the fleet"),
        "{text}"
    );
    assert!(text.contains("tiffin-admin has the prefix"), "{text}");
    assert!(!text.contains("Match User tiffin-admin"), "{text}");

    let pruned = plan(&t, &s, &opts(Departed::Prune)).unwrap();
    insta::assert_snapshot!("plan_prune", pruned.render(&t));
    assert!(!pruned.render(&t).contains("lock account    tiffin-admin"));
}

#[test]
fn pruned_accounts_stay_pruned() {
    let t = target(&["client1"]);
    let mut s = provisioned(&t);
    s.append(
        "/etc/passwd",
        "tiffin-old:x:980:980:tiffin host old:/var/lib/tiffin/chroots/old:/usr/sbin/nologin\n",
    )
    .append("/etc/group", "tiffin-old:x:980:\n")
    .append("/etc/shadow", "tiffin-old:!*:20000:::::1:\n");
    let blocks = vec![
        Block {
            account: "tiffin-client1".into(),
            chroot: format!("{ROOT}/client1").into(),
            keys_file: "/etc/tiffin/authorized_keys/tiffin-client1".into(),
            gone: None,
        },
        Block {
            account: "tiffin-old".into(),
            chroot: format!("{ROOT}/old").into(),
            keys_file: "/etc/tiffin/authorized_keys/tiffin-old".into(),
            gone: Some(Gone::Pruned),
        },
    ];
    s.file(
        "/etc/ssh/sshd_config.d/tiffin.conf",
        0,
        0,
        0o644,
        &dropin::render(&blocks, &t.sshd_extra),
    );
    for departed in [Departed::Keep, Departed::Prune] {
        let plan = plan(&t, &s, &opts(departed)).unwrap();
        assert_eq!(plan.actions, vec![], "{departed:?}: {}", plan.render(&t));
    }
}

#[test]
fn missing_include_and_shared_group_are_reported() {
    let t = target(&["client1"]);
    let mut s = provisioned(&t);
    s.file("/etc/ssh/sshd_config", 0, 0, 0o644, "Port 22\nUsePAM yes\n");
    let g = String::from_utf8(s.read(Path::new("/etc/group")).unwrap())
        .unwrap()
        .replace("tiffin-client1:x:990:", "tiffin-client1:x:990:alice");
    s.file("/etc/group", 0, 0, 0o644, &g);
    let plan = plan(&t, &s, &opts(Departed::Keep)).unwrap();
    assert!(plan.actions.is_empty());
    let text = plan.render(&t);
    assert!(
        text.contains("Include /etc/ssh/sshd_config.d/*.conf"),
        "says which line to add: {text}"
    );
    assert!(
        text.contains("group tiffin-client1 also has alice"),
        "{text}"
    );
}

#[test]
fn existing_account_with_a_shell_is_fixed() {
    let t = target(&["client1"]);
    let mut s = provisioned(&t);
    let p = String::from_utf8(s.read(Path::new("/etc/passwd")).unwrap())
        .unwrap()
        .replace(
            "tiffin host client1:/var/lib/tiffin/chroots/client1:/usr/sbin/nologin",
            "tiffin host client1:/home/client1:/bin/bash",
        );
    s.file("/etc/passwd", 0, 0, 0o644, &p);
    let plan = plan(&t, &s, &opts(Departed::Keep)).unwrap();
    assert_eq!(
        plan.actions[0].to_string(),
        "fix account     tiffin-client1: home /home/client1 -> /var/lib/tiffin/chroots/client1; shell /bin/bash -> /usr/sbin/nologin"
    );
}

#[test]
fn someone_elses_account_is_never_taken_over() {
    // An empty prefix makes host "daemon" the system's daemon account.
    let mut t = target(&["daemon"]);
    t.user_prefix = String::new();
    t.hosts[0].account = "daemon".into();
    let mut s = FakeSystem::debian();
    s.append(
        "/etc/passwd",
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
    )
    .append("/etc/group", "daemon:x:1:\n");
    let plan = plan(&t, &s, &opts(Departed::Keep)).unwrap();
    assert!(plan.is_blocked());
    assert!(
        plan.findings[0]
            .message
            .starts_with("account daemon exists and is not tiffin's (home /usr/sbin"),
        "{:?}",
        plan.findings
    );
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::FixAccount { .. }))
    );
}

#[test]
fn a_chroot_that_is_not_a_directory_blocks() {
    let t = target(&["client1"]);
    let mut s = provisioned(&t);
    s.remove(&format!("{ROOT}/client1"));
    s.file(&format!("{ROOT}/client1"), 0, 0, 0o644, "");
    let plan = plan(&t, &s, &opts(Departed::Keep)).unwrap();
    assert!(plan.is_blocked());
    assert!(
        plan.findings[0]
            .message
            .contains("client1 is not a directory (it is a regular file)"),
        "{:?}",
        plan.findings
    );
}

fn blockers(p: &Plan) -> Vec<&str> {
    p.findings
        .iter()
        .filter(|f| f.level == Level::Blocker)
        .map(|f| f.message.as_str())
        .collect()
}

#[test]
fn a_dropin_tiffin_did_not_write_is_never_replaced() {
    let t = target(&["client1"]);
    let mut s = provisioned(&t);
    s.file(
        "/etc/ssh/sshd_config.d/tiffin.conf",
        0,
        0,
        0o644,
        "# the admin's own settings\nPermitRootLogin no\n",
    );
    let plan = plan(&t, &s, &opts(Departed::Keep)).unwrap();
    assert_eq!(
        blockers(&plan),
        [
            "fleet.toml: server.sshd_dropin \"/etc/ssh/sshd_config.d/tiffin.conf\" exists and tiffin did not write it (its first line is not \"# Written by `tiffin provision` …\"): tiffin replaces only a drop-in it wrote; name a new file for it in fleet.toml (such as /etc/ssh/sshd_config.d/tiffin.conf), or move that file away if nothing needs it"
        ]
    );
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::WriteDropin { .. })),
        "{}",
        plan.render(&t)
    );
    s.remove("/etc/ssh/sshd_config.d/tiffin.conf");
    s.symlink("/etc/ssh/sshd_config.d/tiffin.conf");
    let plan = super::plan(&t, &s, &opts(Departed::Keep)).unwrap();
    assert!(
        blockers(&plan)[0]
            .contains("is a symlink: tiffin writes its drop-in only as a regular file")
    );
}

#[test]
fn a_chroot_root_of_someone_else_blocks_and_nothing_is_planned_inside() {
    let t = target(&["client1"]);
    let mut s = FakeSystem::debian();
    s.dir("/var/lib/tiffin", 0, 0, 0o755)
        .dir(ROOT, 1000, 0, 0o775)
        .dir(&format!("{ROOT}/alice"), 1000, 1000, 0o700)
        .file(&format!("{ROOT}/alice/.profile"), 1000, 1000, 0o644, "")
        .file(&format!("{ROOT}/notes.txt"), 1000, 1000, 0o644, "");
    let plan = plan(&t, &s, &opts(Departed::Keep)).unwrap();
    let b = blockers(&plan);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(
        b[0].starts_with("fleet.toml: server.chroot_root \"/var/lib/tiffin/chroots\" holds what tiffin did not put there (\"alice\", \"notes.txt\") and has no .tiffin-chroot-root"),
        "{}",
        b[0]
    );
    let inside: Vec<String> = plan
        .actions
        .iter()
        .map(|a| a.to_string())
        .filter(|a| a.contains(ROOT) && !a.starts_with("create account"))
        .collect();
    assert_eq!(
        inside,
        Vec::<String>::new(),
        "no repair, no host chroot in it"
    );
}

#[test]
fn an_empty_or_published_chroot_root_is_adopted_as_it_is() {
    let t = target(&["client1"]);
    let mut s = provisioned(&t);
    s.remove(&format!("{ROOT}/{CHROOT_ROOT_MARKER}"));
    // publish's lock and a host tree: tiffin's own, though unmarked.
    s.file(&format!("{ROOT}/.publish.lock"), 0, 0, 0o600, "")
        .dir(ROOT, 0, 0, 0o711);
    let plan = plan(&t, &s, &opts(Departed::Keep)).unwrap();
    assert_eq!(
        plan.actions
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        [
            "mark chroot     /var/lib/tiffin/chroots/.tiffin-chroot-root  root:root 0644 (tiffin's from now on: it holds only what tiffin publish wrote)"
        ],
        "adopted, and its mode 0711 left as it is"
    );

    let mut empty = FakeSystem::debian();
    empty
        .dir("/var/lib/tiffin", 0, 0, 0o755)
        .dir(ROOT, 1000, 0, 0o775);
    let plan = super::plan(&t, &empty, &opts(Departed::Keep)).unwrap();
    assert_eq!(
        blockers(&plan),
        [
            "/var/lib/tiffin/chroots is 1000:root 0775: sshd refuses chroots under a directory that is not root-owned or is writable by group or others, and tiffin changes no directory it did not create: fix it with `chown root /var/lib/tiffin/chroots && chmod go-w /var/lib/tiffin/chroots`, or choose another path in fleet.toml"
        ]
    );
    assert!(
        !kinds(&plan).contains(&"repair dir".to_owned()),
        "{:?}",
        kinds(&plan)
    );
    assert!(kinds(&plan).contains(&"mark chroot".to_owned()));
}

#[test]
fn reports_get_a_bounded_tmpfs_once() {
    let t = target(&["client1", "client2", "client3"]);
    let mut s = provisioned(&t);
    let small = Mounted {
        bytes: 4096,
        ..BOUNDED
    };
    s.mount(&format!("{ROOT}/client2/reports"), small).remove(
        "/etc/systemd/system/local-fs.target.wants/var-lib-tiffin-chroots-client3-reports.mount",
    );
    let mut other = BOUNDED;
    other.fs = FsKind::Other;
    s.mount(&format!("{ROOT}/client1/reports"), other);
    let plan = plan(&t, &s, &opts(Departed::Keep)).unwrap();
    assert_eq!(
        plan.actions
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        [
            "remount tmpfs   /var/lib/tiffin/chroots/client2/reports  (size 1024k, 64 inodes, nosuid,nodev,noexec; was size 4k, 64 inodes)",
            "write unit      /etc/systemd/system/var-lib-tiffin-chroots-client3-reports.mount  root:root 0644 (mounts the tmpfs again at boot; systemctl enable)",
        ]
    );
    assert_eq!(
        blockers(&plan),
        [
            "/var/lib/tiffin/chroots/client1/reports has another filesystem mounted on it: tiffin mounts a bounded tmpfs there (what the host can store on the server); unmount it"
        ]
    );
}

#[test]
fn without_systemd_the_plan_says_the_mounts_last_until_reboot() {
    let t = target(&["client1"]);
    let manual = PlanOptions {
        at_boot: AtBoot::Manual,
        ..opts(Departed::Keep)
    };
    let plan = super::plan(&t, &FakeSystem::debian(), &manual).unwrap();
    assert!(!kinds(&plan).contains(&"write unit".to_owned()));
    assert!(kinds(&plan).contains(&"mount tmpfs".to_owned()));
    let text = plan.render(&t);
    assert!(
        text.contains("note: systemd does not manage this server's mounts"),
        "{text}"
    );
    // Mounted already: nothing to do, and no note.
    let mut s = provisioned(&t);
    s.remove("/etc/systemd/system/var-lib-tiffin-chroots-client1-reports.mount");
    let plan = super::plan(&t, &s, &manual).unwrap();
    assert_eq!(plan.actions, vec![]);
    assert!(plan.findings.is_empty(), "{:?}", plan.findings);
}

#[test]
fn a_pruned_host_loses_its_tmpfs_and_unit_before_its_chroot_moves() {
    let t = target(&["client1"]);
    let s = provisioned(&target(&["client1", "client2"]));
    // The drop-in as it was for two hosts; client2 is now gone.
    let plan = plan(&t, &s, &opts(Departed::Prune)).unwrap();
    let k = kinds(&plan);
    let unmount = k
        .iter()
        .position(|a| a == "unmount tmpfs")
        .expect("unmounted");
    let moved = k.iter().position(|a| a == "move chroot").expect("moved");
    assert!(unmount < moved, "{k:?}");
    assert!(
        plan.actions[unmount].to_string().contains(
            "(its host is pruned; the unit /etc/systemd/system/var-lib-tiffin-chroots-client2-reports.mount is disabled and removed)"
        ),
        "{}",
        plan.actions[unmount]
    );
}
