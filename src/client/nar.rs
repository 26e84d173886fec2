//! A downloaded NAR unpacked as a stream and checked against what its signed narinfo promises (NarSize, NarHash) before Nix sees it.
//!
//! The narinfo's `NarHash` and `NarSize` are covered by the fleet key's signature; its
//! `FileHash` and `FileSize` (and the MANIFEST, until releases are signed) are not. So a
//! server could swap a NAR file for an xz bomb that keeps every signed line true: Nix would
//! unpack all of it into the store before finding the hash wrong, again on every retry.
//! Here the NAR is decompressed into a hasher only, never to disk; the decoder's memory is
//! capped, and the stream is cut as soon as it passes NarSize.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::core::narinfo::{Compression, NarInfo, nix_base32};

/// The most memory the xz decoder may use: xz's `-9` needs 65 MiB; Nix's default (`-6`) 9 MiB.
const XZ_MEMLIMIT: u64 = 128 << 20;

/// Why a NAR file is not what its narinfo says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarError {
    #[error(
        "it unpacks to more than the {promised} bytes its narinfo's NarSize says (stopped there)"
    )]
    TooLarge { promised: u64 },
    #[error("it unpacks to {got} bytes, not the {promised} of its narinfo's NarSize")]
    Size { got: u64, promised: u64 },
    #[error("it unpacks to sha256:{got}, not its narinfo's NarHash {promised}")]
    Hash { got: String, promised: String },
    #[error("it does not unpack ({0})")]
    Unpack(String),
}

/// Unpacks the NAR in `path` (compressed as `info` says) into a hasher and checks its size
/// and hash against `info`; stops at the first byte past NarSize.
pub fn check(path: &Path, info: &NarInfo) -> Result<(), NarError> {
    let file = File::open(path).map_err(|e| NarError::Unpack(e.to_string()))?;
    let mut reader: Box<dyn Read> = match info.compression {
        Compression::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0)
                .map_err(|e| NarError::Unpack(e.to_string()))?;
            Box::new(liblzma::read::XzDecoder::new_stream(
                BufReader::new(file),
                stream,
            ))
        }
        Compression::None => Box::new(file),
    };
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| NarError::Unpack(e.to_string()))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > info.nar_size {
            return Err(NarError::TooLarge {
                promised: info.nar_size,
            });
        }
        hasher.update(&buf[..n]);
    }
    if total != info.nar_size {
        return Err(NarError::Size {
            got: total,
            promised: info.nar_size,
        });
    }
    let got = nix_base32(&hasher.finalize());
    if format!("sha256:{got}") != info.nar_hash {
        return Err(NarError::Hash {
            got,
            promised: info.nar_hash.clone(),
        });
    }
    Ok(())
}

/// An xz file of `bytes` and a narinfo that describes it truthfully (for tests).
#[cfg(test)]
pub(crate) fn xz_with_narinfo(store_path: &str, url: &str, bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use std::io::Write;
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
    enc.write_all(bytes).unwrap();
    let xz = enc.finish().unwrap();
    let file_hash = nix_base32(&Sha256::digest(&xz));
    let nar_hash = nix_base32(&Sha256::digest(bytes));
    let narinfo = format!(
        "StorePath: {store_path}\nURL: {url}\nCompression: xz\nFileHash: sha256:{file_hash}\nFileSize: {}\nNarHash: sha256:{nar_hash}\nNarSize: {}\nReferences: \n",
        xz.len(),
        bytes.len()
    );
    (xz, narinfo.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/nix/store/h53jn4wvi4jxxl9bg4mg78zilfmafzv7-dep";

    fn written(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join("x.nar.xz");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn a_true_nar_passes_and_a_changed_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (xz, ni) = xz_with_narinfo(PATH, "nar/x.nar.xz", b"nix-archive-1 content");
        let info = NarInfo::parse("x.narinfo", &ni).unwrap();
        check(&written(dir.path(), &xz), &info).unwrap();
        let (other, _) = xz_with_narinfo(PATH, "nar/x.nar.xz", b"nix-archive-1 CONTENT");
        let err = check(&written(dir.path(), &other), &info).unwrap_err();
        assert!(matches!(err, NarError::Hash { .. }), "{err}");
        let (short, _) = xz_with_narinfo(PATH, "nar/x.nar.xz", b"nix-archive-1");
        let err = check(&written(dir.path(), &short), &info).unwrap_err();
        assert!(
            matches!(
                err,
                NarError::Size {
                    got: 13,
                    promised: 21
                }
            ),
            "{err}"
        );
        let err = check(&written(dir.path(), b"not xz at all"), &info).unwrap_err();
        assert!(matches!(err, NarError::Unpack(_)), "{err}");
    }

    #[test]
    fn an_xz_bomb_is_cut_at_its_promised_size() {
        let dir = tempfile::tempdir().unwrap();
        // 64 MiB of zeros in a few kB, described as its first 1 kB.
        let (_, ni) = xz_with_narinfo(PATH, "nar/x.nar.xz", &[0u8; 1024]);
        let info = NarInfo::parse("x.narinfo", &ni).unwrap();
        let (bomb, _) = xz_with_narinfo(PATH, "nar/x.nar.xz", &vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let t = std::time::Instant::now();
        let err = check(&written(dir.path(), &bomb), &info).unwrap_err();
        assert_eq!(err, NarError::TooLarge { promised: 1024 });
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "stopped early, not after unpacking it all"
        );
    }
}
