//! Signed releases: the fleet's root of trust (admin keys, threshold), the statement admins sign per host, and SSHSIG signing and verification.
//!
//! Signatures are OpenSSH's SSHSIG (`ssh-keygen -Y sign`), made and checked by the `ssh-key`
//! crate, so an admin signs with the key they already have (a file, ssh-agent, a FIDO token)
//! and anyone can check a signature with `ssh-keygen -Y verify`. Everything signed has one
//! canonical byte form: a parser accepts only what the renderer writes, so the bytes a host
//! checks are the bytes the admins saw, and no two files mean the same thing.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ssh_key::{Algorithm, HashAlg, LineEnding, PublicKey, SshSig, public::KeyData};

use crate::core::names::{HostName, ReleaseId};
use crate::core::settings::{format_time, parse_time};
use crate::core::untrusted::{FIELD_MAX, harmful, one_line};

/// The SSHSIG namespace of a statement: a signature made for anything else (a git commit, a
/// file, a root) cannot be replayed as one.
pub const STATEMENT_NAMESPACE: &str = "tiffin-statement";
/// The SSHSIG namespace of a root rotation.
pub const ROOT_NAMESPACE: &str = "tiffin-root";
/// The most signature blocks a signature file may hold (bounded input: each costs a verification).
pub const MAX_SIGNATURES: usize = 32;
/// The largest signature file read (an ed25519 block is about 300 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 64 * 1024;
/// The largest statement read (a real one is under 300 bytes).
pub const MAX_STATEMENT_BYTES: usize = 4096;

/// The most admin keys a root names (so a root's verification stays bounded too).
const MAX_ROOT_KEYS: usize = 32;
/// The largest root read from a rotation (32 keys with long comments fit easily).
const MAX_ROOT_BYTES: usize = 64 * 1024;
/// The statement format this tiffin writes and reads.
const STATEMENT_FORMAT: u64 = 1;
const STATEMENT_HEADER: &str =
    "# tiffin statement: signed by the fleet's admins (docs/signing.md)\n";
const ROOT_HEADER: &str =
    "# tiffin trust root: the admin keys that sign releases, and how many must (docs/signing.md)\n";
const PEM_BEGIN: &str = "-----BEGIN SSH SIGNATURE-----\n";
const PEM_END: &str = "-----END SSH SIGNATURE-----\n";
/// The key types an admin may hold: ed25519 and its FIDO form. RSA and ECDSA are refused so
/// the fleet has one signature scheme to reason about (and no RSA-SHA1 corner).
const ACCEPTED_TYPES: &str = "ssh-ed25519 or sk-ssh-ed25519@openssh.com (FIDO); make one with `ssh-keygen -t ed25519` or `ssh-keygen -t ed25519-sk`";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("admin key {line:?}: {message}")]
    Key { line: String, message: String },
    #[error("trust root: {message}")]
    Root { message: String },
    #[error("statement: {message}")]
    Statement { message: String },
    #[error("signature file: {message}")]
    Signatures { message: String },
    #[error(
        "signed by {got} of the trust root's keys, {need} needed{}; have more admins sign (docs/signing.md)",
        not_counted(.rejected)
    )]
    Threshold {
        got: usize,
        need: u32,
        /// Why each signature that did not count was refused.
        rejected: Vec<String>,
    },
    #[error(
        "statement is for host {got:?}, not {expected:?}: the server offered another host's signed release"
    )]
    WrongHost { expected: String, got: String },
    #[error(
        "statement signs release {got}, but the release offered is {expected}: the MANIFEST is not the one the admins signed"
    )]
    WrongRelease { expected: String, got: String },
    #[error(
        "statement expired at {expires}: nothing new is applied until the admins sign a fresh one (renewing does not re-apply)"
    )]
    Expired { expires: String },
    #[error(
        "statement is signed under trust root version {got}, but this host trusts version {expected}: re-sign it under version {expected}"
    )]
    WrongRootVersion { expected: u64, got: u64 },
    #[error("root rotation: {message}")]
    Rotation { message: String },
    #[error("signing with {key}: {message}")]
    Sign { key: String, message: String },
}

/// `; not counted: …` for a threshold error, or nothing when every signature counted.
fn not_counted(rejected: &[String]) -> String {
    if rejected.is_empty() {
        String::new()
    } else {
        format!(" (not counted: {})", rejected.join("; "))
    }
}

