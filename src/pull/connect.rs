//! The SSH side of the seam: russh with a pinned host key, key authentication, and a raw SFTP session with as few requests as a poll needs.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::try_join_all;
use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};

use super::config::{ClientConfig, PinnedKey};
use super::transport::{Remote, RemoteError, Wanted};

/// Bytes asked for per SFTP read: OpenSSH answers up to 255 KiB, but 32 KiB fits one channel packet.
const READ_CHUNK: u64 = 32 * 1024;
/// Reads in flight per file.
const READS_IN_FLIGHT: usize = 16;
const POSIX_RENAME: &str = "posix-rename@openssh.com";

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {server}: no answer within {timeout}")]
    Timeout { server: String, timeout: String },
    #[error(
        "the server {server} presented host key {actual}, but client.toml pins {expected}; refusing to talk to it (nothing was read). If the server's key really changed, update server_key in the client configuration"
    )]
    HostKeyMismatch {
        server: String,
        expected: String,
        actual: String,
    },
    #[error("cannot load the identity {path}: {message}")]
    Identity { path: String, message: String },
    #[error(
        "the server {server} refused the key {fingerprint} for user {user}: check that the host's public key in the fleet matches {path}, and that `tiffin provision` ran"
    )]
    AuthRejected {
        server: String,
        user: String,
        fingerprint: String,
        path: String,
    },
    #[error("SSH with {server} failed during {step}: {message}")]
    Ssh {
        server: String,
        step: &'static str,
        message: String,
    },
}

/// The russh handler: the only decision it makes is whether the host key is the pinned one.
struct Pinned {
    expected: PinnedKey,
    /// Set when the server offered another key, so the error can show it.
    seen: Arc<std::sync::Mutex<Option<PublicKey>>>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = server_public_key else {
            // A certificate is not the pinned key; there is no CA trust in tiffin.
            return Ok(false);
        };
        let ok = key.key_data() == self.expected.0.key_data();
        if !ok && let Ok(mut seen) = self.seen.lock() {
            *seen = Some(key.clone());
        }
        Ok(ok)
    }
}

/// Counters of what went over the SFTP channel, for logs, tests and the bench.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicUsize,
    pub bytes_read: AtomicUsize,
}

/// A logged-in SFTP session in the host's chroot.
pub struct SshRemote {
    handle: client::Handle<Pinned>,
    sftp: Arc<RawSftpSession>,
    posix_rename: bool,
    pub counters: Arc<Counters>,
}

fn ssh_err(cfg: &ClientConfig, step: &'static str) -> impl FnOnce(russh::Error) -> ConnectError {
    let server = cfg.server.to_string();
    move |e| ConnectError::Ssh {
        server,
        step,
        message: e.to_string(),
    }
}

