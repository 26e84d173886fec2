//! sha256 as tiffin uses it everywhere: hex strings, streamed over files and readers.

use std::fs;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of a file's content, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    sha256_reader(fs::File::open(path)?, std::io::sink())
}

/// sha256 and length of everything `input` yields, copied to `out` on the way (a sink
/// when only the hash is wanted): publish hashes what it writes, not what it read earlier.
pub fn sha256_reader(
    mut input: impl Read,
    mut out: impl std::io::Write,
) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    Ok((hex::encode(hasher.finalize()), size))
}