/// An admin's public key: ed25519 or sk-ssh-ed25519@openssh.com (FIDO) only.
///
/// Equality includes the comment (two roots are equal when they render the same); whether a
/// signature is by this key compares key data only ([`TrustRoot::key_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminKey(PublicKey);

impl AdminKey {
    /// Parses one OpenSSH public key line (`ssh-ed25519 AAAA… comment`, as in a `.pub` file;
    /// surrounding whitespace is ignored).
    pub fn parse(openssh_line: &str) -> Result<AdminKey, TrustError> {
        let bad = |message: String| TrustError::Key {
            line: one_line(openssh_line, 100),
            message,
        };
        let key = PublicKey::from_openssh(openssh_line.trim()).map_err(|e| {
            bad(format!(
                "not an OpenSSH public key line ({e}); expected \"ssh-ed25519 AAAA… comment\" as in a .pub file"
            ))
        })?;
        match key.algorithm() {
            Algorithm::Ed25519 | Algorithm::SkEd25519 => {}
            other => {
                return Err(bad(format!(
                    "{other} keys are not accepted: an admin key is {ACCEPTED_TYPES}"
                )));
            }
        }
        // The line is written into a root's TOML as a basic string without escapes, so its
        // canonical form never depends on a TOML library's quoting choices.
        let comment = key.comment().as_str().unwrap_or_default();
        if comment.chars().any(|c| harmful(c) || c == '"' || c == '\\') {
            return Err(bad(
                "its comment holds a quote, a backslash or a control character; edit the comment (the text after the key)".into(),
            ));
        }
        Ok(AdminKey(key))
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint(HashAlg::Sha256).to_string()
    }

    pub fn comment(&self) -> &str {
        self.0.comment().as_str_lossy()
    }

    /// The key as one OpenSSH line (`type base64 comment`).
    pub fn to_openssh(&self) -> String {
        // Encoding a parsed ed25519 key cannot fail (it fails only on lengths over 4 GiB).
        self.0
            .to_openssh()
            .expect("an ed25519 public key always encodes")
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.0
    }
}

impl Serialize for AdminKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_openssh())
    }
}

impl<'de> Deserialize<'de> for AdminKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        AdminKey::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The fleet's root of trust: who may sign, how many must.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRoot {
    /// Grows by one at each rotation; a host never accepts a lower one.
    pub version: u64,
    /// How many distinct keys must sign (k of n).
    pub threshold: u32,
    pub keys: Vec<AdminKey>,
}

impl TrustRoot {
    /// version ≥ 1; 1 ≤ threshold ≤ keys.len(); keys distinct (by key data); at most 32 keys.
    pub fn validate(&self) -> Result<(), TrustError> {
        let bad = |message: String| Err(TrustError::Root { message });
        if self.version == 0 {
            return bad("version is 0; the first root is version 1".into());
        }
        if self.keys.len() > MAX_ROOT_KEYS {
            return bad(format!(
                "{} keys listed; a root names at most {MAX_ROOT_KEYS}",
                self.keys.len()
            ));
        }
        if self.threshold == 0 || self.threshold as usize > self.keys.len() {
            return bad(format!(
                "threshold {} with {} keys: it must be at least 1 and at most the number of keys",
                self.threshold,
                self.keys.len()
            ));
        }
        for (i, key) in self.keys.iter().enumerate() {
            let first = self.keys.iter().position(|k| same_key(k, key.0.key_data()));
            if first != Some(i) {
                return bad(format!(
                    "key {} ({}) is listed twice; each admin key counts once, so list it once",
                    key.fingerprint(),
                    key.comment()
                ));
            }
        }
        Ok(())
    }

