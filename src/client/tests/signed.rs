//! Tests of a signed host against the in-memory chroot: only what the admins signed for this host, unexpired and not older than what it runs, is applied; a no-change poll costs what an unsigned one does; rotations are followed.

use super::*;
use crate::core::trust::{
    AdminKey, ROOT_NAMESPACE, STATEMENT_NAMESPACE, Signatures, Statement, TrustRoot,
};

/// An admin key from a fixed seed.
fn admin(seed: u8) -> ssh_key::PrivateKey {
    ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]))
}

fn root(version: u64, threshold: u32, keys: &[&ssh_key::PrivateKey]) -> TrustRoot {
    TrustRoot {
        version,
        threshold,
        keys: keys
            .iter()
            .map(|k| AdminKey::parse(&k.public_key().to_openssh().unwrap()).unwrap())
            .collect(),
    }
}

fn sign(keys: &[&ssh_key::PrivateKey], namespace: &str, msg: &[u8]) -> Vec<u8> {
    let sigs = Signatures(
        keys.iter()
            .map(|k| k.sign(namespace, ssh_key::HashAlg::Sha512, msg).unwrap())
            .collect(),
    );
    sigs.render().into_bytes()
}

/// A fixture pinned to a 1-of-1 root of `admin(1)`.
fn signed_fixture() -> Fixture {
    let mut f = Fixture::new();
    f.cfg.trust = Some(root(1, 1, &[&admin(1)]));
    f
}

/// Signs `id` for `host` with `keys`, installs STATEMENT(.sig) and CURRENT's statement line.
fn approve(
    f: &mut Fixture,
    id: &ReleaseId,
    host: &str,
    seq: u64,
    expires: &str,
    keys: &[&ssh_key::PrivateKey],
) {
    let statement = Statement {
        host: host.parse().unwrap(),
        release: id.clone(),
        seq,
        expires: expires.into(),
        root: 1,
    }
    .render();
    f.remote.put("/STATEMENT", statement.as_bytes());
    f.remote.put(
        "/STATEMENT.sig",
        sign(keys, STATEMENT_NAMESPACE, statement.as_bytes()),
    );
    let line = crate::core::hash::sha256_hex(statement.as_bytes());
    f.remote
        .put("/CURRENT", format!("{id}\nstatement {line}\n"));
}

const LATER: &str = "2027-06-01T00:00:00Z";

#[test]
fn a_release_signed_for_this_host_is_applied_and_its_signers_reported() {
    let mut f = signed_fixture();
    let id = f.publish(&base_files());
    approve(&mut f, &id, "client1", 1, LATER, &[&admin(1)]);
    f.poll().unwrap();
    let report = f.report();
    assert_eq!(report.result, PullResult::Ok);
    assert_eq!(report.signed_seq, Some(1));
    assert_eq!(report.signed_expires.as_deref(), Some(LATER));
    assert_eq!(report.signers.len(), 1);
    assert!(report.signers[0].starts_with("SHA256:"));
}

#[test]
fn an_unsigned_release_is_never_applied_by_a_signed_host() {
    let mut f = signed_fixture();
    f.publish(&base_files());
    let err = f.poll().unwrap_err().to_string();
    assert!(err.contains("is not signed"), "{err}");
    assert_eq!(f.calls(), "", "nothing rebuilt");
    assert!(
        !f.root().join("etc/app/secret").exists(),
        "nothing deployed"
    );
    assert_eq!(f.report().result, PullResult::Failed);
}

