use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::LazyLock;

use proptest::prelude::*;
use ssh_key::PrivateKey;
use ssh_key::private::Ed25519Keypair;

use super::*;

/// A test admin's key, the same every run (fixed seed), so the fixtures are deterministic.
fn private(n: u8) -> PrivateKey {
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&[n; 32]));
    key.set_comment(format!("admin{n}@laptop"));
    key
}

fn admin(n: u8) -> AdminKey {
    AdminKey::parse(&private(n).public_key().to_openssh().unwrap()).unwrap()
}

fn root(version: u64, threshold: u32, keys: &[u8]) -> TrustRoot {
    TrustRoot {
        version,
        threshold,
        keys: keys.iter().map(|&n| admin(n)).collect(),
    }
}

fn sign(n: u8, namespace: &str, msg: &[u8]) -> SshSig {
    private(n).sign(namespace, HashAlg::Sha512, msg).unwrap()
}

fn signed_by(keys: &[u8], namespace: &str, msg: &[u8]) -> Signatures {
    Signatures(keys.iter().map(|&n| sign(n, namespace, msg)).collect())
}

fn host(name: &str) -> HostName {
    name.parse().unwrap()
}

fn release(manifest: &str) -> ReleaseId {
    ReleaseId::of_bytes(manifest.as_bytes())
}

fn time(s: &str) -> SystemTime {
    parse_time(s).unwrap()
}

fn statement() -> Statement {
    Statement {
        host: host("client1"),
        release: release("manifest"),
        seq: 5,
        expires: "2027-01-01T00:00:00Z".into(),
        root: 1,
    }
}

const NOW: &str = "2026-06-01T00:00:00Z";

/// A 2-of-3 root, a statement and exactly two signatures: every signature is needed.
struct Fixture {
    root: TrustRoot,
    statement: Vec<u8>,
    sigs: Vec<u8>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let statement = statement().render().into_bytes();
    let sigs = signed_by(&[1, 2], STATEMENT_NAMESPACE, &statement)
        .render()
        .into_bytes();
    Fixture {
        root: root(1, 2, &[1, 2, 3]),
        statement,
        sigs,
    }
});

fn check(statement: &[u8], sigs: &[u8]) -> Result<(Statement, Signers), TrustError> {
    check_statement(
        &FIXTURE.root,
        statement,
        sigs,
        &host("client1"),
        &release("manifest"),
        time(NOW),
    )
}

// --- formats ---

#[test]
fn statement_renders_exactly() {
    let id = release("manifest");
    assert_eq!(
        statement().render(),
        format!(
            "# tiffin statement: signed by the fleet's admins (docs/signing.md)\nformat = 1\nhost = \"client1\"\nrelease = \"{id}\"\nseq = 5\nexpires = \"2027-01-01T00:00:00Z\"\nroot = 1\n"
        )
    );
    let parsed = Statement::parse(statement().render().as_bytes()).unwrap();
    assert_eq!(parsed, statement());
    assert_eq!(parsed.expires_at(), time("2027-01-01T00:00:00Z"));
}