    /// Canonical TOML (what a rotation signs): a comment line, `version`, `threshold`, then
    /// `keys` one per line.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{ROOT_HEADER}version = {}\nthreshold = {}\nkeys = [\n",
            self.version, self.threshold
        );
        for key in &self.keys {
            let _ = writeln!(out, "    \"{}\",", key.to_openssh());
        }
        out.push_str("]\n");
        out
    }

    /// Strict: render(parse(b)) must equal b; validated.
    pub fn parse(text: &str) -> Result<TrustRoot, TrustError> {
        let bad = |message: String| TrustError::Root { message };
        if text.len() > MAX_ROOT_BYTES {
            return Err(bad(format!("larger than {MAX_ROOT_BYTES} bytes")));
        }
        let root: TrustRoot =
            toml::from_str(text).map_err(|e| bad(one_line(&e.to_string(), FIELD_MAX)))?;
        root.validate()?;
        let canonical = root.render();
        if canonical != text {
            return Err(bad(format!(
                "not in canonical form ({}); a signed root must be exactly what tiffin writes, so re-create it rather than edit it",
                first_difference(&canonical, text)
            )));
        }
        Ok(root)
    }

    /// The key of `sig` if it is one of this root's (compared by key data, not comment).
    pub fn key_of(&self, key: &PublicKey) -> Option<&AdminKey> {
        self.key_of_data(key.key_data())
    }

    fn key_of_data(&self, key: &KeyData) -> Option<&AdminKey> {
        self.keys.iter().find(|k| same_key(k, key))
    }
}

fn same_key(admin: &AdminKey, key: &KeyData) -> bool {
    admin.0.key_data() == key
}

/// Where two texts first differ, for a person: `line N is "…", expected "…"`.
fn first_difference(want: &str, got: &str) -> String {
    let (mut want_lines, mut got_lines) = (want.split_inclusive('\n'), got.split_inclusive('\n'));
    let mut n = 1;
    loop {
        match (want_lines.next(), got_lines.next()) {
            (None, None) => return "it differs".into(),
            (w, g) if w == g => n += 1,
            (w, g) => {
                let show = |l: Option<&str>| {
                    l.map_or("the end".into(), |l| format!("{:?}", one_line(l, 100)))
                };
                return format!("line {n} is {}, expected {}", show(g), show(w));
            }
        }
    }
}

/// What the admins sign for one host: this release, at this seq, until then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub host: HostName,
    pub release: ReleaseId,
    /// Grows with every statement for the host, so an older signed one cannot come back.
    pub seq: u64,
    /// RFC 3339, UTC, whole seconds (crate::core::settings::format_time).
    pub expires: String,
    /// The version of the root it is signed under.
    pub root: u64,
}

impl Statement {
    /// Canonical bytes: a comment line, then `format`, `host`, `release`, `seq`, `expires`,
    /// `root`, one per line (TOML, so a person can read it; parsed strictly, never as TOML).
    pub fn render(&self) -> String {
        format!(
            "{STATEMENT_HEADER}format = {STATEMENT_FORMAT}\nhost = \"{}\"\nrelease = \"{}\"\nseq = {}\nexpires = \"{}\"\nroot = {}\n",
            self.host, self.release, self.seq, self.expires, self.root
        )
    }

    /// Strict and canonical: at most MAX_STATEMENT_BYTES, UTF-8, render(parse(b)) == b, expires parses.
    pub fn parse(bytes: &[u8]) -> Result<Statement, TrustError> {
        let bad = |message: String| TrustError::Statement { message };
        if bytes.len() > MAX_STATEMENT_BYTES {
            return Err(bad(format!("larger than {MAX_STATEMENT_BYTES} bytes")));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
        if text.contains('\r') {
            return Err(bad(
                "it has CRLF line ends; sign the LF form tiffin writes (with git: core.autocrlf=false)".into(),
            ));
        }
        // Read each field from its fixed line; the comparison with render() below refuses
        // anything else (spacing, order, extra lines, leading zeros).
        let mut lines = text.split('\n').skip(1);
        let mut field = |key: &str| {
            let line = lines.next().unwrap_or_default();
            line.strip_prefix(key)
                .and_then(|l| l.strip_prefix(" = "))
                .map(|v| v.trim_matches('"'))
                .ok_or_else(|| {
                    bad(format!(
                        "no {key} line where expected (found {:?})",
                        one_line(line, 100)
                    ))
                })
        };
        let number = |key: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{key} {:?} is not a whole number", one_line(v, 30))))
        };
        let format = number("format", field("format")?)?;
        if format != STATEMENT_FORMAT {
            return Err(bad(format!(
                "format {format}: this tiffin reads format {STATEMENT_FORMAT}; upgrade tiffin"
            )));
        }
        // The server wrote these bytes: what the errors quote is shown, never sent to a terminal.
        let quoted = |e: crate::core::names::NameError| bad(one_line(&e.to_string(), FIELD_MAX));
        let host: HostName = field("host")?.parse().map_err(quoted)?;
        let release: ReleaseId = field("release")?.parse().map_err(quoted)?;
        let seq = number("seq", field("seq")?)?;
        let expires = field("expires")?.to_owned();
        if parse_time(&expires).map(format_time).as_deref() != Some(expires.as_str()) {
            return Err(bad(format!(
                "expires {:?} is not a UTC time in whole seconds like \"2027-01-01T00:00:00Z\"",
                one_line(&expires, 40)
            )));
        }
        let root = number("root", field("root")?)?;
        let statement = Statement {
            host,
            release,
            seq,
            expires,
            root,
        };
        let canonical = statement.render();
        if canonical != text {
            return Err(bad(format!(
                "not in canonical form ({}); sign exactly what tiffin writes",
                first_difference(&canonical, text)
            )));
        }
        Ok(statement)
    }

