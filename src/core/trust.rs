//! STUB (replaced by the signed-core branch): signed statements and the fleet's root of trust.
#![allow(unused)]
use std::path::Path;
use std::time::SystemTime;

use crate::core::names::{HostName, ReleaseId};

pub const STATEMENT_NAMESPACE: &str = "tiffin-statement";
pub const ROOT_NAMESPACE: &str = "tiffin-root";
pub const MAX_SIGNATURES: usize = 32;
pub const MAX_SIGNATURE_BYTES: usize = 64 * 1024;
pub const MAX_STATEMENT_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("stub")]
    Stub,
    #[error("expired at {expires}")]
    Expired { expires: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminKey(ssh_key::PublicKey);
impl AdminKey {
    pub fn parse(line: &str) -> Result<AdminKey, TrustError> {
        todo!()
    }
    pub fn fingerprint(&self) -> String {
        todo!()
    }
    pub fn comment(&self) -> &str {
        todo!()
    }
    pub fn to_openssh(&self) -> String {
        todo!()
    }
}
impl serde::Serialize for AdminKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        todo!()
    }
}
impl<'de> serde::Deserialize<'de> for AdminKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        todo!()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRoot {
    pub version: u64,
    pub threshold: u32,
    pub keys: Vec<AdminKey>,
}
impl TrustRoot {
    pub fn validate(&self) -> Result<(), TrustError> {
        todo!()
    }
    pub fn render(&self) -> String {
        todo!()
    }
    pub fn parse(text: &str) -> Result<TrustRoot, TrustError> {
        todo!()
    }
    pub fn key_of(&self, key: &ssh_key::PublicKey) -> Option<&AdminKey> {
        todo!()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub host: HostName,
    pub release: ReleaseId,
    pub seq: u64,
    pub expires: String,
    pub root: u64,
}
impl Statement {
    pub fn render(&self) -> String {
        todo!()
    }
    pub fn parse(bytes: &[u8]) -> Result<Statement, TrustError> {
        todo!()
    }
    pub fn expires_at(&self) -> SystemTime {
        todo!()
    }
}

#[derive(Debug, Clone)]
pub struct Signatures(pub Vec<ssh_key::SshSig>);
impl Signatures {
    pub fn parse(bytes: &[u8]) -> Result<Signatures, TrustError> {
        todo!()
    }
    pub fn render(&self) -> String {
        todo!()
    }
    pub fn add(&mut self, sig: ssh_key::SshSig) {
        todo!()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signers(pub Vec<String>);

pub fn verify(
    root: &TrustRoot,
    namespace: &str,
    msg: &[u8],
    sigs: &Signatures,
) -> Result<Signers, TrustError> {
    todo!()
}
pub fn check_statement(
    root: &TrustRoot,
    statement: &[u8],
    sigs: &[u8],
    host: &HostName,
    release: &ReleaseId,
    now: SystemTime,
) -> Result<(Statement, Signers), TrustError> {
    todo!()
}
pub fn check_rotation(current: &TrustRoot, next: &[u8], sigs: &[u8]) -> Result<TrustRoot, TrustError> {
    todo!()
}
pub fn sign_with_key_file(key: &Path, namespace: &str, msg: &[u8]) -> Result<ssh_key::SshSig, TrustError> {
    todo!()
}
pub fn sign_with_ssh_keygen(
    ssh_keygen: &str,
    key: &Path,
    namespace: &str,
    msg: &[u8],
) -> Result<ssh_key::SshSig, TrustError> {
    todo!()
}