#[test]
fn statements_are_strict() {
    let good = statement().render();
    let long = format!("{good}{}", "#".repeat(MAX_STATEMENT_BYTES));
    for (text, why) in [
        (good.replace("seq = 5", "seq = 05"), "canonical"),
        (good.replace("seq = 5", "seq =  5"), "whole number"),
        (good.replace("seq = 5", "seq = -5"), "whole number"),
        (good.replace("format = 1", "format = 2"), "upgrade tiffin"),
        (
            good.replace("host = \"client1\"", "host = \"Client1\""),
            "invalid host name",
        ),
        (
            good.replace("release = \"", "release = \"0"),
            "invalid release id",
        ),
        (good.replace("00:00:00Z", "01:00:00+01:00"), "UTC time"),
        (
            good.replace("2027-01-01T00:00:00Z", "2027-01-01T00:00:00.5Z"),
            "UTC time",
        ),
        (good.replace("# tiffin", "#tiffin"), "canonical"),
        (good.replace('\n', "\r\n"), "CRLF"),
        (format!("{good}extra = 1\n"), "canonical"),
        (good.trim_end().to_owned(), "canonical"),
        (good.replace("seq = 5\nexpires", "expires"), "no seq line"),
        (long, "larger than"),
    ] {
        let err = Statement::parse(text.as_bytes()).unwrap_err();
        assert!(matches!(err, TrustError::Statement { .. }), "{err:?}");
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
    assert!(Statement::parse(b"\xff\xfe").is_err());
}

#[test]
fn a_hand_built_statement_with_a_bad_expiry_counts_as_expired() {
    let s = Statement {
        expires: "soon".into(),
        ..statement()
    };
    assert_eq!(s.expires_at(), UNIX_EPOCH);
}

#[test]
fn trust_root_round_trips_and_renders_canonically() {
    let r = root(3, 2, &[1, 2]);
    let text = r.render();
    assert_eq!(
        text,
        format!(
            "# tiffin trust root: the admin keys that sign releases, and how many must (docs/signing.md)\nversion = 3\nthreshold = 2\nkeys = [\n    \"{}\",\n    \"{}\",\n]\n",
            admin(1).to_openssh(),
            admin(2).to_openssh()
        )
    );
    assert!(admin(1).to_openssh().ends_with(" admin1@laptop"));
    assert_eq!(TrustRoot::parse(&text).unwrap(), r);
    // What fleet.toml holds (any TOML layout) deserializes to the same root.
    let loose = format!(
        "version = 3\nthreshold = 2\nkeys = [\"{}\", '{}']\n",
        admin(1).to_openssh(),
        admin(2).to_openssh()
    );
    assert_eq!(toml::from_str::<TrustRoot>(&loose).unwrap(), r);
    let err = TrustRoot::parse(&loose).unwrap_err().to_string();
    assert!(err.contains("canonical") && err.contains("line 1"), "{err}");
}

#[test]
fn trust_roots_are_validated() {
    let mut listed_twice = root(1, 1, &[1, 2]);
    listed_twice.keys[1] = AdminKey::parse(&format!(
        "{} another-comment",
        admin(1).to_openssh().rsplit_once(' ').unwrap().0
    ))
    .unwrap();
    let too_many = root(1, 1, &(1..=33).collect::<Vec<u8>>());
    for (r, why) in [
        (root(0, 1, &[1]), "version is 0"),
        (root(1, 0, &[1]), "threshold 0"),
        (root(1, 3, &[1, 2]), "threshold 3 with 2 keys"),
        (root(1, 1, &[]), "threshold 1 with 0 keys"),
        (listed_twice, "listed twice"),
        (too_many, "at most 32"),
    ] {
        let err = r.validate().unwrap_err();
        assert!(err.to_string().contains(why), "{why}: {err}");
        // The same checks hold for a root read from TOML.
        assert!(TrustRoot::parse(&r.render()).is_err(), "{why}");
    }
    let unknown = format!("{}colour = \"red\"\n", root(1, 1, &[1]).render());
    assert!(
        TrustRoot::parse(&unknown)
            .unwrap_err()
            .to_string()
            .contains("colour")
    );
}

#[test]
fn key_of_compares_key_data_not_comment() {
    let r = root(1, 1, &[1, 2]);
    let mut other_comment = private(2).public_key().clone();
    other_comment.set_comment("renamed");
    assert_eq!(r.key_of(&other_comment), Some(&admin(2)));
    assert_eq!(r.key_of(private(3).public_key()), None);
}

#[test]
fn signatures_round_trip_and_re_signing_replaces() {
    let msg = b"hello";
    let sigs = signed_by(&[1, 2], STATEMENT_NAMESPACE, msg);
    let text = sigs.render();
    assert_eq!(text.matches(PEM_BEGIN).count(), 2);
    assert!(text.ends_with(PEM_END));
    let parsed = Signatures::parse(text.as_bytes()).unwrap();
    assert_eq!(parsed.0, sigs.0);
    assert_eq!(parsed.render(), text);
    assert!(Signatures::parse(b"").unwrap().0.is_empty());

    let mut sigs = parsed;
    let again = sign(1, STATEMENT_NAMESPACE, b"renewed");
    sigs.add(again.clone());
    assert_eq!(sigs.0.len(), 2, "the same key's signature is replaced");
    assert_eq!(sigs.0[0], again);
    sigs.add(sign(3, STATEMENT_NAMESPACE, msg));
    assert_eq!(sigs.0.len(), 3);
}

#[test]
fn signature_files_are_strict() {
    let one = sign(1, STATEMENT_NAMESPACE, b"m")
        .to_pem(LineEnding::LF)
        .unwrap();
    let body_line = one.lines().nth(1).unwrap();
    let version_0 = one.replacen("U1NIU0lHAAAAAQ", "U1NIU0lHAAAAAA", 1);
    assert_ne!(version_0, one);
    for (text, why) in [
        (
            format!("note\n{one}"),
            "text outside a signature block at byte 0",
        ),
        (format!("{one}\n"), "text outside a signature block"),
        (format!("{one}\n{one}"), "text outside a signature block"),
        (one.replace('\n', "\r\n"), "CRLF"),
        (
            one.trim_end().to_owned(),
            "no \"-----END SSH SIGNATURE-----\"",
        ),
        (one.replacen(body_line, &body_line[1..], 1), "signature 1"),
        (
            one.replacen(body_line, &format!("{body_line} "), 1),
            "signature 1",
        ),
        (version_0, "SSHSIG version 0"),
        (one.repeat(MAX_SIGNATURES + 1), "more than 32"),
        ("x".repeat(MAX_SIGNATURE_BYTES + 1), "larger than"),
    ] {
        let err = Signatures::parse(text.as_bytes()).unwrap_err();
        assert!(matches!(err, TrustError::Signatures { .. }), "{err:?}");
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
    assert!(Signatures::parse(one.repeat(MAX_SIGNATURES).as_bytes()).is_ok());
}

// --- verification ---

#[test]
fn threshold_two_of_three() {
    let r = root(1, 2, &[1, 2, 3]);
    let msg = b"message";
    let ns = STATEMENT_NAMESPACE;
    let threshold = |sigs: Signatures| match verify(&r, ns, msg, &sigs) {
        Err(TrustError::Threshold {
            got,
            need,
            rejected,
        }) => (got, need, rejected.join("; ")),
        other => panic!("expected a threshold error, got {other:?}"),
    };

    let (got, need, rejected) = threshold(signed_by(&[1], ns, msg));
    assert_eq!((got, need, rejected.as_str()), (1, 2, ""));

    let signers = verify(&r, ns, msg, &signed_by(&[3, 1], ns, msg)).unwrap();
    let mut want = vec![admin(1).fingerprint(), admin(3).fingerprint()];
    want.sort();
    assert_eq!(signers, Signers(want));
    assert!(verify(&r, ns, msg, &signed_by(&[1, 2, 3], ns, msg)).is_ok());

    let (got, _, rejected) = threshold(signed_by(&[2, 2], ns, msg));
    assert_eq!(got, 1);
    assert!(
        rejected.contains("a second one by") && rejected.contains("admin2@laptop"),
        "{rejected}"
    );

    let (got, _, rejected) = threshold(signed_by(&[1, 4], ns, msg));
    assert_eq!(got, 1);
    let outsider = admin(4).fingerprint();
    assert!(
        rejected.contains(&format!("key {outsider} is not one of")),
        "{rejected}"
    );

    let mut sigs = signed_by(&[1], ns, msg);
    sigs.0.push(sign(2, ROOT_NAMESPACE, msg));
    let (got, _, rejected) = threshold(sigs);
    assert_eq!(got, 1);
    assert!(
        rejected.contains("for \"tiffin-root\", not \"tiffin-statement\""),
        "{rejected}"
    );

    let mut sigs = signed_by(&[1], ns, msg);
    sigs.0.push(sign(2, ns, b"another message"));
    let (got, _, rejected) = threshold(sigs);
    assert_eq!(got, 1);
    assert!(
        rejected.contains("does not match the signed bytes"),
        "{rejected}"
    );

    let err = verify(&r, ns, msg, &signed_by(&[4], ns, msg))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "signed by 0 of the trust root's keys, 2 needed (not counted: signature 1: key SHA256:"
        ),
        "{err}"
    );
}

