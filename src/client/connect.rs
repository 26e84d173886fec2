//! The SSH side of the seam: russh with a pinned host key, key authentication, and a raw SFTP session with as few requests as a poll needs.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode, Version};

use crate::core::settings::Interval;

use super::config::{ClientConfig, PinnedKey};
use super::transport::{Remote, RemoteError, StreamError, Wanted};
use super::wire::{Counted, WireCounts};

/// Bytes asked for per SFTP read: OpenSSH answers up to 255 KiB, but 32 KiB fits one channel packet.
const READ_CHUNK: u64 = 32 * 1024;
/// Reads in flight per file: with `READ_CHUNK`, at most 512 KiB of a file is in memory at once.
const READS_IN_FLIGHT: u64 = 16;
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

/// A logged-in SFTP session in the host's chroot.
pub struct SshRemote {
    handle: client::Handle<Pinned>,
    sftp: Arc<RawSftpSession>,
    posix_rename: bool,
    wire: Arc<WireCounts>,
    /// For errors that say which connection was lost.
    server: String,
}

/// One connection attempt: the configuration it follows, and the errors it names the server in.
struct Dialer<'a> {
    cfg: &'a ClientConfig,
    server: String,
}

impl Dialer<'_> {
    fn ssh_err(&self, step: &'static str) -> impl FnOnce(russh::Error) -> ConnectError + use<> {
        let server = self.server.clone();
        move |e| ConnectError::Ssh {
            server,
            step,
            message: e.to_string(),
        }
    }

    fn timed_out(&self, timeout: Interval) -> ConnectError {
        ConnectError::Timeout {
            server: self.server.clone(),
            timeout: timeout.to_string(),
        }
    }

    fn identity(&self) -> Result<PrivateKey, ConnectError> {
        russh::keys::load_secret_key(&self.cfg.identity, None).map_err(|e| ConnectError::Identity {
            path: self.cfg.identity.display().to_string(),
            message: e.to_string(),
        })
    }

    /// The russh settings: nodelay, timeouts, and only the algorithms a pinned-key client needs.
    fn ssh_config(&self) -> client::Config {
        let io = self.cfg.io_timeout.0;
        client::Config {
            nodelay: true,
            inactivity_timeout: Some(io),
            keepalive_interval: Some((io / 4).max(Duration::from_secs(1))),
            keepalive_max: 3,
            preferred: russh::Preferred {
                // Shorter KEXINIT, fewer bytes per poll.
                key: Cow::Owned(vec![self.cfg.server_key.0.algorithm()]),
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
        }
    }

    /// TCP and key exchange, refusing any host key but the pinned one.
    async fn handshake(&self) -> Result<client::Handle<Pinned>, ConnectError> {
        let cfg = self.cfg;
        let seen = Arc::new(std::sync::Mutex::new(None));
        let handler = Pinned {
            expected: cfg.server_key.clone(),
            seen: seen.clone(),
        };
        let addr = (cfg.server.host.clone(), cfg.server.port);
        let connected = tokio::time::timeout(
            cfg.connect_timeout.0,
            client::connect(Arc::new(self.ssh_config()), addr, handler),
        )
        .await
        .map_err(|_| self.timed_out(cfg.connect_timeout))?;
        connected.map_err(|e| match seen.lock().ok().and_then(|s| s.clone()) {
            Some(actual) => ConnectError::HostKeyMismatch {
                server: self.server.clone(),
                expected: cfg.server_key.fingerprint(),
                actual: actual.fingerprint(HashAlg::Sha256).to_string(),
            },
            None => self.ssh_err("connect")(e),
        })
    }

    async fn authenticate(
        &self,
        handle: &mut client::Handle<Pinned>,
        key: PrivateKey,
    ) -> Result<(), ConnectError> {
        let cfg = self.cfg;
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
        // RSA identities need a hash the server accepts; ed25519 does not (and skips a wait).
        let hash = if key.algorithm().is_rsa() {
            handle
                .best_supported_rsa_hash()
                .await
                .map_err(self.ssh_err("authentication"))?
                .flatten()
        } else {
            None
        };
        let auth = tokio::time::timeout(
            cfg.io_timeout.0,
            handle.authenticate_publickey(
                cfg.user.clone(),
                PrivateKeyWithHashAlg::new(Arc::new(key), hash),
            ),
        )
        .await
        .map_err(|_| self.timed_out(cfg.io_timeout))?
        .map_err(self.ssh_err("authentication"))?;
        if !auth.success() {
            return Err(ConnectError::AuthRejected {
                server: self.server.clone(),
                user: cfg.user.clone(),
                fingerprint,
                path: cfg.identity.display().to_string(),
            });
        }
        Ok(())
    }

    /// The sftp subsystem on a counted stream, and its `init` (the session's first request).
    async fn open_sftp(
        &self,
        handle: &client::Handle<Pinned>,
    ) -> Result<(RawSftpSession, Arc<WireCounts>, Version), ConnectError> {
        let io = self.cfg.io_timeout;
        let channel = tokio::time::timeout(io.0, async {
            let channel = handle.channel_open_session().await?;
            channel.request_subsystem(true, "sftp").await?;
            Ok::<_, russh::Error>(channel)
        })
        .await
        .map_err(|_| self.timed_out(io))?
        .map_err(self.ssh_err("opening the sftp subsystem"))?;
        let sftp_config = russh_sftp::client::Config {
            request_timeout_secs: io.0.as_secs().max(1),
            ..Default::default()
        };
        let (stream, wire) = Counted::new(channel.into_stream());
        let sftp = RawSftpSession::new_with_config(stream, sftp_config);
        let version = sftp.init().await.map_err(|e| ConnectError::Ssh {
            server: self.server.clone(),
            step: "sftp init",
            message: e.to_string(),
        })?;
        Ok((sftp, wire, version))
    }
}