impl SshRemote {
    /// Connects, checks the host key, authenticates and opens SFTP (the `init` request).
    pub async fn connect(cfg: &ClientConfig) -> Result<SshRemote, ConnectError> {
        let key = russh::keys::load_secret_key(&cfg.identity, None).map_err(|e| {
            ConnectError::Identity {
                path: cfg.identity.display().to_string(),
                message: e.to_string(),
            }
        })?;
        let io = cfg.io_timeout.0;
        let config = client::Config {
            nodelay: true,
            inactivity_timeout: Some(io),
            keepalive_interval: Some((io / 4).max(Duration::from_secs(1))),
            keepalive_max: 3,
            preferred: russh::Preferred {
                // Only what a pinned-key client needs: shorter KEXINIT, fewer bytes per poll.
                key: Cow::Owned(vec![cfg.server_key.0.algorithm()]),
                kex: Cow::Owned(vec![
                    russh::kex::MLKEM768X25519_SHA256,
                    russh::kex::CURVE25519,
                    russh::kex::EXTENSION_SUPPORT_AS_CLIENT,
                    russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
                ]),
                cipher: Cow::Owned(vec![
                    russh::cipher::CHACHA20_POLY1305,
                    russh::cipher::AES_256_GCM,
                ]),
                mac: Cow::Owned(vec![russh::mac::HMAC_SHA256_ETM]),
                // Configurations are text: compressed after authentication (OpenSSH's delayed zlib).
                compression: Cow::Owned(vec![
                    russh::compression::ZLIB_LEGACY,
                    russh::compression::NONE,
                ]),
                ..Default::default()
            },
            ..Default::default()
        };
        let seen = Arc::new(std::sync::Mutex::new(None));
        let handler = Pinned {
            expected: cfg.server_key.clone(),
            seen: seen.clone(),
        };
        let server = cfg.server.to_string();
        let addr = (cfg.server.host.clone(), cfg.server.port);
        let connected = tokio::time::timeout(
            cfg.connect_timeout.0,
            client::connect(Arc::new(config), addr, handler),
        )
        .await
        .map_err(|_| ConnectError::Timeout {
            server: server.clone(),
            timeout: cfg.connect_timeout.to_string(),
        })?;
        let mut handle = match connected {
            Ok(h) => h,
            Err(e) => {
                if let Some(actual) = seen.lock().ok().and_then(|s| s.clone()) {
                    return Err(ConnectError::HostKeyMismatch {
                        server,
                        expected: cfg.server_key.fingerprint(),
                        actual: actual.fingerprint(HashAlg::Sha256).to_string(),
                    });
                }
                return Err(ssh_err(cfg, "connect")(e));
            }
        };
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
        // RSA identities need a hash the server accepts; ed25519 does not (and skips a wait).
        let hash = if key.algorithm().is_rsa() {
            handle
                .best_supported_rsa_hash()
                .await
                .map_err(ssh_err(cfg, "authentication"))?
                .flatten()
        } else {
            None
        };
        let auth = tokio::time::timeout(
            io,
            handle.authenticate_publickey(
                cfg.user.clone(),
                PrivateKeyWithHashAlg::new(Arc::new(key), hash),
            ),
        )
        .await
        .map_err(|_| ConnectError::Timeout {
            server: server.clone(),
            timeout: cfg.io_timeout.to_string(),
        })?
        .map_err(ssh_err(cfg, "authentication"))?;
        if !auth.success() {
            return Err(ConnectError::AuthRejected {
                server,
                user: cfg.user.clone(),
                fingerprint,
                path: cfg.identity.display().to_string(),
            });
        }
        let sftp = tokio::time::timeout(io, async {
            let channel = handle.channel_open_session().await?;
            channel.request_subsystem(true, "sftp").await?;
            Ok::<_, russh::Error>(channel)
        })
        .await
        .map_err(|_| ConnectError::Timeout {
            server: server.clone(),
            timeout: cfg.io_timeout.to_string(),
        })?
        .map_err(ssh_err(cfg, "opening the sftp subsystem"))?;
        let sftp_config = russh_sftp::client::Config {
            request_timeout_secs: io.as_secs().max(1),
            ..Default::default()
        };
        let sftp = RawSftpSession::new_with_config(sftp.into_stream(), sftp_config);
        let counters = Arc::new(Counters::default());
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let version = sftp.init().await.map_err(|e| ConnectError::Ssh {
            server: server.clone(),
            step: "sftp init",
            message: e.to_string(),
        })?;
        Ok(SshRemote {
            handle,
            posix_rename: version.extensions.contains_key(POSIX_RENAME),
            sftp: Arc::new(sftp),
            counters,
        })
    }

    /// Ends the session politely; errors do not matter any more at this point.
    pub async fn close(self) {
        let _ = self.sftp.close_session();
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }

    fn count(&self, n: usize) {
        self.counters.requests.fetch_add(n, Ordering::Relaxed);
    }
}

fn remote_err(path: &str, e: SftpError) -> RemoteError {
    let path = path.to_owned();
    match e {
        SftpError::Status(s) if s.status_code == StatusCode::NoSuchFile => {
            RemoteError::NotFound { path }
        }
        SftpError::Status(s) if s.status_code == StatusCode::PermissionDenied => {
            RemoteError::Denied { path }
        }
        SftpError::Timeout => RemoteError::Timeout { path },
        e => RemoteError::Other {
            path,
            message: e.to_string(),
        },
    }
}

fn is_eof(e: &SftpError) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == StatusCode::Eof)
}

/// Reads exactly `size` bytes of `path`: open, reads (several in flight), close.
async fn read_exact(
    sftp: &RawSftpSession,
    counters: &Counters,
    path: &str,
    size: u64,
) -> Result<Vec<u8>, RemoteError> {
    let handle = sftp
        .open(path, OpenFlags::READ, FileAttributes::empty())
        .await
        .map_err(|e| remote_err(path, e))?
        .handle;
    let mut out = vec![0u8; size as usize];
    let offsets: Vec<u64> = (0..size.div_ceil(READ_CHUNK))
        .map(|i| i * READ_CHUNK)
        .collect();
    let mut result = Ok(());
    'chunks: for window in offsets.chunks(READS_IN_FLIGHT) {
        let reads = window.iter().map(|&off| {
            let len = (size - off).min(READ_CHUNK);
            read_range(sftp, counters, &handle, path, off, len)
        });
        match try_join_all(reads).await {
            Ok(parts) => {
                for (off, data) in window.iter().zip(parts) {
                    let off = *off as usize;
                    out[off..off + data.len()].copy_from_slice(&data);
                }
            }
            Err(e) => {
                result = Err(e);
                break 'chunks;
            }
        }
    }
    counters.requests.fetch_add(2, Ordering::Relaxed);
    let _ = sftp.close(handle).await;
    result.map(|()| out)
}