#[test]
fn a_signed_statement_is_accepted() {
    let (parsed, signers) = check(&FIXTURE.statement, &FIXTURE.sigs).unwrap();
    assert_eq!(parsed, statement());
    assert_eq!(signers.0.len(), 2);
}

#[test]
fn statements_for_elsewhere_are_refused() {
    let f = &*FIXTURE;
    let at = |host_name: &str, id: &ReleaseId, now: &str| {
        check_statement(
            &f.root,
            &f.statement,
            &f.sigs,
            &host(host_name),
            id,
            time(now),
        )
    };
    let ours = release("manifest");
    assert!(matches!(
        at("client2", &ours, NOW),
        Err(TrustError::WrongHost { expected, got }) if expected == "client2" && got == "client1"
    ));
    assert!(matches!(
        at("client1", &release("another manifest"), NOW),
        Err(TrustError::WrongRelease { .. })
    ));
    for now in [
        "2027-01-01T00:00:00Z",
        "2027-01-01T00:00:01Z",
        "2030-01-01T00:00:00Z",
    ] {
        assert!(
            matches!(at("client1", &ours, now), Err(TrustError::Expired { ref expires }) if expires == "2027-01-01T00:00:00Z"),
            "{now}"
        );
    }
    assert!(at("client1", &ours, "2026-12-31T23:59:59Z").is_ok());

    // The same keys at root version 2: a statement signed under version 1 is not current.
    let v2 = root(2, 2, &[1, 2, 3]);
    let err = check_statement(
        &v2,
        &f.statement,
        &f.sigs,
        &host("client1"),
        &ours,
        time(NOW),
    );
    assert!(
        matches!(
            err,
            Err(TrustError::WrongRootVersion {
                expected: 2,
                got: 1
            })
        ),
        "{err:?}"
    );
}