    /// When it expires; a time that does not parse (only a hand-built Statement can hold one)
    /// counts as long past, so such a statement fails closed.
    pub fn expires_at(&self) -> SystemTime {
        parse_time(&self.expires).unwrap_or(UNIX_EPOCH)
    }
}

/// Concatenated armored SSHSIG blocks (`-----BEGIN SSH SIGNATURE-----`), one per signer.
#[derive(Debug, Clone)]
pub struct Signatures(pub Vec<SshSig>);

impl Signatures {
    /// Bounded: ≤ MAX_SIGNATURE_BYTES, ≤ MAX_SIGNATURES blocks; text outside blocks refused.
    ///
    /// Each block must be exactly what `ssh-keygen -Y sign` writes (LF line ends, 70 columns),
    /// so a file cannot be changed without its meaning changing too.
    pub fn parse(bytes: &[u8]) -> Result<Signatures, TrustError> {
        let bad = |message: String| TrustError::Signatures { message };
        if bytes.len() > MAX_SIGNATURE_BYTES {
            return Err(bad(format!("larger than {MAX_SIGNATURE_BYTES} bytes")));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
        if text.contains('\r') {
            return Err(bad(
                "it has CRLF line ends; convert it to LF (with git: core.autocrlf=false)".into(),
            ));
        }
        let mut sigs = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let n = sigs.len() + 1;
            if !rest.starts_with(PEM_BEGIN) {
                return Err(bad(format!(
                    "text outside a signature block at byte {} ({:?}); the file holds only `ssh-keygen -Y sign` output, concatenated",
                    text.len() - rest.len(),
                    one_line(rest.lines().next().unwrap_or_default(), 60)
                )));
            }
            if sigs.len() == MAX_SIGNATURES {
                return Err(bad(format!("more than {MAX_SIGNATURES} signatures")));
            }
            let end = rest.find(PEM_END).ok_or_else(|| {
                bad(format!(
                    "signature {n} has no \"-----END SSH SIGNATURE-----\" line (a truncated file?)"
                ))
            })?;
            let (block, after) = rest.split_at(end + PEM_END.len());
            sigs.push(parse_block(block).map_err(|why| bad(format!("signature {n}: {why}")))?);
            rest = after;
        }
        Ok(Signatures(sigs))
    }

    /// The blocks joined, each ending "\n" (what `cat a.sig b.sig` makes).
    pub fn render(&self) -> String {
        self.0.iter().map(pem).collect()
    }

    /// Adds `sig`, replacing an earlier one by the same key (re-signing).
    pub fn add(&mut self, sig: SshSig) {
        match self
            .0
            .iter_mut()
            .find(|s| s.public_key() == sig.public_key())
        {
            Some(old) => *old = sig,
            None => self.0.push(sig),
        }
    }
}

/// One armored block, decoded and checked to be in the one form its bytes can take.
fn parse_block(block: &str) -> Result<SshSig, String> {
    let sig = SshSig::from_pem(block).map_err(|e| format!("not an SSH signature ({e})"))?;
    // The version is not covered by the signature, so it is checked here: only 1 exists.
    if sig.version() != SshSig::VERSION {
        return Err(format!(
            "SSHSIG version {}; this tiffin reads version {}",
            sig.version(),
            SshSig::VERSION
        ));
    }
    if pem(&sig) != block {
        return Err("not in the form `ssh-keygen -Y sign` writes (changed after signing?)".into());
    }
    Ok(sig)
}

fn pem(sig: &SshSig) -> String {
    // Encoding a decoded or freshly made signature cannot fail (only lengths over 4 GiB do).
    sig.to_pem(LineEnding::LF)
        .expect("an SSH signature always encodes")
}