impl SshRemote {
    /// Connects, checks the host key, authenticates and opens SFTP (the `init` request).
    pub async fn connect(cfg: &ClientConfig) -> Result<SshRemote, ConnectError> {
        let dialer = Dialer {
            cfg,
            server: cfg.server.to_string(),
        };
        let key = dialer.identity()?;
        let mut handle = dialer.handshake().await?;
        dialer.authenticate(&mut handle, key).await?;
        let (sftp, wire, version) = dialer.open_sftp(&handle).await?;
        Ok(SshRemote {
            handle,
            posix_rename: version.extensions.contains_key(POSIX_RENAME),
            sftp: Arc::new(sftp),
            wire,
            server: dialer.server,
        })
    }

    /// What went over the SFTP channel so far, counted on the stream.
    pub fn wire(&self) -> &WireCounts {
        &self.wire
    }

    /// Ends the session politely; errors do not matter any more at this point.
    pub async fn close(self) {
        let _ = self.sftp.close_session();
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

fn remote_err(server: &str, path: &str, e: SftpError) -> RemoteError {
    let path = path.to_owned();
    match e {
        SftpError::Status(s) if s.status_code == StatusCode::NoSuchFile => {
            RemoteError::NotFound { path }
        }
        SftpError::Status(s) if s.status_code == StatusCode::PermissionDenied => {
            RemoteError::Denied { path }
        }
        SftpError::Timeout => RemoteError::Timeout { path },
        e if is_lost(&e) => RemoteError::Lost {
            server: server.to_owned(),
            path,
        },
        e => RemoteError::Other {
            path,
            message: e.to_string(),
        },
    }
}

/// russh-sftp's words for a channel that closed under a request ("sender dropped", "session closed", a failed send).
fn is_lost(e: &SftpError) -> bool {
    match e {
        SftpError::IO(_) => true,
        SftpError::UnexpectedBehavior(m) => {
            ["sender dropped", "session closed", "SendError", "RecvError"]
                .iter()
                .any(|w| m.contains(w))
        }
        _ => false,
    }
}

/// Whether a read is the last of a file: it asks one byte more, so a longer file shows without another round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    Inner,
    Last,
}

fn is_eof(e: &SftpError) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == StatusCode::Eof)
}