#[test]
fn an_unsigned_statement_is_refused_before_it_is_believed() {
    // A forged statement for another host: the error is about the signatures, not the host.
    let forged = Statement {
        host: host("client2"),
        ..statement()
    }
    .render();
    let sigs = signed_by(&[4, 5], STATEMENT_NAMESPACE, forged.as_bytes()).render();
    let err = check(forged.as_bytes(), sigs.as_bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            TrustError::Threshold {
                got: 0,
                need: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        check(&FIXTURE.statement, b""),
        Err(TrustError::Threshold { got: 0, .. })
    ));
}

/// Exhaustive where it is cheap: every bit of both files, and every shorter prefix.
#[test]
fn every_flipped_bit_and_every_truncation_is_refused() {
    let f = &*FIXTURE;
    for in_sigs in [false, true] {
        let target = if in_sigs { &f.sigs } else { &f.statement };
        for i in 0..target.len() {
            for bit in 0..8 {
                let mut changed = target.clone();
                changed[i] ^= 1 << bit;
                let (statement, sigs) = if in_sigs {
                    (&f.statement, &changed)
                } else {
                    (&changed, &f.sigs)
                };
                assert!(
                    check(statement, sigs).is_err(),
                    "sigs {in_sigs}, byte {i}, bit {bit}"
                );
            }
        }
        for len in 0..target.len() {
            let cut = &target[..len];
            let (statement, sigs) = if in_sigs {
                (&f.statement[..], cut)
            } else {
                (cut, &f.sigs[..])
            };
            assert!(
                check(statement, sigs).is_err(),
                "sigs {in_sigs}, cut at {len}"
            );
        }
    }
}