#[test]
fn a_forged_release_a_foreign_key_another_host_or_an_expiry_are_refused() {
    for case in ["forged", "foreign key", "other host", "expired"] {
        let mut f = signed_fixture();
        let id = f.publish(&base_files());
        let (host, key, expires) = match case {
            "foreign key" => ("client1", admin(2), LATER),
            "other host" => ("client2", admin(1), LATER),
            // The fixture's clock is 2027-01-15 (T0).
            "expired" => ("client1", admin(1), "2026-01-01T00:00:00Z"),
            _ => ("client1", admin(1), LATER),
        };
        approve(&mut f, &id, host, 1, expires, &[&key]);
        if case == "forged" {
            // Root on the server edits a file and re-hashes the MANIFEST: a new id, which the
            // statement does not name.
            let mut files = base_files();
            files[2].1 = b"evil\n";
            let forged = f.publish_with_seq(&files, 1);
            let text = String::from_utf8(f.remote.files["/STATEMENT"].clone()).unwrap();
            let hash = crate::core::hash::sha256_hex(text.as_bytes());
            f.remote
                .put("/CURRENT", format!("{forged}\nstatement {hash}\n"));
        }
        let err = f.poll().unwrap_err().to_string();
        let expected = match case {
            "expired" => "expired at 2026-01-01T00:00:00Z",
            _ => "is refused",
        };
        assert!(err.contains(expected), "{case}: {err}");
        assert_eq!(f.calls(), "", "{case}: nothing rebuilt");
        assert!(
            !f.root().join("etc/app/secret").exists(),
            "{case}: nothing deployed"
        );
    }
}

#[test]
fn an_older_signed_release_is_refused_as_a_rollback() {
    let mut f = signed_fixture();
    let old = f.publish(&base_files());
    approve(&mut f, &old, "client1", 1, LATER, &[&admin(1)]);
    f.poll().unwrap();
    let new = f.publish(&[("config/flake.nix", b"{ v = 2; }\n", 0o644)]);
    approve(&mut f, &new, "client1", 2, LATER, &[&admin(1)]);
    f.poll().unwrap();
    // The server serves the old, validly signed release again.
    approve(&mut f, &old, "client1", 1, LATER, &[&admin(1)]);
    let err = f.poll().unwrap_err().to_string();
    assert!(err.contains("refusing a rollback"), "{err}");
    assert_eq!(f.state().applied.unwrap().id, new);
}

#[test]
fn a_no_change_poll_of_a_signed_host_reads_no_statement() {
    let mut f = signed_fixture();
    let id = f.publish(&base_files());
    approve(&mut f, &id, "client1", 1, LATER, &[&admin(1)]);
    f.poll().unwrap();
    f.poll().unwrap();
    assert_eq!(
        f.remote.log,
        vec![
            Op::Read("/CURRENT".into()),
            Op::Write("/reports/status.toml".into()),
        ],
        "the same requests as an unsigned host"
    );
}

#[test]
fn a_rotation_signed_by_both_thresholds_is_followed_and_a_lone_one_is_not() {
    let (old, new) = (admin(1), admin(3));
    let next = root(2, 1, &[&new]).render();
    for (signers, adopted) in [(vec![&old, &new], true), (vec![&new], false)] {
        let mut f = signed_fixture();
        f.remote.put("/trust/root-2.toml", next.as_bytes());
        f.remote.put(
            "/trust/root-2.sig",
            sign(&signers, ROOT_NAMESPACE, next.as_bytes()),
        );
        let id = f.publish(&base_files());
        let statement = Statement {
            host: "client1".parse().unwrap(),
            release: id.clone(),
            seq: 1,
            expires: LATER.into(),
            root: 2,
        }
        .render();
        f.remote.put("/STATEMENT", statement.as_bytes());
        f.remote.put(
            "/STATEMENT.sig",
            sign(&[&new], STATEMENT_NAMESPACE, statement.as_bytes()),
        );
        let line = crate::core::hash::sha256_hex(statement.as_bytes());
        f.remote
            .put("/CURRENT", format!("{id}\nstatement {line}\n"));
        let polled = f.poll();
        assert_eq!(polled.is_ok(), adopted, "{polled:?}");
        let kept = f
            .cfg
            .state_dir
            .join(crate::client::signed::ADOPTED_ROOT_FILE);
        assert_eq!(kept.exists(), adopted);
    }
}
