//! The seam between the pull logic and the wire: what the client asks of its chroot (the SSH side is `connect`, an in-memory one is in the tests).

/// What can go wrong talking to the chroot, per path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("{path}: no such file on the server")]
    NotFound { path: String },
    #[error("{path}: permission denied by the server")]
    Denied { path: String },
    #[error("{path}: the server sent {got} bytes, the manifest says {expected}")]
    Size {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error("{path}: larger than {limit} bytes, refusing to read it")]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: no answer from the server within the i/o timeout")]
    Timeout { path: String },
    /// The SSH channel closed under the request (russh-sftp says "sender dropped" or "session closed").
    #[error(
        "the connection to {server} was lost while working on {path}; the next poll tries again"
    )]
    Lost { server: String, path: String },
    #[error("{path}: {message}")]
    Other { path: String, message: String },
}

/// Why streaming a file stopped: the link (or the server's bytes), or the client's own writer.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The writer failed (the client's disk): says nothing about the server.
    #[error("{0}")]
    Local(std::io::Error),
}

/// One file to fetch, with the size the manifest promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub path: String,
    pub size: u64,
}

/// The client's view of its chroot. Paths are absolute inside the chroot (`/CURRENT`).
#[allow(async_fn_in_trait)] // used with concrete types on one thread; no Send bound wanted
pub trait Remote {
    /// A small file of unknown size, at most `limit` bytes.
    async fn read(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, RemoteError>;
    /// Several small files of known size, pipelined, returned in order. The caller bounds
    /// their sizes (memory holds them all); a file longer or shorter than promised is an error.
    async fn read_files(&mut self, files: &[Wanted]) -> Result<Vec<Vec<u8>>, RemoteError>;
    /// Streams one file into `out` in bounded chunks: exactly `file.size` bytes, or an error
    /// (`RemoteError::Size` when the server has fewer or more). Memory does not grow with the size.
    async fn read_into(
        &mut self,
        file: &Wanted,
        out: &mut dyn std::io::Write,
    ) -> Result<(), StreamError>;
    /// Replaces `path` atomically: a reader sees the old or the new bytes, never a mix.
    async fn write_atomic(&mut self, path: &str, bytes: &[u8]) -> Result<(), RemoteError>;
}

/// Opens sessions to the chroot: SSH in real use, the in-memory chroot in tests. The watcher
/// keeps one; a confirmation after an activation always opens a new one.
#[allow(async_fn_in_trait)] // used with concrete types on one thread
pub trait Connector {
    type Session: Remote;
    async fn connect(&mut self) -> Result<Self::Session, super::PullError>;
    /// Ends a session its user is done with (lost, confirmed, or stopping).
    async fn close(&mut self, session: Self::Session);
}