proptest! {
    #[test]
    fn any_changed_statement_byte_is_refused(at in any::<prop::sample::Index>(), change in 1u8..=255) {
        let mut bytes = FIXTURE.statement.clone();
        let i = at.index(bytes.len());
        bytes[i] ^= change;
        prop_assert!(check(&bytes, &FIXTURE.sigs).is_err(), "byte {i} ^ {change}");
    }

    #[test]
    fn any_changed_signature_byte_is_refused(at in any::<prop::sample::Index>(), change in 1u8..=255) {
        let mut bytes = FIXTURE.sigs.clone();
        let i = at.index(bytes.len());
        bytes[i] ^= change;
        prop_assert!(check(&FIXTURE.statement, &bytes).is_err(), "byte {i} ^ {change}");
    }

    #[test]
    fn any_flipped_bit_is_refused(at in any::<prop::sample::Index>(), bit in 0u8..8, in_sigs: bool) {
        let (mut statement, mut sigs) = (FIXTURE.statement.clone(), FIXTURE.sigs.clone());
        let target = if in_sigs { &mut sigs } else { &mut statement };
        let i = at.index(target.len());
        target[i] ^= 1 << bit;
        prop_assert!(check(&statement, &sigs).is_err(), "byte {i} bit {bit}");
    }

    #[test]
    fn truncation_is_refused(at in any::<prop::sample::Index>(), in_sigs: bool) {
        let f = &*FIXTURE;
        if in_sigs {
            let len = at.index(f.sigs.len());
            prop_assert!(check(&f.statement, &f.sigs[..len]).is_err(), "sigs cut at {len}");
        } else {
            let len = at.index(f.statement.len());
            prop_assert!(check(&f.statement[..len], &f.sigs).is_err(), "statement cut at {len}");
        }
    }

    #[test]
    fn statements_round_trip(
        name in "[a-z][a-z0-9-]{0,31}",
        manifest in ".*",
        seq: u64,
        secs in 0u64..253_402_300_799,
        root_version: u64,
    ) {
        let s = Statement {
            host: host(&name),
            release: release(&manifest),
            seq,
            expires: format_time(UNIX_EPOCH + std::time::Duration::from_secs(secs)),
            root: root_version,
        };
        prop_assert_eq!(Statement::parse(s.render().as_bytes()).unwrap(), s);
    }

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
        let _ = Statement::parse(&bytes);
        let _ = Signatures::parse(&bytes);
        let _ = TrustRoot::parse(&String::from_utf8_lossy(&bytes));
        let _ = AdminKey::parse(&String::from_utf8_lossy(&bytes));
        let _ = check_rotation(&FIXTURE.root, &bytes, &bytes);
    }
}

// --- rotation ---

/// Current: v1, 2 of {1, 2, 3}. Next: v2, 2 of {4, 5, 6}.
fn rotate(next: &TrustRoot, signers: &[u8]) -> Result<TrustRoot, TrustError> {
    let bytes = next.render();
    let sigs = signed_by(signers, ROOT_NAMESPACE, bytes.as_bytes()).render();
    check_rotation(&root(1, 2, &[1, 2, 3]), bytes.as_bytes(), sigs.as_bytes())
}

#[test]
fn rotation_needs_both_thresholds() {
    let next = root(2, 2, &[4, 5, 6]);
    assert_eq!(rotate(&next, &[1, 2, 4, 5]).unwrap(), next);
    for (signers, why) in [
        (&[1, 2][..], "by its own keys: signed by 0"),
        (&[1, 2, 3, 4], "by its own keys: signed by 1"),
        (&[4, 5, 6], "by the current root's keys: signed by 0"),
        (&[1, 4, 5], "by the current root's keys: signed by 1"),
    ] {
        let err = rotate(&next, signers).unwrap_err();
        assert!(matches!(err, TrustError::Rotation { .. }), "{err:?}");
        assert!(err.to_string().contains(why), "{signers:?}: {err}");
    }
    // Keys kept across the rotation count on both sides.
    let overlapping = root(2, 2, &[2, 3, 7]);
    assert!(rotate(&overlapping, &[2, 3]).is_ok());
}