/// An open remote file: the session, its handle, and its path for errors.
struct OpenFile<'a> {
    sftp: &'a RawSftpSession,
    handle: String,
    path: &'a str,
    server: &'a str,
}

impl<'a> OpenFile<'a> {
    async fn open(
        remote: &'a SshRemote,
        path: &'a str,
        flags: OpenFlags,
    ) -> Result<OpenFile<'a>, RemoteError> {
        let (sftp, server) = (&*remote.sftp, remote.server.as_str());
        let handle = sftp
            .open(path, flags, FileAttributes::empty())
            .await
            .map_err(|e| remote_err(server, path, e))?
            .handle;
        Ok(OpenFile {
            sftp,
            handle,
            path,
            server,
        })
    }

    fn err(&self, e: SftpError) -> RemoteError {
        remote_err(self.server, self.path, e)
    }

    async fn close(self) -> Result<(), RemoteError> {
        self.sftp
            .close(self.handle)
            .await
            .map(|_| ())
            .map_err(|e| remote_err(self.server, self.path, e))
    }

    /// A small file of unknown size, at most `limit` bytes.
    async fn read_to_limit(&self, limit: u64) -> Result<Vec<u8>, RemoteError> {
        let mut out = Vec::new();
        loop {
            // A short read of a regular file means end of file on OpenSSH: one read for a small file.
            let want = (limit + 1 - out.len() as u64).min(256 * 1024 - 1024) as u32;
            let data = match self.sftp.read(&self.handle, out.len() as u64, want).await {
                Ok(d) => d.data,
                Err(e) if is_eof(&e) => return Ok(out),
                Err(e) => return Err(self.err(e)),
            };
            let short = (data.len() as u32) < want;
            out.extend_from_slice(&data);
            if out.len() as u64 > limit {
                return Err(RemoteError::TooLarge {
                    path: self.path.to_owned(),
                    limit,
                });
            }
            if short || data.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Streams exactly `size` bytes into `out`, `READS_IN_FLIGHT` reads at a time.
    async fn stream(&self, size: u64, out: &mut dyn std::io::Write) -> Result<(), StreamError> {
        // At least one read, so even an empty file is checked for bytes it should not have.
        let chunks = size.div_ceil(READ_CHUNK).max(1);
        let mut next = 0;
        while next < chunks {
            let end = (next + READS_IN_FLIGHT).min(chunks);
            let reads = (next..end).map(|i| {
                let offset = i * READ_CHUNK;
                let last = if i + 1 == chunks {
                    Range::Last
                } else {
                    Range::Inner
                };
                self.read_range(offset, (size - offset).min(READ_CHUNK), last)
            });
            for data in try_join_all(reads).await? {
                out.write_all(&data).map_err(StreamError::Local)?;
            }
            next = end;
        }
        Ok(())
    }

    /// One range of `len` bytes, re-asking after a short read (the protocol allows them).
    async fn read_range(
        &self,
        offset: u64,
        len: u64,
        range: Range,
    ) -> Result<Vec<u8>, RemoteError> {
        let ask = len + u64::from(range == Range::Last);
        let mut data = Vec::with_capacity(ask.min(READ_CHUNK + 1) as usize);
        while (data.len() as u64) < ask {
            let want = (ask - data.len() as u64) as u32;
            match self
                .sftp
                .read(&self.handle, offset + data.len() as u64, want)
                .await
            {
                Ok(d) if d.data.is_empty() => break,
                Ok(d) => {
                    // A short read of a regular file is its end on OpenSSH, once the range is whole.
                    let short = (d.data.len() as u32) < want;
                    data.extend_from_slice(&d.data);
                    if short && data.len() as u64 >= len {
                        break;
                    }
                }
                Err(e) if is_eof(&e) => break,
                Err(e) => return Err(self.err(e)),
            }
        }
        if data.len() as u64 != len {
            return Err(RemoteError::Size {
                path: self.path.to_owned(),
                expected: offset + len,
                got: offset + data.len() as u64,
            });
        }
        Ok(data)
    }

    async fn write_all(&self, bytes: &[u8]) -> Result<(), RemoteError> {
        for (i, chunk) in bytes.chunks(READ_CHUNK as usize).enumerate() {
            let offset = (i * READ_CHUNK as usize) as u64;
            self.sftp
                .write(&self.handle, offset, chunk.to_vec())
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}

impl SshRemote {
    /// Streams `file` into `out`: open, reads, close (whose answer does not matter once the bytes are in).
    async fn stream(&self, file: &Wanted, out: &mut dyn std::io::Write) -> Result<(), StreamError> {
        let open = OpenFile::open(self, &file.path, OpenFlags::READ).await?;
        let result = open.stream(file.size, out).await;
        let _ = open.close().await;
        result
    }

    async fn read_small(&self, file: &Wanted) -> Result<Vec<u8>, RemoteError> {
        let mut bytes = Vec::new();
        match self.stream(file, &mut bytes).await {
            Ok(()) => Ok(bytes),
            Err(StreamError::Remote(e)) => Err(e),
            // A Vec does not fail to grow short of an abort; kept for completeness.
            Err(StreamError::Local(e)) => Err(RemoteError::Other {
                path: file.path.clone(),
                message: e.to_string(),
            }),
        }
    }
}

fn ssh_string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl SshRemote {
    /// Writes `tmp` whole: open (created or truncated), writes, close.
    async fn upload(&self, tmp: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        let file = OpenFile::open(self, tmp, flags).await?;
        let written = file.write_all(bytes).await;
        let closed = file.close().await;
        written.and(closed)
    }

    /// Renames `tmp` over `path`, replacing it.
    async fn rename_over(&self, tmp: &str, path: &str) -> Result<(), RemoteError> {
        if !self.posix_rename {
            let _ = self.sftp.remove(path).await;
            return self
                .sftp
                .rename(tmp, path)
                .await
                .map(|_| ())
                .map_err(|e| remote_err(&self.server, path, e));
        }
        // Plain SFTP rename refuses to replace a file on OpenSSH; posix-rename replaces atomically.
        let mut data = Vec::new();
        ssh_string(tmp, &mut data);
        ssh_string(path, &mut data);
        match self.sftp.extended(POSIX_RENAME, data).await {
            Ok(Packet::Status(s)) if s.status_code == StatusCode::Ok => Ok(()),
            Ok(Packet::Status(s)) => Err(remote_err(&self.server, path, SftpError::Status(s))),
            Ok(_) => Err(RemoteError::Other {
                path: path.to_owned(),
                message: "unexpected answer to posix-rename".into(),
            }),
            Err(e) => Err(remote_err(&self.server, path, e)),
        }
    }
}

impl Remote for SshRemote {
    async fn read(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, RemoteError> {
        let file = OpenFile::open(self, path, OpenFlags::READ).await?;
        let result = file.read_to_limit(limit).await;
        let _ = file.close().await;
        result
    }

    async fn read_files(&mut self, files: &[Wanted]) -> Result<Vec<Vec<u8>>, RemoteError> {
        // All files of a batch in flight at once: one round trip per batch, not per file.
        try_join_all(files.iter().map(|w| self.read_small(w))).await
    }

    async fn read_into(
        &mut self,
        file: &Wanted,
        out: &mut dyn std::io::Write,
    ) -> Result<(), StreamError> {
        self.stream(file, out).await
    }

    async fn write_atomic(&mut self, path: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        let tmp = format!("{path}.tmp");
        self.upload(&tmp, bytes).await?;
        self.rename_over(&tmp, path).await
    }
}