/// Who signed, once each: their keys' fingerprints (`SHA256:…`), sorted, distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signers(pub Vec<String>);

/// Verifies `sigs` over `msg` under `namespace` against `root`: a signature counts when its
/// key is one of root's, its namespace is `namespace`, and it verifies; a key counts once.
/// Fewer than root.threshold distinct signers: TrustError::Threshold (naming how many of how
/// many, and why each other signature did not count).
pub fn verify(
    root: &TrustRoot,
    namespace: &str,
    msg: &[u8],
    sigs: &Signatures,
) -> Result<Signers, TrustError> {
    let mut signers: Vec<String> = Vec::new();
    let mut rejected = Vec::new();
    for (i, sig) in sigs.0.iter().enumerate() {
        match counts(root, namespace, msg, sig) {
            Ok(key) if signers.contains(&key.fingerprint()) => rejected.push(format!(
                "signature {} is a second one by {} ({}), counted once",
                i + 1,
                key.fingerprint(),
                key.comment()
            )),
            Ok(key) => signers.push(key.fingerprint()),
            Err(why) => rejected.push(format!("signature {}: {why}", i + 1)),
        }
    }
    if signers.len() < root.threshold as usize {
        return Err(TrustError::Threshold {
            got: signers.len(),
            need: root.threshold,
            rejected,
        });
    }
    signers.sort();
    Ok(Signers(signers))
}

/// The root key `sig` counts for, or why it counts for none.
fn counts<'r>(
    root: &'r TrustRoot,
    namespace: &str,
    msg: &[u8],
    sig: &SshSig,
) -> Result<&'r AdminKey, String> {
    let fingerprint = sig.public_key().fingerprint(HashAlg::Sha256);
    let Some(key) = root.key_of_data(sig.public_key()) else {
        return Err(format!(
            "key {fingerprint} is not one of the trust root's (version {})",
            root.version
        ));
    };
    if sig.namespace() != namespace {
        return Err(format!(
            "by {fingerprint} ({}) for {:?}, not {namespace:?}",
            key.comment(),
            one_line(sig.namespace(), 60)
        ));
    }
    key.0.verify(namespace, msg, sig).map_err(|_| {
        format!(
            "by {fingerprint} ({}) does not match the signed bytes (changed after signing, or damaged)",
            key.comment()
        )
    })?;
    if !user_present(sig) {
        return Err(format!(
            "by {fingerprint} ({}) was made by a FIDO token without a touch (user presence): refused, as `ssh-keygen -Y verify` refuses it",
            key.comment()
        ));
    }
    Ok(key)
}

/// A FIDO signature's flags byte (after the 64-byte ed25519 signature) must have user
/// presence (0x01): a key made with `no-touch-required` would let any program on the admin's
/// machine sign. Other keys have no such flag.
fn user_present(sig: &SshSig) -> bool {
    if sig.algorithm() != ssh_key::Algorithm::SkEd25519 {
        return true;
    }
    sig.signature_bytes()
        .get(64)
        .is_some_and(|flags| flags & 0x01 == 0x01)
}

/// A statement for `host` and `release`, signed by root's threshold, not expired at `now`
/// (now < expires), signed under `root.version`.
///
/// The signatures are checked before anything the statement says is believed.
pub fn check_statement(
    root: &TrustRoot,
    statement: &[u8],
    sigs: &[u8],
    host: &HostName,
    release: &ReleaseId,
    now: SystemTime,
) -> Result<(Statement, Signers), TrustError> {
    let parsed = Statement::parse(statement)?;
    let signers = verify(
        root,
        STATEMENT_NAMESPACE,
        statement,
        &Signatures::parse(sigs)?,
    )?;
    if parsed.root != root.version {
        return Err(TrustError::WrongRootVersion {
            expected: root.version,
            got: parsed.root,
        });
    }
    if parsed.host != *host {
        return Err(TrustError::WrongHost {
            expected: host.to_string(),
            got: parsed.host.to_string(),
        });
    }
    if parsed.release != *release {
        return Err(TrustError::WrongRelease {
            expected: release.to_string(),
            got: parsed.release.to_string(),
        });
    }
    if now >= parsed.expires_at() {
        return Err(TrustError::Expired {
            expires: parsed.expires,
        });
    }
    Ok((parsed, signers))
}