#[test]
fn rotation_goes_one_version_up() {
    let all = [1, 2, 3, 4, 5, 6];
    for (version, why) in [(3, "one version at a time"), (1, "never goes back")] {
        let err = rotate(&root(version, 2, &[4, 5, 6]), &all)
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{version}: {err}");
    }
    let from_v5 = |version| {
        let bytes = root(version, 2, &[4, 5, 6]).render();
        let sigs = signed_by(&all, ROOT_NAMESPACE, bytes.as_bytes()).render();
        check_rotation(&root(5, 2, &[1, 2, 3]), bytes.as_bytes(), sigs.as_bytes())
    };
    assert!(
        from_v5(4)
            .unwrap_err()
            .to_string()
            .contains("never goes back")
    );
    assert!(from_v5(6).is_ok());
}

#[test]
fn a_rotation_signed_as_a_statement_does_not_count() {
    let next = root(2, 2, &[4, 5, 6]).render();
    let sigs = signed_by(&[1, 2, 4, 5], STATEMENT_NAMESPACE, next.as_bytes()).render();
    let err = check_rotation(&root(1, 2, &[1, 2, 3]), next.as_bytes(), sigs.as_bytes());
    assert!(err.unwrap_err().to_string().contains("not \"tiffin-root\""));
}

// --- keys and ssh-keygen interop ---

/// From the ssh-key crate's test data (tests/examples/id_sk_ed25519_2.pub and
/// sshsig_sk_ed25519): a FIDO key and its signature of "testing" in namespace "example".
const SK_ED25519_PUB: &str = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAINSoElFleH+nN83FoLqqepJjN+y7Gs5lrn7qXjBqQZyuAAAABHNzaDo= user@example.com";
const SK_ED25519_SIG: &str = "-----BEGIN SSH SIGNATURE-----
U1NIU0lHAAAAAQAAAEoAAAAac2stc3NoLWVkMjU1MTlAb3BlbnNzaC5jb20AAAAg1KgSUW
V4f6c3zcWguqp6kmM37LsazmWufupeMGpBnK4AAAAEc3NoOgAAAAdleGFtcGxlAAAAAAAA
AAZzaGE1MTIAAABnAAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAQC9WcLb5NG
XRdCOHinQIS/MxdnAx7SQMYnyOt5q4+huTWh/Zk/UvWhP+wXl/ikNPlDpgliRq6o3VyKqS
LLo9lQYBAAAACQ==
-----END SSH SIGNATURE-----
";
/// From the same test data (id_rsa_3072.pub).
const RSA_PUB: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQCmjkeMm8k3JkNrf16eb5pG4bc77B6Mt3VN4saltsRV8vASpyWa/PlBgdaeldOaNJ5NK0gqU3KyiUNzHbdcc8572e7IUBDJS/rlaWARiSL4aos2VbNX0k56Z5zYp9m/bq5m9/mlb+PQkNBjIhimgpYNiq2TwBiYeA6tLb79cPtHA0cX5BLk/a5oUpLsiR4kI/f+Q98vVDKasKXXVh5YLkLobrruDB6er2A9fOcIUF0O4JCRLh/Dc161gE3fQrYTMQenbppZzfxrZfQ8YwLPvKjnqm+XRX+pbTtaJuj0EgTSzUK+EZxoSw8CNwiZpxrjwecTMVQ8w/srQmh4ABGuTqk0wP8HcI7hg+fpBv7kiejh5X/Oehxt+Puu85u9GVXb1a0av/vhJvUCBcuISvCA/z1wVJ0xdLhb1/ZiTDdTzyNbZQ0OQijzK+e1SlkNhp+3eGVZu3pNZvnTppwIXv3wg6kV1HodkWGgh1ayY7Buc52Z8okDYqvJat5CzOj5OaQNr/k= user@example.com";