/// One range, re-asking after a short read (the protocol allows them).
async fn read_range(
    sftp: &RawSftpSession,
    counters: &Counters,
    handle: &str,
    path: &str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, RemoteError> {
    let mut data = Vec::with_capacity(len as usize);
    while (data.len() as u64) < len {
        let at = offset + data.len() as u64;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        match sftp
            .read(handle, at, (len - data.len() as u64) as u32)
            .await
        {
            Ok(d) if d.data.is_empty() => break,
            Ok(d) => {
                counters
                    .bytes_read
                    .fetch_add(d.data.len(), Ordering::Relaxed);
                data.extend_from_slice(&d.data);
            }
            Err(e) if is_eof(&e) => break,
            Err(e) => return Err(remote_err(path, e)),
        }
    }
    if (data.len() as u64) < len {
        return Err(RemoteError::Size {
            path: path.to_owned(),
            expected: offset + len,
            got: offset + data.len() as u64,
        });
    }
    data.truncate(len as usize);
    Ok(data)
}

fn ssh_string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Remote for SshRemote {
    async fn read(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, RemoteError> {
        self.count(3);
        let handle = self
            .sftp
            .open(path, OpenFlags::READ, FileAttributes::empty())
            .await
            .map_err(|e| remote_err(path, e))?
            .handle;
        let mut out = Vec::new();
        let result = loop {
            // A short read of a regular file means end of file on OpenSSH: one read for a small file.
            let want = (limit + 1 - out.len() as u64).min(256 * 1024 - 1024) as u32;
            match self
                .sftp
                .read(handle.as_str(), out.len() as u64, want)
                .await
            {
                Ok(d) => {
                    let short = (d.data.len() as u32) < want;
                    self.counters
                        .bytes_read
                        .fetch_add(d.data.len(), Ordering::Relaxed);
                    out.extend_from_slice(&d.data);
                    if out.len() as u64 > limit {
                        break Err(RemoteError::TooLarge {
                            path: path.to_owned(),
                            limit,
                        });
                    }
                    if short || d.data.is_empty() {
                        break Ok(());
                    }
                    self.count(1);
                }
                Err(e) if is_eof(&e) => break Ok(()),
                Err(e) => break Err(remote_err(path, e)),
            }
        };
        let _ = self.sftp.close(handle).await;
        result.map(|()| out)
    }

    async fn read_files(&mut self, files: &[Wanted]) -> Result<Vec<Vec<u8>>, RemoteError> {
        let sftp = &self.sftp;
        let counters = &self.counters;
        // All files of a batch in flight at once: one round trip per batch, not per file.
        try_join_all(
            files
                .iter()
                .map(|w| read_exact(sftp, counters, &w.path, w.size)),
        )
        .await
    }

    async fn write_atomic(&mut self, path: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        let tmp = format!("{path}.tmp");
        let handle = self
            .sftp
            .open(
                tmp.as_str(),
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
                FileAttributes::empty(),
            )
            .await
            .map_err(|e| remote_err(&tmp, e))?
            .handle;
        self.count(2);
        let mut result = Ok(());
        for (i, chunk) in bytes.chunks(READ_CHUNK as usize).enumerate() {
            self.count(1);
            if let Err(e) = self
                .sftp
                .write(
                    handle.as_str(),
                    (i * READ_CHUNK as usize) as u64,
                    chunk.to_vec(),
                )
                .await
            {
                result = Err(remote_err(&tmp, e));
                break;
            }
        }
        let closed = self.sftp.close(handle).await;
        result?;
        closed.map_err(|e| remote_err(&tmp, e))?;
        self.count(1);
        if self.posix_rename {
            // Plain SFTP rename refuses to replace a file on OpenSSH; posix-rename replaces atomically.
            let mut data = Vec::new();
            ssh_string(&tmp, &mut data);
            ssh_string(path, &mut data);
            match self.sftp.extended(POSIX_RENAME, data).await {
                Ok(Packet::Status(s)) if s.status_code == StatusCode::Ok => Ok(()),
                Ok(Packet::Status(s)) => Err(remote_err(path, SftpError::Status(s))),
                Ok(_) => Err(RemoteError::Other {
                    path: path.to_owned(),
                    message: "unexpected answer to posix-rename".into(),
                }),
                Err(e) => Err(remote_err(path, e)),
            }
        } else {
            self.count(1);
            let _ = self.sftp.remove(path).await;
            self.sftp
                .rename(tmp.as_str(), path)
                .await
                .map(|_| ())
                .map_err(|e| remote_err(path, e))
        }
    }
}