/// Root rotation: `next` (canonical bytes of the next root) must have version current+1 and be
/// signed by the threshold of `current`'s keys AND the threshold of its own keys (ROOT_NAMESPACE).
///
/// Both, so that neither the old admins alone can hand the fleet to keys nobody holds, nor keys
/// the current admins never approved can take it.
pub fn check_rotation(
    current: &TrustRoot,
    next: &[u8],
    sigs: &[u8],
) -> Result<TrustRoot, TrustError> {
    let bad = |message: String| TrustError::Rotation { message };
    let text = std::str::from_utf8(next).map_err(|_| bad("the next root is not UTF-8".into()))?;
    let next_root = TrustRoot::parse(text).map_err(|e| bad(format!("the next {e}")))?;
    let want = current.version.saturating_add(1);
    if next_root.version != want {
        let why = if next_root.version <= current.version {
            "a host never goes back to an older or equal root"
        } else {
            "roots rotate one version at a time; apply the ones in between first"
        };
        return Err(bad(format!(
            "the next root is version {}, but this host trusts version {} and accepts only {want}: {why}",
            next_root.version, current.version
        )));
    }
    let sigs = Signatures::parse(sigs).map_err(|e| bad(e.to_string()))?;
    verify(current, ROOT_NAMESPACE, next, &sigs)
        .map_err(|e| bad(format!("version {want} by the current root's keys: {e}")))?;
    verify(&next_root, ROOT_NAMESPACE, next, &sigs)
        .map_err(|e| bad(format!("version {want} by its own keys: {e}")))?;
    Ok(next_root)
}

/// Signs `msg` with an unencrypted OpenSSH private key file (ed25519).
pub fn sign_with_key_file(key: &Path, namespace: &str, msg: &[u8]) -> Result<SshSig, TrustError> {
    let bad = |message: String| TrustError::Sign {
        key: key.display().to_string(),
        message,
    };
    let private = ssh_key::PrivateKey::read_openssh_file(key)
        .map_err(|e| bad(format!("cannot read it as an OpenSSH private key: {e}")))?;
    if private.is_encrypted() {
        return Err(bad(
            "it is protected by a passphrase; sign through ssh-keygen (which asks for it) or ssh-agent instead".into(),
        ));
    }
    if private.algorithm() != Algorithm::Ed25519 {
        return Err(bad(format!(
            "{} keys are not signed with directly: an admin key is {ACCEPTED_TYPES} (a FIDO key signs through ssh-keygen)",
            private.algorithm()
        )));
    }
    private
        .sign(namespace, HashAlg::Sha512, msg)
        .map_err(|e| bad(format!("signing failed: {e}")))
}

/// Signs through `ssh-keygen -Y sign -f KEY -n NAMESPACE` (KEY: a private key file, or a `.pub`
/// whose private key is in ssh-agent or on a FIDO token): for keys tiffin does not read itself.
///
/// ssh-keygen's standard error stays the terminal's: it asks for a passphrase there, or to
/// touch the token, and says there why it failed.
pub fn sign_with_ssh_keygen(
    ssh_keygen: &str,
    key: &Path,
    namespace: &str,
    msg: &[u8],
) -> Result<SshSig, TrustError> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let bad = |message: String| TrustError::Sign {
        key: key.display().to_string(),
        message,
    };
    let mut child = Command::new(ssh_keygen)
        .args(["-Y", "sign", "-n", namespace, "-f"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| {
            bad(format!(
                "cannot run {ssh_keygen:?} ({e}); install openssh-client"
            ))
        })?;
    // ssh-keygen may exit before reading (a missing key): its exit status says why, not the pipe.
    if let Some(mut stdin) = child.stdin.take() {
        match stdin.write_all(msg) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(bad(format!("cannot write to ssh-keygen: {e}")));
            }
            _ => {}
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| bad(format!("waiting for ssh-keygen: {e}")))?;
    if !out.status.success() {
        return Err(bad(format!(
            "`{ssh_keygen} -Y sign` failed ({}); its message is above",
            out.status
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let sig = parse_block(&text).map_err(|why| bad(format!("ssh-keygen's output: {why}")))?;
    // Checked once here so a wrong namespace or a broken agent shows at signing, not on hosts.
    PublicKey::from(sig.public_key().clone())
        .verify(namespace, msg, &sig)
        .map_err(|e| bad(format!("ssh-keygen's signature does not verify: {e}")))?;
    Ok(sig)
}

#[cfg(test)]
mod tests;