#[test]
fn fido_keys_are_admin_keys_and_their_signatures_verify() {
    let key = AdminKey::parse(SK_ED25519_PUB).unwrap();
    assert_eq!(key.comment(), "user@example.com");
    assert_eq!(key.to_openssh(), SK_ED25519_PUB);
    let r = TrustRoot {
        version: 1,
        threshold: 1,
        keys: vec![key.clone()],
    };
    let sigs = Signatures::parse(SK_ED25519_SIG.as_bytes()).unwrap();
    assert_eq!(
        verify(&r, "example", b"testing", &sigs).unwrap(),
        Signers(vec![key.fingerprint()])
    );
    assert!(verify(&r, "example", b"testinG", &sigs).is_err());
}

#[test]
fn only_ed25519_keys_are_accepted() {
    let err = AdminKey::parse(RSA_PUB).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TrustError::Key { .. }));
    assert!(text.contains("ssh-rsa keys are not accepted"), "{text}");
    assert!(
        text.contains("ssh-ed25519 or sk-ssh-ed25519@openssh.com"),
        "{text}"
    );
    let line = admin(1).to_openssh();
    assert_eq!(AdminKey::parse(&format!("  {line}\n")).unwrap(), admin(1));
    let base = line.rsplit_once(' ').unwrap().0;
    for bad in [
        String::new(),
        "ssh-ed25519".into(),
        "ssh-ed25519 AAAA".into(),
        format!("{base} say \"hi\""),
        format!("{base} back\\slash"),
        format!("{base} bell\x07"),
        format!("restrict {line}"),
    ] {
        assert!(AdminKey::parse(&bad).is_err(), "{bad:?}");
    }
    // Serialized as its OpenSSH line.
    let json = serde_json::to_string(&admin(1)).unwrap();
    assert_eq!(json, format!("{line:?}"));
    assert_eq!(serde_json::from_str::<AdminKey>(&json).unwrap(), admin(1));
    assert!(serde_json::from_str::<AdminKey>(&format!("{RSA_PUB:?}")).is_err());
}

