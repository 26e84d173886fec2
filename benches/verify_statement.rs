//! Measures what verifying a signed release costs a host: `check_statement` with a 2-of-3 root (two ed25519 SSHSIG signatures), and the bytes a signed host reads more than an unsigned one.
//!
//! Run: `cargo bench --bench verify_statement`. Prints figures; asserts nothing.

use std::time::{Duration, Instant, SystemTime};

use tiffin::core::trust::{
    AdminKey, STATEMENT_NAMESPACE, Signatures, Statement, TrustRoot, check_statement,
};

fn admin(seed: u8) -> ssh_key::PrivateKey {
    ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]))
}

fn main() {
    let keys: Vec<ssh_key::PrivateKey> = (1..=3).map(admin).collect();
    let root = TrustRoot {
        version: 1,
        threshold: 2,
        keys: keys
            .iter()
            .map(|k| AdminKey::parse(&k.public_key().to_openssh().unwrap()).unwrap())
            .collect(),
    };
    let host = "web-1".parse().unwrap();
    let release: tiffin::core::names::ReleaseId = "a".repeat(64).parse().unwrap();
    let statement = Statement {
        host,
        release: release.clone(),
        seq: 42,
        expires: "2099-01-01T00:00:00Z".into(),
        root: 1,
    }
    .render();
    let sigs = Signatures(
        keys[..2]
            .iter()
            .map(|k| {
                k.sign(
                    STATEMENT_NAMESPACE,
                    ssh_key::HashAlg::Sha512,
                    statement.as_bytes(),
                )
                .unwrap()
            })
            .collect(),
    )
    .render();
    let host = "web-1".parse().unwrap();
    let now = SystemTime::now();
    let rounds = 200;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        check_statement(
            &root,
            statement.as_bytes(),
            sigs.as_bytes(),
            &host,
            &release,
            now,
        )
        .expect("verifies");
        times.push(start.elapsed());
    }
    times.sort();
    let median: Duration = times[rounds / 2];
    println!(
        "verify_statement: 2-of-3 ed25519, median {:.3} ms, max {:.3} ms over {rounds} rounds",
        median.as_secs_f64() * 1e3,
        times[rounds - 1].as_secs_f64() * 1e3
    );
    println!(
        "bytes read when a statement changes: STATEMENT {} + STATEMENT.sig {}; on a no-change poll: the CURRENT line `statement <sha256>`, {} bytes",
        statement.len(),
        sigs.len(),
        "statement ".len() + 64 + 1
    );
}