/// Runs the real ssh-keygen (openssh-client); its absence fails the test.
fn ssh_keygen(args: &[&str], dir: &Path, stdin: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = Command::new("ssh-keygen")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("this test needs ssh-keygen (openssh-client) on PATH");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// `ssh-keygen -t ed25519 -N PASSPHRASE -f DIR/NAME`: the private key's path.
fn new_key(dir: &Path, name: &str, passphrase: &str) -> PathBuf {
    let out = ssh_keygen(
        &[
            "-q", "-t", "ed25519", "-N", passphrase, "-C", name, "-f", name,
        ],
        dir,
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join(name)
}

fn public_line(key: &Path) -> String {
    std::fs::read_to_string(key.with_extension("pub")).unwrap()
}

#[test]
fn ssh_keygen_verifies_what_tiffin_signs() {
    let dir = tempfile::tempdir().unwrap();
    let key = new_key(dir.path(), "admin", "");
    let msg = statement().render();
    let sig = sign_with_key_file(&key, STATEMENT_NAMESPACE, msg.as_bytes()).unwrap();
    std::fs::write(
        dir.path().join("statement.sig"),
        Signatures(vec![sig]).render(),
    )
    .unwrap();
    let line = public_line(&key);
    let key_only = line.rsplit_once(' ').unwrap().0;
    std::fs::write(
        dir.path().join("allowed_signers"),
        format!("admin {key_only}\n"),
    )
    .unwrap();
    let verify_with = |namespace: &str, msg: &[u8]| {
        let args = [
            "-Y",
            "verify",
            "-f",
            "allowed_signers",
            "-I",
            "admin",
            "-n",
            namespace,
            "-s",
            "statement.sig",
        ];
        ssh_keygen(&args, dir.path(), msg)
    };
    let out = verify_with(STATEMENT_NAMESPACE, msg.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("Good \"tiffin-statement\" signature for admin")
    );
    // And ssh-keygen refuses it for other bytes or another namespace, so the test means something.
    assert!(!verify_with(STATEMENT_NAMESPACE, b"other").status.success());
    assert!(!verify_with(ROOT_NAMESPACE, msg.as_bytes()).status.success());
}

#[test]
fn tiffin_verifies_what_ssh_keygen_signs() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        new_key(dir.path(), "alice", ""),
        new_key(dir.path(), "bob", ""),
    );
    let r = TrustRoot {
        version: 1,
        threshold: 2,
        keys: vec![
            AdminKey::parse(&public_line(&alice)).unwrap(),
            AdminKey::parse(&public_line(&bob)).unwrap(),
        ],
    };
    // The fingerprint is the one `ssh-keygen -l` shows.
    let listed = ssh_keygen(&["-l", "-f", "alice.pub"], dir.path(), b"");
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert_eq!(
        listed.split(' ').nth(1),
        Some(r.keys[0].fingerprint().as_str())
    );

    let msg = statement().render();
    let by_alice =
        sign_with_ssh_keygen("ssh-keygen", &alice, STATEMENT_NAMESPACE, msg.as_bytes()).unwrap();
    let mut sigs = Signatures(vec![by_alice]);
    assert!(matches!(
        verify(&r, STATEMENT_NAMESPACE, msg.as_bytes(), &sigs),
        Err(TrustError::Threshold {
            got: 1,
            need: 2,
            ..
        })
    ));
    sigs.add(
        sign_with_ssh_keygen("ssh-keygen", &bob, STATEMENT_NAMESPACE, msg.as_bytes()).unwrap(),
    );
    let signers = verify(&r, STATEMENT_NAMESPACE, msg.as_bytes(), &sigs).unwrap();
    assert_eq!(signers.0.len(), 2);

    // The files ssh-keygen writes, concatenated as they are (the signed-repository flow).
    std::fs::write(dir.path().join("statement"), &msg).unwrap();
    let mut file = Vec::new();
    for key in ["alice", "bob"] {
        let out = ssh_keygen(
            &[
                "-Y",
                "sign",
                "-f",
                key,
                "-n",
                STATEMENT_NAMESPACE,
                "statement",
            ],
            dir.path(),
            b"",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        file.extend(std::fs::read(dir.path().join("statement.sig")).unwrap());
        std::fs::remove_file(dir.path().join("statement.sig")).unwrap();
    }
    let (parsed, signers) = check_statement(
        &r,
        msg.as_bytes(),
        &file,
        &host("client1"),
        &release("manifest"),
        time(NOW),
    )
    .unwrap();
    assert_eq!(parsed, statement());
    assert_eq!(signers.0.len(), 2);
}

#[test]
fn signing_failures_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let locked = new_key(dir.path(), "locked", "a passphrase");
    let err = sign_with_key_file(&locked, STATEMENT_NAMESPACE, b"m")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("passphrase") && err.contains("ssh-keygen"),
        "{err}"
    );

    let missing = dir.path().join("missing");
    let err = sign_with_key_file(&missing, STATEMENT_NAMESPACE, b"m").unwrap_err();
    assert!(matches!(err, TrustError::Sign { .. }), "{err:?}");
    let err = sign_with_ssh_keygen("ssh-keygen", &missing, STATEMENT_NAMESPACE, b"m").unwrap_err();
    assert!(err.to_string().contains("-Y sign` failed"), "{err}");
    let err = sign_with_ssh_keygen(
        "/nonexistent/ssh-keygen",
        &locked,
        STATEMENT_NAMESPACE,
        b"m",
    )
    .unwrap_err();
    assert!(err.to_string().contains("install openssh-client"), "{err}");
}
